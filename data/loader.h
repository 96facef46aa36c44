// Corpus -> tokens, the 90/10 train/validation split, random training windows from a seeded RNG and a
// fixed, deterministic set of validation windows. A corpus whose tokenizer has a start symbol
// (tokenizer_bos_id: a character vocabulary holding STX, which build/train --bos adds) gets it at position 0 of
// every window, training, recall and validation alike: inputs [BOS, t0 .. t_{T-2}], targets [t0 .. t_{T-1}].
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

// The start symbol put first in every window: tokenizer_bos_id(c->tok), -1 for none (or no tokenizer).
int corpus_bos(const Corpus *c);

// corpus_load's vocabulary argument: use tok as given, build it from the text, or build it from the text and
// add the start symbol STX (TOKENIZER_BOS_BYTE; build/train --bos).
enum { CORPUS_VOCAB_GIVEN = 0, CORPUS_VOCAB_BUILD = 1, CORPUS_VOCAB_BUILD_BOS = 2 };

// Reads a text file. With a CORPUS_VOCAB_BUILD* mode the tokenizer is built from the whole file (as nanoGPT
// does, so ids match shakespeare_char); otherwise tok is used as given and bytes outside it are skipped
// (counted in *n_oov). Byte 0x02 (STX) is the start symbol's: a text that holds it is refused when the
// vocabulary is built from it, or when the given character vocabulary holds STX (it would read as a start).
int corpus_load(Corpus *c, Tokenizer *tok, const char *path, int build_vocab, size_t *n_oov, char *err);
// Checks that both splits hold at least one window of T + 1 tokens.
int corpus_check_context(const Corpus *c, int T, char *err);
void corpus_free(Corpus *c);

// B windows of T + 1 tokens at random offsets of the training split: inputs and targets (B, T). With
// recall_mix > 0 each window is, with that probability, a recall-task sequence instead (data/recall.h)
// with its distance drawn uniformly from what T + 1 tokens allow. With a start symbol (corpus_bos) each
// window is BOS and T tokens of text or recall sequence: inputs [BOS, t0 .. t_{T-2}], targets [t0 .. t_{T-1}]
// (the offsets are drawn as without it; a recall sequence is then T tokens long).
void loader_train_batch(const Corpus *c, Rng *rng, int B, int T, float recall_mix, int *inputs, int *targets);
// Validation window i of n evenly spaced ones (deterministic): inputs and targets (T); with a start symbol,
// BOS first as in loader_train_batch (the same offsets).
void loader_val_window(const Corpus *c, int i, int n, int T, int *inputs, int *targets);

#endif
