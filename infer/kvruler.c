// The retrieval suite through a cache under test (kvruler.h): items of data/ruler.h, each one prefill and the
// steps of its question (query-agnostic) and answers, every answer token checked against the cache's top-1.
#include "kvruler.h"

#include <stdio.h>

#include "../decode/sample.h"
#include "evalcore.h"

// Runs one item through the cache: fills *o, adds the answer steps' bytes to *bytes_sum / *bytes_peak / *steps.
static int ruler_run_item(EvalCache *cache, const Model *m, const RulerItem *it, int agnostic, RulerOutcome *o,
                          double *bytes_sum, size_t *bytes_peak, size_t *steps, char *err) {
    const int *tok = it->tokens;
    int prompt = agnostic ? it->question : it->answer_at[0];
    *o = (RulerOutcome){.prompt_tokens = prompt, .correct = 1};
    if (evalcore_cache_prefill(cache, m, tok, prompt, err) != 0) return -1;
    int end = it->answer_at[it->n_answers - 1] + it->answer_len[it->n_answers - 1], a = 0;
    // the logits after token t predict token t + 1: the last prompt token's are there already
    for (int t = prompt - 1; t < end - 1; t++) {
        if (t >= prompt && evalcore_cache_step(cache, m, tok[t], t, err) != 0) return -1;
        int next = t + 1;
        while (a < it->n_answers && next >= it->answer_at[a] + it->answer_len[a]) a++;
        if (a == it->n_answers || next < it->answer_at[a]) continue; // the question or the link: teacher-forced
        int top = sample_argmax(cache->ds.logits, m->cfg.vocab_size);
        size_t bytes = evalcore_cache_bytes(cache);
        if (o->answer_tokens == 0) o->bytes_first = bytes;
        CHECK(o->answer_tokens < RULER_MAX_ANSWER_TOKENS);
        o->predicted[o->answer_tokens++] = top;
        o->correct &= top == tok[next];
        *bytes_sum += (double)bytes;
        if (bytes > *bytes_peak) *bytes_peak = bytes;
        (*steps)++;
    }
    return 0;
}

int kv_eval_ruler(const Model *m, const KVSpec *spec, const Tokenizer *tok, const Corpus *corpus,
                  const RulerConfig *cfg, RulerResult *out, char *err) {
    if (cfg->items < 1 || cfg->depths < 1 || cfg->depths > RULER_MAX_DEPTHS) {
        err_set(err, "the retrieval suite needs at least one item and 1..%d depths (got %d items, %d depths)",
                RULER_MAX_DEPTHS, cfg->items, cfg->depths);
        return -1;
    }
    if (ruler_check(tok, corpus, cfg->task, cfg->context, err) != 0) return -1;
    EvalCache cache;
    if (evalcore_cache_init(&cache, m, spec, cfg->context, corpus->tokens, corpus->n_train, err) != 0) return -1;
    *out = (RulerResult){.items = cfg->items, .depths = cfg->depths};
    int *tokens = common_calloc((size_t)cfg->context, sizeof(int));
    double bytes_sum = 0, prompt_sum = 0;
    size_t steps = 0;
    int rc = 0;
    double t0 = common_now();
    for (int i = 0; i < cfg->items && rc == 0; i++) {
        RulerItem it;
        ruler_item(tok, corpus, cfg->task, cfg->context, cfg->depths, cfg->seed, i, tokens, &it);
        RulerOutcome o;
        rc = ruler_run_item(&cache, m, &it, cfg->agnostic, &o, &bytes_sum, &out->kv_bytes_peak, &steps, err);
        if (rc != 0) break;
        out->correct += o.correct;
        out->by_depth_correct[it.bucket] += o.correct;
        out->by_depth_n[it.bucket]++;
        prompt_sum += o.prompt_tokens;
        if (cfg->on_item) cfg->on_item(cfg->user, &it, &o);
    }
    out->seconds = common_now() - t0;
    out->kv_bytes_mean = steps ? bytes_sum / (double)steps : 0;
    out->prompt_tokens_mean = prompt_sum / cfg->items;
    out->fp16_bytes_full = evalcore_fp16_bytes_per_token(&m->cfg) * out->prompt_tokens_mean;
    common_free(tokens);
    evalcore_cache_free(&cache);
    return rc;
}

void kv_ruler_print_json(const KVSpec *spec, const RulerConfig *cfg, const RulerResult *r) {
    EvalJson j;
    evalcore_json_begin(&j, stdout);
    evalcore_json_str(&j, "spec", spec->text);
    evalcore_json_str(&j, "task", ruler_task_name(cfg->task));
    evalcore_json_str(&j, "query", cfg->agnostic ? "agnostic" : "aware");
    evalcore_json_int(&j, "context", cfg->context);
    evalcore_json_int(&j, "items", r->items);
    evalcore_json_int(&j, "correct", r->correct);
    evalcore_json_num(&j, "acc", (double)r->correct / r->items);
    // {"0.1": [correct, n], ...}: each depth bucket's centre
    evalcore_json_key(&j, "by_depth");
    fputc('{', j.f);
    for (int b = 0; b < r->depths; b++)
        fprintf(j.f, "%s\"%g\": [%d, %d]", b ? ", " : "", (b + 0.5) / r->depths, r->by_depth_correct[b],
                r->by_depth_n[b]);
    fputc('}', j.f);
    evalcore_json_fmt(&j, "kv_bytes_mean", "%.1f", r->kv_bytes_mean);
    evalcore_json_int(&j, "kv_bytes_peak", (long long)r->kv_bytes_peak);
    evalcore_json_fmt(&j, "fp16_bytes_full", "%.1f", r->fp16_bytes_full);
    evalcore_json_fmt(&j, "prompt_tokens_mean", "%.2f", r->prompt_tokens_mean);
    evalcore_json_fmt(&j, "seconds", "%.3f", r->seconds);
    evalcore_json_end(&j);
}
