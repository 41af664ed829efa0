/*
 * eng_cpu_features.c - which SIMD kernels this CPU can run, read once by
 * CPUID; kernels are chosen from it at run time. FAVO_CPU=scalar|avx2
 * caps the choice (for tests and benchmarks of the slower paths); any
 * FAVO_CPU value (e.g. avx512) also keeps the packed kernels off AMX
 * (eng_pack.c).
 */
#include "eng_cpu.h"

#include <stdlib.h>
#include <string.h>

unsigned eng_cpu_features(void)
{
    /* Racing first calls compute the same value; the relaxed atomic makes
     * that benign race a defined one (and quiet under ThreadSanitizer). */
    static unsigned cached = ~0u;
    unsigned f = __atomic_load_n(&cached, __ATOMIC_RELAXED);
    const char *cap;

    if (f != ~0u)
        return f;
    f = 0;
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        f |= ENG_CPU_AVX2;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
        f |= ENG_CPU_AVX512;
    if ((f & ENG_CPU_AVX512) && __builtin_cpu_supports("avx512vnni"))
        f |= ENG_CPU_AVX512VNNI;
    cap = getenv("FAVO_CPU");
    if (cap && !strcmp(cap, "scalar"))
        f = 0;
    else if (cap && !strcmp(cap, "avx2"))
        f &= ENG_CPU_AVX2;
    __atomic_store_n(&cached, f, __ATOMIC_RELAXED);
    return f;
}
