/*
 * shm_spec.c - the specialist table: validation with field-naming
 * messages, the double-buffered region in the data segment (design in
 * shm_spec.h), and applying a specialist to a request.
 */
#include "shm_spec.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <ck_pr.h>

static int bad(const struct shm_spec *s, char *err, size_t n, const char *field, const char *why)
{
    if (err && n)
        snprintf(err, n, "specialist '%.*s': %s: %s", SHM_SPEC_NAME_MAX - 1, s->name, field,
                 why);
    return -EINVAL;
}

void shm_spec_clear(struct shm_spec *s)
{
    memset(s, 0, sizeof(*s));
    s->temperature = 1.0f;
    s->top_p = 1.0f;
}

static bool nul_in(const char *p, size_t n) { return memchr(p, 0, n) != NULL; }

int shm_spec_validate(const struct shm_spec *s, char *err, size_t n)
{
    if (!nul_in(s->name, sizeof(s->name)) || !s->name[0])
        return bad(s, err, n, "name", "must be 1..63 bytes");
    for (const char *c = s->name; *c; c++)
        if ((unsigned char)*c <= ' ' || *c == '"' || *c == '\\' || *c == 0x7f)
            return bad(s, err, n, "name", "no spaces, quotes, backslashes or control bytes");
    if (!nul_in(s->model, sizeof(s->model)))
        return bad(s, err, n, "model", "longer than 127 bytes");
    if (!nul_in(s->system_prompt, sizeof(s->system_prompt)))
        return bad(s, err, n, "system_prompt", "longer than 4095 bytes");
    if ((s->set & SHM_SPEC_TEMPERATURE) &&
        (!isfinite(s->temperature) || s->temperature < 0 || s->temperature > 2))
        return bad(s, err, n, "temperature", "must be 0..2");
    if ((s->set & SHM_SPEC_TOP_P) && (!isfinite(s->top_p) || s->top_p <= 0 || s->top_p > 1))
        return bad(s, err, n, "top_p", "must be in (0, 1]");
    if ((s->set & SHM_SPEC_MIN_P) && (!isfinite(s->min_p) || s->min_p < 0 || s->min_p > 1))
        return bad(s, err, n, "min_p", "must be 0..1");
    if ((s->set & SHM_SPEC_TOP_K) && s->top_k < 0)
        return bad(s, err, n, "top_k", "must be >= 0 (0 = off)");
    if ((s->set & SHM_SPEC_FREQ) &&
        (!isfinite(s->frequency_penalty) || fabsf(s->frequency_penalty) > 2))
        return bad(s, err, n, "frequency_penalty", "must be -2..2");
    if ((s->set & SHM_SPEC_PRESENCE) &&
        (!isfinite(s->presence_penalty) || fabsf(s->presence_penalty) > 2))
        return bad(s, err, n, "presence_penalty", "must be -2..2");
    if ((s->set & SHM_SPEC_MAX_TOKENS) && s->default_max_tokens == 0)
        return bad(s, err, n, "default_max_tokens", "must be >= 1");
    if ((s->set & SHM_SPEC_MAX_TOKENS) && s->max_tokens_cap &&
        s->default_max_tokens > s->max_tokens_cap)
        return bad(s, err, n, "default_max_tokens", "above the max_tokens cap");
    if ((s->set & SHM_SPEC_PRIORITY) && s->priority > SHM_SPEC_PRIO_MAX)
        return bad(s, err, n, "priority", "must be 0..3 (larger first)");
    if (s->cache_ttl > SHM_SPEC_TTL_MAX)
        return bad(s, err, n, "cache_ttl", "must be 0..86400 seconds");
    return 0;
}

const struct shm_spec *shm_spec_table_find(const struct shm_spec_table *t, const char *name,
                                           size_t len)
{
    if (!name || len == 0 || len >= SHM_SPEC_NAME_MAX)
        return NULL;
    for (uint32_t i = 0; i < t->n && i < SHM_SPEC_MAX; i++)
        if (!strncmp(t->specs[i].name, name, len) && t->specs[i].name[len] == 0)
            return &t->specs[i];
    return NULL;
}

int shm_spec_add(struct shm_spec_table *t, const struct shm_spec *s, char *err, size_t n)
{
    int rc = shm_spec_validate(s, err, n);

    if (rc)
        return rc;
    if (shm_spec_table_find(t, s->name, strlen(s->name))) {
        bad(s, err, n, "name", "defined twice");
        return -EEXIST; /* spec inv 2 */
    }
    if (t->n >= SHM_SPEC_MAX) {
        bad(s, err, n, "name", "too many specialists (64 at most)");
        return -ENOSPC;
    }
    t->specs[t->n++] = *s;
    return 0;
}

/* ------------------------------------------------------------ region */

int shm_spec_init(struct shm_spec_region *r)
{
    memset(r, 0, sizeof(*r));
    ck_pr_fence_store();
    ck_pr_store_64(&r->magic, SHM_SPEC_MAGIC);
    return 0;
}

int shm_spec_check(const struct shm_spec_region *r)
{
    return ck_pr_load_64(&r->magic) == SHM_SPEC_MAGIC ? 0 : -EPROTO;
}

uint64_t shm_spec_publish(struct shm_spec_region *r, const struct shm_spec_table *t)
{
    uint64_t seq = ck_pr_load_64(&r->seq);
    unsigned b = (unsigned)((seq + 1) & 1);
    uint32_t n = FAVO_MIN(t->n, (uint32_t)SHM_SPEC_MAX);

    for (uint32_t i = 0; i < n; i++)
        FAVO_ASSERT(shm_spec_validate(&t->specs[i], NULL, 0) == 0); /* spec inv 1 */
    /* gen odd: a reader still copying this buffer (from two publishes
     * ago) sees the change and retries. */
    ck_pr_store_64(&r->buf[b].gen, r->buf[b].gen + 1);
    ck_pr_fence_store();
    memset(&r->buf[b].tab, 0, sizeof(r->buf[b].tab));
    memcpy(r->buf[b].tab.specs, t->specs, (size_t)n * sizeof(t->specs[0]));
    r->buf[b].tab.n = n;
    ck_pr_fence_store();
    ck_pr_store_64(&r->buf[b].gen, r->buf[b].gen + 1);
    ck_pr_fence_store();
    ck_pr_store_64(&r->seq, seq + 1); /* the swap: spec inv 1 holds for the new buffer */
    return seq + 1;
}

uint64_t shm_spec_seq(const struct shm_spec_region *r)
{
    return ck_pr_load_64(&r->seq);
}

/* Run body over a consistent view of the current table; body copies out
 * what it needs and may run again (a writer reused the buffer meanwhile).
 * A writer that never finishes (the supervisor died inside a publish: the
 * instance is going down) is given up on after SPEC_TRIES rounds: *gaveup. */
#define SPEC_TRIES (1u << 20)
#define SPEC_READ(r, view, gaveup, body)                                                      \
    for (uint32_t t_ = 0;; t_++) {                                                           \
        if (t_ >= SPEC_TRIES) {                                                              \
            *(gaveup) = true;                                                                \
            break;                                                                           \
        }                                                                                    \
        uint64_t s_ = ck_pr_load_64(&(r)->seq);                                              \
        ck_pr_fence_load();                                                                  \
        const __typeof__((r)->buf[0]) *b_ = &(r)->buf[s_ & 1];                               \
        uint64_t g_ = ck_pr_load_64(&b_->gen);                                               \
        if (g_ & 1) {                                                                        \
            favo_cpu_relax();                                                                \
            continue;                                                                        \
        }                                                                                    \
        ck_pr_fence_load();                                                                  \
        const struct shm_spec_table *view = &b_->tab;                                        \
        body;                                                                                \
        ck_pr_fence_load();                                                                  \
        if (ck_pr_load_64(&b_->gen) == g_)                                                   \
            break;                                                                           \
    }

int shm_spec_find(const struct shm_spec_region *r, const char *name, size_t len,
                  struct shm_spec *out)
{
    int rc = -ENOENT;
    bool gaveup = false;

    if (shm_spec_check(r) || !name || len == 0 || len >= SHM_SPEC_NAME_MAX)
        return -ENOENT;
    SPEC_READ(r, t, &gaveup, {
        uint32_t n = FAVO_MIN(ck_pr_load_32(&t->n), (uint32_t)SHM_SPEC_MAX);
        rc = -ENOENT;
        for (uint32_t i = 0; i < n; i++) {
            const struct shm_spec *s = &t->specs[i];
            if (!memcmp(s->name, name, len) && s->name[len] == 0) {
                memcpy(out, s, sizeof(*out));
                rc = 0;
                break;
            }
        }
    });
    if (gaveup)
        return -EAGAIN;
    if (rc == 0) {
        /* A torn copy cannot pass the check above; NUL-end anyway so a
         * reader never runs off a string. */
        out->name[SHM_SPEC_NAME_MAX - 1] = 0;
        out->model[SHM_SPEC_MODEL_MAX - 1] = 0;
        out->system_prompt[SHM_SPEC_SYSTEM_MAX - 1] = 0;
    }
    return rc;
}

uint32_t shm_spec_names(const struct shm_spec_region *r, char names[][SHM_SPEC_NAME_MAX],
                        uint32_t max)
{
    uint32_t k = 0;
    bool gaveup = false;

    if (shm_spec_check(r))
        return 0;
    SPEC_READ(r, t, &gaveup, {
        uint32_t n = FAVO_MIN(ck_pr_load_32(&t->n), (uint32_t)SHM_SPEC_MAX);
        k = FAVO_MIN(n, max);
        for (uint32_t i = 0; i < k; i++) {
            memcpy(names[i], t->specs[i].name, SHM_SPEC_NAME_MAX);
            names[i][SHM_SPEC_NAME_MAX - 1] = 0;
        }
    });
    return gaveup ? 0 : k;
}

/* ------------------------------------------------------------ apply */

void shm_spec_apply(const struct shm_spec *s, uint32_t given, struct shm_spec_gen *g)
{
    uint32_t d = s->set & ~given; /* defaults that apply */

    if (d & SHM_SPEC_TEMPERATURE) g->temperature = s->temperature;
    if (d & SHM_SPEC_TOP_K) g->top_k = s->top_k;
    if (d & SHM_SPEC_TOP_P) g->top_p = s->top_p;
    if (d & SHM_SPEC_MIN_P) g->min_p = s->min_p;
    if (d & SHM_SPEC_FREQ) g->frequency_penalty = s->frequency_penalty;
    if (d & SHM_SPEC_PRESENCE) g->presence_penalty = s->presence_penalty;
    if (d & SHM_SPEC_SEED) {
        g->seed = s->seed;
        g->has_seed = true;
    }
    if (!(given & SHM_SPEC_MAX_TOKENS) || g->max_tokens == 0)
        g->max_tokens = (s->set & SHM_SPEC_MAX_TOKENS) ? s->default_max_tokens : 0;
    if (g->max_tokens)
        g->max_tokens = shm_spec_cap(s, g->max_tokens);
    if (s->set & SHM_SPEC_PRIORITY)
        g->prio = SHM_SPEC_PRIO_MAX - s->priority;
    g->cache_ttl = s->cache_ttl;
}
