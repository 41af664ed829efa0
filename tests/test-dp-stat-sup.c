/*
 * test-dp-stat-sup.c - what the supervisor writes into the stats segment
 * (dp_sup.h "Stats"), with the stand-in stage `favo stage sleeper` (it
 * heartbeats its row every 50 ms; without a tick hook that heartbeat is
 * "up"): STARTING until up then RUNNING, restarts, each restart's time
 * exit -> up in the row (last, max) and in the favo_stage_restart_seconds
 * histogram of the supervisor's own writer slot, an "up NAME PID NS" event
 * agreeing with the row, the info region (version, pid), and the 10 s
 * window holding the restarts once the supervisor has recomputed it.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "dp_sup.h"
#include "favo_base.h"
#include "t_util.h"

#define CHECK(c) T_REQUIRE(c)

static int evfd;
static char evbuf[8192];
static size_t evlen;

/* Next event line starting with prefix within ms: 0, or -1. */
static int ev_wait(const char *prefix, int ms, char *out, size_t outlen)
{
    uint64_t end = favo_now_ns() + (uint64_t)ms * 1000000u;

    for (;;) {
        char *nl;

        while ((nl = memchr(evbuf, '\n', evlen))) {
            size_t n = (size_t)(nl - evbuf);
            int hit;

            *nl = 0;
            hit = !strncmp(evbuf, prefix, strlen(prefix));
            if (hit) {
                size_t c = n < outlen - 1 ? n : outlen - 1;

                memcpy(out, evbuf, c);
                out[c] = 0;
            }
            memmove(evbuf, nl + 1, evlen - n - 1);
            evlen -= n + 1;
            if (hit)
                return 0;
        }
        uint64_t now = favo_now_ns();
        if (now >= end)
            return -1;
        struct pollfd pf = { .fd = evfd, .events = POLLIN };
        if (poll(&pf, 1, (int)((end - now) / 1000000u) + 1) <= 0)
            continue;
        ssize_t k = read(evfd, evbuf + evlen, sizeof(evbuf) - 1 - evlen);
        if (k <= 0)
            return -1;
        evlen += (size_t)k;
    }
}

static const struct shm_stage_snap *row0(struct shm_stats *st, struct shm_stats_snap *snap)
{
    CHECK(shm_stats_snapshot(st, snap) == 0 && snap->nstages == 1);
    return &snap->stages[0];
}

int main(void)
{
    enum { KILLS = 3 };
    const char *bin = getenv("FAVO_BIN");
    struct shm_stats stats;
    struct dp_sup_cfg cfg;
    struct shm_stats_snap *snap = calloc(1, sizeof(*snap));
    char inst[64], line[160];
    uint64_t lat[KILLS], maxlat = 0;
    int p[2], pid, st, mfd;
    pid_t sup;

    if (!bin || access(bin, X_OK))
        t_skip("FAVO_BIN not set");
    CHECK(snap);
    snprintf(inst, sizeof(inst), "t-dp-stat-%d", (int)getpid());
    /* one writer slot more than stages: the supervisor's */
    CHECK(shm_stats_create(&stats, inst, 2, 1) == 0);
    mfd = memfd_create("favo-data-test", MFD_CLOEXEC);
    CHECK(mfd >= 0);
    dp_sup_cfg_init(&cfg);
    const char *sargs[] = { "--stats", inst, "--row", "0", NULL };
    CHECK(dp_sup_add(&cfg, "sleeper", sargs) == 0);
    cfg.stats = &stats;
    cfg.data_fd = mfd;
    cfg.exe = bin;
    cfg.stages[0].kind = SHM_STAGE_BATCHER;
    cfg.breaker_fails = DP_SUP_NO_BREAKER;
    cfg.backoff_base_ns = 1000;
    CHECK(pipe2(p, O_CLOEXEC) == 0);
    sup = fork();
    CHECK(sup >= 0);
    if (sup == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0); /* a failed CHECK leaves no supervisor */
        close(p[0]);
        cfg.event_fd = p[1];
        _exit(dp_sup_run(&cfg));
    }
    close(p[1]);
    evfd = p[0];

    CHECK(ev_wait("spawn sleeper", 5000, line, sizeof(line)) == 0);
    CHECK(sscanf(line, "spawn sleeper %d", &pid) == 1);
    /* up at its first heartbeat: RUNNING, no restart yet */
    for (int i = 0; i < 5000 && row0(&stats, snap)->info.state != SHM_STAGE_RUNNING; i++)
        usleep(1000);
    CHECK(snap->stages[0].info.state == SHM_STAGE_RUNNING);
    CHECK(snap->stages[0].info.pid == pid);
    CHECK(snap->stages[0].info.restarts == 0 && snap->stages[0].info.last_restart_ns == 0);
    CHECK(snap->version[0] != 0 && snap->sup_pid == sup);

    for (int i = 0; i < KILLS; i++) {
        unsigned long long ns;
        int np;

        usleep(60000); /* past exec and its first heartbeat */
        CHECK(kill(pid, SIGKILL) == 0);
        CHECK(ev_wait("up sleeper", 5000, line, sizeof(line)) == 0);
        CHECK(sscanf(line, "up sleeper %d %llu", &np, &ns) == 2);
        CHECK(np != pid && ns > 0);
        lat[i] = ns;
        if (ns > maxlat)
            maxlat = ns;
        pid = np;
        const struct shm_stage_snap *r = row0(&stats, snap);
        CHECK(r->info.restarts == (unsigned)i + 1);
        CHECK(r->info.state == SHM_STAGE_RUNNING && r->info.pid == np);
        CHECK(r->info.last_restart_ns == ns && r->info.max_restart_ns == maxlat);
        CHECK(r->info.exit_ns != 0 && r->info.exit_ns < r->info.started_ns + 1);
        CHECK(snap->hist[SHM_H_STAGE_RESTART].count == (uint64_t)i + 1);
    }
    /* the windows are recomputed once a second: the restarts are in the
     * last 10 s */
    usleep(1300000);
    row0(&stats, snap);
    CHECK(snap->nwin == SHM_STATS_NWIN);
    CHECK(snap->win[0].span_ns > 0);
    CHECK(snap->win[0].hist[SHM_H_STAGE_RESTART].count == KILLS);
    CHECK(snap->win[0].hist[SHM_H_STAGE_RESTART].q_ns[3] > 0);

    CHECK(kill(sup, SIGTERM) == 0);
    CHECK(waitpid(sup, &st, 0) == sup && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    CHECK(row0(&stats, snap)->info.state == SHM_STAGE_STOPPED);
    printf("restart exit -> up (first heartbeat): %.2f, %.2f, %.2f ms\n", lat[0] / 1e6,
           lat[1] / 1e6, lat[2] / 1e6);
    close(evfd);
    close(mfd);
    shm_stats_destroy(&stats);
    free(snap);
    printf("ok\n");
    return 0;
}
