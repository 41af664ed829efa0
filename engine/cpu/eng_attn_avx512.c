/*
 * eng_attn_avx512.c - the attention inner loops (eng_ops.h eng_attn_*)
 * with AVX-512 F for head sizes 32, 64, 128 and 256: the scores of a
 * block's 16 positions at once from its transposed keys (eng_kv.h), and
 * the output row in registers while the block's values stream past.
 * Reached only after eng_attn_fast() checked the CPU and the head size.
 * Each loop exists for f32 and f16 blocks (eng_kv.h): an f16 element is
 * widened exactly, then the same operations in the same order.
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
/* 16 elements at p as f32: f32 (F16 = 0) or f16 widened exactly */
AI __m512 ld16(const int F16, const void *p)
{
    return F16 ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p))
               : _mm512_loadu_ps((const float *)p);
}

AI __m512 scores16(const int F16, const float *q, const void *ktv, uint32_t hd)
{
    const char *kt = ktv;
    const size_t row = 16 * (F16 ? 2 : 4);      /* bytes of one dimension's 16 slots */
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;

    for (uint32_t d = 0; d < hd; d += 4) {
        a0 = _mm512_fmadd_ps(_mm512_set1_ps(q[d]), ld16(F16, kt + row * d), a0);
        a1 = _mm512_fmadd_ps(_mm512_set1_ps(q[d + 1]), ld16(F16, kt + row * (d + 1)), a1);
        a2 = _mm512_fmadd_ps(_mm512_set1_ps(q[d + 2]), ld16(F16, kt + row * (d + 2)), a2);
        a3 = _mm512_fmadd_ps(_mm512_set1_ps(q[d + 3]), ld16(F16, kt + row * (d + 3)), a3);
    }
    return _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3));
}

AI void accum_nc(const int F16, const int NC, float *o, const float *p, const void *vv, uint32_t n)
{
    /* two sets of accumulators (even / odd keys) while they fit */
    enum { SETS = 2 };
    __m512 a[SETS][16];
    const int sets = NC <= 8 ? 2 : 1;
    const size_t esz = F16 ? 2 : 4;
    const char *v = vv;
    uint32_t i = 0;

    for (int s = 0; s < SETS; s++)
        for (int c = 0; c < NC; c++)
            a[s][c] = _mm512_setzero_ps();
    if (sets == 2)
        for (; i + 2 <= n; i += 2) {
            __m512 p0 = _mm512_set1_ps(p[i]), p1 = _mm512_set1_ps(p[i + 1]);
            const char *v0 = v + (size_t)i * 16 * NC * esz;

            for (int c = 0; c < NC; c++) {
                a[0][c] = _mm512_fmadd_ps(p0, ld16(F16, v0 + 16 * c * esz), a[0][c]);
                a[1][c] = _mm512_fmadd_ps(p1, ld16(F16, v0 + (16 * NC + 16 * c) * esz), a[1][c]);
            }
        }
    for (; i < n; i++) {
        __m512 p0 = _mm512_set1_ps(p[i]);
        const char *v0 = v + (size_t)i * 16 * NC * esz;

        for (int c = 0; c < NC; c++)
            a[0][c] = _mm512_fmadd_ps(p0, ld16(F16, v0 + 16 * c * esz), a[0][c]);
    }
    for (int c = 0; c < NC; c++) {
        __m512 s = sets == 2 ? _mm512_add_ps(a[0][c], a[1][c]) : a[0][c];

        _mm512_storeu_ps(o + 16 * c, _mm512_add_ps(_mm512_loadu_ps(o + 16 * c), s));
    }
}

AI void scores_t(const int F16, float *sc, const float *q, const void *kt, uint32_t slot0,
                 uint32_t n, uint32_t hd, float scale)
{
    __m512 v = _mm512_mul_ps(scores16(F16, q, kt, hd), _mm512_set1_ps(scale));
    __mmask16 m = (__mmask16)(((1u << n) - 1) << slot0);

    _mm512_mask_storeu_ps(sc, (__mmask16)((1u << n) - 1), _mm512_maskz_compress_ps(m, v));
}

AI void accum_t(const int F16, float *o, const float *p, const void *v, uint32_t n, uint32_t hd)
{
    switch (hd) {
    case 32: accum_nc(F16, 2, o, p, v, n); break;
    case 64: accum_nc(F16, 4, o, p, v, n); break;
    case 128: accum_nc(F16, 8, o, p, v, n); break;
    default: accum_nc(F16, 16, o, p, v, n); break;
    }
}

void eng_attn_avx512_scores(float *sc, const float *q, const float *kt, uint32_t slot0,
                            uint32_t n, uint32_t hd, float scale)
{
    scores_t(0, sc, q, kt, slot0, n, hd, scale);
}

void eng_attn_avx512_accum(float *o, const float *p, const float *v, uint32_t n, uint32_t hd)
{
    accum_t(0, o, p, v, n, hd);
}

void eng_attn_avx512_scores_f16(float *sc, const float *q, const uint16_t *kt, uint32_t slot0,
                                uint32_t n, uint32_t hd, float scale)
{
    scores_t(1, sc, q, kt, slot0, n, hd, scale);
}

void eng_attn_avx512_accum_f16(float *o, const float *p, const uint16_t *v, uint32_t n,
                               uint32_t hd)
{
    accum_t(1, o, p, v, n, hd);
}

void eng_kv_avx512_put_f16(uint16_t *dst, size_t stride, const float *src, uint32_t n)
{
    const __m512 hi = _mm512_set1_ps(65504.0f), lo = _mm512_set1_ps(-65504.0f);

    for (uint32_t i = 0; i < n; i += 16) {
        uint32_t k = n - i < 16 ? n - i : 16;
        __mmask16 m = (__mmask16)(k == 16 ? 0xffff : (1u << k) - 1);
        /* vminps / vmaxps return the second operand when unordered: NaN stays */
        __m512 x = _mm512_max_ps(lo, _mm512_min_ps(hi, _mm512_maskz_loadu_ps(m, src + i)));
        __m256i h = _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);

        if (stride == 1) {
            _mm256_mask_storeu_epi16(dst + i, m, h);
        } else {
            _Alignas(32) uint16_t t[16];

            _mm256_store_si256((__m256i *)t, h);
            for (uint32_t j = 0; j < k; j++)
                dst[(size_t)(i + j) * stride] = t[j];
        }
    }
}
