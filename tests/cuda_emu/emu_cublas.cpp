// The CUDA emulator's cuBLAS (include/cublas_v2.h): Sgemm and SgemmStridedBatched on OpenBLAS's cblas_sgemm in
// column-major order, which is cuBLAS's own convention, so the arguments pass through unchanged. The argument
// checks are cuBLAS's (CUBLAS_STATUS_INVALID_VALUE), and every operand, as its leading dimension and the batch
// strides lay it out, must lie inside one device allocation: OpenBLAS is not built with AddressSanitizer, so
// this is what catches a product that would read or write past a buffer on the GPU.
#include <cblas.h>
#include <stdio.h>
#include <string.h>

#include "include/cublas_v2.h"

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

// TF32 would round the inputs to 10-bit mantissas on a GPU; the emulator always computes in fp32 (kvlab asks for
// CUBLAS_DEFAULT_MATH, fp32, anyway).
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

static cublasStatus_t gemm(const char *call, cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                           int n, int k, const float *alpha, const float *A, int lda, long long sA, const float *B,
                           int ldb, long long sB, const float *beta, float *C, int ldc, long long sC, int batch) {
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
        cblas_sgemm(CblasColMajor, to_cblas(ta), to_cblas(tb), m, n, k, *alpha, A + (size_t)b * (size_t)sA, lda,
                    B + (size_t)b * (size_t)sB, ldb, *beta, c, ldc);
    }
    return CUBLAS_STATUS_SUCCESS;
}

extern "C" cublasStatus_t cublasSgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                                      int k, const float *alpha, const float *A, int lda, const float *B, int ldb,
                                      const float *beta, float *C, int ldc) {
    return gemm("cublasSgemm", h, ta, tb, m, n, k, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0, 1);
}

extern "C" cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb,
                                                    int m, int n, int k, const float *alpha, const float *A, int lda,
                                                    long long sA, const float *B, int ldb, long long sB,
                                                    const float *beta, float *C, int ldc, long long sC, int batch) {
    return gemm("cublasSgemmStridedBatched", h, ta, tb, m, n, k, alpha, A, lda, sA, B, ldb, sB, beta, C, ldc, sC,
                batch);
}
