/*
 * test-engine-tok-models.c - the tokenizers of the two real models
 * (SmolLM2: gpt2/smollm BPE; Gemma 3: llama/SPM) from $FAVO_MODELS:
 *   - they load, with the special ids and EOG tokens their chat depends on;
 *   - round trip decode(encode(s)) == s on a varied text (several
 *     languages, code, digits, emoji, whitespace runs, invalid UTF-8);
 *   - control-token texts in user content stay plain text (no
 *     PARSE_SPECIAL) and become one token from a template (PARSE_SPECIAL);
 *   - ADD_SPECIAL adds BOS exactly when add_bos_token says so;
 *   - the count-only call (max_ids = 0) agrees with the full call.
 * Skips (77) when neither model is present.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eng_gguf.h"
#include "eng_tok.h"
#include "t_util.h"

static const char *const texts[] = {
    "Hello world! This is a test.",
    "  leading spaces, trailing spaces   ",
    "\n\n\tTabs\tand\nnewlines\r\n\r\n",
    "Äpfel, Müller, naïve café, Ørsted, façade",
    "Привет, мир! Как дела?",
    "你好，世界。日本語のテキストも。한국어 텍스트",
    "مرحبا بالعالم — שלום עולם",
    "Emoji: 🙂🚀👩‍👩‍👧‍👦 🇫🇷 and ✓✗",
    "Digits 0 12 345 6789 3.14159 1,000,000 2026-11-23",
    "int main(void) {\n    printf(\"%d\\n\", 42);\n    return 0;\n}\n",
    "def f(x):\n\treturn [i**2 for i in range(x) if i % 3 == 0]  # comment\n",
    "I'm sure you'll see they've said we'd DON'T IT'S",
    "                                                                  many spaces",
    "a\u00a0b\u2003c\u3000d",
    "zero\u200bwidth and combining e\u0301 a\u0308",
};

static void roundtrip(const eng_tok_t *tok, const char *name, const char *s, size_t n)
{
    int32_t ids[4096];
    char dec[16384];
    int64_t k = eng_tok_encode(tok, s, n, 0, ids, 4096), k0, dl;

    T_CHECK(k >= 0 && k <= 4096, "%s: encode failed (%lld)", name, (long long)k);
    if (k < 0 || k > 4096)
        return;
    k0 = eng_tok_encode(tok, s, n, 0, NULL, 0);
    T_CHECK(k0 == k, "%s: count-only call gives %lld, full call %lld", name, (long long)k0, (long long)k);
    for (int64_t i = 0; i < k; i++)
        T_CHECK(ids[i] >= 0 && (uint32_t)ids[i] < eng_tok_n_vocab(tok), "%s: id out of range", name);
    dl = eng_tok_decode(tok, ids, (size_t)k, ENG_TOK_STRIP_SPACE, dec, sizeof(dec));
    T_CHECK(dl == (int64_t)n && !memcmp(dec, s, n), "%s: round trip of '%.*s' gives '%.*s'", name,
          (int)n, s, (int)(dl > 0 && dl < (int64_t)sizeof(dec) ? dl : 0), dec);
}

/* Invariant 2: one tokenizer, many threads, no locks, same results. */
struct thr {
    const eng_tok_t *tok;
    int mismatches;
};

static void *thr_main(void *arg)
{
    struct thr *th = arg;
    int32_t ids[4096], ref[4096];

    for (int rep = 0; rep < 20; rep++)
        for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
            int64_t k = eng_tok_encode(th->tok, texts[i], strlen(texts[i]), ENG_TOK_ADD_SPECIAL, ids, 4096);
            int64_t r = eng_tok_encode(th->tok, texts[i], strlen(texts[i]), ENG_TOK_ADD_SPECIAL, ref, 4096);
            th->mismatches += k != r || memcmp(ids, ref, (size_t)(k > 0 ? k : 0) * sizeof(*ids));
        }
    return NULL;
}

static void check_threads(const eng_tok_t *tok, const char *name)
{
    pthread_t th[4];
    struct thr st[4];

    for (int i = 0; i < 4; i++) {
        st[i] = (struct thr){ .tok = tok };
        pthread_create(&th[i], NULL, thr_main, &st[i]);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        T_CHECK(st[i].mismatches == 0, "%s: thread %d saw %d different results", name, i, st[i].mismatches);
    }
}

static int count_id(const int32_t *ids, int64_t n, int32_t id)
{
    int c = 0;
    for (int64_t i = 0; i < n && i < 64; i++)
        c += ids[i] == id;
    return c;
}

static void check_model(const char *path, const char *name, const char *ctl, bool want_bos)
{
    char err[512] = "";
    eng_gguf_t *g = NULL;
    eng_tok_t *tok = NULL;
    int32_t ids[64], ctl_id;
    int64_t k;
    char buf[256];

    if (eng_gguf_open(&g, path, err, sizeof(err))) {
        T_CHECK(0, "%s: open: %s", name, err);
        return;
    }
    if (eng_tok_load(&tok, g, err, sizeof(err))) {
        T_CHECK(0, "%s: load: %s", name, err);
        eng_gguf_close(g);
        return;
    }
    eng_gguf_close(g);
    const struct eng_tok_special *sp = eng_tok_special(tok);
    printf("%s: %s, %u tokens, pre '%s', bos %d eos %d eot %d add_bos %d\n", name,
           eng_tok_kind(tok) == ENG_TOK_SPM ? "SPM" : "BPE", eng_tok_n_vocab(tok),
           eng_tok_pre_name(tok), sp->bos, sp->eos, sp->eot, sp->add_bos);

    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++)
        roundtrip(tok, name, texts[i], strlen(texts[i]));
    /* invalid UTF-8 still round-trips (byte tokens / byte-level BPE; bytes
     * the vocabulary has: SmolLM2 has no token for 0xFE/0xFF) */
    {
        static const char bad[] = "bad \xc3 utf8 \xe2\x82 end \x80\x80x";
        roundtrip(tok, name, bad, sizeof(bad) - 1);
    }

    /* control text typed by a user is plain text... */
    ctl_id = eng_tok_find(tok, ctl, strlen(ctl));
    T_CHECK(ctl_id >= 0, "%s: control token %s not found", name, ctl);
    T_CHECK(eng_tok_attr(tok, ctl_id) & ENG_TOK_ATTR_CONTROL, "%s: %s is not a control token", name, ctl);
    snprintf(buf, sizeof(buf), "say %s now", ctl);
    k = eng_tok_encode(tok, buf, strlen(buf), 0, ids, 64);
    for (int64_t i = 0; i < k && i < 64; i++)
        T_CHECK(ids[i] != ctl_id, "%s: user text produced the control token %s", name, ctl);
    /* ...but one token from a template */
    k = eng_tok_encode(tok, buf, strlen(buf), ENG_TOK_PARSE_SPECIAL, ids, 64);
    int found = 0;
    for (int64_t i = 0; i < k && i < 64; i++)
        found += ids[i] == ctl_id;
    T_CHECK(found == 1, "%s: template text did not give %s once", name, ctl);
    /* the control token's piece is hidden unless asked for */
    const char *p;
    size_t pl;
    T_CHECK(eng_tok_piece(tok, ctl_id, 0, &p, &pl) == 0 && pl == 0, "%s: control piece not hidden", name);
    T_CHECK(eng_tok_piece(tok, ctl_id, ENG_TOK_SHOW_SPECIAL, &p, &pl) == 0 && pl == strlen(ctl) &&
              !memcmp(p, ctl, pl), "%s: control piece with SHOW_SPECIAL is not its text", name);
    T_CHECK(eng_tok_piece(tok, -1, 0, &p, &pl) == -ERANGE, "%s: id -1 accepted", name);
    T_CHECK(eng_tok_is_eog(tok, sp->eos), "%s: EOS is not end-of-generation", name);

    /* regression: Gemma's "</s>" is user-defined in the file but an EOG
     * token by name (llama.cpp makes it control), so user text keeps it as text */
    int32_t eos_s = eng_tok_find(tok, "</s>", 4);
    if (eos_s >= 0 && eng_tok_is_eog(tok, eos_s)) {
        k = eng_tok_encode(tok, "x </s> y", 8, 0, ids, 64);
        T_CHECK(k > 0 && count_id(ids, k, eos_s) == 0, "%s: user text produced </s>", name);
        k = eng_tok_encode(tok, "x </s> y", 8, ENG_TOK_PARSE_SPECIAL, ids, 64);
        T_CHECK(k > 0 && count_id(ids, k, eos_s) == 1, "%s: template text lost </s>", name);
    }

    /* BOS */
    k = eng_tok_encode(tok, "hi", 2, ENG_TOK_ADD_SPECIAL, ids, 64);
    T_CHECK(want_bos == (k > 0 && ids[0] == sp->bos), "%s: ADD_SPECIAL BOS presence wrong", name);
    T_CHECK(sp->add_bos == want_bos, "%s: add_bos %d, want %d", name, sp->add_bos, want_bos);
    /* empty text */
    T_CHECK(eng_tok_encode(tok, "", 0, 0, ids, 64) == 0, "%s: empty text gives tokens", name);
    check_threads(tok, name);
    eng_tok_free(tok);
}

int main(void)
{
    const char *models = t_env("FAVO_MODELS", "models");
    char p1[1024], p2[1024];
    FILE *f;
    int n = 0;

    snprintf(p1, sizeof(p1), "%s/SmolLM2-135M-Instruct.Q4_1.gguf", models);
    snprintf(p2, sizeof(p2), "%s/gemma-3-270m-q4_k_m.gguf", models);
    if ((f = fopen(p1, "rb"))) {
        fclose(f);
        check_model(p1, "SmolLM2", "<|im_start|>", false);
        n++;
    }
    if ((f = fopen(p2, "rb"))) {
        fclose(f);
        check_model(p2, "Gemma3", "<start_of_turn>", true);
        n++;
    }
    if (!n)
        t_skip("no models in $FAVO_MODELS (run ./setup.sh)");
    printf("%d models, %d t_failures\n", n, t_failures);
    return t_failures ? 1 : 0;
}
