// The training loop of build/train: steps, validation, saves, the --log lines, and divergence: a non-finite
// loss or gradient norm (the step is then not applied), validation loss or weight stops the run before
// anything is saved, so the last good checkpoint is kept.
#ifndef KVLAB_RUN_H
#define KVLAB_RUN_H

#include "runlog.h"
#include "trainer.h"

// The loop's inputs, and what it reports back for the summary line.
typedef struct {
    Model *model;
    TrainState *st;
    const TrainConfig *tc;
    const Corpus *corpus;
    const Tokenizer *tok;
    const char *out;            // checkpoint saved at each evaluation
    TrainLog *log;
    int last, quiet;            // last optimizer step of this run; no progress lines
    float train_loss, val_loss; // out: of the last step and the last evaluation (-1: none)
    double elapsed, tokens_per_s;
} TrainRun;

// Steps until r->last, evaluating every tc->eval_interval steps and at the end, saving at each evaluation.
// Returns 0, or -1 with one line in err: "diverged at step N (...); last good checkpoint kept: PATH", a failed
// log write, a failed save.
int train_run_loop(TrainRun *r, char *err);

#endif
