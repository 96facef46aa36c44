// The CUDA emulator's cuBLAS (include/cublas_v2.h) and cuBLASLt (include/cublasLt.h): Sgemm, SgemmStridedBatched,
// GemmGroupedBatchedEx and LtMatmul on OpenBLAS's cblas_sgemm in column-major order, which is cuBLAS's own
// convention, so the arguments pass through unchanged. The argument checks are cuBLAS's
// (CUBLAS_STATUS_INVALID_VALUE), and every operand, as its leading dimension and the batch strides lay it out, must
// lie inside one device allocation: OpenBLAS is not built with AddressSanitizer, so this is what catches a product
// that would read or write past a buffer on the GPU (and a grouped call's pointer arrays left in host memory).
// Reduced precision is emulated on the inputs: TF32 math rounds them to 10 mantissa bits, bf16 operands are 7-bit
// mantissas already (include/cuda_bf16.h); the products accumulate in fp32 either way, as tensor cores do.
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vector>

#include "include/cublasLt.h"
#include "include/cuda_bf16.h"

#define TF32_BITS 10 // mantissa bits TF32 keeps

struct cublasContext {
    cudaStream_t stream;
    cublasMath_t mode;
};

extern "C" cublasStatus_t cublasCreate(cublasHandle_t *handle) {
    *handle = new cublasContext{0, CUBLAS_DEFAULT_MATH};
    return CUBLAS_STATUS_SUCCESS;
}

extern "C" cublasStatus_t cublasDestroy(cublasHandle_t handle) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    delete handle;
    return CUBLAS_STATUS_SUCCESS;
}

extern "C" cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    handle->stream = stream;
    return CUBLAS_STATUS_SUCCESS;
}

// CUBLAS_TF32_TENSOR_OP_MATH: the fp32 products (Sgemm, SgemmStridedBatched) round their inputs to TF32.
extern "C" cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    handle->mode = mode;
    return CUBLAS_STATUS_SUCCESS;
}

extern "C" const char *cublasGetStatusString(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    }
    return "CUBLAS_STATUS_UNKNOWN";
}

static CBLAS_TRANSPOSE to_cblas(cublasOperation_t op) { return op == CUBLAS_OP_N ? CblasNoTrans : CblasTrans; }

// Elements an operand stored as a (rows, cols) column-major matrix with leading dimension ld spans.
static size_t extent(int rows, int cols, int ld) {
    return rows > 0 && cols > 0 ? (size_t)(cols - 1) * (size_t)ld + (size_t)rows : 0;
}

static int operand_ok(const char *call, const char *what, const float *p, int rows, int cols, int ld, long long stride,
                      int batch) {
    size_t n = extent(rows, cols, ld);
    if (n == 0) return 1;
    if (stride < 0) {
        fprintf(stderr, "cuda-emu: %s: %s: negative batch stride %lld\n", call, what, stride);
        return 0;
    }
    size_t span = n + (size_t)(batch - 1) * (size_t)stride; // the last batch's matrix ends here
    const char *why = cuemu_device_range_problem(p, span * sizeof(float));
    if (!why) return 1;
    fprintf(stderr, "cuda-emu: %s: operand %s (%d x %d, ld %d, %d batches of stride %lld): %s\n", call, what, rows,
            cols, ld, batch, stride, why);
    return 0;
}

// A copy of the (rows, cols, ld) column-major operand with every element rounded to `bits` mantissa bits.
static std::vector<float> rounded(const float *x, int rows, int cols, int ld, int bits) {
    std::vector<float> out(extent(rows, cols, ld));
    for (size_t i = 0; i < out.size(); i++) out[i] = cuemu_round_mantissa(x[i], bits);
    return out;
}

// round_bits: 0 for fp32 inputs, else the mantissa bits the inputs are rounded to first.
static cublasStatus_t gemm(const char *call, cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                           int n, int k, const float *alpha, const float *A, int lda, long long sA, const float *B,
                           int ldb, long long sB, const float *beta, float *C, int ldc, long long sC, int batch,
                           int round_bits = 0) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    int ar = ta == CUBLAS_OP_N ? m : k, ac = ta == CUBLAS_OP_N ? k : m; // A as stored
    int br = tb == CUBLAS_OP_N ? k : n, bc = tb == CUBLAS_OP_N ? n : k;
    if (m < 0 || n < 0 || k < 0 || batch < 0 || lda < (ar > 1 ? ar : 1) || ldb < (br > 1 ? br : 1) ||
        ldc < (m > 1 ? m : 1) || (ta != CUBLAS_OP_N && ta != CUBLAS_OP_T && ta != CUBLAS_OP_C) ||
        (tb != CUBLAS_OP_N && tb != CUBLAS_OP_T && tb != CUBLAS_OP_C) || !alpha || !beta)
        return CUBLAS_STATUS_INVALID_VALUE;
    if (m == 0 || n == 0 || batch == 0) return CUBLAS_STATUS_SUCCESS;
    int reads_ab = k > 0 && *alpha != 0.0f;
    if ((reads_ab && (!operand_ok(call, "A", A, ar, ac, lda, sA, batch) ||
                      !operand_ok(call, "B", B, br, bc, ldb, sB, batch))) ||
        !operand_ok(call, "C", C, m, n, ldc, sC, batch))
        return CUBLAS_STATUS_INVALID_VALUE;
    for (int b = 0; b < batch; b++) {
        float *c = C + (size_t)b * (size_t)sC;
        if (!reads_ab) { // C = beta C; beta 0 never reads C (NaN there stays out), as cuBLAS
            for (int j = 0; j < n; j++)
                for (int i = 0; i < m; i++) {
                    float *x = c + (size_t)j * ldc + i;
                    *x = *beta == 0.0f ? 0.0f : *beta * *x;
                }
            continue;
        }
        if (*beta == 0.0f) // cuBLAS does not read C when beta is 0: clear it so a NaN there cannot leak in
            for (int j = 0; j < n; j++) memset(c + (size_t)j * ldc, 0, (size_t)m * sizeof(float));
        const float *a = A + (size_t)b * (size_t)sA, *bb = B + (size_t)b * (size_t)sB;
        std::vector<float> ra, rb;
        if (round_bits) {
            ra = rounded(a, ar, ac, lda, round_bits);
            rb = rounded(bb, br, bc, ldb, round_bits);
            a = ra.data();
            bb = rb.data();
        }
        cblas_sgemm(CblasColMajor, to_cblas(ta), to_cblas(tb), m, n, k, *alpha, a, lda, bb, ldb, *beta, c, ldc);
    }
    return CUBLAS_STATUS_SUCCESS;
}

static int tf32_bits(cublasHandle_t h) { return h && h->mode == CUBLAS_TF32_TENSOR_OP_MATH ? TF32_BITS : 0; }

extern "C" cublasStatus_t cublasSgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                                      int k, const float *alpha, const float *A, int lda, const float *B, int ldb,
                                      const float *beta, float *C, int ldc) {
    return gemm("cublasSgemm", h, ta, tb, m, n, k, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0, 1, tf32_bits(h));
}

extern "C" cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb,
                                                    int m, int n, int k, const float *alpha, const float *A, int lda,
                                                    long long sA, const float *B, int ldb, long long sB,
                                                    const float *beta, float *C, int ldc, long long sC, int batch) {
    return gemm("cublasSgemmStridedBatched", h, ta, tb, m, n, k, alpha, A, lda, sA, B, ldb, sB, beta, C, ldc, sC,
                batch, tf32_bits(h));
}

// The pointer arrays of a grouped call are read by the GPU: they must be device memory.
static int pointer_array_ok(const char *what, const void *arr, int count) {
    const char *why = cuemu_device_range_problem(arr, (size_t)count * sizeof(void *));
    if (!why) return 1;
    fprintf(stderr, "cuda-emu: cublasGemmGroupedBatchedEx: %s (%d pointers): %s\n", what, count, why);
    return 0;
}

extern "C" cublasStatus_t cublasGemmGroupedBatchedEx(cublasHandle_t h, const cublasOperation_t transa_array[],
                                                     const cublasOperation_t transb_array[], const int m_array[],
                                                     const int n_array[], const int k_array[], const void *alpha_array,
                                                     const void *const Aarray[], cudaDataType_t Atype,
                                                     const int lda_array[], const void *const Barray[],
                                                     cudaDataType_t Btype, const int ldb_array[],
                                                     const void *beta_array, void *const Carray[], cudaDataType_t Ctype,
                                                     const int ldc_array[], int group_count, const int group_size[],
                                                     cublasComputeType_t computeType) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    const char *off = getenv("CUEMU_NO_GROUPED_GEMM"); // a cuBLAS without the call, for the callers' fallback
    if (off && *off && *off != '0') return CUBLAS_STATUS_NOT_SUPPORTED;
    if (group_count < 0 || !alpha_array || !beta_array || (group_count > 0 && !group_size))
        return CUBLAS_STATUS_INVALID_VALUE;
    if (Atype != CUDA_R_32F || Btype != CUDA_R_32F || Ctype != CUDA_R_32F ||
        (computeType != CUBLAS_COMPUTE_32F && computeType != CUBLAS_COMPUTE_32F_FAST_TF32))
        return CUBLAS_STATUS_NOT_SUPPORTED;
    int total = 0;
    for (int g = 0; g < group_count; g++) {
        if (group_size[g] < 0) return CUBLAS_STATUS_INVALID_VALUE;
        total += group_size[g];
    }
    if (total == 0) return CUBLAS_STATUS_SUCCESS;
    if (!pointer_array_ok("Aarray", Aarray, total) || !pointer_array_ok("Barray", Barray, total) ||
        !pointer_array_ok("Carray", Carray, total))
        return CUBLAS_STATUS_INVALID_VALUE;
    int bits = computeType == CUBLAS_COMPUTE_32F_FAST_TF32 ? TF32_BITS : tf32_bits(h);
    const float *alpha = (const float *)alpha_array, *beta = (const float *)beta_array;
    for (int g = 0, p = 0; g < group_count; g++)
        for (int i = 0; i < group_size[g]; i++, p++) {
            cublasStatus_t st = gemm("cublasGemmGroupedBatchedEx", h, transa_array[g], transb_array[g], m_array[g],
                                     n_array[g], k_array[g], alpha + g, (const float *)Aarray[p], lda_array[g], 0,
                                     (const float *)Barray[p], ldb_array[g], 0, beta + g, (float *)Carray[p],
                                     ldc_array[g], 0, 1, bits);
            if (st != CUBLAS_STATUS_SUCCESS) return st;
        }
    return CUBLAS_STATUS_SUCCESS;
}

// --- cuBLASLt ---------------------------------------------------------------------------------------------------

struct cublasLtContext {
    int unused;
};
struct cuemuLtMatmulDesc {
    cublasComputeType_t compute;
    cublasOperation_t ta, tb;
};
struct cuemuLtMatrixLayout {
    cudaDataType_t type;
    uint64_t rows, cols;
    int64_t ld;
};

extern "C" cublasStatus_t cublasLtCreate(cublasLtHandle_t *handle) {
    if (!handle) return CUBLAS_STATUS_INVALID_VALUE;
    *handle = new cublasLtContext{0};
    return CUBLAS_STATUS_SUCCESS;
}

extern "C" cublasStatus_t cublasLtDestroy(cublasLtHandle_t handle) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    delete handle;
    return CUBLAS_STATUS_SUCCESS;
}

extern "C" cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t *desc, cublasComputeType_t computeType,
                                                   cudaDataType_t scaleType) {
    if (!desc) return CUBLAS_STATUS_INVALID_VALUE;
    if (scaleType != CUDA_R_32F || (computeType != CUBLAS_COMPUTE_32F && computeType != CUBLAS_COMPUTE_32F_FAST_TF32 &&
                                    computeType != CUBLAS_COMPUTE_32F_FAST_16BF))
        return CUBLAS_STATUS_NOT_SUPPORTED;
    *desc = new cuemuLtMatmulDesc{computeType, CUBLAS_OP_N, CUBLAS_OP_N};
    return CUBLAS_STATUS_SUCCESS;
}

extern "C" cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t desc) {
    delete desc;
    return CUBLAS_STATUS_SUCCESS;
}

extern "C" cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr,
                                                         const void *buf, size_t sizeInBytes) {
    if (!desc || !buf) return CUBLAS_STATUS_INVALID_VALUE;
    if (attr != CUBLASLT_MATMUL_DESC_TRANSA && attr != CUBLASLT_MATMUL_DESC_TRANSB) return CUBLAS_STATUS_NOT_SUPPORTED;
    if (sizeInBytes != sizeof(int32_t)) return CUBLAS_STATUS_INVALID_VALUE;
    int32_t op;
    memcpy(&op, buf, sizeof op);
    if (op != CUBLAS_OP_N && op != CUBLAS_OP_T) return CUBLAS_STATUS_INVALID_VALUE;
    (attr == CUBLASLT_MATMUL_DESC_TRANSA ? desc->ta : desc->tb) = (cublasOperation_t)op;
    return CUBLAS_STATUS_SUCCESS;
}

extern "C" cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t *layout, cudaDataType type, uint64_t rows,
                                                     uint64_t cols, int64_t ld) {
    if (!layout) return CUBLAS_STATUS_INVALID_VALUE;
    if (type != CUDA_R_32F && type != CUDA_R_16BF) return CUBLAS_STATUS_NOT_SUPPORTED;
    if (rows > (1u << 31) || cols > (1u << 31) || ld < (int64_t)(rows > 1 ? rows : 1)) return CUBLAS_STATUS_INVALID_VALUE;
    *layout = new cuemuLtMatrixLayout{type, rows, cols, ld};
    return CUBLAS_STATUS_SUCCESS;
}

extern "C" cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t layout) {
    delete layout;
    return CUBLAS_STATUS_SUCCESS;
}

// An Lt operand as fp32 column-major values (bf16 widened exactly), rounded to `bits` mantissa bits when bits > 0;
// NULL (after a message) when it is not inside a device allocation.
static int lt_operand(const char *what, const void *p, cublasLtMatrixLayout_t l, int bits, std::vector<float> &out) {
    size_t n = extent((int)l->rows, (int)l->cols, (int)l->ld), esize = l->type == CUDA_R_16BF ? 2 : 4;
    const char *why = n ? cuemu_device_range_problem(p, n * esize) : NULL;
    if (why) {
        fprintf(stderr, "cuda-emu: cublasLtMatmul: operand %s (%llu x %llu, ld %lld): %s\n", what,
                (unsigned long long)l->rows, (unsigned long long)l->cols, (long long)l->ld, why);
        return 0;
    }
    out.resize(n);
    for (size_t i = 0; i < n; i++) {
        float x = esize == 2 ? __bfloat162float(((const __nv_bfloat16 *)p)[i]) : ((const float *)p)[i];
        out[i] = bits ? cuemu_round_mantissa(x, bits) : x;
    }
    return 1;
}

extern "C" cublasStatus_t cublasLtMatmul(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc, const void *alpha,
                                         const void *A, cublasLtMatrixLayout_t Adesc, const void *B,
                                         cublasLtMatrixLayout_t Bdesc, const void *beta, const void *C,
                                         cublasLtMatrixLayout_t Cdesc, void *D, cublasLtMatrixLayout_t Ddesc,
                                         const cublasLtMatmulAlgo_t *algo, void *workspace, size_t workspaceSizeInBytes,
                                         cudaStream_t stream) {
    (void)algo;
    (void)stream;
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!desc || !alpha || !beta || !Adesc || !Bdesc || !Cdesc || !Ddesc) return CUBLAS_STATUS_INVALID_VALUE;
    if (Adesc->type != Bdesc->type || Cdesc->type != CUDA_R_32F || Ddesc->type != CUDA_R_32F)
        return CUBLAS_STATUS_NOT_SUPPORTED;
    uint64_t m = Cdesc->rows, n = Cdesc->cols;
    uint64_t am = desc->ta == CUBLAS_OP_N ? Adesc->rows : Adesc->cols, k = desc->ta == CUBLAS_OP_N ? Adesc->cols : Adesc->rows;
    uint64_t bk = desc->tb == CUBLAS_OP_N ? Bdesc->rows : Bdesc->cols, bn = desc->tb == CUBLAS_OP_N ? Bdesc->cols : Bdesc->rows;
    if (am != m || bk != k || bn != n || Ddesc->rows != m || Ddesc->cols != n || Ddesc->ld != Cdesc->ld)
        return CUBLAS_STATUS_INVALID_VALUE;
    if (workspaceSizeInBytes && cuemu_device_range_problem(workspace, workspaceSizeInBytes)) {
        fprintf(stderr, "cuda-emu: cublasLtMatmul: workspace (%zu bytes): %s\n", workspaceSizeInBytes,
                cuemu_device_range_problem(workspace, workspaceSizeInBytes));
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
    int bits = desc->compute == CUBLAS_COMPUTE_32F_FAST_TF32 ? TF32_BITS
               : desc->compute == CUBLAS_COMPUTE_32F_FAST_16BF ? 7 : 0;
    if (Adesc->type == CUDA_R_16BF) bits = 0; // already bf16
    std::vector<float> a, b;
    float a0 = *(const float *)alpha, b0 = *(const float *)beta;
    int reads_ab = k > 0 && a0 != 0.0f;
    if (reads_ab && (!lt_operand("A", A, Adesc, bits, a) || !lt_operand("B", B, Bdesc, bits, b)))
        return CUBLAS_STATUS_INVALID_VALUE;
    size_t cn = extent((int)m, (int)n, (int)Cdesc->ld);
    const char *why = cuemu_device_range_problem(D, cn * sizeof(float));
    if (!why && b0 != 0.0f) why = cuemu_device_range_problem(C, cn * sizeof(float));
    if (why) {
        fprintf(stderr, "cuda-emu: cublasLtMatmul: operand C/D (%llu x %llu, ld %lld): %s\n", (unsigned long long)m,
                (unsigned long long)n, (long long)Cdesc->ld, why);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    float *d = (float *)D;
    for (uint64_t j = 0; j < n; j++) // D = beta C first (beta 0 never reads C), then D += alpha op(A) op(B)
        for (uint64_t i = 0; i < m; i++) {
            size_t at = j * (size_t)Cdesc->ld + i;
            d[at] = b0 == 0.0f ? 0.0f : b0 * ((const float *)C)[at];
        }
    if (reads_ab)
        cblas_sgemm(CblasColMajor, to_cblas(desc->ta), to_cblas(desc->tb), (int)m, (int)n, (int)k, a0, a.data(),
                    (int)Adesc->ld, b.data(), (int)Bdesc->ld, 1.0f, d, (int)Cdesc->ld);
    return CUBLAS_STATUS_SUCCESS;
}
