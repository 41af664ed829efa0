/*
 * bat_stage.c - the batcher stage loop (design in bat_stage.h).
 */
#include "bat_stage.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bat_cache.h"
#include "favo_base.h"
#include "shm_stats.h"

#define BST_SLEEP_MS 50
#define BST_SPIN_NS 50000ull
#define BST_HB_NS 100000000ull
#define BST_OB_ROOM 8u      /* outbox slots kept free before taking a request */
#define BST_USER_ENG 0      /* bat_sched_user words [0, n_ranks): engine pids */
#define BST_USER_HIT 14     /* the cell of the cache hit being answered, 0: none */
#define BST_USER_HITV 15    /* its TOKEN offset | n << 32 | reason << 48 */
#define BST_CACHE_IDS 2048u /* longest answer the cache keeps (ids) */
#define BST_CACHE_EXTRA 2048u /* key bytes beyond the ids: tenant name, stop strings */
#define BST_EXPIRE_NS 1000000000ull

/* A cacheable request that missed, until its FINISH (process-local: a
 * restart forgets it, and its answer is then not cached). */
struct bst_pend {
    uint64_t cell;
    uint32_t ttl, tok_off, ntok, max_tokens;
    uint8_t key[BAT_CACHE_KEY];
};

struct bst {
    const struct bat_stage_cfg *cfg;
    const struct shm_pipe *pipe;
    struct bat_sched s;
    struct bat_sched_cfg sc;
    struct shm_cell_pool pool;
    shm_ring_t req[SHM_PIPE_MAX_INGRESS], ctl, done, ev, plan[SHM_PIPE_MAX_RANKS];
    shm_bell_ec_t bell, eng[SHM_PIPE_MAX_RANKS];
    shm_bell_efd_t egr;
    unsigned n_ingress, n_ranks;
    uint64_t sent[SHM_PIPE_MAX_RANKS]; /* last step enqueued on plan[r] */
    bool replay[SHM_PIPE_MAX_INGRESS]; /* the next req[w] message may be one the
                                          dead batcher handled but did not release */
    int32_t eng_pid[SHM_PIPE_MAX_RANKS]; /* engine incarnation whose KV we plan for */
    uint64_t last_preempt, last_hb;
    bool stalled;                      /* last step produced nothing to run */
    bool slot_wait;                    /* the next plan's slot is still named by a message */
    bool overlap;                      /* plan N+1 while N runs (bat_stage.h) */
    uint64_t done_seen;                /* highest step rank 0 answered: it loaded that plan */
    /* response cache (bat_stage.h) */
    struct bat_cache cache;
    bool cache_on;
    struct bst_pend *pend;
    uint32_t n_pend, cap_pend;
    uint8_t *cbuf;                     /* one value: reason, n, ids; scrubbed after use */
    uint32_t cbuf_cap;
    uint64_t last_expire;
    bool egr_owed;                     /* events on ev that egress has not been rung for */
};

static uint64_t mix64(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static bool stopping(const struct bst *b)
{
    return (b->cfg->stop && *b->cfg->stop) ||
           __atomic_load_n(&b->pipe->hdr->draining, __ATOMIC_ACQUIRE);
}

/* ------------------------------------------------------------ outbox -> ev */

static void cache_finish(struct bst *b, const struct bat_event *e, uint64_t now);

/* What a bat_event becomes on the ev ring (no side effects). */
static void ev_of(const struct bat_sched *s, const struct bat_event *e, struct shm_ev *o,
                  uint64_t now)
{
    memset(o, 0, sizeof(*o));
    o->cell = e->cell;
    o->id = e->id;
    o->n_gen = e->n_gen;
    switch (e->kind) {
    case BAT_EV_START:
        o->kind = SHM_EV_START;
        o->t_ns = now;
        break;
    case BAT_EV_TOKEN:
        o->kind = SHM_EV_TOKENS;
        o->t_ns = now; /* egress times its part from here (SHM_H_EGRESS) */
        break;
    case BAT_EV_FINISH:
        if (e->reason == BAT_FIN_STOP || e->reason == BAT_FIN_LENGTH ||
            e->reason == BAT_FIN_CANCELLED) {
            o->kind = SHM_EV_FINISH;
            o->reason = e->reason == BAT_FIN_STOP     ? SHM_FIN_STOP
                        : e->reason == BAT_FIN_LENGTH ? SHM_FIN_LENGTH
                                                      : SHM_FIN_CANCELLED;
        } else if (e->reason == BAT_FIN_ENGINE) { /* the engine kept failing it */
            o->kind = SHM_EV_ERROR;
            o->status = 500;
        } else { /* TIMEOUT (queue), NO_KV: busy, come back */
            o->kind = SHM_EV_ERROR;
            o->status = 503;
            o->retry_after = bat_sched_retry_after(s);
        }
        break;
    default: /* BAT_EV_ERROR, pushed by us */
        o->kind = SHM_EV_ERROR;
        o->status = e->reason;
        o->retry_after = e->token > 0 ? (uint32_t)e->token : 0;
        break;
    }
}

/* The side effect an event needs before egress may see it: the id into
 * the cell (TOKEN), the cell to egress (FINISH, ERROR). Idempotent, so a
 * retry after a full ring or a restart repeats it harmlessly. Returns
 * false when the event must be dropped (the cell is gone). */
static bool ev_prepare(struct bst *b, const struct bat_event *e)
{
    void *data;
    size_t size;
    int rc;

    switch (e->kind) {
    case BAT_EV_TOKEN:
        rc = shm_cell_bytes(&b->pool, e->cell, &data, &size);
        if (rc)
            return false; /* freed: cannot happen before our FINISH; drop */
        FAVO_ASSERT((uint64_t)e->at + 4 <= size); /* checked at submit */
        /* Plain store: the ev ring's release orders it before the event
         * (pipe inv 2). */
        memcpy((char *)data + e->at, &e->token, 4);
        return true;
    case BAT_EV_FINISH:
    case BAT_EV_ERROR:
        rc = shm_cell_give(&b->pool, e->cell, SHM_CELL_BATCHER, SHM_CELL_EGRESS);
        if (rc == 0 || rc == -EPERM)
            return true; /* -EPERM: given before a restart, event not sent */
        return false;    /* -ESTALE: egress got it and freed it already */
    default:
        return true;
    }
}

/* Publish what the outbox holds, in order, as far as the ev ring allows.
 * Returns the number of events handled. */
static int publish(struct bst *b, uint64_t now)
{
    uint32_t n, k = 0, sent = 0, room;
    const struct bat_event *pend = bat_sched_ob_peek(&b->s, &n);

    if (!n)
        return 0;
    /* One slot always stays free: the slot before p_tail then keeps the
     * last COMMITTED event even if we die with a reservation in flight
     * (a full-ring reservation would wrap onto it), which ob_dedupe reads
     * after a restart. */
    room = _shm_ring_free(&b->ev, n + 1); /* egress's c_head re-read only when short */
    room = room ? room - 1 : 0;
    while (k < n) {
        const struct bat_event *e = &pend[k];
        struct shm_ev *slot;

        if (sent == room)
            break; /* ring full: egress drains it; the rest waits */
        if (b->n_pend && (e->kind == BAT_EV_FINISH || e->kind == BAT_EV_ERROR))
            cache_finish(b, e, now); /* before the cell goes to egress */
        if (!ev_prepare(b, e)) {
            k++;
            continue;
        }
        slot = shm_ring_reserve(&b->ev);
        if (!slot)
            break;
        ev_of(&b->s, e, slot, now);
        k++;
        sent++;
    }
    if (sent)
        shm_ring_commit(&b->ev);
    if (k)
        bat_sched_ob_pop(&b->s, k);
    if (sent)
        b->egr_owed = true; /* rung by egr_ring, after the next plan is out */
    return (int)k;
}

/* Wake egress for what publish committed (once per burst; no syscall
 * while egress is awake). The loop calls this only after it has planned
 * and sent the step that a completion made possible: the engine waits for
 * that plan, egress's eventfd write need not delay it. */
static void egr_ring(struct bst *b)
{
    if (!b->egr_owed)
        return;
    b->egr_owed = false;
    shm_bell_efd_ring(&b->egr);
}

/* Restart: the last slot the dead batcher enqueued on ev may be one of the
 * outbox's pending events (it died between commit and pop); pop up to it. */
static void ob_dedupe(struct bst *b)
{
    uint32_t n;
    const struct bat_event *pend = bat_sched_ob_peek(&b->s, &n);
    const struct shm_ev *last;
    struct shm_ev want;

    if (!n)
        return;
    /* The producer handle's index is p_tail; the slot before it keeps the
     * last message committed (publish never lets a reservation reach it:
     * one slot stays free). */
    last = (const struct shm_ev *)(b->ev.slots +
                                   (size_t)((b->ev.local - 1) & b->ev.mask) * b->ev.slot_size);
    for (uint32_t x = 0; x < n; x++) {
        ev_of(&b->s, &pend[x], &want, 0);
        if (last->cell == want.cell && last->kind == want.kind && last->n_gen == want.n_gen) {
            favo_info("batcher: %u outbox events were published before the restart", x + 1);
            bat_sched_ob_pop(&b->s, x + 1);
            return;
        }
    }
}

/* ------------------------------------------------------------ requests */

static void push_error(struct bst *b, uint64_t cell, uint16_t status, uint32_t retry)
{
    struct bat_event e = { .cell = cell, .kind = BAT_EV_ERROR, .reason = status,
                           .token = (int32_t)retry };

    /* Room was checked before the message was taken (BST_OB_ROOM). */
    FAVO_ASSERT(bat_sched_ob_push(&b->s, &e) == 0);
    if (b->cfg->stats_w) {
        if (status == 413)
            shm_stats_add(b->cfg->stats_w, SHM_C_REJ_TOO_LARGE, 1);
        else if (status == 400)
            shm_stats_add(b->cfg->stats_w, SHM_C_REJ_BAD_REQUEST, 1);
        /* 503 queue full is counted by bat_sched_submit */
    }
}

/* Is an event for cell waiting in the outbox (an ERROR we pushed, or the
 * answer of a cache hit)? */
static bool event_pending(const struct bst *b, uint64_t cell)
{
    uint32_t n;
    const struct bat_event *pend = bat_sched_ob_peek(&b->s, &n);

    for (uint32_t i = 0; i < n; i++)
        if ((pend[i].kind == BAT_EV_ERROR || pend[i].kind == BAT_EV_FINISH) &&
            pend[i].cell == cell)
            return true;
    return false;
}

static void cancel_cell(struct bst *b, uint64_t id, uint64_t cell)
{
    uint64_t h;

    if (id && bat_sched_cancel(&b->s, id) == 0)
        return;
    if (bat_sched_find(&b->s, cell, &h) == 0)
        bat_sched_cancel(&b->s, h);
    /* unknown (finished, refused, stale): nothing to do */
}

/* ------------------------------------------------------------ response cache */

/* Zero the stack below the caller's frame, where the digest's frames lay
 * (SHA-256 implementations keep message words on the stack): no prompt
 * ids left behind (invariant 5). Per cacheable request, not per token. */
static __attribute__((noinline)) void stack_scrub(void)
{
    unsigned char pad[8 * 1024];

    explicit_bzero(pad, sizeof(pad));
    __asm__ volatile("" : : "r"(pad) : "memory");
}

/* The cache key of a request (bat_stage.h). -E2BIG: stop strings too long
 * to key (not cached); -EINVAL: spans outside the cell. */
static int cache_key_of(struct bst *b, const struct shm_req *r, const char *data, size_t size,
                        const struct eng_sample_params *sp, uint8_t key[BAT_CACHE_KEY])
{
    uint8_t extra[BST_CACHE_EXTRA];
    char model[SHM_SPEC_NAME_MAX];
    size_t at = 0, tl = strnlen(r->tenant_name, sizeof(r->tenant_name));
    struct bat_cache_key_in in;
    int rc;

    if (r->nstop > SHM_REQ_NSTOP)
        return -EINVAL;
    memcpy(extra, &tl, sizeof(tl));
    memcpy(extra + sizeof(tl), r->tenant_name, tl);
    at = sizeof(tl) + tl;
    for (unsigned i = 0; i < r->nstop; i++) {
        uint64_t l = r->stop[i].len;
        if ((uint64_t)r->stop[i].off + l > size)
            return -EINVAL;
        if (at + sizeof(l) + l > sizeof(extra)) {
            explicit_bzero(extra, at);
            return -E2BIG;
        }
        memcpy(extra + at, &l, sizeof(l));
        memcpy(extra + at + sizeof(l), data + r->stop[i].off, l);
        at += sizeof(l) + l;
    }
    memcpy(model, r->spec, sizeof(model));
    model[sizeof(model) - 1] = 0;
    memset(&in, 0, sizeof(in));
    in.tenant = r->tenant;
    in.model = model[0] ? model : b->pipe->hdr->model_id;
    in.tokens = (const int32_t *)(const void *)(data + r->tok_off);
    in.n_tokens = r->ntok;
    in.sp = sp;
    in.has_seed = (r->flags & SHM_REQ_F_SEED) != 0;
    in.max_tokens = r->max_tokens;
    in.extra = extra;
    in.extra_len = at;
    rc = bat_cache_key(&b->cache, &in, key);
    explicit_bzero(extra, at); /* stop strings are content */
    stack_scrub();
    return rc;
}

/* The events of a hit (START, TOKEN, FINISH), from the first not yet in
 * the outbox: a restart in the middle of them completes them (hit_resume). */
static void hit_push(struct bst *b, uint64_t cell, uint64_t v, unsigned from)
{
    uint32_t at = (uint32_t)v, cnt = (uint32_t)(v >> 32) & 0xffffu;
    uint16_t reason = (uint16_t)(v >> 48);
    int32_t last = 0;
    void *data;
    size_t size;

    if (shm_cell_bytes(&b->pool, cell, &data, &size) == 0 && (uint64_t)at + 4 <= size)
        memcpy(&last, (char *)data + at, 4);
    struct bat_event ev[3] = {
        { .cell = cell, .kind = BAT_EV_START },
        { .cell = cell, .kind = BAT_EV_TOKEN, .token = last, .n_gen = cnt, .at = at },
        { .cell = cell, .kind = BAT_EV_FINISH, .reason = reason, .n_gen = cnt },
    };
    for (unsigned i = from; i < 3; i++)
        FAVO_ASSERT(bat_sched_ob_push(&b->s, &ev[i]) == 0); /* BST_OB_ROOM */
    explicit_bzero(&ev, sizeof(ev));
    last = 0;
}

/* After a restart, before anything is published: a hit whose events the
 * dead batcher had only partly pushed (they are all still in the outbox:
 * nothing is published between them) gets the rest. The replayed SUBMIT
 * then finds its FINISH pending and is skipped. */
static void hit_resume(struct bst *b)
{
    uint64_t *user = bat_sched_user(&b->s);
    uint64_t cell = user[BST_USER_HIT];
    const struct bat_event *pend;
    unsigned have = 0;
    uint32_t n;

    if (!cell)
        return;
    pend = bat_sched_ob_peek(&b->s, &n);
    for (uint32_t i = 0; i < n; i++)
        if (pend[i].cell == cell && (pend[i].kind == BAT_EV_START ||
                                     pend[i].kind == BAT_EV_TOKEN ||
                                     pend[i].kind == BAT_EV_FINISH))
            have++;
    void *data;
    size_t size;
    if (have < 3 && shm_cell_get(&b->pool, cell, SHM_CELL_BATCHER, &data, &size) == 0) {
        favo_info("batcher: a cache hit was cut by the restart: %u of its 3 events added",
                  3 - have);
        hit_push(b, cell, user[BST_USER_HITV], have);
    }
    user[BST_USER_HIT] = 0;
}

/* A hit: the cached ids into the cell, START, TOKEN (all of them) and
 * FINISH into the outbox (room checked before the message was taken). */
static bool cache_hit(struct bst *b, const struct shm_req *r, char *data,
                      const uint8_t key[BAT_CACHE_KEY], uint64_t now)
{
    int n = bat_cache_get(&b->cache, key, now, b->cbuf, b->cbuf_cap);
    uint32_t reason, cnt, at = r->tok_off + 4u * r->ntok;

    if (n < 8)
        return false; /* -ENOENT: a miss */
    memcpy(&reason, b->cbuf, 4);
    memcpy(&cnt, b->cbuf + 4, 4);
    if (cnt == 0 || cnt > r->max_tokens || (size_t)n != 8 + 4ull * cnt ||
        (reason != BAT_FIN_STOP && reason != BAT_FIN_LENGTH)) {
        explicit_bzero(b->cbuf, (size_t)n);
        return false; /* cannot be: the key covers max_tokens */
    }
    /* The ids fit: submit checked tok_off + 4 * (ntok + max_tokens) <= resp_off. */
    memcpy(data + at, b->cbuf + 8, 4ull * cnt);
    explicit_bzero(b->cbuf, (size_t)n);
    /* Remembered in the arena before the events: see hit_resume. */
    uint64_t *user = bat_sched_user(&b->s);
    user[BST_USER_HITV] = (at + 4ull * (cnt - 1)) | (uint64_t)cnt << 32 | (uint64_t)reason << 48;
    user[BST_USER_HIT] = r->cell;
    hit_push(b, r->cell, user[BST_USER_HITV], 0);
    return true;
}

static void pend_add(struct bst *b, const struct shm_req *r, const uint8_t key[BAT_CACHE_KEY])
{
    struct bst_pend *p;

    if (b->n_pend >= b->cap_pend)
        return; /* more misses in flight than requests the scheduler holds: not cached */
    p = &b->pend[b->n_pend++];
    p->cell = r->cell;
    p->ttl = r->cache_ttl;
    p->tok_off = r->tok_off;
    p->ntok = r->ntok;
    p->max_tokens = r->max_tokens;
    memcpy(p->key, key, BAT_CACHE_KEY);
}

/* Before a FINISH or ERROR is published: a remembered miss that ended
 * complete (STOP, LENGTH) goes into the cache, read from its cell. */
static void cache_finish(struct bst *b, const struct bat_event *e, uint64_t now)
{
    struct bst_pend *p = NULL;
    void *data;
    size_t size;

    for (uint32_t i = 0; i < b->n_pend; i++)
        if (b->pend[i].cell == e->cell) {
            p = &b->pend[i];
            break;
        }
    if (!p)
        return;
    if (e->kind == BAT_EV_FINISH && (e->reason == BAT_FIN_STOP || e->reason == BAT_FIN_LENGTH) &&
        e->n_gen > 0 && e->n_gen <= p->max_tokens && 8 + 4ull * e->n_gen <= b->cbuf_cap &&
        shm_cell_bytes(&b->pool, e->cell, &data, &size) == 0 &&
        (uint64_t)p->tok_off + 4ull * ((uint64_t)p->ntok + e->n_gen) <= size) {
        uint32_t reason = e->reason, n = e->n_gen;
        memcpy(b->cbuf, &reason, 4);
        memcpy(b->cbuf + 4, &n, 4);
        memcpy(b->cbuf + 8, (char *)data + p->tok_off + 4ull * p->ntok, 4ull * n);
        (void)bat_cache_put(&b->cache, p->key, now, p->ttl, b->cbuf, 8 + 4ull * n);
        explicit_bzero(b->cbuf, 8 + 4ull * n);
    }
    explicit_bzero(p, sizeof(*p));
    *p = b->pend[--b->n_pend];
    explicit_bzero(&b->pend[b->n_pend], sizeof(*p));
}

static void submit(struct bst *b, unsigned w, const struct shm_req *r, uint64_t now,
                   bool replay)
{
    struct bat_req q;
    void *data;
    size_t size;
    uint64_t id, ids_end;
    uint32_t retry = 0;
    int rc;

    rc = shm_cell_get(&b->pool, r->cell, SHM_CELL_BATCHER, &data, &size);
    if (rc) {
        /* Not ours (or gone): a replayed SUBMIT we already answered, or a
         * broken ingress. Nothing we may touch. */
        favo_debug("batcher: req[%u] submit for a cell we do not own (%d)", w, rc);
        return;
    }
    /* Messages are released one by one after handling, so only the first
     * one after a restart can be a replay: look it up (O(slots)) then only. */
    if (replay && (bat_sched_find(&b->s, r->cell, NULL) == 0 || event_pending(b, r->cell)))
        return; /* taken before the restart */
    if ((r->resp_off & 63u) || (uint64_t)r->resp_off + SHM_PIPE_REQ_COPY > size) {
        favo_warn("batcher: req[%u] resp_off %u outside the cell (%zu bytes): cell freed "
                  "unanswered", w, r->resp_off, size);
        shm_cell_free(&b->pool, r->cell, SHM_CELL_BATCHER);
        return;
    }
    ids_end = (uint64_t)r->tok_off + 4ull * ((uint64_t)r->ntok + r->max_tokens);
    if ((r->tok_off & 3u) || r->ntok == 0 || r->max_tokens == 0 || ids_end > r->resp_off ||
        r->worker != w || r->prio >= BAT_PRIO_N) {
        favo_warn("batcher: req[%u] bad descriptor (tok_off %u ntok %u max_tokens %u "
                  "resp_off %u worker %u prio %u): 400", w, r->tok_off, r->ntok, r->max_tokens,
                  r->resp_off, r->worker, r->prio);
        push_error(b, r->cell, 400, 0);
        return;
    }
    memset(&q, 0, sizeof(q));
    q.tenant = r->tenant;
    q.prio = r->prio;
    q.n_prompt = r->ntok;
    q.max_tokens = r->max_tokens;
    q.cell = r->cell;
    q.tok_off = r->tok_off;
    q.sp.temperature = r->temperature;
    q.sp.top_k = r->top_k;
    q.sp.top_p = r->top_p;
    q.sp.min_p = r->min_p;
    q.sp.freq_penalty = r->frequency_penalty;
    q.sp.presence_penalty = r->presence_penalty;
    q.sp.seed = (r->flags & SHM_REQ_F_SEED) ? (uint64_t)r->seed : mix64(r->recv_ns ^ r->cell);
    q.sp.n_logprobs = shm_pipe_lp_alts(r->logprobs, r->top_logprobs);
    if (q.sp.n_logprobs && (uint64_t)r->resp_off + SHM_PIPE_REQ_COPY +
                               shm_pipe_lp_bytes(r->max_tokens, q.sp.n_logprobs) > size) {
        /* the records would overlap egress's area: ingress did not reserve them */
        favo_warn("batcher: req[%u] logprob records do not fit the cell: 413", w);
        push_error(b, r->cell, 413, 0);
        return;
    }
    uint8_t key[BAT_CACHE_KEY];
    bool cacheable = b->cache_on && r->cache_ttl > 0 && r->cache_ttl <= BAT_CACHE_TTL_MAX &&
                     r->max_tokens <= BST_CACHE_IDS &&
                     bat_cache_deterministic(&q.sp, (r->flags & SHM_REQ_F_SEED) != 0) &&
                     cache_key_of(b, r, data, size, &q.sp, key) == 0;
    if (cacheable) {
        if (cache_hit(b, r, data, key, now)) {
            explicit_bzero(key, sizeof(key));
            return;
        }
        if (b->cfg->stats_w)
            shm_stats_add(b->cfg->stats_w, SHM_C_RESPONSE_CACHE_MISSES, 1);
    }
    /* Queue time (the histogram, the timeout, aging) counts from ingress's
     * receipt of the whole request, not from our dequeue: what the client
     * waited. The same monotonic clock in every process. */
    uint64_t enq = r->recv_ns && r->recv_ns <= now ? r->recv_ns : now;
    rc = bat_sched_submit(&b->s, &q, enq, &id, &retry);
    if (cacheable && rc == 0)
        pend_add(b, r, key);
    explicit_bzero(key, sizeof(key));
    if (rc == 0)
        return;
    if (rc == -EBUSY)
        push_error(b, r->cell, 503, retry ? retry : 1);
    else if (rc == -E2BIG)
        push_error(b, r->cell, 413, 0);
    else
        push_error(b, r->cell, 400, 0);
}

static bool ob_room(const struct bst *b)
{
    uint32_t n;

    bat_sched_ob_peek(&b->s, &n);
    return n + BST_OB_ROOM <= BAT_OB_EXTRA;
}

static int drain_req(struct bst *b, uint64_t now)
{
    int got = 0;

    for (unsigned w = 0; w < b->n_ingress; w++) {
        const struct shm_req *m;

        while (ob_room(b) && (m = shm_ring_peek_one(&b->req[w]))) {
            struct shm_req r;

            bool replay = b->replay[w];

            b->replay[w] = false;
            memcpy(&r, m, sizeof(r));
            if (r.magic != SHM_REQ_MAGIC)
                favo_warn("batcher: req[%u] bad magic 0x%08x: ignored", w, r.magic);
            else if (r.kind == SHM_REQ_SUBMIT)
                submit(b, w, &r, now, replay);
            else if (r.kind == SHM_REQ_CANCEL)
                cancel_cell(b, 0, r.cell);
            else
                favo_warn("batcher: req[%u] unknown kind %u: ignored", w, r.kind);
            shm_ring_release(&b->req[w], 1); /* consume, then release */
            bat_sched_user(&b->s)[BST_USER_HIT] = 0; /* a hit's events are all in */
            got++;
        }
    }
    return got;
}

static int drain_ctl(struct bst *b)
{
    const struct shm_ctl *m;
    int got = 0;

    while ((m = shm_ring_peek_one(&b->ctl))) {
        if (m->kind == 1)
            cancel_cell(b, m->id, m->cell);
        shm_ring_release(&b->ctl, 1);
        got++;
    }
    return got;
}

/* ------------------------------------------------------------ plans */

/* The gauges as they are now (step() sets them before the engines run;
 * after complete() the finished requests are gone). */
static void stats_gauges(struct bst *b)
{
    struct shm_stats_writer *w = b->cfg->stats_w;
    struct bat_sched_info in;

    if (!w)
        return;
    bat_sched_info(&b->s, &in);
    shm_stats_begin(w);
    shm_stats_gauge_set(w, SHM_G_REQUESTS_RUNNING, in.n_running);
    shm_stats_gauge_set(w, SHM_G_REQUESTS_WAITING, in.n_waiting);
    shm_stats_gauge_set(w, SHM_G_KV_CACHE_USAGE, in.kv_total ? (double)in.kv_used / in.kv_total : 0);
    shm_stats_end(w);
}

static void stats_after_step(struct bst *b, const struct bat_sched_info *in)
{
    if (b->cfg->stats_w && in->n_preempt > b->last_preempt)
        shm_stats_add(b->cfg->stats_w, SHM_C_PREEMPTIONS, in->n_preempt - b->last_preempt);
    b->last_preempt = in->n_preempt;
}

static void copy_plan(struct bat_plan *dst, const struct bat_plan *src);

/* Does plan p need the engines? Sequences to run, or blocks to zero: a
 * plan with only freed[] (the last sequences cancelled) goes too, or those
 * blocks would keep their KV until reused (invariant 5). */
static bool plan_for_engines(const struct bat_plan *p)
{
    return p->n_seqs || p->n_freed;
}

/* Send plans [from, to] (those still in their slots that need the
 * engines) to every rank that has not got them, in step order: rank 0's
 * slot holds each (step() wrote it there); the others get a copy first -
 * again after a restart, which may have cut the first copy short. A rank
 * that has not been sent the step does not read that slot, so the copy is
 * safe. A full ring stops that rank's sending (the rest later, in order). */
static void send_flight(struct bst *b, uint64_t from, uint64_t to)
{
    for (unsigned r = 0; r < b->n_ranks; r++)
        for (uint64_t step = from ? from : 1; step <= to; step++) {
            unsigned slot = (unsigned)(step % SHM_PIPE_PLAN_SLOTS);
            struct bat_plan *p = shm_pipe_plan(b->pipe, 0, slot);
            struct shm_plan_msg m = { .slot = slot, .n_seqs = p->n_seqs, .step = step };

            if (p->step != step || !plan_for_engines(p) || b->sent[r] >= step)
                continue;
            if (r > 0)
                copy_plan(shm_pipe_plan(b->pipe, r, slot), p);
            if (shm_ring_enqueue(&b->plan[r], &m))
                break;
            b->sent[r] = step;
            shm_bell_ec_ring(&b->eng[r]);
        }
}

/* Has every rank been sent plan `step`? */
static bool sent_all(const struct bst *b, uint64_t step)
{
    for (unsigned r = 0; r < b->n_ranks; r++)
        if (b->sent[r] < step)
            return false;
    return true;
}

static void copy_plan(struct bat_plan *dst, const struct bat_plan *src)
{
    const char *s = (const char *)src;
    char *d = (char *)dst;

    FAVO_ASSERT(dst->off_seqs == src->off_seqs && dst->off_tables == src->off_tables &&
                dst->off_freed == src->off_freed); /* same bat_plan_init */
    memcpy(d + src->off_seqs, s + src->off_seqs,
           (size_t)src->n_seqs * sizeof(struct bat_plan_seq));
    memcpy(d + src->off_tables, s + src->off_tables, (size_t)src->n_tables * 4);
    memcpy(d + src->off_freed, s + src->off_freed, (size_t)src->n_freed * 4);
    memcpy(d, s, sizeof(*src)); /* header last */
}

/* May plan slot `slot` be written? Not while a rank has not released a
 * message naming it: after plans were voided (engine restart) an older
 * message can still wait in a ring, and its engine would read the slot -
 * unless it is rank 0's message for a step it answered already (it copied
 * the plan before running it; a replay after its restart finds a newer
 * step there and drops the message as stale). That exception is what lets
 * overlap plan N+1 into N-1's slot right after done(N-1), before rank 0
 * released N-1's message. Other ranks do not answer: their messages count
 * until released, so a lagging rank holds the batcher back. */
static bool slot_free(struct bst *b, unsigned slot)
{
    for (unsigned r = 0; r < b->n_ranks; r++) {
        const shm_ring_t *q = &b->plan[r];
        uint32_t u = shm_ring_count(q);
        for (uint32_t k = 1; k <= u && k <= q->mask + 1; k++) {
            const struct shm_plan_msg *m = _shm_ring_slot(q, q->local - k, q->slot_size);
            if (m->slot == slot && !(r == 0 && m->step <= b->done_seen))
                return false;
        }
    }
    return true;
}

static int do_step(struct bst *b, uint64_t now)
{
    struct bat_sched_info in;
    unsigned slot;
    struct bat_plan *p;
    int rc;

    bat_sched_info(&b->s, &in);
    slot = (unsigned)((in.step + 1) % SHM_PIPE_PLAN_SLOTS);
    b->slot_wait = !slot_free(b, slot);
    if (b->slot_wait)
        return 0; /* the loop looks again within 1 ms */
    p = shm_pipe_plan(b->pipe, 0, slot);
    rc = bat_sched_step_ob(&b->s, now, p);
    if (rc < 0) {
        FAVO_ASSERT(rc == -EAGAIN); /* cfg checked at start */
        return 0;
    }
    bat_sched_info(&b->s, &in);
    stats_after_step(b, &in);
    if (p->n_seqs == 0) {
        /* Only cancels/timeouts (or nothing could start): no engine work
         * but zeroing freed blocks; the loop completes it once its events
         * are out and it is the oldest in flight (in_flight). */
        b->stalled = true;
        if (p->n_freed)
            send_flight(b, in.done_step + 1, p->step);
        return 1;
    }
    b->stalled = false;
    if (b->cfg->stats_w)
        shm_stats_add(b->cfg->stats_w, SHM_C_BATCH_STEPS, 1);
    send_flight(b, in.done_step + 1, p->step);
    return 1;
}

/* The plans in flight (one, or two with overlap) go to every rank that
 * has not got them (its ring was full, or we restarted). The oldest, when
 * it needs no engine, is completed here once the outbox is out. */
static int in_flight(struct bst *b, const struct bat_sched_info *in, uint64_t now)
{
    uint64_t oldest = in->done_step + 1;
    struct bat_plan *p = shm_pipe_plan(b->pipe, 0, (unsigned)(oldest % SHM_PIPE_PLAN_SLOTS));

    send_flight(b, oldest, in->step);
    if (plan_for_engines(p))
        return 0; /* its done message completes it */
    if (in->n_outbox)
        return 0;
    int rc = bat_sched_complete_ob(&b->s, p, NULL, now);
    FAVO_ASSERT(rc >= 0); /* the outbox is empty and p is the latest */
    stats_gauges(b);
    return 1;
}

/* An engine rank that went down or came back as another process lost the
 * KV cache every running sequence depends on: void the plan in flight and
 * re-prefill everyone (bat_sched_reset_kv). Runs every loop and after each
 * done message is peeked, before it is applied (drain_done). */
static void check_engines(struct bst *b)
{
    uint64_t *user = bat_sched_user(&b->s) + BST_USER_ENG;
    int32_t cur[SHM_PIPE_MAX_RANKS];
    bool changed = false;

    for (unsigned r = 0; r < b->n_ranks; r++) {
        cur[r] = shm_pipe_stage_up(b->pipe, SHM_PIPE_ENGINE, r)
                     ? __atomic_load_n(&b->pipe->hdr->up_pid[SHM_PIPE_ENGINE][r], __ATOMIC_ACQUIRE)
                     : 0;
        changed |= cur[r] != b->eng_pid[r];
    }
    if (!changed)
        return;
    /* Every change counts, 0 -> pid too: an engine we never saw up may
     * have run plans (and died) while we looked elsewhere, so the KV state
     * the arena describes cannot be credited to the one up now. At a first
     * start nothing has run: the reset is then a no-op. */
    struct bat_sched_info in;
    bat_sched_info(&b->s, &in);
    bool in_flight = in.step > in.done_step;
    int n = bat_sched_reset_kv(&b->s);
    if (n > 0 || in_flight)
        favo_warn("batcher: engine ranks changed (restart): plan in flight %s, %d sequences "
                  "re-prefill", in_flight ? "voided" : "none", n);
    else
        favo_info("batcher: engine ranks changed (up or down), nothing to recompute");
    if (b->cfg->stats_w && n > 0)
        shm_stats_add(b->cfg->stats_w, SHM_C_PREEMPTIONS, (uint64_t)n);
    b->last_preempt += (uint64_t)n;
    /* Remembered in the arena after the reset: a crash in between makes
     * the next batcher reset again, which is harmless. */
    for (unsigned r = 0; r < b->n_ranks; r++) {
        b->eng_pid[r] = cur[r];
        user[r] = (uint64_t)(uint32_t)cur[r];
    }
}

/* A non-empty plan `step` that some rank has not been sent: one voided by
 * an engine restart before it reached every rank. It is sent anyway (the
 * results are ignored), so every rank sees the same plans in the same
 * order and tensor-parallel ranks never wait for each other on a plan only
 * some of them got. */
static bool plan_unsent(struct bst *b, uint64_t step)
{
    /* Overlap voids two plans: the one before too. */
    for (uint64_t st = step > 1 ? step - 1 : 1; st <= step; st++) {
        const struct bat_plan *p =
            shm_pipe_plan(b->pipe, 0, (unsigned)(st % SHM_PIPE_PLAN_SLOTS));
        if (p->step == st && plan_for_engines(p) && !sent_all(b, st))
            return true;
    }
    return false;
}

/* Logprob records of a completed plan (shm_pipe.h): entry i's sample is
 * generated id n_history, its record goes to the end of the cell. Written
 * before bat_sched_complete_ob makes the TOKEN events (pipe inv 2) and
 * only into cells the batcher still owns; an entry the scheduler then
 * drops (cancelled) leaves a record egress never reads. */
static void lp_write(struct bst *b, struct bat_plan *p, const struct bat_result *res)
{
    const struct bat_plan_seq *ps = bat_plan_seqs(p);

    for (uint32_t i = 0; i < p->n_seqs && i < b->sc.max_seqs; i++) {
        uint32_t n_alt = ps[i].sp.n_logprobs, k = ps[i].n_history;
        struct shm_lp_rec *rec;
        void *data;
        size_t size;

        if (!n_alt || ps[i].no_sample || res[i].token < 0 || n_alt > SHM_PIPE_LP_MAX_ALTS ||
            shm_cell_get(&b->pool, ps[i].cell, SHM_CELL_BATCHER, &data, &size))
            continue;
        /* submit checked resp_off + the records <= size; the ids end lower */
        uint64_t at = shm_pipe_lp_at(size, n_alt, k);
        if ((uint64_t)ps[i].tok_off + 4ull * ((uint64_t)ps[i].n_prompt + k + 1) > at ||
            at > size)
            continue;
        /* Straight into the cell (at is 8-aligned: the records end the
         * cell), plain stores: the ev ring's release orders them before the
         * event. The null backend computes no logprobs: 0, no alternatives. */
        rec = (struct shm_lp_rec *)((char *)data + at);
        rec[0] = (struct shm_lp_rec){ res[i].token, res[i].has_lp ? res[i].logprob : 0.0f };
        for (uint32_t j = 0; j < n_alt; j++)
            rec[1 + j] = res[i].has_lp && j < res[i].n_top
                             ? (struct shm_lp_rec){ res[i].top[j].id, res[i].top[j].logprob }
                             : (struct shm_lp_rec){ -1, 0.0f };
    }
}

static int drain_done(struct bst *b, uint64_t now)
{
    const struct shm_plan_msg *m;
    struct bat_sched_info in;
    uint32_t n;
    int got = 0;

    for (;;) {
        bat_sched_ob_peek(&b->s, &n);
        if (n)
            return got; /* complete needs an empty outbox: publish first */
        m = shm_ring_peek_one(&b->done);
        if (!m)
            return got;
        /* The up words are read AFTER the message: an engine sets its word
         * before it takes a plan, and the ring's acquire orders its done
         * after that, so a new incarnation's answer is always seen as one
         * (checking only before the peek races with the restart). */
        check_engines(b);
        bat_sched_info(&b->s, &in);
        if (m->step <= in.step && m->step > b->done_seen)
            b->done_seen = m->step; /* rank 0 has loaded that plan (slot_free) */
        /* The oldest plan in flight (plans complete in order, sched inv 5). */
        if (m->slot < SHM_PIPE_PLAN_SLOTS && m->step == in.done_step + 1 && m->step <= in.step &&
            m->step % SHM_PIPE_PLAN_SLOTS == m->slot) {
            lp_write(b, shm_pipe_plan(b->pipe, 0, m->slot), shm_pipe_results(b->pipe, m->slot));
            int rc = bat_sched_complete_ob(&b->s, shm_pipe_plan(b->pipe, 0, m->slot),
                                           shm_pipe_results(b->pipe, m->slot), now);
            if (rc < 0)
                favo_err("batcher: complete of step %llu failed (%d)",
                         (unsigned long long)m->step, rc);
            /* the results (sampled ids, logprob alternatives) are in the
             * cells and events now: none stays behind (invariant 5) */
            explicit_bzero(shm_pipe_results(b->pipe, m->slot),
                           (size_t)FAVO_MIN(m->n_seqs, b->sc.max_seqs) * sizeof(struct bat_result));
            stats_gauges(b);
        } else if (m->step > in.step) {
            favo_warn("batcher: done for step %llu, never planned (at %llu): ignored",
                      (unsigned long long)m->step, (unsigned long long)in.step);
        } /* else: a replay of a step already completed */
        shm_ring_release(&b->done, 1);
        got++;
    }
}

/* ------------------------------------------------------------ start */

/* Is there, at a 64-aligned offset of this cell, the shm_req copy ingress
 * wrote for it (magic, SUBMIT, naming this very cell at that resp_off)? */
static bool req_copy_in(const char *data, size_t size, uint64_t ref)
{
    for (size_t off = 0; off + sizeof(struct shm_req) <= size; off += 64) {
        struct shm_req r;
        uint32_t magic;

        memcpy(&magic, data + off, 4);
        if (magic != SHM_REQ_MAGIC)
            continue;
        memcpy(&r, data + off, sizeof(r));
        if (r.kind == SHM_REQ_SUBMIT && r.cell == ref && r.resp_off == off)
            return true;
    }
    return false;
}

/* The arena was left inside a step by a crash: start a fresh one, answer
 * every request we held (a cell owned by the batcher with its shm_req copy
 * in it) with 503 + Retry-After, and free any other cell we held. */
static int salvage(struct bst *b, void *mem, size_t len)
{
    const struct shm_cell_pool_hdr *ph = b->pool.hdr;
    unsigned n503 = 0, nfree = 0;
    int rc;

    rc = bat_sched_salvage(&b->s, mem, len, &b->cfg->sched, b->pipe->hdr->generation);
    if (rc) {
        favo_err("batcher: cannot lay out a fresh scheduler arena (%d)", rc);
        return rc;
    }
    for (unsigned c = 0; c < ph->nclasses; c++)
        for (uint32_t i = 0; i < ph->classes[c].ncells; i++) {
            const struct shm_cell_desc *d =
                (const struct shm_cell_desc *)(b->pool.base + ph->classes[c].desc_off) + i;
            uint32_t gen = __atomic_load_n(&d->gen, __ATOMIC_ACQUIRE);
            uint64_t ref = shm_cell_ref(gen, c, i);
            struct bat_event e = { .cell = ref, .kind = BAT_EV_ERROR, .reason = 503,
                                   .token = 1 };
            void *data;
            size_t size;

            if (__atomic_load_n(&d->owner, __ATOMIC_ACQUIRE) != SHM_CELL_BATCHER ||
                shm_cell_get(&b->pool, ref, SHM_CELL_BATCHER, &data, &size))
                continue;
            if (req_copy_in(data, size, ref) && bat_sched_ob_push(&b->s, &e) == 0) {
                n503++;
                continue;
            }
            shm_cell_free(&b->pool, ref, SHM_CELL_BATCHER);
            nfree++;
        }
    favo_warn("batcher: the scheduler arena was left inside a step by a crash: started "
              "afresh, %u requests answered 503, %u cells freed", n503, nfree);
    return 0;
}

/* The response cache region: re-attach, or format a fresh (or broken)
 * one; the pending-miss table and the value buffer (allocated once). */
static int cache_attach(struct bst *b)
{
    size_t len;
    void *mem = shm_pipe_cache(b->pipe, &len);
    int rc;

    if (!mem)
        return 0; /* --cache-mb 0 */
    rc = bat_cache_attach(&b->cache, mem, len);
    if (rc == -EBADMSG)
        favo_warn("batcher: the response cache was left inconsistent (a crash inside an "
                  "update): scrubbed and laid out afresh");
    if (rc == -EPROTO || rc == -EBADMSG)
        rc = bat_cache_init(&b->cache, mem, len, 8 + 4 * BST_CACHE_IDS);
    if (rc) {
        favo_err("batcher: response cache region of %zu bytes: %d; caching off", len, rc);
        return 0;
    }
    b->cache.stats = b->cfg->stats_w;
    b->cap_pend = b->sc.max_queue + b->sc.max_seqs + 64;
    b->pend = calloc(b->cap_pend, sizeof(*b->pend));
    b->cbuf_cap = 8 + 4 * BST_CACHE_IDS;
    b->cbuf = calloc(1, b->cbuf_cap);
    if (!b->pend || !b->cbuf)
        return -ENOMEM;
    struct bat_cache_stats cs;
    bat_cache_get_stats(&b->cache, &cs);
    favo_info("batcher: response cache: %u entries of up to %u ids, %u live",
              cs.n_ent, BST_CACHE_IDS, cs.n_live);
    b->cache_on = true;
    return 0;
}

static void cache_close(struct bst *b)
{
    if (b->cache_on)
        bat_cache_close(&b->cache);
    if (b->pend)
        explicit_bzero(b->pend, (size_t)b->cap_pend * sizeof(*b->pend));
    if (b->cbuf)
        explicit_bzero(b->cbuf, b->cbuf_cap);
    free(b->pend);
    free(b->cbuf);
    b->pend = NULL;
    b->cbuf = NULL;
    b->cache_on = false;
}

/* Once a second: scrub expired cache entries. */
static void housekeeping(struct bst *b, uint64_t now)
{
    if (b->cache_on && now - b->last_expire >= BST_EXPIRE_NS) {
        b->last_expire = now;
        bat_cache_expire(&b->cache, now);
    }
}

static int attach_all(struct bst *b)
{
    const struct shm_pipe *p = b->pipe;
    const struct shm_pipe_hdr *h = p->hdr;
    struct bat_sched_info in;
    void *mem;
    size_t len;
    uint32_t mbps;
    int rc;

    mem = shm_pipe_cells(p, &len);
    if ((rc = shm_cell_pool_attach(&b->pool, mem, len, h->generation, SHM_CELL_ROLE_USER,
                                   SHM_PIPE_RET_BATCHER)))
        return rc;
    mem = shm_pipe_sched(p, &len);
    rc = bat_sched_attach(&b->s, mem, len);
    if (rc == -ESTALE)
        rc = salvage(b, mem, len);
    if (rc == -EPROTO) {
        rc = bat_sched_init(&b->s, mem, len, &b->cfg->sched, h->generation);
        if (rc) {
            favo_err("batcher: scheduler arena: %zu bytes do not fit the config (%d)", len, rc);
            return rc;
        }
    } else if (rc) {
        favo_err("batcher: cannot re-attach the scheduler arena (%d)", rc);
        return rc;
    }
    b->s.stats = b->cfg->stats_w;
    b->s.no_outcomes = true; /* egress counts each request's final status */
    bat_sched_cfg_get(&b->s, &b->sc);
    if (bat_sched_plan_size(&b->sc) > h->cfg.plan_bytes || b->sc.max_seqs > h->cfg.max_seqs ||
        h->cfg.result_size != sizeof(struct bat_result)) {
        favo_err("batcher: pipe plan slots (%llu bytes, %u results of %u) too small for the "
                 "scheduler (%zu bytes, %u seqs)", (unsigned long long)h->cfg.plan_bytes,
                 h->cfg.max_seqs, h->cfg.result_size, bat_sched_plan_size(&b->sc),
                 b->sc.max_seqs);
        return -EINVAL;
    }
    b->n_ingress = h->cfg.n_ingress;
    b->n_ranks = h->cfg.n_ranks;
    bat_sched_info(&b->s, &in);
    b->overlap = !b->cfg->no_overlap; /* serve: --no-overlap / FAVO_NO_OVERLAP */
    /* Only done messages we see ourselves count (a step the arena says is
     * done may have been voided unseen by the engine: bat_sched_reset_kv). */
    b->done_seen = 0;
    mbps = bat_kv_blocks_for(b->sc.max_ctx);
    /* Lay out the plan slots, but leave one already laid out for this
     * scheduler alone: after a restart it may hold the plan in flight, or
     * one a slower rank is still reading. */
    struct bat_plan tmpl;
    if ((rc = bat_plan_init(&tmpl, h->cfg.plan_bytes, b->sc.max_seqs, mbps, b->sc.n_blocks)))
        return rc; /* writes the header only */
    for (unsigned r = 0; r < b->n_ranks; r++)
        for (unsigned sl = 0; sl < SHM_PIPE_PLAN_SLOTS; sl++) {
            struct bat_plan *pl = shm_pipe_plan(p, r, sl);
            if (pl->magic == BAT_PLAN_MAGIC && pl->cap_seqs == tmpl.cap_seqs &&
                pl->cap_tables == tmpl.cap_tables && pl->cap_freed == tmpl.cap_freed &&
                pl->off_seqs == tmpl.off_seqs && pl->off_tables == tmpl.off_tables &&
                pl->off_freed == tmpl.off_freed && pl->n_seqs <= pl->cap_seqs &&
                pl->n_tables <= pl->cap_tables && pl->n_freed <= pl->cap_freed)
                continue;
            if ((rc = bat_plan_init(pl, h->cfg.plan_bytes, b->sc.max_seqs, mbps, b->sc.n_blocks)))
                return rc;
        }
    for (unsigned w = 0; w < b->n_ingress; w++) {
        if ((rc = shm_pipe_ring_req(p, w, SHM_RING_CONSUMER, &b->req[w])))
            return rc;
        b->replay[w] = true;
    }
    for (unsigned r = 0; r < b->n_ranks; r++) {
        if ((rc = shm_pipe_ring_plan(p, r, SHM_RING_PRODUCER, &b->plan[r])) ||
            (rc = shm_pipe_bell_eng(p, r, &b->eng[r])))
            return rc;
        /* What the last message on this ring was (restart: was the plan
         * in flight sent?). A fresh ring reads zeros: step 0, never real. */
        const struct shm_plan_msg *last =
            (const struct shm_plan_msg *)(b->plan[r].slots +
                                          (size_t)((b->plan[r].local - 1) & b->plan[r].mask) *
                                              b->plan[r].slot_size);
        b->sent[r] = last->step;
    }
    if ((rc = shm_pipe_ring_ctl(p, SHM_RING_CONSUMER, &b->ctl)) ||
        (rc = shm_pipe_ring_done(p, SHM_RING_CONSUMER, &b->done)) ||
        (rc = shm_pipe_ring_ev(p, SHM_RING_PRODUCER, &b->ev)) ||
        (rc = shm_pipe_bell_bat(p, &b->bell)) ||
        (rc = shm_pipe_bell_egr(p, b->cfg->egr_bell_efd, false, &b->egr)))
        return rc;
    if ((rc = cache_attach(b)))
        return rc;
    ob_dedupe(b);
    hit_resume(b);
    b->last_preempt = in.n_preempt;
    /* The engine incarnations the arena's KV state belongs to, as the
     * previous batcher recorded them: one that restarted while we were
     * down is noticed by the first check_engines. */
    for (unsigned r = 0; r < b->n_ranks; r++)
        b->eng_pid[r] = (int32_t)bat_sched_user(&b->s)[BST_USER_ENG + r];
    favo_info("batcher: %s at step %llu: %u waiting, %u running, %u events unpublished, "
              "plans in flight: %llu, overlap %s", in.step ? "resumed" : "started",
              (unsigned long long)in.step, in.n_waiting, in.n_running, in.n_outbox,
              (unsigned long long)(in.step - in.done_step), b->overlap ? "on" : "off");
    return 0;
}

/* Anything a neighbour left for us (after the bell snapshot). */
static bool rings_have_work(struct bst *b)
{
    for (unsigned w = 0; w < b->n_ingress; w++)
        if (shm_ring_available(&b->req[w]))
            return true;
    return shm_ring_available(&b->ctl) || shm_ring_available(&b->done);
}

/* May the next plan be made now? With none in flight (and every voided
 * one sent); with overlap also with one in flight that every rank has
 * been sent, when the scheduler needs none of its sequences
 * (bat_sched_ahead_ok). */
static bool step_now(struct bst *b, const struct bat_sched_info *in)
{
    if (in->step == in->done_step)
        return !plan_unsent(b, in->step);
    if (!b->overlap || in->step != in->done_step + 1)
        return false;
    const struct bat_plan *p =
        shm_pipe_plan(b->pipe, 0, (unsigned)(in->step % SHM_PIPE_PLAN_SLOTS));
    return p->step == in->step && p->n_seqs && sent_all(b, in->step) &&
           bat_sched_ahead_ok(&b->s);
}

static bool drained(struct bst *b, const struct bat_sched_info *in)
{
    if (in->n_waiting || in->n_running || in->step > in->done_step || in->n_outbox)
        return false;
    for (unsigned w = 0; w < b->n_ingress; w++)
        if (shm_pipe_stage_up(b->pipe, SHM_PIPE_INGRESS, w) || shm_ring_available(&b->req[w]))
            return false;
    return true;
}

static void heartbeat(struct bst *b, uint64_t now)
{
    b->last_hb = now;
    if (b->cfg->stats)
        shm_stats_heartbeat(b->cfg->stats, b->cfg->stats_row);
    if (b->cfg->stats_w)
        shm_stats_flush(b->cfg->stats_w);
}

int bat_stage_run(const struct bat_stage_cfg *cfg)
{
    struct bst b;
    uint64_t idle_since = 0;
    int rc;

    if (!cfg || !cfg->pipe || !cfg->pipe->hdr || cfg->poll < 0 || cfg->poll > 2)
        return -EINVAL;
    memset(&b, 0, sizeof(b));
    b.cfg = cfg;
    b.pipe = cfg->pipe;
    if ((rc = attach_all(&b))) {
        cache_close(&b);
        return rc;
    }
    if (cfg->on_ready)
        cfg->on_ready(cfg->on_ready_arg);
    shm_pipe_set_up(b.pipe, SHM_PIPE_BATCHER, 0, (int32_t)getpid());

    for (;;) {
        uint32_t seen = shm_bell_ec_value(&b.bell);
        uint64_t now = favo_now_ns();
        struct bat_sched_info in;
        int work = 0;

        work += publish(&b, now);
        check_engines(&b);
        work += drain_done(&b, now);
        work += drain_req(&b, now);
        work += drain_ctl(&b);
        bat_sched_info(&b.s, &in);
        if (in.step > in.done_step)
            work += in_flight(&b, &in, now);
        else if (plan_unsent(&b, in.step))
            send_flight(&b, in.step > 1 ? in.step - 1 : 1, in.step);
        bat_sched_info(&b.s, &in);
        if (!in.n_outbox && (in.n_waiting || in.n_running) && (work || !b.stalled) &&
            step_now(&b, &in))
            work += do_step(&b, now);
        work += publish(&b, now);
        if (b.egr_owed) {
            /* A completion's events just went out, which is what a step
             * waits for (an empty outbox): plan it now, and only then ring
             * egress. Waking egress - SCHED_FIFO when stages share cores -
             * on our core preempts us for its whole burst while the engine
             * waits idle for this plan: bench-ingress, the engine's idle
             * gap between plans (its drain log line) mean 72-109 -> 21-59
             * us, p99 <= 1024 -> <= 256-512 us (three pairs, load 4.3-4.9).
             * Still one ring per iteration, none while egress is awake. */
            bat_sched_info(&b.s, &in);
            if (!in.n_outbox && (in.n_waiting || in.n_running) && step_now(&b, &in)) {
                work += do_step(&b, now);
                work += publish(&b, now);
            }
            egr_ring(&b);
        }
        housekeeping(&b, now);
        if (now - b.last_hb >= BST_HB_NS)
            heartbeat(&b, now);
        if (work) {
            idle_since = 0;
            continue;
        }

        bat_sched_info(&b.s, &in);
        if (stopping(&b) && drained(&b, &in))
            break;
        b.stalled = false; /* retry an empty step after one idle round */
        if (cfg->poll == 2) {
            favo_cpu_relax();
            continue;
        }
        if (cfg->poll == 1) {
            if (!idle_since)
                idle_since = now;
            if (now - idle_since < BST_SPIN_NS) {
                favo_cpu_relax();
                continue;
            }
        }
        heartbeat(&b, now);
        if (rings_have_work(&b))
            continue;
        /* A full ev ring is not signalled by egress: look again soon. So
         * are queue timeouts and requests waiting for KV (1 ms). */
        shm_bell_ec_wait(&b.bell, seen,
                         (in.n_outbox || (in.n_waiting && !in.n_running) || b.slot_wait
                              ? 1 : BST_SLEEP_MS) * 1000000ll);
        idle_since = 0;
    }
    shm_pipe_set_up(b.pipe, SHM_PIPE_BATCHER, 0, 0);
    cache_close(&b);
    heartbeat(&b, favo_now_ns());
    favo_info("batcher: drained, exiting");
    return 0;
}
