/*
 * eng_gguf_write.h - a streaming GGUF v3 writer (favo model make, tests,
 * fuzz seeds).
 *
 * The header, metadata and tensor table are small: they are built in
 * memory. Tensor data is large (a 1B-parameter model is GBs): it is
 * streamed, in declaration order, through a 1 MiB buffer, so writing never
 * needs the file in memory. Padding to the alignment follows every
 * tensor's data, as llama.cpp and the gguf Python package write it.
 *
 *   eng_gguf_writer_new ──► w_kv_* / w_tensor (any order, any number)
 *        ──► w_begin (fd, or memory when fd < 0)  header + kvs + infos written
 *        ──► w_data ... (exactly each tensor's size, in declaration order)
 *        ──► w_end (checks every byte arrived) ──► [w_take_mem] ──► free
 *
 * Output is byte-for-byte determined by the calls made (no timestamps, no
 * uninitialised padding). Errors: -EINVAL (bad argument: duplicate key or
 * tensor, ndim outside 1..4, ne[0] not a whole number of blocks, calls out
 * of order, too much or too little data), -ENOMEM, -errno from write(2).
 * After an error the writer can only be freed.
 */
#ifndef ENG_GGUF_WRITE_H
#define ENG_GGUF_WRITE_H

#include <stddef.h>
#include <stdint.h>

#include "eng_gguf.h"

typedef struct eng_gguf_writer eng_gguf_writer_t;

/* alignment: a power of two; 0 means the default 32. A non-default value
 * is recorded as general.alignment (u32) automatically. */
int eng_gguf_writer_new(eng_gguf_writer_t **out, uint32_t alignment);
void eng_gguf_writer_free(eng_gguf_writer_t *w);

/* Metadata, kept in call order. Keys are copied. */
int eng_gguf_w_u8(eng_gguf_writer_t *w, const char *key, uint8_t v);
int eng_gguf_w_i8(eng_gguf_writer_t *w, const char *key, int8_t v);
int eng_gguf_w_u16(eng_gguf_writer_t *w, const char *key, uint16_t v);
int eng_gguf_w_i16(eng_gguf_writer_t *w, const char *key, int16_t v);
int eng_gguf_w_u32(eng_gguf_writer_t *w, const char *key, uint32_t v);
int eng_gguf_w_i32(eng_gguf_writer_t *w, const char *key, int32_t v);
int eng_gguf_w_u64(eng_gguf_writer_t *w, const char *key, uint64_t v);
int eng_gguf_w_i64(eng_gguf_writer_t *w, const char *key, int64_t v);
int eng_gguf_w_f32(eng_gguf_writer_t *w, const char *key, float v);
int eng_gguf_w_f64(eng_gguf_writer_t *w, const char *key, double v);
int eng_gguf_w_bool(eng_gguf_writer_t *w, const char *key, int v);
int eng_gguf_w_str(eng_gguf_writer_t *w, const char *key, const char *s);
int eng_gguf_w_strn(eng_gguf_writer_t *w, const char *key, const char *s, uint64_t len);
/* Numeric (or bool) array of n elements of etype, little-endian raw data. */
int eng_gguf_w_arr(eng_gguf_writer_t *w, const char *key, enum eng_gguf_vtype etype,
                   const void *data, uint64_t n);
int eng_gguf_w_arr_str(eng_gguf_writer_t *w, const char *key, const struct eng_gguf_str *s,
                       uint64_t n);

/* Declare a tensor; its data comes later through eng_gguf_w_data. Unused
 * ne[] entries (>= ndim) are ignored. Returns 0 or -EINVAL. */
int eng_gguf_w_tensor(eng_gguf_writer_t *w, const char *name, uint32_t type, uint32_t ndim,
                      const uint64_t *ne);
/* Bytes the data of tensor i (declaration order) takes, unpadded. */
uint64_t eng_gguf_w_tensor_size(const eng_gguf_writer_t *w, uint64_t i);

/* Write header, metadata and tensor table to fd (not closed by the
 * writer), or into a growing memory buffer when fd < 0. */
int eng_gguf_w_begin(eng_gguf_writer_t *w, int fd);
/* Tensor data, in declaration order; a call may span tensors. */
int eng_gguf_w_data(eng_gguf_writer_t *w, const void *p, size_t n);
/* Flush; -EINVAL if some tensor's data is missing. */
int eng_gguf_w_end(eng_gguf_writer_t *w);
/* Memory output: hand over the buffer (caller frees). Only after w_end. */
int eng_gguf_w_take_mem(eng_gguf_writer_t *w, void **buf, size_t *len);
/* Bytes written so far (header included). */
uint64_t eng_gguf_w_written(const eng_gguf_writer_t *w);

#endif /* ENG_GGUF_WRITE_H */
