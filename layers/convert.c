// MHA -> GQA/MQA conversion (Ainslie et al. 2023, section 2.1): each new key/value head is the mean of the
// key (and value) projection heads of its group (or, KV_INIT_FIRST, the group's first head, the ablation the
// paper compares against); the rest of the model is copied. Uptraining then continues
// from the converted weights. A model operation (declared in model.h), so train --init-from and infer's pooled
// key/value heads share it from here.
#include "model.h"

#include <string.h>

int model_convert_kv_heads(Model *dst, const Model *src, int new_kv_heads, KVInit init, char *err) {
    const ModelConfig *sc = &src->cfg;
    if (new_kv_heads < 1 || sc->n_kv_head % new_kv_heads != 0) {
        err_set(err, "cannot convert %d key/value heads to %d: the new count must divide the old one", sc->n_kv_head,
                new_kv_heads);
        return -1;
    }
    ModelConfig dc = *sc;
    dc.n_kv_head = new_kv_heads;
    model_init(dst, &dc, src->ops);
    size_t ss[NUM_PARAM_TENSORS], ds[NUM_PARAM_TENSORS];
    model_param_sizes(sc, ss);
    model_param_sizes(&dc, ds);
    const float *sp = src->params_memory;
    float *dp = dst->params_memory;
    int HD = model_head_dim(sc), C = sc->n_embd, r = sc->n_kv_head / new_kv_heads;
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) {
        if (i == 3 || i == 4) { // wk, wv: (L, n_kv_head * HD, C), rows grouped by head
            for (int l = 0; l < sc->n_layer; l++) {
                const float *s = sp + (size_t)l * sc->n_kv_head * HD * C;
                float *d = dp + (size_t)l * new_kv_heads * HD * C;
                for (int g = 0; g < new_kv_heads; g++)
                    for (size_t j = 0; j < (size_t)HD * C; j++) {
                        if (init == KV_INIT_FIRST) {
                            d[(size_t)g * HD * C + j] = s[(size_t)g * r * HD * C + j];
                            continue;
                        }
                        float acc = 0.0f;
                        for (int h = g * r; h < (g + 1) * r; h++) acc += s[(size_t)h * HD * C + j];
                        d[(size_t)g * HD * C + j] = acc / r;
                    }
            }
        } else {
            memcpy(dp, sp, ss[i] * sizeof(float));
        }
        sp += ss[i];
        dp += ds[i];
    }
    return 0;
}
