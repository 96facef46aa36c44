// The CUDA emulator's cublas_v2.h (tests/cuda_emu/): the cuBLAS calls kvlab makes, on OpenBLAS (../emu_cublas.cpp),
// column-major exactly as cuBLAS (the cuBLASLt subset: cublasLt.h). Arguments are validated as cuBLAS does
// (CUBLAS_STATUS_INVALID_VALUE), and every operand must lie inside one device allocation (an error naming the
// operand otherwise). TF32 math (the handle's CUBLAS_TF32_TENSOR_OP_MATH, or CUBLAS_COMPUTE_32F_FAST_TF32) rounds
// the inputs to 10 mantissa bits (nearest even) and accumulates in fp32.
#ifndef KVLAB_CUDA_EMU_CUBLAS_H
#define KVLAB_CUDA_EMU_CUBLAS_H

#include "cuda_runtime.h"

typedef enum {
    CUBLAS_STATUS_SUCCESS = 0,
    CUBLAS_STATUS_NOT_INITIALIZED = 1,
    CUBLAS_STATUS_ALLOC_FAILED = 3,
    CUBLAS_STATUS_INVALID_VALUE = 7,
    CUBLAS_STATUS_ARCH_MISMATCH = 8,
    CUBLAS_STATUS_MAPPING_ERROR = 11,
    CUBLAS_STATUS_EXECUTION_FAILED = 13,
    CUBLAS_STATUS_INTERNAL_ERROR = 14,
    CUBLAS_STATUS_NOT_SUPPORTED = 15,
} cublasStatus_t;

typedef enum { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1, CUBLAS_OP_C = 2 } cublasOperation_t;

typedef enum {
    CUBLAS_DEFAULT_MATH = 0,
    CUBLAS_TENSOR_OP_MATH = 1,
    CUBLAS_PEDANTIC_MATH = 2,
    CUBLAS_TF32_TENSOR_OP_MATH = 3,
} cublasMath_t;

// library_types.h and cublas_api.h's values (only those kvlab uses are accepted)
typedef enum { CUDA_R_32F = 0, CUDA_R_16F = 2, CUDA_R_16BF = 14 } cudaDataType_t;
typedef cudaDataType_t cudaDataType;
typedef enum {
    CUBLAS_COMPUTE_32F = 68,
    CUBLAS_COMPUTE_32F_FAST_16BF = 75,
    CUBLAS_COMPUTE_32F_FAST_TF32 = 77,
} cublasComputeType_t;

typedef struct cublasContext *cublasHandle_t;

CUEMU_API cublasStatus_t cublasCreate(cublasHandle_t *handle);
CUEMU_API cublasStatus_t cublasDestroy(cublasHandle_t handle);
CUEMU_API cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream);
CUEMU_API cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode);
CUEMU_API const char *cublasGetStatusString(cublasStatus_t status);
CUEMU_API cublasStatus_t cublasSgemm(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m,
                                     int n, int k, const float *alpha, const float *A, int lda, const float *B, int ldb,
                                     const float *beta, float *C, int ldc);
CUEMU_API cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t handle, cublasOperation_t transa,
                                                   cublasOperation_t transb, int m, int n, int k, const float *alpha,
                                                   const float *A, int lda, long long strideA, const float *B, int ldb,
                                                   long long strideB, const float *beta, float *C, int ldc,
                                                   long long strideC, int batchCount);
// group_count groups of group_size[i] products each; the per-group arrays (transa .. ldc, alpha, beta, group_size)
// are host arrays, Aarray, Barray and Carray device arrays of device pointers (one per product, in group order).
// fp32 operands only (Atype = Btype = Ctype = CUDA_R_32F, CUBLAS_COMPUTE_32F or _FAST_TF32): cuBLAS takes bf16
// inputs here only with bf16 outputs, which kvlab does not use (CUBLAS_STATUS_NOT_SUPPORTED). With
// CUEMU_NO_GROUPED_GEMM=1 in the environment every call answers CUBLAS_STATUS_NOT_SUPPORTED (a cuBLAS without it).
CUEMU_API cublasStatus_t cublasGemmGroupedBatchedEx(cublasHandle_t handle, const cublasOperation_t transa_array[],
                                                    const cublasOperation_t transb_array[], const int m_array[],
                                                    const int n_array[], const int k_array[], const void *alpha_array,
                                                    const void *const Aarray[], cudaDataType_t Atype,
                                                    const int lda_array[], const void *const Barray[],
                                                    cudaDataType_t Btype, const int ldb_array[], const void *beta_array,
                                                    void *const Carray[], cudaDataType_t Ctype, const int ldc_array[],
                                                    int group_count, const int group_size[],
                                                    cublasComputeType_t computeType);

#endif
