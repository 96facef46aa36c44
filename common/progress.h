// The one-line live progress display of long runs (only on a terminal), then nothing but the caller's
// summary. Off a terminal, a plain line is printed at each evaluation instead.
#ifndef KVLAB_PROGRESS_H
#define KVLAB_PROGRESS_H

typedef struct {
    int first, last;   // step range of this run
    int live;          // redraw one line in place
    int quiet;         // print nothing at all
    double t_start;
    int drawn;
    double tokens_per_s; // smoothed (exponential moving average) for display
} Progress;

void progress_init(Progress *p, int first_step, int last_step, int live, int quiet);
// val_loss < 0 means "not evaluated at this step".
void progress_update(Progress *p, int step, float loss, float val_loss, float lr, double tokens_per_s);
void progress_end(Progress *p);

#endif
