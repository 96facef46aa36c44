// End-to-end tests of build/serve over real HTTP on loopback, suite `serve`: the server is started with
// --port 0 on a tiny checkpoint trained in the test, its port read from the "listening on" line, and spoken to
// over plain sockets (a minimal HTTP/1.1 client below). Covers the endpoints, prefix reuse within a tenant
// and never across tenants, SSE streaming, concurrent requests not corrupting each other, a client that
// disconnects mid-stream, each kind of bad input (and that the server keeps serving), and SIGTERM -> exit 0.
// Cross-request reuse (reuse lsh/semshare): hits on a repeated prompt that sample exactly what a request
// without reuse samples, tenant scoping and --shared-reuse, the per-request threshold/min_overlap knobs, the
// counters, and a full queue answering 503 while the server stays healthy.
#include <criterion/criterion.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli_util.h"
#include "test_serve_util.h"

TestSuite(serve, .init = cliutil_setup, .fini = cliutil_teardown, .timeout = 60);

#define PROMPT "the quick brown fox"
#define GREEDY(n) "{\"prompt\":\"" PROMPT "\",\"max_tokens\":" #n ",\"temperature\":0}"

Test(serve, completions_cache_and_tenants) {
    Server s = server_start(ARGS("--trust-tenant-header", "--admin-key-file", admin_key_file()));
    expect_health(s.port);
    Resp r = http(s.port, "POST", "/v1/completions", NULL, "{\"prompt\":\"the lazy dog\",\"max_tokens\":7,\"seed\":3}");
    cr_assert_eq(r.status, 200, "%s", r.body);
    char text[256], a[256], b[256], hit[16];
    json_str(r.body, "text", text, sizeof text);
    cr_assert_eq(strlen(text), 7, "text '%s' should have 7 characters: %s", text, r.body);
    cr_assert(strstr(r.body, "\"object\":\"text_completion\"") && strstr(r.body, "\"completion_tokens\":7"));
    free(r.body);

    // same tenant, same prompt: the second is a hit (19 tokens: 4 full blocks of 4 reusable) with the same text
    r = http(s.port, "POST", "/v1/generate", "X-Tenant: alice\r\n", GREEDY(8));
    cr_assert_eq(r.status, 200, "%s", r.body);
    json_str(r.body, "text", a, sizeof a);
    cr_assert(strstr(r.body, "\"cache\":{\"hit\":false,\"reused_tokens\":0,\"prompt_tokens\":19"), "%s", r.body);
    free(r.body);
    r = http(s.port, "POST", "/v1/generate", "X-Tenant: alice\r\n", GREEDY(8));
    cr_assert_eq(r.status, 200, "%s", r.body);
    json_str(r.body, "text", b, sizeof b);
    cr_assert(strstr(r.body, "\"cache\":{\"hit\":true,\"reused_tokens\":16,\"prompt_tokens\":19"), "%s", r.body);
    cr_assert_str_eq(a, b, "greedy text changed with the cache hit");
    cr_assert_eq(strlen(a), 8);
    free(r.body);
    // another tenant never reuses alice's blocks, but computes the same text
    r = http(s.port, "POST", "/v1/generate", "X-Tenant: bob\r\n", GREEDY(8));
    cr_assert(strstr(r.body, "\"hit\":false,\"reused_tokens\":0"), "%s", r.body);
    json_str(r.body, "text", b, sizeof b);
    cr_assert_str_eq(a, b);
    free(r.body);
    // kv "full" is private: no reuse even for alice
    r = http(s.port, "POST", "/v1/generate", "X-Tenant: alice\r\n",
             "{\"prompt\":\"" PROMPT "\",\"max_tokens\":8,\"temperature\":0,\"kv\":\"full\"}");
    cr_assert(strstr(r.body, "\"hit\":false") && strstr(r.body, "\"kv\":\"full\""), "%s", r.body);
    free(r.body);

    r = http(s.port, "GET", "/v1/cache/stats", "X-Tenant: alice\r\n", NULL);
    cr_assert_eq(r.status, 200);
    json_str(r.body, "scope", hit, sizeof hit);
    cr_assert_str_eq(hit, "alice");
    cr_assert(strstr(r.body, "\"requests\":2,\"query_blocks\":8,\"hit_blocks\":4,\"hit_rate\":0.5"), "%s", r.body);
    free(r.body);
    r = http(s.port, "GET", "/v1/cache/stats?scope=all", ADMIN_HDR, NULL);
    cr_assert(strstr(r.body, "\"scope\":\"all\"") && strstr(r.body, "\"fragmentation\"") &&
              strstr(r.body, "\"utilisation\"") && strstr(r.body, "\"prefill_saved\":16"), "%s", r.body);
    free(r.body);

    // two requests at once (interleaved by the engine) give the texts they give alone
    int f1 = send_request(s.port, "POST", "/v1/generate", "X-Tenant: carol\r\n", GREEDY(10));
    int f2 = send_request(s.port, "POST", "/v1/completions", NULL, "{\"prompt\":\"the lazy dog\",\"max_tokens\":7,\"seed\":3}");
    Resp r1 = read_response(f1), r2 = read_response(f2);
    json_str(r1.body, "text", b, sizeof b);
    cr_assert(strncmp(a, b, 8) == 0 && strlen(b) == 10, "'%s' vs '%s'", a, b);
    json_str(r2.body, "text", b, sizeof b);
    cr_assert_str_eq(text, b);
    free(r1.body), free(r2.body);

    // the admin's clear drops the cached blocks: alice misses again
    r = http(s.port, "POST", "/v1/cache/clear?scope=all", ADMIN_HDR, "");
    cr_assert(r.status == 200 && strstr(r.body, "\"cleared_blocks\":"), "%s", r.body);
    free(r.body);
    r = http(s.port, "POST", "/v1/generate", "X-Tenant: alice\r\n", GREEDY(8));
    cr_assert(strstr(r.body, "\"hit\":false"), "%s", r.body);
    free(r.body);
    r = http(s.port, "GET", "/metrics", NULL, NULL);
    cr_assert(strstr(r.body, "kvlab_requests_total{status=\"200\"}") && strstr(r.body, "kvlab_tokens_generated_total 64") &&
              strstr(r.body, "kvlab_prompt_tokens_reused_total 24") && strstr(r.body, "kvlab_queue_length 0"),
              "%s", r.body);
    free(r.body);
    server_stop(&s);
}

Test(serve, streaming_and_disconnect) {
    Server s = server_start(NULL);
    Resp r = http(s.port, "POST", "/v1/completions", NULL, "{\"prompt\":\"the\",\"max_tokens\":5,\"stream\":true}");
    cr_assert_eq(r.status, 200);
    int events = 0;
    const char *last = NULL;
    for (const char *p = r.body; (p = strstr(p, "data: ")); p += 6) events++, last = p;
    cr_assert_eq(events, 7, "5 tokens, a final event, [DONE]: %s", r.body);
    cr_assert_str_eq(last, "data: [DONE]\n\n");
    cr_assert(strstr(r.body, "\"finish_reason\":\"length\"") && strstr(r.body, "\"completion_tokens\":5"), "%s", r.body);
    free(r.body);
    // a client that goes away mid-stream: its request is cancelled and its blocks released
    int fd = send_request(s.port, "POST", "/v1/completions", NULL, "{\"prompt\":\"the\",\"max_tokens\":28,\"stream\":true}");
    char buf[64];
    cr_assert_gt(recv(fd, buf, sizeof buf, 0), 0);
    close(fd);
    int idle = 0;
    for (int i = 0; i < 500 && !idle; i++) {
        r = http(s.port, "GET", "/metrics", NULL, NULL);
        idle = strstr(r.body, "kvlab_requests_active 0") && strstr(r.body, "kvlab_pool_blocks{state=\"used\"} 0");
        free(r.body);
        if (!idle) usleep(10000);
    }
    cr_assert(idle, "the cancelled stream still holds the engine");
    expect_health(s.port);
    server_stop(&s);
}

Test(serve, bad_input_keeps_serving) {
    Server s = server_start(ARGS("--max-body", "1024", "--max-tokens", "20", "--trust-tenant-header"));
    expect_error(http(s.port, "POST", "/v1/completions", NULL, "{\"prompt\": \"the\""), 400, "malformed JSON");
    expect_error(http(s.port, "POST", "/v1/completions", NULL, "[1, 2]"), 400, "JSON object");
    expect_error(http(s.port, "POST", "/v1/completions", NULL, "{\"max_tokens\": 3}"), 400, "'prompt' is required");
    expect_error(http(s.port, "POST", "/v1/completions", NULL, "{\"prompt\": 7}"), 400, "'prompt' must be a string");
    expect_error(http(s.port, "POST", "/v1/completions", NULL, "{\"prompt\": \"the\", \"max_tokens\": \"5\"}"), 400,
                 "'max_tokens' must be an integer");
    expect_error(http(s.port, "POST", "/v1/completions", NULL, "{\"prompt\": \"the\", \"max_tokens\": 21}"), 400,
                 "'max_tokens' must be in [1, 20]");
    expect_error(http(s.port, "POST", "/v1/completions", NULL, "{\"prompt\": \"the\", \"max_tokens\": 0}"), 400,
                 "'max_tokens'");
    expect_error(http(s.port, "POST", "/v1/completions", NULL, "{\"prompt\": \"the\", \"temperature\": -1}"), 400,
                 "'temperature'");
    expect_error(http(s.port, "POST", "/v1/completions", NULL, "{\"prompt\": \"The end\"}"), 400,
                 "prompt character 'T' (byte 0) is not in the model's vocabulary");
    expect_error(http(s.port, "POST", "/v1/completions", NULL,
                      "{\"prompt\": \"the quick brown fox jumps\", \"max_tokens\": 20}"), 400, "exceeds the model's context of 32");
    expect_error(http(s.port, "POST", "/v1/generate", NULL, "{\"prompt\": \"the\", \"kv\": \"h2o:4,4\"}"), 400,
                 "\\\"paged:4\\\"");
    // a chunked body over the limit is read and dropped (memory stays bounded), then refused
    char big[2048 + 256];
    int n = sprintf(big, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                         "Transfer-Encoding: chunked\r\n\r\n%x\r\n", 2000);
    memset(big + n, ' ', 2000);
    n += 2000;
    n += sprintf(big + n, "\r\n0\r\n\r\n");
    int fd = connect_to(s.port);
    cr_assert_eq(send(fd, big, (size_t)n, MSG_NOSIGNAL), n);
    expect_error(read_response(fd), 413, "over the limit of 1024");
    fd = connect_to(s.port); // declared but never sent: refused from the headers alone
    const char *hdr = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n";
    cr_assert_eq(send(fd, hdr, strlen(hdr), MSG_NOSIGNAL), (ssize_t)strlen(hdr));
    expect_error(read_response(fd), 413, "5000000");
    expect_error(http(s.port, "GET", "/v1/nope", NULL, NULL), 404, "/v1/nope");
    // bytes that are not UTF-8 quoted back in a message (a URL, a cut character, a spec) are escaped: the
    // server used to abort on them (RELIABILITY.md, http-1 and http-2)
    expect_error(http(s.port, "GET", "/%ff", NULL, NULL), 404, "no such endpoint");
    expect_error(http(s.port, "POST", "/v1/completions", NULL, "\"\\\xd9\xba"), 400, "malformed JSON");
    expect_health(s.port);
    expect_error(http(s.port, "GET", "/v1/completions", NULL, NULL), 405, "takes POST");
    expect_error(http(s.port, "POST", "/health", NULL, ""), 405, "takes GET");
    expect_error(http(s.port, "POST", "/v1/completions", "X-Tenant: a b\r\n", "{\"prompt\":\"the\"}"), 400, "X-Tenant");
    // unknown fields are ignored (OpenAI clients send model, user, ...); the default max_tokens is 16
    Resp r = http(s.port, "POST", "/v1/completions", NULL, "{\"prompt\":\"the\",\"model\":\"x\",\"user\":\"u\"}");
    cr_assert_eq(r.status, 200, "%s", r.body);
    cr_assert(strstr(r.body, "\"completion_tokens\":16"), "%s", r.body);
    free(r.body);
    expect_health(s.port);
    r = http(s.port, "GET", "/metrics", NULL, NULL);
    cr_assert(strstr(r.body, "kvlab_requests_total{status=\"400\"} 13") &&
              strstr(r.body, "kvlab_requests_total{status=\"413\"} 2") &&
              strstr(r.body, "kvlab_requests_total{status=\"404\"} 2") &&
              strstr(r.body, "kvlab_requests_total{status=\"405\"} 2"), "%s", r.body);
    free(r.body);
    server_stop(&s);
}

// --- cross-request reuse ----------------------------------------------------------------------------------

#define ASK(prompt, n, extra) "{\"prompt\":\"" prompt "\",\"max_tokens\":" #n ",\"temperature\":0" extra "}"
#define SAMPLED(prompt, extra) "{\"prompt\":\"" prompt "\",\"max_tokens\":12,\"temperature\":1,\"seed\":7" extra "}"
#define REORDERED "fox brown quick the" // PROMPT's words reversed: the same symbols, so the same mean embedding

// Asserts a miss of reuse `method` that found no usable reference, and returns the response's text.
static void expect_miss(Resp r, const char *method, char *text, size_t len) {
    const char *o = reuse_of(&r);
    char want[64];
    snprintf(want, sizeof want, "{\"method\":\"%s\",\"hit\":false", method);
    cr_assert(strstr(o, want) && strstr(o, "\"reference\":null,\"reference_tokens\":null"), "%s", o);
    if (text) json_str(r.body, "text", text, len);
    free(r.body);
}

Test(serve, reuse_lsh_hits_within_a_tenant) {
    Server s = server_start(ARGS("--trust-tenant-header", "--admin-key-file", admin_key_file()));
    char none[64], got[64], ref[32], sampled[64];
    // the reference: no reuse at all, greedy and sampled
    Resp r = generate(s.port, "alice", ASK(PROMPT, 8, ",\"reuse\":\"none\""));
    const char *o = reuse_of(&r);
    cr_assert(strstr(o, "{\"method\":\"none\",\"hit\":false,\"similarity\":null,\"reference\":null,"
                        "\"reference_tokens\":null,\"reused_tokens\":0,\"recomputed_tokens\":19,\"scope\":\"tenant\"}"), "%s", o);
    json_str(r.body, "text", none, sizeof none);
    free(r.body);
    r = generate(s.port, "alice", SAMPLED(PROMPT, ",\"reuse\":\"none\""));
    json_str(r.body, "text", sampled, sizeof sampled);
    free(r.body);

    // the first lsh request misses (nothing stored) and is stored; the same text as without reuse
    expect_miss(generate(s.port, "alice", ASK(PROMPT, 8, ",\"reuse\":\"lsh\"")), "lsh", got, sizeof got);
    cr_assert_str_eq(got, none);
    // the repeat hits its stored prompt: similarity 1, every prompt token but the last reused, the same text
    r = generate(s.port, "alice", ASK(PROMPT, 8, ",\"reuse\":\"lsh\""));
    o = reuse_of(&r);
    cr_assert(strstr(o, "{\"method\":\"lsh\",\"hit\":true,"), "%s", o);
    cr_assert_float_eq(json_num(o, "similarity"), 1.0, 1e-5, "%s", o);
    json_str(o, "reference", ref, sizeof ref);
    cr_assert(strlen(ref) == 20 && strncmp(ref, "ref-", 4) == 0 && strspn(ref + 4, "0123456789abcdef") == 16, "%s", ref);
    cr_assert(strstr(o, "\"reference_tokens\":19,\"reused_tokens\":18,\"recomputed_tokens\":1,\"scope\":\"tenant\""), "%s", o);
    cr_assert(strstr(r.body, "\"cache\":{\"hit\":false,\"reused_tokens\":0"), "a hit takes nothing from the prefix pool: %s", r.body);
    json_str(r.body, "text", got, sizeof got);
    cr_assert_str_eq(got, none, "greedy text changed with the lsh hit");
    free(r.body);
    // sampling too: the hit's K/V is the reference's bit for bit, so the same seed samples the same text
    r = generate(s.port, "alice", SAMPLED(PROMPT, ",\"reuse\":\"lsh\""));
    cr_assert(strstr(reuse_of(&r), "\"hit\":true"), "%s", r.body);
    json_str(r.body, "text", got, sizeof got);
    cr_assert_str_eq(got, sampled, "sampled text changed with the lsh hit");
    free(r.body);
    // semshare finds the same reference (its partial recomputation need not give the same text)
    r = generate(s.port, "alice", ASK(PROMPT, 8, ",\"reuse\":\"semshare\""));
    o = reuse_of(&r);
    cr_assert(strstr(o, "{\"method\":\"semshare\",\"hit\":true,"), "%s", o);
    cr_assert_float_eq(json_num(o, "similarity"), 1.0, 1e-5, "%s", o);
    json_str(o, "reference", got, sizeof got);
    cr_assert_str_eq(got, ref);
    cr_assert(json_num(o, "reused_tokens") > 0 && json_num(o, "reused_tokens") + json_num(o, "recomputed_tokens") == 19, "%s", o);
    free(r.body);

    // another tenant never sees alice's stored prompt
    expect_miss(generate(s.port, "bob", ASK(PROMPT, 8, ",\"reuse\":\"lsh\"")), "lsh", got, sizeof got);
    cr_assert_str_eq(got, none);
    // unrelated prompts never hit, whichever method
    expect_miss(generate(s.port, "alice", ASK("a lazy dog sleeps", 8, ",\"reuse\":\"lsh\"")), "lsh", NULL, 0);
    expect_miss(generate(s.port, "alice", ASK("it runs into woods", 8, ",\"reuse\":\"semshare\"")), "semshare", NULL, 0);

    // the knobs: reordered words have PROMPT's mean embedding (cosine 1) but few of its 4-grams
    r = generate(s.port, "alice", ASK(REORDERED, 8, ",\"reuse\":\"lsh\",\"min_overlap\":0"));
    o = reuse_of(&r);
    cr_assert(strstr(o, "\"hit\":true"), "cosine alone (min_overlap 0) should take PROMPT: %s", o);
    json_str(o, "reference", got, sizeof got);
    cr_assert_str_eq(got, ref);
    free(r.body);
    r = generate(s.port, "alice", ASK(REORDERED, 8, ",\"reuse\":\"lsh\",\"min_overlap\":0.9,\"threshold\":0.5"));
    o = reuse_of(&r);
    cr_assert(strstr(o, "\"hit\":false") && strstr(o, "\"reference\":null"), "%s", o);
    cr_assert_float_eq(json_num(o, "similarity"), 1.0, 1e-5, "a rejected candidate's similarity is reported: %s", o);
    free(r.body);

    // the counters: alice's lsh/semshare requests, and the store (alice's 4 misses, bob's 1)
    r = http(s.port, "GET", "/v1/cache/stats", "X-Tenant: alice\r\n", NULL);
    o = strstr(r.body, "\"reuse\":{");
    cr_assert(o && strstr(o, "{\"scope\":\"tenant\",\"lookups\":8,\"hits\":4,\"misses\":4,\"rejected\":1,"), "%s", r.body);
    cr_assert(!strstr(o, "\"entries\""), "the store's contents are the admin's to see: %s", o);
    free(r.body);
    r = http(s.port, "GET", "/v1/cache/stats?scope=all", ADMIN_HDR, NULL);
    o = strstr(r.body, "\"store\":{");
    cr_assert(o && strstr(o, "\"entries\":5,"), "%s", r.body);
    free(r.body);
    r = http(s.port, "GET", "/metrics", NULL, NULL);
    cr_assert(strstr(r.body, "kvlab_reuse_scope{scope=\"tenant\"} 1") &&
              strstr(r.body, "kvlab_reuse_lookups_total{scope=\"tenant\"} 9") &&
              strstr(r.body, "kvlab_reuse_hits_total{scope=\"tenant\"} 4") &&
              strstr(r.body, "kvlab_reuse_misses_total{scope=\"tenant\"} 5") &&
              strstr(r.body, "kvlab_reuse_store_entries{scope=\"tenant\"} 5"), "%s", r.body);
    free(r.body);
    // the admin's clear empties the store too: the repeat misses again
    r = http(s.port, "POST", "/v1/cache/clear?scope=all", ADMIN_HDR, "");
    cr_assert(strstr(r.body, "\"cleared_reuse_entries\":5"), "%s", r.body);
    free(r.body);
    expect_miss(generate(s.port, "alice", ASK(PROMPT, 8, ",\"reuse\":\"lsh\"")), "lsh", NULL, 0);
    server_stop(&s);
}

Test(serve, reuse_shared_scope_and_tight_pool) {
    // 8 blocks of 4: room for two requests of 19 + 13 tokens at once, so the rest wait for blocks
    Server s = server_start(ARGS("--shared-reuse", "--pool-blocks", "16", "--trust-tenant-header", "--admin-key-file",
                                 admin_key_file()));
    char first[64], got[64];
    expect_miss(generate(s.port, "alice", ASK(PROMPT, 13, ",\"reuse\":\"lsh\"")), "lsh", first, sizeof first);
    // bob reuses alice's stored prompt, and her cached prefix blocks
    Resp r = generate(s.port, "bob", ASK(PROMPT, 13, ",\"reuse\":\"lsh\""));
    const char *o = reuse_of(&r);
    cr_assert(strstr(o, "\"hit\":true") && strstr(o, "\"scope\":\"shared\""), "%s", o);
    free(r.body);
    r = generate(s.port, "bob", ASK(PROMPT, 13, ""));
    cr_assert(strstr(r.body, "\"cache\":{\"hit\":true,\"reused_tokens\":16"), "%s", r.body);
    free(r.body);
    // several hits at once, more than the pool holds together: each begins (its prompt written into its
    // reserved blocks) when blocks are free, and each gives the text the miss gave
    const char *tenants[4] = {"X-Tenant: a\r\n", "X-Tenant: b\r\n", "X-Tenant: c\r\n", "X-Tenant: d\r\n"};
    int fds[4];
    for (int i = 0; i < 4; i++) fds[i] = send_request(s.port, "POST", "/v1/generate", tenants[i], ASK(PROMPT, 13, ",\"reuse\":\"lsh\""));
    for (int i = 0; i < 4; i++) {
        r = read_response(fds[i]);
        cr_assert(strstr(reuse_of(&r), "\"hit\":true"), "%s", r.body);
        json_str(r.body, "text", got, sizeof got);
        cr_assert_str_eq(got, first);
        free(r.body);
    }
    r = http(s.port, "GET", "/v1/cache/stats?scope=all", ADMIN_HDR, NULL);
    cr_assert(strstr(r.body, "\"reuse\":{\"scope\":\"shared\",\"lookups\":6,\"hits\":5,\"misses\":1,"), "%s", r.body);
    cr_assert(strstr(r.body, "\"blocks_used\":0"), "%s", r.body);
    free(r.body);
    r = http(s.port, "GET", "/metrics", NULL, NULL);
    cr_assert(strstr(r.body, "kvlab_reuse_scope{scope=\"shared\"} 1") &&
              strstr(r.body, "kvlab_reuse_hits_total{scope=\"shared\"} 5"), "%s", r.body);
    free(r.body);
    server_stop(&s);
}

Test(serve, reuse_bad_input_keeps_serving) {
    Server s = server_start(NULL);
    const struct {
        const char *body, *phrase;
    } bad[] = {
        {"{\"prompt\":\"the\",\"reuse\":5}", "'reuse' must be a string"},
        {"{\"prompt\":\"the\",\"reuse\":\"sim\"}", "unsupported reuse 'sim': valid methods are prefix, lsh, semshare, none"},
        {"{\"prompt\":\"the\",\"reuse\":\"lsh\",\"threshold\":\"0.5\"}", "'threshold' must be a number"},
        {"{\"prompt\":\"the\",\"reuse\":\"lsh\",\"threshold\":0}", "'threshold' must be in (0, 1], got 0"},
        {"{\"prompt\":\"the\",\"reuse\":\"semshare\",\"threshold\":1.5}", "'threshold' must be in (0, 1], got 1.5"},
        {"{\"prompt\":\"the\",\"reuse\":\"lsh\",\"min_overlap\":true}", "'min_overlap' must be a number"},
        {"{\"prompt\":\"the\",\"reuse\":\"lsh\",\"min_overlap\":-0.1}", "'min_overlap' must be in [0, 1], got -0.1"},
        {"{\"prompt\":\"the\",\"threshold\":0.9}", "'threshold' applies to reuse \\\"lsh\\\" or \\\"semshare\\\" only, not \\\"prefix\\\""},
        {"{\"prompt\":\"the\",\"reuse\":\"none\",\"min_overlap\":0.5}", "not \\\"none\\\""},
        {"{\"prompt\":\"the\",\"kv\":\"full\",\"reuse\":\"lsh\"}", "kv \\\"full\\\" is a private cache"},
    };
    int n = (int)(sizeof bad / sizeof bad[0]);
    for (int i = 0; i < n; i++) expect_error(http(s.port, "POST", "/v1/generate", NULL, bad[i].body), 400, bad[i].phrase);
    // kv "full" implies reuse "none"; /v1/completions ignores the reuse fields (unknown to OpenAI clients)
    Resp r = generate(s.port, "default", "{\"prompt\":\"the\",\"max_tokens\":2,\"kv\":\"full\"}");
    cr_assert(strstr(reuse_of(&r), "\"method\":\"none\""), "%s", r.body);
    free(r.body);
    r = http(s.port, "POST", "/v1/completions", NULL, "{\"prompt\":\"the\",\"max_tokens\":2,\"reuse\":7}");
    cr_assert(r.status == 200 && !strstr(r.body, "\"reuse\""), "%s", r.body);
    free(r.body);
    r = generate(s.port, "default", ASK(PROMPT, 4, ",\"reuse\":\"lsh\",\"threshold\":1,\"min_overlap\":1"));
    cr_assert(strstr(reuse_of(&r), "\"hit\":false"), "%s", r.body);
    free(r.body);
    expect_health(s.port);
    r = http(s.port, "GET", "/metrics", NULL, NULL);
    char want[64];
    snprintf(want, sizeof want, "kvlab_requests_total{status=\"400\"} %d\n", n);
    cr_assert(strstr(r.body, want), "%s", r.body);
    free(r.body);
    server_stop(&s);
}

// Per-request kv specs over the shared pool: a selection the pool applies to whole blocks, the pool's own row
// format; everything else is a 400 that names what this server accepts. A window request's dropped blocks go
// back to the pool: nothing is held once it is done.
Test(serve, kv_specs_over_the_pool) {
    Server s = server_start(ARGS("--kv-format", "int8"));
    Resp r = generate(s.port, "default", ASK(PROMPT, 12, ",\"kv\":\"window:8+paged:4\""));
    cr_assert(strstr(r.body, "\"kv\":\"window:8+paged:4\"") && strstr(r.body, "\"completion_tokens\":12"), "%s", r.body);
    free(r.body);
    r = generate(s.port, "default", ASK(PROMPT, 4, ",\"kv\":\"sink:4,window:8+paged:4+int8\""));
    free(r.body);
    r = generate(s.port, "default", ASK(PROMPT, 4, ",\"kv\":\"h2o:4,4+paged:4\",\"reuse\":\"none\""));
    free(r.body);
    const struct {
        const char *body, *phrase;
    } bad[] = {
        {"{\"prompt\":\"the\",\"kv\":\"window:8+paged:8\"}", "blocks of 4 tokens"},
        {"{\"prompt\":\"the\",\"kv\":\"tova:8+paged:4\"}", "unsupported kv spec 'tova:8+paged:4'"},
        {"{\"prompt\":\"the\",\"kv\":\"window:8\"}", "\\\"window:64+paged:4\\\""},
        {"{\"prompt\":\"the\",\"kv\":\"paged:4+int4\"}", "int8 rows"},
        {"{\"prompt\":\"the\",\"kv\":\"paged:4+fp32\"}", "int8 rows"}, // a named fp32 is a format term too
        {"{\"prompt\":\"the\",\"kv\":\"window:8+paged:4\",\"reuse\":\"lsh\"}", "no selection in 'kv'"},
        {"{\"prompt\":\"the\",\"kv\":[1]}", "'kv' must be a string"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect_error(http(s.port, "POST", "/v1/generate", NULL, bad[i].body), 400, bad[i].phrase);
    expect_health(s.port);
    r = http(s.port, "GET", "/metrics", NULL, NULL);
    cr_assert(strstr(r.body, "kvlab_pool_blocks{state=\"used\"} 0"), "%s", r.body);
    free(r.body);
    server_stop(&s);
    Run run = RUN("serve", "--ckpt", "x.ckpt", "--kv-format", "int3");
    EXPECT_ERROR(&run, "serve", "bad row format 'int3': valid formats are fp32, fp16, fp8[:G], int8[:G], int4[:G], int2[:G]");
    cliutil_run_free(&run);
}

Test(serve, full_queue_503_then_healthy) {
    // each request needs the whole pool (3 + 29 tokens = 8 blocks of 4), so they run one at a time: while one
    // runs (or before the engine has taken it) the next waits in the queue and the others find it full
    Server s = server_start_ckpt(train_slow(), ARGS("--max-queue", "1", "--pool-blocks", "8"));
    enum { N = 6 };
    int fds[N], ok = 0, busy = 0;
    for (int i = 0; i < N; i++)
        fds[i] = send_request(s.port, "POST", "/v1/generate", NULL, "{\"prompt\":\"the\",\"max_tokens\":29,\"reuse\":\"lsh\"}");
    for (int i = 0; i < N; i++) {
        Resp r = read_response(fds[i]);
        if (r.status == 200) {
            char text[64];
            json_str(r.body, "text", text, sizeof text);
            cr_assert_eq(strlen(text), 29, "%s", r.body);
            ok++;
            free(r.body);
        } else {
            expect_error(r, 503, "server busy: 1 requests already queued; retry later");
            busy++;
        }
    }
    cr_assert(ok >= 1 && busy >= 1, "%d answered, %d refused: expected the first to be answered and at least one "
              "refused", ok, busy);
    expect_health(s.port);
    Resp r = generate(s.port, "default", "{\"prompt\":\"the\",\"max_tokens\":29,\"reuse\":\"lsh\"}");
    cr_assert(strstr(reuse_of(&r), "\"hit\":true"), "%s", r.body);
    free(r.body);
    r = http(s.port, "GET", "/metrics", NULL, NULL);
    char want[64];
    snprintf(want, sizeof want, "kvlab_requests_total{status=\"other\"} %d\n", busy);
    cr_assert(strstr(r.body, want) && strstr(r.body, "kvlab_queue_length 0") && strstr(r.body, "kvlab_requests_active 0") &&
              strstr(r.body, "kvlab_pool_blocks{state=\"used\"} 0"), "%s", r.body);
    free(r.body);
    server_stop(&s);
}
