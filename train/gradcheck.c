// train_grad_check (gradcheck.h): the same weights, batch and dropout stream through the CPU op table and a
// device's, then each parameter tensor's gradient compared. Relative L2 per tensor, because a tensor whose
// gradient is small everywhere (a deep layer's norm gain) would hide inside one global figure.
#include "gradcheck.h"

#include <math.h>

#include "../layers/cpu_ops.h"

double train_grad_check_tolerance(int precision) {
    switch (precision) {
    case OPS_PRECISION_TF32: return 1e-2; // about 10u, u = 2^-10
    case OPS_PRECISION_BF16: return 4e-2; // about 10u, u = 2^-8
    default: return 1e-4;
    }
}

static int one_pass(Model *m, const ModelConfig *cfg, const Ops *ops, const float *params, ModelAttention attn,
                    int precision, const TrainConfig *tc, const int *inputs, const int *targets, uint64_t seed,
                    char *err) {
    model_init(m, cfg, ops);
    model_params_upload(m, params);
    if (ops->precision_set(precision, m->params_memory, m->n_params, err) != 0) return -1;
    m->attention = attn;
    model_alloc_acts(m, tc->batch_size, tc->seq_len);
    rng_init(&m->dropout_rng, seed ^ 0x9e3779b97f4a7c15ull);
    model_forward(m, inputs, targets, tc->batch_size, tc->seq_len, 1);
    model_zero_grad(m);
    model_backward(m, inputs, targets, tc->batch_size, tc->seq_len);
    return 0;
}

int train_grad_check(const Model *m, const Ops *dev, ModelAttention attn, int precision, const TrainConfig *tc,
                     const Corpus *c, uint64_t seed, GradCheck *out, char *err) {
    size_t n = m->n_params, BT = (size_t)tc->batch_size * tc->seq_len;
    float *params = common_calloc(n, sizeof(float)), *grads_dev = common_calloc(n, sizeof(float));
    int *inputs = common_calloc(2 * BT, sizeof(int)), *targets = inputs + BT;
    model_params_download(m, params);
    Rng data;
    rng_init(&data, seed);
    loader_train_batch(c, &data, tc->batch_size, tc->seq_len, tc->recall_mix, inputs, targets);

    Model ref = {0}, other = {0};
    int rc = -1;
    if (one_pass(&ref, &m->cfg, &ops_cpu, params, attn, OPS_PRECISION_FP32, tc, inputs, targets, seed, err) != 0 ||
        one_pass(&other, &m->cfg, dev, params, attn, precision, tc, inputs, targets, seed, err) != 0)
        goto done;
    rc = 0;
    dev->mem_download(grads_dev, other.grads_memory, n * sizeof(float));
    out->loss_cpu = ref.mean_loss;
    out->loss_dev = other.mean_loss;

    size_t sizes[NUM_PARAM_TENSORS], off = 0;
    model_param_sizes(&m->cfg, sizes);
    out->worst_rel_l2 = 0.0;
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) {
        GradDiff *d = &out->t[i];
        const float *a = ref.grads_memory + off, *b = grads_dev + off;
        double diff2 = 0.0, ref2 = 0.0;
        *d = (GradDiff){.name = model_param_name(i), .n = sizes[i]};
        for (size_t k = 0; k < sizes[i]; k++) {
            double e = (double)b[k] - a[k];
            diff2 += e * e;
            ref2 += (double)a[k] * a[k];
            d->max_abs_diff = fmax(d->max_abs_diff, fabs(e)); // fmax drops a NaN: the L2 sum keeps it
            d->max_abs_ref = fmax(d->max_abs_ref, fabs(a[k]));
        }
        d->rel_l2 = ref2 > 0.0 ? sqrt(diff2 / ref2) : diff2 > 0.0 || isnan(diff2) ? INFINITY : 0.0;
        if (isnan(d->rel_l2)) d->rel_l2 = INFINITY;
        if (d->rel_l2 > out->worst_rel_l2) out->worst_rel_l2 = d->rel_l2;
        off += sizes[i];
    }
done:
    if (other.ops) dev->precision_set(OPS_PRECISION_FP32, NULL, 0, NULL); // the backend's mode back to its default
    model_free(&ref);
    model_free(&other);
    common_free(params);
    common_free(grads_dev);
    common_free(inputs);
    return rc;
}
