// Corpus -> tokens, the 90/10 train/validation split, random training windows from a seeded RNG and a
// fixed, deterministic set of validation windows.
#ifndef KVLAB_LOADER_H
#define KVLAB_LOADER_H

#include <stddef.h>

#include "../common/common.h"
#include "tokenizer.h"

typedef struct {
    int *tokens;     // (n_tokens)
    size_t n_tokens;
    size_t n_train;  // tokens [0, n_train) train, [n_train, n_tokens) validate
    const Tokenizer *tok; // the tokenizer it was encoded with (must outlive the corpus)
} Corpus;

// Reads a text file. With build_vocab the tokenizer is built from the whole file (as nanoGPT does, so ids
// match shakespeare_char); otherwise tok is used as given and bytes outside it are skipped (counted in *n_oov).
int corpus_load(Corpus *c, Tokenizer *tok, const char *path, int build_vocab, size_t *n_oov, char *err);
// Checks that both splits hold at least one window of T + 1 tokens.
int corpus_check_context(const Corpus *c, int T, char *err);
void corpus_free(Corpus *c);

// B windows of T + 1 tokens at random offsets of the training split: inputs and targets (B, T). With
// recall_mix > 0 each window is, with that probability, a recall-task sequence instead (data/recall.h)
// with its distance drawn uniformly from what T + 1 tokens allow.
void loader_train_batch(const Corpus *c, Rng *rng, int B, int T, float recall_mix, int *inputs, int *targets);
// Validation window i of n evenly spaced ones (deterministic): inputs and targets (T).
void loader_val_window(const Corpus *c, int i, int n, int T, int *inputs, int *targets);

#endif
