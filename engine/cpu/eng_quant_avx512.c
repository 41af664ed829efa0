/*
 * eng_quant_avx512.c - AVX-512 (F/BW/VL/DQ) + VNNI dot products; used
 * only when eng_cpu_features() reports both ENG_CPU_AVX512 and
 * ENG_CPU_AVX512VNNI (otherwise eng_quant falls back to the AVX2 file).
 *
 * 32-block types: two blocks per 512-bit register; the weight codes are
 * widened to unsigned bytes and vpdpbusd (u8 x i8, 4 products summed into
 * each i32 lane) replaces AVX2's maddubs + madd; the 5th bits of q5_0 /
 * q5_1 are the two blocks' 32-bit qh words used directly as a 64-bit
 * byte mask. K-quants: 64 activation bytes per step, maddubs into i16
 * then vpdpwssd multiplies by the sub-block scales and accumulates in
 * one instruction. Integer sums are exactly the reference's; only the
 * f32 accumulation order differs (bounds in tests/test-engine-quant.c).
 */
#include "eng_quant_int.h"

#include <immintrin.h>
#include <string.h>

#define IMPL "avx512vnni"

static inline float h2f(uint16_t h)
{
    return _cvtsh_ss(h);
}

/* [s0 x 8 | s1 x 8] */
static inline __m512 scale2(float s0, float s1)
{
    return _mm512_insertf32x8(_mm512_set1_ps(s0), _mm256_set1_ps(s1), 1);
}

/* two blocks' 16 nibble bytes -> 64 bytes in element order:
 * [b0 el 0..15 | b0 el 16..31 | b1 el 0..15 | b1 el 16..31] */
static inline __m512i nib64(const uint8_t *q0, const uint8_t *q1)
{
    __m256i ab = _mm256_set_m128i(_mm_loadu_si128((const __m128i *)q1),
                                  _mm_loadu_si128((const __m128i *)q0));
    const __m512i idx = _mm512_set_epi64(3, 2, 3, 2, 1, 0, 1, 0);
    __m512i z = _mm512_permutexvar_epi64(idx, _mm512_castsi256_si512(ab));
    z = _mm512_mask_blend_epi64(0xcc, z, _mm512_srli_epi16(z, 4));
    return _mm512_and_si512(z, _mm512_set1_epi8(0x0f));
}

static inline __m512i ld2x32(const int8_t *a, const int8_t *b)
{
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)a)),
                              _mm256_loadu_si256((const __m256i *)b), 1);
}

static inline __mmask64 qh_mask(const uint8_t *a, const uint8_t *b)
{
    uint32_t x, y;
    memcpy(&x, a, 4);
    memcpy(&y, b, 4);
    return (__mmask64)x | ((__mmask64)y << 32);
}

/* ---- two-block kernels; keep1 = 0 makes the second block count zero
 * (used for an odd last block, with w1 == w0, x1 == x0) ---- */

static inline void blk2_q8_0(const struct eng_bq8_0 *w0, const struct eng_bq8_0 *w1,
                             const struct eng_bq8_0 *x0, const struct eng_bq8_0 *x1,
                             float keep1, __m512 *acc, float *sacc)
{
    __m512i w = ld2x32(w0->qs, w1->qs), x = ld2x32(x0->qs, x1->qs);
    __mmask64 neg = _mm512_movepi8_mask(w);
    x = _mm512_mask_sub_epi8(x, neg, _mm512_setzero_si512(), x);
    __m512i p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_abs_epi8(w), x);
    __m512 s = scale2(h2f(w0->d) * h2f(x0->d), keep1 * (h2f(w1->d) * h2f(x1->d)));
    *acc = _mm512_fmadd_ps(s, _mm512_cvtepi32_ps(p), *acc);
    (void)sacc;
}

static inline void blk2_q4_0(const struct eng_bq4_0 *w0, const struct eng_bq4_0 *w1,
                             const struct eng_bq8_1 *x0, const struct eng_bq8_1 *x1,
                             float keep1, __m512 *acc, float *sacc)
{
    __m512i p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), nib64(w0->qs, w1->qs),
                                    ld2x32(x0->qs, x1->qs));
    float d0 = h2f(w0->d), d1 = keep1 * h2f(w1->d);
    *acc = _mm512_fmadd_ps(scale2(d0 * x0->d, d1 * x1->d), _mm512_cvtepi32_ps(p), *acc);
    *sacc += (-8 * d0) * x0->s + (-8 * d1) * x1->s;
}

static inline void blk2_q4_1(const struct eng_bq4_1 *w0, const struct eng_bq4_1 *w1,
                             const struct eng_bq8_1 *x0, const struct eng_bq8_1 *x1,
                             float keep1, __m512 *acc, float *sacc)
{
    __m512i p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), nib64(w0->qs, w1->qs),
                                    ld2x32(x0->qs, x1->qs));
    *acc = _mm512_fmadd_ps(scale2(h2f(w0->d) * x0->d, keep1 * (h2f(w1->d) * x1->d)),
                           _mm512_cvtepi32_ps(p), *acc);
    *sacc += h2f(w0->m) * x0->s + keep1 * (h2f(w1->m) * x1->s);
}

static inline void blk2_q5_0(const struct eng_bq5_0 *w0, const struct eng_bq5_0 *w1,
                             const struct eng_bq8_1 *x0, const struct eng_bq8_1 *x1,
                             float keep1, __m512 *acc, float *sacc)
{
    __m512i u = nib64(w0->qs, w1->qs);
    u = _mm512_mask_add_epi8(u, qh_mask(w0->qh, w1->qh), u, _mm512_set1_epi8(0x10));
    __m512i p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, ld2x32(x0->qs, x1->qs));
    float d0 = h2f(w0->d), d1 = keep1 * h2f(w1->d);
    *acc = _mm512_fmadd_ps(scale2(d0 * x0->d, d1 * x1->d), _mm512_cvtepi32_ps(p), *acc);
    *sacc += (-16 * d0) * x0->s + (-16 * d1) * x1->s;
}

static inline void blk2_q5_1(const struct eng_bq5_1 *w0, const struct eng_bq5_1 *w1,
                             const struct eng_bq8_1 *x0, const struct eng_bq8_1 *x1,
                             float keep1, __m512 *acc, float *sacc)
{
    __m512i u = nib64(w0->qs, w1->qs);
    u = _mm512_mask_add_epi8(u, qh_mask(w0->qh, w1->qh), u, _mm512_set1_epi8(0x10));
    __m512i p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, ld2x32(x0->qs, x1->qs));
    *acc = _mm512_fmadd_ps(scale2(h2f(w0->d) * x0->d, keep1 * (h2f(w1->d) * x1->d)),
                           _mm512_cvtepi32_ps(p), *acc);
    *sacc += h2f(w0->m) * x0->s + keep1 * (h2f(w1->m) * x1->s);
}

#define GEN_DOTS32(T, WT, XT)                                                    \
    static float vd_##T(int64_t n, const void *w, const void *x)                \
    {                                                                           \
        const WT *a = w;                                                        \
        const XT *b = x;                                                        \
        int64_t nb = n / ENG_QK, i = 0;                                         \
        __m512 acc = _mm512_setzero_ps();                                       \
        float s = 0;                                                            \
        for (; i + 2 <= nb; i += 2)                                             \
            blk2_##T(&a[i], &a[i + 1], &b[i], &b[i + 1], 1.0f, &acc, &s);       \
        if (i < nb)                                                             \
            blk2_##T(&a[i], &a[i], &b[i], &b[i], 0.0f, &acc, &s);               \
        return _mm512_reduce_add_ps(acc) + s;                                   \
    }                                                                           \
    static void dr_##T(int64_t n, const void *w, size_t ws, int nr,             \
                       const void *x, float *out)                               \
    {                                                                           \
        const uint8_t *wb = w;                                                  \
        if (nr != 4) {                                                          \
            for (int r = 0; r < nr; r++)                                        \
                out[r] = vd_##T(n, wb + (size_t)r * ws, x);                     \
            return;                                                             \
        }                                                                       \
        const WT *a0 = (const WT *)wb, *a1 = (const WT *)(wb + ws);             \
        const WT *a2 = (const WT *)(wb + 2 * ws), *a3 = (const WT *)(wb + 3 * ws); \
        const XT *b = x;                                                        \
        int64_t nb = n / ENG_QK, i = 0;                                         \
        __m512 c0 = _mm512_setzero_ps(), c1 = c0, c2 = c0, c3 = c0;             \
        float s0 = 0, s1 = 0, s2 = 0, s3 = 0;                                   \
        for (; i + 2 <= nb; i += 2) {                                           \
            blk2_##T(&a0[i], &a0[i + 1], &b[i], &b[i + 1], 1.0f, &c0, &s0);     \
            blk2_##T(&a1[i], &a1[i + 1], &b[i], &b[i + 1], 1.0f, &c1, &s1);     \
            blk2_##T(&a2[i], &a2[i + 1], &b[i], &b[i + 1], 1.0f, &c2, &s2);     \
            blk2_##T(&a3[i], &a3[i + 1], &b[i], &b[i + 1], 1.0f, &c3, &s3);     \
        }                                                                       \
        if (i < nb) {                                                           \
            blk2_##T(&a0[i], &a0[i], &b[i], &b[i], 0.0f, &c0, &s0);             \
            blk2_##T(&a1[i], &a1[i], &b[i], &b[i], 0.0f, &c1, &s1);             \
            blk2_##T(&a2[i], &a2[i], &b[i], &b[i], 0.0f, &c2, &s2);             \
            blk2_##T(&a3[i], &a3[i], &b[i], &b[i], 0.0f, &c3, &s3);             \
        }                                                                       \
        out[0] = _mm512_reduce_add_ps(c0) + s0;                                 \
        out[1] = _mm512_reduce_add_ps(c1) + s1;                                 \
        out[2] = _mm512_reduce_add_ps(c2) + s2;                                 \
        out[3] = _mm512_reduce_add_ps(c3) + s3;                                 \
    }

GEN_DOTS32(q8_0, struct eng_bq8_0, struct eng_bq8_0)
GEN_DOTS32(q4_0, struct eng_bq4_0, struct eng_bq8_1)
GEN_DOTS32(q4_1, struct eng_bq4_1, struct eng_bq8_1)
GEN_DOTS32(q5_0, struct eng_bq5_0, struct eng_bq8_1)
GEN_DOTS32(q5_1, struct eng_bq5_1, struct eng_bq8_1)

/* ---- K-quants, one super-block at a time ---- */

/* scales of sub-blocks 2c (lanes 0..15) and 2c+1 (16..31) as i16 */
static inline __m512i sc_pair(__m512i sc8, int c)
{
    const __m512i lo = _mm512_set1_epi16((short)(2 * c)), hi = _mm512_set1_epi16((short)(2 * c + 1));
    return _mm512_permutexvar_epi16(_mm512_mask_blend_epi16(0xffff0000u, lo, hi), sc8);
}

static inline int kq_unpack(const uint8_t *scales, const int16_t *bsums, int16_t sc[32])
{
    int summ = 0;

    for (int s = 0; s < 8; s++) {
        uint8_t a, m;
        eng_k_scale_min(s, scales, &a, &m);
        sc[s] = a;
        summ += m * (bsums[2 * s] + bsums[2 * s + 1]);
    }
    return summ;
}

static inline void blk_q4_k(const struct eng_bq4_k *w, const struct eng_bq8_k *x,
                            __m512 *acc, float *sacc)
{
    int16_t sc[32] = { 0 };
    int summ = kq_unpack(w->scales, x->bsums, sc);
    __m512i sc8 = _mm512_loadu_si512((const void *)sc);
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    __m512i sumi = _mm512_setzero_si512();

    for (int c = 0; c < 4; c++) {
        __m512i z = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(w->qs + 32 * c)));
        __m512i u = _mm512_and_si512(_mm512_mask_blend_epi64(0xf0, z, _mm512_srli_epi16(z, 4)), m4);
        __m512i p = _mm512_maddubs_epi16(u, _mm512_loadu_si512((const void *)(x->qs + 64 * c)));
        sumi = _mm512_dpwssd_epi32(sumi, p, sc_pair(sc8, c));
    }
    *acc = _mm512_fmadd_ps(_mm512_set1_ps(x->d * h2f(w->d)), _mm512_cvtepi32_ps(sumi), *acc);
    *sacc -= x->d * (h2f(w->dmin) * (float)summ);
}

static inline void blk_q5_k(const struct eng_bq5_k *w, const struct eng_bq8_k *x,
                            __m512 *acc, float *sacc)
{
    int16_t sc[32] = { 0 };
    int summ = kq_unpack(w->scales, x->bsums, sc);
    __m512i sc8 = _mm512_loadu_si512((const void *)sc);
    const __m512i m4 = _mm512_set1_epi8(0x0f), x10 = _mm512_set1_epi8(0x10);
    __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)w->qh));
    __m512i sumi = _mm512_setzero_si512();

    for (int c = 0; c < 4; c++) {
        __m512i z = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(w->qs + 32 * c)));
        __m512i u = _mm512_and_si512(_mm512_mask_blend_epi64(0xf0, z, _mm512_srli_epi16(z, 4)), m4);
        __m512i bits = _mm512_mask_blend_epi64(0xf0, _mm512_set1_epi8((char)(1 << (2 * c))),
                                               _mm512_set1_epi8((char)(1 << (2 * c + 1))));
        u = _mm512_mask_add_epi8(u, _mm512_test_epi8_mask(qh, bits), u, x10);
        __m512i p = _mm512_maddubs_epi16(u, _mm512_loadu_si512((const void *)(x->qs + 64 * c)));
        sumi = _mm512_dpwssd_epi32(sumi, p, sc_pair(sc8, c));
    }
    *acc = _mm512_fmadd_ps(_mm512_set1_ps(x->d * h2f(w->d)), _mm512_cvtepi32_ps(sumi), *acc);
    *sacc -= x->d * (h2f(w->dmin) * (float)summ);
}

static inline void blk_q6_k(const struct eng_bq6_k *w, const struct eng_bq8_k *x,
                            __m512 *acc, float *sacc)
{
    const __m512i m4 = _mm512_set1_epi8(0x0f), m3 = _mm512_set1_epi8(3);
    __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)w->scales));
    __m256i offv = _mm256_madd_epi16(sc16, _mm256_loadu_si256((const __m256i *)x->bsums));
    __m512i scz = _mm512_castsi256_si512(sc16);
    __m512i sumi = _mm512_setzero_si512();
    /* srlv shift counts: lower 256 bits vs upper */
    const __m512i sh01 = _mm512_mask_blend_epi64(0xf0, _mm512_setzero_si512(), _mm512_set1_epi16(2));
    const __m512i sh45 = _mm512_mask_blend_epi64(0xf0, _mm512_set1_epi16(4), _mm512_set1_epi16(6));

    for (int h = 0; h < 2; h++) {
        __m512i l = _mm512_loadu_si512((const void *)(w->ql + 64 * h));
        __m512i q = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(w->qh + 32 * h)));
        __m512i a = _mm512_or_si512(_mm512_and_si512(l, m4),
                                    _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi16(q, sh01), m3), 4));
        __m512i b = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l, 4), m4),
                                    _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi16(q, sh45), m3), 4));
        __m512i pa = _mm512_maddubs_epi16(a, _mm512_loadu_si512((const void *)(x->qs + 128 * h)));
        __m512i pb = _mm512_maddubs_epi16(b, _mm512_loadu_si512((const void *)(x->qs + 128 * h + 64)));
        /* each 128-bit lane is one 16-element group: groups 8h+0..3, 8h+4..7 */
        const __m512i ia = _mm512_set_epi64(0x0003000300030003LL, 0x0003000300030003LL,
                                            0x0002000200020002LL, 0x0002000200020002LL,
                                            0x0001000100010001LL, 0x0001000100010001LL, 0, 0);
        __m512i base = _mm512_set1_epi16((short)(8 * h));
        __m512i ga = _mm512_add_epi16(ia, base);
        __m512i gb = _mm512_add_epi16(ga, _mm512_set1_epi16(4));
        sumi = _mm512_dpwssd_epi32(sumi, pa, _mm512_permutexvar_epi16(ga, scz));
        sumi = _mm512_dpwssd_epi32(sumi, pb, _mm512_permutexvar_epi16(gb, scz));
    }
    __m128i o = _mm_add_epi32(_mm256_castsi256_si128(offv), _mm256_extracti128_si256(offv, 1));
    o = _mm_add_epi32(o, _mm_shuffle_epi32(o, 0x4e));
    o = _mm_add_epi32(o, _mm_shuffle_epi32(o, 0xb1));
    int off = _mm_cvtsi128_si32(o);
    float dd = x->d * h2f(w->d);
    *acc = _mm512_fmadd_ps(_mm512_set1_ps(dd), _mm512_cvtepi32_ps(sumi), *acc);
    *sacc -= dd * (float)(32 * off);
}

#define GEN_DOTSK(T, WT)                                                         \
    static float vd_##T(int64_t n, const void *w, const void *x)                \
    {                                                                           \
        const WT *a = w;                                                        \
        const struct eng_bq8_k *b = x;                                          \
        __m512 acc = _mm512_setzero_ps();                                       \
        float s = 0;                                                            \
        for (int64_t i = 0; i < n / ENG_QK_K; i++)                              \
            blk_##T(&a[i], &b[i], &acc, &s);                                    \
        return _mm512_reduce_add_ps(acc) + s;                                   \
    }                                                                           \
    static void dr_##T(int64_t n, const void *w, size_t ws, int nr,             \
                       const void *x, float *out)                               \
    {                                                                           \
        const uint8_t *wb = w;                                                  \
        if (nr != 4) {                                                          \
            for (int r = 0; r < nr; r++)                                        \
                out[r] = vd_##T(n, wb + (size_t)r * ws, x);                     \
            return;                                                             \
        }                                                                       \
        const WT *a0 = (const WT *)wb, *a1 = (const WT *)(wb + ws);             \
        const WT *a2 = (const WT *)(wb + 2 * ws), *a3 = (const WT *)(wb + 3 * ws); \
        const struct eng_bq8_k *b = x;                                          \
        __m512 c0 = _mm512_setzero_ps(), c1 = c0, c2 = c0, c3 = c0;             \
        float s0 = 0, s1 = 0, s2 = 0, s3 = 0;                                   \
        for (int64_t i = 0; i < n / ENG_QK_K; i++) {                            \
            blk_##T(&a0[i], &b[i], &c0, &s0);                                   \
            blk_##T(&a1[i], &b[i], &c1, &s1);                                   \
            blk_##T(&a2[i], &b[i], &c2, &s2);                                   \
            blk_##T(&a3[i], &b[i], &c3, &s3);                                   \
        }                                                                       \
        out[0] = _mm512_reduce_add_ps(c0) + s0;                                 \
        out[1] = _mm512_reduce_add_ps(c1) + s1;                                 \
        out[2] = _mm512_reduce_add_ps(c2) + s2;                                 \
        out[3] = _mm512_reduce_add_ps(c3) + s3;                                 \
    }

GEN_DOTSK(q4_k, struct eng_bq4_k)
GEN_DOTSK(q5_k, struct eng_bq5_k)
GEN_DOTSK(q6_k, struct eng_bq6_k)

/* ---- float weights: any n, masked tail ---- */

static float vd_f32(int64_t n, const void *w, const void *x)
{
    const float *a = w, *b = x;
    __m512 c0 = _mm512_setzero_ps(), c1 = c0, c2 = c0, c3 = c0;
    int64_t i = 0;

    for (; i + 64 <= n; i += 64) {
        c0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), c0);
        c1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), c1);
        c2 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 32), _mm512_loadu_ps(b + i + 32), c2);
        c3 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 48), _mm512_loadu_ps(b + i + 48), c3);
    }
    for (; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
        c0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), c0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(c0, c1), _mm512_add_ps(c2, c3)));
}

static inline __m512 cvt_f16(__m256i v)
{
    return _mm512_cvtph_ps(v);
}

static inline __m512 cvt_bf16(__m256i v)
{
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
}

#define GEN_HALF(T, CVT)                                                         \
    static float vd_##T(int64_t n, const void *w, const void *x)                \
    {                                                                           \
        const uint16_t *a = w;                                                  \
        const float *b = x;                                                     \
        __m512 c0 = _mm512_setzero_ps(), c1 = c0;                               \
        int64_t i = 0;                                                          \
        for (; i + 32 <= n; i += 32) {                                          \
            c0 = _mm512_fmadd_ps(CVT(_mm256_loadu_si256((const __m256i *)(a + i))), \
                                 _mm512_loadu_ps(b + i), c0);                   \
            c1 = _mm512_fmadd_ps(CVT(_mm256_loadu_si256((const __m256i *)(a + i + 16))), \
                                 _mm512_loadu_ps(b + i + 16), c1);              \
        }                                                                       \
        for (; i < n; i += 16) {                                                \
            __mmask16 m = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1); \
            c0 = _mm512_fmadd_ps(CVT(_mm256_maskz_loadu_epi16(m, a + i)),       \
                                 _mm512_maskz_loadu_ps(m, b + i), c0);          \
        }                                                                       \
        return _mm512_reduce_add_ps(_mm512_add_ps(c0, c1));                     \
    }

GEN_HALF(f16, cvt_f16)
GEN_HALF(bf16, cvt_bf16)

const struct eng_quant_kern eng_quant_avx512_kern[ENG_TYPE_COUNT] = {
    [ENG_TYPE_F32] = { IMPL, vd_f32, NULL },
    [ENG_TYPE_F16] = { IMPL, vd_f16, NULL },
    [ENG_TYPE_BF16] = { IMPL, vd_bf16, NULL },
    [ENG_TYPE_Q4_0] = { IMPL, vd_q4_0, dr_q4_0 },
    [ENG_TYPE_Q4_1] = { IMPL, vd_q4_1, dr_q4_1 },
    [ENG_TYPE_Q5_0] = { IMPL, vd_q5_0, dr_q5_0 },
    [ENG_TYPE_Q5_1] = { IMPL, vd_q5_1, dr_q5_1 },
    [ENG_TYPE_Q8_0] = { IMPL, vd_q8_0, dr_q8_0 },
    [ENG_TYPE_Q4_K] = { IMPL, vd_q4_k, dr_q4_k },
    [ENG_TYPE_Q5_K] = { IMPL, vd_q5_k, dr_q5_k },
    [ENG_TYPE_Q6_K] = { IMPL, vd_q6_k, dr_q6_k },
};
