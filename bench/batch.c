// build/bench --decode-batch: what fewer key/value heads buy at inference (the GQA paper's "faster inference,
// larger batches on the same hardware"), on the model of the report's tier 2 (batch.h) with random weights.
// Per kv-head count, context T and batch B: B sequences, each with its own full fp32 cache filled to T - 16
// tokens of one prompt (not timed), then 16 decode steps of all B sequences at once (one decode_forward of B
// rows a step, a store per row), timed: decode tokens/s = B * 16 / time, ms per step, KV bytes per sequence
// and in all; min, median and max of R runs after a warm-up. Then, per kv-head count and context, the largest
// batch whose caches fit a KV budget, and its throughput.
#include <stdio.h>
#include <stdlib.h>

#include "../common/common.h"
#include "../layers/cpu_ops.h"
#include "batch.h"
#include "bench.h"

typedef struct {
    double tps_min, tps_med, tps_max, ms_step_med;
    size_t bytes_per_seq;
} BatchResult;

typedef struct {
    double record, fill, decode; // seconds spent in each, for the closing line
} BatchTimes;

// How many whole sequences of `per_seq` bytes fit in `budget` bytes, before the cap.
static double floor_div(double budget, size_t per_seq) { return (double)(long long)(budget / (double)per_seq); }

static const char *attn_name(int kv_heads, char *buf, size_t n) {
    if (kv_heads == BATCH_HEADS) snprintf(buf, n, "mha");
    else if (kv_heads == 1) snprintf(buf, n, "mqa");
    else snprintf(buf, n, "gqa:%d", kv_heads);
    return buf;
}

// One point: fill, then 16 timed steps, o->decode_runs + 1 times (the first warms up).
static int batch_measure(const BenchOpts *o, const Model *m, const BatchPrompt *p, int B, int T, BatchResult *res,
                         BatchTimes *tm, char *err) {
    BatchRun r;
    if (batch_run_init(&r, m, B, T, err) != 0) return -1;
    double tps[o->decode_runs], ms[o->decode_runs];
    int rc = 0;
    for (int run = 0; run <= o->decode_runs && rc == 0; run++) {
        double t0 = common_now();
        if (batch_run_fill(&r, p, err) != 0) {
            rc = -1;
            break;
        }
        double t1 = common_now();
        for (int s = 0; s < BATCH_DECODE_STEPS && rc == 0; s++) rc = batch_run_step(&r, s, err);
        double t2 = common_now();
        tm->fill += t1 - t0, tm->decode += t2 - t1;
        if (run > 0) tps[run - 1] = (double)B * BATCH_DECODE_STEPS / (t2 - t1), ms[run - 1] = (t2 - t1) * 1e3 / BATCH_DECODE_STEPS;
    }
    if (rc == 0) {
        res->bytes_per_seq = kv_cache_bytes(r.kv[0]);
        CHECK(res->bytes_per_seq == batch_kv_bytes_per_seq(&m->cfg, T)); // the budget's arithmetic is the cache's
        CHECK(kv_cache_tokens(r.kv[B - 1], 0) == T);
        qsort(tps, o->decode_runs, sizeof(double), bench_cmp_double);
        qsort(ms, o->decode_runs, sizeof(double), bench_cmp_double);
        res->tps_min = tps[0], res->tps_med = tps[o->decode_runs / 2], res->tps_max = tps[o->decode_runs - 1];
        res->ms_step_med = ms[o->decode_runs / 2];
    }
    batch_run_free(&r);
    return rc;
}

static void print_point(const BenchOpts *o, int kv, int B, int T, const BatchResult *r) {
    char attn[16], per[32], total[32];
    double all = (double)B * r->bytes_per_seq;
    if (o->json) {
        printf("{\"bench\": \"decode_batch\", \"kv_heads\": %d, \"heads\": %d, \"attn\": \"%s\", \"batch\": %d, "
               "\"context\": %d, \"decode_steps\": %d, \"dtype\": \"fp32\", \"tokens_per_s_min\": %.1f, "
               "\"tokens_per_s_median\": %.1f, \"tokens_per_s_max\": %.1f, \"ms_per_step_median\": %.3f, "
               "\"kv_bytes_per_seq\": %zu, \"kv_bytes_total\": %.0f, \"runs\": %d}\n",
               kv, BATCH_HEADS, attn_name(kv, attn, sizeof attn), B, T, BATCH_DECODE_STEPS, r->tps_min, r->tps_med,
               r->tps_max, r->ms_step_med, r->bytes_per_seq, all, o->decode_runs);
    } else {
        bench_fmt_bytes(per, sizeof per, (double)r->bytes_per_seq);
        bench_fmt_bytes(total, sizeof total, all);
        printf("%2d %-6s %5d %6d %10.0f (%8.0f - %8.0f) %9.3f %11s %11s\n", kv, attn_name(kv, attn, sizeof attn), B,
               T, r->tps_med, r->tps_min, r->tps_max, r->ms_step_med, per, total);
    }
    fflush(stdout);
}

static void print_budget(const BenchOpts *o, int kv, int T, size_t per_seq, int bmax, int capped,
                         const BatchResult *r) {
    char attn[16], per[32], total[32], note[48] = "";
    double budget = (double)o->budget_mb * 1024 * 1024, all = (double)bmax * per_seq;
    if (o->json) {
        printf("{\"bench\": \"decode_budget\", \"kv_heads\": %d, \"heads\": %d, \"attn\": \"%s\", \"context\": %d, "
               "\"budget_bytes\": %.0f, \"kv_bytes_per_seq\": %zu, \"max_batch\": %d, \"capped\": %s, "
               "\"cap\": %d, \"kv_bytes_total\": %.0f, ",
               kv, BATCH_HEADS, attn_name(kv, attn, sizeof attn), T, budget, per_seq, bmax,
               capped ? "true" : "false", BATCH_MAX_CAP, all);
        if (bmax > 0)
            printf("\"tokens_per_s_min\": %.1f, \"tokens_per_s_median\": %.1f, \"tokens_per_s_max\": %.1f, "
                   "\"ms_per_step_median\": %.3f, \"runs\": %d}\n",
                   r->tps_min, r->tps_med, r->tps_max, r->ms_step_med, o->decode_runs);
        else
            printf("\"tokens_per_s_min\": null, \"tokens_per_s_median\": null, \"tokens_per_s_max\": null, "
                   "\"ms_per_step_median\": null, \"runs\": 0}\n");
    } else {
        bench_fmt_bytes(per, sizeof per, (double)per_seq);
        bench_fmt_bytes(total, sizeof total, all);
        if (capped) snprintf(note, sizeof note, "  (capped at %d; %.0f fit)", BATCH_MAX_CAP, floor_div(budget, per_seq));
        if (bmax > 0)
            printf("%2d %-6s %6d %11s %5d %10.0f (%8.0f - %8.0f) %9.3f %11s%s\n", kv, attn_name(kv, attn, sizeof attn),
                   T, per, bmax, r->tps_med, r->tps_min, r->tps_max, r->ms_step_med, total, note);
        else
            printf("%2d %-6s %6d %11s %5d  (not one sequence fits the budget)\n", kv, attn_name(kv, attn, sizeof attn),
                   T, per, 0);
    }
    fflush(stdout);
}

int bench_decode_batch(const BenchOpts *o) {
    double start = common_now();
    int max_T = 0;
    for (int i = 0; i < o->n_contexts; i++) max_T = o->contexts[i] > max_T ? o->contexts[i] : max_T;
    int nk = o->n_kv_heads;
    Model models[MAX_LIST];
    BatchPrompt prompts[MAX_LIST];
    BatchTimes tm = {0};
    char err[ERR_LEN];
    int rc = 0;
    for (int k = 0; k < nk; k++) { // one model and one recorded prompt per kv-head count
        ModelConfig mc = batch_model_config(o->kv_heads[k], max_T);
        model_init(&models[k], &mc, &ops_cpu);
        model_init_weights(&models[k], 1);
        double t0 = common_now();
        CHECK(batch_prompt_record(&prompts[k], &models[k], max_T - BATCH_DECODE_STEPS, err) == 0);
        tm.record += common_now() - t0;
    }
    const ModelConfig *c0 = &models[0].cfg;
    if (!o->json) {
        printf("decode batch: the baby preset with %d query heads of %d (%d layers, width %d, hidden %d, vocabulary "
               "%d), random weights (seed 1), full fp32 caches\n",
               BATCH_HEADS, model_head_dim(c0), c0->n_layer, c0->n_embd, c0->n_hidden, c0->vocab_size);
        printf("each row: B sequences, each with its own cache filled to T-%d tokens of one prompt (not timed), then "
               "%d decode steps of all B at once\n(one forward of B rows a step), timed; tokens/s = B x %d / time: "
               "median (min - max) of %d runs after a warm-up\n",
               BATCH_DECODE_STEPS, BATCH_DECODE_STEPS, BATCH_DECODE_STEPS, o->decode_runs);
        printf("%-9s %5s %6s %10s %21s %9s %11s %11s\n", "kv heads", "B", "T", "tokens/s", "(min - max)", "ms/step",
               "KV/seq", "KV total");
    }
    for (int k = 0; k < nk && rc == 0; k++)
        for (int i = 0; i < o->n_contexts && rc == 0; i++)
            for (int j = 0; j < o->n_batches && rc == 0; j++) {
                BatchResult r;
                rc = batch_measure(o, &models[k], &prompts[k], o->batches[j], o->contexts[i], &r, &tm, err);
                if (rc == 0) print_point(o, o->kv_heads[k], o->batches[j], o->contexts[i], &r);
            }
    double budget = (double)o->budget_mb * 1024 * 1024;
    if (!o->json && rc == 0) {
        printf("\nlargest batch in a %d MiB KV budget: floor(budget / KV per sequence), at most %d sequences (KV per "
               "sequence: the fp32 rows plus a 4-byte\ntoken count per layer and kv head, as kv_cache_bytes reports "
               "it)\n",
               o->budget_mb, BATCH_MAX_CAP);
        printf("%-9s %6s %11s %5s %10s %21s %9s %11s\n", "kv heads", "T", "KV/seq", "B_max", "tokens/s",
               "(min - max)", "ms/step", "KV total");
    }
    for (int k = 0; k < nk && rc == 0; k++)
        for (int i = 0; i < o->n_contexts && rc == 0; i++) {
            int T = o->contexts[i], capped;
            size_t per_seq = batch_kv_bytes_per_seq(&models[k].cfg, T);
            int bmax = batch_max_batch(budget, per_seq, BATCH_MAX_CAP, &capped);
            BatchResult r = {0};
            if (bmax > 0) rc = batch_measure(o, &models[k], &prompts[k], bmax, T, &r, &tm, err);
            if (rc == 0) print_budget(o, o->kv_heads[k], T, per_seq, bmax, capped, &r);
        }
    double total = common_now() - start;
    if (rc != 0) fprintf(stderr, "bench: %s\n", err);
    else if (o->json)
        printf("{\"bench\": \"decode_batch_time\", \"seconds\": %.2f, \"prompt_seconds\": %.2f, "
               "\"fill_seconds\": %.2f, \"decode_seconds\": %.2f}\n",
               total, tm.record, tm.fill, tm.decode);
    else
        printf("\ntotal %.1f s: prompts through the model %.1f s, filling caches %.1f s, decode steps (warm-up "
               "included) %.1f s\n",
               total, tm.record, tm.fill, tm.decode);
    for (int k = 0; k < nk; k++) {
        batch_prompt_free(&prompts[k]);
        model_free(&models[k]);
    }
    return rc == 0 ? 0 : 1;
}
