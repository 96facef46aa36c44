// build/serve: an HTTP server for a kvlab checkpoint (OpenAI-shaped completions, a per-tenant paged KV pool
// with prefix reuse, cross-request reuse of similar prompts (reuse lsh/semshare), cache stats, Prometheus
// metrics). The main thread parses flags, loads the model, starts
// the engine thread (engine.c) and libmicrohttpd (http.c), then sleeps in sigwait until SIGINT or SIGTERM and
// shuts everything down in order: engine first (fails what is still running, which wakes every handler),
// then the HTTP threads, then the memory.
#include <omp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../checkpoints/gguf.h"
#include "../common/args.h"
#include "../common/runtime.h"
#include "serve.h"

static const char *usage =
    "usage: build/serve --ckpt FILE [--host ADDR] [--port N] [flags]\n"
    "\n"
    "Serves a checkpoint or a GGUF model over HTTP: POST /v1/completions (OpenAI shape), POST /v1/generate (plus \"kv\",\n"
    "\"reuse\": prefix|lsh|semshare|none with \"threshold\" and \"min_overlap\", and \"cache\" and \"reuse\"\n"
    "reports), GET /v1/cache/stats, POST /v1/cache/clear, GET /health, GET /metrics (Prometheus).\n"
    "Tenants (Authorization: Bearer KEY, or X-Tenant with --trust-tenant-header, else one anonymous tenant)\n"
    "share no cached prefixes or stored prompts unless --shared-reuse.\n"
    "\n"
    "  --ckpt FILE        checkpoint written by build/train, or a GGUF llama model (--model FILE) (required)\n"
    "  --host ADDR        address to listen on                        [127.0.0.1]\n"
    "  --port N           TCP port; 0 = any free port (printed)        [8080]\n"
    "  --block B          KV pool block size in tokens                 [16]\n"
    "  --pool-blocks N    blocks in the KV pool    [16 contexts' worth, at most 2 GiB of fp32 rows]\n"
    "  --kv-format F      the pool's rows: fp32, fp16, fp8[:G], int8[:G], int4[:G] or int2[:G] (G: 32 or the head dim)  [fp32]\n"
    "  --max-tokens N     largest max_tokens a request may ask for     [1024]\n"
    "  --max-body BYTES   largest request body (413 above)             [1048576]\n"
    "  --max-queue N      requests waiting for the engine (503 above)  [64]\n"
    "  --threads N        OpenMP threads of the engine                 [OpenMP default]\n"
    "  --shared-reuse     one scope for all tenants: each reuses the others' cached prefixes and\n"
    "                     stored prompts (off: only its own)\n"
    "  --reuse-budget-mb N  memory of the reuse store (LRU eviction)  [64]\n"
    "  --reuse-calib FILE text whose mean embedding centres the store's similarities\n"
    "                     [the vocabulary's mean: then unrelated texts look alike]\n"
    "  --trust-tenant-header  X-Tenant names the tenant: only behind a gateway that sets it (without this\n"
    "                     flag X-Tenant is ignored: anyone could claim anyone's cache)\n"
    "  --scope-secret-file FILE  at least 16 random bytes that key the tenants' scopes (stable across\n"
    "                     restarts and servers)                    [192 bytes of /dev/urandom at start]\n"
    "  --admin-key-file FILE  the admin's bearer key (one line): opens ?scope=all of /v1/cache/stats and\n"
    "                     /v1/cache/clear                          [none: they answer 403]\n"
    "  --max-conns N      connections at once                          [256]\n"
    "  --max-conns-per-ip N  connections from one address              [32]\n"
    "  --conn-timeout S   seconds a connection may stay silent while it sends its request  [5]\n"
    "\n"
    "Stop with SIGINT or SIGTERM (clean shutdown, exit status 0).\n";

static int die(const char *msg) {
    fprintf(stderr, "serve: %s\n", msg);
    return 1;
}

typedef struct {
    const char *ckpt, *host, *reuse_calib, *kv_format, *scope_secret_file, *admin_key_file;
    int port, block, pool_blocks, max_tokens, max_body, max_queue, threads, shared_reuse, reuse_budget_mb;
    int trust_tenant_header, max_conns, max_conns_per_ip, conn_timeout;
} Flags;

static int parse_flags(Flags *f, int argc, char **argv, char *err) {
    *f = (Flags){.host = "127.0.0.1", .port = 8080, .block = 16, .max_tokens = 1024, .max_body = 1 << 20,
                 .max_queue = 64, .reuse_budget_mb = 64, .max_conns = 256, .max_conns_per_ip = 32,
                 .conn_timeout = 5};
    Args a;
    args_init(&a, argc, argv);
    int r;
    while ((r = args_next(&a)) > 0) {
        int rc = 0;
        if (args_is(&a, "--help") || args_is(&a, "-h")) {
            fputs(usage, stdout);
            exit(0);
        } else if (args_is(&a, "--ckpt") || args_is(&a, "--model")) rc = args_string(&a, &f->ckpt);
        else if (args_is(&a, "--host")) rc = args_string(&a, &f->host);
        else if (args_is(&a, "--port")) rc = args_int(&a, 0, 65535, &f->port);
        else if (args_is(&a, "--block")) rc = args_int(&a, 1, KV_BLOCK_MAX, &f->block);
        else if (args_is(&a, "--pool-blocks")) rc = args_int(&a, 1, 1 << 24, &f->pool_blocks);
        else if (args_is(&a, "--kv-format")) rc = args_string(&a, &f->kv_format);
        else if (args_is(&a, "--max-tokens")) rc = args_int(&a, 1, 1 << 20, &f->max_tokens);
        else if (args_is(&a, "--max-body")) rc = args_int(&a, 64, 1 << 30, &f->max_body);
        else if (args_is(&a, "--max-queue")) rc = args_int(&a, 1, 1 << 16, &f->max_queue);
        else if (args_is(&a, "--threads")) rc = args_int(&a, 1, 1024, &f->threads);
        else if (args_is(&a, "--shared-reuse")) f->shared_reuse = 1;
        else if (args_is(&a, "--reuse-budget-mb")) rc = args_int(&a, 1, 1 << 20, &f->reuse_budget_mb);
        else if (args_is(&a, "--reuse-calib")) rc = args_string(&a, &f->reuse_calib);
        else if (args_is(&a, "--trust-tenant-header")) f->trust_tenant_header = 1;
        else if (args_is(&a, "--scope-secret-file")) rc = args_string(&a, &f->scope_secret_file);
        else if (args_is(&a, "--admin-key-file")) rc = args_string(&a, &f->admin_key_file);
        else if (args_is(&a, "--max-conns")) rc = args_int(&a, 1, 1 << 16, &f->max_conns);
        else if (args_is(&a, "--max-conns-per-ip")) rc = args_int(&a, 1, 1 << 16, &f->max_conns_per_ip);
        else if (args_is(&a, "--conn-timeout")) rc = args_int(&a, 1, 3600, &f->conn_timeout);
        else {
            err_set(err, "unknown flag '%s' (see --help)", a.flag);
            return -1;
        }
        if (rc) return err_set(err, "%s", a.err), -1;
    }
    if (r < 0) return err_set(err, "%s", a.err), -1;
    if (!f->ckpt) return err_set(err, "--ckpt FILE is required (see --help)"), -1;
    if (f->max_conns_per_ip > f->max_conns) {
        err_set(err, "--max-conns-per-ip %d is over --max-conns %d", f->max_conns_per_ip, f->max_conns);
        return -1;
    }
    if (!f->kv_format) f->kv_format = "fp32";
    KVSpec fmt;
    char why[ERR_LEN];
    if (kv_pool_parse_format(&fmt, f->kv_format, why) != 0) return err_set(err, "--kv-format: %s", why), -1;
    return 0;
}

// --reuse-calib: the file's symbols the model knows, as token ids (*ids NULL without the flag).
static int load_calib(const char *path, const Tokenizer *tok, int **ids, size_t *n, char *err) {
    *ids = NULL, *n = 0;
    if (!path) return 0;
    size_t len;
    char why[ERR_LEN];
    unsigned char *text = common_read_file(path, &len, why);
    if (!text) return err_set(err, "--reuse-calib: %s", why), -1;
    *ids = common_calloc(len + 1, sizeof(int));
    *n = tokenizer_encode(tok, text, len, *ids, NULL);
    free(text);
    if (*n > 0) return 0;
    common_free(*ids);
    *ids = NULL;
    return err_set(err, "--reuse-calib '%s' holds no symbol of the model's vocabulary", path), -1;
}

int main(int argc, char **argv) {
    common_runtime_init(argc, argv);
    char err[ERR_LEN];
    Flags f;
    if (parse_flags(&f, argc, argv, err) != 0) return die(err);
    if (f.threads) omp_set_num_threads(f.threads);
    TenantAuth auth;
    if (tenant_auth_init(&auth, f.scope_secret_file, f.admin_key_file, f.trust_tenant_header, err) != 0) {
        tenant_auth_free(&auth);
        return die(err);
    }
    Model m;
    Tokenizer tok;
    if (gguf_or_checkpoint_load(f.ckpt, &m, &ops_cpu, &tok, err) != 0) {
        tenant_auth_free(&auth);
        return die(err);
    }
    // Signals are taken by sigwait below: block them before any thread exists, so every thread inherits that.
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    CHECK(pthread_sigmask(SIG_BLOCK, &stop, NULL) == 0);
    signal(SIGPIPE, SIG_IGN);
    int *calib;
    size_t n_calib;
    if (load_calib(f.reuse_calib, &tok, &calib, &n_calib, err) != 0) {
        model_free(&m);
        tokenizer_free(&tok);
        tenant_auth_free(&auth);
        return die(err);
    }
    EngineConfig ec = {.block = f.block, .n_blocks = f.pool_blocks, .kv_format = f.kv_format, .max_tokens = f.max_tokens, .max_queue = f.max_queue,
                       .shared_reuse = f.shared_reuse, .reuse_budget = (size_t)f.reuse_budget_mb << 20,
                       .calib = calib, .n_calib = n_calib, .auth = &auth};
    Engine e;
    int rc = engine_start(&e, &m, &tok, &ec, err);
    common_free(calib); // the store keeps the centre only
    if (rc != 0) {
        model_free(&m);
        tokenizer_free(&tok);
        tenant_auth_free(&auth);
        return die(err);
    }
    const char *name = strrchr(f.ckpt, '/') ? strrchr(f.ckpt, '/') + 1 : f.ckpt;
    HttpConfig hc = {.host = f.host, .model_name = name, .port = f.port, .max_body = (size_t)f.max_body,
                     .max_conns = (unsigned)f.max_conns, .max_conns_per_ip = (unsigned)f.max_conns_per_ip,
                     .conn_timeout = (unsigned)f.conn_timeout, .auth = &auth};
    int port = 0;
    struct MHD_Daemon *d = http_start(&e, &hc, &port, err);
    if (!d) {
        engine_stop(&e);
        engine_free(&e);
        model_free(&m);
        tokenizer_free(&tok);
        tenant_auth_free(&auth);
        return die(err);
    }
    int ipv6 = strchr(f.host, ':') != NULL;
    fprintf(stderr, "serve: listening on http://%s%s%s:%d (model %s, context %d, pool %d blocks of %d, reuse store %d MiB, %s scope)\n",
            ipv6 ? "[" : "", f.host, ipv6 ? "]" : "", port, name, m.cfg.block_size, e.n_blocks, e.block,
            f.reuse_budget_mb, f.shared_reuse ? "shared" : "tenant");
    int sig = 0;
    while (sigwait(&stop, &sig) != 0) {
    }
    fprintf(stderr, "serve: %s, shutting down\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
    engine_stop(&e);
    http_stop(d);
    engine_free(&e);
    model_free(&m);
    tokenizer_free(&tok);
    tenant_auth_free(&auth);
    return 0;
}
