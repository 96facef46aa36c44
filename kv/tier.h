// A slower tier under the paged pool (issue 5, `tier:FAST_BLOCKS`): the pool is the slow tier (host memory,
// it holds every block); attention reads only copies held in a small fast arena (device memory on a GPU, a
// bounded arena here). The unit of transfer is one (block, layer): its keys and values for every kv head,
// so the next layer's blocks can be fetched while this layer computes (the classic offload pipeline).
// The arena holds FAST whole blocks' worth of units (FAST * n_layer unit slots, shared by all layers); each
// layer's tail unit (the block being written) is pinned there and written directly (no transfer), so the
// tail takes one of the FAST blocks.
//
// Attention over a unit that is not resident fetches it first: it is never skipped unless top_k says so
// (Quest: only the top_k blocks by their min/max key bound + the tail). Modes: resident (everything fits;
// transfers only on first touch), reactive (fetch on demand, the wait is stall), predictive (a worker
// thread prefetches the next layer's blocks ranked by the previous step's attention mass per block of that
// layer; what is not there in time is fetched on demand). A victim is the unit whose next use in the
// layer-by-layer decode schedule is furthest away (the layer just computed first), least recently used
// among equals: for a cyclic every-layer scan plain LRU would evict exactly the unit needed next. A
// prefetch only evicts a unit needed later than the one it brings. What counts as stall: the time
// attention (or the append of a new tail after a mid-block prefill) waits for a unit to land.
//
// On the CPU both tiers are RAM, so a transfer is a memcpy plus an injected cost of transfer_us per unit,
// modelled as one link (a copy engine): transfers queue on it and each lands transfer_us after the link is
// free, overlapping compute but not each other; compute that needs a unit still on the link spins until it
// lands (that is stall). No thread burns a core to model the cost, so the numbers do not depend on a spare
// core. The prefetch worker keeps at most one transfer (+ 30 us) queued ahead on the link.
//
// With slow_file (`--slow-file PATH`) the slow tier is a file instead: transfers into the arena pread it, and
// the arena writes back to it on eviction, as a real offloading system does. Each (pool block, layer) unit has
// a fixed place (pool block * n_layer + layer units in), so the file never exceeds the pool (n_blocks *
// n_layer * unit_bytes, reserved with posix_fallocate at init so a full disk is an init error, not a failed
// write halfway through a decode). When a unit reaches the file: the sequence's units at attach time (the
// prefill) are spilled at init (the prompt's KV goes to the slow tier); a unit the decode writes lives in the
// arena as its layer's tail and is written back when it is evicted, complete and no longer written; a unit
// already in the file and unchanged is never written again (a partial prefill tail is written twice: at init
// and when evicted complete). Write-backs cost their real pwrite time only (no transfer_us: a PCIe link is
// full duplex, they do not queue behind fetches); a write-back the main thread does to free a slot is stall.
// A unit is never read before its write has finished (a reader waits for a write-back still in flight).
// The pool still holds every row (the decode writes it; Quest's bounds at init and the oracle read it), so
// the file saves no RAM here: it is the source of transfers, and what it measures is the file path's cost.
// Reads hit the OS page cache unless the file outgrows free RAM: numbers with a file are page-cache copies
// plus syscalls. slow_cold makes them reads from the device: every write is fdatasync'ed and every unit's
// pages are dropped (posix_fadvise DONTNEED) after its write and after each read, so the next read of it
// misses the cache (DONTNEED drops only clean pages, hence the sync; it is advice: on tmpfs or a file system
// that ignores it the reads stay warm, which read_s shows; on a VM a "cold" read may still come from the
// host's cache). Cold write-backs are synchronous, so write_s and stall include the device's flushes. The
// file is created (it must not exist: the tier never overwrites data) and deleted at kv_tier_free; a crash
// leaves it behind.
#ifndef KVLAB_TIER_H
#define KVLAB_TIER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>

#include "paged.h"

typedef enum { KV_TIER_RESIDENT, KV_TIER_REACTIVE, KV_TIER_PREDICTIVE } KVTierMode;

// Maps onto `infer --eval tier --kv paged:B --fast N --prefetch MODE --transfer-us T --context C --prefill P`.
typedef struct {
    int block;          // --kv paged:B: tokens per block (the eval's pool)
    int fast_blocks;    // --fast N: whole blocks (all layers) the arena holds, the tail included; >= 2; 0 = all
    KVTierMode mode;    // --prefetch resident|reactive|predictive|skip:K (skip:K = predictive + top_k K)
    int top_k;          // attend only the top_k non-tail blocks by Quest score + the tail; 0 = every block
    double transfer_us; // --transfer-us: injected cost per (block, layer) unit moved
    int context;        // --context: tokens of the stream; bounds the tier's sequence
    int prefill;        // --prefill: tokens fed into the pool before the tier attaches (no tiering)
    const char *slow_file; // --slow-file: the slow tier is this file (created, must not exist; deleted at
                           // free); NULL: the pool in RAM
    int slow_cold;      // with slow_file: sync writes and drop the file's cached pages, so reads are cold
} KVTierConfig;

typedef struct {
    long long reads;                // non-tail units attention read (the tail is always resident)
    long long hits, late, misses;   // of those: resident / still arriving from a prefetch / absent
    long long skipped;              // non-tail units attention did not read (top_k)
    long long transfers;            // units copied pool -> arena (demand, prefetch, a partial tail once)
    long long bytes_moved;
    long long prefetch_issued;      // prefetches completed
    long long prefetch_used;        // of those, read by attention before their eviction
    double stall_s;                 // compute waiting for a transfer (or for a slot to free up)
    double copy_s;                  // the transfers themselves (memcpy, or pread: then = read_s; either thread)
    long long file_bytes_written;   // slow_file (0 in RAM): the prefill spilled at init, then write-backs
    long long file_bytes_read;      // = transfers * unit_bytes with a file
    double read_s, write_s;         // in pread; in pwrite (cold: + the page drop; + fdatasync)
    int fast_blocks;                // sizes (not reset): blocks' worth of units the arena holds,
    size_t unit_bytes, bytes;       // one (block, layer) unit's keys and values, all the tier holds (RAM)
    size_t file_bytes;              // the slow file's reserved size (0 in RAM)
} KVTierStats;

typedef enum { KV_SLOT_FREE, KV_SLOT_LOADING, KV_SLOT_READY } KVSlotState;

typedef struct {
    int block, layer;        // the unit held: seq table index, layer
    int pool_block;          // its pool block (the worker never reads seq->table: main may grow it)
    int evicted, evicted_pool; // slow_file: a unit (block * L + layer) this claim evicted whose file copy is
                             // stale, and its pool block: the claimer writes it back first; -1 none
    KVSlotState state;       // LOADING: being copied in (only its copier touches the data)
    int tail, reading;       // pinned: the layer's block being written / attention reads it now
    int prefetched;          // loaded by the worker and not read yet
    long last_use, stamp;    // tick of the last read or write (its next use follows); clock then (LRU)
    double ready_at;         // when its transfer lands on the link (common_now seconds)
} KVTierSlot;

typedef struct {
    int block, pool_block, layer;
    long need; // tick of the attention that will read it
} KVTierReq;

// The tier's state (kv/tier.c drives it; public like KVPool, to read, not to write).
typedef struct KVTier {
    const KVPool *pool;
    const KVSeq *seq;
    KVTierConfig cfg;
    int L, NKV, HD, B, max_blocks, fast, n_slots, nh_cap;
    size_t unit;                        // floats of keys (or of values) in one unit: NKV * B * HD
    float *arena;                       // (n_slots, 2, unit): keys, then values
    KVTierSlot *slots;                  // (n_slots)
    atomic_int *landed;                 // (n_slots) the copy into the slot is done: spun on without mu
    int *where, *tail_slot;             // (max_blocks, L) slot holding the unit, -1 when absent; (L)
    float *kmin, *kmax;                 // (max_blocks, L, NKV, HD) Quest's per-block key bounds
    float *mass, *rank;                 // (L, max_blocks) attention mass per block at its last step; scratch
    int *sel, n_sel, *order;            // (max_blocks) blocks the last attend read (the tail last); scratch
    double *pm, *pz, *pacc;             // (max_blocks, nh_cap), same, (max_blocks, nh_cap, HD): partial softmax
    char *isread;                       // (max_blocks) 1: the last attend reads the block; 2: has read it
    pthread_mutex_t mu;                 // guards everything below; cv: any of it changed
    pthread_cond_t cv;
    pthread_t worker;
    int has_worker, stop, busy;         // busy: the worker is copying a unit in
    double link_free;                   // when the link has landed everything queued on it (common_now)
    KVTierReq *queue;                   // (max_blocks) the next layer's prefetch plan, best first
    int q_head, q_len, in_attend;       // in_attend: the tick's layer still needs its units
    long tick, clock;                   // pos * L + layer: where the decode schedule is; LRU stamps
    KVTierStats st;
    int fd;                             // slow_file open for pread/pwrite, -1 in RAM
    char *path;                         // slow_file's path, unlinked at free
    char *in_file;                      // (max_blocks, L) the unit in the file: 0 absent or stale, 1 being
                                        // written back, 2 current
    char io_err[ERR_LEN];               // the first file error of either thread; append and attend fail after
} KVTier;

// --prefetch MODE: resident | reactive | predictive | skip:K. -1 with the valid forms in err.
int kv_tier_parse_mode(KVTierConfig *cfg, const char *text, char *err);
// "resident", "reactive", "predictive" or "skip:K" into buf (>= 32 bytes).
const char *kv_tier_mode_name(const KVTierConfig *cfg, char *buf);

// A tier over seq (which may already hold tokens, e.g. a prefill) for up to cfg->context tokens, in the pool's
// block size (cfg->block is the eval's). Starts the worker in predictive mode. seq must not be forked while
// the tier is attached (a copy-on-write would move a block the tier has copied). -1 with one line in err on
// a bad config (fast < 2, resident that does not fit, a bad top_k or transfer cost), when the slow file
// cannot be created (it exists, is a directory, its folder is missing or read-only), reserved or written, or
// when the thread cannot start.
int kv_tier_init(KVTier **out, const KVPool *pool, const KVSeq *seq, const KVTierConfig *cfg, char *err);
// Stops and joins the worker, frees everything, deletes the slow file. NULL is fine.
void kv_tier_free(KVTier *t);
// After kv_paged_append(layer, pos): writes the row into the layer's tail unit (k rotated, v; NKV*HD
// each) and updates the block's key summary. A new tail block takes a slot without a transfer. 0, or -1
// with the slow file's first I/O error (of either thread; every later call fails too). RAM never fails.
int kv_tier_append(KVTier *t, int layer, int pos, const float *k, const float *v, char *err);
// attention_decode_paged over the fast tier, after kv_tier_append of this layer's row at position
// seq->n_tokens - 1 (the tail must be in place): q (NH, HD) rotated to that position; out (NH, HD);
// att (NH, Tc) probabilities, 0 for rows of skipped blocks. Split by block (flash-decoding): each unit's
// partial softmax is computed as soon as it is resident (resident ones first) and the parts are combined in
// block order, in double, so a layer needs only its tail and the unit it reads, and the result never depends
// on the mode, the budget, the slow tier or which transfer landed first (bit for bit; within float rounding
// of attention_decode_paged). In predictive mode it then queues the next layer's prefetch. 0, or -1 as
// kv_tier_append (out is then not to be used).
int kv_tier_attend(KVTier *t, float *out, float *att, const float *q, int layer, int NH, char *err);
// The seq table indices the last kv_tier_attend read (the tail last); returns their count.
int kv_tier_read_blocks(const KVTier *t, const int **blocks);
// Waits until the worker has nothing queued or in flight (tests; a barrier, never needed for correctness).
void kv_tier_drain(KVTier *t);
void kv_tier_stats(KVTier *t, KVTierStats *st);
void kv_tier_reset_stats(KVTier *t);

#endif
