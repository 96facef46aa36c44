#include "progress.h"

#include <stdio.h>

#include "common.h"

void progress_init(Progress *p, int first_step, int last_step, int live, int quiet) {
    p->first = first_step;
    p->last = last_step;
    p->live = live && !quiet;
    p->quiet = quiet;
    p->t_start = common_now();
    p->drawn = 0;
    p->tokens_per_s = 0.0;
}

static void format_eta(char *out, size_t len, double s) {
    if (s < 60) snprintf(out, len, "%.0fs", s);
    else if (s < 3600) snprintf(out, len, "%dm%02ds", (int)s / 60, (int)s % 60);
    else snprintf(out, len, "%dh%02dm", (int)s / 3600, ((int)s % 3600) / 60);
}

void progress_update(Progress *p, int step, float loss, float val_loss, float lr, double tokens_per_s) {
    if (p->quiet) return;
    p->tokens_per_s = p->tokens_per_s > 0 ? 0.9 * p->tokens_per_s + 0.1 * tokens_per_s : tokens_per_s;
    tokens_per_s = p->tokens_per_s;
    double elapsed = common_now() - p->t_start;
    int done = step - p->first, left = p->last - step;
    char eta[32];
    format_eta(eta, sizeof(eta), done > 0 ? elapsed / done * left : 0.0);
    if (p->live) {
        fprintf(stderr, "\r\033[2Kstep %d/%d | loss %.4f", step, p->last, loss);
        if (val_loss >= 0) fprintf(stderr, " | val %.4f", val_loss);
        fprintf(stderr, " | lr %.2e | %.0f tok/s | ETA %s", lr, tokens_per_s, eta);
        fflush(stderr);
        p->drawn = 1;
        if (val_loss >= 0) { // keep evaluation lines in the scrollback
            fprintf(stderr, "\n");
            p->drawn = 0;
        }
    } else if (val_loss >= 0) {
        fprintf(stderr, "step %d/%d | loss %.4f | val %.4f | lr %.2e | %.0f tok/s | ETA %s\n", step, p->last, loss,
                val_loss, lr, tokens_per_s, eta);
    }
}

void progress_end(Progress *p) {
    if (p->live && p->drawn) fprintf(stderr, "\n");
    p->drawn = 0;
}
