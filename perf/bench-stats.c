/*
 * bench-stats.c - what the stats segment and the cell pool cost the hot
 * path, measured side by side in one run:
 *
 *   stats_update_ns         one request's update group (3 counters + 1
 *                           histogram) into the local shadow, published
 *                           every 1 ms (the default)
 *   stats_update_publish_ns the same group published at once (flush_ns 0):
 *                           what the shadow saves
 *   stats_snapshot_us_p50/p99  a reader's snapshot of 16 writer blocks with
 *                           all 4 histograms populated
 *   prom_format_us, prom_bytes  /metrics text of that snapshot
 *   cell_cycle_4k_ns / cell_cycle_64k_ns  alloc + free (scrub) by the
 *                           allocator itself, 4 KiB and 64 KiB cells
 *   cell_ring_cycle_4k_ns   alloc, give, free through the return ring
 *
 * Usage: bench-stats [--json]
 */
#include "perf_util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shm_cell.h"
#include "shm_seg.h"
#include "shm_stats.h"

#define NWRITERS 16

static double update_ns(struct shm_stats *st, unsigned slot, uint64_t flush_ns)
{
    struct shm_stats_writer w;
    const uint64_t n = 2000000;
    uint64_t t0, x = 12345;

    if (shm_stats_writer_init(st, slot, SHM_STAGE_EGRESS, slot, flush_ns, &w))
        return -1;
    t0 = favo_now_ns();
    for (uint64_t i = 0; i < n; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        shm_stats_begin(&w);
        shm_stats_add(&w, SHM_C_REQ_OK, 1);
        shm_stats_add(&w, SHM_C_PROMPT_TOKENS, 30);
        shm_stats_add(&w, SHM_C_GENERATION_TOKENS, 100);
        shm_stats_observe(&w, SHM_H_ITL, 1000000 + (x >> 44)); /* 1..2 ms */
        shm_stats_end(&w);
    }
    t0 = favo_now_ns() - t0;
    shm_stats_writer_free(&w);
    return (double)t0 / (double)n;
}

static void fill_writers(struct shm_stats *st)
{
    uint64_t x = 1;

    for (unsigned s = 2; s < NWRITERS; s++) {
        struct shm_stats_writer w;

        if (shm_stats_writer_init(st, s, SHM_STAGE_ENGINE, s, SHM_STATS_FLUSH_NS, &w))
            continue;
        for (int i = 0; i < 20000; i++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            for (unsigned h = 0; h < SHM_H__COUNT; h++) /* 10 us .. 10 s, log-spread */
                shm_stats_observe(&w, (enum shm_stats_hist_id)h,
                                  10000ull << ((x >> (40 + h)) % 20));
        }
        shm_stats_writer_free(&w);
    }
}

static double cell_cycle_ns(uint32_t size, bool via_ring)
{
    struct shm_cell_cfg cfg = { .nclasses = 1, .classes = { { size, 64 } }, .nreturn = 1 };
    size_t len = shm_cell_pool_size(&cfg);
    struct shm_seg seg;
    struct shm_seg_spec reg = { "cells", len, 4096 };
    struct shm_cell_pool ing, egr;
    const int n = 200000;
    uint64_t t0;
    void *mem;

    if (shm_seg_create_data(&seg, &reg, 1))
        return -1;
    mem = shm_seg_region(&seg, "cells", NULL);
    if (shm_cell_pool_init(mem, len, &cfg, 1) ||
        shm_cell_pool_attach(&ing, mem, len, 1, SHM_CELL_ROLE_ALLOCATOR, 0) ||
        shm_cell_pool_attach(&egr, mem, len, 1, SHM_CELL_ROLE_USER, 0))
        return -1;
    t0 = favo_now_ns();
    for (int i = 0; i < n; i++) {
        shm_cell_ref_t r;
        void *d;

        if (shm_cell_alloc(&ing, size, &r) || shm_cell_get(&ing, r, SHM_CELL_INGRESS, &d, NULL))
            return -1;
        memset(d, 1, 512); /* a small request */
        if (via_ring) {
            shm_cell_give(&ing, r, SHM_CELL_INGRESS, SHM_CELL_EGRESS);
            shm_cell_free(&egr, r, SHM_CELL_EGRESS);
        } else {
            shm_cell_free(&ing, r, SHM_CELL_INGRESS);
        }
    }
    t0 = favo_now_ns() - t0;
    shm_seg_destroy(&seg);
    return (double)t0 / n;
}

int main(int argc, char **argv)
{
    bool json = perf_want_json(argc, argv);
    char inst[64], machine[256], *buf;
    struct shm_stats st, rd;
    struct shm_stats_snap *snap = malloc(sizeof(*snap));
    double snaps[200], upd, upd_pub, p50, p99, prom_us, c4, c64, cr4;
    size_t prom_bytes = 0, cap = 1 << 20;
    uint64_t t0;

    snprintf(inst, sizeof(inst), "bench-stats-%d", (int)getpid());
    favo_log_init("bench-stats");
    if (!snap || shm_stats_create(&st, inst, NWRITERS, 8)) {
        fprintf(stderr, "bench-stats: cannot create the stats segment: %s\n", st.seg.err);
        return 1;
    }
    upd = update_ns(&st, 0, SHM_STATS_FLUSH_NS);
    upd_pub = update_ns(&st, 1, 0);
    fill_writers(&st);
    if (shm_stats_open(&rd, inst, false)) {
        fprintf(stderr, "bench-stats: %s\n", rd.seg.err);
        return 1;
    }
    for (int i = 0; i < 200; i++) {
        t0 = favo_now_ns();
        shm_stats_snapshot(&rd, snap);
        snaps[i] = (double)(favo_now_ns() - t0) / 1e3;
    }
    p50 = perf_quantile(snaps, 200, 0.5);
    p99 = perf_quantile(snaps, 200, 0.99);
    buf = malloc(cap);
    t0 = favo_now_ns();
    for (int i = 0; i < 100; i++)
        prom_bytes = shm_stats_prom(snap, buf, cap);
    prom_us = (double)(favo_now_ns() - t0) / 1e3 / 100;
    c4 = cell_cycle_ns(4096, false);
    c64 = cell_cycle_ns(65536, false);
    cr4 = cell_cycle_ns(4096, true);
    perf_machine(machine, sizeof(machine));
    if (json) {
        perf_json_begin(stdout);
        perf_json_str(stdout, "machine", machine);
        perf_json_num(stdout, "stats_update_ns", upd);
        perf_json_num(stdout, "stats_update_publish_ns", upd_pub);
        perf_json_num(stdout, "stats_snapshot_us_p50", p50);
        perf_json_num(stdout, "stats_snapshot_us_p99", p99);
        perf_json_num(stdout, "prom_format_us", prom_us);
        perf_json_num(stdout, "prom_bytes", (double)prom_bytes);
        perf_json_num(stdout, "cell_cycle_4k_ns", c4);
        perf_json_num(stdout, "cell_cycle_64k_ns", c64);
        perf_json_num(stdout, "cell_ring_cycle_4k_ns", cr4);
        perf_json_end(stdout);
    } else {
        printf("bench-stats on %s\n", machine);
        printf("%-46s %12s\n", "what", "value");
        printf("%-46s %9.1f ns\n", "update group, shadow + 1 ms publication", upd);
        printf("%-46s %9.1f ns  (x%.1f)\n", "update group, published every time", upd_pub,
               upd > 0 ? upd_pub / upd : 0);
        printf("%-46s %9.1f us\n", "snapshot of 16 blocks x 4 histograms, p50", p50);
        printf("%-46s %9.1f us\n", "snapshot, p99", p99);
        printf("%-46s %9.1f us  (%zu bytes)\n", "Prometheus text of a snapshot", prom_us,
               prom_bytes);
        printf("%-46s %9.1f ns\n", "cell alloc + scrubbing free, 4 KiB", c4);
        printf("%-46s %9.1f ns\n", "cell alloc + scrubbing free, 64 KiB", c64);
        printf("%-46s %9.1f ns\n", "cell alloc + give + free via return ring, 4 KiB", cr4);
    }
    free(buf);
    free(snap);
    shm_stats_close(&rd);
    shm_stats_destroy(&st);
    return 0;
}
