// The reuse workload (infer/kvreuse.h): pairs of prompts, the first processed in full and stored, the
// second looked up and processed with reuse, both compared with a full recomputation.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../decode/sample.h"
#include "kvreuse.h"

const char *const kv_reuse_class_names[KV_REUSE_CLASSES] = {"identical", "edit", "reorder", "unrelated"};

void kv_reuse_config_default(KVReuseConfig *cfg, const Model *m) {
    *cfg = (KVReuseConfig){.context = m->cfg.block_size, .pairs = 8, .gen = 16, .edits = 4, .lsh_recompute = 1,
                           .seed = 1};
    kv_reuse_store_config_default(&cfg->store);
    kv_semshare_config_default(&cfg->semshare);
}

// --- the workload -------------------------------------------------------------------------------------

// KL(p || q) of the softmaxes of two logit vectors, in nats.
static double kl_logits(const float *p, const float *q, int V) {
    double mp = p[sample_argmax(p, V)], mq = q[sample_argmax(q, V)], zp = 0.0, zq = 0.0, kl = 0.0;
    for (int i = 0; i < V; i++) zp += exp(p[i] - mp), zq += exp(q[i] - mq);
    for (int i = 0; i < V; i++) {
        double lp = p[i] - mp - log(zp), lq = q[i] - mq - log(zq);
        kl += exp(lp) * (lp - lq);
    }
    return fmax(kl, 0.0);
}

// The second prompt of a pair of class cls, from the first (a) and an unrelated window (u).
static void make_second(int cls, const int *a, const int *u, int T, const int *tokens, size_t n, int edits, Rng *rng,
                        int *b) {
    int h = T / 2;
    if (cls == KV_REUSE_REORDER) {
        memcpy(b, a + h, (size_t)(T - h) * sizeof(int));
        memcpy(b + T - h, a, (size_t)h * sizeof(int));
        return;
    }
    memcpy(b, cls == KV_REUSE_UNRELATED ? u : a, (size_t)T * sizeof(int));
    for (int e = 0; cls == KV_REUSE_EDIT && e < edits; e++) { // a token from elsewhere in the text, not the same
        int at = (int)rng_below(rng, (uint64_t)T), tries = 0;
        do b[at] = tokens[rng_below(rng, n)];
        while (b[at] == a[at] && ++tries < 100);
    }
}

int kv_eval_reuse(const Model *m, const char *method, const int *tokens, size_t n, const KVReuseConfig *cfg,
                  KVReuseResult *out, char *err) {
    int lsh = strcmp(method, "lsh") == 0, sem = strcmp(method, "semshare") == 0;
    if (!lsh && !sem) return err_set(err, "bad --reuse '%s': valid methods are lsh, semshare", method), -1;
    int T = cfg->context, P = cfg->pairs, G = cfg->gen, V = m->cfg.vocab_size;
    if (T < 2 || T > 8192) return err_set(err, "--eval reuse: --context must be 2..8192 (got %d)", T), -1;
    if (P < 1 || G < 1 || G > 4096 || cfg->edits < 1 || cfg->edits > T)
        return err_set(err, "--eval reuse: need --streams >= 1, 1..4096 generated tokens and 1..context edits"), -1;
    if (n / (size_t)(5 * P) < (size_t)T)
        return err_set(err, "--eval reuse: the text has %zu tokens, fewer than %d windows of %d need", n, 5 * P, T), -1;
    if (kv_semshare_config_validate(&cfg->semshare, err) != 0) return -1;
    KVReuseStore *store;
    if (decode_reuse_store_init(&store, m, &cfg->store, cfg->calib ? cfg->calib : tokens, cfg->calib ? cfg->n_calib : n,
                            err) != 0)
        return -1;
    int cap = T + G, rc = 0;
    KVReuseWork wf, wr;
    kv_reuse_work_init(&wf, m, cap);
    kv_reuse_work_init(&wr, m, cap);
    float *ref = common_calloc((size_t)G * V, sizeof(float)), *ma = common_calloc(m->cfg.n_embd * 4, sizeof(float));
    float *mb = ma + m->cfg.n_embd, *ra = mb + m->cfg.n_embd, *rb = ra + m->cfg.n_embd;
    int *gen = common_calloc((size_t)G, sizeof(int)), *b = common_calloc((size_t)T, sizeof(int));
    int *map = common_calloc((size_t)T, sizeof(int));
    size_t stride = n / (size_t)(5 * P);
    Rng rng;
    rng_init(&rng, cfg->seed);
    *out = (KVReuseResult){0};
    out->n_layer = m->cfg.n_layer < KV_REUSE_MAX_LAYERS ? m->cfg.n_layer : KV_REUSE_MAX_LAYERS;
    KVReuseCost cost[KV_REUSE_CLASSES] = {{0}};
    for (int p = 0; p < P && rc == 0; p++)
        for (int cls = 0; cls < KV_REUSE_CLASSES && rc == 0; cls++) {
            KVReuseClassResult *r = &out->cls[cls];
            const int *a = tokens + (size_t)(5 * p + cls) * stride, *u = tokens + (size_t)(5 * p + 4) * stride;
            make_second(cls, a, u, T, tokens, n, cfg->edits, &rng, b);
            kv_reuse_embed(store, a, T, 1, ma), kv_reuse_embed(store, b, T, 1, mb);
            kv_reuse_embed(store, a, T, 0, ra), kv_reuse_embed(store, b, T, 0, rb);
            double sim = kv_reuse_cosine(ma, mb, m->cfg.n_embd);
            r->sim_min = r->pairs ? fmin(r->sim_min, sim) : sim;
            r->sim_max = r->pairs ? fmax(r->sim_max, sim) : sim;
            r->sim_mean += sim / P;
            r->raw_sim_mean += kv_reuse_cosine(ra, rb, m->cfg.n_embd) / P;
            r->pairs++;
            kv_reuse_prefill_full(m, &wr, a, T, NULL); // the first request, processed normally and stored
            if ((rc = kv_reuse_insert(store, 0, a, T, wr.k, wr.v, cap, err)) != 0) break;
            double t0 = common_now();
            kv_reuse_prefill_full(m, &wf, b, T, NULL); // the second, recomputed in full: the reference
            r->ttft_full_ms += 1e3 * (common_now() - t0) / P;
            for (int s = 0; s < G; s++) {
                if (s > 0) CHECK(kv_reuse_decode(m, &wf, gen[s - 1]) == 0);
                memcpy(ref + (size_t)s * V, wf.ds.logits, (size_t)V * sizeof(float));
                gen[s] = sample_argmax(wf.ds.logits, V);
            }
            t0 = common_now(); // the second with reuse: lookup, KV loading, the partial prefill, any pruning
            const KVReuseEntry *e = kv_reuse_lookup(store, 0, b, T, NULL);
            if (e && lsh) kv_reuse_prefill_lsh(m, &wr, e, b, T, cfg->lsh_recompute, &cost[cls]);
            else if (e) {
                decode_semshare_map(m, &cfg->semshare, e->tokens, e->n, b, T, map);
                kv_reuse_prefill_semshare(m, &wr, e, map, &cfg->semshare, b, T, &cost[cls]);
            } else kv_reuse_prefill_full(m, &wr, b, T, &cost[cls]);
            r->ttft_ms += 1e3 * (common_now() - t0) / P;
            r->kv_bytes += (double)kv_reuse_work_bytes(m, &wr) / P; // before decode appends to it
            r->kv_bytes_full += (double)T * m->cfg.n_layer * 2 * model_kv_dim(&m->cfg) * sizeof(float) / P;
            for (int l = 0; l < out->n_layer; l++) r->kept[l] += (double)wr.rows[l] / P;
            if (e && sem) {
                int same = 0;
                for (int i = 0; i < T; i++) same += e->tokens[map[i]] == b[i];
                r->same_token += (double)same / T;
            }
            r->hits += e != NULL;
            int agree = 0;
            for (int s = 0; s < G; s++) { // teacher-forced on the reference's greedy tokens
                if (s > 0) CHECK(kv_reuse_decode(m, &wr, gen[s - 1]) == 0);
                double kl = kl_logits(ref + (size_t)s * V, wr.ds.logits, V);
                if (s == 0) r->kl_last += kl / P;
                r->kl_gen += kl / ((double)P * G);
                agree += sample_argmax(wr.ds.logits, V) == gen[s];
            }
            r->top1 += (double)agree / ((double)P * G);
            r->greedy_match += (agree == G) / (double)P;
        }
    for (int cls = 0; cls < KV_REUSE_CLASSES; cls++) {
        KVReuseClassResult *r = &out->cls[cls];
        if (r->hits && sem) r->same_token /= r->hits;
        r->layer_tokens_skipped = 1.0 - (double)cost[cls].layer_tokens / (double)cost[cls].layer_tokens_full;
        r->flops_skipped = 1.0 - cost[cls].flops / cost[cls].flops_full;
    }
    kv_reuse_stats(store, &out->store);
    out->entry_bytes = out->store.entries ? out->store.bytes / out->store.entries : 0;
    common_free(ref), common_free(ma), common_free(gen), common_free(b), common_free(map);
    kv_reuse_work_free(&wf);
    kv_reuse_work_free(&wr);
    kv_reuse_store_free(store);
    return rc;
}

void kv_reuse_print_json(const char *method, const KVReuseConfig *cfg, const KVReuseResult *r) {
    const KVReuseStats *s = &r->store;
    const KVSemShareConfig *sc = &cfg->semshare;
    printf("{\"task\": \"reuse\", \"reuse\": \"%s\", \"context\": %d, \"pairs\": %d, \"gen\": %d, \"edits\": %d, "
           "\"threshold\": %.6g, \"min_overlap\": %.6g, \"planes\": %d, \"radius\": %d, \"lsh_recompute\": %d, "
           "\"semshare\": {\"window\": %d, \"decay\": %.6g, \"pos_weight\": %.6g, \"recompute\": %.6g, "
           "\"layer_decay\": %.6g, \"deep_keep\": %.6g, \"deep_sink\": %d, \"deep_recent\": %d, \"deep_window\": %d}, "
           "\"entry_bytes\": %zu, \"store\": {\"lookups\": %lld, \"hits\": %lld, "
           "\"misses\": %lld, \"rejected\": %lld, \"rejected_overlap\": %lld, \"evictions\": %lld, \"entries\": %d, "
           "\"bytes\": %zu}, \"classes\": {",
           method, cfg->context, cfg->pairs, cfg->gen, cfg->edits, cfg->store.threshold, cfg->store.min_overlap,
           cfg->store.planes, cfg->store.radius, cfg->lsh_recompute, sc->window, sc->decay, sc->pos_weight,
           sc->recompute, sc->layer_decay, sc->deep_keep, sc->deep_sink, sc->deep_recent, sc->deep_window,
           r->entry_bytes, s->lookups, s->hits, s->misses, s->rejected,
           s->rejected_overlap, s->evictions, s->entries, s->bytes);
    for (int i = 0; i < KV_REUSE_CLASSES; i++) {
        const KVReuseClassResult *c = &r->cls[i];
        printf("%s\"%s\": {\"pairs\": %d, \"hits\": %d, \"sim_mean\": %.4f, \"sim_min\": %.4f, \"sim_max\": %.4f, "
               "\"raw_sim_mean\": %.4f, \"same_token\": %.4f, \"layer_tokens_skipped\": %.4f, \"flops_skipped\": %.4f, "
               "\"ttft_ms\": %.4g, \"ttft_full_ms\": %.4g, \"kl_last\": %.4g, \"kl_gen\": %.4g, \"top1\": %.4f, "
               "\"greedy_match\": %.4f, \"kv_bytes\": %.0f, \"kv_bytes_full\": %.0f, \"kv_bytes_kept\": %.4f, "
               "\"kept_per_layer\": [",
               i ? ", " : "", kv_reuse_class_names[i], c->pairs, c->hits, c->sim_mean, c->sim_min, c->sim_max,
               c->raw_sim_mean, c->same_token, c->layer_tokens_skipped, c->flops_skipped, c->ttft_ms, c->ttft_full_ms,
               c->kl_last, c->kl_gen, c->top1, c->greedy_match, c->kv_bytes, c->kv_bytes_full,
               c->kv_bytes_full > 0 ? c->kv_bytes / c->kv_bytes_full : 0.0);
        for (int l = 0; l < r->n_layer; l++) printf("%s%.6g", l ? ", " : "", c->kept[l]);
        printf("]}");
    }
    printf("}}\n");
}
