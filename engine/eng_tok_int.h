/*
 * eng_tok_int.h - internals shared by eng_tok.c (vocabulary, SPM, BPE,
 * special tokens) and eng_tok_pre.c (the pre-tokenizer table and the
 * PCRE2 splitter). Not for use outside engine/eng_tok*.c.
 */
#ifndef ENG_TOK_INT_H
#define ENG_TOK_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ENG_TOK_PRE_MAX_REGEX 8

/* Per-name behaviour flags of a pre-tokenizer (llama.cpp's load flags). */
enum {
    PRE_CLEAN_SPACES = 1 << 0,   /* detokenizer may clean " ," etc. */
    PRE_IGNORE_MERGES = 1 << 1,  /* whole-word lookup before merging */
    PRE_ADD_BOS = 1 << 2,        /* default add_bos_token = true */
    PRE_NO_BOS = 1 << 3,         /* default BOS id is none */
};

struct eng_tok_pre_def {
    const char *name;
    unsigned flags;
    const char *regex[ENG_TOK_PRE_MAX_REGEX]; /* NULL-terminated */
};

/* Find a pre-tokenizer definition by its GGUF name; NULL if unknown. */
const struct eng_tok_pre_def *eng_tok_pre_find(const char *name, size_t len);

/* Compiled regex list of one tokenizer. */
struct eng_tok_pre {
    const struct eng_tok_pre_def *def;
    unsigned n;
    void *code[ENG_TOK_PRE_MAX_REGEX];   /* pcre2_code_8 * */
    bool jit[ENG_TOK_PRE_MAX_REGEX];
};

int eng_tok_pre_compile(struct eng_tok_pre *p, const struct eng_tok_pre_def *def, char *err,
                        size_t errlen);
void eng_tok_pre_free(struct eng_tok_pre *p);

/*
 * Split [s, s+n) (valid UTF-8) with every regex in turn and call
 * word(ctx, off, len) for each final piece in order (offsets relative to s).
 * md is a pcre2_match_data_8 * the caller owns. Returns 0, or the first
 * nonzero value word() returned.
 */
typedef int (*eng_tok_word_fn)(void *ctx, const char *w, size_t len);
int eng_tok_pre_split(const struct eng_tok_pre *p, void *md, const char *s, size_t n,
                      eng_tok_word_fn word, void *ctx);
void *eng_tok_pre_md_new(void);
void eng_tok_pre_md_free(void *md);

/* Length of the longest valid UTF-8 prefix of [s, s+n) (PCRE2's rules: no
 * overlongs, no surrogates, nothing past U+10FFFF). */
size_t eng_utf8_valid_prefix(const unsigned char *s, size_t n);
/* Length of the sequence a lead byte announces (llama.cpp's rule: 1 for
 * continuation bytes), without validation. */
static inline size_t eng_utf8_lead_len(unsigned char c)
{
    static const unsigned char t[16] = { 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4 };
    return t[c >> 4];
}

#endif /* ENG_TOK_INT_H */
