// `build/infer generate` (and the old spelling `build/infer --ckpt C --prompt TEXT`): text from a checkpoint
// through any KV cache spec, with the bytes the cache held and the speed on one line of stderr at the end.
// A model with a start symbol (tokenizer_bos_id: STX of a build/train --bos model, a BPE's bos) sees it before
// the prompt, as at position 0 of every training window.
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "genstream.h"
#include "mode.h"
#include "../decode/sample.h"

typedef struct {
    ModeCommon common;
    const char *prompt, *kv, *data, *logits_out;
    int n;
    SampleConfig sc;
    uint64_t seed;
} GenerateOpts;

static void generate_set_defaults(void *p) {
    GenerateOpts *o = p;
    o->n = 200;
    o->sc = (SampleConfig){.temperature = 0.8f, .top_k = 0, .top_p = 1.0f};
    o->seed = 1337;
    o->data = "data/tinyshakespeare.txt";
}

// A character model's prompt must be all in its vocabulary: the first character that is not is named. (A BPE
// encodes anything; a prompt of only bytes it lacks is refused after encoding.)
static int generate_check_prompt(const Tokenizer *tok, const char *prompt, char *err) {
    size_t len = strlen(prompt);
    if (len == 0) {
        err_set(err, "--prompt is empty: give at least one character");
        return -1;
    }
    const char *stx = tok->bpe || tokenizer_bos_id(tok) < 0 ? NULL : memchr(prompt, TOKENIZER_BOS_BYTE, len);
    if (stx) {
        err_set(err, "prompt byte 0x02 (at %ld) is the model's start symbol, which generate puts first itself",
                (long)(stx - prompt));
        return -1;
    }
    long bad = tokenizer_find_oov(tok, (const unsigned char *)prompt, len);
    if (bad < 0) return 0;
    unsigned char ch = (unsigned char)prompt[bad];
    if (ch >= 32 && ch < 127) err_set(err, "prompt character '%c' (byte %ld) is not in the model's vocabulary", ch, bad);
    else err_set(err, "prompt byte 0x%02x (at %ld) is not in the model's vocabulary", ch, bad);
    return -1;
}

// The end-of-run line: tokens and speed, then the bytes the cache held against a full fp16 cache of the
// tokens a full cache would hold now (the stream's positions), the tokens held, and the context rule.
static void generate_report(const GenerateOpts *o, int made, int ended, const KVSpec *spec, const GenStream *g,
                            double seconds) {
    double fp16 = evalcore_fp16_bytes_per_token(&g->m->cfg) * g->pos;
    size_t bytes = evalcore_cache_bytes(&g->cache);
    fprintf(stderr,
            "infer: %d tokens%s in %.2f s (%.1f tokens/s), KV cache %zu bytes; --kv=%s holds %.1f tokens at %d "
            "positions, %.3f of a full fp16 cache (%.0f bytes); prefill %.0f tokens/s, decode %.0f tokens/s; ",
            made, ended ? " (then the end-of-text token)" : "", seconds, seconds > 0 ? made / seconds : 0.0, bytes, spec->text, evalcore_cache_held(&g->cache),
            g->pos, fp16 > 0 ? bytes / fp16 : 0.0, fp16, g->t_prefill > 0 ? g->n_prefill / g->t_prefill : 0.0,
            g->t_decode > 0 ? g->n_decode / g->t_decode : 0.0);
    if (g->streams)
        fprintf(stderr, "streams past the trained context %d (every query within it of its keys)\n", g->context);
    else
        fprintf(stderr, "at the trained context %d, rebuilt from the newest half (positions restart at 0): %d time%s\n",
                g->context, g->rebuilds, g->rebuilds == 1 ? "" : "s");
}

// --logits-out: the V next-token logits after the prompt, float32 little-endian (an oracle compares them).
static int generate_write_logits(const char *path, const float *logits, int V, char *err) {
    FILE *f = fopen(path, "wb");
    if (!f) {
        err_set(err, "cannot write --logits-out '%s': %s", path, strerror(errno));
        return -1;
    }
    size_t put = fwrite(logits, sizeof(float), (size_t)V, f);
    if (fclose(f) != 0 || put != (size_t)V) {
        err_set(err, "cannot write --logits-out '%s': %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

// Writes one token's bytes (a BPE token may be several bytes, or part of a UTF-8 character).
static void generate_put_token(const Tokenizer *tok, int id) {
    size_t len;
    const unsigned char *bytes = tokenizer_token_bytes(tok, id, &len);
    if (bytes) fwrite(bytes, 1, len, stdout);
}

static int generate_stream(const Model *m, const Tokenizer *tok, const GenerateOpts *o, const KVSpec *spec,
                           const Corpus *calib, char *err) {
    size_t plen = strlen(o->prompt);
    int V = m->cfg.vocab_size;
    int *prompt = common_calloc(plen + 2, sizeof(int));
    size_t n_prompt = tokenizer_encode(tok, (const unsigned char *)o->prompt, plen, prompt + 1, NULL);
    int bos = tokenizer_bos_id(tok);
    if (n_prompt == 0 || (n_prompt == 1 && prompt[1] == bos)) {
        common_free(prompt);
        err_set(err, "--prompt has no token the model knows (its bytes are all outside the vocabulary)");
        return -1;
    }
    int *start = prompt + 1;
    if (bos >= 0 && start[0] != bos) { // a BPE's encoding has put its bos first already
        prompt[0] = bos;
        start = prompt;
        n_prompt++;
    }
    GenStream g;
    int rc = genstream_init(&g, m, spec, n_prompt + (size_t)o->n, calib->tokens, calib->n_train, err);
    if (rc == 0) rc = genstream_start(&g, start, n_prompt, err);
    common_free(prompt);
    if (rc == 0 && o->logits_out) rc = generate_write_logits(o->logits_out, genstream_logits(&g), V, err);
    if (rc != 0) {
        genstream_free(&g);
        return -1;
    }
    float *probs = common_calloc(V, sizeof(float));
    int *idx = common_calloc(V, sizeof(int));
    Rng rng;
    rng_init(&rng, o->seed);
    fputs(o->prompt, stdout);
    double t0 = common_now();
    int made = 0, ended = 0;
    for (int i = 0; i < o->n && rc == 0; i++) {
        int next = sample_next(genstream_logits(&g), V, &o->sc, &rng, probs, idx);
        if (tokenizer_ends_text(tok, next)) { // the model ended its text
            ended = 1;
            break;
        }
        made++;
        generate_put_token(tok, next);
        fflush(stdout);
        if (i + 1 < o->n) rc = genstream_feed(&g, next, err);
    }
    double dt = common_now() - t0;
    putchar('\n');
    fflush(stdout);
    if (rc == 0) generate_report(o, made, ended, spec, &g, dt);
    common_free(probs);
    common_free(idx);
    genstream_free(&g);
    return rc;
}

static int generate_run(void *p, char *err) {
    GenerateOpts *o = p;
    if (!o->prompt) {
        err_set(err, "--prompt TEXT is required (see build/infer generate --help)");
        return -1;
    }
    KVSpec spec;
    if (kv_spec_parse(&spec, o->kv ? o->kv : "full", err) != 0) return -1;
    if (spec.tier_fast) {
        err_set(err, "--kv ...+tier:N applies to the tier mode (build/infer tier)");
        return -1;
    }
    if (mode_check_device_spec(&o->common, &spec, err) != 0) return -1;
    Model m;
    Tokenizer tok;
    if (mode_load_model(&o->common, 1, &m, &tok, err) != 0) return -1;
    Corpus calib;
    int rc = generate_check_prompt(&tok, o->prompt, err);
    if (rc == 0) rc = mode_load_calibration(&spec, &tok, o->data, &calib, err);
    if (rc == 0) {
        rc = generate_stream(&m, &tok, o, &spec, &calib, err);
        corpus_free(&calib);
    }
    model_free(&m);
    tokenizer_free(&tok);
    return rc;
}

static const ModeFlag generate_flags[] = {
    MODE_COMMON_FLAGS,
    {"--prompt", NULL, MODE_FLAG_STRING, offsetof(GenerateOpts, prompt), 0, 0, "TEXT",
     "text to continue; with a character model every character must be in its vocabulary (required)"},
    {"--tokens", "-n", MODE_FLAG_INT, offsetof(GenerateOpts, n), 0, GENSTREAM_MAX_TOKENS, "N",
     "tokens to generate, at most 1048576   [200]"},
    {"--temperature", NULL, MODE_FLAG_FLOAT, offsetof(GenerateOpts, sc.temperature), 0, 100, "T",
     "0 = greedy   [0.8]"},
    {"--top-k", NULL, MODE_FLAG_INT, offsetof(GenerateOpts, sc.top_k), 0, 1 << 20, "K",
     "sample among the K most likely (0 = all)   [0]"},
    {"--top-p", NULL, MODE_FLAG_FLOAT, offsetof(GenerateOpts, sc.top_p), 1e-6, 1, "P",
     "nucleus: the smallest set with mass >= P   [1.0]"},
    {"--seed", NULL, MODE_FLAG_U64, offsetof(GenerateOpts, seed), 0, 0, "S", "sampling seed (same seed, same text)   [1337]"},
    {"--kv", NULL, MODE_FLAG_STRING, offsetof(GenerateOpts, kv), 0, 0, "SPEC",
     "KV cache to generate through, any spec (docs/kv.md; build/infer --help lists them)   [full]"},
    {"--data", NULL, MODE_FLAG_STRING, offsetof(GenerateOpts, data), 0, 0, "FILE",
     "+lowrank:R calibrates on this text's training split   [data/tinyshakespeare.txt]"},
    {"--logits-out", NULL, MODE_FLAG_STRING, offsetof(GenerateOpts, logits_out), 0, 0, "FILE",
     "write the next-token logits after the prompt (V float32, little-endian) for an oracle to check"},
    {0},
};

const Mode mode_generate = {
    .name = "generate",
    .summary = "text from a checkpoint through any --kv spec (old spelling: --prompt TEXT)",
    .usage = "build/infer generate --ckpt FILE --prompt TEXT [-n N] [--kv SPEC] [sampling flags]",
    .about = "Prints the prompt and N generated tokens (characters, or BPE tokens of a GGUF model, which stops\n"
             "early at its end-of-text token; a build/train --bos model sees its start symbol before the prompt),\n"
             "then one line on stderr: the KV bytes held against a full fp16 cache of the same positions, the\n"
             "tokens held, prefill and decode tokens/s. RoPE attention\n"
             "never saw a query-key distance of the trained context T or more, so window:W (W <= T),\n"
             "sink:S,window:W (S+W <= T) and window:W+paged:B (W+B <= T) stream on past T; every other cache is\n"
             "rebuilt from the newest T/2 tokens when the stream reaches T positions (as the full cache always\n"
             "was). SnapKV compresses at the end of the prompt; +lowrank:R first fits its bases on --data.\n",
    .flags = generate_flags,
    .opts_size = sizeof(GenerateOpts),
    .defaults = generate_set_defaults,
    .run = generate_run,
};
