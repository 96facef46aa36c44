// build/serve's HTTP side on libmicrohttpd (a thread per connection, so handlers may block) and jansson:
// routing, request validation (every bad input is a 4xx JSON error and the server keeps serving), and the
// responses, whole or streamed as server-sent events. Handlers hand validated requests to the engine
// (engine.c) and wait on its condition variable; nothing here touches the model or the KV pool.
#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <microhttpd.h>
#include <sys/socket.h>

#include "../kv/codec.h"
#include "../kv/policy.h"
#include "serve.h"
#include "../data/pretok.h"

typedef struct {
    Engine *e;
    size_t max_body;
    const char *model;
    const TenantAuth *auth;
    unsigned conn_timeout;
} Http;

typedef struct { // one request on a connection
    char *body;
    size_t len;
    int too_big;
    size_t dropped; // body bytes read and dropped past max_body; the connection is closed past max_body more
} Upload;

enum { DISCONNECT_POLL_MS = 50 }; // how often a handler waiting for its request looks at the client's socket

static Http http; // one server per process

// --- responses ---------------------------------------------------------------------------------------------

static enum MHD_Result send_text(struct MHD_Connection *c, int status, char *text, const char *type) {
    struct MHD_Response *resp = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
    MHD_add_response_header(resp, "Content-Type", type);
    if (status == 405) MHD_add_response_header(resp, "Allow", "GET, POST");
    enum MHD_Result rc = MHD_queue_response(c, (unsigned)status, resp);
    MHD_destroy_response(resp);
    engine_count_status(http.e, status);
    return rc;
}

static enum MHD_Result send_json(struct MHD_Connection *c, int status, json_t *obj) { // steals obj
    char *text = json_dumps(obj, JSON_COMPACT);
    json_decref(obj);
    CHECK(text);
    return send_text(c, status, text, "application/json");
}

// Output bytes as a JSON string: UTF-8 when they are, else each byte as the code point of the same value.
static json_t *text_json(const char *s, size_t n) {
    json_t *j = json_stringn(s, n);
    if (j) return j;
    // Not UTF-8 (a random model's byte tokens, a character cut by the end of generation): each invalid byte
    // becomes U+FFFD (utf8_fix); the rule is local, so the streamed events' pieces map as the whole text does.
    char *u = common_calloc(3 * n + 1, 1);
    size_t k = utf8_fix((const unsigned char *)s, n, u);
    j = json_stringn(u, k);
    common_free(u);
    return j;
}

// An error answer. The message may quote request bytes that are not UTF-8 (a cut character, a spec, a URL):
// they go through text_json, so the answer is always valid JSON and never NULL.
static json_t *error_json(const char *msg) {
    return json_pack("{s:{s:o, s:s}}", "error", "message", text_json(msg, strlen(msg)), "type",
                     "invalid_request_error");
}

__attribute__((format(printf, 3, 4))) static enum MHD_Result send_error(struct MHD_Connection *c, int status,
                                                                        const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return send_json(c, status, error_json(msg));
}


// --- requests ------------------------------------------------------------------------------------------------

// The caller's tenant (serve/tenant.c): its bearer key, X-Tenant when a gateway sets it, or "default".
static int tenant_of(struct MHD_Connection *c, char *out, char *err) {
    const char *auth = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    const char *t = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Tenant");
    return tenant_identify(http.auth, auth, t, out, err);
}

static int get_number(json_t *root, const char *key, double lo, double hi, double *out, char *err) {
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_number(v)) return err_set(err, "'%s' must be a number", key), -1;
    double x = json_number_value(v);
    if (!(x >= lo && x <= hi)) return err_set(err, "'%s' must be in [%g, %g], got %g", key, lo, hi, x), -1;
    *out = x;
    return 0;
}

static int get_int(json_t *root, const char *key, long long lo, long long hi, long long *out, char *err) {
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_integer(v)) return err_set(err, "'%s' must be an integer", key), -1;
    long long x = json_integer_value(v);
    if (x < lo || x > hi) return err_set(err, "'%s' must be in [%lld, %lld], got %lld", key, lo, hi, x), -1;
    *out = x;
    return 0;
}

typedef struct {
    ReuseMethod method;
    float threshold, min_overlap;
} ReuseAsk;

// The request's "kv": "full" (a private cache), or a spec over the server's pool, SELECT+paged:B with the
// server's block size, the pool's row format (or none) and a selection the pool applies to whole blocks.
static int get_kv(json_t *kv, int *private_cache, KVSeqPolicy *policy, char *err) {
    char paged[32];
    snprintf(paged, sizeof paged, "paged:%d", http.e->block);
    if (!json_is_string(kv))
        return err_set(err, "'kv' must be a string: \"full\", \"%s\" or \"SELECT+%s\"", paged, paged), -1;
    const char *text = json_string_value(kv);
    if (strcmp(text, "full") == 0) return *private_cache = 1, 0;
    KVSpec spec;
    char why[ERR_LEN];
    if (json_string_length(kv) >= 64 || kv_spec_parse(&spec, text, why) != 0 || !spec.paged_block) {
        char forms[256];
        kv_policy_block_forms(forms, sizeof(forms));
        return err_set(err, "unsupported kv spec '%.64s': this server accepts \"full\" (a private cache, no reuse) "
                       "or its shared pool, \"%s\", with an optional selection: %s, e.g. \"window:64+%s\"", text,
                       paged, forms, paged), -1;
    }
    if (spec.paged_block != http.e->block)
        return err_set(err, "kv '%.64s': this server's pool has blocks of %d tokens (\"%s\")", text, http.e->block,
                       paged), -1;
    const KVPool *pool = http.e->pool; // a format term, if any, must be the pool's
    if (spec.codec_named && (spec.codec != pool->codec || kv_codec_group(&spec, pool->head_dim) != pool->group))
        return err_set(err, "kv '%.64s': this server's pool holds %s rows (--kv-format)", text, http.e->kv_format), -1;
    if (kv_paged_policy(policy, &spec, why) != 0) return err_set(err, "%s", why), -1;
    return 0;
}

// The reuse fields of a /v1/generate body: "reuse" (default "prefix", or "none" with kv "full", which takes
// nothing else) and, for lsh/semshare only, "threshold" (cosine, (0, 1]) and "min_overlap" ([0, 1]), each
// defaulting to the store's. -1 with a 400 message.
static int get_reuse(json_t *root, int private_cache, ReuseAsk *a, char *err) {
    KVReuseStoreConfig dflt;
    kv_reuse_store_config_default(&dflt);
    *a = (ReuseAsk){private_cache ? REUSE_NONE : REUSE_PREFIX, dflt.threshold, dflt.min_overlap};
    json_t *v = json_object_get(root, "reuse");
    if (v && !json_is_null(v)) {
        if (!json_is_string(v))
            return err_set(err, "'reuse' must be a string: \"prefix\", \"lsh\", \"semshare\" or \"none\""), -1;
        int m = 0;
        while (m < REUSE_METHODS && strcmp(json_string_value(v), reuse_method_names[m]) != 0) m++;
        if (m == REUSE_METHODS)
            return err_set(err, "unsupported reuse '%.64s': valid methods are prefix, lsh, semshare, none",
                           json_string_value(v)), -1;
        if (private_cache && m != REUSE_NONE)
            return err_set(err, "kv \"full\" is a private cache: it takes reuse \"none\" only, not \"%s\"",
                           reuse_method_names[m]), -1;
        a->method = (ReuseMethod)m;
    }
    const char *knobs[2] = {"threshold", "min_overlap"};
    for (int i = 0; i < 2; i++) {
        json_t *k = json_object_get(root, knobs[i]);
        if (k && !json_is_null(k) && a->method != REUSE_LSH && a->method != REUSE_SEMSHARE)
            return err_set(err, "'%s' applies to reuse \"lsh\" or \"semshare\" only, not \"%s\"", knobs[i],
                           reuse_method_names[a->method]), -1;
    }
    json_t *t = json_object_get(root, "threshold");
    if (t && !json_is_null(t)) { // (0, 1]: get_number takes closed ranges only
        if (!json_is_number(t)) return err_set(err, "'threshold' must be a number"), -1;
        double x = json_number_value(t);
        if (!(x > 0 && x <= 1)) return err_set(err, "'threshold' must be in (0, 1], got %g", x), -1;
        a->threshold = (float)x;
    }
    double overlap = a->min_overlap;
    if (get_number(root, "min_overlap", 0, 1, &overlap, err) != 0) return -1;
    a->min_overlap = (float)overlap;
    return 0;
}

// Validates a completion body into a new Req; NULL with a 400 message. Unknown fields are ignored (OpenAI
// clients send model, user, n, ...).
static Req *parse_completion(const Upload *u, int generate, const char *tenant, int *stream, char *err) {
    Engine *e = http.e;
    json_error_t je;
    json_t *root = json_loadb(u->body ? u->body : "", u->len, 0, &je);
    if (!root) return err_set(err, "malformed JSON: %s (line %d, column %d)", je.text, je.line, je.column), NULL;
    Req *r = NULL;
    int *ids = NULL; // the prompt's tokens
    json_t *p = json_object_get(root, "prompt"), *st = json_object_get(root, "stream");
    double temperature = 1.0, top_p = 1.0;
    long long max_tokens = -1, top_k = 0, seed = 1337;
    if (!json_is_object(root)) err_set(err, "the body must be a JSON object");
    else if (!p) err_set(err, "'prompt' is required");
    else if (!json_is_string(p)) err_set(err, "'prompt' must be a string");
    else if (json_string_length(p) == 0) err_set(err, "'prompt' is empty: give at least one character");
    else if (st && !json_is_boolean(st) && !json_is_null(st)) err_set(err, "'stream' must be true or false");
    else if (get_int(root, "max_tokens", 1, e->max_tokens, &max_tokens, err) ||
             get_number(root, "temperature", 0, 100, &temperature, err) ||
             get_number(root, "top_p", 1e-6, 1, &top_p, err) || get_int(root, "top_k", 0, 1 << 20, &top_k, err) ||
             get_int(root, "seed", 0, INT64_MAX, &seed, err)) {
    } else {
        const char *text = json_string_value(p);
        size_t n_bytes = json_string_length(p);
        long bad = tokenizer_find_oov(e->tok, (const unsigned char *)text, n_bytes);
        ids = common_calloc(n_bytes + 1, sizeof(int));
        size_t n = tokenizer_encode(e->tok, (const unsigned char *)text, n_bytes, ids, NULL);
        json_t *kv = json_object_get(root, "kv");
        int private_cache = 0;
        KVSeqPolicy policy = {0};
        ReuseAsk ask = {REUSE_PREFIX, 0, 0};
        if (generate && kv && !json_is_null(kv) && get_kv(kv, &private_cache, &policy, err) != 0) goto out;
        if (generate && get_reuse(root, private_cache, &ask, err) != 0) goto out;
        if (policy.policy && (ask.method == REUSE_LSH || ask.method == REUSE_SEMSHARE)) {
            err_set(err, "reuse \"%s\" stores whole prompts: it needs every block, so no selection in 'kv'",
                    reuse_method_names[ask.method]);
            goto out;
        }
        if (bad < 0 && n == 0) {
            err_set(err, "the prompt has no token the model knows (its bytes are all outside the vocabulary)");
        } else if (bad >= 0) {
            unsigned char ch = (unsigned char)text[bad];
            if (ch >= 32 && ch < 127) err_set(err, "prompt character '%c' (byte %ld) is not in the model's vocabulary", ch, bad);
            else err_set(err, "prompt byte 0x%02x (at %ld) is not in the model's vocabulary", ch, bad);
        } else if (n >= (size_t)e->context) {
            err_set(err, "the prompt has %zu tokens; the model's context is %d, so at most %d", n, e->context,
                    e->context - 1);
        } else {
            if (max_tokens < 0) max_tokens = (long long)e->context - (long long)n < 16 ? e->context - (long long)n : 16;
            int need = (int)(((long long)n + max_tokens + e->block - 1) / e->block);
            if ((long long)n + max_tokens > e->context)
                err_set(err, "prompt (%zu tokens) + max_tokens (%lld) exceeds the model's context of %d tokens", n,
                        max_tokens, e->context);
            else if (need > e->n_blocks)
                err_set(err, "prompt + max_tokens need %d KV blocks; the pool has %d", need, e->n_blocks);
            else {
                r = req_new((int)n, (int)max_tokens);
                memcpy(r->prompt, ids, n * sizeof(int));
                r->sc = (SampleConfig){.temperature = (float)temperature, .top_k = (int)top_k, .top_p = (float)top_p};
                r->seed = (uint64_t)seed;
                r->private_cache = private_cache;
                r->policy = policy;
                snprintf(r->kv, sizeof r->kv, "%s", kv && json_is_string(kv) ? json_string_value(kv) : "");
                snprintf(r->tenant, sizeof r->tenant, "%s", tenant); // its salt and scope: at admission
                *stream = json_is_true(st);
                r->reuse = ask.method, r->threshold = ask.threshold, r->min_overlap = ask.min_overlap;
            }
        }
    }
out:
    common_free(ids);
    json_decref(root);
    return r;
}

// The "reuse" report: what was reused and from where. reused_tokens: prompt tokens whose K/V the request did
// not compute (prefix blocks, or a hit's reference rows); recomputed_tokens: the rest (a semshare hit's
// partial layers counted as (token, layer) pairs / layers, rounded up).
static json_t *reuse_json(const Req *r) {
    int store = r->reuse == REUSE_LSH || r->reuse == REUSE_SEMSHARE;
    json_t *o = json_pack("{s:s, s:b}", "method", reuse_method_names[r->reuse], "hit", r->reuse_hit);
    json_object_set_new(o, "similarity", store && r->has_similarity ? json_real(r->similarity) : json_null());
    char ref[32];
    snprintf(ref, sizeof ref, "ref-%016llx", (unsigned long long)r->ref_hash);
    int hit = store && r->reuse_hit;
    json_object_set_new(o, "reference", hit ? json_string(ref) : json_null());
    json_object_set_new(o, "reference_tokens", hit ? json_integer(r->ref_tokens) : json_null());
    json_object_set_new(o, "reused_tokens", json_integer(r->reuse_reused));
    json_object_set_new(o, "recomputed_tokens", json_integer(r->n_prompt - r->reuse_reused));
    json_object_set_new(o, "scope", json_string(http.e->shared_reuse ? "shared" : "tenant"));
    return o;
}

static json_t *completion_json(const Req *r, int64_t id, int generate, const char *text, size_t n, int final) {
    json_t *choice = json_pack("{s:i, s:o, s:n}", "index", 0, "text", text_json(text, n), "logprobs");
    json_object_set_new(choice, "finish_reason", final ? json_string(r->stopped ? "stop" : "length") : json_null());
    char sid[32];
    snprintf(sid, sizeof sid, "cmpl-%lld", (long long)id);
    json_t *o = json_pack("{s:s, s:s, s:I, s:s, s:[o]}", "id", sid, "object", "text_completion", "created",
                          (json_int_t)time(NULL), "model", http.model, "choices", choice);
    if (!final) return o;
    json_object_set_new(o, "usage", json_pack("{s:i, s:i, s:i, s:{s:i}}", "prompt_tokens", r->n_prompt,
                                              "completion_tokens", r->n_out, "total_tokens", r->n_prompt + r->n_out,
                                              "prompt_tokens_details", "cached_tokens", r->reused));
    if (generate) {
        json_object_set_new(o, "cache", json_pack("{s:b, s:i, s:i, s:s, s:s}", "hit", r->reused > 0, "reused_tokens",
                                                  r->reused, "prompt_tokens", r->n_prompt, "scope", r->tenant, "kv",
                                                  r->private_cache ? "full" : r->kv[0] ? r->kv : "paged"));
        json_object_set_new(o, "reuse", reuse_json(r));
    }
    return o;
}

// The bytes of tokens ids[0..n) (a character each, or a BPE token's bytes) appended to *buf (*len, *cap).
static void tokens_append_text(const int *ids, int n, char **buf, size_t *len, size_t *cap) {
    for (int i = 0; i < n; i++) {
        size_t k;
        const unsigned char *b = tokenizer_token_bytes(http.e->tok, ids[i], &k);
        if (*len + k + 1 > *cap) {
            *cap = 2 * (*len + k + 1);
            *buf = realloc(*buf, *cap);
            CHECK(*buf);
        }
        if (k) memcpy(*buf + *len, b, k);
        *len += k;
    }
}

// --- streaming (server-sent events) -----------------------------------------------------------------------

typedef struct {
    Req *r;
    int64_t id;
    int generate, sent, finished;
    char *buf;
    size_t len, off, cap;
    char *pend;              // generated bytes not sent yet: an unfinished UTF-8 character
    size_t n_pend, cap_pend;
} Stream;

static void stream_event(Stream *s, json_t *obj) {
    char *j = json_dumps(obj, JSON_COMPACT);
    json_decref(obj);
    CHECK(j);
    size_t need = s->len + strlen(j) + 16;
    if (need > s->cap) {
        s->cap = need * 2;
        s->buf = realloc(s->buf, s->cap);
        CHECK(s->buf);
    }
    s->len += (size_t)sprintf(s->buf + s->len, "data: %s\n\n", j);
    free(j);
}

// An SSE comment: while a request waits (queued, or for the pool) the stream still sends something every
// half --conn-timeout, so the connection timeout closes only a client that stopped reading.
static void stream_keepalive(Stream *s) {
    if (s->len + 16 > s->cap) {
        s->cap = s->len + 16;
        s->buf = realloc(s->buf, s->cap);
        CHECK(s->buf);
    }
    s->len += (size_t)sprintf(s->buf + s->len, ": waiting\n\n");
}

static ssize_t stream_read(void *cls, uint64_t pos, char *out, size_t max) {
    Stream *s = cls;
    Engine *e = http.e;
    if (s->off == s->len) {
        if (s->finished) return MHD_CONTENT_READER_END_OF_STREAM;
        s->off = s->len = 0;
        if (!engine_wait(e, s->r, s->sent, (int)(http.conn_timeout * 1000 / 2))) {
            stream_keepalive(s);
            return stream_read(cls, pos, out, max);
        }
        pthread_mutex_lock(&e->mu);
        Req *r = s->r;
        int n = r->n_out, done = r->done;
        pthread_mutex_unlock(&e->mu); // out[sent..n) is final once published; the rest is read after done
        for (; s->sent < n; s->sent++) { // an event per token, its text whole characters only: a token that
                                         // ends inside a character waits for the next
            tokens_append_text(r->out + s->sent, 1, &s->pend, &s->n_pend, &s->cap_pend);
            size_t k = utf8_complete_prefix((const unsigned char *)s->pend, s->n_pend);
            if (k == 0) continue;
            stream_event(s, completion_json(r, s->id, s->generate, s->pend, k, 0));
            memmove(s->pend, s->pend + k, s->n_pend - k);
            s->n_pend -= k;
        }
        if (!done && s->len == 0) return stream_read(cls, pos, out, max); // every new byte held back: wait on
        if (done) {
            if (s->n_pend) stream_event(s, completion_json(r, s->id, s->generate, s->pend, s->n_pend, 0));
            s->n_pend = 0;
            stream_event(s, r->status == 200 ? completion_json(r, s->id, s->generate, "", 0, 1) : error_json(r->error));
            if (s->len + 16 > s->cap) s->buf = realloc(s->buf, s->cap = s->len + 16);
            CHECK(s->buf);
            s->len += (size_t)sprintf(s->buf + s->len, "data: [DONE]\n\n");
            s->finished = 1;
        }
    }
    size_t k = s->len - s->off < max ? s->len - s->off : max;
    memcpy(out, s->buf + s->off, k);
    s->off += k;
    return (ssize_t)k;
}

static void stream_free(void *cls) { // the response is done: finished, or the client went away (cancels)
    Stream *s = cls;
    engine_release(http.e, s->r);
    free(s->buf);
    free(s->pend);
    free(s);
}

// Whether the client closed its side (or reset the connection) while its request was running: what is left
// to read is an end of file or an error. Bytes waiting (a pipelined request) say nothing.
static int client_gone(struct MHD_Connection *c) {
    const union MHD_ConnectionInfo *info = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!info) return 0;
    char b;
    ssize_t n = recv(info->connect_fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n > 0) return 0;
    return n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

static enum MHD_Result completion(struct MHD_Connection *c, const Upload *u, int generate) {
    Engine *e = http.e;
    char err[ERR_LEN] = "", tenant[SERVE_TENANT_LEN + 1];
    if (tenant_of(c, tenant, err)) return send_error(c, 400, "%s", err);
    int stream = 0;
    Req *r = parse_completion(u, generate, tenant, &stream, err);
    if (!r) return send_error(c, 400, "%s", err);
    if (engine_submit(e, r)) {
        enum MHD_Result rc = send_error(c, r->status, "%s", r->error);
        req_free(r);
        return rc;
    }
    pthread_mutex_lock(&e->mu);
    int64_t id = ++e->next_id;
    pthread_mutex_unlock(&e->mu);
    if (stream) {
        Stream *s = calloc(1, sizeof(Stream));
        CHECK(s);
        s->r = r, s->id = id, s->generate = generate;
        struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_read, s, stream_free);
        MHD_add_response_header(resp, "Content-Type", "text/event-stream");
        MHD_add_response_header(resp, "Cache-Control", "no-cache");
        enum MHD_Result rc = MHD_queue_response(c, MHD_HTTP_OK, resp);
        MHD_destroy_response(resp);
        engine_count_status(e, 200);
        return rc;
    }
    // The engine works while this thread waits, so libmicrohttpd watches neither the socket nor the clock:
    // no timeout runs out meanwhile, and a client that goes away cancels the request, as a dropped stream does.
    MHD_set_connection_option(c, MHD_CONNECTION_OPTION_TIMEOUT, 0u);
    while (!engine_wait(e, r, -1, DISCONNECT_POLL_MS)) {
        if (client_gone(c)) {
            engine_release(e, r);
            return MHD_NO; // closes the connection
        }
    }
    MHD_set_connection_option(c, MHD_CONNECTION_OPTION_TIMEOUT, http.conn_timeout);
    enum MHD_Result rc;
    if (r->status == 200) {
        char *text = NULL;
        size_t len = 0, cap = 0;
        tokens_append_text(r->out, r->n_out, &text, &len, &cap);
        rc = send_json(c, 200, completion_json(r, id, generate, text ? text : "", len, 1));
        free(text);
    } else {
        rc = send_error(c, r->status, "%s", r->error);
    }
    engine_release(e, r);
    return rc;
}

// --- cache and server endpoints -----------------------------------------------------------------------------

// ?scope= of the cache endpoints: 0 for the caller's tenant (none, or "tenant"), 1 for "all" (the admin's
// global form), -1 after answering 400 or 403.
static int cache_scope(struct MHD_Connection *c, enum MHD_Result *rc) {
    const char *scope = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "scope");
    if (!scope || strcmp(scope, "tenant") == 0) return 0;
    if (strcmp(scope, "all") != 0) {
        *rc = send_error(c, 400, "unknown scope '%.32s': \"tenant\" (the caller's, the default) or \"all\" (admin)", scope);
        return -1;
    }
    const char *auth = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (tenant_is_admin(http.auth, auth)) return 1;
    if (!http.auth->admin_key)
        *rc = send_error(c, 403, "scope=all is disabled on this server (start it with --admin-key-file)");
    else *rc = send_error(c, 403, "scope=all takes the admin key (Authorization: Bearer ADMIN_KEY)");
    return -1;
}

static enum MHD_Result cache_stats(struct MHD_Connection *c) {
    char err[ERR_LEN], tenant[SERVE_TENANT_LEN + 1];
    enum MHD_Result rc = MHD_NO;
    int global = cache_scope(c, &rc);
    if (global < 0) return rc;
    if (global) return send_json(c, 200, stats_json(http.e, NULL));
    if (tenant_of(c, tenant, err)) return send_error(c, 400, "%s", err);
    return send_json(c, 200, stats_json(http.e, tenant));
}

// The caller's clear forgets its own cached prefixes and stored prompts; the admin's (scope=all) frees every
// block and entry at once.
static enum MHD_Result cache_clear(struct MHD_Connection *c) {
    char err[ERR_LEN], tenant[SERVE_TENANT_LEN + 1];
    enum MHD_Result rc = MHD_NO;
    int global = cache_scope(c, &rc);
    if (global < 0) return rc;
    if (global) {
        int64_t entries = 0;
        int64_t blocks = engine_clear(http.e, &entries);
        return send_json(c, 200, json_pack("{s:s, s:I, s:I}", "scope", "all", "cleared_blocks", (json_int_t)blocks,
                                           "cleared_reuse_entries", (json_int_t)entries));
    }
    if (tenant_of(c, tenant, err)) return send_error(c, 400, "%s", err);
    if (http.e->shared_reuse)
        return send_error(c, 403, "with --shared-reuse every tenant shares one cache: clearing it takes scope=all "
                                  "and the admin key");
    if (engine_clear_tenant(http.e, tenant) != 0)
        return send_error(c, 503, "too many tenants to record a clear (%d); ask the admin for scope=all", SERVE_MAX_TENANTS);
    return send_json(c, 200, json_pack("{s:s, s:b}", "scope", tenant, "cleared", 1));
}

static enum MHD_Result route(struct MHD_Connection *c, const char *url, const char *method, const Upload *u) {
    static const struct {
        const char *path, *method;
    } routes[] = {{"/health", "GET"},          {"/metrics", "GET"},           {"/v1/cache/stats", "GET"},
                  {"/v1/cache/clear", "POST"}, {"/v1/completions", "POST"}, {"/v1/generate", "POST"}};
    int i = 0, n = (int)(sizeof routes / sizeof routes[0]);
    while (i < n && strcmp(url, routes[i].path) != 0) i++;
    if (i == n) return send_error(c, 404, "no such endpoint: %.200s", url);
    if (strcmp(method, routes[i].method) != 0)
        return send_error(c, 405, "%s takes %s, not %.32s", routes[i].path, routes[i].method, method);
    if (u->too_big) return send_error(c, 413, "request body over the limit of %zu bytes", http.max_body);
    switch (i) {
    case 0: return send_json(c, 200, json_pack("{s:s, s:s}", "status", "ok", "model", http.model));
    case 1: return send_text(c, 200, metrics_text(http.e), "text/plain; version=0.0.4");
    case 2: return cache_stats(c);
    case 3: return cache_clear(c);
    default: return completion(c, u, i == 5);
    }
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *data, size_t *data_size, void **con_cls) {
    Upload *u = *con_cls;
    if (!u) { // headers are in: refuse a declared oversized body before reading it
        *con_cls = u = calloc(1, sizeof(Upload));
        CHECK(u);
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
        if (cl && strtoull(cl, NULL, 10) > http.max_body)
            return send_error(c, 413, "request body of %s bytes is over the limit of %zu", cl, http.max_body);
        return MHD_YES;
    }
    if (*data_size) { // a chunk of the body: keep at most max_body bytes, drop the rest
        if (u->too_big) u->dropped += *data_size;
        if (u->dropped > http.max_body) return MHD_NO; // a body without end (a chunk of 2^64-1): close
        if (!u->too_big && u->len + *data_size > http.max_body) {
            u->too_big = 1;
            free(u->body);
            u->body = NULL;
            u->len = 0;
        }
        if (!u->too_big) {
            u->body = realloc(u->body, u->len + *data_size + 1);
            CHECK(u->body);
            memcpy(u->body + u->len, data, *data_size);
            u->len += *data_size;
        }
        *data_size = 0;
        return MHD_YES;
    }
    return route(c, url, method, u);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe) {
    Upload *u = *con_cls;
    if (u) free(u->body), free(u);
    *con_cls = NULL;
}

struct MHD_Daemon *http_start(Engine *e, const HttpConfig *cfg, int *bound_port, char *err) {
    http = (Http){.e = e, .max_body = cfg->max_body, .model = cfg->model_name, .auth = cfg->auth,
                  .conn_timeout = cfg->conn_timeout};
    struct sockaddr_in a4 = {.sin_family = AF_INET, .sin_port = htons((uint16_t)cfg->port)};
    struct sockaddr_in6 a6 = {.sin6_family = AF_INET6, .sin6_port = htons((uint16_t)cfg->port)};
    struct sockaddr *addr = (struct sockaddr *)&a4;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION;
    if (inet_pton(AF_INET, cfg->host, &a4.sin_addr) != 1) {
        if (inet_pton(AF_INET6, cfg->host, &a6.sin6_addr) != 1) {
            err_set(err, "bad --host '%s': give an IPv4 or IPv6 address (e.g. 127.0.0.1, ::1)", cfg->host);
            return NULL;
        }
        addr = (struct sockaddr *)&a6;
        flags |= MHD_USE_IPv6;
    }
    // A connection that stays silent conn_timeout seconds while it sends (a request line that never ends,
    // a body that stops) is closed; one address holds at most max_conns_per_ip of the max_conns slots.
    struct MHD_Daemon *d = MHD_start_daemon(flags, (uint16_t)cfg->port, NULL, NULL, on_request, NULL,
                                            MHD_OPTION_SOCK_ADDR, addr, MHD_OPTION_NOTIFY_COMPLETED, on_completed,
                                            NULL, MHD_OPTION_CONNECTION_LIMIT, cfg->max_conns,
                                            MHD_OPTION_PER_IP_CONNECTION_LIMIT, cfg->max_conns_per_ip,
                                            MHD_OPTION_CONNECTION_TIMEOUT, cfg->conn_timeout, MHD_OPTION_END);
    if (!d) {
        err_set(err, "cannot listen on %s port %d (in use, or not an address of this machine)", cfg->host, cfg->port);
        return NULL;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    *bound_port = info ? info->port : cfg->port;
    return d;
}

void http_stop(struct MHD_Daemon *d) { MHD_stop_daemon(d); }
