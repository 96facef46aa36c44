// Loss and perplexity of a token sequence under a model, scored in consecutive windows of the model's
// context: each window of up to block_size + 1 tokens predicts its last block_size tokens from the tokens
// before them in the same window (so every token but the first is scored exactly once).
#ifndef KVLAB_EVAL_H
#define KVLAB_EVAL_H

#include <stddef.h>

#include "../layers/model.h"

typedef struct {
    size_t n_scored;   // tokens predicted
    double mean_loss;  // nats per token
    double perplexity; // exp(mean_loss)
} EvalResult;

// Returns -1 with a message when fewer than 2 tokens are given.
int eval_tokens(Model *m, const int *tokens, size_t n, EvalResult *out, char *err);

#endif
