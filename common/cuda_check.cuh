// For .cu files only: check macros for every CUDA and cuBLAS call (CUBLAS_CHECK also takes cuBLASLt's: the same
// status type), the stream and the cuBLAS and cuBLASLt handles every op launches on, and the per-op hook that
// makes a fault name its op. KVLAB_CUDA_SYNC=1 in the environment synchronises after every op so an asynchronous
// failure is reported by the op that caused it.
#ifndef KVLAB_CUDA_CHECK_CUH
#define KVLAB_CUDA_CHECK_CUH

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#define CUDA_CHECK(call)                                                                            \
    do {                                                                                            \
        cudaError_t err_ = (call);                                                                  \
        if (err_ != cudaSuccess) cuda_fail(#call, cudaGetErrorString(err_), __FILE__, __LINE__);    \
    } while (0)

#define CUBLAS_CHECK(call)                                                                          \
    do {                                                                                            \
        cublasStatus_t st_ = (call);                                                                \
        if (st_ != CUBLAS_STATUS_SUCCESS)                                                           \
            cuda_fail(#call, cublasGetStatusString(st_), __FILE__, __LINE__);                       \
    } while (0)

// After every kernel launch: the launch error now, and with KVLAB_CUDA_SYNC=1 the execution error too,
// both reported as "<op>: <error>".
#define CUDA_OP_DONE(op_name) cuda_op_done(op_name, __FILE__, __LINE__)

#ifdef __cplusplus
extern "C" {
#endif
void cuda_fail(const char *call, const char *msg, const char *file, int line);
void cuda_op_done(const char *op, const char *file, int line);
cudaStream_t cuda_stream(void);       // the stream every op runs on (the default stream unless set)
void cuda_set_stream(cudaStream_t s);
cublasHandle_t cuda_cublas(void);     // created on first use, bound to cuda_stream()
cublasLtHandle_t cuda_cublaslt(void); // created on first use (cuBLASLt takes the stream per call)
#ifdef __cplusplus
}
#endif

static inline unsigned cuda_blocks(size_t n, unsigned threads) { return (unsigned)((n + threads - 1) / threads); }

#endif
