// `build/infer compare-gen`: generation quality under compression. From --prompts prompts of --prompt-len
// tokens at evenly spaced offsets of the --data text's validation split, N tokens are generated greedily
// through the full cache and through the cache under test; reported: where the two texts first diverge
// (mean, median; N when never), the share of positions holding the same token, the KV bytes held against a
// full fp16 cache of the same positions, and, along the compressed greedy path, the streaming metrics: a
// full cache fed the same tokens in lockstep gives KL(full || compressed) and top-1 agreement per step, and
// the perplexity the full cache assigns to the compressed text (path_ppl_full).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "genstream.h"
#include "mode.h"
#include "../decode/sample.h"

typedef struct {
    ModeCommon common;
    const char *kv, *data;
    int prompts, prompt_len, n, json;
} CompareOpts;

typedef struct {
    int prompts, prompt_len, n;
    int *diverge;              // (prompts) first position where the texts differ; n when never
    double diverge_mean, diverge_median;
    int never;                 // prompts whose texts never diverge
    double identical_share;    // positions holding the same token, over prompts * n
    EvalAcc acc;               // compressed vs full logits along the compressed path
    double kv_bytes, fp16_bytes; // means over prompts at the end of generation
} CompareResult;

static void compare_set_defaults(void *p) {
    CompareOpts *o = p;
    o->prompts = 8;
    o->data = "data/tinyshakespeare.txt";
}

static int compare_by_int(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }

// Greedy tokens out[0..n) from a prompt through g; ref (may be NULL) is fed the same tokens in lockstep and
// compared with g at every step into acc.
static int compare_generate(GenStream *g, GenStream *ref, const int *prompt, int P, int n, int *out, EvalAcc *acc,
                            char *err) {
    int V = g->m->cfg.vocab_size;
    if (genstream_start(g, prompt, (size_t)P, err) != 0) return -1;
    if (ref && genstream_start(ref, prompt, (size_t)P, err) != 0) return -1;
    for (int j = 0; j < n; j++) {
        out[j] = sample_argmax(genstream_logits(g), V);
        if (ref) {
            EvalTokenCompare tc;
            evalcore_compare_logits(genstream_logits(ref), genstream_logits(g), V, out[j], &tc);
            evalcore_acc_add(acc, &tc);
        }
        if (j + 1 == n) break;
        if (genstream_feed(g, out[j], err) != 0) return -1;
        if (ref && genstream_feed(ref, out[j], err) != 0) return -1;
    }
    return 0;
}

static int compare_run_prompts(const Model *m, const KVSpec *spec, const Corpus *corpus, const Corpus *calib,
                               CompareResult *r, char *err) {
    const int *val = corpus->tokens + corpus->n_train;
    size_t n_val = corpus->n_tokens - corpus->n_train;
    int P = r->prompt_len;
    int n = r->n;
    if (n_val < (size_t)P) {
        err_set(err, "the validation split has %zu tokens, fewer than --prompt-len %d", n_val, P);
        return -1;
    }
    KVSpec full;
    CHECK(kv_spec_parse(&full, "full", err) == 0);
    GenStream gf = {0};
    GenStream gc = {0};
    GenStream gr = {0};
    size_t cap = (size_t)P + n;
    int rc = genstream_init(&gf, m, &full, cap, NULL, 0, err);
    if (rc == 0) rc = genstream_init(&gc, m, spec, cap, calib->tokens, calib->n_train, err);
    if (rc == 0) rc = genstream_init(&gr, m, &full, cap, NULL, 0, err);
    int *text_full = common_calloc(n, sizeof(int));
    int *text_comp = common_calloc(n, sizeof(int));
    size_t same = 0;
    double fp16_per_token = evalcore_fp16_bytes_per_token(&m->cfg);
    for (int i = 0; i < r->prompts && rc == 0; i++) {
        size_t start = r->prompts > 1 ? (n_val - P) * (size_t)i / (r->prompts - 1) : 0;
        rc = compare_generate(&gf, NULL, val + start, P, n, text_full, NULL, err);
        if (rc == 0) rc = compare_generate(&gc, &gr, val + start, P, n, text_comp, &r->acc, err);
        if (rc != 0) break;
        r->diverge[i] = n;
        for (int j = 0; j < n; j++) {
            if (text_full[j] != text_comp[j] && r->diverge[i] == n) r->diverge[i] = j;
            same += text_full[j] == text_comp[j];
        }
        r->kv_bytes += (double)evalcore_cache_bytes(&gc.cache) / r->prompts;
        r->fp16_bytes += fp16_per_token * gc.pos / r->prompts;
    }
    if (rc == 0) {
        int *sorted = common_calloc(r->prompts, sizeof(int));
        memcpy(sorted, r->diverge, (size_t)r->prompts * sizeof(int));
        qsort(sorted, r->prompts, sizeof(int), compare_by_int);
        double sum = 0.0;
        for (int i = 0; i < r->prompts; i++) {
            sum += sorted[i];
            r->never += sorted[i] == n;
        }
        r->diverge_mean = sum / r->prompts;
        int h = r->prompts / 2;
        r->diverge_median = r->prompts % 2 ? sorted[h] : 0.5 * (sorted[h - 1] + sorted[h]);
        r->identical_share = (double)same / ((double)r->prompts * n);
        common_free(sorted);
    }
    common_free(text_full);
    common_free(text_comp);
    genstream_free(&gf);
    genstream_free(&gc);
    genstream_free(&gr);
    return rc;
}

static void compare_print(const KVSpec *spec, const CompareResult *r, int json) {
    double ratio = r->fp16_bytes > 0 ? r->kv_bytes / r->fp16_bytes : 0.0;
    if (!json) {
        printf("compare-gen --kv=%s: %d prompts of %d tokens, %d generated greedily: first divergence mean %.2f, "
               "median %.1f (%d = never; %d prompts never diverge), identical tokens %.4f; along the compressed "
               "path KL %.3g, top-1 agreement %.4f, perplexity under the full cache %.4f; KV %.0f bytes = %.3f of "
               "fp16 (%.0f)\n",
               spec->text, r->prompts, r->prompt_len, r->n, r->diverge_mean, r->diverge_median, r->n, r->never,
               r->identical_share, evalcore_acc_kl(&r->acc), evalcore_acc_top1(&r->acc),
               evalcore_acc_ppl_full(&r->acc), r->kv_bytes, ratio, r->fp16_bytes);
        return;
    }
    EvalJson j;
    evalcore_json_begin(&j, stdout);
    evalcore_json_str(&j, "spec", spec->text);
    evalcore_json_str(&j, "task", "compare-gen");
    evalcore_json_int(&j, "prompts", r->prompts);
    evalcore_json_int(&j, "prompt_len", r->prompt_len);
    evalcore_json_int(&j, "tokens", r->n);
    evalcore_json_num(&j, "diverge_mean", r->diverge_mean);
    evalcore_json_num(&j, "diverge_median", r->diverge_median);
    evalcore_json_int(&j, "never_diverged", r->never);
    evalcore_json_num(&j, "identical_share", r->identical_share);
    evalcore_json_num(&j, "kl", evalcore_acc_kl(&r->acc));
    evalcore_json_num(&j, "top1_agree", evalcore_acc_top1(&r->acc));
    evalcore_json_num(&j, "path_ppl_full", evalcore_acc_ppl_full(&r->acc));
    evalcore_json_num(&j, "kv_bytes", r->kv_bytes);
    evalcore_json_num(&j, "fp16_bytes", r->fp16_bytes);
    evalcore_json_num(&j, "bytes_ratio", ratio);
    evalcore_json_int_array(&j, "diverge", r->diverge, r->prompts);
    evalcore_json_end(&j);
}

static int compare_run(void *p, char *err) {
    CompareOpts *o = p;
    if (!o->kv) {
        err_set(err, "compare-gen needs --kv SPEC, the cache to compare with the full one");
        return -1;
    }
    KVSpec spec;
    if (kv_spec_parse(&spec, o->kv, err) != 0) return -1;
    if (spec.tier_fast) {
        err_set(err, "--kv ...+tier:N applies to the tier mode (build/infer tier)");
        return -1;
    }
    Model m;
    Tokenizer tok;
    if (mode_load_model(&o->common, 0, &m, &tok, err) != 0) return -1;
    int half = m.cfg.block_size / 2 > 0 ? m.cfg.block_size / 2 : 1;
    CompareResult r = {.prompts = o->prompts, .prompt_len = o->prompt_len ? o->prompt_len : half,
                       .n = o->n ? o->n : half};
    r.diverge = common_calloc(r.prompts, sizeof(int));
    Corpus corpus = {0};
    Corpus calib = {0};
    int loaded = corpus_load(&corpus, &tok, o->data, 0, NULL, err) == 0;
    int rc = loaded ? mode_load_calibration(&spec, &tok, o->data, &calib, err) : -1;
    if (rc == 0) {
        rc = compare_run_prompts(&m, &spec, &corpus, &calib, &r, err);
        corpus_free(&calib);
    }
    if (rc == 0) compare_print(&spec, &r, o->json);
    if (loaded) corpus_free(&corpus);
    common_free(r.diverge);
    model_free(&m);
    tokenizer_free(&tok);
    return rc;
}

static const ModeFlag compare_flags[] = {
    MODE_COMMON_FLAGS,
    {"--kv", NULL, MODE_FLAG_STRING, offsetof(CompareOpts, kv), 0, 0, "SPEC", "the cache compared with the full one (required)"},
    {"--prompts", NULL, MODE_FLAG_INT, offsetof(CompareOpts, prompts), 1, 1 << 16, "N",
     "prompts at evenly spaced offsets of the validation split   [8]"},
    {"--prompt-len", NULL, MODE_FLAG_INT, offsetof(CompareOpts, prompt_len), 1, MODE_MAX_CONTEXT, "P",
     "tokens per prompt, at most 65536   [context/2]"},
    {"--tokens", "-n", MODE_FLAG_INT, offsetof(CompareOpts, n), 1, MODE_MAX_CONTEXT, "N",
     "tokens generated per prompt, at most 65536   [context/2]"},
    {"--json", NULL, MODE_FLAG_SWITCH, offsetof(CompareOpts, json), 0, 0, NULL, "one JSON object instead of text"},
    {"--data", NULL, MODE_FLAG_STRING, offsetof(CompareOpts, data), 0, 0, "FILE",
     "the prompts' text (validation split); +lowrank:R calibrates on its training split   [data/tinyshakespeare.txt]"},
    {0},
};

const Mode mode_compare_gen = {
    .name = "compare-gen",
    .summary = "greedy generation through a KV cache against the full cache: divergence, identity, KL",
    .usage = "build/infer compare-gen --ckpt FILE --kv SPEC [--prompts N] [--prompt-len P] [-n N] [--json]",
    .about = "Generates -n tokens greedily from each prompt through the full cache and through --kv SPEC (both\n"
             "under generate's rule at the trained context). Reports the first divergence of the two texts (mean,\n"
             "median; N = never), the share of identical tokens position by position, and along the compressed\n"
             "path (a full cache fed the same tokens in lockstep): KL(full || compressed), top-1 agreement, the\n"
             "full cache's perplexity of the compressed text; KV bytes against a full fp16 cache.\n",
    .flags = compare_flags,
    .opts_size = sizeof(CompareOpts),
    .defaults = compare_set_defaults,
    .run = compare_run,
};
