/*
 * dp_config.h - the serve config file (INI, libinih).
 *
 *   [serve]                    every serve flag is a key, named like the
 *   port = 8080                flag without "--" (drain-timeout, cores...)
 *   cores = auto
 *
 *   [specialist.NAME]          one table row per section (shm_spec.h)
 *   model = x                  keys: model, system_prompt, max_tokens (the
 *   max_tokens = 256           cap), default_max_tokens, priority (0..3,
 *   cache_ttl = 60             larger first), cache_ttl (0..86400 s),
 *                              temperature, top_p, top_k, min_p,
 *                              frequency_penalty, presence_penalty, seed
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
#include "shm_spec.h"

#define DP_CONFIG_MAX_SPECIALISTS 64

struct dp_specialist {
    char *name;
    char *model;          /* NULL: the server's model */
    char *system_prompt;  /* NULL: none */
    long max_tokens;      /* 0: request decides */
    long priority;        /* higher first; default 0 */
    double cache_ttl;     /* seconds; 0: no response cache */
    double temperature;   /* < 0: request decides */
    double top_p, min_p, frequency_penalty, presence_penalty;
    long top_k, default_max_tokens;
    long long seed;
    unsigned given;       /* SHM_SPEC_* bits: the keys the section set */
};

struct dp_config {
    struct dp_specialist spec[DP_CONFIG_MAX_SPECIALISTS];
    unsigned nspec;
    char **strs;          /* owned option values */
    unsigned nstrs;
};

/* 0, or -EINVAL / -ENOENT / -ENOMEM with "FILE:LINE: why" in err. cfg holds
 * what was read either way (options set from the file point into it):
 * dp_config_free it after a failure too. */
int dp_config_load(const char *path, struct dp_opt *opts, struct dp_config *cfg, char *err,
                   size_t errlen);
void dp_config_free(struct dp_config *cfg);
const struct dp_specialist *dp_config_specialist(const struct dp_config *cfg, const char *name);
/*
 * The specialist table for the server's model: model_id is its name
 * (/v1/models id), model_path its file. A specialist's `model` must name
 * that model (its id, its path or its file name) or be absent; a name must
 * not be the model's own id. 0, or -EINVAL / -EEXIST / -ENOSPC with
 * "PATH: specialist 'x': field: why" in err (path = cfg_path).
 */
int dp_config_spec_table(const struct dp_config *cfg, const char *cfg_path, const char *model_id,
                         const char *model_path, struct shm_spec_table *t, char *err,
                         size_t errlen);

#endif /* DP_CONFIG_H */
