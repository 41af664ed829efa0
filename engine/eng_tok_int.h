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
 * md is a match block (below) the caller owns. Returns 0, or the first
 * nonzero value word() returned.
 */
typedef int (*eng_tok_word_fn)(void *ctx, const char *w, size_t len);
int eng_tok_pre_split(const struct eng_tok_pre *p, void *md, const char *s, size_t n,
                      eng_tok_word_fn word, void *ctx);

/*
 * Match blocks: PCRE2's match data plus a JIT stack of our own, so that a
 * JIT match does not put PCRE2's 32 KiB machine stack on the C stack.
 *
 *   - The own JIT stack is 8 KiB of memory whose address we know
 *     (eng_tok_pre.c says how it is found and checked); the pre-tokenizer
 *     regexes need a few dozen bytes of it on any text we know of.
 *   - A match that needs more (PCRE2_ERROR_JIT_STACKLIMIT) is run again
 *     as the splitter always ran it, on the machine stack: same limit,
 *     same result, so every text splits exactly as before.
 *   - eng_tok_pre_md_scrub zeroes the whole own stack when a match ran on
 *     it (everything a match could have written there: its start never
 *     moves) and says whether a match ran on the C stack since the last
 *     scrub (the machine stack, no own stack, or no JIT at all): then the
 *     caller scrubs ENG_TOK_STACK_SCRUB of C stack, else only
 *     ENG_TOK_STACK_SCRUB_SHALLOW.
 *
 * eng_tok_pre_md_thread: the calling thread's block, made at its first
 * call and freed at thread exit (encoding reuses it: no allocation per
 * call). _new / _new_machine / _free: a block of the caller's (tests;
 * _new_machine has no own stack: the former behaviour, for comparisons).
 * eng_tok_pre_md_stack: the own stack's memory (tests); false when none.
 */
void *eng_tok_pre_md_thread(void);
void *eng_tok_pre_md_new(void);
void *eng_tok_pre_md_new_machine(void);
void eng_tok_pre_md_free(void *md);
bool eng_tok_pre_md_scrub(void *md);
bool eng_tok_pre_md_stack(const void *md, const unsigned char **lo, size_t *len);

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

/*
 * The stack eng_tok_encode_ex scrubs before it returns (invariant 5 of
 * ARCHITECTURE.md: the frames of the calls it made held the text): the
 * encoder's measured high-water mark below its caller's frame, with room
 * to spare. tests/test-engine-tok-stack.c measures the encoder's real
 * depth (every pre-tokenizer regex, both models, texts that make the
 * regexes work hardest) and fails when it reaches the bound in force.
 *   ENG_TOK_STACK_SCRUB: after a regex match ran on the C stack -
 *     PCRE2's JIT machine stack (32 KiB, pcre2_jit_match without a JIT
 *     stack of its own) and the JIT code's frame below it. Since the
 *     splitter has its own JIT stack (match blocks, above) that happens
 *     only when a match outgrows it, or without one.
 *   ENG_TOK_STACK_SCRUB_SHALLOW: every other BPE call (the JIT code's frame
 *     and the encoder's; the BPE merge and the word cache live on the
 *     heap, the JIT's backtracking data on the own stack).
 *   ENG_TOK_STACK_SCRUB_SPM: a SentencePiece tokenizer, which runs no
 *     regex (measured 3.5 KiB).
 * Sanitizer builds have larger frames and keep the former 64 KiB.
 */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define ENG_TOK_STACK_SCRUB (64u * 1024u)
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || \
    __has_feature(memory_sanitizer)
#define ENG_TOK_STACK_SCRUB (64u * 1024u)
#endif
#endif
#ifndef ENG_TOK_STACK_SCRUB
#define ENG_TOK_STACK_SCRUB (40u * 1024u)
#define ENG_TOK_STACK_SCRUB_SHALLOW (8u * 1024u)
#define ENG_TOK_STACK_SCRUB_SPM (8u * 1024u)
#else
#define ENG_TOK_STACK_SCRUB_SHALLOW ENG_TOK_STACK_SCRUB
#define ENG_TOK_STACK_SCRUB_SPM ENG_TOK_STACK_SCRUB
#endif
/* Tests only (test-engine-tok-stack): true skips the scrub so that the
 * encoder's real stack depth can be measured. Never set it elsewhere. */
extern bool eng_tok_test_no_scrub;
/* Tests only: how many encode calls took the deep scrub (or would have,
 * with the scrub off) - which bound a call's depth is held to. */
extern unsigned long eng_tok_test_deep;
/* Tests only: every BPE word through the heap merge, none through the
 * small one (eng_tok.c bpe_merge_small), for comparing the two. */
extern bool eng_tok_test_no_small;

#endif /* ENG_TOK_INT_H */
