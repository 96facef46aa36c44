// The CUDA emulator's cublasLt.h (tests/cuda_emu/): the cuBLASLt calls kvlab makes (bf16 x bf16 -> fp32 products,
// layers/matmul.cu), on OpenBLAS in ../emu_cublas.cpp. Inputs CUDA_R_16BF or CUDA_R_32F (with a _FAST_TF32 or
// _FAST_16BF compute type they are rounded first), C and D CUDA_R_32F, fp32 accumulation; the scalars on the host
// (the default pointer mode), no epilogue, no batches; algo may be NULL (the implicit heuristic). Every operand and
// the workspace must lie inside a device allocation.
#ifndef KVLAB_CUDA_EMU_CUBLASLT_H
#define KVLAB_CUDA_EMU_CUBLASLT_H

#include <stdint.h>

#include "cublas_v2.h"

typedef struct cublasLtContext *cublasLtHandle_t;
typedef struct cuemuLtMatmulDesc *cublasLtMatmulDesc_t;
typedef struct cuemuLtMatrixLayout *cublasLtMatrixLayout_t;
typedef struct {
    uint64_t data[8];
} cublasLtMatmulAlgo_t;

typedef enum {
    CUBLASLT_MATMUL_DESC_COMPUTE_TYPE = 0,
    CUBLASLT_MATMUL_DESC_SCALE_TYPE = 1,
    CUBLASLT_MATMUL_DESC_POINTER_MODE = 2,
    CUBLASLT_MATMUL_DESC_TRANSA = 3,
    CUBLASLT_MATMUL_DESC_TRANSB = 4,
} cublasLtMatmulDescAttributes_t;

CUEMU_API cublasStatus_t cublasLtCreate(cublasLtHandle_t *handle);
CUEMU_API cublasStatus_t cublasLtDestroy(cublasLtHandle_t handle);
CUEMU_API cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t *desc, cublasComputeType_t computeType,
                                                  cudaDataType_t scaleType);
CUEMU_API cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t desc);
// TRANSA / TRANSB take an int32_t cublasOperation_t; other attributes are not emulated (NOT_SUPPORTED).
CUEMU_API cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr,
                                                        const void *buf, size_t sizeInBytes);
CUEMU_API cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t *layout, cudaDataType type, uint64_t rows,
                                                    uint64_t cols, int64_t ld);
CUEMU_API cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t layout);
CUEMU_API cublasStatus_t cublasLtMatmul(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc, const void *alpha,
                                        const void *A, cublasLtMatrixLayout_t Adesc, const void *B,
                                        cublasLtMatrixLayout_t Bdesc, const void *beta, const void *C,
                                        cublasLtMatrixLayout_t Cdesc, void *D, cublasLtMatrixLayout_t Ddesc,
                                        const cublasLtMatmulAlgo_t *algo, void *workspace, size_t workspaceSizeInBytes,
                                        cudaStream_t stream);

#endif
