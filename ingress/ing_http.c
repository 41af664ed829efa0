/*
 * ing_http.c - the incremental HTTP/1.1 request parser (design in ing_http.h).
 *
 * Lines (request line, header and trailer lines, chunk-size lines) are
 * handled only once their LF has arrived, so the verdict on a given byte
 * sequence does not depend on how it was split into recv()s: the tests feed
 * every case whole, byte by byte and in random splits and compare. A line
 * that has not ended yet is only measured against its limit.
 */
#include "ing_http.h"

#include "favo_base.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

const struct ing_http_limits ing_http_default_limits = {
    .max_header = 16 * 1024,
    .max_body = 8 * 1024 * 1024,
    .max_uri = 8 * 1024,
    .max_headers = ING_HTTP_MAX_HEADERS,
};

static const char *const err_text[ING_HTTP_E_COUNT_] = {
    [ING_HTTP_E_NONE] = "no error",
    [ING_HTTP_E_BARE_LF] = "line ends in a bare LF (CRLF required)",
    [ING_HTTP_E_BARE_CR] = "bare CR not followed by LF",
    [ING_HTTP_E_CTL] = "control character in the request line",
    [ING_HTTP_E_METHOD] = "malformed method in the request line",
    [ING_HTTP_E_METHOD_UNKNOWN] = "method not implemented",
    [ING_HTTP_E_TARGET] = "malformed request target",
    [ING_HTTP_E_URI_TOO_LONG] = "request target too long",
    [ING_HTTP_E_VERSION] = "malformed HTTP version in the request line",
    [ING_HTTP_E_VERSION_UNSUPPORTED] = "HTTP version not supported (1.0 and 1.1 are)",
    [ING_HTTP_E_REQUEST_LINE] = "malformed request line",
    [ING_HTTP_E_OBS_FOLD] = "obsolete line folding (header line starts with SP or HT)",
    [ING_HTTP_E_HEADER_NAME] = "invalid character in a header name",
    [ING_HTTP_E_SPACE_BEFORE_COLON] = "whitespace between header name and colon",
    [ING_HTTP_E_NO_COLON] = "header line without a colon",
    [ING_HTTP_E_HEADER_VALUE] = "invalid character in a header value",
    [ING_HTTP_E_HEADERS_TOO_LARGE] = "request header fields too large",
    [ING_HTTP_E_TOO_MANY_HEADERS] = "too many header fields",
    [ING_HTTP_E_CL_INVALID] = "Content-Length is not a decimal number",
    [ING_HTTP_E_CL_DIFFERENT] = "differing Content-Length values",
    [ING_HTTP_E_CL_AND_TE] = "both Content-Length and Transfer-Encoding",
    [ING_HTTP_E_TE_NOT_CHUNKED] = "Transfer-Encoding must end in exactly \"chunked\"",
    [ING_HTTP_E_TE_UNSUPPORTED] = "transfer coding not implemented (only chunked is)",
    [ING_HTTP_E_TE_HTTP10] = "Transfer-Encoding in an HTTP/1.0 request",
    [ING_HTTP_E_BODY_TOO_LARGE] = "request body too large",
    [ING_HTTP_E_CHUNK_SIZE] = "invalid chunk size",
    [ING_HTTP_E_CHUNK_EXT] = "invalid chunk extension",
    [ING_HTTP_E_CHUNK_CRLF] = "chunk data not followed by CRLF",
    [ING_HTTP_E_HOST] = "missing or duplicate Host header",
    [ING_HTTP_E_EXPECT] = "unsupported expectation (only 100-continue is)",
    [ING_HTTP_E_TOO_MANY_EMPTY_LINES] = "too many empty lines before the request line",
};

const char *ing_http_strerror(int err)
{
    if (err < 0 || err >= ING_HTTP_E_COUNT_ || !err_text[err])
        return "unknown error";
    return err_text[err];
}

int ing_http_error_text(const struct ing_http_req *r, const uint8_t *buf, char *out, size_t cap)
{
    int n;

    if (r->err == ING_HTTP_E_METHOD_UNKNOWN)
        n = snprintf(out, cap, "method '%.*s' not implemented",
                     (int)FAVO_MIN(r->method_span.len, 32u), (const char *)buf + r->method_span.off);
    else
        n = snprintf(out, cap, "%s at byte %u", ing_http_strerror(r->err), r->err_off - r->start);
    return n < 0 ? 0 : (int)FAVO_MIN((size_t)n, cap ? cap - 1 : 0);
}

static const char *const method_names[] = {
    [ING_HTTP_M_UNKNOWN] = "UNKNOWN", [ING_HTTP_GET] = "GET",
    [ING_HTTP_HEAD] = "HEAD",         [ING_HTTP_POST] = "POST",
    [ING_HTTP_PUT] = "PUT",           [ING_HTTP_DELETE] = "DELETE",
    [ING_HTTP_OPTIONS] = "OPTIONS",   [ING_HTTP_PATCH] = "PATCH",
    [ING_HTTP_CONNECT] = "CONNECT",   [ING_HTTP_TRACE] = "TRACE",
};

const char *ing_http_method_name(int method)
{
    if (method < 0 || method >= (int)FAVO_ARRAY_SIZE(method_names))
        return "UNKNOWN";
    return method_names[method];
}

/* ---- character classes (RFC 9110 5.6.2 tchar, 5.5 field-vchar) ---- */

static bool is_tchar(uint8_t c)
{
    static const uint8_t t[256] = {
        ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 1,
        ['+'] = 1, ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1, ['|'] = 1,
        ['~'] = 1,
        ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1,
        ['7'] = 1, ['8'] = 1, ['9'] = 1,
        ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1, ['G'] = 1,
        ['H'] = 1, ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1, ['N'] = 1,
        ['O'] = 1, ['P'] = 1, ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1, ['U'] = 1,
        ['V'] = 1, ['W'] = 1, ['X'] = 1, ['Y'] = 1, ['Z'] = 1,
        ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1, ['g'] = 1,
        ['h'] = 1, ['i'] = 1, ['j'] = 1, ['k'] = 1, ['l'] = 1, ['m'] = 1, ['n'] = 1,
        ['o'] = 1, ['p'] = 1, ['q'] = 1, ['r'] = 1, ['s'] = 1, ['t'] = 1, ['u'] = 1,
        ['v'] = 1, ['w'] = 1, ['x'] = 1, ['y'] = 1, ['z'] = 1,
    };
    return t[c];
}

/* field-vchar / obs-text / SP / HT */
static bool is_value_char(uint8_t c)
{
    return (c >= 0x20 && c != 0x7f) || c == '\t';
}

/* Nonzero when some byte of x is below 0x20 or is 0x7f (exact test for
 * "some byte": the bit-trick may misflag bytes only above a true hit). */
static uint64_t swar_ctl_or_del(uint64_t x)
{
    const uint64_t ones = 0x0101010101010101ull, high = 0x8080808080808080ull;
    uint64_t lt = (x - ones * 0x20) & ~x & high;
    uint64_t d = x ^ (ones * 0x7f);

    return lt | ((d - ones) & ~d & high);
}

static bool is_ows(uint8_t c)
{
    return c == ' ' || c == '\t';
}

static int hexval(uint8_t c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static uint8_t lower(uint8_t c)
{
    return (c >= 'A' && c <= 'Z') ? (uint8_t)(c + 32) : c;
}

static bool mem_eq_nocase(const uint8_t *a, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (lower(a[i]) != lower((uint8_t)b[i]))
            return false;
    return true;
}

bool ing_span_eq_nocase(const uint8_t *buf, struct ing_span s, const char *str)
{
    size_t n = strlen(str);

    return s.len == n && mem_eq_nocase(buf + s.off, str, n);
}

static struct ing_span span(uint32_t a, uint32_t b)
{
    return (struct ing_span){ .off = a, .len = b - a };
}

/* ---- errors ---- */

static int fail(struct ing_http_req *r, int status, int err, uint32_t off)
{
    r->state = ING_HTTP_S_ERROR;
    r->status = (uint16_t)status;
    r->err = (uint16_t)err;
    r->err_off = off;
    return -EPROTO;
}

void ing_http_init(struct ing_http_req *r, const struct ing_http_limits *lim, uint32_t start)
{
    memset(r, 0, offsetof(struct ing_http_req, hdr));
    r->lim = lim ? *lim : ing_http_default_limits;
    if (!r->lim.max_headers || r->lim.max_headers > ING_HTTP_MAX_HEADERS)
        r->lim.max_headers = ING_HTTP_MAX_HEADERS;
    r->start = r->pos = r->scan = start;
    r->state = ING_HTTP_S_LINE;
}

int ing_http_full_status(const struct ing_http_req *r)
{
    if (r->state == ING_HTTP_S_ERROR)
        return r->status;
    return r->state < ING_HTTP_S_BODY || r->state == ING_HTTP_S_TRAILERS ? 431 : 413;
}

/* ---- request line ---- */

static const struct {
    const char *name;
    uint8_t len, m;
} methods[] = {
    { "GET", 3, ING_HTTP_GET },         { "POST", 4, ING_HTTP_POST },
    { "HEAD", 4, ING_HTTP_HEAD },       { "PUT", 3, ING_HTTP_PUT },
    { "DELETE", 6, ING_HTTP_DELETE },   { "OPTIONS", 7, ING_HTTP_OPTIONS },
    { "PATCH", 5, ING_HTTP_PATCH },     { "CONNECT", 7, ING_HTTP_CONNECT },
    { "TRACE", 5, ING_HTTP_TRACE },
};

/* Method names are case-sensitive (RFC 9110 9.1). */
static int method_lookup(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < FAVO_ARRAY_SIZE(methods); i++)
        if (methods[i].len == n && !memcmp(p, methods[i].name, n))
            return methods[i].m;
    return ING_HTTP_M_UNKNOWN;
}

/* Split the target into path and query; absolute-form loses its authority. */
static int parse_target(struct ing_http_req *r, const uint8_t *buf, uint32_t a, uint32_t b)
{
    uint32_t p = a;

    r->target = span(a, b);
    if (buf[a] == '*') {
        if (b - a != 1 || r->method != ING_HTTP_OPTIONS)
            return fail(r, 400, ING_HTTP_E_TARGET, a);
        r->path = r->target;
        r->query = span(b, b);
        return 0;
    }
    if (buf[a] != '/') {
        if (r->method == ING_HTTP_CONNECT) {   /* authority-form */
            r->path = r->target;
            r->query = span(b, b);
            return 0;
        }
        if (b - a > 7 && mem_eq_nocase(buf + a, "http://", 7))
            p = a + 7;
        else if (b - a > 8 && mem_eq_nocase(buf + a, "https://", 8))
            p = a + 8;
        else
            return fail(r, 400, ING_HTTP_E_TARGET, a);
        while (p < b && buf[p] != '/' && buf[p] != '?')
            p++;
    }
    uint32_t q = p;
    while (q < b && buf[q] != '?')
        q++;
    r->path = span(p, q);
    r->query = q < b ? span(q + 1, b) : span(b, b);
    return 0;
}

/* line = [a, b), CRLF already checked and cut. */
static int parse_request_line(struct ing_http_req *r, uint8_t *buf, uint32_t a, uint32_t b)
{
    uint32_t p = a, t0, t1;

    const uint8_t *cr = memchr(buf + a, '\r', b - a);

    if (cr)
        return fail(r, 400, ING_HTTP_E_BARE_CR, (uint32_t)(cr - buf));
    while (p < b && is_tchar(buf[p]))
        p++;
    if (p == a || p == b || buf[p] != ' ')
        return fail(r, 400, p < b && buf[p] < 0x20 ? ING_HTTP_E_CTL : ING_HTTP_E_METHOD, p);
    r->method_span = span(a, p);
    t0 = ++p;
    while (p < b && buf[p] > 0x20 && buf[p] < 0x7f)
        p++;
    t1 = p;
    if (t0 == t1)
        return fail(r, 400, ING_HTTP_E_TARGET, t0);
    if (p == b || buf[p] != ' ')
        return fail(r, 400, p < b && buf[p] < 0x20 ? ING_HTTP_E_CTL
                            : p < b ? ING_HTTP_E_TARGET : ING_HTTP_E_REQUEST_LINE, p);
    p++;
    /* HTTP-version = "HTTP/" DIGIT "." DIGIT, then the line ends. */
    if (b - p != 8 || memcmp(buf + p, "HTTP/", 5) || buf[p + 5] < '0' || buf[p + 5] > '9' ||
        buf[p + 6] != '.' || buf[p + 7] < '0' || buf[p + 7] > '9')
        return fail(r, 400, ING_HTTP_E_VERSION, p);
    if (buf[p + 5] != '1' || buf[p + 7] > '1')
        return fail(r, 505, ING_HTTP_E_VERSION_UNSUPPORTED, p);
    r->version_minor = (uint8_t)(buf[p + 7] - '0');
    if (t1 - t0 > r->lim.max_uri)
        return fail(r, 414, ING_HTTP_E_URI_TOO_LONG, t0);
    r->method = (uint8_t)method_lookup(buf + a, r->method_span.len);
    if (r->method == ING_HTTP_M_UNKNOWN)
        return fail(r, 501, ING_HTTP_E_METHOD_UNKNOWN, a);
    return parse_target(r, buf, t0, t1);
}

/* ---- header lines ---- */

/*
 * Validate a field line [a, b) (header or trailer); on success *name and
 * *value are set (value trimmed). Shared by headers and trailers so both
 * get exactly the same strictness.
 */
static int parse_field_line(struct ing_http_req *r, const uint8_t *buf, uint32_t a, uint32_t b,
                            struct ing_http_header *h)
{
    uint32_t p = a, v0, v1;

    if (is_ows(buf[a]))
        return fail(r, 400, ING_HTTP_E_OBS_FOLD, a);
    while (p < b && is_tchar(buf[p]))
        p++;
    if (p == b)
        return fail(r, 400, ING_HTTP_E_NO_COLON, p);
    if (buf[p] != ':') {
        if (is_ows(buf[p]))
            return fail(r, 400, ING_HTTP_E_SPACE_BEFORE_COLON, p);
        if (buf[p] == '\r')
            return fail(r, 400, ING_HTTP_E_BARE_CR, p);
        return fail(r, 400, ING_HTTP_E_HEADER_NAME, p);
    }
    if (p == a)
        return fail(r, 400, ING_HTTP_E_HEADER_NAME, p);
    h->name = span(a, p);
    p++;
    while (p < b && is_ows(buf[p]))
        p++;
    v0 = p;
    /* 8 bytes at a time while none is a CTL or DEL; the rare HT (or an
     * error) falls through to the byte loop */
    while (b - p >= 8) {
        uint64_t x;

        memcpy(&x, buf + p, 8);
        if (!swar_ctl_or_del(x))
            p += 8;
        else
            break;
    }
    for (; p < b; p++) {
        if (!is_value_char(buf[p]))
            return fail(r, 400, buf[p] == '\r' ? ING_HTTP_E_BARE_CR : ING_HTTP_E_HEADER_VALUE,
                        p);
    }
    v1 = b;
    while (v1 > v0 && is_ows(buf[v1 - 1]))
        v1--;
    h->value = span(v0, v1);
    return 0;
}

/* Calls fn(r, buf, element) for each comma-separated element of a list
 * value (RFC 9110 5.6.1), OWS trimmed; empty elements are passed too. */
typedef int (*list_fn)(struct ing_http_req *r, const uint8_t *buf, struct ing_span el);

static int for_each_element(struct ing_http_req *r, const uint8_t *buf, struct ing_span v,
                            list_fn fn)
{
    uint32_t p = v.off, end = v.off + v.len;

    for (;;) {
        uint32_t e = p, a, b;

        while (e < end && buf[e] != ',')
            e++;
        a = p;
        b = e;
        while (a < b && is_ows(buf[a]))
            a++;
        while (b > a && is_ows(buf[b - 1]))
            b--;
        int rc = fn(r, buf, span(a, b));
        if (rc)
            return rc;
        if (e == end)
            return 0;
        p = e + 1;
    }
}

static int te_element(struct ing_http_req *r, const uint8_t *buf, struct ing_span el)
{
    bool chunked = ing_span_eq_nocase(buf, el, "chunked");

    for (uint32_t i = 0; i < el.len; i++)
        if (!is_tchar(buf[el.off + i]))   /* parameters, quotes: not ours */
            return fail(r, 400, ING_HTTP_E_TE_NOT_CHUNKED, el.off + i);
    if (!el.len)
        return fail(r, 400, ING_HTTP_E_TE_NOT_CHUNKED, el.off);
    if (r->te_codings < UINT8_MAX)
        r->te_codings++;
    if (chunked && r->te_chunked < UINT8_MAX)
        r->te_chunked++;
    r->te_last_chunked = chunked;
    return 0;
}

static int conn_element(struct ing_http_req *r, const uint8_t *buf, struct ing_span el)
{
    if (ing_span_eq_nocase(buf, el, "close"))
        r->conn_close = 1;
    else if (ing_span_eq_nocase(buf, el, "keep-alive"))
        r->conn_keep_alive = 1;
    return 0;   /* other connection options (Upgrade...) are not ours */
}

/* The headers that decide framing and connection handling. */
enum { H_OTHER, H_HOST, H_EXPECT, H_CONNECTION, H_CONTENT_LENGTH, H_TRANSFER_ENCODING };

static int header_kind(const uint8_t *buf, struct ing_span name)
{
    const uint8_t *p = buf + name.off;

    /* one compare per header: the length picks the only candidate */
    switch (name.len) {
    case 4: return mem_eq_nocase(p, "host", 4) ? H_HOST : H_OTHER;
    case 6: return mem_eq_nocase(p, "expect", 6) ? H_EXPECT : H_OTHER;
    case 10: return mem_eq_nocase(p, "connection", 10) ? H_CONNECTION : H_OTHER;
    case 14: return mem_eq_nocase(p, "content-length", 14) ? H_CONTENT_LENGTH : H_OTHER;
    case 17: return mem_eq_nocase(p, "transfer-encoding", 17) ? H_TRANSFER_ENCODING : H_OTHER;
    default: return H_OTHER;
    }
}

static int header_semantics(struct ing_http_req *r, const uint8_t *buf,
                            const struct ing_http_header *h)
{
    switch (header_kind(buf, h->name)) {
    case H_CONTENT_LENGTH: {
        uint64_t v = 0;

        if (!h->value.len)
            return fail(r, 400, ING_HTTP_E_CL_INVALID, h->value.off);
        for (uint32_t i = 0; i < h->value.len; i++) {
            uint8_t c = buf[h->value.off + i];

            if (c < '0' || c > '9')
                return fail(r, 400, ING_HTTP_E_CL_INVALID, h->value.off + i);
            /* saturate: an absurd length is still "too large", not a wrap */
            v = v > (UINT64_MAX - 9) / 10 ? UINT64_MAX : v * 10 + (c - '0');
        }
        if (r->has_cl && r->content_length != v)
            return fail(r, 400, ING_HTTP_E_CL_DIFFERENT, h->value.off);
        r->has_cl = 1;
        r->content_length = v;
        return 0;
    }
    case H_TRANSFER_ENCODING:
        r->has_te = 1;
        return for_each_element(r, buf, h->value, te_element);
    case H_CONNECTION:
        return for_each_element(r, buf, h->value, conn_element);
    case H_HOST:
        if (r->host_count < UINT8_MAX)
            r->host_count++;
        return 0;
    case H_EXPECT:
        if (!ing_span_eq_nocase(buf, h->value, "100-continue"))
            return fail(r, 417, ING_HTTP_E_EXPECT, h->value.off);
        /* RFC 9110 10.1.1: ignore 100-continue from an HTTP/1.0 client */
        r->expect_continue = r->version_minor == 1;
        return 0;
    default:
        return 0;
    }
}

/* The empty line after the headers: decide on framing. */
static int finish_headers(struct ing_http_req *r)
{
    r->hdr_end = r->pos;
    if (r->version_minor == 1 ? r->host_count != 1 : r->host_count > 1)
        return fail(r, 400, ING_HTTP_E_HOST, r->hdr_end);
    r->keep_alive = !r->conn_close && (r->version_minor == 1 || r->conn_keep_alive);
    r->body = span(r->hdr_end, r->hdr_end);
    if (r->has_te) {
        if (r->has_cl)
            return fail(r, 400, ING_HTTP_E_CL_AND_TE, r->hdr_end);
        if (r->version_minor == 0)
            return fail(r, 400, ING_HTTP_E_TE_HTTP10, r->hdr_end);
        if (!r->te_last_chunked || r->te_chunked > 1)
            return fail(r, 400, ING_HTTP_E_TE_NOT_CHUNKED, r->hdr_end);
        if (r->te_codings > 1)
            return fail(r, 501, ING_HTTP_E_TE_UNSUPPORTED, r->hdr_end);
        r->chunked = 1;
        r->state = ING_HTTP_S_CHUNK_SIZE;
        return 0;
    }
    if (r->has_cl && r->content_length) {
        if (r->content_length > r->lim.max_body)
            return fail(r, 413, ING_HTTP_E_BODY_TOO_LARGE, r->hdr_end);
        r->body.len = (uint32_t)r->content_length;
        r->state = ING_HTTP_S_BODY;
        return 0;
    }
    r->expect_continue = 0;   /* no body to wait for */
    r->next = r->pos;
    r->state = ING_HTTP_S_DONE;
    return 0;
}

/* ---- chunked body ---- */

/* chunk-size [ chunk-ext ]: line [a, b). RFC 9112 7.1.1:
 * chunk-ext = *( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] ) */
static int parse_chunk_line(struct ing_http_req *r, const uint8_t *buf, uint32_t a, uint32_t b)
{
    uint32_t p = a;
    uint64_t size = 0;

    for (uint32_t i = a; i < b; i++)
        if (buf[i] == '\r')
            return fail(r, 400, ING_HTTP_E_BARE_CR, i);
    while (p < b && hexval(buf[p]) >= 0) {
        if (size >> 60)   /* 16 hex digits of value: would overflow */
            return fail(r, 400, ING_HTTP_E_CHUNK_SIZE, p);
        size = size << 4 | (uint64_t)hexval(buf[p]);
        p++;
    }
    if (p == a)
        return fail(r, 400, ING_HTTP_E_CHUNK_SIZE, p);
    for (;;) {
        while (p < b && is_ows(buf[p]))
            p++;
        if (p == b)
            break;
        if (buf[p] != ';')
            return fail(r, 400, hexval(buf[p]) < 0 && p > a && !is_ows(buf[p - 1])
                                ? ING_HTTP_E_CHUNK_SIZE : ING_HTTP_E_CHUNK_EXT, p);
        p++;
        while (p < b && is_ows(buf[p]))
            p++;
        uint32_t n0 = p;
        while (p < b && is_tchar(buf[p]))
            p++;
        if (p == n0)
            return fail(r, 400, ING_HTTP_E_CHUNK_EXT, p);
        while (p < b && is_ows(buf[p]))
            p++;
        if (p < b && buf[p] == '=') {
            p++;
            while (p < b && is_ows(buf[p]))
                p++;
            if (p < b && buf[p] == '"') {   /* quoted-string */
                p++;
                for (;;) {
                    if (p == b)
                        return fail(r, 400, ING_HTTP_E_CHUNK_EXT, p);
                    if (buf[p] == '"')
                        break;
                    if (buf[p] == '\\') {
                        if (++p == b || !is_value_char(buf[p]))
                            return fail(r, 400, ING_HTTP_E_CHUNK_EXT, p);
                    } else if (!is_value_char(buf[p])) {
                        return fail(r, 400, ING_HTTP_E_CHUNK_EXT, p);
                    }
                    p++;
                }
                p++;
            } else {
                uint32_t v0 = p;

                while (p < b && is_tchar(buf[p]))
                    p++;
                if (p == v0)
                    return fail(r, 400, ING_HTTP_E_CHUNK_EXT, p);
            }
        }
    }
    if (!size) {
        r->state = ING_HTTP_S_TRAILERS;
        return 0;
    }
    if (size > (uint64_t)r->lim.max_body - r->body.len)
        return fail(r, 413, ING_HTTP_E_BODY_TOO_LARGE, a);
    r->chunk_left = size;
    r->state = ING_HTTP_S_CHUNK_DATA;
    return 0;
}

/* ---- the driver ---- */

/* Find the LF ending the current line: 1 with *e its offset, 0 when it
 * has not arrived. The caller checks the line's limit first and then
 * line_crlf(), so an over-long line gets the same verdict whole or split. */
static int next_line(struct ing_http_req *r, const uint8_t *buf, uint32_t len, uint32_t *e)
{
    const uint8_t *lf = memchr(buf + r->scan, '\n', len - r->scan);

    if (!lf) {
        r->scan = len;
        return 0;
    }
    *e = (uint32_t)(lf - buf);
    return 1;
}

/* The line [pos, e] must end in CRLF; [*a, *b) is it without the CRLF. */
static int line_crlf(struct ing_http_req *r, const uint8_t *buf, uint32_t e, uint32_t *a,
                     uint32_t *b)
{
    if (e == r->pos || buf[e - 1] != '\r')
        return fail(r, 400, ING_HTTP_E_BARE_LF, e);
    *a = r->pos;
    *b = e - 1;
    return 0;
}

static void consume_line(struct ing_http_req *r, uint32_t b)
{
    r->pos = r->scan = b + 2;
}

int ing_http_parse(struct ing_http_req *r, uint8_t *buf, size_t len_)
{
    uint32_t len, a, b, e;

    if (r->state == ING_HTTP_S_DONE)
        return 0;
    if (r->state == ING_HTTP_S_ERROR)
        return -EPROTO;
    if (len_ >= UINT32_MAX || len_ < r->scan)   /* scan: the most bytes seen so far */
        return -EINVAL;
    len = (uint32_t)len_;
    FAVO_ASSERT(r->start <= r->pos && r->pos <= r->scan && r->scan <= len); /* H2 */

    for (;;) {
        switch (r->state) {
        case ING_HTTP_S_LINE:
        case ING_HTTP_S_HEADERS: {
            bool line = r->state == ING_HTTP_S_LINE;
            int st = line ? 414 : 431;
            int er = line ? ING_HTTP_E_URI_TOO_LONG : ING_HTTP_E_HEADERS_TOO_LARGE;

            /* The limit counts every byte of the head, CRLFs included. */
            if (!next_line(r, buf, len, &e)) {
                if (len - r->start > r->lim.max_header)
                    return fail(r, st, er, r->start + r->lim.max_header);
                return -EAGAIN;
            }
            if (e + 1 - r->start > r->lim.max_header)
                return fail(r, st, er, r->start + r->lim.max_header);
            if (line_crlf(r, buf, e, &a, &b))
                return -EPROTO;
            if (line) {
                if (a == b) {   /* empty line before the request line */
                    if (++r->empty_lines > ING_HTTP_MAX_EMPTY_LINES)
                        return fail(r, 400, ING_HTTP_E_TOO_MANY_EMPTY_LINES, a);
                    consume_line(r, b);
                    continue;
                }
                if (parse_request_line(r, buf, a, b))
                    return -EPROTO;
                consume_line(r, b);
                r->state = ING_HTTP_S_HEADERS;
                continue;
            }
            consume_line(r, b);
            if (a == b) {
                if (finish_headers(r))
                    return -EPROTO;
                continue;
            }
            /* parsed straight into its slot: a copy through a local would
             * stall on store forwarding (measured: 40% of the parse) */
            struct ing_http_header spare;
            struct ing_http_header *h = r->nheaders < r->lim.max_headers
                                        ? &r->hdr[r->nheaders] : &spare;
            if (parse_field_line(r, buf, a, b, h))
                return -EPROTO;
            if (h == &spare)
                return fail(r, 431, ING_HTTP_E_TOO_MANY_HEADERS, a);
            r->nheaders++;
            if (header_semantics(r, buf, h))
                return -EPROTO;
            continue;
        }
        case ING_HTTP_S_BODY:
            if (len - r->hdr_end < r->content_length) {
                r->pos = r->scan = len;
                return -EAGAIN;
            }
            r->next = r->pos = r->scan = r->hdr_end + (uint32_t)r->content_length;
            r->state = ING_HTTP_S_DONE;
            continue;
        case ING_HTTP_S_CHUNK_SIZE:
            if (!next_line(r, buf, len, &e)) {
                if (len - r->pos > ING_HTTP_MAX_CHUNK_LINE)
                    return fail(r, 400, ING_HTTP_E_CHUNK_EXT, r->pos);
                return -EAGAIN;
            }
            if (e + 1 - r->pos > ING_HTTP_MAX_CHUNK_LINE)
                return fail(r, 400, ING_HTTP_E_CHUNK_EXT, r->pos);
            if (line_crlf(r, buf, e, &a, &b))
                return -EPROTO;
            if (parse_chunk_line(r, buf, a, b))
                return -EPROTO;
            consume_line(r, b);
            continue;
        case ING_HTTP_S_CHUNK_DATA: {
            uint32_t n = (uint32_t)FAVO_MIN(r->chunk_left, (uint64_t)(len - r->pos));
            uint32_t w = r->body.off + r->body.len;

            FAVO_ASSERT(w <= r->pos); /* H2: data only moves down */
            if (n && w != r->pos)
                memmove(buf + w, buf + r->pos, n);
            r->body.len += n;
            r->pos = r->scan = r->pos + n;
            r->chunk_left -= n;
            if (r->chunk_left)
                return -EAGAIN;
            r->state = ING_HTTP_S_CHUNK_CRLF;
            continue;
        }
        case ING_HTTP_S_CHUNK_CRLF:
            if (len - r->pos >= 1 && buf[r->pos] != '\r')
                return fail(r, 400, ING_HTTP_E_CHUNK_CRLF, r->pos);
            if (len - r->pos < 2)
                return -EAGAIN;
            if (buf[r->pos + 1] != '\n')
                return fail(r, 400, ING_HTTP_E_CHUNK_CRLF, r->pos + 1);
            r->pos = r->scan = r->pos + 2;
            r->state = ING_HTTP_S_CHUNK_SIZE;
            continue;
        case ING_HTTP_S_TRAILERS: {
            uint32_t t0 = r->pos;

            if (!next_line(r, buf, len, &e)) {
                if (r->trailer_bytes + (len - t0) > r->lim.max_header)
                    return fail(r, 431, ING_HTTP_E_HEADERS_TOO_LARGE, t0);
                return -EAGAIN;
            }
            if (r->trailer_bytes + (e + 1 - t0) > r->lim.max_header)
                return fail(r, 431, ING_HTTP_E_HEADERS_TOO_LARGE, t0);
            if (line_crlf(r, buf, e, &a, &b))
                return -EPROTO;
            r->trailer_bytes += e + 1 - t0;
            consume_line(r, b);
            if (a == b) {
                r->next = r->pos;
                r->state = ING_HTTP_S_DONE;
                continue;
            }
            /* Trailers are validated like headers and then dropped: they
             * never change framing or anything the router sees. */
            struct ing_http_header h;
            if (parse_field_line(r, buf, a, b, &h))
                return -EPROTO;
            continue;
        }
        case ING_HTTP_S_DONE:
            FAVO_ASSERT(r->start < r->next && r->next <= len);              /* H3 */
            FAVO_ASSERT(r->body.off + (uint64_t)r->body.len <= r->next);     /* H1 */
            return 0;
        default:
            return -EPROTO;
        }
    }
}

/* ---- lookups ---- */

int ing_http_header_find(const struct ing_http_req *r, const uint8_t *buf, const char *name,
                         struct ing_span *out)
{
    for (uint32_t i = 0; i < r->nheaders; i++) {
        if (ing_span_eq_nocase(buf, r->hdr[i].name, name)) {
            *out = r->hdr[i].value;
            return 0;
        }
    }
    return -ENOENT;
}

static bool is_token68(uint8_t c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '.' || c == '_' || c == '~' || c == '+' || c == '/';
}

int ing_http_bearer(const struct ing_http_req *r, const uint8_t *buf, struct ing_span *out)
{
    struct ing_span v = { 0, 0 };
    unsigned n = 0;
    uint32_t p, end;

    for (uint32_t i = 0; i < r->nheaders; i++) {
        if (ing_span_eq_nocase(buf, r->hdr[i].name, "authorization")) {
            v = r->hdr[i].value;
            n++;
        }
    }
    if (!n)
        return -ENOENT;
    if (n > 1 || v.len < 7 || !mem_eq_nocase(buf + v.off, "bearer", 6) || buf[v.off + 6] != ' ')
        return -EINVAL;
    p = v.off + 7;
    end = v.off + v.len;
    while (p < end && buf[p] == ' ')
        p++;
    uint32_t t0 = p;
    while (p < end && is_token68(buf[p]))
        p++;
    if (p == t0)
        return -EINVAL;
    while (p < end && buf[p] == '=')
        p++;
    if (p != end)
        return -EINVAL;
    *out = span(t0, end);
    return 0;
}

int ing_http_request_id(const struct ing_http_req *r, const uint8_t *buf, struct ing_span *out)
{
    struct ing_span v;
    int rc = ing_http_header_find(r, buf, "x-request-id", &v);

    if (rc)
        return rc;
    if (!v.len || v.len > ING_HTTP_MAX_REQUEST_ID)
        return -EINVAL;
    for (uint32_t i = 0; i < v.len; i++) {
        uint8_t c = buf[v.off + i];

        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == ':' || c == '-'))
            return -EINVAL;
    }
    *out = v;
    return 0;
}

int ing_http_content_type(const struct ing_http_req *r, const uint8_t *buf, struct ing_span *out)
{
    struct ing_span v;
    int rc = ing_http_header_find(r, buf, "content-type", &v);
    uint32_t e = v.off;

    if (rc)
        return rc;
    while (e < v.off + v.len && buf[e] != ';')
        e++;
    while (e > v.off && is_ows(buf[e - 1]))
        e--;
    if (e == v.off)
        return -EINVAL;
    *out = span(v.off, e);
    return 0;
}

bool ing_http_is_json(const struct ing_http_req *r, const uint8_t *buf)
{
    struct ing_span ct;

    return !ing_http_content_type(r, buf, &ct) && ing_span_eq_nocase(buf, ct, "application/json");
}
