/*
 * bench-ingress.c - favo's whole pipeline against nginx, measured by wrk.
 *
 * In one run, one after the other with the same wrk connections, threads
 * and duration:
 *   favo   `favo serve --backend null` (own instance name, --port 0):
 *          a small non-streaming POST /v1/completions (short prompt,
 *          max_tokens 4 by default) over keep-alive connections, through
 *          ingress -> batcher -> null engine -> egress. The null backend
 *          returns tokens without computing them, so the figure is the data
 *          plane's, not the model's.
 *   nginx  started on loopback with a config this program writes into a
 *          temp dir (own pid, logs, temp paths), answering the same POST
 *          with `return 200` and a static JSON body of exactly the size of
 *          favo's answer (measured first with one request).
 * Both write an access log line per request into the temp dir (favo's
 * --access-log, nginx's access_log), so both do that work.
 * wrk gets a Lua script with the POST body; its --latency output is parsed.
 * Besides requests/s and latency, the CPU time each process used during
 * its run (/proc/PID/stat utime+stime, children of favo serve / the nginx
 * master) is reported in microseconds per request: where the time goes;
 * and (plain HTTP) favo's batcher steps during the run, from its
 * /metrics: requests per step (the batcher's and engine's sleeps and
 * wake-ups are per step).
 *
 * The host may be shared (a 2-core development machine runs other work):
 * favo and nginx take turns for --rounds rounds (default 3) of --duration
 * seconds (default 5) each, one warm-up second before each run, and each
 * server's best round (requests/s, with that round's latencies) is
 * reported, as bench-ring does; the worst round's requests/s is reported
 * too, so the spread is visible.
 *
 * --tls: both over TLS 1.3 with keep-alive (a P-256 certificate made here
 * with the openssl CLI; favo --tls-cert/--tls-key, nginx `ssl_protocols
 * TLSv1.3`, session tickets and cache off on both, as favo has them);
 * wrk speaks https. On a host without the kernel `tls` module favo's
 * answers go egress -> ingress (encrypt) -> socket.
 *
 * usage: bench-ingress [--json] [--duration S] [--rounds N] [--connections N]
 *                      [--threads N] [--max-tokens N] [--warmup S] [--tls]
 *                      [--favo PATH] [--model GGUF] [--keep-dir]
 * favo: --favo, else $FAVO_BIN, else ../favo next to this executable.
 * Exits 77 when wrk or nginx is missing (Debian: wrk, nginx-light).
 */
#include "perf_util.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_PROCS 16

static const char prompt[] = "Say hello to the benchmark.";

struct opts {
    int duration, rounds, connections, threads, max_tokens, warmup;
    bool json, keep_dir, tls;
    char favo[PATH_MAX], model[PATH_MAX];
};

/* One server's figures from one wrk run. */
struct run {
    double rps, p50_ms, p75_ms, p90_ms, p99_ms, avg_ms;
    long requests, non2xx, sock_err;
    double mb_read;
    /* CPU per process during the run */
    int nproc;
    char pname[MAX_PROCS][32];
    double cpu_s[MAX_PROCS], csw[MAX_PROCS]; /* CPU seconds, context switches */
    double cpu_total_s, csw_total;
    double steps; /* favo: batcher steps during the run (favo_batch_steps_total), -1: unknown */
};

/* A started server: its pid and the pids whose CPU we account. */
struct server {
    pid_t pid;
    uint16_t port;
};

static char tmpdir[] = "/tmp/favo-bench-ingress-XXXXXX";

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void die(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    fputs("bench-ingress: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

/* Full path of prog in $PATH (and /usr/sbin, /sbin for nginx), or false. */
static bool find_exe(const char *prog, char *out, size_t n)
{
    const char *path = getenv("PATH");
    char buf[4096];

    snprintf(buf, sizeof(buf), "%s:/usr/sbin:/sbin:/usr/local/sbin", path ? path : "/usr/bin:/bin");
    for (char *save = NULL, *d = strtok_r(buf, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
        snprintf(out, n, "%s/%s", d, prog);
        if (access(out, X_OK) == 0)
            return true;
    }
    return false;
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");

    if (!f || fputs(text, f) < 0 || fclose(f))
        die("cannot write %s: %s", path, strerror(errno));
}

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "r");
    char *buf;
    long n;

    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = calloc(1, (size_t)(n > 0 ? n : 0) + 1);
    if (buf && n > 0 && fread(buf, 1, (size_t)n, f) != (size_t)n)
        buf[0] = 0;
    fclose(f);
    return buf;
}

/* fork + exec argv with stdout and stderr into logpath. */
static pid_t spawn(char *const argv[], const char *logpath)
{
    pid_t pid = fork();

    if (pid < 0)
        die("fork: %s", strerror(errno));
    if (pid == 0) {
        int fd = open(logpath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

        if (fd < 0 || dup2(fd, 1) < 0 || dup2(fd, 2) < 0)
            _exit(127);
        setpgid(0, 0); /* so a stray signal to our group does not reach it */
        execv(argv[0], argv);
        _exit(127);
    }
    return pid;
}

static void stop_proc(pid_t pid)
{
    int st;

    if (pid <= 0)
        return;
    kill(pid, SIGTERM);
    for (int i = 0; i < 300; i++) {
        if (waitpid(pid, &st, WNOHANG) == pid)
            return;
        usleep(20000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
}

/* A loopback port free right now (nginx needs a number in its config). */
static uint16_t free_port(void)
{
    struct sockaddr_in a = { .sin_family = AF_INET };
    socklen_t len = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    uint16_t port;

    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) ||
        getsockname(fd, (struct sockaddr *)&a, &len))
        die("no free port: %s", strerror(errno));
    port = ntohs(a.sin_port);
    close(fd);
    return port;
}

static int connect_port(uint16_t port)
{
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
    struct timeval tv = { 10, 0 };
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0)
        return -errno;
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    if (connect(fd, (struct sockaddr *)&a, sizeof(a))) {
        int e = errno;

        close(fd);
        return -e;
    }
    return fd;
}

static void body_text(char *buf, size_t n, int max_tokens)
{
    snprintf(buf, n, "{\"prompt\":\"%s\",\"max_tokens\":%d,\"temperature\":0}", prompt,
             max_tokens);
}

/* One POST on a fresh connection; returns the status, sets *body_len and
 * *head_len (header bytes including the blank line). */
static int probe(uint16_t port, int max_tokens, long *body_len, long *head_len)
{
    char body[256], req[1024], resp[65536];
    size_t got = 0;
    int fd = connect_port(port), n, status = -1;
    char *eoh, *cl;

    if (fd < 0)
        return fd;
    body_text(body, sizeof(body), max_tokens);
    n = snprintf(req, sizeof(req),
                 "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                 strlen(body), body);
    if (write(fd, req, (size_t)n) != n)
        goto out;
    for (;;) {
        ssize_t r = read(fd, resp + got, sizeof(resp) - 1 - got);

        if (r <= 0)
            goto out;
        got += (size_t)r;
        resp[got] = 0;
        eoh = strstr(resp, "\r\n\r\n");
        if (!eoh)
            continue;
        cl = strcasestr(resp, "\r\nContent-Length:");
        if (!cl || cl > eoh)
            goto out;
        *head_len = eoh + 4 - resp;
        *body_len = strtol(cl + 17, NULL, 10);
        if ((long)got >= *head_len + *body_len)
            break;
    }
    if (sscanf(resp, "HTTP/1.1 %d", &status) != 1)
        status = -1;
out:
    close(fd);
    return status;
}

/* The same probe over https with curl (--tls): status, body and header
 * bytes of one answer. */
static int probe_tls(uint16_t port, int max_tokens, long *body_len, long *head_len)
{
    char body[256], cmd[PATH_MAX + 512], out[256];
    int status = -1;
    FILE *f;

    body_text(body, sizeof(body), max_tokens);
    snprintf(cmd, sizeof(cmd),
             "curl -s --max-time 10 --cacert '%s/cert.pem' -o /dev/null "
             "-H 'Content-Type: application/json' -d '%s' "
             "-w '%%{http_code} %%{size_download} %%{size_header}' "
             "https://127.0.0.1:%u/v1/completions",
             tmpdir, body, port);
    f = popen(cmd, "r");
    if (!f)
        return -errno;
    if (!fgets(out, sizeof(out), f) || sscanf(out, "%d %ld %ld", &status, body_len, head_len) != 3)
        status = -1;
    pclose(f);
    return status;
}

static int probe_any(const struct opts *o, uint16_t port, long *body_len, long *head_len)
{
    return o->tls ? probe_tls(port, o->max_tokens, body_len, head_len)
                  : probe(port, o->max_tokens, body_len, head_len);
}

/* A P-256 certificate for 127.0.0.1 in tmpdir (--tls). */
static void make_cert(void)
{
    char cmd[PATH_MAX + 512];

    snprintf(cmd, sizeof(cmd),
             "cd '%s' && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 "
             "-nodes -keyout key.pem -out cert.pem -days 2 -subj /CN=localhost "
             "-addext subjectAltName=IP:127.0.0.1 >openssl.out 2>&1",
             tmpdir);
    if (system(cmd) != 0)
        die("openssl could not make the test certificate (see %s/openssl.out)", tmpdir);
}

/* ------------------------------------------------------------ servers */

static int start_favo(const struct opts *o, struct server *s)
{
    char inst[64], log[PATH_MAX], acc[PATH_MAX], *text = NULL, *m;
    double t0 = now_s();

    snprintf(inst, sizeof(inst), "bench-ingress-%d", (int)getpid());
    snprintf(log, sizeof(log), "%s/favo.log", tmpdir);
    snprintf(acc, sizeof(acc), "%s/favo-access.log", tmpdir);
    char cert[PATH_MAX], key[PATH_MAX];
    char *argv[] = { (char *)o->favo, "serve", "--backend", "null", "--port", "0",
                     "--instance", inst, "--access-log", acc, NULL, NULL, NULL, NULL, NULL,
                     NULL, NULL };
    int k = 10;

    if (o->model[0]) { /* the null backend still reads the tokenizer from it */
        argv[k++] = "--model";
        argv[k++] = (char *)o->model;
    }
    if (o->tls) {
        snprintf(cert, sizeof(cert), "%s/cert.pem", tmpdir);
        snprintf(key, sizeof(key), "%s/key.pem", tmpdir);
        argv[k++] = "--tls-cert";
        argv[k++] = cert;
        argv[k++] = "--tls-key";
        argv[k++] = key;
    }
    s->pid = spawn(argv, log);
    while (now_s() - t0 < 60) {
        int st;

        free(text);
        text = read_file(log);
        if (text && strstr(text, "ready in") &&
            (m = strstr(text, o->tls ? "on https://127.0.0.1:" : "on http://127.0.0.1:")) != NULL) {
            s->port = (uint16_t)atoi(m + (o->tls ? 21 : 20));
            free(text);
            return 0;
        }
        if (waitpid(s->pid, &st, WNOHANG) == s->pid) {
            fprintf(stderr, "%s\n", text ? text : "");
            s->pid = 0;
            die("favo serve exited before it was ready (log above)");
        }
        usleep(20000);
    }
    fprintf(stderr, "%s\n", text ? text : "");
    die("favo serve was not ready within 60 s");
    return -1;
}

static int start_nginx(const char *nginx, long body_len, bool tls, struct server *s)
{
    char ssl[PATH_MAX * 2 + 256] = "";
    char conf[PATH_MAX], log[PATH_MAX], errlog[PATH_MAX], *cfg, *body;
    size_t cap = (size_t)body_len + 8192;
    double t0 = now_s();
    int fd;

    /* A JSON body of exactly body_len bytes, shaped like favo's answer. */
    body = malloc((size_t)body_len + 1);
    cfg = malloc(cap);
    if (!body || !cfg)
        die("out of memory");
    {
        const char *head = "{\"id\":\"cmpl-nginx\",\"object\":\"text_completion\",\"choices\":"
                           "[{\"text\":\"";
        const char *tail = "\",\"index\":0,\"finish_reason\":\"length\"}]}";
        long hl = (long)strlen(head), tl = (long)strlen(tail);

        if (body_len < hl + tl)
            die("favo's answer is only %ld bytes", body_len);
        memcpy(body, head, (size_t)hl);
        memset(body + hl, 'x', (size_t)(body_len - hl - tl));
        memcpy(body + body_len - tl, tail, (size_t)tl);
        body[body_len] = 0;
    }
    s->port = free_port();
    snprintf(conf, sizeof(conf), "%s/nginx.conf", tmpdir);
    snprintf(log, sizeof(log), "%s/nginx.out", tmpdir);
    snprintf(errlog, sizeof(errlog), "%s/nginx-error.log", tmpdir);
    if (tls) /* TLS 1.3 only, no resumption: what favo does */
        snprintf(ssl, sizeof(ssl),
                 "    ssl_certificate %s/cert.pem;\n"
                 "    ssl_certificate_key %s/key.pem;\n"
                 "    ssl_protocols TLSv1.3;\n"
                 "    ssl_session_tickets off;\n"
                 "    ssl_session_cache off;\n",
                 tmpdir, tmpdir);
    /* worker_processes auto: one per core, nginx's own recommendation.
     * keepalive_requests: favo does not close keep-alive connections after
     * N requests, so neither does nginx here. */
    snprintf(cfg, cap,
             "daemon off;\n"
             "master_process on;\n"
             "worker_processes auto;\n"
             "%s"
             "pid %s/nginx.pid;\n"
             "error_log %s warn;\n"
             "events { worker_connections 4096; }\n"
             "http {\n"
             "  access_log %s/nginx-access.log;\n"
             "  client_body_temp_path %s/cbody;\n"
             "  proxy_temp_path %s/proxy;\n"
             "  fastcgi_temp_path %s/fcgi;\n"
             "  uwsgi_temp_path %s/uwsgi;\n"
             "  scgi_temp_path %s/scgi;\n"
             "  keepalive_requests 100000000;\n"
             "  keepalive_timeout 75s;\n"
             "  server {\n"
             "    listen 127.0.0.1:%u%s;\n"
             "%s"
             "    location = /v1/completions {\n"
             "      default_type application/json;\n"
             "      return 200 '%s';\n"
             "    }\n"
             "  }\n"
             "}\n",
             geteuid() == 0 ? "user root;\n" : "", tmpdir, errlog, tmpdir, tmpdir, tmpdir,
             tmpdir, tmpdir, tmpdir, s->port, tls ? " ssl" : "", ssl, body);
    write_file(conf, cfg);
    free(cfg);
    free(body);
    char *argv[] = { (char *)nginx, "-p", tmpdir, "-c", conf, "-e", errlog, NULL };
    s->pid = spawn(argv, log);
    while (now_s() - t0 < 10) {
        int st;

        fd = connect_port(s->port);
        if (fd >= 0) {
            close(fd);
            return 0;
        }
        if (waitpid(s->pid, &st, WNOHANG) == s->pid) {
            char *t = read_file(errlog);

            fprintf(stderr, "%s\n", t ? t : "");
            s->pid = 0;
            die("nginx exited before it listened (error log above)");
        }
        usleep(20000);
    }
    die("nginx did not listen within 10 s");
    return -1;
}

/* ------------------------------------------------------- CPU accounting */

struct cpu_snap {
    int n;
    pid_t pid[MAX_PROCS];
    char name[MAX_PROCS][32];
    double cpu_s[MAX_PROCS], csw[MAX_PROCS];
};

/* voluntary + involuntary context switches of pid (0 when gone) */
static double proc_csw(pid_t pid)
{
    char path[64], line[256];
    double n = 0;
    FILE *f;

    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    f = fopen(path, "r");
    if (!f)
        return 0;
    while (fgets(line, sizeof(line), f)) {
        const char *c = strchr(line, ':');

        if (c && strstr(line, "ctxt_switches"))
            n += strtod(c + 1, NULL);
    }
    fclose(f);
    return n;
}

/* utime + stime of pid in seconds; comm into name. -1 when gone. */
static double proc_cpu(pid_t pid, pid_t *ppid, char *name, size_t n)
{
    char path[64], buf[1024], *rp;
    unsigned long ut, st;
    int pp;
    FILE *f;

    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    f = fopen(path, "r");
    if (!f)
        return -1;
    if (!fgets(buf, sizeof(buf), f)) {
        fclose(f);
        return -1;
    }
    fclose(f);
    rp = strrchr(buf, ')');
    if (!rp)
        return -1;
    if (name) {
        char *lp = strchr(buf, '(');
        size_t len = lp ? (size_t)(rp - lp - 1) : 0;

        if (len >= n)
            len = n - 1;
        memcpy(name, lp ? lp + 1 : "", len);
        name[len] = 0;
    }
    /* fields after comm: state ppid pgrp session tty tpgid flags minflt
     * cminflt majflt cmajflt utime stime */
    if (sscanf(rp + 2, "%*c %d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &pp, &ut, &st) != 3)
        return -1;
    if (ppid)
        *ppid = pp;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* The server process and its direct children. */
static void cpu_take(pid_t root, struct cpu_snap *s)
{
    DIR *d = opendir("/proc");
    struct dirent *e;

    s->n = 0;
    s->pid[0] = root;
    s->cpu_s[0] = proc_cpu(root, NULL, s->name[0], sizeof(s->name[0]));
    s->csw[0] = proc_csw(root);
    s->n = 1;
    while (d && (e = readdir(d)) != NULL && s->n < MAX_PROCS) {
        pid_t pid = (pid_t)atoi(e->d_name), pp = 0;
        double c;

        if (pid <= 0 || pid == root)
            continue;
        c = proc_cpu(pid, &pp, s->name[s->n], sizeof(s->name[0]));
        if (c < 0 || pp != root)
            continue;
        s->pid[s->n] = pid;
        s->csw[s->n] = proc_csw(pid);
        s->cpu_s[s->n++] = c;
    }
    if (d)
        closedir(d);
}

/* after - before per process (matched by pid), into r. */
static void cpu_diff(const struct cpu_snap *a, const struct cpu_snap *b, struct run *r)
{
    r->nproc = 0;
    r->cpu_total_s = r->csw_total = 0;
    for (int i = 0; i < b->n; i++) {
        double before = 0, csw_before = 0;

        for (int j = 0; j < a->n; j++)
            if (a->pid[j] == b->pid[i]) {
                before = a->cpu_s[j];
                csw_before = a->csw[j];
            }
        /* "favo: ingress" -> "ingress", the supervisor "favo" ->
         * "supervisor"; the same name twice (nginx workers): summed */
        const char *nm = b->name[i];
        int k;

        if (!strncmp(nm, "favo: ", 6))
            nm += 6;
        else if (!strcmp(nm, "favo"))
            nm = "supervisor";

        for (k = 0; k < r->nproc; k++)
            if (!strcmp(r->pname[k], nm))
                break;
        if (k == r->nproc) {
            snprintf(r->pname[k], sizeof(r->pname[k]), "%s", nm);
            r->cpu_s[k] = r->csw[k] = 0;
            r->nproc++;
        }
        r->cpu_s[k] += b->cpu_s[i] - before;
        r->cpu_total_s += b->cpu_s[i] - before;
        r->csw[k] += b->csw[i] - csw_before;
        r->csw_total += b->csw[i] - csw_before;
    }
}

/* ---------------------------------------------------------------- wrk */

/* One counter of favo's GET /metrics (plain HTTP only), -1 when it cannot
 * be read. The stages flush their counters at least every 100 ms. */
static double metric(uint16_t port, const char *name)
{
    static char resp[1 << 18];
    static const char req[] = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    int fd = connect_port(port);
    size_t got = 0;
    ssize_t n;
    const char *p;

    if (fd < 0)
        return -1;
    if (write(fd, req, sizeof(req) - 1) != (ssize_t)(sizeof(req) - 1)) {
        close(fd);
        return -1;
    }
    while (got + 1 < sizeof(resp) && (n = read(fd, resp + got, sizeof(resp) - 1 - got)) > 0)
        got += (size_t)n;
    close(fd);
    resp[got] = 0;
    for (p = resp; (p = strstr(p, name)) != NULL; p += strlen(name))
        if (p[-1] == '\n' && (p[strlen(name)] == ' ' || p[strlen(name)] == '{')) {
            p = strchr(p, ' ');
            return p ? strtod(p, NULL) : -1;
        }
    return -1;
}

/* "1.86ms" / "671.00us" / "1.02s" -> ms */
static double wrk_ms(const char *s)
{
    char *end;
    double v = strtod(s, &end);

    if (!strncmp(end, "us", 2))
        return v / 1000;
    if (!strncmp(end, "ms", 2))
        return v;
    if (!strncmp(end, "s", 1))
        return v * 1000;
    if (!strncmp(end, "m", 1))
        return v * 60000;
    return v;
}

static double line_num(const char *text, const char *key, const char **after)
{
    const char *p = strstr(text, key);

    if (!p)
        return -1;
    p += strlen(key);
    while (*p == ' ')
        p++;
    if (after)
        *after = p;
    return strtod(p, NULL);
}

static void parse_wrk(const char *out, struct run *r)
{
    const char *p;

    r->rps = line_num(out, "Requests/sec:", NULL);
    r->requests = (long)line_num(out, "\n  ", NULL);
    p = strstr(out, " requests in ");
    if (p) {
        const char *q = p;

        while (q > out && q[-1] != '\n')
            q--;
        r->requests = strtol(q, NULL, 10);
        r->mb_read = 0;
        q = strstr(p, "s, ");
        if (q) {
            char *end;
            double v = strtod(q + 3, &end);

            r->mb_read = !strncmp(end, "GB", 2) ? v * 1024 : !strncmp(end, "KB", 2) ? v / 1024 : v;
        }
    }
    r->non2xx = 0;
    if (strstr(out, "Non-2xx or 3xx responses:"))
        r->non2xx = (long)line_num(out, "Non-2xx or 3xx responses:", NULL);
    r->sock_err = 0;
    if ((p = strstr(out, "Socket errors:")) != NULL) {
        long c = 0, rd = 0, wr = 0, to = 0;

        sscanf(p, "Socket errors: connect %ld, read %ld, write %ld, timeout %ld", &c, &rd, &wr,
               &to);
        r->sock_err = c + rd + wr + to;
    }
    if (line_num(out, "Latency ", &p) >= 0)
        r->avg_ms = wrk_ms(p);
    if (line_num(out, " 50%", &p) >= 0)
        r->p50_ms = wrk_ms(p);
    if (line_num(out, " 75%", &p) >= 0)
        r->p75_ms = wrk_ms(p);
    if (line_num(out, " 90%", &p) >= 0)
        r->p90_ms = wrk_ms(p);
    if (line_num(out, " 99%", &p) >= 0)
        r->p99_ms = wrk_ms(p);
}

/* wrk against port for secs; returns its stdout (malloc'd). */
static char *wrk_run(const char *wrk, const char *lua, const struct opts *o, uint16_t port,
                     int secs)
{
    char t[16], c[16], d[16], url[128], out[PATH_MAX];
    int st;

    snprintf(t, sizeof(t), "-t%d", o->threads);
    snprintf(c, sizeof(c), "-c%d", o->connections);
    snprintf(d, sizeof(d), "-d%ds", secs);
    snprintf(url, sizeof(url), "%s://127.0.0.1:%u/v1/completions", o->tls ? "https" : "http",
             port);
    snprintf(out, sizeof(out), "%s/wrk.out", tmpdir);
    char *argv[] = { (char *)wrk, t, c, d, "--latency", "--timeout", "10s", "-s",
                     (char *)lua, url, NULL };
    pid_t pid = spawn(argv, out);

    if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st))
        die("wrk failed (status %d): %s", st, read_file(out) ?: "");
    return read_file(out);
}

static void measure(const char *who, pid_t root, const char *wrk, const char *lua,
                    const struct opts *o, uint16_t port, struct run *r)
{
    struct cpu_snap a, b;
    char *out;

    if (o->warmup > 0)
        free(wrk_run(wrk, lua, o, port, o->warmup));
    bool steps = !strcmp(who, "favo") && !o->tls;
    double s0 = steps ? metric(port, "favo_batch_steps_total") : -1, s1;

    cpu_take(root, &a);
    out = wrk_run(wrk, lua, o, port, o->duration);
    cpu_take(root, &b);
    usleep(200 * 1000); /* a heartbeat's flush of the batcher's counters */
    s1 = steps && s0 >= 0 ? metric(port, "favo_batch_steps_total") : -1;
    memset(r, 0, sizeof(*r));
    parse_wrk(out, r);
    cpu_diff(&a, &b, r);
    r->steps = s1 >= s0 && s0 >= 0 ? s1 - s0 : -1;
    if (r->rps <= 0 || r->requests <= 0)
        die("could not read wrk's output for %s:\n%s", who, out);
    if (getenv("FAVO_BENCH_VERBOSE"))
        fprintf(stderr, "--- wrk against %s\n%s", who, out);
    free(out);
}

/* ---------------------------------------------------------------- main */

static void usage(void)
{
    fputs("usage: bench-ingress [--json] [--duration S] [--rounds N] [--connections N]\n"
          "                     [--threads N]\n"
          "                     [--max-tokens N] [--warmup S] [--favo PATH] [--model GGUF]\n"
          "                     [--keep-dir] [--tls]\n",
          stderr);
    exit(2);
}

static struct server favo_srv, nginx_srv;

static void cleanup(void)
{
    stop_proc(favo_srv.pid);
    stop_proc(nginx_srv.pid);
    favo_srv.pid = nginx_srv.pid = 0;
}

static void on_signal(int sig)
{
    (void)sig;
    if (favo_srv.pid > 0)
        kill(favo_srv.pid, SIGTERM);
    if (nginx_srv.pid > 0)
        kill(nginx_srv.pid, SIGTERM);
    _exit(1);
}

static void print_procs(const char *who, const struct run *r)
{
    printf("  %-6s CPU per request:", who);
    for (int i = 0; i < r->nproc; i++)
        printf(" %s %.1f us%s", r->pname[i], r->cpu_s[i] * 1e6 / (double)r->requests,
               i + 1 < r->nproc ? "," : "");
    printf(" | total %.1f us\n", r->cpu_total_s * 1e6 / (double)r->requests);
    printf("  %-6s context switches per request:", who);
    for (int i = 0; i < r->nproc; i++)
        printf(" %s %.2f%s", r->pname[i], r->csw[i] / (double)r->requests,
               i + 1 < r->nproc ? "," : "");
    printf(" | total %.2f\n", r->csw_total / (double)r->requests);
}

static void loadavg(char *buf, size_t n)
{
    FILE *f = fopen("/proc/loadavg", "r");

    snprintf(buf, n, "?");
    if (f) {
        if (fgets(buf, (int)n, f))
            buf[strcspn(buf, "\n")] = 0;
        fclose(f);
    }
}

int main(int argc, char **argv)
{
    struct opts o = { .duration = 5, .rounds = 3, .connections = 32, .threads = 2, .max_tokens = 4,
                      .warmup = 1 };
    char wrk[PATH_MAX], nginx[PATH_MAX], lua[PATH_MAX], body[256], script[1024], machine[256],
        load[128];
    struct run rf, rn;
    long body_len = 0, head_len = 0, nginx_body = 0, nginx_head = 0, errors = 0;
    double favo_min = 0, nginx_min = 0;
    int status;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;

        if (!strcmp(a, "--json"))
            o.json = true;
        else if (!strcmp(a, "--keep-dir"))
            o.keep_dir = true;
        else if (!strcmp(a, "--tls"))
            o.tls = true;
        else if (!strcmp(a, "--duration") && v)
            o.duration = atoi(argv[++i]);
        else if (!strcmp(a, "--rounds") && v)
            o.rounds = atoi(argv[++i]);
        else if (!strcmp(a, "--connections") && v)
            o.connections = atoi(argv[++i]);
        else if (!strcmp(a, "--threads") && v)
            o.threads = atoi(argv[++i]);
        else if (!strcmp(a, "--max-tokens") && v)
            o.max_tokens = atoi(argv[++i]);
        else if (!strcmp(a, "--warmup") && v)
            o.warmup = atoi(argv[++i]);
        else if (!strcmp(a, "--favo") && v)
            snprintf(o.favo, sizeof(o.favo), "%s", argv[++i]);
        else if (!strcmp(a, "--model") && v)
            snprintf(o.model, sizeof(o.model), "%s", argv[++i]);
        else
            usage();
    }
    if (o.duration < 1 || o.rounds < 1 || o.rounds > 20 || o.connections < 1 || o.threads < 1 || o.threads > o.connections ||
        o.max_tokens < 1 || o.warmup < 0)
        usage();
    if (!o.favo[0]) {
        const char *env = getenv("FAVO_BIN");
        char self[PATH_MAX];
        ssize_t n;

        if (env && *env) {
            snprintf(o.favo, sizeof(o.favo), "%s", env);
        } else if ((n = readlink("/proc/self/exe", self, sizeof(self) - 1)) > 0) {
            self[n] = 0;
            snprintf(o.favo, sizeof(o.favo), "%s/../favo", dirname(self));
        }
    }
    if (access(o.favo, X_OK))
        die("favo binary not found at '%s' (--favo PATH or FAVO_BIN)", o.favo);
    if (!find_exe("wrk", wrk, sizeof(wrk))) {
        fprintf(stderr, "bench-ingress: SKIP: wrk is not installed (Debian package: wrk)\n");
        return 77;
    }
    if (!find_exe("nginx", nginx, sizeof(nginx))) {
        fprintf(stderr, "bench-ingress: SKIP: nginx is not installed (Debian package: "
                        "nginx-light)\n");
        return 77;
    }
    if (!mkdtemp(tmpdir))
        die("mkdtemp: %s", strerror(errno));
    chmod(tmpdir, 0755); /* nginx workers may run as another user */
    atexit(cleanup);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGPIPE, SIG_IGN);

    body_text(body, sizeof(body), o.max_tokens);
    snprintf(lua, sizeof(lua), "%s/post.lua", tmpdir);
    snprintf(script, sizeof(script),
             "wrk.method = \"POST\"\n"
             "wrk.body = '%s'\n"
             "wrk.headers[\"Content-Type\"] = \"application/json\"\n",
             body);
    write_file(lua, script);
    if (o.tls)
        make_cert();

    start_favo(&o, &favo_srv);
    /* The null backend's tokens differ per request, so favo's answer
     * varies by a few bytes: nginx gets the mean of 16 answers. */
    {
        long sum = 0;

        for (int i = 0; i < 16; i++) {
            status = probe_any(&o, favo_srv.port, &body_len, &head_len);
            if (status != 200)
                die("favo answered probe request %d with status %d", i, status);
            sum += body_len;
        }
        body_len = (sum + 8) / 16;
    }
    start_nginx(nginx, body_len, o.tls, &nginx_srv);
    status = probe_any(&o, nginx_srv.port, &nginx_body, &nginx_head);
    if (status != 200 || nginx_body != body_len)
        die("nginx answered the probe with status %d, %ld bytes (want 200, %ld)", status,
            nginx_body, body_len);

    for (int k = 0; k < o.rounds; k++) {
        struct run a, b;

        measure("favo", favo_srv.pid, wrk, lua, &o, favo_srv.port, &a);
        measure("nginx", nginx_srv.pid, wrk, lua, &o, nginx_srv.port, &b);
        if (!k || a.rps > rf.rps)
            rf = a;
        if (!k || b.rps > rn.rps)
            rn = b;
        favo_min = !k || a.rps < favo_min ? a.rps : favo_min;
        nginx_min = !k || b.rps < nginx_min ? b.rps : nginx_min;
        errors += a.non2xx + a.sock_err + b.non2xx + b.sock_err;
    }
    cleanup();
    if (!o.keep_dir) {
        char cmd[PATH_MAX + 16];

        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
        if (system(cmd) != 0)
            fprintf(stderr, "bench-ingress: could not remove %s\n", tmpdir);
    } else {
        fprintf(stderr, "bench-ingress: files kept in %s\n", tmpdir);
    }
    if (errors)
        fprintf(stderr, "bench-ingress: %ld errors (non-2xx or socket) during the runs\n",
                errors);

    perf_machine(machine, sizeof(machine));
    loadavg(load, sizeof(load));
    if (o.json) {
        perf_json_begin(stdout);
        perf_json_num(stdout, "favo_rps", rf.rps);
        perf_json_num(stdout, "nginx_rps", rn.rps);
        perf_json_num(stdout, "ratio_vs_nginx", rf.rps / rn.rps);
        perf_json_num(stdout, "favo_p50_ms", rf.p50_ms);
        perf_json_num(stdout, "favo_p90_ms", rf.p90_ms);
        perf_json_num(stdout, "favo_p99_ms", rf.p99_ms);
        perf_json_num(stdout, "nginx_p50_ms", rn.p50_ms);
        perf_json_num(stdout, "nginx_p90_ms", rn.p90_ms);
        perf_json_num(stdout, "nginx_p99_ms", rn.p99_ms);
        perf_json_num(stdout, "favo_rps_worst_round", favo_min);
        perf_json_num(stdout, "nginx_rps_worst_round", nginx_min);
        perf_json_num(stdout, "favo_requests", (double)rf.requests);
        perf_json_num(stdout, "nginx_requests", (double)rn.requests);
        perf_json_num(stdout, "favo_errors", (double)(rf.non2xx + rf.sock_err));
        perf_json_num(stdout, "nginx_errors", (double)(rn.non2xx + rn.sock_err));
        perf_json_num(stdout, "errors_all_rounds", (double)errors);
        perf_json_num(stdout, "favo_cpu_us_per_req", rf.cpu_total_s * 1e6 / (double)rf.requests);
        perf_json_num(stdout, "nginx_cpu_us_per_req", rn.cpu_total_s * 1e6 / (double)rn.requests);
        perf_json_num(stdout, "favo_csw_per_req", rf.csw_total / (double)rf.requests);
        if (rf.steps > 0)
            perf_json_num(stdout, "favo_requests_per_step", (double)rf.requests / rf.steps);
        perf_json_num(stdout, "nginx_csw_per_req", rn.csw_total / (double)rn.requests);
        for (int i = 0; i < rf.nproc; i++) {
            char key[64], *p;

            snprintf(key, sizeof(key), "favo_cpu_us_%s", rf.pname[i]);
            /* keys stay [a-z0-9_] */
            for (p = key; *p; p++)
                if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_'))
                    *p = '_';
            perf_json_num(stdout, key, rf.cpu_s[i] * 1e6 / (double)rf.requests);
        }
        perf_json_num(stdout, "body_bytes", (double)body_len);
        perf_json_num(stdout, "favo_header_bytes", (double)head_len);
        perf_json_num(stdout, "nginx_header_bytes", (double)nginx_head);
        perf_json_num(stdout, "duration_s", o.duration);
        perf_json_num(stdout, "rounds", o.rounds);
        perf_json_num(stdout, "connections", o.connections);
        perf_json_num(stdout, "threads", o.threads);
        perf_json_num(stdout, "max_tokens", o.max_tokens);
        perf_json_str(stdout, "backend", "null");
        perf_json_str(stdout, "transport", o.tls ? "tls1.3" : "http");
        perf_json_str(stdout, "machine", machine);
        perf_json_str(stdout, "loadavg_after", load);
        perf_json_end(stdout);
    } else {
        printf("bench-ingress: POST /v1/completions (max_tokens %d, %ld-byte JSON answer; "
               "headers: favo %ld, nginx %ld bytes), keep-alive\n",
               o.max_tokens, body_len, head_len, nginx_head);
        printf("wrk -t%d -c%d -d%ds --latency, %d alternating rounds, best round shown; "
               "favo --backend null, nginx `return 200` (worker_processes auto)%s\n",
               o.threads, o.connections, o.duration, o.rounds,
               o.tls ? "; both over TLS 1.3 (no resumption)" : "");
        printf("machine: %s; load average after: %s\n\n", machine, load);
        printf("%-6s %12s %9s %9s %9s %9s %10s %7s\n", "server", "requests/s", "p50 ms",
               "p90 ms", "p99 ms", "avg ms", "requests", "errors");
        printf("%-6s %12.0f %9.3f %9.3f %9.3f %9.3f %10ld %7ld\n", "favo", rf.rps, rf.p50_ms,
               rf.p90_ms, rf.p99_ms, rf.avg_ms, rf.requests, rf.non2xx + rf.sock_err);
        printf("%-6s %12.0f %9.3f %9.3f %9.3f %9.3f %10ld %7ld\n", "nginx", rn.rps, rn.p50_ms,
               rn.p90_ms, rn.p99_ms, rn.avg_ms, rn.requests, rn.non2xx + rn.sock_err);
        printf("\nfavo / nginx requests/s: %.3f (worst rounds: favo %.0f, nginx %.0f)\n",
               rf.rps / rn.rps, favo_min, nginx_min);
        print_procs("favo", &rf);
        if (rf.steps > 0)
            printf("  favo   batcher steps: %.0f, %.2f requests per step (each request is in "
                   "%d steps: its prefill and %d decodes)\n", rf.steps,
                   (double)rf.requests / rf.steps, o.max_tokens, o.max_tokens - 1);
        print_procs("nginx", &rn);
    }
    return 0;
}
