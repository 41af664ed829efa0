/*
 * dp.h - the favo command: subcommand table and the option machinery every
 * subcommand uses.
 *
 * Options are declared once, in a table per subcommand (struct dp_opt). The
 * table drives parsing, the environment fallback and `--help`, so the help
 * text can never drift from what is parsed. A value comes from, in order of
 * precedence:
 *   1. the command line   --name VALUE, --name=VALUE, -x VALUE
 *   2. the environment    FAVO_NAME (upper case, '-' becomes '_')
 *   3. the config file    (serve's --config; filled by dp_opt_set_config)
 *   4. the default        dp_opt.def
 *
 * Errors: dp_opt_parse prints one line naming the flag and returns -EINVAL;
 * `--help` prints the table and returns 1 (the caller exits 0).
 */
#ifndef DP_H
#define DP_H

#include <stdbool.h>
#include <stdio.h>

enum dp_opt_kind { DP_OPT_FLAG, DP_OPT_STR, DP_OPT_INT, DP_OPT_DOUBLE };

struct dp_opt {
    const char *name;      /* long name without "--" */
    char short_name;       /* 0 when none */
    enum dp_opt_kind kind;
    const char *metavar;   /* "FILE", "N"... shown in help */
    const char *def;       /* default as text, NULL for none */
    const char *help;      /* one or more sentences */
    /* filled by dp_opt_parse */
    const char *val;       /* final value text, NULL when unset */
    const char *source;    /* "command line", "FAVO_X", "config", "default" */
};

#define DP_OPT_END { 0 }

struct dp_cmd {
    const char *name;
    const char *summary;   /* one line for `favo --help` */
    const char *usage;     /* synopsis after "favo NAME " */
    const char *description; /* paragraph(s) for `favo NAME --help` */
    int (*run)(const struct dp_cmd *cmd, int argc, char **argv);
};

extern const struct dp_cmd dp_cmds[];
extern const unsigned dp_ncmds;

/*
 * Parse argv[1..argc) against opts. Positional arguments are moved, in
 * order, to argv[1..*npos]. Returns 0, 1 after printing --help, or -EINVAL
 * after printing a one-line error naming the flag.
 */
int dp_opt_parse(const struct dp_cmd *cmd, struct dp_opt *opts, int argc, char **argv,
                 int *npos);
void dp_opt_help(FILE *f, const struct dp_cmd *cmd, const struct dp_opt *opts);

struct dp_opt *dp_opt_find(struct dp_opt *opts, const char *name);
const char *dp_opt_str(struct dp_opt *opts, const char *name);
bool dp_opt_flag(struct dp_opt *opts, const char *name);
long long dp_opt_int(struct dp_opt *opts, const char *name);
double dp_opt_double(struct dp_opt *opts, const char *name);
/* Set a value from a config file unless the command line or environment
 * already gave one. Returns 0 or -ENOENT for an unknown key. */
int dp_opt_set_config(struct dp_opt *opts, const char *name, const char *val);

/* Default model: the first of these that exists, else NULL. */
const char *dp_default_model(void);

#endif /* DP_H */
