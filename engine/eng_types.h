/*
 * eng_types.h - tensor element types, numbered exactly as GGUF files number
 * them (ggml's enum), with their block geometry.
 *
 * A row of n elements of a quantized type is n / blck elements' worth of
 * blocks, each eng_type_size(t) bytes; n must be a multiple of blck.
 */
#ifndef ENG_TYPES_H
#define ENG_TYPES_H

#include <stddef.h>
#include <stdint.h>

enum eng_type {
    ENG_TYPE_F32 = 0,
    ENG_TYPE_F16 = 1,
    ENG_TYPE_Q4_0 = 2,
    ENG_TYPE_Q4_1 = 3,
    ENG_TYPE_Q5_0 = 6,
    ENG_TYPE_Q5_1 = 7,
    ENG_TYPE_Q8_0 = 8,
    ENG_TYPE_Q8_1 = 9,
    ENG_TYPE_Q2_K = 10,
    ENG_TYPE_Q3_K = 11,
    ENG_TYPE_Q4_K = 12,
    ENG_TYPE_Q5_K = 13,
    ENG_TYPE_Q6_K = 14,
    ENG_TYPE_Q8_K = 15,
    ENG_TYPE_I8 = 24,
    ENG_TYPE_I16 = 25,
    ENG_TYPE_I32 = 26,
    ENG_TYPE_I64 = 27,
    ENG_TYPE_F64 = 28,
    ENG_TYPE_BF16 = 30,
    ENG_TYPE_COUNT = 40, /* bound for tables indexed by type */
};

struct eng_type_info {
    const char *name;   /* "q4_k"; NULL for numbers GGUF does not define here */
    uint32_t blck;      /* elements per block (1 for plain types) */
    uint32_t size;      /* bytes per block */
    uint8_t quantized;
};

/* Info for type t, or NULL when t is not a type favo knows. */
const struct eng_type_info *eng_type_get(uint32_t t);
/* Bytes taken by n elements of type t; 0 when n is not a whole number of
 * blocks or t is unknown. Overflow-checked: 0 on overflow as well. */
size_t eng_type_row_size(uint32_t t, uint64_t n);
/* Type by lower-case name ("q8_0", "f16"); -1 when unknown. */
int eng_type_by_name(const char *name);

#endif /* ENG_TYPES_H */
