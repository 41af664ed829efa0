/*
 * eng_step.h - one engine step on the CPU: a batch of sequences, each with
 * some new tokens at some positions (a prefill chunk or a single decode
 * token), through the model, into one sampled token per sequence.
 *
 * This is the shape the batcher sends (ARCHITECTURE.md, lifecycle 4-5):
 *
 *   struct eng_batch
 *     seqs[i]: n_new tokens at positions [pos, pos + n_new), tokens[],
 *              block_table[] covering positions [0, pos + n_new),
 *              sampling params, generated-token history (penalties)
 *   -> eng_step ->
 *     out[i]: the token sampled after the last new token (+ logprobs),
 *     logits[i][n_vocab] when asked (tests, --dump-logits)
 *
 * Each step writes the new tokens' keys and values into the KV blocks at
 * their positions, then attends over positions [0, p] (or the sliding
 * window) of the same sequence. Positions before pos must already be in
 * the blocks from earlier steps.
 *
 * The context (eng_ctx) owns every buffer the step uses, sized once at
 * eng_ctx_init for max_tokens tokens and max_seqs sequences per step, and
 * a thread pool: no malloc, no logging per step (invariant 8). Those
 * buffers hold request content (activations, logits), so they are
 * anonymous mappings marked MADV_DONTDUMP, unmapped at eng_ctx_free
 * (invariant 5).
 *
 * Invariants:
 *   S1. A sequence's output depends only on its own tokens, positions and
 *       KV blocks: the same whether alone or in any batch (batch
 *       invariance; every per-token reduction runs in a fixed order that
 *       does not depend on the batch or the thread count).
 *   S2. eng_step writes only the KV slots of the positions it computes.
 *
 * Errors (nothing is computed): -EINVAL for a malformed batch (message-free:
 * the caller validated it; eng_step_check gives the reason), -E2BIG when it
 * exceeds max_tokens / max_seqs / n_ctx.
 */
#ifndef ENG_STEP_H
#define ENG_STEP_H

#include <stddef.h>
#include <stdint.h>

#include "eng_kv.h"
#include "eng_model.h"
#include "eng_sample.h"

struct eng_seq {
    uint32_t slot;                 /* the batcher's sequence slot (backends may key state) */
    uint32_t n_new;                /* >= 1 */
    uint32_t pos;                  /* position of tokens[0] */
    const int32_t *tokens;         /* n_new ids */
    const int32_t *block_table;    /* eng_kv_blocks_for(pos + n_new) block ids */
    uint32_t n_blocks;
    const int32_t *history;        /* generated tokens so far, for penalties */
    uint32_t n_history;
    uint8_t history_then_input;    /* the history goes on with tokens[n_new - 1] (a
                                      decode fed an id not stored behind it yet) */
    uint8_t no_sample;             /* a prefill chunk that is not the last: no output */
    struct eng_sample_params sp;
};

struct eng_batch {
    uint32_t n_seqs;
    const struct eng_seq *seqs;
};

struct eng_ctx_opts {
    uint32_t n_threads;            /* 0: 1 */
    uint32_t max_tokens;           /* tokens per step; 0: 512 */
    uint32_t max_seqs;             /* sequences per step; 0: 64 */
    uint32_t n_ctx;                /* max positions per sequence; 0: min(train, 8192) */
    uint8_t exact;                 /* reference mode: dequantize weight rows and dot
                                      with f32 activations (no activation quantization);
                                      slower, for checking against an f32/f64 oracle */
    uint8_t profile;               /* time each phase of the step (eng_ctx_prof):
                                      ENG_PROF_WALL or ENG_PROF_CPU; 0: off */
};

/*
 * Where a step's time goes (opts.profile): nanoseconds per phase summed
 * over the threads, so that sum(ns) = threads x wall time of the steps.
 * BARRIER is time spent waiting at barriers (load imbalance plus the
 * barrier itself); barriers counts them per thread. ENG_PROF_WALL reads
 * the vDSO clock, about 20 ns a reading; ENG_PROF_CPU each thread's CPU
 * time (a clock_gettime syscall a reading, a few percent of a step), for
 * a machine shared with other work: time a thread spends preempted is
 * then not counted anywhere, wall_ns still is. Without opts.profile
 * nothing is timed. Metadata only (invariant 5): times and counts.
 */
enum { ENG_PROF_WALL = 1, ENG_PROF_CPU = 2 };

enum eng_prof_op {
    ENG_PROF_EMBD = 0,   /* embedding rows, RoPE tables */
    ENG_PROF_NORM,       /* RMSNorms, residual adds, activation function */
    ENG_PROF_QUANT,      /* activation rows quantized for the matmuls */
    ENG_PROF_MM_QKV,     /* Wq Wk Wv */
    ENG_PROF_MM_O,       /* Wo */
    ENG_PROF_MM_UP,      /* Wgate Wup */
    ENG_PROF_MM_DOWN,    /* Wdown */
    ENG_PROF_MM_OUT,     /* output (logits) */
    ENG_PROF_ROPE,       /* biases, Q/K norms, RoPE, KV writes */
    ENG_PROF_ATTN,       /* attention over the KV blocks */
    ENG_PROF_SAMPLE,     /* softcap, logits copy, sampling */
    ENG_PROF_BARRIER,    /* waiting at barriers */
    ENG_PROF_COUNT
};

struct eng_step_prof {
    uint64_t steps, tokens;        /* steps run and tokens computed since the reset */
    uint64_t barriers;             /* barriers per thread since the reset */
    uint64_t wall_ns;              /* eng_step time */
    uint32_t n_threads;
    uint64_t ns[ENG_PROF_COUNT];   /* summed over threads */
};

/* Name of a phase ("mm_qkv", ...). */
const char *eng_prof_name(enum eng_prof_op op);

typedef struct eng_ctx eng_ctx_t;

int eng_ctx_init(eng_ctx_t **out, const struct eng_model *m, struct eng_kv *kv,
                 const struct eng_ctx_opts *o);
void eng_ctx_free(eng_ctx_t *c);
uint32_t eng_ctx_max_tokens(const eng_ctx_t *c);
uint32_t eng_ctx_n_ctx(const eng_ctx_t *c);
/* The profile since the last reset (zeros without opts.profile). */
void eng_ctx_prof(const eng_ctx_t *c, struct eng_step_prof *out);
void eng_ctx_prof_reset(eng_ctx_t *c);

/* Check a batch; 0 or -EINVAL / -E2BIG with the reason in err. */
int eng_step_check(const eng_ctx_t *c, const struct eng_batch *b, char *err, size_t errlen);

/*
 * Run one step. out: n_seqs entries (entries of no_sample sequences are
 * left untouched). logits: NULL, or n_seqs * n_vocab floats receiving the
 * raw logits of each sampled sequence's last token (before penalties).
 * Returns 0, or -EINVAL / -E2BIG (see eng_step_check).
 */
int eng_step(eng_ctx_t *c, const struct eng_batch *b, struct eng_sample_out *out,
             float *logits);

#endif /* ENG_STEP_H */
