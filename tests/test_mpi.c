// End-to-end tests of data-parallel training (train/dist.h), suite `mpi`: build/train under
// `mpirun --allow-run-as-root --oversubscribe -np N` with one OpenMP thread per rank. Skipped, with the reason,
// when mpirun is not on PATH or build/train was built without MPI.
//
// The promises: N ranks of G micro-batches train what one process of N G micro-batches does (the same data, the
// same dropout masks; the losses agree within TOL, from the order of the gradient sums alone); ZeRO-1 is the
// unsharded optimizer bit for bit (logs and checkpoint bytes); a checkpoint resumes on another rank count; a rank
// with a bad corpus, a bad flag or other run flags stops every rank with one line naming it; a killed rank stops
// the job, and the last checkpoint stays loadable. Every mpirun runs under `timeout`, so a hang fails the test instead of stalling it.
#include <criterion/criterion.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli_util.h"

TestSuite(mpi, .init = cliutil_setup, .fini = cliutil_teardown, .timeout = 180);

// How the ranks of one machine talk in a container as root: shared memory (vader) without the single-copy
// mechanism (it needs ptrace rights a container may not grant), no binding (tests share the cores).
#define MPIRUN_FLAGS "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "--mca", "btl", "self,vader", \
                     "--mca", "btl_vader_single_copy_mechanism", "none"
#define MPI_LIMIT_S "120" // the whole mpirun, killed (status 124) past this

// Losses of runs that differ only in the order of the gradient sums: each rank sums its own micro-batches'
// gradients, then MPI adds the ranks' sums, where one process adds every micro-batch into one buffer in turn
// (and every backward op accumulates into it). The first step's loss is the same bits (nothing has been summed
// yet); after that the weights differ by float rounding, which 20 steps of the tiny model keep near 1e-7
// (measured: at most 2.4e-7 in the train and validation losses, 0 in the gradient norm as printed).
#define TOL 2e-5

// Skips the test unless mpirun is on PATH and build/train has MPI.
static void require_mpi(void) {
    Run r = cliutil_run_cmd(ARGS("sh", "-c", "command -v mpirun"));
    int found = r.status == 0;
    cliutil_run_free(&r);
    if (!found) cr_skip_test("mpirun not found on PATH (Debian package: openmpi-bin)");
    r = RUN("train", "--help");
    int has = strstr(r.out, "this build: MPI") != NULL;
    cliutil_run_free(&r);
    if (!has) cr_skip_test("build/train was built without MPI (configure.py found no mpicc: libopenmpi-dev)");
    setenv("OMP_NUM_THREADS", "1", 1); // ranks x threads = the 2 cores of CI
    // The sanitizer build: Open MPI keeps its runtime's allocations to the end (tests/lsan.supp names its
    // libraries, and only those). The fast unwinder loses the frames of its plugins, leaving stacks that name no
    // library to match; the precise one keeps them (slower mallocs, and these runs make few).
    const char *asan = getenv("ASAN_OPTIONS");
    if (asan && !strstr(asan, "fast_unwind_on_malloc")) {
        static char opts[512];
        snprintf(opts, sizeof opts, "%s:fast_unwind_on_malloc=0", asan);
        setenv("ASAN_OPTIONS", opts, 1);
    }
}

// Runs build/train on np ranks with the NULL-terminated arguments.
static Run mpirun_train(int np, const char *const *args) {
    const char *argv[80] = {"timeout", "-k", "10", MPI_LIMIT_S, "mpirun", MPIRUN_FLAGS, "-np", NULL};
    int argc = 0;
    while (argv[argc]) argc++;
    char n[16];
    snprintf(n, sizeof n, "%d", np);
    argv[argc++] = n;
    argv[argc++] = cliutil_exe("train");
    for (int i = 0; args[i]; i++) {
        cr_assert_lt(argc, 79);
        argv[argc++] = args[i];
    }
    argv[argc] = NULL;
    return cliutil_run_cmd(argv);
}

#define MPIRUN(np, ...) mpirun_train(np, ARGS(__VA_ARGS__))

static void expect_ok(const Run *r, const char *what) {
    cr_assert_neq(r->status, 124, "%s: timed out after %s s (a hang); stderr:\n%s", what, MPI_LIMIT_S, r->err);
    cliutil_expect_ok(r, what);
}

// --- the --log lines -------------------------------------------------------------------------------------

#define MAX_STEPS 20

typedef struct {
    int n;
    double train_loss[MAX_STEPS + 1], val_loss[MAX_STEPS + 1], grad_norm[MAX_STEPS + 1];
    char text[MAX_STEPS + 1][256]; // each line without its tokens_per_s (a timing)
} Log;

static double number(const char *line, const char *key) {
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\": ", key);
    const char *p = strstr(line, pat);
    return p ? strtod(p + strlen(pat), NULL) : NAN;
}

static void read_log(const char *path, Log *log) {
    memset(log, 0, sizeof(*log));
    char *text = cliutil_read_file(path, NULL);
    cr_assert_not_null(text, "no log at %s", path);
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        int step = (int)number(line, "step");
        cr_assert_eq(step, log->n + 1, "%s: expected step %d: %s", path, log->n + 1, line);
        cr_assert_leq(step, MAX_STEPS);
        log->n = step;
        log->train_loss[step] = number(line, "train_loss");
        log->val_loss[step] = number(line, "val_loss");
        log->grad_norm[step] = number(line, "grad_norm");
        const char *t = strstr(line, ", \"tokens_per_s\"");
        cr_assert_not_null(t, "%s", line);
        snprintf(log->text[step], sizeof log->text[0], "%.*s", (int)(t - line), line);
    }
    free(text);
}

// Steps first..last of a and b agree within TOL (train and validation loss, gradient norm relative).
static void expect_close(const Log *a, const Log *b, int first, int last, const char *what) {
    for (int s = first; s <= last; s++) {
        cr_expect_leq(fabs(a->train_loss[s] - b->train_loss[s]), TOL, "%s: step %d train loss %.9g vs %.9g", what, s,
                      a->train_loss[s], b->train_loss[s]);
        cr_expect_eq(isnan(a->val_loss[s]), isnan(b->val_loss[s]), "%s: step %d evaluated in one run only", what, s);
        if (!isnan(a->val_loss[s]))
            cr_expect_leq(fabs(a->val_loss[s] - b->val_loss[s]), TOL, "%s: step %d val loss %.9g vs %.9g", what, s,
                          a->val_loss[s], b->val_loss[s]);
        cr_expect_leq(fabs(a->grad_norm[s] - b->grad_norm[s]), TOL * (1 + a->grad_norm[s]),
                      "%s: step %d grad norm %.6g vs %.6g", what, s, a->grad_norm[s], b->grad_norm[s]);
    }
}

#define COMMON(corpus) "--preset", "tiny", "--steps", "20", "--eval-interval", "5", "--seed", "7", "--dropout", "0.1", \
                       "--data", corpus, "--quiet"

// --- equivalence ------------------------------------------------------------------------------------------

Test(mpi, two_ranks_train_what_one_process_accumulating_both_does) {
    require_mpi();
    const char *corpus = cliutil_write_corpus();
    Run r = RUN("train", COMMON(corpus), "--grad-accum", "2", "--log", cliutil_tmp("one.jsonl"), "--out",
                cliutil_tmp("one.ckpt"));
    cliutil_expect_ok(&r, "1 process, --grad-accum 2");
    cliutil_run_free(&r);
    r = MPIRUN(2, COMMON(corpus), "--log", cliutil_tmp("two.jsonl"), "--out", cliutil_tmp("two.ckpt"));
    expect_ok(&r, "2 ranks, --grad-accum 1");
    cr_expect(strstr(r.err, "batch 4 x grad-accum 1 x 2 ranks = 8 sequences per step"), "banner:\n%s", r.err);
    cr_expect(strstr(r.err, "train: done: step 20"), "stderr:\n%s", r.err);
    cliutil_run_free(&r);
    static Log one, two;
    read_log(cliutil_tmp("one.jsonl"), &one);
    read_log(cliutil_tmp("two.jsonl"), &two);
    cr_assert_eq(one.n, 20);
    cr_assert_eq(two.n, 20, "rank 0 alone logs: one line per step");
    // the same micro-batches and dropout masks: the first step's loss and norm are the same bits
    cr_expect_str_eq(one.text[1], two.text[1]);
    expect_close(&one, &two, 1, 20, "2 ranks vs 1 process");
}

Test(mpi, zero1_is_the_unsharded_optimizer_bit_for_bit) {
    require_mpi();
    const char *corpus = cliutil_write_corpus();
    // 3 ranks cut the parameter block inside tensors, into unequal shards
    for (int np = 2; np <= 3; np++) {
        static Log plain, zero;
        Run r = MPIRUN(np, COMMON(corpus), "--log", cliutil_tmp("plain.jsonl"), "--out", cliutil_tmp("plain.ckpt"));
        expect_ok(&r, "without ZeRO");
        cliutil_run_free(&r);
        r = MPIRUN(np, COMMON(corpus), "--zero", "1", "--log", cliutil_tmp("zero.jsonl"), "--out",
                   cliutil_tmp("zero.ckpt"));
        expect_ok(&r, "--zero 1");
        cr_expect(strstr(r.err, "ZeRO-1"), "banner:\n%s", r.err);
        cliutil_run_free(&r);
        read_log(cliutil_tmp("plain.jsonl"), &plain);
        read_log(cliutil_tmp("zero.jsonl"), &zero);
        cr_assert_eq(plain.n, 20);
        cr_assert_eq(zero.n, 20);
        for (int s = 1; s <= 20; s++) cr_expect_str_eq(zero.text[s], plain.text[s], "%d ranks, step %d", np, s);
        // the checkpoint holds every moment, gathered from the shards: the same bytes
        cr_expect(cliutil_files_equal(cliutil_tmp("plain.ckpt"), cliutil_tmp("zero.ckpt")),
                  "%d ranks: the ZeRO-1 checkpoint differs from the unsharded one", np);
        unlink(cliutil_tmp("plain.jsonl"));
        unlink(cliutil_tmp("zero.jsonl"));
    }
}

// A run stopped at step 10 on one rank count and resumed on another continues the uninterrupted run: steps
// 1-10 are that run's own bits, steps 11-20 agree within TOL (the resumed half sums in the other order).
static void resume_across(int np_first, int np_second) {
    const char *corpus = cliutil_write_corpus();
    char what[64];
    snprintf(what, sizeof what, "%d rank(s), resumed on %d", np_first, np_second);
    const char *accum = np_first == 1 ? "2" : "1"; // the same global batch: 2 micro-batches of 4 sequences
    Run r = np_first == 1 ? RUN("train", COMMON(corpus), "--grad-accum", accum, "--log", cliutil_tmp("a.jsonl"),
                                "--out", cliutil_tmp("a.ckpt"))
                          : MPIRUN(np_first, COMMON(corpus), "--grad-accum", accum, "--log", cliutil_tmp("a.jsonl"),
                                   "--out", cliutil_tmp("a.ckpt"));
    expect_ok(&r, "uninterrupted");
    cliutil_run_free(&r);
    r = np_first == 1 ? RUN("train", COMMON(corpus), "--grad-accum", accum, "--stop-after", "10", "--log",
                            cliutil_tmp("b.jsonl"), "--out", cliutil_tmp("b.ckpt"))
                      : MPIRUN(np_first, COMMON(corpus), "--grad-accum", accum, "--stop-after", "10", "--log",
                               cliutil_tmp("b.jsonl"), "--out", cliutil_tmp("b.ckpt"));
    expect_ok(&r, "first half");
    cliutil_run_free(&r);
    const char *ckpt = cliutil_tmp("b.ckpt"), *log = cliutil_tmp("b.jsonl");
    r = np_second == 1 ? RUN("train", "--resume", ckpt, "--log", log, "--data", corpus, "--quiet")
                       : MPIRUN(np_second, "--resume", ckpt, "--log", log, "--data", corpus, "--quiet");
    expect_ok(&r, what);
    cr_expect(strstr(r.err, "steps 10..20"), "stderr:\n%s", r.err);
    cliutil_run_free(&r);
    static Log a, b;
    read_log(cliutil_tmp("a.jsonl"), &a);
    read_log(log, &b);
    cr_assert_eq(b.n, 20);
    for (int s = 1; s <= 10; s++) cr_expect_str_eq(b.text[s], a.text[s], "%s: step %d", what, s);
    expect_close(&a, &b, 11, 20, what);
}

Test(mpi, a_two_rank_checkpoint_resumes_on_one_rank) {
    require_mpi();
    resume_across(2, 1);
}

Test(mpi, a_one_process_checkpoint_resumes_on_two_ranks) {
    require_mpi();
    resume_across(1, 2);
}

Test(mpi, resuming_on_a_rank_count_that_cannot_split_the_step_is_one_line) {
    require_mpi();
    const char *corpus = cliutil_write_corpus();
    const char *ckpt = cliutil_tmp("two.ckpt");
    Run r = MPIRUN(2, "--preset", "tiny", "--steps", "4", "--data", corpus, "--out", ckpt, "--quiet");
    expect_ok(&r, "2 ranks");
    cliutil_run_free(&r);
    r = MPIRUN(3, "--resume", ckpt, "--steps", "8", "--data", corpus, "--quiet");
    cr_assert_neq(r.status, 0);
    cr_assert_neq(r.status, 124, "a hang:\n%s", r.err);
    char expect[512];
    snprintf(expect, sizeof expect, "train: rank 0: '%s' was trained with 2 micro-batches of 4 sequences per step "
             "(global batch 8); 3 ranks cannot split them: resume on a rank count that divides 2\n", ckpt);
    cr_expect(strstr(r.err, expect), "expected the line\n%sgot:\n%s", expect, r.err);
    cliutil_run_free(&r);
}

// One process has no ranks to shard over: --zero 1 says in one note line that it changes nothing, and trains.
Test(mpi, zero1_in_one_process_is_one_note_line) {
    const char *corpus = cliutil_write_corpus();
    Run r = RUN("train", "--preset", "tiny", "--steps", "2", "--zero", "1", "--data", corpus, "--out",
                cliutil_tmp("z.ckpt"), "--quiet");
    cliutil_expect_ok(&r, "--zero 1, one process");
    cr_expect(strstr(r.err, "train: note: --zero 1 shards the optimizer state over the ranks of mpirun; one process "
                     "keeps all of it"), "stderr:\n%s", r.err);
    cliutil_run_free(&r);
}

// --- failures -------------------------------------------------------------------------------------------

// The lines of text that start with "train: ".
static int train_lines(const char *text) {
    int n = 0;
    for (const char *p = text; (p = strstr(p, "train: ")); p++)
        if (p == text || p[-1] == '\n') n++;
    return n;
}

// A rank given a corpus it cannot read, or another corpus, through mpirun's per-rank argument lists (two app
// contexts: rank 0, then rank 1): every rank stops, and the one line names rank 1 and why.
Test(mpi, a_bad_corpus_on_one_rank_stops_every_rank_with_one_line) {
    require_mpi();
    const char *corpus = cliutil_write_corpus();
    const char *other = cliutil_tmp("other.txt"), *missing = cliutil_tmp("missing.txt");
    size_t n = strlen(cliutil_corpus_text);
    char *text = malloc(41 * n); // the same characters, one repetition more
    for (int i = 0; i < 41; i++) memcpy(text + i * n, cliutil_corpus_text, n);
    cliutil_write_file(other, text, 41 * n);
    free(text);
    for (int i = 0; i < 2; i++) {
        const char *bad = i == 0 ? missing : other;
        const char *ckpt = cliutil_tmp("x.ckpt");
        const char *exe = cliutil_exe("train");
        Run r = cliutil_run_cmd(ARGS("timeout", "-k", "10", MPI_LIMIT_S, "mpirun", MPIRUN_FLAGS, "-np", "1", exe,
                                     "--preset", "tiny", "--steps", "4", "--data", corpus, "--out", ckpt, "--quiet",
                                     ":", "-np", "1", exe, "--preset", "tiny", "--steps", "4", "--data", bad, "--out",
                                     ckpt, "--quiet"));
        cr_assert_neq(r.status, 124, "a hang:\n%s", r.err);
        cr_expect_neq(r.status, 0, "stderr:\n%s", r.err);
        cr_expect_eq(train_lines(r.err), 1, "exactly one line from the program; stderr:\n%s", r.err);
        if (i == 0) {
            char expect[256];
            snprintf(expect, sizeof expect, "train: rank 1: cannot open '%s'", missing);
            cr_expect(strstr(r.err, expect), "expected '%s' in:\n%s", expect, r.err);
        } else {
            cr_expect(strstr(r.err, "train: rank 1: its corpus"), "stderr:\n%s", r.err);
            cr_expect(strstr(r.err, "differs from rank 0's"), "stderr:\n%s", r.err);
        }
        cr_expect_neq(access(ckpt, F_OK), 0, "nothing is trained or saved");
        cliutil_run_free(&r);
    }
}

// Two app contexts (mpirun's per-rank argument lists): rank 0 runs the tiny preset for 4 steps, rank 1 the
// same plus extra (NULL-terminated).
static Run mpirun_rank1_differs(const char *corpus, const char *ckpt, const char *const *extra) {
    const char *exe = cliutil_exe("train");
    const char *argv[80] = {"timeout", "-k", "10", MPI_LIMIT_S, "mpirun", MPIRUN_FLAGS, NULL};
    int argc = 0;
    while (argv[argc]) argc++;
    for (int rank = 0; rank < 2; rank++) {
        const char *const common[] = {"-np", "1", exe, "--preset", "tiny", "--steps", "4", "--data", corpus, "--out",
                                      ckpt, "--quiet", NULL};
        if (rank == 1) argv[argc++] = ":";
        for (int i = 0; common[i]; i++) argv[argc++] = common[i];
        for (int i = 0; rank == 1 && extra[i]; i++) {
            cr_assert_lt(argc, 79);
            argv[argc++] = extra[i];
        }
    }
    argv[argc] = NULL;
    return cliutil_run_cmd(argv);
}

// A failure on rank 1 alone, before the ranks compare their set-up (a bad flag, a bad value, --help): every
// rank reaches the set-up check, so the job ends (no hang) with one line naming rank 1.
Test(mpi, a_bad_flag_on_one_rank_stops_every_rank_with_one_line) {
    require_mpi();
    const char *corpus = cliutil_write_corpus(), *ckpt = cliutil_tmp("x.ckpt");
    const char *const cases[][3] = {
        {"--bogus", NULL, "train: rank 1: unknown flag '--bogus'"},
        {"--device", "bogus", "train: rank 1: bad --device 'bogus'"},
        {"--help", NULL, "train: rank 1: --help was given to some ranks only"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *extra[] = {cases[i][0], cases[i][1], NULL};
        Run r = mpirun_rank1_differs(corpus, ckpt, extra);
        cr_assert_neq(r.status, 124, "%s: a hang:\n%s", cases[i][0], r.err);
        cr_expect_neq(r.status, 0, "%s: stderr:\n%s", cases[i][0], r.err);
        cr_expect_eq(train_lines(r.err), 1, "%s: exactly one line from the program; stderr:\n%s", cases[i][0], r.err);
        cr_expect(strstr(r.err, cases[i][2]), "expected '%s' in:\n%s", cases[i][2], r.err);
        cr_expect_neq(access(ckpt, F_OK), 0, "nothing is trained or saved");
        cliutil_run_free(&r);
    }
}

// Run flags that change which collectives run (ZeRO-1's gathers, the number of steps and saves), given to
// rank 1 alone: the set-up check names the flag in one line instead of a hang or an MPI error.
Test(mpi, a_run_flag_on_one_rank_only_is_named_in_one_line) {
    require_mpi();
    const char *corpus = cliutil_write_corpus(), *ckpt = cliutil_tmp("x.ckpt");
    const char *const cases[][3] = {
        {"--zero", "1", "train: rank 1: its --zero is 1, rank 0's is 0"},
        {"--stop-after", "2", "train: rank 1: its last step (--steps, --stop-after) is 2, rank 0's is 4"},
        {"--eval-interval", "2", "train: rank 1: its --eval-interval is 2"},
        {"--batch", "2", "train: rank 1: its --batch is 2, rank 0's is 4"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *extra[] = {cases[i][0], cases[i][1], NULL};
        Run r = mpirun_rank1_differs(corpus, ckpt, extra);
        cr_assert_neq(r.status, 124, "%s: a hang:\n%s", cases[i][0], r.err);
        cr_expect_neq(r.status, 0, "%s: stderr:\n%s", cases[i][0], r.err);
        cr_expect_eq(train_lines(r.err), 1, "%s: exactly one line from the program; stderr:\n%s", cases[i][0], r.err);
        cr_expect(strstr(r.err, cases[i][2]), "expected '%s' in:\n%s", cases[i][2], r.err);
        cr_expect_neq(access(ckpt, F_OK), 0, "nothing is trained or saved");
        cliutil_run_free(&r);
    }
}

// The pid of the process whose environment holds both marker and OMPI_COMM_WORLD_RANK=<rank>; 0 if none.
static pid_t find_rank(const char *marker, int rank) {
    char want[64];
    snprintf(want, sizeof want, "OMPI_COMM_WORLD_RANK=%d", rank);
    DIR *d = opendir("/proc");
    cr_assert_not_null(d);
    pid_t found = 0;
    for (struct dirent *e; !found && (e = readdir(d));) {
        char *end;
        long pid = strtol(e->d_name, &end, 10);
        if (*end || pid <= 0) continue;
        char path[64];
        snprintf(path, sizeof path, "/proc/%ld/environ", pid);
        size_t len = 0;
        char *env = cliutil_read_file(path, &len);
        if (!env) continue;
        int mark = 0, is_rank = 0;
        for (size_t i = 0; i < len; i += strlen(env + i) + 1) {
            mark |= strcmp(env + i, marker) == 0;
            is_rank |= strcmp(env + i, want) == 0;
        }
        free(env);
        if (mark && is_rank) found = (pid_t)pid;
    }
    closedir(d);
    return found;
}

// kill -9 of rank 1 mid-run: mpirun ends the job (non-zero, well within the limit), and the checkpoint rank 0
// saved before stays whole: build/infer loads it and generates.
Test(mpi, a_killed_rank_stops_the_job_and_the_last_checkpoint_stays) {
    require_mpi();
    const char *corpus = cliutil_write_corpus();
    const char *ckpt = cliutil_tmp("run.ckpt");
    char marker[128];
    snprintf(marker, sizeof marker, "KVLAB_TEST_RUN=%s", cliutil_dir); // this test's ranks, not another's
    const char *exe = cliutil_exe("train"), *log = cliutil_tmp("mpirun.log");
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0) _exit(126);
        dup2(fd, 1);
        dup2(fd, 2);
        putenv(marker);
        const char *argv[] = {"timeout", "-k", "10", MPI_LIMIT_S, "mpirun", MPIRUN_FLAGS, "-np", "2",
                              exe, "--preset", "tiny", "--steps", "100000", "--eval-interval", "5",
                              "--data", corpus, "--out", ckpt, "--quiet", NULL};
        execvp(argv[0], (char *const *)argv);
        _exit(127);
    }
    struct timespec nap = {0, 20 * 1000 * 1000};
    pid_t victim = 0;
    for (int i = 0; i < 3000 && (access(ckpt, F_OK) != 0 || !victim); i++) { // a first save, then rank 1
        nanosleep(&nap, NULL);
        if (!victim) victim = find_rank(marker, 1);
        cr_assert_eq(waitpid(pid, NULL, WNOHANG), 0, "the run ended before it was killed: %s",
                     cliutil_read_file(log, NULL));
    }
    cr_assert_neq(victim, 0, "rank 1 not found");
    cr_assert_eq(access(ckpt, F_OK), 0, "no checkpoint after 60 s");
    cr_assert_eq(kill(victim, SIGKILL), 0, "kill: %s", strerror(errno));
    int ws;
    cr_assert_eq(waitpid(pid, &ws, 0), pid);
    char *out = cliutil_read_file(log, NULL);
    cr_assert(WIFEXITED(ws), "mpirun ended by a signal; output:\n%s", out);
    cr_expect_neq(WEXITSTATUS(ws), 124, "timed out: a hang after the kill; output:\n%s", out);
    cr_expect_neq(WEXITSTATUS(ws), 0, "output:\n%s", out);
    free(out);
    char *text = cliutil_generate(ckpt, "the ", 8, NULL);
    free(text);
}

// --- the CUDA backend, through host memory (on the CUDA emulator when there is no GPU) ------------------

Test(mpi, cuda_ranks_reduce_through_host_memory) {
    require_mpi();
    char lib[512];
    snprintf(lib, sizeof lib, "%s/cuda-emu/libkvlab_cuda.so", getenv("KVLAB_BUILD") ? getenv("KVLAB_BUILD") : "build");
    if (access(lib, F_OK) != 0) cr_skip_test("no CUDA emulator library at %s", lib);
    setenv("KVLAB_CUDA_LIB", lib, 1);
    const char *corpus = cliutil_write_corpus();
#define CUDA_RUN "--preset", "tiny", "--steps", "4", "--eval-interval", "2", "--eval-windows", "4", "--seed", "7", \
                 "--dropout", "0.1", "--device", "cuda", "--data", corpus, "--quiet"
    Run r = RUN("train", CUDA_RUN, "--grad-accum", "2", "--log", cliutil_tmp("one.jsonl"), "--out",
                cliutil_tmp("one.ckpt"));
    cliutil_expect_ok(&r, "cuda, 1 process");
    cliutil_run_free(&r);
    r = MPIRUN(2, CUDA_RUN, "--log", cliutil_tmp("two.jsonl"), "--out", cliutil_tmp("two.ckpt"));
    expect_ok(&r, "cuda, 2 ranks");
    cliutil_run_free(&r);
    r = MPIRUN(2, CUDA_RUN, "--zero", "1", "--log", cliutil_tmp("zero.jsonl"), "--out", cliutil_tmp("zero.ckpt"));
    expect_ok(&r, "cuda, 2 ranks, --zero 1");
    cliutil_run_free(&r);
#undef CUDA_RUN
    static Log one, two, zero;
    read_log(cliutil_tmp("one.jsonl"), &one);
    read_log(cliutil_tmp("two.jsonl"), &two);
    read_log(cliutil_tmp("zero.jsonl"), &zero);
    cr_assert_eq(two.n, 4);
    cr_expect_str_eq(one.text[1], two.text[1]);
    expect_close(&one, &two, 1, 4, "cuda: 2 ranks vs 1 process");
    for (int s = 1; s <= 4; s++) cr_expect_str_eq(zero.text[s], two.text[s], "cuda ZeRO-1, step %d", s);
    cr_expect(cliutil_files_equal(cliutil_tmp("two.ckpt"), cliutil_tmp("zero.ckpt")));
    // bf16 products read a bf16 shadow of the weights that every write into them refreshes: ZeRO-1's shard
    // update and the all-gathered upload must leave it as the unsharded update does
    const char *names[2][2] = {{"bf16.jsonl", "bf16.ckpt"}, {"bf16z.jsonl", "bf16z.ckpt"}};
    for (int z = 0; z < 2; z++) {
        r = MPIRUN(2, "--preset", "tiny", "--steps", "2", "--eval-windows", "4", "--seed", "7", "--device", "cuda",
                   "--precision", "bf16", "--data", corpus, "--quiet", "--zero", z ? "1" : "0", "--log",
                   cliutil_tmp(names[z][0]), "--out", cliutil_tmp(names[z][1]));
        expect_ok(&r, z ? "cuda bf16, --zero 1" : "cuda bf16");
        cliutil_run_free(&r);
    }
    read_log(cliutil_tmp("bf16.jsonl"), &two);
    read_log(cliutil_tmp("bf16z.jsonl"), &zero);
    cr_assert_eq(zero.n, 2);
    for (int s = 1; s <= 2; s++) cr_expect_str_eq(zero.text[s], two.text[s], "cuda bf16 ZeRO-1, step %d", s);
    cr_expect(cliutil_files_equal(cliutil_tmp("bf16.ckpt"), cliutil_tmp("bf16z.ckpt")));
}
