// Linear layer without bias, weights stored (OUT, IN) as in PyTorch. A product of a few input rows (decode:
// one row per token or per request) goes through our matrix-vector code (common/matvec.h), several products
// of the same input in one parallel region (matmul_many_forward_cpu: Q, K, V; W1, W3); larger products are
// one CBLAS sgemm with the transposes it needs (no copies).
#include "cpu_ops.h"

#include <cblas.h>
#include <omp.h>

#include "../common/matvec.h"
#include "../common/par.h"

// The union of the k products' output rows is cut into one contiguous range per thread (a multiple of 8
// rows, so the kernel's blocks stay whole); the same thread gets the same weight rows at every call, so a
// model whose weights do not fit one core's cache is held half in each core's. Each output element is one
// dot product whose bits do not depend on the split (matvec.h), so results do not depend on the thread count.
void matmul_many_forward_cpu(float *const *outs, const float *inp, const float *const *weights, const int *outs_dim,
                             int k, int N, int IN) {
    CHECK(k >= 1 && N >= 1 && IN >= 1);
    size_t total = 0;
    for (int j = 0; j < k; j++) total += (size_t)outs_dim[j];
    if (N > MATVEC_MAX_N) {
        for (int j = 0; j < k; j++) matmul_forward_cpu(outs[j], inp, weights[j], N, IN, outs_dim[j]);
        return;
    }
#pragma omp parallel if (par_worth(total * (size_t)N * IN))
    {
        size_t nt = (size_t)omp_get_num_threads(), t = (size_t)omp_get_thread_num();
        size_t blocks = (total + 7) / 8, lo = blocks * t / nt * 8, hi = blocks * (t + 1) / nt * 8;
        if (hi > total) hi = total;
        size_t base = 0;
        for (int j = 0; j < k; j++) {
            size_t a = lo > base ? lo : base, b = hi < base + outs_dim[j] ? hi : base + outs_dim[j];
            if (a < b)
                matvec_rows(outs[j], (size_t)outs_dim[j], inp, weights[j], N, IN, (int)(a - base),
                                (int)(b - base));
            base += (size_t)outs_dim[j];
        }
    }
}

void matmul_forward_cpu(float *out, const float *inp, const float *weight, int N, int IN, int OUT) {
    if (N <= MATVEC_MAX_N) {
        matmul_many_forward_cpu(&out, inp, &weight, &OUT, 1, N, IN);
        return;
    }
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
