// device_upload_staged (upload.cuh): small uploads through a ring of page-locked slots, each guarded by the event
// recorded after its last transfer. The slots live as long as the library (a program's lifetime); a lock makes
// the ring safe for uploads from several host threads.
#include <pthread.h>
#include <string.h>

#include "common.h"
#include "cuda_check.cuh"
#include "device.h"
#include "upload.cuh"

typedef struct {
    void *host;        // DEVICE_STAGE_BYTES page-locked bytes, allocated on first use
    cudaEvent_t done;  // recorded behind the slot's last transfer
} StageSlot;

static StageSlot g_slots[DEVICE_STAGE_SLOTS];
static int g_next;
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;

extern "C" void device_upload_staged(void *dst, const void *src, size_t bytes) {
    if (bytes == 0) return;
    if (bytes > DEVICE_STAGE_BYTES) {
        device_upload(dst, src, bytes);
        return;
    }
    pthread_mutex_lock(&g_lock);
    StageSlot *s = &g_slots[g_next];
    g_next = (g_next + 1) % DEVICE_STAGE_SLOTS;
    if (!s->host) {
        CUDA_CHECK(cudaMallocHost(&s->host, DEVICE_STAGE_BYTES));
        CUDA_CHECK(cudaEventCreateWithFlags(&s->done, cudaEventDisableTiming));
    } else {
        CUDA_CHECK(cudaEventSynchronize(s->done)); // the transfer DEVICE_STAGE_SLOTS uploads ago has left the slot
    }
    memcpy(s->host, src, bytes);
    CUDA_CHECK(cudaMemcpyAsync(dst, s->host, bytes, cudaMemcpyHostToDevice, cuda_stream()));
    CUDA_CHECK(cudaEventRecord(s->done, cuda_stream()));
    pthread_mutex_unlock(&g_lock);
}
