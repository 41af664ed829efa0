/*
 * eng_attn_avx512.c - the attention inner loops (eng_ops.h eng_attn_*)
 * with AVX-512 F for head sizes 32, 64, 128 and 256: the scores of a
 * block's 16 positions at once from its transposed keys (eng_kv.h), and
 * the output row in registers while the block's values stream past.
 * Reached only after eng_attn_fast() checked the CPU and the head size.
 *
 * The order of every sum depends only on the head size and on which KV
 * block a position lies in, never on the batch (eng_step.h S1).
 */
#include "eng_ops.h"

#include <immintrin.h>

#define AI static inline __attribute__((always_inline))

/* The block's 16 scores: keys transposed (eng_kv.h), so dimension d of
 * all 16 positions is one vector; four accumulators (d mod 4) summed as
 * (0+1)+(2+3), an order fixed by hd alone. */
AI __m512 scores16(const float *q, const float *kt, uint32_t hd)
{
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;

    for (uint32_t d = 0; d < hd; d += 4) {
        a0 = _mm512_fmadd_ps(_mm512_set1_ps(q[d]), _mm512_loadu_ps(kt + 16 * d), a0);
        a1 = _mm512_fmadd_ps(_mm512_set1_ps(q[d + 1]), _mm512_loadu_ps(kt + 16 * (d + 1)), a1);
        a2 = _mm512_fmadd_ps(_mm512_set1_ps(q[d + 2]), _mm512_loadu_ps(kt + 16 * (d + 2)), a2);
        a3 = _mm512_fmadd_ps(_mm512_set1_ps(q[d + 3]), _mm512_loadu_ps(kt + 16 * (d + 3)), a3);
    }
    return _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3));
}

AI void accum_nc(const int NC, float *o, const float *p, const float *v, uint32_t n)
{
    /* two sets of accumulators (even / odd keys) while they fit */
    enum { SETS = 2 };
    __m512 a[SETS][16];
    const int sets = NC <= 8 ? 2 : 1;
    uint32_t i = 0;

    for (int s = 0; s < SETS; s++)
        for (int c = 0; c < NC; c++)
            a[s][c] = _mm512_setzero_ps();
    if (sets == 2)
        for (; i + 2 <= n; i += 2) {
            __m512 p0 = _mm512_set1_ps(p[i]), p1 = _mm512_set1_ps(p[i + 1]);
            const float *v0 = v + (size_t)i * 16 * NC;

            for (int c = 0; c < NC; c++) {
                a[0][c] = _mm512_fmadd_ps(p0, _mm512_loadu_ps(v0 + 16 * c), a[0][c]);
                a[1][c] = _mm512_fmadd_ps(p1, _mm512_loadu_ps(v0 + 16 * NC + 16 * c), a[1][c]);
            }
        }
    for (; i < n; i++) {
        __m512 p0 = _mm512_set1_ps(p[i]);
        const float *v0 = v + (size_t)i * 16 * NC;

        for (int c = 0; c < NC; c++)
            a[0][c] = _mm512_fmadd_ps(p0, _mm512_loadu_ps(v0 + 16 * c), a[0][c]);
    }
    for (int c = 0; c < NC; c++) {
        __m512 s = sets == 2 ? _mm512_add_ps(a[0][c], a[1][c]) : a[0][c];

        _mm512_storeu_ps(o + 16 * c, _mm512_add_ps(_mm512_loadu_ps(o + 16 * c), s));
    }
}

void eng_attn_avx512_scores(float *sc, const float *q, const float *kt, uint32_t slot0,
                            uint32_t n, uint32_t hd, float scale)
{
    __m512 v = _mm512_mul_ps(scores16(q, kt, hd), _mm512_set1_ps(scale));
    __mmask16 m = (__mmask16)(((1u << n) - 1) << slot0);

    _mm512_mask_storeu_ps(sc, (__mmask16)((1u << n) - 1), _mm512_maskz_compress_ps(m, v));
}

void eng_attn_avx512_accum(float *o, const float *p, const float *v, uint32_t n, uint32_t hd)
{
    switch (hd) {
    case 32: accum_nc(2, o, p, v, n); break;
    case 64: accum_nc(4, o, p, v, n); break;
    case 128: accum_nc(8, o, p, v, n); break;
    default: accum_nc(16, o, p, v, n); break;
    }
}
