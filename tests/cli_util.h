// Shared helpers of the end-to-end tests of build/train and build/infer (test_cli.c, test_resume.c): a fresh
// temporary directory per test, files in it, running a program with its output captured, and the checks of the
// error contract and of the programs' output.
//
// The binaries are found in $KVLAB_BUILD (set by `ninja test`; default "build"); the tests run from the
// repository root. All files go to a fresh mkdtemp directory under /tmp, removed afterwards.
#ifndef KVLAB_TESTS_CLI_UTIL_H
#define KVLAB_TESTS_CLI_UTIL_H

#include <stddef.h>

// The test's directory, made by cliutil_setup and removed with everything in it by cliutil_teardown (the
// suites' .init and .fini).
extern char cliutil_dir[64];
void cliutil_setup(void);
void cliutil_teardown(void);

// A path inside the test's directory (a few rotating static buffers, so several may be live at once).
const char *cliutil_tmp(const char *name);

// Writes len bytes to path, asserting success.
void cliutil_write_file(const char *path, const void *data, size_t len);

// Reads a whole file (NUL-terminated; free it); NULL when it cannot be opened.
char *cliutil_read_file(const char *path, size_t *len);

// Whether both files can be read and hold the same bytes.
int cliutil_files_equal(const char *a, const char *b);

// The lowercase corpus: 27 characters (a-z and space, every letter present). No newline, no capitals, no
// punctuation: those are the out-of-vocabulary characters of the tests.
extern const char *const cliutil_corpus_text;

// Writes the corpus text 40 times over (about 4 KB) to corpus.txt in the test's directory; returns its path.
const char *cliutil_write_corpus(void);

typedef struct {
    int status; // exit status; 128 + signal when killed by one
    char *out, *err;
    size_t out_len, err_len;
} Run;

void cliutil_run_free(Run *r);

// Runs $KVLAB_BUILD/<prog> with the NULL-terminated arguments; stdout and stderr are captured through files.
Run cliutil_run_argv(const char *prog, const char *const *args);

// The path of $KVLAB_BUILD/<prog>, asserted executable (a few rotating static buffers).
const char *cliutil_exe(const char *prog);

// Runs the NULL-terminated argv (argv[0] looked up on PATH when it has no '/'), output captured the same way.
Run cliutil_run_cmd(const char *const *argv);

#define ARGS(...) ((const char *const[]){__VA_ARGS__, NULL})
#define RUN(prog, ...) cliutil_run_argv(prog, ARGS(__VA_ARGS__))

// Asserts the error contract: exit status 1, nothing on stdout, exactly one line on stderr that starts with
// "<prog>: " and contains each of the NULL-terminated phrases.
void cliutil_expect_error(const Run *r, const char *prog, ...);

#define EXPECT_ERROR(run, prog, ...) cliutil_expect_error(run, prog, __VA_ARGS__, (const char *)NULL)

// Asserts exit status 0.
void cliutil_expect_ok(const Run *r, const char *what);

// Entries in the test's directory, not counting . and .. (nor the capture files, removed after each run).
int cliutil_count_entries(void);

// The last line of a text (without its newline), copied into out.
void cliutil_last_line(const char *text, char *out, size_t len);

// Trains the tiny preset for 5 steps on the lowercase corpus; returns the checkpoint's path.
const char *cliutil_train_tiny(const char *corpus, const char *name);

// Generates from a checkpoint; returns stdout (caller frees) after checking the shape of the output.
char *cliutil_generate(const char *ckpt, const char *prompt, int n, const char *const *extra);

// Parses "... loss L, perplexity P" and the number of tokens scored from an eval line.
void cliutil_parse_eval(const char *out, double *loss, double *ppl, size_t *n_scored);

#endif
