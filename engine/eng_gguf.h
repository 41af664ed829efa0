/*
 * eng_gguf.h - GGUF v2/v3 model files, read over mmap, every byte checked.
 *
 * A GGUF file is: header (magic "GGUF", version, tensor count, kv count),
 * the metadata key/value pairs, the tensor infos (name, dims, type,
 * offset), padding to general.alignment (default 32), then tensor data.
 *
 * Untrusted input: every count, length, offset and shape is checked against
 * the file size before it is used. A malformed, truncated or hostile file
 * gives -EINVAL (or -ENOMEM / -errno for system errors) and one message in
 * err naming the key or tensor at fault and its byte offset, e.g.
 *   "tensor 'blk.3.attn_q.weight' (info at byte 18812): data [16777216,
 *    +8388608) runs past the end of the file (20971520 bytes)"
 * never a crash, a hang or an out-of-bounds read.
 *
 * Lifetime: the reader owns the mapping; strings and array data returned
 * point into it and live until eng_gguf_close(). Nothing is copied.
 *
 * What open checks (so no getter can fail on a file that opened):
 *   1. magic "GGUF"; version 2 or 3 (v1 and big-endian files are refused
 *      with a message saying so);
 *   2. every string length and array count against the bytes left, before
 *      any allocation or loop; keys 1..65535 bytes, unique; value and
 *      element types known; arrays of arrays are refused;
 *   3. general.alignment (any integer type) a power of two in [1, 2^30];
 *   4. tensor names unique; ndim 1..4; ne[] products and byte sizes free
 *      of overflow; a known type whose block size divides ne[0]; offset a
 *      multiple of the alignment; [data start + offset, + size) inside
 *      the file.
 * Memory: O(file size) at worst (tables sized by counts already checked
 * against the bytes that would hold them); string arrays are indexed at
 * open (one u64 per element), so a 128k-token vocab opens in ~10 ms.
 * A file truncated by someone else while mapped can still SIGBUS: open
 * validates sizes once, it does not lock the file.
 */
#ifndef ENG_GGUF_H
#define ENG_GGUF_H

#include <stddef.h>
#include <stdint.h>

#include "eng_types.h"

enum eng_gguf_vtype {
    ENG_GGUF_U8 = 0, ENG_GGUF_I8 = 1, ENG_GGUF_U16 = 2, ENG_GGUF_I16 = 3,
    ENG_GGUF_U32 = 4, ENG_GGUF_I32 = 5, ENG_GGUF_F32 = 6, ENG_GGUF_BOOL = 7,
    ENG_GGUF_STRING = 8, ENG_GGUF_ARRAY = 9, ENG_GGUF_U64 = 10, ENG_GGUF_I64 = 11,
    ENG_GGUF_F64 = 12,
};

struct eng_gguf_str {
    const char *p;  /* NOT NUL-terminated; points into the mapping */
    uint64_t len;
};

#define ENG_GGUF_MAX_DIMS 4

struct eng_gguf_tensor {
    struct eng_gguf_str name;
    uint32_t type;                    /* enum eng_type */
    uint32_t ndim;
    uint64_t ne[ENG_GGUF_MAX_DIMS];   /* ne[0] is the row length; unused dims are 1 */
    uint64_t offset;                  /* from the start of the data section */
    uint64_t size;                    /* bytes, from the type and shape */
    const void *data;                 /* into the mapping */
};

typedef struct eng_gguf eng_gguf_t;

/* Open and validate a file (mmap, read-only). */
int eng_gguf_open(eng_gguf_t **out, const char *path, char *err, size_t errlen);
/* Validate a buffer the caller keeps alive (fuzzing, tests). */
int eng_gguf_open_mem(eng_gguf_t **out, const void *buf, size_t len, char *err, size_t errlen);
void eng_gguf_close(eng_gguf_t *g);

uint32_t eng_gguf_version(const eng_gguf_t *g);
uint64_t eng_gguf_alignment(const eng_gguf_t *g);
const void *eng_gguf_base(const eng_gguf_t *g);   /* start of the file */
size_t eng_gguf_file_size(const eng_gguf_t *g);

/* Metadata: index of a key, or -ENOENT. */
uint64_t eng_gguf_kv_count(const eng_gguf_t *g);
int64_t eng_gguf_find(const eng_gguf_t *g, const char *key);
struct eng_gguf_str eng_gguf_kv_key(const eng_gguf_t *g, int64_t i);
enum eng_gguf_vtype eng_gguf_kv_type(const eng_gguf_t *g, int64_t i);
/* Scalars: 0 and *out set when the value has a compatible type (any
 * integer type that fits for the integer getters; f32/f64 for the float
 * getter; bool for get_bool); -EINVAL (wrong type) or -ENOENT otherwise. */
int eng_gguf_get_u64(const eng_gguf_t *g, const char *key, uint64_t *out);
int eng_gguf_get_i64(const eng_gguf_t *g, const char *key, int64_t *out);
int eng_gguf_get_u32(const eng_gguf_t *g, const char *key, uint32_t *out);
int eng_gguf_get_f32(const eng_gguf_t *g, const char *key, float *out);
int eng_gguf_get_bool(const eng_gguf_t *g, const char *key, int *out);
int eng_gguf_get_str(const eng_gguf_t *g, const char *key, struct eng_gguf_str *out);
/* Arrays: element type and length; numeric arrays expose their raw,
 * little-endian, possibly unaligned data; string arrays by index (O(1):
 * offsets are indexed at open time). */
int eng_gguf_get_arr(const eng_gguf_t *g, const char *key, enum eng_gguf_vtype *etype,
                     uint64_t *len);
const void *eng_gguf_arr_data(const eng_gguf_t *g, const char *key);
int eng_gguf_arr_str(const eng_gguf_t *g, const char *key, uint64_t i, struct eng_gguf_str *out);
/* Read element i of a numeric array as double / int64 (any numeric type). */
int eng_gguf_arr_f64(const eng_gguf_t *g, const char *key, uint64_t i, double *out);
int eng_gguf_arr_i64(const eng_gguf_t *g, const char *key, uint64_t i, int64_t *out);

/* Tensors. */
uint64_t eng_gguf_tensor_count(const eng_gguf_t *g);
const struct eng_gguf_tensor *eng_gguf_tensor(const eng_gguf_t *g, uint64_t i);
const struct eng_gguf_tensor *eng_gguf_find_tensor(const eng_gguf_t *g, const char *name);

/* Compare a GGUF string with a C string. */
int eng_gguf_str_eq(struct eng_gguf_str s, const char *c);

/*
 * Additions for tools that walk every key (favo model info, tests). Index
 * i is 0..eng_gguf_kv_count()-1; same return conventions as the getters
 * above (-ENOENT for a bad index, -EINVAL for a wrong type, -ERANGE for an
 * array index past the end).
 */
const char *eng_gguf_vtype_name(enum eng_gguf_vtype t);  /* "u32", "string"... */
uint64_t eng_gguf_data_offset(const eng_gguf_t *g);      /* start of the data section */
uint64_t eng_gguf_kv_offset(const eng_gguf_t *g, int64_t i); /* byte offset of key i */
int eng_gguf_kv_u64(const eng_gguf_t *g, int64_t i, uint64_t *out);
int eng_gguf_kv_i64(const eng_gguf_t *g, int64_t i, int64_t *out);
int eng_gguf_kv_f64(const eng_gguf_t *g, int64_t i, double *out);  /* f32 or f64 */
int eng_gguf_kv_bool(const eng_gguf_t *g, int64_t i, int *out);
int eng_gguf_kv_str(const eng_gguf_t *g, int64_t i, struct eng_gguf_str *out);
int eng_gguf_kv_arr(const eng_gguf_t *g, int64_t i, enum eng_gguf_vtype *etype, uint64_t *len);
/* Raw element data of a numeric (or bool) array; NULL for string arrays. */
const void *eng_gguf_kv_arr_data(const eng_gguf_t *g, int64_t i);
int eng_gguf_kv_arr_str(const eng_gguf_t *g, int64_t i, uint64_t j, struct eng_gguf_str *out);
int eng_gguf_kv_arr_f64(const eng_gguf_t *g, int64_t i, uint64_t j, double *out);
int eng_gguf_kv_arr_i64(const eng_gguf_t *g, int64_t i, uint64_t j, int64_t *out);

#endif /* ENG_GGUF_H */
