/*
 * eng_model.h - a model loaded from GGUF: hyperparameters, per-layer weight
 * tensors, and the memory that holds them.
 *
 * Loading (eng_model_load):
 *
 *   file --mmap--> eng_gguf_t --check keys/shapes--> eng_model
 *                                    |
 *                                    +--copy--> anonymous memory (THP, mlock
 *                                               where RLIMIT_MEMLOCK allows)
 *
 * Weights are COPIED out of the file mapping into one anonymous region,
 * each tensor 64-byte aligned, rows as the kernels (eng_quant.h) read them.
 * Reading weights through the page cache of a file mapping costs decode
 * speed (TLB misses on 4 KiB pages, no huge pages for file-backed memory);
 * ENG_MODEL_USE_MMAP keeps them in the mapping instead, for measuring that.
 * The GGUF stays open after loading for its metadata (the tokenizer reads
 * its vocabulary from it); eng_model_gguf() hands it out.
 *
 * Architectures (tensors named as llama.cpp's converters write them):
 *   llama  - RMSNorm, RoPE on consecutive pairs (Q/K permuted by the
 *            converter), GQA, SiLU-gated FFN, optional rope_freqs.
 *   qwen2  - as llama with NEOX RoPE (rotate halves) and Q/K/V biases.
 *   gemma3 - embeddings * sqrt(n_embd), GELU-tanh gate, per-head Q/K
 *            RMSNorm, post-attention and post-FFN norms, sliding-window
 *            layers (pattern from the file, default 6: every 6th layer is
 *            global) with their own RoPE base (default 10000).
 * Any other general.architecture is refused with a message listing these.
 *
 * Invariants:
 *   M1. Every tensor used by the forward pass has been shape-checked against
 *       the hyperparameters; its data lies inside its backing memory.
 *   M2. n_head is a multiple of n_head_kv (GQA groups are whole).
 *   M3. After load, the model is read-only and may be shared by threads.
 *
 * Errors: -EINVAL with a message naming the key or tensor at fault (and the
 * expected and found shapes), -ENOMEM, or -errno from the file.
 */
#ifndef ENG_MODEL_H
#define ENG_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "eng_gguf.h"
#include "eng_types.h"

enum eng_arch { ENG_ARCH_LLAMA = 0, ENG_ARCH_QWEN2, ENG_ARCH_GEMMA3, ENG_ARCH_COUNT };

/* What distinguishes the architectures in the forward pass (eng_arch.c). */
struct eng_arch_info {
    const char *name;         /* general.architecture value */
    uint8_t rope_neox;        /* rotate halves instead of consecutive pairs */
    uint8_t qkv_bias;         /* attn_{q,k,v}.bias present (qwen2) */
    uint8_t qk_norm;          /* per-head attn_{q,k}_norm (gemma3) */
    uint8_t post_norms;       /* post_attention_norm, post_ffw_norm (gemma3) */
    uint8_t gelu;             /* GELU-tanh instead of SiLU on the gate */
    uint8_t embd_scale;       /* embeddings * sqrt(n_embd) */
    uint8_t swa_pattern;      /* default sliding-window pattern, 0 = none */
};

const struct eng_arch_info *eng_arch_get(enum eng_arch a);
/* Architecture by name; -1 when unsupported. */
int eng_arch_by_name(const char *name, size_t len);
/* "llama, qwen2, gemma3" for error messages. */
const char *eng_arch_list(void);

/* One weight: a row-major matrix of ne1 rows of ne0 elements (ne1 = 1 for
 * vectors). data is NULL for an optional tensor the file does not have. */
struct eng_tensor {
    const void *data;
    uint32_t type;            /* enum eng_type */
    uint64_t ne0, ne1;
    size_t row_bytes;
};

struct eng_layer {
    struct eng_tensor attn_norm, wq, wk, wv, wo;
    struct eng_tensor bq, bk, bv;               /* qwen2 */
    struct eng_tensor q_norm, k_norm;           /* gemma3 */
    struct eng_tensor post_attn_norm, post_ffn_norm; /* gemma3 */
    struct eng_tensor ffn_norm, gate, up, down;
    uint8_t swa;              /* sliding-window layer */
    float rope_base;          /* this layer's RoPE base */
};

struct eng_hparams {
    enum eng_arch arch;
    uint32_t n_vocab, n_embd, n_layer, n_head, n_head_kv;
    uint32_t head_dim, head_dim_v; /* key/query and value head sizes */
    uint32_t n_ff, n_ctx_train;
    uint32_t rope_dim;        /* dimensions rotated per head (<= head_dim) */
    float rope_base, rope_base_swa, rope_freq_scale;
    float eps;                /* RMSNorm epsilon */
    uint32_t n_swa;           /* sliding window (tokens), 0 = none */
    float attn_scale;         /* applied to q.k */
    float final_softcap;      /* 0 = none */
    float embd_scale;         /* 1, or sqrt(n_embd) for gemma3 */
    uint32_t bos, eos;        /* token ids; UINT32_MAX when absent */
};

enum {
    ENG_MODEL_USE_MMAP = 1u << 0,  /* run from the file mapping, no copy */
    ENG_MODEL_NO_MLOCK = 1u << 1,  /* do not try mlock */
};

struct eng_model {
    struct eng_hparams hp;
    const struct eng_arch_info *ai;
    struct eng_tensor tok_embd, output_norm, output, rope_freqs;
    struct eng_layer *layers;
    eng_gguf_t *gguf;
    void *wmem;               /* anonymous weight memory (NULL with USE_MMAP) */
    size_t wsize;
    size_t weight_bytes;      /* bytes of all weights the forward pass reads */
    unsigned flags;
    uint8_t locked;           /* wmem is mlock'ed */
};

int eng_model_load(struct eng_model **out, const char *path, unsigned flags, char *err,
                   size_t errlen);
/* Same, from an open GGUF whose ownership passes to the model (also on
 * error: it is closed then). */
int eng_model_load_gguf(struct eng_model **out, eng_gguf_t *g, unsigned flags, char *err,
                        size_t errlen);
void eng_model_free(struct eng_model *m);

static inline eng_gguf_t *eng_model_gguf(const struct eng_model *m)
{
    return m->gguf;
}

#endif /* ENG_MODEL_H */
