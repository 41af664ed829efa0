/*
 * bench-serve.c - favo serve against llama.cpp's OpenAI-compatible server,
 * both measured by `favo bench` on the same model file, threads and load
 * (issue #10 "Results").
 *
 *   build/perf/bench-serve [--json] [--model FILE] [--threads N]
 *                          [--rates R1,R2,..] [--duration S] [--scale F]
 *                          [--common-rate R] [--slo-ms MS] [--timeout S]
 *                          [--repeat N] [--ctx N] [--max-seqs N]
 *                          [--stop-after-misses N] [--no-llamacpp]
 *                          [--llamacpp-interrupt] [--out DIR]
 *
 * For each server: start it on a free port, run
 *   favo bench --sweep RATES --slo ttft_p99_ms=MS --profile mix --scale F
 *              --stop-after-misses N
 * (open-loop Poisson arrivals, streaming, latency from the intended send
 * time) after two unmeasured warm-up requests, stop it, and read the
 * sweep's JSON. Reported per server:
 *   max_rate_slo   highest swept rate meeting p99 TTFT <= MS (and at most
 *                  1% failed requests), null when none does
 *   ttft_p99_ms    p99 time to first token at the common rate
 *   output_tps     output tokens/s at the common rate
 * The common rate is --common-rate, else the lowest swept rate. With
 * --repeat N the two servers take turns N times (favo, llama.cpp, favo, ...,
 * so a drifting background load hits both alike) and every figure is the
 * median of the N runs (a rate meeting no SLO counts as the lowest; for
 * even N the mean of the middle two, null if one is null); the
 * 1-minute load average is read from /proc/loadavg before and after each
 * sweep and reported beside it, because the machine may be shared.
 *
 * Both servers get their best configuration for this load, on the same
 * model file, threads and context:
 *   favo serve  --threads T --ctx-size C --max-seqs S --poll block
 *               (continuous batching of up to S sequences; blocking waits
 *               because 4 stages share the cores)
 *   llama.cpp   python -m llama_cpp.server --n_threads T --n_threads_batch T
 *               --n_ctx C --n_batch 512 --n_ubatch 512 --logits_all False
 *               --interrupt_requests False --verbose False
 *               interrupt_requests False: a new request waits for the
 *               running one instead of cutting its stream (the default,
 *               True, made most requests fail: --llamacpp-interrupt
 *               restores it). logits_all False: the server's default
 *               computes the vocabulary projection for every prompt token,
 *               which only logprobs of the prompt need. llama-cpp-python's
 *               server runs one sequence at a time (one Llama object behind
 *               a lock): it has no parallel-slots or continuous-batching
 *               setting that could match --max-seqs; llama.cpp's C++
 *               llama-server (-np N, continuous batching) would, but it is
 *               not part of the PyPI package.
 *
 * Paths: favo is FAVO_BIN, else ../favo next to this executable; the
 * model defaults to $FAVO_MODELS (or models/)/SmolLM2-135M-Instruct.Q4_1.gguf;
 * python is FAVO_VENV_PY, else .venv/bin/python3 (run from the source root).
 * llama.cpp's server is `python -m llama_cpp.server` (PyPI llama-cpp-python
 * with the [server] extras). When it cannot start, the reason is printed
 * and the llamacpp_* figures are null.
 *
 * Every child (servers, favo bench) runs in its own process group. On
 * SIGINT/SIGTERM/SIGHUP each group gets SIGTERM (favo serve drains and
 * removes its stats segment), SIGKILL after 20 s; a second signal SIGKILLs
 * at once. At exit any group still alive is SIGKILLed.
 */
#include "perf_util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <yajl/yajl_tree.h>

static int free_port(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), port = -1;

    if (fd < 0)
        return -errno;
    if (!bind(fd, (struct sockaddr *)&a, sizeof(a)) && !getsockname(fd, (struct sockaddr *)&a, &al))
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

static bool tcp_open(int port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                            .sin_port = htons((uint16_t)port)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    bool ok;

    if (fd < 0)
        return false;
    ok = connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
    close(fd);
    return ok;
}

#define MAX_REPEAT 9

struct opts {
    const char *model, *rates, *out, *favo, *py;
    int threads, repeat, ctx, max_seqs, stop_misses;
    double duration, scale, common_rate, slo_ms, timeout;
    bool json, llamacpp, lc_interrupt;
    char favo_set[256], lc_set[512]; /* the servers' settings, for the report */
};

/* What one server's sweep gave. NAN = null. */
struct side {
    bool ran;
    char why[PATH_MAX + 256]; /* why it did not run */
    double max_rate, ttft_p99, tps, rps, e2e_p99, itl_p50;
    long ok, errors;
    double wall_s; /* whole sweep */
    double load0, load1; /* 1-minute load average before / after the sweep */
};

static yajl_val num_at(yajl_val v, const char *k1, const char *k2)
{
    const char *path[3] = {k1, k2, NULL};
    yajl_val x = yajl_tree_get(v, path, yajl_t_any);

    return x && YAJL_IS_NUMBER(x) ? x : NULL;
}

static double num_or_nan(yajl_val v, const char *k1, const char *k2)
{
    yajl_val x = num_at(v, k1, k2);

    return x ? YAJL_GET_DOUBLE(x) : NAN;
}

/* Parse favo bench --sweep JSON into s for the common rate. */
static int parse_sweep(const char *path, double common, struct side *s)
{
    char err[256];
    char *txt = perf_slurp(path, 0, NULL);
    yajl_val root, runs, best;
    const char *p_best[] = {"best_rate", NULL}, *p_runs[] = {"runs", NULL};

    if (!txt) {
        snprintf(s->why, sizeof(s->why), "favo bench wrote no JSON to %s", path);
        return -ENOENT;
    }
    root = yajl_tree_parse(txt, err, sizeof(err));
    free(txt);
    if (!root) {
        snprintf(s->why, sizeof(s->why), "favo bench JSON %s: %.200s", path, err);
        return -EINVAL;
    }
    best = yajl_tree_get(root, p_best, yajl_t_any);
    s->max_rate = best && YAJL_IS_NUMBER(best) ? YAJL_GET_DOUBLE(best) : NAN;
    runs = yajl_tree_get(root, p_runs, yajl_t_array);
    if (runs) {
        for (size_t i = 0; i < runs->u.array.len; i++) {
            yajl_val r = runs->u.array.values[i];
            double rate = num_or_nan(r, "offered_rate", NULL);

            s->ok += (long)num_or_nan(r, "ok", NULL);
            s->errors += (long)num_or_nan(r, "errors", NULL);
            if (fabs(rate - common) > 1e-9)
                continue;
            s->ttft_p99 = num_or_nan(r, "ttft_ms", "p99");
            s->e2e_p99 = num_or_nan(r, "e2e_ms", "p99");
            s->itl_p50 = num_or_nan(r, "itl_ms", "p50");
            s->tps = num_or_nan(r, "output_tokens_per_s", NULL);
            s->rps = num_or_nan(r, "requests_per_s", NULL);
        }
    }
    yajl_tree_free(root);
    return 0;
}

/* favo bench --sweep against url; its own table goes to stderr. */
static int run_bench(const struct opts *o, const char *url, const char *tag, struct side *s)
{
    char jpath[PATH_MAX], svg[PATH_MAX], dur[32], scale[32], slo[64], tmo[32], miss[16];
    pid_t p;
    int st;

    snprintf(jpath, sizeof(jpath), "%s/%s.json", o->out, tag);
    snprintf(svg, sizeof(svg), "%s/%s.svg", o->out, tag);
    snprintf(dur, sizeof(dur), "%g", o->duration);
    snprintf(scale, sizeof(scale), "%g", o->scale);
    snprintf(slo, sizeof(slo), "ttft_p99_ms=%g", o->slo_ms);
    snprintf(tmo, sizeof(tmo), "%g", o->timeout);
    snprintf(miss, sizeof(miss), "%d", o->stop_misses);
    unlink(jpath);
    {
        /* Warm-up (not measured): two short requests, one at a time, so
         * neither server's first-request costs land in the sweep. */
        char *argv[] = {(char *)o->favo, "bench", "-u", (char *)url, "-c", "1", "-n", "2",
                        "--input-tokens", "16", "--output-tokens", "4", "--timeout", tmo,
                        "-q", NULL};

        p = perf_spawn(argv, "/dev/null", true);
        if (p > 0)
            perf_wait_for(p, -1);
    }
    {
        char *argv[] = {(char *)o->favo, "bench", "-u", (char *)url, "--profile", "mix",
                        "--scale", scale, "--sweep", (char *)o->rates, "--slo", slo,
                        "-d", dur, "--timeout", tmo, "--stop-after-misses", miss,
                        "--json", jpath, "--svg", svg, "-q", NULL};

        fprintf(stderr, "bench-serve: %s: favo bench --sweep %s -d %s --scale %s (%s)\n", tag,
                o->rates, dur, scale, url);
        p = perf_spawn(argv, NULL, true);
    }
    if (p < 0) {
        snprintf(s->why, sizeof(s->why), "cannot start favo bench: %s", strerror(-p));
        return p;
    }
    s->load0 = perf_loadavg1();
    st = perf_wait_for(p, -1);
    s->load1 = perf_loadavg1();
    if (st < 0 || !WIFEXITED(st)) {
        snprintf(s->why, sizeof(s->why), "favo bench did not exit normally");
        return -EIO;
    }
    /* favo bench exits non-zero when no rate meets the SLO; the JSON says. */
    if (parse_sweep(jpath, o->common_rate, s))
        return -EIO;
    s->ran = true;
    return 0;
}

static void run_favo(const struct opts *o, const char *tag, struct side *s)
{
    char log[PATH_MAX], inst[64], shm[96], thr[16], url[64], ctx[16], seqs[16];
    pid_t p;
    int port;
    double t0 = perf_mono_s();

    snprintf(log, sizeof(log), "%s/%s-serve.log", o->out, tag);
    snprintf(inst, sizeof(inst), "bsrv%ld", (long)getpid());
    snprintf(shm, sizeof(shm), "/favo.%s", inst);
    perf_set_shm(shm); /* unlinked if serve dies hard */
    snprintf(thr, sizeof(thr), "%d", o->threads);
    snprintf(ctx, sizeof(ctx), "%d", o->ctx);
    snprintf(seqs, sizeof(seqs), "%d", o->max_seqs);
    {
        /* 2 cores shared by 4 stages: blocking waits (favo serve says so). */
        char *argv[] = {(char *)o->favo, "serve", "--model", (char *)o->model, "--port", "0",
                        "--instance", inst, "--threads", thr, "--ctx-size", ctx,
                        "--max-seqs", seqs, "--poll", "block", NULL};

        p = perf_spawn(argv, log, true);
    }
    if (p < 0) {
        snprintf(s->why, sizeof(s->why), "cannot start favo serve: %s", strerror(-p));
        return;
    }
    port = perf_favo_ready_port(log, p, 120);
    if (port < 0) {
        snprintf(s->why, sizeof(s->why), "favo serve %s (log %s)",
                 port == -ECHILD ? "exited before ready" : "not ready in 120 s", log);
        perf_tail_log(log, 15);
        perf_stop_child(p, 5);
        shm_unlink(shm);
        perf_set_shm(NULL);
        return;
    }
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", port);
    run_bench(o, url, tag, s);
    perf_stop_child(p, 30);
    shm_unlink(shm); /* gone already unless it had to be SIGKILLed */
    perf_set_shm(NULL);
    s->wall_s = perf_mono_s() - t0;
}

static void run_llamacpp(const struct opts *o, const char *tag, struct side *s)
{
    char log[PATH_MAX], thr[16], pstr[16], url[64], ctx[16];
    double t0 = perf_mono_s();
    pid_t p;
    int port = free_port(), st;
    bool up = false;

    snprintf(log, sizeof(log), "%s/%s-server.log", o->out, tag);
    if (access(o->py, X_OK)) {
        snprintf(s->why, sizeof(s->why), "python %s not found (set FAVO_VENV_PY)", o->py);
        return;
    }
    if (port < 0) {
        snprintf(s->why, sizeof(s->why), "no free port");
        return;
    }
    snprintf(thr, sizeof(thr), "%d", o->threads);
    snprintf(pstr, sizeof(pstr), "%d", port);
    snprintf(ctx, sizeof(ctx), "%d", o->ctx);
    {
        /* the settings are explained at the top of this file */
        char *argv[] = {(char *)o->py, "-m", "llama_cpp.server", "--model", (char *)o->model,
                        "--host", "127.0.0.1", "--port", pstr, "--n_threads", thr,
                        "--n_threads_batch", thr, "--n_ctx", ctx, "--n_batch", "512",
                        "--n_ubatch", "512", "--logits_all", "False", "--verbose", "False",
                        "--interrupt_requests", o->lc_interrupt ? "True" : "False", NULL};

        p = perf_spawn(argv, log, true);
    }
    if (p < 0) {
        snprintf(s->why, sizeof(s->why), "cannot start python: %s", strerror(-p));
        return;
    }
    while (perf_mono_s() - t0 < 120) {
        if (waitpid(p, &st, WNOHANG) == p) {
            perf_kids_del(p);
            p = 0;
            break;
        }
        if (tcp_open(port)) {
            up = true;
            break;
        }
        perf_check_sig();
        usleep(100000);
    }
    if (!up) {
        char *b = perf_slurp(log, 0, NULL);
        const char *why = "not listening after 120 s";

        if (b && strstr(b, "ModuleNotFoundError"))
            why = "a Python module is missing (pip install 'llama-cpp-python[server]')";
        else if (!p)
            why = "exited before listening";
        free(b);
        snprintf(s->why, sizeof(s->why), "llama_cpp.server %s (log %s)", why, log);
        perf_tail_log(log, 8);
        if (p)
            perf_stop_child(p, 5);
        return;
    }
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", port);
    run_bench(o, url, tag, s);
    perf_stop_child(p, 10);
    s->wall_s = perf_mono_s() - t0;
}

static void side_json(FILE *f, bool *first, const char *pre, const struct side *s)
{
    char k[64];

#define K(name) (snprintf(k, sizeof(k), "%s_%s", pre, name), k)
    perf_jnum(f, first, K("max_rate_slo"), s->ran ? s->max_rate : NAN);
    perf_jnum(f, first, K("ttft_p99_ms"), s->ran ? s->ttft_p99 : NAN);
    perf_jnum(f, first, K("output_tps"), s->ran ? s->tps : NAN);
    perf_jnum(f, first, K("requests_per_s"), s->ran ? s->rps : NAN);
    perf_jnum(f, first, K("e2e_p99_ms"), s->ran ? s->e2e_p99 : NAN);
    perf_jnum(f, first, K("itl_p50_ms"), s->ran ? s->itl_p50 : NAN);
    perf_jnum(f, first, K("ok"), s->ran ? (double)s->ok : NAN);
    perf_jnum(f, first, K("errors"), s->ran ? (double)s->errors : NAN);
    perf_jstr(f, first, K("error"), s->ran ? NULL : s->why);
#undef K
}

/* Each repeat's figures, for the JSON: [{"max_rate_slo":..,...},...]. */
static void runs_json(FILE *f, bool *first, const char *pre, const struct side *r, int n)
{
    fprintf(f, "%s\"%s_runs\":[", *first ? "" : ",", pre);
    for (int i = 0; i < n; i++) {
        bool f2 = true;

        fputs(i ? ",{" : "{", f);
        perf_jnum(f, &f2, "max_rate_slo", r[i].ran ? r[i].max_rate : NAN);
        perf_jnum(f, &f2, "ttft_p99_ms", r[i].ran ? r[i].ttft_p99 : NAN);
        perf_jnum(f, &f2, "output_tps", r[i].ran ? r[i].tps : NAN);
        perf_jnum(f, &f2, "e2e_p99_ms", r[i].ran ? r[i].e2e_p99 : NAN);
        perf_jnum(f, &f2, "ok", r[i].ran ? (double)r[i].ok : NAN);
        perf_jnum(f, &f2, "errors", r[i].ran ? (double)r[i].errors : NAN);
        perf_jnum(f, &f2, "load1_before", r[i].load0);
        perf_jnum(f, &f2, "load1_after", r[i].load1);
        perf_jnum(f, &f2, "wall_s", r[i].wall_s);
        fputc('}', f);
    }
    fputc(']', f);
    *first = false;
}

/* The median side of n repeats; ran when any run ran. */
static void side_median(const struct side *r, int n, struct side *m)
{
    double v[MAX_REPEAT];
    int k = 0;

#define MED(field)                                                                                 \
    do {                                                                                           \
        k = 0;                                                                                     \
        for (int i = 0; i < n; i++)                                                                \
            if (r[i].ran)                                                                          \
                v[k++] = (double)r[i].field;                                                       \
        m->field = (__typeof__(m->field))perf_median(v, k, false);                                 \
    } while (0)
    *m = r[n - 1];
    for (int i = 0; i < n; i++)
        if (r[i].ran) {
            m->ran = true;
            break;
        }
    if (!m->ran)
        return;
    MED(max_rate);
    MED(ttft_p99);
    MED(tps);
    MED(rps);
    MED(e2e_p99);
    MED(itl_p50);
    MED(wall_s);
    MED(load0);
    MED(load1);
    MED(ok);
    MED(errors);
#undef MED
}

static void side_row(const char *name, const void *side)
{
    const struct side *s = side;
    char a[32], b[32], c[32], d[32], e[32], l0[16], l1[16];

    if (!s->ran) {
        printf("%-12s not run: %s\n", name, s->why);
        return;
    }
    perf_fmt(a, sizeof(a), s->max_rate, "%.2f");
    perf_fmt(b, sizeof(b), s->ttft_p99, "%.1f");
    perf_fmt(c, sizeof(c), s->tps, "%.1f");
    perf_fmt(d, sizeof(d), s->e2e_p99, "%.1f");
    perf_fmt(e, sizeof(e), s->itl_p50, "%.2f");
    perf_fmt(l0, sizeof(l0), s->load0, "%.2f");
    perf_fmt(l1, sizeof(l1), s->load1, "%.2f");
    printf("%-12s %14s %14s %12s %12s %10s %8ld %8ld %5s/%-5s\n", name, a, b, c, d, e, s->ok,
           s->errors, l0, l1);
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: bench-serve [--json] [--model FILE] [--threads N] [--rates R1,R2,..]\n"
            "                   [--duration S] [--scale F] [--common-rate R] [--slo-ms MS]\n"
            "                   [--timeout S] [--repeat N] [--ctx N] [--max-seqs N]\n"
            "                   [--stop-after-misses N] [--no-llamacpp] [--llamacpp-interrupt]\n"
            "                   [--out DIR]\n"
            "favo serve vs python -m llama_cpp.server under favo bench --profile mix --sweep.\n"
            "defaults: --threads 2 --rates 0.25,0.5,1,2 --duration 15 --scale 0.1\n"
            "          --slo-ms 300 --timeout 60 --repeat 1 --ctx 8192 --max-seqs 256\n"
            "          --stop-after-misses 1, common rate = lowest swept rate\n"
            "llama.cpp runs queued (--interrupt_requests False), with --logits_all False;\n"
            "--llamacpp-interrupt gives it its default (a new request cuts the running stream).\n");
}

int main(int argc, char **argv)
{
    struct opts o = {.threads = 2, .rates = "0.25,0.5,1,2", .duration = 15, .scale = 0.1,
                     .common_rate = NAN, .slo_ms = 300, .timeout = 60, .llamacpp = true,
                     .repeat = 1, .ctx = 8192, .max_seqs = 256, .stop_misses = 1};
    struct side none = {.max_rate = NAN, .ttft_p99 = NAN, .tps = NAN, .rps = NAN,
                        .e2e_p99 = NAN, .itl_p50 = NAN, .load0 = NAN, .load1 = NAN};
    struct side fvr[MAX_REPEAT], lcr[MAX_REPEAT], fv, lc;
    const char *v;
    char machine[256];

    perf_prog("bench-serve");
    o.json = perf_want_json(argc, argv);
    for (int i = 1; i < argc; i++) {
        if (perf_std_opt(argv[i], usage)) {
        } else if (!strcmp(argv[i], "--llamacpp-queue")) {
            /* the default now; kept so older command lines still run */
        } else if (!strcmp(argv[i], "--llamacpp-interrupt")) {
            o.lc_interrupt = true;
        } else if (!strcmp(argv[i], "--no-llamacpp")) {
            o.llamacpp = false;
        } else if (perf_arg_val(argc, argv, &i, "--model", &o.model) ||
                   perf_arg_val(argc, argv, &i, "--rates", &o.rates) ||
                   perf_arg_val(argc, argv, &i, "--out", &o.out)) {
        } else if (perf_arg_val(argc, argv, &i, "--threads", &v)) {
            o.threads = (int)perf_parse_pos("--threads", v, INFINITY);
        } else if (perf_arg_val(argc, argv, &i, "--repeat", &v)) {
            o.repeat = (int)perf_parse_pos("--repeat", v, INFINITY);
            if (o.repeat > MAX_REPEAT) {
                fprintf(stderr, "bench-serve: --repeat %d: at most %d\n", o.repeat, MAX_REPEAT);
                return 2;
            }
        } else if (perf_arg_val(argc, argv, &i, "--ctx", &v)) {
            o.ctx = (int)perf_parse_pos("--ctx", v, INFINITY);
        } else if (perf_arg_val(argc, argv, &i, "--max-seqs", &v)) {
            o.max_seqs = (int)perf_parse_pos("--max-seqs", v, INFINITY);
        } else if (perf_arg_val(argc, argv, &i, "--stop-after-misses", &v)) {
            o.stop_misses = atoi(v);
            if (o.stop_misses < 0) {
                fprintf(stderr, "bench-serve: --stop-after-misses %s: give 0 (never) or more\n", v);
                return 2;
            }
        } else if (perf_arg_val(argc, argv, &i, "--duration", &v)) {
            o.duration = perf_parse_pos("--duration", v, INFINITY);
        } else if (perf_arg_val(argc, argv, &i, "--scale", &v)) {
            o.scale = perf_parse_pos("--scale", v, INFINITY);
        } else if (perf_arg_val(argc, argv, &i, "--common-rate", &v)) {
            o.common_rate = perf_parse_pos("--common-rate", v, INFINITY);
        } else if (perf_arg_val(argc, argv, &i, "--slo-ms", &v)) {
            o.slo_ms = perf_parse_pos("--slo-ms", v, INFINITY);
        } else if (perf_arg_val(argc, argv, &i, "--timeout", &v)) {
            o.timeout = perf_parse_pos("--timeout", v, INFINITY);
        } else {
            fprintf(stderr, "bench-serve: unknown option '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    /* The sweep's rates: a comma list (favo bench also takes A:B:STEP, but
     * the common rate then needs --common-rate). */
    if (isnan(o.common_rate)) {
        char *end;

        o.common_rate = strtod(o.rates, &end);
        if (end == o.rates || !(o.common_rate > 0) || (*end && *end != ',')) {
            fprintf(stderr, "bench-serve: give --common-rate with --rates '%s'\n", o.rates);
            return 2;
        }
        for (const char *c = o.rates; (c = strchr(c, ',')); c++) {
            double r = strtod(c + 1, NULL);

            if (r > 0 && r < o.common_rate)
                o.common_rate = r;
        }
    }
    if (perf_favo_setup(&o.favo, &o.model, &o.out, "bench-serve"))
        return 2;
    o.py = (v = getenv("FAVO_VENV_PY")) && *v ? v : ".venv/bin/python3";
    snprintf(o.favo_set, sizeof(o.favo_set),
             "favo serve --threads %d --ctx-size %d --max-seqs %d --poll block", o.threads, o.ctx,
             o.max_seqs);
    snprintf(o.lc_set, sizeof(o.lc_set),
             "llama_cpp.server --n_threads %d --n_threads_batch %d --n_ctx %d --n_batch 512 "
             "--n_ubatch 512 --logits_all False --verbose False --interrupt_requests %s "
             "(one sequence at a time: no continuous batching in llama-cpp-python's server)",
             o.threads, o.threads, o.ctx, o.lc_interrupt ? "True" : "False");

    perf_signals_install();

    for (int r = 0; r < o.repeat; r++) {
        char tag[32];

        fvr[r] = none;
        lcr[r] = none;
        snprintf(tag, sizeof(tag), o.repeat > 1 ? "favo-%d" : "favo", r + 1);
        run_favo(&o, tag, &fvr[r]);
        if (o.llamacpp) {
            snprintf(tag, sizeof(tag), o.repeat > 1 ? "llamacpp-%d" : "llamacpp", r + 1);
            run_llamacpp(&o, tag, &lcr[r]);
        } else {
            snprintf(lcr[r].why, sizeof(lcr[r].why), "--no-llamacpp");
        }
    }
    side_median(fvr, o.repeat, &fv);
    side_median(lcr, o.repeat, &lc);

    perf_machine(machine, sizeof(machine));
    if (o.json) {
        bool first = true;

        printf("{");
        perf_jstr(stdout, &first, "bench", "serve");
        perf_jstr(stdout, &first, "machine", machine);
        perf_jstr(stdout, &first, "model", o.model);
        perf_jnum(stdout, &first, "threads", o.threads);
        perf_jstr(stdout, &first, "profile", "mix");
        perf_jnum(stdout, &first, "scale", o.scale);
        perf_jstr(stdout, &first, "rates", o.rates);
        perf_jnum(stdout, &first, "duration_s", o.duration);
        perf_jnum(stdout, &first, "slo_ttft_p99_ms", o.slo_ms);
        perf_jnum(stdout, &first, "common_rate", o.common_rate);
        perf_jnum(stdout, &first, "repeat", o.repeat);
        side_json(stdout, &first, "favo", &fv);
        side_json(stdout, &first, "llamacpp", &lc);
        perf_jnum(stdout, &first, "llamacpp_interrupt_requests", o.lc_interrupt ? 1 : 0);
        perf_jstr(stdout, &first, "favo_settings", o.favo_set);
        perf_jstr(stdout, &first, "llamacpp_settings", o.lc_set);
        runs_json(stdout, &first, "favo", fvr, o.repeat);
        runs_json(stdout, &first, "llamacpp", lcr, o.repeat);
        perf_jstr(stdout, &first, "out_dir", o.out);
        printf("}\n");
    } else {
        printf("bench-serve: %s\n", machine);
        printf("model %s, %d threads, --profile mix --scale %g, rates %s, %g s each\n", o.model,
               o.threads, o.scale, o.rates, o.duration);
        printf("favo:      %s\nllama.cpp: %s\n", o.favo_set, o.lc_set);
        printf("SLO p99 TTFT <= %g ms; columns after max rate are at the common rate %g/s\n",
               o.slo_ms, o.common_rate);
        if (o.repeat > 1)
            printf("each row: %d runs taking turns; the run rows, then their medians\n", o.repeat);
        printf("%-12s %14s %14s %12s %12s %10s %8s %8s %11s\n", "server", "max rate/s SLO",
               "TTFT p99 ms", "out tok/s", "E2E p99 ms", "ITL p50", "ok", "errors", "load1 b/a");
        perf_turn_rows(o.repeat, "favo", "llama.cpp", side_row, fvr, lcr, sizeof(fvr[0]), &fv, &lc);
        printf("(ok/errors: whole sweep; load1 b/a: 1-minute load average before/after it)\n"
               "favo bench JSON, SVG and server logs in %s\n", o.out);
    }
    return fv.ran ? 0 : 1;
}
