/*
 * favo_buf.h - the bounded text appender every formatter on the serving
 * path writes with, instead of snprintf (ingress's rate-limit headers,
 * egress's response heads, bodies, chunks, logprobs, error bodies and
 * access records): format parsing was a tenth to a fifth of those
 * stages' formatting CPU.
 *
 * Writes go to p[n..cap); the first one that does not fit latches err =
 * -ENOSPC and every later one is a no-op, so a formatter appends freely and
 * checks once at the end. Nothing is NUL-terminated: favo_buf_end does it
 * for callers that keep snprintf's contract (room for the NUL or -ENOSPC).
 */
#ifndef FAVO_BUF_H
#define FAVO_BUF_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

struct favo_buf {
    char *p;
    size_t cap, n;
    int err;    /* 0, or -ENOSPC once anything did not fit */
};

static inline void favo_put(struct favo_buf *w, const char *s, size_t len)
{
    if (w->err || w->cap - w->n < len) {
        w->err = -ENOSPC;
        return;
    }
    memcpy(w->p + w->n, s, len);
    w->n += len;
}

/* a NUL-terminated string */
static inline void favo_put_z(struct favo_buf *w, const char *s) { favo_put(w, s, strlen(s)); }

/* a string literal */
#define FAVO_PUTS(w, lit) favo_put(w, lit, sizeof(lit) - 1)

/* v in decimal, at least width digits (zero-padded) */
static inline void favo_put_u(struct favo_buf *w, uint64_t v, unsigned width)
{
    char b[24];
    size_t i = sizeof(b);

    do {
        b[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v || (sizeof(b) - i < width && i > 0));
    favo_put(w, b + i, sizeof(b) - i);
}

/* snprintf's contract: the length written and a NUL after it, or -ENOSPC
 * when the text and its NUL did not fit */
static inline int favo_buf_end(struct favo_buf *w)
{
    if (w->err || w->n >= w->cap || w->n > INT32_MAX)
        return -ENOSPC;
    w->p[w->n] = 0;
    return (int)w->n;
}

#endif
