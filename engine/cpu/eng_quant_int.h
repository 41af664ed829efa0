/*
 * eng_quant_int.h - internals of eng_quant: block structs (ggml's layouts,
 * see eng_quant.h), the per-type kernel table and the per-ISA tables.
 *
 * One table per implementation (scalar, avx2, avx512); eng_quant.c builds
 * the live table once from eng_cpu_features(): for every weight type the
 * best implementation the CPU runs that has a kernel for it. The SIMD
 * tables may leave a type NULL (then the next slower one is used).
 * Never call an avx2 / avx512 table without the matching CPUID bit.
 */
#ifndef ENG_QUANT_INT_H
#define ENG_QUANT_INT_H

#include <stddef.h>
#include <stdint.h>

#include "eng_quant.h"

#define ENG_QK 32      /* elements per block of the 32-block types */
#define ENG_QK_K 256   /* elements per K-quant super-block */
#define ENG_K_SCALE_SIZE 12
#define ENG_QUANT_NR 4 /* weight rows per dot_rows call */

/* Bytes of one packed panel block (eng_pack: ENG_PACK_ROWS rows x one
 * block of the type); 0 for a type eng_pack does not pack. */
static inline size_t eng_pack_pblock_bytes(uint32_t t)
{
    switch (t) {
    case ENG_TYPE_Q4_0: return ENG_PACK_ROWS * 18;
    case ENG_TYPE_Q4_1: return ENG_PACK_ROWS * 20;
    case ENG_TYPE_Q5_0: return ENG_PACK_ROWS * 22;
    case ENG_TYPE_Q5_1: return ENG_PACK_ROWS * 24;
    case ENG_TYPE_Q8_0: return ENG_PACK_ROWS * 34;
    case ENG_TYPE_Q4_K: return ENG_PACK_ROWS * 148;
    case ENG_TYPE_Q6_K: return ENG_PACK_ROWS * 210;
    default: return 0;
    }
}

struct eng_bq4_0 { uint16_t d; uint8_t qs[ENG_QK / 2]; };
struct eng_bq4_1 { uint16_t d, m; uint8_t qs[ENG_QK / 2]; };
struct eng_bq5_0 { uint16_t d; uint8_t qh[4]; uint8_t qs[ENG_QK / 2]; };
struct eng_bq5_1 { uint16_t d, m; uint8_t qh[4]; uint8_t qs[ENG_QK / 2]; };
struct eng_bq8_0 { uint16_t d; int8_t qs[ENG_QK]; };
struct eng_bq8_1 { float d, s; int8_t qs[ENG_QK]; };
struct eng_bq4_k {
    uint16_t d, dmin;
    uint8_t scales[ENG_K_SCALE_SIZE];
    uint8_t qs[ENG_QK_K / 2];
};
struct eng_bq5_k {
    uint16_t d, dmin;
    uint8_t scales[ENG_K_SCALE_SIZE];
    uint8_t qh[ENG_QK_K / 8];
    uint8_t qs[ENG_QK_K / 2];
};
struct eng_bq6_k {
    uint8_t ql[ENG_QK_K / 2];
    uint8_t qh[ENG_QK_K / 4];
    int8_t scales[ENG_QK_K / 16];
    uint16_t d;
};
struct eng_bq8_k { float d; int8_t qs[ENG_QK_K]; int16_t bsums[ENG_QK_K / 16]; };

_Static_assert(sizeof(struct eng_bq4_0) == 18, "q4_0 layout");
_Static_assert(sizeof(struct eng_bq4_1) == 20, "q4_1 layout");
_Static_assert(sizeof(struct eng_bq5_0) == 22, "q5_0 layout");
_Static_assert(sizeof(struct eng_bq5_1) == 24, "q5_1 layout");
_Static_assert(sizeof(struct eng_bq8_0) == 34, "q8_0 layout");
_Static_assert(sizeof(struct eng_bq8_1) == 40, "q8_1 layout");
_Static_assert(sizeof(struct eng_bq4_k) == 144, "q4_k layout");
_Static_assert(sizeof(struct eng_bq5_k) == 176, "q5_k layout");
_Static_assert(sizeof(struct eng_bq6_k) == 210, "q6_k layout");
_Static_assert(sizeof(struct eng_bq8_k) == 292, "q8_k layout");

/* One weight row . one activation row (eng_vec_dot_type), n elements. */
typedef float (*eng_vec_dot_fn)(int64_t n, const void *w, const void *x);
/* nr (1..ENG_QUANT_NR) weight rows, ws bytes apart, each . x: out[i]. */
typedef void (*eng_dot_rows_fn)(int64_t n, const void *w, size_t ws, int nr,
                                const void *x, float *out);

/* One weight row . nc (1..ENG_QUANT_NR) activation rows, xs bytes apart:
 * out[c]. Unpacks each weight block once for all nc activations, so it
 * is what the matmul uses when m >= ENG_QUANT_NR (prefill). */
typedef void (*eng_dot_cols_fn)(int64_t n, const void *w, const void *x, size_t xs,
                                int nc, float *out);

struct eng_quant_kern {
    const char *impl;          /* "scalar", "avx2", "avx512", "avx512vnni" */
    eng_vec_dot_fn vec_dot;    /* NULL: this impl has no kernel for the type */
    eng_dot_rows_fn dot_rows;  /* optional: NULL loops vec_dot */
    eng_dot_cols_fn dot_cols;  /* optional: NULL uses dot_rows / vec_dot */
};

/* Per-implementation tables, indexed by weight type. */
extern const struct eng_quant_kern eng_quant_ref_kern[ENG_TYPE_COUNT];
extern const struct eng_quant_kern eng_quant_avx2_kern[ENG_TYPE_COUNT];
extern const struct eng_quant_kern eng_quant_avx512_kern[ENG_TYPE_COUNT];

/* The kernel eng_quant would pick for wtype on a CPU with `features`
 * (ENG_CPU_* mask, see eng_cpu.h); NULL when wtype is unsupported. Tests
 * and benchmarks use it to run every implementation the host supports. */
const struct eng_quant_kern *eng_quant_kern_for(uint32_t wtype, unsigned features);

/* eng_matmul on an explicit kernel (tests, benchmarks). */
void eng_matmul_kern(const struct eng_quant_kern *kn, uint32_t wtype,
                     const void *w, size_t w_row_bytes, int64_t k, int64_t r0,
                     int64_t r1, const void *x, size_t x_row_bytes, int64_t m,
                     float *y, int64_t ldy);

/* Activation quantizers for q8_0 / q8_1 / q8_k with AVX2 (n a multiple
 * of the block), bit-identical to eng_quant_ref_quant, and for
 * ENG_PACK_ACT_32 (struct eng_bq8_p: the same bytes as q8_1 widened by
 * eng_pack_act_row, in one pass); -ENOTSUP for other types. Only with
 * ENG_CPU_AVX2. */
int eng_quant_avx2_act(uint32_t type, const float *src, void *dst, int64_t n);

/* Scalar reference pieces (eng_quant_ref.c). */
int eng_quant_ref_dequant(uint32_t type, const void *src, float *dst, int64_t n);
int eng_quant_ref_quant(uint32_t type, const float *src, void *dst, int64_t n);

/* q4_k / q5_k packed 6-bit scale and min of sub-block j (0..7). */
static inline void eng_k_scale_min(int j, const uint8_t *q, uint8_t *sc, uint8_t *mn)
{
    if (j < 4) {
        *sc = q[j] & 63;
        *mn = q[j + 4] & 63;
    } else {
        *sc = (uint8_t)((q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4));
        *mn = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

/* ---- the packed path (eng_pack*, see eng_quant.h) ---- */

/* Activation block for the packed 32-block kernels: q8_1's d, s and
 * codes, plus nsum = -sum(qs), which the kernels shift into the starting
 * value of the integer dot (-8, -16, -128 times the sum: the weights'
 * code offsets). */
struct eng_bq8_p { float d, s; int32_t nsum, pad; int8_t qs[ENG_QK]; };
_Static_assert(sizeof(struct eng_bq8_p) == 48, "q8_p layout");

/* Activation super-block for the packed K-quant kernels: q8_k's d and
 * codes; off6[j] = -32 * (sum of the 16 codes of group j) (q6_k's code
 * offset); bs32[j] = sum of the 32 codes of sub-block j (q4_k mins). */
struct eng_bq8_kp {
    float d;
    int32_t off6[ENG_QK_K / 16];
    int16_t bs32[ENG_QK_K / 32];
    int8_t qs[ENG_QK_K];
    uint8_t pad[12];
};
_Static_assert(sizeof(struct eng_bq8_kp) == 352, "q8_kp layout");

/* Packed-path activation format ids (eng_pack_act_type). */
#define ENG_PACK_ACT_32 0x100u
#define ENG_PACK_ACT_K 0x101u

/* AMX for the packed kernels (eng_pack_avx512.c): eng_pack_amx_enable asks
 * the kernel for the process's permission to use AMX tile state (Linux
 * arch_prctl ARCH_REQ_XCOMP_PERM), once, where the CPU has AMX-TILE and
 * AMX-INT8 and FAVO_CPU does not cap it (FAVO_CPU=avx512: no AMX). Called
 * while packing weights (context set-up, before a stage installs its
 * seccomp filter); the kernels never make the syscall themselves, they
 * only read eng_pack_amx_on(). 1 when AMX is on. */
int eng_pack_amx_enable(void);
int eng_pack_amx_on(void);

/* One panel of ENG_PACK_ROWS rows: y[c*ldy + i] for i < nvalid, c < m. */
void eng_pack_avx512_panels(uint32_t wtype, const uint8_t *wp, size_t panel_bytes,
                            int64_t nb, int64_t g0, int64_t g1, int64_t rows,
                            const uint8_t *x, size_t xs, int64_t m, float *y, int64_t ldy);

#endif /* ENG_QUANT_INT_H */
