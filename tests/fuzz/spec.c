// Fuzz target: the --kv grammar (kv/spec.c over the registries) and what a parsed spec builds.
//
// The input is the spec text (NUL-terminated here; an embedded NUL ends it, as on a command line). When it
// parses, the spec must build on a small shape or refuse with one line: the contiguous cache (kv_cache_init,
// a low-rank basis fitted when the spec asks for one, then 24 tokens appended to every layer, viewed and
// observed, so the policy, the codec and the modifiers run together), and for a paged spec the pool and the
// sequence policy too (kv_pool_init_spec, kv_paged_policy, a prompt and 20 decode steps with observe and
// enforce, then kv_pool_validate). Invariants: refusals are one non-empty line; a view never holds more
// tokens than were appended nor more than the layer's budget allows... (full selection: exactly what was
// appended); the pool stays valid; nothing leaks (ASan).
#include <stdlib.h>
#include <string.h>

#include "../../kv/kv.h"
#include "../../kv/paged.h"
#include "../../kv/spec.h"
#include "fuzz.h"

enum { L = 2, NH = 4, NKV = 2, HD = 8, MAXP = 64, STEPS = 24, BLOCKS = 16 };

// Known (issue 12, item 10, fixed elsewhere): a spec holding a newline is echoed into its error as given, so
// the "one line" check skips inputs with one (RELIABILITY.md, finding spec-1) until the message escapes it.
static void check_err(const char *err) {
    fuzz_check(err[0] != 0, "a refusal without a message");
    fuzz_check(strchr(err, '\n') == NULL, "a refusal over several lines: %s", err);
}

static void row(float *k, float *v, int layer, int t) {
    for (int i = 0; i < NKV * HD; i++) {
        k[i] = (i % HD == 0) ? 1.0f + (float)((t * 7 + layer) % 5) : 0.05f * (float)((i * 13 + t) % 11) - 0.25f;
        v[i] = (float)t * 0.1f - 0.01f * (float)i;
    }
}

static void run_cache(const KVSpec *spec) {
    KVShape shape = {L, NH, NKV, HD, MAXP, 10000.0f, 0};
    KVCache *kv = NULL;
    char err[ERR_LEN] = "";
    if (kv_cache_init(&kv, spec, &shape, err) != 0) {
        check_err(err);
        return;
    }
    if (kv_cache_needs_calibration(kv)) { // lowrank: fit every (layer, head) on synthetic samples
        enum { N = 32 };
        float keys[N * HD], vals[N * HD], k[NKV * HD], v[NKV * HD];
        for (int l = 0; l < L; l++)
            for (int g = 0; g < NKV; g++) {
                for (int t = 0; t < N; t++) {
                    row(k, v, l, t * 3 + g);
                    memcpy(keys + t * HD, k + g * HD, sizeof(float) * HD);
                    memcpy(vals + t * HD, v + g * HD, sizeof(float) * HD);
                }
                err[0] = 0;
                if (kv_lowrank_fit(kv, l, g, keys, vals, N, err) != 0) {
                    check_err(err);
                    kv_cache_free(kv);
                    return;
                }
            }
    }
    kv_cache_set_prefill(kv, 8);
    float k[NKV * HD], v[NKV * HD], att[NH * MAXP];
    for (int t = 0; t < STEPS; t++)
        for (int l = 0; l < L; l++) {
            row(k, v, l, t);
            fuzz_check(kv_cache_append(kv, l, t, k, v) == 0, "append %d refused at layer %d", t, l);
            const float *kc, *vc;
            int Tc = -1, qpos = -1;
            size_t stride = 0;
            kv_cache_view(kv, l, &kc, &vc, &Tc, &qpos, &stride);
            fuzz_check(Tc >= 1 && Tc <= t + 1, "view of %d tokens after %d appended", Tc, t + 1);
            int budget = kv_cache_layer_budget(kv, l);
            fuzz_check(!kv_spec_is_full(spec) || budget > 0 || Tc == t + 1, "full selection holds %d of %d", Tc,
                       t + 1);
            for (int h = 0; h < NH; h++)
                for (int s = 0; s < Tc; s++) att[h * Tc + s] = 1.0f / (float)Tc;
            kv_cache_observe(kv, l, att);
            fuzz_check(kv_cache_tokens(kv, l) <= t + 1, "%d tokens held after %d", kv_cache_tokens(kv, l), t + 1);
        }
    (void)kv_cache_bytes(kv);
    kv_cache_free(kv);
}

static void run_paged(const KVSpec *spec) {
    KVShape shape = {L, NH, NKV, HD, MAXP, 10000.0f, 0};
    char err[ERR_LEN] = "";
    KVSeqPolicy pol;
    if (kv_paged_policy(&pol, spec, err) != 0) {
        check_err(err);
        return;
    }
    KVPool *pool = NULL;
    err[0] = 0;
    if (kv_pool_init_spec(&pool, &shape, spec, BLOCKS, err) != 0) {
        check_err(err);
        return;
    }
    KVSeq seq = {0};
    seq.policy = pol;
    int prompt[8];
    for (int i = 0; i < 8; i++) prompt[i] = i;
    err[0] = 0;
    int reused = kv_paged_begin(pool, &seq, prompt, 8, 0, err);
    fuzz_check(reused == 0, "a fresh pool reused %d tokens (%s)", reused, err);
    float k[NKV * HD], v[NKV * HD], att[NH * MAXP];
    for (int t = 0; t < 8 + 20; t++) {
        int ok = 1;
        for (int l = 0; l < L && ok; l++) {
            row(k, v, l, t);
            err[0] = 0;
            if (kv_paged_append(pool, &seq, l, t, t < 8 ? prompt[t] : 100 + t, k, v, err) != 0) {
                check_err(err); // the pool ran out of blocks: the spec's selection keeps more than 16 blocks
                ok = 0;
            }
        }
        if (!ok) break;
        int held = kv_paged_held(pool, &seq);
        fuzz_check(held >= 1 && held <= t + 1, "held %d after %d tokens", held, t + 1);
        for (int i = 0; i < NH * held; i++) att[i] = 1.0f / (float)held;
        for (int l = 0; l < L; l++) kv_paged_observe(pool, &seq, att, NH);
        kv_paged_enforce(pool, &seq);
        err[0] = 0;
        fuzz_check(kv_pool_validate(pool, err) == 0, "pool invalid after token %d: %s", t, err);
    }
    kv_paged_end(pool, &seq);
    err[0] = 0;
    fuzz_check(kv_pool_validate(pool, err) == 0, "pool invalid after end: %s", err);
    kv_pool_free(pool);
}

int fuzz_spec(const uint8_t *data, size_t size) {
    if (size > 4096) return 0; // longer specs exercise nothing new; the parser bounds itself anyway
    char *text = malloc(size + 1);
    if (!text) return 0;
    memcpy(text, data, size);
    text[size] = 0;
    KVSpec spec;
    char err[ERR_LEN] = "";
    if (kv_spec_parse(&spec, text, err) != 0) {
        check_err(err);
        free(text);
        return 0;
    }
    fuzz_check(spec.policy != NULL && spec.codec != NULL, "a parsed spec without policy or codec");
    (void)kv_spec_budget(&spec);
    (void)kv_spec_policy_name(&spec);
    (void)kv_spec_codec_name(&spec);
    // Budgets past the stream are clamped and KIVI's residual sized to the lane (issue 12, item 7): any
    // number the grammar takes (up to 2^24) builds a small cache here.
    if (spec.paged_block) run_paged(&spec);
    else run_cache(&spec);
    free(text);
    return 0;
}
