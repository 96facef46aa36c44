// Loss and perplexity of a token sequence under a model, scored in consecutive windows: each window of up
// to T + 1 tokens predicts its last T tokens from the tokens before them in the same window (so every token
// but the first is scored exactly once). T is the model's context, or fewer when the text is shorter: the
// text bounds what the run allocates, never the checkpoint alone.
//
// A window runs one of two ways. The full forward (layers/model.h) holds every layer's activations,
// (L, NH, T, T) attention probabilities included; where those would pass EVAL_FORWARD_MAX_BYTES the window
// streams instead: rows in chunks through the decode step (decode/step.h) over a full fp32 KV cache, memory
// linear in T (the cache, and one (NH, T) row of attention scratch). The two agree to float rounding
// (tests/test_decode.c compares the decode step with the full forward).
#ifndef KVLAB_EVAL_H
#define KVLAB_EVAL_H

#include <stddef.h>
#include <stdint.h>

#include "../layers/model.h"

// The most bytes of activations the full forward may take for one window before scoring streams instead.
#define EVAL_FORWARD_MAX_BYTES ((uint64_t)1 << 30)

typedef enum {
    EVAL_PATH_AUTO,    // the full forward when it fits EVAL_FORWARD_MAX_BYTES, else streaming
    EVAL_PATH_FORWARD, // always the full forward
    EVAL_PATH_STREAM,  // always streaming (CPU backend only)
} EvalPath;

typedef struct {
    size_t n_scored;   // tokens predicted
    double mean_loss;  // nats per token (not finite when the model's outputs are not)
    double perplexity; // exp(mean_loss)
    int window;        // T: tokens predicted per window
    int streamed;      // 1 when the windows ran through the decode step
    uint64_t bytes;    // what the chosen path allocated, estimated before allocating
} EvalResult;

// Bytes of the full forward's activations for one window of T tokens (layers/transformer.c's inference
// activations), and of the streaming path's cache and buffers.
uint64_t eval_forward_bytes(const ModelConfig *c, int T);
uint64_t eval_stream_bytes(const ModelConfig *c, int T);

// Scores tokens in consecutive windows of `window` tokens (0: the model's context). Returns -1 with a message
// when fewer than 2 tokens are given, or when the window cannot fit this machine's
// physical memory (the message names the bytes it needs).
int eval_tokens(Model *m, const int *tokens, size_t n, int window, EvalPath path, EvalResult *out, char *err);

#endif
