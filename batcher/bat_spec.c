/*
 * bat_spec.c - specialist table: validation with field-naming messages,
 * lookup by name, defaults applied to a request.
 */
#include "bat_spec.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "bat_cache.h"
#include "bat_sched.h"

static int bad(const struct bat_spec *s, char *err, size_t n, const char *field, const char *why)
{
    if (err && n)
        snprintf(err, n, "specialist '%.*s': %s: %s", BAT_SPEC_NAME_MAX, s->name, field, why);
    return -EINVAL;
}

int bat_spec_validate(const struct bat_spec *s, char *err, size_t n)
{
    const struct eng_sample_params *p = &s->params;

    if (!memchr(s->name, 0, sizeof(s->name)) || !s->name[0])
        return bad(s, err, n, "name", "must be 1..63 bytes");
    for (const char *c = s->name; *c; c++)
        if (*c <= ' ' || *c == '"' || *c == '\\' || *c == 0x7f)
            return bad(s, err, n, "name", "no spaces, quotes, backslashes or control bytes");
    if (!memchr(s->model, 0, sizeof(s->model)) || !s->model[0])
        return bad(s, err, n, "model", "must be 1..127 bytes");
    if (!memchr(s->system_prompt, 0, sizeof(s->system_prompt)))
        return bad(s, err, n, "system_prompt", "longer than 4095 bytes");
    if (!isfinite(p->temperature) || p->temperature < 0 || p->temperature > 2)
        return bad(s, err, n, "temperature", "must be 0..2");
    if (!isfinite(p->top_p) || p->top_p <= 0 || p->top_p > 1)
        return bad(s, err, n, "top_p", "must be in (0, 1]");
    if (!isfinite(p->min_p) || p->min_p < 0 || p->min_p > 1)
        return bad(s, err, n, "min_p", "must be 0..1");
    if (p->top_k < 0)
        return bad(s, err, n, "top_k", "must be >= 0 (0 = off)");
    if (!isfinite(p->freq_penalty) || fabsf(p->freq_penalty) > 2)
        return bad(s, err, n, "frequency_penalty", "must be -2..2");
    if (!isfinite(p->presence_penalty) || fabsf(p->presence_penalty) > 2)
        return bad(s, err, n, "presence_penalty", "must be -2..2");
    if (p->n_logprobs > ENG_SAMPLE_MAX_LOGPROBS)
        return bad(s, err, n, "logprobs", "must be 0..20");
    if (s->max_tokens_cap == 0)
        return bad(s, err, n, "max_tokens", "cap must be >= 1");
    if (s->default_max_tokens > s->max_tokens_cap)
        return bad(s, err, n, "default_max_tokens", "above the max_tokens cap");
    if (s->prio >= BAT_PRIO_N)
        return bad(s, err, n, "priority", "must be 0..3");
    if (s->cache_ttl_s > BAT_CACHE_TTL_MAX)
        return bad(s, err, n, "cache_ttl", "must be 0..86400 seconds");
    return 0;
}

int bat_spec_add(struct bat_spec_table *t, const struct bat_spec *s, char *err, size_t n)
{
    int rc = bat_spec_validate(s, err, n);

    if (rc)
        return rc;
    if (bat_spec_find(t, s->name, strlen(s->name))) {
        bad(s, err, n, "name", "defined twice");
        return -EEXIST;
    }
    if (t->n >= BAT_SPEC_MAX) {
        bad(s, err, n, "name", "too many specialists (64)");
        return -ENOSPC;
    }
    t->specs[t->n++] = *s;
    return 0;
}

const struct bat_spec *bat_spec_find(const struct bat_spec_table *t, const char *name, size_t len)
{
    if (!name || len == 0 || len >= BAT_SPEC_NAME_MAX)
        return NULL;
    for (uint32_t i = 0; i < t->n; i++)
        if (!strncmp(t->specs[i].name, name, len) && t->specs[i].name[len] == 0)
            return &t->specs[i];
    return NULL;
}

void bat_spec_apply(const struct bat_spec *s, struct bat_gen *g)
{
    const struct eng_sample_params *d = &s->params;

    if (!(g->set & BAT_GEN_TEMPERATURE)) g->sp.temperature = d->temperature;
    if (!(g->set & BAT_GEN_TOP_K)) g->sp.top_k = d->top_k;
    if (!(g->set & BAT_GEN_TOP_P)) g->sp.top_p = d->top_p;
    if (!(g->set & BAT_GEN_MIN_P)) g->sp.min_p = d->min_p;
    if (!(g->set & BAT_GEN_FREQ)) g->sp.freq_penalty = d->freq_penalty;
    if (!(g->set & BAT_GEN_PRESENCE)) g->sp.presence_penalty = d->presence_penalty;
    if (!(g->set & BAT_GEN_SEED)) g->sp.seed = d->seed;
    if (!(g->set & BAT_GEN_LOGPROBS)) g->sp.n_logprobs = d->n_logprobs;
    if (!(g->set & BAT_GEN_MAX_TOKENS) || g->max_tokens == 0)
        g->max_tokens = s->default_max_tokens ? s->default_max_tokens : s->max_tokens_cap;
    if (g->max_tokens > s->max_tokens_cap)
        g->max_tokens = s->max_tokens_cap;
    g->prio = s->prio;
    g->cache_ttl_s = s->cache_ttl_s;
}
