// The items of a RULER-like long-context retrieval suite (build/infer ruler, infer/kvruler.c), built from the
// recall task's pieces (data/recall.h): corpus filler (the haystack) holds needles, and the item ends with a
// question and its answer. A character model's needle is a definition "$kk:vvvv;", its question "$kk:" and its
// answer "vvvv"; a byte-level BPE model's needle is " The pass key of the amber falcon is 4821.", its question
// " What is the pass key of the amber falcon? The pass key of the amber falcon is" and its answer " 4821".
// The tasks:
//   single:     one needle; it is queried.
//   multikey:   four needles with distinct keys; the first is queried, the other three are distractors.
//   multiquery: two needles with distinct keys, both queried, the first then the second (characters:
//               "$k1:" v1 ";$k2:" v2; sentences: " What are the pass keys of the A and the B? The pass key of
//               the A is" v1 ". The pass key of the B is" v2); the item counts when both answers are right.
// The queried (first) needle sits at a depth of the haystack: item i falls in depth bucket i % depths and its
// depth d is uniform in the bucket [b/depths, (b+1)/depths); the needle starts at first + floor(d * span), where
// first is the haystack's first token (1 after a bos, else 0) and span the number of starts that keep the needle
// whole before the question, so d = 0 is the haystack's start and d -> 1 ends the needle at the question. The
// other needles go at random places that overlap no needle. Every item is drawn from an Rng seeded by (seed,
// task, index) alone: the same items whatever cache evaluates them.
#ifndef KVLAB_RULER_H
#define KVLAB_RULER_H

#include <stdint.h>

#include "../common/common.h"
#include "loader.h"
#include "tokenizer.h"

typedef enum { RULER_SINGLE, RULER_MULTIKEY, RULER_MULTIQUERY, RULER_TASKS } RulerTask;

#define RULER_MAX_NEEDLES 4
#define RULER_MAX_ANSWERS 2
#define RULER_MAX_DEPTHS 64

// "single", "multikey", "multiquery".
const char *ruler_task_name(RulerTask task);
// The task named `name` into *task; -1 for an unknown name.
int ruler_task_parse(const char *name, RulerTask *task);
int ruler_task_needles(RulerTask task); // 1, 4, 2
int ruler_task_answers(RulerTask task); // 1, 1, 2

// The shortest context the task's items fit in with this tokenizer (room for the question and the answers, and
// a haystack of at least twice the needles' length).
int ruler_min_context(const Tokenizer *tok, RulerTask task);
// Whether the task can be written: the vocabulary has its characters, the context is long enough, the corpus's
// training split is longer than the context. -1 with one line in err.
int ruler_check(const Tokenizer *tok, const Corpus *corpus, RulerTask task, int context, char *err);

typedef struct {
    int *tokens; // the item, n tokens (the caller's buffer)
    int n;
    int n_needles;
    int needle_at[RULER_MAX_NEEDLES], needle_len[RULER_MAX_NEEDLES]; // needle 0 (and 1, multiquery) is queried
    int question;                                                    // the question's first token: after the haystack
    int n_answers;
    int answer_at[RULER_MAX_ANSWERS], answer_len[RULER_MAX_ANSWERS]; // answer a is needle a's value
    int bucket;                                                      // needle 0's depth bucket
    double depth;                                                    // needle 0's depth, in [bucket/depths, (bucket+1)/depths)
} RulerItem;

// Item `index` of the task: n tokens (n >= ruler_min_context; ruler_check passed) into tokens, the layout into
// *it. The tokens from the question to the end are the question, the answers and, multiquery, the text between
// them; the item ends with its last answer token.
void ruler_item(const Tokenizer *tok, const Corpus *corpus, RulerTask task, int n, int depths, uint64_t seed,
                int index, int *tokens, RulerItem *it);

#endif
