/*
 * eng_detok.c - streaming detokenizer and stop-string matcher (contract in
 * eng_detok.h). Work happens in the caller's output buffer: the held stop
 * prefix is copied to its start, new complete characters are appended,
 * stops are searched there, and the new held suffix is copied back.
 */
#include "eng_detok.h"

#include <errno.h>
#include <string.h>

#include "favo_base.h"

int eng_detok_init(struct eng_detok *d, unsigned flags, const char *const *stops,
                   const size_t *stop_lens, unsigned n_stops)
{
    memset(d, 0, sizeof(*d));
    if (n_stops > ENG_DETOK_MAX_STOPS)
        return -EINVAL;
    d->flags = (uint8_t)flags;
    for (unsigned i = 0; i < n_stops; i++) {
        if (stop_lens[i] == 0 || stop_lens[i] > ENG_DETOK_STOP_MAX)
            return -EINVAL;
        memcpy(d->stop[i], stops[i], stop_lens[i]);
        d->stop_len[i] = (uint16_t)stop_lens[i];
    }
    d->n_stops = (uint8_t)n_stops;
    return 0;
}

size_t eng_detok_out_max(const eng_tok_t *t)
{
    return 3 * eng_tok_max_piece(t) + ENG_DETOK_STOP_MAX + 16;
}

static const char REPL[3] = { (char)0xEF, (char)0xBF, (char)0xBD };   /* U+FFFD */

/* Is b an acceptable byte at position pos (1..3) of a sequence led by lead? */
static inline int utf8_cont_ok(uint8_t lead, unsigned pos, uint8_t b)
{
    if ((b & 0xC0) != 0x80)
        return 0;
    if (pos != 1)
        return 1;
    if (lead == 0xE0)
        return b >= 0xA0;
    if (lead == 0xED)
        return b <= 0x9F;
    if (lead == 0xF0)
        return b >= 0x90;
    if (lead == 0xF4)
        return b <= 0x8F;
    return 1;
}

/* Append complete characters of [p, p+len) at out+*m, keeping an
 * incomplete tail in d->utf8. */
static void utf8_feed(struct eng_detok *d, const uint8_t *p, size_t len, char *out, size_t *m)
{
    for (size_t i = 0; i < len; i++) {
        uint8_t b = p[i];

        if (d->n_utf8) {
            if (utf8_cont_ok(d->utf8[0], d->n_utf8, b)) {
                d->utf8[d->n_utf8++] = b;
                if (d->n_utf8 == d->need_utf8) {
                    memcpy(out + *m, d->utf8, d->n_utf8);
                    *m += d->n_utf8;
                    d->n_utf8 = 0;
                }
                continue;
            }
            /* interrupted sequence: one replacement, then b afresh */
            memcpy(out + *m, REPL, 3);
            *m += 3;
            d->n_utf8 = 0;
        }
        if (b < 0x80) {
            out[(*m)++] = (char)b;
        } else if (b >= 0xC2 && b <= 0xF4) {
            d->utf8[0] = b;
            d->n_utf8 = 1;
            d->need_utf8 = b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
        } else {
            memcpy(out + *m, REPL, 3);
            *m += 3;
        }
    }
}

/* Stop handling on out[0..m). Returns ENG_DETOK_STOP or 0; sets *n. */
static int stops_apply(struct eng_detok *d, char *out, size_t m, int final, size_t *n)
{
    size_t first = SIZE_MAX, keep = 0;

    for (unsigned s = 0; s < d->n_stops; s++) {
        char *hit = memmem(out, m, d->stop[s], d->stop_len[s]);
        if (hit && (size_t)(hit - out) < first)
            first = (size_t)(hit - out);
    }
    if (first != SIZE_MAX) {
        d->done = 1;
        d->n_hold = 0;
        *n = first;
        /* the stop and what followed it are never sent: scrub them here,
         * the caller scrubs out[0, *n) once sent (ARCHITECTURE.md inv. 5) */
        explicit_bzero(out + first, m - first);
        explicit_bzero(d->hold, sizeof(d->hold));
        explicit_bzero(d->utf8, sizeof(d->utf8));
        d->n_utf8 = 0;
        return ENG_DETOK_STOP;
    }
    if (!final) {
        /* longest suffix of out that is a proper prefix of a stop */
        for (unsigned s = 0; s < d->n_stops; s++) {
            size_t l = FAVO_MIN((size_t)d->stop_len[s] - 1, m);
            for (; l > keep; l--)
                if (!memcmp(out + m - l, d->stop[s], l))
                    break;
            if (l > keep)
                keep = l;
        }
    }
    FAVO_ASSERT(keep < ENG_DETOK_STOP_MAX);
    memcpy(d->hold, out + m - keep, keep);
    /* the held bytes now live in d->hold only; nothing of an older hold
     * stays behind it */
    explicit_bzero(out + m - keep, keep);
    explicit_bzero(d->hold + keep, sizeof(d->hold) - keep);
    d->n_hold = (uint16_t)keep;
    *n = m - keep;
    return 0;
}

int eng_detok_push_bytes(struct eng_detok *d, const char *p, size_t len, char *out, size_t cap,
                         size_t *n)
{
    size_t m;

    *n = 0;
    if (d->done)
        return d->done == 1 ? ENG_DETOK_STOP : 0;
    if (cap < 3 * len + ENG_DETOK_STOP_MAX + 8)
        return -ENOSPC;
    if (!d->started && len) {
        d->started = 1;
        if ((d->flags & ENG_DETOK_STRIP_FIRST) && p[0] == ' ') {
            p++;
            len--;
        }
    }
    memcpy(out, d->hold, d->n_hold);
    m = d->n_hold;
    utf8_feed(d, (const uint8_t *)p, len, out, &m);
    return stops_apply(d, out, m, 0, n);
}

int eng_detok_push(struct eng_detok *d, const eng_tok_t *t, int32_t id, char *out, size_t cap,
                   size_t *n)
{
    const char *p;
    size_t len;
    int rc = eng_tok_piece(t, id, (d->flags & ENG_DETOK_SHOW_SPECIAL) ? ENG_TOK_SHOW_SPECIAL : 0,
                           &p, &len);

    *n = 0;
    if (rc)
        return rc;
    return eng_detok_push_bytes(d, p, len, out, cap, n);
}

int eng_detok_flush(struct eng_detok *d, char *out, size_t cap, size_t *n)
{
    size_t m;
    int rc;

    *n = 0;
    if (d->done)
        return d->done == 1 ? ENG_DETOK_STOP : 0;
    if (cap < ENG_DETOK_STOP_MAX + 8)
        return -ENOSPC;
    memcpy(out, d->hold, d->n_hold);
    m = d->n_hold;
    if (d->n_utf8) {
        memcpy(out + m, REPL, 3);
        m += 3;
        d->n_utf8 = 0;
    }
    rc = stops_apply(d, out, m, 1, n);
    if (!rc)
        d->done = 2;
    return rc;
}
