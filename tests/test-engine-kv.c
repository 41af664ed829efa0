/*
 * test-engine-kv.c - the paged KV block pool: ids handed out once, -ENOSPC
 * when exhausted, released blocks zeroed (K1, no retention), block
 * addressing disjoint across blocks, layers and heads, double release
 * aborts (K2), and the pool memory excluded from core dumps (K3).
 */
#include "t_util.h"

#include "eng_fp16.h"
#include "eng_kv.h"

#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

static struct eng_hparams hp(void)
{
    struct eng_hparams h = { 0 };

    h.n_layer = 3;
    h.n_head_kv = 2;
    h.head_dim = 8;
    h.head_dim_v = 4;
    return h;
}

static void test_alloc_exhaust_release(void **state)
{
    struct eng_hparams h = hp();
    struct eng_kv kv;
    int32_t ids[8];

    assert_int_equal(eng_kv_init(&kv, &h, 8), 0);
    for (int i = 0; i < 8; i++) {
        ids[i] = eng_kv_block_alloc(&kv);
        assert_int_equal(ids[i], i);          /* a fresh pool hands out 0, 1, ... */
    }
    assert_int_equal(eng_kv_block_alloc(&kv), -ENOSPC);
    eng_kv_block_release(&kv, ids[3]);
    assert_int_equal(eng_kv_block_alloc(&kv), 3);
    assert_int_equal(kv.n_free, 0);
    for (int i = 0; i < 8; i++)
        eng_kv_block_release(&kv, ids[i]);
    assert_int_equal(kv.n_free, 8);
    eng_kv_destroy(&kv);
    assert_int_equal(eng_kv_init(&kv, &h, 0), -EINVAL);
}

/* Every (block, layer, head, slot) of K and V has its own element, in
 * both element types, and the block size follows the type. */
static void addressing_disjoint(enum eng_kv_type t)
{
    struct eng_hparams h = hp();
    struct eng_kv kv;
    size_t n_el, seen = 0, esz = t == ENG_KV_F16 ? 2 : 4;
    unsigned char *mark;

    assert_int_equal(eng_kv_init_type(&kv, &h, 4, t), 0);
    assert_int_equal(kv.block_bytes, eng_kv_block_bytes_for(&h, t));
    assert_int_equal(kv.block_bytes, (size_t)3 * 2 * 16 * (8 + 4) * esz);
    n_el = kv.mem_bytes / esz;
    mark = calloc(n_el, 1);
    assert_non_null(mark);
    for (int32_t b = 0; b < 4; b++)
        for (uint32_t l = 0; l < h.n_layer; l++)
            for (uint32_t hh = 0; hh < h.n_head_kv; hh++) {
                const char *k = eng_kv_kp(&kv, b, l, hh), *v = eng_kv_vp(&kv, b, l, hh);

                for (size_t i = 0; i < (size_t)ENG_KV_BLOCK * h.head_dim; i++, seen++) {
                    size_t off = (size_t)(k + i * esz - (const char *)kv.mem) / esz;

                    assert_true(off < n_el);
                    assert_int_equal(mark[off], 0);
                    mark[off] = 1;
                }
                for (size_t i = 0; i < (size_t)ENG_KV_BLOCK * h.head_dim_v; i++, seen++) {
                    size_t off = (size_t)(v + i * esz - (const char *)kv.mem) / esz;

                    assert_true(off < n_el);
                    assert_int_equal(mark[off], 0);
                    mark[off] = 1;
                }
            }
    assert_int_equal(seen, n_el);             /* and nothing is left over */
    if (t == ENG_KV_F32)                      /* the float accessors agree */
        assert_ptr_equal(eng_kv_k_at(&kv, 2, 1, 1, 3, 5),
                         (float *)eng_kv_kp(&kv, 2, 1, 1) + 5 * ENG_KV_BLOCK + 3);
    free(mark);
    eng_kv_destroy(&kv);
}

static void test_addressing_disjoint(void **state)
{
    addressing_disjoint(ENG_KV_F32);
    addressing_disjoint(ENG_KV_F16);
    assert_int_equal(eng_kv_init_type(&(struct eng_kv){ 0 }, &(struct eng_hparams){ .n_layer = 1,
                                      .n_head_kv = 1, .head_dim = 8, .head_dim_v = 8 }, 1,
                                      (enum eng_kv_type)7), -EINVAL);
}

/* K1: a released block is all zero bytes, and only that block changed. */
static void release_zeroes(enum eng_kv_type t)
{
    struct eng_hparams h = hp();
    struct eng_kv kv;
    int32_t a, b;
    const unsigned char *p;

    assert_int_equal(eng_kv_init_type(&kv, &h, 2, t), 0);
    a = eng_kv_block_alloc(&kv);
    b = eng_kv_block_alloc(&kv);
    for (uint32_t l = 0; l < h.n_layer; l++)
        for (uint32_t hh = 0; hh < h.n_head_kv; hh++) {
            memset(eng_kv_kp(&kv, a, l, hh), 0x3c, (size_t)ENG_KV_BLOCK * 8 * kv.esz);
            memset(eng_kv_kp(&kv, b, l, hh), 0x41, (size_t)ENG_KV_BLOCK * 8 * kv.esz);
            memset(eng_kv_vp(&kv, a, l, hh), 0xbc, (size_t)ENG_KV_BLOCK * 4 * kv.esz);
            memset(eng_kv_vp(&kv, b, l, hh), 0xc0, (size_t)ENG_KV_BLOCK * 4 * kv.esz);
        }
    eng_kv_block_release(&kv, a);
    p = (const unsigned char *)kv.mem + (size_t)a * kv.block_bytes;
    for (size_t i = 0; i < kv.block_bytes; i++)
        assert_int_equal(p[i], 0);
    assert_int_equal(((const unsigned char *)eng_kv_kp(&kv, b, 2, 1))[5], 0x41);
    assert_int_equal(((const unsigned char *)eng_kv_vp(&kv, b, 0, 0))[3], 0xc0);
    eng_kv_block_release(&kv, b);
    eng_kv_destroy(&kv);
}

static void test_release_zeroes(void **state)
{
    release_zeroes(ENG_KV_F32);
    release_zeroes(ENG_KV_F16);
}

/* f16 writes: nearest even (eng_f32_to_f16, itself checked against the
 * gguf package elsewhere), clamped to +-65504, NaN kept, infinities
 * clamped; the AVX-512 path gives the same bits as the scalar one, at
 * every length and both strides. */
static void test_put_f16(void **state)
{
    enum { N = 67 };
    float src[N];
    uint16_t a[N * ENG_KV_BLOCK], b[N * ENG_KV_BLOCK];
    uint32_t x = 12345;

    for (int i = 0; i < N; i++) {
        x = x * 1664525u + 1013904223u;
        src[i] = ldexpf((float)(int32_t)x, -(int)(x % 60));    /* wide range, subnormals */
    }
    src[0] = 65504.0f;
    src[1] = 65519.0f;                /* rounds to 65504 anyway */
    src[2] = 70000.0f;                /* would be inf: clamped */
    src[3] = -INFINITY;
    src[4] = NAN;
    src[5] = 1.0f + 1.0f / 2048;      /* a tie: to even (1.0) */
    src[6] = 1.0f + 3.0f / 2048;      /* a tie: to even (1 + 2/1024) */
    src[7] = 5.9604644775390625e-08f; /* smallest subnormal half */
    src[8] = -0.0f;
    for (uint32_t n = 0; n <= N; n++)
        for (size_t stride = 1; stride <= ENG_KV_BLOCK; stride += ENG_KV_BLOCK - 1) {
            memset(a, 0xee, sizeof(a));
            memset(b, 0xee, sizeof(b));
            for (uint32_t i = 0; i < n; i++) {
                float f = src[i] > 65504.0f ? 65504.0f : src[i] < -65504.0f ? -65504.0f : src[i];

                a[i * stride] = eng_f32_to_f16(f);
            }
            eng_kv_put_f16(b, stride, src, n);
            assert_memory_equal(a, b, sizeof(a));   /* incl. the bytes not written */
        }
    assert_int_equal(a[0], 0x7bff);
    assert_int_equal(a[2 * ENG_KV_BLOCK], 0x7bff);
    assert_int_equal(a[3 * ENG_KV_BLOCK], 0xfbff);
    assert_true((a[4 * ENG_KV_BLOCK] & 0x7c00) == 0x7c00 && (a[4 * ENG_KV_BLOCK] & 0x3ff));
    assert_int_equal(a[5 * ENG_KV_BLOCK], 0x3c00);
    assert_int_equal(a[6 * ENG_KV_BLOCK], 0x3c02);
    assert_int_equal(a[7 * ENG_KV_BLOCK], 0x0001);
    assert_int_equal(a[8 * ENG_KV_BLOCK], 0x8000);
}

/* K2: releasing a block twice is a bug that must abort, not corrupt the
 * free list (a block would then be handed to two sequences). */
static void test_double_release_aborts(void **state)
{
    pid_t pid = fork();
    int st;

    assert_true(pid >= 0);
    if (pid == 0) {
        struct eng_hparams h = hp();
        struct eng_kv kv;
        int32_t a;

        freopen("/dev/null", "w", stderr);
        if (eng_kv_init(&kv, &h, 2))
            _exit(3);
        a = eng_kv_block_alloc(&kv);
        eng_kv_block_release(&kv, a);
        eng_kv_block_release(&kv, a);
        _exit(0);
    }
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFSIGNALED(st) || (WIFEXITED(st) && WEXITSTATUS(st) != 0 &&
                                    WEXITSTATUS(st) != 3));
}

/* K3: the pool is marked MADV_DONTDUMP (smaps shows "dd"). */
static void test_dontdump(void **state)
{
    struct eng_hparams h = hp();
    struct eng_kv kv;
    char *smaps, *line, want[64];
    int found = 0;

    assert_int_equal(eng_kv_init(&kv, &h, 64), 0);
    smaps = t_read_file("/proc/self/smaps", NULL);
    if (!smaps) {
        eng_kv_destroy(&kv);
        skip();
    }
    snprintf(want, sizeof(want), "%lx-", (unsigned long)kv.mem);
    line = strstr(smaps, want);
    if (line) {
        char *vm = strstr(line, "VmFlags:");

        assert_non_null(vm);
        *strchrnul(vm, '\n') = 0;
        found = strstr(vm, " dd") != NULL;
    }
    assert_true(found);
    free(smaps);
    eng_kv_destroy(&kv);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_alloc_exhaust_release),
        cmocka_unit_test(test_addressing_disjoint),
        cmocka_unit_test(test_release_zeroes),
        cmocka_unit_test(test_put_f16),
        cmocka_unit_test(test_double_release_aborts),
        cmocka_unit_test(test_dontdump),
    };

    return cmocka_run_group_tests(tests, NULL, NULL) ? 1 : 0;
}
