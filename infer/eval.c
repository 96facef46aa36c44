// Scoring a token sequence in windows, through the full forward or streaming (see eval.h).
#include "eval.h"

#include <math.h>

#include "../decode/step.h"
#include "../kv/kv.h"

// Rows per decode_forward call while streaming: matrix products over a chunk, attention row by row.
enum { EVAL_STREAM_ROWS = 64 };

uint64_t eval_forward_bytes(const ModelConfig *c, int T) {
    return (uint64_t)model_inference_act_bytes(c, 1, T, MODEL_ATTENTION_NAIVE) /* evaluation runs naive */; // what model_alloc_inference_acts(1, T) takes
}

uint64_t eval_stream_bytes(const ModelConfig *c, int T) {
    uint64_t L = (uint64_t)c->n_layer;
    uint64_t C = (uint64_t)c->n_embd;
    uint64_t KVC = (uint64_t)model_kv_dim(c);
    uint64_t H = (uint64_t)c->n_hidden;
    uint64_t V = (uint64_t)c->vocab_size;
    uint64_t NH = (uint64_t)c->n_head;
    uint64_t NKV = (uint64_t)c->n_kv_head;
    uint64_t HD = (uint64_t)model_head_dim(c);
    uint64_t t = (uint64_t)T;
    uint64_t R = EVAL_STREAM_ROWS;
    // the cache: keys and values (and their fp32 views), a score and a position per slot, the RoPE tables
    uint64_t cache = 4 * (L * t * (4 * KVC + 2 * NKV) + t * HD);
    uint64_t state = 4 * (R * (5 * C + 2 * KVC + 3 * H + 1 + V) + NH * t) + 8 * R;
    return cache + state;
}

// exp-normalised loss of one row: log sum exp(logits) - logits[target], in double.
static double eval_row_loss(const float *logits, int V, int target) {
    double mx = logits[0];
    for (int i = 1; i < V; i++)
        if (logits[i] > mx) mx = logits[i];
    double sum = 0.0;
    for (int i = 0; i < V; i++) sum += exp((double)logits[i] - mx);
    return mx + log(sum) - (double)logits[target];
}

// The windows through the decode step over a full cache of T positions; the sum of the losses in *sum.
static int eval_stream(const Model *m, const int *tokens, size_t n, int T, double *sum, char *err) {
    const ModelConfig *c = &m->cfg;
    KVShape shape = decode_kv_shape(c, T);
    KVCache *kv = NULL;
    if (kv_full_init(&kv, &shape, err) != 0) return -1;
    DecodeState ds;
    decode_state_init(&ds, c, EVAL_STREAM_ROWS, T);
    DecodeCache dc = {.kv = kv};
    KVStore st = decode_store_cache(&dc);
    KVStore *stores[] = {&st};
    int pos[EVAL_STREAM_ROWS];
    int rc = 0;
    *sum = 0.0;
    for (size_t start = 0; start + 1 < n && rc == 0; start += (size_t)T) {
        int t = (int)(n - 1 - start < (size_t)T ? n - 1 - start : (size_t)T);
        kv_cache_reset(kv);
        for (int r0 = 0; r0 < t && rc == 0; r0 += EVAL_STREAM_ROWS) {
            int rows = t - r0 < EVAL_STREAM_ROWS ? t - r0 : EVAL_STREAM_ROWS;
            for (int i = 0; i < rows; i++) pos[i] = r0 + i;
            const int *in = tokens + start + (size_t)r0;
            if (decode_forward(m, &ds, stores, 1, in, pos, rows, DECODE_LOGITS_ALL, err) != rows) {
                rc = -1;
                break;
            }
            for (int i = 0; i < rows; i++)
                *sum += eval_row_loss(ds.logits + (size_t)i * c->vocab_size, c->vocab_size, in[i + 1]);
        }
    }
    decode_state_free(&ds);
    kv_cache_free(kv);
    return rc;
}

static void eval_forward(Model *m, const int *tokens, size_t n, int T, double *sum) {
    model_alloc_inference_acts(m, 1, T);
    *sum = 0.0;
    for (size_t start = 0; start + 1 < n; start += (size_t)T) {
        int t = (int)(n - 1 - start < (size_t)T ? n - 1 - start : (size_t)T);
        model_forward(m, tokens + start, tokens + start + 1, 1, t, 0);
        *sum += (double)m->mean_loss * t;
    }
}

int eval_tokens(Model *m, const int *tokens, size_t n, int window, EvalPath path, EvalResult *out, char *err) {
    if (n < 2) {
        err_set(err, "need at least 2 tokens to score, got %zu", n);
        return -1;
    }
    int T = window > 0 ? window : m->cfg.block_size;
    if (n - 1 < (size_t)T) T = (int)(n - 1); // the text bounds the window
    uint64_t forward = eval_forward_bytes(&m->cfg, T);
    int stream = path == EVAL_PATH_STREAM || (path == EVAL_PATH_AUTO && forward > EVAL_FORWARD_MAX_BYTES);
    if (stream && m->ops->on_device) {
        err_set(err, "a window of %d tokens needs %.1f GiB of activations, more than --device cuda scores in one "
                     "pass (%.1f GiB); score on the cpu, which streams long windows",
                T, forward / 1073741824.0, EVAL_FORWARD_MAX_BYTES / 1073741824.0);
        return -1;
    }
    uint64_t need = stream ? eval_stream_bytes(&m->cfg, T) : forward;
    uint64_t phys = common_physical_bytes();
    if (phys && need > phys) {
        err_set(err, "scoring windows of %d tokens needs %.1f GiB (%s), more than this machine's %.1f GiB of memory",
                T, need / 1073741824.0, stream ? "the KV cache and buffers" : "the activations", phys / 1073741824.0);
        return -1;
    }
    double sum = 0.0;
    if (stream && eval_stream(m, tokens, n, T, &sum, err) != 0) return -1;
    if (!stream) eval_forward(m, tokens, n, T, &sum);
    out->n_scored = n - 1;
    out->mean_loss = sum / (double)(n - 1);
    out->perplexity = exp(out->mean_loss);
    out->window = T;
    out->streamed = stream;
    out->bytes = need;
    return 0;
}
