// Shared helpers of the end-to-end tests of build/train and build/infer; see cli_util.h.
#include "cli_util.h"

#include <criterion/criterion.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

char cliutil_dir[64];

static int remove_entry(const char *p, const struct stat *st, int type, struct FTW *ftw) {
    (void)st, (void)type, (void)ftw;
    return remove(p);
}

void cliutil_setup(void) {
    strcpy(cliutil_dir, "/tmp/kvlab-cli-XXXXXX");
    cr_assert_not_null(mkdtemp(cliutil_dir), "mkdtemp: %s", strerror(errno));
}

void cliutil_teardown(void) { nftw(cliutil_dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS); }

const char *cliutil_tmp(const char *name) {
    static char bufs[16][256];
    static int next;
    char *b = bufs[next++ % 16];
    snprintf(b, sizeof bufs[0], "%s/%s", cliutil_dir, name);
    return b;
}

void cliutil_write_file(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f, "cannot create %s: %s", path, strerror(errno));
    cr_assert_eq(fwrite(data, 1, len, f), len);
    cr_assert_eq(fclose(f), 0);
}

char *cliutil_read_file(const char *path, size_t *len) {
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

int cliutil_files_equal(const char *a, const char *b) {
    size_t la = 0, lb = 0;
    char *x = cliutil_read_file(a, &la), *y = cliutil_read_file(b, &lb);
    int eq = x && y && la == lb && memcmp(x, y, la) == 0;
    free(x);
    free(y);
    return eq;
}

const char *const cliutil_corpus_text =
    "the quick brown fox jumps over the lazy dog and then it runs away into the forest where it sleeps ";

const char *cliutil_write_corpus(void) {
    const char *path = cliutil_tmp("corpus.txt");
    size_t n = strlen(cliutil_corpus_text), reps = 40;
    char *buf = malloc(n * reps);
    for (size_t i = 0; i < reps; i++) memcpy(buf + i * n, cliutil_corpus_text, n);
    cliutil_write_file(path, buf, n * reps);
    free(buf);
    return path;
}

void cliutil_run_free(Run *r) {
    free(r->out);
    free(r->err);
    memset(r, 0, sizeof(*r));
}

const char *cliutil_exe(const char *prog) {
    static char bufs[4][512];
    static int next;
    char *exe = bufs[next++ % 4];
    const char *build = getenv("KVLAB_BUILD");
    snprintf(exe, sizeof bufs[0], "%s/%s", build && *build ? build : "build", prog);
    cr_assert_eq(access(exe, X_OK), 0, "%s is not an executable (build it first): %s", exe, strerror(errno));
    return exe;
}

Run cliutil_run_argv(const char *prog, const char *const *args) {
    const char *argv[64];
    int argc = 0;
    argv[argc++] = cliutil_exe(prog);
    for (int i = 0; args[i]; i++) {
        cr_assert_lt(argc, 63);
        argv[argc++] = args[i];
    }
    argv[argc] = NULL;
    return cliutil_run_cmd(argv);
}

Run cliutil_run_cmd(const char *const *argv) {
    const char *exe = argv[0];
    char out_path[256], err_path[256];
    snprintf(out_path, sizeof out_path, "%s/.stdout", cliutil_dir);
    snprintf(err_path, sizeof err_path, "%s/.stderr", cliutil_dir);
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
        execvp(exe, (char *const *)argv);
        _exit(127);
    }
    int ws;
    while (waitpid(pid, &ws, 0) < 0) cr_assert_eq(errno, EINTR, "waitpid: %s", strerror(errno));
    Run r = {0};
    r.status = WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + WTERMSIG(ws);
    r.out = cliutil_read_file(out_path, &r.out_len);
    r.err = cliutil_read_file(err_path, &r.err_len);
    cr_assert(r.out && r.err, "lost the output of %s", exe);
    unlink(out_path);
    unlink(err_path);
    return r;
}

void cliutil_expect_error(const Run *r, const char *prog, ...) {
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

void cliutil_expect_ok(const Run *r, const char *what) {
    cr_assert_eq(r->status, 0, "%s: expected exit status 0, got %d; stderr:\n%s", what, r->status, r->err);
}

int cliutil_count_entries(void) {
    DIR *d = opendir(cliutil_dir);
    cr_assert_not_null(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) n++;
    closedir(d);
    return n;
}

void cliutil_last_line(const char *text, char *out, size_t len) {
    size_t n = strlen(text);
    while (n > 0 && text[n - 1] == '\n') n--;
    size_t start = n;
    while (start > 0 && text[start - 1] != '\n') start--;
    snprintf(out, len, "%.*s", (int)(n - start), text + start);
}

const char *cliutil_train_tiny(const char *corpus, const char *name) {
    const char *ckpt = cliutil_tmp(name);
    Run r = RUN("train", "--preset", "tiny", "--steps", "5", "--data", corpus, "--out", ckpt, "--quiet");
    cliutil_expect_ok(&r, "train --preset tiny");
    cliutil_run_free(&r);
    struct stat st;
    cr_assert_eq(stat(ckpt, &st), 0, "train did not write %s", ckpt);
    cr_assert_gt(st.st_size, 0);
    return ckpt;
}

char *cliutil_generate(const char *ckpt, const char *prompt, int n, const char *const *extra) {
    const char *args[32] = {"--ckpt", ckpt, "--prompt", prompt, "-n", NULL};
    char n_str[16];
    snprintf(n_str, sizeof n_str, "%d", n);
    int k = 5;
    args[k++] = n_str;
    for (int i = 0; extra && extra[i]; i++) args[k++] = extra[i];
    args[k] = NULL;
    Run r = cliutil_run_argv("infer", args);
    cliutil_expect_ok(&r, "infer");
    size_t plen = strlen(prompt);
    cr_assert_eq(r.out_len, plen + (size_t)n + 1, "expected the prompt, %d characters and a newline; got %zu bytes:\n%s",
                 n, r.out_len, r.out);
    cr_assert(strncmp(r.out, prompt, plen) == 0, "output should start with the prompt: %s", r.out);
    cr_assert_eq(r.out[r.out_len - 1], '\n');
    for (size_t i = plen; i < plen + (size_t)n; i++)
        cr_assert(r.out[i] == ' ' || (r.out[i] >= 'a' && r.out[i] <= 'z'),
                  "generated byte 0x%02x at %zu is not in the corpus' vocabulary", (unsigned char)r.out[i], i);
    char tokens[32]; // the closing line (a note may come before it)
    snprintf(tokens, sizeof tokens, "infer: %d tokens", n);
    const char *line = strstr(r.err, tokens);
    cr_assert(line && (line == r.err || line[-1] == '\n'), "stderr: %s", r.err);
    char *out = r.out;
    r.out = NULL;
    cliutil_run_free(&r);
    return out;
}

void cliutil_parse_eval(const char *out, double *loss, double *ppl, size_t *n_scored) {
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
