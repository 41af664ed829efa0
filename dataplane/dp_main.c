/*
 * dp_main.c - `favo`: one binary, many subcommands (ARCHITECTURE.md,
 * "Command line"). This file only dispatches; each subcommand lives in
 * dp_cmd_<name>.c.
 */
#include "dp.h"
#include "favo_base.h"

#include <stdio.h>
#include <string.h>

int dp_print_version(FILE *f);

static void usage(FILE *f)
{
    fprintf(f, "usage: favo COMMAND [OPTIONS]\n\n"
               "favo is a bare-metal LLM inference server: an OpenAI-compatible HTTP API\n"
               "served by a pipeline of pinned processes joined by shared-memory rings.\n\n"
               "commands:\n");
    for (unsigned i = 0; i < dp_ncmds; i++) {
        if (dp_cmds[i].summary[0] == '(') /* "(internal) ...": supervisor use only */
            continue;
        fprintf(f, "  %-10s %s\n", dp_cmds[i].name, dp_cmds[i].summary);
    }
    fprintf(f, "\n'favo COMMAND --help' documents every option of a command.\n"
               "'favo --version' prints the version, the allocator and the CPU features.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        if (argc > 2 && strcmp(argv[1], "help") == 0) {
            for (unsigned i = 0; i < dp_ncmds; i++)
                if (!strcmp(dp_cmds[i].name, argv[2])) {
                    char *hargv[] = { argv[2], (char *)"--help", NULL };
                    return dp_cmds[i].run(&dp_cmds[i], 2, hargv);
                }
        }
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "version"))
        return dp_print_version(stdout);
    for (unsigned i = 0; i < dp_ncmds; i++) {
        if (!strcmp(dp_cmds[i].name, argv[1])) {
            favo_log_init(argv[1]);
            return dp_cmds[i].run(&dp_cmds[i], argc - 1, argv + 1);
        }
    }
    fprintf(stderr, "favo: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
