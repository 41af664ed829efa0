/*
 * dp_cmd_tokenize.c - `favo tokenize`.
 */
#include "dp.h"

#include <stdio.h>

int dp_cmd_tokenize(const struct dp_cmd *cmd, int argc, char **argv);

int dp_cmd_tokenize(const struct dp_cmd *cmd, int argc, char **argv)
{
    struct dp_opt opts[] = {
        { "model", 'm', DP_OPT_STR, "FILE", NULL, "GGUF model file." },
        DP_OPT_END
    };
    int npos, rc = dp_opt_parse(cmd, opts, argc, argv, &npos);

    if (rc)
        return rc > 0 ? 0 : 2;
    fprintf(stderr, "favo %s: not available in this build yet\n", cmd->name);
    return 2;
}
