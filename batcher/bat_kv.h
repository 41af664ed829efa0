/*
 * bat_kv.h - the batcher's paged KV block manager: which of the engine's
 * KV blocks (16 token positions each, eng_kv.h) belongs to which sequence.
 *
 * Division of labour with the engine (eng_kv.h K1):
 *   - the batcher ALLOCATES: it alone decides which block ids a sequence's
 *     block table holds, and hands the tables to the engine in the batch
 *     plan (bat_plan.h);
 *   - the engine ZEROES: every block id the batcher frees is listed in the
 *     next plan's freed[] array, and the engine explicit_bzero()s those
 *     blocks before it runs any sequence of that plan. A freed id may
 *     therefore be handed out again in the same plan (zeroed first, then
 *     written), which keeps the accounting exact: a block is either on the
 *     free stack or in exactly one block table.
 *
 * Block lifecycle (as the batcher sees it):
 *
 *         bat_kv_alloc()                 bat_kv_free()
 *   FREE ---------------> OWNED ---------------------------> FREE
 *   (on the free stack)   (in one sequence's table;   (listed in the next
 *                          written by the engine)      plan's freed[]; the
 *                                                      engine zeroes it)
 *
 * The manager lives in caller-provided memory (the data segment) and holds
 * indices only, so a restarted batcher re-attaches to it.
 *
 * Invariants (cited by FAVO_ASSERT as "kv inv N"):
 *   1. n_free + (blocks OWNED) == n_blocks, always; the free stack holds
 *      exactly the FREE ids, each once.
 *   2. bat_kv_free() of a block that is not OWNED aborts (double free
 *      would hand one block to two sequences).
 *
 * Errors: bat_kv_init -EINVAL (0 blocks or too small a region);
 * bat_kv_alloc -ENOSPC when every block is OWNED.
 */
#ifndef BAT_KV_H
#define BAT_KV_H

#include <stddef.h>
#include <stdint.h>

#define BAT_KV_BLOCK 16
#define BAT_KV_MAGIC 0x564b5442u /* "BTKV" */

struct bat_kv {
    uint32_t magic;
    uint32_t n_blocks;
    uint32_t n_free;
    uint32_t off_stack;   /* int32_t[n_blocks] free ids, top at n_free - 1 (from this struct) */
    uint32_t off_owned;   /* uint8_t[n_blocks] 1 = OWNED (from this struct) */
    uint32_t pad_;
};

static inline uint32_t bat_kv_blocks_for(uint32_t n_tokens)
{
    return (n_tokens + BAT_KV_BLOCK - 1) / BAT_KV_BLOCK;
}

/* Bytes a manager of n_blocks needs (struct included). */
size_t bat_kv_size(uint32_t n_blocks);
/* Lay out a manager of n_blocks in mem (size bytes, 8-aligned); all FREE. */
int bat_kv_init(struct bat_kv *kv, size_t size, uint32_t n_blocks);
/* A FREE block id, now OWNED, or -ENOSPC. */
int32_t bat_kv_alloc(struct bat_kv *kv);
/* Return an OWNED block (kv inv 2). The caller lists it for zeroing. */
void bat_kv_free(struct bat_kv *kv, int32_t b);
/* Blocks OWNED. */
static inline uint32_t bat_kv_used(const struct bat_kv *kv)
{
    return kv->n_blocks - kv->n_free;
}
/* Full consistency check (kv inv 1), O(n_blocks): 0 or -EBADMSG. */
int bat_kv_check(const struct bat_kv *kv);

#endif /* BAT_KV_H */
