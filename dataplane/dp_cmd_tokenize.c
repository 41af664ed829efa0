/*
 * dp_cmd_tokenize.c - `favo tokenize`: token ids of a text with the model's
 * own tokenizer (engine/eng_tok.h). Works with a vocab-only GGUF file.
 *
 *   favo tokenize --model FILE [--no-special] TEXT     one line of ids
 *   favo tokenize --model FILE [--no-special] -        the text is stdin
 *   favo tokenize --model FILE [--no-special] --batch FILE.inp
 *       FILE.inp holds strings separated by "\n__ggml_vocab_test__\n" (the
 *       format of llama.cpp's vocab fixtures; the file ends with the
 *       separator); one line of ids per string, in order, each id preceded
 *       by a space exactly as in the .out files (an empty string gives an
 *       empty line). TEXT and '-' print plain "id id id".
 *
 * Without --no-special, BOS/EOS are added as the model's metadata asks and
 * control tokens written in the text are recognised (as for a prompt that
 * a chat template produced). --no-special does neither, like llama.cpp's
 * test-tokenizer-0.
 */
#include "dp.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eng_gguf.h"
#include "eng_tok.h"

int dp_cmd_tokenize(const struct dp_cmd *cmd, int argc, char **argv);

static char *read_stream(FILE *f, size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);

    while (buf) {
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (n < cap) {
            if (ferror(f)) {
                free(buf);
                return NULL;
            }
            break;
        }
        char *nb = realloc(buf, cap *= 2);
        if (!nb)
            free(buf);
        buf = nb;
    }
    *len = n;
    return buf;
}

/* out_format: the .out files' form, a space before every id (--batch);
 * otherwise plain "1 2 3". */
static int print_ids(const eng_tok_t *tok, const char *s, size_t n, unsigned flags, bool out_format)
{
    size_t cap = n + 16;
    int32_t *ids = malloc(cap * sizeof(*ids));
    int64_t k;

    if (!ids)
        return -ENOMEM;
    k = eng_tok_encode(tok, s, n, flags, ids, cap);
    if (k > (int64_t)cap) {
        int32_t *b = realloc(ids, (size_t)k * sizeof(*ids));
        if (!b) {
            free(ids);
            return -ENOMEM;
        }
        ids = b;
        k = eng_tok_encode(tok, s, n, flags, ids, (size_t)k);
    }
    if (k < 0) {
        free(ids);
        return (int)k;
    }
    for (int64_t i = 0; i < k; i++)
        printf(out_format || i ? " %d" : "%d", ids[i]);
    putchar('\n');
    free(ids);
    return 0;
}

int dp_cmd_tokenize(const struct dp_cmd *cmd, int argc, char **argv)
{
    struct dp_opt opts[] = {
        { "model", 'm', DP_OPT_STR, "FILE", NULL, "GGUF model or vocab-only file. Without it: the default model." },
        { "no-special", 0, DP_OPT_FLAG, NULL, NULL, "Do not add BOS/EOS and do not recognise control tokens in the text." },
        { "batch", 0, DP_OPT_STR, "FILE.inp", NULL, "Tokenize every string of FILE.inp (separated by '\\n__ggml_vocab_test__\\n'); one line each." },
        DP_OPT_END
    };
    static const char sep[] = "\n__ggml_vocab_test__\n";
    int npos, rc = dp_opt_parse(cmd, opts, argc, argv, &npos);
    const char *model, *batch;
    char err[512] = "";
    eng_gguf_t *g = NULL;
    eng_tok_t *tok = NULL;
    unsigned flags;
    char *buf = NULL;
    size_t len = 0;

    if (rc)
        return rc > 0 ? 0 : 2;
    model = dp_opt_str(opts, "model");
    if (!model)
        model = dp_default_model();
    batch = dp_opt_str(opts, "batch");
    flags = dp_opt_flag(opts, "no-special") ? 0 : ENG_TOK_ADD_SPECIAL | ENG_TOK_PARSE_SPECIAL;
    if (!model) {
        fprintf(stderr, "favo tokenize: --model FILE is required (no default model installed)\n");
        return 2;
    }
    if (!batch && npos != 1) {
        fprintf(stderr, "favo tokenize: give one TEXT argument ('-' reads stdin), or --batch FILE.inp\n");
        return 2;
    }
    if ((rc = eng_gguf_open(&g, model, err, sizeof(err)))) {
        fprintf(stderr, "favo tokenize: %s: %s\n", model, err[0] ? err : strerror(-rc));
        return 1;
    }
    if ((rc = eng_tok_load(&tok, g, err, sizeof(err)))) {
        fprintf(stderr, "favo tokenize: %s: %s\n", model, err[0] ? err : strerror(-rc));
        eng_gguf_close(g);
        return 1;
    }
    eng_gguf_close(g);

    if (batch) {
        FILE *f = fopen(batch, "rb");
        if (!f || !(buf = read_stream(f, &len))) {
            fprintf(stderr, "favo tokenize: %s: %s\n", batch, strerror(errno));
            if (f)
                fclose(f);
            eng_tok_free(tok);
            return 1;
        }
        fclose(f);
        /* every string is followed by the separator; text after the last
         * separator (none in well-formed files) is one more string */
        size_t pos = 0;
        while (pos < len && rc == 0) {
            char *hit = memmem(buf + pos, len - pos, sep, sizeof(sep) - 1);
            size_t end = hit ? (size_t)(hit - buf) : len;
            rc = print_ids(tok, buf + pos, end - pos, flags, true);
            pos = hit ? end + sizeof(sep) - 1 : len;
        }
    } else if (!strcmp(argv[1], "-")) {
        if (!(buf = read_stream(stdin, &len))) {
            fprintf(stderr, "favo tokenize: stdin: %s\n", strerror(errno));
            eng_tok_free(tok);
            return 1;
        }
        rc = print_ids(tok, buf, len, flags, false);
    } else {
        rc = print_ids(tok, argv[1], strlen(argv[1]), flags, false);
    }
    if (rc)
        fprintf(stderr, "favo tokenize: %s\n", strerror(-rc));
    free(buf);
    eng_tok_free(tok);
    return rc ? 1 : 0;
}
