/*
 * ing_openai.c - OpenAI request decoding over yajl's event parser, and the
 * OpenAI error body (design in ing_openai.h).
 *
 * How a string is found in place: yajl is given the whole body in one
 * yajl_parse call, so a string without escapes arrives as a pointer into
 * the body. A string with escapes arrives decoded in yajl's own buffer,
 * which we ignore: inside every callback yajl_get_bytes_consumed() is the
 * offset just past the current token, so the escaped string's closing
 * quote is at consumed - 1, and its opening quote is the first '"' after
 * the previous callback's position (only whitespace, ':' and ',' lie in
 * between). We decode that raw text ourselves, in place, because yajl
 * turns lone surrogates into '?' instead of refusing them.
 *
 * Containers: a small stack of the containers we understand (top object,
 * prompt / stop / messages / content arrays, message / part / stream
 * options objects); any other container value is skipped by counting its
 * depth.
 */
#include "ing_openai.h"

#include "favo_base.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yajl/yajl_parse.h>
#include <yajl/yajl_tree.h>

/* ---- per-call arena for yajl ---- */

#define ARENA_INLINE (16 * 1024)

struct arena {
    size_t used;
    size_t last;        /* offset of the last inline block's header */
    size_t high;        /* most of mem ever used: scrubbed at the end */
    _Alignas(16) uint8_t mem[ARENA_INLINE];
};

struct blk {            /* before every block */
    size_t size;
    size_t heap;        /* 1: malloc'd */
};

static struct blk *blk_of(void *p)
{
    return (struct blk *)((uint8_t *)p - sizeof(struct blk));
}

static void *ar_malloc(void *ctx, size_t sz)
{
    struct arena *a = ctx;
    size_t need = sizeof(struct blk) + ((sz + 15) & ~(size_t)15);
    struct blk *b;

    if (need <= ARENA_INLINE - a->used) {
        b = (struct blk *)(a->mem + a->used);
        b->heap = 0;
        a->last = a->used;
        a->used += need;
        a->high = FAVO_MAX(a->high, a->used);
    } else {
        b = malloc(sizeof(*b) + sz);
        FAVO_ASSERT(b);   /* yajl does not check its allocations */
        b->heap = 1;
    }
    b->size = sz;
    return b + 1;
}

static void ar_free(void *ctx, void *p)
{
    struct arena *a = ctx;
    struct blk *b;

    if (!p)
        return;
    b = blk_of(p);
    if (b->heap) {
        /* yajl's lexer and decode buffers hold request text (invariant 5) */
        explicit_bzero(b, sizeof(*b) + b->size);
        free(b);
    } else if ((uint8_t *)b == a->mem + a->last && a->used) {
        a->used = a->last;   /* the last inline block gives its room back */
    }
}

static void *ar_realloc(void *ctx, void *p, size_t sz)
{
    struct arena *a = ctx;
    struct blk *b;
    void *n;

    if (!p)
        return ar_malloc(ctx, sz);
    b = blk_of(p);
    if (b->heap) {
        /* not realloc: the old block must be scrubbed before it is freed */
        struct blk *nb = malloc(sizeof(*nb) + sz);

        FAVO_ASSERT(nb);
        nb->heap = 1;
        nb->size = sz;
        memcpy(nb + 1, b + 1, FAVO_MIN(b->size, sz));
        explicit_bzero(b, sizeof(*b) + b->size);
        free(b);
        return nb + 1;
    }
    if ((uint8_t *)b == a->mem + a->last) {   /* grow the last block in place */
        size_t need = sizeof(struct blk) + ((sz + 15) & ~(size_t)15);

        if (need <= ARENA_INLINE - a->last) {
            a->used = a->last + need;
            a->high = FAVO_MAX(a->high, a->used);
            b->size = sz;
            return p;
        }
    }
    n = ar_malloc(ctx, sz);
    memcpy(n, p, FAVO_MIN(b->size, sz));
    ar_free(ctx, p);
    return n;
}

/* Zero the stack just below the caller's frame, where the frames of the
 * calls it made (yajl and the callbacks below) lay. */
static __attribute__((noinline)) void stack_scrub(void)
{
    unsigned char pad[16 * 1024];

    explicit_bzero(pad, sizeof(pad));
    __asm__ volatile("" : : "r"(pad) : "memory");
}

void ing_oai_stack_scrub(void)
{
    stack_scrub();
}

/* ---- decoder state ---- */

enum st {
    ST_ROOT, ST_TOP, ST_PROMPT, ST_STOP, ST_MSGS, ST_MSG, ST_PARTS, ST_PART, ST_SOPTS,
};

enum key {
    K_NONE = 0, K_UNKNOWN,
    /* top level */
    K_MODEL, K_PROMPT, K_MESSAGES, K_MAX_TOKENS, K_MAX_COMPLETION_TOKENS, K_TEMPERATURE,
    K_TOP_P, K_TOP_K, K_MIN_P, K_N, K_STOP, K_STREAM, K_STREAM_OPTIONS, K_SEED,
    K_FREQUENCY_PENALTY, K_PRESENCE_PENALTY, K_LOGPROBS, K_TOP_LOGPROBS, K_USER,
    /* message, part, stream_options */
    K_ROLE, K_CONTENT, K_TYPE, K_TEXT, K_INCLUDE_USAGE,
    K_COUNT_
};

static const char *const key_name[K_COUNT_] = {
    [K_MODEL] = "model", [K_PROMPT] = "prompt", [K_MESSAGES] = "messages",
    [K_MAX_TOKENS] = "max_tokens", [K_MAX_COMPLETION_TOKENS] = "max_completion_tokens",
    [K_TEMPERATURE] = "temperature", [K_TOP_P] = "top_p", [K_TOP_K] = "top_k",
    [K_MIN_P] = "min_p", [K_N] = "n", [K_STOP] = "stop", [K_STREAM] = "stream",
    [K_STREAM_OPTIONS] = "stream_options", [K_SEED] = "seed",
    [K_FREQUENCY_PENALTY] = "frequency_penalty", [K_PRESENCE_PENALTY] = "presence_penalty",
    [K_LOGPROBS] = "logprobs", [K_TOP_LOGPROBS] = "top_logprobs", [K_USER] = "user",
    [K_ROLE] = "role", [K_CONTENT] = "content", [K_TYPE] = "type", [K_TEXT] = "text",
    [K_INCLUDE_USAGE] = "include_usage",
};

enum jt { J_NULL, J_BOOL, J_NUM, J_STR, J_MAP, J_ARR };

static const char *const jt_name[] = {
    [J_NULL] = "null", [J_BOOL] = "a boolean", [J_NUM] = "a number",
    [J_STR] = "a string", [J_MAP] = "an object", [J_ARR] = "an array",
};

/* One JSON value event. */
struct jv {
    enum jt t;
    bool b;
    bool is_int;            /* integral and exactly representable */
    bool overflow;          /* an integer literal beyond int64 */
    int64_t i;
    double d;
    const char *num;        /* raw number text, NUL-ended copy */
    const unsigned char *s; /* string as yajl gave it */
    size_t n;
};

struct ctx {
    yajl_handle h;
    uint8_t *buf;
    uint32_t base;          /* body offset in buf */
    uint32_t blen;
    size_t prev_end;        /* body-relative offset after the previous callback */
    struct ing_oai_req *q;
    struct ing_oai_err *e;
    uint32_t *tok;
    uint32_t tok_cap;
    int route;
    int depth;
    int skip;               /* > 0: inside an ignored container */
    int nst;
    uint8_t st[8];
    enum key key;           /* key whose value comes next (maps) */
    uint32_t seen_top;      /* bitmask of top-level keys seen */
    uint32_t seen_nested;   /* same for the current message / part / options */
    /* message being read */
    int msg_role;           /* -1 until given */
    bool msg_content;       /* content given (string, array or null) */
    bool msg_content_null;
    uint32_t msg_part0;
    /* part being read */
    struct ing_span part_type, part_text;
    bool part_has_type, part_has_text;
    uint32_t part_i;
    /* prompt array */
    uint32_t prompt_items;
    bool msgs_given;        /* "messages" was an array (null: not given) */
    bool failed;
};

/* ---- errors ---- */

__attribute__((format(printf, 4, 5)))
static int failf(struct ctx *c, const char *param, const char *code, const char *fmt, ...)
{
    va_list ap;

    if (c->failed)
        return 0;
    c->failed = true;
    c->e->status = 400;
    c->e->offset = (uint32_t)(c->h ? yajl_get_bytes_consumed(c->h) : 0);
    snprintf(c->e->param, sizeof(c->e->param), "%s", param ? param : "");
    snprintf(c->e->code, sizeof(c->e->code), "%s", code ? code : "");
    va_start(ap, fmt);
    vsnprintf(c->e->message, sizeof(c->e->message), fmt, ap);
    va_end(ap);
    return 0;   /* tells yajl to stop */
}

/* The name of the parameter being read, for messages: "temperature",
 * "messages[2].role", "messages[0].content[1].type". */
static const char *pname(struct ctx *c, char *out, size_t n)
{
    enum st s = c->nst ? c->st[c->nst - 1] : ST_ROOT;
    const char *k = c->key > K_UNKNOWN && c->key < K_COUNT_ ? key_name[c->key] : "?";

    switch (s) {
    case ST_MSG:
        snprintf(out, n, "messages[%u].%s", c->q->nmsg, k);
        break;
    case ST_PARTS:
        snprintf(out, n, "messages[%u].content[%u]", c->q->nmsg, c->part_i);
        break;
    case ST_PART:
        snprintf(out, n, "messages[%u].content[%u].%s", c->q->nmsg, c->part_i, k);
        break;
    case ST_MSGS:
        snprintf(out, n, "messages[%u]", c->q->nmsg);
        break;
    case ST_SOPTS:
        snprintf(out, n, "stream_options.%s", k);
        break;
    case ST_PROMPT:
        snprintf(out, n, "prompt");
        break;
    case ST_STOP:
        snprintf(out, n, "stop");
        break;
    default:
        snprintf(out, n, "%s", k);
        break;
    }
    return out;
}

static int type_err(struct ctx *c, const struct jv *v, const char *want)
{
    char p[64];

    pname(c, p, sizeof(p));
    return failf(c, p, "invalid_type", "'%s' must be %s, got %s", p, want, jt_name[v->t]);
}

/* ---- in-place string decoding ---- */

static int hex4(const uint8_t *p)
{
    int v = 0;

    for (int i = 0; i < 4; i++) {
        int c = p[i], d;

        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            d = c - 'A' + 10;
        else
            return -1;
        v = v << 4 | d;
    }
    return v;
}

static size_t put_utf8(uint8_t *w, uint32_t cp)
{
    if (cp < 0x80) {
        w[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        w[0] = (uint8_t)(0xC0 | cp >> 6);
        w[1] = (uint8_t)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        w[0] = (uint8_t)(0xE0 | cp >> 12);
        w[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        w[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    w[0] = (uint8_t)(0xF0 | cp >> 18);
    w[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
    w[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    w[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

/* Length of a valid UTF-8 sequence at p (n bytes left), 0 when invalid
 * (overlong, surrogate, above U+10FFFF, truncated). */
static size_t utf8_len(const uint8_t *p, size_t n)
{
    uint8_t c = p[0];

    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        return n >= 2 && (p[1] & 0xC0) == 0x80 ? 2 : 0;
    if (c >= 0xE0 && c <= 0xEF) {
        if (n < 3 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80)
            return 0;
        if ((c == 0xE0 && p[1] < 0xA0) || (c == 0xED && p[1] >= 0xA0))
            return 0;
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (n < 4 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80 || (p[3] & 0xC0) != 0x80)
            return 0;
        if ((c == 0xF0 && p[1] < 0x90) || (c == 0xF4 && p[1] >= 0x90))
            return 0;
        return 4;
    }
    return 0;
}

/*
 * Decode the JSON string text buf[a, b) (between the quotes) in place,
 * writing from a. Returns the decoded length, or -1 with the error filled.
 */
static long decode_in_place(struct ctx *c, uint32_t a, uint32_t b)
{
    uint8_t *s = c->buf;
    uint32_t p = a, w = a;
    char pn[64];

    while (p < b) {
        uint8_t ch = s[p];

        if (ch == '\\') {
            uint32_t cp;

            if (p + 1 >= b)
                goto bad_escape;
            switch (s[p + 1]) {
            case '"': cp = '"'; break;
            case '\\': cp = '\\'; break;
            case '/': cp = '/'; break;
            case 'b': cp = '\b'; break;
            case 'f': cp = '\f'; break;
            case 'n': cp = '\n'; break;
            case 'r': cp = '\r'; break;
            case 't': cp = '\t'; break;
            case 'u': {
                int h = p + 6 <= b ? hex4(s + p + 2) : -1;

                if (h < 0)
                    goto bad_escape;
                cp = (uint32_t)h;
                if (cp >= 0xDC00 && cp <= 0xDFFF)
                    goto lone;
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    int l = p + 12 <= b && s[p + 6] == '\\' && s[p + 7] == 'u'
                            ? hex4(s + p + 8) : -1;

                    if (l < 0xDC00 || l > 0xDFFF)
                        goto lone;
                    cp = 0x10000 + ((cp - 0xD800) << 10) + ((uint32_t)l - 0xDC00);
                    p += 6;
                }
                p += 4;   /* the 2 below make the 6 of \uXXXX */
                break;
            }
            default:
                goto bad_escape;
            }
            p += 2;
            /* w + len <= p: the escape was at least as long as its bytes */
            w += (uint32_t)put_utf8(s + w, cp);
            continue;
        }
        if (ch >= 0x20 && ch < 0x80) {   /* a run of plain ASCII moves at once */
            uint32_t e = p + 1;

            while (e < b && s[e] >= 0x20 && s[e] < 0x80 && s[e] != '\\')
                e++;
            if (w != p)
                memmove(s + w, s + p, e - p);
            w += e - p;
            p = e;
            continue;
        }
        if (ch < 0x20)
            return failf(c, pname(c, pn, sizeof(pn)), "invalid_value",
                         "control character in a string in '%s' at byte %u", pn,
                         p - c->base), -1;
        size_t n = utf8_len(s + p, b - p);
        if (!n)
            return failf(c, pname(c, pn, sizeof(pn)), "invalid_value",
                         "invalid UTF-8 in '%s' at byte %u", pn, p - c->base), -1;
        memmove(s + w, s + p, n);
        w += (uint32_t)n;
        p += (uint32_t)n;
    }
    return (long)(w - a);
lone:
    return failf(c, pname(c, pn, sizeof(pn)), "invalid_value",
                 "unpaired UTF-16 surrogate escape in '%s' at byte %u", pn, p - c->base), -1;
bad_escape:
    return failf(c, pname(c, pn, sizeof(pn)), "invalid_value",
                 "invalid escape in '%s' at byte %u", pn, p - c->base), -1;
}

/* The span of the string value being reported, decoded in place. */
static int string_span(struct ctx *c, const struct jv *v, struct ing_span *out)
{
    const uint8_t *body = c->buf + c->base;
    size_t end = yajl_get_bytes_consumed(c->h);   /* just past the closing quote */
    uint32_t a, b;
    long n;

    if (v->s >= body && v->s + v->n <= body + c->blen) {
        a = (uint32_t)(v->s - c->buf);      /* no escapes: yajl points at it */
        b = a + (uint32_t)v->n;
    } else {
        const uint8_t *q = memchr(body + c->prev_end, '"', end - c->prev_end);

        /* the raw token is [q, end): if yajl ever broke that promise we
         * refuse rather than decode the wrong bytes */
        if (!q || end < 2 || end > c->blen || body[end - 1] != '"' || q >= body + end - 1)
            return failf(c, NULL, "invalid_json", "internal: string at byte %zu not found", end);
        a = (uint32_t)(q + 1 - c->buf);
        b = c->base + (uint32_t)end - 1;
    }
    n = decode_in_place(c, a, b);
    if (n < 0)
        return -1;
    out->off = a;
    out->len = (uint32_t)n;
    return 0;
}

/* ---- numbers ---- */

static bool want_int(struct ctx *c, const struct jv *v, int64_t lo, int64_t hi, int64_t *out)
{
    char p[64];

    if (v->t != J_NUM) {
        type_err(c, v, "an integer");
        return false;
    }
    if (!v->is_int) {
        pname(c, p, sizeof(p));
        failf(c, p, "invalid_type", "'%s' must be an integer, got %s", p, v->num);
        return false;
    }
    if (v->overflow || v->i < lo || v->i > hi) {
        pname(c, p, sizeof(p));
        if (hi == INT64_MAX)
            failf(c, p, "invalid_value", "'%s' must be at least %lld, got %s", p, (long long)lo,
                  v->num);
        else
            failf(c, p, "invalid_value", "'%s' must be between %lld and %lld, got %s", p,
                  (long long)lo, (long long)hi, v->num);
        return false;
    }
    *out = v->i;
    return true;
}

/* lo_open: the range excludes lo ("top_p": (0, 1]). */
static bool want_num(struct ctx *c, const struct jv *v, double lo, double hi, bool lo_open,
                     double *out)
{
    char p[64];

    if (v->t != J_NUM) {
        type_err(c, v, "a number");
        return false;
    }
    if (v->d < lo || v->d > hi || (lo_open && v->d == lo)) {
        pname(c, p, sizeof(p));
        if (lo_open)
            failf(c, p, "invalid_value", "'%s' must be greater than %g and at most %g, got %s",
                  p, lo, hi, v->num);
        else
            failf(c, p, "invalid_value", "'%s' must be between %g and %g, got %s", p, lo, hi,
                  v->num);
        return false;
    }
    *out = v->d;
    return true;
}

/* ---- the state machine ---- */

static enum st cur(struct ctx *c)
{
    return c->nst ? c->st[c->nst - 1] : ST_ROOT;
}

static int push(struct ctx *c, enum st s)
{
    FAVO_ASSERT(c->nst < (int)sizeof(c->st));   /* our containers nest at most 5 deep */
    c->st[c->nst++] = (uint8_t)s;
    c->key = K_NONE;
    return 1;
}

static int skip_value(struct ctx *c, const struct jv *v)
{
    if (v->t == J_MAP || v->t == J_ARR)
        c->skip = 1;
    return 1;
}

static int stop_item(struct ctx *c, const struct jv *v)
{
    struct ing_oai_req *q = c->q;
    struct ing_span sp;

    if (v->t != J_STR)
        return failf(c, "stop", "invalid_type", "'stop' must be a string or an array of strings,"
                     " got an array holding %s", jt_name[v->t]);
    if (q->nstop == ING_OAI_MAX_STOP)
        return failf(c, "stop", "invalid_value", "'stop' may hold at most %d strings",
                     ING_OAI_MAX_STOP);
    if (string_span(c, v, &sp))
        return 0;
    if (!sp.len)
        return failf(c, "stop", "invalid_value", "'stop' strings must not be empty");
    if (sp.len > ING_OAI_MAX_STOP_BYTES)
        return failf(c, "stop", "invalid_value",
                     "'stop' strings may be at most %d bytes, got one of %u bytes",
                     ING_OAI_MAX_STOP_BYTES, sp.len);
    q->stop[q->nstop++] = sp;
    return 1;
}

static int top_value(struct ctx *c, const struct jv *v)
{
    struct ing_oai_req *q = c->q;
    enum key k = c->key;
    int64_t i;

    if (k == K_UNKNOWN || k == K_NONE)
        return skip_value(c, v);
    if (c->seen_top & (1u << k))
        return failf(c, key_name[k], "invalid_value", "'%s' is given more than once",
                     key_name[k]);
    c->seen_top |= 1u << k;
    if (v->t == J_NULL)
        return 1;   /* null: as if not given */
    switch (k) {
    case K_MODEL:
    case K_USER:
        if (v->t != J_STR)
            return type_err(c, v, "a string");
        if (string_span(c, v, k == K_MODEL ? &q->model : &q->user))
            return 0;
        q->set |= k == K_MODEL ? ING_OAI_SET_MODEL : ING_OAI_SET_USER;
        return 1;
    case K_PROMPT:
        if (v->t == J_STR) {
            if (string_span(c, v, &q->prompt))
                return 0;
            q->prompt_kind = ING_OAI_PROMPT_TEXT;
            return 1;
        }
        if (v->t == J_ARR)
            return push(c, ST_PROMPT);
        return type_err(c, v, "a string, an array of one string or an array of token ids");
    case K_MESSAGES:
        if (v->t != J_ARR)
            return type_err(c, v, "an array of messages");
        c->msgs_given = true;
        return push(c, ST_MSGS);
    case K_MAX_TOKENS:
    case K_MAX_COMPLETION_TOKENS:
        if (!want_int(c, v, 1, INT32_MAX, &i))
            return 0;
        /* max_completion_tokens is the newer name and wins */
        if (k == K_MAX_COMPLETION_TOKENS || !(c->seen_top & (1u << K_MAX_COMPLETION_TOKENS)) ||
            !q->max_tokens)
            q->max_tokens = (uint32_t)i;
        q->set |= ING_OAI_SET_MAX_TOKENS;
        return 1;
    case K_TEMPERATURE:
        if (!want_num(c, v, 0, 2, false, &q->temperature))
            return 0;
        q->set |= ING_OAI_SET_TEMPERATURE;
        return 1;
    case K_TOP_P:
        if (!want_num(c, v, 0, 1, true, &q->top_p))
            return 0;
        q->set |= ING_OAI_SET_TOP_P;
        return 1;
    case K_MIN_P:
        if (!want_num(c, v, 0, 1, false, &q->min_p))
            return 0;
        q->set |= ING_OAI_SET_MIN_P;
        return 1;
    case K_TOP_K:
        if (!want_int(c, v, -1, INT32_MAX, &i))
            return 0;
        q->top_k = (int32_t)i;
        q->set |= ING_OAI_SET_TOP_K;
        return 1;
    case K_FREQUENCY_PENALTY:
    case K_PRESENCE_PENALTY:
        if (!want_num(c, v, -2, 2, false,
                      k == K_FREQUENCY_PENALTY ? &q->frequency_penalty : &q->presence_penalty))
            return 0;
        q->set |= k == K_FREQUENCY_PENALTY ? ING_OAI_SET_FREQUENCY_PENALTY
                                           : ING_OAI_SET_PRESENCE_PENALTY;
        return 1;
    case K_N:
        if (v->t != J_NUM)
            return type_err(c, v, "an integer");
        if (!v->is_int || v->overflow || v->i != 1)
            return failf(c, "n", "unsupported_value",
                         "'n' must be 1 (favo returns one choice per request), got %s", v->num);
        return 1;
    case K_SEED:
        if (!want_int(c, v, INT64_MIN, INT64_MAX, &i))
            return 0;
        q->seed = i;
        q->set |= ING_OAI_SET_SEED;
        return 1;
    case K_STOP:
        q->set |= ING_OAI_SET_STOP;
        if (v->t == J_ARR)
            return push(c, ST_STOP);
        if (v->t != J_STR)
            return type_err(c, v, "a string or an array of up to 4 strings");
        return stop_item(c, v);
    case K_STREAM:
        if (v->t != J_BOOL)
            return type_err(c, v, "a boolean");
        q->stream = v->b;
        return 1;
    case K_STREAM_OPTIONS:
        if (v->t != J_MAP)
            return type_err(c, v, "an object");
        q->set |= ING_OAI_SET_STREAM_OPTIONS;
        c->seen_nested = 0;
        return push(c, ST_SOPTS);
    case K_LOGPROBS:
        if (c->route == ING_OAI_CHAT) {
            if (v->t != J_BOOL)
                return type_err(c, v, "a boolean");
            q->logprobs = v->b;
        } else {
            if (!want_int(c, v, 0, ING_OAI_MAX_LOGPROBS_COMPLETIONS, &i))
                return 0;
            q->logprobs = (uint8_t)i;
        }
        q->set |= ING_OAI_SET_LOGPROBS;
        return 1;
    case K_TOP_LOGPROBS:
        if (!want_int(c, v, 0, ING_OAI_MAX_TOP_LOGPROBS, &i))
            return 0;
        q->top_logprobs = (uint8_t)i;
        q->set |= ING_OAI_SET_TOP_LOGPROBS;
        return 1;
    default:
        return skip_value(c, v);
    }
}

static int prompt_item(struct ctx *c, const struct jv *v)
{
    struct ing_oai_req *q = c->q;

    c->prompt_items++;
    if (v->t == J_STR) {
        if (c->prompt_items > 1)
            return failf(c, "prompt", "unsupported_value",
                         "'prompt' must be one string: arrays of several prompts are not "
                         "supported");
        if (string_span(c, v, &q->prompt))
            return 0;
        q->prompt_kind = ING_OAI_PROMPT_TEXT;
        return 1;
    }
    if (v->t == J_NUM) {
        if (q->prompt_kind == ING_OAI_PROMPT_TEXT)
            return failf(c, "prompt", "invalid_type", "'prompt' mixes strings and token ids");
        if (!v->is_int || v->overflow || v->i < 0 || v->i > INT32_MAX)
            return failf(c, "prompt", "invalid_value",
                         "'prompt' token ids must be integers from 0 to %d, got %s", INT32_MAX,
                         v->num);
        if (q->prompt_ntok >= c->tok_cap)
            return failf(c, "prompt", "invalid_value", "'prompt' holds more than %u token ids",
                         c->tok_cap);
        c->tok[q->prompt_ntok++] = (uint32_t)v->i;
        q->prompt_kind = ING_OAI_PROMPT_TOKENS;
        return 1;
    }
    if (v->t == J_ARR)
        return failf(c, "prompt", "unsupported_value",
                     "'prompt' must be one prompt: arrays of several token-id prompts are not "
                     "supported");
    return type_err(c, v, "a string, an array of one string or an array of token ids");
}

static int add_part(struct ctx *c, struct ing_span sp)
{
    struct ing_oai_req *q = c->q;

    if (q->npart >= ING_OAI_MAX_PARTS)
        return failf(c, "messages", "invalid_value",
                     "'messages' hold more than %d content parts in all", ING_OAI_MAX_PARTS);
    q->part[q->npart++] = sp;
    return 1;
}

static bool str_is(const struct jv *v, const char *s)
{
    return v->n == strlen(s) && !memcmp(v->s, s, v->n);
}

static int msg_value(struct ctx *c, const struct jv *v)
{
    static const struct { const char *name; int role; } roles[] = {
        { "system", ING_OAI_SYSTEM }, { "developer", ING_OAI_SYSTEM },
        { "user", ING_OAI_USER }, { "assistant", ING_OAI_ASSISTANT },
    };
    char p[64];

    if (c->key == K_UNKNOWN || c->key == K_NONE)
        return skip_value(c, v);
    if (c->seen_nested & (1u << c->key))
        return failf(c, pname(c, p, sizeof(p)), "invalid_value", "'%s' is given more than once",
                     p);
    c->seen_nested |= 1u << c->key;
    if (c->key == K_ROLE) {
        if (v->t != J_STR)
            return type_err(c, v, "a string");
        for (size_t i = 0; i < FAVO_ARRAY_SIZE(roles); i++) {
            if (str_is(v, roles[i].name)) {
                c->msg_role = roles[i].role;
                return 1;
            }
        }
        pname(c, p, sizeof(p));
        if (str_is(v, "tool") || str_is(v, "function"))
            return failf(c, p, "unsupported_value",
                         "'%s': tool and function messages are not supported", p);
        return failf(c, p, "invalid_value",
                     "'%s' must be one of 'system', 'developer', 'user', 'assistant'", p);
    }
    /* K_CONTENT */
    c->msg_content = true;
    if (v->t == J_NULL) {
        c->msg_content_null = true;
        return 1;
    }
    if (v->t == J_STR) {
        struct ing_span sp;

        if (string_span(c, v, &sp))
            return 0;
        return add_part(c, sp);
    }
    if (v->t == J_ARR) {
        c->part_i = 0;
        return push(c, ST_PARTS);
    }
    return type_err(c, v, "a string or an array of content parts");
}

static int part_value(struct ctx *c, const struct jv *v)
{
    char p[64];

    if (c->key == K_UNKNOWN || c->key == K_NONE)
        return skip_value(c, v);
    if (c->seen_nested & (1u << c->key))
        return failf(c, pname(c, p, sizeof(p)), "invalid_value", "'%s' is given more than once",
                     p);
    c->seen_nested |= 1u << c->key;
    if (v->t != J_STR)
        return type_err(c, v, "a string");
    if (c->key == K_TYPE) {
        c->part_has_type = true;
        return !string_span(c, v, &c->part_type);
    }
    c->part_has_text = true;
    return !string_span(c, v, &c->part_text);
}

static int value(struct ctx *c, const struct jv *v)
{
    char p[64];

    if (c->skip) {
        if (v->t == J_MAP || v->t == J_ARR)
            c->skip++;
        return 1;
    }
    switch (cur(c)) {
    case ST_ROOT:
        if (v->t != J_MAP)
            return failf(c, NULL, "invalid_json",
                         "the request body must be a JSON object, got %s", jt_name[v->t]);
        return push(c, ST_TOP);
    case ST_TOP:
        return top_value(c, v);
    case ST_PROMPT:
        return prompt_item(c, v);
    case ST_STOP:
        if (v->t != J_STR)
            return failf(c, "stop", "invalid_type",
                         "'stop' must be a string or an array of strings, got an array holding %s",
                         jt_name[v->t]);
        return stop_item(c, v);
    case ST_MSGS:
        if (v->t != J_MAP) {
            pname(c, p, sizeof(p));
            return failf(c, p, "invalid_type", "'%s' must be an object, got %s", p,
                         jt_name[v->t]);
        }
        if (c->q->nmsg >= ING_OAI_MAX_MESSAGES)
            return failf(c, "messages", "invalid_value",
                         "'messages' may hold at most %d messages", ING_OAI_MAX_MESSAGES);
        c->msg_role = -1;
        c->msg_content = c->msg_content_null = false;
        c->msg_part0 = c->q->npart;
        c->seen_nested = 0;
        return push(c, ST_MSG);
    case ST_MSG:
        return msg_value(c, v);
    case ST_PARTS:
        if (v->t != J_MAP) {
            pname(c, p, sizeof(p));
            return failf(c, p, "invalid_type",
                         "'%s' must be a content part object like {\"type\": \"text\", "
                         "\"text\": \"...\"}, got %s", p, jt_name[v->t]);
        }
        c->part_has_type = c->part_has_text = false;
        c->seen_nested = 0;
        return push(c, ST_PART);
    case ST_PART:
        return part_value(c, v);
    case ST_SOPTS:
        if (c->key != K_INCLUDE_USAGE)
            return skip_value(c, v);
        if (c->seen_nested & (1u << K_INCLUDE_USAGE))
            return failf(c, "stream_options.include_usage", "invalid_value",
                         "'stream_options.include_usage' is given more than once");
        c->seen_nested |= 1u << K_INCLUDE_USAGE;
        if (v->t == J_NULL)
            return 1;
        if (v->t != J_BOOL)
            return type_err(c, v, "a boolean");
        c->q->include_usage = v->b;
        return 1;
    }
    return 1;
}

/* The end of a container we understand. */
static int end_container(struct ctx *c)
{
    struct ing_oai_req *q = c->q;
    enum st s = cur(c);
    char p[64], pp[96];

    FAVO_ASSERT(c->nst > 0);
    c->nst--;
    c->key = K_NONE;
    switch (s) {
    case ST_PROMPT:
        if (!c->prompt_items)
            return failf(c, "prompt", "invalid_value", "'prompt' must not be an empty array");
        return 1;
    case ST_PART:
        /* the name is only printed on error, but cheap next to yajl */
        if (!c->part_has_type || !c->part_has_text || c->part_type.len != 4 ||
            memcmp(c->buf + c->part_type.off, "text", 4))
            snprintf(p, sizeof(p), "messages[%u].content[%u]", q->nmsg, c->part_i);
        c->part_i++;
        /* back in the message: restore what it had seen */
        c->seen_nested = 1u << K_CONTENT | (c->msg_role >= 0 ? 1u << K_ROLE : 0);
        if (!c->part_has_type)
            return failf(c, p, "missing_required_parameter", "'%s.type' is required", p);
        if (c->part_type.len != 4 || memcmp(c->buf + c->part_type.off, "text", 4)) {
            /* the type name is client text: show at most 32 bytes of it */
            unsigned n = FAVO_MIN(c->part_type.len, 32u);

            snprintf(pp, sizeof(pp), "%s.type", p);
            return failf(c, pp, "unsupported_value",
                         "content part type '%.*s' is not supported (only 'text' is), in '%s'",
                         (int)n, (const char *)c->buf + c->part_type.off, pp);
        }
        if (!c->part_has_text)
            return failf(c, p, "missing_required_parameter", "'%s.text' is required", p);
        return add_part(c, c->part_text);
    case ST_MSG: {
        struct ing_oai_msg *m = &q->msg[q->nmsg];

        if (c->msg_role < 0 || !c->msg_content ||
            (c->msg_content_null && c->msg_role != ING_OAI_ASSISTANT)) {
            snprintf(p, sizeof(p), "messages[%u]", q->nmsg);
            return failf(c, p, "missing_required_parameter", "'%s.%s' is required", p,
                         c->msg_role < 0 ? "role" : "content");
        }
        m->role = (uint8_t)c->msg_role;
        m->first_part = (uint16_t)c->msg_part0;
        m->nparts = (uint16_t)(q->npart - c->msg_part0);
        q->nmsg++;
        return 1;
    }
    case ST_SOPTS:
        c->seen_nested = 0;
        return 1;
    default:
        return 1;
    }
}

/* ---- yajl callbacks ---- */

/* Every callback ends here: remember where yajl is, for string_span. */
static int cb_done(struct ctx *c, int rc)
{
    c->prev_end = yajl_get_bytes_consumed(c->h);
    return rc && !c->failed;
}

static int cb_null(void *x)
{
    struct ctx *c = x;
    struct jv v = { .t = J_NULL };

    return cb_done(c, value(c, &v));
}

static int cb_bool(void *x, int b)
{
    struct ctx *c = x;
    struct jv v = { .t = J_BOOL, .b = b != 0 };

    return cb_done(c, value(c, &v));
}

static int cb_number(void *x, const char *s, size_t n)
{
    struct ctx *c = x;
    struct jv v = { .t = J_NUM };
    char txt[64];
    char *end;

    if (c->skip)
        return cb_done(c, 1);
    if (n >= sizeof(txt))
        return cb_done(c, failf(c, NULL, "invalid_value",
                                "number too long (%zu characters) at byte %zu", n,
                                yajl_get_bytes_consumed(c->h)));
    memcpy(txt, s, n);
    txt[n] = 0;
    v.num = txt;
    v.d = strtod(txt, &end);
    if (!isfinite(v.d))
        v.d = v.d > 0 ? HUGE_VAL : -HUGE_VAL;   /* out of every range */
    if (!memchr(txt, '.', n) && !memchr(txt, 'e', n) && !memchr(txt, 'E', n)) {
        errno = 0;
        long long i = strtoll(txt, &end, 10);

        v.is_int = true;
        v.overflow = errno == ERANGE;
        v.i = i;
    } else if (v.d == floor(v.d) && fabs(v.d) <= 9007199254740992.0) {
        v.is_int = true;   /* 2.0 and 1e3 are integers too */
        v.i = (int64_t)v.d;
    }
    return cb_done(c, value(c, &v));
}

static int cb_string(void *x, const unsigned char *s, size_t n)
{
    struct ctx *c = x;
    struct jv v = { .t = J_STR, .s = s, .n = n };

    return cb_done(c, value(c, &v));
}

static int start_container(struct ctx *c, enum jt t)
{
    struct jv v = { .t = t };

    if (++c->depth > ING_OAI_MAX_DEPTH)
        return cb_done(c, failf(c, NULL, "invalid_json", "JSON nested deeper than %d at byte %zu",
                                ING_OAI_MAX_DEPTH, yajl_get_bytes_consumed(c->h)));
    return cb_done(c, value(c, &v));
}

static int cb_start_map(void *x)
{
    return start_container(x, J_MAP);
}

static int cb_start_array(void *x)
{
    return start_container(x, J_ARR);
}

static int cb_end(void *x)
{
    struct ctx *c = x;

    c->depth--;
    if (c->skip) {
        c->skip--;
        return cb_done(c, 1);
    }
    return cb_done(c, end_container(c));
}

static const struct { const char *name; enum key k; uint8_t where; uint8_t len; } keys[] = {
    { "model", K_MODEL, ST_TOP, 5 }, { "prompt", K_PROMPT, ST_TOP, 6 },
    { "messages", K_MESSAGES, ST_TOP, 8 }, { "max_tokens", K_MAX_TOKENS, ST_TOP, 10 },
    { "max_completion_tokens", K_MAX_COMPLETION_TOKENS, ST_TOP, 21 },
    { "temperature", K_TEMPERATURE, ST_TOP, 11 }, { "top_p", K_TOP_P, ST_TOP, 5 },
    { "top_k", K_TOP_K, ST_TOP, 5 }, { "min_p", K_MIN_P, ST_TOP, 5 }, { "n", K_N, ST_TOP, 1 },
    { "stop", K_STOP, ST_TOP, 4 }, { "stream", K_STREAM, ST_TOP, 6 },
    { "stream_options", K_STREAM_OPTIONS, ST_TOP, 14 }, { "seed", K_SEED, ST_TOP, 4 },
    { "frequency_penalty", K_FREQUENCY_PENALTY, ST_TOP, 17 },
    { "presence_penalty", K_PRESENCE_PENALTY, ST_TOP, 16 }, { "logprobs", K_LOGPROBS, ST_TOP, 8 },
    { "top_logprobs", K_TOP_LOGPROBS, ST_TOP, 12 }, { "user", K_USER, ST_TOP, 4 },
    { "role", K_ROLE, ST_MSG, 4 }, { "content", K_CONTENT, ST_MSG, 7 },
    { "type", K_TYPE, ST_PART, 4 }, { "text", K_TEXT, ST_PART, 4 },
    { "include_usage", K_INCLUDE_USAGE, ST_SOPTS, 13 },
};

static int cb_map_key(void *x, const unsigned char *s, size_t n)
{
    struct ctx *c = x;
    enum st where = cur(c);

    if (c->skip)
        return cb_done(c, 1);
    c->key = K_UNKNOWN;
    for (size_t i = 0; i < FAVO_ARRAY_SIZE(keys); i++) {
        if (keys[i].len == n && keys[i].where == where && !memcmp(keys[i].name, s, n)) {
            c->key = keys[i].k;
            break;
        }
    }
    /* each route knows only its own input field */
    if ((c->key == K_PROMPT && c->route != ING_OAI_COMPLETIONS) ||
        (c->key == K_MESSAGES && c->route != ING_OAI_CHAT))
        c->key = K_UNKNOWN;
    return cb_done(c, 1);
}

static const yajl_callbacks callbacks = {
    .yajl_null = cb_null,
    .yajl_boolean = cb_bool,
    .yajl_number = cb_number,
    .yajl_string = cb_string,
    .yajl_start_map = cb_start_map,
    .yajl_map_key = cb_map_key,
    .yajl_end_map = cb_end,
    .yajl_start_array = cb_start_array,
    .yajl_end_array = cb_end,
};

/* Checks that need the whole request. */
static int final_checks(struct ctx *c)
{
    struct ing_oai_req *q = c->q;

    if (c->route == ING_OAI_COMPLETIONS && q->prompt_kind == ING_OAI_PROMPT_NONE)
        return failf(c, "prompt", "missing_required_parameter", "'prompt' is required");
    if (c->route == ING_OAI_CHAT && !c->msgs_given)
        return failf(c, "messages", "missing_required_parameter", "'messages' is required");
    if (c->route == ING_OAI_CHAT && !q->nmsg)
        return failf(c, "messages", "invalid_value",
                     "'messages' must hold at least one message");
    if ((q->set & ING_OAI_SET_STREAM_OPTIONS) && !q->stream)
        return failf(c, "stream_options", "invalid_value",
                     "'stream_options' is only allowed when 'stream' is true");
    if (c->route == ING_OAI_CHAT && q->top_logprobs && !q->logprobs)
        return failf(c, "top_logprobs", "invalid_value",
                     "'top_logprobs' requires 'logprobs' to be true");
    return 1;
}

int ing_oai_decode(struct ing_oai_req *req, int route, uint8_t *buf, struct ing_span body,
                   uint32_t *tokens, uint32_t tok_cap, struct ing_oai_err *err)
{
    struct arena arena, *ar = &arena;   /* 16 KiB of stack: no malloc for typical bodies */
    struct ctx c = { 0 };
    yajl_alloc_funcs af;
    yajl_status st;

    memset(req, 0, offsetof(struct ing_oai_req, msg));
    memset(err, 0, sizeof(*err));
    req->route = (uint8_t)route;
    req->temperature = 1.0;
    req->top_p = 1.0;
    if (route != ING_OAI_COMPLETIONS && route != ING_OAI_CHAT) {   /* caller bug */
        err->status = 500;
        snprintf(err->message, sizeof(err->message), "internal error: unknown route %d", route);
        return -EINVAL;
    }
    ar->used = ar->last = ar->high = 0;
    af = (yajl_alloc_funcs){ .malloc = ar_malloc, .realloc = ar_realloc, .free = ar_free,
                             .ctx = ar };
    c.buf = buf;
    c.base = body.off;
    c.blen = body.len;
    c.q = req;
    c.e = err;
    c.tok = tokens;
    c.tok_cap = tokens ? tok_cap : 0;
    c.route = route;
    c.h = yajl_alloc(&callbacks, &af, &c);
    FAVO_ASSERT(c.h);

    uint32_t ws = 0;
    while (ws < body.len && (buf[body.off + ws] == ' ' || buf[body.off + ws] == '\t' ||
                             buf[body.off + ws] == '\r' || buf[body.off + ws] == '\n'))
        ws++;
    if (ws == body.len) {
        failf(&c, NULL, "invalid_json", "the request body is empty: a JSON object is required");
        goto out;
    }
    st = yajl_parse(c.h, buf + body.off, body.len);
    if (st == yajl_status_ok)
        st = yajl_complete_parse(c.h);
    if (st == yajl_status_error && !c.failed) {
        unsigned char *m = yajl_get_error(c.h, 0, buf + body.off, body.len);
        char *s = (char *)m, *nl;
        size_t off = FAVO_MIN(yajl_get_bytes_consumed(c.h), (size_t)body.len);

        if (s && (nl = strchr(s, '\n')))
            *nl = 0;
        failf(&c, NULL, "invalid_json", "invalid JSON at byte %zu: %s", off,
              s && *s ? s : "syntax error");
        err->offset = (uint32_t)off;
        yajl_free_error(c.h, m);
    }
    if (!c.failed)
        final_checks(&c);
out:
    yajl_free(c.h);
    /* invariant 5: the arena (yajl's lexer buffer: a string cut by the end
     * of the body, a string with escapes) and the frames of the callbacks
     * (a number's text) hold request bytes; nothing of them may outlive
     * the call */
    explicit_bzero(ar->mem, ar->high);
    stack_scrub();
    return c.failed ? -EINVAL : 0;
}

/* ---- error bodies ---- */

const char *ing_oai_error_type(int status)
{
    switch (status) {
    case 401: return "authentication_error";
    case 403: return "permission_error";
    case 429: return "requests";
    default: return status >= 500 ? "server_error" : "invalid_request_error";
    }
}

struct wbuf {
    char *p;
    size_t cap, n;
};

static void w_raw(struct wbuf *w, const char *s, size_t n)
{
    if (w->n + n < w->cap)
        memcpy(w->p + w->n, s, n);
    w->n += n;
}

static void w_str(struct wbuf *w, const char *s)
{
    const uint8_t *p = (const uint8_t *)s;
    size_t n = strlen(s), i = 0;

    w_raw(w, "\"", 1);
    while (i < n) {
        uint8_t ch = p[i];
        char esc[8];
        size_t l;

        if (ch == '"' || ch == '\\') {
            esc[0] = '\\';
            esc[1] = (char)ch;
            w_raw(w, esc, 2);
            i++;
        } else if (ch < 0x20 || ch == 0x7f) {
            snprintf(esc, sizeof(esc), "\\u%04x", ch);
            w_raw(w, esc, 6);
            i++;
        } else if ((l = utf8_len(p + i, n - i)) == 0) {
            w_raw(w, "\\ufffd", 6);   /* keep the body valid JSON */
            i++;
        } else {
            w_raw(w, (const char *)p + i, l);
            i += l;
        }
    }
    w_raw(w, "\"", 1);
}

int ing_oai_error_body(char *out, size_t cap, int status, const char *type, const char *message,
                       const char *param, const char *code)
{
    struct wbuf w = { out, cap, 0 };

    if (!type)
        type = ing_oai_error_type(status);
    if (status == 429 && (!code || !*code))
        code = "rate_limit_exceeded";
    w_raw(&w, "{\"error\":{\"message\":", 20);
    w_str(&w, message ? message : "");
    w_raw(&w, ",\"type\":", 8);
    w_str(&w, type);
    w_raw(&w, ",\"param\":", 9);
    if (param && *param)
        w_str(&w, param);
    else
        w_raw(&w, "null", 4);
    w_raw(&w, ",\"code\":", 8);
    if (code && *code)
        w_str(&w, code);
    else
        w_raw(&w, "null", 4);
    w_raw(&w, "}}", 2);
    if (w.n >= cap) {
        if (cap)
            out[0] = 0;
        return -ENOSPC;
    }
    out[w.n] = 0;
    return (int)w.n;
}

int ing_oai_err_body(char *out, size_t cap, const struct ing_oai_err *e)
{
    return ing_oai_error_body(out, cap, e->status ? e->status : 400, NULL, e->message, e->param,
                              e->code);
}

/* ---- scrubbing yajl_tree_free ---- */

/* Recursive as yajl_tree_free itself is: no deeper than it goes next. */
static void tree_scrub(yajl_val v)
{
    if (!v)
        return;
    switch (v->type) {
    case yajl_t_string:
        if (v->u.string)
            explicit_bzero(v->u.string, strlen(v->u.string));
        break;
    case yajl_t_number:
        if (v->u.number.r)
            explicit_bzero(v->u.number.r, strlen(v->u.number.r));
        v->u.number.i = 0;
        v->u.number.d = 0;
        break;
    case yajl_t_object:
        for (size_t i = 0; i < v->u.object.len; i++) {
            if (v->u.object.keys[i])
                explicit_bzero((char *)v->u.object.keys[i], strlen(v->u.object.keys[i]));
            tree_scrub(v->u.object.values[i]);
        }
        break;
    case yajl_t_array:
        for (size_t i = 0; i < v->u.array.len; i++)
            tree_scrub(v->u.array.values[i]);
        break;
    default:
        break;
    }
}

void ing_oai_tree_free(struct yajl_val_s *v)
{
    if (!v)
        return;
    tree_scrub(v);
    yajl_tree_free(v);
}
