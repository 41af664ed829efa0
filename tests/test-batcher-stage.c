/*
 * test-batcher-stage.c - the batcher stage process (bat_stage.h) between a
 * fake ingress, a fake engine and a fake egress, all played by the test
 * through the real rings, bells and cells of a memfd data segment; the
 * batcher runs in a forked child, as `favo stage batcher` would.
 *
 * The fake engine checks every plan as the real one would read it (the
 * prompt and every generated id in the cell, positions, rank 1's copy of
 * the plan) and answers deterministic tokens; the fake egress checks every
 * event (START once, TOKENS with the right ids already in the cell and
 * n_gen strictly growing, FINISH/ERROR with the cell given to egress) and
 * frees the cell. Covered: many concurrent requests with chunked prefill,
 * LENGTH, EOG STOP, cancel from ingress and from egress, queue full (503 +
 * Retry-After), too large (413), bad descriptors (400, cell freed), a
 * full event ring, drain, the next plan sent before egress is woken
 * (t_egress_after_plan), and kill -9 of the batcher mid-stream followed
 * by restarts that lose and repeat nothing; the response cache (a hit
 * answered without a plan, only deterministic requests, a cancelled one
 * never cached, entries surviving a batcher restart, TTL expiry).
 */
#include "t_util.h"
#include "bat_stage.h"
#include "shm_seg.h"
#include "shm_stats.h"

#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#define GEN 7u
#define MAXR 256
#define TOK_OFF 1024u
#define NRANKS 2

struct rq {
    shm_cell_ref_t cell;
    uint32_t tok_off, ntok, max_tokens, eos_at; /* eos_at: 1-based generated index, 0 = never */
    uint32_t seen;                     /* n_gen egress has seen */
    unsigned as;                       /* the request whose prompt, parameters and
                                          generated ids this one has (itself, unless
                                          h->as is set at submit: cache tests) */
    uint64_t id;
    int started, finished, reason, status, retry, live;
};

struct h {
    struct shm_seg seg;
    struct shm_pipe p;
    struct shm_cell_pool alloc, egr;
    shm_ring_t req, ctl, done, ev, plan[NRANKS];
    shm_bell_ec_t bat_bell;
    shm_bell_efd_t egr_bell;
    int egr_efd;
    pid_t pid;
    struct bat_sched_cfg sc;
    int engine_on;
    uint64_t steps, events, last_step;
    struct rq rq[MAXR];
    unsigned nrq;
    /* KV the fake engine holds: positions computed per request since its
     * (re)start. kv_lax: a plan built for a previous engine's KV may come
     * (answered with wrong tokens, which the batcher must never apply). */
    int kv_check, kv_lax;
    int stats_on;                      /* the child writes a stats segment */
    uint64_t abort_step;               /* the child aborts inside this step */
    int expect_zero_all;               /* the next plan must zero the whole KV pool */
    char stats_inst[32];
    struct shm_stats stats;
    uint32_t kv_pos[MAXR];
    unsigned stale_plans;
    /* overlap: the fake engine's answers to the last plan it ran (feeds) */
    uint64_t prev_step, prev_id[MAXR];
    int32_t prev_tok[MAXR];
    uint32_t prev_n;
    uint64_t n_fed, n_unfed;
    unsigned kills_in_flight[3];       /* batcher kills by plans in flight then */
    volatile int *stop;                /* shared with the child: the wrapper's stop word */
    int light;                         /* bench: the engine skips re-reading every id */
    unsigned lose_per_mille;           /* sampled results answered -1 ("not computed") */
    int refuse_rq;                     /* this request is always answered -1 (-1: none) */
    uint64_t rng;
    unsigned n_lost;
    int as;                            /* >= 0: the next submit is a copy of request `as` */
    uint32_t cache_ttl;                /* shm_req.cache_ttl of the next submits */
    int no_overlap;                    /* the child runs with one plan in flight */
    int egr_fd_child;                  /* > 0: the child's egress "eventfd" (a pipe) */
    int engine_max;                    /* > 0: plans h_engine answers per call (else 2) */
};

static uint64_t g_cache_bytes;         /* the pipe's response cache region (h_init) */

static pid_t g_pid; /* the batcher child, killed by teardown after a failure */

static int teardown(void **state)
{
    (void)state;
    if (g_pid > 0 && waitpid(g_pid, NULL, WNOHANG) == 0) {
        kill(g_pid, SIGKILL);
        waitpid(g_pid, NULL, 0);
    }
    g_pid = 0;
    return 0;
}

static uint32_t ptok(unsigned i, uint32_t k) { return (i * 131u + k * 7u) % 30000u + 1u; }
static uint32_t gtok(unsigned i, uint32_t g) { return (i * 977u + g * 13u) % 30000u + 2u; }

static struct bat_sched_cfg sc_default(void)
{
    struct bat_sched_cfg c = { 0 };

    c.n_blocks = 512;
    c.max_ctx = 1024;
    c.max_seqs = 32;
    c.max_batch_tokens = 256;
    c.max_queue = 200;
    c.max_queue_tenant = 200;
    return c;
}

static void h_init(struct h *h, const struct bat_sched_cfg *sc, uint32_t ev_ring)
{
    struct shm_pipe_cfg c = { 0 };
    void *mem;
    size_t len, cl;

    memset(h, 0, sizeof(*h));
    h->sc = *sc;
    assert_int_equal(bat_sched_cfg_defaults(&h->sc), 0);
    c.n_ingress = 1;
    c.n_ranks = NRANKS;
    c.ev_ring = ev_ring;
    c.sched_bytes = bat_sched_size(&h->sc);
    c.plan_bytes = bat_sched_plan_size(&h->sc);
    c.max_seqs = h->sc.max_seqs;
    c.result_size = sizeof(struct bat_result);
    c.cells.nclasses = 1;
    c.cells.classes[0].cell_size = 65536;
    c.cells.classes[0].ncells = MAXR;
    c.cache_bytes = g_cache_bytes;
    struct shm_seg_spec spec = { "pipe", shm_pipe_size(&c), 4096 };
    assert_true(spec.size > 0);
    assert_int_equal(shm_seg_create_data(&h->seg, &spec, 1), 0);
    mem = shm_seg_region(&h->seg, "pipe", &len);
    assert_non_null(mem);
    assert_int_equal(shm_pipe_init(&h->p, mem, len, &c, GEN), 0);
    shm_seg_publish(&h->seg);
    mem = shm_pipe_cells(&h->p, &cl);
    assert_int_equal(shm_cell_pool_attach(&h->alloc, mem, cl, GEN, SHM_CELL_ROLE_ALLOCATOR, -1), 0);
    assert_int_equal(shm_cell_pool_attach(&h->egr, mem, cl, GEN, SHM_CELL_ROLE_USER,
                                          SHM_PIPE_RET_EGRESS), 0);
    assert_int_equal(shm_pipe_ring_req(&h->p, 0, SHM_RING_PRODUCER, &h->req), 0);
    assert_int_equal(shm_pipe_ring_ctl(&h->p, SHM_RING_PRODUCER, &h->ctl), 0);
    assert_int_equal(shm_pipe_ring_done(&h->p, SHM_RING_PRODUCER, &h->done), 0);
    assert_int_equal(shm_pipe_ring_ev(&h->p, SHM_RING_CONSUMER, &h->ev), 0);
    for (unsigned r = 0; r < NRANKS; r++)
        assert_int_equal(shm_pipe_ring_plan(&h->p, r, SHM_RING_CONSUMER, &h->plan[r]), 0);
    assert_int_equal(shm_pipe_bell_bat(&h->p, &h->bat_bell), 0);
    h->egr_efd = shm_bell_efd_open();
    assert_true(h->egr_efd >= 0);
    assert_int_equal(shm_pipe_bell_egr(&h->p, h->egr_efd, true, &h->egr_bell), 0);
    /* we are ingress 0 (and its supervisor) */
    shm_pipe_set_sup(&h->p, SHM_PIPE_INGRESS, 0, getpid());
    shm_pipe_set_up(&h->p, SHM_PIPE_INGRESS, 0, getpid());
    h->engine_on = 1;
    h->refuse_rq = -1;
    h->as = -1;
    h->rng = 99;
    h->stop = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(h->stop != MAP_FAILED);
    *h->stop = 0;
}

static void h_spawn_nowait(struct h *h, int poll);

static void h_spawn(struct h *h, int poll)
{
    h_spawn_nowait(h, poll);
    for (int i = 0; i < 5000 && !shm_pipe_stage_up(&h->p, SHM_PIPE_BATCHER, 0); i++)
        usleep(1000);
    assert_true(shm_pipe_stage_up(&h->p, SHM_PIPE_BATCHER, 0));
}

/* FAVO_NO_OVERLAP=1 runs this file with one plan in flight. */
static int no_overlap_env(void)
{
    const char *no = getenv("FAVO_NO_OVERLAP");
    return no && *no && strcmp(no, "0");
}

static void h_spawn_nowait(struct h *h, int poll)
{
    pid_t pid = fork();

    assert_true(pid >= 0);
    if (pid == 0) {
        struct bat_stage_cfg c = { 0 };
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        struct rlimit nocore = { 0, 0 }; /* t_salvage aborts: no core file */
        setrlimit(RLIMIT_CORE, &nocore);
        c.pipe = &h->p;
        c.sched = h->sc;
        c.egr_bell_efd = h->egr_fd_child > 0 ? h->egr_fd_child : h->egr_efd;
        c.poll = poll;
        c.stop = h->stop;
        c.no_overlap = no_overlap_env() || h->no_overlap; /* as `favo serve` reads FAVO_NO_OVERLAP */
        struct shm_stats st;
        struct shm_stats_writer w;
        if (h->stats_on) {
            if (shm_stats_open(&st, h->stats_inst, true) ||
                shm_stats_writer_init(&st, 0, SHM_STAGE_BATCHER, 0, 0, &w))
                _exit(4);
            c.stats = &st;
            c.stats_w = &w;
            c.stats_row = 0;
        }
        bat_sched_test_abort_in_step(h->abort_step);
        int rc = bat_stage_run(&c);
        if (h->stats_on)
            shm_stats_writer_free(&w);
        _exit(rc == 0 ? 0 : 3);
    }
    h->pid = pid;
    g_pid = pid;
    shm_pipe_set_sup(&h->p, SHM_PIPE_BATCHER, 0, pid);
}

static struct rq *h_find(struct h *h, shm_cell_ref_t cell)
{
    for (unsigned i = 0; i < h->nrq; i++)
        if (h->rq[i].live && h->rq[i].cell == cell)
            return &h->rq[i];
    return NULL;
}

/* Ingress: a request of ntok prompt ids. flags: 1 = misaligned tok_off
 * (400), 2 = resp_off outside the cell (freed unanswered). */
static unsigned h_submit(struct h *h, uint32_t ntok, uint32_t max_tokens, uint32_t eos_at,
                         uint32_t tenant, unsigned flags)
{
    unsigned self = h->nrq++, i = h->as >= 0 ? (unsigned)h->as : self;
    struct rq *q = &h->rq[self];
    struct shm_req r;
    shm_cell_ref_t ref;
    void *data;
    size_t size;
    uint32_t tok_off = TOK_OFF + ((flags & 1) ? 2 : 0);

    assert_true(self < MAXR);
    memset(q, 0, sizeof(*q));
    q->as = i;
    assert_int_equal(shm_cell_alloc(&h->alloc, shm_pipe_cell_need(tok_off, ntok, max_tokens, true),
                                    &ref), 0);
    assert_int_equal(shm_cell_get(&h->alloc, ref, SHM_CELL_INGRESS, &data, &size), 0);
    for (uint32_t k = 0; k < ntok; k++) {
        int32_t id = (int32_t)ptok(i, k);
        memcpy((char *)data + tok_off + 4 * k, &id, 4);
    }
    memset(&r, 0, sizeof(r));
    r.magic = SHM_REQ_MAGIC;
    r.kind = SHM_REQ_SUBMIT;
    r.route = SHM_REQ_COMPLETIONS;
    r.flags = SHM_REQ_F_STREAM;
    r.cell = ref;
    r.conn = 1000 + self;
    r.recv_ns = favo_now_ns();
    r.cache_ttl = h->cache_ttl;
    r.tok_off = tok_off;
    r.ntok = ntok;
    r.max_tokens = max_tokens;
    r.resp_off = (uint32_t)shm_pipe_resp_off(tok_off, ntok, max_tokens);
    r.tenant = tenant;
    /* sampling parameters the engine must find in the plan */
    r.temperature = 0.1f * (float)(i % 10);
    r.top_k = (int32_t)(i % 50);
    r.top_p = 0.5f + 0.01f * (float)(i % 50);
    r.min_p = 0.001f * (float)(i % 7);
    r.frequency_penalty = 0.1f * (float)(i % 3);
    r.presence_penalty = 0.2f * (float)(i % 4);
    r.logprobs = (uint8_t)(i % 4 == 1); /* seeded requests 3, 7, .. without: cacheable */
    r.top_logprobs = (uint8_t)(i % 5);
    if (i % 2) {
        r.flags |= SHM_REQ_F_SEED;
        r.seed = 1000 + (int64_t)i;
    }
    memcpy((char *)data + r.resp_off, &r, sizeof(r));
    if (flags & 2)
        r.resp_off = (uint32_t)size - 64;
    q->cell = ref;
    q->tok_off = tok_off;
    q->ntok = ntok;
    q->max_tokens = max_tokens;
    q->eos_at = eos_at;
    q->live = 1;
    assert_int_equal(shm_cell_give(&h->alloc, ref, SHM_CELL_INGRESS, SHM_CELL_BATCHER), 0);
    assert_int_equal(shm_ring_enqueue(&h->req, &r), 0);
    shm_bell_ec_ring(&h->bat_bell);
    return self;
}

static void h_cancel_ingress(struct h *h, unsigned i)
{
    struct shm_req r = { 0 };

    r.magic = SHM_REQ_MAGIC;
    r.kind = SHM_REQ_CANCEL;
    r.cell = h->rq[i].cell;
    r.conn = 1000 + i;
    assert_int_equal(shm_ring_enqueue(&h->req, &r), 0);
    shm_bell_ec_ring(&h->bat_bell);
}

static void h_cancel_egress(struct h *h, unsigned i)
{
    struct shm_ctl c = { .cell = h->rq[i].cell, .id = h->rq[i].id, .kind = 1 };

    assert_int_equal(shm_ring_enqueue(&h->ctl, &c), 0);
    shm_bell_ec_ring(&h->bat_bell);
}

/* The ids of request q in its cell, [from, to) of the whole sequence. */
static void check_ids(struct h *h, struct rq *q, const char *data, uint32_t from, uint32_t to)
{
    unsigned i = q->as;

    for (uint32_t k = from; k < to; k++) {
        int32_t id;
        memcpy(&id, data + q->tok_off + 4 * k, 4);
        if (k < q->ntok)
            assert_int_equal(id, ptok(i, k));
        else
            assert_int_equal(id, gtok(i, k - q->ntok));
    }
}

/* Engine: run what the plan rings hold. Returns plans handled. */
static int h_engine(struct h *h)
{
    const struct shm_plan_msg *m;
    int got = 0;

    if (!h->engine_on)
        return 0;
    /* At most two plans a call: with overlap the next plan is always there
     * when one is answered, and the callers' conditions must get a look
     * in between (as a real engine's steps take time). */
    while (got < (h->engine_max > 0 ? h->engine_max : 2) && (m = shm_ring_peek_one(&h->plan[0]))) {
        struct shm_plan_msg msg = *m;
        const struct shm_plan_msg *m1;
        uint64_t end = favo_now_ns() + 2000000000ull;

        /* rank 1 runs the same step in lockstep (as tensor-parallel ranks
         * do): its copy of the plan equals rank 0's */
        while (!(m1 = shm_ring_peek_one(&h->plan[1])))
            assert_true(favo_now_ns() < end);
        assert_int_equal(m1->step, msg.step);
        assert_int_equal(m1->slot, msg.slot);
        struct bat_plan *p0 = shm_pipe_plan(&h->p, 0, msg.slot), *p1 = shm_pipe_plan(&h->p, 1, msg.slot);
        assert_int_equal(p1->step, msg.step);
        assert_int_equal(p1->n_seqs, p0->n_seqs);
        assert_int_equal(p1->n_tables, p0->n_tables);
        assert_int_equal(p1->n_freed, p0->n_freed);
        assert_memory_equal(bat_plan_seqs(p1), bat_plan_seqs(p0),
                            p0->n_seqs * sizeof(struct bat_plan_seq));
        assert_memory_equal(bat_plan_tables(p1), bat_plan_tables(p0), p0->n_tables * 4);
        assert_memory_equal(bat_plan_freed(p1), bat_plan_freed(p0), p0->n_freed * 4);
        shm_ring_release(&h->plan[1], 1);
        struct bat_plan *p = shm_pipe_plan(&h->p, 0, msg.slot);
        struct bat_result *res = shm_pipe_results(&h->p, msg.slot);
        struct bat_plan_seq *ps = bat_plan_seqs(p);

        assert_int_equal(p->step, msg.step);
        assert_int_equal(p->n_seqs, msg.n_seqs);
        assert_true(msg.step > h->last_step); /* each step once, in order */
        h->last_step = msg.step;
        if (h->expect_zero_all) {
            int32_t *fr = bat_plan_freed(p);
            assert_int_equal(p->n_freed, h->sc.n_blocks);
            for (uint32_t k = 0; k < p->n_freed; k++)
                assert_int_equal(fr[k], (int32_t)k);
            h->expect_zero_all = 0;
        }
        bool stale = false;
        for (uint32_t k = 0; k < p->n_seqs && h->kv_check; k++) {
            struct rq *q = h_find(h, ps[k].cell);
            assert_non_null(q);
            /* the engine has positions [0, pos) of this sequence, or the
             * batcher starts it over (preempted: recompute) */
            if (ps[k].pos != 0 && ps[k].pos != h->kv_pos[q - h->rq])
                stale = true;
        }
        if (stale) {
            assert_true(h->kv_lax); /* only right after an engine restart */
            h->stale_plans++;
        }
        for (uint32_t k = 0; k < p->n_seqs; k++) {
            struct rq *q = h_find(h, ps[k].cell);
            void *data;
            size_t size;

            assert_non_null(q);
            assert_int_equal(shm_cell_get(&h->alloc, ps[k].cell, SHM_CELL_BATCHER, &data, &size), 0);
            assert_int_equal(ps[k].tok_off, q->tok_off);
            assert_int_equal(ps[k].n_prompt, q->ntok);
            {
                unsigned i = q->as;
                const struct eng_sample_params *sp = &ps[k].sp;
                assert_true(sp->temperature == 0.1f * (float)(i % 10));
                assert_int_equal(sp->top_k, i % 50);
                assert_true(sp->top_p == 0.5f + 0.01f * (float)(i % 50));
                assert_true(sp->min_p == 0.001f * (float)(i % 7));
                assert_true(sp->freq_penalty == 0.1f * (float)(i % 3));
                assert_true(sp->presence_penalty == 0.2f * (float)(i % 4));
                assert_int_equal(sp->n_logprobs, shm_pipe_lp_alts((uint8_t)(i % 4 == 1), (uint8_t)(i % 5)));
                if (i % 2)
                    assert_int_equal(sp->seed, 1000 + i);
                else
                    assert_true(sp->seed != 0); /* picked by the batcher */
            }
            assert_true(ps[k].pos + ps[k].n_new <= q->ntok + ps[k].n_history);
            bool unfed = false;
            if (ps[k].feed) {
                /* overlap: its input is our answer to it in the plan just
                 * before, not in the cell yet (bat_plan.h) */
                assert_int_equal(ps[k].n_new, 1);
                assert_int_equal(ps[k].pos + 1, q->ntok + ps[k].n_history);
                if (h->prev_step + 1 != msg.step || ps[k].feed_src >= h->prev_n ||
                    h->prev_id[ps[k].feed_src] != ps[k].id || h->prev_tok[ps[k].feed_src] < 0) {
                    unfed = true; /* like the engine after a restart: -1 */
                    h->n_unfed++;
                } else {
                    int32_t want = (int32_t)gtok(q->as, ps[k].n_history - 1);
                    assert_true(h->prev_tok[ps[k].feed_src] == want || h->kv_lax);
                    h->n_fed++;
                }
            }
            if (!h->light)
                check_ids(h, q, data, 0, q->ntok + ps[k].n_history - (ps[k].feed ? 1 : 0));
            if (unfed) {
                res[k].token = -1;
                res[k].eos = 0;
            } else if (!ps[k].no_sample) {
                assert_int_equal(ps[k].pos + ps[k].n_new, q->ntok + ps[k].n_history);
                res[k].token = (int32_t)gtok(q->as, ps[k].n_history);
                res[k].eos = (uint8_t)(q->eos_at && ps[k].n_history + 1 == q->eos_at);
                if (stale) /* computed without the KV: garbage */
                    res[k].token += 5;
                if ((int)(q - h->rq) == h->refuse_rq ||
                    (h->lose_per_mille && t_rand(&h->rng) % 1000 < h->lose_per_mille)) {
                    res[k].token = -1; /* not computed: the batcher recomputes it */
                    res[k].eos = 0;
                    h->n_lost++;
                }
            }
            if (!stale && !unfed)
                h->kv_pos[q - h->rq] = ps[k].pos + ps[k].n_new;
        }
        assert_true(p->n_seqs <= MAXR);
        h->prev_step = msg.step;
        h->prev_n = p->n_seqs;
        for (uint32_t k = 0; k < p->n_seqs; k++) {
            h->prev_id[k] = ps[k].id;
            h->prev_tok[k] = ps[k].no_sample ? -1 : res[k].token;
        }
        assert_int_equal(shm_ring_enqueue(&h->done, &msg), 0);
        shm_bell_ec_ring(&h->bat_bell);
        shm_ring_release(&h->plan[0], 1); /* consume, then release */
        h->steps++;
        got++;
    }
    return got;
}

/* Egress: check and apply every event. Returns events handled. */
static int h_egress(struct h *h)
{
    struct shm_ev e;
    int got = 0;

    while (shm_ring_dequeue_burst(&h->ev, &e, 1) == 1) {
        struct rq *q = h_find(h, e.cell);
        void *data;
        size_t size;

        got++;
        h->events++;
        assert_non_null(q);
        assert_false(q->finished);
        q->id = e.id;
        switch (e.kind) {
        case SHM_EV_START:
            assert_false(q->started); /* once */
            assert_int_equal(e.n_gen, 0);
            q->started = 1;
            break;
        case SHM_EV_TOKENS:
            assert_true(q->started);
            assert_true(e.n_gen > q->seen); /* none repeated */
            assert_true(e.n_gen <= q->max_tokens);
            assert_int_equal(shm_cell_bytes(&h->egr, e.cell, &data, &size), 0);
            check_ids(h, q, data, q->ntok + q->seen, q->ntok + e.n_gen);
            q->seen = e.n_gen;
            break;
        case SHM_EV_FINISH:
        case SHM_EV_ERROR:
            /* the cell is egress's now (pipe inv 3) */
            assert_int_equal(shm_cell_get(&h->egr, e.cell, SHM_CELL_EGRESS, &data, &size), 0);
            if (e.kind == SHM_EV_FINISH)
                assert_int_equal(e.n_gen, q->seen); /* every id was announced */
            else /* 503 after a salvage: n_gen 0, ids seen stay */
                assert_true(e.n_gen == q->seen || e.n_gen == 0);
            check_ids(h, q, data, 0, q->ntok + q->seen);
            q->finished = 1;
            q->reason = e.kind == SHM_EV_FINISH ? e.reason : 0;
            q->status = e.kind == SHM_EV_ERROR ? e.status : 0;
            q->retry = (int)e.retry_after;
            q->live = 0;
            assert_int_equal(shm_cell_free(&h->egr, e.cell, SHM_CELL_EGRESS), 0);
            break;
        default:
            fail_msg("event kind %u", e.kind);
        }
    }
    return got;
}

static unsigned h_unfinished(const struct h *h)
{
    unsigned n = 0;

    for (unsigned i = 0; i < h->nrq; i++)
        n += !h->rq[i].finished;
    return n;
}

/* Pump engine + egress until want() or timeout. */
static void h_run(struct h *h, bool (*want)(struct h *, void *), void *arg, int timeout_ms)
{
    uint64_t end = favo_now_ns() + (uint64_t)timeout_ms * 1000000ull;

    while (!want(h, arg)) {
        assert_true(favo_now_ns() < end);
        if (!h_engine(h) + !h_egress(h) == 2)
            usleep(50);
    }
}

static bool all_done(struct h *h, void *arg)
{
    (void)arg;
    return h_unfinished(h) == 0;
}

static bool seen_at_least(struct h *h, void *arg)
{
    const uint32_t *w = arg; /* { request, n_gen } */
    return h->rq[w[0]].seen >= w[1];
}

static bool events_at_least(struct h *h, void *arg)
{
    return h->events >= *(const uint64_t *)arg;
}

static bool events_or_done(struct h *h, void *arg)
{
    return events_at_least(h, arg) || all_done(h, NULL);
}

/* Drain: the supervisor says draining, ingress goes down, the batcher
 * exits 0 once it holds nothing. */
static void h_drain(struct h *h)
{
    int st;

    if (!*h->stop) /* the stop word alone must do too (t_drain) */
        h->p.hdr->draining = 1;
    shm_pipe_set_up(&h->p, SHM_PIPE_INGRESS, 0, 0);
    shm_bell_ec_ring(&h->bat_bell);
    for (int i = 0; i < 5000; i++) {
        h_engine(h);
        h_egress(h);
        if (waitpid(h->pid, &st, WNOHANG) == h->pid) {
            assert_true(WIFEXITED(st));
            assert_int_equal(WEXITSTATUS(st), 0);
            assert_false(shm_pipe_stage_up(&h->p, SHM_PIPE_BATCHER, 0));
            return;
        }
        usleep(1000);
    }
    fail_msg("batcher did not exit after the drain");
}

static void h_stats_on(struct h *h)
{
    snprintf(h->stats_inst, sizeof(h->stats_inst), "h15bst%d", (int)getpid());
    shm_seg_unlink_stats(h->stats_inst);
    assert_int_equal(shm_stats_create(&h->stats, h->stats_inst, 2, 2), 0);
    h->stats_on = 1;
}

/* After the drain: the child flushed everything. Caller frees. */
static struct shm_stats_snap *h_snap(struct h *h)
{
    struct shm_stats_snap *s = calloc(1, sizeof(*s));

    assert_non_null(s);
    assert_int_equal(shm_stats_snapshot(&h->stats, s), 0);
    assert_true(s->nstages >= 1);
    assert_true(s->stages[0].heartbeat_ns > 0); /* the batcher heartbeats its row */
    return s;
}

static void h_free(struct h *h)
{
    if (h->stats_on)
        shm_stats_destroy(&h->stats);
    close(h->egr_efd);
    munmap((void *)h->stop, 4096);
    shm_seg_destroy(&h->seg);
}

/* ---------------------------------------------------------------------- */

static void t_many(void **state)
{
    (void)state;
    struct bat_sched_cfg sc = sc_default();
    struct h *h = calloc(1, sizeof(*h));
    uint64_t rng = 42;

    /* a small ev ring: the batcher must hold events back, never drop them */
    h_init(h, &sc, 16);
    h_stats_on(h);
    h->lose_per_mille = 20; /* now and then "not computed": recomputed, never a token */
    h_spawn(h, 0);
    for (unsigned i = 0; i < 120; i++) {
        uint32_t ntok = 1 + (uint32_t)(t_rand(&rng) % (i % 10 == 0 ? 400 : 40));
        uint32_t max_tokens = 1 + (uint32_t)(t_rand(&rng) % 24);
        uint32_t eos_at = i % 3 == 0 ? 1 + (uint32_t)(t_rand(&rng) % 30) : 0;
        h_submit(h, ntok, max_tokens, eos_at, i % 7, 0);
        if (i % 16 == 0) {
            h_engine(h);
            h_egress(h);
        }
    }
    h_run(h, all_done, NULL, 15000);
    assert_true(h->n_lost > 0);
    for (unsigned i = 0; i < h->nrq; i++) {
        struct rq *q = &h->rq[i];
        assert_true(q->started);
        if (q->eos_at && q->eos_at <= q->max_tokens) {
            assert_int_equal(q->reason, SHM_FIN_STOP);
            assert_int_equal(q->seen, q->eos_at); /* the EOG id is counted */
        } else {
            assert_int_equal(q->reason, SHM_FIN_LENGTH);
            assert_int_equal(q->seen, q->max_tokens);
        }
    }
    h_drain(h);
    struct shm_stats_snap *st = h_snap(h);
    uint64_t gen = 0, prompt = 0;
    for (unsigned i = 0; i < h->nrq; i++) {
        gen += h->rq[i].seen;
        prompt += h->rq[i].ntok - 1; /* a last prefill chunk of 1 counts as a decode */
    }
    assert_int_equal(st->counters[SHM_C_GENERATION_TOKENS], gen);
    assert_true(st->counters[SHM_C_PROMPT_TOKENS] >= prompt);
    /* outcomes are egress's to count (bat_sched.no_outcomes); steps are ours */
    assert_int_equal(st->counters[SHM_C_REQ_OK], 0);
    assert_true(st->counters[SHM_C_BATCH_STEPS] > 0);
    assert_int_equal(st->hist[SHM_H_QUEUE].count, h->nrq);
    assert_true(st->gauges[SHM_G_REQUESTS_RUNNING] == 0 && st->gauges[SHM_G_REQUESTS_WAITING] == 0);
    assert_true(st->gauges[SHM_G_KV_CACHE_USAGE] == 0);
    /* overlap is on (unless FAVO_NO_OVERLAP=1, to run this file without
     * it): decodes were planned while their previous step ran */
    printf("# %llu decodes fed from the previous plan, %llu not\n",
           (unsigned long long)h->n_fed, (unsigned long long)h->n_unfed);
    if (no_overlap_env())
        assert_true(h->n_fed == 0);
    else
        assert_true(h->n_fed > 0);
    free(st);
    h_free(h);
    free(h);
}

static void t_cancel(void **state)
{
    (void)state;
    struct bat_sched_cfg sc = sc_default();
    struct h *h = calloc(1, sizeof(*h));

    h_init(h, &sc, 0);
    h_spawn(h, 1);
    unsigned a = h_submit(h, 5, 500, 0, 1, 0);
    unsigned b = h_submit(h, 5, 500, 0, 2, 0);
    unsigned c = h_submit(h, 5, 4, 0, 3, 0);
    uint32_t wa[2] = { a, 3 }, wb[2] = { b, 3 };
    h_run(h, seen_at_least, wa, 5000);
    h_run(h, seen_at_least, wb, 5000);
    h_cancel_ingress(h, a);  /* client gone */
    h_cancel_egress(h, b);   /* stop string matched */
    h_cancel_egress(h, b);   /* twice: idempotent */
    h_run(h, all_done, NULL, 5000);
    assert_int_equal(h->rq[a].reason, SHM_FIN_CANCELLED);
    assert_int_equal(h->rq[b].reason, SHM_FIN_CANCELLED);
    assert_true(h->rq[a].seen < 500 && h->rq[b].seen < 500);
    assert_int_equal(h->rq[c].reason, SHM_FIN_LENGTH);
    /* cancels of requests already finished are ignored */
    h_cancel_ingress(h, c);
    h_cancel_egress(h, a);
    unsigned d = h_submit(h, 3, 2, 0, 1, 0);
    h_run(h, all_done, NULL, 5000);
    assert_int_equal(h->rq[d].reason, SHM_FIN_LENGTH);
    h_drain(h);
    h_free(h);
    free(h);
}

/* An engine that keeps answering "not computed" for one request: it ends
 * with 500 after BAT_MAX_LOST tries; the others are served. */
static void t_engine_refuses(void **state)
{
    (void)state;
    struct bat_sched_cfg sc = sc_default();
    struct h *h = calloc(1, sizeof(*h));

    h_init(h, &sc, 0);
    h_spawn(h, 0);
    h_submit(h, 6, 5, 0, 1, 0);
    h->refuse_rq = (int)h_submit(h, 7, 5, 0, 2, 0);
    h_submit(h, 8, 5, 0, 3, 0);
    h_run(h, all_done, NULL, 5000);
    assert_int_equal(h->rq[h->refuse_rq].status, 500);
    assert_int_equal(h->rq[h->refuse_rq].seen, 0);
    assert_int_equal(h->n_lost, BAT_MAX_LOST);
    assert_int_equal(h->rq[0].reason, SHM_FIN_LENGTH);
    assert_int_equal(h->rq[2].reason, SHM_FIN_LENGTH);
    h_drain(h);
    h_free(h);
    free(h);
}

static void t_errors(void **state)
{
    (void)state;
    struct bat_sched_cfg sc = sc_default();
    struct h *h = calloc(1, sizeof(*h));
    unsigned n503 = 0;

    sc.max_seqs = 2;
    sc.max_queue = 4;
    sc.max_queue_tenant = 4;
    h_init(h, &sc, 0);
    h_stats_on(h);
    h->engine_on = 0; /* hold the first plan: everything else queues */
    /* all submitted before the batcher starts, so it sees them in one go */
    unsigned big = h_submit(h, 600, 600, 0, 1, 0); /* over max_ctx: 413 */
    unsigned bad = h_submit(h, 4, 4, 0, 1, 1);     /* misaligned ids: 400 */
    unsigned lost = h_submit(h, 4, 4, 0, 1, 2);    /* no response area: freed */
    unsigned first = h->nrq;
    for (unsigned i = 0; i < 12; i++)
        h_submit(h, 4, 3, 0, 1, 0);
    h_spawn(h, 0);
    uint64_t want = 2 + 8 + 2; /* 413, 400, eight 503, two STARTs */
    h_run(h, events_at_least, &want, 5000);
    usleep(100000);
    assert_int_equal(h_egress(h), 0);
    assert_int_equal(h->rq[big].status, 413);
    assert_int_equal(h->rq[bad].status, 400);
    assert_false(h->rq[lost].finished);
    for (unsigned i = first; i < h->nrq; i++)
        if (h->rq[i].finished) {
            assert_int_equal(h->rq[i].status, 503);
            assert_true(h->rq[i].retry >= 1 && h->rq[i].retry <= 60);
            n503++;
        }
    /* 4 wait (max_queue), the other 8 are refused; 2 of the 4 then run */
    assert_int_equal(n503, 8);
    /* the undeliverable one was scrubbed and returned by the batcher */
    void *data;
    assert_int_equal(shm_cell_bytes(&h->alloc, h->rq[lost].cell, &data, NULL), -ESTALE);
    h->rq[lost].finished = 1;
    h->rq[lost].live = 0;
    h->engine_on = 1;
    h_run(h, all_done, NULL, 5000);
    for (unsigned i = first; i < h->nrq; i++)
        if (!h->rq[i].status)
            assert_int_equal(h->rq[i].reason, SHM_FIN_LENGTH);
    h_drain(h);
    struct shm_stats_snap *st = h_snap(h);
    assert_int_equal(st->counters[SHM_C_REJ_TOO_LARGE], 1);
    assert_int_equal(st->counters[SHM_C_REJ_BAD_REQUEST], 1);
    assert_int_equal(st->counters[SHM_C_REJ_QUEUE_FULL], 8);
    assert_int_equal(st->counters[SHM_C_REQ_OK], 0); /* egress counts outcomes */
    free(st);
    h_free(h);
    free(h);
}

/* Drain waits for the work in flight and for ingress to go down. */
static void t_drain(void **state)
{
    (void)state;
    struct bat_sched_cfg sc = sc_default();
    struct h *h = calloc(1, sizeof(*h));
    int st;

    h_init(h, &sc, 0);
    h_spawn(h, 2); /* spin */
    h->engine_on = 0;
    for (unsigned i = 0; i < 8; i++)
        h_submit(h, 10, 20, 0, i, 0);
    *h->stop = 1; /* SIGTERM, as the wrapper reports it */
    shm_bell_ec_ring(&h->bat_bell);
    usleep(100000);
    assert_int_equal(waitpid(h->pid, &st, WNOHANG), 0); /* work held */
    h->engine_on = 1;
    h_run(h, all_done, NULL, 5000);
    usleep(100000);
    assert_int_equal(waitpid(h->pid, &st, WNOHANG), 0); /* ingress still up */
    unsigned late = h_submit(h, 3, 2, 0, 1, 0);          /* and still served */
    h_run(h, all_done, NULL, 5000);
    assert_int_equal(h->rq[late].reason, SHM_FIN_LENGTH);
    h_drain(h);
    h_free(h);
    free(h);
}

/* Regression (egress woken before the next plan): when a completion's
 * events go out, the step they made possible is planned and sent BEFORE
 * egress's eventfd is written - egress, at SCHED_FIFO on a shared core,
 * used to preempt the batcher for its whole burst while the engine
 * waited for that plan (bat_stage.c, the loop). Here the batcher's
 * "eventfd" is a pipe the test has filled, so the batcher blocks inside
 * that write for as long as the test likes: the next plan must be out by
 * then. One plan in flight (no overlap): only the completion of step N
 * can make plan N+1. */
static void t_egress_after_plan(void **state)
{
    (void)state;
    struct bat_sched_cfg sc = sc_default();
    struct h *h = calloc(1, sizeof(*h));
    char junk[4096];
    int pfd[2], fl;

    h_init(h, &sc, 0);
    assert_int_equal(pipe(pfd), 0);
    h->egr_fd_child = pfd[1];
    h->no_overlap = 1;
    h->engine_max = 1;
    h_spawn(h, 0);
    for (unsigned k = 0; k < 3; k++) {
        unsigned i = h_submit(h, 4 + k, 5, 0, k, 0);
        uint64_t end = favo_now_ns() + 5000000000ull;

        while (!shm_ring_available(&h->plan[0])) { /* its prefill */
            h_egress(h);
            assert_true(favo_now_ns() < end);
            usleep(100);
        }
        h_egress(h); /* START */
        /* egress asleep, its "eventfd" full: the batcher's next ring blocks */
        fl = fcntl(pfd[1], F_GETFL);
        assert_int_equal(fcntl(pfd[1], F_SETFL, fl | O_NONBLOCK), 0);
        while (write(pfd[1], junk, sizeof(junk)) > 0)
            ;
        assert_int_equal(fcntl(pfd[1], F_SETFL, fl), 0);
        shm_bell_efd_prepare(&h->egr_bell);
        assert_int_equal(h_engine(h), 1); /* done(prefill): the first token */
        /* its TOKENS event is committed, egress is rung only after the
         * decode it made possible was sent: that plan must come while
         * the batcher sits in the blocked write */
        while (!shm_ring_available(&h->plan[0]) || !shm_ring_available(&h->plan[1])) {
            if (favo_now_ns() >= end)
                fail_msg("request %u: no next plan while egress's wake-up blocks", i);
            usleep(100);
        }
        /* egress wakes: the write completes, the request runs to its end */
        fl = fcntl(pfd[0], F_GETFL);
        assert_int_equal(fcntl(pfd[0], F_SETFL, fl | O_NONBLOCK), 0);
        while (read(pfd[0], junk, sizeof(junk)) > 0)
            ;
        shm_bell_efd_woke(&h->egr_bell);
        h_run(h, all_done, NULL, 5000);
        assert_int_equal(h->rq[i].reason, SHM_FIN_LENGTH);
        assert_int_equal(h->rq[i].seen, 5);
    }
    h_drain(h);
    h_free(h);
    close(pfd[0]);
    close(pfd[1]);
    free(h);
}

/* Stop the batcher where its arena is between steps (a SIGKILL inside
 * bat_sched_step/complete is not survivable yet: bat_stage.h), then kill. */
static void h_kill9(struct h *h)
{
    struct bat_sched probe;
    size_t len;
    void *mem = shm_pipe_sched(&h->p, &len);
    int st;

    for (int tries = 0;; tries++) {
        assert_true(tries < 1000);
        assert_int_equal(kill(h->pid, SIGSTOP), 0);
        assert_int_equal(waitpid(h->pid, &st, WUNTRACED), h->pid);
        assert_true(WIFSTOPPED(st));
        if (bat_sched_attach(&probe, mem, len) != -ESTALE)
            break;
        kill(h->pid, SIGCONT);
        usleep(100);
    }
    struct bat_sched_info in;
    bat_sched_info(&probe, &in);
    h->kills_in_flight[in.step - in.done_step]++; /* 0, 1 or 2 (sched inv 5) */
    assert_int_equal(kill(h->pid, SIGKILL), 0);
    assert_int_equal(waitpid(h->pid, &st, 0), h->pid);
    assert_true(WIFSIGNALED(st));
    shm_pipe_set_sup(&h->p, SHM_PIPE_BATCHER, 0, 0); /* reaped */
}

static void h_engine_up(struct h *h, int32_t pid)
{
    for (unsigned r = 0; r < NRANKS; r++) {
        shm_pipe_set_sup(&h->p, SHM_PIPE_ENGINE, r, pid);
        shm_pipe_set_up(&h->p, SHM_PIPE_ENGINE, r, pid);
    }
}

/* The engine ranks die (mid_plan: rank 0 had taken the next plan and
 * never answered) and come back as pid, with an empty KV cache. */
static void h_engine_restart(struct h *h, int32_t pid, bool mid_plan, bool pause)
{
    if (mid_plan)
        (void)shm_ring_peek_one(&h->plan[0]);
    for (unsigned r = 0; r < NRANKS; r++)
        shm_pipe_set_sup(&h->p, SHM_PIPE_ENGINE, r, 0); /* reaped */
    if (pause) {
        shm_bell_ec_ring(&h->bat_bell);
        usleep(60000); /* the batcher sees it down */
    }
    for (unsigned r = 0; r < NRANKS; r++) /* a new consumer: unreleased plans again */
        assert_int_equal(shm_pipe_ring_plan(&h->p, r, SHM_RING_CONSUMER, &h->plan[r]), 0);
    memset(h->kv_pos, 0, sizeof(h->kv_pos));
    h->last_step = 0;
    h->prev_step = 0; /* a new engine feeds nothing */
    h->kv_lax = 1;
    h_engine_up(h, pid);
    shm_bell_ec_ring(&h->bat_bell);
}

/* An engine restart loses the KV: the batcher voids the plan in flight
 * (never applies results computed without the KV) and re-prefills every
 * running sequence; no token is lost, repeated or wrong. */
static void t_engine_restart(void **state)
{
    (void)state;
    struct bat_sched_cfg sc = sc_default();
    struct h *h = calloc(1, sizeof(*h));
    uint64_t rng = 11;

    h_init(h, &sc, 0);
    h_engine_up(h, 5001);
    h_spawn(h, 0);
    h->kv_check = 1;
    for (unsigned i = 0; i < 40; i++)
        h_submit(h, 1 + (uint32_t)(t_rand(&rng) % 80), 20 + (uint32_t)(t_rand(&rng) % 30), 0,
                 i % 3, 0);
    for (int k = 0; k < 6 && h_unfinished(h); k++) {
        uint64_t want = h->events + 30;
        h_run(h, events_or_done, &want, 5000);
        if (k == 2) {
            /* the engine restarts while the batcher is down too: the new
             * batcher finds the old engine pid in the arena */
            h_kill9(h);
            h_engine_restart(h, 5002 + k, true, false);
            h_spawn(h, 0);
            want = h->events + 150; /* long enough for a stale plan to be applied */
            h_run(h, events_or_done, &want, 5000);
            continue;
        }
        h_engine_restart(h, 5002 + k, k % 2, k % 3 == 0);
    }
    h_run(h, all_done, NULL, 10000);
    for (unsigned i = 0; i < h->nrq; i++)
        assert_int_equal(h->rq[i].seen, h->rq[i].max_tokens);
    h_drain(h);
    h_free(h);
    free(h);
}

/* The batcher dies INSIDE a step (arena busy): the next one starts a
 * fresh arena, answers every request it held with 503 + Retry-After, has
 * the engines zero the whole KV pool, and serves new requests. */
static void t_salvage(void **state)
{
    (void)state;
    struct bat_sched_cfg sc = sc_default();
    struct h *h = calloc(1, sizeof(*h));
    unsigned n503 = 0;
    int st;

    h_init(h, &sc, 0);
    h->abort_step = 6;
    h_spawn(h, 0);
    for (unsigned i = 0; i < 30; i++)
        h_submit(h, 4 + i, 40, 0, i % 4, 0);
    for (int i = 0; i < 5000; i++) {
        h_engine(h);
        h_egress(h);
        if (waitpid(h->pid, &st, WNOHANG) == h->pid)
            break;
        usleep(1000);
    }
    assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT);
    /* With overlap the dead batcher died planning step 6 ahead while step
     * 5 was queued: the engine runs that one while it is down (its done is
     * a replay for the new arena, which starts past step 7). */
    h_engine(h);
    shm_pipe_set_sup(&h->p, SHM_PIPE_BATCHER, 0, 0);
    h->abort_step = 0;
    h->expect_zero_all = 1;
    h_spawn(h, 0);
    h_run(h, all_done, NULL, 5000);
    for (unsigned i = 0; i < h->nrq; i++) {
        assert_int_equal(h->rq[i].status, 503);
        assert_true(h->rq[i].retry >= 1);
        n503++;
    }
    assert_int_equal(n503, 30);
    unsigned first = h->nrq;
    for (unsigned i = 0; i < 10; i++)
        h_submit(h, 4 + i, 5, 0, i % 4, 0);
    h_run(h, all_done, NULL, 5000);
    assert_false(h->expect_zero_all); /* the first new plan zeroed the pool */
    for (unsigned i = first; i < h->nrq; i++)
        assert_int_equal(h->rq[i].reason, SHM_FIN_LENGTH);
    h_drain(h);
    h_free(h);
    free(h);
}

static void restart_run(unsigned n_tenants)
{
    struct bat_sched_cfg sc = sc_default();
    struct h *h = calloc(1, sizeof(*h));
    uint64_t rng = 7;
    int kills = getenv("FAVO_LONG") ? 200 : 25;

    h_init(h, &sc, 32);
    h_spawn(h, 0);
    for (unsigned i = 0; i < 150; i++)
        h_submit(h, 1 + (uint32_t)(t_rand(&rng) % 60), 5 + (uint32_t)(t_rand(&rng) % 40),
                 i % 4 == 0 ? 1 + (uint32_t)(t_rand(&rng) % 40) : 0, i % n_tenants, 0);
    for (int k = 0; k < kills && h_unfinished(h); k++) {
        uint64_t want = h->events + 1 + t_rand(&rng) % 60;
        uint64_t end = favo_now_ns() + 5000000000ull;
        while (h->events < want && h_unfinished(h)) {
            assert_true(favo_now_ns() < end);
            /* play the engine only some rounds: kills land with plans in
             * flight, done messages unconsumed, events unpublished */
            if (t_rand(&rng) % 3)
                h_engine(h);
            if (!h_egress(h))
                usleep(20);
        }
        h_kill9(h);
        /* sometimes queue more while the batcher is down */
        if (k % 5 == 0 && h->nrq < 180)
            h_submit(h, 3, 6, 0, 9, 0);
        h_spawn(h, k % 2);
    }
    h_run(h, all_done, NULL, 15000);
    for (unsigned i = 0; i < h->nrq; i++) {
        struct rq *q = &h->rq[i];
        if (q->eos_at && q->eos_at <= q->max_tokens)
            assert_int_equal(q->seen, q->eos_at);
        else
            assert_int_equal(q->seen, q->max_tokens);
    }
    printf("# %u tenants: batcher killed with 0 / 1 / 2 plans in flight: %u / %u / %u times\n",
           n_tenants, h->kills_in_flight[0], h->kills_in_flight[1], h->kills_in_flight[2]);
    h_drain(h);
    h_free(h);
    free(h);
}

/* Five tenants: the running set is full while others wait, so fairness
 * often holds overlap back (bat_sched_ahead_ok): kills with none or one
 * plan in flight. */
static void t_restart(void **state)
{
    (void)state;
    restart_run(5);
}

/* One tenant: plans are made ahead, kills land with two in flight too. */
static void t_restart_overlap(void **state)
{
    (void)state;
    restart_run(1);
}

/* The response cache: requests that copy request `as` (same prompt,
 * parameters, max_tokens) with a cache TTL. */
static unsigned h_copy(struct h *h, int as, uint32_t ntok, uint32_t max_tokens, uint32_t eos_at)
{
    h->as = as;
    unsigned i = h_submit(h, ntok, max_tokens, eos_at, 3, 0);
    h->as = -1;
    h_run(h, all_done, NULL, 5000);
    return i;
}

static void t_cache(void **state)
{
    (void)state;
    struct bat_sched_cfg sc = sc_default();
    struct h *h = calloc(1, sizeof(*h));
    uint64_t s0;
    unsigned a, b;

    g_cache_bytes = 1u << 20;
    h_init(h, &sc, 64);
    g_cache_bytes = 0;
    h_stats_on(h);
    h_spawn(h, 0);
    h->cache_ttl = 60;
    /* request 0 is greedy (temperature 0): a miss, then hits without a plan */
    a = h_copy(h, 0, 20, 8, 0);
    assert_int_equal(h->rq[a].seen, 8);
    assert_int_equal(h->rq[a].reason, SHM_FIN_LENGTH);
    s0 = h->steps;
    b = h_copy(h, 0, 20, 8, 0);
    assert_int_equal(h->steps, s0); /* the engine never saw it */
    assert_true(h->rq[b].started && h->rq[b].finished);
    assert_int_equal(h->rq[b].seen, 8); /* check_ids: request 0's ids, in b's cell */
    assert_int_equal(h->rq[b].reason, SHM_FIN_LENGTH);
    /* the same prompt with another max_tokens is another entry: a STOP is cached as STOP */
    a = h_copy(h, 0, 20, 12, 5);
    assert_int_equal(h->rq[a].reason, SHM_FIN_STOP);
    s0 = h->steps;
    b = h_copy(h, 0, 20, 12, 5);
    assert_int_equal(h->steps, s0);
    assert_int_equal(h->rq[b].reason, SHM_FIN_STOP);
    assert_int_equal(h->rq[b].seen, 5);
    /* request 3 is seeded (temperature 0.3): cached too */
    h_copy(h, 3, 9, 6, 0);
    s0 = h->steps;
    h_copy(h, 3, 9, 6, 0);
    assert_int_equal(h->steps, s0);
    /* request 1 is seeded but asks for logprobs: never cached (a value
     * holds ids only) */
    h_copy(h, 1, 9, 6, 0);
    s0 = h->steps;
    h_copy(h, 1, 9, 6, 0);
    assert_true(h->steps > s0);
    /* request 2 has temperature 0.2 and no seed: never cached */
    h_copy(h, 2, 9, 6, 0);
    s0 = h->steps;
    h_copy(h, 2, 9, 6, 0);
    assert_true(h->steps > s0);
    /* a cancelled answer (a stop string matched in egress) is not cached */
    h->as = 10;
    a = h_submit(h, 7, 40, 0, 3, 0);
    h->as = -1;
    uint32_t w[2] = { a, 3 };
    h_run(h, seen_at_least, w, 5000);
    h_cancel_egress(h, a);
    h_run(h, all_done, NULL, 5000);
    assert_int_equal(h->rq[a].reason, SHM_FIN_CANCELLED);
    s0 = h->steps;
    b = h_copy(h, 10, 7, 40, 0);
    assert_true(h->steps > s0);
    assert_int_equal(h->rq[b].seen, 40);
    /* entries survive a batcher restart (re-attached, not re-formatted) */
    h_kill9(h);
    h_spawn(h, 0);
    s0 = h->steps;
    b = h_copy(h, 0, 20, 8, 0);
    assert_int_equal(h->steps, s0);
    assert_int_equal(h->rq[b].seen, 8);
    /* a restart in the middle of a hit's three events: the dead batcher had
     * written the ids and pushed START only (played here on its arena);
     * the new one adds TOKEN and FINISH, and skips the replayed SUBMIT */
    h_kill9(h);
    h->as = 0;
    a = h_submit(h, 20, 8, 0, 3, 0);
    h->as = -1;
    {
        struct bat_sched probe;
        size_t len;
        void *mem = shm_pipe_sched(&h->p, &len), *data;
        size_t size;
        struct rq *q = &h->rq[a];
        assert_int_equal(bat_sched_attach(&probe, mem, len), 0);
        assert_int_equal(shm_cell_get(&h->alloc, q->cell, SHM_CELL_BATCHER, &data, &size), 0);
        for (uint32_t k = 0; k < 8; k++) {
            int32_t id = (int32_t)gtok(0, k);
            memcpy((char *)data + q->tok_off + 4 * (q->ntok + k), &id, 4);
        }
        struct bat_event ev = { .cell = q->cell, .kind = BAT_EV_START };
        assert_int_equal(bat_sched_ob_push(&probe, &ev), 0);
        uint64_t *user = bat_sched_user(&probe);
        user[15] = (q->tok_off + 4ull * (q->ntok + 7)) | 8ull << 32 | (uint64_t)BAT_FIN_LENGTH << 48;
        user[14] = q->cell;
    }
    s0 = h->steps;
    h_spawn(h, 0);
    h_run(h, all_done, NULL, 5000);
    assert_int_equal(h->steps, s0);
    assert_int_equal(h->rq[a].seen, 8);
    assert_int_equal(h->rq[a].reason, SHM_FIN_LENGTH);
    /* TTL: a 1 s entry is gone (scrubbed by the once-a-second expiry) after 2.2 s */
    h->cache_ttl = 1;
    h_copy(h, 20, 11, 4, 0);
    s0 = h->steps;
    h_copy(h, 20, 11, 4, 0);
    assert_int_equal(h->steps, s0);
    usleep(2200000);
    h_copy(h, 20, 11, 4, 0);
    assert_true(h->steps > s0);
    h_drain(h);
    struct shm_stats_snap *st = h_snap(h);
    /* hits: b(8), b(stop), seeded, after restart, TTL 1st = 5; misses:
     * 0/8, 0/12, seeded, 10 cancelled, 10 again, 20 first, 20 expired = 7 */
    assert_int_equal(st->counters[SHM_C_RESPONSE_CACHE_HITS], 5);
    assert_int_equal(st->counters[SHM_C_RESPONSE_CACHE_MISSES], 7);
    free(st);
    h_free(h);
    free(h);
}

/* By hand (T_BAT_BENCH=N requests of 200 tokens, 64 at a time): the
 * batcher child's CPU time per generated token and per step, with the fake
 * engine and egress in this process. Not in the suite. */
static void t_bench(void **state)
{
    (void)state;
    const char *env = getenv("T_BAT_BENCH");
    struct bat_sched_cfg sc = sc_default();
    struct h *h;
    struct rusage ru;
    uint64_t t0, t1, gen = 0;
    unsigned n = env ? (unsigned)atoi(env) : 0, done = 0;

    if (!n)
        skip();
    h = calloc(1, sizeof(*h));
    sc.max_seqs = 64;
    sc.n_blocks = 4096;
    sc.max_batch_tokens = 512;
    h_init(h, &sc, 0);
    h->light = 1;
    h_spawn(h, 0);
    t0 = favo_now_ns();
    unsigned submitted = 0, base = 0;
    while (done < n) {
        while (submitted - done < 64 && submitted < n) {
            if (h->nrq == MAXR) {
                if (h_unfinished(h))
                    break;
                for (unsigned i = 0; i < h->nrq; i++) /* all done: reuse the table */
                    gen += h->rq[i].seen;
                base += h->nrq;
                h->nrq = 0;
            }
            h_submit(h, 32, 200, 0, h->nrq % 8, 0);
            submitted++;
        }
        if (!h_engine(h) + !h_egress(h) == 2)
            usleep(20);
        done = base + h->nrq - h_unfinished(h);
    }
    t1 = favo_now_ns();
    for (unsigned i = 0; i < h->nrq; i++)
        gen += h->rq[i].seen;
    struct bat_sched s2;
    struct bat_sched_info in;
    size_t len;
    void *mem = shm_pipe_sched(&h->p, &len);
    assert_int_equal(bat_sched_attach(&s2, mem, len), 0);
    bat_sched_info(&s2, &in);
    h_drain(h); /* reaps the child */
    assert_int_equal(getrusage(RUSAGE_CHILDREN, &ru), 0);
    double cpu = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 +
                 (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec * 1e-6;
    printf("bench: %llu tokens, %llu steps in %.3f s wall (%.0f tok/s, fake engine+egress in "
           "one process); batcher CPU %.3f s = %.2f us/token, %.1f us/step\n",
           (unsigned long long)gen, (unsigned long long)in.step, (double)(t1 - t0) * 1e-9,
           (double)gen / ((double)(t1 - t0) * 1e-9), cpu, cpu * 1e6 / (double)gen,
           cpu * 1e6 / (double)in.step);
    h_free(h);
    free(h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(t_many, teardown),
        cmocka_unit_test_teardown(t_cancel, teardown),
        cmocka_unit_test_teardown(t_errors, teardown),
        cmocka_unit_test_teardown(t_engine_refuses, teardown),
        cmocka_unit_test_teardown(t_drain, teardown),
        cmocka_unit_test_teardown(t_egress_after_plan, teardown),
        cmocka_unit_test_teardown(t_restart, teardown),
        cmocka_unit_test_teardown(t_restart_overlap, teardown),
        cmocka_unit_test_teardown(t_engine_restart, teardown),
        cmocka_unit_test_teardown(t_salvage, teardown),
        cmocka_unit_test_teardown(t_cache, teardown),
        cmocka_unit_test_teardown(t_bench, teardown),
    };
    favo_log_init("test");
    if (getenv("T_FILTER")) /* one test, for soak loops */
        cmocka_set_test_filter(getenv("T_FILTER"));
    return cmocka_run_group_tests(tests, NULL, NULL);
}
