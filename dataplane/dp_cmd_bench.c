/*
 * dp_cmd_bench.c - `favo bench`: options, sweep/SLO logic and reports around
 * the load generator in dp_bench.{h,c}.
 *
 * A sweep runs one open-loop test per rate, in the order given, and reports
 * the highest rate whose run met every --slo bound (metric<=value) with no
 * more than --max-error-rate errors; with --stop-after-misses N it stops
 * after N rates in a row missed (rates are taken to be in rising order, so
 * a server past its knee is not driven further for nothing). The reports
 * hold numbers only.
 */
#include "dp.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dp_bench.h"

int dp_cmd_bench(const struct dp_cmd *cmd, int argc, char **argv);

#define MAX_RATES 64
#define MAX_SLO 8

struct slo {
    char name[32];
    double max;
};

static int parse_rates(const char *s, double *out)
{
    double a, b, st;
    int n = 0;
    char *end;

    if (sscanf(s, "%lf:%lf:%lf", &a, &b, &st) == 3) { /* START:END:STEP */
        if (a <= 0 || b < a || st <= 0)
            return -EINVAL;
        for (double r = a; r <= b + st * 1e-9 && n < MAX_RATES; r += st)
            out[n++] = r;
        return n;
    }
    while (*s && n < MAX_RATES) {
        out[n] = strtod(s, &end);
        if (end == s || out[n] <= 0 || !isfinite(out[n]) || (*end && *end != ','))
            return -EINVAL;
        n++;
        s = *end ? end + 1 : end;
    }
    return *s ? -EINVAL : n;
}

static int parse_slo(const char *s, struct slo *out)
{
    struct dp_bench_res dummy = { 0 };
    int n = 0;

    while (*s) {
        const char *eq = strchr(s, '='), *comma;
        char *end;
        double v;

        if (!eq || eq == s || (size_t)(eq - s) >= sizeof(out->name) || n == MAX_SLO)
            return -EINVAL;
        memcpy(out[n].name, s, (size_t)(eq - s));
        out[n].name[eq - s] = 0;
        if (dp_bench_metric(&dummy, out[n].name, &v))
            return -EINVAL;
        out[n].max = strtod(eq + 1, &end);
        comma = end;
        if (end == eq + 1 || (*comma && *comma != ','))
            return -EINVAL;
        n++;
        s = *comma ? comma + 1 : comma;
    }
    return n;
}

static bool meets(struct dp_bench_res *res, const struct slo *slo, int nslo, double max_err)
{
    long errs = res->http_err + res->conn_err + res->proto_err + res->timeouts;

    if (!res->scheduled || (double)errs > max_err * (double)res->scheduled)
        return false;
    for (int i = 0; i < nslo; i++) {
        double v;

        if (dp_bench_metric(res, slo[i].name, &v) || !(v <= slo[i].max))
            return false;
    }
    return true;
}

/* The file of output option --name, opened for writing; NULL (said why). */
static FILE *out_open(struct dp_opt *opts, const char *name)
{
    const char *path = dp_opt_str(opts, name);
    FILE *f = fopen(path, "w");

    if (!f)
        fprintf(stderr, "favo bench: --%s %s: %s\n", name, path, strerror(errno));
    return f;
}

/* Close it; non-zero (said why) when writing (rc) or closing failed. */
static int out_close(struct dp_opt *opts, FILE *f, const char *name, int rc)
{
    if (fclose(f) || rc) {
        fprintf(stderr, "favo bench: --%s %s: write failed\n", name, dp_opt_str(opts, name));
        return -1;
    }
    return 0;
}

int dp_cmd_bench(const struct dp_cmd *cmd, int argc, char **argv)
{
    struct dp_opt opts[] = {
        { "url", 'u', DP_OPT_STR, "URL", "http://127.0.0.1:8080", "Server base URL (http only); the endpoint path is appended." },
        { "endpoint", 0, DP_OPT_STR, "completions|chat", "completions", "POST /v1/completions or /v1/chat/completions." },
        { "model", 'm', DP_OPT_STR, "NAME", NULL, "Value of the request's \"model\" field (omitted when unset)." },
        { "api-key", 0, DP_OPT_STR, "KEY", NULL, "Sent as Authorization: Bearer KEY." },
        { "rate", 'r', DP_OPT_DOUBLE, "R", NULL, "Open-loop arrivals per second; latency counts from each request's intended send time." },
        { "arrivals", 0, DP_OPT_STR, "poisson|constant", "poisson", "Open-loop gaps: exponential (Poisson process) or fixed 1/R." },
        { "concurrency", 'c', DP_OPT_INT, "C", NULL, "Closed-loop concurrency instead of --rate." },
        { "max-connections", 0, DP_OPT_INT, "N", "1024", "Open loop: most requests in flight; later arrivals wait and the wait counts." },
        { "duration", 'd', DP_OPT_DOUBLE, "SECONDS", NULL, "Run length (arrivals stop after it; default 10 without --requests)." },
        { "requests", 'n', DP_OPT_INT, "N", NULL, "Number of requests." },
        { "timeout", 0, DP_OPT_DOUBLE, "SECONDS", "120", "Per-request limit; later counts as a timeout." },
        { "no-stream", 0, DP_OPT_FLAG, NULL, NULL, "Non-streaming requests: end-to-end latency only." },
        { "profile", 0, DP_OPT_STR, "mix", "mix", "mix: classification 150->15, extraction 300->80, summarization 800->200, Q&A 500->150, chat 200->300, code 400->500 tokens, equal weights." },
        { "input-tokens", 0, DP_OPT_INT, "N", NULL, "Fixed prompt length (with --output-tokens; overrides --profile)." },
        { "output-tokens", 0, DP_OPT_INT, "M", NULL, "Fixed max_tokens (with --input-tokens)." },
        { "prompts", 0, DP_OPT_STR, "FILE", NULL, "JSONL file, one {\"prompt\":...,\"max_tokens\":...} per line, picked uniformly." },
        { "scale", 0, DP_OPT_DOUBLE, "F", "1", "Multiply profile token counts by F (at least 1 token), for small CPU models." },
        { "seed", 0, DP_OPT_INT, "N", "1", "Seed for arrivals, workload choice and prompt text." },
        { "sweep", 0, DP_OPT_STR, "R1,R2,..|A:B:STEP", NULL, "Run once per open-loop rate and report the highest that meets --slo." },
        { "slo", 0, DP_OPT_STR, "M=V,..", NULL, "Bounds for --sweep, e.g. ttft_p99_ms=300,e2e_p50_ms=2000 (metrics ttft|itl|e2e _pN_ms or _max_ms)." },
        { "max-error-rate", 0, DP_OPT_DOUBLE, "F", "0.01", "Sweep: a rate fails when more than this fraction of requests fail." },
        { "stop-after-misses", 0, DP_OPT_INT, "N", "0", "Sweep: stop after N rates in a row missed the SLO (0: run every rate)." },
        { "records", 0, DP_OPT_STR, "FILE", NULL, "Write each request's timeline (intended, start, sent, first and last token, end; ms) as JSON lines (not with --sweep)." },
        { "json", 0, DP_OPT_STR, "FILE", NULL, "Write every figure as JSON ('-' for stdout)." },
        { "svg", 0, DP_OPT_STR, "FILE", NULL, "Write a latency-percentile chart (last run of a sweep)." },
        { "quiet", 'q', DP_OPT_FLAG, NULL, NULL, "No progress line on stderr." },
        DP_OPT_END
    };
    struct dp_bench_cfg cfg = { 0 };
    struct dp_bench_work fixed, mix[6], *file_w = NULL;
    struct dp_bench_res *res = NULL;
    double rates[MAX_RATES], scale, max_err;
    struct slo slo[MAX_SLO];
    int npos, rc = dp_opt_parse(cmd, opts, argc, argv, &npos), nrates = 0, nslo = 0, nfile = 0;
    int ret = 2, best = -1, misses = 0, stop_misses;
    const char *s;
    char err[512];
    FILE *jf = NULL;

    if (rc)
        return rc > 0 ? 0 : 2;
    if (npos > 1) {
        fprintf(stderr, "favo bench: unexpected argument (position 1); see --help\n");
        return 2;
    }
    s = dp_opt_str(opts, "endpoint");
    if (strcmp(s, "completions") && strcmp(s, "chat")) {
        fprintf(stderr, "favo bench: --endpoint %s: give completions or chat\n", s);
        return 2;
    }
    cfg.chat = !strcmp(s, "chat");
    if (dp_bench_set_url(&cfg, dp_opt_str(opts, "url"), err, sizeof(err))) {
        fprintf(stderr, "favo bench: %s\n", err);
        return 2;
    }
    cfg.model = dp_opt_str(opts, "model");
    cfg.api_key = dp_opt_str(opts, "api-key");
    s = dp_opt_str(opts, "arrivals");
    if (strcmp(s, "poisson") && strcmp(s, "constant")) {
        fprintf(stderr, "favo bench: --arrivals %s: give poisson or constant\n", s);
        return 2;
    }
    cfg.poisson = !strcmp(s, "poisson");
    cfg.stream = !dp_opt_flag(opts, "no-stream");
    cfg.progress = !dp_opt_flag(opts, "quiet");
    cfg.rate = dp_opt_find(opts, "rate")->val ? dp_opt_double(opts, "rate") : 0;
    cfg.concurrency = dp_opt_find(opts, "concurrency")->val ? (int)dp_opt_int(opts, "concurrency") : 0;
    cfg.max_conns = (int)dp_opt_int(opts, "max-connections");
    cfg.duration = dp_opt_find(opts, "duration")->val ? dp_opt_double(opts, "duration") : 0;
    cfg.requests = dp_opt_find(opts, "requests")->val ? dp_opt_int(opts, "requests") : 0;
    cfg.timeout_s = dp_opt_double(opts, "timeout");
    cfg.seed = (uint64_t)dp_opt_int(opts, "seed");
    scale = dp_opt_double(opts, "scale");
    max_err = dp_opt_double(opts, "max-error-rate");
    stop_misses = (int)dp_opt_int(opts, "stop-after-misses");
    cfg.keep_records = dp_opt_find(opts, "records")->val != NULL;
    if (dp_opt_find(opts, "sweep")->val) {
        nrates = parse_rates(dp_opt_str(opts, "sweep"), rates);
        if (nrates <= 0) {
            fprintf(stderr, "favo bench: --sweep %s: give R1,R2,... or START:END:STEP, all > 0 (at most %d)\n",
                    dp_opt_str(opts, "sweep"), MAX_RATES);
            return 2;
        }
    }
    if (dp_opt_find(opts, "slo")->val) {
        nslo = parse_slo(dp_opt_str(opts, "slo"), slo);
        if (nslo < 0) {
            fprintf(stderr, "favo bench: --slo %s: give METRIC=MS[,...], metric like ttft_p99_ms, itl_p50_ms, e2e_max_ms\n",
                    dp_opt_str(opts, "slo"));
            return 2;
        }
    }
    if ((cfg.rate > 0) + (cfg.concurrency > 0) + (nrates > 0) > 1) {
        fprintf(stderr, "favo bench: give one of --rate, --concurrency, --sweep\n");
        return 2;
    }
    if (cfg.keep_records && nrates) {
        fprintf(stderr, "favo bench: --records takes one run: give --rate or --concurrency, not --sweep\n");
        return 2;
    }
    if (cfg.rate < 0 || !isfinite(cfg.rate) || stop_misses < 0 || cfg.concurrency < 0 || cfg.max_conns < 1 ||
        cfg.max_conns > 65536 || cfg.duration < 0 || cfg.requests < 0 || cfg.timeout_s <= 0 ||
        !(scale > 0) || max_err < 0) {
        fprintf(stderr, "favo bench: a numeric option is out of range (rate, concurrency, max-connections 1..65536, duration, requests, timeout, scale must be >= 0 / > 0); see --help\n");
        return 2;
    }
    if (!cfg.rate && !cfg.concurrency && !nrates)
        cfg.concurrency = 1;
    if (!cfg.duration && !cfg.requests)
        cfg.duration = 10;
    if (dp_opt_find(opts, "prompts")->val) {
        nfile = dp_bench_load_prompts(dp_opt_str(opts, "prompts"), &file_w, err, sizeof(err));
        if (nfile < 0) {
            fprintf(stderr, "favo bench: %s\n", err);
            return 2;
        }
        cfg.work = file_w;
        cfg.nwork = nfile;
    } else if (dp_opt_find(opts, "input-tokens")->val || dp_opt_find(opts, "output-tokens")->val) {
        long long in = dp_opt_find(opts, "input-tokens")->val ? dp_opt_int(opts, "input-tokens") : -1;
        long long out = dp_opt_find(opts, "output-tokens")->val ? dp_opt_int(opts, "output-tokens") : -1;

        if (in < 1 || out < 1 || in > 1000000 || out > 1000000) {
            fprintf(stderr, "favo bench: --input-tokens and --output-tokens go together, each 1..1000000\n");
            return 2;
        }
        fixed = (struct dp_bench_work){ (int)in, (int)out, 1, NULL };
        cfg.work = &fixed;
        cfg.nwork = 1;
    } else {
        s = dp_opt_str(opts, "profile");
        if (strcmp(s, "mix")) {
            fprintf(stderr, "favo bench: --profile %s: known profiles: mix (or give --input-tokens/--output-tokens, --prompts)\n", s);
            return 2;
        }
        for (int i = 0; i < 6; i++) {
            mix[i] = dp_bench_mix[i];
            mix[i].in_tokens = (int)fmax(1, round(mix[i].in_tokens * scale));
            mix[i].out_tokens = (int)fmax(1, round(mix[i].out_tokens * scale));
        }
        cfg.work = mix;
        cfg.nwork = 6;
    }
    if (!nrates) {
        nrates = 1;
        rates[0] = cfg.rate;
    }
    res = calloc((size_t)nrates, sizeof(*res));
    if (!res) {
        fprintf(stderr, "favo bench: out of memory\n");
        goto out;
    }
    for (int i = 0; i < nrates; i++) {
        cfg.rate = rates[i];
        if (cfg.rate > 0)
            fprintf(stderr, "favo bench: %s %s, rate %.3g/s (%s)\n", cfg.host, cfg.path, cfg.rate,
                    cfg.poisson ? "poisson" : "constant");
        else
            fprintf(stderr, "favo bench: %s %s, concurrency %d\n", cfg.host, cfg.path, cfg.concurrency);
        rc = dp_bench_run(&cfg, &res[i]);
        if (rc) {
            fprintf(stderr, "favo bench: run failed: %s\n", strerror(-rc));
            goto out;
        }
        dp_bench_table(stdout, &res[i]);
        if (dp_opt_find(opts, "sweep")->val) {
            bool ok = meets(&res[i], slo, nslo, max_err);

            printf("rate %.3g/s: %s\n\n", rates[i], ok ? "meets the SLO" : "misses the SLO");
            if (ok && (best < 0 || rates[i] > rates[best]))
                best = i;
            misses = ok ? 0 : misses + 1;
            if (stop_misses && misses >= stop_misses && i + 1 < nrates) {
                printf("stopping the sweep: %d rate%s in a row missed the SLO\n\n", misses,
                       misses > 1 ? "s" : "");
                nrates = i + 1;
            }
        }
        fflush(stdout);
    }
    if (dp_opt_find(opts, "sweep")->val) {
        if (best >= 0)
            printf("highest rate meeting the SLO: %.3g/s\n", rates[best]);
        else
            printf("no rate met the SLO\n");
    }
    if (dp_opt_find(opts, "json")->val) {
        s = dp_opt_str(opts, "json");
        jf = strcmp(s, "-") ? fopen(s, "w") : stdout;
        if (!jf) {
            fprintf(stderr, "favo bench: --json %s: %s\n", s, strerror(errno));
            goto out;
        }
        fprintf(jf, "{\"url\":\"http://%s:%d%s\",\"stream\":%s,\"mode\":\"%s\",", cfg.host, cfg.port,
                cfg.path, cfg.stream ? "true" : "false", cfg.concurrency ? "closed" : "open");
        if (cfg.concurrency)
            fprintf(jf, "\"concurrency\":%d,", cfg.concurrency);
        if (dp_opt_find(opts, "sweep")->val) {
            fprintf(jf, "\"slo\":{");
            for (int i = 0; i < nslo; i++)
                fprintf(jf, "%s\"%s\":%.6g", i ? "," : "", slo[i].name, slo[i].max);
            fprintf(jf, "},\"best_rate\":");
            if (best >= 0)
                fprintf(jf, "%.6g", rates[best]);
            else
                fputs("null", jf);
            fprintf(jf, ",\"runs\":[");
            for (int i = 0; i < nrates; i++) {
                if (i)
                    fputc(',', jf);
                dp_bench_json_run(jf, &res[i]);
            }
            fprintf(jf, "]}\n");
        } else {
            fprintf(jf, "\"run\":");
            dp_bench_json_run(jf, &res[0]);
            fprintf(jf, "}\n");
        }
        if (jf != stdout && fclose(jf)) {
            fprintf(stderr, "favo bench: --json %s: %s\n", s, strerror(errno));
            goto out;
        }
    }
    if (cfg.keep_records) {
        FILE *rf = out_open(opts, "records");

        if (!rf)
            goto out;
        rc = dp_bench_records_jsonl(rf, &res[0]);
        if (out_close(opts, rf, "records", rc))
            goto out;
    }
    if (dp_opt_find(opts, "svg")->val) {
        char title[128];
        FILE *sf = out_open(opts, "svg");

        if (!sf)
            goto out;
        if (cfg.concurrency)
            snprintf(title, sizeof(title), "favo bench: latency by percentile, concurrency %d", cfg.concurrency);
        else
            snprintf(title, sizeof(title), "favo bench: latency by percentile, %.3g requests/s", cfg.rate);
        rc = dp_bench_svg(sf, &res[nrates - 1], title);
        if (out_close(opts, sf, "svg", rc))
            goto out;
    }
    ret = 0;
out:
    if (res)
        for (int i = 0; i < nrates; i++)
            dp_bench_res_free(&res[i]);
    free(res);
    if (file_w)
        dp_bench_free_prompts(file_w, nfile);
    return ret;
}
