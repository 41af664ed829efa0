/*
 * eng_backend.h - the engine's backend interface (STYLE.md 6): a struct of
 * function pointers plus a context, as ggml-backend does it. engine/cpu/
 * implements it now (eng_cpu_backend.c); engine/cuda/ will. Adding a
 * backend means adding a folder and one init function.
 *
 * Lifecycle:
 *
 *   eng_<name>_backend_init(&be, model, opts)     weights uploaded / placed
 *        |
 *        v
 *   be.step(be.ctx, batch, out, logits)  ...repeat...   (+ synchronize)
 *        |
 *        v
 *   be.free(be.ctx)                                     KV and buffers scrubbed
 *
 * Members marked OPTIONAL may be NULL; the comment says what NULL means.
 * Every function returns 0 or -errno unless stated.
 *
 * Invariants:
 *   B1. step() has the semantics of eng_step() (eng_step.h): the CPU
 *       backend is the reference every other backend is checked against
 *       (`favo selftest`), and outputs are batch invariant (S1).
 *   B2. The model is read-only while a backend uses it; a backend keeps
 *       its own copy of whatever it uploads.
 *   B3. KV blocks are zeroed when released (eng_kv.h K1), on every backend.
 */
#ifndef ENG_BACKEND_H
#define ENG_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "eng_model.h"
#include "eng_step.h"

/* Operations a backend may or may not support, for supports(). */
enum eng_op {
    ENG_OP_MATMUL,       /* weight type in `type` */
    ENG_OP_RMSNORM,
    ENG_OP_ROPE,         /* type: 0 normal, 1 neox */
    ENG_OP_ATTENTION,    /* paged, causal, optional sliding window */
    ENG_OP_SILU_MUL,
    ENG_OP_GELU_MUL,
    ENG_OP_SAMPLE,
};

struct eng_backend_opts {
    uint32_t n_threads;          /* CPU threads; 0: 1 */
    uint32_t device;             /* device index (GPU backends) */
    uint32_t kv_blocks;          /* KV pool size in 16-token blocks */
    const char *kv_type;         /* "auto" / NULL, "f16", "f32" (eng_kv_type_pick; auto
                                    is f32 in exact mode, the reference) */
    struct eng_ctx_opts ctx;     /* max tokens / seqs per step, n_ctx */
};

struct eng_backend_i {
    const char *name;            /* "cpu", "cuda" */
    void *ctx;

    /* Device memory. buf_alloc: n bytes, *out gets a handle the backend
     * understands (a host pointer on the CPU). OPTIONAL (NULL: the backend
     * manages all memory itself). */
    int (*buf_alloc)(void *ctx, size_t n, void **out);
    void (*buf_free)(void *ctx, void *buf);
    /* Copy n host bytes to buf + off (weights, tables). OPTIONAL with
     * buf_alloc. */
    int (*tensor_upload)(void *ctx, void *buf, size_t off, const void *src, size_t n);

    /* Whether op with `type` runs on this backend. REQUIRED. */
    bool (*supports)(void *ctx, enum eng_op op, uint32_t type);

    /* KV blocks: alloc returns a block id or -ENOSPC; release zeroes (B3). */
    int32_t (*kv_alloc)(void *ctx);
    void (*kv_release)(void *ctx, int32_t block);

    /* One step (B1). May return before the work is done on asynchronous
     * backends; out/logits are valid after synchronize(). REQUIRED. */
    int (*step)(void *ctx, const struct eng_batch *b, struct eng_sample_out *out,
                float *logits);
    /* Wait for the last step. OPTIONAL (NULL: step is synchronous). */
    int (*synchronize)(void *ctx);

    /* Release everything; the struct must not be used afterwards. */
    void (*free)(void *ctx);
};

/* The CPU backend (engine/cpu/eng_cpu_backend.c). */
int eng_cpu_backend_init(struct eng_backend_i *be, const struct eng_model *m,
                         const struct eng_backend_opts *o);

/* step() then synchronize() when present. */
static inline int eng_backend_step_sync(struct eng_backend_i *be, const struct eng_batch *b,
                                        struct eng_sample_out *out, float *logits)
{
    int rc = be->step(be->ctx, b, out, logits);

    if (!rc && be->synchronize)
        rc = be->synchronize(be->ctx);
    return rc;
}

#endif /* ENG_BACKEND_H */
