// The matrix-product precision modes' names (ops.h, precision_set): what --precision takes and banners print.
#include <string.h>

#include "ops.h"

static const char *const NAMES[OPS_PRECISION_COUNT] = {"fp32", "tf32", "bf16"};

const char *ops_precision_name(int mode) { return mode >= 0 && mode < OPS_PRECISION_COUNT ? NAMES[mode] : "?"; }

int ops_precision_parse(const char *name, int *mode, char *err) {
    for (int i = 0; i < OPS_PRECISION_COUNT; i++)
        if (strcmp(name, NAMES[i]) == 0) {
            *mode = i;
            return 0;
        }
    err_set(err, "bad --precision '%s': valid values are fp32, tf32, bf16", name);
    return -1;
}
