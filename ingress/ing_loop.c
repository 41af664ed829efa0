/*
 * ing_loop.c - the ingress io_uring loop: listen socket, multishot accept,
 * recv into cells, the per-connection parse/route/answer cycle, timers.
 * The design and the connection lifecycle are at the top of ing_loop.h;
 * what each route answers is in ing_route.c.
 *
 * user_data of every SQE: op (8 bits) | slot (24 bits) | generation (32),
 * so a completion that arrives after its slot was reused is recognised
 * and dropped (loop inv 2).
 */

#include "ing_loop_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include "shm_fdpass.h"
#include "../shm/favo_base.h"

enum { OP_ACCEPT = 1, OP_RECV, OP_SEND, OP_TICK, OP_BELL };

#define TICK_MS 100u

static volatile sig_atomic_t ing_sig_stop;

static void on_stop_signal(int sig)
{
    (void)sig;
    ing_sig_stop = 1;
}

static inline uint64_t ud_make(unsigned op, uint32_t slot, uint32_t gen)
{
    return ((uint64_t)op << 56) | ((uint64_t)(slot & 0xffffffu) << 32) | gen;
}

/* ------------------------------------------------------------ the pool */

int ing_loop_private_pool(struct shm_cell_pool *p, void **mem, unsigned max_conns)
{
    struct shm_cell_cfg cc = { .nclasses = 3, .nreturn = 1, .flags = 0 };
    size_t len;
    void *m;
    int rc;

    cc.classes[0].cell_size = 64u << 10;
    cc.classes[0].ncells = max_conns + 16;
    cc.classes[1].cell_size = 1u << 20;
    cc.classes[1].ncells = 16;
    cc.classes[2].cell_size = 9u << 20;
    cc.classes[2].ncells = 2;
    len = shm_cell_pool_size(&cc);
    if (!len)
        return -EINVAL;
    m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        return -errno;
    (void)madvise(m, len, MADV_DONTDUMP); /* invariant 5: no request bytes in a core */
    rc = shm_cell_pool_init(m, len, &cc, 1);
    if (!rc)
        rc = shm_cell_pool_attach(p, m, len, 1, SHM_CELL_ROLE_ALLOCATOR, -1);
    if (rc) {
        munmap(m, len);
        return rc;
    }
    *mem = m;
    return 0;
}

/* ---------------------------------------------------- response helpers */

static const char *status_text(int s)
{
    switch (s) {
    case 100: return "Continue";
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 417: return "Expectation Failed";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return "Status";
    }
}

static int out_reserve(struct ing_conn *c, size_t more)
{
    size_t need = c->out_len + more, cap = c->out_cap ? c->out_cap : 4096;
    char *p;

    if (need <= c->out_cap)
        return 0;
    while (cap < need)
        cap *= 2;
    p = malloc(cap);
    if (!p)
        return -ENOMEM;
    if (c->out) {
        memcpy(p, c->out, c->out_len);
        if (c->send_inflight && !c->out_old) {
            /* the kernel may still read the old buffer (a SEND that had
             * to wait for socket space): keep it until the SEND completes */
            c->out_old = c->out;
            c->out_old_cap = c->out_cap;
        } else {
            explicit_bzero(c->out, c->out_cap); /* may hold tokens or text */
            free(c->out);
        }
    }
    c->out = p;
    c->out_cap = cap;
    return 0;
}

int ing_conn_respond(struct ing_loop *L, struct ing_conn *c, int status, const char *ctype,
                     const char *extra, const void *body, size_t len)
{
    char hdr[1280];
    int n;

    n = snprintf(hdr, sizeof(hdr), "HTTP/1.1 %d %s\r\n%s%s%sContent-Length: %zu\r\n%s%.*s%s%s%s%s\r\n",
                 status, status_text(status), ctype ? "Content-Type: " : "", ctype ? ctype : "",
                 ctype ? "\r\n" : "", len, L->reqid_len ? "X-Request-Id: " : "",
                 (int)L->reqid_len, L->reqid, L->reqid_len ? "\r\n" : "",
                 c->closing ? "Connection: close\r\n" : "", extra ? extra : "", L->rl_hdr);
    if (n < 0 || (size_t)n >= sizeof(hdr) || out_reserve(c, (size_t)n + len)) {
        c->closing = true;
        return -ENOMEM;
    }
    memcpy(c->out + c->out_len, hdr, (size_t)n);
    if (c->req.method == ING_HTTP_HEAD && c->req.state == ING_HTTP_S_DONE)
        len = 0; /* HEAD: the headers of the GET, no body (Content-Length kept) */
    if (len)
        memcpy(c->out + c->out_len + n, body, len);
    c->out_len += (size_t)n + len;
    favo_debug("ingress: conn %u req %.*s -> %d (%zu bytes)", (unsigned)(c - L->conns),
               (int)L->reqid_len, L->reqid, status, len);
    return 0;
}

int ing_conn_error(struct ing_loop *L, struct ing_conn *c, int status, const char *message,
                   const char *param, const char *code, const char *extra)
{
    char body[1024];
    int n = ing_oai_error_body(body, sizeof(body), status, NULL, message, param, code);

    if (n < 0)
        n = ing_oai_error_body(body, sizeof(body), status, NULL, "error", NULL, NULL);
    if (L->cfg.stats_w) {
        enum shm_stats_counter k = status == 401 ? SHM_C_REJ_UNAUTHORIZED
                                 : status == 404 ? SHM_C_REJ_NOT_FOUND
                                 : status == 413 ? SHM_C_REJ_TOO_LARGE
                                 : status == 429 ? SHM_C_REJ_RATE_LIMIT
                                 : status == 503 ? SHM_C_REJ_QUEUE_FULL
                                                 : SHM_C_REJ_BAD_REQUEST;
        shm_stats_add(L->cfg.stats_w, k, 1);
    }
    return ing_conn_respond(L, c, status, "application/json", extra, body, n < 0 ? 0 : (size_t)n);
}

/* --------------------------------------------------------- body scratch */

int ing_body_add(struct ing_loop *L, const void *p, size_t n)
{
    if (L->scratch_len + n + 1 > L->scratch_cap) {
        size_t cap = L->scratch_cap ? L->scratch_cap : 4096;
        char *q;
        while (cap < L->scratch_len + n + 1)
            cap *= 2;
        q = malloc(cap);
        if (!q)
            return -ENOMEM;
        if (L->scratch) {
            memcpy(q, L->scratch, L->scratch_len);
            explicit_bzero(L->scratch, L->scratch_cap);
            free(L->scratch);
        }
        L->scratch = q;
        L->scratch_cap = cap;
    }
    memcpy(L->scratch + L->scratch_len, p, n);
    L->scratch_len += n;
    L->scratch[L->scratch_len] = 0;
    return 0;
}

int ing_body_printf(struct ing_loop *L, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(tmp))
        return -EINVAL;
    return ing_body_add(L, tmp, (size_t)n);
}

/* JSON string with quotes; invalid UTF-8 becomes U+FFFD so the body is
 * always valid JSON. */
int ing_body_json_str(struct ing_loop *L, const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    int rc = ing_body_add(L, "\"", 1);
    size_t i = 0;

    while (!rc && i < n) {
        unsigned char b = u[i];
        size_t k = 0;
        if (b == '"' || b == '\\') {
            char e[2] = { '\\', (char)b };
            rc = ing_body_add(L, e, 2);
            i++;
            continue;
        }
        if (b < 0x20) {
            rc = b == '\n' ? ing_body_add(L, "\\n", 2)
               : b == '\t' ? ing_body_add(L, "\\t", 2)
               : b == '\r' ? ing_body_add(L, "\\r", 2)
                           : ing_body_printf(L, "\\u%04x", b);
            i++;
            continue;
        }
        if (b < 0x80) {
            rc = ing_body_add(L, &u[i], 1);
            i++;
            continue;
        }
        /* multi-byte: validate the sequence (no overlongs, no surrogates) */
        uint32_t cp = 0;
        if (b >= 0xc2 && b <= 0xdf) { k = 2; cp = b & 0x1f; }
        else if (b >= 0xe0 && b <= 0xef) { k = 3; cp = b & 0x0f; }
        else if (b >= 0xf0 && b <= 0xf4) { k = 4; cp = b & 0x07; }
        if (k && i + k <= n) {
            size_t j;
            for (j = 1; j < k && (u[i + j] & 0xc0) == 0x80; j++)
                cp = (cp << 6) | (u[i + j] & 0x3f);
            if (j == k && !(k == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) &&
                !(k == 4 && (cp < 0x10000 || cp > 0x10ffff))) {
                rc = ing_body_add(L, &u[i], k);
                i += k;
                continue;
            }
        }
        rc = ing_body_add(L, "\xef\xbf\xbd", 3);
        i++;
    }
    return rc ? rc : ing_body_add(L, "\"", 1);
}

void ing_body_reset(struct ing_loop *L)
{
    if (L->scratch)
        explicit_bzero(L->scratch, L->scratch_len + 1);
    L->scratch_len = 0;
}

/* ---------------------------------------------------------- connections */

uint64_t ing_conn_key(const struct ing_loop *L, const struct ing_conn *c)
{
    return (c->tls_user ? SHM_CONN_F_TLS : 0) | ((uint64_t)L->cfg.worker << 48) |
           ((uint64_t)(c - L->conns) << 24) | (c->gen & 0xffffffu);
}

static int conn_cell(struct ing_loop *L, size_t need, shm_cell_ref_t *ref, uint8_t **buf,
                     uint32_t *cap)
{
    void *p;
    size_t sz;
    int rc;

    rc = shm_cell_alloc(L->pool, need, ref);
    if (rc == -EAGAIN && shm_cell_drain(L->pool) > 0)
        rc = shm_cell_alloc(L->pool, need, ref);
    if (rc)
        return rc;
    rc = shm_cell_get(L->pool, *ref, SHM_CELL_INGRESS, &p, &sz);
    FAVO_ASSERT(rc == 0);
    *buf = p;
    *cap = sz > UINT32_MAX ? UINT32_MAX : (uint32_t)sz;
    return 0;
}

int ing_conn_detach(struct ing_loop *L, struct ing_conn *c, shm_cell_ref_t *old, uint8_t **buf,
                    size_t *size)
{
    shm_cell_ref_t nref;
    uint8_t *nbuf;
    uint32_t ncap, rest = c->len - c->req.next;
    int rc;

    FAVO_ASSERT(c->req.next <= c->len); /* http inv H3 */
    rc = conn_cell(L, FAVO_MAX(rest, 1u), &nref, &nbuf, &ncap);
    if (rc)
        return rc;
    memcpy(nbuf, c->buf + c->req.next, rest);
    explicit_bzero(c->buf + c->req.next, rest); /* loop inv 4 */
    *old = c->cell;
    *buf = c->buf;
    *size = c->cap;
    c->len = c->req.next;
    shm_cell_set_len(L->pool, c->cell, SHM_CELL_INGRESS, c->len);
    c->cell = nref;
    c->buf = nbuf;
    c->cap = ncap;
    c->len = rest;
    c->first_ns = rest ? ing_now(L) : 0;
    ing_http_init(&c->req, &L->cfg.lim, 0);
    c->req.next = 0;
    return 0;
}

static struct io_uring_sqe *get_sqe(struct ing_loop *L)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&L->ring);

    if (!sqe) {
        io_uring_submit(&L->ring);
        sqe = io_uring_get_sqe(&L->ring);
    }
    FAVO_ASSERT(sqe != NULL); /* the SQ was just flushed */
    return sqe;
}

static void arm_accept(struct ing_loop *L)
{
    struct io_uring_sqe *sqe;

    if (L->accept_armed || L->draining)
        return;
    sqe = get_sqe(L);
    if (L->multishot)
        io_uring_prep_multishot_accept(sqe, L->lfd, NULL, NULL, SOCK_CLOEXEC);
    else
        io_uring_prep_accept(sqe, L->lfd, NULL, NULL, SOCK_CLOEXEC);
    io_uring_sqe_set_data64(sqe, ud_make(OP_ACCEPT, 0, 0));
    L->accept_armed = true;
}

static void arm_tick(struct ing_loop *L)
{
    static struct __kernel_timespec ts = { .tv_sec = 0, .tv_nsec = TICK_MS * 1000000ll };
    struct io_uring_sqe *sqe = get_sqe(L);

    io_uring_prep_timeout(sqe, &ts, 0, 0);
    io_uring_sqe_set_data64(sqe, ud_make(OP_TICK, 0, 0));
}

/* The client left while egress was answering: stop its generation
 * (egress notices too, on its next write; cancels are idempotent). */
static void conn_cancel(struct ing_loop *L, struct ing_conn *c)
{
    struct shm_req m;

    if (!L->cfg.pipe || !c->parked || c->cancel_sent)
        return;
    memset(&m, 0, sizeof(m));
    m.magic = SHM_REQ_MAGIC;
    m.kind = SHM_REQ_CANCEL;
    m.worker = (uint8_t)L->cfg.worker;
    m.conn = ing_conn_key(L, c);
    m.cell = c->parked_cell;
    if (shm_ring_enqueue(&L->req_ring, &m) == 0) {
        ing_bat_bell(L);
        c->cancel_sent = true;
    }
}

static void chunk_finish(struct ing_loop *L, struct ing_conn *c, int32_t res);

static void conn_free(struct ing_loop *L, struct ing_conn *c)
{
    if (c->tls) {
        if (c->chunk_busy)
            chunk_finish(L, c, -EPIPE); /* egress waits for an answer to its chunk */
        ing_tls_conn_free(c->tls);
        c->tls = NULL;
    }
    if (c->fd_sent) {
        /* egress holds a copy of the socket: shutdown() ends the
         * connection for both, close() alone would not */
        conn_cancel(L, c);
        shutdown(c->fd, SHUT_RDWR);
    }
    close(c->fd);
    c->fd = -1;
    if (c->cell != SHM_CELL_REF_NONE)
        shm_cell_free(L->pool, c->cell, SHM_CELL_INGRESS); /* scrubs (cell inv 2) */
    c->cell = SHM_CELL_REF_NONE;
    c->buf = NULL;
    if (c->out) {
        explicit_bzero(c->out, c->out_cap);
        free(c->out);
    }
    c->out = NULL;
    c->out_len = c->out_cap = c->out_sent = 0;
    if (c->out_old) {
        explicit_bzero(c->out_old, c->out_old_cap);
        free(c->out_old);
        c->out_old = NULL;
    }
    L->nconns--;
}

/* ------------------------------------------------------------------ TLS */

/* One TLS record and change: what one recv takes (ing_tls.h "RECV"). */
#define TLS_IN_BYTES (16u * 1024u + 512u)

/* Answer egress's chunk (shm_tls_out) on tls_ack; when the ring is full
 * the answer waits in the slot (chunk_ack_due) and the loop retries. */
static void chunk_finish(struct ing_loop *L, struct ing_conn *c, int32_t res)
{
    struct shm_tls_ack *a;

    c->chunk_busy = false;
    c->chunk_res = res;
    a = shm_ring_reserve(&L->tls_ack_ring);
    if (!a) {
        c->chunk_ack_due = true;
        L->ack_retry = true;
        return;
    }
    memset(a, 0, sizeof(*a));
    a->conn = c->chunk_conn;
    a->cell = c->chunk_cell;
    a->seq = c->chunk_seq;
    a->res = res;
    shm_ring_commit(&L->tls_ack_ring);
    c->chunk_ack_due = false;
    L->ring_egr = true;
}

static void chunk_retry(struct ing_loop *L)
{
    if (!L->ack_retry)
        return;
    L->ack_retry = false;
    for (unsigned i = 0; i < L->max_conns; i++)
        if (L->conns[i].chunk_ack_due)
            chunk_finish(L, &L->conns[i], L->conns[i].chunk_res); /* full again: stays due */
}

/* A TLS connection's output: ingress's own answers (c->out) go through
 * ing_tls_conn_write into the TLS queue, which holds handshake records,
 * alerts, egress's chunks and close_notify; one SEND of the queue's
 * oldest region at a time (loop inv 1, tls inv 1). */
static void tls_kick_send(struct ing_loop *L, struct ing_conn *c)
{
    uint32_t slot = (uint32_t)(c - L->conns);
    const uint8_t *p;
    size_t n;

    if (c->out_len > c->out_sent) {
        ssize_t w = c->tls_dead ? -EPIPE
                                : ing_tls_conn_write(c->tls, c->out + c->out_sent,
                                                     c->out_len - c->out_sent);
        if (w > 0)
            c->out_sent += (size_t)w;
        else if (w != -EAGAIN || c->closing)
            c->out_sent = c->out_len; /* no session to answer on (or no handshake) */
        if (c->out_sent == c->out_len) {
            explicit_bzero(c->out, c->out_len);
            c->out_len = c->out_sent = 0;
        }
    }
    if (c->closing && !c->tls_shut && !c->tls_dead && !c->chunk_busy && !c->out_len) {
        c->tls_shut = true;
        (void)ing_tls_conn_shutdown(c->tls); /* close_notify after the last answer */
    }
    if (c->send_inflight)
        return;
    if (!c->tls_dead && ing_tls_conn_pending(c->tls, &p, &n)) {
        struct io_uring_sqe *sqe = get_sqe(L);
        io_uring_prep_send(sqe, c->fd, p, n, MSG_NOSIGNAL);
        io_uring_sqe_set_data64(sqe, ud_make(OP_SEND, slot, c->gen));
        c->send_inflight = 1;
    } else if (c->chunk_busy) {
        chunk_finish(L, c, c->tls_dead ? -EPIPE : (int32_t)c->chunk_len); /* all of it left */
    }
}

/* Submit what the connection needs next, or free it when it is done. */
static void conn_kick(struct ing_loop *L, struct ing_conn *c)
{
    uint32_t slot = (uint32_t)(c - L->conns);

    if (c->tls)
        tls_kick_send(L, c);
    else if (c->out_len > c->out_sent && !c->send_inflight) {
        struct io_uring_sqe *sqe = get_sqe(L);
        io_uring_prep_send(sqe, c->fd, c->out + c->out_sent, c->out_len - c->out_sent,
                           MSG_NOSIGNAL);
        io_uring_sqe_set_data64(sqe, ud_make(OP_SEND, slot, c->gen));
        c->send_inflight = 1;
    }
    if (c->closing) {
        if (c->send_inflight)
            return;
        if (c->recv_inflight) {
            if (!c->shut) {
                shutdown(c->fd, SHUT_RDWR); /* completes the pending recv */
                c->shut = true;
            }
            return;
        }
        conn_free(L, c);
        return;
    }
    if (c->tls) {
        /* ciphertext goes to the staging buffer once all before it is fed */
        if (!c->recv_inflight && !c->tls_eof && c->tls_in_off == c->tls_in_len) {
            struct io_uring_sqe *sqe = get_sqe(L);
            c->tls_in_off = c->tls_in_len = 0;
            io_uring_prep_recv(sqe, c->fd, c->tls_in, TLS_IN_BYTES, 0);
            io_uring_sqe_set_data64(sqe, ud_make(OP_RECV, slot, c->gen));
            c->recv_inflight = 1;
        }
        return;
    }
    if (!c->recv_inflight && c->len < c->cap) {
        struct io_uring_sqe *sqe = get_sqe(L);
        io_uring_prep_recv(sqe, c->fd, c->buf + c->len, c->cap - c->len, 0);
        /* Armed right after a request is parked, before its client has its
         * answer: the next request is almost never there yet, so go
         * straight to waiting (data already there completes at once). */
        sqe->ioprio |= IORING_RECVSEND_POLL_FIRST;
        io_uring_sqe_set_data64(sqe, ud_make(OP_RECV, slot, c->gen));
        c->recv_inflight = 1;
    }
}

static void conn_open(struct ing_loop *L, int fd)
{
    struct ing_conn *c = NULL;
    int one = 1;

    if (L->nconns < L->max_conns)
        for (unsigned i = 0; i < L->max_conns; i++)
            if (L->conns[i].fd < 0 && !L->conns[i].recv_inflight && !L->conns[i].send_inflight &&
                !L->conns[i].chunk_ack_due) {
                c = &L->conns[i];
                break;
            }
    if (!c) {
        /* Beyond max_conns (invariant 7): a short answer written directly
         * (a fresh socket's buffer always holds it), then close. */
        char body[256], msg[512];
        int n = ing_oai_error_body(body, sizeof(body), 503, NULL,
                                   "too many connections; retry later", NULL, NULL);
        int m = snprintf(msg, sizeof(msg),
                         "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                         "Content-Length: %d\r\nRetry-After: 1\r\nConnection: close\r\n\r\n%s",
                         n, body);
        if (!L->tls_ctx && write(fd, msg, (size_t)m) < 0) /* TLS: no session to say it in */
            favo_debug("ingress: 503 to an extra connection: %s", strerror(errno));
        close(fd);
        if (L->cfg.stats_w)
            shm_stats_add(L->cfg.stats_w, SHM_C_REJ_QUEUE_FULL, 1);
        return;
    }
    memset(c, 0, offsetof(struct ing_conn, req));
    c->fd = fd;
    /* loop inv 2 and the conn key: a new value on every open. "| 1" gave
     * two consecutive opens the same gen (2k and 2k+1 both became 2k+1),
     * so a slot reused at once kept its key: egress answered the new
     * connection on the old, closed socket (499), and a stale completion
     * of the old connection passed the gen check. Never 0 in the key's
     * 24 bits (key 0 names no connection). */
    do
        c->gen = (uint32_t)++L->reqid_seq;
    while (!(c->gen & 0xffffffu));
    c->tls = NULL;
    c->tls_in_off = c->tls_in_len = 0;
    c->tls_open = c->tls_user = c->tls_eof = c->tls_shut = c->tls_dead = false;
    c->chunk_busy = c->chunk_ack_due = false;
    c->chunk_cell = SHM_CELL_REF_NONE;
    c->chunk_seq = c->chunk_len = 0;
    if (L->tls_ctx && ((!c->tls_in && !(c->tls_in = malloc(TLS_IN_BYTES))) ||
                       ing_tls_conn_new(L->tls_ctx, fd, &c->tls) < 0)) {
        favo_warn("ingress: TLS state for a new connection: out of memory");
        close(fd);
        c->fd = -1;
        return;
    }
    if (conn_cell(L, 1, &c->cell, &c->buf, &c->cap)) {
        static const char busy[] = "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                                   "Retry-After: 1\r\nConnection: close\r\n\r\n";
        if (!c->tls && write(fd, busy, sizeof(busy) - 1) < 0)
            favo_debug("ingress: 503 (no cell): %s", strerror(errno));
        if (c->tls)
            ing_tls_conn_free(c->tls);
        c->tls = NULL;
        close(fd);
        c->fd = -1;
        return;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->out = NULL;
    c->out_len = c->out_cap = c->out_sent = 0;
    c->last_ns = ing_now(L);
    ing_http_init(&c->req, &L->cfg.lim, 0);
    L->nconns++;
    conn_kick(L, c);
}

/* A cell of a larger class for a request that outgrew its cell; the bytes
 * move once (offsets in c->req stay valid). */
static int conn_grow(struct ing_loop *L, struct ing_conn *c, size_t need)
{
    shm_cell_ref_t nref;
    uint8_t *nbuf;
    uint32_t ncap;

    if (need <= c->cap)
        return 0;
    if (conn_cell(L, need, &nref, &nbuf, &ncap) || ncap < need)
        return -EMSGSIZE;
    memcpy(nbuf, c->buf, c->len);
    shm_cell_free(L->pool, c->cell, SHM_CELL_INGRESS);
    c->cell = nref;
    c->buf = nbuf;
    c->cap = ncap;
    return 0;
}

static void set_reqid_none(struct ing_loop *L)
{
    L->reqid_len = 0;
    L->reqid[0] = 0;
    L->rl_hdr[0] = 0;
    L->rl_n = 0;
}

/* Parse and answer every complete request in the buffer, in order. */
static void conn_process(struct ing_loop *L, struct ing_conn *c)
{
    while (!c->closing && !c->parked) {
        int rc = ing_http_parse(&c->req, c->buf, c->len);

        if (rc == -EAGAIN) {
            if (c->len > c->req.start && !c->first_ns)
                c->first_ns = ing_now(L);
            if (ing_http_want_continue(&c->req) && !c->cont_sent) {
                static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
                if (!out_reserve(c, sizeof(cont) - 1)) {
                    memcpy(c->out + c->out_len, cont, sizeof(cont) - 1);
                    c->out_len += sizeof(cont) - 1;
                }
                c->cont_sent = true;
            }
            if (ing_http_headers_done(&c->req) && c->req.has_cl &&
                c->req.hdr_end + c->req.content_length > c->cap &&
                c->req.content_length <= c->req.lim.max_body)
                (void)conn_grow(L, c, c->req.hdr_end + c->req.content_length);
            if (c->len == c->cap && conn_grow(L, c, (size_t)c->cap + 1)) {
                int st = ing_http_full_status(&c->req);
                set_reqid_none(L);
                c->closing = true;
                ing_conn_error(L, c, st,
                               st == 431 ? "the request headers are too large"
                                         : "the request body is too large",
                               NULL, NULL, NULL);
            }
            break;
        }
        if (rc < 0) {
            char msg[200];
            int st = c->req.status ? c->req.status : 400;
            ing_http_error_text(&c->req, c->buf, msg, sizeof(msg));
            set_reqid_none(L);
            c->closing = true;
            favo_info("ingress: refused request on conn %u: status %d (%s)",
                      (unsigned)(c - L->conns), st, ing_http_strerror(c->req.err));
            ing_conn_error(L, c, st, msg, NULL, NULL, NULL);
            break;
        }
        c->nreq++;
        L->key = NULL;
        L->rl_n = 0;
        L->rl_hdr[0] = 0;
        if (!c->req.keep_alive || L->draining)
            c->closing = true;
        ing_route(L, c);
        if (c->closing || c->parked)
            break;
        /* Next pipelined request: move its bytes down to the start and
         * scrub what the answered one left (invariant 5). */
        uint32_t next = c->req.next, rest = c->len - next;
        memmove(c->buf, c->buf + next, rest);
        explicit_bzero(c->buf + rest, next);
        c->len = rest;
        c->cont_sent = false;
        c->first_ns = rest ? ing_now(L) : 0;
        ing_http_init(&c->req, &L->cfg.lim, 0);
    }
}

/* The handshake just finished: how this connection's answers leave. */
static void tls_opened(struct ing_loop *L, struct ing_conn *c)
{
    struct ing_tls_info ti;

    c->tls_open = true;
    c->tls_user = !ing_tls_conn_ktls_tx(c->tls);
    /* userspace path: the socket never goes to egress (it could not
     * encrypt); egress hands its bytes back on tls_out. With kernel TLS
     * transmit, egress gets the socket and writes plaintext. */
    if (c->tls_user)
        c->fd_sent = true;
    if (ing_tls_conn_info(c->tls, &ti) == 0)
        favo_debug("ingress: conn %u: %s %s alpn '%s', kernel TLS transmit %s",
                   (unsigned)(c - L->conns), ti.version, ti.cipher, ti.alpn, ti.ktls_note);
}

/* The client's side ended (EOF, reset, close_notify, TLS failure). */
static void conn_eof(struct ing_loop *L, struct ing_conn *c, bool error)
{
    if (c->parked)
        conn_cancel(L, c);
    c->closing = true;
    /* EOF may be a half-close after the last request: its answers still
     * go out. An error means nobody reads them. */
    if (error && !c->send_inflight)
        c->out_sent = c->out_len;
}

/* Feed the staged ciphertext, decrypt into the cell at its fill offset
 * (invariant 4: the request's plaintext is written once, there), parse
 * and route what is complete; again while that made room. */
static void tls_input(struct ing_loop *L, struct ing_conn *c)
{
    for (unsigned round = 0; round < 64 && !c->closing; round++) {
        ssize_t n = -EAGAIN;
        bool got = false;

        for (;;) {
            size_t fed = 0;
            if (c->tls_in_off < c->tls_in_len) {
                fed = ing_tls_conn_feed(c->tls, c->tls_in + c->tls_in_off,
                                        c->tls_in_len - c->tls_in_off);
                c->tls_in_off += (uint32_t)fed;
            }
            if (c->len >= c->cap) {
                n = -EAGAIN; /* the cell is full: parse (and grow) first */
                break;
            }
            n = ing_tls_conn_read(c->tls, c->buf + c->len, c->cap - c->len);
            if (n > 0) {
                c->len += (uint32_t)n;
                got = true;
                continue;
            }
            if (n == -EAGAIN && fed && c->tls_in_off < c->tls_in_len)
                continue;
            break;
        }
        if (!c->tls_open && ing_tls_conn_state(c->tls) != ING_TLS_HANDSHAKE &&
            ing_tls_conn_state(c->tls) != ING_TLS_FAILED)
            tls_opened(L, c);
        if (got) {
            c->last_ns = ing_now(L);
            if (!c->parked)
                conn_process(L, c);
        }
        if (n == 0) {
            conn_eof(L, c, false); /* close_notify: no more requests */
        } else if (n < 0 && n != -EAGAIN) {
            int alert = ing_tls_conn_alert_sent(c->tls);
            if (n == -ECONNRESET)
                favo_debug("ingress: conn %u: TCP closed without close_notify",
                           (unsigned)(c - L->conns));
            else
                favo_info("ingress: conn %u: TLS failed: %s (alert %d)", (unsigned)(c - L->conns),
                          ing_tls_conn_error(c->tls), alert);
            conn_eof(L, c, true); /* a queued alert still goes out */
        }
        if (!got || c->parked || c->closing || c->len >= c->cap)
            break;
    }
}

static void on_recv(struct ing_loop *L, struct ing_conn *c, int res)
{
    c->recv_inflight = 0;
    if (c->tls) {
        if (res <= 0) {
            c->tls_eof = true;
            ing_tls_conn_feed_eof(c->tls);
            if (res < 0 || c->closing) {
                conn_eof(L, c, res < 0);
                conn_kick(L, c);
                return;
            }
        } else {
            c->tls_in_off = 0;
            c->tls_in_len = (uint32_t)res;
            c->last_ns = ing_now(L);
            if (!c->tls_open && !c->first_ns)
                c->first_ns = c->last_ns; /* the header timeout covers the handshake */
        }
        tls_input(L, c); /* EOF: read says close_notify (0) or truncation */
        if (res == 0 && !c->closing)
            conn_eof(L, c, false);
        conn_kick(L, c);
        return;
    }
    if (c->recv_cancel) {
        c->recv_cancel = false;
        if (res == -ECANCELED) { /* taken back after an unpark: parse what is here */
            conn_process(L, c);
            conn_kick(L, c);
            return;
        }
    }
    if (res <= 0 && c->parked)
        conn_cancel(L, c);
    if (res <= 0 || c->closing) {
        /* EOF, reset, or the shutdown() of a closing connection. */
        c->closing = true;
        /* EOF may be a half-close after the last request: its answers
         * still go out. An error means nobody reads them. */
        if (res < 0 && !c->send_inflight)
            c->out_sent = c->out_len;
        conn_kick(L, c);
        return;
    }
    c->len += (uint32_t)res;
    c->last_ns = ing_now(L);
    conn_process(L, c);
    conn_kick(L, c);
}

static void out_old_free(struct ing_conn *c)
{
    if (c->out_old) {
        explicit_bzero(c->out_old, c->out_old_cap);
        free(c->out_old);
        c->out_old = NULL;
    }
}

static void on_send(struct ing_loop *L, struct ing_conn *c, int res)
{
    c->send_inflight = 0;
    out_old_free(c);
    if (c->tls) {
        if (res <= 0) {
            ing_tls_conn_sent(c->tls, 0);
            c->tls_dead = true;
            c->closing = true;
            c->out_sent = c->out_len;
        } else {
            ing_tls_conn_sent(c->tls, (size_t)res);
            c->last_ns = ing_now(L);
        }
        conn_kick(L, c);
        return;
    }
    if (res <= 0) {
        c->closing = true;
        c->out_sent = c->out_len;
    } else {
        c->out_sent += (size_t)res;
        c->out_total += (uint64_t)res; /* shm_req.conn_out (ing_route.c) */
        if (c->out_sent == c->out_len) {
            explicit_bzero(c->out, c->out_len);
            c->out_len = c->out_sent = 0;
            c->last_ns = ing_now(L);
        }
    }
    conn_kick(L, c);
}

static void on_tick(struct ing_loop *L)
{
    uint64_t now = favo_now_ns();

    L->now = now;
    L->wall_off = (int64_t)(favo_wall_ns() - now);
    uint64_t hdr = (uint64_t)L->cfg.header_timeout_ms * 1000000ull;
    uint64_t idle = (uint64_t)L->cfg.idle_timeout_ms * 1000000ull;

    for (unsigned i = 0; i < L->max_conns; i++) {
        struct ing_conn *c = &L->conns[i];
        if (c->fd < 0 || c->closing || c->parked)
            continue;
        if (c->out_len > c->out_sent)
            continue; /* still answering */
        bool started = c->len > c->req.start || c->first_ns;
        if (!ing_http_headers_done(&c->req) && (started || c->nreq == 0)) {
            uint64_t since = started && c->first_ns ? c->first_ns : c->last_ns;
            if (now - since > hdr) {
                set_reqid_none(L);
                c->closing = true;
                ing_conn_error(L, c, 408, "the request headers were not received in time",
                               NULL, NULL, NULL);
                conn_kick(L, c);
            }
        } else if (now - c->last_ns > (ing_http_headers_done(&c->req) ? hdr : idle)) {
            /* idle keep-alive, or a body that stopped arriving */
            if (ing_http_headers_done(&c->req)) {
                set_reqid_none(L);
                ing_conn_error(L, c, 408, "the request body was not received in time", NULL,
                               NULL, NULL);
            } else {
                c->out_sent = c->out_len;
            }
            c->closing = true;
            conn_kick(L, c);
        }
    }
    if (L->cfg.stats_w)
        shm_stats_writer_heartbeat(L->cfg.stats_w); /* favo stat's heartbeat age */
    if (L->cfg.stats && L->cfg.stats_w)
        shm_stats_flush(L->cfg.stats_w);
    if (L->cfg.rl && L->cfg.worker == 0)
        ing_rl_tick(L->cfg.rl, now); /* refill: the tick owner only */
    arm_tick(L);
}

static void on_accept(struct ing_loop *L, struct io_uring_cqe *cqe)
{
    if (!(cqe->flags & IORING_CQE_F_MORE))
        L->accept_armed = false;
    if (cqe->res >= 0) {
        conn_open(L, cqe->res);
    } else if (cqe->res == -EINVAL && L->multishot) {
        favo_warn("ingress: multishot accept refused by the kernel; using single accept");
        L->multishot = false;
    } else if (cqe->res != -EINTR && cqe->res != -ECONNABORTED && cqe->res != -EAGAIN &&
               cqe->res != -ECANCELED) {
        favo_warn("ingress: accept: %s", strerror(-cqe->res));
    }
    arm_accept(L);
}

/* ----------------------------------------------------------------- drain */

static void drain_begin(struct ing_loop *L, uint64_t *end)
{
    struct io_uring_sqe *sqe;

    L->draining = true;
    *end = favo_now_ns() + (uint64_t)(L->cfg.drain_ms ? L->cfg.drain_ms : 30000) * 1000000ull;
    favo_info("ingress: worker %u draining (%u connections open)", L->cfg.worker, L->nconns);
    if (L->accept_armed) {
        sqe = get_sqe(L);
        io_uring_prep_cancel64(sqe, ud_make(OP_ACCEPT, 0, 0), 0);
        io_uring_sqe_set_data64(sqe, 0);
    }
    close(L->lfd); /* the supervisor's copy keeps the port (invariant 6) */
    L->lfd = -1;
    for (unsigned i = 0; i < L->max_conns; i++) {
        struct ing_conn *c = &L->conns[i];
        if (c->fd < 0 || c->closing)
            continue;
        /* idle (between requests): close now; a request egress is
         * answering finishes first (its KEEP message closes it) */
        if (!c->parked && c->len == 0 && c->out_len == c->out_sent) {
            c->closing = true;
            conn_kick(L, c);
        }
    }
}

/* Connections that still have a request to read or an answer to send. */
static unsigned drain_busy(struct ing_loop *L)
{
    unsigned n = 0;

    for (unsigned i = 0; i < L->max_conns; i++) {
        struct ing_conn *c = &L->conns[i];
        if (c->fd < 0)
            continue;
        if (!c->closing && !c->parked && c->len == 0 && c->out_len == c->out_sent) {
            c->closing = true; /* became idle while draining */
            conn_kick(L, c);
        }
        n++;
    }
    return n;
}

/* ----------------------------------------------------------------- setup */

/* ------------------------------------------------------------ pipeline */

static int pipe_attach(struct ing_loop *L)
{
    const struct shm_pipe *p = L->cfg.pipe;
    size_t len;
    void *cells = shm_pipe_cells(p, &len);
    int rc;

    if ((rc = shm_cell_pool_attach(&L->pipe_pool, cells, len, p->hdr->generation,
                                   SHM_CELL_ROLE_ALLOCATOR, -1)) ||
        (rc = shm_pipe_ring_req(p, L->cfg.worker, SHM_RING_PRODUCER, &L->req_ring)) ||
        (rc = shm_pipe_ring_conn(p, L->cfg.worker, SHM_RING_CONSUMER, &L->conn_ring)) ||
        (rc = shm_pipe_bell_bat(p, &L->bat_bell)) ||
        (rc = shm_pipe_bell_ing(p, L->cfg.worker, L->cfg.bell_efd, true, &L->bell)) ||
        (L->tls_ctx &&
         ((rc = shm_pipe_ring_tls_out(p, L->cfg.worker, SHM_RING_CONSUMER, &L->tls_out_ring)) ||
          (rc = shm_pipe_ring_tls_ack(p, L->cfg.worker, SHM_RING_PRODUCER, &L->tls_ack_ring))))) {
        favo_err("ingress: attaching the pipeline: %s", strerror(-rc));
        return rc;
    }
    if (L->tls_ctx && L->cfg.egr_bell_efd > 0 &&
        shm_pipe_bell_egr(p, L->cfg.egr_bell_efd, false, &L->egr_bell) == 0)
        L->egr_bell_ok = true;
    L->pool = &L->pipe_pool;
    return 0;
}

static void bell_arm(struct ing_loop *L)
{
    struct io_uring_sqe *sqe;

    if (L->bell_armed)
        return;
    sqe = get_sqe(L);
    io_uring_prep_read(sqe, L->cfg.bell_efd, &L->bell_buf, sizeof(L->bell_buf), 0);
    io_uring_sqe_set_data64(sqe, ud_make(OP_BELL, 0, 0));
    L->bell_armed = true;
}

/* A new egress process holds none of the sockets the old one was given:
 * send every handed-over connection again (the answers in flight are
 * resumed by the new egress from their cells), and the others on their
 * next request. The fdpass socket pair itself is the supervisor's and
 * outlives egress, so nothing queued in it is lost. */
static void egress_check(struct ing_loop *L)
{
    int32_t pid = (int32_t)ck_pr_load_32(
        (const uint32_t *)&L->cfg.pipe->hdr->up_pid[SHM_PIPE_EGRESS][0]);

    if (pid == L->egress_pid || pid == 0)
        return;
    if (L->egress_pid != 0) {
        unsigned again = 0;
        favo_warn("ingress: egress restarted (pid %d): handing its connections over again",
                  (int)pid);
        for (unsigned i = 0; i < L->max_conns; i++) {
            struct ing_conn *c = &L->conns[i];
            if (c->fd < 0 || !c->fd_sent || c->tls_user)
                continue; /* a userspace-TLS socket was never egress's */
            c->fd_sent = false;
            if (!c->parked || c->closing)
                continue;
            uint64_t key = ing_conn_key(L, c);
            if (shm_fdpass_send(L->cfg.egress_sock, c->fd, &key, sizeof(key)) == 0) {
                c->fd_sent = true;
                again++;
            }
        }
        favo_info("ingress: %u connections handed to the new egress", again);
    }
    L->egress_pid = pid;
}

/* SIGHUP: read the keys file again (see ing_cfg.reload). */
static void keys_reload(struct ing_loop *L)
{
    struct ing_keys *nk = malloc(sizeof(*nk));
    uint64_t now = favo_now_ns();
    void *mem = MAP_FAILED;
    size_t len = 0;
    int rc = -ENOMEM;

    if (!nk)
        goto fail;
    ing_keys_init(nk);
    if ((rc = ing_keys_load(nk, L->cfg.keys_path)) != 0) {
        favo_err("ingress: reload: %s; keeping the %u keys in use", nk->err[0] ? nk->err :
                 strerror(-rc), L->cfg.keys ? L->cfg.keys->nkeys : 0);
        ing_keys_free(nk);
        free(nk);
        return;
    }
    len = ing_rl_size(ing_keys_nbuckets(nk), 1);
    mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED || ing_rl_init(mem, len, ing_keys_nbuckets(nk), 1, now) ||
        ing_rl_attach(&L->own_rl, mem, len, 0))
        goto fail;
    for (uint32_t b = 0; b < ing_keys_nbuckets(nk); b++) {
        uint32_t rpm, tpm;
        if (ing_keys_bucket_limits(nk, b, &rpm, &tpm) == 0)
            ing_rl_set_limits(&L->own_rl, b, rpm, tpm, now);
    }
    if (L->own_keys) {
        ing_keys_free(L->own_keys);
        free(L->own_keys);
    }
    if (L->own_rl_mem)
        munmap(L->own_rl_mem, L->own_rl_len);
    L->own_keys = nk;
    L->own_rl_mem = mem;
    L->own_rl_len = len;
    L->cfg.keys = nk;
    L->cfg.rl = &L->own_rl;
    favo_info("ingress: reloaded %s: %u keys", L->cfg.keys_path, nk->nkeys);
    return;
fail:
    favo_err("ingress: reload of %s: %s", L->cfg.keys_path, strerror(rc < 0 ? -rc : ENOMEM));
    if (mem != MAP_FAILED)
        munmap(mem, len);
    if (nk) {
        ing_keys_free(nk);
        free(nk);
    }
}

/* egress finished a response on one of our connections. */
static void conn_msgs(struct ing_loop *L)
{
    const struct shm_conn_msg *m;

    while ((m = shm_ring_peek_one(&L->conn_ring)) != NULL) {
        uint32_t slot = (uint32_t)(m->conn >> 24) & 0xffffffu;
        uint32_t gen = (uint32_t)m->conn & 0xffffffu;
        struct ing_conn *c = slot < L->max_conns ? &L->conns[slot] : NULL;

        if (m->what == SHM_CONN_ABORT) {
            /* egress gave up on a TLS connection (write timeout): close
             * it now; the chunk in flight is answered -EPIPE */
            if (c && c->fd >= 0 && (c->gen & 0xffffffu) == gen && c->tls) {
                c->closing = true;
                c->tls_dead = true;
                c->out_sent = c->out_len;
                if (!c->shut) {
                    shutdown(c->fd, SHUT_RDWR); /* ends the SEND and recv in flight */
                    c->shut = true;
                }
                conn_kick(L, c);
            }
            shm_ring_release(&L->conn_ring, 1);
            continue;
        }
        /* a message for a connection that is gone, or replayed after a
         * restart, finds no parked connection: ignored (invariant 3) */
        if (c && c->fd >= 0 && (c->gen & 0xffffffu) == gen && c->parked) {
            c->parked = false;
            c->parked_cell = SHM_CELL_REF_NONE;
            c->last_ns = ing_now(L);
            if (m->what != SHM_CONN_KEEP || L->draining) {
                c->closing = true;
                c->out_sent = c->out_len;
            } else if (c->tls) {
                /* the recv goes to the staging buffer, never the cell: the
                 * next request may be decrypted already, or still staged */
                c->first_ns = c->len ? c->last_ns : 0;
                conn_process(L, c);
                tls_input(L, c);
            } else if (c->recv_inflight && c->len == 0) {
                /* Nothing of a next request is here (the common case:
                 * a client that waits for each answer): the armed recv
                 * stays, and on_recv parses what it brings. No cancel,
                 * no re-arm: two io_uring operations less per request. */
                c->first_ns = 0;
            } else if (c->recv_inflight) {
                /* The armed recv writes into the current cell, which the
                 * next request's detach would hand on: take it back first;
                 * on_recv parses once it returns (data or -ECANCELED). */
                struct io_uring_sqe *sqe = get_sqe(L);
                io_uring_prep_cancel64(sqe, ud_make(OP_RECV, slot, c->gen), 0);
                io_uring_sqe_set_data64(sqe, 0);
                c->recv_cancel = true;
                c->first_ns = c->len ? c->last_ns : 0;
            } else {
                /* the next pipelined request may already be here */
                c->first_ns = c->len ? c->last_ns : 0;
                conn_process(L, c);
            }
            conn_kick(L, c);
        }
        shm_ring_release(&L->conn_ring, 1);
    }
}

/* egress's TLS chunks (shm_pipe.h "TLS"): encrypt each into its
 * connection's TLS queue (the bytes leave the cell here, at once), send,
 * and answer every message exactly once on tls_ack. */
static void tls_msgs(struct ing_loop *L)
{
    const struct shm_tls_out *p;

    while ((p = shm_ring_peek_one(&L->tls_out_ring)) != NULL) {
        struct shm_tls_out m = *p;
        uint32_t slot = (uint32_t)(m.conn >> 24) & 0xffffffu;
        uint32_t gen = (uint32_t)m.conn & 0xffffffu;
        struct ing_conn *c = slot < L->max_conns ? &L->conns[slot] : NULL;
        int32_t res = -EPIPE;
        bool same;

        if (shm_ring_count(&L->tls_ack_ring) >= L->tls_ack_ring.capacity)
            break; /* room for the answer first; egress drains it */
        if (!c || c->fd < 0 || (c->gen & 0xffffffu) != gen || !c->tls || !c->tls_user ||
            !c->parked || c->parked_cell != m.cell) {
            /* gone, or a message for a previous ingress's connection: the
             * chunk must be the answer to the request we parked there, or
             * its cell is never read: -EPIPE */
            c = NULL;
        } else {
            same = m.cell == c->chunk_cell && m.seq == c->chunk_seq && m.len == c->chunk_len;
            if (same && (c->chunk_busy || c->chunk_ack_due)) {
                /* re-sent by a restarted egress: the answer will come */
                shm_ring_release(&L->tls_out_ring, 1);
                continue;
            }
            if (same) {
                res = c->chunk_res; /* re-sent after it was answered: same answer */
            } else if (!c->chunk_busy && !c->closing && !c->tls_dead) {
                void *data;
                size_t size;
                ssize_t w = -EINVAL;
                if (shm_cell_bytes(L->pool, m.cell, &data, &size) == 0 && m.len &&
                    m.off <= size && m.len <= size - m.off)
                    w = ing_tls_conn_write(c->tls, (uint8_t *)data + m.off, m.len);
                if (w == (ssize_t)m.len) {
                    c->chunk_busy = true;
                    c->chunk_ack_due = false;
                    c->chunk_conn = m.conn;
                    c->chunk_cell = m.cell;
                    c->chunk_seq = m.seq;
                    c->chunk_len = m.len;
                    shm_ring_release(&L->tls_out_ring, 1);
                    conn_kick(L, c);
                    continue;
                }
                favo_info("ingress: conn %u: an answer from egress could not be encrypted (%s)",
                          slot, strerror(w < 0 ? (int)-w : EIO));
                res = w < 0 ? (int32_t)w : -EIO;
                c->closing = true;
                c->tls_dead = true;
                c->out_sent = c->out_len;
                conn_kick(L, c);
            } else {
                res = -EPIPE;
            }
        }
        struct shm_tls_ack *a = shm_ring_reserve(&L->tls_ack_ring);
        FAVO_ASSERT(a != NULL); /* room checked above; one producer */
        memset(a, 0, sizeof(*a));
        a->conn = m.conn;
        a->cell = m.cell;
        a->seq = m.seq;
        a->res = res;
        shm_ring_commit(&L->tls_ack_ring);
        L->ring_egr = true;
        shm_ring_release(&L->tls_out_ring, 1);
    }
}

static void egr_bell_ring(struct ing_loop *L)
{
    if (L->ring_egr && L->egr_bell_ok)
        shm_bell_efd_ring(&L->egr_bell);
    L->ring_egr = false;
}

static int ring_init(struct ing_loop *L)
{
    static const unsigned tries[] = {
        IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
        IORING_SETUP_COOP_TASKRUN,
        0,
    };
    int rc = -EINVAL;

    for (size_t i = 0; i < FAVO_ARRAY_SIZE(tries); i++) {
        struct io_uring_params p;
        memset(&p, 0, sizeof(p));
        p.flags = tries[i];
        rc = io_uring_queue_init_params(256, &L->ring, &p);
        if (rc == 0) {
            if (i)
                favo_warn("ingress: io_uring setup flags 0x%x refused; using 0x%x", tries[0],
                          tries[i]);
            return 0;
        }
        if (rc != -EINVAL)
            break;
    }
    favo_err("ingress: io_uring_queue_init: %s", strerror(-rc));
    return rc;
}

static int listen_open(struct ing_loop *L)
{
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(L->cfg.port) };
    socklen_t alen = sizeof(a);
    const char *host = L->cfg.host ? L->cfg.host : "127.0.0.1";
    int one = 1, fd;

    if (inet_pton(AF_INET, host, &a.sin_addr) != 1) {
        favo_err("ingress: --host '%s' is not an IPv4 address", host);
        return -EINVAL;
    }
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    /* N workers bind the same port; the kernel spreads connections. */
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(fd, 1024) < 0 ||
        getsockname(fd, (struct sockaddr *)&a, &alen) < 0) {
        int e = -errno;
        favo_err("ingress: listen on %s:%u: %s", host, L->cfg.port, strerror(-e));
        close(fd);
        return e;
    }
    L->lfd = fd;
    L->port = ntohs(a.sin_port);
    return 0;
}

int ing_loop_run(const struct ing_cfg *cfg)
{
    struct ing_loop *L = calloc(1, sizeof(*L));
    struct sigaction sa;
    int rc;

    if (!L)
        return -ENOMEM;
    L->cfg = *cfg;
    L->lfd = -1;
    if (!L->cfg.lim.max_header)
        L->cfg.lim = ing_http_default_limits;
    L->max_conns = cfg->max_conns ? cfg->max_conns : 1024;
    if (!L->cfg.header_timeout_ms)
        L->cfg.header_timeout_ms = 10000;
    if (!L->cfg.idle_timeout_ms)
        L->cfg.idle_timeout_ms = 60000;
    L->multishot = true;
    L->created = favo_wall_ns() / 1000000000ull;
    L->reload_seen = cfg->reload ? *cfg->reload : 0;
    if (getrandom(&L->reqid_salt, sizeof(L->reqid_salt), 0) != sizeof(L->reqid_salt))
        L->reqid_salt = favo_now_ns() ^ (uint64_t)getpid() << 32;
    /* Connection generations start at a random point, so a restarted
     * ingress never hands egress a key (worker, slot, generation) that its
     * predecessor's live connections still use. */
    L->reqid_seq = (L->reqid_salt >> 17) & 0xffffffu;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_stop_signal; /* no SA_RESTART: the wait returns -EINTR */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    L->conns = calloc(L->max_conns, sizeof(*L->conns));
    L->snap = malloc(sizeof(*L->snap));
    if (!L->conns || !L->snap) {
        rc = -ENOMEM;
        goto out;
    }
    for (unsigned i = 0; i < L->max_conns; i++)
        L->conns[i].fd = -1;
    if (cfg->cells) {
        L->pool = cfg->cells;
    } else {
        rc = ing_loop_private_pool(&L->own_pool, &L->own_pool_mem, L->max_conns);
        if (rc) {
            favo_err("ingress: private cell pool: %s", strerror(-rc));
            goto out;
        }
        L->pool = &L->own_pool;
    }
    if (cfg->tls_cert || cfg->tls_key) {
        char err[512];
        rc = ing_tls_ctx_new(&L->tls_ctx, cfg->tls_cert ? cfg->tls_cert : "",
                             cfg->tls_key ? cfg->tls_key : "", cfg->tls_flags, err, sizeof(err));
        if (rc < 0) {
            favo_err("ingress: %s", err);
            goto out;
        }
        favo_info("ingress: TLS 1.3 on; kernel TLS transmit %s", ing_tls_ktls_available()
                  ? "available (egress writes plaintext on such connections)"
                  : "not available on this host (egress's answers are encrypted by ingress)");
    }
    if (cfg->model_path && (rc = ing_route_model_load(L)) != 0)
        goto out;
    if (cfg->rl && cfg->keys && cfg->worker == 0) {
        uint64_t now = favo_now_ns();
        for (uint32_t b = 0; b < ing_keys_nbuckets(cfg->keys); b++) {
            uint32_t rpm, tpm;
            if (ing_keys_bucket_limits(cfg->keys, b, &rpm, &tpm) == 0)
                ing_rl_set_limits(cfg->rl, b, rpm, tpm, now);
        }
    }
    if (cfg->pipe && (rc = pipe_attach(L)) != 0)
        goto out;
    if (cfg->listen_fd > 0) {
        struct sockaddr_in a;
        socklen_t alen = sizeof(a);
        L->lfd = cfg->listen_fd;
        if (getsockname(L->lfd, (struct sockaddr *)&a, &alen) == 0 && a.sin_family == AF_INET)
            L->port = ntohs(a.sin_port);
    } else if ((rc = listen_open(L)) != 0) {
        goto out;
    }
    if ((rc = ring_init(L)) != 0)
        goto out_listen;
    favo_info("ingress: worker %u listening on %s:%u (max %u connections, model %s)",
              cfg->worker, cfg->host ? cfg->host : "127.0.0.1", L->port, L->max_conns,
              L->tok ? L->model_id : "none");
    if (cfg->port_fd >= 0) {
        char s[16];
        int n = snprintf(s, sizeof(s), "%u\n", L->port);
        if (write(cfg->port_fd, s, (size_t)n) != n)
            favo_warn("ingress: writing the port: %s", strerror(errno));
        close(cfg->port_fd);
    }

    if (!cfg->keys && !cfg->auth)
        favo_warn("ingress: no API keys: the server is open to anyone who can reach %s:%u",
                  cfg->host ? cfg->host : "127.0.0.1", L->port);
    arm_accept(L);
    arm_tick(L);
    if (cfg->on_ready)
        cfg->on_ready(cfg->on_ready_arg);
    if (cfg->pipe)
        shm_pipe_set_up(cfg->pipe, SHM_PIPE_INGRESS, cfg->worker, getpid());
    rc = 0;
    uint64_t drain_end = 0;
    L->now = favo_now_ns();
    L->wall_off = (int64_t)(favo_wall_ns() - L->now);
    for (;;) {
        if (!L->draining && (ing_sig_stop || (cfg->stop && *cfg->stop)))
            drain_begin(L, &drain_end);
        if (L->draining && (drain_busy(L) == 0 || favo_now_ns() > drain_end))
            break;
        struct io_uring_cqe *cqe;
        unsigned head, n = 0;
        int w;

        if (cfg->reload && *cfg->reload != L->reload_seen) {
            L->reload_seen = *cfg->reload;
            if (cfg->keys_path)
                keys_reload(L);
        }
        if (cfg->pipe) {
            /* egress's messages first; sleep on the bell only when there
             * are none (shm_bell.h: prepare, look again, then wait) */
            egress_check(L);
            conn_msgs(L);
            if (L->tls_ctx) {
                tls_msgs(L);
                chunk_retry(L);
                egr_bell_ring(L);
            }
            /* the requests of the last burst of completions and of the
             * connections egress just gave back: one ring, before waiting */
            if (L->ring_bat) {
                L->ring_bat = false;
                shm_bell_ec_ring(&L->bat_bell);
            }
            bell_arm(L);
            shm_bell_efd_prepare(&L->bell);
            if (shm_ring_available(&L->conn_ring) ||
                (L->tls_ctx && shm_ring_available(&L->tls_out_ring))) {
                shm_bell_efd_cancel(&L->bell);
                continue;
            }
        }
        w = io_uring_submit_and_wait(&L->ring, 1);
        if (cfg->pipe)
            shm_bell_efd_woke(&L->bell);
        L->now = favo_now_ns(); /* for every completion of this burst */

        if (w < 0 && w != -EINTR && w != -EAGAIN && w != -EBUSY) {
            favo_err("ingress: io_uring_submit_and_wait: %s", strerror(-w));
            rc = w;
            break;
        }
        io_uring_for_each_cqe(&L->ring, head, cqe) {
            uint64_t ud = io_uring_cqe_get_data64(cqe);
            unsigned op = (unsigned)(ud >> 56);
            uint32_t slot = (uint32_t)(ud >> 32) & 0xffffffu, gen = (uint32_t)ud;
            n++;
            if (op == OP_ACCEPT) {
                on_accept(L, cqe);
            } else if (op == OP_TICK) {
                on_tick(L);
            } else if (op == OP_BELL) {
                L->bell_armed = false;
            } else if (op == OP_RECV || op == OP_SEND) {
                struct ing_conn *c = &L->conns[slot];
                FAVO_ASSERT(slot < L->max_conns);
                if (c->fd < 0 || c->gen != gen)
                    continue; /* loop inv 2: stale, never applied */
                if (op == OP_RECV)
                    on_recv(L, c, cqe->res);
                else
                    on_send(L, c, cqe->res);
            }
        }
        io_uring_cq_advance(&L->ring, n);
        if (L->tls_ctx && cfg->pipe)
            egr_bell_ring(L); /* chunks answered by SEND completions */
    }
    if (L->ring_bat)
        shm_bell_ec_ring(&L->bat_bell);
    favo_info("ingress: worker %u stopping (%u connections open)", cfg->worker, L->nconns);
    if (cfg->pipe)
        shm_pipe_set_up(cfg->pipe, SHM_PIPE_INGRESS, cfg->worker, 0);
    io_uring_queue_exit(&L->ring);
    for (unsigned i = 0; i < L->max_conns; i++)
        if (L->conns[i].fd >= 0)
            conn_free(L, &L->conns[i]);
    if (L->tls_ctx && cfg->pipe)
        egr_bell_ring(L);
out_listen:
    if (L->lfd >= 0)
        close(L->lfd);
out:
    if (L->own_keys) {
        ing_keys_free(L->own_keys);
        free(L->own_keys);
    }
    if (L->own_rl_mem)
        munmap(L->own_rl_mem, L->own_rl_len);
    ing_route_model_free(L);
    if (L->scratch) {
        explicit_bzero(L->scratch, L->scratch_cap);
        free(L->scratch);
    }
    free(L->snap);
    if (L->conns)
        for (unsigned i = 0; i < L->max_conns; i++)
            free(L->conns[i].tls_in); /* ciphertext only */
    ing_tls_ctx_free(L->tls_ctx);
    free(L->conns);
    /* the private pool stays mapped: freed cells were scrubbed already */
    free(L);
    return rc;
}
