/*
 * eng_stage.c - the engine stage process (see eng_stage.h for the design:
 * plan validation, freed-block zeroing, KV presence, null backend, drain).
 */
#include "eng_stage.h"

#include "eng_kv.h"
#include "eng_model.h"
#include "eng_sample.h"
#include "eng_step.h"
#include "eng_tok.h"
#include "favo_base.h"
#include "shm_bell.h"
#include "shm_cell.h"
#include "shm_pipe.h"
#include "shm_ring.h"
#include "shm_stats.h"

/* The plan is the batcher's message format; a header, no code is called
 * (the engine library cannot link the batcher's). */
#include "../batcher/bat_plan.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define ENG_STAGE_SLEEP_NS (50ull * 1000 * 1000)
#define ENG_STAGE_SPIN_NS (50ull * 1000)
#define ENG_STAGE_BEAT_NS (100ull * 1000 * 1000)

struct stage {
    const struct eng_stage_cfg *cfg;
    const struct shm_pipe *pipe;
    bool null;
    struct eng_model *m;
    eng_tok_t *tok;
    struct eng_kv kv;
    eng_ctx_t *ctx;
    uint32_t n_vocab, n_ctx, max_tokens, max_seqs, n_blocks, max_bps, res_cap;
    struct shm_cell_pool pool;
    shm_ring_t plan, done;
    shm_bell_ec_t bell, bat_bell;

    /* Per-plan buffers, sized once (invariant 8). */
    struct bat_plan_seq *seqs;   /* max_seqs: the plan's sequences, copied */
    int32_t *tables;             /* max_seqs * max_bps */
    int32_t *freed;              /* n_blocks */
    struct eng_seq *es;          /* max_seqs: the batch actually run */
    uint32_t *es_of;             /* plan index of es[i] */
    struct eng_sample_out *out;  /* max_seqs */
    int32_t *answer;             /* max_seqs: token per plan seq (-1: not computed) */
    uint32_t *ans_out;           /* max_seqs: its out[] entry (logprobs), UINT32_MAX: none */
    uint8_t *filled;             /* n_blocks: positions computed since the last zeroing */
    uint64_t *stamp;             /* n_blocks: plan that last named the block (plan inv 2) */
    uint64_t plans;
    int32_t *ordinary;           /* null backend: the ordinary ids, in id order */
    uint32_t n_ordinary;
    uint64_t gen;
    bool have_gen;

    /* Overlap (bat_plan.h feed): this rank's answers to the last plan it
     * ran, to feed into the next plan's decodes. */
    uint64_t prev_step;          /* 0: none (a fresh process feeds nothing) */
    uint32_t prev_n;
    uint64_t *prev_id;           /* max_seqs: plan seq ids */
    int32_t *prev_tok;           /* max_seqs: answers (-1: none) */
    int32_t *feed;               /* max_seqs: fed input token per plan seq */
    uint64_t n_fed, n_unfed;
    /* Idle gap: from answering plan N to starting plan N + 1 (log2 us buckets). */
    uint64_t t_answered, last_step, gap_n, gap_ns, gap_hist[32];

    /* Metadata counters, logged at exit (no stats table entry yet). */
    uint64_t n_steps, n_tokens, n_refused, n_missing, step_ns, max_ns;
    uint64_t st_steps, st_tokens, st_refused, st_missing; /* published to the stats */
    uint64_t last_beat;
};

/* ------------------------------------------------------------ null backend */

static bool ordinary_id(const eng_tok_t *t, int32_t id)
{
    uint32_t a = eng_tok_attr(t, id);

    return (a & ENG_TOK_ATTR_NORMAL) &&
           !(a & (ENG_TOK_ATTR_CONTROL | ENG_TOK_ATTR_UNKNOWN | ENG_TOK_ATTR_UNUSED)) &&
           !eng_tok_is_eog(t, id);
}

static uint32_t null_pick(uint64_t seed, uint64_t pos, uint32_t n)
{
    uint32_t k = (uint32_t)(eng_sample_uniform(seed, pos) * (double)n);

    return k < n ? k : n - 1;
}

int32_t eng_stage_null_token(const struct eng_tok *t, uint64_t seed, uint64_t pos)
{
    uint32_t nv = eng_tok_n_vocab(t), n = 0, k;

    for (uint32_t id = 0; id < nv; id++)
        n += ordinary_id(t, (int32_t)id);
    if (!n)
        return -1;
    k = null_pick(seed, pos, n);
    for (uint32_t id = 0; id < nv; id++)
        if (ordinary_id(t, (int32_t)id) && k-- == 0)
            return (int32_t)id;
    return -1;
}

/* ------------------------------------------------------------ model info */

int eng_stage_model_info(const char *path, const char *kv_type,
                         struct eng_stage_model_info *out, char *err, size_t errlen)
{
    struct eng_model *m;
    const struct eng_hparams *hp;
    int rc;

    memset(out, 0, sizeof(*out));
    /* USE_MMAP: shapes are checked against the file's tensor table, but no
     * weight is copied (or read: the mapping faults nothing in). */
    rc = eng_model_load(&m, path, ENG_MODEL_USE_MMAP | ENG_MODEL_NO_MLOCK, err, errlen);
    if (rc)
        return rc;
    hp = &m->hp;
    snprintf(out->arch, sizeof(out->arch), "%s", m->ai->name);
    out->n_ctx_train = hp->n_ctx_train;
    out->n_vocab = hp->n_vocab;
    out->n_layer = hp->n_layer;
    /* eng_kv_init_type's block: every layer's K and V for 16 positions */
    enum eng_kv_type kt;

    if (eng_kv_type_pick(m, kv_type, &kt)) {
        snprintf(err, errlen, "--kv-cache-type must be auto, f16 or f32 (got '%s')", kv_type);
        eng_model_free(m);
        return -EINVAL;
    }
    out->kv_block_bytes = eng_kv_block_bytes_for(hp, kt);
    snprintf(out->kv_type, sizeof(out->kv_type), "%s", eng_kv_type_name(kt));
    out->weight_bytes = m->weight_bytes;
    eng_model_free(m);
    return 0;
}

/* ------------------------------------------------------------ set-up */

static void stage_free(struct stage *s)
{
    eng_ctx_free(s->ctx);
    if (s->kv.mem)
        eng_kv_destroy(&s->kv); /* explicit_bzero of the whole pool */
    eng_model_free(s->m);
    eng_tok_free(s->tok);
    free(s->seqs);
    free(s->tables);
    free(s->freed);
    free(s->es);
    free(s->es_of);
    free(s->out);
    free(s->answer);
    free(s->ans_out);
    free(s->filled);
    free(s->stamp);
    free(s->ordinary);
    if (s->prev_tok)
        explicit_bzero(s->prev_tok, s->max_seqs * sizeof(*s->prev_tok));
    if (s->feed)
        explicit_bzero(s->feed, s->max_seqs * sizeof(*s->feed));
    free(s->prev_id);
    free(s->prev_tok);
    free(s->feed);
}

static int stage_load(struct stage *s)
{
    const struct eng_stage_cfg *cfg = s->cfg;
    char err[512] = "";
    int rc;

    if (s->null) {
        /* Tokenizer only: no weight is read. */
        rc = eng_tok_load_file(&s->tok, cfg->model_path, err, sizeof(err));
        if (rc) {
            favo_err("engine stage: tokenizer: %s (%d)", err, rc);
            return rc;
        }
        s->n_vocab = eng_tok_n_vocab(s->tok);
        s->n_ctx = cfg->n_ctx ? cfg->n_ctx : 8192;
        s->ordinary = malloc(sizeof(*s->ordinary) * (s->n_vocab ? s->n_vocab : 1));
        if (!s->ordinary)
            return -ENOMEM;
        for (uint32_t id = 0; id < s->n_vocab; id++)
            if (ordinary_id(s->tok, (int32_t)id))
                s->ordinary[s->n_ordinary++] = (int32_t)id;
        if (!s->n_ordinary) {
            favo_err("engine stage: null backend: the vocabulary has no ordinary token");
            return -EINVAL;
        }
        return 0;
    }
    rc = eng_model_load(&s->m, cfg->model_path, 0, err, sizeof(err));
    if (rc) {
        favo_err("engine stage: model: %s (%d)", err, rc);
        return rc;
    }
    rc = eng_tok_load(&s->tok, eng_model_gguf(s->m), err, sizeof(err));
    if (rc) {
        favo_err("engine stage: tokenizer: %s (%d)", err, rc);
        return rc;
    }
    s->n_vocab = s->m->hp.n_vocab;
    /* One block more than the batcher's pool: the warm-up's scratch block,
     * an id no valid plan names. */
    enum eng_kv_type kt;

    rc = eng_kv_type_pick(s->m, cfg->kv_type, &kt);
    if (!rc)
        rc = eng_kv_init_type(&s->kv, &s->m->hp, s->n_blocks + 1, kt);
    if (rc) {
        favo_err("engine stage: KV pool of %u blocks: %d", s->n_blocks + 1, rc);
        return rc;
    }
    struct eng_ctx_opts o = { .n_threads = cfg->n_threads, .max_tokens = s->max_tokens,
                              .max_seqs = s->max_seqs, .n_ctx = cfg->n_ctx };
    rc = eng_ctx_init(&s->ctx, s->m, &s->kv, &o);
    if (rc) {
        favo_err("engine stage: context (max_tokens %u, max_seqs %u, n_ctx %u): %d",
                 s->max_tokens, s->max_seqs, cfg->n_ctx, rc);
        return rc;
    }
    s->n_ctx = eng_ctx_n_ctx(s->ctx);
    return 0;
}

static int stage_buffers(struct stage *s)
{
    s->max_bps = eng_kv_blocks_for(s->n_ctx);
    s->seqs = calloc(s->max_seqs, sizeof(*s->seqs));
    s->tables = calloc((size_t)s->max_seqs * s->max_bps, sizeof(*s->tables));
    s->freed = calloc(s->n_blocks, sizeof(*s->freed));
    s->es = calloc(s->max_seqs, sizeof(*s->es));
    s->es_of = calloc(s->max_seqs, sizeof(*s->es_of));
    s->out = calloc(s->max_seqs, sizeof(*s->out));
    s->answer = calloc(s->max_seqs, sizeof(*s->answer));
    s->ans_out = calloc(s->max_seqs, sizeof(*s->ans_out));
    if (!s->ans_out)
        return -ENOMEM;
    s->filled = calloc(s->n_blocks, 1);
    s->stamp = calloc(s->n_blocks, sizeof(*s->stamp));
    s->prev_id = calloc(s->max_seqs, sizeof(*s->prev_id));
    s->prev_tok = calloc(s->max_seqs, sizeof(*s->prev_tok));
    s->feed = calloc(s->max_seqs, sizeof(*s->feed));
    if (!s->prev_id || !s->prev_tok || !s->feed)
        return -ENOMEM;
    if (!s->seqs || !s->tables || !s->freed || !s->es || !s->es_of || !s->out || !s->answer ||
        !s->filled || !s->stamp)
        return -ENOMEM;
    return 0;
}

static int stage_attach(struct stage *s)
{
    const struct shm_pipe *p = s->pipe;
    size_t cl;
    void *cm = shm_pipe_cells(p, &cl);
    int rc;

    if ((rc = shm_cell_pool_attach(&s->pool, cm, cl, p->hdr->generation, SHM_CELL_ROLE_USER,
                                   -1))) {
        favo_err("engine stage: cell pool attach: %d", rc);
        return rc;
    }
    if ((rc = shm_pipe_ring_plan(p, s->cfg->rank, SHM_RING_CONSUMER, &s->plan)) ||
        (s->cfg->rank == 0 && (rc = shm_pipe_ring_done(p, SHM_RING_PRODUCER, &s->done)))) {
        favo_err("engine stage: rank %u rings: %d", s->cfg->rank, rc);
        return rc;
    }
    if ((rc = shm_pipe_bell_eng(p, s->cfg->rank, &s->bell)) ||
        (rc = shm_pipe_bell_bat(p, &s->bat_bell))) {
        favo_err("engine stage: rank %u bells: %d", s->cfg->rank, rc);
        return rc;
    }
    return 0;
}

/* A short sequence on the scratch block (id n_blocks): a prefill chunk and
 * a decode, so the first request pays no first-use cost (page faults in
 * the step buffers and the KV pool's first block, thread start-up). */
static int stage_warmup(struct stage *s)
{
    int32_t toks[9], block = (int32_t)s->n_blocks;
    uint32_t n = FAVO_MIN(8u, s->max_tokens);
    struct eng_seq q = { 0 };
    struct eng_batch b = { 1, &q };
    int rc;

    if (s->null)
        return 0;
    if (n + 1 > s->n_ctx)
        n = s->n_ctx > 1 ? s->n_ctx - 1 : 0;
    if (!n)
        return 0;
    for (uint32_t i = 0; i < 9; i++)
        toks[i] = (int32_t)((i + 1) % s->n_vocab);
    q.n_new = n;
    q.tokens = toks;
    q.block_table = &block;
    q.n_blocks = 1;
    if ((rc = eng_step(s->ctx, &b, s->out, NULL)))
        goto out;
    q.pos = n;
    q.n_new = 1;
    q.tokens = &toks[n];
    rc = eng_step(s->ctx, &b, s->out, NULL);
out:
    eng_kv_block_zero(&s->kv, block); /* K1: nothing of it outlives the warm-up */
    if (rc)
        favo_err("engine stage: warm-up step failed: %d", rc);
    return rc;
}

/* ------------------------------------------------------------ one plan */

static void zero_block(struct stage *s, int32_t b)
{
    if (!s->null)
        eng_kv_block_zero(&s->kv, b);
    s->filled[b] = 0;
}

static void zero_all(struct stage *s)
{
    for (uint32_t b = 0; b < s->n_blocks; b++)
        zero_block(s, (int32_t)b);
}

/* plan_load's verdict for a message replayed after a crash (the engine died
 * after its done message, before releasing the plan message): the batcher
 * completed that step and has reused the slot since. */
static const char STALE[] = "stale";

static bool range_ok(uint64_t off, uint64_t count, uint64_t size, uint64_t len)
{
    return off <= len && count <= (len - off) / size;
}

/* Validate the plan in slot `slot` and copy it into s->seqs/tables/freed.
 * Returns NULL when valid, else the name of the failed check; *n_freed and
 * *n_seqs are set as far as they could be trusted. */
static const char *plan_load(struct stage *s, const struct shm_plan_msg *msg,
                             struct bat_plan *h, uint32_t *n_freed, uint32_t *n_seqs)
{
    const struct shm_pipe *p = s->pipe;
    const char *base;
    uint64_t plan_bytes = p->hdr->cfg.plan_bytes, sum = 0;

    *n_freed = 0;
    *n_seqs = FAVO_MIN(msg->n_seqs, s->res_cap);
    if (msg->slot >= SHM_PIPE_PLAN_SLOTS)
        return "slot";
    base = shm_pipe_plan(p, s->cfg->rank, msg->slot);
    if (plan_bytes < sizeof(*h))
        return "plan_bytes";
    memcpy(h, base, sizeof(*h));
    if (h->magic != BAT_PLAN_MAGIC)
        return "magic";
    /* The batcher's complete() reads the plan's n_seqs results. */
    *n_seqs = FAVO_MIN(FAVO_MAX(msg->n_seqs, h->n_seqs), s->res_cap);
    /* Before freed[]: a stale message must not act on the newer plan. */
    if (h->step > msg->step)
        return STALE; /* the slot holds a newer plan: msg is a replay */
    if (h->step != msg->step)
        return "step";
    /* freed[] next: its blocks are zeroed even when the rest is refused. */
    if (h->n_freed <= h->cap_freed && h->n_freed <= s->n_blocks &&
        range_ok(h->off_freed, h->cap_freed, sizeof(int32_t), plan_bytes)) {
        memcpy(s->freed, base + h->off_freed, (size_t)h->n_freed * sizeof(int32_t));
        for (uint32_t k = 0; k < h->n_freed; k++)
            if (s->freed[k] >= 0 && (uint32_t)s->freed[k] < s->n_blocks)
                s->freed[(*n_freed)++] = s->freed[k];
        if (*n_freed != h->n_freed)
            return "freed block id";
    } else {
        return "freed bounds";
    }
    if (h->n_seqs != msg->n_seqs)
        return "n_seqs differs from the message";
    if (h->n_seqs > h->cap_seqs || h->n_seqs > s->max_seqs || h->n_seqs > s->res_cap)
        return "n_seqs over a cap";
    if (!range_ok(h->off_seqs, h->cap_seqs, sizeof(struct bat_plan_seq), plan_bytes))
        return "seqs bounds";
    if (h->n_tables > h->cap_tables || h->n_tables > s->max_seqs * s->max_bps ||
        !range_ok(h->off_tables, h->cap_tables, sizeof(int32_t), plan_bytes))
        return "tables bounds";
    if (h->n_tokens > s->max_tokens)
        return "n_tokens over max_tokens";
    memcpy(s->seqs, base + h->off_seqs, (size_t)h->n_seqs * sizeof(struct bat_plan_seq));
    memcpy(s->tables, base + h->off_tables, (size_t)h->n_tables * sizeof(int32_t));
    s->plans++;
    for (uint32_t i = 0; i < h->n_seqs; i++) {
        const struct bat_plan_seq *q = &s->seqs[i];
        uint64_t end = (uint64_t)q->pos + q->n_new, known;
        void *cell;
        size_t csize;

        sum += q->n_new;
        if (!q->n_new || end > s->n_ctx)
            return "seq positions";
        if (q->n_blocks != eng_kv_blocks_for((uint32_t)end) ||
            (uint64_t)q->table_off + q->n_blocks > h->n_tables)
            return "seq block table";
        for (uint32_t j = 0; j < q->n_blocks; j++) {
            int32_t b = s->tables[q->table_off + j];
            if (b < 0 || (uint32_t)b >= s->n_blocks)
                return "block id out of range";
            if (s->stamp[b] == s->plans)
                return "block id used twice";
            s->stamp[b] = s->plans;
        }
        if (!isfinite(q->sp.temperature) || !isfinite(q->sp.top_p) || !isfinite(q->sp.min_p) ||
            !isfinite(q->sp.freq_penalty) || !isfinite(q->sp.presence_penalty) ||
            q->sp.n_logprobs > ENG_SAMPLE_MAX_LOGPROBS)
            return "sampling parameters";
        if (shm_cell_bytes(&s->pool, q->cell, &cell, &csize))
            return "cell not live";
        known = FAVO_MAX(end, (uint64_t)q->n_prompt + q->n_history);
        if (q->tok_off % 4 || q->tok_off > csize || known > (csize - q->tok_off) / 4)
            return "ids outside the cell";
        if (q->feed && (q->n_new != 1 || q->no_sample || !q->n_history ||
                        end != (uint64_t)q->n_prompt + q->n_history || q->feed_src >= s->max_seqs))
            return "feed entry";
    }
    if (sum != h->n_tokens)
        return "n_tokens differs from the sum";
    return NULL;
}

/* Positions [0, pos) of plan seq q computed by this process? */
static bool kv_present(const struct stage *s, const struct bat_plan_seq *q)
{
    for (uint32_t j = 0; j < eng_kv_blocks_for(q->pos); j++) {
        uint32_t need = FAVO_MIN((uint32_t)ENG_KV_BLOCK, q->pos - j * ENG_KV_BLOCK);
        if (s->filled[s->tables[q->table_off + j]] < need)
            return false;
    }
    return true;
}

static void kv_mark(struct stage *s, const struct bat_plan_seq *q)
{
    uint32_t end = q->pos + q->n_new;

    for (uint32_t j = q->pos / ENG_KV_BLOCK; j < eng_kv_blocks_for(end); j++) {
        uint32_t upto = FAVO_MIN((uint32_t)ENG_KV_BLOCK, end - j * ENG_KV_BLOCK);
        uint8_t *f = &s->filled[s->tables[q->table_off + j]];
        if (*f < upto)
            *f = (uint8_t)upto;
    }
}

/* Answer every seq with -1 (a refused plan). */
static void answer_none(struct stage *s, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        s->answer[i] = -1, s->ans_out[i] = UINT32_MAX;
}

/* Run the validated plan: fills s->answer[0 .. n_seqs). */
static int plan_run(struct stage *s, const struct bat_plan *h)
{
    uint32_t n = 0;
    char err[160];
    int rc;

    for (uint32_t i = 0; i < h->n_seqs; i++) {
        const struct bat_plan_seq *q = &s->seqs[i];
        void *cell;
        size_t csize;
        const int32_t *ids;

        s->answer[i] = -1;
        s->ans_out[i] = UINT32_MAX;
        if (q->feed) {
            /* Its input is our own answer to it in the plan just before
             * (every rank runs every plan alike, so each feeds its own). */
            if (s->prev_step + 1 != h->step || q->feed_src >= s->prev_n ||
                s->prev_id[q->feed_src] != q->id || s->prev_tok[q->feed_src] < 0) {
                s->n_unfed++;
                continue; /* -1: the batcher recomputes it */
            }
            s->feed[i] = s->prev_tok[q->feed_src];
            s->n_fed++;
        }
        if (s->null) {
            /* the index now, the id in the loop below: those loads (one
             * cache miss each in a table of the whole vocabulary) then
             * overlap - they were half of the null engine's CPU */
            if (!q->no_sample)
                s->answer[i] = (int32_t)null_pick(q->sp.seed, (uint64_t)q->pos + q->n_new,
                                                  s->n_ordinary);
            continue;
        }
        if (!kv_present(s, q)) {
            s->n_missing++;
            continue; /* -1: the batcher recomputes it (eng_stage.h) */
        }
        (void)shm_cell_bytes(&s->pool, q->cell, &cell, &csize); /* checked in plan_load */
        ids = (const int32_t *)((const char *)cell + q->tok_off);
        struct eng_seq *e = &s->es[n];
        memset(e, 0, sizeof(*e));
        e->slot = q->slot;
        e->pos = q->pos;
        e->n_new = q->n_new;
        e->tokens = ids + q->pos;
        e->block_table = s->tables + q->table_off;
        e->n_blocks = q->n_blocks;
        e->history = ids + q->n_prompt;
        e->n_history = q->n_history;
        if (q->feed) {
            /* The fed id is not in the cell yet (the batcher writes it when
             * it completes the previous plan): the input from feed[], and
             * the history, for the penalties, is the cell's ids then it. */
            e->tokens = &s->feed[i];
            e->n_history = q->n_history - 1;
            e->history_then_input = 1;
        }
        e->no_sample = q->no_sample;
        e->sp = q->sp;
        s->es_of[n++] = i;
    }
    if (s->null) {
        for (uint32_t i = 0; i < h->n_seqs; i++)
            if (s->answer[i] >= 0)
                s->answer[i] = s->ordinary[s->answer[i]];
        return 0;
    }
    if (!n)
        return 0;
    struct eng_batch b = { n, s->es };
    if ((rc = eng_step_check(s->ctx, &b, err, sizeof(err)))) {
        favo_err("engine stage: rank %u step %llu refused: %s", s->cfg->rank,
                 (unsigned long long)h->step, err);
        return rc;
    }
    rc = eng_step(s->ctx, &b, s->out, NULL);
    if (rc)
        return rc;
    for (uint32_t k = 0; k < n; k++) {
        uint32_t i = s->es_of[k];
        kv_mark(s, &s->seqs[i]);
        if (!s->seqs[i].no_sample)
            s->answer[i] = s->out[k].token, s->ans_out[i] = k;
    }
    return 0;
}

static bool draining(const struct stage *s)
{
    return (s->cfg->stop && *s->cfg->stop) ||
           ck_pr_load_uint((const unsigned *)&s->pipe->hdr->draining);
}

static void plan_answer(struct stage *s, const struct shm_plan_msg *msg, uint32_t n)
{
    struct bat_result *res;

    if (s->cfg->rank != 0)
        return;
    res = shm_pipe_results(s->pipe, msg->slot % SHM_PIPE_PLAN_SLOTS);
    for (uint32_t i = 0; i < n; i++) {
        int32_t t = s->answer[i];
        res[i] = (struct bat_result){ .token = t,
                                      .eos = t >= 0 && eng_tok_is_eog(s->tok, t) ? 1 : 0 };
        /* logprobs: copied from the sampler's output when the entry asked
         * (bat_plan.h); the batcher puts them into the cell */
        const struct eng_sample_out *o = s->ans_out[i] < s->max_seqs && t >= 0 &&
                                         s->seqs[i].sp.n_logprobs ? &s->out[s->ans_out[i]] : NULL;
        if (o && o->token == t) {
            res[i].has_lp = 1;
            res[i].logprob = o->logprob;
            res[i].n_top = (uint8_t)FAVO_MIN(o->n_top, (uint32_t)ENG_SAMPLE_MAX_LOGPROBS);
            for (uint32_t j = 0; j < res[i].n_top; j++)
                res[i].top[j] = (struct bat_lp){ o->top_tokens[j], o->top_logprobs[j] };
        }
    }
    /* The done ring has room for every plan the batcher can have in
     * flight; a full ring means the batcher is down or behind: wait. */
    while (shm_ring_enqueue(&s->done, msg) == -EAGAIN) {
        if (draining(s) && !shm_pipe_stage_up(s->pipe, SHM_PIPE_BATCHER, 0))
            return; /* nobody will ever read it */
        shm_bell_ec_ring(&s->bat_bell);
        usleep(100);
    }
    shm_bell_ec_ring(&s->bat_bell);
}

static void plan_handle(struct stage *s, const struct shm_plan_msg *msg)
{
    struct bat_plan h;
    uint32_t n_freed, n_seqs;
    uint64_t t0 = favo_now_ns();
    const char *bad = plan_load(s, msg, &h, &n_freed, &n_seqs);

    if (s->last_step && msg->step == s->last_step + 1 && t0 >= s->t_answered) {
        /* idle gap between consecutive plans, as this engine sees it */
        uint64_t g = t0 - s->t_answered, us = g / 1000;
        unsigned bkt = 0;
        while (us && bkt < 31) {
            us >>= 1;
            bkt++;
        }
        s->gap_hist[bkt]++;
        s->gap_n++;
        s->gap_ns += g;
    }

    /* Zero freed blocks BEFORE running anything (K1; bat_plan.h). */
    for (uint32_t k = 0; k < n_freed; k++)
        zero_block(s, s->freed[k]);
    if (!bad && (!s->have_gen || h.generation != s->gen)) {
        if (s->have_gen) {
            favo_warn("engine stage: rank %u: plans of a new scheduler arena (generation "
                      "%llu, was %llu): KV pool zeroed", s->cfg->rank,
                      (unsigned long long)h.generation, (unsigned long long)s->gen);
            zero_all(s);
        }
        s->prev_step = 0; /* nothing of another arena is fed */
        s->gen = h.generation;
        s->have_gen = true;
        /* freed[] holds up to the scheduler's pool size (bat_plan_init):
         * a pool larger than ours means plans this stage must refuse. */
        if (h.cap_freed != s->n_blocks)
            favo_err("engine stage: rank %u: the scheduler's KV pool has %u blocks, this "
                     "engine %u (cfg n_blocks differs)", s->cfg->rank, h.cap_freed, s->n_blocks);
    }
    if (bad == STALE) {
        /* No results (the slot's results belong to the newer plan), no
         * done: the batcher is past this step. */
        favo_info("engine stage: rank %u: replayed plan message (step %llu) is stale; "
                  "dropped", s->cfg->rank, (unsigned long long)msg->step);
        return;
    }
    if (bad) {
        s->n_refused++;
        favo_err("engine stage: rank %u: invalid plan (slot %u, step %llu, %u seqs): %s; "
                 "answering -1", s->cfg->rank, msg->slot, (unsigned long long)msg->step,
                 msg->n_seqs, bad);
        answer_none(s, n_seqs);
    } else if (plan_run(s, &h)) {
        s->n_refused++;
        answer_none(s, h.n_seqs);
        n_seqs = h.n_seqs;
    } else {
        n_seqs = h.n_seqs;
        s->n_steps++;
        s->n_tokens += h.n_tokens;
    }
    /* What the next plan's feed entries take (none from a refused plan). */
    s->prev_step = msg->step;
    s->prev_n = bad ? 0 : FAVO_MIN(h.n_seqs, s->max_seqs);
    for (uint32_t i = 0; i < s->prev_n; i++) {
        s->prev_id[i] = s->seqs[i].id;
        s->prev_tok[i] = s->answer[i];
    }
    plan_answer(s, msg, n_seqs);
    s->last_step = msg->step;
    s->t_answered = favo_now_ns();
    t0 = s->t_answered - t0;
    s->step_ns += t0;
    s->max_ns = FAVO_MAX(s->max_ns, t0);
    if (s->cfg->stats_w) {
        struct shm_stats_writer *w = s->cfg->stats_w;
        shm_stats_begin(w);
        shm_stats_add(w, SHM_C_ENGINE_STEPS, s->n_steps - s->st_steps);
        shm_stats_add(w, SHM_C_ENGINE_TOKENS, s->n_tokens - s->st_tokens);
        shm_stats_add(w, SHM_C_ENGINE_PLANS_REFUSED, s->n_refused - s->st_refused);
        shm_stats_add(w, SHM_C_ENGINE_KV_MISSING, s->n_missing - s->st_missing);
        shm_stats_observe(w, SHM_H_ENGINE_STEP, t0);
        shm_stats_end(w);
        s->st_steps = s->n_steps;
        s->st_tokens = s->n_tokens;
        s->st_refused = s->n_refused;
        s->st_missing = s->n_missing;
    }
}

/* ------------------------------------------------------------ the loop */

static void beat(struct stage *s, uint64_t now)
{
    if (s->cfg->stats)
        (void)shm_stats_heartbeat(s->cfg->stats, s->cfg->stats_row);
    if (s->cfg->stats_w)
        shm_stats_flush(s->cfg->stats_w);
    s->last_beat = now;
}

static int stage_loop(struct stage *s)
{
    uint64_t idle_since = 0;

    for (;;) {
        uint32_t seen = shm_bell_ec_value(&s->bell);
        const struct shm_plan_msg *m = shm_ring_peek_one(&s->plan);
        uint64_t now;

        if (m) {
            struct shm_plan_msg msg = *m;
            plan_handle(s, &msg);
            shm_ring_release(&s->plan, 1); /* consume, then release */
            idle_since = 0;
            now = s->t_answered; /* read at the plan's end: a clock read less per plan */
            if (now - s->last_beat >= ENG_STAGE_BEAT_NS)
                beat(s, now);
            continue;
        }
        if (draining(s) && !shm_pipe_stage_up(s->pipe, SHM_PIPE_BATCHER, 0) &&
            shm_ring_available(&s->plan) == 0)
            return 0;
        now = favo_now_ns();
        if (s->cfg->poll == 2 ||
            (s->cfg->poll == 1 && (!idle_since || now - idle_since < ENG_STAGE_SPIN_NS))) {
            if (!idle_since)
                idle_since = now;
            if (now - s->last_beat >= ENG_STAGE_BEAT_NS)
                beat(s, now);
            favo_cpu_relax();
            continue;
        }
        beat(s, now);
        if (s->prev_n && now - s->t_answered > 1000000000ull) {
            /* Idle for a second: no plan made while the last one ran can
             * still come; its sampled ids need not stay (invariant 5). */
            explicit_bzero(s->prev_tok, s->max_seqs * sizeof(*s->prev_tok));
            explicit_bzero(s->feed, s->max_seqs * sizeof(*s->feed));
            s->prev_n = 0;
        }
        (void)shm_bell_ec_wait(&s->bell, seen, (int64_t)ENG_STAGE_SLEEP_NS);
        idle_since = 0;
    }
}

int eng_stage_run(const struct eng_stage_cfg *cfg)
{
    struct stage s;
    int rc;

    memset(&s, 0, sizeof(s));
    if (!cfg || !cfg->pipe || !cfg->pipe->hdr || !cfg->model_path || !cfg->n_blocks ||
        cfg->rank >= cfg->pipe->hdr->cfg.n_ranks || cfg->rank >= SHM_PIPE_MAX_RANKS) {
        favo_err("engine stage: bad configuration (pipe, model path, n_blocks, rank)");
        return -EINVAL;
    }
    if (cfg->pipe->hdr->cfg.result_size != sizeof(struct bat_result)) {
        favo_err("engine stage: pipe result_size %u, this build's bat_result is %zu",
                 cfg->pipe->hdr->cfg.result_size, sizeof(struct bat_result));
        return -EINVAL;
    }
    s.cfg = cfg;
    s.pipe = cfg->pipe;
    if (!cfg->backend || !strcmp(cfg->backend, "cpu"))
        s.null = false;
    else if (!strcmp(cfg->backend, "null"))
        s.null = true;
    else {
        favo_err("engine stage: backend '%s' is not built (cpu, null)", cfg->backend);
        return -EINVAL;
    }
    s.n_blocks = cfg->n_blocks;
    s.max_tokens = cfg->max_tokens ? cfg->max_tokens : 512;
    s.max_seqs = cfg->max_seqs ? cfg->max_seqs : 64;
    s.res_cap = cfg->pipe->hdr->cfg.max_seqs;
    if ((rc = stage_load(&s)) || (rc = stage_buffers(&s)) || (rc = stage_attach(&s)) ||
        (rc = stage_warmup(&s)))
        goto out;
    favo_info("engine stage: rank %u up (%s backend, %u KV blocks of %s, %u tokens / %u seqs "
              "per step, n_ctx %u)", cfg->rank, s.null ? "null" : "cpu", s.n_blocks,
              s.null ? "-" : eng_kv_type_name(s.kv.type), s.max_tokens, s.max_seqs, s.n_ctx);
    if (cfg->on_ready)
        cfg->on_ready(cfg->on_ready_arg);
    shm_pipe_set_up(s.pipe, SHM_PIPE_ENGINE, cfg->rank, (int32_t)getpid());
    rc = stage_loop(&s);
    shm_pipe_set_up(s.pipe, SHM_PIPE_ENGINE, cfg->rank, 0);
    favo_info("engine stage: rank %u drained: %llu steps, %llu tokens, %llu plans refused, "
              "%llu sequences without KV, %.3f ms per plan, %.3f ms the longest", cfg->rank,
              (unsigned long long)s.n_steps, (unsigned long long)s.n_tokens,
              (unsigned long long)s.n_refused, (unsigned long long)s.n_missing,
              s.n_steps ? (double)s.step_ns / 1e6 / (double)s.n_steps : 0.0,
              (double)s.max_ns / 1e6);
    if (s.gap_n) {
        /* percentiles as the upper edge of a log2 microsecond bucket */
        uint64_t p50 = 0, p99 = 0, acc = 0;
        for (unsigned k = 0; k < 32; k++) {
            acc += s.gap_hist[k];
            if (!p50 && acc * 2 >= s.gap_n)
                p50 = k ? 1ull << k : 1;
            if (!p99 && acc * 100 >= s.gap_n * 99)
                p99 = k ? 1ull << k : 1;
        }
        favo_info("engine stage: rank %u idle gap between consecutive plans: %llu gaps, "
                  "mean %.1f us, p50 <= %llu us, p99 <= %llu us; %llu decodes fed, %llu not",
                  cfg->rank, (unsigned long long)s.gap_n, (double)s.gap_ns / 1e3 / (double)s.gap_n,
                  (unsigned long long)p50, (unsigned long long)p99, (unsigned long long)s.n_fed,
                  (unsigned long long)s.n_unfed);
    }
out:
    if (s.cfg->stats_w)
        shm_stats_flush(s.cfg->stats_w);
    stage_free(&s);
    return rc;
}
