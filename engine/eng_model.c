/*
 * eng_model.c - load a GGUF model: hyperparameters from "<arch>.*" keys,
 * tensors by llama.cpp's names, shape checks, and the copy of the weights
 * into anonymous memory (see eng_model.h).
 */
#include "eng_model.h"

#include "favo_base.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>

#define ENG_TENSOR_ALIGN 64

static int fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (err && errlen) {
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -EINVAL;
}

struct loader {
    eng_gguf_t *g;
    char arch[32];
    char *err;
    size_t errlen;
};

/* "<arch>.<suffix>" as a u32; *out unchanged when absent. Required keys
 * fail with a message naming the key. */
static int key_u32(struct loader *l, const char *suffix, uint32_t *out, int required)
{
    char key[128];
    int rc;

    snprintf(key, sizeof(key), "%s.%s", l->arch, suffix);
    rc = eng_gguf_get_u32(l->g, key, out);
    if (rc == -ENOENT && !required)
        return 0;
    if (rc == -ENOENT)
        return fail(l->err, l->errlen, "model: required key '%s' is missing", key);
    if (rc)
        return fail(l->err, l->errlen, "model: key '%s' is not an unsigned 32-bit integer", key);
    return 0;
}

static int key_f32(struct loader *l, const char *suffix, float *out)
{
    char key[128];
    int rc;

    snprintf(key, sizeof(key), "%s.%s", l->arch, suffix);
    rc = eng_gguf_get_f32(l->g, key, out);
    if (rc == -ENOENT)
        return 0;
    if (rc)
        return fail(l->err, l->errlen, "model: key '%s' is not a float", key);
    return 0;
}

static const char *type_name(uint32_t t)
{
    const struct eng_type_info *ti = eng_type_get(t);

    return ti ? ti->name : "?";
}

/*
 * Find tensor `name` and check it is a matrix of ne1 rows of ne0 elements
 * (ne1 == 0: a vector of ne0). Float-only tensors (norms, biases) must be
 * F32. Missing optional tensors leave t->data NULL.
 */
static int tensor(struct loader *l, struct eng_tensor *t, const char *name, uint64_t ne0,
                  uint64_t ne1, int required, int f32_only)
{
    const struct eng_gguf_tensor *gt = eng_gguf_find_tensor(l->g, name);

    memset(t, 0, sizeof(*t));
    if (!gt) {
        if (required)
            return fail(l->err, l->errlen, "model: tensor '%s' is missing (%s architecture)",
                        name, l->arch);
        return 0;
    }
    if (gt->ne[0] != ne0 || gt->ne[1] != (ne1 ? ne1 : 1) || gt->ne[2] != 1 || gt->ne[3] != 1)
        return fail(l->err, l->errlen,
                    "model: tensor '%s' has shape [%llu, %llu, %llu, %llu], expected [%llu, %llu]",
                    name, (unsigned long long)gt->ne[0], (unsigned long long)gt->ne[1],
                    (unsigned long long)gt->ne[2], (unsigned long long)gt->ne[3],
                    (unsigned long long)ne0, (unsigned long long)(ne1 ? ne1 : 1));
    if (f32_only && gt->type != ENG_TYPE_F32)
        return fail(l->err, l->errlen, "model: tensor '%s' has type %s, expected f32", name,
                    type_name(gt->type));
    if (!eng_type_get(gt->type))
        return fail(l->err, l->errlen, "model: tensor '%s' has unknown type %u", name,
                    gt->type);
    t->data = gt->data;
    t->type = gt->type;
    t->ne0 = ne0;
    t->ne1 = ne1 ? ne1 : 1;
    t->row_bytes = eng_type_row_size(gt->type, ne0);
    if (!t->row_bytes)
        return fail(l->err, l->errlen,
                    "model: tensor '%s': row of %llu elements is not whole %s blocks", name,
                    (unsigned long long)ne0, type_name(gt->type));
    return 0;
}

static int read_hparams(struct loader *l, struct eng_model *m)
{
    struct eng_hparams *hp = &m->hp;
    const struct eng_gguf_tensor *emb;
    char key[128];
    uint32_t v;
    int rc;

    hp->rope_base = 10000.0f;
    hp->rope_base_swa = 10000.0f;
    hp->rope_freq_scale = 1.0f;
    hp->eps = 1e-5f;
    hp->bos = hp->eos = UINT32_MAX;
    if ((rc = key_u32(l, "embedding_length", &hp->n_embd, 1)) ||
        (rc = key_u32(l, "block_count", &hp->n_layer, 1)) ||
        (rc = key_u32(l, "feed_forward_length", &hp->n_ff, 1)) ||
        (rc = key_u32(l, "attention.head_count", &hp->n_head, 1)))
        return rc;
    hp->n_head_kv = hp->n_head;
    if ((rc = key_u32(l, "attention.head_count_kv", &hp->n_head_kv, 0)) ||
        (rc = key_u32(l, "context_length", &hp->n_ctx_train, 0)))
        return rc;
    if (!hp->n_embd || !hp->n_layer || !hp->n_ff || !hp->n_head || !hp->n_head_kv ||
        hp->n_embd > 65536 || hp->n_layer > 1024 || hp->n_ff > 1u << 20 || hp->n_head > 1024)
        return fail(l->err, l->errlen,
                    "model: implausible hyperparameters (%s.embedding_length %u, block_count %u, "
                    "feed_forward_length %u, attention.head_count %u, head_count_kv %u)",
                    l->arch, hp->n_embd, hp->n_layer, hp->n_ff, hp->n_head, hp->n_head_kv);
    if (hp->n_head % hp->n_head_kv) /* M2 */
        return fail(l->err, l->errlen,
                    "model: %s.attention.head_count %u is not a multiple of head_count_kv %u",
                    l->arch, hp->n_head, hp->n_head_kv);
    hp->head_dim = hp->n_embd / hp->n_head;
    if ((rc = key_u32(l, "attention.key_length", &hp->head_dim, 0)))
        return rc;
    hp->head_dim_v = hp->head_dim;
    if ((rc = key_u32(l, "attention.value_length", &hp->head_dim_v, 0)))
        return rc;
    hp->rope_dim = hp->head_dim;
    if ((rc = key_u32(l, "rope.dimension_count", &hp->rope_dim, 0)))
        return rc;
    if (!hp->head_dim || hp->head_dim > 1024 || hp->head_dim % 2 || !hp->head_dim_v ||
        hp->head_dim_v > 1024 || hp->rope_dim > hp->head_dim || hp->rope_dim % 2)
        return fail(l->err, l->errlen,
                    "model: implausible head sizes (key_length %u, value_length %u, "
                    "rope.dimension_count %u)", hp->head_dim, hp->head_dim_v, hp->rope_dim);
    if ((rc = key_f32(l, "rope.freq_base", &hp->rope_base)) ||
        (rc = key_f32(l, "attention.layer_norm_rms_epsilon", &hp->eps)) ||
        (rc = key_f32(l, "final_logit_softcapping", &hp->final_softcap)))
        return rc;
    {
        float factor = 0;
        struct eng_gguf_str st;

        snprintf(key, sizeof(key), "%s.rope.scaling.type", l->arch);
        if ((rc = key_f32(l, "rope.scaling.factor", &factor)))
            return rc;
        if (!eng_gguf_get_str(l->g, key, &st) && eng_gguf_str_eq(st, "linear") && factor > 0)
            hp->rope_freq_scale = 1.0f / factor;
        else if (!eng_gguf_get_str(l->g, key, &st) && !eng_gguf_str_eq(st, "none") &&
                 factor > 0 && factor != 1.0f)
            return fail(l->err, l->errlen, "model: '%s' = '%.*s' is not supported (linear only)",
                        key, (int)FAVO_MIN(st.len, 32), st.p);
    }
    if (!(hp->rope_base > 0) || !(hp->eps > 0) || !isfinite(hp->rope_base))
        return fail(l->err, l->errlen, "model: %s.rope.freq_base or layer_norm_rms_epsilon "
                    "is not a positive number", l->arch);
    if ((rc = key_u32(l, "attention.sliding_window", &hp->n_swa, 0)))
        return rc;
    if ((rc = key_f32(l, "rope.freq_base_swa", &hp->rope_base_swa)) ||
        (rc = key_f32(l, "rope.local.freq_base", &hp->rope_base_swa)))
        return rc;
    hp->attn_scale = 1.0f / sqrtf((float)hp->head_dim);
    hp->embd_scale = m->ai->embd_scale ? sqrtf((float)hp->n_embd) : 1.0f;

    emb = eng_gguf_find_tensor(l->g, "token_embd.weight");
    if (!emb)
        return fail(l->err, l->errlen, "model: tensor 'token_embd.weight' is missing");
    hp->n_vocab = (uint32_t)FAVO_MIN(emb->ne[1], UINT32_MAX);
    v = hp->n_vocab;
    if ((rc = key_u32(l, "vocab_size", &v, 0)))
        return rc;
    if (v != hp->n_vocab || !hp->n_vocab || emb->ne[1] > (1u << 24))
        return fail(l->err, l->errlen, "model: %s.vocab_size %u disagrees with "
                    "token_embd.weight's %llu rows", l->arch, v,
                    (unsigned long long)emb->ne[1]);
    if (!eng_gguf_get_u32(l->g, "tokenizer.ggml.bos_token_id", &v) && v < hp->n_vocab)
        hp->bos = v;
    if (!eng_gguf_get_u32(l->g, "tokenizer.ggml.eos_token_id", &v) && v < hp->n_vocab)
        hp->eos = v;
    return 0;
}

/* Which layers use the sliding window: "<arch>.attention.sliding_window_pattern"
 * as a number n (layer il is local unless (il + 1) % n == 0) or a bool array
 * per layer; otherwise the architecture's default. */
static int swa_layers(struct loader *l, struct eng_model *m)
{
    struct eng_hparams *hp = &m->hp;
    char key[128];
    uint32_t pattern = m->ai->swa_pattern;
    enum eng_gguf_vtype et;
    uint64_t n;
    int rc;

    for (uint32_t il = 0; il < hp->n_layer; il++)
        m->layers[il].rope_base = hp->rope_base;
    if (!hp->n_swa)
        return 0;
    snprintf(key, sizeof(key), "%s.attention.sliding_window_pattern", l->arch);
    if (!eng_gguf_get_arr(l->g, key, &et, &n)) {
        if (n != hp->n_layer)
            return fail(l->err, l->errlen, "model: '%s' has %llu entries for %u layers", key,
                        (unsigned long long)n, hp->n_layer);
        for (uint32_t il = 0; il < hp->n_layer; il++) {
            int64_t b;

            if (eng_gguf_arr_i64(l->g, key, il, &b))
                return fail(l->err, l->errlen, "model: '%s'[%u] is not a number or bool", key,
                            il);
            m->layers[il].swa = b != 0;
        }
        pattern = 0;
    } else if ((rc = key_u32(l, "attention.sliding_window_pattern", &pattern, 0))) {
        return rc;
    } else {
        for (uint32_t il = 0; il < hp->n_layer; il++)
            m->layers[il].swa = pattern ? (il + 1) % pattern != 0 : 1;
    }
    for (uint32_t il = 0; il < hp->n_layer; il++)
        if (m->layers[il].swa)
            m->layers[il].rope_base = hp->rope_base_swa;
    return 0;
}

static int load_tensors(struct loader *l, struct eng_model *m)
{
    const struct eng_hparams *hp = &m->hp;
    const struct eng_arch_info *ai = m->ai;
    uint64_t q_out = (uint64_t)hp->n_head * hp->head_dim;
    uint64_t k_out = (uint64_t)hp->n_head_kv * hp->head_dim;
    uint64_t v_out = (uint64_t)hp->n_head_kv * hp->head_dim_v;
    uint64_t o_in = (uint64_t)hp->n_head * hp->head_dim_v;
    char name[96];
    int rc;

#define T(dst, ne0, ne1, req, f32, ...)                                          \
    do {                                                                         \
        snprintf(name, sizeof(name), __VA_ARGS__);                               \
        if ((rc = tensor(l, dst, name, ne0, ne1, req, f32)))                     \
            return rc;                                                           \
    } while (0)

    T(&m->tok_embd, hp->n_embd, hp->n_vocab, 1, 0, "token_embd.weight");
    T(&m->output_norm, hp->n_embd, 0, 1, 1, "output_norm.weight");
    T(&m->output, hp->n_embd, hp->n_vocab, 0, 0, "output.weight");
    if (!m->output.data)
        m->output = m->tok_embd;              /* tied embeddings */
    T(&m->rope_freqs, hp->rope_dim / 2, 0, 0, 1, "rope_freqs.weight");
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        struct eng_layer *L = &m->layers[il];

        T(&L->attn_norm, hp->n_embd, 0, 1, 1, "blk.%u.attn_norm.weight", il);
        T(&L->wq, hp->n_embd, q_out, 1, 0, "blk.%u.attn_q.weight", il);
        T(&L->wk, hp->n_embd, k_out, 1, 0, "blk.%u.attn_k.weight", il);
        T(&L->wv, hp->n_embd, v_out, 1, 0, "blk.%u.attn_v.weight", il);
        T(&L->wo, o_in, hp->n_embd, 1, 0, "blk.%u.attn_output.weight", il);
        T(&L->bq, q_out, 0, ai->qkv_bias, 1, "blk.%u.attn_q.bias", il);
        T(&L->bk, k_out, 0, ai->qkv_bias, 1, "blk.%u.attn_k.bias", il);
        T(&L->bv, v_out, 0, ai->qkv_bias, 1, "blk.%u.attn_v.bias", il);
        T(&L->q_norm, hp->head_dim, 0, ai->qk_norm, 1, "blk.%u.attn_q_norm.weight", il);
        T(&L->k_norm, hp->head_dim, 0, ai->qk_norm, 1, "blk.%u.attn_k_norm.weight", il);
        T(&L->post_attn_norm, hp->n_embd, 0, ai->post_norms, 1,
          "blk.%u.post_attention_norm.weight", il);
        T(&L->post_ffn_norm, hp->n_embd, 0, ai->post_norms, 1, "blk.%u.post_ffw_norm.weight",
          il);
        T(&L->ffn_norm, hp->n_embd, 0, 1, 1, "blk.%u.ffn_norm.weight", il);
        T(&L->gate, hp->n_embd, hp->n_ff, 1, 0, "blk.%u.ffn_gate.weight", il);
        T(&L->up, hp->n_embd, hp->n_ff, 1, 0, "blk.%u.ffn_up.weight", il);
        T(&L->down, hp->n_ff, hp->n_embd, 1, 0, "blk.%u.ffn_down.weight", il);
    }
#undef T
    return 0;
}

/* Visit every tensor the model holds (output may alias tok_embd). */
#define ENG_LAYER_TENSORS 16
static struct eng_tensor *layer_tensor(struct eng_layer *L, int i)
{
    struct eng_tensor *t[ENG_LAYER_TENSORS] = {
        &L->attn_norm, &L->wq, &L->wk, &L->wv, &L->wo, &L->bq, &L->bk, &L->bv,
        &L->q_norm, &L->k_norm, &L->post_attn_norm, &L->post_ffn_norm,
        &L->ffn_norm, &L->gate, &L->up, &L->down,
    };
    return t[i];
}

static size_t tensor_bytes(const struct eng_tensor *t)
{
    return t->data ? t->row_bytes * t->ne1 : 0;
}

static size_t align_up(size_t v)
{
    return (v + ENG_TENSOR_ALIGN - 1) & ~(size_t)(ENG_TENSOR_ALIGN - 1);
}

/* Copy one tensor to *cursor and point it there. */
static void place(struct eng_tensor *t, char *base, size_t *cursor)
{
    size_t n = tensor_bytes(t);

    if (!n)
        return;
    memcpy(base + *cursor, t->data, n);
    t->data = base + *cursor;
    *cursor = align_up(*cursor + n);
}

static int copy_weights(struct eng_model *m, char *err, size_t errlen)
{
    int tied = m->output.data == m->tok_embd.data;
    size_t total = 0, cursor = 0;
    struct rlimit rl;
    char *base;

    total += align_up(tensor_bytes(&m->tok_embd)) + align_up(tensor_bytes(&m->output_norm)) +
             align_up(tensor_bytes(&m->rope_freqs));
    if (!tied)
        total += align_up(tensor_bytes(&m->output));
    for (uint32_t il = 0; il < m->hp.n_layer; il++)
        for (int i = 0; i < ENG_LAYER_TENSORS; i++)
            total += align_up(tensor_bytes(layer_tensor(&m->layers[il], i)));
    m->weight_bytes = total;
    if (m->flags & ENG_MODEL_USE_MMAP)
        return 0;
    total = (total + (2u << 20) - 1) & ~(size_t)((2u << 20) - 1);
    base = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) {
        snprintf(err, errlen, "model: cannot allocate %zu bytes of weight memory", total);
        return -ENOMEM;
    }
    /* Huge pages first: the copy below faults them in as 2 MiB pages. */
    (void)madvise(base, total, MADV_HUGEPAGE);
    m->wmem = base;
    m->wsize = total;
    place(&m->tok_embd, base, &cursor);
    if (tied)
        m->output = m->tok_embd;
    else
        place(&m->output, base, &cursor);
    place(&m->output_norm, base, &cursor);
    place(&m->rope_freqs, base, &cursor);
    for (uint32_t il = 0; il < m->hp.n_layer; il++)
        for (int i = 0; i < ENG_LAYER_TENSORS; i++)
            place(layer_tensor(&m->layers[il], i), base, &cursor);
    FAVO_ASSERT(cursor <= total); /* M1 */
    (void)madvise(base, total, MADV_DONTDUMP);
    if (!(m->flags & ENG_MODEL_NO_MLOCK) && !getrlimit(RLIMIT_MEMLOCK, &rl) &&
        (rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur >= total) && !mlock(base, total))
        m->locked = 1;
    return 0;
}

int eng_model_load_gguf(struct eng_model **out, eng_gguf_t *g, unsigned flags, char *err,
                        size_t errlen)
{
    struct loader l = { .g = g, .err = err, .errlen = errlen };
    struct eng_model *m = NULL;
    struct eng_gguf_str arch;
    int a, rc;

    *out = NULL;
    if (eng_gguf_get_str(g, "general.architecture", &arch)) {
        rc = fail(err, errlen, "model: key 'general.architecture' is missing or not a string");
        goto fail;
    }
    a = eng_arch_by_name(arch.p, arch.len);
    if (a < 0) {
        rc = fail(err, errlen, "model: architecture '%.*s' is not supported (supported: %s)",
                  (int)FAVO_MIN(arch.len, 64), arch.p, eng_arch_list());
        goto fail;
    }
    snprintf(l.arch, sizeof(l.arch), "%s", eng_arch_get(a)->name);
    m = calloc(1, sizeof(*m));
    if (!m) {
        rc = -ENOMEM;
        goto fail;
    }
    m->gguf = g;
    m->flags = flags;
    m->hp.arch = (enum eng_arch)a;
    m->ai = eng_arch_get(a);
    if ((rc = read_hparams(&l, m)))
        goto fail;
    m->layers = calloc(m->hp.n_layer, sizeof(*m->layers));
    if (!m->layers) {
        rc = -ENOMEM;
        goto fail;
    }
    if ((rc = swa_layers(&l, m)) || (rc = load_tensors(&l, m)) ||
        (rc = copy_weights(m, err, errlen)))
        goto fail;
    *out = m;
    return 0;
fail:
    if (m) {
        m->gguf = NULL;
        eng_model_free(m);
    }
    eng_gguf_close(g);
    return rc;
}

int eng_model_load(struct eng_model **out, const char *path, unsigned flags, char *err,
                   size_t errlen)
{
    eng_gguf_t *g;
    int rc = eng_gguf_open(&g, path, err, errlen);

    *out = NULL;
    if (rc)
        return rc;
    return eng_model_load_gguf(out, g, flags, err, errlen);
}

void eng_model_free(struct eng_model *m)
{
    if (!m)
        return;
    if (m->wmem) {
        if (m->locked)
            munlock(m->wmem, m->wsize);
        munmap(m->wmem, m->wsize);
    }
    free(m->layers);
    if (m->gguf)
        eng_gguf_close(m->gguf);
    free(m);
}
