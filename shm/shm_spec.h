/*
 * shm_spec.h - the specialist table in the data segment: named request
 * configurations (classification, extraction, summarization, Q&A, chat,
 * code ...) addressed by the `model` field of a request and listed by
 * /v1/models.
 *
 * A specialist names the model it runs on, a system prompt, default
 * generation parameters, a max_tokens cap, a priority class and a response
 * cache TTL (0 = cache off, the default; up to SHM_SPEC_TTL_MAX s). The
 * supervisor fills a process-local struct shm_spec_table from the config
 * (shm_spec_add validates each entry and names the offending field) and
 * publishes it into the region; ingress looks specialists up per request.
 * Nothing in it is a pointer (invariant 1).
 *
 * Who writes what (invariant 2, one writer per word):
 *   - the supervisor: everything in struct shm_spec_region (it re-reads
 *     the config on SIGHUP and publishes: dp_cmd_serve.c);
 *   Readers (ingress, the batcher) never write the table.
 *
 * Double buffering (SIGHUP swaps the table atomically):
 *
 *   region: seq | gen[0] tab[0] | gen[1] tab[1]
 *   current table = tab[seq & 1]
 *
 *   publish (writer)                    read (any reader)
 *   b = (seq + 1) & 1                   s = seq (acquire)
 *   gen[b]++ (odd: being written)       g = gen[s & 1] (acquire); odd: retry
 *   fence; tab[b] = new; fence          copy what is needed from tab[s & 1]
 *   gen[b]++ (even), fence              fence; gen[s & 1] != g: retry
 *   seq++ (release)
 *
 * A reader sees the whole old or the whole new table, never a mix: the
 * per-buffer generation is a sequence lock over the buffer it read, so a
 * writer that reused that buffer while the reader copied (two publishes
 * meanwhile) is noticed and the copy is retried. Requests already handed
 * on carry what they need in their struct shm_req, so a reload never
 * changes a request in flight.
 *
 * Invariants (cited by FAVO_ASSERT as "spec inv N"):
 *   1. tab[seq & 1] is complete and valid (every entry passed
 *      shm_spec_validate) whenever gen[seq & 1] is even.
 *   2. Names in a table are unique.
 *
 * Errors: -EINVAL with a message in err ("specialist 'x': field: why"),
 * -EEXIST (name already in the table), -ENOSPC (table full), -ENOENT (no
 * such specialist), -EPROTO (not a specialist region), -EAGAIN (a reader
 * gave up on a buffer whose writer never finished: a dead supervisor).
 */
#ifndef SHM_SPEC_H
#define SHM_SPEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "favo_base.h"

#define SHM_SPEC_MAGIC 0x31434550534f5641ull /* "AVOSPEC1" */
#define SHM_SPEC_NAME_MAX 64                 /* with the NUL */
#define SHM_SPEC_MODEL_MAX 128
#define SHM_SPEC_SYSTEM_MAX 4096
#define SHM_SPEC_MAX 64
#define SHM_SPEC_TTL_MAX 86400u
#define SHM_SPEC_PRIO_MAX 3                  /* priority 0..3, larger first */

/* Which defaults a specialist gives (struct shm_spec.set), and which
 * parameters a request gave (the `given` argument of shm_spec_apply). */
enum {
    SHM_SPEC_TEMPERATURE = 1u << 0,
    SHM_SPEC_TOP_K = 1u << 1,
    SHM_SPEC_TOP_P = 1u << 2,
    SHM_SPEC_MIN_P = 1u << 3,
    SHM_SPEC_FREQ = 1u << 4,
    SHM_SPEC_PRESENCE = 1u << 5,
    SHM_SPEC_SEED = 1u << 6,
    SHM_SPEC_MAX_TOKENS = 1u << 7,   /* specialist: default_max_tokens set */
    SHM_SPEC_PRIORITY = 1u << 8,     /* specialist: priority set */
};

struct shm_spec {
    char name[SHM_SPEC_NAME_MAX];          /* what requests put in `model` */
    char model[SHM_SPEC_MODEL_MAX];        /* the loaded model it runs on ("" = it) */
    char system_prompt[SHM_SPEC_SYSTEM_MAX]; /* "" = none */
    uint32_t set;                          /* SHM_SPEC_* defaults given */
    float temperature, top_p, min_p, frequency_penalty, presence_penalty;
    int32_t top_k;
    int64_t seed;
    uint32_t default_max_tokens;           /* when the request sets none (set bit) */
    uint32_t max_tokens_cap;               /* 0: no cap */
    uint32_t priority;                     /* 0..3, larger first (set bit) */
    uint32_t cache_ttl;                    /* seconds; 0 = off */
};

struct shm_spec_table {
    uint32_t n;
    uint32_t pad_;
    struct shm_spec specs[SHM_SPEC_MAX];
};

struct shm_spec_region {
    uint64_t magic;
    uint64_t seq FAVO_ALIGNED_CL;          /* supervisor: published buffer = seq & 1 */
    struct {
        uint64_t gen FAVO_ALIGNED_CL;      /* supervisor: odd while tab is written */
        struct shm_spec_table tab;
    } buf[2];
};

/* A request's generation parameters, as shm_spec_apply changes them. */
struct shm_spec_gen {
    float temperature, top_p, min_p, frequency_penalty, presence_penalty;
    int32_t top_k;
    int64_t seed;
    bool has_seed;
    uint32_t max_tokens;     /* 0: not given */
    uint32_t prio;           /* in: the key's (0 highest .. 3); out */
    uint32_t cache_ttl;      /* out */
};

/* ------------------------------------------------------- building a table */

/* A specialist with every field at "not given" (name and model empty). */
void shm_spec_clear(struct shm_spec *s);
/* Check one specialist; 0 or -EINVAL with "specialist 'x': field: why". */
int shm_spec_validate(const struct shm_spec *s, char *err, size_t errlen);
/* Validate and append. */
int shm_spec_add(struct shm_spec_table *t, const struct shm_spec *s, char *err, size_t errlen);
/* The specialist named name[0..len) in a process-local table, or NULL. */
const struct shm_spec *shm_spec_table_find(const struct shm_spec_table *t, const char *name,
                                           size_t len);

/* ------------------------------------------------------- the shared region */

static inline size_t shm_spec_region_size(void)
{
    return (sizeof(struct shm_spec_region) + 63u) & ~(size_t)63u;
}
/* Supervisor: format a zeroed region (empty table published). */
int shm_spec_init(struct shm_spec_region *r);
/* 0 when r is a formatted region, else -EPROTO. */
int shm_spec_check(const struct shm_spec_region *r);
/* Supervisor: publish t (every entry must be valid: spec inv 1). Returns
 * the new sequence number. */
uint64_t shm_spec_publish(struct shm_spec_region *r, const struct shm_spec_table *t);
/* Reader: copy the specialist named name[0..len) into *out. 0, -ENOENT;
 * -EAGAIN when a publish never finished (the supervisor died inside it). */
int shm_spec_find(const struct shm_spec_region *r, const char *name, size_t len,
                  struct shm_spec *out);
/* Reader: the names of the current table, in order (at most max); the count. */
uint32_t shm_spec_names(const struct shm_spec_region *r, char names[][SHM_SPEC_NAME_MAX],
                        uint32_t max);
/* The published sequence number (changes with every publish). */
uint64_t shm_spec_seq(const struct shm_spec_region *r);

/* ------------------------------------------------------- applying one */

/*
 * Apply a specialist to a request: every parameter the request did not
 * give (bit clear in `given`, SHM_SPEC_*) takes the specialist's default
 * where it sets one; max_tokens not given takes default_max_tokens (when
 * set, else stays 0: the server's choice); a max_tokens above the cap is
 * lowered to it (a request without one gets the cap when the server's
 * choice would be larger: the caller clamps with shm_spec_cap); the
 * priority becomes the specialist's when it sets one; cache_ttl is the
 * specialist's.
 */
void shm_spec_apply(const struct shm_spec *s, uint32_t given, struct shm_spec_gen *g);
/* max_tokens clamped to the specialist's cap (no cap: unchanged). */
static inline uint32_t shm_spec_cap(const struct shm_spec *s, uint32_t max_tokens)
{
    return s->max_tokens_cap && max_tokens > s->max_tokens_cap ? s->max_tokens_cap : max_tokens;
}

#endif /* SHM_SPEC_H */
