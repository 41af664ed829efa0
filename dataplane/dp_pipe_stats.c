/*
 * dp_pipe_stats.c - the pipeline as the supervisor sees it (dp_sup.h has
 * the contract): which stages are up, and how full each ring is.
 *
 * favo serve's tick calls dp_pipe_stats_tick() (every 20 ms, every 1 ms
 * while a restarted stage comes up). On each call it reports every stage
 * whose up word matches the pid the supervisor spawned (dp_sup_stage_up):
 * that is when a restart ends. Every DP_PIPE_STATS_NS it reads each ring's
 * shared indices - the same loads shm_ring_count makes; the rings are
 * attached once with the consumer role, which writes nothing - and sets,
 * in the supervisor's own stats writer:
 *
 *   favo_ring_depth{ring}          p_tail - c_head, summed over workers/ranks
 *   favo_ring_capacity{ring}       slots, summed likewise
 *   favo_ring_messages_total{ring} p_tail's increase (free-running u32
 *                                  indices: the difference mod 2^32)
 *
 * favo stat turns the counter into rates with the supervisor's 10 s / 60 s
 * windows. Reads only, metadata only: a ring's slots are never looked at.
 */
#include <string.h>

#include "dp_sup.h"
#include "favo_base.h"
#include "shm_pipe.h"
#include "shm_ring.h"
#include "shm_stats.h"

#define DP_PIPE_STATS_NS 100000000ull /* 100 ms */
#define NRING 6                       /* req, plan, done, ev, ctl, conn */
#define NPER (SHM_PIPE_MAX_INGRESS > SHM_PIPE_MAX_RANKS ? SHM_PIPE_MAX_INGRESS : SHM_PIPE_MAX_RANKS)

static struct {
    const struct shm_pipe *pipe;  /* the pipe the handles below belong to */
    struct shm_pipe_hdr *hdr;
    shm_ring_t r[NRING][NPER];
    bool ok[NRING][NPER];
    uint32_t last_tail[NRING][NPER];
    uint64_t next_ns;
} ps;

static void ps_attach(const struct shm_pipe *p)
{
    unsigned ni = p->hdr->cfg.n_ingress, nr = p->hdr->cfg.n_ranks;

    memset(&ps, 0, sizeof(ps));
    ps.pipe = p;
    ps.hdr = p->hdr;
    for (unsigned w = 0; w < ni && w < NPER; w++) {
        ps.ok[0][w] = shm_pipe_ring_req(p, w, SHM_RING_CONSUMER, &ps.r[0][w]) == 0;
        ps.ok[5][w] = shm_pipe_ring_conn(p, w, SHM_RING_CONSUMER, &ps.r[5][w]) == 0;
    }
    for (unsigned k = 0; k < nr && k < NPER; k++)
        ps.ok[1][k] = shm_pipe_ring_plan(p, k, SHM_RING_CONSUMER, &ps.r[1][k]) == 0;
    ps.ok[2][0] = shm_pipe_ring_done(p, SHM_RING_CONSUMER, &ps.r[2][0]) == 0;
    ps.ok[3][0] = shm_pipe_ring_ev(p, SHM_RING_CONSUMER, &ps.r[3][0]) == 0;
    ps.ok[4][0] = shm_pipe_ring_ctl(p, SHM_RING_CONSUMER, &ps.r[4][0]) == 0;
    /* the messages counter continues from what the rings hold now */
    for (unsigned k = 0; k < NRING; k++)
        for (unsigned i = 0; i < NPER; i++)
            if (ps.ok[k][i])
                ps.last_tail[k][i] = ck_pr_load_uint(&ps.r[k][i].hdr->ck.p_tail);
}

static void ps_sample(struct shm_stats_writer *w)
{
    shm_stats_begin(w);
    for (unsigned k = 0; k < NRING; k++) {
        double depth = 0, cap = 0;
        uint64_t msgs = 0;

        for (unsigned i = 0; i < NPER; i++) {
            uint32_t tail;

            if (!ps.ok[k][i])
                continue;
            tail = ck_pr_load_uint(&ps.r[k][i].hdr->ck.p_tail);
            depth += shm_ring_count(&ps.r[k][i]);
            cap += ps.r[k][i].capacity;
            msgs += (uint32_t)(tail - ps.last_tail[k][i]);
            ps.last_tail[k][i] = tail;
        }
        shm_stats_gauge_set(w, (enum shm_stats_gauge)(SHM_G_RING_REQ_DEPTH + k), depth);
        shm_stats_gauge_set(w, (enum shm_stats_gauge)(SHM_G_RING_REQ_CAP + k), cap);
        if (msgs)
            shm_stats_add(w, (enum shm_stats_counter)(SHM_C_RING_REQ_MSGS + k), msgs);
    }
    shm_stats_end(w);
    shm_stats_flush(w);
}

void dp_pipe_stats_tick(const struct shm_pipe *pipe)
{
    static const enum shm_stage_kind kind[SHM_PIPE_NSTAGES] = {
        SHM_STAGE_INGRESS, SHM_STAGE_BATCHER, SHM_STAGE_ENGINE, SHM_STAGE_EGRESS
    };
    struct shm_stats_writer *w = dp_sup_writer();
    unsigned n[SHM_PIPE_NSTAGES];
    uint64_t now;

    if (!pipe || !pipe->hdr)
        return;
    n[SHM_PIPE_INGRESS] = pipe->hdr->cfg.n_ingress;
    n[SHM_PIPE_BATCHER] = 1;
    n[SHM_PIPE_ENGINE] = pipe->hdr->cfg.n_ranks;
    n[SHM_PIPE_EGRESS] = 1;
    for (unsigned k = 0; k < SHM_PIPE_NSTAGES; k++)
        for (unsigned i = 0; i < n[k] && i < SHM_PIPE_MAX_INGRESS; i++) {
            int32_t up = (int32_t)ck_pr_load_32((const uint32_t *)&pipe->hdr->up_pid[k][i]);

            if (up > 0 && shm_pipe_stage_up(pipe, (enum shm_pipe_stage)k, i))
                dp_sup_stage_up(kind[k], i, (pid_t)up);
        }
    if (!w)
        return;
    now = favo_now_ns();
    if (ps.pipe != pipe || ps.hdr != pipe->hdr)
        ps_attach(pipe);
    else if (now < ps.next_ns)
        return;
    ps.next_ns = now + DP_PIPE_STATS_NS;
    ps_sample(w);
}
