/*
 * egr_log.c - the access record as one JSON line (egr.h invariant 4: the
 * record is metadata only; struct egr_access has no field for content).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "egr.h"

static int put_str(char *out, size_t cap, size_t *o, const char *name, const char *s, size_t max)
{
    int n;

    n = snprintf(out + *o, cap - *o, ",\"%s\":\"", name);
    if (n < 0 || (size_t)n >= cap - *o)
        return -ENOSPC;
    *o += (size_t)n;
    n = egr_json_str(out + *o, cap - *o, s, strnlen(s, max));
    if (n < 0 || cap - *o - (size_t)n < 2)
        return -ENOSPC;
    *o += (size_t)n;
    out[(*o)++] = '"';
    return 0;
}

int egr_log_line(char *out, size_t cap, const struct egr_access *a)
{
    time_t sec = (time_t)(a->wall_ns / 1000000000ull);
    unsigned ms = (unsigned)(a->wall_ns / 1000000ull % 1000);
    struct tm tm;
    size_t o = 0;
    int n;

    if (!gmtime_r(&sec, &tm))
        return -EINVAL;
    n = snprintf(out, cap, "{\"time\":\"%04d-%02d-%02dT%02d:%02d:%02d.%03uZ\"",
                 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                 tm.tm_sec, ms);
    if (n < 0 || (size_t)n >= cap)
        return -ENOSPC;
    o = (size_t)n;
    if (put_str(out, cap, &o, "request_id", a->request_id, sizeof(a->request_id)) < 0 ||
        put_str(out, cap, &o, "tenant", a->tenant, sizeof(a->tenant)) < 0 ||
        put_str(out, cap, &o, "model", a->model, sizeof(a->model)) < 0)
        return -ENOSPC;
    n = snprintf(out + o, cap - o,
                 ",\"status\":%u,\"finish_reason\":%s,\"prompt_tokens\":%" PRIu32
                 ",\"completion_tokens\":%" PRIu32
                 ",\"queue_ms\":%.3f,\"ttft_ms\":%.3f,\"total_ms\":%.3f}\n",
                 (unsigned)a->status,
                 a->finish == EGR_FIN_STOP     ? "\"stop\""
                 : a->finish == EGR_FIN_LENGTH ? "\"length\""
                                               : "null",
                 a->prompt_tokens, a->completion_tokens, (double)a->queue_ns / 1e6,
                 (double)a->ttft_ns / 1e6, (double)a->total_ns / 1e6);
    if (n < 0 || (size_t)n >= cap - o)
        return -ENOSPC;
    return (int)(o + (size_t)n);
}
