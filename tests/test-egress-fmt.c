/*
 * test-egress-fmt.c - egress formatting (egress/egr.h).
 *
 *   json:     egr_json_str escapes exactly, never splits UTF-8 at -ENOSPC.
 *   head:     exact response heads; CR/LF in X-Request-Id refused.
 *   streams:  exact bytes of scripted chat and completions streams (with
 *             usage, stops split across tokens and UTF-8 characters,
 *             max_tokens, EOG); chunked framing parsed back strictly;
 *             every SSE event is JSON that yajl accepts.
 *   bodies:   exact non-streaming bodies; Content-Length is the body's.
 *   pressure: a small area and a slow reader give -EAGAIN, never an
 *             overflow, and the same bytes as a large area.
 *   log:      the access line is JSON with the fields named; a marker in
 *             the prompt/output cannot reach it.
 *   tokens:   real token ids through a GGUF tokenizer (skipped without
 *             $FAVO_MODELS).
 *
 * `test-egress-fmt --emit <case>` writes one case's raw response to
 * stdout for test-egress-sdk.py (the OpenAI SDK's models).
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yajl/yajl_tree.h>

#include "egr.h"
#include "eng_gguf.h"
#include "favo_base.h"
#include "t_util.h"

/* ---- helpers ---------------------------------------------------------- */

struct piece {
    const char *p;
    int eog;
};

struct out {
    char buf[1 << 16];
    size_t len;
    int rc;          /* last return of the script */
    int eagain;      /* -EAGAIN seen */
};

static void drain(struct egr_resp *r, char *area, struct out *o, size_t max)
{
    size_t n = egr_resp_pending(r);

    if (n > max)
        n = max;
    FAVO_ASSERT(o->len + n <= sizeof(o->buf));
    memcpy(o->buf + o->len, area, n);
    o->len += n;
    egr_resp_consume(r, area, n);
}

/* Runs a script; the reader takes at most `step` bytes when the area is
 * full (SIZE_MAX: everything after every call). The area is malloc'd with
 * exactly cap bytes so ASan sees any overflow. */
static void run(const struct egr_resp_cfg *cfg, const struct piece *ps, size_t n, size_t cap,
                size_t step, int finish_reason, struct out *o)
{
    char *area = malloc(cap);
    struct egr_resp r;
    int rc;

    memset(o, 0, sizeof(*o));
    rc = egr_resp_init(&r, cfg, area, cap);
    T_CHECK(rc >= 0, "init: %d", rc);
    if (rc < 0)
        goto out;
    for (size_t i = 0; i < n || finish_reason; i++) {
        for (;;) {
            if (i < n)
                rc = egr_resp_bytes(&r, ps[i].p, strlen(ps[i].p), ps[i].eog, area, cap);
            else
                rc = egr_resp_finish(&r, finish_reason, area, cap);
            if (rc != -EAGAIN)
                break;
            o->eagain++;
            T_CHECK(egr_resp_pending(&r) > 0, "-EAGAIN with nothing pending");
            if (!egr_resp_pending(&r))
                goto out;
            drain(&r, area, o, step);
        }
        o->rc = rc;
        if (rc < 0 || (rc & EGR_DONE))
            break;
        if (step == SIZE_MAX)
            drain(&r, area, o, SIZE_MAX);
    }
    drain(&r, area, o, SIZE_MAX);
out:
    egr_scrub(&r, area, cap);
    free(area);
}

/* Strict HTTP/1.1 chunked decoding of o's body into body; returns its
 * length or -1. head_len gets the head's length. */
static long dechunk(const char *s, size_t len, char *body, size_t *head_len)
{
    const char *e = NULL;
    size_t i, bl = 0;

    for (i = 0; i + 4 <= len; i++)
        if (!memcmp(s + i, "\r\n\r\n", 4)) {
            e = s + i + 4;
            break;
        }
    if (!e)
        return -1;
    *head_len = (size_t)(e - s);
    i = *head_len;
    for (;;) {
        size_t sz = 0, d = 0;
        while (i < len && strchr("0123456789abcdef", s[i]) && s[i]) {
            sz = sz * 16 + (size_t)(s[i] <= '9' ? s[i] - '0' : s[i] - 'a' + 10);
            i++, d++;
        }
        if (!d || i + 2 > len || memcmp(s + i, "\r\n", 2))
            return -1;
        i += 2;
        if (sz == 0)
            return i + 2 == len && !memcmp(s + i, "\r\n", 2) ? (long)bl : -1;
        if (i + sz + 2 > len || memcmp(s + i + sz, "\r\n", 2))
            return -1;
        memcpy(body + bl, s + i, sz);
        bl += sz;
        i += sz + 2;
    }
}

/* Independent framing of the expected events. */
static size_t frame(char *dst, const char *const *ev, size_t n)
{
    size_t o = 0;

    for (size_t i = 0; i < n; i++)
        o += (size_t)sprintf(dst + o, "%zx\r\n%s\r\n", strlen(ev[i]), ev[i]);
    memcpy(dst + o, "0\r\n\r\n", 5);
    return o + 5;
}

/* Each SSE event must be "data: <json>\n\n" with JSON yajl accepts, or
 * "data: [DONE]\n\n" last. Appends the text deltas to text. Returns the
 * number of events, -1 on a malformed stream. */
static int sse_check(const char *body, size_t len, int chat, char *text, size_t *tl,
                     char *finish, size_t fcap)
{
    size_t i = 0;
    int n = 0, done = 0;

    *tl = 0;
    finish[0] = 0;
    while (i < len) {
        const char *end = NULL;
        char ev[8192], eb[256];
        for (size_t j = i; j + 1 < len; j++)
            if (body[j] == '\n' && body[j + 1] == '\n') {
                end = body + j;
                break;
            }
        if (!end || done || strncmp(body + i, "data: ", 6))
            return -1;
        size_t el = (size_t)(end - body) - i - 6;
        memcpy(ev, body + i + 6, el);
        ev[el] = 0;
        i = (size_t)(end - body) + 2;
        n++;
        if (!strcmp(ev, "[DONE]")) {
            done = 1;
            continue;
        }
        yajl_val v = yajl_tree_parse(ev, eb, sizeof(eb));
        if (!v) {
            fprintf(stderr, "event %d: yajl: %s\n", n, eb);
            return -1;
        }
        const char *obj_p[] = {"object", NULL}, *ch_p[] = {"choices", NULL};
        yajl_val obj = yajl_tree_get(v, obj_p, yajl_t_string);
        yajl_val ch = yajl_tree_get(v, ch_p, yajl_t_array);
        if (!obj || strcmp(obj->u.string, chat ? "chat.completion.chunk" : "text_completion") ||
            !ch) {
            yajl_tree_free(v);
            return -1;
        }
        if (YAJL_GET_ARRAY(ch)->len == 1) {
            yajl_val c = YAJL_GET_ARRAY(ch)->values[0];
            const char *tp[] = {"delta", "content", NULL}, *tp2[] = {"text", NULL},
                       *fp[] = {"finish_reason", NULL};
            yajl_val t = yajl_tree_get(c, chat ? tp : tp2, yajl_t_string);
            yajl_val f = yajl_tree_get(c, fp, yajl_t_string);
            if (t) {
                size_t l = strlen(t->u.string);
                memcpy(text + *tl, t->u.string, l);
                *tl += l;
            }
            if (f)
                snprintf(finish, fcap, "%s", f->u.string);
        }
        yajl_tree_free(v);
    }
    return done ? n : -1;
}

#define HEAD_SSE                                                                                   \
    "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nCache-Control: "         \
    "no-cache\r\nTransfer-Encoding: chunked\r\nX-Request-Id: req-1\r\nConnection: keep-alive\r\n"  \
    "x-ratelimit-remaining-requests: 9\r\n\r\n"
#define PRE_CHAT                                                                                   \
    "data: {\"id\":\"chatcmpl-abc\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,"  \
    "\"model\":\"smollm\",\"system_fingerprint\":\"fp_favo\","
#define PRE_CMPL                                                                                   \
    "data: {\"id\":\"cmpl-abc\",\"object\":\"text_completion\",\"created\":1700000000,"            \
    "\"model\":\"smollm\",\"system_fingerprint\":\"fp_favo\","
#define CHAT_DELTA(d, f) "\"choices\":[{\"index\":0,\"delta\":" d ",\"logprobs\":null,\"finish_reason\":" f "}]"
#define CMPL_TEXT(t, f) "\"choices\":[{\"text\":\"" t "\",\"index\":0,\"logprobs\":null,\"finish_reason\":" f "}]"

static struct egr_resp_cfg base_cfg(int route, int stream, int usage)
{
    return (struct egr_resp_cfg){
        .route = (uint8_t)route, .stream = (uint8_t)stream, .include_usage = (uint8_t)usage,
        .keep_alive = 1, .prompt_tokens = 5, .created = 1700000000,
        .id = route == EGR_CHAT ? "chatcmpl-abc" : "cmpl-abc", .model = "smollm",
        .fingerprint = "fp_favo", .request_id = "req-1",
        .extra_head = "x-ratelimit-remaining-requests: 9\r\n"};
}

static void expect_stream(const char *what, const struct out *o, const char *head,
                          const char *const *ev, size_t n)
{
    static char want[1 << 16];
    size_t hl = strlen(head);

    memcpy(want, head, hl);
    size_t wl = hl + frame(want + hl, ev, n);
    T_CHECK(o->len == wl && !memcmp(o->buf, want, wl), "%s: bytes differ\n got: %.*s\nwant: %.*s", what,
          (int)o->len, o->buf, (int)wl, want);
}

/* ---- tests ------------------------------------------------------------ */

static void test_json(void)
{
    char out[64];
    int n = egr_json_str(out, sizeof(out), "a\"b\\c\n\t\x01\x1f\x7f", 10);
    T_CHECK(n == 24 && !memcmp(out, "a\\\"b\\\\c\\n\\t\\u0001\\u001f\x7f", 24), "escape: %.*s", n, out);
    n = egr_json_str(out, sizeof(out), "é✓𝔘", 9);
    T_CHECK(n == 9 && !memcmp(out, "é✓𝔘", 9), "utf-8 passes");
    n = egr_json_str(out, sizeof(out), "a\xc3(\xed\xa0\x80\xc0\xaf", 8);
    T_CHECK(n == 2 + 6 * 6 && !memcmp(out, "a\\ufffd(\\ufffd\\ufffd\\ufffd\\ufffd\\ufffd", 38),
          "invalid: %.*s", n, out);
    memset(out, 'X', sizeof(out));
    n = egr_json_str(out, 4, "ab✓", 5);
    T_CHECK(n == -ENOSPC && out[1] == 'b' && out[2] == 'X', "no split on -ENOSPC");
    T_CHECK(egr_json_str(out, 0, "", 0) == 0, "empty");
}

static void test_head(void)
{
    char out[512];
    struct egr_head h = {.status = 200, .content_length = 42, .request_id = "r1"};
    int n = egr_head(out, sizeof(out), &h);
    const char *want = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-cache\r\n"
                       "Content-Length: 42\r\nX-Request-Id: r1\r\nConnection: close\r\n\r\n";
    T_CHECK(n == (int)strlen(want) && !strcmp(out, want), "json head: %s", out);
    h.request_id = "r1\r\nSet-Cookie: x";
    T_CHECK(egr_head(out, sizeof(out), &h) == -EINVAL, "CRLF in request id");
    h.request_id = "r1\x01";
    T_CHECK(egr_head(out, sizeof(out), &h) == -EINVAL, "control char in request id");
    h.request_id = NULL;
    h.extra = "x-a: 1";
    T_CHECK(egr_head(out, sizeof(out), &h) == -EINVAL, "extra without CRLF");
    h.extra = NULL;
    T_CHECK(egr_head(out, 20, &h) == -ENOSPC, "small");
    char c[32];
    memcpy(c + EGR_CHUNK_PAD, "hello", 5);
    n = egr_chunk(c, sizeof(c), c + EGR_CHUNK_PAD, 5);
    T_CHECK(n == 10 && !memcmp(c, "5\r\nhello\r\n", 10), "chunk in place");
    T_CHECK(egr_chunk(c, 9, "hello", 5) == -ENOSPC, "chunk small");
    T_CHECK(egr_chunk(c, 10, "hello", 5) == 10, "chunk exactly fits");
    T_CHECK(egr_chunk(c, sizeof(c), "", 0) == 0, "empty chunk writes nothing");

    /* the hand-written hex size against printf's, at every digit count
     * and around each boundary, formatted in place */
    static char big[EGR_CHUNK_PAD + 0x10000 + 2], hexw[16];
    static const size_t lens[] = { 1, 9, 10, 15, 16, 17, 255, 256, 4095, 4096, 0xabc, 0xffff, 0x10000 };
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        size_t len = lens[i];
        int wl = snprintf(hexw, sizeof(hexw), "%zx\r\n", len);

        memset(big + EGR_CHUNK_PAD, 'a' + (int)(i % 26), len);
        n = egr_chunk(big, sizeof(big), big + EGR_CHUNK_PAD, len);
        T_CHECK(n == wl + (int)len + 2 && !memcmp(big, hexw, (size_t)wl) &&
                    big[wl] == 'a' + (int)(i % 26) && big[wl + len - 1] == 'a' + (int)(i % 26) &&
                    !memcmp(big + wl + len, "\r\n", 2),
                "chunk of %zu bytes: %d, head %.*s", len, n, wl, big);
        T_CHECK(egr_chunk(big, (size_t)wl + len + 1, big + EGR_CHUNK_PAD, len) == -ENOSPC,
                "chunk of %zu bytes, one byte short", len);
    }
}

static const struct piece chat_script[] = {{"Hel", 0}, {"lo \"x\"\n", 0}, {"", 1}};

static void test_chat_stream(void)
{
    static struct out o;
    struct egr_resp_cfg cfg = base_cfg(EGR_CHAT, 1, 1);
    const char *ev[] = {
        PRE_CHAT CHAT_DELTA("{\"role\":\"assistant\",\"content\":\"\"}", "null") ",\"usage\":null}\n\n",
        PRE_CHAT CHAT_DELTA("{\"content\":\"Hel\"}", "null") ",\"usage\":null}\n\n",
        PRE_CHAT CHAT_DELTA("{\"content\":\"lo \\\"x\\\"\\n\"}", "null") ",\"usage\":null}\n\n",
        PRE_CHAT CHAT_DELTA("{}", "\"stop\"") ",\"usage\":null}\n\n",
        PRE_CHAT "\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":3,\"total_tokens\":8}}\n\n",
        "data: [DONE]\n\n"};

    run(&cfg, chat_script, 3, 1 << 15, SIZE_MAX, 0, &o);
    T_CHECK(o.rc == EGR_DONE, "chat rc %d", o.rc);
    expect_stream("chat stream", &o, HEAD_SSE, ev, 6);

    static char body[1 << 16];
    char text[256], fin[16] = "";
    size_t hl = 0, tl = 0;
    long bl = dechunk(o.buf, o.len, body, &hl);
    T_CHECK(bl > 0, "chat dechunk");
    T_CHECK(sse_check(body, (size_t)bl, 1, text, &tl, fin, sizeof(fin)) == 6, "chat sse");
    T_CHECK(tl == 10 && !memcmp(text, "Hello \"x\"\n", 10) && !strcmp(fin, "stop"), "chat text");
}

static void test_cmpl_stream_stop(void)
{
    static struct out o;
    /* stop "END" split over three tokens; nothing of it, nor after it. */
    const char *stops[] = {"END", "é!"};
    size_t sl[] = {3, 3};
    struct egr_resp_cfg cfg = base_cfg(EGR_COMPLETIONS, 1, 0);
    cfg.stops = stops, cfg.stop_lens = sl, cfg.n_stops = 2;
    const struct piece ps[] = {{"one E", 0}, {"N", 0}, {"Dtwo", 0}, {"never", 0}};
    const char *ev[] = {PRE_CMPL CMPL_TEXT("one ", "null") "}\n\n",
                        PRE_CMPL CMPL_TEXT("", "\"stop\"") "}\n\n", "data: [DONE]\n\n"};
    const char *head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nCache-Control: "
                       "no-cache\r\nTransfer-Encoding: chunked\r\nX-Request-Id: req-1\r\nConnection: "
                       "keep-alive\r\nx-ratelimit-remaining-requests: 9\r\n\r\n";

    run(&cfg, ps, 4, 1 << 15, SIZE_MAX, 0, &o);
    T_CHECK(o.rc == (EGR_DONE | EGR_CANCEL), "stop rc %d", o.rc);
    expect_stream("cmpl stop", &o, head, ev, 3);

    /* "é!" with é split across byte tokens, then a near miss "éa" first:
     * the held "é" is released whole once "a" shows it is no stop. */
    const struct piece p2[] = {{"x\xc3", 0}, {"\xa9", 0}, {"a\xc3", 0}, {"\xa9", 0}, {"!", 0}};
    const char *ev2[] = {PRE_CMPL CMPL_TEXT("x", "null") "}\n\n", PRE_CMPL CMPL_TEXT("éa", "null") "}\n\n",
                         PRE_CMPL CMPL_TEXT("", "\"stop\"") "}\n\n", "data: [DONE]\n\n"};
    run(&cfg, p2, 5, 1 << 15, SIZE_MAX, 0, &o);
    T_CHECK(o.rc == (EGR_DONE | EGR_CANCEL), "utf8 stop rc %d", o.rc);
    expect_stream("cmpl utf8 stop", &o, head, ev2, 4);
}

static void test_max_tokens(void)
{
    static struct out o;
    struct egr_resp_cfg cfg = base_cfg(EGR_COMPLETIONS, 1, 1);
    cfg.max_tokens = 2;
    /* the second token ends mid-character: flushed as U+FFFD at "length" */
    const struct piece ps[] = {{"ab", 0}, {"c\xe2\x9c", 0}, {"never", 0}};
    const char *ev[] = {PRE_CMPL CMPL_TEXT("ab", "null") ",\"usage\":null}\n\n",
                        PRE_CMPL CMPL_TEXT("c", "null") ",\"usage\":null}\n\n",
                        PRE_CMPL CMPL_TEXT("\xef\xbf\xbd", "null") ",\"usage\":null}\n\n",
                        PRE_CMPL CMPL_TEXT("", "\"length\"") ",\"usage\":null}\n\n",
                        PRE_CMPL "\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2,"
                                 "\"total_tokens\":7}}\n\n",
                        "data: [DONE]\n\n"};
    const char *head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nCache-Control: "
                       "no-cache\r\nTransfer-Encoding: chunked\r\nX-Request-Id: req-1\r\nConnection: "
                       "keep-alive\r\nx-ratelimit-remaining-requests: 9\r\n\r\n";
    run(&cfg, ps, 3, 1 << 15, SIZE_MAX, 0, &o);
    T_CHECK(o.rc == EGR_DONE, "length rc %d", o.rc);
    expect_stream("max_tokens", &o, head, ev, 6);
}

static void expect_body(const char *what, const struct out *o, const char *body)
{
    char head[512];
    struct egr_head h = {.status = 200, .keep_alive = 1, .content_length = strlen(body),
                         .request_id = "req-1", .extra = "x-ratelimit-remaining-requests: 9\r\n"};
    int hl = egr_head(head, sizeof(head), &h);
    size_t bl = strlen(body);

    T_CHECK(o->len == (size_t)hl + bl && !memcmp(o->buf, head, (size_t)hl) &&
              !memcmp(o->buf + hl, body, bl),
          "%s:\n got: %.*s\nwant: %s%s", what, (int)o->len, o->buf, head, body);
    char eb[256], tmp[8192];
    memcpy(tmp, body, bl + 1);
    yajl_val v = yajl_tree_parse(tmp, eb, sizeof(eb));
    T_CHECK(v, "%s: yajl: %s", what, eb);
    yajl_tree_free(v);
}

static void test_bodies(void)
{
    static struct out o;
    struct egr_resp_cfg cfg = base_cfg(EGR_CHAT, 0, 0);

    run(&cfg, chat_script, 3, 1 << 15, SIZE_MAX, 0, &o);
    T_CHECK(o.rc == EGR_DONE, "chat body rc %d", o.rc);
    expect_body("chat body", &o,
                "{\"id\":\"chatcmpl-abc\",\"object\":\"chat.completion\",\"created\":1700000000,\"model\":"
                "\"smollm\",\"system_fingerprint\":\"fp_favo\",\"choices\":[{\"index\":0,\"message\":{"
                "\"role\":\"assistant\",\"content\":\"Hello \\\"x\\\"\\n\"},\"logprobs\":null,"
                "\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":3,"
                "\"total_tokens\":8}}");

    cfg = base_cfg(EGR_COMPLETIONS, 0, 1);   /* include_usage: stream only */
    const struct piece ps[] = {{"a\tb", 0}, {"c", 0}};
    run(&cfg, ps, 2, 1 << 15, SIZE_MAX, EGR_FIN_LENGTH, &o);
    T_CHECK(o.rc == EGR_DONE, "cmpl body rc %d", o.rc);
    expect_body("cmpl body", &o,
                "{\"id\":\"cmpl-abc\",\"object\":\"text_completion\",\"created\":1700000000,\"model\":"
                "\"smollm\",\"system_fingerprint\":\"fp_favo\",\"choices\":[{\"text\":\"a\\tbc\","
                "\"index\":0,\"logprobs\":null,\"finish_reason\":\"length\"}],\"usage\":{"
                "\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7}}");

    /* a body that outgrows the area: -ENOBUFS, no overflow */
    static struct piece big[200];
    for (int i = 0; i < 200; i++)
        big[i] = (struct piece){"\x01\x02\x03\x04\x05\x06\x07\x08", 0};
    run(&cfg, big, 200, 4096, SIZE_MAX, 0, &o);
    T_CHECK(o.rc == -ENOBUFS, "body overflow rc %d", o.rc);
}

static void test_pressure(void)
{
    static struct out ref, o;
    static struct piece ps[300];
    const char *words[] = {"tok ", "\"q\" ", "\x01", "é", "\xe2\x9c", "\x93", "\n", "abcdefgh"};
    const char *stops[] = {"STOPHERE"};
    size_t sl[] = {8};
    uint64_t seed = 7;

    for (size_t i = 0; i < 299; i++)
        ps[i] = (struct piece){words[t_rand(&seed) % 8], 0};
    ps[299] = (struct piece){"", 1};
    for (int route = 1; route <= 2; route++) {
        struct egr_resp_cfg cfg = base_cfg(route, 1, 1);
        cfg.stops = stops, cfg.stop_lens = sl, cfg.n_stops = 1;
        run(&cfg, ps, 300, 1 << 16, SIZE_MAX, 0, &ref);
        T_CHECK(ref.rc == EGR_DONE && ref.eagain == 0, "ref rc %d", ref.rc);
        size_t caps[] = {3500, 4096, 6000};
        size_t steps[] = {1, 7, 100, 1000};
        for (size_t c = 0; c < 3; c++)
            for (size_t s = 0; s < 4; s++) {
                run(&cfg, ps, 300, caps[c], steps[s], 0, &o);
                T_CHECK(o.rc == EGR_DONE && o.eagain > 0, "cap %zu step %zu: rc %d eagain %d", caps[c],
                      steps[s], o.rc, o.eagain);
                T_CHECK(o.len == ref.len && !memcmp(o.buf, ref.buf, o.len),
                      "cap %zu step %zu: bytes differ from the large area", caps[c], steps[s]);
            }
        static char body[1 << 16];
        char text[8192], fin[16] = "";
        size_t hl = 0, tl = 0;
        long bl = dechunk(ref.buf, ref.len, body, &hl);
        T_CHECK(bl > 0 && sse_check(body, (size_t)bl, route == EGR_CHAT, text, &tl, fin, sizeof(fin)) > 0,
              "pressure stream parses");
    }
    /* an area too small for the head */
    struct egr_resp r;
    char small[64];
    struct egr_resp_cfg cfg = base_cfg(EGR_CHAT, 1, 0);
    T_CHECK(egr_resp_init(&r, &cfg, small, sizeof(small)) == -ENOSPC, "tiny area");
    /* a bad head is refused at init, also for a body (whose head comes last) */
    for (int st = 0; st < 2; st++) {
        struct egr_resp_cfg bad = base_cfg(EGR_CHAT, st, 0);
        bad.extra_head = "x-a: 1";
        T_CHECK(egr_resp_init(&r, &bad, small, sizeof(small)) == -EINVAL, "extra without CRLF");
        bad = base_cfg(EGR_CHAT, st, 0);
        bad.request_id = "a\rb";
        T_CHECK(egr_resp_init(&r, &bad, small, sizeof(small)) == -EINVAL, "CR in request id");
    }
    /* an area that can never hold one event's worst case: -ENOBUFS, not
     * an -EAGAIN the loop would wait on forever */
    static char mid[1500];
    T_CHECK(egr_resp_init(&r, &cfg, mid, sizeof(mid)) > 0, "mid init");
    egr_resp_consume(&r, mid, egr_resp_pending(&r));
    T_CHECK(egr_resp_bytes(&r, "x", 1, false, mid, sizeof(mid)) == -ENOBUFS, "never fits");
}

static void test_log(void)
{
    static struct out o;
    const char *marker = "ZQXMARKER1234";
    struct egr_resp_cfg cfg = base_cfg(EGR_CHAT, 0, 0);
    const struct piece ps[] = {{"prompt said ZQXMARKER1234 and ", 0}, {"", 1}};
    char line[1024], eb[256];

    run(&cfg, ps, 2, 1 << 14, SIZE_MAX, 0, &o);
    T_CHECK(memmem(o.buf, o.len, marker, strlen(marker)), "marker is in the response");
    /* The record is built from metadata only: the struct has no field
     * that can hold the marker; fill every field we have. */
    struct egr_access a = {.wall_ns = 1763893583123456789ull, .status = 200,
                           .finish = EGR_FIN_STOP, .prompt_tokens = 5, .completion_tokens = 2,
                           .queue_ns = 1500000, .ttft_ns = 20000000, .total_ns = 123456789};
    snprintf(a.request_id, sizeof(a.request_id), "req-\"1\"");
    snprintf(a.tenant, sizeof(a.tenant), "acme");
    snprintf(a.model, sizeof(a.model), "smollm");
    int n = egr_log_line(line, sizeof(line), &a);
    T_CHECK(n > 0 && line[n - 1] == '\n' && !memchr(line, '\n', (size_t)n - 1), "one line");
    T_CHECK(!strstr(line, marker), "marker reached the access line");
    const char *want = "{\"time\":\"2025-11-23T10:26:23.123Z\",\"request_id\":\"req-\\\"1\\\"\","
                       "\"tenant\":\"acme\",\"model\":\"smollm\",\"status\":200,\"finish_reason\":"
                       "\"stop\",\"prompt_tokens\":5,\"completion_tokens\":2,\"queue_ms\":1.500,"
                       "\"ttft_ms\":20.000,\"total_ms\":123.457}\n";
    T_CHECK(n == (int)strlen(want) && !strcmp(line, want), "log line:\n got: %s want: %s", line, want);
    line[n - 1] = 0;
    yajl_val v = yajl_tree_parse(line, eb, sizeof(eb));
    T_CHECK(v, "log yajl: %s", eb);
    yajl_tree_free(v);
    T_CHECK(egr_log_line(line, 40, &a) == -ENOSPC, "log small");
}

static eng_tok_t *load_tok(void)
{
    char path[1024], err[256];
    eng_gguf_t *g = NULL;
    eng_tok_t *tok = NULL;

    snprintf(path, sizeof(path), "%s/SmolLM2-135M-Instruct.Q4_1.gguf", t_env("FAVO_MODELS", "models"));
    if (eng_gguf_open(&g, path, err, sizeof(err))) {
        fprintf(stderr, "tokens: skipped (%s)\n", err);
        return NULL;
    }
    int rc = eng_tok_load(&tok, g, err, sizeof(err));
    eng_gguf_close(g);
    T_CHECK(rc == 0, "tok load: %s", err);
    return rc ? NULL : tok;
}

/* A scripted logprobs response through real token ids: token i has
 * logprob -0.25 i (token 3: -inf), alternatives id+1.. with lower ones. */
static const char lp_text[] = "Hello wörld ✓ \"q\"";

static int lp_script(eng_tok_t *tok, int route, int stream, int top, char *area, size_t cap,
                     struct out *o, int32_t *ids, int64_t *nids)
{
    struct egr_resp_cfg cfg = base_cfg(route, stream, 0);
    struct egr_resp r;
    int rc;

    cfg.logprobs = 1, cfg.top_logprobs = (uint8_t)top;
    *nids = eng_tok_encode(tok, lp_text, strlen(lp_text), 0, ids, 64);
    memset(o, 0, sizeof(*o));
    rc = egr_resp_init(&r, &cfg, area, cap);
    if (rc < 0)
        return rc;
    for (int64_t j = 0; j <= *nids; j++) {
        struct egr_lp lp = {.logprob = j == 3 ? -INFINITY : -0.25f * (float)j, .n_top = 3};
        for (int k = 0; k < 3; k++)
            lp.top_id[k] = (ids[j % *nids] + k) % (int32_t)eng_tok_n_vocab(tok),
            lp.top_lp[k] = lp.logprob - (float)k;
        int32_t id = j < *nids ? ids[j] : eng_tok_special(tok)->eos;
        rc = egr_resp_token_lp(&r, tok, id, &lp, area, cap);
        if (rc < 0 || (rc & EGR_DONE))
            break;
    }
    o->rc = rc;
    memcpy(o->buf, area, egr_resp_pending(&r));
    o->len = egr_resp_pending(&r);
    return rc;
}

static yajl_val jget(yajl_val v, const char *a, const char *b, const char *c)
{
    const char *p[] = {a, b, c, NULL};
    return yajl_tree_get(v, p, yajl_t_any);
}

static void test_logprobs(void)
{
    eng_tok_t *tok = load_tok();
    static char area[1 << 17], body[1 << 17];
    static struct out o;
    int32_t ids[64];
    int64_t n;
    char eb[256];

    if (!tok)
        return;
    /* chat, streaming: one chunk per token carrying its entry; the
     * entries' bytes spell the text */
    int rc = lp_script(tok, EGR_CHAT, 1, 2, area, sizeof(area), &o, ids, &n);
    T_CHECK(rc == EGR_DONE, "lp chat stream rc %d", rc);
    size_t hl = 0, bl;
    long l = dechunk(o.buf, o.len, body, &hl);
    T_CHECK(l > 0, "lp dechunk");
    bl = l > 0 ? (size_t)l : 0;
    char bytes[256];
    size_t nb = 0, i = 0;
    int entries = 0;
    while (i < bl) {
        char *e = memmem(body + i, bl - i, "\n\n", 2), ev[16384];
        if (!e)
            break;
        size_t el = (size_t)(e - body) - i - 6;
        memcpy(ev, body + i + 6, el);
        ev[el] = 0;
        i = (size_t)(e - body) + 2;
        if (!strcmp(ev, "[DONE]"))
            break;
        yajl_val v = yajl_tree_parse(ev, eb, sizeof(eb));
        T_CHECK(v, "lp event: %s", eb);
        if (!v)
            break;
        yajl_val ch = jget(v, "choices", NULL, NULL);
        if (ch && YAJL_IS_ARRAY(ch) && YAJL_GET_ARRAY(ch)->len) {
            yajl_val c0 = YAJL_GET_ARRAY(ch)->values[0];
            yajl_val cont = jget(c0, "logprobs", "content", NULL);
            if (cont && YAJL_IS_ARRAY(cont)) {
                yajl_val en = YAJL_GET_ARRAY(cont)->values[0];
                yajl_val by = jget(en, "bytes", NULL, NULL), lpv = jget(en, "logprob", NULL, NULL),
                         top = jget(en, "top_logprobs", NULL, NULL);
                for (size_t k = 0; by && k < YAJL_GET_ARRAY(by)->len; k++)
                    bytes[nb++] = (char)YAJL_GET_INTEGER(YAJL_GET_ARRAY(by)->values[k]);
                double want = entries == 3 ? -9999.0 : -0.25 * entries;
                T_CHECK(lpv && YAJL_IS_NUMBER(lpv) && YAJL_GET_DOUBLE(lpv) == want, "logprob %d", entries);
                T_CHECK(top && YAJL_GET_ARRAY(top)->len == 2, "top_logprobs length");
                entries++;
            }
        }
        yajl_tree_free(v);
    }
    if (entries != n)
        fprintf(stderr, "%.*s\n", (int)FAVO_MIN(bl, 1500), body);
    T_CHECK(entries == n, "lp chunks %d, tokens %lld", entries, (long long)n);
    T_CHECK(nb == strlen(lp_text) && !memcmp(bytes, lp_text, nb), "lp bytes spell the text: %.*s", (int)nb,
          bytes);

    /* chat body: all entries in one array */
    rc = lp_script(tok, EGR_CHAT, 0, 3, area, sizeof(area), &o, ids, &n);
    T_CHECK(rc == EGR_DONE, "lp chat body rc %d", rc);
    char *js = memmem(o.buf, o.len, "\r\n\r\n", 4);
    if (js) {
        size_t jl = o.len - (size_t)(js + 4 - o.buf);
        memmove(body, js + 4, jl);
        body[jl] = 0;
        yajl_val v = yajl_tree_parse(body, eb, sizeof(eb));
        T_CHECK(v, "lp body: %s", eb);
        yajl_val ch = v ? jget(v, "choices", NULL, NULL) : NULL;
        yajl_val cont = ch ? jget(YAJL_GET_ARRAY(ch)->values[0], "logprobs", "content", NULL) : NULL;
        T_CHECK(cont && YAJL_IS_ARRAY(cont) && (int64_t)YAJL_GET_ARRAY(cont)->len == n, "lp body entries");
        if (cont && YAJL_GET_ARRAY(cont)->len)
            T_CHECK(YAJL_GET_ARRAY(jget(YAJL_GET_ARRAY(cont)->values[0], "top_logprobs", NULL, NULL))->len == 3,
                  "lp body top 3");
        yajl_tree_free(v);
    }

    /* completions stream: the four arrays, text_offset growing */
    rc = lp_script(tok, EGR_COMPLETIONS, 1, 2, area, sizeof(area), &o, ids, &n);
    T_CHECK(rc == EGR_DONE, "lp cmpl stream rc %d", rc);
    T_CHECK(memmem(o.buf, o.len, "\"token_logprobs\":[-9999]", 24) != NULL, "-inf as -9999");
    T_CHECK(memmem(o.buf, o.len, "\"text_offset\":[0]", 17) != NULL, "text_offset 0");
    l = dechunk(o.buf, o.len, body, &hl);
    char text[256], fin[16] = "";
    size_t tl = 0;
    T_CHECK(l > 0 && sse_check(body, (size_t)l, 0, text, &tl, fin, sizeof(fin)) == (int)n + 2,
          "lp cmpl: one chunk per token + final + [DONE]");

    /* completions body: the four arrays from the records, rendered at the
     * end; tokens spell the text, text_offset counts characters */
    for (int top = 0; top <= 3; top += 3) {
        rc = lp_script(tok, EGR_COMPLETIONS, 0, top, area, sizeof(area), &o, ids, &n);
        T_CHECK(rc == EGR_DONE, "lp cmpl body rc %d", rc);
        js = memmem(o.buf, o.len, "\r\n\r\n", 4);
        T_CHECK(js != NULL, "lp cmpl body head");
        if (!js)
            continue;
        size_t jl = o.len - (size_t)(js + 4 - o.buf);
        memmove(body, js + 4, jl);
        body[jl] = 0;
        yajl_val v = yajl_tree_parse(body, eb, sizeof(eb));
        T_CHECK(v, "lp cmpl body: %s", eb);
        if (!v)
            continue;
        yajl_val c0 = YAJL_GET_ARRAY(jget(v, "choices", NULL, NULL))->values[0];
        yajl_val tks = jget(c0, "logprobs", "tokens", NULL),
                 tlp = jget(c0, "logprobs", "token_logprobs", NULL),
                 tops = jget(c0, "logprobs", "top_logprobs", NULL),
                 offs = jget(c0, "logprobs", "text_offset", NULL),
                 txt = jget(c0, "text", NULL, NULL);
        T_CHECK(tks && YAJL_IS_ARRAY(tks) && (int64_t)YAJL_GET_ARRAY(tks)->len == n, "cmpl tokens");
        T_CHECK(tlp && YAJL_IS_ARRAY(tlp) && (int64_t)YAJL_GET_ARRAY(tlp)->len == n,
                "cmpl token_logprobs");
        T_CHECK(offs && YAJL_IS_ARRAY(offs) && (int64_t)YAJL_GET_ARRAY(offs)->len == n,
                "cmpl text_offset");
        const char *ts = txt && YAJL_IS_STRING(txt) ? YAJL_GET_STRING(txt) : NULL;
        T_CHECK(ts && !strcmp(ts, lp_text), "cmpl text");
        if (top)
            T_CHECK(tops && YAJL_IS_ARRAY(tops) && (int64_t)YAJL_GET_ARRAY(tops)->len == n,
                    "cmpl top_logprobs list");
        else
            T_CHECK(tops && YAJL_IS_NULL(tops), "cmpl top_logprobs null without alternatives");
        if (tks && tlp && offs && YAJL_IS_ARRAY(tks) && (int64_t)YAJL_GET_ARRAY(tks)->len == n &&
            (int64_t)YAJL_GET_ARRAY(tlp)->len == n && (int64_t)YAJL_GET_ARRAY(offs)->len == n) {
            char cat[256] = "";
            long chars = 0;
            for (int64_t j = 0; j < n; j++) {
                double want = j == 3 ? -9999.0 : -0.25 * (double)j;
                T_CHECK(YAJL_GET_DOUBLE(YAJL_GET_ARRAY(tlp)->values[j]) == want, "cmpl lp %lld",
                        (long long)j);
                T_CHECK(YAJL_GET_INTEGER(YAJL_GET_ARRAY(offs)->values[j]) == chars,
                        "cmpl text_offset %lld", (long long)j);
                /* the raw pieces spell the text; a piece that is not
                 * valid UTF-8 alone (a split character) shows U+FFFD */
                const char *t = YAJL_GET_STRING(YAJL_GET_ARRAY(tks)->values[j]), *pc;
                size_t pn;
                T_CHECK(eng_tok_piece(tok, ids[j], ENG_TOK_SHOW_SPECIAL, &pc, &pn) == 0, "piece");
                strncat(cat, pc, FAVO_MIN(pn, sizeof(cat) - strlen(cat) - 1));
                for (size_t q = 0; q < pn; q++)
                    chars += ((unsigned char)pc[q] & 0xc0) != 0x80;
                T_CHECK(t && (strlen(t) == pn ? !memcmp(t, pc, pn) : strstr(t, "\xef\xbf\xbd") != NULL),
                        "cmpl token %lld is its piece", (long long)j);
                if (top) {
                    yajl_val d = YAJL_GET_ARRAY(tops)->values[j];
                    T_CHECK(YAJL_IS_OBJECT(d) && d->u.object.len >= 1 && d->u.object.len <= 3,
                            "cmpl top dict %lld", (long long)j);
                }
            }
            T_CHECK(!strcmp(cat, lp_text), "cmpl tokens spell the text: %s", cat);
        }
        yajl_tree_free(v);
    }

    /* a body with logprobs cannot be finished without the tokenizer */
    {
        struct egr_resp_cfg cfg = base_cfg(EGR_CHAT, 0, 0);
        struct egr_resp r;
        struct egr_lp lp = {.logprob = -1.0f};

        cfg.logprobs = 1;
        T_CHECK(egr_resp_init(&r, &cfg, area, sizeof(area)) == 0, "lp init");
        T_CHECK(egr_resp_token_lp(&r, tok, ids[0], &lp, area, sizeof(area)) == 0, "lp token");
        T_CHECK(egr_resp_finish(&r, EGR_FIN_LENGTH, area, sizeof(area)) == -EINVAL,
                "lp finish without the tokenizer");
        T_CHECK(egr_resp_finish_tok(&r, tok, EGR_FIN_LENGTH, area, sizeof(area)) == EGR_DONE,
                "lp finish with it");
        T_CHECK(memmem(area, egr_resp_pending(&r), "\"logprob\":-1,", 13) != NULL,
                "lp finish renders the entry: %.*s", (int)egr_resp_pending(&r), area);
    }
    /* an alternative id out of range: refused before any state changes */
    {
        struct egr_resp_cfg cfg = base_cfg(EGR_COMPLETIONS, 0, 0);
        struct egr_resp r;
        struct egr_lp lp = {.logprob = -1.0f, .n_top = 1, .top_id = {-5}};

        cfg.logprobs = 1, cfg.top_logprobs = 1;
        T_CHECK(egr_resp_init(&r, &cfg, area, sizeof(area)) == 0, "lp init 2");
        T_CHECK(egr_resp_token_lp(&r, tok, ids[0], &lp, area, sizeof(area)) == -EINVAL,
                "bad alternative refused");
        T_CHECK(r.completion_tokens == 0 && r.lp_n == 0, "nothing changed");
    }
    eng_tok_free(tok);
}

static void test_tokens(void)
{
    eng_tok_t *tok = load_tok();
    int rc;

    if (!tok)
        return;
    const char *text = "Hello, wörld ✓ 𝔘 \"quoted\"\tEND of it";
    int32_t ids[256];
    int64_t k = eng_tok_encode(tok, text, strlen(text), 0, ids, 256);
    T_CHECK(k > 0, "encode");
    const char *stops[] = {"END"};
    size_t sl[] = {3};
    struct egr_resp_cfg cfg = base_cfg(EGR_CHAT, 1, 0);
    cfg.stops = stops, cfg.stop_lens = sl, cfg.n_stops = 1;
    struct egr_resp r;
    static char area[1 << 15], body[1 << 15];
    T_CHECK(egr_resp_init(&r, &cfg, area, sizeof(area)) > 0, "init");
    T_CHECK(egr_resp_token(&r, tok, (int32_t)eng_tok_n_vocab(tok), area, sizeof(area)) == -ERANGE,
          "bad id");
    rc = 0;
    for (int64_t j = 0; j < k && !(rc & EGR_DONE); j++) {
        rc = egr_resp_token(&r, tok, ids[j], area, sizeof(area));
        T_CHECK(rc >= 0, "token %lld: %d", (long long)j, rc);
    }
    T_CHECK(rc == (EGR_DONE | EGR_CANCEL), "stopped: %d", rc);
    char text_out[256], fin[16] = "";
    size_t hl = 0, tl = 0;
    long bl = dechunk(area, egr_resp_pending(&r), body, &hl);
    T_CHECK(bl > 0 && sse_check(body, (size_t)bl, 1, text_out, &tl, fin, sizeof(fin)) > 0, "parses");
    size_t want = (size_t)(strstr(text, "END") - text);
    T_CHECK(tl == want && !memcmp(text_out, text, want) && !strcmp(fin, "stop"), "text '%.*s'", (int)tl,
          text_out);
    egr_scrub(&r, area, sizeof(area));
    eng_tok_free(tok);
}

/* Random bytes (invalid UTF-8, control chars, quotes), random stops and
 * areas: every stream dechunks and every event is JSON; the streamed text
 * equals the non-streamed body's (metamorphic), both equal to the text
 * before the first stop, and CANCEL comes exactly with a stop. */
static void test_random(void)
{
    static struct out so, bo;
    static char body[1 << 16], text[1 << 14], pieces_buf[64][16];
    static struct piece ps[64];
    const char alpha[] = "ab\"\\\n\x01\xc3\xa9\xe2\x9c\x93\xff XY";
    uint64_t seed = 12345;
    int n_stopped = 0;

    for (int it = 0; it < 300; it++) {
        size_t n = 1 + t_rand(&seed) % 40, all_len = 0;
        static char all[64 * 16];
        for (size_t i = 0; i < n; i++) {
            size_t l = t_rand(&seed) % 6;
            for (size_t j = 0; j < l; j++)
                pieces_buf[i][j] = alpha[t_rand(&seed) % (sizeof(alpha) - 1)];
            pieces_buf[i][l] = 0;   /* NUL is not in alpha: strlen is l */
            ps[i] = (struct piece){pieces_buf[i], 0};
            memcpy(all + all_len, pieces_buf[i], l);
            all_len += l;
        }
        char stop[3] = {alpha[t_rand(&seed) % 6], alpha[t_rand(&seed) % 6], 0};
        const char *stops[] = {stop};
        size_t sl[] = {2};
        int route = 1 + (int)(t_rand(&seed) % 2);
        struct egr_resp_cfg cfg = base_cfg(route, 1, 1);
        cfg.stops = stops, cfg.stop_lens = sl, cfg.n_stops = 1;
        size_t cap = 3500 + t_rand(&seed) % 4000, step = 1 + t_rand(&seed) % 300;
        run(&cfg, ps, n, cap, step, EGR_FIN_LENGTH, &so);
        T_CHECK(so.rc > 0 && (so.rc & EGR_DONE), "random %d: stream rc %d", it, so.rc);
        size_t hl = 0, tl = 0;
        char fin[16] = "";
        long bl = dechunk(so.buf, so.len, body, &hl);
        T_CHECK(bl > 0 && sse_check(body, (size_t)bl, route == EGR_CHAT, text, &tl, fin, sizeof(fin)) > 0,
              "random %d: stream does not parse", it);
        /* the reference: the raw text up to the first stop */
        char *hit = memmem(all, all_len, stop, 2);
        int stopped = hit != NULL;
        n_stopped += stopped;
        T_CHECK(!!(so.rc & EGR_CANCEL) == stopped, "random %d: cancel %d, stop %d", it, so.rc, stopped);
        T_CHECK(!strcmp(fin, stopped ? "stop" : "length"), "random %d: finish %s", it, fin);
        cfg.stream = 0;
        run(&cfg, ps, n, 1 << 15, SIZE_MAX, EGR_FIN_LENGTH, &bo);
        T_CHECK(bo.rc == so.rc, "random %d: body rc %d vs %d", it, bo.rc, so.rc);
        char *js = memmem(bo.buf, bo.len, "\r\n\r\n", 4), eb[128];
        if (!js) {
            T_CHECK(0, "random %d: no head", it);
            continue;
        }
        size_t jl = bo.len - (size_t)(js + 4 - bo.buf);
        memmove(body, js + 4, jl);
        body[jl] = 0;
        yajl_val v = yajl_tree_parse(body, eb, sizeof(eb));
        const char *cp[] = {"choices", NULL};
        yajl_val ch = v ? yajl_tree_get(v, cp, yajl_t_array) : NULL;
        T_CHECK(ch && YAJL_GET_ARRAY(ch)->len == 1, "random %d: body: %s", it, eb);
        if (ch && YAJL_GET_ARRAY(ch)->len == 1) {
            const char *tp[] = {"message", "content", NULL}, *tp2[] = {"text", NULL};
            yajl_val t = yajl_tree_get(YAJL_GET_ARRAY(ch)->values[0], route == EGR_CHAT ? tp : tp2,
                                       yajl_t_string);
            T_CHECK(t && strlen(t->u.string) == tl && !memcmp(t->u.string, text, tl),
                  "random %d: streamed text differs from the body's", it);
            /* without invalid bytes the text is exactly the raw prefix */
            size_t want = stopped ? (size_t)(hit - all) : all_len;
            int clean = !memchr(all, '\xff', all_len) && !memchr(all, '\xc3', all_len) &&
                        !memchr(all, '\xe2', all_len) && !memchr(all, '\xa9', all_len) &&
                        !memchr(all, '\x9c', all_len) && !memchr(all, '\x93', all_len);
            if (clean)
                T_CHECK(tl == want && !memcmp(text, all, want), "random %d: text is not the prefix", it);
        }
        yajl_tree_free(v);
    }
    printf("random: %d of 300 scripts ended on a stop\n", n_stopped);
    T_CHECK(n_stopped > 30 && n_stopped < 270, "random scripts should mix stops and lengths");
}

/* Raw responses for test-egress-sdk.py. */
static int emit_case(const char *name)
{
    static struct out o;
    struct egr_resp_cfg cfg;
    const char *stops[] = {"END"};
    size_t sl[] = {3};
    const struct piece ps[] = {{"Hel", 0}, {"lo, \"wörld\" ✓\n\x01", 0}, {" E", 0}, {"ND", 0}};
    int chat = strstr(name, "chat") != NULL, stream = strstr(name, "stream") != NULL;

    if (strstr(name, "-lp")) {
        static char area[1 << 17];
        int32_t ids[64];
        int64_t nids;
        eng_tok_t *tok = load_tok();
        if (!tok)
            return T_SKIP;
        int rc = lp_script(tok, chat ? EGR_CHAT : EGR_COMPLETIONS, stream, 2, area, sizeof(area), &o,
                           ids, &nids);
        eng_tok_free(tok);
        if (rc < 0 || !(rc & EGR_DONE))
            return 1;
        fwrite(o.buf, 1, o.len, stdout);
        return 0;
    }
    cfg = base_cfg(chat ? EGR_CHAT : EGR_COMPLETIONS, stream, 1);
    if (strstr(name, "stop"))
        cfg.stops = stops, cfg.stop_lens = sl, cfg.n_stops = 1;
    else
        cfg.max_tokens = 4;
    run(&cfg, ps, 4, 1 << 15, SIZE_MAX, 0, &o);
    if (!(o.rc & EGR_DONE))
        return 1;
    fwrite(o.buf, 1, o.len, stdout);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && !strcmp(argv[1], "--emit"))
        return emit_case(argv[2]);
    test_json();
    test_head();
    test_chat_stream();
    test_cmpl_stream_stop();
    test_max_tokens();
    test_bodies();
    test_pressure();
    test_log();
    test_random();
    test_tokens();
    test_logprobs();
    if (t_failures) {
        fprintf(stderr, "%d failure(s)\n", t_failures);
        return 1;
    }
    printf("ok\n");
    return 0;
}
