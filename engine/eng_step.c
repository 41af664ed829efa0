/*
 * eng_step.c - the CPU forward pass over a mixed prefill/decode batch (see
 * eng_step.h), for llama, qwen2 and gemma3.
 *
 * One eng_pool_run per step; the phases of each layer are separated by
 * barriers. Work is split three ways, each independent of the batch
 * composition for a given token (S1):
 *   - per token  (norms, activation quantization, RoPE, KV writes, residual)
 *   - per weight row (every matmul on a row range: eng_matmul_packed on
 *     the context's packed copy of the weight where its type has a packed
 *     kernel on this CPU - one pass over the weight for all the step's
 *     tokens - else eng_matmul on the model's row-major weight)
 *   - per (token, head) (attention over the token's own sequence's blocks)
 * Two phases fuse to save barriers (7 a layer instead of 10 in decode):
 *   - decode-only steps with at least 4 tokens a thread (decode_split):
 *     RoPE, KV writes, attention and Wo's input quantization per token,
 *     one thread per token, one barrier;
 *   - the FFN (ffn_fused_mm): gate/up row ranges in whole blocks of the
 *     down input, each thread applying the activation and quantizing its
 *     own blocks (into xq2) right after its gate/up rows.
 *
 * Per layer, with x the residual stream [T][n_embd]:
 *   h = rmsnorm(x) * attn_norm
 *   q, k, v = h Wq, h Wk, h Wv (+ biases: qwen2)
 *   q, k = rmsnorm per head (gemma3); rope(q, k) at each token's position
 *   K/V cache[pos] = k, v
 *   a = softmax(q.K * scale) V      causal, sliding window on SWA layers
 *   o = a Wo; o = rmsnorm(o) * post_attn_norm (gemma3); x += o
 *   h = rmsnorm(x) * ffn_norm
 *   f = (act(h Wgate) * h Wup) Wdown; f = rmsnorm(f) * post_ffw_norm (gemma3)
 *   x += f
 * then logits = (rmsnorm(x_last) * output_norm) Woutput for each sequence
 * that samples, softcapped when the model says so, and sampling.
 */
#include "eng_step.h"

#include "eng_ops.h"
#include "eng_pool.h"
#include "eng_fp16.h"
#include "eng_quant.h"
#include "favo_base.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>

#define MM_ROW_ALIGN 16   /* matmul row ranges start on multiples of this */
#define PK_PER_LAYER 7    /* wq wk wv wo gate up down */

_Static_assert(MM_ROW_ALIGN % ENG_PACK_ROWS == 0, "row ranges on whole panels");

struct eng_ctx {
    const struct eng_model *m;
    struct eng_kv *kv;
    eng_pool_t *pool;
    const struct eng_ops *ops;
    uint32_t max_tokens, max_seqs, n_ctx, nth;
    size_t act_row_max;           /* bytes of the largest quantized activation row */
    /* per-token buffers, [max_tokens][...] */
    float *x, *h, *q, *k, *v, *att, *g, *u;
    void *xq, *xq2;
    float *rope_cs;               /* [max_tokens][2 bases][cos rope_dim/2, sin rope_dim/2] */
    int32_t *tok_seq;             /* token -> index of its sequence in the batch */
    uint32_t *tok_pos;
    /* per-sequence: last-token rows and logits, [max_seqs][...] */
    uint32_t *out_tok;            /* rows of sampling sequences' last tokens */
    int32_t *out_seq;
    float *logits;
    /* per-thread */
    float *scores;                /* [nth][n_head / n_head_kv][n_ctx] */
    float *wrow;                  /* [nth][k_max]: exact mode's dequantized weight row */
    uint32_t k_max;
    uint8_t exact;
    uint8_t attn_fast;            /* eng_attn_fast for both head sizes */
    uint8_t decode_only;          /* this step: every sequence decodes one token */
    uint8_t decode_split;         /* this step: every sequence decodes one token, and
                                     there are enough of them to split by token:
                                     RoPE, attention and Wo's input per token, one
                                     barrier (layer()) */
    uint8_t profile;              /* opts.profile */
    uint64_t *prof;               /* [nth][PROF_STRIDE]: ns per eng_prof_op, then barriers */
    uint64_t prof_steps, prof_tokens, prof_wall;
    char *sample_scratch;         /* [nth][sample_scratch_bytes], zeroed */
    size_t sample_scratch_bytes;
    float *inv_freq[2];           /* [rope_dim/2] global and SWA bases */
    /* packed weights (eng_pack, eng_quant.h), [n_layer * PK_PER_LAYER + 1]
     * (the output last); NULL where a type has no packed kernel */
    const void **pk;
    void *pkmem;
    size_t pksize;
    /* the step being run */
    const struct eng_batch *b;
    struct eng_sample_out *out;
    float *logits_out;
    uint32_t n_tok, n_out;
    struct {
        void *p;
        size_t len;
    } bufs[24];
    unsigned n_bufs;
};

#define PROF_STRIDE 16        /* two cache lines per thread */
_Static_assert(ENG_PROF_COUNT + 1 <= PROF_STRIDE, "profile slots");

struct thr {
    struct eng_ctx *c;
    unsigned ith, nth;
    uint64_t *acc;                /* this thread's profile slots, NULL: not profiling */
    uint64_t t_last;              /* when the last phase ended */
    const void *q_src;            /* which rows xq holds, and in which type */
    uint32_t q_type, q_k;
    void *xq;                     /* the activation buffer matmul uses: c->xq, or
                                     c->xq2 for a down projection fed by ffn_fused */
    uint32_t align;               /* matmul row ranges start on multiples of this */
};

static void range(uint32_t n, unsigned ith, unsigned nth, uint32_t *lo, uint32_t *hi)
{
    *lo = (uint32_t)((uint64_t)n * ith / nth);
    *hi = (uint32_t)((uint64_t)n * (ith + 1) / nth);
}

/* The profile's clock: wall time, or this thread's CPU time (a syscall
 * per reading; profiling only) with ENG_PROF_CPU. */
static uint64_t prof_now(const struct eng_ctx *c)
{
    struct timespec ts;

    if (c->profile != ENG_PROF_CPU)
        return favo_now_ns();
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* The time since the last mark was spent on op. */
static inline void mark(struct thr *t, enum eng_prof_op op)
{
    if (t->acc) {
        uint64_t now = prof_now(t->c);

        t->acc[op] += now - t->t_last;
        t->t_last = now;
    }
}

/* Callers mark their phase first: the time from the last mark on is
 * counted as waiting. */
static void barrier(struct thr *t)
{
    eng_pool_barrier(t->c->pool);
    if (t->acc) {
        mark(t, ENG_PROF_BARRIER);
        t->acc[ENG_PROF_COUNT]++;
    }
}

/*
 * y[j][r] = W[r] . src[j] for j < m. Quantizes src (m rows of k floats,
 * ld floats apart) to the weight's activation type first, unless xq
 * already holds exactly that. Ends with a barrier.
 */
/* The activation format and row size w's kernel wants: the packed path's
 * (wp: w's panels) or eng_quant's. */
static uint32_t act_type(const struct eng_tensor *w, const void *wp)
{
    return wp ? eng_pack_act_type(w->type) : eng_vec_dot_type(w->type);
}

static size_t act_rsize(const struct eng_tensor *w, const void *wp)
{
    return wp ? eng_pack_act_row_size(w->type, (int64_t)w->ne0)
              : eng_quant_act_row_size(w->type, (int64_t)w->ne0);
}

/* n elements (whole activation blocks) of an activation row for w */
static void act_quant_n(const struct eng_tensor *w, const void *wp, const float *row, void *dst,
                        uint32_t n)
{
    if (wp)
        (void)eng_pack_act_row(w->type, row, dst, (int64_t)n);
    else
        (void)eng_quant_row(eng_vec_dot_type(w->type), row, dst, (int64_t)n);
}

static void act_quant(const struct eng_tensor *w, const void *wp, const float *row, void *dst)
{
    act_quant_n(w, wp, row, dst, (uint32_t)w->ne0);
}

/* This thread's rows of a rows-row matmul: whole multiples of t->align
 * (the last range ends at rows). */
static void mm_range(const struct thr *t, uint32_t rows, uint32_t *lo, uint32_t *hi)
{
    uint32_t blocks = (rows + t->align - 1) / t->align;

    range(blocks, t->ith, t->nth, lo, hi);
    *lo *= t->align;
    *hi = FAVO_MIN(*hi * t->align, rows);
}

/*
 * Per-token phases quantize the rows they produce for the matmul that
 * follows (prequant), and record it (prequant_done, identically on every
 * thread) so that matmul skips its own quantization pass and barrier. The
 * rows a thread quantizes are the same token range matmul would give it.
 */
static void prequant(struct thr *t, const struct eng_tensor *w, const void *wp, const float *row,
                     uint32_t j)
{
    struct eng_ctx *c = t->c;

    if (c->exact)
        return;
    act_quant(w, wp, row, (char *)t->xq + j * act_rsize(w, wp));
}

static void prequant_done(struct thr *t, const struct eng_tensor *w, const void *wp,
                          const float *src)
{
    t->q_src = src;
    t->q_type = act_type(w, wp);
    t->q_k = (uint32_t)w->ne0;
}

/* Rows lo..hi-1 of src (ld floats apart) quantized for w into xq (prequant),
 * recorded (prequant_done), timed as ENG_PROF_QUANT; then a barrier, after
 * which every thread's matmul on w reads all of xq. */
static void prequant_rows(struct thr *t, const struct eng_tensor *w, const void *wp,
                          const float *src, uint32_t ld, uint32_t lo, uint32_t hi)
{
    for (uint32_t i = lo; i < hi; i++)
        prequant(t, w, wp, src + (size_t)i * ld, i);
    prequant_done(t, w, wp, src);
    mark(t, ENG_PROF_QUANT);
    barrier(t);
}

static void matmul(struct thr *t, enum eng_prof_op op, const struct eng_tensor *w,
                   const void *wp, const float *src, uint32_t ld, uint32_t m, float *y,
                   uint32_t ldy, int sync)
{
    struct eng_ctx *c = t->c;
    uint32_t at = act_type(w, wp);
    size_t xrb = act_rsize(w, wp);
    uint32_t lo, hi, rows = (uint32_t)w->ne1;

    if (c->exact) {
        float *wr = c->wrow + (size_t)t->ith * c->k_max;

        mm_range(t, rows, &lo, &hi);
        for (uint32_t r = lo; r < hi; r++) {
            (void)eng_dequant_row(w->type, (const char *)w->data + (size_t)r * w->row_bytes, wr,
                                  (int64_t)w->ne0);
            for (uint32_t j = 0; j < m; j++)
                y[(size_t)j * ldy + r] = c->ops->dot(wr, src + (size_t)j * ld, (uint32_t)w->ne0);
        }
        mark(t, op);
        if (sync)
            barrier(t);
        return;
    }
    if (t->q_src != src || t->q_type != at || t->q_k != w->ne0) {
        range(m, t->ith, t->nth, &lo, &hi);
        prequant_rows(t, w, wp, src, ld, lo, hi);
    }
    mm_range(t, rows, &lo, &hi);
    if (lo < hi && wp)
        eng_matmul_packed(w->type, wp, (int64_t)w->ne0, rows, lo, hi, t->xq, xrb, m, y, ldy);
    else if (lo < hi)
        eng_matmul(w->type, w->data, w->row_bytes, (int64_t)w->ne0, lo, hi, t->xq, xrb, m, y,
                   ldy);
    mark(t, op);
    if (sync)
        barrier(t);
}

/* Whether b can reuse the activations quantized for a: then a's matmul
 * needs no barrier before b's (both only read xq; they write disjoint y). */
static int same_act(const struct eng_tensor *a, const void *ap, const struct eng_tensor *b,
                    const void *bp)
{
    return act_type(a, ap) == act_type(b, bp) && a->ne0 == b->ne0;
}

static inline void prefetch(const void *p, size_t bytes)
{
    for (size_t o = 0; o < bytes; o += 64)
        __builtin_prefetch((const char *)p + o);
}

/* Element i of a KV block's keys or values at base, widened to f32. */
static inline float kv_get(const struct eng_kv *kv, const void *base, size_t i)
{
    return kv->type == ENG_KV_F16 ? eng_f16_to_f32(((const uint16_t *)base)[i])
                                  : ((const float *)base)[i];
}

/*
 * Heads h..h+nh-1 of one token, all of KV head g, with the AVX-512 loops
 * (eng_attn_*), a KV block at a time: the same scores, softmax and
 * weights as the loop in attention() below, summed in another (fixed)
 * order. The heads of a GQA group go through each KV block together, so
 * the block is read from L2 once and reused from L1 (prefill reads a
 * sequence's keys and values once per token otherwise, nh times over);
 * every head's own operations are the same whatever nh (S1).
 * q, o: head h's rows, the others follow (hd / hdv apart); scores: nh
 * rows of n_ctx floats.
 */
static void attention_fast(struct eng_ctx *c, uint32_t il, const struct eng_seq *s,
                           uint32_t g, uint32_t nh, const float *q, float *o, uint32_t p0,
                           uint32_t p, float *scores)
{
    const struct eng_hparams *hp = &c->m->hp;
    const int f16 = c->kv->type == ENG_KV_F16;
    const size_t esz = c->kv->esz;
    uint32_t hd = hp->head_dim, hdv = hp->head_dim_v, j, n;

    for (j = p0; j <= p; j += n) {
        uint32_t bi = j / ENG_KV_BLOCK;
        const void *kb = eng_kv_kp(c->kv, s->block_table[bi], il, g);

        n = FAVO_MIN(ENG_KV_BLOCK - j % ENG_KV_BLOCK, p + 1 - j);
        /* decode: the next block's keys and this block's values on
         * their way while these scores are computed (each is a 4 KiB page
         * of its own for head_dim 64, where the hardware prefetcher
         * restarts); a prefill's blocks are in cache from its earlier
         * tokens, and the prefetches would only cost */
        if (c->decode_only) {
            if ((bi + 1) * ENG_KV_BLOCK <= p)
                prefetch(eng_kv_kp(c->kv, s->block_table[bi + 1], il, g),
                         (size_t)hd * ENG_KV_BLOCK * esz);
            prefetch((const char *)eng_kv_vp(c->kv, s->block_table[bi], il, g) +
                         (size_t)(j % ENG_KV_BLOCK) * hdv * esz,
                     (size_t)n * hdv * esz);
        }
        for (uint32_t i = 0; i < nh; i++) {
            float *sc = scores + (size_t)i * c->n_ctx + (j - p0);

            if (f16)
                eng_attn_avx512_scores_f16(sc, q + (size_t)i * hd, kb, j % ENG_KV_BLOCK, n, hd,
                                           hp->attn_scale);
            else
                eng_attn_avx512_scores(sc, q + (size_t)i * hd, kb, j % ENG_KV_BLOCK, n, hd,
                                       hp->attn_scale);
        }
    }
    for (uint32_t i = 0; i < nh; i++) {
        (void)eng_vmath_avx512_softmax(scores + (size_t)i * c->n_ctx, p - p0 + 1);
        memset(o + (size_t)i * hdv, 0, hdv * sizeof(float));
    }
    for (j = p0; j <= p; j += n) {
        const char *vb = (const char *)eng_kv_vp(c->kv, s->block_table[j / ENG_KV_BLOCK], il, g) +
                         (size_t)(j % ENG_KV_BLOCK) * hdv * esz;

        n = FAVO_MIN(ENG_KV_BLOCK - j % ENG_KV_BLOCK, p + 1 - j);
        for (uint32_t i = 0; i < nh; i++) {
            const float *pr = scores + (size_t)i * c->n_ctx + (j - p0);

            if (f16)
                eng_attn_avx512_accum_f16(o + (size_t)i * hdv, pr, (const uint16_t *)vb, n, hdv);
            else
                eng_attn_avx512_accum(o + (size_t)i * hdv, pr, (const float *)vb, n, hdv);
        }
    }
}

/* Attention of the (token, head) work units lo..hi-1 (unit w: token
 * w / n_head, head w % n_head). */
static void attention_units(struct thr *t, uint32_t il, uint32_t lo, uint32_t hi)
{
    struct eng_ctx *c = t->c;
    const struct eng_hparams *hp = &c->m->hp;
    const struct eng_layer *L = &c->m->layers[il];
    const struct eng_ops *ops = c->ops;
    uint32_t hd = hp->head_dim, hdv = hp->head_dim_v, grp = hp->n_head / hp->n_head_kv;
    float *scores = c->scores + (size_t)t->ith * grp * c->n_ctx;

    for (uint32_t w = lo, nh = 1; w < hi; w += nh) {
        uint32_t ti = w / hp->n_head, h = w % hp->n_head, g = h / grp;
        const struct eng_seq *s = &c->b->seqs[c->tok_seq[ti]];
        uint32_t p = c->tok_pos[ti], p0 = 0;
        const float *q = c->q + (size_t)ti * hp->n_head * hd + (size_t)h * hd;
        float *o = c->att + (size_t)ti * hp->n_head * hdv + (size_t)h * hdv;
        float mx = -INFINITY, sum = 0;

        if (L->swa && hp->n_swa && p + 1 > hp->n_swa)
            p0 = p + 1 - hp->n_swa;
        nh = 1;
        if (c->attn_fast) {
            /* this thread's heads of the same token and KV head, together */
            nh = FAVO_MIN((g + 1) * grp - h, hi - w);
            attention_fast(c, il, s, g, nh, q, o, p0, p, scores);
            continue;
        }
        for (uint32_t j = p0; j <= p; j++) {
            float sc = 0;

            for (uint32_t d = 0; d < hd; d++)      /* keys transposed (eng_kv.h) */
                sc += q[d] * kv_get(c->kv, eng_kv_kp(c->kv, s->block_table[j / ENG_KV_BLOCK], il,
                                                     g),
                                    (size_t)d * ENG_KV_BLOCK + j % ENG_KV_BLOCK);
            sc *= hp->attn_scale;

            scores[j - p0] = sc;
            mx = sc > mx ? sc : mx;
        }
        for (uint32_t j = 0; j <= p - p0; j++) {
            scores[j] = expf(scores[j] - mx);
            sum += scores[j];
        }
        memset(o, 0, hdv * sizeof(float));
        for (uint32_t j = p0; j <= p; j++) {
            const void *vb = eng_kv_vp(c->kv, s->block_table[j / ENG_KV_BLOCK], il, g);
            size_t r = (size_t)(j % ENG_KV_BLOCK) * hdv;

            if (c->kv->type == ENG_KV_F32) {
                ops->axpy(o, scores[j - p0] / sum, (const float *)vb + r, hdv);
            } else {
                float a = scores[j - p0] / sum;

                for (uint32_t d = 0; d < hdv; d++)
                    o[d] += a * kv_get(c->kv, vb, r + d);
            }
        }
    }
}

/* Attention, the (token, head) units split evenly between the threads. */
static void attention(struct thr *t, uint32_t il)
{
    uint32_t lo, hi;

    range(t->c->n_tok * t->c->m->hp.n_head, t->ith, t->nth, &lo, &hi);
    attention_units(t, il, lo, hi);
    mark(t, ENG_PROF_ATTN);
    barrier(t);
}

/* Token i's KV slots in layer il, for writing: a key is one float in each
 * of head_dim cache lines (keys transposed, eng_kv.h), lines last written
 * a step ago and long out of this core's caches - asked for while the
 * token before is computed. */
static void kv_prefetch_w(const struct eng_ctx *c, uint32_t il, uint32_t i)
{
    const struct eng_hparams *hp = &c->m->hp;
    const struct eng_seq *s = &c->b->seqs[c->tok_seq[i]];
    uint32_t p = c->tok_pos[i], slot = p % ENG_KV_BLOCK;
    int32_t blk = s->block_table[p / ENG_KV_BLOCK];

    const size_t esz = c->kv->esz;

    for (uint32_t h = 0; h < hp->n_head_kv; h++) {
        const char *k = (const char *)eng_kv_kp(c->kv, blk, il, h) + slot * esz;
        const char *v = (const char *)eng_kv_vp(c->kv, blk, il, h) +
                        (size_t)slot * hp->head_dim_v * esz;

        for (uint32_t d = 0; d < hp->head_dim; d++)
            __builtin_prefetch(k + (size_t)d * ENG_KV_BLOCK * esz, 1);
        for (uint32_t d = 0; d < hp->head_dim_v * esz; d += 64)
            __builtin_prefetch(v + d, 1);
    }
}

static void add_bias(float *y, const struct eng_tensor *b, uint32_t n)
{
    const float *bd = b->data;

    for (uint32_t i = 0; i < n; i++)
        y[i] += bd[i];
}

/* gate, up, the activation function per token, down (exact mode, or a
 * down input whose blocks do not divide n_ff). */
/* g = gate(h), u = up(h) for every token (one barrier between them only
 * when their activations differ); a barrier after up only if sync_up. */
static void ffn_gate_up(struct thr *t, const struct eng_layer *L, const void *const *pk,
                        int sync_up)
{
    struct eng_ctx *c = t->c;
    uint32_t E = c->m->hp.n_embd, T = c->n_tok, F = c->m->hp.n_ff;

    matmul(t, ENG_PROF_MM_UP, &L->gate, pk[4], c->h, E, T, c->g, F,
           !same_act(&L->gate, pk[4], &L->up, pk[5]));
    matmul(t, ENG_PROF_MM_UP, &L->up, pk[5], c->h, E, T, c->u, F, sync_up);
}

/* g[e] = act(g[e]) * u[e] for n elements (GELU or SiLU, per the arch) */
static void ffn_act(const struct eng_model *m, float *g, const float *u, uint32_t n)
{
    if (m->ai->gelu)
        eng_ops_gelu_mul(g, g, u, n);
    else
        eng_ops_silu_mul(g, g, u, n);
}

static void ffn_mm(struct thr *t, const struct eng_layer *L, const void *const *pk, uint32_t lo,
                   uint32_t hi)
{
    struct eng_ctx *c = t->c;
    const struct eng_model *m = c->m;
    uint32_t E = m->hp.n_embd, T = c->n_tok, F = m->hp.n_ff;

    ffn_gate_up(t, L, pk, 1);
    for (uint32_t i = lo; i < hi; i++)
        ffn_act(m, c->g + (size_t)i * F, c->u + (size_t)i * F, F);
    mark(t, ENG_PROF_NORM);
    prequant_rows(t, &L->down, pk[6], c->g, F, lo, hi);
    matmul(t, ENG_PROF_MM_DOWN, &L->down, pk[6], c->g, F, T, c->h, E, 1);
}

/* Elements per block of w's activation rows (blocks quantize
 * independently of each other), at least MM_ROW_ALIGN. */
static uint32_t act_blk(const struct eng_tensor *w)
{
    const struct eng_type_info *ti = eng_type_get(w->type);
    uint32_t b = ti ? ti->blck : 0;

    return b > MM_ROW_ALIGN ? b : MM_ROW_ALIGN;
}

/* Whether the FFN can run with the activation function and the down
 * input's quantization on each thread's own gate/up columns. */
static int ffn_fused(const struct eng_ctx *c, const struct eng_layer *L, const void *down_pk)
{
    uint32_t blk = act_blk(&L->down), F = c->m->hp.n_ff;

    return !c->exact && blk % MM_ROW_ALIGN == 0 && F % blk == 0 &&
           act_rsize(&L->down, down_pk) % (F / blk) == 0;
}

/*
 * The FFN with one barrier fewer: gate and up on row ranges of whole
 * blocks of the down projection's activation rows, so that each thread
 * applies the activation function to its own columns of g and u (element
 * by element) and quantizes those blocks of every token's down input
 * itself (each block on its own values only: the same bytes as a whole
 * row's quantization). They go to the second buffer xq2, since the other
 * thread may still be reading xq in gate/up; down reads xq2 after the
 * barrier. Results are bit for bit those of ffn_mm (S1).
 */
static void ffn_fused_mm(struct thr *t, const struct eng_layer *L, const void *const *pk)
{
    struct eng_ctx *c = t->c;
    const struct eng_model *m = c->m;
    uint32_t E = m->hp.n_embd, T = c->n_tok, F = m->hp.n_ff, e0, e1;
    const uint32_t blk = act_blk(&L->down);
    size_t xrb = act_rsize(&L->down, pk[6]);
    size_t bb = xrb / (F / blk);                    /* bytes per activation block */

    t->align = blk;
    ffn_gate_up(t, L, pk, 0);
    mm_range(t, F, &e0, &e1);
    t->align = MM_ROW_ALIGN;
    if (e0 < e1) {
        for (uint32_t i = 0; i < T; i++)
            ffn_act(m, c->g + (size_t)i * F + e0, c->u + (size_t)i * F + e0, e1 - e0);
        mark(t, ENG_PROF_NORM);
        char *dst0 = (char *)c->xq2 + (size_t)(e0 / blk) * bb;

        for (uint32_t i = 0; i < T; i++)
            act_quant_n(&L->down, pk[6], c->g + (size_t)i * F + e0, dst0 + i * xrb, e1 - e0);
        mark(t, ENG_PROF_QUANT);
    }
    barrier(t);
    t->xq = c->xq2;
    prequant_done(t, &L->down, pk[6], c->g);
    matmul(t, ENG_PROF_MM_DOWN, &L->down, pk[6], c->g, F, T, c->h, E, 1);
    t->xq = c->xq;
    t->q_src = NULL;     /* xq holds neither g nor anything prequant_done said */
}

static void layer(struct thr *t, uint32_t il)
{
    struct eng_ctx *c = t->c;
    const struct eng_model *m = c->m;
    const struct eng_hparams *hp = &m->hp;
    const struct eng_layer *L = &m->layers[il];
    const struct eng_ops *ops = c->ops;
    uint32_t E = hp->n_embd, T = c->n_tok, hd = hp->head_dim, hdv = hp->head_dim_v;
    uint32_t nq = hp->n_head * hd, nk = hp->n_head_kv * hd, nv = hp->n_head_kv * hdv;
    uint32_t no = hp->n_head * hdv, half = hp->rope_dim / 2, lo, hi;
    const void *const *pk = c->pk + (size_t)il * PK_PER_LAYER;

    range(T, t->ith, t->nth, &lo, &hi);
    for (uint32_t i = lo; i < hi; i++)
        ops->rmsnorm(c->h + (size_t)i * E, c->x + (size_t)i * E, L->attn_norm.data, E, hp->eps);
    mark(t, ENG_PROF_NORM);
    prequant_rows(t, &L->wq, pk[0], c->h, E, lo, hi);
    matmul(t, ENG_PROF_MM_QKV, &L->wq, pk[0], c->h, E, T, c->q, nq,
           !same_act(&L->wq, pk[0], &L->wk, pk[1]));
    matmul(t, ENG_PROF_MM_QKV, &L->wk, pk[1], c->h, E, T, c->k, nk,
           !same_act(&L->wk, pk[1], &L->wv, pk[2]));
    matmul(t, ENG_PROF_MM_QKV, &L->wv, pk[2], c->h, E, T, c->v, nv, 1);

    /* Per token: biases, Q/K norms, RoPE, KV write. */
    for (uint32_t i = lo; i < hi; i++) {
        float *q = c->q + (size_t)i * nq, *k = c->k + (size_t)i * nk, *v = c->v + (size_t)i * nv;
        const float *cs = c->rope_cs + ((size_t)i * 2 + (L->swa ? 1 : 0)) * 2 * half;
        const struct eng_seq *s = &c->b->seqs[c->tok_seq[i]];
        uint32_t p = c->tok_pos[i];
        int32_t blk = s->block_table[p / ENG_KV_BLOCK];

        if (c->decode_only && i + 1 < hi)
            kv_prefetch_w(c, il, i + 1);
        if (L->bq.data) {
            add_bias(q, &L->bq, nq);
            add_bias(k, &L->bk, nk);
            add_bias(v, &L->bv, nv);
        }
        for (uint32_t h = 0; h < hp->n_head; h++) {
            if (L->q_norm.data)
                ops->rmsnorm(q + h * hd, q + h * hd, L->q_norm.data, hd, hp->eps);
            eng_ops_rope(q + h * hd, cs, cs + half, hp->rope_dim, m->ai->rope_neox);
        }
        for (uint32_t h = 0; h < hp->n_head_kv; h++) {
            if (L->k_norm.data)
                ops->rmsnorm(k + h * hd, k + h * hd, L->k_norm.data, hd, hp->eps);
            eng_ops_rope(k + h * hd, cs, cs + half, hp->rope_dim, m->ai->rope_neox);
            if (c->kv->type == ENG_KV_F16) {    /* keys transposed (eng_kv.h) */
                eng_kv_put_f16((uint16_t *)eng_kv_kp(c->kv, blk, il, h) + p % ENG_KV_BLOCK,
                               ENG_KV_BLOCK, k + h * hd, hd);
                eng_kv_put_f16((uint16_t *)eng_kv_vp(c->kv, blk, il, h) +
                                   (size_t)(p % ENG_KV_BLOCK) * hdv,
                               1, v + h * hdv, hdv);
                continue;
            }
            float *kb = eng_kv_k_at(c->kv, blk, il, h, p % ENG_KV_BLOCK, 0);

            for (uint32_t d = 0; d < hd; d++)
                kb[(size_t)d * ENG_KV_BLOCK] = k[h * hd + d];
            memcpy(eng_kv_v(c->kv, blk, il, h) + (size_t)(p % ENG_KV_BLOCK) * hdv,
                   v + h * hdv, hdv * sizeof(float));
        }
    }
    mark(t, ENG_PROF_ROPE);
    if (c->decode_split) {
        /* Decode only (c->decode_split): a token attends to earlier steps'
         * positions and to its own, whose keys and values this thread has
         * just written - no barrier before its attention, and the thread
         * quantizes its tokens' outputs for Wo itself. */
        attention_units(t, il, lo * hp->n_head, hi * hp->n_head);
        mark(t, ENG_PROF_ATTN);
        prequant_rows(t, &L->wo, pk[3], c->att, no, lo, hi);
    } else {
        barrier(t);
        attention(t, il);
    }
    matmul(t, ENG_PROF_MM_O, &L->wo, pk[3], c->att, no, T, c->h, E, 1);
    for (uint32_t i = lo; i < hi; i++) {
        float *o = c->h + (size_t)i * E, *x = c->x + (size_t)i * E;

        if (L->post_attn_norm.data)
            ops->rmsnorm(o, o, L->post_attn_norm.data, E, hp->eps);
        for (uint32_t e = 0; e < E; e++)
            x[e] += o[e];
        ops->rmsnorm(o, x, L->ffn_norm.data, E, hp->eps);
    }
    mark(t, ENG_PROF_NORM);
    prequant_rows(t, &L->gate, pk[4], c->h, E, lo, hi);
    if (ffn_fused(c, L, pk[6]))
        ffn_fused_mm(t, L, pk);
    else
        ffn_mm(t, L, pk, lo, hi);
    for (uint32_t i = lo; i < hi; i++) {
        float *o = c->h + (size_t)i * E, *x = c->x + (size_t)i * E;

        if (L->post_ffn_norm.data)
            ops->rmsnorm(o, o, L->post_ffn_norm.data, E, hp->eps);
        for (uint32_t e = 0; e < E; e++)
            x[e] += o[e];
    }
    mark(t, ENG_PROF_NORM);
    /* No barrier: the next layer starts with the same per-token split, so
     * each thread reads only the rows of x it has just written, and every
     * other thread is past the down matmul (the last reader of xq and h
     * rows it does not own). forward() puts one after the last layer. */
}

static void forward(void *arg, unsigned ith, unsigned nth)
{
    struct eng_ctx *c = arg;
    const struct eng_model *m = c->m;
    const struct eng_hparams *hp = &m->hp;
    struct thr t = { .c = c, .ith = ith, .nth = nth, .xq = c->xq, .align = MM_ROW_ALIGN,
                     .acc = c->profile ? c->prof + (size_t)ith * PROF_STRIDE : NULL };
    uint32_t E = hp->n_embd, half = hp->rope_dim / 2, lo, hi;
    const void *pko = c->pk[(size_t)hp->n_layer * PK_PER_LAYER];

    if (t.acc)
        t.t_last = prof_now(c);     /* from here: a worker's wake-up is not counted */
    /* Embeddings and each token's RoPE cos/sin for both bases. */
    range(c->n_tok, ith, nth, &lo, &hi);
    for (uint32_t i = lo; i < hi; i++) {
        const struct eng_seq *s = &c->b->seqs[c->tok_seq[i]];
        int32_t tok = s->tokens[c->tok_pos[i] - s->pos];
        float *x = c->x + (size_t)i * E;

        (void)eng_dequant_row(m->tok_embd.type,
                              (const char *)m->tok_embd.data + (size_t)tok * m->tok_embd.row_bytes,
                              x, E);
        if (hp->embd_scale != 1.0f)
            for (uint32_t e = 0; e < E; e++)
                x[e] *= hp->embd_scale;
        for (int b = 0; b < 2; b++) {
            float *cs = c->rope_cs + ((size_t)i * 2 + b) * 2 * half;

            for (uint32_t d = 0; d < half; d++) {
                double th = (double)c->tok_pos[i] * c->inv_freq[b][d];

                cs[d] = (float)cos(th);
                cs[half + d] = (float)sin(th);
            }
        }
    }
    mark(&t, ENG_PROF_EMBD);
    barrier(&t);
    for (uint32_t il = 0; il < hp->n_layer; il++)
        layer(&t, il);
    barrier(&t);

    /* Final norm of each sampling sequence's last token, logits, sampling. */
    range(c->n_out, ith, nth, &lo, &hi);
    for (uint32_t j = lo; j < hi; j++)
        c->ops->rmsnorm(c->h + (size_t)j * E, c->x + (size_t)c->out_tok[j] * E,
                        m->output_norm.data, E, hp->eps);
    mark(&t, ENG_PROF_NORM);
    prequant_rows(&t, &m->output, pko, c->h, E, lo, hi);
    matmul(&t, ENG_PROF_MM_OUT, &m->output, pko, c->h, E, c->n_out, c->logits, hp->n_vocab, 1);
    range(c->n_out, ith, nth, &lo, &hi);
    for (uint32_t j = lo; j < hi; j++) {
        const struct eng_seq *s = &c->b->seqs[c->out_seq[j]];
        float *lg = c->logits + (size_t)j * hp->n_vocab;

        if (hp->final_softcap > 0)
            for (uint32_t v = 0; v < hp->n_vocab; v++)
                lg[v] = tanhf(lg[v] / hp->final_softcap) * hp->final_softcap;
        if (c->logits_out)
            memcpy(c->logits_out + (size_t)c->out_seq[j] * hp->n_vocab, lg,
                   hp->n_vocab * sizeof(float));
        eng_sample(lg, hp->n_vocab, &s->sp, s->history, s->n_history,
                   s->history_then_input ? s->tokens[s->n_new - 1] : -1, s->pos + s->n_new,
                   c->sample_scratch + (size_t)ith * c->sample_scratch_bytes,
                   &c->out[c->out_seq[j]]);
    }
    mark(&t, ENG_PROF_SAMPLE);
}

int eng_step_check(const eng_ctx_t *c, const struct eng_batch *b, char *err, size_t errlen)
{
    uint64_t n_tok = 0;

#define BAD(code, ...)                                                     \
    do {                                                                   \
        if (err && errlen)                                                 \
            snprintf(err, errlen, __VA_ARGS__);                            \
        return code;                                                       \
    } while (0)
    if (!b || (b->n_seqs && !b->seqs))
        BAD(-EINVAL, "batch: no sequences array");
    if (b->n_seqs > c->max_seqs)
        BAD(-E2BIG, "batch: %u sequences, at most %u per step", b->n_seqs, c->max_seqs);
    for (uint32_t i = 0; i < b->n_seqs; i++) {
        const struct eng_seq *s = &b->seqs[i];
        uint64_t end = (uint64_t)s->pos + s->n_new;

        if (!s->n_new || !s->tokens || !s->block_table)
            BAD(-EINVAL, "batch: sequence %u has no tokens or no block table", i);
        n_tok += s->n_new;
        if (end > c->n_ctx)
            BAD(-E2BIG, "batch: sequence %u reaches position %llu, context is %u", i,
                (unsigned long long)end, c->n_ctx);
        if (s->n_blocks < eng_kv_blocks_for((uint32_t)end))
            BAD(-EINVAL, "batch: sequence %u has %u blocks for %llu positions", i,
                s->n_blocks, (unsigned long long)end);
        for (uint32_t j = 0; j < eng_kv_blocks_for((uint32_t)end); j++)
            if (s->block_table[j] < 0 || (uint32_t)s->block_table[j] >= c->kv->n_blocks)
                BAD(-EINVAL, "batch: sequence %u block_table[%u] = %d is not a block", i, j,
                    s->block_table[j]);
        for (uint32_t j = 0; j < s->n_new; j++)
            if (s->tokens[j] < 0 || (uint32_t)s->tokens[j] >= c->m->hp.n_vocab)
                BAD(-EINVAL, "batch: sequence %u token %u is outside the vocabulary (%u)", i,
                    j, c->m->hp.n_vocab);
        if (s->n_history && !s->history)
            BAD(-EINVAL, "batch: sequence %u has n_history without history", i);
    }
    if (n_tok > c->max_tokens)
        BAD(-E2BIG, "batch: %llu tokens, at most %u per step", (unsigned long long)n_tok,
            c->max_tokens);
#undef BAD
    return 0;
}

int eng_step(eng_ctx_t *c, const struct eng_batch *b, struct eng_sample_out *out,
             float *logits)
{
    uint32_t n = 0, n_out = 0, decode = 1;
    int rc = eng_step_check(c, b, NULL, 0);

    if (rc)
        return rc;
    for (uint32_t i = 0; i < b->n_seqs; i++) {
        const struct eng_seq *s = &b->seqs[i];

        for (uint32_t j = 0; j < s->n_new; j++, n++) {
            c->tok_seq[n] = (int32_t)i;
            c->tok_pos[n] = s->pos + j;
        }
        decode &= s->n_new == 1;
        if (!s->no_sample) {
            c->out_tok[n_out] = n - 1;
            c->out_seq[n_out++] = (int32_t)i;
        }
    }
    if (!n)
        return 0;
    c->b = b;
    c->out = out;
    c->logits_out = logits;
    c->n_tok = n;
    c->n_out = n_out;
    /* at least 4 tokens a thread: fewer (batch 1) keep the finer
     * (token, head) split of attention */
    c->decode_only = (uint8_t)decode;
    c->decode_split = decode && n >= 4 * c->nth;
    if (c->profile) {
        uint64_t t0 = favo_now_ns();

        eng_pool_run(c->pool, forward, c);
        c->prof_wall += favo_now_ns() - t0;
        c->prof_steps++;
        c->prof_tokens += n;
    } else {
        eng_pool_run(c->pool, forward, c);
    }
    c->b = NULL;
    return 0;
}

const char *eng_prof_name(enum eng_prof_op op)
{
    static const char *const names[ENG_PROF_COUNT] = {
        [ENG_PROF_EMBD] = "embd",       [ENG_PROF_NORM] = "norm",
        [ENG_PROF_QUANT] = "quant",     [ENG_PROF_MM_QKV] = "mm_qkv",
        [ENG_PROF_MM_O] = "mm_o",       [ENG_PROF_MM_UP] = "mm_gate_up",
        [ENG_PROF_MM_DOWN] = "mm_down", [ENG_PROF_MM_OUT] = "mm_output",
        [ENG_PROF_ROPE] = "rope_kv",    [ENG_PROF_ATTN] = "attention",
        [ENG_PROF_SAMPLE] = "sample",   [ENG_PROF_BARRIER] = "barrier",
    };

    return (unsigned)op < ENG_PROF_COUNT ? names[op] : "?";
}

void eng_ctx_prof(const eng_ctx_t *c, struct eng_step_prof *out)
{
    memset(out, 0, sizeof(*out));
    out->n_threads = c->nth;
    if (!c->profile)
        return;
    out->steps = c->prof_steps;
    out->tokens = c->prof_tokens;
    out->wall_ns = c->prof_wall;
    for (unsigned i = 0; i < c->nth; i++) {
        const uint64_t *a = c->prof + (size_t)i * PROF_STRIDE;

        for (unsigned op = 0; op < ENG_PROF_COUNT; op++)
            out->ns[op] += a[op];
        if (i == 0)
            out->barriers = a[ENG_PROF_COUNT];
    }
}

void eng_ctx_prof_reset(eng_ctx_t *c)
{
    if (!c->profile)
        return;
    memset(c->prof, 0, (size_t)c->nth * PROF_STRIDE * sizeof(uint64_t));
    c->prof_steps = c->prof_tokens = c->prof_wall = 0;
}

/*
 * Step buffers are anonymous mappings marked MADV_DONTDUMP: activations,
 * logits and sampler scratch are request content and must never reach a
 * core dump (invariant 5). munmap hands the pages back to the kernel,
 * which zeroes them before anyone else sees them.
 */
static void *ctx_alloc(struct eng_ctx *c, size_t n)
{
    size_t len = (FAVO_MAX(n, 1) + 4095) & ~(size_t)4095;
    void *p;

    FAVO_ASSERT(c->n_bufs < FAVO_ARRAY_SIZE(c->bufs));
    p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    (void)madvise(p, len, MADV_DONTDUMP);
    c->bufs[c->n_bufs].p = p;
    c->bufs[c->n_bufs++].len = len;
    return p;
}

/* The matmul tensors in pk order. */
static const struct eng_tensor *pk_tensor(const struct eng_model *m, size_t i)
{
    const struct eng_layer *L;

    if (i == (size_t)m->hp.n_layer * PK_PER_LAYER)
        return &m->output;
    L = &m->layers[i / PK_PER_LAYER];
    switch (i % PK_PER_LAYER) {
    case 0: return &L->wq;
    case 1: return &L->wk;
    case 2: return &L->wv;
    case 3: return &L->wo;
    case 4: return &L->gate;
    case 5: return &L->up;
    default: return &L->down;
    }
}

/*
 * Pack every matmul weight whose type has a packed kernel on this CPU
 * into panels (eng_quant.h "Packed weights"), in one anonymous region of
 * their own (huge pages, locked where the limit allows, like the model's
 * weights). The row-major weights stay in the model: the embedding
 * lookup, exact mode and the other kernels read them. Not in exact mode.
 */
static int pack_weights(struct eng_ctx *c)
{
    const struct eng_model *m = c->m;
    size_t n = (size_t)m->hp.n_layer * PK_PER_LAYER + 1, total = 0, off = 0;
    struct rlimit rl;
    char *base;

    c->pk = calloc(n, sizeof(*c->pk));
    if (!c->pk)
        return -ENOMEM;
    if (c->exact)
        return 0;
    for (size_t i = 0; i < n; i++) {
        const struct eng_tensor *w = pk_tensor(m, i);

        total += (eng_pack_size(w->type, (int64_t)w->ne0, (int64_t)w->ne1) + 63) & ~(size_t)63;
    }
    if (!total)
        return 0;
    total = (total + (2u << 20) - 1) & ~(size_t)((2u << 20) - 1);
    base = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED)
        return -ENOMEM;
    (void)madvise(base, total, MADV_HUGEPAGE);
    c->pkmem = base;
    c->pksize = total;
    for (size_t i = 0; i < n; i++) {
        const struct eng_tensor *w = pk_tensor(m, i);
        size_t sz = eng_pack_size(w->type, (int64_t)w->ne0, (int64_t)w->ne1);

        if (!sz)
            continue;
        if (eng_pack(w->type, w->data, w->row_bytes, (int64_t)w->ne0, (int64_t)w->ne1,
                     base + off))
            return -EINVAL;
        c->pk[i] = base + off;
        off += (sz + 63) & ~(size_t)63;
    }
    (void)madvise(base, total, MADV_DONTDUMP);
    if (!(m->flags & ENG_MODEL_NO_MLOCK) && !getrlimit(RLIMIT_MEMLOCK, &rl) &&
        (rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur >= total))
        (void)mlock(base, total);
    return 0;
}

int eng_ctx_init(eng_ctx_t **out, const struct eng_model *m, struct eng_kv *kv,
                 const struct eng_ctx_opts *o)
{
    const struct eng_hparams *hp = &m->hp;
    struct eng_ctx *c;
    uint32_t T, S, half = hp->rope_dim / 2;
    size_t E = hp->n_embd, nq = (size_t)hp->n_head * hp->head_dim;
    size_t nk = (size_t)hp->n_head_kv * hp->head_dim, nv = (size_t)hp->n_head_kv * hp->head_dim_v;
    size_t no = (size_t)hp->n_head * hp->head_dim_v, F = hp->n_ff, hw;
    const struct eng_tensor *ws[] = { &m->output };
    int rc;

    *out = NULL;
    if (kv->n_layer != hp->n_layer || kv->n_head_kv != hp->n_head_kv ||
        kv->head_dim != hp->head_dim || kv->head_dim_v != hp->head_dim_v)
        return -EINVAL;
    c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    c->m = m;
    c->kv = kv;
    c->ops = eng_ops_get();
    c->nth = o && o->n_threads ? o->n_threads : 1;
    c->max_tokens = T = o && o->max_tokens ? o->max_tokens : 512;
    c->max_seqs = S = o && o->max_seqs ? o->max_seqs : 64;
    S = FAVO_MIN(S, T);
    c->max_seqs = S;
    c->n_ctx = o && o->n_ctx ? o->n_ctx : FAVO_MIN(hp->n_ctx_train ? hp->n_ctx_train : 8192, 8192);
    /* Every weight must be supported by the kernels; the largest
     * activation row sizes xq. */
    c->act_row_max = eng_quant_act_row_size(m->output.type, (int64_t)E);
    if (!eng_quant_supported(m->output.type) || !c->act_row_max) {
        rc = -ENOTSUP;
        goto fail;
    }
    (void)ws;
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        const struct eng_layer *L = &m->layers[il];
        const struct eng_tensor *mw[] = { &L->wq, &L->wk, &L->wv, &L->wo, &L->gate, &L->up,
                                          &L->down };

        for (unsigned i = 0; i < FAVO_ARRAY_SIZE(mw); i++) {
            size_t r = eng_quant_act_row_size(mw[i]->type, (int64_t)mw[i]->ne0);

            if (!eng_quant_supported(mw[i]->type) || !r) {
                rc = -ENOTSUP;
                goto fail;
            }
            c->act_row_max = FAVO_MAX(c->act_row_max, r);
            c->act_row_max = FAVO_MAX(c->act_row_max,
                                      eng_pack_act_row_size(mw[i]->type, (int64_t)mw[i]->ne0));
        }
    }
    c->act_row_max = FAVO_MAX(c->act_row_max,
                              eng_pack_act_row_size(m->output.type, (int64_t)E));
    hw = FAVO_MAX(E, no);
    c->exact = o && o->exact;
    c->attn_fast = !c->exact && eng_attn_fast(hp->head_dim) && eng_attn_fast(hp->head_dim_v);
    c->k_max = (uint32_t)FAVO_MAX(FAVO_MAX(E, no), F);
    c->wrow = ctx_alloc(c, (size_t)c->nth * c->k_max * sizeof(float));
    c->x = ctx_alloc(c, T * E * sizeof(float));
    c->h = ctx_alloc(c, (size_t)T * hw * sizeof(float));
    c->q = ctx_alloc(c, T * nq * sizeof(float));
    c->k = ctx_alloc(c, T * nk * sizeof(float));
    c->v = ctx_alloc(c, T * nv * sizeof(float));
    c->att = ctx_alloc(c, T * no * sizeof(float));
    c->g = ctx_alloc(c, T * F * sizeof(float));
    c->u = ctx_alloc(c, T * F * sizeof(float));
    c->xq = ctx_alloc(c, (size_t)T * c->act_row_max);
    c->xq2 = ctx_alloc(c, (size_t)T * c->act_row_max);
    c->rope_cs = ctx_alloc(c, (size_t)T * 4 * FAVO_MAX(half, 1) * sizeof(float));
    c->tok_seq = ctx_alloc(c, T * sizeof(int32_t));
    c->tok_pos = ctx_alloc(c, T * sizeof(uint32_t));
    c->out_tok = ctx_alloc(c, S * sizeof(uint32_t));
    c->out_seq = ctx_alloc(c, S * sizeof(int32_t));
    c->logits = ctx_alloc(c, (size_t)S * hp->n_vocab * sizeof(float));
    c->scores = ctx_alloc(c, (size_t)c->nth * (hp->n_head / hp->n_head_kv) * c->n_ctx *
                                 sizeof(float));
    c->sample_scratch_bytes = (eng_sample_scratch_size(hp->n_vocab) + 63) & ~(size_t)63;
    c->sample_scratch = ctx_alloc(c, c->nth * c->sample_scratch_bytes);
    c->inv_freq[0] = ctx_alloc(c, FAVO_MAX(half, 1) * sizeof(float));
    c->inv_freq[1] = ctx_alloc(c, FAVO_MAX(half, 1) * sizeof(float));
    c->profile = o ? o->profile : 0;
    c->prof = ctx_alloc(c, (size_t)c->nth * PROF_STRIDE * sizeof(uint64_t));
    if (!c->x || !c->h || !c->q || !c->k || !c->v || !c->att || !c->g || !c->u || !c->xq ||
        !c->xq2 ||
        !c->rope_cs || !c->tok_seq || !c->tok_pos || !c->out_tok || !c->out_seq ||
        !c->logits || !c->scores || !c->wrow || !c->sample_scratch || !c->inv_freq[0] || !c->inv_freq[1] || !c->prof) {
        rc = -ENOMEM;
        goto fail;
    }
    /* theta_d = pos * base^(-2d/rope_dim) * freq_scale / rope_freqs[d] */
    for (int b = 0; b < 2; b++) {
        double base = b ? hp->rope_base_swa : hp->rope_base;

        for (uint32_t d = 0; d < half; d++) {
            double f = pow(base, -2.0 * d / hp->rope_dim) * hp->rope_freq_scale;

            if (m->rope_freqs.data)
                f /= ((const float *)m->rope_freqs.data)[d];
            c->inv_freq[b][d] = (float)f;
        }
    }
    if ((rc = pack_weights(c)))
        goto fail;
    if ((rc = eng_pool_init(&c->pool, c->nth)))
        goto fail;
    *out = c;
    return 0;
fail:
    eng_ctx_free(c);
    return rc;
}

void eng_ctx_free(eng_ctx_t *c)
{
    if (!c)
        return;
    eng_pool_free(c->pool);
    if (c->pkmem)
        munmap(c->pkmem, c->pksize);
    for (unsigned i = 0; i < c->n_bufs; i++)
        munmap(c->bufs[i].p, c->bufs[i].len);
    free(c->pk);
    free(c);
}

uint32_t eng_ctx_max_tokens(const eng_ctx_t *c)
{
    return c->max_tokens;
}

uint32_t eng_ctx_n_ctx(const eng_ctx_t *c)
{
    return c->n_ctx;
}
