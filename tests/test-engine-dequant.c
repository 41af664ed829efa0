/*
 * test-engine-dequant.c - eng_dequant_row against the gguf Python
 * package's dequantizers, on the fixtures tests/fixtures/quant/make_fixtures.py
 * wrote (random valid blocks of every weight type, with subnormal, zero and
 * negative scales; f16/bf16 rows of arbitrary bits incl. NaN and inf).
 *
 * With arguments "--dequant TYPE N IN OUT" it is instead the helper
 * tests/test-engine-dequant-live.py drives: it reads N elements' worth of
 * TYPE blocks from IN and writes eng_dequant_row's f32 values to OUT.
 *
 * Tolerance: none. favo performs the same f32 operations in the same order
 * as the gguf package (d*sc, then *q, then -dmin*m), so every value must be
 * bit-identical; a NaN must meet a NaN (payloads are not compared).
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eng_quant.h"
#include "t_util.h"

static int check_type(const char *dir, const char *name)
{
    char path[1200];
    size_t len = 0;
    char *buf;
    uint32_t type, n, nbytes;
    int bad = 0;

    snprintf(path, sizeof(path), "%s/%s.bin", dir, name);
    buf = t_read_file(path, &len);
    if (!buf) {
        fprintf(stderr, "FAIL %s: cannot read %s\n", name, path);
        return 1;
    }
    if (len < 16 || memcmp(buf, "FQD1", 4)) {
        fprintf(stderr, "FAIL %s: bad fixture header\n", name);
        free(buf);
        return 1;
    }
    memcpy(&type, buf + 4, 4);
    memcpy(&n, buf + 8, 4);
    memcpy(&nbytes, buf + 12, 4);
    if (len != 16 + (size_t)nbytes + 4 * (size_t)n ||
        eng_type_row_size(type, n) != nbytes) {
        fprintf(stderr, "FAIL %s: fixture size mismatch\n", name);
        free(buf);
        return 1;
    }
    /* copy to aligned buffers: the fixture blocks start at byte 16 */
    void *blocks = aligned_alloc(64, ((size_t)nbytes + 63) / 64 * 64);
    float *exp = malloc(4 * (size_t)n), *got = malloc(4 * (size_t)n);
    memcpy(blocks, buf + 16, nbytes);
    memcpy(exp, buf + 16 + nbytes, 4 * (size_t)n);
    memset(got, 0xa5, 4 * (size_t)n);
    int rc = eng_dequant_row(type, blocks, got, n);
    if (rc) {
        fprintf(stderr, "FAIL %s: eng_dequant_row = %d\n", name, rc);
        bad++;
    }
    for (uint32_t i = 0; i < n && !rc; i++) {
        uint32_t a, b;
        memcpy(&a, &exp[i], 4);
        memcpy(&b, &got[i], 4);
        if (isnan(exp[i]) && isnan(got[i]))
            continue;
        if (a != b) {
            if (bad < 5)
                fprintf(stderr, "FAIL %s: element %u: gguf %.9g (0x%08x) favo %.9g (0x%08x)\n",
                        name, i, exp[i], a, got[i], b);
            bad++;
        }
    }
    /* n not a whole number of blocks, unknown types */
    if (type != 0 && type != 1 && type != 30 && eng_dequant_row(type, blocks, got, n - 1) != -EINVAL) {
        fprintf(stderr, "FAIL %s: partial block accepted\n", name);
        bad++;
    }
    printf("%-5s %5u elements: %s\n", name, n, bad ? "MISMATCH" : "bit-exact");
    free(blocks);
    free(exp);
    free(got);
    free(buf);
    return bad ? 1 : 0;
}

static int helper(char **argv)
{
    int type = eng_type_by_name(argv[2]);
    long long n = atoll(argv[3]);
    size_t len = 0, need;
    char *in;
    float *out;
    FILE *f;

    if (type < 0 || n <= 0 || !(need = eng_type_row_size((uint32_t)type, (uint64_t)n))) {
        fprintf(stderr, "--dequant: bad type '%s' or count %lld\n", argv[2], n);
        return 2;
    }
    in = t_read_file(argv[4], &len);
    if (!in || len != need) {
        fprintf(stderr, "--dequant: %s: want %zu bytes, have %zu\n", argv[4], need, len);
        free(in);
        return 2;
    }
    void *blocks = aligned_alloc(64, (need + 63) / 64 * 64);
    memcpy(blocks, in, need);
    out = malloc(4 * (size_t)n);
    int rc = eng_dequant_row((uint32_t)type, blocks, out, n);
    f = fopen(argv[5], "wb");
    if (rc || !f || fwrite(out, 4, (size_t)n, f) != (size_t)n) {
        fprintf(stderr, "--dequant: rc %d / cannot write %s\n", rc, argv[5]);
        rc = 2;
    }
    if (f && fclose(f))
        rc = 2;
    free(blocks);
    free(out);
    free(in);
    return rc ? 2 : 0;
}

int main(int argc, char **argv)
{
    static const char *names[] = { "f32", "f16", "bf16", "q4_0", "q4_1", "q5_0",
                                   "q5_1", "q8_0", "q4_k", "q5_k", "q6_k" };
    char dir[1024];
    float f[32];
    uint8_t blk[64] = { 0 };
    int fails = 0;

    if (argc == 6 && !strcmp(argv[1], "--dequant"))
        return helper(argv);
    snprintf(dir, sizeof(dir), "%s/tests/fixtures/quant", t_env("FAVO_SRC", "."));
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        fails += check_type(dir, names[i]);
    if (eng_dequant_row(ENG_TYPE_COUNT, blk, f, 32) != -EINVAL ||
        eng_dequant_row(4, blk, f, 32) != -EINVAL || /* 4: not a GGUF type */
        eng_dequant_row(ENG_TYPE_Q4_0, blk, f, -32) != -EINVAL) {
        fprintf(stderr, "FAIL: unknown type / negative n accepted\n");
        fails++;
    }
    return fails ? 1 : 0;
}
