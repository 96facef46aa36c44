// The --log file (runlog.h): JSON lines, checked writes, null for a number that is not finite.
#include "runlog.h"

#include <errno.h>
#include <math.h>
#include <string.h>

#include "../common/common.h"

int train_log_open(TrainLog *log, const char *path, int append, char *err) {
    log->path = path;
    log->f = fopen(path, append ? "a" : "w");
    if (!log->f) {
        err_set(err, "cannot open log file '%s' for writing: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

// ", \"key\": value" with %.9g, or null when the value is NaN or infinite.
static void put_number(FILE *f, const char *key, double v, const char *fmt) {
    fprintf(f, ", \"%s\": ", key);
    if (isfinite(v)) fprintf(f, fmt, v);
    else fputs("null", f);
}

int train_log_write_step(TrainLog *log, const TrainLogLine *line, char *err) {
    if (!log->f) return 0;
    FILE *f = log->f;
    fprintf(f, "{\"step\": %d", line->step);
    put_number(f, "train_loss", line->train_loss, "%.9g");
    if (line->evaluated) put_number(f, "val_loss", line->val_loss, "%.9g");
    put_number(f, "lr", line->lr, "%.9g");
    put_number(f, "grad_norm", line->grad_norm, "%.6g");
    put_number(f, "tokens_per_s", line->tokens_per_s, "%.1f");
    fputs("}\n", f);
    errno = 0;
    if (fflush(f) != 0 || ferror(f)) {
        err_set(err, "cannot write log file '%s' at step %d: %s", log->path, line->step,
                errno ? strerror(errno) : "write error");
        return -1;
    }
    return 0;
}

int train_log_close(TrainLog *log, char *err) {
    if (!log->f) return 0;
    errno = 0;
    int failed = ferror(log->f) != 0;
    if (fclose(log->f) != 0) failed = 1;
    log->f = NULL;
    if (failed) {
        err_set(err, "cannot write log file '%s': %s", log->path, errno ? strerror(errno) : "write error");
        return -1;
    }
    return 0;
}
