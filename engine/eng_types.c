/*
 * eng_types.c - the type table. Block sizes follow ggml's block layouts:
 *   q4_0: f16 d + 16 nibble bytes (32 el)   q4_1: f16 d, m + 16 (32)
 *   q5_0: f16 d + 4 high-bit bytes + 16 (32) q5_1: f16 d, m + 4 + 16 (32)
 *   q8_0: f16 d + 32 int8 (32)               q8_1: f32 d, s + 32 (32)
 *   q2_k..q8_k: 256-element super-blocks.
 */
#include "eng_types.h"

#include <string.h>

#define QK_K 256

static const struct eng_type_info types[ENG_TYPE_COUNT] = {
    [ENG_TYPE_F32] = { "f32", 1, 4, 0 },
    [ENG_TYPE_F16] = { "f16", 1, 2, 0 },
    [ENG_TYPE_Q4_0] = { "q4_0", 32, 2 + 16, 1 },
    [ENG_TYPE_Q4_1] = { "q4_1", 32, 2 + 2 + 16, 1 },
    [ENG_TYPE_Q5_0] = { "q5_0", 32, 2 + 4 + 16, 1 },
    [ENG_TYPE_Q5_1] = { "q5_1", 32, 2 + 2 + 4 + 16, 1 },
    [ENG_TYPE_Q8_0] = { "q8_0", 32, 2 + 32, 1 },
    [ENG_TYPE_Q8_1] = { "q8_1", 32, 4 + 4 + 32, 1 },
    [ENG_TYPE_Q2_K] = { "q2_k", QK_K, QK_K / 16 + QK_K / 4 + 2 + 2, 1 },
    [ENG_TYPE_Q3_K] = { "q3_k", QK_K, QK_K / 8 + QK_K / 4 + 12 + 2, 1 },
    [ENG_TYPE_Q4_K] = { "q4_k", QK_K, 2 + 2 + 12 + QK_K / 2, 1 },
    [ENG_TYPE_Q5_K] = { "q5_k", QK_K, 2 + 2 + 12 + QK_K / 8 + QK_K / 2, 1 },
    [ENG_TYPE_Q6_K] = { "q6_k", QK_K, QK_K / 2 + QK_K / 4 + QK_K / 16 + 2, 1 },
    [ENG_TYPE_Q8_K] = { "q8_k", QK_K, 4 + QK_K + QK_K / 16 * 2, 1 },
    [ENG_TYPE_I8] = { "i8", 1, 1, 0 },
    [ENG_TYPE_I16] = { "i16", 1, 2, 0 },
    [ENG_TYPE_I32] = { "i32", 1, 4, 0 },
    [ENG_TYPE_I64] = { "i64", 1, 8, 0 },
    [ENG_TYPE_F64] = { "f64", 1, 8, 0 },
    [ENG_TYPE_BF16] = { "bf16", 1, 2, 0 },
};

const struct eng_type_info *eng_type_get(uint32_t t)
{
    if (t >= ENG_TYPE_COUNT || !types[t].name)
        return NULL;
    return &types[t];
}

size_t eng_type_row_size(uint32_t t, uint64_t n)
{
    const struct eng_type_info *ti = eng_type_get(t);
    uint64_t blocks;

    if (!ti || n % ti->blck)
        return 0;
    blocks = n / ti->blck;
    if (blocks && ti->size > SIZE_MAX / blocks)
        return 0;
    return (size_t)(blocks * ti->size);
}

int eng_type_by_name(const char *name)
{
    for (int t = 0; t < ENG_TYPE_COUNT; t++)
        if (types[t].name && !strcmp(types[t].name, name))
            return t;
    return -1;
}
