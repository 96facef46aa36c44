// build/bench --fragmentation (fragment.c: flags and printing; fragment_run.c: the harness, free of printing so
// that tests/test_bench_frag.c can check it): vLLM's comparison of a paged KV pool against contiguous caches
// that each reserve the maximum length up front, on a workload of requests of varied lengths. The same KV
// budget is given to both; each admits requests first come, first served; reported are the requests held at
// once, the bytes that hold token states against the bytes reserved or allocated, the paged side's waste in
// its last blocks (from the pool's own counters), and the decode throughput of the admitted batch.
#ifndef KVLAB_BENCH_FRAGMENT_H
#define KVLAB_BENCH_FRAGMENT_H

#include <stddef.h>
#include <stdint.h>

#include "../layers/model.h"

enum {
    FRAG_HEADS = 8,        // query (and key/value) heads: the `baby` preset with 8 heads of 16
    FRAG_VOCAB = 65,       // the character vocabulary of tinyshakespeare
    FRAG_MIN_LEN = 16,     // shortest request (prompt + output), in tokens
    FRAG_DECODE_STEPS = 8, // timed decode steps of the admitted batch (after one untimed warm-up step)
    FRAG_RUNS = 5,         // fill-and-decode runs; the median time is reported
};

// The lengths' distribution: log-normal with median max_len / 4 and sigma 0.8 (a long right tail, as
// ShareGPT's prompt + output lengths in the vLLM paper), rounded and clamped to [FRAG_MIN_LEN, max_len].
#define FRAG_LOGNORMAL_SIGMA 0.8
#define FRAG_DISTRIBUTION "log-normal, median max_len/4, sigma 0.8, clamped to [16, max_len]"

// The model of the report's tier 2: the `baby` preset (4 layers, width 128) with 8 heads of 16, vocabulary 65,
// SwiGLU width by Llama's rule, block_size = max_len (RoPE: the weights do not depend on it).
ModelConfig frag_model_config(int max_len);

// Bytes of one token's keys and values over every layer and kv head, fp32 rows.
size_t frag_token_bytes(const ModelConfig *c);

// n request lengths (prompt + output tokens): variable = 1 draws them (FRAG_DISTRIBUTION) from seed,
// variable = 0 sets them all to max_len (the control).
void frag_workload(int *lens, int n, int max_len, uint64_t seed, int variable);

// First come, first served admission, stopping at the first request that does not fit:
// contiguous: every request reserves max_len tokens of token_bytes each; returns how many of the n fit budget.
int frag_admit_contiguous(int n, size_t budget, int max_len, size_t token_bytes);
// The paged pool's blocks in a budget: floor(budget / (block * token_bytes)).
int frag_pool_blocks(size_t budget, int block, size_t token_bytes);
// paged: request i needs ceil(lens[i] / block) blocks; returns how many fit in n_blocks.
int frag_admit_paged(const int *lens, int n, int n_blocks, int block);

// One side's outcome, from its real structures after the admitted requests reached their full lengths.
typedef struct {
    int admitted;
    int64_t tokens;         // token states held
    size_t used_bytes;      // bytes of keys and values holding those states
    size_t reserved_bytes;  // contiguous: the caches' reserved rows; paged: the used blocks' rows
    size_t pool_bytes;      // paged: the pool's rows (n_blocks blocks); contiguous: 0
    int blocks_used, blocks_total; // paged only
    double last_block_waste; // paged: the pool's fragmentation (empty slots of allocated blocks / slots)
    double seconds;         // wall time of the FRAG_DECODE_STEPS timed steps, median of FRAG_RUNS runs (0 when
                            // nothing was admitted)
    float *logits;          // (admitted, vocab): each sequence's logits after its last step (caller frees)
} FragSide;

// The token request i decodes at step s (same on both sides), and the synthetic keys and values of its
// filled positions (a deterministic function of request, layer and position).
int frag_token(int request, int step);

// Contiguous: one full fp32 cache of capacity max_len per admitted request (kv_cache_init through
// kv_full_init), filled to lens[i] - FRAG_DECODE_STEPS - 1 tokens, then one warm-up step and
// FRAG_DECODE_STEPS timed steps of all admitted at once (one decode_forward of `admitted` rows a step), each
// request ending at its full length; FRAG_RUNS times over (reset and refilled). Counts after the last run.
int frag_run_contiguous(const Model *m, const int *lens, int admitted, int max_len, FragSide *out, char *err);
// Paged: a pool of n_blocks blocks of `block` tokens (kv_pool_init, fp32), each admitted request a sequence
// filled and stepped as above (blocks allocated as the sequences grow; every sequence ended between runs, so
// the pool's counters after the last run are those of one run). -1 with a message in err when the pool
// runs out of blocks (admission said they fit: a bug).
int frag_run_paged(const Model *m, const int *lens, int admitted, int max_len, int block, int n_blocks,
                   FragSide *out, char *err);
void frag_side_free(FragSide *s);

// build/bench --fragmentation's whole run (fragment.c): bench.c's main hands it the command line when
// --fragmentation is among the arguments. Returns the exit status (1 with one line on stderr for bad flags).
int bench_fragmentation_main(int argc, char **argv);

#endif
