// Command-line plumbing shared by the programs: --flag=value or --flag value, strict number parsing.
#ifndef KVLAB_ARGS_H
#define KVLAB_ARGS_H

#include <stdint.h>

typedef struct {
    int argc;
    char **argv;
    int i;             // index of the current argument
    const char *flag;  // current flag name without the value ("--steps")
    const char *value; // its value, when the flag has one
    char err[512];
} Args;

void args_init(Args *a, int argc, char **argv);
// Advances to the next argument; returns 0 at the end. A non-flag argument sets err and returns -1.
int args_next(Args *a);
// Whether the current flag is `name`. args_value() fetches its value (from "=..." or the next argument).
int args_is(Args *a, const char *name);
const char *args_value(Args *a);
// Strict parses of the current flag's value; on failure set a->err and return -1.
int args_int(Args *a, int lo, int hi, int *out);
int args_u64(Args *a, uint64_t *out);
int args_float(Args *a, float lo, float hi, float *out);
int args_string(Args *a, const char **out);

#endif
