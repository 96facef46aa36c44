// Checkpoint format tests: bit-exact round trips (with and without training state), and every way a file can
// be bad (short, truncated, flipped bytes, wrong magic, newer version, inconsistent fields) giving -1 and a
// clear message naming the file; failed saves leave the previous file untouched.
#include <criterion/criterion.h>

#include <dirent.h>
#include <float.h>
#include <ftw.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "../checkpoints/checkpoint.h"
#include "../train/state_io.h"

static char dir[64];
static char path[128];

static int remove_entry(const char *p, const struct stat *st, int type, struct FTW *ftw) {
    (void)st, (void)type, (void)ftw;
    return remove(p);
}

static void setup(void) {
    strcpy(dir, "/tmp/kvlab-ckpt-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/model.ckpt", dir);
}

static void teardown(void) { nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS); }

TestSuite(checkpoint, .init = setup, .fini = teardown);

static ModelConfig tiny_config(void) {
    ModelConfig c = {.vocab_size = 11, .n_layer = 2, .n_head = 4, .n_kv_head = 2, .n_embd = 16,
                     .n_hidden = 32, .block_size = 8, .rope_theta = 10000.0f, .norm_eps = 1e-5f,
                     .dropout = 0.1f};
    return c;
}

// Deterministic weights, with the awkward bit patterns a float round trip must keep.
static void fill_pattern(float *x, size_t n, float salt) {
    for (size_t i = 0; i < n; i++) x[i] = sinf(0.37f * (float)i + salt) * (1.0f + (float)(i % 7));
    uint32_t nan_payload = 0x7fc01234u;
    memcpy(&x[3], &nan_payload, 4);
    x[5] = -0.0f;
    x[7] = 1e-40f; // subnormal
    x[9] = FLT_MAX;
    x[n - 1] = -INFINITY;
}

// Weights keep the finite awkward patterns (-0, a subnormal, FLT_MAX); NaN and infinities are never saved as
// weights (test_ckpt_safety.c), so here they travel only in the AdamW moments.
static void make_model(Model *m, float salt) {
    ModelConfig cfg = tiny_config();
    model_init(m, &cfg, &ops_cpu);
    fill_pattern(m->params_memory, m->n_params, salt);
    m->params_memory[3] = 0.5f;
    m->params_memory[m->n_params - 1] = -FLT_MAX;
}

static void make_tokenizer(Tokenizer *tok) {
    const char *bytes = "\n !,.?abcde"; // 11 strictly increasing bytes
    char err[ERR_LEN];
    cr_assert_eq(tokenizer_from_bytes(tok, (const unsigned char *)bytes, 11, err), 0, "%s", err);
}

static TrainConfig train_config(void) {
    TrainConfig tc = {.batch_size = 4, .seq_len = 8, .max_steps = 500, .warmup_steps = 20, .lr = 1e-3f,
                      .min_lr = 1e-4f, .weight_decay = 0.1f, .beta1 = 0.9f, .beta2 = 0.95f, .adam_eps = 1e-8f,
                      .grad_clip = 1.0f, .grad_accum = 2, .eval_interval = 50, .eval_windows = 16,
                      .seed = 0x123456789abcdef0ull, .recall_mix = 0.25f};
    return tc;
}

static void save_ok(const char *p, const Model *m, const Tokenizer *tok, const TrainConfig *tc,
                    const TrainState *s) {
    char err[ERR_LEN] = "";
    cr_assert_eq(train_save_checkpoint(p, m, tok, tc, s, err), 0, "save failed: %s", err);
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

// Loads path expecting failure; the message must name the file and contain `want`.
static void expect_load_error(const char *p, const char *want) {
    Model m;
    Tokenizer tok;
    TrainConfig tc;
    TrainState s;
    char err[ERR_LEN] = "";
    int rc = train_load_checkpoint(p, &m, &ops_cpu, &tok, &tc, &s, NULL, err);
    cr_assert_eq(rc, -1, "loading %s should fail with '%s'", p, want);
    cr_assert_not_null(strstr(err, want), "error '%s' should contain '%s'", err, want);
    cr_assert_not_null(strstr(err, p), "error '%s' should name the file", err);
    cr_assert_null(strchr(err, '\n'), "error should be one line: '%s'", err);
}

static void put32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static void put64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}
// After editing a file's bytes on purpose, make both checksums agree again so the semantic checks are hit.
static void reseal(unsigned char *buf, size_t len) {
    put64(buf + 76, XXH64(buf + CHECKPOINT_HEADER_BYTES, len - CHECKPOINT_HEADER_BYTES, 0));
    put64(buf + 84, XXH64(buf, 84, 0));
}

// Writes a weights-only checkpoint of the tiny model and returns its bytes.
static unsigned char *good_file(size_t *len) {
    Model m;
    Tokenizer tok;
    make_model(&m, 0.0f);
    make_tokenizer(&tok);
    save_ok(path, &m, &tok, NULL, NULL);
    model_free(&m);
    return slurp(path, len);
}

Test(checkpoint, round_trip_weights_tokenizer_config) {
    Model m, back;
    Tokenizer tok, tok_back;
    make_model(&m, 0.5f);
    make_tokenizer(&tok);
    save_ok(path, &m, &tok, NULL, NULL);

    struct stat st;
    cr_assert_eq(stat(path, &st), 0);
    cr_assert_eq((size_t)st.st_size, CHECKPOINT_HEADER_BYTES + 4 + 11 + 4 * m.n_params);

    TrainConfig tc = {.batch_size = -7};
    TrainState s = {.step = -7};
    int has_state = -1;
    char err[ERR_LEN] = "";
    cr_assert_eq(train_load_checkpoint(path, &back, &ops_cpu, &tok_back, &tc, &s, &has_state, err), 0, "%s", err);
    cr_assert_eq(has_state, 0);
    cr_assert_eq(tc.batch_size, -7, "tc must be untouched without training state");
    cr_assert_eq(s.step, -7, "s must be untouched without training state");
    cr_assert_null(s.m);

    cr_assert_eq(memcmp(&back.cfg, &m.cfg, sizeof m.cfg), 0);
    cr_assert_eq(back.ops, &ops_cpu);
    cr_assert_eq(back.n_params, m.n_params);
    cr_assert_eq(memcmp(back.params_memory, m.params_memory, m.n_params * sizeof(float)), 0);
    cr_assert_eq(back.params.final_norm, back.params_memory + m.n_params - m.cfg.n_embd);
    cr_assert_eq(tok_back.vocab_size, tok.vocab_size);
    cr_assert_eq(memcmp(tok_back.id_to_byte, tok.id_to_byte, 11), 0);
    cr_assert_eq(memcmp(tok_back.byte_to_id, tok.byte_to_id, sizeof tok.byte_to_id), 0);
    model_free(&m);
    model_free(&back);
}

Test(checkpoint, round_trip_training_state) {
    Model m, back;
    Tokenizer tok, tok_back;
    make_model(&m, 1.5f);
    make_tokenizer(&tok);
    TrainConfig tc = train_config(), tc_back;
    TrainState s, s_back;
    train_state_init(&s, m.n_params, 42);
    s.step = 123;
    s.data_rng.state = 0xfedcba9876543210ull;
    s.dropout_rng.state = 0x0102030405060708ull;
    fill_pattern(s.m, m.n_params, 2.5f);
    fill_pattern(s.v, m.n_params, 3.5f);
    save_ok(path, &m, &tok, &tc, &s);

    int has_state = -1;
    char err[ERR_LEN] = "";
    int rc = train_load_checkpoint(path, &back, &ops_cpu, &tok_back, &tc_back, &s_back, &has_state, err);
    cr_assert_eq(rc, 0, "%s", err);
    cr_assert_eq(has_state, 1);
    cr_assert_eq(memcmp(back.params_memory, m.params_memory, m.n_params * sizeof(float)), 0);
    // field by field: the struct has padding, which memcmp would read
    cr_assert(tc_back.batch_size == tc.batch_size && tc_back.seq_len == tc.seq_len &&
                  tc_back.max_steps == tc.max_steps && tc_back.warmup_steps == tc.warmup_steps && tc_back.lr == tc.lr &&
                  tc_back.min_lr == tc.min_lr && tc_back.weight_decay == tc.weight_decay && tc_back.beta1 == tc.beta1 &&
                  tc_back.beta2 == tc.beta2 && tc_back.adam_eps == tc.adam_eps && tc_back.grad_clip == tc.grad_clip &&
                  tc_back.grad_accum == tc.grad_accum && tc_back.eval_interval == tc.eval_interval &&
                  tc_back.eval_windows == tc.eval_windows && tc_back.seed == tc.seed &&
                  tc_back.recall_mix == tc.recall_mix,
              "TrainConfig differs after the round trip");
    cr_assert_eq(s_back.step, 123);
    cr_assert_eq(s_back.data_rng.state, s.data_rng.state);
    cr_assert_eq(s_back.dropout_rng.state, s.dropout_rng.state);
    cr_assert_eq(memcmp(s_back.m, s.m, m.n_params * sizeof(float)), 0);
    cr_assert_eq(memcmp(s_back.v, s.v, m.n_params * sizeof(float)), 0);
    model_free(&back);
    train_state_free(&s_back);

    // Inference only wants the weights: the state is skipped but still checksummed.
    rc = checkpoint_load(path, &back, &ops_cpu, &tok_back, NULL, NULL, &has_state, err);
    cr_assert_eq(rc, 0, "%s", err);
    cr_assert_eq(has_state, 1);
    cr_assert_eq(memcmp(back.params_memory, m.params_memory, m.n_params * sizeof(float)), 0);
    model_free(&back);

    model_free(&m);
    train_state_free(&s);
}

Test(checkpoint, truncated_files_rejected) {
    size_t len;
    unsigned char *buf = good_file(&len);
    size_t payload_mid = CHECKPOINT_HEADER_BYTES + (len - CHECKPOINT_HEADER_BYTES) / 2;
    size_t cuts[] = {0, 3, 8, 10, 40, CHECKPOINT_HEADER_BYTES - 1, CHECKPOINT_HEADER_BYTES,
                     CHECKPOINT_HEADER_BYTES + 2, payload_mid, len - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        spit(path, buf, cuts[i]);
        expect_load_error(path, "truncated");
    }
    // The mid-payload and one-byte-short cuts say how long the file should be.
    char want[64];
    snprintf(want, sizeof want, "expected %zu bytes, found %zu", len, len - 1);
    expect_load_error(path, want);

    // One byte too many is no better.
    unsigned char *longer = malloc(len + 1);
    memcpy(longer, buf, len);
    longer[len] = 0;
    spit(path, longer, len + 1);
    expect_load_error(path, "trailing bytes");
    free(longer);
    free(buf);
}

Test(checkpoint, flipped_payload_byte_is_corrupted) {
    size_t len;
    unsigned char *buf = good_file(&len);
    size_t at[] = {CHECKPOINT_HEADER_BYTES, CHECKPOINT_HEADER_BYTES + 6, (len + CHECKPOINT_HEADER_BYTES) / 2,
                   len - 1};
    for (size_t i = 0; i < sizeof at / sizeof at[0]; i++) {
        buf[at[i]] ^= 0x10;
        spit(path, buf, len);
        expect_load_error(path, "corrupted");
        buf[at[i]] ^= 0x10;
    }
    free(buf);
}

Test(checkpoint, flipped_header_byte_is_rejected) {
    size_t len;
    unsigned char *buf = good_file(&len);
    // Every header byte, config floats included, is covered by a check or the header checksum.
    for (size_t i = 0; i < CHECKPOINT_HEADER_BYTES; i++) {
        buf[i] ^= 0x01;
        spit(path, buf, len);
        Model m;
        Tokenizer tok;
        char err[ERR_LEN] = "";
        cr_assert_eq(checkpoint_load(path, &m, &ops_cpu, &tok, NULL, NULL, NULL, err), -1, "flip at %zu", i);
        cr_assert_not_null(strstr(err, path), "flip at %zu: '%s'", i, err);
        buf[i] ^= 0x01;
    }
    free(buf);
}

Test(checkpoint, every_flipped_byte_of_a_state_file_is_rejected) {
    Model m;
    Tokenizer tok;
    make_model(&m, 0.0f);
    make_tokenizer(&tok);
    TrainConfig tc = train_config();
    TrainState s;
    train_state_init(&s, m.n_params, 1);
    save_ok(path, &m, &tok, &tc, &s);
    model_free(&m);
    train_state_free(&s);
    size_t len;
    unsigned char *buf = slurp(path, &len);
    for (size_t i = 0; i < len; i += (i < 256 ? 1 : 61)) {
        buf[i] ^= 0x80;
        spit(path, buf, len);
        Model back;
        TrainConfig tc_back;
        TrainState s_back;
        char err[ERR_LEN] = "";
        cr_assert_eq(train_load_checkpoint(path, &back, &ops_cpu, &tok, &tc_back, &s_back, NULL, err), -1,
                     "flip at %zu", i);
        buf[i] ^= 0x80;
    }
    free(buf);
}

Test(checkpoint, wrong_magic_rejected) {
    size_t len;
    unsigned char *buf = good_file(&len);
    buf[0] = 'X';
    spit(path, buf, len);
    expect_load_error(path, "not a kvlab checkpoint");
    spit(path, (const unsigned char *)"hello", 5); // short and not ours: say what it is, not "truncated"
    expect_load_error(path, "not a kvlab checkpoint");
    free(buf);
}

Test(checkpoint, newer_version_rejected) {
    size_t len;
    unsigned char *buf = good_file(&len);
    put32(buf + 8, 2);
    spit(path, buf, len);
    expect_load_error(path, "checkpoint version 2 is newer than this build supports (1)");
    free(buf);
}

static uint64_t get64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

Test(checkpoint, inconsistent_fields_rejected) {
    size_t len;
    unsigned char *buf = good_file(&len);
    unsigned char *edit = malloc(len);

    memcpy(edit, buf, len); // n_kv_head 3 does not divide n_head 4
    put32(edit + 32, 3);
    reseal(edit, len);
    spit(path, edit, len);
    expect_load_error(path, "invalid model config");

    memcpy(edit, buf, len); // n_params disagrees with the config
    put64(edit + 60, get64(edit + 60) + 1);
    reseal(edit, len);
    spit(path, edit, len);
    expect_load_error(path, "parameters");

    memcpy(edit, buf, len); // a bit the format does not define
    put32(edit + 16, 4);
    reseal(edit, len);
    spit(path, edit, len);
    expect_load_error(path, "unknown flags 0x4");

    memcpy(edit, buf, len); // the training-state flag without the bytes it promises
    put32(edit + 16, CHECKPOINT_FLAG_TRAIN_STATE);
    reseal(edit, len);
    spit(path, edit, len);
    expect_load_error(path, "the payload is");

    memcpy(edit, buf, len); // the tokenizer's own count disagrees with the config
    put32(edit + CHECKPOINT_HEADER_BYTES, 10);
    reseal(edit, len);
    spit(path, edit, len);
    expect_load_error(path, "the tokenizer has 10 symbols");

    memcpy(edit, buf, len); // tokenizer bytes out of order
    edit[CHECKPOINT_HEADER_BYTES + 4 + 3] = 'z';
    reseal(edit, len);
    spit(path, edit, len);
    expect_load_error(path, "bad tokenizer");

    memcpy(edit, buf, len); // header size field that version 1 does not use
    put32(edit + 12, 96);
    reseal(edit, len);
    spit(path, edit, len);
    expect_load_error(path, "header size 96");

    free(edit);
    free(buf);
}

Test(checkpoint, invalid_training_fields_rejected) {
    Model m;
    Tokenizer tok;
    make_model(&m, 0.0f);
    make_tokenizer(&tok);
    TrainConfig tc = train_config();
    TrainState s;
    train_state_init(&s, m.n_params, 1);
    s.step = -5;
    save_ok(path, &m, &tok, &tc, &s);
    expect_load_error(path, "negative training step -5");
    s.step = 5;
    tc.seq_len = 9; // longer than block_size 8
    save_ok(path, &m, &tok, &tc, &s);
    expect_load_error(path, "invalid training config");
    // An inference load never looks at the training config.
    Model back;
    char err[ERR_LEN] = "";
    cr_assert_eq(checkpoint_load(path, &back, &ops_cpu, &tok, NULL, NULL, NULL, err), 0, "%s", err);
    model_free(&back);
    model_free(&m);
    train_state_free(&s);
}

Test(checkpoint, missing_file_and_directory_rejected) {
    expect_load_error(path, "cannot open checkpoint");
    expect_load_error(dir, "not a regular file");
}

Test(checkpoint, save_rejects_tokenizer_model_mismatch) {
    Model m;
    Tokenizer tok;
    make_model(&m, 0.0f);
    char err[ERR_LEN] = "";
    cr_assert_eq(tokenizer_from_bytes(&tok, (const unsigned char *)"abc", 3, err), 0);
    cr_assert_eq(checkpoint_save(path, &m, &tok, NULL, 0, err), -1);
    cr_assert_not_null(strstr(err, "tokenizer has 3 symbols but the model's vocab_size is 11"), "%s", err);
    cr_assert_eq(access(path, F_OK), -1, "nothing may be written");
    model_free(&m);
}

static int count_entries(const char *d) {
    DIR *dp = opendir(d);
    cr_assert_not_null(dp);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(dp)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
    closedir(dp);
    return n;
}

Test(checkpoint, save_replaces_previous_file_without_leftovers) {
    Model a, b, back;
    Tokenizer tok;
    make_model(&a, 0.0f);
    make_model(&b, 9.0f);
    make_tokenizer(&tok);
    save_ok(path, &a, &tok, NULL, NULL);
    save_ok(path, &b, &tok, NULL, NULL);
    cr_assert_eq(count_entries(dir), 1, "only the checkpoint itself may remain");
    char err[ERR_LEN] = "";
    cr_assert_eq(checkpoint_load(path, &back, &ops_cpu, &tok, NULL, NULL, NULL, err), 0, "%s", err);
    cr_assert_eq(memcmp(back.params_memory, b.params_memory, b.n_params * sizeof(float)), 0);
    model_free(&a);
    model_free(&b);
    model_free(&back);
}

Test(checkpoint, save_into_missing_directory_fails_cleanly) {
    Model m;
    Tokenizer tok;
    make_model(&m, 0.0f);
    make_tokenizer(&tok);
    char bad[192];
    snprintf(bad, sizeof bad, "%s/no-such-dir/model.ckpt", dir);
    char err[ERR_LEN] = "";
    cr_assert_eq(checkpoint_save(bad, &m, &tok, NULL, 0, err), -1);
    cr_assert_not_null(strstr(err, "cannot save checkpoint"), "%s", err);
    cr_assert_not_null(strstr(err, bad), "%s", err);
    cr_assert_not_null(strstr(err, "No such file or directory"), "%s", err);
    cr_assert_eq(count_entries(dir), 0);
    model_free(&m);
}

// Saves `a`, then makes a second save of `b` fail via `sabotage`; the file must still be `a`, byte for byte.
static void check_failed_save_keeps_old(void (*sabotage)(void), void (*undo)(void), const char *want) {
    Model a, b, back;
    Tokenizer tok;
    make_model(&a, 0.0f);
    make_model(&b, 9.0f);
    make_tokenizer(&tok);
    TrainConfig tc = train_config();
    TrainState s;
    train_state_init(&s, b.n_params, 3);
    save_ok(path, &a, &tok, NULL, NULL);
    size_t len_before;
    unsigned char *before = slurp(path, &len_before);

    sabotage();
    char err[ERR_LEN] = "";
    cr_assert_eq(train_save_checkpoint(path, &b, &tok, &tc, &s, err), -1);
    undo();
    cr_assert_not_null(strstr(err, "cannot save checkpoint"), "%s", err);
    cr_assert_not_null(strstr(err, want), "'%s' should contain '%s'", err, want);

    size_t len_after;
    unsigned char *after = slurp(path, &len_after);
    cr_assert_eq(len_after, len_before);
    cr_assert_eq(memcmp(after, before, len_before), 0, "the previous checkpoint was modified");
    cr_assert_eq(count_entries(dir), 1, "the temp file must be removed");
    cr_assert_eq(checkpoint_load(path, &back, &ops_cpu, &tok, NULL, NULL, NULL, err), 0, "%s", err);
    cr_assert_eq(memcmp(back.params_memory, a.params_memory, a.n_params * sizeof(float)), 0);
    free(before);
    free(after);
    model_free(&a);
    model_free(&b);
    model_free(&back);
    train_state_free(&s);
}

static char tmp_path[192];
static void block_temp_name(void) {
    snprintf(tmp_path, sizeof tmp_path, "%s.tmp.%ld", path, (long)getpid());
    cr_assert_eq(mkdir(tmp_path, 0700), 0); // the temp file cannot be created where a directory sits
}
static void unblock_temp_name(void) { cr_assert_eq(rmdir(tmp_path), 0); }

Test(checkpoint, failed_temp_create_leaves_previous_file_intact) {
    check_failed_save_keeps_old(block_temp_name, unblock_temp_name, "cannot create");
}

static struct rlimit old_fsize;
static void limit_file_size(void) {
    // Writes past 4 KiB fail with EFBIG (signal ignored), like a full disk halfway through the payload.
    signal(SIGXFSZ, SIG_IGN);
    cr_assert_eq(getrlimit(RLIMIT_FSIZE, &old_fsize), 0);
    struct rlimit lim = {.rlim_cur = 4096, .rlim_max = old_fsize.rlim_max};
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &lim), 0);
}
static void unlimit_file_size(void) { cr_assert_eq(setrlimit(RLIMIT_FSIZE, &old_fsize), 0); }

Test(checkpoint, failed_write_leaves_previous_file_intact) {
    check_failed_save_keeps_old(limit_file_size, unlimit_file_size, "File too large");
}

Test(checkpoint, failed_rename_removes_temp_file) {
    // path is a non-empty directory: the whole file is written, then the rename over it fails
    Model m;
    Tokenizer tok;
    make_model(&m, 0.0f);
    make_tokenizer(&tok);
    cr_assert_eq(mkdir(path, 0700), 0);
    char inner[192];
    snprintf(inner, sizeof inner, "%s/keep", path);
    spit(inner, (const unsigned char *)"x", 1);
    char err[ERR_LEN] = "";
    cr_assert_eq(checkpoint_save(path, &m, &tok, NULL, 0, err), -1);
    cr_assert_not_null(strstr(err, "rename of"), "%s", err);
    cr_assert_eq(count_entries(dir), 1, "the temp file must be removed");
    cr_assert_eq(count_entries(path), 1);
    model_free(&m);
}

Test(checkpoint, training_section_is_opaque_bytes_handed_back) {
    Model m, back;
    Tokenizer tok, tok_back;
    make_model(&m, 0.25f);
    make_tokenizer(&tok);
    const unsigned char section[] = "any bytes: checkpoints/ never looks inside";
    char err[ERR_LEN] = "";
    cr_assert_eq(checkpoint_save(path, &m, &tok, section, sizeof section, err), 0, "%s", err);
    struct stat st;
    cr_assert_eq(stat(path, &st), 0);
    cr_assert_eq((size_t)st.st_size, CHECKPOINT_HEADER_BYTES + 4 + 11 + 4 * m.n_params + sizeof section);

    unsigned char *bytes = NULL;
    size_t size = 0;
    int has_train = -1;
    cr_assert_eq(checkpoint_load(path, &back, &ops_cpu, &tok_back, &bytes, &size, &has_train, err), 0, "%s", err);
    cr_assert_eq(has_train, 1);
    cr_assert_eq(size, sizeof section);
    cr_assert_eq(memcmp(bytes, section, size), 0);
    cr_assert_eq(memcmp(back.params_memory, m.params_memory, m.n_params * sizeof(float)), 0);
    common_free(bytes);
    model_free(&back);

    // a training loader refuses a section of the wrong length, naming the file
    expect_load_error(path, "training section of 43 bytes");
    model_free(&m);
}

Test(checkpoint, training_section_size_follows_the_documented_layout) {
    Model m;
    Tokenizer tok;
    make_model(&m, 0.0f);
    make_tokenizer(&tok);
    TrainConfig tc = train_config();
    TrainState s;
    train_state_init(&s, m.n_params, 7);
    save_ok(path, &m, &tok, &tc, &s);
    struct stat st;
    cr_assert_eq(stat(path, &st), 0);
    // header, tokenizer, weights, then TrainConfig (68) + step and RNGs (20) + the two AdamW moments
    cr_assert_eq((size_t)st.st_size, CHECKPOINT_HEADER_BYTES + 4 + 11 + 4 * m.n_params + 68 + 20 + 8 * m.n_params);
    cr_assert_eq(train_state_section_size(m.n_params), (size_t)(68 + 20 + 8 * m.n_params));
    model_free(&m);
    train_state_free(&s);
}
