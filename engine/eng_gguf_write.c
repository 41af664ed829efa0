/*
 * eng_gguf_write.c - the streaming GGUF writer (see eng_gguf_write.h).
 *
 * Metadata is serialised into `kvbuf` as it is added (the kv section is
 * exactly those bytes); tensor infos are kept as records because their
 * offsets are only final once every tensor is declared. Duplicate keys and
 * names are found with a linear scan: writers hold tens of keys and at
 * most a few thousand tensors, and this runs once per file.
 */
#include "eng_gguf_write.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define W_BUF (1u << 20)

struct buf {
    uint8_t *p;
    size_t len, cap;
};

struct w_tensor {
    char *name;
    uint32_t type, ndim;
    uint64_t ne[ENG_GGUF_MAX_DIMS];
    uint64_t offset, size;
};

struct eng_gguf_writer {
    uint32_t alignment;
    int state;                    /* 0 declaring, 1 data, 2 ended, -1 failed */
    int fd;                       /* < 0: memory output into out */
    struct buf kvbuf;
    uint64_t n_kv;
    char **keys;
    struct w_tensor *t;
    uint64_t n_t, cap_t;
    uint64_t data_size;           /* padded total */
    uint64_t cur, cur_done;       /* tensor being written, its bytes so far */
    struct buf out;               /* staging buffer (fd) or the whole file (memory) */
    uint64_t written;
};

static int buf_reserve(struct buf *b, size_t more)
{
    if (more > SIZE_MAX - b->len)
        return -ENOMEM;
    if (b->len + more > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        uint8_t *p;

        while (cap < b->len + more)
            cap = cap > SIZE_MAX / 2 ? SIZE_MAX : cap * 2;
        p = realloc(b->p, cap);
        if (!p)
            return -ENOMEM;
        b->p = p;
        b->cap = cap;
    }
    return 0;
}

static int buf_put(struct buf *b, const void *p, size_t n)
{
    int rc = buf_reserve(b, n);

    if (rc)
        return rc;
    if (n)
        memcpy(b->p + b->len, p, n);
    b->len += n;
    return 0;
}

static int buf_u32(struct buf *b, uint32_t v)
{
    return buf_put(b, &v, 4);
}

static int buf_u64(struct buf *b, uint64_t v)
{
    return buf_put(b, &v, 8);
}

static int buf_str(struct buf *b, const char *s, uint64_t len)
{
    int rc = buf_u64(b, len);

    return rc ? rc : buf_put(b, s, (size_t)len);
}

static uint64_t vsize(enum eng_gguf_vtype t)
{
    switch (t) {
    case ENG_GGUF_U8: case ENG_GGUF_I8: case ENG_GGUF_BOOL: return 1;
    case ENG_GGUF_U16: case ENG_GGUF_I16: return 2;
    case ENG_GGUF_U32: case ENG_GGUF_I32: case ENG_GGUF_F32: return 4;
    case ENG_GGUF_U64: case ENG_GGUF_I64: case ENG_GGUF_F64: return 8;
    default: return 0;
    }
}

int eng_gguf_writer_new(eng_gguf_writer_t **out, uint32_t alignment)
{
    struct eng_gguf_writer *w;

    *out = NULL;
    if (!alignment)
        alignment = 32;
    if (alignment & (alignment - 1))
        return -EINVAL;
    w = calloc(1, sizeof(*w));
    if (!w)
        return -ENOMEM;
    w->alignment = alignment;
    w->fd = -1;
    *out = w;
    if (alignment != 32) {
        int rc = eng_gguf_w_u32(w, "general.alignment", alignment);

        if (rc) {
            eng_gguf_writer_free(w);
            *out = NULL;
            return rc;
        }
    }
    return 0;
}

void eng_gguf_writer_free(eng_gguf_writer_t *w)
{
    if (!w)
        return;
    for (uint64_t i = 0; i < w->n_kv; i++)
        free(w->keys[i]);
    free(w->keys);
    for (uint64_t i = 0; i < w->n_t; i++)
        free(w->t[i].name);
    free(w->t);
    free(w->kvbuf.p);
    free(w->out.p);
    free(w);
}

static int fail(struct eng_gguf_writer *w, int rc)
{
    w->state = -1;
    return rc;
}

/* Start a kv: check state and duplicates, record the key, write key + type. */
static int kv_begin(struct eng_gguf_writer *w, const char *key, enum eng_gguf_vtype type)
{
    char **keys, *k;
    size_t klen;

    if (w->state != 0 || !key || !(klen = strlen(key)) || klen > 65535)
        return -EINVAL;
    for (uint64_t i = 0; i < w->n_kv; i++)
        if (!strcmp(w->keys[i], key))
            return -EINVAL;
    keys = realloc(w->keys, (w->n_kv + 1) * sizeof(*keys));
    if (!keys)
        return fail(w, -ENOMEM);
    w->keys = keys;
    if (!(k = strdup(key)))
        return fail(w, -ENOMEM);
    keys[w->n_kv++] = k;
    if (buf_str(&w->kvbuf, key, klen) || buf_u32(&w->kvbuf, (uint32_t)type))
        return fail(w, -ENOMEM);
    return 0;
}

static int kv_scalar(struct eng_gguf_writer *w, const char *key, enum eng_gguf_vtype t,
                     const void *v)
{
    int rc = kv_begin(w, key, t);

    if (rc)
        return rc;
    return buf_put(&w->kvbuf, v, (size_t)vsize(t)) ? fail(w, -ENOMEM) : 0;
}

int eng_gguf_w_u8(eng_gguf_writer_t *w, const char *k, uint8_t v) { return kv_scalar(w, k, ENG_GGUF_U8, &v); }
int eng_gguf_w_i8(eng_gguf_writer_t *w, const char *k, int8_t v) { return kv_scalar(w, k, ENG_GGUF_I8, &v); }
int eng_gguf_w_u16(eng_gguf_writer_t *w, const char *k, uint16_t v) { return kv_scalar(w, k, ENG_GGUF_U16, &v); }
int eng_gguf_w_i16(eng_gguf_writer_t *w, const char *k, int16_t v) { return kv_scalar(w, k, ENG_GGUF_I16, &v); }
int eng_gguf_w_u32(eng_gguf_writer_t *w, const char *k, uint32_t v) { return kv_scalar(w, k, ENG_GGUF_U32, &v); }
int eng_gguf_w_i32(eng_gguf_writer_t *w, const char *k, int32_t v) { return kv_scalar(w, k, ENG_GGUF_I32, &v); }
int eng_gguf_w_u64(eng_gguf_writer_t *w, const char *k, uint64_t v) { return kv_scalar(w, k, ENG_GGUF_U64, &v); }
int eng_gguf_w_i64(eng_gguf_writer_t *w, const char *k, int64_t v) { return kv_scalar(w, k, ENG_GGUF_I64, &v); }
int eng_gguf_w_f32(eng_gguf_writer_t *w, const char *k, float v) { return kv_scalar(w, k, ENG_GGUF_F32, &v); }
int eng_gguf_w_f64(eng_gguf_writer_t *w, const char *k, double v) { return kv_scalar(w, k, ENG_GGUF_F64, &v); }

int eng_gguf_w_bool(eng_gguf_writer_t *w, const char *k, int v)
{
    uint8_t b = v != 0;

    return kv_scalar(w, k, ENG_GGUF_BOOL, &b);
}

int eng_gguf_w_strn(eng_gguf_writer_t *w, const char *key, const char *s, uint64_t len)
{
    int rc = kv_begin(w, key, ENG_GGUF_STRING);

    if (rc)
        return rc;
    return buf_str(&w->kvbuf, s, len) ? fail(w, -ENOMEM) : 0;
}

int eng_gguf_w_str(eng_gguf_writer_t *w, const char *key, const char *s)
{
    return eng_gguf_w_strn(w, key, s, s ? strlen(s) : 0);
}

int eng_gguf_w_arr(eng_gguf_writer_t *w, const char *key, enum eng_gguf_vtype etype,
                   const void *data, uint64_t n)
{
    uint64_t es = vsize(etype);
    int rc;

    if (!es || (n && !data) || n > SIZE_MAX / es)
        return -EINVAL;
    if ((rc = kv_begin(w, key, ENG_GGUF_ARRAY)))
        return rc;
    if (buf_u32(&w->kvbuf, (uint32_t)etype) || buf_u64(&w->kvbuf, n) ||
        buf_put(&w->kvbuf, data, (size_t)(n * es)))
        return fail(w, -ENOMEM);
    return 0;
}

int eng_gguf_w_arr_str(eng_gguf_writer_t *w, const char *key, const struct eng_gguf_str *s,
                       uint64_t n)
{
    int rc;

    if (n && !s)
        return -EINVAL;
    if ((rc = kv_begin(w, key, ENG_GGUF_ARRAY)))
        return rc;
    if (buf_u32(&w->kvbuf, ENG_GGUF_STRING) || buf_u64(&w->kvbuf, n))
        return fail(w, -ENOMEM);
    for (uint64_t i = 0; i < n; i++)
        if (buf_str(&w->kvbuf, s[i].p, s[i].len))
            return fail(w, -ENOMEM);
    return 0;
}

int eng_gguf_w_tensor(eng_gguf_writer_t *w, const char *name, uint32_t type, uint32_t ndim,
                      const uint64_t *ne)
{
    const struct eng_type_info *ti = eng_type_get(type);
    struct w_tensor *t;
    uint64_t rows = 1, size, padded;
    size_t row;

    if (w->state != 0 || !name || !*name || !ti || ndim < 1 || ndim > ENG_GGUF_MAX_DIMS || !ne)
        return -EINVAL;
    for (uint64_t i = 0; i < w->n_t; i++)
        if (!strcmp(w->t[i].name, name))
            return -EINVAL;
    for (uint32_t d = 1; d < ndim; d++) {
        if (ne[d] && rows > UINT64_MAX / ne[d])
            return -EINVAL;
        rows *= ne[d];
    }
    row = eng_type_row_size(type, ne[0]);
    if (!row && ne[0])
        return -EINVAL;
    if (rows && row > UINT64_MAX / rows)
        return -EINVAL;
    size = row * rows;
    padded = (size + w->alignment - 1) / w->alignment * w->alignment;
    if (padded < size || w->data_size > UINT64_MAX - padded)
        return -EINVAL;
    if (w->n_t == w->cap_t) {
        uint64_t cap = w->cap_t ? 2 * w->cap_t : 64;

        t = realloc(w->t, cap * sizeof(*t));
        if (!t)
            return fail(w, -ENOMEM);
        w->t = t;
        w->cap_t = cap;
    }
    t = &w->t[w->n_t];
    memset(t, 0, sizeof(*t));
    if (!(t->name = strdup(name)))
        return fail(w, -ENOMEM);
    t->type = type;
    t->ndim = ndim;
    for (uint32_t d = 0; d < ENG_GGUF_MAX_DIMS; d++)
        t->ne[d] = d < ndim ? ne[d] : 1;
    t->offset = w->data_size;
    t->size = size;
    w->data_size += padded;
    w->n_t++;
    return 0;
}

uint64_t eng_gguf_w_tensor_size(const eng_gguf_writer_t *w, uint64_t i)
{
    return i < w->n_t ? w->t[i].size : 0;
}

static int flush(struct eng_gguf_writer *w)
{
    size_t off = 0;

    if (w->fd < 0)
        return 0;
    while (off < w->out.len) {
        ssize_t n = write(w->fd, w->out.p + off, w->out.len - off);

        if (n < 0) {
            if (errno == EINTR)
                continue;
            return fail(w, -errno);
        }
        off += (size_t)n;
    }
    w->out.len = 0;
    return 0;
}

/* Append to the output; with an fd, flush whenever the staging buffer fills. */
static int emit(struct eng_gguf_writer *w, const void *p, size_t n)
{
    const uint8_t *s = p;

    w->written += n;
    if (w->fd < 0)
        return buf_put(&w->out, p, n) ? fail(w, -ENOMEM) : 0;
    while (n) {
        size_t room = W_BUF - w->out.len, k = n < room ? n : room;
        int rc;

        memcpy(w->out.p + w->out.len, s, k);
        w->out.len += k;
        s += k;
        n -= k;
        if (w->out.len == W_BUF && (rc = flush(w)))
            return rc;
    }
    return 0;
}

static int emit_zeros(struct eng_gguf_writer *w, uint64_t n)
{
    static const uint8_t zero[256];

    while (n) {
        size_t k = n < sizeof(zero) ? (size_t)n : sizeof(zero);
        int rc = emit(w, zero, k);

        if (rc)
            return rc;
        n -= k;
    }
    return 0;
}

int eng_gguf_w_begin(eng_gguf_writer_t *w, int fd)
{
    struct buf hdr = { 0 };
    int rc;

    if (w->state != 0)
        return -EINVAL;
    w->fd = fd;
    if (fd >= 0 && !(w->out.p = malloc(W_BUF)))
        return fail(w, -ENOMEM);
    w->out.cap = fd >= 0 ? W_BUF : 0;
    rc = buf_put(&hdr, "GGUF", 4) || buf_u32(&hdr, 3) || buf_u64(&hdr, w->n_t) ||
         buf_u64(&hdr, w->n_kv) ? -ENOMEM : 0;
    for (uint64_t i = 0; !rc && i < w->n_t; i++) {
        struct w_tensor *t = &w->t[i];

        rc = buf_str(&hdr, t->name, strlen(t->name)) || buf_u32(&hdr, t->ndim) ? -ENOMEM : 0;
        for (uint32_t d = 0; !rc && d < t->ndim; d++)
            rc = buf_u64(&hdr, t->ne[d]) ? -ENOMEM : 0;
        if (!rc)
            rc = buf_u32(&hdr, t->type) || buf_u64(&hdr, t->offset) ? -ENOMEM : 0;
    }
    if (rc) {
        free(hdr.p);
        return fail(w, rc);
    }
    /* header (24 bytes) | kvs | tensor infos | padding */
    w->state = 1;
    if ((rc = emit(w, hdr.p, 24)) || (rc = emit(w, w->kvbuf.p, w->kvbuf.len)) ||
        (rc = emit(w, hdr.p + 24, hdr.len - 24))) {
        free(hdr.p);
        return rc;
    }
    free(hdr.p);
    if (w->n_t)
        rc = emit_zeros(w, (w->alignment - w->written % w->alignment) % w->alignment);
    w->cur = 0;
    w->cur_done = 0;
    return rc;
}

/* Skip over finished tensors (writing their padding). */
static int advance(struct eng_gguf_writer *w)
{
    while (w->cur < w->n_t && w->cur_done == w->t[w->cur].size) {
        uint64_t sz = w->t[w->cur].size, pad = (w->alignment - sz % w->alignment) % w->alignment;
        int rc = emit_zeros(w, pad);

        if (rc)
            return rc;
        w->cur++;
        w->cur_done = 0;
    }
    return 0;
}

int eng_gguf_w_data(eng_gguf_writer_t *w, const void *p, size_t n)
{
    const uint8_t *s = p;
    int rc;

    if (w->state != 1)
        return -EINVAL;
    while (n) {
        uint64_t room;
        size_t k;

        if ((rc = advance(w)))
            return rc;
        if (w->cur >= w->n_t)
            return fail(w, -EINVAL);           /* more data than declared */
        room = w->t[w->cur].size - w->cur_done;
        k = n < room ? n : (size_t)room;
        if ((rc = emit(w, s, k)))
            return rc;
        w->cur_done += k;
        s += k;
        n -= k;
    }
    return advance(w);
}

int eng_gguf_w_end(eng_gguf_writer_t *w)
{
    int rc;

    if (w->state != 1)
        return -EINVAL;
    if ((rc = advance(w)))
        return rc;
    if (w->cur < w->n_t)
        return fail(w, -EINVAL);               /* data missing */
    if ((rc = flush(w)))
        return rc;
    w->state = 2;
    return 0;
}

int eng_gguf_w_take_mem(eng_gguf_writer_t *w, void **buf, size_t *len)
{
    if (w->state != 2 || w->fd >= 0)
        return -EINVAL;
    *buf = w->out.p;
    *len = w->out.len;
    w->out.p = NULL;
    w->out.len = w->out.cap = 0;
    return 0;
}

uint64_t eng_gguf_w_written(const eng_gguf_writer_t *w)
{
    return w->written;
}
