/*
 * dp_config.h - the serve config file (INI, libinih).
 *
 *   [serve]                    every serve flag is a key, named like the
 *   port = 8080                flag without "--" (drain-timeout, cores...)
 *   cores = auto
 *
 *   [specialist.NAME]          one table row per section
 *   model = /models/x.gguf     keys: model, system_prompt, max_tokens,
 *   max_tokens = 256           priority, cache_ttl, temperature
 *
 * Precedence: command line > FAVO_* environment > config file > default.
 * dp_config_load runs after dp_opt_parse and fills the options through
 * dp_opt_set_config, which keeps command-line and environment values.
 * Errors name the file, the line, the section and key, and why; unknown
 * sections and keys are errors, so a typo never passes silently. The
 * struct owns every string the options point at: keep it alive while the
 * options are used, then dp_config_free.
 */
#ifndef DP_CONFIG_H
#define DP_CONFIG_H

#include <stddef.h>

#include "dp.h"

#define DP_CONFIG_MAX_SPECIALISTS 64

struct dp_specialist {
    char *name;
    char *model;          /* NULL: the server's model */
    char *system_prompt;  /* NULL: none */
    long max_tokens;      /* 0: request decides */
    long priority;        /* higher first; default 0 */
    double cache_ttl;     /* seconds; 0: no response cache */
    double temperature;   /* < 0: request decides */
};

struct dp_config {
    struct dp_specialist spec[DP_CONFIG_MAX_SPECIALISTS];
    unsigned nspec;
    char **strs;          /* owned option values */
    unsigned nstrs;
};

/* 0, or -EINVAL / -ENOENT / -ENOMEM with "FILE:LINE: why" in err. */
int dp_config_load(const char *path, struct dp_opt *opts, struct dp_config *cfg, char *err,
                   size_t errlen);
void dp_config_free(struct dp_config *cfg);
const struct dp_specialist *dp_config_specialist(const struct dp_config *cfg, const char *name);

#endif /* DP_CONFIG_H */
