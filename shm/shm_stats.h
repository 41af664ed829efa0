/*
 * shm_stats.h - the stats segment: per-writer counter blocks, latency
 * histograms, gauges and the stage table, read lock-free by `favo stat` and
 * /metrics.
 *
 * Who writes what (invariant 2, one writer per word):
 *
 *   supervisor   creates the segment (shm_stats_create), the meta and names
 *                regions, and every stage-table row except its heartbeat
 *   each stage   its own writer block (one per writer THREAD; the supervisor
 *                hands out slots) and the heartbeat word of its stage row
 *   readers      nothing: they map the segment read-only
 *
 * Layout (regions of the segment, shm_seg.h):
 *
 *   "meta"     struct shm_stats_meta: counts and offsets of everything
 *              below, so a reader of another build can walk it
 *   "names"    u64 FNV-1a hash per table entry (counters, gauges, hists):
 *              a reader refuses a segment whose common entries differ
 *   "writers"  nwriters x struct shm_stats_block, each cache-line aligned:
 *
 *      +0      ck_sequence seq | pid | stage kind | stage index | attaches
 *      +64     counters[SHM_C__COUNT]            u64, monotonic
 *      +64n    gauges[SHM_G__COUNT]              double bits in a u64
 *      +64n    hist[SHM_H__COUNT] { count, sum_ns, range, buckets[SHM_HIST_NBUCKETS] }
 *
 *   "stages"   nstages x struct shm_stats_stage, two cache lines each:
 *              seq, kind, index, state, pid, restarts, cores, started_ns
 *              (supervisor) | heartbeat_ns (the stage), then last_restart_ns,
 *              max_restart_ns, exit_ns (supervisor, under its seq)
 *   "info"     struct shm_stats_info: favo's version and the supervisor's
 *              pid (supervisor, once, before the stages start)
 *   "windows"  struct shm_stats_wins: the last 10 s and 60 s - counter
 *              deltas and histogram count/sum/quantiles (supervisor, once a
 *              second, from its own snapshots: shm_stats_win_update)
 *   "tenants"  struct shm_stats_tenants: SHM_STATS_TENANTS rows of per-tenant
 *              request and token counts, the last row "other" (one writer:
 *              the stage that counts finished requests, egress)
 *
 * Windows: the stage blocks hold cumulative histograms only. The supervisor
 * snapshots the segment once a second and keeps (in its own memory) the
 * last 11 snapshots a second apart and the last 7 ten seconds apart; a
 * window is the difference between now and the oldest kept snapshot at
 * most its length old (span_ns says how long it really is: less while the
 * instance is younger than the window, 50..60 s for the minute). Its
 * quantiles are computed from the difference of the fine histograms, so
 * they are as exact as the since-start ones. One-shot `favo stat` shows all
 * three windows without diffing anything itself.
 *
 * Histograms are log-linear (HDR style) over nanoseconds: every power of two
 * from 2^9 ns (512 ns) to 2^37 ns (137 s) is split into 128 linear buckets,
 * so a bucket is at most 1/128 = 0.78% of its lower bound wide: any value
 * read back from a bucket is within 1% of every value recorded in it, across
 * the required 1 us .. 100 s. Bucket 0 holds < 512 ns, the last >= 2^37 ns.
 *
 * Consistency and cost: a writer updates a process-local shadow of its
 * block (no shared cache line is touched per token, invariant 8) and
 * publishes it into the segment under the block's sequence lock
 * (ck_sequence) at the end of an update group once flush_ns have passed
 * since the last publication (1 ms by default, the clock read every 8th
 * group; 0 publishes every group), and whenever it calls shm_stats_flush()
 * - which a stage does before it blocks, so an idle stage's numbers are
 * never stale. A publication copies
 * only what changed (counters, gauges, the touched bucket range), so the
 * sequence is odd for well under a microsecond. shm_stats_begin/end group
 * several updates (a finished request: counters + histograms) so that no
 * publication splits them. A reader copies each block under its sequence
 * and retries on a change, so each block is read as of one publication and
 * e.g. a histogram's count equals the sum of its buckets. Sums over blocks
 * are of consistent parts; blocks are not read at one instant. Counters of
 * every block that ever had a writer are summed; gauges only of blocks
 * whose writer process is alive (a dead batcher's "running" must not count).
 *
 * Readers: shm_stats_open(read-only) -> shm_stats_snapshot() -> format it
 * with shm_stats_prom() (/metrics) or shm_stats_json() (favo stat --json);
 * the table's descriptors (shm_stats_*_desc) name favo stat's columns.
 *
 * Invariants (cited by FAVO_ASSERT as "stats inv N"):
 *   1. A block has one writer at a time (a thread of the stage in its slot);
 *      a restarted stage takes its slot back (shm_stats_writer_init) and
 *      continues the counters, so they stay monotonic across restarts.
 *   2. A writer that died inside a publication leaves an odd sequence; the
 *      next writer of that slot makes it even again. Readers never wait
 *      forever: they yield to a writer preempted inside a publication for
 *      up to SHM_STATS_STUCK_NS, not at all when its pid is gone, and retry
 *      a changed sequence SHM_STATS_READ_TRIES times; then they take the
 *      block as it is and count it in snap->torn.
 *   3. Writers check at attach that the segment's layout is exactly their
 *      build's (same binary as the supervisor); readers accept appended
 *      entries (they read the common prefix of every table).
 *   4. Numbers only: nothing a request supplies is ever stored here. The
 *      one kind of name is a tenant's, from the operator's keys file (the
 *      key a request presents selects it; the request cannot spell it).
 *   5. The "windows" and "info" regions and the stage rows (except the
 *      heartbeat) have one writer, the supervisor; the "tenants" region
 *      has one writer slot (the first to count a tenant claims it, a
 *      restarted stage in the same slot continues it).
 *
 * Errors: 0 or -errno; the open/create functions leave a message in
 * st->seg.err (see shm_seg.h for the codes). -ERANGE: a slot out of range.
 */
#ifndef SHM_STATS_H
#define SHM_STATS_H

#include <ck_pr.h>
#include <ck_sequence.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "favo_base.h"
#include "shm_seg.h"
#include "shm_stats_table.h"

/* ---------------------------------------------------------------- table */

#define SHM_X_ENUM_C(id, ...) SHM_C_##id,
#define SHM_X_ENUM_G(id, ...) SHM_G_##id,
#define SHM_X_ENUM_H(id, ...) SHM_H_##id,
enum shm_stats_counter { SHM_STATS_COUNTERS(SHM_X_ENUM_C) SHM_C__COUNT };
enum shm_stats_gauge { SHM_STATS_GAUGES(SHM_X_ENUM_G) SHM_G__COUNT };
enum shm_stats_hist_id { SHM_STATS_HISTS(SHM_X_ENUM_H) SHM_H__COUNT };

enum shm_stats_agg { SHM_AGG_SUM, SHM_AGG_MAX };

/* One table entry as data, for formatters (generated from the table). */
struct shm_stats_desc {
    const char *prom;    /* Prometheus metric name */
    const char *labels;  /* 'status="ok"' or "" */
    const char *column;  /* favo stat column heading */
    const char *help;
    enum shm_stats_agg agg; /* gauges only */
};
extern const struct shm_stats_desc shm_stats_counter_desc[SHM_C__COUNT];
extern const struct shm_stats_desc shm_stats_gauge_desc[SHM_G__COUNT];
extern const struct shm_stats_desc shm_stats_hist_desc[SHM_H__COUNT];

/* ----------------------------------------------------------- histograms */

#define SHM_HIST_SUB_BITS 7
#define SHM_HIST_SUB (1u << SHM_HIST_SUB_BITS) /* buckets per power of two */
#define SHM_HIST_MIN_SHIFT 9                   /* first octave: [512 ns, 1024 ns) */
#define SHM_HIST_MAX_SHIFT 36                  /* last octave: [2^36, 2^37) ns */
#define SHM_HIST_NBUCKETS (2 + (SHM_HIST_MAX_SHIFT - SHM_HIST_MIN_SHIFT + 1) * SHM_HIST_SUB)

/* Bucket of a value in nanoseconds. */
static inline unsigned shm_hist_bucket(uint64_t ns)
{
    unsigned p;

    if (ns < (1ull << SHM_HIST_MIN_SHIFT))
        return 0;
    if (ns >= (1ull << (SHM_HIST_MAX_SHIFT + 1)))
        return SHM_HIST_NBUCKETS - 1;
    p = 63u - (unsigned)__builtin_clzll(ns);
    return 1 + (p - SHM_HIST_MIN_SHIFT) * SHM_HIST_SUB +
           (unsigned)((ns >> (p - SHM_HIST_SUB_BITS)) & (SHM_HIST_SUB - 1));
}

/* Bounds of bucket b: [lower, upper) in ns; the last bucket's upper is
 * UINT64_MAX. */
uint64_t shm_hist_lower(unsigned b);
uint64_t shm_hist_upper(unsigned b);

/* ------------------------------------------------------------- the stages */

enum shm_stage_kind {
    SHM_STAGE_NONE = 0,
    SHM_STAGE_SUPERVISOR,
    SHM_STAGE_INGRESS,
    SHM_STAGE_BATCHER,
    SHM_STAGE_ENGINE,
    SHM_STAGE_EGRESS,
    SHM_STAGE__COUNT
};

/* Stage process states, written by the supervisor:
 *
 *   EMPTY --spawn--> STARTING --ready--> RUNNING --TERM--> DRAINING --> STOPPED
 *                       ^                   |
 *                       |  (exit/crash)     v
 *                       +---- BACKOFF <-----+----(5 fails in 60 s)--> FAILED
 */
enum shm_stage_state {
    SHM_STAGE_EMPTY = 0,
    SHM_STAGE_STARTING,
    SHM_STAGE_RUNNING,
    SHM_STAGE_DRAINING,
    SHM_STAGE_STOPPED,
    SHM_STAGE_BACKOFF,
    SHM_STAGE_FAILED,
    SHM_STAGE_STATE__COUNT
};

const char *shm_stage_kind_name(enum shm_stage_kind k);   /* "engine", "?" */
const char *shm_stage_state_name(enum shm_stage_state s); /* "running", "?" */

#define SHM_STATS_MAX_CORES 256

/* One row of the stage table, as the supervisor describes it. */
struct shm_stage_info {
    enum shm_stage_kind kind;
    uint32_t index;          /* worker or rank number */
    enum shm_stage_state state;
    int32_t pid;
    uint32_t restarts;
    uint64_t cores[SHM_STATS_MAX_CORES / 64]; /* CPU mask */
    uint64_t started_ns;     /* CLOCK_MONOTONIC */
    uint64_t last_restart_ns; /* exit -> replacement up of the last restart; 0: none */
    uint64_t max_restart_ns;  /* the longest so far */
    uint64_t exit_ns;        /* CLOCK_MONOTONIC of the last exit; 0: none */
};

/* ------------------------------------------------------ in shared memory */

struct shm_stats_meta {
    uint32_t nwriters, nstages;
    uint32_t block_size, stage_size;
    uint32_t ncounters, counters_off;  /* offsets within a block */
    uint32_t ngauges, gauges_off;
    uint32_t nhists, hists_off, hist_size;
    uint32_t hist_nbuckets, hist_sub_bits, hist_min_shift, hist_max_shift;
    uint32_t reserved;
};

struct shm_stats_hist {
    uint64_t count;
    uint64_t sum_ns;
    uint64_t range;          /* first << 32 | last bucket ever used: readers copy
                                only those (0 while count is 0) */
    uint64_t buckets[SHM_HIST_NBUCKETS];
};

struct shm_stats_block {
    ck_sequence_t seq;
    int32_t pid;             /* of the writer; 0: never attached */
    uint32_t stage_kind;
    uint32_t stage_index;
    uint32_t attaches;       /* how many writers have taken this slot */
    FAVO_ALIGNED_CL uint64_t counters[SHM_C__COUNT];
    FAVO_ALIGNED_CL uint64_t gauges[SHM_G__COUNT];
    FAVO_ALIGNED_CL struct shm_stats_hist hist[SHM_H__COUNT];
} FAVO_ALIGNED_CL;

struct shm_stats_stage {
    ck_sequence_t seq;       /* supervisor */
    uint32_t kind, index, state;
    int32_t pid;
    uint32_t restarts;
    uint64_t cores[SHM_STATS_MAX_CORES / 64];
    uint64_t started_ns;
    FAVO_ALIGNED_CL uint64_t heartbeat_ns; /* the stage itself, CLOCK_MONOTONIC */
    /* appended (supervisor, under seq): readers of older builds ignore them */
    uint64_t last_restart_ns, max_restart_ns, exit_ns;
} FAVO_ALIGNED_CL;

/* "info" region (supervisor, once). */
#define SHM_STATS_VERSION_MAX 48
struct shm_stats_info {
    char version[SHM_STATS_VERSION_MAX]; /* favo's, NUL-terminated */
    int32_t sup_pid;
    uint32_t reserved;
};

/* "windows" region (supervisor): window w covers the span_ns before
 * updated_ns. Readers walk it with the header's sizes and offsets. */
#define SHM_STATS_NWIN 2             /* 10 s, 60 s */
#define SHM_STATS_NQ 4               /* p50, p90, p95, p99 */
extern const double shm_stats_win_q[SHM_STATS_NQ];
extern const uint64_t shm_stats_win_len_ns[SHM_STATS_NWIN];

struct shm_stats_win_hist {
    uint64_t count, sum_ns;
    uint64_t q_ns[SHM_STATS_NQ];
};

struct shm_stats_win {
    uint64_t len_ns;         /* nominal: 10 s or 60 s */
    uint64_t span_ns;        /* what it really covers; 0: no history yet */
    uint64_t counters[SHM_C__COUNT];      /* increase over the span */
    struct shm_stats_win_hist hist[SHM_H__COUNT];
};

struct shm_stats_wins {
    ck_sequence_t seq;
    uint32_t nwin, win_size, ncounters, counters_off;
    uint32_t nhists, hists_off, hist_size, nq;
    uint64_t updated_ns;     /* CLOCK_MONOTONIC */
    FAVO_ALIGNED_CL struct shm_stats_win win[SHM_STATS_NWIN];
};

/* "tenants" region. Row SHM_STATS_TENANTS - 1 is "other": every tenant
 * that found the table full. A row's name is written once, when it is
 * claimed (used 0 -> 1), under the row's sequence. */
#define SHM_STATS_TENANTS 32
#define SHM_STATS_TENANT_NAME 64
struct shm_stats_tenant {
    ck_sequence_t seq;
    uint32_t used;
    char name[SHM_STATS_TENANT_NAME]; /* NUL-terminated; "" = no key (open server) */
    uint64_t requests;       /* finished, any status */
    uint64_t errors;         /* of which status >= 400 (499: client gone) */
    uint64_t prompt_tokens, gen_tokens;
} FAVO_ALIGNED_CL;

struct shm_stats_tenants {
    uint32_t nrows, row_size;
    uint32_t owner;          /* writer slot + 1 that claimed the table; 0: none */
    uint32_t reserved;
    FAVO_ALIGNED_CL struct shm_stats_tenant row[SHM_STATS_TENANTS];
};

/* ------------------------------------------------------ process handles */

struct shm_stats {
    struct shm_seg seg;
    const struct shm_stats_meta *meta;
    const uint64_t *names;
    char *blocks;            /* meta->nwriters blocks of meta->block_size */
    char *stages;            /* meta->nstages rows of meta->stage_size */
    unsigned nc, ng, nh;     /* entries common to the segment and this build */
    /* optional regions: NULL in a segment of a build without them */
    struct shm_stats_info *info;
    struct shm_stats_wins *wins;
    struct shm_stats_tenants *tenants;
};

#define SHM_STATS_FLUSH_NS 1000000ull /* default publication interval */
#define SHM_STATS_DIRTY 16
#define SHM_STATS_CLOCK_EVERY 8

/* A writer's process-local shadow of its block (never in shared memory). */
struct shm_stats_local {
    uint64_t counters[SHM_C__COUNT];
    uint64_t gauges[SHM_G__COUNT];
    struct shm_stats_hist hist[SHM_H__COUNT];
    /* Buckets touched since the last publication: the first
     * SHM_STATS_DIRTY of them listed, and their range (lo > hi: none). */
    uint32_t lo[SHM_H__COUNT], hi[SHM_H__COUNT];
    uint32_t ndirty[SHM_H__COUNT];
    uint16_t dirty[SHM_H__COUNT][SHM_STATS_DIRTY];
    bool dirty_any;
};

struct shm_stats_writer {
    struct shm_stats *st;        /* the segment it writes */
    unsigned slot;
    struct shm_stats_block *b;   /* in the segment */
    struct shm_stats_local *loc; /* malloc'd by shm_stats_writer_init */
    uint64_t flush_ns;
    uint64_t last_flush_ns;
    unsigned depth;              /* begin/end nesting */
    unsigned groups;             /* update groups ended, for the clock check */
};

/* Supervisor: create /favo.<instance> with nwriters blocks and nstages rows
 * and publish it. */
int shm_stats_create(struct shm_stats *st, const char *instance, unsigned nwriters,
                     unsigned nstages);
/* Attach: writable for stages (writer blocks, heartbeats), read-only for
 * favo stat and /metrics. */
int shm_stats_open(struct shm_stats *st, const char *instance, bool writable);
void shm_stats_close(struct shm_stats *st);
/* Supervisor: mark the segment GONE, unlink its name, unmap. */
int shm_stats_destroy(struct shm_stats *st);

/* Stage: take writer slot `slot` (stats inv 1, 2, 3); the shadow starts
 * from the block's values, so counters continue across a restart. flush_ns:
 * publication interval (SHM_STATS_FLUSH_NS; 0 = every update group).
 * Returns 0, -EACCES (read-only), -ERANGE, -EPROTO or -ENOMEM. */
int shm_stats_writer_init(struct shm_stats *st, unsigned slot, enum shm_stage_kind kind,
                          unsigned index, uint64_t flush_ns, struct shm_stats_writer *w);
/* Publish now, then free the shadow. */
void shm_stats_writer_free(struct shm_stats_writer *w);
/* Publish the shadow into the segment now (cold: call before blocking). */
void shm_stats_flush(struct shm_stats_writer *w);

/* Group updates so no publication splits them. Nestable. */
static inline void shm_stats_begin(struct shm_stats_writer *w)
{
    w->depth++;
}

/* The clock is read once every SHM_STATS_CLOCK_EVERY groups, not per group. */
static inline void shm_stats_end(struct shm_stats_writer *w)
{
    FAVO_ASSERT(w->depth > 0);
    if (--w->depth)
        return;
    if (w->flush_ns == 0 ||
        ((++w->groups % SHM_STATS_CLOCK_EVERY) == 0 &&
         favo_now_ns() - w->last_flush_ns >= w->flush_ns))
        shm_stats_flush(w);
}

static inline void shm_stats_add(struct shm_stats_writer *w, enum shm_stats_counter c,
                                 uint64_t n)
{
    shm_stats_begin(w);
    w->loc->counters[c] += n;
    w->loc->dirty_any = true;
    shm_stats_end(w);
}

static inline void shm_stats_gauge_set(struct shm_stats_writer *w, enum shm_stats_gauge g,
                                       double v)
{
    shm_stats_begin(w);
    memcpy(&w->loc->gauges[g], &v, sizeof(v));
    w->loc->dirty_any = true;
    shm_stats_end(w);
}

static inline void shm_stats_observe(struct shm_stats_writer *w, enum shm_stats_hist_id h,
                                     uint64_t ns)
{
    struct shm_stats_local *l = w->loc;
    unsigned b = shm_hist_bucket(ns);

    shm_stats_begin(w);
    l->hist[h].buckets[b]++;
    l->hist[h].count++;
    l->hist[h].sum_ns += ns;
    if (l->ndirty[h] < SHM_STATS_DIRTY)
        l->dirty[h][l->ndirty[h]] = (uint16_t)b;
    l->ndirty[h]++;
    if (b < l->lo[h])
        l->lo[h] = b;
    if (b > l->hi[h])
        l->hi[h] = b;
    l->dirty_any = true;
    shm_stats_end(w);
}

/* Supervisor: write row `row` of the stage table (its own sequence lock). */
int shm_stats_stage_set(struct shm_stats *st, unsigned row, const struct shm_stage_info *info);
/* Supervisor: favo's version and its pid into the "info" region. */
int shm_stats_set_info(struct shm_stats *st, const char *version, int32_t sup_pid);

/*
 * Count one finished request of tenant `name` (at most name_max bytes, NUL
 * or not; "" for a server without keys) in the "tenants" region: requests
 * +1, errors +1 when status >= 400, and its prompt and generated tokens.
 * Cold path (once per request; a linear scan of at most 32 names). The
 * first writer slot to call it owns the table (stats inv 5): another slot
 * gets -EBUSY. -ENOENT: the segment has no tenants region.
 */
int shm_stats_tenant_count(struct shm_stats_writer *w, const char *name, size_t name_max,
                           uint64_t prompt_tok, uint64_t gen_tok, unsigned status);

/*
 * Supervisor: the 10 s and 60 s windows. Allocate the history once
 * (about 3.6 MiB, process-local), then call shm_stats_win_update with a
 * fresh snapshot of the same segment about once a second; it writes the
 * "windows" region. Returns 0, -ENOENT (no windows region) or -ENOMEM.
 */
struct shm_stats_windower;
struct shm_stats_snap;
int shm_stats_win_new(struct shm_stats_windower **wp);
void shm_stats_win_free(struct shm_stats_windower *w);
int shm_stats_win_update(struct shm_stats *st, struct shm_stats_windower *w,
                         const struct shm_stats_snap *snap);
/* Stage: "I am alive" in its row, CLOCK_MONOTONIC now. */
int shm_stats_heartbeat(struct shm_stats *st, unsigned row);
/* The same through a writer, for a stage whose row is its writer slot (as
 * favo serve assigns them) and that holds only the writer. */
int shm_stats_writer_heartbeat(struct shm_stats_writer *w);

/* ---------------------------------------------------------------- reader */

#define SHM_STATS_READ_TRIES 1000
#define SHM_STATS_STUCK_NS 200000000ull /* 200 ms */
#define SHM_STATS_SNAP_STAGES 64

struct shm_stats_hist_snap {
    uint64_t count;
    uint64_t sum_ns;
    uint64_t buckets[SHM_HIST_NBUCKETS];
};

struct shm_stage_snap {
    struct shm_stage_info info;
    uint64_t heartbeat_ns;   /* 0: never */
    /* filled by the reader's caller when it can (favo stat reads
     * /proc/PID/stat): CPU seconds used by the stage process, and its CPU
     * use in percent of one core over the last interval (-1: unknown) */
    double cpu_s, cpu_pct;
};

struct shm_stats_win_snap {
    uint64_t len_ns, span_ns;    /* span 0: no data */
    uint64_t counters[SHM_C__COUNT];
    struct shm_stats_win_hist hist[SHM_H__COUNT];
};

struct shm_stats_tenant_snap {
    char name[SHM_STATS_TENANT_NAME];
    bool other;                  /* the overflow row */
    uint64_t requests, errors, prompt_tokens, gen_tokens;
};

/* A consistent (per block) copy of the whole segment, summed over writers.
 * About 120 KiB: allocate it, do not put it on a small stack. */
struct shm_stats_snap {
    uint64_t generation;     /* of the segment; changes when the instance restarts */
    uint64_t taken_ns;       /* CLOCK_MONOTONIC when the snapshot was taken */
    unsigned nwriters;       /* blocks that have had a writer */
    unsigned torn;           /* blocks read without a stable sequence (inv 2) */
    uint64_t counters[SHM_C__COUNT];
    double gauges[SHM_G__COUNT];
    struct shm_stats_hist_snap hist[SHM_H__COUNT];
    unsigned nstages;        /* rows copied (at most SHM_STATS_SNAP_STAGES) */
    struct shm_stage_snap stages[SHM_STATS_SNAP_STAGES];
    /* "info": "" when the segment has none */
    char version[SHM_STATS_VERSION_MAX];
    int32_t sup_pid;
    uint64_t created_wall_ns;    /* the segment's creation (uptime = now - this) */
    uint64_t taken_wall_ns;      /* wall clock when the snapshot was taken */
    /* "windows": nwin 0 when the segment has none */
    unsigned nwin;
    struct shm_stats_win_snap win[SHM_STATS_NWIN];
    /* "tenants": rows in use */
    unsigned ntenants;
    struct shm_stats_tenant_snap tenants[SHM_STATS_TENANTS];
};

/* Take a snapshot. Lock-free, never blocks a writer; returns 0, or -ESTALE
 * when the instance has destroyed the segment (re-open it). */
int shm_stats_snapshot(const struct shm_stats *st, struct shm_stats_snap *snap);
/* Value (ns) at quantile q (0..1) of a histogram: the midpoint of the bucket
 * holding it (within 0.4% of every value in that bucket); 0 when empty. */
uint64_t shm_stats_hist_quantile(const struct shm_stats_hist_snap *h, double q);

/* Prometheus text exposition (format 0.0.4) of a snapshot into buf (NUL
 * terminated). Returns the length it needs (like snprintf): a result >= len
 * means buf was too small. Histograms use the fixed bounds below (seconds),
 * each count summing the fine buckets below the bound. */
size_t shm_stats_prom(const struct shm_stats_snap *snap, char *buf, size_t len);

/* One JSON object for `favo stat --json`, keyed by the table's favo stat
 * columns (same return convention as shm_stats_prom):
 *   {"generation":1,"writers":3,"torn":0,"version":"0.1.0",
 *    "supervisor_pid":800,"uptime_s":61.2,
 *    "counters":{"prompt_tok":120,...},"gauges":{"running":2,...},
 *    "histograms":{"ttft":{"count":9,"sum_s":0.8,"p50_s":...,"p90_s":...,
 *                  "p95_s":...,"p99_s":...},...},          (since start)
 *    "stages":[{"stage":"engine","index":0,"state":"running","pid":812,
 *               "restarts":1,"cores":"2-3","last_restart_s":0.21,
 *               "max_restart_s":0.21,"cpu_s":3.5,"cpu_pct":40.2,
 *               "heartbeat_age_s":0.004},...],
 *    "rings":{"req":{"depth":0,"capacity":1024,"messages":18,
 *             "per_s_10s":1.1,"per_s_60s":0.6},...},
 *    "windows":{"10s":{"span_s":10.0,"counters":{...},"per_s":{...},
 *               "tokens_per_step":12.5,"histograms":{"ttft":{"count":5,
 *               "sum_s":..,"p50_s":..,"p90_s":..,"p95_s":..,"p99_s":..},...}},
 *               "60s":{...}},
 *    "tenants":[{"tenant":"acme","other":false,"requests":3,"errors":0,
 *                "prompt_tokens":30,"gen_tokens":90},...]}
 * Heartbeat ages are taken against snap->taken_ns; -1 when never. cpu_s
 * and cpu_pct are -1 unless the caller filled them (favo stat does). */
size_t shm_stats_json(const struct shm_stats_snap *snap, char *buf, size_t len);

/* The human view of `favo stat`: counters (with a per-second rate against
 * prev when given, for --watch), gauges, latency quantiles in ms, and the
 * stage table; one column per table entry. Same return convention. */
size_t shm_stats_text(const struct shm_stats_snap *snap, const struct shm_stats_snap *prev,
                      char *buf, size_t len);

#endif /* SHM_STATS_H */
