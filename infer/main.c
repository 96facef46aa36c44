// build/infer: text generation through a KV cache, and loss/perplexity of a text file.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../checkpoints/checkpoint.h"
#include "../common/args.h"
#include "../decode/step.h"
#include "eval.h"
#include "attnmap.h"
#include "kveval.h"
#include "kvreuse.h"
#include "kvtier.h"
#include "../decode/sample.h"

static const char *usage =
    "usage: build/infer --ckpt FILE --prompt TEXT [-n N] [sampling flags]\n"
    "       build/infer --ckpt FILE --eval FILE\n"
    "\n"
    "Generates text from a trained checkpoint through a KV cache, or scores a text file.\n"
    "\n"
    "  --ckpt FILE        checkpoint written by build/train (required)\n"
    "  --prompt TEXT      text to continue; every character must be in the model's vocabulary\n"
    "  -n, --tokens N     tokens to generate                       [200]\n"
    "  --temperature T    0 = greedy                                [0.8]\n"
    "  --top-k K          sample among the K most likely (0 = all)  [0]\n"
    "  --top-p P          nucleus: smallest set with mass >= P      [1.0]\n"
    "  --seed S           sampling RNG seed                         [1337]\n"
    "  --eval FILE        print the loss and perplexity of FILE; characters outside the vocabulary are\n"
    "                     skipped and counted. Without --kv: the full forward pass over consecutive\n"
    "                     context windows. With --kv: streaming through that cache against the full cache\n"
    "  --kv SPEC          KV cache (see below)                                   [full]\n"
    "  --context N        --kv eval: tokens per stream, may exceed the trained context  [model context]\n"
    "  --prefill N        --kv eval: tokens fed before scoring (SnapKV compresses here) [context/2]\n"
    "  --streams N        --kv eval: streams at evenly spaced offsets of the file       [8]\n"
    "  --json             --kv eval: one JSON object instead of text\n"
    "  --curve N          --kv eval with --json: perplexity against position in N buckets of the scored\n"
    "                     positions (curve_position, curve_ppl, curve_ppl_full)\n"
    "  --eval recall      long-range recall accuracy by distance through --kv SPEC (and the full cache);\n"
    "                     --streams = sequences per distance [20], drawn with --seed (for a file named\n"
    "                     recall, give ./recall)\n"
    "  --eval prefix      the paged pool (--kv paged:BLOCK) under requests that share a prompt prefix:\n"
    "                     --streams requests [8] of --context tokens, the first --prefill of them shared\n"
    "                     [context/2], from the --data text's validation split, one pool of --pool-blocks\n"
    "                     blocks [room for 2 requests]; hit rate, prefill saved, fragmentation, logits vs\n"
    "                     a full cache (for a file named prefix, give ./prefix)\n"
    "  --pool-blocks N    --eval prefix: blocks in the pool\n"
    "  --eval tier        the paged pool (--kv paged:BLOCK) with a fast tier of --fast N blocks [all] and\n"
    "                     the rest in a slower tier: one stream of --context tokens of the --data text's\n"
    "                     validation split, --prefill of them fed first, the rest decoded through the tier;\n"
    "                     --prefetch resident|reactive|predictive|skip:K [reactive], --transfer-us T\n"
    "                     injected per (block, layer) moved [0]; hits, stalls, bytes moved, tokens/s, logits\n"
    "                     vs a full cache\n"
    "  --slow-file PATH   --eval tier: the slow tier is a new file at PATH (refused if it exists; deleted\n"
    "                     after): transfers pread it, evictions write back; reads mostly hit the page cache\n"
    "  --slow-cold        with --slow-file: sync writes and drop the file's cached pages, so reads are cold\n"
    "  --eval attention   attention heat maps: --context tokens [model context, at most 1024] of the --data\n"
    "                     text's validation split through the full cache; writes DIR/attn-layer{L}.png and\n"
    "                     DIR/attn-summary.png into an existing --out DIR, prints sink / heavy-hitter /\n"
    "                     recent-window statistics (--json: one JSON line per layer and a summary)\n"
    "  --out DIR          --eval attention: where the PNGs go\n"
    "  --eval reuse       reuse across similar requests (--reuse lsh|semshare): --streams prompt pairs per\n"
    "                     similarity class [8] (identical, small edit, reordered halves, unrelated) of\n"
    "                     --context tokens from the --data text's validation split; hits, compute skipped,\n"
    "                     time to first token, KL / top-1 / greedy match against full recomputation\n"
    "  --reuse METHOD     lsh (Sim-LLM) | semshare (SemShareKV)\n"
    "  --threshold X      --eval reuse: cosine a stored request must reach   [0.8]\n"
    "  --radius N         --eval reuse: LSH buckets within N bits are candidates   [0]\n"
    "  --min-overlap X    --eval reuse: share of 4-grams a candidate must hold (0 = off)   [0.5]\n"
    "  --deep-keep X      --eval reuse --reuse semshare: the last layer keeps this fraction of the prompt's\n"
    "                     tokens, layers between decay exponentially (SemShareKV's pruning; 1 = off)   [1]\n"
    "  --data FILE        recall filler, prefix text, and the text whose training split +lowrank:R\n"
    "                     calibrates on   [data/tinyshakespeare.txt]\n"
    "                     [data/tinyshakespeare.txt]\n"
    "  --kv-heads G       GQA conversion at load: mean-pool the checkpoint's key/value heads into G groups\n"
    "                     (no retraining; G must divide the checkpoint's key/value head count)\n"
    "  --device cpu|cuda  cuda: --eval FILE scoring only in this release   [cpu]\n"
    "\n"
    "When prompt + generated tokens exceed the model's context, the cache is rebuilt from the newest half\n"
    "context (positions restart at 0), so generation can run on.\n"
    "\n"
    "KV specs: SELECT[+TERM...]\n"
    "  SELECT: full | window:W | sink:S,window:W | h2o:H,R | tova:B | snapkv:B[,W[,K]] | knorm:B[,L]\n"
    "          | paged:BLOCK (= full+paged:BLOCK)\n"
    "  TERM:   fp16 | int8[:G] | int4[:G] | int2[:G] | kivi2[:G[,R]] | kivi4[:G[,R]] | lowrank:R\n"
    "          | fpkeep:S,R | minicache:L[,A] | hadamard | pyramid   (README.md explains each)\n"
    "          | paged:BLOCK: the pool of BLOCK-token blocks, with full, window, sink or h2o selection\n"
    "            (whole blocks dropped) and fp32, fp16 or int rows; --eval tier takes paged:BLOCK alone\n"
    "          | tier:N: with paged:BLOCK alone, the fast tier's N blocks for --eval tier (as --fast N)\n"
    "  e.g. --kv=sink:4,window:60+int4, --kv=h2o:16,16+pyramid, --kv=full+int8+hadamard,\n"
    "       --kv=window:64+paged:16+int4\n";

static int die(const char *msg) {
    fprintf(stderr, "infer: %s\n", msg);
    return 1;
}

typedef struct {
    const char *ckpt, *prompt, *eval, *kv, *device, *data, *reuse, *slow_file, *out;
    float deep_keep;
    int slow_cold;
    float threshold, min_overlap, transfer_us;
    int radius, fast;
    const char *prefetch;
    int n, kv_given, json, kv_heads, pool_blocks;
    KVSpec spec;
    KVEvalConfig kc;
    SampleConfig sc;
    uint64_t seed;
} Flags;

static int parse_flags(Flags *f, int argc, char **argv, char *err) {
    memset(f, 0, sizeof(*f));
    f->n = 200;
    f->sc = (SampleConfig){.temperature = 0.8f, .top_k = 0, .top_p = 1.0f};
    f->seed = 1337;
    f->kv = "full";
    f->device = "cpu";
    f->data = "data/tinyshakespeare.txt";
    f->threshold = f->min_overlap = f->transfer_us = f->deep_keep = -1.0f;
    f->radius = f->fast = -1;
    Args a;
    args_init(&a, argc, argv);
    int r;
    while ((r = args_next(&a)) > 0) {
        int rc = 0;
        if (args_is(&a, "--help") || args_is(&a, "-h")) {
            fputs(usage, stdout);
            exit(0);
        } else if (args_is(&a, "--ckpt")) rc = args_string(&a, &f->ckpt);
        else if (args_is(&a, "--prompt")) rc = args_string(&a, &f->prompt);
        else if (args_is(&a, "--eval")) rc = args_string(&a, &f->eval);
        else if (args_is(&a, "--kv")) rc = args_string(&a, &f->kv), f->kv_given = 1;
        else if (args_is(&a, "--json")) f->json = 1;
        else if (args_is(&a, "--data")) rc = args_string(&a, &f->data);
        else if (args_is(&a, "--kv-heads")) rc = args_int(&a, 1, 1024, &f->kv_heads);
        else if (args_is(&a, "--context")) rc = args_int(&a, 2, 1 << 20, &f->kc.context);
        else if (args_is(&a, "--prefill")) rc = args_int(&a, 1, 1 << 20, &f->kc.prefill);
        else if (args_is(&a, "--streams")) rc = args_int(&a, 1, 1 << 16, &f->kc.streams);
        else if (args_is(&a, "--curve")) rc = args_int(&a, 1, KV_EVAL_MAX_CURVE, &f->kc.curve);
        else if (args_is(&a, "--pool-blocks")) rc = args_int(&a, 1, 1 << 24, &f->pool_blocks);
        else if (args_is(&a, "--reuse")) rc = args_string(&a, &f->reuse);
        else if (args_is(&a, "--fast")) rc = args_int(&a, 0, 1 << 24, &f->fast);
        else if (args_is(&a, "--slow-file")) rc = args_string(&a, &f->slow_file);
        else if (args_is(&a, "--slow-cold")) f->slow_cold = 1;
        else if (args_is(&a, "--out")) rc = args_string(&a, &f->out);
        else if (args_is(&a, "--deep-keep")) rc = args_float(&a, 1e-6f, 1.0f, &f->deep_keep);
        else if (args_is(&a, "--prefetch")) rc = args_string(&a, &f->prefetch);
        else if (args_is(&a, "--transfer-us")) rc = args_float(&a, 0.0f, 1e6f, &f->transfer_us);
        else if (args_is(&a, "--threshold")) rc = args_float(&a, 1e-6f, 1.0f, &f->threshold);
        else if (args_is(&a, "--min-overlap")) rc = args_float(&a, 0.0f, 1.0f, &f->min_overlap);
        else if (args_is(&a, "--radius")) rc = args_int(&a, 0, 64, &f->radius);
        else if (args_is(&a, "--device")) rc = args_string(&a, &f->device);
        else if (args_is(&a, "-n") || args_is(&a, "--tokens")) rc = args_int(&a, 0, 1 << 24, &f->n);
        else if (args_is(&a, "--temperature")) rc = args_float(&a, 0.0f, 100.0f, &f->sc.temperature);
        else if (args_is(&a, "--top-k")) rc = args_int(&a, 0, 1 << 20, &f->sc.top_k);
        else if (args_is(&a, "--top-p")) rc = args_float(&a, 1e-6f, 1.0f, &f->sc.top_p);
        else if (args_is(&a, "--seed")) rc = args_u64(&a, &f->seed);
        else {
            err_set(err, "unknown flag '%s' (see --help)", a.flag);
            return -1;
        }
        if (rc) return err_set(err, "%s", a.err), -1;
    }
    if (r < 0) return err_set(err, "%s", a.err), -1;
    if (!f->ckpt) return err_set(err, "--ckpt FILE is required (see --help)"), -1;
    if (!f->prompt && !f->eval) return err_set(err, "give --prompt TEXT to generate or --eval FILE to score"), -1;
    if (f->prompt && f->eval) return err_set(err, "--prompt and --eval are separate modes; give one"), -1;
    if (kv_spec_parse(&f->spec, f->kv, err) != 0) return -1;
    if (f->prompt && f->kv_given && strcmp(f->kv, "full") != 0)
        return err_set(err, "--kv applies to --eval in this release; generation uses the full cache"), -1;
    int recall = f->eval && strcmp(f->eval, "recall") == 0, prefix = f->eval && strcmp(f->eval, "prefix") == 0;
    int tier = f->eval && strcmp(f->eval, "tier") == 0;
    if ((prefix || tier) && !f->spec.paged_block)
        return err_set(err, "--eval prefix and --eval tier need a paged --kv (paged:BLOCK, or SELECT+paged:BLOCK)"), -1;
    if (tier && strchr(f->kv, '+') && !f->spec.tier_fast)
        return err_set(err, "--eval tier runs the plain fp32 pool: --kv paged:BLOCK[+tier:N] with no other terms"), -1;
    if (f->spec.tier_fast && !tier) return err_set(err, "--kv ...+tier:N applies to --eval tier"), -1;
    if (f->spec.tier_fast && f->fast >= 0 && f->fast != f->spec.tier_fast)
        return err_set(err, "--fast %d and tier:%d disagree; give one", f->fast, f->spec.tier_fast), -1;
    if (f->pool_blocks && !prefix) return err_set(err, "--pool-blocks applies to --eval prefix"), -1;
    if (!tier && (f->fast >= 0 || f->prefetch || f->transfer_us >= 0 || f->slow_file || f->slow_cold))
        return err_set(err, "--fast, --prefetch, --transfer-us, --slow-file and --slow-cold apply to --eval tier"), -1;
    if (f->slow_cold && !f->slow_file) return err_set(err, "--slow-cold needs --slow-file PATH"), -1;
    int reuse = f->eval && strcmp(f->eval, "reuse") == 0;
    if (reuse && (!f->reuse || (strcmp(f->reuse, "lsh") != 0 && strcmp(f->reuse, "semshare") != 0)))
        return err_set(err, "--eval reuse needs --reuse lsh|semshare"), -1;
    if (!reuse && (f->reuse || f->threshold >= 0 || f->min_overlap >= 0 || f->radius >= 0 || f->deep_keep >= 0))
        return err_set(err, "--reuse, --threshold, --radius, --min-overlap and --deep-keep apply to --eval reuse"), -1;
    if (f->deep_keep >= 0 && f->reuse && strcmp(f->reuse, "semshare") != 0)
        return err_set(err, "--deep-keep applies to --reuse semshare"), -1;
    int attention = f->eval && strcmp(f->eval, "attention") == 0;
    if (attention != (f->out != NULL))
        return err_set(err, attention ? "--eval attention needs --out DIR (an existing directory for the PNGs)"
                                      : "--out applies to --eval attention"), -1;
    if (attention && (f->kv_given || f->kc.prefill || f->kc.streams))
        return err_set(err, "--eval attention takes --context, --data, --out and --json (no --kv)"), -1;
    if (!f->kv_given && !recall && !reuse && !attention && (f->json || f->kc.context || f->kc.prefill || f->kc.streams))
        return err_set(err, "--json, --context, --prefill and --streams need --kv SPEC (the streaming eval)"), -1;
    if (f->kc.curve && (!f->kv_given || !f->json || recall || prefix || tier || reuse))
        return err_set(err, "--curve applies to the streaming eval with --json (--eval FILE --kv SPEC --json)"), -1;
    if (strcmp(f->device, "cpu") != 0 && strcmp(f->device, "cuda") != 0)
        return err_set(err, "bad --device '%s': valid values are cpu, cuda", f->device), -1;
    if (strcmp(f->device, "cuda") == 0 && (!f->eval || recall || f->kv_given))
        return err_set(err, "--device cuda runs --eval FILE (scoring) in this release; generation and the KV evals "
                            "run on the CPU"), -1;
    return 0;
}

static int run_recall(Model *m, Tokenizer *tok, const Flags *f, char *err) {
    Corpus corpus;
    if (corpus_load(&corpus, tok, f->data, 0, NULL, err) != 0) return -1;
    int context = f->kc.context ? f->kc.context : m->cfg.block_size;
    int per = f->kc.streams ? f->kc.streams : 20;
    KVRecallResult r;
    int rc = kv_eval_recall(m, &f->spec, tok, &corpus, context, per, f->seed, &r, err);
    if (rc == 0 && f->json) kv_recall_print_json(&f->spec, context, per, &r);
    else if (rc == 0) {
        printf("recall --kv=%s, context %d, %d sequences per distance: accuracy %.3f (full cache %.3f), value "
               "characters %.3f (full %.3f; chance 0.038), KV %.1f bytes/token (fp16 full: %.1f)\n",
               f->spec.text, context, per, r.acc_all, r.acc_all_full, r.char_acc, r.char_acc_full, r.bytes_per_token,
               r.fp16_bytes_per_token);
        for (int i = 0; i < r.n_distances; i++)
            printf("  distance %5d: %.3f (full %.3f)\n", r.distance[i], r.acc[i], r.acc_full[i]);
    }
    corpus_free(&corpus);
    return rc;
}

static int run_prefix(Model *m, Tokenizer *tok, const Flags *f, char *err) {
    Corpus corpus;
    if (corpus_load(&corpus, tok, f->data, 0, NULL, err) != 0) return -1;
    KVPrefixConfig pc = {.requests = f->kc.streams ? f->kc.streams : 8,
                         .context = f->kc.context ? f->kc.context : m->cfg.block_size,
                         .pool_blocks = f->pool_blocks};
    pc.shared = f->kc.prefill ? f->kc.prefill : pc.context / 2;
    KVPrefixResult r;
    int rc = kv_eval_prefix(m, &f->spec, corpus.tokens + corpus.n_train, corpus.n_tokens - corpus.n_train, &pc, &r,
                            err);
    if (rc == 0 && f->json) kv_prefix_print_json(&f->spec, &pc, &r);
    else if (rc == 0)
        printf("prefix --kv=%s: %d requests of %d tokens sharing %d, pool of %d blocks: hit rate %.3f, %lld of %zu "
               "prompt tokens reused (%zu computed), %lld evictions, fragmentation %.3f, utilisation %.3f, last-token "
               "logits vs a full cache max |diff| %.2g (top-1 agree %.3f), %.2f ms per request (full cache %.2f)\n",
               f->spec.text, pc.requests, pc.context, pc.shared, r.pool_blocks, r.hit_rate, r.prefill_saved,
               r.prompt_tokens, r.computed_tokens, r.evictions, r.fragmentation, r.utilisation, r.max_abs_logit_diff,
               r.top1_agree, r.ms_per_request, r.ms_per_request_full);
    corpus_free(&corpus);
    return rc;
}

static int run_tier(Model *m, Tokenizer *tok, const Flags *f, char *err) {
    KVTierConfig tc = {.block = f->spec.paged_block,
                       .fast_blocks = f->fast >= 0 ? f->fast : f->spec.tier_fast,
                       .transfer_us = f->transfer_us >= 0 ? f->transfer_us : 0.0,
                       .context = f->kc.context ? f->kc.context : m->cfg.block_size,
                       .slow_file = f->slow_file, .slow_cold = f->slow_cold};
    tc.prefill = f->kc.prefill ? f->kc.prefill : tc.context / 2;
    if (kv_tier_parse_mode(&tc, f->prefetch ? f->prefetch : "reactive", err) != 0) return -1;
    Corpus corpus;
    if (corpus_load(&corpus, tok, f->data, 0, NULL, err) != 0) return -1;
    KVTierResult r;
    int rc = kv_eval_tier(m, corpus.tokens + corpus.n_train, corpus.n_tokens - corpus.n_train, &tc, &r, err);
    if (rc == 0 && f->json) kv_tier_print_json(&tc, &r);
    else if (rc == 0)
        printf("tier --kv=%s --fast %d --prefetch %s --transfer-us %g: %d decode tokens over %d blocks: hit rate "
               "%.3f, prefetch accuracy %.3f, stall %.3f ms/token, %.3f MB moved/token, %.0f tokens/s, attention "
               "mass covered %.3f, logits vs a full cache max |diff| %.2g (top-1 agree %.3f)\n",
               f->spec.text, r.fast_blocks, f->prefetch ? f->prefetch : "reactive", tc.transfer_us, r.decode_tokens,
               r.blocks, r.hit_rate, r.prefetch_accuracy, r.stall_ms_per_token, r.mb_moved_per_token,
               r.decode_tokens_per_s, r.mass_covered, r.max_abs_logit_diff, r.top1_agree);
    corpus_free(&corpus);
    return rc;
}

// Attention heat maps and sink / heavy-hitter statistics over --context tokens of the validation split.
static int run_attention(Model *m, Tokenizer *tok, const Flags *f, char *err) {
    Corpus corpus;
    if (corpus_load(&corpus, tok, f->data, 0, NULL, err) != 0) return -1;
    int T = f->kc.context ? f->kc.context : m->cfg.block_size;
    int rc = -1;
    AttnMapStats st;
    if ((size_t)T > corpus.n_tokens - corpus.n_train)
        err_set(err, "--eval attention: the validation split has %zu tokens, fewer than --context %d",
                corpus.n_tokens - corpus.n_train, T);
    else
        rc = attn_maps(m, corpus.tokens + corpus.n_train, T, f->out, "attn", &st, err);
    if (rc == 0) {
        if (f->json) attn_map_stats_print_json(stdout, &st);
        else attn_map_stats_print_text(stdout, &st);
        attn_map_stats_free(&st);
    }
    corpus_free(&corpus);
    return rc;
}

static int run_reuse(Model *m, Tokenizer *tok, const Flags *f, char *err) {
    Corpus corpus;
    if (corpus_load(&corpus, tok, f->data, 0, NULL, err) != 0) return -1;
    KVReuseConfig rc_cfg;
    kv_reuse_config_default(&rc_cfg, m);
    if (f->kc.context) rc_cfg.context = f->kc.context;
    if (f->kc.streams) rc_cfg.pairs = f->kc.streams;
    if (f->threshold >= 0) rc_cfg.store.threshold = f->threshold;
    if (f->deep_keep >= 0) rc_cfg.semshare.deep_keep = f->deep_keep;
    if (f->min_overlap >= 0) rc_cfg.store.min_overlap = f->min_overlap;
    if (f->radius >= 0) rc_cfg.store.radius = f->radius;
    rc_cfg.calib = corpus.tokens; // the centre of the mean embeddings comes from the training split
    rc_cfg.n_calib = corpus.n_train;
    KVReuseResult r;
    int rc = kv_eval_reuse(m, f->reuse, corpus.tokens + corpus.n_train, corpus.n_tokens - corpus.n_train, &rc_cfg, &r,
                           err);
    if (rc == 0 && f->json) kv_reuse_print_json(f->reuse, &rc_cfg, &r);
    else if (rc == 0) {
        printf("reuse --reuse=%s, %d pairs per class of %d tokens:\n", f->reuse, rc_cfg.pairs, rc_cfg.context);
        for (int i = 0; i < KV_REUSE_CLASSES; i++) {
            const KVReuseClassResult *c = &r.cls[i];
            printf("  %-9s hits %d/%d, similarity %.3f, compute skipped %.1f%%, first token %.2f ms (full %.2f), "
                   "KL %.3g (last) %.3g (gen), top-1 %.3f, greedy match %.3f\n",
                   kv_reuse_class_names[i], c->hits, c->pairs, c->sim_mean, 100 * c->flops_skipped, c->ttft_ms,
                   c->ttft_full_ms, c->kl_last, c->kl_gen, c->top1, c->greedy_match);
        }
    }
    corpus_free(&corpus);
    return rc;
}

static int run_eval(Model *m, Tokenizer *tok, const Flags *f, char *err) {
    const char *path = f->eval;
    if (strcmp(path, "recall") == 0) return run_recall(m, tok, f, err);
    if (strcmp(path, "prefix") == 0) return run_prefix(m, tok, f, err);
    if (strcmp(path, "reuse") == 0) return run_reuse(m, tok, f, err);
    if (strcmp(path, "tier") == 0) return run_tier(m, tok, f, err);
    if (strcmp(path, "attention") == 0) return run_attention(m, tok, f, err);
    size_t len;
    unsigned char *text = common_read_file(path, &len, err);
    if (!text) return -1;
    int *ids = common_calloc(len + 1, sizeof(int));
    size_t n_oov = 0, n = tokenizer_encode(tok, text, len, ids, &n_oov);
    free(text);
    int rc;
    if (f->kv_given) {
        KVEvalConfig kc = f->kc;
        Corpus calib = {0};
        if (f->spec.rank) { // low-rank bases come from the training corpus, not the text being scored
            if (corpus_load(&calib, tok, f->data, 0, NULL, err) != 0) return common_free(ids), -1;
            kc.calib = calib.tokens;
            kc.n_calib = calib.n_train;
        }
        if (!kc.context) kc.context = m->cfg.block_size;
        if (!kc.prefill) kc.prefill = kc.context / 2;
        if (!kc.streams) kc.streams = 8;
        KVEvalResult r;
        rc = kv_eval_streams(m, &f->spec, ids, n, &kc, &r, err);
        if (rc == 0 && f->json) kv_eval_print_json(&f->spec, &kc, &r);
        else if (rc == 0)
            printf("eval: %s --kv=%s: %zu tokens scored (%d streams of %d, scoring after %d): ppl %.4f (full cache "
                   "%.4f), KL %.3g, top-1 agreement %.4f, KV %zu bytes = %.1f bytes/token (fp16 full: %.1f), "
                   "decode %.0f tokens/s\n",
                   path, f->spec.text, r.tokens, kc.streams, kc.context, kc.prefill, r.ppl, r.ppl_full, r.kl,
                   r.top1_agree, r.kv_bytes, r.bytes_per_token, r.fp16_bytes_per_token, r.decode_tokens_per_s);
        corpus_free(&calib);
        common_free(ids);
        return rc;
    }
    EvalResult r;
    rc = eval_tokens(m, ids, n, &r, err);
    if (rc == 0) {
        printf("eval: %s: %zu tokens scored, loss %.4f, perplexity %.3f\n", path, r.n_scored, r.mean_loss, r.perplexity);
        if (n_oov) printf("eval: %zu bytes outside the model's vocabulary were skipped\n", n_oov);
    } else {
        err_set(err, "'%s': %zu usable tokens (%zu bytes outside the vocabulary skipped); need at least 2", path, n, n_oov);
    }
    common_free(ids);
    return rc;
}

// Feeds tokens[0..n) at positions 0..n-1 into an empty cache; logits of the last land in ds->logits.
static void prefill(const Model *m, DecodeState *ds, KVCache *kv, const int *tokens, int n) {
    kv_cache_reset(kv);
    for (int i = 0; i < n; i++) CHECK(model_decode_step(m, ds, kv, tokens[i], i) == 0);
}

static int run_generate(Model *m, const Tokenizer *tok, const Flags *f, char *err) {
    size_t plen = strlen(f->prompt);
    if (plen == 0) return err_set(err, "--prompt is empty: give at least one character"), -1;
    long bad = tokenizer_find_oov(tok, (const unsigned char *)f->prompt, plen);
    if (bad >= 0) {
        unsigned char ch = (unsigned char)f->prompt[bad];
        if (ch >= 32 && ch < 127)
            err_set(err, "prompt character '%c' (byte %ld) is not in the model's vocabulary", ch, bad);
        else
            err_set(err, "prompt byte 0x%02x (at %ld) is not in the model's vocabulary", ch, bad);
        return -1;
    }
    const ModelConfig *c = &m->cfg;
    int T = c->block_size, V = c->vocab_size;
    size_t total = plen + (size_t)f->n;
    int *ids = common_calloc(total, sizeof(int));
    tokenizer_encode(tok, (const unsigned char *)f->prompt, plen, ids, NULL);
    KVCache *kv;
    KVShape shape = {c->n_layer, c->n_head, c->n_kv_head, model_head_dim(c), T, c->rope_theta, 0};
    CHECK(kv_full_init(&kv, &shape, err) == 0);
    DecodeState ds;
    decode_state_init(&ds, c, 1, T);
    float *probs = common_calloc(V, sizeof(float));
    int *idx = common_calloc(V, sizeof(int));
    Rng rng;
    rng_init(&rng, f->seed);

    size_t n = plen;
    // a prompt longer than the context keeps its newest tokens
    size_t first = n > (size_t)T ? n - T : 0;
    prefill(m, &ds, kv, ids + first, (int)(n - first));
    int pos = (int)(n - first);
    fputs(f->prompt, stdout);
    double t0 = common_now();
    for (int i = 0; i < f->n; i++) {
        int next = sample_next(ds.logits, V, &f->sc, &rng, probs, idx);
        ids[n++] = next;
        putchar(tok->id_to_byte[next]);
        fflush(stdout);
        if (i + 1 == f->n) break;
        if (pos == T) { // cache full: rebuild it from the newest half context
            int keep = T / 2 > 0 ? T / 2 : 1;
            prefill(m, &ds, kv, ids + n - keep, keep);
            pos = keep;
        } else {
            CHECK(model_decode_step(m, &ds, kv, next, pos) == 0);
            pos++;
        }
    }
    double dt = common_now() - t0;
    putchar('\n');
    fflush(stdout);
    fprintf(stderr, "infer: %d tokens in %.2f s (%.1f tokens/s), KV cache %zu bytes\n", f->n, dt,
            dt > 0 ? f->n / dt : 0.0, kv_cache_bytes(kv));
    common_free(probs);
    common_free(idx);
    decode_state_free(&ds);
    kv_cache_free(kv);
    common_free(ids);
    return 0;
}

int main(int argc, char **argv) {
    char err[ERR_LEN];
    Flags f;
    if (parse_flags(&f, argc, argv, err) != 0) return die(err);
    const Ops *backend = ops_for_device(f.device, err);
    if (!backend) return die(err);
    Model m;
    Tokenizer tok;
    if (checkpoint_load(f.ckpt, &m, &ops_cpu, &tok, NULL, NULL, NULL, err) != 0) return die(err);
    if (f.kv_heads && f.kv_heads != m.cfg.n_kv_head) {
        Model pooled;
        int rc = model_convert_kv_heads(&pooled, &m, f.kv_heads, err);
        model_free(&m);
        if (rc != 0) return die(err);
        m = pooled;
    }
    model_to_backend(&m, backend);
    int rc = f.eval ? run_eval(&m, &tok, &f, err) : run_generate(&m, &tok, &f, err);
    model_free(&m);
    if (rc != 0) return die(err);
    return 0;
}
