/*
 * dp_opt.c - table-driven option parsing, environment fallback and help.
 */
#include "dp.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct dp_opt *dp_opt_find(struct dp_opt *opts, const char *name)
{
    for (struct dp_opt *o = opts; o && o->name; o++)
        if (!strcmp(o->name, name))
            return o;
    return NULL;
}

static struct dp_opt *find_len(struct dp_opt *opts, const char *name, size_t len)
{
    for (struct dp_opt *o = opts; o && o->name; o++)
        if (strlen(o->name) == len && !strncmp(o->name, name, len))
            return o;
    return NULL;
}

static struct dp_opt *find_short(struct dp_opt *opts, char c)
{
    for (struct dp_opt *o = opts; o && o->name; o++)
        if (o->short_name == c)
            return o;
    return NULL;
}

static void env_name(char *buf, size_t n, const char *name)
{
    size_t i = 0, j;

    i = (size_t)snprintf(buf, n, "FAVO_");
    for (j = 0; name[j] && i + 1 < n; j++)
        buf[i++] = name[j] == '-' ? '_' : (char)toupper((unsigned char)name[j]);
    buf[i] = 0;
}

static int check_value(const char *cmd, const struct dp_opt *o, const char *v,
                       const char *source)
{
    char *end;

    switch (o->kind) {
    case DP_OPT_INT:
        errno = 0;
        (void)strtoll(v, &end, 0);
        if (errno || end == v || *end) {
            fprintf(stderr, "favo %s: --%s (from %s) wants an integer, got '%s'\n", cmd,
                    o->name, source, v);
            return -EINVAL;
        }
        break;
    case DP_OPT_DOUBLE:
        errno = 0;
        (void)strtod(v, &end);
        if (errno || end == v || *end) {
            fprintf(stderr, "favo %s: --%s (from %s) wants a number, got '%s'\n", cmd,
                    o->name, source, v);
            return -EINVAL;
        }
        break;
    case DP_OPT_FLAG:
        if (strcmp(v, "1") && strcmp(v, "0") && strcmp(v, "true") && strcmp(v, "false") &&
            strcmp(v, "yes") && strcmp(v, "no")) {
            fprintf(stderr, "favo %s: --%s (from %s) is a switch: 1/0, true/false or yes/no, got '%s'\n",
                    cmd, o->name, source, v);
            return -EINVAL;
        }
        break;
    case DP_OPT_STR:
        break;
    }
    return 0;
}

int dp_opt_parse(const struct dp_cmd *cmd, struct dp_opt *opts, int argc, char **argv,
                 int *npos)
{
    int pos = 1, i;
    bool only_pos = false;

    for (struct dp_opt *o = opts; o && o->name; o++) {
        o->val = NULL;
        o->source = NULL;
    }
    for (i = 1; i < argc; i++) {
        char *a = argv[i];
        struct dp_opt *o = NULL;
        const char *v = NULL;

        if (only_pos || a[0] != '-' || !strcmp(a, "-")) {
            argv[pos++] = a;
            continue;
        }
        if (!strcmp(a, "--")) {
            only_pos = true;
            continue;
        }
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            dp_opt_help(stdout, cmd, opts);
            return 1;
        }
        if (a[1] == '-') {
            const char *eq = strchr(a + 2, '=');
            size_t len = eq ? (size_t)(eq - (a + 2)) : strlen(a + 2);

            o = find_len(opts, a + 2, len);
            if (eq)
                v = eq + 1;
        } else if (a[1] && !a[2]) {
            o = find_short(opts, a[1]);
        }
        if (!o) {
            fprintf(stderr, "favo %s: unknown option '%s' (see 'favo %s --help')\n",
                    cmd->name, a, cmd->name);
            return -EINVAL;
        }
        if (o->kind == DP_OPT_FLAG) {
            v = v ? v : "1";
        } else if (!v) {
            if (i + 1 >= argc) {
                fprintf(stderr, "favo %s: --%s needs a value (%s)\n", cmd->name, o->name,
                        o->metavar ? o->metavar : "VALUE");
                return -EINVAL;
            }
            v = argv[++i];
        }
        if (check_value(cmd->name, o, v, "the command line"))
            return -EINVAL;
        o->val = v;
        o->source = "command line";
    }
    for (struct dp_opt *o = opts; o && o->name; o++) {
        char env[96];
        const char *v;

        if (o->val)
            continue;
        env_name(env, sizeof(env), o->name);
        v = getenv(env);
        if (v && *v) {
            if (check_value(cmd->name, o, v, env))
                return -EINVAL;
            o->val = v;
            o->source = "environment";
        }
    }
    for (struct dp_opt *o = opts; o && o->name; o++) {
        if (!o->val && o->def) {
            o->val = o->def;
            o->source = "default";
        }
    }
    if (npos)
        *npos = pos - 1;
    return 0;
}

int dp_opt_set_config(struct dp_opt *opts, const char *name, const char *val)
{
    struct dp_opt *o = dp_opt_find(opts, name);

    if (!o)
        return -ENOENT;
    if (o->source && (!strcmp(o->source, "command line") || !strcmp(o->source, "environment")))
        return 0;
    if (check_value("config", o, val, "the config file"))
        return -EINVAL;
    o->val = val;
    o->source = "config";
    return 0;
}

const char *dp_opt_str(struct dp_opt *opts, const char *name)
{
    struct dp_opt *o = dp_opt_find(opts, name);

    return o ? o->val : NULL;
}

bool dp_opt_flag(struct dp_opt *opts, const char *name)
{
    const char *v = dp_opt_str(opts, name);

    return v && (!strcmp(v, "1") || !strcmp(v, "true") || !strcmp(v, "yes"));
}

long long dp_opt_int(struct dp_opt *opts, const char *name)
{
    const char *v = dp_opt_str(opts, name);

    return v ? strtoll(v, NULL, 0) : 0;
}

double dp_opt_double(struct dp_opt *opts, const char *name)
{
    const char *v = dp_opt_str(opts, name);

    return v ? strtod(v, NULL) : 0.0;
}

static void wrap(FILE *f, const char *text, int indent, int width)
{
    int col = indent;
    const char *p = text;

    while (*p) {
        const char *w = p;
        int len;

        while (*w && *w != ' ')
            w++;
        len = (int)(w - p);
        if (col > indent && col + 1 + len > width) {
            fprintf(f, "\n%*s", indent, "");
            col = indent;
        } else if (col > indent) {
            fputc(' ', f);
            col++;
        }
        fwrite(p, 1, (size_t)len, f);
        col += len;
        p = w;
        while (*p == ' ')
            p++;
    }
    fputc('\n', f);
}

void dp_opt_help(FILE *f, const struct dp_cmd *cmd, const struct dp_opt *opts)
{
    fprintf(f, "usage: favo %s %s\n\n", cmd->name, cmd->usage ? cmd->usage : "[OPTIONS]");
    if (cmd->description) {
        wrap(f, cmd->description, 0, 78);
        fputc('\n', f);
    }
    fprintf(f, "options (each also read from FAVO_<NAME>, e.g. --max-seqs from FAVO_MAX_SEQS):\n");
    for (const struct dp_opt *o = opts; o && o->name; o++) {
        char head[96];
        int n;

        if (o->short_name)
            n = snprintf(head, sizeof(head), "  -%c, --%s", o->short_name, o->name);
        else
            n = snprintf(head, sizeof(head), "      --%s", o->name);
        if (o->kind != DP_OPT_FLAG && n > 0 && n < (int)sizeof(head))
            snprintf(head + n, sizeof(head) - (size_t)n, " %s", o->metavar ? o->metavar : "VALUE");
        fprintf(f, "%s\n          ", head);
        if (o->def) {
            char buf[1024];

            snprintf(buf, sizeof(buf), "%s (default: %s)", o->help, o->def);
            wrap(f, buf, 10, 78);
        } else {
            wrap(f, o->help, 10, 78);
        }
    }
    fprintf(f, "  -h, --help\n          Print this help and exit.\n");
}

const char *dp_default_model(void)
{
    static char path[PATH_MAX];
    const char *env = getenv("FAVO_DEFAULT_MODEL");
    static const char *const rel[] = {
        "models/SmolLM2-135M-Instruct.Q4_1.gguf",
        "models/favo-tiny-fallback.gguf",
    };

    if (env && !access(env, R_OK))
        return env;
    for (unsigned i = 0; i < sizeof(rel) / sizeof(rel[0]); i++) {
        snprintf(path, sizeof(path), "%s/%s", FAVO_SOURCE_DIR, rel[i]);
        if (!access(path, R_OK))
            return path;
    }
    return NULL;
}
