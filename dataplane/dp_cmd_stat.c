/*
 * dp_cmd_stat.c - `favo stat`: attach read-only to the stats segment
 * /favo.<instance> and print a snapshot - the text view, or JSON with
 * --json - once, or every --watch seconds (re-attaching when the instance
 * restarts). It reads numbers only: the segment cannot hold request content.
 */
#include "dp.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "shm_stats.h"

int dp_cmd_stat(const struct dp_cmd *cmd, int argc, char **argv);

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
    bool json, have_prev = false;
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
    if (shm_stats_open(&st, inst, false)) {
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
        if (json)
            shm_stats_json(snap[cur], buf, cap);
        else
            shm_stats_text(snap[cur], have_prev ? snap[cur ^ 1] : NULL, buf, cap);
        if (watch && !json)
            fputs("\033[H\033[2J", stdout); /* home, clear: like top */
        fputs(buf, stdout);
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
