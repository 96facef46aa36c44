// Full selection: every token stays. The baseline every technique is measured against, and what a bare
// storage term composes with (`int4` = `full+int4`).
#include "policy.h"

static int full_parse(KVSpec *spec, const char *args) {
    (void)spec;
    return args ? -1 : 0;
}

const KVPolicy kv_policy_full = {
    .name = "full",
    .form = "full",
    .help = "every token (the baseline)",
    .parse = full_parse,
};
