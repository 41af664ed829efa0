/*
 * test-engine-pool.c - the engine's thread pool (eng_pool.h): every thread
 * runs every run, barriers separate phases (each thread sees all writes of
 * the phase before), runs do not overlap (P1), and the sleeping paths work:
 * threads that are late by far more than the spin time (a preempted
 * partner) make the others sleep on the futex and be woken, never lose a
 * wake-up, never pass a barrier early. More threads than cores on purpose.
 */
#include "t_util.h"

#include "eng_pool.h"
#include "favo_base.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define CHECK(c) T_CHECK(c, "%s", #c)
#define NT 4
#define PHASES 40

struct job {
    eng_pool_t *p;
    unsigned run;
    _Atomic uint32_t slot[NT][PHASES];
    _Atomic uint32_t entered;
    _Atomic uint32_t bad;
    unsigned late_ith, late_phase; /* this thread sleeps 2 ms before that barrier */
};

static void nap_us(long us)
{
    struct timespec ts = { us / 1000000, (us % 1000000) * 1000 };
    nanosleep(&ts, NULL);
}

static void fn(void *arg, unsigned ith, unsigned nth)
{
    struct job *j = arg;

    atomic_fetch_add(&j->entered, 1);
    for (unsigned ph = 0; ph < PHASES; ph++) {
        atomic_store_explicit(&j->slot[ith][ph], j->run + 1, memory_order_relaxed);
        if (ith == j->late_ith && ph == j->late_phase)
            nap_us(2000); /* far beyond the spin: the others sleep */
        eng_pool_barrier(j->p);
        for (unsigned t = 0; t < nth; t++) /* everyone's write of this phase is in */
            if (atomic_load_explicit(&j->slot[t][ph], memory_order_relaxed) != j->run + 1)
                atomic_fetch_add(&j->bad, 1);
    }
    if (ith == (j->run % nth) && j->run % 5 == 0)
        nap_us(3000); /* the caller or a worker finishes late: the run's end waits */
}

int main(void)
{
    static struct job j;
    eng_pool_t *p;
    unsigned runs = 60;

    CHECK(eng_pool_init(&p, 0) == -EINVAL);
    CHECK(eng_pool_init(&p, NT) == 0);
    CHECK(eng_pool_threads(p) == NT);
    j.p = p;
    uint64_t t0 = favo_now_ns();
    for (unsigned r = 0; r < runs; r++) {
        j.run = r;
        j.late_ith = r % NT;
        j.late_phase = (r * 7) % PHASES;
        atomic_store(&j.entered, 0);
        eng_pool_run(p, fn, &j);
        /* P1: every thread entered and left; every slot holds this run */
        CHECK(atomic_load(&j.entered) == NT);
        for (unsigned t = 0; t < NT; t++)
            for (unsigned ph = 0; ph < PHASES; ph++)
                CHECK(atomic_load(&j.slot[t][ph]) == r + 1);
    }
    CHECK(atomic_load(&j.bad) == 0);
    printf("%u runs of %u barriers on %u threads in %.1f ms\n", runs, PHASES, NT,
           (favo_now_ns() - t0) / 1e6);
    /* Idle workers fall asleep between runs and are woken by the next. */
    nap_us(50000);
    j.run = runs;
    j.late_ith = NT; /* nobody late */
    atomic_store(&j.entered, 0);
    eng_pool_run(p, fn, &j);
    CHECK(atomic_load(&j.entered) == NT && atomic_load(&j.bad) == 0);
    eng_pool_free(p);
    /* One thread: no workers, barriers are no-ops. */
    CHECK(eng_pool_init(&p, 1) == 0);
    memset(&j, 0, sizeof(j));
    j.p = p;
    j.late_ith = 1;
    eng_pool_run(p, fn, &j);
    CHECK(atomic_load(&j.entered) == 1 && atomic_load(&j.bad) == 0);
    eng_pool_free(p);
    return t_failures ? 1 : 0;
}
