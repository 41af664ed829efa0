/*
 * bat_sched.c - the scheduler (design in bat_sched.h).
 *
 * Arena layout (offsets from the arena base, each 64-aligned):
 *
 *   struct bat_arena      header, counters, per-class DRR cursors and
 *                         resume queues, cancel list length
 *   slots[n_slots]        struct bat_slot, one per request (max_queue +
 *                         max_seqs); free ones chained through .next
 *   flows[max_flows]      (tenant, class) FIFO queues; the first
 *                         BAT_PRIO_N are shared overflow flows used when
 *                         the table is full
 *   hash[hcap]            linear probing (tenant, class) -> flow; an idle
 *                         flow is reclaimed when the table is full
 *   running[max_seqs]     running slot ids, ordered by (class, admission)
 *   tables[max_seqs][mb]  block table of each running sequence
 *   tfree[max_seqs]       free table indices (stack)
 *   cancels[n_slots]      slots flagged by bat_sched_cancel
 *   pending[n_blocks]     blocks freed since the last plan (to zero)
 *   kv                    struct bat_kv
 *   outbox[ob_cap]        struct bat_event: the events of the last
 *                         step/complete (the _ob variants) and the stage's
 *                         pushed ERRORs, until the stage has published them
 */
#include "bat_sched.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "favo_base.h"
#include "shm_stats.h"

enum { ST_FREE = 0, ST_WAITING = 1, ST_RUNNING = 2 };

struct bat_slot {
    uint32_t gen;
    uint8_t state, prio, cancel, started;
    uint8_t in_resume, n_lost;     /* n_lost: results in a row not computed */
    uint8_t drop;                  /* overlap: leaves once no plan in flight holds it
                                      (enum bat_finish, DROP_PREEMPT or DROP_FAIR) */
    uint8_t fl_gen;                /* sampling entries in plans in flight */
    uint32_t tenant, flow, tok_off;
    uint64_t cell;
    uint32_t prev, next;           /* queue links (free list: next) */
    uint32_t n_prompt, n_gen, n_computed, max_tokens;
    uint32_t table, n_blocks;      /* running: table index, blocks held */
    uint64_t enq_ns, admit_seq, plan_step; /* plan_step: last plan holding it */
    uint32_t fl_pos;               /* positions in plans in flight (not completed) */
    uint32_t fl_idx;               /* its index in plan plan_step */
    struct eng_sample_params sp;
};

#define DROP_PREEMPT 0xff          /* bat_slot.drop: preempt by recompute */
#define DROP_FAIR 0xfe             /* ... for a waiting tenant's share (to its own flow) */
#define FAIR_MAX 8                 /* fairness preemptions (and reserved starts) per step */

static inline bool drop_preempts(uint8_t why)
{
    return why == DROP_PREEMPT || why == DROP_FAIR;
}

struct bat_flow {
    uint32_t tenant;
    uint8_t prio, used, active, pad_;
    uint32_t head, tail, n;
    uint32_t rr_prev, rr_next;
    int64_t deficit;
};

struct bat_arena {
    uint32_t magic, version;
    uint64_t generation;
    uint64_t size;
    struct bat_sched_cfg cfg;
    uint32_t n_slots, mbps, hcap, busy;
    uint32_t off_slots, off_flows, off_hash, off_running, off_tables, off_tfree;
    uint32_t off_cancels, off_pending, off_kv, pad_;
    uint32_t free_head, n_free_slots, n_tfree, n_flows;
    uint32_t n_waiting, n_waiting_tokens, n_running, n_cancels, n_pending;
    uint32_t rr_cur[BAT_PRIO_N];
    uint32_t rr_new[BAT_PRIO_N];   /* last of the new flows [rr_cur .. rr_new] not yet
                                      passed by the cursor, or NIL (rr_insert) */
    uint32_t res_head[BAT_PRIO_N], res_tail[BAT_PRIO_N];
    uint64_t step, admit_seq, n_preempt, n_admitted, n_finished;
    uint64_t last_complete_ns;
    double drain_tok_per_s;
    uint32_t flow_scan;            /* where flow_reclaim looks next */
    uint32_t pad2_;
    uint64_t n_overflow;           /* submits that found every flow busy */
    uint64_t n_aged;               /* requests started by aging */
    uint64_t done_step;            /* last step complete() applied: a replay is a no-op */
    uint32_t ob_n, ob_next;        /* outbox: [ob_next, ob_n) not yet published */
    uint32_t ob_cap, off_outbox;
    uint32_t n_drop, pad3_;        /* running slots with drop set */
    /* Fairness with a plan in flight (sched inv 10): flows whose head starts
     * first in the next step, their victims leaving at their plan's
     * completion (DROP_FAIR). fair_next_tenant: the tenant the flow had. */
    uint32_t n_fair_next, pad4_;
    uint32_t fair_next[FAIR_MAX], fair_next_tenant[FAIR_MAX];
    uint64_t n_ahead;              /* steps planned with a plan in flight */
    uint64_t n_fair_defer;         /* fairness victims deferred to their plan's completion */
    uint64_t user[BAT_SCHED_USER_WORDS]; /* the caller's restart state (bat_sched_user) */
};

#define A_ARR(a, T, off) ((T *)((char *)(a) + (a)->off))

static inline struct bat_slot *slots(struct bat_arena *a) { return A_ARR(a, struct bat_slot, off_slots); }
static inline struct bat_flow *flows(struct bat_arena *a) { return A_ARR(a, struct bat_flow, off_flows); }
static inline uint32_t *hasht(struct bat_arena *a) { return A_ARR(a, uint32_t, off_hash); }
static inline uint32_t *running(struct bat_arena *a) { return A_ARR(a, uint32_t, off_running); }
static inline uint32_t *tfree(struct bat_arena *a) { return A_ARR(a, uint32_t, off_tfree); }
static inline uint32_t *cancels(struct bat_arena *a) { return A_ARR(a, uint32_t, off_cancels); }
static inline int32_t *pending(struct bat_arena *a) { return A_ARR(a, int32_t, off_pending); }
static inline struct bat_kv *kvm(struct bat_arena *a) { return A_ARR(a, struct bat_kv, off_kv); }
static inline struct bat_event *outbox(struct bat_arena *a) { return A_ARR(a, struct bat_event, off_outbox); }
static inline int32_t *table(struct bat_arena *a, uint32_t t)
{
    return A_ARR(a, int32_t, off_tables) + (size_t)t * a->mbps;
}

static size_t al64(size_t x) { return (x + 63) & ~(size_t)63; }

int bat_sched_cfg_defaults(struct bat_sched_cfg *c)
{
    if (!c || c->n_blocks == 0)
        return -EINVAL;
    if (!c->max_batch_tokens) c->max_batch_tokens = 2048;
    if (!c->max_seqs) c->max_seqs = 256;
    if (!c->max_queue) c->max_queue = 1024;
    if (!c->max_queue_tokens) c->max_queue_tokens = 1u << 20;
    if (!c->max_ctx) c->max_ctx = 8192;
    if (!c->max_flows) c->max_flows = 256;
    if (!c->quantum) c->quantum = 512;
    if (!c->kv_watermark) c->kv_watermark = c->n_blocks / 100;
    if (!c->max_queue_tenant) c->max_queue_tenant = c->max_queue / 4 ? c->max_queue / 4 : 1;
    if (!c->queue_timeout_ns) c->queue_timeout_ns = 30ull * 1000000000ull;
    if (!c->aging_ns) c->aging_ns = c->queue_timeout_ns / 3;
    if (c->max_flows < BAT_PRIO_N + 1)
        c->max_flows = BAT_PRIO_N + 1;
    if (c->max_seqs > 65536 || c->max_queue > (1u << 22) || c->max_ctx > (1u << 20) ||
        c->max_flows > (1u << 20) || c->n_blocks > (1u << 26))
        return -EINVAL;
    return 0;
}

static uint32_t hcap_for(uint32_t flows)
{
    uint32_t h = 16;
    while (h < 2 * flows)
        h <<= 1;
    return h;
}

/* Offsets of every array; returns the total size. */
static size_t layout(const struct bat_sched_cfg *c, struct bat_arena *o)
{
    uint32_t n_slots = c->max_queue + c->max_seqs;
    uint32_t mbps = bat_kv_blocks_for(c->max_ctx);
    uint32_t hcap = hcap_for(c->max_flows);
    size_t off = al64(sizeof(struct bat_arena));

    o->n_slots = n_slots;
    o->mbps = mbps;
    o->hcap = hcap;
    o->off_slots = (uint32_t)off; off = al64(off + (size_t)n_slots * sizeof(struct bat_slot));
    o->off_flows = (uint32_t)off; off = al64(off + (size_t)c->max_flows * sizeof(struct bat_flow));
    o->off_hash = (uint32_t)off; off = al64(off + (size_t)hcap * 4);
    o->off_running = (uint32_t)off; off = al64(off + (size_t)c->max_seqs * 4);
    o->off_tables = (uint32_t)off; off = al64(off + (size_t)c->max_seqs * mbps * 4);
    o->off_tfree = (uint32_t)off; off = al64(off + (size_t)c->max_seqs * 4);
    o->off_cancels = (uint32_t)off; off = al64(off + (size_t)n_slots * 4);
    o->off_pending = (uint32_t)off; off = al64(off + (size_t)c->n_blocks * 4);
    o->off_kv = (uint32_t)off; off = al64(off + bat_kv_size(c->n_blocks));
    o->ob_cap = n_slots + 2 * c->max_seqs + BAT_OB_EXTRA;
    o->off_outbox = (uint32_t)off; off = al64(off + (size_t)o->ob_cap * sizeof(struct bat_event));
    return off;
}

size_t bat_sched_size(const struct bat_sched_cfg *cfg)
{
    struct bat_sched_cfg c = *cfg;
    struct bat_arena o;

    if (bat_sched_cfg_defaults(&c))
        return 0;
    size_t sz = layout(&c, &o);
    return sz > UINT32_MAX ? 0 : sz;
}

size_t bat_sched_plan_size(const struct bat_sched_cfg *cfg)
{
    struct bat_sched_cfg c = *cfg;

    if (bat_sched_cfg_defaults(&c))
        return 0;
    return bat_plan_size(c.max_seqs, bat_kv_blocks_for(c.max_ctx), c.n_blocks);
}

uint32_t bat_sched_ev_cap(const struct bat_sched *s)
{
    return s->a->n_slots + 2 * s->a->cfg.max_seqs;
}

int bat_sched_init(struct bat_sched *s, void *mem, size_t size, const struct bat_sched_cfg *cfg,
                   uint64_t generation)
{
    struct bat_sched_cfg c;
    struct bat_arena *a = mem;
    size_t need;

    if (!s || !mem || !cfg || ((uintptr_t)mem & 63))
        return -EINVAL;
    c = *cfg;
    if (bat_sched_cfg_defaults(&c))
        return -EINVAL;
    need = bat_sched_size(&c);
    if (!need || size < need)
        return -EINVAL;
    memset(a, 0, sizeof(*a));
    layout(&c, a);
    a->cfg = c;
    a->size = need;
    a->generation = generation;
    memset(slots(a), 0, (size_t)a->n_slots * sizeof(struct bat_slot));
    for (uint32_t i = 0; i < a->n_slots; i++) {
        slots(a)[i].next = i + 1 < a->n_slots ? i + 1 : BAT_NIL;
        slots(a)[i].gen = 1;
    }
    a->free_head = 0;
    a->n_free_slots = a->n_slots;
    memset(flows(a), 0, (size_t)c.max_flows * sizeof(struct bat_flow));
    for (uint32_t p = 0; p < BAT_PRIO_N; p++) { /* overflow flows */
        struct bat_flow *f = &flows(a)[p];
        f->used = 1;
        f->prio = (uint8_t)p;
        f->tenant = UINT32_MAX;
        f->head = f->tail = BAT_NIL;
        a->rr_cur[p] = a->rr_new[p] = a->res_head[p] = a->res_tail[p] = BAT_NIL;
    }
    a->n_flows = BAT_PRIO_N;
    memset(hasht(a), 0xff, (size_t)a->hcap * 4);
    for (uint32_t i = 0; i < c.max_seqs; i++)
        tfree(a)[i] = c.max_seqs - 1 - i;
    a->n_tfree = c.max_seqs;
    if (bat_kv_init(kvm(a), bat_kv_size(c.n_blocks), c.n_blocks))
        return -EINVAL;
    a->version = BAT_SCHED_VERSION;
    a->magic = BAT_SCHED_MAGIC;
    s->a = a;
    s->stats = NULL;
    return 0;
}

int bat_sched_attach(struct bat_sched *s, void *mem, size_t size)
{
    struct bat_arena *a = mem;
    struct bat_arena o;
    struct bat_sched_cfg c;

    if (!s || !mem || size < sizeof(*a))
        return -EINVAL;
    if (a->magic != BAT_SCHED_MAGIC || a->version != BAT_SCHED_VERSION)
        return -EPROTO;
    c = a->cfg;
    if (bat_sched_cfg_defaults(&c) || memcmp(&c, &a->cfg, sizeof(c)) || a->size > size ||
        layout(&c, &o) != a->size || o.off_kv != a->off_kv || o.off_slots != a->off_slots ||
        o.off_outbox != a->off_outbox || o.ob_cap != a->ob_cap || a->ob_n > a->ob_cap ||
        a->done_step > a->step)
        return -EBADMSG;
    if (a->busy)
        return -ESTALE;
    /* An outbox reset cut between its two stores (ob_n first, then
     * ob_next): nothing is pending. */
    if (a->ob_next > a->ob_n)
        a->ob_next = a->ob_n;
    s->a = a;
    s->stats = NULL;
    return bat_sched_check(s);
}

/* ---- queues ---------------------------------------------------------- */

static uint32_t flow_home(const struct bat_arena *a, uint32_t tenant, uint32_t prio)
{
    uint32_t key = tenant * 0x9e3779b1u ^ (prio * 0x85ebca6bu);
    return (key ^ (key >> 15)) & (a->hcap - 1);
}

/* Remove flow fi from the hash (backward-shift deletion: linear probing
 * stays tombstone-free, so lookups never slow down with churn). */
static void flow_unhash(struct bat_arena *a, uint32_t fi)
{
    uint32_t m = a->hcap - 1, i = flow_home(a, flows(a)[fi].tenant, flows(a)[fi].prio);

    while (hasht(a)[i] != fi) {
        FAVO_ASSERT(hasht(a)[i] != BAT_NIL);
        i = (i + 1) & m;
    }
    for (uint32_t j = i;;) {
        j = (j + 1) & m;
        uint32_t fj = hasht(a)[j];
        if (fj == BAT_NIL)
            break;
        uint32_t k = flow_home(a, flows(a)[fj].tenant, flows(a)[fj].prio);
        if (i <= j ? (i < k && k <= j) : (i < k || k <= j))
            continue; /* fj's home lies after the hole: it stays */
        hasht(a)[i] = fj;
        i = j;
    }
    hasht(a)[i] = BAT_NIL;
}

/* An idle flow (nothing waiting) to reuse when the table is full, or NIL.
 * Cold path: only when max_flows distinct (tenant, class) pairs were seen. */
static uint32_t flow_reclaim(struct bat_arena *a)
{
    uint32_t n = a->cfg.max_flows - BAT_PRIO_N;

    for (uint32_t k = 0; k < n; k++) {
        uint32_t fi = BAT_PRIO_N + (a->flow_scan + k) % n;
        struct bat_flow *f = &flows(a)[fi];
        if (!f->active && f->n == 0) {
            a->flow_scan = (fi - BAT_PRIO_N + 1) % n;
            flow_unhash(a, fi);
            return fi;
        }
    }
    return BAT_NIL;
}

static uint32_t flow_get(struct bat_arena *a, uint32_t tenant, uint32_t prio)
{
    uint32_t m = a->hcap - 1, reuse = BAT_NIL;

again:
    for (uint32_t i = flow_home(a, tenant, prio), n = 0; n < a->hcap; i = (i + 1) & m, n++) {
        uint32_t fi = hasht(a)[i];
        if (fi == BAT_NIL) {
            if (reuse == BAT_NIL && a->n_flows >= a->cfg.max_flows) {
                reuse = flow_reclaim(a);
                if (reuse == BAT_NIL) {
                    a->n_overflow++;
                    return prio; /* all busy: the class's shared overflow flow */
                }
                goto again; /* the deletion may have moved entries */
            }
            fi = reuse != BAT_NIL ? reuse : a->n_flows++;
            struct bat_flow *f = &flows(a)[fi];
            memset(f, 0, sizeof(*f));
            f->tenant = tenant;
            f->prio = (uint8_t)prio;
            f->used = 1;
            f->head = f->tail = BAT_NIL;
            hasht(a)[i] = fi;
            return fi;
        }
        if (flows(a)[fi].tenant == tenant && flows(a)[fi].prio == prio) {
            FAVO_ASSERT(reuse == BAT_NIL); /* it was not in the table a moment ago */
            return fi;
        }
    }
    FAVO_ASSERT(!"flow hash full"); /* hcap >= 2 * max_flows */
    return prio;
}

static void rr_insert(struct bat_arena *a, uint32_t fi)
{
    struct bat_flow *f = &flows(a)[fi];
    uint32_t *cur = &a->rr_cur[f->prio];

    /* A flow that becomes active starts with one quantum of credit and is
     * visited NEXT (the cursor moves to it), as fq_codel serves new flows
     * before old ones: a light tenant's request is not queued behind the
     * rest of a heavy flow's visit, which may start a quantum's worth of
     * small requests - more than a whole step's sequence slots. Bounded:
     * a flow is new again only after its queue emptied, and it brings one
     * quantum each time (DRR as in Shreedhar & Varghese, credit on entry). */
    f->active = 1;
    f->deficit = a->cfg.quantum;
    uint32_t *nw = &a->rr_new[f->prio];
    if (*cur == BAT_NIL) {
        f->rr_next = f->rr_prev = fi;
        *cur = *nw = fi;
        return;
    }
    /* New flows form the segment [cursor .. rr_new], in activation order
     * (FIFO among new flows): insert after the last of them, or, when
     * there is none, just before the cursor and move the cursor to it. */
    uint32_t after = *nw != BAT_NIL ? *nw : flows(a)[*cur].rr_prev;
    struct bat_flow *p = &flows(a)[after];
    f->rr_prev = after;
    f->rr_next = p->rr_next;
    flows(a)[p->rr_next].rr_prev = fi;
    p->rr_next = fi;
    if (*nw == BAT_NIL)
        *cur = fi;
    *nw = fi;
}

/* The cursor of class p moves on by one flow. */
static void rr_advance(struct bat_arena *a, uint32_t p)
{
    if (a->rr_cur[p] == a->rr_new[p])
        a->rr_new[p] = BAT_NIL; /* past the last new flow */
    a->rr_cur[p] = flows(a)[a->rr_cur[p]].rr_next;
}

static void rr_remove(struct bat_arena *a, uint32_t fi)
{
    struct bat_flow *f = &flows(a)[fi];
    uint32_t *cur = &a->rr_cur[f->prio];

    uint32_t *nw = &a->rr_new[f->prio];

    if (f->rr_next == fi) {
        *cur = *nw = BAT_NIL;
    } else {
        /* The new segment [cur .. nw] loses fi: it ends one earlier, or is
         * empty when fi was its only member. */
        if (*nw == fi)
            *nw = *cur == fi ? BAT_NIL : f->rr_prev;
        flows(a)[f->rr_prev].rr_next = f->rr_next;
        flows(a)[f->rr_next].rr_prev = f->rr_prev;
        if (*cur == fi)
            *cur = f->rr_next;
    }
    f->active = 0;
    f->deficit = 0;
}

/* Unlink a WAITING slot from its flow FIFO or its class's resume queue. */
static void wait_unlink(struct bat_arena *a, uint32_t si)
{
    struct bat_slot *q = &slots(a)[si];
    uint32_t *head, *tail;

    if (q->in_resume) {
        head = &a->res_head[q->prio];
        tail = &a->res_tail[q->prio];
    } else {
        struct bat_flow *f = &flows(a)[q->flow];
        head = &f->head;
        tail = &f->tail;
        f->n--;
    }
    if (q->prev != BAT_NIL) slots(a)[q->prev].next = q->next; else *head = q->next;
    if (q->next != BAT_NIL) slots(a)[q->next].prev = q->prev; else *tail = q->prev;
    if (!q->in_resume && flows(a)[q->flow].n == 0)
        rr_remove(a, q->flow);
    a->n_waiting--;
    a->n_waiting_tokens -= q->n_prompt;
    q->prev = q->next = BAT_NIL;
    q->in_resume = 0;
}

static void link_tail(struct bat_arena *a, uint32_t *head, uint32_t *tail, uint32_t si)
{
    struct bat_slot *q = &slots(a)[si];
    q->next = BAT_NIL;
    q->prev = *tail;
    if (*tail != BAT_NIL) slots(a)[*tail].next = si; else *head = si;
    *tail = si;
}

static void link_head(struct bat_arena *a, uint32_t *head, uint32_t *tail, uint32_t si)
{
    struct bat_slot *q = &slots(a)[si];
    q->prev = BAT_NIL;
    q->next = *head;
    if (*head != BAT_NIL) slots(a)[*head].prev = si; else *tail = si;
    *head = si;
}

/* ---- slots ----------------------------------------------------------- */

static uint64_t handle(struct bat_arena *a, uint32_t si)
{
    return (uint64_t)slots(a)[si].gen << 32 | si;
}

/* A plan holding q has not been completed (the one being built counts). */
static inline bool in_flight(const struct bat_arena *a, const struct bat_slot *q)
{
    return q->plan_step > a->done_step;
}

/* q leaves once no plan in flight holds it (sched inv 7). */
static void set_drop(struct bat_arena *a, struct bat_slot *q, uint8_t why)
{
    if (!q->drop)
        a->n_drop++;
    q->drop = why;
}

static void slot_free(struct bat_arena *a, uint32_t si)
{
    struct bat_slot *q = &slots(a)[si];
    uint32_t gen = q->gen + 1;

    FAVO_ASSERT(q->n_blocks == 0); /* sched inv 2 */
    memset(q, 0, sizeof(*q));
    q->gen = gen ? gen : 1;
    q->next = a->free_head;
    a->free_head = si;
    a->n_free_slots++;
}

/* Release every block of a running sequence (listed for zeroing). */
static void seq_release_blocks(struct bat_arena *a, struct bat_slot *q)
{
    int32_t *t = table(a, q->table);

    FAVO_ASSERT(!in_flight(a, q)); /* sched inv 6: no plan in flight writes them */
    for (uint32_t i = 0; i < q->n_blocks; i++) {
        bat_kv_free(kvm(a), t[i]);
        FAVO_ASSERT(a->n_pending < a->cfg.n_blocks); /* kv inv 1 */
        pending(a)[a->n_pending++] = t[i];
    }
    q->n_blocks = 0;
    q->n_computed = 0;
    q->fl_pos = 0;
    q->fl_gen = 0;
}

static uint32_t run_find(struct bat_arena *a, uint32_t si)
{
    for (uint32_t i = 0; i < a->n_running; i++)
        if (running(a)[i] == si)
            return i;
    FAVO_ASSERT(!"running slot not in running[]");
    return BAT_NIL;
}

static void run_remove_at(struct bat_arena *a, uint32_t i)
{
    struct bat_slot *q = &slots(a)[running(a)[i]];

    seq_release_blocks(a, q);
    if (q->drop) {
        a->n_drop--;
        q->drop = 0;
    }
    tfree(a)[a->n_tfree++] = q->table;
    q->table = BAT_NIL;
    memmove(&running(a)[i], &running(a)[i + 1], (a->n_running - i - 1) * 4);
    a->n_running--;
}

static bool rank_before(const struct bat_slot *x, const struct bat_slot *y)
{
    return x->prio < y->prio || (x->prio == y->prio && x->admit_seq < y->admit_seq);
}

/* Insert into running[] at its rank; returns the index. */
static uint32_t run_insert(struct bat_arena *a, uint32_t si)
{
    struct bat_slot *q = &slots(a)[si];
    uint32_t i = a->n_running;

    FAVO_ASSERT(a->n_tfree > 0 && a->n_running < a->cfg.max_seqs);
    q->table = tfree(a)[--a->n_tfree];
    q->n_blocks = 0;
    q->n_computed = 0;
    while (i > 0 && rank_before(q, &slots(a)[running(a)[i - 1]]))
        i--;
    memmove(&running(a)[i + 1], &running(a)[i], (a->n_running - i) * 4);
    running(a)[i] = si;
    a->n_running++;
    q->state = ST_RUNNING;
    return i;
}

static uint32_t emit(struct bat_event *ev, uint32_t *n, uint32_t cap, struct bat_arena *a,
                     uint32_t si, uint16_t kind, uint16_t reason, int32_t token)
{
    struct bat_slot *q = &slots(a)[si];

    FAVO_ASSERT(*n < cap);
    ev[*n] = (struct bat_event){ .id = handle(a, si), .cell = q->cell, .kind = kind,
                                 .reason = reason, .token = token, .n_gen = q->n_gen };
    if (kind == BAT_EV_TOKEN) /* where id n_gen - 1 goes (shm_pipe.h cell layout) */
        ev[*n].at = q->tok_off + 4u * (q->n_prompt + q->n_gen - 1);
    return (*n)++;
}

static void stat_finish(struct bat_sched *s, enum bat_finish why)
{
    if (!s->stats || s->no_outcomes)
        return;
    switch (why) {
    case BAT_FIN_STOP:
    case BAT_FIN_LENGTH: shm_stats_add(s->stats, SHM_C_REQ_OK, 1); break;
    case BAT_FIN_CANCELLED: shm_stats_add(s->stats, SHM_C_REQ_CANCELLED, 1); break;
    case BAT_FIN_TIMEOUT: shm_stats_add(s->stats, SHM_C_REQ_TIMEOUT, 1); break;
    default: shm_stats_add(s->stats, SHM_C_REQ_ERROR, 1); break;
    }
}

/* Finish a slot in any live state: events, blocks, slot back to FREE. */
static void finish(struct bat_sched *s, uint32_t si, enum bat_finish why, struct bat_event *ev,
                   uint32_t *n, uint32_t cap)
{
    struct bat_arena *a = s->a;
    struct bat_slot *q = &slots(a)[si];

    if (q->state == ST_WAITING)
        wait_unlink(a, si);
    else if (q->state == ST_RUNNING)
        run_remove_at(a, run_find(a, si));
    emit(ev, n, cap, a, si, BAT_EV_FINISH, (uint16_t)why, -1);
    stat_finish(s, why);
    a->n_finished++;
    slot_free(a, si);
}

/* ---- admission ------------------------------------------------------- */

static uint32_t retry_after(const struct bat_arena *a, uint32_t extra_tokens)
{
    double rate = a->drain_tok_per_s;
    double backlog = (double)a->n_waiting_tokens + extra_tokens;
    double sec;

    if (rate <= 0)
        return 1;
    sec = ceil(backlog / rate);
    return sec < 1 ? 1 : sec > 60 ? 60 : (uint32_t)sec;
}

int bat_sched_submit(struct bat_sched *s, const struct bat_req *r, uint64_t now, uint64_t *id,
                     uint32_t *retry_after_s)
{
    struct bat_arena *a = s->a;
    struct bat_slot *q;
    uint32_t si, fi;

    if (!r || !id || r->n_prompt == 0 || r->max_tokens == 0 || r->prio >= BAT_PRIO_N)
        return -EINVAL;
    if ((uint64_t)r->n_prompt + r->max_tokens > a->cfg.max_ctx ||
        bat_kv_blocks_for(r->n_prompt + r->max_tokens) > a->cfg.n_blocks)
        return -E2BIG;
    fi = flow_get(a, r->tenant, r->prio);
    if (a->n_waiting >= a->cfg.max_queue || a->n_free_slots == 0 ||
        (uint64_t)a->n_waiting_tokens + r->n_prompt > a->cfg.max_queue_tokens ||
        (fi >= BAT_PRIO_N && flows(a)[fi].n >= a->cfg.max_queue_tenant)) {
        if (retry_after_s)
            *retry_after_s = retry_after(a, r->n_prompt);
        if (s->stats)
            shm_stats_add(s->stats, SHM_C_REJ_QUEUE_FULL, 1);
        return -EBUSY;
    }
    si = a->free_head;
    q = &slots(a)[si];
    a->free_head = q->next;
    a->n_free_slots--;
    q->state = ST_WAITING;
    q->prio = (uint8_t)r->prio;
    q->tenant = r->tenant;
    q->cell = r->cell;
    q->tok_off = r->tok_off;
    q->n_prompt = r->n_prompt;
    q->max_tokens = r->max_tokens;
    q->sp = r->sp;
    q->enq_ns = now;
    q->table = BAT_NIL;
    q->flow = fi;
    struct bat_flow *f = &flows(a)[fi];
    link_tail(a, &f->head, &f->tail, si);
    f->n++;
    if (!f->active)
        rr_insert(a, fi);
    a->n_waiting++;
    a->n_waiting_tokens += r->n_prompt;
    *id = handle(a, si);
    return 0;
}

int bat_sched_cancel(struct bat_sched *s, uint64_t id)
{
    struct bat_arena *a = s->a;
    uint32_t si = (uint32_t)id;
    struct bat_slot *q;

    if (si >= a->n_slots)
        return -ENOENT;
    q = &slots(a)[si];
    if (q->gen != (uint32_t)(id >> 32) || q->state == ST_FREE) /* sched inv 4 */
        return -ENOENT;
    if (!q->cancel) {
        q->cancel = 1;
        cancels(a)[a->n_cancels++] = si;
    }
    return 0;
}

/* ---- test seam -------------------------------------------------------- */

static uint64_t g_abort_step; /* process-local: 0 = off */

void bat_sched_test_abort_in_step(uint64_t step)
{
    g_abort_step = step;
}

/* ---- outbox ---------------------------------------------------------- */

/* Empty the outbox: ob_n first, so a crash between the two stores leaves
 * ob_next > ob_n, which attach reads as empty (never as a replay). */
static void ob_reset(struct bat_arena *a)
{
    __atomic_store_n(&a->ob_n, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&a->ob_next, 0, __ATOMIC_RELEASE);
}

/* Publish n events to the stage: the entries were written before (release
 * store; only program order matters, the reader is a later process). */
static void ob_commit(struct bat_arena *a, uint32_t n)
{
    FAVO_ASSERT(n <= a->ob_cap);
    __atomic_store_n(&a->ob_n, n, __ATOMIC_RELEASE);
}

/* ---- the step -------------------------------------------------------- */

#define FAIR_TENANTS 64 /* distinct tenants tallied; more: no fairness preemption */

struct step_ctx {
    struct bat_plan *p;
    struct bat_plan_seq *ps;
    uint32_t tok_left, seq_left;
    uint32_t n_fair;               /* flows whose head starts first (fair_preempt) */
    uint32_t fair[2 * FAIR_MAX];   /* carried from the last step (a->fair_next), then new */
};

/* Add sequence si (n_new tokens from n_computed) to the plan. Its blocks
 * already cover the positions. */
static void plan_add(struct bat_arena *a, struct step_ctx *c, uint32_t si, uint32_t n_new)
{
    struct bat_slot *q = &slots(a)[si];
    struct bat_plan *p = c->p;
    struct bat_plan_seq *e = &c->ps[p->n_seqs];
    uint32_t comp = q->n_computed + q->fl_pos, known = q->n_prompt + q->n_gen + q->fl_gen;

    FAVO_ASSERT(n_new >= 1 && n_new <= c->tok_left && c->seq_left > 0); /* sched inv 1 */
    FAVO_ASSERT(q->n_blocks == bat_kv_blocks_for(comp + n_new));
    FAVO_ASSERT(!q->drop); /* sched inv 7 */
    FAVO_ASSERT(q->plan_step != a->step + 1); /* plan inv 3 */
    FAVO_ASSERT(p->n_tables + q->n_blocks <= p->cap_tables);
    e->id = handle(a, si);
    e->slot = si;
    e->cell = q->cell;
    e->tok_off = q->tok_off;
    e->pos = comp;
    e->n_new = n_new;
    e->table_off = p->n_tables;
    e->n_blocks = q->n_blocks;
    e->n_prompt = q->n_prompt;
    e->n_history = q->n_gen + q->fl_gen;
    e->no_sample = comp + n_new < known;
    e->feed = 0;
    e->feed_src = 0;
    if (q->fl_gen) {
        /* Its last known token is sampled by the plan in flight (sched
         * inv 9): the engine feeds it in. */
        FAVO_ASSERT(q->fl_gen == 1 && n_new == 1 && comp + 1 == known &&
                    q->plan_step == a->step && a->done_step + 1 == a->step);
        e->feed = 1;
        e->feed_src = q->fl_idx;
    }
    e->sp = q->sp;
    memcpy(bat_plan_tables(p) + p->n_tables, table(a, q->table), (size_t)q->n_blocks * 4);
    p->n_tables += q->n_blocks;
    p->n_seqs++;
    p->n_tokens += n_new;
    if (n_new == 1 && !e->no_sample)
        p->n_decode++;
    c->tok_left -= n_new;
    c->seq_left--;
    q->fl_pos += n_new;
    q->fl_gen += !e->no_sample;
    q->fl_idx = p->n_seqs - 1;
    q->plan_step = a->step + 1;
}

/* Preempt by recompute: running[i] loses its blocks and waits at the head
 * of its class's resume queue - or, for a fairness preemption (to_flow),
 * at the HEAD of its own (tenant, class) flow, so it competes again through
 * DRR with its tenant's credit (not ahead of everyone through the resume
 * queue). It has started: it keeps its admission rank and never times out. */
static void preempt_at(struct bat_arena *a, uint32_t i, bool to_flow)
{
    uint32_t si = running(a)[i];
    struct bat_slot *q = &slots(a)[si];

    run_remove_at(a, i);
    q->state = ST_WAITING;
    q->in_resume = !to_flow;
    if (to_flow) {
        q->flow = flow_get(a, q->tenant, q->prio);
        struct bat_flow *f = &flows(a)[q->flow];
        link_head(a, &f->head, &f->tail, si);
        f->n++;
        if (!f->active)
            rr_insert(a, q->flow);
    } else {
        link_head(a, &a->res_head[q->prio], &a->res_tail[q->prio], si);
    }
    a->n_waiting++;
    a->n_waiting_tokens += q->n_prompt;
    a->n_preempt++;
}

/* Slot and blocks of running sequences that leave when the plan in flight
 * completes, before the next step could start anything: the ones with drop
 * set and the ones ending by length in it (sched inv 8). Without overlap
 * they would be gone already, so fairness counts them as free. */
struct fair_soon {
    uint32_t slots, blocks;
};

static bool leaving(const struct bat_arena *a, const struct bat_slot *q)
{
    uint32_t gen = q->n_gen + q->fl_gen;

    return q->drop || (q->fl_gen && in_flight(a, q) &&
                       (gen >= q->max_tokens || q->n_prompt + gen >= a->cfg.max_ctx));
}

/* can_start, with what leaves at the plan in flight's completion freed. */
static bool can_start_soon(struct bat_arena *a, const struct bat_slot *q,
                           const struct fair_soon *lv)
{
    uint32_t need = bat_kv_blocks_for(q->n_prompt + q->n_gen + 1);
    uint32_t wm = a->n_running ? a->cfg.kv_watermark : 0;

    return a->n_tfree + lv->slots > 0 && kvm(a)->n_free + lv->blocks >= need + wm;
}

struct fair_tally {
    uint32_t n;
    uint32_t tenant[FAIR_TENANTS], count[FAIR_TENANTS];
};

static uint32_t tally_at(struct fair_tally *t, uint32_t tenant, bool add)
{
    for (uint32_t k = 0; k < t->n; k++)
        if (t->tenant[k] == tenant)
            return k;
    if (!add || t->n == FAIR_TENANTS)
        return BAT_NIL;
    t->tenant[t->n] = tenant;
    t->count[t->n] = 0;
    return t->n++;
}

/* Per-tenant fair share of the running set. When the head of a waiting
 * (tenant, class) flow cannot start (no free sequence slot or KV room)
 * while another tenant runs at least two more sequences than it does, the
 * newest running sequence of that tenant (same or lower class) is
 * preempted by recompute and the waiting flow's head is reserved to start
 * in this step's admission. Without it, a tenant that floods holds every
 * slot and a newcomer waits for one of its sequences to FINISH (tens of
 * steps), however fair the queue order; with it, the newcomer starts in
 * the next step, and the running set converges to equal shares (the
 * condition "two more" leaves no pair of tenants to swap back and forth).
 * Runs before the decode pass, so no victim is in the plan being built.
 * O(n_running * tenants) only while some flow waits with the set full.
 *
 * With a plan in flight (sched inv 10) the victim is that tenant's newest
 * sequence in no plan in flight; when every one of them is in the plan in
 * flight, its newest leaves at that plan's completion instead (DROP_FAIR:
 * not planned again, its result dropped, back to its flow's head) and the
 * waiting flow's head is reserved for the step after (a->fair_next), when
 * the victim's slot and blocks are free. So step() never waits for the
 * plan in flight because of fairness. What leaves at that completion
 * anyway (drop, or ending by length in it) counts as free, as it would
 * be without overlap: no victim is taken for a slot about to free itself
 * (that nearly doubled the preemptions under bench-batcher's load), and those
 * sequences count for no tenant; flows reserved by the last step count
 * for theirs (c->fair[0 .. carried)). */
static bool fair_preempt(struct bat_arena *a, struct step_ctx *c, uint32_t carried)
{
    struct fair_tally t;
    struct fair_soon lv = { 0, 0 };
    bool stuck = false;
    uint32_t n_fair = 0;

    if (a->step == a->done_step + 1) /* a plan in flight */
        for (uint32_t i = 0; i < a->n_running; i++) {
            const struct bat_slot *r = &slots(a)[running(a)[i]];
            if (leaving(a, r)) {
                lv.slots++;
                lv.blocks += r->n_blocks;
            }
        }
    /* Cheap test first: does any waiting flow's head fail to start? */
    for (uint32_t p = 0; p < BAT_PRIO_N && !stuck; p++) {
        uint32_t fi0 = a->rr_cur[p], fi = fi0, seen = 0;
        if (fi0 == BAT_NIL)
            continue;
        do {
            stuck = fi >= BAT_PRIO_N && !can_start_soon(a, &slots(a)[flows(a)[fi].head], &lv);
            fi = flows(a)[fi].rr_next;
        } while (!stuck && fi != fi0 && ++seen < FAIR_TENANTS);
    }
    if (!stuck)
        return false;
    t.n = 0;
    for (uint32_t i = 0; i < a->n_running; i++) {
        const struct bat_slot *r = &slots(a)[running(a)[i]];
        if (lv.slots && leaving(a, r))
            continue;
        uint32_t k = tally_at(&t, r->tenant, true);
        if (k == BAT_NIL)
            return false; /* very many tenants: shares are small anyway */
        t.count[k]++;
    }
    for (uint32_t k = 0; k < carried; k++) { /* about to start */
        uint32_t j = tally_at(&t, flows(a)[c->fair[k]].tenant, true);
        if (j == BAT_NIL)
            return false;
        t.count[j]++;
    }
    for (uint32_t p = 0; p < BAT_PRIO_N && n_fair < FAIR_MAX; p++) {
        uint32_t fi0 = a->rr_cur[p], fi = fi0, seen = 0;
        if (fi0 == BAT_NIL || a->res_head[p] != BAT_NIL)
            continue; /* preempted sequences of the class go first anyway */
        do {
            struct bat_flow *f = &flows(a)[fi];
            uint32_t next = f->rr_next;
            if (fi >= BAT_PRIO_N && f->head != BAT_NIL &&
                !can_start_soon(a, &slots(a)[f->head], &lv)) {
                uint32_t own = tally_at(&t, f->tenant, true), top = BAT_NIL;
                uint32_t mine = own == BAT_NIL ? 0 : t.count[own];
                for (uint32_t k = 0; k < t.n; k++)
                    if (k != own && (top == BAT_NIL || t.count[k] > t.count[top]))
                        top = k;
                uint32_t v = BAT_NIL, vf = BAT_NIL; /* newest not in flight / in flight */
                if (own != BAT_NIL && top != BAT_NIL && t.count[top] >= mine + 2)
                    for (uint32_t j = a->n_running; j-- > 0;) {
                        const struct bat_slot *r = &slots(a)[running(a)[j]];
                        if (r->tenant != t.tenant[top] || r->prio < p || r->drop ||
                            (lv.slots && leaving(a, r)))
                            continue;
                        if (!in_flight(a, r)) {
                            v = j;
                            break;
                        }
                        if (vf == BAT_NIL)
                            vf = j;
                    }
                if (v != BAT_NIL) {
                    preempt_at(a, v, true);
                    c->fair[c->n_fair++] = fi;
                } else if (vf != BAT_NIL && a->n_fair_next < FAIR_MAX) {
                    /* sched inv 6, 10: it leaves when its plan completes;
                     * the waiting head starts in the step after */
                    const struct bat_slot *r = &slots(a)[running(a)[vf]];
                    set_drop(a, &slots(a)[running(a)[vf]], DROP_FAIR);
                    lv.slots++; /* it leaves at completion: counted free */
                    lv.blocks += r->n_blocks;
                    a->fair_next[a->n_fair_next] = fi;
                    a->fair_next_tenant[a->n_fair_next++] = f->tenant;
                    a->n_fair_defer++;
                    v = vf;
                }
                if (v != BAT_NIL) {
                    t.count[top]--;
                    t.count[own]++;
                    n_fair++;
                }
            }
            fi = next;
        } while (fi != fi0 && ++seen < FAIR_TENANTS && n_fair < FAIR_MAX);
    }
    return n_fair > 0;
}

/* The last-ranked running sequence after index i not in this plan, or NIL. */
static uint32_t victim_after(struct bat_arena *a, uint32_t i)
{
    for (uint32_t j = a->n_running; j-- > i + 1;)
        if (!in_flight(a, &slots(a)[running(a)[j]])) /* nor in this plan (sched inv 6) */
            return j;
    return BAT_NIL;
}

/* Grow running[*i]'s table to cover `upto` positions, preempting later
 * sequences as needed. Returns the positions covered (may be less), or
 * BAT_NIL if running[*i] itself was preempted. */
static uint32_t grow(struct bat_arena *a, uint32_t i, uint32_t upto, bool may_self)
{
    struct bat_slot *q = &slots(a)[running(a)[i]];
    uint32_t need = bat_kv_blocks_for(upto);
    int32_t *t = table(a, q->table);

    FAVO_ASSERT(need <= a->mbps);
    while (q->n_blocks < need) {
        int32_t b = bat_kv_alloc(kvm(a));
        if (b >= 0) {
            t[q->n_blocks++] = b;
            continue;
        }
        uint32_t v = victim_after(a, i);
        if (v != BAT_NIL) {
            preempt_at(a, v, false);
            continue;
        }
        if (may_self && !in_flight(a, q) && q->n_blocks * BAT_KV_BLOCK <= q->n_computed) {
            preempt_at(a, i, false);
            return BAT_NIL;
        }
        break;
    }
    return FAVO_MIN(upto, q->n_blocks * BAT_KV_BLOCK);
}

/* A slot and the blocks of its prompt + generated ids + 1 (the watermark
 * kept while others run). */
static bool can_start(struct bat_arena *a, const struct bat_slot *q)
{
    static const struct fair_soon none;

    return can_start_soon(a, q, &none);
}

/* Start waiting slot si and put its first chunk into the plan. */
static void start(struct bat_sched *s, struct step_ctx *c, uint32_t si, uint64_t now)
{
    struct bat_arena *a = s->a;
    struct bat_slot *q = &slots(a)[si];
    uint32_t known, i, upto;

    FAVO_ASSERT(!in_flight(a, q) && !q->fl_pos && !q->drop); /* sched inv 6 */
    wait_unlink(a, si);
    if (!q->started) {
        q->started = 1;
        q->admit_seq = ++a->admit_seq;
        a->n_admitted++;
        if (s->stats)
            shm_stats_observe(s->stats, SHM_H_QUEUE, now - q->enq_ns);
    }
    i = run_insert(a, si);
    known = q->n_prompt + q->n_gen;
    upto = FAVO_MIN(known, c->tok_left);
    upto = grow(a, i, upto, false);
    FAVO_ASSERT(upto >= 1); /* can_start checked the blocks */
    plan_add(a, c, si, upto);
}

/* Aging: the oldest head request of a class > 0 that has waited aging_ns
 * starts first (one per step), so strict classes cannot starve the lower
 * ones. It pays its tokens from its flow's DRR credit like any other. */
static void admit_aged(struct bat_sched *s, struct step_ctx *c, uint64_t now)
{
    struct bat_arena *a = s->a;
    uint32_t best = BAT_NIL;
    uint64_t best_enq = UINT64_MAX;

    for (uint32_t fi = 0; fi < a->n_flows; fi++) {
        struct bat_flow *f = &flows(a)[fi];
        if (!f->active || f->prio == 0)
            continue;
        uint64_t enq = slots(a)[f->head].enq_ns;
        if (now >= enq && now - enq >= a->cfg.aging_ns && enq < best_enq) {
            best = fi;
            best_enq = enq;
        }
    }
    if (best == BAT_NIL || !c->tok_left || !c->seq_left)
        return;
    uint32_t si = flows(a)[best].head;
    if (!can_start(a, &slots(a)[si]))
        return;
    flows(a)[best].deficit -= slots(a)[si].n_prompt;
    a->n_aged++;
    start(s, c, si, now);
}

/* The flow heads fair_preempt made room for start first. */
static void admit_fair(struct bat_sched *s, struct step_ctx *c, uint64_t now)
{
    struct bat_arena *a = s->a;

    for (uint32_t k = 0; k < c->n_fair && c->tok_left && c->seq_left; k++) {
        struct bat_flow *f = &flows(a)[c->fair[k]];
        if (!f->active || !can_start(a, &slots(a)[f->head]))
            continue;
        f->deficit -= slots(a)[f->head].n_prompt;
        start(s, c, f->head, now);
    }
}

/* New requests of class p: DRR over the class's tenants. A visit lasts at
 * most one step: a flow that started requests in this step hands the
 * cursor on (keeping its remaining credit), so with small requests one
 * tenant's quantum cannot hold every sequence slot for several steps in a
 * row. False when admission must stop (budget spent, or strict classes:
 * the head cannot start). */
static bool admit_drr(struct bat_sched *s, struct step_ctx *c, uint32_t p, uint64_t now)
{
    struct bat_arena *a = s->a;
    uint32_t spins = 0, served = BAT_NIL;
    bool go = true;

    while (a->rr_cur[p] != BAT_NIL) {
        uint32_t fi = a->rr_cur[p];
        struct bat_flow *f = &flows(a)[fi];
        uint32_t si = f->head;
        struct bat_slot *q = &slots(a)[si];

        if (!c->tok_left || !c->seq_left) {
            go = false;
            break;
        }
        if (f->deficit < (int64_t)q->n_prompt) {
            /* Not enough credit: top up and move on. When every flow
             * is short, one pass adds a quantum to each; bounded by
             * max_ctx / quantum passes. */
            f->deficit += a->cfg.quantum;
            rr_advance(a, p);
            FAVO_ASSERT(++spins < (1u << 30));
            continue;
        }
        if (!can_start(a, q)) {
            go = false;
            break;
        }
        f->deficit -= q->n_prompt;
        served = fi;
        start(s, c, si, now); /* may remove the flow from the ring */
    }
    if (served != BAT_NIL && a->rr_cur[p] == served)
        rr_advance(a, p);
    return go;
}

static void admit(struct bat_sched *s, struct step_ctx *c, uint64_t now)
{
    struct bat_arena *a = s->a;

    admit_fair(s, c, now);
    admit_aged(s, c, now);
    for (uint32_t p = 0; p < BAT_PRIO_N; p++) {
        /* Preempted sequences of this class first, oldest rank first. */
        while (a->res_head[p] != BAT_NIL) {
            uint32_t si = a->res_head[p];
            if (!c->tok_left || !c->seq_left || !can_start(a, &slots(a)[si]))
                return;
            start(s, c, si, now);
        }
        if (!admit_drr(s, c, p, now))
            return;
    }
}

/* A running sequence with drop set that no plan in flight holds any more
 * leaves now: preempted by recompute, or finished with its reason. */
static void apply_drop(struct bat_sched *s, uint32_t si, struct bat_event *ev, uint32_t *n,
                       uint32_t cap)
{
    struct bat_arena *a = s->a;
    struct bat_slot *q = &slots(a)[si];
    uint8_t why = q->drop;

    FAVO_ASSERT(q->state == ST_RUNNING && why && !in_flight(a, q)); /* sched inv 7 */
    if (drop_preempts(why))
        preempt_at(a, run_find(a, si), why == DROP_FAIR);
    else
        finish(s, si, (enum bat_finish)why, ev, n, cap);
}

static void drop_cancels_timeouts(struct bat_sched *s, uint64_t now, struct bat_event *ev,
                                  uint32_t *n, uint32_t cap)
{
    struct bat_arena *a = s->a;

    for (uint32_t k = 0; k < a->n_cancels; k++) {
        uint32_t si = cancels(a)[k];
        struct bat_slot *q = &slots(a)[si];
        if (q->state == ST_FREE || !q->cancel)
            continue;
        if (q->state == ST_RUNNING && in_flight(a, q)) {
            /* sched inv 7: leaves when its last plan completes (a finish
             * reason it already has wins: it ended first) */
            if (!q->drop || drop_preempts(q->drop))
                set_drop(a, q, BAT_FIN_CANCELLED);
            continue;
        }
        finish(s, si, BAT_FIN_CANCELLED, ev, n, cap);
    }
    a->n_cancels = 0;
    /* Sequences left waiting for their plans in flight (a restart of the
     * engines voided those plans: bat_sched_reset_kv). */
    for (uint32_t i = a->n_running; a->n_drop && i-- > 0;) {
        uint32_t si = running(a)[i];
        if (slots(a)[si].drop && !in_flight(a, &slots(a)[si]))
            apply_drop(s, si, ev, n, cap);
    }
    /* Queue timeouts: each flow FIFO is in enqueue order, so only heads
     * need looking at (O(flows)). Preempted sequences (resume queues, or
     * a flow's head after a fairness preemption) have started and never
     * time out. */
    for (uint32_t fi = 0; fi < a->n_flows; fi++) {
        struct bat_flow *f = &flows(a)[fi];
        while (f->head != BAT_NIL && !slots(a)[f->head].started &&
               now >= slots(a)[f->head].enq_ns &&
               now - slots(a)[f->head].enq_ns >= a->cfg.queue_timeout_ns)
            finish(s, f->head, BAT_FIN_TIMEOUT, ev, n, cap);
    }
}

static int step_impl(struct bat_sched *s, uint64_t now, struct bat_plan *p, struct bat_event *ev,
                     uint32_t ev_cap, bool ob)
{
    struct bat_arena *a = s->a;
    struct step_ctx c;
    uint32_t n = 0;
    uint64_t seq0 = a->admit_seq;

    if (!p || p->magic != BAT_PLAN_MAGIC || ev_cap < bat_sched_ev_cap(s) ||
        p->cap_seqs < a->cfg.max_seqs || p->cap_freed < a->cfg.n_blocks ||
        p->cap_tables < a->cfg.max_seqs * a->mbps)
        return -EINVAL;
    if (a->step > a->done_step + 1)
        return -EBUSY; /* sched inv 5: two plans in flight, complete the older first */
    a->busy = 1;
    drop_cancels_timeouts(s, now, ev, &n, ev_cap);

    p->n_seqs = p->n_tokens = p->n_tables = p->n_freed = p->n_decode = 0;
    p->generation = a->generation;
    c.p = p;
    c.ps = bat_plan_seqs(p);
    c.tok_left = a->cfg.max_batch_tokens;
    c.seq_left = a->cfg.max_seqs;
    c.n_fair = 0;
    if (a->step == a->done_step + 1)
        a->n_ahead++;

    /* Pass 0: fairness preemption, only while the running set is full.
     * Flows reserved by the last step (their victims left when its plan in
     * flight completed, sched inv 10) start first, if they still wait
     * (a flow reused for another tenant has lost its reservation). */
    if (favo_unlikely(a->n_fair_next))
        for (uint32_t i = 0; i < a->n_running; i++) /* sched inv 10: the victims left */
            FAVO_ASSERT(slots(a)[running(a)[i]].drop != DROP_FAIR);
    for (uint32_t k = 0; k < a->n_fair_next; k++) {
        struct bat_flow *f = &flows(a)[a->fair_next[k]];
        if (f->active && f->tenant == a->fair_next_tenant[k])
            c.fair[c.n_fair++] = a->fair_next[k];
    }
    a->n_fair_next = 0;
    if (a->n_waiting > 0 && a->n_running > 1)
        fair_preempt(a, &c, c.n_fair);

    /* Pass 1: decodes, in rank order. With a plan in flight (overlap),
     * positions and samples it holds count as done (fl_pos, fl_gen). */
    for (uint32_t i = 0; i < a->n_running && c.tok_left && c.seq_left;) {
        uint32_t si = running(a)[i];
        struct bat_slot *q = &slots(a)[si];
        uint32_t comp = q->n_computed + q->fl_pos, gen = q->n_gen + q->fl_gen;
        if (q->drop || q->n_prompt + gen - comp != 1 ||
            (q->fl_gen && (gen >= q->max_tokens || q->n_prompt + gen >= a->cfg.max_ctx))) {
            i++; /* leaving, prefilling, or ends by length in flight (sched inv 8) */
            continue;
        }
        uint32_t got = grow(a, i, comp + 1, true);
        if (got == BAT_NIL)
            continue; /* preempted itself: running[i] is the next one */
        if (got > comp)
            plan_add(a, &c, si, 1);
        i++;
    }
    /* Pass 2: prefill chunks of running sequences, in rank order. */
    for (uint32_t i = 0; i < a->n_running && c.tok_left && c.seq_left; i++) {
        uint32_t si = running(a)[i];
        struct bat_slot *q = &slots(a)[si];
        uint32_t comp = q->n_computed + q->fl_pos;
        uint32_t known = q->n_prompt + q->n_gen + q->fl_gen;
        if (q->drop || q->plan_step == a->step + 1 || known - comp <= 1)
            continue;
        uint32_t upto = comp + FAVO_MIN(known - comp, c.tok_left);
        uint32_t got = grow(a, i, upto, false);
        if (got > comp)
            plan_add(a, &c, si, got - comp);
    }
    /* Pass 3: admission. */
    admit(s, &c, now);
    if (favo_unlikely(g_abort_step) && a->step + 1 == g_abort_step)
        abort(); /* test seam: die with the arena half-way through a step */
    /* START events (outbox only): sequences admitted for the first time in
     * this step; a resumed (preempted) one keeps its old admit_seq. */
    if (ob)
        for (uint32_t k = 0; k < p->n_seqs; k++)
            if (slots(a)[c.ps[k].slot].admit_seq > seq0)
                emit(ev, &n, ev_cap, a, c.ps[k].slot, BAT_EV_START, 0, -1);

    FAVO_ASSERT(p->n_tokens <= a->cfg.max_batch_tokens && p->n_seqs <= a->cfg.max_seqs);
    FAVO_ASSERT(a->n_pending <= p->cap_freed);
    memcpy(bat_plan_freed(p), pending(a), (size_t)a->n_pending * 4);
    p->n_freed = a->n_pending;
    a->n_pending = 0;
    a->step++;
    p->step = a->step;
    if (s->stats) {
        shm_stats_begin(s->stats);
        shm_stats_gauge_set(s->stats, SHM_G_REQUESTS_RUNNING, a->n_running);
        shm_stats_gauge_set(s->stats, SHM_G_REQUESTS_WAITING, a->n_waiting);
        shm_stats_gauge_set(s->stats, SHM_G_KV_CACHE_USAGE,
                            (double)bat_kv_used(kvm(a)) / a->cfg.n_blocks);
        shm_stats_end(s->stats);
    }
    if (ob)
        ob_commit(a, n);
    a->busy = 0;
    return (int)n;
}

int bat_sched_step(struct bat_sched *s, uint64_t now, struct bat_plan *p, struct bat_event *ev,
                   uint32_t ev_cap)
{
    return step_impl(s, now, p, ev, ev_cap, false);
}

int bat_sched_step_ob(struct bat_sched *s, uint64_t now, struct bat_plan *p)
{
    struct bat_arena *a = s->a;

    if (a->ob_next != a->ob_n)
        return -EAGAIN;
    ob_reset(a);
    return step_impl(s, now, p, outbox(a), a->ob_cap, true);
}

static bool completed_already(const struct bat_arena *a, const struct bat_plan *p)
{
    return p && p->magic == BAT_PLAN_MAGIC && p->generation == a->generation &&
           p->step <= a->done_step;
}

static int complete_impl(struct bat_sched *s, const struct bat_plan *p,
                         const struct bat_result *res, uint64_t now, struct bat_event *ev,
                         uint32_t ev_cap, bool ob)
{
    struct bat_arena *a = s->a;
    const struct bat_plan_seq *ps;
    uint32_t n = 0;
    uint64_t prompt_tok = 0, gen_tok = 0;

    if (completed_already(a, p))
        return 0; /* a replayed done message (restart): applied once */
    /* The oldest plan in flight only (sched inv 5). */
    if (!p || p->magic != BAT_PLAN_MAGIC || p->step != a->done_step + 1 || p->step > a->step ||
        p->generation != a->generation || ev_cap < bat_sched_ev_cap(s) || (p->n_seqs && !res))
        return -EINVAL;
    a->busy = 1;
    /* From here p's blocks are no longer written by anyone: a sequence
     * whose last plan is p may be preempted or finished (sched inv 6). */
    a->done_step = p->step;
    ps = (const struct bat_plan_seq *)((const char *)p + p->off_seqs);
    for (uint32_t k = 0; k < p->n_seqs; k++) {
        uint32_t si = ps[k].slot;
        struct bat_slot *q = &slots(a)[si];
        bool sample = !ps[k].no_sample;

        /* sched inv 6: a sequence in a plan in flight is neither freed,
         * nor preempted, nor finished before that plan completes */
        FAVO_ASSERT(handle(a, si) == ps[k].id && q->state == ST_RUNNING &&
                    q->fl_pos >= ps[k].n_new && q->fl_gen >= sample);
        q->fl_pos -= ps[k].n_new;
        q->fl_gen -= sample;
        bool later = in_flight(a, q); /* also in the newer plan in flight */
        if (q->drop || q->cancel) {
            /* Leaving (sched inv 7): the result is dropped; it goes once
             * its last plan is back (a cancel at the next step). */
            if (q->drop && !later)
                apply_drop(s, si, ev, &n, ev_cap);
            continue;
        }
        FAVO_ASSERT(q->n_computed == ps[k].pos); /* sched inv 2 */
        if (sample && res[k].token < 0) {
            /* Not computed (eng_stage.h: the engine lacks this sequence's
             * KV - it restarted - or refused the plan): preempt by
             * recompute. An engine that keeps refusing it ends it. Its
             * entry in a newer plan in flight fails too (the engine cannot
             * feed it a token): it leaves after that one (sched inv 7). */
            if (++q->n_lost >= BAT_MAX_LOST) {
                if (later)
                    set_drop(a, q, BAT_FIN_ENGINE);
                else
                    finish(s, si, BAT_FIN_ENGINE, ev, &n, ev_cap);
                continue;
            }
            if (later)
                set_drop(a, q, DROP_PREEMPT);
            else
                preempt_at(a, run_find(a, si), false);
            continue;
        }
        q->n_computed += ps[k].n_new;
        if (ps[k].n_new > 1 || ps[k].no_sample)
            prompt_tok += ps[k].n_new;
        if (ps[k].no_sample)
            continue;
        q->n_gen++;
        q->n_lost = 0;
        gen_tok++;
        emit(ev, &n, ev_cap, a, si, BAT_EV_TOKEN, 0, res[k].token);
        if (res[k].eos) {
            if (later)
                set_drop(a, q, BAT_FIN_STOP); /* sched inv 7 */
            else
                finish(s, si, BAT_FIN_STOP, ev, &n, ev_cap);
        } else if (q->n_gen >= q->max_tokens || q->n_prompt + q->n_gen >= a->cfg.max_ctx) {
            FAVO_ASSERT(!later); /* sched inv 8 */
            finish(s, si, BAT_FIN_LENGTH, ev, &n, ev_cap);
        }
    }
    /* Drain rate: tokens per second over steps, EWMA (alpha 1/8). */
    if (a->last_complete_ns && now > a->last_complete_ns) {
        double r = (double)p->n_tokens * 1e9 / (double)(now - a->last_complete_ns);
        a->drain_tok_per_s = a->drain_tok_per_s > 0 ? a->drain_tok_per_s * 0.875 + r * 0.125 : r;
    }
    a->last_complete_ns = now;
    if (s->stats) {
        shm_stats_begin(s->stats);
        shm_stats_add(s->stats, SHM_C_PROMPT_TOKENS, prompt_tok);
        shm_stats_add(s->stats, SHM_C_GENERATION_TOKENS, gen_tok);
        shm_stats_end(s->stats);
    }
    if (ob)
        ob_commit(a, n);
    a->busy = 0;
    return (int)n;
}

int bat_sched_complete(struct bat_sched *s, const struct bat_plan *p, const struct bat_result *res,
                       uint64_t now, struct bat_event *ev, uint32_t ev_cap)
{
    return complete_impl(s, p, res, now, ev, ev_cap, false);
}

int bat_sched_complete_ob(struct bat_sched *s, const struct bat_plan *p,
                          const struct bat_result *res, uint64_t now)
{
    struct bat_arena *a = s->a;

    if (completed_already(a, p))
        return 0;
    if (a->ob_next != a->ob_n)
        return -EAGAIN;
    ob_reset(a);
    return complete_impl(s, p, res, now, outbox(a), a->ob_cap, true);
}

int bat_sched_salvage(struct bat_sched *s, void *mem, size_t size,
                      const struct bat_sched_cfg *cfg, uint64_t generation)
{
    struct bat_arena *a = mem;
    uint64_t base;
    int rc;

    if (!s || !mem || size < sizeof(*a))
        return -EINVAL;
    if (a->magic != BAT_SCHED_MAGIC || a->version != BAT_SCHED_VERSION)
        return -EPROTO;
    /* Past every step the dead batcher may have planned (the one it was
     * writing is a->step + 1), so none of its done messages is taken for a
     * new plan's. */
    base = a->step + 2;
    if ((rc = bat_sched_init(s, mem, size, cfg, generation)))
        return rc;
    a->step = a->done_step = base;
    /* The lost sequences' blocks are free now but hold their KV: the first
     * plan's freed[] names every block, so the engines zero the whole pool
     * before running it (invariant 5). */
    for (uint32_t b = 0; b < a->cfg.n_blocks; b++)
        pending(a)[b] = (int32_t)b;
    a->n_pending = a->cfg.n_blocks;
    return 0;
}

bool bat_sched_ahead_ok(const struct bat_sched *s)
{
    struct bat_arena *a = s->a;
    uint32_t need = 0;

    if (a->step != a->done_step + 1 || a->busy)
        return false;
    /* KV: every decode planned ahead gets its block without preempting
     * (the watermark kept, as admission keeps it). */
    for (uint32_t i = 0; i < a->n_running; i++) {
        const struct bat_slot *q = &slots(a)[running(a)[i]];
        uint32_t comp = q->n_computed + q->fl_pos, gen = q->n_gen + q->fl_gen;
        if (!q->drop && q->n_prompt + gen - comp == 1)
            need += bat_kv_blocks_for(comp + 1) > q->n_blocks;
    }
    /* A KV victim must be in no plan in flight (its blocks are being
     * written), and deferring one (drop) frees nothing before the plan
     * completes, so the decode would still lack its block: wait. Fairness
     * never waits (sched inv 10: victims in flight leave at completion). */
    return !need || kvm(a)->n_free >= need + a->cfg.kv_watermark;
}

int bat_sched_reset_kv(struct bat_sched *s)
{
    struct bat_arena *a = s->a;
    uint32_t n = a->n_running;

    a->busy = 1;
    /* The plans in flight (one, or two with overlap) are void: a done
     * message for them is a replay now. Their sequences' state is what it
     * was before them (complete() was not applied), so they lose nothing
     * but the KV. */
    a->done_step = a->step;
    /* Last-ranked first, each to the head of its class's resume queue: the
     * queues end up in rank order. A sequence that already ended (drop
     * holds its reason, sched inv 7) only loses its blocks: its FINISH is
     * written by the next step(). */
    for (uint32_t i = a->n_running; i-- > 0;) {
        struct bat_slot *q = &slots(a)[running(a)[i]];
        q->fl_pos = 0;
        q->fl_gen = 0;
        if (q->drop && !drop_preempts(q->drop)) {
            seq_release_blocks(a, q);
            n--;
            continue;
        }
        preempt_at(a, i, false);
    }
    a->busy = 0;
    return (int)n;
}

/* ---- outbox and lookups ---------------------------------------------- */

int bat_sched_ob_push(struct bat_sched *s, const struct bat_event *e)
{
    struct bat_arena *a = s->a;

    if (a->ob_next == a->ob_n)
        ob_reset(a);
    if (a->ob_n >= a->ob_cap)
        return -ENOSPC;
    outbox(a)[a->ob_n] = *e;
    ob_commit(a, a->ob_n + 1);
    return 0;
}

const struct bat_event *bat_sched_ob_peek(const struct bat_sched *s, uint32_t *n)
{
    struct bat_arena *a = s->a;

    *n = a->ob_n - a->ob_next;
    return outbox(a) + a->ob_next;
}

void bat_sched_ob_pop(struct bat_sched *s, uint32_t n)
{
    struct bat_arena *a = s->a;

    FAVO_ASSERT(n <= a->ob_n - a->ob_next); /* only what is pending */
    __atomic_store_n(&a->ob_next, a->ob_next + n, __ATOMIC_RELEASE);
}

int bat_sched_find(const struct bat_sched *s, uint64_t cell, uint64_t *id)
{
    struct bat_arena *a = s->a;

    if (!cell)
        return -ENOENT;
    for (uint32_t i = 0; i < a->n_slots; i++)
        if (slots(a)[i].state != ST_FREE && slots(a)[i].cell == cell) {
            if (id)
                *id = handle(a, i);
            return 0;
        }
    return -ENOENT;
}

uint64_t *bat_sched_user(struct bat_sched *s)
{
    return s->a->user;
}

uint32_t bat_sched_retry_after(const struct bat_sched *s)
{
    return retry_after(s->a, 0);
}

void bat_sched_cfg_get(const struct bat_sched *s, struct bat_sched_cfg *out)
{
    *out = s->a->cfg;
}

void bat_sched_info(const struct bat_sched *s, struct bat_sched_info *o)
{
    struct bat_arena *a = s->a;

    o->n_waiting = a->n_waiting;
    o->n_running = a->n_running;
    o->n_waiting_tokens = a->n_waiting_tokens;
    o->kv_used = bat_kv_used(kvm(a));
    o->kv_total = a->cfg.n_blocks;
    o->step = a->step;
    o->n_preempt = a->n_preempt;
    o->n_admitted = a->n_admitted;
    o->n_finished = a->n_finished;
    o->drain_tok_per_s = a->drain_tok_per_s;
    o->n_overflow = a->n_overflow;
    o->n_aged = a->n_aged;
    o->done_step = a->done_step;
    o->n_outbox = a->ob_n - a->ob_next;
    o->n_ahead = a->n_ahead;
    o->n_fair_defer = a->n_fair_defer;
}

int bat_sched_check(const struct bat_sched *s)
{
    struct bat_arena *a = s->a;
    uint32_t nw = 0, nwt = 0, nr = 0, nfree = 0, blocks = 0, ndrop = 0;

    if (bat_kv_check(kvm(a)) || a->step > a->done_step + 2 || a->n_fair_next > FAIR_MAX)
        return -EBADMSG;
    for (uint32_t k = 0; k < a->n_fair_next; k++)
        if (a->fair_next[k] >= a->n_flows) /* sched inv 10 */
            return -EBADMSG;
    for (uint32_t i = 0; i < a->n_slots; i++) {
        struct bat_slot *q = &slots(a)[i];
        if (q->state == ST_FREE) {
            nfree++;
            if (q->n_blocks)
                return -EBADMSG;
        } else if (q->state == ST_WAITING) {
            nw++;
            nwt += q->n_prompt;
            if (q->n_blocks || q->fl_pos || q->fl_gen || q->drop)
                return -EBADMSG;
        } else if (q->state == ST_RUNNING) {
            nr++;
            blocks += q->n_blocks;
            ndrop += q->drop != 0;
            if (q->n_blocks < bat_kv_blocks_for(q->n_computed + q->fl_pos) ||
                (!in_flight(a, q) && (q->fl_pos || q->fl_gen)))
                return -EBADMSG;
        } else {
            return -EBADMSG;
        }
    }
    if (nw != a->n_waiting || nwt != a->n_waiting_tokens || nr != a->n_running ||
        nfree != a->n_free_slots || blocks != bat_kv_used(kvm(a)) || ndrop != a->n_drop ||
        a->n_tfree + a->n_running != a->cfg.max_seqs)
        return -EBADMSG;
    /* Every named flow is reachable from its home slot; waiting counts agree. */
    for (uint32_t fi = BAT_PRIO_N; fi < a->n_flows; fi++) {
        uint32_t i = flow_home(a, flows(a)[fi].tenant, flows(a)[fi].prio), n = 0;
        while (hasht(a)[i] != fi && hasht(a)[i] != BAT_NIL && n++ < a->hcap)
            i = (i + 1) & (a->hcap - 1);
        if (hasht(a)[i] != fi)
            return -EBADMSG;
    }
    for (uint32_t fi = 0; fi < a->n_flows; fi++) {
        uint32_t n = 0;
        for (uint32_t si = flows(a)[fi].head; si != BAT_NIL && n <= a->n_slots;
             si = slots(a)[si].next)
            n++;
        if (n != flows(a)[fi].n || (n > 0) != (flows(a)[fi].active != 0))
            return -EBADMSG;
    }
    for (uint32_t i = 1; i < a->n_running; i++)
        if (rank_before(&slots(a)[running(a)[i]], &slots(a)[running(a)[i - 1]]))
            return -EBADMSG;
    /* The new-flow segment [rr_cur .. rr_new] lies on its class's ring. */
    for (uint32_t p = 0; p < BAT_PRIO_N; p++) {
        uint32_t fi = a->rr_cur[p], n = 0;
        if (a->rr_new[p] == BAT_NIL)
            continue;
        if (fi == BAT_NIL)
            return -EBADMSG;
        while (fi != a->rr_new[p] && n++ < a->n_flows)
            fi = flows(a)[fi].rr_next;
        if (fi != a->rr_new[p] || !flows(a)[fi].active || flows(a)[fi].prio != p)
            return -EBADMSG;
    }
    return 0;
}
