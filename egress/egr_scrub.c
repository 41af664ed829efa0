/*
 * egr_scrub.c - wipe a response's state and area. Both hold request
 * content (detok's held text, pending event bytes); explicit_bzero so the
 * compiler cannot drop the stores as dead (invariant 5, no retention).
 * The cell as a whole is scrubbed when it is freed: by egr_scrub_free
 * (egr_scrub.h), which scrubs only what was written (cell inv 6).
 */
#include <string.h>

#include "egr.h"
#include "egr_scrub.h"

void egr_scrub(struct egr_resp *r, char *area, size_t cap)
{
    if (r)
        explicit_bzero(r, sizeof(*r));
    if (area && cap)
        explicit_bzero(area, cap);
}

void egr_scrub_mark(size_t *hwm, const struct egr_resp *r, int rc, size_t cap)
{
    size_t e;

    if (rc < 0 || r->logprobs) {
        e = cap; /* see egr_scrub.h: a failed call, logprob entries */
    } else {
        e = r->pending > r->text_len ? r->pending : r->text_len;
        e += EGR_CHUNK_PAD + 64; /* formatted in place ahead of pending */
        if (e > cap)
            e = cap;
    }
    if (e > *hwm)
        *hwm = e;
}

int egr_scrub_free(struct shm_cell_pool *pool, shm_cell_ref_t cell, const struct shm_req *q,
                   size_t size, size_t area_off, size_t hwm, struct egr_resp *r)
{
    uint64_t lp = shm_pipe_lp_bytes(q->max_tokens, shm_pipe_lp_alts(q->logprobs,
                                                                     q->top_logprobs));
    size_t hi = lp < size ? size - (size_t)lp : 0;
    size_t lo = area_off + hwm;

    if (r)
        egr_scrub(r, NULL, 0);
    if (hwm >= size || lo > hi)
        lo = hi = size; /* the whole cell */
    return shm_cell_free_span(pool, cell, SHM_CELL_EGRESS, lo, hi);
}
