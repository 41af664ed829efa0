/*
 * test-batcher-engine.c - the batcher's plans drive the real CPU engine:
 * a generated tiny llama (eng_model_make, q8_0) runs every plan of a
 * scheduler whose KV pool is small enough to force preemption by
 * recompute, and every request's tokens (greedy, or sampled with a seed)
 * must equal those of the same request run alone with whole-prompt
 * prefill. This pins the plan
 * shape (positions, chunks, no_sample, block tables, freed blocks zeroed
 * before use) against eng_step.h, and shows that a preempted sequence
 * resumes without a lost, repeated or different token.
 */
#include "t_util.h"

#include "bat_sched.h"
#include "eng_kv.h"
#include "eng_model.h"
#include "eng_model_make.h"
#include "eng_step.h"
#include "eng_types.h"

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#define NREQ 12
#define MAXTOK 160

struct req {
    int32_t all[MAXTOK];   /* prompt, then generated */
    uint32_t n_prompt, max_tokens, n_gen, fin;
    struct eng_sample_params sp;
    int32_t ref[MAXTOK];
};

static char *dir;

static char *model_path(void)
{
    char *path, err[256] = "";
    struct eng_model_make_opts mo = { .preset = "tiny", .type = ENG_TYPE_Q8_0, .seed = 5 };

    dir = t_tmpdir();
    assert_non_null(dir);
    assert_true(asprintf(&path, "%s/tiny.gguf", dir) > 0);
    mo.out = path;
    if (eng_model_make(&mo, err, sizeof(err))) {
        fprintf(stderr, "model make: %s\n", err);
        fail();
    }
    return path;
}

/* Greedy reference: the request alone, whole prompt, own blocks. */
static void reference(eng_ctx_t *c, struct eng_kv *kv, struct req *r)
{
    int32_t blocks[MAXTOK / 16 + 1];
    uint32_t nb = 0, pos = 0;
    struct eng_sample_out out;

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
        assert_int_equal(eng_step(c, &b, &out, NULL), 0);
        r->ref[g] = out.token;
        pos += n_new;
    }
    for (uint32_t i = 0; i < nb; i++)
        eng_kv_block_release(kv, blocks[i]);
}

static void test_plans_drive_engine(void **state)
{
    char err[256] = "", *path = model_path();
    struct eng_model *m;
    struct eng_kv kv, kv_ref;
    eng_ctx_t *c, *c_ref;
    struct bat_sched_cfg cfg = { 0 };
    struct bat_sched s;
    static struct req rq[NREQ];
    uint64_t rng = 77, now = 1000000000ull;

    (void)state;
    cfg.n_blocks = 14;          /* 224 positions for 12 requests of up to ~150 */
    cfg.max_ctx = MAXTOK;
    cfg.max_batch_tokens = 48;
    cfg.max_seqs = 8;
    cfg.kv_watermark = 0;
    assert_int_equal(bat_sched_cfg_defaults(&cfg), 0);

    assert_int_equal(eng_model_load(&m, path, 0, err, sizeof(err)), 0);
    assert_int_equal(eng_kv_init(&kv, &m->hp, cfg.n_blocks), 0);
    assert_int_equal(eng_kv_init(&kv_ref, &m->hp, MAXTOK / 16 + 1), 0);
    struct eng_ctx_opts o = { .n_threads = 2, .max_tokens = cfg.max_batch_tokens,
                              .max_seqs = cfg.max_seqs, .n_ctx = MAXTOK };
    struct eng_ctx_opts o1 = { .n_threads = 1, .max_tokens = MAXTOK, .max_seqs = 1,
                               .n_ctx = MAXTOK };
    assert_int_equal(eng_ctx_init(&c, m, &kv, &o), 0);
    assert_int_equal(eng_ctx_init(&c_ref, m, &kv_ref, &o1), 0);

    size_t sz = bat_sched_size(&cfg), psz = bat_sched_plan_size(&cfg);
    void *mem = aligned_alloc(64, (sz + 63) & ~(size_t)63);
    struct bat_plan *p = aligned_alloc(64, (psz + 63) & ~(size_t)63);
    assert_int_equal(bat_sched_init(&s, mem, sz, &cfg, 1), 0);
    assert_int_equal(bat_plan_init(p, psz, cfg.max_seqs, bat_kv_blocks_for(cfg.max_ctx),
                                   cfg.n_blocks), 0);
    uint32_t ev_cap = bat_sched_ev_cap(&s);
    struct bat_event *ev = calloc(ev_cap, sizeof(*ev));
    struct eng_seq es[8];
    struct eng_sample_out out[8];
    struct bat_result res[8];

    for (int i = 0; i < NREQ; i++) {
        struct req *r = &rq[i];
        uint64_t id;
        r->n_prompt = 8 + (uint32_t)(t_rand(&rng) % 70);
        r->max_tokens = 10 + (uint32_t)(t_rand(&rng) % 60);
        for (uint32_t k = 0; k < r->n_prompt; k++)
            r->all[k] = (int32_t)(t_rand(&rng) % m->hp.n_vocab);
        /* Half greedy, half sampled with a seed (counter-based: a
         * recompute draws the same numbers). */
        if (i % 2) {
            r->sp.temperature = 0.9f;
            r->sp.top_p = 0.95f;
            r->sp.seed = 1000 + (uint64_t)i;
        }
        reference(c_ref, &kv_ref, r);
        struct bat_req br = { .tenant = (uint32_t)i % 3, .prio = (uint32_t)i % 2, .cell = (uint32_t)i,
                              .n_prompt = r->n_prompt, .max_tokens = r->max_tokens,
                              .sp = r->sp };
        assert_int_equal(bat_sched_submit(&s, &br, now, &id, NULL), 0);
    }
    int done = 0, steps = 0;
    while (done < NREQ) {
        int n = bat_sched_step(&s, now, p, ev, ev_cap);
        assert_int_equal(n, 0);
        /* The engine's side of the contract: zero freed blocks first. */
        for (uint32_t k = 0; k < p->n_freed; k++)
            memset((char *)kv.mem + (size_t)bat_plan_freed(p)[k] * kv.block_bytes, 0,
                   kv.block_bytes);
        struct eng_batch b = { p->n_seqs, es };
        for (uint32_t i = 0; i < p->n_seqs; i++) {
            struct bat_plan_seq *ps = &bat_plan_seqs(p)[i];
            struct req *r = &rq[ps->cell];
            memset(&es[i], 0, sizeof(es[i]));
            es[i].slot = ps->slot;
            es[i].pos = ps->pos;
            es[i].n_new = ps->n_new;
            es[i].tokens = r->all + ps->pos;
            es[i].block_table = bat_plan_tables(p) + ps->table_off;
            es[i].n_blocks = ps->n_blocks;
            es[i].history = r->all + r->n_prompt;
            es[i].n_history = ps->n_history;
            es[i].no_sample = ps->no_sample;
            es[i].sp = ps->sp;
        }
        assert_int_equal(eng_step_check(c, &b, err, sizeof(err)), 0);
        assert_int_equal(eng_step(c, &b, out, NULL), 0);
        for (uint32_t i = 0; i < p->n_seqs; i++)
            res[i] = (struct bat_result){ .token = out[i].token };
        now += 1000000;
        n = bat_sched_complete(&s, p, res, now, ev, ev_cap);
        assert_true(n >= 0);
        for (int k = 0; k < n; k++) {
            struct req *r = &rq[ev[k].cell];
            if (ev[k].kind == BAT_EV_TOKEN) {
                assert_true(r->n_gen < r->max_tokens);
                r->all[r->n_prompt + r->n_gen++] = ev[k].token;
            } else {
                assert_int_equal(ev[k].reason, BAT_FIN_LENGTH);
                r->fin = 1;
                done++;
            }
        }
        assert_true(++steps < 5000);
    }
    struct bat_sched_info in;
    bat_sched_info(&s, &in);
    printf("# %d steps, %llu preemptions\n", steps, (unsigned long long)in.n_preempt);
    assert_true(in.n_preempt > 0); /* the pool forced recomputes */
    for (int i = 0; i < NREQ; i++) {
        assert_int_equal(rq[i].n_gen, rq[i].max_tokens);
        assert_memory_equal(rq[i].all + rq[i].n_prompt, rq[i].ref,
                            rq[i].max_tokens * sizeof(int32_t));
    }
    free(ev);
    free(p);
    free(mem);
    eng_ctx_free(c);
    eng_ctx_free(c_ref);
    eng_kv_destroy(&kv);
    eng_kv_destroy(&kv_ref);
    eng_model_free(m);
    unlink(path);
    free(path);
    rmdir(dir);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plans_drive_engine),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
