/*
 * ing_ratelimit.h - token buckets for requests/minute and tokens/minute at
 * key, user and org level, shared by every ingress worker through the data
 * segment (ingress, issue #6).
 *
 * What it is
 *   Each bucket (ing_keys.h invariant 3 numbers them: keys, then users, then
 *   orgs) has two dimensions, requests and tokens, each a token bucket of
 *   capacity L (its per-minute limit: a full minute may be spent at once,
 *   as OpenAI does) refilled at L per 60 s. A request is admitted when every
 *   bucket of its key (key, user, org) has room in both dimensions; then it
 *   is charged to all of them. Decisions carry OpenAI's x-ratelimit-*
 *   values and, when refused, Retry-After (ing_rl_headers renders them).
 *
 * Who writes what (ARCHITECTURE.md invariant 2: one writer per word, no
 * cross-process locks)
 *   A bucket's level cannot be one shared word: N workers would all write
 *   it. Three designs were weighed:
 *     a) one word per worker with the limit split N ways: exact and simple,
 *        but a client whose connections land on one worker gets L/N;
 *     b) a single owner process that decides: exact, but every request
 *        crosses a ring and waits for another core before it is admitted;
 *     c) (this one) consumption counters owned by each worker, refill owned
 *        by one "tick owner" (worker 0). Checks run on the worker's own core
 *        with plain loads; the full limit is available on every worker.
 *   So, per bucket b and dimension d:
 *     use[w][b].used[d]   monotonic units consumed; written ONLY by worker w
 *     bkt[b].level[d]     refill counter  (same units)       } written ONLY
 *     bkt[b].full[d]      level ceiling = S_tick + capacity  } by worker 0
 *     bkt[b].limit[d], bkt[b].t_ns                           } (tick owner)
 *   with S = sum over w of used[d]. Everything is in units of 1e-6 token,
 *   free-running uint64, compared by signed difference (wrap-safe).
 *   A checker computes, with no writes to shared words but its own:
 *     avail = min(level + L * (now - t_ns) / 60 s, full) - S
 *   The ceiling `full` is the level of a full bucket AT THE LAST TICK, so a
 *   bucket that filled up, sat idle and was then drained is not credited
 *   again between ticks. The four bucket words are read under a per-bucket
 *   seqlock (bkt[b].seq, odd while worker 0 writes).
 *
 *     worker w: ing_rl_check ---- reads bkt[b] (seqlock), sums use[*][b]
 *                  |  admitted: use[w][b].used[d] += need   (own word)
 *     worker 0: ing_rl_tick (every ~10-100 ms from its loop; its own checks
 *               also credit the buckets they touch):
 *               level = min(level + refill, S + cap); full = S + cap
 *               A full tick costs nbuckets x nworkers loads (1M buckets,
 *               4 workers: about 10 ms), which sets how often to call it.
 *
 * Bounds (tested in test-ingress-ratelimit.c)
 *   B1. Races between checks: a check reads S, then charges; N workers may
 *       pass on the same snapshot, so a bucket may be over-admitted by at
 *       most (N - 1) requests and (N - 1) x the largest token charge, at any
 *       instant. Over a window T the total admitted is at most
 *       L + L*T/60 s + (N - 1) per dimension (the +L is the starting burst).
 *   B2. A late tick never over-admits: between ticks admission is capped by
 *       the ceiling of the last tick, so a slow or dead tick owner makes the
 *       limit stricter (at most L more per bucket until the next tick), not
 *       looser. The supervisor restarts worker 0; ing_rl_attach(worker 0)
 *       repairs a seqlock left odd by a writer that died mid-update.
 *   B3. Refill loses under one unit (1e-6 token) per tick, and worker 0
 *       credits a bucket at most once per millisecond: the loss is below
 *       0.06 requests or tokens per minute.
 *
 * Reload (SIGHUP)
 *   Bucket numbers come from the keys file's order (ing_keys.h invariant 3),
 *   so a reloaded file maps them afresh: the owner of the data segment
 *   lays out a NEW region with ing_rl_init (generation + 1), worker 0 sets
 *   its limits, and each worker attaches to it with the new key set, then
 *   drops the old one. Usage is not carried over: every bucket starts full
 *   after a reload (at most one extra minute's burst per reload).
 *
 * Region layout (offsets, never pointers; magic + version + generation)
 *
 *     +----------------------------+ 0
 *     | struct ing_rl_shared       | magic "FAVORL01", sizes, offsets
 *     +----------------------------+ off_bkt (64-aligned)
 *     | bkt[0..nbuckets) 64 B each | written by worker 0 only
 *     +----------------------------+ off_use
 *     | use[0][0..nbuckets) 16 B   | worker 0's counters   } each worker's
 *     | use[1][0..nbuckets)        | worker 1's counters   } array starts on
 *     | ...                        |                       } its own line
 *     +----------------------------+ size
 *
 * Invariants
 *   1. bkt[*] and the header are written only by worker 0 (after init);
 *      use[w][*] only by worker w. Asserted by role in every writer.
 *   2. Counters only grow (mod 2^64); a limit of 0 means "no limit": the
 *      dimension is skipped and not charged.
 *   3. full - level >= 0 after every tick (level never exceeds the ceiling).
 *
 * Errors: 0 or -errno. ing_rl_check: 0 admitted, -EAGAIN refused (429,
 * d->retry_after_s), -E2BIG the request alone exceeds a tokens/minute
 * capacity (it can never pass: answer 429 with a message saying so),
 * -ERANGE bucket index out of range.
 */
#ifndef ING_RATELIMIT_H
#define ING_RATELIMIT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "favo_base.h"

#define ING_RL_MAGIC 0x31304c524f564146ull /* "FAVORL01" little-endian */
#define ING_RL_VERSION 1
#define ING_RL_UNIT 1000000ull             /* units per token / request */
#define ING_RL_MAX_WORKERS 64
#define ING_RL_REQ 0
#define ING_RL_TOK 1

struct ing_rl_shared {
    uint64_t magic;
    uint32_t version, nworkers;
    uint32_t nbuckets, pad;
    uint64_t size;
    _Atomic uint64_t generation;     /* bumped by ing_rl_init */
    uint64_t off_bkt, off_use, use_stride; /* bytes from the region start */
};

struct ing_rl_bucket {
    _Atomic uint64_t seq;            /* seqlock: odd while worker 0 writes */
    _Atomic uint64_t t_ns;           /* time the level was last credited */
    _Atomic uint64_t limit[2];       /* per minute (tokens); 0: none */
    _Atomic uint64_t level[2];       /* refill counter (units) */
    _Atomic uint64_t full[2];        /* ceiling at the last tick (units) */
} FAVO_ALIGNED_CL;

struct ing_rl_use {
    _Atomic uint64_t used[2];        /* units consumed by one worker */
};

/* A worker's process-local handle. */
struct ing_rl {
    struct ing_rl_shared *sh;
    struct ing_rl_bucket *bkt;
    uint8_t *use_base;
    uint32_t worker, nworkers, nbuckets;
};

/* What one check decided, and what the response headers say. A dimension
 * with no limit on any bucket has has_req / has_tok false (no headers). */
struct ing_rl_decision {
    bool allowed;
    bool has_req, has_tok;
    uint32_t retry_after_s;          /* refused: whole seconds, >= 1 */
    unsigned deny_bucket;            /* refused: index into buckets[] */
    unsigned deny_dim;               /* refused: ING_RL_REQ or ING_RL_TOK */
    uint64_t limit_req, remaining_req, reset_req_ms;
    uint64_t limit_tok, remaining_tok, reset_tok_ms;
};

/* Bytes a region for nbuckets and nworkers needs (a multiple of 64). */
size_t ing_rl_size(uint32_t nbuckets, uint32_t nworkers);
/* Lay out a zeroed region (every bucket without limit). By its creator,
 * before any worker attaches. Returns 0 or -EINVAL (size too small...). */
int ing_rl_init(void *mem, size_t size, uint32_t nbuckets, uint32_t nworkers, uint64_t now_ns);
/* Check magic, version and layout; worker 0 also repairs an odd seqlock
 * left by a predecessor that died mid-write (bound B2). Returns 0 or
 * -EINVAL (not a rate-limit region) / -ERANGE (worker out of range). */
int ing_rl_attach(struct ing_rl *rl, void *mem, size_t size, uint32_t worker);

/* Worker 0 only: set bucket b's limits (per minute; 0 none). A bucket that
 * had no limit starts full; a changed limit keeps what is used (60 rpm
 * with 50 used, lowered to 40: nothing left until refill; raised to 80:
 * 30 left). */
int ing_rl_set_limits(struct ing_rl *rl, uint32_t b, uint64_t rpm, uint64_t tpm,
                      uint64_t now_ns);
/* Worker 0 only: credit refill to every bucket (see the design above).
 * Call it from the event loop every 10..100 ms; the interval is how long a
 * bucket drained through other workers may wait for its refill (B2). */
void ing_rl_tick(struct ing_rl *rl, uint64_t now_ns);

/*
 * Admit (and charge) one request costing `tokens` against buckets[0..n)
 * (ing_keys_buckets), or refuse it. d is always filled (headers for every
 * response). Returns 0, -EAGAIN, -E2BIG or -ERANGE (see above).
 */
int ing_rl_check(struct ing_rl *rl, const uint32_t *buckets, unsigned n, uint64_t tokens,
                 uint64_t now_ns, struct ing_rl_decision *d);
/* Charge more tokens after admission (e.g. generation beyond the estimate),
 * unconditionally; the buckets may go below empty and later requests wait. */
int ing_rl_charge(struct ing_rl *rl, const uint32_t *buckets, unsigned n, uint64_t tokens);

/* OpenAI's reset format (Go durations): "0s", "250ms", "1s", "1.5s",
 * "6m0s", "1h2m3s". Returns the length, or -ENOSPC. */
int ing_rl_fmt_duration(uint64_t ms, char *out, size_t cap);
/*
 * The header lines of d, each ending in CRLF: x-ratelimit-limit-requests,
 * -remaining-requests, -reset-requests and the -tokens trio (for each
 * dimension that has a limit), then retry-after when refused. Returns
 * bytes written (NUL-ended, not counted), or -ENOSPC.
 */
int ing_rl_headers(const struct ing_rl_decision *d, char *buf, size_t cap);

#endif /* ING_RATELIMIT_H */
