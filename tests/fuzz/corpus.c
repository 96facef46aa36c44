// Fuzz target: the character tokenizer and the corpus loader (data/tokenizer.c, data/loader.c) and what
// training draws from a corpus (random windows, validation windows, the recall task of data/recall.c).
//
// The input is a corpus file. It is loaded as build/train does (the vocabulary built from the whole text),
// then for each context T the trainer could use (the ones corpus_check_context accepts) training batches with
// and without the recall mix and every validation window are drawn; then loaded against a tokenizer built
// from the first half only (out-of-vocabulary bytes are counted); and its first bytes are offered as a
// stored tokenizer (tokenizer_from_bytes, as a checkpoint's). Invariants: refusals are one non-empty line;
// with its own vocabulary every byte is a token and decoding gives the text back; tokens + out-of-vocabulary
// bytes = bytes; windows hold valid ids; nothing leaks (ASan).
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../data/loader.h"
#include "../../data/recall.h"
#include "../../data/tokenizer.h"
#include "fuzz.h"

static void check_err(const char *err) {
    fuzz_check(err[0] != 0, "a refusal without a message");
    fuzz_check(strchr(err, '\n') == NULL, "a refusal over several lines: %s", err);
}

static void check_ids(const int *ids, size_t n, int vocab) {
    for (size_t i = 0; i < n; i++) fuzz_check(ids[i] >= 0 && ids[i] < vocab, "id %d at %zu (vocab %d)", ids[i], i, vocab);
}

// The recall task's training form fits a window of n tokens (recall_train_sequence's own precondition).
static int recall_fits(int n) {
    return 2 * (recall_train_pairs(n) * RECALL_ITEM_LEN + recall_train_spans(n) * RECALL_SPAN_LEN) <= n;
}

static void windows(const Corpus *c, const Tokenizer *tok) {
    static const int contexts[] = {1, 2, 7, 16, 33, 64};
    char err[ERR_LEN];
    int recall = recall_check_vocab(tok, err) == 0;
    for (size_t i = 0; i < sizeof contexts / sizeof contexts[0]; i++) {
        int T = contexts[i], B = 3;
        err[0] = 0;
        if (corpus_check_context(c, T, err) != 0) {
            check_err(err);
            continue;
        }
        int *x = calloc((size_t)B * T, sizeof(int)), *y = calloc((size_t)B * T, sizeof(int));
        if (!x || !y) abort();
        Rng rng;
        rng_init(&rng, 1234 + (uint64_t)T);
        loader_train_batch(c, &rng, B, T, 0.0f, x, y);
        check_ids(x, (size_t)B * T, tok->vocab_size);
        check_ids(y, (size_t)B * T, tok->vocab_size);
        for (int b = 0; b < B; b++)
            for (int t = 0; t + 1 < T; t++) fuzz_check(x[b * T + t + 1] == y[b * T + t], "targets are not shifted");
        // recall_train_sequence asserts that its items fit the window; build/train refuses --mix recall with
        // a shorter context ("needs a context of at least 18 tokens"), so only windows that fit are drawn.
        if (recall && recall_fits(T + 1)) {
            loader_train_batch(c, &rng, B, T, 1.0f, x, y);
            check_ids(x, (size_t)B * T, tok->vocab_size);
            check_ids(y, (size_t)B * T, tok->vocab_size);
        }
        for (int w = 0; w < 4; w++) {
            loader_val_window(c, w, 4, T, x, y);
            check_ids(x, (size_t)T, tok->vocab_size);
            check_ids(y, (size_t)T, tok->vocab_size);
        }
        free(x);
        free(y);
    }
}

int fuzz_corpus(const uint8_t *data, size_t size) {
    if (size > (1u << 20)) return 0;
    char path[64], err[ERR_LEN] = "";
    int fd = fuzz_memfile(data, size, path, sizeof path);
    if (fd < 0) return 0;

    // 1. as build/train loads its corpus: the vocabulary from the whole text
    Tokenizer tok;
    Corpus c;
    size_t oov = 12345;
    if (corpus_load(&c, &tok, path, 1, &oov, err) != 0) {
        check_err(err);
    } else {
        fuzz_check(tok.vocab_size >= 1 && tok.vocab_size <= 256, "vocab %d", tok.vocab_size);
        fuzz_check(oov == 0 && c.n_tokens == size, "own vocabulary: %zu tokens, %zu oov of %zu bytes", c.n_tokens,
                   oov, size);
        fuzz_check(c.n_train <= c.n_tokens, "split %zu of %zu", c.n_train, c.n_tokens);
        fuzz_check(tokenizer_find_oov(&tok, data, size) == -1, "a byte outside its own vocabulary");
        check_ids(c.tokens, c.n_tokens, tok.vocab_size);
        char *back = malloc(c.n_tokens + 1);
        if (!back) abort();
        fuzz_check(tokenizer_decode(&tok, c.tokens, c.n_tokens, back) == 0, "decode refused its own ids");
        fuzz_check(memcmp(back, data, size) == 0, "decode does not give the text back");
        free(back);
        windows(&c, &tok);
        corpus_free(&c);
    }

    // 2. against a vocabulary of the first half only (as build/infer --eval with a checkpoint's tokenizer)
    if (size >= 2) {
        Tokenizer half;
        err[0] = 0;
        if (tokenizer_build(&half, data, size / 2, err) == 0) {
            err[0] = 0;
            oov = 0;
            if (corpus_load(&c, &half, path, 0, &oov, err) == 0) {
                fuzz_check(c.n_tokens + oov == size, "%zu tokens + %zu oov != %zu bytes", c.n_tokens, oov, size);
                check_ids(c.tokens, c.n_tokens, half.vocab_size);
                long first = tokenizer_find_oov(&half, data, size);
                fuzz_check((first < 0) == (oov == 0), "find_oov %ld but %zu oov", first, oov);
                corpus_free(&c);
            } else {
                check_err(err);
            }
        } else {
            check_err(err);
        }
    }
    close(fd);

    // 3. the first bytes as a stored tokenizer (a checkpoint's id_to_byte list)
    int n = size < 256 ? (int)size : 256;
    int increasing = n >= 1;
    for (int i = 1; i < n; i++) increasing &= data[i - 1] < data[i];
    Tokenizer stored;
    err[0] = 0;
    int rc = tokenizer_from_bytes(&stored, data, n, err);
    if (rc != 0) check_err(err);
    fuzz_check((rc == 0) == increasing, "tokenizer_from_bytes %d on a list that is %sstrictly increasing", rc,
               increasing ? "" : "not ");
    if (rc == 0) {
        for (int i = 0; i < n; i++) fuzz_check(stored.byte_to_id[data[i]] == i, "byte_to_id broken at %d", i);
        int ids[4] = {0, n - 1, n / 2, 0};
        char out[5];
        fuzz_check(tokenizer_decode(&stored, ids, 4, out) == 0, "decode of valid ids refused");
        ids[0] = n;
        fuzz_check(tokenizer_decode(&stored, ids, 1, out) == -1, "decode of id %d accepted (vocab %d)", n, n);
    }
    return 0;
}
