/*
 * eng_pool.c - spin-then-sleep thread pool with a sense-reversing barrier
 * (see eng_pool.h).
 */
#include "eng_pool.h"

#include "favo_base.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#define SPIN_BEFORE_SLEEP 20000 /* idle workers between runs */
/* Barriers and the end of a run: spin this long, then sleep on a futex.
 * Where every thread has its own core the partner arrives within a few
 * microseconds and nobody sleeps; where the engine shares cores with other
 * stages (a preempted partner can be milliseconds away) the waiter gives
 * its core back instead of spinning or sched_yield()ing through its time
 * slice: on a loaded 2-core machine that was over half of a batch-32
 * decode step. */
#define WAIT_SPIN_NS 30000

struct eng_pool {
    unsigned n;
    pthread_t *tids;
    eng_pool_fn fn;
    void *arg;
    /* Run generation: bumped (release) after fn/arg are stored, so a
     * worker that sees the new value (acquire) sees fn/arg too. */
    _Atomic uint32_t gen FAVO_ALIGNED_CL;
    _Atomic uint32_t sleepers;
    _Atomic uint32_t done FAVO_ALIGNED_CL;
    _Atomic uint32_t done_sleeper;         /* the caller sleeps on done */
    _Atomic uint32_t bar_count FAVO_ALIGNED_CL;
    _Atomic uint32_t bar_phase;
    _Atomic uint32_t bar_sleepers;         /* threads asleep at the barrier */
    _Atomic int stop;
};

struct worker_arg {
    struct eng_pool *p;
    unsigned ith;
};

static void futex_wait(_Atomic uint32_t *a, uint32_t val)
{
    syscall(SYS_futex, (uint32_t *)a, FUTEX_WAIT_PRIVATE, val, NULL, NULL, 0);
}

static void futex_wake_all(_Atomic uint32_t *a)
{
    syscall(SYS_futex, (uint32_t *)a, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

/* Wait while *word == val: spin WAIT_SPIN_NS, then futex. The sleeper
 * count is raised before the last check (seq_cst, as the waker's store
 * and load), so a change made after the check finds sleepers > 0 and
 * wakes us (Dekker): no lost wake-up. */
static void wait_change(_Atomic uint32_t *word, uint32_t val, _Atomic uint32_t *sleepers)
{
    uint64_t t0 = 0;
    unsigned spins = 0;

    while (atomic_load_explicit(word, memory_order_acquire) == val) {
        if ((++spins & 63) != 0) {
            favo_cpu_relax();
            continue;
        }
        uint64_t now = favo_now_ns();
        if (!t0) {
            t0 = now;
            continue;
        }
        if (now - t0 < WAIT_SPIN_NS)
            continue;
        atomic_fetch_add_explicit(sleepers, 1, memory_order_seq_cst);
        if (atomic_load_explicit(word, memory_order_seq_cst) == val)
            futex_wait(word, val);
        atomic_fetch_sub_explicit(sleepers, 1, memory_order_relaxed);
    }
}

static void *worker(void *v)
{
    struct worker_arg wa = *(struct worker_arg *)v;
    struct eng_pool *p = wa.p;
    uint32_t seen = 0;

    free(v);
    for (;;) {
        uint32_t g;
        unsigned spins = 0;

        while ((g = atomic_load_explicit(&p->gen, memory_order_acquire)) == seen) {
            if (++spins < SPIN_BEFORE_SLEEP) {
                favo_cpu_relax();
                continue;
            }
            /* Announce the sleep before re-checking gen, so a run that
             * bumps gen after our check sees sleepers > 0 and wakes us. */
            atomic_fetch_add_explicit(&p->sleepers, 1, memory_order_seq_cst);
            if (atomic_load_explicit(&p->gen, memory_order_seq_cst) == seen)
                futex_wait(&p->gen, seen);
            atomic_fetch_sub_explicit(&p->sleepers, 1, memory_order_relaxed);
            spins = 0;
        }
        seen = g;
        if (atomic_load_explicit(&p->stop, memory_order_acquire))
            return NULL;
        p->fn(p->arg, wa.ith, p->n);
        /* release: fn's writes are visible to the caller once it sees done;
         * seq_cst for the sleeper check (wait_change) */
        if (atomic_fetch_add_explicit(&p->done, 1, memory_order_seq_cst) == p->n - 2 &&
            atomic_load_explicit(&p->done_sleeper, memory_order_seq_cst))
            futex_wake_all(&p->done);
    }
}

int eng_pool_init(eng_pool_t **out, unsigned n_threads)
{
    struct eng_pool *p;

    *out = NULL;
    if (!n_threads || n_threads > 1024)
        return -EINVAL;
    p = calloc(1, sizeof(*p));
    if (!p)
        return -ENOMEM;
    p->n = n_threads;
    p->tids = calloc(n_threads, sizeof(*p->tids));
    if (!p->tids) {
        free(p);
        return -ENOMEM;
    }
    for (unsigned i = 1; i < n_threads; i++) {
        struct worker_arg *wa = malloc(sizeof(*wa));
        int rc;

        if (!wa) {
            p->n = i;
            eng_pool_free(p);
            return -ENOMEM;
        }
        wa->p = p;
        wa->ith = i;
        rc = pthread_create(&p->tids[i], NULL, worker, wa);
        if (rc) {
            free(wa);
            p->n = i;
            eng_pool_free(p);
            return -rc;
        }
    }
    *out = p;
    return 0;
}

void eng_pool_free(eng_pool_t *p)
{
    if (!p)
        return;
    atomic_store_explicit(&p->stop, 1, memory_order_release);
    atomic_fetch_add_explicit(&p->gen, 1, memory_order_seq_cst);
    futex_wake_all(&p->gen);
    for (unsigned i = 1; i < p->n; i++)
        pthread_join(p->tids[i], NULL);
    free(p->tids);
    free(p);
}

unsigned eng_pool_threads(const eng_pool_t *p)
{
    return p->n;
}

void eng_pool_run(eng_pool_t *p, eng_pool_fn fn, void *arg)
{
    uint32_t d;

    if (p->n == 1) {
        fn(arg, 0, 1);
        return;
    }
    p->fn = fn;
    p->arg = arg;
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    atomic_fetch_add_explicit(&p->gen, 1, memory_order_seq_cst);
    if (atomic_load_explicit(&p->sleepers, memory_order_seq_cst))
        futex_wake_all(&p->gen);
    fn(arg, 0, p->n);
    /* acquire: pairs with the workers' increments of done (P1); only the
     * last worker wakes a sleeping caller, so each wait is for "the value
     * changed", re-checked until all are done */
    while ((d = atomic_load_explicit(&p->done, memory_order_acquire)) != p->n - 1)
        wait_change(&p->done, d, &p->done_sleeper);
}

void eng_pool_barrier(eng_pool_t *p)
{
    uint32_t phase;

    if (p->n == 1)
        return;
    phase = atomic_load_explicit(&p->bar_phase, memory_order_acquire);
    /* acq_rel: the last arriver sees everyone's writes and publishes them
     * with the phase bump (release); waiters acquire the phase. */
    if (atomic_fetch_add_explicit(&p->bar_count, 1, memory_order_acq_rel) == p->n - 1) {
        atomic_store_explicit(&p->bar_count, 0, memory_order_relaxed);
        atomic_fetch_add_explicit(&p->bar_phase, 1, memory_order_seq_cst);
        if (atomic_load_explicit(&p->bar_sleepers, memory_order_seq_cst))
            futex_wake_all(&p->bar_phase);
        return;
    }
    wait_change(&p->bar_phase, phase, &p->bar_sleepers);
}
