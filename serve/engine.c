// The serving engine: one thread owns the model, the paged KV pool and the decode state, so no model or pool
// code ever runs on two threads. Each round it admits queued requests (kv_paged_begin: the prompt prefix the
// tenant already has in the pool is reused), then advances every active request by one token (a prompt token,
// or the last sampled one) in one batched pass (model_decode_batch_paged: the weights are read once per round
// for all of them; attention is per request, through its own block table) and publishes the sampled bytes.
// Requests stay independent: each has its own KVSeq and RNG, and its own row of the batch.
//
// Blocks are reserved at admission (ceil((prompt + max_tokens) / block) per request), so a running request
// never finds the pool empty: requests wait in the queue until their worst case fits.
//
// Requests with reuse "lsh" or "semshare" begin one step later, outside the lock (serve/reuse.c): the store
// lookup and, on a hit, the prefill from the reference, whose prompt K/V lands in the request's blocks (its
// reservation covers them like any prompt's); from then on they decode in the batch like the rest. A miss
// decodes its prompt in the batch and is stored once the pool holds all of it.
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "serve.h"

const int serve_status_codes[6] = {200, 400, 404, 405, 413, 0};

int serve_status_index(int status) {
    for (int i = 0; i < 5; i++)
        if (serve_status_codes[i] == status) return i;
    return 5;
}

void engine_count_status(Engine *e, int status) {
    pthread_mutex_lock(&e->mu);
    e->status_counts[serve_status_index(status)]++;
    pthread_mutex_unlock(&e->mu);
}

Req *req_new(int n_prompt, int max_tokens) {
    Req *r = common_calloc(1, sizeof(Req));
    r->prompt = common_calloc((size_t)n_prompt + 1, sizeof(int));
    r->out = common_calloc((size_t)max_tokens + 1, sizeof(int));
    r->n_prompt = n_prompt;
    r->max_tokens = max_tokens;
    r->reused = -1;
    r->status = 200;
    return r;
}

void req_free(Req *r) {
    if (!r) return;
    common_free(r->prompt);
    common_free(r->out);
    common_free(r);
}

// Drops one reference under mu; the last one frees.
static void unref_locked(Req *r) {
    if (--r->refs == 0) req_free(r);
}

static Tenant *tenant_locked(Engine *e, const char *name, int create) {
    for (int i = 0; i < e->n_tenants; i++)
        if (strcmp(e->tenants[i].name, name) == 0) return &e->tenants[i];
    if (!create || e->n_tenants == SERVE_MAX_TENANTS) return NULL;
    Tenant *t = &e->tenants[e->n_tenants++];
    memset(t, 0, sizeof(*t));
    snprintf(t->name, sizeof t->name, "%s", name);
    return t;
}

int engine_tenant(Engine *e, const char *name, Tenant *out) {
    pthread_mutex_lock(&e->mu);
    Tenant *t = tenant_locked(e, name, 0);
    if (t) *out = *t;
    pthread_mutex_unlock(&e->mu);
    return t != NULL;
}

int engine_clear_tenant(Engine *e, const char *name) {
    pthread_mutex_lock(&e->mu);
    Tenant *t = tenant_locked(e, name, 1);
    if (t) t->epoch++;
    pthread_mutex_unlock(&e->mu);
    return t ? 0 : -1;
}

// The request's prefix salt and store scope: keyed hashes of its tenant's name and clear epoch (of "" under
// --shared-reuse, no tenant's name: everyone's scope), so no client can name another tenant's scope.
static void scope_locked(Engine *e, Req *r) {
    const char *name = e->shared_reuse ? "" : r->tenant;
    const Tenant *t = e->shared_reuse ? NULL : tenant_locked(e, name, 0);
    uint64_t epoch = t ? (uint64_t)t->epoch : 0;
    r->salt = tenant_hash(e->auth, TENANT_DOMAIN_SALT, epoch, name);
    r->scope = tenant_hash(e->auth, TENANT_DOMAIN_STORE, epoch, name);
}

static void finish_locked(Engine *e, Req *r, int status, const char *msg) {
    if (r->reused >= 0) kv_paged_end(e->pool, &r->seq); // its blocks stay cached for later prompts
    e->reserved_blocks -= r->reserved;
    r->reserved = 0;
    if (status != 200) {
        r->status = status;
        snprintf(r->error, sizeof r->error, "%s", msg);
    }
    r->done = 1;
    unref_locked(r);
}

static int is_store_method(const Req *r) { return r->reuse == REUSE_LSH || r->reuse == REUSE_SEMSHARE; }

// A begun request's counters: the prefix pool's for the requests that looked their prompt up in it (prefix,
// and lsh/semshare misses), the store's for lsh/semshare.
static void account_locked(Engine *e, Req *r) {
    e->prompt_tokens += r->n_prompt;
    e->reused_tokens += r->reused;
    int pooled = r->reuse == REUSE_PREFIX || (is_store_method(r) && !r->reuse_hit);
    Tenant *t = (pooled || is_store_method(r)) ? tenant_locked(e, r->tenant, 1) : NULL;
    if (t && pooled) {
        t->requests++;
        t->prompt_tokens += r->n_prompt;
        t->query_blocks += (r->n_prompt - 1) / e->block;
        t->hit_blocks += r->reused / e->block;
        t->reused_tokens += r->reused;
        t->hits += r->reused > 0;
    }
    reuse_account_locked(e, r, t);
}

// Moves queued requests into the running set while their worst case fits the pool (blocks are reserved for
// prompt + max_tokens, whatever reuse saves: a hit's prompt is written into the pool too). Prefix and
// private requests begin here; lsh/semshare ones are marked to begin outside the lock (their lookup and a
// hit's prefill are model work).
static void admit_locked(Engine *e) {
    while (e->head && e->n_active < SERVE_MAX_ACTIVE) {
        Req *r = e->head;
        int need = (r->n_prompt + r->max_tokens + e->block - 1) / e->block;
        if (!r->cancelled && e->reserved_blocks + need > e->n_blocks) return; // FIFO: wait for room
        e->head = r->next;
        if (!e->head) e->tail = NULL;
        e->queued--;
        r->next = NULL;
        if (r->cancelled) {
            finish_locked(e, r, 499, "cancelled");
            continue;
        }
        r->seq = (KVSeq){0};
        r->reserved = need;
        e->reserved_blocks += need;
        rng_init(&r->rng, r->seed);
        scope_locked(e, r);
        e->active[e->n_active++] = r;
        if (is_store_method(r)) {
            r->prepare = 1;
            continue;
        }
        r->seq.salt = r->reuse == REUSE_NONE ? serve_private_salt(e) : r->salt;
        r->seq.policy = r->policy;
        char err[ERR_LEN];
        int reused = kv_paged_begin(e->pool, &r->seq, r->prompt, r->n_prompt, KV_PRIORITY_DEFAULT, err);
        if (reused < 0) {
            e->n_active--;
            finish_locked(e, r, 500, err);
            continue;
        }
        r->reused = r->pos = r->reuse_reused = reused;
        r->reuse_hit = reused > 0;
        account_locked(e, r);
    }
}

// Begins the admitted lsh/semshare requests of active[0..n), outside the lock: rc[i] 1 when begun, -1 on a
// failure (its message in errs[i]), 0 for the others.
static void prepare_all(Engine *e, int n, int *rc, char (*errs)[ERR_LEN]) {
    for (int i = 0; i < n; i++) {
        Req *r = e->active[i];
        rc[i] = r->prepare ? (reuse_begin(e, r, errs[i]) == 0 ? 1 : -1) : 0;
    }
}

// Under the lock again: counts the begun requests and finishes the failed ones.
static void settle_locked(Engine *e, int n, const int *rc, char (*errs)[ERR_LEN]) {
    int kept = 0;
    for (int i = 0; i < n; i++) {
        Req *r = e->active[i];
        if (rc[i] != 0) r->prepare = 0;
        if (rc[i] < 0) {
            finish_locked(e, r, 500, errs[i]);
            continue;
        }
        if (rc[i] > 0) account_locked(e, r);
        e->active[kept++] = r;
    }
    for (int i = n; i < e->n_active; i++) e->active[kept++] = e->active[i];
    e->n_active = kept;
}

// One batched pass advancing each of the n requests by a token: a prompt token, or the last sampled one.
// produced[i]: the sampled token, -1 while still in the prompt, -2 on an error (message in err).
static void step_all(Engine *e, Req **reqs, int n, int *produced, char (*errs)[ERR_LEN]) {
    KVSeq *seqs[SERVE_MAX_ACTIVE];
    int tokens[SERVE_MAX_ACTIVE], pos[SERVE_MAX_ACTIVE];
    for (int i = 0; i < n; i++) {
        Req *r = reqs[i];
        seqs[i] = &r->seq;
        tokens[i] = r->pos < r->n_prompt ? r->prompt[r->pos] : r->last;
        pos[i] = r->pos;
    }
    // blocks are reserved at admission, so the pool cannot run out here; if it ever did, fail the round
    char err[ERR_LEN];
    if (model_decode_batch_paged(e->model, &e->db, e->pool, seqs, tokens, pos, n, err) != 0) {
        for (int i = 0; i < n; i++) produced[i] = -2, memcpy(errs[i], err, ERR_LEN);
        return;
    }
    int V = e->model->cfg.vocab_size;
    for (int i = 0; i < n; i++) {
        Req *r = reqs[i];
        r->pos++;
        produced[i] = -1;
        if (r->store_after && r->pos == r->n_prompt) { // the pool now holds the whole prompt, every layer
            reuse_insert(e, r);
            r->store_after = 0;
        }
        if (r->pos < r->n_prompt) continue;
        r->last = sample_next(e->db.logits + (size_t)i * V, V, &r->sc, &r->rng, e->probs, e->idx);
        produced[i] = r->last;
    }
}

static void clear_locked(Engine *e) {
    KVPagedStats st;
    kv_pool_stats(e->pool, &st);
    KVPool *old = e->pool, *fresh;
    KVShape shape = decode_kv_shape(&e->model->cfg, e->context);
    char err[ERR_LEN];
    CHECK(kv_pool_init_format(&fresh, &shape, e->block, e->n_blocks, e->kv_format, err) == 0);
    fresh->requests = old->requests, fresh->query_blocks = old->query_blocks, fresh->hit_blocks = old->hit_blocks;
    fresh->prefill_saved = old->prefill_saved, fresh->evictions = old->evictions, fresh->cow = old->cow;
    kv_pool_free(old);
    e->pool = fresh;
    e->cleared_blocks = st.blocks_cached;
    e->cleared_entries = reuse_clear(e);
}

// The stats handlers read, after each change.
static void publish_locked(Engine *e) {
    kv_pool_stats(e->pool, &e->snap);
    reuse_publish_locked(e);
}

// Runs the lookups (and hits' prefills) of newly admitted lsh/semshare requests outside the lock; 0 when none
// are left running afterwards.
static int prepare_locked(Engine *e) {
    int n = e->n_active, pending = 0, rc[SERVE_MAX_ACTIVE];
    char errs[SERVE_MAX_ACTIVE][ERR_LEN];
    for (int i = 0; i < n; i++) pending |= e->active[i]->prepare;
    if (!pending) return n;
    pthread_mutex_unlock(&e->mu);
    prepare_all(e, n, rc, errs);
    pthread_mutex_lock(&e->mu);
    settle_locked(e, n, rc, errs);
    publish_locked(e);
    pthread_cond_broadcast(&e->progress);
    return e->n_active;
}

static void *engine_main(void *arg) {
    Engine *e = arg;
    int produced[SERVE_MAX_ACTIVE];
    char errs[SERVE_MAX_ACTIVE][ERR_LEN];
    pthread_mutex_lock(&e->mu);
    while (!e->stopping) {
        if (e->clear_pending && e->n_active == 0) {
            clear_locked(e);
            e->clear_pending = 0;
            e->clear_epoch++;
            publish_locked(e);
            pthread_cond_broadcast(&e->progress);
        }
        if (!e->clear_pending) admit_locked(e);
        if (e->n_active == 0) {
            pthread_cond_wait(&e->work, &e->mu);
            continue;
        }
        if (prepare_locked(e) == 0) continue;
        int n = e->n_active;
        pthread_mutex_unlock(&e->mu);
        step_all(e, e->active, n, produced, errs);
        pthread_mutex_lock(&e->mu);
        int kept = 0;
        for (int i = 0; i < n; i++) {
            Req *r = e->active[i];
            int eos = produced[i] >= 0 && tokenizer_ends_text(e->tok, produced[i]);
            if (produced[i] >= 0 && !eos) r->out[r->n_out++] = produced[i];
            if (produced[i] >= 0 && !eos) e->tokens_generated++;
            if (eos) r->stopped = 1;
            if (produced[i] == -2) finish_locked(e, r, 500, errs[i]);
            else if (eos) finish_locked(e, r, 200, NULL);
            else if (r->cancelled) finish_locked(e, r, 499, "cancelled");
            else if (r->n_out == r->max_tokens) finish_locked(e, r, 200, NULL);
            else e->active[kept++] = r;
        }
        for (int i = n; i < e->n_active; i++) e->active[kept++] = e->active[i]; // none today: admission is locked
        e->n_active = kept;
        publish_locked(e);
        pthread_cond_broadcast(&e->progress);
    }
    for (int i = 0; i < e->n_active; i++) finish_locked(e, e->active[i], 503, "server is shutting down");
    e->n_active = 0;
    while (e->head) {
        Req *r = e->head;
        e->head = r->next;
        finish_locked(e, r, 503, "server is shutting down");
    }
    e->tail = NULL;
    e->queued = 0;
    pthread_cond_broadcast(&e->progress);
    pthread_mutex_unlock(&e->mu);
    return NULL;
}

// The default pool: 16 contexts' worth of blocks, but no more than SERVE_DEFAULT_POOL_BYTES of fp32 rows (a
// pretrained model's 8k context would otherwise ask for gigabytes).
static int engine_default_blocks(const ModelConfig *c, int block) {
    int blocks = 16 * ((c->block_size + block - 1) / block);
    double row = (double)c->n_layer * 2 * model_kv_dim(c) * sizeof(float) * block;
    int cap = (int)(SERVE_DEFAULT_POOL_BYTES / row);
    return blocks < cap ? blocks : cap > 1 ? cap : 1;
}

int engine_start(Engine *e, const Model *m, const Tokenizer *tok, const EngineConfig *cfg, char *err) {
    memset(e, 0, sizeof(*e));
    const ModelConfig *c = &m->cfg;
    int block = cfg->block;
    e->model = m, e->tok = tok, e->block = block, e->max_tokens = cfg->max_tokens, e->max_queue = cfg->max_queue;
    e->shared_reuse = cfg->shared_reuse;
    e->reuse_budget = cfg->reuse_budget;
    e->auth = cfg->auth;
    e->context = c->block_size;
    e->n_blocks = cfg->n_blocks ? cfg->n_blocks : engine_default_blocks(c, block);
    KVShape shape = decode_kv_shape(c, c->block_size);
    e->kv_format = cfg->kv_format ? cfg->kv_format : "fp32";
    if (kv_pool_init_format(&e->pool, &shape, block, e->n_blocks, e->kv_format, err) != 0) return -1;
    if (reuse_init(e, cfg, err) != 0) {
        kv_pool_free(e->pool);
        reuse_free(e);
        return -1;
    }
    publish_locked(e); // no other thread yet
    decode_state_init(&e->db, c, SERVE_MAX_ACTIVE, c->block_size);
    e->probs = common_calloc(c->vocab_size, sizeof(float));
    e->idx = common_calloc(c->vocab_size, sizeof(int));
    e->tenants = common_calloc(SERVE_MAX_TENANTS, sizeof(Tenant));
    CHECK(pthread_mutex_init(&e->mu, NULL) == 0);
    CHECK(pthread_cond_init(&e->work, NULL) == 0);
    pthread_condattr_t ca; // handlers wait on progress with a timeout (engine_wait): a monotonic one
    CHECK(pthread_condattr_init(&ca) == 0);
    CHECK(pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) == 0);
    CHECK(pthread_cond_init(&e->progress, &ca) == 0);
    pthread_condattr_destroy(&ca);
    CHECK(pthread_create(&e->thread, NULL, engine_main, e) == 0);
    return 0;
}

void engine_stop(Engine *e) {
    pthread_mutex_lock(&e->mu);
    e->stopping = 1;
    pthread_cond_signal(&e->work);
    pthread_mutex_unlock(&e->mu);
    CHECK(pthread_join(e->thread, NULL) == 0);
    kv_pool_free(e->pool);
    e->pool = NULL;
    reuse_free(e);
    decode_state_free(&e->db);
    common_free(e->probs);
    common_free(e->idx);
}

void engine_free(Engine *e) {
    pthread_cond_destroy(&e->work);
    pthread_cond_destroy(&e->progress);
    pthread_mutex_destroy(&e->mu);
    common_free(e->tenants);
}

int engine_submit(Engine *e, Req *r) {
    pthread_mutex_lock(&e->mu);
    int rc = 0;
    if (e->stopping) {
        snprintf(r->error, sizeof r->error, "server is shutting down");
        rc = -1;
    } else if (e->queued >= e->max_queue) {
        snprintf(r->error, sizeof r->error, "server busy: %d requests already queued; retry later", e->queued);
        rc = -1;
    } else {
        r->refs = 2;
        r->next = NULL;
        if (e->tail) e->tail->next = r;
        else e->head = r;
        e->tail = r;
        e->queued++;
        pthread_cond_signal(&e->work);
    }
    if (rc) r->status = 503;
    pthread_mutex_unlock(&e->mu);
    return rc;
}

void engine_release(Engine *e, Req *r) {
    pthread_mutex_lock(&e->mu);
    if (!r->done) r->cancelled = 1;
    unref_locked(r);
    pthread_mutex_unlock(&e->mu);
}

int engine_wait(Engine *e, const Req *r, int seen, int ms) {
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += ms / 1000;
    until.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&e->mu);
    int rc = 0;
    while (!r->done && (seen < 0 || r->n_out == seen) && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&e->progress, &e->mu, &until);
    int ready = r->done || (seen >= 0 && r->n_out != seen);
    pthread_mutex_unlock(&e->mu);
    return ready;
}

int64_t engine_clear(Engine *e, int64_t *entries) {
    pthread_mutex_lock(&e->mu);
    int64_t epoch = e->clear_epoch;
    e->clear_pending = 1;
    pthread_cond_signal(&e->work);
    while (e->clear_epoch == epoch && !e->stopping) pthread_cond_wait(&e->progress, &e->mu);
    int64_t n = e->clear_epoch == epoch ? 0 : e->cleared_blocks;
    if (entries) *entries = e->clear_epoch == epoch ? 0 : e->cleared_entries;
    pthread_mutex_unlock(&e->mu);
    return n;
}
