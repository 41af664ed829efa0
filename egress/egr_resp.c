/*
 * egr_resp.c - the per-response state machine: token events -> eng_detok
 * -> OpenAI SSE events or one JSON body, in the caller's area (egr.h).
 *
 * Streaming events are formatted in place EGR_CHUNK_PAD bytes past the
 * pending bytes and then framed by egr_chunk, so each event is written
 * once and moved once. Non-streaming text is kept escaped at the front of
 * the area; at the end the head and the JSON around it are put in place
 * with one memmove (only then is Content-Length known).
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "egr.h"
#include "favo_buf.h"
#include "favo_base.h"

enum { ST_BODY = 1, ST_DONE = 2 };

/* Bytes of JSON around one event's text, beyond id/model/fingerprint. */
#define EV_OVERHEAD 320
/* Non-stream: the largest head + JSON around the text. */
#define FIN_RESERVE 2048
/* Raw text of one detok call. */
#define RAW_MAX 2048
/* One token's rendered logprobs (the sampled token and 20 alternatives). */
#define LP_MAX 32768

static const char *fin_name(int f) { return f == EGR_FIN_LENGTH ? "\"length\"" : "\"stop\""; }

/* {"id":..,"object":..,"created":..,"model":..,"system_fingerprint":.., */
static void put_prefix(struct favo_buf *w, const struct egr_resp *r, const char *object)
{
    favo_put_z(w, "{\"id\":\"");
    favo_put_z(w, r->id);
    favo_put_z(w, "\",\"object\":\"");
    favo_put_z(w, object);
    favo_put_z(w, "\",\"created\":");
    favo_put_u(w, r->created, 1);
    favo_put_z(w, ",\"model\":\"");
    favo_put_z(w, r->model);
    favo_put_z(w, "\",\"system_fingerprint\":\"");
    favo_put_z(w, r->fp);
    favo_put_z(w, "\",");
}

static void put_usage(struct favo_buf *w, const struct egr_resp *r)
{
    favo_put_z(w, "\"usage\":{\"prompt_tokens\":");
    favo_put_u(w, r->prompt_tokens, 1);
    favo_put_z(w, ",\"completion_tokens\":");
    favo_put_u(w, r->completion_tokens, 1);
    favo_put_z(w, ",\"total_tokens\":");
    favo_put_u(w, (uint64_t)r->prompt_tokens + r->completion_tokens, 1);
    favo_put_z(w, "}");
}

enum ev_kind { EV_ROLE, EV_TEXT, EV_FINAL, EV_USAGE, EV_DONE };

/* Write one SSE event, chunk-framed, at area[pending). */
static int emit(struct egr_resp *r, char *area, size_t cap, enum ev_kind k, const char *text,
                size_t len, const char *lpjs, size_t lplen)
{
    size_t base = r->pending;
    struct favo_buf w;
    int n;

    if (cap - base < EGR_CHUNK_PAD + 8)
        return -EAGAIN;
    w = (struct favo_buf){area + base + EGR_CHUNK_PAD, cap - base - EGR_CHUNK_PAD, 0, 0};
    favo_put_z(&w, "data: ");
    if (k == EV_DONE) {
        favo_put_z(&w, "[DONE]");
    } else {
        bool chat = r->route == EGR_CHAT;

        put_prefix(&w, r, chat ? "chat.completion.chunk" : "text_completion");
        if (k == EV_USAGE) {
            favo_put_z(&w, "\"choices\":[],");
            put_usage(&w, r);
        } else {
            if (chat) {
                favo_put_z(&w, "\"choices\":[{\"index\":0,\"delta\":");
                if (k == EV_ROLE)
                    favo_put_z(&w, "{\"role\":\"assistant\",\"content\":\"\"}");
                else if (k == EV_TEXT) {
                    favo_put_z(&w, "{\"content\":\"");
                    egr_put_js(&w, text, len);
                    favo_put_z(&w, "\"}");
                } else
                    favo_put_z(&w, "{}");
                favo_put_z(&w, ",\"logprobs\":");
            } else {
                favo_put_z(&w, "\"choices\":[{\"text\":\"");
                egr_put_js(&w, text, len);
                favo_put_z(&w, "\",\"index\":0,\"logprobs\":");
            }
            if (lpjs)
                favo_put(&w, lpjs, lplen);
            else
                favo_put_z(&w, "null");
            favo_put_z(&w, ",\"finish_reason\":");
            favo_put_z(&w, k == EV_FINAL ? fin_name(r->finish) : "null");
            favo_put_z(&w, "}]");
            if (r->include_usage)
                favo_put_z(&w, ",\"usage\":null");
        }
        favo_put_z(&w, "}");
    }
    favo_put_z(&w, "\n\n");
    if (w.err)
        return -EAGAIN;
    n = egr_chunk(area + base, cap - base, w.p, w.n);
    if (n < 0)
        return -EAGAIN;
    r->pending += (uint32_t)n;
    return 0;
}

static int copy_str(char *dst, size_t cap, const char *s, bool escape)
{
    int n;

    if (!s)
        s = "";
    if (escape) {
        n = egr_json_str(dst, cap - 1, s, strlen(s));
        if (n < 0)
            return -EINVAL;
    } else {
        n = (int)strlen(s);
        if ((size_t)n >= cap)
            return -EINVAL;
        memcpy(dst, s, (size_t)n);
    }
    dst[n] = '\0';
    return n;
}

int egr_resp_init(struct egr_resp *r, const struct egr_resp_cfg *cfg, char *area, size_t cap)
{
    int rc;

    memset(r, 0, sizeof(*r));
    if (cfg->route != EGR_CHAT && cfg->route != EGR_COMPLETIONS)
        return -EINVAL;
    if (cap > UINT32_MAX)
        cap = UINT32_MAX;
    r->route = cfg->route;
    r->stream = !!cfg->stream;
    r->include_usage = cfg->stream && cfg->include_usage;
    r->keep_alive = !!cfg->keep_alive;
    r->max_tokens = cfg->max_tokens;
    r->prompt_tokens = cfg->prompt_tokens;
    r->created = cfg->created;
    r->logprobs = !!cfg->logprobs;
    r->top_logprobs = cfg->logprobs ? cfg->top_logprobs : 0;
    if (r->top_logprobs > EGR_TOP_MAX)
        return -EINVAL;
    if (copy_str(r->id, sizeof(r->id), cfg->id, true) < 0 ||
        copy_str(r->model, sizeof(r->model), cfg->model, true) < 0 ||
        copy_str(r->fp, sizeof(r->fp), cfg->fingerprint, true) < 0 ||
        copy_str(r->request_id, sizeof(r->request_id), cfg->request_id, false) < 0 ||
        strpbrk(r->request_id, "\r\n"))
        return -EINVAL;
    rc = copy_str(r->head_extra, sizeof(r->head_extra), cfg->extra_head, false);
    if (rc < 0)
        return -EINVAL;
    r->head_extra_len = (uint32_t)rc;
    rc = eng_detok_init(&r->detok, cfg->detok_flags, cfg->stops, cfg->stop_lens, cfg->n_stops);
    if (rc < 0)
        return rc;
    r->state = ST_BODY;
    r->magic = EGR_RESP_MAGIC;

    /* check the head now: finish_body asserts that it renders */
    char scratch[512];
    struct egr_head h = {.status = 200, .stream = r->stream, .keep_alive = r->keep_alive,
                         .content_length = UINT32_MAX, .request_id = r->request_id,
                         .extra = r->head_extra};
    rc = egr_head(scratch, sizeof(scratch), &h);
    if (rc < 0) {
        r->magic = 0;
        return -EINVAL;
    }
    if (!r->stream)
        return 0;
    rc = egr_head(area, cap, &h);
    if (rc < 0)
        return rc;
    r->pending = (uint32_t)rc;
    if (r->route == EGR_CHAT && emit(r, area, cap, EV_ROLE, NULL, 0, NULL, 0) < 0)
        return -ENOSPC;
    return (int)r->pending;
}

size_t egr_resp_need(const struct egr_resp *r, size_t text_max)
{
    size_t ev = EV_OVERHEAD + EGR_CHUNK_PAD + strlen(r->id) + strlen(r->model) + strlen(r->fp);

    /* text (escaped: at most 6 bytes per input byte) + final text, final,
     * usage, [DONE] events and the last chunk. */
    return 6 * (text_max + ENG_DETOK_STOP_MAX + 8) + 4 * ev + 16 + (r->logprobs ? LP_MAX : 0);
}

/* Non-stream logprobs: one binary record per token at the END of the
 * area, record i at cap - (i + 1) * lp_recsz: id, logprob, text offset
 * (characters), number of alternatives, then (id, logprob) pairs. Text
 * grows from the front; the JSON is rendered from the records at the end
 * (finish_body), when the tokenizer is at hand and the sizes are known. */
static size_t lp_recsz(const struct egr_resp *r) { return 16 + 8 * (size_t)r->top_logprobs; }
static size_t lp_bin(const struct egr_resp *r) { return (size_t)r->lp_n * lp_recsz(r); }

/* Non-stream: append escaped text at area[text_len). */
static int keep_text(struct egr_resp *r, char *area, size_t cap, const char *s, size_t len)
{
    size_t lim = cap - FIN_RESERVE - lp_bin(r);
    int n;

    if (cap < 2 * FIN_RESERVE + lp_bin(r) || r->text_len > lim)
        return -ENOBUFS;
    n = egr_json_str(area + r->text_len, lim - r->text_len, s, len);
    if (n < 0)
        return -ENOBUFS;
    r->text_len += (uint32_t)n;
    return 0;
}

static int put_text(struct egr_resp *r, char *area, size_t cap, const char *s, size_t len)
{
    if (len == 0)
        return 0;
    r->text_off += (uint32_t)len;
    if (!r->stream)
        return keep_text(r, area, cap, s, len);
    return emit(r, area, cap, EV_TEXT, s, len, NULL, 0);
}

static int put_tok(struct favo_buf *w, const eng_tok_t *tok, int32_t id, float lp);
static void put_num(struct favo_buf *w, float v);
static int render_body_lp(const struct egr_resp *r, const eng_tok_t *tok, const char *area,
                          size_t cap, struct favo_buf *w);

/* Non-stream end: head + {.. "content":" + text + "}, "logprobs": + the
 * logprobs rendered from the records (or null) + ..} in place. The
 * logprobs are rendered first, past the text and room for what goes
 * before it, then everything is moved into place. */
static int finish_body(struct egr_resp *r, const eng_tok_t *tok, char *area, size_t cap)
{
    char pre[1024], mid[128], suf[512], head[512];
    struct favo_buf wp = {pre, sizeof(pre), 0, 0}, wm = {mid, sizeof(mid), 0, 0},
             ws = {suf, sizeof(suf), 0, 0};
    bool chat = r->route == EGR_CHAT, lp = r->logprobs;
    size_t t = r->text_len, l = 0, lp_at = t + sizeof(pre) + sizeof(mid) + sizeof(head);
    int hn, rc;

    put_prefix(&wp, r, chat ? "chat.completion" : "text_completion");
    if (chat) {
        favo_put_z(&wp, "\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"");
        favo_put_z(&wm, lp ? "\"},\"logprobs\":" : "\"},\"logprobs\":null");
    } else {
        favo_put_z(&wp, "\"choices\":[{\"text\":\"");
        favo_put_z(&wm, lp ? "\",\"index\":0,\"logprobs\":" : "\",\"index\":0,\"logprobs\":null");
    }
    if (lp) {
        struct favo_buf wl;

        if (r->lp_n && !tok)
            return -EINVAL; /* egr_resp_finish without the tokenizer (egr.h) */
        if (lp_at + lp_bin(r) > cap)
            return -ENOBUFS;
        wl = (struct favo_buf){area + lp_at, cap - lp_bin(r) - lp_at, 0, 0};
        rc = render_body_lp(r, tok, area, cap, &wl);
        if (rc < 0)
            return rc == -E2BIG ? -ENOBUFS : rc;
        l = wl.n;
    }
    favo_put_z(&ws, ",\"finish_reason\":");
    favo_put_z(&ws, fin_name(r->finish));
    favo_put_z(&ws, "}],");
    put_usage(&ws, r);
    favo_put_z(&ws, "}");
    FAVO_ASSERT(!wp.err && !wm.err && !ws.err);   /* sizes bounded by EGR_*_MAX */

    size_t body = wp.n + t + wm.n + l + ws.n;
    struct egr_head h = {.status = 200, .stream = 0, .keep_alive = r->keep_alive,
                         .content_length = body, .request_id = r->request_id,
                         .extra = r->head_extra};
    hn = egr_head(head, sizeof(head), &h);
    FAVO_ASSERT(hn > 0);
    size_t hp = (size_t)hn + wp.n;
    if (hp + body - wp.n > cap)
        return -ENOBUFS;
    /* logprobs first: their place (left of lp_at: hp + wm.n < lp_at - t)
     * is past the text's, and the text's source [0, t) lies before both
     * destinations */
    memmove(area + hp + t + wm.n, area + lp_at, l);
    memmove(area + hp, area, t);
    memcpy(area, head, (size_t)hn);
    memcpy(area + hn, pre, wp.n);
    memcpy(area + hp + t, mid, wm.n);
    memcpy(area + hp + t + wm.n + l, suf, ws.n);
    r->pending = (uint32_t)(hp + t + wm.n + l + ws.n);
    return 0;
}

/* Flushes what detok holds (unless a stop ended it) and writes the end. */
static int finish(struct egr_resp *r, const eng_tok_t *tok, char *area, size_t cap, int reason,
                  bool stopped)
{
    char raw[ENG_DETOK_STOP_MAX + 8];
    size_t n = 0;
    int rc;

    r->finish = (uint8_t)reason;
    if (!stopped) {
        rc = eng_detok_flush(&r->detok, raw, sizeof(raw), &n);
        if (rc < 0)
            return rc;
        rc = put_text(r, area, cap, raw, n);
        explicit_bzero(raw, n); /* invariant 5 */
        FAVO_ASSERT(!r->stream || rc != -EAGAIN);   /* invariant 1 */
        if (rc < 0)
            return rc;
    }
    r->state = ST_DONE;
    if (!r->stream)
        return finish_body(r, tok, area, cap);
    /* invariant 1: the caller checked egr_resp_need before any state
     * changed, which covers every event below; a failure here is a bug in
     * that bound, and going on would send a truncated stream */
    FAVO_ASSERT(emit(r, area, cap, EV_FINAL, NULL, 0, NULL, 0) == 0);
    if (r->include_usage)
        FAVO_ASSERT(emit(r, area, cap, EV_USAGE, NULL, 0, NULL, 0) == 0);
    FAVO_ASSERT(emit(r, area, cap, EV_DONE, NULL, 0, NULL, 0) == 0);
    FAVO_ASSERT(cap - r->pending >= 5);
    r->pending += (uint32_t)egr_chunk_end(area + r->pending, cap - r->pending);
    return 0;
}

static void put_num(struct favo_buf *w, float v)
{
    char b[32];
    int n = snprintf(b, sizeof(b), "%.9g", !isfinite(v) ? -9999.0 : v == 0 ? 0.0 : (double)v);

    favo_put(w, b, (size_t)n);
}

static void put_bytes(struct favo_buf *w, const char *p, size_t n)
{
    favo_put_z(w, "[");
    for (size_t i = 0; i < n; i++) {
        if (i)
            favo_put_z(w, ",");
        favo_put_u(w, (unsigned char)p[i], 1);
    }
    favo_put_z(w, "]");
}

/* {"token":..,"logprob":..,"bytes":[..]} without the closing brace. */
static int put_tok(struct favo_buf *w, const eng_tok_t *tok, int32_t id, float lp)
{
    const char *p;
    size_t n;

    if (id < 0 || (uint32_t)id >= eng_tok_n_vocab(tok) ||
        eng_tok_piece(tok, id, ENG_TOK_SHOW_SPECIAL, &p, &n) < 0)
        return -EINVAL;
    favo_put_z(w, "{\"token\":\"");
    egr_put_js(w, p, n);
    favo_put_z(w, "\",\"logprob\":");
    put_num(w, lp);
    favo_put_z(w, ",\"bytes\":");
    put_bytes(w, p, n);
    return 0;
}

/* A record's fields (lp_recsz layout). */
static const char *lp_rec(const struct egr_resp *r, const char *area, size_t cap, uint32_t i,
                          int32_t *id, float *lp, uint32_t *off, uint32_t *n)
{
    const char *p = area + cap - (size_t)(i + 1) * lp_recsz(r);

    memcpy(id, p, 4);
    memcpy(lp, p + 4, 4);
    memcpy(off, p + 8, 4);
    memcpy(n, p + 12, 4);
    return p + 16;
}

static void lp_alt(const char *alts, uint32_t j, int32_t *id, float *lp)
{
    memcpy(id, alts + 8 * (size_t)j, 4);
    memcpy(lp, alts + 8 * (size_t)j + 4, 4);
}

/* Where rendered logprobs come from: the records in the area (a body), or
 * one token's struct egr_lp (a stream chunk, one = its alternatives). */
struct lp_src {
    const struct egr_resp *r;
    const char *area;             /* records: area and cap (lp_rec) */
    size_t cap;
    const struct egr_lp *one;     /* non-NULL: the single token id/off/one */
    int32_t id;
    uint32_t off;
};

static uint32_t src_n(const struct lp_src *s) { return s->one ? 1 : s->r->lp_n; }

/* Entry i: its id, logprob, text offset and number of alternatives; the
 * return value is what src_alt reads them from. */
static const char *src_rec(const struct lp_src *s, uint32_t i, int32_t *id, float *lp,
                           uint32_t *off, uint32_t *n)
{
    if (!s->one)
        return lp_rec(s->r, s->area, s->cap, i, id, lp, off, n);
    *id = s->id;
    *lp = s->one->logprob;
    *off = s->off;
    *n = FAVO_MIN(s->one->n_top, s->r->top_logprobs);
    return NULL;
}

static void src_alt(const struct lp_src *s, const char *alts, uint32_t j, int32_t *id,
                    float *lp)
{
    if (!s->one) {
        lp_alt(alts, j, id, lp);
        return;
    }
    *id = s->one->top_id[j];
    *lp = s->one->top_lp[j];
}

/* Logprobs of every entry of s: chat {"content":[entries]}, or completions
 * {"tokens","token_logprobs","top_logprobs","text_offset"} (one pass over
 * the entries per array). A body renders all its records, a stream chunk
 * its one token. -E2BIG when w is too small, -EINVAL for an id the
 * tokenizer does not know (checked by step). */
static int render_lps(const struct lp_src *s, const eng_tok_t *tok, struct favo_buf *w)
{
    const struct egr_resp *r = s->r;
    uint32_t cnt = src_n(s), off, n;
    int32_t id, aid;
    float lp, alp;
    const char *alts, *p;
    size_t pn;

    if (r->route == EGR_CHAT) {
        favo_put_z(w, "{\"content\":[");
        for (uint32_t i = 0; i < cnt; i++) {
            alts = src_rec(s, i, &id, &lp, &off, &n);
            if (i)
                favo_put_z(w, ",");
            if (put_tok(w, tok, id, lp) < 0)
                return -EINVAL;
            favo_put_z(w, ",\"top_logprobs\":[");
            for (uint32_t j = 0; j < n; j++) {
                src_alt(s, alts, j, &aid, &alp);
                if (j)
                    favo_put_z(w, ",");
                if (put_tok(w, tok, aid, alp) < 0)
                    return -EINVAL;
                favo_put_z(w, "}");
            }
            favo_put_z(w, "]}");
        }
        favo_put_z(w, "]}");
        return w->err ? -E2BIG : 0;
    }
    favo_put_z(w, "{\"tokens\":[");
    for (uint32_t i = 0; i < cnt; i++) {
        src_rec(s, i, &id, &lp, &off, &n);
        if (eng_tok_piece(tok, id, ENG_TOK_SHOW_SPECIAL, &p, &pn) < 0)
            return -EINVAL;
        favo_put_z(w, i ? ",\"" : "\"");
        egr_put_js(w, p, pn);
        favo_put_z(w, "\"");
    }
    favo_put_z(w, "],\"token_logprobs\":[");
    for (uint32_t i = 0; i < cnt; i++) {
        src_rec(s, i, &id, &lp, &off, &n);
        if (i)
            favo_put_z(w, ",");
        put_num(w, lp);
    }
    favo_put_z(w, "],\"top_logprobs\":");
    if (r->top_logprobs) {
        favo_put_z(w, "[");
        for (uint32_t i = 0; i < cnt; i++) {
            alts = src_rec(s, i, &id, &lp, &off, &n);
            favo_put_z(w, i ? ",{" : "{");
            for (uint32_t j = 0; j < n; j++) {
                src_alt(s, alts, j, &aid, &alp);
                if (aid < 0 || (uint32_t)aid >= eng_tok_n_vocab(tok) ||
                    eng_tok_piece(tok, aid, ENG_TOK_SHOW_SPECIAL, &p, &pn) < 0)
                    return -EINVAL;
                favo_put_z(w, j ? ",\"" : "\"");
                egr_put_js(w, p, pn);
                favo_put_z(w, "\":");
                put_num(w, alp);
            }
            favo_put_z(w, "}");
        }
        favo_put_z(w, "]");
    } else {
        favo_put_z(w, "null");
    }
    favo_put_z(w, ",\"text_offset\":[");
    for (uint32_t i = 0; i < cnt; i++) {
        src_rec(s, i, &id, &lp, &off, &n);
        if (i)
            favo_put_z(w, ",");
        favo_put_u(w, off, 1);
    }
    favo_put_z(w, "]}");
    return w->err ? -E2BIG : 0;
}

/* One stream token's logprobs (lp NULL: none known): the same shape as a
 * body's, with one entry. */
static int render_lp(const struct egr_resp *r, const eng_tok_t *tok, int32_t id,
                     const struct egr_lp *lp, struct favo_buf *w)
{
    static const struct egr_lp none;
    struct lp_src s = {.r = r, .one = lp ? lp : &none, .id = id, .off = r->char_off};

    return render_lps(&s, tok, w);
}

/* A body's logprobs from the records. */
static int render_body_lp(const struct egr_resp *r, const eng_tok_t *tok, const char *area,
                          size_t cap, struct favo_buf *w)
{
    struct lp_src s = {.r = r, .area = area, .cap = cap};

    return render_lps(&s, tok, w);
}

/* Non-stream: the token's record (lp_recsz layout) in front of the
 * earlier ones. step checked every alternative id before any state
 * changed, so rendering cannot fail on one. */
static int keep_lp(struct egr_resp *r, const eng_tok_t *tok, int32_t id, const struct egr_lp *lp,
                   uint32_t off, char *area, size_t cap)
{
    static const struct egr_lp none;
    size_t sz = lp_recsz(r), at;
    uint32_t n;
    char *p;

    if (!lp)
        lp = &none;
    n = FAVO_MIN(lp->n_top, r->top_logprobs);
    if ((size_t)r->text_len + FIN_RESERVE + lp_bin(r) + sz > cap)
        return -ENOBUFS;
    at = cap - lp_bin(r) - sz;
    p = area + at;
    memcpy(p, &id, 4);
    memcpy(p + 4, &lp->logprob, 4);
    memcpy(p + 8, &off, 4);
    memcpy(p + 12, &n, 4);
    for (uint32_t j = 0; j < n; j++) {
        memcpy(p + 16 + 8 * (size_t)j, &lp->top_id[j], 4);
        memcpy(p + 20 + 8 * (size_t)j, &lp->top_lp[j], 4);
    }
    r->lp_n++;
    return 0;
}

/* Characters (UTF-8 sequences started) in a token's piece: text_offset. */
static uint32_t piece_chars(const eng_tok_t *tok, int32_t id)
{
    const char *p;
    size_t n;
    uint32_t c = 0;

    if (eng_tok_piece(tok, id, ENG_TOK_SHOW_SPECIAL, &p, &n) < 0)
        return 0;
    for (size_t i = 0; i < n; i++)
        c += ((unsigned char)p[i] & 0xc0) != 0x80;
    return c;
}

/* Common path; push is either a token id (tok != NULL) or raw bytes. */
static int step(struct egr_resp *r, const eng_tok_t *tok, int32_t id, const struct egr_lp *lp,
                const char *p, size_t len, bool eog, char *area, size_t cap)
{
    char raw[RAW_MAX], lpbuf[LP_MAX];
    struct favo_buf lw = {lpbuf, sizeof(lpbuf), 0, 0};
    size_t text_max, n = 0;
    int rc, out = 0;
    bool stopped = false, with_lp;

    FAVO_ASSERT(r->magic == EGR_RESP_MAGIC);
    if (r->state == ST_DONE)
        return EGR_DONE;                        /* invariant 3 */
    if (tok) {
        if (id < 0 || (uint32_t)id >= eng_tok_n_vocab(tok))
            return -ERANGE;
        eog = eng_tok_is_eog(tok, id);
        text_max = eng_detok_out_max(tok);
    } else {
        text_max = 3 * len + ENG_DETOK_STOP_MAX + 8;
    }
    if (text_max > sizeof(raw))
        return -E2BIG;
    /* invariant 1: refuse before any state changes */
    if (r->stream && cap - r->pending < egr_resp_need(r, text_max))
        return r->pending ? -EAGAIN : -ENOBUFS;
    with_lp = r->logprobs && tok && !eog;
    if (with_lp && r->stream && (rc = render_lp(r, tok, id, lp, &lw)) < 0)
        return rc;
    if (with_lp && !r->stream && lp) {
        for (unsigned j = 0; j < FAVO_MIN(lp->n_top, r->top_logprobs); j++)
            if (lp->top_id[j] < 0 || (uint32_t)lp->top_id[j] >= eng_tok_n_vocab(tok))
                return -EINVAL; /* refused before any state changes */
    }
    uint32_t coff = r->char_off;
    if (with_lp)
        r->char_off += piece_chars(tok, id);

    r->completion_tokens++;
    if (!eog) {
        rc = tok ? eng_detok_push(&r->detok, tok, id, raw, sizeof(raw), &n)
                 : eng_detok_push_bytes(&r->detok, p, len, raw, sizeof(raw), &n);
        if (rc < 0)
            return rc;
        stopped = rc == ENG_DETOK_STOP;
        if (with_lp && r->stream) {
            /* one chunk per token, even with no text released yet */
            r->text_off += (uint32_t)n;
            rc = emit(r, area, cap, EV_TEXT, raw, n, lpbuf, lw.n);
        } else {
            rc = put_text(r, area, cap, raw, n);
            if (rc == 0 && with_lp)
                rc = keep_lp(r, tok, id, lp, coff, area, cap);
        }
        FAVO_ASSERT(!r->stream || rc != -EAGAIN);   /* invariant 1: covered by the need check */
        explicit_bzero(raw, n); /* invariant 5: no text left on the stack */
        if (with_lp)
            explicit_bzero(lpbuf, lw.n);
        if (rc < 0)
            return rc;
    }
    if (stopped) {
        out = EGR_CANCEL;
        rc = finish(r, tok, area, cap, EGR_FIN_STOP, true);
    } else if (eog) {
        rc = finish(r, tok, area, cap, EGR_FIN_STOP, false);
    } else if (r->max_tokens && r->completion_tokens >= r->max_tokens) {
        rc = finish(r, tok, area, cap, EGR_FIN_LENGTH, false);
    } else {
        return 0;
    }
    return rc < 0 ? rc : out | EGR_DONE;
}

int egr_resp_token(struct egr_resp *r, const eng_tok_t *tok, int32_t id, char *area, size_t cap)
{
    return step(r, tok, id, NULL, NULL, 0, false, area, cap);
}

int egr_resp_token_lp(struct egr_resp *r, const eng_tok_t *tok, int32_t id,
                      const struct egr_lp *lp, char *area, size_t cap)
{
    return step(r, tok, id, lp, NULL, 0, false, area, cap);
}

int egr_resp_bytes(struct egr_resp *r, const char *p, size_t len, bool eog, char *area,
                   size_t cap)
{
    return step(r, NULL, 0, NULL, p, len, eog, area, cap);
}

int egr_resp_finish(struct egr_resp *r, int reason, char *area, size_t cap)
{
    return egr_resp_finish_tok(r, NULL, reason, area, cap);
}

int egr_resp_finish_tok(struct egr_resp *r, const eng_tok_t *tok, int reason, char *area,
                        size_t cap)
{
    int rc;

    FAVO_ASSERT(r->magic == EGR_RESP_MAGIC);
    if (r->state == ST_DONE)
        return EGR_DONE;
    if (reason != EGR_FIN_STOP && reason != EGR_FIN_LENGTH)
        return -EINVAL;
    if (!r->stream && r->lp_n && !tok)
        return -EINVAL; /* the body's logprobs need the tokenizer; nothing changed */
    if (r->stream && cap - r->pending < egr_resp_need(r, 0))
        return r->pending ? -EAGAIN : -ENOBUFS;
    rc = finish(r, tok, area, cap, reason, false);
    return rc < 0 ? rc : EGR_DONE;
}

void egr_resp_consume(struct egr_resp *r, char *area, size_t n)
{
    FAVO_ASSERT(n <= r->pending);
    memmove(area, area + n, r->pending - n);
    r->pending -= (uint32_t)n;
}
