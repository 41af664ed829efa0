/*
 * test-dp-bench-parse.c - the response parser of favo bench
 * (dp_bench_parse_response): SSE over chunked encoding, Content-Length and
 * read-to-EOF bodies, errors, malformed framing. Every case is fed whole and
 * in every piece size from 1 to 17 bytes; the verdict must not depend on
 * how recv() split the bytes.
 */
#include "dp_bench.h"

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#define CRLF "\r\n"

static void expect(bool stream, const char *in, int rc, int status, long tokens, bool complete)
{
    size_t pieces[] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 100000 };

    for (unsigned i = 0; i < sizeof(pieces) / sizeof(*pieces); i++) {
        struct dp_bench_parsed p;
        int got = dp_bench_parse_response(stream, in, strlen(in), pieces[i], &p);

        if (got != rc || (!rc && (p.status != status || p.tokens != tokens ||
                                  p.complete != complete))) {
            print_error("piece %zu: rc %d status %d tokens %ld complete %d; want %d %d %ld %d\n",
                        pieces[i], got, p.status, p.tokens, p.complete, rc, status, tokens,
                        complete);
            fail();
        }
    }
}

static const char sse[] =
    "HTTP/1.1 200 OK" CRLF "Content-Type: text/event-stream" CRLF
    "transfer-encoding: Chunked" CRLF CRLF
    "f" CRLF "data: {\"a\":1}\n\n" CRLF             /* 15 bytes */
    "19;ext=1" CRLF "data: {\"a\":2}\n\ndata: {}\n\n" CRLF /* two events, 25 bytes */
    "7" CRLF "data: {" CRLF "8" CRLF "\"b\":3}\n\n" CRLF  /* one event split over chunks */
    "e" CRLF "data: [DONE]\n\n" CRLF
    "0" CRLF "X-Trailer: 1" CRLF CRLF;

static void t_sse_chunked(void **state)
{
    (void)state;
    expect(true, sse, 0, 200, 4, true);
}

static void t_sse_incomplete(void **state)
{
    char buf[sizeof(sse)];

    (void)state;
    memcpy(buf, sse, sizeof(sse));
    buf[strlen(buf) - 20] = 0; /* cut before the terminal chunk */
    expect(true, buf, 0, 200, 4, false);
}

static void t_sse_eof_body(void **state)
{
    (void)state;
    /* no framing: the body runs to EOF; CRLF line ends; last line has no \n */
    expect(true, "HTTP/1.1 200 OK" CRLF CRLF "data: x" CRLF CRLF ": comment" CRLF "data:y" CRLF
                 "event: e" CRLF "data: z",
           0, 200, 3, true);
}

/* Events without text (role-only delta, finish_reason-only, usage) are not
 * tokens; events with neither "text" nor "content" are. */
static void t_sse_textless(void **state)
{
    (void)state;
    expect(true, "HTTP/1.1 200 OK" CRLF CRLF
                 "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n"
                 "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n"
                 "data: {\"choices\":[{\"delta\":{\"content\": \"Hi\"}}]}\n\n"
                 "data: {\"choices\":[{\"text\":\"\\\"\",\"finish_reason\":null}]}\n\n"
                 "data: {\"choices\":[{\"text\":\"\",\"finish_reason\":\"length\"}]}\n\n"
                 "data: {\"choices\":[{\"delta\":{\"content\":null}}]}\n\n"
                 "data: [DONE]\n\n",
           0, 200, 2, true); /* "Hi" and "\"" */
}

/* The usage event's count wins over the events: two tokens that make one
 * character send one event; OpenAI's "usage":null on other chunks is no count. */
static void t_sse_usage(void **state)
{
    (void)state;
    expect(true, "HTTP/1.1 200 OK" CRLF CRLF
                 "data: {\"choices\":[{\"text\":\"a\"}],\"usage\":null}\n\n"
                 "data: {\"choices\":[{\"text\":\"\\u00e9\"}],\"usage\":null}\n\n"
                 "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\": 3,"
                 "\"total_tokens\":8}}\n\n"
                 "data: [DONE]\n\n",
           0, 200, 3, true);
    /* a usage event without a number: the events count */
    expect(true, "HTTP/1.1 200 OK" CRLF CRLF
                 "data: {\"choices\":[{\"text\":\"a\"}]}\n\n"
                 "data: {\"choices\":[],\"usage\":{\"completion_tokens\":x}}\n\n",
           0, 200, 1, true);
}

static void t_plain_length(void **state)
{
    (void)state;
    expect(false, "HTTP/1.1 200 OK" CRLF "Content-Length: 44" CRLF CRLF
                  "{\"usage\":{\"completion_tokens\": 17},\"x\":[1]}xxxxx",
           0, 200, 17, true);
    expect(false, "HTTP/1.1 503 Busy" CRLF "Content-Length: 2" CRLF CRLF "{}", 0, 503, 0, true);
    expect(true, "HTTP/1.1 429 Too Many" CRLF "content-length: 100" CRLF CRLF "{}", 0, 429, 0,
           false);
    expect(false, "HTTP/1.1 204 No Content" CRLF CRLF, 0, 204, 0, true);
}

static void t_malformed(void **state)
{
    char big[20000];

    (void)state;
    expect(true, "HTTP/2 200" CRLF CRLF, -EPROTO, 0, 0, false);
    expect(true, "SSH-2.0-OpenSSH" CRLF CRLF, -EPROTO, 0, 0, false);
    expect(true, "HTTP/1.1 200 OK" CRLF "Transfer-Encoding: chunked" CRLF CRLF "zz" CRLF,
           -EPROTO, 0, 0, false);
    expect(true, "HTTP/1.1 200 OK" CRLF "Transfer-Encoding: chunked" CRLF CRLF
                 "3" CRLF "abcX" CRLF, -EPROTO, 0, 0, false);
    expect(true, "HTTP/1.1 200 OK" CRLF "Transfer-Encoding: chunked" CRLF CRLF
                 "ffffffffffffffffffff" CRLF, -EPROTO, 0, 0, false);
    memset(big, 'a', sizeof(big) - 1);
    memcpy(big, "HTTP/1.1 200 OK" CRLF "X: ", 20);
    big[sizeof(big) - 1] = 0; /* headers over 16 KiB */
    expect(true, big, -EPROTO, 0, 0, false);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(t_sse_chunked),  cmocka_unit_test(t_sse_incomplete),
        cmocka_unit_test(t_sse_eof_body), cmocka_unit_test(t_sse_textless),
        cmocka_unit_test(t_sse_usage),
        cmocka_unit_test(t_plain_length),
        cmocka_unit_test(t_malformed),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
