/*
 * dp_sandbox.c - core-dump hardening and per-stage seccomp allow-lists; see
 * dp_sandbox.h.
 */
#include "dp_sandbox.h"

#include <errno.h>
#include <seccomp.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>

#include "favo_base.h"

static const char *const base_calls[] = {
    "read", "write", "readv", "writev", "pread64", "pwrite64", "close", "fstat",
    "newfstatat", "lseek", "fcntl", "dup", "dup3", "mmap", "munmap", "mprotect",
    "madvise", "mremap", "brk", "futex", "clock_gettime", "clock_nanosleep",
    "nanosleep", "gettimeofday", "getpid", "gettid", "tgkill", "rt_sigaction",
    "rt_sigprocmask", "rt_sigreturn", "rt_sigtimedwait", "sigaltstack", "exit",
    "exit_group", "restart_syscall", "epoll_wait", "epoll_pwait", "epoll_ctl",
    "poll", "ppoll", "sched_yield", "sched_getaffinity", "getrandom", "mincore",
    "timerfd_settime", "timerfd_gettime", "eventfd2", "rseq", "membarrier",
    NULL,
};
static const char *const engine_calls[] = {
    "openat", "clone", "clone3", "set_robust_list", "sched_setaffinity", "mlock",
    "munlock", "mlock2", NULL,
};
static const char *const egress_calls[] = {
    "sendmsg", "sendto", "recvmsg", "recvfrom", "shutdown", "io_uring_enter",
    "io_uring_register",
    "getsockopt", "ioctl", /* TCP_INFO and SIOCOUTQ: where a resumed stream goes on */
    NULL,
};
static const char *const ingress_calls[] = {
    "socket", "bind", "listen", "accept4", "setsockopt", "getsockopt",
    "getsockname", "getpeername", "sendmsg", "sendto", "recvmsg", "recvfrom",
    "shutdown", "openat", "io_uring_enter", "io_uring_register", NULL,
};
static const char *const no_calls[] = { NULL };

static const struct {
    const char *name;
    const char *const *extra;
} profiles[] = {
    { "engine", engine_calls },   { "egress", egress_calls },
    { "ingress", ingress_calls }, { "batcher", no_calls },
    { "sleeper", no_calls },
};

int dp_sandbox_harden(void)
{
    struct rlimit rl = { 0, 0 };

    if (setrlimit(RLIMIT_CORE, &rl) < 0)
        return -errno;
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0)
        return -errno;
    return 0;
}

static int allow_list(scmp_filter_ctx ctx, const char *const *names)
{
    for (; *names; names++) {
        int nr = seccomp_syscall_resolve_name(*names);

        if (nr == __NR_SCMP_ERROR)
            continue; /* not on this architecture */
        int rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0);
        if (rc < 0)
            return rc;
    }
    return 0;
}

int dp_sandbox_install(const char *profile)
{
    const char *const *extra = NULL;
    scmp_filter_ctx ctx;
    int rc;

    for (size_t i = 0; i < sizeof(profiles) / sizeof(profiles[0]); i++)
        if (!strcmp(profiles[i].name, profile))
            extra = profiles[i].extra;
    if (!extra)
        return -ENOENT;
    ctx = seccomp_init(SCMP_ACT_KILL_PROCESS);
    if (!ctx)
        return -ENOMEM;
    /* every thread of the stage (the engine's pool started before this) */
    rc = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1);
    if (!rc)
        rc = allow_list(ctx, base_calls);
    if (!rc)
        rc = allow_list(ctx, extra);
    /* kill(pid, 0) only: is a stats writer alive (ingress's /metrics) */
    if (!rc && !strcmp(profile, "ingress"))
        rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(kill), 1, SCMP_A1(SCMP_CMP_EQ, 0));
    if (!rc)
        rc = seccomp_load(ctx); /* sets no_new_privs itself */
    seccomp_release(ctx);
    if (rc)
        favo_err("seccomp profile %s: %s", profile, strerror(-rc));
    return rc;
}
