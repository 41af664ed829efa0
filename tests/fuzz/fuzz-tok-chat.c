/*
 * fuzz-tok-chat.c - chat rendering and prompt tokenization with hostile
 * message contents: no crash, every format renders, spans stay inside the
 * text, ids are in range, and no content - whatever control-token text it
 * holds - ever adds a control token: the prompt's count of <|im_start|>
 * (SmolLM2, chatml) or <start_of_turn> (Gemma 3) is exactly the template's.
 *
 * Input: byte 0 picks the format and generation prompt; the rest is split
 * at 0x00 bytes into messages whose first byte picks the role.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eng_chat.h"
#include "eng_tok.h"
#include "favo_base.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static eng_tok_t *smol, *gemma;
static int loaded;

static eng_tok_t *load(const char *path)
{
    char err[256];
    eng_tok_t *t = NULL;

    return eng_tok_load_file(&t, path, err, sizeof(err)) ? NULL : t;
}

static int count(const int32_t *ids, int64_t n, int32_t id)
{
    int c = 0;
    for (int64_t i = 0; i < n; i++)
        c += ids[i] == id;
    return c;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const roles[] = { "system", "user", "assistant" };
    struct eng_chat_msg m[16];
    static char buf[1 << 16];
    static int32_t ids[1 << 16];
    struct eng_tok_span sp[64];
    struct eng_chat c;
    char err[256];
    size_t n = 0, ns = 0, pos = 1;
    bool gen;

    if (!loaded) {
        const char *mo = getenv("FAVO_MODELS");
        char p[1024];
        snprintf(p, sizeof(p), "%s/SmolLM2-135M-Instruct.Q4_1.gguf", mo ? mo : "models");
        smol = load(p);
        snprintf(p, sizeof(p), "%s/gemma-3-270m-q4_k_m.gguf", mo ? mo : "models");
        gemma = load(p);
        loaded = 1;
    }
    if (size < 1 || size > 8192)
        return 0;
    gen = data[0] & 0x80;
    while (pos < size && n < 16) {
        const uint8_t *e = memchr(data + pos, 0, size - pos);
        size_t end = e ? (size_t)(e - data) : size;
        m[n].role = roles[data[pos] % 3];
        m[n].role_len = strlen(m[n].role);
        m[n].content = (const char *)data + pos + 1;
        m[n].content_len = end > pos ? end - pos - 1 : 0;
        n++;
        pos = end + 1;
    }
    /* every format renders; spans in bounds */
    FAVO_ASSERT(eng_chat_detect(&c, NULL, eng_chat_fmt_name((enum eng_chat_fmt)((data[0] & 0x7f) % ENG_CHAT_N_FMT)),
                                err, sizeof(err)) == 0);
    int64_t len = eng_chat_render(&c, m, n, gen, buf, sizeof(buf), sp, 64, &ns);
    FAVO_ASSERT(len >= 0);
    for (size_t i = 0; i < ns && i < 64 && (size_t)len <= sizeof(buf); i++)
        FAVO_ASSERT(sp[i].off + sp[i].len <= (size_t)len && (i == 0 || sp[i].off >= sp[i - 1].off + sp[i - 1].len));

    /* contents never add control tokens */
    struct {
        eng_tok_t *t;
        const char *fmt, *turn;
    } models[] = { { smol, "chatml", "<|im_start|>" }, { gemma, "gemma", "<start_of_turn>" } };
    for (int k = 0; k < 2; k++) {
        if (!models[k].t)
            continue;
        int32_t turn = eng_tok_find(models[k].t, models[k].turn, strlen(models[k].turn));
        eng_chat_detect(&c, NULL, models[k].fmt, err, sizeof(err));
        if (k == 0)
            eng_chat_from_tok(&c, models[k].t, NULL, err, sizeof(err));   /* default system text */
        int64_t kk = eng_chat_encode(&c, models[k].t, m, n, gen, ids, sizeof(ids) / sizeof(ids[0]));
        FAVO_ASSERT(kk >= 0);
        if (kk > (int64_t)(sizeof(ids) / sizeof(ids[0])))
            continue;
        for (int64_t i = 0; i < kk; i++)
            FAVO_ASSERT(ids[i] >= 0 && (uint32_t)ids[i] < eng_tok_n_vocab(models[k].t));
        int want = gen;
        for (size_t i = 0; i < n; i++)
            want += k == 0 || strcmp(m[i].role, "system");   /* gemma folds system turns */
        if (k == 0 && c.default_system_len && n && strcmp(m[0].role, "system"))
            want++;
        FAVO_ASSERT(count(ids, kk, turn) == want);
    }
    return 0;
}
