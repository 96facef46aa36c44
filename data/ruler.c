// The retrieval suite's items (see ruler.h): the recall task's needles, questions and answers in corpus filler.
#include "ruler.h"

#include <string.h>

#include "recall.h"

static const char *const ruler_task_names[RULER_TASKS] = {"single", "multikey", "multiquery"};

const char *ruler_task_name(RulerTask task) {
    CHECK(task >= 0 && task < RULER_TASKS);
    return ruler_task_names[task];
}

int ruler_task_parse(const char *name, RulerTask *task) {
    for (int t = 0; t < RULER_TASKS; t++)
        if (strcmp(name, ruler_task_names[t]) == 0) {
            *task = (RulerTask)t;
            return 0;
        }
    return -1;
}

int ruler_task_needles(RulerTask task) { return task == RULER_MULTIKEY ? 4 : task == RULER_MULTIQUERY ? 2 : 1; }
int ruler_task_answers(RulerTask task) { return task == RULER_MULTIQUERY ? 2 : 1; }

// The texts. Characters: the definition, the question, the answer, and (multiquery) what comes between the
// first answer and the second. Sentences: the same, the question of multiquery naming both needles.
#define CHAR_NEEDLE "$%.2s:%.4s;"
#define CHAR_QUESTION "$%.2s:"
#define CHAR_ANSWER "%.4s"
#define CHAR_LINK ";$%.2s:"
#define WORDS_QUESTION2 " What are the pass keys of the %s %s and the %s %s? The pass key of the %s %s is"
#define WORDS_LINK ". The pass key of the %s %s is"

// The longest adjective or noun of the sentence form ("northern"): with it, a text's length in bytes bounds its
// tokens (a token covers at least one byte).
#define RULER_WORD_MAX 8
#define RULER_TEXT_MAX 256

static int needle_bound(const Tokenizer *tok) {
    if (!tok->bpe) return RECALL_ITEM_LEN;
    char text[RULER_TEXT_MAX];
    return snprintf(text, sizeof(text), RECALL_WORDS_NEEDLE, "xxxxxxxx", "xxxxxxxx", "0000");
}

// The question, the answers and the link between them.
static int tail_bound(const Tokenizer *tok, RulerTask task) {
    if (!tok->bpe) {
        int one = 1 + RECALL_KEY_LEN + 1 + RECALL_VAL_LEN;
        return task == RULER_MULTIQUERY ? 2 * one + 1 : one;
    }
    const char *w = "xxxxxxxx";
    char text[RULER_TEXT_MAX];
    int answer = snprintf(text, sizeof(text), RECALL_WORDS_ANSWER, "0000");
    if (task != RULER_MULTIQUERY) return snprintf(text, sizeof(text), RECALL_WORDS_QUESTION, w, w, w, w) + answer;
    return snprintf(text, sizeof(text), WORDS_QUESTION2, w, w, w, w, w, w) + answer +
           snprintf(text, sizeof(text), WORDS_LINK, w, w) + answer;
}

int ruler_min_context(const Tokenizer *tok, RulerTask task) {
    int first = tokenizer_bos_id(tok) >= 0;
    // a haystack twice the needles' length always has room for the next needle, wherever the others are
    return first + tail_bound(tok, task) + 2 * ruler_task_needles(task) * needle_bound(tok);
}

int ruler_check(const Tokenizer *tok, const Corpus *corpus, RulerTask task, int context, char *err) {
    if (recall_check_vocab(tok, err) != 0) return -1;
    int lo = ruler_min_context(tok, task);
    if (context < lo) {
        err_set(err, "the %s task needs a context of at least %d tokens (got %d)", ruler_task_name(task), lo, context);
        return -1;
    }
    if (corpus->n_train <= (size_t)context) {
        err_set(err, "the corpus's training split (%zu tokens) is too short for items of %d tokens", corpus->n_train,
                context);
        return -1;
    }
    return 0;
}

// Encodes text at out + *len (room up to cap), advancing *len: the tokens written.
static int put_text(const Tokenizer *tok, const char *text, int *out, int *len, int cap) {
    int k = recall_encode_text(tok, text, out + *len, cap - *len);
    CHECK(k > 0 && (tok->bpe || (size_t)k == strlen(text))); // ruler_check: every character is in the vocabulary
    *len += k;
    return k;
}

// A needle's name and value: characters, a key and 4 letters; sentences, an adjective, a noun and 4 digits.
typedef struct {
    char key[RECALL_KEY_LEN], val[RECALL_VAL_LEN];
    const char *adj, *noun;
    char value[RECALL_WORDS_VALUE_SIZE];
} Needle;

static void draw_needles(const Tokenizer *tok, Rng *rng, Needle *nd, int n) {
    char keys[RULER_MAX_NEEDLES][RECALL_KEY_LEN];
    for (int i = 0; i < n; i++) {
        if (!tok->bpe) {
            recall_random_key(rng, keys, i); // distinct keys
            memcpy(nd[i].key, keys[i], RECALL_KEY_LEN);
            recall_random_letters(rng, nd[i].val, RECALL_VAL_LEN);
            continue;
        }
        int fresh;
        do { // distinct names
            recall_words_name(rng, &nd[i].adj, &nd[i].noun);
            fresh = 1;
            for (int j = 0; j < i; j++) fresh &= nd[i].adj != nd[j].adj || nd[i].noun != nd[j].noun;
        } while (!fresh);
        CHECK(strlen(nd[i].adj) <= RULER_WORD_MAX && strlen(nd[i].noun) <= RULER_WORD_MAX);
        recall_words_value(rng, nd[i].value);
    }
}

// The question, the answers and the link into tail; answer_at relative to the tail's start. The tail's length.
static int write_tail(const Tokenizer *tok, const Needle *nd, RulerTask task, int *tail, int cap, RulerItem *it) {
    char text[RULER_TEXT_MAX];
    int len = 0;
    if (!tok->bpe) snprintf(text, sizeof(text), CHAR_QUESTION, nd[0].key);
    else if (task != RULER_MULTIQUERY)
        snprintf(text, sizeof(text), RECALL_WORDS_QUESTION, nd[0].adj, nd[0].noun, nd[0].adj, nd[0].noun);
    else
        snprintf(text, sizeof(text), WORDS_QUESTION2, nd[0].adj, nd[0].noun, nd[1].adj, nd[1].noun, nd[0].adj,
                 nd[0].noun);
    put_text(tok, text, tail, &len, cap);
    for (int a = 0; a < it->n_answers; a++) {
        if (a > 0) {
            if (!tok->bpe) snprintf(text, sizeof(text), CHAR_LINK, nd[a].key);
            else snprintf(text, sizeof(text), WORDS_LINK, nd[a].adj, nd[a].noun);
            put_text(tok, text, tail, &len, cap);
        }
        if (!tok->bpe) snprintf(text, sizeof(text), CHAR_ANSWER, nd[a].val);
        else snprintf(text, sizeof(text), RECALL_WORDS_ANSWER, nd[a].value);
        it->answer_at[a] = len;
        it->answer_len[a] = put_text(tok, text, tail, &len, cap);
    }
    return len;
}

static int overlaps(const RulerItem *it, int placed, int at, int len) {
    for (int j = 0; j < placed; j++)
        if (at < it->needle_at[j] + it->needle_len[j] && it->needle_at[j] < at + len) return 1;
    return 0;
}

void ruler_item(const Tokenizer *tok, const Corpus *corpus, RulerTask task, int n, int depths, uint64_t seed,
                int index, int *tokens, RulerItem *it) {
    CHECK(depths >= 1 && depths <= RULER_MAX_DEPTHS && index >= 0 && n >= ruler_min_context(tok, task));
    CHECK(corpus->n_train > (size_t)n);
    Rng rng; // this item's own: the same item whatever was drawn before it
    rng_init(&rng, seed ^ (0x9E3779B97F4A7C15ull * ((uint64_t)index + 1)) ^ ((uint64_t)task << 56));
    *it = (RulerItem){.tokens = tokens, .n = n, .n_needles = ruler_task_needles(task),
                      .n_answers = ruler_task_answers(task)};
    int bos = tokenizer_bos_id(tok), first = bos >= 0;
    size_t start = (size_t)rng_below(&rng, corpus->n_train - (size_t)n);
    if (first) tokens[0] = bos;
    for (int i = first; i < n; i++) tokens[i] = corpus->tokens[start + (size_t)i];

    Needle nd[RULER_MAX_NEEDLES];
    draw_needles(tok, &rng, nd, it->n_needles);
    int tail[RULER_TEXT_MAX * 2];
    int tail_len = write_tail(tok, nd, task, tail, RULER_TEXT_MAX * 2, it);
    CHECK(tail_len <= tail_bound(tok, task));
    it->question = n - tail_len;
    for (int a = 0; a < it->n_answers; a++) it->answer_at[a] += it->question;
    memcpy(tokens + it->question, tail, (size_t)tail_len * sizeof(int));

    int needle[RULER_MAX_NEEDLES][RULER_TEXT_MAX];
    for (int j = 0; j < it->n_needles; j++) {
        char text[RULER_TEXT_MAX];
        if (!tok->bpe) snprintf(text, sizeof(text), CHAR_NEEDLE, nd[j].key, nd[j].val);
        else snprintf(text, sizeof(text), RECALL_WORDS_NEEDLE, nd[j].adj, nd[j].noun, nd[j].value);
        it->needle_len[j] = 0;
        put_text(tok, text, needle[j], &it->needle_len[j], RULER_TEXT_MAX);
        CHECK(it->needle_len[j] <= needle_bound(tok));
    }
    // the queried needle at its depth
    it->bucket = index % depths;
    it->depth = (it->bucket + (double)rng_uniform(&rng)) / depths;
    int span = it->question - first - it->needle_len[0] + 1; // the starts that keep it whole before the question
    int at = first + (int)(it->depth * span);
    it->needle_at[0] = at < first + span ? at : first + span - 1;
    // the others at random, overlapping none placed before (a haystack of twice the needles' length always
    // has room: ruler_min_context); a scan from the start if the draws keep missing
    for (int j = 1; j < it->n_needles; j++) {
        int len = it->needle_len[j], last = it->question - len;
        it->needle_at[j] = -1;
        for (int tries = 0; tries < 256 && it->needle_at[j] < 0; tries++) {
            int p = first + (int)rng_below(&rng, (uint64_t)(last - first + 1));
            if (!overlaps(it, j, p, len)) it->needle_at[j] = p;
        }
        for (int p = first; p <= last && it->needle_at[j] < 0; p++)
            if (!overlaps(it, j, p, len)) it->needle_at[j] = p;
        CHECK(it->needle_at[j] >= 0);
    }
    for (int j = 0; j < it->n_needles; j++)
        memcpy(tokens + it->needle_at[j], needle[j], (size_t)it->needle_len[j] * sizeof(int));
}
