// FlashAttention's forward and backward on the CPU (the backward: the op table's training path, layers/ops.h),
// and the naive attention_forward_cpu with IO counting, so the two
// can be compared the way the FlashAttention paper (Dao et al. 2022) compares them: bytes moved between "slow
// memory" (HBM on a GPU; DRAM here) and an on-chip budget of M floats (SRAM; here: cache-sized tiles).
//
// Both ops are causal and take the layout of attention_forward_cpu: q (B,T,NH,HD), k and v (B,T,NKV,HD),
// query head h reads kv head h / (NH / NKV) (MHA, GQA, MQA), scale 1/sqrt(HD), out (B,T,NH,HD) overwritten.
//
// Counting (AttnIO): pass a struct to count, NULL for none (the hot loops then do no counting at all). The
// counters are incremented where the code loads or stores a tile / matrix, not computed from a formula; the
// closed forms of the IO analysis are separate functions below so a benchmark can print both side by side.
#ifndef KVLAB_FLASH_CPU_H
#define KVLAB_FLASH_CPU_H

#include <stdint.h>

// The default on-chip budget in floats: 16384 floats = 64 KiB, a GPU SM's SRAM budget scaled down to the size
// of a CPU core's L1/L2 working set. With HD = 64 it gives Br = Bc = 64 (the paper's M = 4 d^2 point).
#define FLASH_DEFAULT_M 16384

// Tile sizes. M is the on-chip budget in floats; Br / Bc = 0 derive them from M as in the paper's Algorithm 1:
// Bc = ceil(M / (4 HD)), Br = min(Bc, HD). A non-zero Br or Bc overrides that one size.
typedef struct {
    int M;
    int Br; // query rows per tile
    int Bc; // key / value rows per tile
} FlashTiles;

// Resolves cfg (NULL: M = FLASH_DEFAULT_M, sizes from M) for head dimension HD into *Br, *Bc (both >= 1).
void flash_tiles_resolve(const FlashTiles *cfg, int HD, int *Br, int *Bc);

// Slow-memory traffic in bytes, by what moved, plus the memory each op allocates for intermediates. Every
// field ADDS to what is there (zero the struct first; several calls accumulate).
typedef struct {
    uint64_t q_load, k_load, v_load;  // reads of the inputs
    uint64_t o_load, o_store;         // the output (flash's loop order keeps O_i on chip: o_load stays 0)
    uint64_t stat_load, stat_store;   // softmax statistics: m_i, l_i loads (0 here), the lse row written
    uint64_t s_store, s_load;         // naive: the (T, T) scores S written by Q K^T, read by the softmax
    uint64_t p_store, p_load;         // naive: the probabilities P written by the softmax, read by P V
    uint64_t intermediate_bytes;      // bytes allocated / required for intermediates (T x T, or tiles)
} AttnIO;

uint64_t attn_io_read_bytes(const AttnIO *io);
uint64_t attn_io_write_bytes(const AttnIO *io);
uint64_t attn_io_total_bytes(const AttnIO *io); // read + write
// Adds src's counts to dst (a thread folds its own counts in once, under a critical section).
void attn_io_add(AttnIO *dst, const AttnIO *src);

// Causal FlashAttention forward (FlashAttention-2 loop order): per (batch, head) and query tile Q_i of Br rows,
// loop over the key/value tiles K_j, V_j of Bc rows that the causal mask does not fully hide, keeping the
// running max m_i, running sum l_i and the rescaled accumulator O_i on chip (online softmax), then write O_i
// and lse_i once. Never materialises (T, T). lse (B,NH,T) receives log sum_{s<=t} exp(scale q_t . k_s) (what a
// backward pass needs). tiles: NULL for the defaults. Parallel over batch x query heads; each thread allocates
// its own tile workspace (io->intermediate_bytes adds every thread's).
void attention_flash_forward_cpu(float *out, float *lse, const float *q, const float *k, const float *v, int B,
                                 int T, int NH, int NKV, int HD, const FlashTiles *tiles, AttnIO *io);

// Backward of attention_flash_forward_cpu from its saved out and lse (FlashAttention-2's Algorithm 2): per
// (batch, kv head) and key tile K_j, V_j, every query tile of the group's heads at or below the diagonal
// recomputes P = exp(scale Q K^T - lse), then dV += P^T dO, dS = P o (dO V^T - rowsum(dO o O)), dQ += scale dS K,
// dK += scale dS^T Q. dq (B,T,NH,HD), dk and dv (B,T,NKV,HD) ACCUMULATE (+=). Never materialises (T, T);
// allocates a (B,NH,T) float array for rowsum(dO o O) and per-thread tiles. Parallel over batch x kv heads
// (each thread owns its kv head's dK, dV and its query heads' dQ: deterministic).
void attention_flash_backward_cpu(float *dq, float *dk, float *dv, const float *dout, const float *out,
                                  const float *lse, const float *q, const float *k, const float *v, int B, int T,
                                  int NH, int NKV, int HD, const FlashTiles *tiles);

// attention_forward_cpu (attention/attention.c: it is that op, which calls it with io NULL), with the paper's
// Algorithm 0 traffic counted where it happens, block by causal block (query rows in blocks, each against the
// keys it can see): S = Q K^T reads the block's Q rows and the visible K rows and writes that block of S; the
// softmax reads each row of S (the causal part it looks at) and writes the whole row of P in place (zeros above
// the diagonal); O = P V reads that block of P and the visible V rows and writes O. att is the caller's
// (B,NH,T,T) buffer; io->intermediate_bytes adds its size.
void attention_forward_counted_cpu(float *out, float *att, const float *q, const float *k, const float *v, int B,
                                   int T, int NH, int NKV, int HD, AttnIO *io);

// Closed forms of the IO analysis (dense, no causal savings), in bytes of float32, for B x NH heads:
//   naive, the paper's Standard Attention (Algorithm 0): read Q, K (2Td), write S (T^2), read S (T^2), write P
//     (T^2), read P and V (T^2 + Td), write O (Td): 4Td + 4T^2 floats per head = Theta(Td + T^2).
//   flash, this loop order: Q read once (Td), K and V read once per query tile (2Td Tr, Tr = ceil(T/Br)), O
//     and lse written once (Td + T): 2Td + 2Td Tr + T floats per head = Theta(T^2 d / Br), which with
//     Br = M/(4d) (whenever M <= 4 d^2) is the paper's Theta(T^2 d^2 / M).
// The causal code skips the tiles above the diagonal, so flash measures about (Tr + 1) / (2 Tr) of its dense
// form in K/V traffic; naive skips the blocks of S above the diagonal likewise (it computes about half of S,
// reads K and V once per query block) but still writes every row of P whole.
uint64_t attention_naive_io_formula(int B, int T, int NH, int HD);
uint64_t attention_flash_io_formula(int B, int T, int NH, int HD, int Br);

#endif
