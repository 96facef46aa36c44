// One optimizer step and the validation pass. The step: grad_accum micro-batches of forward + backward
// (the loss of each scaled by 1/grad_accum through the gradient), global-norm clipping, AdamW with the
// scheduled learning rate. Weight decay is applied per tensor as the model marks it.
#include <math.h>
#include <string.h>

#include "trainer.h"

// lo <= v <= hi, or -1 with the setting named in err.
static int check_int(const char *name, int v, int lo, int hi, char *err) {
    if (v >= lo && v <= hi) return 0;
    err_set(err, "%s %d is outside %d..%d", name, v, lo, hi);
    return -1;
}

// lo <= v <= hi (so never NaN, and infinite only past the range), or -1 with the setting named in err.
static int check_float(const char *name, float v, float lo, float hi, char *err) {
    if (v >= lo && v <= hi) return 0;
    err_set(err, "%s %g is outside [%g, %g]", name, v, lo, hi);
    return -1;
}

int train_config_validate(const TrainConfig *tc, const ModelConfig *mc, char *err) {
    if (check_int("batch size", tc->batch_size, 1, TRAIN_MAX_BATCH, err) != 0) return -1;
    if (check_int("context", tc->seq_len, 1, mc->block_size, err) != 0) return -1;
    if ((long long)tc->batch_size * tc->seq_len > TRAIN_MAX_MICRO_TOKENS) {
        err_set(err, "batch %d x context %d is more than %d tokens per micro-batch", tc->batch_size, tc->seq_len,
                TRAIN_MAX_MICRO_TOKENS);
        return -1;
    }
    if (check_int("steps", tc->max_steps, 1, TRAIN_MAX_STEPS, err) != 0) return -1;
    if (check_int("warmup", tc->warmup_steps, 0, TRAIN_MAX_STEPS, err) != 0) return -1;
    if (check_float("lr", tc->lr, TRAIN_MIN_LR, TRAIN_MAX_LR, err) != 0) return -1;
    if (check_float("min lr", tc->min_lr, 0.0f, tc->lr, err) != 0) return -1;
    if (check_float("weight decay", tc->weight_decay, 0.0f, TRAIN_MAX_WEIGHT_DECAY, err) != 0) return -1;
    if (!(tc->beta1 >= 0.0f && tc->beta1 < 1.0f)) {
        err_set(err, "Adam beta1 %g must be in [0, 1)", tc->beta1);
        return -1;
    }
    if (check_float("Adam beta2", tc->beta2, 0.0f, TRAIN_MAX_BETA2, err) != 0) return -1;
    if (!(tc->adam_eps > 0.0f && tc->adam_eps < 1.0f)) {
        err_set(err, "Adam epsilon %g must be in (0, 1)", tc->adam_eps);
        return -1;
    }
    if (check_float("grad clip", tc->grad_clip, 0.0f, TRAIN_MAX_GRAD_CLIP, err) != 0) return -1;
    if (check_int("grad accumulation", tc->grad_accum, 1, TRAIN_MAX_GRAD_ACCUM, err) != 0) return -1;
    if (check_int("eval interval", tc->eval_interval, 0, TRAIN_MAX_STEPS, err) != 0) return -1;
    if (check_int("eval windows", tc->eval_windows, 1, TRAIN_MAX_EVAL_WINDOWS, err) != 0) return -1;
    if (check_float("recall mix", tc->recall_mix, 0.0f, 1.0f, err) != 0) return -1;
    return 0;
}

void train_state_init(TrainState *s, size_t n_params, uint64_t seed) {
    memset(s, 0, sizeof(*s));
    s->m = common_calloc(n_params, sizeof(float));
    s->v = common_calloc(n_params, sizeof(float));
    rng_init(&s->data_rng, seed);
    rng_init(&s->dropout_rng, seed ^ 0xD809D809ull);
}

void train_state_free(TrainState *s) {
    if (s->ops) {
        s->ops->mem_free(s->m);
        s->ops->mem_free(s->v);
    } else {
        common_free(s->m);
        common_free(s->v);
    }
    memset(s, 0, sizeof(*s));
}

void train_state_to_backend(TrainState *s, size_t n_params, const Ops *ops) {
    const Ops *from = s->ops ? s->ops : &ops_cpu;
    if (from == ops) return;
    float **moments[2] = {&s->m, &s->v};
    float *host = common_calloc(n_params, sizeof(float));
    for (int i = 0; i < 2; i++) {
        from->mem_download(host, *moments[i], n_params * sizeof(float));
        from->mem_free(*moments[i]);
        *moments[i] = ops->mem_alloc(n_params * sizeof(float));
        ops->mem_upload(*moments[i], host, n_params * sizeof(float));
    }
    common_free(host);
    s->ops = ops;
}

// Every tensor's AdamW in one op call (one parallel region on the CPU, one launch on a device), each with the
// weight decay the model marks for it.
static void adamw_all(Model *m, TrainState *s, const TrainConfig *tc, float lr) {
    size_t sizes[NUM_PARAM_TENSORS], end = 0;
    model_param_sizes(&m->cfg, sizes);
    AdamwSegments seg = {.n = NUM_PARAM_TENSORS};
    _Static_assert(NUM_PARAM_TENSORS <= ADAMW_MAX_SEGMENTS, "one AdamW segment per parameter tensor");
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) {
        end += sizes[i];
        seg.end[i] = end;
        seg.decay[i] = model_param_is_decayed(i) ? tc->weight_decay : 0.0f;
    }
    m->ops->adamw_update(m->params_memory, m->grads_memory, s->m, s->v, &seg, lr, tc->beta1, tc->beta2,
                         tc->adam_eps, s->step + 1);
}

float train_step(Model *m, TrainState *s, const TrainConfig *tc, const Corpus *c, int *inputs, int *targets,
                 float *grad_norm) {
    int B = tc->batch_size, T = tc->seq_len;
    if (grad_norm) *grad_norm = NAN;
    model_zero_grad(m);
    m->dropout_rng = s->dropout_rng;
    double loss = 0.0;
    for (int micro = 0; micro < tc->grad_accum; micro++) {
        loader_train_batch(c, &s->data_rng, B, T, tc->recall_mix, inputs, targets);
        model_forward(m, inputs, targets, B, T, 1);
        if (!isfinite(m->mean_loss)) return m->mean_loss; // diverged: no backward of a non-finite loss
        model_backward(m, inputs, targets, B, T);
        loss += m->mean_loss;
    }
    // the gradients summed over micro-batches: average them, then the global norm and clipping
    const Ops *op = m->ops;
    if (tc->grad_accum > 1) op->scale(m->grads_memory, m->n_params, 1.0f / tc->grad_accum);
    float norm = op->grad_norm(m->grads_memory, m->n_params);
    if (grad_norm) *grad_norm = norm;
    float mean = (float)(loss / tc->grad_accum);
    if (!isfinite(norm)) return mean; // diverged: no update
    s->dropout_rng = m->dropout_rng;
    if (tc->grad_clip > 0.0f && norm > tc->grad_clip) op->scale(m->grads_memory, m->n_params, tc->grad_clip / (norm + 1e-6f));
    adamw_all(m, s, tc, schedule_lr(tc, s->step));
    s->step++;
    return mean;
}

float train_eval(Model *m, const TrainConfig *tc, const Corpus *c, int *inputs, int *targets) {
    int B = tc->batch_size, T = tc->seq_len, n = tc->eval_windows;
    double sum = 0.0;
    int count = 0;
    for (int start = 0; start < n; start += B) {
        int b = n - start < B ? n - start : B;
        for (int i = 0; i < b; i++)
            loader_val_window(c, start + i, n, T, inputs + (size_t)i * T, targets + (size_t)i * T);
        model_forward(m, inputs, targets, b, T, 0);
        sum += (double)m->mean_loss * b;
        count += b;
    }
    return (float)(sum / count);
}
