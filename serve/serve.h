// build/serve's shared state: the engine (one thread that owns the model, the paged KV pool and the decode
// state) and the requests HTTP handler threads hand it. Handlers never touch the model or the pool: they
// enqueue a Req, then wait on the engine's condition variable for its tokens. One mutex guards everything a
// handler can see (queue, request outputs, counters, a stats snapshot); the engine drops it while computing.
#ifndef KVLAB_SERVE_H
#define KVLAB_SERVE_H

#include <pthread.h>
#include <stdint.h>

#include "../data/tokenizer.h"
#include "../infer/sample.h"
#include "../kv/paged.h"
#include "../layers/decode.h"

enum {
    SERVE_TENANT_LEN = 64,    // longest tenant name (X-Tenant header)
    SERVE_MAX_TENANTS = 1024, // tenants whose counters are kept (more are served, counted under "all" only)
    SERVE_MAX_ACTIVE = 64,    // requests advanced together each engine round
};

typedef struct {
    char name[SERVE_TENANT_LEN + 1];
    int64_t requests, prompt_tokens, query_blocks, hit_blocks, reused_tokens, hits;
} Tenant;

typedef struct Req {
    // set by the handler before enqueueing, read-only afterwards
    int *prompt;
    int n_prompt, max_tokens;
    SampleConfig sc;
    uint64_t seed, salt;
    int private_cache; // kv "full": a salt of its own, so it neither reuses nor is reused
    char tenant[SERVE_TENANT_LEN + 1];
    // outputs, under Engine.mu
    char *out;        // max_tokens + 1 bytes
    int n_out;        // bytes of out produced so far
    int reused;       // prompt tokens taken from the pool (-1 until admitted)
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
} Req;

typedef struct {
    // fixed after engine_start
    const Model *model;
    const Tokenizer *tok;
    int block, n_blocks, max_tokens, max_queue, context;
    // engine-private
    KVPool *pool;
    DecodeBatch db;                 // one row per active request, advanced together each round
    float *probs;
    int *idx;
    Req *active[SERVE_MAX_ACTIVE];
    int n_active, reserved_blocks;
    uint64_t private_salt;
    pthread_t thread;
    // under mu
    pthread_mutex_t mu;
    pthread_cond_t work;     // engine waits: a request or a clear arrived, or stop
    pthread_cond_t progress; // handlers wait: tokens, completion, clear done
    Req *head, *tail;
    int queued, stopping, clear_pending;
    int64_t clear_epoch, cleared_blocks;
    KVPagedStats snap; // pool stats after the last round
    Tenant *tenants;   // SERVE_MAX_TENANTS
    int n_tenants;
    int64_t tokens_generated, prompt_tokens, reused_tokens, next_id;
    int64_t status_counts[6]; // by serve_status_index
} Engine;

// Starts the engine thread over a loaded model; -1 with a message when the pool cannot be made.
int engine_start(Engine *e, const Model *m, const Tokenizer *tok, int block, int n_blocks, int max_tokens,
                 int max_queue, char *err);
// Fails every queued and running request with 503, stops the thread and frees the model-side state.
void engine_stop(Engine *e);
// After engine_stop and once no handler can touch e (HTTP stopped): frees the rest.
void engine_free(Engine *e);
// Hands r to the engine (r->refs becomes 2); -1 with 503 and a message in r->error when the queue is full or
// the engine is stopping (r stays the caller's alone).
int engine_submit(Engine *e, Req *r);
// Drops the caller's reference (marks r cancelled if still running); frees r when the engine is done with it.
void engine_release(Engine *e, Req *r);
// Frees cached (unheld) blocks; waits until no request is running. Returns how many cached blocks it dropped.
int64_t engine_clear(Engine *e);
// The tenant's counters (copied) under mu; 0 when the tenant has none yet.
int engine_tenant(Engine *e, const char *name, Tenant *out);
// Requests-by-status counters: the index of an HTTP status (200 400 404 405 413 other).
int serve_status_index(int status);
extern const int serve_status_codes[6];
void engine_count_status(Engine *e, int status);

// A new request with room for its prompt and output.
Req *req_new(int n_prompt, int max_tokens);
void req_free(Req *r);

// Reports (serve/stats.c): the cache stats of one tenant (or all, tenant NULL) as a jansson object, and the
// Prometheus metrics text (malloc'd).
typedef struct json_t json_t;
json_t *stats_json(Engine *e, const char *tenant);
char *metrics_text(Engine *e);

// HTTP (serve/http.c): starts libmicrohttpd on host:port; the real port lands in *bound_port.
struct MHD_Daemon;
struct MHD_Daemon *http_start(Engine *e, const char *host, int port, size_t max_body, const char *model_name,
                              int *bound_port, char *err);
void http_stop(struct MHD_Daemon *d);

#endif
