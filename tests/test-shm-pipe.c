/*
 * test-shm-pipe.c - the pipeline layout (shm_pipe.h) in a real data
 * segment shared by a forked child: init, attach from the child, every
 * ring carries its message type across processes, bells attach, a corrupt
 * or foreign header is refused, the up words say "up" only when the
 * supervisor's and the stage's pid agree, and shm_cell_bytes gives a
 * non-owner a live cell but never a freed one.
 */
#include "t_util.h"
#include "shm_pipe.h"
#include "shm_seg.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#define GEN 3u

static struct shm_pipe_cfg cfg(void)
{
    struct shm_pipe_cfg c = { 0 };

    c.n_ingress = 2;
    c.n_ranks = 2;
    c.sched_bytes = 100000;
    c.plan_bytes = 5000;
    c.max_seqs = 64;
    c.result_size = 8;
    c.cells.nclasses = 2;
    c.cells.classes[0].cell_size = 65536;
    c.cells.classes[0].ncells = 8;
    c.cells.classes[1].cell_size = 1 << 20;
    c.cells.classes[1].ncells = 2;
    return c;
}

static void *region(size_t len)
{
    void *p = NULL;

    assert_int_equal(posix_memalign(&p, 4096, len), 0);
    memset(p, 0, len);
    return p;
}

static void t_layout(void **state)
{
    (void)state;
    struct shm_pipe_cfg c = cfg();
    size_t len = shm_pipe_size(&c);
    struct shm_pipe p, q;
    void *mem;

    assert_true(len > (1u << 20) * 2);
    mem = region(len);
    assert_int_equal(shm_pipe_attach(&q, mem, len, GEN), -EPROTO); /* not formatted */
    assert_int_equal(shm_pipe_init(&p, mem, len, &c, GEN), 0);
    assert_int_equal(shm_pipe_attach(&q, mem, len, GEN), 0);
    assert_int_equal(shm_pipe_attach(&q, mem, len, GEN + 1), -ESTALE);
    assert_int_equal(shm_pipe_attach(&q, mem, len - 4096, GEN), -EBADMSG);
    /* every part lies inside the region and none overlaps the next */
    assert_true(p.hdr->off_req[1] >= p.hdr->off_req[0] + p.hdr->len_req);
    assert_true(p.hdr->off_cells + p.hdr->len_cells <= len);
    assert_true((char *)shm_pipe_plan(&p, 1, 1) + c.plan_bytes <= (char *)shm_pipe_sched(&p, NULL));
    /* a scribbled offset is refused, not followed */
    uint64_t save = p.hdr->off_ev;
    p.hdr->off_ev += 64;
    assert_int_equal(shm_pipe_attach(&q, mem, len, GEN), -EBADMSG);
    p.hdr->off_ev = save;
    assert_int_equal(shm_pipe_attach(&q, mem, len, GEN), 0);
    c.n_ingress = SHM_PIPE_MAX_INGRESS + 1;
    assert_int_equal(shm_pipe_size(&c), 0);
    c = cfg();
    c.ev_ring = 1000; /* not a power of two */
    assert_int_equal(shm_pipe_init(&p, mem, len, &c, GEN), -EINVAL);
    free(mem);
}

static void t_up_words(void **state)
{
    (void)state;
    struct shm_pipe_cfg c = cfg();
    size_t len = shm_pipe_size(&c);
    void *mem = region(len);
    struct shm_pipe p;

    assert_int_equal(shm_pipe_init(&p, mem, len, &c, GEN), 0);
    assert_false(shm_pipe_ready(&p));
    for (unsigned w = 0; w < 2; w++) {
        shm_pipe_set_sup(&p, SHM_PIPE_INGRESS, w, 100 + (int)w);
        shm_pipe_set_up(&p, SHM_PIPE_INGRESS, w, 100 + (int)w);
        shm_pipe_set_sup(&p, SHM_PIPE_ENGINE, w, 200 + (int)w);
        shm_pipe_set_up(&p, SHM_PIPE_ENGINE, w, 200 + (int)w);
    }
    shm_pipe_set_sup(&p, SHM_PIPE_BATCHER, 0, 300);
    shm_pipe_set_sup(&p, SHM_PIPE_EGRESS, 0, 400);
    shm_pipe_set_up(&p, SHM_PIPE_EGRESS, 0, 400);
    assert_false(shm_pipe_ready(&p)); /* batcher spawned, not yet up */
    shm_pipe_set_up(&p, SHM_PIPE_BATCHER, 0, 300);
    assert_true(shm_pipe_ready(&p));
    /* the batcher dies and is reaped: down at once, though its word stays */
    shm_pipe_set_sup(&p, SHM_PIPE_BATCHER, 0, 0);
    assert_false(shm_pipe_stage_up(&p, SHM_PIPE_BATCHER, 0));
    shm_pipe_set_sup(&p, SHM_PIPE_BATCHER, 0, 301); /* respawned, not ready yet */
    assert_false(shm_pipe_ready(&p));
    shm_pipe_set_up(&p, SHM_PIPE_BATCHER, 0, 301);
    assert_true(shm_pipe_ready(&p));
    p.hdr->draining = 1;
    assert_false(shm_pipe_ready(&p));
    free(mem);
}

/* The child plays ingress 1 -> batcher -> egress -> ingress 1 through the
 * rings of a memfd data segment; the parent plays the other ends. */
static void t_cross_process(void **state)
{
    (void)state;
    struct shm_pipe_cfg c = cfg();
    struct shm_seg_spec spec = { "pipe", shm_pipe_size(&c), 4096 };
    struct shm_seg seg;
    struct shm_pipe p;
    size_t len;
    void *mem;
    pid_t pid;
    int st;

    assert_int_equal(shm_seg_create_data(&seg, &spec, 1), 0);
    mem = shm_seg_region(&seg, "pipe", &len);
    assert_non_null(mem);
    assert_int_equal(shm_pipe_init(&p, mem, len, &c, GEN), 0);
    shm_seg_publish(&seg);

    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct shm_seg s2;
        struct shm_pipe q;
        shm_ring_t req, conn, ev;
        struct shm_cell_pool pool;
        shm_cell_ref_t ref;
        struct shm_req r = { 0 };
        struct shm_ev e;
        struct shm_conn_msg m = { 0 };
        void *cm, *bytes;
        size_t cl;

        if (shm_seg_attach_data(&s2, seg.fd) || !(mem = shm_seg_region(&s2, "pipe", &len)) ||
            shm_pipe_attach(&q, mem, len, GEN) ||
            shm_pipe_ring_req(&q, 1, SHM_RING_PRODUCER, &req) ||
            shm_pipe_ring_ev(&q, SHM_RING_CONSUMER, &ev) ||
            shm_pipe_ring_conn(&q, 1, SHM_RING_PRODUCER, &conn))
            _exit(10);
        cm = shm_pipe_cells(&q, &cl);
        if (shm_cell_pool_attach(&pool, cm, cl, GEN, SHM_CELL_ROLE_ALLOCATOR, -1) ||
            shm_cell_alloc(&pool, 1000, &ref))
            _exit(11);
        r.magic = SHM_REQ_MAGIC;
        r.kind = SHM_REQ_SUBMIT;
        r.cell = ref;
        r.ntok = 5;
        if (shm_cell_give(&pool, ref, SHM_CELL_INGRESS, SHM_CELL_BATCHER) ||
            shm_ring_enqueue(&req, &r))
            _exit(12);
        while (shm_ring_dequeue_burst(&ev, &e, 1) != 1)
            usleep(1000);
        if (e.cell != ref || e.kind != SHM_EV_FINISH || e.n_gen != 3)
            _exit(13);
        if (shm_cell_bytes(&pool, ref, &bytes, NULL)) /* live, owned by egress */
            _exit(14);
        m.conn = 42;
        m.what = SHM_CONN_KEEP;
        if (shm_ring_enqueue(&conn, &m))
            _exit(15);
        _exit(0);
    }
    shm_ring_t req, conn, ev;
    struct shm_cell_pool pool;
    struct shm_req r;
    struct shm_ev e = { 0 };
    struct shm_conn_msg m;
    size_t cl;
    void *cm = shm_pipe_cells(&p, &cl), *bytes;

    assert_int_equal(shm_pipe_ring_req(&p, 1, SHM_RING_CONSUMER, &req), 0);
    assert_int_equal(shm_pipe_ring_ev(&p, SHM_RING_PRODUCER, &ev), 0);
    assert_int_equal(shm_pipe_ring_conn(&p, 1, SHM_RING_CONSUMER, &conn), 0);
    assert_int_equal(shm_cell_pool_attach(&pool, cm, cl, GEN, SHM_CELL_ROLE_USER,
                                          SHM_PIPE_RET_EGRESS), 0);
    while (shm_ring_dequeue_burst(&req, &r, 1) != 1)
        usleep(1000);
    assert_int_equal(r.magic, SHM_REQ_MAGIC);
    assert_int_equal(r.ntok, 5);
    /* the batcher owns it; a non-owner still reaches the bytes */
    assert_int_equal(shm_cell_bytes(&pool, r.cell, &bytes, NULL), 0);
    assert_int_equal(shm_cell_give(&pool, r.cell, SHM_CELL_BATCHER, SHM_CELL_EGRESS), 0);
    e.cell = r.cell;
    e.kind = SHM_EV_FINISH;
    e.n_gen = 3;
    assert_int_equal(shm_ring_enqueue(&ev, &e), 0);
    while (shm_ring_dequeue_burst(&conn, &m, 1) != 1)
        usleep(1000);
    assert_int_equal(m.conn, 42);
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    /* egress frees it: every later look is refused */
    assert_int_equal(shm_cell_free(&pool, r.cell, SHM_CELL_EGRESS), 0);
    assert_int_equal(shm_cell_bytes(&pool, r.cell, &bytes, NULL), -ESTALE);
    shm_seg_destroy(&seg);
}

static void t_cell_need(void **state)
{
    (void)state;
    /* ids follow the request, the copy and the area follow the ids */
    assert_int_equal(shm_pipe_resp_off(1024, 10, 6), 1024 + 64);
    assert_int_equal(shm_pipe_resp_off(1000, 1, 0), 1024);
    assert_true(shm_pipe_cell_need(1024, 10, 100, false) >
                shm_pipe_cell_need(1024, 10, 100, true));
    assert_true(SHM_PIPE_REQ_COPY % 64 == 0 && SHM_PIPE_REQ_COPY >= sizeof(struct shm_req));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(t_layout),
        cmocka_unit_test(t_up_words),
        cmocka_unit_test(t_cross_process),
        cmocka_unit_test(t_cell_need),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
