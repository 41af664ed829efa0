/*
 * dp_sup.h - the supervisor: spawns the pipeline stages as child processes
 * of the same binary, watches them through pidfds, restarts them, drains
 * them on SIGTERM, and gives up (circuit breaker) when a stage keeps dying.
 *
 * Who does what
 *   The supervisor process owns every field of struct dp_sup (single
 *   threaded, one epoll loop over: a signalfd for SIGTERM/SIGINT/SIGHUP,
 *   one pidfd per running stage, one timerfd for backoff, drain deadline
 *   and watchdog pings). Stages are `EXE stage NAME ARGS...` (dp_cmd_stage.c),
 *   started with fork+exec; the child unblocks signals, asks for SIGKILL
 *   when the supervisor dies (PR_SET_PDEATHSIG), pins itself to its cores
 *   and finds the data-segment fd at DP_SUP_DATA_FD.
 *
 * Stage lifecycle (one row per stage)
 *
 *     spawn() --> RUNNING --exit/kill--> (failure recorded)
 *        ^                                   |
 *        |   delay 0 for the first failure,  v
 *        +---- base*2^(n-2) after more --- BACKOFF
 *                                            |
 *          >= breaker_fails in breaker_window: BROKEN -> kill all, exit 1
 *
 *     SIGTERM/SIGINT: DRAINING - SIGTERM to every stage, no restarts, wait
 *     for all to exit or drain_timeout (then SIGKILL); exit 0. A second
 *     SIGTERM/SIGINT: SIGKILL every stage and exit 1 at once.
 *     SIGHUP: forwarded to every running stage (reload).
 *
 * Invariants
 *   1. A stage has a pidfd iff it has a live (unreaped) child pid.
 *   2. Restarts never happen while draining.
 *   3. Every failure inside the breaker window is counted once; the
 *      supervisor never outlives a breaker trip with children alive.
 *
 * Events: when cfg.event_fd >= 0 the supervisor writes one metadata line
 * per event ("spawn NAME PID", "exit NAME PID STATUS", "restart NAME PID
 * LATENCY_NS" = exit -> respawned, "up NAME PID LATENCY_NS" = exit -> the
 * replacement up, "breaker NAME", "drained"): tests and `favo stat` style
 * tools read it; it never carries request content (invariant 5).
 *
 * Stats (cfg.stats): row i of the stage table is stage i: STARTING from
 * spawn until the stage is up, then RUNNING (BACKOFF, FAILED, DRAINING,
 * STOPPED as drawn in shm_stats.h), its pid, cores, restarts, and the time
 * of its last and longest restart, exit -> replacement up. "Up" is
 * reported by the tick hook's caller through dp_sup_stage_up() (favo
 * serve: the stage's up word in the pipe, polled every 1 ms while a
 * replacement comes up); without a tick hook it is the stage's first
 * heartbeat after its spawn. When the segment has a writer slot more than
 * there are stages, the supervisor writes with the last one: the restart
 * histogram (favo_stage_restart_seconds) and the pipeline ring gauges
 * (dp_pipe_stats_tick); and once a second it computes the 10 s and 60 s
 * windows (shm_stats_win_update) from a snapshot.
 */
#ifndef DP_SUP_H
#define DP_SUP_H

#include <sched.h>
#include <stdbool.h>
#include <stdint.h>

#include "shm_stats.h"

#define DP_SUP_MAX_STAGES 8
#define DP_SUP_MAX_ARGS 48
#define DP_SUP_NO_BREAKER 0xffffffffu /* tests that kill stages on purpose */
#define DP_SUP_DATA_FD 3  /* the data segment fd number inside a stage */
#define DP_SUP_MAX_FDS 8

struct dp_sup_stage_cfg {
    const char *name;                   /* registered stage: "sleeper", ... */
    const char *args[DP_SUP_MAX_ARGS];  /* extra argv after NAME, NULL-ended */
    bool pin;                           /* apply cpus with sched_setaffinity */
    cpu_set_t cpus;
    enum shm_stage_kind kind;           /* its row in the stats stage table */
    unsigned index;                     /* worker number within the kind */
    int keep_fds[DP_SUP_MAX_FDS];       /* inherited at the same numbers (their
                                           close-on-exec flag cleared in the child) */
    unsigned nkeep;
};

/* What `favo serve` hooks into the loop (all optional). */
struct dp_sup_hooks {
    void *arg;
    /* a stage got a pid (spawn) or lost it (pid 0: reaped) */
    void (*pid)(void *arg, unsigned stage, pid_t pid);
    /* a drain begins, before the stages get SIGTERM */
    void (*drain)(void *arg);
    /* every tick_ns while running: return 1 once the instance is ready
     * (sd_notify READY=1 is sent then, not at spawn) */
    int (*tick)(void *arg);
    uint64_t tick_ns;
    /* SIGHUP, before it is forwarded to the stages (reload what the
     * supervisor publishes: favo serve's specialist table) */
    void (*reload)(void *arg);
};

struct dp_sup_cfg {
    const char *exe;          /* NULL: /proc/self/exe */
    unsigned nstages;
    struct dp_sup_stage_cfg stages[DP_SUP_MAX_STAGES];
    double drain_timeout_s;   /* 0: default 30 */
    unsigned breaker_fails;   /* 0: default 5; at most 16; DP_SUP_NO_BREAKER: off */
    uint64_t breaker_window_ns; /* 0: default 60 s */
    uint64_t backoff_base_ns; /* 0: default 10 ms */
    uint64_t backoff_max_ns;  /* 0: default 5 s */
    int data_fd;              /* -1: none; else dup2'd to DP_SUP_DATA_FD */
    int event_fd;             /* -1: none; see "Events" above */
    struct shm_stats *stats;  /* NULL: none; else row i = stage i (state,
                               * pid, restarts, cores, started_ns) */
    struct dp_sup_hooks hooks;
};

void dp_sup_cfg_init(struct dp_sup_cfg *cfg);
/* Add a stage; args is NULL-ended or NULL. Returns its index or -E2BIG. */
int dp_sup_add(struct dp_sup_cfg *cfg, const char *name, const char *const *args);

/*
 * Run the supervisor until drained (returns 0), a breaker trip or a setup
 * error (returns 1), or a second stop signal (returns 1). Blocks SIGTERM,
 * SIGINT, SIGHUP and SIGCHLD in the calling thread; call it from a single-
 * threaded process.
 */
int dp_sup_run(const struct dp_sup_cfg *cfg);

/* From the tick hook: the stage of kind/index with pid is up (ready to
 * serve). Ignored unless that pid is the supervisor's current child there
 * and was not up yet. */
void dp_sup_stage_up(enum shm_stage_kind kind, unsigned index, pid_t pid);
/* The running supervisor's stats writer (its own slot), NULL if none. */
struct shm_stats_writer *dp_sup_writer(void);

/*
 * dp_pipe_stats.c - the pipeline seen from the supervisor, called from
 * favo serve's tick: reports stages whose up word is set (dp_sup_stage_up)
 * on every call, and every 100 ms copies each ring's depth and capacity,
 * and the messages it has carried, into the supervisor's stats writer
 * (favo_ring_depth/capacity/messages_total{ring}). Only reads the rings'
 * indices; favo stat itself never attaches the data segment.
 */
struct shm_pipe;
void dp_pipe_stats_tick(const struct shm_pipe *pipe);

#endif /* DP_SUP_H */
