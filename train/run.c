// The training loop (run.h): one optimizer step at a time, validation and a save at each evaluation, one log
// line per step, and the divergence checks before anything is saved. With several ranks (train/dist.h) every
// rank steps; rank 0 alone validates, logs and saves, and after each of those every rank learns whether it failed
// (dist_agree), so a failure on rank 0 stops all of them with the same line instead of leaving them waiting.
#include "run.h"

#include <math.h>
#include <unistd.h>

#include "../common/progress.h"
#include "dist.h"
#include "state_io.h"

// Writes into what the first weight that is NaN or infinite and returns 1; 0 when all are finite.
static int weights_nonfinite(const Model *m, char *what, size_t len) {
    float *host = m->ops->on_device ? common_calloc(m->n_params, sizeof(float)) : NULL;
    if (host) model_params_download(m, host);
    int bad = model_params_describe_nonfinite(&m->cfg, host ? host : m->params_memory, what, len);
    common_free(host);
    return bad;
}

// NaN printed as "nan" whatever its sign bit (%g would print "-nan").
static double shown(float x) { return isnan(x) ? (double)NAN : (double)x; }

// The divergence line, with what is left at out: the checkpoint this run saved last, the file that was there
// before, or nothing.
static void set_diverged(char *err, int step, const char *what, const char *out, int saved_step) {
    if (saved_step > 0)
        err_set(err, "diverged at step %d (%s); last good checkpoint kept: %s (step %d)", step, what, out, saved_step);
    else if (access(out, F_OK) == 0)
        err_set(err, "diverged at step %d (%s); nothing saved, %s left as it was", step, what, out);
    else
        err_set(err, "diverged at step %d (%s); no checkpoint was written", step, what);
}

// Saves the checkpoint on rank 0; with ZeRO-1 the moments are first gathered there (a collective). 0 or -1.
static int save(TrainRun *r, char *err) {
    const TrainState *s = r->st;
    TrainState full = {0};
    if (s->shard_n != r->model->n_params) {
        train_state_gather(&full, s, r->model->n_params);
        s = &full;
    }
    int rc = dist_rank() == 0 ? train_save_checkpoint(r->out, r->model, r->tok, r->tc, s, err) : 0;
    train_state_free(&full);
    return rc;
}

int train_run_loop(TrainRun *r, char *err) {
    const TrainConfig *tc = r->tc;
    int root = dist_rank() == 0;
    size_t bt = (size_t)tc->batch_size * tc->seq_len;
    int *inputs = common_calloc(bt, sizeof(int));
    int *targets = common_calloc(bt, sizeof(int));
    Progress prog;
    progress_init(&prog, r->st->step, r->last, common_stderr_is_tty(), r->quiet || !root);
    r->train_loss = 0.0f;
    r->val_loss = -1.0f;
    double t_start = common_now();
    double tokens_per_step = (double)bt * tc->grad_accum; // over all ranks
    int saved_step = -1;
    int rc = 0;
    while (r->st->step < r->last) {
        int step = r->st->step + 1;
        double t0 = common_now();
        float norm = 0.0f;
        float lr = schedule_lr(tc, r->st->step);
        float loss = train_step(r->model, r->st, tc, r->corpus, inputs, targets, &norm);
        TrainLogLine line = {.step = step, .train_loss = loss, .lr = lr, .grad_norm = norm,
                             .tokens_per_s = tokens_per_step / (common_now() - t0)};
        char what[256] = "";
        if (!isfinite(loss) || !isfinite(norm)) snprintf(what, sizeof what, "loss %g, grad norm %g", shown(loss), shown(norm));
        int evaluate = !what[0] && (step == r->last || (tc->eval_interval > 0 && step % tc->eval_interval == 0));
        if (evaluate && root) {
            line.evaluated = 1;
            line.val_loss = train_eval(r->model, tc, r->corpus, inputs, targets);
            char weights[160];
            if (!isfinite(line.val_loss))
                snprintf(what, sizeof what, "loss %g, grad norm %g, validation loss %g", loss, norm,
                         shown(line.val_loss));
            else if (weights_nonfinite(r->model, weights, sizeof weights))
                snprintf(what, sizeof what, "loss %g, grad norm %g, %s", loss, norm, weights);
        }
        if (!what[0]) progress_update(&prog, step, loss, evaluate ? line.val_loss : -1.0f, lr, line.tokens_per_s);
        int failed = train_log_write_step(r->log, &line, err) != 0; // the log is open on rank 0 only
        if (!failed && what[0]) {
            set_diverged(err, step, what, r->out, saved_step);
            failed = 1;
        }
        if (dist_agree(failed, err) != 0) {
            rc = -1;
            break;
        }
        r->train_loss = loss;
        if (evaluate) {
            r->val_loss = line.val_loss;
            if (dist_agree(save(r, err) != 0, err) != 0) {
                rc = -1;
                break;
            }
            saved_step = step;
        }
    }
    progress_end(&prog);
    r->elapsed = common_now() - t_start;
    r->tokens_per_s = (double)(r->st->step - prog.first) * tokens_per_step / r->elapsed;
    common_free(inputs);
    common_free(targets);
    return rc;
}

