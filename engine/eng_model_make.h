/*
 * eng_model_make.h - deterministic random-weight GGUF models for tests and
 * benchmarks (`favo model make`).
 *
 * A preset fixes the architecture and shape; the caller picks the weight
 * type of the matrices (f32, f16, q8_0, q4_0, q4_k; norms and biases stay
 * f32 as llama.cpp's converters write them), the vocabulary and the seed.
 * Tensor names, shapes and metadata keys are the ones llama.cpp's
 * converters write for that architecture:
 *
 *   token_embd.weight            [dim, vocab]
 *   blk.N.attn_norm.weight       [dim]
 *   blk.N.attn_q.weight          [dim, heads*hd]      (+ .bias [heads*hd], qwen2)
 *   blk.N.attn_k.weight          [dim, kv_heads*hd]   (+ .bias, qwen2)
 *   blk.N.attn_v.weight          [dim, kv_heads*hd]   (+ .bias, qwen2)
 *   blk.N.attn_output.weight     [heads*hd, dim]
 *   blk.N.attn_q_norm/attn_k_norm.weight [hd]          (gemma3)
 *   blk.N.post_attention_norm.weight [dim]             (gemma3)
 *   blk.N.ffn_norm.weight        [dim]
 *   blk.N.ffn_gate/ffn_up.weight [dim, ffn]
 *   blk.N.ffn_down.weight        [ffn, dim]
 *   blk.N.post_ffw_norm.weight   [dim]                 (gemma3)
 *   output_norm.weight           [dim]
 *   output.weight                [dim, vocab]         (untied presets only)
 *
 * Determinism: the file is a pure function of (preset, type, vocab file,
 * seed): each row of each tensor draws from its own splitmix64 stream
 * seeded by the seed, the tensor's name and the row, so files are
 * byte-for-byte reproducible whatever the number of threads (one per core,
 * up to 8, each generating and quantizing a share of every chunk of rows). Weights are normal-ish (sum of four uniforms)
 * with std 0.02, norms are 1.0, so a forward pass stays numerically sane.
 *
 * Streaming: metadata is built in memory, tensor data is generated,
 * quantized (eng_quant_row) and written a chunk of rows at a time; memory
 * use is a few MB whatever the model size.
 *
 * Vocabulary: --vocab FILE copies every tokenizer.* key of a GGUF file
 * (a vocab-only file or a model); without it a synthetic byte-level BPE
 * vocabulary (tokenizer.ggml.model "gpt2", pre "gpt-2") of the preset's
 * size is generated: the 256 byte tokens in GPT-2's byte-to-unicode form,
 * seeded random merges, and <|begin_of_text|> / <|end_of_text|> last.
 */
#ifndef ENG_MODEL_MAKE_H
#define ENG_MODEL_MAKE_H

#include <stddef.h>
#include <stdint.h>

struct eng_model_preset {
    const char *name;
    const char *arch;         /* general.architecture */
    uint32_t dim, n_layer, n_head, n_head_kv;
    uint32_t head_dim;        /* 0: dim / n_head (and no key_length keys) */
    uint32_t ffn;
    uint32_t n_vocab;         /* synthetic vocabulary size */
    uint32_t n_ctx;
    float rope_base, norm_eps;
    uint32_t sliding_window;  /* gemma3 */
    uint8_t tied;             /* no output.weight: the embedding is reused */
    uint8_t qkv_bias;         /* qwen2 */
    uint8_t qk_norm;          /* gemma3: q/k norms and post-norms */
};

/* Preset by name, or NULL. */
const struct eng_model_preset *eng_model_preset_get(const char *name);
/* The i-th preset, NULL past the end (for --help and tests). */
const struct eng_model_preset *eng_model_preset_at(unsigned i);

struct eng_model_make_opts {
    const char *preset;       /* tiny, llama-1b, qwen2-tiny, gemma3-tiny */
    uint32_t type;            /* enum eng_type of the matrices */
    const char *out;          /* output path; written to OUT.tmp, then renamed */
    const char *vocab;        /* GGUF to copy tokenizer.* keys from, or NULL */
    uint64_t seed;
    const struct eng_model_preset *custom; /* overrides preset when non-NULL */
    unsigned threads;         /* 0: one per core (at most 8); output is the same */
};

/*
 * Write the model. 0, or -errno with a one-line message in err (unknown
 * preset or type, a shape the type's block size does not divide, vocab
 * file errors, I/O errors). On failure no file is left at opts->out.
 */
int eng_model_make(const struct eng_model_make_opts *opts, char *err, size_t errlen);

#endif /* ENG_MODEL_MAKE_H */
