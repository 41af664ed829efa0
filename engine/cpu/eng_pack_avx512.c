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

#include <immintrin.h>
#include <stddef.h>
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
    const size_t pb = T == ENG_TYPE_Q4_0 ? G * 18 : T == ENG_TYPE_Q4_1 ? G * 20
                    : T == ENG_TYPE_Q5_0 ? G * 22 : T == ENG_TYPE_Q5_1 ? G * 24 : G * 34;
    const int sh = T == ENG_TYPE_Q4_0 ? 3 : T == ENG_TYPE_Q5_0 ? 4 : 7;
    __m512 acc[ENG_PACK_COLS];

    for (int c = 0; c < NC; c++)
        acc[c] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++, p += pb) {
        __m512i U[8];
        __m512 dw = h16(p), mw = _mm512_setzero_ps();

        if (has_m)
            mw = h16(p + 2 * G);
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
 * For the 32-block types and q4_k (q4_k_amx below), calls with 16 to 64
 * activation rows (batched decode), where the VNNI loop above is bound by
 * vpdpbusd's throughput. The tile product itself is cheap; finishing each block's
 * 16 x 16 integer sums with the VNNI kernel's f32 operations is what
 * this loop spends its time on (about 1.1-1.25x the VNNI loop's rate). Per block: the panel's codes are unpacked as
 * above into eight 64-byte rows - exactly the B tile of tdpbsud (row s =
 * step s: four codes of each of the 16 weight rows, unsigned) - while the
 * A tile is read straight from 16 activation rows' codes (signed, 32
 * bytes each, x_row_bytes apart); C[c][r] is the exact integer block sum
 * of activation row c and weight row r. It is then stored and finished
 * with the same f32 operations, in the same order, as the VNNI kernel
 * (offset added in integer, one multiply, fused multiply-adds), so both
 * give the same bits and batch invariance (eng_step.h S1) holds whichever
 * kernel a row goes through. Two sets of tiles alternate between even
 * and odd blocks so that one block's tile product runs while the
 * previous block is finished.
 *
 * Tiles: 0/1 C (16 x 16 int32), 2/3 A (16 x 32 s8), 4/5 B (8 x 64 u8).
 * Needs the process's permission for AMX state (eng_pack_amx_enable).
 */
#define AMXT __attribute__((target("amx-tile,amx-int8")))

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

/* The B tile of panel block p: 8 rows of 64 bytes, as panel32 unpacks,
 * in bt; q8_0's codes are that tile already, in the panel itself. */
AI const uint8_t *unpack32(const uint32_t T, const uint8_t *p, uint8_t *bt)
{
    __m512i U[8];

    if (T == ENG_TYPE_Q8_0)
        return p + 2 * G;
    codes32(T, p, U);
    for (int s = 0; s < 8; s++)
        _mm512_store_si512((void *)(bt + 64 * s), U[s]);
    return bt;
}

/* Block b's integer sums (in ct) into the 16 columns' accumulators, with
 * panel32's f32 operations. */
AI void finish32(const uint32_t T, const uint8_t *p, const int32_t *ct, const uint8_t *x,
                 size_t xs, int64_t b, __m512 *acc)
{
    const int has_m = T == ENG_TYPE_Q4_1 || T == ENG_TYPE_Q5_1;
    const int sh = T == ENG_TYPE_Q4_0 ? 3 : T == ENG_TYPE_Q5_0 ? 4 : 7;
    __m512 dw = h16(p), mw = has_m ? h16(p + 2 * G) : _mm512_setzero_ps();

    for (int c = 0; c < 16; c++) {
        const struct eng_bq8_p *xa = (const struct eng_bq8_p *)(x + (size_t)c * xs) + b;
        __m512i s = _mm512_load_si512((const void *)(ct + 16 * c));

        if (!has_m)
            s = _mm512_add_epi32(s, _mm512_slli_epi32(_mm512_set1_epi32(xa->nsum), sh));
        acc[c] = _mm512_fmadd_ps(_mm512_mul_ps(dw, _mm512_set1_ps(xa->d)),
                                 _mm512_cvtepi32_ps(s), acc[c]);
        if (has_m)
            acc[c] = _mm512_fmadd_ps(mw, _mm512_set1_ps(xa->s), acc[c]);
    }
}

/* One panel against 16 activation rows (x: row 0's first block). */
#define AMX_PANEL(T, name)                                                                  \
    AMXT static void name##_amx(const uint8_t *p, int64_t nb, const uint8_t *x, size_t xs,   \
                                float *y, int64_t ldy, __mmask16 vm)                        \
    {                                                                                       \
        const size_t pb = T == ENG_TYPE_Q4_0 ? G * 18 : T == ENG_TYPE_Q4_1 ? G * 20         \
                        : T == ENG_TYPE_Q5_0 ? G * 22 : T == ENG_TYPE_Q5_1 ? G * 24 : G * 34; \
        _Alignas(64) uint8_t bt[2][512];                                                    \
        _Alignas(64) int32_t ct[256];                                                       \
        __m512 acc[16];                                                                     \
        const uint8_t *xq = x + offsetof(struct eng_bq8_p, qs);                             \
        int64_t b = 0;                                                                      \
                                                                                            \
        for (int c = 0; c < 16; c++)                                                        \
            acc[c] = _mm512_setzero_ps();                                                   \
        for (; b + 2 <= nb; b += 2) {                                                       \
            _tile_loadd(4, unpack32(T, p + (size_t)b * pb, bt[0]), 64);                    \
            _tile_loadd(2, xq + (size_t)b * sizeof(struct eng_bq8_p), (long)xs);           \
            _tile_zero(0);                                                                  \
            _tile_dpbsud(0, 2, 4);                                                          \
            if (b) {                                                                        \
                _tile_stored(1, ct, 64);                                                    \
                finish32(T, p + (size_t)(b - 1) * pb, ct, x, xs, b - 1, acc);               \
            }                                                                               \
            _tile_loadd(5, unpack32(T, p + (size_t)(b + 1) * pb, bt[1]), 64);               \
            _tile_loadd(3, xq + (size_t)(b + 1) * sizeof(struct eng_bq8_p), (long)xs);     \
            _tile_zero(1);                                                                  \
            _tile_dpbsud(1, 3, 5);                                                          \
            _tile_stored(0, ct, 64);                                                        \
            finish32(T, p + (size_t)b * pb, ct, x, xs, b, acc);                             \
        }                                                                                   \
        if (b) {                                                                            \
            _tile_stored(1, ct, 64);                                                        \
            finish32(T, p + (size_t)(b - 1) * pb, ct, x, xs, b - 1, acc);                   \
        }                                                                                   \
        if (b < nb) {                                                                       \
            _tile_loadd(4, unpack32(T, p + (size_t)b * pb, bt[0]), 64);                    \
            _tile_loadd(2, xq + (size_t)b * sizeof(struct eng_bq8_p), (long)xs);           \
            _tile_zero(0);                                                                  \
            _tile_dpbsud(0, 2, 4);                                                          \
            _tile_stored(0, ct, 64);                                                        \
            finish32(T, p + (size_t)b * pb, ct, x, xs, b, acc);                             \
        }                                                                                   \
        for (int c = 0; c < 16; c++)                                                        \
            _mm512_mask_storeu_ps(y + c * ldy, vm, acc[c]);                                 \
    }

AMX_PANEL(ENG_TYPE_Q4_0, q4_0)
AMX_PANEL(ENG_TYPE_Q4_1, q4_1)
AMX_PANEL(ENG_TYPE_Q5_0, q5_0)
AMX_PANEL(ENG_TYPE_Q5_1, q5_1)
AMX_PANEL(ENG_TYPE_Q8_0, q8_0)

/* q4_k sub-block j of panel super-block p as a B tile, as panel_q4_k
 * unpacks it. */
AI const uint8_t *unpack_q4_k(const uint8_t *p, int j, uint8_t *bt)
{
    const uint8_t *nib = p + 4 * G + 8 * G + 8 * G;
    const __m512i m4 = _mm512_set1_epi8(0x0f);

    for (int s = 0; s < 8; s++) {
        __m512i v = _mm512_loadu_si512((const void *)(nib + ((j / 2) * 8 + s) * G * 4));
        _mm512_store_si512((void *)(bt + 64 * s),
                           _mm512_and_si512((j & 1) ? _mm512_srli_epi16(v, 4) : v, m4));
    }
    return bt;
}

/* tot[c] += (sub-block j's integer sums) * its scales, as panel_q4_k */
AI void tot_q4_k(const uint8_t *p, int j, const int32_t *ct, int32_t *tot)
{
    __m512i scj = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(p + 4 * G + j * G)));

    for (int c = 0; c < 16; c++) {
        __m512i t = _mm512_load_si512((const void *)(tot + 16 * c));

        t = _mm512_add_epi32(t, _mm512_mullo_epi32(_mm512_load_si512((const void *)(ct + 16 * c)),
                                                   scj));
        _mm512_store_si512((void *)(tot + 16 * c), t);
    }
}

/* q4_k: one tile product per 32-element sub-block (its 6-bit scale is an
 * integer factor per weight row, applied to the exact sum as the VNNI
 * kernel does), then panel_q4_k's f32 operations per super-block. */
AMXT static void q4_k_amx(const uint8_t *p, int64_t nb, const uint8_t *x, size_t xs, float *y,
                          int64_t ldy, __mmask16 vm)
{
    _Alignas(64) uint8_t bt[2][512];
    _Alignas(64) int32_t ct[256], tot[256];
    __m512 acc[16];

    for (int c = 0; c < 16; c++)
        acc[c] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++, p += G * 148) {
        const uint8_t *xq = x + (size_t)b * sizeof(struct eng_bq8_kp) +
                            offsetof(struct eng_bq8_kp, qs);
        const uint8_t *mn = p + 4 * G + 8 * G;
        __m512i M[4];

        memset(tot, 0, sizeof(tot));
        for (int j = 0; j < 8; j += 2) {
            _tile_loadd(4, unpack_q4_k(p, j, bt[0]), 64);
            _tile_loadd(2, xq + 32 * j, (long)xs);
            _tile_zero(0);
            _tile_dpbsud(0, 2, 4);
            if (j) {
                _tile_stored(1, ct, 64);
                tot_q4_k(p, j - 1, ct, tot);
            }
            _tile_loadd(5, unpack_q4_k(p, j + 1, bt[1]), 64);
            _tile_loadd(3, xq + 32 * (j + 1), (long)xs);
            _tile_zero(1);
            _tile_dpbsud(1, 3, 5);
            _tile_stored(0, ct, 64);
            tot_q4_k(p, j, ct, tot);
        }
        _tile_stored(1, ct, 64);
        tot_q4_k(p, 7, ct, tot);
        for (int q = 0; q < 4; q++)
            M[q] = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(mn + q * 2 * G)));
        __m512 dw = h16(p), dm = h16(p + 2 * G);
        for (int c = 0; c < 16; c++) {
            const struct eng_bq8_kp *xa = (const struct eng_bq8_kp *)(x + (size_t)c * xs) + b;
            __m512i mm = _mm512_setzero_si512();
            __m512 dx = _mm512_set1_ps(xa->d);

            for (int q = 0; q < 4; q++)
                mm = _mm512_dpwssd_epi32(mm, M[q], bc4(&xa->bs32[2 * q]));
            acc[c] = _mm512_fmadd_ps(_mm512_mul_ps(dw, dx),
                                     _mm512_cvtepi32_ps(_mm512_load_si512((const void *)(tot + 16 * c))),
                                     acc[c]);
            acc[c] = _mm512_fnmadd_ps(_mm512_mul_ps(dm, dx), _mm512_cvtepi32_ps(mm), acc[c]);
        }
    }
    for (int c = 0; c < 16; c++)
        _mm512_mask_storeu_ps(y + c * ldy, vm, acc[c]);
}

static const panel_fn amx_fns[ENG_TYPE_COUNT] = {
    [ENG_TYPE_Q4_0] = q4_0_amx, [ENG_TYPE_Q4_1] = q4_1_amx, [ENG_TYPE_Q5_0] = q5_0_amx,
    [ENG_TYPE_Q5_1] = q5_1_amx, [ENG_TYPE_Q8_0] = q8_0_amx, [ENG_TYPE_Q4_K] = q4_k_amx,
};

/* Panels g0..g1 against activation rows 0..m16 (a multiple of 16). */
AMXT static void amx_panels(panel_fn f, const uint8_t *wp, size_t panel_bytes, int64_t nb,
                            int64_t g0, int64_t g1, int64_t rows, const uint8_t *x, size_t xs,
                            int64_t m16, float *y, int64_t ldy)
{
    amx_config();
    for (int64_t g = g0; g < g1; g++) {
        int64_t r = g * G, nv = rows - r;
        __mmask16 vm = nv >= G ? (__mmask16)0xffff : (__mmask16)((1u << nv) - 1);

        for (int64_t j = 0; j < m16; j += 16)
            f(wp + (size_t)g * panel_bytes, nb, x + (size_t)j * xs, xs, y + j * ldy + r, ldy, vm);
    }
    _tile_release();
}

void eng_pack_avx512_panels(uint32_t wtype, const uint8_t *wp, size_t panel_bytes,
                            int64_t nb, int64_t g0, int64_t g1, int64_t rows,
                            const uint8_t *x, size_t xs, int64_t m, float *y, int64_t ldy)
{
    const panel_fn *f = fns[wtype];

    /* AMX pays for batched decode (measured +5-25% over VNNI at 16-32
     * rows, 32-block types); at prefill sizes the VNNI loop is as fast or
     * faster (q8_0, 512 rows). Same bits either way. */
    if (m >= 16 && m <= 64 && amx_fns[wtype] && eng_pack_amx_on()) {
        int64_t m16 = m & ~(int64_t)15;

        amx_panels(amx_fns[wtype], wp, panel_bytes, nb, g0, g1, rows, x, xs, m16, y, ldy);
        x += (size_t)m16 * xs;
        y += m16 * ldy;
        m -= m16;
        if (!m)
            return;
    }
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
