/*
 * eng_quant_avx2.c - AVX2 + FMA + F16C dot products for every weight
 * type (compiled with those flags; only reached when eng_cpu_features()
 * reports ENG_CPU_AVX2).
 *
 * Quantized types: weight codes expanded to unsigned bytes, multiplied
 * with the int8 activations by maddubs (u8 x i8 -> i16 pairs), widened
 * by madd (with ones, or with the sub-block scales for the K-quants),
 * then scaled in f32. The same integer sums as eng_quant_ref.c; only the
 * f32 accumulation order differs. maddubs cannot saturate here: codes
 * are <= 63 and activations within [-127, 127] (2*63*127 < 32767); q8_0
 * weights use the sign trick (|w| x sign(x, w)), exact unless both are
 * -128.
 *
 * dot_rows takes ENG_QUANT_NR weight rows against one activation row so
 * the activation loads and the loop overhead are shared and four
 * independent weight streams are in flight.
 */
#include "eng_quant_int.h"

#include <errno.h>
#include <immintrin.h>
#include <string.h>

static inline float hsum256(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline float h2f(uint16_t h)
{
    return _cvtsh_ss(h);
}

/* 16 packed nibble bytes -> 32 bytes: low nibbles (elements 0..15) then
 * high nibbles (elements 16..31). */
static inline __m256i nib32(const uint8_t *qs)
{
    /* a broadcast load is a plain load (no shuffle port), then the upper
     * lane takes the high nibbles by a blend */
    __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)qs));
    v = _mm256_blend_epi32(v, _mm256_srli_epi16(v, 4), 0xf0);
    return _mm256_and_si256(v, _mm256_set1_epi8(0x0f));
}

/* 32 bits -> 32 bytes, byte i = 0x10 when bit i is set. */
static inline __m256i bits32_x10(const uint8_t *qh)
{
    uint32_t b;
    memcpy(&b, qh, 4);
    __m256i v = _mm256_set1_epi32((int)b);
    const __m256i sh = _mm256_set_epi64x(0x0303030303030303LL, 0x0202020202020202LL,
                                         0x0101010101010101LL, 0x0000000000000000LL);
    v = _mm256_shuffle_epi8(v, sh);
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    v = _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit);
    return _mm256_and_si256(v, _mm256_set1_epi8(0x10));
}

/* sum of u8 x i8 products as 8 i32 lanes */
static inline __m256i dot_u8i8(__m256i u, __m256i s)
{
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}

/* ---- per-block kernels: add one block's contribution to acc / sacc ---- */

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

static inline void blk_q8_0(const struct eng_bq8_0 *w, const struct eng_bq8_0 *x,
                            __m256 *acc, __m128 *sacc)
{
    __m256i a = _mm256_loadu_si256((const __m256i *)w->qs);
    __m256i b = _mm256_loadu_si256((const __m256i *)x->qs);
    __m256i p = dot_u8i8(_mm256_sign_epi8(a, a), _mm256_sign_epi8(b, a));
    *acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(w->d) * h2f(x->d)), _mm256_cvtepi32_ps(p), *acc);
    (void)sacc;
}

static inline void blk_q4_0(const struct eng_bq4_0 *w, const struct eng_bq8_1 *x,
                            __m256 *acc, __m128 *sacc)
{
    __m256i p = dot_u8i8(nib32(w->qs), _mm256_loadu_si256((const __m256i *)x->qs));
    __m128 sc = sc_dk(&w->d, x, -8.0f);
    *acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(sc), _mm256_cvtepi32_ps(p), *acc);
    *sacc = _mm_add_ps(*sacc, sc);
}

static inline void blk_q4_1(const struct eng_bq4_1 *w, const struct eng_bq8_1 *x,
                            __m256 *acc, __m128 *sacc)
{
    __m256i p = dot_u8i8(nib32(w->qs), _mm256_loadu_si256((const __m256i *)x->qs));
    __m128 sc = sc_dm(&w->d, x);
    *acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(sc), _mm256_cvtepi32_ps(p), *acc);
    *sacc = _mm_add_ps(*sacc, sc);
}

static inline void blk_q5_0(const struct eng_bq5_0 *w, const struct eng_bq8_1 *x,
                            __m256 *acc, __m128 *sacc)
{
    __m256i p = dot_u8i8(_mm256_or_si256(nib32(w->qs), bits32_x10(w->qh)), _mm256_loadu_si256((const __m256i *)x->qs));
    __m128 sc = sc_dk(&w->d, x, -16.0f);
    *acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(sc), _mm256_cvtepi32_ps(p), *acc);
    *sacc = _mm_add_ps(*sacc, sc);
}

static inline void blk_q5_1(const struct eng_bq5_1 *w, const struct eng_bq8_1 *x,
                            __m256 *acc, __m128 *sacc)
{
    __m256i p = dot_u8i8(_mm256_or_si256(nib32(w->qs), bits32_x10(w->qh)), _mm256_loadu_si256((const __m256i *)x->qs));
    __m128 sc = sc_dm(&w->d, x);
    *acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(sc), _mm256_cvtepi32_ps(p), *acc);
    *sacc = _mm_add_ps(*sacc, sc);
}

/*
 * q4_k / q5_k scales: the 12 packed bytes as 32-bit words w0 w1 w2 give
 * four 6-bit values at a time (eng_k_scale_min() element by element):
 *   sc[0..3] = w0 & 0x3f..            mn[0..3] = w1 & 0x3f..
 *   sc[4..7] = (w2 & 0x0f..) | ((w0 >> 2) & 0x30..)
 *   mn[4..7] = ((w2 >> 4) & 0x0f..) | ((w1 >> 2) & 0x30..)
 * Returns the 8 scales as i16 in both 128-bit lanes, and in *summ the
 * min term sum_s mn_s * (bsum_2s + bsum_2s+1).
 */
static inline __m256i kq_scales(const uint8_t *q, const int16_t *bsums, int *summ)
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
    return _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long)sc)));
}

/* scale j of kq_scales' result in every i16 lane */
static inline __m256i sc_one(__m256i sc, int j)
{
    return _mm256_shuffle_epi8(sc, _mm256_set1_epi16((short)(0x0100 * (2 * j + 1) + 2 * j)));
}

static inline void blk_q4_k(const struct eng_bq4_k *w, const struct eng_bq8_k *x,
                            __m256 *acc, __m128 *sacc)
{
    int summ;
    __m256i sc = kq_scales(w->scales, x->bsums, &summ);
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    __m256i sumi = _mm256_setzero_si256();

    for (int c = 0; c < 4; c++) {
        __m256i q = _mm256_loadu_si256((const __m256i *)(w->qs + 32 * c));
        __m256i lo = _mm256_and_si256(q, m4);
        __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
        __m256i p0 = _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)(x->qs + 64 * c)));
        __m256i p1 = _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(x->qs + 64 * c + 32)));
        sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p0, sc_one(sc, 2 * c)));
        sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p1, sc_one(sc, 2 * c + 1)));
    }
    *acc = _mm256_fmadd_ps(_mm256_set1_ps(x->d * h2f(w->d)), _mm256_cvtepi32_ps(sumi), *acc);
    *sacc = _mm_sub_ps(*sacc, _mm_set1_ps(x->d * (h2f(w->dmin) * (float)summ)));
}

static inline void blk_q5_k(const struct eng_bq5_k *w, const struct eng_bq8_k *x,
                            __m256 *acc, __m128 *sacc)
{
    int summ;
    __m256i sc = kq_scales(w->scales, x->bsums, &summ);
    const __m256i m4 = _mm256_set1_epi8(0x0f), one = _mm256_set1_epi8(1);
    __m256i qh = _mm256_loadu_si256((const __m256i *)w->qh);
    __m256i sumi = _mm256_setzero_si256();

    for (int c = 0; c < 4; c++) {
        __m256i q = _mm256_loadu_si256((const __m256i *)(w->qs + 32 * c));
        __m256i h0 = _mm256_and_si256(qh, one);
        __m256i h1 = _mm256_and_si256(_mm256_srli_epi16(qh, 1), one);
        qh = _mm256_srli_epi16(qh, 2);
        __m256i lo = _mm256_or_si256(_mm256_and_si256(q, m4), _mm256_slli_epi16(h0, 4));
        __m256i hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 4), m4),
                                     _mm256_slli_epi16(h1, 4));
        __m256i p0 = _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)(x->qs + 64 * c)));
        __m256i p1 = _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(x->qs + 64 * c + 32)));
        sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p0, sc_one(sc, 2 * c)));
        sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p1, sc_one(sc, 2 * c + 1)));
    }
    *acc = _mm256_fmadd_ps(_mm256_set1_ps(x->d * h2f(w->d)), _mm256_cvtepi32_ps(sumi), *acc);
    *sacc = _mm_sub_ps(*sacc, _mm_set1_ps(x->d * (h2f(w->dmin) * (float)summ)));
}

static inline void blk_q6_k(const struct eng_bq6_k *w, const struct eng_bq8_k *x,
                            __m256 *acc, __m128 *sacc)
{
    const __m256i m4 = _mm256_set1_epi8(0x0f), m3 = _mm256_set1_epi8(3);
    __m256i sumi = _mm256_setzero_si256();
    __m256i offv = _mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)w->scales)),
                                     _mm256_loadu_si256((const __m256i *)x->bsums));
    __m128i o = _mm_add_epi32(_mm256_castsi256_si128(offv), _mm256_extracti128_si256(offv, 1));
    o = _mm_add_epi32(o, _mm_shuffle_epi32(o, 0x4e));
    o = _mm_add_epi32(o, _mm_shuffle_epi32(o, 0xb1));
    int off = _mm_cvtsi128_si32(o);
    for (int h = 0; h < 2; h++) {
        __m256i l0 = _mm256_loadu_si256((const __m256i *)(w->ql + 64 * h));
        __m256i l1 = _mm256_loadu_si256((const __m256i *)(w->ql + 64 * h + 32));
        __m256i qh = _mm256_loadu_si256((const __m256i *)(w->qh + 32 * h));
        __m256i v[4];
        v[0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_slli_epi16(_mm256_and_si256(qh, m3), 4));
        v[1] = _mm256_or_si256(_mm256_and_si256(l1, m4),
                               _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m3), 4));
        v[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                               _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m3), 4));
        v[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                               _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m3), 4));
        for (int t = 0; t < 4; t++) {
            int g = h * 8 + t * 2;
            __m256i p = _mm256_maddubs_epi16(v[t], _mm256_loadu_si256((const __m256i *)(x->qs + 128 * h + 32 * t)));
            __m256i s = _mm256_set_m128i(_mm_set1_epi16(w->scales[g + 1]), _mm_set1_epi16(w->scales[g]));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, s));
        }
    }
    float dd = x->d * h2f(w->d);
    *acc = _mm256_fmadd_ps(_mm256_set1_ps(dd), _mm256_cvtepi32_ps(sumi), *acc);
    *sacc = _mm_sub_ps(*sacc, _mm_set1_ps(dd * (float)(32 * off)));
}

/* ---- row loops: one row, and ENG_QUANT_NR rows sharing the activation ---- */

/* Prefetch the part of the next four-row group (which starts right after
 * row 3) that matches block i of this one: rows of a few KiB are too
 * short for the hardware prefetcher to ramp up on by itself. */
#define PF_NEXT(a0, ws, i, sz)                                                   \
    do {                                                                        \
        const char *nx_ = (const char *)(a0) + 4 * (ws) + (size_t)(i) * 4 * (sz); \
        for (size_t o_ = 0; o_ < 4 * (sz); o_ += 64)                            \
            _mm_prefetch(nx_ + o_, _MM_HINT_T0);                                \
    } while (0)

#define GEN_DOTS(T, WT, XT, QB)                                                  \
    static float vd_##T(int64_t n, const void *w, const void *x)                \
    {                                                                           \
        const WT *a = w;                                                        \
        const XT *b = x;                                                        \
        __m256 acc = _mm256_setzero_ps();                                       \
        __m128 s = _mm_setzero_ps();                                            \
        for (int64_t i = 0; i < n / (QB); i++)                                  \
            blk_##T(&a[i], &b[i], &acc, &s);                                    \
        return hsum256(acc) + sacc_get(s);                                                \
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
        __m256 c0 = _mm256_setzero_ps(), c1 = c0, c2 = c0, c3 = c0;             \
        __m128 s0 = _mm_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;                \
        for (int64_t i = 0; i < n / (QB); i++) {                                \
            PF_NEXT(a0, ws, i, sizeof(WT));                                      \
            blk_##T(&a0[i], &b[i], &c0, &s0);                                   \
            blk_##T(&a1[i], &b[i], &c1, &s1);                                   \
            blk_##T(&a2[i], &b[i], &c2, &s2);                                   \
            blk_##T(&a3[i], &b[i], &c3, &s3);                                   \
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
                out[c] = vd_##T(n, w, xb + (size_t)c * xs);                      \
            return;                                                              \
        }                                                                        \
        const WT *a = w;                                                         \
        const XT *b0 = (const XT *)xb, *b1 = (const XT *)(xb + xs);              \
        const XT *b2 = (const XT *)(xb + 2 * xs), *b3 = (const XT *)(xb + 3 * xs); \
        __m256 c0 = _mm256_setzero_ps(), c1 = c0, c2 = c0, c3 = c0;              \
        __m128 s0 = _mm_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;                 \
        for (int64_t i = 0; i < n / (QB); i++) {                                 \
            blk_##T(&a[i], &b0[i], &c0, &s0);                                    \
            blk_##T(&a[i], &b1[i], &c1, &s1);                                    \
            blk_##T(&a[i], &b2[i], &c2, &s2);                                    \
            blk_##T(&a[i], &b3[i], &c3, &s3);                                    \
        }                                                                        \
        out[0] = hsum256(c0) + sacc_get(s0);                                     \
        out[1] = hsum256(c1) + sacc_get(s1);                                     \
        out[2] = hsum256(c2) + sacc_get(s2);                                     \
        out[3] = hsum256(c3) + sacc_get(s3);                                     \
    }

GEN_DOTS(q8_0, struct eng_bq8_0, struct eng_bq8_0, ENG_QK)
GEN_DOTS(q4_0, struct eng_bq4_0, struct eng_bq8_1, ENG_QK)
GEN_DOTS(q4_1, struct eng_bq4_1, struct eng_bq8_1, ENG_QK)
GEN_DOTS(q5_0, struct eng_bq5_0, struct eng_bq8_1, ENG_QK)
GEN_DOTS(q5_1, struct eng_bq5_1, struct eng_bq8_1, ENG_QK)
GEN_DOTS(q4_k, struct eng_bq4_k, struct eng_bq8_k, ENG_QK_K)
GEN_DOTS(q5_k, struct eng_bq5_k, struct eng_bq8_k, ENG_QK_K)
GEN_DOTS(q6_k, struct eng_bq6_k, struct eng_bq8_k, ENG_QK_K)

/* ---- float weights: n is any count; a scalar tail finishes it ---- */

static float vd_f32(int64_t n, const void *w, const void *x)
{
    const float *a = w, *b = x;
    __m256 c0 = _mm256_setzero_ps(), c1 = c0, c2 = c0, c3 = c0;
    int64_t i = 0;
    float s = 0;

    for (; i + 32 <= n; i += 32) {
        c0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), c0);
        c1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), c1);
        c2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), c2);
        c3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), c3);
    }
    for (; i + 8 <= n; i += 8)
        c0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), c0);
    for (; i < n; i++)
        s += a[i] * b[i];
    return hsum256(_mm256_add_ps(_mm256_add_ps(c0, c1), _mm256_add_ps(c2, c3))) + s;
}

static inline __m256 ld_f16(const uint8_t *p)
{
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

static inline __m256 ld_bf16(const uint8_t *p)
{
    __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}

#define GEN_HALF(T, LD, CVT)                                                     \
    static float vd_##T(int64_t n, const void *w, const void *x)                \
    {                                                                           \
        const uint8_t *a = w;                                                   \
        const float *b = x;                                                     \
        __m256 c0 = _mm256_setzero_ps(), c1 = c0;                               \
        int64_t i = 0;                                                          \
        float s = 0;                                                            \
        for (; i + 16 <= n; i += 16) {                                          \
            c0 = _mm256_fmadd_ps(LD(a + 2 * i), _mm256_loadu_ps(b + i), c0);    \
            c1 = _mm256_fmadd_ps(LD(a + 2 * i + 16), _mm256_loadu_ps(b + i + 8), c1); \
        }                                                                       \
        for (; i < n; i++) {                                                    \
            uint16_t h;                                                         \
            memcpy(&h, a + 2 * i, 2);                                           \
            s += CVT(h) * b[i];                                                 \
        }                                                                       \
        return hsum256(_mm256_add_ps(c0, c1)) + s;                              \
    }

static inline float bf2f(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

GEN_HALF(f16, ld_f16, h2f)
GEN_HALF(bf16, ld_bf16, bf2f)

const struct eng_quant_kern eng_quant_avx2_kern[ENG_TYPE_COUNT] = {
    [ENG_TYPE_F32] = { "avx2", vd_f32, NULL },
    [ENG_TYPE_F16] = { "avx2", vd_f16, NULL },
    [ENG_TYPE_BF16] = { "avx2", vd_bf16, NULL },
    [ENG_TYPE_Q4_0] = { "avx2", vd_q4_0, dr_q4_0, dc_q4_0 },
    [ENG_TYPE_Q4_1] = { "avx2", vd_q4_1, dr_q4_1, dc_q4_1 },
    [ENG_TYPE_Q5_0] = { "avx2", vd_q5_0, dr_q5_0, dc_q5_0 },
    [ENG_TYPE_Q5_1] = { "avx2", vd_q5_1, dr_q5_1, dc_q5_1 },
    [ENG_TYPE_Q8_0] = { "avx2", vd_q8_0, dr_q8_0, dc_q8_0 },
    [ENG_TYPE_Q4_K] = { "avx2", vd_q4_k, dr_q4_k, dc_q4_k },
    [ENG_TYPE_Q5_K] = { "avx2", vd_q5_k, dr_q5_k, dc_q5_k },
    [ENG_TYPE_Q6_K] = { "avx2", vd_q6_k, dr_q6_k, dc_q6_k },
};

/* ---- activation quantizers (q8_0, q8_1, q8_k), bit-identical to the
 * reference: the same f32 amax, d = amax / 127, id = 1/d (0 when not
 * finite), products x*id, and roundf's half-away-from-zero rounding done
 * exactly as floor(|v|) + (frac >= 0.5). Blocks holding a NaN or inf go
 * to the reference, which poisons them (eng_quant.h contract 4). ---- */

static inline __m256 absf(__m256 v)
{
    return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v);
}

/* roundf(v) for |v| < 2^23 (here |v| <= 127) */
static inline __m256i roundf8(__m256 v)
{
    __m256 a = absf(v), t = _mm256_floor_ps(a);
    __m256 up = _mm256_and_ps(_mm256_cmp_ps(_mm256_sub_ps(a, t), _mm256_set1_ps(0.5f), _CMP_GE_OQ),
                              _mm256_set1_ps(1.0f));
    __m256 r = _mm256_or_ps(_mm256_add_ps(t, up), _mm256_and_ps(v, _mm256_set1_ps(-0.0f)));
    return _mm256_cvtps_epi32(r);
}

/* amax of n (multiple of 8) floats; -1 when any is NaN or inf */
static inline float amax_or_bad(const float *x, int n)
{
    __m256 m = _mm256_setzero_ps(), e = _mm256_setzero_ps();
    const __m256 inf = _mm256_set1_ps(__builtin_inff());

    for (int i = 0; i < n; i += 8) {
        __m256 a = absf(_mm256_loadu_ps(x + i));
        e = _mm256_or_ps(e, _mm256_cmp_ps(a, inf, _CMP_NLT_UQ)); /* >= inf or NaN */
        m = _mm256_max_ps(m, a);
    }
    if (_mm256_movemask_ps(e))
        return -1.0f;
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
}

static inline float inv_or_zero(float d)
{
    float r = 1.0f / d;

    return __builtin_isfinite(r) ? r : 0.0f;
}

/* 32 floats * id -> 32 int8 at q; returns their sum */
static inline int q8_32(const float *x, float id, int8_t *q)
{
    __m256 vid = _mm256_set1_ps(id);
    __m256i i0 = roundf8(_mm256_mul_ps(_mm256_loadu_ps(x), vid));
    __m256i i1 = roundf8(_mm256_mul_ps(_mm256_loadu_ps(x + 8), vid));
    __m256i i2 = roundf8(_mm256_mul_ps(_mm256_loadu_ps(x + 16), vid));
    __m256i i3 = roundf8(_mm256_mul_ps(_mm256_loadu_ps(x + 24), vid));
    __m256i s = _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3));
    __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
    p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)q, p);
    __m128i t = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0x4e));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0xb1));
    return _mm_cvtsi128_si32(t);
}

int eng_quant_avx2_act(uint32_t type, const float *x, void *dst, int64_t n)
{
    int rc = 0;

    switch (type) {
    case ENG_TYPE_Q8_0: {
        struct eng_bq8_0 *b = dst;
        for (int64_t i = 0; i < n / ENG_QK; i++, x += ENG_QK) {
            float amax = amax_or_bad(x, ENG_QK);
            if (amax < 0) {
                rc = eng_quant_ref_quant(type, x, &b[i], ENG_QK);
                continue;
            }
            float d = amax / 127;
            b[i].d = _cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT);
            q8_32(x, inv_or_zero(d), b[i].qs);
        }
        return rc;
    }
    case ENG_TYPE_Q8_1: {
        struct eng_bq8_1 *b = dst;
        for (int64_t i = 0; i < n / ENG_QK; i++, x += ENG_QK) {
            float amax = amax_or_bad(x, ENG_QK);
            if (amax < 0) {
                rc = eng_quant_ref_quant(type, x, &b[i], ENG_QK);
                continue;
            }
            float d = amax / 127;
            int sum = q8_32(x, inv_or_zero(d), b[i].qs);
            b[i].d = d;
            b[i].s = d * (float)sum;
        }
        return rc;
    }
    case ENG_PACK_ACT_32: {
        /* the packed kernels' q8_1 with the code sum: q8_32's sum is
         * exactly the sum of the codes it wrote, so one pass does it */
        struct eng_bq8_p *b = dst;
        for (int64_t i = 0; i < n / ENG_QK; i++, x += ENG_QK) {
            float amax = amax_or_bad(x, ENG_QK);
            int sum;
            if (amax < 0) {
                struct eng_bq8_1 t;

                rc = eng_quant_ref_quant(ENG_TYPE_Q8_1, x, &t, ENG_QK);
                sum = 0;
                for (int j = 0; j < ENG_QK; j++)
                    sum += t.qs[j];
                b[i].d = t.d;
                b[i].s = t.s;
                memcpy(b[i].qs, t.qs, ENG_QK);
            } else {
                float d = amax / 127;
                sum = q8_32(x, inv_or_zero(d), b[i].qs);
                b[i].d = d;
                b[i].s = d * (float)sum;
            }
            b[i].nsum = -sum;
            b[i].pad = 0;
        }
        return rc;
    }
    case ENG_TYPE_Q8_K: {
        struct eng_bq8_k *b = dst;
        for (int64_t i = 0; i < n / ENG_QK_K; i++, x += ENG_QK_K) {
            float amax = amax_or_bad(x, ENG_QK_K);
            if (amax < 0) {
                rc = eng_quant_ref_quant(type, x, &b[i], ENG_QK_K);
                continue;
            }
            float d = amax / 127, id = inv_or_zero(d);
            for (int c = 0; c < ENG_QK_K / 32; c++) {
                q8_32(x + 32 * c, id, b[i].qs + 32 * c);
                /* bsums of the two 16-element groups from the int8 codes */
                __m256i q = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(b[i].qs + 32 * c)));
                __m256i r = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(b[i].qs + 32 * c + 16)));
                __m256i ones = _mm256_set1_epi16(1);
                __m256i sq = _mm256_hadd_epi32(_mm256_madd_epi16(q, ones), _mm256_madd_epi16(r, ones));
                /* sq lanes: [q0+q1, q2+q3, r0+r1, r2+r3 | q4+q5, q6+q7, r4+r5, r6+r7] */
                __m128i t = _mm_add_epi32(_mm256_castsi256_si128(sq), _mm256_extracti128_si256(sq, 1));
                t = _mm_hadd_epi32(t, t);
                b[i].bsums[2 * c] = (int16_t)_mm_cvtsi128_si32(t);
                b[i].bsums[2 * c + 1] = (int16_t)_mm_extract_epi32(t, 1);
            }
            b[i].d = d;
        }
        return rc;
    }
    default:
        return -ENOTSUP;
    }
}
