/*
 * ing_loop.h - the ingress worker: one io_uring event loop that accepts
 * client connections, receives each request into a cell of the data
 * segment, parses and routes it, answers early errors and the small
 * routes itself, and hands generation requests to the batcher as a
 * descriptor (cell reference + metadata, never content) over the
 * ingress->batcher ring.
 *
 * One loop per ingress worker process; N workers share the port with
 * SO_REUSEPORT (each calls ing_loop_run with the same host/port; the
 * kernel spreads connections). The ring is set up with
 * IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN; a kernel that
 * refuses those gets COOP_TASKRUN, then no flags (logged once). Accept is
 * multishot (re-armed when the kernel ends it, single-shot accept when the
 * kernel has no multishot).
 *
 * Receive buffers: plain recv into the connection's cell at its fill
 * offset, not a provided-buffer ring over the segment. A provided buffer
 * is picked by the kernel per recv, so one request would be scattered
 * over several buffers and have to be copied together before the in-place
 * parser (ing_http.h) and the batcher could see it as one cell, breaking
 * "write once" (invariant 4) on the common path. The price: an open
 * connection holds a cell of the smallest class from accept to close
 * (size the pool for max_conns). A request whose body does not fit is
 * moved once into a cell of a larger class (ing_http_full_status when
 * none is larger).
 *
 * Connection lifecycle (struct ing_conn in ing_loop_int.h; function making
 * each transition in ing_loop.c):
 *
 *   accept CQE ---conn_open---> READING <------------------------------+
 *   (no slot: 503 + close)        | bytes parsed into requests          |
 *                                 v                                    |
 *                     route each complete request in order (pipelined) |
 *                       |                         |                    |
 *                       | answered here           | handed to batcher  |
 *                       v                         v                    |
 *                   WRITING --send done-------> (egress answers; the  |
 *                       |       keep-alive -------connection waits) ---+
 *                       | error / Connection: close / drain
 *                       v
 *                   CLOSING (shutdown; close when no op is in flight) --> slot free
 *
 *   timers (one tick per tick_ms): header bytes not complete within
 *   header_timeout_ms -> 408 + close; no byte of a next request within
 *   idle_timeout_ms -> close without a response.
 *
 * Invariants (cited by FAVO_ASSERT as "loop inv N"):
 *   1. A connection's responses leave in request order: everything is
 *      appended to one output buffer, sent by one SEND at a time.
 *   2. A connection's slot is reused only when no io_uring operation of it
 *      is in flight (user_data carries the slot's generation; a stale
 *      completion is ignored, never applied to a new connection).
 *   3. Only metadata is logged: request id, method, route, status, sizes.
 *   4. A cell handed to the batcher holds that request only: pipelined
 *      bytes after it move to the connection's next cell and are scrubbed
 *      from the handed one first.
 *
 * TLS (cfg->tls_cert / tls_key; ing_tls.h has the policy). Every
 * connection of the worker is TLS 1.3; the loop does all socket I/O:
 *   - recv goes to a per-slot staging buffer (one record and change), is
 *     fed to OpenSSL and decrypted straight into the cell at its fill
 *     offset (invariant 4), then parsed and routed exactly as plaintext;
 *     a staging buffer still holding ciphertext is not re-armed (the cell
 *     bounds what one connection holds, as for plaintext);
 *   - what the loop answers itself (errors, /health, /metrics, 100
 *     Continue) is appended to c->out as ever and goes through
 *     ing_tls_conn_write into the TLS queue, which also holds handshake
 *     records, alerts and close_notify; one SEND of its oldest region at a
 *     time (loop inv 1);
 *   - the handshake needs no timer of its own: the header timeout covers
 *     it (a connection that never finishes it is closed, without a 408 it
 *     could not read). A client speaking plain HTTP to the port fails the
 *     handshake and is closed at once (OpenSSL has no alert for it).
 *   - answers from egress: when kernel TLS transmit is on for the socket
 *     (ing_tls_conn_ktls_tx), the socket goes to egress as for plaintext
 *     and egress writes plaintext (the kernel encrypts). Otherwise (this
 *     is the path on hosts without the `tls` module) the socket never
 *     leaves ingress: the conn key carries SHM_CONN_F_TLS, egress puts
 *     each chunk of the answer on tls_out[worker] (shm_pipe.h "TLS"), the
 *     loop encrypts it at once into the connection's TLS queue (it never
 *     touches the cell afterwards), sends it, and answers the chunk on
 *     tls_ack with its length once every record of it left (or -EPIPE
 *     when the connection failed or is gone), ringing egress's bell
 *     (cfg->egr_bell_efd). One chunk per connection at a time; a chunk
 *     egress sends again after its restart (same cell and seq) is answered
 *     again, never encrypted twice. SHM_CONN_ABORT from egress (its write
 *     timeout) shuts the connection down at once. No malloc and no syscall
 *     per chunk besides io_uring and the bell (the TLS queue keeps its
 *     buffer).
 *   - cancellation: a client gone (EOF, reset, close_notify, a failed
 *     record) while egress answers sends CANCEL as for plaintext; egress
 *     learns it from the chunk answered -EPIPE.
 *   - what a restart costs: egress's restart costs nothing (the chunk in
 *     flight is re-sent under its (cell, seq)); an INGRESS restart loses
 *     every TLS session of the worker (the keys live in this process
 *     only): the kernel closes their sockets with the process (egress
 *     never held them), egress sees the new ingress pid and ends their
 *     answers (cancel, cells freed), clients reconnect. A kernel-TLS
 *     connection's in-flight answer completes from egress, then closes.
 *
 * Drain (SIGTERM / SIGINT / *cfg->stop): /ready answers 503 at once, the
 * listener closes (new connections wait in the supervisor's backlog for
 * the next worker), idle connections close, requests being read and
 * answers being sent finish (each answered "Connection: close"), for at
 * most drain_ms; connections handed to egress are egress's to finish.
 *
 * Errors: ing_loop_run returns 0 after a stop (SIGTERM / SIGINT / stop
 * word), or -errno when setup fails (with a log line naming the step).
 */
#ifndef ING_LOOP_H
#define ING_LOOP_H

#include <stdbool.h>
#include <stdint.h>

#include "ing_http.h"
#include "ing_keys.h"
#include "ing_ratelimit.h"
#include "../shm/shm_cell.h"
#include "../shm/shm_pipe.h"
#include "../shm/shm_ring.h"
#include "../shm/shm_stats.h"

/* The descriptor ingress hands to the batcher is struct shm_req
 * (shm/shm_pipe.h, the pipeline's message formats). */

/* ------------------------------------------------------------- config */

struct ing_cfg {
    const char *host;            /* "127.0.0.1" when NULL */
    uint16_t port;               /* 0: the kernel picks; see port_fd */
    unsigned worker;             /* index, 0..255 */
    int port_fd;                 /* >= 0: the bound port is written here as
                                    "PORT\n" once listening, then closed */
    const char *model_path;      /* GGUF; NULL: no model (/ready 503, 503 on
                                    tokenizing routes) */
    const char *model_id;        /* /v1/models id; NULL: file name sans .gguf */
    const char *chat_template;   /* chat format name (eng_chat.h); NULL: detected */
    struct ing_http_limits lim;  /* zero: ing_http_default_limits */
    unsigned max_conns;          /* 0: 1024 */
    unsigned header_timeout_ms;  /* 0: 10000 */
    unsigned idle_timeout_ms;    /* 0: 60000 */
    unsigned max_tokens_default; /* 0: up to the context */

    /* The serving pipeline (favo serve): when set, ingress attaches its
     * part of it itself - the cell pool as ALLOCATOR, req[worker] as
     * producer, conn[worker] as consumer, the batcher bell, its own
     * eventfd bell (bell_efd) - and /ready is shm_pipe_ready(). The
     * fields below (cells, to_batcher, batcher_up) are then ignored. */
    const struct shm_pipe *pipe;
    /* Called once, right before the stage reports itself up: start-up is
     * over (files opened, memory mapped, threads started). favo serve
     * installs the stage's seccomp profile here. NULL: nothing. */
    void (*on_ready)(void *arg);
    void *on_ready_arg;
    int bell_efd;                /* with pipe: this worker's eventfd */
    int listen_fd;               /* > 0: an inherited listening socket (the
                                    supervisor keeps its copy: invariant 6) */

    /* Data segment (all may be NULL: a private pool, no batcher). */
    struct shm_cell_pool *cells; /* attached as ALLOCATOR */
    shm_ring_t *to_batcher;      /* PRODUCER of struct ing_desc */
    const uint32_t *batcher_up;  /* non-zero: a batcher consumes to_batcher */
    int egress_sock;             /* shm_fdpass socket to egress; -1: none */

    /* Stats segment (NULL: none; /metrics then answers an empty body). */
    const struct shm_stats *stats;
    struct shm_stats_writer *stats_w;

    /* API keys (ing_keys.h): Authorization: Bearer checked on every route
     * but /health, /ready and /metrics; 401 in OpenAI's shape. NULL and
     * no auth hook: an open server (said at start). */
    const struct ing_keys *keys;
    /* Rate limits (ing_ratelimit.h), with keys only: every authenticated
     * request is checked against its key/user/org buckets (tokens: the
     * prompt plus max_tokens on the generation routes, 0 elsewhere); 429
     * with Retry-After when refused; x-ratelimit-* on every answer. Worker
     * 0 sets the limits from the keys at start and ticks the refill. */
    struct ing_rl *rl;
    /* Reload (SIGHUP, through the stage wrapper): when *reload changes,
     * keys_path is read again; a file that fails to parse keeps the old
     * set (one error line). The new set takes effect between requests;
     * the rate-limit windows start afresh (single worker: the buckets are
     * this process's own memory). */
    const char *keys_path;
    const volatile uint32_t *reload;
    /* Extra auth hook, after the keys: NULL = none. Returns 0 to admit, else the HTTP
     * status (401/403/429) with msg filled (no key material in it). */
    int (*auth)(void *arg, const uint8_t *buf, const struct ing_http_req *r, char *msg,
                size_t cap);
    void *auth_arg;

    /* TLS 1.3 (ing_tls.h): both set: every connection is TLS; the files
     * are loaded at start (an error stops the worker, naming the file).
     * tls_flags: ING_TLS_NO_KTLS etc. */
    const char *tls_cert, *tls_key;
    unsigned tls_flags;
    int egr_bell_efd;            /* > 0, with pipe and TLS: egress's eventfd, rung
                                  after acknowledging its TLS chunks */

    const volatile uint32_t *stop; /* non-zero: drain, then leave the loop */
    unsigned drain_ms;           /* 0: 30000; answers in progress finish within it */
};

/* Run one ingress worker until stopped (see the top of this file).
 * Installs SIGTERM/SIGINT handlers that stop it; ignores SIGPIPE. */
int ing_loop_run(const struct ing_cfg *cfg);

/* Pool geometry ing_loop_run uses when cfg->cells is NULL: 64 KiB cells
 * (max_conns + 16 of them), 1 MiB x 16, 9 MiB x 2. */
int ing_loop_private_pool(struct shm_cell_pool *p, void **mem, unsigned max_conns);

#endif /* ING_LOOP_H */
