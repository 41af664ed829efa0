/*
 * dp_bench.c - the load generator behind `favo bench` (design: dp_bench.h).
 */
#include "dp_bench.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <liburing.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <yajl/yajl_tree.h>

#include "favo_base.h"

const struct dp_bench_work dp_bench_mix[6] = {
    { 150, 15, 1, NULL },  { 300, 80, 1, NULL },  { 800, 200, 1, NULL },
    { 500, 150, 1, NULL }, { 200, 300, 1, NULL }, { 400, 500, 1, NULL },
};
const char *const dp_bench_mix_names[6] = {
    "classification", "extraction", "summarization", "qa", "chat", "code",
};

/* ---------- samples ---------- */

static int samples_add(struct dp_bench_samples *s, double v)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 1024;
        double *nv = realloc(s->v, cap * sizeof(*nv));

        if (!nv)
            return -ENOMEM;
        s->v = nv;
        s->cap = cap;
    }
    s->v[s->n++] = v;
    return 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return (x > y) - (x < y);
}

double dp_bench_pct(struct dp_bench_samples *s, double p)
{
    size_t k;

    if (!s->n)
        return NAN;
    qsort(s->v, s->n, sizeof(*s->v), cmp_double);
    if (p <= 0)
        return s->v[0];
    /* nearest rank; the 1e-9 keeps binary rounding from adding a rank
     * (99.9 / 100 * 1000 is 999.0000000000001, whose ceil would be 1000) */
    k = (size_t)ceil(p / 100.0 * (double)s->n - 1e-9);
    if (k < 1)
        k = 1;
    if (k > s->n)
        k = s->n;
    return s->v[k - 1];
}

void dp_bench_res_free(struct dp_bench_res *res)
{
    free(res->ttft.v);
    free(res->itl.v);
    free(res->e2e.v);
    free(res->rec);
    memset(res, 0, sizeof(*res));
}

int dp_bench_metric(struct dp_bench_res *res, const char *name, double *v)
{
    struct dp_bench_samples *s;
    const char *p;
    char *end;
    double pc;

    if (!strncmp(name, "ttft_", 5))
        s = &res->ttft;
    else if (!strncmp(name, "itl_", 4))
        s = &res->itl;
    else if (!strncmp(name, "e2e_", 4))
        s = &res->e2e;
    else
        return -EINVAL;
    p = strchr(name, '_') + 1;
    if (!strcmp(p, "max_ms")) {
        *v = dp_bench_pct(s, 100);
        return 0;
    }
    if (*p != 'p')
        return -EINVAL;
    pc = strtod(p + 1, &end);
    if (end == p + 1 || strcmp(end, "_ms") || pc < 0 || pc > 100)
        return -EINVAL;
    *v = dp_bench_pct(s, pc);
    return 0;
}

/* ---------- url, prompts ---------- */

int dp_bench_set_url(struct dp_bench_cfg *cfg, const char *url, char *err, size_t errn)
{
    const char *h, *e, *slash;
    size_t hl;

    if (strncmp(url, "http://", 7)) {
        snprintf(err, errn, "--url %s: only http:// URLs are supported", url);
        return -EINVAL;
    }
    h = url + 7;
    slash = strchr(h, '/');
    e = slash ? slash : h + strlen(h);
    hl = (size_t)(e - h);
    cfg->port = 80;
    for (const char *c = h; c < e; c++)
        if (*c == ':') {
            char *end;
            long port = strtol(c + 1, &end, 10);

            if (end != e || port < 1 || port > 65535) {
                snprintf(err, errn, "--url %s: bad port", url);
                return -EINVAL;
            }
            cfg->port = (int)port;
            hl = (size_t)(c - h);
            break;
        }
    if (!hl || hl >= sizeof(cfg->host)) {
        snprintf(err, errn, "--url %s: bad host", url);
        return -EINVAL;
    }
    memcpy(cfg->host, h, hl);
    cfg->host[hl] = 0;
    hl = slash ? strlen(slash) : 0;
    while (hl && slash[hl - 1] == '/')
        hl--;
    if (hl + 32 > sizeof(cfg->path)) {
        snprintf(err, errn, "--url %s: path too long", url);
        return -EINVAL;
    }
    snprintf(cfg->path, sizeof(cfg->path), "%.*s%s", (int)hl, slash ? slash : "",
             cfg->chat ? "/v1/chat/completions" : "/v1/completions");
    return 0;
}

void dp_bench_free_prompts(struct dp_bench_work *w, int n)
{
    for (int i = 0; i < n; i++)
        free(w[i].prompt);
    free(w);
}

int dp_bench_load_prompts(const char *file, struct dp_bench_work **out, char *err, size_t errn)
{
    FILE *f = fopen(file, "r");
    struct dp_bench_work *w = NULL;
    int n = 0, cap = 0, lineno = 0;
    char *line = NULL;
    size_t lcap = 0;

    if (!f) {
        snprintf(err, errn, "--prompts %s: %s", file, strerror(errno));
        return -errno;
    }
    while (getline(&line, &lcap, f) >= 0) {
        const char *pp[] = { "prompt", NULL }, *mp[] = { "max_tokens", NULL };
        char ebuf[128];
        yajl_val doc, pv, mv;
        int words = 0;

        lineno++;
        if (strspn(line, " \t\r\n") == strlen(line))
            continue;
        doc = yajl_tree_parse(line, ebuf, sizeof(ebuf));
        pv = doc ? yajl_tree_get(doc, pp, yajl_t_string) : NULL;
        mv = doc ? yajl_tree_get(doc, mp, yajl_t_number) : NULL;
        if (!pv || !mv || !YAJL_IS_INTEGER(mv) || YAJL_GET_INTEGER(mv) < 1 ||
            YAJL_GET_INTEGER(mv) > 1000000) {
            snprintf(err, errn, "--prompts %s line %d: %s", file, lineno,
                     !doc ? "not valid JSON"
                     : !pv ? "field \"prompt\" missing or not a string"
                           : "field \"max_tokens\" missing or not an integer in 1..1000000");
            yajl_tree_free(doc);
            goto fail;
        }
        if (n == cap) {
            struct dp_bench_work *nw = realloc(w, (size_t)(cap ? cap * 2 : 64) * sizeof(*w));

            if (!nw) {
                yajl_tree_free(doc);
                snprintf(err, errn, "--prompts %s: out of memory", file);
                goto fail;
            }
            w = nw;
            cap = cap ? cap * 2 : 64;
        }
        w[n].prompt = strdup(pv->u.string);
        w[n].out_tokens = (int)YAJL_GET_INTEGER(mv);
        w[n].weight = 1;
        for (const char *c = w[n].prompt ? w[n].prompt : ""; *c; c++)
            words += !isspace((unsigned char)*c) && (c == w[n].prompt || isspace((unsigned char)c[-1]));
        w[n].in_tokens = words;
        yajl_tree_free(doc);
        if (!w[n].prompt) {
            snprintf(err, errn, "--prompts %s: out of memory", file);
            goto fail;
        }
        n++;
    }
    free(line);
    fclose(f);
    if (!n) {
        snprintf(err, errn, "--prompts %s: no prompts", file);
        free(w);
        return -EINVAL;
    }
    *out = w;
    return n;
fail:
    free(line);
    fclose(f);
    dp_bench_free_prompts(w, n);
    return -EINVAL;
}

/* ---------- request building ---------- */

/* Common English words that are one token each in the GPT-2, Llama and
 * SmolLM BPE vocabularies when preceded by a space: N words ~ N tokens. */
static const char *const words[] = {
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "was", "with",
    "be", "by", "on", "not", "he", "this", "are", "or", "his", "from", "at", "which",
    "but", "have", "an", "had", "they", "you", "were", "their", "one", "all", "we",
    "can", "her", "has", "there", "been", "if", "more", "when", "will", "would", "who",
    "so", "no", "time", "people", "water", "day", "house", "world", "city", "book",
};

static void json_str(char **p, const char *s)
{
    char *o = *p;

    *o++ = '"';
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;

        if (c == '"' || c == '\\') {
            *o++ = '\\';
            *o++ = (char)c;
        } else if (c < 0x20) {
            o += sprintf(o, "\\u%04x", c);
        } else {
            *o++ = (char)c;
        }
    }
    *o++ = '"';
    *p = o;
}

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double rng_unit(uint64_t *s)
{
    return (double)(rng_next(s) >> 11) * (1.0 / 9007199254740992.0);
}

/* Build the HTTP request for work w, request number seq. Returns malloc'd
 * bytes, length in *len. */
static char *build_req(const struct dp_bench_cfg *cfg, const struct dp_bench_work *w, long seq,
                       size_t *len)
{
    size_t plen = w->prompt ? strlen(w->prompt) : (size_t)w->in_tokens * 8 + 32;
    size_t cap = plen * 6 + 1024 + (cfg->model ? strlen(cfg->model) * 6 : 0) +
                 (cfg->api_key ? strlen(cfg->api_key) : 0) + strlen(cfg->host);
    char *body = malloc(cap), *req = malloc(cap + 512), *prompt = NULL, *o;
    uint64_t rs = (uint64_t)seq * 7919u + 17;
    int n;

    if (!body || !req)
        goto fail;
    if (!w->prompt) {
        prompt = malloc(plen);
        if (!prompt)
            goto fail;
        /* a request number first, so no two prompts share a cached prefix */
        o = prompt + sprintf(prompt, "%ld:", seq % 100000);
        for (int i = 1; i < w->in_tokens; i++)
            o += sprintf(o, " %s", words[rng_next(&rs) % (sizeof(words) / sizeof(*words))]);
        *o = 0;
    }
    o = body;
    o += sprintf(o, "{");
    if (cfg->model) {
        o += sprintf(o, "\"model\":");
        json_str(&o, cfg->model);
        *o++ = ',';
    }
    if (cfg->chat) {
        o += sprintf(o, "\"messages\":[{\"role\":\"user\",\"content\":");
        json_str(&o, w->prompt ? w->prompt : prompt);
        o += sprintf(o, "}]");
    } else {
        o += sprintf(o, "\"prompt\":");
        json_str(&o, w->prompt ? w->prompt : prompt);
    }
    o += sprintf(o, ",\"max_tokens\":%d,\"ignore_eos\":true,\"stream\":%s}", w->out_tokens,
                 cfg->stream ? "true,\"stream_options\":{\"include_usage\":true}" : "false");
    n = snprintf(req, cap + 512,
                 "POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                 "Accept: %s\r\nConnection: close\r\nContent-Length: %zu\r\n%s%s%s\r\n",
                 cfg->path, cfg->host, cfg->port,
                 cfg->stream ? "text/event-stream" : "application/json", (size_t)(o - body),
                 cfg->api_key ? "Authorization: Bearer " : "", cfg->api_key ? cfg->api_key : "",
                 cfg->api_key ? "\r\n" : "");
    if (n < 0 || (size_t)n + (size_t)(o - body) >= cap + 512)
        goto fail;
    memcpy(req + n, body, (size_t)(o - body));
    *len = (size_t)n + (size_t)(o - body);
    free(body);
    free(prompt);
    return req;
fail:
    free(body);
    free(req);
    free(prompt);
    return NULL;
}

/* ---------- connections ---------- */

enum conn_state { C_FREE, C_CONNECT, C_SEND, C_RECV };
enum body_mode { B_NONE, B_CHUNKED, B_LENGTH, B_EOF };
enum chunk_state { K_SIZE, K_SIZE_EXT, K_DATA, K_DATA_CR, K_TRAILER, K_DONE };

#define HDR_MAX 16384
#define LINE_MAX_B 65536
#define RECV_B 16384

struct conn {
    enum conn_state st;
    int fd;
    uint64_t intended, last_tok, t_start, t_sent, t_first;
    char *req;
    size_t req_len, sent;
    /* response */
    char hdr[HDR_MAX];
    size_t hdr_len;
    bool hdr_done, got_tok, done;
    int status;
    enum body_mode mode;
    long long remain;       /* B_LENGTH: bytes left; B_CHUNKED: bytes left in chunk */
    enum chunk_state ks;
    unsigned long long ksize;
    int trailer_nl;
    char *line;             /* SSE line buffer (streaming) or body (non-streaming) */
    size_t line_len;
    long ntok;              /* text events (stream) or usage.completion_tokens */
    long usage_tok;         /* stream: the usage event's completion_tokens */
    bool usage_seen;        /* stream: a usage event came (usage_tok is valid) */
    char rbuf[RECV_B];
};

struct run {
    const struct dp_bench_cfg *cfg;
    struct dp_bench_res *res;
    struct io_uring ring;
    struct conn *conns;
    int nconns, active;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    uint64_t *pend;         /* FIFO of intended times */
    size_t pend_cap, pend_head, pend_n;
    uint64_t rs;
    double wsum;
    long started;
    uint64_t t0, last_done;
    int err;
};

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static const struct dp_bench_work *pick_work(struct run *r)
{
    double u = rng_unit(&r->rs) * r->wsum;

    for (int i = 0; i < r->cfg->nwork; i++) {
        u -= r->cfg->work[i].weight;
        if (u < 0)
            return &r->cfg->work[i];
    }
    return &r->cfg->work[r->cfg->nwork - 1];
}

static int pend_push(struct run *r, uint64_t t)
{
    if (r->pend_n == r->pend_cap) {
        size_t cap = r->pend_cap ? r->pend_cap * 2 : 1024;
        uint64_t *np = malloc(cap * sizeof(*np));

        if (!np)
            return -ENOMEM;
        for (size_t i = 0; i < r->pend_n; i++)
            np[i] = r->pend[(r->pend_head + i) % r->pend_cap];
        free(r->pend);
        r->pend = np;
        r->pend_cap = cap;
        r->pend_head = 0;
    }
    r->pend[(r->pend_head + r->pend_n++) % r->pend_cap] = t;
    r->res->scheduled++;
    return 0;
}

static struct io_uring_sqe *get_sqe(struct run *r)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);

    if (!sqe) {
        io_uring_submit(&r->ring);
        sqe = io_uring_get_sqe(&r->ring);
    }
    FAVO_ASSERT(sqe); /* ring has an entry per connection (invariant 1) */
    return sqe;
}

static double rel_ms(const struct run *r, uint64_t t)
{
    return t ? (double)(int64_t)(t - r->t0) / 1e6 : NAN;
}

/* The timeline of a finished request (cfg->keep_records). */
static int rec_add(struct run *r, const struct conn *c, int kind, uint64_t t)
{
    struct dp_bench_res *res = r->res;
    struct dp_bench_rec *x;

    if (res->nrec == res->rec_cap) {
        size_t cap = res->rec_cap ? res->rec_cap * 2 : 256;
        struct dp_bench_rec *nr = realloc(res->rec, cap * sizeof(*nr));

        if (!nr)
            return -ENOMEM;
        res->rec = nr;
        res->rec_cap = cap;
    }
    x = &res->rec[res->nrec++];
    x->intended_ms = rel_ms(r, c->intended);
    x->start_ms = rel_ms(r, c->t_start);
    x->sent_ms = rel_ms(r, c->t_sent);
    x->first_ms = c->got_tok ? rel_ms(r, c->t_first) : NAN;
    x->last_ms = c->got_tok ? rel_ms(r, c->last_tok) : NAN;
    x->end_ms = rel_ms(r, t);
    x->tokens = c->ntok;
    x->status = c->status;
    x->outcome = kind == 0 ? (c->status != 200 ? DP_BENCH_HTTP
                              : r->cfg->stream && !c->got_tok ? DP_BENCH_PROTO : DP_BENCH_OK)
               : kind == 1 ? DP_BENCH_CONN
               : kind == 2 ? DP_BENCH_PROTO
                           : DP_BENCH_TIMEOUT;
    return 0;
}

static void conn_finish(struct run *r, struct conn *c, int kind)
{
    struct dp_bench_res *res = r->res;
    uint64_t t = now_ns();

    /* invariant 2: exactly one outcome per request */
    switch (kind) {
    case 0:
        if (c->status != 200) {
            res->http_err++;
            res->by_status[c->status >= 100 && c->status < 600 ? c->status : 0]++;
        } else if (r->cfg->stream && !c->got_tok) {
            res->proto_err++;
        } else {
            res->ok++;
            res->out_tokens += c->ntok;
            if (samples_add(&res->e2e, (double)(t - c->intended) / 1e6))
                r->err = -ENOMEM;
        }
        break;
    case 1:
        res->conn_err++;
        break;
    case 2:
        res->proto_err++;
        break;
    default:
        res->timeouts++;
        break;
    }
    if (r->cfg->keep_records && rec_add(r, c, kind, t))
        r->err = -ENOMEM;
    if (c->fd >= 0)
        close(c->fd);
    free(c->req);
    free(c->line);
    c->fd = -1;
    c->req = NULL;
    c->line = NULL;
    c->st = C_FREE;
    r->active--;
    r->last_done = t;
}

static void conn_start(struct run *r, struct conn *c, uint64_t intended)
{
    const struct dp_bench_work *w = pick_work(r);
    struct io_uring_sqe *sqe;
    int one = 1;

    memset(c, 0, offsetof(struct conn, rbuf));
    c->intended = intended;
    c->t_start = now_ns();
    c->fd = -1;
    c->st = C_CONNECT;
    r->active++;
    r->started++;
    c->req = build_req(r->cfg, w, r->started, &c->req_len);
    if (!c->req) {
        r->err = -ENOMEM;
        conn_finish(r, c, 2);
        return;
    }
    c->fd = socket(r->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        conn_finish(r, c, 1);
        return;
    }
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    sqe = get_sqe(r);
    io_uring_prep_connect(sqe, c->fd, (struct sockaddr *)&r->addr, r->addrlen);
    io_uring_sqe_set_data64(sqe, (uint64_t)(c - r->conns));
}

static void submit_send(struct run *r, struct conn *c)
{
    struct io_uring_sqe *sqe = get_sqe(r);

    c->st = C_SEND;
    io_uring_prep_send(sqe, c->fd, c->req + c->sent, c->req_len - c->sent, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, (uint64_t)(c - r->conns));
}

static void submit_recv(struct run *r, struct conn *c)
{
    struct io_uring_sqe *sqe = get_sqe(r);

    c->st = C_RECV;
    io_uring_prep_recv(sqe, c->fd, c->rbuf, sizeof(c->rbuf), 0);
    io_uring_sqe_set_data64(sqe, (uint64_t)(c - r->conns));
}

/* Does a data event carry generated text? OpenAI-style servers also send
 * events without any: the role-only first chat delta, a last chunk with only
 * finish_reason, a usage chunk. Counting those would make TTFT early and add
 * phantom tokens. Rule: an OpenAI-shaped event (one with a "choices",
 * "text" or "content" key) counts only when a "text" or "content" value is a
 * non-empty string; any other event (not OpenAI-shaped) counts. */
static bool event_has_text(const char *l, size_t n)
{
    static const char *const keys[] = { "\"text\"", "\"content\"" };
    bool seen = false;

    for (unsigned k = 0; k < 2; k++) {
        size_t kl = strlen(keys[k]);

        for (const char *p = l; (p = memmem(p, n - (size_t)(p - l), keys[k], kl)); p += kl) {
            const char *q = p + kl, *e = l + n;

            seen = true;
            while (q < e && (*q == ' ' || *q == '\t'))
                q++;
            if (q >= e || *q != ':')
                continue;
            q++;
            while (q < e && (*q == ' ' || *q == '\t'))
                q++;
            if (q + 1 < e && *q == '"' && q[1] != '"')
                return true;
        }
    }
    return !seen && !memmem(l, n, "\"choices\"", 9);
}

/* The usage event (stream_options.include_usage) carries the server's own
 * count of generated tokens. It beats counting text events: a token that
 * completes no character (half of a UTF-8 sequence) or has no text (a special
 * token under ignore_eos) makes no event of its own. */
static void usage_event(struct conn *c, const char *l, size_t n)
{
    const char *u = memmem(l, n, "\"usage\"", 7), *e = l + n;
    char num[24];
    size_t k = 0;

    if (!u || !(u = memmem(u, (size_t)(e - u), "\"completion_tokens\"", 19)))
        return;
    for (u += 19; u < e && (*u == ' ' || *u == '\t' || *u == ':'); u++)
        ;
    while (u < e && k < sizeof(num) - 1 && *u >= '0' && *u <= '9')
        num[k++] = *u++;
    if (!k || k > 18)
        return;
    num[k] = 0;
    c->usage_tok = strtol(num, NULL, 10);
    c->usage_seen = true;
}

/* An SSE line (without the newline). */
static void sse_line(struct run *r, struct conn *c, char *l, size_t n, uint64_t t)
{
    if (n && l[n - 1] == '\r')
        n--;
    if (n < 5 || strncmp(l, "data:", 5))
        return;
    l += 5;
    n -= 5;
    while (n && *l == ' ')
        l++, n--;
    if (n == 6 && !strncmp(l, "[DONE]", 6))
        return;
    usage_event(c, l, n);
    if (!event_has_text(l, n))
        return;
    if (!c->got_tok) {
        c->got_tok = true;
        c->t_first = t;
        if (samples_add(&r->res->ttft, (double)(t - c->intended) / 1e6))
            r->err = -ENOMEM;
    } else if (samples_add(&r->res->itl, (double)(t - c->last_tok) / 1e6)) {
        r->err = -ENOMEM;
    }
    c->last_tok = t;
    c->ntok++;
}

/* Decoded body bytes. */
static int body_bytes(struct run *r, struct conn *c, char *p, size_t n, uint64_t t)
{
    if (c->status != 200)
        return 0;
    if (!c->line) {
        c->line = malloc(LINE_MAX_B);
        if (!c->line)
            return -ENOMEM;
    }
    if (!r->cfg->stream) { /* keep the head of the body for usage */
        size_t k = n < LINE_MAX_B - 1 - c->line_len ? n : LINE_MAX_B - 1 - c->line_len;

        memcpy(c->line + c->line_len, p, k);
        c->line_len += k;
        c->line[c->line_len] = 0;
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '\n') {
            sse_line(r, c, c->line, c->line_len, t);
            c->line_len = 0;
        } else if (c->line_len < LINE_MAX_B) {
            c->line[c->line_len++] = p[i];
        }
    }
    return 0;
}

/* Chunked decoding; returns -EPROTO on malformed framing. */
static int chunked(struct run *r, struct conn *c, char *p, size_t n, uint64_t t)
{
    size_t i = 0;

    while (i < n && c->ks != K_DONE) {
        char ch = p[i];

        switch (c->ks) {
        case K_SIZE:
            if (isxdigit((unsigned char)ch)) {
                if (c->ksize > (1ull << 40))
                    return -EPROTO;
                c->ksize = c->ksize * 16 +
                           (unsigned)(isdigit((unsigned char)ch) ? ch - '0' : (tolower(ch) - 'a' + 10));
            } else if (ch == ';' || ch == ' ' || ch == '\t' || ch == '\r') {
                c->ks = K_SIZE_EXT;
            } else if (ch == '\n') {
                goto size_end;
            } else {
                return -EPROTO;
            }
            i++;
            break;
        case K_SIZE_EXT:
            i++;
            if (ch == '\n')
                goto size_end;
            break;
        size_end:
            c->remain = (long long)c->ksize;
            c->ks = c->ksize ? K_DATA : K_TRAILER;
            c->trailer_nl = 1;
            c->ksize = 0;
            break;
        case K_DATA: {
            size_t k = n - i < (size_t)c->remain ? n - i : (size_t)c->remain;

            if (body_bytes(r, c, p + i, k, t))
                return -ENOMEM;
            i += k;
            c->remain -= (long long)k;
            if (!c->remain)
                c->ks = K_DATA_CR;
            break;
        }
        case K_DATA_CR:
            i++;
            if (ch == '\n')
                c->ks = K_SIZE;
            else if (ch != '\r')
                return -EPROTO;
            break;
        case K_TRAILER: /* lines until an empty one */
            i++;
            if (ch == '\n') {
                if (c->trailer_nl)
                    c->ks = K_DONE;
                c->trailer_nl = 1;
            } else if (ch != '\r') {
                c->trailer_nl = 0;
            }
            break;
        case K_DONE:
            break;
        }
    }
    return 0;
}

static int parse_headers(struct conn *c)
{
    char *p = c->hdr, *eol;

    c->hdr[c->hdr_len] = 0;
    if (strncmp(p, "HTTP/1.", 7) || c->hdr_len < 12 || !isdigit((unsigned char)p[9]))
        return -EPROTO;
    c->status = atoi(p + 9);
    c->mode = B_EOF;
    while ((eol = strstr(p, "\r\n")) && eol != p) {
        p = eol + 2;
        if (!strncasecmp(p, "transfer-encoding:", 18)) {
            char *v = p + 18;

            while (*v == ' ')
                v++;
            if (!strncasecmp(v, "chunked", 7))
                c->mode = B_CHUNKED;
        } else if (!strncasecmp(p, "content-length:", 15) && c->mode != B_CHUNKED) {
            c->mode = B_LENGTH;
            c->remain = strtoll(p + 15, NULL, 10);
            if (c->remain < 0)
                return -EPROTO;
        }
    }
    if (c->status == 204 || c->status == 304 || (c->status >= 100 && c->status < 200))
        c->mode = B_NONE;
    return 0;
}

/* Bytes received: returns 1 when the response is complete, 0 for more, <0 on error. */
static int on_data(struct run *r, struct conn *c, char *p, size_t n, uint64_t t)
{
    int rc;

    if (!c->hdr_done) {
        size_t k = n < HDR_MAX - 1 - c->hdr_len ? n : HDR_MAX - 1 - c->hdr_len;
        char *end;

        memcpy(c->hdr + c->hdr_len, p, k);
        c->hdr_len += k;
        c->hdr[c->hdr_len] = 0;
        end = strstr(c->hdr, "\r\n\r\n");
        if (!end)
            return c->hdr_len >= HDR_MAX - 1 ? -EPROTO : 0;
        {
            size_t hl = (size_t)(end + 4 - c->hdr), consumed = hl - (c->hdr_len - k);

            c->hdr_len = hl;
            c->hdr_done = true;
            if ((rc = parse_headers(c)))
                return rc;
            p += consumed;
            n -= consumed;
        }
        if (c->mode == B_NONE)
            return 1;
    }
    switch (c->mode) {
    case B_CHUNKED:
        if ((rc = chunked(r, c, p, n, t)))
            return rc;
        return c->ks == K_DONE;
    case B_LENGTH: {
        size_t k = (long long)n < c->remain ? n : (size_t)c->remain;

        if (body_bytes(r, c, p, k, t))
            return -ENOMEM;
        c->remain -= (long long)k;
        return c->remain == 0;
    }
    case B_EOF:
        return body_bytes(r, c, p, n, t) ? -ENOMEM : 0;
    case B_NONE:
        return 1;
    }
    return 0;
}

static void response_tokens(struct run *r, struct conn *c)
{
    if (!r->cfg->stream && c->status == 200 && c->line) {
        char *u = strstr(c->line, "\"completion_tokens\"");

        if (u && (u = strchr(u, ':')))
            c->ntok = strtol(u + 1, NULL, 10);
        if (c->ntok < 0)
            c->ntok = 0;
    } else if (r->cfg->stream && c->line && c->line_len) {
        sse_line(r, c, c->line, c->line_len, now_ns()); /* last line without \n */
    }
    if (r->cfg->stream && c->usage_seen)
        c->ntok = c->usage_tok;
}

static void response_done(struct run *r, struct conn *c)
{
    response_tokens(r, c);
    conn_finish(r, c, 0);
}

int dp_bench_parse_response(bool stream, const char *buf, size_t n, size_t piece,
                            struct dp_bench_parsed *out)
{
    struct dp_bench_cfg cfg = { .stream = stream };
    struct dp_bench_res res = { 0 };
    struct run r = { .cfg = &cfg, .res = &res };
    struct conn *c = calloc(1, sizeof(*c));
    int rc = 0;

    memset(out, 0, sizeof(*out));
    if (!c)
        return -ENOMEM;
    if (!piece)
        piece = 1;
    if (piece > sizeof(c->rbuf))
        piece = sizeof(c->rbuf);
    for (size_t off = 0; off < n && rc == 0; off += piece) {
        size_t k = n - off < piece ? n - off : piece;

        memcpy(c->rbuf, buf + off, k);
        rc = on_data(&r, c, c->rbuf, k, 0);
    }
    if (rc >= 0) {
        out->complete = rc > 0 || (c->hdr_done && c->mode == B_EOF); /* EOF ends the body */
        if (out->complete)
            response_tokens(&r, c);
        rc = 0;
    }
    out->status = c->status;
    out->tokens = c->ntok;
    free(c->line);
    free(c);
    dp_bench_res_free(&res);
    return rc;
}

static void on_cqe(struct run *r, struct io_uring_cqe *cqe)
{
    struct conn *c = &r->conns[io_uring_cqe_get_data64(cqe)];
    int res = cqe->res, rc;

    FAVO_ASSERT(c->st != C_FREE); /* invariant 1 */
    switch (c->st) {
    case C_CONNECT:
        if (res < 0) {
            conn_finish(r, c, 1);
            return;
        }
        submit_send(r, c);
        return;
    case C_SEND:
        if (res <= 0) {
            conn_finish(r, c, 1);
            return;
        }
        c->sent += (size_t)res;
        if (c->sent < c->req_len) {
            submit_send(r, c);
        } else {
            c->t_sent = now_ns();
            submit_recv(r, c);
        }
        return;
    case C_RECV:
        if (res < 0) {
            conn_finish(r, c, c->done ? 3 : 1);
            return;
        }
        if (res == 0) { /* EOF */
            if (c->done)
                conn_finish(r, c, 3);
            else if (c->hdr_done && c->mode == B_EOF)
                response_done(r, c);
            else
                conn_finish(r, c, 2);
            return;
        }
        rc = on_data(r, c, c->rbuf, (size_t)res, now_ns());
        if (rc < 0) {
            if (rc == -ENOMEM)
                r->err = rc;
            conn_finish(r, c, 2);
        } else if (rc > 0) {
            response_done(r, c);
        } else {
            submit_recv(r, c);
        }
        return;
    case C_FREE:
        break;
    }
}

static int resolve(struct run *r)
{
    struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *ai;
    char port[16];
    int rc;

    snprintf(port, sizeof(port), "%d", r->cfg->port);
    rc = getaddrinfo(r->cfg->host, port, &hints, &ai);
    if (rc) {
        favo_err("bench: cannot resolve the --url host: %s", gai_strerror(rc));
        return -EHOSTUNREACH;
    }
    memcpy(&r->addr, ai->ai_addr, ai->ai_addrlen);
    r->addrlen = ai->ai_addrlen;
    freeaddrinfo(ai);
    return 0;
}

static double exp_gap(struct run *r)
{
    double u = rng_unit(&r->rs);

    if (!r->cfg->poisson)
        return 1.0 / r->cfg->rate;
    return -log(1.0 - u) / r->cfg->rate;
}

int dp_bench_run(const struct dp_bench_cfg *cfg, struct dp_bench_res *res)
{
    struct run r = { .cfg = cfg, .res = res, .rs = cfg->seed ? cfg->seed : 1 };
    uint64_t next, end_arrivals, hard_end, last_prog, timeout_ns;
    bool open = cfg->rate > 0;
    int rc;

    memset(res, 0, sizeof(*res));
    res->rate = open ? cfg->rate : 0;
    if ((!open && cfg->concurrency < 1) || cfg->nwork < 1 || cfg->max_conns < 1 ||
        (cfg->duration <= 0 && cfg->requests <= 0))
        return -EINVAL;
    for (int i = 0; i < cfg->nwork; i++)
        r.wsum += cfg->work[i].weight;
    if ((rc = resolve(&r)))
        return rc;
    r.nconns = open ? cfg->max_conns : cfg->concurrency;
    {   /* one descriptor per connection: lift the soft limit to the hard one */
        struct rlimit rl;

        if (!getrlimit(RLIMIT_NOFILE, &rl) && rl.rlim_cur < (rlim_t)r.nconns + 64 &&
            rl.rlim_cur < rl.rlim_max) {
            rl.rlim_cur = rl.rlim_max;
            setrlimit(RLIMIT_NOFILE, &rl);
        }
    }
    r.conns = calloc((size_t)r.nconns, sizeof(*r.conns));
    if (!r.conns)
        return -ENOMEM;
    for (int i = 0; i < r.nconns; i++)
        r.conns[i].fd = -1;
    rc = io_uring_queue_init((unsigned)(r.nconns < 4096 ? r.nconns * 2 + 8 : 8192), &r.ring, 0);
    if (rc) {
        free(r.conns);
        return rc;
    }
    timeout_ns = (uint64_t)(cfg->timeout_s * 1e9);
    r.t0 = now_ns();
    next = r.t0;
    end_arrivals = cfg->duration > 0 ? r.t0 + (uint64_t)(cfg->duration * 1e9) : UINT64_MAX;
    hard_end = UINT64_MAX;
    last_prog = r.t0;
    for (;;) {
        struct __kernel_timespec ts;
        struct io_uring_cqe *cqe;
        uint64_t t = now_ns(), wait;
        bool more = t < end_arrivals && (cfg->requests <= 0 || res->scheduled < cfg->requests);
        unsigned head, seen = 0;

        if (r.err)
            break;
        /* arrivals */
        if (open) {
            while (more && next <= t) {
                if ((rc = pend_push(&r, next))) {
                    r.err = rc;
                    break;
                }
                next += (uint64_t)(exp_gap(&r) * 1e9);
                more = next < end_arrivals &&
                       (cfg->requests <= 0 || res->scheduled < cfg->requests);
            }
        } else {
            while (more && r.active + (int)r.pend_n < cfg->concurrency) {
                if ((rc = pend_push(&r, t))) {
                    r.err = rc;
                    break;
                }
                more = cfg->requests <= 0 || res->scheduled < cfg->requests;
            }
        }
        if (!more && hard_end == UINT64_MAX)
            hard_end = t + timeout_ns;
        /* start what waits, oldest first, while a connection is free */
        for (int i = 0; i < r.nconns && r.pend_n; i++)
            if (r.conns[i].st == C_FREE) {
                uint64_t it = r.pend[r.pend_head];

                r.pend_head = (r.pend_head + 1) % r.pend_cap;
                r.pend_n--;
                conn_start(&r, &r.conns[i], it);
            }
        /* per-request timeouts: shutdown makes the pending recv complete */
        for (int i = 0; i < r.nconns; i++) {
            struct conn *c = &r.conns[i];

            if (c->st != C_FREE && !c->done && c->fd >= 0 &&
                (t - c->intended > timeout_ns || t > hard_end)) {
                c->done = true; /* marks it as a timeout */
                shutdown(c->fd, SHUT_RDWR);
            }
        }
        if (!more && !r.active && !r.pend_n)
            break;
        if (cfg->progress && t - last_prog >= 1000000000ull) {
            last_prog = t;
            fprintf(stderr,
                    "[%5.1fs] scheduled %ld  ok %ld  errors %ld  in flight %d  waiting %zu\n",
                    (double)(t - r.t0) / 1e9, res->scheduled, res->ok,
                    res->http_err + res->conn_err + res->proto_err + res->timeouts, r.active,
                    r.pend_n);
        }
        wait = 100000000ull; /* 100 ms: timeouts and progress */
        if (open && more && r.pend_n == 0)
            wait = next > t ? (next - t < wait ? next - t : wait) : 0;
        ts.tv_sec = (long long)(wait / 1000000000ull);
        ts.tv_nsec = (long long)(wait % 1000000000ull);
        io_uring_submit(&r.ring);
        if (r.active) {
            rc = io_uring_wait_cqe_timeout(&r.ring, &cqe, &ts);
            if (rc && rc != -ETIME && rc != -EINTR) {
                r.err = rc;
                break;
            }
        } else if (wait) {
            struct timespec sl = { (time_t)ts.tv_sec, (long)ts.tv_nsec };

            nanosleep(&sl, NULL);
        }
        io_uring_for_each_cqe(&r.ring, head, cqe) {
            on_cqe(&r, cqe);
            seen++;
        }
        io_uring_cq_advance(&r.ring, seen);
    }
    /* on an internal error, close what is open; the ring's exit cancels */
    for (int i = 0; i < r.nconns; i++)
        if (r.conns[i].st != C_FREE)
            conn_finish(&r, &r.conns[i], 3);
    io_uring_queue_exit(&r.ring);
    res->wall_s = (double)((r.last_done > r.t0 ? r.last_done : now_ns()) - r.t0) / 1e9;
    free(r.conns);
    free(r.pend);
    return r.err;
}

/* ---------- reports ---------- */

static const double pcts[] = { 50, 90, 95, 99, 99.9, 100 };

void dp_bench_table(FILE *f, struct dp_bench_res *res)
{
    struct dp_bench_samples *s[] = { &res->ttft, &res->itl, &res->e2e };
    const char *nm[] = { "TTFT", "ITL", "E2E" };
    long errs = res->http_err + res->conn_err + res->proto_err + res->timeouts;

    fprintf(f, "%-8s %8s %9s %9s %9s %9s %9s %9s\n", "ms", "samples", "p50", "p90", "p95",
            "p99", "p99.9", "max");
    for (int i = 0; i < 3; i++) {
        fprintf(f, "%-8s %8zu", nm[i], s[i]->n);
        for (unsigned j = 0; j < sizeof(pcts) / sizeof(*pcts); j++)
            if (s[i]->n)
                fprintf(f, " %9.2f", dp_bench_pct(s[i], pcts[j]));
            else
                fprintf(f, " %9s", "-");
        fputc('\n', f);
    }
    fprintf(f, "requests %ld scheduled, %ld ok, %ld errors in %.2f s", res->scheduled, res->ok,
            errs, res->wall_s);
    if (res->rate > 0)
        fprintf(f, " (offered %.2f/s)", res->rate);
    fprintf(f, "\nthroughput %.2f requests/s, %.1f output tokens/s\n",
            res->wall_s > 0 ? (double)res->ok / res->wall_s : 0,
            res->wall_s > 0 ? (double)res->out_tokens / res->wall_s : 0);
    if (errs) {
        fprintf(f, "errors:");
        for (int i = 0; i < 600; i++)
            if (res->by_status[i])
                fprintf(f, " HTTP %d: %ld,", i, res->by_status[i]);
        fprintf(f, " connection: %ld, protocol: %ld, timeout: %ld\n", res->conn_err,
                res->proto_err, res->timeouts);
    }
}

static void json_num(FILE *f, double v)
{
    if (isfinite(v))
        fprintf(f, "%.6g", v);
    else
        fputs("null", f);
}

int dp_bench_records_jsonl(FILE *f, const struct dp_bench_res *res)
{
    static const char *const outcome[] = { "ok", "http", "connection", "protocol", "timeout" };

    for (size_t i = 0; i < res->nrec; i++) {
        const struct dp_bench_rec *x = &res->rec[i];
        const double v[] = { x->intended_ms, x->start_ms, x->sent_ms,
                             x->first_ms,    x->last_ms,  x->end_ms };
        const char *const k[] = { "intended_ms", "start_ms", "sent_ms",
                                  "first_ms",    "last_ms",  "end_ms" };

        for (unsigned j = 0; j < 6; j++) {
            fprintf(f, "%s\"%s\":", j ? "," : "{", k[j]);
            if (isfinite(v[j]))
                fprintf(f, "%.4f", v[j]); /* 0.1 us: ms with enough digits for long runs */
            else
                fputs("null", f);
        }
        fprintf(f, ",\"tokens\":%ld,\"status\":%d,\"outcome\":\"%s\"}\n", x->tokens, x->status,
                outcome[x->outcome]);
    }
    return ferror(f) ? -EIO : 0;
}

void dp_bench_json_run(FILE *f, struct dp_bench_res *res)
{
    struct dp_bench_samples *s[] = { &res->ttft, &res->itl, &res->e2e };
    const char *nm[] = { "ttft_ms", "itl_ms", "e2e_ms" };
    const char *pn[] = { "p50", "p90", "p95", "p99", "p99.9", "max" };
    bool first = true;

    fprintf(f, "{\"offered_rate\":");
    json_num(f, res->rate);
    fprintf(f, ",\"scheduled\":%ld,\"ok\":%ld,\"errors\":%ld,\"wall_s\":", res->scheduled,
            res->ok, res->http_err + res->conn_err + res->proto_err + res->timeouts);
    json_num(f, res->wall_s);
    fprintf(f, ",\"requests_per_s\":");
    json_num(f, res->wall_s > 0 ? (double)res->ok / res->wall_s : 0);
    fprintf(f, ",\"output_tokens\":%ld,\"output_tokens_per_s\":", res->out_tokens);
    json_num(f, res->wall_s > 0 ? (double)res->out_tokens / res->wall_s : 0);
    fprintf(f, ",\"errors_by_status\":{");
    for (int i = 0; i < 600; i++)
        if (res->by_status[i]) {
            fprintf(f, "%s\"%d\":%ld", first ? "" : ",", i, res->by_status[i]);
            first = false;
        }
    fprintf(f, "},\"connection_errors\":%ld,\"protocol_errors\":%ld,\"timeouts\":%ld",
            res->conn_err, res->proto_err, res->timeouts);
    for (int i = 0; i < 3; i++) {
        double sum = 0;

        for (size_t k = 0; k < s[i]->n; k++)
            sum += s[i]->v[k];
        fprintf(f, ",\"%s\":{\"samples\":%zu,\"mean\":", nm[i], s[i]->n);
        json_num(f, s[i]->n ? sum / (double)s[i]->n : NAN);
        for (unsigned j = 0; j < sizeof(pcts) / sizeof(*pcts); j++) {
            fprintf(f, ",\"%s\":", pn[j]);
            json_num(f, dp_bench_pct(s[i], pcts[j]));
        }
        fputc('}', f);
    }
    fputc('}', f);
}

/* y position of v ms on the log axis [lo, hi] (decades). */
static double svg_y(double v, double lo, double hi, double top, double bottom)
{
    double l = log10(v > lo ? v : lo);

    return bottom - (bottom - top) * (l - log10(lo)) / (log10(hi) - log10(lo));
}

int dp_bench_svg(FILE *f, struct dp_bench_res *res, const char *title)
{
    struct dp_bench_samples *s[] = { &res->ttft, &res->itl, &res->e2e };
    const char *nm[] = { "TTFT", "ITL", "E2E" }, *col[] = { "#1f77b4", "#2ca02c", "#d62728" };
    const double W = 800, H = 500, L = 80, R = 130, T = 50, B = 70, xmax = 4; /* 99.99 */
    const double xt[] = { 0, 90, 99, 99.9, 99.99 };
    double lo = INFINITY, hi = 0;

    /* y: log scale over whole decades, so TTFT and ITL (ms) stay readable
     * beside E2E (seconds); values below the lowest decade sit on it */
    for (int i = 0; i < 3; i++)
        if (s[i]->n) {
            double a = dp_bench_pct(s[i], 0), b = dp_bench_pct(s[i], 100);

            if (a > 0 && a < lo)
                lo = a;
            if (b > hi)
                hi = b;
        }
    if (!(hi > 0))
        hi = 1;
    if (!isfinite(lo) || lo > hi)
        lo = hi;
    lo = pow(10, floor(log10(lo)));
    hi = pow(10, ceil(log10(hi)));
    if (hi <= lo)
        hi = lo * 10;
    if (lo < hi * 1e-6) /* at most six decades */
        lo = hi * 1e-6;
    fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
               "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
               "font-family=\"sans-serif\" font-size=\"12\">\n"
               "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
               "<text x=\"%.0f\" y=\"25\" font-size=\"16\" text-anchor=\"middle\">",
            W, H, W / 2);
    for (const char *c = title; *c; c++) /* escape */
        fputs(*c == '<' ? "&lt;" : *c == '>' ? "&gt;" : *c == '&' ? "&amp;" : (char[2]){ *c, 0 }, f);
    fprintf(f, "</text>\n");
    /* axes, grid, ticks */
    for (unsigned i = 0; i < sizeof(xt) / sizeof(*xt); i++) {
        double x = L + (W - L - R) * (-log10(1 - xt[i] / 100)) / xmax;

        fprintf(f, "<line x1=\"%.1f\" y1=\"%.0f\" x2=\"%.1f\" y2=\"%.0f\" stroke=\"#ddd\"/>\n"
                   "<text x=\"%.1f\" y=\"%.0f\" text-anchor=\"middle\">%g%%</text>\n",
                x, T, x, H - B, x, H - B + 18, xt[i]);
    }
    for (double d = lo; d <= hi * 1.0001; d *= 10) {
        for (int m = 1; m < 10 && d * m <= hi * 1.0001; m++) {
            double py = svg_y(d * m, lo, hi, T, H - B);

            if (m == 1 || m == 2 || m == 5) /* decades labelled, 2 and 5 light */
                fprintf(f, "<line x1=\"%.0f\" y1=\"%.1f\" x2=\"%.0f\" y2=\"%.1f\" stroke=\"%s\"/>\n"
                           "<text x=\"%.0f\" y=\"%.1f\" text-anchor=\"end\"%s>%g</text>\n",
                        L, py, W - R, py, m == 1 ? "#ccc" : "#eee", L - 6, py + 4,
                        m == 1 ? "" : " fill=\"#888\" font-size=\"10\"", d * m);
        }
    }
    fprintf(f, "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"black\"/>\n"
               "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"black\"/>\n"
               "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"middle\">percentile (log scale of nines)</text>\n"
               "<text x=\"20\" y=\"%.0f\" text-anchor=\"middle\" transform=\"rotate(-90 20 %.0f)\">latency (ms, log scale)</text>\n",
            L, H - B, W - R, H - B, L, T, L, H - B, (L + W - R) / 2, H - 25, (T + H - B) / 2,
            (T + H - B) / 2);
    for (int i = 0, row = 0; i < 3; i++) {
        if (!s[i]->n)
            continue;
        fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\" points=\"", col[i]);
        for (int k = 0; k <= 200; k++) {
            double nines = xmax * k / 200.0, p = 100 * (1 - pow(10, -nines));
            double v = dp_bench_pct(s[i], p);

            fprintf(f, "%.1f,%.1f ", L + (W - L - R) * nines / xmax, svg_y(v, lo, hi, T, H - B));
        }
        /* legend: name, samples, and the two figures people look for */
        fprintf(f, "\"/>\n<text x=\"%.0f\" y=\"%.0f\" fill=\"%s\">%s (%zu)</text>\n"
                   "<text x=\"%.0f\" y=\"%.0f\" fill=\"%s\" font-size=\"10\">p50 %.3g p99 %.3g ms</text>\n",
                W - R + 10, T + 20 + 40 * row, col[i], nm[i], s[i]->n, W - R + 10,
                T + 34 + 40 * row, col[i], dp_bench_pct(s[i], 50), dp_bench_pct(s[i], 99));
        row++;
    }
    fprintf(f, "</svg>\n");
    return ferror(f) ? -EIO : 0;
}
