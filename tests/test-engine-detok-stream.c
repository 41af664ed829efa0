/*
 * test-engine-detok-stream.c - the streaming detokenizer and stop matcher.
 *
 *   utf8:   characters split across pushes come out whole; invalid bytes
 *           become U+FFFD; every chunk released is valid UTF-8 on its own.
 *   stops:  for random texts, stop sets and chunkings, the released text is
 *           exactly the text before the first stop occurrence, and after
 *           every push exactly the longest possible stop prefix is held.
 *   tokens: real vocabularies (../shared/vocab and $FAVO_MODELS): pushing
 *           the ids of a text one at a time releases the text itself, in
 *           valid UTF-8 chunks, also where byte tokens split characters.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eng_detok.h"
#include "eng_gguf.h"
#include "eng_tok.h"
#include "t_util.h"

static int utf8_valid(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;

    while (i < n) {
        unsigned c = p[i], l, cp;
        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xC2 && c <= 0xDF)
            l = 2, cp = c & 0x1F;
        else if (c >= 0xE0 && c <= 0xEF)
            l = 3, cp = c & 0x0F;
        else if (c >= 0xF0 && c <= 0xF4)
            l = 4, cp = c & 0x07;
        else
            return 0;
        if (i + l > n)
            return 0;
        for (unsigned k = 1; k < l; k++) {
            if ((p[i + k] & 0xC0) != 0x80)
                return 0;
            cp = cp << 6 | (p[i + k] & 0x3F);
        }
        if ((l == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) || (l == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
            return 0;
        i += l;
    }
    return 1;
}

static void test_utf8(void)
{
    struct eng_detok d;
    char out[512], all[512];
    size_t n, an = 0;
    /* "é" split, "✓" split in three, a 4-byte emoji split, then junk */
    const char *chunks[] = { "a\xc3", "\xa9 \xe2", "\x9c", "\x93 \xf0\x9f", "\x99", "\x82!", "\xff", "\xc3(", "\xe2\x82" };

    eng_detok_init(&d, 0, NULL, NULL, 0);
    for (size_t i = 0; i < sizeof(chunks) / sizeof(chunks[0]); i++) {
        int rc = eng_detok_push_bytes(&d, chunks[i], strlen(chunks[i]), out, sizeof(out), &n);
        T_CHECK(rc == 0, "utf8 push %zu rc %d", i, rc);
        T_CHECK(utf8_valid(out, n), "utf8 chunk %zu is not valid UTF-8", i);
        memcpy(all + an, out, n);
        an += n;
    }
    eng_detok_flush(&d, out, sizeof(out), &n);
    memcpy(all + an, out, n);
    an += n;
    static const char want[] = "a\xc3\xa9 \xe2\x9c\x93 \xf0\x9f\x99\x82!\xef\xbf\xbd\xef\xbf\xbd(\xef\xbf\xbd";
    T_CHECK(an == sizeof(want) - 1 && !memcmp(all, want, an), "utf8 stream gives '%.*s'", (int)an, all);

    /* a space-prefixed first piece can be stripped (SPM's first token) */
    eng_detok_init(&d, ENG_DETOK_STRIP_FIRST, NULL, NULL, 0);
    eng_detok_push_bytes(&d, "", 0, out, sizeof(out), &n);
    eng_detok_push_bytes(&d, " Hi", 3, out, sizeof(out), &n);
    T_CHECK(n == 2 && !memcmp(out, "Hi", 2), "STRIP_FIRST");
    eng_detok_push_bytes(&d, " there", 6, out, sizeof(out), &n);
    T_CHECK(n == 6, "STRIP_FIRST strips only the first piece");
    T_CHECK(sizeof(struct eng_detok) < 2048, "state is not small: %zu", sizeof(struct eng_detok));
}

/* Longest suffix of s[0..n) that is a proper prefix of some stop. */
static size_t ref_hold(const char *s, size_t n, char stops[][16], size_t *sl, unsigned ns)
{
    size_t best = 0;
    for (unsigned k = 0; k < ns; k++)
        for (size_t l = sl[k] - 1; l > best; l--)
            if (l <= n && !memcmp(s + n - l, stops[k], l)) {
                best = l;
                break;
            }
    return best;
}

static void test_stops(void)
{
    uint64_t seed = 42;

    for (int iter = 0; iter < 20000; iter++) {
        char text[200], stops[4][16], got[400], out[2048];
        size_t tl = 1 + t_rand(&seed) % 120, sl[4], gl = 0, pos = 0, n;
        unsigned ns = 1 + (unsigned)(t_rand(&seed) % 4);
        const char *sp[4];
        struct eng_detok d;
        int stopped = 0, rc;

        /* small alphabet so stops and partial stops are frequent */
        for (size_t i = 0; i < tl; i++)
            text[i] = "abcab "[t_rand(&seed) % 6];
        for (unsigned k = 0; k < ns; k++) {
            sl[k] = 1 + t_rand(&seed) % 6;
            for (size_t i = 0; i < sl[k]; i++)
                stops[k][i] = "abc "[t_rand(&seed) % 4];
            sp[k] = stops[k];
        }
        T_CHECK(eng_detok_init(&d, 0, sp, sl, ns) == 0, "init");
        /* reference: after each chunk, the earliest occurrence of any stop in
         * the text so far; the first chunk that completes one ends the stream
         * (stops are checked per push, as generation checks them per token) */
        size_t want = SIZE_MAX;
        while (pos < tl && !stopped) {
            size_t c = 1 + t_rand(&seed) % 7;
            if (c > tl - pos)
                c = tl - pos;
            rc = eng_detok_push_bytes(&d, text + pos, c, out, sizeof(out), &n);
            T_CHECK(rc == 0 || rc == 1, "push rc %d", rc);
            memcpy(got + gl, out, n);
            gl += n;
            pos += c;
            stopped = rc == ENG_DETOK_STOP;
            for (unsigned k = 0; k < ns; k++) {
                char *hit = memmem(text, pos, stops[k], sl[k]);
                if (hit && (size_t)(hit - text) < want)
                    want = (size_t)(hit - text);
            }
            T_CHECK(stopped == (want != SIZE_MAX), "iter %d: stop flag %d at %zu", iter, stopped, pos);
            if (!stopped) {
                /* held back exactly the longest possible stop prefix */
                size_t h = ref_hold(text, pos, stops, sl, ns);
                T_CHECK(gl + h == pos, "iter %d: released %zu of %zu, hold %zu", iter, gl, pos, h);
            }
            if (want != SIZE_MAX)
                break;
        }
        if (!stopped) {
            rc = eng_detok_flush(&d, out, sizeof(out), &n);
            memcpy(got + gl, out, n);
            gl += n;
        }
        if (want == SIZE_MAX)
            want = tl;
        T_CHECK(gl == want && !memcmp(got, text, gl), "iter %d: released %zu bytes, want %zu", iter, gl, want);
        if (t_failures > 10)
            return;
    }
    /* after a stop nothing more comes out */
    {
        struct eng_detok d;
        const char *sp[] = { "END" };
        size_t sl[] = { 3 }, n;
        char out[512];
        eng_detok_init(&d, 0, sp, sl, 1);
        T_CHECK(eng_detok_push_bytes(&d, "abcEN", 5, out, sizeof(out), &n) == 0 && n == 3, "pre-stop");
        T_CHECK(eng_detok_push_bytes(&d, "Dxyz", 4, out, sizeof(out), &n) == ENG_DETOK_STOP && n == 0, "stop");
        T_CHECK(eng_detok_push_bytes(&d, "more", 4, out, sizeof(out), &n) == ENG_DETOK_STOP && n == 0, "after stop");
        T_CHECK(eng_detok_init(&d, 0, sp, (size_t[]){ 0 }, 1) == -22, "empty stop accepted");
    }
}

static const char *const texts[] = {
    "Hello world! Streaming text, one token at a time.",
    "Emoji 🙂🚀 and CJK 你好世界 and ✓ marks — plus Ärger.",
    "  spaces\n\nnewlines\tand tabs ",
    "Rare: 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ꙮ 𓀀 ᚠᛇᚻ",
};

static void test_tokens(const char *path, const char *name)
{
    char err[256];
    eng_gguf_t *g = NULL;
    eng_tok_t *tok = NULL;

    if (eng_gguf_open(&g, path, err, sizeof(err)))
        return;
    if (eng_tok_load(&tok, g, err, sizeof(err))) {
        T_CHECK(0, "%s: %s", name, err);
        eng_gguf_close(g);
        return;
    }
    eng_gguf_close(g);
    size_t cap = eng_detok_out_max(tok);
    char *out = malloc(cap), got[4096];
    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
        int32_t ids[1024];
        int64_t k = eng_tok_encode(tok, texts[i], strlen(texts[i]), 0, ids, 1024);
        struct eng_detok d;
        size_t gl = 0, n;
        int split = 0;

        eng_detok_init(&d, eng_tok_special(tok)->add_space_prefix ? ENG_DETOK_STRIP_FIRST : 0, NULL, NULL, 0);
        for (int64_t j = 0; j < k; j++) {
            const char *p;
            size_t pl;
            eng_tok_piece(tok, ids[j], 0, &p, &pl);
            split += !utf8_valid(p, pl);
            T_CHECK(eng_detok_push(&d, tok, ids[j], out, cap, &n) == 0, "%s: push", name);
            T_CHECK(utf8_valid(out, n), "%s: text %zu token %lld: chunk not valid UTF-8", name, i, (long long)j);
            memcpy(got + gl, out, n);
            gl += n;
        }
        eng_detok_flush(&d, out, cap, &n);
        memcpy(got + gl, out, n);
        gl += n;
        T_CHECK(gl == strlen(texts[i]) && !memcmp(got, texts[i], gl), "%s: text %zu streams as '%.*s'", name,
              i, (int)gl, got);
        if (i == 3)
            printf("%s: %d pieces of the rare-script text split a character\n", name, split);
    }
    free(out);
    eng_tok_free(tok);
}

int main(void)
{
    const char *sh = t_env("FAVO_SHARED", "../shared"), *mo = t_env("FAVO_MODELS", "models");
    char p[1024];

    test_utf8();
    test_stops();
    snprintf(p, sizeof(p), "%s/vocab/ggml-vocab-llama-spm.gguf", sh);
    test_tokens(p, "llama-spm");
    snprintf(p, sizeof(p), "%s/vocab/ggml-vocab-gpt-2.gguf", sh);
    test_tokens(p, "gpt-2");
    snprintf(p, sizeof(p), "%s/gemma-3-270m-q4_k_m.gguf", mo);
    test_tokens(p, "gemma3");
    snprintf(p, sizeof(p), "%s/SmolLM2-135M-Instruct.Q4_1.gguf", mo);
    test_tokens(p, "smollm2");
    printf("%d t_failures\n", t_failures);
    return t_failures ? 1 : 0;
}
