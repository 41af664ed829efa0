/*
 * fuzz-http.c - libFuzzer target for the HTTP/1.1 request parser.
 *
 * The input (after a 2-byte header choosing the split seed and small
 * limits) is parsed as a pipeline of requests twice: whole, and appended in
 * seeded random splits. Both must agree, every span must lie inside the
 * buffer, and bytes beyond a request's end must be untouched.
 */
#include "ing_http.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(x) do { if (!(x)) __builtin_trap(); } while (0)

struct outcome {
    int rc;
    uint16_t status, err;
    uint32_t next, body_off, body_len, nreq;
};

static void check_span(struct ing_span s, size_t len)
{
    CHECK((uint64_t)s.off + s.len <= len);
}

static void check_req(const struct ing_http_req *r, const uint8_t *buf, size_t len)
{
    struct ing_span sp;

    CHECK(r->start < r->next && r->next <= len);
    check_span(r->method_span, len);
    check_span(r->target, len);
    check_span(r->path, len);
    check_span(r->query, len);
    check_span(r->body, len);
    CHECK(r->body.off + r->body.len <= r->next);
    CHECK(r->nheaders <= ING_HTTP_MAX_HEADERS);
    for (uint32_t i = 0; i < r->nheaders; i++) {
        check_span(r->hdr[i].name, len);
        check_span(r->hdr[i].value, len);
        CHECK(r->hdr[i].name.len > 0);
    }
    if (!ing_http_bearer(r, buf, &sp))
        check_span(sp, len);
    if (!ing_http_request_id(r, buf, &sp))
        CHECK(sp.len <= ING_HTTP_MAX_REQUEST_ID);
    if (!ing_http_content_type(r, buf, &sp))
        check_span(sp, len);
}

/* Parse every pipelined request; split==0 means whole buffer. */
static struct outcome run(const uint8_t *in, size_t n, uint64_t seed, int split,
                          const struct ing_http_limits *lim, uint8_t **out)
{
    uint8_t *buf = malloc(n ? n : 1);
    struct outcome o = { 0 };
    struct ing_http_req r;
    size_t have = 0;
    uint32_t start = 0;

    for (;;) {
        ing_http_init(&r, lim, start);
        o.rc = ing_http_parse(&r, buf, have);
        while (o.rc == -EAGAIN && have < n) {
            size_t step = split ? 1 + (seed = seed * 6364136223846793005ull + 1) % 97 : n;

            if (step > n - have)
                step = n - have;
            memcpy(buf + have, in + have, step);
            have += step;
            o.rc = ing_http_parse(&r, buf, have);
        }
        if (o.rc)
            break;
        check_req(&r, buf, have);
        /* bytes after this request were never written */
        CHECK(!memcmp(buf + r.next, in + r.next, have - r.next));
        o.nreq++;
        o.next = r.next;
        o.body_off = r.body.off;
        o.body_len = r.body.len;
        start = r.next;
        if (start == n)
            break;
    }
    if (o.rc == -EPROTO) {
        o.status = r.status;
        o.err = r.err;
        CHECK(r.status >= 400 && r.status < 600);
        CHECK(r.err_off <= have);
        CHECK(ing_http_strerror(r.err)[0]);
        char msg[96];
        int m = ing_http_error_text(&r, buf, msg, sizeof(msg));
        CHECK(m > 0 && (size_t)m < sizeof(msg) && strlen(msg) == (size_t)m);
    } else {
        CHECK(o.rc == 0 || o.rc == -EAGAIN);
    }
    *out = buf;
    return o;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct ing_http_limits lim = ing_http_default_limits;
    struct outcome a, b;
    uint8_t *ba, *bb;

    if (size < 2)
        return 0;
    if (data[0] & 1) {   /* small limits reach every limit path */
        lim.max_header = 64 + data[1];
        lim.max_body = data[1];
        lim.max_uri = data[1] / 4;
        lim.max_headers = 1 + data[1] % 8;
    }
    a = run(data + 2, size - 2, 0, 0, &lim, &ba);
    b = run(data + 2, size - 2, data[0] | (uint64_t)data[1] << 8, 1, &lim, &bb);
    CHECK(a.rc == b.rc && a.status == b.status && a.err == b.err && a.nreq == b.nreq);
    if (a.nreq) {
        CHECK(a.next == b.next && a.body_off == b.body_off && a.body_len == b.body_len);
        CHECK(!memcmp(ba + a.body_off, bb + b.body_off, a.body_len));
    }
    free(ba);
    free(bb);
    return 0;
}
