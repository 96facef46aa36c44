// Token embedding lookup on the GPU. The backward pass must add every position's gradient into its token's
// row of dwte, and several positions share a token. Float atomics would make the sum order (and so the bits)
// change from run to run, so instead each token's FIRST position (its "leader") owns the row: one warp per
// (position, 32 channels) checks whether an earlier position holds the same token (ballot over tiles of 32
// tokens, early exit) and, if not, walks the later positions in order, adding their gradients to the row.
// The order is the CPU's (ascending position), so the result is deterministic and bit-identical to
// encoder_backward_cpu. Cost (warp steps, per 32 channels): sum over positions i of (distance to the first
// earlier duplicate)/32 for the leader check, plus distinct tokens * (B*T)/32 for the walks; worst case (all
// tokens distinct) (B*T)^2/32, e.g. 2M warp steps per 32 channels at B*T = 8192. With kvlab's byte-level
// vocabularies (<= 256 symbols) the walks dominate and stay far below the matmuls.
#include "../common/cuda_check.cuh"
#include "cuda_ops.h"

#define ENC_THREADS 256
#define ENC_WARPS 4 // positions per block in the backward pass

__global__ void encoder_forward_kernel(float *__restrict__ out, const int *__restrict__ tokens,
                                       const float *__restrict__ wte, size_t n, int C) {
    // out (B*T, C), one thread per element, grid-stride
    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < n; idx += (size_t)gridDim.x * blockDim.x) {
        size_t i = idx / (size_t)C, c = idx % (size_t)C;
        out[idx] = wte[(size_t)tokens[i] * C + c];
    }
}

// grid (ceil(BT / ENC_WARPS), ceil(C / 32)), block (32, ENC_WARPS): warp y of block x is position i, lanes are
// channels c = 32 * blockIdx.y + lane. Every lane of a warp takes part in each ballot (so none may return
// early on its own); only lanes with c < C touch memory in dwte/dout.
__global__ void encoder_backward_kernel(float *__restrict__ dwte, const float *__restrict__ dout,
                                        const int *__restrict__ tokens, int BT, int C) {
    int lane = threadIdx.x;
    int i = blockIdx.x * ENC_WARPS + threadIdx.y;
    if (i >= BT) return; // uniform over the warp
    int c = blockIdx.y * 32 + lane;
    int tok = tokens[i];
    // leader check: is there j < i with tokens[j] == tok?
    for (int base = 0; base < i; base += 32) {
        int j = base + lane;
        int hit = j < i && tokens[j] == tok;
        if (__ballot_sync(0xffffffffu, hit)) return; // uniform: the ballot is the same in every lane
    }
    // leader: row += dout[j] for every j >= i holding tok, in ascending j (the CPU's order)
    float acc = c < C ? dwte[(size_t)tok * C + c] : 0.0f;
    for (int base = i; base < BT; base += 32) {
        int j = base + lane;
        unsigned m = __ballot_sync(0xffffffffu, j < BT && tokens[j] == tok);
        while (m) {
            int k = __ffs(m) - 1;
            m &= m - 1;
            if (c < C) acc += dout[(size_t)(base + k) * C + c];
        }
    }
    if (c < C) dwte[(size_t)tok * C + c] = acc;
}

extern "C" void encoder_forward_cuda(float *out, const int *tokens, const float *wte, int B, int T, int C) {
    CHECK(B >= 0 && T >= 0 && C >= 0);
    size_t n = (size_t)B * T * C;
    if (n == 0) return;
    unsigned grid = cuda_blocks(n, ENC_THREADS);
    if (grid > 65536u * 16) grid = 65536u * 16; // grid-stride beyond this
    encoder_forward_kernel<<<grid, ENC_THREADS, 0, cuda_stream()>>>(out, tokens, wte, n, C);
    CUDA_OP_DONE("encoder_forward");
}

extern "C" void encoder_backward_cuda(float *dwte, const float *dout, const int *tokens, int B, int T, int C) {
    CHECK(B >= 0 && T >= 0 && C >= 0);
    int BT = B * T;
    if (BT == 0 || C == 0) return;
    unsigned cchunks = (unsigned)((C + 31) / 32);
    CHECK(cchunks <= 65535u);
    dim3 grid(cuda_blocks((size_t)BT, ENC_WARPS), cchunks), block(32, ENC_WARPS);
    encoder_backward_kernel<<<grid, block, 0, cuda_stream()>>>(dwte, dout, tokens, BT, C);
    CUDA_OP_DONE("encoder_backward");
}
