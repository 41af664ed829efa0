/*
 * test-engine-quant.c - quantizers, dot products and matmul of every
 * weight type, every implementation this CPU runs (scalar, avx2, avx512),
 * on the same seeded inputs.
 *
 *  1. quantize -> dequantize round trip: RMSE / RMS(input) within a
 *     per-type bound (printed; the K-quant scale search is measured here).
 *  2. scalar vec_dot == dot of the dequantized rows (f64), normalized
 *     error <= 2e-6: checks the integer/offset algebra of the reference.
 *  3. every SIMD vec_dot and matmul vs the scalar reference: |a - b| <=
 *     tol * sum|w_i x_i| (same integer sums, only f32 order differs:
 *     tol = 2e-6 for the quantized types, 1e-6 for the float ones).
 *  4. matmul over odd row counts, r0/r1 sub-ranges, m = 1..33, ldy > rows;
 *     entries outside the range stay untouched.
 *  5. NaN / inf: -EDOM, the poisoned block dequantizes to NaN, other blocks
 *     stay finite; finite inputs never give non-finite outputs.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eng_cpu.h"
#include "eng_quant.h"
#include "eng_quant_int.h"
#include "t_util.h"

static const uint32_t wtypes[] = {
    ENG_TYPE_F32, ENG_TYPE_F16, ENG_TYPE_BF16, ENG_TYPE_Q4_0, ENG_TYPE_Q4_1,
    ENG_TYPE_Q5_0, ENG_TYPE_Q5_1, ENG_TYPE_Q8_0, ENG_TYPE_Q4_K, ENG_TYPE_Q5_K,
    ENG_TYPE_Q6_K,
};
#define N_WTYPES (sizeof(wtypes) / sizeof(wtypes[0]))

static float frand(uint64_t *s)
{
    return (float)((double)(t_rand(s) >> 11) / 9007199254740992.0);
}

/* roughly normal (sum of uniforms), with an occasional outlier the way
 * real weight rows have them */
static void fill(uint64_t *s, float *x, int64_t n, float scale)
{
    for (int64_t i = 0; i < n; i++) {
        float v = frand(s) + frand(s) + frand(s) + frand(s) - 2.0f;
        if ((t_rand(s) & 255) == 0)
            v *= 6;
        x[i] = v * scale;
    }
}

static void *xalloc(size_t n)
{
    void *p = aligned_alloc(64, (n + 63) / 64 * 64);
    if (!p)
        abort();
    memset(p, 0, (n + 63) / 64 * 64);
    return p;
}

/* ---- 1. round trip ---- */

struct rt_bound {
    uint32_t type;
    double rel_rmse;   /* RMSE / RMS(x) bound */
};

static const struct rt_bound rt_bounds[] = {
    { ENG_TYPE_F32, 0 },       { ENG_TYPE_F16, 5e-4 },   { ENG_TYPE_BF16, 4e-3 },
    { ENG_TYPE_Q8_0, 8e-3 },   { ENG_TYPE_Q8_1, 8e-3 },  { ENG_TYPE_Q8_K, 0.016 },
    { ENG_TYPE_Q4_0, 0.11 },   { ENG_TYPE_Q4_1, 0.09 },  { ENG_TYPE_Q5_0, 0.055 },
    { ENG_TYPE_Q5_1, 0.045 },  { ENG_TYPE_Q4_K, 0.09 },  { ENG_TYPE_Q5_K, 0.045 },
    { ENG_TYPE_Q6_K, 0.025 },
};

static void test_round_trip(void)
{
    const int64_t n = 256 * 64;
    uint64_t seed = 1;
    float *x = xalloc(4 * n), *y = xalloc(4 * n);
    void *q = xalloc(4 * n + 64);

    fill(&seed, x, n, 0.05f);
    for (size_t t = 0; t < sizeof(rt_bounds) / sizeof(rt_bounds[0]); t++) {
        uint32_t ty = rt_bounds[t].type;
        double se = 0, sx = 0;
        int rc = eng_quant_row(ty, x, q, n);
        T_CHECK(rc == 0, "quant %s rc %d", eng_type_get(ty)->name, rc);
        rc = eng_dequant_row(ty, q, y, n);
        T_CHECK(rc == 0, "dequant %s rc %d", eng_type_get(ty)->name, rc);
        for (int64_t i = 0; i < n; i++) {
            se += ((double)y[i] - x[i]) * ((double)y[i] - x[i]);
            sx += (double)x[i] * x[i];
        }
        double rel = sqrt(se / sx);
        printf("round trip %-5s rmse/rms %.5f (bound %.4f)\n", eng_type_get(ty)->name,
               rel, rt_bounds[t].rel_rmse);
        T_CHECK(rel <= rt_bounds[t].rel_rmse, "%s round trip error %.5f > %.5f",
              eng_type_get(ty)->name, rel, rt_bounds[t].rel_rmse);
    }
    /* constant and all-zero blocks quantize exactly-ish, never NaN */
    for (int64_t i = 0; i < 512; i++)
        x[i] = i < 256 ? 0.0f : 0.25f;
    for (size_t t = 0; t < sizeof(rt_bounds) / sizeof(rt_bounds[0]); t++) {
        uint32_t ty = rt_bounds[t].type;
        T_CHECK(eng_quant_row(ty, x, q, 512) == 0, "quant const %s", eng_type_get(ty)->name);
        eng_dequant_row(ty, q, y, 512);
        for (int64_t i = 0; i < 512; i++)
            if (fabsf(y[i] - x[i]) > 0.25f * 0.02f || !isfinite(y[i])) {
                T_CHECK(0, "%s constant block: el %lld = %g, want %g", eng_type_get(ty)->name,
                      (long long)i, y[i], x[i]);
                break;
            }
    }
    /* tiny (subnormal-scale) and large values: finite codes, no NaN from
     * 0 * (1/subnormal), errors relative to the block's magnitude */
    static const float mags[] = { 1e-39f, 1e-30f, 1e4f };
    for (size_t mi = 0; mi < sizeof(mags) / sizeof(mags[0]); mi++) {
        fill(&seed, x, 512, mags[mi]);
        for (int64_t i = 0; i < 512; i += 7)
            x[i] = 0.0f;
        for (size_t t = 0; t < sizeof(rt_bounds) / sizeof(rt_bounds[0]); t++) {
            uint32_t ty = rt_bounds[t].type;
            T_CHECK(eng_quant_row(ty, x, q, 512) == 0, "quant %s at %g", eng_type_get(ty)->name, mags[mi]);
            eng_dequant_row(ty, q, y, 512);
            for (int64_t i = 0; i < 512; i++)
                if (!isfinite(y[i]) || fabsf(y[i] - x[i]) > 12 * mags[mi]) {
                    T_CHECK(0, "%s at magnitude %g: el %lld = %g, want %g", eng_type_get(ty)->name,
                          mags[mi], (long long)i, y[i], x[i]);
                    break;
                }
        }
    }
    T_CHECK(eng_quant_row(ENG_TYPE_Q2_K, x, q, 256) == -EINVAL, "q2_k has no quantizer");
    T_CHECK(eng_quant_row(ENG_TYPE_Q4_0, x, q, 33) == -EINVAL, "partial block");
    free(x);
    free(y);
    free(q);
}

/* ---- 2-4. dots and matmul ---- */

static double dot_abs_dequant(uint32_t wt, const void *w, const void *xq, int64_t k,
                              double *exact)
{
    float *a = xalloc(4 * k), *b = xalloc(4 * k);
    double s = 0, e = 0;

    eng_dequant_row(wt, w, a, k);
    eng_dequant_row(eng_vec_dot_type(wt), xq, b, k);
    for (int64_t i = 0; i < k; i++) {
        s += fabs((double)a[i] * b[i]);
        e += (double)a[i] * b[i];
    }
    free(a);
    free(b);
    *exact = e;
    return s;
}

struct impl {
    const char *name;
    unsigned mask;
};

static void test_dots(const struct impl *impls, int nimpl)
{
    /* k per type: an odd block count for the 32-block types and a ragged
     * tail for the float ones exercise every kernel's remainder path */
    const int64_t kmax = 1063, rows = 37, ldy = 41, mmax = 33;
    uint64_t seed = 42;
    float *wf = xalloc(4 * kmax * rows), *xf = xalloc(4 * kmax * mmax);
    float *y = xalloc(4 * ldy * mmax), *yref = xalloc(4 * ldy * mmax);
    double *mag = xalloc(8 * rows * mmax);

    fill(&seed, wf, kmax * rows, 0.05f);
    fill(&seed, xf, kmax * mmax, 1.0f);
    for (size_t t = 0; t < N_WTYPES; t++) {
        uint32_t wt = wtypes[t], at = eng_vec_dot_type(wt);
        uint32_t blck = eng_type_get(wt)->blck;
        int64_t k = blck == 1 ? kmax : blck == ENG_QK ? 33 * ENG_QK : 4 * ENG_QK_K;
        size_t wrb = eng_type_row_size(wt, k), xrb = eng_quant_act_row_size(wt, k);
        uint8_t *w = xalloc(wrb * rows), *xq = xalloc(xrb * mmax);
        const struct eng_quant_kern *ref = eng_quant_kern_for(wt, 0);
        double tol = wt == ENG_TYPE_F32 || wt == ENG_TYPE_F16 || wt == ENG_TYPE_BF16 ? 1e-6 : 2e-6;
        double worst = 0;

        T_CHECK(at != ENG_TYPE_COUNT && xrb == eng_type_row_size(at, k), "act type of %u", wt);
        T_CHECK(ref && !strcmp(ref->impl, "scalar"), "scalar kernel for %u", wt);
        for (int64_t r = 0; r < rows; r++)
            eng_quant_row(wt, wf + r * k, w + r * wrb, k);
        for (int64_t j = 0; j < mmax; j++)
            eng_quant_row(at, xf + j * k, xq + j * xrb, k);

        /* activation quantization costs little accuracy: scalar dot vs the
         * dequantized weights . the f32 activations, normalized by
         * sum |w x|; a q8 activation (step amax/127) stays within 0.3% */
        {
            float *wd = xalloc(4 * k);
            double worst_act = 0, sq = 0;
            for (int64_t r = 0; r < rows; r++) {
                int64_t j = r % mmax;
                double e = 0, a = 0;
                eng_dequant_row(wt, w + r * wrb, wd, k);
                for (int64_t i = 0; i < k; i++) {
                    e += (double)wd[i] * xf[j * k + i];
                    a += fabs((double)wd[i] * xf[j * k + i]);
                }
                double err = fabs(ref->vec_dot(k, w + r * wrb, xq + j * xrb) - e) / a;
                worst_act = err > worst_act ? err : worst_act;
                sq += err * err;
            }
            printf("act %-5s as %-4s dot vs f32 activations: rms %.2e worst %.2e (bound 3e-3)\n",
                   eng_type_get(wt)->name, eng_type_get(at)->name, sqrt(sq / rows), worst_act);
            T_CHECK(worst_act <= 3e-3, "%s activation quantization error %.3e", eng_type_get(wt)->name,
                  worst_act);
            free(wd);
        }

        /* 2. scalar reference vs dequantized f64 */
        for (int64_t r = 0; r < rows; r++)
            for (int64_t j = 0; j < mmax; j++) {
                double exact;
                double s = dot_abs_dequant(wt, w + r * wrb, xq + j * xrb, k, &exact);
                float got = ref->vec_dot(k, w + r * wrb, xq + j * xrb);
                mag[r * mmax + j] = s;
                if (fabs(got - exact) > 2e-6 * s + 1e-30)
                    T_CHECK(0, "%s scalar dot r%lld j%lld: %g vs dequant %g (|.| %g)",
                          eng_type_get(wt)->name, (long long)r, (long long)j, got, exact, s);
                yref[j * ldy + r] = got;
            }

        /* 3-4. every implementation */
        for (int im = 0; im < nimpl; im++) {
            const struct eng_quant_kern *kn = eng_quant_kern_for(wt, impls[im].mask);
            for (int64_t r = 0; r < rows; r++) {
                float got = kn->vec_dot(k, w + r * wrb, xq + (r % mmax) * xrb);
                float want = yref[(r % mmax) * ldy + r];
                double err = fabs((double)got - want) / mag[r * mmax + r % mmax];
                worst = err > worst ? err : worst;
                T_CHECK(isfinite(got) && err <= tol, "%s %s vec_dot row %lld: %.9g vs %.9g",
                      kn->impl, eng_type_get(wt)->name, (long long)r, got, want);
            }
            static const int64_t ranges[][2] = { { 0, 37 }, { 3, 22 }, { 5, 6 }, { 33, 37 }, { 0, 4 } };
            for (int64_t m = 1; m <= mmax; m += (m < 6 ? 1 : 9)) {
                for (size_t rr = 0; rr < sizeof(ranges) / sizeof(ranges[0]); rr++) {
                    int64_t r0 = ranges[rr][0], r1 = ranges[rr][1];
                    for (int64_t i = 0; i < ldy * mmax; i++)
                        y[i] = -12345.0f;
                    eng_matmul_kern(kn, wt, w, wrb, k, r0, r1, xq, xrb, m, y, ldy);
                    for (int64_t j = 0; j < mmax; j++)
                        for (int64_t r = 0; r < ldy; r++) {
                            float got = y[j * ldy + r];
                            if (j >= m || r < r0 || r >= r1) {
                                if (got != -12345.0f) {
                                    T_CHECK(0, "%s %s matmul wrote outside [%lld,%lld) m %lld: j%lld r%lld",
                                          kn->impl, eng_type_get(wt)->name, (long long)r0,
                                          (long long)r1, (long long)m, (long long)j, (long long)r);
                                    goto next_impl;
                                }
                                continue;
                            }
                            double err = fabs((double)got - yref[j * ldy + r]) / mag[r * mmax + j];
                            worst = err > worst ? err : worst;
                            if (!isfinite(got) || err > tol) {
                                T_CHECK(0, "%s %s matmul r%lld j%lld m%lld: %.9g vs %.9g", kn->impl,
                                      eng_type_get(wt)->name, (long long)r, (long long)j,
                                      (long long)m, got, yref[j * ldy + r]);
                                goto next_impl;
                            }
                        }
                }
            }
        next_impl:
            printf("dot %-5s %-10s worst normalized error vs scalar %.2e (bound %.0e)\n",
                   eng_type_get(wt)->name, kn->impl, worst, tol);
        }
        /* the public entry points agree with the live kernel */
        float pub = eng_vec_dot(wt, k, w, xq);
        T_CHECK(fabs((double)pub - yref[0]) <= tol * mag[0], "eng_vec_dot %s", eng_type_get(wt)->name);
        free(w);
        free(xq);
    }
    free(wf);
    free(xf);
    free(y);
    free(yref);
    free(mag);
}

/* ---- 5. non-finite input ---- */

static void test_nonfinite(const struct impl *impls, int nimpl)
{
    const int64_t k = 512;
    uint64_t seed = 7;
    float *x = xalloc(4 * k), *y = xalloc(4 * k);
    uint8_t *q = xalloc(4 * k + 64), *w = xalloc(4 * k + 64);
    static const uint32_t qt[] = { ENG_TYPE_Q4_0, ENG_TYPE_Q4_1, ENG_TYPE_Q5_0, ENG_TYPE_Q5_1,
                                   ENG_TYPE_Q8_0, ENG_TYPE_Q8_1, ENG_TYPE_Q4_K, ENG_TYPE_Q5_K,
                                   ENG_TYPE_Q6_K, ENG_TYPE_Q8_K };

    for (size_t t = 0; t < sizeof(qt) / sizeof(qt[0]); t++) {
        uint32_t ty = qt[t], blck = eng_type_get(ty)->blck;
        for (int v = 0; v < 2; v++) {
            fill(&seed, x, k, 1.0f);
            x[blck + 3] = v ? INFINITY : NAN;   /* poisons block 1 only */
            T_CHECK(eng_quant_row(ty, x, q, k) == -EDOM, "%s non-finite not reported",
                  eng_type_get(ty)->name);
            eng_dequant_row(ty, q, y, k);
            int nan_in = 0, nan_out = 0;
            for (int64_t i = 0; i < k; i++) {
                if (i >= blck && i < 2 * blck)
                    nan_in += isnan(y[i]) != 0;
                else
                    nan_out += !isfinite(y[i]);
            }
            T_CHECK(nan_in == (int)blck && nan_out == 0, "%s poisoned block: %d NaN inside, %d bad outside",
                  eng_type_get(ty)->name, nan_in, nan_out);
        }
    }
    /* a poisoned activation poisons the dot of every implementation */
    for (size_t t = 0; t < N_WTYPES; t++) {
        uint32_t wt = wtypes[t], at = eng_vec_dot_type(wt);
        fill(&seed, x, k, 0.05f);
        eng_quant_row(wt, x, w, k);
        fill(&seed, x, k, 1.0f);
        x[100] = NAN;
        eng_quant_row(at, x, q, k);
        for (int im = 0; im < nimpl; im++) {
            const struct eng_quant_kern *kn = eng_quant_kern_for(wt, impls[im].mask);
            float d = kn->vec_dot(k, w, q);
            T_CHECK(isnan(d), "%s %s: NaN activation gave %g", kn->impl, eng_type_get(wt)->name, d);
        }
    }
    free(x);
    free(y);
    free(q);
    free(w);
}

/* ---- 6. the SIMD activation quantizers write the reference's bytes ---- */

static void test_act_quant_exact(void)
{
    const int64_t n = 1024;
    uint64_t seed = 99;
    float *x = xalloc(4 * n);
    uint8_t *a = xalloc(2 * n), *b = xalloc(2 * n);
    static const uint32_t at[] = { ENG_TYPE_Q8_0, ENG_TYPE_Q8_1, ENG_TYPE_Q8_K };

    for (int v = 0; v < 5; v++) {
        fill(&seed, x, n, v == 3 ? 1e-39f : 1.0f);
        if (v == 1)   /* exact halves: amax 127 makes id 1, so x*id ties */
            for (int64_t i = 0; i < n; i++)
                x[i] = (i % 32 == 0) ? 127.0f : (float)((int)(t_rand(&seed) % 255) - 127) + 0.5f;
        if (v == 2)   /* zeros, a constant block, and a -0 */
            for (int64_t i = 0; i < 512; i++)
                x[i] = i < 256 ? (i == 7 ? -0.0f : 0.0f) : 3.0f;
        if (v == 4) { /* a NaN and an inf block among finite ones */
            x[40] = NAN;
            x[700] = -INFINITY;
        }
        for (size_t t = 0; t < sizeof(at) / sizeof(at[0]); t++) {
            size_t bytes = eng_type_row_size(at[t], n);
            memset(a, 0x55, bytes);
            memset(b, 0xaa, bytes);
            int ra = eng_quant_row(at[t], x, a, n);          /* SIMD where the CPU has it */
            int rb = eng_quant_ref_quant(at[t], x, b, n);    /* reference */
            T_CHECK(ra == rb && !memcmp(a, b, bytes), "%s activation quantizer differs from the "
                  "reference (case %d, rc %d/%d)", eng_type_get(at[t])->name, v, ra, rb);
        }
    }
    free(x);
    free(a);
    free(b);
}

static void test_api(void)
{
    unsigned f = eng_cpu_features();
    const char *want = (f & ENG_CPU_AVX512) ? "avx512" : (f & ENG_CPU_AVX2) ? "avx2" : "scalar";

    for (size_t t = 0; t < N_WTYPES; t++) {
        const char *impl = eng_quant_impl(wtypes[t]);
        T_CHECK(eng_quant_supported(wtypes[t]), "supported %u", wtypes[t]);
        printf("impl %-5s %s\n", eng_type_get(wtypes[t])->name, impl);
        /* the best the CPU runs, or a slower one where no kernel exists */
        T_CHECK(!strncmp(impl, want, strlen(want)) || !strcmp(impl, "avx2") || !strcmp(impl, "scalar"),
              "impl %s on a %s CPU", impl, want);
    }
    T_CHECK(!eng_quant_supported(ENG_TYPE_Q2_K) && !eng_quant_supported(ENG_TYPE_COUNT) &&
          !eng_quant_supported(ENG_TYPE_Q8_K), "unsupported weight types");
    T_CHECK(!strcmp(eng_quant_impl(ENG_TYPE_Q2_K), "none"), "impl of unsupported");
    T_CHECK(eng_vec_dot_type(ENG_TYPE_Q4_1) == ENG_TYPE_Q8_1 &&
          eng_vec_dot_type(ENG_TYPE_Q8_0) == ENG_TYPE_Q8_0 &&
          eng_vec_dot_type(ENG_TYPE_Q6_K) == ENG_TYPE_Q8_K &&
          eng_vec_dot_type(ENG_TYPE_F16) == ENG_TYPE_F32 &&
          eng_vec_dot_type(ENG_TYPE_Q2_K) == ENG_TYPE_COUNT, "vec_dot types");
    T_CHECK(eng_quant_act_row_size(ENG_TYPE_Q4_K, 512) == 2 * 292 &&
          eng_quant_act_row_size(ENG_TYPE_Q2_K, 512) == 0, "act row size");
}

int main(void)
{
    unsigned f = eng_cpu_features();
    struct impl impls[3] = { { "scalar", 0 } };
    int nimpl = 1;

    if (f & ENG_CPU_AVX2)
        impls[nimpl++] = (struct impl){ "avx2", ENG_CPU_AVX2 };
    if (f & ENG_CPU_AVX512)
        impls[nimpl++] = (struct impl){ "avx512", f };
    printf("testing %d implementation(s)%s\n", nimpl,
           nimpl < 3 ? " (this CPU or FAVO_CPU limits the SIMD paths)" : "");
    test_api();
    test_round_trip();
    test_dots(impls, nimpl);
    test_nonfinite(impls, nimpl);
    test_act_quant_exact();
    printf("%s (%d failure(s))\n", t_failures ? "FAIL" : "PASS", t_failures);
    return t_failures ? 1 : 0;
}
