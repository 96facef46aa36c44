// --device NAME -> the op table, for the programs' command lines. The CUDA table comes from libkvlab_cuda.so,
// loaded on this first use (common/device.h), so CPU runs never load the CUDA libraries.
#include <string.h>

#include "../common/device.h"
#include "ops.h"

const Ops *ops_for_device(const char *name, char *err) {
    if (strcmp(name, "cpu") == 0) return &ops_cpu;
    if (strcmp(name, "cuda") == 0) {
        char why[ERR_LEN];
        if (!device_cuda_available(why)) {
            err_set(err, "--device cuda: %s", why);
            return NULL;
        }
        size_t size = 0;
        const Ops *ops = device_cuda_ops(&size);
        if (!ops || size != sizeof(Ops)) { // a library built from other sources than this program
            err_set(err, "--device cuda: the CUDA backend's op table has %zu bytes, this program's %zu: rebuild "
                         "both with ninja", size, sizeof(Ops));
            return NULL;
        }
        return ops;
    }
    err_set(err, "bad --device '%s': valid values are cpu, cuda", name);
    return NULL;
}
