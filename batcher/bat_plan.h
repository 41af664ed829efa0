/*
 * bat_plan.h - the batch plan: what the batcher asks the engine to compute
 * in one step, laid out for shared memory (offsets and indices only,
 * ARCHITECTURE.md invariant 1). The engine turns it into its own
 * struct eng_batch (eng_step.h) by resolving the indices in its mapping:
 *
 *   struct bat_plan (header)          eng_batch / eng_seq
 *     seqs[i].slot                ->  eng_seq.slot
 *     seqs[i].cell, tok_off       ->  where the sequence's tokens live: the
 *                                     prompt ids followed by the generated
 *                                     ids, int32 from byte tok_off of the
 *                                     request cell (invariant 4, shm_pipe.h)
 *     seqs[i].pos, n_new          ->  eng_seq.pos, n_new; tokens = cell
 *                                     tokens [pos, pos + n_new)
 *     seqs[i].n_history           ->  generated ids so far (cell tokens
 *                                     [n_prompt, n_prompt + n_history))
 *     tables[seqs[i].table_off ..
 *            + seqs[i].n_blocks)  ->  eng_seq.block_table, n_blocks
 *                                     (== bat_kv_blocks_for(pos + n_new))
 *     seqs[i].no_sample, sp       ->  eng_seq.no_sample, sp
 *     seqs[i].feed, feed_src      ->  tokens[0] (and the last history id) =
 *                                     the engine's own answer to entry
 *                                     feed_src of plan step - 1 (overlap)
 *     freed[0 .. n_freed)         ->  eng_kv: explicit_bzero each block
 *                                     BEFORE running any sequence (bat_kv.h)
 *
 * Writer: the batcher (one plan per engine rank, identical contents);
 * readers: the engines. The engine answers with one struct bat_result per
 * plan sequence, in plan order (results of no_sample entries are ignored).
 *
 * Invariants (cited by FAVO_ASSERT as "plan inv N"):
 *   1. sum(n_new) <= max_batch_tokens and n_seqs <= max_seqs of the
 *      scheduler that wrote it.
 *   2. Every block id in tables[] appears once in the whole plan; none is
 *      in freed[] after its use in tables[] (freed ids are zeroed first).
 *   3. A sequence appears at most once per plan.
 */
#ifndef BAT_PLAN_H
#define BAT_PLAN_H

#include <stddef.h>
#include <stdint.h>

#include "eng_sample.h"

#define BAT_PLAN_MAGIC 0x4e4c5042u /* "BPLN" */

struct bat_plan_seq {
    uint64_t id;          /* request handle (bat_sched.h) */
    uint64_t cell;        /* where the ids live (bat_req.cell: a shm_cell_ref_t) */
    uint32_t slot;        /* request slot in the scheduler */
    uint32_t tok_off;     /* byte offset of id 0 (the first prompt id) in the cell */
    uint32_t pos;         /* position of the first new token */
    uint32_t n_new;       /* >= 1 */
    uint32_t table_off;   /* index of the first block id in tables[] */
    uint32_t n_blocks;
    uint32_t n_prompt;
    uint32_t n_history;   /* generated tokens so far */
    uint8_t no_sample;    /* a prefill chunk short of the last known token */
    uint8_t feed;         /* overlap (bat_sched.h "Overlap"): the input token, id
                             n_prompt + n_history - 1 at position pos (n_new == 1),
                             is what this sequence samples in plan step - 1, entry
                             feed_src: not in the cell yet; the engine takes it
                             from its own answer to that plan (the last history id
                             too). A rank that cannot (it did not run that plan,
                             or answered -1 there) answers -1 */
    uint8_t pad_[2];
    uint32_t feed_src;    /* feed: index of this sequence in plan step - 1 */
    struct eng_sample_params sp;
};

struct bat_plan {
    uint32_t magic;
    uint32_t cap_seqs;     /* capacity of seqs[] */
    uint32_t cap_tables;   /* capacity of tables[] */
    uint32_t cap_freed;    /* capacity of freed[] */
    uint64_t step;         /* scheduler step that wrote it */
    uint64_t generation;   /* scheduler arena generation */
    uint32_t n_seqs;
    uint32_t n_tokens;     /* sum of n_new */
    uint32_t n_tables;     /* block ids used in tables[] */
    uint32_t n_freed;
    uint32_t n_decode;     /* sequences with n_new == 1 that continue decoding */
    uint32_t off_seqs;     /* from this struct */
    uint32_t off_tables;
    uint32_t off_freed;
};

static inline struct bat_plan_seq *bat_plan_seqs(struct bat_plan *p)
{
    return (struct bat_plan_seq *)((char *)p + p->off_seqs);
}
static inline int32_t *bat_plan_tables(struct bat_plan *p)
{
    return (int32_t *)((char *)p + p->off_tables);
}
static inline int32_t *bat_plan_freed(struct bat_plan *p)
{
    return (int32_t *)((char *)p + p->off_freed);
}

/* The engine's answer for one plan sequence. Logprobs only when the
 * entry's sp.n_logprobs asked (has_lp): the batcher copies them into the
 * cell's logprob records (shm_pipe.h) before the token's event. A fixed
 * array: result_size is sizeof, and the results area is small (max_seqs
 * per plan slot). */
struct bat_lp { int32_t id; float logprob; };   /* = struct shm_lp_rec */
struct bat_result {
    int32_t token;
    uint8_t eos;          /* the token ends generation (model EOG set) */
    uint8_t has_lp;       /* logprob and top[0, n_top) are filled */
    uint8_t n_top;        /* <= ENG_SAMPLE_MAX_LOGPROBS, best first */
    uint8_t pad_;
    float logprob;        /* of token (eng_sample_out.logprob) */
    struct bat_lp top[ENG_SAMPLE_MAX_LOGPROBS];
};

/* Bytes a plan needs for max_seqs sequences, max_blocks_per_seq blocks each
 * and n_blocks pool blocks (the bound on freed[]). */
size_t bat_plan_size(uint32_t max_seqs, uint32_t max_blocks_per_seq, uint32_t n_blocks);
/* Lay out an empty plan in mem (size bytes, 8-aligned). 0 or -EINVAL. */
int bat_plan_init(struct bat_plan *p, size_t size, uint32_t max_seqs,
                  uint32_t max_blocks_per_seq, uint32_t n_blocks);

#endif /* BAT_PLAN_H */
