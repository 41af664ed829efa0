/*
 * eng_cpu.h - the CPU backend's internals shared between its files.
 */
#ifndef ENG_CPU_H
#define ENG_CPU_H

enum {
    ENG_CPU_AVX2 = 1u << 0,       /* AVX2 + FMA + F16C */
    ENG_CPU_AVX512 = 1u << 1,     /* F, BW, VL, DQ */
    ENG_CPU_AVX512VNNI = 1u << 2,
};

/* Bitmask of ENG_CPU_*; cached after the first call. */
unsigned eng_cpu_features(void);

#endif /* ENG_CPU_H */
