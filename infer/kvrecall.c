// Long-range recall through a cache under test (kveval.h): recall sequences through evalcore.h's pair (the
// part before the value as a prompt, then the value), each value token checked against both caches' top-1.
#include <stdio.h>

#include "../data/recall.h"
#include "evalcore.h"
#include "kveval.h"
#include "../decode/sample.h"

int kv_eval_recall(const Model *m, const KVSpec *spec, const Tokenizer *tok, const Corpus *corpus, int context,
                   int per_distance, uint64_t seed, KVRecallResult *out, char *err) {
    const ModelConfig *c = &m->cfg;
    if (recall_check_vocab(tok, err) != 0) return -1;
    int lo = recall_min_distance(tok), hi = recall_max_distance(tok, context);
    if (hi < lo || per_distance < 1) {
        err_set(err, "the recall eval needs a context of at least %d tokens (got %d)", context - hi + lo, context);
        return -1;
    }
    if (corpus->n_train <= (size_t)context) {
        err_set(err, "the corpus's training split (%zu tokens) is too short for recall sequences of %d", corpus->n_train,
                context);
        return -1;
    }
    // distances: 16, 32, 64, ... below the longest the context allows, then the longest
    out->n_distances = 0;
    for (int d = 16; d < hi && out->n_distances < KV_RECALL_MAX_DISTANCES - 1; d *= 2)
        if (d >= lo) out->distance[out->n_distances++] = d;
    out->distance[out->n_distances++] = hi;

    EvalPair pair;
    if (evalcore_pair_init(&pair, m, spec, context, corpus->tokens, corpus->n_train, err) != 0) return -1;
    int *seq = common_calloc(context, sizeof(int));
    Rng rng;
    rng_init(&rng, seed);
    size_t hits = 0, hits_full = 0, total = 0, chars = 0, chars_full = 0, answer_tokens = 0;
    int fed = 0; // tokens the last sequence fed
    for (int di = 0; di < out->n_distances; di++) {
        int h = 0, hf = 0;
        for (int i = 0; i < per_distance; i++) {
            int answer_len = 0;
            int ans = recall_sequence(tok, corpus, &rng, context, out->distance[di], seq, NULL, &answer_len);
            // everything before the answer goes in as a prompt (SnapKV compresses at its end); the answer's
            // tokens are then fed one by one, each prediction checked against both caches' top-1
            CHECK(evalcore_cache_prefill(&pair.full, m, seq, ans, err) == 0);
            if (evalcore_cache_prefill(&pair.comp, m, seq, ans, err) != 0) {
                common_free(seq);
                evalcore_pair_free(&pair);
                return -1;
            }
            int ok = 1, ok_full = 1;
            fed = ans + answer_len - 1;
            for (int t = ans - 1; t < fed; t++) {
                if (t >= ans) evalcore_pair_step(&pair, m, seq[t], t);
                int right = sample_argmax(pair.comp.ds.logits, c->vocab_size) == seq[t + 1];
                int right_full = sample_argmax(pair.full.ds.logits, c->vocab_size) == seq[t + 1];
                ok &= right;
                ok_full &= right_full;
                chars += right;
                chars_full += right_full;
            }
            answer_tokens += answer_len;
            h += ok;
            hf += ok_full;
        }
        out->acc[di] = (double)h / per_distance;
        out->acc_full[di] = (double)hf / per_distance;
        hits += h;
        hits_full += hf;
        total += per_distance;
    }
    out->acc_all = (double)hits / total;
    out->acc_all_full = (double)hits_full / total;
    out->char_acc = (double)chars / answer_tokens;
    out->char_acc_full = (double)chars_full / answer_tokens;
    out->kv_bytes = evalcore_cache_bytes(&pair.comp);
    out->bytes_per_token = (double)out->kv_bytes / fed;
    out->fp16_bytes_per_token = evalcore_fp16_bytes_per_token(c);
    out->peak_rss_bytes = evalcore_peak_rss_bytes();
    common_free(seq);
    evalcore_pair_free(&pair);
    return 0;
}

void kv_recall_print_json(const KVSpec *spec, int context, int per_distance, const KVRecallResult *r) {
    EvalJson j;
    evalcore_json_begin(&j, stdout);
    evalcore_json_str(&j, "spec", spec->text);
    evalcore_json_str(&j, "task", "recall");
    evalcore_json_int(&j, "context", context);
    evalcore_json_int(&j, "per_distance", per_distance);
    evalcore_json_num(&j, "recall_acc", r->acc_all);
    evalcore_json_num(&j, "recall_acc_full", r->acc_all_full);
    evalcore_json_num(&j, "recall_char_acc", r->char_acc);
    evalcore_json_num(&j, "recall_char_acc_full", r->char_acc_full);
    evalcore_json_int(&j, "kv_bytes", (long long)r->kv_bytes);
    evalcore_json_num(&j, "bytes_per_token", r->bytes_per_token);
    evalcore_json_num(&j, "fp16_bytes_per_token", r->fp16_bytes_per_token);
    evalcore_json_int(&j, "peak_rss_bytes", (long long)r->peak_rss_bytes);
    evalcore_json_num_map(&j, "recall_acc_by_distance", r->distance, r->acc, r->n_distances);
    evalcore_json_num_map(&j, "recall_acc_full_by_distance", r->distance, r->acc_full, r->n_distances);
    evalcore_json_end(&j);
}
