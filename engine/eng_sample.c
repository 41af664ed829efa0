/*
 * eng_sample.c - penalties, greedy, temperature, top-k, top-p, min-p and a
 * counter-based draw (see eng_sample.h).
 *
 * Candidates far below the best are dropped before sorting: a token whose
 * probability is below 1e-9 of the best one's (logit < max - 20.7 * T)
 * cannot change a draw from a double-precision uniform in any way that
 * matters, and sorting 262144 logits per token (Gemma's vocabulary) would
 * otherwise cost more than the forward pass of a small model.
 */
#include "eng_sample.h"

#include "eng_ops.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct cand {
    float logit;
    int32_t id;
};

/* Scratch layout: counts[n_vocab] (kept all-zero between calls), then
 * cands[n_vocab]. */
size_t eng_sample_scratch_size(uint32_t n_vocab)
{
    return (size_t)n_vocab * sizeof(uint32_t) + (size_t)n_vocab * sizeof(struct cand) + 64;
}

static inline uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

double eng_sample_uniform(uint64_t seed, uint64_t pos)
{
    uint64_t h = mix64(seed + 0x9e3779b97f4a7c15ull);

    h = mix64(h ^ (pos * 0xd1b54a32d192ed03ull + 0x9e3779b97f4a7c15ull));
    return (double)(h >> 11) * (1.0 / 9007199254740992.0);
}

/* "a goes after b" in best-first order; ties: lower id first, so the
 * order is total and the result deterministic. */
static inline int cand_after(const struct cand *a, const struct cand *b)
{
    return a->logit != b->logit ? a->logit < b->logit : a->id > b->id;
}

static void sift(struct cand *c, size_t i, size_t n)
{
    for (;;) {
        size_t l = 2 * i + 1, big = i;
        struct cand t;

        /* max-heap of "after": the root is the candidate that sorts last */
        if (l < n && cand_after(&c[l], &c[big]))
            big = l;
        if (l + 1 < n && cand_after(&c[l + 1], &c[big]))
            big = l + 1;
        if (big == i)
            return;
        t = c[i];
        c[i] = c[big];
        c[big] = t;
        i = big;
    }
}

/* In-place heapsort, best first. Not qsort: glibc's may malloc for large
 * arrays, and this runs per token (invariant 8). */
static void cand_sort(struct cand *c, size_t n)
{
    for (size_t i = n / 2; i-- > 0;)
        sift(c, i, n);
    for (size_t e = n; e > 1; e--) {
        struct cand t = c[0];

        c[0] = c[e - 1];
        c[e - 1] = t;
        sift(c, 0, e - 1);
    }
}

static void top_logprobs(const float *logits, uint32_t n_vocab, float lse, uint32_t n,
                         struct eng_sample_out *out)
{
    /* Insertion into a short sorted list: n <= 20. */
    out->n_top = 0;
    for (uint32_t i = 0; i < n_vocab; i++) {
        float v = logits[i];
        uint32_t j;

        if (out->n_top == n && v <= out->top_logprobs[n - 1])
            continue;
        j = out->n_top < n ? out->n_top++ : n - 1;
        while (j > 0 && out->top_logprobs[j - 1] < v) {
            out->top_logprobs[j] = out->top_logprobs[j - 1];
            out->top_tokens[j] = out->top_tokens[j - 1];
            j--;
        }
        out->top_logprobs[j] = v;
        out->top_tokens[j] = (int32_t)i;
    }
    for (uint32_t j = 0; j < out->n_top; j++)
        out->top_logprobs[j] -= lse;
}

int32_t eng_sample(float *logits, uint32_t n_vocab, const struct eng_sample_params *sp,
                   const int32_t *history, uint32_t n_history, int32_t extra, uint64_t pos,
                   void *scratch, struct eng_sample_out *out)
{
    uint32_t *counts = scratch;
    struct cand *c = (struct cand *)(counts + n_vocab);
    float maxl = -INFINITY, temp = sp->temperature;
    int32_t best = 0, tok;
    uint32_t nc = 0, keep;
    double sum, acc, u;

    /* Penalties: count, apply once per distinct token, reset the counts. */
    if ((history || extra >= 0) && (sp->freq_penalty != 0.0f || sp->presence_penalty != 0.0f)) {
        uint32_t nh = (history ? n_history : 0) + (extra >= 0);

        for (uint32_t i = 0; i < nh; i++) {
            uint32_t t = (uint32_t)(i < n_history && history ? history[i] : extra);

            if (t < n_vocab)
                counts[t]++;
        }
        for (uint32_t i = 0; i < nh; i++) {
            uint32_t t = (uint32_t)(i < n_history && history ? history[i] : extra);

            if (t < n_vocab && counts[t]) {
                logits[t] -= (float)counts[t] * sp->freq_penalty + sp->presence_penalty;
                counts[t] = 0;
            }
        }
    }
    best = (int32_t)eng_ops_argmax(logits, n_vocab);   /* vectorized: the greedy path's pass */
    maxl = logits[best] > -INFINITY ? logits[best] : -INFINITY;
    if (!(temp > 0.0f) || sp->top_k == 1) {
        tok = best;
        goto done;
    }
    /* Candidates within the probability floor, sorted best first. */
    {
        float floor_l = maxl - 20.7f * temp;

        for (uint32_t i = 0; i < n_vocab; i++)
            if (logits[i] >= floor_l)
                c[nc++] = (struct cand){ logits[i], (int32_t)i };
    }
    cand_sort(c, nc);
    keep = nc;
    if (sp->top_k > 0 && (uint32_t)sp->top_k < keep)
        keep = (uint32_t)sp->top_k;
    /* Softmax at temperature over the survivors (reuse logit as prob). */
    sum = 0;
    for (uint32_t i = 0; i < keep; i++) {
        c[i].logit = expf((c[i].logit - maxl) / temp);
        sum += c[i].logit;
    }
    if (sp->top_p > 0.0f && sp->top_p < 1.0f) {
        acc = 0;
        for (uint32_t i = 0; i < keep; i++) {
            acc += c[i].logit / sum;
            if (acc >= sp->top_p) {
                keep = i + 1;
                break;
            }
        }
    }
    if (sp->min_p > 0.0f) {
        float lim = c[0].logit * sp->min_p;  /* c[0] is the most likely */

        for (uint32_t i = 1; i < keep; i++)
            if (c[i].logit < lim) {
                keep = i;
                break;
            }
    }
    sum = 0;
    for (uint32_t i = 0; i < keep; i++)
        sum += c[i].logit;
    u = eng_sample_uniform(sp->seed, pos) * sum;
    acc = 0;
    tok = c[keep - 1].id;
    for (uint32_t i = 0; i < keep; i++) {
        acc += c[i].logit;
        if (u < acc) {
            tok = c[i].id;
            break;
        }
    }
done:
    if (out) {
        double s = 0;
        float lse;

        out->token = tok;
        out->logprob = 0.0f;
        out->n_top = 0;
        if (sp->n_logprobs) {
            for (uint32_t i = 0; i < n_vocab; i++)
                s += exp((double)(logits[i] - maxl));
            lse = maxl + (float)log(s);
            out->logprob = logits[tok] - lse;
            top_logprobs(logits, n_vocab, lse,
                         sp->n_logprobs > ENG_SAMPLE_MAX_LOGPROBS ? ENG_SAMPLE_MAX_LOGPROBS
                                                                  : sp->n_logprobs, out);
        }
    }
    return tok;
}
