/*
 * fuzz-gguf.c - libFuzzer target for the GGUF reader. Any input must either
 * open, after which every getter on every key and tensor works inside the
 * buffer, or fail with -EINVAL and a message naming a byte offset.
 * libFuzzer hands over an exact-size heap copy, so ASan flags any read
 * past the end.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "eng_gguf.h"
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
    eng_gguf_close(g);
    return 0;
}
