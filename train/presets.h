// Named model + training configurations, and the --attn=mha|gqa:G|mqa spec.
#ifndef KVLAB_PRESETS_H
#define KVLAB_PRESETS_H

#include "trainer.h"

typedef struct {
    const char *name;
    const char *about;
    ModelConfig model; // vocab_size is filled from the corpus
    TrainConfig train;
} Preset;

const Preset *preset_find(const char *name);
// "baby, shakespeare, ..." for error messages and --help.
const char *preset_names(void);
extern const char *const preset_default_name;

// Parses mha | gqa:G | mqa into a key/value head count for n_head query heads (0 for mha = n_head,
// -1 for mqa) without knowing n_head yet; attn_resolve checks it against n_head.
int attn_parse(const char *spec, int *kv_heads, char *err);
int attn_resolve(int kv_heads_spec, int n_head, int *n_kv_head, char *err);
// "mha", "gqa8", "mqa" for file names.
void attn_label(char *out, size_t len, int n_head, int n_kv_head);

#endif
