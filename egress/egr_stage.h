/*
 * egr_stage.h - the egress stage process: batcher events in, HTTP bytes
 * out. One io_uring loop turns the token ids the batcher writes into each
 * request's cell into OpenAI responses (egr.h) and sends them on the
 * client sockets ingress handed over (shm_fdpass.h), then frees the cell
 * and tells ingress the connection is free again (shm_pipe.h, step 5 of
 * the flow in /work/briefs/pipe.md and ARCHITECTURE.md "Request lifecycle").
 *
 *   batcher --ev (START/TOKENS/FINISH/ERROR)--> egress --send--> client
 *      ^                  (egress eventfd bell)   |  ^
 *      +--- ctl (cancel) + batcher futex bell ----+  | fdpass socket
 *   ingress w <--- conn[w] {conn, KEEP|CLOSED} ---+  | (SCM_RIGHTS, once
 *             <--- ingress w's eventfd bell           per connection)
 *
 * The loop (egr_stage.c): one io_uring (SINGLE_ISSUER|DEFER_TASKRUN, then
 * COOP_TASKRUN, then plain, as ingress does) with
 *   - a read armed on the egress eventfd (shm_bell.h "eventfd in an
 *     io_uring loop": prepare, look at ev again, cancel or wait, woke);
 *   - a poll on the fdpass socket (sockets ingress sends, drained
 *     synchronously: it is non-blocking);
 *   - at most ONE send in flight per connection, from the response area
 *     of the cell (invariant 4: formatted in the cell, sent from it);
 *   - a 50 ms tick: write timeouts, retries of a full ctl/conn ring, stats
 *     heartbeat and flush, drain checks. The tick is also what bounds
 *     every sleep (pipe.md: always sleep with a timeout).
 *
 * Per response, the state lives in the cell (pointer-free, invariant 1):
 *
 *   cell + resp_off                      struct shm_req (ingress's copy, read-only)
 *        + SHM_PIPE_REQ_COPY             struct egr_stage_state (egress only)
 *        + EGR_STAGE_STATE_BYTES         the bytes area, to the end of the cell:
 *                                        area[0, resp.pending) is what to send
 *
 * Lifecycle of one response (keyed by the cell reference; the function
 * doing each transition in egr_stage.c):
 *
 *     START ──rs_start──► BODY ──TOKENS: rs_feed (egr_resp_token while it does
 *       │  egr_resp_init     │   not say -EAGAIN; one send in flight; on its
 *       │  (head sent now    │   completion egr_resp_consume and feed more)
 *       │   for a stream)    │
 *       │                    ├─ EGR_CANCEL (stop string): rs_cancel (ctl) ─┐
 *       │                    ├─ EOG / max_tokens: resp DONE ───────────────┤
 *       │                    └─ FINISH STOP|LENGTH: egr_resp_finish ───────┤
 *       │                                                                  v
 *       ├─ ERROR (before any byte left): rs_error writes the         DONE, all
 *       │   OpenAI error response into the area ───────────────────► bytes sent,
 *       │                                                            FINISH/ERROR
 *       └─ send error / write timeout / no socket: rs_gone ──► GONE    seen
 *            (ctl cancel once, shutdown; wait for FINISH)       │        │
 *                                                               v        v
 *                               rs_complete: egr_scrub, shm_cell_free (return ring
 *                               SHM_PIPE_RET_EGRESS), access log line, stats,
 *                               shm_conn_msg {conn, KEEP | CLOSED} on conn[worker],
 *                               ring that worker's bell
 *
 * Invariants (cited by FAVO_ASSERT as "egr stage inv N"):
 *   1. The cell is freed only after FINISH or ERROR named it (then egress
 *      is its owner, pipe inv 3) AND no send referencing its area is in
 *      flight.
 *   2. One send in flight per connection, always for the first response
 *      queued on it; bytes are consumed from the area only on that send's
 *      completion (egr_resp_consume), so the kernel never reads bytes that
 *      are being moved.
 *   3. At most one ctl cancel per response (SF_CANCEL_SENT in the cell).
 *   4. Events are idempotent: n_gen only grows, a replayed START / FINISH
 *      / ERROR changes nothing, an event for a freed cell is dropped by its
 *      stale generation (shm_cell_bytes -ESTALE).
 *   5. Metadata only leaves the cell: the access log and stats carry ids,
 *      counts, status and times, never text or token ids.
 *   6. Bytes written on a plain-TCP connection, mod 2^31: the kernel's
 *      count (tcpi_bytes_acked + SIOCOUTQ) = shm_req.conn_out (what
 *      ingress wrote: its answers, "100 Continue", stamped as it hands a
 *      request on) + conn.out (what this egress's sends put there,
 *      counted on their completions) + what the kernel has taken of the
 *      send in flight. A response's kbase is that count at its first
 *      send; then kbase + sent = conn_out + conn.out at every send
 *      (asserted in conn_kick). See "Bytes written on a connection".
 *
 * TLS connections without kernel TLS (shm_pipe.h "TLS"; the conn key has
 * SHM_CONN_F_TLS): no socket comes; the connection slot has fd -1 and is
 * made when the first response names it. conn_kick puts the chunk on
 * tls_out[worker] (conn, cell, seq = bytes sent so far, offset, length)
 * instead of an io_uring SEND and rings ingress; ingress's ack on
 * tls_ack[worker] is that send's completion (on_send), applied only when
 * it names the head response's cell and seq (a replayed or stale ack
 * changes nothing). Write timeout: cancel as ever, and SHM_CONN_ABORT on
 * conn[worker] (ingress then closes the socket and acks the chunk
 * -EPIPE); an ingress that never acks even then is treated as wedged
 * after twice the timeout. An ingress restart ends every TLS connection
 * of that worker at once (ingress_check: the keys and sockets died with
 * it). A restarted egress sends the chunk that was in flight again under
 * the same (cell, seq): ingress answers it without encrypting it twice,
 * so the stream resumes byte-exact (test-egress-stage "tls_restart").
 *
 * Decisions worth knowing:
 *   - shm_ev names only the cell, not where its request copy is: egress
 *     reads resp_off from the cell descriptor's len (ingress sets it to
 *     resp_off + SHM_PIPE_REQ_COPY before the handoff), verifies the copy
 *     (magic, its own cell reference, resp_off consistent with tok_off,
 *     ntok, max_tokens) and otherwise scans the cell's 64-aligned offsets
 *     from the top (req_find). A resp_off in shm_ev would make this exact.
 *   - ERROR before any byte of the response was sent: a complete OpenAI
 *     error response ({"error":{"message","type","param","code"}}, status,
 *     Content-Length, Retry-After for 503), keep-alive as the request asked,
 *     then KEEP. ERROR after bytes left (a stream's head is sent at START):
 *     the response cannot be repaired, the socket is shut down and ingress
 *     gets CLOSED.
 *   - FINISH CANCELLED that we did not cause (ingress saw the client go) is
 *     handled as a client gone: shutdown, CLOSED.
 *   - logprobs: the batcher writes each generated id's logprob record at
 *     the end of the cell (shm_pipe.h, shm_pipe_lp_at) before the event
 *     that counts it; the response area then ends where the records begin
 *     (rs_adopt). rs_feed reads record k with id k and hands it to
 *     egr_resp_token_lp; a record that does not name id k (never written)
 *     loses the response (500, or closed once bytes left) instead of
 *     answering made-up numbers. Ingress reserves the records and the
 *     area logprobs need (shm_pipe_cell_need_lp: SHM_PIPE_AREA_LP_STREAM
 *     for a stream's largest event, SHM_PIPE_AREA_LP_PER_ENTRY per entry
 *     of a body), so there is no "logprobs":null fallback; a cell without
 *     room for the records is refused by the batcher (413).
 *   - A response egr cannot hold (-ENOBUFS: a body that outgrew its area)
 *     is answered 500 when nothing was sent yet, otherwise closed.
 *   - The access log status is the one sent in the head (200 or the
 *     error's); 499 when the client was gone before the end.
 *
 * Tracing: FAVO_EGR_TRACE=FILE (opened at start, before the sandbox)
 * records each burst's phases - publication, wake-up, events applied,
 * sends submitted: times and counts only, never content - and writes them
 * at exit (bench-egress --trace reads them). Off: one branch per burst.
 * Scheduling: dp_stages.c runs egress at SCHED_FIFO 1 when stages share
 * cores (--poll block), so a token does not wait out an engine thread's
 * time slice.
 *
 * Bytes written on a connection (issue #6; inv 6). A restarted egress
 * must know how much of the send that was in flight when its predecessor
 * died reached the socket: kernel count now - kbase - sent. kbase is
 * counted in user space, no syscall in the steady state (it used to be a
 * SIOCOUTQ ioctl + TCP_INFO getsockopt before every response's first
 * send: ~2 of egress's ~2.1 syscalls per response under wrk):
 *   - ingress stamps shm_req.conn_out: the bytes it has written on the
 *     connection (sent, or queued to go out before egress's: they were
 *     queued first), and SHM_REQ_OUT_EGR once an earlier request on it
 *     was handed on. Ingress writes nothing on a connection while egress
 *     answers on it (it is parked until KEEP/CLOSED).
 *   - egress counts its own sends per connection (conn.out). That table
 *     is process-local: the cell keeps kbase and sent, so a resumed
 *     response gives its connection's count back (rs_fix_inflight); a
 *     socket that reaches a restarted egress otherwise is learnt at its
 *     first response's first send: conn.out = 0 without
 *     SHM_REQ_OUT_EGR, else the kernel's count minus ingress's (two or
 *     three syscalls, once per adopted connection).
 *   - kernel TLS: the kernel counts ciphertext. The plaintext counts
 *     still run, but a restart with a send in flight closes such a
 *     connection (TCP_ULP checked, restart paths only); a restarted
 *     egress never learns such a socket's count.
 *   - Known gap: ingress answering a pipelined request and parking the
 *     next one in the same pass queues its answer before egress's first
 *     send can reach the socket, but does not wait for it: if egress's
 *     send overtook it (never seen; the batcher is in between), the
 *     bytes would be out of order anyway.
 *   FAVO_EGR_KCHECK=1 (tests) compares every kbase with the kernel's
 *   count (errors name both) and logs the tallies at exit.
 *
 * Crash-restart (tested: test-egress-stage "restart", kill -9 mid-stream;
 * test-serve-egress-restart.py, kill -9 with a send in flight on a full
 * socket, twice, byte-exact):
 *   - Kept in the cells: every response's progress (egr_resp with the
 *     detokenizer, ids consumed, n_gen, bytes sent, flags, times). At start
 *     egress scans the cell descriptors and takes over every cell the
 *     batcher or egress owns that holds a valid EGR_STAGE_MAGIC
 *     (rs_scan_cells); the ev ring replays what the dead egress had not
 *     released (it releases each event right after applying it), and an
 *     event for a cell not yet known is "adopted" the same way.
 *   - A resumed response waits up to 5 s (RESUME_GRACE_NS) for its socket,
 *     then counts as gone. A send that was in flight when egress died
 *     (state.inflight, stored before each submit) resumes after the bytes
 *     the kernel took of it (inv 6, rs_fix_inflight); when that cannot be
 *     known (no kbase, kernel TLS) the connection is closed, its cell
 *     still comes back. A TLS chunk in flight is sent again (see TLS).
 *   - Outside egress: (a) the sockets. Ingress notices the new egress (its
 *     up word) and re-sends every connection with a request parked, the
 *     others with their next request (ing_loop.c egress_check), on the
 *     same fdpass pair (the supervisor's; it outlives egress).
 *     (b) a conn message the dead egress published for a cell it had then
 *     not yet freed is not repeated (the cell is freed before the message
 *     is committed, so the reverse cannot happen); a FINISH replayed for a
 *     freed cell is dropped as stale.
 *   - Cost today: responses whose socket is not re-sent within 5 s are
 *     cancelled (their clients see a closed connection); no cell is lost.
 *
 * Errors: egr_stage_run returns 0 after a drain, -errno when setup fails
 * (bad cfg -EINVAL, tokenizer, rings, io_uring).
 */
#ifndef EGR_STAGE_H
#define EGR_STAGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "egr.h"
#include "shm_pipe.h"
#include "shm_stats.h"

struct egr_stage_cfg {
    const struct shm_pipe *pipe;             /* attached by the caller */
    /* Called once, right before the stage reports itself up: start-up is
     * over (files opened, memory mapped, threads started). favo serve
     * installs the stage's seccomp profile here. NULL: nothing. */
    void (*on_ready)(void *arg);
    void *on_ready_arg;
    int fdpass_sock;                         /* receiving end of the ingress socket handoff */
    int bell_efd;                            /* egress's eventfd (this stage consumes it) */
    int ing_bell_efd[SHM_PIPE_MAX_INGRESS];  /* ingress workers' eventfds (rung here); -1: none */
    const char *model_path;                  /* tokenizer: eng_tok_load_file */
    const char *model_id;                    /* "model" in responses; NULL: the pipe's */
    const char *fingerprint;                 /* system_fingerprint; NULL: "fp_favo" */
    unsigned write_timeout_ms;               /* 0: 30000 */
    int log_fd;                              /* access log (JSON lines); -1: none */
    int poll;                                /* 0 block, 1 adaptive, 2 spin */
    const volatile int *stop;                /* non-zero: drain and return */
    struct shm_stats *stats;                 /* NULL: no stats */
    struct shm_stats_writer *stats_w;
    unsigned stats_row;
};

/* Run the stage until *stop (or the pipe's draining word) and then the
 * batcher is down and no response is active. 0 or -errno (setup). */
int egr_stage_run(const struct egr_stage_cfg *cfg);

/* ---- the per-response state in the cell ------------------------------ */

#define EGR_STAGE_MAGIC 0x31475453u /* "STG1" */

enum egr_stage_flag {
    EGR_SF_STARTED = 1u << 0,     /* resp initialised (egr_resp_init) */
    EGR_SF_CANCEL_SENT = 1u << 1, /* our ctl cancel is on the ring (inv 3) */
    EGR_SF_CANCEL_WANT = 1u << 2, /* ...wanted, the ring was full: retried on ticks */
    EGR_SF_GONE = 1u << 3,        /* the client is gone: no more bytes */
    EGR_SF_FINAL = 1u << 4,       /* FINISH or ERROR seen: the cell is egress's */
    EGR_SF_ERROR = 1u << 5,       /* an error response replaced the 200 */
    EGR_SF_TIMEOUT = 1u << 6,     /* gone because a write timed out */
    EGR_SF_CLOSE = 1u << 7,       /* close the connection after this response */
    EGR_SF_KBASE = 1u << 8,       /* kbase is recorded */
};

/* Written by egress only, at cell + resp_off + SHM_PIPE_REQ_COPY. */
struct egr_stage_state {
    uint32_t magic;               /* EGR_STAGE_MAGIC once the state is set up */
    uint16_t flags;               /* enum egr_stage_flag */
    uint16_t status;              /* status sent in the head (200 or the error's) */
    uint16_t fin_reason;          /* FINISH: enum shm_ev_reason */
    uint16_t err_status;          /* ERROR event's status */
    uint32_t retry_after;
    uint32_t consumed;            /* ids fed to resp */
    uint32_t n_gen;               /* the highest n_gen seen (clipped to max_tokens) */
    uint32_t inflight;            /* bytes of the send in flight (0: none); a
                                     restarted egress that finds it non-zero
                                     asks the kernel how much of it left
                                     (kbase), or closes when it cannot */
    uint32_t pad_;
    uint64_t ev_id;               /* the batcher's handle (START), for cancels */
    uint64_t start_ns;            /* START's t_ns (admission) */
    uint64_t first_ns;            /* first text byte handed to the socket */
    uint64_t last_ns;             /* last TOKENS event (inter-token latency) */
    uint64_t sent;                /* bytes the socket took */
    uint64_t kbase;               /* bytes written on the connection before this
                                     response's first send, mod 2^31 (inv 6:
                                     conn_out + egress's own count, which is
                                     the kernel's TCP_INFO bytes_acked + SIOCOUTQ) */
    struct egr_resp resp;
};

#define EGR_STAGE_STATE_BYTES ((uint32_t)((sizeof(struct egr_stage_state) + 63u) & ~(size_t)63u))

/* ---- egr_err: OpenAI-shaped error responses -------------------------- */

struct egr_error {
    uint16_t status;              /* 400, 413, 500, 503 ... */
    uint8_t keep_alive;
    uint32_t retry_after;         /* seconds; 0: no Retry-After header */
    const char *message;          /* NULL: a default for the status */
    const char *type;             /* NULL: egr_error_type(status) */
    const char *param;            /* NULL: null */
    const char *code;             /* NULL: a default for the status (or null) */
    const char *request_id;       /* X-Request-Id echo; NULL: none */
    const char *extra;            /* more header lines (CRLF each); NULL: none */
};

/* "invalid_request_error" (4xx), "authentication_error" (401),
 * "permission_error" (403), "requests" (429), "server_error" (5xx): the
 * same table ingress answers its early errors with. */
const char *egr_error_type(unsigned status);

/* {"error":{"message":..,"type":..,"param":..,"code":..}}. Returns its
 * length or -ENOSPC. */
int egr_error_body(char *out, size_t cap, const struct egr_error *e);

/* Head (Content-Length, Connection, Retry-After for a non-zero
 * retry_after, X-Request-Id) and body. Returns the length, -ENOSPC, or
 * -EINVAL for a request id or extra egr_head refuses. */
int egr_error_response(char *out, size_t cap, const struct egr_error *e);

#endif /* EGR_STAGE_H */
