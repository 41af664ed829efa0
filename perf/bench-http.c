/*
 * bench-http.c - ingress parsers on one core: the HTTP/1.1 request parser
 * (ing_http) and OpenAI body decoding (ing_openai), on a typical request
 * as the official OpenAI Python client sends it (12 headers, a ~500-byte
 * chat body).
 *
 *   build/perf/bench-http [--json] [--quick]
 *
 * Rows: requests/s, MB/s of request bytes and ns per request for
 *   http-cl        the request with Content-Length, parsed whole
 *   http-chunked   the same body in 3 chunks (decoded in place)
 *   http-bytewise  the Content-Length request fed one byte per call
 *   http-pipelined 16 requests in one buffer, per request
 *   json-chat      ing_oai_decode of the body
 *   http+json      both, the ingress work per request before tokenizing
 * Parsers that write the buffer (chunked, JSON escapes) get a fresh copy
 * of the request each iteration; every row pays that memcpy, so the rows
 * compare; the "memcpy" row is that cost alone.
 */
#include "favo_base.h"
#include "ing_http.h"
#include "ing_openai.h"
#include "perf_util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char body[] =
    "{\"model\":\"smollm2-135m-instruct\",\"messages\":[{\"role\":\"system\",\"content\":"
    "\"You are a helpful assistant. Answer briefly and precisely.\"},{\"role\":\"user\","
    "\"content\":\"Explain in two sentences why the sky is blue, and mention Rayleigh "
    "scattering.\\nKeep it simple.\"}],\"max_tokens\":128,\"temperature\":0.7,\"top_p\":0.95,"
    "\"stream\":true,\"stream_options\":{\"include_usage\":true},\"stop\":[\"\\n\\n\"],"
    "\"seed\":1234,\"frequency_penalty\":0.1,\"presence_penalty\":0.0,\"user\":\"user-42\","
    "\"logprobs\":false,\"n\":1}";

static const char head_fmt[] =
    "POST /v1/chat/completions HTTP/1.1\r\n"
    "Host: 127.0.0.1:8080\r\n"
    "Accept-Encoding: gzip, deflate\r\n"
    "Connection: keep-alive\r\n"
    "Accept: application/json\r\n"
    "Content-Type: application/json\r\n"
    "User-Agent: OpenAI/Python 1.54.4\r\n"
    "X-Stainless-Lang: python\r\n"
    "X-Stainless-Package-Version: 1.54.4\r\n"
    "X-Stainless-Runtime: CPython\r\n"
    "Authorization: Bearer sk-favo-0123456789abcdefghijklmnopqrstuvwxyz\r\n"
    "X-Request-Id: 7f3c2a9e-1b4d-4c8e-9a0f-2d6b8e1c3f5a\r\n"
    "%s\r\n";

struct row {
    const char *name;
    double rps, mbps, ns;
};

static uint8_t *req_cl, *req_chunked, *req_pipe, *work;
static size_t len_cl, len_chunked, len_pipe, pipe_n = 16;
static volatile uint64_t sink;
static double min_secs = 0.5;

static size_t build(uint8_t *dst, size_t cap, int chunked)
{
    char te[64];
    size_t n, blen = strlen(body), a = blen / 3, b = 2 * blen / 3;

    if (chunked)
        snprintf(te, sizeof(te), "Transfer-Encoding: chunked\r\n");
    else
        snprintf(te, sizeof(te), "Content-Length: %zu\r\n", blen);
    n = (size_t)snprintf((char *)dst, cap, head_fmt, te);
    if (!chunked) {
        memcpy(dst + n, body, blen);
        return n + blen;
    }
    n += (size_t)snprintf((char *)dst + n, cap - n, "%zx\r\n%.*s\r\n", a, (int)a, body);
    n += (size_t)snprintf((char *)dst + n, cap - n, "%zx;ext=1\r\n%.*s\r\n", b - a, (int)(b - a),
                          body + a);
    n += (size_t)snprintf((char *)dst + n, cap - n, "%zx\r\n%.*s\r\n0\r\n\r\n", blen - b,
                          (int)(blen - b), body + b);
    return n;
}

enum what { MEMCPY, HTTP_CL, HTTP_CHUNKED, HTTP_BYTES, HTTP_PIPE, JSON, HTTP_JSON };

static struct ing_http_req hreq;
static struct ing_oai_req oreq;

/* One request's work; returns requests done (pipelined: pipe_n). */
static unsigned one(enum what w)
{
    struct ing_oai_err err;
    uint32_t tok[8];
    const uint8_t *src = w == HTTP_CHUNKED ? req_chunked : w == HTTP_PIPE ? req_pipe : req_cl;
    size_t len = w == HTTP_CHUNKED ? len_chunked : w == HTTP_PIPE ? len_pipe : len_cl;
    int rc = 0;

    memcpy(work, src, len);
    switch (w) {
    case MEMCPY:
        sink += work[len / 2];
        return 1;
    case HTTP_CL:
    case HTTP_CHUNKED:
        ing_http_init(&hreq, NULL, 0);
        rc = ing_http_parse(&hreq, work, len);
        break;
    case HTTP_BYTES:
        ing_http_init(&hreq, NULL, 0);
        for (size_t i = 1; i <= len && (rc = ing_http_parse(&hreq, work, i)) == -EAGAIN; i++)
            ;
        break;
    case HTTP_PIPE: {
        uint32_t start = 0;

        for (size_t i = 0; i < pipe_n; i++) {
            ing_http_init(&hreq, NULL, start);
            rc |= ing_http_parse(&hreq, work, len);
            start = hreq.next;
        }
        FAVO_ASSERT(start == len);
        sink += start;
        FAVO_ASSERT(rc == 0);
        return (unsigned)pipe_n;
    }
    case JSON:
    case HTTP_JSON:
        if (w == HTTP_JSON) {
            ing_http_init(&hreq, NULL, 0);
            rc = ing_http_parse(&hreq, work, len);
        } else {
            hreq.body = (struct ing_span){ (uint32_t)(len - strlen(body)),
                                           (uint32_t)strlen(body) };
        }
        if (!rc)
            rc = ing_oai_decode(&oreq, ING_OAI_CHAT, work, hreq.body, tok, 8, &err);
        sink += oreq.nmsg;
        break;
    }
    FAVO_ASSERT(rc == 0);
    sink += hreq.body.len;
    return 1;
}

static struct row measure(const char *name, enum what w)
{
    size_t len = w == HTTP_CHUNKED ? len_chunked : w == HTTP_PIPE ? len_pipe : len_cl;
    uint64_t t0, t1, iters = 0, reqs = 0;
    struct row r = { name, 0, 0, 0 };

    for (int i = 0; i < 1000; i++)   /* warm up */
        one(w);
    t0 = favo_now_ns();
    do {
        for (int i = 0; i < 256; i++)
            reqs += one(w);
        iters += 256;
        t1 = favo_now_ns();
    } while ((double)(t1 - t0) < min_secs * 1e9);
    double secs = (double)(t1 - t0) / 1e9;
    r.rps = (double)reqs / secs;
    r.mbps = (double)iters * (double)len / secs / 1e6;
    r.ns = secs * 1e9 / (double)reqs;
    return r;
}

int main(int argc, char **argv)
{
    bool json = perf_want_json(argc, argv);
    char machine[512];
    struct row rows[7];

    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--quick"))
            min_secs = 0.1;
    req_cl = malloc(4096);
    req_chunked = malloc(4096);
    req_pipe = malloc(4096 * pipe_n);
    work = malloc(4096 * pipe_n);
    len_cl = build(req_cl, 4096, 0);
    len_chunked = build(req_chunked, 4096, 1);
    for (size_t i = 0; i < pipe_n; i++)
        memcpy(req_pipe + len_pipe, req_cl, len_cl), len_pipe += len_cl;

    rows[0] = measure("memcpy", MEMCPY);
    rows[1] = measure("http-cl", HTTP_CL);
    rows[2] = measure("http-chunked", HTTP_CHUNKED);
    rows[3] = measure("http-bytewise", HTTP_BYTES);
    rows[4] = measure("http-pipelined", HTTP_PIPE);
    rows[5] = measure("json-chat", JSON);
    rows[6] = measure("http+json", HTTP_JSON);
    perf_machine(machine, sizeof(machine));

    if (json) {
        char key[64];

        perf_json_begin(stdout);
        perf_json_str(stdout, "machine", machine);
        perf_json_num(stdout, "request_bytes", (double)len_cl);
        for (unsigned i = 0; i < FAVO_ARRAY_SIZE(rows); i++) {
            snprintf(key, sizeof(key), "%s_rps", rows[i].name);
            perf_json_num(stdout, key, rows[i].rps);
            snprintf(key, sizeof(key), "%s_mbps", rows[i].name);
            perf_json_num(stdout, key, rows[i].mbps);
        }
        perf_json_end(stdout);
        return 0;
    }
    printf("ingress parsers, one core (%s)\n", machine);
    printf("request: %zu bytes (%zu head + %zu body), chunked form %zu bytes\n\n", len_cl,
           len_cl - strlen(body), strlen(body), len_chunked);
    printf("%-16s %14s %10s %10s\n", "case", "requests/s", "MB/s", "ns/req");
    for (unsigned i = 0; i < FAVO_ARRAY_SIZE(rows); i++)
        printf("%-16s %14.0f %10.0f %10.0f\n", rows[i].name, rows[i].rps, rows[i].mbps,
               rows[i].ns);
    return 0;
}
