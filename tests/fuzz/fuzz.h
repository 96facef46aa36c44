// kvlab's fuzz targets: one entry per input surface, `int fuzz_<target>(const uint8_t *data, size_t size)`,
// returning 0 (libFuzzer's convention). Each target is one file here; the libFuzzer entry point is the thin
// wrapper in main_libfuzzer.c, compiled only in the fuzz build (`ninja fuzz`, scripts/fuzz.sh), and the test
// suite's tests/test_fuzz_replay.c calls the same functions on every seed (tests/fuzz/corpus/<target>/) and
// every crash ever found (tests/fuzz/crashes/<target>/). A target reports a broken invariant by aborting
// (fuzz_check), so a finding is a crash under libFuzzer and a failed test in the replay. RELIABILITY.md
// records what was run and found.
#ifndef KVLAB_FUZZ_H
#define KVLAB_FUZZ_H

#include <stddef.h>
#include <stdint.h>

int fuzz_checkpoint(const uint8_t *data, size_t size); // checkpoint_load (+ the training section decoder)
int fuzz_spec(const uint8_t *data, size_t size);       // kv_spec_parse, then the cache or pool it describes
int fuzz_corpus(const uint8_t *data, size_t size);     // corpus_load, the tokenizer, batches, recall windows
int fuzz_http(const uint8_t *data, size_t size);       // build/serve: a JSON body -> a validated request
int fuzz_gguf(const uint8_t *data, size_t size);       // gguf_load_memory: parse only, then into a model

typedef struct {
    const char *name;
    int (*fn)(const uint8_t *data, size_t size);
} FuzzTarget;

// Every target, by name (the folder names under tests/fuzz/corpus/ and tests/fuzz/crashes/).
extern const FuzzTarget fuzz_targets[];
extern const int fuzz_n_targets;

// Holds data in an anonymous in-memory regular file (memfd) and writes a path that opens it to path
// (/proc/self/fd/N); returns the descriptor to close after use, or -1.
int fuzz_memfile(const uint8_t *data, size_t size, char *path, size_t path_len);

// Aborts with a message when an invariant the target checks is broken (a finding).
#define fuzz_check(cond, ...) ((cond) ? (void)0 : fuzz_fail(__FILE__, __LINE__, #cond, __VA_ARGS__))
void fuzz_fail(const char *file, int line, const char *cond, const char *fmt, ...)
    __attribute__((noreturn, format(printf, 4, 5)));

#endif
