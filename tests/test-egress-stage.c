/*
 * test-egress-stage.c - the egress stage (egress/egr_stage.h) in a forked
 * child, with the test playing its neighbours through the real pipe in a
 * memfd data segment:
 *   ingress  real TCP connections (listen, connect, accept), the accepted
 *            socket handed over with shm_fdpass_send, request cells with the
 *            shm_req copy; reads conn[0] (KEEP / CLOSED)
 *            and, for a TLS connection without kernel TLS, ingress's side of
 *            tls_out / tls_ack (the chunks it would encrypt and send)
 *   batcher  START / TOKENS / FINISH / ERROR events with real SmolLM2 ids
 *            written into the cells; reads ctl (cancels)
 *   client   reads the HTTP response and checks it: chunked framing, SSE
 *            events in order with the right text (the same ids detokenized
 *            here), [DONE], JSON bodies with usage, error bodies.
 * Skips (77) without the model.
 */
#include "t_util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "egr_stage.h"
#include "eng_tok.h"
#include "shm_fdpass.h"
#include "shm_pipe.h"
#include "shm_seg.h"
#include "shm_stats.h"

#define GEN 7u
#define FAIL(...)                                                              \
    do {                                                                       \
        fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                   \
        fprintf(stderr, __VA_ARGS__);                                          \
        fputc('\n', stderr);                                                   \
        t_failures++;                                                          \
        return -1;                                                             \
    } while (0)
#define CHECK(c, ...)                                                          \
    do {                                                                       \
        if (!(c))                                                              \
            FAIL(__VA_ARGS__);                                                 \
    } while (0)

static struct {
    struct shm_seg seg;
    struct shm_pipe p;
    struct shm_cell_pool pool;     /* the test is the allocator (ingress) */
    shm_ring_t ev, ctl, conn;
    shm_ring_t tls_out, tls_ack;   /* ingress's TLS side (shm_pipe.h "TLS") */
    shm_bell_efd_t egr_bell;
    int egr_efd, ing_efd, sv[2], lfd, log_fd;
    uint16_t port;
    pid_t pid;
    volatile int *stop;
    eng_tok_t *tok;
    int32_t eog;
    uint32_t next_slot;
    uint64_t next_id;
    struct shm_stats stats;
    bool stats_ok;
    char stats_name[64];
    const char *model;
    uint64_t force_key;
} H;

struct req {
    shm_cell_ref_t cell;
    char *data;
    struct shm_req *q;
    uint64_t id;
};

static uint64_t now_ms(void) { return favo_now_ns() / 1000000ull; }

/* ------------------------------------------------------------- ingress */

/* A connected client and its conn key (the accepted end goes to egress). */
static int client_open_ex(uint64_t *key, int sndbuf, int *keep);
static int client_open(uint64_t *key) { return client_open_ex(key, 0, NULL); }
static int client_open_buf(uint64_t *key, int sndbuf) { return client_open_ex(key, sndbuf, NULL); }

/* sndbuf > 0: a small send buffer on the accepted end (a stalled reader
 * then stalls egress's sends quickly). */
static int client_open_ex(uint64_t *key, int sndbuf, int *keep)
{
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(H.port) };
    struct timeval tv = { 5, 0 };
    int c, s, rc;

    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c < 0 || connect(c, (struct sockaddr *)&a, sizeof(a)) < 0)
        return -1;
    setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    s = accept4(H.lfd, NULL, NULL, SOCK_CLOEXEC);
    if (s < 0)
        return -1;
    if (sndbuf > 0)
        setsockopt(s, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
    H.next_slot++;
    *key = (0ull << 48) | ((uint64_t)H.next_slot << 24) | ((H.next_slot * 7u + 1u) & 0xffffffu);
    if (H.force_key) { /* a chosen (worker, slot, generation) */
        *key = H.force_key;
        H.force_key = 0;
    }
    rc = shm_fdpass_send(H.sv[0], s, key, sizeof(*key));
    if (keep) /* ingress's copy, as ingress keeps it */
        *keep = s;
    else
        close(s); /* egress holds it now */
    if (rc) {
        close(c);
        return -1;
    }
    return c;
}

/* Logprobs the next req_make asks for (shm_req.logprobs, top_logprobs). */
static uint8_t g_lp_on, g_lp_top;
/* tokens() leaves this generated id's logprob record unwritten. */
static uint32_t g_lp_hole = UINT32_MAX;

/* A request cell as ingress leaves it: request bytes (with the stop
 * strings in them), prompt ids, the shm_req copy. */
static int req_make(struct req *r, uint64_t key, int route, unsigned flags, uint32_t max_tokens,
                    const char *stop)
{
    char body[512];
    int n = snprintf(body, sizeof(body),
                     "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n\r\n{\"stop\":[\"%s\"]}",
                     stop ? stop : "");
    uint32_t tok_off = ((uint32_t)n + 63u) & ~63u, ntok = 5;
    size_t need = shm_pipe_cell_need_lp(tok_off, ntok, max_tokens, flags & SHM_REQ_F_STREAM,
                                        shm_pipe_lp_alts(g_lp_on, g_lp_top));
    struct shm_req d;
    size_t size;
    void *data;

    memset(r, 0, sizeof(*r));
    if (need < 64 << 10)
        need = 60 << 10; /* leave room for a slow reader's backlog */
    CHECK(shm_cell_alloc(&H.pool, need, &r->cell) == 0, "cell alloc");
    CHECK(shm_cell_get(&H.pool, r->cell, SHM_CELL_INGRESS, &data, &size) == 0, "cell get");
    r->data = data;
    memcpy(r->data, body, (size_t)n);
    for (uint32_t i = 0; i < ntok; i++)
        ((int32_t *)(r->data + tok_off))[i] = 100 + (int32_t)i;
    memset(&d, 0, sizeof(d));
    d.magic = SHM_REQ_MAGIC;
    d.kind = SHM_REQ_SUBMIT;
    d.route = (uint8_t)route;
    d.flags = (uint8_t)flags;
    d.worker = 0;
    d.cell = r->cell;
    d.conn = key;
    d.recv_ns = favo_now_ns();
    d.created = 1700000000;
    d.tok_off = tok_off;
    d.ntok = ntok;
    d.max_tokens = max_tokens;
    d.resp_off = (uint32_t)shm_pipe_resp_off(tok_off, ntok, max_tokens);
    d.logprobs = g_lp_on;
    d.top_logprobs = g_lp_top;
    if (stop) {
        const char *at = strstr(body, "[\"") + 2;
        d.nstop = 1;
        d.stop[0].off = (uint32_t)(at - body);
        d.stop[0].len = (uint32_t)strlen(stop);
    }
    d.reqid_len = (uint32_t)snprintf(d.reqid, sizeof(d.reqid), "req-test%04u", H.next_slot);
    snprintf(d.tenant_name, sizeof(d.tenant_name), "acme");
    memcpy(r->data + d.resp_off, &d, sizeof(d));
    r->q = (struct shm_req *)(r->data + d.resp_off);
    CHECK(shm_cell_set_len(&H.pool, r->cell, SHM_CELL_INGRESS, d.resp_off + SHM_PIPE_REQ_COPY) == 0,
          "set_len");
    CHECK(shm_cell_give(&H.pool, r->cell, SHM_CELL_INGRESS, SHM_CELL_BATCHER) == 0, "give");
    r->id = ++H.next_id;
    return 0;
}

/* ------------------------------------------------------------- batcher */

static int ev_send(const struct req *r, unsigned kind, uint32_t n_gen, unsigned reason,
                   unsigned status, uint32_t retry)
{
    struct shm_ev e = { .cell = r->cell, .id = r->id, .kind = kind, .n_gen = n_gen,
                        .reason = (uint16_t)reason, .status = (uint16_t)status,
                        .retry_after = retry, .t_ns = favo_now_ns() };
    uint64_t t0 = now_ms();

    if (kind == SHM_EV_FINISH || kind == SHM_EV_ERROR)
        CHECK(shm_cell_give(&H.pool, r->cell, SHM_CELL_BATCHER, SHM_CELL_EGRESS) == 0, "give egress");
    while (shm_ring_enqueue(&H.ev, &e) < 0) {
        shm_bell_efd_ring(&H.egr_bell);
        CHECK(now_ms() - t0 < 5000, "ev ring stays full");
        usleep(200);
    }
    shm_bell_efd_ring(&H.egr_bell);
    return 0;
}

/* Write ids [from, to) into the cell, then TOKENS n_gen = to (pipe inv 2). */
/* Generated id k's logprob record as the batcher would write it:
 * logprob -0.125 k, alternative j = id + j with -0.125 k - j. */
static void lp_write(const struct req *r, uint32_t k, int32_t id)
{
    uint32_t n_alt = shm_pipe_lp_alts(r->q->logprobs, r->q->top_logprobs);
    struct shm_lp_rec rec[1 + SHM_PIPE_LP_MAX_ALTS];
    size_t size;
    void *data;

    if (!n_alt || k == g_lp_hole || shm_cell_bytes(&H.pool, r->cell, &data, &size))
        return;
    rec[0] = (struct shm_lp_rec){ id, -0.125f * (float)k };
    for (uint32_t j = 0; j < n_alt; j++)
        rec[1 + j] = (struct shm_lp_rec){ id + (int32_t)j, -0.125f * (float)k - (float)j };
    memcpy((char *)data + shm_pipe_lp_at(size, n_alt, k), rec, sizeof(rec[0]) * (1 + n_alt));
}

static int tokens(const struct req *r, const int32_t *ids, uint32_t from, uint32_t to)
{
    int32_t *gen = (int32_t *)(r->data + r->q->tok_off) + r->q->ntok;

    for (uint32_t k = from; k < to; k++) {
        gen[k] = ids[k];
        lp_write(r, k, ids[k]);
    }
    return ev_send(r, SHM_EV_TOKENS, to, 0, 0, 0);
}

static int conn_msg(struct shm_conn_msg *m)
{
    uint64_t t0 = now_ms();

    while (shm_ring_dequeue_burst(&H.conn, m, 1) != 1) {
        CHECK(now_ms() - t0 < 5000, "no conn message");
        usleep(200);
    }
    return 0;
}

static int ctl_msg(struct shm_ctl *m, unsigned ms)
{
    uint64_t t0 = now_ms();

    while (shm_ring_dequeue_burst(&H.ctl, m, 1) != 1) {
        if (now_ms() - t0 >= ms)
            return 1;
        usleep(200);
    }
    return 0;
}

static int cell_freed(const struct req *r)
{
    uint64_t t0 = now_ms();
    void *d;

    while (shm_cell_bytes(&H.pool, r->cell, &d, NULL) == 0) {
        CHECK(now_ms() - t0 < 5000, "cell not freed");
        usleep(200);
    }
    shm_cell_drain(&H.pool);
    return 0;
}

/* -------------------------------------------------------------- client */

struct resp {
    int status;
    bool chunked, keep_alive;
    long content_length;
    char head[2048];
    char *body;
    size_t body_len;
    size_t len;
    size_t off; /* bytes of buf belonging to later responses start here */
    char buf[1 << 18];
    char bodyz[1 << 18]; /* the body, de-chunked, NUL-terminated */
};

static const char *hdr(const struct resp *r, const char *name)
{
    static char val[256];
    size_t nl = strlen(name);

    for (const char *p = strstr(r->head, "\r\n"); p && p[2]; p = strstr(p + 2, "\r\n")) {
        if (!strncasecmp(p + 2, name, nl) && p[2 + nl] == ':') {
            const char *v = p + 3 + nl, *e = strstr(v, "\r\n");
            while (*v == ' ')
                v++;
            snprintf(val, sizeof(val), "%.*s", (int)(e - v), v);
            return val;
        }
    }
    return NULL;
}

static int fill(int fd, struct resp *r)
{
    ssize_t n;

    if (r->len == sizeof(r->buf))
        return -1;
    n = recv(fd, r->buf + r->len, sizeof(r->buf) - r->len, 0);
    if (n <= 0)
        return -1;
    r->len += (size_t)n;
    return 0;
}

/* T_EGR_DUMP=DIR: every response read is also written raw to
 * DIR/<case>-<n>.http, for test-egress-stage-sdk.py (the OpenAI SDK's
 * parsers on the stage's real bytes). */
static const char *dump_case = "setup";
static unsigned dump_n;

static void dump(const struct resp *r, size_t len)
{
    const char *dir = getenv("T_EGR_DUMP");
    char path[1024];
    FILE *f;

    if (!dir || !*dir)
        return;
    snprintf(path, sizeof(path), "%s/%s-%u.http", dir, dump_case, dump_n++);
    f = fopen(path, "wb");
    if (!f || fwrite(r->buf, 1, len, f) != len)
        fprintf(stderr, "note: dump %s failed\n", path);
    if (f)
        fclose(f);
}

/* Read one response; bytes after it stay in r->buf (keep-alive). The body
 * is de-chunked into r->body (NUL-terminated). */
static int read_resp(int fd, struct resp *r)
{
    char *e;
    size_t h, at;
    const char *v;

    if (r->off) { /* keep what followed the previous response */
        memmove(r->buf, r->buf + r->off, r->len - r->off);
        r->len -= r->off;
        r->off = 0;
    }
    while (!(e = memmem(r->buf, r->len, "\r\n\r\n", 4)))
        CHECK(fill(fd, r) == 0, "EOF/timeout before the head end");
    h = (size_t)(e - r->buf) + 4;
    CHECK(h < sizeof(r->head), "head too long");
    memcpy(r->head, r->buf, h);
    r->head[h] = 0;
    CHECK(sscanf(r->head, "HTTP/1.1 %d", &r->status) == 1, "status line: %.40s", r->head);
    v = hdr(r, "Transfer-Encoding");
    r->chunked = v && !strcmp(v, "chunked");
    v = hdr(r, "Connection");
    r->keep_alive = v && !strcmp(v, "keep-alive");
    v = hdr(r, "Content-Length");
    r->content_length = v ? atol(v) : -1;
    r->body = r->bodyz;
    r->body_len = 0;
    if (!r->chunked) {
        CHECK(r->content_length >= 0, "neither chunked nor Content-Length");
        while (r->len - h < (size_t)r->content_length)
            CHECK(fill(fd, r) == 0, "EOF in the body");
        r->body_len = (size_t)r->content_length;
        memcpy(r->body, r->buf + h, r->body_len);
        r->body[r->body_len] = 0;
        r->off = h + r->body_len;
        dump(r, r->off);
        return 0;
    }
    /* chunks: "hex\r\n data \r\n" ... "0\r\n\r\n" */
    at = h;
    for (;;) {
        char *crlf;
        unsigned long sz;
        while (!(crlf = memmem(r->buf + at, r->len - at, "\r\n", 2)))
            CHECK(fill(fd, r) == 0, "EOF in a chunk size");
        sz = strtoul(r->buf + at, NULL, 16);
        CHECK(crlf > r->buf + at, "empty chunk size line");
        at = (size_t)(crlf - r->buf) + 2;
        while (r->len - at < sz + 2)
            CHECK(fill(fd, r) == 0, "EOF in chunk data");
        CHECK(!memcmp(r->buf + at + sz, "\r\n", 2), "chunk data not followed by CRLF");
        if (sz == 0)
            break;
        CHECK(sz > 0, "bad size");
        CHECK(r->body_len + sz < sizeof(r->bodyz), "body too long");
        memcpy(r->body + r->body_len, r->buf + at, sz);
        r->body_len += sz;
        at += sz + 2;
    }
    r->off = at + 2;
    r->body[r->body_len] = 0;
    dump(r, r->off);
    return 0;
}

/* The JSON string value after each `"key":"` in s, concatenated (still
 * escaped). Returns the count of occurrences. */
static int collect(const char *s, size_t len, const char *key, char *out, size_t cap)
{
    char pat[64];
    size_t o = 0, pl;
    int n = 0;
    const char *p = s, *end = s + len;

    pl = (size_t)snprintf(pat, sizeof(pat), "\"%s\":\"", key);
    while ((p = memmem(p, (size_t)(end - p), pat, pl)) != NULL) {
        p += pl;
        while (p < end && *p != '"') {
            if (*p == '\\' && o + 1 < cap)
                out[o++] = *p++;
            if (o + 1 < cap)
                out[o++] = *p;
            p++;
        }
        n++;
    }
    out[o] = 0;
    return n;
}

/* The text the ids stand for, JSON-escaped (escaping is per character,
 * so the escaped fragments of the stream concatenate to this). */
static int expect_text(const int32_t *ids, size_t n, size_t cut, char *out, size_t cap)
{
    char raw[8192];
    int64_t len = eng_tok_decode(H.tok, ids, n, 0, raw, sizeof(raw));
    int e;

    if (len < 0 || (size_t)len > sizeof(raw))
        return -1;
    if (cut < (size_t)len)
        len = (int64_t)cut;
    /* a text ended by length inside a character: detok flushes U+FFFD */
    for (int64_t i = len - 1; i >= 0 && i >= len - 4; i--) {
        unsigned char ch = (unsigned char)raw[i];
        if ((ch & 0xc0) == 0x80)
            continue;
        if (ch >= 0xc0 && len - i < (ch >= 0xf0 ? 4 : ch >= 0xe0 ? 3 : 2)) {
            memcpy(raw + i, "\xef\xbf\xbd", 3);
            len = i + 3;
        }
        break;
    }
    e = egr_json_str(out, cap - 1, raw, (size_t)len);
    if (e < 0)
        return -1;
    out[e] = 0;
    return 0;
}

static size_t encode(const char *text, int32_t *ids, size_t cap)
{
    int64_t n = eng_tok_encode(H.tok, text, strlen(text), 0, ids, cap);
    return n < 0 || (size_t)n > cap ? 0 : (size_t)n;
}

static const char *TEXT = "Hello world! The quick brown fox jumps over the lazy dog. "
                          "Ünïcödé ✓ \"quoted\" \\ back\nslash and a tab\there.";

/* --------------------------------------------------------------- cases */

static struct resp R; /* large: static */
static int spawn(void);
static int wait_up(void);
static int finish(void);

/* A stream: the role chunk, then the content, finish "stop", usage,
 * [DONE], chunk end; KEEP; the cell freed. */
static int t_stream_chat(void)
{
    int32_t ids[256];
    size_t n = encode(TEXT, ids, 250);
    char want[4096], got[4096];
    struct shm_conn_msg m;
    struct req rq;
    uint64_t key;
    int fd;

    CHECK(n > 10, "encode");
    ids[n++] = H.eog;
    CHECK((fd = client_open(&key)) >= 0, "client");
    if (req_make(&rq, key, SHM_REQ_CHAT, SHM_REQ_F_STREAM | SHM_REQ_F_USAGE, 512, NULL))
        return -1;
    if (ev_send(&rq, SHM_EV_START, 0, 0, 0, 0) || tokens(&rq, ids, 0, 3) ||
        tokens(&rq, ids, 3, 3) /* a replay: harmless */ || tokens(&rq, ids, 3, n / 2) ||
        tokens(&rq, ids, n / 2, n) || ev_send(&rq, SHM_EV_FINISH, (uint32_t)n, SHM_FIN_STOP, 0, 0))
        return -1;
    memset(&R, 0, offsetof(struct resp, buf));
    if (read_resp(fd, &R))
        return -1;
    CHECK(R.status == 200 && R.chunked && R.keep_alive, "head: %s", R.head);
    CHECK(!strcmp(hdr(&R, "Content-Type"), "text/event-stream; charset=utf-8"), "ctype");
    CHECK(hdr(&R, "X-Request-Id") && !strncmp(hdr(&R, "X-Request-Id"), "req-test", 8), "rid");
    CHECK(!strncmp(R.body, "data: {\"id\":\"chatcmpl-req-test", 30), "first event: %.80s", R.body);
    CHECK(strstr(R.body, "\"delta\":{\"role\":\"assistant\",\"content\":\"\"}") != NULL, "role chunk");
    CHECK(expect_text(ids, n - 1, SIZE_MAX, want, sizeof(want)) == 0, "expect");
    CHECK(collect(R.body, R.body_len, "content", got, sizeof(got)) >= 2, "content events");
    CHECK(!strcmp(got, want), "text\n got: %s\nwant: %s", got, want);
    CHECK(strstr(R.body, "\"finish_reason\":\"stop\"") != NULL, "finish stop");
    CHECK(strstr(R.body, "\"model\":\"test-model\"") && strstr(R.body, "\"system_fingerprint\":\"fp_test\""),
          "model / fingerprint");
    {
        char u[128];
        snprintf(u, sizeof(u), "\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":%zu,", n);
        CHECK(strstr(R.body, u) != NULL, "usage %s in %s", u, R.body + R.body_len - 300);
    }
    CHECK(R.body_len > 16 && !strcmp(R.body + R.body_len - 14, "data: [DONE]\n\n"), "[DONE] last");
    if (conn_msg(&m))
        return -1;
    CHECK(m.conn == key && m.what == SHM_CONN_KEEP, "conn msg %#llx %u", (unsigned long long)m.conn,
          m.what);
    if (cell_freed(&rq))
        return -1;
    close(fd);
    return 0;
}

/* Non-stream completions: one JSON body with Content-Length, the text,
 * finish "length" (max_tokens reached), usage. */
static int t_body_completion(void)
{
    int32_t ids[256];
    size_t n = encode(TEXT, ids, 250);
    char want[4096], got[4096], u[160];
    struct shm_conn_msg m;
    struct req rq;
    uint64_t key;
    int fd;

    CHECK((fd = client_open(&key)) >= 0, "client");
    if (req_make(&rq, key, SHM_REQ_COMPLETIONS, 0, (uint32_t)n, NULL))
        return -1;
    if (ev_send(&rq, SHM_EV_START, 0, 0, 0, 0) || tokens(&rq, ids, 0, 7) ||
        tokens(&rq, ids, 7, n) || ev_send(&rq, SHM_EV_FINISH, (uint32_t)n, SHM_FIN_LENGTH, 0, 0))
        return -1;
    memset(&R, 0, offsetof(struct resp, buf));
    if (read_resp(fd, &R))
        return -1;
    CHECK(R.status == 200 && !R.chunked && R.keep_alive && R.content_length > 0, "head: %s", R.head);
    CHECK(!strcmp(hdr(&R, "Content-Type"), "application/json"), "ctype");
    CHECK(!strncmp(R.body, "{\"id\":\"cmpl-req-test", 20) &&
              strstr(R.body, "\"object\":\"text_completion\"") != NULL,
          "body: %.80s", R.body);
    CHECK(expect_text(ids, n, SIZE_MAX, want, sizeof(want)) == 0, "expect");
    CHECK(collect(R.body, R.body_len, "text", got, sizeof(got)) == 1, "one text");
    CHECK(!strcmp(got, want), "text\n got: %s\nwant: %s", got, want);
    CHECK(strstr(R.body, "\"finish_reason\":\"length\"") != NULL, "finish length");
    snprintf(u, sizeof(u),
             "\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":%zu,\"total_tokens\":%zu}}", n,
             n + 5);
    CHECK(R.body_len > strlen(u) && !strcmp(R.body + R.body_len - strlen(u), u), "usage: %s",
          R.body);
    if (conn_msg(&m))
        return -1;
    CHECK(m.conn == key && m.what == SHM_CONN_KEEP, "conn msg");
    if (cell_freed(&rq))
        return -1;
    close(fd);
    return 0;
}

/* A stop string: the text before it, finish "stop", ONE ctl cancel for
 * the request; the batcher's FINISH CANCELLED then ends it with KEEP. */
static int t_stop_string(void)
{
    int32_t ids[256];
    size_t n = encode(TEXT, ids, 250);
    char raw[4096], want[4096], got[4096];
    struct shm_conn_msg m;
    struct shm_ctl c;
    struct req rq;
    uint64_t key;
    int64_t rl;
    int fd;

    rl = eng_tok_decode(H.tok, ids, n, 0, raw, sizeof(raw) - 1);
    CHECK(rl > 0 && (size_t)rl < sizeof(raw), "decode");
    raw[rl] = 0;
    CHECK(strstr(raw, "brown fox"), "stop in text");
    CHECK((fd = client_open(&key)) >= 0, "client");
    if (req_make(&rq, key, SHM_REQ_COMPLETIONS, SHM_REQ_F_STREAM, 512, "brown fox"))
        return -1;
    if (ev_send(&rq, SHM_EV_START, 0, 0, 0, 0) || tokens(&rq, ids, 0, 4) || tokens(&rq, ids, 4, n))
        return -1;
    CHECK(ctl_msg(&c, 5000) == 0, "no ctl cancel for the stop string");
    CHECK(c.cell == rq.cell && c.id == rq.id && c.kind == 1, "ctl names the request");
    if (ev_send(&rq, SHM_EV_FINISH, (uint32_t)n, SHM_FIN_CANCELLED, 0, 0))
        return -1;
    memset(&R, 0, offsetof(struct resp, buf));
    if (read_resp(fd, &R))
        return -1;
    CHECK(R.status == 200 && R.chunked, "head");
    CHECK(expect_text(ids, n, (size_t)(strstr(raw, "brown fox") - raw), want, sizeof(want)) == 0,
          "expect");
    CHECK(collect(R.body, R.body_len, "text", got, sizeof(got)) >= 2, "text events");
    CHECK(!strcmp(got, want), "text\n got: %s\nwant: %s", got, want);
    CHECK(strstr(R.body, "\"finish_reason\":\"stop\"") && !strstr(R.body, "\"usage\""),
          "finish stop, no usage");
    if (conn_msg(&m))
        return -1;
    CHECK(m.conn == key && m.what == SHM_CONN_KEEP, "conn msg");
    if (cell_freed(&rq))
        return -1;
    CHECK(ctl_msg(&c, 100) == 1, "a second cancel");
    close(fd);
    return 0;
}

/* ERROR before START: 503 with Retry-After, an OpenAI error body,
 * keep-alive, KEEP. */
static int t_error_503(void)
{
    struct shm_conn_msg m;
    struct req rq;
    uint64_t key;
    int fd;

    CHECK((fd = client_open(&key)) >= 0, "client");
    if (req_make(&rq, key, SHM_REQ_CHAT, SHM_REQ_F_STREAM, 64, NULL) ||
        ev_send(&rq, SHM_EV_ERROR, 0, 0, 503, 7))
        return -1;
    memset(&R, 0, offsetof(struct resp, buf));
    if (read_resp(fd, &R))
        return -1;
    CHECK(R.status == 503 && !R.chunked && R.keep_alive, "head: %s", R.head);
    CHECK(hdr(&R, "Retry-After") && !strcmp(hdr(&R, "Retry-After"), "7"), "Retry-After");
    CHECK(!strcmp(hdr(&R, "Content-Type"), "application/json"), "ctype");
    CHECK(hdr(&R, "X-Request-Id") != NULL, "request id echoed");
    CHECK(!strncmp(R.body, "{\"error\":{\"message\":\"", 21) &&
              strstr(R.body, "\"type\":\"server_error\",\"param\":null,\"code\":\"server_overloaded\"}}"),
          "body: %s", R.body);
    if (conn_msg(&m))
        return -1;
    CHECK(m.conn == key && m.what == SHM_CONN_KEEP, "conn msg");
    if (cell_freed(&rq))
        return -1;
    close(fd);
    return 0;
}

/* Keep-alive: three requests on one connection (a body, a stream, a 413
 * with Connection: close), one socket handoff, three responses in order,
 * KEEP, KEEP, CLOSED; then the connection is closed by egress. */
static int t_keepalive(void)
{
    int32_t ids[256];
    size_t n = encode("One two three four five six.", ids, 250);
    char want[1024], got[1024];
    struct shm_conn_msg m;
    struct req a, b, c;
    uint64_t key;
    int fd;

    CHECK((fd = client_open(&key)) >= 0, "client");
    /* 1: non-stream chat */
    if (req_make(&a, key, SHM_REQ_CHAT, 0, 64, NULL) || ev_send(&a, SHM_EV_START, 0, 0, 0, 0) ||
        tokens(&a, ids, 0, n) || ev_send(&a, SHM_EV_FINISH, (uint32_t)n, SHM_FIN_LENGTH, 0, 0))
        return -1;
    memset(&R, 0, offsetof(struct resp, buf));
    if (read_resp(fd, &R) || conn_msg(&m))
        return -1;
    CHECK(R.status == 200 && !R.chunked && R.keep_alive, "1: head");
    CHECK(strstr(R.body, "\"object\":\"chat.completion\"") &&
              strstr(R.body, "\"message\":{\"role\":\"assistant\",\"content\":\""),
          "1: body %s", R.body);
    CHECK(expect_text(ids, n, SIZE_MAX, want, sizeof(want)) == 0 &&
              collect(R.body, R.body_len, "content", got, sizeof(got)) == 1 && !strcmp(got, want),
          "1: text %s", got);
    CHECK(m.conn == key && m.what == SHM_CONN_KEEP, "1: KEEP");
    if (cell_freed(&a))
        return -1;
    /* 2: stream chat on the same connection (no new handoff) */
    ids[n] = H.eog;
    if (req_make(&b, key, SHM_REQ_CHAT, SHM_REQ_F_STREAM, 64, NULL) ||
        ev_send(&b, SHM_EV_START, 0, 0, 0, 0) || tokens(&b, ids, 0, (uint32_t)n + 1) ||
        ev_send(&b, SHM_EV_FINISH, (uint32_t)n + 1, SHM_FIN_STOP, 0, 0))
        return -1;
    if (read_resp(fd, &R) || conn_msg(&m))
        return -1;
    CHECK(R.status == 200 && R.chunked && R.keep_alive, "2: head");
    CHECK(collect(R.body, R.body_len, "content", got, sizeof(got)) >= 2 && !strcmp(got, want),
          "2: text %s", got);
    CHECK(m.conn == key && m.what == SHM_CONN_KEEP, "2: KEEP");
    if (cell_freed(&b))
        return -1;
    /* 3: refused 413, the request asked to close */
    if (req_make(&c, key, SHM_REQ_CHAT, SHM_REQ_F_CLOSE, 64, NULL) ||
        ev_send(&c, SHM_EV_ERROR, 0, 0, 413, 0))
        return -1;
    if (read_resp(fd, &R) || conn_msg(&m))
        return -1;
    CHECK(R.status == 413 && !R.keep_alive && !hdr(&R, "Retry-After"), "3: head %s", R.head);
    CHECK(strstr(R.body, "\"type\":\"invalid_request_error\"") &&
              strstr(R.body, "\"code\":\"context_length_exceeded\""),
          "3: body %s", R.body);
    CHECK(m.conn == key && m.what == SHM_CONN_CLOSED, "3: CLOSED");
    if (cell_freed(&c))
        return -1;
    CHECK(R.off == R.len && recv(fd, got, 1, 0) == 0, "3: EOF after the last response");
    close(fd);
    return 0;
}

/* The client resets the connection mid-stream: egress's send fails, it
 * cancels once through ctl, keeps the cell until FINISH, then frees it and
 * says CLOSED. */
static int t_client_gone(void)
{
    int32_t ids[256];
    size_t n = encode(TEXT, ids, 250);
    struct linger lg = { 1, 0 };
    struct shm_conn_msg m;
    struct shm_ctl c;
    struct req rq;
    uint32_t sent = 0;
    uint64_t key, t0;
    int fd, got = 1;

    CHECK((fd = client_open(&key)) >= 0, "client");
    if (req_make(&rq, key, SHM_REQ_CHAT, SHM_REQ_F_STREAM, 4000, NULL) ||
        ev_send(&rq, SHM_EV_START, 0, 0, 0, 0))
        return -1;
    memset(&R, 0, offsetof(struct resp, buf));
    while (!memmem(R.buf, R.len, "\r\n\r\n", 4))
        CHECK(fill(fd, &R) == 0, "head");
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    close(fd); /* RST */
    for (t0 = now_ms(); got && sent + 20 <= 4000 && now_ms() - t0 < 5000;) {
        int32_t chunk[20];
        for (unsigned k = 0; k < 20; k++)
            chunk[k] = ids[(sent + k) % n];
        int32_t *gen = (int32_t *)(rq.data + rq.q->tok_off) + rq.q->ntok;
        memcpy(gen + sent, chunk, sizeof(chunk));
        sent += 20;
        if (ev_send(&rq, SHM_EV_TOKENS, sent, 0, 0, 0))
            return -1;
        got = ctl_msg(&c, 20);
    }
    CHECK(got == 0, "no ctl cancel after the client left (%u ids sent)", sent);
    CHECK(c.cell == rq.cell && c.id == rq.id, "ctl names the request");
    if (ev_send(&rq, SHM_EV_TOKENS, sent, 0, 0, 0)) /* more events: still held */
        return -1;
    usleep(20000);
    {
        void *d;
        CHECK(shm_cell_bytes(&H.pool, rq.cell, &d, NULL) == 0, "cell freed before FINISH");
    }
    if (ev_send(&rq, SHM_EV_FINISH, sent, SHM_FIN_CANCELLED, 0, 0) || conn_msg(&m))
        return -1;
    CHECK(m.conn == key && m.what == SHM_CONN_CLOSED, "conn msg %u", m.what);
    if (cell_freed(&rq))
        return -1;
    CHECK(ctl_msg(&c, 50) == 1, "a second cancel");
    return 0;
}

/* A client that does not read: the send stalls, the write timeout (1.5 s
 * here) cancels and closes. */
static int t_write_timeout(void)
{
    int32_t ids[256];
    size_t n = encode(TEXT, ids, 250);
    struct shm_conn_msg m;
    struct shm_ctl c;
    struct req rq;
    uint64_t key;
    int fd, small = 4096;
    int32_t *gen;

    CHECK((fd = client_open_buf(&key, small)) >= 0, "client");
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    if (req_make(&rq, key, SHM_REQ_COMPLETIONS, SHM_REQ_F_STREAM, 3000, NULL) ||
        ev_send(&rq, SHM_EV_START, 0, 0, 0, 0))
        return -1;
    gen = (int32_t *)(rq.data + rq.q->tok_off) + rq.q->ntok;
    for (uint32_t k = 0; k < 3000; k++)
        gen[k] = ids[k % n];
    for (uint32_t k = 100; k <= 3000; k += 100)
        if (ev_send(&rq, SHM_EV_TOKENS, k, 0, 0, 0))
            return -1;
    CHECK(ctl_msg(&c, 6000) == 0, "no cancel after the write timeout");
    CHECK(c.cell == rq.cell, "ctl names the request");
    if (ev_send(&rq, SHM_EV_FINISH, 3000, SHM_FIN_CANCELLED, 0, 0) || conn_msg(&m))
        return -1;
    CHECK(m.conn == key && m.what == SHM_CONN_CLOSED, "conn msg");
    if (cell_freed(&rq))
        return -1;
    close(fd);
    return 0;
}

/* Many streams at once, their events interleaved; every client gets its
 * own text, every cell comes back, one KEEP each. */
#define NMANY 24
static int t_many(void)
{
    static struct resp rr; /* one at a time, after all events */
    int32_t ids[256];
    size_t n = encode(TEXT, ids, 250);
    struct req rq[NMANY];
    uint64_t key[NMANY];
    int fd[NMANY], keeps = 0;
    uint32_t len[NMANY], done[NMANY] = { 0 };
    char want[4096], got[4096];
    struct shm_conn_msg m;
    bool left = true;

    for (int i = 0; i < NMANY; i++) {
        len[i] = 5 + (uint32_t)(i * 7) % (uint32_t)(n - 5);
        CHECK((fd[i] = client_open(&key[i])) >= 0, "client %d", i);
        if (req_make(&rq[i], key[i], i % 2 ? SHM_REQ_CHAT : SHM_REQ_COMPLETIONS,
                     SHM_REQ_F_STREAM | (i % 3 ? SHM_REQ_F_USAGE : 0), len[i], NULL) ||
            ev_send(&rq[i], SHM_EV_START, 0, 0, 0, 0))
            return -1;
    }
    while (left) { /* round robin, 3 ids a step */
        left = false;
        for (int i = 0; i < NMANY; i++) {
            uint32_t to = FAVO_MIN(done[i] + 3, len[i]);
            if (done[i] == len[i])
                continue;
            if (tokens(&rq[i], ids, done[i], to))
                return -1;
            done[i] = to;
            if (to == len[i] && ev_send(&rq[i], SHM_EV_FINISH, to, SHM_FIN_LENGTH, 0, 0))
                return -1;
            left = true;
        }
    }
    for (int i = 0; i < NMANY; i++) {
        memset(&rr, 0, offsetof(struct resp, buf));
        if (read_resp(fd[i], &rr))
            return -1;
        CHECK(rr.status == 200 && rr.chunked, "%d: head", i);
        CHECK(expect_text(ids, len[i], SIZE_MAX, want, sizeof(want)) == 0, "expect");
        collect(rr.body, rr.body_len, i % 2 ? "content" : "text", got, sizeof(got));
        CHECK(!strcmp(got, want), "%d: text\n got: %s\nwant: %s", i, got, want);
        CHECK(strstr(rr.body, "\"finish_reason\":\"length\"") != NULL, "%d: length", i);
        CHECK(!(i % 3) == !strstr(rr.body, "\"usage\":{"), "%d: usage as asked", i);
        close(fd[i]);
    }
    for (int i = 0; i < NMANY; i++) {
        if (conn_msg(&m))
            return -1;
        keeps += m.what == SHM_CONN_KEEP;
    }
    CHECK(keeps == NMANY, "KEEP x %d", keeps);
    for (int i = 0; i < NMANY; i++)
        if (cell_freed(&rq[i]))
            return -1;
    return 0;
}

/* The access log: one JSON line per response, metadata only. */
static int t_access_log(void)
{
    static char buf[65536];
    ssize_t n = pread(H.log_fd, buf, sizeof(buf) - 1, 0);
    int lines = 0, s200 = 0, s503 = 0, s413 = 0, s499 = 0;

    CHECK(n > 0, "empty log");
    buf[n] = 0;
    for (char *p = buf; (p = strchr(p, '\n')) != NULL; p++)
        lines++;
    for (char *p = buf; (p = strstr(p, "\"status\":")) != NULL; p++) {
        int st = atoi(p + 9);
        s200 += st == 200, s503 += st == 503, s413 += st == 413, s499 += st == 499;
    }
    /* 2 + 1 + 1 + 3 + 1 + 1 + NMANY */
    CHECK(lines == 9 + NMANY, "%d lines", lines);
    CHECK(s200 == 5 + NMANY && s503 == 1 && s413 == 1 && s499 == 2, "statuses %d %d %d %d", s200,
          s503, s413, s499);
    CHECK(strstr(buf, "\"tenant\":\"acme\"") && strstr(buf, "\"model\":\"test-model\""), "fields");
    CHECK(!strstr(buf, "quick") && !strstr(buf, "brown") && !strstr(buf, "Hello"),
          "generated text in the access log");
    return 0;
}

/* The stats the stage published: requests by status, latencies. */
static int t_stats(void)
{
    struct shm_stats_snap *snap = calloc(1, sizeof(*snap));
    int rc = 0;

    if (!H.stats_ok) {
        free(snap);
        return 0;
    }
    usleep(120000); /* a tick flushes */
    if (!snap || shm_stats_snapshot(&H.stats, snap)) {
        free(snap);
        FAIL("snapshot");
    }
    if (snap->counters[SHM_C_REQ_OK] != 5 + NMANY || snap->counters[SHM_C_REQ_ERROR] != 2 ||
        snap->counters[SHM_C_REQ_CANCELLED] != 1 || snap->counters[SHM_C_REQ_TIMEOUT] != 1 ||
        snap->hist[SHM_H_TTFT].count != 5 + NMANY || snap->hist[SHM_H_E2E].count != 5 + NMANY ||
        snap->hist[SHM_H_ITL].count == 0 || snap->hist[SHM_H_QUEUE].count != 0) {
        fprintf(stderr, "FAIL %s:%d: stats ok %llu err %llu cancel %llu tmo %llu ttft %llu e2e %llu\n",
                __FILE__, __LINE__, (unsigned long long)snap->counters[SHM_C_REQ_OK],
                (unsigned long long)snap->counters[SHM_C_REQ_ERROR],
                (unsigned long long)snap->counters[SHM_C_REQ_CANCELLED],
                (unsigned long long)snap->counters[SHM_C_REQ_TIMEOUT],
                (unsigned long long)snap->hist[SHM_H_TTFT].count,
                (unsigned long long)snap->hist[SHM_H_E2E].count);
        t_failures++;
        rc = -1;
    }
    free(snap);
    return rc;
}

/* ERROR after a stream's head left (e.g. a queue timeout after START):
 * the response cannot be repaired: the client sees the connection close,
 * ingress gets CLOSED, nothing is cancelled (the batcher ended it). */
static int t_error_mid_stream(void)
{
    int32_t ids[256];
    size_t n = encode(TEXT, ids, 250);
    struct shm_conn_msg m;
    struct shm_ctl c;
    struct req rq;
    uint64_t key;
    int fd;

    CHECK((fd = client_open(&key)) >= 0, "client");
    if (req_make(&rq, key, SHM_REQ_CHAT, SHM_REQ_F_STREAM, 64, NULL) ||
        ev_send(&rq, SHM_EV_START, 0, 0, 0, 0) || tokens(&rq, ids, 0, FAVO_MIN(n, 4)))
        return -1;
    memset(&R, 0, offsetof(struct resp, buf));
    while (!memmem(R.buf, R.len, "\r\n\r\n", 4))
        CHECK(fill(fd, &R) == 0, "head");
    CHECK(!strncmp(R.buf, "HTTP/1.1 200", 12), "200 first");
    if (ev_send(&rq, SHM_EV_ERROR, 4, 0, 503, 1) || conn_msg(&m))
        return -1;
    CHECK(m.conn == key && m.what == SHM_CONN_CLOSED, "conn msg %u", m.what);
    while (fill(fd, &R) == 0)
        ; /* drains to EOF */
    CHECK(!memmem(R.buf, R.len, "[DONE]", 6) && !memmem(R.buf, R.len, "HTTP/1.1 503", 12),
          "no end, no second head");
    if (cell_freed(&rq))
        return -1;
    CHECK(ctl_msg(&c, 50) == 1, "no cancel for an ended request");
    close(fd);
    return 0;
}

/* A request whose socket never came: cancelled at START, freed at FINISH,
 * CLOSED to ingress. */
static int t_no_socket(void)
{
    struct shm_conn_msg m;
    struct shm_ctl c;
    struct req rq;
    uint64_t key = (0ull << 48) | (4000ull << 24) | 99;

    if (req_make(&rq, key, SHM_REQ_CHAT, SHM_REQ_F_STREAM, 64, NULL) ||
        ev_send(&rq, SHM_EV_START, 0, 0, 0, 0))
        return -1;
    CHECK(ctl_msg(&c, 5000) == 0 && c.cell == rq.cell && c.id == rq.id, "cancel");
    if (ev_send(&rq, SHM_EV_FINISH, 0, SHM_FIN_CANCELLED, 0, 0) || conn_msg(&m))
        return -1;
    CHECK(m.conn == key && m.what == SHM_CONN_CLOSED, "conn msg");
    return cell_freed(&rq);
}

/* T_EGR_BENCH=N (by hand, not in the suite): 16 streams of N tokens, one
 * TOKENS event per token per stream (the worst case: a 1-token decode
 * step), clients reading as they go. Prints tokens/s and the egress
 * process's CPU per token (utime + stime from /proc). */
static uint64_t child_cpu_ns(void)
{
    char path[64], buf[1024], *p;
    unsigned long ut = 0, st = 0;
    FILE *f;

    snprintf(path, sizeof(path), "/proc/%d/stat", (int)H.pid);
    f = fopen(path, "r");
    if (!f)
        return 0;
    if (!fgets(buf, sizeof(buf), f))
        buf[0] = 0;
    fclose(f);
    p = strrchr(buf, ')');
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return 0;
    return (uint64_t)(ut + st) * (1000000000ull / (uint64_t)sysconf(_SC_CLK_TCK));
}

static int t_bench(void)
{
    enum { NS = 16 };
    const char *env = getenv("T_EGR_BENCH");
    uint32_t ntok = env ? (uint32_t)atoi(env) : 0;
    int32_t ids[256];
    size_t n = encode(TEXT, ids, 250);
    struct req rq[NS];
    uint64_t key[NS], t0, c0, wall, cpu;
    int fd[NS], open_n = NS;
    char sink[65536], tail[NS][5];
    struct shm_conn_msg m;

    memset(tail, 0, sizeof(tail));
    if (!ntok)
        return 0;
    for (int i = 0; i < NS; i++) {
        CHECK((fd[i] = client_open(&key[i])) >= 0, "client");
        if (req_make(&rq[i], key[i], SHM_REQ_CHAT, SHM_REQ_F_STREAM, ntok, NULL) ||
            ev_send(&rq[i], SHM_EV_START, 0, 0, 0, 0))
            return -1;
        int32_t *gen = (int32_t *)(rq[i].data + rq[i].q->tok_off) + rq[i].q->ntok;
        for (uint32_t k = 0; k < ntok; k++)
            gen[k] = ids[k % n];
    }
    t0 = now_ms();
    c0 = child_cpu_ns();
    for (uint32_t k = 1; k <= ntok; k++) {
        for (int i = 0; i < NS; i++)
            if (ev_send(&rq[i], k == ntok ? SHM_EV_FINISH : SHM_EV_TOKENS, k,
                        k == ntok ? SHM_FIN_LENGTH : 0, 0, 0))
                return -1;
        for (int i = 0; i < NS; i++) {
            ssize_t r;
            while ((r = recv(fd[i], sink, sizeof(sink), MSG_DONTWAIT)) > 0) {
                size_t keep = r >= 5 ? 0 : 5 - (size_t)r;
                memmove(tail[i], tail[i] + 5 - keep, keep);
                memcpy(tail[i] + keep, sink + (size_t)r - (5 - keep), 5 - keep);
            }
        }
    }
    while (open_n) { /* read every stream to its end */
        open_n = 0;
        for (int i = 0; i < NS; i++) {
            ssize_t r;
            if (fd[i] < 0)
                continue;
            r = recv(fd[i], sink, sizeof(sink), MSG_DONTWAIT);
            CHECK(r != 0, "EOF before the end");
            if (r > 0) { /* the last 5 bytes seen, across reads */
                size_t keep = r >= 5 ? 0 : 5 - (size_t)r;
                memmove(tail[i], tail[i] + 5 - keep, keep);
                memcpy(tail[i] + keep, sink + (size_t)r - (5 - keep), 5 - keep);
            }
            if (!memcmp(tail[i], "0\r\n\r\n", 5)) {
                close(fd[i]);
                fd[i] = -1;
                continue;
            }
            open_n++;
        }
        CHECK(now_ms() - t0 < 60000, "bench stuck");
    }
    for (int i = 0; i < NS; i++)
        if (conn_msg(&m))
            return -1;
    wall = now_ms() - t0;
    cpu = child_cpu_ns() - c0;
    fprintf(stderr, "bench: %d streams x %u tokens in %llu ms: %.0f tokens/s, egress CPU %.2f us/token\n",
            NS, ntok, (unsigned long long)wall, (double)NS * ntok * 1000.0 / (double)(wall ? wall : 1),
            (double)cpu / 1000.0 / ((double)NS * ntok));
    for (int i = 0; i < NS; i++)
        if (cell_freed(&rq[i]))
            return -1;
    return 0;
}

/* logprobs: the records the batcher writes at the end of the cell reach
 * the client in every shape (chat and completions, body and stream, 20
 * alternatives), and a missing record loses the response (500) rather
 * than answering made-up numbers. */
static int t_logprobs(void)
{
    int32_t ids[256];
    size_t n = encode("Tiny text, and more of it.", ids, 250);
    struct shm_conn_msg m;
    struct req a, b;
    uint64_t key;
    char want[64];
    int fd;

    CHECK(n >= 4, "encode");
    CHECK((fd = client_open(&key)) >= 0, "client");
    /* chat body, 2 alternatives */
    g_lp_on = 1, g_lp_top = 2;
    int rc = req_make(&a, key, SHM_REQ_CHAT, 0, (uint32_t)n, NULL);
    g_lp_on = 0, g_lp_top = 0;
    if (rc || ev_send(&a, SHM_EV_START, 0, 0, 0, 0) || tokens(&a, ids, 0, 2) ||
        tokens(&a, ids, 2, (uint32_t)n) ||
        ev_send(&a, SHM_EV_FINISH, (uint32_t)n, SHM_FIN_LENGTH, 0, 0))
        return -1;
    memset(&R, 0, offsetof(struct resp, buf));
    if (read_resp(fd, &R) || conn_msg(&m))
        return -1;
    CHECK(R.status == 200 && strstr(R.body, "\"logprobs\":{\"content\":[{\"token\":") &&
              strstr(R.body, "\"logprob\":0,") && strstr(R.body, "\"logprob\":-0.125,") &&
              strstr(R.body, "\"logprob\":-1.125,"),
          "body logprobs: %s", R.body);
    snprintf(want, sizeof(want), "\"logprob\":%g,", -0.125 * (double)(n - 1) - 1.0);
    CHECK(strstr(R.body, want) && !strstr(R.body, "\"logprob\":-2.125,"),
          "body: the last token's second alternative, no third: %s", want);
    if (cell_freed(&a))
        return -1;
    /* completions stream, 20 alternatives */
    g_lp_on = 1, g_lp_top = 20;
    rc = req_make(&b, key, SHM_REQ_COMPLETIONS, SHM_REQ_F_STREAM, (uint32_t)n, NULL);
    g_lp_on = 0, g_lp_top = 0;
    if (rc || ev_send(&b, SHM_EV_START, 0, 0, 0, 0) || tokens(&b, ids, 0, (uint32_t)n) ||
        ev_send(&b, SHM_EV_FINISH, (uint32_t)n, SHM_FIN_LENGTH, 0, 0))
        return -1;
    if (read_resp(fd, &R) || conn_msg(&m))
        return -1;
    CHECK(R.status == 200 && R.chunked && strstr(R.body, "\"token_logprobs\":[0]") &&
              strstr(R.body, "\"token_logprobs\":[-0.125]") && strstr(R.body, ":-19.125"),
          "stream logprobs, 20 alternatives");
    if (cell_freed(&b))
        return -1;
    /* completions body, logprobs 0: the sampled tokens' alone */
    g_lp_on = 1, g_lp_top = 0;
    rc = req_make(&b, key, SHM_REQ_COMPLETIONS, 0, (uint32_t)n, NULL);
    g_lp_on = 0;
    if (rc || ev_send(&b, SHM_EV_START, 0, 0, 0, 0) || tokens(&b, ids, 0, (uint32_t)n) ||
        ev_send(&b, SHM_EV_FINISH, (uint32_t)n, SHM_FIN_LENGTH, 0, 0))
        return -1;
    if (read_resp(fd, &R) || conn_msg(&m))
        return -1;
    CHECK(R.status == 200 && strstr(R.body, "\"token_logprobs\":[0,-0.125,-0.25,") &&
              strstr(R.body, "\"top_logprobs\":null,\"text_offset\":[0,"),
          "completions body logprobs: %s", R.body);
    if (cell_freed(&b))
        return -1;
    /* a record the batcher never wrote: 500, nothing made up */
    g_lp_on = 1, g_lp_top = 1;
    rc = req_make(&b, key, SHM_REQ_CHAT, 0, (uint32_t)n, NULL);
    g_lp_on = 0, g_lp_top = 0;
    g_lp_hole = 2;
    if (rc || ev_send(&b, SHM_EV_START, 0, 0, 0, 0) || tokens(&b, ids, 0, (uint32_t)n))
        return -1;
    g_lp_hole = UINT32_MAX;
    if (ev_send(&b, SHM_EV_FINISH, (uint32_t)n, SHM_FIN_LENGTH, 0, 0))
        return -1;
    if (read_resp(fd, &R) || conn_msg(&m))
        return -1;
    CHECK(R.status == 500 && !strstr(R.body, "logprob"), "missing record: %d", R.status);
    struct shm_ctl c;
    CHECK(ctl_msg(&c, 3000) == 0 && c.cell == b.cell, "missing record: the sequence is cancelled");
    if (cell_freed(&b))
        return -1;
    close(fd);
    return 0;
}

/* Ingress reuses a connection slot (same worker and slot, another
 * generation): egress closes the old socket it still held after KEEP, and
 * serves the new one. */
static int t_slot_reuse(void)
{
    int32_t ids[256];
    size_t n = encode("Slot reuse.", ids, 250);
    struct shm_conn_msg m;
    struct req a, b;
    uint64_t k1 = (0ull << 48) | (3000ull << 24) | 1, k2 = (0ull << 48) | (3000ull << 24) | 2, key;
    char c;
    int f1, f2;

    H.force_key = k1;
    CHECK((f1 = client_open(&key)) >= 0 && key == k1, "client 1");
    if (req_make(&a, k1, SHM_REQ_CHAT, 0, (uint32_t)n, NULL) || ev_send(&a, SHM_EV_START, 0, 0, 0, 0) ||
        tokens(&a, ids, 0, n) || ev_send(&a, SHM_EV_FINISH, (uint32_t)n, SHM_FIN_LENGTH, 0, 0))
        return -1;
    memset(&R, 0, offsetof(struct resp, buf));
    if (read_resp(f1, &R) || conn_msg(&m))
        return -1;
    CHECK(R.status == 200 && m.conn == k1 && m.what == SHM_CONN_KEEP, "1: KEEP");
    H.force_key = k2;
    CHECK((f2 = client_open(&key)) >= 0 && key == k2, "client 2");
    if (req_make(&b, k2, SHM_REQ_CHAT, 0, (uint32_t)n, NULL) || ev_send(&b, SHM_EV_START, 0, 0, 0, 0) ||
        tokens(&b, ids, 0, n) || ev_send(&b, SHM_EV_FINISH, (uint32_t)n, SHM_FIN_LENGTH, 0, 0))
        return -1;
    memset(&R, 0, offsetof(struct resp, buf));
    if (read_resp(f2, &R) || conn_msg(&m))
        return -1;
    CHECK(R.status == 200 && m.conn == k2 && m.what == SHM_CONN_KEEP, "2: KEEP");
    CHECK(recv(f1, &c, 1, 0) == 0, "the old connection is closed");
    if (cell_freed(&a) || cell_freed(&b))
        return -1;
    close(f1);
    close(f2);
    return 0;
}

/* kill -9 egress mid-stream, with events arriving while it is down; a new
 * egress takes the response over from the cell, gets the socket again on a
 * new handoff socket, and the client sees one complete stream. */
static int t_restart(void)
{
    int32_t ids[256];
    size_t n = encode(TEXT, ids, 250);
    char want[4096], got[4096];
    struct shm_conn_msg m;
    struct req rq;
    uint64_t key;
    int fd, srv, st;

    ids[n++] = H.eog;
    CHECK((fd = client_open_ex(&key, 0, &srv)) >= 0, "client");
    if (req_make(&rq, key, SHM_REQ_CHAT, SHM_REQ_F_STREAM, 512, NULL) ||
        ev_send(&rq, SHM_EV_START, 0, 0, 0, 0) || tokens(&rq, ids, 0, (uint32_t)n / 2))
        return -1;
    memset(&R, 0, offsetof(struct resp, buf));
    while (!memmem(R.buf, R.len, "\r\n\r\n", 4))
        CHECK(fill(fd, &R) == 0, "head");
    usleep(100000); /* egress idle: nothing in flight */
    kill(H.pid, SIGKILL);
    CHECK(waitpid(H.pid, &st, 0) == H.pid && WIFSIGNALED(st), "kill");
    shm_pipe_set_sup(&H.p, SHM_PIPE_EGRESS, 0, 0);
    if (tokens(&rq, ids, (uint32_t)n / 2, (uint32_t)n - 3)) /* queued while down */
        return -1;
    close(H.sv[0]);
    CHECK(shm_fdpass_pair(H.sv) == 0, "new handoff socket");
    if (spawn() || wait_up())
        FAIL("restart");
    CHECK(shm_fdpass_send(H.sv[0], srv, &key, sizeof(key)) == 0, "re-send");
    close(srv);
    if (tokens(&rq, ids, (uint32_t)n - 3, (uint32_t)n) ||
        ev_send(&rq, SHM_EV_FINISH, (uint32_t)n, SHM_FIN_STOP, 0, 0))
        return -1;
    if (read_resp(fd, &R))
        return -1;
    CHECK(R.status == 200 && R.chunked, "head");
    CHECK(expect_text(ids, n - 1, SIZE_MAX, want, sizeof(want)) == 0, "expect");
    collect(R.body, R.body_len, "content", got, sizeof(got));
    CHECK(!strcmp(got, want), "text\n got: %s\nwant: %s", got, want);
    CHECK(strstr(R.body, "data: [DONE]") == strrchr(R.body, '[') - 6, "one [DONE], last");
    {
        const char *r1 = strstr(R.body, "\"role\":\"assistant\"");
        CHECK(r1 && !strstr(r1 + 1, "\"role\""), "one role chunk");
    }
    if (conn_msg(&m))
        return -1;
    CHECK(m.conn == key && m.what == SHM_CONN_KEEP, "conn msg");
    if (cell_freed(&rq))
        return -1;
    close(fd);
    return 0;
}

/* FAVO_EGR_TRACE (egr_stage.c): a traced egress writes one record per
 * burst at exit - times and counts in order, nothing else. The stage
 * running so far drains and exits; a traced one serves a stream and
 * drains; a plain one is started again for the cases after this one. */
static int respawn(bool traced, const char *path)
{
    int rc;

    *H.stop = 0;
    close(H.sv[0]);
    CHECK(shm_fdpass_pair(H.sv) == 0, "new handoff socket");
    if (traced && setenv("FAVO_EGR_TRACE", path, 1))
        FAIL("setenv");
    rc = spawn();
    unsetenv("FAVO_EGR_TRACE");
    CHECK(rc == 0 && wait_up() == 0, "egress %s", traced ? "traced" : "again");
    return 0;
}

static int t_trace(void)
{
    char path[64], line[256];
    uint64_t pub, wake, d0, d1, s1, ev = 0;
    unsigned nev, nsend, nrec = 0, bad = 0;
    FILE *f;

    snprintf(path, sizeof(path), "/tmp/test-egress-trace-%d", (int)getpid());
    if (finish() || respawn(true, path) || t_stream_chat() || finish())
        return -1;
    CHECK((f = fopen(path, "r")) != NULL, "no trace written at %s", path);
    while (fgets(line, sizeof(line), f)) {
        if (line[0] == '#')
            continue;
        if (strspn(line, "0123456789 \n") != strlen(line) ||
            sscanf(line, "%" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64 " %u %u",
                   &pub, &wake, &d0, &d1, &s1, &nev, &nsend) != 7 ||
            !nev || d0 > d1 || d1 > s1 || (pub && pub > d1) || (wake && wake > d0))
            bad++;
        nrec++;
        ev += nev;
    }
    fclose(f);
    unlink(path);
    CHECK(!bad, "%u of %u trace records out of order or not numbers", bad, nrec);
    /* the stream: START, 4 TOKENS (one a replay), FINISH */
    CHECK(nrec >= 1 && ev >= 6, "%u records holding %" PRIu64 " events", nrec, ev);
    return respawn(false, NULL);
}

/* ----------------------------------------------------------------- TLS */

/* A TLS connection without kernel TLS (shm_pipe.h "TLS"): no socket goes
 * to egress; the test plays ingress's TLS side - it takes each chunk from
 * tls_out, checks it (its conn, a seq equal to the bytes acknowledged so
 * far, inside the cell), writes its bytes to one end of a socketpair (the
 * "decrypted" stream the client end reads with read_resp) and acks it. */
static uint64_t tls_key(void)
{
    H.next_slot++;
    return SHM_CONN_F_TLS | ((uint64_t)H.next_slot << 24) | ((H.next_slot * 7u + 1u) & 0xffffffu);
}

/* The next chunk within ms: 0, or 1 when none came. */
static int tls_take(struct shm_tls_out *m, unsigned ms)
{
    uint64_t t0 = now_ms();

    while (shm_ring_dequeue_burst(&H.tls_out, m, 1) != 1) {
        if (now_ms() - t0 >= ms)
            return 1;
        usleep(200);
    }
    return 0;
}

static int tls_ack(const struct shm_tls_out *m, int32_t res)
{
    struct shm_tls_ack a = { .conn = m->conn, .cell = m->cell, .seq = m->seq, .res = res };

    CHECK(shm_ring_enqueue(&H.tls_ack, &a) == 0, "tls_ack ring full");
    shm_bell_efd_ring(&H.egr_bell);
    return 0;
}

/* Take chunks of rq until none comes for idle_ms: bytes to wfd, each
 * acked in full. *seq: the bytes acknowledged so far on this response. */
static int tls_pump(const struct req *rq, uint64_t key, int wfd, uint64_t *seq, unsigned idle_ms)
{
    struct shm_tls_out m;
    size_t size;
    void *d;

    while (tls_take(&m, idle_ms) == 0) {
        CHECK(m.conn == key && m.cell == rq->cell, "chunk of another connection %#llx",
              (unsigned long long)m.conn);
        CHECK(m.seq == *seq, "chunk seq %llu, want %llu", (unsigned long long)m.seq,
              (unsigned long long)*seq);
        CHECK(shm_cell_bytes(&H.pool, m.cell, &d, &size) == 0 && m.len > 0 && m.off <= size &&
              m.len <= size - m.off, "chunk inside its cell");
        CHECK(write(wfd, (char *)d + m.off, m.len) == (ssize_t)m.len, "socketpair write");
        *seq += m.len;
        if (tls_ack(&m, (int32_t)m.len))
            return -1;
    }
    return 0;
}

static int t_tls_stream(void)
{
    int32_t ids[256];
    size_t n = encode(TEXT, ids, 250);
    char want[4096], got[4096];
    struct shm_conn_msg m;
    struct req rq, rq2;
    uint64_t key = tls_key(), seq = 0;
    int sp[2];
    struct timeval tv = { 5, 0 };

    ids[n++] = H.eog;
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) == 0, "socketpair");
    setsockopt(sp[1], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    if (req_make(&rq, key, SHM_REQ_CHAT, SHM_REQ_F_STREAM | SHM_REQ_F_USAGE, 512, NULL) ||
        ev_send(&rq, SHM_EV_START, 0, 0, 0, 0) || tokens(&rq, ids, 0, 3) ||
        tls_pump(&rq, key, sp[0], &seq, 300) || tokens(&rq, ids, 3, n / 2) ||
        tokens(&rq, ids, n / 2, n) || ev_send(&rq, SHM_EV_FINISH, (uint32_t)n, SHM_FIN_STOP, 0, 0) ||
        tls_pump(&rq, key, sp[0], &seq, 300))
        return -1;
    memset(&R, 0, offsetof(struct resp, buf));
    if (read_resp(sp[1], &R))
        return -1;
    CHECK(R.status == 200 && R.chunked && R.keep_alive, "head: %s", R.head);
    CHECK(expect_text(ids, n - 1, SIZE_MAX, want, sizeof(want)) == 0, "expect");
    collect(R.body, R.body_len, "content", got, sizeof(got));
    CHECK(!strcmp(got, want), "text\n got: %s\nwant: %s", got, want);
    CHECK(R.body_len > 16 && !strcmp(R.body + R.body_len - 14, "data: [DONE]\n\n"), "[DONE] last");
    if (conn_msg(&m))
        return -1;
    CHECK(m.conn == key && m.what == SHM_CONN_KEEP, "conn msg %#llx %u", (unsigned long long)m.conn,
          m.what);
    if (cell_freed(&rq))
        return -1;
    /* keep-alive: a second response on the same TLS connection */
    seq = 0;
    if (req_make(&rq2, key, SHM_REQ_COMPLETIONS, 0, 64, NULL) ||
        ev_send(&rq2, SHM_EV_START, 0, 0, 0, 0) || tokens(&rq2, ids, 0, 20) ||
        ev_send(&rq2, SHM_EV_FINISH, 20, SHM_FIN_LENGTH, 0, 0) ||
        tls_pump(&rq2, key, sp[0], &seq, 300) || read_resp(sp[1], &R))
        return -1;
    CHECK(R.status == 200 && !R.chunked && strstr(R.body, "\"finish_reason\":\"length\""),
          "second response: %.200s", R.body);
    if (conn_msg(&m) || cell_freed(&rq2))
        return -1;
    CHECK(m.conn == key && m.what == SHM_CONN_KEEP, "second conn msg");
    close(sp[0]);
    close(sp[1]);
    return 0;
}

/* Ingress never answers a chunk (the client stopped reading): after the
 * write timeout egress cancels the sequence and asks ingress to abort the
 * connection; ingress then answers the chunk -EPIPE; FINISH CANCELLED
 * frees the cell and ingress gets CLOSED. */
static int t_tls_write_timeout(void)
{
    int32_t ids[256];
    (void)encode(TEXT, ids, 250);
    struct shm_tls_out out, more;
    struct shm_conn_msg m;
    struct shm_ctl c;
    struct req rq;
    uint64_t key = tls_key(), t0;

    if (req_make(&rq, key, SHM_REQ_COMPLETIONS, SHM_REQ_F_STREAM, 200, NULL) ||
        ev_send(&rq, SHM_EV_START, 0, 0, 0, 0) || tokens(&rq, ids, 0, 40))
        return -1;
    CHECK(tls_take(&out, 3000) == 0 && out.conn == key && out.seq == 0, "first chunk");
    t0 = now_ms();
    CHECK(tls_take(&more, 300) == 1, "a second chunk while the first is unanswered (inv 2)");
    CHECK(ctl_msg(&c, 6000) == 0 && c.cell == rq.cell, "cancel after the write timeout");
    if (conn_msg(&m))
        return -1;
    CHECK(m.conn == key && m.what == SHM_CONN_ABORT, "abort asked (%u) after %llu ms", m.what,
          (unsigned long long)(now_ms() - t0));
    if (tls_ack(&out, -EPIPE) || ev_send(&rq, SHM_EV_FINISH, 40, SHM_FIN_CANCELLED, 0, 0) ||
        conn_msg(&m))
        return -1;
    CHECK(m.conn == key && m.what == SHM_CONN_CLOSED, "conn msg CLOSED (%u)", m.what);
    if (cell_freed(&rq))
        return -1;
    CHECK(tls_take(&more, 200) == 1, "nothing more for the aborted connection");
    return 0;
}

/* The client went (ingress's send failed): ingress answers the chunk
 * -ECONNRESET; egress cancels once and frees the cell after FINISH. */
static int t_tls_client_gone(void)
{
    int32_t ids[256];
    (void)encode(TEXT, ids, 250);
    struct shm_tls_out out;
    struct shm_conn_msg m;
    struct shm_ctl c;
    struct req rq;
    uint64_t key = tls_key();

    if (req_make(&rq, key, SHM_REQ_CHAT, SHM_REQ_F_STREAM, 200, NULL) ||
        ev_send(&rq, SHM_EV_START, 0, 0, 0, 0) || tokens(&rq, ids, 0, 10))
        return -1;
    CHECK(tls_take(&out, 3000) == 0, "first chunk");
    if (tls_ack(&out, -ECONNRESET))
        return -1;
    CHECK(ctl_msg(&c, 3000) == 0 && c.cell == rq.cell, "cancel");
    if (ev_send(&rq, SHM_EV_FINISH, 10, SHM_FIN_CANCELLED, 0, 0) || conn_msg(&m))
        return -1;
    CHECK(m.conn == key && m.what == SHM_CONN_CLOSED, "conn msg CLOSED (%u)", m.what);
    return cell_freed(&rq);
}

/* egress dies with a chunk unanswered: the new one sends the same chunk
 * again (same cell and seq) and the stream completes, byte-exact. A
 * replayed ack for it is harmless. */
static int t_tls_restart(void)
{
    int32_t ids[256];
    size_t n = encode(TEXT, ids, 250);
    char want[4096], got[4096];
    struct shm_tls_out out, again;
    struct shm_conn_msg m;
    struct req rq;
    uint64_t key = tls_key(), seq = 0;
    int sp[2], st;
    struct timeval tv = { 5, 0 };
    size_t size;
    void *d;

    ids[n++] = H.eog;
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) == 0, "socketpair");
    setsockopt(sp[1], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    if (req_make(&rq, key, SHM_REQ_CHAT, SHM_REQ_F_STREAM, 512, NULL) ||
        ev_send(&rq, SHM_EV_START, 0, 0, 0, 0) || tokens(&rq, ids, 0, 3) ||
        tls_pump(&rq, key, sp[0], &seq, 300) || tokens(&rq, ids, 3, (uint32_t)n / 2))
        return -1;
    CHECK(tls_take(&out, 3000) == 0 && out.seq == seq, "a chunk in flight");
    kill(H.pid, SIGKILL);
    CHECK(waitpid(H.pid, &st, 0) == H.pid && WIFSIGNALED(st), "kill");
    shm_pipe_set_sup(&H.p, SHM_PIPE_EGRESS, 0, 0);
    close(H.sv[0]);
    CHECK(shm_fdpass_pair(H.sv) == 0, "new handoff socket");
    if (spawn() || wait_up())
        FAIL("restart");
    /* the new egress re-sends the same chunk; ingress has it already */
    CHECK(tls_take(&again, 3000) == 0 && again.cell == out.cell && again.seq == out.seq &&
          again.len == out.len && again.off == out.off, "the chunk re-sent under its (cell, seq)");
    CHECK(shm_cell_bytes(&H.pool, out.cell, &d, &size) == 0, "cell");
    CHECK(write(sp[0], (char *)d + out.off, out.len) == (ssize_t)out.len, "write");
    seq += out.len;
    if (tls_ack(&out, (int32_t)out.len) || tls_ack(&again, (int32_t)again.len) /* replay */ ||
        tokens(&rq, ids, (uint32_t)n / 2, (uint32_t)n) ||
        ev_send(&rq, SHM_EV_FINISH, (uint32_t)n, SHM_FIN_STOP, 0, 0) ||
        tls_pump(&rq, key, sp[0], &seq, 300))
        return -1;
    memset(&R, 0, offsetof(struct resp, buf));
    if (read_resp(sp[1], &R))
        return -1;
    CHECK(R.status == 200 && R.chunked, "head");
    CHECK(expect_text(ids, n - 1, SIZE_MAX, want, sizeof(want)) == 0, "expect");
    collect(R.body, R.body_len, "content", got, sizeof(got));
    CHECK(!strcmp(got, want), "text\n got: %s\nwant: %s", got, want);
    CHECK(strstr(R.body, "data: [DONE]") == strrchr(R.body, '[') - 6, "one [DONE], last");
    if (conn_msg(&m) || cell_freed(&rq))
        return -1;
    CHECK(m.conn == key && m.what == SHM_CONN_KEEP, "conn msg KEEP (%u)", m.what);
    close(sp[0]);
    close(sp[1]);
    return 0;
}

/* ------------------------------------------------------------- harness */

/* Fork an egress on H.sv[1] (closed here afterwards) and name it in the
 * supervisor's up word. */
static int spawn(void)
{
    H.pid = fork();
    if (H.pid < 0)
        return -1;
    if (H.pid == 0) {
        struct egr_stage_cfg ec = { 0 };
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive a crashed test */
        close(H.sv[0]);
        ec.pipe = &H.p;
        ec.fdpass_sock = H.sv[1];
        ec.bell_efd = H.egr_efd;
        for (unsigned w = 0; w < SHM_PIPE_MAX_INGRESS; w++)
            ec.ing_bell_efd[w] = -1;
        ec.ing_bell_efd[0] = H.ing_efd;
        ec.model_path = H.model;
        ec.model_id = "test-model";
        ec.fingerprint = "fp_test";
        ec.write_timeout_ms = 1500;
        ec.log_fd = H.log_fd;
        ec.poll = atoi(t_env("T_EGR_POLL", "0")); /* 1, 2: adaptive, spin (by hand) */
        ec.stop = H.stop;
        struct shm_stats_writer w;
        if (H.stats_ok && shm_stats_writer_init(&H.stats, 0, SHM_STAGE_EGRESS, 0, 0, &w) == 0) {
            ec.stats = &H.stats;
            ec.stats_w = &w;
            ec.stats_row = 0;
        }
        int rc = egr_stage_run(&ec);
        if (ec.stats_w)
            shm_stats_writer_free(ec.stats_w);
        exit(rc == 0 ? 0 : 3); /* exit, not _exit: LSan checks the stage too */
    }
    close(H.sv[1]);
    shm_pipe_set_sup(&H.p, SHM_PIPE_EGRESS, 0, H.pid);
    return 0;
}

static int wait_up(void)
{
    for (uint64_t t0 = now_ms(); !shm_pipe_stage_up(&H.p, SHM_PIPE_EGRESS, 0);) {
        if (now_ms() - t0 > 10000 || waitpid(H.pid, NULL, WNOHANG) == H.pid) {
            fprintf(stderr, "egress did not come up\n");
            return -1;
        }
        usleep(1000);
    }
    return 0;
}

static int setup(const char *model)
{
    struct shm_pipe_cfg c = { 0 };
    struct shm_seg_spec spec = { "pipe", 0, 4096 };
    struct sockaddr_in a = { .sin_family = AF_INET };
    socklen_t al = sizeof(a);
    char err[256], path[] = "/tmp/egr-stage-log-XXXXXX";
    size_t len, cl;
    void *mem, *cm;

    H.model = model;
    if (eng_tok_load_file(&H.tok, model, err, sizeof(err)) < 0) {
        fprintf(stderr, "tokenizer: %s\n", err);
        return -1;
    }
    H.eog = eng_tok_special(H.tok)->eos;
    if (!eng_tok_is_eog(H.tok, H.eog))
        return -1;
    c.n_ingress = 1;
    c.n_ranks = 1;
    c.sched_bytes = 4096;
    c.plan_bytes = 4096;
    c.max_seqs = 8;
    c.result_size = 8;
    c.cells.nclasses = 2;
    c.cells.classes[0].cell_size = 64 << 10;
    c.cells.classes[0].ncells = 96;
    c.cells.classes[1].cell_size = 1 << 20;
    c.cells.classes[1].ncells = 4;
    spec.size = shm_pipe_size(&c);
    if (shm_seg_create_data(&H.seg, &spec, 1) || !(mem = shm_seg_region(&H.seg, "pipe", &len)) ||
        shm_pipe_init(&H.p, mem, len, &c, GEN))
        return -1;
    shm_seg_publish(&H.seg);
    snprintf(H.p.hdr->model_id, sizeof(H.p.hdr->model_id), "pipe-model");
    H.egr_efd = shm_bell_efd_open();
    H.ing_efd = shm_bell_efd_open();
    if (H.egr_efd < 0 || H.ing_efd < 0 || shm_fdpass_pair(H.sv))
        return -1;
    H.stop = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (H.stop == MAP_FAILED)
        return -1;
    H.log_fd = mkstemp(path);
    if (H.log_fd < 0)
        return -1;
    unlink(path);

    snprintf(H.stats_name, sizeof(H.stats_name), "egrtest%d", (int)getpid());
    H.stats_ok = shm_stats_create(&H.stats, H.stats_name, 2, 2) == 0;
    if (!H.stats_ok)
        fprintf(stderr, "note: no stats segment (%s): stats not checked\n", H.stats.seg.err);

    if (spawn())
        return -1;
    cm = shm_pipe_cells(&H.p, &cl);
    if (shm_cell_pool_attach(&H.pool, cm, cl, GEN, SHM_CELL_ROLE_ALLOCATOR, -1) ||
        shm_pipe_ring_ev(&H.p, SHM_RING_PRODUCER, &H.ev) ||
        shm_pipe_ring_ctl(&H.p, SHM_RING_CONSUMER, &H.ctl) ||
        shm_pipe_ring_conn(&H.p, 0, SHM_RING_CONSUMER, &H.conn) ||
        shm_pipe_ring_tls_out(&H.p, 0, SHM_RING_CONSUMER, &H.tls_out) ||
        shm_pipe_ring_tls_ack(&H.p, 0, SHM_RING_PRODUCER, &H.tls_ack) ||
        shm_pipe_bell_egr(&H.p, H.egr_efd, false, &H.egr_bell))
        return -1;
    H.lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (H.lfd < 0 || bind(H.lfd, (struct sockaddr *)&a, sizeof(a)) || listen(H.lfd, 128) ||
        getsockname(H.lfd, (struct sockaddr *)&a, &al))
        return -1;
    H.port = ntohs(a.sin_port);
    return wait_up();
}

/* Stop the child: it drains (no batcher is up) and exits 0. */
static int finish(void)
{
    int st;
    uint64_t t0 = now_ms();

    *H.stop = 1;
    shm_bell_efd_ring(&H.egr_bell);
    while (waitpid(H.pid, &st, WNOHANG) != H.pid) {
        if (now_ms() - t0 > 5000) {
            kill(H.pid, SIGKILL);
            waitpid(H.pid, &st, 0);
            FAIL("egress did not drain within 5 s");
        }
        usleep(1000);
    }
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "egress exit status %#x", st);
    CHECK(!shm_pipe_stage_up(&H.p, SHM_PIPE_EGRESS, 0), "up word cleared");
    return 0;
}

int main(void)
{
    const char *models = t_env("FAVO_MODELS", "models");
    char model[1024];
    struct {
        const char *name;
        int (*fn)(void);
    } cases[] = {
        { "stream_chat", t_stream_chat },
        { "body_completion", t_body_completion },
        { "stop_string", t_stop_string },
        { "error_503", t_error_503 },
        { "keepalive", t_keepalive },
        { "client_gone", t_client_gone },
        { "write_timeout", t_write_timeout },
        { "many", t_many },
        { "access_log", t_access_log },
        { "stats", t_stats },
        { "error_mid_stream", t_error_mid_stream },
        { "no_socket", t_no_socket },
        { "logprobs", t_logprobs },
        { "slot_reuse", t_slot_reuse },
        { "bench", t_bench },
        { "restart", t_restart },
        { "trace", t_trace },
        { "tls_stream", t_tls_stream },
        { "tls_client_gone", t_tls_client_gone },
        { "tls_write_timeout", t_tls_write_timeout },
        { "tls_restart", t_tls_restart },
    };

    snprintf(model, sizeof(model), "%s/SmolLM2-135M-Instruct.Q4_1.gguf", models);
    if (access(model, R_OK) != 0)
        t_skip("SmolLM2 model not found (FAVO_MODELS)");
    signal(SIGPIPE, SIG_IGN);
    if (setup(model)) {
        fprintf(stderr, "FAIL: setup\n");
        if (H.pid > 0)
            kill(H.pid, SIGKILL);
        return 1;
    }
    for (size_t i = 0; i < FAVO_ARRAY_SIZE(cases); i++) {
        int before = t_failures;
        uint64_t t0 = now_ms();
        dump_case = cases[i].name;
        dump_n = 0;
        cases[i].fn();
        fprintf(stderr, "%s %s (%llu ms)\n", t_failures == before ? "ok  " : "FAIL", cases[i].name,
                (unsigned long long)(now_ms() - t0));
        if (t_failures != before)
            break; /* later cases build on a healthy stage */
    }
    if (finish() && H.pid > 0)
        kill(H.pid, SIGKILL);
    eng_tok_free(H.tok);
    if (H.stats_ok)
        shm_stats_destroy(&H.stats);
    shm_seg_destroy(&H.seg);
    return t_failures ? 1 : 0;
}
