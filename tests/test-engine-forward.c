/*
 * test-engine-forward.c - model loading and the forward pass end to end.
 *
 *  - Loader errors name what is wrong: an unsupported architecture lists
 *    the supported ones; a missing key, a missing tensor and a misshapen
 *    tensor are named with the expected shape.
 *  - Golden greedy continuations of the two real models in --exact mode
 *    (f32 activations; tests/test-engine-forward-ref.py holds that mode to
 *    1e-6 of a numpy forward pass, and these strings were read and judged
 *    sensible English before being recorded). The fast path must start
 *    the same way.
 *  - Running from the file mapping (--mmap) gives bit-identical logits to
 *    running from the anonymous copy.
 *  - Chunked prefill: a prompt longer than one step's token budget gives
 *    the same logits as one step (eng_step directly).
 */
#include "t_util.h"

#include "eng_gguf.h"
#include "eng_gguf_write.h"
#include "eng_kv.h"
#include "eng_model.h"
#include "eng_model_make.h"
#include "eng_step.h"

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

/* ---- loader errors on small hand-written GGUFs ---- */

enum { DIM = 32, FF = 64, NV = 16 };

struct bad {
    const char *arch;
    int drop_key;        /* omit <arch>.block_count */
    const char *drop;    /* tensor to omit */
    const char *wrong;   /* tensor declared with ne0 + 32 */
};

static void tensor(eng_gguf_writer_t *w, const struct bad *b, const char *name, uint64_t ne0,
                   uint64_t ne1)
{
    uint64_t ne[2] = { ne0, ne1 };

    if (b->drop && !strcmp(b->drop, name))
        return;
    if (b->wrong && !strcmp(b->wrong, name))
        ne[0] += 32;
    assert_int_equal(eng_gguf_w_tensor(w, name, 0 /* f32 */, ne1 ? 2 : 1, ne), 0);
}

/* A one-layer llama-shaped file with zero weights, bent as b says. */
static int load_bad(const struct bad *b, char *err, size_t errlen)
{
    eng_gguf_writer_t *w;
    eng_gguf_t *g;
    struct eng_model *m = NULL;
    void *buf;
    size_t len;
    char key[64];
    int rc;

    assert_int_equal(eng_gguf_writer_new(&w, 0), 0);
    assert_int_equal(eng_gguf_w_str(w, "general.architecture", b->arch), 0);
#define KU32(k, v)                                                              \
    do {                                                                        \
        snprintf(key, sizeof(key), "%s.%s", b->arch, k);                        \
        assert_int_equal(eng_gguf_w_u32(w, key, v), 0);                         \
    } while (0)
    KU32("embedding_length", DIM);
    if (!b->drop_key)
        KU32("block_count", 1);
    KU32("feed_forward_length", FF);
    KU32("attention.head_count", 2);
    KU32("attention.head_count_kv", 1);
#undef KU32
    tensor(w, b, "token_embd.weight", DIM, NV);
    tensor(w, b, "output_norm.weight", DIM, 0);
    tensor(w, b, "blk.0.attn_norm.weight", DIM, 0);
    tensor(w, b, "blk.0.attn_q.weight", DIM, DIM);
    tensor(w, b, "blk.0.attn_k.weight", DIM, DIM / 2);
    tensor(w, b, "blk.0.attn_v.weight", DIM, DIM / 2);
    tensor(w, b, "blk.0.attn_output.weight", DIM, DIM);
    tensor(w, b, "blk.0.ffn_norm.weight", DIM, 0);
    tensor(w, b, "blk.0.ffn_gate.weight", DIM, FF);
    tensor(w, b, "blk.0.ffn_up.weight", DIM, FF);
    tensor(w, b, "blk.0.ffn_down.weight", FF, DIM);
    assert_int_equal(eng_gguf_w_begin(w, -1), 0);
    {
        static char zeros[1 << 16];
        uint64_t total = 0;

        for (uint64_t i = 0; i < 11; i++)
            total += eng_gguf_w_tensor_size(w, i);
        while (total) {
            size_t n = total > sizeof(zeros) ? sizeof(zeros) : (size_t)total;

            assert_int_equal(eng_gguf_w_data(w, zeros, n), 0);
            total -= n;
        }
    }
    assert_int_equal(eng_gguf_w_end(w), 0);
    assert_int_equal(eng_gguf_w_take_mem(w, &buf, &len), 0);
    eng_gguf_writer_free(w);
    assert_int_equal(eng_gguf_open_mem(&g, buf, len, err, errlen), 0);
    rc = eng_model_load_gguf(&m, g, 0, err, errlen);
    eng_model_free(m);
    free(buf);
    return rc;
}

static void test_load_errors(void **state)
{
    char err[512];
    struct bad ok = { .arch = "llama" };
    struct bad arch = { .arch = "mamba" };
    struct bad key = { .arch = "llama", .drop_key = 1 };
    struct bad miss = { .arch = "llama", .drop = "blk.0.ffn_down.weight" };
    struct bad shape = { .arch = "llama", .wrong = "blk.0.attn_k.weight" };
    struct bad qwen = { .arch = "qwen2" };  /* qwen2 needs Q/K/V biases */

    err[0] = 0;
    assert_int_equal(load_bad(&ok, err, sizeof(err)), 0);
    assert_int_equal(load_bad(&arch, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "'mamba'"));
    assert_non_null(strstr(err, "llama, qwen2, gemma3"));
    assert_int_equal(load_bad(&key, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "'llama.block_count'"));
    assert_int_equal(load_bad(&miss, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "'blk.0.ffn_down.weight' is missing"));
    assert_int_equal(load_bad(&shape, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "'blk.0.attn_k.weight'"));
    assert_non_null(strstr(err, "expected [32, 16]"));
    assert_int_equal(load_bad(&qwen, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "'blk.0.attn_q.bias' is missing"));
}

/* ---- golden continuations through `favo run` ---- */

static const char *model_path(const char *file, char *buf, size_t n)
{
    snprintf(buf, n, "%s/%s", t_env("FAVO_MODELS", "models"), file);
    return access(buf, R_OK) ? NULL : buf;
}

static char *favo_run(const char *model, const char *prompt, const char *n, const char *extra)
{
    char *out = NULL, *err = NULL;
    const char *bin = t_env("FAVO_BIN", NULL);
    char *argv[] = { (char *)bin, (char *)"run", (char *)"--model", (char *)model,
                     (char *)"--raw", (char *)"--prompt", (char *)prompt, (char *)"-n",
                     (char *)n, (char *)extra, NULL };
    int rc;

    if (!bin)
        return NULL;
    rc = t_run(argv, &out, &err);
    if (rc != 0)
        fprintf(stderr, "favo run exited %d: %s\n", rc, err ? err : "");
    assert_int_equal(rc, 0);
    free(err);
    return out;
}

struct golden {
    const char *file, *prompt, *exact;
};

/* Recorded after checking the first tokens against the numpy reference
 * and reading the text. */
static const struct golden goldens[] = {
    { "SmolLM2-135M-Instruct.Q4_1.gguf", "The capital of France is",
      " Paris.\n\nThe answer is: 2018-01\n" },
    { "gemma-3-270m-q4_k_m.gguf", "The capital of France is",
      " the capital of the country of France. It is the largest city in France and\n" },
};

static void test_golden(void **state)
{
    int ran = 0;

    if (!getenv("FAVO_BIN"))
        skip();
    for (unsigned i = 0; i < sizeof(goldens) / sizeof(goldens[0]); i++) {
        char path[1024];
        char *exact, *fast;

        if (!model_path(goldens[i].file, path, sizeof(path)))
            continue;
        exact = favo_run(path, goldens[i].prompt, "16", "--exact");
        fast = favo_run(path, goldens[i].prompt, "16", "--threads=2");
        if (strcmp(exact, goldens[i].exact))
            fprintf(stderr, "%s: got [%s]\n", goldens[i].file, exact);
        assert_string_equal(exact, goldens[i].exact);
        /* the fast path: same first words (4-bit models near a tie may
         * part ways later; see test-engine-forward-ref.py) */
        assert_memory_equal(fast, goldens[i].exact, 8);
        free(exact);
        free(fast);
        ran++;
    }
    if (!ran)
        skip();
}

/* ---- the same logits from the mapping and from the copy ---- */

static void run_logits(const char *path, unsigned flags, uint32_t max_tokens,
                       const int32_t *toks, uint32_t n, float *logits)
{
    char err[256] = "";
    struct eng_model *m;
    struct eng_kv kv;
    eng_ctx_t *c;
    struct eng_ctx_opts o = { .n_threads = 2, .max_tokens = max_tokens, .max_seqs = 4,
                              .n_ctx = 256 };
    int32_t blocks[16];
    struct eng_sample_out out;
    uint32_t pos = 0;

    assert_int_equal(eng_model_load(&m, path, flags, err, sizeof(err)), 0);
    if (flags & ENG_MODEL_USE_MMAP)
        assert_null(m->wmem);
    else
        assert_non_null(m->wmem);
    assert_int_equal(eng_kv_init(&kv, &m->hp, 16), 0);
    assert_int_equal(eng_ctx_init(&c, m, &kv, &o), 0);
    for (uint32_t i = 0; i < eng_kv_blocks_for(n); i++)
        blocks[i] = eng_kv_block_alloc(&kv);
    while (pos < n) {
        struct eng_seq s = { .pos = pos, .tokens = toks + pos, .block_table = blocks,
                             .n_blocks = eng_kv_blocks_for(n) };
        struct eng_batch b = { 1, &s };

        s.n_new = n - pos > max_tokens ? max_tokens : n - pos;
        s.no_sample = pos + s.n_new < n;
        assert_int_equal(eng_step(c, &b, &out, logits), 0);
        pos += s.n_new;
    }
    for (uint32_t i = 0; i < eng_kv_blocks_for(n); i++)
        eng_kv_block_release(&kv, blocks[i]);
    eng_ctx_free(c);
    eng_kv_destroy(&kv);
    eng_model_free(m);
}

static void test_mmap_and_chunks(void **state)
{
    char *dir = t_tmpdir(), *path, err[256] = "";
    struct eng_model_make_opts mo = { .preset = "tiny", .type = 8 /* q8_0 */, .seed = 9 };
    int32_t toks[100];
    uint64_t seed = 5;
    float *a, *b, *c;
    size_t nv = 512;

    assert_non_null(dir);
    assert_true(asprintf(&path, "%s/tiny.gguf", dir) > 0);
    mo.out = path;
    assert_int_equal(eng_model_make(&mo, err, sizeof(err)), 0);
    for (int i = 0; i < 100; i++)
        toks[i] = (int32_t)(t_rand(&seed) % 500);
    a = calloc(nv, sizeof(float));
    b = calloc(nv, sizeof(float));
    c = calloc(nv, sizeof(float));
    run_logits(path, 0, 128, toks, 100, a);                  /* copy, one step */
    run_logits(path, ENG_MODEL_USE_MMAP, 128, toks, 100, b); /* mapping, one step */
    run_logits(path, 0, 16, toks, 100, c);                   /* copy, 7 chunks */
    assert_memory_equal(a, b, nv * sizeof(float));
    assert_memory_equal(a, c, nv * sizeof(float));
    free(a);
    free(b);
    free(c);
    unlink(path);
    rmdir(dir);
    free(path);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_load_errors),
        cmocka_unit_test(test_golden),
        cmocka_unit_test(test_mmap_and_chunks),
    };

    return cmocka_run_group_tests(tests, NULL, NULL) ? 1 : 0;
}
