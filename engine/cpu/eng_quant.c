/*
 * eng_quant.c - the public face of eng_quant.h: the live kernel table,
 * chosen once from eng_cpu_features(), and the matmul driver that walks
 * weight rows ENG_QUANT_NR at a time over every activation row.
 */
#include "eng_quant_int.h"

#include <errno.h>
#include <pthread.h>

#include "eng_cpu.h"
#include "favo_base.h"

static const struct eng_quant_kern *live[ENG_TYPE_COUNT];
static pthread_once_t live_once = PTHREAD_ONCE_INIT;

static bool weight_type(uint32_t t)
{
    return t < ENG_TYPE_COUNT && eng_quant_ref_kern[t].vec_dot;
}

const struct eng_quant_kern *eng_quant_kern_for(uint32_t wtype, unsigned features)
{
    if (!weight_type(wtype))
        return NULL;
    if ((features & ENG_CPU_AVX512) && (features & ENG_CPU_AVX512VNNI) &&
        eng_quant_avx512_kern[wtype].vec_dot)
        return &eng_quant_avx512_kern[wtype];
    if ((features & ENG_CPU_AVX2) && eng_quant_avx2_kern[wtype].vec_dot)
        return &eng_quant_avx2_kern[wtype];
    return &eng_quant_ref_kern[wtype];
}

static void live_init(void)
{
    unsigned f = eng_cpu_features();

    for (uint32_t t = 0; t < ENG_TYPE_COUNT; t++)
        live[t] = eng_quant_kern_for(t, f);
}

void eng_quant_init(void)
{
    pthread_once(&live_once, live_init);
}

static const struct eng_quant_kern *kern(uint32_t wtype)
{
    eng_quant_init();
    FAVO_ASSERT(wtype < ENG_TYPE_COUNT && live[wtype]); /* eng_quant_supported() */
    return live[wtype];
}

bool eng_quant_supported(uint32_t wtype)
{
    return weight_type(wtype);
}

int eng_dequant_row(uint32_t type, const void *src, float *dst, int64_t n)
{
    return eng_quant_ref_dequant(type, src, dst, n);
}

int eng_quant_row(uint32_t type, const float *src, void *dst, int64_t n)
{
    const struct eng_type_info *ti = eng_type_get(type);

    /* the activation types go through SIMD (same bytes as the reference) */
    if ((type == ENG_TYPE_Q8_0 || type == ENG_TYPE_Q8_1 || type == ENG_TYPE_Q8_K) &&
        n >= 0 && ti && n % ti->blck == 0 && (eng_cpu_features() & ENG_CPU_AVX2))
        return eng_quant_avx2_act(type, src, dst, n);
    return eng_quant_ref_quant(type, src, dst, n);
}

uint32_t eng_vec_dot_type(uint32_t wtype)
{
    switch (wtype) {
    case ENG_TYPE_F32:
    case ENG_TYPE_F16:
    case ENG_TYPE_BF16:
        return ENG_TYPE_F32;
    case ENG_TYPE_Q8_0:
        return ENG_TYPE_Q8_0;
    case ENG_TYPE_Q4_0:
    case ENG_TYPE_Q4_1:
    case ENG_TYPE_Q5_0:
    case ENG_TYPE_Q5_1:
        return ENG_TYPE_Q8_1;
    case ENG_TYPE_Q4_K:
    case ENG_TYPE_Q5_K:
    case ENG_TYPE_Q6_K:
        return ENG_TYPE_Q8_K;
    default:
        return ENG_TYPE_COUNT;
    }
}

size_t eng_quant_act_row_size(uint32_t wtype, int64_t k)
{
    uint32_t at = eng_vec_dot_type(wtype);

    if (at == ENG_TYPE_COUNT || k < 0)
        return 0;
    return eng_type_row_size(at, (uint64_t)k);
}

float eng_vec_dot(uint32_t wtype, int64_t n, const void *w, const void *x)
{
    return kern(wtype)->vec_dot(n, w, x);
}

void eng_matmul_kern(const struct eng_quant_kern *kn, uint32_t wtype,
                     const void *w, size_t w_row_bytes, int64_t k, int64_t r0,
                     int64_t r1, const void *x, size_t x_row_bytes, int64_t m,
                     float *y, int64_t ldy)
{
    const uint8_t *wb = w, *xb = x;
    float out[ENG_QUANT_NR];
    int64_t r, j;

    (void)wtype;
    /*
     * m >= ENG_QUANT_NR (prefill): weight row by weight row, each against
     * the activations ENG_QUANT_NR at a time, so a weight block is unpacked
     * once per four activations; the row stays in L1 and the activations
     * (m * x_row_bytes) in L2 while it is used. m < ENG_QUANT_NR (decode):
     * four weight rows at a time against each activation row, four
     * independent weight streams in flight.
     */
    if (kn->dot_cols && m >= ENG_QUANT_NR) {
        for (r = r0; r < r1; r++) {
            const uint8_t *wr = wb + (size_t)r * w_row_bytes;
            for (j = 0; j < m; j += ENG_QUANT_NR) {
                int nc = (int)FAVO_MIN((int64_t)ENG_QUANT_NR, m - j);
                kn->dot_cols(k, wr, xb + (size_t)j * x_row_bytes, x_row_bytes, nc, out);
                for (int c = 0; c < nc; c++)
                    y[(j + c) * ldy + r] = out[c];
            }
        }
        return;
    }
    for (r = r0; r < r1; r += ENG_QUANT_NR) {
        int nr = (int)FAVO_MIN((int64_t)ENG_QUANT_NR, r1 - r);
        const uint8_t *wr = wb + (size_t)r * w_row_bytes;
        for (j = 0; j < m; j++) {
            const uint8_t *xj = xb + (size_t)j * x_row_bytes;
            float *yj = y + j * ldy + r;
            if (kn->dot_rows) {
                kn->dot_rows(k, wr, w_row_bytes, nr, xj, out);
                for (int i = 0; i < nr; i++)
                    yj[i] = out[i];
            } else {
                for (int i = 0; i < nr; i++)
                    yj[i] = kn->vec_dot(k, wr + (size_t)i * w_row_bytes, xj);
            }
        }
    }
}

void eng_matmul(uint32_t wtype, const void *w, size_t w_row_bytes, int64_t k,
                int64_t r0, int64_t r1, const void *x, size_t x_row_bytes,
                int64_t m, float *y, int64_t ldy)
{
    eng_matmul_kern(kern(wtype), wtype, w, w_row_bytes, k, r0, r1, x,
                    x_row_bytes, m, y, ldy);
}

const char *eng_quant_impl(uint32_t wtype)
{
    if (!weight_type(wtype))
        return "none";
    return kern(wtype)->impl;
}
