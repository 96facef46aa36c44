// Every rank set up the same run (ranks.h): fingerprints of the corpus, the model and the training state,
// broadcast from rank 0 and compared on each rank.
#include "ranks.h"

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

int train_ranks_check(const Corpus *c, const Model *m, const TrainState *s, const TrainConfig *tc, const char *data,
                      char *err) {
    if (dist_size() == 1) return 0;
    CHECK(!m->ops->on_device && !(s->ops && s->ops->on_device));
    Fingerprint mine = fingerprint(c, m, s, tc), root = mine;
    dist_bcast(&root, sizeof root);
    int differs = 1;
    if (mine.n_tokens != root.n_tokens || mine.tokens != root.tokens)
        err_set(err, "its corpus '%s' differs from rank 0's (%llu tokens here, %llu on rank 0; every rank must read the "
                "same corpus)", data, (unsigned long long)mine.n_tokens, (unsigned long long)root.n_tokens);
    else if (mine.model != root.model)
        err_set(err, "its model differs from rank 0's (every rank must start from the same checkpoint or seed)");
    else if (mine.state != root.state)
        err_set(err, "its training settings or state differ from rank 0's (every rank must be given the same flags "
                "and checkpoint)");
    else
        differs = 0;
    return dist_agree(differs, err);
}
