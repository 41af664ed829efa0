/*
 * egr_buf.h - the bounded appender every egress formatter writes with
 * (response bodies and chunks, logprobs, error bodies, access records).
 *
 * Writes go to p[n..cap); the first one that does not fit latches err =
 * -ENOSPC and every later one is a no-op, so a formatter appends freely
 * and checks err once at the end. Nothing is NUL-terminated.
 */
#ifndef EGR_BUF_H
#define EGR_BUF_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "egr.h"

struct egr_buf {
    char *p;
    size_t cap, n;
    int err;    /* 0, or -ENOSPC once anything did not fit */
};

static inline void egr_put(struct egr_buf *w, const char *s, size_t len)
{
    if (w->err || w->cap - w->n < len) {
        w->err = -ENOSPC;
        return;
    }
    memcpy(w->p + w->n, s, len);
    w->n += len;
}

/* a NUL-terminated string */
static inline void egr_put_z(struct egr_buf *w, const char *s) { egr_put(w, s, strlen(s)); }

/* a string literal */
#define EGR_PUTS(w, lit) egr_put(w, lit, sizeof(lit) - 1)

/* v in decimal, at least width digits (zero-padded): by hand, snprintf
 * costs ~50 ns a call and logprobs write one number per byte of a piece */
static inline void egr_put_u(struct egr_buf *w, uint64_t v, unsigned width)
{
    char b[24];
    size_t i = sizeof(b);

    do {
        b[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v || sizeof(b) - i < width);
    egr_put(w, b + i, sizeof(b) - i);
}

/* s[0, len) as a JSON string body (egr_json_str; no quotes) */
static inline void egr_put_js(struct egr_buf *w, const char *s, size_t len)
{
    int n;

    if (w->err)
        return;
    n = egr_json_str(w->p + w->n, w->cap - w->n, s, len);
    if (n < 0)
        w->err = n;
    else
        w->n += (size_t)n;
}

#endif
