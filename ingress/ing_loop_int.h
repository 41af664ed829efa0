/*
 * ing_loop_int.h - internals shared by ing_loop.c (the io_uring loop and
 * connection handling) and ing_route.c (what each route answers). Not for
 * other modules: their contract is ing_loop.h.
 */
#ifndef ING_LOOP_INT_H
#define ING_LOOP_INT_H

#include <liburing.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ing_http.h"
#include "ing_loop.h"
#include "ing_openai.h"
#include "ing_tls.h"
#include "../shm/shm_bell.h"
#include "../engine/eng_chat.h"
#include "../engine/eng_gguf.h"
#include "../engine/eng_tok.h"

struct ing_conn {
    int fd;                  /* -1: slot free */
    uint32_t gen;            /* loop inv 2: in every user_data of this slot */
    uint8_t recv_inflight, send_inflight;
    bool closing;            /* answer what is queued, then close */
    bool parked;             /* a request went to the batcher; egress answers */
    bool fd_sent;            /* socket handed to egress already */
    bool cont_sent;          /* "100 Continue" sent for the current request */
    bool shut;               /* shutdown() issued */
    bool cancel_sent;        /* a CANCEL for the parked request went to the batcher */
    bool recv_cancel;        /* the armed recv is being cancelled (unparked) */
    shm_cell_ref_t parked_cell; /* the request egress is answering */
    uint32_t nreq;           /* requests completed on this connection */
    uint64_t out_total;      /* bytes of c->out the socket took (plain TCP): with
                                what is queued, stamped in shm_req.conn_out */
    bool egr_used;           /* a request on it was handed on: egress wrote too */
    shm_cell_ref_t cell;
    uint8_t *buf;            /* the cell's bytes */
    uint32_t cap, len;
    uint64_t first_ns;       /* first byte of the current request; 0: none yet */
    uint64_t last_ns;        /* last activity (accept, recv, response sent) */
    struct ing_http_req req;
    char *out;               /* responses queued, in request order (loop inv 1) */
    size_t out_len, out_cap, out_sent;
    char *out_old;           /* the buffer an in-flight SEND reads, when out
                                grew under it; freed when that SEND completes */
    size_t out_old_cap;

    /* TLS (cfg.tls_cert; ing_loop.h "TLS"); tls is NULL on a plain
     * connection. Not cleared by conn_open's memset: reset there. */
    ing_tls_conn_t *tls;
    uint8_t *tls_in;           /* ciphertext received (the slot's, kept): [off, len) not fed yet */
    uint32_t tls_in_off, tls_in_len;
    bool tls_open;             /* the handshake finished */
    bool tls_user;             /* ...without kernel TLS transmit: egress's answers come
                                  back on tls_out (conn key has SHM_CONN_F_TLS) */
    bool tls_eof;              /* the client's TCP side closed */
    bool tls_shut;             /* our close_notify is queued */
    bool tls_dead;             /* the socket failed: nothing more is sent */
    /* egress's chunk (shm_tls_out): being sent, then the last one answered */
    bool chunk_busy, chunk_ack_due;
    int32_t chunk_res;
    uint32_t chunk_len;
    uint64_t chunk_conn, chunk_cell, chunk_seq;
};

struct ing_loop {
    struct ing_cfg cfg;
    /* the pipeline (cfg.pipe): attached at start */
    struct shm_cell_pool pipe_pool;
    shm_ring_t req_ring, conn_ring;
    shm_bell_ec_t bat_bell;
    uint64_t now;              /* favo_now_ns() read once per loop iteration
                                  (ing_now): a burst of completions shares it */
    int64_t wall_off;          /* wall clock - monotonic, refreshed each tick */
    bool ring_bat;             /* req[worker] got messages: ring bat_bell once
                                  before the loop next waits (ing_bat_bell) */
    shm_bell_efd_t bell;
    bool bell_armed;
    uint64_t bell_buf;
    int32_t egress_pid;        /* the egress process our sockets went to */
    uint32_t reload_seen;
    struct ing_keys *own_keys; /* a reloaded key set (ours to free) */
    struct ing_rl own_rl;
    void *own_rl_mem;
    size_t own_rl_len;
    const struct ing_key *key; /* the current request's API key, NULL when open */
    struct io_uring ring;
    int lfd;
    uint16_t port;
    unsigned nconns, max_conns;
    struct ing_conn *conns;
    struct shm_cell_pool own_pool;
    void *own_pool_mem;
    struct shm_cell_pool *pool;
    bool multishot;
    bool accept_armed;
    bool draining;
    uint64_t reqid_seq;
    uint64_t reqid_salt;

    /* the model (tokenizer only; ingress never runs it) */
    eng_gguf_t *gguf;
    eng_tok_t *tok;
    struct eng_chat chat;
    bool chat_ok;
    uint32_t n_ctx;
    char model_id[128];
    uint64_t created;        /* wall-clock seconds, for /v1/models */

    struct ing_oai_req oai;  /* decode scratch, reused */
    char *scratch;           /* response body being built */
    size_t scratch_len, scratch_cap;
    struct shm_stats_snap *snap;

    /* TLS (cfg.tls_cert) and its egress path (shm_pipe.h "TLS") */
    ing_tls_ctx_t *tls_ctx;
    shm_ring_t tls_out_ring, tls_ack_ring;
    shm_bell_efd_t egr_bell;
    bool egr_bell_ok, ring_egr, ack_retry;

    /* the current request's key buckets and x-ratelimit-* lines */
    uint32_t rl_buckets[3];
    unsigned rl_n;            /* 0: no rate limit applies */
    char rl_hdr[512];
    /* the current request's id (from X-Request-Id, or generated) */
    char reqid[SHM_REQ_ID_MAX + 1];
    unsigned reqid_len;
};

/* ---- ing_loop.c, for the routes */

/* Queue a response on c: status line, Content-Type (NULL: none),
 * Content-Length, X-Request-Id (when one is set), extra header lines
 * (each ending in CRLF, may be NULL), Connection: close when c is
 * closing, then the body. -ENOMEM closes the connection. */
int ing_conn_respond(struct ing_loop *L, struct ing_conn *c, int status, const char *ctype,
                     const char *extra, const void *body, size_t len);
/* An error in OpenAI's shape (ing_oai_error_body). */
int ing_conn_error(struct ing_loop *L, struct ing_conn *c, int status, const char *message,
                   const char *param, const char *code, const char *extra);
/* The connection's next cell: move the bytes after the current request
 * into a fresh cell, scrub them from the old one, and return the old
 * cell (which holds this request only: loop inv 4). -EAGAIN: no cell. */
int ing_conn_detach(struct ing_loop *L, struct ing_conn *c, shm_cell_ref_t *old,
                    uint8_t **buf, size_t *size);
uint64_t ing_conn_key(const struct ing_loop *L, const struct ing_conn *c);
/* The loop's clock: read once each time the loop wakes, not per request - clock_gettime was ~7% of
 * ingress's CPU under wrk. Wall-clock seconds derive from it. */
static inline uint64_t ing_now(const struct ing_loop *L) { return L->now; }
static inline uint64_t ing_wall_s(const struct ing_loop *L)
{
    return (uint64_t)((int64_t)L->now + L->wall_off) / 1000000000ull;
}
/* After enqueueing on req[worker]: the batcher's bell rings once per loop
 * iteration (before the loop waits again), not once per message - one
 * futex wake covers every request of a burst of completions. */
static inline void ing_bat_bell(struct ing_loop *L) { L->ring_bat = true; }

/* Response-body scratch: printf-append, reset (scrubbed: it may hold
 * token ids or text). Return 0 or -ENOMEM. */
int ing_body_printf(struct ing_loop *L, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int ing_body_add(struct ing_loop *L, const void *p, size_t n);
int ing_body_json_str(struct ing_loop *L, const char *s, size_t n);
void ing_body_reset(struct ing_loop *L);

/* ---- ing_route.c */

/* Handle the complete request c->req (buffer c->buf): answer it on c, or
 * hand it to the batcher (c->parked). Sets c->closing when the
 * connection must close after the answer. */
void ing_route(struct ing_loop *L, struct ing_conn *c);
/* Load the tokenizer and chat template from cfg->model_path. */
int ing_route_model_load(struct ing_loop *L);
void ing_route_model_free(struct ing_loop *L);
bool ing_route_ready(struct ing_loop *L);
/* Rate limit the current request (L->rl_buckets) for `tokens`: 0 admitted,
 * else a 429 was answered. Fills L->rl_hdr either way. */
int ing_route_ratelimit(struct ing_loop *L, struct ing_conn *c, uint64_t tokens);

#endif /* ING_LOOP_INT_H */
