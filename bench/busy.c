// The competing busy process for build/bench --busy (bench.h): a forked child pinned to the last CPU that
// spins until killed. Pinned so it takes one core, as another user's job would, and the benchmark's own
// threads are left to the scheduler as in real use.
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <errno.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"

pid_t busy_start(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "bench: cannot fork the busy process: %s\n", strerror(errno));
        return -1;
    }
    if (pid == 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(n > 1 ? (int)n - 1 : 0, &set);
        sched_setaffinity(0, sizeof(set), &set); // best effort: unpinned it still takes a core's worth
        volatile unsigned long spin = 0;
        for (;;) spin++;
    }
    usleep(50 * 1000); // let it get scheduled before the measurement starts
    return pid;
}

void busy_stop(pid_t pid) {
    if (pid <= 0) return;
    kill(pid, SIGKILL);
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
    }
}

double bench_quiet_busy(const BenchOpts *o, double (*measure)(void *ctx, const char *load), void *ctx,
                        double *busy_value) {
    double quiet = measure(ctx, o->busy ? "quiet" : NULL);
    *busy_value = 0.0;
    if (!o->busy) return quiet;
    pid_t pid = busy_start();
    if (pid < 0) return quiet;
    *busy_value = measure(ctx, "busy");
    busy_stop(pid);
    if (o->json)
        printf("{\"bench\": \"busy_ratio\", \"busy_over_quiet\": %.3f}\n", quiet > 0 ? *busy_value / quiet : 0.0);
    else
        printf("       busy / quiet = %.2f\n", quiet > 0 ? *busy_value / quiet : 0.0);
    fflush(stdout);
    return quiet;
}
