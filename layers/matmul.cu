// Linear layer without bias on the GPU: one cuBLAS sgemm per product, fp32 (the handle's math mode is
// CUBLAS_DEFAULT_MATH: no TF32) for parity with the CPU. cuBLAS is column-major: a row-major (R, K) buffer
// is the column-major (K, R) matrix, its transpose, so every row-major product A @ B = C is computed as the
// column-major C^T = B^T @ A^T, with no copies.
#include "../common/cuda_check.cuh"
#include "cuda_ops.h"

extern "C" void matmul_forward_cuda(float *out, const float *inp, const float *weight, int N, int IN, int OUT) {
    CHECK(N >= 0 && IN >= 0 && OUT >= 0);
    if (N == 0 || OUT == 0) return;
    if (IN == 0) { // an empty sum; cuBLAS would reject the zero leading dimension
        CUDA_CHECK(cudaMemsetAsync(out, 0, (size_t)N * OUT * sizeof(float), cuda_stream()));
        CUDA_OP_DONE("matmul_forward");
        return;
    }
    const float one = 1.0f, zero = 0.0f;
    // out^T (OUT,N) = weight (OUT,IN) [the col-major (IN,OUT) buffer, transposed] @ inp^T (IN,N); overwrites
    CUBLAS_CHECK(cublasSgemm(cuda_cublas(), CUBLAS_OP_T, CUBLAS_OP_N, OUT, N, IN, &one, weight, IN, inp, IN, &zero,
                             out, OUT));
    CUDA_OP_DONE("matmul_forward");
}

extern "C" void matmul_backward_cuda(float *dinp, float *dweight, const float *dout, const float *inp,
                                     const float *weight, int N, int IN, int OUT) {
    CHECK(N >= 0 && IN >= 0 && OUT >= 0);
    const float one = 1.0f; // (an empty product adds nothing: skipped)
    // dinp (N,IN) += dout (N,OUT) @ weight (OUT,IN)  <=>  dinp^T (IN,N) += weight^T (IN,OUT) @ dout^T (OUT,N)
    if (dinp && N > 0 && IN > 0 && OUT > 0) {
        CUBLAS_CHECK(cublasSgemm(cuda_cublas(), CUBLAS_OP_N, CUBLAS_OP_N, IN, N, OUT, &one, weight, IN, dout, OUT,
                                 &one, dinp, IN));
        CUDA_OP_DONE("matmul_backward_dinp");
    }
    // dweight (OUT,IN) += dout^T (OUT,N) @ inp (N,IN)  <=>  dweight^T (IN,OUT) += inp^T (IN,N) @ dout (N,OUT)
    if (dweight && OUT > 0 && IN > 0 && N > 0) {
        CUBLAS_CHECK(cublasSgemm(cuda_cublas(), CUBLAS_OP_N, CUBLAS_OP_T, IN, OUT, N, &one, inp, IN, dout, OUT, &one,
                                 dweight, IN));
        CUDA_OP_DONE("matmul_backward_dweight");
    }
}
