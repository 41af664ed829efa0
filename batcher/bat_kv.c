/*
 * bat_kv.c - the block manager: a LIFO free stack of block ids plus an
 * owned bit per block for kv inv 2. LIFO so recently freed (and zeroed)
 * blocks are reused first, which keeps the working set of the pool small.
 */
#include "bat_kv.h"

#include <errno.h>
#include <string.h>

#include "favo_base.h"

static inline int32_t *kv_stack(struct bat_kv *kv)
{
    return (int32_t *)((char *)kv + kv->off_stack);
}

static inline uint8_t *kv_owned(struct bat_kv *kv)
{
    return (uint8_t *)((char *)kv + kv->off_owned);
}

size_t bat_kv_size(uint32_t n_blocks)
{
    return sizeof(struct bat_kv) + (size_t)n_blocks * sizeof(int32_t) + n_blocks;
}

int bat_kv_init(struct bat_kv *kv, size_t size, uint32_t n_blocks)
{
    if (!kv || n_blocks == 0 || n_blocks > INT32_MAX / 2 || size < bat_kv_size(n_blocks))
        return -EINVAL;
    memset(kv, 0, sizeof(*kv));
    kv->n_blocks = n_blocks;
    kv->n_free = n_blocks;
    kv->off_stack = sizeof(struct bat_kv);
    kv->off_owned = kv->off_stack + n_blocks * (uint32_t)sizeof(int32_t);
    /* Top of the stack is block 0, so ids come out in ascending order. */
    for (uint32_t i = 0; i < n_blocks; i++)
        kv_stack(kv)[i] = (int32_t)(n_blocks - 1 - i);
    memset(kv_owned(kv), 0, n_blocks);
    kv->magic = BAT_KV_MAGIC;
    return 0;
}

int32_t bat_kv_alloc(struct bat_kv *kv)
{
    int32_t b;

    if (kv->n_free == 0)
        return -ENOSPC;
    b = kv_stack(kv)[--kv->n_free];
    FAVO_ASSERT(b >= 0 && (uint32_t)b < kv->n_blocks && !kv_owned(kv)[b]); /* kv inv 1 */
    kv_owned(kv)[b] = 1;
    return b;
}

void bat_kv_free(struct bat_kv *kv, int32_t b)
{
    FAVO_ASSERT(b >= 0 && (uint32_t)b < kv->n_blocks);
    FAVO_ASSERT(kv_owned(kv)[b]);          /* kv inv 2 */
    FAVO_ASSERT(kv->n_free < kv->n_blocks); /* kv inv 1 */
    kv_owned(kv)[b] = 0;
    kv_stack(kv)[kv->n_free++] = b;
}

int bat_kv_check(const struct bat_kv *kv)
{
    const int32_t *st = (const int32_t *)((const char *)kv + kv->off_stack);
    const uint8_t *own = (const uint8_t *)((const char *)kv + kv->off_owned);
    uint32_t owned = 0;

    if (kv->magic != BAT_KV_MAGIC || kv->n_free > kv->n_blocks)
        return -EBADMSG;
    for (uint32_t i = 0; i < kv->n_blocks; i++)
        owned += own[i] ? 1 : 0;
    if (owned + kv->n_free != kv->n_blocks)
        return -EBADMSG;
    for (uint32_t i = 0; i < kv->n_free; i++)
        if (st[i] < 0 || (uint32_t)st[i] >= kv->n_blocks || own[st[i]])
            return -EBADMSG;
    return 0;
}
