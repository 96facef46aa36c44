// The harness of build/bench --decode-batch (batch.h): the tier-2 model's config, the KV arithmetic of the
// budget, one prompt recorded through the model, and B sequences with their own full fp32 caches filled from
// it and decoded together. Nothing here prints or times; batch.c does.
#include "batch.h"

#include <string.h>

#include "../common/par.h"
#include "../train/presets.h"

ModelConfig batch_model_config(int n_kv_head, int max_context) {
    ModelConfig c = preset_find("baby")->model;
    c.n_head = BATCH_HEADS;
    c.n_kv_head = n_kv_head;
    c.vocab_size = BATCH_VOCAB;
    c.n_hidden = model_default_hidden(c.n_embd);
    c.block_size = max_context;
    return c;
}

size_t batch_kv_bytes_per_seq(const ModelConfig *c, int context) {
    size_t row = 2 * (size_t)model_head_dim(c) * sizeof(float); // one token's key and value in one lane
    return (size_t)c->n_layer * c->n_kv_head * ((size_t)context * row + sizeof(int));
}

int batch_max_batch(double budget_bytes, size_t bytes_per_seq, int cap, int *capped) {
    double fit = bytes_per_seq > 0 ? budget_bytes / (double)bytes_per_seq : 0.0;
    *capped = fit >= (double)cap + 1.0;
    if (*capped) return cap;
    return fit < 1.0 ? 0 : (int)fit;
}

int batch_token(int seq, int step, int vocab) { return (seq * 31 + step * 7 + 3) % vocab; }

int batch_prompt_token(int i, int vocab) { return (int)((unsigned)i * 7919u % (unsigned)vocab); }

// --- the prompt ----------------------------------------------------------------------------------------------

// A store that copies each row's key and value (before RoPE) into the prompt, then lets the cache attend.
typedef struct {
    BatchPrompt *p;
    KVStore inner;
} RecordStore;

static int record_attend(KVStore *st, const Model *m, DecodeState *s, int layer, int row0, int n, char *err) {
    RecordStore *rs = st->ctx;
    BatchPrompt *p = rs->p;
    for (int r = row0; r < row0 + n; r++) {
        size_t at = ((size_t)layer * p->n + s->pos[r]) * p->kv_dim, src = (size_t)r * p->kv_dim;
        memcpy(p->k + at, s->k + src, (size_t)p->kv_dim * sizeof(float));
        memcpy(p->v + at, s->v + src, (size_t)p->kv_dim * sizeof(float));
    }
    return rs->inner.ops->attend(&rs->inner, m, s, layer, row0, n, err);
}

static const KVStoreOps record_ops = {.attend = record_attend};

int batch_prompt_record(BatchPrompt *p, const Model *m, int n, char *err) {
    const ModelConfig *c = &m->cfg;
    CHECK(n >= 1);
    *p = (BatchPrompt){c->n_layer, n, model_kv_dim(c), NULL, NULL};
    p->k = common_calloc((size_t)c->n_layer * n * p->kv_dim, sizeof(float));
    p->v = common_calloc((size_t)c->n_layer * n * p->kv_dim, sizeof(float));
    KVShape shape = decode_kv_shape(c, n);
    KVCache *kv;
    if (kv_full_init(&kv, &shape, err) != 0) return batch_prompt_free(p), -1;
    DecodeState ds;
    decode_state_init(&ds, c, BATCH_PREFILL_ROWS, n);
    DecodeCache dc = {.kv = kv};
    RecordStore rs = {p, decode_store_cache(&dc)};
    KVStore st = {&record_ops, &rs}, *stores[] = {&st};
    int tokens[BATCH_PREFILL_ROWS], pos[BATCH_PREFILL_ROWS], rc = 0;
    for (int t0 = 0; t0 < n && rc == 0; t0 += BATCH_PREFILL_ROWS) { // decode_prefill_cache's chunks
        int rows = n - t0 < BATCH_PREFILL_ROWS ? n - t0 : BATCH_PREFILL_ROWS;
        for (int i = 0; i < rows; i++) tokens[i] = batch_prompt_token(t0 + i, c->vocab_size), pos[i] = t0 + i;
        if (decode_forward(m, &ds, stores, 1, tokens, pos, rows, DECODE_LOGITS_LAST, err) != rows) rc = -1;
    }
    decode_state_free(&ds);
    kv_cache_free(kv);
    if (rc != 0) batch_prompt_free(p);
    return rc;
}

void batch_prompt_free(BatchPrompt *p) {
    common_free(p->k);
    common_free(p->v);
    memset(p, 0, sizeof(*p));
}

// --- B sequences ---------------------------------------------------------------------------------------------

int batch_run_init(BatchRun *r, const Model *m, int B, int context, char *err) {
    CHECK(B >= 1 && context > BATCH_DECODE_STEPS);
    memset(r, 0, sizeof(*r));
    r->m = m, r->B = B, r->context = context;
    r->kv = common_calloc((size_t)B, sizeof(KVCache *));
    r->dc = common_calloc((size_t)B, sizeof(DecodeCache));
    r->st = common_calloc((size_t)B, sizeof(KVStore));
    r->stores = common_calloc((size_t)B, sizeof(KVStore *));
    r->tokens = common_calloc(2 * (size_t)B, sizeof(int));
    r->pos = r->tokens + B;
    KVShape shape = decode_kv_shape(&m->cfg, context);
    for (int b = 0; b < B; b++) {
        if (kv_full_init(&r->kv[b], &shape, err) != 0) return batch_run_free(r), -1;
        r->dc[b] = (DecodeCache){.kv = r->kv[b]};
        r->st[b] = decode_store_cache(&r->dc[b]);
        r->stores[b] = &r->st[b];
    }
    decode_state_init(&r->ds, &m->cfg, B, context);
    return 0;
}

int batch_run_fill(BatchRun *r, const BatchPrompt *p, char *err) {
    int n = r->context - BATCH_DECODE_STEPS, L = p->n_layer, failed = 0;
    CHECK(p->n >= n && p->kv_dim == model_kv_dim(&r->m->cfg) && L == r->m->cfg.n_layer);
#pragma omp parallel for if (par_worth((size_t)r->B * n * p->kv_dim)) schedule(dynamic, 1) reduction(| : failed)
    for (int b = 0; b < r->B; b++) { // caches are independent: one per thread
        kv_cache_reset(r->kv[b]);
        for (int l = 0; l < L; l++)
            for (int t = 0; t < n; t++) {
                size_t at = ((size_t)l * p->n + t) * p->kv_dim;
                failed |= kv_cache_append(r->kv[b], l, t, p->k + at, p->v + at) != 0;
            }
    }
    if (failed) return err_set(err, "a cache of %d positions could not hold the prompt's %d tokens", r->context, n), -1;
    return 0;
}

int batch_run_step(BatchRun *r, int step, char *err) {
    CHECK(step >= 0 && step < BATCH_DECODE_STEPS);
    for (int b = 0; b < r->B; b++) {
        r->tokens[b] = batch_token(b, step, r->m->cfg.vocab_size);
        r->pos[b] = r->context - BATCH_DECODE_STEPS + step;
    }
    int got = decode_forward(r->m, &r->ds, r->stores, r->B, r->tokens, r->pos, r->B, DECODE_LOGITS_ALL, err);
    return got == r->B ? 0 : -1;
}

void batch_run_free(BatchRun *r) {
    for (int b = 0; r->kv && b < r->B; b++)
        if (r->kv[b]) kv_cache_free(r->kv[b]);
    if (r->ds.x) decode_state_free(&r->ds);
    common_free(r->kv), common_free(r->dc), common_free(r->st), common_free(r->stores), common_free(r->tokens);
    memset(r, 0, sizeof(*r));
}
