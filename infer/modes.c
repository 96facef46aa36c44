// The table of build/infer's modes, in the order --help lists them; each mode lives in its own file.
#include "mode.h"

extern const Mode mode_generate, mode_score, mode_kv, mode_recall, mode_ruler, mode_prefix, mode_tier, mode_reuse,
    mode_attention, mode_compare_gen;

const Mode *const mode_table[] = {&mode_generate, &mode_score,     &mode_kv,       &mode_recall, &mode_ruler, &mode_prefix,
                                  &mode_tier,     &mode_reuse,     &mode_attention, &mode_compare_gen};
const int mode_count = sizeof(mode_table) / sizeof(mode_table[0]);
