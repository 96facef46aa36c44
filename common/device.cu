// common/device.h and common/cuda_check.cuh inside libkvlab_cuda.so: the real device functions, which the
// library hands to common/device.c (the loader every program has) through its entry point (layers/ops_cuda.cu).
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "common.h"
#include "cuda_check.cuh"
#include "device.h"

static cudaStream_t g_stream = 0;
static cublasHandle_t g_cublas = NULL;
static cublasLtHandle_t g_cublaslt = NULL;
static int g_sync = -1; // KVLAB_CUDA_SYNC, read once

extern "C" void cuda_fail(const char *call, const char *msg, const char *file, int line) {
    fprintf(stderr, "CUDA error: %s: %s (%s:%d)\n", call, msg, file, line);
    fflush(stderr);
    abort();
}

extern "C" void cuda_op_done(const char *op, const char *file, int line) {
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) cuda_fail(op, cudaGetErrorString(e), file, line);
    if (g_sync < 0) {
        const char *s = getenv("KVLAB_CUDA_SYNC");
        g_sync = s && *s && *s != '0';
    }
    if (g_sync) {
        e = cudaStreamSynchronize(g_stream);
        if (e != cudaSuccess) cuda_fail(op, cudaGetErrorString(e), file, line);
    }
}

extern "C" cudaStream_t cuda_stream(void) { return g_stream; }

extern "C" void cuda_set_stream(cudaStream_t s) {
    g_stream = s;
    if (g_cublas) CUBLAS_CHECK(cublasSetStream(g_cublas, s));
}

extern "C" cublasHandle_t cuda_cublas(void) {
    if (!g_cublas) {
        CUBLAS_CHECK(cublasCreate(&g_cublas));
        CUBLAS_CHECK(cublasSetStream(g_cublas, g_stream));
        // fp32 parity mode: no TF32 unless precision_set asks for it (layers/matmul.cu)
        CUBLAS_CHECK(cublasSetMathMode(g_cublas, CUBLAS_DEFAULT_MATH));
    }
    return g_cublas;
}

extern "C" cublasLtHandle_t cuda_cublaslt(void) {
    if (!g_cublaslt) CUBLAS_CHECK(cublasLtCreate(&g_cublaslt));
    return g_cublaslt;
}

static int g_available = -1;
static char g_why[ERR_LEN];
static char g_name[256] = "none";

extern "C" int device_cuda_available(char *why) {
    if (g_available < 0) {
        int n = 0;
        cudaError_t e = cudaGetDeviceCount(&n);
        if (e != cudaSuccess) {
            // no driver at all reads "CUDA driver version is insufficient" to CUDA: name the likelier cause first
            int no_gpu = e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver;
            snprintf(g_why, sizeof(g_why), "%s (CUDA: %s)",
                     no_gpu ? "no NVIDIA GPU with a working driver found" : "no usable CUDA device",
                     cudaGetErrorString(e));
            g_available = 0;
        } else if (n == 0) {
            snprintf(g_why, sizeof(g_why), "no CUDA device found");
            g_available = 0;
        } else {
            // KVLAB_CUDA_DEVICE=K: GPU K mod the count (build/train sets it per rank to the rank's index on its
            // machine); GPU 0 otherwise
            const char *want = getenv("KVLAB_CUDA_DEVICE");
            int dev = want && *want ? atoi(want) : 0;
            dev = dev < 0 ? 0 : dev % n;
            CUDA_CHECK(cudaSetDevice(dev));
            cudaDeviceProp p;
            CUDA_CHECK(cudaGetDeviceProperties(&p, dev));
            snprintf(g_name, sizeof(g_name), "%s", p.name);
            // ops allocate workspaces per call with cudaMallocAsync: keep freed memory in the pool
            cudaMemPool_t pool;
            CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, dev));
            uint64_t keep = UINT64_MAX;
            CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep));
            g_available = 1;
        }
        cudaGetLastError(); // a failed probe must not poison the next op's launch check
    }
    if (!g_available && why) snprintf(why, ERR_LEN, "%s", g_why);
    return g_available;
}

extern "C" const char *device_cuda_name(void) { return g_name; }

extern "C" void *device_malloc(size_t bytes) {
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        fprintf(stderr, "CUDA error: cudaMalloc(%zu bytes): %s\n", bytes, cudaGetErrorString(e));
        abort();
    }
    return p;
}

extern "C" void device_free(void *ptr) {
    if (ptr) CUDA_CHECK(cudaFree(ptr));
}

extern "C" void device_upload(void *dst, const void *src, size_t bytes) {
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, g_stream));
    CUDA_CHECK(cudaStreamSynchronize(g_stream));
}

extern "C" void device_download(void *dst, const void *src, size_t bytes) {
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, g_stream));
    CUDA_CHECK(cudaStreamSynchronize(g_stream));
}

extern "C" void device_memset(void *ptr, int byte, size_t bytes) {
    CUDA_CHECK(cudaMemsetAsync(ptr, byte, bytes, g_stream));
}

extern "C" void device_synchronize(void) { CUDA_CHECK(cudaStreamSynchronize(g_stream)); }
