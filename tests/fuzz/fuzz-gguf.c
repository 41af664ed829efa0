/*
 * fuzz-gguf.c - libFuzzer target for the GGUF reader (and writer). Any
 * input must either open, after which every getter on every key and tensor
 * works inside the buffer, or fail with -EINVAL and a message naming a byte
 * offset. libFuzzer hands over an exact-size heap copy, so ASan flags any
 * read past the end.
 *
 * Metamorphic check: a file that opens is copied through the writer
 * (eng_gguf_write.h); the copy must open and hold the same keys, values,
 * tensors and tensor bytes.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <math.h>

#include "eng_gguf.h"
#include "eng_gguf_write.h"
#include "eng_types.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static volatile uint64_t sink;

static void touch(const void *p, uint64_t len)
{
    const uint8_t *b = p;

    if (len) {
        sink += b[0];
        sink += b[len - 1];
    }
}

/* NUL-terminated copy of a GGUF string, or NULL when it holds a NUL (the
 * writer takes C strings, so such files are not round-tripped). */
static char *cstr(struct eng_gguf_str s)
{
    char *c;

    if (memchr(s.p, 0, s.len) || !(c = malloc(s.len + 1)))
        return NULL;
    memcpy(c, s.p, s.len);
    c[s.len] = 0;
    return c;
}

static int copy_kv(eng_gguf_writer_t *w, const eng_gguf_t *g, int64_t i, const char *k)
{
    uint64_t u = 0, n;
    int64_t v = 0;
    double d = 0;
    int b = 0, rc;
    struct eng_gguf_str s;
    enum eng_gguf_vtype et;

    (void)eng_gguf_kv_u64(g, i, &u);
    (void)eng_gguf_kv_i64(g, i, &v);
    (void)eng_gguf_kv_f64(g, i, &d);
    (void)eng_gguf_kv_bool(g, i, &b);
    switch (eng_gguf_kv_type(g, i)) {
    case ENG_GGUF_U8: return eng_gguf_w_u8(w, k, (uint8_t)u);
    case ENG_GGUF_I8: return eng_gguf_w_i8(w, k, (int8_t)v);
    case ENG_GGUF_U16: return eng_gguf_w_u16(w, k, (uint16_t)u);
    case ENG_GGUF_I16: return eng_gguf_w_i16(w, k, (int16_t)v);
    case ENG_GGUF_U32: return eng_gguf_w_u32(w, k, (uint32_t)u);
    case ENG_GGUF_I32: return eng_gguf_w_i32(w, k, (int32_t)v);
    case ENG_GGUF_U64: return eng_gguf_w_u64(w, k, u);
    case ENG_GGUF_I64: return eng_gguf_w_i64(w, k, v);
    case ENG_GGUF_F32: return eng_gguf_w_f32(w, k, (float)d);
    case ENG_GGUF_F64: return eng_gguf_w_f64(w, k, d);
    case ENG_GGUF_BOOL: return eng_gguf_w_bool(w, k, b);
    case ENG_GGUF_STRING:
        eng_gguf_kv_str(g, i, &s);
        return eng_gguf_w_strn(w, k, s.p, s.len);
    case ENG_GGUF_ARRAY:
        eng_gguf_kv_arr(g, i, &et, &n);
        if (et != ENG_GGUF_STRING)
            return eng_gguf_w_arr(w, k, et, eng_gguf_kv_arr_data(g, i), n);
        {
            struct eng_gguf_str *a = malloc((n ? n : 1) * sizeof(*a));

            if (!a)
                abort();
            for (uint64_t j = 0; j < n; j++)
                if (eng_gguf_kv_arr_str(g, i, j, &a[j]))
                    abort();
            rc = eng_gguf_w_arr_str(w, k, a, n);
            free(a);
            return rc;
        }
    default:
        abort();
    }
}

/* Key i of a equals key j of b (same type and value). */
static int same_kv(const eng_gguf_t *a, int64_t i, const eng_gguf_t *b, int64_t j)
{
    enum eng_gguf_vtype t = eng_gguf_kv_type(a, i), ea, eb;
    uint64_t u1, u2, n1, n2;
    int64_t v1, v2;
    double d1, d2;
    struct eng_gguf_str s1, s2;

    if (t != eng_gguf_kv_type(b, j))
        return 0;
    if (t == ENG_GGUF_F32 || t == ENG_GGUF_F64) {
        eng_gguf_kv_f64(a, i, &d1);
        eng_gguf_kv_f64(b, j, &d2);
        return (isnan(d1) && isnan(d2)) || !memcmp(&d1, &d2, sizeof(d1));
    }
    if (t == ENG_GGUF_STRING) {
        eng_gguf_kv_str(a, i, &s1);
        eng_gguf_kv_str(b, j, &s2);
        return s1.len == s2.len && !memcmp(s1.p, s2.p, s1.len);
    }
    if (t == ENG_GGUF_ARRAY) {
        eng_gguf_kv_arr(a, i, &ea, &n1);
        eng_gguf_kv_arr(b, j, &eb, &n2);
        if (ea != eb || n1 != n2)
            return 0;
        for (uint64_t k = 0; k < n1; k++) {
            if (ea == ENG_GGUF_STRING) {
                eng_gguf_kv_arr_str(a, i, k, &s1);
                eng_gguf_kv_arr_str(b, j, k, &s2);
                if (s1.len != s2.len || memcmp(s1.p, s2.p, s1.len))
                    return 0;
            } else {
                eng_gguf_kv_arr_f64(a, i, k, &d1);
                eng_gguf_kv_arr_f64(b, j, k, &d2);
                if (!(isnan(d1) && isnan(d2)) && memcmp(&d1, &d2, sizeof(d1)))
                    return 0;
            }
        }
        return 1;
    }
    if (t == ENG_GGUF_BOOL) {
        int x, y;

        eng_gguf_kv_bool(a, i, &x);
        eng_gguf_kv_bool(b, j, &y);
        return x == y;
    }
    if (!eng_gguf_kv_u64(a, i, &u1))
        return !eng_gguf_kv_u64(b, j, &u2) && u1 == u2;
    return !eng_gguf_kv_i64(a, i, &v1) && !eng_gguf_kv_i64(b, j, &v2) && v1 == v2;
}

static void roundtrip(const eng_gguf_t *g)
{
    eng_gguf_writer_t *w;
    uint64_t nkv = eng_gguf_kv_count(g), nt = eng_gguf_tensor_count(g), n_al = 0;
    void *buf = NULL;
    size_t len;
    eng_gguf_t *c;
    char err[256];
    int ok = 1;

    if (eng_gguf_writer_new(&w, (uint32_t)eng_gguf_alignment(g)))
        abort();
    for (int64_t i = 0; ok && i < (int64_t)nkv; i++) {
        char *k = cstr(eng_gguf_kv_key(g, i));

        if (!k) {
            ok = 0;
        } else if (!strcmp(k, "general.alignment")) {
            n_al = 1;    /* the writer records the alignment itself */
        } else if (copy_kv(w, g, i, k)) {
            abort();
        }
        free(k);
    }
    for (uint64_t i = 0; ok && i < nt; i++) {
        const struct eng_gguf_tensor *t = eng_gguf_tensor(g, i);
        char *name = cstr(t->name);

        if (!name || !name[0])
            ok = 0;
        else if (eng_gguf_w_tensor(w, name, t->type, t->ndim, t->ne))
            abort();
        free(name);
    }
    if (!ok) {
        eng_gguf_writer_free(w);
        return;
    }
    if (eng_gguf_w_begin(w, -1))
        abort();
    for (uint64_t i = 0; i < nt; i++) {
        const struct eng_gguf_tensor *t = eng_gguf_tensor(g, i);

        if (eng_gguf_w_data(w, t->data, t->size))
            abort();
    }
    if (eng_gguf_w_end(w) || eng_gguf_w_take_mem(w, &buf, &len))
        abort();
    eng_gguf_writer_free(w);
    if (eng_gguf_open_mem(&c, buf, len, err, sizeof(err)))
        abort();
    if (eng_gguf_alignment(c) != eng_gguf_alignment(g) || eng_gguf_tensor_count(c) != nt)
        abort();
    /* same keys: all but general.alignment, which the copy has iff != 32 */
    if (eng_gguf_kv_count(c) != nkv - n_al + (eng_gguf_alignment(g) != 32))
        abort();
    for (int64_t i = 0; i < (int64_t)nkv; i++) {
        char *k = cstr(eng_gguf_kv_key(g, i));
        int64_t j = eng_gguf_find(c, k);

        if (strcmp(k, "general.alignment") && (j < 0 || !same_kv(g, i, c, j)))
            abort();
        free(k);
    }
    for (uint64_t i = 0; i < nt; i++) {
        const struct eng_gguf_tensor *a = eng_gguf_tensor(g, i), *b = eng_gguf_tensor(c, i);

        if (a->name.len != b->name.len || memcmp(a->name.p, b->name.p, a->name.len) ||
            a->type != b->type || a->ndim != b->ndim || memcmp(a->ne, b->ne, sizeof(a->ne)) ||
            a->size != b->size || memcmp(a->data, b->data, a->size))
            abort();
    }
    eng_gguf_close(c);
    free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[256];
    eng_gguf_t *g;
    int rc = eng_gguf_open_mem(&g, data, size, err, sizeof(err));

    if (rc) {
        if (rc != -EINVAL || g || !strstr(err, "byte"))
            abort();
        return 0;
    }
    for (int64_t i = 0; i < (int64_t)eng_gguf_kv_count(g); i++) {
        struct eng_gguf_str s = eng_gguf_kv_key(g, i);
        enum eng_gguf_vtype et;
        uint64_t u, n;
        int64_t v;
        double d;
        int b;

        touch(s.p, s.len);
        if (eng_gguf_kv_offset(g, i) >= size)
            abort();
        (void)eng_gguf_kv_u64(g, i, &u);
        (void)eng_gguf_kv_i64(g, i, &v);
        (void)eng_gguf_kv_f64(g, i, &d);
        (void)eng_gguf_kv_bool(g, i, &b);
        if (!eng_gguf_kv_str(g, i, &s))
            touch(s.p, s.len);
        if (eng_gguf_kv_arr(g, i, &et, &n))
            continue;
        for (uint64_t j = 0; j < n && j < 64; j++) {
            if (et == ENG_GGUF_STRING) {
                if (eng_gguf_kv_arr_str(g, i, j, &s))
                    abort();
                touch(s.p, s.len);
            } else {
                (void)eng_gguf_kv_arr_i64(g, i, j, &v);
                if (eng_gguf_kv_arr_f64(g, i, j, &d))
                    abort();
            }
        }
        if (n && et == ENG_GGUF_STRING && !eng_gguf_kv_arr_str(g, i, n - 1, &s))
            touch(s.p, s.len);
    }
    for (uint64_t i = 0; i < eng_gguf_tensor_count(g); i++) {
        const struct eng_gguf_tensor *t = eng_gguf_tensor(g, i);
        char name[80];

        const uint8_t *d = t->data;
        uint64_t want, rows = 1;

        /* the reader's promises, checked independently */
        if (t->ndim < 1 || t->ndim > ENG_GGUF_MAX_DIMS || !eng_type_get(t->type))
            abort();
        if (d < data || (size_t)(d - data) > size || t->size > size - (size_t)(d - data) ||
            (size_t)(d - data) % eng_gguf_alignment(g))
            abort();
        for (uint32_t k = 1; k < ENG_GGUF_MAX_DIMS; k++)
            if (__builtin_mul_overflow(rows, t->ne[k], &rows))
                abort();
        want = eng_type_row_size(t->type, t->ne[0]);
        if ((!want && t->ne[0]) || __builtin_mul_overflow(want, rows, &want) || want != t->size)
            abort();
        touch(t->name.p, t->name.len);
        touch(t->data, t->size);
        if (t->name.len < sizeof(name) && !memchr(t->name.p, 0, t->name.len)) {
            memcpy(name, t->name.p, t->name.len);
            name[t->name.len] = 0;
            if (eng_gguf_find_tensor(g, name) != t)
                abort();
        }
    }
    roundtrip(g);
    eng_gguf_close(g);
    return 0;
}
