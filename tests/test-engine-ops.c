/*
 * test-engine-ops.c - the AVX-512 float loops (eng_ops.h "Vector math"
 * and the attention block loops) against their scalar references on the
 * same seeded inputs:
 *   - exp: within 4 ulp-ish (2e-7 relative) of expf over [-104, 89] and
 *     exactly 0 / inf / NaN at the edges;
 *   - silu_mul: within 1e-6 relative of the scalar one, gelu_mul within
 *     2e-6 of f64, odd lengths 1..100 (masked tails), inputs up to +-90;
 *   - softmax: within 1e-6 of the f64 softmax, sums to 1;
 *   - argmax: the scalar loop's index on random rows, ties (first wins),
 *     NaN (never wins), all -inf / all NaN (0), odd lengths;
 *   - attention scores over transposed keys (eng_kv.h) for every slot
 *     range of a block: within 1e-6 * sum |q k| of the f64 dot;
 *   - the f16-KV loops (scores and value sums): bit for bit the f32 loops
 *     on the same elements widened (same operations, same order: an f16
 *     pool changes only what is stored), and the value sums within
 *     1e-6 * sum |p v| of the f64 sum.
 * Skips (77) on CPUs without AVX-512.
 */
#include "t_util.h"

#include "eng_fp16.h"
#include "eng_kv.h"
#include "eng_ops.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t seed = 7;
static int fails;

#define CHECK(cond, ...)                                                      \
    do {                                                                      \
        if (!(cond)) {                                                        \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);   \
            fprintf(stderr, __VA_ARGS__);                                     \
            fprintf(stderr, "\n");                                            \
            fails++;                                                          \
        }                                                                     \
    } while (0)

static float frand(float lo, float hi)
{
    return lo + (hi - lo) * (float)((double)(t_rand(&seed) % 1000001) / 1000000.0);
}

static void test_exp(void)
{
    enum { N = 4099 };
    static float x[N], y[N];
    const float edge[] = { -INFINITY, -200.0f, -104.0f, -103.9f, -87.3f, 0.0f, -0.0f, 1e-20f,
                           88.7f, 88.8f, 89.0f, 200.0f, INFINITY, NAN };

    for (int i = 0; i < N; i++)
        x[i] = -104.0f + 193.0f * (float)i / (N - 1);
    eng_vmath_avx512_exp(y, x, N);
    for (int i = 0; i < N; i++) {
        double ref = exp((double)x[i]);

        if (ref < 1e-37) /* subnormal results: absolute error only */
            CHECK(fabs(y[i] - ref) <= 1e-44, "exp(%g) = %g, want %g", x[i], y[i], ref);
        else if (isinf((float)ref))
            CHECK(isinf(y[i]) && y[i] > 0, "exp(%g) = %g, want inf", x[i], y[i]);
        else
            CHECK(fabs(y[i] - ref) <= 3e-7 * ref, "exp(%g) = %.9g, want %.9g", x[i], y[i], ref);
    }
    eng_vmath_avx512_exp(y, edge, sizeof(edge) / sizeof(edge[0]));
    CHECK(y[0] == 0.0f && y[1] == 0.0f, "exp(-inf) %g exp(-200) %g", y[0], y[1]);
    CHECK(y[5] == 1.0f && y[6] == 1.0f && y[7] == 1.0f, "exp(0) %g %g %g", y[5], y[6], y[7]);
    CHECK(isinf(y[10]) && isinf(y[11]) && isinf(y[12]), "exp(89+) %g %g %g", y[10], y[11],
          y[12]);
    CHECK(isnan(y[13]), "exp(nan) = %g", y[13]);
}

static void test_gated(void)
{
    float g[100], u[100], a[100], b[100];

    for (uint32_t n = 1; n <= 100; n += 3) {
        for (uint32_t i = 0; i < n; i++) {
            g[i] = frand(-12.0f, 12.0f);
            u[i] = frand(-3.0f, 3.0f);
        }
        if (n > 4) {
            g[0] = 90.0f;
            g[1] = -90.0f;
            g[2] = 0.0f;
        }
        eng_ops_silu_mul_scalar(a, g, u, n);
        eng_vmath_avx512_silu_mul(b, g, u, n);
        for (uint32_t i = 0; i < n; i++)
            CHECK(fabsf(a[i] - b[i]) <= 1e-6f * fabsf(a[i]) + 1e-30f,
                  "silu n=%u i=%u g=%g: %.9g vs %.9g", n, i, g[i], b[i], a[i]);
        /* gelu against f64 in the stable form 0.5 x (1 + tanh z) =
         * x / (1 + e^-2z): the scalar f32 loop loses digits to 1 + tanh
         * for negative inputs, the vector one computes this form */
        eng_vmath_avx512_gelu_mul(b, g, u, n);
        for (uint32_t i = 0; i < n; i++) {
            double x = g[i], z = 0.7978845608028654 * (x + 0.044715 * x * x * x);
            double ref = x / (1.0 + exp(-2.0 * z)) * u[i];

            /* e^-2z amplifies z's f32 rounding by |2z| */
            CHECK(fabs(b[i] - ref) <= (2e-6 + 3e-7 * fabs(2.0 * z)) * fabs(ref) + 1e-30,
                  "gelu n=%u i=%u g=%g: %.9g vs %.9g", n, i, g[i], b[i], ref);
        }
        /* the dispatching entry point takes the vector loop here */
        eng_ops_gelu_mul(a, g, u, n);
        CHECK(!memcmp(a, b, n * sizeof(float)), "gelu dispatch n=%u", n);
    }
}

static void test_softmax(void)
{
    float s[300];
    double ref[300];

    for (uint32_t n = 1; n <= 300; n += 7) {
        double mx = -INFINITY, sum = 0, tot = 0;
        float m;

        for (uint32_t i = 0; i < n; i++) {
            s[i] = frand(-30.0f, 30.0f);
            mx = s[i] > mx ? s[i] : mx;
        }
        for (uint32_t i = 0; i < n; i++)
            sum += ref[i] = exp((double)s[i] - mx);
        m = eng_vmath_avx512_softmax(s, n);
        CHECK(m == (float)mx, "softmax max %g want %g", m, mx);
        for (uint32_t i = 0; i < n; i++) {
            CHECK(fabs(s[i] - ref[i] / sum) <= 1e-6 * (ref[i] / sum) + 1e-12,
                  "softmax n=%u i=%u: %.9g want %.9g", n, i, s[i], ref[i] / sum);
            tot += s[i];
        }
        CHECK(fabs(tot - 1.0) < 1e-5, "softmax n=%u sums to %.9g", n, tot);
    }
}

static void test_argmax(void)
{
    static float x[50000];

    for (uint32_t n = 1; n <= 50000; n = n * 3 + 1) {
        for (uint32_t i = 0; i < n; i++)
            x[i] = frand(-20.0f, 20.0f);
        CHECK(eng_vmath_avx512_argmax(x, n) == eng_ops_argmax_scalar(x, n), "argmax n=%u", n);
        /* ties: the first wins */
        x[n / 2] = 100.0f;
        x[n - 1] = 100.0f;
        CHECK(eng_vmath_avx512_argmax(x, n) == n / 2, "argmax tie n=%u", n);
        /* NaN never wins */
        x[0] = NAN;
        CHECK(eng_vmath_avx512_argmax(x, n) == eng_ops_argmax_scalar(x, n),
              "argmax NaN n=%u: %u vs %u", n, eng_vmath_avx512_argmax(x, n),
              eng_ops_argmax_scalar(x, n));
        x[n - 1] = INFINITY;
        CHECK(eng_vmath_avx512_argmax(x, n) == eng_ops_argmax_scalar(x, n), "argmax inf n=%u",
              n);
    }
    for (uint32_t i = 0; i < 37; i++)
        x[i] = -INFINITY;
    CHECK(eng_vmath_avx512_argmax(x, 37) == 0 && eng_ops_argmax_scalar(x, 37) == 0,
          "argmax all -inf");
    for (uint32_t i = 0; i < 37; i++)
        x[i] = NAN;
    CHECK(eng_vmath_avx512_argmax(x, 37) == 0 && eng_ops_argmax_scalar(x, 37) == 0,
          "argmax all NaN");
    x[20] = -5.0f;
    CHECK(eng_vmath_avx512_argmax(x, 37) == 20 && eng_ops_argmax_scalar(x, 37) == 20,
          "argmax NaNs and one number");
}

static void test_scores(void)
{
    static const uint32_t hds[] = { 32, 64, 128, 256 };
    float q[256], kt[256 * ENG_KV_BLOCK], sc[ENG_KV_BLOCK];

    for (unsigned h = 0; h < sizeof(hds) / sizeof(hds[0]); h++) {
        uint32_t hd = hds[h];

        if (!eng_attn_fast(hd))
            continue;
        for (uint32_t d = 0; d < hd; d++)
            q[d] = frand(-2.0f, 2.0f);
        for (uint32_t i = 0; i < hd * ENG_KV_BLOCK; i++)
            kt[i] = frand(-2.0f, 2.0f);
        for (uint32_t s0 = 0; s0 < ENG_KV_BLOCK; s0++)
            for (uint32_t n = 1; s0 + n <= ENG_KV_BLOCK; n++) {
                memset(sc, 0xff, sizeof(sc));
                eng_attn_avx512_scores(sc, q, kt, s0, n, hd, 0.125f);
                for (uint32_t i = 0; i < n; i++) {
                    double ref = 0, mag = 0;

                    for (uint32_t d = 0; d < hd; d++) {
                        ref += (double)q[d] * kt[d * ENG_KV_BLOCK + s0 + i];
                        mag += fabs((double)q[d] * kt[d * ENG_KV_BLOCK + s0 + i]);
                    }
                    CHECK(fabs(sc[i] - 0.125 * ref) <= 1e-6 * mag, "scores hd=%u s0=%u n=%u i=%u",
                          hd, s0, n, i);
                }
                for (uint32_t i = n; i < ENG_KV_BLOCK; i++) {
                    uint32_t w;

                    memcpy(&w, &sc[i], 4);
                    CHECK(w == 0xffffffffu, "scores wrote past n: hd=%u s0=%u n=%u", hd, s0, n);
                }
            }
    }
}

static void test_f16(void)
{
    static const uint32_t hds[] = { 32, 64, 128, 256 };
    static float q[256], kt[256 * ENG_KV_BLOCK], sa[ENG_KV_BLOCK], sb[ENG_KV_BLOCK];
    static float p[ENG_KV_BLOCK], oa[256], ob[256];
    static uint16_t kh[256 * ENG_KV_BLOCK];

    for (unsigned h = 0; h < sizeof(hds) / sizeof(hds[0]); h++) {
        uint32_t hd = hds[h];

        if (!eng_attn_fast(hd))
            continue;
        for (uint32_t d = 0; d < hd; d++)
            q[d] = frand(-2.0f, 2.0f);
        for (uint32_t i = 0; i < hd * ENG_KV_BLOCK; i++) {
            kh[i] = eng_f32_to_f16(frand(-3.0f, 3.0f));
            kt[i] = eng_f16_to_f32(kh[i]);
        }
        for (uint32_t i = 0; i < ENG_KV_BLOCK; i++)
            p[i] = frand(0.0f, 1.0f);
        for (uint32_t s0 = 0; s0 < ENG_KV_BLOCK; s0++)
            for (uint32_t n = 1; s0 + n <= ENG_KV_BLOCK; n++) {
                eng_attn_avx512_scores(sa, q, kt, s0, n, hd, 0.125f);
                eng_attn_avx512_scores_f16(sb, q, kh, s0, n, hd, 0.125f);
                CHECK(!memcmp(sa, sb, n * sizeof(float)), "f16 scores hd=%u s0=%u n=%u", hd,
                      s0, n);
                /* values: position-major rows of hd from row s0 (kh / kt reused) */
                for (uint32_t d = 0; d < hd; d++)
                    oa[d] = ob[d] = frand(-1.0f, 1.0f);
                eng_attn_avx512_accum(oa, p, kt + (size_t)s0 * hd, n, hd);
                eng_attn_avx512_accum_f16(ob, p, kh + (size_t)s0 * hd, n, hd);
                CHECK(!memcmp(oa, ob, hd * sizeof(float)), "f16 accum hd=%u s0=%u n=%u", hd, s0,
                      n);
                memset(ob, 0, sizeof(ob));
                eng_attn_avx512_accum_f16(ob, p, kh + (size_t)s0 * hd, n, hd);
                for (uint32_t d = 0; d < hd; d++) {
                    double ref = 0, mag = 0;

                    for (uint32_t i = 0; i < n; i++) {
                        ref += (double)p[i] * kt[(size_t)(s0 + i) * hd + d];
                        mag += fabs((double)p[i] * kt[(size_t)(s0 + i) * hd + d]);
                    }
                    CHECK(fabs(ob[d] - ref) <= 1e-6 * mag + 1e-30, "f16 accum hd=%u n=%u d=%u",
                          hd, n, d);
                }
            }
    }
}

int main(void)
{
    if (!eng_vmath_fast()) {
        printf("skip: no AVX-512 on this CPU\n");
        return 77;
    }
    test_exp();
    test_gated();
    test_softmax();
    test_argmax();
    test_scores();
    test_f16();
    if (fails)
        fprintf(stderr, "%d failures\n", fails);
    return fails ? 1 : 0;
}
