/*
 * egr_log.c - the access record as one JSON line (egr.h invariant 4: the
 * record is metadata only; struct egr_access has no field for content).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "egr.h"
#include "favo_base.h"

/* An append cursor: err once anything did not fit. */
struct lw {
    char *out;
    size_t cap, o;
    bool err;
};

static void put(struct lw *w, const char *s, size_t n)
{
    if (w->err || w->cap - w->o < n) {
        w->err = true;
        return;
    }
    memcpy(w->out + w->o, s, n);
    w->o += n;
}

#define PUTS(w, lit) put(w, lit, sizeof(lit) - 1)

/* v in decimal, at least `width` digits (zero-padded) */
static void put_u(struct lw *w, uint64_t v, unsigned width)
{
    char b[24];
    size_t i = sizeof(b);

    do {
        b[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v || sizeof(b) - i < width);
    put(w, b + i, sizeof(b) - i);
}

/* ns as milliseconds with three decimals, rounded to the microsecond */
static void put_ms(struct lw *w, uint64_t ns)
{
    uint64_t us = ns / 1000 + (ns % 1000 >= 500);

    put_u(w, us / 1000, 1);
    PUTS(w, ".");
    put_u(w, us % 1000, 3);
}

static void put_str(struct lw *w, const char *name, size_t nl, const char *s, size_t max)
{
    int n;

    PUTS(w, ",\"");
    put(w, name, nl);
    PUTS(w, "\":\"");
    if (w->err)
        return;
    n = egr_json_str(w->out + w->o, w->cap - w->o, s, strnlen(s, max));
    if (n < 0) {
        w->err = true;
        return;
    }
    w->o += (size_t)n;
    PUTS(w, "\"");
}

#define PUT_STR(w, name, field) put_str(w, name, sizeof(name) - 1, field, sizeof(field))

/* By hand, no snprintf: once per response, where snprintf (with three %f)
 * was about a tenth of egress's CPU under bench-ingress. The calendar
 * part is cached per second (per thread). */
int egr_log_line(char *out, size_t cap, const struct egr_access *a)
{
    static _Thread_local time_t c_sec = -1;
    static _Thread_local char c_date[20]; /* YYYY-MM-DDTHH:MM:SS */
    time_t sec = (time_t)(a->wall_ns / 1000000000ull);
    struct lw w = {out, cap, 0, false};

    if (sec != c_sec) {
        struct tm tm;
        struct lw d = {c_date, sizeof(c_date), 0, false};

        if (!gmtime_r(&sec, &tm) || tm.tm_year + 1900 < 0 || tm.tm_year + 1900 > 9999)
            return -EINVAL;
        put_u(&d, (uint64_t)(tm.tm_year + 1900), 4);
        PUTS(&d, "-");
        put_u(&d, (uint64_t)tm.tm_mon + 1, 2);
        PUTS(&d, "-");
        put_u(&d, (uint64_t)tm.tm_mday, 2);
        PUTS(&d, "T");
        put_u(&d, (uint64_t)tm.tm_hour, 2);
        PUTS(&d, ":");
        put_u(&d, (uint64_t)tm.tm_min, 2);
        PUTS(&d, ":");
        put_u(&d, (uint64_t)tm.tm_sec, 2);
        FAVO_ASSERT(!d.err && d.o == sizeof(c_date) - 1);
        c_sec = sec;
    }
    PUTS(&w, "{\"time\":\"");
    put(&w, c_date, sizeof(c_date) - 1);
    PUTS(&w, ".");
    put_u(&w, a->wall_ns / 1000000ull % 1000, 3);
    PUTS(&w, "Z\"");
    PUT_STR(&w, "request_id", a->request_id);
    PUT_STR(&w, "tenant", a->tenant);
    PUT_STR(&w, "model", a->model);
    PUTS(&w, ",\"status\":");
    put_u(&w, a->status, 1);
    PUTS(&w, ",\"finish_reason\":");
    if (a->finish == EGR_FIN_STOP)
        PUTS(&w, "\"stop\"");
    else if (a->finish == EGR_FIN_LENGTH)
        PUTS(&w, "\"length\"");
    else
        PUTS(&w, "null");
    PUTS(&w, ",\"prompt_tokens\":");
    put_u(&w, a->prompt_tokens, 1);
    PUTS(&w, ",\"completion_tokens\":");
    put_u(&w, a->completion_tokens, 1);
    PUTS(&w, ",\"queue_ms\":");
    put_ms(&w, a->queue_ns);
    PUTS(&w, ",\"ttft_ms\":");
    put_ms(&w, a->ttft_ns);
    PUTS(&w, ",\"total_ms\":");
    put_ms(&w, a->total_ns);
    PUTS(&w, "}\n");
    /* the old snprintf form kept one byte for its NUL: so does this */
    if (w.err || w.o >= cap)
        return -ENOSPC;
    out[w.o] = 0;
    return (int)w.o;
}
