// Linear layer without bias, weights stored (OUT, IN) as in PyTorch. A product of a few input rows (decode:
// one row per token or per request) goes through our matrix-vector code (common/matvec.h), several products
// of the same input in one pass over threads (matmul_many_forward_cpu: Q, K, V; W1, W3); larger products are
// one CBLAS sgemm with the transposes it needs (no copies).
#include "cpu_ops.h"

#include <cblas.h>

#include "../common/matvec.h"
#include "../common/pool.h"

// The k products as one list of output rows (the union of their rows, in order).
typedef struct {
    float *const *outs;
    const float *inp;
    const float *const *weights;
    const int *outs_dim;
    int k, N, IN;
    size_t total, chunk_rows;
} ManyJob;

// Rows [lo, hi) of the union, each product's part through the matrix-vector kernel.
static void many_rows(const ManyJob *j, size_t lo, size_t hi) {
    size_t base = 0;
    for (int p = 0; p < j->k; p++) {
        size_t end = base + (size_t)j->outs_dim[p], a = lo > base ? lo : base, b = hi < end ? hi : end;
        if (a < b)
            matvec_rows(j->outs[p], (size_t)j->outs_dim[p], j->inp, j->weights[p], j->N, j->IN, (int)(a - base),
                        (int)(b - base));
        base = end;
    }
}

static void many_chunk(void *ctx, int c) {
    const ManyJob *j = ctx;
    size_t lo = (size_t)c * j->chunk_rows, hi = lo + j->chunk_rows;
    many_rows(j, lo, hi < j->total ? hi : j->total);
}

// Products of a few rows: the union of the k products' output rows in chunks of about MANY_CHUNK_MACS
// multiply-adds, shared by common/pool.h (a thread keeps the same rows at every call, so a model whose weights
// do not fit one core's cache is held part in each core's; a partner thread that is descheduled is never
// waited for). Each output element is one dot product whose bits do not depend on the chunk it falls in
// (matvec.h), so results do not depend on the thread count.
#define MANY_CHUNK_MACS 4096

void matmul_many_forward_cpu(float *const *outs, const float *inp, const float *const *weights, const int *outs_dim,
                             int k, int N, int IN) {
    CHECK(k >= 1 && N >= 1 && IN >= 1);
    size_t total = 0;
    for (int j = 0; j < k; j++) total += (size_t)outs_dim[j];
    if (N > MATVEC_MAX_N) {
        for (int j = 0; j < k; j++) matmul_forward_cpu(outs[j], inp, weights[j], N, IN, outs_dim[j]);
        return;
    }
    ManyJob job = {outs, inp, weights, outs_dim, k, N, IN, total, 0};
    size_t macs = total * (size_t)N * IN;
    if (!pool_worth(macs) || pool_threads() == 1) { // one call: no chunking
        many_rows(&job, 0, total);
        return;
    }
    size_t rows = MANY_CHUNK_MACS / ((size_t)N * IN), least = (total + POOL_MAX_CHUNKS - 1) / POOL_MAX_CHUNKS;
    if (rows < least) rows = least;
    job.chunk_rows = (rows + 7) / 8 * 8; // whole blocks of the kernel
    pool_for((int)((total + job.chunk_rows - 1) / job.chunk_rows), macs, many_chunk, &job);
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

void matmul_many_backward_cpu(float *dinp, float *const *dweights, const float *const *douts, const float *inp,
                              const float *const *weights, const int *outs_dim, int k, int N, int IN) {
    CHECK(k >= 1 && N >= 0 && IN >= 0);
    if (N == 0 || IN == 0) return; // nothing to add (CBLAS would reject the zero leading dimensions)
    for (int j = 0; j < k; j++) // the input gradient summed in j order
        if (dinp && outs_dim[j] > 0) matmul_backward_cpu(dinp, NULL, douts[j], inp, weights[j], N, IN, outs_dim[j]);
    for (int j = 0; dweights && j < k; j++)
        if (outs_dim[j] > 0) matmul_backward_cpu(NULL, dweights[j], douts[j], inp, weights[j], N, IN, outs_dim[j]);
}
