/*
 * test-shm-cell.c - the cell pool: a scrubbed cell reads back as zeros,
 * stale and foreign references are refused, size classes, the return ring
 * across real processes (ingress allocates, egress frees), poison mode
 * catching a write after free, and an allocator restart.
 */
#include "t_util.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
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

#include "shm_cell.h"
#include "shm_seg.h"

SHM_RING_TYPED(t_ref_ring, shm_cell_ref_t)

static const struct shm_cell_cfg cfg3 = {
    .nclasses = 3,
    .classes = { { 256, 4 }, { 4096, 3 }, { 65536, 2 } },
    .nreturn = 2,
};

struct pool_mem {
    struct shm_seg seg;
    void *cells;
    size_t len;
};

/* A data segment holding the pool (and a ring for the cross-process test). */
static void pool_mem_make(struct pool_mem *m, const struct shm_cell_cfg *cfg, size_t ringsz)
{
    struct shm_seg_spec regs[2] = { { "cells", shm_cell_pool_size(cfg), 4096 },
                                    { "ring", ringsz ? ringsz : 64, 0 } };

    assert_true(regs[0].size > 0);
    assert_int_equal(shm_seg_create_data(&m->seg, regs, 2), 0);
    m->cells = shm_seg_region(&m->seg, "cells", &m->len);
    assert_int_equal(shm_cell_pool_init(m->cells, m->len, cfg, 7), 0);
    shm_seg_publish(&m->seg);
}

static bool all_bytes(const void *p, size_t n, unsigned char v)
{
    const unsigned char *c = p;

    for (size_t i = 0; i < n; i++)
        if (c[i] != v)
            return false;
    return true;
}

static void test_scrubbed_cell_reads_zero(void **state)
{
    struct pool_mem m;
    struct shm_cell_pool ing, egr;
    shm_cell_ref_t r, r2;
    void *data, *data2;
    size_t sz;

    pool_mem_make(&m, &cfg3, 0);
    assert_int_equal(shm_cell_pool_attach(&ing, m.cells, m.len, 7, SHM_CELL_ROLE_ALLOCATOR, 0),
                     0);
    assert_int_equal(shm_cell_pool_attach(&egr, m.cells, m.len, 7, SHM_CELL_ROLE_USER, 1), 0);
    assert_int_equal(shm_cell_free_count(&ing, 1), 3);

    assert_int_equal(shm_cell_alloc(&ing, 3000, &r), 0);
    assert_int_equal(shm_cell_ref_class(r), 1);
    assert_int_equal(shm_cell_get(&ing, r, SHM_CELL_INGRESS, &data, &sz), 0);
    assert_int_equal(sz, 4096);
    assert_true(all_bytes(data, sz, 0));
    memset(data, 0xcd, sz); /* a request */
    assert_int_equal(shm_cell_set_len(&ing, r, SHM_CELL_INGRESS, 4000), 0);
    assert_int_equal(shm_cell_set_len(&ing, r, SHM_CELL_INGRESS, 5000), -EINVAL);
    assert_int_equal(shm_cell_give(&ing, r, SHM_CELL_INGRESS, SHM_CELL_BATCHER), 0);
    assert_int_equal(shm_cell_get(&ing, r, SHM_CELL_INGRESS, &data2, &sz), -EPERM);
    assert_int_equal(shm_cell_give(&ing, r, SHM_CELL_BATCHER, SHM_CELL_EGRESS), 0);
    assert_int_equal(shm_cell_free(&egr, r, SHM_CELL_EGRESS), 0);

    /* Scrubbed at free, before the allocator has even seen it. */
    assert_true(all_bytes(data, sz, 0));
    assert_int_equal(shm_cell_free_count(&ing, 1), 2);     /* still in the ring */
    assert_int_equal(shm_cell_alloc(&ing, 3000, &r2), 0);  /* drains, LIFO */
    assert_int_equal(shm_cell_ref_index(r2), shm_cell_ref_index(r));
    assert_int_not_equal(shm_cell_ref_gen(r2), shm_cell_ref_gen(r));
    assert_int_equal(shm_cell_get(&ing, r2, SHM_CELL_INGRESS, &data2, &sz), 0);
    assert_ptr_equal(data2, data);
    assert_true(all_bytes(data2, sz, 0));

    /* The allocator's own free (an early 4xx) scrubs too. */
    memset(data2, 0x11, 100);
    assert_int_equal(shm_cell_free(&ing, r2, SHM_CELL_INGRESS), 0);
    assert_true(all_bytes(data, sz, 0));
    assert_int_equal(shm_cell_free_count(&ing, 1), 3);
    shm_seg_destroy(&m.seg);
}

static void test_stale_and_foreign_refs(void **state)
{
    struct pool_mem m;
    struct shm_cell_pool ing, bat, egr;
    shm_cell_ref_t r, r2;
    void *data;

    pool_mem_make(&m, &cfg3, 0);
    assert_int_equal(shm_cell_pool_attach(&ing, m.cells, m.len, 7, SHM_CELL_ROLE_ALLOCATOR, 0),
                     0);
    assert_int_equal(shm_cell_pool_attach(&bat, m.cells, m.len, 7, SHM_CELL_ROLE_USER, -1), 0);
    assert_int_equal(shm_cell_pool_attach(&egr, m.cells, m.len, 7, SHM_CELL_ROLE_USER, 0), 0);
    assert_int_equal(shm_cell_alloc(&ing, 10, &r), 0);
    assert_int_equal(shm_cell_alloc(&bat, 10, &r2), -EINVAL); /* only the allocator */
    assert_int_equal(shm_cell_give(&ing, r, SHM_CELL_INGRESS, SHM_CELL_FREE), -EINVAL);
    assert_int_equal(shm_cell_give(&ing, r, SHM_CELL_INGRESS, SHM_CELL_EGRESS), 0);
    assert_int_equal(shm_cell_free(&bat, r, SHM_CELL_EGRESS), -EINVAL); /* no return ring */
    assert_int_equal(shm_cell_free(&egr, r, SHM_CELL_BATCHER), -EPERM);
    assert_int_equal(shm_cell_free(&egr, r, SHM_CELL_EGRESS), 0);
    /* Every use of the old reference is caught. */
    assert_int_equal(shm_cell_free(&egr, r, SHM_CELL_EGRESS), -ESTALE);
    assert_int_equal(shm_cell_get(&egr, r, SHM_CELL_EGRESS, &data, NULL), -ESTALE);
    assert_int_equal(shm_cell_give(&egr, r, SHM_CELL_EGRESS, SHM_CELL_BATCHER), -ESTALE);
    assert_int_equal(shm_cell_alloc(&ing, 10, &r2), 0);
    assert_int_equal(shm_cell_ref_index(r2), shm_cell_ref_index(r));
    assert_int_equal(shm_cell_get(&ing, r, SHM_CELL_INGRESS, &data, NULL), -ESTALE);
    /* Malformed references. */
    assert_int_equal(shm_cell_get(&ing, SHM_CELL_REF_NONE, SHM_CELL_INGRESS, &data, NULL),
                     -ESTALE);
    assert_int_equal(shm_cell_get(&ing, shm_cell_ref(1, 5, 0), SHM_CELL_INGRESS, &data, NULL),
                     -EINVAL);
    assert_int_equal(shm_cell_get(&ing, shm_cell_ref(1, 0, 4), SHM_CELL_INGRESS, &data, NULL),
                     -EINVAL);
    assert_string_equal(shm_cell_owner_name(SHM_CELL_EGRESS), "egress");
    shm_seg_destroy(&m.seg);
}

static void test_size_classes(void **state)
{
    struct pool_mem m;
    struct shm_cell_pool ing;
    shm_cell_ref_t r[9];

    pool_mem_make(&m, &cfg3, 0);
    assert_int_equal(shm_cell_pool_attach(&ing, m.cells, m.len, 7, SHM_CELL_ROLE_ALLOCATOR, 0),
                     0);
    assert_int_equal(shm_cell_alloc(&ing, 65537, &r[0]), -EMSGSIZE);
    /* 9 cells in all; small requests spill into larger classes. */
    for (int i = 0; i < 9; i++) {
        assert_int_equal(shm_cell_alloc(&ing, 1, &r[i]), 0);
        assert_int_equal(shm_cell_ref_class(r[i]), i < 4 ? 0 : i < 7 ? 1 : 2);
    }
    assert_int_equal(shm_cell_alloc(&ing, 1, &r[0]), -EAGAIN);
    for (int i = 0; i < 9; i++)
        assert_int_equal(shm_cell_free(&ing, r[i], SHM_CELL_INGRESS), 0);
    assert_int_equal(shm_cell_alloc(&ing, 256, &r[0]), 0);
    assert_int_equal(shm_cell_ref_class(r[0]), 0);
    assert_int_equal(shm_cell_alloc(&ing, 257, &r[1]), 0);
    assert_int_equal(shm_cell_ref_class(r[1]), 1);
    shm_seg_destroy(&m.seg);
}

static void test_bad_configs_and_headers(void **state)
{
    struct shm_cell_cfg bad = cfg3;
    struct pool_mem m;
    struct shm_cell_pool p;
    struct shm_cell_pool_hdr *h;

    bad.classes[1].cell_size = 100; /* not a multiple of 64 */
    assert_int_equal(shm_cell_pool_size(&bad), 0);
    bad = cfg3;
    bad.classes[2].cell_size = 256; /* not increasing */
    assert_int_equal(shm_cell_pool_size(&bad), 0);
    bad = cfg3;
    bad.nreturn = SHM_CELL_MAX_RETURN + 1;
    assert_int_equal(shm_cell_pool_size(&bad), 0);

    pool_mem_make(&m, &cfg3, 0);
    assert_int_equal(shm_cell_pool_init(m.cells, 100, &cfg3, 7), -EINVAL); /* too small */
    h = m.cells;
    assert_int_equal(shm_cell_pool_attach(&p, m.cells, m.len, 8, SHM_CELL_ROLE_USER, -1),
                     -EPROTO); /* a pool from another segment generation */
    assert_int_equal(shm_cell_pool_attach(&p, m.cells, m.len, 7, SHM_CELL_ROLE_USER, 2),
                     -EINVAL); /* no such return ring */
    h->classes[1].data_off += 4096;
    assert_int_equal(shm_cell_pool_attach(&p, m.cells, m.len, 7, SHM_CELL_ROLE_USER, -1),
                     -EBADMSG);
    h->classes[1].data_off -= 4096;
    h->classes[0].ncells = 1u << 30;
    assert_int_equal(shm_cell_pool_attach(&p, m.cells, m.len, 7, SHM_CELL_ROLE_USER, -1),
                     -EBADMSG);
    h->classes[0].ncells = 4;
    assert_int_equal(shm_cell_pool_attach(&p, m.cells, m.len - 4096, 7, SHM_CELL_ROLE_USER, -1),
                     -EBADMSG);
    h->version = 2;
    assert_int_equal(shm_cell_pool_attach(&p, m.cells, m.len, 7, SHM_CELL_ROLE_USER, -1),
                     -EPROTO);
    shm_seg_destroy(&m.seg);
}

/*
 * ingress (this process) allocates, writes a request, hands the cell to
 * egress (a child process with its own mapping of the memfd) over a ring;
 * egress checks the bytes and frees the cell back over the return ring.
 * Every cell ingress gets must read back as zeros.
 */
static void test_cross_process(void **state)
{
    const struct shm_cell_cfg cfg = { .nclasses = 2,
                                      .classes = { { 512, 16 }, { 8192, 8 } },
                                      .nreturn = 1 };
    const unsigned total = getenv("FAVO_LONG") ? 2000000 : 20000;
    size_t ringsz = t_ref_ring_region_size(64);
    struct pool_mem m;
    struct shm_cell_pool ing;
    shm_ring_t to_egr;
    void *ringmem;
    uint64_t s = 99;
    unsigned sent = 0;
    pid_t pid;
    int st;

    pool_mem_make(&m, &cfg, ringsz);
    ringmem = shm_seg_region(&m.seg, "ring", NULL);
    assert_int_equal(t_ref_ring_init(ringmem, ringsz, 64, 7), 0);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct shm_seg seg;
        struct shm_cell_pool egr;
        shm_ring_t in;
        void *cells, *rm;
        size_t len, rl;
        unsigned got = 0;

        if (shm_seg_attach_data(&seg, m.seg.fd))
            _exit(10);
        cells = shm_seg_region(&seg, "cells", &len);
        rm = shm_seg_region(&seg, "ring", &rl);
        if (shm_cell_pool_attach(&egr, cells, len, 7, SHM_CELL_ROLE_USER, 0) ||
            t_ref_ring_attach(&in, rm, rl, 7, SHM_RING_CONSUMER))
            _exit(11);
        while (got < total) {
            shm_cell_ref_t r;
            unsigned char *d;
            size_t sz;
            uint32_t len8;

            if (t_ref_ring_peek(&in, &r) < 0) {
                sched_yield(); /* 2-core hosts: let ingress run */
                continue;
            }
            if (shm_cell_get(&egr, r, SHM_CELL_EGRESS, (void **)&d, &sz))
                _exit(12);
            /* the "request": its length in the first 4 bytes, then a byte
             * pattern from the cell index and generation */
            memcpy(&len8, d, 4);
            for (uint32_t i = 4; i < len8; i++)
                if (d[i] != (unsigned char)(shm_cell_ref_gen(r) + i))
                    _exit(13);
            if (shm_cell_free(&egr, r, SHM_CELL_EGRESS))
                _exit(14);
            shm_ring_release(&in, 1);
            got++;
        }
        shm_seg_close(&seg);
        _exit(0);
    }
    assert_int_equal(shm_cell_pool_attach(&ing, m.cells, m.len, 7, SHM_CELL_ROLE_ALLOCATOR, 0),
                     0);
    assert_int_equal(t_ref_ring_attach(&to_egr, ringmem, ringsz, 7, SHM_RING_PRODUCER), 0);
    while (sent < total) {
        size_t need = 8 + t_rand(&s) % 8000, sz;
        shm_cell_ref_t r;
        unsigned char *d;
        uint32_t len8;
        int rc = shm_cell_alloc(&ing, need, &r);

        if (rc == -EAGAIN) { /* all cells in flight: wait for egress */
            sched_yield();
            continue;
        }
        assert_int_equal(rc, 0);
        assert_int_equal(shm_cell_get(&ing, r, SHM_CELL_INGRESS, (void **)&d, &sz), 0);
        assert_true(sz >= need);
        if (!all_bytes(d, sz, 0))
            fail_msg("cell %u of class %u not zero on allocation", shm_cell_ref_index(r),
                     shm_cell_ref_class(r));
        len8 = (uint32_t)need;
        memcpy(d, &len8, 4);
        for (uint32_t i = 4; i < len8; i++)
            d[i] = (unsigned char)(shm_cell_ref_gen(r) + i);
        assert_int_equal(shm_cell_give(&ing, r, SHM_CELL_INGRESS, SHM_CELL_EGRESS), 0);
        while (t_ref_ring_enqueue(&to_egr, &r) == -EAGAIN)
            sched_yield();
        sent++;
    }
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    /* Every cell came back. */
    shm_cell_drain(&ing);
    assert_int_equal(shm_cell_free_count(&ing, 0), 16);
    assert_int_equal(shm_cell_free_count(&ing, 1), 8);
    shm_seg_destroy(&m.seg);
}

static void test_poison_catches_write_after_free(void **state)
{
    struct shm_cell_cfg cfg = cfg3;
    struct pool_mem m;
    struct shm_cell_pool ing;
    shm_cell_ref_t r;
    unsigned char *d;
    size_t sz;
    pid_t pid;
    int st;

    cfg.flags = SHM_CELL_F_POISON;
    pool_mem_make(&m, &cfg, 0);
    assert_int_equal(shm_cell_pool_attach(&ing, m.cells, m.len, 7, SHM_CELL_ROLE_ALLOCATOR, 0),
                     0);
    /* A clean cycle: zeros on allocation, poison after free. */
    assert_int_equal(shm_cell_alloc(&ing, 10, &r), 0);
    assert_int_equal(shm_cell_get(&ing, r, SHM_CELL_INGRESS, (void **)&d, &sz), 0);
    assert_true(all_bytes(d, sz, 0));
    memset(d, 0x33, sz);
    assert_int_equal(shm_cell_free(&ing, r, SHM_CELL_INGRESS), 0);
    assert_true(all_bytes(d, sz, SHM_CELL_POISON));
    assert_int_equal(shm_cell_alloc(&ing, 10, &r), 0);
    assert_true(all_bytes(d, sz, 0));
    assert_int_equal(shm_cell_free(&ing, r, SHM_CELL_INGRESS), 0);
    /* A stage writes through a pointer it kept: the next allocation of
     * that cell aborts, naming the cell and the offset. */
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);

        dup2(devnull, 2); /* the abort message is expected */
        d[17] = 1;
        (void)shm_cell_alloc(&ing, 10, &r);
        _exit(0);
    }
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFSIGNALED(st));
    assert_int_equal(WTERMSIG(st), SIGABRT);
    shm_seg_destroy(&m.seg);
}

/* A restarted allocator rebuilds its stack from the descriptors: cells in
 * flight stay out, returned ones (drained or not) come back once. */
static void test_allocator_restart(void **state)
{
    struct pool_mem m;
    struct shm_cell_pool ing, ing2, egr;
    shm_cell_ref_t r[4], x;

    pool_mem_make(&m, &cfg3, 0);
    assert_int_equal(shm_cell_pool_attach(&ing, m.cells, m.len, 7, SHM_CELL_ROLE_ALLOCATOR, 0),
                     0);
    assert_int_equal(shm_cell_pool_attach(&egr, m.cells, m.len, 7, SHM_CELL_ROLE_USER, 0), 0);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(shm_cell_alloc(&ing, 1, &r[i]), 0);
        assert_int_equal(shm_cell_give(&ing, r[i], SHM_CELL_INGRESS, SHM_CELL_EGRESS), 0);
    }
    assert_int_equal(shm_cell_free(&egr, r[0], SHM_CELL_EGRESS), 0);
    assert_int_equal(shm_cell_free(&egr, r[1], SHM_CELL_EGRESS), 0);
    assert_int_equal(shm_cell_drain(&ing), 2);
    assert_int_equal(shm_cell_free(&egr, r[2], SHM_CELL_EGRESS), 0); /* in the ring */
    /* "ingress restarts": a new handle. r[3] is still held by egress. */
    assert_int_equal(shm_cell_pool_attach(&ing2, m.cells, m.len, 7, SHM_CELL_ROLE_ALLOCATOR, 0),
                     0);
    assert_int_equal(shm_cell_free_count(&ing2, 0), 2);
    assert_int_equal(shm_cell_drain(&ing2), 1);
    assert_int_equal(shm_cell_free_count(&ing2, 0), 3);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(shm_cell_alloc(&ing2, 1, &x), 0);
        assert_int_equal(shm_cell_ref_class(x), 0);
        assert_int_not_equal(shm_cell_ref_index(x), shm_cell_ref_index(r[3]));
    }
    assert_int_equal(shm_cell_alloc(&ing2, 1, &x), 0);
    assert_int_equal(shm_cell_ref_class(x), 1); /* class 0 exhausted: r[3] in flight */
    shm_seg_destroy(&m.seg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scrubbed_cell_reads_zero),
        cmocka_unit_test(test_stale_and_foreign_refs),
        cmocka_unit_test(test_size_classes),
        cmocka_unit_test(test_bad_configs_and_headers),
        cmocka_unit_test(test_cross_process),
        cmocka_unit_test(test_poison_catches_write_after_free),
        cmocka_unit_test(test_allocator_restart),
    };

    return cmocka_run_group_tests(tests, NULL, NULL) ? 1 : 0;
}
