// Tests of how the CUDA backend is found and loaded (common/device.h, common/device_backend.h; issue 13), suite
// `device`: the CPU programs do not link any CUDA library (their ELF NEEDED entries, read here), a CPU run
// loads none (the dynamic loader's own report, LD_DEBUG=files), `--device cuda` loads libkvlab_cuda.so on demand,
// and every way it can fail (no GPU, no CUDA in the build, a missing or foreign KVLAB_CUDA_LIB) is one line
// naming why, with exit status 1.
#include <criterion/criterion.h>

#include <dlfcn.h>
#include <elf.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli_util.h"
#include "../common/common.h"
#include "../common/device.h"
#include "../common/device_backend.h"

TestSuite(device, .init = cliutil_setup, .fini = cliutil_teardown, .timeout = 60);

static const char *const CPU_PROGRAMS[] = {"train", "infer", "serve", "bench"};
static const char *const CUDA_LIBS[] = {"libcuda.", "libcudart", "libcublas", "libcurand", "libkvlab_cuda"};

static const char *build_dir(void) {
    const char *b = getenv("KVLAB_BUILD");
    return b && *b ? b : "build";
}

// The DT_NEEDED names of a 64-bit ELF file, joined with '\n' into out (written independently of the loader:
// the .dynamic section and the string table it links to, from the section headers).
static void elf_needed(const char *path, char *out, size_t len) {
    size_t n = 0;
    char err[ERR_LEN];
    unsigned char *f = common_read_file(path, &n, err);
    cr_assert(f, "%s", err);
    cr_assert(n >= sizeof(Elf64_Ehdr) && memcmp(f, ELFMAG, SELFMAG) == 0 && f[EI_CLASS] == ELFCLASS64,
              "%s is not a 64-bit ELF file", path);
    const Elf64_Ehdr *eh = (const Elf64_Ehdr *)f;
    cr_assert(eh->e_shoff + (size_t)eh->e_shnum * sizeof(Elf64_Shdr) <= n, "%s: section headers out of range", path);
    const Elf64_Shdr *sh = (const Elf64_Shdr *)(f + eh->e_shoff);
    out[0] = 0;
    size_t used = 0;
    int found = 0;
    for (int i = 0; i < eh->e_shnum; i++) {
        if (sh[i].sh_type != SHT_DYNAMIC) continue;
        found = 1;
        cr_assert(sh[i].sh_link < eh->e_shnum && sh[i].sh_offset + sh[i].sh_size <= n);
        const Elf64_Shdr *str = &sh[sh[i].sh_link];
        cr_assert(str->sh_offset + str->sh_size <= n);
        const Elf64_Dyn *d = (const Elf64_Dyn *)(f + sh[i].sh_offset);
        for (size_t k = 0; k < sh[i].sh_size / sizeof(Elf64_Dyn) && d[k].d_tag != DT_NULL; k++) {
            if (d[k].d_tag != DT_NEEDED) continue;
            cr_assert(d[k].d_un.d_val < str->sh_size, "%s: DT_NEEDED outside the string table", path);
            const char *name = (const char *)f + str->sh_offset + d[k].d_un.d_val;
            int w = snprintf(out + used, len - used, "%s\n", name);
            cr_assert(w > 0 && (size_t)w < len - used);
            used += (size_t)w;
        }
    }
    cr_assert(found, "%s has no .dynamic section (linked statically?)", path);
    common_free(f);
}

static const char *cuda_needed(const char *needed) {
    for (size_t i = 0; i < sizeof CUDA_LIBS / sizeof CUDA_LIBS[0]; i++)
        for (const char *p = needed; (p = strstr(p, CUDA_LIBS[i])); p++)
            if (p == needed || p[-1] == '\n') return CUDA_LIBS[i];
    return NULL;
}

static int cuda_library_built(char *path, size_t len) {
    snprintf(path, len, "%s/%s", build_dir(), DEVICE_CUDA_LIBRARY);
    return access(path, F_OK) == 0;
}

Test(device, cpu_programs_link_no_cuda) {
    char path[512], needed[4096];
    for (size_t i = 0; i < sizeof CPU_PROGRAMS / sizeof CPU_PROGRAMS[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", build_dir(), CPU_PROGRAMS[i]);
        elf_needed(path, needed, sizeof needed);
        cr_assert(strstr(needed, "libopenblas"), "%s: the reader found no libopenblas among:\n%s", path, needed);
        const char *bad = cuda_needed(needed);
        cr_expect_null(bad, "%s links %s* (a CPU run would load it):\n%s", path, bad, needed);
    }
    // the reader sees CUDA libraries where they are: in the backend
    if (cuda_library_built(path, sizeof path)) {
        elf_needed(path, needed, sizeof needed);
        cr_assert(strstr(needed, "libcublas"), "%s does not link cuBLAS:\n%s", path, needed);
    }
}

// The loader's own account (LD_DEBUG=files names every object it maps): a CPU run maps no CUDA library.
// (That `--help` starts once, without the runtime's re-exec: tests/test_runtime.c.)
Test(device, cpu_run_loads_no_cuda) {
    setenv("LD_DEBUG", "files", 1);
    Run r = RUN("infer", "--help");
    unsetenv("LD_DEBUG");
    cliutil_expect_ok(&r, "infer --help");
    cr_assert(strstr(r.err, "libopenblas"), "LD_DEBUG=files reported nothing:\n%.2000s", r.err);
    cr_expect(!strstr(r.err, "libcublas") && !strstr(r.err, "libcudart") && !strstr(r.err, DEVICE_CUDA_LIBRARY),
              "infer --help loaded CUDA:\n%.4000s", r.err);
    cliutil_run_free(&r);
    // a run that computes: one training step on the CPU
    const char *corpus = cliutil_write_corpus();
    setenv("LD_DEBUG", "files", 1);
    r = RUN("train", "--preset", "tiny", "--steps", "1", "--data", corpus, "--out", cliutil_tmp("t.ckpt"), "--quiet");
    unsetenv("LD_DEBUG");
    cliutil_expect_ok(&r, "train --preset tiny");
    cr_assert(strstr(r.err, "libopenblas"), "LD_DEBUG=files reported nothing:\n%.2000s", r.err);
    cr_expect(!strstr(r.err, "libcublas") && !strstr(r.err, "libcudart") && !strstr(r.err, DEVICE_CUDA_LIBRARY),
              "a CPU training step loaded CUDA:\n%.4000s", r.err);
    cliutil_run_free(&r);
}

// --device cuda loads the backend on demand (when this build has one), and without a usable GPU fails with one
// line that names the same reason this process gets.
Test(device, cuda_on_demand) {
    char so[512], why[ERR_LEN];
    int built = cuda_library_built(so, sizeof so);
    int gpu = device_cuda_available(why);
    const char *out = cliutil_tmp("cuda.ckpt"), *corpus = cliutil_write_corpus();
    Run r = RUN("train", "--preset", "tiny", "--steps", "1", "--device", "cuda", "--data", corpus, "--out", out,
                "--quiet");
    if (gpu) {
        cliutil_expect_ok(&r, "train --device cuda");
    } else {
        EXPECT_ERROR(&r, "train", "--device cuda: ", why);
        if (!built) cr_expect(strstr(why, "this build has no CUDA"), "%s", why);
        else cr_expect(strstr(why, "CUDA device") || strstr(why, "NVIDIA GPU"), "a build with the backend, no GPU: %s",
                       why);
    }
    cliutil_run_free(&r);
    if (!built) cr_skip_test("no %s in this build (nvcc was not found when ./configure.py ran)", so);
    setenv("LD_DEBUG", "files", 1);
    r = RUN("train", "--preset", "tiny", "--steps", "1", "--device", "cuda", "--data", corpus, "--out", out,
            "--quiet");
    unsetenv("LD_DEBUG");
    cr_expect(strstr(r.err, DEVICE_CUDA_LIBRARY) && strstr(r.err, "libcublas"),
              "train --device cuda did not load the backend and cuBLAS:\n%.4000s", r.err);
    cliutil_run_free(&r);
}

Test(device, missing_library_named) {
    const char *missing = cliutil_tmp("missing.so");
    setenv(DEVICE_CUDA_ENV, missing, 1);
    Run r = RUN("train", "--preset", "tiny", "--steps", "1", "--device", "cuda", "--out", cliutil_tmp("m.ckpt"));
    EXPECT_ERROR(&r, "train", "--device cuda: cannot load ", missing, "No such file");
    cliutil_run_free(&r);
    // not a shared object at all
    const char *text = cliutil_write_corpus();
    setenv(DEVICE_CUDA_ENV, text, 1);
    r = RUN("train", "--preset", "tiny", "--steps", "1", "--device", "cuda", "--out", cliutil_tmp("m.ckpt"));
    EXPECT_ERROR(&r, "train", "--device cuda: cannot load ", text);
    cliutil_run_free(&r);
}

// A real shared object without the entry point: the C library this test runs with.
Test(device, foreign_library_refused) {
    Dl_info info;
    cr_assert(dladdr((void *)&printf, &info) && info.dli_fname && info.dli_fname[0] == '/', "no path for libc");
    setenv(DEVICE_CUDA_ENV, info.dli_fname, 1);
    Run r = RUN("train", "--preset", "tiny", "--steps", "1", "--device", "cuda", "--out", cliutil_tmp("f.ckpt"));
    EXPECT_ERROR(&r, "train", "--device cuda: ", info.dli_fname, "is not a kvlab CUDA backend", DEVICE_CUDA_ENTRY);
    cliutil_run_free(&r);
}
