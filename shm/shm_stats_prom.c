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

/* A label value: backslash, quote and newline escaped (exposition 0.0.4). */
static void out_label(struct out *o, const char *v)
{
    for (; *v; v++) {
        if (*v == '\\' || *v == '"')
            out_printf(o, "\\%c", *v);
        else if (*v == '\n')
            out_printf(o, "\\n");
        else
            out_printf(o, "%c", *v);
    }
}

static void tenants_prom(struct out *o, const struct shm_stats_snap *snap)
{
    static const char *const name[] = { "favo_tenant_requests_total", "favo_tenant_errors_total",
                                        "favo_tenant_prompt_tokens_total",
                                        "favo_tenant_generation_tokens_total" };
    static const char *const help[] = {
        ("Requests finished, by tenant (the last row, tenant=\"other\", holds every tenant "
         "beyond the table)."),
        "Requests finished with a status >= 400, by tenant.",
        "Prompt tokens of finished requests, by tenant.",
        "Tokens generated for finished requests, by tenant."
    };

    if (!snap->ntenants)
        return;
    for (unsigned m = 0; m < 4; m++) {
        out_printf(o, "# HELP %s %s\n# TYPE %s counter\n", name[m], help[m], name[m]);
        for (unsigned t = 0; t < snap->ntenants; t++) {
            const struct shm_stats_tenant_snap *x = &snap->tenants[t];
            uint64_t v = m == 0 ? x->requests : m == 1 ? x->errors
                       : m == 2 ? x->prompt_tokens : x->gen_tokens;

            out_printf(o, "%s{tenant=\"", name[m]);
            out_label(o, x->other ? "other" : x->name);
            out_printf(o, "\"} %llu\n", (unsigned long long)v);
        }
    }
}

/* One per-stage family: HELP and TYPE once, then a sample per stage row in
 * use (the restart count, or the last restart time in seconds). */
static void stage_family(struct out *o, const struct shm_stats_snap *snap, const char *name,
                         const char *help, const char *type, bool restart_time)
{
    bool any = false;

    for (unsigned r = 0; r < snap->nstages; r++) {
        const struct shm_stage_snap *s = &snap->stages[r];

        if (s->info.kind == SHM_STAGE_NONE)
            continue;
        if (!any)
            out_printf(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
        any = true;
        out_printf(o, "%s{stage=\"%s\",index=\"%u\"} ", name, shm_stage_kind_name(s->info.kind),
                   s->info.index);
        if (restart_time)
            out_double(o, (double)s->info.last_restart_ns / 1e9);
        else
            out_printf(o, "%u", s->info.restarts);
        out_printf(o, "\n");
    }
}

size_t shm_stats_prom(const struct shm_stats_snap *snap, char *buf, size_t len)
{
    struct out o = { buf, len, 0 };

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
    stage_family(&o, snap, "favo_stage_restarts_total",
                 "Restarts of each stage process by the supervisor.", "counter", false);
    stage_family(&o, snap, "favo_stage_last_restart_seconds",
                 "Time from the stage's last exit to its replacement being up (0: never "
                 "restarted).", "gauge", true);
    tenants_prom(&o, snap);
    if (snap->version[0]) {
        out_printf(&o, "# HELP favo_build_info The favo version serving (always 1).\n"
                   "# TYPE favo_build_info gauge\nfavo_build_info{version=\"");
        out_label(&o, snap->version);
        out_printf(&o, "\"} 1\n");
    }
    if (snap->created_wall_ns) {
        out_printf(&o, "# HELP favo_start_time_seconds When the instance started (Unix time).\n"
                   "# TYPE favo_start_time_seconds gauge\nfavo_start_time_seconds ");
        out_double(&o, (double)snap->created_wall_ns / 1e9);
        out_printf(&o, "\n");
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

/* A JSON string body: quote, backslash and control bytes escaped. */
static void out_json_str(struct out *o, const char *v)
{
    out_printf(o, "\"");
    for (; *v; v++) {
        unsigned char c = (unsigned char)*v;

        if (c == '"' || c == '\\')
            out_printf(o, "\\%c", c);
        else if (c < 0x20)
            out_printf(o, "\\u%04x", c);
        else
            out_printf(o, "%c", c);
    }
    out_printf(o, "\"");
}

static const char *const win_name[SHM_STATS_NWIN] = { "10s", "60s" };
static const char *const q_name[SHM_STATS_NQ] = { "p50_s", "p90_s", "p95_s", "p99_s" };

/* The pipeline rings: depth and capacity gauges and the message counter of
 * each, in table order (req, plan, done, ev, ctl, conn). */
static const char *const ring_name[] = { "req", "plan", "done", "ev", "ctl", "conn" };
#define NRINGS FAVO_ARRAY_SIZE(ring_name)
_Static_assert(SHM_G_RING_CONN_DEPTH - SHM_G_RING_REQ_DEPTH == NRINGS - 1 &&
                   SHM_G_RING_CONN_CAP - SHM_G_RING_REQ_CAP == NRINGS - 1 &&
                   SHM_C_RING_CONN_MSGS - SHM_C_RING_REQ_MSGS == NRINGS - 1,
               "the ring entries of shm_stats_table.h are in ring_name's order");

static double win_rate(const struct shm_stats_win_snap *w, unsigned c)
{
    return w->span_ns ? (double)w->counters[c] / ((double)w->span_ns / 1e9) : 0.0;
}

static double uptime_s(const struct shm_stats_snap *snap)
{
    return snap->created_wall_ns && snap->taken_wall_ns > snap->created_wall_ns
               ? (double)(snap->taken_wall_ns - snap->created_wall_ns) / 1e9
               : 0.0;
}

size_t shm_stats_json(const struct shm_stats_snap *snap, char *buf, size_t len)
{
    struct out o = { buf, len, 0 };
    bool first = true;

    if (len)
        buf[0] = 0;
    out_printf(&o, "{\"generation\":%llu,\"writers\":%u,\"torn\":%u,\"version\":",
               (unsigned long long)snap->generation, snap->nwriters, snap->torn);
    out_json_str(&o, snap->version);
    out_printf(&o, ",\"supervisor_pid\":%d,\"uptime_s\":", (int)snap->sup_pid);
    out_json_double(&o, uptime_s(snap));
    out_printf(&o, ",\"counters\":{");
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
        static const double qs[] = { 0.5, 0.9, 0.95, 0.99 };
        static const char *const qn[] = { "p50_s", "p90_s", "p95_s", "p99_s" };

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
        out_printf(&o, "\",\"last_restart_s\":");
        out_json_double(&o, (double)s->info.last_restart_ns / 1e9);
        out_printf(&o, ",\"max_restart_s\":");
        out_json_double(&o, (double)s->info.max_restart_ns / 1e9);
        out_printf(&o, ",\"cpu_s\":");
        out_json_double(&o, s->cpu_s);
        out_printf(&o, ",\"cpu_pct\":");
        out_json_double(&o, s->cpu_pct);
        out_printf(&o, ",\"heartbeat_age_s\":");
        if (s->heartbeat_ns == 0)
            out_printf(&o, "-1");
        else
            out_json_double(&o, snap->taken_ns > s->heartbeat_ns
                                    ? (double)(snap->taken_ns - s->heartbeat_ns) / 1e9
                                    : 0.0);
        out_printf(&o, "}");
        first = false;
    }
    out_printf(&o, "],\"rings\":{");
    for (unsigned r = 0; r < NRINGS; r++) {
        out_printf(&o, "%s\"%s\":{\"depth\":", r ? "," : "", ring_name[r]);
        out_json_double(&o, snap->gauges[SHM_G_RING_REQ_DEPTH + r]);
        out_printf(&o, ",\"capacity\":");
        out_json_double(&o, snap->gauges[SHM_G_RING_REQ_CAP + r]);
        out_printf(&o, ",\"messages\":%llu",
                   (unsigned long long)snap->counters[SHM_C_RING_REQ_MSGS + r]);
        for (unsigned w = 0; w < snap->nwin; w++) {
            out_printf(&o, ",\"per_s_%s\":", win_name[w]);
            out_json_double(&o, win_rate(&snap->win[w], SHM_C_RING_REQ_MSGS + r));
        }
        out_printf(&o, "}");
    }
    out_printf(&o, "},\"windows\":{");
    for (unsigned w = 0; w < snap->nwin; w++) {
        const struct shm_stats_win_snap *ws = &snap->win[w];

        out_printf(&o, "%s\"%s\":{\"span_s\":", w ? "," : "", win_name[w]);
        out_json_double(&o, (double)ws->span_ns / 1e9);
        out_printf(&o, ",\"counters\":{");
        for (unsigned c = 0; c < SHM_C__COUNT; c++)
            out_printf(&o, "%s\"%s\":%llu", c ? "," : "", shm_stats_counter_desc[c].column,
                       (unsigned long long)ws->counters[c]);
        out_printf(&o, "},\"per_s\":{");
        for (unsigned c = 0; c < SHM_C__COUNT; c++) {
            out_printf(&o, "%s\"%s\":", c ? "," : "", shm_stats_counter_desc[c].column);
            out_json_double(&o, win_rate(ws, c));
        }
        out_printf(&o, "},\"tokens_per_step\":");
        out_json_double(&o, ws->counters[SHM_C_ENGINE_STEPS]
                                ? (double)ws->counters[SHM_C_ENGINE_TOKENS] /
                                      (double)ws->counters[SHM_C_ENGINE_STEPS]
                                : 0.0);
        out_printf(&o, ",\"histograms\":{");
        for (unsigned h = 0; h < SHM_H__COUNT; h++) {
            const struct shm_stats_win_hist *wh = &ws->hist[h];

            out_printf(&o, "%s\"%s\":{\"count\":%llu,\"sum_s\":", h ? "," : "",
                       shm_stats_hist_desc[h].column, (unsigned long long)wh->count);
            out_json_double(&o, (double)wh->sum_ns / 1e9);
            for (unsigned q = 0; q < SHM_STATS_NQ; q++) {
                out_printf(&o, ",\"%s\":", q_name[q]);
                out_json_double(&o, (double)wh->q_ns[q] / 1e9);
            }
            out_printf(&o, "}");
        }
        out_printf(&o, "}}");
    }
    out_printf(&o, "},\"tenants\":[");
    for (unsigned t = 0; t < snap->ntenants; t++) {
        const struct shm_stats_tenant_snap *x = &snap->tenants[t];

        out_printf(&o, "%s{\"tenant\":", t ? "," : "");
        out_json_str(&o, x->other ? "other" : x->name);
        out_printf(&o, ",\"other\":%s,\"requests\":%llu,\"errors\":%llu,"
                   "\"prompt_tokens\":%llu,\"gen_tokens\":%llu}", x->other ? "true" : "false",
                   (unsigned long long)x->requests, (unsigned long long)x->errors,
                   (unsigned long long)x->prompt_tokens, (unsigned long long)x->gen_tokens);
    }
    out_printf(&o, "]}");
    return o.need;
}

/* "1h02m03s" */
static void out_duration(struct out *o, double s)
{
    unsigned long long t = (unsigned long long)s;

    if (t >= 86400)
        out_printf(o, "%llud%02lluh%02llum", t / 86400, t / 3600 % 24, t / 60 % 60);
    else if (t >= 3600)
        out_printf(o, "%lluh%02llum%02llus", t / 3600, t / 60 % 60, t % 60);
    else if (t >= 60)
        out_printf(o, "%llum%02llus", t / 60, t % 60);
    else
        out_printf(o, "%.1fs", s);
}

/* A name for the text view: printable ASCII only, at most 24 columns. */
static void out_plain(struct out *o, const char *v, int width)
{
    int n = 0;

    for (; *v && n < 24; v++, n++)
        out_printf(o, "%c", (*v > 0x20 && *v < 0x7f) ? *v : '?');
    if (n == 0) {
        out_printf(o, "(no key)");
        n = 8;
    }
    out_printf(o, "%*s", width > n ? width - n : 1, "");
}

size_t shm_stats_text(const struct shm_stats_snap *snap, const struct shm_stats_snap *prev,
                      char *buf, size_t len)
{
    struct out o = { buf, len, 0 };
    double dt = prev && snap->taken_ns > prev->taken_ns && prev->generation == snap->generation
                    ? (double)(snap->taken_ns - prev->taken_ns) / 1e9
                    : 0;
    static const unsigned lat[] = { SHM_H_QUEUE, SHM_H_TTFT, SHM_H_ITL, SHM_H_E2E };

    if (len)
        buf[0] = 0;
    out_printf(&o, "favo %s, up ", snap->version[0] ? snap->version : "(version unknown)");
    out_duration(&o, uptime_s(snap));
    out_printf(&o, ", supervisor pid %d, generation %llu, %u writers%s\n\n", (int)snap->sup_pid,
               (unsigned long long)snap->generation, snap->nwriters,
               snap->torn ? ", some read while their writer was stuck" : "");

    /* stages */
    out_printf(&o, "%-10s %5s %-9s %8s %-12s %6s %9s %8s %10s %10s %s\n", "stage", "index",
               "state", "pid", "cores", "cpu%", "cpu s", "restarts", "last rst", "max rst",
               "heartbeat");
    for (unsigned r = 0; r < snap->nstages; r++) {
        const struct shm_stage_snap *st = &snap->stages[r];

        if (st->info.kind == SHM_STAGE_NONE)
            continue;
        out_printf(&o, "%-10s %5u %-9s %8d ", shm_stage_kind_name(st->info.kind),
                   st->info.index, shm_stage_state_name(st->info.state), (int)st->info.pid);
        {
            size_t at = o.need;

            out_cores(&o, st->info.cores, SHM_STATS_MAX_CORES);
            if (o.need == at)
                out_printf(&o, "any");
            out_printf(&o, "%*s", (int)(12 - FAVO_MIN(o.need - at, (size_t)12)) + 1, "");
        }
        if (st->cpu_pct >= 0)
            out_printf(&o, "%6.1f ", st->cpu_pct);
        else
            out_printf(&o, "%6s ", "-");
        if (st->cpu_s >= 0)
            out_printf(&o, "%9.2f ", st->cpu_s);
        else
            out_printf(&o, "%9s ", "-");
        out_printf(&o, "%8u ", st->info.restarts);
        if (st->info.last_restart_ns)
            out_printf(&o, "%7.2f ms %7.2f ms ", (double)st->info.last_restart_ns / 1e6,
                       (double)st->info.max_restart_ns / 1e6);
        else
            out_printf(&o, "%10s %10s ", "-", "-");
        if (st->heartbeat_ns == 0)
            out_printf(&o, "never\n");
        else
            out_printf(&o, "%.1f ms ago\n",
                       snap->taken_ns > st->heartbeat_ns
                           ? (double)(snap->taken_ns - st->heartbeat_ns) / 1e6
                           : 0.0);
    }

    /* the instance at a glance: load per window, then the gauges */
    for (unsigned w = 0; w < snap->nwin; w++) {
        const struct shm_stats_win_snap *ws = &snap->win[w];
        uint64_t steps = ws->counters[SHM_C_ENGINE_STEPS];

        out_printf(&o, "%s%-4s %7.2f req/s, prompt %9.1f tok/s, generated %8.1f tok/s, %6.1f "
                   "tokens/step", w ? "" : "\n", win_name[w],
                   win_rate(ws, SHM_C_REQ_OK) + win_rate(ws, SHM_C_REQ_ERROR) +
                       win_rate(ws, SHM_C_REQ_CANCELLED) + win_rate(ws, SHM_C_REQ_TIMEOUT),
                   win_rate(ws, SHM_C_PROMPT_TOKENS), win_rate(ws, SHM_C_GENERATION_TOKENS),
                   steps ? (double)ws->counters[SHM_C_ENGINE_TOKENS] / (double)steps : 0.0);
        out_printf(&o, ", cache hits %llu\n",
                   (unsigned long long)ws->counters[SHM_C_RESPONSE_CACHE_HITS]);
    }
    out_printf(&o, "now  running %.0f, waiting %.0f, KV cache %.1f%% used\n",
               snap->gauges[SHM_G_REQUESTS_RUNNING], snap->gauges[SHM_G_REQUESTS_WAITING],
               100.0 * snap->gauges[SHM_G_KV_CACHE_USAGE]);

    /* latency over the three windows */
    out_printf(&o, "\n%-12s", "latency ms");
    for (unsigned w = 0; w < snap->nwin; w++)
        out_printf(&o, " | %-5s%8s %8s %8s", win_name[w], "p50", "p95", "p99");
    out_printf(&o, " | %-5s%8s %8s %8s %8s\n", "all", "p50", "p95", "p99", "count");
    for (unsigned k = 0; k < FAVO_ARRAY_SIZE(lat); k++) {
        const struct shm_stats_hist_snap *hs = &snap->hist[lat[k]];

        out_printf(&o, "%-12s", shm_stats_hist_desc[lat[k]].column);
        for (unsigned w = 0; w < snap->nwin; w++) {
            const struct shm_stats_win_hist *wh = &snap->win[w].hist[lat[k]];

            if (wh->count)
                out_printf(&o, " | %-5s%8.2f %8.2f %8.2f", "", (double)wh->q_ns[0] / 1e6,
                           (double)wh->q_ns[2] / 1e6, (double)wh->q_ns[3] / 1e6);
            else
                out_printf(&o, " | %-5s%8s %8s %8s", "", "-", "-", "-");
        }
        out_printf(&o, " | %-5s%8.2f %8.2f %8.2f %8llu\n", "",
                   (double)shm_stats_hist_quantile(hs, 0.5) / 1e6,
                   (double)shm_stats_hist_quantile(hs, 0.95) / 1e6,
                   (double)shm_stats_hist_quantile(hs, 0.99) / 1e6,
                   (unsigned long long)hs->count);
    }

    /* rings */
    out_printf(&o, "\n%-6s %8s %8s %12s", "ring", "depth", "capacity", "messages");
    for (unsigned w = 0; w < snap->nwin; w++)
        out_printf(&o, " %7s/s", win_name[w]);
    out_printf(&o, "\n");
    for (unsigned r = 0; r < NRINGS; r++) {
        out_printf(&o, "%-6s %8.0f %8.0f %12llu", ring_name[r],
                   snap->gauges[SHM_G_RING_REQ_DEPTH + r], snap->gauges[SHM_G_RING_REQ_CAP + r],
                   (unsigned long long)snap->counters[SHM_C_RING_REQ_MSGS + r]);
        for (unsigned w = 0; w < snap->nwin; w++)
            out_printf(&o, " %9.1f", win_rate(&snap->win[w], SHM_C_RING_REQ_MSGS + r));
        out_printf(&o, "\n");
    }

    /* every counter: total, rate against prev (--watch), window rates */
    out_printf(&o, "\n%-12s %16s%s", "counter", "total", dt > 0 ? "   per second" : "");
    for (unsigned w = 0; w < snap->nwin; w++)
        out_printf(&o, " %7s/s", win_name[w]);
    out_printf(&o, "\n");
    for (unsigned i = 0; i < SHM_C__COUNT; i++) {
        out_printf(&o, "%-12s %16llu", shm_stats_counter_desc[i].column,
                   (unsigned long long)snap->counters[i]);
        if (dt > 0)
            out_printf(&o, " %12.1f",
                       (double)(snap->counters[i] - FAVO_MIN(prev->counters[i],
                                                             snap->counters[i])) / dt);
        for (unsigned w = 0; w < snap->nwin; w++)
            out_printf(&o, " %9.1f", win_rate(&snap->win[w], i));
        out_printf(&o, "\n");
    }
    out_printf(&o, "\n%-12s %16s\n", "gauge", "value");
    for (unsigned i = 0; i < SHM_G__COUNT; i++)
        out_printf(&o, "%-12s %16.3f\n", shm_stats_gauge_desc[i].column, snap->gauges[i]);
    out_printf(&o, "\n%-12s %10s %10s %10s %10s %10s %10s\n", "latency ms", "count", "mean",
               "p50", "p90", "p95", "p99");
    for (unsigned h = 0; h < SHM_H__COUNT; h++) {
        const struct shm_stats_hist_snap *hs = &snap->hist[h];

        out_printf(&o, "%-12s %10llu %10.3f %10.3f %10.3f %10.3f %10.3f\n",
                   shm_stats_hist_desc[h].column, (unsigned long long)hs->count,
                   hs->count ? (double)hs->sum_ns / (double)hs->count / 1e6 : 0.0,
                   (double)shm_stats_hist_quantile(hs, 0.5) / 1e6,
                   (double)shm_stats_hist_quantile(hs, 0.9) / 1e6,
                   (double)shm_stats_hist_quantile(hs, 0.95) / 1e6,
                   (double)shm_stats_hist_quantile(hs, 0.99) / 1e6);
    }

    /* tenants */
    if (snap->ntenants) {
        out_printf(&o, "\n%-25s %10s %8s %12s %12s\n", "tenant", "requests", "errors",
                   "prompt_tok", "gen_tok");
        for (unsigned t = 0; t < snap->ntenants; t++) {
            const struct shm_stats_tenant_snap *x = &snap->tenants[t];

            out_plain(&o, x->other ? "other" : x->name, 26);
            out_printf(&o, "%10llu %8llu %12llu %12llu\n", (unsigned long long)x->requests,
                       (unsigned long long)x->errors, (unsigned long long)x->prompt_tokens,
                       (unsigned long long)x->gen_tokens);
        }
    }
    return o.need;
}
