/*
 * test-engine-tok-pre.c - every pre-tokenizer in the table (eng_tok_pre.c):
 * each regex compiles (PCRE2, UTF, JIT), and splitting a varied text
 * gives pieces that tile it exactly (in order, no gap, no overlap, no empty
 * piece), also on texts built to stress lookarounds and empty matches.
 * Plus the splits of a few pre-tokenizers pinned on known inputs.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eng_tok.h"
#include "eng_tok_int.h"
#include "t_util.h"

struct tile {
    const char *base;
    size_t at, n;
    char out[4096];
    size_t ol;
    int bad;
};

static int on_word(void *ctx, const char *w, size_t len)
{
    struct tile *t = ctx;

    if (w != t->base + t->at || len == 0)
        t->bad = 1;
    t->at += len;
    t->n++;
    if (t->ol + len + 1 < sizeof(t->out)) {
        memcpy(t->out + t->ol, w, len);
        t->ol += len;
        t->out[t->ol++] = '|';
    }
    return 0;
}

static const char *const texts[] = {
    "Hello world! I'm here, you're there; they'll've DON'T 's",
    "   leading and trailing   \n\n\t\r\n  x  ",
    "12345678901 3.14 1,000,000 x2y3 ١٢٣ 五",
    "Äpfel naïve café ÆØÅ Привет мир 你好世界 こんにちは 한국어 مرحبا",
    "emoji 🙂🚀 👩‍👩‍👧 combining e\u0301 a\u0308 zw\u200bsp nbsp\u00a0x",
    "int main(void) {\n\treturn a->b[0] + 0x1F; // <tag> $x ^= ~y | z`\n}",
    "<sentinel:12> IMGIMGABCZ \u3000\u2003 \u2581 ...!!!???",
    "",
    " ",
    "\n",
    "a",
};

static void split_check(const struct eng_tok_pre *p, const char *name, const char *s)
{
    void *md = eng_tok_pre_md_new();
    struct tile t = { .base = s };
    size_t n = strlen(s);
    int rc = eng_tok_pre_split(p, md, s, n, on_word, &t);

    T_CHECK(rc == 0 && !t.bad && t.at == n, "%s: pieces of '%s' do not tile it (%zu of %zu)", name, s, t.at, n);
    eng_tok_pre_md_free(md);
}

static void pin(const char *pre, const char *s, const char *want)
{
    const struct eng_tok_pre_def *d = eng_tok_pre_find(pre, strlen(pre));
    struct eng_tok_pre p;
    char err[256];
    void *md = eng_tok_pre_md_new();
    struct tile t = { .base = s };

    T_CHECK(d && eng_tok_pre_compile(&p, d, err, sizeof(err)) == 0, "%s: compile", pre);
    if (!d)
        return;
    eng_tok_pre_split(&p, md, s, strlen(s), on_word, &t);
    t.out[t.ol] = 0;
    T_CHECK(!strcmp(t.out, want), "%s: '%s' splits as '%s', want '%s'", pre, s, t.out, want);
    eng_tok_pre_free(&p);
    eng_tok_pre_md_free(md);
}

int main(void)
{
    const char *const *names = eng_tok_pre_names();
    int n = 0;

    for (; names[n]; n++) {
        const struct eng_tok_pre_def *d = eng_tok_pre_find(names[n], strlen(names[n]));
        struct eng_tok_pre p;
        char err[256] = "";
        int rc = eng_tok_pre_compile(&p, d, err, sizeof(err));

        T_CHECK(rc == 0, "%s: %s", names[n], err);
        if (rc)
            continue;
        for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++)
            split_check(&p, names[n], texts[i]);
        eng_tok_pre_free(&p);
    }
    T_CHECK(eng_tok_pre_find("no-such", 7) == NULL, "unknown name found");

    /* known splits (the regexes' documented behaviour) */
    pin("gpt-2", "Hello world's  end", "Hello| world|'s| | end|");
    pin("llama3", "I'M 12345 ok\n\n  x", "I|'M| |123|45| ok|\n\n| | x|");
    pin("qwen2", "abc 123", "abc| |1|2|3|");
    pin("starcoder", "x 123", "x| |1|2|3|");
    pin("falcon", "a...b 1234", "a|...|b| |123|4|");
    pin("superbpe", "1234567", "1|234|567|");
    pin("gpt-4o", "HelloWorld's", "Hello|World's|");
    pin("deepseek-llm", "ab\ncd", "ab|\n|cd|");
    printf("%d pre-tokenizers, %d t_failures\n", n, t_failures);
    return t_failures ? 1 : 0;
}
