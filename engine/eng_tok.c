/*
 * eng_tok.c - vocabulary loading, special-token partitioning, the SPM and
 * byte-level BPE algorithms, and pieces for detokenization. The design and
 * the contract are in eng_tok.h; the pre-tokenizer regexes in
 * eng_tok_pre.c.
 *
 * Data layout (all built once at load, immutable afterwards):
 *
 *   arena      one byte buffer: stored token texts, pieces, BPE keys and
 *              the strings of merge results that are not tokens
 *   tok[id]    offsets into the arena, score, attributes
 *   strmap     open addressing, key bytes -> symbol id ("sid"):
 *                SPM  stored text of every token (sid == token id)
 *                BPE  decoded raw bytes of every token whose text is made
 *                     of GPT-2 byte characters (sid == token id), plus
 *                     every merge operand / result that is not a token
 *                     (sid >= n_vocab, "extra" symbols)
 *   mergemap   BPE: (sid left, sid right) -> (rank, sid merged)
 *   trie       special tokens' stored texts, for the partition pass
 *
 * So the BPE hot path never re-encodes bytes: a word's symbols are sids of
 * single bytes, each merge is one hash probe on two integers.
 *
 * Per call (eng_tok_encode_ex): one scratch buffer grown as needed, the
 * calling thread's PCRE2 match block (its own JIT stack, zeroed after each
 * call: eng_tok_int.h), and for texts of 2 KiB or more a word cache (words repeat;
 * each distinct word is merged once per call). SPM runs its merge heap per
 * segment, cut where no vocabulary token holds the two bytes that meet
 * (exactly the global result, with small heaps). Nothing is shared between
 * threads, so any number of threads may encode at once (eng_tok.h inv. 2).
 */
#include "eng_tok.h"
#include "eng_tok_int.h"

#include <ctype.h>
#include <pthread.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "favo_base.h"

struct tok_entry {
    uint32_t text_off, text_len;    /* stored text */
    uint32_t piece_off, piece_len;  /* bytes it decodes to */
    float score;
    uint32_t attr;
};

struct merge_slot {
    uint64_t key;   /* left << 32 | right; UINT64_MAX = empty */
    uint32_t rank, res;
};

struct trie_node {
    uint32_t child, sibling;  /* node index, 0 = none (0 is the root) */
    int32_t tok;              /* token ending here, or -1 */
    uint8_t byte;
};

struct eng_tok {
    enum eng_tok_kind kind;
    uint32_t n_vocab;
    struct tok_entry *tok;
    char *arena;
    size_t arena_len, arena_cap;

    /* symbols: sid -> key bytes (one struct: one cache miss per compare) */
    struct keyref {
        uint32_t off, len;
    } *key;
    uint32_t n_sym, cap_sym;
    uint64_t *smap;           /* (hash32 << 32) | (sid + 1); 0 = empty */
    uint64_t smap_mask;
    uint32_t n_smap;

    struct merge_slot *mmap;
    uint64_t mmap_mask;
    unsigned mmap_shift;      /* 64 - log2(slots): mmap_slot's multiplicative hash */

    int32_t byte_tok[256];    /* SPM byte fallback, BPE single-byte fallback */
    uint8_t spm_pair[8192];   /* SPM: bit (x << 8 | y) set when some token holds bytes x, y
                                 next to each other */
    uint32_t byte_sid[256];   /* BPE: sid of each single byte */

    struct trie_node *trie;
    uint32_t n_trie, cap_trie;
    uint32_t root[256];
    uint32_t *prio;           /* special partition order, by token id */
    uint32_t n_special;

    uint8_t *eog;             /* bitmap */
    struct eng_tok_special sp;
    struct eng_tok_pre pre;
    unsigned pre_flags;
    bool ignore_merges;
    char pre_name[64];
    char *chat_template;
    size_t max_piece;
};

/* ------------------------------------------------------------------ */
/* small helpers                                                        */

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (!err || !errlen)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static inline uint64_t fmix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

/* 8 bytes at a time, each block folded through a full 64-bit mix. */
static inline uint64_t hash_bytes(const void *p, size_t n)
{
    const unsigned char *s = p;
    uint64_t h = 0x9e3779b97f4a7c15ull ^ n;

    while (n >= 8) {
        uint64_t v;
        memcpy(&v, s, 8);
        h = fmix64(h ^ v) + 0x9e3779b97f4a7c15ull;
        s += 8;
        n -= 8;
    }
    if (n) {
        uint64_t v = 0;
        memcpy(&v, s, n);
        h ^= v;
    }
    return fmix64(h);
}

static int arena_put(struct eng_tok *t, const void *p, size_t n, uint32_t *off)
{
    if (t->arena_len + n + 1 > t->arena_cap) {
        size_t cap = t->arena_cap ? t->arena_cap : 1 << 16;
        while (cap < t->arena_len + n + 1)
            cap *= 2;
        if (cap > UINT32_MAX)
            return -ENOMEM;
        char *a = realloc(t->arena, cap);
        if (!a)
            return -ENOMEM;
        t->arena = a;
        t->arena_cap = cap;
    }
    if (n)
        memcpy(t->arena + t->arena_len, p, n);
    *off = (uint32_t)t->arena_len;
    t->arena_len += n;
    return 0;
}

/* ------------------------------------------------------------------ */
/* symbol map                                                           */

static int64_t smap_find(const struct eng_tok *t, const char *s, size_t n)
{
    uint64_t h = hash_bytes(s, n), i = h & t->smap_mask;
    uint32_t h32 = (uint32_t)(h >> 32);

    for (;;) {
        uint64_t e = t->smap[i];
        if (!e)
            return -1;
        if ((uint32_t)(e >> 32) == h32) {
            uint32_t sid = (uint32_t)e - 1;
            if (t->key[sid].len == n && !memcmp(t->arena + t->key[sid].off, s, n))
                return sid;
        }
        i = (i + 1) & t->smap_mask;
    }
}

static int smap_grow(struct eng_tok *t, uint64_t min_slots)
{
    uint64_t nmask = t->smap_mask ? t->smap_mask * 2 + 1 : 4095;
    while (nmask + 1 < min_slots)
        nmask = nmask * 2 + 1;
    uint64_t *n = calloc(nmask + 1, sizeof(*n));

    if (!n)
        return -ENOMEM;
    for (uint64_t i = 0; t->smap && i <= t->smap_mask; i++) {
        uint64_t e = t->smap[i], j;
        if (!e)
            continue;
        uint32_t sid = (uint32_t)e - 1;
        j = hash_bytes(t->arena + t->key[sid].off, t->key[sid].len) & nmask;
        while (n[j])
            j = (j + 1) & nmask;
        n[j] = e;
    }
    free(t->smap);
    t->smap = n;
    t->smap_mask = nmask;
    return 0;
}

/* Insert key [off, off+len) of the arena for sid (caller checked absence). */
static int smap_insert(struct eng_tok *t, uint32_t sid)
{
    int rc;

    if ((t->n_smap + 1) * 2 > t->smap_mask + 1 && (rc = smap_grow(t, 0)))
        return rc;
    uint64_t h = hash_bytes(t->arena + t->key[sid].off, t->key[sid].len);
    uint64_t i = h & t->smap_mask;
    while (t->smap[i])
        i = (i + 1) & t->smap_mask;
    t->smap[i] = (h >> 32 << 32) | ((uint64_t)sid + 1);
    t->n_smap++;
    return 0;
}

/* Insert sid, whose key hashes to h, unless the key is present (-EEXIST).
 * The table was sized for every token at once: no growth here. */
static int smap_insert_hashed(struct eng_tok *t, uint32_t sid, uint64_t h)
{
    const char *k = t->arena + t->key[sid].off;
    uint32_t kl = t->key[sid].len;
    uint64_t i = h & t->smap_mask;
    uint32_t h32 = (uint32_t)(h >> 32);
    for (;;) {
        uint64_t e = t->smap[i];
        if (!e)
            break;
        if ((uint32_t)(e >> 32) == h32) {
            uint32_t o = (uint32_t)e - 1;
            if (t->key[o].len == kl && !memcmp(t->arena + t->key[o].off, k, kl))
                return -EEXIST;
        }
        i = (i + 1) & t->smap_mask;
    }
    t->smap[i] = (h >> 32 << 32) | ((uint64_t)sid + 1);
    t->n_smap++;
    return 0;
}

static int sym_reserve(struct eng_tok *t, uint32_t n)
{
    if (n <= t->cap_sym)
        return 0;
    uint32_t cap = t->cap_sym ? t->cap_sym : 1024;
    while (cap < n)
        cap *= 2;
    struct keyref *a = realloc(t->key, cap * sizeof(*a));
    if (!a)
        return -ENOMEM;
    t->key = a;
    t->cap_sym = cap;
    return 0;
}

/* sid of the bytes [s, s+n); adds an extra symbol when absent. */
static int64_t sym_intern(struct eng_tok *t, const char *s, size_t n)
{
    int64_t sid = smap_find(t, s, n);
    uint32_t off;
    int rc;

    if (sid >= 0)
        return sid;
    if ((rc = sym_reserve(t, t->n_sym + 1)) || (rc = arena_put(t, s, n, &off)))
        return rc;
    t->key[t->n_sym].off = off;
    t->key[t->n_sym].len = (uint32_t)n;
    if ((rc = smap_insert(t, t->n_sym)))
        return rc;
    return t->n_sym++;
}

/* ------------------------------------------------------------------ */
/* merge map                                                            */

static int mmap_init(struct eng_tok *t, uint64_t n)
{
    uint64_t cap = 1024;

    while (cap < n * 2)
        cap *= 2;
    t->mmap = malloc(cap * sizeof(*t->mmap));
    if (!t->mmap)
        return -ENOMEM;
    for (uint64_t i = 0; i < cap; i++)
        t->mmap[i].key = UINT64_MAX;
    t->mmap_mask = cap - 1;
    t->mmap_shift = 64 - (unsigned)__builtin_ctzll(cap);
    return 0;
}

/* A pair's home slot: one multiply (Fibonacci hashing, the top bits of
 * key * 2^64/phi) instead of a full 64-bit mix - the merge map is probed
 * for every pair of every word, and the keys (two symbol ids) are
 * already well spread in their low bits. bench-tokenize: encode 5-7%
 * faster, load time unchanged (so are the probe chains of its inserts). */
static inline uint64_t mmap_slot(const struct eng_tok *t, uint64_t key)
{
    return (key * 0x9e3779b97f4a7c15ull) >> t->mmap_shift;
}

static inline const struct merge_slot *mmap_find(const struct eng_tok *t, uint32_t a, uint32_t b)
{
    uint64_t key = (uint64_t)a << 32 | b, i = mmap_slot(t, key);

    for (;;) {
        const struct merge_slot *m = &t->mmap[i];
        if (m->key == key)
            return m;
        if (m->key == UINT64_MAX)
            return NULL;
        i = (i + 1) & t->mmap_mask;
    }
}

static void mmap_add(struct eng_tok *t, uint32_t a, uint32_t b, uint32_t rank, uint32_t res)
{
    uint64_t key = (uint64_t)a << 32 | b, i = mmap_slot(t, key);

    for (;;) {
        struct merge_slot *m = &t->mmap[i];
        if (m->key == key)
            return;   /* first (lowest) rank wins, as llama.cpp's emplace */
        if (m->key == UINT64_MAX) {
            m->key = key;
            m->rank = rank;
            m->res = res;
            return;
        }
        i = (i + 1) & t->mmap_mask;
    }
}

/* ------------------------------------------------------------------ */
/* GPT-2 byte <-> unicode table                                         */

static uint16_t b2u[256];       /* byte -> code point */
static int16_t u2b[324];        /* code point -> byte, -1 */

static void b2u_build(void)
{
    int n = 0;

    for (int i = 0; i < 324; i++)
        u2b[i] = -1;
    for (int b = 0; b < 256; b++) {
        if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255))
            b2u[b] = (uint16_t)b;
        else
            b2u[b] = (uint16_t)(256 + n++);
        u2b[b2u[b]] = (int16_t)b;
    }
}

static void b2u_init(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, b2u_build);
}

/* Decode GPT-2 byte characters in [s, s+n) into out (>= n bytes).
 * Returns the decoded length, or -1 if a character is not in the table
 * (then out holds the text with the decodable characters decoded and the
 * others copied as they are, which is what the piece shows). */
static int64_t gpt2_decode(const unsigned char *s, size_t n, unsigned char *out)
{
    size_t i = 0, o = 0;
    int ok = 1;

    while (i < n) {
        uint32_t cp = 0xFFFFFFFF;
        size_t l = 1;

        if (s[i] < 0x80) {
            cp = s[i];
        } else if ((s[i] & 0xE0) == 0xC0 && i + 1 < n && (s[i + 1] & 0xC0) == 0x80) {
            cp = (uint32_t)(s[i] & 0x1F) << 6 | (s[i + 1] & 0x3F);
            l = 2;
        } else {
            l = FAVO_MIN(eng_utf8_lead_len(s[i]), n - i);
        }
        if (cp < 324 && u2b[cp] >= 0) {
            out[o++] = (unsigned char)u2b[cp];
        } else {
            ok = 0;
            memcpy(out + o, s + i, l);
            o += l;
        }
        i += l;
    }
    return ok ? (int64_t)o : -1 - (int64_t)o;
}

/* ------------------------------------------------------------------ */
/* load                                                                 */

static int get_id(const eng_gguf_t *g, const char *key, uint32_t n_vocab, int32_t *id)
{
    uint32_t v;

    if (eng_gguf_get_u32(g, key, &v) == 0 && v < n_vocab)
        *id = (int32_t)v;
    return 0;
}

static int trie_add(struct eng_tok *t, const char *s, size_t n, int32_t tok)
{
    uint32_t node = 0;

    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        uint32_t ch = i == 0 ? t->root[c] : t->trie[node].child;

        if (i != 0)
            while (ch && t->trie[ch].byte != c)
                ch = t->trie[ch].sibling;
        if (!ch) {
            if (t->n_trie == t->cap_trie) {
                uint32_t cap = t->cap_trie * 2;
                struct trie_node *a = realloc(t->trie, cap * sizeof(*a));
                if (!a)
                    return -ENOMEM;
                t->trie = a;
                t->cap_trie = cap;
            }
            ch = t->n_trie++;
            t->trie[ch] = (struct trie_node){ .child = 0, .sibling = 0, .tok = -1, .byte = c };
            if (i == 0) {
                t->root[c] = ch;
            } else {
                t->trie[ch].sibling = t->trie[node].child;
                t->trie[node].child = ch;
            }
        }
        node = ch;
    }
    if (n && t->trie[node].tok < 0)
        t->trie[node].tok = tok;
    return 0;
}

static int prio_cmp(const void *a, const void *b, void *ctx)
{
    const struct eng_tok *t = ctx;
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    uint32_t lx = t->tok[x].text_len, ly = t->tok[y].text_len;

    if (lx != ly)
        return lx > ly ? -1 : 1;
    return x < y ? -1 : x > y;
}

static bool text_is(const struct eng_tok *t, uint32_t id, const char *s)
{
    size_t n = strlen(s);
    return t->tok[id].text_len == n && !memcmp(t->arena + t->tok[id].text_off, s, n);
}

static int hexval(unsigned char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

static int build_pieces(struct eng_tok *t, unsigned char *buf)
{
    for (uint32_t id = 0; id < t->n_vocab; id++) {
        struct tok_entry *e = &t->tok[id];
        const unsigned char *s = (const unsigned char *)t->arena + e->text_off;
        size_t n = e->text_len, o = 0;
        int rc;

        if (e->attr & ENG_TOK_ATTR_BYTE) {
            /* "<0xXX>"; the text is not NUL-terminated, so no sscanf */
            int hi = n == 6 && s[0] == '<' && s[1] == '0' && s[2] == 'x' && s[5] == '>' ? hexval(s[3]) : -1;
            int lo = hi >= 0 ? hexval(s[4]) : -1;
            if (lo >= 0) {
                buf[0] = (unsigned char)(hi << 4 | lo);
                o = 1;
            }
        } else if (e->attr & (ENG_TOK_ATTR_UNKNOWN | ENG_TOK_ATTR_CONTROL | ENG_TOK_ATTR_USER_DEFINED)) {
            memcpy(buf, s, n);
            o = n;
        } else if (e->attr & ENG_TOK_ATTR_NORMAL) {
            if (t->kind == ENG_TOK_SPM) {
                for (size_t i = 0; i < n; i++) {
                    if (i + 2 < n && s[i] == 0xE2 && s[i + 1] == 0x96 && s[i + 2] == 0x81) {
                        buf[o++] = ' ';
                        i += 2;
                    } else {
                        buf[o++] = s[i];
                    }
                }
            } else {
                int64_t d = gpt2_decode(s, n, buf);
                o = (size_t)(d >= 0 ? d : -1 - d);
            }
        }
        /* re-read the arena pointer: arena_put may move it */
        uint32_t off;
        if ((rc = arena_put(t, buf, o, &off)))
            return rc;
        t->tok[id].piece_off = off;
        t->tok[id].piece_len = (uint32_t)o;
        t->max_piece = FAVO_MAX(t->max_piece, o);
    }
    return 0;
}

static int load_merges(struct eng_tok *t, const eng_gguf_t *g, char *err, size_t errlen)
{
    int64_t ki = eng_gguf_find(g, "tokenizer.ggml.merges");
    enum eng_gguf_vtype et;
    uint64_t n;
    unsigned char *buf = NULL;
    size_t cap = 0;
    int rc = 0;

    if (ki < 0) {
        set_err(err, errlen, "tokenizer.ggml.merges: missing (required for a gpt2 tokenizer)");
        return -EINVAL;
    }
    if (eng_gguf_kv_arr(g, ki, &et, &n) || et != ENG_GGUF_STRING || n > INT32_MAX) {
        set_err(err, errlen, "tokenizer.ggml.merges (key at byte %llu): not an array of strings",
                (unsigned long long)eng_gguf_kv_offset(g, ki));
        return -EINVAL;
    }
    if ((rc = mmap_init(t, n)))
        return rc;
    for (uint64_t i = 0; i < n; i++) {
        struct eng_gguf_str s;
        int64_t la, lb, sa, sb, sr;
        const char *sp;

        if (eng_gguf_kv_arr_str(g, ki, i, &s)) {
            set_err(err, errlen, "tokenizer.ggml.merges[%llu]: unreadable", (unsigned long long)i);
            rc = -EINVAL;
            goto out;
        }
        if (s.len * 2 + 8 > cap) {
            cap = s.len * 2 + 64;
            unsigned char *nb = realloc(buf, cap);
            if (!nb) {
                rc = -ENOMEM;
                goto out;
            }
            buf = nb;
        }
        sp = s.len > 1 ? memchr(s.p + 1, ' ', s.len - 1) : NULL;
        if (!sp)
            continue;   /* malformed merge: can never apply */
        la = gpt2_decode((const unsigned char *)s.p, (size_t)(sp - s.p), buf);
        if (la <= 0)
            continue;   /* not byte characters: no word can reach it */
        lb = gpt2_decode((const unsigned char *)sp + 1, s.len - (size_t)(sp - s.p) - 1, buf + la);
        if (lb <= 0)
            continue;
        /* buf = a bytes then b bytes, contiguous: intern a, b, a+b */
        if ((sa = sym_intern(t, (const char *)buf, (size_t)la)) < 0 ||
            (sb = sym_intern(t, (const char *)buf + la, (size_t)lb)) < 0 ||
            (sr = sym_intern(t, (const char *)buf, (size_t)(la + lb))) < 0) {
            rc = -ENOMEM;
            goto out;
        }
        mmap_add(t, (uint32_t)sa, (uint32_t)sb, (uint32_t)i, (uint32_t)sr);
    }
out:
    free(buf);
    return rc;
}

int eng_tok_load_file(eng_tok_t **out, const char *path, char *err, size_t errlen)
{
    eng_gguf_t *g = NULL;
    int rc = eng_gguf_open(&g, path, err, errlen);

    if (rc)
        return rc;
    rc = eng_tok_load(out, g, err, errlen);
    eng_gguf_close(g); /* the tokenizer keeps nothing of the mapping */
    return rc;
}

int eng_tok_load(eng_tok_t **out, const eng_gguf_t *g, char *err, size_t errlen)
{
    struct eng_tok *t = calloc(1, sizeof(*t));
    struct eng_gguf_str model, pre = { "", 0 }, s;
    int64_t ki_tok, ki_sc, ki_ty;
    enum eng_gguf_vtype et, et_sc = ENG_GGUF_F32, et_ty = ENG_GGUF_I32;
    uint64_t n, n_sc = 0, n_ty = 0;
    const unsigned char *scores = NULL, *types = NULL;
    unsigned char *buf = NULL;
    size_t maxlen = 0;
    int rc = -EINVAL, b;

    *out = NULL;
    if (!t)
        return -ENOMEM;
    b2u_init();
    if (eng_gguf_get_str(g, "tokenizer.ggml.model", &model)) {
        set_err(err, errlen, "tokenizer.ggml.model: missing or not a string");
        goto fail;
    }
    if (eng_gguf_str_eq(model, "llama")) {
        t->kind = ENG_TOK_SPM;
    } else if (eng_gguf_str_eq(model, "gpt2")) {
        t->kind = ENG_TOK_BPE;
    } else {
        set_err(err, errlen, "tokenizer.ggml.model: '%.*s' is not supported (supported: llama, gpt2)",
                (int)FAVO_MIN(model.len, 64), model.p);
        rc = -ENOTSUP;
        goto fail;
    }
    ki_tok = eng_gguf_find(g, "tokenizer.ggml.tokens");
    if (ki_tok < 0 || eng_gguf_kv_arr(g, ki_tok, &et, &n) || et != ENG_GGUF_STRING) {
        set_err(err, errlen, "tokenizer.ggml.tokens: missing or not an array of strings");
        goto fail;
    }
    if (n == 0 || n > INT32_MAX / 4) {
        set_err(err, errlen, "tokenizer.ggml.tokens: %llu tokens is out of range",
                (unsigned long long)n);
        goto fail;
    }
    t->n_vocab = (uint32_t)n;
    ki_sc = eng_gguf_find(g, "tokenizer.ggml.scores");
    if (ki_sc >= 0) {
        if (eng_gguf_kv_arr(g, ki_sc, &et_sc, &n_sc) || (et_sc != ENG_GGUF_F32 && et_sc != ENG_GGUF_I32) ||
            n_sc < n) {
            set_err(err, errlen, "tokenizer.ggml.scores (key at byte %llu): must be f32/i32 with one per token",
                    (unsigned long long)eng_gguf_kv_offset(g, ki_sc));
            goto fail;
        }
        scores = eng_gguf_kv_arr_data(g, ki_sc);
    }
    ki_ty = eng_gguf_find(g, "tokenizer.ggml.token_type");
    if (ki_ty >= 0) {
        if (eng_gguf_kv_arr(g, ki_ty, &et_ty, &n_ty) || (et_ty != ENG_GGUF_I32 && et_ty != ENG_GGUF_U32) ||
            n_ty < n) {
            set_err(err, errlen, "tokenizer.ggml.token_type (key at byte %llu): must be i32 with one per token",
                    (unsigned long long)eng_gguf_kv_offset(g, ki_ty));
            goto fail;
        }
        types = eng_gguf_kv_arr_data(g, ki_ty);
    }

    t->tok = calloc(n, sizeof(*t->tok));
    if (!t->tok || sym_reserve(t, (uint32_t)n + 1024) || smap_grow(t, 2 * n + 1024)) {
        rc = -ENOMEM;
        goto fail;
    }
    /* stored texts */
    for (uint32_t i = 0; i < n; i++) {
        struct tok_entry *e = &t->tok[i];
        int32_t ty = 1;

        if (eng_gguf_kv_arr_str(g, ki_tok, i, &s) || s.len > UINT32_MAX / 8) {
            set_err(err, errlen, "tokenizer.ggml.tokens[%u]: unreadable", i);
            goto fail;
        }
        if ((rc = arena_put(t, s.p, s.len, &e->text_off)))
            goto fail;
        e->text_len = (uint32_t)s.len;
        maxlen = FAVO_MAX(maxlen, s.len);
        if (scores) {
            if (et_sc == ENG_GGUF_F32) {
                memcpy(&e->score, scores + 4 * (size_t)i, 4);
            } else {
                int32_t v;
                memcpy(&v, scores + 4 * (size_t)i, 4);
                e->score = (float)v;
            }
        }
        if (types)
            memcpy(&ty, types + 4 * (size_t)i, 4);
        switch (ty) {
        case 1: e->attr = ENG_TOK_ATTR_NORMAL; break;
        case 2: e->attr = ENG_TOK_ATTR_UNKNOWN; break;
        case 3: e->attr = ENG_TOK_ATTR_CONTROL; break;
        case 4: e->attr = ENG_TOK_ATTR_USER_DEFINED; break;
        case 5: e->attr = ENG_TOK_ATTR_UNUSED; break;
        case 6: e->attr = ENG_TOK_ATTR_BYTE; break;
        default: e->attr = ENG_TOK_ATTR_UNDEFINED; break;
        }
    }
    rc = -EINVAL;
    buf = malloc(maxlen * 2 + 64);
    if (!buf) {
        rc = -ENOMEM;
        goto fail;
    }
    /* symbol keys: SPM the stored text, BPE the decoded bytes */
    t->n_sym = (uint32_t)n;
    for (uint32_t i = 0; i < n; i++) {
        struct tok_entry *e = &t->tok[i];
        int64_t d;
        uint32_t off;

        if (t->kind == ENG_TOK_SPM) {
            t->key[i].off = e->text_off;
            t->key[i].len = e->text_len;
        } else {
            d = gpt2_decode((const unsigned char *)t->arena + e->text_off, e->text_len, buf);
            if (d < 0) {
                t->key[i].off = 0;
                t->key[i].len = UINT32_MAX;   /* not reachable by BPE */
                continue;
            }
            if ((rc = arena_put(t, buf, (size_t)d, &off)))
                goto fail;
            rc = -EINVAL;
            t->key[i].off = off;
            t->key[i].len = (uint32_t)d;
        }
    }
    /* Insert in the order of their home slots (a counting sort on the top
     * bits, stable so a lower id wins a duplicate): the table is written
     * almost sequentially instead of at random, which is most of the load
     * time of a large vocabulary. */
    {
        uint64_t *hs = malloc((size_t)n * sizeof(*hs));
        uint32_t *ord = malloc((size_t)n * sizeof(*ord)), cnt[4097] = { 0 };
        unsigned shift = 0;
        if (!hs || !ord) {
            free(hs);
            free(ord);
            rc = -ENOMEM;
            goto fail;
        }
        while ((t->smap_mask >> shift) >= 4096)
            shift++;
        for (uint32_t i = 0; i < n; i++) {
            hs[i] = t->key[i].len && t->key[i].len != UINT32_MAX
                        ? hash_bytes(t->arena + t->key[i].off, t->key[i].len) : UINT64_MAX;
            if (hs[i] != UINT64_MAX)
                cnt[((hs[i] & t->smap_mask) >> shift) + 1]++;
        }
        for (unsigned q = 1; q <= 4096; q++)
            cnt[q] += cnt[q - 1];
        uint32_t m = 0;
        for (uint32_t i = 0; i < n; i++)
            if (hs[i] != UINT64_MAX) {
                ord[cnt[(hs[i] & t->smap_mask) >> shift]++] = i;
                m++;
            }
        for (uint32_t k = 0; k < m; k++) {
            uint32_t i = ord[k];
            rc = smap_insert_hashed(t, i, hs[i]);
            if (rc == -EEXIST) {
                if (t->kind == ENG_TOK_SPM) {
                    set_err(err, errlen, "tokenizer.ggml.tokens[%u]: duplicate token text", i);
                    rc = -EINVAL;
                    free(hs);
                    free(ord);
                    goto fail;
                }
                t->key[i].len = UINT32_MAX;
            }
        }
        free(hs);
        free(ord);
        rc = -EINVAL;
    }

    /* pre-tokenizer and defaults */
    t->sp = (struct eng_tok_special){ .bos = ENG_TOK_NULL, .eos = ENG_TOK_NULL, .eot = ENG_TOK_NULL,
                                      .eom = ENG_TOK_NULL, .unk = ENG_TOK_NULL, .sep = ENG_TOK_NULL,
                                      .pad = ENG_TOK_NULL, .nl = ENG_TOK_NULL };
    if (t->kind == ENG_TOK_SPM) {
        t->sp.bos = 1;
        t->sp.eos = 2;
        t->sp.unk = 0;
        t->sp.add_bos = true;
        t->sp.add_space_prefix = true;
    } else {
        const struct eng_tok_pre_def *def;

        if (eng_gguf_get_str(g, "tokenizer.ggml.pre", &pre) || pre.len == 0) {
            favo_warn("tokenizer: no tokenizer.ggml.pre in the model; using the 'default' "
                      "pre-tokenizer (tokenization may not match training)");
            pre = (struct eng_gguf_str){ "default", 7 };
        }
        def = eng_tok_pre_find(pre.p, pre.len);
        if (!def) {
            set_err(err, errlen,
                    "tokenizer.ggml.pre: unknown pre-tokenizer '%.*s'; favo knows gpt-2, llama3, "
                    "qwen2, smollm, starcoder, falcon, deepseek-llm, deepseek-coder, mpt, refact, "
                    "tekken, gpt-4o and more (eng_tok_pre_names())",
                    (int)FAVO_MIN(pre.len, 64), pre.p);
            rc = -ENOTSUP;
            goto fail;
        }
        if ((rc = eng_tok_pre_compile(&t->pre, def, err, errlen)))
            goto fail;
        rc = -EINVAL;
        t->pre_flags = def->flags;
        t->ignore_merges = def->flags & PRE_IGNORE_MERGES;
        snprintf(t->pre_name, sizeof(t->pre_name), "%s", def->name);
        t->sp.bos = 11;
        t->sp.eos = 11;
        t->sp.add_bos = def->flags & PRE_ADD_BOS;
        if (def->flags & PRE_NO_BOS)
            t->sp.bos = ENG_TOK_NULL;
        if ((rc = load_merges(t, g, err, errlen)))
            goto fail;
        rc = -EINVAL;
        for (b = 0; b < 256; b++) {
            char c = (char)b;
            int64_t sid = sym_intern(t, &c, 1);
            if (sid < 0) {
                rc = -ENOMEM;
                goto fail;
            }
            t->byte_sid[b] = (uint32_t)sid;
        }
    }
    {
        int v;
        if (eng_gguf_get_bool(g, "tokenizer.ggml.add_space_prefix", &v) == 0)
            t->sp.add_space_prefix = v;
    }
    {
        int32_t *ids[] = { &t->sp.bos, &t->sp.eos, &t->sp.unk };
        for (unsigned k = 0; k < 3; k++)
            if (*ids[k] >= (int32_t)n)
                *ids[k] = ENG_TOK_NULL;
    }
    get_id(g, "tokenizer.ggml.bos_token_id", t->n_vocab, &t->sp.bos);
    get_id(g, "tokenizer.ggml.eos_token_id", t->n_vocab, &t->sp.eos);
    get_id(g, "tokenizer.ggml.eot_token_id", t->n_vocab, &t->sp.eot);
    get_id(g, "tokenizer.ggml.eom_token_id", t->n_vocab, &t->sp.eom);
    get_id(g, "tokenizer.ggml.unknown_token_id", t->n_vocab, &t->sp.unk);
    get_id(g, "tokenizer.ggml.seperator_token_id", t->n_vocab, &t->sp.sep);
    get_id(g, "tokenizer.ggml.padding_token_id", t->n_vocab, &t->sp.pad);
    {
        int v;
        if (eng_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &v) == 0)
            t->sp.add_bos = v;
        if (eng_gguf_get_bool(g, "tokenizer.ggml.add_eos_token", &v) == 0)
            t->sp.add_eos = v;
    }
    if (t->sp.add_bos && t->sp.bos == ENG_TOK_NULL) {
        set_err(err, errlen, "tokenizer.ggml.add_bos_token is true, but tokenizer.ggml.bos_token_id is not set");
        goto fail;
    }
    if (t->sp.add_eos && t->sp.eos == ENG_TOK_NULL) {
        set_err(err, errlen, "tokenizer.ggml.add_eos_token is true, but tokenizer.ggml.eos_token_id is not set");
        goto fail;
    }

    /* end-of-generation tokens, recognised by text as llama.cpp does */
    t->eog = calloc((n + 7) / 8, 1);
    if (!t->eog) {
        rc = -ENOMEM;
        goto fail;
    }
    {
        /* The lists and workarounds of llama.cpp's vocab loader: converters do
         * not mark these tokens, so they are recognised by their text, made
         * control tokens (so user text never produces them) and, for EOG,
         * end generation. */
        static const char *const eot_names[] = {
            "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
            "<|end_of_text|>", "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>",
            "<end_of_utterance>", NULL
        };
        static const char *const fim_names[6][9] = {
            { "<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
              "<|code_prefix|>", "<|prefix|>", NULL },
            { "<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
              "<|code_suffix|>", "<|suffix|>", NULL },
            { "<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
              "<|code_middle|>", "<|middle|>", NULL },
            { "<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]", NULL },
            { "<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>", NULL },
            { "<|file_sep|>", NULL },
        };
        static const char *const eog_names[] = {
            "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>",
            "<|calls|>", "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>",
            "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>", "<end_of_utterance>", "<eos>",
            "<turn|>", "<|tool_response>", "<｜end▁of▁sentence｜>", "[e~[", NULL
        };
        static const char *const always_user[] = {
            "<|channel|>", "<|message|>", "<|start|>", "<|constrain|>", NULL
        };
        int32_t fim[6] = { -1, -1, -1, -1, -1, -1 };
        int32_t id_end = -1, id_s = -1;
        bool has_return = false, has_call = false, has_flush = false, has_tool_resp = false;

        for (uint32_t i = 0; i < n; i++) {
            struct tok_entry *e = &t->tok[i];
            unsigned char c0 = e->text_len ? (unsigned char)t->arena[e->text_off] : 0;
            if (e->text_len < 4 || (c0 != '<' && c0 != '_' && c0 != '[' && c0 != 0xE2))
                goto no_name;   /* every name below starts so: skip the compares */
            if (t->sp.eot == ENG_TOK_NULL)
                for (int k = 0; eot_names[k]; k++)
                    if (text_is(t, i, eot_names[k])) {
                        t->sp.eot = (int32_t)i;
                        e->attr |= ENG_TOK_ATTR_CONTROL;
                    }
            if (t->sp.eom == ENG_TOK_NULL && text_is(t, i, "<|eom_id|>")) {
                t->sp.eom = (int32_t)i;
                e->attr |= ENG_TOK_ATTR_CONTROL;
            }
            for (int f = 0; f < 6; f++)
                for (int k = 0; fim[f] < 0 && fim_names[f][k]; k++)
                    if (text_is(t, i, fim_names[f][k])) {
                        fim[f] = (int32_t)i;
                        e->attr |= ENG_TOK_ATTR_CONTROL;
                    }
no_name:
            if ((e->attr & ENG_TOK_ATTR_CONTROL) && e->text_len &&
                memmem(t->arena + e->text_off, e->text_len, "unused", 6))
                e->attr |= ENG_TOK_ATTR_UNUSED;
        }
        for (int f = 3; f < 6; f++)   /* FIM pad, repo, file separator end generation */
            if (fim[f] >= 0)
                t->eog[fim[f] / 8] |= (uint8_t)(1u << (fim[f] % 8));
        for (uint32_t i = 0; i < n; i++) {
            struct tok_entry *e = &t->tok[i];
            unsigned char c0 = e->text_len ? (unsigned char)t->arena[e->text_off] : 0;
            if (e->text_len < 4 || (c0 != '<' && c0 != '_' && c0 != '[' && c0 != 0xE2))
                continue;
            for (int k = 0; eog_names[k]; k++)
                if (text_is(t, i, eog_names[k])) {
                    t->eog[i / 8] |= (uint8_t)(1u << (i % 8));
                    e->attr |= ENG_TOK_ATTR_CONTROL;
                }
            for (int k = 0; always_user[k]; k++)   /* gpt-oss: always rendered */
                if (text_is(t, i, always_user[k]))
                    e->attr = ENG_TOK_ATTR_USER_DEFINED;
        }
        if (t->sp.eos != ENG_TOK_NULL)
            t->eog[t->sp.eos / 8] |= (uint8_t)(1u << (t->sp.eos % 8));
        if (t->sp.eot != ENG_TOK_NULL)
            t->eog[t->sp.eot / 8] |= (uint8_t)(1u << (t->sp.eot % 8));
        if (t->sp.eom != ENG_TOK_NULL)
            t->eog[t->sp.eom / 8] |= (uint8_t)(1u << (t->sp.eom % 8));
        /* o200k_harmony / solar-open: <|end|> is not the end there; gemma4 /
         * paddleocr with <|tool_response>: </s> is not either */
        for (uint32_t i = 0; i < n; i++) {
            if (!(t->eog[i / 8] >> (i % 8) & 1))
                continue;
            has_return |= text_is(t, i, "<|return|>");
            has_call |= text_is(t, i, "<|call|>") || text_is(t, i, "<|calls|>");
            has_flush |= text_is(t, i, "<|flush|>");
            has_tool_resp |= text_is(t, i, "<|tool_response>");
            if (text_is(t, i, "<|end|>"))
                id_end = (int32_t)i;
            if (text_is(t, i, "</s>"))
                id_s = (int32_t)i;
        }
        if (id_end >= 0 && ((has_return && has_call) || (has_call && has_flush))) {
            t->eog[id_end / 8] &= (uint8_t)~(1u << (id_end % 8));
            t->tok[id_end].attr = ENG_TOK_ATTR_USER_DEFINED;
        }
        if (id_s >= 0 && has_tool_resp) {
            t->eog[id_s / 8] &= (uint8_t)~(1u << (id_s % 8));
            t->tok[id_s].attr = ENG_TOK_ATTR_NORMAL;
        }
    }
    /* Phi-3 strips whitespace right of its special tokens (llama.cpp does
     * this by model name, as the attributes are missing from GGUF). */
    if (eng_gguf_get_str(g, "general.name", &s) == 0 && s.len < 256) {
        char lname[256];
        for (size_t i = 0; i < s.len; i++)
            lname[i] = (char)tolower((unsigned char)s.p[i]);
        lname[s.len] = 0;
        if (strstr(lname, "phi-3") || strstr(lname, "phi3")) {
            for (uint32_t i = 0; i < n; i++) {
                struct tok_entry *e = &t->tok[i];
                if ((e->attr & (ENG_TOK_ATTR_CONTROL | ENG_TOK_ATTR_USER_DEFINED | ENG_TOK_ATTR_UNKNOWN)) ||
                    text_is(t, i, "</s>"))
                    e->attr |= ENG_TOK_ATTR_RSTRIP;
                if (text_is(t, i, "<unk>") || text_is(t, i, "<s>") || text_is(t, i, "<|endoftext|>"))
                    e->attr &= ~(uint32_t)ENG_TOK_ATTR_RSTRIP;
            }
        }
    }

    /* SPM segment boundaries: every adjacent byte pair inside some token
     * (any type: a merge may produce any token). Conservative: a pair inside
     * a character counts too, which only makes segments longer. */
    if (t->kind == ENG_TOK_SPM)
        for (uint32_t i = 0; i < n; i++) {
            const unsigned char *p = (const unsigned char *)t->arena + t->tok[i].text_off;
            for (uint32_t j = 1; j < t->tok[i].text_len; j++) {
                unsigned k = (unsigned)p[j - 1] << 8 | p[j];
                t->spm_pair[k >> 3] |= (uint8_t)(1u << (k & 7));
            }
        }

    /* byte fallback table */
    for (b = 0; b < 256; b++) {
        char hex[8];
        int64_t id;
        t->byte_tok[b] = ENG_TOK_NULL;
        if (t->kind == ENG_TOK_SPM) {
            snprintf(hex, sizeof(hex), "<0x%02X>", b);
            id = smap_find(t, hex, 6);
            if (id < 0) {
                char c = (char)b;
                id = smap_find(t, &c, 1);
            }
            t->byte_tok[b] = id >= 0 ? (int32_t)id : t->sp.unk;
        } else if (b >= 33 && b <= 126) {
            char c = (char)b;
            id = smap_find(t, &c, 1);
            t->byte_tok[b] = id >= 0 && id < (int64_t)n ? (int32_t)id : ENG_TOK_NULL;
        }
    }

    /* special-token trie and partition order */
    t->cap_trie = 1024;
    t->trie = malloc(t->cap_trie * sizeof(*t->trie));
    t->prio = malloc(n * sizeof(*t->prio));
    if (!t->trie || !t->prio) {
        rc = -ENOMEM;
        goto fail;
    }
    t->trie[0] = (struct trie_node){ .tok = -1 };
    t->n_trie = 1;
    {
        uint32_t *order = malloc(n * sizeof(*order)), k = 0;
        if (!order) {
            rc = -ENOMEM;
            goto fail;
        }
        for (uint32_t i = 0; i < n; i++)
            if ((t->tok[i].attr & (ENG_TOK_ATTR_CONTROL | ENG_TOK_ATTR_USER_DEFINED | ENG_TOK_ATTR_UNKNOWN)) &&
                t->tok[i].text_len)
                order[k++] = i;
        qsort_r(order, k, sizeof(*order), prio_cmp, t);
        for (uint32_t i = 0; i < n; i++)
            t->prio[i] = UINT32_MAX;
        for (uint32_t i = 0; i < k; i++) {
            t->prio[order[i]] = i;
            if ((rc = trie_add(t, t->arena + t->tok[order[i]].text_off, t->tok[order[i]].text_len,
                               (int32_t)order[i]))) {
                free(order);
                goto fail;
            }
        }
        t->n_special = k;
        free(order);
    }

    if ((rc = build_pieces(t, buf)))
        goto fail;
    if (eng_gguf_get_str(g, "tokenizer.chat_template", &s) == 0) {
        t->chat_template = malloc(s.len + 1);
        if (!t->chat_template) {
            rc = -ENOMEM;
            goto fail;
        }
        memcpy(t->chat_template, s.p, s.len);
        t->chat_template[s.len] = 0;
    }
    /* newline token */
    if (t->kind == ENG_TOK_SPM) {
        t->sp.nl = t->byte_tok['\n'];
    } else {
        int32_t id;
        if (eng_tok_encode(t, "\n", 1, 0, &id, 1) >= 1)
            t->sp.nl = id;
    }
    free(buf);
    *out = t;
    return 0;
fail:
    free(buf);
    eng_tok_free(t);
    return rc;
}

void eng_tok_free(eng_tok_t *t)
{
    if (!t)
        return;
    eng_tok_pre_free(&t->pre);
    free(t->tok);
    free(t->arena);
    free(t->key);
    free(t->smap);
    free(t->mmap);
    free(t->trie);
    free(t->prio);
    free(t->eog);
    free(t->chat_template);
    free(t);
}

/* ------------------------------------------------------------------ */
/* accessors                                                            */

enum eng_tok_kind eng_tok_kind(const eng_tok_t *t) { return t->kind; }
uint32_t eng_tok_n_vocab(const eng_tok_t *t) { return t->n_vocab; }
const char *eng_tok_pre_name(const eng_tok_t *t) { return t->pre_name; }
const struct eng_tok_special *eng_tok_special(const eng_tok_t *t) { return &t->sp; }
const char *eng_tok_chat_template(const eng_tok_t *t) { return t->chat_template; }

size_t eng_tok_max_piece(const eng_tok_t *t) { return t->max_piece; }

uint32_t eng_tok_attr(const eng_tok_t *t, int32_t id)
{
    return id >= 0 && (uint32_t)id < t->n_vocab ? t->tok[id].attr : 0;
}

bool eng_tok_is_eog(const eng_tok_t *t, int32_t id)
{
    return id >= 0 && (uint32_t)id < t->n_vocab && (t->eog[id / 8] >> (id % 8) & 1);
}

int eng_tok_text(const eng_tok_t *t, int32_t id, const char **p, size_t *len)
{
    if (id < 0 || (uint32_t)id >= t->n_vocab)
        return -ERANGE;
    *p = t->arena + t->tok[id].text_off;
    *len = t->tok[id].text_len;
    return 0;
}

int32_t eng_tok_find(const eng_tok_t *t, const char *s, size_t len)
{
    if (t->kind == ENG_TOK_SPM) {
        int64_t sid = smap_find(t, s, len);
        return sid >= 0 && sid < t->n_vocab ? (int32_t)sid : ENG_TOK_NULL;
    }
    /* stored BPE texts are not keyed; specials are in the trie, others are rare */
    if (len) {
        uint32_t node = t->root[(unsigned char)s[0]];
        for (size_t i = 1; node && i < len; i++) {
            uint32_t ch = t->trie[node].child;
            while (ch && t->trie[ch].byte != (unsigned char)s[i])
                ch = t->trie[ch].sibling;
            node = ch;
        }
        if (node && t->trie[node].tok >= 0)
            return t->trie[node].tok;
    }
    for (uint32_t i = 0; i < t->n_vocab; i++)
        if (t->tok[i].text_len == len && !memcmp(t->arena + t->tok[i].text_off, s, len))
            return (int32_t)i;
    return ENG_TOK_NULL;
}

int eng_tok_piece(const eng_tok_t *t, int32_t id, unsigned flags, const char **p, size_t *len)
{
    if (id < 0 || (uint32_t)id >= t->n_vocab)
        return -ERANGE;
    if (!(flags & ENG_TOK_SHOW_SPECIAL) &&
        (t->tok[id].attr & (ENG_TOK_ATTR_CONTROL | ENG_TOK_ATTR_UNKNOWN))) {
        *p = t->arena;
        *len = 0;
        return 0;
    }
    *p = t->arena + t->tok[id].piece_off;
    *len = t->tok[id].piece_len;
    return 0;
}

int64_t eng_tok_decode(const eng_tok_t *t, const int32_t *ids, size_t n, unsigned flags,
                       char *buf, size_t cap)
{
    size_t total = 0;

    for (size_t i = 0; i < n; i++) {
        const char *p;
        size_t l;
        int rc = eng_tok_piece(t, ids[i], flags, &p, &l);
        if (rc)
            return rc;
        if (i == 0 && (flags & ENG_TOK_STRIP_SPACE) && t->kind == ENG_TOK_SPM &&
            t->sp.add_space_prefix && l && p[0] == ' ') {
            p++;
            l--;
        }
        if (total < cap)
            memcpy(buf + total, p, FAVO_MIN(l, cap - total));
        total += l;
    }
    return (int64_t)total;
}

/* ------------------------------------------------------------------ */
/* encode                                                               */

struct wcache;

struct enc {
    const struct eng_tok *t;
    int32_t *ids;
    size_t max, n;
    /* scratch, grown as needed, freed at the end of the call */
    void *scratch;
    size_t scratch_cap;
    void *md;
    struct wcache *wc;
    int err;
};

static inline void emit(struct enc *e, int32_t id)
{
    /* ids land in the request's shared-memory cell, read by the engine */
    FAVO_ASSERT(id >= 0 && (uint32_t)id < e->t->n_vocab);   /* eng_tok.h invariant 1 */
    if (e->n < e->max)
        e->ids[e->n] = id;
    e->n++;
}

/* Every user fills the scratch afresh, so growing it keeps nothing: the old
 * block (a word's bytes, symbols and ids) is scrubbed and freed, never
 * realloc'd, which would leave a copy in freed memory (invariant 5 of
 * ARCHITECTURE.md). */
static void *scratch(struct enc *e, size_t bytes)
{
    if (bytes > e->scratch_cap) {
        size_t cap = FAVO_MAX(bytes, e->scratch_cap * 2);
        void *p = malloc(cap);
        if (!p)
            return NULL;
        if (e->scratch) {
            explicit_bzero(e->scratch, e->scratch_cap);
            free(e->scratch);
        }
        e->scratch = p;
        e->scratch_cap = cap;
    }
    return e->scratch;
}

bool eng_tok_test_no_scrub;
unsigned long eng_tok_test_deep;

/* Zero the stack below the caller's frame: the frames of the calls it made
 * (PCRE2's JIT machine stack, the JIT code's frame) held the text. Only as
 * deep as the encoder reaches (ENG_TOK_STACK_SCRUB*, eng_tok_int.h): the
 * former fixed 64 KiB was 13-19% of ingress's CPU per request. One function
 * per depth: each clears its own frame, a fixed-size array, so the depth is
 * what the compiler lays out, never a variable-length frame. */
#define STACK_SCRUB_FN(name, bytes)                                                         \
    static __attribute__((noinline)) void name(void)                                        \
    {                                                                                       \
        unsigned char pad[bytes];                                                           \
                                                                                            \
        if (eng_tok_test_no_scrub)                                                          \
            return;                                                                         \
        explicit_bzero(pad, sizeof(pad));                                                   \
        __asm__ volatile("" : : "r"(pad) : "memory");                                       \
    }
STACK_SCRUB_FN(stack_scrub, ENG_TOK_STACK_SCRUB)
STACK_SCRUB_FN(stack_scrub_shallow, ENG_TOK_STACK_SCRUB_SHALLOW)
STACK_SCRUB_FN(stack_scrub_spm, ENG_TOK_STACK_SCRUB_SPM)

/* A min-heap keyed by (k1, k2), where a smaller k1 wins, then smaller left. */
struct heap_ent {
    uint64_t key;    /* primary << 32 | left */
    int32_t right;
    uint32_t a, b;   /* BPE: sids the pair had when pushed; SPM: size */
    uint32_t res;    /* BPE: sid of the merged pair */
};

static inline void heap_push(struct heap_ent *h, size_t *n, struct heap_ent v)
{
    size_t i = (*n)++;
    while (i) {
        size_t p = (i - 1) / 2;
        if (h[p].key <= v.key)
            break;
        h[i] = h[p];
        i = p;
    }
    h[i] = v;
}

static inline struct heap_ent heap_pop(struct heap_ent *h, size_t *n)
{
    struct heap_ent top = h[0], v = h[--(*n)];
    size_t i = 0;

    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n)
            break;
        if (c + 1 < *n && h[c + 1].key < h[c].key)
            c++;
        if (v.key <= h[c].key)
            break;
        h[i] = h[c];
        i = c;
    }
    if (*n)
        h[i] = v;
    return top;
}

struct sym {
    int32_t prev, next;
    uint32_t start, len;
    uint32_t sid;
};

/* ---- byte-level BPE on one word ---- */

static inline void bpe_add_pair(const struct eng_tok *t, struct sym *sy, struct heap_ent *h,
                                size_t *nh, int32_t l, int32_t r)
{
    const struct merge_slot *m;

    if (l < 0 || r < 0)
        return;
    m = mmap_find(t, sy[l].sid, sy[r].sid);
    if (!m)
        return;
    heap_push(h, nh, (struct heap_ent){ .key = (uint64_t)m->rank << 32 | (uint32_t)l, .right = r,
                                        .a = sy[l].sid, .b = sy[r].sid, .res = m->res });
}

/* Merge the bytes of one word; writes its ids to dst (room for n). */
static size_t bpe_merge(struct enc *e, const char *w, size_t n, int32_t *dst, struct sym *sy,
                        struct heap_ent *h)
{
    const struct eng_tok *t = e->t;
    size_t nh = 0, k = 0;

    for (size_t i = 0; i < n; i++)
        sy[i] = (struct sym){ .prev = (int32_t)i - 1, .next = i + 1 < n ? (int32_t)i + 1 : -1,
                              .start = (uint32_t)i, .len = 1, .sid = t->byte_sid[(unsigned char)w[i]] };
    for (size_t i = 1; i < n; i++)
        bpe_add_pair(t, sy, h, &nh, (int32_t)i - 1, (int32_t)i);
    while (nh) {
        struct heap_ent top = heap_pop(h, &nh);
        int32_t l = (int32_t)(uint32_t)top.key, r = top.right;

        if (!sy[l].len || !sy[r].len || sy[l].next != r || sy[l].sid != top.a || sy[r].sid != top.b)
            continue;
        sy[l].sid = top.res;
        sy[l].len += sy[r].len;
        sy[r].len = 0;
        sy[l].next = sy[r].next;
        if (sy[r].next >= 0)
            sy[sy[r].next].prev = l;
        bpe_add_pair(t, sy, h, &nh, sy[l].prev, l);
        bpe_add_pair(t, sy, h, &nh, l, sy[l].next);
    }
    for (int32_t i = 0; i >= 0; i = sy[i].next) {
        if (sy[i].sid < t->n_vocab) {
            dst[k++] = (int32_t)sy[i].sid;
        } else {
            for (uint32_t j = 0; j < sy[i].len; j++) {
                int32_t id = t->byte_tok[(unsigned char)w[sy[i].start + j]];
                if (id >= 0)
                    dst[k++] = id;
            }
        }
    }
    return k;
}

/*
 * The same merge for a word of at most BPE_SMALL bytes, without the heap
 * (tiktoken's way): the current symbols in arrays, each with the rank of
 * the pair it starts; every round merges the lowest rank, leftmost first -
 * exactly the heap's (rank, left position) order - closes the gap, and
 * looks up only the two pairs that changed. For prompt-sized words the
 * scan of <= 32 ranks costs less than the heap's pushes and pops (which
 * were half of a short prompt's encode). Arrays in the scratch block
 * (heap memory, scrubbed at the end of the call), not on the stack.
 */
#define BPE_SMALL 32u

struct bsym {
    uint32_t sid, start, len, rank, res; /* rank/res: the pair (this, next); UINT32_MAX: none */
};

static inline void bsym_pair(const struct eng_tok *t, struct bsym *b, size_t i, size_t m)
{
    const struct merge_slot *ms = i + 1 < m ? mmap_find(t, b[i].sid, b[i + 1].sid) : NULL;

    b[i].rank = ms ? ms->rank : UINT32_MAX;
    b[i].res = ms ? ms->res : 0;
}

static size_t bpe_merge_small(const struct eng_tok *t, const char *w, size_t n, int32_t *dst,
                              struct bsym *b)
{
    size_t m = n, k = 0;

    for (size_t i = 0; i < n; i++)
        b[i] = (struct bsym){ .sid = t->byte_sid[(unsigned char)w[i]], .start = (uint32_t)i,
                              .len = 1 };
    for (size_t i = 0; i < n; i++)
        bsym_pair(t, b, i, m);
    for (;;) {
        size_t best = 0;
        uint32_t r = UINT32_MAX;

        for (size_t i = 0; i + 1 < m; i++)
            if (b[i].rank < r) /* strict: the leftmost of equal ranks */
                r = b[i].rank, best = i;
        if (r == UINT32_MAX)
            break;
        b[best].sid = b[best].res;
        b[best].len += b[best + 1].len;
        memmove(&b[best + 1], &b[best + 2], (m - best - 2) * sizeof(*b));
        m--;
        bsym_pair(t, b, best, m);
        if (best > 0)
            bsym_pair(t, b, best - 1, m);
    }
    for (size_t i = 0; i < m; i++) {
        if (b[i].sid < t->n_vocab) {
            dst[k++] = (int32_t)b[i].sid;
        } else {
            for (uint32_t j = 0; j < b[i].len; j++) {
                int32_t id = t->byte_tok[(unsigned char)w[b[i].start + j]];
                if (id >= 0)
                    dst[k++] = id;
            }
        }
    }
    return k;
}

/* Tests only: route every word through the heap merge (the reference the
 * small merge is compared with). */
bool eng_tok_test_no_small;

/*
 * Per-call word cache: words repeat (Zipf), and a word always tokenizes
 * the same way, so a long text merges each distinct word once. Keys point
 * into the caller's text; the cache lives for one eng_tok_encode call.
 */
#define WC_MAX_WORD 48

struct wc_ent {
    uint32_t off, len, ids_off, n_ids;
};

struct wcache {
    const char *base;
    uint64_t *slot;   /* hash32 << 32 | (entry + 1) */
    uint32_t mask, n_ent, cap_ent;
    struct wc_ent *ent;
    int32_t *ids;
    size_t n_ids, cap_ids;
};

static void wc_free(struct wcache *c)
{
    if (!c)
        return;
    /* ids of the text's words, their hashes and places: scrubbed */
    if (c->slot)
        explicit_bzero(c->slot, ((size_t)c->mask + 1) * sizeof(*c->slot));
    if (c->ent)
        explicit_bzero(c->ent, c->cap_ent * sizeof(*c->ent));
    if (c->ids)
        explicit_bzero(c->ids, c->cap_ids * sizeof(*c->ids));
    free(c->slot);
    free(c->ent);
    free(c->ids);
    free(c);
}

static struct wcache *wc_new(const char *base, size_t len)
{
    struct wcache *c = calloc(1, sizeof(*c));
    uint32_t cap = (uint32_t)FAVO_MIN(len / 16 + 64, (size_t)1 << 15), slots = 256;

    if (!c)
        return NULL;
    while (slots < 2 * cap)
        slots *= 2;
    c->base = base;
    c->mask = slots - 1;
    c->cap_ent = cap;
    c->cap_ids = (size_t)cap * 4;
    c->slot = calloc(slots, sizeof(*c->slot));
    c->ent = malloc(cap * sizeof(*c->ent));
    c->ids = malloc(c->cap_ids * sizeof(*c->ids));
    if (!c->slot || !c->ent || !c->ids) {
        wc_free(c);
        return NULL;
    }
    return c;
}

static int bpe_word(void *ctx, const char *w, size_t n)
{
    struct enc *e = ctx;
    const struct eng_tok *t = e->t;
    struct wcache *c = e->wc;
    struct sym *sy;
    struct heap_ent *h;
    int32_t *dst;
    size_t k;
    uint64_t hw = 0, si = 0;

    if (n == 1) {
        uint32_t sid = t->byte_sid[(unsigned char)w[0]];
        if (sid < t->n_vocab)
            emit(e, (int32_t)sid);
        else if (t->byte_tok[(unsigned char)w[0]] >= 0)
            emit(e, t->byte_tok[(unsigned char)w[0]]);
        return 0;
    }
    if (c && n <= WC_MAX_WORD) {
        hw = hash_bytes(w, n);
        for (si = hw & c->mask;; si = (si + 1) & c->mask) {
            uint64_t v = c->slot[si];
            if (!v)
                break;
            if ((uint32_t)(v >> 32) == (uint32_t)(hw >> 32)) {
                const struct wc_ent *en = &c->ent[(uint32_t)v - 1];
                if (en->len == n && !memcmp(c->base + en->off, w, n)) {
                    for (uint32_t j = 0; j < en->n_ids; j++)
                        emit(e, c->ids[en->ids_off + j]);
                    return 0;
                }
            }
        }
    }
    if (t->ignore_merges) {
        int64_t sid = smap_find(t, w, n);
        if (sid >= 0 && sid < t->n_vocab) {
            emit(e, (int32_t)sid);
            return 0;   /* one lookup: not worth caching */
        }
    }
    if (n > INT32_MAX / 2)
        return -E2BIG;
    if (n <= BPE_SMALL && !eng_tok_test_no_small) {
        struct bsym *b = scratch(e, n * (sizeof(*b) + sizeof(*dst)));
        if (!b)
            return -ENOMEM;
        dst = (int32_t *)(b + n);
        k = bpe_merge_small(t, w, n, dst, b);
    } else {
        /* heap first: its entries need 8-byte alignment; then symbols, ids */
        h = scratch(e, n * (sizeof(*sy) + 3 * sizeof(*h) + sizeof(*dst)));
        if (!h)
            return -ENOMEM;
        sy = (struct sym *)(h + 3 * n);
        dst = (int32_t *)(sy + n);
        k = bpe_merge(e, w, n, dst, sy, h);
    }
    if (c && n <= WC_MAX_WORD && c->n_ent < c->cap_ent && c->n_ids + k <= c->cap_ids) {
        c->ent[c->n_ent] = (struct wc_ent){ .off = (uint32_t)(w - c->base), .len = (uint32_t)n,
                                            .ids_off = (uint32_t)c->n_ids, .n_ids = (uint32_t)k };
        memcpy(c->ids + c->n_ids, dst, k * sizeof(*dst));
        c->n_ids += k;
        c->slot[si] = (hw >> 32 << 32) | (uint64_t)(++c->n_ent);
    }
    for (size_t j = 0; j < k; j++)
        emit(e, dst[j]);
    return 0;
}

static int bpe_text(struct enc *e, const char *s, size_t n)
{
    size_t i = 0;
    int rc;

    while (i < n) {
        size_t v = eng_utf8_valid_prefix((const unsigned char *)s + i, n - i);
        if (v && (rc = eng_tok_pre_split(&e->t->pre, e->md, s + i, v, bpe_word, e)))
            return rc;
        i += v;
        if (i < n) {
            /* an invalid byte: a word of its own */
            if ((rc = bpe_word(e, s + i, 1)))
                return rc;
            i++;
        }
    }
    return 0;
}

/* ---- SentencePiece BPE on one fragment ---- */

static inline bool spm_pair_possible(const struct eng_tok *t, unsigned x, unsigned y)
{
    unsigned k = x << 8 | y;
    return t->spm_pair[k >> 3] >> (k & 7) & 1;
}

static int spm_text(struct enc *e, const char *s, size_t n, bool prefix)
{
    const struct eng_tok *t = e->t;
    size_t cap = 3 * (n + 1), m = 0, nsy = 0, nh = 0;
    char *txt;
    struct sym *sy;
    struct heap_ent *h;

    if (n > (SIZE_MAX / 64) || cap > INT32_MAX)
        return -E2BIG;
    txt = scratch(e, cap + cap * (sizeof(*sy) + 3 * sizeof(*h)) + 16);
    if (!txt)
        return -ENOMEM;
    /* text, then the heap (8-byte aligned, 3 entries per symbol), then symbols */
    h = (struct heap_ent *)(void *)(((uintptr_t)txt + cap + 15) & ~(uintptr_t)15);
    sy = (struct sym *)(h + 3 * cap);
    if (prefix) {
        memcpy(txt, "\xE2\x96\x81", 3);
        m = 3;
    }
    for (size_t i = 0; i < n; i++) {
        if (s[i] == ' ') {
            memcpy(txt + m, "\xE2\x96\x81", 3);
            m += 3;
        } else {
            txt[m++] = s[i];
        }
    }
    for (size_t off = 0; off < m;) {
        /* one character per symbol; an invalid byte is a symbol of its own
         * (llama.cpp trusts the lead byte, which can swallow the next
         * characters of invalid text; valid text is split identically) */
        size_t l = FAVO_MIN(eng_utf8_lead_len((unsigned char)txt[off]), m - off);
        if (l > 1 && eng_utf8_valid_prefix((const unsigned char *)txt + off, l) != l)
            l = 1;
        sy[nsy] = (struct sym){ .prev = (int32_t)nsy - 1, .next = off + l < m ? (int32_t)nsy + 1 : -1,
                                .start = (uint32_t)off, .len = (uint32_t)l };
        nsy++;
        off += l;
    }
#define SPM_PAIR(L, R)                                                                      \
    do {                                                                                    \
        int32_t l_ = (L), r_ = (R);                                                         \
        if (l_ >= 0 && r_ >= 0) {                                                           \
            uint32_t sz_ = sy[l_].len + sy[r_].len;                                         \
            int64_t id_ = smap_find(t, txt + sy[l_].start, sz_);                           \
            if (id_ >= 0) {                                                                 \
                /* higher score first: map the float to an order-reversed integer */       \
                float f_ = t->tok[id_].score;                                               \
                uint32_t u_;                                                                \
                memcpy(&u_, &f_, 4);                                                        \
                u_ = (u_ & 0x80000000u) ? ~u_ : (u_ | 0x80000000u);                         \
                heap_push(h, &nh, (struct heap_ent){ .key = (uint64_t)(~u_) << 32 | (uint32_t)l_, \
                                                     .right = r_, .a = sz_ });              \
            }                                                                               \
        }                                                                                   \
    } while (0)
    /*
     * Segments: no vocabulary token holds the byte pair (x, y) at a character
     * boundary when t->spm_pair says so, so no merge can ever join the
     * characters on either side of such a boundary. Merging each segment on
     * its own heap then gives exactly the global highest-score-first result
     * (merges in different segments never interact), with small heaps
     * instead of one the size of the text.
     */
    for (size_t a = 0; a < nsy;) {
        size_t b = a + 1;
        while (b < nsy && spm_pair_possible(t, (unsigned char)txt[sy[b].start - 1],
                                            (unsigned char)txt[sy[b].start]))
            b++;
        sy[a].prev = -1;
        sy[b - 1].next = -1;
        nh = 0;
        for (size_t i = a + 1; i < b; i++)
            SPM_PAIR((int32_t)i - 1, (int32_t)i);
        while (nh) {
            struct heap_ent top = heap_pop(h, &nh);
            int32_t l = (int32_t)(uint32_t)top.key, r = top.right;

            if (!sy[l].len || !sy[r].len || sy[l].len + sy[r].len != top.a || sy[l].next != r)
                continue;
            sy[l].len += sy[r].len;
            sy[r].len = 0;
            sy[l].next = sy[r].next;
            if (sy[r].next >= 0)
                sy[sy[r].next].prev = l;
            SPM_PAIR(sy[l].prev, l);
            SPM_PAIR(l, sy[l].next);
        }
        for (int32_t i = (int32_t)a; i >= 0; i = sy[i].next) {
            int64_t id = smap_find(t, txt + sy[i].start, sy[i].len);
            if (id >= 0) {
                emit(e, (int32_t)id);
            } else {
                for (uint32_t k = 0; k < sy[i].len; k++) {
                    int32_t bt = t->byte_tok[(unsigned char)txt[sy[i].start + k]];
                    if (bt >= 0)
                        emit(e, bt);
                }
            }
        }
        a = b;
    }
#undef SPM_PAIR
    return 0;
}

/* ---- special-token partition ---- */

struct cand {
    uint32_t prio, pos;
    int32_t tok;
};

static int cand_cmp(const void *a, const void *b)
{
    const struct cand *x = a, *y = b;
    if (x->prio != y->prio)
        return x->prio < y->prio ? -1 : 1;
    return x->pos < y->pos ? -1 : x->pos > y->pos;
}

static int acc_cmp(const void *a, const void *b)
{
    const struct cand *x = a, *y = b;
    return x->pos < y->pos ? -1 : x->pos > y->pos;
}

static int raw_run(struct enc *e, const char *s, size_t n, bool *prev_special)
{
    int rc;

    if (e->t->kind == ENG_TOK_SPM) {
        rc = spm_text(e, s, n, e->t->sp.add_space_prefix && *prev_special);
    } else {
        rc = bpe_text(e, s, n);
    }
    *prev_special = false;
    return rc;
}

static inline bool is_c_space(char c)
{
    return c == ' ' || (c >= '\t' && c <= '\r');
}

/* Does [p, p+l) overlap one of the sorted plain spans? */
static bool in_plain(const struct eng_tok_span *sp, size_t n, size_t p, size_t l)
{
    size_t lo = 0, hi = n;

    while (lo < hi) {   /* first span ending after p */
        size_t mid = (lo + hi) / 2;
        if (sp[mid].off + sp[mid].len <= p)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < n && sp[lo].off < p + l && sp[lo].len;
}

int64_t eng_tok_encode(const eng_tok_t *t, const char *text, size_t len, unsigned flags,
                       int32_t *ids, size_t max_ids)
{
    return eng_tok_encode_ex(t, text, len, flags, NULL, 0, ids, max_ids);
}

int64_t eng_tok_encode_ex(const eng_tok_t *t, const char *text, size_t len, unsigned flags,
                          const struct eng_tok_span *plain, size_t n_plain, int32_t *ids,
                          size_t max_ids)
{
    struct enc e = { .t = t, .ids = ids, .max = max_ids };
    struct cand *c = NULL, *acc = NULL;
    size_t nc = 0, capc = 0, na = 0;
    uint8_t *cov = NULL;
    bool prev_special = true;
    uint32_t mask = ENG_TOK_ATTR_USER_DEFINED;
    int rc = 0;

    bool parse = flags & ENG_TOK_PARSE_SPECIAL;

    if (parse)
        mask |= ENG_TOK_ATTR_CONTROL | ENG_TOK_ATTR_UNKNOWN;
    /* the thread's match block: no allocation per call; scrubbed below */
    if (t->kind == ENG_TOK_BPE && !(e.md = eng_tok_pre_md_thread()))
        return -ENOMEM;
    if (t->kind == ENG_TOK_BPE && len >= 2048)
        e.wc = wc_new(text, len);   /* optional: without it, every word is merged */
    if ((flags & ENG_TOK_ADD_SPECIAL) && t->sp.add_bos)
        emit(&e, t->sp.bos);

    /* candidates: every occurrence of every eligible special text */
    for (size_t p = 0; t->n_special && p < len; p++) {
        uint32_t node = t->root[(unsigned char)text[p]];
        size_t q = p;
        while (node) {
            int32_t tk = t->trie[node].tok;
            /* as llama.cpp: user-defined tokens always split the text; a
             * token that is also control or unknown only with PARSE_SPECIAL,
             * and never inside a plain span */
            uint32_t at = tk >= 0 ? t->tok[tk].attr : 0;
            bool ctl = at & (ENG_TOK_ATTR_CONTROL | ENG_TOK_ATTR_UNKNOWN);
            if (tk >= 0 && (at & mask) && (!ctl || (parse && (!n_plain ||
                !in_plain(plain, n_plain, p, t->tok[tk].text_len))))) {
                if (nc == capc) {
                    size_t ncap = capc ? capc * 2 : 64;
                    struct cand *nb = malloc(ncap * sizeof(*c));
                    if (!nb) {
                        rc = -ENOMEM;
                        goto out;
                    }
                    if (c) {
                        memcpy(nb, c, nc * sizeof(*c));
                        explicit_bzero(c, capc * sizeof(*c));
                        free(c);
                    }
                    c = nb;
                    capc = ncap;
                }
                c[nc++] = (struct cand){ .prio = t->prio[tk], .pos = (uint32_t)p, .tok = tk };
            }
            if (++q >= len)
                break;
            uint32_t ch = t->trie[node].child;
            while (ch && t->trie[ch].byte != (unsigned char)text[q])
                ch = t->trie[ch].sibling;
            node = ch;
        }
    }
    if (nc && len > UINT32_MAX) {
        rc = -E2BIG;
        goto out;
    }
    if (nc) {
        cov = calloc(len, 1);
        acc = malloc(nc * sizeof(*acc));
        if (!cov || !acc) {
            rc = -ENOMEM;
            goto out;
        }
        qsort(c, nc, sizeof(*c), cand_cmp);
        for (size_t i = 0; i < nc; i++) {
            const struct tok_entry *te = &t->tok[c[i].tok];
            size_t p = c[i].pos, l = te->text_len, k;
            for (k = 0; k < l && !cov[p + k]; k++)
                ;
            if (k < l)
                continue;
            memset(cov + p, 1, l);
            acc[na++] = c[i];
            if (te->attr & ENG_TOK_ATTR_LSTRIP)
                for (size_t q = p; q > 0 && !cov[q - 1] && is_c_space(text[q - 1]); q--)
                    cov[q - 1] = 2;
            if (te->attr & ENG_TOK_ATTR_RSTRIP)
                for (size_t q = p + l; q < len && !cov[q] && is_c_space(text[q]); q++)
                    cov[q] = 2;
        }
        qsort(acc, na, sizeof(*acc), acc_cmp);
    }
    {
        size_t pos = 0, ai = 0;
        while (pos < len) {
            if (!cov || !cov[pos]) {
                size_t q = pos;
                while (q < len && (!cov || !cov[q]))
                    q++;
                if ((rc = raw_run(&e, text + pos, q - pos, &prev_special)))
                    goto out;
                pos = q;
            } else if (ai < na && acc[ai].pos == pos) {
                emit(&e, acc[ai].tok);
                prev_special = true;
                pos += t->tok[acc[ai].tok].text_len;
                ai++;
            } else {
                pos++;   /* stripped whitespace */
            }
        }
    }
    if ((flags & ENG_TOK_ADD_SPECIAL) && t->sp.add_eos)
        emit(&e, t->sp.eos);
out:
    /* invariant 5 of ARCHITECTURE.md: nothing derived from the text
     * outlives the call, in freed heap or on the stack */
    if (c)
        explicit_bzero(c, capc * sizeof(*c));
    if (acc)
        explicit_bzero(acc, nc * sizeof(*acc));
    if (cov)
        explicit_bzero(cov, len);
    if (e.scratch)
        explicit_bzero(e.scratch, e.scratch_cap);
    free(c);
    free(acc);
    free(cov);
    free(e.scratch);
    wc_free(e.wc);
    if (t->kind == ENG_TOK_SPM) {
        stack_scrub_spm();
    } else if (eng_tok_pre_md_scrub(e.md)) {
        /* a match ran on the C stack (eng_tok_int.h): deep */
        __atomic_fetch_add(&eng_tok_test_deep, 1, __ATOMIC_RELAXED);
        stack_scrub();
    } else {
        stack_scrub_shallow();
    }
    if (rc)
        return rc;
    return (int64_t)e.n;
}
