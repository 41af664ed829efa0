/*
 * eng_ops.h - the CPU forward pass's float operations besides the matmul
 * (eng_quant.h): RMSNorm, RoPE, the attention dot/axpy, gated activations.
 *
 * Each has a scalar reference (eng_ops.c) and, where it pays, an AVX2
 * version (eng_ops_avx2.c), chosen once by CPUID through eng_ops_get().
 * The vector versions sum in a fixed lane order that does not depend on
 * the batch, so results stay batch invariant (eng_step.h S1); they differ
 * from the scalar reference only by f32 rounding (checked in
 * tests/test-engine-forward-ops.c).
 */
#ifndef ENG_OPS_H
#define ENG_OPS_H

#include <stdint.h>

struct eng_ops {
    const char *name;
    float (*dot)(const float *a, const float *b, uint32_t n);
    void (*axpy)(float *y, float a, const float *x, uint32_t n);     /* y += a*x */
    /* y = x / rms(x) * w (w may be NULL: no weight) */
    void (*rmsnorm)(float *y, const float *x, const float *w, uint32_t n, float eps);
};

const struct eng_ops *eng_ops_get(void);
const struct eng_ops *eng_ops_scalar(void);
const struct eng_ops *eng_ops_avx2(void);   /* NULL when the CPU lacks AVX2 */

/* y[i] = silu(g[i]) * u[i] / gelu_tanh(g[i]) * u[i] */
void eng_ops_silu_mul(float *y, const float *g, const float *u, uint32_t n);
void eng_ops_gelu_mul(float *y, const float *g, const float *u, uint32_t n);

/*
 * RoPE of one head x[head_dim] with precomputed cos/sin[rope_dim/2]:
 * neox = 0: rotate consecutive pairs (x[2i], x[2i+1]) (llama's converter
 * permutes Q/K so this "normal" mode applies); neox = 1: rotate halves
 * (x[i], x[i + rope_dim/2]). Dimensions past rope_dim are unchanged.
 */
void eng_ops_rope(float *x, const float *cs, const float *sn, uint32_t rope_dim, int neox);

/*
 * Attention inner loops over the rows of one KV block (n rows, hd floats
 * apart): scores[i] = (q . k_i) * scale, and o[0..hd) += sum_i p[i] * v_i.
 * Only where eng_attn_fast(hd) (AVX-512 F, hd 32/64/128/256); callers use
 * dot / axpy otherwise. Sums in an order fixed by hd and n alone.
 */
int eng_attn_fast(uint32_t hd);
void eng_attn_avx512_scores(float *scores, const float *q, const float *k, uint32_t n,
                            uint32_t hd, float scale);
void eng_attn_avx512_accum(float *o, const float *p, const float *v, uint32_t n, uint32_t hd);

#endif /* ENG_OPS_H */
