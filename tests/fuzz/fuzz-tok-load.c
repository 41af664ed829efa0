/*
 * fuzz-tok-load.c - the tokenizer loader on hostile GGUF metadata (the
 * model file is untrusted input): load either fails with a message or
 * gives a tokenizer that encodes, decodes and renders pieces of every id
 * without a crash, with every id in range. Seeds: two tiny vocabularies
 * (byte-level BPE with merges, SPM with scores and byte tokens).
 */
#include <stdio.h>
#include <string.h>

#include "eng_chat.h"
#include "eng_gguf.h"
#include "eng_tok.h"
#include "favo_base.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char text[] = "abc ab a\n<|im_start|>A <s>\xc3\xa9\xff!";
    char err[256] = "";
    eng_gguf_t *g = NULL;
    eng_tok_t *t = NULL;
    int32_t ids[256];
    char buf[4096];
    struct eng_chat c;

    if (eng_gguf_open_mem(&g, data, size, err, sizeof(err)))
        return 0;
    if (eng_tok_load(&t, g, err, sizeof(err)) == 0) {
        for (unsigned fl = 0; fl < 4; fl++) {
            int64_t k = eng_tok_encode(t, text, sizeof(text) - 1, fl, ids, 256);
            FAVO_ASSERT(k >= 0);
            for (int64_t i = 0; i < k && i < 256; i++)
                FAVO_ASSERT(ids[i] >= 0 && (uint32_t)ids[i] < eng_tok_n_vocab(t));
            FAVO_ASSERT(eng_tok_decode(t, ids, (size_t)(k < 256 ? k : 256), ENG_TOK_SHOW_SPECIAL, buf,
                                       sizeof(buf)) >= 0);
        }
        for (uint32_t i = 0; i < eng_tok_n_vocab(t) && i < 4096; i++) {
            const char *p;
            size_t l;
            FAVO_ASSERT(eng_tok_piece(t, (int32_t)i, ENG_TOK_SHOW_SPECIAL, &p, &l) == 0);
            FAVO_ASSERT(l <= eng_tok_max_piece(t));
        }
        eng_chat_from_tok(&c, t, NULL, err, sizeof(err));
        eng_tok_free(t);
    } else {
        FAVO_ASSERT(err[0]);   /* a refusal always says why */
    }
    eng_gguf_close(g);
    return 0;
}
