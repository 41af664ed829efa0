/*
 * eng_kv.h - the paged KV cache: a pool of fixed-size blocks of 16 token
 * positions, and a block table per sequence mapping its positions to
 * blocks (position p lives in table[p / 16], slot p % 16).
 *
 * Block layout: one block holds every layer's keys and values for its 16
 * positions, contiguous, so freeing zeroes one range:
 *
 *   block b: [layer 0: K[head][head_dim][16] V[head][16][head_dim_v]]
 *            [layer 1: ...] ... [layer n_layer-1: ...]
 *
 * Keys are stored transposed (dimension-major: K[d][slot]) so that one
 * 16-float vector holds one dimension of the block's 16 positions and a
 * query's 16 scores are head_dim fused multiply-adds with no horizontal
 * sums; values are position-major (V[slot][d]), as the weighted sum over
 * positions reads them. eng_kv_k_at() gives a key element's address.
 *
 * Keys and values are f32, exactly what the forward pass computed (the CPU
 * backend is the reference the CUDA one is compared with).
 *
 * Block lifecycle (the batcher will own the allocator in shared memory;
 * `favo run`, the tests and the benchmark use this one):
 *
 *        eng_kv_block_alloc()            eng_kv_block_release()
 *   FREE ---------------------> IN USE ----------------------> FREE
 *   (all zero)                  (written by eng_step for the   (explicit_bzero
 *                                sequence whose table holds it)  of the block)
 *
 * Invariants:
 *   K1. A FREE block is all zero bytes: no request content outlives its
 *       sequence (ARCHITECTURE.md invariant 5).
 *   K2. A block is in at most one sequence's table; release of a block
 *       that is not IN USE is a bug and aborts (FAVO_ASSERT).
 *   K3. The pool is anonymous memory marked MADV_DONTDUMP: never in a
 *       core dump.
 *
 * Errors: eng_kv_init -ENOMEM/-EINVAL; eng_kv_block_alloc -ENOSPC when the
 * pool is exhausted.
 */
#ifndef ENG_KV_H
#define ENG_KV_H

#include <stddef.h>
#include <stdint.h>

#include "eng_model.h"

#define ENG_KV_BLOCK 16

struct eng_kv {
    uint32_t n_layer, n_head_kv, head_dim, head_dim_v;
    uint32_t n_blocks, n_free;
    size_t layer_floats;      /* floats per layer in a block (K then V) */
    size_t block_bytes;
    float *mem;               /* n_blocks * block_bytes */
    size_t mem_bytes;
    int32_t *free_stack;      /* free block ids, top at n_free - 1 */
    uint8_t *in_use;          /* per block, for K2 */
};

int eng_kv_init(struct eng_kv *kv, const struct eng_hparams *hp, uint32_t n_blocks);
void eng_kv_destroy(struct eng_kv *kv);
/* Blocks needed to hold n positions. */
static inline uint32_t eng_kv_blocks_for(uint32_t n)
{
    return (n + ENG_KV_BLOCK - 1) / ENG_KV_BLOCK;
}
/* A free block id, or -ENOSPC. */
int32_t eng_kv_block_alloc(struct eng_kv *kv);
/* Zero the block (K1) and return it to the pool. */
void eng_kv_block_release(struct eng_kv *kv, int32_t b);
/* Zero the block (explicit_bzero) without touching the free list: for a
 * caller whose allocator lives elsewhere (the engine stage, whose blocks the
 * batcher allocates in shared memory, bat_kv.h) and for scratch blocks. */
void eng_kv_block_zero(struct eng_kv *kv, int32_t b);

/* Keys of (block, layer, kv head): head_dim rows of ENG_KV_BLOCK floats
 * (transposed: element (slot, d) at [d * ENG_KV_BLOCK + slot]). */
static inline float *eng_kv_k(const struct eng_kv *kv, int32_t b, uint32_t layer, uint32_t h)
{
    return kv->mem + (size_t)b * (kv->block_bytes / sizeof(float)) + layer * kv->layer_floats +
           (size_t)h * ENG_KV_BLOCK * kv->head_dim;
}
/* Key dimension d of position slot in (block, layer, kv head). */
static inline float *eng_kv_k_at(const struct eng_kv *kv, int32_t b, uint32_t layer, uint32_t h,
                                 uint32_t slot, uint32_t d)
{
    return eng_kv_k(kv, b, layer, h) + (size_t)d * ENG_KV_BLOCK + slot;
}

/* Values of (block, layer, kv head): ENG_KV_BLOCK rows of head_dim_v floats. */
static inline float *eng_kv_v(const struct eng_kv *kv, int32_t b, uint32_t layer, uint32_t h)
{
    return kv->mem + (size_t)b * (kv->block_bytes / sizeof(float)) + layer * kv->layer_floats +
           (size_t)kv->n_head_kv * ENG_KV_BLOCK * kv->head_dim +
           (size_t)h * ENG_KV_BLOCK * kv->head_dim_v;
}

#endif /* ENG_KV_H */
