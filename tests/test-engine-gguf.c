/*
 * test-engine-gguf.c - the GGUF reader and writer: every getter and value
 * type on a file built in memory, hostile inputs (each must fail with a
 * message naming the field and a byte offset, never crash: run it under
 * ASan), truncation at every byte, and the real files in models/ and
 * ../shared/vocab.
 */
#include "t_util.h"

#include <errno.h>
#include <dirent.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

#include "eng_gguf.h"
#include "eng_gguf_write.h"

/* ---- a valid file with every value type, built with the writer ---- */

static const uint64_t ne_w[2] = { 64, 2 }, ne_v[3] = { 4, 3, 2 }, ne_last[1] = { 8 };

static void *t_valid_file(size_t *len)
{
    eng_gguf_writer_t *w;
    static const uint8_t a_u8[] = { 1, 2, 255 };
    static const int8_t a_i8[] = { -1, 2, -128 };
    static const uint16_t a_u16[] = { 65535, 7 };
    static const int16_t a_i16[] = { -32768, 5 };
    static const uint32_t a_u32[] = { 4000000000u };
    static const int32_t a_i32[] = { -7, 0, 7 };
    static const uint64_t a_u64[] = { UINT64_MAX, 3 };
    static const int64_t a_i64[] = { INT64_MIN, 9 };
    static const float a_f32[] = { 0.5f, -2.0f };
    static const double a_f64[] = { 1e300, -0.25 };
    static const uint8_t a_bool[] = { 1, 0, 1 };
    struct eng_gguf_str strs[3] = { { "hello", 5 }, { "", 0 }, { "w\0rld", 5 } };
    uint8_t data[512];
    void *buf;

    assert_int_equal(eng_gguf_writer_new(&w, 32), 0);
    assert_int_equal(eng_gguf_w_u8(w, "t.u8", 200), 0);
    assert_int_equal(eng_gguf_w_i8(w, "t.i8", -100), 0);
    assert_int_equal(eng_gguf_w_u16(w, "t.u16", 60000), 0);
    assert_int_equal(eng_gguf_w_i16(w, "t.i16", -30000), 0);
    assert_int_equal(eng_gguf_w_u32(w, "t.u32", 4000000000u), 0);
    assert_int_equal(eng_gguf_w_i32(w, "t.i32", -2000000000), 0);
    assert_int_equal(eng_gguf_w_u64(w, "t.u64", 1ull << 40), 0);
    assert_int_equal(eng_gguf_w_i64(w, "t.i64", -(1ll << 40)), 0);
    assert_int_equal(eng_gguf_w_f32(w, "t.f32", 1.5f), 0);
    assert_int_equal(eng_gguf_w_f64(w, "t.f64", -3.25), 0);
    assert_int_equal(eng_gguf_w_bool(w, "t.bool", 1), 0);
    assert_int_equal(eng_gguf_w_str(w, "t.str", "llama"), 0);
    assert_int_equal(eng_gguf_w_u64(w, "t.bigu64", UINT64_MAX), 0);
    assert_int_equal(eng_gguf_w_arr(w, "a.u8", ENG_GGUF_U8, a_u8, 3), 0);
    assert_int_equal(eng_gguf_w_arr(w, "a.i8", ENG_GGUF_I8, a_i8, 3), 0);
    assert_int_equal(eng_gguf_w_arr(w, "a.u16", ENG_GGUF_U16, a_u16, 2), 0);
    assert_int_equal(eng_gguf_w_arr(w, "a.i16", ENG_GGUF_I16, a_i16, 2), 0);
    assert_int_equal(eng_gguf_w_arr(w, "a.u32", ENG_GGUF_U32, a_u32, 1), 0);
    assert_int_equal(eng_gguf_w_arr(w, "a.i32", ENG_GGUF_I32, a_i32, 3), 0);
    assert_int_equal(eng_gguf_w_arr(w, "a.u64", ENG_GGUF_U64, a_u64, 2), 0);
    assert_int_equal(eng_gguf_w_arr(w, "a.i64", ENG_GGUF_I64, a_i64, 2), 0);
    assert_int_equal(eng_gguf_w_arr(w, "a.f32", ENG_GGUF_F32, a_f32, 2), 0);
    assert_int_equal(eng_gguf_w_arr(w, "a.f64", ENG_GGUF_F64, a_f64, 2), 0);
    assert_int_equal(eng_gguf_w_arr(w, "a.bool", ENG_GGUF_BOOL, a_bool, 3), 0);
    assert_int_equal(eng_gguf_w_arr(w, "a.empty", ENG_GGUF_I32, NULL, 0), 0);
    assert_int_equal(eng_gguf_w_arr_str(w, "a.str", strs, 3), 0);
    assert_int_equal(eng_gguf_w_arr_str(w, "a.str2", strs, 1), 0);
    /* writer refuses bad declarations */
    assert_int_equal(eng_gguf_w_u8(w, "t.u8", 1), -EINVAL);
    assert_int_equal(eng_gguf_w_u8(w, "", 1), -EINVAL);
    assert_int_equal(eng_gguf_w_tensor(w, "w", ENG_TYPE_Q8_0, 2, ne_w), 0);
    assert_int_equal(eng_gguf_w_tensor(w, "w", ENG_TYPE_F32, 1, ne_last), -EINVAL);
    assert_int_equal(eng_gguf_w_tensor(w, "x", ENG_TYPE_Q8_0, 1, ne_last), -EINVAL); /* 8 % 32 */
    assert_int_equal(eng_gguf_w_tensor(w, "x", ENG_TYPE_F32, 5, ne_w), -EINVAL);
    assert_int_equal(eng_gguf_w_tensor(w, "x", 99, 1, ne_last), -EINVAL);
    assert_int_equal(eng_gguf_w_tensor(w, "v", ENG_TYPE_F16, 3, ne_v), 0);
    /* last: 32 bytes, so the file ends exactly where its data does */
    assert_int_equal(eng_gguf_w_tensor(w, "last", ENG_TYPE_F32, 1, ne_last), 0);
    assert_int_equal(eng_gguf_w_tensor_size(w, 0), 4 * 34);
    assert_int_equal(eng_gguf_w_data(w, data, 1), -EINVAL);  /* before begin */
    assert_int_equal(eng_gguf_w_begin(w, -1), 0);
    for (size_t i = 0; i < sizeof(data); i++)
        data[i] = (uint8_t)(i * 7 + 1);
    assert_int_equal(eng_gguf_w_data(w, data, 136), 0);                /* w */
    assert_int_equal(eng_gguf_w_data(w, data + 200, 48 + 32), 0);       /* v and last at once */
    assert_int_equal(eng_gguf_w_end(w), 0);
    assert_int_equal(eng_gguf_w_take_mem(w, &buf, len), 0);
    eng_gguf_writer_free(w);
    return buf;
}

static void test_getters(void **state)
{
    size_t len;
    void *buf = t_valid_file(&len);
    char err[256];
    eng_gguf_t *g;
    uint64_t u, n;
    int64_t s;
    uint32_t u32;
    float f;
    double d;
    int b;
    struct eng_gguf_str str;
    enum eng_gguf_vtype et;
    const struct eng_gguf_tensor *t;

    assert_int_equal(eng_gguf_open_mem(&g, buf, len, err, sizeof(err)), 0);
    assert_int_equal(eng_gguf_version(g), 3);
    assert_int_equal(eng_gguf_alignment(g), 32);
    assert_ptr_equal(eng_gguf_base(g), buf);
    assert_int_equal(eng_gguf_file_size(g), len);
    assert_int_equal(eng_gguf_kv_count(g), 27);
    assert_int_equal(eng_gguf_find(g, "t.u8"), 0);
    assert_int_equal(eng_gguf_find(g, "a.str2"), 26);
    assert_int_equal(eng_gguf_find(g, "nope"), -ENOENT);
    assert_true(eng_gguf_str_eq(eng_gguf_kv_key(g, 11), "t.str"));
    assert_int_equal(eng_gguf_kv_type(g, 11), ENG_GGUF_STRING);
    assert_int_equal(eng_gguf_kv_offset(g, 0), 24);

    /* integers: any type whose value fits */
    assert_int_equal(eng_gguf_get_u64(g, "t.u8", &u), 0);
    assert_int_equal(u, 200);
    assert_int_equal(eng_gguf_get_i64(g, "t.i8", &s), 0);
    assert_int_equal(s, -100);
    assert_int_equal(eng_gguf_get_u64(g, "t.i8", &u), -EINVAL);    /* negative */
    assert_int_equal(eng_gguf_get_u32(g, "t.u16", &u32), 0);
    assert_int_equal(u32, 60000);
    assert_int_equal(eng_gguf_get_i64(g, "t.i16", &s), 0);
    assert_int_equal(s, -30000);
    assert_int_equal(eng_gguf_get_u32(g, "t.u32", &u32), 0);
    assert_int_equal(u32, 4000000000u);
    assert_int_equal(eng_gguf_get_i64(g, "t.i32", &s), 0);
    assert_int_equal(s, -2000000000);
    assert_int_equal(eng_gguf_get_u32(g, "t.u64", &u32), -EINVAL); /* 2^40 */
    assert_int_equal(eng_gguf_get_u64(g, "t.u64", &u), 0);
    assert_int_equal(u, 1ull << 40);
    assert_int_equal(eng_gguf_get_i64(g, "t.i64", &s), 0);
    assert_int_equal(s, -(1ll << 40));
    assert_int_equal(eng_gguf_get_i64(g, "t.bigu64", &s), -EINVAL);
    assert_int_equal(eng_gguf_get_u64(g, "t.bigu64", &u), 0);
    assert_true(u == UINT64_MAX);
    assert_int_equal(eng_gguf_get_u64(g, "t.str", &u), -EINVAL);
    assert_int_equal(eng_gguf_get_u64(g, "t.f32", &u), -EINVAL);
    assert_int_equal(eng_gguf_get_u64(g, "missing", &u), -ENOENT);
    /* floats, bools, strings */
    assert_int_equal(eng_gguf_get_f32(g, "t.f32", &f), 0);
    assert_true(f == 1.5f);
    assert_int_equal(eng_gguf_get_f32(g, "t.f64", &f), 0);
    assert_true(f == -3.25f);
    assert_int_equal(eng_gguf_get_f32(g, "t.u32", &f), -EINVAL);
    assert_int_equal(eng_gguf_get_bool(g, "t.bool", &b), 0);
    assert_int_equal(b, 1);
    assert_int_equal(eng_gguf_get_bool(g, "t.u8", &b), -EINVAL);
    assert_int_equal(eng_gguf_get_str(g, "t.str", &str), 0);
    assert_true(eng_gguf_str_eq(str, "llama"));
    assert_false(eng_gguf_str_eq(str, "llam"));
    assert_int_equal(eng_gguf_get_str(g, "t.u8", &str), -EINVAL);
    assert_int_equal(eng_gguf_get_str(g, "nope", &str), -ENOENT);

    /* arrays */
    assert_int_equal(eng_gguf_get_arr(g, "a.u8", &et, &n), 0);
    assert_int_equal(et, ENG_GGUF_U8);
    assert_int_equal(n, 3);
    assert_int_equal(((const uint8_t *)eng_gguf_arr_data(g, "a.u8"))[2], 255);
    assert_int_equal(eng_gguf_get_arr(g, "t.u8", &et, &n), -EINVAL);
    assert_int_equal(eng_gguf_arr_i64(g, "a.i8", 2, &s), 0);
    assert_int_equal(s, -128);
    assert_int_equal(eng_gguf_arr_i64(g, "a.u16", 0, &s), 0);
    assert_int_equal(s, 65535);
    assert_int_equal(eng_gguf_arr_i64(g, "a.i16", 0, &s), 0);
    assert_int_equal(s, -32768);
    assert_int_equal(eng_gguf_arr_i64(g, "a.u32", 0, &s), 0);
    assert_int_equal(s, 4000000000ll);
    assert_int_equal(eng_gguf_arr_i64(g, "a.i32", 0, &s), 0);
    assert_int_equal(s, -7);
    assert_int_equal(eng_gguf_arr_i64(g, "a.u64", 0, &s), -EINVAL);  /* 2^64-1 */
    assert_int_equal(eng_gguf_arr_i64(g, "a.u64", 1, &s), 0);
    assert_int_equal(s, 3);
    assert_int_equal(eng_gguf_arr_i64(g, "a.i64", 0, &s), 0);
    assert_true(s == INT64_MIN);
    assert_int_equal(eng_gguf_arr_i64(g, "a.i64", 2, &s), -ERANGE);
    assert_int_equal(eng_gguf_arr_f64(g, "a.f32", 1, &d), 0);
    assert_true(d == -2.0);
    assert_int_equal(eng_gguf_arr_f64(g, "a.f64", 0, &d), 0);
    assert_true(d == 1e300);
    assert_int_equal(eng_gguf_arr_f64(g, "a.i32", 2, &d), 0);
    assert_true(d == 7.0);
    assert_int_equal(eng_gguf_arr_f64(g, "a.u64", 0, &d), 0);
    assert_true(d == 18446744073709551615.0);
    assert_int_equal(eng_gguf_arr_i64(g, "a.bool", 1, &s), 0);
    assert_int_equal(s, 0);
    assert_int_equal(eng_gguf_arr_i64(g, "a.bool", 2, &s), 0);
    assert_int_equal(s, 1);
    assert_int_equal(eng_gguf_get_arr(g, "a.empty", &et, &n), 0);
    assert_int_equal(n, 0);
    assert_int_equal(eng_gguf_arr_i64(g, "a.empty", 0, &s), -ERANGE);
    assert_int_equal(eng_gguf_get_arr(g, "a.str", &et, &n), 0);
    assert_int_equal(et, ENG_GGUF_STRING);
    assert_int_equal(n, 3);
    assert_null(eng_gguf_arr_data(g, "a.str"));
    assert_int_equal(eng_gguf_arr_str(g, "a.str", 0, &str), 0);
    assert_true(eng_gguf_str_eq(str, "hello"));
    assert_int_equal(eng_gguf_arr_str(g, "a.str", 1, &str), 0);
    assert_int_equal(str.len, 0);
    assert_int_equal(eng_gguf_arr_str(g, "a.str", 2, &str), 0);
    assert_int_equal(str.len, 5);
    assert_memory_equal(str.p, "w\0rld", 5);
    assert_int_equal(eng_gguf_arr_str(g, "a.str", 3, &str), -ERANGE);
    assert_int_equal(eng_gguf_arr_str(g, "a.str2", 0, &str), 0);
    assert_true(eng_gguf_str_eq(str, "hello"));
    assert_int_equal(eng_gguf_arr_str(g, "a.u8", 0, &str), -EINVAL);
    assert_int_equal(eng_gguf_arr_i64(g, "a.str", 0, &s), -EINVAL);
    assert_int_equal(eng_gguf_arr_str(g, "t.str", 0, &str), -EINVAL);

    /* tensors */
    assert_int_equal(eng_gguf_tensor_count(g), 3);
    t = eng_gguf_find_tensor(g, "v");
    assert_non_null(t);
    assert_ptr_equal(t, eng_gguf_tensor(g, 1));
    assert_int_equal(t->type, ENG_TYPE_F16);
    assert_int_equal(t->ndim, 3);
    assert_int_equal(t->ne[0], 4);
    assert_int_equal(t->ne[2], 2);
    assert_int_equal(t->ne[3], 1);
    assert_int_equal(t->size, 48);
    assert_int_equal(t->offset, 160);
    assert_int_equal((const uint8_t *)t->data - (const uint8_t *)buf,
                     eng_gguf_data_offset(g) + 160);
    assert_int_equal(((const uint8_t *)t->data)[0], (uint8_t)(200 * 7 + 1));
    t = eng_gguf_find_tensor(g, "w");
    assert_int_equal(t->offset, 0);
    assert_int_equal(t->size, 136);
    assert_int_equal(((const uint8_t *)t->data)[135], (uint8_t)(135 * 7 + 1));
    t = eng_gguf_find_tensor(g, "last");
    assert_int_equal((const uint8_t *)t->data + t->size - (const uint8_t *)buf, len);
    assert_null(eng_gguf_find_tensor(g, "nope"));
    assert_null(eng_gguf_tensor(g, 3));
    assert_int_equal(eng_gguf_data_offset(g) % 32, 0);
    eng_gguf_close(g);
    free(buf);
}

static void test_writer_deterministic(void **state)
{
    size_t l1, l2;
    void *a = t_valid_file(&l1), *b = t_valid_file(&l2);

    assert_int_equal(l1, l2);
    assert_memory_equal(a, b, l1);
    free(a);
    free(b);
}

static void test_writer_errors(void **state)
{
    eng_gguf_writer_t *w;
    uint8_t data[64] = { 0 };
    uint64_t ne[1] = { 8 };
    void *buf;
    size_t len;

    assert_int_equal(eng_gguf_writer_new(&w, 3), -EINVAL);
    /* too little data */
    assert_int_equal(eng_gguf_writer_new(&w, 64), 0);
    assert_int_equal(eng_gguf_w_tensor(w, "a", ENG_TYPE_F32, 1, ne), 0);
    assert_int_equal(eng_gguf_w_begin(w, -1), 0);
    assert_int_equal(eng_gguf_w_u8(w, "late", 1), -EINVAL);
    assert_int_equal(eng_gguf_w_data(w, data, 16), 0);
    assert_int_equal(eng_gguf_w_end(w), -EINVAL);
    eng_gguf_writer_free(w);
    /* too much data */
    assert_int_equal(eng_gguf_writer_new(&w, 64), 0);
    assert_int_equal(eng_gguf_w_tensor(w, "a", ENG_TYPE_F32, 1, ne), 0);
    assert_int_equal(eng_gguf_w_begin(w, -1), 0);
    assert_int_equal(eng_gguf_w_data(w, data, 33), -EINVAL);
    eng_gguf_writer_free(w);
    /* alignment 64 is recorded and honoured */
    assert_int_equal(eng_gguf_writer_new(&w, 64), 0);
    assert_int_equal(eng_gguf_w_tensor(w, "a", ENG_TYPE_F32, 1, ne), 0);
    assert_int_equal(eng_gguf_w_tensor(w, "b", ENG_TYPE_F32, 1, ne), 0);
    assert_int_equal(eng_gguf_w_begin(w, -1), 0);
    assert_int_equal(eng_gguf_w_data(w, data, 64), 0);
    assert_int_equal(eng_gguf_w_end(w), 0);
    assert_int_equal(eng_gguf_w_take_mem(w, &buf, &len), 0);
    eng_gguf_writer_free(w);
    {
        eng_gguf_t *g;
        char err[256];
        uint32_t al;

        assert_int_equal(eng_gguf_open_mem(&g, buf, len, err, sizeof(err)), 0);
        assert_int_equal(eng_gguf_alignment(g), 64);
        assert_int_equal(eng_gguf_get_u32(g, "general.alignment", &al), 0);
        assert_int_equal(al, 64);
        assert_int_equal(eng_gguf_find_tensor(g, "b")->offset, 64);
        assert_int_equal(eng_gguf_data_offset(g) % 64, 0);
        assert_int_equal(len, eng_gguf_data_offset(g) + 64 + 64);
        eng_gguf_close(g);
    }
    free(buf);
}

/* Every prefix of a valid file must fail cleanly, naming a byte offset.
 * Each prefix is copied to an exact-size heap block so ASan sees any read
 * past its end. */
static void test_truncated_everywhere(void **state)
{
    size_t len;
    void *buf = t_valid_file(&len);
    char err[256];

    for (size_t n = 0; n < len; n++) {
        void *cut = malloc(n ? n : 1);
        eng_gguf_t *g = (eng_gguf_t *)cut;

        memcpy(cut, buf, n);
        int rc = eng_gguf_open_mem(&g, cut, n, err, sizeof(err));

        if (rc != -EINVAL || g || !strstr(err, "byte"))
            fail_msg("prefix of %zu/%zu bytes: rc %d, err '%s'", n, len, rc, err);
        free(cut);
    }
    free(buf);
}

/* ---- hostile files, byte by byte ---- */

struct tb {
    uint8_t p[4096];
    size_t len;
};

static void tb_put(struct tb *b, const void *p, size_t n)
{
    assert_true(b->len + n <= sizeof(b->p));
    memcpy(b->p + b->len, p, n);
    b->len += n;
}

static void tb_u32(struct tb *b, uint32_t v) { tb_put(b, &v, 4); }
static void tb_u64(struct tb *b, uint64_t v) { tb_put(b, &v, 8); }

static void tb_str(struct tb *b, const char *s)
{
    tb_u64(b, strlen(s));
    tb_put(b, s, strlen(s));
}

static void tb_hdr(struct tb *b, uint32_t version, uint64_t nt, uint64_t nkv)
{
    b->len = 0;
    tb_put(b, "GGUF", 4);
    tb_u32(b, version);
    tb_u64(b, nt);
    tb_u64(b, nkv);
}

/* tensor info: name, ndim, ne..., type, offset */
static void tb_tensor(struct tb *b, const char *name, uint32_t ndim, const uint64_t *ne,
                      uint32_t type, uint64_t off)
{
    tb_str(b, name);
    tb_u32(b, ndim);
    for (uint32_t i = 0; i < ndim; i++)
        tb_u64(b, ne[i]);
    tb_u32(b, type);
    tb_u64(b, off);
}

static void tb_pad(struct tb *b, size_t to)
{
    while (b->len % to)
        b->p[b->len++] = 0;
}

/* Expect open to fail with -EINVAL and a message holding every needle. */
static void expect_bad(const struct tb *b, const char *what, ...)
{
    char err[512] = "";
    eng_gguf_t *g;
    void *cp = malloc(b->len ? b->len : 1);
    va_list ap;
    const char *needle;
    int rc;

    memcpy(cp, b->p, b->len);
    rc = eng_gguf_open_mem(&g, cp, b->len, err, sizeof(err));
    free(cp);
    if (rc != -EINVAL)
        fail_msg("%s: rc %d (want -EINVAL), err '%s'", what, rc, err);
    assert_null(g);
    va_start(ap, what);
    while ((needle = va_arg(ap, const char *)))
        if (!strstr(err, needle))
            fail_msg("%s: message '%s' lacks '%s'", what, err, needle);
    va_end(ap);
}

static void test_hostile(void **state)
{
    struct tb b;
    uint64_t ne1[1] = { 8 }, ne2[2] = { 1ull << 32, 1ull << 32 }, ne5[5] = { 1, 1, 1, 1, 1 };

    tb_hdr(&b, 3, 0, 0);
    b.p[3] = 'X';
    expect_bad(&b, "bad magic", "magic", "byte 0", NULL);
    b.len = 2;
    expect_bad(&b, "tiny", "byte 0", NULL);
    tb_hdr(&b, 1, 0, 0);
    expect_bad(&b, "v1", "v1", "byte 4", NULL);
    tb_hdr(&b, 0x03000000, 0, 0);
    expect_bad(&b, "big-endian", "big-endian", "byte 4", NULL);
    tb_hdr(&b, 4, 0, 0);
    expect_bad(&b, "v4", "version", "byte 4", NULL);
    tb_hdr(&b, 3, 0, 1ull << 63);
    expect_bad(&b, "huge kv count", "kv count", "byte 16", NULL);
    tb_hdr(&b, 3, UINT64_MAX, 0);
    expect_bad(&b, "huge tensor count", "tensor count", "byte 8", NULL);

    /* string value length past EOF */
    tb_hdr(&b, 3, 0, 1);
    tb_str(&b, "general.name");
    tb_u32(&b, ENG_GGUF_STRING);
    tb_u64(&b, 1000);
    tb_put(&b, "abc", 3);
    expect_bad(&b, "string past EOF", "key 'general.name' (at byte 24)", "byte 48", "1000", NULL);
    /* key length hostile */
    tb_hdr(&b, 3, 0, 1);
    tb_u64(&b, 1ull << 63);
    tb_put(&b, "xxxxxxxxxxxxxxxxxxxxxxxx", 16);
    expect_bad(&b, "key length", "key 0 (at byte 24)", NULL);
    tb_hdr(&b, 3, 0, 1);
    tb_str(&b, "");
    tb_u32(&b, ENG_GGUF_U8);
    tb_put(&b, "x", 1);
    expect_bad(&b, "empty key", "key 0 (at byte 24)", "length 0", NULL);
    /* array counts that overflow count * size */
    tb_hdr(&b, 3, 0, 1);
    tb_str(&b, "arr");
    tb_u32(&b, ENG_GGUF_ARRAY);
    tb_u32(&b, ENG_GGUF_U32);
    tb_u64(&b, 1ull << 62);
    tb_u32(&b, 0);
    expect_bad(&b, "array overflow", "key 'arr' (at byte 24)", "array at byte 39", NULL);
    tb_hdr(&b, 3, 0, 1);
    tb_str(&b, "arr");
    tb_u32(&b, ENG_GGUF_ARRAY);
    tb_u32(&b, ENG_GGUF_STRING);
    tb_u64(&b, UINT64_MAX);
    tb_u64(&b, 0);
    expect_bad(&b, "string array count", "key 'arr'", "string array at byte 39", NULL);
    tb_hdr(&b, 3, 0, 1);
    tb_str(&b, "arr");
    tb_u32(&b, ENG_GGUF_ARRAY);
    tb_u32(&b, ENG_GGUF_STRING);
    tb_u64(&b, 2);
    tb_str(&b, "ok");
    tb_u64(&b, 99);
    tb_put(&b, "no", 2);
    expect_bad(&b, "string array element", "key 'arr'", "element 1 at byte 61", NULL);
    tb_hdr(&b, 3, 0, 1);
    tb_str(&b, "arr");
    tb_u32(&b, ENG_GGUF_ARRAY);
    tb_u32(&b, ENG_GGUF_ARRAY);
    tb_u64(&b, 1);
    tb_u32(&b, ENG_GGUF_U8);
    tb_u64(&b, 0);
    expect_bad(&b, "nested array", "key 'arr'", "arrays of arrays", NULL);
    tb_hdr(&b, 3, 0, 1);
    tb_str(&b, "arr");
    tb_u32(&b, ENG_GGUF_ARRAY);
    tb_u32(&b, 77);
    tb_u64(&b, 1);
    tb_u64(&b, 0);
    expect_bad(&b, "bad element type", "key 'arr'", "element type 77", NULL);
    tb_hdr(&b, 3, 0, 1);
    tb_str(&b, "k");
    tb_u32(&b, 13);
    tb_u64(&b, 0);
    expect_bad(&b, "bad value type", "key 'k' (at byte 24)", "unknown type 13", "byte 33", NULL);
    /* duplicate key */
    tb_hdr(&b, 3, 0, 2);
    tb_str(&b, "k");
    tb_u32(&b, ENG_GGUF_U8);
    tb_put(&b, "x", 1);
    tb_str(&b, "k");
    tb_u32(&b, ENG_GGUF_U8);
    tb_put(&b, "y", 1);
    expect_bad(&b, "duplicate key", "key 'k' (at byte 38)", "duplicate key", "byte 24", NULL);
    /* non-printable names are shown safely */
    tb_hdr(&b, 3, 0, 2);
    tb_str(&b, "a\nb");
    tb_u32(&b, ENG_GGUF_U8);
    tb_put(&b, "x", 1);
    tb_str(&b, "a\nb");
    tb_u32(&b, ENG_GGUF_U8);
    tb_put(&b, "y", 1);
    expect_bad(&b, "unprintable key", "key 'a?b'", NULL);
    /* alignment 0 and 3 */
    for (uint32_t al = 0; al < 4; al += 3) {
        tb_hdr(&b, 3, 0, 1);
        tb_str(&b, "general.alignment");
        tb_u32(&b, ENG_GGUF_U32);
        tb_u32(&b, al);
        expect_bad(&b, "alignment", "general.alignment", "byte 24", "power of two", NULL);
    }
    tb_hdr(&b, 3, 0, 1);
    tb_str(&b, "general.alignment");
    tb_u32(&b, ENG_GGUF_STRING);
    tb_str(&b, "32");
    expect_bad(&b, "alignment type", "general.alignment", "byte 24", NULL);

    /* tensors */
    tb_hdr(&b, 3, 1, 0);
    tb_tensor(&b, "t", 1, ne1, ENG_TYPE_F32, 32);
    tb_pad(&b, 32);
    tb_put(&b, "0123456789abcdef0123456789abcdef", 32);
    expect_bad(&b, "offset past EOF", "tensor 't' (info at byte 24)", "past the end", NULL);
    tb_hdr(&b, 3, 1, 0);
    tb_tensor(&b, "t", 1, ne1, ENG_TYPE_F32, UINT64_MAX - 31);
    tb_pad(&b, 32);
    tb_put(&b, "0123456789abcdef0123456789abcdef", 32);
    expect_bad(&b, "offset overflow", "tensor 't' (info at byte 24)", "past the end", NULL);
    tb_hdr(&b, 3, 1, 0);
    tb_tensor(&b, "t", 1, ne1, ENG_TYPE_F32, 4);
    tb_pad(&b, 32);
    tb_put(&b, "0123456789abcdef0123456789abcdef0123", 36);
    expect_bad(&b, "misaligned", "tensor 't' (info at byte 24)", "alignment", NULL);
    tb_hdr(&b, 3, 1, 0);
    tb_tensor(&b, "t", 1, ne1, 99, 0);
    expect_bad(&b, "unknown type", "tensor 't' (info at byte 24)", "unknown tensor type 99",
               "byte 45", NULL);
    tb_hdr(&b, 3, 1, 0);
    tb_tensor(&b, "t", 1, ne1, 4, 0);      /* 4 and 5: removed q4_2/q4_3 */
    expect_bad(&b, "removed type", "tensor 't'", "unknown tensor type 4", NULL);
    tb_hdr(&b, 3, 1, 0);
    tb_tensor(&b, "t", 0, ne1, ENG_TYPE_F32, 0);
    tb_u64(&b, 0);
    expect_bad(&b, "ndim 0", "tensor 't' (info at byte 24)", "ndim 0", "byte 33", NULL);
    tb_hdr(&b, 3, 1, 0);
    tb_tensor(&b, "t", 5, ne5, ENG_TYPE_F32, 0);
    expect_bad(&b, "ndim 5", "tensor 't' (info at byte 24)", "ndim 5", NULL);
    tb_hdr(&b, 3, 1, 0);
    tb_tensor(&b, "t", 2, ne2, ENG_TYPE_F32, 0);
    expect_bad(&b, "ne product", "tensor 't' (info at byte 24)", "overflow", NULL);
    {
        uint64_t ne3[3] = { 1ull << 62, 1, 2 };

        tb_hdr(&b, 3, 1, 0);
        tb_tensor(&b, "t", 3, ne3, ENG_TYPE_F32, 0);
        expect_bad(&b, "size overflow", "tensor 't' (info at byte 24)", "overflow", NULL);
    }
    {
        /* 2^62 f32 elements: the element count fits, the bytes (2^64) do not */
        uint64_t big[1] = { 1ull << 62 };

        tb_hdr(&b, 3, 1, 0);
        tb_tensor(&b, "t", 1, big, ENG_TYPE_F32, 0);
        expect_bad(&b, "row bytes overflow", "tensor 't' (info at byte 24)", "overflow", NULL);
        big[0] = 1ull << 61;       /* 2^63 bytes: fits u64, not the file */
        tb_hdr(&b, 3, 1, 0);
        tb_tensor(&b, "t", 1, big, ENG_TYPE_F32, 0);
        expect_bad(&b, "row bytes 2^63", "tensor 't' (info at byte 24)", "overflow", NULL);
    }
    {
        /* a zero dim must not hide an overflowing product of the others
         * (found by fuzz-gguf) */
        uint64_t ne3[3] = { 0, 0x500000003ull, 0x21fffffaull };

        tb_hdr(&b, 3, 1, 0);
        tb_tensor(&b, "t", 3, ne3, ENG_TYPE_F32, 0);
        tb_pad(&b, 32);
        expect_bad(&b, "zero dim overflow", "tensor 't' (info at byte 24)", "ne[2]",
                   "overflow", NULL);
    }
    {
        uint64_t neg[1] = { UINT64_MAX };

        tb_hdr(&b, 3, 1, 0);
        tb_tensor(&b, "t", 1, neg, ENG_TYPE_F32, 0);
        expect_bad(&b, "negative ne", "tensor 't'", "ne[0]", NULL);
    }
    {
        uint64_t ne31[1] = { 31 };

        tb_hdr(&b, 3, 1, 0);
        tb_tensor(&b, "t", 1, ne31, ENG_TYPE_Q4_0, 0);
        expect_bad(&b, "partial block", "tensor 't'", "block size 32", NULL);
    }
    tb_hdr(&b, 3, 2, 0);
    tb_tensor(&b, "t", 1, ne1, ENG_TYPE_F32, 0);
    tb_tensor(&b, "t", 1, ne1, ENG_TYPE_F32, 32);
    tb_pad(&b, 32);
    for (int i = 0; i < 64; i++)
        tb_put(&b, "z", 1);
    expect_bad(&b, "duplicate tensor", "tensor 't' (info at byte 57)", "duplicate tensor",
               "byte 24", NULL);
    /* infos end, but the padded data section start is past EOF */
    tb_hdr(&b, 3, 1, 0);
    {
        uint64_t ne0[1] = { 0 };

        tb_tensor(&b, "t", 1, ne0, ENG_TYPE_F32, 0);
    }
    expect_bad(&b, "data section past EOF", "data section at byte 64", NULL);

    /* and the well-formed versions of the same shapes open (v2 too) */
    {
        char err[256];
        eng_gguf_t *g;

        tb_hdr(&b, 2, 1, 1);
        tb_str(&b, "general.alignment");
        tb_u32(&b, ENG_GGUF_U64);
        tb_u64(&b, 16);
        tb_tensor(&b, "t", 1, ne1, ENG_TYPE_F32, 0);
        tb_pad(&b, 16);
        tb_put(&b, "0123456789abcdef0123456789abcdef", 32);
        assert_int_equal(eng_gguf_open_mem(&g, b.p, b.len, err, sizeof(err)), 0);
        assert_int_equal(eng_gguf_version(g), 2);
        assert_int_equal(eng_gguf_alignment(g), 16);
        eng_gguf_close(g);
    }
}

/* ---- the real files ---- */

static int open_real(const char *path, double *ms)
{
    char err[512];
    eng_gguf_t *g;
    struct timespec t0, t1;
    uint64_t n = 0, nt;
    enum eng_gguf_vtype et;
    int rc;

    clock_gettime(CLOCK_MONOTONIC, &t0);
    rc = eng_gguf_open(&g, path, err, sizeof(err));
    clock_gettime(CLOCK_MONOTONIC, &t1);
    *ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
    if (rc)
        fail_msg("%s: %s", path, err);
    assert_int_equal(eng_gguf_get_arr(g, "tokenizer.ggml.tokens", &et, &n), 0);
    assert_int_equal(et, ENG_GGUF_STRING);
    assert_true(n > 1000);
    for (uint64_t i = 0; i < n; i += n / 97) {
        struct eng_gguf_str s;

        assert_int_equal(eng_gguf_arr_str(g, "tokenizer.ggml.tokens", i, &s), 0);
    }
    nt = eng_gguf_tensor_count(g);
    for (uint64_t i = 0; i < nt; i++) {
        const struct eng_gguf_tensor *t = eng_gguf_tensor(g, i);
        char name[128];

        assert_true(t->name.len < sizeof(name));
        memcpy(name, t->name.p, t->name.len);
        name[t->name.len] = 0;
        assert_ptr_equal(eng_gguf_find_tensor(g, name), t);
    }
    eng_gguf_close(g);
    return 0;
}

static void test_real_files(void **state)
{
    const char *models = t_env("FAVO_MODELS", "models");
    const char *shared = t_env("FAVO_SHARED", "../shared");
    char path[4096];
    int found = 0;
    double ms;
    DIR *d;
    struct dirent *e;
    const char *dirs[2];

    snprintf(path, sizeof(path), "%s/vocab", shared);
    dirs[0] = models;
    dirs[1] = strdup(path);
    for (int k = 0; k < 2; k++) {
        if (!(d = opendir(dirs[k])))
            continue;
        while ((e = readdir(d))) {
            size_t l = strlen(e->d_name);

            if (l < 5 || strcmp(e->d_name + l - 5, ".gguf"))
                continue;
            snprintf(path, sizeof(path), "%s/%s", dirs[k], e->d_name);
            open_real(path, &ms);
            printf("# %s: opened in %.2f ms\n", e->d_name, ms);
            found++;
        }
        closedir(d);
    }
    free((void *)dirs[1]);
    if (!found)
        skip();
}

/* The open error for a path names the system error. */
static void test_open_errors(void **state)
{
    char err[256];
    eng_gguf_t *g;

    assert_int_equal(eng_gguf_open(&g, "/nonexistent/x.gguf", err, sizeof(err)), -ENOENT);
    assert_non_null(strstr(err, "cannot open"));
    assert_int_equal(eng_gguf_open(&g, "/", err, sizeof(err)), -EINVAL);
    assert_int_equal(eng_gguf_open(&g, "/dev/null", err, sizeof(err)), -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_getters),
        cmocka_unit_test(test_writer_deterministic),
        cmocka_unit_test(test_writer_errors),
        cmocka_unit_test(test_truncated_everywhere),
        cmocka_unit_test(test_hostile),
        cmocka_unit_test(test_real_files),
        cmocka_unit_test(test_open_errors),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
