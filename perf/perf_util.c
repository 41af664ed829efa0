/*
 * perf_util.c - helpers for the benchmarks.
 */
#include "perf_util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int json_first;

bool perf_want_json(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--json"))
            return true;
    return false;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return (x > y) - (x < y);
}

double perf_quantile(double *v, size_t n, double q)
{
    size_t i;

    if (!n)
        return 0;
    qsort(v, n, sizeof(*v), cmp_double);
    i = (size_t)(q * (double)n);
    if (i >= n)
        i = n - 1;
    return v[i];
}

void perf_json_begin(FILE *f)
{
    json_first = 1;
    fputc('{', f);
}

void perf_json_num(FILE *f, const char *key, double v)
{
    fprintf(f, "%s\"%s\":%.6g", json_first ? "" : ",", key, v);
    json_first = 0;
}

void perf_json_str(FILE *f, const char *key, const char *v)
{
    fprintf(f, "%s\"%s\":\"", json_first ? "" : ",", key);
    for (const char *p = v; *p; p++) {
        if (*p == '"' || *p == '\\')
            fputc('\\', f);
        if ((unsigned char)*p >= 0x20)
            fputc(*p, f);
    }
    fputc('"', f);
    json_first = 0;
}

void perf_json_end(FILE *f)
{
    fputs("}\n", f);
}

void perf_machine(char *buf, size_t n)
{
    char model[256] = "unknown cpu", line[512];
    FILE *f = fopen("/proc/cpuinfo", "r");
    struct utsname u;

    if (f) {
        while (fgets(line, sizeof(line), f)) {
            if (!strncmp(line, "model name", 10)) {
                char *c = strchr(line, ':');

                if (c) {
                    snprintf(model, sizeof(model), "%s", c + 2);
                    model[strcspn(model, "\n")] = 0;
                }
                break;
            }
        }
        fclose(f);
    }
    uname(&u);
    snprintf(buf, n, "%s, %ld cores, Linux %s", model, sysconf(_SC_NPROCESSORS_ONLN), u.release);
}

/* ------------------------------------------------ child processes */

static const char *g_prog = "bench";
static volatile pid_t g_kids[PERF_MAX_KIDS];
static volatile sig_atomic_t g_sig;
static char g_shm[96]; /* favo serve's stats segment, unlinked if it dies hard */

void perf_prog(const char *name)
{
    g_prog = name;
}

void perf_set_shm(const char *name)
{
    snprintf(g_shm, sizeof(g_shm), "%s", name ? name : "");
}

void perf_kids_add(pid_t p)
{
    for (int i = 0; i < PERF_MAX_KIDS; i++)
        if (!g_kids[i]) {
            g_kids[i] = p;
            return;
        }
}

void perf_kids_del(pid_t p)
{
    for (int i = 0; i < PERF_MAX_KIDS; i++)
        if (g_kids[i] == p)
            g_kids[i] = 0;
}

void perf_kids_kill_all(void)
{
    for (int i = 0; i < PERF_MAX_KIDS; i++)
        if (g_kids[i] > 0)
            kill(-g_kids[i], SIGKILL);
}

/* First signal: noted, and the wait loops stop everything gracefully
 * (perf_check_sig). A second one more than a second later: SIGKILL every
 * child group at once and unlink the stats segment. One sooner is the
 * same interruption (`timeout -s INT` signals the child, then its whole
 * process group). */
static void on_signal(int sig)
{
    static const char msg[] = ": interrupted twice, killing children\n";
    static struct timespec t1;
    struct timespec now;

    clock_gettime(CLOCK_MONOTONIC, &now);
    if (!g_sig) {
        t1 = now;
        g_sig = sig;
        return;
    }
    if (now.tv_sec - t1.tv_sec < 1 ||
        (now.tv_sec - t1.tv_sec == 1 && now.tv_nsec < t1.tv_nsec))
        return;
    perf_kids_kill_all();
    if (g_shm[0])
        shm_unlink(g_shm);
    if (write(2, g_prog, strlen(g_prog)) < 0 || write(2, msg, sizeof(msg) - 1) < 0) {
        /* nothing to do */
    }
    _exit(128 + sig);
}

static void on_exit_kill(void)
{
    perf_kids_kill_all();
}

void perf_signals_install(void)
{
    struct sigaction sa = {.sa_handler = on_signal};

    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    atexit(on_exit_kill);
}

void perf_check_sig(void)
{
    static bool stopping;

    if (!g_sig || stopping)
        return;
    stopping = true;
    fprintf(stderr, "%s: interrupted, stopping children\n", g_prog);
    for (int i = 0; i < PERF_MAX_KIDS; i++)
        if (g_kids[i] > 0)
            kill(-g_kids[i], SIGTERM);
    for (int i = 0; i < PERF_MAX_KIDS; i++)
        if (g_kids[i] > 0)
            perf_stop_child(g_kids[i], 20);
    if (g_shm[0])
        shm_unlink(g_shm);
    _exit(128 + g_sig);
}

double perf_mono_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

pid_t perf_spawn(char *const argv[], const char *out, bool merge)
{
    pid_t p = fork();

    if (p < 0)
        return -errno;
    if (p == 0) {
        setpgid(0, 0);
        if (out) {
            int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

            if (fd < 0)
                _exit(126);
            dup2(fd, 1);
            if (merge) {
                dup2(fd, 2);
            } else {
                int nul = open("/dev/null", O_WRONLY | O_CLOEXEC);

                if (nul >= 0)
                    dup2(nul, 2);
            }
        } else {
            dup2(2, 1); /* keep our stdout for the table / JSON */
        }
        execv(argv[0], argv);
        fprintf(stderr, "%s: exec %s: %s\n", g_prog, argv[0], strerror(errno));
        _exit(127);
    }
    setpgid(p, p);
    perf_kids_add(p);
    return p;
}

int perf_wait_for(pid_t p, double timeout_s)
{
    double t0 = perf_mono_s();
    int st;

    for (;;) {
        pid_t r = waitpid(p, &st, WNOHANG);

        if (r == p) {
            perf_kids_del(p);
            return st;
        }
        if (r < 0 && errno != EINTR)
            return -errno;
        if (timeout_s >= 0 && perf_mono_s() - t0 > timeout_s)
            return -ETIMEDOUT;
        if (timeout_s < 0)
            perf_check_sig(); /* a bounded wait may be perf_check_sig's own */
        usleep(20000);
    }
}

void perf_stop_child(pid_t p, double grace_s)
{
    if (p <= 0)
        return;
    kill(-p, SIGTERM);
    if (perf_wait_for(p, grace_s) == -ETIMEDOUT) {
        kill(-p, SIGKILL);
        perf_wait_for(p, -1);
    }
    kill(-p, SIGKILL); /* grandchildren left in the group */
}

int perf_run_to_end(char *const argv[], const char *out, double timeout_s)
{
    pid_t p = perf_spawn(argv, out, false);
    int st;

    if (p < 0)
        return p;
    st = perf_wait_for(p, timeout_s);
    if (st == -ETIMEDOUT) {
        perf_stop_child(p, 5);
        return st;
    }
    return st >= 0 && WIFEXITED(st) ? WEXITSTATUS(st) : -EIO;
}

int perf_favo_ready_port(const char *log, pid_t p, double timeout_s)
{
    double t0 = perf_mono_s();

    while (perf_mono_s() - t0 < timeout_s) {
        char *b = perf_slurp(log, 0, NULL);
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
            perf_kids_del(p);
            return -ECHILD;
        }
        perf_check_sig();
        usleep(50000);
    }
    return -ETIMEDOUT;
}

int perf_favo_setup(const char **favo, const char **model, const char **out,
                    const char *tmp_name)
{
    static char favo_path[PATH_MAX], model_path[PATH_MAX], out_tmpl[PATH_MAX];
    const char *v;

    if ((v = getenv("FAVO_BIN")) && *v) {
        snprintf(favo_path, sizeof(favo_path), "%s", v);
    } else {
        ssize_t n = readlink("/proc/self/exe", favo_path, sizeof(favo_path) - 16);
        char *slash;

        if (n <= 0) {
            fprintf(stderr, "%s: cannot find myself; set FAVO_BIN\n", g_prog);
            return 2;
        }
        favo_path[n] = 0;
        if ((slash = strrchr(favo_path, '/')))
            *slash = 0; /* .../build/perf */
        if ((slash = strrchr(favo_path, '/')))
            strcpy(slash, "/favo");
    }
    *favo = favo_path;
    if (!*model) {
        v = getenv("FAVO_MODELS");
        snprintf(model_path, sizeof(model_path), "%s/SmolLM2-135M-Instruct.Q4_1.gguf",
                 v && *v ? v : "models");
        *model = model_path;
    }
    if (access(*favo, X_OK)) {
        fprintf(stderr, "%s: %s is not executable (set FAVO_BIN)\n", g_prog, *favo);
        return 2;
    }
    if (access(*model, R_OK)) {
        fprintf(stderr, "%s: model %s: %s (--model FILE)\n", g_prog, *model, strerror(errno));
        return 2;
    }
    if (!*out) {
        snprintf(out_tmpl, sizeof(out_tmpl), "/tmp/%s-XXXXXX", tmp_name);
        if (!mkdtemp(out_tmpl)) {
            fprintf(stderr, "%s: mkdtemp: %s\n", g_prog, strerror(errno));
            return 2;
        }
        *out = out_tmpl;
    } else if (mkdir(*out, 0700) && errno != EEXIST) {
        fprintf(stderr, "%s: --out %s: %s\n", g_prog, *out, strerror(errno));
        return 2;
    }
    return 0;
}

bool perf_std_opt(const char *arg, void (*usage)(FILE *f))
{
    if (!strcmp(arg, "-h") || !strcmp(arg, "--help")) {
        usage(stdout);
        exit(0);
    }
    return !strcmp(arg, "--json");
}

void perf_turn_rows(int repeat, const char *a, const char *b,
                    void (*row)(const char *name, const void *side), const void *ra,
                    const void *rb, size_t size, const void *ma, const void *mb)
{
    char n[64];

    for (int r = 0; repeat > 1 && r < repeat; r++) {
        snprintf(n, sizeof(n), "%s #%d", a, r + 1);
        row(n, (const char *)ra + (size_t)r * size);
        snprintf(n, sizeof(n), "%s #%d", b, r + 1);
        row(n, (const char *)rb + (size_t)r * size);
    }
    snprintf(n, sizeof(n), repeat > 1 ? "%s med" : "%s", a);
    row(n, ma);
    snprintf(n, sizeof(n), repeat > 1 ? "%s med" : "%s", b);
    row(n, mb);
}

/* ------------------------------------------------------ small helpers */

char *perf_slurp(const char *path, long from, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t n = 0, cap = 0;

    if (!f)
        return NULL;
    if (from > 0 && fseek(f, from, SEEK_SET)) {
        fclose(f);
        return NULL;
    }
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

void perf_tail_log(const char *path, int lines)
{
    size_t n = 0;
    char *b = perf_slurp(path, 0, &n);
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

double perf_loadavg1(void)
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

static int cmp_nan_low(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    if (isnan(x) || isnan(y))
        return isnan(y) - isnan(x); /* NAN sorts lowest */
    return (x > y) - (x < y);
}

double perf_median(double *v, int n, bool drop_nan)
{
    if (drop_nan) {
        int k = 0;

        for (int i = 0; i < n; i++)
            if (!isnan(v[i]))
                v[k++] = v[i];
        n = k;
    }
    if (n < 1)
        return NAN;
    qsort(v, (size_t)n, sizeof(*v), cmp_nan_low);
    if (n % 2)
        return v[n / 2];
    return isnan(v[n / 2 - 1]) ? NAN : (v[n / 2 - 1] + v[n / 2]) / 2;
}

void perf_fmt(char *b, size_t n, double v, const char *f)
{
    if (isnan(v))
        snprintf(b, n, "-");
    else
        snprintf(b, n, f, v);
}

bool perf_arg_val(int argc, char **argv, int *i, const char *name, const char **v)
{
    if (strcmp(argv[*i], name))
        return false;
    if (*i + 1 >= argc) {
        fprintf(stderr, "%s: %s needs a value\n", g_prog, name);
        exit(2);
    }
    *v = argv[++*i];
    return true;
}

double perf_parse_pos(const char *name, const char *v, double max)
{
    char *end;
    double d = strtod(v, &end);

    if (*end || !(d > 0) || d > max) {
        fprintf(stderr, "%s: %s: '%s' is not a positive number\n", g_prog, name, v);
        exit(2);
    }
    return d;
}

void perf_jnum(FILE *f, bool *first, const char *key, double v)
{
    fprintf(f, "%s\"%s\":", *first ? "" : ",", key);
    if (isfinite(v))
        fprintf(f, "%.6g", v);
    else
        fputs("null", f);
    *first = false;
}

void perf_jstr(FILE *f, bool *first, const char *key, const char *v)
{
    fprintf(f, "%s\"%s\":", *first ? "" : ",", key);
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
