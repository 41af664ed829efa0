/*
 * eng_quant_ref.c - scalar reference for every weight type: dequantize,
 * quantize, and the dot products the SIMD kernels are checked against.
 *
 * Dequantization follows the gguf package's order of f32 operations
 * exactly (d*sc first, then *q, then - dmin*m), so results are bit-equal
 * to it; this file is compiled without FMA so nothing gets contracted.
 *
 * Dot products compute the integer sums of each block exactly, then scale
 * in f32, in the same form the SIMD kernels use (weight offsets through
 * the activation block sum s / bsums), so SIMD and scalar differ only by
 * f32 summation order.
 */
#include "eng_quant_int.h"

#include <errno.h>
#include <math.h>
#include <string.h>

#include "eng_fp16.h"

#define H2F eng_f16_to_f32
#define F2H eng_f32_to_f16

static int nearest_int(float v)
{
    return (int)lrintf(v);
}

/* 1/d, or 0 when that is not finite (d zero or subnormal): a block of
 * all-tiny values then quantizes to zero codes instead of x * inf = NaN
 * for its zeros (and an undefined NaN-to-int conversion). */
static float safe_inv(float d)
{
    float r = 1.0f / d;

    return isfinite(r) ? r : 0.0f;
}

/* ---------------------------------------------------------------- dequant */

static void deq_q4_0(const struct eng_bq4_0 *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, y += ENG_QK) {
        float d = H2F(b[i].d);
        for (int j = 0; j < ENG_QK / 2; j++) {
            y[j] = d * (float)((b[i].qs[j] & 0xf) - 8);
            y[j + 16] = d * (float)((b[i].qs[j] >> 4) - 8);
        }
    }
}

static void deq_q4_1(const struct eng_bq4_1 *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, y += ENG_QK) {
        float d = H2F(b[i].d), m = H2F(b[i].m);
        for (int j = 0; j < ENG_QK / 2; j++) {
            y[j] = d * (float)(b[i].qs[j] & 0xf) + m;
            y[j + 16] = d * (float)(b[i].qs[j] >> 4) + m;
        }
    }
}

static uint32_t load_u32(const uint8_t *p)
{
    uint32_t v;

    memcpy(&v, p, 4);
    return v;
}

static void deq_q5_0(const struct eng_bq5_0 *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, y += ENG_QK) {
        float d = H2F(b[i].d);
        uint32_t qh = load_u32(b[i].qh);
        for (int j = 0; j < ENG_QK / 2; j++) {
            int q0 = (b[i].qs[j] & 0xf) | (int)(((qh >> j) & 1) << 4);
            int q1 = (b[i].qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
            y[j] = d * (float)(q0 - 16);
            y[j + 16] = d * (float)(q1 - 16);
        }
    }
}

static void deq_q5_1(const struct eng_bq5_1 *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, y += ENG_QK) {
        float d = H2F(b[i].d), m = H2F(b[i].m);
        uint32_t qh = load_u32(b[i].qh);
        for (int j = 0; j < ENG_QK / 2; j++) {
            int q0 = (b[i].qs[j] & 0xf) | (int)(((qh >> j) & 1) << 4);
            int q1 = (b[i].qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
            y[j] = d * (float)q0 + m;
            y[j + 16] = d * (float)q1 + m;
        }
    }
}

static void deq_q8_0(const struct eng_bq8_0 *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, y += ENG_QK) {
        float d = H2F(b[i].d);
        for (int j = 0; j < ENG_QK; j++)
            y[j] = (float)b[i].qs[j] * d;
    }
}

static void deq_q8_1(const struct eng_bq8_1 *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, y += ENG_QK)
        for (int j = 0; j < ENG_QK; j++)
            y[j] = (float)b[i].qs[j] * b[i].d;
}

static void deq_q4_k(const struct eng_bq4_k *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++) {
        float d = H2F(b[i].d), dmin = H2F(b[i].dmin);
        for (int s = 0; s < 8; s++, y += 32) {
            uint8_t sc, mn;
            eng_k_scale_min(s, b[i].scales, &sc, &mn);
            float d1 = d * (float)sc, m1 = dmin * (float)mn;
            const uint8_t *q = b[i].qs + (s / 2) * 32;
            int sh = (s & 1) * 4;
            for (int l = 0; l < 32; l++)
                y[l] = d1 * (float)((q[l] >> sh) & 0xf) - m1;
        }
    }
}

static void deq_q5_k(const struct eng_bq5_k *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++) {
        float d = H2F(b[i].d), dmin = H2F(b[i].dmin);
        for (int s = 0; s < 8; s++, y += 32) {
            uint8_t sc, mn;
            eng_k_scale_min(s, b[i].scales, &sc, &mn);
            float d1 = d * (float)sc, m1 = dmin * (float)mn;
            const uint8_t *q = b[i].qs + (s / 2) * 32;
            int sh = (s & 1) * 4;
            for (int l = 0; l < 32; l++) {
                int v = ((q[l] >> sh) & 0xf) | (((b[i].qh[l] >> s) & 1) << 4);
                y[l] = d1 * (float)v - m1;
            }
        }
    }
}

/* q6_k element p (0..127) of half h: low 4 bits in ql[h*64 + p%64] (nibble
 * p/64), high 2 bits in qh[h*32 + p%32] at bit 2*(p/32); scale p/16. */
static inline int q6_k_val(const struct eng_bq6_k *b, int e)
{
    int h = e / 128, p = e % 128;
    int lo = (b->ql[h * 64 + p % 64] >> (4 * (p / 64))) & 0xf;
    int hi = (b->qh[h * 32 + p % 32] >> (2 * (p / 32))) & 3;
    return (lo | (hi << 4)) - 32;
}

static void deq_q6_k(const struct eng_bq6_k *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, y += ENG_QK_K) {
        float d = H2F(b[i].d);
        for (int e = 0; e < ENG_QK_K; e++)
            y[e] = (d * (float)b[i].scales[e / 16]) * (float)q6_k_val(&b[i], e);
    }
}

static void deq_q8_k(const struct eng_bq8_k *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, y += ENG_QK_K)
        for (int j = 0; j < ENG_QK_K; j++)
            y[j] = b[i].d * (float)b[i].qs[j];
}

int eng_quant_ref_dequant(uint32_t type, const void *src, float *dst, int64_t n)
{
    const struct eng_type_info *ti = eng_type_get(type);
    int64_t nb;

    if (!ti || n < 0 || n % ti->blck)
        return -EINVAL;
    nb = n / ti->blck;
    switch (type) {
    case ENG_TYPE_F32:
        memmove(dst, src, (size_t)n * 4);
        return 0;
    case ENG_TYPE_F16: {
        const uint8_t *p = src;
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            dst[i] = eng_f16_to_f32(h);
        }
        return 0;
    }
    case ENG_TYPE_BF16: {
        const uint8_t *p = src;
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            dst[i] = eng_bf16_to_f32(h);
        }
        return 0;
    }
    case ENG_TYPE_Q4_0: deq_q4_0(src, dst, nb); return 0;
    case ENG_TYPE_Q4_1: deq_q4_1(src, dst, nb); return 0;
    case ENG_TYPE_Q5_0: deq_q5_0(src, dst, nb); return 0;
    case ENG_TYPE_Q5_1: deq_q5_1(src, dst, nb); return 0;
    case ENG_TYPE_Q8_0: deq_q8_0(src, dst, nb); return 0;
    case ENG_TYPE_Q8_1: deq_q8_1(src, dst, nb); return 0;
    case ENG_TYPE_Q4_K: deq_q4_k(src, dst, nb); return 0;
    case ENG_TYPE_Q5_K: deq_q5_k(src, dst, nb); return 0;
    case ENG_TYPE_Q6_K: deq_q6_k(src, dst, nb); return 0;
    case ENG_TYPE_Q8_K: deq_q8_k(src, dst, nb); return 0;
    default:
        return -EINVAL;
    }
}

/* ---------------------------------------------------------------- quant */

/* True when x[0..n) are all finite. */
static int all_finite(const float *x, int n)
{
    for (int i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return 0;
    return 1;
}

static const uint16_t F16_NAN = 0x7e00;

static int q_q4_0(const float *x, struct eng_bq4_0 *b, int64_t nb)
{
    int rc = 0;

    for (int64_t i = 0; i < nb; i++, x += ENG_QK) {
        float amax = 0, max = 0;
        if (!all_finite(x, ENG_QK)) {
            memset(&b[i], 0, sizeof(b[i]));
            b[i].d = F16_NAN;
            rc = -EDOM;
            continue;
        }
        for (int j = 0; j < ENG_QK; j++)
            if (fabsf(x[j]) > amax) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        float d = max / -8, id = safe_inv(d);
        b[i].d = F2H(d);
        for (int j = 0; j < 16; j++) {
            int q0 = (int)(x[j] * id + 8.5f), q1 = (int)(x[j + 16] * id + 8.5f);
            q0 = q0 > 15 ? 15 : q0;
            q1 = q1 > 15 ? 15 : q1;
            b[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
    return rc;
}

static int q_q4_1(const float *x, struct eng_bq4_1 *b, int64_t nb)
{
    int rc = 0;

    for (int64_t i = 0; i < nb; i++, x += ENG_QK) {
        if (!all_finite(x, ENG_QK)) {
            memset(&b[i], 0, sizeof(b[i]));
            b[i].d = F16_NAN;
            rc = -EDOM;
            continue;
        }
        float mn = x[0], mx = x[0];
        for (int j = 1; j < ENG_QK; j++) {
            mn = x[j] < mn ? x[j] : mn;
            mx = x[j] > mx ? x[j] : mx;
        }
        float d = (mx - mn) / 15, id = safe_inv(d);
        b[i].d = F2H(d);
        b[i].m = F2H(mn);
        for (int j = 0; j < 16; j++) {
            int q0 = (int)((x[j] - mn) * id + 0.5f), q1 = (int)((x[j + 16] - mn) * id + 0.5f);
            q0 = q0 > 15 ? 15 : q0;
            q1 = q1 > 15 ? 15 : q1;
            b[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
    return rc;
}

static int q_q5_0(const float *x, struct eng_bq5_0 *b, int64_t nb)
{
    int rc = 0;

    for (int64_t i = 0; i < nb; i++, x += ENG_QK) {
        float amax = 0, max = 0;
        uint32_t qh = 0;
        if (!all_finite(x, ENG_QK)) {
            memset(&b[i], 0, sizeof(b[i]));
            b[i].d = F16_NAN;
            rc = -EDOM;
            continue;
        }
        for (int j = 0; j < ENG_QK; j++)
            if (fabsf(x[j]) > amax) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        float d = max / -16, id = safe_inv(d);
        b[i].d = F2H(d);
        for (int j = 0; j < 16; j++) {
            int q0 = (int)(x[j] * id + 16.5f), q1 = (int)(x[j + 16] * id + 16.5f);
            q0 = q0 > 31 ? 31 : q0;
            q1 = q1 > 31 ? 31 : q1;
            b[i].qs[j] = (uint8_t)((q0 & 0xf) | ((q1 & 0xf) << 4));
            qh |= (uint32_t)(q0 >> 4) << j;
            qh |= (uint32_t)(q1 >> 4) << (j + 16);
        }
        memcpy(b[i].qh, &qh, 4);
    }
    return rc;
}

static int q_q5_1(const float *x, struct eng_bq5_1 *b, int64_t nb)
{
    int rc = 0;

    for (int64_t i = 0; i < nb; i++, x += ENG_QK) {
        uint32_t qh = 0;
        if (!all_finite(x, ENG_QK)) {
            memset(&b[i], 0, sizeof(b[i]));
            b[i].d = F16_NAN;
            rc = -EDOM;
            continue;
        }
        float mn = x[0], mx = x[0];
        for (int j = 1; j < ENG_QK; j++) {
            mn = x[j] < mn ? x[j] : mn;
            mx = x[j] > mx ? x[j] : mx;
        }
        float d = (mx - mn) / 31, id = safe_inv(d);
        b[i].d = F2H(d);
        b[i].m = F2H(mn);
        for (int j = 0; j < 16; j++) {
            int q0 = (int)((x[j] - mn) * id + 0.5f), q1 = (int)((x[j + 16] - mn) * id + 0.5f);
            q0 = q0 > 31 ? 31 : q0;
            q1 = q1 > 31 ? 31 : q1;
            b[i].qs[j] = (uint8_t)((q0 & 0xf) | ((q1 & 0xf) << 4));
            qh |= (uint32_t)(q0 >> 4) << j;
            qh |= (uint32_t)(q1 >> 4) << (j + 16);
        }
        memcpy(b[i].qh, &qh, 4);
    }
    return rc;
}

static int q_q8_0(const float *x, struct eng_bq8_0 *b, int64_t nb)
{
    int rc = 0;

    for (int64_t i = 0; i < nb; i++, x += ENG_QK) {
        float amax = 0;
        if (!all_finite(x, ENG_QK)) {
            memset(&b[i], 0, sizeof(b[i]));
            b[i].d = F16_NAN;
            rc = -EDOM;
            continue;
        }
        for (int j = 0; j < ENG_QK; j++)
            amax = fmaxf(amax, fabsf(x[j]));
        float d = amax / 127, id = safe_inv(d);
        b[i].d = F2H(d);
        for (int j = 0; j < ENG_QK; j++)
            b[i].qs[j] = (int8_t)roundf(x[j] * id);
    }
    return rc;
}

static int q_q8_1(const float *x, struct eng_bq8_1 *b, int64_t nb)
{
    int rc = 0;

    for (int64_t i = 0; i < nb; i++, x += ENG_QK) {
        float amax = 0;
        int sum = 0;
        if (!all_finite(x, ENG_QK)) {
            memset(&b[i], 0, sizeof(b[i]));
            b[i].d = b[i].s = NAN;
            rc = -EDOM;
            continue;
        }
        for (int j = 0; j < ENG_QK; j++)
            amax = fmaxf(amax, fabsf(x[j]));
        float d = amax / 127, id = safe_inv(d);
        for (int j = 0; j < ENG_QK; j++) {
            int q = (int)roundf(x[j] * id);
            b[i].qs[j] = (int8_t)q;
            sum += q;
        }
        b[i].d = d;
        b[i].s = d * (float)sum;
    }
    return rc;
}

static int q_q8_k(const float *x, struct eng_bq8_k *b, int64_t nb)
{
    int rc = 0;

    for (int64_t i = 0; i < nb; i++, x += ENG_QK_K) {
        float amax = 0;
        if (!all_finite(x, ENG_QK_K)) {
            memset(&b[i], 0, sizeof(b[i]));
            b[i].d = NAN;
            rc = -EDOM;
            continue;
        }
        for (int j = 0; j < ENG_QK_K; j++)
            amax = fmaxf(amax, fabsf(x[j]));
        float d = amax / 127, id = safe_inv(d);
        for (int g = 0; g < ENG_QK_K / 16; g++) {
            int sum = 0;
            for (int j = g * 16; j < g * 16 + 16; j++) {
                int q = (int)roundf(x[j] * id);
                b[i].qs[j] = (int8_t)q;
                sum += q;
            }
            b[i].bsums[g] = (int16_t)sum;
        }
        b[i].d = d;
    }
    return rc;
}

/*
 * K-quant scale search (q4_k, q5_k): each 32-element sub-block s gets an
 * affine grid x ~ d*sc[s]*q - dmin*mn[s], q in [0, qmax], with 6-bit sc
 * and mn. First pass: per sub-block min (clamped to <= 0, as ggml does,
 * so mn >= 0) and step (max-min)/qmax; the super-block d and dmin map the
 * largest step and min to 63. Then for each sub-block a few 6-bit scale
 * candidates around the rounded one are tried and the one with the least
 * squared error is kept. Simpler than llama.cpp's make_qkx2 search; the
 * RMSE it gives is reported by tests/test-engine-quant.c.
 */
static float kq_sub_err(const float *x, float d1, float m1, int qmax, uint8_t *q)
{
    float err = 0;
    float id = safe_inv(d1);

    for (int l = 0; l < 32; l++) {
        int v = nearest_int((x[l] + m1) * id);
        v = v < 0 ? 0 : v > qmax ? qmax : v;
        if (q)
            q[l] = (uint8_t)v;
        float e = d1 * (float)v - m1 - x[l];
        err += e * e;
    }
    return err;
}

static void kq_search(const float *x, int qmax, uint16_t *dh, uint16_t *dminh,
                      uint8_t sc[8], uint8_t mn[8], uint8_t q[256])
{
    float step[8], mins[8], maxstep = 0, maxmin = 0;

    for (int s = 0; s < 8; s++) {
        const float *xs = x + 32 * s;
        float lo = xs[0], hi = xs[0];
        for (int l = 1; l < 32; l++) {
            lo = xs[l] < lo ? xs[l] : lo;
            hi = xs[l] > hi ? xs[l] : hi;
        }
        if (lo > 0)
            lo = 0;
        step[s] = (hi - lo) / (float)qmax;
        mins[s] = -lo;
        maxstep = fmaxf(maxstep, step[s]);
        maxmin = fmaxf(maxmin, mins[s]);
    }
    *dh = F2H(maxstep / 63);
    *dminh = F2H(maxmin / 63);
    float d = H2F(*dh), dmin = H2F(*dminh);
    for (int s = 0; s < 8; s++) {
        const float *xs = x + 32 * s;
        int m0 = dmin ? nearest_int(mins[s] / dmin) : 0;
        int c0 = d ? nearest_int(step[s] / d) : 0;
        int best_c = 0, best_m = 0;
        float best = INFINITY;
        m0 = m0 > 63 ? 63 : m0;
        c0 = c0 > 63 ? 63 : c0;
        for (int mm = m0 - 1; mm <= m0 + 1; mm++) {
            if (mm < 0 || mm > 63)
                continue;
            for (int c = c0 - 2; c <= c0 + 2; c++) {
                if (c < 0 || c > 63)
                    continue;
                float e = kq_sub_err(xs, d * (float)c, dmin * (float)mm, qmax, NULL);
                if (e < best) {
                    best = e;
                    best_c = c;
                    best_m = mm;
                }
            }
        }
        sc[s] = (uint8_t)best_c;
        mn[s] = (uint8_t)best_m;
        kq_sub_err(xs, d * (float)best_c, dmin * (float)best_m, qmax, q + 32 * s);
    }
}

static void kq_pack_scales(const uint8_t sc[8], const uint8_t mn[8], uint8_t *out)
{
    for (int j = 0; j < 4; j++) {
        out[j] = (uint8_t)((sc[j] & 63) | ((sc[j + 4] >> 4) << 6));
        out[j + 4] = (uint8_t)((mn[j] & 63) | ((mn[j + 4] >> 4) << 6));
        out[j + 8] = (uint8_t)((sc[j + 4] & 0xf) | ((mn[j + 4] & 0xf) << 4));
    }
}

static int q_q4_k(const float *x, struct eng_bq4_k *b, int64_t nb)
{
    int rc = 0;

    for (int64_t i = 0; i < nb; i++, x += ENG_QK_K) {
        uint8_t sc[8], mn[8], q[256];
        memset(&b[i], 0, sizeof(b[i]));
        if (!all_finite(x, ENG_QK_K)) {
            b[i].d = F16_NAN;
            rc = -EDOM;
            continue;
        }
        kq_search(x, 15, &b[i].d, &b[i].dmin, sc, mn, q);
        kq_pack_scales(sc, mn, b[i].scales);
        for (int s = 0; s < 8; s++)
            for (int l = 0; l < 32; l++)
                b[i].qs[(s / 2) * 32 + l] |= (uint8_t)(q[32 * s + l] << ((s & 1) * 4));
    }
    return rc;
}

static int q_q5_k(const float *x, struct eng_bq5_k *b, int64_t nb)
{
    int rc = 0;

    for (int64_t i = 0; i < nb; i++, x += ENG_QK_K) {
        uint8_t sc[8], mn[8], q[256];
        memset(&b[i], 0, sizeof(b[i]));
        if (!all_finite(x, ENG_QK_K)) {
            b[i].d = F16_NAN;
            rc = -EDOM;
            continue;
        }
        kq_search(x, 31, &b[i].d, &b[i].dmin, sc, mn, q);
        kq_pack_scales(sc, mn, b[i].scales);
        for (int s = 0; s < 8; s++)
            for (int l = 0; l < 32; l++) {
                int v = q[32 * s + l];
                b[i].qs[(s / 2) * 32 + l] |= (uint8_t)((v & 0xf) << ((s & 1) * 4));
                b[i].qh[l] |= (uint8_t)((v >> 4) << s);
            }
    }
    return rc;
}

/* q6_k: per 16 elements a signed grid x ~ d*sc*(q-32), q-32 in [-32,31];
 * the step of a group maps its largest-magnitude value to -32 (ggml's
 * choice, which uses the asymmetric range fully), and the int8 group
 * scales share one f16 d; then each group tries the neighbouring scales. */
static int q_q6_k(const float *x, struct eng_bq6_k *b, int64_t nb)
{
    int rc = 0;

    for (int64_t i = 0; i < nb; i++, x += ENG_QK_K) {
        float gs[16], amaxs = 0, maxs = 0;
        int q[256];
        memset(&b[i], 0, sizeof(b[i]));
        if (!all_finite(x, ENG_QK_K)) {
            b[i].d = F16_NAN;
            rc = -EDOM;
            continue;
        }
        for (int g = 0; g < 16; g++) {
            float amax = 0, max = 0;
            for (int l = 0; l < 16; l++)
                if (fabsf(x[16 * g + l]) > amax) {
                    amax = fabsf(x[16 * g + l]);
                    max = x[16 * g + l];
                }
            gs[g] = max / -32;
            if (fabsf(gs[g]) > amaxs) {
                amaxs = fabsf(gs[g]);
                maxs = gs[g];
            }
        }
        b[i].d = F2H(maxs / -128);
        float d = H2F(b[i].d);
        for (int g = 0; g < 16; g++) {
            const float *xg = x + 16 * g;
            int c0 = d ? nearest_int(gs[g] / d) : 0, best_c = 0;
            float best = INFINITY;
            for (int c = c0 - 2; c <= c0 + 2; c++) {
                if (c < -128 || c > 127)
                    continue;
                float dl = d * (float)c, id = safe_inv(dl), err = 0;
                for (int l = 0; l < 16; l++) {
                    int v = nearest_int(xg[l] * id);
                    v = v < -32 ? -32 : v > 31 ? 31 : v;
                    float e = dl * (float)v - xg[l];
                    err += e * e;
                }
                if (err < best) {
                    best = err;
                    best_c = c;
                }
            }
            b[i].scales[g] = (int8_t)best_c;
            float dl = d * (float)best_c, id = safe_inv(dl);
            for (int l = 0; l < 16; l++) {
                int v = nearest_int(xg[l] * id);
                q[16 * g + l] = (v < -32 ? -32 : v > 31 ? 31 : v) + 32;
            }
        }
        for (int e = 0; e < ENG_QK_K; e++) {
            int h = e / 128, p = e % 128;
            b[i].ql[h * 64 + p % 64] |= (uint8_t)((q[e] & 0xf) << (4 * (p / 64)));
            b[i].qh[h * 32 + p % 32] |= (uint8_t)((q[e] >> 4) << (2 * (p / 32)));
        }
    }
    return rc;
}

int eng_quant_ref_quant(uint32_t type, const float *src, void *dst, int64_t n)
{
    const struct eng_type_info *ti = eng_type_get(type);
    int64_t nb;

    if (!ti || n < 0 || n % ti->blck)
        return -EINVAL;
    nb = n / ti->blck;
    switch (type) {
    case ENG_TYPE_F32:
        memmove(dst, src, (size_t)n * 4);
        return 0;
    case ENG_TYPE_F16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h = eng_f32_to_f16(src[i]);
            memcpy((uint8_t *)dst + 2 * i, &h, 2);
        }
        return 0;
    case ENG_TYPE_BF16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h = eng_f32_to_bf16(src[i]);
            memcpy((uint8_t *)dst + 2 * i, &h, 2);
        }
        return 0;
    case ENG_TYPE_Q4_0: return q_q4_0(src, dst, nb);
    case ENG_TYPE_Q4_1: return q_q4_1(src, dst, nb);
    case ENG_TYPE_Q5_0: return q_q5_0(src, dst, nb);
    case ENG_TYPE_Q5_1: return q_q5_1(src, dst, nb);
    case ENG_TYPE_Q8_0: return q_q8_0(src, dst, nb);
    case ENG_TYPE_Q8_1: return q_q8_1(src, dst, nb);
    case ENG_TYPE_Q4_K: return q_q4_k(src, dst, nb);
    case ENG_TYPE_Q5_K: return q_q5_k(src, dst, nb);
    case ENG_TYPE_Q6_K: return q_q6_k(src, dst, nb);
    case ENG_TYPE_Q8_K: return q_q8_k(src, dst, nb);
    default:
        return -EINVAL;
    }
}

/* ---------------------------------------------------------------- dots */

static float dot_f32(int64_t n, const void *w, const void *x)
{
    const float *a = w, *b = x;
    float s = 0;

    for (int64_t i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

static float dot_f16(int64_t n, const void *w, const void *x)
{
    const uint8_t *a = w;
    const float *b = x;
    float s = 0;

    for (int64_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, a + 2 * i, 2);
        s += eng_f16_to_f32(h) * b[i];
    }
    return s;
}

static float dot_bf16(int64_t n, const void *w, const void *x)
{
    const uint8_t *a = w;
    const float *b = x;
    float s = 0;

    for (int64_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, a + 2 * i, 2);
        s += eng_bf16_to_f32(h) * b[i];
    }
    return s;
}

static float dot_q8_0(int64_t n, const void *w, const void *x)
{
    const struct eng_bq8_0 *a = w, *b = x;
    float s = 0;

    for (int64_t i = 0; i < n / ENG_QK; i++) {
        int is = 0;
        for (int j = 0; j < ENG_QK; j++)
            is += a[i].qs[j] * b[i].qs[j];
        s += (float)is * (H2F(a[i].d) * H2F(b[i].d));
    }
    return s;
}

/* The 32-block types with unsigned codes u and an offset: per block
 *   sum_j (d*u_j + off) * dx*q_j = (d*dx) * sum(u*q) + off * s,
 * off = m (q4_1, q5_1) or -8d / -16d (q4_0, q5_0), s = dx*sum(q). */
static float dot_q4_0(int64_t n, const void *w, const void *x)
{
    const struct eng_bq4_0 *a = w;
    const struct eng_bq8_1 *b = x;
    float s = 0;

    for (int64_t i = 0; i < n / ENG_QK; i++) {
        int is = 0;
        for (int j = 0; j < 16; j++)
            is += (a[i].qs[j] & 0xf) * b[i].qs[j] + (a[i].qs[j] >> 4) * b[i].qs[j + 16];
        float d = H2F(a[i].d);
        s += (float)is * (d * b[i].d) + (-8 * d) * b[i].s;
    }
    return s;
}

static float dot_q4_1(int64_t n, const void *w, const void *x)
{
    const struct eng_bq4_1 *a = w;
    const struct eng_bq8_1 *b = x;
    float s = 0;

    for (int64_t i = 0; i < n / ENG_QK; i++) {
        int is = 0;
        for (int j = 0; j < 16; j++)
            is += (a[i].qs[j] & 0xf) * b[i].qs[j] + (a[i].qs[j] >> 4) * b[i].qs[j + 16];
        s += (float)is * (H2F(a[i].d) * b[i].d) + H2F(a[i].m) * b[i].s;
    }
    return s;
}

static int q5_isum(const uint8_t *qs, const uint8_t *qhp, const int8_t *q8)
{
    uint32_t qh = load_u32(qhp);
    int is = 0;

    for (int j = 0; j < 16; j++) {
        int u0 = (qs[j] & 0xf) | (int)(((qh >> j) & 1) << 4);
        int u1 = (qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
        is += u0 * q8[j] + u1 * q8[j + 16];
    }
    return is;
}

static float dot_q5_0(int64_t n, const void *w, const void *x)
{
    const struct eng_bq5_0 *a = w;
    const struct eng_bq8_1 *b = x;
    float s = 0;

    for (int64_t i = 0; i < n / ENG_QK; i++) {
        int is = q5_isum(a[i].qs, a[i].qh, b[i].qs);
        float d = H2F(a[i].d);
        s += (float)is * (d * b[i].d) + (-16 * d) * b[i].s;
    }
    return s;
}

static float dot_q5_1(int64_t n, const void *w, const void *x)
{
    const struct eng_bq5_1 *a = w;
    const struct eng_bq8_1 *b = x;
    float s = 0;

    for (int64_t i = 0; i < n / ENG_QK; i++) {
        int is = q5_isum(a[i].qs, a[i].qh, b[i].qs);
        s += (float)is * (H2F(a[i].d) * b[i].d) + H2F(a[i].m) * b[i].s;
    }
    return s;
}

/* K-quants: per super-block
 *   dx * (d * sum_s sc_s * sum(u*q) - dmin * sum_s mn_s * bsum_s). */
static float dot_q4_k(int64_t n, const void *w, const void *x)
{
    const struct eng_bq4_k *a = w;
    const struct eng_bq8_k *b = x;
    float s = 0;

    for (int64_t i = 0; i < n / ENG_QK_K; i++) {
        int sumi = 0, summ = 0;
        for (int sb = 0; sb < 8; sb++) {
            uint8_t sc, mn;
            const uint8_t *q = a[i].qs + (sb / 2) * 32;
            const int8_t *q8 = b[i].qs + 32 * sb;
            int sh = (sb & 1) * 4, is = 0;
            eng_k_scale_min(sb, a[i].scales, &sc, &mn);
            for (int l = 0; l < 32; l++)
                is += ((q[l] >> sh) & 0xf) * q8[l];
            sumi += sc * is;
            summ += mn * (b[i].bsums[2 * sb] + b[i].bsums[2 * sb + 1]);
        }
        s += b[i].d * (H2F(a[i].d) * (float)sumi - H2F(a[i].dmin) * (float)summ);
    }
    return s;
}

static float dot_q5_k(int64_t n, const void *w, const void *x)
{
    const struct eng_bq5_k *a = w;
    const struct eng_bq8_k *b = x;
    float s = 0;

    for (int64_t i = 0; i < n / ENG_QK_K; i++) {
        int sumi = 0, summ = 0;
        for (int sb = 0; sb < 8; sb++) {
            uint8_t sc, mn;
            const uint8_t *q = a[i].qs + (sb / 2) * 32;
            const int8_t *q8 = b[i].qs + 32 * sb;
            int sh = (sb & 1) * 4, is = 0;
            eng_k_scale_min(sb, a[i].scales, &sc, &mn);
            for (int l = 0; l < 32; l++) {
                int u = ((q[l] >> sh) & 0xf) | (((a[i].qh[l] >> sb) & 1) << 4);
                is += u * q8[l];
            }
            sumi += sc * is;
            summ += mn * (b[i].bsums[2 * sb] + b[i].bsums[2 * sb + 1]);
        }
        s += b[i].d * (H2F(a[i].d) * (float)sumi - H2F(a[i].dmin) * (float)summ);
    }
    return s;
}

/* q6_k: dx * d * sum_g sc_g * (sum(u*q) - 32 * bsum_g), u = q6 + 32.
 * Walks the layout directly (see q6_k_val) rather than element by
 * element: half h, quarter t of 32, position l. */
static float dot_q6_k(int64_t n, const void *w, const void *x)
{
    const struct eng_bq6_k *a = w;
    const struct eng_bq8_k *b = x;
    float s = 0;

    for (int64_t i = 0; i < n / ENG_QK_K; i++) {
        int gsum[16] = { 0 }, sumi = 0;
        for (int h = 0; h < 2; h++)
            for (int t = 0; t < 4; t++)
                for (int l = 0; l < 32; l++) {
                    int lo = (a[i].ql[h * 64 + (t & 1) * 32 + l] >> (4 * (t >> 1))) & 0xf;
                    int hi = (a[i].qh[h * 32 + l] >> (2 * t)) & 3;
                    int e = h * 128 + t * 32 + l;
                    gsum[e / 16] += (lo | (hi << 4)) * b[i].qs[e];
                }
        for (int g = 0; g < 16; g++)
            sumi += a[i].scales[g] * (gsum[g] - 32 * b[i].bsums[g]);
        s += b[i].d * (H2F(a[i].d) * (float)sumi);
    }
    return s;
}

const struct eng_quant_kern eng_quant_ref_kern[ENG_TYPE_COUNT] = {
    [ENG_TYPE_F32] = { "scalar", dot_f32, NULL },
    [ENG_TYPE_F16] = { "scalar", dot_f16, NULL },
    [ENG_TYPE_BF16] = { "scalar", dot_bf16, NULL },
    [ENG_TYPE_Q4_0] = { "scalar", dot_q4_0, NULL },
    [ENG_TYPE_Q4_1] = { "scalar", dot_q4_1, NULL },
    [ENG_TYPE_Q5_0] = { "scalar", dot_q5_0, NULL },
    [ENG_TYPE_Q5_1] = { "scalar", dot_q5_1, NULL },
    [ENG_TYPE_Q8_0] = { "scalar", dot_q8_0, NULL },
    [ENG_TYPE_Q4_K] = { "scalar", dot_q4_k, NULL },
    [ENG_TYPE_Q5_K] = { "scalar", dot_q5_k, NULL },
    [ENG_TYPE_Q6_K] = { "scalar", dot_q6_k, NULL },
};
