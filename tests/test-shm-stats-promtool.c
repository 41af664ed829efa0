/*
 * test-shm-stats-promtool.c - /metrics text checked by Prometheus' own
 * linter. A stats segment is filled with every counter, gauge and
 * histogram of the table and a stage row, its Prometheus exposition is run
 * through `promtool check metrics` (Debian's prometheus package), and the
 * names other tools depend on (issue #10) must all be present. The example
 * alert rules (dataplane/favo.rules.yml) are checked with `promtool check
 * rules` too. Skips (77) when promtool is not installed.
 */
#include "t_util.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "shm_stats.h"

static char *promtool;
static char inst[64];
static char *exposition; /* test_metrics_lint's output, for the rules check */

static void test_metrics_lint(void **state)
{
    static const char *const required[] = {
        "favo_time_to_first_token_seconds_bucket", "favo_inter_token_latency_seconds_bucket",
        "favo_e2e_request_latency_seconds_bucket", "favo_request_queue_time_seconds_bucket",
        "favo_requests_running", "favo_requests_waiting", "favo_kv_cache_usage_ratio",
        "favo_prompt_tokens_total", "favo_generation_tokens_total", "favo_requests_total{status=",
        "favo_requests_rejected_total{reason=", "favo_response_cache_hits_total",
        "favo_stage_restarts_total{stage=", "favo_stage_restart_seconds_bucket",
        "favo_stage_last_restart_seconds{stage=", "favo_ring_depth{ring=\"req\"}",
        "favo_ring_capacity{ring=\"conn\"}", "favo_ring_messages_total{ring=\"ev\"}",
        "favo_tenant_requests_total{tenant=\"acme\"}", "favo_tenant_requests_total{tenant=\"other\"}",
        "favo_tenant_generation_tokens_total{", "favo_build_info{version=\"",
    };
    struct shm_stats st, rd;
    struct shm_stats_writer w;
    struct shm_stats_snap *snap = calloc(1, sizeof(*snap));
    struct shm_stage_info in = { .kind = SHM_STAGE_ENGINE, .index = 0,
                                 .state = SHM_STAGE_RUNNING, .pid = getpid(), .restarts = 3 };
    size_t len = 1 << 20, n;
    char *buf = malloc(len), path[] = "/tmp/favo-prom-XXXXXX", *out, *err;
    char cmd[512];
    int fd, rc;

    assert_non_null(snap);
    assert_int_equal(shm_stats_create(&st, inst, 1, 1), 0);
    assert_int_equal(shm_stats_writer_init(&st, 0, SHM_STAGE_EGRESS, 0, 0, &w), 0);
    for (int c = 0; c < SHM_C__COUNT; c++)
        shm_stats_add(&w, (enum shm_stats_counter)c, (uint64_t)c + 1);
    for (int g = 0; g < SHM_G__COUNT; g++)
        shm_stats_gauge_set(&w, (enum shm_stats_gauge)g, 0.25 * (g + 1));
    for (int h = 0; h < SHM_H__COUNT; h++)
        for (uint64_t ns = 1000; ns < 200000000000ull; ns *= 3)
            shm_stats_observe(&w, (enum shm_stats_hist_id)h, ns);
    shm_stats_flush(&w);
    in.last_restart_ns = in.max_restart_ns = 12345678;
    assert_int_equal(shm_stats_stage_set(&st, 0, &in), 0);
    assert_int_equal(shm_stats_set_info(&st, "0.1.0-test", getpid()), 0);
    /* tenants: a plain name, one a label must escape, and enough to fill
     * the table so the "other" row exists */
    assert_int_equal(shm_stats_tenant_count(&w, "acme", 64, 10, 20, 200), 0);
    assert_int_equal(shm_stats_tenant_count(&w, "we\"ird\\one", 64, 1, 2, 503), 0);
    for (int t = 0; t < SHM_STATS_TENANTS + 3; t++) {
        char name[32];

        snprintf(name, sizeof(name), "t%d", t);
        assert_int_equal(shm_stats_tenant_count(&w, name, sizeof(name), 1, 1, 200), 0);
    }
    assert_int_equal(shm_stats_open(&rd, inst, false), 0);
    assert_int_equal(shm_stats_snapshot(&rd, snap), 0);
    n = shm_stats_prom(snap, buf, len);
    assert_true(n < len);
    for (unsigned i = 0; i < sizeof(required) / sizeof(required[0]); i++)
        if (!strstr(buf, required[i]))
            fail_msg("metric %s missing from the exposition", required[i]);

    fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, buf, n), (ssize_t)n);
    close(fd);
    snprintf(cmd, sizeof(cmd), "'%s' check metrics < '%s'", promtool, path);
    {
        char *argv[] = { (char *)"sh", (char *)"-c", cmd, NULL };

        rc = t_run(argv, &out, &err);
    }
    if (rc != 0)
        fail_msg("promtool check metrics failed (%d):\n%s%s", rc, out, err);
    /* promtool prints lint findings (naming, units) even with exit 0. */
    if (strlen(out) + strlen(err) > 0)
        fail_msg("promtool lint findings:\n%s%s", out, err);
    free(out);
    free(err);
    unlink(path);
    exposition = buf;
    buf = NULL;
    shm_stats_writer_free(&w);
    shm_stats_close(&rd);
    shm_stats_destroy(&st);
    free(buf);
    free(snap);
}

static void test_alert_rules(void **state)
{
    char path[1024], *out, *err;
    char *argv[] = { promtool, (char *)"check", (char *)"rules", path, NULL };
    int rc;

    snprintf(path, sizeof(path), "%s/dataplane/favo.rules.yml", t_env("FAVO_SRC", "."));
    rc = t_run(argv, &out, &err);
    if (rc != 0)
        fail_msg("promtool check rules failed (%d):\n%s%s", rc, out, err);
    assert_non_null(strstr(out, "SUCCESS"));
    free(out);
    free(err);
}

/* Every favo_* name the rules use is one /metrics really exports (a rule
 * on a misspelt name never fires, and promtool cannot tell). */
static void test_alert_rules_names(void **state)
{
    char path[1024], line[1024];
    unsigned nnames = 0;
    FILE *f;

    if (!exposition)
        skip();
    snprintf(path, sizeof(path), "%s/dataplane/favo.rules.yml", t_env("FAVO_SRC", "."));
    f = fopen(path, "r");
    assert_non_null(f);
    while (fgets(line, sizeof(line), f)) {
        for (char *p = line; (p = strstr(p, "favo_")) != NULL;) {
            char name[128], pat[140];
            size_t n = strspn(p, "abcdefghijklmnopqrstuvwxyz0123456789_");

            if (p > line && (p[-1] == '_' || (p[-1] >= 'a' && p[-1] <= 'z'))) {
                p += n;
                continue;
            }
            snprintf(name, sizeof(name), "%.*s", (int)n, p);
            p += n;
            if (strstr(line, "alert:")) /* "FavoX" alert names, not metrics */
                continue;
            snprintf(pat, sizeof(pat), "\n%s", name);
            if (!strstr(exposition, pat) && strncmp(exposition, name, strlen(name)))
                fail_msg("favo.rules.yml uses %s, which /metrics does not export", name);
            nnames++;
        }
    }
    fclose(f);
    assert_true(nnames >= 8);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_metrics_lint),
        cmocka_unit_test(test_alert_rules),
        cmocka_unit_test(test_alert_rules_names),
    };
    char *argv[] = { (char *)"sh", (char *)"-c", (char *)"command -v promtool", NULL };
    char *out = NULL;

    if (t_run(argv, &out, NULL) != 0 || !out[0])
        t_skip("promtool not installed (Debian package prometheus; ./setup.sh installs it)");
    out[strcspn(out, "\n")] = 0;
    promtool = out;
    snprintf(inst, sizeof(inst), "t-promtool-%d", (int)getpid());
    {
        int rc = cmocka_run_group_tests(tests, NULL, NULL) ? 1 : 0;

        free(exposition);
        free(promtool);
        return rc;
    }
}
