// End-to-end tests of build/serve's tenancy, suite `serve_tenancy`: X-Tenant names a tenant only with
// --trust-tenant-header (a gateway sets it), tenants' names and scopes are keyed by the server secret, and
// /v1/cache/stats and /v1/cache/clear answer for the caller; their global forms (?scope=all) take the admin key.
#include <criterion/criterion.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_util.h"
#include "test_serve_util.h"

TestSuite(serve_tenancy, .init = cliutil_setup, .fini = cliutil_teardown, .timeout = 60);

#define PROMPT "the quick brown fox"
#define LSH "{\"prompt\":\"" PROMPT "\",\"max_tokens\":4,\"temperature\":0,\"reuse\":\"lsh\"}"
#define ALICE "Authorization: Bearer alice-secret-key\r\n"
#define BOB "Authorization: Bearer bob-secret-key\r\n"

// POST /v1/generate with these headers; asserts 200 and returns the body (free it).
static char *gen(int port, const char *headers, const char *body) {
    Resp r = http(port, "POST", "/v1/generate", headers, body);
    cr_assert_eq(r.status, 200, "%s", r.body);
    return r.body;
}

// Whether the response reused anything: a prefix from the pool or a stored prompt.
static int reused(const char *body) {
    return strstr(body, "\"cache\":{\"hit\":true") || strstr(body, "\"method\":\"lsh\",\"hit\":true");
}

// The tenant a response was served as ("cache": {..., "scope": NAME}).
static void scope_of(const char *body, char *out, size_t len) {
    const char *c = strstr(body, "\"cache\":{");
    cr_assert_not_null(c, "%s", body);
    json_str(c, "scope", out, len);
}

Test(serve_tenancy, x_tenant_is_trusted_only_with_the_flag) {
    Server s = server_start(NULL);
    // alice holds a key; her prompt is cached and stored under it
    free(gen(s.port, ALICE, LSH));
    char *b = gen(s.port, ALICE, LSH);
    cr_assert(reused(b), "alice reuses her own prompt: %s", b);
    free(b);
    // a client without her key claims her name: it is the anonymous tenant, and reuses nothing of hers
    b = gen(s.port, "X-Tenant: alice\r\n", LSH);
    char name[80];
    scope_of(b, name, sizeof name);
    cr_assert_str_eq(name, "default", "an untrusted X-Tenant names no tenant: %s", b);
    cr_assert(!reused(b), "X-Tenant: alice got alice's reuse: %s", b);
    free(b);
    b = gen(s.port, "X-Tenant: carol\r\n", "{\"prompt\":\"" PROMPT "\",\"max_tokens\":4,\"temperature\":0}");
    scope_of(b, name, sizeof name);
    cr_assert_str_eq(name, "default");
    free(b);
    server_stop(&s);

    // behind a gateway (--trust-tenant-header) X-Tenant names the tenant: alice's repeat reuses her prompt
    s = server_start(ARGS("--trust-tenant-header"));
    free(gen(s.port, "X-Tenant: alice\r\n", LSH));
    b = gen(s.port, "X-Tenant: alice\r\n", LSH);
    scope_of(b, name, sizeof name);
    cr_assert_str_eq(name, "alice");
    cr_assert(reused(b), "with the flag, X-Tenant: alice reuses alice's prompt: %s", b);
    free(b);
    b = gen(s.port, "X-Tenant: bob\r\n", LSH);
    cr_assert(!reused(b), "bob never reuses alice's: %s", b);
    free(b);
    server_stop(&s);
}

// The name a server gives alice's key, as reported by the stats of her tenant.
static void key_name(int port, char *out, size_t len) {
    Resp r = http(port, "GET", "/v1/cache/stats", ALICE, NULL);
    cr_assert_eq(r.status, 200, "%s", r.body);
    json_str(r.body, "scope", out, len);
    cr_assert(strncmp(out, "key:", 4) == 0 && strlen(out) == 20, "%s", r.body);
    free(r.body);
}

Test(serve_tenancy, scopes_are_keyed_by_the_server_secret) {
    char a[32], b[32], c[32];
    // two servers with secrets of their own (from /dev/urandom): the same key names different scopes
    Server s = server_start(NULL);
    key_name(s.port, a, sizeof a);
    server_stop(&s);
    s = server_start(NULL);
    key_name(s.port, b, sizeof b);
    server_stop(&s);
    cr_assert_str_neq(a, b, "the same key got the same scope on two servers: the hash is not keyed");
    // --scope-secret-file: the same file gives the same scopes (restarts, several servers), another file others
    const char *one = cliutil_tmp("one.secret"), *two = cliutil_tmp("two.secret");
    cliutil_write_file(one, "0123456789abcdef0123456789abcdef", 32);
    cliutil_write_file(two, "fedcba9876543210fedcba9876543210", 32);
    s = server_start(ARGS("--scope-secret-file", one));
    key_name(s.port, a, sizeof a);
    server_stop(&s);
    s = server_start(ARGS("--scope-secret-file", one));
    key_name(s.port, b, sizeof b);
    server_stop(&s);
    s = server_start(ARGS("--scope-secret-file", two));
    key_name(s.port, c, sizeof c);
    server_stop(&s);
    cr_assert_str_eq(a, b);
    cr_assert_str_neq(a, c);
    const char *weak = cliutil_tmp("weak.secret");
    cliutil_write_file(weak, "short", 5);
    Run run = RUN("serve", "--ckpt", "x.ckpt", "--scope-secret-file", weak);
    EXPECT_ERROR(&run, "serve", "--scope-secret-file", "at least 16 random bytes");
    cliutil_run_free(&run);
}

Test(serve_tenancy, cache_stats_are_the_callers) {
    Server s = server_start(ARGS("--admin-key-file", admin_key_file()));
    free(gen(s.port, ALICE, LSH));
    free(gen(s.port, ALICE, LSH));
    free(gen(s.port, BOB, LSH));
    // bob sees his counters and the pool's size, not the others' work nor how full the pool and store are
    Resp r = http(s.port, "GET", "/v1/cache/stats", BOB, NULL);
    cr_assert_eq(r.status, 200, "%s", r.body);
    cr_assert(strstr(r.body, "\"requests\":1,") && strstr(r.body, "\"lookups\":1,"), "bob's own counters: %s", r.body);
    cr_assert(!strstr(r.body, "\"tenants\"") && !strstr(r.body, "\"blocks_cached\"") && !strstr(r.body, "\"entries\""),
              "server-wide figures in a tenant's stats: %s", r.body);
    free(r.body);
    // no credentials: the anonymous tenant's stats, not the server's
    r = http(s.port, "GET", "/v1/cache/stats", NULL, NULL);
    cr_assert(strstr(r.body, "\"scope\":\"default\",") && strstr(r.body, "\"requests\":0,") && !strstr(r.body, "\"tenants\""),
              "%s", r.body);
    free(r.body);
    // the global form takes the admin key
    expect_error(http(s.port, "GET", "/v1/cache/stats?scope=all", NULL, NULL), 403, "admin key");
    expect_error(http(s.port, "GET", "/v1/cache/stats?scope=all", ALICE, NULL), 403, "admin key");
    expect_error(http(s.port, "GET", "/v1/cache/stats?scope=everyone", NULL, NULL), 400, "unknown scope");
    r = http(s.port, "GET", "/v1/cache/stats?scope=all", ADMIN_HDR, NULL);
    cr_assert(r.status == 200 && strstr(r.body, "\"scope\":\"all\",") && strstr(r.body, "\"requests\":3,") &&
              strstr(r.body, "\"tenants\":2") && strstr(r.body, "\"entries\":2,"), "%s", r.body);
    free(r.body);
    server_stop(&s);
    // without --admin-key-file the global form is off for everyone
    s = server_start(NULL);
    expect_error(http(s.port, "GET", "/v1/cache/stats?scope=all", ADMIN_HDR, NULL), 403, "--admin-key-file");
    server_stop(&s);
}

Test(serve_tenancy, cache_clear_is_the_callers) {
    Server s = server_start(ARGS("--admin-key-file", admin_key_file()));
    free(gen(s.port, ALICE, LSH));
    free(gen(s.port, BOB, LSH));
    // bob's clear forgets bob's prompts only: alice still reuses hers, bob reuses nothing
    Resp r = http(s.port, "POST", "/v1/cache/clear", BOB, "");
    cr_assert(r.status == 200 && strstr(r.body, "\"cleared\":true") && strstr(r.body, "\"scope\":\"key:"), "%s", r.body);
    free(r.body);
    char *b = gen(s.port, ALICE, LSH);
    cr_assert(reused(b), "bob's clear took alice's cache: %s", b);
    free(b);
    b = gen(s.port, BOB, LSH);
    cr_assert(!reused(b), "bob's clear left his cache: %s", b);
    free(b);
    // alice's own clear
    r = http(s.port, "POST", "/v1/cache/clear", ALICE, "");
    cr_assert_eq(r.status, 200, "%s", r.body);
    free(r.body);
    b = gen(s.port, ALICE, LSH);
    cr_assert(!reused(b), "%s", b);
    free(b);
    // the global clear takes the admin key, and frees every block and stored prompt
    expect_error(http(s.port, "POST", "/v1/cache/clear?scope=all", ALICE, ""), 403, "admin key");
    r = http(s.port, "POST", "/v1/cache/clear?scope=all", ADMIN_HDR, "");
    cr_assert(r.status == 200 && strstr(r.body, "\"scope\":\"all\",\"cleared_blocks\":") &&
              strstr(r.body, "\"cleared_reuse_entries\":"), "%s", r.body);
    free(r.body);
    b = gen(s.port, BOB, LSH);
    cr_assert(!reused(b), "%s", b);
    free(b);
    server_stop(&s);
    // --shared-reuse: one cache for everyone, so only the admin clears it (here: disabled)
    s = server_start(ARGS("--shared-reuse"));
    expect_error(http(s.port, "POST", "/v1/cache/clear", ALICE, ""), 403, "--shared-reuse");
    expect_error(http(s.port, "POST", "/v1/cache/clear?scope=all", ADMIN_HDR, ""), 403, "--admin-key-file");
    server_stop(&s);
}
