// Fuzz target: the GGUF import (checkpoints/gguf.c) through gguf_load_memory, twice per input: parsing and
// validation alone (m == NULL; the tokenizer built), then the whole load into a CPU model (weights
// dequantized). There is no checksum in GGUF, so every mutation reaches the checks. Invariants: a refusal is
// -1 and one non-empty line; both calls refuse with the same message unless only the weights are bad (the
// parse-only call reads none); a load gives a model whose parameter count matches its config and a tokenizer
// of vocab_size tokens; nothing leaks (ASan).
#include <string.h>

#include "../../checkpoints/gguf.h"
#include "fuzz.h"

static void check_err(const char *err) {
    fuzz_check(err[0] != 0, "a refusal without a message");
    fuzz_check(strchr(err, '\n') == NULL, "a refusal over several lines: %s", err);
}

int fuzz_gguf(const uint8_t *data, size_t size) {
    char err[ERR_LEN] = "", err2[ERR_LEN] = "";
    Tokenizer tok;
    int parsed = gguf_load_memory(data, size, "fuzz", NULL, NULL, &tok, err);
    if (parsed != 0) {
        fuzz_check(parsed == -1, "gguf_load_memory returned %d", parsed);
        check_err(err);
    } else {
        fuzz_check(tok.vocab_size >= 1, "a tokenizer of %d tokens", tok.vocab_size);
        tokenizer_free(&tok);
    }
    Model m;
    int loaded = gguf_load_memory(data, size, "fuzz", &m, &ops_cpu, &tok, err2);
    if (loaded != 0) {
        fuzz_check(loaded == -1, "gguf_load_memory returned %d", loaded);
        check_err(err2);
        fuzz_check(parsed != 0 ? strcmp(err, err2) == 0 : strstr(err2, "non-finite") != NULL,
                   "the parse said '%s', the load '%s'", err, err2);
        return 0;
    }
    fuzz_check(parsed == 0, "the load succeeded where the parse refused: %s", err);
    fuzz_check(m.n_params == model_param_count(&m.cfg), "n_params %zu for a config of %zu", m.n_params,
               model_param_count(&m.cfg));
    fuzz_check(tok.vocab_size == m.cfg.vocab_size, "tokenizer %d, config %d", tok.vocab_size, m.cfg.vocab_size);
    fuzz_check(m.cfg.dropout == 0.0f, "dropout %g", m.cfg.dropout);
    model_free(&m);
    tokenizer_free(&tok);
    return 0;
}
