// The shared evaluation skeleton (see evalcore.h): one cache handle over the contiguous cache and the paged
// pool, the lockstep pair, the logits comparison and the JSON writer.
#include "evalcore.h"

#include <math.h>
#include <string.h>
#include <sys/resource.h>

#include "../decode/sample.h"

// Rows per decode_forward call when a prompt goes into a contiguous cache (decode_prefill_cache).
enum { EVALCORE_PREFILL_ROWS = 64 };

int evalcore_calibrate_cache(const Model *m, KVCache *kv, const int *tokens, size_t n, char *err) {
    if (!kv_cache_needs_calibration(kv)) return 0;
    const ModelConfig *c = &m->cfg;
    // windows of the model's context, at most EVALCORE_CALIB_MAX_T tokens: a pretrained model's 8k context
    // would make 8 windows of prefill (minutes on 2 cores) and gigabytes of samples
    int T = c->block_size < EVALCORE_CALIB_MAX_T ? c->block_size : EVALCORE_CALIB_MAX_T;
    int HD = model_head_dim(c);
    int windows = (int)(n / T) < 8 ? (int)(n / T) : 8;
    if (windows < 1) {
        err_set(err, "low-rank calibration needs at least %d tokens, got %zu", T, n);
        return -1;
    }
    KVShape shape = decode_kv_shape(c, T);
    shape.keep_prerope = 1;
    KVCache *full;
    if (kv_full_init(&full, &shape, err) != 0) return -1;
    DecodeState ds;
    decode_state_init(&ds, c, EVALCORE_PREFILL_ROWS, T);
    size_t per_lane = (size_t)windows * T * HD;
    float *keys = common_calloc((size_t)c->n_layer * c->n_kv_head * per_lane, sizeof(float));
    float *vals = common_calloc((size_t)c->n_layer * c->n_kv_head * per_lane, sizeof(float));
    for (int w = 0; w < windows; w++) {
        kv_cache_reset(full);
        CHECK(decode_prefill_cache(m, &ds, full, tokens + (size_t)w * T, T, NULL) == 0);
        // the full cache holds fp32 rows, keys before RoPE: copy them out as samples
        for (int l = 0; l < c->n_layer; l++)
            for (int g = 0; g < c->n_kv_head; g++) {
                const KVLane *lane = kv_cache_lane(full, l, g);
                size_t off = (size_t)(l * c->n_kv_head + g) * per_lane + (size_t)w * T * HD;
                memcpy(keys + off, lane->k, (size_t)T * HD * sizeof(float));
                memcpy(vals + off, lane->v, (size_t)T * HD * sizeof(float));
            }
    }
    int rc = 0;
    for (int l = 0; l < c->n_layer && rc == 0; l++)
        for (int g = 0; g < c->n_kv_head && rc == 0; g++) {
            size_t off = (size_t)(l * c->n_kv_head + g) * per_lane;
            rc = kv_lowrank_fit(kv, l, g, keys + off, vals + off, windows * T, err);
        }
    common_free(keys);
    common_free(vals);
    decode_state_free(&ds);
    kv_cache_free(full);
    return rc;
}

// Once per run (the evaluations make many caches of one spec): a budget past every stream was clamped.
static void note_clamped_budget(const KVSpec *spec, int budget, int max_positions) {
    static int noted;
    if (!budget || noted) return;
    fprintf(stderr, "infer: note: --kv '%s' keeps up to %d tokens per layer and head; a stream here holds at most "
            "%d, so that is its budget\n", spec->text, budget, max_positions);
    noted = 1;
}

int evalcore_cache_init(EvalCache *c, const Model *m, const KVSpec *spec, int max_positions, const int *calib,
                        size_t n_calib, char *err) {
    const ModelConfig *mc = &m->cfg;
    KVShape shape = decode_kv_shape(mc, max_positions);
    *c = (EvalCache){.n_layer = mc->n_layer};
    if (m->ops->on_device) { // the device cache: its own specs, its own prompt path (in chunks of rows)
        if (decode_device_check(spec, err) != 0) return -1;
        c->dev = common_calloc(1, sizeof(DecodeDevice));
        if (decode_device_init(c->dev, m->ops, spec, &shape, err) != 0) {
            common_free(c->dev);
            c->dev = NULL;
            return -1;
        }
        note_clamped_budget(spec, decode_device_clamped_budget(c->dev), max_positions);
        c->chunked = 1;
        decode_state_init_on(&c->ds, mc, m->ops, EVALCORE_PREFILL_ROWS, max_positions);
        return 0;
    }
    if (spec->paged_block) { // one sequence: room for a stream, and a block to spare
        int n_blocks = (max_positions + spec->paged_block - 1) / spec->paged_block + 1;
        if (kv_pool_init_spec(&c->pool, &shape, spec, n_blocks, err) != 0) return -1;
        if (kv_paged_policy(&c->seq.policy, spec, err) != 0) {
            kv_pool_free(c->pool);
            c->pool = NULL;
            return -1;
        }
    } else if (kv_cache_init(&c->kv, spec, &shape, err) != 0 ||
               evalcore_calibrate_cache(m, c->kv, calib, n_calib, err) != 0) {
        kv_cache_free(c->kv);
        c->kv = NULL;
        return -1;
    }
    if (c->kv) note_clamped_budget(spec, kv_cache_clamped_budget(c->kv), max_positions);
    c->chunked = !c->pool && !spec->merge_from;
    decode_state_init(&c->ds, mc, c->chunked ? EVALCORE_PREFILL_ROWS : 1, max_positions);
    return 0;
}

int evalcore_cache_init_full(EvalCache *c, const Model *m, int max_positions, char *err) {
    KVSpec full;
    CHECK(kv_spec_parse(&full, "full", err) == 0);
    return evalcore_cache_init(c, m, &full, max_positions, NULL, 0, err);
}

void evalcore_cache_free(EvalCache *c) {
    if (!c->kv && !c->pool && !c->dev) return; // never initialised, or freed
    decode_state_free(&c->ds);
    if (c->dev) {
        decode_device_free(c->dev);
        common_free(c->dev);
    }
    if (c->pool) kv_paged_end(c->pool, &c->seq);
    kv_pool_free(c->pool);
    kv_cache_free(c->kv);
    *c = (EvalCache){0};
}

void evalcore_cache_reset(EvalCache *c, int prefill) {
    if (!c->kv && !c->pool && !c->dev) return; // never initialised (a pair without its reference)
    if (c->dev) {
        decode_device_reset(c->dev);
        return;
    }
    if (c->pool) {
        kv_paged_end(c->pool, &c->seq); // a stream starts empty, keeping the policy
        return;
    }
    kv_cache_reset(c->kv);
    kv_cache_set_prefill(c->kv, prefill);
}

int evalcore_cache_step(EvalCache *c, const Model *m, int token, int pos, char *err) {
    if (c->dev) {
        KVStore st = decode_store_device(c->dev);
        KVStore *stores[] = {&st};
        return decode_forward(m, &c->ds, stores, 1, &token, &pos, 1, DECODE_LOGITS_ALL, err) < 0 ? -1 : 0;
    }
    if (c->pool) return model_decode_step_paged(m, &c->ds, c->pool, &c->seq, token, pos, err);
    if (model_decode_step(m, &c->ds, c->kv, token, pos) != 0) {
        err_set(err, "the KV cache has no room for position %d", pos);
        return -1;
    }
    return 0;
}

int evalcore_cache_prefill(EvalCache *c, const Model *m, const int *tokens, int n, char *err) {
    evalcore_cache_reset(c, n);
    int start = 0;
    if (c->pool) {
        start = kv_paged_begin(c->pool, &c->seq, tokens, n, KV_PRIORITY_DEFAULT, err);
        if (start < 0) return -1;
    }
    if (c->dev) return decode_prefill_device(m, &c->ds, c->dev, tokens, n, err);
    if (c->chunked) {
        return decode_prefill_cache(m, &c->ds, c->kv, tokens, n, err); // the store names a position it cannot hold
    }
    // a paged sequence's policy runs once per step (step_end), minicache's pairs fill in lockstep: token by token
    for (int t = start; t < n; t++)
        if (evalcore_cache_step(c, m, tokens[t], t, err) != 0) return -1;
    return 0;
}

KVStore evalcore_cache_store(EvalCache *c, EvalStoreSlot *slot) {
    if (c->dev) return decode_store_device(c->dev);
    if (c->pool) {
        slot->paged = (DecodePaged){c->pool, &c->seq};
        return decode_store_paged(&slot->paged);
    }
    slot->cache = (DecodeCache){.kv = c->kv};
    return decode_store_cache(&slot->cache);
}

int evalcore_caches_step(EvalCache *const *caches, int n, const Model *m, DecodeState *ds, const int *tokens,
                         const int *pos, char *err) {
    CHECK(n >= 1 && n <= ds->max_rows);
    EvalStoreSlot slots[n];
    KVStore st[n], *stores[n];
    for (int i = 0; i < n; i++) {
        st[i] = evalcore_cache_store(caches[i], &slots[i]);
        stores[i] = &st[i];
    }
    return decode_forward(m, ds, stores, n, tokens, pos, n, DECODE_LOGITS_ALL, err) == n ? 0 : -1;
}

size_t evalcore_cache_bytes(const EvalCache *c) {
    if (c->dev) return decode_device_bytes(c->dev);
    if (!c->pool) return kv_cache_bytes(c->kv);
    int blocks = kv_paged_blocks(&c->seq);
    int held = 0;
    for (int i = 0; i < blocks; i++) held += c->seq.table[i] != KV_BLOCK_DROPPED;
    const KVPool *p = c->pool;
    size_t block_bytes = 2 * (size_t)p->n_layer * p->n_kv_head * p->block * p->row_bytes;
    return (size_t)held * block_bytes + (size_t)blocks * (sizeof(int) + sizeof(float));
}

double evalcore_cache_held(const EvalCache *c) {
    if (c->pool) return kv_paged_held(c->pool, &c->seq);
    double sum = 0.0;
    for (int l = 0; l < c->n_layer; l++) sum += c->dev ? decode_device_tokens(c->dev, l) : kv_cache_tokens(c->kv, l);
    return sum / c->n_layer;
}

int evalcore_pair_init(EvalPair *p, const Model *m, const KVSpec *spec, int context, const int *calib,
                       size_t n_calib, char *err) {
    *p = (EvalPair){0};
    if (evalcore_cache_init_full(&p->full, m, context, err) != 0) return -1;
    if (evalcore_cache_init(&p->comp, m, spec, context, calib, n_calib, err) != 0) {
        evalcore_cache_free(&p->full);
        return -1;
    }
    return 0;
}

void evalcore_pair_free(EvalPair *p) {
    evalcore_cache_free(&p->full);
    evalcore_cache_free(&p->comp);
}

void evalcore_pair_reset(EvalPair *p, int prefill) {
    evalcore_cache_reset(&p->full, 0);
    evalcore_cache_reset(&p->comp, prefill);
}

void evalcore_pair_step(EvalPair *p, const Model *m, int token, int pos) {
    char err[ERR_LEN];
    CHECK(evalcore_cache_step(&p->full, m, token, pos, err) == 0);
    CHECK(evalcore_cache_step(&p->comp, m, token, pos, err) == 0);
}

// The arithmetic is the streaming eval's since its first release (float differences, double sums, in index
// order): its published numbers depend on it.
void evalcore_compare_logits(const float *a, const float *b, int V, int y, EvalTokenCompare *out) {
    int arg_a = sample_argmax(a, V);
    int arg_b = sample_argmax(b, V);
    float ma = a[arg_a];
    float mb = b[arg_b];
    double za = 0.0;
    double zb = 0.0;
    for (int i = 0; i < V; i++) {
        za += exp(a[i] - ma);
        zb += exp(b[i] - mb);
    }
    double lza = log(za);
    double lzb = log(zb);
    double k = 0.0;
    for (int i = 0; i < V; i++) {
        double la = a[i] - ma - lza;
        double lb = b[i] - mb - lzb;
        k += exp(la) * (la - lb);
    }
    out->kl = k;
    out->top1 = arg_b;
    out->top1_full = arg_a;
    out->nll = y >= 0 ? -(b[y] - mb - lzb) : 0.0;
    out->nll_full = y >= 0 ? -(a[y] - ma - lza) : 0.0;
}

void evalcore_acc_add(EvalAcc *a, const EvalTokenCompare *t) {
    a->nll += t->nll;
    a->nll_full += t->nll_full;
    a->kl += t->kl;
    a->agree += t->top1 == t->top1_full;
    a->scored++;
}

double evalcore_acc_ppl(const EvalAcc *a) { return exp(a->nll / a->scored); }
double evalcore_acc_ppl_full(const EvalAcc *a) { return exp(a->nll_full / a->scored); }
double evalcore_acc_kl(const EvalAcc *a) { return a->kl / a->scored; }
double evalcore_acc_top1(const EvalAcc *a) { return (double)a->agree / a->scored; }

double evalcore_fp16_bytes_per_token(const ModelConfig *c) { return (double)c->n_layer * 2 * model_kv_dim(c) * 2; }

size_t evalcore_peak_rss_bytes(void) {
    struct rusage ru;
    return getrusage(RUSAGE_SELF, &ru) == 0 ? (size_t)ru.ru_maxrss * 1024 : 0;
}

// ---- JSON ------------------------------------------------------------------------------------------------

static void json_put_string(FILE *f, const char *s) {
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') fprintf(f, "\\%c", *p);
        else if (*p < 0x20) fprintf(f, "\\u%04x", *p);
        else fputc(*p, f);
    }
    fputc('"', f);
}

static void json_put_key(EvalJson *j, const char *key) {
    if (j->fields++) fputs(", ", j->f);
    json_put_string(j->f, key);
    fputs(": ", j->f);
}

void evalcore_json_key(EvalJson *j, const char *key) { json_put_key(j, key); }

void evalcore_json_begin(EvalJson *j, FILE *f) {
    j->f = f;
    j->fields = 0;
    fputc('{', f);
}

void evalcore_json_end(EvalJson *j) { fputs("}\n", j->f); }

void evalcore_json_str(EvalJson *j, const char *key, const char *value) {
    json_put_key(j, key);
    json_put_string(j->f, value);
}

void evalcore_json_int(EvalJson *j, const char *key, long long value) {
    json_put_key(j, key);
    fprintf(j->f, "%lld", value);
}

void evalcore_json_num(EvalJson *j, const char *key, double value) { evalcore_json_fmt(j, key, "%.6g", value); }

// A number, or null where it is not finite (JSON has no nan or inf).
static void json_put_num(FILE *f, const char *fmt, double value) {
    if (isfinite(value)) fprintf(f, fmt, value);
    else fputs("null", f);
}

void evalcore_json_fmt(EvalJson *j, const char *key, const char *fmt, double value) {
    json_put_key(j, key);
    json_put_num(j->f, fmt, value);
}

void evalcore_json_int_array(EvalJson *j, const char *key, const int *v, int n) {
    json_put_key(j, key);
    fputc('[', j->f);
    for (int i = 0; i < n; i++) fprintf(j->f, "%s%d", i ? ", " : "", v[i]);
    fputc(']', j->f);
}

void evalcore_json_num_array(EvalJson *j, const char *key, const double *v, int n) {
    json_put_key(j, key);
    fputc('[', j->f);
    for (int i = 0; i < n; i++) {
        if (i) fputs(", ", j->f);
        json_put_num(j->f, "%.6g", v[i]);
    }
    fputc(']', j->f);
}

void evalcore_json_num_map(EvalJson *j, const char *key, const int *keys, const double *v, int n) {
    json_put_key(j, key);
    fputc('{', j->f);
    for (int i = 0; i < n; i++) {
        fprintf(j->f, "%s\"%d\": ", i ? ", " : "", keys[i]);
        json_put_num(j->f, "%.6g", v[i]);
    }
    fputc('}', j->f);
}
