/*
 * test-engine-pack.c - the packed GEMM path (eng_quant.h "Packed
 * weights"): for every packed type, eng_matmul_packed against the f64
 * dot of the same quantized operands (the weight rows dequantized by the
 * scalar reference, the activation codes times their scale), within
 * 1e-5 * sum |w x|; and bitwise identical results whatever the number of
 * activation rows per call, the row range and the column offset (batch
 * invariance, eng_step.h S1). Rows not a multiple of 16 exercise the
 * padded last panel; a NaN activation block poisons exactly its row.
 * Calls on 1..64 activation rows run 16-row AMX tiles where the CPU has
 * AMX-INT8 (32-block types and q4_k; the 70-row call too, its last 6
 * rows VNNI) and the VNNI kernel for the rest, the one-row calls and
 * those under 16 rows VNNI only: the bitwise checks hold
 * the two kernels to the same bits, for an even and an odd number of
 * blocks per row, and for more blocks than the AMX kernels unpack at a
 * time.
 * The 32-block types' activation rows are the q8_1 row plus -sum(codes),
 * byte for byte. Skips (77) on CPUs without AVX-512 VNNI.
 */
#include "t_util.h"

#include "eng_quant.h"
#include "eng_types.h"
#include "eng_quant_int.h"

#include <errno.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ROWS 37
#define M 70             /* 64 rows in AMX tiles + a VNNI tail; the calls on 1..64 of them too */

static uint64_t seed = 42;

#define CHECK(cond)                                                           \
    do {                                                                      \
        if (!(cond)) {                                                        \
            fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);   \
            fails++;                                                          \
        }                                                                     \
    } while (0)

static float frand(void)
{
    return (float)((double)(t_rand(&seed) % 2000001) / 1000000.0 - 1.0);
}

/* f64 value of activation row j, element i, from its packed-path blocks. */
static double act_val(uint32_t wt, const uint8_t *xr, int i)
{
    if (wt == ENG_TYPE_Q4_K || wt == ENG_TYPE_Q6_K) {
        const struct eng_bq8_kp *b = (const struct eng_bq8_kp *)xr + i / 256;
        return (double)b->d * b->qs[i % 256];
    }
    const struct eng_bq8_p *b = (const struct eng_bq8_p *)xr + i / 32;
    return (double)b->d * b->qs[i % 32];
}

static int check_type(uint32_t wt, int K)
{
    const struct eng_type_info *ti = eng_type_get(wt);
    size_t rb = eng_type_row_size(wt, K), xs = eng_pack_act_row_size(wt, K);
    size_t ps = eng_pack_size(wt, K, ROWS);
    float *wf = malloc(sizeof(float) * K), *xf = malloc(sizeof(float) * K * M);
    uint8_t *w = malloc(rb * ROWS), *wp = malloc(ps), *x = malloc(xs * M);
    float *y = malloc(sizeof(float) * ROWS * M), *y1 = malloc(sizeof(float) * ROWS * M);
    double *wd = malloc(sizeof(double) * K * ROWS);
    float *deq = malloc(sizeof(float) * K);
    int fails = 0;

    CHECK(ps > 0 && xs > 0 && w && wp && x && y && y1 && wd && deq && wf && xf);
    if (fails)
        goto out;
    for (int r = 0; r < ROWS; r++) {
        for (int i = 0; i < K; i++)
            wf[i] = frand() * (1.0f + (float)(r % 5));
        CHECK(eng_quant_row(wt, wf, w + r * rb, K) == 0);
        CHECK(eng_dequant_row(wt, w + r * rb, deq, K) == 0);
        for (int i = 0; i < K; i++)
            wd[(size_t)r * K + i] = deq[i];
    }
    for (int i = 0; i < K * M; i++)
        xf[i] = frand() * 3.0f;
    for (int j = 0; j < M; j++)
        CHECK(eng_pack_act_row(wt, xf + j * K, x + j * xs, K) == 0);
    /* 32-block activation rows: the q8_1 row widened with -sum(codes) */
    if (wt != ENG_TYPE_Q4_K && wt != ENG_TYPE_Q6_K)
        for (int j = 0; j < M; j++) {
            struct eng_bq8_1 q[K / 32];
            struct eng_bq8_p e[K / 32];

            memset(e, 0, sizeof(struct eng_bq8_p) * (size_t)(K / 32));
            CHECK(eng_quant_row(ENG_TYPE_Q8_1, xf + j * K, q, K) == 0);
            for (int b = 0; b < K / 32; b++) {
                e[b].d = q[b].d;
                e[b].s = q[b].s;
                for (int i = 0; i < 32; i++)
                    e[b].nsum -= q[b].qs[i];
                memcpy(e[b].qs, q[b].qs, 32);
            }
            CHECK(!memcmp(e, x + j * xs, sizeof(struct eng_bq8_p) * (size_t)(K / 32)));
        }
    CHECK(eng_pack(wt, w, rb, K, ROWS, wp) == 0);
    memset(y, 0, sizeof(float) * ROWS * M);
    eng_matmul_packed(wt, wp, K, ROWS, 0, ROWS, x, xs, M, y, ROWS);
    for (int j = 0; j < M; j++)
        for (int r = 0; r < ROWS; r++) {
            double ref = 0, mag = 0;

            for (int i = 0; i < K; i++) {
                double p = wd[(size_t)r * K + i] * act_val(wt, x + j * xs, i);
                ref += p;
                mag += fabs(p);
            }
            if (!(fabs(y[j * ROWS + r] - ref) <= 1e-5 * mag + 1e-30)) {
                fprintf(stderr, "%s K=%d row %d col %d: %.9g vs f64 %.9g (mag %g)\n", ti->name,
                        K, r, j, y[j * ROWS + r], ref, mag);
                fails++;
                goto out;
            }
        }
    /* one column at a time, in two row ranges: bit for bit the same */
    memset(y1, 0, sizeof(float) * ROWS * M);
    for (int j = 0; j < M; j++) {
        eng_matmul_packed(wt, wp, K, ROWS, 0, 16, x + j * xs, xs, 1, y1 + j * ROWS, ROWS);
        eng_matmul_packed(wt, wp, K, ROWS, 16, ROWS, x + j * xs, xs, 1, y1 + j * ROWS, ROWS);
    }
    CHECK(!memcmp(y, y1, sizeof(float) * ROWS * M));
    /* every batch size 1..64 on the first columns (AMX for whole groups of
     * 16 where the CPU has it, VNNI for the rest): the same bits as the
     * VNNI-only call on all M */
    for (int m = 1; m <= 64 && !fails; m++) {
        memset(y1, 0, sizeof(float) * ROWS * M);
        eng_matmul_packed(wt, wp, K, ROWS, 0, ROWS, x, xs, m, y1, ROWS);
        if (memcmp(y, y1, sizeof(float) * ROWS * (size_t)m)) {
            fprintf(stderr, "%s K=%d: %d columns in one call differ\n", ti->name, K, m);
            fails++;
        }
    }
    /* columns 3.. in a call of their own (other column groupings) */
    memset(y1, 0, sizeof(float) * ROWS * M);
    eng_matmul_packed(wt, wp, K, ROWS, 0, ROWS, x + 3 * xs, xs, M - 3, y1 + 3 * ROWS, ROWS);
    CHECK(!memcmp(y + 3 * ROWS, y1 + 3 * ROWS, sizeof(float) * ROWS * (M - 3)));
    /* a NaN in activation row 2 poisons row 2's outputs only */
    xf[2 * K + 7] = NAN;
    CHECK(eng_pack_act_row(wt, xf + 2 * K, x + 2 * xs, K) == -EDOM);
    eng_matmul_packed(wt, wp, K, ROWS, 0, ROWS, x, xs, M, y1, ROWS);
    for (int r = 0; r < ROWS; r++) {
        CHECK(isnan(y1[2 * ROWS + r]));
        CHECK(y1[r] == y[r] && y1[5 * ROWS + r] == y[5 * ROWS + r]);
    }
    if (fails)
        fprintf(stderr, "%s K=%d: %d checks failed\n", ti->name, K, fails);
out:
    free(wf), free(xf), free(w), free(wp), free(x), free(y), free(y1), free(wd), free(deq);
    return fails;
}

int main(void)
{
    const uint32_t types[] = { ENG_TYPE_Q4_0, ENG_TYPE_Q4_1, ENG_TYPE_Q5_0, ENG_TYPE_Q5_1,
                               ENG_TYPE_Q8_0, ENG_TYPE_Q4_K, ENG_TYPE_Q6_K };
    int fails = 0;

    if (!eng_pack_supported(ENG_TYPE_Q4_0)) {
        printf("skip: no AVX-512 VNNI, no packed kernels\n");
        return 77;
    }
    if (eng_pack_supported(ENG_TYPE_F32) || eng_pack_size(ENG_TYPE_Q4_0, 33, 4) ||
        eng_pack(ENG_TYPE_Q4_0, NULL, 0, 31, 1, NULL) != -EINVAL) {
        fprintf(stderr, "unsupported shapes accepted\n");
        fails++;
    }
    printf("AMX tiles: %s\n", eng_pack_amx_enable() ? "on" : "off");
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        int kq = types[i] == ENG_TYPE_Q4_K || types[i] == ENG_TYPE_Q6_K;
        /* an even and an odd number of blocks per row (the AMX loop takes
         * blocks in pairs), and more blocks than one AMX chunk (32 blocks,
         * 4 q4_k super-blocks: the sums go through y between chunks) */
        int f = check_type(types[i], 512) + check_type(types[i], kq ? 768 : 96) +
                check_type(types[i], kq ? 1280 : 1312);

        printf("%-5s %s\n", eng_type_get(types[i])->name, f ? "FAIL" : "ok");
        fails += f;
    }
    return fails ? 1 : 0;
}
