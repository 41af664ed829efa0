/*
 * eng_ops_avx2.c - AVX2/FMA versions of the float operations (eng_ops.h),
 * compiled with -mavx2 -mfma; reached only through eng_ops_get() after a
 * CPUID check.
 */
#include "eng_ops.h"

#include "eng_cpu.h"

#include <immintrin.h>
#include <math.h>

static float hsum8(__m256 v)
{
    /* Same order as the scalar reference: (0+4)+(1+5) + (2+6)+(3+7). */
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    float t[4];

    _mm_storeu_ps(t, s);
    return (t[0] + t[1]) + (t[2] + t[3]);
}

static float dot_avx2(const float *a, const float *b, uint32_t n)
{
    __m256 acc = _mm256_setzero_ps();
    uint32_t i = 0;
    float s;

    for (; i + 8 <= n; i += 8)
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
    s = hsum8(acc);
    for (; i < n; i++)
        s += a[i] * b[i];
    return s;
}

static void axpy_avx2(float *y, float a, const float *x, uint32_t n)
{
    __m256 va = _mm256_set1_ps(a);
    uint32_t i = 0;

    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i),
                                                _mm256_loadu_ps(y + i)));
    for (; i < n; i++)
        y[i] += a * x[i];
}

static void rmsnorm_avx2(float *y, const float *x, const float *w, uint32_t n, float eps)
{
    double ss = 0;
    float scale;
    uint32_t i = 0;
    __m256 vs;

    for (uint32_t j = 0; j < n; j++)
        ss += (double)x[j] * x[j];
    scale = (float)(1.0 / sqrt(ss / n + eps));
    vs = _mm256_set1_ps(scale);
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + i), vs);

        if (w)
            v = _mm256_mul_ps(v, _mm256_loadu_ps(w + i));
        _mm256_storeu_ps(y + i, v);
    }
    for (; i < n; i++)
        y[i] = x[i] * scale * (w ? w[i] : 1.0f);
}

static const struct eng_ops ops_avx2 = {
    .name = "avx2", .dot = dot_avx2, .axpy = axpy_avx2, .rmsnorm = rmsnorm_avx2,
};

const struct eng_ops *eng_ops_avx2(void)
{
    return (eng_cpu_features() & ENG_CPU_AVX2) ? &ops_avx2 : NULL;
}
