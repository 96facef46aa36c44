// A synthetic long-range recall task (passkey / multi-query associative recall) embedded in corpus text,
// so that eviction choices show: a sequence of corpus filler holds RECALL_PAIRS definitions "$kk:vvvv;"
// and, `distance` tokens after one of them, the same "$kk:" again, after which the model must reproduce the
// value "vvvv" (the query repeats the definition's marker and key, so an induction head can do it). Keys and
// values are lowercase letters; '$' is nearly absent from tiny Shakespeare, so it marks the task. With one
// pair it is passkey retrieval; with more, associative recall among distractors. A first design queried
// with a different marker ("&kk:"), which our 0.8M-parameter character models never learned in 2000 steps.
#ifndef KVLAB_RECALL_H
#define KVLAB_RECALL_H

#include "../common/common.h"
#include "loader.h"
#include "tokenizer.h"

#define RECALL_KEY_LEN 2
#define RECALL_VAL_LEN 4
#define RECALL_PAIRS 1 // definitions per sequence, the queried one included
#define RECALL_SPAN_LEN 16 // training only: random-letter spans written twice (see recall_train_sequence)
#define RECALL_ITEM_LEN (1 + RECALL_KEY_LEN + 1 + RECALL_VAL_LEN + 1) // "$kk:vvvv;"

// -1 with a message if the vocabulary lacks a character the task needs.
int recall_check_vocab(const Tokenizer *tok, char *err);
// Shortest and longest distance (definition start to query start) a sequence of n tokens allows.
int recall_min_distance(const Tokenizer *tok);
int recall_max_distance(const Tokenizer *tok, int n);
// Builds a sequence of n tokens: filler from the corpus's training split, RECALL_PAIRS definitions with
// distinct keys, and a query for one of them `distance` tokens after its definition, ending one token before
// the sequence end. With y NULL the sequence goes to x (n tokens); otherwise as a training pair, inputs
// x = seq[0, n-1) and targets y = seq[1, n). Returns the sequence index of the query's first value token:
// seq[ret, ret + *answer_len) is the answer (RECALL_VAL_LEN characters).
// A byte-level BPE model (a pretrained one) gets the task in sentences instead: " The pass key of the amber
// falcon is 4821." in the filler and, ending the sequence, " What is the pass key of the amber falcon? The pass
// key of the amber falcon is 4821" whose value tokens are the answer (y must be NULL).
int recall_sequence(const Tokenizer *tok, const Corpus *c, Rng *rng, int n, int distance, int *x, int *y,
                    int *answer_len);
// The training form of the task, denser than the eval's: corpus filler with recall_train_pairs(n) items
// "$kk:vvvv;" (distinct keys) and recall_train_spans(n) random-letter spans of RECALL_SPAN_LEN, each
// written twice at random non-overlapping places, so every second occurrence is recallable from its first,
// at every distance the window allows and anywhere in it. The spans are there for the copying mechanism
// to form at all: with one recallable value per window, or only short items, our small models never grew
// an induction head in the training budget; on windows where a third of the tokens are such copies they
// did, after ~5M tokens (BENCHMARKS.md, "Long-range recall"). Same x/y convention as recall_sequence.
int recall_train_pairs(int n);
int recall_train_spans(int n);
void recall_train_sequence(const Tokenizer *tok, const Corpus *c, Rng *rng, int n, int *x, int *y);

// The pieces of the task that the retrieval suite (data/ruler.h) builds its items from.
// n random lowercase letters.
void recall_random_letters(Rng *rng, char *out, int n);
// A random key into keys[i], distinct from keys[0..i).
void recall_random_key(Rng *rng, char (*keys)[RECALL_KEY_LEN], int i);
// Encodes text into out (at most cap tokens, and at most one per byte of the text) without the bos a BPE may put
// first (the text goes inside a sequence): the token count.
int recall_encode_text(const Tokenizer *tok, const char *text, int *out, int cap);
// The sentence form: a needle's name (one of 16 adjectives and one of 16 nouns: "amber", "falcon"), its value
// (4 digits, "4821"), and the texts: RECALL_WORDS_NEEDLE takes the adjective, the noun and the value; the
// question, the adjective and the noun twice; the answer, the value.
#define RECALL_WORDS_VALUE_SIZE 8
void recall_words_name(Rng *rng, const char **adj, const char **noun);
void recall_words_value(Rng *rng, char value[RECALL_WORDS_VALUE_SIZE]);
#define RECALL_WORDS_NEEDLE " The pass key of the %s %s is %s."
#define RECALL_WORDS_QUESTION " What is the pass key of the %s %s? The pass key of the %s %s is"
#define RECALL_WORDS_ANSWER " %s"

#endif
