// The table of ops the model wiring calls. One table per backend (CPU now, CUDA later) with the same op
// names and argument order: outputs first, shapes last. Backward ops ACCUMULATE (+=) into parameter and
// input gradients unless noted, so residual branches and tied weights need no extra adds.
#ifndef KVLAB_OPS_H
#define KVLAB_OPS_H

#include "../common/common.h"

#ifdef __cplusplus
extern "C" { // also included from .cu files
#endif

// The parameter block as AdamW sees it: segment i covers elements [i ? end[i - 1] : 0, end[i]) and is decayed by
// decay[i] (the matrices are, the norm gains are not). The segments are in order and cover the block.
#define ADAMW_MAX_SEGMENTS 16
typedef struct {
    int n;
    size_t end[ADAMW_MAX_SEGMENTS];
    float decay[ADAMW_MAX_SEGMENTS];
} AdamwSegments;

typedef struct {
    const char *name;

    // Backend memory (host memory on the CPU, device memory on a GPU). mem_alloc zeroes and never returns
    // NULL. mem_upload's source may be reused once it returns; on a device the transfer is ordered before every
    // later op but need not have happened (small uploads are staged and do not wait). mem_download is complete
    // when it returns.
    int on_device;
    int flash_max_hd; // the largest head dimension attention_flash_* take; 0: any
    void *(*mem_alloc)(size_t bytes);
    void (*mem_free)(void *ptr);
    void (*mem_upload)(void *dst, const void *src, size_t bytes);   // host -> backend
    void (*mem_download)(void *dst, const void *src, size_t bytes); // backend -> host

    // The precision of every later matrix product (matmul_*), a run setting (OPS_PRECISION_*, below): 0, or -1
    // with a one-line reason in err (the CPU takes OPS_PRECISION_FP32 only). params (n floats of backend memory,
    // the model's whole parameter block) are the fp32 master weights: in bf16 the backend keeps their bf16 copy
    // (round to nearest even) itself, made here and refreshed by its own writes into the range (adamw_update on
    // params there, mem_upload into it, in the same operation), and a product whose weight lies in the range
    // reads the copy; every other operand is rounded to bf16 in backend scratch per product. Calling again
    // replaces the setting; mem_free(params) drops the copy. params may be NULL (n 0): no shadow.
    int (*precision_set)(int mode, const float *params, size_t n, char *err);

    // Optimizer pieces (layers/adamw.c): x (n) *= s; sqrt(sum x^2) accumulated in double in a fixed order;
    // one AdamW update of every segment of the parameter block in one pass (one parallel region on the CPU, one
    // launch on a device; t is the 1-based step). The update is element-wise: the same bits as one call per
    // segment.
    void (*scale)(float *x, size_t n, float s);
    float (*grad_norm)(const float *x, size_t n);
    void (*adamw_update)(float *params, const float *grads, float *m, float *v, const AdamwSegments *seg, float lr,
                         float beta1, float beta2, float eps, int t);

    // out (B,T,C) = wte[tokens]
    void (*encoder_forward)(float *out, const int *tokens, const float *wte, int B, int T, int C);
    void (*encoder_backward)(float *dwte, const float *dout, const int *tokens, int B, int T, int C);

    // out (N,C) = inp * rstd * weight, rstd (N) saved for backward
    void (*rmsnorm_forward)(float *out, float *rstd, const float *inp, const float *weight, int N, int C,
                            float eps);
    void (*rmsnorm_backward)(float *dinp, float *dweight, const float *dout, const float *inp,
                             const float *weight, const float *rstd, int N, int C);

    // out (N,OUT) = inp (N,IN) @ weight(OUT,IN)^T (overwrites out)
    void (*matmul_forward)(float *out, const float *inp, const float *weight, int N, int IN, int OUT);
    // dinp (N,IN) += dout @ weight; dweight (OUT,IN) += dout^T @ inp. Either output may be NULL.
    void (*matmul_backward)(float *dinp, float *dweight, const float *dout, const float *inp,
                            const float *weight, int N, int IN, int OUT);
    // k (1..8) products of the same input in one call: outs[j] (N,outs_dim[j]) = inp (N,IN) @ weights[j]^T, as k
    // matmul_forward calls (Q, K, V and W1, W3 of the decode step and the training forward; the CPU splits all
    // their rows in one parallel region, CUDA makes them one grouped product). The arrays are host arrays of
    // backend pointers.
    void (*matmul_many_forward)(float *const *outs, const float *inp, const float *const *weights,
                                const int *outs_dim, int k, int N, int IN);
    // Their backward: dinp (N,IN) += sum_j douts[j] (N,outs_dim[j]) @ weights[j], added in j order (as k
    // matmul_backward calls); dweights[j] (outs_dim[j],IN) += douts[j]^T @ inp. dinp or the array dweights may be
    // NULL (that side skipped), as in matmul_backward. Host arrays of backend pointers.
    void (*matmul_many_backward)(float *dinp, float *const *dweights, const float *const *douts, const float *inp,
                                 const float *const *weights, const int *outs_dim, int k, int N, int IN);

    // Rotates x (B,T,NH,HD) in place, token t at position pos0 + t. Backward rotates gradients back.
    void (*rope_forward)(float *x, int B, int T, int NH, int HD, int pos0, float theta);
    void (*rope_backward)(float *dx, int B, int T, int NH, int HD, int pos0, float theta);

    // Causal attention. q (B,T,NH,HD), k and v (B,T,NKV,HD), query head h reads kv head h/(NH/NKV).
    // out (B,T,NH,HD) overwritten; att (B,NH,T,T) softmax probabilities saved for backward.
    void (*attention_forward)(float *out, float *att, const float *q, const float *k, const float *v,
                              int B, int T, int NH, int NKV, int HD);
    // dq, dk, dv accumulate; scratch (B,NH,T,T) is clobbered.
    void (*attention_backward)(float *dq, float *dk, float *dv, float *scratch, const float *dout,
                               const float *att, const float *q, const float *k, const float *v, int B,
                               int T, int NH, int NKV, int HD);

    // Flash attention, the same function without the (T,T) matrix (tiled, online softmax): out overwritten, lse
    // (B,NH,T) the log of each row's softmax denominator, saved for the backward, which recomputes the
    // probabilities tile by tile; dq, dk, dv accumulate. attention/flash_cpu.h, attention/attention_cuda.h.
    void (*attention_flash_forward)(float *out, float *lse, const float *q, const float *k, const float *v, int B,
                                    int T, int NH, int NKV, int HD);
    void (*attention_flash_backward)(float *dq, float *dk, float *dv, const float *dout, const float *out,
                                     const float *lse, const float *q, const float *k, const float *v, int B, int T,
                                     int NH, int NKV, int HD);

    // One decode query against a cache: q (NH,HD), kc and vc hold each kv head's (Tc,HD) rows, head g at
    // offset g * head_stride floats -> out (NH,HD); att (NH,Tc) receives the probabilities (scratch the
    // caller owns, also what H2O/TOVA-style policies read).
    void (*attention_decode)(float *out, float *att, const float *q, const float *kc, const float *vc, int Tc,
                             size_t head_stride, int NH, int NKV, int HD);

    // out (N) = silu(a) * b; backward accumulates into da, db.
    void (*swiglu_forward)(float *out, const float *a, const float *b, size_t N);
    void (*swiglu_backward)(float *da, float *db, const float *dout, const float *a, const float *b,
                            size_t N);

    // out (N) = a + b * scale_b (scale_b may be NULL meaning 1): residual add with optional dropout scale.
    void (*residual_forward)(float *out, const float *a, const float *b, const float *scale_b, size_t N);
    // out (N) = inp * keep: applies a dropout mask (forward of the branch, backward of its gradient).
    void (*dropout_apply)(float *out, const float *inp, const float *keep, size_t N);
    // x (N) = 0
    void (*fill_zero)(float *x, size_t N);
    // Fills keep (N) with 0 or 1/(1-p): a counter-based mask keyed by two draws from the RNG (residual.c),
    // the same on every backend.
    void (*dropout_mask)(float *keep, size_t N, float p, Rng *rng);

    // probs (N,V) = softmax(logits); losses (N) = -log probs[target] (targets and losses may be NULL).
    void (*crossentropy_forward)(float *losses, float *probs, const float *logits, const int *targets, int N,
                                 int V);
    // The loss and its gradient in one pass, from the logits (the training step's forward, or the backward after
    // a scoring forward): losses (N) as crossentropy_forward (may be NULL), dlogits (N,V) = (softmax(logits) -
    // onehot(target)) * dloss, overwritten; dlogits may be logits (in place); targets not NULL.
    void (*crossentropy_fused)(float *losses, float *dlogits, const float *logits, const int *targets, float dloss,
                               int N, int V);

    // ---- Device-only: the device KV cache of decode/device_store.c (GPU inference) ----------------------------
    // NULL in ops_cpu (the CPU's caches live in kv/ and encode and attend on the host); set by backends with
    // on_device. Rows are addressed in bytes: row t of kv head g at g * head_stride_bytes + t * row_bytes.
    // bits 32: fp32 rows; 8, 4, 2: kv/quant.h's group rows (groups of `group` values).
    //
    // dst row i (at i * dst_stride bytes) = src row i (n rows of HD floats, row i at i * src_stride floats)
    // encoded: a copy (bits 32), or exactly the bytes quant_encode_row writes.
    void (*kv_encode_rows)(uint8_t *dst, size_t dst_stride, const float *src, size_t src_stride, int n, int HD,
                           int group, int bits);
    // attention_decode over Tc stored rows -> out (NH,HD), att (NH,Tc) probabilities, or att NULL: not written
    // (the same out bits; the device cache passes NULL, nothing reads them). rope_cos == NULL: keys
    // stored rotated (on entry). Else keys stored before RoPE are rotated as read with the (positions, HD/2)
    // tables, row t to its cache position: rows [0, sink) at 0..sink-1, rows [sink, Tc) a ring of `window`
    // rows whose newest is row sink + newest, age a at Tc - 1 - a (StreamingLLM; window 0: row t at t).
    void (*attention_decode_kv)(float *out, float *att, const float *q, const uint8_t *kc, const uint8_t *vc,
                                int bits, int group, int Tc, size_t head_stride_bytes, size_t row_bytes, int NH,
                                int NKV, int HD, const float *rope_cos, const float *rope_sin, int sink, int window,
                                int newest);
} Ops;

// precision_set's modes. FP32: cuBLAS without tensor-op math, the CPU's parity. TF32: the same fp32 operands, the
// products on TF32 tensor cores (inputs rounded to 10 mantissa bits, fp32 accumulation). BF16: inputs rounded to
// bf16 (7 mantissa bits), fp32 accumulation and fp32 outputs; parameters, gradients, optimizer state and every
// other op stay fp32.
typedef enum { OPS_PRECISION_FP32 = 0, OPS_PRECISION_TF32 = 1, OPS_PRECISION_BF16 = 2 } OpsPrecision;
#define OPS_PRECISION_COUNT 3
// "fp32", "tf32", "bf16" (layers/precision.c); parse: the mode of such a name, or -1 with a one-line reason.
const char *ops_precision_name(int mode);
int ops_precision_parse(const char *name, int *mode, char *err);

extern const Ops ops_cpu;

// The op table for `--device NAME` (cpu, cuda); NULL with a one-line reason when the name is unknown or
// the device is not usable (no CUDA in this build, no GPU).
const Ops *ops_for_device(const char *name, char *err);

#ifdef __cplusplus
}
#endif

#endif
