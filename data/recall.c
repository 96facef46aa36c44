#include "recall.h"

#include <string.h>

int recall_check_vocab(const Tokenizer *tok, char *err) {
    if (tok->bpe) { // byte-level: every text encodes, but a vocabulary may lack the value's digits
        for (char d = '0'; d <= '9'; d++) {
            int ids[2]; // one byte: at most a bos and one token
            size_t n = tokenizer_encode(tok, (const unsigned char *)&d, 1, ids, NULL);
            if (n == 0 || ids[n - 1] == bpe_bos_prepended(tok->bpe)) {
                err_set(err, "the recall task needs the digit '%c', which the model's vocabulary lacks", d);
                return -1;
            }
        }
        return 0;
    }
    const char *need = "$:;abcdefghijklmnopqrstuvwxyz";
    for (const char *p = need; *p; p++)
        if (tok->byte_to_id[(unsigned char)*p] < 0) {
            err_set(err, "the recall task needs the character '%c', which the model's vocabulary lacks", *p);
            return -1;
        }
    return 0;
}

// The sentence form (byte-level BPE models): a definition is at most RECALL_WORDS_DEF tokens, the question
// and its answer at most RECALL_WORDS_TAIL.
// Bounds in tokens that hold whatever the vocabulary: a token covers at least one byte of the text (< 64 bytes for
// a definition, < 128 for the question and the answer).
#define RECALL_WORDS_DEF 64
#define RECALL_WORDS_TAIL 128

int recall_min_distance(const Tokenizer *tok) { return tok->bpe ? RECALL_WORDS_DEF : RECALL_ITEM_LEN; }
int recall_max_distance(const Tokenizer *tok, int n) {
    return tok->bpe ? n - RECALL_WORDS_TAIL : n - 1 - RECALL_ITEM_LEN;
}

// Sequence element i lives at x[i] (i < n - 1 when y is given, else i < n) and, shifted, at y[i - 1].
typedef struct {
    int *x, *y;
    int n;
} Seq;

static void seq_put(const Seq *s, int i, int token) {
    if (!s->y || i < s->n - 1) s->x[i] = token;
    if (s->y && i >= 1) s->y[i - 1] = token;
}

static void write_item(const Tokenizer *tok, const Seq *s, int at, char mark, const char *key, const char *val) {
    char item[RECALL_ITEM_LEN + 1];
    snprintf(item, sizeof(item), "%c%.*s:%.*s;", mark, RECALL_KEY_LEN, key, RECALL_VAL_LEN, val);
    for (int i = 0; i < RECALL_ITEM_LEN; i++) seq_put(s, at + i, tok->byte_to_id[(unsigned char)item[i]]);
}

void recall_random_letters(Rng *rng, char *out, int n) {
    for (int i = 0; i < n; i++) out[i] = (char)('a' + rng_below(rng, 26));
}

void recall_random_key(Rng *rng, char (*keys)[RECALL_KEY_LEN], int i) {
    int fresh;
    do { // distinct keys
        recall_random_letters(rng, keys[i], RECALL_KEY_LEN);
        fresh = 1;
        for (int j = 0; j < i; j++) fresh &= memcmp(keys[i], keys[j], RECALL_KEY_LEN) != 0;
    } while (!fresh);
}

static const char *const recall_adjectives[16] = {"amber", "silver", "crimson", "quiet", "northern", "hollow", "golden",
                                                   "frozen", "distant", "hidden", "copper", "pale", "broken",
                                                   "ancient", "velvet", "iron"};
static const char *const recall_nouns[16] = {"falcon", "harbor", "lantern", "orchard", "bridge", "tower", "river",
                                             "meadow", "engine", "garden", "mirror", "castle", "forest", "anchor",
                                             "violin", "compass"};

void recall_words_name(Rng *rng, const char **adj, const char **noun) {
    *adj = recall_adjectives[rng_below(rng, 16)];
    *noun = recall_nouns[rng_below(rng, 16)];
}

void recall_words_value(Rng *rng, char value[RECALL_WORDS_VALUE_SIZE]) {
    snprintf(value, RECALL_WORDS_VALUE_SIZE, "%04d", (int)rng_below(rng, 10000));
}

int recall_encode_text(const Tokenizer *tok, const char *text, int *out, int cap) {
    size_t len = strlen(text);
    int *tmp = common_calloc(len + 1, sizeof(int));
    size_t n = tokenizer_encode(tok, (const unsigned char *)text, len, tmp, NULL);
    size_t skip = n > 0 && tok->bpe && tmp[0] == bpe_bos_prepended(tok->bpe);
    n -= skip;
    CHECK(n <= (size_t)cap && n <= len);
    memcpy(out, tmp + skip, n * sizeof(int));
    common_free(tmp);
    return (int)n;
}

// The task in sentences: corpus filler, " The pass key of the amber falcon is 4821." `distance` tokens before
// the question " What is the pass key of the amber falcon? The pass key of the amber falcon is", which is
// followed by the value's tokens (" 4821") and ends the sequence.
static int recall_sequence_words(const Tokenizer *tok, const Corpus *c, Rng *rng, int n, int distance, int *x,
                                 int *answer_len) {
    size_t start = (size_t)rng_below(rng, c->n_train - (size_t)n);
    for (int i = 0; i < n; i++) x[i] = c->tokens[start + i];
    const char *adj, *noun;
    recall_words_name(rng, &adj, &noun);
    char value[RECALL_WORDS_VALUE_SIZE], text[256];
    recall_words_value(rng, value);
    int def[RECALL_WORDS_DEF], tail[RECALL_WORDS_TAIL];
    snprintf(text, sizeof(text), RECALL_WORDS_NEEDLE, adj, noun, value);
    int n_def = recall_encode_text(tok, text, def, RECALL_WORDS_DEF);
    snprintf(text, sizeof(text), RECALL_WORDS_QUESTION, adj, noun, adj, noun);
    int n_question = recall_encode_text(tok, text, tail, RECALL_WORDS_TAIL);
    snprintf(text, sizeof(text), RECALL_WORDS_ANSWER, value);
    int n_answer = recall_encode_text(tok, text, tail + n_question, RECALL_WORDS_TAIL - n_question);
    CHECK(n_answer > 0); // the digits encode (recall_check_vocab)
    int question = n - n_question - n_answer, target = question - distance;
    CHECK(target >= 0 && n_def <= distance);
    memcpy(x + target, def, (size_t)n_def * sizeof(int));
    memcpy(x + question, tail, (size_t)(n_question + n_answer) * sizeof(int));
    *answer_len = n_answer;
    return question + n_question;
}

int recall_sequence(const Tokenizer *tok, const Corpus *c, Rng *rng, int n, int distance, int *x, int *y,
                    int *answer_len) {
    CHECK(distance >= recall_min_distance(tok) && distance <= recall_max_distance(tok, n));
    if (tok->bpe) {
        CHECK(!y); // no training form: a pretrained model reads the sentences as they are
        return recall_sequence_words(tok, c, rng, n, distance, x, answer_len);
    }
    *answer_len = RECALL_VAL_LEN;
    size_t start = (size_t)rng_below(rng, c->n_train - (size_t)n);
    Seq seq = {x, y, n};
    for (int i = 0; i < n; i++) seq_put(&seq, i, c->tokens[start + i]);
    char keys[RECALL_PAIRS][RECALL_KEY_LEN], vals[RECALL_PAIRS][RECALL_VAL_LEN];
    for (int i = 0; i < RECALL_PAIRS; i++) {
        recall_random_key(rng, keys, i);
        recall_random_letters(rng, vals[i], RECALL_VAL_LEN);
    }
    int query = n - 1 - RECALL_ITEM_LEN, target = query - distance;
    write_item(tok, &seq, target, '$', keys[0], vals[0]);
    // distractor definitions wherever they fit without overlapping the others or the query
    int placed[RECALL_PAIRS] = {target}, n_placed = 1;
    for (int i = 1; i < RECALL_PAIRS; i++) {
        for (int tries = 0; tries < 64; tries++) {
            int p = (int)rng_below(rng, (uint64_t)(query - RECALL_ITEM_LEN + 1)), clash = 0;
            for (int j = 0; j < n_placed; j++) clash |= p < placed[j] + RECALL_ITEM_LEN && placed[j] < p + RECALL_ITEM_LEN;
            if (!clash) {
                write_item(tok, &seq, p, '$', keys[i], vals[i]);
                placed[n_placed++] = p;
                break;
            }
        }
    }
    write_item(tok, &seq, query, '$', keys[0], vals[0]); // the query repeats the definition's marker and key
    return query + 1 + RECALL_KEY_LEN + 1;
}

int recall_train_spans(int n) {
    if (n < 2 * (RECALL_SPAN_LEN + RECALL_ITEM_LEN)) return 0; // short windows: items only
    return n / 128 > 1 ? n / 128 : 1;
}

int recall_train_pairs(int n) {
    // the spans and items, each twice, take about 2/3 of the window
    int k = (n - 2 * recall_train_spans(n) * RECALL_SPAN_LEN) / (4 * RECALL_ITEM_LEN);
    return k < 1 ? 1 : k;
}

void recall_train_sequence(const Tokenizer *tok, const Corpus *c, Rng *rng, int n, int *x, int *y) {
    int k = recall_train_pairs(n), ns = recall_train_spans(n), slots = 2 * (k + ns); // each written twice
    CHECK(2 * (k * RECALL_ITEM_LEN + ns * RECALL_SPAN_LEN) <= n);
    size_t start = (size_t)rng_below(rng, c->n_train - (size_t)n);
    Seq seq = {x, y, n};
    for (int i = 0; i < n; i++) seq_put(&seq, i, c->tokens[start + i]);
    char(*keys)[RECALL_KEY_LEN] = common_calloc((size_t)k, RECALL_KEY_LEN);
    char(*vals)[RECALL_VAL_LEN] = common_calloc((size_t)k, RECALL_VAL_LEN);
    char(*spans)[RECALL_SPAN_LEN] = common_calloc((size_t)ns, RECALL_SPAN_LEN);
    int *pos = common_calloc((size_t)slots, sizeof(int)), *label = common_calloc((size_t)slots, sizeof(int));
    for (int i = 0; i < k; i++) {
        recall_random_key(rng, keys, i);
        recall_random_letters(rng, vals[i], RECALL_VAL_LEN);
    }
    for (int i = 0; i < ns; i++) recall_random_letters(rng, spans[i], RECALL_SPAN_LEN);
    // label j / 2: items 0..k-1, then the spans (k..k+ns-1); each twice, in shuffled order
    for (int j = 0; j < slots; j++) label[j] = j / 2;
    for (int j = slots - 1; j > 0; j--) {
        int r = (int)rng_below(rng, (uint64_t)j + 1), t = label[j];
        label[j] = label[r];
        label[r] = t;
    }
    // non-overlapping slots, uniform: sorted offsets into the free space, each slot then shifted by the
    // lengths of the slots before it
    int free_len = n - 2 * (k * RECALL_ITEM_LEN + ns * RECALL_SPAN_LEN);
    for (int j = 0; j < slots; j++) pos[j] = (int)rng_below(rng, (uint64_t)free_len + 1);
    for (int j = 1; j < slots; j++) // insertion sort: slots is small
        for (int i = j; i > 0 && pos[i - 1] > pos[i]; i--) {
            int t = pos[i];
            pos[i] = pos[i - 1];
            pos[i - 1] = t;
        }
    for (int j = 0, shift = 0; j < slots; j++) {
        if (label[j] < k) {
            write_item(tok, &seq, pos[j] + shift, '$', keys[label[j]], vals[label[j]]);
            shift += RECALL_ITEM_LEN;
        } else {
            const char *span = spans[label[j] - k];
            for (int i = 0; i < RECALL_SPAN_LEN; i++) seq_put(&seq, pos[j] + shift + i, tok->byte_to_id[(unsigned char)span[i]]);
            shift += RECALL_SPAN_LEN;
        }
    }
    common_free(label);
    common_free(pos);
    common_free(spans);
    common_free(vals);
    common_free(keys);
}
