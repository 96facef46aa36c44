// --device NAME -> the op table, for the programs' command lines.
#include <string.h>

#include "../common/device.h"
#include "ops.h"
#if KVLAB_CUDA
#include "cuda_ops.h"
#endif

const Ops *ops_for_device(const char *name, char *err) {
    if (strcmp(name, "cpu") == 0) return &ops_cpu;
    if (strcmp(name, "cuda") == 0) {
        char why[ERR_LEN];
        if (!device_cuda_available(why)) {
            err_set(err, "--device cuda: %s", why);
            return NULL;
        }
#if KVLAB_CUDA
        return &ops_cuda;
#endif
    }
    err_set(err, "bad --device '%s': valid values are cpu, cuda", name);
    return NULL;
}
