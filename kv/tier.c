// The fast tier behind kv/tier.h: an arena of unit slots, the victim rule (furthest next use in the decode
// schedule, then LRU), fetches on demand on the calling thread, a prefetch worker (pthreads: one mutex guards
// slots, queue, tick and stats, one condvar says they changed), a link that lands one transfer at a time, and
// attention split by block (flash-decoding), so a layer needs only its tail and the unit it reads. With a
// slow file: transfers pread it, evictions of units the file lacks write them back (pwrite), one fixed place
// per (pool block, layer).
#include <cblas.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../common/common.h"
#include "tier.h"

#define LOCK(t) CHECK(pthread_mutex_lock(&(t)->mu) == 0)
#define UNLOCK(t) CHECK(pthread_mutex_unlock(&(t)->mu) == 0)

static float *slot_k(const KVTier *t, int s) { return t->arena + (size_t)s * 2 * t->unit; }
static size_t unit_bytes(const KVTier *t) { return 2 * t->unit * sizeof(float); }

// The tick at which the unit in s is next read, assuming attention reads every block of every layer.
static long next_use(const KVTier *t, const KVTierSlot *s) {
    long now = t->tick, when = now - now % t->L + s->layer;
    if (when < now || (when == now && (!t->in_attend || s->last_use == now))) when += t->L;
    return when;
}

// Claims a slot (LOADING) for unit (block, layer) of pool block pool_block, needed at tick `need`: a free one,
// else it evicts the ready, unpinned unit needed furthest ahead (least recently used among equals); a
// prefetch (strict) only evicts a unit needed after `need`. -1 when there is none. An evicted unit whose file
// copy is stale is marked being written: the claimer writes it back (transfer) before the slot is reused.
static int claim(KVTier *t, int block, int pool_block, int layer, long need, int strict) {
    long v = -1, best_next = 0, best_last = 0;
    for (int i = 0; i < t->n_slots; i++) {
        const KVTierSlot *s = &t->slots[i];
        if (s->state == KV_SLOT_FREE) {
            v = i;
            break;
        }
        if (s->state != KV_SLOT_READY || s->tail || s->reading) continue;
        long nx = next_use(t, s);
        if (!(strict && nx <= need) && (v < 0 || nx > best_next || (nx == best_next && s->stamp < best_last)))
            v = i, best_next = nx, best_last = s->stamp;
    }
    if (v < 0) return -1;
    KVTierSlot *s = &t->slots[v];
    int evicted = -1, evicted_pool = -1;
    if (s->state != KV_SLOT_FREE) {
        int u = s->block * t->L + s->layer;
        t->where[u] = -1;
        if (t->fd >= 0 && t->in_file[u] == 0) t->in_file[u] = 1, evicted = u, evicted_pool = s->pool_block;
    }
    *s = (KVTierSlot){.block = block, .layer = layer, .pool_block = pool_block, .evicted = evicted,
                      .evicted_pool = evicted_pool, .state = KV_SLOT_LOADING, .last_use = -1, .stamp = ++t->clock};
    t->where[block * t->L + layer] = (int)v;
    atomic_store_explicit(&t->landed[v], 0, memory_order_relaxed);
    return (int)v;
}

// ---- the slow file ----------------------------------------------------------------------------------------

// Unit (pool block, layer)'s fixed place in the file: the file never grows past the pool.
static off_t file_off(const KVTier *t, int pool_block, int layer) {
    return ((off_t)pool_block * t->L + layer) * (off_t)unit_bytes(t);
}

// All n bytes through pread or pwrite (a signal or a short count continues): 0, or -1 with errno (EIO for
// an end of file: the file was truncated under the tier).
static int rw_all(int fd, char *buf, size_t n, off_t off, int write) {
    while (n > 0) {
        ssize_t r = write ? pwrite(fd, buf, n, off) : pread(fd, buf, n, off);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return errno = r ? errno : EIO, -1;
        buf += r, n -= (size_t)r, off += r;
    }
    return 0;
}

// One unit's keys k and values v (unit floats each; one call when adjacent, as in a slot) to or from its
// place in the file, without mu (the caller owns the memory). Cold: a write is synced, and the unit's pages
// are dropped after a write or a read, so its next read misses the page cache. 0, or -1 with errno.
static int unit_io(KVTier *t, float *k, float *v, int pool_block, int layer, int write) {
    size_t half = t->unit * sizeof(float);
    off_t off = file_off(t, pool_block, layer);
    int fail = v == k + t->unit ? rw_all(t->fd, (char *)k, 2 * half, off, write)
                                : rw_all(t->fd, (char *)k, half, off, write) ||
                                      rw_all(t->fd, (char *)v, half, off + half, write);
    if (fail) return -1;
    if (t->cfg.slow_cold) {
        if (write && fdatasync(t->fd) != 0) return -1;
        (void)posix_fadvise(t->fd, off, (off_t)(2 * half), POSIX_FADV_DONTNEED); // advice: nothing depends on it
    }
    return 0;
}

// Keeps the first file error (under mu, either thread) for append and attend to return.
static void io_fail(KVTier *t, const char *what, int e) {
    if (!t->io_err[0]) err_set(t->io_err, "tier: %s --slow-file '%s' failed: %s", what, t->path, strerror(e));
}

// -1 with the first file error in err once there is one, else 0 (under mu).
static int io_status(const KVTier *t, char *err) {
    if (!t->io_err[0]) return 0;
    return err_set(err, "%s", t->io_err), -1;
}

// Writes the unit claim evicted from slot v back to its place in the file (under mu; released for the write:
// the slot stays the claimer's), then wakes a reader waiting for it. A failed write is kept as the error and
// still releases the waiters (their data is not to be used).
static void write_back(KVTier *t, int v) {
    KVTierSlot *s = &t->slots[v];
    int u = s->evicted, pool_block = s->evicted_pool;
    s->evicted = -1;
    UNLOCK(t);
    double t0 = common_now();
    float *k = slot_k(t, v);
    int rc = unit_io(t, k, k + t->unit, pool_block, u % t->L, 1), e = errno;
    double dt = common_now() - t0;
    LOCK(t);
    t->in_file[u] = 2, t->st.file_bytes_written += (long long)unit_bytes(t), t->st.write_s += dt;
    if (rc) io_fail(t, "writing", e);
    CHECK(pthread_cond_broadcast(&t->cv) == 0);
}

// Creates the file (never over an existing one), reserves the pool's size in it (a full disk fails here, not
// mid-decode) and spills the sequence's units to it (the prefill: the slow tier holds them). Before the worker
// starts; -1 with one line in err (the tier frees and unlinks what was made).
static int file_open(KVTier *t, const KVPool *pool, const char *path, char *err) {
    if (!*path) return err_set(err, "--slow-file: the path is empty"), -1;
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        struct stat sb;
        int e = errno, dir = e == EISDIR || (e == EEXIST && stat(path, &sb) == 0 && S_ISDIR(sb.st_mode));
        if (dir) return err_set(err, "--slow-file '%s' is a directory: give a file path in it", path), -1;
        if (e == EEXIST)
            return err_set(err, "--slow-file '%s' exists: the tier creates its own file (and deletes it when done), "
                           "it never overwrites one", path), -1;
        return err_set(err, "--slow-file '%s': cannot create it: %s", path, strerror(e)), -1;
    }
    t->fd = fd, t->path = strcpy(common_calloc(strlen(path) + 1, 1), path); // from here on, free unlinks it
    off_t size = (off_t)pool->n_blocks * t->L * (off_t)unit_bytes(t);
    int rc = posix_fallocate(fd, 0, size);
    if (rc == EOPNOTSUPP || rc == EINVAL) rc = ftruncate(fd, size) ? errno : 0; // sparse: a full disk fails later
    if (rc)
        return err_set(err, "--slow-file '%s': cannot reserve %lld bytes: %s", path, (long long)size, strerror(rc)), -1;
    double t0 = common_now();
    for (int i = 0; i * t->B < t->seq->n_tokens; i++)
        for (int l = 0, b = t->seq->table[i]; l < t->L; l++) {
            if (unit_io(t, kv_pool_k(pool, b, l, 0), kv_pool_v(pool, b, l, 0), b, l, 1) != 0)
                return err_set(err, "--slow-file '%s': writing the prefill failed: %s", path, strerror(errno)), -1;
            t->in_file[i * t->L + l] = 2, t->st.file_bytes_written += (long long)unit_bytes(t);
        }
    t->st.write_s += common_now() - t0;
    return 0;
}

// ---- the fast tier ----------------------------------------------------------------------------------------

// Fills claimed slot v (under mu; released for the copy and the file I/O): first the write-back of the unit
// its claim evicted, if any (returns 1: the claimer waited for a slot to free up); then, when copy, the
// slot's unit over the link, from the pool (memcpy) or the file (pread, once its write has finished). The
// link is a timeline: a transfer starts when the link is free and lands transfer_us later (the injected cost,
// on top of the real copy), so transfers queue behind each other and overlap compute, and no thread burns a
// core to model the wait.
static int transfer(KVTier *t, int v, int copy) {
    KVTierSlot *s = &t->slots[v];
    int wrote = s->evicted >= 0, u = s->block * t->L + s->layer, pool_block = s->pool_block, layer = s->layer;
    if (wrote) write_back(t, v);
    if (!copy) return wrote;
    while (t->fd >= 0 && t->in_file[u] == 1) CHECK(pthread_cond_wait(&t->cv, &t->mu) == 0); // its write-back
    CHECK(t->fd < 0 || t->in_file[u] == 2); // a unit is never read before it is written
    s->ready_at = t->link_free = fmax(common_now(), t->link_free) + 1e-6 * t->cfg.transfer_us;
    UNLOCK(t);
    double t0 = common_now();
    float *dst = slot_k(t, v);
    int rc = 0, e = 0;
    if (t->fd >= 0) {
        rc = unit_io(t, dst, dst + t->unit, pool_block, layer, 0), e = errno;
    } else {
        memcpy(dst, kv_pool_k(t->pool, pool_block, layer, 0), t->unit * sizeof(float));
        memcpy(dst + t->unit, kv_pool_v(t->pool, pool_block, layer, 0), t->unit * sizeof(float));
    }
    double dt = common_now() - t0;
    atomic_store_explicit(&t->landed[v], 1, memory_order_release);
    LOCK(t);
    t->st.transfers++, t->st.bytes_moved += (long long)unit_bytes(t), t->st.copy_s += dt;
    if (t->fd >= 0) t->st.file_bytes_read += (long long)unit_bytes(t), t->st.read_s += dt;
    if (rc) io_fail(t, "reading", e);
    return wrote;
}

// Under mu: a ready slot holding unit (i, layer) whose transfer has landed, fetched here if absent (copy = 0:
// just claimed, for a tail block that starts empty). *kind: 0 it was there, 1 it was still arriving (a
// prefetch), 2 it was absent; a wait is stall. Waits spin without mu, as compute waits on a copy engine's
// event (a futex wake-up costs tens of microseconds on a VM, as much as a transfer).
static int load(KVTier *t, int i, int layer, int copy, int *kind) {
    double t0 = common_now();
    int wrote = 0;
    *kind = 0;
    for (;;) {
        int v = t->where[i * t->L + layer];
        if (v < 0) {
            if ((v = claim(t, i, t->seq->table[i], layer, t->tick, 0)) < 0) { // all pinned or being copied
                CHECK(pthread_cond_wait(&t->cv, &t->mu) == 0);
                continue;
            }
            wrote = transfer(t, v, copy);
            t->slots[v].state = KV_SLOT_READY, *kind = copy ? 2 : 0;
        } else if (t->slots[v].state == KV_SLOT_LOADING) { // the worker is copying it: finish its bookkeeping
            *kind = 1;
            UNLOCK(t);
            while (!atomic_load_explicit(&t->landed[v], memory_order_acquire)) continue;
            LOCK(t);
            if (t->slots[v].state == KV_SLOT_LOADING) t->slots[v].state = KV_SLOT_READY, t->slots[v].prefetched = 1;
        }
        double until = t->slots[v].ready_at, now = common_now();
        if (now >= until) {
            if (*kind || wrote) t->st.stall_s += now - t0;
            return v;
        }
        if (!*kind) *kind = 1;
        UNLOCK(t);
        while (common_now() < until) continue;
        LOCK(t);
    }
}

static void *worker_main(void *arg) {
    KVTier *t = arg;
    LOCK(t);
    for (;;) {
        if (t->q_head == t->q_len) CHECK(pthread_cond_broadcast(&t->cv) == 0); // drained
        while (!t->stop && t->q_head == t->q_len) CHECK(pthread_cond_wait(&t->cv, &t->mu) == 0);
        if (t->stop) break;
        // at most one transfer (+ 30 us for a late wake-up) queued: an on-demand fetch waits behind little
        double ahead = t->link_free - common_now() - 1e-6 * (t->cfg.transfer_us + 30.0);
        if (ahead > 0) {
            UNLOCK(t);
            nanosleep(&(struct timespec){.tv_sec = (time_t)ahead, .tv_nsec = (long)(1e9 * fmod(ahead, 1.0))}, NULL);
            LOCK(t);
            continue;
        }
        KVTierReq r = t->queue[t->q_head++];
        if (r.need < t->tick || t->where[r.block * t->L + r.layer] >= 0) continue; // stale, or there already
        int v = claim(t, r.block, r.pool_block, r.layer, r.need, 1);
        if (v < 0) continue; // no room without evicting a unit needed sooner
        long stamp = t->slots[v].stamp;
        t->busy = 1;
        transfer(t, v, 1);
        if (t->slots[v].state == KV_SLOT_LOADING && t->slots[v].stamp == stamp) // else main finished it already
            t->slots[v].state = KV_SLOT_READY, t->slots[v].prefetched = 1;
        t->st.prefetch_issued++, t->busy = 0;
        CHECK(pthread_cond_broadcast(&t->cv) == 0);
    }
    UNLOCK(t);
    return NULL;
}

// Widens the key bounds of token pos's block (layer, kv head g) by its key k (HD); the first row sets them.
static void bound_row(KVTier *t, int pos, int layer, int g, const float *k) {
    size_t o = (((size_t)(pos / t->B) * t->L + layer) * t->NKV + g) * t->HD;
    for (int d = 0, first = pos % t->B == 0; d < t->HD; d++) {
        t->kmin[o + d] = first ? k[d] : fminf(t->kmin[o + d], k[d]);
        t->kmax[o + d] = first ? k[d] : fmaxf(t->kmax[o + d], k[d]);
    }
}

int kv_tier_init(KVTier **out, const KVPool *pool, const KVSeq *seq, const KVTierConfig *cfg, char *err) {
    *out = NULL;
    int B = pool->block, max_blocks = cfg->context > 0 ? (cfg->context + B - 1) / B : 0;
    if (max_blocks < 1 || seq->n_tokens > cfg->context)
        return err_set(err, "tier: context %d < 1 or < the sequence's %d tokens", cfg->context, seq->n_tokens), -1;
    if (cfg->fast_blocks < 0 || cfg->fast_blocks == 1)
        return err_set(err, "--fast %d: the fast tier needs at least 2 blocks (the tail being written and one "
                       "to read), or 0 for the whole context", cfg->fast_blocks), -1;
    if (cfg->mode == KV_TIER_RESIDENT && cfg->fast_blocks && cfg->fast_blocks < max_blocks)
        return err_set(err, "--prefetch resident keeps the whole context in the fast tier: --fast %d < %d blocks "
                       "(leave --fast out)", cfg->fast_blocks, max_blocks), -1;
    if (!(cfg->transfer_us >= 0 && cfg->transfer_us <= 1e6) || cfg->top_k < 0)
        return err_set(err, "tier: --transfer-us %g must be 0..1e6, top_k %d >= 0", cfg->transfer_us, cfg->top_k), -1;
    if (cfg->slow_cold && !cfg->slow_file) return err_set(err, "tier: cold reads need a --slow-file"), -1;
    CHECK(cfg->mode >= KV_TIER_RESIDENT && cfg->mode <= KV_TIER_PREDICTIVE);
    KVTier *t = common_calloc(1, sizeof(KVTier));
    t->pool = pool, t->seq = seq, t->cfg = *cfg, t->fd = -1;
    t->L = pool->n_layer, t->NKV = pool->n_kv_head, t->HD = pool->head_dim, t->B = B, t->max_blocks = max_blocks;
    t->fast = cfg->fast_blocks && cfg->fast_blocks < max_blocks ? cfg->fast_blocks : max_blocks;
    t->n_slots = t->fast * t->L, t->unit = (size_t)t->NKV * B * t->HD;
    size_t units = (size_t)max_blocks * t->L, mb = (size_t)max_blocks;
    t->arena = common_calloc((size_t)t->n_slots * 2 * t->unit, sizeof(float));
    t->slots = common_calloc((size_t)t->n_slots, sizeof(KVTierSlot));
    t->landed = common_calloc((size_t)t->n_slots, sizeof(atomic_int));
    t->where = common_calloc(units + t->L + 2 * mb, sizeof(int)), t->tail_slot = t->where + units;
    t->sel = t->tail_slot + t->L, t->order = t->sel + mb;
    t->kmin = common_calloc(2 * units * t->NKV * t->HD + units + mb, sizeof(float));
    t->kmax = t->kmin + units * t->NKV * t->HD, t->mass = t->kmax + units * t->NKV * t->HD, t->rank = t->mass + units;
    t->isread = common_calloc(mb, 1), t->queue = common_calloc(mb, sizeof(KVTierReq));
    t->in_file = common_calloc(units, 1);
    memset(t->where, 0xff, units * sizeof(int)), memset(t->tail_slot, 0xff, t->L * sizeof(int)); // -1: none
    for (int pos = 0; pos < seq->n_tokens; pos++) // key bounds of what the sequence holds (Quest: at prefill)
        for (int l = 0; l < t->L; l++)
            for (int g = 0; g < t->NKV; g++)
                bound_row(t, pos, l, g, kv_pool_k(pool, seq->table[pos / B], l, g) + (pos % B) * t->HD);
    CHECK(pthread_mutex_init(&t->mu, NULL) == 0 && pthread_cond_init(&t->cv, NULL) == 0);
    if (cfg->slow_file && file_open(t, pool, cfg->slow_file, err) != 0) return kv_tier_free(t), -1;
    if (cfg->mode == KV_TIER_PREDICTIVE && pthread_create(&t->worker, NULL, worker_main, t) != 0)
        return err_set(err, "tier: cannot start the prefetch thread"), kv_tier_free(t), -1;
    t->has_worker = cfg->mode == KV_TIER_PREDICTIVE;
    *out = t;
    return 0;
}

void kv_tier_free(KVTier *t) {
    if (!t) return;
    if (t->has_worker) {
        LOCK(t);
        t->stop = 1;
        CHECK(pthread_cond_broadcast(&t->cv) == 0);
        UNLOCK(t);
        CHECK(pthread_join(t->worker, NULL) == 0);
    }
    pthread_cond_destroy(&t->cv), pthread_mutex_destroy(&t->mu);
    common_free(t->arena), common_free(t->slots), common_free(t->landed), common_free(t->where);
    common_free(t->kmin), common_free(t->isread), common_free(t->queue), common_free(t->pm);
    common_free(t->in_file);
    if (t->fd >= 0) close(t->fd);
    if (t->path) unlink(t->path), common_free(t->path); // only a file this tier created
    common_free(t);
}

int kv_tier_append(KVTier *t, int layer, int pos, const float *k, const float *v, char *err) {
    int i = pos / t->B, r = pos % t->B, HD = t->HD;
    CHECK(layer >= 0 && layer < t->L && pos < t->seq->n_tokens && i < t->max_blocks);
    LOCK(t);
    t->tick = (long)pos * t->L + layer, t->in_attend = 1;
    int s = t->tail_slot[layer], kind;
    if (s < 0 || t->slots[s].block != i) { // a new tail block, pinned; the old one stays as an ordinary unit
        if (s >= 0) t->slots[s].tail = 0;
        s = t->tail_slot[layer] = load(t, i, layer, r != 0, &kind); // copied only after a prefill mid-block
        t->slots[s].tail = 1;
        if (t->fd >= 0) t->in_file[i * t->L + layer] = 0; // rows go into the arena: the file's copy is stale
    }
    t->slots[s].last_use = t->tick, t->slots[s].stamp = ++t->clock;
    int rc = io_status(t, err);
    UNLOCK(t);
    float *K = slot_k(t, s), *V = K + t->unit; // pinned: only this thread touches it
    for (int g = 0; g < t->NKV; g++) {
        memcpy(K + ((size_t)g * t->B + r) * HD, k + g * HD, HD * sizeof(float));
        memcpy(V + ((size_t)g * t->B + r) * HD, v + g * HD, HD * sizeof(float));
        bound_row(t, pos, layer, g, k + g * HD);
    }
    return rc;
}

// Quest's bound on a block's attention score: max over query heads of sum_c max(q_c kmin_c, q_c kmax_c).
static float quest_score(const KVTier *t, int i, int layer, const float *q, int NH) {
    float best = -INFINITY;
    for (int h = 0; h < NH; h++) {
        size_t o = (((size_t)i * t->L + layer) * t->NKV + h / (NH / t->NKV)) * t->HD;
        const float *qh = q + (size_t)h * t->HD;
        float s = 0.0f;
        for (int d = 0; d < t->HD; d++) s += fmaxf(qh[d] * t->kmin[o + d], qh[d] * t->kmax[o + d]);
        best = fmaxf(best, s);
    }
    return best;
}

// Fills sel with the n largest of key[0..count) (ties: the newer block), largest first; clobbers key.
static void top_n(int *sel, float *key, int count, int n) {
    for (int j = 0; j < n; j++) {
        int best = -1;
        for (int i = count - 1; i >= 0; i--)
            if (key[i] != -INFINITY && (best < 0 || key[i] > key[best])) best = i;
        sel[j] = best, key[best] = -INFINITY;
    }
}

// Queues the next layer's prefetch (under mu): the blocks whose rows of that layer are all written (never
// one main may still write), best first by that layer's attention mass at its last step; top_k of them.
static void post_plan(KVTier *t, int layer, int Tc) {
    int nl = (layer + 1) % t->L, nfull = (nl > layer ? Tc - 1 : Tc) / t->B; // nl > layer: pos not written yet
    int n = t->cfg.top_k > 0 && t->cfg.top_k < nfull ? t->cfg.top_k : nfull;
    for (int i = 0; i < nfull; i++) t->rank[i] = t->mass[(size_t)nl * t->max_blocks + i];
    top_n(t->order, t->rank, nfull, n);
    for (int j = 0; j < n; j++) t->queue[j] = (KVTierReq){t->order[j], t->seq->table[t->order[j]], nl, t->tick + 1};
    t->q_head = 0, t->q_len = n;
    CHECK(pthread_cond_broadcast(&t->cv) == 0);
}

// The next block of sel to read (under mu): the tail or a landed unit first, then one still on the link,
// then an absent one, so transfers overlap the arithmetic on what is there. Returns its index in sel.
static int pick_next(const KVTier *t, int layer, int tail) {
    int best = -1, best_rank = 3;
    double now = common_now();
    for (int j = 0, i, v, rank; j < t->n_sel && best_rank > 0; j++)
        if (t->isread[i = t->sel[j]] != 2) {
            v = t->where[i * t->L + layer];
            int landed = v >= 0 && t->slots[v].state == KV_SLOT_READY && t->slots[v].ready_at <= now;
            rank = i == tail || landed ? 0 : v < 0 ? 2 : 1;
            if (rank < best_rank) best = j, best_rank = rank;
        }
    return best;
}

// One unit's part of every head's softmax (split-K, as flash-decoding): raw scores into att (the same sgemv
// as attention_decode_paged), and the block's max, sum of exponentials and exponential-weighted sum of
// values, in double so that combining parts adds no rounding of its own.
static void attend_unit(KVTier *t, int v, int i, int j, float *att, const float *q, int NH, int Tc) {
    int B = t->B, HD = t->HD, rows = Tc - i * B < B ? Tc - i * B : B, rep = NH / t->NKV;
    const float *K = slot_k(t, v), *V = K + t->unit;
    float scale = 1.0f / sqrtf((float)HD);
    for (int h = 0; h < NH; h++) {
        size_t go = (size_t)(h / rep) * B * HD, ph = (size_t)j * NH + h;
        float *s = att + (size_t)h * Tc + (size_t)i * B, mx = -INFINITY;
        double z = 0.0, *acc = memset(t->pacc + ph * HD, 0, (size_t)HD * sizeof(double));
        cblas_sgemv(CblasRowMajor, CblasNoTrans, rows, HD, scale, K + go, HD, q + h * HD, 1, 0.0f, s, 1);
        for (int r = 0; r < rows; r++) mx = fmaxf(mx, s[r]);
        for (int r = 0; r < rows; r++) {
            double e = exp((double)s[r] - mx);
            z += e;
            for (int d = 0; d < HD; d++) acc[d] += e * V[go + (size_t)r * HD + d];
        }
        t->pm[ph] = mx, t->pz[ph] = z;
    }
}

int kv_tier_attend(KVTier *t, float *out, float *att, const float *q, int layer, int NH, char *err) {
    int Tc = t->seq->n_tokens, B = t->B, HD = t->HD, N = (Tc + B - 1) / B, tail = N - 1, n = N - 1;
    CHECK(Tc > 0 && N <= t->max_blocks && NH % t->NKV == 0 && layer >= 0 && layer < t->L);
    if (NH > t->nh_cap) { // partial softmax state for NH heads
        size_t np = (size_t)t->max_blocks * NH;
        common_free(t->pm);
        t->pm = common_calloc(np * (2 + HD), sizeof(double)), t->pz = t->pm + np, t->pacc = t->pz + np, t->nh_cap = NH;
    }
    // which blocks, in block order: every one, or the top_k by Quest's bound; the tail always
    int skip = t->cfg.top_k > 0 && t->cfg.top_k < n;
    for (int i = 0; skip && i < n; i++) t->rank[i] = quest_score(t, i, layer, q, NH);
    if (skip) top_n(t->order, t->rank, n, t->cfg.top_k); // the chosen ones' rank is now -inf
    memset(t->isread, 0, (size_t)t->max_blocks), t->n_sel = 0;
    for (int i = 0; i < n; i++)
        if (!skip || t->rank[i] == -INFINITY) t->sel[t->n_sel++] = i, t->isread[i] = 1;
    t->sel[t->n_sel++] = tail, t->isread[tail] = 1, n = t->n_sel - 1;
    LOCK(t);
    t->tick = (long)(Tc - 1) * t->L + layer, t->in_attend = 1;
    CHECK(t->tail_slot[layer] >= 0 && t->slots[t->tail_slot[layer]].block == tail); // kv_tier_append first
    t->st.skipped += N - 1 - n;
    for (int left = t->n_sel; left > 0; left--) {
        int j = pick_next(t, layer, tail), i = t->sel[j], v = t->tail_slot[layer], kind = 0;
        if (i != tail) {
            v = load(t, i, layer, 1, &kind);
            KVTierSlot *s = &t->slots[v];
            s->reading = 1, s->last_use = t->tick, s->stamp = ++t->clock;
            if (s->prefetched) s->prefetched = 0, t->st.prefetch_used++;
            t->st.reads++, t->st.hits += kind == 0, t->st.late += kind == 1, t->st.misses += kind == 2;
        }
        t->isread[i] = 2;
        UNLOCK(t);
        attend_unit(t, v, i, j, att, q, NH, Tc); // v is pinned: no other thread touches it
        LOCK(t);
        if (i != tail) t->slots[v].reading = 0;
    }
    UNLOCK(t);
    // combine the parts in block order (the result never depends on which transfer landed first), then the
    // probabilities (0 for skipped rows) and each block's mass for the predictor
    float *mass = memset(t->mass + (size_t)layer * t->max_blocks, 0, (size_t)N * sizeof(float));
    for (int h = 0; h < NH; h++) {
        double M = -INFINITY, Z = 0.0, o[HD];
        memset(o, 0, sizeof(o));
        for (int j = 0; j < t->n_sel; j++) M = fmax(M, t->pm[(size_t)j * NH + h]);
        for (int j = 0; j < t->n_sel; j++) {
            size_t ph = (size_t)j * NH + h;
            double f = exp(t->pm[ph] - M);
            Z += f * t->pz[ph];
            for (int d = 0; d < HD; d++) o[d] += f * t->pacc[ph * HD + d];
        }
        for (int d = 0; d < HD; d++) out[h * HD + d] = (float)(o[d] / Z);
        for (int i = 0; i < N; i++) {
            float *p = att + (size_t)h * Tc + (size_t)i * B;
            for (int r = 0; r < B && i * B + r < Tc; r++) {
                p[r] = t->isread[i] ? (float)(exp((double)p[r] - M) / Z) : 0.0f;
                mass[i] += p[r] / NH;
            }
        }
    }
    LOCK(t);
    t->in_attend = 0;
    if (t->has_worker) post_plan(t, layer, Tc);
    int rc = io_status(t, err);
    UNLOCK(t);
    return rc;
}

int kv_tier_read_blocks(const KVTier *t, const int **blocks) { return *blocks = t->sel, t->n_sel; }

void kv_tier_drain(KVTier *t) {
    LOCK(t);
    while (t->has_worker && (t->q_head < t->q_len || t->busy)) CHECK(pthread_cond_wait(&t->cv, &t->mu) == 0);
    double until = t->link_free;
    UNLOCK(t);
    while (common_now() < until) continue;
}

void kv_tier_stats(KVTier *t, KVTierStats *st) {
    LOCK(t);
    *st = t->st;
    UNLOCK(t);
    st->fast_blocks = t->fast, st->unit_bytes = unit_bytes(t);
    st->file_bytes = t->fd >= 0 ? (size_t)t->pool->n_blocks * t->L * unit_bytes(t) : 0;
    st->bytes = sizeof(KVTier) + (size_t)t->n_slots * (unit_bytes(t) + sizeof(KVTierSlot)) + t->L * sizeof(int) +
                (size_t)t->max_blocks * t->L * (2 * t->NKV * t->HD * sizeof(float) + sizeof(int) + sizeof(float) + 1);
}

void kv_tier_reset_stats(KVTier *t) {
    LOCK(t);
    memset(&t->st, 0, sizeof(t->st));
    for (int i = 0; i < t->n_slots; i++) t->slots[i].prefetched = 0; // not a prefetch of these stats
    UNLOCK(t);
}

int kv_tier_parse_mode(KVTierConfig *cfg, const char *text, char *err) {
    static const char *names[] = {"resident", "reactive", "predictive"};
    for (int i = 0; i < 3; i++)
        if (strcmp(text, names[i]) == 0) return cfg->mode = (KVTierMode)i, cfg->top_k = 0, 0;
    if (strncmp(text, "skip:", 5) == 0) {
        char *end;
        long k = strtol(text + 5, &end, 10);
        if (text[5] >= '0' && text[5] <= '9' && *end == 0 && k >= 1 && k <= 1 << 20)
            return cfg->mode = KV_TIER_PREDICTIVE, cfg->top_k = (int)k, 0;
    }
    err_set(err, "--prefetch: bad mode '%s' (valid: resident | reactive | predictive | skip:K with K >= 1)", text);
    return -1;
}

const char *kv_tier_mode_name(const KVTierConfig *cfg, char *buf) {
    static const char *names[] = {"resident", "reactive", "predictive"};
    if (cfg->top_k > 0 && cfg->mode == KV_TIER_PREDICTIVE) snprintf(buf, 32, "skip:%d", cfg->top_k);
    else if (cfg->top_k > 0) snprintf(buf, 32, "%s+skip:%d", names[cfg->mode], cfg->top_k);
    else snprintf(buf, 32, "%s", names[cfg->mode]);
    return buf;
}
