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
 * Element type, per pool (eng_kv_init_type): f32, exactly what the forward
 * pass computed (the reference: the transformers-oracle tests run on it),
 * or f16, half the bytes, so a decode step that is bound by reading the
 * cache reads half as much and --kv-cache-mb holds twice the positions
 * (llama.cpp's default cache type too). f16 elements are the f32 values
 * clamped to +-65504 (a finite key never becomes inf, whose scores would
 * be NaN; NaN stays NaN) and rounded to nearest even: eng_kv_put_f16 (one
 * rounding, the same bits from the scalar and the AVX-512 path). Readers
 * widen them exactly (eng_f16_to_f32 / vcvtph2ps). eng_kv_type_pick()
 * chooses "auto": f32 for a model whose layer weights are F32 (the
 * oracle files), f16 otherwise.
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

enum eng_kv_type { ENG_KV_F32 = 0, ENG_KV_F16 = 1 };

struct eng_kv {
    uint32_t n_layer, n_head_kv, head_dim, head_dim_v;
    enum eng_kv_type type;
    uint32_t esz;             /* bytes per element: 4 (f32) or 2 (f16) */
    uint32_t n_blocks, n_free;
    size_t layer_floats;      /* elements per layer in a block (K then V) */
    size_t block_bytes;
    void *mem;                /* n_blocks * block_bytes */
    size_t mem_bytes;
    int32_t *free_stack;      /* free block ids, top at n_free - 1 */
    uint8_t *in_use;          /* per block, for K2 */
};

/* A pool of n_blocks blocks of element type t; eng_kv_init: f32. */
int eng_kv_init_type(struct eng_kv *kv, const struct eng_hparams *hp, uint32_t n_blocks,
                     enum eng_kv_type t);
int eng_kv_init(struct eng_kv *kv, const struct eng_hparams *hp, uint32_t n_blocks);
/* Bytes of one block for the shape hp and type t (what eng_kv_init_type
 * makes block_bytes). */
static inline size_t eng_kv_block_bytes_for(const struct eng_hparams *hp, enum eng_kv_type t)
{
    return (size_t)hp->n_head_kv * ENG_KV_BLOCK * ((size_t)hp->head_dim + hp->head_dim_v) *
           hp->n_layer * (t == ENG_KV_F16 ? 2 : 4);
}
/* The type for a --kv-cache-type value: "f32", "f16", or "auto" / NULL
 * (f32 when layer 0's attention weights are F32, f16 otherwise). -EINVAL
 * for anything else. */
int eng_kv_type_pick(const struct eng_model *m, const char *want, enum eng_kv_type *out);
const char *eng_kv_type_name(enum eng_kv_type t);
/* dst[i * stride] = src[i] as f16 (clamped, nearest even; see the top),
 * i < n: a key's dimensions (stride ENG_KV_BLOCK) or a value row (1). */
void eng_kv_put_f16(uint16_t *dst, size_t stride, const float *src, uint32_t n);
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

/* Keys of (block, layer, kv head): head_dim rows of ENG_KV_BLOCK elements
 * (transposed: element (slot, d) at [d * ENG_KV_BLOCK + slot]), of the
 * pool's type. */
static inline void *eng_kv_kp(const struct eng_kv *kv, int32_t b, uint32_t layer, uint32_t h)
{
    return (char *)kv->mem + (size_t)b * kv->block_bytes +
           (layer * kv->layer_floats + (size_t)h * ENG_KV_BLOCK * kv->head_dim) * kv->esz;
}
/* Values of (block, layer, kv head): ENG_KV_BLOCK rows of head_dim_v elements. */
static inline void *eng_kv_vp(const struct eng_kv *kv, int32_t b, uint32_t layer, uint32_t h)
{
    return (char *)kv->mem + (size_t)b * kv->block_bytes +
           (layer * kv->layer_floats + (size_t)kv->n_head_kv * ENG_KV_BLOCK * kv->head_dim +
            (size_t)h * ENG_KV_BLOCK * kv->head_dim_v) * kv->esz;
}
/* The same for an f32 pool, as floats. */
static inline float *eng_kv_k(const struct eng_kv *kv, int32_t b, uint32_t layer, uint32_t h)
{
    return (float *)eng_kv_kp(kv, b, layer, h);
}
/* Key dimension d of position slot in (block, layer, kv head), f32 pool. */
static inline float *eng_kv_k_at(const struct eng_kv *kv, int32_t b, uint32_t layer, uint32_t h,
                                 uint32_t slot, uint32_t d)
{
    return eng_kv_k(kv, b, layer, h) + (size_t)d * ENG_KV_BLOCK + slot;
}
static inline float *eng_kv_v(const struct eng_kv *kv, int32_t b, uint32_t layer, uint32_t h)
{
    return (float *)eng_kv_vp(kv, b, layer, h);
}

#endif /* ENG_KV_H */
