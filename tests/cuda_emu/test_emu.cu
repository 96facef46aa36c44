// Tests of the CUDA emulator itself, suite `cuda_emu` (in $builddir/cuda-emu/tests, compiled through cu2cpp.py
// like the backend's .cu sources): what it must run as a GPU does (thread and block indices, barriers, shuffles
// and ballots, shared memory, cuBLAS's column-major products and their TF32/bf16 rounding, the grouped and cuBLASLt
// calls, half floats), and what it must catch, each with a
// deliberately broken tiny kernel: launch limits and __launch_bounds__ (a GPU refuses the launch:
// cudaGetLastError says so), reads of shared memory no thread wrote (NaN), a barrier missing between warps (the
// reading warp runs first), barriers some threads skip or reach at another __syncthreads, warp collectives whose
// mask names exited or absent lanes (the emulator aborts naming the block), and reads past a device buffer
// (AddressSanitizer, in the --sanitize build; copies and cuBLAS operands are checked in every build). A test
// that expects an abort runs the kernel in a child process and checks the signal and the message.
#include <criterion/criterion.h>
#include <criterion/redirect.h>

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#if defined(__F16C__)
#include <immintrin.h>
#endif

#define FULL 0xffffffffu

#if defined(__SANITIZE_ADDRESS__)
#define EMU_ASAN 1
#else
#define EMU_ASAN 0
#endif

// --- helpers ------------------------------------------------------------------------------------------------

struct Outcome {
    int signal, exit_code;
    char err[16384];
};

// Runs fn in a child process with its stderr captured.
static void run_child(void (*fn)(void), Outcome *o) {
    int p[2];
    cr_assert(pipe(p) == 0);
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        close(p[0]);
        dup2(p[1], 2);
        fn();
        fflush(stderr);
        _exit(0);
    }
    close(p[1]);
    size_t n = 0;
    ssize_t r;
    while ((r = read(p[0], o->err + n, sizeof(o->err) - 1 - n)) > 0) n += (size_t)r;
    o->err[n] = 0;
    close(p[0]);
    int status = 0;
    cr_assert(waitpid(pid, &status, 0) == pid);
    o->signal = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
    o->exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// fn must abort (SIGABRT) with a message that holds every one of the needles.
static void expect_abort(void (*fn)(void), const char *a, const char *b = NULL, const char *c = NULL) {
    static Outcome o;
    run_child(fn, &o);
    cr_assert(o.signal == SIGABRT, "expected an abort, got signal %d exit %d; stderr:\n%s", o.signal, o.exit_code,
              o.err);
    const char *needles[] = {a, b, c};
    for (const char *s : needles)
        if (s) cr_assert(strstr(o.err, s), "the message lacks \"%s\":\n%s", s, o.err);
}

template <typename T>
static T *dev_alloc(size_t n) {
    void *p = NULL;
    cr_assert(cudaMalloc(&p, n * sizeof(T)) == cudaSuccess);
    return (T *)p;
}

template <typename T>
static void download(T *h, const T *d, size_t n) {
    cr_assert(cudaMemcpy(h, d, n * sizeof(T), cudaMemcpyDeviceToHost) == cudaSuccess);
}

template <typename T>
static T *dev_filled(size_t n, T value) {
    T *d = dev_alloc<T>(n);
    T *h = new T[n];
    for (size_t i = 0; i < n; i++) h[i] = value;
    cr_assert(cudaMemcpy(d, h, n * sizeof(T), cudaMemcpyHostToDevice) == cudaSuccess);
    delete[] h;
    return d;
}

// --- what it runs as a GPU does -----------------------------------------------------------------------------

// out[b][t] = linear block * 10000 + linear thread, for a 3-D grid of 3-D blocks
__global__ void index_kernel(int *out) {
    int t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    int b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    out[b * (blockDim.x * blockDim.y * blockDim.z) + t] = b * 10000 + t;
}

Test(cuda_emu, indices) {
    dim3 grid(3, 2, 2), block(4, 3, 2);
    int nb = 12, nt = 24;
    int *d = dev_filled<int>((size_t)nb * nt, -1), h[12 * 24];
    index_kernel<<<grid, block>>>(d);
    cr_assert(cudaGetLastError() == cudaSuccess);
    download(h, d, (size_t)nb * nt);
    for (int b = 0; b < nb; b++)
        for (int t = 0; t < nt; t++) cr_assert_eq(h[b * nt + t], b * 10000 + t);
    cudaFree(d);
}

// A block-wide inclusive prefix sum over 1024 threads (Hillis-Steele: 10 rounds of two barriers each) in static
// shared memory, then the warp's lanes in reverse through shuffles, a butterfly sum and two ballots.
__global__ void collective_kernel(int *scan, int *rev, int *wsum, unsigned *ballots, int *up, int *down) {
    __shared__ int buf[1024];
    int t = threadIdx.x, lane = t % 32;
    buf[t] = t + 1;
    __syncthreads();
    for (int off = 1; off < 1024; off *= 2) {
        int add = t >= off ? buf[t - off] : 0;
        __syncthreads();
        buf[t] += add;
        __syncthreads();
    }
    scan[t] = buf[t];
    rev[t] = __shfl_sync(FULL, t, 31 - lane);
    int s = t;
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(FULL, s, o);
    wsum[t] = s;
    unsigned b = __ballot_sync(FULL, lane % 3 == 0);
    if (lane == 0) ballots[t / 32] = b;
    up[t] = __shfl_up_sync(FULL, t, 3);
    down[t] = __shfl_down_sync(FULL, t, 5, 16); // width 16: lanes 11..15 and 27..31 keep their own
}

Test(cuda_emu, barriers_and_collectives) {
    int *scan = dev_alloc<int>(1024), *rev = dev_alloc<int>(1024), *wsum = dev_alloc<int>(1024);
    int *up = dev_alloc<int>(1024), *down = dev_alloc<int>(1024);
    unsigned *ballots = dev_alloc<unsigned>(32);
    collective_kernel<<<1, 1024>>>(scan, rev, wsum, ballots, up, down);
    cr_assert(cudaGetLastError() == cudaSuccess);
    static int hs[1024], hr[1024], hw[1024], hu[1024], hd[1024];
    unsigned hb[32];
    download(hs, scan, 1024), download(hr, rev, 1024), download(hw, wsum, 1024);
    download(hu, up, 1024), download(hd, down, 1024), download(hb, ballots, 32);
    unsigned want_ballot = 0;
    for (int l = 0; l < 32; l += 3) want_ballot |= 1u << l;
    for (int t = 0; t < 1024; t++) {
        int lane = t % 32, w = t - lane;
        cr_assert_eq(hs[t], (t + 1) * (t + 2) / 2, "scan[%d]", t);
        cr_assert_eq(hr[t], w + 31 - lane);
        cr_assert_eq(hw[t], 32 * w + 31 * 32 / 2);
        cr_assert_eq(hu[t], lane >= 3 ? t - 3 : t);
        cr_assert_eq(hd[t], lane % 16 < 11 ? t + 5 : t, "down[%d] = %d", t, hd[t]);
    }
    for (int w = 0; w < 32; w++) cr_assert_eq(hb[w], want_ballot);
    cudaFree(scan), cudaFree(rev), cudaFree(wsum), cudaFree(up), cudaFree(down), cudaFree(ballots);
}

// Dynamic shared memory above 48 KB after the opt-in: every byte usable, rows reversed through it.
__global__ void big_smem_kernel(float *out, int n) {
    extern __shared__ float dyn[];
    for (int i = threadIdx.x; i < n; i += blockDim.x) dyn[i] = (float)i;
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += blockDim.x) out[i] = dyn[n - 1 - i];
}

Test(cuda_emu, dynamic_shared_opt_in) {
    int n = 100 * 1024 / 4; // 100 KB
    float *out = dev_alloc<float>((size_t)n);
    cr_assert(cudaFuncSetAttribute(big_smem_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, n * 4) ==
              cudaSuccess);
    big_smem_kernel<<<2, 256, (size_t)n * 4>>>(out, n);
    cr_assert(cudaGetLastError() == cudaSuccess);
    float *h = new float[n];
    download(h, out, (size_t)n);
    for (int i = 0; i < n; i++) cr_assert_eq(h[i], (float)(n - 1 - i));
    delete[] h;
    cudaFree(out);
}

// cuBLAS's column-major product against a naive loop, transposes and a batch stride included.
Test(cuda_emu, cublas_column_major, .init = cr_redirect_stderr) {
    const int m = 5, n = 3, k = 4, batch = 2, lda = 7, ldb = 6, ldc = 8;
    const long long sA = 40, sB = 30, sC = 30;
    static float hA[80], hB[60], hC[60], want[60];
    for (int i = 0; i < 80; i++) hA[i] = (float)((i * 7) % 11) - 5.0f;
    for (int i = 0; i < 60; i++) hB[i] = (float)((i * 5) % 9) - 4.0f, hC[i] = (float)(i % 4);
    float *A = dev_alloc<float>(80), *B = dev_alloc<float>(60), *C = dev_alloc<float>(60);
    cudaMemcpy(A, hA, sizeof hA, cudaMemcpyHostToDevice);
    cudaMemcpy(B, hB, sizeof hB, cudaMemcpyHostToDevice);
    cudaMemcpy(C, hC, sizeof hC, cudaMemcpyHostToDevice);
    memcpy(want, hC, sizeof hC);
    const float alpha = 2.0f, beta = 0.5f;
    // C_b (m,n) = alpha A_b^T B_b + beta C_b, A_b stored (k,m), B_b stored (k,n)
    for (int b = 0; b < batch; b++)
        for (int j = 0; j < n; j++)
            for (int i = 0; i < m; i++) {
                float s = 0.0f;
                for (int p = 0; p < k; p++) s += hA[b * sA + i * lda + p] * hB[b * sB + j * ldb + p];
                want[b * sC + j * ldc + i] = alpha * s + beta * hC[b * sC + j * ldc + i];
            }
    cublasHandle_t h;
    cr_assert(cublasCreate(&h) == CUBLAS_STATUS_SUCCESS);
    cr_assert(cublasSgemmStridedBatched(h, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha, A, lda, sA, B, ldb, sB, &beta,
                                        C, ldc, sC, batch) == CUBLAS_STATUS_SUCCESS);
    float got[60];
    download(got, C, 60);
    for (int i = 0; i < 60; i++) cr_assert_float_eq(got[i], want[i], 1e-4f, "C[%d]: %g, want %g", i, got[i], want[i]);
    // operands past their allocation, and cuBLAS's own argument checks
    cr_assert(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &alpha, A, lda, B, ldb, &beta, C, 40) ==
              CUBLAS_STATUS_INVALID_VALUE, "C as (5 x 3, ld 40) runs past its 60 floats");
    cr_assert(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &alpha, hA, lda, B, ldb, &beta, C, ldc) ==
              CUBLAS_STATUS_INVALID_VALUE, "A is host memory");
    cr_assert(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &alpha, A, 4, B, ldb, &beta, C, ldc) ==
              CUBLAS_STATUS_INVALID_VALUE, "lda 4 < m 5");
    cublasDestroy(h);
    cudaFree(A), cudaFree(B), cudaFree(C);
}

static uint32_t f2u(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float u2f(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static unsigned bf16_bits(float f) { return __float2bfloat16_rn(f).x; }

// bf16 rounding (round to nearest, ties to even) on chosen values, then against an independent reference: the
// nearer of the two bf16 neighbours in double arithmetic, the even one on a tie.
Test(cuda_emu, bf16_rounding) {
    cr_expect_eq(bf16_bits(1.0f), 0x3f80u);
    cr_expect_eq(bf16_bits(u2f(0x3f808000u)), 0x3f80u, "1 + 2^-8, a tie: to the even 1");
    cr_expect_eq(bf16_bits(u2f(0x3f818000u)), 0x3f82u, "1 + 3 * 2^-8, a tie: up to the even neighbour");
    cr_expect_eq(bf16_bits(u2f(0x3f808001u)), 0x3f81u, "just past the tie: up");
    cr_expect_eq(bf16_bits(u2f(0x3f807fffu)), 0x3f80u, "just below the tie: down");
    cr_expect_eq(bf16_bits(u2f(0x3fffffffu)), 0x4000u, "the carry runs into the exponent");
    cr_expect_eq(bf16_bits(u2f(0x7f7fffffu)), 0x7f80u, "FLT_MAX rounds to infinity");
    cr_expect_eq(bf16_bits(u2f(0x7f7f7fffu)), 0x7f7fu, "below the last half step stays finite");
    cr_expect_eq(bf16_bits(-0.0f), 0x8000u);
    cr_expect_eq(bf16_bits(-INFINITY), 0xff80u);
    cr_expect_eq(bf16_bits(u2f(0x7f800001u)), 0x7fc0u, "a NaN whose payload would round away stays a NaN");
    cr_expect_eq(bf16_bits(u2f(0x00018000u)), 0x0002u, "subnormal tie, odd: up");
    cr_expect_eq(bf16_bits(u2f(0x00008000u)), 0x0000u, "subnormal tie, even: down");
    cr_expect(__bfloat162float(__nv_bfloat16{0x3f81}) == 1.0f + 1.0f / 128, "bf16 -> float is exact");
    uint32_t x = 12345u;
    for (int i = 0; i < 1 << 20; i++) {
        x ^= x << 13, x ^= x >> 17, x ^= x << 5; // xorshift32
        uint32_t u = x;
        if ((u & 0x7f800000u) == 0x7f800000u) continue; // inf / NaN: above
        uint32_t up = (u & 0xffff0000u) + 0x10000u; // the neighbour away from zero (2^128 in magnitude past FLT_MAX)
        double v = u2f(u), lo = u2f(u & 0xffff0000u);
        double hi = (up & 0x7fffffffu) == 0x7f800000u ? copysign(ldexp(1.0, 128), v) : (double)u2f(up);
        double dl = fabs(v - lo), dh = fabs(v - hi);
        uint32_t want = dl < dh ? u >> 16 : dh < dl ? (u >> 16) + 1 : ((u >> 16) & 1 ? (u >> 16) + 1 : u >> 16);
        cr_assert_eq(bf16_bits(u2f(u)), want, "0x%08x: 0x%04x, want 0x%04x", u, bf16_bits(u2f(u)), want);
    }
    // TF32's 10 bits through the same rounding
    cr_expect_eq(f2u(cuemu_round_mantissa(u2f(0x3f801000u), 10)), 0x3f800000u, "1 + 2^-11, a tie: to the even 1");
    cr_expect_eq(f2u(cuemu_round_mantissa(u2f(0x3f803000u), 10)), 0x3f804000u, "1 + 3 * 2^-11, a tie: up");
}

// TF32 math rounds the inputs of the fp32 products to 10 mantissa bits; the default math does not. 1 + 2^-12 is
// 1 in TF32, 1 + 3 * 2^-12 is 1 + 2^-10.
Test(cuda_emu, tf32_math_mode) {
    float hA[2] = {1.0f + 1.0f / 4096, 1.0f + 3.0f / 4096}, hB[2] = {1.0f, 1.0f}, got[1];
    float *A = dev_alloc<float>(2), *B = dev_alloc<float>(2), *C = dev_alloc<float>(1);
    cudaMemcpy(A, hA, sizeof hA, cudaMemcpyHostToDevice);
    cudaMemcpy(B, hB, sizeof hB, cudaMemcpyHostToDevice);
    const float one = 1.0f, zero = 0.0f;
    cublasHandle_t h;
    cr_assert(cublasCreate(&h) == CUBLAS_STATUS_SUCCESS);
    cr_assert(cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, 1, 1, 2, &one, A, 2, B, 2, &zero, C, 1) == CUBLAS_STATUS_SUCCESS);
    download(got, C, 1);
    cr_expect(got[0] == hA[0] + hA[1], "fp32: %.9g", got[0]);
    cr_assert(cublasSetMathMode(h, CUBLAS_TF32_TENSOR_OP_MATH) == CUBLAS_STATUS_SUCCESS);
    cr_assert(cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, 1, 1, 2, &one, A, 2, B, 2, &zero, C, 1) == CUBLAS_STATUS_SUCCESS);
    download(got, C, 1);
    cr_expect(got[0] == 2.0f + 1.0f / 1024, "tf32: %.9g, want 2 + 2^-10", got[0]);
    cublasDestroy(h);
    cudaFree(A), cudaFree(B), cudaFree(C);
}

// A grouped call of two products of different shapes equals the two products; its pointer arrays must be in device
// memory (host arrays are refused with a message), and bf16 inputs with fp32 outputs are not offered.
Test(cuda_emu, grouped_gemm, .init = cr_redirect_stderr) {
    const int k = 3, m[2] = {2, 4}, n[2] = {3, 3}, K[2] = {k, k};
    float hA[18], hB[9], want[20] = {0};
    for (int i = 0; i < 18; i++) hA[i] = (float)(i % 5) - 2.0f;
    for (int i = 0; i < 9; i++) hB[i] = (float)(i % 4) - 1.5f;
    float *A = dev_alloc<float>(18), *B = dev_alloc<float>(9), *C = dev_alloc<float>(20);
    cudaMemcpy(A, hA, sizeof hA, cudaMemcpyHostToDevice);
    cudaMemcpy(B, hB, sizeof hB, cudaMemcpyHostToDevice);
    // product g: C_g (m_g, 3) = A_g^T B with A_g stored (k, m_g): A_0 = A, A_1 = A + 6; C_0 = C, C_1 = C + 6
    for (int g = 0; g < 2; g++)
        for (int j = 0; j < 3; j++)
            for (int i = 0; i < m[g]; i++) {
                float s = 0.0f;
                for (int p = 0; p < k; p++) s += hA[g * 6 + i * k + p] * hB[j * k + p];
                want[g * 6 + j * m[g] + i] = s;
            }
    const void *hptrs[6] = {A, A + 6, B, B, C, C + 6};
    void **ptrs = dev_alloc<void *>(6);
    cudaMemcpy(ptrs, hptrs, sizeof hptrs, cudaMemcpyHostToDevice);
    cublasOperation_t ta[2] = {CUBLAS_OP_T, CUBLAS_OP_T}, tb[2] = {CUBLAS_OP_N, CUBLAS_OP_N};
    const int lda[2] = {k, k}, ldb[2] = {k, k}, sizes[2] = {1, 1};
    const float alpha[2] = {1.0f, 1.0f}, beta[2] = {0.0f, 0.0f};
    cublasHandle_t h;
    cr_assert(cublasCreate(&h) == CUBLAS_STATUS_SUCCESS);
    cr_assert(cublasGemmGroupedBatchedEx(h, ta, tb, m, n, K, alpha, (const void *const *)ptrs, CUDA_R_32F, lda,
                                         (const void *const *)ptrs + 2, CUDA_R_32F, ldb, beta, ptrs + 4, CUDA_R_32F, m,
                                         2, sizes, CUBLAS_COMPUTE_32F) == CUBLAS_STATUS_SUCCESS);
    float got[20];
    download(got, C, 20);
    for (int i = 0; i < 18; i++) cr_expect(got[i] == want[i], "C[%d]: %g, want %g", i, got[i], want[i]);
    cr_expect(cublasGemmGroupedBatchedEx(h, ta, tb, m, n, K, alpha, hptrs, CUDA_R_32F, lda, hptrs + 2, CUDA_R_32F, ldb,
                                         beta, (void *const *)hptrs + 4, CUDA_R_32F, m, 2, sizes,
                                         CUBLAS_COMPUTE_32F) == CUBLAS_STATUS_INVALID_VALUE,
              "host pointer arrays are refused");
    cr_expect(cublasGemmGroupedBatchedEx(h, ta, tb, m, n, K, alpha, (const void *const *)ptrs, CUDA_R_16BF, lda,
                                         (const void *const *)ptrs + 2, CUDA_R_16BF, ldb, beta, ptrs + 4, CUDA_R_32F,
                                         m, 2, sizes, CUBLAS_COMPUTE_32F) == CUBLAS_STATUS_NOT_SUPPORTED);
    cublasDestroy(h);
    cudaFree(A), cudaFree(B), cudaFree(C), cudaFree(ptrs);
}

// cublasLtMatmul on bf16 A (transposed) and B, fp32 C accumulated (beta 1): the product of the widened bf16 values.
Test(cuda_emu, cublaslt_bf16) {
    const int m = 3, n = 2, k = 5;
    __nv_bfloat16 hA[15], hB[10];
    float fA[15], fB[10], want[6];
    for (int i = 0; i < 15; i++) hA[i] = __float2bfloat16_rn(0.1f * (float)(i - 7)), fA[i] = __bfloat162float(hA[i]);
    for (int i = 0; i < 10; i++) hB[i] = __float2bfloat16_rn(0.3f * (float)(i - 4)), fB[i] = __bfloat162float(hB[i]);
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            double s = 1.0; // C starts at 1
            for (int p = 0; p < k; p++) s += (double)fA[i * k + p] * fB[j * k + p];
            want[j * m + i] = (float)s;
        }
    __nv_bfloat16 *A = dev_alloc<__nv_bfloat16>(15), *B = dev_alloc<__nv_bfloat16>(10);
    float *C = dev_filled<float>(6, 1.0f);
    void *ws = dev_alloc<char>(1024);
    cudaMemcpy(A, hA, sizeof hA, cudaMemcpyHostToDevice);
    cudaMemcpy(B, hB, sizeof hB, cudaMemcpyHostToDevice);
    cublasLtHandle_t h;
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, lc;
    int32_t opT = CUBLAS_OP_T;
    const float one = 1.0f;
    cr_assert(cublasLtCreate(&h) == CUBLAS_STATUS_SUCCESS);
    cr_assert(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F) == CUBLAS_STATUS_SUCCESS);
    cr_assert(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &opT, sizeof opT) == CUBLAS_STATUS_SUCCESS);
    cr_assert(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, k, m, k) == CUBLAS_STATUS_SUCCESS);
    cr_assert(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, k, n, k) == CUBLAS_STATUS_SUCCESS);
    cr_assert(cublasLtMatrixLayoutCreate(&lc, CUDA_R_32F, m, n, m) == CUBLAS_STATUS_SUCCESS);
    cr_assert(cublasLtMatmul(h, desc, &one, A, la, B, lb, &one, C, lc, C, lc, NULL, ws, 1024, 0) == CUBLAS_STATUS_SUCCESS);
    float got[6];
    download(got, C, 6);
    for (int i = 0; i < 6; i++) cr_expect(fabsf(got[i] - want[i]) <= 1e-6f, "C[%d]: %.9g, want %.9g", i, got[i], want[i]);
    cr_expect(cublasLtMatmul(h, desc, &one, A, lb, B, lb, &one, C, lc, C, lc, NULL, ws, 1024, 0) ==
              CUBLAS_STATUS_INVALID_VALUE, "A's layout does not fit op(A) (m x k)");
    cublasLtMatrixLayoutDestroy(la), cublasLtMatrixLayoutDestroy(lb), cublasLtMatrixLayoutDestroy(lc);
    cublasLtMatmulDescDestroy(desc);
    cublasLtDestroy(h);
    cudaFree(A), cudaFree(B), cudaFree(C), cudaFree(ws);
}

__global__ void read_first(float *out, const float *in) { out[0] = in[0]; }

// A copy from cudaMallocHost memory to the device is queued as a GPU would overlap it: it reads its source when the
// stream next needs it (a launch, another copy, a synchronisation), so a host write before then shows; a copy from
// ordinary memory, and cudaMemcpy, happen at once.
Test(cuda_emu, pinned_copies_are_asynchronous) {
    float *pinned = NULL, *d = NULL, *d_out = NULL, host = 0.0f, got = 0.0f;
    cr_assert_eq(cudaMallocHost((void **)&pinned, sizeof(float)), cudaSuccess);
    cr_assert_eq(cudaMalloc((void **)&d, sizeof(float)), cudaSuccess);
    cr_assert_eq(cudaMalloc((void **)&d_out, sizeof(float)), cudaSuccess);
    pinned[0] = 1.0f;
    cr_assert_eq(cudaMemcpyAsync(d, pinned, sizeof(float), cudaMemcpyHostToDevice, 0), cudaSuccess);
    pinned[0] = 2.0f; // before the stream reached the copy: the device sees this value
    read_first<<<1, 1>>>(d_out, d);
    cr_assert_eq(cudaMemcpy(&got, d_out, sizeof(float), cudaMemcpyDeviceToHost), cudaSuccess);
    cr_expect_eq(got, 2.0f, "the queued copy read its source at the launch: got %g", got);
    cudaEvent_t ev;
    cr_assert_eq(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), cudaSuccess);
    cr_assert_eq(cudaMemcpyAsync(d, pinned, sizeof(float), cudaMemcpyHostToDevice, 0), cudaSuccess);
    cr_assert_eq(cudaEventRecord(ev, 0), cudaSuccess);
    cr_assert_eq(cudaEventSynchronize(ev), cudaSuccess);
    pinned[0] = 3.0f; // after the event: too late to change the copy
    cr_assert_eq(cudaMemcpy(&got, d, sizeof(float), cudaMemcpyDeviceToHost), cudaSuccess);
    cr_expect_eq(got, 2.0f, "a copy done by its event changed afterwards: got %g", got);
    host = 4.0f; // pageable memory: copied before cudaMemcpyAsync returns
    cr_assert_eq(cudaMemcpyAsync(d, &host, sizeof(float), cudaMemcpyHostToDevice, 0), cudaSuccess);
    host = 5.0f;
    cr_assert_eq(cudaMemcpy(&got, d, sizeof(float), cudaMemcpyDeviceToHost), cudaSuccess);
    cr_expect_eq(got, 4.0f);
    cr_assert_eq(cudaMemcpy(d, pinned, sizeof(float), cudaMemcpyHostToDevice), cudaSuccess); // synchronous
    pinned[0] = 6.0f;
    cr_assert_eq(cudaMemcpy(&got, d, sizeof(float), cudaMemcpyDeviceToHost), cudaSuccess);
    cr_expect_eq(got, 3.0f);
    cudaEventDestroy(ev);
    cudaFree(d);
    cudaFree(d_out);
    cr_expect_eq(cudaFreeHost(pinned), cudaSuccess);
}

Test(cuda_emu, half_to_float) {
#if defined(__F16C__)
    for (unsigned b = 0; b < 65536; b++) {
        float got = __half2float(__ushort_as_half((unsigned short)b)), want = _cvtsh_ss((unsigned short)b);
        cr_assert(memcmp(&got, &want, 4) == 0 || (isnan(got) && isnan(want)), "half 0x%04x: %g, want %g", b, got,
                  want);
    }
#else
    cr_skip_test("no F16C instructions to compare with");
#endif
}

// --- launch limits: a GPU refuses these launches ------------------------------------------------------------

__global__ void mark_kernel(int *flag) { *flag = 1; }

static void expect_refused(dim3 grid, dim3 block, size_t shmem, cudaError_t want, const char *what) {
    int *flag = dev_filled<int>(1, 0), h = -1;
    cudaGetLastError();
    mark_kernel<<<grid, block, shmem>>>(flag);
    cudaError_t e = cudaGetLastError();
    cr_assert(e == want, "%s: cudaGetLastError says %s, want %s", what, cudaGetErrorName(e), cudaGetErrorName(want));
    cr_assert(cudaGetLastError() == cudaSuccess, "%s: a launch error is reported once", what);
    download(&h, flag, 1);
    cr_assert_eq(h, 0, "%s: the kernel ran anyway", what);
    cudaFree(flag);
}

Test(cuda_emu, launch_limits, .init = cr_redirect_stderr) {
    expect_refused(1, 1025, 0, cudaErrorInvalidConfiguration, "1025 threads");
    expect_refused(1, dim3(512, 4), 0, cudaErrorInvalidConfiguration, "2048 threads in 2-D");
    expect_refused(1, dim3(1, 1, 65), 0, cudaErrorInvalidConfiguration, "block z 65");
    expect_refused(1, dim3(1025, 1), 0, cudaErrorInvalidConfiguration, "block x 1025");
    expect_refused(dim3(1, 65536), 1, 0, cudaErrorInvalidConfiguration, "grid y 65536");
    expect_refused(dim3(1, 1, 65536), 1, 0, cudaErrorInvalidConfiguration, "grid z 65536");
    expect_refused(dim3(0), 1, 0, cudaErrorInvalidConfiguration, "an empty grid");
    expect_refused(1, 32, 48 * 1024 + 4, cudaErrorInvalidValue, "48 KB + 4 of dynamic shared memory, no opt-in");
    // the limits themselves are fine
    int *flag = dev_filled<int>(1, 0);
    mark_kernel<<<dim3(1, 65535), 1, 48 * 1024>>>(flag);
    cr_assert(cudaGetLastError() == cudaSuccess);
    mark_kernel<<<dim3(1, 1, 65535), dim3(1, 1, 64)>>>(flag);
    cr_assert(cudaGetLastError() == cudaSuccess);
    mark_kernel<<<1, dim3(16, 1, 64)>>>(flag);
    cr_assert(cudaGetLastError() == cudaSuccess);
    cudaFree(flag);
}

__global__ void __launch_bounds__(64, 2) bounded_kernel(int *flag) { *flag = 1; }

Test(cuda_emu, launch_bounds, .init = cr_redirect_stderr) {
    int *flag = dev_filled<int>(1, 0), h = 0;
    bounded_kernel<<<1, 64>>>(flag);
    cr_assert(cudaGetLastError() == cudaSuccess);
    download(&h, flag, 1);
    cr_assert_eq(h, 1);
    cudaMemset(flag, 0, sizeof(int));
    bounded_kernel<<<1, 65>>>(flag);
    cr_assert(cudaGetLastError() == cudaErrorLaunchOutOfResources, "65 threads above __launch_bounds__(64)");
    download(&h, flag, 1);
    cr_assert_eq(h, 0, "the kernel ran anyway");
    cudaFree(flag);
}

Test(cuda_emu, shared_memory_opt_in_limit, .init = cr_redirect_stderr) {
    // the opt-in above the device's 227 KB fails, and so does a launch past it
    cr_assert(cudaFuncSetAttribute(mark_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 232448 + 4) ==
              cudaErrorInvalidValue);
    cr_assert(cudaFuncSetAttribute(mark_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024) ==
              cudaSuccess);
    expect_refused(1, 32, 64 * 1024 + 4, cudaErrorInvalidValue, "above the kernel's opted-in 64 KB");
    expect_refused(1, 32, 232448 + 4, cudaErrorInvalidValue, "above the device's 227 KB");
}

// --- shared memory nobody wrote -------------------------------------------------------------------------------

// Thread 0 writes its element, everyone reads their own: on a GPU the other elements hold whatever was there.
__global__ void unwritten_shared_kernel(float *out, double *dout) {
    __shared__ float sf[64];
    __shared__ double sd[64];
    extern __shared__ float dyn[];
    int t = threadIdx.x;
    if (t == 0) sf[0] = 1.0f, sd[0] = 2.0, dyn[0] = 3.0f;
    __syncthreads();
    out[blockIdx.x * 128 + t] = sf[t];
    out[blockIdx.x * 128 + 64 + t] = dyn[t];
    dout[blockIdx.x * 64 + t] = sd[t];
}

// Block 0 writes all of its shared memory; every other block reads without writing: stale data from the block
// before must not look valid.
__global__ void stale_shared_kernel(float *out) {
    __shared__ float s[32];
    if (blockIdx.x == 0) s[threadIdx.x] = 5.0f;
    __syncthreads();
    out[blockIdx.x * 32 + threadIdx.x] = s[threadIdx.x];
}

Test(cuda_emu, unwritten_shared_is_nan) {
    float *out = dev_alloc<float>(256), h[256];
    double *dout = dev_alloc<double>(128), hd[128];
    unwritten_shared_kernel<<<2, 64, 64 * sizeof(float)>>>(out, dout);
    cr_assert(cudaGetLastError() == cudaSuccess);
    download(h, out, 256), download(hd, dout, 128);
    for (int b = 0; b < 2; b++) {
        cr_assert_eq(h[b * 128], 1.0f);
        cr_assert_eq(h[b * 128 + 64], 3.0f);
        cr_assert_eq(hd[b * 64], 2.0);
        for (int t = 1; t < 64; t++) {
            cr_assert(isnan(h[b * 128 + t]), "static shared float %d of block %d: %g", t, b, h[b * 128 + t]);
            cr_assert(isnan(h[b * 128 + 64 + t]), "dynamic shared float %d of block %d", t, b);
            cr_assert(isnan(hd[b * 64 + t]), "static shared double %d of block %d", t, b);
        }
    }
    float *o2 = dev_alloc<float>(96), h2[96];
    stale_shared_kernel<<<3, 32>>>(o2);
    download(h2, o2, 96);
    for (int i = 0; i < 96; i++) cr_assert(i < 32 ? h2[i] == 5.0f : isnan(h2[i]), "element %d: %g", i, h2[i]);
    cudaFree(out), cudaFree(dout), cudaFree(o2);
}

// --- a barrier missing between warps ------------------------------------------------------------------------

// Every thread writes its element and reads one of the other warp's; without the barrier the read races the
// write on a GPU. The emulator runs a warp on to its next barrier before the other moves (ascending warp order
// in even blocks, descending in odd ones), so in each block one warp reads before the other wrote.
template <bool BARRIER>
__global__ void exchange_kernel(float *out) {
    __shared__ float s[64];
    int t = threadIdx.x;
    s[t] = (float)t;
    if (BARRIER) __syncthreads();
    out[blockIdx.x * 64 + t] = s[(t + 32) % 64];
}

Test(cuda_emu, missing_barrier_shows) {
    float *out = dev_alloc<float>(128), h[128];
    exchange_kernel<true><<<2, 64>>>(out);
    download(h, out, 128);
    for (int i = 0; i < 128; i++) cr_assert_eq(h[i], (float)((i % 64 + 32) % 64), "with the barrier, element %d", i);
    exchange_kernel<false><<<2, 64>>>(out);
    download(h, out, 128);
    for (int t = 0; t < 32; t++) {
        cr_assert(isnan(h[t]), "block 0: warp 0 ran first and read warp 1's elements before they were written");
        cr_assert(isnan(h[64 + 32 + t]), "block 1: warp 1 ran first and read warp 0's elements unwritten");
    }
    cudaFree(out);
}

// --- divergent barriers --------------------------------------------------------------------------------------

// In block 1 only, half the threads return before the barrier the others wait at.
__global__ void early_exit_barrier_kernel(float *out) {
    if (blockIdx.x == 1 && threadIdx.x >= 16) return;
    __syncthreads();
    out[blockIdx.x * 64 + threadIdx.x] = 1.0f;
}

static void early_exit_barrier(void) {
    float *out = dev_alloc<float>(192);
    early_exit_barrier_kernel<<<3, 64>>>(out);
}

// In block (0,2,0), odd and even threads wait at two different barriers.
__global__ void two_barriers_kernel(float *out) {
    if (blockIdx.y == 2 && threadIdx.x % 2) {
        __syncthreads();
    } else {
        __syncthreads();
    }
    out[threadIdx.x] = 1.0f;
}

static void two_barriers(void) {
    float *out = dev_alloc<float>(64);
    two_barriers_kernel<<<dim3(1, 3), 64>>>(out);
}

Test(cuda_emu, divergent_barrier_exit) {
    expect_abort(early_exit_barrier, "divergent __syncthreads", "block (1,0,0)", "early_exit_barrier_kernel");
}

Test(cuda_emu, divergent_barrier_sites) {
    expect_abort(two_barriers, "divergent __syncthreads", "block (0,2,0)", "test_emu.cu");
}

// --- warp collectives naming exited, absent or elsewhere lanes -------------------------------------------------

// In block 2, lanes 16..31 of every warp return; the others shuffle with a full mask.
__global__ void shfl_exited_kernel(float *out) {
    int lane = threadIdx.x % 32;
    if (blockIdx.x == 2 && lane >= 16) return;
    float v = __shfl_xor_sync(FULL, (float)lane, 1);
    out[blockIdx.x * 64 + threadIdx.x] = v;
}

static void shfl_exited(void) {
    float *out = dev_alloc<float>(256);
    shfl_exited_kernel<<<4, 64>>>(out);
}

// In block 1, lanes 16..31 skip the ballot (inactive) and wait at the barrier instead.
__global__ void ballot_inactive_kernel(unsigned *out) {
    int lane = threadIdx.x % 32;
    unsigned b = 0;
    if (blockIdx.x != 1 || lane < 16) b = __ballot_sync(FULL, lane & 1);
    __syncthreads();
    out[blockIdx.x * 32 + threadIdx.x] = b;
}

static void ballot_inactive(void) {
    unsigned *out = dev_alloc<unsigned>(64);
    ballot_inactive_kernel<<<2, 32>>>(out);
}

// 48 threads: the second warp has 16 lanes, but the mask names all 32.
__global__ void shfl_absent_kernel(float *out) { out[threadIdx.x] = __shfl_sync(FULL, 1.0f, 0); }

static void shfl_absent(void) {
    float *out = dev_alloc<float>(48);
    shfl_absent_kernel<<<1, 48>>>(out);
}

// Lane 0 of block 3 reads lane 5 through a mask that names lanes 0..3 only.
__global__ void shfl_outside_mask_kernel(float *out) {
    int lane = threadIdx.x % 32;
    float v = 0.0f;
    if (lane < 4) v = __shfl_sync(0xfu, (float)lane, blockIdx.x == 3 && lane == 0 ? 5 : 1);
    out[blockIdx.x * 32 + lane] = v;
}

static void shfl_outside_mask(void) {
    float *out = dev_alloc<float>(128);
    shfl_outside_mask_kernel<<<4, 32>>>(out);
}

// In block (0,0,1), the two half-warps reach two different shuffles, each with the full mask.
__global__ void shfl_split_kernel(float *out) {
    int lane = threadIdx.x % 32;
    float v = (float)lane;
    if (blockIdx.z == 1 && lane < 16)
        v = __shfl_xor_sync(FULL, v, 1);
    else
        v = __shfl_xor_sync(FULL, v, 2);
    out[threadIdx.x] = v;
}

static void shfl_split(void) {
    float *out = dev_alloc<float>(32);
    shfl_split_kernel<<<dim3(1, 1, 2), 32>>>(out);
}

Test(cuda_emu, shuffle_lanes_disagree) { expect_abort(shfl_split, "disagree", "block (0,0,1)", "test_emu.cu"); }

Test(cuda_emu, shuffle_exited_lanes) {
    expect_abort(shfl_exited, "__shfl_xor_sync", "exited", "block (2,0,0)");
}

Test(cuda_emu, ballot_inactive_lanes) { expect_abort(ballot_inactive, "deadlock", "block (1,0,0)", "__ballot_sync"); }

Test(cuda_emu, shuffle_absent_lanes) { expect_abort(shfl_absent, "__shfl_sync", "do not exist", "block (0,0,0)"); }

Test(cuda_emu, shuffle_outside_mask) { expect_abort(shfl_outside_mask, "reads lane 5", "block (3,0,0)"); }

Test(cuda_emu, partial_mask_ok) { // the same kernel without the bad block: lanes 0..3 exchange, the rest idle
    float *out = dev_alloc<float>(96), h[96];
    shfl_outside_mask_kernel<<<3, 32>>>(out);
    download(h, out, 96);
    for (int i = 0; i < 96; i++) cr_assert_eq(h[i], i % 32 < 4 ? 1.0f : 0.0f);
    cudaFree(out);
}

// --- reads past a device buffer ----------------------------------------------------------------------------

// n + 1 threads read an n-element buffer.
__global__ void global_overread_kernel(float *out, const float *in, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i <= n) out[0] += in[i]; // the bug: <= instead of <
}

static void global_overread(void) {
    int n = 100;
    float *in = dev_filled<float>((size_t)n, 1.0f), *out = dev_filled<float>(1, 0.0f);
    global_overread_kernel<<<1, 128>>>(out, in, n);
}

// One float past the dynamic shared memory the launch asked for.
__global__ void shared_overread_kernel(float *out) {
    extern __shared__ float dyn[];
    dyn[threadIdx.x] = 1.0f;
    __syncthreads();
    out[threadIdx.x] = dyn[threadIdx.x + 1];
}

static void shared_overread(void) {
    float *out = dev_alloc<float>(32);
    shared_overread_kernel<<<1, 32, 32 * sizeof(float)>>>(out);
}

static void expect_asan_overflow(void (*fn)(void), const char *kernel) {
#if EMU_ASAN
    static Outcome o;
    run_child(fn, &o);
    cr_assert(o.signal == SIGABRT || o.exit_code != 0, "the read past the buffer went unnoticed:\n%s", o.err);
    cr_assert(strstr(o.err, "heap-buffer-overflow"), "no AddressSanitizer report:\n%s", o.err);
    cr_assert(strstr(o.err, kernel), "the report does not name %s:\n%s", kernel, o.err);
#else
    (void)fn, (void)kernel;
    cr_skip_test("reads past a buffer are caught in the AddressSanitizer build (./configure.py --sanitize)");
#endif
}

Test(cuda_emu, global_out_of_bounds) { expect_asan_overflow(global_overread, "global_overread_kernel"); }

Test(cuda_emu, shared_out_of_bounds) { expect_asan_overflow(shared_overread, "shared_overread_kernel"); }

// Copies and memsets outside a device allocation fail in every build.
Test(cuda_emu, copies_checked, .init = cr_redirect_stderr) {
    float *d = dev_alloc<float>(10), h[11] = {0};
    cr_assert(cudaMemcpy(d, h, 11 * sizeof(float), cudaMemcpyHostToDevice) == cudaErrorInvalidValue);
    cr_assert(cudaMemcpy(h, d + 5, 6 * sizeof(float), cudaMemcpyDeviceToHost) == cudaErrorInvalidValue);
    cr_assert(cudaMemcpy(h, d, 10 * sizeof(float), cudaMemcpyHostToDevice) == cudaErrorInvalidValue, "wrong way");
    cr_assert(cudaMemsetAsync(d + 1, 0, 10 * sizeof(float), 0) == cudaErrorInvalidValue);
    cr_assert(cudaMemcpy(d, h, 10 * sizeof(float), cudaMemcpyHostToDevice) == cudaSuccess);
    cr_assert(cudaFree(d + 1) == cudaErrorInvalidValue);
    cr_assert(cudaFree(d) == cudaSuccess);
}
