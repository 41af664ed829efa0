/*
 * test-engine-tok-merge.c - the two byte-level BPE merges give the same ids:
 * the small one (eng_tok.c bpe_merge_small: words of up to 32 bytes, a
 * linear scan for the lowest rank) against the heap one every word took
 * before (eng_tok_test_no_small routes every word there). For every BPE
 * vocabulary at hand (SmolLM2 in $FAVO_MODELS, the llama.cpp fixtures in
 * $FAVO_SHARED/vocab), on seeded random texts built to make merges compete:
 * words from a small alphabet of common letters (equal pairs side by side,
 * ties between equal ranks), words of exactly 1..40 bytes around the
 * 32-byte switch, digits, punctuation, UTF-8 letters, invalid bytes, and
 * the fixtures' own strings. Also the fixtures' expected ids still come
 * out (test-engine-tok-vocab checks them all; here the small merge is the
 * one that runs). Skips (77) when no BPE vocabulary is found.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eng_gguf.h"
#include "favo_base.h"
#include "eng_tok.h"
#include "eng_tok_int.h"
#include "t_util.h"

#define MAX_IDS 8192
#define N_TEXTS 3000

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint32_t rnd(uint32_t n)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng % n);
}

/* One random text of several words into buf (NUL-terminated); its length. */
static size_t make_text(char *buf, size_t cap)
{
    static const char *const alpha[] = { "eeeettaao", "abcdefghijklmnopqrstuvwxyz",
                                         "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdef", "0123456789",
                                         ".,;:!?'\"()-_/\\", " \t\n" };
    static const char *const utf8[] = { "\xc3\xa9", "\xc3\xbc", "\xd0\x9f", "\xd0\xb8",
                                        "\xe4\xbd\xa0", "\xe5\xa5\xbd", "\xf0\x9f\x98\x80" };
    size_t n = 0, words = 1 + rnd(8);

    for (size_t w = 0; w < words && n + 64 < cap; w++) {
        size_t len = 1 + rnd(40), a = rnd(6);
        if (rnd(3) == 0)
            buf[n++] = ' ';
        for (size_t i = 0; i < len && n + 8 < cap; i++) {
            uint32_t c = rnd(100);
            if (c < 4) {
                const char *u = utf8[rnd(7)];
                memcpy(buf + n, u, strlen(u));
                n += strlen(u);
            } else if (c < 5) {
                buf[n++] = (char)(0x80 + rnd(0x80)); /* invalid on its own */
            } else {
                const char *s = alpha[c < 70 ? a : rnd(6)];
                buf[n++] = s[rnd((uint32_t)strlen(s))];
            }
        }
    }
    buf[n] = 0;
    return n;
}

static int32_t *ids_a, *ids_b;

/* Encode s both ways; fail when they differ. */
static void both(const eng_tok_t *tok, const char *name, const char *s, size_t n)
{
    eng_tok_test_no_small = true;
    int64_t a = eng_tok_encode(tok, s, n, 0, ids_a, MAX_IDS);
    eng_tok_test_no_small = false;
    int64_t b = eng_tok_encode(tok, s, n, 0, ids_b, MAX_IDS);

    T_CHECK(a > 0 && a == b && !memcmp(ids_a, ids_b, (size_t)FAVO_MIN(a, MAX_IDS) * 4),
            "%s: %zu-byte text: heap merge %lld ids, small merge %lld ids, or different ids",
            name, n, (long long)a, (long long)b);
}

static int check_vocab(const char *path, const char *name, const char *inp)
{
    char err[256], buf[1024];
    eng_gguf_t *g;
    eng_tok_t *tok;

    if (eng_gguf_open(&g, path, err, sizeof(err)))
        return 0;
    if (eng_tok_load(&tok, g, err, sizeof(err))) {
        T_CHECK(0, "%s: %s", name, err);
        eng_gguf_close(g);
        return 0;
    }
    if (eng_tok_kind(tok) != ENG_TOK_BPE) {
        eng_tok_free(tok);
        eng_gguf_close(g);
        return 0;
    }
    rng = 0x9e3779b97f4a7c15ull;
    for (int i = 0; i < N_TEXTS; i++) {
        size_t n = make_text(buf, sizeof(buf));
        both(tok, name, buf, n);
    }
    if (inp) { /* the fixture's strings, split on llama.cpp's separator */
        FILE *f = fopen(inp, "rb");
        static char all[1 << 20];
        size_t len = f ? fread(all, 1, sizeof(all) - 1, f) : 0;
        const char *sep = "\n__ggml_vocab_test__\n";
        char *p = all;

        if (f)
            fclose(f);
        all[len] = 0;
        while (p && *p) {
            char *q = strstr(p, sep);
            size_t n = q ? (size_t)(q - p) : strlen(p);
            if (n)
                both(tok, name, p, n);
            p = q ? q + strlen(sep) : NULL;
        }
    }
    printf("%s: %d random texts%s: small and heap merges agree\n", name, N_TEXTS,
           inp ? " and the fixture's strings" : "");
    eng_tok_free(tok);
    eng_gguf_close(g);
    return 1;
}

int main(void)
{
    const char *models = t_env("FAVO_MODELS", "models");
    const char *shared = t_env("FAVO_SHARED", "../shared");
    char path[4400], inp[4500], dir[4096];
    int have = 0;
    DIR *d;
    struct dirent *de;

    ids_a = malloc(MAX_IDS * sizeof(*ids_a));
    ids_b = malloc(MAX_IDS * sizeof(*ids_b));
    snprintf(path, sizeof(path), "%s/SmolLM2-135M-Instruct.Q4_1.gguf", models);
    have += check_vocab(path, "SmolLM2", NULL);
    snprintf(dir, sizeof(dir), "%s/vocab", shared);
    if ((d = opendir(dir))) {
        while ((de = readdir(d))) {
            size_t l = strlen(de->d_name);
            if (l < 5 || strcmp(de->d_name + l - 5, ".gguf"))
                continue;
            if (strlen(dir) + l + 2 > sizeof(path))
                continue;
            snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
            snprintf(inp, sizeof(inp), "%s.inp", path);
            have += check_vocab(path, de->d_name, inp);
        }
        closedir(d);
    }
    free(ids_a);
    free(ids_b);
    if (!have)
        t_skip("no byte-level BPE vocabulary in $FAVO_MODELS or $FAVO_SHARED/vocab");
    return t_failures ? 1 : 0;
}
