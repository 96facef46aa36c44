// `build/infer score` (old spelling: --eval FILE) and `build/infer kv` (old spelling: --eval FILE --kv SPEC):
// a text file's loss and perplexity through the full forward pass, and the streaming comparison of a KV
// cache against the full cache on that file (kveval.h). A model with a start symbol (tokenizer_bos_id) is
// scored with it first in every window, as it was trained (score_with_bos).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eval.h"
#include "kveval.h"
#include "mode.h"

// The file's tokens (bytes outside the vocabulary skipped and counted in *n_oov); NULL with a message.
static int *score_read_tokens(const Tokenizer *tok, const char *path, size_t *n, size_t *n_oov, char *err) {
    size_t len;
    unsigned char *text = common_read_file(path, &len, err);
    if (!text) return NULL;
    int *ids = common_calloc(len + 1, sizeof(int));
    *n = tokenizer_encode(tok, text, len, ids, n_oov);
    free(text);
    return ids;
}

typedef struct {
    ModeCommon common;
    const char *file;
    int context;
} ScoreOpts;

// Scores the text tokens ids[0..n) (a leading bos, which a BPE's encoding puts there, dropped first) in
// consecutive windows of `window` tokens (0: the model's context; the text bounds it) that each start with the
// start symbol: [bos, x_k .. x_{k+T-2}] predicts x_k .. x_{k+T-1}, so every text token, the first included, is
// scored once. Each window is one eval_tokens call of T + 1 tokens; *out sums them. A character model's text
// that holds byte 0x02 (its start symbol) is refused.
static int score_with_bos(Model *m, const Tokenizer *tok, const char *file, const int *ids, size_t n, int window,
                          EvalResult *out, char *err) {
    int bos = tokenizer_bos_id(tok);
    if (n > 0 && ids[0] == bos) ids++, n--;
    for (size_t i = 0; i < n && !tok->bpe; i++)
        if (ids[i] == bos) {
            err_set(err, "'%s' holds byte 0x02 (STX), the model's start symbol, inside its text", file);
            return -1;
        }
    if (n < 1) {
        err_set(err, "need at least 1 token after the start symbol to score, got 0");
        return -1;
    }
    size_t T = (size_t)(window > 0 ? window : m->cfg.block_size);
    if (n < T) T = n;
    int *buf = common_calloc(T + 1, sizeof(int));
    buf[0] = bos;
    double sum = 0.0;
    EvalResult w = {0};
    int rc = 0;
    for (size_t k = 0; k < n && rc == 0; k += T) {
        size_t t = n - k < T ? n - k : T;
        memcpy(buf + 1, ids + k, t * sizeof(int));
        rc = eval_tokens(m, buf, t + 1, (int)T, EVAL_PATH_AUTO, &w, err);
        sum += w.mean_loss * (double)w.n_scored;
    }
    common_free(buf);
    if (rc != 0) return -1;
    *out = w; // the path and bytes of the windows (the last may be shorter)
    out->n_scored = n;
    out->mean_loss = sum / (double)n;
    out->perplexity = exp(out->mean_loss);
    out->window = (int)T;
    return 0;
}

static int score_run(void *p, char *err) {
    ScoreOpts *o = p;
    if (!o->file) {
        err_set(err, "--eval FILE is required (see build/infer score --help)");
        return -1;
    }
    Model m;
    Tokenizer tok;
    if (mode_load_model(&o->common, 1, &m, &tok, err) != 0) return -1;
    size_t n = 0;
    size_t n_oov = 0;
    int *ids = score_read_tokens(&tok, o->file, &n, &n_oov, err);
    int rc = -1, bos = tokenizer_bos_id(&tok);
    EvalResult r;
    if (ids && n >= 2 &&
        (bos >= 0 ? score_with_bos(&m, &tok, o->file, ids, n, o->context, &r, err)
                  : eval_tokens(&m, ids, n, o->context, EVAL_PATH_AUTO, &r, err)) == 0) {
        printf("eval: %s: %zu tokens scored, loss %.4f, perplexity %.3f\n", o->file, r.n_scored, r.mean_loss,
               r.perplexity);
        if (n_oov) printf("eval: %zu bytes outside the model's vocabulary were skipped\n", n_oov);
        rc = 0;
        if (!isfinite(r.mean_loss)) { // printed above; the exit status must not call it a result
            err_set(err, "the loss of '%s' is not finite (%g): the checkpoint's outputs overflow", o->file,
                    r.mean_loss);
            rc = -1;
        }
    } else if (ids && n < 2) {
        err_set(err, "'%s': %zu usable tokens (%zu bytes outside the vocabulary skipped); need at least 2", o->file,
                n, n_oov);
    }
    common_free(ids);
    model_free(&m);
    tokenizer_free(&tok);
    return rc;
}

static const ModeFlag score_flags[] = {
    MODE_COMMON_FLAGS,
    {"--eval", NULL, MODE_FLAG_STRING, offsetof(ScoreOpts, file), 0, 0, "FILE", "the text to score (required)"},
    {"--context", NULL, MODE_FLAG_INT, offsetof(ScoreOpts, context), 2, MODE_MAX_CONTEXT, "N",
     "tokens per window, at most 65536 (a pretrained model's 8192 is slow on 2 cores)   [model context]"},
    {0},
};

const Mode mode_score = {
    .name = "score",
    .summary = "loss and perplexity of a text file, full forward pass (old spelling: --eval FILE)",
    .usage = "build/infer score --ckpt FILE --eval FILE [--context N]",
    .about = "Scores FILE in consecutive windows of the model's context (--context), or of the whole text when it is shorter\n"
             "(each token but the first is predicted once, from the tokens before it in its window); characters\n"
             "outside the vocabulary are skipped and counted. A model with a start symbol (build/train --bos) sees\n"
             "it first in every window, the first token then scored too. A window whose full forward would need over 1 GiB\n"
             "of activations streams through a full KV cache instead (memory linear in the window); one that\n"
             "cannot fit this machine's memory is refused, naming the size. A loss that is not finite is printed,\n"
             "then exits 1.\n",
    .flags = score_flags,
    .opts_size = sizeof(ScoreOpts),
    .run = score_run,
};

typedef struct {
    ModeCommon common;
    const char *file, *kv, *data, *tokens_out;
    int context, prefill, streams, curve, json, no_reference;
} KvOpts;

static void kv_set_defaults(void *p) {
    KvOpts *o = p;
    o->data = "data/tinyshakespeare.txt";
}

static int kv_run_streams(const Model *m, Tokenizer *tok, const KvOpts *o, const KVSpec *spec, char *err) {
    size_t n = 0;
    int *ids = score_read_tokens(tok, o->file, &n, NULL, err);
    if (!ids) return -1;
    KVEvalConfig kc = {.context = o->context ? o->context : m->cfg.block_size, .curve = o->curve,
                       .tokens_out = o->tokens_out, .no_reference = o->no_reference};
    kc.bos_id = tokenizer_bos_id(tok); // a model with a start symbol sees it first in every stream
    kc.bos = kc.bos_id >= 0;
    size_t skip = kc.bos && n > 0 && ids[0] == kc.bos_id; // a BPE prepends it to the file: once is not every stream
    kc.prefill = o->prefill ? o->prefill : kc.context / 2;
    kc.streams = o->streams ? o->streams : 8;
    Corpus calib; // low-rank bases come from the training corpus, not the text being scored
    int rc = mode_load_calibration(spec, tok, o->data, &calib, err);
    KVEvalResult r;
    if (rc == 0) {
        kc.calib = calib.tokens;
        kc.n_calib = calib.n_train;
        rc = kv_eval_streams(m, spec, ids + skip, n - skip, &kc, &r, err);
        corpus_free(&calib);
    }
    int evaluated = rc == 0;
    if (rc == 0 && o->json) kv_eval_print_json(spec, &kc, &r);
    else if (rc == 0 && kc.no_reference)
        printf("eval: %s --kv=%s alone (no reference): %zu tokens scored (%d streams of %d, scoring after %d): ppl %.4f; "
               "over the scored steps %.0f bytes on average (%.3fx a full fp16 cache), %zu at the peak; prefill %.0f, "
               "decode %.0f tokens/s; peak RSS %zu bytes\n",
               o->file, spec->text, r.tokens, kc.streams, kc.context, kc.prefill, r.ppl, r.kv_bytes_mean,
               r.kv_bytes_mean / r.fp16_full_bytes_mean, r.kv_bytes_peak, r.prefill_tokens_per_s, r.decode_tokens_per_s,
               r.peak_rss_bytes);
    else if (rc == 0)
        printf("eval: %s --kv=%s: %zu tokens scored (%d streams of %d, scoring after %d): ppl %.4f (full cache "
               "%.4f), KL %.3g, top-1 agreement %.4f, KV %zu bytes = %.1f bytes/token (fp16 full: %.1f); over the "
               "scored steps %.0f bytes on average (%.3fx a full fp16 cache), %zu at the peak; decode %.0f tokens/s\n",
               o->file, spec->text, r.tokens, kc.streams, kc.context, kc.prefill, r.ppl, r.ppl_full, r.kl,
               r.top1_agree, r.kv_bytes, r.bytes_per_token, r.fp16_bytes_per_token, r.kv_bytes_mean,
               r.kv_bytes_mean / r.fp16_full_bytes_mean, r.kv_bytes_peak, r.decode_tokens_per_s);
    if (rc == 0 && (!isfinite(r.ppl) || !isfinite(r.ppl_full))) { // printed above, then an error
        err_set(err, "the perplexity of '%s' is not finite (%g through --kv=%s, %g through the full cache): the "
                     "checkpoint's outputs overflow", o->file, r.ppl, spec->text, r.ppl_full);
        rc = -1;
    }
    if (evaluated) kv_eval_result_free(&r);
    common_free(ids);
    return rc;
}

static int kv_run(void *p, char *err) {
    KvOpts *o = p;
    if (!o->file || !o->kv) {
        err_set(err, "kv needs --eval FILE and --kv SPEC (see build/infer kv --help)");
        return -1;
    }
    KVSpec spec;
    if (kv_spec_parse(&spec, o->kv, err) != 0) return -1;
    if (spec.tier_fast) {
        err_set(err, "--kv ...+tier:N applies to the tier mode (--eval tier)");
        return -1;
    }
    if (o->curve && !o->json) {
        err_set(err, "--curve applies to the streaming eval with --json (build/infer kv --eval FILE --kv SPEC --json)");
        return -1;
    }
    if (mode_check_device_spec(&o->common, &spec, err) != 0) return -1;
    Model m;
    Tokenizer tok;
    if (mode_load_model(&o->common, 1, &m, &tok, err) != 0) return -1;
    int rc = kv_run_streams(&m, &tok, o, &spec, err);
    model_free(&m);
    tokenizer_free(&tok);
    return rc;
}

static const ModeFlag kv_flags[] = {
    MODE_COMMON_FLAGS,
    {"--eval", NULL, MODE_FLAG_STRING, offsetof(KvOpts, file), 0, 0, "FILE", "the text to stream (required)"},
    {"--kv", NULL, MODE_FLAG_STRING, offsetof(KvOpts, kv), 0, 0, "SPEC", "the KV cache under test (required)"},
    {"--context", NULL, MODE_FLAG_INT, offsetof(KvOpts, context), 2, MODE_MAX_CONTEXT, "N",
     "tokens per stream, may exceed the trained context, at most 65536   [model context]"},
    {"--prefill", NULL, MODE_FLAG_INT, offsetof(KvOpts, prefill), 1, MODE_MAX_CONTEXT, "N",
     "tokens fed before scoring (SnapKV compresses here)   [context/2]"},
    {"--streams", NULL, MODE_FLAG_INT, offsetof(KvOpts, streams), 1, 1 << 16, "N",
     "streams at evenly spaced offsets of the file, up to 8 in one batched step (same results; tokens/s\n"
     "                         then counts every stream's tokens of a step)   [8]"},
    {"--json", NULL, MODE_FLAG_SWITCH, offsetof(KvOpts, json), 0, 0, NULL, "one JSON object instead of text"},
    {"--curve", NULL, MODE_FLAG_INT, offsetof(KvOpts, curve), 1, KV_EVAL_MAX_CURVE, "N",
     "with --json: perplexity against position in N buckets of the scored positions"},
    {"--data", NULL, MODE_FLAG_STRING, offsetof(KvOpts, data), 0, 0, "FILE",
     "+lowrank:R calibrates on this text's training split   [data/tinyshakespeare.txt]"},
    {"--tokens-out", NULL, MODE_FLAG_STRING, offsetof(KvOpts, tokens_out), 0, 0, "FILE",
     "every scored token's comparison as text: stream position nll nll_full kl agree"},
    {"--no-reference", NULL, MODE_FLAG_SWITCH, offsetof(KvOpts, no_reference), 0, 0, NULL,
     "no lockstep full cache: the time and peak memory of the cache alone (KL 0, top-1 1)"},
    {0},
};

const Mode mode_kv = {
    .name = "kv",
    .summary = "a KV cache against the full cache, streaming over a file (old spelling: --eval FILE --kv SPEC)",
    .usage = "build/infer kv --ckpt FILE --eval FILE --kv SPEC [--context N] [--prefill N] [--streams N] [--json]",
    .about = "--streams streams of --context tokens at evenly spaced offsets of FILE are fed one token at a time\n"
             "through the cache under test and, in lockstep, the full fp32 cache; every token after the first\n"
             "--prefill is predicted through the cache under test. Reports perplexity through both, KL(full ||\n"
             "cache) per token, top-1 agreement, KV bytes held (per token, against a full fp16 cache), prefill\n"
             "and decode tokens/s, peak RSS.\n",
    .flags = kv_flags,
    .opts_size = sizeof(KvOpts),
    .defaults = kv_set_defaults,
    .run = kv_run,
};
