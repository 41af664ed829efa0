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
#include "egr_buf.h"
#include "favo_base.h"

/* ns as milliseconds with three decimals, rounded to the microsecond */
static void put_ms(struct egr_buf *w, uint64_t ns)
{
    uint64_t us = ns / 1000 + (ns % 1000 >= 500);

    egr_put_u(w, us / 1000, 1);
    EGR_PUTS(w, ".");
    egr_put_u(w, us % 1000, 3);
}

static void put_str(struct egr_buf *w, const char *name, size_t nl, const char *s, size_t max)
{
    EGR_PUTS(w, ",\"");
    egr_put(w, name, nl);
    EGR_PUTS(w, "\":\"");
    egr_put_js(w, s, strnlen(s, max));
    EGR_PUTS(w, "\"");
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
    struct egr_buf w = {out, cap, 0, 0};

    if (sec != c_sec) {
        struct tm tm;
        struct egr_buf d = {c_date, sizeof(c_date), 0, 0};

        if (!gmtime_r(&sec, &tm) || tm.tm_year + 1900 < 0 || tm.tm_year + 1900 > 9999)
            return -EINVAL;
        egr_put_u(&d, (uint64_t)(tm.tm_year + 1900), 4);
        EGR_PUTS(&d, "-");
        egr_put_u(&d, (uint64_t)tm.tm_mon + 1, 2);
        EGR_PUTS(&d, "-");
        egr_put_u(&d, (uint64_t)tm.tm_mday, 2);
        EGR_PUTS(&d, "T");
        egr_put_u(&d, (uint64_t)tm.tm_hour, 2);
        EGR_PUTS(&d, ":");
        egr_put_u(&d, (uint64_t)tm.tm_min, 2);
        EGR_PUTS(&d, ":");
        egr_put_u(&d, (uint64_t)tm.tm_sec, 2);
        FAVO_ASSERT(!d.err && d.n == sizeof(c_date) - 1);
        c_sec = sec;
    }
    EGR_PUTS(&w, "{\"time\":\"");
    egr_put(&w, c_date, sizeof(c_date) - 1);
    EGR_PUTS(&w, ".");
    egr_put_u(&w, a->wall_ns / 1000000ull % 1000, 3);
    EGR_PUTS(&w, "Z\"");
    PUT_STR(&w, "request_id", a->request_id);
    PUT_STR(&w, "tenant", a->tenant);
    PUT_STR(&w, "model", a->model);
    EGR_PUTS(&w, ",\"status\":");
    egr_put_u(&w, a->status, 1);
    EGR_PUTS(&w, ",\"finish_reason\":");
    if (a->finish == EGR_FIN_STOP)
        EGR_PUTS(&w, "\"stop\"");
    else if (a->finish == EGR_FIN_LENGTH)
        EGR_PUTS(&w, "\"length\"");
    else
        EGR_PUTS(&w, "null");
    EGR_PUTS(&w, ",\"prompt_tokens\":");
    egr_put_u(&w, a->prompt_tokens, 1);
    EGR_PUTS(&w, ",\"completion_tokens\":");
    egr_put_u(&w, a->completion_tokens, 1);
    EGR_PUTS(&w, ",\"queue_ms\":");
    put_ms(&w, a->queue_ns);
    EGR_PUTS(&w, ",\"ttft_ms\":");
    put_ms(&w, a->ttft_ns);
    EGR_PUTS(&w, ",\"total_ms\":");
    put_ms(&w, a->total_ns);
    EGR_PUTS(&w, "}\n");
    /* the old snprintf form kept one byte for its NUL: so does this */
    if (w.err || w.n >= cap)
        return -ENOSPC;
    out[w.n] = 0;
    return (int)w.n;
}
