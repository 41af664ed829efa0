/*
 * test-dp-config.c - serve config files (dataplane/dp_config.h):
 * precedence command line > FAVO_* env > config > default, the specialist
 * table, and errors naming file, line, section, key and why.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dp.h"
#include "dp_config.h"
#include "t_util.h"

#define CHECK(c) T_REQUIRE(c)

static char *dir;

static const char *write_ini(const char *name, const char *text)
{
    static char path[512];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    CHECK(f && fputs(text, f) >= 0 && fclose(f) == 0);
    return path;
}

static void opts_init(struct dp_opt *o)
{
    struct dp_opt tmpl[] = {
        { "port", 'p', DP_OPT_INT, "PORT", "8080", "port" },
        { "instance", 0, DP_OPT_STR, "NAME", "default", "instance" },
        { "cores", 0, DP_OPT_STR, "SPEC", "auto", "cores" },
        { "drain-timeout", 0, DP_OPT_DOUBLE, "S", "30", "drain" },
        { "config", 'c', DP_OPT_STR, "FILE", NULL, "config" },
        DP_OPT_END
    };
    memcpy(o, tmpl, sizeof(tmpl));
}

static const struct dp_cmd cmd = { "serve", "", "", "", NULL };

static int load(const char *text, char *err, size_t len)
{
    struct dp_opt o[6];
    struct dp_config cfg;
    char *argv[] = { "serve", NULL };
    int npos;

    opts_init(o);
    CHECK(dp_opt_parse(&cmd, o, 1, argv, &npos) == 0);
    int rc = dp_config_load(write_ini("bad.ini", text), o, &cfg, err, len);
    dp_config_free(&cfg);
    printf("%d: %s\n", rc, rc ? err : "(ok)");
    return rc;
}

int main(void)
{
    struct dp_opt o[6];
    struct dp_config cfg;
    char err[512];
    int npos;

    dir = t_tmpdir();
    CHECK(dir);
    const char *ini = write_ini("favo.ini",
                               "; comment\n"
                               "[serve]\n"
                               "port = 1111\n"
                               "instance = from-config\n"
                               "cores = engine=0-1\n"
                               "drain-timeout = 5.5\n"
                               "\n"
                               "[specialist.sql]\n"
                               "model = /m/sql.gguf\n"
                               "system_prompt = You write SQL.\n"
                               "max_tokens = 256\n"
                               "priority = 2\n"
                               "cache_ttl = 60\n"
                               "temperature = 0.2\n"
                               "[specialist.chat]\n"
                               "priority = -1\n");
    char *argv[] = { "serve", "--port", "9000", NULL };
    setenv("FAVO_INSTANCE", "from-env", 1);
    opts_init(o);
    CHECK(dp_opt_parse(&cmd, o, 3, argv, &npos) == 0);
    unsetenv("FAVO_INSTANCE");
    CHECK(dp_config_load(ini, o, &cfg, err, sizeof(err)) == 0);
    CHECK(dp_opt_int(o, "port") == 9000);                          /* flag wins */
    CHECK(!strcmp(dp_opt_str(o, "instance"), "from-env"));         /* env beats config */
    CHECK(!strcmp(dp_opt_str(o, "cores"), "engine=0-1"));          /* config beats default */
    CHECK(!strcmp(dp_opt_find(o, "cores")->source, "config"));
    CHECK(dp_opt_double(o, "drain-timeout") == 5.5);
    CHECK(dp_opt_str(o, "config") == NULL);                        /* default stays */
    CHECK(cfg.nspec == 2);
    const struct dp_specialist *s = dp_config_specialist(&cfg, "sql");
    CHECK(s && !strcmp(s->model, "/m/sql.gguf") && !strcmp(s->system_prompt, "You write SQL."));
    CHECK(s->max_tokens == 256 && s->priority == 2 && s->cache_ttl == 60 && s->temperature == 0.2);
    s = dp_config_specialist(&cfg, "chat");
    CHECK(s && s->priority == -1 && s->model == NULL && s->temperature < 0);
    CHECK(dp_config_specialist(&cfg, "nope") == NULL);
    dp_config_free(&cfg);

    CHECK(load("[serve]\nport = 1\nprot = 2\n", err, sizeof(err)) == -ENOENT);
    CHECK(strstr(err, "bad.ini:3: [serve] prot: unknown key"));
    CHECK(load("[serve]\n\nport = eighty\n", err, sizeof(err)) == -EINVAL);
    CHECK(strstr(err, "bad.ini:3: [serve] port: wants an integer"));
    CHECK(load("[serve]\ndrain-timeout = 1s\n", err, sizeof(err)) == -EINVAL);
    CHECK(strstr(err, ":2: [serve] drain-timeout: wants a number"));
    CHECK(load("[srve]\nport = 1\n", err, sizeof(err)) == -ENOENT);
    CHECK(strstr(err, ":1: [srve] (section): unknown section"));
    /* a section without keys is still seen (inih alone would skip it) */
    CHECK(load("[serve]\nport = 1\n  [srve]\n", err, sizeof(err)) == -ENOENT);
    CHECK(strstr(err, "bad.ini:3: [srve] (section): unknown section"));
    CHECK(load("[specialist.a]\nmodel = x\ntemprature = 1\n", err, sizeof(err)) == -ENOENT);
    CHECK(strstr(err, ":3: [specialist.a] temprature: unknown key"));
    CHECK(load("[specialist.a]\ntemperature = 7\n", err, sizeof(err)) == -EINVAL);
    CHECK(strstr(err, ":2: [specialist.a] temperature: wants a number in [0, 2]"));
    CHECK(load("[specialist.]\nmodel = x\n", err, sizeof(err)) == -EINVAL);
    CHECK(strstr(err, ":1: [specialist.] (section): a specialist section needs a name"));
    CHECK(load("[serve]\nconfig = other.ini\n", err, sizeof(err)) == -EINVAL);
    CHECK(load("[serve]\nport 8080\n", err, sizeof(err)) == -EINVAL);
    CHECK(strstr(err, ":2: syntax error"));

    /* The specialist table built from a config (shm_spec.h). */
    {
        static struct shm_spec_table t;
        const struct shm_spec *c0;
        static const char spec_ini[] =
            "[specialist.classify]\n"
            "model = m.gguf\n"
            "system_prompt = Be brief.\n"
            "max_tokens = 16\n"
            "default_max_tokens = 8\n"
            "priority = 3\n"
            "cache_ttl = 0.5\n"
            "temperature = 0\n"
            "top_p = 0.9\n"
            "top_k = 40\n"
            "min_p = 0.05\n"
            "frequency_penalty = 0.5\n"
            "presence_penalty = -0.5\n"
            "seed = 7\n"
            "[specialist.echo] ; every default\n"
            "[specialist.chat]\n"
            "cache_ttl = 0\n";
        const char *p2 = write_ini("spec.ini", spec_ini);
        opts_init(o);
        char *a0[] = { "serve", NULL };
        CHECK(dp_opt_parse(&cmd, o, 1, a0, &npos) == 0);
        CHECK(dp_config_load(p2, o, &cfg, err, sizeof(err)) == 0);
        CHECK(dp_config_spec_table(&cfg, p2, "m", "/models/m.gguf", &t, err, sizeof(err)) == 0);
        CHECK(t.n == 3);
        CHECK((c0 = shm_spec_table_find(&t, "echo", 4)) && c0->set == 0 && !c0->system_prompt[0]);
        const struct shm_spec *c = shm_spec_table_find(&t, "classify", 8);
        CHECK(c && !strcmp(c->system_prompt, "Be brief.") && c->max_tokens_cap == 16 &&
              c->default_max_tokens == 8 && c->priority == 3 && c->cache_ttl == 1 &&
              c->temperature == 0 && c->top_k == 40 && c->seed == 7 &&
              c->set == (SHM_SPEC_TEMPERATURE | SHM_SPEC_TOP_P | SHM_SPEC_TOP_K | SHM_SPEC_MIN_P |
                         SHM_SPEC_FREQ | SHM_SPEC_PRESENCE | SHM_SPEC_SEED |
                         SHM_SPEC_MAX_TOKENS | SHM_SPEC_PRIORITY));
        c = shm_spec_table_find(&t, "chat", 4);
        CHECK(c && c->set == 0 && c->cache_ttl == 0 && c->max_tokens_cap == 0);
        dp_config_free(&cfg);
        /* a file of one empty specialist section */
        opts_init(o);
        CHECK(dp_opt_parse(&cmd, o, 1, a0, &npos) == 0);
        CHECK(dp_config_load(write_ini("spec-empty.ini", "[specialist.only]\n"), o, &cfg, err,
                             sizeof(err)) == 0);
        CHECK(cfg.nspec == 1 && dp_config_specialist(&cfg, "only"));
        dp_config_free(&cfg);
        opts_init(o);
        CHECK(dp_opt_parse(&cmd, o, 1, a0, &npos) == 0);
        CHECK(dp_config_load(p2 = write_ini("spec.ini", spec_ini), o, &cfg, err,
                             sizeof(err)) == 0);
        /* another model than the one served */
        CHECK(dp_config_spec_table(&cfg, p2, "other", "/models/other.gguf", &t, err,
                                   sizeof(err)) == -EINVAL);
        CHECK(strstr(err, "spec.ini: specialist 'classify': model: 'm.gguf' is not loaded"));
        /* a specialist named like the model */
        CHECK(dp_config_spec_table(&cfg, p2, "chat", "/models/m.gguf", &t, err, sizeof(err)) ==
              -EINVAL);
        CHECK(strstr(err, "specialist 'chat': name: the served model's own name"));
        dp_config_free(&cfg);
        /* cross-field checks name the field */
        p2 = write_ini("spec2.ini", "[specialist.x]\nmax_tokens = 4\ndefault_max_tokens = 9\n");
        opts_init(o);
        CHECK(dp_opt_parse(&cmd, o, 1, a0, &npos) == 0);
        CHECK(dp_config_load(p2, o, &cfg, err, sizeof(err)) == 0);
        CHECK(dp_config_spec_table(&cfg, p2, "m", "m.gguf", &t, err, sizeof(err)) == -EINVAL);
        CHECK(strstr(err, "specialist 'x': default_max_tokens: above the max_tokens cap"));
        dp_config_free(&cfg);
        p2 = write_ini("spec3.ini", "[specialist.x]\npriority = 9\n");
        opts_init(o);
        CHECK(dp_opt_parse(&cmd, o, 1, a0, &npos) == 0);
        CHECK(dp_config_load(p2, o, &cfg, err, sizeof(err)) == 0);
        CHECK(dp_config_spec_table(&cfg, p2, "m", "m.gguf", &t, err, sizeof(err)) == -EINVAL);
        CHECK(strstr(err, "specialist 'x': priority"));
        dp_config_free(&cfg);
    }
    CHECK(load("[specialist.a]\ncache_ttl = 90000\n", err, sizeof(err)) == -EINVAL);
    CHECK(strstr(err, ":2: [specialist.a] cache_ttl: wants seconds in [0, 86400]"));
    CHECK(load("[specialist.a]\ntop_p = 0\n", err, sizeof(err)) == -EINVAL);
    CHECK(strstr(err, ":2: [specialist.a] top_p: wants a number in (0, 1]"));
    CHECK(load("[specialist.a]\nseed = x\n", err, sizeof(err)) == -EINVAL);

    opts_init(o);
    char *a1[] = { "serve", NULL };
    CHECK(dp_opt_parse(&cmd, o, 1, a1, &npos) == 0);
    CHECK(dp_config_load("/nonexistent/favo.ini", o, &cfg, err, sizeof(err)) == -ENOENT);
    CHECK(strstr(err, "/nonexistent/favo.ini: cannot open"));
    dp_config_free(&cfg);
    printf("ok\n");
    return 0;
}
