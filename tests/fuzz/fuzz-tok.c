/*
 * fuzz-tok.c - arbitrary bytes through the tokenizers: no crash, every id
 * in range, the count-only call agrees, and the round trip holds where it
 * is defined (vocabularies that cover all 256 bytes: ../shared/vocab's
 * gpt-2 (byte-level BPE) and llama-spm (byte fallback)).
 *
 * (SentencePiece spells spaces as U+2581, so a text holding that character
 * cannot round-trip through an SPM vocabulary and is not checked there.)
 *
 * The first input byte picks the tokenizer and the flags; the rest is the
 * text. Tokenizers load once, from $FAVO_SHARED/vocab (set by ctest); the
 * SmolLM2 model in $FAVO_MODELS is used when the fixtures are absent.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eng_gguf.h"
#include "eng_tok.h"
#include "favo_base.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static eng_tok_t *toks[3];
static int ntok = -1;
static int roundtrip_ok[3];

static void load_one(const char *path, int rt)
{
    char err[256];
    eng_gguf_t *g = NULL;
    eng_tok_t *t = NULL;

    if (eng_gguf_open(&g, path, err, sizeof(err)))
        return;
    if (eng_tok_load(&t, g, err, sizeof(err)) == 0) {
        roundtrip_ok[ntok] = rt;
        toks[ntok++] = t;
    }
    eng_gguf_close(g);
}

static void init(void)
{
    const char *sh = getenv("FAVO_SHARED"), *mo = getenv("FAVO_MODELS");
    char p[1024];

    ntok = 0;
    snprintf(p, sizeof(p), "%s/vocab/ggml-vocab-gpt-2.gguf", sh ? sh : "../shared");
    load_one(p, 1);
    snprintf(p, sizeof(p), "%s/vocab/ggml-vocab-llama-spm.gguf", sh ? sh : "../shared");
    load_one(p, 1);
    snprintf(p, sizeof(p), "%s/SmolLM2-135M-Instruct.Q4_1.gguf", mo ? mo : "models");
    load_one(p, 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int32_t ids[1 << 16];
    static char dec[1 << 18];
    const char *text = (const char *)data + 1;
    size_t n;
    unsigned flags;
    eng_tok_t *t;
    int64_t k, k0, dl;
    int which;

    if (ntok < 0)
        init();
    if (ntok == 0 || size < 1 || size > 8192)
        return 0;
    which = data[0] % ntok;
    flags = (data[0] >> 4) & 3;    /* ADD_SPECIAL, PARSE_SPECIAL */
    n = size - 1;
    t = toks[which];
    k = eng_tok_encode(t, text, n, flags, ids, sizeof(ids) / sizeof(ids[0]));
    FAVO_ASSERT(k >= 0 && k <= (int64_t)(sizeof(ids) / sizeof(ids[0])));
    for (int64_t i = 0; i < k; i++)
        FAVO_ASSERT(ids[i] >= 0 && (uint32_t)ids[i] < eng_tok_n_vocab(t));
    k0 = eng_tok_encode(t, text, n, flags, NULL, 0);
    FAVO_ASSERT(k0 == k);
    dl = eng_tok_decode(t, ids, (size_t)k, ENG_TOK_SHOW_SPECIAL | ENG_TOK_STRIP_SPACE, dec, sizeof(dec));
    FAVO_ASSERT(dl >= 0);
    /* SPM cannot represent a literal U+2581: it is how spaces are spelled */
    if (roundtrip_ok[which] && flags == 0 &&
        !(eng_tok_kind(t) == ENG_TOK_SPM && memmem(text, n, "\xE2\x96\x81", 3)))
        FAVO_ASSERT(dl == (int64_t)n && memcmp(dec, text, n) == 0);
    return 0;
}
