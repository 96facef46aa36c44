// One optimizer step and the validation pass. The step: grad_accum micro-batches of forward + backward
// (the loss of each scaled by 1/grad_accum through the gradient), global-norm clipping, AdamW with the
// scheduled learning rate. Weight decay is applied per tensor as the model marks it.
#include <math.h>
#include <string.h>

#include "trainer.h"

int train_config_validate(const TrainConfig *tc, const ModelConfig *mc, char *err) {
    if (tc->batch_size < 1) return err_set(err, "batch size must be at least 1 (got %d)", tc->batch_size), -1;
    if (tc->seq_len < 1 || tc->seq_len > mc->block_size)
        return err_set(err, "context %d must be in 1..block_size (%d)", tc->seq_len, mc->block_size), -1;
    if (tc->max_steps < 1) return err_set(err, "steps must be at least 1 (got %d)", tc->max_steps), -1;
    if (tc->warmup_steps < 0) return err_set(err, "warmup must be >= 0 (got %d)", tc->warmup_steps), -1;
    if (!(tc->lr > 0.0f && tc->lr < 10.0f)) return err_set(err, "lr %g must be in (0, 10)", tc->lr), -1;
    if (!(tc->min_lr >= 0.0f && tc->min_lr <= tc->lr)) return err_set(err, "min lr %g must be in [0, lr]", tc->min_lr), -1;
    if (!(tc->weight_decay >= 0.0f && tc->weight_decay < 1.0f))
        return err_set(err, "weight decay %g must be in [0, 1)", tc->weight_decay), -1;
    if (!(tc->beta1 >= 0.0f && tc->beta1 < 1.0f) || !(tc->beta2 >= 0.0f && tc->beta2 < 1.0f))
        return err_set(err, "Adam betas must be in [0, 1)"), -1;
    if (!(tc->grad_clip >= 0.0f)) return err_set(err, "grad clip %g must be >= 0", tc->grad_clip), -1;
    if (tc->grad_accum < 1) return err_set(err, "grad accumulation must be at least 1 (got %d)", tc->grad_accum), -1;
    if (tc->eval_interval < 0) return err_set(err, "eval interval must be >= 0 (got %d)", tc->eval_interval), -1;
    if (tc->eval_windows < 1) return err_set(err, "eval windows must be at least 1 (got %d)", tc->eval_windows), -1;
    if (!(tc->recall_mix >= 0.0f && tc->recall_mix <= 1.0f))
        return err_set(err, "recall mix %g must be in [0, 1]", tc->recall_mix), -1;
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

float train_step(Model *m, TrainState *s, const TrainConfig *tc, const Corpus *c, int *inputs, int *targets,
                 float *grad_norm) {
    int B = tc->batch_size, T = tc->seq_len;
    model_zero_grad(m);
    m->dropout_rng = s->dropout_rng;
    double loss = 0.0;
    for (int micro = 0; micro < tc->grad_accum; micro++) {
        loader_train_batch(c, &s->data_rng, B, T, tc->recall_mix, inputs, targets);
        model_forward(m, inputs, targets, B, T, 1);
        model_backward(m, inputs, targets, B, T);
        loss += m->mean_loss;
    }
    s->dropout_rng = m->dropout_rng;
    // the gradients summed over micro-batches: average them, then the global norm and clipping
    const Ops *op = m->ops;
    if (tc->grad_accum > 1) op->scale(m->grads_memory, m->n_params, 1.0f / tc->grad_accum);
    float norm = op->grad_norm(m->grads_memory, m->n_params);
    if (grad_norm) *grad_norm = norm;
    if (tc->grad_clip > 0.0f && norm > tc->grad_clip) op->scale(m->grads_memory, m->n_params, tc->grad_clip / (norm + 1e-6f));
    float lr = schedule_lr(tc, s->step);
    size_t sizes[NUM_PARAM_TENSORS], off = 0;
    model_param_sizes(&m->cfg, sizes);
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) {
        float wd = model_param_is_decayed(i) ? tc->weight_decay : 0.0f;
        op->adamw_update(m->params_memory + off, m->grads_memory + off, s->m + off, s->v + off, sizes[i], lr, tc->beta1,
                     tc->beta2, tc->adam_eps, wd, s->step + 1);
        off += sizes[i];
    }
    s->step++;
    return (float)(loss / tc->grad_accum);
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
