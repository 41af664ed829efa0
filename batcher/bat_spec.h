/*
 * bat_spec.h - specialists: named request configurations (classification,
 * extraction, summarization, Q&A, chat, code ...) addressed by the `model`
 * field of a request and listed by /v1/models.
 *
 * A specialist names the model it runs on, a system prompt, default
 * generation parameters, a max_tokens cap, a priority class and a response
 * cache TTL (0 = cache off, the default; up to 86400 s). The config loader
 * fills a struct bat_spec_table with bat_spec_add(), which validates each
 * entry and names the offending field; the table holds no pointers, so it
 * may live in the data segment for every stage to read.
 *
 * Applying a specialist to a request (bat_spec_apply): every parameter the
 * request did not set takes the specialist's default; max_tokens is
 * clamped to the cap (unset: the specialist's default_max_tokens); the
 * priority and cache TTL come from the specialist.
 *
 * Errors: -EINVAL with a message in err (field named), -EEXIST (name
 * already in the table), -ENOSPC (table full).
 */
#ifndef BAT_SPEC_H
#define BAT_SPEC_H

#include <stddef.h>
#include <stdint.h>

#include "eng_sample.h"

#define BAT_SPEC_NAME_MAX 64
#define BAT_SPEC_MODEL_MAX 128
#define BAT_SPEC_SYSTEM_MAX 4096
#define BAT_SPEC_MAX 64

struct bat_spec {
    char name[BAT_SPEC_NAME_MAX];        /* what requests put in `model` */
    char model[BAT_SPEC_MODEL_MAX];      /* the loaded model it runs on */
    char system_prompt[BAT_SPEC_SYSTEM_MAX];
    struct eng_sample_params params;     /* defaults */
    uint32_t default_max_tokens;         /* when the request sets none */
    uint32_t max_tokens_cap;             /* never more than this */
    uint32_t prio;                       /* class, < BAT_PRIO_N (bat_sched.h) */
    uint32_t cache_ttl_s;                /* 0 = off; <= BAT_CACHE_TTL_MAX */
};

struct bat_spec_table {
    uint32_t n;
    struct bat_spec specs[BAT_SPEC_MAX];
};

/* Which request fields were set (bits of struct bat_gen.set). */
enum {
    BAT_GEN_TEMPERATURE = 1u << 0,
    BAT_GEN_TOP_K = 1u << 1,
    BAT_GEN_TOP_P = 1u << 2,
    BAT_GEN_MIN_P = 1u << 3,
    BAT_GEN_FREQ = 1u << 4,
    BAT_GEN_PRESENCE = 1u << 5,
    BAT_GEN_SEED = 1u << 6,
    BAT_GEN_LOGPROBS = 1u << 7,
    BAT_GEN_MAX_TOKENS = 1u << 8,
};

/* A request's generation parameters, and what the specialist decided. */
struct bat_gen {
    struct eng_sample_params sp;
    uint32_t max_tokens;
    uint32_t set;         /* BAT_GEN_* bits: fields the request gave */
    uint32_t prio;        /* out */
    uint32_t cache_ttl_s; /* out */
};

/* Check one specialist; 0 or -EINVAL with "specialist 'x': field: why". */
int bat_spec_validate(const struct bat_spec *s, char *err, size_t errlen);
/* Validate and append. */
int bat_spec_add(struct bat_spec_table *t, const struct bat_spec *s, char *err, size_t errlen);
/* The specialist named name[0..len), or NULL. */
const struct bat_spec *bat_spec_find(const struct bat_spec_table *t, const char *name,
                                     size_t len);
/* Fill defaults, clamp max_tokens, set prio and cache TTL (see above). */
void bat_spec_apply(const struct bat_spec *s, struct bat_gen *g);

#endif /* BAT_SPEC_H */
