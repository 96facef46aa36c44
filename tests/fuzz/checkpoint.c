// Fuzz target: the checkpoint reader (checkpoints/checkpoint.c) and the training section decoder
// (train/state_io.c) behind --resume.
//
// Each input is loaded three ways: as given (the header checks: magic, version, sizes, checksums, so a
// mutation mostly stops at a checksum); with the payload size and both XXH64 checksums fixed up to match
// the bytes (so mutations of the config, the tokenizer, the weights and the training section reach the
// checks behind the checksums); and fixed up with n_params also set to what a valid config needs (so the
// payload-size and tokenizer checks are reached for mutated shapes). The layout and field offsets are
// checkpoints/checkpoint.h's. Invariants: a refusal is one non-empty line; a load gives a model whose
// parameter count matches its config, a tokenizer of vocab_size symbols, and a training section that the
// decoder either accepts or refuses with one line; nothing leaks (ASan).
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#include "../../checkpoints/checkpoint.h"
#include "../../common/le.h"
#include "../../train/state_io.h"
#include "fuzz.h"

enum { HEADER = CHECKPOINT_HEADER_BYTES, HASHED = 84, OFF_N_PARAMS = 60, OFF_PAYLOAD = 68, OFF_PAYLOAD_HASH = 76,
       OFF_HEADER_HASH = 84 };

static void check_err(const char *err) {
    fuzz_check(err[0] != 0, "a refusal without a message");
    fuzz_check(strchr(err, '\n') == NULL, "a refusal over several lines: %s", err);
}

static void load(const uint8_t *data, size_t size) {
    char path[64], err[ERR_LEN] = "";
    int fd = fuzz_memfile(data, size, path, sizeof path);
    if (fd < 0) return;
    Model m;
    Tokenizer tok;
    unsigned char *section = NULL;
    size_t section_size = 0;
    int has_train = -1;
    int rc = checkpoint_load(path, &m, &ops_cpu, &tok, &section, &section_size, &has_train, err);
    close(fd);
    if (rc != 0) {
        fuzz_check(rc == -1, "checkpoint_load returned %d", rc);
        check_err(err);
        return;
    }
    fuzz_check(m.n_params == model_param_count(&m.cfg), "n_params %zu for a config of %zu", m.n_params,
               model_param_count(&m.cfg));
    fuzz_check(tok.vocab_size == m.cfg.vocab_size, "tokenizer %d, config %d", tok.vocab_size, m.cfg.vocab_size);
    for (int i = 1; i < tok.vocab_size; i++)
        fuzz_check(tok.id_to_byte[i - 1] < tok.id_to_byte[i], "tokenizer not strictly increasing at %d", i);
    fuzz_check(has_train == (section != NULL), "has_train %d, section %p", has_train, (void *)section);
    if (section) {
        TrainConfig tc;
        TrainState s;
        err[0] = 0;
        if (train_state_decode(&tc, &s, section, section_size, &m.cfg, err) == 0) train_state_free(&s);
        else check_err(err);
        common_free(section);
    }
    model_free(&m);
}

int fuzz_checkpoint(const uint8_t *data, size_t size) {
    load(data, size);
    if (size < HEADER || memcmp(data, CHECKPOINT_MAGIC, 8) != 0) return 0;
    uint8_t *fixed = malloc(size);
    if (!fixed) return 0;
    memcpy(fixed, data, size);
    le_put_u64(fixed + OFF_PAYLOAD, (uint64_t)(size - HEADER));
    le_put_u64(fixed + OFF_PAYLOAD_HASH, XXH64(fixed + HEADER, size - HEADER, 0));
    le_put_u64(fixed + OFF_HEADER_HASH, XXH64(fixed, HASHED, 0));
    load(fixed, size);
    ModelConfig cfg = {
        .vocab_size = (int32_t)le_get_u32(fixed + 20), .n_layer = (int32_t)le_get_u32(fixed + 24),
        .n_head = (int32_t)le_get_u32(fixed + 28), .n_kv_head = (int32_t)le_get_u32(fixed + 32),
        .n_embd = (int32_t)le_get_u32(fixed + 36), .n_hidden = (int32_t)le_get_u32(fixed + 40),
        .block_size = (int32_t)le_get_u32(fixed + 44), .rope_theta = le_get_f32(fixed + 48),
        .norm_eps = le_get_f32(fixed + 52), .dropout = le_get_f32(fixed + 56)};
    char reason[ERR_LEN];
    if (model_config_validate(&cfg, reason) == 0) {
        uint64_t n = (uint64_t)model_param_count(&cfg);
        if (n != le_get_u64(fixed + OFF_N_PARAMS)) {
            le_put_u64(fixed + OFF_N_PARAMS, n);
            le_put_u64(fixed + OFF_HEADER_HASH, XXH64(fixed, HASHED, 0));
            load(fixed, size);
        }
    }
    free(fixed);
    return 0;
}
