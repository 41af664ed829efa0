/*
 * ing_ratelimit.c - shared token buckets: per-worker consumption counters,
 * refill by worker 0 under a per-bucket seqlock. Design, bounds and
 * invariants: ing_ratelimit.h.
 */
#include "ing_ratelimit.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "favo_buf.h"

#define NS_PER_MIN 60000000000ull
/* Refill per ns = L * UNIT / NS_PER_MIN = L / 60000 units. */
#define NS_PER_UNIT_L 60000ull
/* Seqlock read attempts before a writer that never finishes is presumed
 * dead (repaired by the next worker 0, bound B2). */
#define SEQ_SPINS 100000
/* Shortest interval between two credits of one bucket (bound B3). */
#define TICK_MIN_NS 1000000ull

static inline uint64_t ld(_Atomic uint64_t *p)
{
    return atomic_load_explicit(p, memory_order_relaxed);
}

static inline void st(_Atomic uint64_t *p, uint64_t v)
{
    atomic_store_explicit(p, v, memory_order_relaxed);
}

static inline struct ing_rl_use *use_of(const struct ing_rl *rl, uint32_t w, uint32_t b)
{
    return (struct ing_rl_use *)(rl->use_base + (size_t)w * rl->sh->use_stride) + b;
}

/* Units credited to a limit of L per minute over dt ns (dt capped: after
 * two minutes any bucket is full anyway). */
static inline uint64_t refill(uint64_t L, uint64_t dt)
{
    if (dt > 2 * NS_PER_MIN)
        dt = 2 * NS_PER_MIN;
    return (uint64_t)((unsigned __int128)L * dt / NS_PER_UNIT_L);
}

size_t ing_rl_size(uint32_t nbuckets, uint32_t nworkers)
{
    size_t hdr = (sizeof(struct ing_rl_shared) + 63) & ~(size_t)63;
    size_t stride = ((size_t)nbuckets * sizeof(struct ing_rl_use) + 63) & ~(size_t)63;

    return hdr + (size_t)nbuckets * sizeof(struct ing_rl_bucket) + (size_t)nworkers * stride;
}

int ing_rl_init(void *mem, size_t size, uint32_t nbuckets, uint32_t nworkers, uint64_t now_ns)
{
    struct ing_rl_shared *sh = mem;
    size_t hdr = (sizeof(*sh) + 63) & ~(size_t)63;

    if (!mem || ((uintptr_t)mem & 63) || !nworkers || nworkers > ING_RL_MAX_WORKERS ||
        nbuckets > (1u << 24) || size < ing_rl_size(nbuckets, nworkers))
        return -EINVAL;
    memset(mem, 0, ing_rl_size(nbuckets, nworkers));
    sh->version = ING_RL_VERSION;
    sh->nworkers = nworkers;
    sh->nbuckets = nbuckets;
    sh->size = ing_rl_size(nbuckets, nworkers);
    sh->off_bkt = hdr;
    sh->off_use = hdr + (size_t)nbuckets * sizeof(struct ing_rl_bucket);
    sh->use_stride = ((size_t)nbuckets * sizeof(struct ing_rl_use) + 63) & ~(size_t)63;
    for (uint32_t b = 0; b < nbuckets; b++)
        st(&((struct ing_rl_bucket *)((uint8_t *)mem + hdr))[b].t_ns, now_ns);
    atomic_fetch_add_explicit(&sh->generation, 1, memory_order_relaxed);
    /* Publish the layout before the magic that says it is there. */
    atomic_thread_fence(memory_order_release);
    sh->magic = ING_RL_MAGIC;
    return 0;
}

int ing_rl_attach(struct ing_rl *rl, void *mem, size_t size, uint32_t worker)
{
    struct ing_rl_shared *sh = mem;

    memset(rl, 0, sizeof(*rl));
    if (!mem || size < sizeof(*sh) || sh->magic != ING_RL_MAGIC ||
        sh->version != ING_RL_VERSION || sh->size > size ||
        sh->size != ing_rl_size(sh->nbuckets, sh->nworkers))
        return -EINVAL;
    atomic_thread_fence(memory_order_acquire); /* pairs with init's release */
    if (worker >= sh->nworkers)
        return -ERANGE;
    rl->sh = sh;
    rl->bkt = (struct ing_rl_bucket *)((uint8_t *)mem + sh->off_bkt);
    rl->use_base = (uint8_t *)mem + sh->off_use;
    rl->worker = worker;
    rl->nworkers = sh->nworkers;
    rl->nbuckets = sh->nbuckets;
    if (worker == 0) /* repair: a predecessor died inside a write (B2) */
        for (uint32_t b = 0; b < rl->nbuckets; b++)
            if (ld(&rl->bkt[b].seq) & 1)
                atomic_store_explicit(&rl->bkt[b].seq, ld(&rl->bkt[b].seq) + 1,
                                      memory_order_release);
    return 0;
}

/* ---- worker 0: the writer of bkt[] -------------------------------------- */

static void wr_begin(struct ing_rl_bucket *k)
{
    st(&k->seq, ld(&k->seq) + 1);
    /* The odd seq must be visible before any field changes. */
    atomic_thread_fence(memory_order_release);
}

static void wr_end(struct ing_rl_bucket *k)
{
    /* The fields must be visible before the even seq that vouches for them. */
    atomic_store_explicit(&k->seq, ld(&k->seq) + 1, memory_order_release);
}

static uint64_t sum_used(const struct ing_rl *rl, uint32_t b, int d)
{
    uint64_t s = 0;

    for (uint32_t w = 0; w < rl->nworkers; w++)
        s += ld(&use_of(rl, w, b)->used[d]);
    return s;
}

/* Credit dimension d of bucket k up to now (worker 0, inside the seqlock). */
static void credit(struct ing_rl_bucket *k, int d, uint64_t S, uint64_t t, uint64_t now)
{
    uint64_t L = ld(&k->limit[d]), full = S + L * ING_RL_UNIT;
    uint64_t lvl = ld(&k->level[d]) + refill(L, now - t);

    if (!L)
        return;
    if ((int64_t)(lvl - full) > 0) /* reached the ceiling: the bucket is full */
        lvl = full;
    st(&k->level[d], lvl);
    st(&k->full[d], full);
    FAVO_ASSERT((int64_t)(full - lvl) >= 0); /* invariant 3 */
}

static void tick_one(struct ing_rl *rl, uint32_t b, uint64_t now_ns)
{
    struct ing_rl_bucket *k = &rl->bkt[b];
    uint64_t t = ld(&k->t_ns), S0, S1;

    if (!ld(&k->limit[0]) && !ld(&k->limit[1]))
        return;
    /* B3: at most one credit per TICK_MIN_NS per bucket, so the sub-unit
     * remainder each one drops stays negligible however often we are
     * called. */
    if ((int64_t)(now_ns - t) < (int64_t)TICK_MIN_NS)
        return;
    /* Sum before the write section: counters read later are larger, so
     * the ceiling is conservative (B2). */
    S0 = sum_used(rl, b, 0);
    S1 = sum_used(rl, b, 1);
    wr_begin(k);
    credit(k, 0, S0, t, now_ns);
    credit(k, 1, S1, t, now_ns);
    st(&k->t_ns, now_ns);
    wr_end(k);
}

void ing_rl_tick(struct ing_rl *rl, uint64_t now_ns)
{
    FAVO_ASSERT(rl->worker == 0); /* invariant 1 */
    for (uint32_t b = 0; b < rl->nbuckets; b++)
        tick_one(rl, b, now_ns);
}

int ing_rl_set_limits(struct ing_rl *rl, uint32_t b, uint64_t rpm, uint64_t tpm,
                      uint64_t now_ns)
{
    uint64_t lim[2] = { rpm, tpm };
    struct ing_rl_bucket *k;

    FAVO_ASSERT(rl->worker == 0); /* invariant 1 */
    if (b >= rl->nbuckets)
        return -ERANGE;
    if (rpm > 1000000000ull || tpm > 1000000000ull)
        return -EINVAL;
    k = &rl->bkt[b];
    wr_begin(k);
    for (int d = 0; d < 2; d++) {
        uint64_t S = sum_used(rl, b, d), full = S + lim[d] * ING_RL_UNIT;
        uint64_t old = ld(&k->limit[d]), lvl = ld(&k->level[d]);

        /* A new limit starts full; a changed one keeps what is used: the
         * level moves by the change of capacity, never above the ceiling. */
        lvl = old ? lvl + (lim[d] - old) * ING_RL_UNIT : full;
        if ((int64_t)(lvl - full) > 0)
            lvl = full;
        st(&k->limit[d], lim[d]);
        st(&k->full[d], full);
        st(&k->level[d], lvl);
    }
    st(&k->t_ns, now_ns);
    wr_end(k);
    return 0;
}

/* ---- every worker: checks ----------------------------------------------- */

struct snap {
    uint64_t t, limit[2], level[2], full[2];
};

static void rd(const struct ing_rl_bucket *k0, struct snap *s)
{
    struct ing_rl_bucket *k = (struct ing_rl_bucket *)k0;

    for (int spin = 0;; spin++) {
        uint64_t s1 = atomic_load_explicit(&k->seq, memory_order_acquire), s2;

        if ((s1 & 1) && spin < SEQ_SPINS) {
            favo_cpu_relax();
            continue;
        }
        s->t = ld(&k->t_ns);
        for (int d = 0; d < 2; d++) {
            s->limit[d] = ld(&k->limit[d]);
            s->level[d] = ld(&k->level[d]);
            s->full[d] = ld(&k->full[d]);
        }
        /* The field loads must complete before seq is read again. */
        atomic_thread_fence(memory_order_acquire);
        s2 = ld(&k->seq);
        if (s1 == s2 || spin >= SEQ_SPINS)
            return;
    }
}

/* Units available in dimension d (may be negative after ing_rl_charge). */
static int64_t avail(const struct snap *s, int d, uint64_t S, uint64_t now)
{
    int64_t a = (int64_t)(s->level[d] - S) +
                (int64_t)refill(s->limit[d], (int64_t)(now - s->t) > 0 ? now - s->t : 0);
    int64_t f = (int64_t)(s->full[d] - S);

    return a < f ? a : f;
}

static uint64_t units_to_ns(uint64_t units, uint64_t L)
{
    return (uint64_t)(((unsigned __int128)units * NS_PER_UNIT_L + L - 1) / L);
}

int ing_rl_check(struct ing_rl *rl, const uint32_t *buckets, unsigned n, uint64_t tokens,
                 uint64_t now_ns, struct ing_rl_decision *d)
{
    uint64_t need[2] = { ING_RL_UNIT, tokens * ING_RL_UNIT }, wait_ns = 0;
    int64_t left[2] = { INT64_MAX, INT64_MAX };
    int rc = 0;

    memset(d, 0, sizeof(*d));
    if (n > 8)
        return -ERANGE;
    for (unsigned i = 0; i < n; i++)
        if (buckets[i] >= rl->nbuckets)
            return -ERANGE;
    if (rl->worker == 0) /* the tick owner credits what it is about to read */
        for (unsigned i = 0; i < n; i++)
            tick_one(rl, buckets[i], now_ns);
    if (tokens > 1000000000ull)
        need[1] = 1000000000ull * ING_RL_UNIT + 1;

    for (unsigned i = 0; i < n; i++) {
        struct snap s;

        rd(&rl->bkt[buckets[i]], &s);
        for (int dm = 0; dm < 2; dm++) {
            uint64_t L = s.limit[dm], cap = L * ING_RL_UNIT;
            int64_t a, after;
            uint64_t reset_ms;

            if (!L)
                continue;
            a = avail(&s, dm, sum_used(rl, buckets[i], dm), now_ns);
            if (need[dm] > cap) { /* can never pass */
                if (rc != -E2BIG) {
                    d->deny_bucket = i;
                    d->deny_dim = (unsigned)dm;
                }
                rc = -E2BIG;
            } else if (a < (int64_t)need[dm]) {
                uint64_t w = units_to_ns((uint64_t)((int64_t)need[dm] - a), L);

                if (!rc || (rc == -EAGAIN && w > wait_ns)) {
                    d->deny_bucket = i;
                    d->deny_dim = (unsigned)dm;
                    rc = -EAGAIN;
                }
                wait_ns = FAVO_MAX(wait_ns, w);
            }
            /* Headers: the most restrictive bucket of each dimension, as
             * it will stand after this request if admitted. */
            after = a - (int64_t)need[dm];
            if (after < 0)
                after = a < 0 ? a : 0;
            if (after < left[dm]) {
                uint64_t rem = after > 0 ? (uint64_t)after : 0;

                left[dm] = after;
                reset_ms = (units_to_ns(cap > rem ? cap - rem : 0, L) + 999999) / 1000000;
                if (dm == ING_RL_REQ) {
                    d->has_req = true;
                    d->limit_req = L;
                    d->remaining_req = rem / ING_RL_UNIT;
                    d->reset_req_ms = reset_ms;
                } else {
                    d->has_tok = true;
                    d->limit_tok = L;
                    d->remaining_tok = rem / ING_RL_UNIT;
                    d->reset_tok_ms = reset_ms;
                }
            }
        }
    }
    if (rc) {
        d->retry_after_s = (uint32_t)FAVO_MAX(1, (wait_ns + 999999999ull) / 1000000000ull);
        return rc;
    }
    d->allowed = true;
    for (unsigned i = 0; i < n; i++)
        for (int dm = 0; dm < 2; dm++) {
            struct ing_rl_use *u = use_of(rl, rl->worker, buckets[i]);

            /* invariant 1: our own word; invariant 2: limited dims only
             * (limit read unlocked: a stale 0 only skips one charge) */
            if (ld(&rl->bkt[buckets[i]].limit[dm]))
                st(&u->used[dm], ld(&u->used[dm]) + need[dm]);
        }
    return 0;
}

int ing_rl_charge(struct ing_rl *rl, const uint32_t *buckets, unsigned n, uint64_t tokens)
{
    for (unsigned i = 0; i < n; i++)
        if (buckets[i] >= rl->nbuckets)
            return -ERANGE;
    for (unsigned i = 0; i < n; i++) {
        struct ing_rl_use *u = use_of(rl, rl->worker, buckets[i]);

        if (ld(&rl->bkt[buckets[i]].limit[ING_RL_TOK]))
            st(&u->used[ING_RL_TOK], ld(&u->used[ING_RL_TOK]) + tokens * ING_RL_UNIT);
    }
    return 0;
}

/* ---- headers ------------------------------------------------------------ */

/* Text appended without printf (favo_buf.h): ing_rl_headers runs for every
 * request of a keyed server, and its six snprintf calls took ~290 ns. */
static void app_duration(struct favo_buf *a, uint64_t ms)
{
    uint64_t h = ms / 3600000, m = ms / 60000 % 60, s = ms / 1000 % 60, f = ms % 1000;

    if (ms < 1000) {
        favo_put_u(a, ms, 0);
        if (ms)
            FAVO_PUTS(a, "ms");
        else
            FAVO_PUTS(a, "s");
        return;
    }
    if (h) {
        favo_put_u(a, h, 0);
        FAVO_PUTS(a, "h");
    }
    if (h || m) {
        favo_put_u(a, m, 0);
        FAVO_PUTS(a, "m");
    }
    favo_put_u(a, s, 0);
    if (f) { /* Go prints the fraction without trailing zeros */
        unsigned fl = f % 100 == 0 ? 1 : f % 10 == 0 ? 2 : 3;
        FAVO_PUTS(a, ".");
        favo_put_u(a, fl == 1 ? f / 100 : fl == 2 ? f / 10 : f, fl);
    }
    FAVO_PUTS(a, "s");
}

int ing_rl_fmt_duration(uint64_t ms, char *out, size_t cap)
{
    struct favo_buf a = { out, cap, 0, 0 };

    app_duration(&a, ms);
    return favo_buf_end(&a);
}

int ing_rl_headers(const struct ing_rl_decision *d, char *buf, size_t cap)
{
    struct favo_buf a = { buf, cap, 0, 0 };

    if (!cap)
        return -ENOSPC;
    buf[0] = 0;
    if (d->has_req) {
        FAVO_PUTS(&a, "x-ratelimit-limit-requests: ");
        favo_put_u(&a, d->limit_req, 0);
        FAVO_PUTS(&a, "\r\nx-ratelimit-remaining-requests: ");
        favo_put_u(&a, d->remaining_req, 0);
        FAVO_PUTS(&a, "\r\nx-ratelimit-reset-requests: ");
        app_duration(&a, d->reset_req_ms);
        FAVO_PUTS(&a, "\r\n");
    }
    if (d->has_tok) {
        FAVO_PUTS(&a, "x-ratelimit-limit-tokens: ");
        favo_put_u(&a, d->limit_tok, 0);
        FAVO_PUTS(&a, "\r\nx-ratelimit-remaining-tokens: ");
        favo_put_u(&a, d->remaining_tok, 0);
        FAVO_PUTS(&a, "\r\nx-ratelimit-reset-tokens: ");
        app_duration(&a, d->reset_tok_ms);
        FAVO_PUTS(&a, "\r\n");
    }
    if (!d->allowed && d->retry_after_s) {
        FAVO_PUTS(&a, "retry-after: ");
        favo_put_u(&a, d->retry_after_s, 0);
        FAVO_PUTS(&a, "\r\n");
    }
    return favo_buf_end(&a);
}
