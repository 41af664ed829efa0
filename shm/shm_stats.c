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

const double shm_stats_win_q[SHM_STATS_NQ] = { 0.5, 0.9, 0.95, 0.99 };
const uint64_t shm_stats_win_len_ns[SHM_STATS_NWIN] = { 10000000000ull, 60000000000ull };

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
        { "info", sizeof(struct shm_stats_info), 0 },
        { "windows", sizeof(struct shm_stats_wins), 0 },
        { "tenants", sizeof(struct shm_stats_tenants), 0 },
    };
    struct shm_stats_wins *wins;
    struct shm_stats_tenants *ten;
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
    st->info = shm_seg_region(&st->seg, "info", NULL);
    st->wins = wins = shm_seg_region(&st->seg, "windows", NULL);
    st->tenants = ten = shm_seg_region(&st->seg, "tenants", NULL);
    st->nc = SHM_C__COUNT;
    st->ng = SHM_G__COUNT;
    st->nh = SHM_H__COUNT;
    wins->nwin = SHM_STATS_NWIN;
    wins->win_size = sizeof(struct shm_stats_win);
    wins->ncounters = SHM_C__COUNT;
    wins->counters_off = offsetof(struct shm_stats_win, counters);
    wins->nhists = SHM_H__COUNT;
    wins->hists_off = offsetof(struct shm_stats_win, hist);
    wins->hist_size = sizeof(struct shm_stats_win_hist);
    wins->nq = SHM_STATS_NQ;
    for (unsigned i = 0; i < SHM_STATS_NWIN; i++)
        wins->win[i].len_ns = shm_stats_win_len_ns[i];
    ten->nrows = SHM_STATS_TENANTS;
    ten->row_size = sizeof(struct shm_stats_tenant);
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

/* The regions a segment of an older build may lack, each checked before
 * anything in it is followed (seg inv 3): absent or malformed -> NULL. */
static void stats_open_optional(struct shm_stats *st)
{
    size_t sz = 0;
    struct shm_stats_info *info = shm_seg_region(&st->seg, "info", &sz);
    struct shm_stats_wins *w;
    struct shm_stats_tenants *t;

    st->info = info && sz >= sizeof(*info) ? info : NULL;
    w = shm_seg_region(&st->seg, "windows", &sz);
    st->wins = NULL;
    if (w && sz >= offsetof(struct shm_stats_wins, win) && w->nwin >= 1 && w->nwin <= 16 &&
        w->nq == SHM_STATS_NQ && w->hist_size >= sizeof(struct shm_stats_win_hist) &&
        w->win_size % 8 == 0 && w->counters_off % 8 == 0 && w->hists_off % 8 == 0 &&
        w->hist_size % 8 == 0 &&
        offsetof(struct shm_stats_wins, win) + (uint64_t)w->nwin * w->win_size <= sz &&
        (uint64_t)w->counters_off + 8ull * w->ncounters <= w->win_size &&
        (uint64_t)w->hists_off + (uint64_t)w->hist_size * w->nhists <= w->win_size)
        st->wins = w;
    t = shm_seg_region(&st->seg, "tenants", &sz);
    st->tenants = NULL;
    if (t && sz >= offsetof(struct shm_stats_tenants, row) && t->nrows >= 1 && t->nrows <= 4096 &&
        t->row_size >= sizeof(struct shm_stats_tenant) && t->row_size % 8 == 0 &&
        offsetof(struct shm_stats_tenants, row) + (uint64_t)t->nrows * t->row_size <= sz)
        st->tenants = t;
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
    stats_open_optional(st);
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
    w->st = st;
    w->slot = slot;
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
    ck_pr_store_64(&s->last_restart_ns, info->last_restart_ns);
    ck_pr_store_64(&s->max_restart_ns, info->max_restart_ns);
    ck_pr_store_64(&s->exit_ns, info->exit_ns);
    ck_sequence_write_end(&s->seq);
    return 0;
}

int shm_stats_set_info(struct shm_stats *st, const char *version, int32_t sup_pid)
{
    char v[SHM_STATS_VERSION_MAX] = { 0 };

    if (!st->seg.writable)
        return -EACCES;
    if (!st->info)
        return -ENOENT;
    snprintf(v, sizeof(v), "%s", version);
    /* written before the stages start; readers copy it with plain loads
     * of words that never change afterwards */
    for (unsigned i = 0; i < sizeof(v); i += 8) {
        uint64_t x;

        memcpy(&x, v + i, 8);
        ck_pr_store_64((uint64_t *)(void *)(st->info->version + i), x);
    }
    ck_pr_store_32((uint32_t *)&st->info->sup_pid, (uint32_t)sup_pid);
    return 0;
}

/* Names are copied a word at a time with ck_pr (a writer and a reader
 * never share a plain access, so TSan has nothing to misread). */
static void name_store(char *dst, const char *src, size_t n)
{
    char tmp[SHM_STATS_TENANT_NAME] = { 0 };

    memcpy(tmp, src, FAVO_MIN(n, sizeof(tmp) - 1));
    for (unsigned i = 0; i < sizeof(tmp); i += 8) {
        uint64_t x;

        memcpy(&x, tmp + i, 8);
        ck_pr_store_64((uint64_t *)(void *)(dst + i), x);
    }
}

/* n: a multiple of 8; dst gets a NUL in its last byte. */
static void name_load(char *dst, const char *src, size_t n)
{
    for (size_t i = 0; i + 8 <= n; i += 8) {
        uint64_t x = ck_pr_load_64((const uint64_t *)(const void *)(src + i));

        memcpy(dst + i, &x, 8);
    }
    dst[n - 1] = 0;
}

static struct shm_stats_tenant *tenant_row(const struct shm_stats_tenants *t, unsigned r)
{
    return (struct shm_stats_tenant *)((char *)(uintptr_t)t->row + (size_t)r * t->row_size);
}

int shm_stats_tenant_count(struct shm_stats_writer *w, const char *name, size_t name_max,
                           uint64_t prompt_tok, uint64_t gen_tok, unsigned status)
{
    struct shm_stats_tenants *t = w->st ? w->st->tenants : NULL;
    char key[SHM_STATS_TENANT_NAME] = { 0 }, cur[SHM_STATS_TENANT_NAME];
    struct shm_stats_tenant *row = NULL;
    uint32_t owner;
    size_t n;

    if (!t)
        return -ENOENT;
    owner = ck_pr_load_32(&t->owner);
    if (owner == 0)
        ck_pr_store_32(&t->owner, w->slot + 1);
    else if (owner != w->slot + 1)
        return -EBUSY; /* stats inv 5 */
    n = strnlen(name, FAVO_MIN(name_max, sizeof(key) - 1));
    memcpy(key, name, n);
    for (unsigned r = 0; r + 1 < t->nrows && !row; r++) {
        struct shm_stats_tenant *x = tenant_row(t, r);

        if (!ck_pr_load_32(&x->used)) {
            ck_sequence_write_begin(&x->seq);
            name_store(x->name, key, n);
            ck_pr_store_32(&x->used, 1);
            ck_sequence_write_end(&x->seq);
            row = x;
            break;
        }
        name_load(cur, x->name, sizeof(cur));
        if (!memcmp(cur, key, sizeof(key)))
            row = x;
    }
    if (!row) { /* the table is full: "other" */
        row = tenant_row(t, t->nrows - 1);
        if (!ck_pr_load_32(&row->used)) {
            ck_sequence_write_begin(&row->seq);
            name_store(row->name, "other", 5);
            ck_pr_store_32(&row->used, 1);
            ck_sequence_write_end(&row->seq);
        }
    }
    ck_sequence_write_begin(&row->seq);
    ck_pr_store_64(&row->requests, row->requests + 1);
    if (status >= 400)
        ck_pr_store_64(&row->errors, row->errors + 1);
    ck_pr_store_64(&row->prompt_tokens, row->prompt_tokens + prompt_tok);
    ck_pr_store_64(&row->gen_tokens, row->gen_tokens + gen_tok);
    ck_sequence_write_end(&row->seq);
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

int shm_stats_writer_heartbeat(struct shm_stats_writer *w)
{
    return w->st ? shm_stats_heartbeat(w->st, w->slot) : -EINVAL;
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

/* The windows, under the region's sequence (the supervisor writes them
 * once a second, so a retry is rare). */
static void wins_read(const struct shm_stats *st, struct shm_stats_snap *snap)
{
    const struct shm_stats_wins *w = st->wins;
    unsigned nwin = FAVO_MIN(w->nwin, (unsigned)SHM_STATS_NWIN);
    unsigned nc = FAVO_MIN(w->ncounters, st->nc), nh = FAVO_MIN(w->nhists, st->nh);
    unsigned tries = 0, v = 0;

    for (;;) {
        bool stable = seq_begin(&w->seq, NULL, &v);

        for (unsigned i = 0; i < nwin; i++) {
            const char *b = (const char *)w + offsetof(struct shm_stats_wins, win) +
                            (size_t)i * w->win_size;
            struct shm_stats_win_snap *o = &snap->win[i];

            o->len_ns = ck_pr_load_64((const uint64_t *)(const void *)b);
            o->span_ns = ck_pr_load_64((const uint64_t *)(const void *)(b + 8));
            for (unsigned c = 0; c < nc; c++)
                o->counters[c] = ck_pr_load_64((const uint64_t *)(const void *)
                                               (b + w->counters_off) + c);
            for (unsigned h = 0; h < nh; h++) {
                const uint64_t *hp = (const uint64_t *)(const void *)(b + w->hists_off +
                                                                      (size_t)h * w->hist_size);

                o->hist[h].count = ck_pr_load_64(&hp[0]);
                o->hist[h].sum_ns = ck_pr_load_64(&hp[1]);
                for (unsigned q = 0; q < SHM_STATS_NQ; q++)
                    o->hist[h].q_ns[q] = ck_pr_load_64(&hp[2 + q]);
            }
        }
        if (!stable || !seq_retry(&w->seq, v) || ++tries >= SHM_STATS_READ_TRIES)
            break;
    }
    snap->nwin = nwin;
}

static void tenants_read(const struct shm_stats_tenants *t, struct shm_stats_snap *snap)
{
    unsigned nrows = FAVO_MIN(t->nrows, (unsigned)SHM_STATS_TENANTS);

    snap->ntenants = 0;
    for (unsigned r = 0; r < nrows; r++) {
        const struct shm_stats_tenant *x =
            (const struct shm_stats_tenant *)((const char *)t->row + (size_t)r * t->row_size);
        struct shm_stats_tenant_snap *o = &snap->tenants[snap->ntenants];
        unsigned tries = 0, v = 0;
        bool used = false;

        for (;;) {
            bool stable = seq_begin(&x->seq, NULL, &v);

            used = ck_pr_load_32(&x->used) != 0;
            name_load(o->name, x->name, sizeof(o->name));
            o->requests = ck_pr_load_64(&x->requests);
            o->errors = ck_pr_load_64(&x->errors);
            o->prompt_tokens = ck_pr_load_64(&x->prompt_tokens);
            o->gen_tokens = ck_pr_load_64(&x->gen_tokens);
            if (!stable || !seq_retry(&x->seq, v) || ++tries >= SHM_STATS_READ_TRIES)
                break;
        }
        if (!used)
            continue;
        o->other = r == t->nrows - 1;
        snap->ntenants++;
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
            if (st->meta->stage_size >= offsetof(struct shm_stats_stage, exit_ns) + 8) {
                o->info.last_restart_ns = ck_pr_load_64(&s->last_restart_ns);
                o->info.max_restart_ns = ck_pr_load_64(&s->max_restart_ns);
                o->info.exit_ns = ck_pr_load_64(&s->exit_ns);
            }
            if (!stable || !seq_retry(&s->seq, v) || ++tries >= SHM_STATS_READ_TRIES)
                break;
        }
        o->heartbeat_ns = ck_pr_load_64(&s->heartbeat_ns);
        o->cpu_s = o->cpu_pct = -1;
    }
    snap->created_wall_ns = shm_seg_hdr(&st->seg)->created_ns;
    snap->taken_wall_ns = favo_wall_ns();
    if (st->info) {
        name_load(snap->version, st->info->version, sizeof(snap->version));
        snap->sup_pid = (int32_t)ck_pr_load_32((const uint32_t *)&st->info->sup_pid);
    }
    if (st->wins)
        wins_read(st, snap);
    if (st->tenants)
        tenants_read(st->tenants, snap);
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

/* ------------------------------------------------------------- windows */

#define WIN_FINE 11   /* a second apart: the 10 s window */
#define WIN_COARSE 7  /* ten seconds apart: the 60 s window */
#define WIN_SLACK_NS 500000000ull /* a tick late is still "10 s ago" */

struct win_entry {
    uint64_t t;
    uint64_t counters[SHM_C__COUNT];
    struct shm_stats_hist_snap hist[SHM_H__COUNT];
};

struct shm_stats_windower {
    struct win_entry fine[WIN_FINE], coarse[WIN_COARSE];
    unsigned nfine, ncoarse;     /* pushed so far */
    uint64_t generation;
    struct shm_stats_hist_snap diff;
    struct shm_stats_win out;
};

int shm_stats_win_new(struct shm_stats_windower **wp)
{
    *wp = calloc(1, sizeof(**wp));
    return *wp ? 0 : -ENOMEM;
}

void shm_stats_win_free(struct shm_stats_windower *w)
{
    free(w);
}

static void win_push(struct win_entry *e, const struct shm_stats_snap *snap)
{
    e->t = snap->taken_ns;
    memcpy(e->counters, snap->counters, sizeof(e->counters));
    memcpy(e->hist, snap->hist, sizeof(e->hist));
}

/* The oldest kept entry at most len (+ slack) before now, or NULL. */
static const struct win_entry *win_base(const struct shm_stats_windower *w, uint64_t now,
                                        uint64_t len)
{
    const struct win_entry *best = NULL;
    const struct win_entry *sets[2] = { w->fine, w->coarse };
    unsigned ns[2] = { FAVO_MIN(w->nfine, (unsigned)WIN_FINE),
                       FAVO_MIN(w->ncoarse, (unsigned)WIN_COARSE) };

    for (unsigned k = 0; k < 2; k++)
        for (unsigned i = 0; i < ns[k]; i++) {
            const struct win_entry *e = &sets[k][i];

            if (e->t >= now || now - e->t > len + WIN_SLACK_NS)
                continue;
            if (!best || e->t < best->t)
                best = e;
        }
    return best;
}

int shm_stats_win_update(struct shm_stats *st, struct shm_stats_windower *w,
                         const struct shm_stats_snap *snap)
{
    struct shm_stats_wins *r = st->wins;
    uint64_t now = snap->taken_ns;

    if (!r)
        return -ENOENT;
    if (!st->seg.writable)
        return -EACCES;
    if (w->generation != snap->generation) {
        w->nfine = w->ncoarse = 0;
        w->generation = snap->generation;
    }
    for (unsigned i = 0; i < SHM_STATS_NWIN; i++) {
        const struct win_entry *b = win_base(w, now, shm_stats_win_len_ns[i]);
        struct shm_stats_win *o = &w->out;

        memset(o, 0, sizeof(*o));
        o->len_ns = shm_stats_win_len_ns[i];
        if (b) {
            o->span_ns = now - b->t;
            for (unsigned c = 0; c < SHM_C__COUNT; c++)
                o->counters[c] = snap->counters[c] - FAVO_MIN(b->counters[c], snap->counters[c]);
            for (unsigned h = 0; h < SHM_H__COUNT; h++) {
                const struct shm_stats_hist_snap *cur = &snap->hist[h], *old = &b->hist[h];
                uint64_t n = 0;

                for (unsigned k = 0; k < SHM_HIST_NBUCKETS; k++) {
                    w->diff.buckets[k] = cur->buckets[k] - FAVO_MIN(old->buckets[k],
                                                                    cur->buckets[k]);
                    n += w->diff.buckets[k];
                }
                o->hist[h].count = n;
                o->hist[h].sum_ns = cur->sum_ns - FAVO_MIN(old->sum_ns, cur->sum_ns);
                for (unsigned q = 0; q < SHM_STATS_NQ && n; q++)
                    o->hist[h].q_ns[q] = shm_stats_hist_quantile(&w->diff, shm_stats_win_q[q]);
            }
        }
        /* stats inv 5: the supervisor is this region's only writer */
        ck_sequence_write_begin(&r->seq);
        for (unsigned k = 0; k < sizeof(*o) / 8; k++) {
            uint64_t x;

            memcpy(&x, (const char *)o + 8 * k, 8);
            ck_pr_store_64((uint64_t *)(void *)((char *)&r->win[i] + 8 * k), x);
        }
        ck_pr_store_64(&r->updated_ns, now);
        ck_sequence_write_end(&r->seq);
    }
    win_push(&w->fine[w->nfine++ % WIN_FINE], snap);
    if (w->ncoarse == 0 ||
        now - w->coarse[(w->ncoarse - 1) % WIN_COARSE].t + WIN_SLACK_NS >= 10000000000ull)
        win_push(&w->coarse[w->ncoarse++ % WIN_COARSE], snap);
    return 0;
}
