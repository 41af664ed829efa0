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
    char why[200];  /* the first error; inih gives its line number */
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

static int cfg_specialist(struct cfg_ctx *c, const char *sec, const char *key, const char *val)
{
    const char *name = sec + strlen("specialist.");
    struct dp_config *cfg = c->cfg;
    struct dp_specialist *s = NULL;

    if (!*name)
        return cfg_fail(c, -EINVAL, sec, key, "a specialist section needs a name");
    for (unsigned i = 0; i < cfg->nspec; i++)
        if (!strcmp(cfg->spec[i].name, name))
            s = &cfg->spec[i];
    if (!s) {
        if (cfg->nspec >= DP_CONFIG_MAX_SPECIALISTS)
            return cfg_fail(c, -EINVAL, sec, key, "too many specialists (64 at most)");
        s = &cfg->spec[cfg->nspec];
        memset(s, 0, sizeof(*s));
        s->temperature = -1.0;
        s->name = strdup(name);
        if (!s->name)
            return cfg_fail(c, -ENOMEM, sec, key, "out of memory");
        cfg->nspec++;
    }
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
        return 1;
    }
    if (!strcmp(key, "cache_ttl")) {
        if (cfg_double(val, &s->cache_ttl) < 0 || s->cache_ttl < 0)
            return cfg_fail(c, -EINVAL, sec, key, "wants seconds >= 0");
        return 1;
    }
    if (!strcmp(key, "temperature")) {
        if (cfg_double(val, &s->temperature) < 0 || s->temperature < 0 || s->temperature > 2)
            return cfg_fail(c, -EINVAL, sec, key, "wants a number in [0, 2]");
        return 1;
    }
    return cfg_fail(c, -ENOENT, sec, key,
                    "unknown key (model, system_prompt, max_tokens, priority, cache_ttl, "
                    "temperature)");
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

int dp_config_load(const char *path, struct dp_opt *opts, struct dp_config *cfg, char *err,
                   size_t errlen)
{
    struct cfg_ctx c = { .opts = opts, .cfg = cfg };

    memset(cfg, 0, sizeof(*cfg));
    int line = ini_parse(path, cfg_handler, &c);
    if (line < 0) {
        snprintf(err, errlen, "%s: cannot %s", path, line == -1 ? "open the file" : "parse");
        return line == -1 ? -ENOENT : -ENOMEM;
    }
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

const struct dp_specialist *dp_config_specialist(const struct dp_config *cfg, const char *name)
{
    for (unsigned i = 0; i < cfg->nspec; i++)
        if (!strcmp(cfg->spec[i].name, name))
            return &cfg->spec[i];
    return NULL;
}
