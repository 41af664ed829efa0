/*
 * bench-fairness.c - tenant fairness through the real pipeline (issue #7):
 * "tenant A floods at several times capacity while tenant B sends its
 * usual rate; B's p99 time-to-first-token stays within 2 times its unloaded
 * value".
 *
 *   build/perf/bench-fairness [--json] [--model FILE] [--threads N]
 *                             [--b-rate R] [--flood C] [--duration S]
 *                             [--repeat N] [--max-seqs N]
 *                             [--max-batch-tokens N]
 *                             [--input-tokens N --output-tokens M]
 *                             [--out DIR]
 *
 * Makes a keys file with `favo keys add` for tenants A and B (same
 * priority, no rate limits), starts `favo serve --keys FILE --access-log
 * FILE` on a free port with its own instance name, waits for "ready" and
 * /ready, warms up both keys, then alternates two phases --repeat times:
 *
 *   unloaded  B alone: favo bench --api-key B -r R -d S (open loop,
 *             Poisson, streaming, latency from the intended send time)
 *   flood     A first: favo bench --api-key A -c C (closed loop, C =
 *             --flood, default 4 x --max-seqs, so 3 x max-seqs wait all the
 *             time); once the server runs --max-seqs sequences (favo stat),
 *             B as in the unloaded phase; A is stopped when B ends and the
 *             server drains before the next phase.
 *
 * Per phase: B's TTFT p50/p99 (favo bench, client side); B's queue time
 * and server-side TTFT from the access log (queue_ms: ingress has the
 * whole request -> first step that includes it; ttft_ms: -> first token
 * sent); the engine's mean step time and tokens per step, and each
 * tenant's generated tokens/s, from `favo stat --json` snapshots taken
 * right before and after B's run (deltas of the eng_step histogram's
 * count and sum, of eng_steps / eng_tok and of the tenant rows). The
 * ratio is B's p99 TTFT in the flood over B's p99 TTFT unloaded; with
 * --repeat every figure is the median over the repeats (even N: mean of
 * the middle two). The 1-minute load average is read before and after.
 *
 * Physics: under the flood every engine step is a full batch (--max-seqs
 * decodes plus prefill chunks up to --max-batch-tokens), while unloaded a
 * step holds B's one or two sequences. B's first token needs at least the
 * step it is prefilled in; with the batcher's overlap (plan N+1 is planned
 * while step N runs) a request arriving during step N joins plan N+2 at
 * the earliest, so even a perfect scheduler gives B a TTFT of about 1.5 to
 * 2.5 full steps under the flood, against about one small step unloaded.
 * The table therefore prints the mean step time of both phases and B's
 * TTFT in flood steps, so scheduling delay can be told from compute.
 *
 * B must stay a light tenant for the test: its sequences in the
 * server (rate x mean E2E, Little's law) below its fair share of
 * --max-seqs / 2 under the flood, else B queues behind its own requests
 * and the table says so. The defaults (0.5/s, 64 -> 16 tokens, 60 s) keep
 * it there on a 2-core machine and give ~30 samples per phase; with fewer
 * samples B's p99 is its maximum and the ratio swings with one slow step.
 *
 * Paths: favo is FAVO_BIN, else ../favo next to this executable; the model
 * defaults to $FAVO_MODELS (or models/)/SmolLM2-135M-Instruct.Q4_1.gguf.
 * Every child runs in its own process group; on SIGINT/SIGTERM/SIGHUP
 * every group gets SIGTERM (SIGKILL after 20 s), a second signal SIGKILLs
 * at once, and at exit any group still alive is SIGKILLed.
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

#define MAX_REPEAT 9
#define MAX_LOG_ROWS 65536

static long file_size(const char *path)
{
    struct stat sb;

    return stat(path, &sb) ? 0 : (long)sb.st_size;
}

/* GET /ready on 127.0.0.1:port; true on a 200. */
static bool http_ready(int port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                            .sin_port = htons((uint16_t)port)};
    static const char req[] = "GET /ready HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    struct timeval tv = {.tv_sec = 5};
    char buf[64] = {0};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    bool ok = false;

    if (fd < 0)
        return false;
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    if (!connect(fd, (struct sockaddr *)&a, sizeof(a)) &&
        write(fd, req, sizeof(req) - 1) == (ssize_t)(sizeof(req) - 1) &&
        read(fd, buf, sizeof(buf) - 1) > 12)
        ok = !strncmp(buf + 9, "200", 3);
    close(fd);
    return ok;
}

/* GET path from 127.0.0.1:port into buf (NUL-terminated, headers
 * included); the length read, or -errno. */
static ssize_t http_get(int port, const char *path, char *buf, size_t cap)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                            .sin_port = htons((uint16_t)port)};
    struct timeval tv = {.tv_sec = 10};
    char req[256];
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), n;
    size_t got = 0;

    if (fd < 0)
        return -errno;
    n = snprintf(req, sizeof(req),
                 "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", path);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) || write(fd, req, (size_t)n) != n) {
        close(fd);
        return -EIO;
    }
    while (got + 1 < cap) {
        ssize_t k = read(fd, buf + got, cap - got - 1);

        if (k <= 0)
            break;
        got += (size_t)k;
    }
    buf[got] = 0;
    close(fd);
    return (ssize_t)got;
}

/* ------------------------------------------------------------ options */

struct opts {
    const char *model, *favo, *out;
    int threads, repeat, max_seqs, max_batch_tokens, flood, in_tok, out_tok;
    double b_rate, duration;
    bool json;
};

static struct opts O;
static char g_url[64], g_inst[64], g_keys[PATH_MAX], g_alog[PATH_MAX];
static char g_key_a[128], g_key_b[128];

/* ----------------------------------------------------- favo stat deltas */

/* The numbers of one `favo stat --json` snapshot this benchmark uses. */
struct snap {
    bool ok;
    double t;                       /* perf_mono_s() when taken */
    double steps, eng_tok, step_n, step_sum_s, running, waiting, preempt;
    double gen[2], req[2];           /* tenants A, B: gen_tokens, requests */
    int nb;                          /* /metrics favo_engine_step_seconds buckets */
    double le[32], cum[32];
};

static int g_port;

/* The engine step histogram's cumulative buckets from /metrics. */
static void step_buckets(struct snap *s)
{
    static char buf[1 << 20];
    static const char key[] = "favo_engine_step_seconds_bucket{le=\"";
    char *p = buf;

    s->nb = 0;
    if (http_get(g_port, "/metrics", buf, sizeof(buf)) <= 0)
        return;
    while ((p = strstr(p, key)) && s->nb < 32) {
        char *q = p + strlen(key), *e;

        s->le[s->nb] = strncmp(q, "+Inf", 4) ? strtod(q, NULL) : INFINITY;
        e = strstr(q, "} ");
        if (!e)
            break;
        s->cum[s->nb++] = strtod(e + 2, NULL);
        p = e;
    }
}

/* The smallest bucket bound holding quantile q of the steps between two
 * snapshots (seconds), NAN when none or the buckets differ. */
static double step_quant_le(const struct snap *s0, const struct snap *s1, double q)
{
    double tot;

    if (!s0->nb || s0->nb != s1->nb)
        return NAN;
    tot = s1->cum[s1->nb - 1] - s0->cum[s0->nb - 1];
    if (tot <= 0)
        return NAN;
    for (int i = 0; i < s1->nb; i++)
        if (s1->cum[i] - s0->cum[i] >= q * tot)
            return s1->le[i];
    return NAN;
}

static double jget(yajl_val v, const char *k1, const char *k2)
{
    const char *path[3] = {k1, k2, NULL};
    yajl_val x = yajl_tree_get(v, path, yajl_t_any);

    return x && YAJL_IS_NUMBER(x) ? YAJL_GET_DOUBLE(x) : NAN;
}

static struct snap take_snap(void)
{
    char path[PATH_MAX], err[256];
    char *argv[] = {(char *)O.favo, "stat", "--instance", g_inst, "--json", NULL};
    struct snap s = {.t = perf_mono_s()};
    const char *p_tn[] = {"tenants", NULL}, *p_step[] = {"histograms", "eng_step", NULL};
    yajl_val root, tn, h;
    char *txt;

    snprintf(path, sizeof(path), "%s/stat.json", O.out);
    if (perf_run_to_end(argv, path, 30) != 0)
        return s;
    txt = perf_slurp(path, 0, NULL);
    root = txt ? yajl_tree_parse(txt, err, sizeof(err)) : NULL;
    free(txt);
    if (!root)
        return s;
    s.steps = jget(root, "counters", "eng_steps");
    s.eng_tok = jget(root, "counters", "eng_tok");
    s.preempt = jget(root, "counters", "preempt");
    s.running = jget(root, "gauges", "running");
    s.waiting = jget(root, "gauges", "waiting");
    h = yajl_tree_get(root, p_step, yajl_t_object);
    s.step_n = h ? jget(h, "count", NULL) : NAN;
    s.step_sum_s = h ? jget(h, "sum_s", NULL) : NAN;
    tn = yajl_tree_get(root, p_tn, yajl_t_array);
    for (size_t i = 0; tn && i < tn->u.array.len; i++) {
        const char *p_name[] = {"tenant", NULL};
        yajl_val row = tn->u.array.values[i], nm = yajl_tree_get(row, p_name, yajl_t_string);
        const char *name = nm ? YAJL_GET_STRING(nm) : NULL;
        int w = -1;

        if (name && !strcmp(name, "A"))
            w = 0;
        else if (name && !strcmp(name, "B"))
            w = 1;
        if (w >= 0) {
            s.gen[w] = jget(row, "gen_tokens", NULL);
            s.req[w] = jget(row, "requests", NULL);
        }
    }
    s.ok = !isnan(s.steps) && !isnan(s.step_n);
    yajl_tree_free(root);
    step_buckets(&s);
    return s;
}

/* ---------------------------------------------------------- access log */

/* Quantiles (p50, p99) of queue_ms, ttft_ms and ttft_ms - queue_ms of
 * tenant's 200 answers in the access log between byte offsets [from, to):
 * q[0..1], q[2..3], q[4..5]. Returns the count. */
static int alog_quant(long from, long to, const char *tenant, double q[6])
{
    static double qv[MAX_LOG_ROWS], tv[MAX_LOG_ROWS], rv[MAX_LOG_ROWS];
    char want[64], *txt = perf_slurp(g_alog, from, NULL), *line, *save = NULL;
    int n = 0;

    q[0] = q[1] = q[2] = q[3] = q[4] = q[5] = NAN;
    if (!txt)
        return 0;
    if (to >= from && (size_t)(to - from) < strlen(txt))
        txt[to - from] = 0;
    snprintf(want, sizeof(want), "\"tenant\":\"%s\"", tenant);
    for (line = strtok_r(txt, "\n", &save); line && n < MAX_LOG_ROWS;
         line = strtok_r(NULL, "\n", &save)) {
        char *qm = strstr(line, "\"queue_ms\":"), *tm = strstr(line, "\"ttft_ms\":");

        if (line[0] != '{' || !strstr(line, want) || !strstr(line, "\"status\":200") || !qm ||
            !tm)
            continue;
        qv[n] = strtod(qm + strlen("\"queue_ms\":"), NULL);
        tv[n] = strtod(tm + strlen("\"ttft_ms\":"), NULL);
        rv[n] = tv[n] - qv[n];
        n++;
    }
    free(txt);
    if (n) {
        q[0] = perf_quantile(qv, (size_t)n, 0.50);
        q[1] = perf_quantile(qv, (size_t)n, 0.99);
        q[2] = perf_quantile(tv, (size_t)n, 0.50);
        q[3] = perf_quantile(tv, (size_t)n, 0.99);
        q[4] = perf_quantile(rv, (size_t)n, 0.50);
        q[5] = perf_quantile(rv, (size_t)n, 0.99);
    }
    return n;
}

/* -------------------------------------------------------------- phases */

/* One phase's figures; NAN = not measured. */
struct phase {
    bool ran;
    char why[256];
    double ttft_p50, ttft_p99, ok, errors;        /* B, client side */
    double q_p50, q_p99, sttft_p50, sttft_p99;    /* B, access log */
    double run_p50, run_p99;                      /* B: ttft_ms - queue_ms */
    double e2e_mean, demand;                      /* B: e2e; rate x e2e = seqs */
    double a_q_p50, a_q_p99;                      /* A, access log */
    double step_ms, tok_per_step, steps_per_s;    /* engine, stat deltas */
    double step_p50_le_ms, step_p99_le_ms;        /* /metrics bucket bounds */
    double a_tps, b_tps, preempt;                 /* stat deltas */
    double window_s, load0, load1;
};

static const struct phase PHASE_NONE = {
    .ttft_p50 = NAN, .ttft_p99 = NAN, .ok = NAN, .errors = NAN, .q_p50 = NAN, .q_p99 = NAN,
    .sttft_p50 = NAN, .sttft_p99 = NAN, .run_p50 = NAN, .run_p99 = NAN, .e2e_mean = NAN,
    .demand = NAN, .a_q_p50 = NAN, .a_q_p99 = NAN, .step_ms = NAN,
    .tok_per_step = NAN, .step_p50_le_ms = NAN, .step_p99_le_ms = NAN, .steps_per_s = NAN,
    .a_tps = NAN, .b_tps = NAN, .preempt = NAN,
    .window_s = NAN, .load0 = NAN, .load1 = NAN};

static pid_t start_bench(const char *key, const char *mode, const char *val, double dur,
                         const char *seed, const char *json)
{
    char d[32], in[16], out[16];
    char *argv[] = {(char *)O.favo, "bench", "-u", g_url, "--api-key", (char *)key,
                    (char *)mode, (char *)val, "-d", d, "--input-tokens", in,
                    "--output-tokens", out, "--seed", (char *)seed, "--timeout", "120",
                    "--json", (char *)json, "-q", NULL};

    snprintf(d, sizeof(d), "%g", dur);
    snprintf(in, sizeof(in), "%d", O.in_tok);
    snprintf(out, sizeof(out), "%d", O.out_tok);
    unlink(json);
    return perf_spawn(argv, "/dev/null", false);
}

/* B's run: favo bench's JSON into ph; stat and access-log deltas. */
static void finish_b(struct phase *ph, const char *json, const struct snap *s0,
                     const struct snap *s1, long off0, long off1)
{
    char err[256], *txt = perf_slurp(json, 0, NULL);
    yajl_val root = txt ? yajl_tree_parse(txt, err, sizeof(err)) : NULL;
    double q[6], dt = s1->t - s0->t;

    free(txt);
    if (!root) {
        snprintf(ph->why, sizeof(ph->why), "favo bench as B wrote no JSON (%s)", json);
        return;
    }
    {
        /* favo bench --json: {"url":..,"run":{"ok":..,"ttft_ms":{"p99":..}}} */
        const char *p_run[] = {"run", NULL};
        yajl_val run = yajl_tree_get(root, p_run, yajl_t_object);

        if (run) {
            ph->ttft_p50 = jget(run, "ttft_ms", "p50");
            ph->ttft_p99 = jget(run, "ttft_ms", "p99");
            ph->ok = jget(run, "ok", NULL);
            ph->errors = jget(run, "errors", NULL);
            ph->e2e_mean = jget(run, "e2e_ms", "mean");
            /* Little's law: B's sequences in the server on average */
            ph->demand = O.b_rate * ph->e2e_mean / 1e3;
        }
    }
    yajl_tree_free(root);
    if (s0->ok && s1->ok && dt > 0) {
        double n = s1->step_n - s0->step_n, st = s1->steps - s0->steps;

        ph->step_ms = n > 0 ? (s1->step_sum_s - s0->step_sum_s) / n * 1e3 : NAN;
        ph->tok_per_step = st > 0 ? (s1->eng_tok - s0->eng_tok) / st : NAN;
        ph->steps_per_s = st / dt;
        ph->a_tps = (s1->gen[0] - s0->gen[0]) / dt;
        ph->b_tps = (s1->gen[1] - s0->gen[1]) / dt;
        ph->preempt = s1->preempt - s0->preempt;
        ph->window_s = dt;
        ph->step_p50_le_ms = step_quant_le(s0, s1, 0.50) * 1e3;
        ph->step_p99_le_ms = step_quant_le(s0, s1, 0.99) * 1e3;
    }
    alog_quant(off0, off1, "B", q);
    ph->q_p50 = q[0];
    ph->q_p99 = q[1];
    ph->sttft_p50 = q[2];
    ph->sttft_p99 = q[3];
    ph->run_p50 = q[4];
    ph->run_p99 = q[5];
    alog_quant(off0, off1, "A", q);
    ph->a_q_p50 = q[0];
    ph->a_q_p99 = q[1];
    ph->ran = !isnan(ph->ttft_p99);
    if (!ph->ran)
        snprintf(ph->why, sizeof(ph->why), "B got no first token");
}

/* Wait for the server to hold nothing (running and waiting 0), up to t s. */
static void wait_idle(double t)
{
    double t0 = perf_mono_s();

    while (perf_mono_s() - t0 < t) {
        struct snap s = take_snap();

        if (s.ok && s.running == 0 && s.waiting == 0)
            return;
        perf_check_sig();
        usleep(200000);
    }
    fprintf(stderr, "bench-fairness: server not idle after %g s\n", t);
}

static void run_unloaded(int r, struct phase *ph)
{
    char json[PATH_MAX], seed[16];
    struct snap s0, s1;
    long off0, off1;
    pid_t b;

    snprintf(json, sizeof(json), "%s/b-unloaded-%d.json", O.out, r + 1);
    snprintf(seed, sizeof(seed), "%d", 1000 + r);
    fprintf(stderr, "bench-fairness: #%d unloaded: B at %g/s for %g s\n", r + 1, O.b_rate,
            O.duration);
    wait_idle(60);
    ph->load0 = perf_loadavg1();
    off0 = file_size(g_alog);
    s0 = take_snap();
    {
        char rate[32];

        snprintf(rate, sizeof(rate), "%g", O.b_rate);
        b = start_bench(g_key_b, "-r", rate, O.duration, seed, json);
    }
    if (b < 0) {
        snprintf(ph->why, sizeof(ph->why), "cannot start favo bench: %s", strerror(-b));
        return;
    }
    perf_wait_for(b, -1);
    s1 = take_snap();
    usleep(300000); /* egress writes the access-log line after the last byte */
    off1 = file_size(g_alog);
    ph->load1 = perf_loadavg1();
    finish_b(ph, json, &s0, &s1, off0, off1);
}

static void run_flood(int r, struct phase *ph)
{
    char json[PATH_MAX], ajson[PATH_MAX], seed[16], aseed[16], conc[16], rate[32];
    struct snap s0, s1;
    long off0, off1;
    double t0;
    pid_t a, b;

    snprintf(json, sizeof(json), "%s/b-flood-%d.json", O.out, r + 1);
    snprintf(ajson, sizeof(ajson), "%s/a-flood-%d.json", O.out, r + 1);
    snprintf(seed, sizeof(seed), "%d", 2000 + r);
    snprintf(aseed, sizeof(aseed), "%d", 3000 + r);
    snprintf(conc, sizeof(conc), "%d", O.flood);
    snprintf(rate, sizeof(rate), "%g", O.b_rate);
    fprintf(stderr, "bench-fairness: #%d flood: A at concurrency %d, then B at %g/s for %g s\n",
            r + 1, O.flood, O.b_rate, O.duration);
    wait_idle(60);
    ph->load0 = perf_loadavg1();
    /* A runs until stopped: far longer than B's part */
    a = start_bench(g_key_a, "-c", conc, O.duration * 4 + 120, aseed, ajson);
    if (a < 0) {
        snprintf(ph->why, sizeof(ph->why), "cannot start favo bench: %s", strerror(-a));
        return;
    }
    /* the flood holds every slot and a queue behind them (or 30 s passed) */
    t0 = perf_mono_s();
    for (;;) {
        struct snap s = take_snap();

        if (s.ok && s.running >= O.max_seqs && s.waiting > 0)
            break;
        if (perf_mono_s() - t0 > 30) {
            fprintf(stderr, "bench-fairness: the flood did not fill %d slots in 30 s\n",
                    O.max_seqs);
            break;
        }
        perf_check_sig();
        usleep(200000);
    }
    sleep(1); /* past the first wave of prefills: steady decode + prefill mix */
    off0 = file_size(g_alog);
    s0 = take_snap();
    b = start_bench(g_key_b, "-r", rate, O.duration, seed, json);
    if (b < 0) {
        snprintf(ph->why, sizeof(ph->why), "cannot start favo bench: %s", strerror(-b));
        perf_stop_child(a, 20);
        return;
    }
    perf_wait_for(b, -1);
    s1 = take_snap();
    usleep(300000);
    off1 = file_size(g_alog);
    ph->load1 = perf_loadavg1();
    perf_stop_child(a, 20); /* its connections close: the server cancels A's requests */
    finish_b(ph, json, &s0, &s1, off0, off1);
}

/* ---------------------------------------------------------- the server */

static int add_key(const char *tenant, char *key, size_t cap)
{
    char out[PATH_MAX], *txt, *p;
    char *argv[] = {(char *)O.favo, "keys", "add", "--keys", g_keys, "--tenant", (char *)tenant,
                    "--name", (char *)tenant, "--rpm", "0", "--tpm", "0", NULL};
    size_t n;

    snprintf(out, sizeof(out), "%s/key-%s.txt", O.out, tenant);
    if (perf_run_to_end(argv, out, 30) != 0)
        return -EIO;
    txt = perf_slurp(out, 0, &n);
    if (!txt)
        return -EIO;
    while (n && (txt[n - 1] == '\n' || txt[n - 1] == ' '))
        txt[--n] = 0;
    p = strrchr(txt, ' ');
    p = p ? p + 1 : txt;
    if (!*p || strlen(p) >= cap) {
        free(txt);
        return -EIO;
    }
    strcpy(key, p);
    unlink(out); /* the key is a secret: not left in the results folder */
    free(txt);
    return 0;
}

static pid_t start_server(char *why, size_t wn)
{
    char log[PATH_MAX], thr[16], seqs[16], mbt[16];
    double t0 = perf_mono_s();
    int port;
    pid_t p;

    snprintf(log, sizeof(log), "%s/serve.log", O.out);
    snprintf(thr, sizeof(thr), "%d", O.threads);
    snprintf(seqs, sizeof(seqs), "%d", O.max_seqs);
    snprintf(mbt, sizeof(mbt), "%d", O.max_batch_tokens);
    {
        char *argv[] = {(char *)O.favo, "serve", "--model", (char *)O.model, "--port", "0",
                        "--instance", g_inst, "--keys", g_keys, "--access-log", g_alog,
                        "--threads", thr, "--max-seqs", seqs, "--max-batch-tokens", mbt,
                        "--ctx-size", "2048", "--kv-cache-mb", "512", "--poll", "block", NULL};

        p = perf_spawn(argv, log, true);
    }
    if (p < 0) {
        snprintf(why, wn, "cannot start favo serve: %s", strerror(-p));
        return p;
    }
    port = perf_favo_ready_port(log, p, 120);
    if (port == -ECHILD) {
        snprintf(why, wn, "favo serve exited before ready (log %s)", log);
        perf_tail_log(log, 15);
        return -ECHILD;
    }
    while (port > 0 && perf_mono_s() - t0 < 120 && !http_ready(port))
        usleep(100000);
    if (port <= 0 || !http_ready(port)) {
        snprintf(why, wn, "favo serve not ready in 120 s (log %s)", log);
        perf_tail_log(log, 15);
        perf_stop_child(p, 5);
        return -ETIMEDOUT;
    }
    snprintf(g_url, sizeof(g_url), "http://127.0.0.1:%d", port);
    g_port = port;
    return p;
}

static void warm_up(void)
{
    const char *keys[] = {g_key_a, g_key_b};

    for (int i = 0; i < 2; i++) {
        char *argv[] = {(char *)O.favo, "bench", "-u", g_url, "--api-key", (char *)keys[i],
                        "-c", "1", "-n", "2", "--input-tokens", "16", "--output-tokens", "4",
                        "-q", NULL};

        perf_run_to_end(argv, "/dev/null", 120);
    }
}

/* ------------------------------------------------------------- results */

#define PHASE_FIELDS(X)                                                                            \
    X(ttft_p50) X(ttft_p99) X(ok) X(errors) X(q_p50) X(q_p99) X(sttft_p50) X(sttft_p99)           \
    X(run_p50) X(run_p99) X(e2e_mean) X(demand)                                                    \
    X(a_q_p50) X(a_q_p99) X(step_ms) X(step_p50_le_ms) X(step_p99_le_ms) X(tok_per_step)          \
    X(steps_per_s) X(a_tps) X(b_tps)                                                               \
    X(preempt) X(window_s) X(load0) X(load1)

static void phase_median(const struct phase *r, int n, struct phase *m)
{
    double v[MAX_REPEAT];

    *m = PHASE_NONE;
    for (int i = 0; i < n; i++)
        m->ran |= r[i].ran;
    if (!m->ran) {
        snprintf(m->why, sizeof(m->why), "%s", r[n - 1].why);
        return;
    }
#define MED(f)                                                                                     \
    {                                                                                              \
        int k = 0;                                                                                 \
        for (int i = 0; i < n; i++)                                                                \
            if (r[i].ran)                                                                          \
                v[k++] = r[i].f;                                                                   \
        m->f = perf_median(v, k, true);                                                            \
    }
    PHASE_FIELDS(MED)
#undef MED
}

static void phase_json(FILE *f, bool *first, const char *pre, const struct phase *p)
{
    char k[96];

#define J(field)                                                                                   \
    snprintf(k, sizeof(k), "%s%s", pre, #field);                                                   \
    perf_jnum(f, first, k, p->field);
    PHASE_FIELDS(J)
#undef J
    snprintf(k, sizeof(k), "%serror", pre);
    if (!p->ran)
        perf_jstr(f, first, k, p->why);
}

static void phase_row(const char *name, const void *side)
{
    const struct phase *p = side;
    char c[15][24];

    if (!p->ran) {
        printf("%-14s not run: %s\n", name, p->why);
        return;
    }
    perf_fmt(c[0], 24, p->ttft_p50, "%.1f");
    perf_fmt(c[1], 24, p->ttft_p99, "%.1f");
    perf_fmt(c[2], 24, p->q_p50, "%.1f");
    perf_fmt(c[3], 24, p->q_p99, "%.1f");
    perf_fmt(c[4], 24, p->run_p99, "%.1f");
    perf_fmt(c[5], 24, p->step_ms, "%.1f");
    perf_fmt(c[6], 24, p->tok_per_step, "%.1f");
    perf_fmt(c[7], 24, p->a_tps, "%.1f");
    perf_fmt(c[8], 24, p->demand, "%.1f");
    perf_fmt(c[9], 24, p->ttft_p99 / p->step_ms, "%.1f");
    perf_fmt(c[10], 24, p->load0, "%.1f");
    perf_fmt(c[11], 24, p->load1, "%.1f");
    perf_fmt(c[12], 24, p->ok, "%.0f");
    perf_fmt(c[13], 24, p->errors, "%.0f");
    perf_fmt(c[14], 24, p->step_p99_le_ms, "%.0f");
    printf("%-14s %8s %8s %8s %8s %8s %8s %8s %8s %8s %6s %9s %5s/%-5s %5s/%s\n", name, c[0],
           c[1], c[2], c[3], c[4], c[5], c[14], c[6], c[7], c[8], c[9], c[12], c[13], c[10],
           c[11]);
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: bench-fairness [--json] [--model FILE] [--threads N] [--b-rate R]\n"
            "                      [--flood C] [--duration S] [--repeat N] [--max-seqs N]\n"
            "                      [--max-batch-tokens N] [--input-tokens N --output-tokens M]\n"
            "                      [--out DIR]\n"
            "Tenant B's TTFT alone and while tenant A floods (closed loop, C streams),\n"
            "through favo serve; ratio = B p99 TTFT flood / unloaded (issue #7 goal <= 2).\n"
            "defaults: --threads 2 --b-rate 0.5 --flood 4 x max-seqs --duration 60 --repeat 1\n"
            "          --max-seqs 16 --max-batch-tokens 512 --input-tokens 64\n"
            "          --output-tokens 16\n");
}

int main(int argc, char **argv)
{
    static struct phase un[MAX_REPEAT], fl[MAX_REPEAT];
    struct phase mu, mf;
    double ratios[MAX_REPEAT], ratio, load0, load1;
    char machine[256], why[PATH_MAX + 64] = "", shm[96];
    const char *v;
    pid_t srv;

    O = (struct opts){.threads = 2, .repeat = 1, .max_seqs = 16, .max_batch_tokens = 512,
                      .in_tok = 64, .out_tok = 16, .b_rate = 0.5, .duration = 60};
    perf_prog("bench-fairness");
    O.json = perf_want_json(argc, argv);
    for (int i = 1; i < argc; i++) {
        if (perf_std_opt(argv[i], usage)) {
        } else if (perf_arg_val(argc, argv, &i, "--model", &O.model) ||
                   perf_arg_val(argc, argv, &i, "--out", &O.out)) {
        } else if (perf_arg_val(argc, argv, &i, "--threads", &v)) {
            O.threads = (int)perf_parse_pos("--threads", v, 1e9);
        } else if (perf_arg_val(argc, argv, &i, "--b-rate", &v)) {
            O.b_rate = perf_parse_pos("--b-rate", v, 1e9);
        } else if (perf_arg_val(argc, argv, &i, "--flood", &v)) {
            O.flood = (int)perf_parse_pos("--flood", v, 1e9);
        } else if (perf_arg_val(argc, argv, &i, "--duration", &v)) {
            O.duration = perf_parse_pos("--duration", v, 1e9);
        } else if (perf_arg_val(argc, argv, &i, "--repeat", &v)) {
            O.repeat = (int)perf_parse_pos("--repeat", v, 1e9);
        } else if (perf_arg_val(argc, argv, &i, "--max-seqs", &v)) {
            O.max_seqs = (int)perf_parse_pos("--max-seqs", v, 1e9);
        } else if (perf_arg_val(argc, argv, &i, "--max-batch-tokens", &v)) {
            O.max_batch_tokens = (int)perf_parse_pos("--max-batch-tokens", v, 1e9);
        } else if (perf_arg_val(argc, argv, &i, "--input-tokens", &v)) {
            O.in_tok = (int)perf_parse_pos("--input-tokens", v, 1e9);
        } else if (perf_arg_val(argc, argv, &i, "--output-tokens", &v)) {
            O.out_tok = (int)perf_parse_pos("--output-tokens", v, 1e9);
        } else {
            fprintf(stderr, "bench-fairness: unknown option '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    if (O.repeat > MAX_REPEAT) {
        fprintf(stderr, "bench-fairness: --repeat %d: at most %d\n", O.repeat, MAX_REPEAT);
        return 2;
    }
    if (!O.flood)
        O.flood = 4 * O.max_seqs;
    if (perf_favo_setup(&O.favo, &O.model, &O.out, "bench-fair"))
        return 2;
    snprintf(g_keys, sizeof(g_keys), "%s/keys.conf", O.out);
    snprintf(g_alog, sizeof(g_alog), "%s/access.log", O.out);
    snprintf(g_inst, sizeof(g_inst), "bfair%ld", (long)getpid());
    snprintf(shm, sizeof(shm), "/favo.%s", g_inst);
    perf_set_shm(shm); /* favo serve's stats segment, unlinked if it dies hard */
    unlink(g_keys);

    perf_signals_install();

    for (int r = 0; r < O.repeat; r++) {
        un[r] = PHASE_NONE;
        fl[r] = PHASE_NONE;
    }
    load0 = perf_loadavg1();
    srv = -1;
    if (add_key("A", g_key_a, sizeof(g_key_a)) || add_key("B", g_key_b, sizeof(g_key_b)))
        snprintf(why, sizeof(why), "favo keys add failed (keys file %s)", g_keys);
    else
        srv = start_server(why, sizeof(why));
    if (srv > 0) {
        warm_up();
        for (int r = 0; r < O.repeat; r++) {
            run_unloaded(r, &un[r]);
            run_flood(r, &fl[r]);
        }
        perf_stop_child(srv, 30);
        shm_unlink(shm); /* gone already unless it had to be SIGKILLed */
        perf_set_shm(NULL);
    }
    load1 = perf_loadavg1();
    for (int r = 0; r < O.repeat; r++) {
        if (!why[0] && !un[r].ran)
            snprintf(why, sizeof(why), "%s", un[r].why);
        if (!why[0] && !fl[r].ran)
            snprintf(why, sizeof(why), "%s", fl[r].why);
    }
    for (int r = 0; r < O.repeat; r++)
        ratios[r] = un[r].ran && fl[r].ran ? fl[r].ttft_p99 / un[r].ttft_p99 : NAN;
    phase_median(un, O.repeat, &mu);
    phase_median(fl, O.repeat, &mf);
    ratio = perf_median(ratios, O.repeat, true); /* median of the per-repeat ratios */

    perf_machine(machine, sizeof(machine));
    if (O.json) {
        char k[64];
        bool first = true;
        const struct {
            const char *key;
            double v;
        } nums[] = {
            {"threads", O.threads},
            {"max_seqs", O.max_seqs},
            {"max_batch_tokens", O.max_batch_tokens},
            {"flood_concurrency", O.flood},
            {"b_rate", O.b_rate},
            {"duration_s", O.duration},
            {"input_tokens", O.in_tok},
            {"output_tokens", O.out_tok},
            {"repeat", O.repeat},
            {"b_ttft_p99_unloaded_ms", mu.ttft_p99},
            {"b_ttft_p99_flood_ms", mf.ttft_p99},
            {"b_ttft_p99_ratio", ratio},
            {"b_ttft_p50_unloaded_ms", mu.ttft_p50},
            {"b_ttft_p50_flood_ms", mf.ttft_p50},
            {"a_output_tps", mf.a_tps},
            {"step_ms_unloaded", mu.step_ms},
            {"step_ms_flood", mf.step_ms},
            {"b_ttft_p99_flood_steps", mf.ttft_p99 / mf.step_ms},
            {"load_before", load0},
            {"load_after", load1},
        };

        fputc('{', stdout);
        perf_jstr(stdout, &first, "bench", "fairness");
        perf_jstr(stdout, &first, "machine", machine);
        perf_jstr(stdout, &first, "model", O.model);
        for (size_t i = 0; i < sizeof(nums) / sizeof(nums[0]); i++)
            perf_jnum(stdout, &first, nums[i].key, nums[i].v);
        phase_json(stdout, &first, "unloaded_", &mu);
        phase_json(stdout, &first, "flood_", &mf);
        for (int r = 0; O.repeat > 1 && r < O.repeat; r++) {
            snprintf(k, sizeof(k), "run%d_", r + 1);
            perf_jnum(stdout, &first, strcat(k, "ratio"), ratios[r]);
            snprintf(k, sizeof(k), "run%d_unloaded_", r + 1);
            phase_json(stdout, &first, k, &un[r]);
            snprintf(k, sizeof(k), "run%d_flood_", r + 1);
            phase_json(stdout, &first, k, &fl[r]);
        }
        if (why[0])
            perf_jstr(stdout, &first, "error", why);
        perf_jstr(stdout, &first, "out_dir", O.out);
        fputs("}\n", stdout);
    } else {
        char rs[32];

        printf("bench-fairness: %s\n", machine);
        printf("favo serve --threads %d --max-seqs %d --max-batch-tokens %d --poll block; "
               "%d -> %d tokens, streaming\n",
               O.threads, O.max_seqs, O.max_batch_tokens, O.in_tok, O.out_tok);
        printf("B: Poisson %g/s for %g s; flood: A closed loop, concurrency %d\n", O.b_rate,
               O.duration, O.flood);
        if (why[0])
            printf("error: %s\n", why);
        printf("%-14s %8s %8s %8s %8s %8s %8s %8s %8s %8s %6s %9s %11s %s\n", "phase",
               "B TTFT50", "B TTFT99", "B q50", "B q99", "B run99", "step ms", "step99<=",
               "tok/step", "A tok/s", "B seqs", "B99/steps", "B ok/err", "load b/a");
        perf_turn_rows(O.repeat, "unloaded", "flood", phase_row, un, fl, sizeof(un[0]), &mu, &mf);
        perf_fmt(rs, sizeof(rs), ratio, "%.2f");
        printf("ratio B p99 TTFT flood / unloaded: %s (goal <= 2)%s\n", rs,
               O.repeat > 1 ? ", median of the runs' ratios" : "");
        if (mf.ran && mf.demand > O.max_seqs / 2.0)
            printf("note: B needs %.1f sequences at once under the flood (rate x mean E2E),\n"
                   " more than its fair share of %d slots: B overloads its own share, so its\n"
                   " requests queue behind each other; lower --b-rate for the issue's test.\n",
                   mf.demand, O.max_seqs / 2);
        printf("(ms; TTFT: favo bench, from the intended send; B q: access log queue_ms, the\n"
               " server has the request -> the step that starts it is planned; B run99: p99 of\n"
               " ttft_ms - queue_ms, planned -> first token sent (the step in flight + its own\n"
               " step); step ms: mean engine step in B's window, step99<=: the /metrics bucket\n"
               " bound holding its p99; tok/step: tokens computed per\n"
               " step; B seqs: B's mean sequences in the server (rate x mean E2E), against its\n"
               " fair share of max-seqs / 2; B99/steps: B's p99 TTFT in mean steps of the phase.\n"
               " Under the flood every step is a full batch and a request arriving during step\n"
               " N joins plan N+2 at the earliest (overlap), so ~1.5-2.5 full steps is the\n"
               " floor a perfect scheduler leaves.)\n"
               "favo bench JSON, access log and server log in %s\n",
               O.out);
    }
    return mu.ran && mf.ran ? 0 : 1;
}
