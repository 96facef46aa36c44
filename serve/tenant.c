// Who a request belongs to, and the keyed hashes that keep tenants apart. A tenant is the bearer key the
// client holds (named key:HASH, never the key), or the X-Tenant header when the operator says a gateway sets
// it (--trust-tenant-header; otherwise anyone could claim anyone's name), or the anonymous tenant "default".
// Names of keys, prefix salts and reuse-store scopes are XXH3 under a server secret (192 bytes from
// /dev/urandom at start, or derived from --scope-secret-file), so nobody can compute another tenant's scope
// from a key or a name. The admin key (--admin-key-file) opens the global forms of the cache endpoints.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define XXH_STATIC_LINKING_ONLY // XXH3_generateSecret (exported by libxxhash 0.8, declared in its advanced API)
#include <xxhash.h>

#include "serve.h"

enum { SECRET_FILE_MIN = 16, ADMIN_KEY_MIN = 16 };

static int secret_from_urandom(TenantAuth *a, char *err) {
    FILE *f = fopen("/dev/urandom", "rb");
    if (!f) {
        err_set(err, "cannot open /dev/urandom for the scope secret (give --scope-secret-file)");
        return -1;
    }
    size_t got = fread(a->secret, 1, sizeof a->secret, f);
    fclose(f);
    if (got == sizeof a->secret) return 0;
    err_set(err, "short read from /dev/urandom for the scope secret");
    return -1;
}

static int secret_from_file(TenantAuth *a, const char *path, char *err) {
    size_t len;
    char why[ERR_LEN];
    unsigned char *bytes = common_read_file(path, &len, why);
    if (!bytes) {
        err_set(err, "--scope-secret-file: %s", why);
        return -1;
    }
    int rc = 0;
    if (len < SECRET_FILE_MIN) {
        err_set(err, "--scope-secret-file '%s' holds %zu bytes; give at least %d random bytes", path, len, SECRET_FILE_MIN);
        rc = -1;
    } else {
        CHECK(XXH3_generateSecret(a->secret, sizeof a->secret, bytes, len) == XXH_OK);
    }
    free(bytes);
    return rc;
}

// The key in the file, without trailing whitespace: printable, no spaces, at least ADMIN_KEY_MIN characters.
static int admin_key_from_file(TenantAuth *a, const char *path, char *err) {
    size_t len;
    char why[ERR_LEN];
    unsigned char *bytes = common_read_file(path, &len, why);
    if (!bytes) {
        err_set(err, "--admin-key-file: %s", why);
        return -1;
    }
    while (len > 0 && (bytes[len - 1] == '\n' || bytes[len - 1] == '\r' || bytes[len - 1] == ' ' || bytes[len - 1] == '\t'))
        len--;
    int printable = 1;
    for (size_t i = 0; i < len; i++)
        if (bytes[i] <= ' ' || bytes[i] >= 127) printable = 0;
    if (len < ADMIN_KEY_MIN || !printable) {
        free(bytes);
        err_set(err, "--admin-key-file '%s': the key must be one line of at least %d printable characters without spaces",
                path, ADMIN_KEY_MIN);
        return -1;
    }
    a->admin_key = common_calloc(len + 1, 1);
    memcpy(a->admin_key, bytes, len);
    free(bytes);
    return 0;
}

int tenant_auth_init(TenantAuth *a, const char *secret_file, const char *admin_key_file, int trust_header, char *err) {
    memset(a, 0, sizeof(*a));
    a->trust_tenant_header = trust_header;
    int rc = secret_file ? secret_from_file(a, secret_file, err) : secret_from_urandom(a, err);
    if (rc == 0 && admin_key_file) rc = admin_key_from_file(a, admin_key_file, err);
    return rc;
}

void tenant_auth_free(TenantAuth *a) {
    common_free(a->admin_key);
    a->admin_key = NULL;
}

uint64_t tenant_hash(const TenantAuth *a, uint64_t domain, uint64_t epoch, const char *name) {
    size_t n = strlen(name);
    unsigned char buf[16 + SERVE_TENANT_LEN + 1];
    if (n > SERVE_TENANT_LEN) { // a bearer key: hash it whole, then as a fixed-size digest
        uint64_t h = XXH3_64bits_withSecret(name, n, a->secret, sizeof a->secret);
        memcpy(buf + 16, &h, sizeof h);
        n = sizeof h;
    } else {
        memcpy(buf + 16, name, n);
    }
    memcpy(buf, &domain, 8);
    memcpy(buf + 8, &epoch, 8);
    return XXH3_64bits_withSecret(buf, 16 + n, a->secret, sizeof a->secret);
}

// A bearer key's value, or NULL.
static const char *bearer_of(const char *authorization) {
    if (!authorization || strncmp(authorization, "Bearer ", 7) != 0 || !authorization[7]) return NULL;
    return authorization + 7;
}

int tenant_identify(const TenantAuth *a, const char *authorization, const char *x_tenant, char *out, char *err) {
    const char *key = bearer_of(authorization);
    if (key) {
        snprintf(out, SERVE_TENANT_LEN + 1, "key:%016llx", (unsigned long long)tenant_hash(a, TENANT_DOMAIN_KEY, 0, key));
        return 0;
    }
    const char *t = a->trust_tenant_header && x_tenant ? x_tenant : "default";
    size_t n = strlen(t);
    if (n == 0 || n > SERVE_TENANT_LEN) {
        err_set(err, "X-Tenant must be 1 to %d characters", SERVE_TENANT_LEN);
        return -1;
    }
    for (size_t i = 0; i < n; i++) { // ':' is not allowed, so a header cannot claim a key's name
        int ok = t[i] == '-' || t[i] == '_' || t[i] == '.' || (t[i] >= '0' && t[i] <= '9') ||
                 ((t[i] | 32) >= 'a' && (t[i] | 32) <= 'z');
        if (!ok) {
            err_set(err, "X-Tenant may hold letters, digits, '-', '_' and '.' only");
            return -1;
        }
    }
    memcpy(out, t, n + 1);
    return 0;
}

int tenant_is_admin(const TenantAuth *a, const char *authorization) {
    const char *key = bearer_of(authorization);
    if (!a->admin_key || !key) return 0;
    size_t n = strlen(a->admin_key);
    if (strlen(key) != n) return 0;
    unsigned char diff = 0; // every byte compared: the time says nothing about where a guess goes wrong
    for (size_t i = 0; i < n; i++) diff |= (unsigned char)(key[i] ^ a->admin_key[i]);
    return diff == 0;
}
