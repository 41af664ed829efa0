/*
 * shm_stats_prom.c - Prometheus text exposition (format 0.0.4) of a stats
 * snapshot, for the /metrics handler. Every name, label and HELP line comes
 * from the table in shm_stats_table.h; the stage table adds
 * favo_stage_restarts_total{stage,index}.
 *
 * Histograms: the fine log-linear buckets are summed into the fixed `le`
 * bounds below. A fine bucket counts towards `le` when its lower bound is
 * <= le, so a count may include values at most 0.78% (one fine bucket) above
 * the bound.
 */
#include "shm_stats.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>

static const double prom_bounds_s[] = { 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1,
                                        0.25,  0.5,    0.75,  1.0,  2.5,   5.0,  7.5,   10.0,
                                        20.0,  30.0,   60.0,  100.0 };

struct out {
    char *buf;
    size_t len;
    size_t need; /* bytes the whole text needs, NUL excluded */
};

__attribute__((format(printf, 2, 3))) static void out_printf(struct out *o, const char *fmt, ...)
{
    va_list ap;
    size_t room = o->need < o->len ? o->len - o->need : 0;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(room ? o->buf + o->need : NULL, room, fmt, ap);
    va_end(ap);
    if (n > 0)
        o->need += (size_t)n;
}

static void out_double(struct out *o, double v)
{
    if (isnan(v))
        out_printf(o, "NaN");
    else if (isinf(v))
        out_printf(o, v > 0 ? "+Inf" : "-Inf");
    else
        out_printf(o, "%.17g", v);
}

/* HELP and TYPE once per metric: entries of one metric are adjacent. */
static void out_head(struct out *o, const struct shm_stats_desc *d, const struct shm_stats_desc *prev,
                     const char *type)
{
    if (prev && !strcmp(prev->prom, d->prom))
        return;
    out_printf(o, "# HELP %s %s\n# TYPE %s %s\n", d->prom, d->help, d->prom, type);
}

static void out_name(struct out *o, const struct shm_stats_desc *d)
{
    if (d->labels[0])
        out_printf(o, "%s{%s} ", d->prom, d->labels);
    else
        out_printf(o, "%s ", d->prom);
}

size_t shm_stats_prom(const struct shm_stats_snap *snap, char *buf, size_t len)
{
    struct out o = { buf, len, 0 };
    bool any_stage = false;

    if (len)
        buf[0] = 0;
    for (unsigned i = 0; i < SHM_C__COUNT; i++) {
        const struct shm_stats_desc *d = &shm_stats_counter_desc[i];

        out_head(&o, d, i ? &shm_stats_counter_desc[i - 1] : NULL, "counter");
        out_name(&o, d);
        out_printf(&o, "%llu\n", (unsigned long long)snap->counters[i]);
    }
    for (unsigned i = 0; i < SHM_G__COUNT; i++) {
        const struct shm_stats_desc *d = &shm_stats_gauge_desc[i];

        out_head(&o, d, i ? &shm_stats_gauge_desc[i - 1] : NULL, "gauge");
        out_name(&o, d);
        out_double(&o, snap->gauges[i]);
        out_printf(&o, "\n");
    }
    for (unsigned h = 0; h < SHM_H__COUNT; h++) {
        const struct shm_stats_desc *d = &shm_stats_hist_desc[h];
        const struct shm_stats_hist_snap *hs = &snap->hist[h];
        uint64_t cum = 0, total = 0;
        unsigned k = 0;

        out_head(&o, d, NULL, "histogram");
        for (unsigned b = 0; b < FAVO_ARRAY_SIZE(prom_bounds_s); b++) {
            uint64_t le_ns = (uint64_t)llround(prom_bounds_s[b] * 1e9);

            for (; k < SHM_HIST_NBUCKETS && shm_hist_lower(k) <= le_ns; k++)
                cum += hs->buckets[k];
            out_printf(&o, "%s_bucket{le=\"%g\"} %llu\n", d->prom, prom_bounds_s[b],
                       (unsigned long long)cum);
        }
        for (unsigned b = 0; b < SHM_HIST_NBUCKETS; b++)
            total += hs->buckets[b];
        /* _count is the +Inf bucket by definition: both come from the
         * buckets, which the per-block sequence lock kept consistent. */
        out_printf(&o, "%s_bucket{le=\"+Inf\"} %llu\n", d->prom, (unsigned long long)total);
        out_printf(&o, "%s_sum ", d->prom);
        out_double(&o, (double)hs->sum_ns / 1e9);
        out_printf(&o, "\n%s_count %llu\n", d->prom, (unsigned long long)total);
    }
    for (unsigned r = 0; r < snap->nstages; r++) {
        const struct shm_stage_snap *s = &snap->stages[r];

        if (s->info.kind == SHM_STAGE_NONE)
            continue;
        if (!any_stage)
            out_printf(&o, "# HELP favo_stage_restarts_total Restarts of each stage process "
                       "by the supervisor.\n# TYPE favo_stage_restarts_total counter\n");
        any_stage = true;
        out_printf(&o, "favo_stage_restarts_total{stage=\"%s\",index=\"%u\"} %u\n",
                   shm_stage_kind_name(s->info.kind), s->info.index, s->info.restarts);
    }
    return o.need;
}
