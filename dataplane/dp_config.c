/*
 * dp_config.c - INI config loading; see dp_config.h.
 */
#include "dp_config.h"

#include <errno.h>
#include <ini.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct cfg_ctx {
    struct dp_opt *opts;
    struct dp_config *cfg;
    char why[512];  /* the first error; inih gives its line number */
    int rc;
};

static int cfg_fail(struct cfg_ctx *c, int rc, const char *sec, const char *key,
                    const char *why)
{
    if (!c->rc) {
        c->rc = rc;
        snprintf(c->why, sizeof(c->why), "[%s] %s: %s", sec, key, why);
    }
    return 0;
}

static int cfg_long(const char *v, long *out)
{
    char *end;

    errno = 0;
    *out = strtol(v, &end, 0);
    return errno || end == v || *end ? -1 : 0;
}

static int cfg_double(const char *v, double *out)
{
    char *end;

    errno = 0;
    *out = strtod(v, &end);
    return errno || end == v || *end || !isfinite(*out) ? -1 : 0;
}

static int cfg_serve(struct cfg_ctx *c, const char *sec, const char *key, const char *val)
{
    struct dp_opt *o = dp_opt_find(c->opts, key);
    long l;
    double d;

    if (!o)
        return cfg_fail(c, -ENOENT, sec, key, "unknown key (keys are serve's flag names)");
    if (!strcmp(key, "config"))
        return cfg_fail(c, -EINVAL, sec, key, "a config file cannot name another");
    if (o->kind == DP_OPT_INT && cfg_long(val, &l) < 0)
        return cfg_fail(c, -EINVAL, sec, key, "wants an integer");
    if (o->kind == DP_OPT_DOUBLE && cfg_double(val, &d) < 0)
        return cfg_fail(c, -EINVAL, sec, key, "wants a number");
    char **n = realloc(c->cfg->strs, sizeof(char *) * (c->cfg->nstrs + 1));
    if (!n)
        return cfg_fail(c, -ENOMEM, sec, key, "out of memory");
    c->cfg->strs = n;
    char *v = strdup(val);
    if (!v)
        return cfg_fail(c, -ENOMEM, sec, key, "out of memory");
    n[c->cfg->nstrs++] = v;
    if (dp_opt_set_config(c->opts, key, v) < 0)
        return cfg_fail(c, -EINVAL, sec, key, "invalid value");
    return 1;
}

static int cfg_str(struct cfg_ctx *c, const char *sec, const char *key, const char *val,
                   char **dst)
{
    free(*dst);
    *dst = strdup(val);
    return *dst ? 1 : cfg_fail(c, -ENOMEM, sec, key, "out of memory");
}

/* The specialist of section sec ("specialist.NAME"), made on first sight;
 * NULL after cfg_fail. */
static struct dp_specialist *spec_of(struct cfg_ctx *c, const char *sec, const char *key)
{
    const char *name = sec + strlen("specialist.");
    struct dp_config *cfg = c->cfg;
    struct dp_specialist *s;

    if (!*name) {
        cfg_fail(c, -EINVAL, sec, key, "a specialist section needs a name");
        return NULL;
    }
    for (unsigned i = 0; i < cfg->nspec; i++)
        if (!strcmp(cfg->spec[i].name, name))
            return &cfg->spec[i];
    if (cfg->nspec >= DP_CONFIG_MAX_SPECIALISTS) {
        cfg_fail(c, -EINVAL, sec, key, "too many specialists (64 at most)");
        return NULL;
    }
    s = &cfg->spec[cfg->nspec];
    memset(s, 0, sizeof(*s));
    s->temperature = -1.0;
    s->name = strdup(name);
    if (!s->name) {
        cfg_fail(c, -ENOMEM, sec, key, "out of memory");
        return NULL;
    }
    cfg->nspec++;
    return s;
}

static int cfg_specialist(struct cfg_ctx *c, const char *sec, const char *key, const char *val)
{
    struct dp_specialist *s = spec_of(c, sec, key);

    if (!s)
        return 0;
    if (!strcmp(key, "model"))
        return cfg_str(c, sec, key, val, &s->model);
    if (!strcmp(key, "system_prompt"))
        return cfg_str(c, sec, key, val, &s->system_prompt);
    if (!strcmp(key, "max_tokens")) {
        if (cfg_long(val, &s->max_tokens) < 0 || s->max_tokens < 0)
            return cfg_fail(c, -EINVAL, sec, key, "wants a non-negative integer");
        return 1;
    }
    if (!strcmp(key, "priority")) {
        if (cfg_long(val, &s->priority) < 0)
            return cfg_fail(c, -EINVAL, sec, key, "wants an integer");
        s->given |= SHM_SPEC_PRIORITY;
        return 1;
    }
    if (!strcmp(key, "cache_ttl")) {
        if (cfg_double(val, &s->cache_ttl) < 0 || s->cache_ttl < 0 ||
            s->cache_ttl > SHM_SPEC_TTL_MAX)
            return cfg_fail(c, -EINVAL, sec, key, "wants seconds in [0, 86400]");
        return 1;
    }
    if (!strcmp(key, "temperature")) {
        if (cfg_double(val, &s->temperature) < 0 || s->temperature < 0 || s->temperature > 2)
            return cfg_fail(c, -EINVAL, sec, key, "wants a number in [0, 2]");
        s->given |= SHM_SPEC_TEMPERATURE;
        return 1;
    }
    if (!strcmp(key, "top_p")) {
        if (cfg_double(val, &s->top_p) < 0 || s->top_p <= 0 || s->top_p > 1)
            return cfg_fail(c, -EINVAL, sec, key, "wants a number in (0, 1]");
        s->given |= SHM_SPEC_TOP_P;
        return 1;
    }
    if (!strcmp(key, "min_p")) {
        if (cfg_double(val, &s->min_p) < 0 || s->min_p < 0 || s->min_p > 1)
            return cfg_fail(c, -EINVAL, sec, key, "wants a number in [0, 1]");
        s->given |= SHM_SPEC_MIN_P;
        return 1;
    }
    if (!strcmp(key, "frequency_penalty") || !strcmp(key, "presence_penalty")) {
        double *d = key[0] == 'f' ? &s->frequency_penalty : &s->presence_penalty;
        if (cfg_double(val, d) < 0 || *d < -2 || *d > 2)
            return cfg_fail(c, -EINVAL, sec, key, "wants a number in [-2, 2]");
        s->given |= key[0] == 'f' ? SHM_SPEC_FREQ : SHM_SPEC_PRESENCE;
        return 1;
    }
    if (!strcmp(key, "top_k")) {
        if (cfg_long(val, &s->top_k) < 0 || s->top_k < 0 || s->top_k > 1000000)
            return cfg_fail(c, -EINVAL, sec, key, "wants an integer >= 0 (0 = off)");
        s->given |= SHM_SPEC_TOP_K;
        return 1;
    }
    if (!strcmp(key, "default_max_tokens")) {
        if (cfg_long(val, &s->default_max_tokens) < 0 || s->default_max_tokens < 1 ||
            s->default_max_tokens > 1000000)
            return cfg_fail(c, -EINVAL, sec, key, "wants an integer >= 1");
        s->given |= SHM_SPEC_MAX_TOKENS;
        return 1;
    }
    if (!strcmp(key, "seed")) {
        char *end;
        errno = 0;
        s->seed = strtoll(val, &end, 0);
        if (errno || end == val || *end)
            return cfg_fail(c, -EINVAL, sec, key, "wants an integer");
        s->given |= SHM_SPEC_SEED;
        return 1;
    }
    return cfg_fail(c, -ENOENT, sec, key,
                    "unknown key (model, system_prompt, max_tokens, default_max_tokens, "
                    "priority, cache_ttl, temperature, top_p, top_k, min_p, "
                    "frequency_penalty, presence_penalty, seed)");
}

static int cfg_handler(void *user, const char *sec, const char *key, const char *val)
{
    struct cfg_ctx *c = user;

    if (c->rc)
        return 1; /* only the first error is reported */
    if (!strcmp(sec, "serve"))
        return cfg_serve(c, sec, key, val);
    if (!strncmp(sec, "specialist.", strlen("specialist.")))
        return cfg_specialist(c, sec, key, val);
    return cfg_fail(c, -ENOENT, sec, key, "unknown section (serve, specialist.NAME)");
}

/*
 * inih calls the handler for keys only, so a section without keys would
 * vanish: "[specialist.echo]" alone, a specialist with every default, would
 * be silently absent from /v1/models, and a misspelt empty "[srve]" would
 * pass unseen. The reader hands inih its lines as fgets() would and, on the
 * way, looks at every section header (inih's rule: after leading blanks,
 * '[' then the name up to the first ']'): it makes the specialist of a
 * "[specialist.NAME]" and refuses an unknown section, remembering the line.
 */
struct cfg_reader {
    FILE *f;
    struct cfg_ctx *c;
    int line, err_line;
};

static char *cfg_read_line(char *str, int num, void *stream)
{
    struct cfg_reader *r = stream;
    char *line = fgets(str, num, r->f), *p, *end;
    char sec[256];

    if (!line || r->c->rc)
        return line;
    r->line++;
    for (p = line; *p == ' ' || *p == '\t'; p++)
        ;
    if (*p != '[' || !(end = strchr(p + 1, ']')))
        return line;
    snprintf(sec, sizeof(sec), "%.*s", (int)(end - p - 1), p + 1);
    if (!strncmp(sec, "specialist.", strlen("specialist.")))
        spec_of(r->c, sec, "(section)");
    else if (strcmp(sec, "serve"))
        cfg_fail(r->c, -ENOENT, sec, "(section)", "unknown section (serve, specialist.NAME)");
    if (r->c->rc)
        r->err_line = r->line;
    return line;
}

int dp_config_load(const char *path, struct dp_opt *opts, struct dp_config *cfg, char *err,
                   size_t errlen)
{
    struct cfg_ctx c = { .opts = opts, .cfg = cfg };
    struct cfg_reader r = { .f = fopen(path, "r"), .c = &c };
    int line;

    memset(cfg, 0, sizeof(*cfg));
    if (!r.f) {
        snprintf(err, errlen, "%s: cannot open the file: %s", path, strerror(errno));
        return -ENOENT;
    }
    line = ini_parse_stream(cfg_read_line, &r, cfg_handler, &c);
    fclose(r.f);
    if (line < 0) {
        snprintf(err, errlen, "%s: cannot parse (out of memory)", path);
        return -ENOMEM;
    }
    if (r.err_line && (!line || r.err_line < line))
        line = r.err_line; /* the reader's refusal came first */
    if (line > 0) {
        /* inih reports the first failing line: ours, or a syntax error. */
        if (c.rc)
            snprintf(err, errlen, "%s:%d: %s", path, line, c.why);
        else
            snprintf(err, errlen, "%s:%d: syntax error (want 'key = value' or '[section]')",
                     path, line);
        return c.rc ? c.rc : -EINVAL;
    }
    return 0;
}

void dp_config_free(struct dp_config *cfg)
{
    for (unsigned i = 0; i < cfg->nspec; i++) {
        free(cfg->spec[i].name);
        free(cfg->spec[i].model);
        free(cfg->spec[i].system_prompt);
    }
    for (unsigned i = 0; i < cfg->nstrs; i++)
        free(cfg->strs[i]);
    free(cfg->strs);
    memset(cfg, 0, sizeof(*cfg));
}

/* Does a specialist's `model` name the server's model? */
static bool names_model(const char *m, const char *model_id, const char *model_path)
{
    const char *base = strrchr(model_path, '/');

    base = base ? base + 1 : model_path;
    return !strcmp(m, model_id) || !strcmp(m, model_path) || !strcmp(m, base);
}

int dp_config_spec_table(const struct dp_config *cfg, const char *cfg_path, const char *model_id,
                         const char *model_path, struct shm_spec_table *t, char *err,
                         size_t errlen)
{
    char why[400];
    int rc;

    memset(t, 0, sizeof(*t));
    for (unsigned i = 0; i < cfg->nspec; i++) {
        const struct dp_specialist *d = &cfg->spec[i];
        struct shm_spec s;

        shm_spec_clear(&s);
        if (strlen(d->name) >= sizeof(s.name)) {
            snprintf(err, errlen, "%s: specialist '%.40s...': name: longer than 63 bytes",
                     cfg_path, d->name);
            return -EINVAL;
        }
        snprintf(s.name, sizeof(s.name), "%s", d->name);
        if (!strcmp(d->name, model_id)) {
            snprintf(err, errlen, "%s: specialist '%s': name: the served model's own name",
                     cfg_path, d->name);
            return -EINVAL;
        }
        if (d->model && !names_model(d->model, model_id, model_path)) {
            snprintf(err, errlen, "%s: specialist '%s': model: '%s' is not loaded (this server "
                     "runs '%s')", cfg_path, d->name, d->model, model_id);
            return -EINVAL;
        }
        if (d->system_prompt && strlen(d->system_prompt) >= sizeof(s.system_prompt)) {
            snprintf(err, errlen, "%s: specialist '%s': system_prompt: longer than 4095 bytes",
                     cfg_path, d->name);
            return -EINVAL;
        }
        snprintf(s.model, sizeof(s.model), "%s", model_id);
        if (d->system_prompt)
            snprintf(s.system_prompt, sizeof(s.system_prompt), "%s", d->system_prompt);
        s.set = d->given;
        s.temperature = (float)d->temperature;
        s.top_p = (float)d->top_p;
        s.min_p = (float)d->min_p;
        s.frequency_penalty = (float)d->frequency_penalty;
        s.presence_penalty = (float)d->presence_penalty;
        s.top_k = (int32_t)d->top_k;
        s.seed = d->seed;
        s.default_max_tokens = (uint32_t)d->default_max_tokens;
        s.max_tokens_cap = d->max_tokens > 0 && d->max_tokens <= UINT32_MAX
                               ? (uint32_t)d->max_tokens : 0;
        s.priority = d->priority >= 0 && d->priority <= 255 ? (uint32_t)d->priority : 255;
        s.cache_ttl = (uint32_t)d->cache_ttl;
        if (d->cache_ttl > 0 && s.cache_ttl == 0)
            s.cache_ttl = 1; /* a fraction of a second is the smallest TTL: one second */
        rc = shm_spec_add(t, &s, why, sizeof(why));
        if (rc) {
            snprintf(err, errlen, "%s: %s", cfg_path, why);
            return rc;
        }
    }
    return 0;
}

const struct dp_specialist *dp_config_specialist(const struct dp_config *cfg, const char *name)
{
    for (unsigned i = 0; i < cfg->nspec; i++)
        if (!strcmp(cfg->spec[i].name, name))
            return &cfg->spec[i];
    return NULL;
}
