// What build/bench's files share (bench.c: flags, training/decode rows; attention.c: naive vs flash; busy.c: the competing
// process; large.c: rows at the shape of a 135M-parameter Llama-architecture model; batch.c and batch_run.c:
// batched decode throughput and the KV budget for MHA, GQA and MQA).
#ifndef KVLAB_BENCH_H
#define KVLAB_BENCH_H

#include <stddef.h>
#include <sys/types.h>

#include "../layers/ops.h"

#define MAX_TS 64
#define MAX_LIST 16 // --decode-batches, --decode-contexts, --decode-kv-heads

typedef struct {
    int json, quick, attention, busy, large;
    const char *attention_flag; // the first --attention-* flag given (an error without --attention)
    int ts[MAX_TS], n_ts;       // sequence lengths (--attention-t, or --large-contexts)
    int M, d, B, NH, NKV, runs;
    int decode_batch;                              // --decode-batch and its lists
    int batches[MAX_LIST], n_batches, contexts[MAX_LIST], n_contexts, kv_heads[MAX_LIST], n_kv_heads;
    int decode_runs, budget_mb;
    const char *device;  // --device: "cuda" runs bench_cuda (cuda.c) instead of the CPU rows
    double peak_tflops;  // --peak-tflops: the GPU's fp32 peak for MFU (0: from cuda.c's table by name)
} BenchOpts;

// A process that spins on the machine's last CPU until busy_stop: the "another job on one core" of issue 13.
// Returns its pid, or -1 (with a line on stderr) when it could not be started.
pid_t busy_start(void);
void busy_stop(pid_t pid);

// Runs measure(ctx) quietly and then (with o->busy) beside a busy process; returns the quiet figure and, in
// *busy_value, the busy one (0 without --busy). measure returns a rate (higher is better).
double bench_quiet_busy(const BenchOpts *o, double (*measure)(void *ctx, const char *load), void *ctx,
                        double *busy_value);

// build/bench --large: prefill and decode at the 135M shape (large.c); each context decodes this many tokens
// after a prompt of the rest.
#define BENCH_LARGE_DECODE_TOKENS 32
int bench_large(const BenchOpts *o);

// build/bench --decode-batch (batch.c): for each kv-head count, batch and context, decode tokens/s of all B
// sequences stepped at once, and the largest batch a KV budget holds.
#define BENCH_DECODE_MAX_BYTES (4.0 * 1024 * 1024 * 1024) // the most KV cache one row may hold
int bench_decode_batch(const BenchOpts *o);

// build/bench --attention (attention.c): naive against flash causal attention for each T of o->ts.
int bench_attention(const BenchOpts *o);

// build/bench --device cuda (cuda.c): training rows (tokens/s, TFLOP/s, MFU; naive and flash attention) at the
// shakespeare preset and GPT-2 small's shape, then attention forward + backward, naive vs flash, T 1k..8k;
// with --quick the tiny preset and T = 64 (the emulator's plumbing check). 1 when no GPU is usable.
int bench_cuda(const BenchOpts *o);

// build/bench --device cuda's decode rows (cuda_decode.c): decode tokens/s and achieved bandwidth through the
// device KV cache, fp32/int8/int4, MHA and GQA, contexts 1k..32k at GPT-2 small's shape (--quick: a tiny shape
// at contexts 64 and 130). ops: the CUDA op table; vocab: the model's vocabulary. 1 when a row's logits are not
// finite.
int bench_cuda_decode(const Ops *ops, int vocab, const BenchOpts *o);

// qsort's comparison for doubles, ascending (medians of timed runs). Inline: the tests compile bench files
// that use it (fragment_run.c) without bench.c.
static inline int bench_cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

// Writes bytes as "12.5 KiB", "3.00 MiB" and so on.
void bench_fmt_bytes(char *buf, size_t n, double bytes);

// Writes s as a JSON string literal.
void bench_json_string(const char *s);

#endif
