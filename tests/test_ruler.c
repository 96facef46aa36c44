// The retrieval suite, suite `ruler`: the items of data/ruler.h (needles where the depth says, distinct keys,
// answers that are the queried needles' values, the same items for a seed whatever came before), the eval of
// infer/kvruler.h through caches (query-aware and -agnostic agree on a full cache and differ where SnapKV
// compresses; a budget that holds the whole item is the full cache), and build/infer ruler as a program (bad
// flags are one line and exit 1; the JSON lines hold what docs/kv.md says).
#include <criterion/criterion.h>

#include <jansson.h>
#include <string.h>

#include "../checkpoints/gguf.h"
#include "../data/recall.h"
#include "../data/ruler.h"
#include "../infer/kvruler.h"
#include "../layers/cpu_ops.h"
#include "cli_util.h"

TestSuite(ruler, .init = cliutil_setup, .fini = cliutil_teardown, .timeout = 120);

static void load_shakespeare(Tokenizer *tok, Corpus *c) {
    char err[ERR_LEN];
    cr_assert_eq(corpus_load(c, tok, "data/tinyshakespeare.txt", 1, NULL, err), 0, "%s", err);
}

// The layout of a character item against its text: every needle "$kk:vvvv;" inside the haystack, no two
// overlapping, keys distinct; the queried needle at its depth; each answer the value of its needle, right after
// "$kk:" with that needle's key; the item ending with the last answer.
static void check_char_item(const Tokenizer *tok, RulerTask task, const RulerItem *it, int index, int depths) {
    char text[1024];
    cr_assert_lt(it->n, (int)sizeof(text));
    cr_assert_eq(tokenizer_decode(tok, it->tokens, (size_t)it->n, text), 0);
    int first = tokenizer_bos_id(tok) >= 0;
    if (first) cr_assert_eq(it->tokens[0], tokenizer_bos_id(tok));
    cr_assert_eq(it->n_needles, ruler_task_needles(task));
    cr_assert_eq(it->n_answers, ruler_task_answers(task));
    for (int j = 0; j < it->n_needles; j++) {
        const char *nd = text + it->needle_at[j];
        cr_assert_eq(it->needle_len[j], RECALL_ITEM_LEN);
        cr_assert(it->needle_at[j] >= first && it->needle_at[j] + RECALL_ITEM_LEN <= it->question, "inside the haystack");
        cr_assert(nd[0] == '$' && nd[3] == ':' && nd[8] == ';', "a definition: %.9s", nd);
        for (int k = 0; k < j; k++) {
            cr_assert(it->needle_at[j] + 9 <= it->needle_at[k] || it->needle_at[k] + 9 <= it->needle_at[j], "no overlap");
            cr_assert(memcmp(nd + 1, text + it->needle_at[k] + 1, RECALL_KEY_LEN) != 0, "distinct keys");
        }
    }
    // the depth: bucket index % depths, the needle at first + floor(depth * span)
    cr_assert_eq(it->bucket, index % depths);
    cr_assert(it->depth >= (double)it->bucket / depths && it->depth < (double)(it->bucket + 1) / depths);
    int span = it->question - first - RECALL_ITEM_LEN + 1;
    cr_assert_eq(it->needle_at[0], first + (int)(it->depth * span), "item %d: depth %g", index, it->depth);
    // the question, the answers
    cr_assert_eq(it->answer_at[0], it->question + 1 + RECALL_KEY_LEN + 1);
    for (int a = 0; a < it->n_answers; a++) {
        const char *nd = text + it->needle_at[a], *q = text + it->answer_at[a] - (1 + RECALL_KEY_LEN + 1);
        cr_assert_eq(it->answer_len[a], RECALL_VAL_LEN);
        cr_assert(q[0] == '$' && memcmp(q + 1, nd + 1, RECALL_KEY_LEN) == 0 && q[3] == ':', "the query names needle %d's key", a);
        cr_assert_eq(memcmp(text + it->answer_at[a], nd + 4, RECALL_VAL_LEN), 0, "the answer is needle %d's value", a);
        if (a > 0) cr_assert_eq(q[-1], ';');
    }
    cr_assert_eq(it->answer_at[it->n_answers - 1] + it->answer_len[it->n_answers - 1], it->n);
}

Test(ruler, char_items_layout_and_determinism) {
    Tokenizer tok;
    Corpus c;
    load_shakespeare(&tok, &c);
    char err[ERR_LEN];
    enum { N = 128, DEPTHS = 5 };
    int a[N], b[N];
    for (int t = 0; t < RULER_TASKS; t++) {
        cr_assert_eq(ruler_check(&tok, &c, (RulerTask)t, N, err), 0, "%s", err);
        int differs = 0;
        for (int i = 0; i < 60; i++) {
            RulerItem it, again, other;
            ruler_item(&tok, &c, (RulerTask)t, N, DEPTHS, 42, i, a, &it);
            check_char_item(&tok, (RulerTask)t, &it, i, DEPTHS);
            ruler_item(&tok, &c, (RulerTask)t, N, DEPTHS, 42, i, b, &again); // after other items: the same
            cr_assert_arr_eq(a, b, sizeof(a));
            cr_assert_eq(again.needle_at[0], it.needle_at[0]);
            cr_assert_eq(again.depth, it.depth);
            ruler_item(&tok, &c, (RulerTask)t, N, DEPTHS, 43, i, b, &other);
            differs += memcmp(a, b, sizeof(a)) != 0;
        }
        cr_assert_eq(differs, 60, "another seed, other items");
    }
    // too short a context for four needles: one line
    cr_assert_eq(ruler_check(&tok, &c, RULER_MULTIKEY, 60, err), -1);
    cr_assert(strstr(err, "multikey task needs a context of at least"), "%s", err);
    cr_assert_eq(ruler_min_context(&tok, RULER_SINGLE), 8 + 2 * 9);
    corpus_free(&c);
}

// A vocabulary with the start symbol (build/train --bos): it opens every item and the haystack starts after it.
Test(ruler, char_items_start_with_the_bos) {
    Tokenizer plain, tok;
    Corpus c;
    load_shakespeare(&plain, &c);
    unsigned char bytes[256];
    bytes[0] = TOKENIZER_BOS_BYTE; // below '\n', the corpus's smallest byte: every id moves up by one
    memcpy(bytes + 1, plain.id_to_byte, (size_t)plain.vocab_size);
    char err[ERR_LEN];
    cr_assert_eq(tokenizer_from_bytes(&tok, bytes, plain.vocab_size + 1, err), 0, "%s", err);
    cr_assert_eq(tokenizer_bos_id(&tok), 0);
    for (size_t i = 0; i < c.n_tokens; i++) c.tokens[i]++;
    c.tok = &tok;
    int x[96];
    for (int t = 0; t < RULER_TASKS; t++)
        for (int i = 0; i < 30; i++) {
            RulerItem it;
            ruler_item(&tok, &c, (RulerTask)t, 96, 3, 7, i, x, &it);
            cr_assert_eq(x[0], 0);
            check_char_item(&tok, (RulerTask)t, &it, i, 3);
        }
    corpus_free(&c);
}

// The sentence form (a GGUF model's byte-level BPE): the needles name distinct things, the question names the
// queried ones, the answers are their values' tokens.
static char *token_text(const Tokenizer *tok, const int *ids, int n) {
    size_t total = 0, len = 0, k;
    for (int i = 0; i < n; i++) {
        cr_assert(tokenizer_token_bytes(tok, ids[i], &k));
        total += k;
    }
    char *s = calloc(total + 1, 1);
    for (int i = 0; i < n; i++) {
        const unsigned char *b = tokenizer_token_bytes(tok, ids[i], &k);
        memcpy(s + len, b, k);
        len += k;
    }
    return s;
}

Test(ruler, sentence_items_layout) {
    Model m;
    Tokenizer tok;
    Corpus c;
    char err[ERR_LEN];
    cr_assert_eq(gguf_or_checkpoint_load("tests/data/gguf/tiny-f32.gguf", &m, &ops_cpu, &tok, err), 0, "%s", err);
    cr_assert(tok.bpe);
    cr_assert_eq(corpus_load(&c, &tok, "data/tinyshakespeare.txt", 0, NULL, err), 0, "%s", err);
    int n = ruler_min_context(&tok, RULER_MULTIKEY), *x = calloc((size_t)n, sizeof(int));
    cr_assert_eq(ruler_check(&tok, &c, RULER_MULTIKEY, n, err), 0, "%s", err);
    cr_assert_eq(ruler_check(&tok, &c, RULER_MULTIKEY, n - 1, err), -1);
    for (int t = 0; t < RULER_TASKS; t++)
        for (int i = 0; i < 20; i++) {
            RulerItem it;
            ruler_item(&tok, &c, (RulerTask)t, n, 4, 9, i, x, &it);
            if (tokenizer_bos_id(&tok) >= 0) cr_assert_eq(x[0], tokenizer_bos_id(&tok));
            char *question = token_text(&tok, x + it.question, it.answer_at[0] - it.question);
            char names[RULER_MAX_NEEDLES][64];
            for (int j = 0; j < it.n_needles; j++) {
                char *nd = token_text(&tok, x + it.needle_at[j], it.needle_len[j]);
                char adj[32], noun[32], value[8];
                cr_assert_eq(sscanf(nd, " The pass key of the %31[a-z] %31[a-z] is %4[0-9].", adj, noun, value), 3, "%s", nd);
                cr_assert_eq(strlen(value), 4);
                snprintf(names[j], sizeof(names[j]), "%s %s", adj, noun);
                for (int k = 0; k < j; k++) cr_assert_str_neq(names[j], names[k], "distinct names");
                if (j < it.n_answers) {
                    char *ans = token_text(&tok, x + it.answer_at[j], it.answer_len[j]), want[8];
                    snprintf(want, sizeof(want), " %s", value);
                    cr_assert_str_eq(ans, want, "answer %d is needle %d's value", j, j);
                    cr_assert(strstr(question, names[j]), "the question names needle %d: %s", j, question);
                    free(ans);
                }
                free(nd);
            }
            if (t == RULER_MULTIQUERY) {
                char *link = token_text(&tok, x + it.answer_at[0] + it.answer_len[0],
                                        it.answer_at[1] - it.answer_at[0] - it.answer_len[0]);
                cr_assert(strstr(link, names[1]) && strstr(link, "The pass key of the"), "%s", link);
                free(link);
            }
            cr_assert_eq(it.answer_at[it.n_answers - 1] + it.answer_len[it.n_answers - 1], n);
            int span = it.question - (tokenizer_bos_id(&tok) >= 0) - it.needle_len[0] + 1;
            cr_assert_eq(it.needle_at[0], (tokenizer_bos_id(&tok) >= 0) + (int)(it.depth * span));
            free(question);
        }
    free(x);
    corpus_free(&c);
    tokenizer_free(&tok);
    model_free(&m);
}

// ---- the eval through caches --------------------------------------------------------------------------------

enum { CTX = 96, ITEMS = 15 };

typedef struct {
    int n;
    int prompt[ITEMS], answer_tokens[ITEMS], correct[ITEMS];
    int predicted[ITEMS][RULER_MAX_ANSWER_TOKENS];
    size_t bytes_first[ITEMS];
    int question[ITEMS], first_answer[ITEMS];
    unsigned long long item_hash[ITEMS];
} Trace;

static void trace_item(void *user, const RulerItem *it, const RulerOutcome *o) {
    Trace *tr = user;
    cr_assert_lt(tr->n, ITEMS);
    int i = tr->n++;
    tr->prompt[i] = o->prompt_tokens;
    tr->answer_tokens[i] = o->answer_tokens;
    tr->correct[i] = o->correct;
    memcpy(tr->predicted[i], o->predicted, sizeof(o->predicted));
    tr->bytes_first[i] = o->bytes_first;
    tr->question[i] = it->question;
    tr->first_answer[i] = it->answer_at[0];
    unsigned long long h = 1469598103934665603ull;
    for (int t = 0; t < it->n; t++) h = (h ^ (unsigned)it->tokens[t]) * 1099511628211ull;
    tr->item_hash[i] = h;
    // right means every answer token predicted, in order
    int k = 0, right = 1;
    for (int a = 0; a < it->n_answers; a++)
        for (int j = 0; j < it->answer_len[a]; j++) right &= o->predicted[k++] == it->tokens[it->answer_at[a] + j];
    cr_assert_eq(k, o->answer_tokens);
    cr_assert_eq(o->correct, right);
}

// A random model over the Shakespeare characters, sharp enough that caches that hold different tokens predict
// differently.
static void ruler_model(Model *m, int vocab) {
    ModelConfig cfg = {.vocab_size = vocab, .n_layer = 2, .n_head = 4, .n_kv_head = 2, .n_embd = 32, .n_hidden = 64,
                       .block_size = CTX, .rope_theta = 10000.0f, .norm_eps = 1e-5f, .dropout = 0.0f};
    model_init(m, &cfg, &ops_cpu);
    model_init_weights(m, 17);
    for (size_t i = 0; i < m->n_params; i++) m->params_memory[i] *= 4.0f;
}

static RulerResult run_spec(const Model *m, const Tokenizer *tok, const Corpus *c, const char *text, RulerTask task,
                            int agnostic, Trace *tr) {
    KVSpec spec;
    char err[ERR_LEN];
    cr_assert_eq(kv_spec_parse(&spec, text, err), 0, "%s", err);
    memset(tr, 0, sizeof(*tr));
    RulerConfig cfg = {.task = task, .context = CTX, .items = ITEMS, .depths = 5, .agnostic = agnostic, .seed = 3,
                       .on_item = trace_item, .user = tr};
    RulerResult r;
    cr_assert_eq(kv_eval_ruler(m, &spec, tok, c, &cfg, &r, err), 0, "%s", err);
    cr_assert_eq(tr->n, ITEMS);
    cr_assert_eq(r.items, ITEMS);
    int sum = 0, n = 0;
    for (int b = 0; b < 5; b++) {
        sum += r.by_depth_correct[b];
        n += r.by_depth_n[b];
        cr_assert_eq(r.by_depth_n[b], 3, "15 items over 5 depths");
    }
    cr_assert_eq(sum, r.correct);
    cr_assert_eq(n, ITEMS);
    return r;
}

static int same_answers(const Trace *a, const Trace *b) {
    for (int i = 0; i < ITEMS; i++) {
        if (a->answer_tokens[i] != b->answer_tokens[i] || a->correct[i] != b->correct[i]) return 0;
        if (memcmp(a->predicted[i], b->predicted[i], (size_t)a->answer_tokens[i] * sizeof(int)) != 0) return 0;
    }
    return 1;
}

Test(ruler, eval_query_modes_and_budgets) {
    Tokenizer tok;
    Corpus c;
    load_shakespeare(&tok, &c);
    Model m;
    ruler_model(&m, tok.vocab_size);
    static Trace full, full_agn, tr, tr_agn;
    for (int t = 0; t < RULER_TASKS; t++) {
        RulerTask task = (RulerTask)t;
        RulerResult rf = run_spec(&m, &tok, &c, "full", task, 0, &full);
        RulerResult rfa = run_spec(&m, &tok, &c, "full", task, 1, &full_agn);
        // the prompts: aware ends at the first answer, agnostic before the question
        for (int i = 0; i < ITEMS; i++) {
            cr_assert_eq(full.prompt[i], full.first_answer[i]);
            cr_assert_eq(full_agn.prompt[i], full_agn.question[i]);
            cr_assert_eq(full.first_answer[i] - full.question[i], 1 + RECALL_KEY_LEN + 1);
            cr_assert_eq(full.answer_tokens[i], ruler_task_answers(task) * RECALL_VAL_LEN);
            cr_assert_eq(full.bytes_first[i], full_agn.bytes_first[i], "a full cache holds every token either way");
        }
        // a full cache does not depend on where the prompt ends
        cr_assert(same_answers(&full, &full_agn), "%s: aware and agnostic differ on the full cache", ruler_task_name(task));
        cr_assert_eq(rf.correct, rfa.correct);
        cr_assert_gt(rf.prompt_tokens_mean, rfa.prompt_tokens_mean);
        // budgets that hold the whole item are the full cache, item by item, and the items do not depend on the spec
        char spec[64];
        const char *whole[] = {"window:%d", "snapkv:%d,8", "sink:8,window:%d", "h2o:%d,8"};
        for (size_t s = 0; s < sizeof(whole) / sizeof(whole[0]); s++) {
            snprintf(spec, sizeof(spec), whole[s], s == 0 ? CTX : CTX - 8); // budgets of the context exactly
            for (int agn = 0; agn < 2; agn++) {
                RulerResult r = run_spec(&m, &tok, &c, spec, task, agn, &tr);
                cr_assert(same_answers(&tr, agn ? &full_agn : &full), "%s (%s): not the full cache's answers", spec,
                          agn ? "agnostic" : "aware");
                cr_assert_eq(memcmp(tr.item_hash, full.item_hash, sizeof(tr.item_hash)), 0, "the same items");
                cr_assert_eq(r.correct, rf.correct);
            }
        }
        // SnapKV that evicts: compressed before the question (agnostic), the question's rows are held on top of
        // the budget when the answer starts
        run_spec(&m, &tok, &c, "snapkv:16,4", task, 0, &tr);
        RulerResult ra = run_spec(&m, &tok, &c, "snapkv:16,4", task, 1, &tr_agn);
        for (int i = 0; i < ITEMS; i++) {
            cr_assert_eq(tr_agn.prompt[i] + 1 + RECALL_KEY_LEN + 1, tr.prompt[i]);
            cr_assert_gt(tr_agn.bytes_first[i], tr.bytes_first[i]);
            cr_assert_lt(tr.bytes_first[i], full.bytes_first[i]);
        }
        cr_assert_lt(ra.kv_bytes_mean, rfa.kv_bytes_mean);
        cr_assert_leq(ra.kv_bytes_mean, (double)ra.kv_bytes_peak);
        // a short window loses tokens: its answers are not the full cache's everywhere
        run_spec(&m, &tok, &c, "window:8", task, 0, &tr);
        cr_assert(!same_answers(&tr, &full), "window:8 predicts as the full cache: the eval does not read the cache");
        cr_assert_eq(memcmp(tr.item_hash, full.item_hash, sizeof(tr.item_hash)), 0, "the same items");
    }
    model_free(&m);
    corpus_free(&c);
}

// An item is right when its answer tokens are the top-1: the counts follow the outcomes, and the same run twice
// gives the same result.
Test(ruler, eval_counts_are_the_outcomes) {
    Tokenizer tok;
    Corpus c;
    load_shakespeare(&tok, &c);
    Model m;
    ruler_model(&m, tok.vocab_size);
    static Trace a, b;
    RulerResult ra = run_spec(&m, &tok, &c, "sink:2,window:16", RULER_MULTIQUERY, 0, &a);
    RulerResult rb = run_spec(&m, &tok, &c, "sink:2,window:16", RULER_MULTIQUERY, 0, &b);
    cr_assert(same_answers(&a, &b));
    cr_assert_eq(ra.correct, rb.correct);
    cr_assert_eq(ra.kv_bytes_mean, rb.kv_bytes_mean);
    int correct = 0;
    for (int i = 0; i < ITEMS; i++) correct += a.correct[i];
    cr_assert_eq(ra.correct, correct);
    cr_assert_eq(ra.prompt_tokens_mean, (double)(CTX - 2 * RECALL_VAL_LEN - 5));
    cr_assert_eq(ra.fp16_bytes_full, 2.0 * 2 * 2 * (32 / 4 * 2) * ra.prompt_tokens_mean, "n_layer 2, K and V, kv_dim 16, 2 bytes");
    model_free(&m);
    corpus_free(&c);
}

// ---- build/infer ruler --------------------------------------------------------------------------------------

Test(ruler, cli_errors_and_json) {
    const char *ckpt = cliutil_tmp("shakespeare.ckpt");
    Run r = RUN("train", "--preset", "tiny", "--steps", "1", "--out", ckpt, "--quiet");
    cliutil_expect_ok(&r, "train on the bundled corpus");
    cliutil_run_free(&r);
    r = RUN("infer", "ruler", "--ckpt", ckpt, "--tasks", "single,haystack");
    EXPECT_ERROR(&r, "infer ruler", "unknown task 'haystack'", "single, multikey, multiquery");
    cliutil_run_free(&r);
    r = RUN("infer", "ruler", "--ckpt", ckpt, "--tasks", "single,single");
    EXPECT_ERROR(&r, "infer ruler", "twice");
    cliutil_run_free(&r);
    r = RUN("infer", "ruler", "--ckpt", ckpt, "--tasks", "single,");
    EXPECT_ERROR(&r, "infer ruler", "bad --tasks");
    cliutil_run_free(&r);
    r = RUN("infer", "ruler", "--ckpt", ckpt, "--items", "0");
    EXPECT_ERROR(&r, "infer ruler", "--items");
    cliutil_run_free(&r);
    r = RUN("infer", "ruler", "--ckpt", ckpt, "--depths", "65");
    EXPECT_ERROR(&r, "infer ruler", "--depths");
    cliutil_run_free(&r);
    r = RUN("infer", "ruler", "--ckpt", ckpt, "--query", "sometimes");
    EXPECT_ERROR(&r, "infer ruler", "bad --query 'sometimes'", "aware, agnostic");
    cliutil_run_free(&r);
    r = RUN("infer", "ruler", "--ckpt", ckpt, "--context", "40");
    EXPECT_ERROR(&r, "infer ruler", "multikey task needs a context of at least");
    cliutil_run_free(&r);
    r = RUN("infer", "ruler", "--ckpt", ckpt, "--streams", "4");
    EXPECT_ERROR(&r, "infer ruler", "--streams does not apply");
    cliutil_run_free(&r);
    r = RUN("infer", "ruler", "--ckpt", ckpt, "--kv", "window:0");
    EXPECT_ERROR(&r, "infer ruler", "bad --kv");
    cliutil_run_free(&r);
    // a vocabulary without '$'
    const char *lower = cliutil_train_tiny(cliutil_write_corpus(), "lower.ckpt");
    r = RUN("infer", "ruler", "--ckpt", lower, "--data", cliutil_write_corpus());
    EXPECT_ERROR(&r, "infer ruler", "needs the character");
    cliutil_run_free(&r);
    r = RUN("infer", "ruler", "--help");
    cliutil_expect_ok(&r, "infer ruler --help");
    cr_assert(strstr(r.out, "--tasks LIST") && strstr(r.out, "--query MODE") && strstr(r.out, "agnostic"), "%s", r.out);
    cliutil_run_free(&r);

    r = RUN("infer", "ruler", "--ckpt", ckpt, "--kv", "snapkv:16,4", "--context", "64", "--items", "7", "--tasks",
            "multiquery,single", "--query", "agnostic", "--depths", "4", "--json");
    cliutil_expect_ok(&r, "infer ruler --json");
    const char *tasks[] = {"multiquery", "single"};
    char *line = r.out;
    for (int k = 0; k < 2; k++) {
        char *nl = strchr(line, '\n');
        cr_assert(nl, "one line per task: %s", r.out);
        *nl = 0;
        json_error_t je;
        json_t *o = json_loads(line, 0, &je);
        cr_assert(o, "%s: %s", je.text, line);
        cr_assert_str_eq(json_string_value(json_object_get(o, "spec")), "snapkv:16,4");
        cr_assert_str_eq(json_string_value(json_object_get(o, "task")), tasks[k]);
        cr_assert_str_eq(json_string_value(json_object_get(o, "query")), "agnostic");
        cr_assert_eq(json_integer_value(json_object_get(o, "context")), 64);
        cr_assert_eq(json_integer_value(json_object_get(o, "items")), 7);
        json_t *bd = json_object_get(o, "by_depth");
        cr_assert_eq(json_object_size(bd), 4);
        const char *keys[] = {"0.125", "0.375", "0.625", "0.875"};
        int n = 0, correct = 0;
        for (int b = 0; b < 4; b++) {
            json_t *pair = json_object_get(bd, keys[b]);
            cr_assert(json_is_array(pair) && json_array_size(pair) == 2, "%s", line);
            correct += (int)json_integer_value(json_array_get(pair, 0));
            n += (int)json_integer_value(json_array_get(pair, 1));
        }
        cr_assert_eq(n, 7);
        cr_assert_eq(correct, json_integer_value(json_object_get(o, "correct")));
        const char *nums[] = {"acc", "kv_bytes_mean", "kv_bytes_peak", "fp16_bytes_full", "prompt_tokens_mean", "seconds"};
        for (size_t i = 0; i < sizeof(nums) / sizeof(nums[0]); i++)
            cr_assert(json_is_number(json_object_get(o, nums[i])), "%s in %s", nums[i], line);
        json_decref(o);
        line = nl + 1;
    }
    cr_assert_eq(*line, 0, "two lines: %s", r.out);
    cliutil_run_free(&r);
    // a GGUF model: the sentence form, every task
    r = RUN("infer", "ruler", "--model", "tests/data/gguf/tiny-f32.gguf", "--kv", "snapkv:64,16", "--context", "600",
            "--items", "2", "--json");
    cliutil_expect_ok(&r, "infer ruler on a GGUF model");
    cr_assert(strstr(r.out, "\"task\": \"single\"") && strstr(r.out, "\"task\": \"multikey\"") &&
                  strstr(r.out, "\"task\": \"multiquery\""),
              "%s", r.out);
    cliutil_run_free(&r);
    // the table
    r = RUN("infer", "ruler", "--ckpt", ckpt, "--context", "96", "--items", "3");
    cliutil_expect_ok(&r, "infer ruler");
    cr_assert(strstr(r.out, "single") && strstr(r.out, "multikey") && strstr(r.out, "multiquery") &&
                  strstr(r.out, "0.10") && strstr(r.out, "0.90"),
              "%s", r.out);
    cliutil_run_free(&r);
}
