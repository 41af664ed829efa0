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
#include "favo_buf.h"
#include "favo_base.h"

/* ns as milliseconds with three decimals, rounded to the microsecond */
static void put_ms(struct favo_buf *w, uint64_t ns)
{
    uint64_t us = ns / 1000 + (ns % 1000 >= 500);

    favo_put_u(w, us / 1000, 1);
    FAVO_PUTS(w, ".");
    favo_put_u(w, us % 1000, 3);
}

static void put_str(struct favo_buf *w, const char *name, size_t nl, const char *s, size_t max)
{
    FAVO_PUTS(w, ",\"");
    favo_put(w, name, nl);
    FAVO_PUTS(w, "\":\"");
    egr_put_js(w, s, strnlen(s, max));
    FAVO_PUTS(w, "\"");
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
    struct favo_buf w = {out, cap, 0, 0};

    if (sec != c_sec) {
        struct tm tm;
        struct favo_buf d = {c_date, sizeof(c_date), 0, 0};

        if (!gmtime_r(&sec, &tm) || tm.tm_year + 1900 < 0 || tm.tm_year + 1900 > 9999)
            return -EINVAL;
        favo_put_u(&d, (uint64_t)(tm.tm_year + 1900), 4);
        FAVO_PUTS(&d, "-");
        favo_put_u(&d, (uint64_t)tm.tm_mon + 1, 2);
        FAVO_PUTS(&d, "-");
        favo_put_u(&d, (uint64_t)tm.tm_mday, 2);
        FAVO_PUTS(&d, "T");
        favo_put_u(&d, (uint64_t)tm.tm_hour, 2);
        FAVO_PUTS(&d, ":");
        favo_put_u(&d, (uint64_t)tm.tm_min, 2);
        FAVO_PUTS(&d, ":");
        favo_put_u(&d, (uint64_t)tm.tm_sec, 2);
        FAVO_ASSERT(!d.err && d.n == sizeof(c_date) - 1);
        c_sec = sec;
    }
    FAVO_PUTS(&w, "{\"time\":\"");
    favo_put(&w, c_date, sizeof(c_date) - 1);
    FAVO_PUTS(&w, ".");
    favo_put_u(&w, a->wall_ns / 1000000ull % 1000, 3);
    FAVO_PUTS(&w, "Z\"");
    PUT_STR(&w, "request_id", a->request_id);
    PUT_STR(&w, "tenant", a->tenant);
    PUT_STR(&w, "model", a->model);
    FAVO_PUTS(&w, ",\"status\":");
    favo_put_u(&w, a->status, 1);
    FAVO_PUTS(&w, ",\"finish_reason\":");
    if (a->finish == EGR_FIN_STOP)
        FAVO_PUTS(&w, "\"stop\"");
    else if (a->finish == EGR_FIN_LENGTH)
        FAVO_PUTS(&w, "\"length\"");
    else
        FAVO_PUTS(&w, "null");
    FAVO_PUTS(&w, ",\"prompt_tokens\":");
    favo_put_u(&w, a->prompt_tokens, 1);
    FAVO_PUTS(&w, ",\"completion_tokens\":");
    favo_put_u(&w, a->completion_tokens, 1);
    FAVO_PUTS(&w, ",\"queue_ms\":");
    put_ms(&w, a->queue_ns);
    FAVO_PUTS(&w, ",\"ttft_ms\":");
    put_ms(&w, a->ttft_ns);
    FAVO_PUTS(&w, ",\"total_ms\":");
    put_ms(&w, a->total_ns);
    FAVO_PUTS(&w, "}\n");
    /* the old snprintf form kept one byte for its NUL: so does this */
    return favo_buf_end(&w);
}
