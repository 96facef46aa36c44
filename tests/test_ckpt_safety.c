// Checkpoint safety, suite `ckpt_safety`: non-finite weights are never saved and refused on load (naming the
// tensor), temp files of killed savers are cleaned up by the next save, a saver killed with SIGKILL at random
// moments never leaves a file that does not load, a save onto a full disk fails cleanly, and the training
// settings a checkpoint stores go through the same validator (and ranges) as the command line's.
#include <criterion/criterion.h>

#include <dirent.h>
#include <errno.h>
#include <float.h>
#include <ftw.h>
#include <limits.h>
#include <math.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "../checkpoints/checkpoint.h"
#include "../train/state_io.h"

static char dir[64];
static char path[128];

static int remove_entry(const char *p, const struct stat *st, int type, struct FTW *ftw) {
    (void)st;
    (void)type;
    (void)ftw;
    return remove(p);
}

static void setup(void) {
    strcpy(dir, "/tmp/kvlab-safety-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/model.ckpt", dir);
}

static void teardown(void) {
    char mnt[128];
    snprintf(mnt, sizeof mnt, "%s/small-disk", dir);
    umount2(mnt, MNT_DETACH); // the full-disk test's tmpfs, if a failed assertion left it mounted
    nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

TestSuite(ckpt_safety, .init = setup, .fini = teardown, .timeout = 60);

// A small model (width 16, 2 layers) with finite weights drawn from salt.
static void make_model(Model *m, float salt, int width) {
    ModelConfig cfg = {.vocab_size = 11, .n_layer = 2, .n_head = 4, .n_kv_head = 2, .n_embd = width,
                       .n_hidden = 2 * width, .block_size = 8, .rope_theta = 10000.0f, .norm_eps = 1e-5f};
    model_init(m, &cfg, &ops_cpu);
    for (size_t i = 0; i < m->n_params; i++) m->params_memory[i] = sinf(0.37f * (float)i + salt);
}

static void make_tokenizer(Tokenizer *tok) {
    char err[ERR_LEN];
    cr_assert_eq(tokenizer_from_bytes(tok, (const unsigned char *)"\n !,.?abcde", 11, err), 0, "%s", err);
}

static void save_ok(const char *p, const Model *m, const Tokenizer *tok) {
    char err[ERR_LEN] = "";
    cr_assert_eq(checkpoint_save(p, m, tok, NULL, 0, err), 0, "save failed: %s", err);
}

static unsigned char *slurp(const char *p, size_t *len) {
    char err[ERR_LEN];
    unsigned char *buf = common_read_file(p, len, err);
    cr_assert_not_null(buf, "%s", err);
    return buf;
}

static void spit(const char *p, const unsigned char *buf, size_t len) {
    FILE *f = fopen(p, "wb");
    cr_assert_not_null(f);
    cr_assert_eq(fwrite(buf, 1, len, f), len);
    cr_assert_eq(fclose(f), 0);
}

static void put64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

// --- non-finite weights ------------------------------------------------------------------------------------

Test(ckpt_safety, nonfinite_weights_are_refused_on_load_naming_the_tensor) {
    Model m;
    Tokenizer tok;
    make_model(&m, 0.0f, 16);
    make_tokenizer(&tok);
    save_ok(path, &m, &tok);
    size_t len;
    unsigned char *buf = slurp(path, &len);
    // a NaN in element 5 of wq (after wte and attn_norm), checksums made to agree so only the weights are wrong
    size_t sizes[NUM_PARAM_TENSORS];
    model_param_sizes(&m.cfg, sizes);
    size_t at = CHECKPOINT_HEADER_BYTES + 4 + 11 + 4 * (sizes[0] + sizes[1] + 5);
    uint32_t nan_bits = 0x7fc00000u;
    memcpy(buf + at, &nan_bits, 4);
    put64(buf + 76, XXH64(buf + CHECKPOINT_HEADER_BYTES, len - CHECKPOINT_HEADER_BYTES, 0));
    put64(buf + 84, XXH64(buf, 84, 0));
    spit(path, buf, len);
    Model back;
    char err[ERR_LEN] = "";
    cr_assert_eq(checkpoint_load(path, &back, &ops_cpu, &tok, NULL, NULL, NULL, err), -1, "a NaN weight loaded");
    cr_assert(strstr(err, path) && strstr(err, "non-finite") && strstr(err, "tensor wq") &&
                  strstr(err, "element 5"),
              "%s", err);
    cr_assert_null(strchr(err, '\n'));
    free(buf);
    model_free(&m);
}

Test(ckpt_safety, nonfinite_weights_are_never_saved) {
    Model good, bad;
    Tokenizer tok;
    make_model(&good, 0.0f, 16);
    make_model(&bad, 1.0f, 16);
    make_tokenizer(&tok);
    save_ok(path, &good, &tok);
    size_t len_before;
    unsigned char *before = slurp(path, &len_before);
    bad.params.w2[3] = INFINITY;
    char err[ERR_LEN] = "";
    cr_assert_eq(checkpoint_save(path, &bad, &tok, NULL, 0, err), -1);
    cr_assert(strstr(err, "cannot save checkpoint") && strstr(err, "tensor w2") && strstr(err, "inf"), "%s", err);
    size_t len_after;
    unsigned char *after = slurp(path, &len_after);
    cr_assert(len_after == len_before && memcmp(before, after, len_before) == 0, "the good file was replaced");
    free(before);
    free(after);
    model_free(&good);
    model_free(&bad);
}

// --- stale temp files ---------------------------------------------------------------------------------------

// The pid of a process that has exited and been reaped.
static pid_t dead_pid(void) {
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) _exit(0);
    cr_assert_eq(waitpid(pid, NULL, 0), pid);
    return pid;
}

static void touch(const char *p) { spit(p, (const unsigned char *)"partial", 7); }

Test(ckpt_safety, stale_temps_of_dead_savers_are_removed_by_the_next_save) {
    pid_t dead = dead_pid();
    pid_t live = fork(); // a saver still at work
    cr_assert_neq(live, -1);
    if (live == 0) {
        pause();
        _exit(0);
    }
    char stale[192], alive[192], other[192], odd[192];
    snprintf(stale, sizeof stale, "%s.tmp.%ld", path, (long)dead);
    snprintf(alive, sizeof alive, "%s.tmp.%ld", path, (long)live);
    snprintf(other, sizeof other, "%s/other.ckpt.tmp.%ld", dir, (long)dead); // another target's
    snprintf(odd, sizeof odd, "%s.tmp.%ldx", path, (long)dead);              // not the pattern
    touch(stale);
    touch(alive);
    touch(other);
    touch(odd);
    Model m;
    Tokenizer tok;
    make_model(&m, 0.0f, 16);
    make_tokenizer(&tok);
    save_ok(path, &m, &tok);
    int stale_left = access(stale, F_OK) == 0;
    int alive_left = access(alive, F_OK) == 0;
    kill(live, SIGKILL);
    waitpid(live, NULL, 0);
    cr_assert_not(stale_left, "the dead saver's temp file %s is still there", stale);
    cr_assert(alive_left, "a live saver's temp file was removed");
    cr_assert_eq(access(other, F_OK), 0, "another checkpoint's temp file was removed");
    cr_assert_eq(access(odd, F_OK), 0, "a name outside the pattern was removed");
    model_free(&m);
}

// --- kill -9 during saves ----------------------------------------------------------------------------------

#define KILLS 30

// Whether the file at p loads and holds the weights of a or b.
static int loads_as_a_or_b(const char *p, const Model *a, const Model *b, char *err) {
    Model back;
    Tokenizer tok;
    if (checkpoint_load(p, &back, &ops_cpu, &tok, NULL, NULL, NULL, err) != 0) return 0;
    size_t bytes = a->n_params * sizeof(float);
    int same = back.n_params == a->n_params && (memcmp(back.params_memory, a->params_memory, bytes) == 0 ||
                                                 memcmp(back.params_memory, b->params_memory, bytes) == 0);
    if (!same) snprintf(err, ERR_LEN, "'%s' loads but holds neither model", p);
    model_free(&back);
    return same;
}

static int count_temps(void) {
    int n = 0;
    DIR *d = opendir(dir);
    cr_assert_not_null(d);
    for (struct dirent *e; (e = readdir(d));) n += strstr(e->d_name, "model.ckpt.tmp.") != NULL;
    closedir(d);
    return n;
}

Test(ckpt_safety, kill_9_during_saves_never_leaves_a_bad_file, .timeout = 30) {
    Model a, b;
    Tokenizer tok;
    make_model(&a, 0.0f, 64); // about 0.1 M parameters: a save takes long enough to be cut in the middle
    make_model(&b, 5.0f, 64);
    make_tokenizer(&tok);
    srand((unsigned)time(NULL));
    int existed = 0, temps_seen = 0;
    for (int k = 0; k < KILLS; k++) {
        fflush(NULL);
        pid_t pid = fork();
        cr_assert_neq(pid, -1);
        if (pid == 0) {
            char err[ERR_LEN];
            for (int i = 0;; i++)
                if (checkpoint_save(path, i % 2 ? &b : &a, &tok, NULL, 0, err) != 0) _exit(3);
        }
        struct timespec ts = {0, (long)(rand() % 40000) * 1000L}; // 0..40 ms
        nanosleep(&ts, NULL);
        cr_assert_eq(kill(pid, SIGKILL), 0);
        int ws;
        cr_assert_eq(waitpid(pid, &ws, 0), pid);
        cr_assert(WIFSIGNALED(ws) && WTERMSIG(ws) == SIGKILL, "the saver ended on its own (status %d)", ws);
        temps_seen += count_temps() > 0;
        if (access(path, F_OK) != 0) continue; // killed before the first rename: no file is fine
        existed++;
        char err[ERR_LEN] = "";
        cr_assert(loads_as_a_or_b(path, &a, &b, err), "after kill %d: %s", k + 1, err);
    }
    cr_log_info("kill -9 during saves: %d kills, the file existed after %d and always loaded; a temp file was "
                "left behind after %d",
                KILLS, existed, temps_seen);
    // the next save cleans up what the killed savers left
    save_ok(path, &a, &tok);
    cr_assert_eq(count_temps(), 0, "temp files of killed savers remain after a save");
    model_free(&a);
    model_free(&b);
}

// --- a full disk -------------------------------------------------------------------------------------------

Test(ckpt_safety, save_onto_a_full_disk_fails_cleanly) {
    // a private mount namespace: the tmpfs disappears with this test's process whatever happens
    if (unshare(CLONE_NEWNS) != 0) cr_skip_test("cannot make a private mount namespace: %s", strerror(errno));
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0)
        cr_skip_test("cannot make the mounts private: %s", strerror(errno));
    char mnt[128], ckpt[192], filler[192];
    snprintf(mnt, sizeof mnt, "%s/small-disk", dir);
    cr_assert_eq(mkdir(mnt, 0700), 0);
    if (mount("tmpfs", mnt, "tmpfs", 0, "size=512k") != 0) cr_skip_test("cannot mount a tmpfs: %s", strerror(errno));
    snprintf(ckpt, sizeof ckpt, "%s/model.ckpt", mnt);
    snprintf(filler, sizeof filler, "%s/filler", mnt);

    Model a, b;
    Tokenizer tok;
    make_model(&a, 0.0f, 32); // about 75 KiB on disk
    make_model(&b, 3.0f, 32);
    make_tokenizer(&tok);
    save_ok(ckpt, &a, &tok);
    size_t len_before;
    unsigned char *before = slurp(ckpt, &len_before);
    // fill the disk
    FILE *f = fopen(filler, "wb");
    cr_assert_not_null(f);
    static unsigned char block[4096];
    while (fwrite(block, 1, sizeof block, f) == sizeof block) {}
    fclose(f);

    char err[ERR_LEN] = "";
    int rc = checkpoint_save(ckpt, &b, &tok, NULL, 0, err);
    size_t len_after;
    unsigned char *after = slurp(ckpt, &len_after);
    int temps = 0;
    DIR *d = opendir(mnt);
    for (struct dirent *e; d && (e = readdir(d));) temps += strstr(e->d_name, ".tmp.") != NULL;
    if (d) closedir(d);
    umount2(mnt, MNT_DETACH);
    cr_assert_eq(rc, -1, "a save onto a full disk succeeded");
    cr_assert(strstr(err, "cannot save checkpoint") && strstr(err, "No space left on device"), "%s", err);
    cr_assert_null(strchr(err, '\n'), "%s", err);
    cr_assert(len_after == len_before && memcmp(before, after, len_before) == 0, "the previous checkpoint changed");
    cr_assert_eq(temps, 0, "the failed save left its temp file");
    cr_log_info("full disk: a %zu-byte save onto a full 512 KiB tmpfs failed with: %s", len_before, err);
    free(before);
    free(after);
    model_free(&a);
    model_free(&b);
}

// --- one validator for the flags and the stored settings --------------------------------------------------

static TrainConfig good_config(void) {
    TrainConfig tc = {.batch_size = 4, .seq_len = 8, .max_steps = 500, .warmup_steps = 20, .lr = 1e-3f,
                      .min_lr = 1e-4f, .weight_decay = 0.1f, .beta1 = 0.9f, .beta2 = 0.95f, .adam_eps = 1e-8f,
                      .grad_clip = 1.0f, .grad_accum = 2, .eval_interval = 50, .eval_windows = 16, .seed = 7};
    return tc;
}

Test(ckpt_safety, lr_range_is_the_flags_range) {
    Model m;
    make_model(&m, 0.0f, 16);
    TrainConfig tc = good_config();
    char err[ERR_LEN] = "";
    float ok[] = {TRAIN_MIN_LR, 1.0f, 10.0f};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        tc.lr = ok[i];
        tc.min_lr = 0.0f;
        cr_assert_eq(train_config_validate(&tc, &m.cfg, err), 0, "lr %g (accepted by --lr): %s", ok[i], err);
    }
    float bad[] = {0.0f, 5e-10f, 10.5f, NAN, INFINITY};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        tc.lr = bad[i];
        cr_assert_eq(train_config_validate(&tc, &m.cfg, err), -1, "lr %g accepted", bad[i]);
        cr_assert_not_null(strstr(err, "lr"), "%s", err);
    }
    model_free(&m);
}

Test(ckpt_safety, stored_settings_are_checked_like_the_flags) {
    Model m;
    Tokenizer tok;
    make_model(&m, 0.0f, 16);
    make_tokenizer(&tok);
    TrainState s;
    train_state_init(&s, m.n_params, 1);
    struct {
        const char *what;
        TrainConfig tc;
    } cases[9];
    for (int i = 0; i < 9; i++) cases[i].tc = good_config();
    cases[0].what = "grad accumulation";
    cases[0].tc.grad_accum = 65536; // the old flag's maximum, now past TRAIN_MAX_GRAD_ACCUM
    cases[1].what = "batch size";
    cases[1].tc.batch_size = 1 << 20;
    cases[2].what = "eval windows";
    cases[2].tc.eval_windows = 1 << 24;
    cases[3].what = "warmup";
    cases[3].tc.warmup_steps = INT_MAX;
    cases[4].what = "epsilon";
    cases[4].tc.adam_eps = NAN;
    cases[5].what = "grad clip";
    cases[5].tc.grad_clip = INFINITY;
    cases[6].what = "grad clip";
    cases[6].tc.grad_clip = NAN;
    cases[7].what = "steps";
    cases[7].tc.max_steps = INT_MAX;
    cases[8].what = "eval interval";
    cases[8].tc.eval_interval = INT_MAX;
    for (int i = 0; i < 9; i++) {
        char err[ERR_LEN] = "";
        cr_assert_eq(train_config_validate(&cases[i].tc, &m.cfg, err), -1, "case %d (%s) accepted", i, cases[i].what);
        cr_assert_eq(train_save_checkpoint(path, &m, &tok, &cases[i].tc, &s, err), 0, "%s", err);
        Model back;
        Tokenizer tok_back;
        TrainConfig tc_back;
        TrainState s_back;
        int rc = train_load_checkpoint(path, &back, &ops_cpu, &tok_back, &tc_back, &s_back, NULL, err);
        cr_assert_eq(rc, -1, "case %d: a stored %s out of the flags' range was accepted on --resume", i, cases[i].what);
        cr_assert(strstr(err, "invalid training config") && strstr(err, cases[i].what), "case %d: %s", i, err);
    }
    train_state_free(&s);
    model_free(&m);
}

Test(ckpt_safety, schedule_with_the_largest_warmup_does_not_overflow) {
    TrainConfig tc = good_config();
    tc.warmup_steps = INT_MAX;
    tc.max_steps = INT_MAX;
    for (int step = 0; step < 3; step++) {
        float lr = schedule_lr(&tc, step);
        cr_assert(isfinite(lr) && lr > 0.0f && lr <= tc.lr, "step %d: lr %g", step, lr);
    }
    tc.warmup_steps = 2; // and the ordinary schedule is unchanged: lr (step + 1) / (warmup + 1), then cosine
    tc.max_steps = 10;
    cr_assert_eq(schedule_lr(&tc, 0), tc.lr * 1.0f / 3.0f);
    cr_assert_eq(schedule_lr(&tc, 2), tc.min_lr + 1.0f * (tc.lr - tc.min_lr));
}
