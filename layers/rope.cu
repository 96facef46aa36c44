// Rotary position embedding on the GPU, bit-identical to rope_forward_cpu / rope_backward_cpu: the angles
// come from the same host function (rope_angle, in double, then rounded to float exactly as the CPU does)
// through a device table of (cos, sin) per (position, pair), and the rotation uses round-to-nearest
// intrinsics so nvcc cannot contract it into FMAs the CPU does not use. The table covers positions
// [0, 2^k) for the current (HD, theta) and is rebuilt (rare: a synchronous upload) when a call needs a
// position past it or another HD/theta; positions too far out for a table of ROPE_TABLE_MAX pairs get a table
// of just [pos0, pos0 + T). One table per process, used only from cuda_stream(); not thread-safe.
#include "../common/cuda_check.cuh"
#include "../common/device.h"
#include "cuda_ops.h"

#include <math.h>

extern "C" double rope_angle(int pos, int i, int HD, float theta); // layers/rope.c (cpu_ops.h is C-only)

#define ROPE_THREADS 256
#define ROPE_TABLE_MAX (1 << 21) // (position, pair) entries: 16 MiB of (cos, sin)

static float2 *g_tab = NULL; // (g_len, HD/2) of (cos, sin) for positions g_pos0 ..
static int g_hd = 0, g_pos0 = 0, g_len = 0;
static float g_theta = 0.0f;

// The table holding positions [pos0, pos0 + T) for (HD, theta); *off receives the row of position pos0.
static const float2 *rope_table(int pos0, int T, int HD, float theta, int *off) {
    int half = HD / 2;
    long long end = (long long)pos0 + T;
    if (!(g_tab && g_hd == HD && g_theta == theta && pos0 >= g_pos0 && end <= (long long)g_pos0 + g_len)) {
        long long len = 64;
        while (len < end) len *= 2;
        int start = 0;
        if (len * half > ROPE_TABLE_MAX) start = pos0, len = T;
        size_t n = (size_t)len * half;
        float2 *h = (float2 *)common_calloc(n, sizeof(float2));
        for (long long p = 0; p < len; p++)
            for (int i = 0; i < half; i++) {
                double ang = rope_angle((int)(start + p), i, HD, theta);
                h[(size_t)p * half + i] = make_float2((float)cos(ang), (float)sin(ang));
            }
        device_free(g_tab); // cudaFree waits for kernels still reading the old table
        g_tab = (float2 *)device_malloc(n * sizeof(float2));
        device_upload(g_tab, h, n * sizeof(float2));
        common_free(h);
        g_hd = HD, g_theta = theta, g_pos0 = start, g_len = (int)len;
    }
    *off = pos0 - g_pos0;
    return g_tab;
}

// One thread per pair (b, t, h, i) of x (B,T,NH,HD); sign +1 rotates by +angle, -1 by -angle.
static __device__ __forceinline__ void rope_rotate_pair(float *x, const float2 *tab, size_t npairs, int T, int NH,
                                                        int half, int off, float sign) {
    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < npairs;
         idx += (size_t)gridDim.x * blockDim.x) {
        int i = (int)(idx % (size_t)half);
        size_t row = idx / (size_t)half;         // (b * T + t) * NH + h
        int t = (int)((row / (size_t)NH) % (size_t)T);
        float2 cs = tab[(size_t)(off + t) * half + i];
        float c = cs.x, s = sign * cs.y;
        float *v = x + row * (size_t)(2 * half) + 2 * i;
        float a = v[0], b = v[1];
        v[0] = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
        v[1] = __fadd_rn(__fmul_rn(a, s), __fmul_rn(b, c));
    }
}

__global__ void rope_forward_kernel(float *x, const float2 *tab, size_t npairs, int T, int NH, int half, int off) {
    rope_rotate_pair(x, tab, npairs, T, NH, half, off, 1.0f);
}

__global__ void rope_backward_kernel(float *dx, const float2 *tab, size_t npairs, int T, int NH, int half, int off) {
    rope_rotate_pair(dx, tab, npairs, T, NH, half, off, -1.0f);
}

static unsigned rope_grid(size_t npairs) {
    unsigned g = cuda_blocks(npairs, ROPE_THREADS);
    return g > (1u << 20) ? (1u << 20) : g; // grid-stride beyond
}

extern "C" void rope_forward_cuda(float *x, int B, int T, int NH, int HD, int pos0, float theta) {
    CHECK(B >= 0 && T >= 0 && NH >= 0 && HD > 0 && HD % 2 == 0 && pos0 >= 0);
    size_t npairs = (size_t)B * T * NH * (HD / 2);
    if (npairs == 0) return;
    int off;
    const float2 *tab = rope_table(pos0, T, HD, theta, &off);
    rope_forward_kernel<<<rope_grid(npairs), ROPE_THREADS, 0, cuda_stream()>>>(x, tab, npairs, T, NH, HD / 2, off);
    CUDA_OP_DONE("rope_forward");
}

extern "C" void rope_backward_cuda(float *dx, int B, int T, int NH, int HD, int pos0, float theta) {
    CHECK(B >= 0 && T >= 0 && NH >= 0 && HD > 0 && HD % 2 == 0 && pos0 >= 0);
    size_t npairs = (size_t)B * T * NH * (HD / 2);
    if (npairs == 0) return;
    int off;
    const float2 *tab = rope_table(pos0, T, HD, theta, &off);
    rope_backward_kernel<<<rope_grid(npairs), ROPE_THREADS, 0, cuda_stream()>>>(dx, tab, npairs, T, NH, HD / 2, off);
    CUDA_OP_DONE("rope_backward");
}
