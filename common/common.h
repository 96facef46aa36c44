// Plumbing every part of kvlab uses: check macros, allocation, clocks, a seeded RNG, user errors.
// Kept small and boring on purpose.
#ifndef KVLAB_COMMON_H
#define KVLAB_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" { // also included from .cu files
#endif

// Internal invariant / libc failure: print the call and file:line, then abort.
#define CHECK(cond)                                                                      \
    do {                                                                                 \
        if (!(cond)) common_fail_check(#cond, __FILE__, __LINE__);                       \
    } while (0)

void common_fail_check(const char *expr, const char *file, int line);

// Allocation that never returns NULL (aborts with the size on failure). Memory is zeroed.
void *common_calloc(size_t count, size_t size);
void common_free(void *ptr);

// Seconds from a monotonic clock.
double common_now(void);

// Deterministic RNG (xorshift64*): the whole state is one uint64, so it is trivial to checkpoint.
typedef struct {
    uint64_t state;
} Rng;

void rng_init(Rng *rng, uint64_t seed);
uint64_t rng_next_u64(Rng *rng);
uint32_t rng_next_u32(Rng *rng);
float rng_uniform(Rng *rng);                      // [0, 1)
float rng_normal(Rng *rng);                       // N(0, 1), Box-Muller
uint64_t rng_below(Rng *rng, uint64_t n);         // [0, n)

// Error strings a user can cause (bad flag, file, spec). Functions that can fail that way return -1 and
// leave a message in `err` (at least ERR_LEN bytes); the program prints it as one line and exits non-zero.
#define ERR_LEN 512
void err_set(char *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

// Opens an existing file for reading without ever blocking in the open: the open is non-blocking, then
// fstat, and anything but a regular file (a FIFO, a device such as /dev/zero, a directory, a socket) is
// refused before a byte is read. Every reader of a user's file goes through it. what names the file in the
// messages ("checkpoint" gives "cannot open checkpoint 'P': ..."; NULL for none): "cannot open [what ]'P':
// <strerror>" or "[what ]'P' is not a regular file". Returns a blocking stream, *size (may be NULL) its
// length in bytes; NULL with one line in err.
FILE *common_open_regular(const char *path, const char *what, uint64_t *size, char *err);

// Reads a whole regular file (common_open_regular); returns NULL and fills err on failure. *len receives
// the byte count; the buffer holds one more byte, a 0.
unsigned char *common_read_file(const char *path, size_t *len, char *err);

// Bytes of physical memory (sysconf), or 0 when the system does not say.
uint64_t common_physical_bytes(void);

// Whether stderr is a terminal (live progress display only there).
int common_stderr_is_tty(void);

#ifdef __cplusplus
}
#endif

#endif
