/*
 * eng_stage.h - the engine stage process: `favo stage engine` runs
 * eng_stage_run(), which turns the batcher's plans (bat_plan.h) into engine
 * steps (eng_step.h) and answers with one sampled token per sequence.
 *
 *   batcher --plan[r] (shm_plan_msg)--> engine rank r --done (rank 0)--> batcher
 *             plan slot [r][slot]          |  reads ids from the cells
 *             (bat_plan, in the segment)   |  (shm_cell_bytes: the batcher owns them)
 *                                          v
 *                                   results[slot] (bat_result per plan seq, rank 0)
 *
 * One plan, in order (pipe.md step 3, invariant 3 "consume, then release"):
 *
 *   peek plan[r] -> copy the plan's header, seqs, tables and freed[] into
 *   process memory (the checks below then hold for what is run) -> validate
 *   -> zero every freed[] block (KV invariant K1, no retention) -> build
 *   struct eng_batch (tokens = cell ids + pos, history = ids + n_prompt) ->
 *   eng_step -> rank 0: results[slot][i] = { token, eos }, enqueue the
 *   same shm_plan_msg on done, ring the batcher bell -> release plan[r].
 *
 * A plan that fails validation is a bug in the batcher: its metadata
 * (step, counts, which check) is logged, every sequence is answered with
 * token -1 (eos 0), and the stage carries on. Checks: magic; step equals
 * the message's; n_seqs equals the message's and is within the plan's,
 * the pipe's and this engine's max_seqs; the plan's arrays lie inside the
 * plan slot; sum(n_new) == n_tokens <= max_tokens; per sequence n_new >= 1,
 * pos + n_new <= n_ctx, n_blocks == eng_kv_blocks_for(pos + n_new), its
 * table inside tables[n_tables], every block id < n_blocks and used once
 * in the plan (plan inv 2), the cell live (shm_cell_bytes), tok_off 4-aligned
 * and the ids [tok_off, tok_off + 4 * max(pos + n_new, n_prompt + n_history))
 * inside the cell, finite sampling parameters and n_logprobs <= 20, and
 * (cpu) eng_step_check (ids inside the vocabulary).
 * freed[] ids < n_blocks are zeroed even in a plan refused otherwise.
 *
 * Plan generation: the first plan fixes the generation the stage expects.
 * A plan with another generation comes from a freshly formatted scheduler
 * arena (bat_sched_init): its block ids mean nothing the engine holds, so
 * the whole KV pool is zeroed and the new generation adopted.
 *
 * KV presence (restart safety): the stage records, per block, how many of
 * its 16 positions it has computed since the block was last zeroed. A
 * sequence whose positions [0, pos) are not all computed by THIS process
 * (the engine restarted; its KV pool starts empty) is not run: it is
 * answered with token -1 while the rest of the plan runs normally. The
 * batcher must treat token -1 as "not computed: preempt by recompute"
 * (re-prefill prompt + generated ids), never as a token.
 *
 * Restart (what a new engine costs today): the new process loads the model
 * (SmolLM2-135M: well under a second; the tiny test model: milliseconds),
 * runs its warm-up, sets its up word, then consumes the plan message the
 * dead one had peeked but not released (the ring replays it):
 *   - the slot still holds that step (the dead engine had not answered, or
 *     answered without releasing): it is run again and answered again on
 *     done; the batcher must ignore a done message for a step it already
 *     completed (bat_sched done_step);
 *   - the slot holds a newer step (the batcher completed the replayed one
 *     and reused the slot): the message is stale and dropped without an
 *     answer (its results area belongs to the newer plan).
 * The new KV pool is empty, so every running sequence must be re-prefilled
 * from prompt + generated ids. WHAT THE BATCHER MUST DO: treat a -1 answer
 * (eos 0) as "not computed" and preempt that sequence by recompute (free
 * its blocks, put it back at the head of its class), never as a token.
 * The batcher can also see the restart before any answer: a new engine
 * process writes its own pid into up_pid[ENGINE][rank] before it consumes
 * anything, so a batcher that compares that word with the one it saw when
 * it sent the plan in flight, BEFORE applying a done message, knows the KV
 * is gone (bat_sched_reset_kv: void the plan in flight, preempt every
 * running sequence). The -1 answers are the second line of defence.
 *
 * Overlap (bat_plan.h feed, bat_sched.h "Overlap"): the batcher sends
 * plan N+1 while this stage runs N, so the next plan is usually waiting
 * when N is answered. A decode entry with feed set takes its input id from
 * this rank's own answer to entry feed_src of plan step - 1 (every rank
 * keeps its last plan's ids and answers: they run the same plans and
 * sample alike); the batcher writes that id into the cell only after it
 * completes N, so it is never read from the cell. The sampler's history
 * (penalties) is the cell's ids then it (eng_seq.history_then_input): no
 * copy. A feed this process
 * cannot resolve (it did not run plan step - 1 - a restart - or answered
 * -1 there, or the entry names another sequence) is answered -1, like
 * missing KV. The gap between answering plan N and starting N + 1 is
 * tallied (log2 us buckets) and logged at drain with the fed counts.
 *
 * Re-running a plan in the same process (a batcher that resends a step)
 * is harmless: eng_step writes the KV of exactly the positions it computes
 * (eng_step.h S2), with the same values.
 *
 * Backends: "cpu" (eng_step) or "null" (tokenizer only, no weights read):
 * each sampled sequence gets an ordinary token (ENG_TOK_ATTR_NORMAL, not
 * end-of-generation) chosen from (sp.seed, position of the new token), so
 * the data plane can be measured without compute. Never the default: the
 * caller chooses.
 *
 * Waiting: cfg->poll 0 sleeps on the engine bell (50 ms timeout), 1 spins
 * ~50 us first, 2 spins. The stats stage row is heartbeated and the stats
 * writer flushed before every sleep (and every ~100 ms while busy).
 * Stats: shm_stats_table.h has no engine entries yet, so the stage keeps
 * its steps, tokens, refused plans, sequences without KV and plan times
 * in process memory and logs them (metadata) when it drains.
 * Drain: after *stop or the pipe's draining word, the stage keeps serving
 * until the batcher is down (shm_pipe_stage_up false) and its plan ring is
 * empty, then clears its up word and returns 0.
 *
 * Stage lifecycle:
 *
 *   eng_stage_run: load model/tokenizer, KV pool (n_blocks + 1 scratch),
 *   eng_ctx, attach cells (USER, ret -1), rings, bells
 *        |  warm-up step on the scratch block, then zero it
 *        v
 *      UP (up word = pid) --plan--> step --> results/done --> UP
 *        |  *stop or draining, batcher down, plan ring empty
 *        v
 *      up word 0, free everything (KV zeroed), return 0
 *
 * Errors: eng_stage_run returns 0 after a drain, -EINVAL for a bad cfg, or
 * the -errno of a load or attach failure (logged with what failed).
 * Nothing on the per-plan path allocates or logs (invariant 8) except the
 * one metadata line for a refused plan.
 */
#ifndef ENG_STAGE_H
#define ENG_STAGE_H

#include <stddef.h>
#include <stdint.h>

struct shm_pipe;
struct shm_stats;
struct shm_stats_writer;

struct eng_stage_cfg {
    const struct shm_pipe *pipe;     /* attached by the caller */
    /* Called once, right before the stage reports itself up: start-up is
     * over (files opened, memory mapped, threads started). favo serve
     * installs the stage's seccomp profile here. NULL: nothing. */
    void (*on_ready)(void *arg);
    void *on_ready_arg;
    unsigned rank;                   /* 0 writes results and the done ring */
    const char *model_path;
    const char *backend;             /* "cpu" or "null" */
    unsigned n_threads;              /* 0: 1 */
    uint32_t n_blocks;               /* KV pool blocks: the batcher's bat_sched_cfg.n_blocks */
    uint32_t max_tokens, max_seqs;   /* per step: the batcher's max_batch_tokens / max_seqs */
    uint32_t n_ctx;                  /* positions per sequence (0: min(train, 8192)) */
    const char *kv_type;             /* --kv-cache-type: NULL / "auto", "f16", "f32" */
    int poll;                        /* 0 block, 1 adaptive, 2 spin */
    const volatile int *stop;        /* non-zero: drain (see the top) */
    struct shm_stats *stats;         /* may be NULL */
    struct shm_stats_writer *stats_w;/* may be NULL */
    unsigned stats_row;              /* the stage table row to heartbeat */
};

/* Run the stage until drained (see the top). */
int eng_stage_run(const struct eng_stage_cfg *cfg);

/* What the supervisor needs to size the pipeline without loading weights:
 * the GGUF metadata and tensor table only (the file is mapped, no weight
 * byte is read). 0, or -errno with a message in err. */
struct eng_stage_model_info {
    char arch[32];
    uint32_t n_ctx_train, n_vocab, n_layer;
    uint64_t kv_block_bytes;         /* bytes of one 16-position KV block (eng_kv) */
    char kv_type[8];                 /* the KV element type kv_block_bytes is for */
    uint64_t weight_bytes;
};
int eng_stage_model_info(const char *path, const char *kv_type,
                         struct eng_stage_model_info *out, char *err, size_t errlen);

/* Token the null backend answers for (seed, pos): ordinary, deterministic;
 * -1 when the vocabulary has no ordinary token. For tests. */
struct eng_tok;
int32_t eng_stage_null_token(const struct eng_tok *t, uint64_t seed, uint64_t pos);

#endif /* ENG_STAGE_H */
