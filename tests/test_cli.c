// End-to-end tests of build/train and build/infer as programs: every user error gives exit status 1 and exactly
// one line on stderr that starts with the program's name and says what is wrong; the success paths (training,
// generation, scoring, uptraining to MQA/GQA) work; a failed save keeps the previous checkpoint; and a run that
// stops and resumes (--stop-after, --resume) is bit-identical to one that never stopped.
//
// The binaries are found in $KVLAB_BUILD (set by `ninja test`; default "build"); the tests run from the
// repository root. All files go to a fresh mkdtemp directory under /tmp, removed afterwards.
#include <criterion/criterion.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char dir[64];

static int remove_entry(const char *p, const struct stat *st, int type, struct FTW *ftw) {
    (void)st, (void)type, (void)ftw;
    return remove(p);
}

static void setup(void) {
    strcpy(dir, "/tmp/kvlab-cli-XXXXXX");
    cr_assert_not_null(mkdtemp(dir), "mkdtemp: %s", strerror(errno));
}

static void teardown(void) { nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS); }

TestSuite(cli, .init = setup, .fini = teardown, .timeout = 60);
TestSuite(resume, .init = setup, .fini = teardown, .timeout = 60);

// --- helpers -----------------------------------------------------------------------------------------------

// A path inside the test's directory (a few rotating static buffers, so several may be live at once).
static const char *tmp(const char *name) {
    static char bufs[16][256];
    static int next;
    char *b = bufs[next++ % 16];
    snprintf(b, sizeof bufs[0], "%s/%s", dir, name);
    return b;
}

static void write_file(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f, "cannot create %s: %s", path, strerror(errno));
    cr_assert_eq(fwrite(data, 1, len, f), len);
    cr_assert_eq(fclose(f), 0);
}

// Reads a whole file (NUL-terminated); NULL when it cannot be opened.
static char *read_file(const char *path, size_t *len) {
    if (len) *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    size_t got;
    while ((got = fread(buf + n, 1, cap - n - 1, f)) > 0) {
        n += got;
        if (cap - n - 1 == 0) buf = realloc(buf, cap *= 2);
    }
    fclose(f);
    buf[n] = 0;
    if (len) *len = n;
    return buf;
}

static int files_equal(const char *a, const char *b) {
    size_t la = 0, lb = 0;
    char *x = read_file(a, &la), *y = read_file(b, &lb);
    int eq = x && y && la == lb && memcmp(x, y, la) == 0;
    free(x);
    free(y);
    return eq;
}

// The lowercase corpus: 27 characters (a-z and space, every letter present), about 4 KB. No newline, no
// capitals, no punctuation: those are the out-of-vocabulary characters of the tests.
static const char *corpus_text =
    "the quick brown fox jumps over the lazy dog and then it runs away into the forest where it sleeps ";

static const char *write_corpus(void) {
    const char *path = tmp("corpus.txt");
    size_t n = strlen(corpus_text), reps = 40;
    char *buf = malloc(n * reps);
    for (size_t i = 0; i < reps; i++) memcpy(buf + i * n, corpus_text, n);
    write_file(path, buf, n * reps);
    free(buf);
    return path;
}

typedef struct {
    int status; // exit status; 128 + signal when killed by one
    char *out, *err;
    size_t out_len, err_len;
} Run;

static void run_free(Run *r) {
    free(r->out);
    free(r->err);
    memset(r, 0, sizeof(*r));
}

// Runs $KVLAB_BUILD/<prog> with the NULL-terminated arguments; stdout and stderr are captured through files.
static Run run_argv(const char *prog, const char *const *args) {
    const char *build = getenv("KVLAB_BUILD");
    char exe[512];
    snprintf(exe, sizeof exe, "%s/%s", build && *build ? build : "build", prog);
    cr_assert_eq(access(exe, X_OK), 0, "%s is not an executable (build it first): %s", exe, strerror(errno));
    const char *argv[64];
    int argc = 0;
    argv[argc++] = exe;
    for (int i = 0; args[i]; i++) {
        cr_assert_lt(argc, 63);
        argv[argc++] = args[i];
    }
    argv[argc] = NULL;
    char out_path[256], err_path[256];
    snprintf(out_path, sizeof out_path, "%s/.stdout", dir);
    snprintf(err_path, sizeof err_path, "%s/.stderr", dir);
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_neq(pid, -1, "fork: %s", strerror(errno));
    if (pid == 0) {
        int fo = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int fe = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int fi = open("/dev/null", O_RDONLY);
        if (fo < 0 || fe < 0 || fi < 0) _exit(126);
        dup2(fi, 0), dup2(fo, 1), dup2(fe, 2);
        close(fi), close(fo), close(fe);
        // Criterion runs tests side by side; OpenMP threads that spin while waiting then starve each other
        // (a 30 ms run took seconds on 2 cores). Sleeping waits keep the programs' threads but not the spinning.
        setenv("OMP_WAIT_POLICY", "passive", 0);
        execv(exe, (char *const *)argv);
        _exit(127);
    }
    int ws;
    while (waitpid(pid, &ws, 0) < 0) cr_assert_eq(errno, EINTR, "waitpid: %s", strerror(errno));
    Run r = {0};
    r.status = WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + WTERMSIG(ws);
    r.out = read_file(out_path, &r.out_len);
    r.err = read_file(err_path, &r.err_len);
    cr_assert(r.out && r.err, "lost the output of %s", exe);
    unlink(out_path);
    unlink(err_path);
    return r;
}

#define ARGS(...) ((const char *const[]){__VA_ARGS__, NULL})
#define RUN(prog, ...) run_argv(prog, ARGS(__VA_ARGS__))

// Asserts the error contract: exit status 1, nothing on stdout, exactly one line on stderr that starts with
// "<prog>: " and contains each of the NULL-terminated phrases.
static void expect_error(const Run *r, const char *prog, ...) {
    cr_assert_eq(r->status, 1, "%s: expected exit status 1, got %d; stderr:\n%s", prog, r->status, r->err);
    cr_assert_eq(r->out_len, 0, "%s: expected no stdout on an error, got:\n%s", prog, r->out);
    char head[64];
    snprintf(head, sizeof head, "%s: ", prog);
    cr_assert(strncmp(r->err, head, strlen(head)) == 0, "stderr should start with '%s', got:\n%s", head, r->err);
    const char *nl = strchr(r->err, '\n');
    cr_assert(nl && nl[1] == 0, "stderr should be exactly one line, got:\n%s", r->err);
    va_list ap;
    va_start(ap, prog);
    for (const char *phrase; (phrase = va_arg(ap, const char *));)
        cr_assert(strstr(r->err, phrase), "stderr should contain \"%s\", got:\n%s", phrase, r->err);
    va_end(ap);
}

#define EXPECT_ERROR(run, prog, ...) expect_error(run, prog, __VA_ARGS__, (const char *)NULL)

static void expect_ok(const Run *r, const char *what) {
    cr_assert_eq(r->status, 0, "%s: expected exit status 0, got %d; stderr:\n%s", what, r->status, r->err);
}

// Entries in the test's directory, not counting . and .. (nor the capture files, removed after each run).
static int count_entries(void) {
    DIR *d = opendir(dir);
    cr_assert_not_null(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) n++;
    closedir(d);
    return n;
}

// The last line of a text (without its newline), copied into out.
static void last_line(const char *text, char *out, size_t len) {
    size_t n = strlen(text);
    while (n > 0 && text[n - 1] == '\n') n--;
    size_t start = n;
    while (start > 0 && text[start - 1] != '\n') start--;
    snprintf(out, len, "%.*s", (int)(n - start), text + start);
}

// Trains the tiny preset for 5 steps on the lowercase corpus; returns the checkpoint's path.
static const char *train_tiny(const char *corpus, const char *name) {
    const char *ckpt = tmp(name);
    Run r = RUN("train", "--preset", "tiny", "--steps", "5", "--data", corpus, "--out", ckpt, "--quiet");
    expect_ok(&r, "train --preset tiny");
    run_free(&r);
    struct stat st;
    cr_assert_eq(stat(ckpt, &st), 0, "train did not write %s", ckpt);
    cr_assert_gt(st.st_size, 0);
    return ckpt;
}

// --- train: user errors -----------------------------------------------------------------------------------

Test(cli, train_help) {
    Run r = RUN("train", "--help");
    expect_ok(&r, "train --help");
    cr_assert(strncmp(r.out, "usage: build/train", 18) == 0, "usage goes to stdout, got:\n%s", r.out);
    cr_assert_eq(r.err_len, 0);
    run_free(&r);
}

Test(cli, train_unknown_flag) {
    Run r = RUN("train", "--bogus");
    EXPECT_ERROR(&r, "train", "unknown flag '--bogus'", "--help");
    run_free(&r);
    r = RUN("train", "stray");
    EXPECT_ERROR(&r, "train", "unexpected argument 'stray'");
    run_free(&r);
}

Test(cli, train_attn_malformed) {
    const char *specs[] = {"gqa", "gqa:x", "foo", "gqa:", "gqa:0", "gqa:-2", "MHA"};
    for (size_t i = 0; i < sizeof specs / sizeof specs[0]; i++) {
        char flag[64], quoted[64];
        snprintf(flag, sizeof flag, "--attn=%s", specs[i]);
        snprintf(quoted, sizeof quoted, "'%s'", specs[i]);
        Run r = RUN("train", flag);
        EXPECT_ERROR(&r, "train", "bad --attn", quoted, "mha", "gqa:G", "mqa");
        run_free(&r);
    }
    Run r = RUN("train", "--attn"); // no value at all
    EXPECT_ERROR(&r, "train", "--attn needs a value");
    run_free(&r);
}

Test(cli, train_attn_must_divide_heads) {
    // the default preset (small) has 16 heads
    Run r = RUN("train", "--attn=gqa:3");
    EXPECT_ERROR(&r, "train", "gqa:3", "divide", "n_head is 16");
    run_free(&r);
    r = RUN("train", "--preset", "tiny", "--heads", "16", "--attn", "gqa:3");
    EXPECT_ERROR(&r, "train", "gqa:3", "divide", "n_head is 16");
    run_free(&r);
    r = RUN("train", "--preset", "tiny", "--attn", "gqa:8"); // more groups than tiny's 4 heads
    EXPECT_ERROR(&r, "train", "gqa:8", "n_head is 4");
    run_free(&r);
}

Test(cli, train_missing_data) {
    const char *missing = tmp("no-such-corpus.txt");
    Run r = RUN("train", "--preset", "tiny", "--data", missing, "--out", tmp("x.ckpt"), "--quiet");
    EXPECT_ERROR(&r, "train", "cannot open", missing, "No such file");
    run_free(&r);
    const char *under_missing_dir = tmp("no-such-dir/corpus.txt");
    r = RUN("train", "--preset", "tiny", "--data", under_missing_dir, "--out", tmp("x.ckpt"), "--quiet");
    EXPECT_ERROR(&r, "train", "cannot open", under_missing_dir);
    run_free(&r);
    cr_assert_neq(access(tmp("x.ckpt"), F_OK), 0, "no checkpoint should be written");
}

Test(cli, train_log_unwritable) {
    const char *corpus = write_corpus();
    const char *log = tmp("no-such-dir/run.jsonl");
    Run r = RUN("train", "--preset", "tiny", "--steps", "2", "--data", corpus, "--log", log, "--out", tmp("x.ckpt"),
                "--quiet");
    EXPECT_ERROR(&r, "train", "cannot open log file", log);
    run_free(&r);
    cr_assert_neq(access(tmp("x.ckpt"), F_OK), 0, "no checkpoint should be written");
}

Test(cli, train_data_is_a_directory) {
    // Tests run as root, where chmod 000 does not stop reads; a directory is the unreadable file here.
    Run r = RUN("train", "--preset", "tiny", "--data", dir, "--out", tmp("x.ckpt"), "--quiet");
    EXPECT_ERROR(&r, "train", dir);
    cr_assert(strstr(r.err, "directory") || strstr(r.err, "not a regular file"),
              "the message should say the path is a directory / not a regular file, got:\n%s", r.err);
    run_free(&r);
}

Test(cli, train_resume_missing) {
    const char *missing = tmp("missing.ckpt");
    Run r = RUN("train", "--resume", missing, "--quiet");
    EXPECT_ERROR(&r, "train", "cannot open checkpoint", missing);
    run_free(&r);
}

Test(cli, train_resume_garbage) {
    const char *garbage = tmp("garbage.ckpt");
    unsigned char bytes[3000];
    unsigned s = 12345;
    for (size_t i = 0; i < sizeof bytes; i++) bytes[i] = (unsigned char)((s = s * 1103515245u + 12345u) >> 16);
    write_file(garbage, bytes, sizeof bytes);
    Run r = RUN("train", "--resume", garbage, "--quiet");
    EXPECT_ERROR(&r, "train", garbage, "not a kvlab checkpoint");
    run_free(&r);
    // an empty file, and one holding text
    const char *empty = tmp("empty.ckpt");
    write_file(empty, "", 0);
    r = RUN("train", "--resume", empty, "--quiet");
    EXPECT_ERROR(&r, "train", empty);
    run_free(&r);
    const char *text = tmp("text.ckpt");
    write_file(text, corpus_text, strlen(corpus_text));
    r = RUN("train", "--resume", text, "--quiet");
    EXPECT_ERROR(&r, "train", text, "not a kvlab checkpoint");
    run_free(&r);
}

Test(cli, train_bad_numbers) {
    Run r = RUN("train", "--steps", "abc");
    EXPECT_ERROR(&r, "train", "--steps expects an integer, got 'abc'");
    run_free(&r);
    r = RUN("train", "--lr", "-1");
    EXPECT_ERROR(&r, "train", "--lr must be in", "got -1");
    run_free(&r);
    r = RUN("train", "--steps", "0");
    EXPECT_ERROR(&r, "train", "--steps must be in", "got 0");
    run_free(&r);
    r = RUN("train", "--steps", "12x");
    EXPECT_ERROR(&r, "train", "--steps expects an integer, got '12x'");
    run_free(&r);
    r = RUN("train", "--lr", "fast");
    EXPECT_ERROR(&r, "train", "--lr expects a number, got 'fast'");
    run_free(&r);
    r = RUN("train", "--lr", "nan");
    EXPECT_ERROR(&r, "train", "--lr expects a number, got 'nan'");
    run_free(&r);
    r = RUN("train", "--dropout", "1.5");
    EXPECT_ERROR(&r, "train", "--dropout must be in", "got 1.5");
    run_free(&r);
    r = RUN("train", "--seed", "-3");
    EXPECT_ERROR(&r, "train", "--seed expects a non-negative integer, got '-3'");
    run_free(&r);
    r = RUN("train", "--steps");
    EXPECT_ERROR(&r, "train", "--steps needs a value");
    run_free(&r);
}

Test(cli, train_unknown_preset) {
    Run r = RUN("train", "--preset", "huge");
    EXPECT_ERROR(&r, "train", "unknown preset 'huge'", "small", "baby", "shakespeare", "tiny");
    run_free(&r);
}

Test(cli, train_device) {
    Run r = RUN("train", "--device", "cuda");
    EXPECT_ERROR(&r, "train", "--device cuda", "not part of this build");
    run_free(&r);
    r = RUN("train", "--device", "tpu");
    EXPECT_ERROR(&r, "train", "bad --device 'tpu'", "cpu");
    run_free(&r);
}

Test(cli, train_conflicting_modes) {
    // both rejected before any file is opened
    Run r = RUN("train", "--resume", tmp("a.ckpt"), "--init-from", tmp("b.ckpt"));
    EXPECT_ERROR(&r, "train", "--resume and --init-from cannot be combined");
    run_free(&r);
    r = RUN("train", "--resume", tmp("a.ckpt"), "--attn", "mqa");
    EXPECT_ERROR(&r, "train", "--attn cannot be changed when resuming");
    run_free(&r);
    r = RUN("train", "--resume", tmp("a.ckpt"), "--lr", "0.1");
    EXPECT_ERROR(&r, "train", "cannot be changed when resuming");
    run_free(&r);
}

// --- infer: user errors -----------------------------------------------------------------------------------

Test(cli, infer_help) {
    Run r = RUN("infer", "--help");
    expect_ok(&r, "infer --help");
    cr_assert(strncmp(r.out, "usage: build/infer", 18) == 0, "usage goes to stdout, got:\n%s", r.out);
    run_free(&r);
}

Test(cli, infer_missing_ckpt_flag) {
    Run r = RUN("infer", "--prompt", "the");
    EXPECT_ERROR(&r, "infer", "--ckpt FILE is required");
    run_free(&r);
}

Test(cli, infer_missing_ckpt_file) {
    const char *missing = tmp("missing.ckpt");
    Run r = RUN("infer", "--ckpt", missing, "--prompt", "the");
    EXPECT_ERROR(&r, "infer", "cannot open checkpoint", missing, "No such file");
    run_free(&r);
}

Test(cli, infer_garbage_ckpt) {
    const char *garbage = tmp("garbage.ckpt");
    char bytes[2048];
    for (size_t i = 0; i < sizeof bytes; i++) bytes[i] = (char)(i * 37 + 11);
    write_file(garbage, bytes, sizeof bytes);
    Run r = RUN("infer", "--ckpt", garbage, "--prompt", "the");
    EXPECT_ERROR(&r, "infer", garbage, "not a kvlab checkpoint");
    run_free(&r);
}

Test(cli, infer_truncated_ckpt) {
    const char *ckpt = train_tiny(write_corpus(), "x.ckpt");
    size_t len = 0;
    char *bytes = read_file(ckpt, &len);
    cr_assert_not_null(bytes);
    const char *half = tmp("half.ckpt");
    write_file(half, bytes, len / 2);
    free(bytes);
    Run r = RUN("infer", "--ckpt", half, "--prompt", "the");
    EXPECT_ERROR(&r, "infer", half, "truncated");
    run_free(&r);
}

Test(cli, infer_prompt_outside_vocabulary) {
    const char *ckpt = train_tiny(write_corpus(), "x.ckpt");
    Run r = RUN("infer", "--ckpt", ckpt, "--prompt", "theZ", "-n", "5");
    EXPECT_ERROR(&r, "infer", "prompt character 'Z'", "not in the model's vocabulary");
    run_free(&r);
    r = RUN("infer", "--ckpt", ckpt, "--prompt", "the caf\xc3\xa9", "-n", "5"); // UTF-8 e-acute
    EXPECT_ERROR(&r, "infer", "0xc3", "not in the model's vocabulary");
    run_free(&r);
    r = RUN("infer", "--ckpt", ckpt, "--prompt", "two\nlines", "-n", "5"); // no newline in the corpus
    EXPECT_ERROR(&r, "infer", "0x0a", "not in the model's vocabulary");
    run_free(&r);
    r = RUN("infer", "--ckpt", ckpt, "--prompt", "", "-n", "5");
    EXPECT_ERROR(&r, "infer", "--prompt is empty");
    run_free(&r);
}

Test(cli, infer_mode_errors) {
    // all rejected before the checkpoint is opened
    const char *ckpt = tmp("unused.ckpt");
    Run r = RUN("infer", "--ckpt", ckpt);
    EXPECT_ERROR(&r, "infer", "--prompt", "--eval");
    run_free(&r);
    r = RUN("infer", "--ckpt", ckpt, "--prompt", "the", "--eval", tmp("c.txt"));
    EXPECT_ERROR(&r, "infer", "separate modes");
    run_free(&r);
    r = RUN("infer", "--ckpt", ckpt, "--prompt", "the", "--bogus");
    EXPECT_ERROR(&r, "infer", "unknown flag '--bogus'");
    run_free(&r);
    r = RUN("infer", "--ckpt", ckpt, "--prompt", "the", "--kv", "window");
    EXPECT_ERROR(&r, "infer", "bad --kv 'window'", "full");
    run_free(&r);
    r = RUN("infer", "--ckpt", ckpt, "--prompt", "the", "--device", "cuda");
    EXPECT_ERROR(&r, "infer", "bad --device 'cuda'", "cpu");
    run_free(&r);
    r = RUN("infer", "--ckpt", ckpt, "--prompt", "the", "-n", "many");
    EXPECT_ERROR(&r, "infer", "-n expects an integer, got 'many'");
    run_free(&r);
    r = RUN("infer", "--ckpt", ckpt, "--prompt", "the", "--top-p", "0");
    EXPECT_ERROR(&r, "infer", "--top-p must be in");
    run_free(&r);
    r = RUN("infer", "--ckpt", ckpt, "--prompt", "the", "--temperature", "-1");
    EXPECT_ERROR(&r, "infer", "--temperature must be in");
    run_free(&r);
}

Test(cli, infer_eval_errors) {
    const char *corpus = write_corpus();
    const char *ckpt = train_tiny(corpus, "x.ckpt");
    const char *missing = tmp("missing.txt");
    Run r = RUN("infer", "--ckpt", ckpt, "--eval", missing);
    EXPECT_ERROR(&r, "infer", "cannot open", missing, "No such file");
    run_free(&r);
    // nothing in the vocabulary: nothing to score
    const char *upper = tmp("upper.txt");
    write_file(upper, "ZZZZ", 4);
    r = RUN("infer", "--ckpt", ckpt, "--eval", upper);
    EXPECT_ERROR(&r, "infer", upper, "4 bytes outside the vocabulary");
    run_free(&r);
}

Test(cli, infer_eval_directory) {
    const char *ckpt = train_tiny(write_corpus(), "x.ckpt");
    Run r = RUN("infer", "--ckpt", ckpt, "--eval", dir);
    EXPECT_ERROR(&r, "infer", dir);
    cr_assert(strstr(r.err, "directory") || strstr(r.err, "not a regular file"),
              "the message should say the path is a directory / not a regular file, got:\n%s", r.err);
    run_free(&r);
}

// --- success paths ----------------------------------------------------------------------------------------

Test(cli, train_tiny_writes_checkpoint) {
    const char *corpus = write_corpus();
    const char *ckpt = tmp("x.ckpt");
    Run r = RUN("train", "--preset", "tiny", "--steps", "5", "--data", corpus, "--out", ckpt, "--quiet");
    expect_ok(&r, "train");
    cr_assert(strstr(r.err, "vocab 27"), "the lowercase corpus has 27 characters; stderr:\n%s", r.err);
    char line[512];
    last_line(r.err, line, sizeof line);
    cr_assert(strncmp(line, "train: done: step 5", 19) == 0, "last line: %s", line);
    cr_assert(strstr(line, ckpt), "last line should name the checkpoint: %s", line);
    run_free(&r);
    struct stat st;
    cr_assert_eq(stat(ckpt, &st), 0, "no checkpoint at %s", ckpt);
    cr_assert_gt(st.st_size, 0);
    // the atomic save's temporary file is gone: the directory holds just the corpus and the checkpoint
    cr_assert_eq(count_entries(), 2);
}

// Generates from a checkpoint; returns stdout (caller frees) after checking the shape of the output.
static char *generate(const char *ckpt, const char *prompt, int n, const char *const *extra) {
    const char *args[32] = {"--ckpt", ckpt, "--prompt", prompt, "-n", NULL};
    char n_str[16];
    snprintf(n_str, sizeof n_str, "%d", n);
    int k = 5;
    args[k++] = n_str;
    for (int i = 0; extra && extra[i]; i++) args[k++] = extra[i];
    args[k] = NULL;
    Run r = run_argv("infer", args);
    expect_ok(&r, "infer");
    size_t plen = strlen(prompt);
    cr_assert_eq(r.out_len, plen + (size_t)n + 1, "expected the prompt, %d characters and a newline; got %zu bytes:\n%s",
                 n, r.out_len, r.out);
    cr_assert(strncmp(r.out, prompt, plen) == 0, "output should start with the prompt: %s", r.out);
    cr_assert_eq(r.out[r.out_len - 1], '\n');
    for (size_t i = plen; i < plen + (size_t)n; i++)
        cr_assert(r.out[i] == ' ' || (r.out[i] >= 'a' && r.out[i] <= 'z'),
                  "generated byte 0x%02x at %zu is not in the corpus' vocabulary", (unsigned char)r.out[i], i);
    char tokens[32];
    snprintf(tokens, sizeof tokens, "infer: %d tokens", n);
    cr_assert(strncmp(r.err, tokens, strlen(tokens)) == 0, "stderr: %s", r.err);
    char *out = r.out;
    r.out = NULL;
    run_free(&r);
    return out;
}

Test(cli, infer_generate_and_seeds) {
    const char *ckpt = train_tiny(write_corpus(), "x.ckpt");
    char *a = generate(ckpt, "the", 20, ARGS("--seed", "1"));
    char *b = generate(ckpt, "the", 20, ARGS("--seed", "1"));
    cr_assert_str_eq(a, b, "the same seed must give the same text");
    char *c = generate(ckpt, "the", 20, ARGS("--seed", "2"));
    cr_assert_str_neq(a, c, "a near-untrained model at temperature 0.8 should not repeat 20 characters exactly");
    free(a), free(b), free(c);
}

Test(cli, infer_greedy_is_deterministic) {
    const char *ckpt = train_tiny(write_corpus(), "x.ckpt");
    char *a = generate(ckpt, "the", 20, ARGS("--temperature", "0", "--seed", "1"));
    char *b = generate(ckpt, "the", 20, ARGS("--temperature", "0", "--seed", "99"));
    cr_assert_str_eq(a, b, "greedy decoding must not depend on the seed");
    free(a), free(b);
}

Test(cli, infer_generate_past_context) {
    // tiny's context is 32: a 60-character prompt keeps its newest tokens, and generation runs past the
    // context by rebuilding the cache
    const char *ckpt = train_tiny(write_corpus(), "x.ckpt");
    char *a = generate(ckpt, "the quick brown fox jumps over the lazy dog and then it runs", 100, ARGS("--seed", "3"));
    free(a);
    char *b = generate(ckpt, "the", 0, NULL);
    cr_assert_str_eq(b, "the\n");
    free(b);
}

// Parses "... loss L, perplexity P" from an eval line.
static void parse_eval(const char *out, double *loss, double *ppl, size_t *n_scored) {
    const char *l = strstr(out, "loss "), *p = strstr(out, "perplexity ");
    cr_assert(l && p, "eval output should report loss and perplexity, got:\n%s", out);
    char *end;
    *loss = strtod(l + 5, &end);
    cr_assert_neq(end, l + 5);
    *ppl = strtod(p + 11, &end);
    cr_assert_neq(end, p + 11, "no number after 'perplexity': %s", out);
    const char *s = strstr(out, " tokens scored");
    cr_assert_not_null(s, "%s", out);
    while (s > out && s[-1] >= '0' && s[-1] <= '9') s--;
    *n_scored = strtoul(s, NULL, 10);
}

Test(cli, infer_eval) {
    const char *corpus = write_corpus();
    const char *ckpt = train_tiny(corpus, "x.ckpt");
    Run r = RUN("infer", "--ckpt", ckpt, "--eval", corpus);
    expect_ok(&r, "infer --eval");
    cr_assert(strncmp(r.out, "eval: ", 6) == 0 && strchr(r.out, '\n') == r.out + r.out_len - 1,
              "one eval line expected, got:\n%s", r.out);
    double loss, ppl;
    size_t n;
    parse_eval(r.out, &loss, &ppl, &n);
    cr_assert(isfinite(ppl) && ppl > 1.0, "perplexity should be a finite number > 1: %s", r.out);
    cr_assert(ppl < 2 * 27, "5 steps on a 27-character corpus should not be far worse than uniform: %s", r.out);
    cr_assert_lt(fabs(log(ppl) - loss), 1e-3, "perplexity should be exp(loss): %s", r.out);
    cr_assert_gt(n, 1000, "%s", r.out);
    run_free(&r);
}

Test(cli, infer_eval_skips_oov) {
    const char *corpus = write_corpus();
    const char *ckpt = train_tiny(corpus, "x.ckpt");
    // 6 bytes outside the vocabulary: T, Q, the comma, '!', the newline and T again
    const char *text = "The Quick brown fox, jumps over the lazy dog!\nand Then";
    const char *path = tmp("oov.txt");
    write_file(path, text, strlen(text));
    Run r = RUN("infer", "--ckpt", ckpt, "--eval", path);
    expect_ok(&r, "infer --eval with out-of-vocabulary bytes");
    double loss, ppl;
    size_t n;
    parse_eval(r.out, &loss, &ppl, &n);
    cr_assert(isfinite(ppl) && ppl > 1.0, "%s", r.out);
    cr_assert(strstr(r.out, "6 bytes outside the model's vocabulary were skipped"), "got:\n%s", r.out);
    cr_assert_eq(n + 1 + 6, strlen(text), "every in-vocabulary token but the first is scored: %s", r.out);
    run_free(&r);
}

Test(cli, train_gqa8_default_preset) {
    // the default preset (small, 16 heads) as is, on the real corpus: two steps, then the end-of-run eval
    if (access("data/tinyshakespeare.txt", R_OK) != 0)
        cr_assert_fail("data/tinyshakespeare.txt not found: run the tests from the repository root");
    const char *ckpt = tmp("gqa8.ckpt");
    Run r = RUN("train", "--attn=gqa:8", "--steps", "2", "--quiet", "--out", ckpt);
    expect_ok(&r, "train --attn=gqa:8");
    cr_assert(strstr(r.err, "16 heads, 8 kv heads (gqa8)"), "stderr:\n%s", r.err);
    cr_assert(strstr(r.err, "vocab 65"), "stderr:\n%s", r.err);
    run_free(&r);
    r = RUN("infer", "--ckpt", ckpt, "--prompt", "ROMEO:", "-n", "10");
    expect_ok(&r, "infer on the gqa:8 checkpoint");
    cr_assert(strncmp(r.out, "ROMEO:", 6) == 0 && r.out_len == 6 + 10 + 1, "got:\n%s", r.out);
    run_free(&r);
}

Test(cli, failed_save_keeps_previous_checkpoint) {
    const char *corpus = write_corpus();
    const char *ckpt = train_tiny(corpus, "x.ckpt");
    const char *copy = tmp("x-copy.ckpt");
    size_t len = 0;
    char *bytes = read_file(ckpt, &len);
    write_file(copy, bytes, len);
    free(bytes);

    // into a directory that does not exist
    const char *bad = tmp("no-such-dir/x.ckpt");
    Run r = RUN("train", "--preset", "tiny", "--steps", "5", "--data", corpus, "--out", bad, "--quiet");
    cr_assert_eq(r.status, 1, "a failed save must fail the run; stderr:\n%s", r.err);
    char line[1024];
    last_line(r.err, line, sizeof line);
    cr_assert(strncmp(line, "train: cannot save checkpoint", 29) == 0 && strstr(line, bad),
              "the last line should say the save failed, got:\n%s", r.err);
    cr_assert_null(strstr(r.err, "train: done"), "a failed run must not report 'done':\n%s", r.err);
    run_free(&r);

    // through a regular file used as a directory
    char through[300];
    snprintf(through, sizeof through, "%s/sub.ckpt", ckpt);
    r = RUN("train", "--preset", "tiny", "--steps", "5", "--data", corpus, "--out", through, "--quiet");
    cr_assert_eq(r.status, 1, "stderr:\n%s", r.err);
    last_line(r.err, line, sizeof line);
    cr_assert(strncmp(line, "train: cannot save checkpoint", 29) == 0, "got:\n%s", r.err);
    run_free(&r);

    cr_assert(files_equal(ckpt, copy), "the previous checkpoint must be untouched");
    cr_assert_eq(count_entries(), 3, "no temporary files should be left behind (corpus, x.ckpt, its copy)");
    r = RUN("infer", "--ckpt", ckpt, "--prompt", "the", "-n", "5");
    expect_ok(&r, "infer on the kept checkpoint");
    run_free(&r);
}

Test(cli, init_from_mqa_and_gqa) {
    const char *corpus = write_corpus();
    const char *mha = train_tiny(corpus, "mha.ckpt");
    const char *mqa = tmp("mqa.ckpt");
    Run r = RUN("train", "--init-from", mha, "--attn", "mqa", "--steps", "3", "--data", corpus, "--out", mqa,
                "--quiet");
    expect_ok(&r, "train --init-from --attn mqa");
    cr_assert(strstr(r.err, "4 heads, 1 kv heads (mqa)"), "stderr:\n%s", r.err);
    run_free(&r);
    char *text = generate(mqa, "the", 20, ARGS("--seed", "1"));
    free(text);

    const char *gqa = tmp("gqa.ckpt");
    r = RUN("train", "--preset", "tiny", "--init-from", mha, "--attn", "gqa:2", "--steps", "3", "--data", corpus,
            "--out", gqa, "--quiet");
    expect_ok(&r, "train --init-from --attn gqa:2");
    cr_assert(strstr(r.err, "4 heads, 2 kv heads (gqa2)"), "stderr:\n%s", r.err);
    run_free(&r);
    text = generate(gqa, "the", 20, ARGS("--seed", "1"));
    free(text);
}

Test(cli, init_from_errors) {
    const char *corpus = write_corpus();
    const char *mha = train_tiny(corpus, "mha.ckpt");
    const char *mqa = tmp("mqa.ckpt");
    Run r = RUN("train", "--preset", "tiny", "--init-from", mha, "--attn", "mqa", "--steps", "3", "--data", corpus,
                "--out", mqa, "--quiet");
    expect_ok(&r, "train --init-from --attn mqa");
    run_free(&r);
    // more key/value heads than the checkpoint has
    r = RUN("train", "--init-from", mqa, "--attn", "mha", "--steps", "3", "--data", corpus, "--out", tmp("y.ckpt"));
    EXPECT_ERROR(&r, "train", "--init-from can only reduce key/value heads", "1 -> 4");
    run_free(&r);
    r = RUN("train", "--init-from", mqa, "--attn", "gqa:2", "--steps", "3", "--data", corpus, "--out", tmp("y.ckpt"));
    EXPECT_ERROR(&r, "train", "can only reduce key/value heads", "1 -> 2");
    run_free(&r);
    // groups that do not divide the checkpoint's 4 heads
    r = RUN("train", "--init-from", mha, "--attn", "gqa:3", "--steps", "3", "--data", corpus, "--out", tmp("y.ckpt"));
    EXPECT_ERROR(&r, "train", "gqa:3", "n_head is 4");
    run_free(&r);
    // the shape comes from the checkpoint
    r = RUN("train", "--init-from", mha, "--layers", "3", "--data", corpus, "--out", tmp("y.ckpt"));
    EXPECT_ERROR(&r, "train", "--init-from takes the model shape from the checkpoint");
    run_free(&r);
    r = RUN("train", "--init-from", tmp("missing.ckpt"), "--data", corpus);
    EXPECT_ERROR(&r, "train", "cannot open checkpoint");
    run_free(&r);
    cr_assert_neq(access(tmp("y.ckpt"), F_OK), 0, "no checkpoint should be written by a failed run");
}

// --- resume: a stopped and resumed run is the same run ----------------------------------------------------

#define N_STEPS 20

typedef struct {
    char train_loss[N_STEPS + 1][32], val_loss[N_STEPS + 1][32], lr[N_STEPS + 1][32], grad_norm[N_STEPS + 1][32];
} Log;

// Copies the number after "key": as printed (the text up to the next ',' or '}'); "" when absent.
static void field(const char *line, const char *key, char *out, size_t len) {
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\": ", key);
    const char *p = strstr(line, pat);
    out[0] = 0;
    if (!p) return;
    p += strlen(pat);
    size_t n = strcspn(p, ",}");
    cr_assert_lt(n, len);
    memcpy(out, p, n);
    out[n] = 0;
}

static void read_log(const char *path, Log *log) {
    memset(log, 0, sizeof(*log));
    char *text = read_file(path, NULL);
    cr_assert_not_null(text, "no log at %s", path);
    int expect = 1;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n"), expect++) {
        char step[32];
        field(line, "step", step, sizeof step);
        cr_assert_eq(atoi(step), expect, "%s: line %d should be step %d: %s", path, expect, expect, line);
        cr_assert_leq(expect, N_STEPS, "%s: more than %d lines", path, N_STEPS);
        field(line, "train_loss", log->train_loss[expect], sizeof log->train_loss[0]);
        field(line, "val_loss", log->val_loss[expect], sizeof log->val_loss[0]);
        field(line, "lr", log->lr[expect], sizeof log->lr[0]);
        field(line, "grad_norm", log->grad_norm[expect], sizeof log->grad_norm[0]);
        cr_assert_neq(log->train_loss[expect][0], 0, "%s: no train_loss in: %s", path, line);
        int evaluated = expect % 5 == 0;
        cr_assert_eq(log->val_loss[expect][0] != 0, evaluated, "%s: val_loss %s at step %d: %s", path,
                     evaluated ? "missing" : "unexpected", expect, line);
    }
    cr_assert_eq(expect, N_STEPS + 1, "%s: %d steps logged, expected %d", path, expect - 1, N_STEPS);
    free(text);
}

Test(resume, bit_exact) {
    const char *corpus = write_corpus();
    const char *a_log = tmp("a.jsonl"), *a_ckpt = tmp("a.ckpt"), *b_log = tmp("b.jsonl"), *b_ckpt = tmp("b.ckpt");
#define COMMON "--preset", "tiny", "--steps", "20", "--eval-interval", "5", "--seed", "7", "--dropout", "0.1", \
               "--data", corpus, "--quiet"
    Run r = RUN("train", COMMON, "--log", a_log, "--out", a_ckpt);
    expect_ok(&r, "run A");
    run_free(&r);
    r = RUN("train", COMMON, "--stop-after", "10", "--log", b_log, "--out", b_ckpt);
    expect_ok(&r, "run B1 (--stop-after 10)");
    cr_assert(strstr(r.err, "train: done: step 10"), "stderr:\n%s", r.err);
    run_free(&r);
#undef COMMON
    // resuming fixes everything but the data (and the log, which is appended to)
    r = RUN("train", "--resume", b_ckpt, "--log", b_log, "--data", corpus, "--quiet");
    expect_ok(&r, "run B2 (--resume)");
    cr_assert(strstr(r.err, "steps 10..20"), "stderr:\n%s", r.err);
    cr_assert(strstr(r.err, "train: done: step 20"), "stderr:\n%s", r.err);
    run_free(&r);

    static Log a, b;
    read_log(a_log, &a);
    read_log(b_log, &b);
    for (int s = 1; s <= N_STEPS; s++) {
        cr_assert_str_eq(a.train_loss[s], b.train_loss[s], "train_loss differs at step %d: %s vs %s", s,
                         a.train_loss[s], b.train_loss[s]);
        cr_assert_str_eq(a.val_loss[s], b.val_loss[s], "val_loss differs at step %d: %s vs %s", s, a.val_loss[s],
                         b.val_loss[s]);
        cr_assert_str_eq(a.lr[s], b.lr[s], "lr differs at step %d", s);
        cr_assert_str_eq(a.grad_norm[s], b.grad_norm[s], "grad_norm differs at step %d", s);
    }
    cr_assert(files_equal(a_ckpt, b_ckpt), "the final checkpoints of the straight and the resumed run differ");
}

Test(resume, dropout_changes_the_run) {
    // the same as run A without dropout gives other losses from step 1 on: the dropout masks are part of the
    // state the bit_exact test checks
    const char *corpus = write_corpus();
    const char *with = tmp("with.jsonl"), *without = tmp("without.jsonl");
    Run r = RUN("train", "--preset", "tiny", "--steps", "20", "--eval-interval", "5", "--seed", "7", "--dropout",
                "0.1", "--data", corpus, "--quiet", "--log", with, "--out", tmp("with.ckpt"));
    expect_ok(&r, "dropout 0.1");
    run_free(&r);
    r = RUN("train", "--preset", "tiny", "--steps", "20", "--eval-interval", "5", "--seed", "7", "--data", corpus,
            "--quiet", "--log", without, "--out", tmp("without.ckpt"));
    expect_ok(&r, "dropout 0");
    run_free(&r);
    static Log a, b;
    read_log(with, &a);
    read_log(without, &b);
    cr_assert_str_neq(a.train_loss[1], b.train_loss[1], "dropout 0.1 should change the first step's loss");
}

Test(resume, stop_after_and_finished_runs) {
    const char *corpus = write_corpus();
    const char *ckpt = tmp("b.ckpt");
    Run r = RUN("train", "--preset", "tiny", "--steps", "20", "--stop-after", "10", "--data", corpus, "--out", ckpt,
                "--quiet");
    expect_ok(&r, "--stop-after 10");
    run_free(&r);
    r = RUN("train", "--resume", ckpt, "--stop-after", "5", "--data", corpus, "--quiet");
    EXPECT_ERROR(&r, "train", "--stop-after 5 is not past the checkpoint's step 10");
    run_free(&r);
    r = RUN("train", "--resume", ckpt, "--seed", "3", "--data", corpus, "--quiet");
    EXPECT_ERROR(&r, "train", "cannot be changed when resuming");
    run_free(&r);
    // --steps may extend a resumed run
    r = RUN("train", "--resume", ckpt, "--steps", "25", "--stop-after", "12", "--data", corpus, "--quiet");
    expect_ok(&r, "--resume --steps 25 --stop-after 12");
    cr_assert(strstr(r.err, "steps 10..25") && strstr(r.err, "train: done: step 12"), "stderr:\n%s", r.err);
    run_free(&r);
}
