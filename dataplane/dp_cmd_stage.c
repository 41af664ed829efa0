/*
 * dp_cmd_stage.c - `favo stage NAME ARGS...`, the hidden entry point the
 * supervisor (dp_sup.c) execs for each pipeline stage. It names the
 * process "favo: NAME" (prctl PR_SET_NAME and an argv rewrite, so ps, top
 * and /proc/PID/cmdline show the stage) and calls the registered stage
 * main. Real stages register here as they land; for now the only one is
 * "sleeper", a stand-in that tests use to exercise the supervisor:
 *
 *   favo stage sleeper [--crash-after MS] [--forbid-after MS]
 *                      [--sandbox PROFILE] [--drain-ms MS]
 *
 *   --crash-after MS   exit 1 after MS milliseconds (0: at once)
 *   --forbid-after MS  after MS, call socket(2) - forbidden by every
 *                      profile but ingress, so the filter kills us (SIGSYS)
 *   --sandbox PROFILE  harden and install that seccomp profile after start-up
 *   --drain-ms MS      on SIGTERM take MS to "finish in-flight work", then
 *                      exit 0 (default 0)
 *   --stats INSTANCE --row N
 *                      attach to the stats segment and heartbeat row N
 * SIGHUP logs a reload line. It wakes every 50 ms (heartbeat) and
 * holds no request content.
 */
#include <errno.h>
#include <stdbool.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "dp.h"
#include "dp_sandbox.h"
#include "dp_stages.h"
#include "favo_base.h"
#include "shm_stats.h"

int dp_cmd_stage(const struct dp_cmd *cmd, int argc, char **argv);

static long sleeper_ms(const char *flag, const char *v)
{
    char *end;
    long x = v ? strtol(v, &end, 10) : -1;

    if (!v || *end || x < 0) {
        fprintf(stderr, "favo stage sleeper: %s needs a count of milliseconds\n", flag);
        exit(2);
    }
    return x;
}

static int stage_sleeper(int argc, char **argv)
{
    long crash = -1, forbid = -1, drain = 0;
    const char *profile = NULL, *inst = NULL;
    long row = 0;
    struct shm_stats stats;
    bool have_stats = false;
    sigset_t set;
    uint64_t t0;

    for (int i = 1; i < argc; i += 2) { /* every flag takes a value */
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--crash-after"))
            crash = sleeper_ms(a, v);
        else if (!strcmp(a, "--forbid-after"))
            forbid = sleeper_ms(a, v);
        else if (!strcmp(a, "--drain-ms"))
            drain = sleeper_ms(a, v);
        else if (!strcmp(a, "--sandbox") && v)
            profile = v;
        else if (!strcmp(a, "--stats") && v)
            inst = v;
        else if (!strcmp(a, "--row"))
            row = sleeper_ms(a, v);
        else {
            fprintf(stderr, "favo stage sleeper: unknown argument '%s'\n", a);
            return 2;
        }
    }
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigprocmask(SIG_BLOCK, &set, NULL);
    if (inst) { /* before the sandbox: shm_open needs openat */
        int rc = shm_stats_open(&stats, inst, true);
        if (rc < 0) {
            favo_err("stats segment of instance %s: %s", inst, strerror(-rc));
            return 1;
        }
        have_stats = true;
    }
    if (profile) {
        if (dp_sandbox_harden() < 0 || dp_sandbox_install(profile) < 0)
            return 1;
    }
    t0 = favo_now_ns();
    for (;;) {
        struct timespec to = { 0, 50 * 1000000L };
        if (have_stats)
            shm_stats_heartbeat(&stats, (unsigned)row);
        int sig = sigtimedwait(&set, NULL, &to);
        uint64_t ms = (favo_now_ns() - t0) / 1000000u;

        if (sig == SIGHUP) {
            favo_info("reload requested");
        } else if (sig == SIGTERM || sig == SIGINT) {
            struct timespec d = { drain / 1000, (drain % 1000) * 1000000L };
            while (nanosleep(&d, &d) < 0 && errno == EINTR)
                ;
            _exit(0); /* _exit: no atexit work under a seccomp filter */
        }
        if (crash >= 0 && ms >= (uint64_t)crash)
            _exit(1);
        if (forbid >= 0 && ms >= (uint64_t)forbid) {
            int fd = socket(AF_INET, SOCK_STREAM, 0);
            favo_err("forbidden call was allowed (fd %d)", fd);
            _exit(3);
        }
    }
}

static const struct {
    const char *name;
    int (*main)(int argc, char **argv);
} stages[] = {
    { "ingress", dp_stage_ingress },
    { "batcher", dp_stage_batcher },
    { "engine", dp_stage_engine },
    { "egress", dp_stage_egress },
    { "sleeper", stage_sleeper },
};

/* Overwrite the whole original argument area (what /proc/PID/cmdline
 * shows) with "favo: NAME". dp_main passes argv + 1, so the area starts at
 * argv[-1], and the kernel laid the strings out back to back. */
static void stage_set_title(int argc, char **argv, const char *title)
{
    char *start = argv[-1], *end = argv[argc - 1] + strlen(argv[argc - 1]);
    size_t room = (size_t)(end - start);

    if (strlen(title) > room)
        return;
    memset(start, 0, room);
    memcpy(start, title, strlen(title));
}

int dp_cmd_stage(const struct dp_cmd *cmd, int argc, char **argv)
{
    char title[64];

    if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        printf("Usage: favo %s %s\n\n%s\nStages:", cmd->name, cmd->usage, cmd->description);
        for (size_t i = 0; i < sizeof(stages) / sizeof(stages[0]); i++)
            printf(" %s", stages[i].name);
        printf("\n");
        return 0;
    }
    if (argc < 2) {
        fprintf(stderr, "favo stage: which stage? (this command is started by 'favo serve')\n");
        return 2;
    }
    for (size_t i = 0; i < sizeof(stages) / sizeof(stages[0]); i++) {
        if (strcmp(stages[i].name, argv[1]))
            continue;
        char **sargv = malloc(sizeof(char *) * (size_t)argc);
        if (!sargv)
            return 1;
        /* Copy the arguments before the title overwrites their storage. */
        for (int k = 1; k < argc; k++) {
            sargv[k - 1] = strdup(argv[k]);
            if (!sargv[k - 1])
                return 1;
        }
        snprintf(title, sizeof(title), "favo: %s", argv[1]);
        prctl(PR_SET_NAME, title, 0, 0, 0); /* kernel keeps 15 chars */
        favo_log_init(argv[1]);
        stage_set_title(argc, argv, title);
        return stages[i].main(argc - 1, sargv);
    }
    fprintf(stderr, "favo stage: unknown stage '%s'\n", argv[1]);
    return 2;
}
