/*
 * test-shm-cell-span.c - shm_cell_free_span (cell inv 6): a cell freed with
 * high-water marks scrubs [0, lo) and [hi, size), leaves [lo, hi) as the
 * allocation's zeros, reads back all zero on its next allocation, refuses
 * bad marks without freeing, and aborts (naming the offset) when a byte
 * inside the span was written after all - at the marks always, anywhere in
 * poison mode.
 */
#include "t_util.h"

#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "shm_cell.h"
#include "shm_seg.h"

static const struct shm_cell_cfg cfg2 = {
    .nclasses = 2,
    .classes = { { 4096, 3 }, { 65536, 2 } },
    .nreturn = 1,
};

struct pool_mem {
    struct shm_seg seg;
    void *cells;
    size_t len;
};

static void pool_mem_make(struct pool_mem *m, const struct shm_cell_cfg *cfg)
{
    struct shm_seg_spec regs[1] = { { "cells", shm_cell_pool_size(cfg), 4096 } };

    assert_true(regs[0].size > 0);
    assert_int_equal(shm_seg_create_data(&m->seg, regs, 1), 0);
    m->cells = shm_seg_region(&m->seg, "cells", &m->len);
    assert_int_equal(shm_cell_pool_init(m->cells, m->len, cfg, 7), 0);
    shm_seg_publish(&m->seg);
}

static bool all_bytes(const unsigned char *p, size_t n, unsigned char v)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != v)
            return false;
    return true;
}

static void attach(struct pool_mem *m, struct shm_cell_pool *ing, struct shm_cell_pool *egr)
{
    assert_int_equal(shm_cell_pool_attach(ing, m->cells, m->len, 7, SHM_CELL_ROLE_ALLOCATOR, 0),
                     0);
    assert_int_equal(shm_cell_pool_attach(egr, m->cells, m->len, 7, SHM_CELL_ROLE_USER, 0), 0);
}

/* A 64 KiB cell: the request at the start, records at the end, the middle
 * never written. The marks scrub both ends; the cell comes back zero. */
static void test_span_scrubs_both_ends(void **state)
{
    struct pool_mem m;
    struct shm_cell_pool ing, egr;
    shm_cell_ref_t r, r2;
    unsigned char *d, *d2;
    size_t sz;

    pool_mem_make(&m, &cfg2);
    attach(&m, &ing, &egr);
    assert_int_equal(shm_cell_alloc(&ing, 5000, &r), 0);
    assert_int_equal(shm_cell_get(&ing, r, SHM_CELL_INGRESS, (void **)&d, &sz), 0);
    assert_int_equal(sz, 65536);
    memset(d, 0xcd, 3000);           /* request, ids, egress's area */
    memset(d + sz - 800, 0xee, 800); /* records counted from the end */
    assert_int_equal(shm_cell_give(&ing, r, SHM_CELL_INGRESS, SHM_CELL_EGRESS), 0);
    /* the span must leave out what was written: lo 3000 exactly is fine */
    assert_int_equal(shm_cell_free_span(&egr, r, SHM_CELL_EGRESS, 3000, sz - 800), 0);
    assert_true(all_bytes(d, sz, 0));
    /* stale now, like any freed reference */
    assert_int_equal(shm_cell_free_span(&egr, r, SHM_CELL_EGRESS, 0, sz), -ESTALE);
    assert_int_equal(shm_cell_alloc(&ing, 5000, &r2), 0);
    assert_int_equal(shm_cell_ref_index(r2), shm_cell_ref_index(r));
    assert_int_equal(shm_cell_get(&ing, r2, SHM_CELL_INGRESS, (void **)&d2, &sz), 0);
    assert_ptr_equal(d2, d);
    assert_true(all_bytes(d2, sz, 0));
    /* the allocator's own free with marks (no tail: hi = size) */
    memset(d2, 0x11, 100);
    assert_int_equal(shm_cell_free_span(&ing, r2, SHM_CELL_INGRESS, 100, sz), 0);
    assert_true(all_bytes(d2, sz, 0));
    /* lo = hi: the whole cell, like shm_cell_free */
    assert_int_equal(shm_cell_alloc(&ing, 5000, &r2), 0);
    memset(d2, 0x22, sz);
    assert_int_equal(shm_cell_free_span(&ing, r2, SHM_CELL_INGRESS, sz, sz), 0);
    assert_true(all_bytes(d2, sz, 0));
    shm_seg_destroy(&m.seg);
}

/* Bad marks are refused and free nothing: the owner still holds the cell. */
static void test_span_bad_marks(void **state)
{
    struct pool_mem m;
    struct shm_cell_pool ing, egr;
    shm_cell_ref_t r;
    unsigned char *d;
    size_t sz;

    pool_mem_make(&m, &cfg2);
    attach(&m, &ing, &egr);
    assert_int_equal(shm_cell_alloc(&ing, 100, &r), 0);
    assert_int_equal(shm_cell_get(&ing, r, SHM_CELL_INGRESS, (void **)&d, &sz), 0);
    assert_int_equal(sz, 4096);
    memset(d, 0x5a, 64);
    assert_int_equal(shm_cell_free_span(&ing, r, SHM_CELL_INGRESS, 200, 100), -EINVAL);
    assert_int_equal(shm_cell_free_span(&ing, r, SHM_CELL_INGRESS, 64, sz + 1), -EINVAL);
    assert_int_equal(shm_cell_free_span(&ing, r, SHM_CELL_INGRESS, 64, SIZE_MAX), -EINVAL);
    assert_int_equal(shm_cell_free_span(&egr, r, SHM_CELL_EGRESS, 64, sz), -EPERM);
    assert_int_equal(shm_cell_get(&ing, r, SHM_CELL_INGRESS, (void **)&d, &sz), 0);
    assert_true(all_bytes(d, 64, 0x5a)); /* untouched: nothing was freed */
    assert_int_equal(shm_cell_free_span(&ing, r, SHM_CELL_INGRESS, 64, sz), 0);
    assert_true(all_bytes(d, sz, 0));
    shm_seg_destroy(&m.seg);
}

/* A free whose marks are wrong must abort; returns the child's status. */
static int span_child(unsigned flags, size_t write_at, size_t lo, size_t hi)
{
    struct shm_cell_cfg cfg = cfg2;
    struct pool_mem m;
    struct shm_cell_pool ing, egr;
    pid_t pid;
    int st;

    cfg.flags = flags;
    pool_mem_make(&m, &cfg);
    attach(&m, &ing, &egr);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);
        shm_cell_ref_t r;
        unsigned char *d;
        size_t sz;

        dup2(devnull, 2); /* the abort message is expected */
        if (shm_cell_alloc(&ing, 5000, &r) || shm_cell_get(&ing, r, SHM_CELL_INGRESS,
                                                           (void **)&d, &sz))
            _exit(3);
        memset(d, 0x77, lo);
        d[write_at] = 1;
        if (shm_cell_give(&ing, r, SHM_CELL_INGRESS, SHM_CELL_EGRESS))
            _exit(3);
        (void)shm_cell_free_span(&egr, r, SHM_CELL_EGRESS, lo, hi);
        _exit(0);
    }
    assert_int_equal(waitpid(pid, &st, 0), pid);
    shm_seg_destroy(&m.seg);
    return st;
}

static void test_span_overrun_aborts(void **state)
{
    int st;

    /* one byte past lo: caught at the mark, in every mode */
    st = span_child(0, 2000, 2000, 65536);
    assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT);
    /* just before hi (the records' side) */
    st = span_child(0, 60000 - 1, 2000, 60000);
    assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT);
    /* in the middle: poison (debug) mode checks every byte */
    st = span_child(SHM_CELL_F_POISON, 30000, 2000, 65536);
    assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT);
    /* control: a write below lo is fine */
    st = span_child(0, 1999, 2000, 65536);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    st = span_child(SHM_CELL_F_POISON, 1999, 2000, 65536);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* Poison mode: a span free leaves the whole cell poisoned, and the next
 * allocation verifies it as for shm_cell_free. */
static void test_span_poison_cycle(void **state)
{
    struct shm_cell_cfg cfg = cfg2;
    struct pool_mem m;
    struct shm_cell_pool ing, egr;
    shm_cell_ref_t r;
    unsigned char *d;
    size_t sz;

    cfg.flags = SHM_CELL_F_POISON;
    pool_mem_make(&m, &cfg);
    attach(&m, &ing, &egr);
    assert_int_equal(shm_cell_alloc(&ing, 5000, &r), 0);
    assert_int_equal(shm_cell_get(&ing, r, SHM_CELL_INGRESS, (void **)&d, &sz), 0);
    assert_true(all_bytes(d, sz, 0));
    memset(d, 0x44, 512);
    assert_int_equal(shm_cell_give(&ing, r, SHM_CELL_INGRESS, SHM_CELL_EGRESS), 0);
    assert_int_equal(shm_cell_free_span(&egr, r, SHM_CELL_EGRESS, 512, sz), 0);
    assert_true(all_bytes(d, sz, SHM_CELL_POISON));
    assert_int_equal(shm_cell_alloc(&ing, 5000, &r), 0);
    assert_true(all_bytes(d, sz, 0));
    shm_seg_destroy(&m.seg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_span_scrubs_both_ends),
        cmocka_unit_test(test_span_bad_marks),
        cmocka_unit_test(test_span_overrun_aborts),
        cmocka_unit_test(test_span_poison_cycle),
    };

    return cmocka_run_group_tests(tests, NULL, NULL) ? 1 : 0;
}
