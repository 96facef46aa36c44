// The --log file of build/train: one JSON object per optimizer step. Every write is checked (a full disk or
// /dev/full is an error the run stops on, never a silently empty log), and a number that is not finite is
// written as null, so every line stays JSON.
#ifndef KVLAB_RUNLOG_H
#define KVLAB_RUNLOG_H

#include <stdio.h>

typedef struct {
    FILE *f;          // NULL: no log (every call is then a no-op that succeeds)
    const char *path;
} TrainLog;

typedef struct {
    int step;
    float train_loss;
    int evaluated;    // 0: the line has no val_loss key
    float val_loss;
    float lr;
    float grad_norm;
    double tokens_per_s;
} TrainLogLine;

// Opens path for writing (appending when append). Returns 0, or -1 with one line in err.
int train_log_open(TrainLog *log, const char *path, int append, char *err);
// Writes one line and flushes it to the file. Returns 0, or -1 with one line in err naming the file and why.
int train_log_write_step(TrainLog *log, const TrainLogLine *line, char *err);
// Closes the log (also after a failure). Returns 0, or -1 with one line in err when the last data could not be
// written.
int train_log_close(TrainLog *log, char *err);

#endif
