/*
 * shm_stats_prom.c - text forms of a stats snapshot: Prometheus exposition
 * (format 0.0.4) for the /metrics handler, JSON for `favo stat --json` and
 * the text view of `favo stat`.
 *
 * Prometheus: Every name, label and HELP line comes
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

/* "0-3,8,10-11" from a CPU mask. */
static void out_cores(struct out *o, const uint64_t *mask, unsigned nbits)
{
    bool first = true;

    for (unsigned c = 0; c < nbits; c++) {
        unsigned e;

        if (!(mask[c / 64] >> (c % 64) & 1))
            continue;
        for (e = c; e + 1 < nbits && (mask[(e + 1) / 64] >> ((e + 1) % 64) & 1); e++)
            ;
        if (e == c)
            out_printf(o, "%s%u", first ? "" : ",", c);
        else
            out_printf(o, "%s%u-%u", first ? "" : ",", c, e);
        first = false;
        c = e;
    }
}

static void out_json_double(struct out *o, double v)
{
    if (isnan(v) || isinf(v))
        out_printf(o, "null"); /* JSON has neither */
    else
        out_printf(o, "%.9g", v);
}

size_t shm_stats_json(const struct shm_stats_snap *snap, char *buf, size_t len)
{
    struct out o = { buf, len, 0 };
    bool first = true;

    if (len)
        buf[0] = 0;
    out_printf(&o, "{\"generation\":%llu,\"writers\":%u,\"torn\":%u,\"counters\":{",
               (unsigned long long)snap->generation, snap->nwriters, snap->torn);
    for (unsigned i = 0; i < SHM_C__COUNT; i++)
        out_printf(&o, "%s\"%s\":%llu", i ? "," : "", shm_stats_counter_desc[i].column,
                   (unsigned long long)snap->counters[i]);
    out_printf(&o, "},\"gauges\":{");
    for (unsigned i = 0; i < SHM_G__COUNT; i++) {
        out_printf(&o, "%s\"%s\":", i ? "," : "", shm_stats_gauge_desc[i].column);
        out_json_double(&o, snap->gauges[i]);
    }
    out_printf(&o, "},\"histograms\":{");
    for (unsigned h = 0; h < SHM_H__COUNT; h++) {
        const struct shm_stats_hist_snap *hs = &snap->hist[h];
        static const double qs[] = { 0.5, 0.9, 0.99 };
        static const char *const qn[] = { "p50_s", "p90_s", "p99_s" };

        out_printf(&o, "%s\"%s\":{\"count\":%llu,\"sum_s\":", h ? "," : "",
                   shm_stats_hist_desc[h].column, (unsigned long long)hs->count);
        out_json_double(&o, (double)hs->sum_ns / 1e9);
        for (unsigned q = 0; q < FAVO_ARRAY_SIZE(qs); q++) {
            out_printf(&o, ",\"%s\":", qn[q]);
            out_json_double(&o, (double)shm_stats_hist_quantile(hs, qs[q]) / 1e9);
        }
        out_printf(&o, "}");
    }
    out_printf(&o, "},\"stages\":[");
    for (unsigned r = 0; r < snap->nstages; r++) {
        const struct shm_stage_snap *s = &snap->stages[r];

        if (s->info.kind == SHM_STAGE_NONE)
            continue;
        out_printf(&o, "%s{\"stage\":\"%s\",\"index\":%u,\"state\":\"%s\",\"pid\":%d,"
                   "\"restarts\":%u,\"cores\":\"", first ? "" : ",",
                   shm_stage_kind_name(s->info.kind), s->info.index,
                   shm_stage_state_name(s->info.state), (int)s->info.pid, s->info.restarts);
        out_cores(&o, s->info.cores, SHM_STATS_MAX_CORES);
        out_printf(&o, "\",\"heartbeat_age_s\":");
        if (s->heartbeat_ns == 0)
            out_printf(&o, "-1");
        else
            out_json_double(&o, snap->taken_ns > s->heartbeat_ns
                                    ? (double)(snap->taken_ns - s->heartbeat_ns) / 1e9
                                    : 0.0);
        out_printf(&o, "}");
        first = false;
    }
    out_printf(&o, "]}");
    return o.need;
}

size_t shm_stats_text(const struct shm_stats_snap *snap, const struct shm_stats_snap *prev,
                      char *buf, size_t len)
{
    struct out o = { buf, len, 0 };
    double dt = prev && snap->taken_ns > prev->taken_ns && prev->generation == snap->generation
                    ? (double)(snap->taken_ns - prev->taken_ns) / 1e9
                    : 0;

    if (len)
        buf[0] = 0;
    out_printf(&o, "generation %llu, %u writers%s\n\n", (unsigned long long)snap->generation,
               snap->nwriters, snap->torn ? ", some read while their writer was stuck" : "");
    out_printf(&o, "%-12s %16s%s\n", "counter", "total", dt > 0 ? "   per second" : "");
    for (unsigned i = 0; i < SHM_C__COUNT; i++) {
        out_printf(&o, "%-12s %16llu", shm_stats_counter_desc[i].column,
                   (unsigned long long)snap->counters[i]);
        if (dt > 0)
            out_printf(&o, " %12.1f",
                       (double)(snap->counters[i] - FAVO_MIN(prev->counters[i],
                                                             snap->counters[i])) / dt);
        out_printf(&o, "\n");
    }
    out_printf(&o, "\n%-12s %16s\n", "gauge", "value");
    for (unsigned i = 0; i < SHM_G__COUNT; i++)
        out_printf(&o, "%-12s %16.3f\n", shm_stats_gauge_desc[i].column, snap->gauges[i]);
    out_printf(&o, "\n%-12s %10s %10s %10s %10s %10s\n", "latency ms", "count", "mean", "p50",
               "p90", "p99");
    for (unsigned h = 0; h < SHM_H__COUNT; h++) {
        const struct shm_stats_hist_snap *hs = &snap->hist[h];

        out_printf(&o, "%-12s %10llu %10.3f %10.3f %10.3f %10.3f\n",
                   shm_stats_hist_desc[h].column, (unsigned long long)hs->count,
                   hs->count ? (double)hs->sum_ns / (double)hs->count / 1e6 : 0.0,
                   (double)shm_stats_hist_quantile(hs, 0.5) / 1e6,
                   (double)shm_stats_hist_quantile(hs, 0.9) / 1e6,
                   (double)shm_stats_hist_quantile(hs, 0.99) / 1e6);
    }
    out_printf(&o, "\n%-10s %5s %-9s %8s %8s %-12s %s\n", "stage", "index", "state", "pid",
               "restarts", "cores", "heartbeat");
    for (unsigned r = 0; r < snap->nstages; r++) {
        const struct shm_stage_snap *st = &snap->stages[r];

        if (st->info.kind == SHM_STAGE_NONE)
            continue;
        out_printf(&o, "%-10s %5u %-9s %8d %8u ", shm_stage_kind_name(st->info.kind),
                   st->info.index, shm_stage_state_name(st->info.state), (int)st->info.pid,
                   st->info.restarts);
        {
            size_t at = o.need;

            out_cores(&o, st->info.cores, SHM_STATS_MAX_CORES);
            out_printf(&o, "%*s", (int)(12 - FAVO_MIN(o.need - at, (size_t)12)) + 1, "");
        }
        if (st->heartbeat_ns == 0)
            out_printf(&o, "never\n");
        else
            out_printf(&o, "%.1f ms ago\n",
                       snap->taken_ns > st->heartbeat_ns
                           ? (double)(snap->taken_ns - st->heartbeat_ns) / 1e6
                           : 0.0);
    }
    return o.need;
}
