// build/train --check-grads on the CUDA backend (through the emulator in ninja test; skipped without a backend):
// every tensor of one batch's gradient agrees with the CPU's within the tolerance of each precision, with both
// attention forms,
// and the check refuses to run without a device.
#include <criterion/criterion.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/device.h"
#include "../layers/ops.h"
#include "backend_util.h"

Test(cuda_gradcheck, every_tensor_agrees) {
    char why[ERR_LEN];
    if (!ops_for_device("cuda", why)) cr_skip_test("%s", why);
    static char out[1 << 14];
    const char *forms[] = {"naive --precision fp32", "flash --precision fp32", "flash --precision tf32",
                           "flash --precision bf16"};
    for (int i = 0; i < 4; i++) {
        char args[256];
        snprintf(args, sizeof args, "--preset tiny --dropout 0.1 --device cuda --attention %s --check-grads", forms[i]);
        int rc = bk_run_program("train", args, out, sizeof out);
        cr_expect(rc == 0 && strstr(out, "check-grads: pass"), "%s: exit %d:\n%s", forms[i], rc, out);
        cr_expect(strstr(out, "final_norm") && strstr(out, "wte") && !strstr(out, "FAIL"), "%s", out);
    }
}

Test(cuda_gradcheck, needs_a_device) {
    static char out[1 << 12];
    int rc = bk_run_program("train", "--preset tiny --check-grads", out, sizeof out);
    cr_expect(rc != 0 && strstr(out, "train: --check-grads compares the CPU with a device: give --device cuda\n"),
              "exit %d:\n%s", rc, out);
}
