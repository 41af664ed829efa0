/*
 * dp_cmds.c - the table of subcommands, and the option tables of the
 * commands whose bodies land with later issues (serve: ingress, batcher,
 * egress and supervisor; bench; selftest). Their --help is
 * complete now so scripts can be written against it; running one that is
 * not built yet says so plainly and exits 2.
 */
#include "dp.h"

#include <stdio.h>

int dp_cmd_run(const struct dp_cmd *cmd, int argc, char **argv);
int dp_cmd_tokenize(const struct dp_cmd *cmd, int argc, char **argv);
int dp_cmd_model(const struct dp_cmd *cmd, int argc, char **argv);
int dp_cmd_stat(const struct dp_cmd *cmd, int argc, char **argv);
int dp_cmd_keys(const struct dp_cmd *cmd, int argc, char **argv);
int dp_cmd_bench(const struct dp_cmd *cmd, int argc, char **argv);
int dp_cmd_stage(const struct dp_cmd *cmd, int argc, char **argv);
int dp_cmd_serve(const struct dp_cmd *cmd, int argc, char **argv);

static int not_built(const struct dp_cmd *cmd, struct dp_opt *opts, int argc, char **argv,
                     const char *what)
{
    int npos, rc = dp_opt_parse(cmd, opts, argc, argv, &npos);

    if (rc)
        return rc > 0 ? 0 : 2;
    fprintf(stderr, "favo %s: not available in this build yet: %s\n", cmd->name, what);
    return 2;
}

static int cmd_selftest(const struct dp_cmd *cmd, int argc, char **argv)
{
    struct dp_opt opts[] = {
        { "backend", 0, DP_OPT_STR, "cpu|cuda", "cpu", "Backend whose kernels are checked against the CPU reference." },
        DP_OPT_END
    };

    return not_built(cmd, opts, argc, argv, "kernel self-tests land with the engine");
}

const struct dp_cmd dp_cmds[] = {
    { "serve", "start the server (supervisor and pipeline stages)", "[OPTIONS]",
      "Starts the supervisor, which creates the shared-memory segments and spawns, pins "
      "and restarts the ingress, batcher, engine and egress stages.", dp_cmd_serve },
    { "run", "one-shot generation in-process, tokens streamed to stdout",
      "--model FILE [--prompt TEXT] [-n N] [OPTIONS]",
      "Loads a model in this process and generates from a prompt, streaming text to stdout "
      "as it is produced. Uses the same engine as the server.", dp_cmd_run },
    { "tokenize", "token ids of a text, space-separated",
      "--model FILE [--no-special] TEXT|-|--batch FILE.inp",
      "Tokenizes TEXT (or standard input with '-') with the model's own tokenizer and prints "
      "the ids space-separated. --batch reads strings separated by "
      "'\\n__ggml_vocab_test__\\n' and prints one line of ids per string. A vocab-only GGUF "
      "file is enough.", dp_cmd_tokenize },
    { "model", "make test models, inspect model files", "make|info [OPTIONS]",
      "'favo model info FILE' prints a GGUF file's metadata, tensor table and memory needs. "
      "'favo model make' writes deterministic random-weight models for tests and benchmarks.",
      dp_cmd_model },
    { "keys", "API keys: add, list, revoke (hashes only)",
      "add --tenant T --rpm N --tpm N [OPTIONS] | list | revoke NAME|HASHPREFIX",
      "Manages the API keys file. 'add' prints a new key once on stdout; only its SHA-256 is "
      "stored, with its name, tenant, user, org, limits and priority. 'list' shows entries "
      "(never a key), 'revoke' drops one by name or digest prefix. Limits shared by all keys "
      "of a user or org are 'user name=U rpm=N tpm=N' / 'org name=O rpm=N tpm=N' lines in "
      "the file. Changes are atomic (mode 0600); a running server reloads on SIGHUP.",
      dp_cmd_keys },
    { "stat", "live view of a running instance (stats segment only)", "[OPTIONS]",
      "Attaches read-only to the stats segment of a running instance. It cannot see request "
      "content: the segment cannot hold any.", dp_cmd_stat },
    { "bench", "tail-latency load generator for OpenAI-compatible servers", "[OPTIONS]",
      "Open-loop (Poisson or constant --rate) or closed-loop (--concurrency) load on an "
      "OpenAI-compatible server, streaming by default. Latency counts from each request's "
      "intended send time, so a stalled server shows in the tail (no coordinated omission). "
      "Prints p50/p90/p95/p99/p99.9/max of time to first token, inter-token latency and "
      "end-to-end latency; --json, --svg and --sweep with --slo for capacity at an SLO.",
      dp_cmd_bench },
    { "selftest", "check backend kernels against the CPU reference", "[OPTIONS]",
      "Runs every kernel on the chosen backend and on the scalar reference with the same "
      "seeded inputs and reports the error of each.", cmd_selftest },
    { "stage", "(internal) one pipeline stage process, started by the supervisor",
      "NAME [ARGS]", "Started by 'favo serve' for each stage; not for direct use.",
      dp_cmd_stage },
};
const unsigned dp_ncmds = sizeof(dp_cmds) / sizeof(dp_cmds[0]);
