/*
 * test-shm-stats.c - the stats segment: histogram error bound, writer and
 * reader round trip, consistent snapshots under concurrent writer PROCESSES
 * (and threads, for TSan), a writer that dies inside an update, the stage
 * table, readers refusing another version or a changed table, and the
 * Prometheus text.
 *
 * FAVO_LONG=1 runs the concurrent tests for 20 s instead of about 1.5 s.
 */
#include "t_util.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
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
#include <yajl/yajl_tree.h>

#include "shm_stats.h"

static char inst[64];

static void name_instance(const char *what)
{
    snprintf(inst, sizeof(inst), "t-stats-%d-%s", (int)getpid(), what);
}

static double run_seconds(void)
{
    return getenv("FAVO_LONG") ? 20.0 : 1.5;
}

static void test_hist_buckets(void **state)
{
    uint64_t s = 1;

    /* Every bucket in the required range is at most 1% wide. */
    for (unsigned b = 1; b < SHM_HIST_NBUCKETS - 1; b++) {
        uint64_t lo = shm_hist_lower(b), hi = shm_hist_upper(b);

        assert_true(hi > lo);
        assert_true((double)(hi - lo) / (double)lo <= 0.01);
        assert_int_equal(shm_hist_bucket(lo), b);
        assert_int_equal(shm_hist_bucket(hi - 1), b);
        assert_int_equal(shm_hist_lower(b + 1), hi);
    }
    assert_true(shm_hist_lower(1) <= 1000);             /* covers 1 us */
    assert_true(shm_hist_lower(SHM_HIST_NBUCKETS - 1) > 100000000000ull); /* and 100 s */
    assert_int_equal(shm_hist_bucket(0), 0);
    assert_int_equal(shm_hist_bucket(511), 0);
    assert_int_equal(shm_hist_bucket(UINT64_MAX), SHM_HIST_NBUCKETS - 1);
    /* Random values: inside their bucket, monotonic bucket order. */
    for (int i = 0; i < 200000; i++) {
        uint64_t v = 1000 + t_rand(&s) % 100000000000ull, w = v + t_rand(&s) % 1000;
        unsigned b = shm_hist_bucket(v);

        assert_true(shm_hist_lower(b) <= v && v < shm_hist_upper(b));
        assert_true(shm_hist_bucket(w) >= b);
    }
}

static struct shm_stats_snap *snap_new(void)
{
    struct shm_stats_snap *s = malloc(sizeof(*s));

    assert_non_null(s);
    return s;
}

static void test_round_trip(void **state)
{
    struct shm_stats st, rd;
    struct shm_stats_writer w, w2;
    struct shm_stats_snap *snap = snap_new();
    static const uint64_t vals[] = { 1000, 2000, 50000, 1000000, 3000000000ull, 99000000000ull };

    name_instance("rt");
    assert_int_equal(shm_stats_create(&st, inst, 4, 8), 0);
    assert_int_equal(shm_stats_open(&rd, inst, false), 0);
    assert_int_equal(shm_stats_writer_init(&rd, 0, SHM_STAGE_EGRESS, 0, 0, &w), -EACCES);
    assert_int_equal(shm_stats_writer_init(&st, 4, SHM_STAGE_EGRESS, 0, 0, &w), -ERANGE);
    assert_int_equal(shm_stats_writer_init(&st, 0, SHM_STAGE_EGRESS, 0, 0, &w), 0);
    assert_int_equal(shm_stats_writer_init(&st, 3, SHM_STAGE_BATCHER, 0, 0, &w2), 0);

    assert_int_equal(shm_stats_snapshot(&rd, snap), 0);
    assert_int_equal(snap->nwriters, 2);
    assert_int_equal(snap->counters[SHM_C_REQ_OK], 0);

    shm_stats_add(&w, SHM_C_REQ_OK, 3);
    shm_stats_add(&w2, SHM_C_REQ_OK, 4);
    shm_stats_add(&w, SHM_C_PROMPT_TOKENS, 100);
    shm_stats_gauge_set(&w2, SHM_G_REQUESTS_RUNNING, 5);
    shm_stats_gauge_set(&w, SHM_G_REQUESTS_RUNNING, 2);
    shm_stats_gauge_set(&w, SHM_G_KV_CACHE_USAGE, 0.25);
    shm_stats_gauge_set(&w2, SHM_G_KV_CACHE_USAGE, 0.5);
    for (unsigned i = 0; i < FAVO_ARRAY_SIZE(vals); i++)
        shm_stats_observe(i % 2 ? &w : &w2, SHM_H_TTFT, vals[i]);

    assert_int_equal(shm_stats_snapshot(&rd, snap), 0);
    assert_int_equal(snap->torn, 0);
    assert_int_equal(snap->counters[SHM_C_REQ_OK], 7);
    assert_int_equal(snap->counters[SHM_C_PROMPT_TOKENS], 100);
    assert_true(snap->gauges[SHM_G_REQUESTS_RUNNING] == 7.0); /* SUM */
    assert_true(snap->gauges[SHM_G_KV_CACHE_USAGE] == 0.5);   /* MAX */
    assert_int_equal(snap->hist[SHM_H_TTFT].count, FAVO_ARRAY_SIZE(vals));
    assert_int_equal(snap->hist[SHM_H_ITL].count, 0);
    {
        uint64_t sum = 0;

        for (unsigned i = 0; i < FAVO_ARRAY_SIZE(vals); i++) {
            uint64_t b = shm_hist_bucket(vals[i]);

            sum += vals[i];
            assert_true(snap->hist[SHM_H_TTFT].buckets[b] >= 1);
        }
        assert_int_equal(snap->hist[SHM_H_TTFT].sum_ns, sum);
    }
    /* Quantiles: the smallest and largest values, within 1%. */
    {
        uint64_t q0 = shm_stats_hist_quantile(&snap->hist[SHM_H_TTFT], 0.0);
        uint64_t q1 = shm_stats_hist_quantile(&snap->hist[SHM_H_TTFT], 1.0);
        uint64_t qm = shm_stats_hist_quantile(&snap->hist[SHM_H_TTFT], 0.5);

        assert_true(fabs((double)q0 - 1000.0) / 1000.0 <= 0.01);
        assert_true(fabs((double)q1 - 99e9) / 99e9 <= 0.01);
        assert_true(fabs((double)qm - 50000.0) / 50000.0 <= 0.01);
        assert_int_equal(shm_stats_hist_quantile(&snap->hist[SHM_H_E2E], 0.5), 0);
    }
    assert_int_equal(snap->generation, 1);
    /* A scribbled bucket range is clamped by the reader, not followed. */
    w.b->hist[SHM_H_TTFT].range = UINT64_MAX;
    assert_int_equal(shm_stats_snapshot(&rd, snap), 0);
    assert_int_equal(snap->hist[SHM_H_TTFT].count, FAVO_ARRAY_SIZE(vals));
    shm_stats_writer_free(&w);
    shm_stats_writer_free(&w2);
    shm_stats_close(&rd);
    assert_int_equal(shm_stats_destroy(&st), 0);
    free(snap);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y;
}

static void test_quantile_accuracy(void **state)
{
    struct shm_stats_hist_snap *h = calloc(1, sizeof(*h));
    const size_t n = 100001;
    double *v = malloc(n * sizeof(double));
    const double qs[] = { 0.01, 0.5, 0.9, 0.99, 0.999 };
    uint64_t s = 7;

    /* Log-uniform values from 1 us to 100 s. */
    for (size_t i = 0; i < n; i++) {
        double u = (double)(t_rand(&s) >> 11) / 9007199254740992.0;

        v[i] = floor(exp(log(1e3) + (log(1e11) - log(1e3)) * u));
        h->buckets[shm_hist_bucket((uint64_t)v[i])]++;
        h->count++;
    }
    qsort(v, n, sizeof(double), cmp_double);
    for (unsigned k = 0; k < FAVO_ARRAY_SIZE(qs); k++) {
        size_t rank = (size_t)(qs[k] * (double)n + 0.5); /* nearest rank, 1-based */
        double exact = v[rank - 1], got = (double)shm_stats_hist_quantile(h, qs[k]);

        assert_true(fabs(got - exact) / exact <= 0.01);
    }
    free(v);
    free(h);
}

/* ------------------------------------------------ concurrent writers */

/*
 * Every writer makes the same grouped update: one request (REQ_OK + 1),
 * 3 prompt tokens, 5 generated tokens, one TTFT observation of a value
 * from a fixed cycle. A consistent snapshot therefore has
 *   prompt = 3 * req, gen = 5 * req, ttft.count = req = sum(ttft buckets)
 *   ttft.sum = sum over writers of the cycle prefix sums.
 * A torn read breaks one of these.
 */
#define CYCLE 7
static const uint64_t cycle_ns[CYCLE] = { 1500, 900000, 12000, 4000000, 777000, 31000000, 2600 };

static void one_request(struct shm_stats_writer *w, uint64_t i)
{
    shm_stats_begin(w);
    shm_stats_add(w, SHM_C_REQ_OK, 1);
    shm_stats_add(w, SHM_C_PROMPT_TOKENS, 3);
    shm_stats_observe(w, SHM_H_TTFT, cycle_ns[i % CYCLE]);
    shm_stats_add(w, SHM_C_GENERATION_TOKENS, 5);
    shm_stats_end(w);
}

/* The same checks without cmocka's longjmp, for loops that must stop
 * their writer threads before failing. */
static bool snapshot_ok(const struct shm_stats_snap *s, const struct shm_stats_snap *prev)
{
    uint64_t req = s->counters[SHM_C_REQ_OK], nb = 0;

    if (s->torn || s->counters[SHM_C_PROMPT_TOKENS] != 3 * req ||
        s->counters[SHM_C_GENERATION_TOKENS] != 5 * req || s->hist[SHM_H_TTFT].count != req)
        return false;
    for (unsigned k = 0; k < SHM_HIST_NBUCKETS; k++)
        nb += s->hist[SHM_H_TTFT].buckets[k];
    return nb == req && (!prev || (req >= prev->counters[SHM_C_REQ_OK] &&
                                   s->hist[SHM_H_TTFT].sum_ns >= prev->hist[SHM_H_TTFT].sum_ns));
}

static void check_snapshot(const struct shm_stats_snap *s, const struct shm_stats_snap *prev)
{
    uint64_t req = s->counters[SHM_C_REQ_OK], nb = 0;

    assert_int_equal(s->torn, 0);
    assert_int_equal(s->counters[SHM_C_PROMPT_TOKENS], 3 * req);
    assert_int_equal(s->counters[SHM_C_GENERATION_TOKENS], 5 * req);
    assert_int_equal(s->hist[SHM_H_TTFT].count, req);
    for (unsigned k = 0; k < SHM_HIST_NBUCKETS; k++)
        nb += s->hist[SHM_H_TTFT].buckets[k];
    assert_int_equal(nb, req);
    for (unsigned k = 0; k < CYCLE; k++) /* only the cycle's buckets */
        nb -= s->hist[SHM_H_TTFT].buckets[shm_hist_bucket(cycle_ns[k])];
    assert_int_equal(nb, 0);
    if (prev) { /* monotonic */
        assert_true(req >= prev->counters[SHM_C_REQ_OK]);
        assert_true(s->hist[SHM_H_TTFT].sum_ns >= prev->hist[SHM_H_TTFT].sum_ns);
    }
}

static uint64_t cycle_sum(uint64_t n)
{
    uint64_t s = 0;

    for (uint64_t i = 0; i < n; i++)
        s += cycle_ns[i % CYCLE];
    return s;
}

#define NPROC 3

static void test_concurrent_processes(void **state)
{
    struct shm_stats st, rd;
    struct shm_stats_snap *a = snap_new(), *b = snap_new(), *t;
    pid_t pids[NPROC];
    int ready[2], go[2];
    uint64_t nsnap = 0, deadline;
    char c;

    name_instance("procs");
    assert_int_equal(shm_stats_create(&st, inst, NPROC + 1, 0), 0);
    assert_int_equal(pipe(ready), 0);
    assert_int_equal(pipe(go), 0);
    for (int p = 0; p < NPROC; p++) {
        pids[p] = fork();
        assert_true(pids[p] >= 0);
        if (pids[p] == 0) {
            /* A real writer process: its own mapping, its own block. */
            struct shm_stats ws;
            struct shm_stats_writer w;
            uint64_t n = 0, end;

            /* Publishing every 200 us: 5x as often as a real stage, to
             * stress the sequence lock (sanitizer builds included). */
            if (shm_stats_open(&ws, inst, true) ||
                shm_stats_writer_init(&ws, (unsigned)p, SHM_STAGE_EGRESS, (unsigned)p, 200000,
                                      &w))
                _exit(10);
            (void)!write(ready[1], "r", 1);
            (void)!read(go[0], &c, 1);
            end = favo_now_ns() + (uint64_t)(run_seconds() * 1e9);
            while (favo_now_ns() < end)
                one_request(&w, n++);
            shm_stats_writer_free(&w); /* publishes the rest */
            shm_stats_close(&ws);
            _exit(0);
        }
    }
    for (int p = 0; p < NPROC; p++)
        assert_int_equal(read(ready[0], &c, 1), 1);
    for (int p = 0; p < NPROC; p++)
        assert_int_equal(write(go[1], "g", 1), 1);
    assert_int_equal(shm_stats_open(&rd, inst, false), 0);
    deadline = favo_now_ns() + (uint64_t)(run_seconds() * 1e9);
    assert_int_equal(shm_stats_snapshot(&rd, a), 0);
    check_snapshot(a, NULL);
    while (favo_now_ns() < deadline) {
        assert_int_equal(shm_stats_snapshot(&rd, b), 0);
        check_snapshot(b, a);
        t = a;
        a = b;
        b = t;
        nsnap++;
    }
    for (int p = 0; p < NPROC; p++) {
        int ws;

        assert_int_equal(waitpid(pids[p], &ws, 0), pids[p]);
        assert_true(WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
    }
    /* Final: exact totals, per-writer sums of the value cycle. */
    assert_int_equal(shm_stats_snapshot(&rd, b), 0);
    check_snapshot(b, a);
    assert_int_equal(b->nwriters, NPROC);
    {
        uint64_t req = b->counters[SHM_C_REQ_OK], sum = 0;
        const struct shm_stats_block *blk = (const void *)rd.blocks;

        for (int p = 0; p < NPROC; p++)
            sum += cycle_sum(blk[p].counters[SHM_C_REQ_OK]);
        assert_true(req > 1000);
        assert_int_equal(b->hist[SHM_H_TTFT].sum_ns, sum);
        print_message("%llu requests by %d processes, %llu consistent snapshots\n",
                      (unsigned long long)req, NPROC, (unsigned long long)nsnap);
    }
    assert_true(nsnap > 10);
    shm_stats_close(&rd);
    shm_stats_destroy(&st);
    close(ready[0]);
    close(ready[1]);
    close(go[0]);
    close(go[1]);
    free(a);
    free(b);
}

/* The same with threads in one process, so ThreadSanitizer sees it. */
struct thr {
    struct shm_stats *st;
    unsigned slot;
    volatile int *stop;
};

static void *writer_thread(void *arg)
{
    struct thr *t = arg;
    struct shm_stats_writer w;
    uint64_t n = 0;

    if (shm_stats_writer_init(t->st, t->slot, SHM_STAGE_ENGINE, t->slot, 200000, &w))
        return (void *)1;
    while (!__atomic_load_n(t->stop, __ATOMIC_RELAXED))
        one_request(&w, n++);
    shm_stats_writer_free(&w);
    return NULL;
}

static void test_concurrent_threads(void **state)
{
    struct shm_stats st, rd;
    struct shm_stats_snap *a = snap_new(), *b = snap_new(), *t;
    pthread_t th[2];
    struct thr args[2];
    volatile int stop = 0;
    uint64_t deadline;
    bool ok = true;
    void *ret;

    name_instance("thr");
    assert_int_equal(shm_stats_create(&st, inst, 2, 0), 0);
    assert_int_equal(shm_stats_open(&rd, inst, false), 0);
    for (unsigned i = 0; i < 2; i++) {
        args[i] = (struct thr){ &st, i, &stop };
        assert_int_equal(pthread_create(&th[i], NULL, writer_thread, &args[i]), 0);
    }
    deadline = favo_now_ns() + (uint64_t)(run_seconds() * 1e9 / 2);
    assert_int_equal(shm_stats_snapshot(&rd, a), 0);
    while (favo_now_ns() < deadline && ok) {
        ok = shm_stats_snapshot(&rd, b) == 0 && snapshot_ok(b, a);
        t = a;
        a = b;
        b = t;
    }
    __atomic_store_n(&stop, 1, __ATOMIC_RELAXED);
    for (unsigned i = 0; i < 2; i++) {
        assert_int_equal(pthread_join(th[i], &ret), 0);
        assert_null(ret);
    }
    if (!ok)
        check_snapshot(a, NULL); /* a is the snapshot that failed: say how */
    assert_true(ok);
    assert_int_equal(shm_stats_snapshot(&rd, b), 0);
    check_snapshot(b, a);
    shm_stats_close(&rd);
    shm_stats_destroy(&st);
    free(a);
    free(b);
}

/* A writer killed inside begin/end: readers do not hang (torn counted),
 * the restarted writer repairs the sequence and continues its counters. */
static void test_writer_dies_mid_update(void **state)
{
    struct shm_stats st, rd;
    struct shm_stats_writer w;
    struct shm_stats_snap *snap = snap_new();
    pid_t pid;
    int ws;
    uint64_t t0;

    name_instance("die");
    assert_int_equal(shm_stats_create(&st, inst, 2, 0), 0);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct shm_stats s;
        struct shm_stats_writer cw;

        if (shm_stats_open(&s, inst, true) ||
            shm_stats_writer_init(&s, 1, SHM_STAGE_ENGINE, 0, 0, &cw))
            _exit(10);
        shm_stats_add(&cw, SHM_C_REQ_OK, 10);  /* published */
        shm_stats_gauge_set(&cw, SHM_G_REQUESTS_RUNNING, 5);
        shm_stats_begin(&cw);
        shm_stats_add(&cw, SHM_C_REQ_OK, 1);   /* shadow only */
        ck_sequence_write_begin(&cw.b->seq);   /* dies inside a publication */
        kill(getpid(), SIGKILL);
        _exit(11);
    }
    assert_int_equal(waitpid(pid, &ws, 0), pid);
    assert_true(WIFSIGNALED(ws));
    assert_int_equal(shm_stats_open(&rd, inst, false), 0);
    t0 = favo_now_ns();
    assert_int_equal(shm_stats_snapshot(&rd, snap), 0);
    assert_true(favo_now_ns() - t0 < 1000000000ull); /* bounded, no hang */
    assert_int_equal(snap->torn, 1);
    assert_int_equal(snap->counters[SHM_C_REQ_OK], 10); /* counters of the dead stay */
    assert_true(snap->gauges[SHM_G_REQUESTS_RUNNING] == 0); /* its gauges do not */
    /* The restarted stage takes its slot back. */
    assert_int_equal(shm_stats_writer_init(&st, 1, SHM_STAGE_ENGINE, 0, 0, &w), 0);
    shm_stats_add(&w, SHM_C_REQ_OK, 1);
    assert_int_equal(shm_stats_snapshot(&rd, snap), 0);
    assert_int_equal(snap->torn, 0);
    assert_int_equal(snap->counters[SHM_C_REQ_OK], 11); /* monotonic across the restart */
    assert_true(snap->gauges[SHM_G_REQUESTS_RUNNING] == 0); /* the new writer's own */
    assert_int_equal(w.b->attaches, 2);
    shm_stats_writer_free(&w);
    shm_stats_close(&rd);
    shm_stats_destroy(&st);
    free(snap);
}

static void test_stage_table(void **state)
{
    struct shm_stats st, rd;
    struct shm_stats_snap *snap = snap_new();
    struct shm_stage_info in = { 0 };
    uint64_t before = favo_now_ns();

    name_instance("stage");
    assert_int_equal(shm_stats_create(&st, inst, 1, 3), 0);
    in.kind = SHM_STAGE_ENGINE;
    in.index = 1;
    in.state = SHM_STAGE_RUNNING;
    in.pid = 4242;
    in.restarts = 3;
    in.cores[0] = 0x6;
    in.cores[3] = 1ull << 63;
    in.started_ns = 99;
    assert_int_equal(shm_stats_stage_set(&st, 2, &in), 0);
    assert_int_equal(shm_stats_stage_set(&st, 3, &in), -ERANGE);
    assert_int_equal(shm_stats_heartbeat(&st, 2), 0);
    assert_int_equal(shm_stats_open(&rd, inst, false), 0);
    assert_int_equal(shm_stats_stage_set(&rd, 0, &in), -EACCES);
    assert_int_equal(shm_stats_snapshot(&rd, snap), 0);
    assert_int_equal(snap->nstages, 3);
    assert_int_equal(snap->stages[0].info.kind, SHM_STAGE_NONE);
    assert_int_equal(snap->stages[0].heartbeat_ns, 0);
    assert_memory_equal(&snap->stages[2].info, &in, sizeof(in));
    assert_true(snap->stages[2].heartbeat_ns >= before);
    assert_string_equal(shm_stage_kind_name(SHM_STAGE_ENGINE), "engine");
    assert_string_equal(shm_stage_state_name(SHM_STAGE_RUNNING), "running");
    assert_string_equal(shm_stage_state_name((enum shm_stage_state)99), "?");
    shm_stats_close(&rd);
    shm_stats_destroy(&st);
    free(snap);
}

/* A reader refuses a segment of another layout version, and one whose
 * table changed other than by appending; it accepts appended entries. */
static void test_reader_refuses_mismatch(void **state)
{
    struct shm_stats st, rd;
    struct shm_seg_hdr *h;
    struct shm_stats_meta *m;
    uint64_t *names, saved[SHM_C__COUNT + SHM_G__COUNT + SHM_H__COUNT];
    struct shm_stats_snap *snap = snap_new();
    struct shm_stats_writer w;

    name_instance("mismatch");
    assert_int_equal(shm_stats_create(&st, inst, 2, 1), 0);
    h = shm_seg_hdr(&st.seg);
    m = (struct shm_stats_meta *)st.meta;
    names = (uint64_t *)st.names;

    h->version = SHM_SEG_VERSION_STATS + 1;
    assert_int_equal(shm_stats_open(&rd, inst, false), -EPROTO);
    assert_non_null(strstr(rd.seg.err, "layout version"));
    assert_non_null(strstr(rd.seg.err, "use the favo binary of the running instance"));
    h->version = SHM_SEG_VERSION_STATS;

    names[1] ^= 1; /* counter 1 renamed */
    assert_int_equal(shm_stats_open(&rd, inst, false), -EPROTO);
    assert_non_null(strstr(rd.seg.err, "counter 1"));
    assert_non_null(strstr(rd.seg.err, "favo_generation_tokens_total"));
    names[1] ^= 1;

    m->hist_nbuckets++;
    assert_int_equal(shm_stats_open(&rd, inst, false), -EPROTO);
    m->hist_nbuckets--;

    m->nwriters = 1000000; /* would walk past the region */
    assert_int_equal(shm_stats_open(&rd, inst, false), -EBADMSG);
    assert_non_null(strstr(rd.seg.err, "meta region"));
    m->nwriters = 2;

    /* An older writer build with fewer counters: the reader reads the
     * common prefix; a writer of this build refuses (stats inv 3). */
    assert_int_equal(shm_stats_writer_init(&st, 0, SHM_STAGE_INGRESS, 0, 0, &w), 0);
    shm_stats_add(&w, SHM_C_PROMPT_TOKENS, 5);
    shm_stats_add(&w, SHM_C_REQ_OK, 6);
    shm_stats_writer_free(&w);
    {
        /* Its names region lists 1 counter, then the gauges and hists. */
        size_t rest = SHM_G__COUNT + SHM_H__COUNT;

        memcpy(saved, names, sizeof(saved));
        memmove(&names[1], &names[SHM_C__COUNT], rest * sizeof(uint64_t));
        m->ncounters = 1;
    }
    assert_int_equal(shm_stats_open(&rd, inst, true), 0);
    assert_int_equal(rd.nc, 1);
    assert_int_equal(shm_stats_snapshot(&rd, snap), 0);
    assert_int_equal(snap->counters[SHM_C_PROMPT_TOKENS], 5);
    assert_int_equal(snap->counters[SHM_C_REQ_OK], 0);
    assert_int_equal(shm_stats_writer_init(&rd, 1, SHM_STAGE_INGRESS, 0, 0, &w), -EPROTO);
    shm_stats_close(&rd);
    m->ncounters = SHM_C__COUNT;
    memcpy(names, saved, sizeof(saved));

    assert_int_equal(shm_stats_open(&rd, inst, false), 0);
    shm_stats_close(&rd);
    shm_stats_destroy(&st);
    assert_int_equal(shm_stats_open(&rd, inst, false), -ENOENT);
    free(snap);
}

/* ---------------------------------------------------------- Prometheus */

static bool prom_name_ok(const char *s, size_t n)
{
    if (n == 0 || !((s[0] >= 'a' && s[0] <= 'z') || (s[0] >= 'A' && s[0] <= 'Z') ||
                    s[0] == '_' || s[0] == ':'))
        return false;
    for (size_t i = 1; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
              (s[i] >= '0' && s[i] <= '9') || s[i] == '_' || s[i] == ':'))
            return false;
    return true;
}

/* Parse one sample line "name{l="v",...} value"; returns the value. */
static double parse_sample(const char *line, char *name, size_t nlen, char *labels,
                           size_t llen)
{
    const char *p = line, *e;
    char *end;
    double v;

    while (*p && *p != '{' && *p != ' ')
        p++;
    assert_true(prom_name_ok(line, (size_t)(p - line)));
    snprintf(name, nlen, "%.*s", (int)(p - line), line);
    labels[0] = 0;
    if (*p == '{') {
        e = strchr(p, '}');
        assert_non_null(e);
        snprintf(labels, llen, "%.*s", (int)(e - p - 1), p + 1);
        /* label pairs: name="value" separated by commas */
        for (const char *q = p + 1; q < e;) {
            const char *eq = strchr(q, '=');

            assert_true(eq && eq < e);
            assert_true(prom_name_ok(q, (size_t)(eq - q)));
            assert_int_equal(eq[1], '"');
            q = strchr(eq + 2, '"');
            assert_true(q && q < e);
            q++;
            if (*q == ',')
                q++;
        }
        p = e + 1;
    }
    assert_int_equal(*p, ' ');
    p++;
    if (!strcmp(p, "+Inf"))
        return INFINITY;
    if (!strcmp(p, "NaN"))
        return NAN;
    v = strtod(p, &end);
    assert_true(end != p && *end == 0);
    return v;
}

static void test_prometheus(void **state)
{
    struct shm_stats st, rd;
    struct shm_stats_writer w;
    struct shm_stats_snap *snap = snap_new();
    struct shm_stage_info in = { .kind = SHM_STAGE_ENGINE, .index = 0,
                                 .state = SHM_STAGE_RUNNING, .pid = 1, .restarts = 2 };
    char small[64], *buf, *line, *save = NULL;
    size_t need, len = 1 << 20;
    double last_bucket = -1;
    char hist_name[128] = "";
    unsigned nsamples = 0, ntypes = 0;
    bool seen_ttft_count = false, seen_restarts = false;

    name_instance("prom");
    assert_int_equal(shm_stats_create(&st, inst, 1, 1), 0);
    /* Default interval: nothing is visible until a flush. */
    assert_int_equal(shm_stats_writer_init(&st, 0, SHM_STAGE_EGRESS, 0, SHM_STATS_FLUSH_NS, &w),
                     0);
    shm_stats_add(&w, SHM_C_REQ_OK, 2);
    shm_stats_add(&w, SHM_C_REJ_QUEUE_FULL, 1);
    shm_stats_gauge_set(&w, SHM_G_KV_CACHE_USAGE, 0.125);
    shm_stats_observe(&w, SHM_H_TTFT, 3000000);     /* 3 ms */
    shm_stats_observe(&w, SHM_H_TTFT, 200000000);   /* 200 ms */
    shm_stats_observe(&w, SHM_H_TTFT, 500000000000ull); /* 500 s: only +Inf */
    assert_int_equal(shm_stats_stage_set(&st, 0, &in), 0);
    assert_int_equal(shm_stats_open(&rd, inst, false), 0);
    w.last_flush_ns = favo_now_ns(); /* however slow the test machine is */
    shm_stats_add(&w, SHM_C_REQ_OK, 0);
    assert_int_equal(shm_stats_snapshot(&rd, snap), 0);
    assert_int_equal(snap->counters[SHM_C_REQ_OK], 0);
    shm_stats_flush(&w);
    assert_int_equal(shm_stats_snapshot(&rd, snap), 0);

    need = shm_stats_prom(snap, small, sizeof(small));
    assert_true(need >= sizeof(small));
    assert_int_equal(strlen(small), sizeof(small) - 1);
    buf = malloc(len);
    assert_int_equal(shm_stats_prom(snap, buf, len), need);
    assert_int_equal(strlen(buf), need);
    assert_int_equal(buf[need - 1], '\n');

    for (line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char name[128], labels[256];
        double v;

        if (!strncmp(line, "# HELP ", 7)) {
            const char *sp = strchr(line + 7, ' ');

            assert_non_null(sp);
            assert_true(prom_name_ok(line + 7, (size_t)(sp - line - 7)));
            continue;
        }
        if (!strncmp(line, "# TYPE ", 7)) {
            const char *sp = strchr(line + 7, ' ');

            assert_non_null(sp);
            assert_true(!strcmp(sp + 1, "counter") || !strcmp(sp + 1, "gauge") ||
                        !strcmp(sp + 1, "histogram"));
            if (!strcmp(sp + 1, "histogram")) {
                snprintf(hist_name, sizeof(hist_name), "%.*s", (int)(sp - line - 7), line + 7);
                last_bucket = -1;
            }
            ntypes++;
            continue;
        }
        assert_true(line[0] != '#');
        v = parse_sample(line, name, sizeof(name), labels, sizeof(labels));
        nsamples++;
        if (hist_name[0] && !strncmp(name, hist_name, strlen(hist_name)) &&
            !strcmp(name + strlen(hist_name), "_bucket")) {
            assert_true(v >= last_bucket); /* cumulative */
            last_bucket = v;
        }
        if (!strcmp(name, "favo_time_to_first_token_seconds_bucket")) {
            if (!strcmp(labels, "le=\"0.0025\""))
                assert_true(v == 0);
            if (!strcmp(labels, "le=\"0.005\""))
                assert_true(v == 1);
            if (!strcmp(labels, "le=\"0.25\""))
                assert_true(v == 2);
            if (!strcmp(labels, "le=\"100\""))
                assert_true(v == 2);
            if (!strcmp(labels, "le=\"+Inf\""))
                assert_true(v == 3);
        }
        if (!strcmp(name, "favo_time_to_first_token_seconds_count")) {
            assert_true(v == 3);
            seen_ttft_count = true;
        }
        if (!strcmp(name, "favo_time_to_first_token_seconds_sum"))
            assert_true(fabs(v - 500.203) < 1e-6);
        if (!strcmp(name, "favo_requests_total") && !strcmp(labels, "status=\"ok\""))
            assert_true(v == 2);
        if (!strcmp(name, "favo_requests_rejected_total") &&
            !strcmp(labels, "reason=\"queue_full\""))
            assert_true(v == 1);
        if (!strcmp(name, "favo_kv_cache_usage_ratio"))
            assert_true(v == 0.125);
        if (!strcmp(name, "favo_stage_restarts_total")) {
            assert_string_equal(labels, "stage=\"engine\",index=\"0\"");
            assert_true(v == 2);
            seen_restarts = true;
        }
    }
    assert_true(seen_ttft_count);
    assert_true(seen_restarts);
    /* one TYPE per metric name, no duplicates for labelled counters */
    {
        unsigned names = 0; /* labelled entries of one metric are adjacent */

        for (int c = 0; c < SHM_C__COUNT; c++)
            names += c == 0 || strcmp(shm_stats_counter_desc[c].prom,
                                      shm_stats_counter_desc[c - 1].prom) != 0;
        for (int g = 0; g < SHM_G__COUNT; g++)
            names += g == 0 || strcmp(shm_stats_gauge_desc[g].prom,
                                      shm_stats_gauge_desc[g - 1].prom) != 0;
        /* + favo_stage_restarts_total, favo_stage_last_restart_seconds,
         * favo_start_time_seconds */
        assert_int_equal(ntypes, names + SHM_H__COUNT + 3);
    }
    assert_true(nsamples > 50);
    shm_stats_writer_free(&w);
    free(buf);
    shm_stats_close(&rd);
    shm_stats_destroy(&st);
    free(snap);
}

static yajl_val jget(yajl_val v, const char *a, const char *b, const char *c)
{
    const char *path[4] = { a, b, c, NULL };

    return yajl_tree_get(v, path, yajl_t_any);
}

static void test_json(void **state)
{
    struct shm_stats st, rd;
    struct shm_stats_writer w;
    struct shm_stats_snap *snap = snap_new();
    struct shm_stage_info in = { .kind = SHM_STAGE_EGRESS, .index = 1, .state = SHM_STAGE_BACKOFF,
                                 .pid = 77, .restarts = 4, .cores = { 0x6, 0, 0, 1ull << 63 } };
    char small[16], *buf, err[256];
    size_t need, len = 1 << 16;
    yajl_val root, stages, v;

    name_instance("json");
    assert_int_equal(shm_stats_create(&st, inst, 1, 3), 0);
    assert_int_equal(shm_stats_writer_init(&st, 0, SHM_STAGE_EGRESS, 0, 0, &w), 0);
    shm_stats_add(&w, SHM_C_REQ_OK, 2);
    shm_stats_gauge_set(&w, SHM_G_KV_CACHE_USAGE, 0.125);
    shm_stats_observe(&w, SHM_H_E2E, 2000000000ull); /* 2 s */
    assert_int_equal(shm_stats_stage_set(&st, 0, &in), 0);
    in.kind = SHM_STAGE_BATCHER;
    in.cores[0] = 1;
    in.cores[3] = 0;
    assert_int_equal(shm_stats_stage_set(&st, 2, &in), 0);
    assert_int_equal(shm_stats_heartbeat(&st, 2), 0);
    assert_int_equal(shm_stats_open(&rd, inst, false), 0);
    assert_int_equal(shm_stats_snapshot(&rd, snap), 0);

    need = shm_stats_json(snap, small, sizeof(small));
    assert_true(need > sizeof(small));
    assert_int_equal(strlen(small), sizeof(small) - 1);
    buf = malloc(len);
    assert_int_equal(shm_stats_json(snap, buf, len), need);
    root = yajl_tree_parse(buf, err, sizeof(err));
    if (!root)
        fail_msg("JSON does not parse: %s", err);
    assert_true(YAJL_IS_OBJECT(root));
    v = jget(root, "counters", "req_ok", NULL);
    assert_true(v && YAJL_IS_INTEGER(v) && YAJL_GET_INTEGER(v) == 2);
    v = jget(root, "counters", "prompt_tok", NULL);
    assert_true(v && YAJL_GET_INTEGER(v) == 0);
    v = jget(root, "gauges", "kv_use", NULL);
    assert_true(v && YAJL_IS_NUMBER(v) && YAJL_GET_DOUBLE(v) == 0.125);
    v = jget(root, "histograms", "e2e", "count");
    assert_true(v && YAJL_GET_INTEGER(v) == 1);
    v = jget(root, "histograms", "e2e", "p99_s");
    assert_true(v && fabs(YAJL_GET_DOUBLE(v) - 2.0) / 2.0 < 0.01);
    v = jget(root, "generation", NULL, NULL);
    assert_true(v && YAJL_GET_INTEGER(v) == 1);
    stages = jget(root, "stages", NULL, NULL);
    assert_true(stages && YAJL_IS_ARRAY(stages));
    assert_int_equal(YAJL_GET_ARRAY(stages)->len, 2); /* the empty row is left out */
    v = YAJL_GET_ARRAY(stages)->values[0];
    assert_string_equal(YAJL_GET_STRING(jget(v, "stage", NULL, NULL)), "egress");
    assert_string_equal(YAJL_GET_STRING(jget(v, "state", NULL, NULL)), "backoff");
    assert_string_equal(YAJL_GET_STRING(jget(v, "cores", NULL, NULL)), "1-2,255");
    assert_true(YAJL_GET_INTEGER(jget(v, "restarts", NULL, NULL)) == 4);
    assert_true(YAJL_GET_INTEGER(jget(v, "pid", NULL, NULL)) == 77);
    assert_true(YAJL_GET_DOUBLE(jget(v, "heartbeat_age_s", NULL, NULL)) == -1);
    v = YAJL_GET_ARRAY(stages)->values[1];
    assert_string_equal(YAJL_GET_STRING(jget(v, "cores", NULL, NULL)), "0");
    {
        double age = YAJL_GET_DOUBLE(jget(v, "heartbeat_age_s", NULL, NULL));

        assert_true(age >= 0 && age < 10);
    }
    yajl_tree_free(root);

    /* The text view: every column of the table, rates against prev. */
    {
        struct shm_stats_snap *prev = snap_new();
        const char *line;

        memcpy(prev, snap, sizeof(*prev));
        prev->taken_ns -= 2000000000ull; /* 2 s earlier, no requests then */
        prev->counters[SHM_C_REQ_OK] = 0;
        need = shm_stats_text(snap, prev, buf, len);
        assert_true(need < len);
        assert_int_equal(strlen(buf), need);
        for (unsigned i = 0; i < SHM_C__COUNT; i++)
            assert_non_null(strstr(buf, shm_stats_counter_desc[i].column));
        for (unsigned i = 0; i < SHM_G__COUNT; i++)
            assert_non_null(strstr(buf, shm_stats_gauge_desc[i].column));
        for (unsigned i = 0; i < SHM_H__COUNT; i++)
            assert_non_null(strstr(buf, shm_stats_hist_desc[i].column));
        line = strstr(buf, "\nreq_ok ");
        assert_non_null(line);
        assert_true(sscanf(line, "\nreq_ok %*u %lf", &(double){ 0 }) == 1);
        {
            unsigned long long total;
            double rate;

            assert_int_equal(sscanf(line + 1, "req_ok %llu %lf", &total, &rate), 2);
            assert_int_equal(total, 2);
            assert_true(fabs(rate - 1.0) < 1e-9); /* 2 requests in 2 s */
        }
        assert_non_null(strstr(buf, "per second"));
        assert_non_null(strstr(buf, "1-2,255"));
        assert_non_null(strstr(buf, "backoff"));
        assert_non_null(strstr(buf, "never"));
        assert_non_null(strstr(buf, "ms ago"));
        /* Without prev: no rate column. */
        shm_stats_text(snap, NULL, buf, len);
        assert_null(strstr(buf, "per second"));
        free(prev);
    }
    free(buf);
    shm_stats_writer_free(&w);
    shm_stats_close(&rd);
    shm_stats_destroy(&st);
    free(snap);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hist_buckets),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_quantile_accuracy),
        cmocka_unit_test(test_concurrent_processes),
        cmocka_unit_test(test_concurrent_threads),
        cmocka_unit_test(test_writer_dies_mid_update),
        cmocka_unit_test(test_stage_table),
        cmocka_unit_test(test_reader_refuses_mismatch),
        cmocka_unit_test(test_prometheus),
        cmocka_unit_test(test_json),
    };

    return cmocka_run_group_tests(tests, NULL, NULL) ? 1 : 0;
}
