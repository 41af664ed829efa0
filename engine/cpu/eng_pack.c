/*
 * eng_pack.c - the packed GEMM path of eng_quant.h: weight panels of
 * ENG_PACK_ROWS rows (built once, scalar code), the packed-path
 * activation formats, and the dispatch to the AVX-512 VNNI kernels
 * (eng_pack_avx512.c).
 *
 * Panel layouts, per block of k (G = 16 rows, r = row in the panel,
 * codes of elements 4s..4s+3 of row r at [s][r][0..3] unless noted):
 *
 *   q4_0  d[G] | nib[4][G][4]                    (lo nibble: step s,
 *   q4_1  d[G] | m[G] | nib[4][G][4]              hi nibble: step s+4)
 *   q5_0  d[G] | qh[8] (u64) | nib[4][G][4]      qh[s] bit 4r+b: 5th bit
 *   q5_1  d[G] | m[G] | qh[8] | nib[4][G][4]      of element 4s+b
 *   q8_0  d[G] | u8[8][G][4]                     code q+128 (= q ^ 0x80)
 *   q4_k  d[G] | dmin[G] | sc[8][G] | mn[4][G][2] | nib[4][8][G][4]
 *         (nib[c][s]: lo nibble = sub-block 2c step s, hi = 2c+1 step s,
 *          exactly the ggml bytes 32c+4s..+3)
 *   q6_k  d[G] | sc[16][G] (i8) | ql[16][2][G][4] | qh[16][G][4]
 *         (group u of 16 elements: ql[u][0] = steps 4u (lo), 4u+1 (hi);
 *          ql[u][1] = steps 4u+2, 4u+3; qh[u] bits 2i..2i+1 = the high
 *          two bits of step 4u+i)
 */
#include "eng_quant_int.h"

#include <cpuid.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "eng_cpu.h"
#include "eng_fp16.h"
#include "favo_base.h"

#define G ENG_PACK_ROWS

static int64_t blck(uint32_t t)
{
    return t == ENG_TYPE_Q4_K || t == ENG_TYPE_Q6_K ? ENG_QK_K : ENG_QK;
}

/* ---- AMX permission (eng_quant_int.h) ---- */

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

static pthread_once_t amx_once = PTHREAD_ONCE_INIT;
static int amx_on;

static void amx_init(void)
{
    unsigned a, b, c, d, f = eng_cpu_features();
    const char *cap = getenv("FAVO_CPU");
    int on = 0;

    /* CPUID.(7,0):EDX bit 24 AMX-TILE, bit 25 AMX-INT8 */
    if ((f & ENG_CPU_AVX512) && (f & ENG_CPU_AVX512VNNI) && !(cap && *cap) &&
        __get_cpuid_count(7, 0, &a, &b, &c, &d) && (d >> 24 & 1) && (d >> 25 & 1))
        on = syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
    __atomic_store_n(&amx_on, on, __ATOMIC_RELEASE);
}

int eng_pack_amx_enable(void)
{
    pthread_once(&amx_once, amx_init);
    return eng_pack_amx_on();
}

int eng_pack_amx_on(void)
{
    return __atomic_load_n(&amx_on, __ATOMIC_ACQUIRE);
}

bool eng_pack_supported(uint32_t wtype)
{
    unsigned f = eng_cpu_features();

    return eng_pack_pblock_bytes(wtype) && (f & ENG_CPU_AVX512) && (f & ENG_CPU_AVX512VNNI);
}

size_t eng_pack_size(uint32_t wtype, int64_t k, int64_t rows)
{
    if (!eng_pack_supported(wtype) || k <= 0 || rows <= 0 || k % blck(wtype))
        return 0;
    return (size_t)((rows + G - 1) / G) * (size_t)(k / blck(wtype)) * eng_pack_pblock_bytes(wtype);
}

/* ---- packing, one panel block at a time; row r NULL = padding ---- */

static void put16(uint8_t *p, int r, uint16_t v)
{
    memcpy(p + 2 * r, &v, 2);
}

static void pack_nib(uint8_t *nib, int r, const uint8_t *qs)
{
    for (int s = 0; s < 4; s++)
        memcpy(nib + (s * G + r) * 4, qs + 4 * s, 4);
}

static void pack_qh(uint8_t *qhp, int r, const uint8_t *qh4)
{
    uint32_t h;

    memcpy(&h, qh4, 4);
    for (int s = 0; s < 8; s++) {
        uint64_t v;

        memcpy(&v, qhp + 8 * s, 8);
        for (int b = 0; b < 4; b++)
            v |= (uint64_t)((h >> (4 * s + b)) & 1) << (4 * r + b);
        memcpy(qhp + 8 * s, &v, 8);
    }
}

static void pack32(uint32_t t, uint8_t *o, const uint8_t *src[G])
{
    int has_m = t == ENG_TYPE_Q4_1 || t == ENG_TYPE_Q5_1;
    int has_h = t == ENG_TYPE_Q5_0 || t == ENG_TYPE_Q5_1;
    uint8_t *m = o + 2 * G, *qh = m + (has_m ? 2 * G : 0), *nib = qh + (has_h ? 64 : 0);

    memset(o, 0, eng_pack_pblock_bytes(t));
    for (int r = 0; r < G; r++) {
        const uint8_t *b = src[r];
        uint16_t d, mm;

        if (!b)
            continue;
        memcpy(&d, b, 2);
        put16(o, r, d);
        if (t == ENG_TYPE_Q8_0) {
            uint8_t *u = o + 2 * G;
            for (int s = 0; s < 8; s++)
                for (int j = 0; j < 4; j++)
                    u[(s * G + r) * 4 + j] = b[2 + 4 * s + j] ^ 0x80;
            continue;
        }
        if (has_m) {
            memcpy(&mm, b + 2, 2);
            put16(m, r, mm);
        }
        if (has_h)
            pack_qh(qh, r, b + (has_m ? 4 : 2));
        pack_nib(nib, r, b + (has_m ? 4 : 2) + (has_h ? 4 : 0));
    }
}

static void pack_q4_k(uint8_t *o, const struct eng_bq4_k *src[G])
{
    uint8_t *dmin = o + 2 * G, *sc = o + 4 * G, *mn = sc + 8 * G, *nib = mn + 8 * G;

    memset(o, 0, eng_pack_pblock_bytes(ENG_TYPE_Q4_K));
    for (int r = 0; r < G; r++) {
        const struct eng_bq4_k *b = src[r];

        if (!b)
            continue;
        put16(o, r, b->d);
        put16(dmin, r, b->dmin);
        for (int j = 0; j < 8; j++) {
            uint8_t s, mm;

            eng_k_scale_min(j, b->scales, &s, &mm);
            sc[j * G + r] = s;
            mn[((j / 2) * G + r) * 2 + (j & 1)] = mm;
        }
        for (int c = 0; c < 4; c++)
            for (int s = 0; s < 8; s++)
                memcpy(nib + ((c * 8 + s) * G + r) * 4, b->qs + 32 * c + 4 * s, 4);
    }
}

/* q6_k code (0..63) of element e, as ggml lays it out. */
static int q6_code(const struct eng_bq6_k *b, int e)
{
    int n = e / 128, l = e % 128, i = l / 32, j = l % 32;
    const uint8_t *ql = b->ql + 64 * n, *qh = b->qh + 32 * n;
    int lo = (i & 1) ? ql[j + 32] : ql[j];

    lo = (i & 2) ? lo >> 4 : lo & 0xf;
    return lo | (((qh[j] >> (2 * i)) & 3) << 4);
}

static void pack_q6_k(uint8_t *o, const struct eng_bq6_k *src[G])
{
    int8_t *sc = (int8_t *)o + 2 * G;
    uint8_t *ql = o + 2 * G + 16 * G, *qh = ql + 16 * 2 * G * 4;

    memset(o, 0, eng_pack_pblock_bytes(ENG_TYPE_Q6_K));
    for (int r = 0; r < G; r++) {
        const struct eng_bq6_k *b = src[r];

        if (!b)
            continue;
        put16(o, r, b->d);
        for (int u = 0; u < 16; u++) {
            sc[u * G + r] = b->scales[u];
            for (int x = 0; x < 4; x++) {
                int c0 = q6_code(b, 16 * u + x), c1 = q6_code(b, 16 * u + 4 + x);
                int c2 = q6_code(b, 16 * u + 8 + x), c3 = q6_code(b, 16 * u + 12 + x);

                ql[((u * 2 + 0) * G + r) * 4 + x] = (uint8_t)((c0 & 15) | (c1 & 15) << 4);
                ql[((u * 2 + 1) * G + r) * 4 + x] = (uint8_t)((c2 & 15) | (c3 & 15) << 4);
                qh[(u * G + r) * 4 + x] =
                    (uint8_t)((c0 >> 4) | (c1 >> 4) << 2 | (c2 >> 4) << 4 | (c3 >> 4) << 6);
            }
        }
    }
}

int eng_pack(uint32_t wtype, const void *w, size_t w_row_bytes, int64_t k, int64_t rows,
             void *dst)
{
    const struct eng_type_info *ti = eng_type_get(wtype);
    size_t pb = eng_pack_pblock_bytes(wtype);
    int64_t nb, ng;
    uint8_t *o = dst;

    if (!eng_pack_size(wtype, k, rows) || !ti)
        return -EINVAL;
    (void)eng_pack_amx_enable();   /* while setting up, before any seccomp filter */
    nb = k / blck(wtype);
    ng = (rows + G - 1) / G;
    for (int64_t g = 0; g < ng; g++)
        for (int64_t b = 0; b < nb; b++, o += pb) {
            const uint8_t *src[G];

            for (int r = 0; r < G; r++) {
                int64_t row = g * G + r;
                src[r] = row < rows ? (const uint8_t *)w + (size_t)row * w_row_bytes +
                                          (size_t)b * ti->size
                                    : NULL;
            }
            if (wtype == ENG_TYPE_Q4_K)
                pack_q4_k(o, (const struct eng_bq4_k **)(void *)src);
            else if (wtype == ENG_TYPE_Q6_K)
                pack_q6_k(o, (const struct eng_bq6_k **)(void *)src);
            else
                pack32(wtype, o, src);
        }
    return 0;
}

/* ---- activations ---- */

uint32_t eng_pack_act_type(uint32_t wtype)
{
    if (!eng_pack_pblock_bytes(wtype))
        return ENG_TYPE_COUNT;
    return blck(wtype) == ENG_QK_K ? ENG_PACK_ACT_K : ENG_PACK_ACT_32;
}

size_t eng_pack_act_row_size(uint32_t wtype, int64_t k)
{
    if (!eng_pack_pblock_bytes(wtype) || k <= 0 || k % blck(wtype))
        return 0;
    if (blck(wtype) == ENG_QK_K)
        return (size_t)(k / ENG_QK_K) * sizeof(struct eng_bq8_kp);
    return (size_t)(k / ENG_QK) * sizeof(struct eng_bq8_p);
}

int eng_pack_act_row(uint32_t wtype, const float *src, void *dst, int64_t k)
{
    int rc = 0, r;

    if (!eng_pack_act_row_size(wtype, k))
        return -EINVAL;
    if (blck(wtype) == ENG_QK_K) {
        struct eng_bq8_kp *o = dst;

        for (int64_t i = 0; i < k / ENG_QK_K; i++, o++) {
            struct eng_bq8_k q;

            if ((r = eng_quant_row(ENG_TYPE_Q8_K, src + i * ENG_QK_K, &q, ENG_QK_K)))
                rc = r;
            o->d = q.d;
            for (int j = 0; j < 16; j++)
                o->off6[j] = -32 * q.bsums[j];
            for (int j = 0; j < 8; j++)
                o->bs32[j] = (int16_t)(q.bsums[2 * j] + q.bsums[2 * j + 1]);
            memcpy(o->qs, q.qs, sizeof(o->qs));
            memset(o->pad, 0, sizeof(o->pad));
        }
        return rc;
    }
    /* one AVX2 pass where the CPU has it (always, with the packed kernels) */
    if (eng_cpu_features() & ENG_CPU_AVX2)
        return eng_quant_avx2_act(ENG_PACK_ACT_32, src, dst, k);
    /* else the q8_1 row first, then widen block by block, back to front
     * so the wider blocks never overwrite unread ones */
    {
        int64_t nb = k / ENG_QK;
        struct eng_bq8_1 *q = dst;
        struct eng_bq8_p *o = dst;

        rc = eng_quant_row(ENG_TYPE_Q8_1, src, dst, k);
        for (int64_t i = nb - 1; i >= 0; i--) {
            struct eng_bq8_1 b = q[i];
            int sum = 0;

            for (int j = 0; j < ENG_QK; j++)
                sum += b.qs[j];
            o[i].d = b.d;
            o[i].s = b.s;
            o[i].nsum = -sum;
            o[i].pad = 0;
            memcpy(o[i].qs, b.qs, ENG_QK);
        }
    }
    return rc;
}

void eng_matmul_packed(uint32_t wtype, const void *wp, int64_t k, int64_t rows, int64_t r0,
                       int64_t r1, const void *x, size_t x_row_bytes, int64_t m, float *y,
                       int64_t ldy)
{
    int64_t nb = k / blck(wtype);

    FAVO_ASSERT(eng_pack_supported(wtype) && r0 % G == 0 && r1 <= rows);
    if (r0 >= r1 || m <= 0)
        return;
    eng_pack_avx512_panels(wtype, wp, (size_t)nb * eng_pack_pblock_bytes(wtype), nb, r0 / G,
                           (r1 + G - 1) / G, r1, x, x_row_bytes, m, y, ldy);
}
