#include "presets.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// Shared optimiser settings (nanoGPT's shakespeare_char / baby runs): AdamW beta2 0.99, min lr = lr / 10.
#define OPT(lr_, steps_, warm_) \
    .lr = lr_, .min_lr = (lr_) / 10, .max_steps = steps_, .warmup_steps = warm_, .weight_decay = 0.1f, \
    .beta1 = 0.9f, .beta2 = 0.99f, .adam_eps = 1e-8f, .grad_clip = 1.0f, .grad_accum = 1, .seed = 1337

static const Preset presets[] = {
    {"small", "default: 4 layers, 16 heads (gqa:8 and mqa work as is), width 128, context 128",
     {.n_layer = 4, .n_head = 16, .n_kv_head = 16, .n_embd = 128, .block_size = 128, .rope_theta = 10000.0f,
      .norm_eps = 1e-5f, .dropout = 0.0f},
     {.batch_size = 16, .seq_len = 128, .eval_interval = 200, .eval_windows = 256, OPT(2e-3f, 1200, 100)}},
    {"baby", "nanoGPT's CPU run: 4 layers, 4 heads, width 128, context 64, batch 12, no dropout",
     {.n_layer = 4, .n_head = 4, .n_kv_head = 4, .n_embd = 128, .block_size = 64, .rope_theta = 10000.0f,
      .norm_eps = 1e-5f, .dropout = 0.0f},
     {.batch_size = 12, .seq_len = 64, .eval_interval = 250, .eval_windows = 240, OPT(1e-3f, 2000, 100)}},
    {"shakespeare", "nanoGPT's shakespeare_char: 6 layers, 6 heads, width 384, context 256, batch 64, dropout 0.2",
     {.n_layer = 6, .n_head = 6, .n_kv_head = 6, .n_embd = 384, .block_size = 256, .rope_theta = 10000.0f,
      .norm_eps = 1e-5f, .dropout = 0.2f},
     {.batch_size = 64, .seq_len = 256, .eval_interval = 250, .eval_windows = 640, OPT(1e-3f, 5000, 100)}},
    {"tiny", "for tests: 2 layers, 4 heads, width 32, context 32, batch 4",
     {.n_layer = 2, .n_head = 4, .n_kv_head = 4, .n_embd = 32, .block_size = 32, .rope_theta = 10000.0f,
      .norm_eps = 1e-5f, .dropout = 0.0f},
     {.batch_size = 4, .seq_len = 32, .eval_interval = 10, .eval_windows = 8, OPT(3e-3f, 20, 2)}},
};

const char *const preset_default_name = "small";

const Preset *preset_find(const char *name) {
    for (size_t i = 0; i < sizeof(presets) / sizeof(presets[0]); i++)
        if (strcmp(presets[i].name, name) == 0) return &presets[i];
    return NULL;
}

const char *preset_names(void) { return "small (default), baby, shakespeare, tiny"; }

int attn_parse(const char *spec, int *kv_heads, char *err) {
    if (strcmp(spec, "mha") == 0) return *kv_heads = 0, 0;
    if (strcmp(spec, "mqa") == 0) return *kv_heads = 1, 0;
    if (strncmp(spec, "gqa:", 4) == 0) {
        char *end;
        errno = 0;
        long g = strtol(spec + 4, &end, 10);
        if (spec[4] != 0 && *end == 0 && !errno && g >= 1 && g <= 1024) return *kv_heads = (int)g, 0;
    }
    err_set(err, "bad --attn '%s': valid forms are mha, gqa:G (G key/value heads, G divides n_head), mqa", spec);
    return -1;
}

int attn_resolve(int kv_heads_spec, int n_head, int *n_kv_head, char *err) {
    int g = kv_heads_spec == 0 ? n_head : kv_heads_spec;
    if (g > n_head || n_head % g != 0) {
        err_set(err, "gqa:%d needs G to divide n_head, but n_head is %d (valid G: divisors of %d)", g, n_head, n_head);
        return -1;
    }
    *n_kv_head = g;
    return 0;
}

void attn_label(char *out, size_t len, int n_head, int n_kv_head) {
    if (n_kv_head == n_head) snprintf(out, len, "mha");
    else if (n_kv_head == 1) snprintf(out, len, "mqa");
    else snprintf(out, len, "gqa%d", n_kv_head);
}
