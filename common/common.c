#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
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

FILE *common_open_regular(const char *path, const char *what, uint64_t *size, char *err) {
    const char *sep = what ? " " : "";
    if (!what) what = "";
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) {
        err_set(err, "cannot open %s%s'%s': %s", what, sep, path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        err_set(err, "cannot stat %s%s'%s': %s", what, sep, path, strerror(errno));
        close(fd);
        return NULL;
    }
    if (!S_ISREG(st.st_mode)) {
        err_set(err, "%s%s'%s' is not a regular file", what, sep, path);
        close(fd);
        return NULL;
    }
    int flags = fcntl(fd, F_GETFL);
    if (flags == -1 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) == -1) {
        err_set(err, "cannot read %s%s'%s': %s", what, sep, path, strerror(errno));
        close(fd);
        return NULL;
    }
    FILE *f = fdopen(fd, "rb");
    if (!f) {
        err_set(err, "cannot read %s%s'%s': %s", what, sep, path, strerror(errno));
        close(fd);
        return NULL;
    }
    if (size) *size = (uint64_t)st.st_size;
    return f;
}

unsigned char *common_read_file(const char *path, size_t *len, char *err) {
    uint64_t size = 0;
    FILE *f = common_open_regular(path, NULL, &size, err);
    if (!f) return NULL;
    unsigned char *buf = size < SIZE_MAX ? malloc((size_t)size + 1) : NULL;
    if (!buf) {
        fclose(f);
        err_set(err, "'%s' is too large to read (%llu bytes)", path, (unsigned long long)size);
        return NULL;
    }
    errno = 0;
    size_t got = fread(buf, 1, (size_t)size, f);
    int failed = ferror(f);
    int why = errno;
    fclose(f);
    if (failed || got != (size_t)size) {
        free(buf);
        if (failed) err_set(err, "cannot read '%s': %s", path, strerror(why ? why : EIO));
        else err_set(err, "cannot read '%s': it shrank while being read", path);
        return NULL;
    }
    buf[size] = 0;
    *len = (size_t)size;
    return buf;
}

uint64_t common_physical_bytes(void) {
    long pages = sysconf(_SC_PHYS_PAGES);
    long page = sysconf(_SC_PAGE_SIZE);
    if (pages <= 0 || page <= 0) return 0;
    return (uint64_t)pages * (uint64_t)page;
}

int common_stderr_is_tty(void) { return isatty(STDERR_FILENO); }
