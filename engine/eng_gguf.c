/*
 * eng_gguf.c - the GGUF reader: one validating pass over the mapping at
 * open time, then O(1) lookups.
 *
 * Open does all the checking, so getters never fail on a file that opened:
 *   1. header: magic, version (2 or 3; 1 and big-endian refused), counts;
 *   2. every key/value: key length, type, value length (strings, arrays)
 *      against the bytes left BEFORE anything is allocated or looped over;
 *      string arrays get one offset per element (the vocab index);
 *   3. every tensor info: name, ndim 1..4, ne[] without overflow, a known
 *      type whose block size divides ne[0], offset aligned;
 *   4. data section at align_up(end of infos, general.alignment); each
 *      tensor's [offset, offset + size) inside the file.
 * Keys and tensor names go into open-addressing hash tables (duplicates are
 * errors). Allocation is bounded by the file size: every table entry is
 * backed by at least as many file bytes as its index entry takes (a kv is
 * >= 13 bytes of file, a tensor info >= 32, a string element >= 8).
 *
 * Error messages name the key or tensor (printable characters only, cut at
 * 64) and the byte offset where the bad field starts.
 */
#include "eng_gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "eng_gguf.c reads little-endian GGUF files with plain loads"
#endif

#define GGUF_MAGIC 0x46554747u /* "GGUF" read as a little-endian u32 */
#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_KEY_LEN 65535  /* the GGUF spec's bound on key length */
#define NAME_SHOW 64            /* characters of a key/name shown in errors */

struct gguf_kv {
    struct eng_gguf_str key;
    uint64_t key_off;         /* byte offset of the key's length field */
    uint32_t type;            /* enum eng_gguf_vtype */
    uint32_t etype;           /* arrays: element type */
    uint64_t len;             /* arrays: element count; strings: byte length */
    const uint8_t *val;       /* scalars: the value; strings: the bytes;
                                 arrays: the first element */
    uint64_t str0;            /* string arrays: first index into g->stroff */
};

struct eng_gguf {
    const uint8_t *base;
    size_t size;
    int mapped;
    uint32_t version;
    uint64_t alignment;
    uint64_t data_off;
    uint64_t n_kv, n_tensors;
    struct gguf_kv *kv;
    struct eng_gguf_tensor *t;
    uint64_t *stroff;         /* offsets of every string-array element's length */
    uint64_t n_stroff;
    uint64_t *kv_hash, *t_hash; /* index + 1; 0 = empty; power-of-two sizes */
    uint64_t kv_mask, t_mask;
};

/* Reading state: the cursor, and where the error message goes. */
struct rd {
    const uint8_t *base;
    uint64_t size, pos;
    char *err;
    size_t errlen;
};

static void seterr(struct rd *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void seterr(struct rd *r, const char *fmt, ...)
{
    va_list ap;

    if (!r->err || !r->errlen)
        return;
    va_start(ap, fmt);
    vsnprintf(r->err, r->errlen, fmt, ap);
    va_end(ap);
}

/* A name made safe to print: printable ASCII, cut at NAME_SHOW with "...". */
static const char *show(char buf[NAME_SHOW + 4], const uint8_t *p, uint64_t len)
{
    uint64_t n = len < NAME_SHOW ? len : NAME_SHOW, i;

    for (i = 0; i < n; i++)
        buf[i] = p[i] >= 0x20 && p[i] < 0x7f && p[i] != '\'' ? (char)p[i] : '?';
    if (len > NAME_SHOW)
        buf[i++] = '.', buf[i++] = '.', buf[i++] = '.';
    buf[i] = 0;
    return buf;
}

static uint64_t ld64(const uint8_t *p)
{
    uint64_t v;

    memcpy(&v, p, 8);
    return v;
}

static uint32_t ld32(const uint8_t *p)
{
    uint32_t v;

    memcpy(&v, p, 4);
    return v;
}

static uint64_t left(const struct rd *r)
{
    return r->size - r->pos;
}

/* Fixed size of a scalar value type; 0 for string, array and unknown. */
static uint64_t vtype_size(uint32_t t)
{
    switch (t) {
    case ENG_GGUF_U8: case ENG_GGUF_I8: case ENG_GGUF_BOOL: return 1;
    case ENG_GGUF_U16: case ENG_GGUF_I16: return 2;
    case ENG_GGUF_U32: case ENG_GGUF_I32: case ENG_GGUF_F32: return 4;
    case ENG_GGUF_U64: case ENG_GGUF_I64: case ENG_GGUF_F64: return 8;
    default: return 0;
    }
}

static const char *vtype_name(uint32_t t)
{
    static const char *const names[] = { "u8", "i8", "u16", "i16", "u32", "i32", "f32",
                                         "bool", "string", "array", "u64", "i64", "f64" };

    return t < sizeof(names) / sizeof(names[0]) ? names[t] : "unknown";
}

const char *eng_gguf_vtype_name(enum eng_gguf_vtype t)
{
    return vtype_name((uint32_t)t);
}

static uint64_t hash_bytes(const void *p, uint64_t len)
{
    const uint8_t *s = p;
    uint64_t h = 0xcbf29ce484222325ull;    /* FNV-1a, then a final mix */

    for (uint64_t i = 0; i < len; i++)
        h = (h ^ s[i]) * 0x100000001b3ull;
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ull;
    return h ^ (h >> 32);
}

static int str_eq_mem(struct eng_gguf_str s, const void *p, uint64_t len)
{
    return s.len == len && !memcmp(s.p, p, len);
}

int eng_gguf_str_eq(struct eng_gguf_str s, const char *c)
{
    return c && str_eq_mem(s, c, strlen(c));
}

static uint64_t table_size(uint64_t n)
{
    uint64_t sz = 16;

    while (sz < 2 * n)
        sz <<= 1;
    return sz;
}

/* Insert entry idx with name s; returns the existing index + 1 on a
 * duplicate, 0 on success. */
static uint64_t hash_insert(uint64_t *tab, uint64_t mask, struct eng_gguf_str s, uint64_t idx,
                            struct eng_gguf_str (*name_of)(const struct eng_gguf *, uint64_t),
                            const struct eng_gguf *g)
{
    uint64_t h = hash_bytes(s.p, s.len) & mask;

    while (tab[h]) {
        struct eng_gguf_str o = name_of(g, tab[h] - 1);

        if (str_eq_mem(o, s.p, s.len))
            return tab[h];
        h = (h + 1) & mask;
    }
    tab[h] = idx + 1;
    return 0;
}

static struct eng_gguf_str kv_name(const struct eng_gguf *g, uint64_t i)
{
    return g->kv[i].key;
}

static struct eng_gguf_str t_name(const struct eng_gguf *g, uint64_t i)
{
    return g->t[i].name;
}

static int64_t hash_find(const uint64_t *tab, uint64_t mask, const char *name,
                         struct eng_gguf_str (*name_of)(const struct eng_gguf *, uint64_t),
                         const struct eng_gguf *g)
{
    uint64_t len, h;

    if (!tab || !name)
        return -ENOENT;
    len = strlen(name);
    h = hash_bytes(name, len) & mask;
    while (tab[h]) {
        if (str_eq_mem(name_of(g, tab[h] - 1), name, len))
            return (int64_t)(tab[h] - 1);
        h = (h + 1) & mask;
    }
    return -ENOENT;
}

/* Read a string (u64 length + bytes) at the cursor. what/ctx name it in errors. */
static int rd_str(struct rd *r, struct eng_gguf_str *s, const char *what, const char *ctx)
{
    uint64_t at = r->pos, len;

    if (left(r) < 8) {
        seterr(r, "%s%s length at byte %llu: file ends (%llu bytes)", ctx, what,
               (unsigned long long)at, (unsigned long long)r->size);
        return -EINVAL;
    }
    len = ld64(r->base + r->pos);
    r->pos += 8;
    if (len > left(r)) {
        seterr(r, "%s%s at byte %llu: length %llu runs past the end of the file (%llu bytes)",
               ctx, what, (unsigned long long)at, (unsigned long long)len,
               (unsigned long long)r->size);
        return -EINVAL;
    }
    s->p = (const char *)r->base + r->pos;
    s->len = len;
    r->pos += len;
    return 0;
}

static int rd_u32(struct rd *r, uint32_t *v, const char *what, const char *ctx)
{
    if (left(r) < 4) {
        seterr(r, "%s%s at byte %llu: file ends (%llu bytes)", ctx, what,
               (unsigned long long)r->pos, (unsigned long long)r->size);
        return -EINVAL;
    }
    *v = ld32(r->base + r->pos);
    r->pos += 4;
    return 0;
}

static int rd_u64(struct rd *r, uint64_t *v, const char *what, const char *ctx)
{
    if (left(r) < 8) {
        seterr(r, "%s%s at byte %llu: file ends (%llu bytes)", ctx, what,
               (unsigned long long)r->pos, (unsigned long long)r->size);
        return -EINVAL;
    }
    *v = ld64(r->base + r->pos);
    r->pos += 8;
    return 0;
}

/* First pass over one kv's value: bounds only; counts string-array elements. */
static int scan_value(struct rd *r, struct gguf_kv *kv, const char *ctx, uint64_t *nstr)
{
    uint64_t at = r->pos, esz;
    uint32_t t = kv->type;

    if (t == ENG_GGUF_STRING) {
        struct eng_gguf_str s;
        int rc = rd_str(r, &s, "string value", ctx);

        if (rc)
            return rc;
        kv->val = (const uint8_t *)s.p;
        kv->len = s.len;
        return 0;
    }
    if (t == ENG_GGUF_ARRAY) {
        uint32_t et;
        uint64_t n;

        if (rd_u32(r, &et, "array element type", ctx) || rd_u64(r, &n, "array length", ctx))
            return -EINVAL;
        kv->etype = et;
        kv->len = n;
        if (et == ENG_GGUF_ARRAY) {
            seterr(r, "%sarray at byte %llu: arrays of arrays are not supported", ctx,
                   (unsigned long long)at);
            return -EINVAL;
        }
        if (et == ENG_GGUF_STRING) {
            /* each element takes at least its 8-byte length */
            if (n > left(r) / 8) {
                seterr(r, "%sstring array at byte %llu: %llu elements cannot fit in the %llu "
                       "bytes left in the file", ctx, (unsigned long long)at,
                       (unsigned long long)n, (unsigned long long)left(r));
                return -EINVAL;
            }
            kv->val = r->base + r->pos;
            for (uint64_t i = 0; i < n; i++) {
                uint64_t eat = r->pos, len;

                if (left(r) < 8) {
                    seterr(r, "%sstring array element %llu at byte %llu: file ends (%llu bytes)",
                           ctx, (unsigned long long)i, (unsigned long long)eat,
                           (unsigned long long)r->size);
                    return -EINVAL;
                }
                len = ld64(r->base + r->pos);
                r->pos += 8;
                if (len > left(r)) {
                    seterr(r, "%sstring array element %llu at byte %llu: length %llu runs past "
                           "the end of the file (%llu bytes)", ctx, (unsigned long long)i,
                           (unsigned long long)eat, (unsigned long long)len,
                           (unsigned long long)r->size);
                    return -EINVAL;
                }
                r->pos += len;
            }
            *nstr += n;
            return 0;
        }
        esz = vtype_size(et);
        if (!esz) {
            seterr(r, "%sarray at byte %llu: unknown element type %u", ctx,
                   (unsigned long long)at, et);
            return -EINVAL;
        }
        if (n > left(r) / esz) {
            seterr(r, "%sarray at byte %llu: %llu elements of %s run past the end of the file "
                   "(%llu bytes)", ctx, (unsigned long long)at, (unsigned long long)n,
                   vtype_name(et), (unsigned long long)r->size);
            return -EINVAL;
        }
        kv->val = r->base + r->pos;
        r->pos += n * esz;
        return 0;
    }
    esz = vtype_size(t);
    if (!esz) {
        seterr(r, "%svalue type at byte %llu: unknown type %u", ctx,
               (unsigned long long)(at - 4), t);
        return -EINVAL;
    }
    if (left(r) < esz) {
        seterr(r, "%s%s value at byte %llu: file ends (%llu bytes)", ctx, vtype_name(t),
               (unsigned long long)at, (unsigned long long)r->size);
        return -EINVAL;
    }
    kv->val = r->base + r->pos;
    r->pos += esz;
    return 0;
}

static int kv_get_u64_raw(const struct gguf_kv *kv, uint64_t *u, int64_t *s, int *is_signed)
{
    const uint8_t *p = kv->val;

    *is_signed = 0;
    switch (kv->type) {
    case ENG_GGUF_U8: *u = p[0]; return 0;
    case ENG_GGUF_U16: { uint16_t v; memcpy(&v, p, 2); *u = v; return 0; }
    case ENG_GGUF_U32: *u = ld32(p); return 0;
    case ENG_GGUF_U64: *u = ld64(p); return 0;
    case ENG_GGUF_I8: *s = (int8_t)p[0]; break;
    case ENG_GGUF_I16: { int16_t v; memcpy(&v, p, 2); *s = v; break; }
    case ENG_GGUF_I32: { int32_t v; memcpy(&v, p, 4); *s = v; break; }
    case ENG_GGUF_I64: { int64_t v; memcpy(&v, p, 8); *s = v; break; }
    default: return -EINVAL;
    }
    *is_signed = 1;
    return 0;
}

/* general.alignment: any unsigned-valued integer, a non-zero power of two. */
static int check_alignment(struct rd *r, struct eng_gguf *g, const struct gguf_kv *kv)
{
    uint64_t u = 0;
    int64_t s = 0;
    int sg;

    if (kv_get_u64_raw(kv, &u, &s, &sg)) {
        seterr(r, "key 'general.alignment' (at byte %llu): type %s, want an unsigned integer",
               (unsigned long long)kv->key_off, vtype_name(kv->type));
        return -EINVAL;
    }
    if (sg)
        u = s < 0 ? 0 : (uint64_t)s;
    if (!u || (u & (u - 1)) || u > (1u << 30)) {
        seterr(r, "key 'general.alignment' (at byte %llu): %llu is not a power of two in "
               "[1, 2^30]", (unsigned long long)kv->key_off,
               (unsigned long long)(sg ? (uint64_t)s : u));
        return -EINVAL;
    }
    g->alignment = u;
    return 0;
}

static int parse_kvs(struct rd *r, struct eng_gguf *g)
{
    uint64_t nstr = 0, si = 0;
    char nb[NAME_SHOW + 4], ctx[NAME_SHOW + 64];

    /* every kv takes at least 8 (key length) + 4 (type) + 1 (value) bytes */
    if (g->n_kv > left(r) / 13) {
        seterr(r, "header kv count at byte 16: %llu key/value pairs cannot fit in the %llu "
               "bytes left in the file", (unsigned long long)g->n_kv,
               (unsigned long long)left(r));
        return -EINVAL;
    }
    g->kv = calloc(g->n_kv ? g->n_kv : 1, sizeof(*g->kv));
    g->kv_mask = table_size(g->n_kv) - 1;
    g->kv_hash = calloc(g->kv_mask + 1, sizeof(*g->kv_hash));
    if (!g->kv || !g->kv_hash) {
        seterr(r, "out of memory for %llu keys", (unsigned long long)g->n_kv);
        return -ENOMEM;
    }
    for (uint64_t i = 0; i < g->n_kv; i++) {
        struct gguf_kv *kv = &g->kv[i];
        uint64_t dup;
        int rc;

        kv->key_off = r->pos;
        snprintf(ctx, sizeof(ctx), "key %llu (at byte %llu): ", (unsigned long long)i,
                 (unsigned long long)kv->key_off);
        if ((rc = rd_str(r, &kv->key, "key", ctx)))
            return rc;
        if (!kv->key.len || kv->key.len > GGUF_MAX_KEY_LEN) {
            seterr(r, "key %llu (at byte %llu): length %llu, want 1..%u",
                   (unsigned long long)i, (unsigned long long)kv->key_off,
                   (unsigned long long)kv->key.len, GGUF_MAX_KEY_LEN);
            return -EINVAL;
        }
        snprintf(ctx, sizeof(ctx), "key '%s' (at byte %llu): ",
                 show(nb, (const uint8_t *)kv->key.p, kv->key.len),
                 (unsigned long long)kv->key_off);
        if ((dup = hash_insert(g->kv_hash, g->kv_mask, kv->key, i, kv_name, g))) {
            seterr(r, "%sduplicate key (first at byte %llu)", ctx,
                   (unsigned long long)g->kv[dup - 1].key_off);
            return -EINVAL;
        }
        if ((rc = rd_u32(r, &kv->type, "value type", ctx)))
            return rc;
        if ((rc = scan_value(r, kv, ctx, &nstr)))
            return rc;
        if (eng_gguf_str_eq(kv->key, "general.alignment") && (rc = check_alignment(r, g, kv)))
            return rc;
    }
    /* Index string arrays: nstr elements each took >= 8 file bytes. */
    g->n_stroff = nstr;
    if (nstr) {
        g->stroff = malloc(nstr * sizeof(*g->stroff));
        if (!g->stroff) {
            seterr(r, "out of memory indexing %llu array strings", (unsigned long long)nstr);
            return -ENOMEM;
        }
    }
    for (uint64_t i = 0; i < g->n_kv; i++) {
        struct gguf_kv *kv = &g->kv[i];
        uint64_t off;

        if (kv->type != ENG_GGUF_ARRAY || kv->etype != ENG_GGUF_STRING)
            continue;
        kv->str0 = si;
        off = (uint64_t)(kv->val - g->base);
        for (uint64_t j = 0; j < kv->len; j++) {
            g->stroff[si++] = off;
            off += 8 + ld64(g->base + off);   /* bounds checked by scan_value */
        }
    }
    return 0;
}

static int parse_tensors(struct rd *r, struct eng_gguf *g)
{
    char nb[NAME_SHOW + 4], ctx[NAME_SHOW + 64];

    /* every info takes at least 8 (name length) + 4 (ndim) + 8 (ne) + 4 + 8 bytes */
    if (g->n_tensors > left(r) / 32) {
        seterr(r, "header tensor count at byte 8: %llu tensor infos cannot fit in the %llu "
               "bytes left in the file after the metadata", (unsigned long long)g->n_tensors,
               (unsigned long long)left(r));
        return -EINVAL;
    }
    g->t = calloc(g->n_tensors ? g->n_tensors : 1, sizeof(*g->t));
    g->t_mask = table_size(g->n_tensors) - 1;
    g->t_hash = calloc(g->t_mask + 1, sizeof(*g->t_hash));
    if (!g->t || !g->t_hash) {
        seterr(r, "out of memory for %llu tensors", (unsigned long long)g->n_tensors);
        return -ENOMEM;
    }
    uint64_t *info_off = calloc(g->n_tensors ? g->n_tensors : 1, sizeof(uint64_t));
    int rc = 0;

    if (!info_off) {
        seterr(r, "out of memory for %llu tensors", (unsigned long long)g->n_tensors);
        return -ENOMEM;
    }
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        struct eng_gguf_tensor *t = &g->t[i];
        const struct eng_type_info *ti;
        uint64_t at = r->pos, dup, nel = 1, rows = 1;

        info_off[i] = at;
        snprintf(ctx, sizeof(ctx), "tensor %llu (info at byte %llu): ", (unsigned long long)i,
                 (unsigned long long)at);
        if ((rc = rd_str(r, &t->name, "name", ctx)))
            goto out;
        snprintf(ctx, sizeof(ctx), "tensor '%s' (info at byte %llu): ",
                 show(nb, (const uint8_t *)t->name.p, t->name.len), (unsigned long long)at);
        if ((dup = hash_insert(g->t_hash, g->t_mask, t->name, i, t_name, g))) {
            seterr(r, "%sduplicate tensor name (first at byte %llu)", ctx,
                   (unsigned long long)info_off[dup - 1]);
            rc = -EINVAL;
            goto out;
        }
        if ((rc = rd_u32(r, &t->ndim, "ndim", ctx)))
            goto out;
        if (t->ndim < 1 || t->ndim > ENG_GGUF_MAX_DIMS) {
            seterr(r, "%sndim %u at byte %llu, want 1..%d", ctx, t->ndim,
                   (unsigned long long)(r->pos - 4), ENG_GGUF_MAX_DIMS);
            rc = -EINVAL;
            goto out;
        }
        for (uint32_t d = 0; d < ENG_GGUF_MAX_DIMS; d++)
            t->ne[d] = 1;
        for (uint32_t d = 0; d < t->ndim; d++) {
            uint64_t dat = r->pos;

            if ((rc = rd_u64(r, &t->ne[d], "ne", ctx)))
                goto out;
            /* nel: the product with zero dims counted as 1, so a zero dim
             * cannot hide an overflowing product of the others */
            if (t->ne[d] > (uint64_t)INT64_MAX ||
                (t->ne[d] && nel > (uint64_t)INT64_MAX / t->ne[d])) {
                seterr(r, "%sne[%u] = %llu at byte %llu: element count overflows", ctx, d,
                       (unsigned long long)t->ne[d], (unsigned long long)dat);
                rc = -EINVAL;
                goto out;
            }
            nel *= t->ne[d] ? t->ne[d] : 1;
            if (d)
                rows *= t->ne[d];
        }
        if ((rc = rd_u32(r, &t->type, "type", ctx)))
            goto out;
        ti = eng_type_get(t->type);
        if (!ti) {
            seterr(r, "%sunknown tensor type %u at byte %llu", ctx, t->type,
                   (unsigned long long)(r->pos - 4));
            rc = -EINVAL;
            goto out;
        }
        if (t->ne[0] % ti->blck) {
            seterr(r, "%sne[0] = %llu is not a multiple of the %s block size %u", ctx,
                   (unsigned long long)t->ne[0], ti->name, ti->blck);
            rc = -EINVAL;
            goto out;
        }
        {
            uint64_t blocks = t->ne[0] / ti->blck, row;

            if (blocks > (uint64_t)INT64_MAX / ti->size) {
                seterr(r, "%srow of %llu elements: byte size overflows", ctx,
                       (unsigned long long)t->ne[0]);
                rc = -EINVAL;
                goto out;
            }
            row = blocks * ti->size;
            if (rows && row > (uint64_t)INT64_MAX / rows) {
                seterr(r, "%stensor size overflows (%llu rows of %llu bytes)", ctx,
                       (unsigned long long)rows, (unsigned long long)row);
                rc = -EINVAL;
                goto out;
            }
            t->size = row * rows;
        }
        if ((rc = rd_u64(r, &t->offset, "data offset", ctx)))
            goto out;
    }
    /* The data section starts at the next multiple of the alignment. */
    {
        uint64_t a = g->alignment, end = r->pos;

        g->data_off = (end + a - 1) / a * a;   /* end <= size < 2^63, a <= 2^30 */
        if (g->n_tensors && g->data_off > r->size) {
            seterr(r, "data section at byte %llu (tensor infos end at %llu, alignment %llu) "
                   "starts past the end of the file (%llu bytes)",
                   (unsigned long long)g->data_off, (unsigned long long)end,
                   (unsigned long long)a, (unsigned long long)r->size);
            rc = -EINVAL;
            goto out;
        }
    }
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        struct eng_gguf_tensor *t = &g->t[i];
        uint64_t avail = r->size - g->data_off;

        snprintf(ctx, sizeof(ctx), "tensor '%s' (info at byte %llu): ",
                 show(nb, (const uint8_t *)t->name.p, t->name.len),
                 (unsigned long long)info_off[i]);
        if (t->offset % g->alignment) {
            seterr(r, "%sdata offset %llu is not a multiple of the alignment %llu", ctx,
                   (unsigned long long)t->offset, (unsigned long long)g->alignment);
            rc = -EINVAL;
            goto out;
        }
        if (t->offset > avail || t->size > avail - t->offset) {
            seterr(r, "%sdata [%llu, +%llu) runs past the end of the file (%llu bytes)", ctx,
                   (unsigned long long)(g->data_off + (t->offset < avail ? t->offset : avail)),
                   (unsigned long long)t->size, (unsigned long long)r->size);
            rc = -EINVAL;
            goto out;
        }
        t->data = g->base + g->data_off + t->offset;
    }
out:
    free(info_off);
    return rc;
}

static int parse(struct eng_gguf *g, char *err, size_t errlen)
{
    struct rd r = { g->base, g->size, 0, err, errlen };
    uint32_t magic, version;
    int rc;

    if (g->size < 4) {
        seterr(&r, "file is %llu bytes: too short for the GGUF magic at byte 0",
               (unsigned long long)g->size);
        return -EINVAL;
    }
    magic = ld32(g->base);
    if (magic != GGUF_MAGIC) {
        seterr(&r, "bad magic at byte 0: %02x %02x %02x %02x, want 'GGUF'", g->base[0],
               g->base[1], g->base[2], g->base[3]);
        return -EINVAL;
    }
    r.pos = 4;
    if ((rc = rd_u32(&r, &version, "version", "header ")))
        return rc;
    if (version == 1) {
        seterr(&r, "header version at byte 4: GGUF v1 is not supported (want v2 or v3; "
               "convert the file with a current llama.cpp)");
        return -EINVAL;
    }
    if (version != 2 && version != 3) {
        seterr(&r, "header version at byte 4: %u is not a GGUF version this reader knows "
               "(2 or 3)%s", version,
               (version & 0xffff) == 0 ? "; big-endian files are not supported" : "");
        return -EINVAL;
    }
    g->version = version;
    if ((rc = rd_u64(&r, &g->n_tensors, "tensor count", "header ")) ||
        (rc = rd_u64(&r, &g->n_kv, "kv count", "header ")))
        return rc;
    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    if ((rc = parse_kvs(&r, g)))
        return rc;
    return parse_tensors(&r, g);
}

static void free_tables(struct eng_gguf *g)
{
    free(g->kv);
    free(g->t);
    free(g->stroff);
    free(g->kv_hash);
    free(g->t_hash);
}

int eng_gguf_open_mem(eng_gguf_t **out, const void *buf, size_t len, char *err, size_t errlen)
{
    struct eng_gguf *g;
    int rc;

    *out = NULL;
    if (err && errlen)
        err[0] = 0;
    g = calloc(1, sizeof(*g));
    if (!g) {
        if (err && errlen)
            snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    g->base = buf;
    g->size = buf ? len : 0;
    if ((rc = parse(g, err, errlen))) {
        free_tables(g);
        free(g);
        return rc;
    }
    *out = g;
    return 0;
}

int eng_gguf_open(eng_gguf_t **out, const char *path, char *err, size_t errlen)
{
    struct stat st;
    void *map;
    int fd, rc;

    *out = NULL;
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        rc = -errno;
        if (err && errlen)
            snprintf(err, errlen, "cannot open: %s", strerror(-rc));
        return rc;
    }
    if (fstat(fd, &st) < 0) {
        rc = -errno;
        close(fd);
        if (err && errlen)
            snprintf(err, errlen, "cannot stat: %s", strerror(-rc));
        return rc;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        if (err && errlen)
            snprintf(err, errlen, "not a regular file");
        return -EINVAL;
    }
    if (st.st_size == 0) {
        close(fd);
        if (err && errlen)
            snprintf(err, errlen, "file is 0 bytes: too short for the GGUF magic at byte 0");
        return -EINVAL;
    }
    map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    rc = -errno;
    close(fd);
    if (map == MAP_FAILED) {
        if (err && errlen)
            snprintf(err, errlen, "cannot mmap %lld bytes: %s", (long long)st.st_size,
                     strerror(-rc));
        return rc;
    }
    rc = eng_gguf_open_mem(out, map, (size_t)st.st_size, err, errlen);
    if (rc) {
        munmap(map, (size_t)st.st_size);
        return rc;
    }
    (*out)->mapped = 1;
    return 0;
}

void eng_gguf_close(eng_gguf_t *g)
{
    if (!g)
        return;
    if (g->mapped)
        munmap((void *)g->base, g->size);
    free_tables(g);
    free(g);
}

uint32_t eng_gguf_version(const eng_gguf_t *g) { return g->version; }
uint64_t eng_gguf_alignment(const eng_gguf_t *g) { return g->alignment; }
const void *eng_gguf_base(const eng_gguf_t *g) { return g->base; }
size_t eng_gguf_file_size(const eng_gguf_t *g) { return g->size; }
uint64_t eng_gguf_data_offset(const eng_gguf_t *g) { return g->data_off; }
uint64_t eng_gguf_kv_count(const eng_gguf_t *g) { return g->n_kv; }

int64_t eng_gguf_find(const eng_gguf_t *g, const char *key)
{
    return hash_find(g->kv_hash, g->kv_mask, key, kv_name, g);
}

static const struct gguf_kv *kv_at(const eng_gguf_t *g, int64_t i)
{
    return i >= 0 && (uint64_t)i < g->n_kv ? &g->kv[i] : NULL;
}

struct eng_gguf_str eng_gguf_kv_key(const eng_gguf_t *g, int64_t i)
{
    const struct gguf_kv *kv = kv_at(g, i);
    struct eng_gguf_str none = { "", 0 };

    return kv ? kv->key : none;
}

enum eng_gguf_vtype eng_gguf_kv_type(const eng_gguf_t *g, int64_t i)
{
    const struct gguf_kv *kv = kv_at(g, i);

    return kv ? (enum eng_gguf_vtype)kv->type : (enum eng_gguf_vtype)-1;
}

uint64_t eng_gguf_kv_offset(const eng_gguf_t *g, int64_t i)
{
    const struct gguf_kv *kv = kv_at(g, i);

    return kv ? kv->key_off : 0;
}

/* ---- scalar getters, by index and by key ---- */

int eng_gguf_kv_u64(const eng_gguf_t *g, int64_t i, uint64_t *out)
{
    const struct gguf_kv *kv = kv_at(g, i);
    uint64_t u;
    int64_t s;
    int sg;

    if (!kv)
        return -ENOENT;
    if (kv_get_u64_raw(kv, &u, &s, &sg))
        return -EINVAL;
    if (sg) {
        if (s < 0)
            return -EINVAL;
        u = (uint64_t)s;
    }
    *out = u;
    return 0;
}

int eng_gguf_kv_i64(const eng_gguf_t *g, int64_t i, int64_t *out)
{
    const struct gguf_kv *kv = kv_at(g, i);
    uint64_t u;
    int64_t s;
    int sg;

    if (!kv)
        return -ENOENT;
    if (kv_get_u64_raw(kv, &u, &s, &sg))
        return -EINVAL;
    if (!sg) {
        if (u > (uint64_t)INT64_MAX)
            return -EINVAL;
        s = (int64_t)u;
    }
    *out = s;
    return 0;
}

int eng_gguf_kv_f64(const eng_gguf_t *g, int64_t i, double *out)
{
    const struct gguf_kv *kv = kv_at(g, i);

    if (!kv)
        return -ENOENT;
    if (kv->type == ENG_GGUF_F32) {
        float f;

        memcpy(&f, kv->val, 4);
        *out = f;
        return 0;
    }
    if (kv->type == ENG_GGUF_F64) {
        memcpy(out, kv->val, 8);
        return 0;
    }
    return -EINVAL;
}

int eng_gguf_kv_bool(const eng_gguf_t *g, int64_t i, int *out)
{
    const struct gguf_kv *kv = kv_at(g, i);

    if (!kv)
        return -ENOENT;
    if (kv->type != ENG_GGUF_BOOL)
        return -EINVAL;
    *out = kv->val[0] != 0;
    return 0;
}

int eng_gguf_kv_str(const eng_gguf_t *g, int64_t i, struct eng_gguf_str *out)
{
    const struct gguf_kv *kv = kv_at(g, i);

    if (!kv)
        return -ENOENT;
    if (kv->type != ENG_GGUF_STRING)
        return -EINVAL;
    out->p = (const char *)kv->val;
    out->len = kv->len;
    return 0;
}

int eng_gguf_get_u64(const eng_gguf_t *g, const char *key, uint64_t *out)
{
    return eng_gguf_kv_u64(g, eng_gguf_find(g, key), out);
}

int eng_gguf_get_i64(const eng_gguf_t *g, const char *key, int64_t *out)
{
    return eng_gguf_kv_i64(g, eng_gguf_find(g, key), out);
}

int eng_gguf_get_u32(const eng_gguf_t *g, const char *key, uint32_t *out)
{
    uint64_t v;
    int rc = eng_gguf_get_u64(g, key, &v);

    if (rc)
        return rc;
    if (v > UINT32_MAX)
        return -EINVAL;
    *out = (uint32_t)v;
    return 0;
}

int eng_gguf_get_f32(const eng_gguf_t *g, const char *key, float *out)
{
    double d;
    int rc = eng_gguf_kv_f64(g, eng_gguf_find(g, key), &d);

    if (!rc)
        *out = (float)d;
    return rc;
}

int eng_gguf_get_bool(const eng_gguf_t *g, const char *key, int *out)
{
    return eng_gguf_kv_bool(g, eng_gguf_find(g, key), out);
}

int eng_gguf_get_str(const eng_gguf_t *g, const char *key, struct eng_gguf_str *out)
{
    return eng_gguf_kv_str(g, eng_gguf_find(g, key), out);
}

/* ---- arrays ---- */

static const struct gguf_kv *arr_at(const eng_gguf_t *g, int64_t i, int *rc)
{
    const struct gguf_kv *kv = kv_at(g, i);

    *rc = !kv ? -ENOENT : kv->type != ENG_GGUF_ARRAY ? -EINVAL : 0;
    return *rc ? NULL : kv;
}

int eng_gguf_kv_arr(const eng_gguf_t *g, int64_t i, enum eng_gguf_vtype *etype, uint64_t *len)
{
    int rc;
    const struct gguf_kv *kv = arr_at(g, i, &rc);

    if (!kv)
        return rc;
    if (etype)
        *etype = (enum eng_gguf_vtype)kv->etype;
    if (len)
        *len = kv->len;
    return 0;
}

const void *eng_gguf_kv_arr_data(const eng_gguf_t *g, int64_t i)
{
    int rc;
    const struct gguf_kv *kv = arr_at(g, i, &rc);

    return kv && kv->etype != ENG_GGUF_STRING ? kv->val : NULL;
}

int eng_gguf_kv_arr_str(const eng_gguf_t *g, int64_t i, uint64_t j, struct eng_gguf_str *out)
{
    int rc;
    const struct gguf_kv *kv = arr_at(g, i, &rc);
    uint64_t off;

    if (!kv)
        return rc;
    if (kv->etype != ENG_GGUF_STRING)
        return -EINVAL;
    if (j >= kv->len)
        return -ERANGE;
    off = g->stroff[kv->str0 + j];
    out->len = ld64(g->base + off);
    out->p = (const char *)g->base + off + 8;
    return 0;
}

int eng_gguf_kv_arr_i64(const eng_gguf_t *g, int64_t i, uint64_t j, int64_t *out)
{
    int rc;
    const struct gguf_kv *kv = arr_at(g, i, &rc);
    struct gguf_kv e;
    uint64_t u;
    int64_t s;
    int sg;

    if (!kv)
        return rc;
    if (!vtype_size(kv->etype))
        return -EINVAL;
    if (j >= kv->len)
        return -ERANGE;
    if (kv->etype == ENG_GGUF_BOOL) {
        *out = kv->val[j] != 0;
        return 0;
    }
    e.type = kv->etype;
    e.val = kv->val + j * vtype_size(kv->etype);
    if (kv_get_u64_raw(&e, &u, &s, &sg))
        return -EINVAL;
    if (!sg) {
        if (u > (uint64_t)INT64_MAX)
            return -EINVAL;
        s = (int64_t)u;
    }
    *out = s;
    return 0;
}

int eng_gguf_kv_arr_f64(const eng_gguf_t *g, int64_t i, uint64_t j, double *out)
{
    int rc;
    const struct gguf_kv *kv = arr_at(g, i, &rc);
    struct gguf_kv e;
    uint64_t u;
    int64_t s;
    int sg;

    if (!kv)
        return rc;
    if (!vtype_size(kv->etype))
        return -EINVAL;
    if (j >= kv->len)
        return -ERANGE;
    if (kv->etype == ENG_GGUF_F32) {
        float f;

        memcpy(&f, kv->val + 4 * j, 4);
        *out = f;
        return 0;
    }
    if (kv->etype == ENG_GGUF_F64) {
        memcpy(out, kv->val + 8 * j, 8);
        return 0;
    }
    if (kv->etype == ENG_GGUF_BOOL) {
        *out = kv->val[j] != 0;
        return 0;
    }
    e.type = kv->etype;
    e.val = kv->val + j * vtype_size(kv->etype);
    if (kv_get_u64_raw(&e, &u, &s, &sg))
        return -EINVAL;
    *out = sg ? (double)s : (double)u;
    return 0;
}

int eng_gguf_get_arr(const eng_gguf_t *g, const char *key, enum eng_gguf_vtype *etype,
                     uint64_t *len)
{
    return eng_gguf_kv_arr(g, eng_gguf_find(g, key), etype, len);
}

const void *eng_gguf_arr_data(const eng_gguf_t *g, const char *key)
{
    return eng_gguf_kv_arr_data(g, eng_gguf_find(g, key));
}

int eng_gguf_arr_str(const eng_gguf_t *g, const char *key, uint64_t i, struct eng_gguf_str *out)
{
    return eng_gguf_kv_arr_str(g, eng_gguf_find(g, key), i, out);
}

int eng_gguf_arr_f64(const eng_gguf_t *g, const char *key, uint64_t i, double *out)
{
    return eng_gguf_kv_arr_f64(g, eng_gguf_find(g, key), i, out);
}

int eng_gguf_arr_i64(const eng_gguf_t *g, const char *key, uint64_t i, int64_t *out)
{
    return eng_gguf_kv_arr_i64(g, eng_gguf_find(g, key), i, out);
}

/* ---- tensors ---- */

uint64_t eng_gguf_tensor_count(const eng_gguf_t *g)
{
    return g->n_tensors;
}

const struct eng_gguf_tensor *eng_gguf_tensor(const eng_gguf_t *g, uint64_t i)
{
    return i < g->n_tensors ? &g->t[i] : NULL;
}

const struct eng_gguf_tensor *eng_gguf_find_tensor(const eng_gguf_t *g, const char *name)
{
    int64_t i = hash_find(g->t_hash, g->t_mask, name, t_name, g);

    return i < 0 ? NULL : &g->t[i];
}
