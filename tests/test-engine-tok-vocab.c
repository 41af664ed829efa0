/*
 * test-engine-tok-vocab.c - tokenizer conformance against llama.cpp's vocab
 * fixtures in ../shared/vocab (vocab-only GGUF + .inp strings + .out ids,
 * tokenized without special tokens), for EVERY vocabulary found there; the
 * round trip decode(encode(s)) == s on the same strings; `favo tokenize
 * --batch` byte-for-byte against one .out file; and load-time refusals
 * (unknown model, unknown pre-tokenizer, missing merges) on small GGUF files
 * built in memory.
 *
 * Skips (77) when ../shared/vocab is absent.
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eng_gguf.h"
#include "eng_tok.h"
#include "t_util.h"

static const char SEP[] = "\n__ggml_vocab_test__\n";

/* Split buf into strings at SEP (each string is followed by one). */
static size_t split_inp(char *buf, size_t len, char **s, size_t *sl, size_t max)
{
    size_t n = 0, pos = 0;

    while (pos < len && n < max) {
        char *hit = memmem(buf + pos, len - pos, SEP, sizeof(SEP) - 1);
        size_t end = hit ? (size_t)(hit - buf) : len;
        s[n] = buf + pos;
        sl[n++] = end - pos;
        pos = hit ? end + sizeof(SEP) - 1 : len;
    }
    return n;
}

static int32_t *encode_all(const eng_tok_t *tok, const char *s, size_t n, unsigned flags,
                           int64_t *count)
{
    size_t cap = n + 8;
    int32_t *ids = malloc(cap * sizeof(*ids));
    int64_t k = eng_tok_encode(tok, s, n, flags, ids, cap);

    if (k > (int64_t)cap) {
        ids = realloc(ids, (size_t)k * sizeof(*ids));
        k = eng_tok_encode(tok, s, n, flags, ids, (size_t)k);
    }
    *count = k;
    return ids;
}

static void check_vocab(const char *dir, const char *name)
{
    char path[1400], err[512] = "";
    eng_gguf_t *g = NULL;
    eng_tok_t *tok = NULL;
    char *inp, *out, *s[512], *line;
    size_t inl, outl, sl[512], ns;
    int rc;

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    rc = eng_gguf_open(&g, path, err, sizeof(err));
    T_CHECK(rc == 0, "%s: open: %s", name, err);
    if (rc)
        return;
    rc = eng_tok_load(&tok, g, err, sizeof(err));
    T_CHECK(rc == 0, "%s: load: %s", name, err);
    eng_gguf_close(g);   /* the tokenizer must not depend on the mapping */
    if (rc)
        return;
    snprintf(path, sizeof(path), "%s/%s.inp", dir, name);
    inp = t_read_file(path, &inl);
    snprintf(path, sizeof(path), "%s/%s.out", dir, name);
    out = t_read_file(path, &outl);
    T_CHECK(inp && out, "%s: .inp/.out missing", name);
    if (!inp || !out) {
        free(inp);
        free(out);
        eng_tok_free(tok);
        return;
    }
    ns = split_inp(inp, inl, s, sl, 512);
    line = out;
    size_t nok = 0, nrt = 0;
    for (size_t i = 0; i < ns; i++) {
        char *nl = strchr(line, '\n');
        int64_t k;
        int32_t *ids;
        char want[8192], got[8192];
        size_t wl = 0, gl = 0;

        T_CHECK(nl != NULL, "%s: .out has fewer lines than .inp has strings (%zu)", name, ns);
        if (!nl)
            break;
        *nl = 0;
        snprintf(want, sizeof(want), "%s", line);
        line = nl + 1;
        ids = encode_all(tok, s[i], sl[i], 0, &k);
        T_CHECK(k >= 0, "%s: string %zu: encode failed %lld", name, i, (long long)k);
        for (int64_t j = 0; j < k && gl < sizeof(got) - 16; j++) {
            T_CHECK(ids[j] >= 0 && (uint32_t)ids[j] < eng_tok_n_vocab(tok), "%s: id out of range", name);
            gl += (size_t)snprintf(got + gl, sizeof(got) - gl, " %d", ids[j]);
        }
        got[gl] = 0;
        wl = strlen(want);
        if (wl == gl && !memcmp(want, got, gl))
            nok++;
        else
            T_CHECK(0, "%s: string %zu ('%.*s'):\n  want%s\n  got %s", name, i, (int)sl[i], s[i], want, got);

        /* round trip: every fixture string is representable in these vocabularies */
        char dec[8192];
        int64_t dl = eng_tok_decode(tok, ids, (size_t)k, ENG_TOK_STRIP_SPACE, dec, sizeof(dec));
        if (dl == (int64_t)sl[i] && !memcmp(dec, s[i], sl[i]))
            nrt++;
        else
            T_CHECK(0, "%s: string %zu: round trip gives '%.*s'", name, i,
                  (int)(dl > 0 && dl < (int64_t)sizeof(dec) ? dl : 0), dec);
        free(ids);
    }
    T_CHECK(*line == 0, "%s: .out has more lines than .inp has strings (%zu)", name, ns);
    printf("%-32s %3zu/%zu strings exact, %3zu round trips\n", name, nok, ns, nrt);
    free(inp);
    free(out);
    eng_tok_free(tok);
}

static void check_cli(const char *dir, const char *name)
{
    const char *bin = getenv("FAVO_BIN");
    char model[1400], inp[1400], outp[1400], *want, *got = NULL, *err = NULL;
    size_t wl;

    if (!bin)
        return;
    snprintf(model, sizeof(model), "%s/%s", dir, name);
    snprintf(inp, sizeof(inp), "%s/%s.inp", dir, name);
    snprintf(outp, sizeof(outp), "%s/%s.out", dir, name);
    char *argv[] = { (char *)bin, "tokenize", "--model", model, "--no-special", "--batch", inp, NULL };
    int rc = t_run(argv, &got, &err);
    want = t_read_file(outp, &wl);
    T_CHECK(rc == 0, "favo tokenize --batch %s: exit %d: %s", name, rc, err ? err : "");
    T_CHECK(got && want && !strcmp(got, want), "favo tokenize --batch %s: output differs from .out", name);
    free(got);
    free(err);
    free(want);
}

/* ---- a tiny GGUF writer for refusal tests ---- */

struct gb {
    char buf[8192];
    size_t n;
    uint64_t nkv;
};

static void gb_raw(struct gb *b, const void *p, size_t n)
{
    memcpy(b->buf + b->n, p, n);
    b->n += n;
}

static void gb_str(struct gb *b, const char *s)
{
    uint64_t l = strlen(s);
    gb_raw(b, &l, 8);
    gb_raw(b, s, l);
}

static void gb_kv_str(struct gb *b, const char *k, const char *v)
{
    uint32_t t = 8;
    gb_str(b, k);
    gb_raw(b, &t, 4);
    gb_str(b, v);
    b->nkv++;
}

static void gb_kv_strarr(struct gb *b, const char *k, const char *const *v, uint64_t n)
{
    uint32_t t = 9, et = 8;
    gb_str(b, k);
    gb_raw(b, &t, 4);
    gb_raw(b, &et, 4);
    gb_raw(b, &n, 8);
    for (uint64_t i = 0; i < n; i++)
        gb_str(b, v[i]);
    b->nkv++;
}

/* Header then the kvs: build kvs first, then prepend. */
static int gb_open(struct gb *kv, eng_gguf_t **g, char *file, char *err, size_t errlen)
{
    uint32_t ver = 3;
    uint64_t nt = 0;
    size_t o = 0;

    memcpy(file + o, "GGUF", 4);
    o += 4;
    memcpy(file + o, &ver, 4);
    o += 4;
    memcpy(file + o, &nt, 8);
    o += 8;
    memcpy(file + o, &kv->nkv, 8);
    o += 8;
    memcpy(file + o, kv->buf, kv->n);
    o += kv->n;
    return eng_gguf_open_mem(g, file, o, err, errlen);
}

static void check_refusals(void)
{
    static const char *const toks[] = { "a", "b", "ab", "Ġ", "<|end|>" };
    static const char *const merges[] = { "a b" };
    struct {
        const char *model, *pre;
        bool with_merges;
        int want;
        const char *needle;
    } cases[] = {
        { "gpt2", "no-such-pre", true, -ENOTSUP, "no-such-pre" },
        { "bert", NULL, false, -ENOTSUP, "bert" },
        { "gpt2", "gpt-2", false, -EINVAL, "tokenizer.ggml.merges" },
        { "gpt2", "gpt-2", true, 0, NULL },
        { "llama", NULL, false, 0, NULL },
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct gb kv = { .n = 0 };
        static char file[16384];
        char err[512] = "";
        eng_gguf_t *g = NULL;
        eng_tok_t *tok = NULL;
        int rc;

        gb_kv_str(&kv, "tokenizer.ggml.model", cases[i].model);
        if (cases[i].pre)
            gb_kv_str(&kv, "tokenizer.ggml.pre", cases[i].pre);
        gb_kv_strarr(&kv, "tokenizer.ggml.tokens", toks, 5);
        if (cases[i].with_merges)
            gb_kv_strarr(&kv, "tokenizer.ggml.merges", merges, 1);
        rc = gb_open(&kv, &g, file, err, sizeof(err));
        T_CHECK(rc == 0, "refusal case %zu: gguf: %s", i, err);
        if (rc)
            continue;
        rc = eng_tok_load(&tok, g, err, sizeof(err));
        T_CHECK(rc == cases[i].want, "refusal case %zu: load gave %d, want %d (%s)", i, rc, cases[i].want, err);
        if (cases[i].needle)
            T_CHECK(strstr(err, cases[i].needle), "refusal case %zu: message '%s' does not name '%s'", i,
                  err, cases[i].needle);
        if (rc == 0 && !strcmp(cases[i].model, "gpt2")) {
            int32_t ids[8];
            int64_t k = eng_tok_encode(tok, "ab a", 4, 0, ids, 8);
            /* "ab" merges; " a": 'Ġ' then 'a' (no merge for them) */
            T_CHECK(k == 3 && ids[0] == 2 && ids[1] == 3 && ids[2] == 0, "tiny gpt2 encode: k=%lld", (long long)k);
            /* <|end|> is an EOG token recognised by its text */
            T_CHECK(eng_tok_is_eog(tok, 4), "tiny gpt2: <|end|> is not EOG");
        }
        eng_tok_free(tok);
        eng_gguf_close(g);
    }
}

int main(void)
{
    const char *shared = t_env("FAVO_SHARED", "../shared");
    char dir[1024];
    DIR *d;
    struct dirent *de;
    int nv = 0;
    char first[256] = "";

    check_refusals();
    snprintf(dir, sizeof(dir), "%s/vocab", shared);
    d = opendir(dir);
    if (!d) {
        if (t_failures)
            return 1;
        t_skip("no ../shared/vocab: vocab fixtures absent");
    }
    while ((de = readdir(d))) {
        size_t l = strlen(de->d_name);
        if (l > 5 && !strcmp(de->d_name + l - 5, ".gguf")) {
            check_vocab(dir, de->d_name);
            if (!first[0])
                snprintf(first, sizeof(first), "%s", de->d_name);
            nv++;
        }
    }
    closedir(d);
    if (first[0])
        check_cli(dir, first);
    printf("%d vocabularies, %d t_failures\n", nv, t_failures);
    return t_failures ? 1 : 0;
}
