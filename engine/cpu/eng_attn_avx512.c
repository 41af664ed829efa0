/*
 * eng_attn_avx512.c - the attention inner loops (eng_ops.h eng_attn_*)
 * with AVX-512 F for head sizes 32, 64, 128 and 256: the head's query or
 * output row stays in registers while the keys / values of one KV block
 * stream past, four keys at a time for the scores. Reached only after
 * eng_attn_fast() checked the CPU and the head size.
 *
 * The order of every sum depends only on the head size and on which KV
 * block a position lies in, never on the batch (eng_step.h S1).
 */
#include "eng_ops.h"

#include <immintrin.h>

#define AI static inline __attribute__((always_inline))

AI void scores_nc(const int NC, float *sc, const float *q, const float *k, uint32_t n,
                  float scale)
{
    __m512 qv[16];
    uint32_t i = 0;

    for (int c = 0; c < NC; c++)
        qv[c] = _mm512_loadu_ps(q + 16 * c);
    for (; i + 4 <= n; i += 4) {
        const float *k0 = k + (size_t)i * 16 * NC;
        __m512 a[4][2];

        for (int r = 0; r < 4; r++)
            a[r][0] = a[r][1] = _mm512_setzero_ps();
        for (int c = 0; c < NC; c++)
            for (int r = 0; r < 4; r++)
                a[r][c & 1] = _mm512_fmadd_ps(qv[c], _mm512_loadu_ps(k0 + (size_t)r * 16 * NC + 16 * c),
                                              a[r][c & 1]);
        for (int r = 0; r < 4; r++)
            sc[i + r] = _mm512_reduce_add_ps(_mm512_add_ps(a[r][0], a[r][1])) * scale;
    }
    for (; i < n; i++) {
        const float *k0 = k + (size_t)i * 16 * NC;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0;

        for (int c = 0; c < NC; c++) {
            if (c & 1)
                a1 = _mm512_fmadd_ps(qv[c], _mm512_loadu_ps(k0 + 16 * c), a1);
            else
                a0 = _mm512_fmadd_ps(qv[c], _mm512_loadu_ps(k0 + 16 * c), a0);
        }
        sc[i] = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1)) * scale;
    }
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

void eng_attn_avx512_scores(float *sc, const float *q, const float *k, uint32_t n, uint32_t hd,
                            float scale)
{
    switch (hd) {
    case 32: scores_nc(2, sc, q, k, n, scale); break;
    case 64: scores_nc(4, sc, q, k, n, scale); break;
    case 128: scores_nc(8, sc, q, k, n, scale); break;
    default: scores_nc(16, sc, q, k, n, scale); break;
    }
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
