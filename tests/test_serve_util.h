// Helpers of the end-to-end tests of build/serve (test_serve*.c): the server started on a tiny checkpoint
// trained in the test (--port 0, its port read from the "listening on" line), and a minimal HTTP/1.1
// client over plain sockets.
#ifndef KVLAB_TESTS_SERVE_UTIL_H
#define KVLAB_TESTS_SERVE_UTIL_H

#include <sys/types.h>

typedef struct {
    pid_t pid;
    int port;
} Server;

typedef struct {
    int status;
    char *body; // de-chunked, NUL-terminated
} Resp;

// The admin key of the tests' servers: --admin-key-file admin_key_file(), requests with ADMIN_HDR.
#define ADMIN_KEY "kvlab-test-admin-key-0001"
#define ADMIN_HDR "Authorization: Bearer " ADMIN_KEY "\r\n"

// build/serve on ckpt (--port 0 --block 4 and the NULL-terminated extra flags), its stderr in serve.log.
Server server_start_ckpt(const char *ckpt, const char *const *extra);
// The same on the tiny preset trained on the lowercase corpus.
Server server_start(const char *const *extra);
// SIGTERM, and asserts exit status 0.
void server_stop(Server *s);
// Writes ADMIN_KEY to a file in the test's directory; returns its path.
const char *admin_key_file(void);
// A connected socket to 127.0.0.1:port (20 s receive timeout).
int connect_to(int port);
// Sends one request (Connection: close). headers: extra header lines, each ending in \r\n, or NULL.
int send_request(int port, const char *method, const char *path, const char *headers, const char *body);
// Reads the whole response (until the server closes) and parses the status line and the body.
Resp read_response(int fd);
Resp http(int port, const char *method, const char *path, const char *headers, const char *body);
// The string value after "key": in a JSON text (no escapes: the tiny vocabulary has none); copied to out.
void json_str(const char *json, const char *key, char *out, size_t len);
// Asserts a JSON error of that status whose message holds phrase; frees the body.
void expect_error(Resp r, int status, const char *phrase);
void expect_health(int port);
// The text right after "key": inside the object that starts at obj (the first such key), and its number.
const char *json_at(const char *obj, const char *key);
double json_num(const char *obj, const char *key);
// The "reuse" object of a /v1/generate response.
const char *reuse_of(const Resp *r);
// POST /v1/generate as X-Tenant: tenant (the server must trust the header); asserts 200.
Resp generate(int port, const char *tenant, const char *body);
// A model slow enough (4 layers of width 256: tens of ms per request) that requests sent together overlap.
const char *train_slow(void);

#endif
