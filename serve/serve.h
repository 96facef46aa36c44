// build/serve's shared state: the engine (one thread that owns the model, the paged KV pool and the decode
// state) and the requests HTTP handler threads hand it. Handlers never touch the model or the pool: they
// enqueue a Req, then wait on the engine's condition variable for its tokens. One mutex guards everything a
// handler can see (queue, request outputs, counters, a stats snapshot); the engine drops it while computing.
//
// Cross-request reuse (serve/reuse.c): besides the pool's exact prefix sharing, a request may ask for reuse
// "lsh" or "semshare": its prompt is looked up in a KVReuseStore of earlier prompts (kv/reuse.h) and, on a
// hit, prefilled from the reference's K/V before it joins the batched decode like any other request.
#ifndef KVLAB_SERVE_H
#define KVLAB_SERVE_H

#include <pthread.h>
#include <stdint.h>

#include "../data/tokenizer.h"
#include "../decode/sample.h"
#include "../kv/paged.h"
#include "../decode/reuse.h"
#include "../decode/step.h"

enum {
    SERVE_TENANT_LEN = 64,    // longest tenant name (X-Tenant header)
    SERVE_MAX_TENANTS = 1024, // tenants whose counters are kept (more are served, counted under "all" only)
    SERVE_MAX_ACTIVE = 64,    // requests advanced together each engine round
};

// A request's "reuse": the pool's exact prefix sharing, a store lookup (lsh, semshare), or nothing at all.
typedef enum { REUSE_PREFIX, REUSE_LSH, REUSE_SEMSHARE, REUSE_NONE, REUSE_METHODS } ReuseMethod;
extern const char *const reuse_method_names[REUSE_METHODS];

// Store lookups of reuse lsh/semshare requests (per tenant and in all).
typedef struct {
    int64_t lookups, hits, misses;
    int64_t rejected;          // candidates of the prompt's LSH bucket below the threshold or the n-gram overlap
    int64_t reused_tokens;     // prompt tokens of hits whose K/V came from the reference
    int64_t recomputed_tokens; // prompt tokens of hits computed again (through all layers, or the equivalent)
} ReuseCounters;

typedef struct {
    char name[SERVE_TENANT_LEN + 1];
    int64_t requests, prompt_tokens, query_blocks, hit_blocks, reused_tokens, hits;
    ReuseCounters reuse;
    int64_t epoch; // the tenant's clears: mixed into its salt and store scope, so a clear forgets what it cached
} Tenant;

// Tenancy (serve/tenant.c): who a request belongs to and the keyed hashes of its scopes.
enum { SERVE_SECRET_LEN = 192 }; // XXH3 secret bytes (at least XXH3_SECRET_SIZE_MIN)
typedef enum { TENANT_DOMAIN_KEY = 1, TENANT_DOMAIN_SALT, TENANT_DOMAIN_STORE } TenantDomain;
typedef struct {
    unsigned char secret[SERVE_SECRET_LEN]; // keys every tenant hash: /dev/urandom, or --scope-secret-file
    int trust_tenant_header;                // --trust-tenant-header: a gateway sets X-Tenant, so it names the tenant
    char *admin_key;                        // --admin-key-file's key; NULL: the global cache forms answer 403
} TenantAuth;
// The secret (from secret_file, or 192 bytes of /dev/urandom) and the admin key (admin_key_file may be NULL);
// -1 with a message.
int tenant_auth_init(TenantAuth *a, const char *secret_file, const char *admin_key_file, int trust_header, char *err);
void tenant_auth_free(TenantAuth *a);
// The caller's tenant (SERVE_TENANT_LEN + 1 bytes) from its headers, either may be NULL: a bearer key's
// key:HASH, else X-Tenant when trusted, else "default". -1 with a 400 message for a malformed trusted X-Tenant.
int tenant_identify(const TenantAuth *a, const char *authorization, const char *x_tenant, char *out, char *err);
// Whether authorization is "Bearer " + the admin key (0 when there is none).
int tenant_is_admin(const TenantAuth *a, const char *authorization);
// XXH3 of (domain, epoch, name) under the server secret: a key's name, a tenant's prefix salt or store scope.
uint64_t tenant_hash(const TenantAuth *a, uint64_t domain, uint64_t epoch, const char *name);

typedef struct Req {
    // set by the handler before enqueueing, read-only afterwards
    int *prompt;
    int n_prompt, max_tokens;
    SampleConfig sc;
    uint64_t seed;
    uint64_t salt;     // set at admission: the tenant's prefix salt (keyed, with its clear epoch)
    int private_cache; // kv "full": reuse "none" then (a salt of its own: it neither reuses nor is reused)
    KVSeqPolicy policy; // kv "SELECT+paged:B": the blocks its sequence keeps (full selection by default)
    char kv[64];       // the kv spec as asked (reported back)
    char tenant[SERVE_TENANT_LEN + 1];
    ReuseMethod reuse;
    float threshold, min_overlap; // lsh/semshare: what a stored prompt must reach to be reused
    uint64_t scope;               // set at admission: the store scope (the tenant's, or the shared one)
    // outputs, under Engine.mu
    int *out;         // (max_tokens) generated token ids
    int n_out;        // tokens of out produced so far
    int stopped;      // the model produced an end-of-text token (tokenizer_ends_text; finish_reason "stop"; not in out)
    int reused;       // prompt tokens taken from the pool (-1 until admitted)
    // reuse outputs, final before done
    int reuse_hit;        // lsh/semshare: the store had a reference; prefix: blocks were reused
    int reuse_reused;     // prompt tokens whose K/V this request did not compute (any method)
    int has_similarity;   // lsh/semshare: a candidate of the bucket was compared
    float similarity;     // its centred cosine: the reference's, or on a miss the best rejected one
    uint64_t ref_hash;    // XXH64 of the reference's tokens (hits)
    int ref_tokens;       // the reference's length (hits)
    int rejected;         // lsh/semshare: candidates of the bucket that fell short
    int done;         // finished (or failed)
    int status;       // 200, or the HTTP status of a failure
    char error[ERR_LEN]; // failure message
    int cancelled;    // set by the handler: the client went away
    int refs;         // handler + engine; the last release frees it
    struct Req *next; // queue link
    // engine-private
    KVSeq seq;
    Rng rng;
    int pos, last, reserved;
    int prepare;     // lsh/semshare: admitted, the lookup and the sequence's start are still to do
    int store_after; // lsh/semshare miss: its prompt's K/V goes into the store once the pool holds it all
} Req;

// build/serve's knobs the engine needs (serve/main.c's flags).
typedef struct {
    int block, n_blocks, max_tokens, max_queue;
    const char *kv_format; // --kv-format: the pool's rows, a codec term (kv/codec.h): fp32, fp16, int4, ...
    int shared_reuse;     // --shared-reuse: every tenant in one scope (prefix salt and reuse store)
    size_t reuse_budget;  // bytes the reuse store may hold
    const int *calib;     // tokens whose mean embedding centres the store's similarities; NULL = the
    size_t n_calib;       // vocabulary's mean embedding (every symbol once)
    const TenantAuth *auth; // the secret that keys tenants' salts and scopes (outlives the engine)
} EngineConfig;

// The default pool's budget of fp32 key/value rows (--pool-blocks overrides it).
#define SERVE_DEFAULT_POOL_BYTES (2.0 * 1024 * 1024 * 1024)

typedef struct {
    // fixed after engine_start
    const Model *model;
    const Tokenizer *tok;
    int block, n_blocks, max_tokens, max_queue, context;
    const char *kv_format; // the pool's row format (--kv-format)
    int shared_reuse;
    size_t reuse_budget;
    const TenantAuth *auth;
    // engine-private
    KVPool *pool;
    DecodeState db;                 // one row per active request, advanced together each round
    float *probs;
    int *idx;
    Req *active[SERVE_MAX_ACTIVE];
    int n_active, reserved_blocks;
    uint64_t private_salt;
    KVReuseStore *store;            // earlier prompts' K/V for reuse lsh/semshare (serve/reuse.c)
    KVReuseStoreConfig store_cfg;
    KVSemShareConfig semshare;
    KVReuseWork rw;                 // a hit's prefill; also the gather buffer of an insert
    int *map;                       // (context) semshare's token map
    float *row_k, *row_v;           // (n_kv_head * head_dim) one position's rows of one layer
    int64_t store_skipped;          // prompts too large for the store's budget
    pthread_t thread;
    // under mu
    pthread_mutex_t mu;
    pthread_cond_t work;     // engine waits: a request or a clear arrived, or stop
    pthread_cond_t progress; // handlers wait: tokens, completion, clear done
    Req *head, *tail;
    int queued, stopping, clear_pending;
    int64_t clear_epoch, cleared_blocks, cleared_entries;
    KVPagedStats snap; // pool stats after the last round
    KVReuseStats store_snap; // reuse store stats after the last round
    int64_t store_skipped_snap;
    ReuseCounters reuse; // all tenants
    Tenant *tenants;   // SERVE_MAX_TENANTS
    int n_tenants;
    int64_t tokens_generated, prompt_tokens, reused_tokens, next_id;
    int64_t status_counts[6]; // by serve_status_index
} Engine;

// Starts the engine thread over a loaded model; -1 with a message when the pool or the store cannot be made.
int engine_start(Engine *e, const Model *m, const Tokenizer *tok, const EngineConfig *cfg, char *err);
// Fails every queued and running request with 503, stops the thread and frees the model-side state.
void engine_stop(Engine *e);
// After engine_stop and once no handler can touch e (HTTP stopped): frees the rest.
void engine_free(Engine *e);
// Hands r to the engine (r->refs becomes 2); -1 with 503 and a message in r->error when the queue is full or
// the engine is stopping (r stays the caller's alone).
int engine_submit(Engine *e, Req *r);
// Drops the caller's reference (marks r cancelled if still running); frees r when the engine is done with it.
void engine_release(Engine *e, Req *r);
// Frees cached (unheld) blocks and empties the reuse store; waits until no request is running. Returns how
// many cached blocks it dropped; *entries (may be NULL): how many stored prompts.
int64_t engine_clear(Engine *e, int64_t *entries);
// The tenant's counters (copied) under mu; 0 when the tenant has none yet.
int engine_tenant(Engine *e, const char *name, Tenant *out);
// Forgets the tenant's cached prefixes and stored prompts: later requests get a new salt and store scope (the
// old blocks and entries age out, LRU). -1 when the tenant table is full.
int engine_clear_tenant(Engine *e, const char *name);
// Waits up to ms for r to finish, or (seen >= 0) to have more than `seen` output bytes; 1 when it did.
int engine_wait(Engine *e, const Req *r, int seen, int ms);
// A sequence salt no other sequence has (kv "full", reuse "none", reuse hits); engine thread only.
uint64_t serve_private_salt(Engine *e);
// Requests-by-status counters: the index of an HTTP status (200 400 404 405 413 other).
int serve_status_index(int status);
extern const int serve_status_codes[6];
void engine_count_status(Engine *e, int status);

// The reuse side of the engine (serve/reuse.c), all on the engine thread. reuse_init/reuse_free: the store,
// the work and their buffers. reuse_begin: an admitted lsh/semshare request's lookup and sequence start (on a
// hit its prompt but the last token is in the pool from the reference; on a miss it begins on the prefix
// pool like a prefix request); -1 with a message. reuse_insert: a miss's prompt K/V from the pool into the
// store. reuse_clear: empties the store, returning how many prompts it held. reuse_publish_locked: the
// store's stats into the snapshot handlers read.
int reuse_init(Engine *e, const EngineConfig *cfg, char *err);
void reuse_free(Engine *e);
int reuse_begin(Engine *e, Req *r, char *err);
void reuse_insert(Engine *e, Req *r);
int64_t reuse_clear(Engine *e);
void reuse_publish_locked(Engine *e);
// The request's counters once it has begun (its tenant's and all), under mu.
void reuse_account_locked(Engine *e, const Req *r, Tenant *t);

// A new request with room for its prompt and output.
Req *req_new(int n_prompt, int max_tokens);
void req_free(Req *r);

// Reports (serve/stats.c): the cache stats of one tenant (or all, tenant NULL) as a jansson object, and the
// Prometheus metrics text (malloc'd).
typedef struct json_t json_t;
json_t *stats_json(Engine *e, const char *tenant);
char *metrics_text(Engine *e);

// HTTP (serve/http.c): starts libmicrohttpd on host:port; the real port lands in *bound_port.
typedef struct {
    const char *host, *model_name;
    int port;
    size_t max_body;
    unsigned max_conns;        // connections at once (--max-conns)
    unsigned max_conns_per_ip; // of those, from one address (--max-conns-per-ip)
    unsigned conn_timeout;     // seconds a connection may stay silent while it sends (--conn-timeout)
    const TenantAuth *auth;
} HttpConfig;
struct MHD_Daemon;
struct MHD_Daemon *http_start(Engine *e, const HttpConfig *cfg, int *bound_port, char *err);
void http_stop(struct MHD_Daemon *d);

#endif
