/*
 * eng_cuda.h - the CUDA backend's public face (the backend itself lands
 * with the CUDA issue). Every CUDA runtime call goes through
 * ENG_CUDA_CHECK, which names the failing statement (STYLE.md 5).
 */
#ifndef ENG_CUDA_H
#define ENG_CUDA_H

#ifdef __cplusplus
extern "C" {
#endif

/* Number of usable CUDA devices, or -errno-like negative on failure; err
 * gets the runtime's message (no driver, no device...). Never aborts. */
int eng_cuda_device_count(char *err, unsigned errlen);
/* Name and memory of device i, for start-up and `favo --version`. */
int eng_cuda_device_info(int i, char *name, unsigned namelen, unsigned long long *mem_bytes);

#ifdef __cplusplus
}
#endif

#ifdef __CUDACC__
#include <cuda_runtime.h>
#include <stdio.h>
#define ENG_CUDA_CHECK(stmt)                                                      \
    do {                                                                          \
        cudaError_t e_ = (stmt);                                                  \
        if (e_ != cudaSuccess) {                                                  \
            fprintf(stderr, "favo[cuda]: %s failed: %s (%s:%d)\n", #stmt,         \
                    cudaGetErrorString(e_), __FILE__, __LINE__);                  \
            return -(int)e_;                                                      \
        }                                                                         \
    } while (0)
#endif

#endif /* ENG_CUDA_H */
