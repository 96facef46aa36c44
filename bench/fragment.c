// build/bench --fragmentation: the paged KV pool against contiguous caches that each reserve the maximum length,
// under one KV budget, on a variable-length workload and on a fixed-length control (fragment.h; the harness is
// fragment_run.c). Flags, the two workloads, and the table or JSON lines.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/args.h"
#include "../common/common.h"
#include "../kv/paged.h"
#include "../layers/cpu_ops.h"
#include "fragment.h"

typedef struct {
    int json, budget_mb, block, max_len, requests;
    uint64_t seed;
} FragOpts;

static void frag_usage(FILE *f) {
    fprintf(f,
            "usage: build/bench --fragmentation [--json] [--frag-budget-mb M] [--frag-block B] [--frag-max-len L]\n"
            "                   [--frag-seed S] [--frag-requests N]\n"
            "  vLLM's comparison: a paged KV pool against contiguous caches that each reserve the maximum length\n"
            "  up front, with the same KV budget. Model: the baby preset with %d heads of 16 (4 layers, width 128,\n"
            "  vocabulary %d, random weights), fp32 keys and values (4096 bytes a token). Workloads: N requests\n"
            "  whose lengths (prompt + output) are %s; then the control, every request L tokens.\n"
            "  Contiguous: each admitted request gets a cache of capacity L (L tokens reserved). Paged: a pool of\n"
            "  floor(M / (B tokens x 4096 bytes)) blocks; a request takes blocks for its actual length. Both admit\n"
            "  first come, first served and stop at the first request that does not fit. Each admitted sequence is\n"
            "  filled (not timed) to its length - %d, then all are decoded together for 1 + %d steps (one forward\n"
            "  of every row a step; the first step untimed), ending at their full lengths. Reported per side:\n"
            "  requests admitted, bytes holding token states against bytes reserved (contiguous) or allocated\n"
            "  (paged, from the pool's counters), utilisation = used / reserved, the paged side's waste in its\n"
            "  last blocks, decode tokens/s of the admitted batch (noisy).\n"
            "  --json                one JSON object per workload (\"bench\": \"fragmentation\")\n"
            "  --frag-budget-mb M    the KV budget in MiB, 1..1024 (default 64)\n"
            "  --frag-block B        paged block size in tokens, 1..%d (default 16)\n"
            "  --frag-max-len L      the maximum request length, %d..8192 (default 1024)\n"
            "  --frag-seed S         the workload's seed (default 1)\n"
            "  --frag-requests N     requests in each workload, 1..4096 (default 256)\n",
            FRAG_HEADS, FRAG_VOCAB, FRAG_DISTRIBUTION, FRAG_DECODE_STEPS + 1, FRAG_DECODE_STEPS, KV_BLOCK_MAX,
            FRAG_MIN_LEN);
}

// The command line into o; 0, 2 for --help, or -1 with one line in err.
static int frag_parse(int argc, char **argv, FragOpts *o, char *err) {
    *o = (FragOpts){.budget_mb = 64, .block = 16, .max_len = 1024, .requests = 256, .seed = 1};
    Args a;
    args_init(&a, argc, argv);
    int r;
    while ((r = args_next(&a)) != 0) {
        if (r < 0) return err_set(err, "%s", a.err), -1;
        if (args_is(&a, "--help") || args_is(&a, "-h")) return 2;
        if (args_is(&a, "--fragmentation") || args_is(&a, "--json")) {
            if (a.value) return err_set(err, "%s takes no value", a.flag), -1;
            if (args_is(&a, "--json")) o->json = 1;
            continue;
        }
        struct {
            const char *name;
            int *dst, lo, hi;
        } ints[] = {{"--frag-budget-mb", &o->budget_mb, 1, 1024},
                    {"--frag-block", &o->block, 1, KV_BLOCK_MAX},
                    {"--frag-max-len", &o->max_len, FRAG_MIN_LEN, 8192},
                    {"--frag-requests", &o->requests, 1, 4096}};
        int matched = 0;
        for (size_t i = 0; i < sizeof ints / sizeof ints[0] && !matched; i++)
            if (args_is(&a, ints[i].name)) {
                if (args_int(&a, ints[i].lo, ints[i].hi, ints[i].dst) != 0) return err_set(err, "%s", a.err), -1;
                matched = 1;
            }
        if (matched) continue;
        if (args_is(&a, "--frag-seed")) {
            if (args_u64(&a, &o->seed) != 0) return err_set(err, "%s", a.err), -1;
            continue;
        }
        return err_set(err, "unknown flag '%s' with --fragmentation (see build/bench --fragmentation --help)",
                       a.flag), -1;
    }
    return 0;
}

static double mib(size_t bytes) { return bytes / (1024.0 * 1024.0); }

static double ratio(size_t a, size_t b) { return b ? (double)a / b : 0.0; }

static double tokens_per_s(const FragSide *s) { return s->seconds > 0 ? s->admitted * FRAG_DECODE_STEPS / s->seconds : 0; }

// One workload through both sides; prints its table or JSON line. 0, or -1 with a message in err.
static int frag_workload_run(const FragOpts *o, const Model *m, int variable, char *err) {
    const ModelConfig *c = &m->cfg;
    size_t token_bytes = frag_token_bytes(c), budget = (size_t)o->budget_mb << 20;
    int n_blocks = frag_pool_blocks(budget, o->block, token_bytes);
    int *lens = common_calloc((size_t)o->requests, sizeof(int));
    frag_workload(lens, o->requests, o->max_len, o->seed, variable);
    double len_mean = 0;
    for (int i = 0; i < o->requests; i++) len_mean += lens[i];
    len_mean /= o->requests;
    int contig_n = frag_admit_contiguous(o->requests, budget, o->max_len, token_bytes);
    int paged_n = frag_admit_paged(lens, o->requests, n_blocks, o->block);
    int64_t blocks_needed = 0;
    for (int i = 0; i < paged_n; i++) blocks_needed += (lens[i] + o->block - 1) / o->block;
    FragSide cs, ps;
    int rc = frag_run_contiguous(m, lens, contig_n, o->max_len, &cs, err);
    if (rc == 0) rc = frag_run_paged(m, lens, paged_n, o->max_len, o->block, n_blocks, &ps, err);
    else ps = (FragSide){0};
    if (rc == 0 && ps.blocks_used != blocks_needed)
        err_set(err, "the pool holds %d blocks, admission counted %lld", ps.blocks_used, (long long)blocks_needed),
            rc = -1;
    // Requests admitted by both decode the same tokens over the same states: their logits must agree.
    double diff = 0;
    int common = contig_n < paged_n ? contig_n : paged_n;
    for (size_t j = 0; rc == 0 && j < (size_t)common * c->vocab_size; j++) {
        double d = fabs((double)cs.logits[j] - ps.logits[j]);
        diff = d > diff ? d : diff;
    }
    if (rc == 0 && !(diff < 1e-3))
        err_set(err, "paged and contiguous logits differ by %g for the same requests", diff), rc = -1;
    if (rc == 0 && o->json) {
        printf("{\"bench\": \"fragmentation\", \"workload\": \"%s\", \"distribution\": \"%s\", \"seed\": %llu, "
               "\"budget_bytes\": %zu, \"block\": %d, \"max_len\": %d, \"requests\": %d, \"len_mean\": %.2f, "
               "\"token_bytes\": %zu, ",
               variable ? "variable" : "fixed", variable ? FRAG_DISTRIBUTION : "all max_len",
               (unsigned long long)o->seed, budget, o->block, o->max_len, o->requests, len_mean, token_bytes);
        printf("\"contig_admitted\": %d, \"contig_used_bytes\": %zu, \"contig_reserved_bytes\": %zu, "
               "\"contig_utilisation\": %.4f, ",
               cs.admitted, cs.used_bytes, cs.reserved_bytes, ratio(cs.used_bytes, cs.reserved_bytes));
        printf("\"paged_admitted\": %d, \"paged_used_bytes\": %zu, \"paged_allocated_bytes\": %zu, "
               "\"paged_utilisation\": %.4f, \"paged_last_block_waste\": %.4f, \"paged_blocks_used\": %d, "
               "\"paged_blocks_total\": %d, \"paged_pool_bytes\": %zu, ",
               ps.admitted, ps.used_bytes, ps.reserved_bytes, ratio(ps.used_bytes, ps.reserved_bytes),
               ps.last_block_waste, ps.blocks_used, ps.blocks_total, ps.pool_bytes);
        printf("\"contig_tokens_per_s\": %.1f, \"paged_tokens_per_s\": %.1f, \"decode_steps\": %d, \"runs\": %d, "
               "\"logits_max_abs_diff\": %.3g}\n",
               tokens_per_s(&cs), tokens_per_s(&ps), FRAG_DECODE_STEPS, FRAG_RUNS, diff);
    } else if (rc == 0) {
        printf("\nworkload %s: %d requests, lengths %s, mean %.1f tokens\n", variable ? "variable" : "fixed",
               o->requests, variable ? FRAG_DISTRIBUTION : "all max_len", len_mean);
        printf("  %-10s %8s %11s %12s %12s %11s %7s %10s\n", "side", "admitted", "tokens", "used MiB",
               "reserved MiB", "utilisation", "waste", "tokens/s");
        const FragSide *sides[] = {&cs, &ps};
        const char *names[] = {"contiguous", "paged"};
        for (int s = 0; s < 2; s++) {
            const FragSide *x = sides[s];
            double u = ratio(x->used_bytes, x->reserved_bytes);
            printf("  %-10s %8d %11lld %12.2f %12.2f %11.3f %6.1f%% %10.0f\n", names[s], x->admitted,
                   (long long)x->tokens, mib(x->used_bytes), mib(x->reserved_bytes), u, 100 * (1 - u),
                   tokens_per_s(x));
        }
        printf("  paged: %d of %d blocks used (%.2f of %.2f MiB); last-block waste %.2f%% of allocated slots; "
               "admitted %.2fx contiguous; logits of shared requests agree to %.2g\n",
               ps.blocks_used, ps.blocks_total, mib(ps.reserved_bytes), mib(ps.pool_bytes),
               100 * ps.last_block_waste, cs.admitted ? (double)ps.admitted / cs.admitted : 0.0, diff);
    }
    fflush(stdout);
    frag_side_free(&cs);
    frag_side_free(&ps);
    common_free(lens);
    return rc;
}

int bench_fragmentation_main(int argc, char **argv) {
    FragOpts o;
    char err[ERR_LEN];
    int r = frag_parse(argc, argv, &o, err);
    if (r == 2) {
        frag_usage(stdout);
        return 0;
    }
    ModelConfig mc = frag_model_config(o.max_len);
    if (r == 0 && frag_pool_blocks((size_t)o.budget_mb << 20, o.block, frag_token_bytes(&mc)) < 1)
        err_set(err, "--frag-budget-mb %d holds no block of %d tokens (%zu bytes a token)", o.budget_mb, o.block,
                frag_token_bytes(&mc)), r = -1;
    if (r == 0 && frag_admit_contiguous(1, (size_t)o.budget_mb << 20, o.max_len, frag_token_bytes(&mc)) < 1)
        err_set(err, "--frag-budget-mb %d holds no request of --frag-max-len %d (%zu bytes a token): nothing to compare",
                o.budget_mb, o.max_len, frag_token_bytes(&mc)), r = -1;
    if (r != 0) {
        fprintf(stderr, "bench: %s\n", err);
        return 1;
    }
    Model m;
    model_init(&m, &mc, &ops_cpu);
    model_init_weights(&m, 1);
    if (!o.json) {
        printf("fragmentation: a paged KV pool against contiguous max-length caches, one budget of %d MiB\n"
               "model: baby with %d heads of 16 (4 layers, width 128, vocabulary %d, random weights), fp32 KV, "
               "%zu bytes a token\n"
               "contiguous: a cache of capacity max_len = %d per admitted request; paged: %d blocks of %d tokens, "
               "a request's blocks for its actual length;\nboth first come, first served; seed %llu; then %d "
               "decode steps of every admitted sequence at once (after one untimed step), tokens/s noisy\n",
               o.budget_mb, FRAG_HEADS, FRAG_VOCAB, frag_token_bytes(&mc), o.max_len,
               frag_pool_blocks((size_t)o.budget_mb << 20, o.block, frag_token_bytes(&mc)), o.block,
               (unsigned long long)o.seed, FRAG_DECODE_STEPS);
    }
    int rc = 0;
    for (int variable = 1; variable >= 0 && rc == 0; variable--) rc = frag_workload_run(&o, &m, variable, err);
    model_free(&m);
    if (rc != 0) {
        fprintf(stderr, "bench: %s\n", err);
        return 1;
    }
    return 0;
}
