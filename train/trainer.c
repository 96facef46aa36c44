// One optimizer step and the validation pass. The step: grad_accum micro-batches of forward + backward
// (the loss of each scaled by 1/grad_accum through the gradient), global-norm clipping, AdamW with the
// scheduled learning rate. Weight decay is applied per tensor as the model marks it. With several ranks each
// runs its share of the micro-batches and the gradients are summed across ranks before the scale (trainer.h).
#include <limits.h>
#include <math.h>
#include <string.h>

#include "dist.h"
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
    s->shard_n = n_params;
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
    common_free(s->stage);
    memset(s, 0, sizeof(*s));
}

void train_state_to_backend(TrainState *s, size_t n_params, const Ops *ops) {
    const Ops *from = s->ops ? s->ops : &ops_cpu;
    if (from == ops) return;
    CHECK(s->shard_lo + s->shard_n <= n_params);
    size_t bytes = s->shard_n * sizeof(float);
    float **moments[2] = {&s->m, &s->v};
    float *host = common_calloc(s->shard_n, sizeof(float));
    for (int i = 0; i < 2; i++) {
        from->mem_download(host, *moments[i], bytes);
        from->mem_free(*moments[i]);
        *moments[i] = ops->mem_alloc(bytes);
        ops->mem_upload(*moments[i], host, bytes);
    }
    common_free(host);
    s->ops = ops;
}

int train_zero_check(size_t n_params, char *err) {
    if (n_params <= (size_t)INT_MAX) return 0;
    err_set(err, "--zero 1 takes models of at most %d parameters (MPI's gather offsets are ints); this one has %zu: "
            "train it with --zero 0", INT_MAX, n_params);
    return -1;
}

void train_shard_range(size_t n_params, int rank, int size, size_t *lo, size_t *n) {
    CHECK(size >= 1 && rank >= 0 && rank < size);
    *lo = n_params * (size_t)rank / (size_t)size;
    *n = n_params * (size_t)(rank + 1) / (size_t)size - *lo;
}

void train_state_shard(TrainState *s, size_t n_params, int rank, int size) {
    CHECK(!s->ops && s->shard_lo == 0 && s->shard_n == n_params);
    size_t lo, n;
    train_shard_range(n_params, rank, size, &lo, &n);
    float **moments[2] = {&s->m, &s->v};
    for (int i = 0; i < 2; i++) {
        float *part = common_calloc(n ? n : 1, sizeof(float));
        memcpy(part, *moments[i] + lo, n * sizeof(float));
        common_free(*moments[i]);
        *moments[i] = part;
    }
    s->shard_lo = lo;
    s->shard_n = n;
}

// The shards of every rank: count[r] elements at displ[r] (dist_size() entries each).
static void shard_table(size_t n_params, size_t *count, size_t *displ) {
    int size = dist_size();
    for (int r = 0; r < size; r++) train_shard_range(n_params, r, size, &displ[r], &count[r]);
}

// The host copy a device backend's cross-rank sum and gather go through, made once.
static float *stage(TrainState *s, size_t n_params) {
    if (!s->stage) s->stage = common_calloc(n_params, sizeof(float));
    return s->stage;
}

void train_state_gather(TrainState *full, const TrainState *s, size_t n_params) {
    memset(full, 0, sizeof(*full));
    size_t count[dist_size()], displ[dist_size()];
    shard_table(n_params, count, displ);
    CHECK(count[dist_rank()] == s->shard_n && displ[dist_rank()] == s->shard_lo);
    int root = dist_rank() == 0, on_device = s->ops && s->ops->on_device;
    if (root) {
        full->m = common_calloc(n_params, sizeof(float));
        full->v = common_calloc(n_params, sizeof(float));
        full->shard_n = n_params;
        full->step = s->step;
        full->data_rng = s->data_rng;
        full->dropout_rng = s->dropout_rng;
    }
    float *host = on_device ? common_calloc(s->shard_n ? s->shard_n : 1, sizeof(float)) : NULL;
    const float *parts[2] = {s->m, s->v};
    float *wholes[2] = {full->m, full->v};
    for (int i = 0; i < 2; i++) {
        if (on_device) s->ops->mem_download(host, parts[i], s->shard_n * sizeof(float));
        dist_gatherv_f32(wholes[i], on_device ? host : parts[i], count, displ);
    }
    common_free(host);
}

// The sum over ranks of the gradients (in the memory of m's ops), through host memory on a device (NCCL is not
// used yet).
static void allreduce_grads(Model *m, TrainState *s) {
    if (dist_size() == 1) return;
    const Ops *ops = m->ops;
    size_t n = m->n_params;
    float *x = ops->on_device ? stage(s, n) : m->grads_memory;
    if (ops->on_device) ops->mem_download(x, m->grads_memory, n * sizeof(float));
    dist_allreduce_sum_f32(x, n);
    if (ops->on_device) ops->mem_upload(m->grads_memory, x, n * sizeof(float));
}

// Every rank's updated shard of the parameters to every rank (ZeRO-1), through host memory on a device.
static void allgather_params(Model *m, TrainState *s) {
    size_t count[dist_size()], displ[dist_size()];
    shard_table(m->n_params, count, displ);
    const Ops *ops = m->ops;
    float *x = ops->on_device ? stage(s, m->n_params) : m->params_memory;
    if (ops->on_device) ops->mem_download(x, m->params_memory, m->n_params * sizeof(float));
    dist_allgatherv_f32(x, count, displ);
    if (ops->on_device) ops->mem_upload(m->params_memory, x, m->n_params * sizeof(float));
}

// AdamW over every tensor (weight decay where the model marks it) in one op call (one parallel region on the
// CPU, one launch on a device). With ZeRO-1 the call covers this rank's shard: the tensors' segments cut to it.
static void adamw_all(Model *m, TrainState *s, const TrainConfig *tc, float lr) {
    size_t sizes[NUM_PARAM_TENSORS], start = 0, lo = s->shard_lo, hi = s->shard_lo + s->shard_n;
    model_param_sizes(&m->cfg, sizes);
    AdamwSegments seg = {.n = 0};
    _Static_assert(NUM_PARAM_TENSORS <= ADAMW_MAX_SEGMENTS, "one AdamW segment per parameter tensor");
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) {
        size_t end = start + sizes[i];
        if (end > lo && start < hi) { // the part of tensor i inside the shard, relative to its start
            seg.end[seg.n] = (end < hi ? end : hi) - lo;
            seg.decay[seg.n] = model_param_is_decayed(i) ? tc->weight_decay : 0.0f;
            seg.n++;
        }
        start = end;
    }
    CHECK(hi <= start);
    m->ops->adamw_update(m->params_memory + lo, m->grads_memory + lo, s->m, s->v, &seg, lr, tc->beta1, tc->beta2,
                         tc->adam_eps, s->step + 1);
    if (s->shard_n != m->n_params) allgather_params(m, s);
}

// Micro-batch k's dropout RNG: seeded by the step's dropout state and k alone, so any rank can start it.
static void micro_dropout_rng(Rng *out, const Rng *step, int k) {
    rng_init(out, step->state + (uint64_t)k * 0x9E3779B97F4A7C15ull);
}

float train_step(Model *m, TrainState *s, const TrainConfig *tc, const Corpus *c, int *inputs, int *targets,
                 float *grad_norm) {
    int B = tc->batch_size, T = tc->seq_len;
    CHECK(tc->grad_accum % dist_size() == 0);
    int local = tc->grad_accum / dist_size(), first = dist_rank() * local;
    if (grad_norm) *grad_norm = NAN;
    model_zero_grad(m);
    double loss = 0.0;
    // every rank draws every micro-batch, so the data RNG stays the same on all of them, and trains on its own
    for (int k = 0; k < tc->grad_accum; k++) {
        loader_train_batch(c, &s->data_rng, B, T, tc->recall_mix, inputs, targets);
        if (k < first || k >= first + local) continue;
        micro_dropout_rng(&m->dropout_rng, &s->dropout_rng, k);
        model_forward(m, inputs, targets, B, T, 1);
        loss += m->mean_loss;
        if (!isfinite(m->mean_loss)) break; // diverged: no backward of a non-finite loss
        model_backward(m, inputs, targets, B, T);
    }
    // the loss summed over ranks: a non-finite one anywhere stops every rank here, before the gradients' sum
    dist_allreduce_sum_f64(&loss, 1);
    float mean = (float)(loss / tc->grad_accum);
    if (!isfinite(mean)) return mean;
    // the gradients summed over micro-batches and ranks: average them, then the global norm and clipping
    const Ops *op = m->ops;
    allreduce_grads(m, s);
    if (tc->grad_accum > 1) op->scale(m->grads_memory, m->n_params, 1.0f / tc->grad_accum);
    float norm = op->grad_norm(m->grads_memory, m->n_params);
    if (grad_norm) *grad_norm = norm;
    if (!isfinite(norm)) return mean; // diverged: no update
    rng_next_u64(&s->dropout_rng); // the next step's dropout state
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
