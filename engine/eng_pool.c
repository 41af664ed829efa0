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
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#define SPIN_BEFORE_YIELD 2000
#define SPIN_BEFORE_SLEEP 20000

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
    _Atomic uint32_t bar_count FAVO_ALIGNED_CL;
    _Atomic uint32_t bar_phase;
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
        /* release: fn's writes are visible to the caller once it sees done */
        atomic_fetch_add_explicit(&p->done, 1, memory_order_release);
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
    unsigned spins = 0;

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
    /* acquire: pairs with the workers' release increment of done (P1) */
    while (atomic_load_explicit(&p->done, memory_order_acquire) != p->n - 1) {
        if (++spins < SPIN_BEFORE_YIELD)
            favo_cpu_relax();
        else
            sched_yield();
    }
}

void eng_pool_barrier(eng_pool_t *p)
{
    uint32_t phase;
    unsigned spins = 0;

    if (p->n == 1)
        return;
    phase = atomic_load_explicit(&p->bar_phase, memory_order_acquire);
    /* acq_rel: the last arriver sees everyone's writes and publishes them
     * with the phase bump (release); waiters acquire the phase. */
    if (atomic_fetch_add_explicit(&p->bar_count, 1, memory_order_acq_rel) == p->n - 1) {
        atomic_store_explicit(&p->bar_count, 0, memory_order_relaxed);
        atomic_fetch_add_explicit(&p->bar_phase, 1, memory_order_release);
        return;
    }
    while (atomic_load_explicit(&p->bar_phase, memory_order_acquire) == phase) {
        if (++spins < SPIN_BEFORE_YIELD)
            favo_cpu_relax();
        else
            sched_yield();
    }
}
