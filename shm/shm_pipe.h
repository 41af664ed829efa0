/*
 * shm_pipe.h - the serving pipeline's layout in the data segment: which
 * rings join which stages, the messages on them, the doorbells, the plan
 * slots, the scheduler arena, the cell pool, and the control words that say
 * which stages are up. `favo serve` (the supervisor) lays it out once with
 * shm_pipe_init(); every stage maps the same data segment and finds its
 * parts with shm_pipe_attach(). Everything in it is an offset or an index
 * (invariant 1).
 *
 *                  req[w] (struct shm_req)          plan[r] (struct shm_plan_msg)
 *   ingress w  ----------------------------> batcher --------------------------> engine r
 *      ^  |                                  ^  ^  |   <------------------------  (rank 0)
 *      |  | socket once per connection      |  |  |      done (shm_plan_msg)
 *      |  | (SCM_RIGHTS, dp-made socketpair) |  |  | ev (struct shm_ev)
 *      |  v                                  |  |  v
 *      +-- conn[w] (struct shm_conn_msg) -- egress  (ctl: struct shm_ctl, cancels)
 *
 *   bells: batcher  one multi-producer futex bell (ingress, egress, engine 0 ring it)
 *          engine r one single-producer futex bell (the batcher rings it)
 *          egress   an eventfd bell (the batcher rings it)
 *          ingress w an eventfd bell (egress rings it)
 *   The eventfds are made by the supervisor and inherited (their numbers
 *   are passed on the stage's command line); their shared halves
 *   (struct shm_bell_efd) live here.
 *
 * The request cell (shm_cell.h) once ingress hands it to the batcher:
 *
 *   0        HTTP request bytes (method, headers, JSON body): stop strings
 *            are spans in here (shm_req.stop); read-only from the handoff
 *   tok_off  int32 ids: ntok prompt ids, then room for max_tokens generated
 *            ids. The batcher writes generated id k at tok_off + 4 *
 *            (ntok + k) BEFORE it publishes an event with n_gen > k; the
 *            engine reads prompt + generated ids from here (never writes)
 *   resp_off (64-aligned) a copy of the request's struct shm_req (written
 *            by ingress before the handoff, read-only after), then
 *            egress's response area up to the end of the cell (or up to
 *            the logprob records): its per-response state and the bytes
 *            it sends from
 *   size - shm_pipe_lp_bytes()   logprob records, only when shm_req.logprobs:
 *            generated id k's record (shm_pipe_lp_stride() struct shm_lp_rec:
 *            the sampled id and its logprob, then the alternatives, best
 *            first, id -1 where the engine gave fewer) at shm_pipe_lp_at(
 *            size, n_alt, k), counted BACKWARDS from the end of the cell.
 *            Written by the batcher with the id (pipe inv 2), read by egress.
 *            Backwards from the end because the batcher's plan entries know
 *            the cell, its size and k but not max_tokens: this place needs
 *            nothing else (the end after the ids would)
 *
 * Ownership (cell inv 1, refined by byte range): the owner word says who
 * FREES the cell (ingress -> batcher -> egress). While the batcher owns it,
 * egress writes only its response area (after the shm_req copy) and the
 * batcher writes only generated ids and logprob records: disjoint words, one writer each
 * (invariant 2). Both use shm_cell_bytes() (generation-checked, not
 * owner-checked) for those accesses.
 *
 * Stage up words: the supervisor writes sup_pid[kind][i] (the pid it
 * spawned, 0 once reaped); the stage writes up_pid[kind][i] = its own pid
 * when it is ready to serve. A stage is up when both are equal and
 * non-zero, so a crashed stage is down the moment it is reaped, and
 * neither word has two writers. `draining` is written by the supervisor.
 *
 * Invariants (cited by FAVO_ASSERT as "pipe inv N"):
 *   1. Every ring has one producer process and one consumer process, as
 *      drawn above; a second ingress worker has its own req and conn rings.
 *   2. An event for a request is published only after the ids it counts
 *      are in the cell (ring release order); egress reads ids [its
 *      progress, n_gen) and may see the same n_gen twice (replays are
 *      harmless: events are idempotent by n_gen).
 *   3. FINISH and ERROR events pass the cell to egress (owner EGRESS,
 *      shm_cell_give before the enqueue); no other stage touches it after.
 *
 * Errors: 0 or -errno; -EINVAL for a bad cfg, -EPROTO / -ESTALE /
 * -EBADMSG for a region that is not a pipe of this version and generation.
 */
#ifndef SHM_PIPE_H
#define SHM_PIPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "favo_base.h"
#include "shm_bell.h"
#include "shm_cell.h"
#include "shm_ring.h"
#include "shm_spec.h"

#define SHM_PIPE_MAGIC 0x3145504950564146ull /* "FAVPIPE1" */
#define SHM_PIPE_VERSION 3u  /* 2: specialist table, response cache, shm_req.cache_ttl/spec;
                                3: logprob records at the end of a cell (shm_pipe_lp_at),
                                   bat_result carries logprobs (result_size grew) */
#define SHM_PIPE_MAX_INGRESS 8
#define SHM_PIPE_MAX_RANKS 8
#define SHM_PIPE_PLAN_SLOTS 2      /* per rank: step N and N+1 */

/* Stage kinds of the up words (same order as enum shm_stage_kind's stages). */
enum shm_pipe_stage { SHM_PIPE_INGRESS = 0, SHM_PIPE_BATCHER, SHM_PIPE_ENGINE,
                      SHM_PIPE_EGRESS, SHM_PIPE_NSTAGES };

/* Cell return rings (shm_cell_cfg.nreturn = 2): who frees into which. */
enum { SHM_PIPE_RET_EGRESS = 0, SHM_PIPE_RET_BATCHER = 1, SHM_PIPE_NRET = 2 };

/* ------------------------------------------------------------ messages */

struct shm_span { uint32_t off, len; };   /* bytes in the cell */

enum shm_req_kind { SHM_REQ_SUBMIT = 1, SHM_REQ_CANCEL = 2 };
enum shm_req_route { SHM_REQ_COMPLETIONS = 1, SHM_REQ_CHAT = 2 };
enum { SHM_REQ_F_STREAM = 1u << 0, SHM_REQ_F_USAGE = 1u << 1, SHM_REQ_F_SEED = 1u << 2,
       SHM_REQ_F_CLOSE = 1u << 3 /* answer with Connection: close */ };

#define SHM_REQ_MAGIC 0x31515244u  /* "DRQ1" */
#define SHM_REQ_ID_MAX 128
#define SHM_REQ_TENANT_MAX 64
#define SHM_REQ_NSTOP 4
#define SHM_REQ_OUT_MASK 0x7fffffffu  /* shm_req.conn_out: ingress's byte count, mod 2^31 */
#define SHM_REQ_OUT_EGR (1u << 31)     /* ...an earlier request on the connection went to egress */

/*
 * ingress -> batcher (one per request; also copied into the cell at
 * resp_off for egress). CANCEL (client gone while its answer was being
 * generated) carries magic, kind, worker, conn and cell only. Metadata
 * only besides the cell reference: the request id and tenant are logged
 * anyway; the prompt is in the cell.
 */
struct shm_req {
    uint32_t magic;
    uint8_t kind;            /* enum shm_req_kind */
    uint8_t route;           /* enum shm_req_route */
    uint8_t flags;           /* SHM_REQ_F_* */
    uint8_t worker;          /* ingress worker index */
    uint64_t cell;           /* shm_cell_ref_t */
    uint64_t conn;           /* worker << 48 | slot << 24 | generation: egress's key */
    uint64_t recv_ns;        /* CLOCK_MONOTONIC, request complete */
    uint64_t created;        /* wall-clock seconds, for the response's "created" */
    uint32_t tok_off;        /* prompt ids in the cell, then generated ids */
    uint32_t ntok;
    uint32_t max_tokens;     /* resolved: never 0, ntok + max_tokens <= n_ctx */
    uint32_t resp_off;       /* this struct's copy, then egress's area */
    uint32_t tenant;         /* tenant number for fairness (0: anonymous) */
    uint8_t prio;            /* 0 (highest) .. 3 */
    uint8_t logprobs, top_logprobs, nstop;
    int32_t top_k;
    int64_t seed;
    float temperature, top_p, min_p, frequency_penalty, presence_penalty;
    uint32_t reqid_len;
    struct shm_span stop[SHM_REQ_NSTOP];
    char reqid[SHM_REQ_ID_MAX];       /* not NUL-terminated: reqid_len */
    char tenant_name[SHM_REQ_TENANT_MAX]; /* NUL-terminated, "" when open */
    /* The specialist the request named (shm_spec.h), applied by ingress:
     * its name ("" = the loaded model itself), for the cache key and the
     * response's "model"; its response cache TTL (0 = not cached). */
    uint32_t cache_ttl;                   /* seconds */
    /* Ingress -> egress (egr_stage.h "Bytes written on a connection"):
     * the bytes ingress itself has written on this connection before
     * this request (its own answers, "100 Continue"; sent or still queued
     * to go first), mod 2^31 (SHM_REQ_OUT_MASK); SHM_REQ_OUT_EGR when an
     * earlier request on the connection was handed on (egress answered
     * it). Plain TCP only: 0 on a TLS connection. */
    uint32_t conn_out;
    char spec[SHM_SPEC_NAME_MAX];         /* NUL-terminated */
};

/* batcher <-> engine: which plan slot holds step `step`. */
struct shm_plan_msg {
    uint32_t slot;           /* 0 .. SHM_PIPE_PLAN_SLOTS - 1 */
    uint32_t n_seqs;
    uint64_t step;
};

enum shm_ev_kind {
    SHM_EV_START = 1,        /* admitted: the first prefill is planned */
    SHM_EV_TOKENS = 2,       /* n_gen ids are in the cell */
    SHM_EV_FINISH = 3,       /* done (reason); the cell is egress's now */
    SHM_EV_ERROR = 4,        /* refused before or while queued (status); cell is egress's */
};
enum shm_ev_reason { SHM_FIN_STOP = 1, SHM_FIN_LENGTH = 2, SHM_FIN_CANCELLED = 3 };

/* batcher -> egress. */
struct shm_ev {
    uint64_t cell;           /* shm_cell_ref_t: the key of the response */
    uint64_t id;             /* the batcher's request handle (for cancels) */
    uint32_t kind;           /* enum shm_ev_kind */
    uint32_t n_gen;          /* generated ids in the cell so far */
    uint16_t reason;         /* FINISH: enum shm_ev_reason */
    uint16_t status;         /* ERROR: 413, 503, 500 */
    uint32_t retry_after;    /* ERROR 503: seconds */
    uint64_t t_ns;           /* START: admission time (queue time = t - recv_ns);
                                TOKENS: publication time (egress latency) */
};

/* egress -> batcher: stop a sequence (stop string matched, client gone,
 * write timeout). */
struct shm_ctl {
    uint64_t cell;
    uint64_t id;
    uint32_t kind;           /* 1: cancel */
    uint32_t pad_;
};

/* egress -> ingress w: the response on conn is complete. */
enum { SHM_CONN_KEEP = 1, SHM_CONN_CLOSED = 2 };
struct shm_conn_msg {
    uint64_t conn;
    uint32_t what;           /* SHM_CONN_KEEP: read the next request;
                                SHM_CONN_CLOSED: egress closed it (error, close) */
    uint32_t pad_;
};

/*
 * TLS, userspace path (h23; ingress/ing_tls.h, ARCHITECTURE.md "TLS"). A
 * TLS connection whose socket cannot encrypt by itself (no kernel TLS
 * transmit) never goes to egress: ingress owns the SSL keys. Its conn key
 * carries SHM_CONN_F_TLS; egress formats the response in the cell as for
 * any connection but, instead of sending, puts a shm_tls_out on
 * tls_out[w] and rings ingress w's bell; ingress encrypts those cell
 * bytes (copying them out at once: it never touches the cell after the
 * message), sends the records with io_uring and answers exactly ONE
 * shm_tls_ack per message on tls_ack[w] (res = len once every record of
 * it left; < 0: the connection is gone, nothing more will leave), then
 * rings egress's bell. One message in flight per connection (egress's one
 * send). seq = response bytes already acknowledged before this chunk:
 * (cell, seq) names a chunk, so a chunk re-sent by a restarted egress is
 * recognised by ingress (acked again, never encrypted twice) and a
 * replayed ack by egress. SHM_CONN_ABORT on conn[w]: egress gave up on the
 * connection (write timeout): ingress closes it now. A kernel-TLS
 * connection has no flag: egress gets the socket and writes plaintext.
 */
#define SHM_CONN_F_TLS (1ull << 63)   /* in shm_req.conn / shm_conn_msg.conn */
enum { SHM_CONN_ABORT = 3 };          /* shm_conn_msg.what, TLS only */
struct shm_tls_out {                  /* egress -> ingress w */
    uint64_t conn;
    uint64_t cell;                    /* shm_cell_ref_t */
    uint64_t seq;                     /* response bytes acknowledged before this chunk */
    uint32_t off, len;                /* the chunk: cell bytes [off, off + len) */
};
struct shm_tls_ack {                  /* ingress w -> egress */
    uint64_t conn, cell, seq;         /* as in the shm_tls_out */
    int32_t res;                      /* len: all of it left; < 0: -errno, gone */
    uint32_t pad_;
};

/* ------------------------------------------------------------ layout */

struct shm_pipe_cfg {
    uint32_t n_ingress;              /* 1..SHM_PIPE_MAX_INGRESS */
    uint32_t n_ranks;                /* 1..SHM_PIPE_MAX_RANKS */
    uint32_t req_ring, ev_ring, ctl_ring, conn_ring, plan_ring; /* capacities, pow2; 0: defaults */
    uint64_t sched_bytes;            /* bat_sched_size() */
    uint64_t plan_bytes;             /* bat_sched_plan_size() */
    uint32_t max_seqs;               /* results per plan slot */
    uint32_t result_size;            /* sizeof(struct bat_result) */
    struct shm_cell_cfg cells;       /* nreturn forced to SHM_PIPE_NRET */
    uint64_t cache_bytes;            /* response cache region (bat_cache.h); 0: none */
};

struct shm_pipe_hdr {
    uint64_t magic;
    uint32_t version, generation;
    struct shm_pipe_cfg cfg;
    uint64_t region_bytes;
    /* offsets from the start of this header */
    uint64_t off_cells, len_cells;
    uint64_t off_sched;
    uint64_t off_req[SHM_PIPE_MAX_INGRESS], off_conn[SHM_PIPE_MAX_INGRESS];
    uint64_t off_plan_ring[SHM_PIPE_MAX_RANKS];
    uint64_t off_done, off_ev, off_ctl;
    uint64_t len_req, len_conn, len_plan_ring, len_done, len_ev, len_ctl;
    uint64_t off_plans;   /* [rank][slot] plan_bytes each */
    uint64_t off_results; /* [slot] max_seqs * result_size each (rank 0 writes) */
    uint64_t off_bell_bat, off_bell_eng[SHM_PIPE_MAX_RANKS], off_bell_egr;
    uint64_t off_bell_ing[SHM_PIPE_MAX_INGRESS];
    uint64_t off_spec;               /* struct shm_spec_region (supervisor writes) */
    uint64_t off_cache, len_cache;   /* the batcher's response cache; len 0: off */

    /* control words (one writer each; see the top of the file) */
    int32_t sup_pid[SHM_PIPE_NSTAGES][SHM_PIPE_MAX_INGRESS] FAVO_ALIGNED_CL; /* supervisor */
    int32_t up_pid[SHM_PIPE_NSTAGES][SHM_PIPE_MAX_INGRESS] FAVO_ALIGNED_CL;  /* the stage */
    uint32_t draining FAVO_ALIGNED_CL;                                        /* supervisor */
    uint32_t n_vocab, n_ctx;         /* supervisor, from the model, before publish */
    char model_id[128];              /* supervisor: /v1/models id and "model" field */
    /* TLS userspace path (see above; capacity cfg.conn_ring each) */
    uint64_t off_tls_out[SHM_PIPE_MAX_INGRESS], off_tls_ack[SHM_PIPE_MAX_INGRESS];
    uint64_t len_tls_out, len_tls_ack;
} FAVO_ALIGNED_CL;

/* Process-local view of an attached pipe. */
struct shm_pipe {
    struct shm_pipe_hdr *hdr;
    char *base;
    uint64_t len;
};

/* Fill zero fields of cfg with defaults. -EINVAL when something is off. */
int shm_pipe_cfg_defaults(struct shm_pipe_cfg *cfg);
/* Region bytes for cfg (after defaults), 0 when cfg is invalid. */
size_t shm_pipe_size(const struct shm_pipe_cfg *cfg);
/* Supervisor: lay the pipe out in mem (64-aligned, shm_pipe_size bytes,
 * zeroed): rings, bells, cell pool; the scheduler arena and plan slots are
 * left zero for the batcher to format. */
int shm_pipe_init(struct shm_pipe *p, void *mem, size_t len, const struct shm_pipe_cfg *cfg,
                  uint32_t generation);
/* A stage: check and map. */
int shm_pipe_attach(struct shm_pipe *p, void *mem, size_t len, uint32_t generation);

/* Pointers into the region (no checks beyond the header's, done at attach). */
static inline void *shm_pipe_at(const struct shm_pipe *p, uint64_t off) { return p->base + off; }
void *shm_pipe_cells(const struct shm_pipe *p, size_t *len);
void *shm_pipe_sched(const struct shm_pipe *p, size_t *len);
void *shm_pipe_plan(const struct shm_pipe *p, unsigned rank, unsigned slot);
void *shm_pipe_results(const struct shm_pipe *p, unsigned slot);
/* The specialist table (formatted by shm_pipe_init) and the response cache
 * region (zeroed by shm_pipe_init; the batcher formats it: NULL, *len 0
 * when cfg.cache_bytes was 0). */
struct shm_spec_region *shm_pipe_spec(const struct shm_pipe *p);
void *shm_pipe_cache(const struct shm_pipe *p, size_t *len);

/* Ring handles: role SHM_RING_PRODUCER / CONSUMER as drawn above. */
int shm_pipe_ring_req(const struct shm_pipe *p, unsigned worker, enum shm_ring_role role,
                      shm_ring_t *r);
int shm_pipe_ring_conn(const struct shm_pipe *p, unsigned worker, enum shm_ring_role role,
                       shm_ring_t *r);
int shm_pipe_ring_plan(const struct shm_pipe *p, unsigned rank, enum shm_ring_role role,
                       shm_ring_t *r);
int shm_pipe_ring_done(const struct shm_pipe *p, enum shm_ring_role role, shm_ring_t *r);
int shm_pipe_ring_ev(const struct shm_pipe *p, enum shm_ring_role role, shm_ring_t *r);
int shm_pipe_ring_ctl(const struct shm_pipe *p, enum shm_ring_role role, shm_ring_t *r);
/* TLS userspace path: tls_out[w] egress -> ingress w, tls_ack[w] back. */
int shm_pipe_ring_tls_out(const struct shm_pipe *p, unsigned worker, enum shm_ring_role role,
                          shm_ring_t *r);
int shm_pipe_ring_tls_ack(const struct shm_pipe *p, unsigned worker, enum shm_ring_role role,
                          shm_ring_t *r);

/* Bells. The eventfd ones need this process's eventfd number. */
int shm_pipe_bell_bat(const struct shm_pipe *p, shm_bell_ec_t *b);
int shm_pipe_bell_eng(const struct shm_pipe *p, unsigned rank, shm_bell_ec_t *b);
int shm_pipe_bell_egr(const struct shm_pipe *p, int efd, bool consumer, shm_bell_efd_t *b);
int shm_pipe_bell_ing(const struct shm_pipe *p, unsigned worker, int efd, bool consumer,
                      shm_bell_efd_t *b);

/* Stage up words. */
void shm_pipe_set_up(const struct shm_pipe *p, enum shm_pipe_stage k, unsigned i, int32_t pid);
void shm_pipe_set_sup(const struct shm_pipe *p, enum shm_pipe_stage k, unsigned i, int32_t pid);
bool shm_pipe_stage_up(const struct shm_pipe *p, enum shm_pipe_stage k, unsigned i);
/* Every stage of the pipeline up and not draining (/ready). */
bool shm_pipe_ready(const struct shm_pipe *p);

/* The request's cell layout (see the top): resp_off follows the ids, 64-aligned;
 * the shm_req copy sits there and egress's area after it. Response area
 * bytes ingress reserves: SHM_PIPE_AREA_STREAM for a stream, plus
 * SHM_PIPE_AREA_PER_TOKEN per max_tokens for a body sent whole. */
#define SHM_PIPE_REQ_COPY ((uint32_t)((sizeof(struct shm_req) + 63u) & ~(size_t)63u))
#define SHM_PIPE_AREA_STREAM (24u * 1024u)
#define SHM_PIPE_AREA_PER_TOKEN 48u
static inline uint64_t shm_pipe_resp_off(uint32_t tok_off, uint32_t ntok, uint32_t max_tokens)
{
    return (tok_off + 4ull * ((uint64_t)ntok + max_tokens) + 63u) & ~63ull;
}
static inline uint64_t shm_pipe_cell_need(uint32_t tok_off, uint32_t ntok, uint32_t max_tokens,
                                          bool stream)
{
    return shm_pipe_resp_off(tok_off, ntok, max_tokens) + SHM_PIPE_REQ_COPY +
           SHM_PIPE_AREA_STREAM + (stream ? 0 : (uint64_t)SHM_PIPE_AREA_PER_TOKEN * max_tokens);
}

/*
 * Logprob records (the cell layout at the top). n_alt, alternatives per
 * generated id, is shm_pipe_lp_alts(shm_req.logprobs, top_logprobs): the
 * batcher asks the engine for that many (eng_sample_params.n_logprobs) and
 * egress shows top_logprobs of them. At least 1, so that "logprobs with no
 * alternatives" (n_logprobs 0 means none at all to the engine) still gets
 * the sampled token's logprob; 0 when logprobs were not asked. Egress's
 * response area then ends shm_pipe_lp_bytes() before the end of the cell;
 * a response with logprobs also needs more area (SHM_PIPE_AREA_LP_*), all
 * reserved by ingress through shm_pipe_cell_need_lp().
 */
struct shm_lp_rec {
    int32_t id;                      /* -1: no such alternative */
    float logprob;
};
#define SHM_PIPE_LP_MAX_ALTS 20u
#define SHM_PIPE_AREA_LP_STREAM (32u * 1024u)  /* one event's worst case (20 alternatives) */
#define SHM_PIPE_AREA_LP_PER_ENTRY 144u         /* body: a rendered entry (token, logprob,
                                                   bytes) + its binary copy, per
                                                   (token, alternative shown) */
static inline uint32_t shm_pipe_lp_alts(uint8_t logprobs, uint8_t top_logprobs)
{
    uint32_t n = top_logprobs < SHM_PIPE_LP_MAX_ALTS ? top_logprobs : SHM_PIPE_LP_MAX_ALTS;

    return logprobs ? (n ? n : 1u) : 0u;
}
static inline uint32_t shm_pipe_lp_stride(uint32_t n_alt) { return n_alt ? 1u + n_alt : 0u; }
static inline uint64_t shm_pipe_lp_bytes(uint32_t max_tokens, uint32_t n_alt)
{
    return (uint64_t)sizeof(struct shm_lp_rec) * shm_pipe_lp_stride(n_alt) * max_tokens;
}
/* Byte offset of generated id k's record in a cell of `size` bytes. */
static inline uint64_t shm_pipe_lp_at(uint64_t size, uint32_t n_alt, uint32_t k)
{
    return size - (uint64_t)sizeof(struct shm_lp_rec) * shm_pipe_lp_stride(n_alt) * (k + 1ull);
}
/* shm_pipe_cell_need for a request with n_alt logprob alternatives (0:
 * none, the same as shm_pipe_cell_need): the records, and the area a
 * logprob event (stream) or the logprob entries (body) take. */
static inline uint64_t shm_pipe_cell_need_lp(uint32_t tok_off, uint32_t ntok, uint32_t max_tokens,
                                             bool stream, uint32_t n_alt)
{
    uint64_t need = shm_pipe_cell_need(tok_off, ntok, max_tokens, stream);

    if (!n_alt)
        return need;
    return need + shm_pipe_lp_bytes(max_tokens, n_alt) +
           (stream ? SHM_PIPE_AREA_LP_STREAM
                   : (uint64_t)SHM_PIPE_AREA_LP_PER_ENTRY * (1u + n_alt) * max_tokens);
}

#endif /* SHM_PIPE_H */
