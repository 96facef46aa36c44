// build/bench --large: the inference paths at the shape of a 135M-parameter Llama-architecture model (SmolLM2
// 135M: width 576, 30 layers, 9 query and 3 key/value heads, hidden 1536, vocabulary 49152, RoPE theta
// 100000), with random weights until a real model can be loaded. Per context length C: the prompt's C - 32
// tokens prefilled in chunks of PREFILL_ROWS rows through decode_forward (matrix products over the chunk,
// attention row by row), then 32 tokens decoded one at a time, through the full fp32 cache and through int4
// and kivi4 caches (the formats decoded inside attention). Speed does not depend on the weights' values.
#include <stdio.h>
#include <string.h>

#include "../common/common.h"
#include "../decode/step.h"
#include "../kv/kv.h"
#include "../kv/spec.h"
#include "../layers/cpu_ops.h"
#include "bench.h"

enum { PREFILL_ROWS = 64, DECODE_TOKENS = BENCH_LARGE_DECODE_TOKENS };

typedef struct {
    const BenchOpts *o;
    const Model *m;
    const char *spec;
    int context;
    double prefill_tps; // of the last measurement
} LargeRow;

static ModelConfig large_config(int context) {
    ModelConfig c = {.vocab_size = 49152, .n_layer = 30, .n_head = 9, .n_kv_head = 3, .n_embd = 576,
                     .n_hidden = 1536, .block_size = context, .rope_theta = 100000.0f, .norm_eps = 1e-5f,
                     .dropout = 0.0f};
    return c;
}

// Prefill then decode through a cache of r->spec; prints one row, returns decode tokens/s.
static double large_measure(void *ctx, const char *load) {
    LargeRow *r = ctx;
    const Model *m = r->m;
    const ModelConfig *mc = &m->cfg;
    char err[ERR_LEN];
    KVSpec spec;
    KVCache *kv;
    KVShape shape = decode_kv_shape(mc, r->context);
    CHECK(kv_spec_parse(&spec, r->spec, err) == 0);
    CHECK(kv_cache_init(&kv, &spec, &shape, err) == 0);
    DecodeState ds;
    decode_state_init(&ds, mc, PREFILL_ROWS, r->context);
    int n_prompt = r->context - DECODE_TOKENS;
    int *tokens = common_calloc((size_t)n_prompt, sizeof(int));
    for (int i = 0; i < n_prompt; i++) tokens[i] = i * 7919 % mc->vocab_size;
    double t0 = common_now();
    CHECK(decode_prefill_cache(m, &ds, kv, tokens, n_prompt, err) == 0);
    double t1 = common_now();
    common_free(tokens);
    for (int t = n_prompt; t < r->context; t++) CHECK(model_decode_step(m, &ds, kv, t % mc->vocab_size, t) == 0);
    double t2 = common_now();
    r->prefill_tps = n_prompt / (t1 - t0);
    double decode_tps = DECODE_TOKENS / (t2 - t1);
    if (r->o->json) {
        printf("{\"bench\": \"large\", \"params\": %zu, \"context\": %d, \"kv\": ", m->n_params, r->context);
        bench_json_string(r->spec);
        printf(", \"prefill_tokens\": %d, \"prefill_tokens_per_s\": %.1f, \"decode_tokens\": %d, "
               "\"decode_tokens_per_s\": %.2f, \"kv_bytes\": %zu, \"load\": \"%s\"}\n",
               n_prompt, r->prefill_tps, DECODE_TOKENS, decode_tps, kv_cache_bytes(kv), load ? load : "quiet");
    } else {
        printf("large  %6.1fM params  context %5d  --kv %-6s  prefill %5d tokens %8.1f tokens/s  decode %2d tokens "
               "%7.2f tokens/s  KV %.1f MiB%s%s\n",
               m->n_params / 1e6, r->context, r->spec, n_prompt, r->prefill_tps, DECODE_TOKENS, decode_tps,
               kv_cache_bytes(kv) / (1024.0 * 1024.0), load ? "  " : "", load ? load : "");
    }
    fflush(stdout);
    decode_state_free(&ds);
    kv_cache_free(kv);
    return decode_tps;
}

int bench_large(const BenchOpts *o) {
    int max_context = 0;
    for (int i = 0; i < o->n_ts; i++) max_context = o->ts[i] > max_context ? o->ts[i] : max_context;
    ModelConfig mc = large_config(max_context);
    Model m;
    model_init(&m, &mc, &ops_cpu);
    model_init_weights(&m, 1);
    const char *specs[] = {"full", "int4", "kivi4"};
    for (int i = 0; i < o->n_ts; i++)
        for (size_t s = 0; s < sizeof specs / sizeof specs[0]; s++) {
            LargeRow r = {o, &m, specs[s], o->ts[i], 0.0};
            double busy;
            bench_quiet_busy(o, large_measure, &r, &busy);
        }
    model_free(&m);
    return 0;
}
