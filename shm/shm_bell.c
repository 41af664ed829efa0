/*
 * shm_bell.c - the cold half of shm_bell.h: ck_ec's operating-system ops
 * over the raw, process-shared futex; eventfd open, write, wait and drain.
 */
#include "shm_bell.h"

#include <limits.h>
#include <linux/futex.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <time.h>

_Static_assert(sizeof(struct shm_bell_ec) == 128, "header line + counter line");
_Static_assert(sizeof(struct shm_bell_efd) == 128, "header line + sleep_seq line");

static struct shm_bell_counters bell_counters;

static void count(uint64_t *c)
{
    __atomic_fetch_add(c, 1, __ATOMIC_RELAXED);
}

void shm_bell_counters_get(struct shm_bell_counters *out)
{
    out->futex_waits = __atomic_load_n(&bell_counters.futex_waits, __ATOMIC_RELAXED);
    out->futex_wakes = __atomic_load_n(&bell_counters.futex_wakes, __ATOMIC_RELAXED);
    out->efd_writes = __atomic_load_n(&bell_counters.efd_writes, __ATOMIC_RELAXED);
    out->efd_reads = __atomic_load_n(&bell_counters.efd_reads, __ATOMIC_RELAXED);
}

/* ---- ck_ec ops: CLOCK_MONOTONIC and shared (non-private) futexes ------- */

static int bell_gettime(const struct ck_ec_ops *ops, struct timespec *out)
{
    return clock_gettime(CLOCK_MONOTONIC, out);
}

/* FUTEX_WAIT_BITSET takes an ABSOLUTE CLOCK_MONOTONIC deadline, which is
 * what ck_ec hands us. No FUTEX_PRIVATE_FLAG: the waker is another process
 * mapping the same page. Any return (woken, value changed, timeout, signal)
 * is fine: ck_ec re-reads the counter. */
static void bell_futex_wait(const uint32_t *addr, uint32_t expected,
                            const struct timespec *deadline)
{
    count(&bell_counters.futex_waits);
    syscall(SYS_futex, addr, FUTEX_WAIT_BITSET, expected, deadline, NULL,
            FUTEX_BITSET_MATCH_ANY);
}

static void bell_wait32(const struct ck_ec_wait_state *st, const uint32_t *addr,
                        uint32_t expected, const struct timespec *deadline)
{
    bell_futex_wait(addr, expected, deadline);
}

/* The 64-bit event count waits on its low half (x86-64 is little endian),
 * as ck_ec.h prescribes. Unused by favo today, provided for completeness. */
static void bell_wait64(const struct ck_ec_wait_state *st, const uint64_t *addr,
                        uint64_t expected, const struct timespec *deadline)
{
    bell_futex_wait((const uint32_t *)addr, (uint32_t)expected, deadline);
}

static void bell_wake32(const struct ck_ec_ops *ops, const uint32_t *addr)
{
    count(&bell_counters.futex_wakes);
    syscall(SYS_futex, addr, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

static void bell_wake64(const struct ck_ec_ops *ops, const uint64_t *addr)
{
    bell_wake32(ops, (const uint32_t *)addr);
}

/* ck_ec's defaults (2 ms first sleep, x8 per step, infinite after 1 s of
 * waiting). Only single-producer bells use the steps (see bell_pred).
 *
 * The spin before sleeping: ck_ec spins busy_loop_iter pauses before it
 * sets the flag and as many again after (0 means its default, 100). A
 * pause is ~140 cycles on this hardware, so the default burnt ~10 us of
 * CPU per sleep, and favo's stages share two cores: that was 35-50% of
 * the batcher's and the engine's CPU under wrk (perf, bench-ingress,
 * --backend null). A stage that wants to spin does so in its own loop
 * (`--poll adaptive`); the bell itself only looks again once.
 * Multi-producer bells: 1 iteration (the flag cannot be overwritten, the
 * spin after it serves nothing). Single-producer bells keep a short spin
 * after the flag (BELL_SP_SPIN pauses, ~1 us): it lets an in-flight `incl`
 * that may have overwritten the flag retire, so that the 2 ms backstop
 * (shm_bell.h) stays the rare exception it was. */
#define BELL_SP_SPIN 8u

/* ck_ec's operations with `spin` pauses around setting the flag. */
#define BELL_OPS(spin)                                                                    \
    {                                                                                     \
        .gettime = bell_gettime, .wait32 = bell_wait32, .wait64 = bell_wait64,            \
        .wake32 = bell_wake32, .wake64 = bell_wake64, .busy_loop_iter = (spin),           \
        .initial_wait_ns = 2000000u, .wait_scale_factor = 8, .wait_shift_count = 0,       \
    }
static const struct ck_ec_ops bell_ops = BELL_OPS(1);
static const struct ck_ec_ops bell_ops_sp = BELL_OPS(BELL_SP_SPIN);

#define BELL_TIME_MAX ((time_t)INT64_MAX) /* ck_ec's "no deadline" */

struct bell_wait_arg {
    const struct timespec *deadline; /* the caller's; NULL = forever */
    bool sp;
};

/* Called by ck_ec before each sleep with that sleep's deadline. ck_ec does
 * not clamp its backoff steps to the caller's deadline, so we do (a 100 ms
 * wait must not sleep for a whole step). In multi-producer mode the flag
 * cannot be overwritten, so the backstop steps serve nothing: sleep until
 * the caller's deadline, and a lost wake-up would surface as a timeout
 * (the tests rely on that) instead of being hidden by a 2 ms retry. */
static int bell_pred(const struct ck_ec_wait_state *st, struct timespec *iter_deadline)
{
    const struct bell_wait_arg *a = st->data;
    struct timespec forever = { .tv_sec = BELL_TIME_MAX, .tv_nsec = 0 };
    const struct timespec *dl = a->deadline ? a->deadline : &forever;

    if (!a->sp || iter_deadline->tv_sec > dl->tv_sec ||
        (iter_deadline->tv_sec == dl->tv_sec && iter_deadline->tv_nsec > dl->tv_nsec))
        *iter_deadline = *dl;
    return 0;
}

int shm_bell_ec_init(struct shm_bell_ec *b, uint32_t generation, unsigned flags)
{
    if (!b || ((uintptr_t)b & (FAVO_CACHELINE - 1)) || (flags & ~SHM_BELL_EC_SP))
        return -EINVAL;
    ck_pr_store_64(&b->magic, 0);
    ck_pr_fence_store();
    b->generation = generation;
    b->flags = flags;
    ck_ec32_init(&b->ec, 0);
    /* Release: the fields above are visible before the magic. */
    ck_pr_fence_release();
    ck_pr_store_64(&b->magic, SHM_BELL_EC_MAGIC);
    return 0;
}

int shm_bell_ec_attach(shm_bell_ec_t *h, struct shm_bell_ec *b, uint32_t generation)
{
    if (!h || !b || ((uintptr_t)b & (FAVO_CACHELINE - 1)))
        return -EINVAL;
    if (ck_pr_load_64(&b->magic) != SHM_BELL_EC_MAGIC)
        return -EPROTO;
    ck_pr_fence_acquire(); /* fields after the magic (pairs with init) */
    if (b->generation != generation)
        return -ESTALE;
    if (b->flags & ~SHM_BELL_EC_SP)
        return -EPROTO;
    h->hdr = b;
    h->mode.single_producer = (b->flags & SHM_BELL_EC_SP) != 0;
    h->mode.ops = h->mode.single_producer ? &bell_ops_sp : &bell_ops;
    return 0;
}

int shm_bell_ec_wait(shm_bell_ec_t *h, uint32_t seen, int64_t timeout_ns)
{
    struct timespec dl, to;
    struct bell_wait_arg a = { .deadline = NULL, .sp = h->mode.single_producer };

    if (timeout_ns == 0)
        return shm_bell_ec_value(h) != seen ? 0 : -ETIMEDOUT;
    if (timeout_ns > 0) {
        to.tv_sec = (time_t)(timeout_ns / 1000000000);
        to.tv_nsec = (long)(timeout_ns % 1000000000);
        if (ck_ec_deadline(&dl, &h->mode, &to) != 0)
            return -errno;
        a.deadline = &dl;
    }
    return ck_ec32_wait_pred(&h->hdr->ec, &h->mode, seen, bell_pred, &a, a.deadline) == 0
               ? 0
               : -ETIMEDOUT;
}

/* ---- eventfd ---------------------------------------------------------- */

int shm_bell_efd_open(void)
{
    int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);

    return fd < 0 ? -errno : fd;
}

int shm_bell_efd_init(struct shm_bell_efd *b, uint32_t generation)
{
    if (!b || ((uintptr_t)b & (FAVO_CACHELINE - 1)))
        return -EINVAL;
    ck_pr_store_64(&b->magic, 0);
    ck_pr_fence_store();
    b->generation = generation;
    b->_reserved = 0;
    ck_pr_store_64(&b->sleep_seq, 0);
    ck_pr_fence_release(); /* fields before the magic */
    ck_pr_store_64(&b->magic, SHM_BELL_EFD_MAGIC);
    return 0;
}

int shm_bell_efd_attach(shm_bell_efd_t *h, struct shm_bell_efd *b, uint32_t generation,
                        int fd, bool consumer)
{
    if (!h || !b || ((uintptr_t)b & (FAVO_CACHELINE - 1)) || fd < 0)
        return -EINVAL;
    if (ck_pr_load_64(&b->magic) != SHM_BELL_EFD_MAGIC)
        return -EPROTO;
    ck_pr_fence_acquire();
    if (b->generation != generation)
        return -ESTALE;
    h->hdr = b;
    h->fd = fd;
    h->rung_for = 0; /* sleep_seq 0 is even: never a sleep */
    if (consumer)
        shm_bell_efd_cancel(h); /* a dead predecessor may have left it odd */
    return 0;
}

int _shm_bell_efd_write(shm_bell_efd_t *h, uint64_t seq)
{
    uint64_t one = 1;

    count(&bell_counters.efd_writes);
    for (;;) {
        if (write(h->fd, &one, sizeof(one)) == (ssize_t)sizeof(one))
            return 1;
        if (errno == EINTR)
            continue;
        /* EAGAIN: the counter is at its maximum, so a wake is pending
         * anyway. Anything else is a broken descriptor. */
        return errno == EAGAIN ? 1 : -errno;
    }
}

int shm_bell_efd_drain(shm_bell_efd_t *h)
{
    uint64_t v;

    for (;;) {
        if (read(h->fd, &v, sizeof(v)) == (ssize_t)sizeof(v)) {
            count(&bell_counters.efd_reads);
            return 1;
        }
        if (errno == EINTR)
            continue;
        return errno == EAGAIN ? 0 : -errno;
    }
}

int shm_bell_efd_wait(shm_bell_efd_t *h, int (*ready)(void *arg), void *arg, int timeout_ms)
{
    struct pollfd pfd = { .fd = h->fd, .events = POLLIN };
    int rc;

    shm_bell_efd_prepare(h);
    if (ready && ready(arg)) {
        shm_bell_efd_cancel(h);
        return 1;
    }
    do
        rc = poll(&pfd, 1, timeout_ms);
    while (rc < 0 && errno == EINTR);
    if (rc < 0) {
        rc = -errno;
        shm_bell_efd_woke(h);
        return rc;
    }
    if (rc == 0) {
        shm_bell_efd_woke(h);
        return -ETIMEDOUT;
    }
    rc = shm_bell_efd_drain(h);
    shm_bell_efd_woke(h);
    return rc < 0 ? rc : 0;
}
