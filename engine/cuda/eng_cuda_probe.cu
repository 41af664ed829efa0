/*
 * eng_cuda_probe.cu - device discovery. Safe on hosts without a GPU or a
 * driver: errors come back as values, never as aborts.
 */
#include "eng_cuda.h"

#include <cuda_runtime.h>
#include <stdio.h>

extern "C" int eng_cuda_device_count(char *err, unsigned errlen)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);

    if (e != cudaSuccess) {
        if (err && errlen)
            snprintf(err, errlen, "%s", cudaGetErrorString(e));
        (void)cudaGetLastError(); /* clear the sticky-free error state */
        return -(int)e;
    }
    return n;
}

extern "C" int eng_cuda_device_info(int i, char *name, unsigned namelen,
                                    unsigned long long *mem_bytes)
{
    cudaDeviceProp p;

    ENG_CUDA_CHECK(cudaGetDeviceProperties(&p, i));
    if (name && namelen)
        snprintf(name, namelen, "%s (sm_%d%d)", p.name, p.major, p.minor);
    if (mem_bytes)
        *mem_bytes = p.totalGlobalMem;
    return 0;
}
