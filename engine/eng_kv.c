/*
 * eng_kv.c - the paged KV block pool (see eng_kv.h for the lifecycle).
 */
#include "eng_kv.h"

#include "eng_cpu.h"
#include "eng_ops.h"
#include "eng_fp16.h"
#include "favo_base.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int eng_kv_init(struct eng_kv *kv, const struct eng_hparams *hp, uint32_t n_blocks)
{
    return eng_kv_init_type(kv, hp, n_blocks, ENG_KV_F32);
}

const char *eng_kv_type_name(enum eng_kv_type t)
{
    return t == ENG_KV_F16 ? "f16" : "f32";
}

int eng_kv_type_pick(const struct eng_model *m, const char *want, enum eng_kv_type *out)
{
    if (want && !strcmp(want, "f32"))
        *out = ENG_KV_F32;
    else if (want && !strcmp(want, "f16"))
        *out = ENG_KV_F16;
    else if (!want || !strcmp(want, "auto"))
        *out = m->hp.n_layer && m->layers[0].wq.type == ENG_TYPE_F32 ? ENG_KV_F32 : ENG_KV_F16;
    else
        return -EINVAL;
    return 0;
}

void eng_kv_put_f16(uint16_t *dst, size_t stride, const float *src, uint32_t n)
{
    if (eng_cpu_features() & ENG_CPU_AVX512) {
        eng_kv_avx512_put_f16(dst, stride, src, n);
        return;
    }
    for (uint32_t i = 0; i < n; i++) {
        float f = src[i];

        if (f > 65504.0f)             /* NaN compares false: stays NaN */
            f = 65504.0f;
        else if (f < -65504.0f)
            f = -65504.0f;
        dst[(size_t)i * stride] = eng_f32_to_f16(f);
    }
}

int eng_kv_init_type(struct eng_kv *kv, const struct eng_hparams *hp, uint32_t n_blocks,
                     enum eng_kv_type t)
{
    memset(kv, 0, sizeof(*kv));
    if (!n_blocks || n_blocks > (1u << 24) || (t != ENG_KV_F32 && t != ENG_KV_F16))
        return -EINVAL;
    kv->type = t;
    kv->esz = t == ENG_KV_F16 ? 2 : 4;
    kv->n_layer = hp->n_layer;
    kv->n_head_kv = hp->n_head_kv;
    kv->head_dim = hp->head_dim;
    kv->head_dim_v = hp->head_dim_v;
    kv->n_blocks = n_blocks;
    kv->layer_floats = (size_t)hp->n_head_kv * ENG_KV_BLOCK * (hp->head_dim + hp->head_dim_v);
    kv->block_bytes = kv->layer_floats * hp->n_layer * kv->esz;
    if (kv->block_bytes > SIZE_MAX / n_blocks)
        return -EINVAL;
    kv->mem_bytes = kv->block_bytes * n_blocks;
    kv->mem = mmap(NULL, kv->mem_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                   -1, 0);
    if (kv->mem == MAP_FAILED) {
        kv->mem = NULL;
        return -ENOMEM;
    }
    (void)madvise(kv->mem, kv->mem_bytes, MADV_DONTDUMP);   /* K3 */
    (void)madvise(kv->mem, kv->mem_bytes, MADV_HUGEPAGE);
    kv->free_stack = malloc(sizeof(*kv->free_stack) * n_blocks);
    kv->in_use = calloc(n_blocks, 1);
    if (!kv->free_stack || !kv->in_use) {
        eng_kv_destroy(kv);
        return -ENOMEM;
    }
    /* Lowest ids on top, so a fresh pool hands out 0, 1, 2... */
    for (uint32_t i = 0; i < n_blocks; i++)
        kv->free_stack[i] = (int32_t)(n_blocks - 1 - i);
    kv->n_free = n_blocks;
    return 0;
}

/* Zero every page of [mem, mem + bytes) that is resident. A page that was
 * never touched holds nothing, and writing zeros to it would fault it in:
 * a 2 GiB pool mostly unused took seconds to "scrub" at exit. Residency
 * from mincore(); when that fails (no memory for the vector), the whole
 * range. Swap: a swapped-out page reads as not resident and is dropped
 * with its swap slot by the munmap that follows. */
static void scrub_resident(void *mem, size_t bytes)
{
    size_t pg = (size_t)sysconf(_SC_PAGESIZE), n = (bytes + pg - 1) / pg;
    unsigned char *vec = malloc(n);

    if (!vec || mincore(mem, bytes, vec)) {
        free(vec);
        explicit_bzero(mem, bytes);
        return;
    }
    for (size_t i = 0; i < n;) {
        size_t j = i;
        while (j < n && (vec[j] & 1))
            j++;
        if (j > i)
            explicit_bzero((char *)mem + i * pg, FAVO_MIN(j * pg, bytes) - i * pg);
        i = j + 1;
    }
    free(vec);
}

void eng_kv_destroy(struct eng_kv *kv)
{
    if (kv->mem) {
        scrub_resident(kv->mem, kv->mem_bytes);
        munmap(kv->mem, kv->mem_bytes);
    }
    free(kv->free_stack);
    free(kv->in_use);
    memset(kv, 0, sizeof(*kv));
}

int32_t eng_kv_block_alloc(struct eng_kv *kv)
{
    int32_t b;

    if (!kv->n_free)
        return -ENOSPC;
    b = kv->free_stack[--kv->n_free];
    FAVO_ASSERT(!kv->in_use[b]);   /* K2 */
    kv->in_use[b] = 1;
    return b;
}

void eng_kv_block_release(struct eng_kv *kv, int32_t b)
{
    FAVO_ASSERT(b >= 0 && (uint32_t)b < kv->n_blocks && kv->in_use[b]);   /* K2 */
    explicit_bzero((char *)kv->mem + (size_t)b * kv->block_bytes, kv->block_bytes); /* K1 */
    kv->in_use[b] = 0;
    kv->free_stack[kv->n_free++] = b;
}

void eng_kv_block_zero(struct eng_kv *kv, int32_t b)
{
    FAVO_ASSERT(b >= 0 && (uint32_t)b < kv->n_blocks);
    explicit_bzero((char *)kv->mem + (size_t)b * kv->block_bytes, kv->block_bytes); /* K1 */
}
