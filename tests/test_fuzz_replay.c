// Replays every fuzz target's seed corpus (tests/fuzz/corpus/<target>/) and every crash ever found
// (tests/fuzz/crashes/<target>/) through the same fuzz_<target> functions libFuzzer drives (tests/fuzz/fuzz.h),
// compiled into this binary without libFuzzer: a regression in a parser fails here, in the release and in
// the ASan build alike. A target reports a broken invariant by aborting, so a failing input shows as this
// test crashing; the file being replayed is named on stderr first. Files starting with '.' are skipped (a
// .keep holds an empty crashes/ folder in git). Run the fuzzers themselves with scripts/fuzz.sh.
#include <criterion/criterion.h>
#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz/fuzz.h"

static char replaying[512]; // the file whose replay is running, for the crash handler

static void on_abort(int sig) {
    static const char msg[] = "fuzz replay: crashed on ";
    ssize_t unused = write(2, msg, sizeof msg - 1);
    unused = write(2, replaying, strlen(replaying));
    unused = write(2, "\n", 1);
    (void)unused;
    signal(sig, SIG_DFL);
    raise(sig);
}

static int cmp_names(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

// Feeds every file of dir to fn (in name order); returns how many. A missing dir counts 0.
static int replay_dir(const FuzzTarget *t, const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    char **names = NULL;
    int n = 0, cap = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.') continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            names = realloc(names, (size_t)cap * sizeof *names);
            cr_assert_not_null(names);
        }
        names[n++] = strdup(e->d_name);
    }
    closedir(d);
    if (n > 1) qsort(names, (size_t)n, sizeof *names, cmp_names);
    for (int i = 0; i < n; i++) {
        snprintf(replaying, sizeof replaying, "%s/%s (target %s)", dir, names[i], t->name);
        char path[512];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        FILE *f = fopen(path, "rb");
        cr_assert_not_null(f, "cannot open %s", path);
        cr_assert_eq(fseek(f, 0, SEEK_END), 0);
        long len = ftell(f);
        cr_assert(len >= 0);
        rewind(f);
        uint8_t *buf = malloc((size_t)len + 1); // +1: a 0-byte input still gets a valid pointer
        cr_assert_not_null(buf);
        cr_assert_eq(fread(buf, 1, (size_t)len, f), (size_t)len, "short read of %s", path);
        fclose(f);
        cr_assert_eq(t->fn(buf, (size_t)len), 0, "%s", replaying);
        free(buf);
        free(names[i]);
    }
    free(names);
    return n;
}

static void replay(const char *name) {
    signal(SIGABRT, on_abort);
    const FuzzTarget *t = NULL;
    for (int i = 0; i < fuzz_n_targets; i++)
        if (strcmp(fuzz_targets[i].name, name) == 0) t = &fuzz_targets[i];
    cr_assert_not_null(t, "no fuzz target %s", name);
    char dir[256];
    snprintf(dir, sizeof dir, "tests/fuzz/corpus/%s", name);
    int seeds = replay_dir(t, dir);
    cr_assert_gt(seeds, 0, "no seeds in %s (run from the repository root)", dir);
    snprintf(dir, sizeof dir, "tests/fuzz/crashes/%s", name);
    replay_dir(t, dir);
}

Test(fuzz_replay, checkpoint) { replay("checkpoint"); }
Test(fuzz_replay, spec) { replay("spec"); }
Test(fuzz_replay, corpus) { replay("corpus"); }
Test(fuzz_replay, http) { replay("http"); }
Test(fuzz_replay, gguf) { replay("gguf"); }

// Every target in the table has its test above and a seed folder.
Test(fuzz_replay, every_target_replayed) {
    const char *tested[] = {"checkpoint", "spec", "corpus", "http", "gguf"};
    cr_assert_eq(fuzz_n_targets, (int)(sizeof tested / sizeof tested[0]), "a new target needs its Test() here");
    for (int i = 0; i < fuzz_n_targets; i++) {
        char dir[256];
        snprintf(dir, sizeof dir, "tests/fuzz/corpus/%s", fuzz_targets[i].name);
        cr_assert_eq(access(dir, R_OK), 0, "no seed corpus %s", dir);
    }
}
