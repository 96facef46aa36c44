// The registries: every selection policy and every storage codec the --kv grammar knows, one line each. A
// new technique is its own file plus one line here; the caches, the pool, the parser, --help and the error
// messages read these tables.
#include <stdio.h>
#include <string.h>

#include "codec.h"
#include "policy.h"

// One line per technique: X(name) names kv_policy_<name> / kv_codec_<name>, defined in its own file.
#define KV_POLICIES(X) \
    X(full)   /* full.c   */ \
    X(window) /* window.c */ \
    X(sink)   /* sink.c   */ \
    X(h2o)    /* h2o.c    */ \
    X(tova)   /* tova.c   */ \
    X(snapkv) /* snapkv.c */ \
    X(knorm)  /* knorm.c  */ \
    X(random) /* random.c */

#define KV_CODECS(X) \
    X(f32)   /* f32.c  */ \
    X(f16)   /* f16.c  */ \
    X(fp8)   /* fp8.c  */ \
    X(int8)  /* int.c  */ \
    X(int4)  /* int.c  */ \
    X(int2)  /* int.c  */ \
    X(kivi2) /* kivi.c */ \
    X(kivi4) /* kivi.c */

#define DECLARE_POLICY(name) extern const KVPolicy kv_policy_##name;
#define DECLARE_CODEC(name) extern const KVCodec kv_codec_##name;
#define ENTRY_POLICY(name) &kv_policy_##name,
#define ENTRY_CODEC(name) &kv_codec_##name,
KV_POLICIES(DECLARE_POLICY)
KV_CODECS(DECLARE_CODEC)

const KVPolicy *const kv_policies[] = {KV_POLICIES(ENTRY_POLICY)};
const int kv_policy_count = (int)(sizeof(kv_policies) / sizeof(kv_policies[0]));

const KVCodec *const kv_codecs[] = {KV_CODECS(ENTRY_CODEC)};
const int kv_codec_count = (int)(sizeof(kv_codecs) / sizeof(kv_codecs[0]));

const KVPolicy *kv_policy_find(const char *name, size_t len) {
    for (int i = 0; i < kv_policy_count; i++)
        if (strlen(kv_policies[i]->name) == len && strncmp(kv_policies[i]->name, name, len) == 0) return kv_policies[i];
    return NULL;
}

const KVCodec *kv_codec_find(const char *name, size_t len) {
    for (int i = 0; i < kv_codec_count; i++)
        if (strlen(kv_codecs[i]->name) == len && strncmp(kv_codecs[i]->name, name, len) == 0) return kv_codecs[i];
    return NULL;
}

void kv_policy_block_forms(char *buf, size_t cap) {
    const char *forms[64];
    int n = 0;
    for (int i = 0; i < kv_policy_count && n < 64; i++)
        if (kv_policies[i]->block_victim) forms[n++] = kv_policies[i]->form;
    size_t at = 0;
    buf[0] = 0;
    for (int i = 0; i < n && at < cap; i++)
        at += (size_t)snprintf(buf + at, cap - at, "%s%s", i == 0 ? "" : i + 1 == n ? " or " : ", ", forms[i]);
}

int kv_codec_group(const KVSpec *spec, int dim) { return spec->group ? spec->group : (dim < 32 ? dim : 32); }

int kv_policy_protected(int recent, int budget) { return recent < budget ? recent : budget - 1; }

int kv_policy_extreme(const KVLane *lane, int from, int to, int sign) {
    int best = from;
    for (int s = from + 1; s < to; s++)
        if (sign * lane->score[s] < sign * lane->score[best]) best = s;
    return best;
}
