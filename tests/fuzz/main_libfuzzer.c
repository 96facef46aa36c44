// The libFuzzer entry point: compiled only in the fuzz build, once per target with -DFUZZ_TARGET=fuzz_<name>
// (configure.py's `fuzz` edges), around the same function the test suite replays (tests/fuzz/fuzz.h).
#include "fuzz.h"

#ifndef FUZZ_TARGET
#error "compile with -DFUZZ_TARGET=fuzz_<target>"
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) { return FUZZ_TARGET(data, size); }
