/*
 * dp_sandbox.h - what a stage may do once it has started.
 *
 * Content stages (every stage that touches prompts or tokens) call
 * dp_sandbox_harden() first thing: no core dumps (RLIMIT_CORE 0) and not
 * dumpable (PR_SET_DUMPABLE 0, which also stops same-uid ptrace and
 * /proc/PID/mem reads) - request content must never reach a disk
 * (ARCHITECTURE invariant 5).
 *
 * After start-up (files opened, sockets bound, memory mapped) a stage calls
 * dp_sandbox_install(profile): a seccomp allow-list (libseccomp), default
 * action SCMP_ACT_KILL_PROCESS so a forbidden call ends the stage with
 * SIGSYS and the supervisor restarts it. Profiles:
 *   engine  - base + openat/pread (model files), threads, mlock; NO network
 *   egress  - base + send/recv on inherited sockets; NO open/openat
 *   ingress - base + socket/bind/accept/send/recv + openat (keys reload)
 *   batcher - base only
 *   sleeper - base only (the test stand-in stage)
 * "base" is memory, time, futex, signals, epoll/poll, read/write/close on
 * fds already held, and exit. The lists are a starting point written before
 * the real stages exist; each stage's author tightens its own.
 */
#ifndef DP_SANDBOX_H
#define DP_SANDBOX_H

int dp_sandbox_harden(void);
/* 0, -ENOENT for an unknown profile, or -errno from libseccomp. */
int dp_sandbox_install(const char *profile);

#endif /* DP_SANDBOX_H */
