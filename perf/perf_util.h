/*
 * perf_util.h - shared by the benchmarks in perf/ (prefix perf_).
 *
 * Convention: build/perf/bench-<name> prints a readable table by default
 * and, with --json, one JSON object holding the same figures. Figures are
 * measured side by side in one run (ratios), never compared with constants.
 */
#ifndef PERF_UTIL_H
#define PERF_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

/* True when argv holds --json. */
bool perf_want_json(int argc, char **argv);
/* Sort v[0..n) and return the q-quantile (0..1), nearest-rank. */
double perf_quantile(double *v, size_t n, double q);

/* A tiny JSON writer for one flat object: perf_json_begin(f), then
 * perf_json_num / perf_json_str, then perf_json_end(f). */
void perf_json_begin(FILE *f);
void perf_json_num(FILE *f, const char *key, double v);
void perf_json_str(FILE *f, const char *key, const char *v);
void perf_json_end(FILE *f);

/* Machine description for results tables: CPU model, cores, kernel. */
void perf_machine(char *buf, size_t n);

/* ------------------------------------------------ child processes
 *
 * For the benchmarks that drive favo serve / favo bench / other servers
 * as child processes. Every child runs in its own process group and is
 * recorded in a small table (at most PERF_MAX_KIDS live at once):
 *
 *   perf_prog("bench-x")        name for messages (first thing in main)
 *   perf_signals_install()      SIGINT/SIGTERM/SIGHUP -> on_signal; atexit
 *                               SIGKILLs every group still alive
 *   perf_spawn -> perf_wait_for / perf_stop_child (removed from the table)
 *
 * First signal: only noted; the next perf_check_sig() (called by every
 * unbounded wait loop) SIGTERMs every group (favo serve drains and
 * removes its stats segment), waits up to 20 s each, then SIGKILLs,
 * unlinks the stats segment named with perf_set_shm (left behind if serve
 * died hard) and _exits 128 + signal. A second signal more than 1 s
 * later SIGKILLs every group at once from the handler, unlinks that
 * segment and _exits (one sooner counts as the same interruption:
 * `timeout -s INT` signals the child, then its own process group).
 */
#define PERF_MAX_KIDS 8

/* The program name used in messages ("bench-serve"). */
void perf_prog(const char *name);
/* Install the signal handlers and the atexit SIGKILL of every child. */
void perf_signals_install(void);
/* POSIX shm name ("/favo.INST") unlinked by perf_check_sig; NULL clears. */
void perf_set_shm(const char *name);
/* Record / forget a child's pid (its process group). */
void perf_kids_add(pid_t p);
void perf_kids_del(pid_t p);
/* Async-signal-safe: SIGKILL every recorded group. */
void perf_kids_kill_all(void);
/* After a signal: stop every child gracefully and _exit (see above). */
void perf_check_sig(void);
/* CLOCK_MONOTONIC in seconds. */
double perf_mono_s(void);
/* fork+exec argv[0] (a path) in a new process group. out NULL: the
 * child's stdout goes to our stderr (our stdout keeps the table / JSON),
 * stderr inherited. Else stdout to file out (created 0600, truncated) and
 * stderr to out too when merge, else to /dev/null. The pid, or -errno. */
pid_t perf_spawn(char *const argv[], const char *out, bool merge);
/* Wait for p up to timeout_s (< 0: forever, calling perf_check_sig);
 * its wait status, -ETIMEDOUT, or -errno. */
int perf_wait_for(pid_t p, double timeout_s);
/* SIGTERM p's group, SIGKILL after grace_s, SIGKILL the group again
 * (grandchildren). */
void perf_stop_child(pid_t p, double grace_s);
/* perf_spawn(argv, out, false) and wait up to timeout_s (then stop it):
 * its exit code, -ETIMEDOUT, or -EIO when it did not exit normally. */
int perf_run_to_end(char *const argv[], const char *out, double timeout_s);
/* Poll log (favo serve's stdout+stderr) for "on http://127.0.0.1:PORT"
 * followed by "ready in": the port; -ECHILD when child p exited first
 * (reaped, forgotten), -ETIMEDOUT after timeout_s. */
int perf_favo_ready_port(const char *log, pid_t p, double timeout_s);

/* The paths of a benchmark that drives favo: *favo = $FAVO_BIN, else
 * ../favo next to this executable; *model when NULL =
 * $FAVO_MODELS (or models)/SmolLM2-135M-Instruct.Q4_1.gguf; *out when
 * NULL = a new /tmp/TMP_NAME-XXXXXX, else created (0700) unless it exists. favo
 * must be executable and the model readable. 0, or 2 (the exit code)
 * after a "PROG: ..." message. The strings live in static buffers. */
int perf_favo_setup(const char **favo, const char **model, const char **out,
                    const char *tmp_name);
/* The options every benchmark takes: true for --json (see
 * perf_want_json); -h / --help print usage(stdout) and exit(0). */
bool perf_std_opt(const char *arg, void (*usage)(FILE *f));
/* The table rows of two sides run in turns repeat times: with repeat > 1
 * row("A #1", &ra[0]), row("B #1", &rb[0]), ... (size: one element),
 * then row("A med", ma), row("B med", mb); else row("A", ma), row("B", mb). */
void perf_turn_rows(int repeat, const char *a, const char *b,
                    void (*row)(const char *name, const void *side), const void *ra,
                    const void *rb, size_t size, const void *ma, const void *mb);

/* ------------------------------------------------------ small helpers */

/* The file from byte offset from on, NUL-terminated (malloc; free it),
 * its length in *len when len; NULL when it cannot be read. */
char *perf_slurp(const char *path, long from, size_t *len);
/* The last `lines` lines of a log to stderr (a child that failed). */
void perf_tail_log(const char *path, int lines);
/* The 1-minute load average from /proc/loadavg, NAN when unknown. */
double perf_loadavg1(void);
/* Median of v[0..n) (sorts v). drop_nan: NANs are left out (NAN when
 * none is left). Else NAN sorts lowest, and for even n the mean of the
 * middle two is NAN when the lower one is. NAN for n < 1. */
double perf_median(double *v, int n, bool drop_nan);
/* v printed with format f (one double) into b[0..n), "-" when NAN. */
void perf_fmt(char *b, size_t n, double v, const char *f);
/* argv[*i] == name: *v = the next argument (++*i), true; no next one:
 * "PROG: NAME needs a value", exit(2). */
bool perf_arg_val(int argc, char **argv, int *i, const char *name, const char **v);
/* v as a number > 0 and <= max, else "PROG: NAME: 'V' is not a positive
 * number", exit(2). */
double perf_parse_pos(const char *name, const char *v, double max);

/* A JSON writer with the caller's first-member flag (set it true after
 * writing '{'): non-finite numbers and NULL strings are written as null;
 * strings escape '"', '\\' and control characters (\u00XX). */
void perf_jnum(FILE *f, bool *first, const char *key, double v);
void perf_jstr(FILE *f, bool *first, const char *key, const char *v);

#endif
