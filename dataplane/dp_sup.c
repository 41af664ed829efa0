/*
 * dp_sup.c - the supervisor event loop; the design is in dp_sup.h.
 */
#include "dp_sup.h"

#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include "dp_notify.h"
#include "favo_base.h"

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

enum { ST_RUNNING, ST_BACKOFF, ST_DONE };

struct sup_stage {
    const struct dp_sup_stage_cfg *cfg;
    int state;
    pid_t pid;
    int pidfd;                 /* invariant 1: >= 0 iff pid is live */
    uint64_t restart_at;       /* ST_BACKOFF: when to spawn again */
    uint64_t exit_seen;        /* when the last exit was noticed */
    uint64_t fails[16];        /* ring of failure times for the breaker */
    unsigned nfails;
    unsigned restarts;
    uint64_t spawn_ns;         /* when the running pid was forked */
    bool pending_up;           /* spawned, not seen up yet (row STARTING) */
    bool restarting;           /* ... and it replaces one that exited */
    uint64_t last_restart_ns, max_restart_ns; /* exit -> replacement up */
};

struct sup {
    const struct dp_sup_cfg *cfg;
    struct sup_stage st[DP_SUP_MAX_STAGES];
    int ep, sfd, tfd;
    bool draining;
    uint64_t drain_deadline;
    uint64_t wd_interval, wd_next;
    uint64_t tick_next;        /* 0: no tick hook */
    bool ready_sent;
    unsigned breaker_fails;
    uint64_t breaker_window, backoff_base, backoff_max;
    /* the supervisor's own stats: its writer slot (ring gauges, restart
     * histogram) and the 10 s / 60 s windows it computes once a second */
    struct shm_stats_writer w;
    bool have_w;
    struct shm_stats_snap *snap;
    struct shm_stats_windower *win;
    uint64_t win_next;
};

static void sup_event(struct sup *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The supervisor running in this process (dp_sup_run is single-threaded
 * and runs once per process): dp_sup_writer and dp_sup_stage_up use it. */
static struct sup *sup_cur;

#define SUP_UP_POLL_NS 1000000ull       /* a replacement's up word: every 1 ms */
#define SUP_HB_POLL_NS 10000000ull      /* its heartbeat (no tick hook): every 10 ms */
#define SUP_WIN_NS 1000000000ull        /* windows: once a second */

/* Tag values for epoll: stage index, or these. */
#define TAG_SIG 100u
#define TAG_TIMER 101u

void dp_sup_cfg_init(struct dp_sup_cfg *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->data_fd = -1;
    cfg->event_fd = -1;
}

int dp_sup_add(struct dp_sup_cfg *cfg, const char *name, const char *const *args)
{
    struct dp_sup_stage_cfg *s;
    unsigned n = 0;

    if (cfg->nstages >= DP_SUP_MAX_STAGES)
        return -E2BIG;
    s = &cfg->stages[cfg->nstages];
    memset(s, 0, sizeof(*s));
    s->name = name;
    for (; args && args[n]; n++) {
        if (n + 1 >= DP_SUP_MAX_ARGS)
            return -E2BIG;
        s->args[n] = args[n];
    }
    return (int)cfg->nstages++;
}

/* Publish stage i's row in the stats segment (metadata only). */
static void sup_row(struct sup *s, unsigned i, enum shm_stage_state state)
{
    const struct sup_stage *st = &s->st[i];
    struct shm_stage_info info;

    if (!s->cfg->stats)
        return;
    memset(&info, 0, sizeof(info));
    info.kind = st->cfg->kind;
    info.index = st->cfg->index;
    info.state = state;
    info.pid = st->pid;
    info.restarts = st->restarts;
    for (int c = 0; c < CPU_SETSIZE && c < SHM_STATS_MAX_CORES; c++)
        if (st->cfg->pin ? CPU_ISSET(c, &st->cfg->cpus) : false)
            info.cores[c / 64] |= 1ull << (c % 64);
    info.started_ns = st->spawn_ns;
    info.last_restart_ns = st->last_restart_ns;
    info.max_restart_ns = st->max_restart_ns;
    info.exit_ns = st->exit_seen;
    shm_stats_stage_set(s->cfg->stats, i, &info);
}

/* Stage i's replacement is up at `up_ns`: a restart's time is exit -> up. */
static void sup_mark_up(struct sup *s, unsigned i, uint64_t up_ns)
{
    struct sup_stage *st = &s->st[i];
    bool restart = st->restarting;
    uint64_t t = 0;

    if (!st->pending_up)
        return;
    st->pending_up = st->restarting = false;
    if (restart) {
        t = up_ns > st->exit_seen ? up_ns - st->exit_seen : 1;
        st->last_restart_ns = t;
        if (t > st->max_restart_ns)
            st->max_restart_ns = t;
        if (s->have_w) {
            shm_stats_observe(&s->w, SHM_H_STAGE_RESTART, t);
            shm_stats_flush(&s->w);
        }
    }
    /* the row first: whoever reads the event finds the row up already */
    sup_row(s, i, s->draining ? SHM_STAGE_DRAINING : SHM_STAGE_RUNNING);
    if (restart) {
        sup_event(s, "up %s %d %llu", st->cfg->name, (int)st->pid, (unsigned long long)t);
        favo_info("stage %s up again as pid %d, %.3f ms after its exit", st->cfg->name,
                  (int)st->pid, (double)t / 1e6);
    }
}

/* Without a tick hook nobody reports up words: a stage is up at its first
 * heartbeat after its spawn (the heartbeat's own time is the up time). */
static void sup_check_heartbeats(struct sup *s)
{
    if (s->cfg->hooks.tick || !s->cfg->stats)
        return;
    for (unsigned i = 0; i < s->cfg->nstages; i++) {
        struct sup_stage *st = &s->st[i];
        const struct shm_stats_stage *row;

        if (!st->pending_up || i >= s->cfg->stats->meta->nstages)
            continue;
        row = (const struct shm_stats_stage *)(s->cfg->stats->stages +
                                               (size_t)i * s->cfg->stats->meta->stage_size);
        uint64_t hb = ck_pr_load_64(&row->heartbeat_ns);
        if (hb >= st->spawn_ns)
            sup_mark_up(s, i, hb);
    }
}

static bool sup_any_pending(const struct sup *s, bool restarts_only)
{
    for (unsigned i = 0; i < s->cfg->nstages; i++)
        if (s->st[i].pending_up && s->st[i].pidfd >= 0 && (!restarts_only || s->st[i].restarting))
            return true;
    return false;
}

void dp_sup_stage_up(enum shm_stage_kind kind, unsigned index, pid_t pid)
{
    struct sup *s = sup_cur;

    if (!s || pid <= 0)
        return;
    for (unsigned i = 0; i < s->cfg->nstages; i++) {
        struct sup_stage *st = &s->st[i];

        if (st->cfg && st->cfg->kind == kind && st->cfg->index == index && st->pid == pid)
            sup_mark_up(s, i, favo_now_ns());
    }
}

struct shm_stats_writer *dp_sup_writer(void)
{
    return sup_cur && sup_cur->have_w ? &sup_cur->w : NULL;
}

/* Once a second: publish our own block, snapshot, recompute the windows. */
static void sup_windows(struct sup *s, uint64_t now)
{
    if (!s->win || now < s->win_next)
        return;
    s->win_next = now + SUP_WIN_NS;
    if (s->have_w)
        shm_stats_flush(&s->w);
    if (shm_stats_snapshot(s->cfg->stats, s->snap) == 0)
        shm_stats_win_update(s->cfg->stats, s->win, s->snap);
}

static void sup_stats_open(struct sup *s)
{
    struct shm_stats *st = s->cfg->stats;

    if (!st || !st->seg.writable)
        return;
    shm_stats_set_info(st, FAVO_VERSION, (int32_t)getpid());
    /* favo serve makes one writer slot more than stages: the last is ours
     * (stages take slot = row) */
    if (st->meta->nwriters > s->cfg->nstages &&
        shm_stats_writer_init(st, s->cfg->nstages, SHM_STAGE_SUPERVISOR, 0, SHM_STATS_FLUSH_NS,
                              &s->w) == 0)
        s->have_w = true;
    if (st->wins) {
        s->snap = malloc(sizeof(*s->snap));
        if (!s->snap || shm_stats_win_new(&s->win)) {
            favo_warn("supervisor: no memory for the 10 s / 60 s windows; favo stat shows "
                      "totals only");
            free(s->snap);
            s->snap = NULL;
            s->win = NULL;
        } else {
            s->win_next = favo_now_ns(); /* the first snapshot is every window's base */
        }
    }
}

static void sup_stats_close(struct sup *s)
{
    if (s->have_w)
        shm_stats_writer_free(&s->w);
    s->have_w = false;
    shm_stats_win_free(s->win);
    free(s->snap);
    s->win = NULL;
    s->snap = NULL;
}

static void sup_event(struct sup *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sup_event(struct sup *s, const char *fmt, ...)
{
    char buf[160];
    va_list ap;
    int n;

    if (s->cfg->event_fd < 0)
        return;
    va_start(ap, fmt);
    n = vsnprintf(buf, sizeof(buf) - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n > sizeof(buf) - 2)
        n = (int)sizeof(buf) - 2;
    buf[n++] = '\n';
    /* One write per line so readers never see half a line (pipe < PIPE_BUF). */
    if (write(s->cfg->event_fd, buf, (size_t)n) < 0)
        favo_debug("supervisor event pipe: %s", strerror(errno));
}

/* Child side of fork: never returns. Async-signal-safe calls only. */
static _Noreturn void sup_child(const struct sup *s, const struct dp_sup_stage_cfg *c,
                                const char *exe, pid_t parent)
{
    const char *argv[DP_SUP_MAX_ARGS + 4];
    unsigned n = 0;
    sigset_t none;

    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    if (getppid() != parent)
        _exit(127); /* the supervisor died before PDEATHSIG was armed */
    if (c->pin)
        sched_setaffinity(0, sizeof(c->cpus), &c->cpus);
    if (s->cfg->data_fd >= 0) {
        if (s->cfg->data_fd == DP_SUP_DATA_FD)
            fcntl(DP_SUP_DATA_FD, F_SETFD, 0);
        else if (dup2(s->cfg->data_fd, DP_SUP_DATA_FD) < 0)
            _exit(127);
    }
    for (unsigned k = 0; k < c->nkeep; k++)
        if (c->keep_fds[k] >= 0 && fcntl(c->keep_fds[k], F_SETFD, 0) < 0)
            _exit(127);
    /* Stages must not talk to systemd as if they were the main process. The
     * supervisor is single-threaded, so unsetenv after fork is safe here. */
    unsetenv("WATCHDOG_USEC");
    unsetenv("WATCHDOG_PID");
    unsetenv("NOTIFY_SOCKET");
    argv[n++] = exe;
    argv[n++] = "stage";
    argv[n++] = c->name;
    for (unsigned i = 0; c->args[i]; i++)
        argv[n++] = c->args[i];
    argv[n] = NULL;
    execv(exe, (char *const *)argv);
    _exit(127);
}

static int sup_spawn(struct sup *s, unsigned i)
{
    struct sup_stage *st = &s->st[i];
    const char *exe = s->cfg->exe ? s->cfg->exe : "/proc/self/exe";
    struct epoll_event ev = { .events = EPOLLIN, .data.u32 = i };
    pid_t pid, parent = getpid();
    int fd;

    FAVO_ASSERT(st->pidfd < 0); /* invariant 1 */
    pid = fork();
    if (pid < 0)
        return -errno;
    if (pid == 0)
        sup_child(s, st->cfg, exe, parent);
    /* Race-free: the child cannot be reaped (and its pid reused) before we
     * wait on it, and only we wait. */
    fd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (fd < 0) {
        int e = errno;
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        return -e;
    }
    if (epoll_ctl(s->ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
        int e = errno;
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        close(fd);
        return -e;
    }
    st->pid = pid;
    st->pidfd = fd;
    st->state = ST_RUNNING;
    st->spawn_ns = favo_now_ns();
    st->pending_up = true;
    if (s->cfg->hooks.pid)
        s->cfg->hooks.pid(s->cfg->hooks.arg, i, pid);
    sup_row(s, i, SHM_STAGE_STARTING);
    sup_event(s, "spawn %s %d", st->cfg->name, (int)pid);
    return 0;
}

static void sup_kill_all(struct sup *s, int sig)
{
    for (unsigned i = 0; i < s->cfg->nstages; i++)
        if (s->st[i].pidfd >= 0)
            syscall(SYS_pidfd_send_signal, s->st[i].pidfd, sig, NULL, 0);
}

static void sup_reap_all(struct sup *s)
{
    for (unsigned i = 0; i < s->cfg->nstages; i++) {
        struct sup_stage *st = &s->st[i];

        if (st->pidfd < 0)
            continue;
        siginfo_t si;
        memset(&si, 0, sizeof(si));
        waitid((idtype_t)P_PIDFD, (id_t)st->pidfd, &si, WEXITED);
        if (s->cfg->hooks.pid)
            s->cfg->hooks.pid(s->cfg->hooks.arg, i, 0);
        close(st->pidfd);
        st->pidfd = -1;
        st->pid = 0;
        st->state = ST_DONE;
    }
}

static bool sup_none_running(const struct sup *s)
{
    for (unsigned i = 0; i < s->cfg->nstages; i++)
        if (s->st[i].pidfd >= 0)
            return false;
    return true;
}

/* Count failures of stage st inside the breaker window, after adding now. */
static unsigned sup_fail(struct sup *s, struct sup_stage *st, uint64_t now)
{
    unsigned cap = sizeof(st->fails) / sizeof(st->fails[0]), n = 0;

    st->fails[st->nfails++ % cap] = now;
    for (unsigned k = 0; k < cap && k < st->nfails; k++)
        if (now - st->fails[k] <= s->breaker_window)
            n++;
    return n; /* invariant 3: each failure stored once, counted by time */
}

static void sup_arm_timer(struct sup *s)
{
    uint64_t next = UINT64_MAX;
    struct itimerspec its;

    memset(&its, 0, sizeof(its));
    for (unsigned i = 0; i < s->cfg->nstages; i++)
        if (s->st[i].state == ST_BACKOFF && s->st[i].restart_at < next)
            next = s->st[i].restart_at;
    if (s->draining && s->drain_deadline < next)
        next = s->drain_deadline;
    if (s->wd_interval && s->wd_next < next)
        next = s->wd_next;
    if (s->tick_next && s->tick_next < next)
        next = s->tick_next;
    if (s->win && s->win_next < next)
        next = s->win_next;
    /* a replacement coming up: look for its up word (tick hook) or its
     * heartbeat often, so the restart time is measured, not the poll */
    if (sup_any_pending(s, s->cfg->hooks.tick != NULL)) {
        uint64_t soon = favo_now_ns() + (s->cfg->hooks.tick ? SUP_UP_POLL_NS : SUP_HB_POLL_NS);

        if (soon < next)
            next = soon;
    }
    if (next != UINT64_MAX) {
        if (next == 0)
            next = 1;
        its.it_value.tv_sec = (time_t)(next / 1000000000ull);
        its.it_value.tv_nsec = (long)(next % 1000000000ull);
    }
    timerfd_settime(s->tfd, TFD_TIMER_ABSTIME, &its, NULL);
}

static const char *sup_describe(const siginfo_t *si, char *buf, size_t len)
{
    if (si->si_code == CLD_EXITED)
        snprintf(buf, len, "exit=%d", si->si_status);
    else
        snprintf(buf, len, "signal=%s", sigabbrev_np(si->si_status) ? sigabbrev_np(si->si_status) : "?");
    return buf;
}

/* A stage's pidfd is readable: reap it, then restart, back off or trip. */
static int sup_on_exit(struct sup *s, unsigned i)
{
    struct sup_stage *st = &s->st[i];
    uint64_t now = favo_now_ns();
    siginfo_t si;
    char how[32];

    memset(&si, 0, sizeof(si));
    if (waitid((idtype_t)P_PIDFD, (id_t)st->pidfd, &si, WEXITED | WNOHANG) < 0 ||
        si.si_pid == 0)
        return 0; /* spurious */
    epoll_ctl(s->ep, EPOLL_CTL_DEL, st->pidfd, NULL);
    if (s->cfg->hooks.pid)
        s->cfg->hooks.pid(s->cfg->hooks.arg, i, 0);
    close(st->pidfd);
    st->pidfd = -1;
    sup_describe(&si, how, sizeof(how));
    sup_event(s, "exit %s %d %s", st->cfg->name, (int)st->pid, how);
    st->pid = 0;
    st->exit_seen = now;
    st->pending_up = st->restarting = false;
    if (s->draining) { /* invariant 2 */
        st->state = ST_DONE;
        sup_row(s, i, SHM_STAGE_STOPPED);
        favo_info("stage %s ended during drain (%s)", st->cfg->name, how);
        return 0;
    }
    unsigned n = sup_fail(s, st, now);
    if (n >= s->breaker_fails) {
        favo_err("stage %s failed %u times in %.0f s (%s): circuit breaker open, not ready, "
                 "exiting", st->cfg->name, n, (double)s->breaker_window / 1e9, how);
        dp_notify_status("breaker open: stage %s failed %u times", st->cfg->name, n);
        sup_row(s, i, SHM_STAGE_FAILED);
        sup_event(s, "breaker %s", st->cfg->name);
        return -1;
    }
    uint64_t delay = 0;
    if (n >= 2) {
        unsigned sh = n - 2 > 30 ? 30 : n - 2;
        delay = s->backoff_base << sh;
        if (delay > s->backoff_max)
            delay = s->backoff_max;
    }
    favo_warn("stage %s died (%s), failure %u/%u in window; restart in %.1f ms",
              st->cfg->name, how, n, s->breaker_fails, (double)delay / 1e6);
    st->state = ST_BACKOFF;
    st->restart_at = now + delay;
    sup_row(s, i, SHM_STAGE_BACKOFF);
    return 0;
}

static int sup_restart_due(struct sup *s)
{
    uint64_t now = favo_now_ns();

    for (unsigned i = 0; i < s->cfg->nstages; i++) {
        struct sup_stage *st = &s->st[i];

        if (st->state != ST_BACKOFF || st->restart_at > now)
            continue;
        st->restarts++;
        st->restarting = true; /* sup_spawn's row shows the new count */
        int rc = sup_spawn(s, i);
        if (rc < 0) {
            favo_err("restart of stage %s: %s", st->cfg->name, strerror(-rc));
            return -1;
        }
        uint64_t lat = favo_now_ns() - st->exit_seen;
        sup_event(s, "restart %s %d %llu", st->cfg->name, (int)st->pid,
                  (unsigned long long)lat);
        favo_info("stage %s restarted as pid %d, %.3f ms after its exit (restart %u)",
                  st->cfg->name, (int)st->pid, (double)lat / 1e6, st->restarts);
    }
    return 0;
}

static void sup_start_drain(struct sup *s)
{
    uint64_t t = (uint64_t)((s->cfg->drain_timeout_s > 0 ? s->cfg->drain_timeout_s : 30.0) * 1e9);

    s->draining = true;
    s->drain_deadline = favo_now_ns() + t;
    dp_notify_stopping();
    dp_notify_status("draining (up to %.1f s)", (double)t / 1e9);
    favo_info("draining: telling stages to finish, up to %.1f s", (double)t / 1e9);
    for (unsigned i = 0; i < s->cfg->nstages; i++)
        if (s->st[i].state == ST_BACKOFF)
            s->st[i].state = ST_DONE; /* invariant 2 */
    for (unsigned i = 0; i < s->cfg->nstages; i++)
        if (s->st[i].pidfd >= 0)
            sup_row(s, i, SHM_STAGE_DRAINING);
    if (s->cfg->hooks.drain)
        s->cfg->hooks.drain(s->cfg->hooks.arg);
    sup_kill_all(s, SIGTERM);
}

static int sup_setup(struct sup *s, const struct dp_sup_cfg *cfg, sigset_t *old)
{
    sigset_t set;
    struct epoll_event ev = { .events = EPOLLIN };

    memset(s, 0, sizeof(*s));
    s->cfg = cfg;
    s->ep = s->sfd = s->tfd = -1;
    for (unsigned i = 0; i < DP_SUP_MAX_STAGES; i++)
        s->st[i].pidfd = -1;
    s->breaker_fails = cfg->breaker_fails ? cfg->breaker_fails : 5;
    /* The failure ring holds 16 times: a larger threshold could never trip. */
    if (s->breaker_fails > 16 && s->breaker_fails != DP_SUP_NO_BREAKER)
        s->breaker_fails = 16;
    s->breaker_window = cfg->breaker_window_ns ? cfg->breaker_window_ns : 60000000000ull;
    s->backoff_base = cfg->backoff_base_ns ? cfg->backoff_base_ns : 10000000ull;
    s->backoff_max = cfg->backoff_max_ns ? cfg->backoff_max_ns : 5000000000ull;
    if (cfg->nstages == 0 || cfg->nstages > DP_SUP_MAX_STAGES)
        return -EINVAL;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGPIPE);
    if (sigprocmask(SIG_BLOCK, &set, old) < 0)
        return -errno;
    sigdelset(&set, SIGCHLD); /* pidfds tell us; SIGCHLD stays blocked */
    sigdelset(&set, SIGPIPE);
    s->sfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    s->ep = epoll_create1(EPOLL_CLOEXEC);
    s->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
    if (s->sfd < 0 || s->ep < 0 || s->tfd < 0)
        return -errno;
    ev.data.u32 = TAG_SIG;
    if (epoll_ctl(s->ep, EPOLL_CTL_ADD, s->sfd, &ev) < 0)
        return -errno;
    ev.data.u32 = TAG_TIMER;
    if (epoll_ctl(s->ep, EPOLL_CTL_ADD, s->tfd, &ev) < 0)
        return -errno;
    s->wd_interval = dp_notify_watchdog_interval_ns();
    return 0;
}

int dp_sup_run(const struct dp_sup_cfg *cfg)
{
    struct sup s;
    sigset_t old;
    int rc, ret = 1;

    sigprocmask(SIG_BLOCK, NULL, &old);
    rc = sup_setup(&s, cfg, &old);
    if (rc < 0) {
        favo_err("supervisor setup: %s", strerror(-rc));
        goto out;
    }
    sup_cur = &s;
    sup_stats_open(&s);
    for (unsigned i = 0; i < cfg->nstages; i++) {
        s.st[i].cfg = &cfg->stages[i];
        rc = sup_spawn(&s, i);
        if (rc < 0) {
            favo_err("spawn of stage %s: %s", cfg->stages[i].name, strerror(-rc));
            goto kill;
        }
    }
    if (cfg->hooks.tick) {
        s.tick_next = favo_now_ns() + cfg->hooks.tick_ns;
    } else {
        dp_notify_ready();
        s.ready_sent = true;
    }
    dp_notify_status("running %u stages", cfg->nstages);
    favo_info("supervisor: %u stages running", cfg->nstages);
    if (s.wd_interval) {
        dp_notify_watchdog();
        s.wd_next = favo_now_ns() + s.wd_interval;
    }
    for (;;) {
        struct epoll_event evs[DP_SUP_MAX_STAGES + 2];

        sup_arm_timer(&s);
        int n = epoll_wait(s.ep, evs, (int)(sizeof(evs) / sizeof(evs[0])), -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            favo_err("supervisor epoll_wait: %s", strerror(errno));
            goto kill;
        }
        for (int k = 0; k < n; k++) {
            uint32_t tag = evs[k].data.u32;

            if (tag == TAG_SIG) {
                struct signalfd_siginfo ssi;
                while (read(s.sfd, &ssi, sizeof(ssi)) == (ssize_t)sizeof(ssi)) {
                    if (ssi.ssi_signo == SIGHUP) {
                        if (cfg->hooks.reload)
                            cfg->hooks.reload(cfg->hooks.arg);
                        favo_info("SIGHUP: forwarding reload to the stages");
                        sup_kill_all(&s, SIGHUP);
                    } else if (s.draining) {
                        favo_warn("second stop signal: killing the stages, exiting now");
                        goto kill;
                    } else {
                        sup_start_drain(&s);
                    }
                }
            } else if (tag == TAG_TIMER) {
                uint64_t exp;
                if (read(s.tfd, &exp, sizeof(exp)) < 0 && errno != EAGAIN)
                    favo_debug("timerfd read: %s", strerror(errno));
            } else if (tag < DP_SUP_MAX_STAGES && s.st[tag].pidfd >= 0) {
                if (sup_on_exit(&s, tag) < 0)
                    goto kill;
            }
        }
        uint64_t now = favo_now_ns();
        bool due = s.tick_next && now >= s.tick_next;
        if (s.tick_next && (due || sup_any_pending(&s, true))) {
            /* also between ticks while a restarted stage comes up: the
             * hook's caller reports up words (dp_sup_stage_up) */
            if (cfg->hooks.tick(cfg->hooks.arg) == 1 && !s.ready_sent && !s.draining) {
                dp_notify_ready();
                s.ready_sent = true;
            }
            if (due)
                s.tick_next = now + (cfg->hooks.tick_ns ? cfg->hooks.tick_ns : 50000000ull);
        }
        sup_check_heartbeats(&s);
        sup_windows(&s, now);
        if (s.wd_interval && now >= s.wd_next) {
            dp_notify_watchdog();
            s.wd_next = now + s.wd_interval;
        }
        if (s.draining) {
            if (sup_none_running(&s)) {
                favo_info("drained: every stage has exited");
                sup_event(&s, "drained");
                ret = 0;
                goto out;
            }
            if (now >= s.drain_deadline) {
                favo_warn("drain timeout: killing the stages still running");
                sup_kill_all(&s, SIGKILL);
                sup_reap_all(&s);
                sup_event(&s, "drained");
                ret = 0;
                goto out;
            }
        } else if (sup_restart_due(&s) < 0) {
            goto kill;
        }
    }
kill:
    sup_kill_all(&s, SIGKILL); /* invariant 3: no orphans after we give up */
    sup_reap_all(&s);
out:
    if (s.ep >= 0)
        close(s.ep);
    if (s.sfd >= 0)
        close(s.sfd);
    if (s.tfd >= 0)
        close(s.tfd);
    sup_stats_close(&s);
    sup_cur = NULL;
    sigprocmask(SIG_SETMASK, &old, NULL);
    return ret;
}
