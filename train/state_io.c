// The training section of a checkpoint (layout in state_io.h): TrainConfig and TrainState to bytes and back.
// A cursor walks the section field by field; the decoder has checked the length first, so no read can run
// past the end.
#include "state_io.h"

#include <string.h>

#include "../common/le.h"

#define TRAIN_CONFIG_BYTES 68 // 14 x 4-byte fields + u64 seed + f32 recall mix

size_t train_state_section_size(size_t n_params) { return TRAIN_SECTION_FIXED_BYTES + 8 * n_params; }

// ---- encoding: a cursor that advances past each field it writes ----

static void put_i32(unsigned char **p, int v) {
    le_put_u32(*p, (uint32_t)v);
    *p += 4;
}
static void put_f32(unsigned char **p, float v) {
    le_put_f32(*p, v);
    *p += 4;
}
static void put_u64(unsigned char **p, uint64_t v) {
    le_put_u64(*p, v);
    *p += 8;
}
static void put_f32s(unsigned char **p, const float *x, size_t n) {
    for (size_t i = 0; i < n; i++) put_f32(p, x[i]);
}

static void put_train_config(unsigned char **p, const TrainConfig *tc) {
    put_i32(p, tc->batch_size);
    put_i32(p, tc->seq_len);
    put_i32(p, tc->max_steps);
    put_i32(p, tc->warmup_steps);
    put_f32(p, tc->lr);
    put_f32(p, tc->min_lr);
    put_f32(p, tc->weight_decay);
    put_f32(p, tc->beta1);
    put_f32(p, tc->beta2);
    put_f32(p, tc->adam_eps);
    put_f32(p, tc->grad_clip);
    put_i32(p, tc->grad_accum);
    put_i32(p, tc->eval_interval);
    put_i32(p, tc->eval_windows);
    put_u64(p, tc->seed);
    put_f32(p, tc->recall_mix);
}

void train_state_encode(unsigned char *bytes, const TrainConfig *tc, const TrainState *s, size_t n_params) {
    CHECK(bytes && tc && s && s->m && s->v);
    CHECK(s->shard_lo == 0 && s->shard_n == n_params); // a ZeRO-1 shard is gathered first (train_state_gather)
    unsigned char *p = bytes;
    put_train_config(&p, tc);
    CHECK(p == bytes + TRAIN_CONFIG_BYTES);
    put_i32(&p, s->step);
    put_u64(&p, s->data_rng.state);
    put_u64(&p, s->dropout_rng.state);
    CHECK(p == bytes + TRAIN_SECTION_FIXED_BYTES);
    int on_device = s->ops && s->ops->on_device;
    float *host = on_device ? common_calloc(n_params, sizeof(float)) : NULL;
    const float *moments[2] = {s->m, s->v};
    for (int i = 0; i < 2; i++) {
        if (on_device) s->ops->mem_download(host, moments[i], n_params * sizeof(float));
        put_f32s(&p, on_device ? host : moments[i], n_params);
    }
    common_free(host);
    CHECK(p == bytes + train_state_section_size(n_params));
}

// ---- decoding ----

static int get_i32(const unsigned char **p) {
    int v = (int32_t)le_get_u32(*p);
    *p += 4;
    return v;
}
static float get_f32(const unsigned char **p) {
    float v = le_get_f32(*p);
    *p += 4;
    return v;
}
static uint64_t get_u64(const unsigned char **p) {
    uint64_t v = le_get_u64(*p);
    *p += 8;
    return v;
}
static void get_f32s(const unsigned char **p, float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = get_f32(p);
}

static void get_train_config(const unsigned char **p, TrainConfig *tc) {
    tc->batch_size = get_i32(p);
    tc->seq_len = get_i32(p);
    tc->max_steps = get_i32(p);
    tc->warmup_steps = get_i32(p);
    tc->lr = get_f32(p);
    tc->min_lr = get_f32(p);
    tc->weight_decay = get_f32(p);
    tc->beta1 = get_f32(p);
    tc->beta2 = get_f32(p);
    tc->adam_eps = get_f32(p);
    tc->grad_clip = get_f32(p);
    tc->grad_accum = get_i32(p);
    tc->eval_interval = get_i32(p);
    tc->eval_windows = get_i32(p);
    tc->seed = get_u64(p);
    tc->recall_mix = get_f32(p);
}

int train_state_decode(TrainConfig *tc, TrainState *s, const unsigned char *bytes, size_t size,
                       const ModelConfig *cfg, char *err) {
    CHECK(tc && s && bytes && cfg);
    size_t n_params = model_param_count(cfg);
    size_t need = train_state_section_size(n_params);
    if (size != need) {
        err_set(err, "a training section of %zu bytes, its model of %zu parameters needs %zu", size, n_params,
                need);
        return -1;
    }
    const unsigned char *p = bytes;
    TrainConfig ltc;
    get_train_config(&p, &ltc);
    int step = get_i32(&p);
    uint64_t data_rng = get_u64(&p);
    uint64_t dropout_rng = get_u64(&p);
    if (step < 0) {
        err_set(err, "a negative training step %d", step);
        return -1;
    }
    char reason[ERR_LEN];
    if (train_config_validate(&ltc, cfg, reason) != 0) {
        err_set(err, "an invalid training config: %s", reason);
        return -1;
    }
    *tc = ltc;
    train_state_init(s, n_params, 0);
    s->step = step;
    s->data_rng.state = data_rng;
    s->dropout_rng.state = dropout_rng;
    get_f32s(&p, s->m, n_params);
    get_f32s(&p, s->v, n_params);
    CHECK(p == bytes + need);
    return 0;
}

// ---- whole checkpoints ----

int train_save_checkpoint(const char *path, const Model *m, const Tokenizer *tok, const TrainConfig *tc,
                          const TrainState *s, char *err) {
    if (!tc || !s) return checkpoint_save(path, m, tok, NULL, 0, err);
    size_t size = train_state_section_size(m->n_params);
    unsigned char *bytes = common_calloc(size, 1);
    train_state_encode(bytes, tc, s, m->n_params);
    int rc = checkpoint_save(path, m, tok, bytes, size, err);
    common_free(bytes);
    return rc;
}

int train_load_checkpoint(const char *path, Model *m, const Ops *ops, Tokenizer *tok, TrainConfig *tc,
                          TrainState *s, int *has_state, char *err) {
    int want_state = tc && s;
    unsigned char *bytes = NULL;
    size_t size = 0;
    int file_state = 0;
    Tokenizer ltok; // tok is filled only once the training section is known to be good too
    if (checkpoint_load(path, m, ops, &ltok, want_state ? &bytes : NULL, want_state ? &size : NULL, &file_state,
                        err) != 0)
        return -1;
    if (bytes) {
        char reason[ERR_LEN];
        int rc = train_state_decode(tc, s, bytes, size, &m->cfg, reason);
        common_free(bytes);
        if (rc != 0) {
            err_set(err, "checkpoint '%s' has %s", path, reason);
            model_free(m);
            return -1;
        }
    }
    *tok = ltok;
    if (has_state) *has_state = file_state;
    return 0;
}
