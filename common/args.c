#include "args.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void args_init(Args *a, int argc, char **argv) {
    memset(a, 0, sizeof(*a));
    a->argc = argc;
    a->argv = argv;
    a->i = 0;
}

int args_next(Args *a) {
    a->i++;
    if (a->i >= a->argc) return 0;
    const char *arg = a->argv[a->i];
    if (strncmp(arg, "--", 2) != 0 && !(arg[0] == '-' && arg[1] && arg[2] == 0)) {
        snprintf(a->err, sizeof(a->err), "unexpected argument '%s' (flags start with --; see --help)", arg);
        return -1;
    }
    static char name[128];
    const char *eq = strchr(arg, '=');
    size_t n = eq ? (size_t)(eq - arg) : strlen(arg);
    if (n >= sizeof(name)) n = sizeof(name) - 1;
    memcpy(name, arg, n);
    name[n] = 0;
    a->flag = name;
    a->value = eq ? eq + 1 : NULL;
    return 1;
}

int args_is(Args *a, const char *name) { return strcmp(a->flag, name) == 0; }

const char *args_value(Args *a) {
    if (a->value) return a->value;
    if (a->i + 1 < a->argc) {
        a->value = a->argv[++a->i];
        return a->value;
    }
    snprintf(a->err, sizeof(a->err), "%s needs a value", a->flag);
    return NULL;
}

int args_string(Args *a, const char **out) {
    const char *v = args_value(a);
    if (!v) return -1;
    *out = v;
    return 0;
}

int args_int(Args *a, int lo, int hi, int *out) {
    const char *v = args_value(a);
    if (!v) return -1;
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (*v == 0 || *end != 0 || errno) {
        snprintf(a->err, sizeof(a->err), "%s expects an integer, got '%s'", a->flag, v);
        return -1;
    }
    if (x < lo || x > hi) {
        snprintf(a->err, sizeof(a->err), "%s must be in %d..%d, got %ld", a->flag, lo, hi, x);
        return -1;
    }
    *out = (int)x;
    return 0;
}

int args_u64(Args *a, uint64_t *out) {
    const char *v = args_value(a);
    if (!v) return -1;
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (*v == 0 || *v == '-' || *end != 0 || errno) {
        snprintf(a->err, sizeof(a->err), "%s expects a non-negative integer, got '%s'", a->flag, v);
        return -1;
    }
    *out = x;
    return 0;
}

int args_float(Args *a, float lo, float hi, float *out) {
    const char *v = args_value(a);
    if (!v) return -1;
    char *end;
    errno = 0;
    float x = strtof(v, &end);
    if (*v == 0 || *end != 0 || errno || !isfinite(x)) {
        snprintf(a->err, sizeof(a->err), "%s expects a number, got '%s'", a->flag, v);
        return -1;
    }
    if (x < lo || x > hi) {
        snprintf(a->err, sizeof(a->err), "%s must be in [%g, %g], got %g", a->flag, lo, hi, x);
        return -1;
    }
    *out = x;
    return 0;
}
