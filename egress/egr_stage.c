/*
 * egr_stage.c - the egress stage loop (design, lifecycle and invariants in
 * egr_stage.h).
 *
 * Process-local tables, allocated once at start (invariant 8):
 *   rs[]    one slot per response this process is working on, found by
 *           cell reference through a chained hash; it only caches pointers
 *           into the cell, where the state itself lives.
 *   conns[] the client sockets ingress handed over, found by (worker, slot)
 *           of the conn key; each has a FIFO of its responses (HTTP/1.1
 *           without pipelining: one at a time, but a late FINISH of the
 *           previous one may overlap the next START) and at most one send
 *           in flight.
 *
 * user_data of every SQE: op (8 bits) | index (24 bits) | generation (32),
 * so a completion for a connection slot that was reused is dropped.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <liburing.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <linux/tcp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "egr_stage.h"
#include "egr_scrub.h"
#include "favo_base.h"
#include "shm_fdpass.h"

enum { OP_BELL = 1, OP_FDPASS, OP_SEND, OP_TICK };

#define TICK_MS 50u
#define MAX_CONNS 16384u
#define NONE UINT32_MAX
#define EV_BURST 64u
#define RESP_DONE 2 /* struct egr_resp.state: 1 BODY, 2 DONE (egr.h) */
#define SPIN_NS 50000ull
#define RESUME_GRACE_NS 5000000000ull /* a resumed response waits this long for its socket */

struct rs {
    shm_cell_ref_t cell;           /* SHM_CELL_REF_NONE: free slot */
    struct egr_stage_state *st;    /* in the cell */
    const struct shm_req *req;     /* ingress's copy, in the cell */
    char *cellp;
    const int32_t *ids;            /* generated ids */
    char *area;
    size_t cap;
    size_t hwm;                    /* area bytes that may have been written
                                      (egr_scrub.h); cap: unknown */
    uint32_t conn;                 /* conns[] index, NONE: no socket */
    uint32_t cnext;                /* next response on the same connection */
    uint32_t hnext;                /* hash chain / free list */
    uint8_t first_pending;         /* text released, not yet handed to the socket */
    uint8_t retry;                 /* a ctl or conn message waits for ring room */
    uint64_t wait_since;           /* resumed, waiting for ingress to re-send its socket */
    uint64_t tok_ns;               /* oldest TOKENS t_ns not yet handed to the socket */
    const char *lp_end;            /* logprobs: the cell's end, records below it
                                      (shm_pipe.h); NULL: none asked */
    size_t size;                   /* the cell's bytes (shm_cell_bytes) */
    uint32_t n_alt;                /* alternatives per logprob record (shm_pipe_lp_alts) */
};

/* FAVO_EGR_TRACE=FILE: one record per burst of events (times only, no
 * content), written to FILE as text at exit; perf/bench-egress --trace
 * reads it. Off (the default): one well-predicted branch per burst. */
struct egr_tr {
    uint64_t pub;                  /* oldest TOKENS t_ns of the burst */
    uint64_t wake;                 /* the wait returned (0: no sleep before the burst) */
    uint64_t d0, d1;               /* drain_events began / ended */
    uint64_t s1;                   /* the last submit of the burst returned */
    uint32_t nev, nsend;           /* events applied, sends prepared */
};
#define TR_CAP (1u << 17)

struct conn {
    uint64_t key;                  /* ingress's conn key; 0: free */
    int fd;
    uint32_t gen;                  /* this slot's generation, for user_data */
    uint32_t head, tail;           /* responses, FIFO */
    uint32_t hnext;                /* hash chain / free list */
    uint32_t sending;              /* bytes of the send in flight; 0: none */
    uint64_t send_ns;
    uint64_t send_tok_ns;          /* the send in flight carries tokens published then */
    uint8_t shut;                  /* shutdown() done */
    uint8_t timed_out;
    uint8_t mapped;                /* in the (worker, slot) map */
    int32_t ing_pid;               /* the ingress process that handed it over */
    uint8_t orphan;                /* its slot went to a newer connection (an
                                      ingress restart reuses slots of live
                                      connections): finish its answers, close */
    uint8_t tls;                   /* SHM_CONN_F_TLS: no socket here; each chunk
                                      goes to ingress on tls_out (shm_pipe.h) */
    uint8_t abort_due;             /* TLS: SHM_CONN_ABORT waits for conn ring room */
    uint8_t out_state;             /* OUT_KNOWN: out is exact (egr stage inv 6);
                                      OUT_UNKNOWN: a restarted egress has not
                                      learnt it yet; OUT_NEVER: cannot (kTLS) */
    uint64_t out;                  /* bytes egress's sends put on the socket
                                      (mod 2^31 is what counts) */
};

enum { OUT_UNKNOWN = 0, OUT_KNOWN = 1, OUT_NEVER = 2 };

struct egr {
    const struct egr_stage_cfg *cfg;
    const struct shm_pipe *pipe;
    eng_tok_t *tok;
    size_t text_max;
    struct shm_cell_pool pool;
    shm_ring_t ev, ctl, conn_ring[SHM_PIPE_MAX_INGRESS];
    shm_ring_t tls_out[SHM_PIPE_MAX_INGRESS], tls_ack[SHM_PIPE_MAX_INGRESS];
    unsigned n_ingress;
    int32_t ing_seen[SHM_PIPE_MAX_INGRESS]; /* ingress pids, to notice a restart */
    uint64_t *scan_keys;             /* MAX_CONNS: ingress_check's scratch */
    uint64_t up_ns;                  /* when this process started serving */
    bool restarted;                  /* a previous egress served this pipe */
    shm_bell_efd_t bell, ing_bell[SHM_PIPE_MAX_INGRESS];
    bool ing_bell_ok[SHM_PIPE_MAX_INGRESS], ring_ing[SHM_PIPE_MAX_INGRESS];
    shm_bell_ec_t bat_bell;
    bool ring_bat;
    struct io_uring ring;
    uint64_t bell_buf;
    bool bell_armed, fdpass_armed, fdpass_dead;
    struct __kernel_timespec tick_ts;

    struct rs *rs;
    uint32_t n_rs, rs_free, rs_active, n_waiting, *rs_hash, rs_mask;
    struct conn *conns;
    uint32_t conn_free, n_conns, n_sending, *conn_hash, conn_mask;
    bool retry_pending;

    const char *model_id, *fp;
    uint64_t write_timeout_ns;
    uint64_t now;
    uint64_t id_seq, id_salt;
    /* Access log lines waiting for one write(): flushed before egress
     * sleeps, when the next line might not fit, when the oldest is
     * LOG_FLUSH_NS old, and at exit (a write per response was a third of
     * egress's CPU under wrk). A crash loses what is here. */
    char logbuf[16384];
    uint32_t log_len;
    uint64_t log_first_ns;

    /* FAVO_EGR_KCHECK=1 (tests): every kbase is also read from the
     * kernel and compared (egr stage inv 6); two syscalls per response */
    bool kcheck;
    uint64_t kcheck_ok, kcheck_bad;

    struct egr_tr *tr, tr_cur;     /* FAVO_EGR_TRACE; NULL: off */
    uint32_t tr_n;
    int tr_fd;
};

static inline uint64_t ud_make(unsigned op, uint32_t idx, uint32_t gen)
{
    return ((uint64_t)op << 56) | ((uint64_t)(idx & 0xffffffu) << 32) | gen;
}

static inline uint32_t hash64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return (uint32_t)x;
}

static struct io_uring_sqe *sqe_get(struct egr *E)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&E->ring);

    if (!sqe) {
        io_uring_submit(&E->ring);
        sqe = io_uring_get_sqe(&E->ring);
    }
    FAVO_ASSERT(sqe != NULL); /* a submit frees every SQ entry */
    return sqe;
}

/* ------------------------------------------------------------- stats */

static void st_add(struct egr *E, enum shm_stats_counter c)
{
    if (E->cfg->stats_w)
        shm_stats_add(E->cfg->stats_w, c, 1);
}

static void st_obs(struct egr *E, enum shm_stats_hist_id h, uint64_t ns)
{
    if (E->cfg->stats_w)
        shm_stats_observe(E->cfg->stats_w, h, ns);
}

/* ----------------------------------------------------------- connections */

static struct conn *conn_find(struct egr *E, uint64_t key)
{
    uint32_t i = E->conn_hash[hash64(key >> 24) & E->conn_mask];

    for (; i != NONE; i = E->conns[i].hnext)
        if ((E->conns[i].key >> 24) == (key >> 24))
            return &E->conns[i];
    return NULL;
}

static void conn_unmap(struct egr *E, struct conn *c)
{
    uint32_t *p = &E->conn_hash[hash64(c->key >> 24) & E->conn_mask], idx = (uint32_t)(c - E->conns);

    if (!c->mapped)
        return;
    while (*p != idx) {
        FAVO_ASSERT(*p != NONE);
        p = &E->conns[*p].hnext;
    }
    *p = c->hnext;
    c->mapped = 0;
}

/* TLS: ask ingress to close the connection now (it holds the socket and
 * the chunk in flight, which it then answers -EPIPE). */
static void conn_abort(struct egr *E, struct conn *c)
{
    unsigned w = (unsigned)(c->key >> 48) & 0xffu;
    struct shm_conn_msg *m;

    c->abort_due = 0;
    if (w >= E->n_ingress)
        return;
    if (!(m = shm_ring_reserve(&E->conn_ring[w]))) {
        c->abort_due = 1; /* retried on the tick */
        E->retry_pending = true;
        return;
    }
    memset(m, 0, sizeof(*m));
    m->conn = c->key;
    m->what = SHM_CONN_ABORT;
    shm_ring_commit(&E->conn_ring[w]);
    E->ring_ing[w] = true;
}

static void conn_shut(struct egr *E, struct conn *c)
{
    if (c->tls && !c->shut) {
        /* no socket here: ingress stops a chunk in flight; otherwise the
         * CLOSED message after the last response closes it */
        c->shut = 1;
        if (c->sending)
            conn_abort(E, c);
        return;
    }
    if (!c->shut && c->fd >= 0) {
        /* Ends the connection for ingress too (same socket): a send in
         * flight completes with an error, a parked recv sees EOF. */
        shutdown(c->fd, SHUT_RDWR);
        c->shut = 1;
    }
}

/* Close and free a slot with no responses and no send in flight. */
static void conn_release(struct egr *E, struct conn *c)
{
    FAVO_ASSERT(c->head == NONE && c->sending == 0); /* egr stage inv 1, 2 */
    conn_unmap(E, c);
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->key = 0;
    c->gen++;
    c->hnext = E->conn_free;
    E->conn_free = (uint32_t)(c - E->conns);
    E->n_conns--;
}

static void rs_gone(struct egr *E, struct rs *r, bool timeout);
static void conn_fail(struct egr *E, struct conn *c, bool timeout);
static void rs_resume_conn(struct egr *E, uint64_t key);

static int32_t ing_pid_of(const struct egr *E, uint64_t key)
{
    unsigned w = (unsigned)(key >> 48) & 0xffu;

    if (w >= SHM_PIPE_MAX_INGRESS)
        return 0;
    return (int32_t)ck_pr_load_32((const uint32_t *)&E->pipe->hdr->up_pid[SHM_PIPE_INGRESS][w]);
}

/* A connection slot of ingress was reused, or the same key came again. */
static void conn_add(struct egr *E, uint64_t key, int fd)
{
    struct conn *c = conn_find(E, key);
    uint32_t i;

    if (c && c->key == key) {
        if (fd >= 0)
            close(fd); /* the same socket again (a re-send): keep ours */
        return;
    }
    if (c) {
        /* ingress reused that connection's slot: it closed the old one
         * (then its answers fail on their own), or it is a restarted
         * ingress that never knew it (then they still have a client):
         * either way the old one finishes what it has and closes */
        conn_unmap(E, c);
        if (c->head == NONE && !c->sending)
            conn_release(E, c);
        else
            c->orphan = 1;
    }
    if (E->conn_free == NONE) {
        favo_warn("egress: connection table full (%u): refusing a socket", MAX_CONNS);
        if (fd >= 0)
            close(fd);
        return;
    }
    i = E->conn_free;
    c = &E->conns[i];
    E->conn_free = c->hnext;
    E->n_conns++;
    c->key = key;
    c->fd = fd;
    c->head = c->tail = NONE;
    c->sending = 0;
    c->shut = c->timed_out = c->orphan = c->abort_due = 0;
    c->tls = (key & SHM_CONN_F_TLS) != 0; /* fd is -1: ingress encrypts and sends */
    /* a socket that reaches a restarted egress may have carried a dead
     * egress's answers: learnt at its first send (conn_kbase) */
    c->out = 0;
    c->out_state = E->restarted ? OUT_UNKNOWN : OUT_KNOWN;
    c->ing_pid = ing_pid_of(E, key);
    c->hnext = E->conn_hash[hash64(key >> 24) & E->conn_mask];
    E->conn_hash[hash64(key >> 24) & E->conn_mask] = i;
    c->mapped = 1;
    if (E->n_waiting)
        rs_resume_conn(E, key);
}

/* Take every socket waiting on the fdpass socket (non-blocking). */
static void fdpass_drain(struct egr *E)
{
    int fd, rc;
    uint64_t key;

    if (E->fdpass_dead || E->cfg->fdpass_sock < 0)
        return;
    for (;;) {
        rc = shm_fdpass_recv(E->cfg->fdpass_sock, &fd, &key, sizeof(key));
        if (rc == -EAGAIN || rc == -EWOULDBLOCK)
            return;
        if (rc == -EPIPE || rc == -ECONNRESET) {
            favo_warn("egress: the socket handoff from ingress closed; no new connections "
                      "until a new one is given");
            E->fdpass_dead = true;
            return;
        }
        if (rc == -EBADMSG) {
            favo_warn("egress: malformed socket handoff record dropped");
            continue;
        }
        if (rc < 0) {
            favo_warn("egress: socket handoff: %s; no longer watched", strerror(-rc));
            E->fdpass_dead = true;
            return;
        }
        if (key == 0) {
            favo_warn("egress: socket handoff with conn key 0 dropped");
            close(fd);
            continue;
        }
        conn_add(E, key, fd);
    }
}

static void arm_fdpass(struct egr *E)
{
    struct io_uring_sqe *sqe;

    if (E->fdpass_armed || E->fdpass_dead || E->cfg->fdpass_sock < 0)
        return;
    sqe = sqe_get(E);
    io_uring_prep_poll_add(sqe, E->cfg->fdpass_sock, POLLIN);
    io_uring_sqe_set_data64(sqe, ud_make(OP_FDPASS, 0, 0));
    E->fdpass_armed = true;
}

static void arm_bell(struct egr *E)
{
    struct io_uring_sqe *sqe;

    if (E->bell_armed)
        return;
    sqe = sqe_get(E);
    io_uring_prep_read(sqe, E->cfg->bell_efd, &E->bell_buf, sizeof(E->bell_buf), 0);
    io_uring_sqe_set_data64(sqe, ud_make(OP_BELL, 0, 0));
    E->bell_armed = true;
}

static void arm_tick(struct egr *E)
{
    struct io_uring_sqe *sqe = sqe_get(E);

    E->tick_ts.tv_sec = 0;
    E->tick_ts.tv_nsec = (long long)TICK_MS * 1000000;
    io_uring_prep_timeout(sqe, &E->tick_ts, 0, 0);
    io_uring_sqe_set_data64(sqe, ud_make(OP_TICK, 0, 0));
}

/* ------------------------------------------------------------- responses */

static uint32_t rs_find(struct egr *E, shm_cell_ref_t cell)
{
    uint32_t i = E->rs_hash[hash64(cell) & E->rs_mask];

    for (; i != NONE; i = E->rs[i].hnext)
        if (E->rs[i].cell == cell)
            return i;
    return NONE;
}

static void rs_retry_later(struct egr *E, struct rs *r)
{
    r->retry = 1;
    E->retry_pending = true;
}

/* Ask the batcher to stop generating (egr stage inv 3: once). */
static void rs_cancel(struct egr *E, struct rs *r)
{
    struct egr_stage_state *st = r->st;
    struct shm_ctl m = { .cell = r->cell, .id = st->ev_id, .kind = 1 };

    if (st->flags & (EGR_SF_CANCEL_SENT | EGR_SF_FINAL))
        return;
    if (shm_ring_enqueue(&E->ctl, &m) < 0) {
        st->flags |= EGR_SF_CANCEL_WANT;
        rs_retry_later(E, r);
        return;
    }
    st->flags = (uint16_t)((st->flags & ~EGR_SF_CANCEL_WANT) | EGR_SF_CANCEL_SENT);
    E->ring_bat = true;
}

/* The client is gone (send error, write timeout, no socket): no more
 * bytes; cancel once; keep the state until FINISH/ERROR (inv 1). */
static void rs_gone(struct egr *E, struct rs *r, bool timeout)
{
    struct egr_stage_state *st = r->st;

    if (st->flags & EGR_SF_GONE)
        return;
    st->flags |= EGR_SF_GONE | EGR_SF_CLOSE | (timeout ? EGR_SF_TIMEOUT : 0);
    rs_cancel(E, r);
    if (r->conn != NONE)
        conn_fail(E, &E->conns[r->conn], timeout);
}

/* The connection is unusable: shut it down; every response queued on it
 * has lost its client. */
static void conn_fail(struct egr *E, struct conn *c, bool timeout)
{
    if (c->shut)
        return;
    conn_shut(E, c);
    for (uint32_t i = c->head; i != NONE; i = E->rs[i].cnext)
        rs_gone(E, &E->rs[i], timeout);
}

static bool rs_sending(const struct egr *E, const struct rs *r)
{
    const struct conn *c;

    if (r->conn == NONE)
        return false;
    c = &E->conns[r->conn];
    return c->sending && c->head == (uint32_t)(r - E->rs);
}

/* A request id we may echo in a header: no control characters (no
 * response splitting, whatever ingress let through). */
static bool rid_safe(const char *s)
{
    for (; *s; s++)
        if (((unsigned char)*s < 0x20 && *s != '\t') || *s == 0x7f)
            return false;
    return true;
}

/* Replace whatever the area holds with an error response, if nothing of
 * the response has left yet; otherwise the connection must be closed. */
static void rs_error(struct egr *E, struct rs *r, unsigned status, uint32_t retry_after)
{
    struct egr_stage_state *st = r->st;
    const struct shm_req *q = r->req;
    char rid[SHM_REQ_ID_MAX + 1], extra[SHM_REQ_ID_MAX + 20];
    struct egr_error e = { 0 };
    bool rid_ok = q->reqid_len > 0 && q->reqid_len <= SHM_REQ_ID_MAX;
    int n;

    if (st->flags & (EGR_SF_ERROR | EGR_SF_GONE))
        return;
    st->flags |= EGR_SF_ERROR;
    st->status = (uint16_t)status;
    if (st->sent || rs_sending(E, r)) {
        rs_gone(E, r, false);
        return;
    }
    if (rid_ok) {
        memcpy(rid, q->reqid, q->reqid_len);
        rid[q->reqid_len] = '\0';
        rid_ok = strlen(rid) == q->reqid_len && rid_safe(rid);
    }
    e.status = (uint16_t)status;
    e.keep_alive = !(q->flags & SHM_REQ_F_CLOSE);
    e.retry_after = status == 503 ? (retry_after ? retry_after : 1) : 0;
    if (rid_ok && q->reqid_len < EGR_ID_MAX) {
        e.request_id = rid;
    } else if (rid_ok) {
        snprintf(extra, sizeof(extra), "X-Request-Id: %s\r\n", rid);
        e.extra = extra;
    }
    n = egr_error_response(r->area, r->cap, &e);
    if (n == -EINVAL) { /* a request id egr_head refuses: answer without it */
        e.request_id = NULL;
        e.extra = NULL;
        n = egr_error_response(r->area, r->cap, &e);
    }
    egr_scrub_mark(&r->hwm, &st->resp, n < 0 ? n : 0, r->cap);
    if (n < 0) {
        favo_warn("egress: cannot write a %u response: %s", status, strerror(-n));
        rs_gone(E, r, false);
        return;
    }
    /* the area now holds the error instead of whatever was pending (the
     * resp struct is only used for its pending count from here on) */
    st->resp.pending = (uint32_t)n;
    egr_scrub_mark(&r->hwm, &st->resp, 0, r->cap);
    if (!e.keep_alive)
        st->flags |= EGR_SF_CLOSE;
    rs_cancel(E, r);
}

/* A response egr cannot produce (-ENOBUFS, -E2BIG, ...). */
static void rs_lost(struct egr *E, struct rs *r, int rc)
{
    favo_warn("egress: response for cell %#" PRIx64 " lost: %s", (uint64_t)r->cell,
              strerror(-rc));
    rs_error(E, r, 500, 0);
}

static void id_for(struct egr *E, const struct shm_req *q, char *out, size_t cap)
{
    const char *pre = q->route == SHM_REQ_CHAT ? "chatcmpl-" : "cmpl-";
    size_t pl = strlen(pre), n = q->reqid_len;
    bool ok = n > 0 && n <= SHM_REQ_ID_MAX && pl + n < cap;

    for (size_t i = 0; ok && i < n; i++) {
        char ch = q->reqid[i];
        ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
             ch == '-' || ch == '_' || ch == '.';
    }
    if (ok) {
        memcpy(out, pre, pl);
        memcpy(out + pl, q->reqid, n);
        out[pl + n] = '\0';
    } else {
        uint64_t x = (++E->id_seq) * 0x9e3779b97f4a7c15ull ^ E->id_salt;
        snprintf(out, cap, "%s%016" PRIx64, pre, x ^ (x >> 29));
    }
}

/* The model a response names: the specialist the request asked for (as
 * vLLM echoes the served name it was sent), else the loaded model. */
static const char *resp_model(const struct egr *E, const struct shm_req *q)
{
    return q->spec[0] && memchr(q->spec, 0, sizeof(q->spec)) ? q->spec : E->model_id;
}

/* egr_resp_init from the shm_req copy (START, or adopting a cell). */
static void rs_start(struct egr *E, struct rs *r)
{
    struct egr_stage_state *st = r->st;
    const struct shm_req *q = r->req;
    struct egr_resp_cfg rc = { 0 };
    const char *stops[SHM_REQ_NSTOP];
    size_t stop_lens[SHM_REQ_NSTOP];
    char id[EGR_ID_MAX], rid[SHM_REQ_ID_MAX + 1], extra[SHM_REQ_ID_MAX + 20];
    unsigned ns = 0;
    int n;

    if (st->flags & (EGR_SF_STARTED | EGR_SF_ERROR | EGR_SF_GONE))
        return;
    for (unsigned i = 0; i < q->nstop && i < SHM_REQ_NSTOP; i++) {
        /* spans lie in the request bytes, before the ids */
        if (q->stop[i].len == 0 || q->stop[i].off > q->tok_off ||
            q->stop[i].len > q->tok_off - q->stop[i].off) {
            favo_warn("egress: stop span %u of cell %#" PRIx64 " outside the request bytes",
                      i, (uint64_t)r->cell);
            rs_error(E, r, 500, 0);
            return;
        }
        stops[ns] = r->cellp + q->stop[i].off;
        stop_lens[ns++] = q->stop[i].len;
    }
    id_for(E, q, id, sizeof(id));
    rc.route = q->route == SHM_REQ_CHAT ? EGR_CHAT : EGR_COMPLETIONS;
    rc.stream = !!(q->flags & SHM_REQ_F_STREAM);
    rc.include_usage = !!(q->flags & SHM_REQ_F_USAGE);
    rc.keep_alive = !(q->flags & SHM_REQ_F_CLOSE);
    rc.max_tokens = q->max_tokens;
    rc.prompt_tokens = q->ntok;
    rc.created = q->created;
    rc.id = id;
    rc.model = resp_model(E, q);
    rc.fingerprint = E->fp;
    if (q->reqid_len > 0 && q->reqid_len <= SHM_REQ_ID_MAX) {
        memcpy(rid, q->reqid, q->reqid_len);
        rid[q->reqid_len] = '\0';
        if (strlen(rid) == q->reqid_len && rid_safe(rid)) {
            if (q->reqid_len < EGR_ID_MAX) {
                rc.request_id = rid;
            } else {
                snprintf(extra, sizeof(extra), "X-Request-Id: %s\r\n", rid);
                rc.extra_head = extra;
            }
        }
    }
    rc.stops = stops;
    rc.stop_lens = stop_lens;
    rc.n_stops = ns;
    rc.logprobs = q->logprobs;
    rc.top_logprobs = (uint8_t)FAVO_MIN(q->top_logprobs, EGR_TOP_MAX);
    n = egr_resp_init(&st->resp, &rc, r->area, r->cap);
    egr_scrub_mark(&r->hwm, &st->resp, n < 0 ? n : 0, r->cap);
    if (n == -EINVAL && (rc.request_id || rc.extra_head)) {
        rc.request_id = NULL; /* an id egr_head refuses: answer without the echo */
        rc.extra_head = NULL;
        n = egr_resp_init(&st->resp, &rc, r->area, r->cap);
        egr_scrub_mark(&r->hwm, &st->resp, n < 0 ? n : 0, r->cap);
    }
    if (n >= 0 && rc.logprobs && !r->lp_end)
        n = -ENOBUFS; /* no room for the records: the batcher answers 413 */
    if (n < 0) {
        favo_warn("egress: starting the response for cell %#" PRIx64 ": %s",
                  (uint64_t)r->cell, strerror(-n));
        memset(&st->resp, 0, sizeof(st->resp));
        rs_error(E, r, 500, 0);
        return;
    }
    st->flags |= EGR_SF_STARTED;
    st->status = 200;
    if (!rc.keep_alive)
        st->flags |= EGR_SF_CLOSE;
}

/* Generated id k's logprob data from the cell's records (shm_pipe.h),
 * which the batcher wrote before the event that counted k (pipe inv 2).
 * -EPROTO when the record does not name id k (never written): the
 * response is lost rather than answered with made-up numbers. */
static int rs_lp(const struct rs *r, uint32_t k, int32_t id, struct egr_lp *lp)
{
    const struct shm_req *q = r->req;
    uint32_t n_alt = r->n_alt;
    const struct shm_lp_rec *rec;

    if (!r->lp_end || k >= q->max_tokens)
        return -EPROTO;
    /* read in place (8-aligned: the records end the cell; no stack copy
     * holding ids to scrub) */
    rec = (const struct shm_lp_rec *)(r->cellp + shm_pipe_lp_at(r->size, n_alt, k));
    if (rec[0].id != id)
        return -EPROTO;
    lp->logprob = rec[0].logprob;
    lp->n_top = 0;
    for (uint32_t j = 0; j < n_alt && j < EGR_TOP_MAX && rec[1 + j].id >= 0; j++) {
        lp->top_id[j] = rec[1 + j].id;
        lp->top_lp[j] = rec[1 + j].logprob;
        lp->n_top++;
    }
    return 0;
}

/* Feed ids [consumed, n_gen) while the area has room; end the response
 * once FINISH said so and every id is in. */
static void rs_feed(struct egr *E, struct rs *r)
{
    struct egr_stage_state *st = r->st;
    struct egr_resp *p = &st->resp;
    int rc;

    if (!(st->flags & EGR_SF_STARTED) || (st->flags & (EGR_SF_ERROR | EGR_SF_GONE)))
        return;
    while (st->consumed < st->n_gen && p->state != RESP_DONE) {
        uint32_t before = p->text_off;

        struct egr_lp lp;
        int32_t id = r->ids[st->consumed];
        if (p->logprobs && (rc = rs_lp(r, st->consumed, id, &lp)) < 0) {
            rs_lost(E, r, rc);
            return;
        }
        rc = egr_resp_token_lp(p, E->tok, id, p->logprobs ? &lp : NULL, r->area, r->cap);
        egr_scrub_mark(&r->hwm, p, rc < 0 ? rc : 0, r->cap);
        if (p->logprobs)
            explicit_bzero(&lp, sizeof(lp));
        if (rc == -EAGAIN)
            return; /* the send completion comes back here */
        if (rc < 0) {
            rs_lost(E, r, rc);
            return;
        }
        st->consumed++;
        if (!before && p->text_off && !st->first_ns)
            r->first_pending = 1;
        if (rc & EGR_CANCEL)
            rs_cancel(E, r);
    }
    if ((st->flags & EGR_SF_FINAL) && p->state != RESP_DONE && st->consumed >= st->n_gen) {
        if (st->fin_reason == SHM_FIN_CANCELLED) {
            /* cancelled, and not by our stop string: the client left
             * (ingress saw it) or the batcher gave up; either way the
             * response cannot be completed honestly */
            rs_gone(E, r, false);
            return;
        }
        rc = egr_resp_finish_tok(p, E->tok,
                                 st->fin_reason == SHM_FIN_LENGTH ? EGR_FIN_LENGTH : EGR_FIN_STOP,
                                 r->area, r->cap);
        egr_scrub_mark(&r->hwm, p, rc < 0 ? rc : 0, r->cap);
        if (rc == -EAGAIN)
            return;
        if (rc < 0)
            rs_lost(E, r, rc);
        else if (!st->first_ns && p->text_off)
            r->first_pending = 1;
    }
    if (p->state == RESP_DONE && !st->first_ns)
        r->first_pending = 1; /* no text at all (the first token ended it):
                                 the first output is the finishing chunk */
}

static void conn_kick(struct egr *E, struct conn *c);
static void rs_complete(struct egr *E, uint32_t i);

static bool rs_finished(const struct egr *E, const struct rs *r)
{
    const struct egr_stage_state *st = r->st;

    if (!(st->flags & EGR_SF_FINAL) || rs_sending(E, r)) /* egr stage inv 1 */
        return false;
    if (st->flags & EGR_SF_GONE)
        return true;
    if (st->flags & EGR_SF_ERROR)
        return st->resp.pending == 0;
    return st->resp.state == RESP_DONE && st->resp.pending == 0;
}

/* Move one response forward as far as it goes now. */
static void rs_progress(struct egr *E, uint32_t i)
{
    struct rs *r = &E->rs[i];

    rs_feed(E, r);
    if (r->conn != NONE && !(r->st->flags & EGR_SF_GONE))
        conn_kick(E, &E->conns[r->conn]);
    if (rs_finished(E, r))
        rs_complete(E, i);
}


/* Is there a valid request copy of `cell` at off? Every field used to
 * find things in the cell is checked against the cell's size. */
static const struct shm_req *req_at(const char *data, size_t size, uint64_t off,
                                    shm_cell_ref_t cell)
{
    const struct shm_req *q;

    if (off % 64 || off + SHM_PIPE_REQ_COPY + EGR_STAGE_STATE_BYTES + 4096 > size)
        return NULL;
    q = (const struct shm_req *)(data + off);
    if (q->magic != SHM_REQ_MAGIC || q->cell != cell || q->resp_off != off ||
        shm_pipe_resp_off(q->tok_off, q->ntok, q->max_tokens) != off ||
        (q->route != SHM_REQ_CHAT && q->route != SHM_REQ_COMPLETIONS) ||
        q->worker >= SHM_PIPE_MAX_INGRESS)
        return NULL;
    return q;
}

/*
 * Where the request copy is. shm_ev names only the cell, so egress reads
 * resp_off from the cell descriptor's len, which ingress sets to resp_off
 * + SHM_PIPE_REQ_COPY just before the handoff (ing_route.c). The copy is
 * verified (magic, its own cell reference, resp_off consistent with the
 * ids) before anything in it is followed; if len does not lead to it, the
 * 64-aligned offsets are scanned from the top (the copy is the highest
 * match: everything above it is egress's own area).
 */
static const struct shm_req *req_find(struct egr *E, shm_cell_ref_t cell, const char *data,
                                      size_t size)
{
    const struct shm_cell_class *k = &E->pool.hdr->classes[shm_cell_ref_class(cell)];
    const struct shm_cell_desc *d =
        (const struct shm_cell_desc *)(E->pool.base + k->desc_off) + shm_cell_ref_index(cell);
    uint32_t len = ck_pr_load_32(&d->len);
    const struct shm_req *q = NULL;

    if (len >= SHM_PIPE_REQ_COPY)
        q = req_at(data, size, len - SHM_PIPE_REQ_COPY, cell);
    for (uint64_t off = size & ~63ull; !q && off >= 64; off -= 64)
        q = req_at(data, size, off, cell);
    return q;
}

/* Bytes the application has written on a TCP socket since it opened:
 * acknowledged by the peer plus still queued (unacknowledged or unsent).
 * The two counts come from two calls, and an ACK landing between them
 * moves bytes from one to the other: so the queue is read on both sides
 * of TCP_INFO and the sum taken only when it did not move (no writer runs
 * meanwhile: the caller owns the socket's output). An empty queue cannot
 * move (nothing to acknowledge). Two or three syscalls: only a restarted
 * egress asks (once per connection it adopts, egr stage inv 6), and
 * FAVO_EGR_KCHECK. */
static int k_written(int fd, uint64_t *out)
{
    struct tcp_info ti;
    socklen_t len;
    int q0 = 0, q1 = 0;

    for (unsigned tries = 0; tries < 8; tries++) {
        len = sizeof(ti);
        memset(&ti, 0, sizeof(ti));
        if (ioctl(fd, SIOCOUTQ, &q0) < 0 || q0 < 0 ||
            getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0 ||
            len < offsetof(struct tcp_info, tcpi_bytes_acked) + sizeof(ti.tcpi_bytes_acked))
            return -errno ? -errno : -EINVAL;
        if (q0 && (ioctl(fd, SIOCOUTQ, &q1) < 0 || q1 < 0))
            return -errno ? -errno : -EINVAL;
        if (!q0 || q1 == q0) {
            *out = ti.tcpi_bytes_acked + (uint64_t)q0;
            return 0;
        }
    }
    return -EAGAIN; /* acknowledgements kept landing: no exact count */
}

static void rs_link_conn(struct egr *E, uint32_t i)
{
    struct rs *r = &E->rs[i];
    struct conn *c = conn_find(E, r->req->conn);

    if (!c || c->key != r->req->conn) {
        /* the fd is sent before the request is enqueued: take what waits */
        fdpass_drain(E);
        c = conn_find(E, r->req->conn);
    }
    if ((!c || c->key != r->req->conn) && (r->req->conn & SHM_CONN_F_TLS)) {
        /* TLS without kernel TLS: no socket ever comes; ingress sends */
        conn_add(E, r->req->conn, -1);
        c = conn_find(E, r->req->conn);
    }
    if (!c || c->key != r->req->conn || c->shut) {
        r->conn = NONE;
        return;
    }
    r->conn = (uint32_t)(c - E->conns);
    r->cnext = NONE;
    if (c->tail == NONE)
        c->head = i;
    else
        E->rs[c->tail].cnext = i;
    c->tail = i;
}

/* Is fd a TCP socket with no upper-layer protocol (no kernel TLS, whose
 * counts are of ciphertext)? One syscall; restart paths only. */
static bool sock_plain(int fd)
{
    char ulp[16] = "";
    socklen_t len = sizeof(ulp);

    return getsockopt(fd, IPPROTO_TCP, TCP_ULP, ulp, &len) == 0 && ulp[0] == '\0';
}

/* A resumed response found its socket. A send of it was in flight when
 * the previous egress died: the kernel's count of bytes written on the
 * connection, minus the count before this response (kbase) and what was
 * confirmed sent, is exactly how much of that send left (mod 2^31, inv
 * 6); consume it and go on. When that cannot be known (no kbase, kernel
 * TLS, a count that does not fit), the client is treated as gone. Then
 * the connection's own count is taken from the cell, so the responses
 * after this one need no syscall either. */
static void rs_fix_inflight(struct egr *E, struct rs *r)
{
    struct egr_stage_state *st = r->st;
    struct conn *c = &E->conns[r->conn];
    uint64_t now, took;

    if (c->tls)
        return; /* ingress sends: a chunk in flight is sent again (rs_adopt) */
    if (st->inflight) {
        if ((st->flags & EGR_SF_KBASE) && sock_plain(c->fd) && k_written(c->fd, &now) == 0 &&
            (took = (now - st->kbase - st->sent) & SHM_REQ_OUT_MASK) <= st->inflight) {
            favo_info("egress: cell %#" PRIx64 ": %" PRIu64 " of the %u bytes in flight at the "
                      "restart had left; resuming after them", (uint64_t)r->cell, took,
                      st->inflight);
            egr_resp_consume(&st->resp, r->area, (size_t)took);
            st->sent += took;
            st->inflight = 0;
        } else {
            st->inflight = 0;
            favo_info("egress: cell %#" PRIx64 ": the kernel's count does not match: closing",
                      (uint64_t)r->cell);
            rs_gone(E, r, false);
            return;
        }
    }
    if ((st->flags & EGR_SF_KBASE) && c->out_state == OUT_UNKNOWN) {
        c->out = (st->kbase - (r->req->conn_out & SHM_REQ_OUT_MASK) + st->sent) & SHM_REQ_OUT_MASK;
        c->out_state = OUT_KNOWN;
    }
}

/* Map a cell this process has no slot for (START, or any event after a
 * restart: a valid state in the cell is resumed). NONE when the cell is
 * stale (a replayed event, inv 4) or its request copy is unusable. */
static uint32_t rs_adopt(struct egr *E, shm_cell_ref_t cell, unsigned kind)
{
    const struct shm_req *q;
    struct egr_stage_state *st;
    bool resume;
    struct rs *r;
    size_t size;
    void *data;
    uint32_t i, h;

    if (shm_cell_bytes(&E->pool, cell, &data, &size) < 0)
        return NONE;
    q = req_find(E, cell, data, size);
    if (!q) {
        favo_warn("egress: event %u for cell %#" PRIx64 " without a valid request copy",
                  kind, (uint64_t)cell);
        return NONE;
    }
    if (E->rs_free == NONE) {
        favo_err("egress: response table full (%u)", E->n_rs); /* sized to the pool */
        return NONE;
    }
    i = E->rs_free;
    r = &E->rs[i];
    E->rs_free = r->hnext;
    memset(r, 0, sizeof(*r));
    r->cell = cell;
    r->cellp = data;
    r->req = q;
    r->ids = (const int32_t *)(r->cellp + q->tok_off) + q->ntok;
    r->st = st = (struct egr_stage_state *)(r->cellp + q->resp_off + SHM_PIPE_REQ_COPY);
    r->area = r->cellp + q->resp_off + SHM_PIPE_REQ_COPY + EGR_STAGE_STATE_BYTES;
    r->cap = size - (q->resp_off + SHM_PIPE_REQ_COPY + EGR_STAGE_STATE_BYTES);
    /* logprob records at the end of the cell (shm_pipe.h): not ours */
    r->size = size;
    r->n_alt = shm_pipe_lp_alts(q->logprobs, q->top_logprobs);
    uint64_t lpb = shm_pipe_lp_bytes(q->max_tokens, r->n_alt);
    if (lpb && lpb + 4096 <= r->cap) {
        r->cap -= lpb;
        r->lp_end = r->cellp + size;
    }
    h = hash64(cell) & E->rs_mask;
    r->hnext = E->rs_hash[h];
    E->rs_hash[h] = i;
    E->rs_active++;
    resume = st->magic == EGR_STAGE_MAGIC;
    r->hwm = resume ? r->cap : 0; /* a fresh area is all zero (cell inv 2) */
    if (!resume) {
        memset(st, 0, sizeof(*st));
        st->magic = EGR_STAGE_MAGIC;
    } else {
        favo_info("egress: resuming the response of cell %#" PRIx64 " (%u ids in, %" PRIu64
                  " bytes sent)", (uint64_t)cell, st->consumed, st->sent);
        if (st->flags & EGR_SF_CANCEL_WANT)
            rs_retry_later(E, r);
    }
    rs_link_conn(E, i);
    if (resume && st->inflight && (q->conn & SHM_CONN_F_TLS)) {
        /* a TLS chunk was with ingress: nothing was consumed for it, so
         * it is sent again under the same (cell, seq); ingress answers a
         * chunk it knows without encrypting it twice (shm_pipe.h "TLS") */
        st->inflight = 0;
    }
    if (resume && st->inflight && !(st->flags & EGR_SF_KBASE)) {
        /* the previous egress died with a send in flight and no record of
         * the kernel's count: how much reached the client is unknown */
        st->inflight = 0;
        favo_info("egress: cell %#" PRIx64 " had a send in flight: closing its connection",
                  (uint64_t)cell);
        rs_gone(E, r, false);
    }
    if (resume && r->conn != NONE)
        rs_fix_inflight(E, r);
    if ((resume || (E->restarted && E->now - E->up_ns < RESUME_GRACE_NS)) && r->conn == NONE &&
        !(st->flags & EGR_SF_GONE)) {
        /* ingress re-sends the socket (header: restart): a resumed answer,
         * or a new one whose socket the previous egress had received */
        r->wait_since = E->now;
        E->n_waiting++;
    } else if (r->conn == NONE && !(st->flags & EGR_SF_GONE)) {
        favo_info("egress: no socket for conn %#" PRIx64 ": treating the client as gone",
                  (uint64_t)q->conn);
        /* after START the id is known; before, FINISH/ERROR end it anyway */
        st->flags |= EGR_SF_GONE | EGR_SF_CLOSE;
    }
    return i;
}

static void rs_unlink(struct egr *E, uint32_t i)
{
    struct rs *r = &E->rs[i];
    uint32_t *p = &E->rs_hash[hash64(r->cell) & E->rs_mask];

    while (*p != i) {
        FAVO_ASSERT(*p != NONE);
        p = &E->rs[*p].hnext;
    }
    *p = r->hnext;
    if (r->wait_since)
        E->n_waiting--;
    if (r->conn != NONE) {
        struct conn *c = &E->conns[r->conn];
        uint32_t prev = NONE, j = c->head;

        while (j != i) {
            FAVO_ASSERT(j != NONE);
            prev = j;
            j = E->rs[j].cnext;
        }
        if (prev == NONE)
            c->head = r->cnext;
        else
            E->rs[prev].cnext = r->cnext;
        if (c->tail == i)
            c->tail = prev;
    }
    r->cell = SHM_CELL_REF_NONE;
    r->hnext = E->rs_free;
    E->rs_free = i;
    E->rs_active--;
}

/* A socket arrived: responses resumed after a restart that wait for it
 * go on. */
static void rs_resume_conn(struct egr *E, uint64_t key)
{
    for (uint32_t i = 0; i < E->n_rs && E->n_waiting; i++) {
        struct rs *r = &E->rs[i];
        if (r->cell == SHM_CELL_REF_NONE || !r->wait_since || r->req->conn != key)
            continue;
        r->wait_since = 0;
        E->n_waiting--;
        rs_link_conn(E, i);
        if (r->conn != NONE)
            rs_fix_inflight(E, r);
        if (r->conn != NONE)
            rs_progress(E, i);
    }
}

/* Startup: take over the responses a previous egress left in the cells
 * (a valid EGR_STAGE_MAGIC in a cell the batcher or egress owns). Their
 * events that the dead egress had not released are replayed by the ev
 * ring; those it had released are already applied in the cell. */
/* Call fn for every live request cell (owner batcher or egress) whose
 * request copy checks out; stops when fn returns false. A scan of the
 * descriptors: for restarts only, never per token. */
static void cells_each(struct egr *E,
                       bool (*fn)(struct egr *E, shm_cell_ref_t ref, char *data,
                                  const struct shm_req *q, void *arg),
                       void *arg)
{
    const struct shm_cell_pool_hdr *ph = E->pool.hdr;

    for (unsigned k = 0; k < ph->nclasses; k++) {
        const struct shm_cell_class *cl = &ph->classes[k];
        for (uint32_t idx = 0; idx < cl->ncells; idx++) {
            const struct shm_cell_desc *d =
                (const struct shm_cell_desc *)(E->pool.base + cl->desc_off) + idx;
            uint32_t owner = ck_pr_load_32(&d->owner);
            shm_cell_ref_t ref = shm_cell_ref(ck_pr_load_32(&d->gen), k, idx);
            const struct shm_req *q;
            size_t size;
            void *data;

            if ((owner != SHM_CELL_BATCHER && owner != SHM_CELL_EGRESS) ||
                shm_cell_bytes(&E->pool, ref, &data, &size) < 0 ||
                !(q = req_find(E, ref, data, size)))
                continue;
            if (!fn(E, ref, data, q, arg))
                return;
        }
    }
}

static bool scan_adopt(struct egr *E, shm_cell_ref_t ref, char *data, const struct shm_req *q,
                       void *arg)
{
    unsigned *n = arg;

    if (((const struct egr_stage_state *)(data + q->resp_off + SHM_PIPE_REQ_COPY))->magic !=
        EGR_STAGE_MAGIC)
        return true; /* not started here yet: its events will come */
    if (rs_find(E, ref) == NONE) {
        uint32_t i = rs_adopt(E, ref, 0);
        if (i != NONE) {
            (*n)++;
            /* a connection known already (a TLS one, or a socket taken
             * before the scan) goes on now, not at the next event: a TLS
             * chunk that was in flight is sent again */
            if (E->rs[i].conn != NONE)
                rs_progress(E, i);
        }
    }
    return true;
}

static unsigned rs_scan_cells(struct egr *E)
{
    unsigned n = 0;

    cells_each(E, scan_adopt, &n);
    return n;
}

/* FAVO_EGR_KCHECK: the kernel's count against ours (inv 6). */
static void kcheck(struct egr *E, const struct conn *c, const struct rs *r)
{
    uint64_t k;

    if (!sock_plain(c->fd) || k_written(c->fd, &k) < 0)
        return;
    if ((k & SHM_REQ_OUT_MASK) == r->st->kbase) {
        E->kcheck_ok++;
        return;
    }
    E->kcheck_bad++;
    favo_err("egress: kernel count check: conn %#" PRIx64 ": the kernel has %" PRIu64
             " bytes written (mod 2^31), egress counts %" PRIu64 " (ingress %u + egress %" PRIu64
             ")", (uint64_t)c->key, k & SHM_REQ_OUT_MASK, r->st->kbase,
             r->req->conn_out & SHM_REQ_OUT_MASK, c->out & SHM_REQ_OUT_MASK);
}

/* A response's first send on a socket: kbase, the bytes written on the
 * connection before it, from user-space counts (egr stage inv 6): what
 * ingress wrote (shm_req.conn_out) plus what this egress's sends put
 * there. A restarted egress learns the latter once per connection it
 * adopts: 0 when no earlier request on it came to egress, else the
 * kernel's count minus ingress's (ingress does not write while its
 * request is with egress); kernel TLS counts ciphertext: never. */
static void conn_kbase(struct egr *E, struct conn *c, struct rs *r)
{
    uint32_t ing = r->req->conn_out & SHM_REQ_OUT_MASK;
    uint64_t k;

    if (c->out_state == OUT_UNKNOWN) {
        if (!(r->req->conn_out & SHM_REQ_OUT_EGR)) {
            c->out = 0;
            c->out_state = OUT_KNOWN;
        } else if (sock_plain(c->fd) && k_written(c->fd, &k) == 0) {
            c->out = (k - ing) & SHM_REQ_OUT_MASK;
            c->out_state = OUT_KNOWN;
        } else {
            c->out_state = OUT_NEVER; /* a restart mid-send closes it */
        }
    }
    if (c->out_state != OUT_KNOWN)
        return;
    r->st->kbase = (ing + c->out) & SHM_REQ_OUT_MASK;
    r->st->flags |= EGR_SF_KBASE;
    if (E->kcheck)
        kcheck(E, c, r);
}

/* Send what the first response of the connection has ready (inv 2). */
static void conn_kick(struct egr *E, struct conn *c)
{
    struct io_uring_sqe *sqe;
    struct rs *r;
    uint32_t n;

    if (c->sending || c->shut || c->head == NONE)
        return;
    r = &E->rs[c->head];
    if (r->st->flags & EGR_SF_GONE)
        return;
    n = r->st->resp.pending;
    if (!n)
        return;
    if (c->tls) {
        /* ingress encrypts and sends; its ack is this send's completion */
        unsigned w = (unsigned)(c->key >> 48) & 0xffu;
        struct shm_tls_out *m = w < E->n_ingress ? shm_ring_reserve(&E->tls_out[w]) : NULL;

        if (!m) {
            if (w < E->n_ingress)
                rs_retry_later(E, r); /* ring full: the tick tries again */
            else
                rs_gone(E, r, false);
            return;
        }
        r->st->inflight = n; /* before the message: a restart sends it again */
        m->conn = c->key;
        m->cell = r->cell;
        m->seq = r->st->sent;
        m->off = (uint32_t)(r->area - r->cellp);
        m->len = n;
        shm_ring_commit(&E->tls_out[w]);
        E->ring_ing[w] = true;
    } else {
        if (!(r->st->flags & EGR_SF_KBASE) && r->st->sent == 0)
            conn_kbase(E, c, r); /* for a restarted egress (rs_fix_inflight) */
        /* egr stage inv 6: the response's count and the connection's agree */
        FAVO_ASSERT(!(r->st->flags & EGR_SF_KBASE) || c->out_state != OUT_KNOWN ||
                    (((r->req->conn_out & SHM_REQ_OUT_MASK) + c->out) & SHM_REQ_OUT_MASK) ==
                        ((r->st->kbase + r->st->sent) & SHM_REQ_OUT_MASK));
        sqe = sqe_get(E);
        io_uring_prep_send(sqe, c->fd, r->area, n, MSG_NOSIGNAL);
        io_uring_sqe_set_data64(sqe, ud_make(OP_SEND, (uint32_t)(c - E->conns), c->gen));
        r->st->inflight = n; /* for a restarted egress (rs_adopt) */
    }
    c->sending = n;
    c->send_ns = E->now;
    if (E->tr)
        E->tr_cur.nsend++;
    c->send_tok_ns = r->tok_ns;
    r->tok_ns = 0;
    E->n_sending++;
    if (r->first_pending) {
        r->st->first_ns = E->now;
        r->first_pending = 0;
    }
}

static void on_send(struct egr *E, struct conn *c, int res)
{
    uint32_t i = c->head, n = c->sending;
    uint64_t tok_ns = c->send_tok_ns;
    struct rs *r;

    FAVO_ASSERT(n && i != NONE); /* inv 2: a send is always the head's */
    c->sending = 0;
    c->send_tok_ns = 0;
    E->n_sending--;
    r = &E->rs[i];
    r->st->inflight = 0;
    if (c->shut || res == 0 || (res < 0 && res != -EAGAIN && res != -EINTR)) {
        if (res < 0 && res != -EPIPE && res != -ECONNRESET && !c->shut)
            favo_info("egress: send on conn %#" PRIx64 ": %s", (uint64_t)c->key,
                      strerror(-res));
        rs_gone(E, r, c->timed_out);
    } else if (res > 0) {
        FAVO_ASSERT((uint32_t)res <= n);
        egr_resp_consume(&r->st->resp, r->area, (size_t)res);
        r->st->sent += (uint64_t)res;
        c->out += (uint64_t)res; /* egr stage inv 6 (TLS: unused) */
        /* E->now: reap's clock, read after the submit in which this
         * send ran (inline), or drain_acks' for a TLS ack */
        if (tok_ns && E->now > tok_ns)
            st_obs(E, SHM_H_EGRESS, E->now - tok_ns);
    }
    rs_progress(E, i);
}

/* ---------------------------------------------------------- completion */

#define LOG_LINE_MAX 1024u            /* egr_log_line of any record fits */
#define LOG_FLUSH_NS 100000000ull     /* 100 ms */

static void log_flush(struct egr *E)
{
    uint32_t off = 0;

    while (off < E->log_len) {
        ssize_t n = write(E->cfg->log_fd, E->logbuf + off, E->log_len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            favo_warn("egress: access log write failed: %s", n < 0 ? strerror(errno) : "0 bytes");
            break;
        }
        off += (uint32_t)n;
    }
    E->log_len = 0;
}

static void access_log(struct egr *E, const struct rs *r, unsigned status)
{
    const struct egr_stage_state *st = r->st;
    const struct shm_req *q = r->req;
    struct egr_access a = { 0 };
    const char *model;
    int n;

    if (E->cfg->log_fd < 0)
        return;
    a.wall_ns = favo_wall_ns();
    memcpy(a.request_id, q->reqid, FAVO_MIN(q->reqid_len, (uint32_t)sizeof(a.request_id) - 1));
    memcpy(a.tenant, q->tenant_name,
           strnlen(q->tenant_name, FAVO_MIN(sizeof(q->tenant_name), sizeof(a.tenant) - 1)));
    model = resp_model(E, q);
    memcpy(a.model, model, strnlen(model, sizeof(a.model) - 1));
    a.status = (uint16_t)status;
    a.finish = (st->flags & EGR_SF_STARTED) ? st->resp.finish : EGR_FIN_NONE;
    a.prompt_tokens = q->ntok;
    a.completion_tokens = (st->flags & EGR_SF_STARTED) ? st->resp.completion_tokens : 0;
    a.queue_ns = st->start_ns > q->recv_ns ? st->start_ns - q->recv_ns : 0;
    a.ttft_ns = st->first_ns > q->recv_ns ? st->first_ns - q->recv_ns : 0;
    a.total_ns = E->now > q->recv_ns ? E->now - q->recv_ns : 0;
    if (sizeof(E->logbuf) - E->log_len < LOG_LINE_MAX)
        log_flush(E);
    n = egr_log_line(E->logbuf + E->log_len, sizeof(E->logbuf) - E->log_len, &a);
    if (n <= 0)
        return;
    if (!E->log_len)
        E->log_first_ns = E->now;
    E->log_len += (uint32_t)n;
}

/* Done: the response is complete or its client is gone, and the cell is
 * ours (inv 1). A slot on ingress's conn ring is reserved first (full:
 * nothing happens yet, the tick retries); then scrub, free, log, count,
 * and publish the conn message. */
static void rs_complete(struct egr *E, uint32_t i)
{
    struct rs *r = &E->rs[i];
    struct egr_stage_state *st = r->st;
    const struct shm_req *q = r->req;
    bool gone = st->flags & EGR_SF_GONE;
    struct conn *c = r->conn != NONE ? &E->conns[r->conn] : NULL;
    bool close_it = gone || (st->flags & EGR_SF_CLOSE) || (c && c->orphan && c->head == i &&
                                                            r->cnext == NONE);
    struct shm_conn_msg m = { .conn = q->conn, .what = close_it ? SHM_CONN_CLOSED : SHM_CONN_KEEP };
    unsigned w = q->worker, status;
    shm_cell_ref_t cell = r->cell;
    size_t area_off = (size_t)(r->area - r->cellp), hwm = r->hwm;
    size_t size = r->size;
    struct shm_conn_msg *slot = NULL;
    int rc;

    FAVO_ASSERT((st->flags & EGR_SF_FINAL) && !rs_sending(E, r)); /* egr stage inv 1 */
    if (w >= E->n_ingress) {
        favo_warn("egress: request of cell %#" PRIx64 " names ingress worker %u of %u",
                  (uint64_t)cell, w, E->n_ingress);
    } else if (!(slot = shm_ring_reserve(&E->conn_ring[w]))) {
        rs_retry_later(E, r);
        return;
    }
    if (close_it && c)
        conn_fail(E, c, false); /* nobody writes to it again */

    status = gone ? 499 : st->status ? st->status : 500;
    access_log(E, r, status);
    if (E->cfg->stats_w) {
        shm_stats_begin(E->cfg->stats_w);
        shm_stats_tenant_count(E->cfg->stats_w, q->tenant_name, sizeof(q->tenant_name), q->ntok,
                               (st->flags & EGR_SF_STARTED) ? st->resp.completion_tokens : 0, status);
        if (st->flags & EGR_SF_TIMEOUT)
            st_add(E, SHM_C_REQ_TIMEOUT);
        else if (gone)
            st_add(E, SHM_C_REQ_CANCELLED);
        else if (st->flags & EGR_SF_ERROR)
            st_add(E, SHM_C_REQ_ERROR);
        else
            st_add(E, SHM_C_REQ_OK);
        if (!gone && !(st->flags & EGR_SF_ERROR)) {
            st_obs(E, SHM_H_E2E, E->now - q->recv_ns);
            if (st->first_ns > q->recv_ns)
                st_obs(E, SHM_H_TTFT, st->first_ns - q->recv_ns);
        }
        shm_stats_end(E->cfg->stats_w);
    }

    rs_unlink(E, i);
    /* the state, then what the request wrote of the cell (egr_scrub.h) */
    rc = egr_scrub_free(&E->pool, cell, q, size, area_off, hwm, &st->resp);
    if (rc < 0)
        favo_warn("egress: freeing cell %#" PRIx64 ": %s", (uint64_t)cell, strerror(-rc));
    if (slot) {
        memcpy(slot, &m, sizeof(m));
        shm_ring_commit(&E->conn_ring[w]);
        E->ring_ing[w] = true;
    }
    if (c) {
        if (close_it && c->head == NONE && !c->sending)
            conn_release(E, c);
        else if (c->head != NONE)
            rs_progress(E, c->head);
    }
}

/* ---------------------------------------------------------------- events */

static void on_event(struct egr *E, const struct shm_ev *ev)
{
    uint32_t i = rs_find(E, ev->cell);
    struct egr_stage_state *st;
    struct rs *r;

    if (i == NONE) {
        i = rs_adopt(E, ev->cell, ev->kind);
        if (i == NONE) {
            /* a cell we cannot answer for: if it is ours now, give it back */
            if ((ev->kind == SHM_EV_FINISH || ev->kind == SHM_EV_ERROR) &&
                shm_cell_free(&E->pool, ev->cell, SHM_CELL_EGRESS) == 0)
                favo_warn("egress: freed cell %#" PRIx64 " without a response",
                          (uint64_t)ev->cell);
            else if (ev->kind == SHM_EV_START) {
                struct shm_ctl m = { .cell = ev->cell, .id = ev->id, .kind = 1 };
                if (shm_ring_enqueue(&E->ctl, &m) == 0)
                    E->ring_bat = true;
            }
            return;
        }
    }
    r = &E->rs[i];
    st = r->st;
    if (ev->id)
        st->ev_id = ev->id;
    switch (ev->kind) {
    case SHM_EV_START:
        if (!st->start_ns)
            st->start_ns = ev->t_ns ? ev->t_ns : E->now;
        rs_start(E, r);
        break;
    case SHM_EV_TOKENS:
    case SHM_EV_FINISH: {
        uint32_t n = FAVO_MIN(ev->n_gen, r->req->max_tokens);

        if (!(st->flags & (EGR_SF_STARTED | EGR_SF_ERROR | EGR_SF_GONE)))
            rs_start(E, r); /* adopted without START (restart) */
        if (n > st->n_gen) {
            uint32_t k = n - st->n_gen;
            if (st->last_ns && E->cfg->stats_w && E->now > st->last_ns)
                for (uint32_t j = 0; j < k; j++)
                    st_obs(E, SHM_H_ITL, (E->now - st->last_ns) / k);
            st->last_ns = E->now;
            st->n_gen = n;
            if (ev->t_ns && !r->tok_ns) /* SHM_H_EGRESS: the oldest unsent token */
                r->tok_ns = ev->t_ns;
        }
        if (ev->kind == SHM_EV_FINISH && !(st->flags & EGR_SF_FINAL)) {
            st->fin_reason = ev->reason;
            st->flags |= EGR_SF_FINAL;
            st->flags &= (uint16_t)~EGR_SF_CANCEL_WANT; /* nothing left to cancel */
        }
        break;
    }
    case SHM_EV_ERROR:
        if (!(st->flags & EGR_SF_FINAL)) {
            st->err_status = ev->status;
            st->retry_after = ev->retry_after;
            st->flags |= EGR_SF_FINAL;
            st->flags &= (uint16_t)~EGR_SF_CANCEL_WANT;
            rs_error(E, r, ev->status ? ev->status : 500, ev->retry_after);
        }
        break;
    default:
        favo_warn("egress: unknown event kind %u dropped", ev->kind);
        break;
    }
    if ((st->flags & EGR_SF_GONE) && !(st->flags & EGR_SF_FINAL))
        rs_cancel(E, r); /* e.g. no socket to answer on */
    rs_progress(E, i);
}

/* Apply up to EV_BURST events, each released after it is applied
 * (invariant 3: consume, then release). Returns how many.
 * The burst is copied out first and the newest generated id of every
 * response it names is prefetched: that id was just written by the
 * batcher on another core, and loading it in rs_feed was most of the
 * time spent per event (one cross-core miss each, one after another);
 * now the burst's misses overlap. A hint only: a slot freed meanwhile
 * costs nothing. */
static unsigned drain_events(struct egr *E)
{
    struct shm_ev evs[EV_BURST];
    int got = shm_ring_peek_burst(&E->ev, evs, EV_BURST);

    if (got <= 0)
        return 0;
    for (int j = 0; j < got; j++) {
        uint32_t i;
        if (evs[j].kind != SHM_EV_TOKENS || !evs[j].n_gen ||
            (i = rs_find(E, evs[j].cell)) == NONE)
            continue;
        __builtin_prefetch(E->rs[i].ids + (evs[j].n_gen - 1));
    }
    /* ...then the vocabulary entries and piece bytes of the ids the burst
     * will feed (up to 4 per response): with random ids (the null engine)
     * each is a miss in a table of the whole vocabulary (eng_tok_piece was
     * ~8% of egress's CPU under wrk), and the loads for different
     * responses are independent here, so they overlap */
    for (int j = 0; j < got; j++) {
        const struct rs *r;
        uint32_t i, k, end;
        if (evs[j].kind != SHM_EV_TOKENS || (i = rs_find(E, evs[j].cell)) == NONE)
            continue;
        r = &E->rs[i];
        k = r->st->consumed;
        end = FAVO_MIN(FAVO_MIN(evs[j].n_gen, r->req->max_tokens), k + 4u);
        for (; k < end; k++) {
            const char *piece;
            size_t plen;
            if (eng_tok_piece(E->tok, r->ids[k], ENG_TOK_SHOW_SPECIAL, &piece, &plen) == 0)
                __builtin_prefetch(piece);
        }
    }
    for (int j = 0; j < got; j++) {
        const struct shm_ev *ev = &evs[j];
        /* the clock after the peek: an event is never older than "now".
         * The loop read it before the burst; read again only for an event
         * published since (a vDSO read is ~30 ns here, a burst 64 events) */
        if (ev->t_ns > E->now)
            E->now = favo_now_ns();
        if (E->tr && ev->t_ns && ev->kind != SHM_EV_START &&
            (!E->tr_cur.pub || ev->t_ns < E->tr_cur.pub))
            E->tr_cur.pub = ev->t_ns;
        on_event(E, ev);
        shm_ring_release(&E->ev, 1);
    }
    return (unsigned)got;
}

/* Ingress's answers to our TLS chunks: each is the completion of that
 * connection's one "send" (inv 2). Applied, then released; a replayed or
 * stale one (its (cell, seq) is not the head's chunk in flight) changes
 * nothing. */
static unsigned drain_acks(struct egr *E)
{
    const struct shm_tls_ack *a;
    unsigned n = 0;

    for (unsigned w = 0; w < E->n_ingress; w++) {
        while ((a = shm_ring_peek_one(&E->tls_ack[w])) != NULL) {
            struct shm_tls_ack m = *a;
            struct conn *c = conn_find(E, m.conn);

            E->now = favo_now_ns();
            if (c && c->key == m.conn && c->tls && c->sending && c->head != NONE &&
                E->rs[c->head].cell == m.cell && E->rs[c->head].st->sent == m.seq) {
                on_send(E, c, m.res >= 0 ? FAVO_MIN(m.res, (int32_t)c->sending) : m.res);
                if (c->key && c->shut && c->head == NONE && !c->sending)
                    conn_release(E, c); /* closed and no response left */
            }
            shm_ring_release(&E->tls_ack[w], 1);
            n++;
        }
    }
    return n;
}

static bool acks_waiting(struct egr *E)
{
    for (unsigned w = 0; w < E->n_ingress; w++)
        if (shm_ring_available(&E->tls_ack[w]))
            return true;
    return false;
}

static void ring_bells(struct egr *E)
{
    if (E->ring_bat) {
        shm_bell_ec_ring(&E->bat_bell);
        E->ring_bat = false;
    }
    for (unsigned w = 0; w < E->n_ingress; w++) {
        if (E->ring_ing[w] && E->ing_bell_ok[w])
            shm_bell_efd_ring(&E->ing_bell[w]);
        E->ring_ing[w] = false;
    }
}

/* ------------------------------------------------------------------ tick */

/* Keys of worker w's connections with a request somewhere in the
 * pipeline (a live cell the batcher or egress owns): up to cap of them. */
struct keys_scan {
    unsigned w, n, cap;
    uint64_t *keys;
};

static bool scan_key(struct egr *E, shm_cell_ref_t ref, char *data, const struct shm_req *q,
                     void *arg)
{
    struct keys_scan *k = arg;

    (void)E, (void)ref, (void)data;
    if (q->worker == k->w)
        k->keys[k->n++] = q->conn;
    return k->n < k->cap;
}

static unsigned keys_in_flight(struct egr *E, unsigned w, uint64_t *keys, unsigned cap)
{
    struct keys_scan k = { w, 0, cap, keys };

    cells_each(E, scan_key, &k);
    return k.n;
}

/* An ingress worker restarted: the connections its predecessor handed
 * over are unknown to the new one (it would never read their next
 * request), so each closes once its answers are out; one with no request
 * anywhere in the pipeline (idle keep-alive) closes now. Rare: a scan of
 * the cells is fine here. */
static void ingress_check(struct egr *E)
{
    for (unsigned w = 0; w < E->n_ingress; w++) {
        int32_t pid = (int32_t)ck_pr_load_32(
            (const uint32_t *)&E->pipe->hdr->up_pid[SHM_PIPE_INGRESS][w]);
        unsigned n = 0;

        if (pid == E->ing_seen[w] || pid == 0)
            continue;
        E->ing_seen[w] = pid;
        unsigned nk = keys_in_flight(E, w, E->scan_keys, MAX_CONNS);
        for (uint32_t i = 0; i < MAX_CONNS; i++) {
            struct conn *c = &E->conns[i];
            bool busy = c->head != NONE || c->sending;
            if (!c->key || (c->fd < 0 && !c->tls) || ((c->key >> 48) & 0xffu) != w ||
                c->ing_pid == pid || c->orphan)
                continue;
            n++;
            if (c->tls) {
                /* the TLS keys died with that ingress, and the socket with
                 * them: every answer on it is lost; a chunk it held is
                 * never answered */
                conn_unmap(E, c);
                c->shut = 1;
                c->orphan = 1;
                if (c->sending)
                    on_send(E, c, -ECONNRESET);
                conn_fail(E, c, false);
                for (uint32_t j = c->head; j != NONE; j = E->rs[j].cnext)
                    rs_gone(E, &E->rs[j], false);
                if (c->key && c->head == NONE && !c->sending)
                    conn_release(E, c);
                else
                    for (uint32_t j = c->head; j != NONE;) {
                        uint32_t nx = E->rs[j].cnext;
                        rs_progress(E, j);
                        j = nx;
                    }
                continue;
            }
            for (unsigned k = 0; k < nk && !busy; k++)
                busy = E->scan_keys[k] == c->key;
            if (!busy) {
                conn_unmap(E, c);
                conn_shut(E, c);
                conn_release(E, c);
            } else {
                c->orphan = 1;
            }
        }
        if (n)
            favo_info("egress: ingress worker %u restarted: %u of its connections close after "
                      "their answers", w, n);
    }
}

static void on_tick(struct egr *E)
{
    const struct egr_stage_cfg *cfg = E->cfg;

    ingress_check(E);

    for (uint32_t i = 0; i < MAX_CONNS && E->n_sending; i++) {
        struct conn *c = &E->conns[i];
        if (c->key && c->sending && !c->shut && E->now - c->send_ns > E->write_timeout_ns) {
            favo_info("egress: write timeout on conn %#" PRIx64, (uint64_t)c->key);
            c->timed_out = 1;
            conn_fail(E, c, true); /* the send in flight completes with an error */
        } else if (c->key && c->tls && c->sending && c->shut && c->abort_due) {
            conn_abort(E, c);
        } else if (c->key && c->tls && c->sending && c->shut &&
                   E->now - c->send_ns > 2 * E->write_timeout_ns + 5000000000ull) {
            /* ingress never answered the chunk, not even after the abort:
             * it is wedged (a dead one is seen by ingress_check) */
            favo_warn("egress: ingress never answered a TLS chunk on conn %#" PRIx64,
                      (uint64_t)c->key);
            on_send(E, c, -ETIMEDOUT);
            if (c->key && c->head == NONE && !c->sending)
                conn_release(E, c);
        }
    }
    for (uint32_t i = 0; i < E->n_rs && E->n_waiting; i++) {
        struct rs *r = &E->rs[i];
        if (r->cell == SHM_CELL_REF_NONE || !r->wait_since ||
            E->now - r->wait_since < RESUME_GRACE_NS)
            continue;
        r->wait_since = 0;
        E->n_waiting--;
        favo_info("egress: the socket of a resumed response did not come back: dropping it");
        rs_gone(E, r, false);
        rs_progress(E, i);
    }
    if (E->retry_pending) {
        E->retry_pending = false;
        for (uint32_t i = 0; i < E->n_rs; i++) {
            struct rs *r = &E->rs[i];
            if (r->cell == SHM_CELL_REF_NONE || !r->retry)
                continue;
            r->retry = 0;
            if (r->st->flags & EGR_SF_CANCEL_WANT)
                rs_cancel(E, r);
            rs_progress(E, i);
        }
    }
    if (cfg->stats && cfg->stats_w) {
        shm_stats_heartbeat(cfg->stats, cfg->stats_row);
        shm_stats_flush(cfg->stats_w);
    }
    arm_tick(E);
}

/* ------------------------------------------------------------------ setup */

static int ring_init(struct egr *E)
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
        rc = io_uring_queue_init_params(512, &E->ring, &p);
        if (rc == 0) {
            if (i)
                favo_warn("egress: io_uring setup flags 0x%x refused; using 0x%x", tries[0],
                          tries[i]);
            return 0;
        }
        if (rc != -EINVAL)
            break;
    }
    favo_err("egress: io_uring_queue_init: %s", strerror(-rc));
    return rc;
}

static int setup(struct egr *E, const struct egr_stage_cfg *cfg)
{
    const struct shm_pipe *p = cfg->pipe;
    const struct shm_pipe_hdr *h = p->hdr;
    uint32_t gen = h->generation, n;
    char err[256];
    size_t len;
    void *cm;
    int rc;

    E->cfg = cfg;
    E->pipe = p;
    E->n_ingress = h->cfg.n_ingress;
    for (unsigned w = 0; w < E->n_ingress && w < SHM_PIPE_MAX_INGRESS; w++)
        E->ing_seen[w] = (int32_t)ck_pr_load_32((const uint32_t *)&h->up_pid[SHM_PIPE_INGRESS][w]);
    E->write_timeout_ns = (uint64_t)(cfg->write_timeout_ms ? cfg->write_timeout_ms : 30000) *
                          1000000ull;
    E->model_id = cfg->model_id && *cfg->model_id ? cfg->model_id
                  : h->model_id[0]                ? h->model_id
                                                  : "favo";
    E->fp = cfg->fingerprint && *cfg->fingerprint ? cfg->fingerprint : "fp_favo";
    E->id_salt = favo_wall_ns() ^ ((uint64_t)getpid() << 40);
    E->now = favo_now_ns();

    rc = eng_tok_load_file(&E->tok, cfg->model_path, err, sizeof(err));
    if (rc < 0) {
        favo_err("egress: tokenizer from %s: %s", cfg->model_path, err);
        return rc;
    }
    E->text_max = eng_detok_out_max(E->tok);
    cm = shm_pipe_cells(p, &len);
    if ((rc = shm_cell_pool_attach(&E->pool, cm, len, gen, SHM_CELL_ROLE_USER,
                                   SHM_PIPE_RET_EGRESS)) ||
        (rc = shm_pipe_ring_ev(p, SHM_RING_CONSUMER, &E->ev)) ||
        (rc = shm_pipe_ring_ctl(p, SHM_RING_PRODUCER, &E->ctl)) ||
        (rc = shm_pipe_bell_bat(p, &E->bat_bell)) ||
        (rc = shm_pipe_bell_egr(p, cfg->bell_efd, true, &E->bell))) {
        favo_err("egress: attaching the pipe: %s", strerror(-rc));
        return rc;
    }
    for (unsigned w = 0; w < E->n_ingress; w++) {
        if ((rc = shm_pipe_ring_conn(p, w, SHM_RING_PRODUCER, &E->conn_ring[w])) ||
            (rc = shm_pipe_ring_tls_out(p, w, SHM_RING_PRODUCER, &E->tls_out[w])) ||
            (rc = shm_pipe_ring_tls_ack(p, w, SHM_RING_CONSUMER, &E->tls_ack[w]))) {
            favo_err("egress: conn/tls rings %u: %s", w, strerror(-rc));
            return rc;
        }
        if (cfg->ing_bell_efd[w] >= 0 &&
            shm_pipe_bell_ing(p, w, cfg->ing_bell_efd[w], false, &E->ing_bell[w]) == 0)
            E->ing_bell_ok[w] = true;
    }
    if (cfg->fdpass_sock >= 0) {
        int fl = fcntl(cfg->fdpass_sock, F_GETFL);
        if (fl < 0 || fcntl(cfg->fdpass_sock, F_SETFL, fl | O_NONBLOCK) < 0)
            return -errno;
    }

    /* tables: a response per cell at most, MAX_CONNS sockets */
    n = 0;
    for (unsigned k = 0; k < E->pool.hdr->nclasses; k++)
        n += E->pool.hdr->classes[k].ncells;
    E->n_rs = n;
    for (E->rs_mask = 1; E->rs_mask < 2 * n; E->rs_mask <<= 1)
        ;
    for (E->conn_mask = 1; E->conn_mask < 2 * MAX_CONNS; E->conn_mask <<= 1)
        ;
    E->rs = calloc(n, sizeof(*E->rs));
    E->rs_hash = malloc(E->rs_mask * sizeof(uint32_t));
    E->conns = calloc(MAX_CONNS, sizeof(*E->conns));
    E->scan_keys = calloc(MAX_CONNS, sizeof(*E->scan_keys));
    E->conn_hash = malloc(E->conn_mask * sizeof(uint32_t));
    if (!E->rs || !E->rs_hash || !E->conns || !E->conn_hash || !E->scan_keys)
        return -ENOMEM;
    memset(E->rs_hash, 0xff, E->rs_mask * sizeof(uint32_t));
    memset(E->conn_hash, 0xff, E->conn_mask * sizeof(uint32_t));
    E->rs_mask--;
    E->conn_mask--;
    for (uint32_t i = 0; i < n; i++)
        E->rs[i].hnext = i + 1 < n ? i + 1 : NONE;
    E->rs_free = n ? 0 : NONE;
    for (uint32_t i = 0; i < MAX_CONNS; i++) {
        E->conns[i].fd = -1;
        E->conns[i].hnext = i + 1 < MAX_CONNS ? i + 1 : NONE;
    }
    E->conn_free = 0;
    return ring_init(E);
}

static void teardown(struct egr *E)
{
    if (E->conns)
        for (uint32_t i = 0; i < MAX_CONNS; i++)
            if (E->conns[i].fd >= 0)
                close(E->conns[i].fd);
    if (E->tok)
        eng_tok_free(E->tok);
    free(E->rs);
    free(E->rs_hash);
    free(E->conns);
    free(E->scan_keys);
    free(E->conn_hash);
}

/* ----------------------------------------------------------------- trace */

/* The file is opened here, at start-up: favo serve's sandbox (installed
 * once the stage is up) allows no new files, only writes. */
static void tr_open(struct egr *E)
{
    const char *p = getenv("FAVO_EGR_TRACE");

    E->tr_fd = -1;
    if (!p || !*p)
        return;
    E->tr_fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    E->tr = E->tr_fd >= 0 ? calloc(TR_CAP, sizeof(*E->tr)) : NULL;
    if (!E->tr) {
        favo_warn("egress: FAVO_EGR_TRACE %s: %s; tracing off", p,
                  E->tr_fd < 0 ? strerror(errno) : "no memory");
        if (E->tr_fd >= 0)
            close(E->tr_fd);
        E->tr_fd = -1;
    }
}

/* A burst ended (its sends submitted): keep its record. */
static void tr_burst(struct egr *E, uint64_t d0, uint64_t d1, unsigned nev)
{
    struct egr_tr *t = &E->tr_cur;

    t->d0 = d0;
    t->d1 = d1;
    t->s1 = favo_now_ns();
    t->nev = nev;
    if (E->tr_n < TR_CAP)
        E->tr[E->tr_n++] = *t;
    memset(t, 0, sizeof(*t));
}

static void tr_close(struct egr *E)
{
    char buf[4096];
    size_t n;
    bool ok = true;

    if (!E->tr)
        return;
    n = (size_t)snprintf(buf, sizeof(buf), "# pub wake d0 d1 s1 nev nsend (ns, CLOCK_MONOTONIC)\n");
    for (uint32_t i = 0; i <= E->tr_n && ok; i++) {
        if (i == E->tr_n || n > sizeof(buf) - 160) { /* a record is < 120 bytes */
            ok = write(E->tr_fd, buf, n) == (ssize_t)n;
            n = 0;
        }
        if (i < E->tr_n) {
            const struct egr_tr *t = &E->tr[i];
            n += (size_t)snprintf(buf + n, sizeof(buf) - n,
                                  "%" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64
                                  " %u %u\n",
                                  t->pub, t->wake, t->d0, t->d1, t->s1, t->nev, t->nsend);
        }
    }
    if (!ok)
        favo_warn("egress: FAVO_EGR_TRACE: write failed");
    close(E->tr_fd);
    E->tr_fd = -1;
    free(E->tr);
    E->tr = NULL;
}

/* ------------------------------------------------------------------ loop */

static void reap(struct egr *E)
{
    struct io_uring_cqe *cqe;
    unsigned head, n = 0;

    E->now = favo_now_ns();
    io_uring_for_each_cqe(&E->ring, head, cqe) {
        uint64_t ud = io_uring_cqe_get_data64(cqe);
        unsigned op = (unsigned)(ud >> 56);
        uint32_t idx = (uint32_t)(ud >> 32) & 0xffffffu, gen = (uint32_t)ud;
        int res = cqe->res;

        n++;
        if (op == OP_BELL) {
            E->bell_armed = false;
            shm_bell_efd_woke(&E->bell);
            if (res < 0 && res != -EAGAIN && res != -EINTR)
                favo_warn("egress: bell read: %s", strerror(-res));
            arm_bell(E);
        } else if (op == OP_FDPASS) {
            E->fdpass_armed = false;
            fdpass_drain(E);
            arm_fdpass(E);
        } else if (op == OP_TICK) {
            on_tick(E);
        } else if (op == OP_SEND) {
            struct conn *c = &E->conns[idx];
            FAVO_ASSERT(idx < MAX_CONNS);
            if (c->gen != gen || !c->sending)
                continue; /* stale: the slot was reused */
            on_send(E, c, res);
            if (!c->key || c->fd < 0)
                continue;
            if (c->shut && c->head == NONE && !c->sending)
                conn_release(E, c); /* closed and no response left */
        }
    }
    io_uring_cq_advance(&E->ring, n);
}

static bool want_exit(struct egr *E)
{
    const struct egr_stage_cfg *cfg = E->cfg;
    bool stop = (cfg->stop && *cfg->stop) || ck_pr_load_32(&E->pipe->hdr->draining);

    return stop && !shm_pipe_stage_up(E->pipe, SHM_PIPE_BATCHER, 0) && E->rs_active == 0 &&
           shm_ring_available(&E->ev) == 0;
}

int egr_stage_run(const struct egr_stage_cfg *cfg)
{
    struct egr *E;
    int rc;

    if (!cfg || !cfg->pipe || !cfg->pipe->hdr || !cfg->model_path || cfg->bell_efd < 0)
        return -EINVAL;
    E = calloc(1, sizeof(*E));
    if (!E)
        return -ENOMEM;
    rc = setup(E, cfg);
    if (rc < 0) {
        teardown(E);
        free(E);
        return rc;
    }
    tr_open(E);
    E->kcheck = getenv("FAVO_EGR_KCHECK") && !strcmp(getenv("FAVO_EGR_KCHECK"), "1");
    /* a predecessor reported itself up (its word outlives it): a restart
     * (known before the first socket is taken: conn_add reads it) */
    E->restarted = ck_pr_load_32((const uint32_t *)&cfg->pipe->hdr->up_pid[SHM_PIPE_EGRESS][0]) != 0;
    arm_bell(E);
    arm_fdpass(E);
    arm_tick(E);
    fdpass_drain(E);
    E->now = favo_now_ns(); /* the resume grace counts from here, not from a slow setup */
    E->up_ns = E->now;
    if ((rc = (int)rs_scan_cells(E)) > 0)
        favo_info("egress: took over %d responses from the cells", rc);
    rc = 0;
    if (cfg->on_ready)
        cfg->on_ready(cfg->on_ready_arg);
    shm_pipe_set_up(cfg->pipe, SHM_PIPE_EGRESS, 0, getpid());
    favo_info("egress: up (model %s, %u response slots)", E->model_id, E->n_rs);

    uint64_t idle_since = 0;
    for (;;) {
        unsigned got;
        uint64_t d0, d1 = 0;

        E->now = d0 = favo_now_ns();
        if (E->log_len && E->now - E->log_first_ns >= LOG_FLUSH_NS)
            log_flush(E);
        got = drain_events(E);
        got += drain_acks(E);
        if (E->tr && got)
            d1 = favo_now_ns();
        ring_bells(E);
        if (want_exit(E))
            break;
        if (got) {
            /* submit and run completions without waiting (DEFER_TASKRUN
             * runs task work only inside a GETEVENTS enter) */
            io_uring_submit_and_get_events(&E->ring);
            if (E->tr)
                tr_burst(E, d0, d1, got);
            reap(E);
            ring_bells(E);
            idle_since = 0;
            continue;
        }
        if (cfg->poll == 2 || (cfg->poll == 1 && (!idle_since || E->now - idle_since < SPIN_NS))) {
            if (!idle_since)
                idle_since = E->now;
            io_uring_submit_and_get_events(&E->ring);
            reap(E);
            ring_bells(E);
            favo_cpu_relax();
            continue;
        }
        idle_since = 0;
        /* sleep: announce it, look at the ring again, then wait (the tick
         * bounds the wait; shm_bell.h "eventfd in an io_uring loop") */
        shm_bell_efd_prepare(&E->bell);
        if (shm_ring_available(&E->ev) > 0 || acks_waiting(E)) {
            shm_bell_efd_cancel(&E->bell);
            continue;
        }
        if (cfg->stats_w)
            shm_stats_flush(cfg->stats_w);
        if (E->log_len)
            log_flush(E);
        rc = io_uring_submit_and_wait(&E->ring, 1);
        if (E->tr)
            E->tr_cur.wake = favo_now_ns();
        shm_bell_efd_woke(&E->bell);
        if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY && rc != -ETIME) {
            favo_err("egress: io_uring_submit_and_wait: %s", strerror(-rc));
            break;
        }
        reap(E);
        ring_bells(E);
    }
    favo_info("egress: stopping (%u connections open)", E->n_conns);
    if (E->kcheck)
        favo_info("egress: kernel count checks: %" PRIu64 " agreed, %" PRIu64 " differed",
                  E->kcheck_ok, E->kcheck_bad);
    if (E->log_len)
        log_flush(E);
    tr_close(E);
    shm_pipe_set_up(cfg->pipe, SHM_PIPE_EGRESS, 0, 0);
    if (cfg->stats_w)
        shm_stats_flush(cfg->stats_w);
    io_uring_queue_exit(&E->ring);
    teardown(E);
    free(E);
    return rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY && rc != -ETIME ? rc : 0;
}
