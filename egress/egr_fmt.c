/*
 * egr_fmt.c - JSON string escaping, HTTP response heads and chunked
 * framing (see egr.h). No allocation, no state.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "egr.h"
#include "favo_buf.h"

/* Length of the valid UTF-8 sequence at s[0, n), or 0 if invalid
 * (overlong forms, surrogates and > U+10FFFF are invalid). */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t l;
    uint32_t cp;

    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        l = 2, cp = c & 0x1f;
    else if (c >= 0xe0 && c <= 0xef)
        l = 3, cp = c & 0x0f;
    else if (c >= 0xf0 && c <= 0xf4)
        l = 4, cp = c & 0x07;
    else
        return 0;
    if (n < l)
        return 0;
    for (size_t i = 1; i < l; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if ((l == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
        (l == 4 && (cp < 0x10000 || cp > 0x10ffff)))
        return 0;
    return l;
}

int egr_json_str(char *out, size_t cap, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s;
    size_t o = 0, i = 0;

    while (i < len) {
        unsigned c = p[i];
        char esc[8];
        const char *src;
        size_t n, adv;

        if (c >= 0x20 && c != '"' && c != '\\' && c < 0x80) {
            src = (const char *)p + i, n = 1, adv = 1;
        } else if (c >= 0x80) {
            adv = utf8_len(p + i, len - i);
            if (adv) {
                src = (const char *)p + i, n = adv;
            } else {
                src = "\\ufffd", n = 6, adv = 1;
            }
        } else {
            adv = 1, src = esc, n = 2;
            esc[0] = '\\';
            switch (c) {
            case '"': esc[1] = '"'; break;
            case '\\': esc[1] = '\\'; break;
            case '\b': esc[1] = 'b'; break;
            case '\f': esc[1] = 'f'; break;
            case '\n': esc[1] = 'n'; break;
            case '\r': esc[1] = 'r'; break;
            case '\t': esc[1] = 't'; break;
            default:
                memcpy(esc, "\\u00", 4);
                esc[4] = hex[c >> 4];
                esc[5] = hex[c & 15];
                n = 6;
            }
        }
        if (cap - o < n)
            return -ENOSPC;
        memcpy(out + o, src, n);
        o += n;
        i += adv;
    }
    return (int)o;
}

void egr_put_js(struct favo_buf *w, const char *s, size_t len)
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

static const char *reason_phrase(int status)
{
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 413: return "Payload Too Large";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    default: return "Unknown";
    }
}

/* Built by hand, no snprintf: once per response (a fifth of its
 * formatting went to snprintf's format parsing). */
int egr_head(char *out, size_t cap, const struct egr_head *h)
{
    const char *rid = h->request_id && h->request_id[0] ? h->request_id : NULL;
    const char *extra = h->extra ? h->extra : "";
    size_t el = strlen(extra);
    struct favo_buf w = { out, cap, 0, 0 };

    /* a header value: no CR/LF (response splitting) nor other controls */
    for (const char *c = rid; c && *c; c++)
        if (((unsigned char)*c < 0x20 && *c != '\t') || *c == 0x7f)
            return -EINVAL;
    if (el && (el < 2 || memcmp(extra + el - 2, "\r\n", 2) != 0))
        return -EINVAL;
    FAVO_PUTS(&w, "HTTP/1.1 ");
    favo_put_u(&w, h->status, 1);
    FAVO_PUTS(&w, " ");
    favo_put_z(&w, reason_phrase(h->status));
    if (h->stream) {
        FAVO_PUTS(&w, "\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
                      "Cache-Control: no-cache\r\n"
                      "Transfer-Encoding: chunked\r\n");
    } else {
        FAVO_PUTS(&w, "\r\nContent-Type: application/json\r\n"
                      "Cache-Control: no-cache\r\n"
                      "Content-Length: ");
        favo_put_u(&w, h->content_length, 1);
        FAVO_PUTS(&w, "\r\n");
    }
    if (rid) {
        FAVO_PUTS(&w, "X-Request-Id: ");
        favo_put_z(&w, rid);
        FAVO_PUTS(&w, "\r\n");
    }
    if (h->keep_alive)
        FAVO_PUTS(&w, "Connection: keep-alive\r\n");
    else
        FAVO_PUTS(&w, "Connection: close\r\n");
    favo_put(&w, extra, el);
    FAVO_PUTS(&w, "\r\n");
    /* the snprintf form needed room for its NUL: so does this */
    return favo_buf_end(&w);
}

int egr_chunk(char *out, size_t cap, const char *data, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    char hdr[EGR_CHUNK_PAD];
    size_t h = sizeof(hdr) - 2;

    if (len == 0)
        return 0;
    if (len > 0xffffffffu)
        return -ENOSPC;
    /* the size in hex by hand, right to left: once per streamed token,
     * where snprintf was a seventh of the formatting (bench-egress-fmt) */
    hdr[h] = '\r';
    hdr[h + 1] = '\n';
    for (size_t v = len; v; v >>= 4)
        hdr[--h] = hex[v & 15];
    size_t hl = sizeof(hdr) - h;
    if (hl + len + 2 > cap)
        return -ENOSPC;
    memmove(out + hl, data, len);     /* data may overlap out (in place) */
    memcpy(out, hdr + h, hl);
    memcpy(out + hl + len, "\r\n", 2);
    return (int)(hl + len + 2);
}

int egr_chunk_end(char *out, size_t cap)
{
    if (cap < 5)
        return -ENOSPC;
    memcpy(out, "0\r\n\r\n", 5);
    return 5;
}
