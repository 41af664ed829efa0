/*
 * bat_stage.h - the batcher stage process: `favo stage batcher` runs
 * bat_stage_run() after the wrapper attached the data segment and the pipe
 * (shm_pipe.h). It is the only writer of the scheduler arena (bat_sched.h),
 * the plan slots, the generated ids in request cells and the event ring.
 *
 *   ingress w --req[w]--> +---------------------+ --plan[r]--> engine r
 *   (SUBMIT, CANCEL)      |  drain req, ctl     |  (slot = step % 2, the
 *   egress ----ctl------> |  step -> plan slots | <--done----  same plan
 *   (cancel)              |  complete -> outbox |  (rank 0)    for every r)
 *                         |  outbox -> ev ring  | --ev--> egress
 *                         +---------------------+  (START, TOKENS, FINISH, ERROR)
 *
 * One loop; up to two plans in flight (overlap, bat_sched.h "Overlap":
 * plan N+1 is made and sent while the engines run N, so the scheduling
 * time hides behind the step; cfg.no_overlap turns it off - one plan in
 * flight, done(N) before N+1 is planned):
 *
 *   1. publish the outbox (below): write each TOKEN's id into its cell, give
 *      the cell to egress for FINISH/ERROR, enqueue shm_ev (egress's bell
 *      is rung at 6). A full ev ring stops here: nothing is
 *      dropped, and step/complete wait until the outbox is empty.
 *   2. done ring (only with an empty outbox): bat_sched_complete_ob with the
 *      results of the plan's slot, then release the message.
 *   3. req rings: SUBMIT is validated (magic, cell live and owned by the
 *      batcher, tok_off/ntok/max_tokens inside the cell before resp_off,
 *      resp_off 64-aligned with room for the shm_req copy) and submitted;
 *      refusals become ERROR events in the outbox (400 -EINVAL, 413 -E2BIG,
 *      503 + Retry-After -EBUSY). A descriptor whose cell is ours but whose
 *      resp_off is unusable cannot be answered by egress: the cell is freed
 *      (scrubbed, return ring SHM_PIPE_RET_BATCHER) and a warning logged.
 *      CANCEL finds the request by cell and cancels it (unknown: ignored).
 *   4. ctl ring: egress's cancels, by handle (by cell when stale).
 *   5. work, and either no plan in flight, or (overlap) one that every
 *      rank has been sent and bat_sched_ahead_ok; the next slot named by
 *      no unreleased plan message (rank 0's answered ones excepted, see
 *      slot_free): bat_sched_step_ob into rank 0's slot, copied to the
 *      other ranks, shm_plan_msg on each plan ring (in step order), engine
 *      bells rung. A plan with no sequence and no freed block is completed
 *      without the engines once it is the oldest in flight; one with only
 *      freed blocks goes to the engines (they zero them).
 *   6. publish again, and when that burst emptied the outbox, step 5 once
 *      more right away; only THEN ring egress's bell for the iteration's
 *      events (one ring per iteration, none while egress is awake). Why:
 *      a completion's events must be out before the next step is planned,
 *      and waking egress - which runs at SCHED_FIFO when stages share
 *      cores - on our core preempts us for its whole burst while the
 *      engine waits for that plan: bench-ingress, engine idle gap between
 *      plans (its drain log line) mean 72-109 -> 21-59 us, p99 <= 1024 ->
 *      <= 256-512 us (three pairs, load 4.3-4.9).
 *
 * Event mapping (bat_event -> shm_ev): START -> START (t_ns = publication
 * time); TOKEN -> TOKENS (n_gen = total; the id is written first, pipe
 * inv 2); FINISH STOP/LENGTH/CANCELLED -> FINISH; FINISH TIMEOUT -> ERROR
 * 503 + Retry-After; ERROR (pushed) -> ERROR. STOP's id (the EOG token) is
 * the last id counted in n_gen.
 *
 * Waiting (cfg.poll): 0 sleeps on the batcher bell (50 ms timeout, 1 ms
 * while the outbox waits for room in the ev ring, which egress does not
 * signal); 1 spins ~50 us first; 2 never sleeps. Before sleeping: stats
 * heartbeat and flush.
 *
 * Drain: after *stop or pipe draining, keep serving until every ingress
 * worker is down (shm_pipe_stage_up false) and its req ring is empty, the
 * scheduler holds no request, no plan is in flight and the outbox is
 * empty; then clear the up word and return 0.
 *
 * Crash and restart (everything needed lives in the data segment):
 *   - The arena is re-attached (bat_sched_attach) and the loop carries on.
 *   - Events computed but not published are in the outbox; the last ev
 *     ring slot tells which of them the dead batcher already enqueued, so
 *     none is sent twice (publish keeps one ev slot free so that slot
 *     always holds the last COMMITTED event, never a cut reservation). A FINISH whose cell was given but whose event was
 *     not enqueued is sent (give says -EPERM: egress owns it already); a
 *     FINISH whose cell egress already freed (-ESTALE) is dropped.
 *   - Plans in flight (arena done_step < step, one or two) stay in their
 *     slots (slots already laid out are never re-formatted); the last
 *     message on each plan ring says which reached that rank; the ranks
 *     that lack them get fresh copies of rank 0's slots and the messages,
 *     in step order, and their done messages are awaited and applied in
 *     order (a done for any other step is a replay or ignored).
 *   - done messages are released after complete_ob; a replayed one (the
 *     step already applied) is a no-op.
 *   - A replayed SUBMIT (dead between submit and release) is recognised:
 *     its cell is already in the scheduler, has an ERROR pending in the
 *     outbox, or is no longer owned by the batcher.
 *   - An ENGINE restart (any change of a rank's up word: down, another
 *     pid, or up after down - an incarnation we never saw may have run our
 *     plans) loses the KV cache; checked every loop and again after each
 *     done message is peeked, before it is applied: bat_sched_reset_kv voids the plan in flight (its
 *     done message, from either incarnation, is then a replay) and every
 *     running sequence re-prefills prompt + generated ids. A voided plan
 *     that had not reached every rank is still sent to the rest (results
 *     ignored), so all ranks see the same plans in order. This needs the
 *     engine to set its up word before it takes its first plan. The pid
 *     each rank's KV belongs to is kept in the arena (bat_sched_user), so
 *     an engine that restarted while the batcher was down is noticed too.
 *     A sampled result with token -1 ("not computed", eng_stage.h) is
 *     preempted by recompute (bat_sched_complete).
 *   - Cost today: re-attach and a scan of the arena (bat_sched_check,
 *     O(slots + blocks)); no request is lost.
 *   - A crash INSIDE bat_sched_step/complete (arena marked busy: attach
 *     says -ESTALE) is survived, not repaired: bat_sched_salvage lays out a
 *     fresh arena (step counter continued, every KV block zeroed by the
 *     first plan), and every cell the batcher owns that holds its shm_req
 *     copy gets ERROR 503 + Retry-After (n_gen 0: egress ends a stream it
 *     had started with that error); other cells we own are freed. Cost: a
 *     scan of the cell descriptors and of each held cell (64-byte steps).
 *
 * Response cache (bat_cache.h; the pipe's cache region, cfg.cache_bytes
 * from serve's --cache-mb; none: off). Formatted at the first start
 * (bat_cache_init), re-attached after a restart (bat_cache_attach; a
 * region a crash left inconsistent is scrubbed and laid out afresh).
 *   - SUBMIT with shm_req.cache_ttl > 0 and a deterministic request
 *     (temperature 0, or a seed given): key = SHA-256 over the tenant
 *     (number and name), the specialist name (or the model id), the
 *     prompt ids in the cell, every generation parameter, max_tokens and
 *     the stop strings' bytes. A hit writes the cached generated ids into
 *     the cell and pushes START, TOKEN (n_gen = all of them) and FINISH
 *     (the cached reason) into the outbox: egress answers it as any other
 *     request, the engine never sees it. A miss is submitted and
 *     remembered (cell -> key, process-local table): when its FINISH is
 *     published with STOP or LENGTH, its ids go into the cache before the
 *     cell is given to egress. CANCELLED (a client gone, a stop string
 *     matched in egress) and errors are never cached.
 *   - Hits and misses are counted (favo_response_cache_{hits,misses}_total);
 *     entries expire once a second from the loop (scrubbed); nothing of a
 *     key or value is logged.
 *   - A batcher restart forgets the misses in flight (their answers are
 *     not cached); the cached entries survive it. A hit's three events
 *     are pushed one by one: the arena's user words (bat_sched_user 14,
 *     15) name the hit and its ids' extent first, so a restart between
 *     them adds the missing ones (hit_resume, before anything is
 *     published) and the replayed SUBMIT finds its FINISH pending.
 * *
 * Errors: bat_stage_run returns 0 after a drain, -EINVAL for a bad cfg or
 * a pipe whose sizes do not fit the scheduler, or the attach errors.
 * Metadata only in logs (invariant 5): counts, steps, errno values.
 */
#ifndef BAT_STAGE_H
#define BAT_STAGE_H

#include "bat_sched.h"
#include "shm_pipe.h"

struct shm_stats;
struct shm_stats_writer;

struct bat_stage_cfg {
    const struct shm_pipe *pipe;     /* attached by the caller */
    /* Called once, right before the stage reports itself up: start-up is
     * over (files opened, memory mapped, threads started). favo serve
     * installs the stage's seccomp profile here. NULL: nothing. */
    void (*on_ready)(void *arg);
    void *on_ready_arg;
    struct bat_sched_cfg sched;      /* used when the arena is fresh */
    int egr_bell_efd;                /* egress's eventfd: we ring it */
    int poll;                        /* 0 block, 1 adaptive, 2 spin */
    int no_overlap;                  /* 1: plan N+1 only after done(N) (for comparison:
                                        favo serve --no-overlap / FAVO_NO_OVERLAP=1) */
    const volatile int *stop;        /* non-zero: drain (may be NULL) */
    struct shm_stats *stats;         /* may be NULL (tests) */
    struct shm_stats_writer *stats_w;/* may be NULL */
    unsigned stats_row;              /* our row in the stage table */
};

int bat_stage_run(const struct bat_stage_cfg *cfg);

#endif /* BAT_STAGE_H */
