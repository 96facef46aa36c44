// Shared helpers of the fuzz targets (tests/fuzz/fuzz.h) and the table of targets.
#include "fuzz.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

const FuzzTarget fuzz_targets[] = {
    {"checkpoint", fuzz_checkpoint},
    {"spec", fuzz_spec},
    {"corpus", fuzz_corpus},
    {"http", fuzz_http},
    {"gguf", fuzz_gguf},
};
const int fuzz_n_targets = (int)(sizeof fuzz_targets / sizeof fuzz_targets[0]);

int fuzz_memfile(const uint8_t *data, size_t size, char *path, size_t path_len) {
    int fd = memfd_create("kvlab-fuzz", MFD_CLOEXEC);
    if (fd < 0) return -1;
    size_t off = 0;
    while (off < size) {
        ssize_t w = write(fd, data + off, size - off);
        if (w <= 0) {
            close(fd);
            return -1;
        }
        off += (size_t)w;
    }
    snprintf(path, path_len, "/proc/self/fd/%d", fd);
    return fd;
}

void fuzz_fail(const char *file, int line, const char *cond, const char *fmt, ...) {
    fprintf(stderr, "fuzz invariant broken at %s:%d: %s: ", file, line, cond);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    abort();
}
