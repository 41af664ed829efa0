/*
 * ing_http.h - incremental, in-place HTTP/1.1 request parser (ingress).
 *
 * What it is
 *   The first parser of untrusted bytes in favo. ingress receives a
 *   request straight into its cell (ARCHITECTURE.md, invariant 4: written
 *   once, never copied); this parser walks those bytes where they lie and
 *   records OFFSETS and lengths into the buffer (struct ing_span), never
 *   pointers (invariant 1: the cell is mapped at different addresses in
 *   different processes). struct ing_http_req holds no pointer at all, so
 *   it may live in shared memory beside the cell. The only bytes the parser
 *   ever writes are a chunked body, which it decodes IN PLACE by moving the
 *   chunk data down over the chunk framing (data never moves up).
 *
 * Use
 *     struct ing_http_req r;
 *     ing_http_init(&r, NULL, 0);              // NULL: default limits
 *     for (;;) {
 *         len += recv(...);                    // bytes appended to buf
 *         rc = ing_http_parse(&r, buf, len);
 *         if (rc == -EAGAIN) {
 *             if (ing_http_want_continue(&r)) send "100 Continue" once;
 *             if (len == cell capacity) answer ing_http_full_status(&r);
 *             continue;
 *         }
 *         if (rc < 0) answer r.status, r.err (ing_http_strerror), close;
 *         handle the request; body at r.body;
 *         if (!r.keep_alive) close after answering;
 *         ing_http_init(&r, lim, r.next);      // pipelined: next starts here
 *     }
 *   The caller may only APPEND bytes between calls (len never shrinks and
 *   bytes below len never change, except by the parser itself).
 *
 * Request lifecycle (r.state; ing_http_parse makes every transition)
 *
 *     LINE --request line--> HEADERS --empty line--+--> DONE (no body)
 *                                                  +--> BODY (Content-Length) --> DONE
 *                                                  +--> CHUNK_SIZE <---------------+
 *                                                         | size > 0               |
 *                                                         v                        |
 *                                                       CHUNK_DATA --> CHUNK_CRLF -+
 *                                                         | size == 0
 *                                                         v
 *                                                       TRAILERS --empty line--> DONE
 *     any state --bad byte / limit--> ERROR (r.status, r.err, r.err_off; close)
 *
 *   r.state >= ING_HTTP_S_BODY means "headers complete": the event loop's
 *   header-read timeout (408) stops there and its body timeout starts.
 *
 * Strictness (decided here, RFC 9112 allows it): every line ends in CRLF.
 * A bare LF, a CR not followed by LF, a NUL or any control byte, a header
 * line starting with SP/HT (obs-fold), whitespace before the colon, a
 * non-tchar in a name, a byte outside VCHAR / obs-text / SP / HT in a value,
 * Content-Length with Transfer-Encoding, differing duplicate Content-Length,
 * a Content-Length that is not plain digits, Transfer-Encoding whose final
 * coding is not "chunked" (or in an HTTP/1.0 request), a chunk size that
 * is not hex or overflows, a missing or duplicate Host in HTTP/1.1: all
 * answer 400 and close. Up to ING_HTTP_MAX_EMPTY_LINES empty lines (CRLF)
 * before the request line are skipped (RFC 9112 2.2, for clients that
 * send a stray CRLF after a body). Every error closes the connection:
 * after a framing error the next request's start is unknown.
 *
 * Errors and their statuses
 *     400 malformed / smuggling shape   413 body > max_body
 *     414 target > max_uri              417 Expect other than 100-continue
 *     431 header bytes > max_header or headers > max_headers
 *     501 unknown method (r.method_span names it) or a transfer coding
 *         other than chunked            505 HTTP version not 1.0 / 1.1
 *   405 is the router's: the parser knows methods, not routes.
 *
 * Invariants (asserted with FAVO_ASSERT, numbered for reference)
 *   H1. Every span lies within [start, len) of the buffer it was parsed from.
 *   H2. start <= pos <= len; pos only grows; for chunked bodies
 *       body.off + body.len (the write cursor) <= pos (data only moves down).
 *   H3. On completion start < next <= len, and bytes at or after next were
 *       never read nor written (they belong to the next request).
 */
#ifndef ING_HTTP_H
#define ING_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A range of the request buffer: bytes [off, off + len). */
struct ing_span {
    uint32_t off;
    uint32_t len;
};

#define ING_HTTP_MAX_HEADERS 64        /* hard cap on stored headers */
#define ING_HTTP_MAX_EMPTY_LINES 4     /* CRLFs skipped before a request line */
#define ING_HTTP_MAX_CHUNK_LINE 1024   /* chunk-size line incl. extensions */

struct ing_http_limits {
    uint32_t max_header;    /* request line + headers (+ trailers), bytes; 431 */
    uint32_t max_body;      /* decoded body bytes; 413 */
    uint32_t max_uri;       /* request-target bytes; 414 */
    uint32_t max_headers;   /* header lines, <= ING_HTTP_MAX_HEADERS; 431 */
};

/* 16 KiB headers, 8 MiB body, 8 KiB URI, 64 headers. */
extern const struct ing_http_limits ing_http_default_limits;

enum ing_http_method {
    ING_HTTP_M_UNKNOWN = 0, ING_HTTP_GET, ING_HTTP_HEAD, ING_HTTP_POST,
    ING_HTTP_PUT, ING_HTTP_DELETE, ING_HTTP_OPTIONS, ING_HTTP_PATCH,
    ING_HTTP_CONNECT, ING_HTTP_TRACE,
};

enum ing_http_state {
    ING_HTTP_S_LINE = 0, ING_HTTP_S_HEADERS, ING_HTTP_S_BODY, ING_HTTP_S_CHUNK_SIZE,
    ING_HTTP_S_CHUNK_DATA, ING_HTTP_S_CHUNK_CRLF, ING_HTTP_S_TRAILERS,
    ING_HTTP_S_DONE, ING_HTTP_S_ERROR,
};

/* Why a request was refused; ing_http_strerror gives the sentence. */
enum ing_http_err {
    ING_HTTP_E_NONE = 0,
    ING_HTTP_E_BARE_LF, ING_HTTP_E_BARE_CR, ING_HTTP_E_CTL,
    ING_HTTP_E_METHOD, ING_HTTP_E_METHOD_UNKNOWN, ING_HTTP_E_TARGET,
    ING_HTTP_E_URI_TOO_LONG, ING_HTTP_E_VERSION, ING_HTTP_E_VERSION_UNSUPPORTED,
    ING_HTTP_E_REQUEST_LINE, ING_HTTP_E_OBS_FOLD, ING_HTTP_E_HEADER_NAME,
    ING_HTTP_E_SPACE_BEFORE_COLON, ING_HTTP_E_NO_COLON, ING_HTTP_E_HEADER_VALUE,
    ING_HTTP_E_HEADERS_TOO_LARGE, ING_HTTP_E_TOO_MANY_HEADERS,
    ING_HTTP_E_CL_INVALID, ING_HTTP_E_CL_DIFFERENT, ING_HTTP_E_CL_AND_TE,
    ING_HTTP_E_TE_NOT_CHUNKED, ING_HTTP_E_TE_UNSUPPORTED, ING_HTTP_E_TE_HTTP10,
    ING_HTTP_E_BODY_TOO_LARGE, ING_HTTP_E_CHUNK_SIZE, ING_HTTP_E_CHUNK_EXT,
    ING_HTTP_E_CHUNK_CRLF, ING_HTTP_E_HOST, ING_HTTP_E_EXPECT,
    ING_HTTP_E_TOO_MANY_EMPTY_LINES,
    ING_HTTP_E_COUNT_
};

struct ing_http_header {
    struct ing_span name;    /* as sent; compare case-insensitively */
    struct ing_span value;   /* leading/trailing SP/HT trimmed */
};

/*
 * One request being parsed. Position-independent: offsets only. Fields
 * marked (out) are meaningful once ing_http_parse returned 0 (complete),
 * and the header fields already once state >= ING_HTTP_S_BODY.
 */
struct ing_http_req {
    struct ing_http_limits lim;
    uint32_t start;          /* first byte of this request */
    uint32_t pos;            /* next unparsed byte (raw stream) */
    uint32_t scan;           /* where the search for the line's LF resumes */
    uint8_t state;           /* enum ing_http_state */
    uint8_t method;          /* (out) enum ing_http_method */
    uint8_t version_minor;   /* (out) 0 or 1 (HTTP/1.x) */
    uint8_t keep_alive;      /* (out) connection persists after this one */
    uint8_t expect_continue; /* (out) Expect: 100-continue was sent */
    uint8_t chunked;         /* (out) body came with Transfer-Encoding: chunked */
    uint8_t has_cl;          /* Content-Length seen */
    uint8_t has_te;          /* Transfer-Encoding seen */
    uint8_t host_count;
    uint8_t empty_lines;
    uint8_t te_codings;      /* transfer codings listed, all TE headers */
    uint8_t te_chunked;      /* how many of them were "chunked" */
    uint8_t te_last_chunked; /* the final coding is "chunked" */
    uint8_t conn_close;      /* Connection: close */
    uint8_t conn_keep_alive; /* Connection: keep-alive */
    uint16_t status;         /* error: HTTP status to answer */
    uint16_t err;            /* error: enum ing_http_err */
    uint32_t err_off;        /* error: offset of the offending byte */
    uint32_t hdr_end;        /* offset just past the header block's CRLFCRLF */
    uint64_t content_length; /* (out) when has_cl */
    uint64_t chunk_left;     /* chunked: data bytes left in the current chunk */
    uint32_t trailer_bytes;
    struct ing_span method_span;  /* (out) the method token as sent */
    struct ing_span target;       /* (out) request-target as sent */
    struct ing_span path;         /* (out) target without the query */
    struct ing_span query;        /* (out) after '?', empty when none */
    struct ing_span body;         /* (out) decoded body (chunked: compacted) */
    uint32_t next;                /* (out) where the next (pipelined) request starts */
    uint32_t nheaders;
    struct ing_http_header hdr[ING_HTTP_MAX_HEADERS];
};

/* Start parsing a request whose first byte is at offset start. lim NULL
 * means ing_http_default_limits; max_headers is capped at
 * ING_HTTP_MAX_HEADERS. */
void ing_http_init(struct ing_http_req *r, const struct ing_http_limits *lim, uint32_t start);

/*
 * Parse what buf[0, len) holds beyond what the previous calls consumed.
 * Returns 0 when the request is complete (r->state == DONE: headers, body,
 * next), -EAGAIN when more bytes are needed, -EPROTO on a refused request
 * (r->status, r->err, r->err_off set; answer and close), -EINVAL on caller
 * misuse (len shrank, len >= 4 GiB). Idempotent once DONE or ERROR.
 */
int ing_http_parse(struct ing_http_req *r, uint8_t *buf, size_t len);

/* Headers complete: the event loop's header-read timeout no longer applies. */
static inline bool ing_http_headers_done(const struct ing_http_req *r)
{
    return r->state >= ING_HTTP_S_BODY && r->state != ING_HTTP_S_ERROR;
}

/* The client waits for "100 Continue" before sending its body. */
static inline bool ing_http_want_continue(const struct ing_http_req *r)
{
    return r->expect_continue && r->state >= ING_HTTP_S_BODY &&
           r->state < ING_HTTP_S_DONE;
}

/* The status to answer when the buffer is full and the parser still needs
 * more: 431 while in the headers, 413 in the body. */
int ing_http_full_status(const struct ing_http_req *r);

/* A short sentence for r->err ("bare LF in header line"). Never NULL. */
const char *ing_http_strerror(int err);
/*
 * The sentence for a refused request's response body, naming the problem
 * and where it is: "invalid character in a header value at byte 57",
 * "method 'BREW' not implemented". Quotes only the method token (tchar by
 * then, at most 32 bytes); never header values. Returns the length
 * written (snprintf semantics, truncated to cap).
 */
int ing_http_error_text(const struct ing_http_req *r, const uint8_t *buf, char *out, size_t cap);
/* "GET", "POST"...; "UNKNOWN" for ING_HTTP_M_UNKNOWN. */
const char *ing_http_method_name(int method);

/*
 * Header lookups, on a request whose headers are complete. Names compare
 * case-insensitively. Return 0 with *out set, -ENOENT when absent,
 * -EINVAL when present but malformed (never a crash).
 */
int ing_http_header_find(const struct ing_http_req *r, const uint8_t *buf, const char *name,
                         struct ing_span *out);
/* Authorization: Bearer <token68>; -EINVAL for another scheme, an empty or
 * malformed token, or more than one Authorization header. */
int ing_http_bearer(const struct ing_http_req *r, const uint8_t *buf, struct ing_span *out);
/* X-Request-Id: 1..128 bytes of [A-Za-z0-9._:-]; it is echoed and logged, so
 * anything else is -EINVAL (the caller generates an id instead). */
int ing_http_request_id(const struct ing_http_req *r, const uint8_t *buf, struct ing_span *out);
#define ING_HTTP_MAX_REQUEST_ID 128
/* Content-Type's media type ("application/json"), parameters and
 * surrounding whitespace cut off. */
int ing_http_content_type(const struct ing_http_req *r, const uint8_t *buf, struct ing_span *out);
/* True when Content-Type's media type is application/json (any case). */
bool ing_http_is_json(const struct ing_http_req *r, const uint8_t *buf);

/* Case-insensitive compare of a span with a NUL-ended ASCII string. */
bool ing_span_eq_nocase(const uint8_t *buf, struct ing_span s, const char *str);

#endif /* ING_HTTP_H */
