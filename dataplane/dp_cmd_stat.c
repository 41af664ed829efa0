/*
 * dp_cmd_stat.c - `favo stat`: attach read-only to the stats segment
 * /favo.<instance> and print a snapshot - the text view, or JSON with
 * --json - once, or every --watch seconds (re-attaching when the instance
 * restarts). It reads numbers only: the segment cannot hold request content.
 *
 * Besides the segment it reads /proc/PID/stat of each stage (the pids are
 * in the stage table) for CPU use: seconds used, and percent of one core
 * over the last --watch interval, or over the stage's life for a single
 * snapshot. --watch redraws in place like top on a terminal; to a pipe or
 * a file it appends each snapshot after a separator line instead.
 */
#include "dp.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "shm_stats.h"

int dp_cmd_stat(const struct dp_cmd *cmd, int argc, char **argv);

/* CPU seconds used by pid and its start (seconds after boot), from
 * /proc/PID/stat; false when the process is not readable. */
static bool proc_cpu(int pid, double *cpu_s, double *start_s)
{
    char path[64], buf[1024], *p;
    unsigned long long ut, stt, start;
    long hz = sysconf(_SC_CLK_TCK);
    FILE *f;
    size_t n;

    if (pid <= 0 || hz <= 0)
        return false;
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    f = fopen(path, "r");
    if (!f)
        return false;
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = 0;
    p = strrchr(buf, ')'); /* the name may hold spaces and parentheses */
    /* after ")": state(3) ... utime(14) stime(15) ... starttime(22) */
    if (!p || sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %*d %*d "
                            "%*d %*d %*d %*d %llu", &ut, &stt, &start) != 3)
        return false;
    *cpu_s = (double)(ut + stt) / (double)hz;
    *start_s = (double)start / (double)hz;
    return true;
}

static double boot_uptime_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_BOOTTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Fill cpu_s and cpu_pct of each stage row; prev (same generation, same
 * pid) gives the interval, else the process's life. */
static void fill_cpu(struct shm_stats_snap *snap, const struct shm_stats_snap *prev)
{
    double now = boot_uptime_s();

    for (unsigned r = 0; r < snap->nstages; r++) {
        struct shm_stage_snap *st = &snap->stages[r];
        double cpu, start;

        if (st->info.kind == SHM_STAGE_NONE || !proc_cpu(st->info.pid, &cpu, &start))
            continue;
        st->cpu_s = cpu;
        if (prev && prev->generation == snap->generation && r < prev->nstages &&
            prev->stages[r].info.pid == st->info.pid && prev->stages[r].cpu_s >= 0 &&
            snap->taken_ns > prev->taken_ns)
            st->cpu_pct = 100.0 * (cpu - prev->stages[r].cpu_s) /
                          ((double)(snap->taken_ns - prev->taken_ns) / 1e9);
        else if (now > start)
            st->cpu_pct = 100.0 * cpu / (now - start);
    }
}

int dp_cmd_stat(const struct dp_cmd *cmd, int argc, char **argv)
{
    struct dp_opt opts[] = {
        { "instance", 0, DP_OPT_STR, "NAME", "default", "Instance to attach to (/favo.NAME)." },
        { "json", 0, DP_OPT_FLAG, NULL, NULL, "Print one snapshot as JSON." },
        { "watch", 'w', DP_OPT_DOUBLE, "SECONDS", NULL, "Redraw every SECONDS, like top." },
        DP_OPT_END
    };
    int npos, rc = dp_opt_parse(cmd, opts, argc, argv, &npos), cur = 0, ret = 1;
    struct shm_stats_snap *snap[2] = { NULL, NULL };
    struct shm_stats st = { .seg.fd = -1 };
    const size_t cap = 1 << 20;
    bool json, have_prev = false, tty = isatty(STDOUT_FILENO);
    const char *inst;
    char *buf = NULL;
    double watch;

    if (rc)
        return rc > 0 ? 0 : 2;
    inst = dp_opt_str(opts, "instance");
    json = dp_opt_flag(opts, "json");
    watch = dp_opt_find(opts, "watch")->val ? dp_opt_double(opts, "watch") : 0;
    if (watch < 0 || (watch > 0 && watch < 0.05)) {
        fprintf(stderr, "favo stat: --watch %g: give at least 0.05 seconds\n", watch);
        return 2;
    }
    snap[0] = malloc(sizeof(*snap[0]));
    snap[1] = malloc(sizeof(*snap[1]));
    buf = malloc(cap);
    if (!snap[0] || !snap[1] || !buf) {
        fprintf(stderr, "favo stat: out of memory\n");
        goto out;
    }
    if ((rc = shm_stats_open(&st, inst, false)) != 0) {
        if (rc == -EPROTO)
            fprintf(stderr, "favo stat: %s\nfavo stat: this is favo %s: run the favo binary "
                    "the instance runs to read its stats\n", st.seg.err, FAVO_VERSION);
        else
            fprintf(stderr, "favo stat: %s\n", st.seg.err);
        goto out;
    }
    for (;;) {
        struct timespec ts;

        rc = shm_stats_snapshot(&st, snap[cur]);
        if (rc == -ESTALE && watch) { /* the instance restarted: follow it */
            shm_stats_close(&st);
            if (shm_stats_open(&st, inst, false)) {
                fprintf(stderr, "favo stat: %s\n", st.seg.err);
                goto out;
            }
            have_prev = false;
            continue;
        }
        if (rc) {
            fprintf(stderr, "favo stat: instance '%s': %s\n", inst,
                    rc == -ESTALE ? "it has stopped" : strerror(-rc));
            goto out;
        }
        fill_cpu(snap[cur], have_prev ? snap[cur ^ 1] : NULL);
        if (json)
            shm_stats_json(snap[cur], buf, cap);
        else
            shm_stats_text(snap[cur], have_prev ? snap[cur ^ 1] : NULL, buf, cap);
        if (watch && !json) {
            if (tty) /* like top: home, redraw, clear what the last frame left below */
                fputs(have_prev ? "\033[H" : "\033[H\033[2J", stdout);
            else if (have_prev)
                fputs("\n----\n", stdout);   /* a log, not a screen */
        }
        if (watch && !json && tty) { /* each line cleared to its end: frames differ */
            for (char *l = buf, *nl; *l; l = nl + 1) {
                if (!(nl = strchr(l, '\n'))) {
                    fputs(l, stdout);
                    break;
                }
                fwrite(l, 1, (size_t)(nl - l), stdout);
                fputs("\033[K\n", stdout);
            }
        } else {
            fputs(buf, stdout);
        }
        if (!json && snap[cur]->version[0] && strcmp(snap[cur]->version, FAVO_VERSION))
            printf("\n(this favo stat is version %s, the instance runs %s)\n", FAVO_VERSION,
                   snap[cur]->version);
        if (watch && !json && tty)
            fputs("\033[J", stdout);
        if (json)
            fputc('\n', stdout);
        fflush(stdout);
        if (!watch)
            break;
        have_prev = true;
        cur ^= 1;
        ts.tv_sec = (time_t)watch;
        ts.tv_nsec = (long)((watch - (double)ts.tv_sec) * 1e9);
        nanosleep(&ts, NULL);
    }
    ret = 0;
out:
    shm_stats_close(&st);
    free(snap[0]);
    free(snap[1]);
    free(buf);
    return ret;
}
