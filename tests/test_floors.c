// The dependency floors (DESIGN.md, "Layout"): scripts/check_floors.py must find no include that points up or
// sideways and no header declaring another folder's function, and it must catch both when they are there.
#include <criterion/criterion.h>

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char dir[64];

static void setup(void) {
    strcpy(dir, "/tmp/kvlab-floors-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
}

static int remove_entry(const char *p, const struct stat *st, int type, struct FTW *ftw) {
    (void)st;
    (void)type;
    (void)ftw;
    return remove(p);
}

static void teardown(void) { nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS); }

TestSuite(floors, .init = setup, .fini = teardown);

// Runs the checker on root (NULL: this repository, from its root as the tests run); returns its exit status
// and its output (malloc'd, stdout then stderr) in *out.
static int check_floors(const char *root, char **out) {
    char log[128];
    char cmd[512];
    snprintf(log, sizeof log, "%s/check.log", dir);
    snprintf(cmd, sizeof cmd, "python3 scripts/check_floors.py %s > '%s' 2>&1", root ? root : "", log);
    int st = system(cmd);
    FILE *f = fopen(log, "rb");
    cr_assert_not_null(f);
    size_t cap = 1 << 20;
    *out = calloc(cap + 1, 1);
    cr_assert_not_null(*out);
    size_t n = fread(*out, 1, cap, f);
    (*out)[n] = 0;
    fclose(f);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void write_file(const char *rel, const char *text) {
    char path[256];
    snprintf(path, sizeof path, "%s/%s", dir, rel);
    char *slash = strrchr(path, '/');
    *slash = 0;
    mkdir(path, 0700);
    *slash = '/';
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs(text, f);
    cr_assert_eq(fclose(f), 0);
}

Test(floors, every_arrow_points_down) {
    char *out;
    int rc = check_floors(NULL, &out);
    cr_expect_eq(rc, 0, "scripts/check_floors.py found violations:\n%s", out);
    free(out);
}

// The training side's own promise, kept even while other folders still have violations: nothing below the
// programs includes train/ or declares what train/ defines (the ops and the checkpoint know no trainer).
Test(floors, nothing_below_the_programs_reaches_train) {
    char *out;
    check_floors(NULL, &out);
    for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n")) {
        int program = !strncmp(line, "train/", 6) || !strncmp(line, "infer/", 6) || !strncmp(line, "serve/", 6) ||
                      !strncmp(line, "bench/", 6);
        int reaches_train = strstr(line, "includes train/") || strstr(line, "defined in train/");
        cr_expect(program || !reaches_train, "%s", line);
    }
    free(out);
}

Test(floors, checker_catches_up_and_sideways_arrows_and_foreign_declarations) {
    write_file("common/common.h", "int common_ok(void);\n");
    write_file("common/common.c", "#include \"common.h\"\nint common_ok(void) { return 0; }\n");
    write_file("layers/ops.c", "#include \"../common/common.h\"\n#include \"../train/trainer.h\"\n");
    write_file("layers/ops.h", "// declared here, defined in train/\nvoid train_step(int n);\n");
    write_file("train/trainer.h", "void train_step(int n);\n");
    write_file("train/trainer.c", "#include \"trainer.h\"\nvoid train_step(int n) { (void)n; }\n");
    write_file("serve/main.c", "#include \"../infer/sample.h\"\n");
    write_file("bench/bench.c", "#include \"../train/presets.h\"\n"); // the documented exception
    char *out;
    int rc = check_floors(dir, &out);
    cr_expect_eq(rc, 1, "%s", out);
    cr_expect(strstr(out, "layers/ops.c:2 includes train/trainer.h, which is above it"), "%s", out);
    cr_expect(strstr(out, "serve/main.c:1 includes infer/sample.h, which is beside it"), "%s", out);
    cr_expect(strstr(out, "layers/ops.h:2 declares train_step, which is defined in train/"), "%s", out);
    cr_expect(!strstr(out, "bench/"), "%s", out);
    cr_expect(!strstr(out, "common/"), "%s", out);
    free(out);
}
