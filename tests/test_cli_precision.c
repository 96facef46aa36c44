// build/train --precision, suite `cli_precision`: the CPU backend trains in fp32 only, so tf32 and bf16 there are
// one clear line and exit 1 before any file is touched; a bad name lists the valid ones; fp32 on the CPU trains
// and the banner names the precision. (The flag on the device: tests/test_cuda_train.c, on the CUDA emulator.)
#include <criterion/criterion.h>

#include <string.h>

#include "cli_util.h"

TestSuite(cli_precision, .init = cliutil_setup, .fini = cliutil_teardown, .timeout = 60);

Test(cli_precision, cpu_refuses_reduced_precision) {
    const char *modes[] = {"tf32", "bf16"};
    for (int i = 0; i < 2; i++) {
        Run r = RUN("train", "--preset", "tiny", "--precision", modes[i], "--out", cliutil_tmp("m.ckpt"));
        EXPECT_ERROR(&r, "train", "--precision", modes[i], "needs --device cuda");
        cliutil_run_free(&r);
        r = RUN("train", "--preset", "tiny", "--precision", modes[i], "--device", "cpu", "--out", cliutil_tmp("m.ckpt"));
        EXPECT_ERROR(&r, "train", "cpu backend computes in fp32 only");
        cliutil_run_free(&r);
    }
}

Test(cli_precision, bad_name) {
    Run r = RUN("train", "--precision", "fp16");
    EXPECT_ERROR(&r, "train", "bad --precision 'fp16'", "fp32, tf32, bf16");
    cliutil_run_free(&r);
    r = RUN("train", "--precision");
    cr_expect_eq(r.status, 1);
    cliutil_run_free(&r);
}

Test(cli_precision, fp32_trains_on_cpu) {
    Run r = RUN("train", "--preset", "tiny", "--steps", "1", "--eval-windows", "2", "--precision", "fp32", "--data",
                cliutil_write_corpus(), "--out", cliutil_tmp("m.ckpt"), "--quiet");
    cliutil_expect_ok(&r, "train --precision fp32");
    cr_expect(strstr(r.err, "naive attention on cpu, fp32 products"), "banner:\n%s", r.err);
    cliutil_run_free(&r);
}
