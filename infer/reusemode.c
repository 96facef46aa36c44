// `build/infer reuse` (old spelling: --eval reuse): reuse of a stored request's KV cache across similar
// requests (Sim-LLM's LSH, SemShareKV), run by kvreuse.c over the --data text's validation split.
#include <stdio.h>
#include <string.h>

#include "kvreuse.h"
#include "mode.h"

typedef struct {
    ModeCommon common;
    const char *method, *data;
    int context, streams, radius, json;
    float threshold, min_overlap, deep_keep;
} ReuseOpts;

static void reuse_set_defaults(void *p) {
    ReuseOpts *o = p;
    o->data = "data/tinyshakespeare.txt";
    o->radius = -1;
    o->threshold = -1.0f;
    o->min_overlap = -1.0f;
    o->deep_keep = -1.0f;
}

static void reuse_print_text(const char *method, const KVReuseConfig *cfg, const KVReuseResult *r) {
    printf("reuse --reuse=%s, %d pairs per class of %d tokens:\n", method, cfg->pairs, cfg->context);
    for (int i = 0; i < KV_REUSE_CLASSES; i++) {
        const KVReuseClassResult *c = &r->cls[i];
        printf("  %-9s hits %d/%d, similarity %.3f, compute skipped %.1f%%, first token %.2f ms (full %.2f), "
               "KL %.3g (last) %.3g (gen), top-1 %.3f, greedy match %.3f\n",
               kv_reuse_class_names[i], c->hits, c->pairs, c->sim_mean, 100 * c->flops_skipped, c->ttft_ms,
               c->ttft_full_ms, c->kl_last, c->kl_gen, c->top1, c->greedy_match);
    }
}

static int reuse_run(void *p, char *err) {
    ReuseOpts *o = p;
    if (!o->method || (strcmp(o->method, "lsh") != 0 && strcmp(o->method, "semshare") != 0)) {
        err_set(err, "--eval reuse needs --reuse lsh|semshare");
        return -1;
    }
    if (o->deep_keep >= 0 && strcmp(o->method, "semshare") != 0) {
        err_set(err, "--deep-keep applies to --reuse semshare");
        return -1;
    }
    Model m;
    Tokenizer tok;
    if (mode_load_model(&o->common, 0, &m, &tok, err) != 0) return -1;
    Corpus corpus;
    if (corpus_load(&corpus, &tok, o->data, 0, NULL, err) != 0) {
        model_free(&m);
        tokenizer_free(&tok);
        return -1;
    }
    KVReuseConfig cfg;
    kv_reuse_config_default(&cfg, &m);
    if (o->context) cfg.context = o->context;
    if (o->streams) cfg.pairs = o->streams;
    if (o->threshold >= 0) cfg.store.threshold = o->threshold;
    if (o->deep_keep >= 0) cfg.semshare.deep_keep = o->deep_keep;
    if (o->min_overlap >= 0) cfg.store.min_overlap = o->min_overlap;
    if (o->radius >= 0) cfg.store.radius = o->radius;
    cfg.calib = corpus.tokens; // the centre of the mean embeddings comes from the training split
    cfg.n_calib = corpus.n_train;
    KVReuseResult r;
    int rc = kv_eval_reuse(&m, o->method, corpus.tokens + corpus.n_train, corpus.n_tokens - corpus.n_train, &cfg, &r,
                           err);
    if (rc == 0 && o->json) kv_reuse_print_json(o->method, &cfg, &r);
    else if (rc == 0) reuse_print_text(o->method, &cfg, &r);
    corpus_free(&corpus);
    model_free(&m);
    tokenizer_free(&tok);
    return rc;
}

static const ModeFlag reuse_flags[] = {
    MODE_COMMON_FLAGS,
    {"--reuse", NULL, MODE_FLAG_STRING, offsetof(ReuseOpts, method), 0, 0, "METHOD",
     "lsh (Sim-LLM) | semshare (SemShareKV) (required)"},
    {"--context", NULL, MODE_FLAG_INT, offsetof(ReuseOpts, context), 2, MODE_MAX_CONTEXT, "N",
     "tokens per prompt, at most 65536   [model context]"},
    {"--streams", NULL, MODE_FLAG_INT, offsetof(ReuseOpts, streams), 1, 1 << 16, "N",
     "prompt pairs per similarity class   [8]"},
    {"--threshold", NULL, MODE_FLAG_FLOAT, offsetof(ReuseOpts, threshold), 1e-6, 1, "X",
     "cosine a stored request must reach   [0.8]"},
    {"--radius", NULL, MODE_FLAG_INT, offsetof(ReuseOpts, radius), 0, 64, "N", "LSH buckets within N bits are candidates   [0]"},
    {"--min-overlap", NULL, MODE_FLAG_FLOAT, offsetof(ReuseOpts, min_overlap), 0, 1, "X",
     "share of 4-grams a candidate must hold (0 = off)   [0.5]"},
    {"--deep-keep", NULL, MODE_FLAG_FLOAT, offsetof(ReuseOpts, deep_keep), 1e-6, 1, "X",
     "semshare: the last layer keeps this fraction of the prompt (1 = off)   [1]"},
    {"--json", NULL, MODE_FLAG_SWITCH, offsetof(ReuseOpts, json), 0, 0, NULL, "one JSON object instead of text"},
    {"--data", NULL, MODE_FLAG_STRING, offsetof(ReuseOpts, data), 0, 0, "FILE",
     "the prompts' text (validation split; the training split centres embeddings)   [data/tinyshakespeare.txt]"},
    {0},
};

const Mode mode_reuse = {
    .name = "reuse",
    .summary = "reuse across similar requests, lsh or semshare (old spelling: --eval reuse)",
    .usage = "build/infer reuse --ckpt FILE --reuse lsh|semshare [--context N] [--streams N] [--json]",
    .about = "--streams prompt pairs per similarity class (identical, small edit, reordered halves, unrelated):\n"
             "hits, compute skipped, time to first token, KL / top-1 / greedy match against full recomputation.\n",
    .flags = reuse_flags,
    .opts_size = sizeof(ReuseOpts),
    .defaults = reuse_set_defaults,
    .run = reuse_run,
};
