/*
 * test-shm-stats-windows.c - the parts of the stats segment that are not
 * per-writer blocks: the 10 s / 60 s windows the supervisor computes
 * (shm_stats_win_update), the per-tenant table (shm_stats_tenant_count),
 * the info region and the restart fields of the stage rows, as a reader
 * sees them in a snapshot, in JSON and in the text view. Threads write
 * while a reader snapshots (this file runs under TSan with the shm label).
 */
#include "t_util.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include <yajl/yajl_tree.h>

#include "shm_stats.h"

#define SEC 1000000000ull

static char inst[64];

static void name_instance(const char *what)
{
    snprintf(inst, sizeof(inst), "t-statsw-%d-%s", (int)getpid(), what);
}

/* A synthetic snapshot at time t: req_ok = 10 per second so far, and one
 * TTFT observation per second, of (1 + second % 4) ms. */
static void synth(struct shm_stats_snap *s, uint64_t gen, unsigned secs)
{
    memset(s, 0, sizeof(*s));
    s->generation = gen;
    s->taken_ns = 1000 * SEC + (uint64_t)secs * SEC;
    s->counters[SHM_C_REQ_OK] = 10ull * secs;
    for (unsigned k = 1; k <= secs; k++) {
        uint64_t ns = (1 + k % 4) * 1000000ull;

        s->hist[SHM_H_TTFT].buckets[shm_hist_bucket(ns)]++;
        s->hist[SHM_H_TTFT].count++;
        s->hist[SHM_H_TTFT].sum_ns += ns;
    }
}

/* The value of a window computed the slow way: quantile of the values of
 * seconds (from, to]. */
static uint64_t expect_q(unsigned from, unsigned to, double q)
{
    struct shm_stats_hist_snap *h = calloc(1, sizeof(*h));
    uint64_t v;

    for (unsigned k = from + 1; k <= to; k++)
        h->buckets[shm_hist_bucket((1 + k % 4) * 1000000ull)]++;
    v = shm_stats_hist_quantile(h, q);
    free(h);
    return v;
}

static void test_windows(void **state)
{
    struct shm_stats st, rd;
    struct shm_stats_windower *w;
    struct shm_stats_snap *in = calloc(1, sizeof(*in)), *out = calloc(1, sizeof(*out));

    (void)state;
    name_instance("win");
    assert_non_null(in);
    assert_non_null(out);
    assert_int_equal(shm_stats_create(&st, inst, 2, 1), 0);
    assert_int_equal(shm_stats_open(&rd, inst, false), 0);
    assert_int_equal(shm_stats_win_new(&w), 0);
    /* a reader cannot write the windows */
    assert_int_equal(shm_stats_win_update(&rd, w, in), -EACCES);

    /* before any history: windows present, span 0 */
    synth(in, 1, 0);
    assert_int_equal(shm_stats_win_update(&st, w, in), 0);
    assert_int_equal(shm_stats_snapshot(&rd, out), 0);
    assert_int_equal(out->nwin, SHM_STATS_NWIN);
    assert_int_equal(out->win[0].len_ns, 10 * SEC);
    assert_int_equal(out->win[1].len_ns, 60 * SEC);
    assert_int_equal(out->win[0].span_ns, 0);

    for (unsigned t = 1; t <= 95; t++) {
        synth(in, 1, t);
        assert_int_equal(shm_stats_win_update(&st, w, in), 0);
        assert_int_equal(shm_stats_snapshot(&rd, out), 0);
        /* 10 s: exactly the last 10 seconds once there are 10 */
        unsigned s10 = t < 10 ? t : 10;
        assert_int_equal(out->win[0].span_ns, (uint64_t)s10 * SEC);
        assert_int_equal(out->win[0].counters[SHM_C_REQ_OK], 10ull * s10);
        assert_int_equal(out->win[0].hist[SHM_H_TTFT].count, s10);
        assert_int_equal(out->win[0].hist[SHM_H_TTFT].q_ns[0], expect_q(t - s10, t, 0.5));
        assert_int_equal(out->win[0].hist[SHM_H_TTFT].q_ns[3], expect_q(t - s10, t, 0.99));
        /* 60 s: everything while younger, then between 50 and 60 s */
        uint64_t span = out->win[1].span_ns;
        if (t <= 60)
            assert_int_equal(span, (uint64_t)t * SEC);
        else
            assert_true(span >= 50 * SEC && span <= 60 * SEC);
        unsigned s60 = (unsigned)(span / SEC);
        assert_int_equal(out->win[1].counters[SHM_C_REQ_OK], 10ull * s60);
        assert_int_equal(out->win[1].hist[SHM_H_TTFT].count, s60);
        assert_int_equal(out->win[1].hist[SHM_H_TTFT].q_ns[2], expect_q(t - s60, t, 0.95));
    }
    /* a new generation (the instance restarted) starts the history over */
    synth(in, 2, 3);
    assert_int_equal(shm_stats_win_update(&st, w, in), 0);
    assert_int_equal(shm_stats_snapshot(&rd, out), 0);
    assert_int_equal(out->win[0].span_ns, 0);
    assert_int_equal(out->win[0].counters[SHM_C_REQ_OK], 0);

    shm_stats_win_free(w);
    shm_stats_close(&rd);
    shm_stats_destroy(&st);
    free(in);
    free(out);
}

static void test_tenants(void **state)
{
    struct shm_stats st, rd;
    struct shm_stats_writer w0, w1;
    struct shm_stats_snap *snap = calloc(1, sizeof(*snap));
    char name[64], big[100];

    (void)state;
    name_instance("ten");
    assert_non_null(snap);
    assert_int_equal(shm_stats_create(&st, inst, 2, 1), 0);
    assert_int_equal(shm_stats_writer_init(&st, 0, SHM_STAGE_EGRESS, 0, 0, &w0), 0);
    assert_int_equal(shm_stats_writer_init(&st, 1, SHM_STAGE_INGRESS, 0, 0, &w1), 0);
    assert_int_equal(shm_stats_tenant_count(&w0, "acme", 64, 5, 7, 200), 0);
    assert_int_equal(shm_stats_tenant_count(&w0, "acme", 64, 5, 3, 503), 0);
    assert_int_equal(shm_stats_tenant_count(&w0, "", 64, 1, 1, 200), 0);
    /* a name is at most name_max bytes, NUL or not; longer names are cut */
    memset(big, 'x', sizeof(big));
    assert_int_equal(shm_stats_tenant_count(&w0, big, sizeof(big), 1, 0, 200), 0);
    /* stats inv 5: one writer slot owns the table */
    assert_int_equal(shm_stats_tenant_count(&w1, "acme", 64, 1, 1, 200), -EBUSY);
    /* a restarted writer in the same slot continues the same rows */
    shm_stats_writer_free(&w0);
    assert_int_equal(shm_stats_writer_init(&st, 0, SHM_STAGE_EGRESS, 0, 0, &w0), 0);
    assert_int_equal(shm_stats_tenant_count(&w0, "acme", 64, 1, 1, 200), 0);
    /* fill the table: the rest go to "other" */
    for (int t = 0; t < SHM_STATS_TENANTS + 10; t++) {
        snprintf(name, sizeof(name), "tenant-%d", t);
        assert_int_equal(shm_stats_tenant_count(&w0, name, sizeof(name), 2, 3, 200), 0);
    }
    assert_int_equal(shm_stats_open(&rd, inst, false), 0);
    assert_int_equal(shm_stats_snapshot(&rd, snap), 0);
    assert_int_equal(snap->ntenants, SHM_STATS_TENANTS);
    assert_string_equal(snap->tenants[0].name, "acme");
    assert_int_equal(snap->tenants[0].requests, 3);
    assert_int_equal(snap->tenants[0].errors, 1);
    assert_int_equal(snap->tenants[0].prompt_tokens, 11);
    assert_int_equal(snap->tenants[0].gen_tokens, 11);
    assert_string_equal(snap->tenants[1].name, "");
    assert_int_equal(strlen(snap->tenants[2].name), SHM_STATS_TENANT_NAME - 1);
    {
        const struct shm_stats_tenant_snap *o = &snap->tenants[SHM_STATS_TENANTS - 1];
        unsigned named = SHM_STATS_TENANTS - 1 - 3; /* rows left after acme, "", xxx */

        assert_true(o->other);
        assert_string_equal(o->name, "other");
        assert_int_equal(o->requests, (uint64_t)(SHM_STATS_TENANTS + 10 - named));
        assert_int_equal(o->gen_tokens, 3ull * (SHM_STATS_TENANTS + 10 - named));
    }
    /* JSON: the tenants array parses and names acme */
    {
        size_t len = shm_stats_json(snap, NULL, 0) + 1;
        char *buf = malloc(len), err[256];
        yajl_val root, arr;

        assert_non_null(buf);
        assert_int_equal(shm_stats_json(snap, buf, len), len - 1);
        root = yajl_tree_parse(buf, err, sizeof(err));
        if (!root)
            fail_msg("JSON does not parse: %s", err);
        arr = yajl_tree_get(root, (const char *[]){ "tenants", NULL }, yajl_t_array);
        assert_non_null(arr);
        assert_int_equal(YAJL_GET_ARRAY(arr)->len, SHM_STATS_TENANTS);
        assert_string_equal(
            YAJL_GET_STRING(yajl_tree_get(YAJL_GET_ARRAY(arr)->values[0],
                                          (const char *[]){ "tenant", NULL }, yajl_t_string)),
            "acme");
        yajl_tree_free(root);
        shm_stats_text(snap, NULL, buf, len);
        free(buf);
    }
    shm_stats_writer_free(&w0);
    shm_stats_writer_free(&w1);
    shm_stats_close(&rd);
    shm_stats_destroy(&st);
    free(snap);
}

static void test_info_and_restart_fields(void **state)
{
    struct shm_stats st, rd;
    struct shm_stats_snap *snap = calloc(1, sizeof(*snap));
    struct shm_stage_info in = { .kind = SHM_STAGE_BATCHER, .state = SHM_STAGE_RUNNING,
                                 .pid = getpid(), .restarts = 2, .last_restart_ns = 7000000,
                                 .max_restart_ns = 9000000, .exit_ns = 42 };
    size_t len = 1 << 20;
    char *buf = malloc(len);

    (void)state;
    name_instance("info");
    assert_non_null(snap);
    assert_non_null(buf);
    assert_int_equal(shm_stats_create(&st, inst, 1, 2), 0);
    assert_int_equal(shm_stats_set_info(&st, "9.8.7-a-rather-long-version-string-cut-short-here",
                                        4242), 0);
    assert_int_equal(shm_stats_stage_set(&st, 1, &in), 0);
    {
        struct shm_stats_writer w;

        assert_int_equal(shm_stats_writer_init(&st, 0, SHM_STAGE_BATCHER, 0, 0, &w), 0);
        assert_int_equal(shm_stats_writer_heartbeat(&w), 0); /* row 0 = slot 0 */
        shm_stats_writer_free(&w);
    }
    assert_int_equal(shm_stats_open(&rd, inst, false), 0);
    assert_int_equal(shm_stats_set_info(&rd, "x", 1), -EACCES);
    assert_int_equal(shm_stats_snapshot(&rd, snap), 0);
    assert_int_equal(strlen(snap->version), SHM_STATS_VERSION_MAX - 1);
    assert_int_equal(strncmp(snap->version, "9.8.7-a-rather", 14), 0);
    assert_int_equal(snap->sup_pid, 4242);
    assert_true(snap->created_wall_ns > 0 && snap->taken_wall_ns >= snap->created_wall_ns);
    assert_true(snap->stages[0].heartbeat_ns > 0 && snap->stages[1].heartbeat_ns == 0);
    assert_int_equal(snap->stages[1].info.last_restart_ns, 7000000);
    assert_int_equal(snap->stages[1].info.max_restart_ns, 9000000);
    assert_int_equal(snap->stages[1].info.exit_ns, 42);
    assert_true(snap->stages[1].cpu_s < 0 && snap->stages[1].cpu_pct < 0);
    shm_stats_text(snap, NULL, buf, len);
    assert_non_null(strstr(buf, "7.00 ms"));
    assert_non_null(strstr(buf, "9.00 ms"));
    assert_non_null(strstr(buf, "favo 9.8.7"));
    assert_non_null(strstr(buf, "| 10s"));
    assert_non_null(strstr(buf, "| 60s"));
    shm_stats_prom(snap, buf, len);
    assert_non_null(strstr(buf, "favo_stage_last_restart_seconds{stage=\"batcher\",index=\"0\"} "
                                "0.0070000000000000001"));
    shm_stats_close(&rd);
    shm_stats_destroy(&st);
    free(buf);
    free(snap);
}

/* Concurrency: a thread counts tenants and another recomputes windows while
 * this one snapshots; every row and window read is one the writer wrote. */
struct conc {
    struct shm_stats *st;
    volatile int stop;
    unsigned long long done;
};

static void *tenant_writer(void *arg)
{
    struct conc *c = arg;
    struct shm_stats_writer w;

    if (shm_stats_writer_init(c->st, 0, SHM_STAGE_EGRESS, 0, SHM_STATS_FLUSH_NS, &w))
        return NULL;
    while (!__atomic_load_n(&c->stop, __ATOMIC_RELAXED)) {
        /* prompt = 2 x gen for every request of every tenant */
        char name[16];

        snprintf(name, sizeof(name), "t%llu", c->done % 5);
        shm_stats_tenant_count(&w, name, sizeof(name), 2, 1, 200);
        c->done++;
    }
    shm_stats_writer_free(&w);
    return NULL;
}

static void *window_writer(void *arg)
{
    struct conc *c = arg;
    struct shm_stats_windower *w;
    struct shm_stats_snap *s = calloc(1, sizeof(*s));
    unsigned t = 0;

    if (!s || shm_stats_win_new(&w)) {
        free(s);
        return NULL;
    }
    while (!__atomic_load_n(&c->stop, __ATOMIC_RELAXED)) {
        synth(s, 1, ++t % 200);
        s->counters[SHM_C_REQ_ERROR] = s->counters[SHM_C_REQ_OK]; /* pairs */
        shm_stats_win_update(c->st, w, s);
    }
    shm_stats_win_free(w);
    free(s);
    return NULL;
}

static void test_concurrent(void **state)
{
    struct shm_stats st, rd;
    struct conc c = { .st = &st };
    struct shm_stats_snap *snap = calloc(1, sizeof(*snap));
    pthread_t a, b;
    unsigned snaps = 0;
    uint64_t t0;

    (void)state;
    name_instance("conc");
    assert_non_null(snap);
    assert_int_equal(shm_stats_create(&st, inst, 1, 1), 0);
    assert_int_equal(shm_stats_open(&rd, inst, false), 0);
    assert_int_equal(pthread_create(&a, NULL, tenant_writer, &c), 0);
    assert_int_equal(pthread_create(&b, NULL, window_writer, &c), 0);
    t0 = favo_now_ns();
    while (favo_now_ns() - t0 < (getenv("FAVO_LONG") ? 20 : 1) * SEC) {
        assert_int_equal(shm_stats_snapshot(&rd, snap), 0);
        for (unsigned i = 0; i < snap->ntenants; i++) {
            assert_int_equal(snap->tenants[i].prompt_tokens, 2 * snap->tenants[i].gen_tokens);
            assert_int_equal(snap->tenants[i].requests, snap->tenants[i].gen_tokens);
            assert_int_equal(snap->tenants[i].name[0], 't');
        }
        for (unsigned i = 0; i < snap->nwin; i++)
            assert_int_equal(snap->win[i].counters[SHM_C_REQ_OK],
                             snap->win[i].counters[SHM_C_REQ_ERROR]);
        snaps++;
    }
    __atomic_store_n(&c.stop, 1, __ATOMIC_RELAXED);
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    printf("%llu tenant counts, %u consistent snapshots\n", c.done, snaps);
    assert_true(c.done > 0 && snaps > 0);
    shm_stats_close(&rd);
    shm_stats_destroy(&st);
    free(snap);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_windows),
        cmocka_unit_test(test_tenants),
        cmocka_unit_test(test_info_and_restart_fields),
        cmocka_unit_test(test_concurrent),
    };

    return cmocka_run_group_tests(tests, NULL, NULL) ? 1 : 0;
}
