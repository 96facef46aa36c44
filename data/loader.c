#include "loader.h"

#include "recall.h"

#include <stdlib.h>
#include <string.h>

int corpus_load(Corpus *c, Tokenizer *tok, const char *path, int build_vocab, size_t *n_oov, char *err) {
    memset(c, 0, sizeof(*c));
    size_t len = 0;
    unsigned char *text = common_read_file(path, &len, err);
    if (!text) return -1;
    if (len < 2) {
        err_set(err, "corpus '%s' is too short (%zu bytes)", path, len);
        free(text);
        return -1;
    }
    size_t n_train_bytes = len * 9 / 10;
    if (build_vocab && tokenizer_build(tok, text, len, err) != 0) {
        free(text);
        return -1;
    }
    c->tokens = common_calloc(len + 2, sizeof(int)); // a BPE may put a bos before each split
    size_t oov_train = 0, oov_val = 0;
    c->n_train = tokenizer_encode(tok, text, n_train_bytes, c->tokens, &oov_train);
    c->n_tokens = c->n_train + tokenizer_encode(tok, text + n_train_bytes, len - n_train_bytes,
                                                c->tokens + c->n_train, &oov_val);
    if (n_oov) *n_oov = oov_train + oov_val;
    c->tok = tok;
    free(text);
    return 0;
}

int corpus_check_context(const Corpus *c, int T, char *err) {
    size_t need = (size_t)T + 1;
    if (c->n_train < need || c->n_tokens - c->n_train < need) {
        err_set(err, "corpus too small for context %d: the train split has %zu tokens and the validation "
                     "split %zu; each needs at least %zu",
                T, c->n_train, c->n_tokens - c->n_train, need);
        return -1;
    }
    return 0;
}

void corpus_free(Corpus *c) {
    common_free(c->tokens);
    memset(c, 0, sizeof(*c));
}

void loader_train_batch(const Corpus *c, Rng *rng, int B, int T, float recall_mix, int *inputs, int *targets) {
    size_t span = c->n_train - (size_t)T; // valid starts: [0, n_train - T - 1]
    for (int b = 0; b < B; b++) {
        // the extra draw happens only with a mix, so runs without one keep their data order
        if (recall_mix > 0.0f && rng_uniform(rng) < recall_mix) {
            recall_train_sequence(c->tok, c, rng, T + 1, inputs + (size_t)b * T, targets + (size_t)b * T);
            continue;
        }
        size_t start = (size_t)rng_below(rng, span);
        memcpy(inputs + (size_t)b * T, c->tokens + start, (size_t)T * sizeof(int));
        memcpy(targets + (size_t)b * T, c->tokens + start + 1, (size_t)T * sizeof(int));
    }
}

void loader_val_window(const Corpus *c, int i, int n, int T, int *inputs, int *targets) {
    size_t n_val = c->n_tokens - c->n_train;
    size_t span = n_val - (size_t)T - 1; // last valid start offset within the split
    size_t start = c->n_train + (n > 1 ? span * (size_t)i / (size_t)(n - 1) : 0);
    memcpy(inputs, c->tokens + start, (size_t)T * sizeof(int));
    memcpy(targets, c->tokens + start + 1, (size_t)T * sizeof(int));
}
