#include "common.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

void common_fail_check(const char *expr, const char *file, int line) {
    fprintf(stderr, "kvlab: internal check failed: %s at %s:%d\n", expr, file, line);
    abort();
}

void *common_calloc(size_t count, size_t size) {
    if (count == 0 || size == 0) count = size = 1;
    void *ptr = calloc(count, size);
    if (!ptr) {
        fprintf(stderr, "kvlab: out of memory allocating %zu x %zu bytes\n", count, size);
        abort();
    }
    return ptr;
}

void common_free(void *ptr) { free(ptr); }

double common_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void rng_init(Rng *rng, uint64_t seed) {
    // splitmix64 scramble so that small seeds still give well-mixed, non-zero states
    uint64_t z = seed + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z = z ^ (z >> 31);
    rng->state = z ? z : 0x2545F4914F6CDD1Dull;
}

uint64_t rng_next_u64(Rng *rng) {
    uint64_t x = rng->state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng->state = x;
    return x * 0x2545F4914F6CDD1Dull;
}

uint32_t rng_next_u32(Rng *rng) { return (uint32_t)(rng_next_u64(rng) >> 32); }

float rng_uniform(Rng *rng) { return (float)(rng_next_u64(rng) >> 40) / 16777216.0f; }

float rng_normal(Rng *rng) {
    float u1 = rng_uniform(rng), u2 = rng_uniform(rng);
    if (u1 < 1e-7f) u1 = 1e-7f;
    return sqrtf(-2.0f * logf(u1)) * cosf(6.2831853071795864f * u2);
}

uint64_t rng_below(Rng *rng, uint64_t n) { return n ? rng_next_u64(rng) % n : 0; }

void err_set(char *err, const char *fmt, ...) {
    if (!err) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, ERR_LEN, fmt, ap);
    va_end(ap);
}

unsigned char *common_read_file(const char *path, size_t *len, char *err) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        err_set(err, "cannot open '%s': %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0) goto fail;
    if (S_ISDIR(st.st_mode)) {
        errno = EISDIR;
        goto fail;
    }
    if (fseek(f, 0, SEEK_END) != 0) goto fail;
    long size = ftell(f);
    if (size < 0 || fseek(f, 0, SEEK_SET) != 0) goto fail;
    unsigned char *buf = malloc((size_t)size + 1);
    if (!buf) {
        fclose(f);
        err_set(err, "'%s' is too large to read (%ld bytes)", path, size);
        return NULL;
    }
    if (fread(buf, 1, (size_t)size, f) != (size_t)size) {
        free(buf);
        goto fail;
    }
    buf[size] = 0;
    fclose(f);
    *len = (size_t)size;
    return buf;
fail:
    err_set(err, "cannot read '%s': %s", path, errno ? strerror(errno) : "not a regular file");
    fclose(f);
    return NULL;
}

int common_stderr_is_tty(void) { return isatty(STDERR_FILENO); }
