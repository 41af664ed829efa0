/*
 * eng_quant.h - weight types: quantize, dequantize, dot products and the
 * matmul the CPU forward pass runs, with scalar reference kernels and
 * AVX2 / AVX-512 (VNNI) kernels chosen once at run time by CPUID.
 *
 * Types (block layouts byte-for-byte as ggml's, so GGUF tensors are used
 * straight from the mmap):
 *
 *   type  el/blk bytes  layout                                  dot act.
 *   f32      1     4    float                                   f32
 *   f16      1     2    IEEE half                               f32
 *   bf16     1     2    bfloat16                                f32
 *   q4_0    32    18    f16 d; u8 qs[16] (lo nibble el i,       q8_1
 *                       hi nibble el i+16); x = d*(q-8)
 *   q4_1    32    20    f16 d, m; u8 qs[16]; x = d*q + m         q8_1
 *   q5_0    32    22    f16 d; u8 qh[4] (bit i = 5th bit of     q8_1
 *                       el i); u8 qs[16]; x = d*(q-16)
 *   q5_1    32    24    f16 d, m; qh[4]; qs[16]; x = d*q + m     q8_1
 *   q8_0    32    34    f16 d; i8 qs[32]; x = d*q                q8_0
 *   q8_1    32    40    f32 d, s = d*sum(qs); i8 qs[32]         (activation)
 *   q4_k   256   144    f16 d, dmin; u8 scales[12] (8 6-bit     q8_k
 *                       scales + 8 6-bit mins); u8 qs[128];
 *                       x = d*sc*q - dmin*m per 32 elements
 *   q5_k   256   176    as q4_k plus u8 qh[32] (5th bits)       q8_k
 *   q6_k   256   210    u8 ql[128], qh[64]; i8 scales[16];      q8_k
 *                       f16 d; x = d*sc*(q-32) per 16 elements
 *   q8_k   256   292    f32 d; i8 qs[256]; i16 bsums[16]        (activation)
 *                       (bsums: sum of each 16 qs)
 *
 * How the forward pass uses it (per matmul W[rows][k] . X[m][k]):
 *
 *   at    = eng_vec_dot_type(W->type);            once, at model load
 *   for j in 0..m: eng_quant_row(at, X[j], xq + j*x_row_bytes, k);
 *           (x_row_bytes = eng_type_row_size(at, k))
 *   each thread: eng_matmul(W->type, W->data, w_row_bytes, k, r0, r1,
 *                           xq, x_row_bytes, m, y, ldy);
 *
 * Quantized weights meet integer activations (maddubs / dpbusd on int8),
 * the way llama.cpp does it: q8_0 for q8_0 weights, q8_1 (which carries
 * the block sum, so the weight offsets -8 / -16 / +m cost nothing) for
 * q4_0 q4_1 q5_0 q5_1, q8_k for the K-quants. Float weights use f32
 * activations. Callers must always ask eng_vec_dot_type(), never assume.
 *
 * Contract:
 *  1. n / k are element counts and must be a multiple of the type's block
 *     (eng_types.h); rows are not required to be aligned.
 *  2. eng_dequant_row is the scalar reference and matches the gguf Python
 *     package's dequantizers bit for bit, every type (same f32 operations
 *     in the same order; tests/test-engine-dequant.c on committed fixtures,
 *     tests/test-engine-dequant-live.py on fresh blocks each run).
 *  3. Every SIMD kernel computes the same integer block sums as the scalar
 *     reference; they differ only in the order of the f32 accumulation.
 *     Bound, tested per type and implementation in tests/test-engine-quant.c:
 *     |simd - scalar| <= 2e-6 * sum_i |w_i x_i| (1e-6 for f32/f16/bf16).
 *     Implementations: "avx512vnni" needs AVX-512 F/BW/VL/DQ + VNNI (CPUs
 *     with AVX-512 but no VNNI use "avx2"); FAVO_CPU=scalar|avx2 caps it.
 *  4. Non-finite input to eng_quant_row: every block holding a NaN or inf
 *     gets a NaN scale (so it dequantizes and dots to NaN, a poisoned
 *     activation is never silently plausible), and the call returns
 *     -EDOM after writing the whole row. f32/f16/bf16 just convert.
 *  5. All functions are pure and thread-safe; no allocation, no logging,
 *     no syscalls (invariant 8, quiet hot path). The kernel table is
 *     chosen on first use (pthread_once) or by eng_quant_init().
 *
 * Errors: -EINVAL for a type without that operation or n not a whole
 * number of blocks. eng_vec_dot / eng_matmul are hot-path calls with no
 * return code: an unsupported wtype is a programming error and aborts
 * (FAVO_ASSERT) - check eng_quant_supported() at model load.
 */
#ifndef ENG_QUANT_H
#define ENG_QUANT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "eng_types.h"

/* Pick kernels now (optional; the first call does it anyway). */
void eng_quant_init(void);

/* True when eng_vec_dot / eng_matmul handle weights of type wtype:
 * f32 f16 bf16 q4_0 q4_1 q5_0 q5_1 q8_0 q4_k q5_k q6_k. */
bool eng_quant_supported(uint32_t wtype);

/* n elements of src (type `type`) to f32. 0, or -EINVAL (unknown type,
 * n not a multiple of the block). Scalar reference, exact. */
int eng_dequant_row(uint32_t type, const void *src, float *dst, int64_t n);

/* n f32 values to `type`: f32 f16 bf16 q4_0 q4_1 q5_0 q5_1 q8_0 q8_1
 * q4_k q5_k q6_k q8_k. 0, -EINVAL (no quantizer / bad n), -EDOM (input
 * not finite; row still written, see contract 4). Round-to-nearest
 * reference quantizers; q4_k/q5_k/q6_k search their block scales
 * (RMSE / RMS of a normal-ish row: q4_k 0.076, q5_k 0.038, q6_k 0.020).
 * The activation types q8_0 / q8_1 / q8_k run in AVX2 when the CPU has
 * it (~8x faster) and write exactly the reference's bytes. */
int eng_quant_row(uint32_t type, const float *src, void *dst, int64_t n);

/* Activation type that weight type wtype is dotted with (ENG_TYPE_F32
 * for float weights); ENG_TYPE_COUNT when wtype is not supported. */
uint32_t eng_vec_dot_type(uint32_t wtype);

/* Bytes of one activation row of k elements for wtype
 * (= eng_type_row_size(eng_vec_dot_type(wtype), k)); 0 if unsupported. */
size_t eng_quant_act_row_size(uint32_t wtype, int64_t k);

/* One weight row . one activation row already in eng_vec_dot_type(wtype),
 * n elements. */
float eng_vec_dot(uint32_t wtype, int64_t n, const void *w, const void *x);

/*
 * The matmul the forward pass calls, per thread on a row range:
 *   y[j*ldy + r] = dot(W row r, X row j)  for r in [r0,r1), j in [0,m)
 * W rows w_row_bytes apart (row 0 at w), X rows (quantized to
 * eng_vec_dot_type(wtype)) x_row_bytes apart. m < 4 (decode): four weight
 * rows at a time per activation row (four weight streams in flight);
 * m >= 4 (prefill): each weight row against four activation rows at a
 * time, so a weight block is unpacked once per four activations.
 * Threads splitting [0,rows) into disjoint ranges write disjoint y.
 */
void eng_matmul(uint32_t wtype, const void *w, size_t w_row_bytes, int64_t k,
                int64_t r0, int64_t r1, const void *x, size_t x_row_bytes,
                int64_t m, float *y, int64_t ldy);

/* Which implementation eng_matmul / eng_vec_dot use for wtype:
 * "scalar", "avx2", "avx512", "avx512vnni"; "none" if unsupported. */
const char *eng_quant_impl(uint32_t wtype);

/*
 * Packed weights: the GEMM path (issue #4's batched decode and prefill).
 *
 * eng_pack rearranges a row-major matrix, once at context set-up, into
 * panels of ENG_PACK_ROWS (16) rows: for each block of k, the 16 rows'
 * scales side by side, then their codes interleaved four bytes at a time,
 *
 *   panel g, block b:  d[16] (f16) [m[16]] [5th bits] codes[step][row][4]
 *
 * so that one 512-bit register holds 4 consecutive codes of each of the
 * 16 rows and a VNNI dpbusd against one broadcast 4-byte group of an
 * activation row adds to all 16 dot products at once. A panel block is
 * unpacked once and dotted with up to ENG_PACK_COLS activation rows
 * (register-blocked 16 rows x ENG_PACK_COLS columns), so a decode step
 * streams each weight once for all its sequences. Sizes are the original
 * row size (32-block types) or within 3% of it (K-quants: scales stored
 * unpacked); rows are padded to a multiple of 16 with zero scales.
 *
 * Activations for the packed path have their own block formats
 * (eng_pack_act_row; eng_quant_int.h), carrying the integer block sums
 * that fold the weights' offsets (-8, -16, -128, -32) into the integer
 * dot product's starting value.
 *
 * Batch invariance (eng_step.h S1): each output is computed by the same
 * sequence of per-lane operations whatever the number of activation rows
 * m, the row range or the thread: exact integer block sums, then per
 * block (and per K-quant super-block) one f32 multiply and fused
 * multiply-adds in block order. Bound against the f64 value of the same
 * quantized operands: tests/test-engine-pack.c.
 *
 * Where the CPU has AMX-INT8, calls with 16 or more activation rows run whole
 * 16-row groups through AMX tiles (32-block types and q4_k) with the VNNI
 * kernel's bits; eng_pack asks the kernel for the tile permission once
 * (arch_prctl, before a stage's seccomp filter); FAVO_CPU=avx512 keeps
 * AMX off.
 *
 * Only on CPUs with AVX-512 VNNI (eng_pack_supported is false elsewhere,
 * and the caller keeps using eng_matmul on the row-major weights).
 */
#define ENG_PACK_ROWS 16
#define ENG_PACK_COLS 8

/* True when wtype has a packed kernel on this CPU (FAVO_CPU caps it). */
bool eng_pack_supported(uint32_t wtype);
/* Bytes of the packed form of a rows x k matrix; 0 if unsupported. */
size_t eng_pack_size(uint32_t wtype, int64_t k, int64_t rows);
/* Pack rows x k (row-major, w_row_bytes apart) into dst (eng_pack_size
 * bytes, any alignment). 0, or -EINVAL (type, k not whole blocks). */
int eng_pack(uint32_t wtype, const void *w, size_t w_row_bytes, int64_t k, int64_t rows,
             void *dst);
/* Activation format id for wtype's packed kernel (compare ids to know
 * whether two packed weights can share quantized activations). */
uint32_t eng_pack_act_type(uint32_t wtype);
/* Bytes of one packed-path activation row of k elements. */
size_t eng_pack_act_row_size(uint32_t wtype, int64_t k);
/* Quantize one activation row for wtype's packed kernel. 0, -EINVAL,
 * or -EDOM (non-finite input: the row's poisoned blocks get NaN scales). */
int eng_pack_act_row(uint32_t wtype, const float *src, void *dst, int64_t k);
/*
 * y[j*ldy + r] = dot(W row r, X row j) for r in [r0, r1), j in [0, m):
 * wp from eng_pack (rows x k), r0 a multiple of ENG_PACK_ROWS, r1 <=
 * rows; X rows from eng_pack_act_row, x_row_bytes apart.
 */
void eng_matmul_packed(uint32_t wtype, const void *wp, int64_t k, int64_t rows, int64_t r0,
                       int64_t r1, const void *x, size_t x_row_bytes, int64_t m, float *y,
                       int64_t ldy);

#endif /* ENG_QUANT_H */
