// Corpus loading and the training and validation windows (loader.h).
#include "loader.h"

#include "recall.h"

#include <stdlib.h>
#include <string.h>

// The vocabulary built from the text, plus STX for CORPUS_VOCAB_BUILD_BOS (the bytes stay sorted).
static int corpus_build_vocab(Tokenizer *tok, const unsigned char *text, size_t len, int with_bos, char *err) {
    if (tokenizer_build(tok, text, len, err) != 0) return -1;
    if (!with_bos) return 0;
    unsigned char bytes[256]; // the text holds at most 255 distinct bytes: not STX
    int n = 0, put = 0;
    for (int i = 0; i < tok->vocab_size; i++) {
        if (!put && tok->id_to_byte[i] > TOKENIZER_BOS_BYTE) bytes[n++] = TOKENIZER_BOS_BYTE, put = 1;
        bytes[n++] = tok->id_to_byte[i];
    }
    if (!put) bytes[n++] = TOKENIZER_BOS_BYTE;
    return tokenizer_from_bytes(tok, bytes, n, err);
}

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
    int bos_held = build_vocab != CORPUS_VOCAB_GIVEN || (!tok->bpe && tokenizer_bos_id(tok) >= 0);
    const unsigned char *stx = bos_held ? memchr(text, TOKENIZER_BOS_BYTE, len) : NULL;
    if (stx) {
        err_set(err, "'%s' holds byte 0x02 (STX) at offset %zu: that byte is reserved for the start symbol of "
                     "build/train --bos", path, (size_t)(stx - text));
        free(text);
        return -1;
    }
    if (build_vocab != CORPUS_VOCAB_GIVEN &&
        corpus_build_vocab(tok, text, len, build_vocab == CORPUS_VOCAB_BUILD_BOS, err) != 0) {
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

int corpus_bos(const Corpus *c) { return c->tok ? tokenizer_bos_id(c->tok) : -1; }

// One window from the T + 1 tokens at seq (T with a start symbol, which then comes first).
static void loader_window(int bos, const int *seq, int T, int *inputs, int *targets) {
    if (bos < 0) {
        memcpy(inputs, seq, (size_t)T * sizeof(int));
        memcpy(targets, seq + 1, (size_t)T * sizeof(int));
        return;
    }
    inputs[0] = bos;
    memcpy(inputs + 1, seq, (size_t)(T - 1) * sizeof(int));
    if (targets != seq) memcpy(targets, seq, (size_t)T * sizeof(int));
}

void loader_train_batch(const Corpus *c, Rng *rng, int B, int T, float recall_mix, int *inputs, int *targets) {
    size_t span = c->n_train - (size_t)T; // valid starts: [0, n_train - T - 1]
    int bos = corpus_bos(c);
    for (int b = 0; b < B; b++) {
        int *in = inputs + (size_t)b * T, *tg = targets + (size_t)b * T;
        // the extra draw happens only with a mix, so runs without one keep their data order
        if (recall_mix > 0.0f && rng_uniform(rng) < recall_mix) {
            if (bos < 0) {
                recall_train_sequence(c->tok, c, rng, T + 1, in, tg);
            } else { // T tokens of sequence after the start symbol: built in the targets, then shifted in
                recall_train_sequence(c->tok, c, rng, T, tg, NULL);
                loader_window(bos, tg, T, in, tg);
            }
            continue;
        }
        size_t start = (size_t)rng_below(rng, span);
        loader_window(bos, c->tokens + start, T, in, tg);
    }
}

void loader_val_window(const Corpus *c, int i, int n, int T, int *inputs, int *targets) {
    size_t n_val = c->n_tokens - c->n_train;
    size_t span = n_val - (size_t)T - 1; // last valid start offset within the split
    size_t start = c->n_train + (n > 1 ? span * (size_t)i / (size_t)(n - 1) : 0);
    loader_window(corpus_bos(c), c->tokens + start, T, inputs, targets);
}
