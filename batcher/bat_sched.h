/*
 * bat_sched.h - the batcher's scheduler core: continuous (iteration-level)
 * batching over a paged KV pool, admission control, per-tenant fairness,
 * priorities, queue timeouts and cancellation.
 *
 * Every engine step the scheduler writes one plan (bat_plan.h):
 *
 *   1. cancels and queue timeouts are applied (blocks freed);
 *   2. DECODES first: every running sequence whose prompt is fully in the
 *      KV cache gets its next token, highest priority and oldest first;
 *   3. PREFILL CHUNKS next: running sequences still prefilling get a chunk
 *      of what is left of max_batch_tokens;
 *   4. ADMISSION last: waiting requests start (their first prefill chunk
 *      goes into this plan) - preempted ones of a class before new ones,
 *      new ones by deficit round robin (DRR) on prompt tokens across the
 *      tenants' queues of that class. Priority classes are strict: class
 *      0 before 1 before 2 before 3; a class that cannot start its next
 *      request (no blocks) blocks the classes below it this step. Aging
 *      keeps the lower classes from starving: once per step, the oldest
 *      request of a lower class that has waited aging_ns goes first.
 *      A DRR visit lasts at most one step, and a tenant that becomes
 *      active is visited next (new flows first, in arrival order).
 *   0. (before 2) FAIR SHARE: when a waiting tenant's next request cannot
 *      start (every sequence slot or the KV pool taken) while another
 *      tenant runs at least two more sequences, that tenant's newest
 *      sequence is preempted by recompute (back to the head of its own
 *      queue) and the waiting request starts in this step (or, with a
 *      plan in flight holding the victim, in the next: Overlap, inv 10).
 *      A flood thus delays a newcomer's start by a step or two, not until
 *      the flood's sequences finish, and running sets settle at equal
 *      shares.
 *
 * so a long prompt never delays anyone's next token, and no tenant's burst
 * starves another tenant of the same class.
 *
 * KV blocks (bat_kv.h) are allocated as positions are computed. A request
 * starts only when the pool has blocks for its whole known length plus a
 * watermark (so decodes rarely preempt). When a decode or prefill still
 * finds no free block, a victim is PREEMPTED BY RECOMPUTE: the running
 * sequence ranked last (lowest class, newest admission) that is not yet in
 * this plan loses its blocks and goes back to the head of its class's
 * resume queue; it later re-prefills prompt + generated tokens and goes on
 * where it stopped (the engine's counter-based sampling reproduces nothing
 * twice: the next token is new). It keeps its admission rank, so it is not
 * the next victim again. Deadlock freedom: submit rejects a request whose
 * prompt + max_tokens cannot fit in the whole pool (or in max_ctx), the
 * first-ranked running sequence can always preempt every other one, and
 * the scheduler never waits for a block held outside the running set.
 *
 * Request lifecycle (slot states; functions that make each transition):
 *
 *                bat_sched_submit()            bat_sched_step()
 *   FREE ------------------------> WAITING ---------------------> RUNNING
 *    ^      (-EBUSY: queue full,      |   ^   (admitted; blocks as    |
 *    |       503 + Retry-After)       |   |    positions computed)    |
 *    |                                |   +---------------------------+
 *    |                                |       step(): preempted by
 *    |                                |       recompute (blocks freed)
 *    |     step(): FINISH event       |                               |
 *    +---------- TIMEOUT (never ran) -+                               |
 *    +---------- CANCELLED (bat_sched_cancel, applied at next step) --+
 *    +---------- STOP / LENGTH (bat_sched_complete) ------------------+
 *
 * Shared memory: the whole state lives in one arena the caller places
 * (the data segment), holding offsets and indices only (invariant 1), with
 * magic, version and generation, so a restarted batcher re-attaches with
 * bat_sched_attach() and carries on between steps. The process-local
 * handle (struct bat_sched) holds the arena pointer and the stats writer.
 * No malloc, no logging and no syscall (beyond the vDSO clock read by the
 * caller) on the per-step path (invariant 8).
 *
 * Call order, one engine step at a time:
 *
 *   bat_sched_submit()*, bat_sched_cancel()*       (any time)
 *   bat_sched_step(now, plan, events)  -> plan to the engine(s)
 *   ... engine runs the plan ...
 *   bat_sched_complete(plan, results, events)
 *
 * The batcher stage uses the _ob forms (bat_sched_step_ob, _complete_ob),
 * which keep their events in the arena until published (see "outbox"
 * below), and bat_sched_reset_kv / bat_sched_salvage for restarts.
 *
 * Overlap (issue #7): plan N+1 is prepared while step N runs, so the
 * scheduling time hides behind the engine's. step() may be called with one
 * plan in flight (never two: -EBUSY); complete() takes the plans in order.
 *
 *   step(N) -> engine runs N ......... done(N) -> complete(N)
 *        step(N+1) -> engine queues N+1 ....... runs N+1 ... complete(N+1)
 *
 * With N in flight, a sequence's positions and samples in N count as done
 * for planning (slot fl_pos, fl_gen). A sequence decoding in N gets its
 * next decode in N+1 with feed = 1, feed_src = its index in N (bat_plan.h):
 * its input token is what it samples in N, which the engine takes from its
 * own answer to N. Its KV slot for that position is allocated now. A
 * sequence that ends by length at N is not planned in N+1. Prefill chunk
 * continuations and new sequences go in as usual; budgets, ranks and DRR
 * are unchanged. What cannot be decided before N completes is deferred to
 * the plan's completion (drop): a sequence in a plan in flight that ends
 * at complete(N) (STOP; -1 "not computed": preempt or, after BAT_MAX_LOST,
 * ENGINE) or is cancelled gets its TOKEN at once, its result in N+1 is
 * dropped, and it leaves (FINISH, or back to the resume queue) and frees
 * its blocks at complete(N+1). KV victims are chosen among sequences in
 * no plan in flight; bat_sched_ahead_ok() says whether a step now could
 * need another one (KV short for the decodes): the caller then completes
 * N first. A fairness preemption due with N in flight does not wait
 * (inv 10): its victim is the tenant's newest sequence in no plan in
 * flight if there is one (the waiting head starts in N+1, as without
 * overlap); else its newest one in N leaves at complete(N) (drop, back to
 * its flow's head) and the waiting head is reserved to start first in
 * N+2, once the slot and blocks are free. Under a multi-tenant flood
 * (running set full, every step a share to restore) nearly every step is
 * thus planned ahead, at the price of a newcomer's start one step later
 * in step count (not in time: N+1 no longer waits for N).
 *
 * Restart with plans in flight: bat_sched_reset_kv voids both; a crash in
 * step/complete is salvaged as before; a restarted caller re-sends what
 * the engines lack and completes in order (bat_stage.h).
 *
 * Invariants (cited by FAVO_ASSERT as "sched inv N"):
 *   1. Every plan respects max_batch_tokens and max_seqs (plan inv 1).
 *   2. A RUNNING sequence holds exactly bat_kv_blocks_for(n_computed)
 *      blocks after complete(), and the sum over RUNNING sequences equals
 *      bat_kv_used(); WAITING and FREE slots hold none.
 *   3. n_waiting / n_waiting_tokens / n_running equal the numbers of slots
 *      in those states (checked by bat_sched_check).
 *   4. A request handle (slot | generation << 32) names a slot only while
 *      that generation lives; stale handles are ignored.
 *   5. At most two plans are in flight (step - done_step <= 2); step()
 *      runs with at most one in flight; complete() applies the oldest one
 *      (done_step + 1) only, so results are applied in plan order.
 *   6. A sequence held by a plan in flight (plan_step > done_step) is not
 *      preempted, finished or freed, and its blocks are neither freed nor
 *      listed in freed[] (so no block a queued or running step writes is
 *      zeroed or handed to another sequence) until that plan completes.
 *      Its positions and samples in flight are fl_pos / fl_gen; a WAITING
 *      or FREE slot has none.
 *   7. A sequence that must leave while a plan in flight holds it (drop:
 *      STOP, CANCELLED, ENGINE, or preempt) is put in no further plan, its
 *      results in those plans are dropped, and it leaves - FINISH event,
 *      blocks freed, slot reused - at the completion of its last plan.
 *   8. A sequence whose samples in flight reach max_tokens or max_ctx is
 *      not planned again: it finishes by LENGTH at that completion.
 *   9. A feed entry (bat_plan.h) is a single decode of a sequence whose
 *      one sample in flight is in the plan just before (step - 1) at
 *      index feed_src; its position is that sample's.
 *  10. A fairness victim held by the plan in flight (drop, preempt kind)
 *      leaves at that plan's completion, which comes before the next
 *      step(); the flow it made room for (at most FAIR_MAX per step,
 *      kept in the arena with its tenant) starts first in that next
 *      step, ahead of every other admission, if it still waits. A
 *      sequence leaving does not count in its tenant's share, a reserved
 *      flow counts in its tenant's.
 *
 * Errors: -EINVAL (bad config or request), -E2BIG (request can never fit:
 * prompt + max_tokens over max_ctx or over the KV pool; answer 413),
 * -EBUSY (queue full by requests or tokens, or the tenant's own share
 * max_queue_tenant full: answer 503 with Retry-After),
 * -ENOENT (stale handle), -EPROTO/-EBADMSG/-ESTALE (attach: not an arena,
 * inconsistent, or left inside a step by a crash).
 */
#ifndef BAT_SCHED_H
#define BAT_SCHED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bat_kv.h"
#include "bat_plan.h"
#include "eng_sample.h"

#define BAT_PRIO_N 4            /* priority classes, 0 = highest */
#define BAT_SCHED_MAGIC 0x44484353u /* "SCHD" */
#define BAT_SCHED_VERSION 4u
#define BAT_NIL UINT32_MAX
#define BAT_OB_EXTRA 256        /* outbox room for the stage's pushed ERRORs */

struct shm_stats_writer;

struct bat_sched_cfg {
    uint32_t max_batch_tokens;   /* tokens per step; 0: 2048 */
    uint32_t max_seqs;           /* sequences per step (= running max); 0: 256 */
    uint32_t max_queue;          /* waiting requests; 0: 1024 */
    uint32_t max_queue_tokens;   /* waiting prompt tokens; 0: 1 << 20 */
    uint32_t n_blocks;           /* KV pool blocks (required) */
    uint32_t max_ctx;            /* positions per sequence; 0: 8192 */
    uint32_t max_flows;          /* (tenant, class) queues; 0: 256. An idle one is
                                    reused for a new pair; when all are busy the
                                    class's shared overflow queue takes it */
    uint32_t quantum;            /* DRR quantum in tokens; 0: 512 */
    uint32_t kv_watermark;       /* blocks kept free when admitting; 0: n_blocks / 100 */
    uint32_t max_queue_tenant;   /* waiting requests of one (tenant, class) queue, so
                                    one tenant's flood cannot fill the shared queue;
                                    0: max_queue / 4 */
    uint64_t queue_timeout_ns;   /* 0: 30 s */
    uint64_t aging_ns;           /* a request of class > 0 waiting this long is
                                    admitted ahead of the classes above it (one
                                    per step); 0: queue_timeout_ns / 3 */
};

struct bat_req {
    uint32_t tenant;
    uint32_t prio;               /* < BAT_PRIO_N */
    uint32_t n_prompt;           /* >= 1 */
    uint32_t max_tokens;         /* >= 1 */
    uint64_t cell;               /* where the tokens live (shm_cell_ref_t); echoed in
                                    plan and events */
    uint32_t tok_off;            /* the ids' byte offset in the cell; echoed in the plan */
    uint32_t pad_;
    struct eng_sample_params sp;
};

enum bat_ev_kind {
    BAT_EV_TOKEN = 1,
    BAT_EV_FINISH = 2,
    BAT_EV_START = 3,    /* outbox only: first time in a plan (bat_sched_step_ob) */
    BAT_EV_ERROR = 4,    /* outbox only: pushed by the stage (bat_sched_ob_push);
                            reason = HTTP status, token = Retry-After seconds */
};

enum bat_finish {
    BAT_FIN_NONE = 0,
    BAT_FIN_STOP,        /* end-of-generation token */
    BAT_FIN_LENGTH,      /* max_tokens or max_ctx reached */
    BAT_FIN_CANCELLED,   /* bat_sched_cancel: client gone or stop string */
    BAT_FIN_TIMEOUT,     /* waited past queue_timeout: answer 503 */
    BAT_FIN_NO_KV,       /* reserved: a request that cannot fit in the pool even
                            alone is refused by submit (-E2BIG, answer 413) */
    BAT_FIN_ENGINE,      /* the engine answered "not computed" (token < 0)
                            BAT_MAX_LOST times in a row: answer 500 */
};

/* A sampled result with token < 0 means "not computed" (eng_stage.h): the
 * sequence is preempted by recompute; after this many in a row, it ends. */
#define BAT_MAX_LOST 4

struct bat_event {
    uint64_t id;
    uint64_t cell;
    uint16_t kind;       /* enum bat_ev_kind */
    uint16_t reason;     /* enum bat_finish, for FINISH */
    int32_t token;       /* for TOKEN */
    uint32_t n_gen;      /* tokens generated so far */
    uint32_t at;         /* TOKEN: byte offset in the cell of id n_gen - 1
                            (tok_off + 4 * (n_prompt + n_gen - 1)) */
};

struct bat_arena;

/* Process-local handle. */
struct bat_sched {
    struct bat_arena *a;
    struct shm_stats_writer *stats;  /* may be NULL */
    bool no_outcomes;                /* do not count favo_requests_total{status}: in the
                                        serving pipeline egress counts each request once,
                                        with its final HTTP outcome */
};

/* Fill zero fields of cfg with the defaults. -EINVAL if n_blocks is 0. */
int bat_sched_cfg_defaults(struct bat_sched_cfg *cfg);
/* Arena bytes for cfg (defaults applied). */
size_t bat_sched_size(const struct bat_sched_cfg *cfg);
/* Plan bytes for cfg (bat_plan_size of its bounds). */
size_t bat_sched_plan_size(const struct bat_sched_cfg *cfg);
/* Events one step() or complete() may write: size ev arrays with this. */
uint32_t bat_sched_ev_cap(const struct bat_sched *s);

/* Lay out a fresh arena in mem (size bytes, 64-aligned); generation is
 * stamped into it and into every plan. */
int bat_sched_init(struct bat_sched *s, void *mem, size_t size,
                   const struct bat_sched_cfg *cfg, uint64_t generation);
/* Re-attach to an arena a previous batcher left between steps. */
int bat_sched_attach(struct bat_sched *s, void *mem, size_t size);

/* Admit a request (now: monotonic ns). 0 and *id, or -EINVAL, -E2BIG,
 * or -EBUSY with *retry_after_s (1..60, from the current drain rate). */
int bat_sched_submit(struct bat_sched *s, const struct bat_req *r, uint64_t now,
                     uint64_t *id, uint32_t *retry_after_s);
/* Cancel: the sequence leaves at the next step() (a FINISH CANCELLED
 * event), its blocks freed then. 0 or -ENOENT (finished or stale). */
int bat_sched_cancel(struct bat_sched *s, uint64_t id);

/* Build the next plan into p (from bat_plan_init with this cfg's bounds).
 * Writes FINISH events (cancels, timeouts) to ev; returns their count,
 * -EINVAL (ev_cap < bat_sched_ev_cap), or -EBUSY (two plans in flight:
 * complete the older first, sched inv 5). With one plan in flight it
 * plans ahead (Overlap above): call bat_sched_ahead_ok first. */
int bat_sched_step(struct bat_sched *s, uint64_t now, struct bat_plan *p,
                   struct bat_event *ev, uint32_t ev_cap);
/* Apply the engine's results for plan p (one per plan sequence), the
 * oldest plan in flight. Writes TOKEN and FINISH events; returns their
 * count, 0 for a plan already applied (or voided), or -EINVAL. */
int bat_sched_complete(struct bat_sched *s, const struct bat_plan *p,
                       const struct bat_result *res, uint64_t now,
                       struct bat_event *ev, uint32_t ev_cap);

struct bat_sched_info {
    uint32_t n_waiting, n_running, n_waiting_tokens;
    uint32_t kv_used, kv_total;
    uint64_t step, n_preempt, n_admitted, n_finished;
    uint64_t n_overflow;   /* submits queued in a class's shared overflow flow
                              because max_flows tenants were all waiting */
    uint64_t n_aged;       /* requests started ahead of higher classes by aging */
    double drain_tok_per_s;
    uint64_t done_step;    /* last step complete() applied; step - done_step
                              plans are in flight (0, 1 or 2) */
    uint32_t n_outbox;     /* outbox events not yet published */
    uint64_t n_ahead;      /* steps planned with a plan in flight (overlap) */
    uint64_t n_fair_defer; /* fairness victims in a plan in flight that left at
                              its completion (sched inv 10) */
};
void bat_sched_info(const struct bat_sched *s, struct bat_sched_info *out);
/*
 * The outbox: events that must reach egress even if the batcher dies
 * between computing them and publishing them. The _ob variants of step()
 * and complete() write their events into the arena itself (START events
 * too, for sequences in a plan for the first time), inside the same
 * critical section as the state change; the stage publishes them in order
 * and pops them. A restarted batcher finds the unpublished rest there.
 *
 *   step_ob / complete_ob / ob_push           ob_peek ... publish ... ob_pop
 *   (write [ob_n ..), then move ob_n)  ---->  (move ob_next when published)
 *
 * step_ob and complete_ob need an empty outbox (-EAGAIN otherwise: publish
 * first - this is how a full event ring stops the scheduler). complete
 * (both forms) of the plan it already applied returns 0 and does nothing:
 * a done message replayed after a restart is harmless.
 */
int bat_sched_step_ob(struct bat_sched *s, uint64_t now, struct bat_plan *p);
int bat_sched_complete_ob(struct bat_sched *s, const struct bat_plan *p,
                          const struct bat_result *res, uint64_t now);
/* Append an event (the stage's ERRORs): 0 or -ENOSPC. */
int bat_sched_ob_push(struct bat_sched *s, const struct bat_event *e);
/* The pending events, oldest first; *n of them. */
const struct bat_event *bat_sched_ob_peek(const struct bat_sched *s, uint32_t *n);
/* The oldest n pending events are published. */
void bat_sched_ob_pop(struct bat_sched *s, uint32_t n);

/* Start over from an arena that a crash left inside step() or complete()
 * (bat_sched_attach said -ESTALE): its requests cannot be trusted, so the
 * caller answers them itself (the batcher stage finds them by their cells)
 * and the arena is laid out afresh with cfg. The step counter goes on past
 * the dead one's (a done message for its last plan is a replay, never a new
 * plan's), and the first plan lists every KV block in freed[], so the
 * engines zero the whole pool (invariant 5). 0, -EPROTO (not an arena: use
 * bat_sched_init) or bat_sched_init's errors. */
int bat_sched_salvage(struct bat_sched *s, void *mem, size_t size,
                      const struct bat_sched_cfg *cfg, uint64_t generation);
/* Test seam (STYLE.md 12): abort() inside the step() that would write plan
 * `step`, after admission, with the arena marked busy. 0: off. */
void bat_sched_test_abort_in_step(uint64_t step);

/* Overlap: may step() be called now, with one plan in flight, without
 * needing a sequence that plan holds (sched inv 6)? False when none is in
 * flight, or when the decodes it would plan lack KV blocks (watermark
 * kept): complete the plan first. A fairness preemption due is no reason
 * to wait (sched inv 10). */
bool bat_sched_ahead_ok(const struct bat_sched *s);

/* The engines lost their KV cache (an engine rank restarted): the plans in
 * flight, if any, are void (complete() of it becomes a no-op, so a result
 * computed without the KV is never applied), and every running sequence is
 * preempted by recompute - blocks freed and listed in the next plan's
 * freed[], back to its class's resume queue in rank order, to re-prefill
 * prompt + generated ids. Returns how many were preempted. */
int bat_sched_reset_kv(struct bat_sched *s);

/* The live request (waiting or running) whose cell is `cell`: 0 and *id,
 * or -ENOENT. O(slots): for cancels by cell and for replayed submits. */
int bat_sched_find(const struct bat_sched *s, uint64_t cell, uint64_t *id);
/* Words in the arena for the caller's own state that must survive its
 * restart with the arena (zero in a fresh or salvaged one). The batcher
 * stage keeps there the engine incarnation (pid) each rank's KV belongs to. */
#define BAT_SCHED_USER_WORDS 16
uint64_t *bat_sched_user(struct bat_sched *s);
/* Retry-After seconds (1..60) for a 503 now, from the drain rate. */
uint32_t bat_sched_retry_after(const struct bat_sched *s);
/* The arena's configuration (defaults applied). */
void bat_sched_cfg_get(const struct bat_sched *s, struct bat_sched_cfg *out);

/* Full consistency check (sched inv 2, 3; kv inv 1), O(slots + blocks):
 * 0 or -EBADMSG. For tests and attach. */
int bat_sched_check(const struct bat_sched *s);

#endif /* BAT_SCHED_H */
