// build/bench --device cuda's decode rows: single-sequence decode through the device KV cache
// (decode/device_store.h) at long contexts, for fp32, int8 and int4 caches, MHA and GQA. A row fills the cache
// with `context` random rows on the device (no prefill: its time is not what is measured), then times decode
// steps (decode_forward of one token; its logits download waits for the GPU) and reports the median step,
// tokens/s, and the achieved bandwidth: the bytes one step must read (every weight once, and every held key
// and value row of every layer) over its time. --quick: a tiny shape at short contexts, the emulator's
// plumbing check.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/common.h"
#include "../decode/device_store.h"
#include "bench.h"

// One row: a cache of `kv` ("full" = fp32, "int8", "int4") holding `context` tokens, `runs` timed steps after two
// warm-up steps. rows: device (n_kv_head, context, head_dim) random floats. 0, or -1 when logits are not finite.
static int decode_row(const Model *m, const char *kv, const float *rows, int context, int runs, int json) {
    const ModelConfig *c = &m->cfg;
    char err[ERR_LEN];
    KVSpec spec;
    CHECK(kv_spec_parse(&spec, kv, err) == 0);
    KVShape shape = decode_kv_shape(c, context + runs + 2);
    DecodeDevice d;
    CHECK(decode_device_init(&d, m->ops, &spec, &shape, err) == 0);
    decode_device_fill(&d, rows, context);
    DecodeState s;
    decode_state_init_on(&s, c, m->ops, 1, shape.max_positions);
    KVStore st = decode_store_device(&d);
    KVStore *stores[] = {&st};
    double times[64];
    int token = 1, ok = 1;
    for (int i = 0; i < runs + 2; i++) {
        int pos = context + i;
        double t0 = common_now();
        CHECK(decode_forward(m, &s, stores, 1, &token, &pos, 1, DECODE_LOGITS_ALL, err) == 1);
        if (i >= 2) times[i - 2] = common_now() - t0;
        for (int v = 0; v < c->vocab_size; v++) ok = ok && isfinite(s.logits[v]); // all V, outside the timing
    }
    qsort(times, runs, sizeof(double), bench_cmp_double);
    double med = times[runs / 2];
    // a step reads every weight and the rows held when it runs (context + 2 + runs / 2 tokens at the median step)
    double held = context + 2 + runs / 2;
    double kv_bytes = (double)c->n_layer * c->n_kv_head * held * 2.0 * d.row_bytes;
    double w_bytes = (double)m->n_params * sizeof(float), gbps = (kv_bytes + w_bytes) / med / 1e9;
    const char *name = strcmp(kv, "full") == 0 ? "fp32" : kv;
    const char *attn = c->n_kv_head == c->n_head ? "mha" : "gqa";
    if (json)
        printf("{\"bench\": \"cuda_decode\", \"kv\": \"%s\", \"attention\": \"%s\", \"layers\": %d, \"n_head\": %d, "
               "\"n_kv_head\": %d, \"head_dim\": %d, \"context\": %d, \"ms_per_token\": %.4f, \"tokens_per_s\": %.1f, "
               "\"kv_bytes_read\": %.0f, \"weight_bytes_read\": %.0f, \"gb_per_s\": %.2f, \"runs\": %d}\n",
               name, attn, c->n_layer, c->n_head, c->n_kv_head, model_head_dim(c), context, med * 1e3, 1.0 / med,
               kv_bytes, w_bytes, gbps, runs);
    else
        printf("cuda decode %-4s %-3s NH=%-2d NKV=%-2d context %-6d %8.3f ms/token %9.1f tokens/s  reads %7.1f MB KV + "
               "%6.1f MB weights  %8.1f GB/s  (median of %d)\n", name, attn, c->n_head, c->n_kv_head, context,
               med * 1e3, 1.0 / med, kv_bytes / 1e6, w_bytes / 1e6, gbps, runs);
    fflush(stdout);
    decode_state_free(&s);
    decode_device_free(&d);
    return ok ? 0 : -1;
}

int bench_cuda_decode(const Ops *ops, int vocab, const BenchOpts *o) {
    // GPT-2 small's shape (12 layers, 12 heads of 64) on this vocabulary; GQA with 3 kv heads (4 queries each)
    ModelConfig base = {.n_layer = 12, .n_head = 12, .n_embd = 768, .block_size = 1024, .vocab_size = vocab,
                        .rope_theta = 10000.0f, .norm_eps = 1e-5f};
    int contexts[] = {1024, 2048, 4096, 8192, 16384, 32768}, n_ctx = 6, runs = 20, kv_heads[] = {12, 3};
    if (o->quick) { // the emulator: 2 layers of 4 heads of 16, short contexts
        base.n_layer = 2;
        base.n_head = 4;
        base.n_embd = 64;
        base.block_size = 64;
        contexts[0] = 64;
        contexts[1] = 130;
        n_ctx = 2;
        runs = 1;
        kv_heads[0] = 4;
        kv_heads[1] = 2;
    }
    base.n_hidden = model_default_hidden(base.n_embd);
    const char *kvs[] = {"full", "int8", "int4"};
    int rc = 0, max_ctx = contexts[n_ctx - 1], HD = base.n_embd / base.n_head;
    size_t n_rows = (size_t)kv_heads[0] * max_ctx * HD;
    float *h = common_calloc(n_rows, sizeof(float));
    Rng rng;
    rng_init(&rng, 21);
    for (size_t i = 0; i < n_rows; i++) h[i] = rng_normal(&rng);
    float *rows = ops->mem_alloc(n_rows * sizeof(float));
    ops->mem_upload(rows, h, n_rows * sizeof(float));
    common_free(h);
    for (int a = 0; a < 2; a++) {
        ModelConfig mc = base;
        mc.n_kv_head = kv_heads[a];
        Model m = {0};
        model_init(&m, &mc, &ops_cpu);
        model_init_weights(&m, 1);
        model_to_backend(&m, ops);
        for (int k = 0; k < 3; k++)
            for (int i = 0; i < n_ctx; i++)
                if (decode_row(&m, kvs[k], rows, contexts[i], runs, o->json) != 0) {
                    fprintf(stderr, "bench: cuda decode %s at context %d: the logits are not finite\n", kvs[k],
                            contexts[i]);
                    rc = 1;
                }
        model_free(&m);
    }
    ops->mem_free(rows);
    return rc;
}
