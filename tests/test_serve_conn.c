// End-to-end tests of build/serve's connection handling, suite `serve_conn`: one address cannot take every
// connection slot, a request that never ends (bytes without a line end, a chunk of 2^64-1 bytes) is closed
// within --conn-timeout or once its dropped body passes --max-body, and a non-streaming client that hangs up
// cancels its request as a dropped stream does.
#include <criterion/criterion.h>

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "cli_util.h"
#include "test_serve_util.h"

TestSuite(serve_conn, .init = cliutil_setup, .fini = cliutil_teardown, .timeout = 90);

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

// A socket from source address `from` (another loopback address is another client) to 127.0.0.1:port,
// receiving with a timeout of wait_s seconds.
static int connect_from(const char *from, int port, int wait_s) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(fd, 0);
    struct timeval tv = {.tv_sec = wait_s};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct sockaddr_in src = {.sin_family = AF_INET};
    cr_assert_eq(inet_pton(AF_INET, from, &src.sin_addr), 1);
    cr_assert_eq(bind(fd, (struct sockaddr *)&src, sizeof src), 0, "bind %s: %s", from, strerror(errno));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(connect(fd, (struct sockaddr *)&a, sizeof a), 0, "connect: %s", strerror(errno));
    return fd;
}

// Sends bytes, then waits for the server's first answer: returns the seconds until it answered (HTTP
// status in *status) or closed (*status 0); fails when nothing came within wait_s.
static double answer_or_close(int fd, const void *bytes, size_t n, int wait_s, int *status) {
    double t0 = now_s();
    cr_assert_eq(send(fd, bytes, n, MSG_NOSIGNAL), (ssize_t)n);
    char buf[256];
    ssize_t got = recv(fd, buf, sizeof buf - 1, 0);
    double dt = now_s() - t0;
    cr_assert(got >= 0 || errno == ECONNRESET, "no answer and no close within %d s (errno %s)", wait_s, strerror(errno));
    *status = 0;
    if (got > 0) {
        buf[got] = 0;
        cr_assert(sscanf(buf, "HTTP/1.1 %d", status) == 1, "not an HTTP answer: %s", buf);
    }
    close(fd);
    return dt;
}

Test(serve_conn, idle_connections_from_one_address_leave_room_for_others) {
    // 8 slots, 4 per address, and a long timeout: the per-address limit, not the timeout, keeps room
    Server s = server_start(ARGS("--max-conns", "8", "--max-conns-per-ip", "4", "--conn-timeout", "60"));
    enum { IDLE = 8 };
    int idle[IDLE];
    for (int i = 0; i < IDLE; i++) idle[i] = connect_from("127.0.0.1", s.port, 20);
    usleep(200000); // the server has accepted (and refused) them
    int fd = connect_from("127.0.0.2", s.port, 3);
    const char *req = "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    int status;
    answer_or_close(fd, req, strlen(req), 3, &status);
    cr_assert_eq(status, 200, "another client should be served while one address holds idle connections");
    for (int i = 0; i < IDLE; i++) close(idle[i]);
    server_stop(&s);
}

Test(serve_conn, silent_requests_are_closed_within_the_timeout) {
    Server s = server_start(ARGS("--conn-timeout", "1"));
    // a TLS ClientHello's first bytes: no line end ever comes
    const unsigned char hello[] = {0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03};
    int status;
    double dt = answer_or_close(connect_to(s.port), hello, sizeof hello, 10, &status);
    cr_assert(dt < 5 && (status == 0 || status == 400), "binary garbage: status %d after %.1f s", status, dt);
    // a chunk of 2^64-1 bytes that stops coming
    const char *chunk = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                        "ffffffffffffffff\r\nabc";
    dt = answer_or_close(connect_to(s.port), chunk, strlen(chunk), 10, &status);
    cr_assert(dt < 5 && (status == 0 || status == 400 || status == 413), "endless chunk: status %d after %.1f s", status, dt);
    // a request line that stops halfway
    const char *half = "GET /health HTTP/1.1\r\nHost:";
    dt = answer_or_close(connect_to(s.port), half, strlen(half), 10, &status);
    cr_assert(dt < 5 && status == 0, "half a request: status %d after %.1f s", status, dt);
    expect_health(s.port);
    server_stop(&s);
}

Test(serve_conn, an_endless_body_is_closed_past_the_limit) {
    // the timeout is long: what closes the connection is the dropped body passing --max-body
    Server s = server_start(ARGS("--conn-timeout", "60", "--max-body", "1024"));
    int fd = connect_to(s.port);
    struct timeval tv = {.tv_sec = 10};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    const char *head = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n";
    cr_assert_eq(send(fd, head, strlen(head), MSG_NOSIGNAL), (ssize_t)strlen(head));
    char junk[1024];
    memset(junk, 'x', sizeof junk);
    double t0 = now_s();
    int closed = 0;
    for (int i = 0; i < 64 && !closed; i++) closed = send(fd, junk, sizeof junk, MSG_NOSIGNAL) < 0;
    char buf[256];
    ssize_t got = closed ? 0 : recv(fd, buf, sizeof buf, 0);
    cr_assert(closed || got >= 0 || errno == ECONNRESET, "64 KiB into a 2^64-1 byte chunk, the connection is still open "
              "after %.1f s (errno %s)", now_s() - t0, strerror(errno));
    close(fd);
    expect_health(s.port);
    server_stop(&s);
}

// A model with a context of 512 and width 256 (on the bundled corpus: the test corpus is shorter than a window):
// a request of 490 tokens runs for a good fraction of a second.
static const char *train_long(void) {
    const char *ckpt = cliutil_tmp("long.ckpt");
    Run r = RUN("train", "--preset", "tiny", "--layers", "4", "--width", "256", "--hidden", "1024", "--context", "512",
                "--steps", "1", "--batch", "1", "--eval-windows", "1", "--data", "data/tinyshakespeare.txt", "--out", ckpt,
                "--quiet");
    cliutil_expect_ok(&r, "train a long-context model");
    cliutil_run_free(&r);
    return ckpt;
}

// A gauge or counter of /metrics.
static long long metric(int port, const char *name) {
    Resp r = http(port, "GET", "/metrics", NULL, NULL);
    char pat[128];
    snprintf(pat, sizeof pat, "\n%s ", name);
    const char *p = strstr(r.body, pat);
    cr_assert_not_null(p, "no %s in %s", name, r.body);
    long long v = atoll(p + strlen(pat));
    free(r.body);
    return v;
}

Test(serve_conn, a_client_that_hangs_up_cancels_its_request) {
    Server s = server_start_ckpt(train_long(), ARGS("--max-tokens", "500", "--block", "16"));
    int fd = send_request(s.port, "POST", "/v1/completions", NULL, "{\"prompt\":\"the\",\"max_tokens\":490}");
    int running = 0;
    for (int i = 0; i < 2000 && !running; i++) { // until it generates
        running = metric(s.port, "kvlab_tokens_generated_total") > 0;
        if (!running) usleep(1000);
    }
    cr_assert(running, "the request never started");
    close(fd);
    int active = 1;
    for (int i = 0; i < 1000 && active; i++) {
        active = metric(s.port, "kvlab_requests_active") > 0;
        if (active) usleep(10000);
    }
    cr_assert(!active, "the request still runs 10 s after its client left");
    long long tokens = metric(s.port, "kvlab_tokens_generated_total");
    cr_assert_lt(tokens, 490, "a client that hung up should cancel its request; all %lld tokens were generated", tokens);
    cr_assert_eq(metric(s.port, "kvlab_pool_blocks{state=\"used\"}"), 0);
    expect_health(s.port);
    server_stop(&s);
}
