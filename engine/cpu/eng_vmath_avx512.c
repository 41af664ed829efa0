/*
 * eng_vmath_avx512.c - the forward pass's transcendental and reduction
 * loops with AVX-512 F (eng_ops.h "Vector math"): exp for the gated
 * activations (SiLU, GELU-tanh) and the attention softmax, and the
 * greedy sampler's argmax. Reached only after a CPUID check.
 *
 * exp: x = n ln2 + r with n = round(x / ln2) and |r| <= ln2/2 (ln2 split
 * in two parts so r is exact to f32), e^r by Cephes' expf polynomial,
 * times 2^n with vscalefps, which goes to 0 (through the subnormals) and
 * inf on its own. Relative error a few ulp (tests/test-engine-ops.c
 * checks it against expf over [-104, 89] and at the edges). NaN in, NaN
 * out.
 *
 * Every loop here works lane by lane (no sums across lanes) except the
 * softmax's sum and the argmax, whose orders depend only on n: batch
 * invariance holds (eng_step.h S1).
 */
#include "eng_ops.h"

#include <immintrin.h>
#include <math.h>

#define AI static inline __attribute__((always_inline))

AI __m512 exp512(__m512 x)
{
    const __m512 log2e = _mm512_set1_ps(1.44269504088896341f);
    const __m512 ln2_hi = _mm512_set1_ps(0.693359375f);
    const __m512 ln2_lo = _mm512_set1_ps(-2.12194440e-4f);
    __m512 n, r, p;

    /* clamp to [-104, 89] (e^x is 0 / inf in f32 beyond), keeping NaN:
     * vmaxps / vminps return the second operand when unordered */
    x = _mm512_min_ps(_mm512_set1_ps(89.0f), _mm512_max_ps(_mm512_set1_ps(-104.0f), x));
    n = _mm512_roundscale_ps(_mm512_mul_ps(x, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    r = _mm512_fnmadd_ps(n, ln2_hi, x);
    r = _mm512_fnmadd_ps(n, ln2_lo, r);
    /* Cephes expf polynomial: e^r = 1 + r + r^2 * P(r) */
    p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);   /* p * 2^n, to 0 / inf when out of range */
}

AI __mmask16 tail(uint32_t left)
{
    return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
}

void eng_vmath_avx512_exp(float *y, const float *x, uint32_t n)
{
    for (uint32_t i = 0; i < n; i += 16) {
        __mmask16 m = tail(n - i);

        _mm512_mask_storeu_ps(y + i, m, exp512(_mm512_maskz_loadu_ps(m, x + i)));
    }
}

void eng_vmath_avx512_silu_mul(float *y, const float *g, const float *u, uint32_t n)
{
    const __m512 one = _mm512_set1_ps(1.0f);

    for (uint32_t i = 0; i < n; i += 16) {
        __mmask16 m = tail(n - i);
        __m512 gv = _mm512_maskz_loadu_ps(m, g + i), uv = _mm512_maskz_loadu_ps(m, u + i);
        __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), gv));

        _mm512_mask_storeu_ps(y + i, m, _mm512_mul_ps(_mm512_div_ps(gv, _mm512_add_ps(one, e)),
                                                      uv));
    }
}

void eng_vmath_avx512_gelu_mul(float *y, const float *g, const float *u, uint32_t n)
{
    const __m512 c2 = _mm512_set1_ps(-2.0f * 0.7978845608028654f), k = _mm512_set1_ps(0.044715f);
    const __m512 one = _mm512_set1_ps(1.0f);

    /* 0.5 x (1 + tanh z) = x / (1 + e^-2z): no cancellation for x < 0
     * (where 1 + tanh z loses the digits the scalar loop keeps) */
    for (uint32_t i = 0; i < n; i += 16) {
        __mmask16 m = tail(n - i);
        __m512 x = _mm512_maskz_loadu_ps(m, g + i), uv = _mm512_maskz_loadu_ps(m, u + i);
        __m512 mz2 = _mm512_mul_ps(c2, _mm512_fmadd_ps(_mm512_mul_ps(k, x), _mm512_mul_ps(x, x), x));

        _mm512_mask_storeu_ps(y + i, m,
                              _mm512_mul_ps(_mm512_div_ps(x, _mm512_add_ps(one, exp512(mz2))), uv));
    }
}

float eng_vmath_avx512_softmax(float *s, uint32_t n)
{
    __m512 mx = _mm512_set1_ps(-INFINITY), sum = _mm512_setzero_ps(), mv, inv;
    float m;

    for (uint32_t i = 0; i < n; i += 16) {
        __mmask16 k = tail(n - i);

        mx = _mm512_mask_max_ps(mx, k, mx, _mm512_maskz_loadu_ps(k, s + i));
    }
    m = _mm512_reduce_max_ps(mx);
    mv = _mm512_set1_ps(m);
    for (uint32_t i = 0; i < n; i += 16) {
        __mmask16 k = tail(n - i);
        __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, s + i), mv));

        e = _mm512_maskz_mov_ps(k, e);
        _mm512_mask_storeu_ps(s + i, k, e);
        sum = _mm512_add_ps(sum, e);
    }
    inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sum));
    for (uint32_t i = 0; i < n; i += 16) {
        __mmask16 k = tail(n - i);

        _mm512_mask_storeu_ps(s + i, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, s + i), inv));
    }
    return m;
}

uint32_t eng_vmath_avx512_argmax(const float *x, uint32_t n)
{
    __m512 mx = _mm512_set1_ps(-INFINITY);
    float m;

    /* NaN lanes never win: max(acc, NaN) keeps acc with the operands in
     * this order (vmaxps returns the second operand when unordered) */
    for (uint32_t i = 0; i < n; i += 16) {
        __mmask16 k = tail(n - i);

        mx = _mm512_mask_max_ps(mx, k, _mm512_maskz_loadu_ps(k, x + i), mx);
    }
    m = _mm512_reduce_max_ps(mx);
    if (m == -INFINITY)
        return 0;            /* as the scalar loop: nothing beats -inf */
    for (uint32_t i = 0; i < n; i += 16) {
        __mmask16 k = tail(n - i);
        __mmask16 eq = _mm512_mask_cmp_ps_mask(k, _mm512_maskz_loadu_ps(k, x + i),
                                               _mm512_set1_ps(m), _CMP_EQ_OQ);

        if (eq)
            return i + (uint32_t)__builtin_ctz(eq);
    }
    return 0;
}
