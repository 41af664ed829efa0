/*
 * shm_stats.c - the stats segment: creation, writer slots, the stage table
 * and the lock-free snapshot reader (shm_stats.h).
 */
#include "shm_stats.h"

#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define SHM_X_DESC_C(id, prom, labels, col, help) { prom, labels, col, help, SHM_AGG_SUM },
#define SHM_X_DESC_G(id, prom, labels, col, agg, help) { prom, labels, col, help, SHM_AGG_##agg },
#define SHM_X_DESC_H(id, prom, col, help) { prom, "", col, help, SHM_AGG_SUM },
const struct shm_stats_desc shm_stats_counter_desc[SHM_C__COUNT] = {
    SHM_STATS_COUNTERS(SHM_X_DESC_C)
};
const struct shm_stats_desc shm_stats_gauge_desc[SHM_G__COUNT] = {
    SHM_STATS_GAUGES(SHM_X_DESC_G)
};
const struct shm_stats_desc shm_stats_hist_desc[SHM_H__COUNT] = {
    SHM_STATS_HISTS(SHM_X_DESC_H)
};

#define NNAMES (SHM_C__COUNT + SHM_G__COUNT + SHM_H__COUNT)

uint64_t shm_hist_lower(unsigned b)
{
    unsigned p, sub;

    if (b == 0)
        return 0;
    if (b >= SHM_HIST_NBUCKETS - 1)
        return 1ull << (SHM_HIST_MAX_SHIFT + 1);
    p = SHM_HIST_MIN_SHIFT + (b - 1) / SHM_HIST_SUB;
    sub = (b - 1) % SHM_HIST_SUB;
    return (uint64_t)(SHM_HIST_SUB + sub) << (p - SHM_HIST_SUB_BITS);
}

uint64_t shm_hist_upper(unsigned b)
{
    return b >= SHM_HIST_NBUCKETS - 1 ? UINT64_MAX : shm_hist_lower(b + 1);
}

const char *shm_stage_kind_name(enum shm_stage_kind k)
{
    static const char *const n[] = { "none", "supervisor", "ingress", "batcher", "engine",
                                     "egress" };

    return (unsigned)k < FAVO_ARRAY_SIZE(n) ? n[k] : "?";
}

const char *shm_stage_state_name(enum shm_stage_state s)
{
    static const char *const n[] = { "empty", "starting", "running", "draining",
                                      "stopped", "backoff", "failed" };

    return (unsigned)s < FAVO_ARRAY_SIZE(n) ? n[s] : "?";
}

/* FNV-1a over "name{labels}": the identity of a table entry. */
static uint64_t name_hash(const struct shm_stats_desc *d)
{
    uint64_t h = 0xcbf29ce484222325ull;
    const char *parts[3] = { d->prom, "{", d->labels };

    for (unsigned i = 0; i < 3; i++)
        for (const char *s = parts[i]; *s; s++)
            h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return h;
}

static void names_fill(uint64_t *names)
{
    unsigned k = 0;

    for (unsigned i = 0; i < SHM_C__COUNT; i++)
        names[k++] = name_hash(&shm_stats_counter_desc[i]);
    for (unsigned i = 0; i < SHM_G__COUNT; i++)
        names[k++] = name_hash(&shm_stats_gauge_desc[i]);
    for (unsigned i = 0; i < SHM_H__COUNT; i++)
        names[k++] = name_hash(&shm_stats_hist_desc[i]);
}

static void meta_fill(struct shm_stats_meta *m, unsigned nwriters, unsigned nstages)
{
    memset(m, 0, sizeof(*m));
    m->nwriters = nwriters;
    m->nstages = nstages;
    m->block_size = sizeof(struct shm_stats_block);
    m->stage_size = sizeof(struct shm_stats_stage);
    m->ncounters = SHM_C__COUNT;
    m->counters_off = offsetof(struct shm_stats_block, counters);
    m->ngauges = SHM_G__COUNT;
    m->gauges_off = offsetof(struct shm_stats_block, gauges);
    m->nhists = SHM_H__COUNT;
    m->hists_off = offsetof(struct shm_stats_block, hist);
    m->hist_size = sizeof(struct shm_stats_hist);
    m->hist_nbuckets = SHM_HIST_NBUCKETS;
    m->hist_sub_bits = SHM_HIST_SUB_BITS;
    m->hist_min_shift = SHM_HIST_MIN_SHIFT;
    m->hist_max_shift = SHM_HIST_MAX_SHIFT;
}

__attribute__((format(printf, 3, 4))) static int st_fail(struct shm_stats *st, int rc,
                                                         const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(st->seg.err, sizeof(st->seg.err), fmt, ap);
    va_end(ap);
    return rc;
}

int shm_stats_create(struct shm_stats *st, const char *instance, unsigned nwriters,
                     unsigned nstages)
{
    struct shm_seg_spec regs[] = {
        { "meta", sizeof(struct shm_stats_meta), 0 },
        { "names", NNAMES * sizeof(uint64_t), 0 },
        { "writers", (size_t)nwriters * sizeof(struct shm_stats_block), 0 },
        { "stages", (size_t)nstages * sizeof(struct shm_stats_stage), 0 },
    };
    struct shm_stats_meta *m;
    uint64_t *names;
    int rc;

    memset(st, 0, sizeof(*st));
    if (nwriters == 0 || nwriters > 1024 || nstages > 1024) {
        st->seg.fd = -1;
        return st_fail(st, -EINVAL, "stats segment: %u writers, %u stages: 1..1024 writers "
                       "and 0..1024 stages", nwriters, nstages);
    }
    rc = shm_seg_create_stats(&st->seg, instance, regs, FAVO_ARRAY_SIZE(regs));
    if (rc)
        return rc;
    m = shm_seg_region(&st->seg, "meta", NULL);
    names = shm_seg_region(&st->seg, "names", NULL);
    meta_fill(m, nwriters, nstages);
    names_fill(names);
    st->meta = m;
    st->names = names;
    st->blocks = shm_seg_region(&st->seg, "writers", NULL);
    st->stages = shm_seg_region(&st->seg, "stages", NULL);
    st->nc = SHM_C__COUNT;
    st->ng = SHM_G__COUNT;
    st->nh = SHM_H__COUNT;
    /* ftruncate gave zeros: every sequence is 0 (even), every row EMPTY. */
    shm_seg_publish(&st->seg);
    return 0;
}

/* Check the meta region of a segment we did not create (untrusted). */
static int stats_check_meta(struct shm_stats *st, size_t meta_sz, size_t names_sz,
                            size_t writers_sz, size_t stages_sz)
{
    const struct shm_stats_meta *m = st->meta;
    uint64_t mine[NNAMES];
    const char *what = st->seg.path;
    unsigned segoff[3] = { 0, m->ncounters, m->ncounters + m->ngauges };
    unsigned myoff[3] = { 0, SHM_C__COUNT, SHM_C__COUNT + SHM_G__COUNT };
    unsigned common[3];

    if (meta_sz < sizeof(*m))
        return st_fail(st, -EBADMSG, "stats segment %s: meta region of %zu bytes, need %zu",
                       what, meta_sz, sizeof(*m));
    if (m->hist_nbuckets != SHM_HIST_NBUCKETS || m->hist_sub_bits != SHM_HIST_SUB_BITS ||
        m->hist_min_shift != SHM_HIST_MIN_SHIFT || m->hist_max_shift != SHM_HIST_MAX_SHIFT)
        return st_fail(st, -EPROTO, "stats segment %s: histograms of %u buckets (%u sub-bits, "
                       "shifts %u..%u), this favo uses %u (%u, %u..%u): layout version should "
                       "have changed", what, m->hist_nbuckets, m->hist_sub_bits,
                       m->hist_min_shift, m->hist_max_shift, (unsigned)SHM_HIST_NBUCKETS,
                       SHM_HIST_SUB_BITS, SHM_HIST_MIN_SHIFT, SHM_HIST_MAX_SHIFT);
    /* Every field that is followed must stay inside its region (seg inv 3). */
    if (m->ncounters > 4096 || m->ngauges > 4096 || m->nhists > 256 ||
        m->block_size % FAVO_CACHELINE || m->stage_size < sizeof(struct shm_stats_stage) ||
        (uint64_t)m->counters_off + 8ull * m->ncounters > m->block_size ||
        (uint64_t)m->gauges_off + 8ull * m->ngauges > m->block_size ||
        m->hist_size < sizeof(struct shm_stats_hist) ||
        (uint64_t)m->hists_off + (uint64_t)m->hist_size * m->nhists > m->block_size ||
        m->block_size < sizeof(ck_sequence_t) ||
        (uint64_t)m->nwriters * m->block_size > writers_sz ||
        (uint64_t)m->nstages * m->stage_size > stages_sz ||
        8ull * ((uint64_t)m->ncounters + m->ngauges + m->nhists) > names_sz)
        return st_fail(st, -EBADMSG, "stats segment %s: meta region (counts and offsets) does "
                       "not fit its regions: %u writers x %u bytes, %u counters, %u gauges, "
                       "%u histograms", what, m->nwriters, m->block_size, m->ncounters,
                       m->ngauges, m->nhists);
    names_fill(mine);
    common[0] = FAVO_MIN(m->ncounters, (unsigned)SHM_C__COUNT);
    common[1] = FAVO_MIN(m->ngauges, (unsigned)SHM_G__COUNT);
    common[2] = FAVO_MIN(m->nhists, (unsigned)SHM_H__COUNT);
    for (unsigned t = 0; t < 3; t++) {
        static const char *const tn[] = { "counter", "gauge", "histogram" };
        static const struct shm_stats_desc *const td[] = {
            shm_stats_counter_desc, shm_stats_gauge_desc, shm_stats_hist_desc
        };

        for (unsigned i = 0; i < common[t]; i++)
            if (st->names[segoff[t] + i] != mine[myoff[t] + i])
                return st_fail(st, -EPROTO, "stats segment %s: %s %u is not %s{%s} there: the "
                               "stats table changed other than by appending", what, tn[t], i,
                               td[t][i].prom, td[t][i].labels);
    }
    st->nc = common[0];
    st->ng = common[1];
    st->nh = common[2];
    return 0;
}

int shm_stats_open(struct shm_stats *st, const char *instance, bool writable)
{
    size_t msz = 0, nsz = 0, wsz = 0, ssz = 0;
    int rc;

    memset(st, 0, sizeof(*st));
    rc = shm_seg_open_stats(&st->seg, instance, writable);
    if (rc)
        return rc;
    st->meta = shm_seg_region(&st->seg, "meta", &msz);
    st->names = shm_seg_region(&st->seg, "names", &nsz);
    st->blocks = shm_seg_region(&st->seg, "writers", &wsz);
    st->stages = shm_seg_region(&st->seg, "stages", &ssz);
    if (!st->meta || !st->names || !st->blocks || !st->stages) {
        rc = st_fail(st, -EBADMSG, "stats segment %s: a region (meta, names, writers, stages) "
                     "is missing", st->seg.path);
        goto out;
    }
    rc = stats_check_meta(st, msz, nsz, wsz, ssz);
    if (rc)
        goto out;
    return 0;
out:
    shm_seg_close(&st->seg);
    return rc;
}

void shm_stats_close(struct shm_stats *st)
{
    shm_seg_close(&st->seg);
    st->meta = NULL;
    st->blocks = st->stages = NULL;
}

int shm_stats_destroy(struct shm_stats *st)
{
    int rc = shm_seg_destroy(&st->seg);

    st->meta = NULL;
    st->blocks = st->stages = NULL;
    return rc;
}

static bool layout_is_mine(const struct shm_stats_meta *m)
{
    struct shm_stats_meta mine;

    meta_fill(&mine, m->nwriters, m->nstages);
    return memcmp(&mine, m, sizeof(mine)) == 0;
}

static void local_clean(struct shm_stats_local *l)
{
    for (unsigned h = 0; h < SHM_H__COUNT; h++) {
        l->lo[h] = UINT32_MAX;
        l->hi[h] = 0;
        l->ndirty[h] = 0;
    }
    l->dirty_any = false;
}

int shm_stats_writer_init(struct shm_stats *st, unsigned slot, enum shm_stage_kind kind,
                          unsigned index, uint64_t flush_ns, struct shm_stats_writer *w)
{
    struct shm_stats_block *b;
    struct shm_stats_local *l;
    unsigned seq;

    memset(w, 0, sizeof(*w));
    if (!st->seg.writable)
        return st_fail(st, -EACCES, "stats segment %s: opened read-only, cannot write",
                       st->seg.path);
    if (slot >= st->meta->nwriters)
        return st_fail(st, -ERANGE, "stats segment %s: writer slot %u, the segment has %u",
                       st->seg.path, slot, st->meta->nwriters);
    if (!layout_is_mine(st->meta)) /* stats inv 3 */
        return st_fail(st, -EPROTO, "stats segment %s: created by another build (its stats "
                       "table differs): a stage must run the supervisor's binary",
                       st->seg.path);
    l = calloc(1, sizeof(*l));
    if (!l)
        return -ENOMEM;
    b = (struct shm_stats_block *)(st->blocks + (size_t)slot * st->meta->block_size);
    /* stats inv 2: our predecessor died inside a publication. Its partial
     * copy is kept: every word in it is a value it really had. */
    seq = ck_pr_load_uint(&b->seq.sequence);
    if (seq & 1)
        ck_pr_store_uint(&b->seq.sequence, seq + 1);
    /* stats inv 1: continue from what the previous writer published. */
    for (unsigned i = 0; i < SHM_C__COUNT; i++)
        l->counters[i] = ck_pr_load_64(&b->counters[i]);
    /* Gauges are the state of the live writer: a new one starts at 0. */
    for (unsigned h = 0; h < SHM_H__COUNT; h++) {
        l->hist[h].count = ck_pr_load_64(&b->hist[h].count);
        l->hist[h].sum_ns = ck_pr_load_64(&b->hist[h].sum_ns);
        for (unsigned k = 0; k < SHM_HIST_NBUCKETS; k++)
            l->hist[h].buckets[k] = ck_pr_load_64(&b->hist[h].buckets[k]);
    }
    local_clean(l);
    w->b = b;
    w->loc = l;
    w->flush_ns = flush_ns;
    w->last_flush_ns = favo_now_ns();
    ck_sequence_write_begin(&b->seq);
    ck_pr_store_32((uint32_t *)&b->pid, (uint32_t)getpid());
    ck_pr_store_32(&b->stage_kind, (uint32_t)kind);
    ck_pr_store_32(&b->stage_index, index);
    ck_pr_store_32(&b->attaches, b->attaches + 1);
    for (unsigned i = 0; i < SHM_G__COUNT; i++)
        ck_pr_store_64(&b->gauges[i], 0);
    ck_sequence_write_end(&b->seq);
    return 0;
}

void shm_stats_flush(struct shm_stats_writer *w)
{
    struct shm_stats_local *l = w->loc;
    struct shm_stats_block *b = w->b;

    w->last_flush_ns = favo_now_ns();
    if (!l->dirty_any)
        return;
    /* Odd sequence: readers retry until the matching write_end. ck's
     * write_begin/end carry the store fences that order the copies. */
    ck_sequence_write_begin(&b->seq);
    for (unsigned i = 0; i < SHM_C__COUNT; i++)
        if (b->counters[i] != l->counters[i])
            ck_pr_store_64(&b->counters[i], l->counters[i]);
    for (unsigned i = 0; i < SHM_G__COUNT; i++)
        ck_pr_store_64(&b->gauges[i], l->gauges[i]);
    for (unsigned h = 0; h < SHM_H__COUNT; h++) {
        if (l->lo[h] > l->hi[h])
            continue;
        if (l->ndirty[h] <= SHM_STATS_DIRTY) {
            for (unsigned i = 0; i < l->ndirty[h]; i++) {
                unsigned k = l->dirty[h][i];

                ck_pr_store_64(&b->hist[h].buckets[k], l->hist[h].buckets[k]);
            }
        } else {
            for (unsigned k = l->lo[h]; k <= l->hi[h]; k++)
                if (b->hist[h].buckets[k] != l->hist[h].buckets[k])
                    ck_pr_store_64(&b->hist[h].buckets[k], l->hist[h].buckets[k]);
        }
        {
            uint64_t r = ck_pr_load_64(&b->hist[h].range), first = r >> 32, last = r & 0xffffffffu;

            if (b->hist[h].count == 0 || l->lo[h] < first)
                first = l->lo[h];
            if (b->hist[h].count == 0 || l->hi[h] > last)
                last = l->hi[h];
            ck_pr_store_64(&b->hist[h].range, first << 32 | last);
        }
        ck_pr_store_64(&b->hist[h].sum_ns, l->hist[h].sum_ns);
        ck_pr_store_64(&b->hist[h].count, l->hist[h].count);
    }
    ck_sequence_write_end(&b->seq);
    local_clean(l);
}

void shm_stats_writer_free(struct shm_stats_writer *w)
{
    if (!w->loc)
        return;
    shm_stats_flush(w);
    free(w->loc);
    w->loc = NULL;
    w->b = NULL;
}

static struct shm_stats_stage *stage_row(const struct shm_stats *st, unsigned row)
{
    return (struct shm_stats_stage *)(st->stages + (size_t)row * st->meta->stage_size);
}

int shm_stats_stage_set(struct shm_stats *st, unsigned row, const struct shm_stage_info *info)
{
    struct shm_stats_stage *s;

    if (!st->seg.writable)
        return -EACCES;
    if (row >= st->meta->nstages)
        return -ERANGE;
    s = stage_row(st, row);
    ck_sequence_write_begin(&s->seq);
    ck_pr_store_32(&s->kind, (uint32_t)info->kind);
    ck_pr_store_32(&s->index, info->index);
    ck_pr_store_32(&s->state, (uint32_t)info->state);
    ck_pr_store_32((uint32_t *)&s->pid, (uint32_t)info->pid);
    ck_pr_store_32(&s->restarts, info->restarts);
    for (unsigned i = 0; i < FAVO_ARRAY_SIZE(s->cores); i++)
        ck_pr_store_64(&s->cores[i], info->cores[i]);
    ck_pr_store_64(&s->started_ns, info->started_ns);
    ck_sequence_write_end(&s->seq);
    return 0;
}

int shm_stats_heartbeat(struct shm_stats *st, unsigned row)
{
    if (!st->seg.writable)
        return -EACCES;
    if (row >= st->meta->nstages)
        return -ERANGE;
    ck_pr_store_64(&stage_row(st, row)->heartbeat_ns, favo_now_ns());
    return 0;
}

/* ---------------------------------------------------------------- reader */

static bool pid_dead(int32_t pid)
{
    return pid > 0 && kill((pid_t)pid, 0) < 0 && errno == ESRCH;
}

/*
 * Begin a read of a sequence lock without waiting forever on an odd value
 * (stats inv 2). A writer preempted inside a publication (stages share
 * cores on small hosts) is waited for, yielding the CPU to it, up to
 * SHM_STATS_STUCK_NS; a writer whose process is gone is not waited for.
 * Returns false when the write seems abandoned.
 */
static bool seq_begin(const ck_sequence_t *sq, const int32_t *pidp, unsigned *v)
{
    uint64_t deadline = 0;

    for (unsigned spins = 0;; spins++) {
        *v = ck_pr_load_uint(&sq->sequence);
        if ((*v & 1) == 0)
            break;
        if (spins < 128) {
            favo_cpu_relax();
            continue;
        }
        if (!deadline)
            deadline = favo_now_ns() + SHM_STATS_STUCK_NS;
        if (favo_now_ns() > deadline ||
            (pidp && pid_dead((int32_t)ck_pr_load_32((const uint32_t *)pidp))))
            return false;
        sched_yield();
    }
    ck_pr_fence_load(); /* the sequence before the data it guards */
    return true;
}

static bool seq_retry(const ck_sequence_t *sq, unsigned v)
{
    ck_pr_fence_load(); /* the data before the second look at the sequence */
    return ck_pr_load_uint(&sq->sequence) != v;
}

/* One block's values, read under its sequence lock. */
struct block_copy {
    int32_t pid;
    uint64_t counters[SHM_C__COUNT];
    uint64_t gauges[SHM_G__COUNT];
    uint64_t hcount[SHM_H__COUNT], hsum[SHM_H__COUNT];
    unsigned first[SHM_H__COUNT], last[SHM_H__COUNT];
};

static void block_read(const struct shm_stats *st, const char *b, struct block_copy *c,
                       struct shm_stats_hist_snap *hist_tmp, bool *torn)
{
    const struct shm_stats_meta *m = st->meta;
    const ck_sequence_t *sq = (const ck_sequence_t *)b;
    const int32_t *pidp = (const int32_t *)(b + offsetof(struct shm_stats_block, pid));
    unsigned tries = 0, v = 0;

    *torn = false;
    for (;;) {
        bool stable = seq_begin(sq, pidp, &v);

        c->pid = (int32_t)ck_pr_load_32((const uint32_t *)(b + offsetof(struct shm_stats_block,
                                                                         pid)));
        for (unsigned i = 0; i < st->nc; i++)
            c->counters[i] = ck_pr_load_64((const uint64_t *)(b + m->counters_off) + i);
        for (unsigned i = 0; i < st->ng; i++)
            c->gauges[i] = ck_pr_load_64((const uint64_t *)(b + m->gauges_off) + i);
        for (unsigned h = 0; h < st->nh; h++) {
            const uint64_t *hp = (const uint64_t *)(b + m->hists_off + (size_t)h * m->hist_size);

            uint64_t range;
            unsigned first, last;

            c->hcount[h] = ck_pr_load_64(&hp[0]);
            c->hsum[h] = ck_pr_load_64(&hp[1]);
            range = ck_pr_load_64(&hp[2]);
            /* Buckets outside the range are zero (an update under way is
             * caught by the sequence check below); the range is untrusted
             * like everything a reader maps, so clamp it. */
            c->first[h] = first = (unsigned)FAVO_MIN(range >> 32, SHM_HIST_NBUCKETS - 1ull);
            c->last[h] = last = (unsigned)FAVO_MIN(range & 0xffffffffu, SHM_HIST_NBUCKETS - 1ull);
            if (c->hcount[h] == 0 || first > last)
                continue;
            for (unsigned k = first; k <= last; k++)
                hist_tmp[h].buckets[k] = ck_pr_load_64(&hp[3 + k]);
        }
        if (!stable) {
            *torn = true;
            return;
        }
        if (!seq_retry(sq, v))
            return;
        if (++tries >= SHM_STATS_READ_TRIES) {
            *torn = true;
            return;
        }
    }
}

int shm_stats_snapshot(const struct shm_stats *st, struct shm_stats_snap *snap)
{
    const struct shm_stats_meta *m = st->meta;
    struct shm_stats_hist_snap *tmp;
    struct block_copy c;
    bool gauge_seen = false;

    if (shm_seg_stale(&st->seg))
        return -ESTALE;
    tmp = calloc(SHM_H__COUNT, sizeof(*tmp));
    if (!tmp)
        return -ENOMEM;
    memset(snap, 0, sizeof(*snap));
    snap->generation = shm_seg_hdr(&st->seg)->generation;
    snap->taken_ns = favo_now_ns();
    for (unsigned w = 0; w < m->nwriters; w++) {
        const char *b = st->blocks + (size_t)w * m->block_size;
        bool torn, alive;

        block_read(st, b, &c, tmp, &torn);
        if (c.pid == 0)
            continue; /* never attached */
        snap->nwriters++;
        snap->torn += torn;
        for (unsigned i = 0; i < st->nc; i++)
            snap->counters[i] += c.counters[i];
        alive = !pid_dead(c.pid);
        for (unsigned i = 0; i < st->ng && alive; i++) {
            double v;

            memcpy(&v, &c.gauges[i], sizeof(v));
            if (shm_stats_gauge_desc[i].agg == SHM_AGG_MAX)
                snap->gauges[i] = gauge_seen ? FAVO_MAX(snap->gauges[i], v) : v;
            else
                snap->gauges[i] += v;
        }
        gauge_seen = gauge_seen || alive;
        for (unsigned h = 0; h < st->nh; h++) {
            if (c.hcount[h] == 0 || c.first[h] > c.last[h])
                continue;
            snap->hist[h].count += c.hcount[h];
            snap->hist[h].sum_ns += c.hsum[h];
            for (unsigned k = c.first[h]; k <= c.last[h]; k++)
                snap->hist[h].buckets[k] += tmp[h].buckets[k];
        }
    }
    free(tmp);
    snap->nstages = FAVO_MIN(m->nstages, (unsigned)SHM_STATS_SNAP_STAGES);
    for (unsigned r = 0; r < snap->nstages; r++) {
        const struct shm_stats_stage *s = stage_row(st, r);
        struct shm_stage_snap *o = &snap->stages[r];
        unsigned tries = 0, v = 0;

        for (;;) {
            bool stable = seq_begin(&s->seq, NULL, &v);

            o->info.kind = (enum shm_stage_kind)ck_pr_load_32(&s->kind);
            o->info.index = ck_pr_load_32(&s->index);
            o->info.state = (enum shm_stage_state)ck_pr_load_32(&s->state);
            o->info.pid = (int32_t)ck_pr_load_32((const uint32_t *)&s->pid);
            o->info.restarts = ck_pr_load_32(&s->restarts);
            for (unsigned i = 0; i < FAVO_ARRAY_SIZE(s->cores); i++)
                o->info.cores[i] = ck_pr_load_64(&s->cores[i]);
            o->info.started_ns = ck_pr_load_64(&s->started_ns);
            if (!stable || !seq_retry(&s->seq, v) || ++tries >= SHM_STATS_READ_TRIES)
                break;
        }
        o->heartbeat_ns = ck_pr_load_64(&s->heartbeat_ns);
    }
    return 0;
}

uint64_t shm_stats_hist_quantile(const struct shm_stats_hist_snap *h, double q)
{
    uint64_t total = 0, rank, seen = 0;

    for (unsigned k = 0; k < SHM_HIST_NBUCKETS; k++)
        total += h->buckets[k];
    if (total == 0)
        return 0;
    if (q < 0)
        q = 0;
    if (q > 1)
        q = 1;
    rank = (uint64_t)(q * (double)total + 0.5); /* nearest rank, 1-based */
    if (rank < 1)
        rank = 1;
    if (rank > total)
        rank = total;
    for (unsigned k = 0; k < SHM_HIST_NBUCKETS; k++) {
        seen += h->buckets[k];
        if (seen >= rank) {
            uint64_t lo = shm_hist_lower(k), hi = shm_hist_upper(k);

            if (k == SHM_HIST_NBUCKETS - 1)
                return lo;
            return lo + (hi - lo) / 2;
        }
    }
    return 0;
}
