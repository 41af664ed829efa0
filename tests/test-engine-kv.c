/*
 * test-engine-kv.c - the paged KV block pool: ids handed out once, -ENOSPC
 * when exhausted, released blocks zeroed (K1, no retention), block
 * addressing disjoint across blocks, layers and heads, double release
 * aborts (K2), and the pool memory excluded from core dumps (K3).
 */
#include "t_util.h"

#include "eng_kv.h"

#include <errno.h>
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

/* Every (block, layer, head, slot) of K and V has its own floats. */
static void test_addressing_disjoint(void **state)
{
    struct eng_hparams h = hp();
    struct eng_kv kv;
    size_t n_floats, seen = 0;
    unsigned char *mark;

    assert_int_equal(eng_kv_init(&kv, &h, 4), 0);
    n_floats = kv.mem_bytes / sizeof(float);
    mark = calloc(n_floats, 1);
    assert_non_null(mark);
    for (int32_t b = 0; b < 4; b++)
        for (uint32_t l = 0; l < h.n_layer; l++)
            for (uint32_t hh = 0; hh < h.n_head_kv; hh++) {
                float *k = eng_kv_k(&kv, b, l, hh), *v = eng_kv_v(&kv, b, l, hh);

                for (size_t i = 0; i < (size_t)ENG_KV_BLOCK * h.head_dim; i++, seen++) {
                    size_t off = (size_t)(k + i - kv.mem);

                    assert_true(off < n_floats);
                    assert_int_equal(mark[off], 0);
                    mark[off] = 1;
                }
                for (size_t i = 0; i < (size_t)ENG_KV_BLOCK * h.head_dim_v; i++, seen++) {
                    size_t off = (size_t)(v + i - kv.mem);

                    assert_true(off < n_floats);
                    assert_int_equal(mark[off], 0);
                    mark[off] = 1;
                }
            }
    assert_int_equal(seen, n_floats);         /* and nothing is left over */
    free(mark);
    eng_kv_destroy(&kv);
}

/* K1: a released block is all zero bytes, and only that block changed. */
static void test_release_zeroes(void **state)
{
    struct eng_hparams h = hp();
    struct eng_kv kv;
    int32_t a, b;
    const unsigned char *p;

    assert_int_equal(eng_kv_init(&kv, &h, 2), 0);
    a = eng_kv_block_alloc(&kv);
    b = eng_kv_block_alloc(&kv);
    for (uint32_t l = 0; l < h.n_layer; l++)
        for (uint32_t hh = 0; hh < h.n_head_kv; hh++) {
            for (int i = 0; i < ENG_KV_BLOCK * 8; i++) {
                eng_kv_k(&kv, a, l, hh)[i] = 1.5f;
                eng_kv_k(&kv, b, l, hh)[i] = 2.5f;
            }
            for (int i = 0; i < ENG_KV_BLOCK * 4; i++) {
                eng_kv_v(&kv, a, l, hh)[i] = -1.0f;
                eng_kv_v(&kv, b, l, hh)[i] = -2.0f;
            }
        }
    eng_kv_block_release(&kv, a);
    p = (const unsigned char *)kv.mem + (size_t)a * kv.block_bytes;
    for (size_t i = 0; i < kv.block_bytes; i++)
        assert_int_equal(p[i], 0);
    assert_true(eng_kv_k(&kv, b, 2, 1)[5] == 2.5f);
    assert_true(eng_kv_v(&kv, b, 0, 0)[3] == -2.0f);
    eng_kv_block_release(&kv, b);
    eng_kv_destroy(&kv);
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
        cmocka_unit_test(test_double_release_aborts),
        cmocka_unit_test(test_dontdump),
    };

    return cmocka_run_group_tests(tests, NULL, NULL) ? 1 : 0;
}
