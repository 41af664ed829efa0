/*
 * eng_pack_avx512.c - the packed GEMM kernels (eng_quant.h "Packed
 * weights", layouts in eng_pack.c), AVX-512 BW + VNNI only.
 *
 * One call works on one panel of 16 rows and up to ENG_PACK_COLS
 * activation rows: per block it unpacks the 16 rows' codes into eight
 * 512-bit registers (4 codes of each row per 32-bit lane) once, then for
 * each activation row runs eight vpdpbusd against broadcast 4-byte
 * groups of the activation, so one instruction adds 64 products to 16
 * row sums. Weight codes are the unsigned operand (q8_0 stored as q+128),
 * activations the signed one; the codes' offsets enter as the integer
 * sum's starting value (nsum << 3, 4 or 7; q6_k: -32 * group sum).
 *
 * Per output lane the operations and their order depend only on the
 * block sequence, never on the number of columns in the call or on the
 * panel's position: batch invariance (eng_step.h S1) holds by design.
 */
#include "eng_quant_int.h"
#include "favo_base.h"

#include <errno.h>
#include <immintrin.h>
#include <pthread.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#define G ENG_PACK_ROWS
#define AI static inline __attribute__((always_inline))

AI __m512i bc4(const void *p)
{
    int32_t v;

    memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
}

AI __m512 h16(const uint8_t *p)
{
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}

/* Bytes the VNNI loops prefetch ahead of the block they work on (a
 * prefetch past the matrix never faults). */
#define VNNI_AHEAD 4096
/* The k-quant loops prefetch only with this many activation columns or
 * more: a batch-1 decode of a k-quant matrix from DRAM ran slower with it
 * (llama-1b q4_k batch 1: 28 tok/s with, 33-34 without; Gemma 3 from L3
 * 110-115 either way; quiet 2-core runs). The 32-block loop keeps it at
 * batch 1 (SmolLM2 q4_1 from L3: 250 -> 380 tok/s; llama-1b q8_0 no loss). */
#define VNNI_PF_COLS 2

/* ---- 32-block types ---- */

/* A panel block's codes (after its d[16] and m[16]) as 8 registers of
 * 16 rows x 4 bytes: low then high nibbles, plus the 5th bit of q5_*
 * types; q8_0's codes are stored that way already. */
AI void codes32(const uint32_t T, const uint8_t *p, __m512i U[8])
{
    const int has_m = T == ENG_TYPE_Q4_1 || T == ENG_TYPE_Q5_1;
    const int has_h = T == ENG_TYPE_Q5_0 || T == ENG_TYPE_Q5_1;
    const __m512i m4 = _mm512_set1_epi8(0x0f), x10 = _mm512_set1_epi8(0x10);

    if (T == ENG_TYPE_Q8_0) {
        for (int s = 0; s < 8; s++)
            U[s] = _mm512_loadu_si512((const void *)(p + 2 * G + 64 * s));
        return;
    }
    const uint8_t *qh = p + 2 * G + (has_m ? 2 * G : 0);
    const uint8_t *nib = qh + (has_h ? 64 : 0);

    for (int s = 0; s < 4; s++) {
        __m512i v = _mm512_loadu_si512((const void *)(nib + 64 * s));
        U[s] = _mm512_and_si512(v, m4);
        U[s + 4] = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
    }
    if (has_h)
        for (int s = 0; s < 8; s++) {
            uint64_t h;
            memcpy(&h, qh + 8 * s, 8);
            U[s] = _mm512_mask_add_epi8(U[s], _cvtu64_mask64(h), U[s], x10);
        }
}

AI void panel32(const uint32_t T, const int NC, const uint8_t *p, int64_t nb, const uint8_t *x,
                size_t xs, float *y, int64_t ldy, __mmask16 vm)
{
    const int has_m = T == ENG_TYPE_Q4_1 || T == ENG_TYPE_Q5_1;
    const size_t pb = eng_pack_pblock_bytes(T);
    const int sh = T == ENG_TYPE_Q4_0 ? 3 : T == ENG_TYPE_Q5_0 ? 4 : 7;
    __m512 acc[ENG_PACK_COLS];

    for (int c = 0; c < NC; c++)
        acc[c] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++, p += pb) {
        __m512i U[8];
        __m512 dw = h16(p), mw = _mm512_setzero_ps();

        if (has_m)
            mw = h16(p + 2 * G);
        for (size_t o = 0; o < pb; o += 64)
            _mm_prefetch((const char *)p + VNNI_AHEAD + o, _MM_HINT_T0);
        codes32(T, p, U);
        for (int c = 0; c < NC; c++) {
            const struct eng_bq8_p *xa = (const struct eng_bq8_p *)(x + (size_t)c * xs) + b;
            __m512i s = has_m ? _mm512_setzero_si512()
                              : _mm512_slli_epi32(_mm512_set1_epi32(xa->nsum), sh);
            __m512i s2 = _mm512_setzero_si512();

            /* two dependency chains: dpbusd's latency, not its
             * throughput, bounds a single column (decode) */
            for (int j = 0; j < 4; j++) {
                s = _mm512_dpbusd_epi32(s, U[j], bc4(xa->qs + 4 * j));
                s2 = _mm512_dpbusd_epi32(s2, U[j + 4], bc4(xa->qs + 4 * j + 16));
            }
            s = _mm512_add_epi32(s, s2);
            acc[c] = _mm512_fmadd_ps(_mm512_mul_ps(dw, _mm512_set1_ps(xa->d)),
                                     _mm512_cvtepi32_ps(s), acc[c]);
            if (has_m)
                acc[c] = _mm512_fmadd_ps(mw, _mm512_set1_ps(xa->s), acc[c]);
        }
    }
    for (int c = 0; c < NC; c++)
        _mm512_mask_storeu_ps(y + c * ldy, vm, acc[c]);
}

/* ---- q4_k: 8 sub-blocks of 32, 6-bit scales and mins ---- */

AI void panel_q4_k(const int NC, const uint8_t *p, int64_t nb, const uint8_t *x, size_t xs,
                   float *y, int64_t ldy, __mmask16 vm)
{
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    __m512 acc[ENG_PACK_COLS];

    for (int c = 0; c < NC; c++)
        acc[c] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++, p += G * 148) {
        const uint8_t *sc = p + 4 * G, *mn = sc + 8 * G, *nib = mn + 8 * G;
        __m512i tot[ENG_PACK_COLS], M[4];

        for (int c = 0; c < NC; c++)
            tot[c] = _mm512_setzero_si512();
        for (int j = 0; j < 8; j++) {
            __m512i U[8];
            __m512i scj = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(sc + j * G)));

            for (int o = j * 296; NC >= VNNI_PF_COLS && o < (j + 1) * 296; o += 64)
                _mm_prefetch((const char *)p + 2 * G * 148 + o, _MM_HINT_T0);
            for (int s = 0; s < 8; s++) {
                __m512i v = _mm512_loadu_si512((const void *)(nib + ((j / 2) * 8 + s) * G * 4));
                U[s] = _mm512_and_si512((j & 1) ? _mm512_srli_epi16(v, 4) : v, m4);
            }
            for (int c = 0; c < NC; c++) {
                const struct eng_bq8_kp *xa = (const struct eng_bq8_kp *)(x + (size_t)c * xs) + b;
                __m512i s = _mm512_setzero_si512(), s2 = s;

                for (int k = 0; k < 4; k++) {
                    s = _mm512_dpbusd_epi32(s, U[k], bc4(xa->qs + 32 * j + 4 * k));
                    s2 = _mm512_dpbusd_epi32(s2, U[k + 4], bc4(xa->qs + 32 * j + 4 * k + 16));
                }
                s = _mm512_add_epi32(s, s2);
                tot[c] = _mm512_add_epi32(tot[c], _mm512_mullo_epi32(s, scj));
            }
        }
        for (int q = 0; q < 4; q++)
            M[q] = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(mn + q * 2 * G)));
        __m512 dw = h16(p), dm = h16(p + 2 * G);
        for (int c = 0; c < NC; c++) {
            const struct eng_bq8_kp *xa = (const struct eng_bq8_kp *)(x + (size_t)c * xs) + b;
            __m512i mm = _mm512_setzero_si512();
            __m512 dx = _mm512_set1_ps(xa->d);

            for (int q = 0; q < 4; q++)
                mm = _mm512_dpwssd_epi32(mm, M[q], bc4(&xa->bs32[2 * q]));
            acc[c] = _mm512_fmadd_ps(_mm512_mul_ps(dw, dx), _mm512_cvtepi32_ps(tot[c]), acc[c]);
            acc[c] = _mm512_fnmadd_ps(_mm512_mul_ps(dm, dx), _mm512_cvtepi32_ps(mm), acc[c]);
        }
    }
    for (int c = 0; c < NC; c++)
        _mm512_mask_storeu_ps(y + c * ldy, vm, acc[c]);
}

/* ---- q6_k: 16 groups of 16, i8 scales, codes - 32 ---- */

AI void panel_q6_k(const int NC, const uint8_t *p, int64_t nb, const uint8_t *x, size_t xs,
                   float *y, int64_t ldy, __mmask16 vm)
{
    const __m512i m4 = _mm512_set1_epi8(0x0f), m30 = _mm512_set1_epi8(0x30);
    __m512 acc[ENG_PACK_COLS];

    for (int c = 0; c < NC; c++)
        acc[c] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++, p += G * 210) {
        const int8_t *sc = (const int8_t *)p + 2 * G;
        const uint8_t *ql = p + 2 * G + 16 * G, *qh = ql + 16 * 2 * G * 4;
        __m512i tot[ENG_PACK_COLS];

        for (int c = 0; c < NC; c++)
            tot[c] = _mm512_setzero_si512();
        for (int u = 0; u < 16; u++) {
            __m512i A = _mm512_loadu_si512((const void *)(ql + (2 * u) * G * 4));
            __m512i B = _mm512_loadu_si512((const void *)(ql + (2 * u + 1) * G * 4));
            __m512i H = _mm512_loadu_si512((const void *)(qh + u * G * 4));
            __m512i U[4];
            __m512i scu = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(sc + u * G)));

            for (int o = u * 210; NC >= VNNI_PF_COLS && o < (u + 1) * 210; o += 64)
                _mm_prefetch((const char *)p + 2 * G * 210 + o, _MM_HINT_T0);
            U[0] = _mm512_ternarylogic_epi32(A, m4, _mm512_and_si512(_mm512_slli_epi16(H, 4), m30), 0xea);
            U[1] = _mm512_ternarylogic_epi32(_mm512_srli_epi16(A, 4), m4,
                                             _mm512_and_si512(_mm512_slli_epi16(H, 2), m30), 0xea);
            U[2] = _mm512_ternarylogic_epi32(B, m4, _mm512_and_si512(H, m30), 0xea);
            U[3] = _mm512_ternarylogic_epi32(_mm512_srli_epi16(B, 4), m4,
                                             _mm512_and_si512(_mm512_srli_epi16(H, 2), m30), 0xea);
            for (int c = 0; c < NC; c++) {
                const struct eng_bq8_kp *xa = (const struct eng_bq8_kp *)(x + (size_t)c * xs) + b;
                __m512i s = _mm512_set1_epi32(xa->off6[u]);

                for (int k = 0; k < 4; k++)
                    s = _mm512_dpbusd_epi32(s, U[k], bc4(xa->qs + 16 * u + 4 * k));
                tot[c] = _mm512_add_epi32(tot[c], _mm512_mullo_epi32(s, scu));
            }
        }
        __m512 dw = h16(p);
        for (int c = 0; c < NC; c++) {
            const struct eng_bq8_kp *xa = (const struct eng_bq8_kp *)(x + (size_t)c * xs) + b;

            acc[c] = _mm512_fmadd_ps(_mm512_mul_ps(dw, _mm512_set1_ps(xa->d)),
                                     _mm512_cvtepi32_ps(tot[c]), acc[c]);
        }
    }
    for (int c = 0; c < NC; c++)
        _mm512_mask_storeu_ps(y + c * ldy, vm, acc[c]);
}

/* ---- one function per (type, column count), chosen by table ---- */

typedef void (*panel_fn)(const uint8_t *p, int64_t nb, const uint8_t *x, size_t xs, float *y,
                         int64_t ldy, __mmask16 vm);

#define GEN32(T, name, NC)                                                                \
    static void name##_##NC(const uint8_t *p, int64_t nb, const uint8_t *x, size_t xs,    \
                            float *y, int64_t ldy, __mmask16 vm)                          \
    {                                                                                     \
        panel32(T, NC, p, nb, x, xs, y, ldy, vm);                                         \
    }
#define GENK(name, NC)                                                                    \
    static void name##_##NC(const uint8_t *p, int64_t nb, const uint8_t *x, size_t xs,    \
                            float *y, int64_t ldy, __mmask16 vm)                          \
    {                                                                                     \
        panel_##name(NC, p, nb, x, xs, y, ldy, vm);                                       \
    }
#define GEN32_ALL(T, name) GEN32(T, name, 1) GEN32(T, name, 2) GEN32(T, name, 3) GEN32(T, name, 4) \
    GEN32(T, name, 5) GEN32(T, name, 6) GEN32(T, name, 7) GEN32(T, name, 8)
#define GENK_ALL(name) GENK(name, 1) GENK(name, 2) GENK(name, 3) GENK(name, 4) \
    GENK(name, 5) GENK(name, 6) GENK(name, 7) GENK(name, 8)

_Static_assert(ENG_PACK_COLS == 8, "one kernel per column count 1..8");
GEN32_ALL(ENG_TYPE_Q4_0, q4_0)
GEN32_ALL(ENG_TYPE_Q4_1, q4_1)
GEN32_ALL(ENG_TYPE_Q5_0, q5_0)
GEN32_ALL(ENG_TYPE_Q5_1, q5_1)
GEN32_ALL(ENG_TYPE_Q8_0, q8_0)
GENK_ALL(q4_k)
GENK_ALL(q6_k)

#define ROW(name) { name##_1, name##_2, name##_3, name##_4, name##_5, name##_6, name##_7, name##_8 }
static const panel_fn fns[ENG_TYPE_COUNT][ENG_PACK_COLS] = {
    [ENG_TYPE_Q4_0] = ROW(q4_0), [ENG_TYPE_Q4_1] = ROW(q4_1), [ENG_TYPE_Q5_0] = ROW(q5_0),
    [ENG_TYPE_Q5_1] = ROW(q5_1), [ENG_TYPE_Q8_0] = ROW(q8_0), [ENG_TYPE_Q4_K] = ROW(q4_k),
    [ENG_TYPE_Q6_K] = ROW(q6_k),
};

/*
 * ---- AMX: 16 activation rows x 16 weight rows per tile instruction ----
 *
 * For the 32-block types and q4_k, calls with 16 or more activation rows
 * (batched decode, prefill), where the VNNI loop above is bound by
 * vpdpbusd's throughput. The tile product itself is cheap; what costs is getting the
 * codes into B tiles and finishing each block's 16 x 16 integer sums
 * with the VNNI kernel's f32 operations, so both are kept lean:
 *
 *   - a panel's blocks are unpacked once per call, AMX_CHUNK blocks at a
 *     time, into a buffer of B tiles (row s = step s: four codes of each
 *     of the 16 weight rows, exactly what panel32 holds in U[s]) that
 *     every group of 16 activation rows then reuses; the tile loads read
 *     stores made long before (a tile load right after the vector stores
 *     that fill it waits for them to reach the cache);
 *   - the 32-block types' codes go in signed, their offset already
 *     subtracted (q4_0 - 8, q5_0 - 16, q8_0 stored as q + 128), so
 *     tdpbssd's sum is the VNNI kernel's integer sum with its nsum << sh
 *     start included, and the finish is one convert, one multiply and one
 *     (q4_1, q5_1: two) fused multiply-add per activation row;
 *   - the 32-block types' A tiles come from the activation rows packed
 *     once per call (apk_pack: 16 rows' codes of a block back to back,
 *     their scales beside them); q4_k's are read straight from the rows;
 *     the accumulators stay in registers for a whole chunk (and go
 *     through y, exactly, between chunks).
 *
 * C[c][r] is the exact integer block sum of activation row c and weight
 * row r; it is finished with the same f32 operations, in the same order,
 * as the VNNI kernel (one multiply, fused multiply-adds, block after
 * block), so both give the same bits and batch invariance (eng_step.h
 * S1) holds whichever kernel a row goes through. Two sets of tiles
 * alternate between even and odd blocks so that one block's tile product
 * runs while the previous block is finished.
 *
 * Tiles: 0/1 C (16 x 16 int32), 2/3 A (16 x 32 s8), 4/5 B (8 x 64 s8/u8).
 * Needs the process's permission for AMX state (eng_pack_amx_enable).
 */
#define AMXT __attribute__((target("amx-tile,amx-int8")))
#define AMXI AMXT static inline __attribute__((always_inline))
#define AMX_CHUNK 32      /* 32-block types: blocks of B tiles per chunk (16 KiB) */
#define AMX_CHUNK_K 4     /* q4_k: super-blocks per chunk (32 sub-block tiles, 16 KiB) */
#define AMX_NT_BYTES (8 << 20) /* a call's sums streamed past the caches above this */

/* The activation rows of a 32-block type's call, packed once per call as
 * A tiles (apk_pack): for each group of 16 rows and each block, the 16
 * rows' 32 codes back to back (one A tile, loaded with stride 32), then
 * their d[16] and s[16]. Read straight from the rows (48-byte blocks, a
 * row apart), a tile load touched 16-32 partly used lines, every panel
 * again; packed it reads 8 whole ones (perf annotate of a llama-1b q8_0
 * batch-32 step: ~30% of the AMX loop's samples sat after the A load).
 * The same bytes, so the same sums and bits. Per thread, grown as needed,
 * freed when the thread ends. */
#define APK_D 512
#define APK_S (512 + 64)
#define APK (512 + 128)
/* q4_k's (kpk_pack): per group of 16 rows and super-block, the 8
 * sub-blocks' A tiles, then the rows' d[16] and bs32[16][8]. */
#define KPK_D (8 * 512)
#define KPK_B (8 * 512 + 64)
#define KPK (8 * 512 + 64 + 256)

static pthread_key_t apk_key;
static pthread_once_t apk_once = PTHREAD_ONCE_INIT;

struct apk_buf {
    uint8_t *p;
    size_t cap;
};

static void apk_free(void *v)
{
    struct apk_buf *b = v;

    free(b->p);
    free(b);
}

static void apk_key_make(void)
{
    FAVO_ASSERT(pthread_key_create(&apk_key, apk_free) == 0);
}

/* This thread's buffer of at least n bytes (64-aligned), or NULL. */
static uint8_t *apk_get(size_t n)
{
    struct apk_buf *b;

    pthread_once(&apk_once, apk_key_make);
    b = pthread_getspecific(apk_key);
    if (!b) {
        if (!(b = calloc(1, sizeof(*b))))
            return NULL;
        if (pthread_setspecific(apk_key, b)) {
            free(b);
            return NULL;
        }
    }
    if (b->cap < n) {
        uint8_t *q = aligned_alloc(64, (n + 63) & ~(size_t)63);

        if (!q)
            return NULL;
        free(b->p);
        b->p = q;
        b->cap = n;
    }
    return b->p;
}

/* Rows 0..m16 of x (nb super-blocks of struct eng_bq8_kp each, xs apart)
 * into a (apk_get(m16 / 16 * nb * KPK)). */
static void kpk_pack(const uint8_t *x, size_t xs, int64_t nb, int64_t m16, uint8_t *a)
{
    for (int64_t r = 0; r < m16; r++) {
        const struct eng_bq8_kp *xb = (const struct eng_bq8_kp *)(x + (size_t)r * xs);
        uint8_t *g = a + (size_t)(r / 16) * (size_t)nb * KPK;
        int c = (int)(r % 16);

        for (int64_t b = 0; b < nb; b++, g += KPK) {
            for (int k = 0; k < 8; k++)
                _mm256_store_si256((__m256i *)(g + 512 * k + 32 * c),
                                   _mm256_loadu_si256((const __m256i *)(xb[b].qs + 32 * k)));
            ((float *)(g + KPK_D))[c] = xb[b].d;
            memcpy(g + KPK_B + 16 * c, xb[b].bs32, 16);
        }
    }
}

/* Rows 0..m16 of x (nb blocks of struct eng_bq8_p each, xs apart) into a
 * (apk_get(m16 / 16 * nb * APK)). */
static void apk_pack(const uint8_t *x, size_t xs, int64_t nb, int64_t m16, uint8_t *a)
{
    for (int64_t r = 0; r < m16; r++) {
        const struct eng_bq8_p *xb = (const struct eng_bq8_p *)(x + (size_t)r * xs);
        uint8_t *g = a + (size_t)(r / 16) * (size_t)nb * APK;
        int c = (int)(r % 16);

        for (int64_t b = 0; b < nb; b++, g += APK) {
            _mm256_store_si256((__m256i *)(g + 32 * c),
                               _mm256_loadu_si256((const __m256i *)xb[b].qs));
            ((float *)(g + APK_D))[c] = xb[b].d;
            ((float *)(g + APK_S))[c] = xb[b].s;
        }
    }
}

struct amx_cfg {
    uint8_t palette, start_row, rsv[14];
    uint16_t colsb[16];
    uint8_t rows[16];
};

AMXT static void amx_config(void)
{
    struct amx_cfg cfg;

    memset(&cfg, 0, sizeof(cfg));
    cfg.palette = 1;
    for (int i = 0; i < 2; i++) {
        cfg.colsb[i] = 64, cfg.rows[i] = 16;       /* C */
        cfg.colsb[2 + i] = 32, cfg.rows[2 + i] = 16; /* A */
        cfg.colsb[4 + i] = 64, cfg.rows[4 + i] = 8;  /* B */
    }
    _tile_loadconfig(&cfg);
}

/* The signed B tiles of n panel blocks from p into bt (512 bytes each). */
AI void unpack32(const uint32_t T, const uint8_t *p, int64_t n, uint8_t *bt)
{
    const int off = T == ENG_TYPE_Q4_0 ? 8 : T == ENG_TYPE_Q5_0 ? 16 : T == ENG_TYPE_Q8_0 ? 128 : 0;
    const __m512i vo = _mm512_set1_epi8((char)off);

    for (int64_t i = 0; i < n; i++, p += eng_pack_pblock_bytes(T), bt += 512) {
        __m512i U[8];

        codes32(T, p, U);
        for (int s = 0; s < 8; s++)
            _mm512_store_si512((void *)(bt + 64 * s), off ? _mm512_sub_epi8(U[s], vo) : U[s]);
    }
}

/* Block sums ct of panel block p into the 16 rows' accumulators (xa: the
 * rows' packed A block, apk_pack), as panel32 does; and,
 * unless ahead is 0, a prefetch of the block `ahead` bytes on (one chunk:
 * the next chunk's or panel's, or past the matrix: a prefetch never
 * faults), so that the next unpack does not wait on memory. The caller
 * passes ahead only in a chunk's last 16-row group: one prefetch per
 * block, as late as before (the earlier groups' were repeats). */
AI void finish32(const uint32_t T, const uint8_t *p, const int32_t *ct, const uint8_t *xa,
                 __m512 *acc, size_t ahead)
{
    const int has_m = T == ENG_TYPE_Q4_1 || T == ENG_TYPE_Q5_1;
    const float *xd = (const float *)(xa + APK_D), *xsum = (const float *)(xa + APK_S);
    __m512 dw = h16(p), mw = has_m ? h16(p + 2 * G) : _mm512_setzero_ps();

    if (ahead)
        for (size_t o = 0; o < eng_pack_pblock_bytes(T); o += 64)
            _mm_prefetch((const char *)p + ahead + o, _MM_HINT_T0);

    for (int c = 0; c < 16; c++) {
        __m512i s = _mm512_load_si512((const void *)(ct + 16 * c));

        acc[c] = _mm512_fmadd_ps(_mm512_mul_ps(dw, _mm512_set1_ps(xd[c])),
                                 _mm512_cvtepi32_ps(s), acc[c]);
        if (has_m)
            acc[c] = _mm512_fmadd_ps(mw, _mm512_set1_ps(xsum[c]), acc[c]);
    }
}

/* tile set t <- B tile i of bt times the A tile of 16 activation rows at
 * xq (xs apart), with signed (ss) or unsigned (su) weight codes */
#define AMX_ISSUE_(tc, ta, tb, bt, xq, xs, dp)                                              \
    do {                                                                                    \
        _tile_loadd(tb, (bt), 64);                                                          \
        _tile_loadd(ta, (xq), (long)(xs));                                                  \
        _tile_zero(tc);                                                                     \
        dp(tc, ta, tb);                                                                     \
    } while (0)
#define AMX_ISSUE0(bt, xq, xs, dp) AMX_ISSUE_(0, 2, 4, bt, xq, xs, dp)
#define AMX_ISSUE1(bt, xq, xs, dp) AMX_ISSUE_(1, 3, 5, bt, xq, xs, dp)

/* One panel (p, nb blocks) against m16 activation rows (a multiple of 16)
 * packed by apk_pack at a. */
AMXI void amx_panel32(const uint32_t T, const uint8_t *p, int64_t nb, const uint8_t *a,
                      int64_t m16, float *y, int64_t ldy, __mmask16 vm, int nt)
{
    /* nt: the sums' last store streams past the caches (whole aligned
     * lines only; the same values) */
    nt = nt && vm == 0xffff && !(((uintptr_t)y | (uintptr_t)ldy * 4) & 63);

    const size_t pb = eng_pack_pblock_bytes(T);
    _Alignas(64) uint8_t bt[AMX_CHUNK * 512];
    _Alignas(64) int32_t ct[4][256];

    for (int64_t b0 = 0; b0 < nb; b0 += AMX_CHUNK) {
        int64_t n = nb - b0 < AMX_CHUNK ? nb - b0 : AMX_CHUNK;
        const uint8_t *pc = p + (size_t)b0 * pb;

        unpack32(T, pc, n, bt);
        for (int64_t j = 0; j < m16; j += 16) {
            const size_t ahead = j + 16 < m16 ? 0 : (size_t)n * pb;
            const uint8_t *xa = a + ((size_t)(j / 16) * (size_t)nb + (size_t)b0) * APK;
            float *yj = y + j * ldy;
            __m512 acc[16];

            for (int c = 0; c < 16; c++)
                acc[c] = b0 ? _mm512_maskz_loadu_ps(vm, yj + c * ldy) : _mm512_setzero_ps();
            /* block i's product is issued one block ahead, stored at i
             * and finished two blocks later, in block order: vector loads
             * wait for a tile store to reach the cache, so its sums are
             * read only once the next block's store has been issued */
            AMX_ISSUE0(bt, xa, 32, _tile_dpbssd);
            for (int64_t i = 0; i < n; i += 2) {
                if (i + 1 < n)
                    AMX_ISSUE1(bt + (i + 1) * 512, xa + (i + 1) * APK, 32, _tile_dpbssd);
                _tile_stored(0, ct[i & 3], 64);
                if (i >= 2)
                    finish32(T, pc + (i - 2) * pb, ct[(i - 2) & 3], xa + (i - 2) * APK, acc,
                             ahead);
                if (i + 1 >= n)
                    break;
                if (i + 2 < n)
                    AMX_ISSUE0(bt + (i + 2) * 512, xa + (i + 2) * APK, 32, _tile_dpbssd);
                _tile_stored(1, ct[(i + 1) & 3], 64);
                if (i >= 2)
                    finish32(T, pc + (i - 1) * pb, ct[(i - 1) & 3], xa + (i - 1) * APK, acc,
                             ahead);
            }
            for (int64_t i = n >= 2 ? n - 2 : 0; i < n; i++)
                finish32(T, pc + i * pb, ct[i & 3], xa + i * APK, acc, ahead);
            if (nt && b0 + n >= nb)
                for (int c = 0; c < 16; c++)
                    _mm512_stream_ps(yj + c * ldy, acc[c]);
            else
                for (int c = 0; c < 16; c++)
                    _mm512_mask_storeu_ps(yj + c * ldy, vm, acc[c]);
        }
    }
}

#define AMX_PANEL(T, name)                                                                  \
    AMXT static void name##_amx(const uint8_t *p, int64_t nb, const uint8_t *x, size_t xs,   \
                                int64_t m16, float *y, int64_t ldy, __mmask16 vm, int nt)   \
    {                                                                                       \
        (void)xs;                                                                           \
        amx_panel32(T, p, nb, x, m16, y, ldy, vm, nt);                                      \
    }

AMX_PANEL(ENG_TYPE_Q4_0, q4_0)
AMX_PANEL(ENG_TYPE_Q4_1, q4_1)
AMX_PANEL(ENG_TYPE_Q5_0, q5_0)
AMX_PANEL(ENG_TYPE_Q5_1, q5_1)
AMX_PANEL(ENG_TYPE_Q8_0, q8_0)

/* The B tiles of n q4_k panel super-blocks from p: sub-block j of
 * super-block i at bt + (8i + j) * 512, unsigned codes as panel_q4_k
 * unpacks them. */
AI void unpack_q4_k(const uint8_t *p, int64_t n, uint8_t *bt)
{
    const __m512i m4 = _mm512_set1_epi8(0x0f);

    for (int64_t i = 0; i < n; i++, p += G * 148, bt += 8 * 512) {
        const uint8_t *nib = p + 4 * G + 8 * G + 8 * G;

        for (int q = 0; q < 4; q++)
            for (int s = 0; s < 8; s++) {
                __m512i v = _mm512_loadu_si512((const void *)(nib + (q * 8 + s) * G * 4));

                _mm512_store_si512((void *)(bt + (2 * q) * 512 + 64 * s), _mm512_and_si512(v, m4));
                _mm512_store_si512((void *)(bt + (2 * q + 1) * 512 + 64 * s),
                                   _mm512_and_si512(_mm512_srli_epi16(v, 4), m4));
            }
    }
}

/* tot[c] += sub-block j's integer sums * its scales (panel super-block
 * p); and, unless ahead is 0, a prefetch of an eighth of the super-block
 * `ahead` bytes on (see finish32) */
AI void tot_q4_k(const uint8_t *p, int j, const int32_t *ct, __m512i *tot, size_t ahead)
{
    __m512i scj = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(p + 4 * G + j * G)));

    if (ahead)
        for (int o = j * 296; o < (j + 1) * 296; o += 64)
            _mm_prefetch((const char *)p + ahead + o, _MM_HINT_T0);

    for (int c = 0; c < 16; c++)
        tot[c] = _mm512_add_epi32(tot[c], _mm512_mullo_epi32(
                                              _mm512_load_si512((const void *)(ct + 16 * c)), scj));
}

/* Super-block p's totals and mins into the 16 rows' sums in y, with
 * panel_q4_k's f32 operations (first: y not read). */
AI void fin_q4_k(const uint8_t *p, const __m512i *tot, const uint8_t *xa, float *y,
                 int64_t ldy, __mmask16 vm, int first)
{
    const uint8_t *mn = p + 4 * G + 8 * G;
    __m512 dw = h16(p), dm = h16(p + 2 * G);
    __m512i M[4];

    for (int q = 0; q < 4; q++)
        M[q] = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(mn + q * 2 * G)));
    for (int c = 0; c < 16; c++) {
        const int16_t *bs32 = (const int16_t *)(xa + KPK_B + 16 * c);
        __m512i mm = _mm512_setzero_si512();
        __m512 dx = _mm512_set1_ps(((const float *)(xa + KPK_D))[c]);
        __m512 acc = first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(vm, y + c * ldy);

        for (int q = 0; q < 4; q++)
            mm = _mm512_dpwssd_epi32(mm, M[q], bc4(&bs32[2 * q]));
        acc = _mm512_fmadd_ps(_mm512_mul_ps(dw, dx), _mm512_cvtepi32_ps(tot[c]), acc);
        acc = _mm512_fnmadd_ps(_mm512_mul_ps(dm, dx), _mm512_cvtepi32_ps(mm), acc);
        _mm512_mask_storeu_ps(y + c * ldy, vm, acc);
    }
}

/* q4_k: one tile product per 32-element sub-block (its 6-bit scale is an
 * integer factor per weight row, applied to the exact sum as the VNNI
 * kernel does), then panel_q4_k's f32 operations per super-block, the
 * running sums kept in y between super-blocks (exactly). */
AMXT static void q4_k_amx(const uint8_t *p, int64_t nb, const uint8_t *x, size_t xs,
                          int64_t m16, float *y, int64_t ldy, __mmask16 vm, int nt)
{
    _Alignas(64) uint8_t bt[AMX_CHUNK_K * 8 * 512];
    (void)nt;
    _Alignas(64) int32_t ct[2][256];

    for (int64_t b0 = 0; b0 < nb; b0 += AMX_CHUNK_K) {
        int64_t n = nb - b0 < AMX_CHUNK_K ? nb - b0 : AMX_CHUNK_K;
        const uint8_t *pc = p + (size_t)b0 * G * 148;

        unpack_q4_k(pc, n, bt);
        for (int64_t j = 0; j < m16; j += 16) {
            const size_t ahead = j + 16 < m16 ? 0 : (size_t)n * G * 148;
            const uint8_t *xb = x + ((size_t)(j / 16) * (size_t)nb + (size_t)b0) * KPK;
            float *yj = y + j * ldy;

            /* sub-block k = 8 * super-block + j, all n * 8 of them in turn */
            AMX_ISSUE0(bt, xb, 32, _tile_dpbsud);
            for (int64_t i = 0; i < n; i++) {
                const uint8_t *pi = pc + (size_t)i * G * 148;
                __m512i tot[16];

                for (int c = 0; c < 16; c++)
                    tot[c] = _mm512_setzero_si512();
                for (int k = 0; k < 8; k += 2) {
                    int64_t s = 8 * i + k;

                    AMX_ISSUE1(bt + (s + 1) * 512, xb + i * KPK + 512 * (k + 1), 32,
                              _tile_dpbsud);
                    _tile_stored(0, ct[0], 64);
                    tot_q4_k(pi, k, ct[0], tot, ahead);
                    if (s + 2 < 8 * n)
                        AMX_ISSUE0(bt + (s + 2) * 512,
                                  xb + ((s + 2) / 8) * KPK + 512 * ((s + 2) % 8), 32, _tile_dpbsud);
                    _tile_stored(1, ct[1], 64);
                    tot_q4_k(pi, k + 1, ct[1], tot, ahead);
                }
                fin_q4_k(pi, tot, xb + i * KPK, yj, ldy, vm, b0 + i == 0);
            }
        }
    }
}

typedef void (*amx_fn)(const uint8_t *p, int64_t nb, const uint8_t *x, size_t xs, int64_t m16,
                       float *y, int64_t ldy, __mmask16 vm, int nt);

static const amx_fn amx_fns[ENG_TYPE_COUNT] = {
    [ENG_TYPE_Q4_0] = q4_0_amx, [ENG_TYPE_Q4_1] = q4_1_amx, [ENG_TYPE_Q5_0] = q5_0_amx,
    [ENG_TYPE_Q5_1] = q5_1_amx, [ENG_TYPE_Q8_0] = q8_0_amx, [ENG_TYPE_Q4_K] = q4_k_amx,
};

/* Panels g0..g1 against activation rows 0..m16 (a multiple of 16): 0, or
 * -ENOMEM (no packing buffer; nothing done: the VNNI loop does it). */
AMXT static int amx_panels(amx_fn f, const uint8_t *wp, size_t panel_bytes, int64_t nb,
                            int64_t g0, int64_t g1, int64_t rows, const uint8_t *x, size_t xs,
                            int64_t m16, float *y, int64_t ldy)
{
    /* the rows packed as A tiles once for all panels */
    {
        const int k = f == q4_k_amx;
        uint8_t *a = apk_get((size_t)(m16 / 16) * (size_t)nb * (k ? KPK : APK));

        if (!a)
            return -ENOMEM;
        (k ? kpk_pack : apk_pack)(x, xs, nb, m16, a);
        x = a;
    }
    /* sums too many to stay in L2 (Gemma's 262144-row output matrix at
     * batch 32: 32 MiB of logits) stream to memory: no read for
     * ownership of lines about to be overwritten whole (mm_output b32
     * 14.7-15.4 -> 13.3-13.4 ms on the development machine; same bits) */
    const int nt = (g1 - g0) * G * m16 * (int64_t)sizeof(float) > AMX_NT_BYTES;

    amx_config();
    for (int64_t g = g0; g < g1; g++) {
        int64_t r = g * G, nv = rows - r;
        __mmask16 vm = nv >= G ? (__mmask16)0xffff : (__mmask16)((1u << nv) - 1);

        f(wp + (size_t)g * panel_bytes, nb, x, xs, m16, y + r, ldy, vm, nt);
    }
    _tile_release();
    if (nt)
        _mm_sfence(); /* the streamed stores ordered before the caller's barrier */
    return 0;
}

void eng_pack_avx512_panels(uint32_t wtype, const uint8_t *wp, size_t panel_bytes,
                            int64_t nb, int64_t g0, int64_t g1, int64_t rows,
                            const uint8_t *x, size_t xs, int64_t m, float *y, int64_t ldy)
{
    const panel_fn *f = fns[wtype];

    /* AMX from 16 activation rows up: batched decode 1.2-1.7x the VNNI
     * loop, prefill (512 rows) 1.0-1.6x (measured on the development
     * machine, per core); below 16 rows the VNNI loop. Same bits. */
    if (m >= 16 && amx_fns[wtype] && eng_pack_amx_on()) {
        int64_t m16 = m & ~(int64_t)15;

        if (amx_panels(amx_fns[wtype], wp, panel_bytes, nb, g0, g1, rows, x, xs, m16, y, ldy))
            goto vnni;
        x += (size_t)m16 * xs;
        y += m16 * ldy;
        m -= m16;
        if (!m)
            return;
    }
vnni:
    for (int64_t g = g0; g < g1; g++) {
        int64_t r = g * G, nv = rows - r;
        __mmask16 vm = nv >= G ? (__mmask16)0xffff : (__mmask16)((1u << nv) - 1);
        const uint8_t *p = wp + (size_t)g * panel_bytes;

        for (int64_t j = 0; j < m; j += ENG_PACK_COLS) {
            int nc = (int)(m - j < ENG_PACK_COLS ? m - j : ENG_PACK_COLS);

            f[nc - 1](p, nb, x + (size_t)j * xs, xs, y + j * ldy + r, ldy, vm);
        }
    }
}
