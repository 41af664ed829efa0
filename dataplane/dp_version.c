/*
 * dp_version.c - `favo --version`: the version, the heap allocator actually
 * in use (jemalloc, read back through mallctl), and the CPU features the
 * engine's kernels will choose from.
 */
#include "dp.h"

#include <dlfcn.h>
#include <stdio.h>

typedef int (*mallctl_fn)(const char *, void *, size_t *, void *, size_t);

int dp_print_version(FILE *f);

int dp_print_version(FILE *f)
{
    mallctl_fn mallctl = (mallctl_fn)dlsym(RTLD_DEFAULT, "mallctl");
    const char *jv = NULL;
    size_t sz = sizeof(jv);

    fprintf(f, "favo %s\n", FAVO_VERSION);
    if (mallctl && mallctl("version", &jv, &sz, NULL, 0) == 0 && jv)
        fprintf(f, "allocator: jemalloc %s\n", jv);
    else
        fprintf(f, "allocator: libc (sanitizer or no jemalloc build)\n");
    __builtin_cpu_init();
    fprintf(f, "cpu: avx2=%d fma=%d avx512f=%d avx512bw=%d avx512vnni=%d\n",
            !!__builtin_cpu_supports("avx2"), !!__builtin_cpu_supports("fma"),
            !!__builtin_cpu_supports("avx512f"), !!__builtin_cpu_supports("avx512bw"),
            !!__builtin_cpu_supports("avx512vnni"));
    return 0;
}
