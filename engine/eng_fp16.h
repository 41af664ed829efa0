/*
 * eng_fp16.h - IEEE half and bfloat16 conversions, scalar and exact
 * (round to nearest even; NaN stays NaN, overflow becomes infinity). The
 * reference every SIMD conversion is checked against.
 */
#ifndef ENG_FP16_H
#define ENG_FP16_H

#include <stdint.h>
#include <string.h>

static inline uint32_t eng_f32_bits(float f)
{
    uint32_t u;

    memcpy(&u, &f, 4);
    return u;
}

static inline float eng_bits_f32(uint32_t u)
{
    float f;

    memcpy(&f, &u, 4);
    return f;
}

static inline float eng_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ff;

    if (exp == 0x1f)                       /* inf / nan */
        return eng_bits_f32(sign | 0x7f800000u | (man << 13));
    if (exp == 0) {
        if (!man)
            return eng_bits_f32(sign);
        /* subnormal: value = man * 2^-24 */
        float v = (float)man * 5.9604644775390625e-08f;
        return sign ? -v : v;
    }
    return eng_bits_f32(sign | ((exp + 112) << 23) | (man << 13));
}

static inline uint16_t eng_f32_to_f16(float f)
{
    uint32_t x = eng_f32_bits(f);
    uint32_t sign = (x >> 16) & 0x8000;
    uint32_t ax = x & 0x7fffffffu;

    if (ax >= 0x7f800000u)                  /* inf / nan */
        return (uint16_t)(sign | 0x7c00 | (ax > 0x7f800000u ? 0x200 | ((ax >> 13) & 0x3ff) : 0));
    if (ax >= 0x477ff000u)                  /* rounds to >= 65520: overflow */
        return (uint16_t)(sign | 0x7c00);
    if (ax < 0x38800000u) {                 /* below 2^-14: subnormal or zero */
        /* add 0.5 (the magic constant) so the FPU rounds to nearest even */
        float v = eng_bits_f32(ax) + 0.5f;
        return (uint16_t)(sign | (eng_f32_bits(v) - 0x3f000000u));
    }
    uint32_t mant_odd = (ax >> 13) & 1;
    ax += 0xc8000fffu + mant_odd;           /* rebias exponent, round to nearest even */
    return (uint16_t)(sign | (ax >> 13));
}

static inline float eng_bf16_to_f32(uint16_t h)
{
    return eng_bits_f32((uint32_t)h << 16);
}

static inline uint16_t eng_f32_to_bf16(float f)
{
    uint32_t x = eng_f32_bits(f);

    if ((x & 0x7fffffffu) > 0x7f800000u)    /* nan: keep it quiet */
        return (uint16_t)((x >> 16) | 64);
    return (uint16_t)((x + (0x7fff + ((x >> 16) & 1))) >> 16);
}

#endif /* ENG_FP16_H */
