/*
 * test-dp-bench-stats.c - favo bench's statistics and reports on samples
 * whose answers are known: the nearest-rank percentile (dp_bench.h: x[ceil(p/100
 * n) - 1]), metric names for --slo, the JSON run object, the per-request
 * records and the SVG chart (well-formed, every line inside the plot, the
 * curve never falling as the percentile rises). The synthetic-server test
 * (test-dp-bench.py) checks the measuring; this one the arithmetic, exactly.
 */
#include "dp_bench.h"

#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

static void fill(struct dp_bench_samples *s, size_t n, double scale)
{
    s->v = malloc(n * sizeof(*s->v));
    assert_non_null(s->v);
    s->n = s->cap = n;
    for (size_t i = 0; i < n; i++) /* shuffled: n - 1 - i reversed, then odd/even mixed */
        s->v[i] = scale * (double)((i * 37) % n + 1);
}

static void t_pct_nearest_rank(void **state)
{
    struct dp_bench_samples s = { 0 };

    (void)state;
    assert_true(isnan(dp_bench_pct(&s, 50))); /* empty */
    fill(&s, 100, 1); /* 1..100 (37 is prime to 100) */
    assert_true(dp_bench_pct(&s, 0) == 1);
    assert_true(dp_bench_pct(&s, 1) == 1);
    assert_true(dp_bench_pct(&s, 50) == 50);
    assert_true(dp_bench_pct(&s, 50.5) == 51);
    assert_true(dp_bench_pct(&s, 90) == 90);
    assert_true(dp_bench_pct(&s, 99) == 99);
    assert_true(dp_bench_pct(&s, 99.9) == 100);
    assert_true(dp_bench_pct(&s, 100) == 100);
    free(s.v);
    fill(&s, 1000, 0.5); /* 0.5..500 */
    assert_true(dp_bench_pct(&s, 99) == 495);
    assert_true(dp_bench_pct(&s, 99.9) == 499.5);
    assert_true(dp_bench_pct(&s, 99.99) == 500);
    free(s.v);
    fill(&s, 1, 7);
    assert_true(dp_bench_pct(&s, 0) == 7 && dp_bench_pct(&s, 50) == 7 && dp_bench_pct(&s, 100) == 7);
    free(s.v);
    fill(&s, 19, 1); /* 19 samples, as a short sweep gives: p99 is the max, p50 the 10th */
    assert_true(dp_bench_pct(&s, 50) == 10);
    assert_true(dp_bench_pct(&s, 95) == 19);
    assert_true(dp_bench_pct(&s, 90) == 18);
    free(s.v);
}

static void t_metric_names(void **state)
{
    struct dp_bench_res r = { 0 };
    double v;

    (void)state;
    fill(&r.ttft, 100, 1);
    fill(&r.itl, 100, 2);
    fill(&r.e2e, 100, 10);
    assert_int_equal(dp_bench_metric(&r, "ttft_p99_ms", &v), 0);
    assert_true(v == 99);
    assert_int_equal(dp_bench_metric(&r, "itl_p50_ms", &v), 0);
    assert_true(v == 100);
    assert_int_equal(dp_bench_metric(&r, "e2e_max_ms", &v), 0);
    assert_true(v == 1000);
    assert_int_equal(dp_bench_metric(&r, "e2e_p99.9_ms", &v), 0);
    assert_true(v == 1000);
    assert_int_equal(dp_bench_metric(&r, "ttft_p101_ms", &v), -EINVAL);
    assert_int_equal(dp_bench_metric(&r, "ttft_p99", &v), -EINVAL);
    assert_int_equal(dp_bench_metric(&r, "tpot_p99_ms", &v), -EINVAL);
    assert_int_equal(dp_bench_metric(&r, "ttft_pp_ms", &v), -EINVAL);
    dp_bench_res_free(&r);
}

/* The text of a report, in memory. */
static char *report(void (*fn)(FILE *, struct dp_bench_res *), struct dp_bench_res *r)
{
    char *buf = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&buf, &n);

    assert_non_null(f);
    fn(f, r);
    fclose(f);
    return buf;
}

static void t_json_run(void **state)
{
    struct dp_bench_res r = { 0 };
    char *j;

    (void)state;
    fill(&r.ttft, 100, 1);
    fill(&r.e2e, 100, 10);
    r.scheduled = 103;
    r.ok = 100;
    r.http_err = 2;
    r.by_status[503] = 2;
    r.timeouts = 1;
    r.out_tokens = 2500;
    r.wall_s = 10;
    r.rate = 10;
    j = report(dp_bench_json_run, &r);
    assert_non_null(strstr(j, "\"scheduled\":103,\"ok\":100,\"errors\":3,"));
    assert_non_null(strstr(j, "\"requests_per_s\":10,"));
    assert_non_null(strstr(j, "\"output_tokens_per_s\":250,"));
    assert_non_null(strstr(j, "\"errors_by_status\":{\"503\":2}"));
    assert_non_null(strstr(j, "\"ttft_ms\":{\"samples\":100,\"mean\":50.5,\"p50\":50,\"p90\":90,"
                              "\"p95\":95,\"p99\":99,\"p99.9\":100,\"max\":100}"));
    assert_non_null(strstr(j, "\"itl_ms\":{\"samples\":0,\"mean\":null,\"p50\":null,"));
    assert_non_null(strstr(j, "\"e2e_ms\":{\"samples\":100,\"mean\":505,\"p50\":500,"));
    free(j);
    dp_bench_res_free(&r);
}

static void t_records(void **state)
{
    struct dp_bench_rec rec[2] = {
        { 0, 0.03, 0.25, 114.5, 207.25, 207.5, 4, 200, DP_BENCH_OK },
        { 1000, 1000.5, NAN, NAN, NAN, 1002, 0, 0, DP_BENCH_CONN },
    };
    struct dp_bench_res r = { .rec = rec, .nrec = 2 };
    char *buf = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&buf, &n);

    (void)state;
    assert_int_equal(dp_bench_records_jsonl(f, &r), 0);
    fclose(f);
    assert_string_equal(buf,
                        "{\"intended_ms\":0.0000,\"start_ms\":0.0300,\"sent_ms\":0.2500,"
                        "\"first_ms\":114.5000,\"last_ms\":207.2500,\"end_ms\":207.5000,"
                        "\"tokens\":4,\"status\":200,\"outcome\":\"ok\"}\n"
                        "{\"intended_ms\":1000.0000,\"start_ms\":1000.5000,\"sent_ms\":null,"
                        "\"first_ms\":null,\"last_ms\":null,\"end_ms\":1002.0000,"
                        "\"tokens\":0,\"status\":0,\"outcome\":\"connection\"}\n");
    free(buf);
}

static void svg_fn(FILE *f, struct dp_bench_res *r)
{
    assert_int_equal(dp_bench_svg(f, r, "t <&> x"), 0);
}

/* Every polyline's points stay inside the plot (x 80..670, y 50..430 for
 * the 800x500 chart) and y never rises on screen as x grows: latency does
 * not fall with the percentile. */
static void t_svg(void **state)
{
    struct dp_bench_res r = { 0 };
    char *s, *p;
    int lines = 0;

    (void)state;
    fill(&r.ttft, 1000, 0.1);
    fill(&r.itl, 5000, 0.01);
    fill(&r.e2e, 1000, 3);
    s = report(svg_fn, &r);
    assert_non_null(strstr(s, "<svg "));
    assert_non_null(strstr(s, "</svg>\n"));
    assert_non_null(strstr(s, "t &lt;&amp;&gt; x")); /* the title is escaped */
    assert_non_null(strstr(s, ">99.9%</text>"));    /* the tail's ticks */
    assert_non_null(strstr(s, ">TTFT (1000)</text>"));
    assert_non_null(strstr(s, ">p50 50 p99 99 ms</text>")); /* TTFT 0.1..100: */
    assert_non_null(strstr(s, ">0.01</text>"));   /* decades from ITL's 0.01 ms */
    assert_non_null(strstr(s, ">10000</text>"));  /* to E2E's 3000 ms */
    assert_null(strstr(s, ">100000</text>"));
    for (p = s; (p = strstr(p, "points=\"")); lines++) {
        double x, y, px = -1, py = 1e9;
        int k, pts = 0;

        p += 8;
        while (sscanf(p, "%lf,%lf %n", &x, &y, &k) == 2) {
            assert_true(x >= 80 - 0.1 && x <= 670 + 0.1);
            assert_true(y >= 50 - 0.1 && y <= 430 + 0.1);
            assert_true(x > px);
            assert_true(y <= py + 1e-9);
            px = x;
            py = y;
            p += k;
            pts++;
        }
        assert_int_equal(pts, 201);
    }
    assert_int_equal(lines, 3);
    free(s);
    dp_bench_res_free(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(t_pct_nearest_rank), cmocka_unit_test(t_metric_names),
        cmocka_unit_test(t_json_run),         cmocka_unit_test(t_records),
        cmocka_unit_test(t_svg),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
