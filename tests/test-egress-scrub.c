/*
 * test-egress-scrub.c - egress's high-water mark (egr_scrub.h) holds for
 * what egr_resp really writes: responses of every shape (chat and
 * completions, stream and body, with escapes and multi-byte text, areas
 * small enough for -EAGAIN and -ENOBUFS, readers that take part of what is
 * pending) run in a zeroed area; after every call egr_scrub_mark raises
 * the mark, and every byte of the area from the mark on must still be zero.
 * Then the same through a real cell: egr_scrub_free scrubs a 64 KiB cell
 * with the request, ids, shm_req copy, area and logprob records in it back
 * to all zeros (shm_cell_free_span's checks pass), touching less than all
 * of it when the mark is low.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "egr.h"
#include "egr_scrub.h"
#include "favo_base.h"
#include "shm_cell.h"
#include "shm_pipe.h"
#include "shm_seg.h"
#include "t_util.h"


static const char *const pieces[] = {
    "Hello", " world", "\"quoted\"", "\\", "\n", "\t", "caf\xc3\xa9", "\xe2\x82\xac",
    "\x01", " a much longer piece of text that takes some room in the area", "}", "{",
    "</s>", "\xf0\x9f\x98\x80",
};

static bool zero_from(const char *p, size_t from, size_t to)
{
    for (size_t i = from; i < to; i++)
        if (p[i])
            return false;
    return true;
}

/* One response with random pieces in an area of cap bytes; returns how
 * many calls were checked. */
static unsigned one(uint64_t *seed, int route, int stream, size_t cap)
{
    struct egr_resp_cfg cfg = {
        .route = (uint8_t)route, .stream = (uint8_t)stream, .include_usage = (uint8_t)(*seed & 1),
        .keep_alive = 1, .prompt_tokens = 5, .created = 1700000000,
        .id = route == EGR_CHAT ? "chatcmpl-abc" : "cmpl-abc", .model = "smollm",
        .fingerprint = "fp_favo", .request_id = "req-1",
    };
    char *area = calloc(1, cap);
    struct egr_resp r;
    size_t hwm = 0, step = 1 + t_rand(seed) % 700;
    unsigned n = 2 + (unsigned)(t_rand(seed) % 200), checked = 0;
    int rc;

    T_REQUIRE(area);
    rc = egr_resp_init(&r, &cfg, area, cap);
    egr_scrub_mark(&hwm, &r, rc < 0 ? rc : 0, cap);
    T_CHECK(zero_from(area, hwm, cap), "init wrote beyond the mark %zu", hwm);
    if (rc < 0)
        goto out;
    for (unsigned i = 0; i <= n; i++) {
        const char *p = pieces[t_rand(seed) % FAVO_ARRAY_SIZE(pieces)];

        for (int tries = 0; tries < 1000; tries++) {
            rc = i < n ? egr_resp_bytes(&r, p, strlen(p), false, area, cap)
                       : egr_resp_finish(&r, EGR_FIN_LENGTH, area, cap);
            egr_scrub_mark(&hwm, &r, rc < 0 ? rc : 0, cap);
            checked++;
            T_CHECK(zero_from(area, hwm, cap),
                    "route %d stream %d cap %zu: a call (rc %d) wrote beyond the mark %zu", route,
                    stream, cap, rc, hwm);
            if (rc != -EAGAIN || !egr_resp_pending(&r))
                break;
            egr_resp_consume(&r, area, FAVO_MIN(step, (size_t)egr_resp_pending(&r)));
        }
        if (rc < 0 || (rc & EGR_DONE))
            break;
        if (t_rand(seed) % 3 == 0 && egr_resp_pending(&r))
            egr_resp_consume(&r, area, FAVO_MIN(step, (size_t)egr_resp_pending(&r)));
    }
out:
    egr_scrub(&r, area, cap);
    free(area);
    return checked;
}

static void test_mark_holds(void)
{
    static const size_t caps[] = { 600, 1500, 4096, 24 * 1024, 60 * 1024 };
    uint64_t seed = 12345;
    unsigned calls = 0;

    for (int k = 0; k < 400; k++)
        calls += one(&seed, k & 1 ? EGR_CHAT : EGR_COMPLETIONS, (k >> 1) & 1,
                     caps[(k >> 2) % FAVO_ARRAY_SIZE(caps)]);
    T_CHECK(calls > 10000, "only %u calls checked", calls);
}

/* A failed call and a response with logprobs mark the whole area. */
static void test_mark_conservative(void)
{
    struct egr_resp r;
    size_t hwm = 0;

    memset(&r, 0, sizeof(r));
    r.pending = 100;
    egr_scrub_mark(&hwm, &r, 0, 50000);
    T_CHECK(hwm >= 100 + EGR_CHUNK_PAD && hwm < 1000, "pending 100: mark %zu", hwm);
    egr_scrub_mark(&hwm, &r, -EAGAIN, 50000);
    T_CHECK(hwm == 50000, "failed call: mark %zu", hwm);
    hwm = 0;
    r.logprobs = 1;
    egr_scrub_mark(&hwm, &r, 0, 50000);
    T_CHECK(hwm == 50000, "logprobs: mark %zu", hwm);
    r.logprobs = 0;
    r.pending = 10;
    egr_scrub_mark(&hwm, &r, 0, 50000);
    T_CHECK(hwm == 50000, "the mark never goes down: %zu", hwm);
}

/* The whole cell through egr_scrub_free: all zero after, and the span
 * checks (cell inv 6) pass for a mark that is right. */
static void test_free_cell(void)
{
    static const struct shm_cell_cfg cc = { .nclasses = 1, .classes = { { 65536, 2 } },
                                            .nreturn = 1 };
    struct shm_seg_spec regs[1] = { { "cells", shm_cell_pool_size(&cc), 4096 } };
    struct shm_seg seg;
    struct shm_cell_pool ing, egr;
    size_t len, sz, hwm = 0;
    void *mem;
    unsigned char *d;

    T_REQUIRE(shm_seg_create_data(&seg, regs, 1) == 0);
    mem = shm_seg_region(&seg, "cells", &len);
    T_REQUIRE(shm_cell_pool_init(mem, len, &cc, 3) == 0);
    shm_seg_publish(&seg);
    T_REQUIRE(shm_cell_pool_attach(&ing, mem, len, 3, SHM_CELL_ROLE_ALLOCATOR, 0) == 0);
    T_REQUIRE(shm_cell_pool_attach(&egr, mem, len, 3, SHM_CELL_ROLE_USER, 0) == 0);
    for (int lp = 0; lp < 2; lp++) {
        shm_cell_ref_t ref;
        struct shm_req q;
        struct egr_resp r;
        struct egr_resp_cfg cfg = { .route = EGR_COMPLETIONS, .keep_alive = 1, .id = "cmpl-x",
                                    .model = "m", .fingerprint = "fp" };

        T_REQUIRE(shm_cell_alloc(&ing, 1000, &ref) == 0);
        T_REQUIRE(shm_cell_get(&ing, ref, SHM_CELL_INGRESS, (void **)&d, &sz) == 0);
        memset(&q, 0, sizeof(q));
        q.tok_off = 512;
        q.ntok = 10;
        q.max_tokens = 16;
        q.logprobs = (uint8_t)lp;
        q.top_logprobs = (uint8_t)(lp ? 5 : 0);
        q.resp_off = (uint32_t)shm_pipe_resp_off(q.tok_off, q.ntok, q.max_tokens);
        memset(d, 'P', 400);                      /* the HTTP request */
        memset(d + q.tok_off, 7, 4 * (10 + 16));  /* prompt and generated ids */
        memcpy(d + q.resp_off, &q, sizeof(q));    /* ingress's copy */
        size_t area_off = q.resp_off + SHM_PIPE_REQ_COPY + 256; /* after a state */
        memset(d + q.resp_off + SHM_PIPE_REQ_COPY, 9, 256);
        uint64_t lpb = shm_pipe_lp_bytes(q.max_tokens, shm_pipe_lp_alts(q.logprobs,
                                                                         q.top_logprobs));
        if (lpb)
            memset(d + sz - lpb, 0x3c, lpb);      /* the batcher's records */
        size_t cap = sz - area_off - lpb;
        int rc = egr_resp_init(&r, &cfg, (char *)d + area_off, cap);
        egr_scrub_mark(&hwm, &r, rc < 0 ? rc : 0, cap);
        for (int i = 0; i < 16 && rc >= 0 && !(rc & EGR_DONE); i++) {
            rc = egr_resp_bytes(&r, "tok\"", 4, false, (char *)d + area_off, cap);
            egr_scrub_mark(&hwm, &r, rc < 0 ? rc : 0, cap);
        }
        rc = egr_resp_finish(&r, EGR_FIN_LENGTH, (char *)d + area_off, cap);
        egr_scrub_mark(&hwm, &r, rc < 0 ? rc : 0, cap);
        T_CHECK(rc >= 0 && egr_resp_pending(&r) > 0, "body finished: %d", rc);
        T_CHECK(lp || hwm < 4096, "a small body's mark is small: %zu", hwm);
        T_REQUIRE(shm_cell_give(&ing, ref, SHM_CELL_INGRESS, SHM_CELL_EGRESS) == 0);
        rc = egr_scrub_free(&egr, ref, (const struct shm_req *)(d + q.resp_off), sz, area_off,
                            hwm, &r);
        T_CHECK(rc == 0, "egr_scrub_free: %d", rc);
        bool zero = true;
        for (size_t i = 0; i < sz; i++)
            zero &= d[i] == 0;
        T_CHECK(zero, "logprobs %d: the cell is not all zero after egr_scrub_free", lp);
        T_CHECK(shm_cell_drain(&ing) == 1, "the cell went back to the allocator");
        hwm = 0;
    }
    shm_seg_destroy(&seg);
}

int main(void)
{
    test_mark_conservative();
    test_mark_holds();
    test_free_cell();
    if (t_failures)
        fprintf(stderr, "%d failures\n", t_failures);
    return t_failures ? 1 : 0;
}
