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
#include <math.h>
#include <string.h>

#define IMPL "avx512vnni"

static inline float h2f(uint16_t h)
{
    return _cvtsh_ss(h);
}

/* ---- 32-block types, one block at a time in 256-bit registers
 * (AVX512VL + VNNI: vpdpbusd ymm). Two blocks per 512-bit register was
 * tried and measured slower: the blocks are not contiguous, and the
 * gathers cost more port-5 shuffles than the wider multiply saves. ---- */

static inline __m256i nib32(const uint8_t *qs)
{
    /* a broadcast load is a plain load (no shuffle port), then the upper
     * lane takes the high nibbles by a blend */
    __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)qs));
    v = _mm256_blend_epi32(v, _mm256_srli_epi16(v, 4), 0xf0);
    return _mm256_and_si256(v, _mm256_set1_epi8(0x0f));
}

static inline __m256i dp32(__m256i u, const int8_t *x)
{
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, _mm256_loadu_si256((const __m256i *)x));
}

static inline __m256i hb32(__m256i u, const uint8_t *qh)
{
    uint32_t b;
    memcpy(&b, qh, 4);
    return _mm256_mask_add_epi8(u, (__mmask32)b, u, _mm256_set1_epi8(0x10));
}

/* Scales of a 32-block and its q8_1 activation as one vector op:
 * lanes [d*xd, off*xs] where off is the weight's f16 m (q4_1, q5_1; d and
 * m are adjacent) or k*d (q4_0: k = -8, q5_0: -16). The activation's f32
 * d and s are adjacent too. Lane 1 is summed into sacc; lane 0 of sacc
 * collects junk that is never read. */
static inline __m128 sc_dm(const uint16_t *wdm, const struct eng_bq8_1 *x)
{
    uint32_t v;
    memcpy(&v, wdm, 4);
    __m128 xs = _mm_castsi128_ps(_mm_loadl_epi64((const __m128i *)&x->d));
    return _mm_mul_ps(_mm_cvtph_ps(_mm_cvtsi32_si128((int)v)), xs);
}

static inline __m128 sc_dk(const uint16_t *wd, const struct eng_bq8_1 *x, float k)
{
    __m128 d = _mm_cvtph_ps(_mm_cvtsi32_si128((int)(*wd * 0x10001u)));
    __m128 xs = _mm_castsi128_ps(_mm_loadl_epi64((const __m128i *)&x->d));
    return _mm_mul_ps(_mm_mul_ps(d, xs), _mm_set_ps(0, 0, k, 1));
}

static inline float sacc_get(__m128 s)
{
    return _mm_cvtss_f32(_mm_movehdup_ps(s));
}

static inline void b1_q8_0(const struct eng_bq8_0 *w, const struct eng_bq8_0 *x,
                           __m256 *acc, __m128 *sacc)
{
    __m256i a = _mm256_loadu_si256((const __m256i *)w->qs);
    __m256i b = _mm256_loadu_si256((const __m256i *)x->qs);
    __m256i p = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_sign_epi8(a, a), _mm256_sign_epi8(b, a));
    *acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(w->d) * h2f(x->d)), _mm256_cvtepi32_ps(p), *acc);
    (void)sacc;
}

static inline void b1_q4_0(const struct eng_bq4_0 *w, const struct eng_bq8_1 *x,
                            __m256 *acc, __m128 *sacc)
{
    __m256i p = dp32(nib32(w->qs), x->qs);
    __m128 sc = sc_dk(&w->d, x, -8.0f);
    *acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(sc), _mm256_cvtepi32_ps(p), *acc);
    *sacc = _mm_add_ps(*sacc, sc);
}

static inline void b1_q4_1(const struct eng_bq4_1 *w, const struct eng_bq8_1 *x,
                            __m256 *acc, __m128 *sacc)
{
    __m256i p = dp32(nib32(w->qs), x->qs);
    __m128 sc = sc_dm(&w->d, x);
    *acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(sc), _mm256_cvtepi32_ps(p), *acc);
    *sacc = _mm_add_ps(*sacc, sc);
}

static inline void b1_q5_0(const struct eng_bq5_0 *w, const struct eng_bq8_1 *x,
                            __m256 *acc, __m128 *sacc)
{
    __m256i p = dp32(hb32(nib32(w->qs), w->qh), x->qs);
    __m128 sc = sc_dk(&w->d, x, -16.0f);
    *acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(sc), _mm256_cvtepi32_ps(p), *acc);
    *sacc = _mm_add_ps(*sacc, sc);
}

static inline void b1_q5_1(const struct eng_bq5_1 *w, const struct eng_bq8_1 *x,
                            __m256 *acc, __m128 *sacc)
{
    __m256i p = dp32(hb32(nib32(w->qs), w->qh), x->qs);
    __m128 sc = sc_dm(&w->d, x);
    *acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(sc), _mm256_cvtepi32_ps(p), *acc);
    *sacc = _mm_add_ps(*sacc, sc);
}

static inline float hsum256(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Prefetch the part of the next four-row group (which starts right after
 * row 3) that matches block i of this one: rows of a few KiB are too
 * short for the hardware prefetcher to ramp up on by itself. */
#define PF_NEXT(a0, ws, i, sz)                                                   \
    do {                                                                        \
        const char *nx_ = (const char *)(a0) + 4 * (ws) + (size_t)(i) * 4 * (sz); \
        for (size_t o_ = 0; o_ < 4 * (sz); o_ += 64)                            \
            _mm_prefetch(nx_ + o_, _MM_HINT_T0);                                \
    } while (0)

#define GEN_DOTS256(T, WT, XT)                                                   \
    static float v1_##T(int64_t n, const void *w, const void *x)                \
    {                                                                           \
        const WT *a = w;                                                        \
        const XT *b = x;                                                        \
        __m256 acc = _mm256_setzero_ps();                                       \
        __m128 s = _mm_setzero_ps();                                            \
        for (int64_t i = 0; i < n / ENG_QK; i++)                                \
            b1_##T(&a[i], &b[i], &acc, &s);                                     \
        return hsum256(acc) + sacc_get(s);                                                \
    }                                                                           \
    static void r1_##T(int64_t n, const void *w, size_t ws, int nr,             \
                       const void *x, float *out)                               \
    {                                                                           \
        const uint8_t *wb = w;                                                  \
        if (nr != 4) {                                                          \
            for (int r = 0; r < nr; r++)                                        \
                out[r] = v1_##T(n, wb + (size_t)r * ws, x);                     \
            return;                                                             \
        }                                                                       \
        const WT *a0 = (const WT *)wb, *a1 = (const WT *)(wb + ws);             \
        const WT *a2 = (const WT *)(wb + 2 * ws), *a3 = (const WT *)(wb + 3 * ws); \
        const XT *b = x;                                                        \
        __m256 c0 = _mm256_setzero_ps(), c1 = c0, c2 = c0, c3 = c0;             \
        __m128 s0 = _mm_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;                \
        for (int64_t i = 0; i < n / ENG_QK; i++) {                              \
            PF_NEXT(a0, ws, i, sizeof(WT));                                      \
            b1_##T(&a0[i], &b[i], &c0, &s0);                                    \
            b1_##T(&a1[i], &b[i], &c1, &s1);                                    \
            b1_##T(&a2[i], &b[i], &c2, &s2);                                    \
            b1_##T(&a3[i], &b[i], &c3, &s3);                                    \
        }                                                                       \
        out[0] = hsum256(c0) + sacc_get(s0);                                              \
        out[1] = hsum256(c1) + sacc_get(s1);                                              \
        out[2] = hsum256(c2) + sacc_get(s2);                                              \
        out[3] = hsum256(c3) + sacc_get(s3);                                              \
    }                                                                        \
    static void dc_##T(int64_t n, const void *w, const void *x, size_t xs,       \
                       int nc, float *out)                                       \
    {                                                                            \
        const uint8_t *xb = x;                                                   \
        if (nc != 4) {                                                           \
            for (int c = 0; c < nc; c++)                                         \
                out[c] = v1_##T(n, w, xb + (size_t)c * xs);                      \
            return;                                                              \
        }                                                                        \
        const WT *a = w;                                                         \
        const XT *b0 = (const XT *)xb, *b1 = (const XT *)(xb + xs);              \
        const XT *b2 = (const XT *)(xb + 2 * xs), *b3 = (const XT *)(xb + 3 * xs); \
        __m256 c0 = _mm256_setzero_ps(), c1 = c0, c2 = c0, c3 = c0;              \
        __m128 s0 = _mm_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;                 \
        for (int64_t i = 0; i < n / ENG_QK; i++) {                               \
            b1_##T(&a[i], &b0[i], &c0, &s0);                                     \
            b1_##T(&a[i], &b1[i], &c1, &s1);                                     \
            b1_##T(&a[i], &b2[i], &c2, &s2);                                     \
            b1_##T(&a[i], &b3[i], &c3, &s3);                                     \
        }                                                                        \
        out[0] = hsum256(c0) + sacc_get(s0);                                     \
        out[1] = hsum256(c1) + sacc_get(s1);                                     \
        out[2] = hsum256(c2) + sacc_get(s2);                                     \
        out[3] = hsum256(c3) + sacc_get(s3);                                     \
    }

GEN_DOTS256(q8_0, struct eng_bq8_0, struct eng_bq8_0)
GEN_DOTS256(q4_0, struct eng_bq4_0, struct eng_bq8_1)
GEN_DOTS256(q4_1, struct eng_bq4_1, struct eng_bq8_1)
GEN_DOTS256(q5_0, struct eng_bq5_0, struct eng_bq8_1)
GEN_DOTS256(q5_1, struct eng_bq5_1, struct eng_bq8_1)

/* ---- K-quants, one super-block at a time ---- */

/*
 * q4_k / q5_k: the 12 packed scale bytes as three 32-bit words w0 w1 w2
 * give, four bytes at a time:
 *   sc[0..3] = w0 & 0x3f..            mn[0..3] = w1 & 0x3f..
 *   sc[4..7] = (w2 & 0x0f..) | ((w0 >> 2) & 0x30..)
 *   mn[4..7] = ((w2 >> 4) & 0x0f..) | ((w1 >> 2) & 0x30..)
 * (eng_k_scale_min() element by element). Returns the 8 scales as i16 in
 * every 128-bit lane, and the min term sum_s mn_s * (bsum_2s + bsum_2s+1).
 */
static inline __m512i kq_scales(const uint8_t *q, const int16_t *bsums, int *summ)
{
    uint32_t w[3];
    memcpy(w, q, 12);
    uint64_t sc = (uint64_t)(w[0] & 0x3f3f3f3fu) |
                  (uint64_t)((w[2] & 0x0f0f0f0fu) | ((w[0] >> 2) & 0x30303030u)) << 32;
    uint64_t mn = (uint64_t)(w[1] & 0x3f3f3f3fu) |
                  (uint64_t)(((w[2] >> 4) & 0x0f0f0f0fu) | ((w[1] >> 2) & 0x30303030u)) << 32;
    __m128i bs = _mm_hadd_epi16(_mm_loadu_si128((const __m128i *)bsums),
                                _mm_loadu_si128((const __m128i *)(bsums + 8)));
    __m128i m = _mm_madd_epi16(_mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long)mn)), bs);
    m = _mm_add_epi32(m, _mm_shuffle_epi32(m, 0x4e));
    m = _mm_add_epi32(m, _mm_shuffle_epi32(m, 0xb1));
    *summ = _mm_cvtsi128_si32(m);
    return _mm512_broadcast_i32x4(_mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long)sc)));
}

/* from kq_scales' result: scale 2c in lanes 0..15, 2c+1 in lanes 16..31 */
static inline __m512i sc_pair(__m512i sc, int c)
{
    const __m512i lo = _mm512_set1_epi16((short)(0x0100 * (4 * c + 1) + 4 * c));
    const __m512i hi = _mm512_set1_epi16((short)(0x0100 * (4 * c + 3) + 4 * c + 2));
    return _mm512_shuffle_epi8(sc, _mm512_mask_blend_epi64(0xf0, lo, hi));
}

static inline void blk_q4_k(const struct eng_bq4_k *w, const struct eng_bq8_k *x,
                            __m512 *acc, float *sacc)
{
    int summ;
    __m512i sc8 = kq_scales(w->scales, x->bsums, &summ);
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    __m512i sumi = _mm512_setzero_si512();

    for (int c = 0; c < 4; c++) {
        __m512i z = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(w->qs + 32 * c)));
        __m512i u = _mm512_and_si512(_mm512_mask_blend_epi64(0xf0, z, _mm512_srli_epi16(z, 4)), m4);
        __m512i p = _mm512_maddubs_epi16(u, _mm512_loadu_si512((const void *)(x->qs + 64 * c)));
        sumi = _mm512_dpwssd_epi32(sumi, p, sc_pair(sc8, c));
    }
    *acc = _mm512_fmadd_ps(_mm512_set1_ps(x->d * h2f(w->d)), _mm512_cvtepi32_ps(sumi), *acc);
    *sacc = fmaf(-x->d, h2f(w->dmin) * (float)summ, *sacc); /* fused always: see blk_q6_k */
}

static inline void blk_q5_k(const struct eng_bq5_k *w, const struct eng_bq8_k *x,
                            __m512 *acc, float *sacc)
{
    int summ;
    __m512i sc8 = kq_scales(w->scales, x->bsums, &summ);
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
    *sacc = fmaf(-x->d, h2f(w->dmin) * (float)summ, *sacc); /* fused always: see blk_q6_k */
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
    /* An explicit fma: written as `*sacc -= dd * ...`, the compiler fused
     * it in some inlined copies (dot_rows) and not in others (vec_dot),
     * so a row's value depended on the batch size by an ulp (S1). */
    *sacc = fmaf(-dd, (float)(32 * off), *sacc);
}

#define GEN_DOTSK(T, WT, XT)                                                     \
    static __attribute__((unused)) float vd_##T(int64_t n, const void *w, const void *x) \
    {                                                                           \
        const WT *a = w;                                                        \
        const struct eng_bq8_k *b = x;                                          \
        __m512 acc = _mm512_setzero_ps();                                       \
        float s = 0;                                                            \
        for (int64_t i = 0; i < n / ENG_QK_K; i++)                              \
            blk_##T(&a[i], &b[i], &acc, &s);                                    \
        return _mm512_reduce_add_ps(acc) + s;                                   \
    }                                                                           \
    static __attribute__((unused)) void dr_##T(int64_t n, const void *w, size_t ws, int nr, \
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
            PF_NEXT(a0, ws, i, sizeof(WT));                                      \
            blk_##T(&a0[i], &b[i], &c0, &s0);                                   \
            blk_##T(&a1[i], &b[i], &c1, &s1);                                   \
            blk_##T(&a2[i], &b[i], &c2, &s2);                                   \
            blk_##T(&a3[i], &b[i], &c3, &s3);                                   \
        }                                                                       \
        out[0] = _mm512_reduce_add_ps(c0) + s0;                                 \
        out[1] = _mm512_reduce_add_ps(c1) + s1;                                 \
        out[2] = _mm512_reduce_add_ps(c2) + s2;                                 \
        out[3] = _mm512_reduce_add_ps(c3) + s3;                                 \
    }                                                                        \
    static void dc_##T(int64_t n, const void *w, const void *x, size_t xs,       \
                       int nc, float *out)                                       \
    {                                                                            \
        const uint8_t *xb = x;                                                   \
        if (nc != 4) {                                                           \
            for (int c = 0; c < nc; c++)                                         \
                out[c] = vd_##T(n, w, xb + (size_t)c * xs);                      \
            return;                                                              \
        }                                                                        \
        const WT *a = w;                                                         \
        const XT *b0 = (const XT *)xb, *b1 = (const XT *)(xb + xs);              \
        const XT *b2 = (const XT *)(xb + 2 * xs), *b3 = (const XT *)(xb + 3 * xs); \
        __m512 c0 = _mm512_setzero_ps(), c1 = c0, c2 = c0, c3 = c0;              \
        float s0 = 0, s1 = s0, s2 = s0, s3 = s0;                                 \
        for (int64_t i = 0; i < n / ENG_QK_K; i++) {                             \
            blk_##T(&a[i], &b0[i], &c0, &s0);                                    \
            blk_##T(&a[i], &b1[i], &c1, &s1);                                    \
            blk_##T(&a[i], &b2[i], &c2, &s2);                                    \
            blk_##T(&a[i], &b3[i], &c3, &s3);                                    \
        }                                                                        \
        out[0] = _mm512_reduce_add_ps(c0) + s0;                                  \
        out[1] = _mm512_reduce_add_ps(c1) + s1;                                  \
        out[2] = _mm512_reduce_add_ps(c2) + s2;                                  \
        out[3] = _mm512_reduce_add_ps(c3) + s3;                                  \
    }

GEN_DOTSK(q4_k, struct eng_bq4_k, struct eng_bq8_k)
GEN_DOTSK(q5_k, struct eng_bq5_k, struct eng_bq8_k)
GEN_DOTSK(q6_k, struct eng_bq6_k, struct eng_bq8_k)

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
    static __attribute__((unused)) float vd_##T(int64_t n, const void *w, const void *x) \
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
    [ENG_TYPE_Q4_0] = { IMPL, v1_q4_0, r1_q4_0, dc_q4_0 },
    [ENG_TYPE_Q4_1] = { IMPL, v1_q4_1, r1_q4_1, dc_q4_1 },
    [ENG_TYPE_Q5_0] = { IMPL, v1_q5_0, r1_q5_0, dc_q5_0 },
    [ENG_TYPE_Q5_1] = { IMPL, v1_q5_1, r1_q5_1, dc_q5_1 },
    [ENG_TYPE_Q8_0] = { IMPL, v1_q8_0, r1_q8_0, dc_q8_0 },
    [ENG_TYPE_Q4_K] = { IMPL, vd_q4_k, dr_q4_k, dc_q4_k },
    [ENG_TYPE_Q5_K] = { IMPL, vd_q5_k, dr_q5_k, dc_q5_k },
    [ENG_TYPE_Q6_K] = { IMPL, vd_q6_k, dr_q6_k, dc_q6_k },
};
