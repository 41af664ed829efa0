/*
 * dp_version.c - `favo --version`: the version, the heap allocator actually
 * in use (jemalloc, read back through mallctl), and the CPU features the
 * engine's kernels will choose from.
 */
#include "dp.h"

#include <dlfcn.h>
#include <stdio.h>

#ifdef FAVO_HAVE_CUDA
#include "eng_cuda.h"
#endif

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
#ifdef FAVO_HAVE_CUDA
    {
        char err[160] = "";
        int n = eng_cuda_device_count(err, sizeof(err));

        if (n < 0)
            fprintf(f, "cuda: backend built; no usable device (%s)\n", err);
        for (int i = 0; i < n; i++) {
            char name[128];
            unsigned long long mem = 0;

            if (!eng_cuda_device_info(i, name, sizeof(name), &mem))
                fprintf(f, "cuda: device %d: %s, %.1f GiB\n", i, name, (double)mem / (1ull << 30));
        }
        if (n == 0)
            fprintf(f, "cuda: backend built; 0 devices\n");
    }
#else
    fprintf(f, "cuda: backend not built (no nvcc at build time)\n");
#endif
    return 0;
}
