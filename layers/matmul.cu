// Linear layer without bias on the GPU, in the precision precision_set_cuda chose (ops.h):
//   fp32  cuBLAS sgemm with CUBLAS_DEFAULT_MATH (no TF32), the CPU's parity;
//   tf32  the same calls with the handle's CUBLAS_TF32_TENSOR_OP_MATH (grouped calls: CUBLAS_COMPUTE_32F_FAST_TF32);
//   bf16  cublasLtMatmul on bf16 A and B, fp32 accumulation, fp32 C/D. The weights' bf16 copy (the shadow of the
//         registered parameter block) is made and refreshed here and by adamw_update_cuda; any other operand is
//         rounded into stream-ordered scratch (cudaMallocAsync, kept by the pool) per product.
// cuBLAS is column-major: a row-major (R, K) buffer is the column-major (K, R) matrix, its transpose, so every
// row-major product A @ B = C is computed as the column-major C^T = B^T @ A^T, with no copies.
//
// k products of one input (Q, K, V; W1, W3) are one grouped call (cublasGemmGroupedBatchedEx) in fp32 and tf32, and
// the same for their weight gradients. Its pointer arrays must be in device memory: a one-thread-per-pointer kernel
// writes them from its by-value arguments into a table owned here, so the host never waits (a pageable
// cudaMemcpyAsync may synchronise), and the next call's table write is stream-ordered after this call's GEMM.
// cuBLAS's grouped call takes bf16 inputs only with bf16 outputs, so in bf16 the k products are k cublasLtMatmul
// calls after one conversion of the shared operand. A cuBLAS that answers the grouped call with
// CUBLAS_STATUS_NOT_SUPPORTED gets one sgemm per product from then on (said once on stderr). The input gradient of k products is k accumulating products
// in j order, as on the CPU.
#include <cuda_bf16.h>
#include <stdio.h>

#include "../common/cuda_check.cuh"
#include "cuda_ops.h"

#define CONVERT_THREADS 256
#define LT_WORKSPACE_BYTES (32u << 20) // cuBLASLt's recommended workspace on Hopper
#define GROUP_MAX 8                    // products per grouped call (3 pointers each, one thread per pointer)

// --- the precision and the bf16 shadow ---------------------------------------------------------------------------

static int g_mode = OPS_PRECISION_FP32;
static const float *g_master = NULL; // the registered fp32 block (n floats) and its bf16 copy
static size_t g_master_n = 0;
static __nv_bfloat16 *g_shadow = NULL;
static void *g_lt_workspace = NULL;
static void **g_group_ptrs = NULL; // 3 * GROUP_MAX device pointers: the A, B and C arrays of a grouped call
static int g_grouped_unsupported = 0; // cuBLAS said CUBLAS_STATUS_NOT_SUPPORTED once: one call per product

__global__ void bf16_round_kernel(__nv_bfloat16 *dst, const float *src, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = __float2bfloat16_rn(src[i]);
}

// dst (n) = src rounded to bf16 (nearest even). Asynchronous.
static void bf16_round(__nv_bfloat16 *dst, const float *src, size_t n) {
    if (n == 0) return;
    unsigned grid = cuda_blocks(n, CONVERT_THREADS);
    bf16_round_kernel<<<grid > (1u << 20) ? (1u << 20) : grid, CONVERT_THREADS, 0, cuda_stream()>>>(dst, src, n);
    CUDA_OP_DONE("bf16_round");
}

static void shadow_drop(void) {
    if (g_shadow) CUDA_CHECK(cudaFreeAsync(g_shadow, cuda_stream()));
    g_shadow = NULL;
    g_master = NULL;
    g_master_n = 0;
}

extern "C" int precision_set_cuda(int mode, const float *params, size_t n, char *err) {
    if (mode < 0 || mode >= OPS_PRECISION_COUNT) {
        err_set(err, "precision mode %d is not one of fp32, tf32, bf16", mode);
        return -1;
    }
    shadow_drop();
    g_mode = mode;
    CUBLAS_CHECK(cublasSetMathMode(cuda_cublas(), mode == OPS_PRECISION_TF32 ? CUBLAS_TF32_TENSOR_OP_MATH
                                                                              : CUBLAS_DEFAULT_MATH));
    if (mode == OPS_PRECISION_BF16) {
        if (!g_lt_workspace) CUDA_CHECK(cudaMalloc(&g_lt_workspace, LT_WORKSPACE_BYTES));
        if (params && n) {
            CUDA_CHECK(cudaMallocAsync((void **)&g_shadow, n * sizeof(__nv_bfloat16), cuda_stream()));
            g_master = params;
            g_master_n = n;
            bf16_round(g_shadow, params, n);
        }
    }
    return 0;
}

extern "C" int precision_get_cuda(void) { return g_mode; }

extern "C" void *precision_shadow_cuda(const float *p, size_t n) {
    if (!g_shadow || p < g_master || p >= g_master + g_master_n) return NULL;
    CHECK(n <= g_master_n - (size_t)(p - g_master)); // a range that starts inside the block ends inside it
    return g_shadow + (p - g_master);
}

extern "C" void precision_refresh_cuda(const void *dst, size_t bytes) {
    if (!g_shadow) return;
    const char *lo = (const char *)dst, *hi = lo + bytes;
    const char *mlo = (const char *)g_master, *mhi = (const char *)(g_master + g_master_n);
    if (hi <= mlo || lo >= mhi) return;
    // the whole floats the write touched, clipped to the block
    size_t first = lo > mlo ? (size_t)(lo - mlo) / sizeof(float) : 0;
    size_t end = hi < mhi ? ((size_t)(hi - mlo) + sizeof(float) - 1) / sizeof(float) : g_master_n;
    bf16_round(g_shadow + first, g_master + first, end - first);
}

extern "C" void precision_forget_cuda(const void *ptr) {
    if (ptr && ptr == (const void *)g_master) shadow_drop();
}

// --- bf16 products through cuBLASLt ------------------------------------------------------------------------------

// Up to 4 scratch buffers of one product (or one grouped product), freed in stream order when it is queued.
typedef struct {
    void *bufs[4];
    int n;
} Scratch;

// x (n floats) as bf16: the shadow when it lies in the registered block, else rounded into new scratch.
static const __nv_bfloat16 *bf16_operand(const float *x, size_t n, Scratch *s) {
    const __nv_bfloat16 *h = (const __nv_bfloat16 *)precision_shadow_cuda(x, n);
    if (h) return h;
    CHECK(s->n < 4);
    __nv_bfloat16 *buf = NULL;
    CUDA_CHECK(cudaMallocAsync((void **)&buf, (n ? n : 1) * sizeof(__nv_bfloat16), cuda_stream()));
    s->bufs[s->n++] = buf;
    bf16_round(buf, x, n);
    return buf;
}

// Frees (in stream order) the scratch buffers made since s->n was `mark`.
static void scratch_free_to(Scratch *s, int mark) {
    while (s->n > mark) CUDA_CHECK(cudaFreeAsync(s->bufs[--s->n], cuda_stream()));
}

static void scratch_free(Scratch *s) { scratch_free_to(s, 0); }

// Column-major C (m,n) = op(A) op(B) + beta C with bf16 A (stored (m,k), or (k,m) when ta is T) and B, fp32 C.
static void lt_gemm(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const __nv_bfloat16 *A, int lda,
                    const __nv_bfloat16 *B, int ldb, float beta, float *C, int ldc) {
    const float one = 1.0f;
    int32_t opa = ta, opb = tb;
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, lc;
    CUBLAS_CHECK(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, ta == CUBLAS_OP_N ? m : k, ta == CUBLAS_OP_N ? k : m, lda));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, tb == CUBLAS_OP_N ? k : n, tb == CUBLAS_OP_N ? n : k, ldb));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&lc, CUDA_R_32F, m, n, ldc));
    CUBLAS_CHECK(cublasLtMatmul(cuda_cublaslt(), desc, &one, A, la, B, lb, &beta, C, lc, C, lc, NULL, g_lt_workspace,
                                LT_WORKSPACE_BYTES, cuda_stream()));
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(la));
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(lb));
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(lc));
    CUBLAS_CHECK(cublasLtMatmulDescDestroy(desc));
}

// Elements of a column-major (rows, cols) operand with leading dimension ld.
static size_t span(int rows, int cols, int ld) { return rows && cols ? (size_t)(cols - 1) * ld + rows : 0; }

// Column-major C (m,n) = op(A) op(B) + beta C, fp32 operands, in the set precision. m, n, k > 0.
static void gemm(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const float *A, int lda,
                 const float *B, int ldb, float beta, float *C, int ldc) {
    if (g_mode != OPS_PRECISION_BF16) {
        const float one = 1.0f;
        CUBLAS_CHECK(cublasSgemm(cuda_cublas(), ta, tb, m, n, k, &one, A, lda, B, ldb, &beta, C, ldc));
        return;
    }
    Scratch s = {{0}, 0};
    const __nv_bfloat16 *a = bf16_operand(A, span(ta == CUBLAS_OP_N ? m : k, ta == CUBLAS_OP_N ? k : m, lda), &s);
    const __nv_bfloat16 *b = bf16_operand(B, span(tb == CUBLAS_OP_N ? k : n, tb == CUBLAS_OP_N ? n : k, ldb), &s);
    lt_gemm(ta, tb, m, n, k, a, lda, b, ldb, beta, C, ldc);
    scratch_free(&s);
}

// --- grouped fp32 / tf32 products --------------------------------------------------------------------------------

typedef struct {
    const void *p[3 * GROUP_MAX];
} GroupPtrs;

__global__ void group_ptrs_kernel(void **dst, GroupPtrs src, int n) {
    if ((int)threadIdx.x < n) dst[threadIdx.x] = (void *)src.p[threadIdx.x];
}

// The products of one grouped call, column-major: C_j (m_j, n_j) = op(A_j) (m_j, k_j) op(B_j) (k_j, n_j).
typedef struct {
    int cnt, m[GROUP_MAX], n[GROUP_MAX], k[GROUP_MAX], lda[GROUP_MAX], ldb[GROUP_MAX], ldc[GROUP_MAX];
    const float *A[GROUP_MAX], *B[GROUP_MAX];
    float *C[GROUP_MAX];
} Group;

static void group_add(Group *g, int m, int n, int k, const float *A, int lda, const float *B, int ldb, float *C,
                      int ldc) {
    CHECK(g->cnt < GROUP_MAX);
    int j = g->cnt++;
    g->m[j] = m;
    g->n[j] = n;
    g->k[j] = k;
    g->A[j] = A;
    g->lda[j] = lda;
    g->B[j] = B;
    g->ldb[j] = ldb;
    g->C[j] = C;
    g->ldc[j] = ldc;
}

// g's products C_j = op(A_j) op(B_j) + beta C_j in one cuBLAS call, every m_j, n_j, k_j > 0.
static void gemm_grouped(cublasOperation_t ta, cublasOperation_t tb, const Group *g, float beta) {
    int cnt = g->cnt;
    CHECK(cnt >= 1 && cnt <= GROUP_MAX);
    if (g_grouped_unsupported) { // the same products one call each
        for (int j = 0; j < cnt; j++)
            gemm(ta, tb, g->m[j], g->n[j], g->k[j], g->A[j], g->lda[j], g->B[j], g->ldb[j], beta, g->C[j], g->ldc[j]);
        return;
    }
    if (!g_group_ptrs) CUDA_CHECK(cudaMalloc((void **)&g_group_ptrs, 3 * GROUP_MAX * sizeof(void *)));
    GroupPtrs gp;
    cublasOperation_t tas[GROUP_MAX], tbs[GROUP_MAX];
    float alphas[GROUP_MAX], betas[GROUP_MAX];
    int sizes[GROUP_MAX];
    for (int j = 0; j < cnt; j++) {
        gp.p[j] = g->A[j];
        gp.p[cnt + j] = g->B[j];
        gp.p[2 * cnt + j] = g->C[j];
        tas[j] = ta;
        tbs[j] = tb;
        alphas[j] = 1.0f;
        betas[j] = beta;
        sizes[j] = 1;
    }
    group_ptrs_kernel<<<1, 3 * GROUP_MAX, 0, cuda_stream()>>>(g_group_ptrs, gp, 3 * cnt);
    CUDA_OP_DONE("matmul_group_ptrs");
    void **d = g_group_ptrs;
    cublasStatus_t st = cublasGemmGroupedBatchedEx(
        cuda_cublas(), tas, tbs, g->m, g->n, g->k, alphas, (const void *const *)d, CUDA_R_32F, g->lda,
        (const void *const *)(d + cnt), CUDA_R_32F, g->ldb, betas, d + 2 * cnt, CUDA_R_32F, g->ldc, cnt, sizes,
        g_mode == OPS_PRECISION_TF32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F);
    if (st == CUBLAS_STATUS_NOT_SUPPORTED) { // this cuBLAS or GPU lacks it: say so once, then one call each
        fprintf(stderr, "kvlab: cublasGemmGroupedBatchedEx is not supported here (%s); grouped products run one "
                        "cuBLAS call each\n", cublasGetStatusString(st));
        g_grouped_unsupported = 1;
        gemm_grouped(ta, tb, g, beta);
        return;
    }
    CUBLAS_CHECK(st);
}

// --- the ops -----------------------------------------------------------------------------------------------------

extern "C" void matmul_forward_cuda(float *out, const float *inp, const float *weight, int N, int IN, int OUT) {
    CHECK(N >= 0 && IN >= 0 && OUT >= 0);
    if (N == 0 || OUT == 0) return;
    if (IN == 0) { // an empty sum; cuBLAS would reject the zero leading dimension
        CUDA_CHECK(cudaMemsetAsync(out, 0, (size_t)N * OUT * sizeof(float), cuda_stream()));
        CUDA_OP_DONE("matmul_forward");
        return;
    }
    // out^T (OUT,N) = weight (OUT,IN) [the col-major (IN,OUT) buffer, transposed] @ inp^T (IN,N); overwrites
    gemm(CUBLAS_OP_T, CUBLAS_OP_N, OUT, N, IN, weight, IN, inp, IN, 0.0f, out, OUT);
    CUDA_OP_DONE("matmul_forward");
}

extern "C" void matmul_backward_cuda(float *dinp, float *dweight, const float *dout, const float *inp,
                                     const float *weight, int N, int IN, int OUT) {
    CHECK(N >= 0 && IN >= 0 && OUT >= 0);
    // (an empty product adds nothing: skipped)
    // dinp (N,IN) += dout (N,OUT) @ weight (OUT,IN)  <=>  dinp^T (IN,N) += weight^T (IN,OUT) @ dout^T (OUT,N)
    if (dinp && N > 0 && IN > 0 && OUT > 0) {
        gemm(CUBLAS_OP_N, CUBLAS_OP_N, IN, N, OUT, weight, IN, dout, OUT, 1.0f, dinp, IN);
        CUDA_OP_DONE("matmul_backward_dinp");
    }
    // dweight (OUT,IN) += dout^T (OUT,N) @ inp (N,IN)  <=>  dweight^T (IN,OUT) += inp^T (IN,N) @ dout (N,OUT)
    if (dweight && OUT > 0 && IN > 0 && N > 0) {
        gemm(CUBLAS_OP_N, CUBLAS_OP_T, IN, OUT, N, inp, IN, dout, OUT, 1.0f, dweight, IN);
        CUDA_OP_DONE("matmul_backward_dweight");
    }
}

extern "C" void matmul_many_forward_cuda(float *const *outs, const float *inp, const float *const *weights,
                                         const int *outs_dim, int k, int N, int IN) {
    CHECK(k >= 1 && k <= GROUP_MAX && N >= 0 && IN >= 0);
    if (N == 0) return;
    if (IN == 0) {
        for (int j = 0; j < k; j++) matmul_forward_cuda(outs[j], inp, weights[j], N, IN, outs_dim[j]);
        return;
    }
    // the non-empty products: out_j^T (OUT_j,N) = weight_j (OUT_j,IN) @ inp^T (IN,N), as matmul_forward_cuda
    Group g;
    g.cnt = 0; // group_add fills the rest
    for (int j = 0; j < k; j++) {
        CHECK(outs_dim[j] >= 0);
        if (outs_dim[j] > 0) group_add(&g, outs_dim[j], N, IN, weights[j], IN, inp, IN, outs[j], outs_dim[j]);
    }
    if (g.cnt == 0) return;
    if (g_mode != OPS_PRECISION_BF16) {
        gemm_grouped(CUBLAS_OP_T, CUBLAS_OP_N, &g, 0.0f);
    } else { // the shared input rounded once
        Scratch s = {{0}, 0};
        const __nv_bfloat16 *x = bf16_operand(inp, (size_t)N * IN, &s);
        int mark = s.n;
        for (int j = 0; j < g.cnt; j++) {
            const __nv_bfloat16 *w = bf16_operand(g.A[j], (size_t)g.m[j] * IN, &s); // the shadow, or a rounded copy
            lt_gemm(CUBLAS_OP_T, CUBLAS_OP_N, g.m[j], N, IN, w, IN, x, IN, 0.0f, g.C[j], g.ldc[j]);
            scratch_free_to(&s, mark);
        }
        scratch_free(&s);
    }
    CUDA_OP_DONE("matmul_many_forward");
}

extern "C" void matmul_many_backward_cuda(float *dinp, float *const *dweights, const float *const *douts,
                                          const float *inp, const float *const *weights, const int *outs_dim, int k,
                                          int N, int IN) {
    CHECK(k >= 1 && k <= GROUP_MAX && N >= 0 && IN >= 0);
    // dinp += douts[j] @ weights[j], one accumulating product after another in j order (the CPU's order)
    if (dinp)
        for (int j = 0; j < k; j++) matmul_backward_cuda(dinp, NULL, douts[j], inp, weights[j], N, IN, outs_dim[j]);
    if (!dweights || N == 0 || IN == 0) return;
    // dweight_j^T (IN,OUT_j) += inp^T (IN,N) @ dout_j (N,OUT_j), as matmul_backward_cuda, in one call
    Group g;
    g.cnt = 0; // group_add fills the rest
    for (int j = 0; j < k; j++) {
        CHECK(outs_dim[j] >= 0);
        if (outs_dim[j] > 0) group_add(&g, IN, outs_dim[j], N, inp, IN, douts[j], outs_dim[j], dweights[j], IN);
    }
    if (g.cnt == 0) return;
    if (g_mode != OPS_PRECISION_BF16) {
        gemm_grouped(CUBLAS_OP_N, CUBLAS_OP_T, &g, 1.0f);
    } else {
        Scratch s = {{0}, 0};
        const __nv_bfloat16 *x = bf16_operand(inp, (size_t)N * IN, &s);
        int mark = s.n;
        for (int j = 0; j < g.cnt; j++) {
            const __nv_bfloat16 *d = bf16_operand(g.B[j], (size_t)N * g.n[j], &s);
            lt_gemm(CUBLAS_OP_N, CUBLAS_OP_T, IN, g.n[j], N, x, IN, d, g.n[j], 1.0f, g.C[j], IN);
            scratch_free_to(&s, mark);
        }
        scratch_free(&s);
    }
    CUDA_OP_DONE("matmul_many_backward_dweights");
}
