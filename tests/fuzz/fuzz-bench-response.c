/*
 * fuzz-bench-response.c - favo bench's HTTP response / chunked / SSE parser
 * (dp_bench_parse_response) on arbitrary bytes: never crashes, and the
 * verdict does not depend on how the bytes were split (metamorphic check:
 * whole input vs. byte by byte vs. a split size taken from the input).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dp_bench.h"
#include "favo_base.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct dp_bench_parsed a, b, c;
    bool stream;
    size_t piece;
    int ra, rb, rc;

    if (size < 1)
        return 0;
    stream = data[0] & 1;
    piece = (size_t)(data[0] >> 1) + 1;
    data++;
    size--;
    ra = dp_bench_parse_response(stream, (const char *)data, size, size ? size : 1, &a);
    rb = dp_bench_parse_response(stream, (const char *)data, size, 1, &b);
    rc = dp_bench_parse_response(stream, (const char *)data, size, piece, &c);
    FAVO_ASSERT(ra == rb && ra == rc);
    if (!ra) {
        FAVO_ASSERT(a.status == b.status && a.status == c.status);
        FAVO_ASSERT(a.tokens == b.tokens && a.tokens == c.tokens);
        FAVO_ASSERT(a.complete == b.complete && a.complete == c.complete);
    }
    return 0;
}
