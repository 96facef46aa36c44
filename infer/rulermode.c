// build/infer ruler: the retrieval suite (kvruler.h, data/ruler.h) as a mode: its flags, the checks of the task
// list and the query mode before anything loads, and the output (one JSON line per task, or a small table).
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "kvruler.h"
#include "mode.h"

typedef struct {
    ModeCommon common;
    const char *kv, *data, *tasks, *query;
    int context, items, depths, json;
    uint64_t seed;
} RulerOpts;

static void ruler_set_defaults(void *p) {
    RulerOpts *o = p;
    o->kv = "full";
    o->data = "data/tinyshakespeare.txt";
    o->tasks = "single,multikey,multiquery";
    o->query = "aware";
    o->items = 100;
    o->depths = 5;
    o->seed = 1337;
}

// The comma-separated task names into tasks (at most RULER_TASKS, each once): their count, or -1 with a message.
static int ruler_parse_tasks(const char *list, RulerTask *tasks, char *err) {
    int n = 0;
    const char *p = list;
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        char name[32];
        RulerTask t;
        if (len == 0 || len >= sizeof(name)) {
            err_set(err, "bad --tasks '%s': a comma-separated list of single, multikey, multiquery", list);
            return -1;
        }
        memcpy(name, p, len);
        name[len] = 0;
        if (ruler_task_parse(name, &t) != 0) {
            err_set(err, "unknown task '%s' in --tasks: valid tasks are single, multikey, multiquery", name);
            return -1;
        }
        for (int i = 0; i < n; i++)
            if (tasks[i] == t) {
                err_set(err, "task '%s' is named twice in --tasks", name);
                return -1;
            }
        tasks[n++] = t;
        if (!comma) return n;
        p = comma + 1;
    }
}

static void ruler_print_table_row(const RulerConfig *cfg, const RulerResult *r) {
    printf("%-11s %5d/%-5d %6.3f ", ruler_task_name(cfg->task), r->correct, r->items, (double)r->correct / r->items);
    for (int b = 0; b < r->depths; b++)
        printf(" %5.2f", r->by_depth_n[b] ? (double)r->by_depth_correct[b] / r->by_depth_n[b] : 0.0);
    printf("  %12.0f %12.0f %7.1f %8.2f\n", r->kv_bytes_mean, r->fp16_bytes_full, r->prompt_tokens_mean, r->seconds);
}

static int ruler_run(void *p, char *err) {
    RulerOpts *o = p;
    KVSpec spec;
    RulerTask tasks[RULER_TASKS];
    if (kv_spec_parse(&spec, o->kv, err) != 0) return -1;
    int n_tasks = ruler_parse_tasks(o->tasks, tasks, err);
    if (n_tasks < 0) return -1;
    if (strcmp(o->query, "aware") != 0 && strcmp(o->query, "agnostic") != 0) {
        err_set(err, "bad --query '%s': valid values are aware, agnostic", o->query);
        return -1;
    }
    Model m;
    Tokenizer tok;
    Corpus corpus;
    if (mode_load_model(&o->common, 0, &m, &tok, err) != 0) return -1;
    if (corpus_load(&corpus, &tok, o->data, 0, NULL, err) != 0) {
        model_free(&m);
        tokenizer_free(&tok);
        return -1;
    }
    RulerConfig cfg = {.context = o->context ? o->context : m.cfg.block_size,
                       .items = o->items,
                       .depths = o->depths,
                       .agnostic = strcmp(o->query, "agnostic") == 0,
                       .seed = o->seed};
    int rc = 0;
    for (int i = 0; i < n_tasks && rc == 0; i++) // every task checked before any runs: an error prints nothing else
        rc = ruler_check(&tok, &corpus, tasks[i], cfg.context, err);
    if (rc == 0 && !o->json) {
        printf("ruler --kv=%s, context %d, query %s, %d items per task over %d depths (accuracy by depth: the "
               "queried needle's place in the haystack)\n",
               spec.text, cfg.context, o->query, cfg.items, cfg.depths);
        printf("%-11s %11s %6s ", "task", "correct", "acc");
        for (int b = 0; b < cfg.depths; b++) printf(" %5.2f", (b + 0.5) / cfg.depths);
        printf("  %12s %12s %7s %8s\n", "KV bytes", "fp16 full", "prompt", "seconds");
    }
    for (int i = 0; i < n_tasks && rc == 0; i++) {
        cfg.task = tasks[i];
        RulerResult r;
        rc = kv_eval_ruler(&m, &spec, &tok, &corpus, &cfg, &r, err);
        if (rc != 0) break;
        if (o->json) kv_ruler_print_json(&spec, &cfg, &r);
        else ruler_print_table_row(&cfg, &r);
        fflush(stdout);
    }
    corpus_free(&corpus);
    model_free(&m);
    tokenizer_free(&tok);
    return rc;
}

static const ModeFlag ruler_flags[] = {
    MODE_COMMON_FLAGS,
    {"--kv", NULL, MODE_FLAG_STRING, offsetof(RulerOpts, kv), 0, 0, "SPEC", "the KV cache under test   [full]"},
    {"--context", NULL, MODE_FLAG_INT, offsetof(RulerOpts, context), 2, MODE_MAX_CONTEXT, "N",
     "tokens per item, at most 65536   [model context]"},
    {"--items", NULL, MODE_FLAG_INT, offsetof(RulerOpts, items), 1, 1 << 20, "K",
     "items per task, split evenly over the depths   [100]"},
    {"--tasks", NULL, MODE_FLAG_STRING, offsetof(RulerOpts, tasks), 0, 0, "LIST",
     "comma-separated: single, multikey, multiquery   [all three]"},
    {"--query", NULL, MODE_FLAG_STRING, offsetof(RulerOpts, query), 0, 0, "MODE",
     "aware: the question is in the prompt; agnostic: it comes after the prompt   [aware]"},
    {"--depths", NULL, MODE_FLAG_INT, offsetof(RulerOpts, depths), 1, RULER_MAX_DEPTHS, "D",
     "depth buckets of the haystack, at most 64   [5]"},
    {"--seed", NULL, MODE_FLAG_U64, offsetof(RulerOpts, seed), 0, 0, "S", "draws the items (the same for every --kv)   [1337]"},
    {"--json", NULL, MODE_FLAG_SWITCH, offsetof(RulerOpts, json), 0, 0, NULL, "one JSON line per task instead of a table"},
    {"--data", NULL, MODE_FLAG_STRING, offsetof(RulerOpts, data), 0, 0, "FILE",
     "filler text (its training split); +lowrank:R calibrates on it   [data/tinyshakespeare.txt]"},
    {0},
};

const Mode mode_ruler = {
    .name = "ruler",
    .summary = "a RULER-like retrieval suite (single needle, multikey, multiquery) by needle depth through a KV cache",
    .usage = "build/infer ruler --ckpt FILE [--kv SPEC] [--context N] [--items K] [--tasks LIST] [--query aware|agnostic]\n"
             "                  [--depths D] [--seed S] [--data FILE] [--json]",
    .about = "Each item is --context tokens of filler from --data holding needles (\"$kk:vvvv;\"; for a GGUF model a\n"
             "pass-key sentence), then a question and its answer. single: one needle; multikey: four with distinct\n"
             "keys, one queried; multiquery: two, both queried, counted when both answers are right. The queried\n"
             "needle's depth in the haystack is spread over --depths buckets. An item is right when every answer\n"
             "token is the cache's top-1 (teacher-forced). With --query aware the prompt ends at the answer, so\n"
             "SnapKV compresses having seen the question; with agnostic it ends before the question, which then goes\n"
             "in token by token. No full-cache reference runs beside it: run --kv full for that row.\n",
    .flags = ruler_flags,
    .opts_size = sizeof(RulerOpts),
    .defaults = ruler_set_defaults,
    .run = ruler_run,
};
