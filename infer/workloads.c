// The KV workloads of build/infer that read their text from --data: `recall` (long-range recall accuracy
// by distance, kvrecall.c), `prefix` (the paged pool under requests sharing a prompt prefix, kvprefix.c) and
// `tier` (the paged pool with a slower tier, kvtier.c). Old spellings: --eval recall|prefix|tier.
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "kvtier.h"
#include "kveval.h"
#include "mode.h"

#define WORKLOAD_DATA_HELP "the text the workload draws from (its validation split)   [data/tinyshakespeare.txt]"

// The model, its tokenizer and the --data corpus every workload starts from; -1 with a message.
static int workload_load(const ModeCommon *c, const char *data, Model *m, Tokenizer *tok, Corpus *corpus, char *err) {
    if (mode_load_model(c, 0, m, tok, err) != 0) return -1;
    if (corpus_load(corpus, tok, data, 0, NULL, err) == 0) return 0;
    model_free(m);
    tokenizer_free(tok);
    return -1;
}

typedef struct {
    ModeCommon common;
    const char *kv, *data;
    int context, streams, json;
    uint64_t seed;
} RecallOpts;

static void recall_set_defaults(void *p) {
    RecallOpts *o = p;
    o->kv = "full";
    o->data = "data/tinyshakespeare.txt";
    o->seed = 1337;
}

static int recall_run(void *p, char *err) {
    RecallOpts *o = p;
    KVSpec spec;
    if (kv_spec_parse(&spec, o->kv, err) != 0) return -1;
    Model m;
    Tokenizer tok;
    Corpus corpus;
    if (workload_load(&o->common, o->data, &m, &tok, &corpus, err) != 0) return -1;
    int context = o->context ? o->context : m.cfg.block_size;
    int per = o->streams ? o->streams : 20;
    KVRecallResult r;
    int rc = kv_eval_recall(&m, &spec, &tok, &corpus, context, per, o->seed, &r, err);
    if (rc == 0 && o->json) kv_recall_print_json(&spec, context, per, &r);
    else if (rc == 0) {
        printf("recall --kv=%s, context %d, %d sequences per distance: accuracy %.3f (full cache %.3f), value "
               "%s %.3f (full %.3f%s), KV %.1f bytes/token (fp16 full: %.1f)\n",
               spec.text, context, per, r.acc_all, r.acc_all_full, tok.bpe ? "tokens" : "characters", r.char_acc,
               r.char_acc_full, tok.bpe ? "" : "; chance 0.038", r.bytes_per_token, r.fp16_bytes_per_token);
        for (int i = 0; i < r.n_distances; i++)
            printf("  distance %5d: %.3f (full %.3f)\n", r.distance[i], r.acc[i], r.acc_full[i]);
    }
    corpus_free(&corpus);
    model_free(&m);
    tokenizer_free(&tok);
    return rc;
}

static const ModeFlag recall_flags[] = {
    MODE_COMMON_FLAGS,
    {"--kv", NULL, MODE_FLAG_STRING, offsetof(RecallOpts, kv), 0, 0, "SPEC", "the KV cache under test   [full]"},
    {"--context", NULL, MODE_FLAG_INT, offsetof(RecallOpts, context), 2, MODE_MAX_CONTEXT, "N",
     "tokens per sequence, at most 65536   [model context]"},
    {"--streams", NULL, MODE_FLAG_INT, offsetof(RecallOpts, streams), 1, 1 << 16, "N", "sequences per distance   [20]"},
    {"--seed", NULL, MODE_FLAG_U64, offsetof(RecallOpts, seed), 0, 0, "S", "draws the sequences   [1337]"},
    {"--json", NULL, MODE_FLAG_SWITCH, offsetof(RecallOpts, json), 0, 0, NULL, "one JSON object instead of text"},
    {"--data", NULL, MODE_FLAG_STRING, offsetof(RecallOpts, data), 0, 0, "FILE",
     "filler text; +lowrank:R calibrates on its training split   [data/tinyshakespeare.txt]"},
    {0},
};

const Mode mode_recall = {
    .name = "recall",
    .summary = "long-range recall accuracy by distance through a KV cache (old spelling: --eval recall)",
    .usage = "build/infer recall --ckpt FILE [--kv SPEC] [--context N] [--streams N] [--seed S] [--json]",
    .about = "For each distance, --streams sequences of --context tokens (a key-value item, filler from --data,\n"
             "the query) go through the cache and the full cache; a sequence counts when every value character\n"
             "(value token, for a GGUF model: a pass key in sentences) is the most likely next token. SnapKV\n"
             "compresses at the query.\n",
    .flags = recall_flags,
    .opts_size = sizeof(RecallOpts),
    .defaults = recall_set_defaults,
    .run = recall_run,
};

typedef struct {
    ModeCommon common;
    const char *kv, *data;
    int context, prefill, streams, pool_blocks, json;
} PrefixOpts;

static void prefix_set_defaults(void *p) {
    PrefixOpts *o = p;
    o->kv = "full";
    o->data = "data/tinyshakespeare.txt";
}

static int prefix_run(void *p, char *err) {
    PrefixOpts *o = p;
    KVSpec spec;
    if (kv_spec_parse(&spec, o->kv, err) != 0) return -1;
    if (!spec.paged_block) {
        err_set(err, "prefix (--eval prefix) needs a paged --kv (paged:BLOCK, or SELECT+paged:BLOCK)");
        return -1;
    }
    if (spec.tier_fast) {
        err_set(err, "--kv ...+tier:N applies to the tier mode (--eval tier)");
        return -1;
    }
    Model m;
    Tokenizer tok;
    Corpus corpus;
    if (workload_load(&o->common, o->data, &m, &tok, &corpus, err) != 0) return -1;
    KVPrefixConfig pc = {.requests = o->streams ? o->streams : 8,
                         .context = o->context ? o->context : m.cfg.block_size,
                         .pool_blocks = o->pool_blocks};
    pc.shared = o->prefill ? o->prefill : pc.context / 2;
    KVPrefixResult r;
    int rc = kv_eval_prefix(&m, &spec, corpus.tokens + corpus.n_train, corpus.n_tokens - corpus.n_train, &pc, &r,
                            err);
    if (rc == 0 && o->json) kv_prefix_print_json(&spec, &pc, &r);
    else if (rc == 0)
        printf("prefix --kv=%s: %d requests of %d tokens sharing %d, pool of %d blocks: hit rate %.3f, %lld of %zu "
               "prompt tokens reused (%zu computed), %lld evictions, fragmentation %.3f, utilisation %.3f, last-token "
               "logits vs a full cache max |diff| %.2g (top-1 agree %.3f), %.2f ms per request (full cache %.2f)\n",
               spec.text, pc.requests, pc.context, pc.shared, r.pool_blocks, r.hit_rate, r.prefill_saved,
               r.prompt_tokens, r.computed_tokens, r.evictions, r.fragmentation, r.utilisation, r.max_abs_logit_diff,
               r.top1_agree, r.ms_per_request, r.ms_per_request_full);
    corpus_free(&corpus);
    model_free(&m);
    tokenizer_free(&tok);
    return rc;
}

static const ModeFlag prefix_flags[] = {
    MODE_COMMON_FLAGS,
    {"--kv", NULL, MODE_FLAG_STRING, offsetof(PrefixOpts, kv), 0, 0, "SPEC",
     "a paged spec: paged:BLOCK or SELECT+paged:BLOCK[+FORMAT] (required)"},
    {"--context", NULL, MODE_FLAG_INT, offsetof(PrefixOpts, context), 2, MODE_MAX_CONTEXT, "N",
     "tokens per request, at most 65536   [model context]"},
    {"--prefill", NULL, MODE_FLAG_INT, offsetof(PrefixOpts, prefill), 1, MODE_MAX_CONTEXT, "N",
     "tokens every request shares (the prefix)   [context/2]"},
    {"--streams", NULL, MODE_FLAG_INT, offsetof(PrefixOpts, streams), 1, 1 << 16, "N", "requests   [8]"},
    {"--pool-blocks", NULL, MODE_FLAG_INT, offsetof(PrefixOpts, pool_blocks), 1, 1 << 24, "N",
     "blocks in the pool   [room for 2 requests]"},
    {"--json", NULL, MODE_FLAG_SWITCH, offsetof(PrefixOpts, json), 0, 0, NULL, "one JSON object instead of text"},
    {"--data", NULL, MODE_FLAG_STRING, offsetof(PrefixOpts, data), 0, 0, "FILE", WORKLOAD_DATA_HELP},
    {0},
};

const Mode mode_prefix = {
    .name = "prefix",
    .summary = "the paged pool under requests sharing a prompt prefix (old spelling: --eval prefix)",
    .usage = "build/infer prefix --ckpt FILE --kv paged:BLOCK [--context N] [--prefill N] [--streams N] [--json]",
    .about = "Requests of --context tokens from the --data text's validation split, the first --prefill shared, fed\n"
             "in turn through one pool: hit rate, prefill saved, fragmentation, logits against a full cache.\n",
    .flags = prefix_flags,
    .opts_size = sizeof(PrefixOpts),
    .defaults = prefix_set_defaults,
    .run = prefix_run,
};

typedef struct {
    ModeCommon common;
    const char *kv, *data, *prefetch, *slow_file;
    int context, prefill, fast, slow_cold, json;
    float transfer_us;
} TierOpts;

static void tier_set_defaults(void *p) {
    TierOpts *o = p;
    o->kv = "full";
    o->data = "data/tinyshakespeare.txt";
    o->prefetch = "reactive";
    o->fast = -1;
}

// The tier's flags against its spec; fills tc. -1 with a message.
static int tier_check_flags(const TierOpts *o, const KVSpec *spec, KVTierConfig *tc, char *err) {
    if (!spec->paged_block) {
        err_set(err, "tier (--eval tier) needs a paged --kv: paged:BLOCK[+tier:N]");
        return -1;
    }
    if (strchr(o->kv, '+') && !spec->tier_fast) {
        err_set(err, "--eval tier runs the plain fp32 pool: --kv paged:BLOCK[+tier:N] with no other terms");
        return -1;
    }
    if (spec->tier_fast && o->fast >= 0 && o->fast != spec->tier_fast) {
        err_set(err, "--fast %d and tier:%d disagree; give one", o->fast, spec->tier_fast);
        return -1;
    }
    if (o->slow_cold && !o->slow_file) {
        err_set(err, "--slow-cold needs --slow-file PATH");
        return -1;
    }
    *tc = (KVTierConfig){.block = spec->paged_block,
                         .fast_blocks = o->fast >= 0 ? o->fast : spec->tier_fast,
                         .transfer_us = o->transfer_us,
                         .slow_file = o->slow_file,
                         .slow_cold = o->slow_cold};
    return kv_tier_parse_mode(tc, o->prefetch, err);
}

static int tier_run(void *p, char *err) {
    TierOpts *o = p;
    KVSpec spec;
    KVTierConfig tc;
    if (kv_spec_parse(&spec, o->kv, err) != 0 || tier_check_flags(o, &spec, &tc, err) != 0) return -1;
    Model m;
    Tokenizer tok;
    Corpus corpus;
    if (workload_load(&o->common, o->data, &m, &tok, &corpus, err) != 0) return -1;
    tc.context = o->context ? o->context : m.cfg.block_size;
    tc.prefill = o->prefill ? o->prefill : tc.context / 2;
    KVTierResult r;
    int rc = kv_eval_tier(&m, corpus.tokens + corpus.n_train, corpus.n_tokens - corpus.n_train, &tc, &r, err);
    if (rc == 0 && o->json) kv_tier_print_json(&tc, &r);
    else if (rc == 0)
        printf("tier --kv=%s --fast %d --prefetch %s --transfer-us %g: %d decode tokens over %d blocks: hit rate "
               "%.3f, prefetch accuracy %.3f, stall %.3f ms/token, %.3f MB moved/token, %.0f tokens/s, attention "
               "mass covered %.3f, logits vs a full cache max |diff| %.2g (top-1 agree %.3f)\n",
               spec.text, r.fast_blocks, o->prefetch, tc.transfer_us, r.decode_tokens, r.blocks, r.hit_rate,
               r.prefetch_accuracy, r.stall_ms_per_token, r.mb_moved_per_token, r.decode_tokens_per_s,
               r.mass_covered, r.max_abs_logit_diff, r.top1_agree);
    corpus_free(&corpus);
    model_free(&m);
    tokenizer_free(&tok);
    return rc;
}

static const ModeFlag tier_flags[] = {
    MODE_COMMON_FLAGS,
    {"--kv", NULL, MODE_FLAG_STRING, offsetof(TierOpts, kv), 0, 0, "SPEC",
     "paged:BLOCK[+tier:N], the plain fp32 pool (required)"},
    {"--context", NULL, MODE_FLAG_INT, offsetof(TierOpts, context), 2, MODE_MAX_CONTEXT, "N",
     "tokens in the stream, at most 65536   [model context]"},
    {"--prefill", NULL, MODE_FLAG_INT, offsetof(TierOpts, prefill), 1, MODE_MAX_CONTEXT, "N",
     "tokens fed before the tier starts   [context/2]"},
    {"--fast", NULL, MODE_FLAG_INT, offsetof(TierOpts, fast), 0, 1 << 24, "N", "blocks in the fast tier (as tier:N)   [all]"},
    {"--prefetch", NULL, MODE_FLAG_STRING, offsetof(TierOpts, prefetch), 0, 0, "MODE",
     "resident | reactive | predictive | skip:K   [reactive]"},
    {"--transfer-us", NULL, MODE_FLAG_FLOAT, offsetof(TierOpts, transfer_us), 0, 1e6, "T",
     "microseconds injected per (block, layer) moved   [0]"},
    {"--slow-file", NULL, MODE_FLAG_STRING, offsetof(TierOpts, slow_file), 0, 0, "PATH",
     "the slow tier is a new file at PATH (refused if it exists; deleted after)"},
    {"--slow-cold", NULL, MODE_FLAG_SWITCH, offsetof(TierOpts, slow_cold), 0, 0, NULL,
     "with --slow-file: sync writes and drop the file's cached pages, so reads are cold"},
    {"--json", NULL, MODE_FLAG_SWITCH, offsetof(TierOpts, json), 0, 0, NULL, "one JSON object instead of text"},
    {"--data", NULL, MODE_FLAG_STRING, offsetof(TierOpts, data), 0, 0, "FILE", WORKLOAD_DATA_HELP},
    {0},
};

const Mode mode_tier = {
    .name = "tier",
    .summary = "the paged pool with a fast tier and a slower one (old spelling: --eval tier)",
    .usage = "build/infer tier --ckpt FILE --kv paged:BLOCK[+tier:N] [--fast N] [--prefetch MODE] [--json]",
    .about = "One stream of --context tokens of the --data text's validation split: --prefill of them fed first,\n"
             "the rest decoded through the tier. Hits, stalls, bytes moved, tokens/s, logits against a full cache.\n",
    .flags = tier_flags,
    .opts_size = sizeof(TierOpts),
    .defaults = tier_set_defaults,
    .run = tier_run,
};
