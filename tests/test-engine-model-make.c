/*
 * test-engine-model-make.c - eng_model_make(): presets, the file it writes
 * read back with eng_gguf (shapes, keys, weight statistics, norms),
 * determinism, the synthetic vocabulary, --vocab, and errors that leave no
 * file behind.
 */
#include "t_util.h"

#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "eng_gguf.h"
#include "eng_model_make.h"
#include "eng_quant.h"

static char *dir;

static char *path_in(const char *name)
{
    static char buf[4][4096];
    static int k;
    char *p = buf[k++ & 3];

    snprintf(p, 4096, "%s/%s", dir, name);
    return p;
}

static void test_presets(void **state)
{
    const struct eng_model_preset *p = eng_model_preset_get("llama-1b");

    assert_non_null(p);
    assert_int_equal(p->dim, 2048);
    assert_int_equal(p->n_layer, 16);
    assert_int_equal(p->n_head, 32);
    assert_int_equal(p->n_head_kv, 8);
    assert_int_equal(p->ffn, 8192);
    assert_int_equal(p->n_vocab, 128256);
    p = eng_model_preset_get("tiny");
    assert_int_equal(p->dim, 256);
    assert_int_equal(p->n_layer, 4);
    assert_int_equal(p->n_head, 8);
    assert_int_equal(p->n_head_kv, 4);
    assert_int_equal(p->ffn, 768);
    assert_non_null(eng_model_preset_get("qwen2-tiny"));
    assert_non_null(eng_model_preset_get("gemma3-tiny"));
    assert_null(eng_model_preset_get("huge"));
    assert_non_null(eng_model_preset_at(3));
    assert_null(eng_model_preset_at(4));
}

static unsigned threads;

static void make_ok(const char *preset, uint32_t type, const char *out, const char *vocab,
                    uint64_t seed)
{
    struct eng_model_make_opts o = { preset, type, out, vocab, seed, NULL, threads };
    char err[512];
    int rc = eng_model_make(&o, err, sizeof(err));

    if (rc)
        fail_msg("make %s: %d %s", preset, rc, err);
}

static void test_tiny_f32(void **state)
{
    const char *out = path_in("tiny.gguf");
    eng_gguf_t *g;
    char err[512], name[64];
    uint32_t u;
    struct eng_gguf_str s;
    enum eng_gguf_vtype et;
    uint64_t n;
    const struct eng_gguf_tensor *t;

    make_ok("tiny", ENG_TYPE_F32, out, NULL, 5);
    assert_int_equal(access(path_in("tiny.gguf.tmp"), F_OK), -1);
    assert_int_equal(eng_gguf_open(&g, out, err, sizeof(err)), 0);
    assert_int_equal(eng_gguf_get_str(g, "general.architecture", &s), 0);
    assert_true(eng_gguf_str_eq(s, "llama"));
    assert_int_equal(eng_gguf_get_u32(g, "llama.embedding_length", &u), 0);
    assert_int_equal(u, 256);
    assert_int_equal(eng_gguf_get_u32(g, "llama.block_count", &u), 0);
    assert_int_equal(u, 4);
    assert_int_equal(eng_gguf_get_u32(g, "llama.attention.head_count_kv", &u), 0);
    assert_int_equal(u, 4);
    assert_int_equal(eng_gguf_get_u32(g, "llama.rope.dimension_count", &u), 0);
    assert_int_equal(u, 32);
    assert_int_equal(eng_gguf_get_u32(g, "llama.vocab_size", &u), 0);
    assert_int_equal(u, 512);
    assert_int_equal(eng_gguf_get_u32(g, "general.file_type", &u), 0);
    assert_int_equal(u, 0);
    /* 4 layers x 9 + token_embd + output_norm + output */
    assert_int_equal(eng_gguf_tensor_count(g), 4 * 9 + 3);
    for (int i = 0; i < 4; i++) {
        static const char *const parts[] = { "attn_norm", "attn_q", "attn_k", "attn_v",
                                             "attn_output", "ffn_norm", "ffn_gate",
                                             "ffn_up", "ffn_down" };

        for (unsigned j = 0; j < sizeof(parts) / sizeof(parts[0]); j++) {
            snprintf(name, sizeof(name), "blk.%d.%s.weight", i, parts[j]);
            assert_non_null(eng_gguf_find_tensor(g, name));
        }
    }
    t = eng_gguf_find_tensor(g, "blk.2.attn_k.weight");
    assert_int_equal(t->ne[0], 256);
    assert_int_equal(t->ne[1], 128);
    t = eng_gguf_find_tensor(g, "blk.0.ffn_down.weight");
    assert_int_equal(t->ne[0], 768);
    assert_int_equal(t->ne[1], 256);
    assert_non_null(eng_gguf_find_tensor(g, "output.weight"));
    /* norms are 1, weights have mean ~0 and std ~0.02 */
    t = eng_gguf_find_tensor(g, "blk.1.ffn_norm.weight");
    for (int i = 0; i < 256; i++)
        assert_true(((const float *)t->data)[i] == 1.0f);
    t = eng_gguf_find_tensor(g, "blk.1.ffn_up.weight");
    {
        const float *x = t->data;
        double sum = 0, sq = 0;
        uint64_t cnt = t->ne[0] * t->ne[1];

        for (uint64_t i = 0; i < cnt; i++) {
            sum += x[i];
            sq += (double)x[i] * x[i];
        }
        double mean = sum / (double)cnt, sd = sqrt(sq / (double)cnt - mean * mean);

        assert_true(fabs(mean) < 0.001);
        assert_true(fabs(sd - 0.02) < 0.0005);
    }
    /* the synthetic vocabulary: byte tokens first, unique, specials last */
    assert_int_equal(eng_gguf_get_arr(g, "tokenizer.ggml.tokens", &et, &n), 0);
    assert_int_equal(n, 512);
    assert_int_equal(eng_gguf_arr_str(g, "tokenizer.ggml.tokens", 0, &s), 0);
    assert_true(eng_gguf_str_eq(s, "!"));
    assert_int_equal(eng_gguf_arr_str(g, "tokenizer.ggml.tokens", 220, &s), 0);
    assert_true(eng_gguf_str_eq(s, "\xc4\xa0"));   /* the space byte, 'Ġ' */
    assert_int_equal(eng_gguf_arr_str(g, "tokenizer.ggml.tokens", 511, &s), 0);
    assert_true(eng_gguf_str_eq(s, "<|end_of_text|>"));
    assert_int_equal(eng_gguf_get_u32(g, "tokenizer.ggml.eos_token_id", &u), 0);
    assert_int_equal(u, 511);
    assert_int_equal(eng_gguf_get_arr(g, "tokenizer.ggml.merges", &et, &n), 0);
    assert_int_equal(n, 512 - 256 - 2);
    /* every merge "A B" names two tokens whose concatenation is token 256+i */
    for (uint64_t i = 0; i < n; i++) {
        struct eng_gguf_str m, tok;
        const char *sp;

        assert_int_equal(eng_gguf_arr_str(g, "tokenizer.ggml.merges", i, &m), 0);
        assert_int_equal(eng_gguf_arr_str(g, "tokenizer.ggml.tokens", 256 + i, &tok), 0);
        sp = memchr(m.p, ' ', m.len);
        assert_non_null(sp);
        assert_int_equal(m.len - 1, tok.len);
        assert_memory_equal(m.p, tok.p, (size_t)(sp - m.p));
        assert_memory_equal(sp + 1, tok.p + (sp - m.p), tok.len - (size_t)(sp - m.p));
    }
    eng_gguf_close(g);
    unlink(out);
}

static void test_deterministic(void **state)
{
    size_t l1, l2, l3;
    char *a, *b, *c;

    /* the thread count must not change a byte */
    threads = 1;
    make_ok("gemma3-tiny", ENG_TYPE_Q8_0, path_in("a.gguf"), NULL, 11);
    threads = 3;
    make_ok("gemma3-tiny", ENG_TYPE_Q8_0, path_in("b.gguf"), NULL, 11);
    threads = 0;
    make_ok("gemma3-tiny", ENG_TYPE_Q8_0, path_in("c.gguf"), NULL, 12);
    a = t_read_file(path_in("a.gguf"), &l1);
    b = t_read_file(path_in("b.gguf"), &l2);
    c = t_read_file(path_in("c.gguf"), &l3);
    assert_non_null(a);
    assert_non_null(b);
    assert_non_null(c);
    assert_int_equal(l1, l2);
    assert_memory_equal(a, b, l1);
    assert_true(l1 != l3 || memcmp(a, c, l1));
    free(a);
    free(b);
    free(c);
    unlink(path_in("a.gguf"));
    unlink(path_in("b.gguf"));
    unlink(path_in("c.gguf"));
}

/* Quantized output dequantizes back to the same statistics. */
static void test_q4_0_values(void **state)
{
    eng_gguf_t *g;
    char err[512];
    const struct eng_gguf_tensor *t;
    float row[256];
    double sq = 0;

    make_ok("qwen2-tiny", ENG_TYPE_Q4_0, path_in("q.gguf"), NULL, 3);
    assert_int_equal(eng_gguf_open(&g, path_in("q.gguf"), err, sizeof(err)), 0);
    assert_non_null(eng_gguf_find_tensor(g, "blk.3.attn_v.bias"));
    assert_null(eng_gguf_find_tensor(g, "output.weight"));     /* tied */
    t = eng_gguf_find_tensor(g, "blk.0.attn_q.weight");
    assert_int_equal(t->type, ENG_TYPE_Q4_0);
    for (uint64_t r = 0; r < t->ne[1]; r++) {
        assert_int_equal(eng_dequant_row(t->type, (const uint8_t *)t->data + r * (256 / 32 * 18),
                                         row, 256), 0);
        for (int i = 0; i < 256; i++)
            sq += (double)row[i] * row[i];
    }
    sq = sqrt(sq / (double)(t->ne[1] * 256));
    assert_true(fabs(sq - 0.02) < 0.004);
    eng_gguf_close(g);
    unlink(path_in("q.gguf"));
}

static void test_vocab_file(void **state)
{
    char vocab[4096], err[512];
    eng_gguf_t *g, *v;
    uint64_t n, nv;
    enum eng_gguf_vtype et;
    struct eng_gguf_str a, b;

    snprintf(vocab, sizeof(vocab), "%s/vocab/ggml-vocab-gpt-2.gguf",
             t_env("FAVO_SHARED", "../shared"));
    if (access(vocab, R_OK))
        skip();
    make_ok("tiny", ENG_TYPE_F16, path_in("v.gguf"), vocab, 1);
    assert_int_equal(eng_gguf_open(&g, path_in("v.gguf"), err, sizeof(err)), 0);
    assert_int_equal(eng_gguf_open(&v, vocab, err, sizeof(err)), 0);
    assert_int_equal(eng_gguf_get_arr(g, "tokenizer.ggml.tokens", &et, &n), 0);
    assert_int_equal(eng_gguf_get_arr(v, "tokenizer.ggml.tokens", &et, &nv), 0);
    assert_int_equal(n, nv);
    assert_int_equal(eng_gguf_find_tensor(g, "token_embd.weight")->ne[1], nv);
    assert_int_equal(eng_gguf_arr_str(g, "tokenizer.ggml.merges", 49999, &a), 0);
    assert_int_equal(eng_gguf_arr_str(v, "tokenizer.ggml.merges", 49999, &b), 0);
    assert_int_equal(a.len, b.len);
    assert_memory_equal(a.p, b.p, a.len);
    assert_int_equal(eng_gguf_get_str(g, "tokenizer.ggml.pre", &a), 0);
    assert_true(eng_gguf_str_eq(a, "gpt-2"));
    eng_gguf_close(g);
    eng_gguf_close(v);
    unlink(path_in("v.gguf"));
}

static void expect_fail(struct eng_model_make_opts *o, const char *needle)
{
    char err[512] = "";
    int rc = eng_model_make(o, err, sizeof(err));
    char tmp[4200];

    if (rc >= 0 || !strstr(err, needle))
        fail_msg("want failure with '%s', got %d '%s'", needle, rc, err);
    assert_int_equal(access(o->out, F_OK), -1);
    snprintf(tmp, sizeof(tmp), "%s.tmp", o->out);
    assert_int_equal(access(tmp, F_OK), -1);
}

static void test_errors(void **state)
{
    struct eng_model_make_opts o = { "nope", ENG_TYPE_F32, path_in("e.gguf"), NULL, 1, NULL, 0 };
    struct eng_model_preset odd = *eng_model_preset_get("tiny");

    expect_fail(&o, "unknown preset 'nope'");
    o.preset = "tiny";
    o.type = ENG_TYPE_Q8_1;
    expect_fail(&o, "weight type 9");
    o.type = ENG_TYPE_F32;
    o.vocab = "/nonexistent.gguf";
    expect_fail(&o, "--vocab /nonexistent.gguf: cannot open");
    o.vocab = NULL;
    /* a row length q4_k's 256-element blocks do not divide */
    odd.dim = 320;
    odd.n_head = 10;
    odd.n_head_kv = 5;
    o.custom = &odd;
    o.type = ENG_TYPE_Q4_K;
    expect_fail(&o, "tensor 'token_embd.weight': row length 320");
    o.custom = NULL;
    o.out = "/nonexistent-dir/x.gguf";
    expect_fail(&o, "cannot create /nonexistent-dir/x.gguf.tmp");
}

static int setup(void **state)
{
    dir = t_tmpdir();
    return dir ? 0 : -1;
}

static int teardown(void **state)
{
    rmdir(dir);
    free(dir);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_presets),
        cmocka_unit_test(test_tiny_f32),
        cmocka_unit_test(test_deterministic),
        cmocka_unit_test(test_q4_0_values),
        cmocka_unit_test(test_vocab_file),
        cmocka_unit_test(test_errors),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
