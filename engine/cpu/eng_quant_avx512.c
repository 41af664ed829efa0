/*
 * eng_quant_avx512.c - AVX-512 (BW/VL/DQ, VNNI) dot products. Types left
 * NULL here fall back to eng_quant_avx2.c.
 */
#include "eng_quant_int.h"

#include <immintrin.h>

const struct eng_quant_kern eng_quant_avx512_kern[ENG_TYPE_COUNT] = {
    [ENG_TYPE_F32] = { NULL, NULL, NULL },
};
