/*
 * eng_ops.c - scalar reference float operations (see eng_ops.h).
 *
 * The dot product sums in 8 interleaved partial sums, the same lane order
 * the AVX2 version uses, so both give close results and neither depends on
 * where in a batch a row sits.
 */
#include "eng_ops.h"

#include "eng_cpu.h"

#include <math.h>
#include <stddef.h>

static float dot_scalar(const float *a, const float *b, uint32_t n)
{
    float acc[8] = { 0 };
    uint32_t i = 0;
    float s;

    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++)
            acc[l] += a[i + l] * b[i + l];
    s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (; i < n; i++)
        s += a[i] * b[i];
    return s;
}

static void axpy_scalar(float *y, float a, const float *x, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        y[i] += a * x[i];
}

static void rmsnorm_scalar(float *y, const float *x, const float *w, uint32_t n, float eps)
{
    double ss = 0;
    float scale;

    for (uint32_t i = 0; i < n; i++)
        ss += (double)x[i] * x[i];
    scale = (float)(1.0 / sqrt(ss / n + eps));
    if (w)
        for (uint32_t i = 0; i < n; i++)
            y[i] = x[i] * scale * w[i];
    else
        for (uint32_t i = 0; i < n; i++)
            y[i] = x[i] * scale;
}

static const struct eng_ops ops_scalar = {
    .name = "scalar", .dot = dot_scalar, .axpy = axpy_scalar, .rmsnorm = rmsnorm_scalar,
};

const struct eng_ops *eng_ops_scalar(void)
{
    return &ops_scalar;
}

const struct eng_ops *eng_ops_get(void)
{
    static const struct eng_ops *chosen;

    if (!chosen) {
        const struct eng_ops *o = NULL;

        if (eng_cpu_features() & ENG_CPU_AVX2)
            o = eng_ops_avx2();
        /* benign race: every thread computes the same pointer */
        __atomic_store_n(&chosen, o ? o : &ops_scalar, __ATOMIC_RELEASE);
    }
    return __atomic_load_n(&chosen, __ATOMIC_ACQUIRE);
}

int eng_attn_fast(uint32_t hd)
{
    return (eng_cpu_features() & ENG_CPU_AVX512) &&
           (hd == 32 || hd == 64 || hd == 128 || hd == 256);
}

int eng_vmath_fast(void)
{
    return (eng_cpu_features() & ENG_CPU_AVX512) != 0;
}

void eng_ops_silu_mul(float *y, const float *g, const float *u, uint32_t n)
{
    if (eng_vmath_fast())
        eng_vmath_avx512_silu_mul(y, g, u, n);
    else
        eng_ops_silu_mul_scalar(y, g, u, n);
}

void eng_ops_gelu_mul(float *y, const float *g, const float *u, uint32_t n)
{
    if (eng_vmath_fast())
        eng_vmath_avx512_gelu_mul(y, g, u, n);
    else
        eng_ops_gelu_mul_scalar(y, g, u, n);
}

uint32_t eng_ops_argmax_scalar(const float *x, uint32_t n)
{
    float m = -INFINITY;
    uint32_t best = 0;

    for (uint32_t i = 0; i < n; i++)
        if (x[i] > m) {
            m = x[i];
            best = i;
        }
    return best;
}

uint32_t eng_ops_argmax(const float *x, uint32_t n)
{
    return eng_vmath_fast() ? eng_vmath_avx512_argmax(x, n) : eng_ops_argmax_scalar(x, n);
}

void eng_ops_silu_mul_scalar(float *y, const float *g, const float *u, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        y[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

void eng_ops_gelu_mul_scalar(float *y, const float *g, const float *u, uint32_t n)
{
    const float c = 0.7978845608028654f; /* sqrt(2/pi) */

    for (uint32_t i = 0; i < n; i++) {
        float x = g[i];

        y[i] = 0.5f * x * (1.0f + tanhf(c * (x + 0.044715f * x * x * x))) * u[i];
    }
}

void eng_ops_rope(float *x, const float *cs, const float *sn, uint32_t rope_dim, int neox)
{
    uint32_t half = rope_dim / 2;

    if (neox) {
        for (uint32_t i = 0; i < half; i++) {
            float a = x[i], b = x[i + half];

            x[i] = a * cs[i] - b * sn[i];
            x[i + half] = a * sn[i] + b * cs[i];
        }
    } else {
        for (uint32_t i = 0; i < half; i++) {
            float a = x[2 * i], b = x[2 * i + 1];

            x[2 * i] = a * cs[i] - b * sn[i];
            x[2 * i + 1] = a * sn[i] + b * cs[i];
        }
    }
}
