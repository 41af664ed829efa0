/*
 * eng_cpu_backend.c - the CPU backend: eng_backend_i over eng_step and the
 * KV pool. Weights stay where eng_model_load placed them (anonymous,
 * huge-page memory), so no buffers or uploads are needed.
 */
#include "eng_backend.h"
#include "eng_kv.h"
#include "eng_quant.h"
#include "eng_step.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct cpu_be {
    struct eng_kv kv;
    eng_ctx_t *ctx;
};

static bool cpu_supports(void *ctx, enum eng_op op, uint32_t type)
{
    switch (op) {
    case ENG_OP_MATMUL:
        return eng_quant_supported(type);
    case ENG_OP_ROPE:
        return type <= 1;
    default:
        return true;
    }
}

static int32_t cpu_kv_alloc(void *ctx)
{
    return eng_kv_block_alloc(&((struct cpu_be *)ctx)->kv);
}

static void cpu_kv_release(void *ctx, int32_t b)
{
    eng_kv_block_release(&((struct cpu_be *)ctx)->kv, b);
}

static int cpu_step(void *ctx, const struct eng_batch *b, struct eng_sample_out *out,
                    float *logits)
{
    return eng_step(((struct cpu_be *)ctx)->ctx, b, out, logits);
}

static void cpu_free(void *ctx)
{
    struct cpu_be *cb = ctx;

    if (!cb)
        return;
    eng_ctx_free(cb->ctx);
    eng_kv_destroy(&cb->kv);
    free(cb);
}

int eng_cpu_backend_init(struct eng_backend_i *be, const struct eng_model *m,
                         const struct eng_backend_opts *o)
{
    struct cpu_be *cb = calloc(1, sizeof(*cb));
    struct eng_ctx_opts co = o ? o->ctx : (struct eng_ctx_opts){ 0 };
    uint32_t blocks;
    int rc;

    if (!cb)
        return -ENOMEM;
    if (o && o->n_threads)
        co.n_threads = o->n_threads;
    const char *want = o ? o->kv_type : NULL;
    enum eng_kv_type kt;

    blocks = o && o->kv_blocks ? o->kv_blocks : 256;
    if (co.exact && (!want || !strcmp(want, "auto")))
        want = "f32";                 /* the reference mode checks against f32/f64 oracles */
    if ((rc = eng_kv_type_pick(m, want, &kt)) ||
        (rc = eng_kv_init_type(&cb->kv, &m->hp, blocks, kt)) ||
        (rc = eng_ctx_init(&cb->ctx, m, &cb->kv, &co))) {
        cpu_free(cb);
        return rc;
    }
    *be = (struct eng_backend_i){
        .name = "cpu", .ctx = cb, .supports = cpu_supports, .kv_alloc = cpu_kv_alloc,
        .kv_release = cpu_kv_release, .step = cpu_step, .free = cpu_free,
    };
    return 0;
}
