// common/device.h in every program: loads the CUDA backend (libkvlab_cuda.so, common/device_backend.h) with
// dlopen the first time it is asked for and forwards to it. No CUDA header and no CUDA library here, so a
// CPU run starts without them (issue 13: linking cuBLAS cost every run ~90 ms and ~200 MiB before main).
#include "device.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"
#include "device_backend.h"

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static const DeviceCudaBackend *g_backend; // NULL until loaded; the library stays loaded for the process
static char g_why[ERR_LEN];                // why it did not load

// The directory of the running program (/proc/self/exe) into dir; 0, or -1 with the reason in g_why.
static int program_dir(char *dir, size_t len) {
    ssize_t n = readlink("/proc/self/exe", dir, len - 1);
    if (n <= 0 || (size_t)n >= len - 1) {
        err_set(g_why, "cannot find the program's directory to load %s from (/proc/self/exe); set %s",
                DEVICE_CUDA_LIBRARY, DEVICE_CUDA_ENV);
        return -1;
    }
    dir[n] = 0;
    char *slash = strrchr(dir, '/');
    if (slash) *slash = 0;
    return 0;
}

static void load(void) {
    char path[4096];
    const char *env = getenv(DEVICE_CUDA_ENV);
    if (env && *env) {
        snprintf(path, sizeof path, "%s", env);
    } else {
        char dir[3072]; // leaves room for the file name in path
        if (program_dir(dir, sizeof dir) != 0) return;
        snprintf(path, sizeof path, "%s/%s", dir, DEVICE_CUDA_LIBRARY);
        if (access(path, F_OK) != 0) {
            err_set(g_why, "this build has no CUDA (no %s next to the program: nvcc was not found when "
                           "./configure.py ran, or it ran with --no-cuda)", path);
            return;
        }
    }
    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        const char *e = dlerror();
        size_t n = strlen(path);
        if (e && strncmp(e, path, n) == 0 && strncmp(e + n, ": ", 2) == 0) e += n + 2; // dlerror repeats the path
        err_set(g_why, "cannot load %s: %s", path, e ? e : "unknown error");
        return;
    }
    DeviceCudaEntry entry;
    void *sym = dlsym(lib, DEVICE_CUDA_ENTRY);
    memcpy(&entry, &sym, sizeof entry); // POSIX: a data pointer from dlsym holds the function's address
    const DeviceCudaBackend *b = sym ? entry() : NULL;
    if (!b) {
        err_set(g_why, "%s is not a kvlab CUDA backend (it has no %s)", path, DEVICE_CUDA_ENTRY);
        dlclose(lib);
        return;
    }
    if (b->abi != DEVICE_CUDA_ABI) {
        err_set(g_why, "%s was built from other sources (backend abi %d, this program %d): rebuild it with ninja",
                path, b->abi, DEVICE_CUDA_ABI);
        dlclose(lib);
        return;
    }
    g_backend = b;
}

static const DeviceCudaBackend *loaded(void) {
    CHECK(pthread_once(&g_once, load) == 0);
    return g_backend;
}

// The backend for a memory call: calling one without a usable device is the caller's bug.
static const DeviceCudaBackend *need(void) {
    const DeviceCudaBackend *b = loaded();
    CHECK(b && b->available(NULL) && "device memory without a usable CUDA backend (ask device_cuda_available)");
    return b;
}

int device_cuda_available(char *why) {
    const DeviceCudaBackend *b = loaded();
    if (!b) {
        if (why) snprintf(why, ERR_LEN, "%s", g_why);
        return 0;
    }
    return b->available(why);
}

const char *device_cuda_name(void) {
    const DeviceCudaBackend *b = loaded();
    return b ? b->name() : "none";
}

const void *device_cuda_ops(size_t *ops_size) {
    if (!device_cuda_available(NULL)) return NULL;
    if (ops_size) *ops_size = g_backend->ops_size;
    return g_backend->ops;
}

void *device_malloc(size_t bytes) { return need()->mem_alloc(bytes); }
void device_free(void *ptr) {
    if (ptr) need()->mem_free(ptr);
}
void device_upload(void *dst, const void *src, size_t bytes) { need()->mem_upload(dst, src, bytes); }
void device_download(void *dst, const void *src, size_t bytes) { need()->mem_download(dst, src, bytes); }
void device_memset(void *ptr, int byte, size_t bytes) { need()->mem_set(ptr, byte, bytes); }
void device_synchronize(void) {
    const DeviceCudaBackend *b = loaded();
    if (b && b->available(NULL)) b->synchronize();
}
