/*
 * bat_cache.h - the response cache: complete responses of deterministic
 * requests, kept in the data segment, answered without touching the engine.
 *
 * Off by default; a specialist enables it with cache_ttl (1..86400 s,
 * shm_spec.h). Only deterministic requests are cached: temperature 0
 * (greedy), or a seed given (counter-based sampling makes a seeded
 * request reproducible, eng_sample.h), without logprobs (a value holds
 * ids only). bat_cache_deterministic() decides.
 *
 * Key: SHA-256 (OpenSSL EVP) over a domain tag, the tenant, the model or
 * specialist name, the prompt token ids and every generation parameter
 * (temperature, top_k, top_p, min_p, penalties, seed and whether it was
 * given, n_logprobs, max_tokens) plus caller bytes for the rest (stop
 * strings, response format), each length-prefixed so no two inputs
 * collide by concatenation. Tenants never share entries.
 *
 * Layout (caller-provided region of cache_mb, offsets only - invariant 1):
 *
 *   struct bat_cache_hdr | ent[n_ent] | bucket[hcap] | value[n_ent][val_cap]
 *
 * Entry lifecycle:
 *
 *           bat_cache_put()                 bat_cache_get() (hit: to LRU head)
 *   FREE ------------------> LIVE <--------+
 *    ^                        |  \---------+
 *    |   explicit_bzero of    |  evicted (LRU tail, when no entry is FREE),
 *    +--- key and value ------+  expired (found by get, or bat_cache_expire),
 *                                replaced (put of the same key)
 *
 * Invariants (cited by FAVO_ASSERT as "cache inv N"):
 *   1. A FREE entry's key and value bytes are all zero (no retention,
 *      ARCHITECTURE.md invariant 5): content leaves only by scrubbing.
 *   2. n_live + n_free == n_ent; every LIVE entry is on the LRU list and in
 *      exactly one hash chain.
 *   3. Cached bytes are never written anywhere but the region (no log, no
 *      stats field carries them; hits and misses are counts).
 *
 * One writer: the batcher. Errors: -EINVAL (bad region, ttl out of range),
 * -ENOENT (miss), -E2BIG (value over val_cap: not cached), -ENOSPC (get:
 * caller buffer too small), -EIO (OpenSSL digest failed).
 */
#ifndef BAT_CACHE_H
#define BAT_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "eng_sample.h"

#define BAT_CACHE_MAGIC 0x48434342u /* "BCCH" */
#define BAT_CACHE_KEY 32
#define BAT_CACHE_TTL_MAX 86400u

struct bat_cache_hdr;
struct shm_stats_writer;

/* Process-local handle. */
struct bat_cache {
    struct bat_cache_hdr *h;
    void *md;                        /* EVP_MD, fetched once */
    void *mdctx;                     /* EVP_MD_CTX, reused: no malloc per key */
    struct shm_stats_writer *stats;  /* may be NULL */
};

struct bat_cache_key_in {
    uint32_t tenant;
    const char *model;               /* model or specialist name */
    const int32_t *tokens;
    uint32_t n_tokens;
    const struct eng_sample_params *sp;
    bool has_seed;
    uint32_t max_tokens;
    const void *extra;               /* stop strings, response format ...; may be NULL */
    size_t extra_len;
};

struct bat_cache_stats {
    uint64_t hits, misses, evictions, expirations, uncacheable;
    uint32_t n_live, n_ent, val_cap;
};

/* True when a request's output is a pure function of its key and the
 * cache can answer it: not when it asked for logprobs (n_logprobs > 0), as
 * a value holds the ids only and a hit could not answer them (the key
 * includes n_logprobs anyway). */
static inline bool bat_cache_deterministic(const struct eng_sample_params *sp, bool has_seed)
{
    return (sp->temperature <= 0.0f || has_seed) && !sp->n_logprobs;
}

/* Lay out a cache over mem[0..size) (64-aligned) with values of at most
 * val_cap bytes each; uses the whole region. 0 or -EINVAL (too small). */
int bat_cache_init(struct bat_cache *c, void *mem, size_t size, uint32_t val_cap);
/* Re-attach after a restart: the lists and hash chains are checked
 * (O(n_ent), values are not re-read). 0, -EPROTO or -EBADMSG. */
int bat_cache_attach(struct bat_cache *c, void *mem, size_t size);
/* Free the handle's OpenSSL objects (the region stays). */
void bat_cache_close(struct bat_cache *c);

int bat_cache_key(struct bat_cache *c, const struct bat_cache_key_in *in,
                  uint8_t key[BAT_CACHE_KEY]);
/* Copy the value of a live, unexpired entry into out; returns its length,
 * -ENOENT (miss; an expired entry is scrubbed), or -ENOSPC. Counts. */
int bat_cache_get(struct bat_cache *c, const uint8_t key[BAT_CACHE_KEY], uint64_t now_ns,
                  void *out, size_t cap);
/* Store (or replace) a value for ttl_s seconds (1..86400). 0, -EINVAL,
 * -E2BIG. Evicts the least recently used entry when full. */
int bat_cache_put(struct bat_cache *c, const uint8_t key[BAT_CACHE_KEY], uint64_t now_ns,
                  uint32_t ttl_s, const void *val, size_t len);
/* Scrub every expired entry (cold path, e.g. once a second); the count. */
uint32_t bat_cache_expire(struct bat_cache *c, uint64_t now_ns);
void bat_cache_get_stats(const struct bat_cache *c, struct bat_cache_stats *out);
/* Consistency (cache inv 1, 2), O(n_ent * val_cap): 0 or -EBADMSG. */
int bat_cache_check(const struct bat_cache *c);

#endif /* BAT_CACHE_H */
