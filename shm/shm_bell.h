/*
 * shm_bell.h - doorbells: how a consumer that found its rings empty goes to
 * sleep, and how a producer wakes it, across processes.
 *
 * Two kinds, one contract: NO LOST WAKE-UPS (a consumer never sleeps while
 * a message published before it went to sleep waits in its rings), and a
 * producer makes NO SYSCALL while its consumer is awake (ARCHITECTURE.md
 * invariant 8, "quiet hot path"). A bell belongs to one consumer; it may
 * watch several rings (one bell per consumer, rung by each producer).
 *
 * 1. shm_bell_ec - a ConcurrencyKit event count (ck_ec32) in shared memory,
 *    waited on with the raw futex syscall WITHOUT FUTEX_PRIVATE_FLAG, so
 *    the wait and the wake meet across processes (the kernel keys a shared
 *    futex by the page, not by the address). For the batcher and engines.
 *
 *        consumer                                producer
 *        --------                                --------
 *        v = shm_bell_ec_value()   (acquire)     publish (ring p_tail store)
 *        look at the rings                       shm_bell_ec_ring():
 *        if empty:                                 counter += 1, and only if
 *          shm_bell_ec_wait(v):                    the waiter flag (bit 31)
 *            look once more, CAS flag bit          was set: clear it and
 *            into the counter; futex_wait          futex_wake (syscall)
 *            while counter == v|flag
 *
 *    Why nothing is lost: x86-TSO keeps the producer's p_tail store before
 *    its counter increment and the consumer's counter load before its ring
 *    loads. If the consumer's ring check missed a message, its snapshot v
 *    predates that message's increment, so the counter differs from v by
 *    the time it waits: the flag CAS fails (counter changed), or the kernel
 *    refuses to sleep (futex value changed), or the increment comes after
 *    the flag and sees it, and wakes.
 *
 *    Single-producer mode (SHM_BELL_EC_SP) uses ck_ec's non-atomic `incl`,
 *    which is x86-TSO specific: an increment racing the consumer's flag CAS
 *    can overwrite the flag. ck_ec therefore keeps a backstop: after the
 *    flag it spins a few pauses (~1 us), then sleeps with timeouts of 2 ms, 16 ms,
 *    128 ms, ... re-reading the counter each time, and only after 1 s sleeps
 *    without a timeout (by then the in-flight increment has certainly
 *    retired and seen the flag). A wake-up can so be late, rarely, by up to
 *    one backoff step, but never lost. The default is multi-producer mode
 *    (`lock incl`, a few ns more per ring), where the flag cannot be
 *    overwritten: there the backstop is switched off (the wait sleeps until
 *    rung or until the caller's timeout), so a lost wake-up would show as a
 *    timeout in the tests instead of hiding behind a 2 ms retry.
 *
 * 2. shm_bell_efd - an eventfd, for stages whose loop waits in io_uring
 *    (ingress, egress): the consumer's "wait" is a read of the eventfd,
 *    submitted to io_uring or done with shm_bell_efd_wait().
 *
 *        consumer                                producer
 *        --------                                --------
 *        shm_bell_efd_prepare():                 publish (ring p_tail store)
 *          sleep_seq += 1 (odd: "asleep")        shm_bell_efd_ring():
 *          full fence (mfence)                     full fence (mfence)
 *        look at the rings again                   s = sleep_seq
 *        if not empty: shm_bell_efd_cancel()       if s is odd and this
 *        else: read the eventfd (blocks)             producer has not yet
 *              shm_bell_efd_woke()                   written for s:
 *                sleep_seq += 1 (even)               write(eventfd, 1)
 *
 *    Why nothing is lost: this is Dekker's pattern. Each side stores, then
 *    fences, then loads the other side's word, so at least one of them sees
 *    the other's store: the consumer sees the message and cancels, or the
 *    producer sees the odd sleep_seq and writes the eventfd. An eventfd
 *    write is a counter, not an edge: if it lands before the consumer's
 *    read is even submitted, the read returns at once. A token left by a
 *    write for a cancelled sleep only causes one spurious wake-up, after
 *    which the consumer looks at its rings and sleeps again. sleep_seq is
 *    64-bit, so "already written for s" can never alias an old sleep.
 *
 * Usage
 * -----
 *   The bell does not spin before sleeping (a few pauses at most, see
 *   shm_bell.c: the stages share cores); a consumer that wants to spin
 *   does it in its own loop, as below.
 *   futex (batcher, engine), `--poll adaptive`:
 *       for (;;) {
 *           uint32_t seen = shm_bell_ec_value(&bell);   // BEFORE looking
 *           if (drain_my_rings() > 0) continue;         // peek/apply/release
 *           if (spun < SPIN_LIMIT) { spun++; favo_cpu_relax(); continue; }
 *           shm_bell_ec_wait(&bell, seen, timeout_ns);  // sleeps unless rung
 *       }
 *   eventfd in an io_uring loop (ingress, egress): keep one read of
 *   bell.fd armed; before waiting for completions:
 *       shm_bell_efd_prepare(&bell);
 *       if (shm_ring_available(&in) > 0) shm_bell_efd_cancel(&bell);
 *       else io_uring_submit_and_wait(&ring, 1);
 *     and when the armed read completes: shm_bell_efd_woke(&bell), re-arm.
 *   Producers: enqueue (one p_tail store per burst), then ring once.
 *
 * Who writes what (ARCHITECTURE.md invariant 2):
 *
 *   struct shm_bell_ec   magic/generation/flags: shm_bell_ec_init
 *                        ec.counter bits 0-30:   producer(s)
 *                        ec.counter bit 31:      set by the consumer (CAS),
 *                                                cleared by the producer
 *                                                that wakes (ck_ec's design:
 *                                                one word, two writers, all
 *                                                writes atomic RMW except
 *                                                SP mode's incl, see above)
 *   struct shm_bell_efd  magic/generation:       shm_bell_efd_init
 *                        sleep_seq:              consumer only
 *                        (the producer's "written for" mark is process-local)
 *
 * A consumer that dies asleep leaves the flag/odd sleep_seq behind: the
 * producer's next ring makes one spurious futex_wake / eventfd write, and a
 * new consumer's attach resets sleep_seq to even.
 *
 * Error codes: 0 or a count; -EPROTO foreign region (bad magic), -ESTALE
 * other generation, -EINVAL bad arguments, -ETIMEDOUT wait timed out,
 * -errno from the eventfd read/write/poll.
 */
#ifndef SHM_BELL_H
#define SHM_BELL_H

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <unistd.h>

#include <ck_ec.h>
#include <ck_pr.h>

#include "favo_base.h"

#define SHM_BELL_EC_MAGIC 0x3143454f564146ull  /* "FAVOEC1" */
#define SHM_BELL_EFD_MAGIC 0x3146454f564146ull /* "FAVOEF1" */
#define SHM_BELL_EC_SP 1u /* exactly one producer rings this bell */

/* Shared (data segment), 128 bytes: header line, then the counter line. */
struct shm_bell_ec {
    uint64_t magic;
    uint32_t generation;
    uint32_t flags;
    struct ck_ec32 ec FAVO_ALIGNED_CL;
} FAVO_ALIGNED_CL;

struct shm_bell_efd {
    uint64_t magic;
    uint32_t generation;
    uint32_t _reserved;
    uint64_t sleep_seq FAVO_ALIGNED_CL; /* consumer: odd while (about to be) asleep */
} FAVO_ALIGNED_CL;

/* Process-local handles. */
typedef struct shm_bell_ec_t {
    struct shm_bell_ec *hdr;
    struct ck_ec_mode mode; /* ops pointer: process-local */
} shm_bell_ec_t;

typedef struct shm_bell_efd_t {
    struct shm_bell_efd *hdr;
    int fd;            /* the eventfd, this process's descriptor */
    uint64_t rung_for; /* producer: the sleep_seq it last wrote the eventfd for */
} shm_bell_efd_t;

/* Syscalls this process made through bells (process-local, for tests and
 * benchmarks; relaxed atomic counters). */
struct shm_bell_counters {
    uint64_t futex_waits;
    uint64_t futex_wakes;
    uint64_t efd_writes;
    uint64_t efd_reads;
};
void shm_bell_counters_get(struct shm_bell_counters *out);

/* ---- futex event count ------------------------------------------------ */

/* Format a bell (64-byte aligned, sizeof(struct shm_bell_ec) bytes); flags:
 * SHM_BELL_EC_SP or 0. Nobody may be attached. */
int shm_bell_ec_init(struct shm_bell_ec *b, uint32_t generation, unsigned flags);
/* Check magic and generation and fill the handle. */
int shm_bell_ec_attach(shm_bell_ec_t *h, struct shm_bell_ec *b, uint32_t generation);

/* Producer, after publishing: no syscall unless the consumer is asleep. */
static inline void shm_bell_ec_ring(shm_bell_ec_t *h)
{
    /* ck_ec32_inc: a store fence, then the increment (locked in MP mode),
     * so the ring's p_tail store is visible before the counter moves. */
    ck_ec32_inc(&h->hdr->ec, &h->mode);
}

/* Consumer, BEFORE looking at its rings: the snapshot to wait on. */
static inline uint32_t shm_bell_ec_value(const shm_bell_ec_t *h)
{
    return ck_ec32_value(&h->hdr->ec); /* acquire: ring loads come after */
}

/* Consumer, after finding its rings empty: sleep until the counter differs
 * from `seen` or timeout_ns passes (< 0: forever, 0: just check). Returns 0
 * when rung, -ETIMEDOUT. Spurious returns are possible; look again. */
int shm_bell_ec_wait(shm_bell_ec_t *h, uint32_t seen, int64_t timeout_ns);

/* ---- eventfd ---------------------------------------------------------- */

/* A non-blocking, close-on-exec eventfd for a bell (the supervisor clears
 * FD_CLOEXEC on the one it hands to a stage); -errno on failure. */
int shm_bell_efd_open(void);
int shm_bell_efd_init(struct shm_bell_efd *b, uint32_t generation);
/* Fill the handle; the consumer's attach also marks it awake (a previous
 * consumer may have died asleep). `fd` is this process's eventfd. */
int shm_bell_efd_attach(shm_bell_efd_t *h, struct shm_bell_efd *b, uint32_t generation,
                        int fd, bool consumer);

/* Producer, after publishing. Returns 1 when it wrote the eventfd, 0 when
 * the consumer was awake (no syscall), -errno when the write failed. */
int _shm_bell_efd_write(shm_bell_efd_t *h, uint64_t seq);
static inline int shm_bell_efd_ring(shm_bell_efd_t *h)
{
    uint64_t s;

    /* Full fence: our p_tail store is globally visible before we load
     * sleep_seq (store->load, the one order x86 relaxes; Dekker). */
    ck_pr_fence_memory();
    s = ck_pr_load_64(&h->hdr->sleep_seq);
    if (favo_likely(!(s & 1) || s == h->rung_for))
        return 0;
    h->rung_for = s;
    return _shm_bell_efd_write(h, s);
}

/* Consumer: announce the sleep, then LOOK AT THE RINGS AGAIN before blocking
 * on the eventfd; cancel if they hold work, woke after the read returned. */
static inline void shm_bell_efd_prepare(shm_bell_efd_t *h)
{
    ck_pr_store_64(&h->hdr->sleep_seq, ck_pr_load_64(&h->hdr->sleep_seq) | 1);
    /* Full fence: sleep_seq is visible before the ring loads that follow
     * (store->load; pairs with the fence in shm_bell_efd_ring). */
    ck_pr_fence_memory();
}
static inline void shm_bell_efd_cancel(shm_bell_efd_t *h)
{
    uint64_t s = ck_pr_load_64(&h->hdr->sleep_seq);

    if (s & 1)
        ck_pr_store_64(&h->hdr->sleep_seq, s + 1);
}
static inline void shm_bell_efd_woke(shm_bell_efd_t *h) { shm_bell_efd_cancel(h); }

/* Consumer, blocking in one call: prepare, ask ready(arg) (the ring
 * re-check; non-zero = work), else poll + read the eventfd, then woke.
 * Returns 1 when ready() said so, 0 when woken, -ETIMEDOUT after
 * timeout_ms (< 0: forever), -errno. */
int shm_bell_efd_wait(shm_bell_efd_t *h, int (*ready)(void *arg), void *arg, int timeout_ms);

/* Drain a pending token without blocking (after an io_uring read completed
 * the counter is already drained; this is for poll-style loops). Returns 1
 * when a token was consumed, 0 when none, -errno. */
int shm_bell_efd_drain(shm_bell_efd_t *h);

#endif /* SHM_BELL_H */
