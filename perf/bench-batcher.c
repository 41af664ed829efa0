/*
 * bench-batcher.c - the batcher's scheduling time per engine step, at 256
 * running sequences with mixed prefill and decode (the issue #7 goal:
 * p99 under 50 us). The engine is simulated (results drawn at random), so
 * the figures are the scheduler's own cost: bat_sched_step (cancels,
 * timeouts, decodes, prefill chunks, DRR admission, plan with block tables)
 * plus bat_sched_complete (results, finishes, block frees).
 *
 * Load: requests with prompts of 16..1024 tokens and 32..512 output tokens
 * from 16 tenants in 2 classes, refilled every step so 256 sequences run
 * and about 64 wait; max_batch_tokens 2048, so every step mixes ~256
 * decodes with prefill chunks. 1% of running requests are cancelled per
 * step to exercise the free path.
 *
 *   sched_us_p50 / sched_us_p99   step + complete, per step
 *   step_us_p50 / step_us_p99     bat_sched_step alone
 *   decodes_avg, prefill_tokens_avg, running_avg   what the steps held
 *   cache_hit_us_p50 / p99        response cache hit: SHA-256 key over a
 *                                 500-token prompt + lookup + copy of a
 *                                 2 KiB response (32 MiB cache, full)
 *   cache_put_us_p50              insert with LRU eviction
 *   ahead_us_p50 / ahead_us_p99   overlap (bat_sched.h): the same load with
 *                                 plan N+1 made while N is in flight -
 *                                 bat_sched_ahead_ok + bat_sched_step, the
 *                                 time the engine no longer waits for
 *   ahead_frac                    steps planned ahead (the rest waited for
 *                                 their predecessor: KV short), counted by
 *                                 the scheduler (bat_sched_info n_ahead)
 *   ahead_preempt_per_step        preemptions per step in that run
 *   ahead_fair_defer_per_step     of which fairness victims in the plan in
 *                                 flight, left at its completion (sched
 *                                 inv 10)
 *
 * Usage: bench-batcher [--json] [--steps N]
 */
#include "perf_util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bat_cache.h"
#include "bat_sched.h"
#include "favo_base.h"

static uint64_t rnd(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Cache hit and put cost; figures in us into out[0..2]. */
/* The load both runs keep up: 256 running + 64 waiting requests from 16
 * tenants in 2 classes (prompts 16..1023, 32..511 new tokens), and about
 * 1% of the running ones cancelled each step. */
static void offer_load(struct bat_sched *s, const struct bat_sched_info *in0, uint64_t *seed,
                       uint64_t now, uint64_t ids[4096], uint32_t *n_ids)
{
    uint32_t n_waiting = in0->n_waiting;

    while (in0->n_running + n_waiting < 256 + 64) {
        struct bat_req r = { .tenant = (uint32_t)(rnd(seed) % 16),
                             .prio = (uint32_t)(rnd(seed) % 2),
                             .n_prompt = 16 + (uint32_t)(rnd(seed) % 1008),
                             .max_tokens = 32 + (uint32_t)(rnd(seed) % 480) };
        uint64_t id;
        r.cell = *n_ids;
        if (bat_sched_submit(s, &r, now, &id, NULL))
            break;
        ids[(*n_ids)++ % 4096] = id;
        n_waiting++;
    }
    for (uint32_t k = 0; k < in0->n_running / 100; k++)
        (void)bat_sched_cancel(s, ids[rnd(seed) % (*n_ids < 4096 ? *n_ids : 4096)]);
}

static int bench_cache(double out[3])
{
    const size_t region = 32u << 20; /* ~15k entries: every timed put evicts */
    const uint32_t n = 20000, val = 2048;
    struct bat_cache c;
    void *mem = aligned_alloc(64, region);
    double *th = calloc(n, sizeof(double)), *tp = calloc(n, sizeof(double));
    int32_t tok[500];
    uint8_t key[BAT_CACHE_KEY], v[2048], o[2048];
    struct eng_sample_params sp = { .temperature = 0, .top_p = 1 };
    struct bat_cache_key_in in = { .tenant = 1, .model = "chat", .tokens = tok, .n_tokens = 500,
                                   .sp = &sp, .max_tokens = 256 };
    uint64_t now = 1000000000ull;

    if (!mem || !th || !tp || bat_cache_init(&c, mem, region, val))
        return -1;
    memset(v, 0x5a, sizeof(v));
    for (uint32_t i = 0; i < 500; i++)
        tok[i] = (int32_t)(i * 7919 % 32000);
    for (uint32_t i = 0; i < 2 * n; i++) { /* fill past capacity: puts evict */
        tok[0] = (int32_t)i;
        uint64_t t0 = favo_now_ns();
        if (bat_cache_key(&c, &in, key) || bat_cache_put(&c, key, now, 3600, v, sizeof(v)))
            return -1;
        if (i >= n)
            tp[i - n] = (double)(favo_now_ns() - t0) / 1e3;
    }
    for (uint32_t i = 0; i < n; i++) {
        tok[0] = (int32_t)(2 * n - 1 - (i % 1000));
        uint64_t t0 = favo_now_ns();
        if (bat_cache_key(&c, &in, key) || bat_cache_get(&c, key, now, o, sizeof(o)) != 2048)
            return -1;
        th[i] = (double)(favo_now_ns() - t0) / 1e3;
    }
    out[0] = perf_quantile(th, n, 0.5);
    out[1] = perf_quantile(th, n, 0.99);
    out[2] = perf_quantile(tp, n, 0.5);
    bat_cache_close(&c);
    free(th);
    free(tp);
    free(mem);
    return 0;
}

/* The main load with overlap: figures in out[0..4] (ahead p50, p99 us,
 * fraction of steps planned ahead, preemptions and deferred fairness
 * victims per step), after the warm-up. */
static int bench_overlap(const struct bat_sched_cfg *cfg, uint32_t steps, double out[5])
{
    struct bat_sched s;
    uint64_t seed = 42, now = 1000000000ull;
    size_t sz = (bat_sched_size(cfg) + 63) & ~(size_t)63;
    size_t psz = (bat_sched_plan_size(cfg) + 63) & ~(size_t)63;
    void *mem = aligned_alloc(64, sz);
    struct bat_plan *plans[2] = { aligned_alloc(64, psz), aligned_alloc(64, psz) };
    struct bat_result *res[2] = { calloc(cfg->max_seqs, sizeof(struct bat_result)),
                                  calloc(cfg->max_seqs, sizeof(struct bat_result)) };
    double *t = calloc(steps, sizeof(double));
    uint64_t *ids = calloc(4096, 8);
    uint32_t n_ids = 0, n_t = 0, warm = 500;
    struct bat_sched_info i0 = { 0 };

    if (!mem || !plans[0] || !plans[1] || !res[0] || !res[1] || !t || !ids)
        return 1;
    memset(mem, 0, sz);
    if (bat_sched_init(&s, mem, sz, cfg, 1))
        return 1;
    for (int k = 0; k < 2; k++)
        if (bat_plan_init(plans[k], psz, cfg->max_seqs, bat_kv_blocks_for(cfg->max_ctx),
                          cfg->n_blocks))
            return 1;
    uint32_t ev_cap = bat_sched_ev_cap(&s);
    struct bat_event *ev = calloc(ev_cap, sizeof(*ev));
    if (!ev)
        return 1;
    for (uint32_t st = 0; st < steps + warm; st++) {
        struct bat_sched_info in;
        bat_sched_info(&s, &in);
        if (st == warm)
            i0 = in;
        offer_load(&s, &in, &seed, now, ids, &n_ids);
        if (in.step == in.done_step &&
            bat_sched_step(&s, now, plans[(in.step + 1) % 2], ev, ev_cap) < 0)
            return 1;
        /* N is in flight: plan N+1 now (timed) */
        uint64_t t0 = favo_now_ns();
        bool ahead = bat_sched_ahead_ok(&s);
        if (ahead) {
            bat_sched_info(&s, &in);
            if (bat_sched_step(&s, now, plans[(in.step + 1) % 2], ev, ev_cap) < 0)
                return 1;
        }
        uint64_t t1 = favo_now_ns();
        if (st >= warm && ahead)
            t[n_t++] = (double)(t1 - t0) / 1e3;
        bat_sched_info(&s, &in);
        struct bat_plan *p = plans[(in.done_step + 1) % 2];
        struct bat_result *rs = res[(in.done_step + 1) % 2];
        for (uint32_t i = 0; i < p->n_seqs; i++) {
            rs[i].token = (int32_t)(rnd(&seed) % 32000);
            rs[i].eos = 0;
        }
        now += 20000000ull;
        if (bat_sched_complete(&s, p, rs, now, ev, ev_cap) < 0)
            return 1;
    }
    if (bat_sched_check(&s))
        return 1;
    struct bat_sched_info i1;
    bat_sched_info(&s, &i1);
    if (i1.n_ahead - i0.n_ahead != n_t)
        return 1; /* the scheduler counts what happened */
    out[0] = n_t ? perf_quantile(t, n_t, 0.5) : 0;
    out[1] = n_t ? perf_quantile(t, n_t, 0.99) : 0;
    out[2] = (double)n_t / steps;
    out[3] = (double)(i1.n_preempt - i0.n_preempt) / steps;
    out[4] = (double)(i1.n_fair_defer - i0.n_fair_defer) / steps;
    free(ev); free(ids); free(t); free(res[0]); free(res[1]); free(plans[0]); free(plans[1]);
    free(mem);
    return 0;
}

int main(int argc, char **argv)
{
    struct bat_sched_cfg cfg = { 0 };
    struct bat_sched s;
    uint32_t steps = 20000;
    uint64_t seed = 42, now = 1000000000ull;
    bool json = perf_want_json(argc, argv);

    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--steps") && i + 1 < argc)
            steps = (uint32_t)atoi(argv[++i]);
    cfg.n_blocks = 256 * (1536 / 16) + 1024;
    cfg.max_ctx = 2048;
    cfg.max_queue = 1024;
    cfg.queue_timeout_ns = 3600ull * 1000000000ull;
    if (bat_sched_cfg_defaults(&cfg))
        return 1;
    size_t sz = (bat_sched_size(&cfg) + 63) & ~(size_t)63;
    size_t psz = (bat_sched_plan_size(&cfg) + 63) & ~(size_t)63;
    void *mem = aligned_alloc(64, sz);
    struct bat_plan *plan = aligned_alloc(64, psz);
    double *t_all = calloc(steps, sizeof(double)), *t_step = calloc(steps, sizeof(double));
    struct bat_result *res = calloc(cfg.max_seqs, sizeof(*res));
    uint64_t *ids = calloc(4096, 8);
    if (!mem || !plan || !t_all || !t_step || !res || !ids)
        return 1;
    memset(mem, 0, sz); /* fault the arena in before timing */
    if (bat_sched_init(&s, mem, sz, &cfg, 1) ||
        bat_plan_init(plan, psz, cfg.max_seqs, bat_kv_blocks_for(cfg.max_ctx), cfg.n_blocks))
        return 1;
    uint32_t ev_cap = bat_sched_ev_cap(&s);
    struct bat_event *ev = calloc(ev_cap, sizeof(*ev));
    if (!ev)
        return 1;

    double dec_sum = 0, pre_sum = 0, run_sum = 0;
    uint32_t n_ids = 0, warm = 500;
    for (uint32_t st = 0; st < steps + warm; st++) {
        struct bat_sched_info in;
        bat_sched_info(&s, &in);
        offer_load(&s, &in, &seed, now, ids, &n_ids);

        uint64_t t0 = favo_now_ns();
        int n = bat_sched_step(&s, now, plan, ev, ev_cap);
        uint64_t t1 = favo_now_ns();
        if (n < 0)
            return 1;
        for (uint32_t i = 0; i < plan->n_seqs; i++) {
            res[i].token = (int32_t)(rnd(&seed) % 32000);
            res[i].eos = 0;
        }
        now += 20000000ull;
        uint64_t t2 = favo_now_ns();
        n = bat_sched_complete(&s, plan, res, now, ev, ev_cap);
        uint64_t t3 = favo_now_ns();
        if (n < 0)
            return 1;
        if (st >= warm) {
            t_step[st - warm] = (double)(t1 - t0) / 1e3;
            t_all[st - warm] = (double)((t1 - t0) + (t3 - t2)) / 1e3;
            dec_sum += plan->n_decode;
            pre_sum += plan->n_tokens - plan->n_decode;
            bat_sched_info(&s, &in);
            run_sum += in.n_running;
        }
    }
    if (bat_sched_check(&s)) {
        fprintf(stderr, "bench-batcher: scheduler state inconsistent\n");
        return 1;
    }
    double p50 = perf_quantile(t_all, steps, 0.5), p99 = perf_quantile(t_all, steps, 0.99);
    double sp50 = perf_quantile(t_step, steps, 0.5), sp99 = perf_quantile(t_step, steps, 0.99);
    char mach[256];
    double cache[3];
    perf_machine(mach, sizeof(mach));
    if (bench_cache(cache)) {
        fprintf(stderr, "bench-batcher: cache bench failed\n");
        return 1;
    }
    double ov[5];
    if (bench_overlap(&cfg, steps, ov)) {
        fprintf(stderr, "bench-batcher: overlap bench failed\n");
        return 1;
    }
    if (json) {
        perf_json_begin(stdout);
        perf_json_num(stdout, "sched_us_p50", p50);
        perf_json_num(stdout, "sched_us_p99", p99);
        perf_json_num(stdout, "step_us_p50", sp50);
        perf_json_num(stdout, "step_us_p99", sp99);
        perf_json_num(stdout, "decodes_avg", dec_sum / steps);
        perf_json_num(stdout, "prefill_tokens_avg", pre_sum / steps);
        perf_json_num(stdout, "running_avg", run_sum / steps);
        perf_json_num(stdout, "steps", steps);
        perf_json_num(stdout, "cache_hit_us_p50", cache[0]);
        perf_json_num(stdout, "cache_hit_us_p99", cache[1]);
        perf_json_num(stdout, "cache_put_us_p50", cache[2]);
        perf_json_num(stdout, "ahead_us_p50", ov[0]);
        perf_json_num(stdout, "ahead_us_p99", ov[1]);
        perf_json_num(stdout, "ahead_frac", ov[2]);
        perf_json_num(stdout, "ahead_preempt_per_step", ov[3]);
        perf_json_num(stdout, "ahead_fair_defer_per_step", ov[4]);
        perf_json_str(stdout, "machine", mach);
        perf_json_end(stdout);
    } else {
        printf("bench-batcher: %u steps, %s\n", steps, mach);
        printf("  running avg %.1f, decodes/step %.1f, prefill tokens/step %.1f\n",
               run_sum / steps, dec_sum / steps, pre_sum / steps);
        printf("  %-28s %10s %10s\n", "", "p50 us", "p99 us");
        printf("  %-28s %10.2f %10.2f\n", "step + complete (sched)", p50, p99);
        printf("  %-28s %10.2f %10.2f\n", "step alone", sp50, sp99);
        printf("  %-28s %10.2f %10.2f\n", "cache hit (key+get, 2 KiB)", cache[0], cache[1]);
        printf("  %-28s %10.2f %10s\n", "cache put (evicting)", cache[2], "");
        printf("  %-28s %10.2f %10.2f   (%.0f%% of steps planned ahead)\n",
               "overlap: ahead_ok + step", ov[0], ov[1], 100.0 * ov[2]);
        printf("  overlap: %.3f preemptions/step, %.3f fairness victims deferred/step\n",
               ov[3], ov[4]);
    }
    free(ev); free(ids); free(res); free(t_all); free(t_step); free(plan); free(mem);
    return 0;
}
