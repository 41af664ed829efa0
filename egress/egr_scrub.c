/*
 * egr_scrub.c - wipe a response's state and area. Both hold request
 * content (detok's held text, pending event bytes); explicit_bzero so the
 * compiler cannot drop the stores as dead (invariant 5, no retention).
 * The cell as a whole is scrubbed by shm_cell_free; this is for egress's
 * own copies and for a response abandoned mid-way.
 */
#include <string.h>

#include "egr.h"

void egr_scrub(struct egr_resp *r, char *area, size_t cap)
{
    if (r)
        explicit_bzero(r, sizeof(*r));
    if (area && cap)
        explicit_bzero(area, cap);
}
