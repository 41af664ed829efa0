/*
 * egr_scrub.h - what egress scrubs when a response ends, and how little.
 *
 * A request's cell is 64 KiB (the smallest class) and a small answer uses
 * a few KiB of it; scrubbing all of it per request (shm_cell_free) was the
 * largest single cost of egress under wrk. Egress frees with
 * shm_cell_free_span (shm_cell.h, cell inv 6) instead: it scrubs
 *
 *   [0, area_off + hwm)       ingress's request bytes, the ids (prompt and
 *                             generated), the shm_req copy, egress's state
 *                             and the part of its area it may have written
 *   [size - lp_bytes, size)   the batcher's logprob records (shm_pipe.h),
 *                             when logprobs were asked
 *
 * and leaves the rest, which still holds the zeros of the allocation.
 *
 * The area's high-water mark (hwm, bytes from the area's start) is kept
 * by the stage, process-local, per response: 0 when the response starts
 * (a fresh area is all zero), raised with egr_scrub_mark() after EVERY
 * call that may write the area (egr_resp_init / _token / _finish /
 * _bytes, egr_error_response), and the whole area (cap) when the stage
 * does not know (a response adopted after a restart). egr_scrub_mark is
 * conservative on purpose:
 *   - a call that failed (rc < 0) may have formatted up to cap before it
 *     found no room: cap;
 *   - a response with logprobs keeps records and entries in places of
 *     their own in the area: cap;
 *   - otherwise max(pending, text_len) plus the room formatting in place
 *     uses ahead of pending (EGR_CHUNK_PAD and a line of slack).
 * shm_cell_free_span checks the marks (the line after the area's mark and
 * the line before the records must be zero, every byte in poison mode) and
 * aborts naming the offset when they do not hold: a wrong mark is a bug,
 * never silent retention.
 */
#ifndef EGR_SCRUB_H
#define EGR_SCRUB_H

#include <stddef.h>
#include <stdint.h>

#include "egr.h"
#include "../shm/shm_cell.h"
#include "../shm/shm_pipe.h"

/* The furthest byte of area[0, cap) the last call (its result rc) may
 * have written, raised into *hwm (never lowered). */
void egr_scrub_mark(size_t *hwm, const struct egr_resp *r, int rc, size_t cap);

/* Free the cell of a finished response (egress owns it, cell inv 1):
 * egr_scrub of the state, then shm_cell_free_span with the marks above.
 * q: the request (its copy in the cell is read before anything is
 * scrubbed); size: the cell's size; area_off: the area's offset in the
 * cell; hwm: its mark (cap or more: the whole area). Returns what
 * shm_cell_free_span returns. */
int egr_scrub_free(struct shm_cell_pool *pool, shm_cell_ref_t cell, const struct shm_req *q,
                   size_t size, size_t area_off, size_t hwm, struct egr_resp *r);

#endif /* EGR_SCRUB_H */
