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

#include <stddef.h>
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

/* y[i] = silu(g[i]) * u[i] / gelu_tanh(g[i]) * u[i]: the AVX-512 loops
 * below where the CPU has them, else the scalar references (_scalar). */
void eng_ops_silu_mul(float *y, const float *g, const float *u, uint32_t n);
void eng_ops_gelu_mul(float *y, const float *g, const float *u, uint32_t n);
void eng_ops_silu_mul_scalar(float *y, const float *g, const float *u, uint32_t n);
void eng_ops_gelu_mul_scalar(float *y, const float *g, const float *u, uint32_t n);

/* Index of the first largest of x[0..n) (NaN never wins; 0 when nothing
 * beats -inf), vectorized where the CPU has AVX-512: the greedy sampler's
 * pass over the vocabulary. _scalar: the reference loop. */
uint32_t eng_ops_argmax(const float *x, uint32_t n);
uint32_t eng_ops_argmax_scalar(const float *x, uint32_t n);

/*
 * Vector math with AVX-512 F (eng_vmath_avx512.c), only where
 * eng_vmath_fast(): exp with a polynomial (a few ulp from expf), the
 * gated activations on it, and an in-place softmax (s = e^(s - max) /
 * sum, returns max) for attention. Orders of sums depend on n alone.
 */
int eng_vmath_fast(void);
void eng_vmath_avx512_exp(float *y, const float *x, uint32_t n);
void eng_vmath_avx512_silu_mul(float *y, const float *g, const float *u, uint32_t n);
void eng_vmath_avx512_gelu_mul(float *y, const float *g, const float *u, uint32_t n);
float eng_vmath_avx512_softmax(float *s, uint32_t n);
uint32_t eng_vmath_avx512_argmax(const float *x, uint32_t n);

/*
 * RoPE of one head x[head_dim] with precomputed cos/sin[rope_dim/2]:
 * neox = 0: rotate consecutive pairs (x[2i], x[2i+1]) (llama's converter
 * permutes Q/K so this "normal" mode applies); neox = 1: rotate halves
 * (x[i], x[i + rope_dim/2]). Dimensions past rope_dim are unchanged.
 */
void eng_ops_rope(float *x, const float *cs, const float *sn, uint32_t rope_dim, int neox);

/*
 * Attention inner loops over one KV block: scores[i] = (q . k_(slot0+i))
 * * scale for i < n, slot0 + n <= 16, from the block's transposed keys kt
 * (eng_kv.h: kt[d * 16 + slot]); and o[0..hd) += sum_i p[i] * v_i over n
 * value rows hd floats apart. Only where eng_attn_fast(hd) (AVX-512 F,
 * hd 32/64/128/256); callers loop in scalar code otherwise. Sums in an
 * order fixed by hd and n alone.
 */
int eng_attn_fast(uint32_t hd);
void eng_attn_avx512_scores(float *scores, const float *q, const float *kt, uint32_t slot0,
                            uint32_t n, uint32_t hd, float scale);
void eng_attn_avx512_accum(float *o, const float *p, const float *v, uint32_t n, uint32_t hd);
/* The same over an f16 KV block (eng_kv.h): each element widened exactly,
 * then the f32 loops' operations in the f32 loops' order. */
void eng_attn_avx512_scores_f16(float *scores, const float *q, const uint16_t *kt,
                                uint32_t slot0, uint32_t n, uint32_t hd, float scale);
void eng_attn_avx512_accum_f16(float *o, const float *p, const uint16_t *v, uint32_t n,
                               uint32_t hd);
/* eng_kv_put_f16 with AVX-512 F (vcvtps2ph, nearest even). */
void eng_kv_avx512_put_f16(uint16_t *dst, size_t stride, const float *src, uint32_t n);

#endif /* ENG_OPS_H */
