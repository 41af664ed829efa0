/*
 * test-engine-tok-stack.c - the encoder's stack scrub (engine/eng_tok.c
 * stack_scrub, invariant 5 of ARCHITECTURE.md) covers the stack the
 * encoder really uses, and no text stays behind:
 *   - the stack below this frame is painted, one call runs, and the
 *     deepest byte it changed is found: with the scrub off
 *     (eng_tok_test_no_scrub) that is the encoder's real high-water mark,
 *     which must stay below ENG_TOK_STACK_SCRUB (eng_tok_int.h;
 *     ENG_TOK_STACK_SCRUB_SPM for a SentencePiece model), for every
 *     pre-tokenizer regex (eng_tok_pre_split alone) and for
 *     eng_tok_encode with both models (texts that make the regexes
 *     backtrack and repeat the most: long runs of letters, digits,
 *     spaces, newlines, punctuation, apostrophes, mixed scripts);
 *   - with the scrub on, every byte the call left below its own frames
 *     (deeper than SLACK, down to the bound) is zero or still painted
 *     (without the scrub there are always some: the check can fail), and
 *     a marker word of the text appears nowhere in the painted stack.
 * The depths are printed. Sanitizer builds have other frames: there the
 * bound is reported, not asserted (the scrub keeps 64 KiB there).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eng_gguf.h"
#include "eng_tok.h"
#include "eng_tok_int.h"
#include "t_util.h"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define SANITIZED 1
#endif
#endif
#ifndef SANITIZED
#define SANITIZED 0
#endif

#define PAINT 0xA5
#define REGION (192u * 1024u)
#define MARKER "Zqxjvwkbfpyg"   /* one word, found by memmem if left behind */
#define SLACK 2048u              /* eng_tok_encode's and eng_tok_encode_ex's frames */

static uintptr_t paint_lo, paint_hi;

/* Paint REGION bytes just below the caller's frame. */
static __attribute__((noinline)) void paint(void)
{
    unsigned char pad[REGION];

    memset(pad, PAINT, sizeof(pad));
    __asm__ volatile("" : : "r"(pad) : "memory");
    paint_lo = (uintptr_t)pad;
    paint_hi = (uintptr_t)pad + sizeof(pad);
}

/* Depth below paint_hi of the deepest byte no longer painted. */
static __attribute__((noinline)) size_t deepest(void)
{
    const volatile unsigned char *p = (const volatile unsigned char *)paint_lo;

    for (size_t i = 0; i < REGION; i++)
        if (p[i] != PAINT)
            return REGION - i;
    return 0;
}

/* Bytes at depths [SLACK, bound) below paint_hi that are neither 0 nor
 * paint (deeper: the scrub's own call of explicit_bzero). */
static __attribute__((noinline)) size_t unscrubbed(size_t bound)
{
    const volatile unsigned char *p = (const volatile unsigned char *)paint_lo;
    size_t n = 0;

    for (size_t i = REGION - bound; i < REGION - SLACK; i++)
        n += p[i] != 0 && p[i] != PAINT;
    return n;
}

/* Whether the marker is anywhere in the painted region (copied out first:
 * the region lies below this frame). */
static __attribute__((noinline)) bool marker_left(void)
{
    static unsigned char copy[REGION];
    const volatile unsigned char *p = (const volatile unsigned char *)paint_lo;

    /* the top 4 KiB hold this function's own frame */
    for (size_t i = 0; i < REGION - 4096; i++)
        copy[i] = p[i];
    return memmem(copy, REGION - 4096, MARKER, sizeof(MARKER) - 1) != NULL;
}

struct split_ctx {
    const char *s;
    size_t n;
    uint64_t h; /* the pieces' places, in order */
};

static int on_word(void *ctx, const char *w, size_t len)
{
    struct split_ctx *c = ctx;

    c->n += len;
    c->h = (c->h ^ (uint64_t)(w - c->s)) * 0x100000001b3ull;
    c->h = (c->h ^ len) * 0x100000001b3ull;
    return 0;
}

static char *texts[16];
static size_t ntexts;

static char *rep(const char *unit, size_t times, const char *tail)
{
    size_t u = strlen(unit), t = strlen(tail);
    char *s = malloc(u * times + t + 1);

    for (size_t i = 0; i < times; i++)
        memcpy(s + i * u, unit, u);
    memcpy(s + u * times, tail, t + 1);
    return s;
}

static void make_texts(void)
{
    texts[ntexts++] = strdup("Say hello to the benchmark. " MARKER " and more words here.");
    texts[ntexts++] = rep("a", 8000, " " MARKER);
    texts[ntexts++] = rep(" ", 8000, MARKER);
    texts[ntexts++] = rep("1", 8000, " " MARKER);
    texts[ntexts++] = rep("\n", 4000, MARKER "\n\n");
    texts[ntexts++] = rep(" \n", 3000, MARKER " ");
    texts[ntexts++] = rep("!?", 3000, MARKER "...");
    texts[ntexts++] = rep("'s'T'll", 1000, MARKER "'ve");
    texts[ntexts++] = rep("Привет мир 你好世界 ", 300, MARKER);
    texts[ntexts++] = rep("x1 ", 2000, MARKER "\t\t\t ");
    texts[ntexts++] = rep("\xc3\xa9\xcc\x81 ", 2000, MARKER);
    texts[ntexts++] = rep("int main(void) { return a->b[0]; }\n", 200, MARKER);
}

static void check_depth(const char *what, size_t d, size_t bound);

/* One splitter call on a painted stack; its depth, its pieces' hash and
 * whether a match ran on the C stack (then the deep bound applies). The
 * block's own JIT stack is scrubbed after it and checked. */
static __attribute__((noinline)) size_t split_depth(const struct eng_tok_pre *p, void *md,
                                                    const char *s, uint64_t *h, bool *deep)
{
    struct split_ctx c = { .s = s, .h = 0xcbf29ce484222325ull };
    const unsigned char *lo;
    size_t len, nz = 0;

    paint();
    int rc = eng_tok_pre_split(p, md, s, strlen(s), on_word, &c);
    size_t d = deepest();
    T_CHECK(rc == 0 && c.n == strlen(s), "split failed (%d)", rc);
    *h = c.h;
    *deep = eng_tok_pre_md_scrub(md);
    if (eng_tok_pre_md_stack(md, &lo, &len))
        for (size_t i = 0; i < len; i++)
            nz += lo[i] != 0;
    T_CHECK(nz == 0, "split: %zu bytes of the JIT stack were not scrubbed", nz);
    return d;
}

/* Every text splits into the same pieces with the own JIT stack (and its
 * fallback to the machine stack) as with the machine stack alone - the
 * splitter as it was before it had one; returns the deep calls. */
static unsigned split_all(const char *name, const struct eng_tok_pre *p, void *md, void *mach,
                          char *const *tx, size_t n, size_t *worst_shallow)
{
    unsigned n_deep = 0;

    for (size_t i = 0; i < n; i++) {
        char what[128];
        uint64_t h, hm;
        bool deep, deep_m;
        size_t dd = split_depth(p, md, tx[i], &h, &deep);

        (void)split_depth(p, mach, tx[i], &hm, &deep_m);
        snprintf(what, sizeof(what), "pre-tokenizer %s text %zu%s", name, i,
                 deep ? " (deep)" : "");
        T_CHECK(h == hm, "%s: pieces differ from the machine-stack split", what);
        T_CHECK(deep_m, "%s: a machine-stack split must ask for the deep scrub", what);
        check_depth(what, dd, deep ? ENG_TOK_STACK_SCRUB : ENG_TOK_STACK_SCRUB_SHALLOW);
        if (deep)
            n_deep++;
        else if (dd > *worst_shallow)
            *worst_shallow = dd;
    }
    return n_deep;
}

/* The bound an encode call is held to: SPM's, or a BPE call's - deep when
 * a match of that call ran on the C stack (eng_tok_test_deep moved). */
static size_t bound_of(const eng_tok_t *tok, bool deep)
{
    if (eng_tok_kind(tok) == ENG_TOK_SPM)
        return ENG_TOK_STACK_SCRUB_SPM;
    return deep ? ENG_TOK_STACK_SCRUB : ENG_TOK_STACK_SCRUB_SHALLOW;
}

static __attribute__((noinline)) size_t encode_depth(const eng_tok_t *tok, const char *s,
                                                     unsigned flags, int32_t *ids, size_t max,
                                                     bool *left, size_t *dirty, bool *deep)
{
    unsigned long deep0 = eng_tok_test_deep;

    paint();
    int64_t n = eng_tok_encode(tok, s, strlen(s), flags, ids, max);
    size_t d = deepest();
    *deep = eng_tok_test_deep != deep0;
    *dirty = unscrubbed(bound_of(tok, *deep));
    *left = marker_left();
    T_CHECK(n > 0, "encode failed (%lld)", (long long)n);
    return d;
}

/* After an encode: the thread's own JIT stack is all zero (the scrub
 * covers what the match wrote there). */
static void check_jit_stack(const char *what)
{
    const unsigned char *lo;
    size_t len, nz = 0;

    if (!eng_tok_pre_md_stack(eng_tok_pre_md_thread(), &lo, &len))
        return; /* checked once in main */
    for (size_t i = 0; i < len; i++)
        nz += lo[i] != 0;
    T_CHECK(nz == 0, "%s: %zu bytes of the JIT stack were not scrubbed", what, nz);
}

static size_t worst;

static void check_depth(const char *what, size_t d, size_t bound)
{
    if (d > worst)
        worst = d;
    if (SANITIZED) {
        if (d >= bound)
            fprintf(stderr, "note: %s: %zu bytes of stack (sanitizer build, not checked)\n",
                    what, d);
        return;
    }
    T_CHECK(d < bound, "%s: the encoder used %zu bytes of stack, the scrub covers %zu", what, d,
            bound);
}

static void models(int32_t *ids, size_t max)
{
    const char *dir = t_env("FAVO_MODELS", "models");
    static const char *const files[] = { "SmolLM2-135M-Instruct.Q4_1.gguf",
                                         "gemma-3-270m-q4_k_m.gguf" };
    int have = 0;

    for (size_t m = 0; m < 2; m++) {
        char path[4096], err[256];
        eng_gguf_t *g;
        eng_tok_t *tok;

        snprintf(path, sizeof(path), "%s/%s", dir, files[m]);
        if (eng_gguf_open(&g, path, err, sizeof(err))) {
            fprintf(stderr, "note: %s: %s\n", path, err);
            continue;
        }
        if (eng_tok_load(&tok, g, err, sizeof(err))) {
            T_CHECK(0, "%s: %s", files[m], err);
            eng_gguf_close(g);
            continue;
        }
        have++;
        size_t mdepth = 0;
        unsigned n_deep = 0;
        for (size_t i = 0; i < ntexts; i++) {
            for (unsigned f = 0; f < 2; f++) {
                unsigned flags = f ? ENG_TOK_ADD_SPECIAL | ENG_TOK_PARSE_SPECIAL : 0;
                char what[128];
                bool left;
                size_t dirty;

                bool deep;

                eng_tok_test_no_scrub = true;
                size_t d = encode_depth(tok, texts[i], flags, ids, max, &left, &dirty, &deep);
                snprintf(what, sizeof(what), "%s text %zu flags %u%s", files[m], i, flags,
                         deep ? " (deep)" : "");
                check_depth(what, d, bound_of(tok, deep));
                if (deep)
                    n_deep++;
                else if (d > mdepth)
                    mdepth = d;
                if (i == 0 && !f)
                    fprintf(stderr, "%s: scrub off: %zu bytes left below the frames\n",
                            files[m], dirty);
                eng_tok_test_no_scrub = false;
                (void)encode_depth(tok, texts[i], flags, ids, max, &left, &dirty, &deep);
                T_CHECK(!left, "%s: the text's marker stayed on the stack after the scrub", what);
                T_CHECK(dirty == 0, "%s: %zu bytes the encoder wrote stayed on the stack after "
                        "the scrub", what, dirty);
                check_jit_stack(what);
            }
        }
        printf("%s: encoder stack high-water %zu bytes (scrub %zu), %u calls deep "
               "(scrub %u)\n", files[m], mdepth, bound_of(tok, false), n_deep,
               ENG_TOK_STACK_SCRUB);
        eng_tok_free(tok);
        eng_gguf_close(g);
    }
    if (!have)
        fprintf(stderr, "note: no model in %s: encoder depth not measured\n", dir);
}

int main(void)
{
    const char *const *names = eng_tok_pre_names();
    size_t max = 64 * 1024;
    int32_t *ids = malloc(max * sizeof(*ids));
    size_t split_worst = 0;
    unsigned split_deep = 0;

    make_texts();
    /* The own JIT stack must be found with this PCRE2 (else every call
     * scrubs deep, silently slower: eng_tok_pre.c). */
    {
        const unsigned char *lo;
        size_t len;
        T_CHECK(eng_tok_pre_md_stack(eng_tok_pre_md_thread(), &lo, &len) && len > 0,
                "the splitter has no JIT stack of its own (PCRE2 layout not recognised)");
    }
    for (int k = 0; names[k]; k++) {
        const struct eng_tok_pre_def *d = eng_tok_pre_find(names[k], strlen(names[k]));
        struct eng_tok_pre p;
        char err[256] = "";
        void *md = eng_tok_pre_md_new(), *mach = eng_tok_pre_md_new_machine();

        T_CHECK(d && md && mach && eng_tok_pre_compile(&p, d, err, sizeof(err)) == 0, "%s: %s",
                names[k], err);
        if (!d || !md || !mach || err[0]) {
            eng_tok_pre_md_free(md);
            eng_tok_pre_md_free(mach);
            continue;
        }
        split_deep += split_all(names[k], &p, md, mach, texts, ntexts, &split_worst);
        eng_tok_pre_free(&p);
        eng_tok_pre_md_free(md);
        eng_tok_pre_md_free(mach);
    }
    /* A regex whose JIT backtracking outgrows the own 8 KiB stack (but not
     * the 32 KiB machine stack), and one that outgrows both: the fallback
     * gives the machine stack's pieces, and the deep bound holds. */
    {
        static const struct eng_tok_pre_def deep_def = { "test-deep", 0, { "(?:a|bc)+x?" } };
        char *tx[2] = { rep("abc", 400, " " MARKER), rep("abc", 4000, " " MARKER) };
        struct eng_tok_pre p;
        char err[256] = "";
        void *md = eng_tok_pre_md_new(), *mach = eng_tok_pre_md_new_machine();
        size_t w = 0;

        T_CHECK(md && mach && eng_tok_pre_compile(&p, &deep_def, err, sizeof(err)) == 0, "%s",
                err);
        if (md && mach && !err[0]) {
            unsigned nd = split_all("test-deep", &p, md, mach, tx, 2, &w);
            T_CHECK(nd == 2 || !p.jit[0], "test-deep: %u of 2 splits fell back to the machine "
                    "stack", nd);
            eng_tok_pre_free(&p);
        }
        eng_tok_pre_md_free(md);
        eng_tok_pre_md_free(mach);
        free(tx[0]);
        free(tx[1]);
    }
    printf("pre-tokenizers: splitter stack high-water %zu bytes (scrub %u), %u splits deep\n",
           split_worst, ENG_TOK_STACK_SCRUB_SHALLOW, split_deep);
    models(ids, max);
    printf("worst %zu bytes, scrub %u bytes%s\n", worst, ENG_TOK_STACK_SCRUB,
           SANITIZED ? " (sanitizer build: not asserted)" : "");
    for (size_t i = 0; i < ntexts; i++)
        free(texts[i]);
    free(ids);
    return t_failures ? 1 : 0;
}
