/*
 * test-ingress-http.c - the HTTP/1.1 request parser (ingress/ing_http.h).
 *
 * Every case is parsed three ways - the whole input at once, fed byte by
 * byte, and in several seeded random splits - and all must give the same
 * verdict, status and parsed fields. Bytes are appended to the buffer as
 * they are "received", so a parser reading beyond len would see garbage.
 */
#include "ing_http.h"
#include "favo_base.h"
#include "t_util.h"

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#define CRLF "\r\n"

/* Result of one parse, comparable across feeding modes. */
struct res {
    int rc;
    struct ing_http_req r;
    uint8_t *buf;   /* the buffer parsed (chunked bodies are decoded in it) */
    size_t len;
};

enum mode { WHOLE, BYTES, RANDOM };

/* Parse in from offset 0; mode decides how the bytes arrive. */
static void parse(struct res *o, const void *in, size_t n, enum mode m, uint64_t seed,
                  const struct ing_http_limits *lim)
{
    size_t have = 0;

    o->buf = malloc(n + 1);
    assert_non_null(o->buf);
    memset(o->buf, 0xA5, n + 1);
    o->len = n;
    ing_http_init(&o->r, lim, 0);
    o->rc = -EAGAIN;
    while (o->rc == -EAGAIN && have < n) {
        size_t step = m == WHOLE ? n : m == BYTES ? 1 : 1 + t_rand(&seed) % 13;

        if (step > n - have)
            step = n - have;
        memcpy(o->buf + have, (const uint8_t *)in + have, step);
        have += step;
        o->rc = ing_http_parse(&o->r, o->buf, have);
        /* idempotent: the same length again changes nothing */
        int again = ing_http_parse(&o->r, o->buf, have);
        assert_int_equal(again, o->rc);
    }
}

static void same(const struct res *a, const struct res *b)
{
    assert_int_equal(a->rc, b->rc);
    assert_int_equal(a->r.state, b->r.state);
    if (a->rc == -EPROTO) {
        assert_int_equal(a->r.status, b->r.status);
        assert_int_equal(a->r.err, b->r.err);
        assert_int_equal(a->r.err_off, b->r.err_off);
        return;
    }
    if (a->rc)
        return;
    assert_int_equal(a->r.method, b->r.method);
    assert_int_equal(a->r.keep_alive, b->r.keep_alive);
    assert_int_equal(a->r.next, b->r.next);
    assert_int_equal(a->r.nheaders, b->r.nheaders);
    assert_int_equal(a->r.target.off, b->r.target.off);
    assert_int_equal(a->r.target.len, b->r.target.len);
    assert_int_equal(a->r.body.off, b->r.body.off);
    assert_int_equal(a->r.body.len, b->r.body.len);
    assert_memory_equal(a->buf + a->r.body.off, b->buf + b->r.body.off, a->r.body.len);
}

/* Parse s every way; return the whole-buffer result (caller frees buf). */
static struct res run_lim(const char *s, size_t n, int want_rc, int want_status,
                          const struct ing_http_limits *lim)
{
    struct res w, o;

    parse(&w, s, n, WHOLE, 0, lim);
    if (w.rc != want_rc || (want_rc == -EPROTO && w.r.status != want_status))
        fprintf(stderr, "case %.60s...: rc %d status %d err '%s' at %u\n", s, w.rc, w.r.status,
                ing_http_strerror(w.r.err), w.r.err_off);
    assert_int_equal(w.rc, want_rc);
    if (want_rc == -EPROTO)
        assert_int_equal(w.r.status, want_status);
    parse(&o, s, n, BYTES, 0, lim);
    same(&w, &o);
    free(o.buf);
    for (uint64_t seed = 1; seed <= 8; seed++) {
        parse(&o, s, n, RANDOM, seed, lim);
        same(&w, &o);
        free(o.buf);
    }
    return w;
}

static struct res run(const char *s, int want_rc, int want_status)
{
    return run_lim(s, strlen(s), want_rc, want_status, NULL);
}

static void expect_status(const char *s, int status)
{
    struct res w = run(s, -EPROTO, status);

    free(w.buf);
}

static bool span_is(const struct res *w, struct ing_span sp, const char *str)
{
    return sp.len == strlen(str) && !memcmp(w->buf + sp.off, str, sp.len);
}

/* ---- valid requests ---- */

static void test_get_basic(void **state)
{
    const char *s = "GET /v1/models?x=1&y HTTP/1.1" CRLF "Host: a" CRLF
                    "User-Agent: t" CRLF CRLF;
    struct res w = run(s, 0, 0);

    assert_int_equal(w.r.method, ING_HTTP_GET);
    assert_true(span_is(&w, w.r.target, "/v1/models?x=1&y"));
    assert_true(span_is(&w, w.r.path, "/v1/models"));
    assert_true(span_is(&w, w.r.query, "x=1&y"));
    assert_true(span_is(&w, w.r.method_span, "GET"));
    assert_int_equal(w.r.version_minor, 1);
    assert_true(w.r.keep_alive);
    assert_int_equal(w.r.nheaders, 2);
    assert_int_equal(w.r.next, strlen(s));
    assert_int_equal(w.r.body.len, 0);
    assert_true(ing_http_headers_done(&w.r));
    assert_false(ing_http_want_continue(&w.r));
    free(w.buf);
}

static void test_keep_alive_rules(void **state)
{
    struct { const char *s; int ka; } c[] = {
        { "GET / HTTP/1.0" CRLF CRLF, 0 },
        { "GET / HTTP/1.0" CRLF "Connection: keep-alive" CRLF CRLF, 1 },
        { "GET / HTTP/1.0" CRLF "Connection: Keep-Alive, close" CRLF CRLF, 0 },
        { "GET / HTTP/1.1" CRLF "Host: h" CRLF CRLF, 1 },
        { "GET / HTTP/1.1" CRLF "Host: h" CRLF "Connection: close" CRLF CRLF, 0 },
        { "GET / HTTP/1.1" CRLF "Host: h" CRLF "connection: upgrade , CLOSE" CRLF CRLF, 0 },
        { "GET / HTTP/1.1" CRLF "Host: h" CRLF "Connection: keep-alive" CRLF CRLF, 1 },
    };
    for (unsigned i = 0; i < FAVO_ARRAY_SIZE(c); i++) {
        struct res w = run(c[i].s, 0, 0);

        assert_int_equal(w.r.keep_alive, c[i].ka);
        free(w.buf);
    }
}

static void test_post_content_length(void **state)
{
    const char *s = "POST /v1/completions HTTP/1.1" CRLF "Host: x" CRLF
                    "Content-Type: application/json; charset=utf-8" CRLF
                    "Content-Length: 13" CRLF CRLF "{\"prompt\":1}\n";
    struct res w = run(s, 0, 0);
    struct ing_span ct;

    assert_int_equal(w.r.method, ING_HTTP_POST);
    assert_true(span_is(&w, w.r.body, "{\"prompt\":1}\n"));
    assert_int_equal(w.r.next, strlen(s));
    assert_int_equal(ing_http_content_type(&w.r, w.buf, &ct), 0);
    assert_true(span_is(&w, ct, "application/json"));
    assert_true(ing_http_is_json(&w.r, w.buf));
    free(w.buf);

    /* the same Content-Length twice is fine; 0 means no body */
    w = run("POST / HTTP/1.1" CRLF "Host: x" CRLF "Content-Length: 3" CRLF
            "content-length: 003" CRLF CRLF "abc", 0, 0);
    assert_true(span_is(&w, w.r.body, "abc"));
    free(w.buf);
    w = run("POST / HTTP/1.1" CRLF "Host: x" CRLF "Content-Length: 0" CRLF CRLF, 0, 0);
    assert_int_equal(w.r.body.len, 0);
    free(w.buf);
}

static void test_incomplete(void **state)
{
    struct res w = run("POST / HTTP/1.1" CRLF "Host: x" CRLF "Content-Length: 10" CRLF CRLF
                       "abc", -EAGAIN, 0);

    assert_true(ing_http_headers_done(&w.r));
    assert_int_equal(ing_http_full_status(&w.r), 413);
    free(w.buf);
    w = run("GET / HTTP/1.1" CRLF "Host: x" CRLF, -EAGAIN, 0);
    assert_false(ing_http_headers_done(&w.r));
    assert_int_equal(ing_http_full_status(&w.r), 431);
    free(w.buf);
}

static void test_pipelined(void **state)
{
    const char *s = "GET /a HTTP/1.1" CRLF "Host: x" CRLF CRLF
                    "POST /b HTTP/1.1" CRLF "Host: x" CRLF "Transfer-Encoding: chunked" CRLF CRLF
                    "3" CRLF "abc" CRLF "0" CRLF CRLF
                    "POST /c HTTP/1.1" CRLF "Host: x" CRLF "Content-Length: 2" CRLF CRLF "xy"
                    "GET /d HTTP/1.1" CRLF "Host: x" CRLF "Connection: close" CRLF CRLF;
    static const char *const paths[] = { "/a", "/b", "/c", "/d" };
    static const char *const bodies[] = { "", "abc", "xy", "" };
    size_t n = strlen(s);

    /* whole buffer, then byte by byte: same four requests */
    for (int mode = 0; mode < 2; mode++) {
        uint8_t *buf = malloc(n);
        struct ing_http_req r;
        uint32_t start = 0;
        size_t have = mode ? 0 : n;

        memcpy(buf, s, mode ? 0 : n);
        for (unsigned i = 0; i < 4; i++) {
            int rc;

            ing_http_init(&r, NULL, start);
            while ((rc = ing_http_parse(&r, buf, have)) == -EAGAIN) {
                assert_true(have < n);
                buf[have] = (uint8_t)s[have];
                have++;
            }
            assert_int_equal(rc, 0);
            assert_int_equal(r.path.len, strlen(paths[i]));
            assert_memory_equal(buf + r.path.off, paths[i], r.path.len);
            assert_int_equal(r.body.len, strlen(bodies[i]));
            assert_memory_equal(buf + r.body.off, bodies[i], r.body.len);
            assert_int_equal(r.keep_alive, i < 3);
            /* bytes of the next request are untouched by chunked decoding */
            assert_memory_equal(buf + r.next, s + r.next, have - r.next);
            start = r.next;
        }
        assert_int_equal(start, n);
        free(buf);
    }
}

static void test_chunked(void **state)
{
    const char *s = "POST /v1/chat/completions HTTP/1.1" CRLF "Host: x" CRLF
                    "Transfer-Encoding: chunked" CRLF CRLF
                    "5;foo=bar" CRLF "hello" CRLF
                    "6 ; a = \"q \\\" x\" ;b" CRLF " world" CRLF
                    "A" CRLF "0123456789" CRLF
                    "0;last" CRLF "X-Trailer: yes" CRLF "Another: 1" CRLF CRLF;
    struct res w = run(s, 0, 0);

    assert_true(w.r.chunked);
    assert_true(span_is(&w, w.r.body, "hello world0123456789"));
    assert_int_equal(w.r.next, strlen(s));
    /* trailers are not headers */
    assert_int_equal(w.r.nheaders, 2);
    free(w.buf);

    /* case-insensitive coding, upper-case hex, leading zeros */
    w = run("POST / HTTP/1.1" CRLF "Host: x" CRLF "transfer-encoding: Chunked" CRLF CRLF
            "000B" CRLF "hello world" CRLF "00" CRLF CRLF, 0, 0);
    assert_true(span_is(&w, w.r.body, "hello world"));
    free(w.buf);
}

static void test_expect_continue(void **state)
{
    const char *h = "POST / HTTP/1.1" CRLF "Host: x" CRLF "Expect: 100-Continue" CRLF
                    "Content-Length: 4" CRLF CRLF;
    char full[256];
    struct res w = run(h, -EAGAIN, 0);

    assert_true(w.r.expect_continue);
    assert_true(ing_http_want_continue(&w.r));
    free(w.buf);
    snprintf(full, sizeof(full), "%sbody", h);
    w = run(full, 0, 0);
    assert_false(ing_http_want_continue(&w.r));
    assert_true(span_is(&w, w.r.body, "body"));
    free(w.buf);
    /* HTTP/1.0 clients do not wait for 100 */
    w = run("POST / HTTP/1.0" CRLF "Expect: 100-continue" CRLF "Content-Length: 1" CRLF CRLF,
            -EAGAIN, 0);
    assert_false(ing_http_want_continue(&w.r));
    free(w.buf);
    expect_status("POST / HTTP/1.1" CRLF "Host: x" CRLF "Expect: 200-ok" CRLF CRLF, 417);
}

static void test_lookups(void **state)
{
    const char *s = "POST /v1/completions HTTP/1.1" CRLF "hOsT: x" CRLF
                    "AUTHORIZATION: Bearer  sk-abc.DEF_123~+/==  " CRLF
                    "X-Request-ID: req-42:a.b_c" CRLF "X-Empty:" CRLF CRLF;
    struct res w = run(s, 0, 0);
    struct ing_span sp;

    assert_int_equal(ing_http_header_find(&w.r, w.buf, "host", &sp), 0);
    assert_true(span_is(&w, sp, "x"));
    assert_int_equal(ing_http_header_find(&w.r, w.buf, "x-empty", &sp), 0);
    assert_int_equal(sp.len, 0);
    assert_int_equal(ing_http_header_find(&w.r, w.buf, "nope", &sp), -ENOENT);
    assert_int_equal(ing_http_bearer(&w.r, w.buf, &sp), 0);
    assert_true(span_is(&w, sp, "sk-abc.DEF_123~+/=="));
    assert_int_equal(ing_http_request_id(&w.r, w.buf, &sp), 0);
    assert_true(span_is(&w, sp, "req-42:a.b_c"));
    assert_int_equal(ing_http_content_type(&w.r, w.buf, &sp), -ENOENT);
    assert_false(ing_http_is_json(&w.r, w.buf));
    free(w.buf);

    static const char *const bad_auth[] = {
        "Authorization: Basic abc", "Authorization: Bearer", "Authorization: Bearer ",
        "Authorization: Bearer a b", "Authorization: Bearer a=b", "Authorization: Bearerabc",
    };
    for (unsigned i = 0; i < FAVO_ARRAY_SIZE(bad_auth); i++) {
        char req[256];

        snprintf(req, sizeof(req), "GET / HTTP/1.1" CRLF "Host: x" CRLF "%s" CRLF CRLF,
                 bad_auth[i]);
        w = run(req, 0, 0);
        assert_int_equal(ing_http_bearer(&w.r, w.buf, &sp), -EINVAL);
        free(w.buf);
    }
    w = run("GET / HTTP/1.1" CRLF "Host: x" CRLF "Authorization: Bearer a" CRLF
            "Authorization: Bearer b" CRLF "X-Request-Id: has space" CRLF CRLF, 0, 0);
    assert_int_equal(ing_http_bearer(&w.r, w.buf, &sp), -EINVAL);
    assert_int_equal(ing_http_request_id(&w.r, w.buf, &sp), -EINVAL);
    free(w.buf);
}

static void test_targets(void **state)
{
    struct res w = run("OPTIONS * HTTP/1.1" CRLF "Host: x" CRLF CRLF, 0, 0);

    assert_true(span_is(&w, w.r.path, "*"));
    free(w.buf);
    w = run("GET http://example.com:80/v1/models?q HTTP/1.1" CRLF "Host: x" CRLF CRLF, 0, 0);
    assert_true(span_is(&w, w.r.path, "/v1/models"));
    assert_true(span_is(&w, w.r.query, "q"));
    free(w.buf);
    expect_status("GET * HTTP/1.1" CRLF "Host: x" CRLF CRLF, 400);
    expect_status("GET v1 HTTP/1.1" CRLF "Host: x" CRLF CRLF, 400);
    expect_status("GET /a\x80 HTTP/1.1" CRLF "Host: x" CRLF CRLF, 400);
}

static void test_tolerated(void **state)
{
    /* obs-text in values, empty values, HT as OWS, stray CRLFs before */
    struct res w = run(CRLF CRLF "GET / HTTP/1.1" CRLF "Host: x" CRLF "X-A: caf\xc3\xa9 \x80\xff" CRLF
                       "X-B:\t v \t" CRLF CRLF, 0, 0);
    struct ing_span sp;

    assert_int_equal(ing_http_header_find(&w.r, w.buf, "x-b", &sp), 0);
    assert_true(span_is(&w, sp, "v"));
    free(w.buf);
}

/* ---- refused ---- */

static void test_smuggling(void **state)
{
    static const char *const cases[] = {
        /* CL together with TE, either order */
        "POST / HTTP/1.1" CRLF "Host: x" CRLF "Content-Length: 3" CRLF
        "Transfer-Encoding: chunked" CRLF CRLF "0" CRLF CRLF,
        "POST / HTTP/1.1" CRLF "Host: x" CRLF "Transfer-Encoding: chunked" CRLF
        "Content-Length: 3" CRLF CRLF "0" CRLF CRLF,
        /* differing duplicate CL, CL lists and junk */
        "POST / HTTP/1.1" CRLF "Host: x" CRLF "Content-Length: 3" CRLF "Content-Length: 4" CRLF CRLF,
        "POST / HTTP/1.1" CRLF "Host: x" CRLF "Content-Length: 3, 3" CRLF CRLF,
        "POST / HTTP/1.1" CRLF "Host: x" CRLF "Content-Length: +3" CRLF CRLF,
        "POST / HTTP/1.1" CRLF "Host: x" CRLF "Content-Length: 0x3" CRLF CRLF,
        "POST / HTTP/1.1" CRLF "Host: x" CRLF "Content-Length: -1" CRLF CRLF,
        "POST / HTTP/1.1" CRLF "Host: x" CRLF "Content-Length:" CRLF CRLF,
        /* TE whose final coding is not exactly chunked */
        "POST / HTTP/1.1" CRLF "Host: x" CRLF "Transfer-Encoding: gzip" CRLF CRLF,
        "POST / HTTP/1.1" CRLF "Host: x" CRLF "Transfer-Encoding: chunked, gzip" CRLF CRLF,
        "POST / HTTP/1.1" CRLF "Host: x" CRLF "Transfer-Encoding: chunked" CRLF
        "Transfer-Encoding: identity" CRLF CRLF,
        "POST / HTTP/1.1" CRLF "Host: x" CRLF "Transfer-Encoding: chunked, chunked" CRLF CRLF,
        "POST / HTTP/1.1" CRLF "Host: x" CRLF "Transfer-Encoding: xchunked" CRLF CRLF,
        "POST / HTTP/1.1" CRLF "Host: x" CRLF "Transfer-Encoding: chunked;q=1" CRLF CRLF,
        "POST / HTTP/1.1" CRLF "Host: x" CRLF "Transfer-Encoding: \"chunked\"" CRLF CRLF,
        "POST / HTTP/1.1" CRLF "Host: x" CRLF "Transfer-Encoding:" CRLF CRLF,
        "POST / HTTP/1.0" CRLF "Transfer-Encoding: chunked" CRLF CRLF "0" CRLF CRLF,
        /* obs-fold */
        "GET / HTTP/1.1" CRLF "Host: x" CRLF "X-A: a" CRLF " b" CRLF CRLF,
        "GET / HTTP/1.1" CRLF "Host: x" CRLF "X-A: a" CRLF "\tb" CRLF CRLF,
        " GET / HTTP/1.1" CRLF "Host: x" CRLF CRLF,
        /* bare CR, bare LF */
        "GET / HTTP/1.1" CRLF "Host: x" CRLF "X-A: a\rb" CRLF CRLF,
        "GET / HTTP/1.1\r" CRLF "Host: x" CRLF CRLF,
        "GET /\r HTTP/1.1" CRLF "Host: x" CRLF CRLF,
        "GET / HTTP/1.1\n" "Host: x" CRLF CRLF,
        "GET / HTTP/1.1" CRLF "Host: x\n" CRLF,
        "GET / HTTP/1.1" CRLF "Host: x" CRLF "\n",
        "\nGET / HTTP/1.1" CRLF "Host: x" CRLF CRLF,
        "X-A\r: b" CRLF,
        /* invalid bytes in names and values; whitespace before the colon */
        "GET / HTTP/1.1" CRLF "Host: x" CRLF "X A: b" CRLF CRLF,
        "GET / HTTP/1.1" CRLF "Host: x" CRLF "X-A : b" CRLF CRLF,
        "GET / HTTP/1.1" CRLF "Host: x" CRLF "X-A\t: b" CRLF CRLF,
        "GET / HTTP/1.1" CRLF "Host: x" CRLF "X(A): b" CRLF CRLF,
        "GET / HTTP/1.1" CRLF "Host: x" CRLF "X-\x80: b" CRLF CRLF,
        "GET / HTTP/1.1" CRLF "Host: x" CRLF ": b" CRLF CRLF,
        "GET / HTTP/1.1" CRLF "Host: x" CRLF "NoColon" CRLF CRLF,
        "GET / HTTP/1.1" CRLF "Host: x" CRLF "X-A: a\x7f" CRLF CRLF,
        "GET / HTTP/1.1" CRLF "Host: x" CRLF "X-A: a\x01" CRLF CRLF,
        /* Host: missing in 1.1, duplicated */
        "GET / HTTP/1.1" CRLF CRLF,
        "GET / HTTP/1.1" CRLF "Host: a" CRLF "Host: a" CRLF CRLF,
        /* request line shapes */
        "GET  / HTTP/1.1" CRLF "Host: x" CRLF CRLF,
        "GET / HTTP/1.1 " CRLF "Host: x" CRLF CRLF,
        "GET /" CRLF CRLF,
        "GET / http/1.1" CRLF "Host: x" CRLF CRLF,
        "GET / HTTP/1.10" CRLF "Host: x" CRLF CRLF,
        "G@T / HTTP/1.1" CRLF "Host: x" CRLF CRLF,
        "GET\t/ HTTP/1.1" CRLF "Host: x" CRLF CRLF,
        CRLF CRLF CRLF CRLF CRLF "GET / HTTP/1.1" CRLF "Host: x" CRLF CRLF,
        /* chunk sizes and framing */
        "POST / HTTP/1.1" CRLF "Host: x" CRLF "Transfer-Encoding: chunked" CRLF CRLF "g" CRLF,
        "POST / HTTP/1.1" CRLF "Host: x" CRLF "Transfer-Encoding: chunked" CRLF CRLF "-1" CRLF,
        "POST / HTTP/1.1" CRLF "Host: x" CRLF "Transfer-Encoding: chunked" CRLF CRLF " 1" CRLF,
        "POST / HTTP/1.1" CRLF "Host: x" CRLF "Transfer-Encoding: chunked" CRLF CRLF "0x1" CRLF,
        "POST / HTTP/1.1" CRLF "Host: x" CRLF "Transfer-Encoding: chunked" CRLF CRLF
        "10000000000000001" CRLF,
        "POST / HTTP/1.1" CRLF "Host: x" CRLF "Transfer-Encoding: chunked" CRLF CRLF
        "FFFFFFFFFFFFFFFFF" CRLF,
        "POST / HTTP/1.1" CRLF "Host: x" CRLF "Transfer-Encoding: chunked" CRLF CRLF "" CRLF,
        "POST / HTTP/1.1" CRLF "Host: x" CRLF "Transfer-Encoding: chunked" CRLF CRLF
        "3" CRLF "abcX" CRLF,
        "POST / HTTP/1.1" CRLF "Host: x" CRLF "Transfer-Encoding: chunked" CRLF CRLF
        "3" CRLF "abc\rX",
        "POST / HTTP/1.1" CRLF "Host: x" CRLF "Transfer-Encoding: chunked" CRLF CRLF
        "3" CRLF "abc\n",
        "POST / HTTP/1.1" CRLF "Host: x" CRLF "Transfer-Encoding: chunked" CRLF CRLF "3\n",
        "POST / HTTP/1.1" CRLF "Host: x" CRLF "Transfer-Encoding: chunked" CRLF CRLF "3;" CRLF,
        "POST / HTTP/1.1" CRLF "Host: x" CRLF "Transfer-Encoding: chunked" CRLF CRLF "3;a=" CRLF,
        "POST / HTTP/1.1" CRLF "Host: x" CRLF "Transfer-Encoding: chunked" CRLF CRLF
        "3;a=\"x" CRLF,
        "POST / HTTP/1.1" CRLF "Host: x" CRLF "Transfer-Encoding: chunked" CRLF CRLF
        "3;a=b c" CRLF,
        "POST / HTTP/1.1" CRLF "Host: x" CRLF "Transfer-Encoding: chunked" CRLF CRLF
        "3;a=\x01" CRLF,
        /* trailers get header strictness */
        "POST / HTTP/1.1" CRLF "Host: x" CRLF "Transfer-Encoding: chunked" CRLF CRLF
        "0" CRLF "X-T : a" CRLF CRLF,
        "POST / HTTP/1.1" CRLF "Host: x" CRLF "Transfer-Encoding: chunked" CRLF CRLF
        "0" CRLF " folded" CRLF CRLF,
        "POST / HTTP/1.1" CRLF "Host: x" CRLF "Transfer-Encoding: chunked" CRLF CRLF
        "0" CRLF "X-T: a\n" CRLF,
    };
    for (unsigned i = 0; i < FAVO_ARRAY_SIZE(cases); i++) {
        struct res w = run(cases[i], -EPROTO, 400);

        assert_true(w.r.err_off <= strlen(cases[i]));
        free(w.buf);
    }
    /* NUL bytes (strlen cannot carry them) */
    static const char nul_name[] = "GET / HTTP/1.1" CRLF "Host: x" CRLF "X\0A: b" CRLF CRLF;
    static const char nul_value[] = "GET / HTTP/1.1" CRLF "Host: x" CRLF "X-A: a\0b" CRLF CRLF;
    static const char nul_line[] = "GET /\0 HTTP/1.1" CRLF "Host: x" CRLF CRLF;
    struct res w = run_lim(nul_name, sizeof(nul_name) - 1, -EPROTO, 400, NULL);
    assert_int_equal(w.r.err, ING_HTTP_E_HEADER_NAME);
    free(w.buf);
    w = run_lim(nul_value, sizeof(nul_value) - 1, -EPROTO, 400, NULL);
    assert_int_equal(w.r.err, ING_HTTP_E_HEADER_VALUE);
    free(w.buf);
    w = run_lim(nul_line, sizeof(nul_line) - 1, -EPROTO, 400, NULL);
    free(w.buf);
}

/* The specific error codes of a few smuggling shapes, not only the status. */
static void test_error_codes(void **state)
{
    struct { const char *s; int err; } c[] = {
        { "POST / HTTP/1.1" CRLF "Host: x" CRLF "Content-Length: 1" CRLF
          "Transfer-Encoding: chunked" CRLF CRLF, ING_HTTP_E_CL_AND_TE },
        { "POST / HTTP/1.1" CRLF "Host: x" CRLF "Content-Length: 1" CRLF "Content-Length: 2" CRLF,
          ING_HTTP_E_CL_DIFFERENT },
        { "GET / HTTP/1.1" CRLF "Host: x" CRLF " b" CRLF, ING_HTTP_E_OBS_FOLD },
        { "GET / HTTP/1.1" CRLF "Host: x\rb" CRLF, ING_HTTP_E_BARE_CR },
        { "GET / HTTP/1.1\n", ING_HTTP_E_BARE_LF },
        { "GET / HTTP/1.1" CRLF "Host : x" CRLF, ING_HTTP_E_SPACE_BEFORE_COLON },
        { "POST / HTTP/1.1" CRLF "Host: x" CRLF "Transfer-Encoding: gzip" CRLF CRLF,
          ING_HTTP_E_TE_NOT_CHUNKED },
    };
    for (unsigned i = 0; i < FAVO_ARRAY_SIZE(c); i++) {
        struct res w = run(c[i].s, -EPROTO, 400);

        assert_int_equal(w.r.err, c[i].err);
        assert_non_null(strstr(ing_http_strerror(w.r.err), " "));
        free(w.buf);
    }
}

static void test_method_version(void **state)
{
    struct res w = run("BREW /pot HTTP/1.1" CRLF "Host: x" CRLF CRLF, -EPROTO, 501);

    char msg[128];

    assert_int_equal(w.r.err, ING_HTTP_E_METHOD_UNKNOWN);
    assert_true(span_is(&w, w.r.method_span, "BREW"));
    ing_http_error_text(&w.r, w.buf, msg, sizeof(msg));
    assert_string_equal(msg, "method 'BREW' not implemented");
    free(w.buf);
    w = run("GET / HTTP/1.1" CRLF "Host: x" CRLF "X-A: a\x01" CRLF CRLF, -EPROTO, 400);
    assert_int_equal(ing_http_error_text(&w.r, w.buf, msg, sizeof(msg)),
                     (int)strlen("invalid character in a header value at byte 31"));
    assert_string_equal(msg, "invalid character in a header value at byte 31");
    assert_int_equal(ing_http_error_text(&w.r, w.buf, msg, 8), 7);
    free(w.buf);
    expect_status("get / HTTP/1.1" CRLF "Host: x" CRLF CRLF, 501);  /* case-sensitive */
    expect_status("GET / HTTP/2.0" CRLF CRLF, 505);
    expect_status("PRI * HTTP/2.0" CRLF CRLF "SM" CRLF CRLF, 505);
    expect_status("GET / HTTP/1.2" CRLF "Host: x" CRLF CRLF, 505);
    expect_status("GET / HTTP/0.9" CRLF CRLF, 505);
    expect_status("POST / HTTP/1.1" CRLF "Host: x" CRLF "Transfer-Encoding: gzip, chunked" CRLF
                  CRLF, 501);
    for (int m = ING_HTTP_GET; m <= ING_HTTP_TRACE; m++) {
        char req[128];
        const char *tgt = m == ING_HTTP_CONNECT ? "example.com:443" : "/";

        snprintf(req, sizeof(req), "%s %s HTTP/1.1" CRLF "Host: x" CRLF CRLF,
                 ing_http_method_name(m), tgt);
        w = run(req, 0, 0);
        assert_int_equal(w.r.method, m);
        free(w.buf);
    }
}

static char *repeat_header(unsigned n, size_t pad)
{
    size_t cap = 64 + n * (pad + 32);
    char *s = malloc(cap);
    size_t o = (size_t)snprintf(s, cap, "GET / HTTP/1.1" CRLF "Host: x" CRLF);

    for (unsigned i = 0; i < n; i++) {
        o += (size_t)snprintf(s + o, cap - o, "X-%u: ", i);
        memset(s + o, 'v', pad);
        o += pad;
        o += (size_t)snprintf(s + o, cap - o, CRLF);
    }
    snprintf(s + o, cap - o, CRLF);
    return s;
}

static void test_limits(void **state)
{
    struct ing_http_limits lim = ing_http_default_limits;
    struct res w;
    char *s;

    /* header bytes: 431 just over the limit, fine just under */
    s = repeat_header(8, 2100);   /* ~16.9 KiB */
    w = run(s, -EPROTO, 431);
    assert_int_equal(w.r.err, ING_HTTP_E_HEADERS_TOO_LARGE);
    free(w.buf);
    free(s);
    s = repeat_header(7, 2100);   /* ~14.8 KiB */
    w = run(s, 0, 0);
    free(w.buf);
    free(s);
    /* a header that never ends is cut off at the limit, not buffered on */
    s = repeat_header(1, 20000);
    s[strlen(s) - 4] = 0;
    w = run(s, -EPROTO, 431);
    free(w.buf);
    free(s);

    /* number of headers (the Host header counts) */
    s = repeat_header(ING_HTTP_MAX_HEADERS, 1);
    w = run(s, -EPROTO, 431);
    assert_int_equal(w.r.err, ING_HTTP_E_TOO_MANY_HEADERS);
    free(w.buf);
    free(s);
    s = repeat_header(ING_HTTP_MAX_HEADERS - 1, 1);
    w = run(s, 0, 0);
    assert_int_equal(w.r.nheaders, ING_HTTP_MAX_HEADERS);
    free(w.buf);
    free(s);
    lim.max_headers = 4;
    s = repeat_header(4, 1);
    w = run_lim(s, strlen(s), -EPROTO, 431, &lim);
    free(w.buf);
    free(s);

    /* URI length: 414, also when the request line outgrows the head */
    lim = ing_http_default_limits;
    lim.max_uri = 100;
    s = malloc(40000);
    snprintf(s, 40000, "GET /%0100d HTTP/1.1" CRLF "Host: x" CRLF CRLF, 0);
    w = run_lim(s, strlen(s), -EPROTO, 414, &lim);
    assert_int_equal(w.r.err, ING_HTTP_E_URI_TOO_LONG);
    free(w.buf);
    snprintf(s, 40000, "GET /%099d HTTP/1.1" CRLF "Host: x" CRLF CRLF, 0);
    w = run_lim(s, strlen(s), 0, 0, &lim);
    free(w.buf);
    memcpy(s, "GET /", 5);
    memset(s + 5, 'a', 30000);
    strcpy(s + 30005, " HTTP/1.1" CRLF CRLF);
    w = run(s, -EPROTO, 414);
    free(w.buf);
    free(s);

    /* body: Content-Length and chunked, default 8 MiB and a custom limit */
    expect_status("POST / HTTP/1.1" CRLF "Host: x" CRLF "Content-Length: 8388609" CRLF CRLF, 413);
    expect_status("POST / HTTP/1.1" CRLF "Host: x" CRLF
                  "Content-Length: 99999999999999999999999999" CRLF CRLF, 413);
    w = run("POST / HTTP/1.1" CRLF "Host: x" CRLF "Content-Length: 8388608" CRLF CRLF,
            -EAGAIN, 0);
    free(w.buf);
    expect_status("POST / HTTP/1.1" CRLF "Host: x" CRLF "Transfer-Encoding: chunked" CRLF CRLF
                  "800001" CRLF, 413);
    lim = ing_http_default_limits;
    lim.max_body = 10;
    w = run_lim("POST / HTTP/1.1" CRLF "Host: x" CRLF "Transfer-Encoding: chunked" CRLF CRLF
                "6" CRLF "abcdef" CRLF "5" CRLF "ghijk" CRLF "0" CRLF CRLF,
                strlen("POST / HTTP/1.1" CRLF "Host: x" CRLF "Transfer-Encoding: chunked" CRLF
                       CRLF "6" CRLF "abcdef" CRLF "5" CRLF),
                -EPROTO, 413, &lim);
    assert_int_equal(ing_http_full_status(&w.r), 413);
    free(w.buf);
    w = run_lim("POST / HTTP/1.1" CRLF "Host: x" CRLF "Content-Length: 11" CRLF CRLF,
                strlen("POST / HTTP/1.1" CRLF "Host: x" CRLF "Content-Length: 11" CRLF CRLF),
                -EPROTO, 413, &lim);
    free(w.buf);

    /* chunk line with endless extensions: 400, bounded */
    s = malloc(4096);
    strcpy(s, "POST / HTTP/1.1" CRLF "Host: x" CRLF "Transfer-Encoding: chunked" CRLF CRLF "1");
    for (size_t o = strlen(s); o < 4000; o += 3)
        memcpy(s + o, ";a=", 3), s[o + 3] = 0;
    w = run(s, -EPROTO, 400);
    assert_int_equal(w.r.err, ING_HTTP_E_CHUNK_EXT);
    free(w.buf);
    free(s);

    /* trailers count against the header limit */
    lim = ing_http_default_limits;
    lim.max_header = 200;
    s = malloc(1024);
    strcpy(s, "POST / HTTP/1.1" CRLF "Host: x" CRLF "Transfer-Encoding: chunked" CRLF CRLF "0" CRLF
              "X-T: ");
    memset(s + strlen(s), 'a', 300);
    s[strlen("POST / HTTP/1.1" CRLF "Host: x" CRLF "Transfer-Encoding: chunked" CRLF CRLF "0" CRLF
             "X-T: ") + 300] = 0;
    strcat(s, CRLF CRLF);
    w = run_lim(s, strlen(s), -EPROTO, 431, &lim);
    free(w.buf);
    free(s);
}

/* Caller misuse: a shrinking length is refused, not followed. */
static void test_misuse(void **state)
{
    uint8_t buf[64] = "GET / HTTP/1.1\r\nHost: x\r\n";
    struct ing_http_req r;

    ing_http_init(&r, NULL, 0);
    assert_int_equal(ing_http_parse(&r, buf, 25), -EAGAIN);
    assert_int_equal(ing_http_parse(&r, buf, 3), -EINVAL);
    /* shrinking within the line being scanned is refused too */
    ing_http_init(&r, NULL, 0);
    assert_int_equal(ing_http_parse(&r, buf, 19), -EAGAIN);
    assert_int_equal(ing_http_parse(&r, buf, 17), -EINVAL);
    assert_int_equal(ing_http_parse(&r, buf, 19), -EAGAIN);
    assert_string_equal(ing_http_strerror(-1), "unknown error");
    assert_string_equal(ing_http_strerror(ING_HTTP_E_COUNT_), "unknown error");
    assert_string_equal(ing_http_method_name(99), "UNKNOWN");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_get_basic),
        cmocka_unit_test(test_keep_alive_rules),
        cmocka_unit_test(test_post_content_length),
        cmocka_unit_test(test_incomplete),
        cmocka_unit_test(test_pipelined),
        cmocka_unit_test(test_chunked),
        cmocka_unit_test(test_expect_continue),
        cmocka_unit_test(test_lookups),
        cmocka_unit_test(test_targets),
        cmocka_unit_test(test_tolerated),
        cmocka_unit_test(test_smuggling),
        cmocka_unit_test(test_error_codes),
        cmocka_unit_test(test_method_version),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_misuse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
