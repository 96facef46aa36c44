// The Llama-style decoder, written once over a table of ops (layers/ops.h) so the CPU and CUDA backends
// cannot drift: token embedding tied to the output projection, RMSNorm, RoPE, causal self-attention with
// n_head query heads and n_kv_head key/value heads (MHA, GQA and MQA are one path), SwiGLU MLP, residuals,
// residual dropout.
#ifndef KVLAB_MODEL_H
#define KVLAB_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "../common/common.h"
#include "ops.h"

typedef struct {
    int vocab_size;   // V
    int n_layer;      // L
    int n_head;       // query heads
    int n_kv_head;    // key/value heads: n_head (MHA), G (GQA), 1 (MQA); divides n_head
    int n_embd;       // C = n_head * head_dim
    int n_hidden;     // H, SwiGLU hidden width
    int block_size;   // maximum context T the model is trained on
    float rope_theta; // RoPE base
    float norm_eps;   // RMSNorm epsilon
    float dropout;    // residual dropout probability while training
} ModelConfig;

// Checks a config a user may have built from flags; returns -1 with a one-line reason in err.
int model_config_validate(const ModelConfig *cfg, char *err);
int model_head_dim(const ModelConfig *cfg);
int model_kv_dim(const ModelConfig *cfg); // n_kv_head * head_dim
// Llama's SwiGLU width rule: 8/3 * C rounded up to a multiple of 32.
int model_default_hidden(int n_embd);

#define NUM_PARAM_TENSORS 11
typedef struct {
    float *wte;        // (V, C) embedding, tied to the output projection
    float *attn_norm;  // (L, C)
    float *wq;         // (L, C, C)      out x in
    float *wk;         // (L, KVC, C)
    float *wv;         // (L, KVC, C)
    float *wo;         // (L, C, C)
    float *mlp_norm;   // (L, C)
    float *w1;         // (L, H, C)      gate
    float *w3;         // (L, H, C)      up
    float *w2;         // (L, C, H)      down
    float *final_norm; // (C)
} ParamTensors;

// Element counts of each tensor in ParamTensors order.
void model_param_sizes(const ModelConfig *cfg, size_t sizes[NUM_PARAM_TENSORS]);
size_t model_param_count(const ModelConfig *cfg);
// Points the ParamTensors fields into one contiguous block laid out in the order above.
void model_param_point(ParamTensors *t, float *memory, const ModelConfig *cfg);
// Which tensors get weight decay (the matrices, not the norm gains).
int model_param_is_decayed(int tensor_index);
// The field name of tensor i in ParamTensors ("wte", "attn_norm", ...).
const char *model_param_name(int tensor_index);
// Finds the first NaN or infinite element of params (n_params floats in ParamTensors order, host memory):
// returns 1 and writes "tensor NAME holds VALUE at element I" (I counted inside the tensor) into what, or
// returns 0 when every weight is finite.
int model_params_describe_nonfinite(const ModelConfig *cfg, const float *params, char *what, size_t len);

#define NUM_ACT_TENSORS 23
#define ACT_PROBS 21 // the index of probs in ActTensors order
typedef struct {
    float *resid;      // (L+1, B, T, C) residual stream entering each layer; resid[L] feeds the final norm
    float *ln1;        // (L, B, T, C)
    float *ln1_rstd;   // (L, B, T)
    float *q;          // (L, B, T, C)   after RoPE
    float *k;          // (L, B, T, KVC) after RoPE
    float *v;          // (L, B, T, KVC)
    float *att;        // (L, B, NH, T, T) softmax probabilities (causal, upper triangle zero); with flash
                       // attention (L, B, NH, T), each row's log-sum-exp
    float *atty;       // (L, B, T, C)   attention output before the output projection
    float *attproj;    // (L, B, T, C)   output projection, before dropout
    float *attdrop;    // (L, B, T, C)   dropout keep-scale (0 or 1/(1-p)); empty when dropout == 0
    float *resid_mid;  // (L, B, T, C)   resid + dropout(attproj)
    float *ln2;        // (L, B, T, C)
    float *ln2_rstd;   // (L, B, T)
    float *h1;         // (L, B, T, H)   gate pre-activation
    float *h3;         // (L, B, T, H)   up projection
    float *hg;         // (L, B, T, H)   silu(h1) * h3
    float *mlp;        // (L, B, T, C)   down projection, before dropout
    float *mlpdrop;    // (L, B, T, C)   dropout keep-scale; empty when dropout == 0
    float *lnf;        // (B, T, C)
    float *lnf_rstd;   // (B, T)
    float *logits;     // (B, T, V)
    float *probs;      // (B, T, V)      softmax of logits (a scoring forward's); with gradients allocated it is
                       //                grad_acts.dlogits' memory, which a backward overwrites
    float *losses;     // (B, T)
} ActTensors;

// Gradients of activations. Only the residual stream's gradient crosses layers, so a layer's buffers are
// reused by the layers below it; the ones the weight gradients read come in two sets (layer l uses set l % 2,
// the residual stream's three: l % 3), so that the weight gradients of layer l can be computed while the
// layer below already runs its backward (transformer.c: the chunked schedule).
#define NUM_GRAD_ACT_TENSORS 16
typedef struct {
    float *dres;       // (3, B, T, C) gradient of resid[l] (the residual stream entering layer l) in set l % 3
    float *dmid;       // (2, B, T, C) gradient of resid_mid of layer l
    float *dmlp;       // (2, B, T, C) gradient of mlp after the dropout scale; empty when dropout == 0
    float *dproj;      // (2, B, T, C) gradient of attproj after the dropout scale; empty when dropout == 0
    float *dh1;        // (2, B, T, H)
    float *dh3;        // (2, B, T, H)
    float *dq;         // (2, B, T, C)
    float *dk;         // (2, B, T, KVC)
    float *dv;         // (2, B, T, KVC)
    float *dln;        // (B, T, C)   gradient of a norm's output (ln1, ln2 or lnf)
    float *dnorm;      // (B, T, C)   gradient a norm passes to its input, before the residual add
    float *datty;      // (B, T, C)
    float *dhg;        // (B, T, H)
    float *dlogits;    // (B, T, V)
    float *scratch;    // (B, NH, T, T) attention backward; empty with flash attention
    float *dnorm_w;    // (5, B, C)   norm weight gradients per chunk of sequences, summed in chunk order:
                       //             attn_norm sets 0-1, mlp_norm sets 0-1, final_norm
} GradActs;

// How model_forward / model_backward spread a batch over the OpenMP threads (transformer.c):
//   AUTO     chunked when the batch makes at least two chunks per thread, else whole (the default);
//   WHOLE    every op over the whole batch, each op parallel inside (and the only schedule of a device backend);
//   CHUNKED  one sequence per chunk whenever B >= 2 (tests use it to check the chunked path on small shapes).
typedef enum { MODEL_SCHEDULE_AUTO, MODEL_SCHEDULE_WHOLE, MODEL_SCHEDULE_CHUNKED } ModelSchedule;

// How training attention runs (the op table's two forms, the same function):
//   NAIVE  materialises the (B,NH,T,T) probabilities, saved for backward: the reference (the default);
//   FLASH  tiled with an online softmax: saves only out and lse (B,NH,T), the backward recomputes the tiles.
typedef enum { MODEL_ATTENTION_NAIVE, MODEL_ATTENTION_FLASH } ModelAttention;

typedef struct {
    ModelConfig cfg;
    const Ops *ops;

    size_t n_params;
    float *params_memory; // one allocation for all weights
    ParamTensors params;
    float *grads_memory;  // same layout, allocated with the activations
    ParamTensors grads;

    int act_B, act_T;     // activation buffers are sized for this batch and context
    float *acts_memory;   // one allocation for all activations
    ActTensors acts;
    float *grad_acts_memory;
    GradActs grad_acts;

    // On a device backend: the tokens and targets of the last forward, uploaded (B, T), and the per-position
    // losses downloaded for the mean. NULL on the CPU, where the ops read the caller's arrays directly.
    int *tokens_dev, *targets_dev;
    float *losses_host;

    Rng dropout_rng;
    int dropout_active;   // whether the last forward drew dropout masks (the backward then applies them)
    int loss_fused;       // whether the last forward (train with targets) also wrote the loss gradient, dlogits
    ModelSchedule schedule; // AUTO unless a test forces one
    ModelAttention attention; // NAIVE unless set; a change takes effect at the next model_alloc_acts
    int act_flash;          // the attention form the activations were allocated for
    float mean_loss;      // of the last forward with targets; -1 without targets
} Model;

// Allocates parameters (zeroed) in the backend's memory. Activations are allocated by model_alloc_acts.
void model_init(Model *m, const ModelConfig *cfg, const Ops *ops);
// Moves the parameters to another backend's memory (e.g. after loading a checkpoint on the CPU, to train
// on CUDA) and frees the activations; the next model_alloc_acts allocates them there.
void model_to_backend(Model *m, const Ops *ops);
// Copies the parameters out to / in from host memory (n_params floats), whatever the backend.
void model_params_download(const Model *m, float *dst);
void model_params_upload(Model *m, const float *src);
void model_free(Model *m);
// GPT-2 style init: N(0, 0.02), output projections (wo, w2) scaled by 1/sqrt(2L), norms to one.
void model_init_weights(Model *m, uint64_t seed);
// Activations, gradients of activations and parameter gradients for batches up to (B, T): training.
void model_alloc_acts(Model *m, int B, int T);
// Activations only (forward passes without backward): scoring and evaluation.
void model_alloc_inference_acts(Model *m, int B, int T);
// Element counts of the buffers model_alloc_inference_acts(B, T) (a, ActTensors order) and model_alloc_acts(B, T)
// (a and g, GradActs order, less a[ACT_PROBS], which then lives in dlogits) allocate. Counted in double so that a size no machine could hold is still a number to compare, never a
// wrapped size_t.
void model_act_counts(const ModelConfig *cfg, int B, int T, ModelAttention attn, double a[NUM_ACT_TENSORS],
                      double g[NUM_GRAD_ACT_TENSORS]);
// Bytes of the activations and activation gradients model_alloc_acts(B, T) allocates (the parameter
// gradients, n_params floats, come on top).
double model_train_act_bytes(const ModelConfig *cfg, int B, int T, ModelAttention attn);
// Bytes of the activations model_alloc_inference_acts(B, T) allocates (no gradients).
double model_inference_act_bytes(const ModelConfig *cfg, int B, int T, ModelAttention attn);

// Forward over tokens (B, T). With targets (B, T) fills acts.losses and mean_loss; train != 0 applies
// dropout. T may be smaller than the allocated act_T.
void model_forward(Model *m, const int *tokens, const int *targets, int B, int T, int train);
void model_zero_grad(Model *m);
// Backward of the mean loss of the last forward, same tokens and targets (accumulates into grads).
void model_backward(Model *m, const int *tokens, const int *targets, int B, int T);
// How many chunks of sequences a pass over (B, T) runs in with m->schedule and the current OpenMP thread count
// (1: the whole batch at once, each op parallel inside).
int model_pass_chunks(Model *m, int B, int T);

// MHA -> GQA/MQA conversion (the GQA paper's recipe): dst gets n_kv_head = new_kv_heads and each group's
// key and value projection heads mean-pooled (KV_INIT_MEAN), or the group's first head kept (KV_INIT_FIRST, the
// paper's weaker alternative); everything else is copied. dst must be uninitialised.
typedef enum { KV_INIT_MEAN, KV_INIT_FIRST } KVInit;
int model_convert_kv_heads(Model *dst, const Model *src, int new_kv_heads, KVInit init, char *err);

#endif
