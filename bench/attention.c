// build/bench --attention: naive causal attention (materialises (T, T)) against the CPU FlashAttention forward
// (attention/flash_cpu.c) as T grows: time (best of a few runs), slow-memory bytes moved as counted by the code
// next to the IO analysis' closed form, the memory each allocates for intermediates, and the largest output
// difference (bench.h: bench_attention).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../attention/attention.h"
#include "../attention/flash_cpu.h"
#include "../common/common.h"
#include "bench.h"

// --- attention: naive vs flash -----------------------------------------------------------------------------

// One sequence length's buffers: inputs, the production naive output (the reference), the counted naive's and
// flash's outputs, naive's (B, NH, T, T) probabilities and flash's log-sum-exp.
typedef struct {
    int T;
    size_t nq, nkv;
    float *q, *k, *v, *ref, *out_counted, *out_flash, *att, *lse;
} AttnBufs;

static float *random_floats(size_t n, Rng *rng) {
    float *x = common_calloc(n, sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = rng_normal(rng);
    return x;
}

static void attn_bufs_init(AttnBufs *a, const BenchOpts *o, int T) {
    a->T = T;
    a->nq = (size_t)o->B * T * o->NH * o->d;
    a->nkv = (size_t)o->B * T * o->NKV * o->d;
    Rng rng;
    rng_init(&rng, 1000 + (uint64_t)T); // fixed seeds: every figure reproducible
    a->q = random_floats(a->nq, &rng);
    a->k = random_floats(a->nkv, &rng);
    a->v = random_floats(a->nkv, &rng);
    a->ref = common_calloc(a->nq, sizeof(float));
    a->out_counted = common_calloc(a->nq, sizeof(float));
    a->out_flash = common_calloc(a->nq, sizeof(float));
    a->att = common_calloc((size_t)o->B * o->NH * T * T, sizeof(float));
    a->lse = common_calloc((size_t)o->B * o->NH * T, sizeof(float));
}

static void attn_bufs_free(AttnBufs *a) {
    common_free(a->q), common_free(a->k), common_free(a->v), common_free(a->ref);
    common_free(a->out_counted), common_free(a->out_flash), common_free(a->att), common_free(a->lse);
}

static void run_naive(const BenchOpts *o, AttnBufs *a) {
    attention_forward_cpu(a->ref, a->att, a->q, a->k, a->v, o->B, a->T, o->NH, o->NKV, o->d);
}

static void run_flash(const BenchOpts *o, AttnBufs *a) {
    FlashTiles tiles = {o->M, 0, 0};
    attention_flash_forward_cpu(a->out_flash, a->lse, a->q, a->k, a->v, o->B, a->T, o->NH, o->NKV, o->d, &tiles,
                                NULL);
}

// Best wall time in ms of o->runs runs after one warm-up (the counters are off: these are the real ops).
static double best_ms(const BenchOpts *o, AttnBufs *a, void (*fn)(const BenchOpts *, AttnBufs *)) {
    fn(o, a);
    double best = 1e30;
    for (int r = 0; r < o->runs; r++) {
        double t0 = common_now();
        fn(o, a);
        double ms = (common_now() - t0) * 1e3;
        best = ms < best ? ms : best;
    }
    return best;
}

static double max_abs_diff(const float *x, const float *y, size_t n) {
    double m = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = x[i] > y[i] ? (double)x[i] - y[i] : (double)y[i] - x[i];
        m = d > m ? d : m;
    }
    return m;
}

typedef struct {
    const char *algo;
    double ms, diff;
    AttnIO io;
    uint64_t formula;
} AttnResult;


static void print_attention_result(const BenchOpts *o, int T, int Br, int Bc, const AttnResult *r) {
    uint64_t moved = attn_io_total_bytes(&r->io);
    int flash = strcmp(r->algo, "flash") == 0;
    if (o->json) {
        printf("{\"bench\": \"attention\", \"algo\": \"%s\", \"T\": %d, \"d\": %d, \"M\": %d, \"B\": %d, \"NH\": %d, "
               "\"NKV\": %d, ",
               r->algo, T, o->d, o->M, o->B, o->NH, o->NKV);
        if (flash) printf("\"Br\": %d, \"Bc\": %d, ", Br, Bc);
        else printf("\"Br\": null, \"Bc\": null, ");
        printf("\"ms\": %.3f, \"bytes_moved\": %llu, \"bytes_read\": %llu, \"bytes_written\": %llu, "
               "\"bytes_formula\": %llu, \"intermediate_bytes\": %llu, \"max_abs_diff\": %.3g, \"runs\": %d}\n",
               r->ms, (unsigned long long)moved, (unsigned long long)attn_io_read_bytes(&r->io),
               (unsigned long long)attn_io_write_bytes(&r->io), (unsigned long long)r->formula,
               (unsigned long long)r->io.intermediate_bytes, r->diff, o->runs);
    } else {
        char mv[32], fm[32], im[32];
        bench_fmt_bytes(mv, sizeof(mv), (double)moved);
        bench_fmt_bytes(fm, sizeof(fm), (double)r->formula);
        bench_fmt_bytes(im, sizeof(im), (double)r->io.intermediate_bytes);
        printf("%-6s %6d %10.3f %13s %13s %8.3f %14s %11.3g\n", r->algo, T, r->ms, mv, fm,
               (double)moved / (double)r->formula, im, r->diff);
    }
    fflush(stdout);
}

static void bench_attention_T(const BenchOpts *o, int T, int Br, int Bc) {
    AttnBufs a;
    attn_bufs_init(&a, o, T);
    AttnResult naive = {"naive", 0, 0, {0}, attention_naive_io_formula(o->B, T, o->NH, o->d)};
    AttnResult flash = {"flash", 0, 0, {0}, attention_flash_io_formula(o->B, T, o->NH, o->d, Br)};
    naive.ms = best_ms(o, &a, run_naive);
    flash.ms = best_ms(o, &a, run_flash);
    // Counting runs, apart from the timed ones. The counted naive is attention_forward_cpu step for step, so its
    // difference from the timed op's output is 0; flash is compared with the timed naive output.
    attention_forward_counted_cpu(a.out_counted, a.att, a.q, a.k, a.v, o->B, T, o->NH, o->NKV, o->d, &naive.io);
    FlashTiles tiles = {o->M, 0, 0};
    attention_flash_forward_cpu(a.out_flash, a.lse, a.q, a.k, a.v, o->B, T, o->NH, o->NKV, o->d, &tiles, &flash.io);
    naive.diff = max_abs_diff(a.out_counted, a.ref, a.nq);
    flash.diff = max_abs_diff(a.out_flash, a.ref, a.nq);
    print_attention_result(o, T, Br, Bc, &naive);
    print_attention_result(o, T, Br, Bc, &flash);
    attn_bufs_free(&a);
}

int bench_attention(const BenchOpts *o) {
    int Br, Bc;
    flash_tiles_resolve(&(FlashTiles){o->M, 0, 0}, o->d, &Br, &Bc);
    if (!o->json) {
        printf("attention, causal fp32: B=%d NH=%d NKV=%d d=%d; flash tiles from M=%d floats (%.1f KiB): Br=%d Bc=%d; "
               "best of %d runs\n",
               o->B, o->NH, o->NKV, o->d, o->M, o->M * 4.0 / 1024, Br, Bc, o->runs);
        printf("bytes moved: slow-memory traffic counted by the code; formula: the IO analysis' dense closed form\n"
               "(naive 4(4Td+4T^2) B NH, flash 4(2Td+2Td*ceil(T/Br)+T) B NH); intermediate: T x T buffers / tiles\n");
        printf("%-6s %6s %10s %13s %13s %8s %14s %11s\n", "algo", "T", "ms", "bytes moved", "formula", "ratio",
               "intermediate", "max|diff|");
    }
    for (int i = 0; i < o->n_ts; i++) bench_attention_T(o, o->ts[i], Br, Bc);
    return 0;
}

// --- flags -------------------------------------------------------------------------------------------------

// Parses "128,256,..." into dst (at most max numbers, each in lo..hi; what names them in a message); returns -1
// with a message in err on a malformed list.
