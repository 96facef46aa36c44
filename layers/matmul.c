// Linear layer without bias, weights stored (OUT, IN) as in PyTorch. Every product is one CBLAS sgemm
// with the transposes it needs (no copies).
#include "cpu_ops.h"

#include <cblas.h>

void matmul_forward_cpu(float *out, const float *inp, const float *weight, int N, int IN, int OUT) {
    // out (N,OUT) = inp (N,IN) @ weight (OUT,IN)^T
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, OUT, IN, 1.0f, inp, IN, weight, IN, 0.0f, out, OUT);
}

void matmul_backward_cpu(float *dinp, float *dweight, const float *dout, const float *inp, const float *weight,
                         int N, int IN, int OUT) {
    // dinp (N,IN) += dout (N,OUT) @ weight (OUT,IN)
    if (dinp)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, IN, OUT, 1.0f, dout, OUT, weight, IN, 1.0f,
                    dinp, IN);
    // dweight (OUT,IN) += dout^T (OUT,N) @ inp (N,IN)
    if (dweight)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OUT, IN, N, 1.0f, dout, OUT, inp, IN, 1.0f, dweight,
                    IN);
}
