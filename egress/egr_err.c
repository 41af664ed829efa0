/*
 * egr_err.c - OpenAI-shaped error responses for the errors the batcher
 * reports after ingress let a request through (egr_stage.h): queue full or
 * queue timeout (503 + Retry-After), too large (413), refused (400), and
 * a response egress could not produce (500). No allocation.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "favo_buf.h"
#include "egr_stage.h"

const char *egr_error_type(unsigned status)
{
    switch (status) {
    case 401: return "authentication_error";
    case 403: return "permission_error";
    case 429: return "requests";
    default: return status >= 500 ? "server_error" : "invalid_request_error";
    }
}

static const char *default_message(unsigned status)
{
    switch (status) {
    case 400: return "The request was refused by the scheduler.";
    case 413: return "The prompt and max_tokens together exceed what the server can hold.";
    case 503: return "The server is overloaded: the request could not be scheduled in time. "
                     "Retry later.";
    default: return status >= 500 ? "The server could not produce the response."
                                  : "The request could not be served.";
    }
}

static const char *default_code(unsigned status)
{
    switch (status) {
    case 413: return "context_length_exceeded";
    case 503: return "server_overloaded";
    default: return NULL;
    }
}

/* s as a JSON string, or null */
static void put_jstr(struct favo_buf *w, const char *s)
{
    if (!s) {
        FAVO_PUTS(w, "null");
        return;
    }
    FAVO_PUTS(w, "\"");
    egr_put_js(w, s, strlen(s));
    FAVO_PUTS(w, "\"");
}

int egr_error_body(char *out, size_t cap, const struct egr_error *e)
{
    struct favo_buf w = { out, cap, 0, 0 };

    favo_put(&w, "{\"error\":{\"message\":", 20);
    put_jstr(&w, e->message ? e->message : default_message(e->status));
    favo_put(&w, ",\"type\":", 8);
    put_jstr(&w, e->type ? e->type : egr_error_type(e->status));
    favo_put(&w, ",\"param\":", 9);
    put_jstr(&w, e->param);
    favo_put(&w, ",\"code\":", 8);
    put_jstr(&w, e->code ? e->code : default_code(e->status));
    favo_put(&w, "}}", 2);
    return w.err ? w.err : (int)w.n;
}

int egr_error_response(char *out, size_t cap, const struct egr_error *e)
{
    char body[1024], extra[512];
    struct egr_head h = { 0 };
    int bn, hn, xn = 0;

    bn = egr_error_body(body, sizeof(body), e);
    if (bn < 0)
        return bn;
    if (e->retry_after)
        xn = snprintf(extra, sizeof(extra), "Retry-After: %u\r\n", (unsigned)e->retry_after);
    if (e->extra)
        xn += snprintf(extra + xn, sizeof(extra) - (size_t)xn, "%s", e->extra);
    if (xn < 0 || (size_t)xn >= sizeof(extra))
        return -ENOSPC;
    extra[xn] = '\0';
    h.status = e->status;
    h.stream = 0;
    h.keep_alive = e->keep_alive;
    h.content_length = (uint64_t)bn;
    h.request_id = e->request_id;
    h.extra = extra;
    hn = egr_head(out, cap, &h);
    if (hn < 0)
        return hn;
    if (cap - (size_t)hn < (size_t)bn)
        return -ENOSPC;
    memcpy(out + hn, body, (size_t)bn);
    return hn + bn;
}
