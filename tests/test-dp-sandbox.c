/*
 * test-dp-sandbox.c - per-stage seccomp profiles (dataplane/dp_sandbox.h):
 * a stand-in stage under the engine profile that calls socket(2) is killed
 * with SIGSYS and the supervisor restarts it; under the egress profile the
 * stage's normal loop runs untouched; dp_sandbox_harden makes a process
 * non-dumpable with RLIMIT_CORE 0; unknown profiles are refused.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "dp_sandbox.h"
#include "dp_sup.h"
#include "favo_base.h"
#include "t_util.h"

#define CHECK(c) T_REQUIRE(c)

/* Run a supervisor over one sleeper with args for ms; return its event log. */
static char *supervise(const char *bin, const char *const *args, int ms)
{
    struct dp_sup_cfg cfg;
    static char log[8192];
    size_t len = 0;
    int p[2], st;

    CHECK(pipe2(p, O_CLOEXEC) == 0);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        close(p[0]);
        dp_sup_cfg_init(&cfg);
        cfg.exe = bin;
        cfg.event_fd = p[1];
        cfg.breaker_fails = DP_SUP_NO_BREAKER;
        if (dp_sup_add(&cfg, "sleeper", args) < 0)
            _exit(98);
        _exit(dp_sup_run(&cfg));
    }
    close(p[1]);
    uint64_t end = favo_now_ns() + (uint64_t)ms * 1000000u;
    for (uint64_t now; (now = favo_now_ns()) < end;) {
        struct pollfd pf = { .fd = p[0], .events = POLLIN };
        if (poll(&pf, 1, (int)((end - now) / 1000000u) + 1) <= 0)
            continue;
        ssize_t k = read(p[0], log + len, sizeof(log) - 1 - len);
        if (k <= 0)
            break;
        len += (size_t)k;
    }
    CHECK(kill(pid, SIGTERM) == 0);
    CHECK(waitpid(pid, &st, 0) == pid);
    ssize_t k;
    while ((k = read(p[0], log + len, sizeof(log) - 1 - len)) > 0)
        len += (size_t)k;
    close(p[0]);
    log[len] = 0;
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    return log;
}

int main(void)
{
    const char *bin = getenv("FAVO_BIN");

    if (!bin || access(bin, X_OK))
        t_skip("FAVO_BIN not set");

    CHECK(dp_sandbox_install("no-such-stage") == -ENOENT);

    /* harden in a child: we need to stay dumpable ourselves. */
    pid_t c = fork();
    CHECK(c >= 0);
    if (c == 0) {
        struct rlimit rl;
        if (dp_sandbox_harden() < 0 || prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) != 0 ||
            getrlimit(RLIMIT_CORE, &rl) < 0 || rl.rlim_cur != 0 || rl.rlim_max != 0)
            _exit(1);
        _exit(0);
    }
    int st;
    CHECK(waitpid(c, &st, 0) == c && WIFEXITED(st) && WEXITSTATUS(st) == 0);

    const char *bad[] = { "--sandbox", "engine", "--forbid-after", "100", NULL };
    char *log = supervise(bin, bad, 1500);
    printf("engine profile + socket():\n%s", log);
    CHECK(strstr(log, "exit sleeper") && strstr(log, "signal=SYS"));
    CHECK(strstr(log, "restart sleeper"));
    CHECK(!strstr(log, "exit=3")); /* the forbidden call never succeeded */

    const char *good[] = { "--sandbox", "egress", NULL };
    log = supervise(bin, good, 600);
    printf("egress profile, normal loop:\n%s", log);
    CHECK(strstr(log, "spawn sleeper"));
    CHECK(!strstr(log, "signal=SYS") && !strstr(log, "restart"));
    /* The drain (SIGTERM -> nanosleep -> _exit) also ran under the filter. */
    CHECK(strstr(log, "exit sleeper") && strstr(log, "exit=0") && strstr(log, "drained"));
    printf("ok\n");
    return 0;
}
