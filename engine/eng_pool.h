/*
 * eng_pool.h - the engine's thread pool: n threads (the caller is thread 0)
 * run one function together, meeting at barriers between the phases of a
 * forward pass. Modelled on ggml's compute threads.
 *
 *   caller:  eng_pool_run(p, fn, arg) --wake--> workers 1..n-1
 *            fn(arg, 0, n)                      fn(arg, ith, n)
 *              ... eng_pool_barrier(p) ...        ... eng_pool_barrier(p) ...
 *            wait for all workers <--done------ back to waiting
 *
 * Waiting: at a barrier and at the end of a run, spin ~30 us, then sleep
 * on a futex (woken by the last arriver only when someone sleeps); idle
 * workers between runs spin a little longer, then sleep on the run
 * doorbell, woken by the next run. No malloc and no logging per run
 * (invariant 8); no syscall while every thread has its own core.
 *
 * Invariants:
 *   P1. Runs do not overlap: eng_pool_run is called by one thread at a time
 *       and returns only after every thread has left fn.
 *   P2. Every thread calls eng_pool_barrier the same number of times in a
 *       run (fn's control flow must not depend on ith around barriers).
 */
#ifndef ENG_POOL_H
#define ENG_POOL_H

typedef void (*eng_pool_fn)(void *arg, unsigned ith, unsigned nth);
typedef struct eng_pool eng_pool_t;

/* n_threads >= 1 (1: no worker threads). 0, -EINVAL, -ENOMEM or -errno. */
int eng_pool_init(eng_pool_t **out, unsigned n_threads);
void eng_pool_free(eng_pool_t *p);
unsigned eng_pool_threads(const eng_pool_t *p);
/* Run fn on every thread; returns when all have finished (P1). */
void eng_pool_run(eng_pool_t *p, eng_pool_fn fn, void *arg);
/* Inside fn: wait until all threads reach this barrier (P2). */
void eng_pool_barrier(eng_pool_t *p);

#endif /* ENG_POOL_H */
