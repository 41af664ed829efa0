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

#define MAX_KIDS 8

static volatile pid_t kids[MAX_KIDS];

static void kids_add(pid_t p)
{
    for (int i = 0; i < MAX_KIDS; i++)
        if (!kids[i]) {
            kids[i] = p;
            return;
        }
}

static void kids_del(pid_t p)
{
    for (int i = 0; i < MAX_KIDS; i++)
        if (kids[i] == p)
            kids[i] = 0;
}

/* Async-signal-safe: SIGKILL every live child's process group. */
static void kids_kill_all(void)
{
    for (int i = 0; i < MAX_KIDS; i++)
        if (kids[i] > 0)
            kill(-kids[i], SIGKILL);
}

static volatile sig_atomic_t g_sig;
static char g_shm[96]; /* favo serve's stats segment, unlinked if it dies hard */

/* First signal: noted, and the wait loops stop everything gracefully
 * (check_sig). A second one: SIGKILL every child group at once. */
static void on_signal(int sig)
{
    static const char msg[] = "bench-serve: interrupted twice, killing children\n";

    if (!g_sig) {
        g_sig = sig;
        return;
    }
    kids_kill_all();
    if (write(2, msg, sizeof(msg) - 1) < 0) {
        /* nothing to do */
    }
    _exit(128 + sig);
}

static void stop_child(pid_t p, double grace_s);

/* Called from the wait loops: after a signal, SIGTERM every child (favo serve
 * drains and removes its segment), SIGKILL what is left, exit. */
static void check_sig(void)
{
    static bool stopping;

    if (!g_sig || stopping)
        return;
    stopping = true;
    fprintf(stderr, "bench-serve: interrupted, stopping children\n");
    for (int i = 0; i < MAX_KIDS; i++)
        if (kids[i] > 0)
            kill(-kids[i], SIGTERM);
    for (int i = 0; i < MAX_KIDS; i++)
        if (kids[i] > 0)
            stop_child(kids[i], 20);
    if (g_shm[0])
        shm_unlink(g_shm);
    _exit(128 + g_sig);
}

static void on_exit_kill(void)
{
    kids_kill_all();
}

static double mono_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* fork+exec argv in a new process group, stdout+stderr to log (or inherited
 * when log is NULL). Returns the pid or -errno. */
static pid_t spawn(char *const argv[], const char *log)
{
    pid_t p = fork();

    if (p < 0)
        return -errno;
    if (p == 0) {
        setpgid(0, 0);
        if (log) {
            int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

            if (fd < 0)
                _exit(126);
            dup2(fd, 1);
            dup2(fd, 2);
        } else {
            dup2(2, 1); /* keep our stdout for the table / JSON */
        }
        execv(argv[0], argv);
        fprintf(stderr, "bench-serve: exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    setpgid(p, p);
    kids_add(p);
    return p;
}

/* Wait for p up to timeout_s; returns its wait status, or -ETIMEDOUT. */
static int wait_for(pid_t p, double timeout_s)
{
    double t0 = mono_s();
    int st;

    for (;;) {
        pid_t r = waitpid(p, &st, WNOHANG);

        if (r == p) {
            kids_del(p);
            return st;
        }
        if (r < 0 && errno != EINTR)
            return -errno;
        if (timeout_s >= 0 && mono_s() - t0 > timeout_s)
            return -ETIMEDOUT;
        if (timeout_s < 0)
            check_sig(); /* a bounded wait may be check_sig's own */
        usleep(20000);
    }
}

/* SIGTERM the group, then SIGKILL after grace_s. */
static void stop_child(pid_t p, double grace_s)
{
    if (p <= 0)
        return;
    kill(-p, SIGTERM);
    if (wait_for(p, grace_s) == -ETIMEDOUT) {
        kill(-p, SIGKILL);
        wait_for(p, -1);
    }
    kill(-p, SIGKILL); /* grandchildren left in the group */
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t n = 0, cap = 0;

    if (!f)
        return NULL;
    for (;;) {
        if (cap - n < 4096) {
            char *nb = realloc(buf, cap ? cap * 2 : 65536);

            if (!nb) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = nb;
            cap = cap ? cap * 2 : 65536;
        }
        size_t k = fread(buf + n, 1, cap - n - 1, f);

        if (!k)
            break;
        n += k;
    }
    fclose(f);
    buf[n] = 0;
    if (len)
        *len = n;
    return buf;
}

/* Last `lines` lines of a log to stderr, for a server that failed. */
static void tail_log(const char *path, int lines)
{
    size_t n = 0;
    char *b = read_file(path, &n);
    size_t i = n;
    int seen = 0;

    if (!b)
        return;
    while (i > 0 && seen <= lines)
        if (b[--i] == '\n')
            seen++;
    fprintf(stderr, "---- %s (tail) ----\n%s\n----\n", path, b + i);
    free(b);
}

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

static double loadavg1(void)
{
    FILE *f = fopen("/proc/loadavg", "r");
    double l = NAN;

    if (f) {
        if (fscanf(f, "%lf", &l) != 1)
            l = NAN;
        fclose(f);
    }
    return l;
}

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
    char *txt = read_file(path, NULL);
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

        p = spawn(argv, "/dev/null");
        if (p > 0)
            wait_for(p, -1);
    }
    {
        char *argv[] = {(char *)o->favo, "bench", "-u", (char *)url, "--profile", "mix",
                        "--scale", scale, "--sweep", (char *)o->rates, "--slo", slo,
                        "-d", dur, "--timeout", tmo, "--stop-after-misses", miss,
                        "--json", jpath, "--svg", svg, "-q", NULL};

        fprintf(stderr, "bench-serve: %s: favo bench --sweep %s -d %s --scale %s (%s)\n", tag,
                o->rates, dur, scale, url);
        p = spawn(argv, NULL);
    }
    if (p < 0) {
        snprintf(s->why, sizeof(s->why), "cannot start favo bench: %s", strerror(-p));
        return p;
    }
    s->load0 = loadavg1();
    st = wait_for(p, -1);
    s->load1 = loadavg1();
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

/* Poll log for favo serve's "on http://127.0.0.1:PORT ... ready in" line. */
static int favo_ready_port(const char *log, pid_t p, double timeout_s)
{
    double t0 = mono_s();

    while (mono_s() - t0 < timeout_s) {
        char *b = read_file(log, NULL);
        int st;

        if (b) {
            char *m = strstr(b, "on http://127.0.0.1:");
            int port = 0;

            if (m && strstr(m, "ready in"))
                port = atoi(m + strlen("on http://127.0.0.1:"));
            free(b);
            if (port > 0)
                return port;
        }
        if (waitpid(p, &st, WNOHANG) == p) {
            kids_del(p);
            return -ECHILD;
        }
        check_sig();
        usleep(50000);
    }
    return -ETIMEDOUT;
}

static void run_favo(const struct opts *o, const char *tag, struct side *s)
{
    char log[PATH_MAX], inst[64], thr[16], url[64], ctx[16], seqs[16];
    pid_t p;
    int port;
    double t0 = mono_s();

    snprintf(log, sizeof(log), "%s/%s-serve.log", o->out, tag);
    snprintf(inst, sizeof(inst), "bsrv%ld", (long)getpid());
    snprintf(g_shm, sizeof(g_shm), "/favo.%s", inst);
    snprintf(thr, sizeof(thr), "%d", o->threads);
    snprintf(ctx, sizeof(ctx), "%d", o->ctx);
    snprintf(seqs, sizeof(seqs), "%d", o->max_seqs);
    {
        /* 2 cores shared by 4 stages: blocking waits (favo serve says so). */
        char *argv[] = {(char *)o->favo, "serve", "--model", (char *)o->model, "--port", "0",
                        "--instance", inst, "--threads", thr, "--ctx-size", ctx,
                        "--max-seqs", seqs, "--poll", "block", NULL};

        p = spawn(argv, log);
    }
    if (p < 0) {
        snprintf(s->why, sizeof(s->why), "cannot start favo serve: %s", strerror(-p));
        return;
    }
    port = favo_ready_port(log, p, 120);
    if (port < 0) {
        snprintf(s->why, sizeof(s->why), "favo serve %s (log %s)",
                 port == -ECHILD ? "exited before ready" : "not ready in 120 s", log);
        tail_log(log, 15);
        stop_child(p, 5);
        shm_unlink(g_shm);
        g_shm[0] = 0;
        return;
    }
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", port);
    run_bench(o, url, tag, s);
    stop_child(p, 30);
    shm_unlink(g_shm); /* gone already unless it had to be SIGKILLed */
    g_shm[0] = 0;
    s->wall_s = mono_s() - t0;
}

static void run_llamacpp(const struct opts *o, const char *tag, struct side *s)
{
    char log[PATH_MAX], thr[16], pstr[16], url[64], ctx[16];
    double t0 = mono_s();
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

        p = spawn(argv, log);
    }
    if (p < 0) {
        snprintf(s->why, sizeof(s->why), "cannot start python: %s", strerror(-p));
        return;
    }
    while (mono_s() - t0 < 120) {
        if (waitpid(p, &st, WNOHANG) == p) {
            kids_del(p);
            p = 0;
            break;
        }
        if (tcp_open(port)) {
            up = true;
            break;
        }
        check_sig();
        usleep(100000);
    }
    if (!up) {
        char *b = read_file(log, NULL);
        const char *why = "not listening after 120 s";

        if (b && strstr(b, "ModuleNotFoundError"))
            why = "a Python module is missing (pip install 'llama-cpp-python[server]')";
        else if (!p)
            why = "exited before listening";
        free(b);
        snprintf(s->why, sizeof(s->why), "llama_cpp.server %s (log %s)", why, log);
        tail_log(log, 8);
        if (p)
            stop_child(p, 5);
        return;
    }
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", port);
    run_bench(o, url, tag, s);
    stop_child(p, 10);
    s->wall_s = mono_s() - t0;
}

static void jnum(FILE *f, bool *first, const char *k, double v)
{
    fprintf(f, "%s\"%s\":", *first ? "" : ",", k);
    if (isnan(v) || isinf(v))
        fputs("null", f);
    else
        fprintf(f, "%.6g", v);
    *first = false;
}

static void jstr(FILE *f, bool *first, const char *k, const char *v)
{
    fprintf(f, "%s\"%s\":", *first ? "" : ",", k);
    if (!v) {
        fputs("null", f);
    } else {
        fputc('"', f);
        for (const char *c = v; *c; c++) {
            if (*c == '"' || *c == '\\')
                fprintf(f, "\\%c", *c);
            else if ((unsigned char)*c < 0x20)
                fprintf(f, "\\u%04x", *c);
            else
                fputc(*c, f);
        }
        fputc('"', f);
    }
    *first = false;
}

static void side_json(FILE *f, bool *first, const char *pre, const struct side *s)
{
    char k[64];

#define K(name) (snprintf(k, sizeof(k), "%s_%s", pre, name), k)
    jnum(f, first, K("max_rate_slo"), s->ran ? s->max_rate : NAN);
    jnum(f, first, K("ttft_p99_ms"), s->ran ? s->ttft_p99 : NAN);
    jnum(f, first, K("output_tps"), s->ran ? s->tps : NAN);
    jnum(f, first, K("requests_per_s"), s->ran ? s->rps : NAN);
    jnum(f, first, K("e2e_p99_ms"), s->ran ? s->e2e_p99 : NAN);
    jnum(f, first, K("itl_p50_ms"), s->ran ? s->itl_p50 : NAN);
    jnum(f, first, K("ok"), s->ran ? (double)s->ok : NAN);
    jnum(f, first, K("errors"), s->ran ? (double)s->errors : NAN);
    jstr(f, first, K("error"), s->ran ? NULL : s->why);
#undef K
}

/* Each repeat's figures, for the JSON: [{"max_rate_slo":..,...},...]. */
static void runs_json(FILE *f, bool *first, const char *pre, const struct side *r, int n)
{
    fprintf(f, "%s\"%s_runs\":[", *first ? "" : ",", pre);
    for (int i = 0; i < n; i++) {
        bool f2 = true;

        fputs(i ? ",{" : "{", f);
        jnum(f, &f2, "max_rate_slo", r[i].ran ? r[i].max_rate : NAN);
        jnum(f, &f2, "ttft_p99_ms", r[i].ran ? r[i].ttft_p99 : NAN);
        jnum(f, &f2, "output_tps", r[i].ran ? r[i].tps : NAN);
        jnum(f, &f2, "e2e_p99_ms", r[i].ran ? r[i].e2e_p99 : NAN);
        jnum(f, &f2, "ok", r[i].ran ? (double)r[i].ok : NAN);
        jnum(f, &f2, "errors", r[i].ran ? (double)r[i].errors : NAN);
        jnum(f, &f2, "load1_before", r[i].load0);
        jnum(f, &f2, "load1_after", r[i].load1);
        jnum(f, &f2, "wall_s", r[i].wall_s);
        fputc('}', f);
    }
    fputc(']', f);
    *first = false;
}

static int cmp_nan_low(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    if (isnan(x) || isnan(y))
        return isnan(y) - isnan(x); /* NAN (no rate met the SLO) sorts lowest */
    return (x > y) - (x < y);
}

/* Median of n values; NAN sorts lowest. For even n the mean of the two
 * middle values, or NAN when one of them is (no rate met the SLO). */
static double median(double *v, int n)
{
    if (n < 1)
        return NAN;
    qsort(v, (size_t)n, sizeof(*v), cmp_nan_low);
    if (n % 2)
        return v[n / 2];
    return isnan(v[n / 2 - 1]) ? NAN : (v[n / 2 - 1] + v[n / 2]) / 2;
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
        m->field = (__typeof__(m->field))median(v, k);                                             \
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

static void fmt(char *b, size_t n, double v, const char *f)
{
    if (isnan(v))
        snprintf(b, n, "-");
    else
        snprintf(b, n, f, v);
}

static void side_row(const char *name, const struct side *s)
{
    char a[32], b[32], c[32], d[32], e[32], l0[16], l1[16];

    if (!s->ran) {
        printf("%-12s not run: %s\n", name, s->why);
        return;
    }
    fmt(a, sizeof(a), s->max_rate, "%.2f");
    fmt(b, sizeof(b), s->ttft_p99, "%.1f");
    fmt(c, sizeof(c), s->tps, "%.1f");
    fmt(d, sizeof(d), s->e2e_p99, "%.1f");
    fmt(e, sizeof(e), s->itl_p50, "%.2f");
    fmt(l0, sizeof(l0), s->load0, "%.2f");
    fmt(l1, sizeof(l1), s->load1, "%.2f");
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

static bool arg_val(int argc, char **argv, int *i, const char *name, const char **v)
{
    if (strcmp(argv[*i], name))
        return false;
    if (*i + 1 >= argc) {
        fprintf(stderr, "bench-serve: %s needs a value\n", name);
        exit(2);
    }
    *v = argv[++*i];
    return true;
}

static double parse_pos(const char *name, const char *v)
{
    char *end;
    double d = strtod(v, &end);

    if (*end || !(d > 0)) {
        fprintf(stderr, "bench-serve: %s: '%s' is not a positive number\n", name, v);
        exit(2);
    }
    return d;
}

int main(int argc, char **argv)
{
    static char favo_path[PATH_MAX], model_path[PATH_MAX], out_tmpl[] = "/tmp/bench-serve-XXXXXX";
    struct opts o = {.threads = 2, .rates = "0.25,0.5,1,2", .duration = 15, .scale = 0.1,
                     .common_rate = NAN, .slo_ms = 300, .timeout = 60, .llamacpp = true,
                     .repeat = 1, .ctx = 8192, .max_seqs = 256, .stop_misses = 1};
    struct side none = {.max_rate = NAN, .ttft_p99 = NAN, .tps = NAN, .rps = NAN,
                        .e2e_p99 = NAN, .itl_p50 = NAN, .load0 = NAN, .load1 = NAN};
    struct side fvr[MAX_REPEAT], lcr[MAX_REPEAT], fv, lc;
    const char *v;
    char machine[256];
    struct sigaction sa = {.sa_handler = on_signal};

    o.json = perf_want_json(argc, argv);
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json")) {
        } else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--llamacpp-queue")) {
            /* the default now; kept so older command lines still run */
        } else if (!strcmp(argv[i], "--llamacpp-interrupt")) {
            o.lc_interrupt = true;
        } else if (!strcmp(argv[i], "--no-llamacpp")) {
            o.llamacpp = false;
        } else if (arg_val(argc, argv, &i, "--model", &o.model) ||
                   arg_val(argc, argv, &i, "--rates", &o.rates) ||
                   arg_val(argc, argv, &i, "--out", &o.out)) {
        } else if (arg_val(argc, argv, &i, "--threads", &v)) {
            o.threads = (int)parse_pos("--threads", v);
        } else if (arg_val(argc, argv, &i, "--repeat", &v)) {
            o.repeat = (int)parse_pos("--repeat", v);
            if (o.repeat > MAX_REPEAT) {
                fprintf(stderr, "bench-serve: --repeat %d: at most %d\n", o.repeat, MAX_REPEAT);
                return 2;
            }
        } else if (arg_val(argc, argv, &i, "--ctx", &v)) {
            o.ctx = (int)parse_pos("--ctx", v);
        } else if (arg_val(argc, argv, &i, "--max-seqs", &v)) {
            o.max_seqs = (int)parse_pos("--max-seqs", v);
        } else if (arg_val(argc, argv, &i, "--stop-after-misses", &v)) {
            o.stop_misses = atoi(v);
            if (o.stop_misses < 0) {
                fprintf(stderr, "bench-serve: --stop-after-misses %s: give 0 (never) or more\n", v);
                return 2;
            }
        } else if (arg_val(argc, argv, &i, "--duration", &v)) {
            o.duration = parse_pos("--duration", v);
        } else if (arg_val(argc, argv, &i, "--scale", &v)) {
            o.scale = parse_pos("--scale", v);
        } else if (arg_val(argc, argv, &i, "--common-rate", &v)) {
            o.common_rate = parse_pos("--common-rate", v);
        } else if (arg_val(argc, argv, &i, "--slo-ms", &v)) {
            o.slo_ms = parse_pos("--slo-ms", v);
        } else if (arg_val(argc, argv, &i, "--timeout", &v)) {
            o.timeout = parse_pos("--timeout", v);
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
    if ((v = getenv("FAVO_BIN")) && *v) {
        snprintf(favo_path, sizeof(favo_path), "%s", v);
    } else {
        ssize_t n = readlink("/proc/self/exe", favo_path, sizeof(favo_path) - 16);
        char *slash;

        if (n <= 0) {
            fprintf(stderr, "bench-serve: cannot find myself; set FAVO_BIN\n");
            return 2;
        }
        favo_path[n] = 0;
        if ((slash = strrchr(favo_path, '/')))
            *slash = 0; /* .../build/perf */
        if ((slash = strrchr(favo_path, '/')))
            strcpy(slash, "/favo");
    }
    o.favo = favo_path;
    if (!o.model) {
        v = getenv("FAVO_MODELS");
        snprintf(model_path, sizeof(model_path), "%s/SmolLM2-135M-Instruct.Q4_1.gguf",
                 v && *v ? v : "models");
        o.model = model_path;
    }
    o.py = (v = getenv("FAVO_VENV_PY")) && *v ? v : ".venv/bin/python3";
    if (access(o.favo, X_OK)) {
        fprintf(stderr, "bench-serve: %s is not executable (set FAVO_BIN)\n", o.favo);
        return 2;
    }
    if (access(o.model, R_OK)) {
        fprintf(stderr, "bench-serve: model %s: %s (--model FILE)\n", o.model, strerror(errno));
        return 2;
    }
    if (!o.out) {
        if (!mkdtemp(out_tmpl)) {
            fprintf(stderr, "bench-serve: mkdtemp: %s\n", strerror(errno));
            return 2;
        }
        o.out = out_tmpl;
    } else if (mkdir(o.out, 0700) && errno != EEXIST) {
        fprintf(stderr, "bench-serve: --out %s: %s\n", o.out, strerror(errno));
        return 2;
    }
    snprintf(o.favo_set, sizeof(o.favo_set),
             "favo serve --threads %d --ctx-size %d --max-seqs %d --poll block", o.threads, o.ctx,
             o.max_seqs);
    snprintf(o.lc_set, sizeof(o.lc_set),
             "llama_cpp.server --n_threads %d --n_threads_batch %d --n_ctx %d --n_batch 512 "
             "--n_ubatch 512 --logits_all False --verbose False --interrupt_requests %s "
             "(one sequence at a time: no continuous batching in llama-cpp-python's server)",
             o.threads, o.threads, o.ctx, o.lc_interrupt ? "True" : "False");

    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    atexit(on_exit_kill);

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
        jstr(stdout, &first, "bench", "serve");
        jstr(stdout, &first, "machine", machine);
        jstr(stdout, &first, "model", o.model);
        jnum(stdout, &first, "threads", o.threads);
        jstr(stdout, &first, "profile", "mix");
        jnum(stdout, &first, "scale", o.scale);
        jstr(stdout, &first, "rates", o.rates);
        jnum(stdout, &first, "duration_s", o.duration);
        jnum(stdout, &first, "slo_ttft_p99_ms", o.slo_ms);
        jnum(stdout, &first, "common_rate", o.common_rate);
        jnum(stdout, &first, "repeat", o.repeat);
        side_json(stdout, &first, "favo", &fv);
        side_json(stdout, &first, "llamacpp", &lc);
        jnum(stdout, &first, "llamacpp_interrupt_requests", o.lc_interrupt ? 1 : 0);
        jstr(stdout, &first, "favo_settings", o.favo_set);
        jstr(stdout, &first, "llamacpp_settings", o.lc_set);
        runs_json(stdout, &first, "favo", fvr, o.repeat);
        runs_json(stdout, &first, "llamacpp", lcr, o.repeat);
        jstr(stdout, &first, "out_dir", o.out);
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
        for (int r = 0; o.repeat > 1 && r < o.repeat; r++) {
            char n1[32], n2[32];

            snprintf(n1, sizeof(n1), "favo #%d", r + 1);
            snprintf(n2, sizeof(n2), "llama.cpp #%d", r + 1);
            side_row(n1, &fvr[r]);
            side_row(n2, &lcr[r]);
        }
        side_row(o.repeat > 1 ? "favo med" : "favo", &fv);
        side_row(o.repeat > 1 ? "llama.cpp med" : "llama.cpp", &lc);
        printf("(ok/errors: whole sweep; load1 b/a: 1-minute load average before/after it)\n"
               "favo bench JSON, SVG and server logs in %s\n", o.out);
    }
    return fv.ran ? 0 : 1;
}
