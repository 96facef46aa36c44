// Helpers of the end-to-end tests of build/serve; see test_serve_util.h.
#include "test_serve_util.h"

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
#include <unistd.h>

#include "cli_util.h"

Server server_start_ckpt(const char *ckpt, const char *const *extra) {
    const char *build = getenv("KVLAB_BUILD");
    char exe[512], log[256];
    snprintf(exe, sizeof exe, "%s/serve", build && *build ? build : "build");
    snprintf(log, sizeof log, "%s", cliutil_tmp("serve.log"));
    const char *argv[32] = {exe, "--ckpt", ckpt, "--port", "0", "--block", "4", NULL};
    int k = 7;
    for (int i = 0; extra && extra[i]; i++) argv[k++] = extra[i];
    argv[k] = NULL;
    unlink(log); // a server started before in this test left its "listening on" line there
    fflush(NULL);
    Server s = {.pid = fork()};
    cr_assert_neq(s.pid, -1);
    if (s.pid == 0) {
        int fe = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644), fi = open("/dev/null", O_RDWR);
        if (fe < 0 || fi < 0) _exit(126);
        dup2(fi, 0), dup2(fi, 1), dup2(fe, 2);
        prctl(PR_SET_PDEATHSIG, SIGTERM); // a failed assertion ends the test process: take the server with it
        setenv("OMP_WAIT_POLICY", "passive", 0);
        setenv("OMP_NUM_THREADS", "1", 0);
        execv(exe, (char *const *)argv);
        _exit(127);
    }
    for (int tries = 0; tries < 1000 && !s.port; tries++) { // up to 10 s (ASan start-up is slow)
        char *text = cliutil_read_file(log, NULL);
        const char *p = text ? strstr(text, "serve: listening on http://127.0.0.1:") : NULL;
        if (p) s.port = atoi(p + strlen("serve: listening on http://127.0.0.1:"));
        free(text);
        if (!s.port) usleep(10000);
    }
    cr_assert_gt(s.port, 0, "no 'listening on' line from build/serve");
    return s;
}

Server server_start(const char *const *extra) {
    return server_start_ckpt(cliutil_train_tiny(cliutil_write_corpus(), "tiny.ckpt"), extra);
}

const char *admin_key_file(void) {
    const char *path = cliutil_tmp("admin.key");
    cliutil_write_file(path, ADMIN_KEY "\n", strlen(ADMIN_KEY) + 1);
    return path;
}

void server_stop(Server *s) {
    cr_assert_eq(kill(s->pid, SIGTERM), 0);
    int ws;
    while (waitpid(s->pid, &ws, 0) < 0) cr_assert_eq(errno, EINTR);
    char *log = cliutil_read_file(cliutil_tmp("serve.log"), NULL);
    cr_assert(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "serve should exit 0 on SIGTERM; stderr:\n%s", log);
    free(log);
}

int connect_to(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(fd, 0);
    struct timeval tv = {.tv_sec = 20};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(connect(fd, (struct sockaddr *)&a, sizeof a), 0, "connect: %s", strerror(errno));
    return fd;
}

// Sends one request (Connection: close). headers: extra header lines, each ending in \r\n, or NULL.
int send_request(int port, const char *method, const char *path, const char *headers, const char *body) {
    int fd = connect_to(port);
    size_t blen = body ? strlen(body) : 0;
    char *req = malloc(blen + 1024);
    int n = snprintf(req, 1024, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n%s", method, path,
                     headers ? headers : "");
    if (body) n += sprintf(req + n, "Content-Type: application/json\r\nContent-Length: %zu\r\n", blen);
    n += sprintf(req + n, "\r\n");
    if (body) memcpy(req + n, body, blen), n += (int)blen;
    cr_assert_eq(send(fd, req, (size_t)n, MSG_NOSIGNAL), n);
    free(req);
    return fd;
}

// Reads the whole response (until the server closes) and parses the status line and the body.
Resp read_response(int fd) {
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    ssize_t got;
    while ((got = recv(fd, buf + n, cap - n - 1, 0)) > 0)
        if ((n += (size_t)got) + 1 == cap) buf = realloc(buf, cap *= 2);
    close(fd);
    buf[n] = 0;
    Resp r = {0};
    cr_assert(sscanf(buf, "HTTP/1.1 %d", &r.status) == 1, "no status line in: %s", buf);
    char *body = strstr(buf, "\r\n\r\n");
    cr_assert_not_null(body);
    *body = 0;
    body += 4;
    int chunked = strstr(buf, "chunked") != NULL;
    r.body = calloc(strlen(body) + 1, 1);
    if (!chunked) strcpy(r.body, body);
    else
        for (size_t k = 0, len; (len = strtoul(body, &body, 16)) > 0; body += 2 + len + 2) {
            memcpy(r.body + k, body + 2, len);
            k += len;
        }
    free(buf);
    return r;
}

Resp http(int port, const char *method, const char *path, const char *headers, const char *body) {
    return read_response(send_request(port, method, path, headers, body));
}

// The string value after "key": in a JSON text (no escapes: the tiny vocabulary has none); copied to out.
void json_str(const char *json, const char *key, char *out, size_t len) {
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":\"", key);
    const char *p = strstr(json, pat);
    cr_assert_not_null(p, "no %s in %s", key, json);
    p += strlen(pat);
    const char *q = strchr(p, '"');
    cr_assert_not_null(q);
    snprintf(out, len, "%.*s", (int)(q - p), p);
}

void expect_error(Resp r, int status, const char *phrase) {
    cr_assert_eq(r.status, status, "expected %d, got %d: %s", status, r.status, r.body);
    cr_assert(strstr(r.body, "{\"error\":{\"message\":\""), "error shape: %s", r.body);
    cr_assert(strstr(r.body, "invalid_request_error"), "%s", r.body);
    cr_assert(strstr(r.body, phrase), "expected \"%s\" in %s", phrase, r.body);
    free(r.body);
}

void expect_health(int port) {
    Resp r = http(port, "GET", "/health", NULL, NULL);
    cr_assert_eq(r.status, 200);
    cr_assert(strstr(r.body, "\"status\":\"ok\""), "%s", r.body);
    free(r.body);
}

// The text right after "key": inside the object that starts at obj (the first such key).
const char *json_at(const char *obj, const char *key) {
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *p = strstr(obj, pat);
    cr_assert_not_null(p, "no %s in %s", key, obj);
    return p + strlen(pat);
}

double json_num(const char *obj, const char *key) {
    const char *p = json_at(obj, key);
    char *end;
    double x = strtod(p, &end);
    cr_assert(end != p, "%s is not a number in %s", key, obj);
    return x;
}

// The "reuse" object of a /v1/generate response.
const char *reuse_of(const Resp *r) {
    cr_assert_eq(r->status, 200, "%s", r->body);
    const char *o = strstr(r->body, "\"reuse\":{");
    cr_assert_not_null(o, "no reuse report in %s", r->body);
    return o;
}

Resp generate(int port, const char *tenant, const char *body) {
    char hdr[128];
    snprintf(hdr, sizeof hdr, "X-Tenant: %s\r\n", tenant);
    Resp r = http(port, "POST", "/v1/generate", hdr, body);
    cr_assert_eq(r.status, 200, "%s", r.body);
    return r;
}

// A model slow enough (4 layers of width 256: tens of ms per request) that requests sent together overlap.
const char *train_slow(void) {
    const char *ckpt = cliutil_tmp("slow.ckpt");
    Run r = RUN("train", "--preset", "tiny", "--layers", "4", "--width", "256", "--hidden", "1024", "--steps", "1",
                "--batch", "1", "--eval-windows", "1", "--data", cliutil_write_corpus(), "--out", ckpt, "--quiet");
    cliutil_expect_ok(&r, "train a slow model");
    cliutil_run_free(&r);
    return ckpt;
}
