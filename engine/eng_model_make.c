/*
 * eng_model_make.c - random-weight GGUF models (see eng_model_make.h).
 *
 * Layout of the work: describe every tensor to the writer (the tensor
 * table must be complete before the header is written), write metadata,
 * then stream each tensor: generate a chunk of f32 rows from the tensor's
 * own PRNG stream, quantize row by row, hand the bytes to the writer.
 */
#include "eng_model_make.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "eng_gguf.h"
#include "eng_gguf_write.h"
#include "eng_quant.h"
#include "eng_types.h"

static const struct eng_model_preset presets[] = {
    /* name          arch      dim  L   H   KV  hd  ffn   vocab   ctx     rope      eps  swa tied bias qkn */
    { "tiny",       "llama",  256, 4,  8,  4,  0, 768,  512,    2048,   10000.f,  1e-5f, 0, 0, 0, 0 },
    { "llama-1b",   "llama", 2048, 16, 32, 8,  0, 8192, 128256, 131072, 500000.f, 1e-5f, 0, 1, 0, 0 },
    { "qwen2-tiny", "qwen2",  256, 4,  8,  2,  0, 768,  512,    4096,   1e6f,     1e-6f, 0, 1, 1, 0 },
    { "gemma3-tiny", "gemma3", 256, 6, 4,  1, 64, 768,  512,    4096,   1e6f,     1e-6f, 128, 1, 0, 1 },
};

const struct eng_model_preset *eng_model_preset_get(const char *name)
{
    for (unsigned i = 0; name && i < sizeof(presets) / sizeof(presets[0]); i++)
        if (!strcmp(presets[i].name, name))
            return &presets[i];
    return NULL;
}

const struct eng_model_preset *eng_model_preset_at(unsigned i)
{
    return i < sizeof(presets) / sizeof(presets[0]) ? &presets[i] : NULL;
}

/* llama.cpp's general.file_type (enum llama_ftype) for an all-`type` model. */
static int file_type_of(uint32_t type)
{
    switch (type) {
    case ENG_TYPE_F32: return 0;
    case ENG_TYPE_F16: return 1;
    case ENG_TYPE_Q4_0: return 2;
    case ENG_TYPE_Q4_1: return 3;
    case ENG_TYPE_Q8_0: return 7;
    case ENG_TYPE_Q5_0: return 8;
    case ENG_TYPE_Q5_1: return 9;
    case ENG_TYPE_Q4_K: return 14;   /* Q4_K_S */
    case ENG_TYPE_Q5_K: return 16;   /* Q5_K_S */
    case ENG_TYPE_Q6_K: return 18;
    case ENG_TYPE_BF16: return 32;
    default: return -1;
    }
}

static void seterr(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void seterr(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (!err || !errlen)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t name_seed(uint64_t seed, const char *name)
{
    uint64_t h = 0xcbf29ce484222325ull ^ seed, s;

    for (const char *p = name; *p; p++)
        h = (h ^ (uint8_t)*p) * 0x100000001b3ull;
    s = h;
    return splitmix(&s);
}

/* ---- synthetic byte-level BPE vocabulary ---- */

struct vocab {
    char *arena;
    size_t alen, acap;
    uint64_t *off;            /* token i: arena[off[i] .. off[i+1]) */
    uint32_t n, cap;
    uint32_t *set;            /* index + 1, open addressing */
    uint32_t set_mask;
    char *marena;             /* merges "A B" */
    size_t mlen, mcap;
    uint64_t *moff;
    uint32_t nm;
};

static uint64_t fnv(const char *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;

    for (size_t i = 0; i < n; i++)
        h = (h ^ (uint8_t)p[i]) * 0x100000001b3ull;
    return h ^ (h >> 31);
}

static int grow(void **p, size_t *cap, size_t need, size_t el)
{
    if (need <= *cap)
        return 0;
    size_t c = *cap ? *cap : 1024;

    while (c < need)
        c *= 2;
    void *q = realloc(*p, c * el);

    if (!q)
        return -ENOMEM;
    *p = q;
    *cap = c;
    return 0;
}

/* Find token bytes in the set; returns a slot (with *found) */
static uint32_t vocab_slot(const struct vocab *v, const char *s, size_t n, int *found)
{
    uint32_t h = (uint32_t)fnv(s, n) & v->set_mask;

    while (v->set[h]) {
        uint32_t i = v->set[h] - 1;
        size_t l = v->off[i + 1] - v->off[i];

        if (l == n && !memcmp(v->arena + v->off[i], s, n)) {
            *found = 1;
            return h;
        }
        h = (h + 1) & v->set_mask;
    }
    *found = 0;
    return h;
}

/* Append a token unless present; 1 added, 0 duplicate, -ENOMEM. */
static int vocab_add(struct vocab *v, const char *s, size_t n)
{
    int found;
    uint32_t slot = vocab_slot(v, s, n, &found);
    size_t cap;

    if (found)
        return 0;
    if (grow((void **)&v->arena, &v->acap, v->alen + n, 1))
        return -ENOMEM;
    cap = v->cap;
    if (grow((void **)&v->off, &cap, (size_t)v->n + 2, sizeof(uint64_t)))
        return -ENOMEM;
    v->cap = (uint32_t)cap;
    memcpy(v->arena + v->alen, s, n);
    v->alen += n;
    v->n++;
    v->off[v->n] = v->alen;
    v->set[slot] = v->n;
    return 1;
}

static void vocab_free(struct vocab *v)
{
    free(v->arena);
    free(v->off);
    free(v->set);
    free(v->marena);
    free(v->moff);
}

static size_t utf8_put(char *o, uint32_t cp)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    o[0] = (char)(0xc0 | (cp >> 6));
    o[1] = (char)(0x80 | (cp & 0x3f));
    return 2;   /* code points here are < 0x800 */
}

/* Merge operands come from printable ASCII (byte tokens 0..93), the space
 * byte ('\xc4\xa0' = byte-token 220) and earlier merges, so English
 * text really merges. */
static uint32_t pick(uint64_t i)
{
    return i < 94 ? (uint32_t)i : i == 94 ? 220 : (uint32_t)(256 + i - 95);
}

static int vocab_synth(struct vocab *v, uint32_t n_vocab, uint64_t seed)
{
    uint32_t nbyte = 0, order[256], cp[256];
    uint8_t seen[256] = { 0 };
    uint64_t rng = seed ^ 0x766f636162ull;   /* "vocab" */
    size_t mcap = 0, moffcap = 0;
    char tmp[80];

    if (n_vocab < 258 || n_vocab > (1u << 24))
        return -EINVAL;
    v->set_mask = 1;
    while (v->set_mask < 2 * n_vocab)
        v->set_mask <<= 1;
    v->set = calloc(v->set_mask, sizeof(*v->set));
    v->set_mask--;
    v->cap = 1024;
    v->off = calloc(v->cap, sizeof(*v->off));
    if (!v->set || !v->off)
        return -ENOMEM;
    /* GPT-2 bytes_to_unicode: printable bytes map to themselves, in order */
    for (uint32_t b = 33; b < 256; b++)
        if (b <= 126 || (b >= 161 && b != 173)) {
            order[nbyte] = b;
            cp[nbyte++] = b;
            seen[b] = 1;
        }
    for (uint32_t b = 0, extra = 0; b < 256; b++)
        if (!seen[b]) {
            order[nbyte] = b;
            cp[nbyte++] = 256 + extra++;
        }
    (void)order;
    for (uint32_t i = 0; i < 256; i++) {
        size_t l = utf8_put(tmp, cp[i]);

        if (vocab_add(v, tmp, l) < 0)
            return -ENOMEM;
    }
    /* merges: a random pair of existing tokens, at most 32 bytes, new */
    while (v->n < n_vocab - 2) {
        uint64_t r = splitmix(&rng);
        uint32_t pool = 95 + (v->n - 256);
        uint32_t a = pick(r % pool), b = pick((r >> 32) % pool);
        size_t la = v->off[a + 1] - v->off[a], lb = v->off[b + 1] - v->off[b];
        int rc;

        if (la + lb > 32)
            continue;
        memcpy(tmp, v->arena + v->off[a], la);
        memcpy(tmp + la, v->arena + v->off[b], lb);
        if ((rc = vocab_add(v, tmp, la + lb)) < 0)
            return rc;
        if (!rc)
            continue;
        if (grow((void **)&v->marena, &mcap, v->mlen + la + lb + 1, 1) ||
            grow((void **)&v->moff, &moffcap, (size_t)v->nm + 2, sizeof(uint64_t)))
            return -ENOMEM;
        if (!v->nm)
            v->moff[0] = 0;
        memcpy(v->marena + v->mlen, v->arena + v->off[a], la);
        v->marena[v->mlen + la] = ' ';
        memcpy(v->marena + v->mlen + la + 1, v->arena + v->off[b], lb);
        v->mlen += la + lb + 1;
        v->moff[++v->nm] = v->mlen;
    }
    if (vocab_add(v, "<|begin_of_text|>", 17) != 1 || vocab_add(v, "<|end_of_text|>", 15) != 1)
        return -EINVAL;
    return 0;
}

static int write_synth_vocab(eng_gguf_writer_t *w, const struct vocab *v)
{
    struct eng_gguf_str *s = malloc(((size_t)v->n + v->nm + 1) * sizeof(*s));
    int32_t *tt = malloc(((size_t)v->n + 1) * sizeof(*tt));
    int rc = -ENOMEM;

    if (!s || !tt)
        goto out;
    if ((rc = eng_gguf_w_str(w, "tokenizer.ggml.model", "gpt2")) ||
        (rc = eng_gguf_w_str(w, "tokenizer.ggml.pre", "gpt-2")))
        goto out;
    for (uint32_t i = 0; i < v->n; i++) {
        s[i].p = v->arena + v->off[i];
        s[i].len = v->off[i + 1] - v->off[i];
        tt[i] = i >= v->n - 2 ? 3 : 1;      /* 3: control, 1: normal */
    }
    if ((rc = eng_gguf_w_arr_str(w, "tokenizer.ggml.tokens", s, v->n)) ||
        (rc = eng_gguf_w_arr(w, "tokenizer.ggml.token_type", ENG_GGUF_I32, tt, v->n)))
        goto out;
    for (uint32_t i = 0; i < v->nm; i++) {
        s[i].p = v->marena + v->moff[i];
        s[i].len = v->moff[i + 1] - v->moff[i];
    }
    if ((rc = eng_gguf_w_arr_str(w, "tokenizer.ggml.merges", s, v->nm)) ||
        (rc = eng_gguf_w_u32(w, "tokenizer.ggml.bos_token_id", v->n - 2)) ||
        (rc = eng_gguf_w_u32(w, "tokenizer.ggml.eos_token_id", v->n - 1)) ||
        (rc = eng_gguf_w_bool(w, "tokenizer.ggml.add_bos_token", 1)))
        goto out;
out:
    free(s);
    free(tt);
    return rc;
}

/* Copy every tokenizer.* key of g, with its type. */
static int copy_vocab(eng_gguf_writer_t *w, const eng_gguf_t *g, char *err, size_t errlen)
{
    for (int64_t i = 0; i < (int64_t)eng_gguf_kv_count(g); i++) {
        struct eng_gguf_str k = eng_gguf_kv_key(g, i), s;
        char key[256];
        uint64_t u = 0, n;
        int64_t v = 0;
        double d = 0;
        int b = 0, rc = 0;
        enum eng_gguf_vtype et;

        if (k.len < 10 || memcmp(k.p, "tokenizer.", 10))
            continue;
        if (k.len >= sizeof(key)) {
            seterr(err, errlen, "vocab key at byte %llu is too long (%llu bytes)",
                   (unsigned long long)eng_gguf_kv_offset(g, i), (unsigned long long)k.len);
            return -EINVAL;
        }
        memcpy(key, k.p, k.len);
        key[k.len] = 0;
        (void)eng_gguf_kv_u64(g, i, &u);
        (void)eng_gguf_kv_i64(g, i, &v);
        (void)eng_gguf_kv_f64(g, i, &d);
        (void)eng_gguf_kv_bool(g, i, &b);
        switch (eng_gguf_kv_type(g, i)) {
        case ENG_GGUF_U8: rc = eng_gguf_w_u8(w, key, (uint8_t)u); break;
        case ENG_GGUF_I8: rc = eng_gguf_w_i8(w, key, (int8_t)v); break;
        case ENG_GGUF_U16: rc = eng_gguf_w_u16(w, key, (uint16_t)u); break;
        case ENG_GGUF_I16: rc = eng_gguf_w_i16(w, key, (int16_t)v); break;
        case ENG_GGUF_U32: rc = eng_gguf_w_u32(w, key, (uint32_t)u); break;
        case ENG_GGUF_I32: rc = eng_gguf_w_i32(w, key, (int32_t)v); break;
        case ENG_GGUF_U64: rc = eng_gguf_w_u64(w, key, u); break;
        case ENG_GGUF_I64: rc = eng_gguf_w_i64(w, key, v); break;
        case ENG_GGUF_F32: rc = eng_gguf_w_f32(w, key, (float)d); break;
        case ENG_GGUF_F64: rc = eng_gguf_w_f64(w, key, d); break;
        case ENG_GGUF_BOOL: rc = eng_gguf_w_bool(w, key, b); break;
        case ENG_GGUF_STRING:
            eng_gguf_kv_str(g, i, &s);
            rc = eng_gguf_w_strn(w, key, s.p, s.len);
            break;
        case ENG_GGUF_ARRAY:
            eng_gguf_kv_arr(g, i, &et, &n);
            if (et == ENG_GGUF_STRING) {
                struct eng_gguf_str *a = malloc((n ? n : 1) * sizeof(*a));

                if (!a)
                    return -ENOMEM;
                for (uint64_t j = 0; j < n; j++)
                    eng_gguf_kv_arr_str(g, i, j, &a[j]);
                rc = eng_gguf_w_arr_str(w, key, a, n);
                free(a);
            } else {
                rc = eng_gguf_w_arr(w, key, et, eng_gguf_kv_arr_data(g, i), n);
            }
            break;
        }
        if (rc) {
            seterr(err, errlen, "copying vocab key '%s': %s", key, strerror(-rc));
            return rc;
        }
    }
    return 0;
}

/* ---- tensors ---- */

enum fill { FILL_RANDOM, FILL_ONE };

struct mtensor {
    char name[64];
    uint32_t type;
    uint32_t ndim;
    uint64_t ne[2];
    enum fill fill;
};

struct tlist {
    struct mtensor t[16 * 64 + 8];
    unsigned n;
};

static void add_t(struct tlist *l, uint32_t type, enum fill fill, uint64_t ne0, uint64_t ne1,
                  const char *fmt, ...) __attribute__((format(printf, 6, 7)));

static void add_t(struct tlist *l, uint32_t type, enum fill fill, uint64_t ne0, uint64_t ne1,
                  const char *fmt, ...)
{
    struct mtensor *t = &l->t[l->n++];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(t->name, sizeof(t->name), fmt, ap);
    va_end(ap);
    t->type = type;
    t->fill = fill;
    t->ne[0] = ne0;
    t->ne[1] = ne1;
    t->ndim = ne1 ? 2 : 1;
}

static void plan(struct tlist *l, const struct eng_model_preset *p, uint32_t wt, uint32_t n_vocab)
{
    uint32_t hd = p->head_dim ? p->head_dim : p->dim / p->n_head;
    uint64_t q = (uint64_t)p->n_head * hd, kv = (uint64_t)p->n_head_kv * hd;
    const uint32_t F = ENG_TYPE_F32;

    l->n = 0;
    add_t(l, wt, FILL_RANDOM, p->dim, n_vocab, "token_embd.weight");
    for (uint32_t i = 0; i < p->n_layer; i++) {
        add_t(l, F, FILL_ONE, p->dim, 0, "blk.%u.attn_norm.weight", i);
        add_t(l, wt, FILL_RANDOM, p->dim, q, "blk.%u.attn_q.weight", i);
        add_t(l, wt, FILL_RANDOM, p->dim, kv, "blk.%u.attn_k.weight", i);
        add_t(l, wt, FILL_RANDOM, p->dim, kv, "blk.%u.attn_v.weight", i);
        if (p->qkv_bias) {
            add_t(l, F, FILL_RANDOM, q, 0, "blk.%u.attn_q.bias", i);
            add_t(l, F, FILL_RANDOM, kv, 0, "blk.%u.attn_k.bias", i);
            add_t(l, F, FILL_RANDOM, kv, 0, "blk.%u.attn_v.bias", i);
        }
        if (p->qk_norm) {
            add_t(l, F, FILL_ONE, hd, 0, "blk.%u.attn_q_norm.weight", i);
            add_t(l, F, FILL_ONE, hd, 0, "blk.%u.attn_k_norm.weight", i);
        }
        add_t(l, wt, FILL_RANDOM, q, p->dim, "blk.%u.attn_output.weight", i);
        if (p->qk_norm)
            add_t(l, F, FILL_ONE, p->dim, 0, "blk.%u.post_attention_norm.weight", i);
        add_t(l, F, FILL_ONE, p->dim, 0, "blk.%u.ffn_norm.weight", i);
        add_t(l, wt, FILL_RANDOM, p->dim, p->ffn, "blk.%u.ffn_gate.weight", i);
        add_t(l, wt, FILL_RANDOM, p->dim, p->ffn, "blk.%u.ffn_up.weight", i);
        add_t(l, wt, FILL_RANDOM, p->ffn, p->dim, "blk.%u.ffn_down.weight", i);
        if (p->qk_norm)
            add_t(l, F, FILL_ONE, p->dim, 0, "blk.%u.post_ffw_norm.weight", i);
    }
    add_t(l, F, FILL_ONE, p->dim, 0, "output_norm.weight");
    if (!p->tied)
        add_t(l, wt, FILL_RANDOM, p->dim, n_vocab, "output.weight");
}

static int write_metadata(eng_gguf_writer_t *w, const struct eng_model_preset *p, uint32_t wt,
                          uint32_t n_vocab, uint64_t seed)
{
    char k[128], name[128];
    const char *a = p->arch;
    int rc = 0;

#define KEY(suffix) (snprintf(k, sizeof(k), "%s." suffix, a), k)
    snprintf(name, sizeof(name), "favo random %s %s seed %llu", p->name,
             eng_type_get(wt)->name, (unsigned long long)seed);
    if ((rc = eng_gguf_w_str(w, "general.architecture", a)) ||
        (rc = eng_gguf_w_str(w, "general.type", "model")) ||
        (rc = eng_gguf_w_str(w, "general.name", name)) ||
        (rc = eng_gguf_w_u32(w, KEY("block_count"), p->n_layer)) ||
        (rc = eng_gguf_w_u32(w, KEY("context_length"), p->n_ctx)) ||
        (rc = eng_gguf_w_u32(w, KEY("embedding_length"), p->dim)) ||
        (rc = eng_gguf_w_u32(w, KEY("feed_forward_length"), p->ffn)) ||
        (rc = eng_gguf_w_u32(w, KEY("attention.head_count"), p->n_head)) ||
        (rc = eng_gguf_w_u32(w, KEY("attention.head_count_kv"), p->n_head_kv)) ||
        (rc = eng_gguf_w_f32(w, KEY("rope.freq_base"), p->rope_base)) ||
        (rc = eng_gguf_w_f32(w, KEY("attention.layer_norm_rms_epsilon"), p->norm_eps)))
        return rc;
    if (p->head_dim && ((rc = eng_gguf_w_u32(w, KEY("attention.key_length"), p->head_dim)) ||
                        (rc = eng_gguf_w_u32(w, KEY("attention.value_length"), p->head_dim))))
        return rc;
    if (p->sliding_window &&
        (rc = eng_gguf_w_u32(w, KEY("attention.sliding_window"), p->sliding_window)))
        return rc;
    if ((rc = eng_gguf_w_u32(w, "general.file_type", (uint32_t)file_type_of(wt))) ||
        (rc = eng_gguf_w_u32(w, KEY("vocab_size"), n_vocab)))
        return rc;
    if (!strcmp(a, "llama") &&
        (rc = eng_gguf_w_u32(w, KEY("rope.dimension_count"), p->dim / p->n_head)))
        return rc;
#undef KEY
    return eng_gguf_w_u32(w, "general.quantization_version", 2);
}

/* Normal-ish values with standard deviation 0.02: the sum of four 16-bit
 * uniforms (Irwin-Hall), centred and scaled. Cheap and deterministic. */
static void fill_random(float *x, uint64_t n, uint64_t *rng)
{
    const float scale = 0.02f / 37837.23f;   /* sd of the sum: 65536 / sqrt(3) */

    for (uint64_t i = 0; i < n; i++) {
        uint64_t r = splitmix(rng);
        uint32_t s = (uint32_t)(r & 0xffff) + (uint32_t)((r >> 16) & 0xffff) +
                     (uint32_t)((r >> 32) & 0xffff) + (uint32_t)(r >> 48);

        x[i] = ((float)s - 131070.0f) * scale;
    }
}

/*
 * Tensor data is made a chunk of rows at a time by up to MAKE_THREADS
 * threads, each taking a contiguous share of the chunk's rows. Row r of a
 * tensor draws from its own stream, seeded by (seed, name, r), so the bytes
 * do not depend on how rows are shared between threads.
 */
#define MAKE_THREADS 8

struct job {
    const struct mtensor *t;
    uint64_t tseed, r0, nr;      /* rows [r0, r0 + nr) of the tensor */
    float *f;                    /* this job's f32 scratch, nr * ne0 */
    uint8_t *q;                  /* where its quantized rows go */
    size_t rb;
    int rc;
};

static void *run_job(void *arg)
{
    struct job *j = arg;
    uint64_t n0 = j->t->ne[0];

    j->rc = 0;
    for (uint64_t r = 0; r < j->nr; r++) {
        float *x = j->f + r * n0;
        uint64_t rng = j->tseed ^ ((j->r0 + r) * 0xd1b54a32d192ed03ull);
        int rc;

        if (j->t->fill == FILL_ONE) {
            for (uint64_t i = 0; i < n0; i++)
                x[i] = 1.0f;
        } else {
            fill_random(x, n0, &rng);
        }
        rc = eng_quant_row(j->t->type, x, j->q + r * j->rb, (int64_t)n0);
        if (rc && !j->rc)
            j->rc = rc;
    }
    return NULL;
}

static int write_tensor(eng_gguf_writer_t *w, const struct mtensor *t, uint64_t seed,
                        float *f, void *q, uint64_t chunk_el, unsigned nthreads)
{
    uint64_t rows = t->ndim > 1 ? t->ne[1] : 1, n0 = t->ne[0];
    uint64_t per = chunk_el / n0 ? chunk_el / n0 : 1, tseed = name_seed(seed, t->name);
    size_t rb = eng_type_row_size(t->type, n0);

    for (uint64_t r0 = 0; r0 < rows; r0 += per) {
        uint64_t nr = rows - r0 < per ? rows - r0 : per, share, done = 0;
        struct job jobs[MAKE_THREADS];
        pthread_t tid[MAKE_THREADS];
        uint8_t joined[MAKE_THREADS] = { 0 };
        unsigned nj = 0;
        int rc = 0;

        /* small chunks are not worth a thread */
        unsigned nt = nr * n0 < (1u << 15) ? 1 : nthreads;

        share = (nr + nt - 1) / nt;
        for (; done < nr; nj++) {
            struct job *j = &jobs[nj];

            j->t = t;
            j->tseed = tseed;
            j->r0 = r0 + done;
            j->nr = nr - done < share ? nr - done : share;
            j->f = f + done * n0;
            j->q = (uint8_t *)q + done * rb;
            j->rb = rb;
            done += j->nr;
        }
        for (unsigned k = 1; k < nj; k++) {
            if (pthread_create(&tid[k], NULL, run_job, &jobs[k]))
                run_job(&jobs[k]);       /* no thread: do it here */
            else
                joined[k] = 1;
        }
        run_job(&jobs[0]);
        for (unsigned k = 1; k < nj; k++)
            if (joined[k])
                pthread_join(tid[k], NULL);
        for (unsigned k = 0; k < nj; k++)
            if (jobs[k].rc && !rc)
                rc = jobs[k].rc;
        if (rc || (rc = eng_gguf_w_data(w, q, nr * rb)))
            return rc;
    }
    return 0;
}

static unsigned make_threads(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);

    return n < 1 ? 1 : n > MAKE_THREADS ? MAKE_THREADS : (unsigned)n;
}

int eng_model_make(const struct eng_model_make_opts *o, char *err, size_t errlen)
{
    const struct eng_model_preset *p = o->custom ? o->custom : eng_model_preset_get(o->preset);
    const struct eng_type_info *ti = eng_type_get(o->type);
    eng_gguf_writer_t *w = NULL;
    eng_gguf_t *vg = NULL;
    struct vocab v = { 0 };
    struct tlist *l = NULL;
    uint32_t n_vocab;
    const uint64_t chunk_el = 1u << 20;
    float *f = NULL;
    void *q = NULL;
    char tmp[4096];
    int fd = -1, created = 0, rc;
    unsigned nthreads = o->threads ? o->threads : make_threads();

    if (err && errlen)
        err[0] = 0;
    if (!p) {
        seterr(err, errlen, "unknown preset '%s' (tiny, llama-1b, qwen2-tiny, gemma3-tiny)",
               o->preset ? o->preset : "");
        return -EINVAL;
    }
    if (!ti || file_type_of(o->type) < 0) {
        seterr(err, errlen, "weight type %u is not one model make writes "
               "(f32 f16 bf16 q4_0 q4_1 q5_0 q5_1 q8_0 q4_k q5_k q6_k)", o->type);
        return -EINVAL;
    }
    if (!p->n_head || !p->n_head_kv || p->n_head % p->n_head_kv || !p->dim || !p->ffn ||
        p->n_layer > 64 || (!p->head_dim && p->dim % p->n_head)) {
        seterr(err, errlen, "preset '%s': inconsistent shape", p->name);
        return -EINVAL;
    }
    if (nthreads > MAKE_THREADS)
        nthreads = MAKE_THREADS;
    if (!o->out || snprintf(tmp, sizeof(tmp), "%s.tmp", o->out) >= (int)sizeof(tmp)) {
        seterr(err, errlen, "bad output path");
        return -EINVAL;
    }
    if (!(l = malloc(sizeof(*l))) || !(f = malloc(chunk_el * sizeof(float)))) {
        rc = -ENOMEM;
        goto oom;
    }
    if ((rc = eng_gguf_writer_new(&w, 32)))
        goto oom;
    /* vocabulary first: it fixes n_vocab */
    if (o->vocab) {
        uint64_t nt;
        enum eng_gguf_vtype et;
        char verr[512];

        if ((rc = eng_gguf_open(&vg, o->vocab, verr, sizeof(verr)))) {
            seterr(err, errlen, "--vocab %s: %s", o->vocab, verr);
            goto out;
        }
        if (eng_gguf_get_arr(vg, "tokenizer.ggml.tokens", &et, &nt) || et != ENG_GGUF_STRING ||
            nt < 2 || nt > (1u << 24)) {
            seterr(err, errlen, "--vocab %s: no usable tokenizer.ggml.tokens string array",
                   o->vocab);
            rc = -EINVAL;
            goto out;
        }
        n_vocab = (uint32_t)nt;
    } else {
        n_vocab = p->n_vocab;
        if ((rc = vocab_synth(&v, n_vocab, o->seed))) {
            seterr(err, errlen, "synthetic vocabulary of %u tokens: %s", n_vocab, strerror(-rc));
            goto out;
        }
    }
    if ((rc = write_metadata(w, p, o->type, n_vocab, o->seed)) ||
        (rc = vg ? copy_vocab(w, vg, err, errlen) : write_synth_vocab(w, &v)))
        goto io;
    plan(l, p, o->type, n_vocab);
    {
        for (unsigned i = 0; i < l->n; i++) {
            struct mtensor *t = &l->t[i];
            const struct eng_type_info *tt = eng_type_get(t->type);

            if (t->ne[0] % tt->blck) {
                seterr(err, errlen, "tensor '%s': row length %llu is not a multiple of the "
                       "%s block size %u", t->name, (unsigned long long)t->ne[0], tt->name,
                       tt->blck);
                rc = -EINVAL;
                goto out;
            }
            if (t->ne[0] > chunk_el) {
                seterr(err, errlen, "tensor '%s': rows of %llu elements are too long",
                       t->name, (unsigned long long)t->ne[0]);
                rc = -EINVAL;
                goto out;
            }
            if ((rc = eng_gguf_w_tensor(w, t->name, t->type, t->ndim, t->ne)))
                goto io;
        }
        /* quantized bytes of a chunk never exceed 4 bytes per element */
        if (!(q = malloc(chunk_el * 4 + 4096))) {
            rc = -ENOMEM;
            goto oom;
        }
    }
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        rc = -errno;
        seterr(err, errlen, "cannot create %s: %s", tmp, strerror(-rc));
        goto out;
    }
    created = 1;
    if ((rc = eng_gguf_w_begin(w, fd)))
        goto io;
    for (unsigned i = 0; i < l->n; i++) {
        if ((rc = write_tensor(w, &l->t[i], o->seed, f, q, chunk_el, nthreads))) {
            if (rc == -EDOM || rc == -EINVAL)
                seterr(err, errlen, "tensor '%s': quantizing to %s failed: %s", l->t[i].name,
                       ti->name, strerror(-rc));
            goto io;
        }
    }
    if ((rc = eng_gguf_w_end(w)))
        goto io;
    if (close(fd) < 0) {
        rc = -errno;
        fd = -1;
        goto io;
    }
    fd = -1;
    if (rename(tmp, o->out) < 0) {
        rc = -errno;
        seterr(err, errlen, "cannot rename %s to %s: %s", tmp, o->out, strerror(-rc));
        goto out;
    }
    rc = 0;
    goto out;
oom:
    seterr(err, errlen, "out of memory");
    goto out;
io:
    if (err && errlen && !err[0])
        seterr(err, errlen, "writing %s: %s", tmp, strerror(-rc));
out:
    if (fd >= 0)
        close(fd);
    if (rc && created)
        unlink(tmp);
    eng_gguf_writer_free(w);
    eng_gguf_close(vg);
    vocab_free(&v);
    free(l);
    free(f);
    free(q);
    return rc;
}
