/*
 * eng_sample.h - turning one sequence's logits into one token.
 *
 * Order of operations (as llama.cpp's default chain, so results compare):
 *   penalties (frequency, presence over the sequence's generated tokens)
 *   -> greedy when temperature <= 0
 *   -> top-k -> softmax at temperature -> top-p -> min-p -> draw.
 *
 * Randomness is counter-based: the uniform draw for the token at position
 * p of a sequence with seed s is a pure function u = hash(s, p)
 * (eng_sample_uniform). A sequence recomputed after an engine restart
 * therefore reproduces exactly the tokens it produced before, whatever
 * else was in the batch (ARCHITECTURE.md, "engine dies").
 *
 * No allocation: the caller passes scratch sized by eng_sample_scratch_size
 * (n_vocab), once, at load time. The logits array is modified in place.
 */
#ifndef ENG_SAMPLE_H
#define ENG_SAMPLE_H

#include <stddef.h>
#include <stdint.h>

#define ENG_SAMPLE_MAX_LOGPROBS 20

struct eng_sample_params {
    float temperature;        /* <= 0: greedy */
    int32_t top_k;            /* <= 0: off */
    float top_p;              /* >= 1: off */
    float min_p;              /* <= 0: off */
    float freq_penalty;       /* subtracted once per earlier occurrence */
    float presence_penalty;   /* subtracted once if the token occurred */
    uint64_t seed;
    uint32_t n_logprobs;      /* top-n log-probabilities to report, <= 20 */
};

struct eng_sample_out {
    int32_t token;
    float logprob;            /* log-softmax of the chosen token after penalties,
                                 before temperature; 0 unless n_logprobs > 0 */
    uint32_t n_top;
    int32_t top_tokens[ENG_SAMPLE_MAX_LOGPROBS];
    float top_logprobs[ENG_SAMPLE_MAX_LOGPROBS];
};

/* Bytes of scratch one concurrent sampler needs for a vocabulary. */
size_t eng_sample_scratch_size(uint32_t n_vocab);

/* Uniform in [0, 1) from (seed, pos): splitmix64 finalizers over both. */
double eng_sample_uniform(uint64_t seed, uint64_t pos);

/*
 * Sample from logits[0..n_vocab) (modified in place). history/n_history:
 * the tokens generated so far, for the penalties (may be NULL/0); extra:
 * one more generated token after them (>= 0), or -1 - a decode fed with
 * a token not yet stored behind the history (eng_step.h). pos: the
 * position the sampled token will take (keys the RNG). scratch: at least
 * eng_sample_scratch_size(n_vocab) bytes, ZEROED once when allocated
 * (the penalty counts live there and are left zero after each call). Returns the token
 * (also in out->token when out is not NULL).
 */
int32_t eng_sample(float *logits, uint32_t n_vocab, const struct eng_sample_params *sp,
                   const int32_t *history, uint32_t n_history, int32_t extra, uint64_t pos,
                   void *scratch,
                   struct eng_sample_out *out);

#endif /* ENG_SAMPLE_H */
