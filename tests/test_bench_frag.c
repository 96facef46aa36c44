// build/bench --fragmentation (suite `bench_frag`): first-come-first-served admission on hand-computed numbers,
// the workload generator, the harness's byte accounts against the lengths it was given (the pool's counters and
// the caches' counts), a batch row against the same request decoded alone, paged rows against contiguous rows,
// and the command line: bad flags give one line and exit 1; a tiny JSON run's admissions, utilisations in
// [0, 1], paged admitting at least as many, the fixed-length control admitting equally. Speed is never tested.
//
// bench/ is a program, not part of the library the tests link, so its harness file is compiled into this test
// directly (it prints nothing and depends on the library only).
#include <criterion/criterion.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../bench/fragment_run.c"
#include "../layers/cpu_ops.h"
#include "cli_util.h"

TestSuite(bench_frag, .init = cliutil_setup, .fini = cliutil_teardown, .timeout = 60);

enum { TOKEN_BYTES = 4096 }; // 2 (K, V) x 4 layers x 8 heads x 16 dims x 4 bytes

Test(bench_frag, token_bytes_and_pool_blocks) {
    ModelConfig c = frag_model_config(64);
    cr_assert_eq(c.n_layer, 4);
    cr_assert_eq(c.n_head, 8);
    cr_assert_eq(c.n_kv_head, 8);
    cr_assert_eq(model_head_dim(&c), 16);
    cr_assert_eq(c.vocab_size, 65);
    cr_assert_eq(frag_token_bytes(&c), (size_t)TOKEN_BYTES);
    cr_assert_eq(frag_pool_blocks((size_t)64 << 20, 16, TOKEN_BYTES), 1024);
    cr_assert_eq(frag_pool_blocks(((size_t)1 << 20) - 1, 16, TOKEN_BYTES), 15);
    cr_assert_eq(frag_pool_blocks(((size_t)1 << 20), 4096, TOKEN_BYTES), 0);
}

Test(bench_frag, admission_on_hand_computed_lengths) {
    // ceil(len / 16): 7, 2, 1, 19, 3, 64
    const int lens[] = {100, 17, 16, 300, 33, 1024};
    cr_assert_eq(frag_admit_paged(lens, 6, 30, 16), 4);  // 7+2+1+19 = 29; the next needs 3 > 1
    cr_assert_eq(frag_admit_paged(lens, 6, 32, 16), 5);  // + 3 = 32; the next needs 64
    cr_assert_eq(frag_admit_paged(lens, 6, 96, 16), 6);  // 96 blocks exactly
    cr_assert_eq(frag_admit_paged(lens, 6, 6, 16), 0);   // the first needs 7
    cr_assert_eq(frag_admit_paged(lens, 3, 1000, 16), 3); // never more than the requests
    // first come, first served: a long request stops admission even though a later short one would fit
    const int blocked[] = {64, 1024, 16};
    cr_assert_eq(frag_admit_paged(blocked, 3, 10, 16), 1);
    // blocks of 1 token: the sum of lengths
    cr_assert_eq(frag_admit_paged(lens, 6, 100 + 17 + 16, 1), 3);
    cr_assert_eq(frag_admit_paged(lens, 6, 100 + 17 + 16 - 1, 1), 2);
    // contiguous: floor(budget / (max_len x token bytes)), at most the requests
    cr_assert_eq(frag_admit_contiguous(10, (size_t)1 << 20, 64, TOKEN_BYTES), 4);
    cr_assert_eq(frag_admit_contiguous(10, ((size_t)1 << 20) - 1, 64, TOKEN_BYTES), 3);
    cr_assert_eq(frag_admit_contiguous(3, (size_t)1 << 20, 64, TOKEN_BYTES), 3);
    cr_assert_eq(frag_admit_contiguous(100, (size_t)64 << 20, 1024, TOKEN_BYTES), 16);
    cr_assert_eq(frag_admit_contiguous(10, 1000, 1024, TOKEN_BYTES), 0);
}

Test(bench_frag, fixed_lengths_admit_equally_when_max_len_is_a_multiple_of_the_block) {
    int lens[64];
    for (int L = 16; L <= 1024; L += 16)
        for (int block = 1; block <= 64; block *= 2) {
            if (L % block) continue;
            for (int mb = 1; mb <= 9; mb += 4) {
                size_t budget = (size_t)mb << 20;
                frag_workload(lens, 64, L, 1, 0);
                int nb = frag_pool_blocks(budget, block, TOKEN_BYTES);
                cr_assert_eq(frag_admit_paged(lens, 64, nb, block), frag_admit_contiguous(64, budget, L, TOKEN_BYTES),
                             "L %d block %d budget %d MiB", L, block, mb);
            }
        }
}

Test(bench_frag, workload_is_seeded_and_within_bounds) {
    enum { N = 4096, L = 1024 };
    int *a = malloc(N * sizeof(int)), *b = malloc(N * sizeof(int)), *c = malloc(N * sizeof(int));
    frag_workload(a, N, L, 7, 1);
    frag_workload(b, N, L, 7, 1);
    frag_workload(c, N, L, 8, 1);
    cr_assert(memcmp(a, b, N * sizeof(int)) == 0, "the same seed draws the same lengths");
    cr_assert(memcmp(a, c, N * sizeof(int)) != 0, "another seed draws other lengths");
    int lo = 0, hi = 0, below_median = 0;
    for (int i = 0; i < N; i++) {
        cr_assert(a[i] >= FRAG_MIN_LEN && a[i] <= L, "length %d", a[i]);
        lo += a[i] == FRAG_MIN_LEN, hi += a[i] == L, below_median += a[i] < L / 4;
    }
    cr_assert(below_median > N * 0.45 && below_median < N * 0.55, "median L/4: %d of %d below", below_median, N);
    cr_assert(hi > 0 && hi < N / 20, "a thin tail clamped at L: %d", hi);
    frag_workload(a, N, L, 7, 0);
    for (int i = 0; i < N; i++) cr_assert_eq(a[i], L);
    free(a), free(b), free(c);
}

// A contiguous cache of the bench's shape reserves max_len tokens: it takes exactly that many and refuses the
// next (what contig_reserved_bytes counts).
Test(bench_frag, a_contiguous_cache_holds_max_len_tokens) {
    ModelConfig c = frag_model_config(64);
    KVShape shape = decode_kv_shape(&c, 64);
    KVCache *kv;
    char err[ERR_LEN];
    cr_assert_eq(kv_full_init(&kv, &shape, err), 0, "%s", err);
    float k[128] = {0}, v[128] = {0};
    for (int p = 0; p < 64; p++)
        for (int l = 0; l < c.n_layer; l++) cr_assert_eq(kv_cache_append(kv, l, p, k, v), 0);
    cr_assert_eq(kv_cache_append(kv, 0, 64, k, v), -1);
    kv_cache_free(kv);
}

static double max_diff(const float *a, const float *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) m = fmax(m, fabs((double)a[i] - b[i]));
    return m;
}

Test(bench_frag, harness_accounts_from_the_real_structures) {
    enum { L = 64, BLOCK = 16 };
    ModelConfig mc = frag_model_config(L);
    Model m;
    model_init(&m, &mc, &ops_cpu);
    model_init_weights(&m, 1);
    const int lens[] = {40, 17, 64, 23, 16, 50}; // blocks 3, 2, 4, 2, 1, 4
    size_t budget = (size_t)3 * L * TOKEN_BYTES;  // three contiguous reservations; 12 blocks
    int nb = frag_pool_blocks(budget, BLOCK, TOKEN_BYTES);
    cr_assert_eq(nb, 12);
    int cn = frag_admit_contiguous(6, budget, L, TOKEN_BYTES), pn = frag_admit_paged(lens, 6, nb, BLOCK);
    cr_assert_eq(cn, 3);
    cr_assert_eq(pn, 5);
    char err[ERR_LEN];
    FragSide cs, ps, alone;
    cr_assert_eq(frag_run_contiguous(&m, lens, cn, L, &cs, err), 0, "%s", err);
    cr_assert_eq(frag_run_paged(&m, lens, pn, L, BLOCK, nb, &ps, err), 0, "%s", err);
    cr_assert_eq(cs.tokens, 40 + 17 + 64);
    cr_assert_eq(cs.used_bytes, (size_t)(40 + 17 + 64) * TOKEN_BYTES);
    cr_assert_eq(cs.reserved_bytes, (size_t)3 * L * TOKEN_BYTES);
    cr_assert_eq(ps.tokens, 40 + 17 + 64 + 23 + 16);
    cr_assert_eq(ps.used_bytes, (size_t)160 * TOKEN_BYTES);
    cr_assert_eq(ps.reserved_bytes, (size_t)12 * BLOCK * TOKEN_BYTES);
    cr_assert_eq(ps.blocks_used, 12);
    cr_assert_eq(ps.blocks_total, 12);
    cr_assert_eq(ps.pool_bytes, budget);
    cr_assert_float_eq(ps.last_block_waste, (192.0 - 160.0) / 192.0, 1e-12);
    cr_assert(cs.seconds > 0 && ps.seconds > 0);
    // the same requests decode to the same logits through either structure (different batch sizes)
    double d = max_diff(cs.logits, ps.logits, (size_t)cn * mc.vocab_size);
    cr_assert(d < 1e-4, "paged vs contiguous logits differ by %g", d);
    // a row of the batch equals the request decoded alone
    cr_assert_eq(frag_run_contiguous(&m, lens, 1, L, &alone, err), 0, "%s", err);
    d = max_diff(alone.logits, cs.logits, (size_t)mc.vocab_size);
    cr_assert(d < 1e-4, "batch row vs alone differ by %g", d);
    double spread = 0;
    for (int j = 1; j < mc.vocab_size; j++) spread = fmax(spread, fabs((double)alone.logits[j] - alone.logits[0]));
    cr_assert(spread > 1e-3, "the logits are not all equal");
    frag_side_free(&cs), frag_side_free(&ps), frag_side_free(&alone);
    model_free(&m);
}

// --- the command line ---------------------------------------------------------------------------------------

Test(bench_frag, bad_flags_give_one_line) {
    struct {
        const char *const *args;
        const char *phrase;
    } cases[] = {
        {ARGS("--fragmentation", "--frag-block", "0"), "--frag-block"},
        {ARGS("--fragmentation", "--frag-block", "5000"), "--frag-block"},
        {ARGS("--fragmentation", "--frag-max-len", "8"), "--frag-max-len"},
        {ARGS("--fragmentation", "--frag-budget-mb", "0"), "--frag-budget-mb"},
        {ARGS("--fragmentation", "--frag-budget-mb", "9999"), "--frag-budget-mb"},
        {ARGS("--fragmentation", "--frag-requests", "0"), "--frag-requests"},
        {ARGS("--fragmentation", "--frag-seed", "x"), "--frag-seed"},
        {ARGS("--fragmentation", "--frag-bogus", "1"), "unknown flag '--frag-bogus'"},
        {ARGS("--fragmentation", "--quick"), "unknown flag '--quick'"},
        {ARGS("--fragmentation", "--json=1"), "takes no value"},
        {ARGS("--fragmentation", "--frag-budget-mb", "1", "--frag-block", "4096"), "holds no block"},
        // a budget below one max-length request: nothing admitted on the contiguous side, nothing to compare
        {ARGS("--fragmentation", "--frag-budget-mb", "1"), "holds no request of --frag-max-len 1024"},
        {ARGS("--frag-block", "16"), "unknown flag '--frag-block'"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        Run r = cliutil_run_argv("bench", cases[i].args);
        EXPECT_ERROR(&r, "bench", cases[i].phrase);
        cliutil_run_free(&r);
    }
}

Test(bench_frag, help_names_the_flags) {
    Run r = RUN("bench", "--fragmentation", "--help");
    cliutil_expect_ok(&r, "bench --fragmentation --help");
    const char *words[] = {"--frag-budget-mb", "--frag-block", "--frag-max-len", "--frag-seed", "--frag-requests",
                           "log-normal"};
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++) cr_expect(strstr(r.out, words[i]), "%s", words[i]);
    cliutil_run_free(&r);
    r = RUN("bench", "--help");
    cliutil_expect_ok(&r, "bench --help");
    cr_expect(strstr(r.out, "--fragmentation"), "%s", r.out);
    cliutil_run_free(&r);
}

// The number after "key": in a JSON line (asserting it is there).
static double json_num(const char *line, const char *key) {
    char pat[96];
    snprintf(pat, sizeof pat, "\"%s\": ", key);
    const char *p = strstr(line, pat);
    cr_assert(p, "no %s in %s", key, line);
    return strtod(p + strlen(pat), NULL);
}

Test(bench_frag, tiny_json_run) {
    Run r = RUN("bench", "--fragmentation", "--json", "--frag-budget-mb", "1", "--frag-max-len", "64",
                "--frag-requests", "20", "--frag-seed", "3");
    cliutil_expect_ok(&r, "bench --fragmentation --json");
    char *fixed = strstr(r.out, "\"workload\": \"fixed\""), *variable = strstr(r.out, "\"workload\": \"variable\"");
    cr_assert(fixed && variable && variable < fixed, "%s", r.out);
    char *nl = strchr(variable, '\n');
    cr_assert(nl);
    *nl = 0; // variable's line ends here
    int lens[20];
    frag_workload(lens, 20, 64, 3, 1);
    double mean = 0;
    for (int i = 0; i < 20; i++) mean += lens[i] / 20.0;
    cr_assert_float_eq(json_num(variable, "len_mean"), mean, 0.006);
    cr_assert_eq(json_num(variable, "budget_bytes"), 1 << 20);
    cr_assert_eq(json_num(variable, "contig_admitted"), 4); // 1 MiB / (64 tokens x 4096 bytes)
    cr_assert_eq(json_num(variable, "paged_admitted"), frag_admit_paged(lens, 20, 16, 16)); // 1 MiB: 16 blocks
    cr_assert(json_num(variable, "paged_admitted") >= json_num(variable, "contig_admitted"));
    const char *keys[] = {"contig_utilisation", "paged_utilisation", "paged_last_block_waste"};
    for (int w = 0; w < 2; w++) {
        const char *line = w ? fixed : variable;
        for (size_t i = 0; i < 3; i++) {
            double u = json_num(line, keys[i]);
            cr_assert(u >= 0 && u <= 1, "%s %g", keys[i], u);
        }
        cr_assert(json_num(line, "contig_used_bytes") <= json_num(line, "contig_reserved_bytes"));
        cr_assert(json_num(line, "paged_used_bytes") <= json_num(line, "paged_allocated_bytes"));
        cr_assert(json_num(line, "paged_allocated_bytes") <= json_num(line, "budget_bytes"));
        cr_assert_eq(json_num(line, "decode_steps"), FRAG_DECODE_STEPS);
        cr_assert(json_num(line, "contig_tokens_per_s") > 0 && json_num(line, "paged_tokens_per_s") > 0);
    }
    // the control: every request max_len long, which is a multiple of the block: equal admission, no waste
    cr_assert_eq(json_num(fixed, "contig_admitted"), 4);
    cr_assert_eq(json_num(fixed, "paged_admitted"), 4);
    cr_assert_eq(json_num(fixed, "contig_utilisation"), 1);
    cr_assert_eq(json_num(fixed, "paged_utilisation"), 1);
    cr_assert_eq(json_num(fixed, "paged_last_block_waste"), 0);
    cliutil_run_free(&r);
}
