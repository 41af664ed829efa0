/*
 * dp_cmd_run.c - `favo run`: one-shot generation in-process. Loads the
 * model into the CPU backend, tokenizes the prompt (through the chat
 * template for instruct models), prefills in chunks, then decodes one
 * token per step, streaming each token's bytes to stdout as it comes.
 * Timing goes to stderr.
 *
 * stdout carries the generation: that is this command's purpose. Nothing
 * here logs prompt text, token ids or generated text (invariant 5); the
 * stderr lines are counts and rates only.
 *
 * Test hooks: --tokens "1 2 3" gives the prompt as ids (no tokenizer
 * needed), --print-ids prints generated ids instead of text, and
 * --dump-logits FILE writes each sampled step's raw logits (f32, n_vocab
 * per step) for the numpy reference (tests/test-engine-forward-ref.py).
 */
#include "dp.h"

#include "eng_backend.h"
#include "eng_chat.h"
#include "eng_detok.h"
#include "eng_kv.h"
#include "eng_model.h"
#include "eng_step.h"
#include "eng_tok.h"
#include "favo_base.h"

#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int dp_cmd_run(const struct dp_cmd *cmd, int argc, char **argv);

/* Parse "1 2 3" (spaces or commas) into ids; returns the count or -EINVAL. */
static long parse_ids(const char *s, int32_t **out)
{
    size_t cap = 16, n = 0;
    int32_t *ids = malloc(cap * sizeof(*ids));

    if (!ids)
        return -ENOMEM;
    while (*s) {
        char *end;
        long v;

        while (*s == ' ' || *s == ',' || *s == '\t' || *s == '\n')
            s++;
        if (!*s)
            break;
        errno = 0;
        v = strtol(s, &end, 10);
        if (errno || end == s || v < 0 || v > INT32_MAX) {
            free(ids);
            return -EINVAL;
        }
        if (n == cap) {
            int32_t *t = realloc(ids, (cap *= 2) * sizeof(*ids));

            if (!t) {
                free(ids);
                return -ENOMEM;
            }
            ids = t;
        }
        ids[n++] = (int32_t)v;
        s = end;
    }
    *out = ids;
    return (long)n;
}

/* Instruct models get the chat template by default: the model's name or
 * file name says "instruct", "-it" or "chat". */
static int is_instruct(const struct eng_model *m, const char *path)
{
    static const char *const keys[] = { "general.name", "general.finetune",
                                        "general.basename" };
    const char *base = strrchr(path, '/');

    base = base ? base + 1 : path;
    if (strcasestr(base, "instruct") || strcasestr(base, "-it") || strcasestr(base, "chat"))
        return 1;
    for (unsigned i = 0; i < FAVO_ARRAY_SIZE(keys); i++) {
        struct eng_gguf_str v;
        char buf[256];

        if (eng_gguf_get_str(eng_model_gguf(m), keys[i], &v))
            continue;
        snprintf(buf, sizeof(buf), "%.*s", (int)FAVO_MIN(v.len, 255), v.p);
        if (strcasestr(buf, "instruct") || strcasestr(buf, "-it") || strcasestr(buf, "chat"))
            return 1;
    }
    return 0;
}

/* Tokenize the prompt: as one user message through the chat template when
 * chat is set, else as plain text (BOS per the model). */
static int tokenize_prompt(eng_tok_t *tok, const struct eng_chat *chat, const char *prompt,
                           int32_t **ids_out)
{
    struct eng_chat_msg msg = { "user", 4, prompt, strlen(prompt) };
    int64_t n = chat ? eng_chat_encode(chat, tok, &msg, 1, true, NULL, 0)
                     : eng_tok_encode(tok, prompt, strlen(prompt), ENG_TOK_ADD_SPECIAL, NULL, 0);
    int32_t *ids = NULL;

    if (n > 0 && (ids = malloc((size_t)n * sizeof(*ids))))
        n = chat ? eng_chat_encode(chat, tok, &msg, 1, true, ids, (size_t)n)
                 : eng_tok_encode(tok, prompt, strlen(prompt), ENG_TOK_ADD_SPECIAL, ids, (size_t)n);
    else if (n > 0)
        n = -ENOMEM;
    if (n <= 0) {
        free(ids);
        return n ? (int)n : -EINVAL;
    }
    *ids_out = ids;
    return (int)n;
}

int dp_cmd_run(const struct dp_cmd *cmd, int argc, char **argv)
{
    struct dp_opt opts[] = {
        { "model", 'm', DP_OPT_STR, "FILE", NULL, "GGUF model file. Without it: the default model (SmolLM2-135M-Instruct Q4_1)." },
        { "prompt", 'p', DP_OPT_STR, "TEXT", NULL, "Prompt text." },
        { "tokens", 0, DP_OPT_STR, "IDS", NULL, "Prompt as token ids (\"1 2 3\") instead of --prompt; needs no tokenizer." },
        { "n-predict", 'n', DP_OPT_INT, "N", "64", "Tokens to generate (stops earlier at end of generation)." },
        { "temperature", 0, DP_OPT_DOUBLE, "T", "0", "Sampling temperature; 0 is greedy." },
        { "top-k", 0, DP_OPT_INT, "K", "0", "Keep the K most likely tokens (0: off)." },
        { "top-p", 0, DP_OPT_DOUBLE, "P", "1", "Nucleus sampling threshold (1: off)." },
        { "min-p", 0, DP_OPT_DOUBLE, "P", "0", "Drop tokens below P times the best one's probability (0: off)." },
        { "frequency-penalty", 0, DP_OPT_DOUBLE, "F", "0", "Subtracted per earlier occurrence of a token." },
        { "presence-penalty", 0, DP_OPT_DOUBLE, "F", "0", "Subtracted once from tokens already generated." },
        { "seed", 's', DP_OPT_INT, "S", "0", "Sampling seed (the draw for position p depends on seed and p only)." },
        { "threads", 't', DP_OPT_INT, "N", NULL, "Engine threads (default: the CPUs this process may use)." },
        { "ctx-size", 'c', DP_OPT_INT, "N", "4096", "Context length (prompt + generation)." },
        { "chat", 0, DP_OPT_FLAG, NULL, NULL, "Send the prompt as a user message through the model's chat template (default for instruct models)." },
        { "raw", 0, DP_OPT_FLAG, NULL, NULL, "Plain completion: no chat template, even for instruct models." },
        { "chat-template", 0, DP_OPT_STR, "NAME", NULL, "Chat format instead of the detected one (chatml, llama3, gemma, ...)." },
        { "mmap", 0, DP_OPT_FLAG, NULL, NULL, "Run from the file mapping instead of copying weights to anonymous memory (for measurement)." },
        { "exact", 0, DP_OPT_FLAG, NULL, NULL, "Reference mode: f32 activations against dequantized weights (slow; for checking numerics)." },
        { "kv-cache-type", 0, DP_OPT_STR, "TYPE", "auto", "KV cache elements: f16, f32, or auto (f32 for F32-weight models and --exact, f16 otherwise)." },
        { "print-ids", 0, DP_OPT_FLAG, NULL, NULL, "Print generated token ids instead of text." },
        { "ignore-eos", 0, DP_OPT_FLAG, NULL, NULL, "Keep generating past end-of-generation tokens." },
        { "dump-logits", 0, DP_OPT_STR, "FILE", NULL, "Write each sampled step's raw logits (f32 x n_vocab) to FILE." },
        DP_OPT_END
    };
    struct eng_backend_i be = { 0 };
    struct eng_backend_opts bo = { 0 };
    struct eng_model *m = NULL;
    eng_tok_t *tok = NULL;
    int32_t *ids = NULL, *blocks = NULL, *gen = NULL;
    float *logits = NULL;
    FILE *dump = NULL;
    char err[512] = "";
    const char *path, *prompt, *tokens, *dump_path;
    long n_prompt = 0, n_predict, n_ctx, n_gen = 0, threads;
    uint32_t n_blocks = 0, max_tokens;
    uint64_t t0, t1, t2;
    struct eng_sample_params sp = { 0 };
    struct eng_detok dt;
    char *text = NULL;
    size_t text_cap = 0;
    int npos, rc = dp_opt_parse(cmd, opts, argc, argv, &npos), ret = 1;

    if (rc)
        return rc > 0 ? 0 : 2;
    path = dp_opt_str(opts, "model");
    if (!path)
        path = dp_default_model();
    if (!path) {
        fprintf(stderr, "favo run: no --model and no default model installed (run ./setup.sh)\n");
        return 2;
    }
    prompt = dp_opt_str(opts, "prompt");
    tokens = dp_opt_str(opts, "tokens");
    dump_path = dp_opt_str(opts, "dump-logits");
    if (!prompt && !tokens && npos >= 2)
        prompt = argv[1];
    if (!prompt && !tokens) {
        fprintf(stderr, "favo run: give --prompt TEXT or --tokens IDS\n");
        return 2;
    }
    n_predict = dp_opt_int(opts, "n-predict");
    n_ctx = dp_opt_int(opts, "ctx-size");
    if (dp_opt_str(opts, "threads")) {
        threads = dp_opt_int(opts, "threads");
    } else {
        cpu_set_t cs;   /* the cores this process was given (taskset, cgroup cpuset) */

        threads = sched_getaffinity(0, sizeof(cs), &cs) ? sysconf(_SC_NPROCESSORS_ONLN)
                                                        : CPU_COUNT(&cs);
    }
    if (n_predict < 0 || n_ctx < 16 || n_ctx > (1 << 20) || threads < 1 || threads > 1024) {
        fprintf(stderr, "favo run: --n-predict, --ctx-size or --threads out of range\n");
        return 2;
    }
    sp.temperature = (float)dp_opt_double(opts, "temperature");
    sp.top_k = (int32_t)dp_opt_int(opts, "top-k");
    sp.top_p = (float)dp_opt_double(opts, "top-p");
    sp.min_p = (float)dp_opt_double(opts, "min-p");
    sp.freq_penalty = (float)dp_opt_double(opts, "frequency-penalty");
    sp.presence_penalty = (float)dp_opt_double(opts, "presence-penalty");
    sp.seed = (uint64_t)dp_opt_int(opts, "seed");

    t0 = favo_now_ns();
    rc = eng_model_load(&m, path, dp_opt_flag(opts, "mmap") ? ENG_MODEL_USE_MMAP : 0, err,
                        sizeof(err));
    if (rc) {
        fprintf(stderr, "favo run: %s: %s\n", path, err[0] ? err : strerror(-rc));
        return 1;
    }
    rc = eng_tok_load(&tok, eng_model_gguf(m), err, sizeof(err));
    if (rc && !tokens) {
        fprintf(stderr, "favo run: %s: tokenizer: %s\n", path, err[0] ? err : strerror(-rc));
        goto out;
    }
    if (tokens) {
        n_prompt = parse_ids(tokens, &ids);
        if (n_prompt <= 0) {
            fprintf(stderr, "favo run: --tokens wants space-separated token ids\n");
            goto out;
        }
    } else {
        struct eng_chat chat;
        int want = dp_opt_flag(opts, "chat") ||
                   (!dp_opt_flag(opts, "raw") && is_instruct(m, path));

        if (want && dp_opt_flag(opts, "raw")) {
            fprintf(stderr, "favo run: --chat and --raw contradict each other\n");
            goto out;
        }
        if (want && (rc = eng_chat_from_tok(&chat, tok, dp_opt_str(opts, "chat-template"), err,
                                            sizeof(err)))) {
            if (dp_opt_flag(opts, "chat")) {
                fprintf(stderr, "favo run: %s: chat template: %s\n", path, err);
                goto out;
            }
            want = 0;                 /* instruct by name only: plain completion */
        }
        n_prompt = tokenize_prompt(tok, want ? &chat : NULL, prompt, &ids);
        if (n_prompt <= 0) {
            fprintf(stderr, "favo run: the prompt gives no tokens\n");
            goto out;
        }
    }
    if (n_prompt + n_predict > n_ctx) {
        fprintf(stderr, "favo run: prompt (%ld tokens) + --n-predict %ld exceed --ctx-size %ld\n",
                n_prompt, n_predict, n_ctx);
        goto out;
    }
    bo.n_threads = (uint32_t)threads;
    bo.kv_blocks = eng_kv_blocks_for((uint32_t)n_ctx);
    bo.ctx.n_ctx = (uint32_t)n_ctx;
    bo.ctx.max_seqs = 1;
    bo.ctx.max_tokens = 512;
    bo.ctx.exact = dp_opt_flag(opts, "exact");
    bo.kv_type = dp_opt_str(opts, "kv-cache-type");
    rc = eng_cpu_backend_init(&be, m, &bo);
    if (rc == -EINVAL && bo.kv_type && strcmp(bo.kv_type, "auto") && strcmp(bo.kv_type, "f16") &&
        strcmp(bo.kv_type, "f32")) {
        fprintf(stderr, "favo run: --kv-cache-type must be auto, f16 or f32 (got '%s')\n",
                bo.kv_type);
        goto out;
    }
    if (rc) {
        fprintf(stderr, "favo run: engine: %s\n", strerror(-rc));
        goto out;
    }
    max_tokens = bo.ctx.max_tokens;
    blocks = calloc(bo.kv_blocks, sizeof(*blocks));
    gen = calloc((size_t)n_predict + 1, sizeof(*gen));
    logits = dump_path ? malloc((size_t)m->hp.n_vocab * sizeof(float)) : NULL;
    if (!blocks || !gen || (dump_path && !logits)) {
        fprintf(stderr, "favo run: out of memory\n");
        goto out;
    }
    if (tok) {
        text_cap = eng_detok_out_max(tok);
        text = malloc(text_cap);
        if (!text || eng_detok_init(&dt, 0, NULL, NULL, 0)) {
            fprintf(stderr, "favo run: out of memory\n");
            goto out;
        }
    }
    if (dump_path && !(dump = fopen(dump_path, "wb"))) {
        fprintf(stderr, "favo run: %s: %s\n", dump_path, strerror(errno));
        goto out;
    }
    t1 = favo_now_ns();
    {
        uint32_t pos = 0;
        int32_t next = -1;
        uint64_t t_first = 0;

        while (n_gen < n_predict) {
            struct eng_seq s = { 0 };
            struct eng_batch b = { 1, &s };
            struct eng_sample_out so;
            int last_chunk;

            s.sp = sp;
            s.pos = pos;
            if (pos < (uint32_t)n_prompt) {
                s.tokens = ids + pos;
                s.n_new = FAVO_MIN((uint32_t)n_prompt - pos, max_tokens);
            } else {
                s.tokens = &next;
                s.n_new = 1;
            }
            last_chunk = pos + s.n_new >= (uint32_t)n_prompt;
            s.no_sample = !last_chunk;
            while (n_blocks < eng_kv_blocks_for(pos + s.n_new)) {
                int32_t blk = be.kv_alloc(be.ctx);

                FAVO_ASSERT(blk >= 0); /* sized for n_ctx above */
                blocks[n_blocks++] = blk;
            }
            s.block_table = blocks;
            s.n_blocks = n_blocks;
            s.history = gen;
            s.n_history = (uint32_t)n_gen;
            rc = eng_backend_step_sync(&be, &b, &so, logits);
            if (rc) {
                fprintf(stderr, "favo run: step failed: %s\n", strerror(-rc));
                goto out;
            }
            pos += s.n_new;
            if (s.no_sample)
                continue;
            if (!t_first)
                t_first = t2 = favo_now_ns();
            if (dump && fwrite(logits, sizeof(float), m->hp.n_vocab, dump) != m->hp.n_vocab) {
                fprintf(stderr, "favo run: %s: write failed\n", dump_path);
                goto out;
            }
            next = so.token;
            gen[n_gen++] = next;
            if (dp_opt_flag(opts, "print-ids") || !tok) {
                printf("%s%d", n_gen > 1 ? " " : "", next);
            } else {
                size_t len = 0;

                if (eng_detok_push(&dt, tok, next, text, text_cap, &len) >= 0 && len)
                    fwrite(text, 1, len, stdout);
            }
            fflush(stdout);
            if (!dp_opt_flag(opts, "ignore-eos") &&
                ((tok && eng_tok_is_eog(tok, next)) || (!tok && (uint32_t)next == m->hp.eos)))
                break;
        }
        if (tok && !dp_opt_flag(opts, "print-ids")) {
            size_t len = 0;

            if (!eng_detok_flush(&dt, text, text_cap, &len) && len)
                fwrite(text, 1, len, stdout);
        }
        printf("\n");
        fflush(stdout);
        t2 = t_first ? t_first : favo_now_ns();
        {
            uint64_t t3 = favo_now_ns();
            double pre_s = (double)(t2 - t1) / 1e9, dec_s = (double)(t3 - t2) / 1e9;

            fprintf(stderr,
                    "favo run: load %.0f ms; prompt %ld tokens %.1f tok/s; "
                    "decode %ld tokens %.1f tok/s; %ld threads\n",
                    (double)(t1 - t0) / 1e6, n_prompt, pre_s > 0 ? n_prompt / pre_s : 0.0,
                    n_gen - 1, dec_s > 0 && n_gen > 1 ? (n_gen - 1) / dec_s : 0.0, threads);
        }
    }
    ret = 0;
out:
    if (dump)
        fclose(dump);
    if (be.free) {
        for (uint32_t i = 0; i < n_blocks; i++)
            be.kv_release(be.ctx, blocks[i]);
        be.free(be.ctx);
    }
    if (ids)
        explicit_bzero(ids, (size_t)FAVO_MAX(n_prompt, 0) * sizeof(*ids));
    if (gen)
        explicit_bzero(gen, (size_t)(n_predict + 1) * sizeof(*gen));
    free(ids);
    free(gen);
    free(blocks);
    free(logits);
    if (text)
        explicit_bzero(text, text_cap);
    free(text);
    if (tok)
        eng_tok_free(tok);
    eng_model_free(m);
    return ret;
}
