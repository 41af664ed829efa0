/*
 * test-engine-stage.c - the engine stage process (eng_stage.h) in a forked
 * child, driven through the real pipe: the test plays ingress (cells from
 * the pool, prompt ids written into them) and the batcher (a real
 * bat_sched in the pipe's arena, plans in the plan slots, plan ring, engine
 * bell; results and the done ring back). A generated tiny llama (q8_0)
 * runs every plan of a scheduler whose KV pool forces chunked prefill,
 * preemption and block reuse; every request's tokens must equal a
 * reference run of eng_step in the test process (each request alone,
 * whole prompt, own blocks). Also: a malformed plan gets -1 answers and
 * the stage keeps serving; a restarted engine answers -1 for sequences
 * whose KV it never computed; SIGTERM drains (exit 0 once the batcher is
 * down); the null backend answers ordinary, deterministic tokens.
 */
#include "t_util.h"

#include "bat_sched.h"
#include "eng_kv.h"
#include "eng_model.h"
#include "eng_model_make.h"
#include "eng_stage.h"
#include "eng_step.h"
#include "eng_tok.h"
#include "eng_types.h"
#include "shm_pipe.h"
#include "shm_seg.h"
#include "shm_stats.h"

#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#define GEN 7u
#define NREQ 12
#define MAXTOK 160
#define TOK_OFF 64u
#define WAIT_NS (30ull * 1000 * 1000 * 1000)

struct req {
    int32_t all[MAXTOK];   /* prompt, then generated (as the batcher wrote them) */
    uint32_t n_prompt, max_tokens, n_gen, fin, n_ref;
    struct eng_sample_params sp;
    int32_t ref[MAXTOK];
    shm_cell_ref_t cell;
    uint64_t id;
};

struct env {
    struct shm_seg seg;
    struct shm_pipe p;
    struct bat_sched_cfg sc;
    struct bat_sched s;
    struct shm_cell_pool pool;
    shm_ring_t plan, done;
    shm_bell_ec_t eng_bell, bat_bell;
    uint32_t n_ranks;      /* rank 1 (when 2): its own plan ring, slots and bell */
    shm_ring_t plan1;
    shm_bell_ec_t eng_bell1;
    uint32_t ev_cap;
    struct bat_event *ev;
    uint32_t nslot;        /* plans sent: slot = nslot % SHM_PIPE_PLAN_SLOTS */
    uint32_t n_replayed;   /* done messages of steps already completed */
};

static char *g_dir, *g_path;
static const char *g_stage_model; /* what engine_start's stage loads: g_path by default */
static struct eng_model *g_m;
static eng_tok_t *g_tok;
static struct eng_kv g_kv;

/* The KV pool the stage makes (--kv-cache-type auto: f16 for this q8_0
 * model), so the reference runs on the same cache type. */
static int kv_init_auto(struct eng_kv *kv, const struct eng_model *m, uint32_t n_blocks)
{
    enum eng_kv_type t;

    return eng_kv_type_pick(m, NULL, &t) ? -1 : eng_kv_init_type(kv, &m->hp, n_blocks, t);
}
static eng_ctx_t *g_ctx;
static volatile int g_stop;
static uint32_t g_ranks = 1;     /* engine ranks of the next env_init */

static void on_term(int sig)
{
    (void)sig;
    g_stop = 1;
}

/* ------------------------------------------------------------ fixtures */

static int group_setup(void **state)
{
    char err[256] = "";
    struct eng_model_make_opts mo = { .preset = "tiny", .type = ENG_TYPE_Q8_0, .seed = 5 };

    (void)state;
    g_dir = t_tmpdir();
    if (!g_dir || asprintf(&g_path, "%s/tiny.gguf", g_dir) < 0)
        return -1;
    mo.out = g_path;
    if (eng_model_make(&mo, err, sizeof(err))) {
        fprintf(stderr, "model make: %s\n", err);
        return -1;
    }
    if (eng_model_load(&g_m, g_path, 0, err, sizeof(err)) ||
        eng_tok_load(&g_tok, eng_model_gguf(g_m), err, sizeof(err)) ||
        kv_init_auto(&g_kv, g_m, MAXTOK / 16 + 1))
        return -1;
    struct eng_ctx_opts o = { .n_threads = 1, .max_tokens = MAXTOK, .max_seqs = 1,
                              .n_ctx = MAXTOK };
    return eng_ctx_init(&g_ctx, g_m, &g_kv, &o);
}

static int group_teardown(void **state)
{
    (void)state;
    eng_ctx_free(g_ctx);
    eng_kv_destroy(&g_kv);
    eng_tok_free(g_tok);
    eng_model_free(g_m);
    unlink(g_path);
    rmdir(g_dir);
    free(g_path);
    free(g_dir);
    return 0;
}

/* Reference: the request alone, whole prompt, own blocks; stops after an
 * end-of-generation token as the batcher does. */
static void reference_with(eng_ctx_t *ctx, struct eng_kv *kv, const eng_tok_t *tok, struct req *r);
static void reference(struct req *r)
{
    reference_with(g_ctx, &g_kv, g_tok, r);
}

static void reference_with(eng_ctx_t *ctx, struct eng_kv *kv, const eng_tok_t *tok, struct req *r)
{
    int32_t blocks[MAXTOK / 16 + 1];
    uint32_t nb = 0, pos = 0;
    struct eng_sample_out out;

    r->n_ref = 0;
    for (uint32_t g = 0; g < r->max_tokens; g++) {
        struct eng_seq s = { 0 };
        struct eng_batch b = { 1, &s };
        uint32_t n_new = g == 0 ? r->n_prompt : 1;
        while (nb < eng_kv_blocks_for(pos + n_new)) {
            blocks[nb] = eng_kv_block_alloc(kv);
            assert_true(blocks[nb] >= 0);
            nb++;
        }
        s.pos = pos;
        s.n_new = n_new;
        s.tokens = g == 0 ? r->all : &r->ref[g - 1];
        s.block_table = blocks;
        s.n_blocks = nb;
        s.history = r->ref;
        s.n_history = g;
        s.sp = r->sp;
        assert_int_equal(eng_step(ctx, &b, &out, NULL), 0);
        r->ref[r->n_ref++] = out.token;
        pos += n_new;
        if (eng_tok_is_eog(tok, out.token))
            break;
    }
    for (uint32_t i = 0; i < nb; i++)
        eng_kv_block_release(kv, blocks[i]);
}

static void env_init(struct env *e, uint32_t n_blocks, uint32_t max_tokens, uint32_t max_seqs)
{
    struct shm_pipe_cfg c = { 0 };
    size_t len, cl;
    void *mem;

    memset(e, 0, sizeof(*e));
    e->sc.n_blocks = n_blocks;
    e->sc.max_ctx = MAXTOK;
    e->sc.max_batch_tokens = max_tokens;
    e->sc.max_seqs = max_seqs;
    e->sc.kv_watermark = 0;
    assert_int_equal(bat_sched_cfg_defaults(&e->sc), 0);
    c.n_ingress = 1;
    c.n_ranks = g_ranks;
    e->n_ranks = g_ranks;
    c.sched_bytes = bat_sched_size(&e->sc);
    c.plan_bytes = bat_sched_plan_size(&e->sc);
    c.max_seqs = e->sc.max_seqs;
    c.result_size = sizeof(struct bat_result);
    c.cells.nclasses = 1;
    c.cells.classes[0].cell_size = 4096;
    c.cells.classes[0].ncells = 32;
    assert_int_equal(shm_pipe_cfg_defaults(&c), 0);
    struct shm_seg_spec spec = { "pipe", shm_pipe_size(&c), 4096 };
    assert_int_equal(shm_seg_create_data(&e->seg, &spec, 1), 0);
    mem = shm_seg_region(&e->seg, "pipe", &len);
    assert_non_null(mem);
    assert_int_equal(shm_pipe_init(&e->p, mem, len, &c, GEN), 0);
    shm_seg_publish(&e->seg);

    void *arena = shm_pipe_sched(&e->p, &len);
    assert_int_equal(bat_sched_init(&e->s, arena, len, &e->sc, 1), 0);
    for (unsigned r = 0; r < e->n_ranks; r++)
        for (unsigned k = 0; k < SHM_PIPE_PLAN_SLOTS; k++)
            assert_int_equal(bat_plan_init(shm_pipe_plan(&e->p, r, k), c.plan_bytes,
                                           e->sc.max_seqs, bat_kv_blocks_for(e->sc.max_ctx),
                                           e->sc.n_blocks), 0);
    mem = shm_pipe_cells(&e->p, &cl);
    assert_int_equal(shm_cell_pool_attach(&e->pool, mem, cl, GEN, SHM_CELL_ROLE_ALLOCATOR, -1),
                     0);
    assert_int_equal(shm_pipe_ring_plan(&e->p, 0, SHM_RING_PRODUCER, &e->plan), 0);
    assert_int_equal(shm_pipe_ring_done(&e->p, SHM_RING_CONSUMER, &e->done), 0);
    assert_int_equal(shm_pipe_bell_eng(&e->p, 0, &e->eng_bell), 0);
    if (e->n_ranks > 1) {
        assert_int_equal(shm_pipe_ring_plan(&e->p, 1, SHM_RING_PRODUCER, &e->plan1), 0);
        assert_int_equal(shm_pipe_bell_eng(&e->p, 1, &e->eng_bell1), 0);
    }
    assert_int_equal(shm_pipe_bell_bat(&e->p, &e->bat_bell), 0);
    /* The test is the batcher: up. */
    shm_pipe_set_sup(&e->p, SHM_PIPE_BATCHER, 0, getpid());
    shm_pipe_set_up(&e->p, SHM_PIPE_BATCHER, 0, getpid());
    e->ev_cap = bat_sched_ev_cap(&e->s);
    e->ev = calloc(e->ev_cap, sizeof(*e->ev));
    assert_non_null(e->ev);
}

static void env_free(struct env *e)
{
    free(e->ev);
    shm_seg_destroy(&e->seg);
}

/* Fork an engine stage; returns once its up word is set. */
static pid_t engine_spawn(struct env *e, const char *backend, int poll, struct shm_stats *st,
                          unsigned rank)
{
    pid_t parent = getpid(), pid;

    fflush(NULL); /* the child exits through exit(): nothing buffered twice */
    pid = fork();

    assert_true(pid >= 0);
    if (pid == 0) {
        struct eng_stage_cfg cfg = {
            .pipe = &e->p, .rank = rank, .backend = backend,
            .model_path = g_stage_model ? g_stage_model : g_path,
            .n_threads = 1, .n_blocks = e->sc.n_blocks, .max_tokens = e->sc.max_batch_tokens,
            .max_seqs = e->sc.max_seqs, .n_ctx = MAXTOK, .poll = poll, .stop = &g_stop,
        };
        struct shm_stats_writer w;
        int rc;

        prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive a failed test */
        if (getppid() != parent)
            _exit(4);
        signal(SIGTERM, on_term);
        if (st) {
            if (shm_stats_writer_init(st, 0, SHM_STAGE_ENGINE, 0, SHM_STATS_FLUSH_NS, &w))
                _exit(5);
            cfg.stats = st;
            cfg.stats_w = &w;
            cfg.stats_row = 0;
        }
        rc = eng_stage_run(&cfg);
        if (st)
            shm_stats_writer_free(&w);
        /* exit(), not _exit(): LeakSanitizer checks the stage freed all */
        exit(rc == 0 ? 0 : 3);
    }
    shm_pipe_set_sup(&e->p, SHM_PIPE_ENGINE, rank, pid);
    uint64_t t0 = favo_now_ns();
    while (!shm_pipe_stage_up(&e->p, SHM_PIPE_ENGINE, rank)) {
        int ws;
        assert_int_equal(waitpid(pid, &ws, WNOHANG), 0); /* still alive */
        assert_true(favo_now_ns() - t0 < WAIT_NS);
        usleep(1000);
    }
    return pid;
}

static pid_t engine_start_ex(struct env *e, const char *backend, int poll, struct shm_stats *st)
{
    return engine_spawn(e, backend, poll, st, 0);
}

static pid_t engine_start(struct env *e, const char *backend)
{
    return engine_start_ex(e, backend, 0, NULL);
}

static void engine_kill(struct env *e, pid_t pid)
{
    int st;

    kill(pid, SIGKILL);
    assert_int_equal(waitpid(pid, &st, 0), pid);
    shm_pipe_set_sup(&e->p, SHM_PIPE_ENGINE, 0, 0);
}

/* Drain: SIGTERM, the batcher goes down, the engine exits 0. */
static void engine_stop(struct env *e, pid_t pid)
{
    int st;

    shm_pipe_set_up(&e->p, SHM_PIPE_BATCHER, 0, 0);
    kill(pid, SIGTERM);
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    assert_false(shm_pipe_stage_up(&e->p, SHM_PIPE_ENGINE, 0));
}

/* Ingress's part: a cell with the prompt ids, handed to the batcher; the
 * batcher's: submit. */
static void submit(struct env *e, struct req *r, uint64_t now)
{
    void *data;
    size_t size;

    assert_int_equal(shm_cell_alloc(&e->pool, TOK_OFF + 4ull * MAXTOK, &r->cell), 0);
    assert_int_equal(shm_cell_get(&e->pool, r->cell, SHM_CELL_INGRESS, &data, &size), 0);
    memcpy((char *)data + TOK_OFF, r->all, 4ull * r->n_prompt);
    assert_int_equal(shm_cell_give(&e->pool, r->cell, SHM_CELL_INGRESS, SHM_CELL_BATCHER), 0);
    struct bat_req br = { .tenant = 1, .prio = 0, .n_prompt = r->n_prompt,
                          .max_tokens = r->max_tokens, .cell = r->cell, .tok_off = TOK_OFF,
                          .sp = r->sp };
    assert_int_equal(bat_sched_submit(&e->s, &br, now, &r->id, NULL), 0);
}

/* Next plan from the scheduler into the next plan slot. */
static struct bat_plan *next_plan(struct env *e, uint64_t now, uint32_t *slot)
{
    struct bat_plan *pl;

    *slot = e->nslot++ % SHM_PIPE_PLAN_SLOTS;
    pl = shm_pipe_plan(&e->p, 0, *slot);
    assert_int_equal(bat_sched_step(&e->s, now, pl, e->ev, e->ev_cap), 0);
    return pl;
}

/* Send the plan in `slot` and wait for the engine's done message. */
static const struct bat_result *send_plan(struct env *e, const struct bat_plan *pl,
                                          uint32_t slot)
{
    struct shm_plan_msg m = { .slot = slot, .n_seqs = pl->n_seqs, .step = pl->step }, d;
    uint64_t t0 = favo_now_ns();

    assert_int_equal(shm_ring_enqueue(&e->plan, &m), 0);
    shm_bell_ec_ring(&e->eng_bell);
    if (e->n_ranks > 1) { /* the same plan for rank 1, which answers nothing */
        memcpy(shm_pipe_plan(&e->p, 1, slot), pl, e->p.hdr->cfg.plan_bytes);
        assert_int_equal(shm_ring_enqueue(&e->plan1, &m), 0);
        shm_bell_ec_ring(&e->eng_bell1);
    }
    for (;;) {
        uint32_t v = shm_bell_ec_value(&e->bat_bell);
        if (shm_ring_peek_burst(&e->done, &d, 1) == 1) {
            if (d.step == m.step)
                break;
            /* A restarted engine answers the plan message its predecessor
             * had not released: a step already completed (bat_stage's
             * done_step makes it a no-op). */
            assert_true(d.step < m.step);
            e->n_replayed++;
            shm_ring_release(&e->done, 1);
            continue;
        }
        assert_true(favo_now_ns() - t0 < WAIT_NS);
        (void)shm_bell_ec_wait(&e->bat_bell, v, 100 * 1000 * 1000);
    }
    assert_int_equal(d.slot, m.slot);
    assert_int_equal(d.step, m.step);
    assert_int_equal(d.n_seqs, m.n_seqs);
    shm_ring_release(&e->done, 1);
    return shm_pipe_results(&e->p, slot);
}

static struct req *by_cell(struct req *rq, unsigned n, uint64_t cell)
{
    for (unsigned i = 0; i < n; i++)
        if (rq[i].cell == cell)
            return &rq[i];
    fail_msg("event for an unknown cell");
    return NULL;
}

/* The batcher's complete: ids into the cells, then the events. */
static int complete(struct env *e, struct req *rq, unsigned nreq, const struct bat_plan *pl,
                    const struct bat_result *res, uint64_t now)
{
    int n = bat_sched_complete(&e->s, pl, res, now, e->ev, e->ev_cap), done = 0;

    assert_true(n >= 0);
    for (int k = 0; k < n; k++) {
        struct req *r = by_cell(rq, nreq, e->ev[k].cell);
        if (e->ev[k].kind == BAT_EV_TOKEN) {
            void *data;
            size_t size;
            assert_true(e->ev[k].n_gen == r->n_gen + 1 && r->n_gen < r->max_tokens);
            r->all[r->n_prompt + r->n_gen++] = e->ev[k].token;
            assert_int_equal(shm_cell_bytes(&e->pool, r->cell, &data, &size), 0);
            ((int32_t *)((char *)data + TOK_OFF))[r->n_prompt + e->ev[k].n_gen - 1] =
                e->ev[k].token;
        } else {
            assert_true(e->ev[k].reason == BAT_FIN_LENGTH || e->ev[k].reason == BAT_FIN_STOP);
            r->fin = e->ev[k].reason;
            done++;
        }
    }
    return done;
}

static void make_reqs(struct req *rq, unsigned n, uint64_t seed, bool sampled)
{
    uint64_t rng = seed;

    memset(rq, 0, sizeof(*rq) * n);
    for (unsigned i = 0; i < n; i++) {
        struct req *r = &rq[i];
        r->n_prompt = 8 + (uint32_t)(t_rand(&rng) % 70);
        r->max_tokens = 10 + (uint32_t)(t_rand(&rng) % 60);
        for (uint32_t k = 0; k < r->n_prompt; k++)
            r->all[k] = (int32_t)(t_rand(&rng) % (g_m->hp.n_vocab - 2)); /* no control ids */
        r->sp.seed = 1000 + i;
        if (sampled && i % 2) {
            r->sp.temperature = 0.9f;
            r->sp.top_p = 0.95f;
        }
    }
}

/* ------------------------------------------------------------ tests */

/* The main path: 12 requests, chunked prefill, preemption, block reuse. */
static void t_plans_through_stage(void **state)
{
    struct env e;
    static struct req rq[NREQ];
    uint64_t now = 1000000000ull;
    int done = 0, steps = 0;
    struct bat_sched_info in;

    (void)state;
    env_init(&e, 14, 48, 8);
    make_reqs(rq, NREQ, 77, true);
    for (int i = 0; i < NREQ; i++)
        reference(&rq[i]);
    pid_t pid = engine_start_ex(&e, "cpu", 1, NULL); /* adaptive waiting */
    for (int i = 0; i < NREQ; i++)
        submit(&e, &rq[i], now);
    while (done < NREQ) {
        uint32_t slot;
        struct bat_plan *pl = next_plan(&e, now, &slot);
        const struct bat_result *res = pl->n_seqs ? send_plan(&e, pl, slot) : NULL;
        for (uint32_t i = 0; i < pl->n_seqs; i++)
            if (!bat_plan_seqs(pl)[i].no_sample)
                assert_int_equal(res[i].eos, eng_tok_is_eog(g_tok, res[i].token));
        now += 1000000;
        done += complete(&e, rq, NREQ, pl, res, now);
        assert_true(++steps < 5000);
    }
    bat_sched_info(&e.s, &in);
    printf("# %d steps, %llu preemptions\n", steps, (unsigned long long)in.n_preempt);
    assert_true(in.n_preempt > 0); /* the pool forced recompute and block reuse */
    for (int i = 0; i < NREQ; i++) {
        assert_int_equal(rq[i].n_gen, rq[i].n_ref);
        assert_memory_equal(rq[i].all + rq[i].n_prompt, rq[i].ref, rq[i].n_ref * 4);
        assert_int_equal(rq[i].fin, eng_tok_is_eog(g_tok, rq[i].ref[rq[i].n_ref - 1])
                                        ? BAT_FIN_STOP : BAT_FIN_LENGTH);
    }
    engine_stop(&e, pid);
    env_free(&e);
}

/* A plan naming a block outside the pool, or with a bad magic, is
 * answered with -1 per sequence; the stage stays up and serves the
 * corrected plan. */
static void t_malformed_plan(void **state)
{
    struct env e;
    static struct req rq[2];
    uint64_t now = 1000000000ull;
    uint32_t slot;
    int st;

    (void)state;
    env_init(&e, 40, 200, 8);
    make_reqs(rq, 2, 5, false);
    for (int i = 0; i < 2; i++)
        reference(&rq[i]);
    pid_t pid = engine_start(&e, "cpu");
    for (int i = 0; i < 2; i++)
        submit(&e, &rq[i], now);
    struct bat_plan *pl = next_plan(&e, now, &slot);
    assert_int_equal(pl->n_seqs, 2);
    struct bat_plan_seq *ps = &bat_plan_seqs(pl)[1];
    int32_t *tb = &bat_plan_tables(pl)[ps->table_off];
    int32_t save = *tb;

    *tb = (int32_t)e.sc.n_blocks + 5; /* out of range */
    const struct bat_result *res = send_plan(&e, pl, slot);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(res[i].token, -1);
        assert_int_equal(res[i].eos, 0);
    }
    assert_int_equal(waitpid(pid, &st, WNOHANG), 0);
    *tb = save;
    pl->magic ^= 1;
    res = send_plan(&e, pl, slot);
    assert_int_equal(res[0].token, -1);
    assert_int_equal(res[1].token, -1);
    pl->magic ^= 1;
    /* The same block twice in one plan (plan inv 2). */
    *tb = bat_plan_tables(pl)[bat_plan_seqs(pl)[0].table_off];
    res = send_plan(&e, pl, slot);
    assert_int_equal(res[1].token, -1);
    *tb = save;
    /* Now valid: both prefills compute their reference first token. */
    res = send_plan(&e, pl, slot);
    for (int i = 0; i < 2; i++) {
        struct req *r = by_cell(rq, 2, bat_plan_seqs(pl)[i].cell);
        assert_int_equal(res[i].token, r->ref[0]);
    }
    /* A stale replay (the slot holds a newer step) gets no answer: the
     * next done is the next plan's. */
    struct shm_plan_msg stale = { .slot = slot, .n_seqs = pl->n_seqs, .step = pl->step - 1 };
    assert_int_equal(shm_ring_enqueue(&e.plan, &stale), 0);
    res = send_plan(&e, pl, slot);
    assert_int_equal(e.n_replayed, 0);
    assert_int_equal(waitpid(pid, &st, WNOHANG), 0);
    engine_stop(&e, pid);
    env_free(&e);
}

/* Random corruption of a valid plan (header, sequences, block tables):
 * every version is answered (-1 or a token), the stage never crashes,
 * and the pristine plan still computes the reference tokens afterwards. */
static void t_corrupt_plans(void **state)
{
    struct env e;
    static struct req rq[2];
    uint64_t now = 1000000000ull, rng = 99;
    uint32_t slot, refused = 0;
    int st, iters = getenv("FAVO_LONG") ? 3000 : 200;
    static char pristine[1 << 16];

    (void)state;
    env_init(&e, 40, 200, 8);
    make_reqs(rq, 2, 5, false);
    for (int i = 0; i < 2; i++) {
        rq[i].n_prompt = 10; /* short steps: many iterations */
        reference(&rq[i]);
    }
    pid_t pid = engine_start(&e, "cpu");
    for (int i = 0; i < 2; i++)
        submit(&e, &rq[i], now);
    struct bat_plan *pl = next_plan(&e, now, &slot);
    size_t used = pl->off_tables + pl->cap_tables * sizeof(int32_t);
    assert_true(pl->off_seqs < pl->off_tables && used <= sizeof(pristine));
    memcpy(pristine, pl, used);
    for (int it = 0; it < iters; it++) {
        unsigned nflip = 1 + (unsigned)(t_rand(&rng) % 4);
        memcpy(pl, pristine, used);
        for (unsigned f = 0; f < nflip; f++) {
            size_t at = (size_t)(t_rand(&rng) % used);
            if (at >= offsetof(struct bat_plan, step) &&
                at < offsetof(struct bat_plan, step) + sizeof(pl->step))
                continue; /* a newer step reads as a stale replay: no answer */
            ((unsigned char *)pl)[at] ^= (unsigned char)(1u << (t_rand(&rng) % 8));
        }
        const struct bat_result *res = send_plan(&e, pl, slot);
        for (uint32_t i = 0; i < FAVO_MIN(pl->n_seqs, e.sc.max_seqs); i++)
            refused += res[i].token == -1;
    }
    memcpy(pl, pristine, used);
    printf("# %d corrupted plans, %u answers -1\n", iters, refused);
    assert_true(refused > 0);
    const struct bat_result *res = send_plan(&e, pl, slot);
    for (int i = 0; i < 2; i++) {
        struct req *r = by_cell(rq, 2, bat_plan_seqs(pl)[i].cell);
        assert_int_equal(res[i].token, r->ref[0]);
    }
    assert_int_equal(waitpid(pid, &st, WNOHANG), 0);
    engine_stop(&e, pid);
    env_free(&e);
}

/* kill -9 of the engine between steps; a new engine starts with an empty
 * KV pool: the running sequences' decodes are answered -1 (the batcher
 * must recompute them), while a new request's prefill in the same plan is
 * computed right. */
static void t_restart_kv_missing(void **state)
{
    struct env e;
    static struct req rq[3];
    uint64_t now = 1000000000ull;
    uint32_t slot;

    (void)state;
    env_init(&e, 40, 200, 8);
    make_reqs(rq, 3, 9, false);
    for (int i = 0; i < 3; i++) {
        rq[i].max_tokens = 20;
        reference(&rq[i]);
    }
    pid_t pid = engine_start(&e, "cpu");
    submit(&e, &rq[0], now);
    submit(&e, &rq[1], now);
    for (int k = 0; k < 3; k++) {
        struct bat_plan *pl = next_plan(&e, now, &slot);
        const struct bat_result *res = send_plan(&e, pl, slot);
        now += 1000000;
        assert_int_equal(complete(&e, rq, 3, pl, res, now), 0);
    }
    assert_int_equal(rq[0].n_gen, 3);
    assert_memory_equal(rq[0].all + rq[0].n_prompt, rq[0].ref, 3 * 4);
    engine_kill(&e, pid);
    pid = engine_start(&e, "cpu");
    submit(&e, &rq[2], now);
    struct bat_plan *pl = next_plan(&e, now, &slot);
    assert_int_equal(pl->n_seqs, 3);
    const struct bat_result *res = send_plan(&e, pl, slot);
    for (uint32_t i = 0; i < 3; i++) {
        struct req *r = by_cell(rq, 3, bat_plan_seqs(pl)[i].cell);
        if (r == &rq[2])
            assert_int_equal(res[i].token, r->ref[0]);
        else
            assert_int_equal(res[i].token, -1);
    }
    engine_stop(&e, pid);
    env_free(&e);
}

/* SIGTERM alone does not stop the stage while the batcher is up; once the
 * batcher is down it exits 0 and clears its up word. */
static void t_drain(void **state)
{
    struct env e;
    int st;

    (void)state;
    env_init(&e, 14, 48, 8);
    pid_t pid = engine_start(&e, "cpu");
    kill(pid, SIGTERM);
    usleep(300 * 1000);
    assert_int_equal(waitpid(pid, &st, WNOHANG), 0);
    assert_true(shm_pipe_stage_up(&e.p, SHM_PIPE_ENGINE, 0));
    engine_stop(&e, pid);
    env_free(&e);
}

/* --backend null: every token ordinary (normal, not end-of-generation) and
 * the one eng_stage_null_token gives for (seed, position). */
static void t_null_backend(void **state)
{
    struct env e;
    static struct req rq[4];
    uint64_t now = 1000000000ull;
    int done = 0, steps = 0;

    (void)state;
    env_init(&e, 40, 64, 8);
    make_reqs(rq, 4, 3, false);
    pid_t pid = engine_start_ex(&e, "null", 2, NULL); /* spinning */
    for (int i = 0; i < 4; i++)
        submit(&e, &rq[i], now);
    uint64_t t0 = favo_now_ns();
    while (done < 4) {
        uint32_t slot;
        struct bat_plan *pl = next_plan(&e, now, &slot);
        const struct bat_result *res = pl->n_seqs ? send_plan(&e, pl, slot) : NULL;
        now += 1000000;
        done += complete(&e, rq, 4, pl, res, now);
        assert_true(++steps < 5000);
    }
    /* A figure, not a check: scheduler step + plan ring + engine + done
     * ring + complete, per step, with a spinning engine. */
    double us = (double)(favo_now_ns() - t0) / 1e3;
    printf("# null backend: %d steps in %.1f us, %.1f us per step (batcher loop included)\n",
           steps, us, us / steps);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(rq[i].fin, BAT_FIN_LENGTH);
        for (uint32_t k = 0; k < rq[i].n_gen; k++) {
            int32_t t = rq[i].all[rq[i].n_prompt + k];
            assert_true(t >= 0 && (uint32_t)t < g_m->hp.n_vocab);
            assert_true(eng_tok_attr(g_tok, t) & ENG_TOK_ATTR_NORMAL);
            assert_false(eng_tok_is_eog(g_tok, t));
            assert_int_equal(t, eng_stage_null_token(g_tok, rq[i].sp.seed, rq[i].n_prompt + k));
        }
    }
    /* Not a constant: different positions give different tokens. */
    assert_true(memcmp(rq[0].all + rq[0].n_prompt, rq[0].all + rq[0].n_prompt + 1, 4 * 5));
    engine_stop(&e, pid);
    env_free(&e);
}

/* The stage heartbeats its stage-table row while idle. */
static void t_stats_heartbeat(void **state)
{
    struct env e;
    struct shm_stats st;
    struct shm_stage_info info = { .kind = SHM_STAGE_ENGINE, .state = SHM_STAGE_STARTING };
    char inst[64];

    (void)state;
    snprintf(inst, sizeof(inst), "t-eng-stage-%d", (int)getpid());
    assert_int_equal(shm_stats_create(&st, inst, 1, 1), 0);
    assert_int_equal(shm_stats_stage_set(&st, 0, &info), 0);
    env_init(&e, 14, 48, 8);
    pid_t pid = engine_start_ex(&e, "cpu", 0, &st);
    const volatile uint64_t *hb = &((struct shm_stats_stage *)st.stages)->heartbeat_ns;
    uint64_t t0 = favo_now_ns();
    while (*hb < t0) {
        assert_true(favo_now_ns() - t0 < WAIT_NS);
        usleep(10 * 1000);
    }
    engine_stop(&e, pid);
    env_free(&e);
    shm_stats_destroy(&st);
}

/* A real model (SmolLM2 from FAVO_MODELS) through the stage: chat prompts
 * tokenized by its own tokenizer, greedy; tokens equal eng_step alone and
 * the answers that end with <|im_end|> come back eos = 1 (FINISH STOP). */
static void t_real_model(void **state)
{
    static const char *const prompts[] = {
        "<|im_start|>user\nSay hi.<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>user\nWhat is 2+2? Answer with a number.<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>user\nName a color.<|im_end|>\n<|im_start|>assistant\n",
    };
    enum { N = 3 };
    char path[1024], err[256] = "";
    struct eng_model *m;
    eng_tok_t *tok;
    struct eng_kv kv;
    eng_ctx_t *ctx;
    struct env e;
    static struct req rq[N];
    uint64_t now = 1000000000ull;
    int done = 0, steps = 0, stops = 0;

    (void)state;
    snprintf(path, sizeof(path), "%s/SmolLM2-135M-Instruct.Q4_1.gguf",
             t_env("FAVO_MODELS", "models"));
    if (access(path, R_OK)) {
        printf("# no %s: skipped\n", path);
        skip();
    }
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define T_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define T_SANITIZED 1
#endif
#endif
#ifdef T_SANITIZED
    if (!getenv("FAVO_LONG")) { /* a real model under a sanitizer: soak runs only */
        printf("# sanitizer build without FAVO_LONG: skipped\n");
        skip();
    }
#endif
    assert_int_equal(eng_model_load(&m, path, 0, err, sizeof(err)), 0);
    assert_int_equal(eng_tok_load(&tok, eng_model_gguf(m), err, sizeof(err)), 0);
    assert_int_equal(kv_init_auto(&kv, m, MAXTOK / 16 + 1), 0);
    struct eng_ctx_opts o = { .n_threads = 1, .max_tokens = MAXTOK, .max_seqs = 1,
                              .n_ctx = MAXTOK };
    assert_int_equal(eng_ctx_init(&ctx, m, &kv, &o), 0);
    memset(rq, 0, sizeof(rq));
    for (int i = 0; i < N; i++) {
        int64_t n = eng_tok_encode(tok, prompts[i], strlen(prompts[i]),
                                   ENG_TOK_PARSE_SPECIAL, rq[i].all, MAXTOK);
        assert_true(n > 0 && n < 64);
        rq[i].n_prompt = (uint32_t)n;
        rq[i].max_tokens = 48;
        reference_with(ctx, &kv, tok, &rq[i]);
    }
    env_init(&e, 40, 64, 4);
    g_stage_model = path;
    pid_t pid = engine_start(&e, "cpu");
    g_stage_model = NULL;
    for (int i = 0; i < N; i++)
        submit(&e, &rq[i], now);
    while (done < N) {
        uint32_t slot;
        struct bat_plan *pl = next_plan(&e, now, &slot);
        const struct bat_result *res = pl->n_seqs ? send_plan(&e, pl, slot) : NULL;
        for (uint32_t i = 0; i < pl->n_seqs; i++)
            if (!bat_plan_seqs(pl)[i].no_sample) {
                assert_int_equal(res[i].eos, eng_tok_is_eog(tok, res[i].token));
                stops += res[i].eos;
            }
        now += 1000000;
        done += complete(&e, rq, N, pl, res, now);
        assert_true(++steps < 1000);
    }
    for (int i = 0; i < N; i++) {
        assert_int_equal(rq[i].n_gen, rq[i].n_ref);
        assert_memory_equal(rq[i].all + rq[i].n_prompt, rq[i].ref, rq[i].n_ref * 4);
    }
    printf("# %d steps, %d answers ended by the model (eos)\n", steps, stops);
    assert_true(stops > 0);
    engine_stop(&e, pid);
    env_free(&e);
    eng_ctx_free(ctx);
    eng_kv_destroy(&kv);
    eng_tok_free(tok);
    eng_model_free(m);
}

/* Two ranks: rank 1 consumes the same plans and answers nothing (rank 0
 * alone writes results and done); both drain. */
static void t_two_ranks(void **state)
{
    struct env e;
    static struct req rq[3];
    uint64_t now = 1000000000ull;
    int done = 0, steps = 0, st;

    (void)state;
    g_ranks = 2;
    env_init(&e, 40, 64, 8);
    g_ranks = 1;
    make_reqs(rq, 3, 11, false);
    pid_t p0 = engine_spawn(&e, "null", 0, NULL, 0), p1 = engine_spawn(&e, "null", 0, NULL, 1);
    for (int i = 0; i < 3; i++)
        submit(&e, &rq[i], now);
    while (done < 3) {
        uint32_t slot;
        struct bat_plan *pl = next_plan(&e, now, &slot);
        const struct bat_result *res = pl->n_seqs ? send_plan(&e, pl, slot) : NULL;
        now += 1000000;
        done += complete(&e, rq, 3, pl, res, now);
        assert_true(++steps < 5000);
        /* one plan in flight per rank: rank 1 has read it before the next */
        uint64_t t0 = favo_now_ns();
        while (shm_ring_count(&e.plan1)) {
            assert_true(favo_now_ns() - t0 < WAIT_NS);
            usleep(100);
        }
    }
    for (int i = 0; i < 3; i++)
        for (uint32_t k = 0; k < rq[i].n_gen; k++)
            assert_int_equal(rq[i].all[rq[i].n_prompt + k],
                             eng_stage_null_token(g_tok, rq[i].sp.seed, rq[i].n_prompt + k));
    assert_int_equal(shm_ring_count(&e.done), 0); /* rank 1 wrote nothing there */
    shm_pipe_set_up(&e.p, SHM_PIPE_BATCHER, 0, 0);
    kill(p1, SIGTERM);
    assert_int_equal(waitpid(p1, &st, 0), p1);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    assert_false(shm_pipe_stage_up(&e.p, SHM_PIPE_ENGINE, 1));
    engine_stop(&e, p0);
    env_free(&e);
}

/* Model metadata without the weights. */
static void t_model_info(void **state)
{
    struct eng_stage_model_info mi;
    char err[256] = "";

    (void)state;
    assert_int_equal(eng_stage_model_info(g_path, "f32", &mi, err, sizeof(err)), 0);
    assert_string_equal(mi.kv_type, "f32");
    assert_int_equal(mi.kv_block_bytes, (uint64_t)g_m->hp.n_layer * g_m->hp.n_head_kv * 16 *
                                        (g_m->hp.head_dim + g_m->hp.head_dim_v) * 4);
    assert_int_equal(eng_stage_model_info(g_path, "nope", &mi, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "--kv-cache-type"));
    assert_int_equal(eng_stage_model_info(g_path, NULL, &mi, err, sizeof(err)), 0);
    assert_string_equal(mi.kv_type, "f16");       /* auto, on a q8_0 model */
    assert_string_equal(mi.arch, "llama");
    assert_int_equal(mi.n_vocab, g_m->hp.n_vocab);
    assert_int_equal(mi.n_layer, g_m->hp.n_layer);
    assert_int_equal(mi.n_ctx_train, g_m->hp.n_ctx_train);
    assert_int_equal(mi.kv_block_bytes, g_kv.block_bytes);
    assert_int_equal(mi.weight_bytes, g_m->weight_bytes);
    assert_true(eng_stage_model_info("/nonexistent.gguf", NULL, &mi, err, sizeof(err)) < 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(t_model_info),
        cmocka_unit_test(t_plans_through_stage),
        cmocka_unit_test(t_malformed_plan),
        cmocka_unit_test(t_corrupt_plans),
        cmocka_unit_test(t_restart_kv_missing),
        cmocka_unit_test(t_drain),
        cmocka_unit_test(t_null_backend),
        cmocka_unit_test(t_stats_heartbeat),
        cmocka_unit_test(t_real_model),
        cmocka_unit_test(t_two_ranks),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
