// Every rank set up the same run (ranks.h): the run settings, and fingerprints of the corpus, the model and the
// training state, broadcast from rank 0 and compared on each rank.
#include "ranks.h"

#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <xxhash.h>

#include "dist.h"
#include "state_io.h"

typedef struct {
    uint64_t n_tokens, tokens;  // the corpus: its length and its token ids' hash
    uint64_t model;             // the config and the starting weights
    uint64_t state;             // the training section a save would write now: settings, step, RNGs, moments
} Fingerprint;

static Fingerprint fingerprint(const Corpus *c, const Model *m, const TrainState *s, const TrainConfig *tc) {
    Fingerprint f = {.n_tokens = c->n_tokens};
    f.tokens = XXH64(c->tokens, c->n_tokens * sizeof(int), 0);
    f.model = XXH64(m->params_memory, m->n_params * sizeof(float), XXH64(&m->cfg, sizeof m->cfg, 0));
    size_t bytes = train_state_section_size(m->n_params);
    unsigned char *section = common_calloc(bytes, 1);
    train_state_encode(section, tc, s, m->n_params);
    f.state = XXH64(section, bytes, 0);
    common_free(section);
    return f;
}

// The flag behind each field of RankSettings, and how its value reads.
static const char *device_name(int v) { return v ? "cuda" : "cpu"; }
static const char *attention_name(int v) { return v == MODEL_ATTENTION_FLASH ? "flash" : "naive"; }
static const struct {
    size_t offset;
    const char *flag;
    const char *(*name)(int); // NULL: the number
} setting_fields[] = {
    {offsetof(RankSettings, zero), "--zero", NULL},
    {offsetof(RankSettings, last), "last step (--steps, --stop-after)", NULL},
    {offsetof(RankSettings, max_steps), "--steps", NULL},
    {offsetof(RankSettings, eval_interval), "--eval-interval", NULL},
    {offsetof(RankSettings, on_device), "--device", device_name},
    {offsetof(RankSettings, precision), "--precision", ops_precision_name},
    {offsetof(RankSettings, attention), "--attention", attention_name},
    {offsetof(RankSettings, batch), "--batch", NULL},
    {offsetof(RankSettings, grad_accum), "micro-batches per step (--grad-accum x ranks)", NULL},
    {offsetof(RankSettings, seq_len), "--context", NULL},
};

// 1 with the line in err when mine differs from root's in a field; 0 when they match.
static int settings_differ(const RankSettings *mine, const RankSettings *root, char *err) {
    for (size_t i = 0; i < sizeof setting_fields / sizeof setting_fields[0]; i++) {
        int a = *(const int *)((const char *)mine + setting_fields[i].offset);
        int b = *(const int *)((const char *)root + setting_fields[i].offset);
        if (a == b) continue;
        char va[32], vb[32];
        snprintf(va, sizeof va, "%s", setting_fields[i].name ? setting_fields[i].name(a) : "");
        snprintf(vb, sizeof vb, "%s", setting_fields[i].name ? setting_fields[i].name(b) : "");
        if (!setting_fields[i].name) {
            snprintf(va, sizeof va, "%d", a);
            snprintf(vb, sizeof vb, "%d", b);
        }
        err_set(err, "its %s is %s, rank 0's is %s (every rank must be given the same run flags)",
                setting_fields[i].flag, va, vb);
        return 1;
    }
    return 0;
}

// 1 with the line in err when mine differs from root's; 0 when they match.
static int fingerprints_differ(const Fingerprint *mine, const Fingerprint *root, const char *data, char *err) {
    if (mine->n_tokens != root->n_tokens || mine->tokens != root->tokens)
        err_set(err, "its corpus '%s' differs from rank 0's (%llu tokens here, %llu on rank 0; every rank must read the "
                "same corpus)", data, (unsigned long long)mine->n_tokens, (unsigned long long)root->n_tokens);
    else if (mine->model != root->model)
        err_set(err, "its model differs from rank 0's (every rank must start from the same checkpoint or seed)");
    else if (mine->state != root->state)
        err_set(err, "its training settings or state differ from rank 0's (every rank must be given the same flags "
                "and checkpoint)");
    else
        return 0;
    return 1;
}

int train_ranks_check(const Corpus *c, const Model *m, const TrainState *s, const TrainConfig *tc,
                      const RankSettings *settings, const char *data, char *err) {
    if (dist_size() == 1) return 0;
    CHECK(!m->ops->on_device && !(s->ops && s->ops->on_device));
    RankSettings root_settings = *settings;
    dist_bcast(&root_settings, sizeof root_settings);
    Fingerprint mine = fingerprint(c, m, s, tc), root = mine;
    dist_bcast(&root, sizeof root);
    int differs = settings_differ(settings, &root_settings, err) || fingerprints_differ(&mine, &root, data, err);
    return dist_agree(differs, err);
}
