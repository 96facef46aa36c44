// ZeRO-1's shards in one process, suite `zero` (no MPI needed; the mpi suite runs it across ranks): the shards
// cover the parameter block, and a train_step on a sharded TrainState updates exactly its shard's weights and
// moments, with the same bits as the unsharded step (AdamW cut at the shard's edges, inside tensors too).
#include <criterion/criterion.h>

#include <limits.h>
#include <math.h>
#include <string.h>

#include "../train/trainer.h"

TestSuite(zero);

Test(zero, shards_cover_the_block_in_order) {
    size_t sizes[] = {0, 1, 7, 1000, 30817};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        for (int size = 1; size <= 9; size++) {
            size_t next = 0;
            for (int rank = 0; rank < size; rank++) {
                size_t lo, n;
                train_shard_range(sizes[i], rank, size, &lo, &n);
                cr_assert_eq(lo, next, "n %zu, %d ranks: rank %d starts at %zu", sizes[i], size, rank, lo);
                cr_assert_leq(n, sizes[i] / size + 1, "balanced within one element");
                next = lo + n;
            }
            cr_assert_eq(next, sizes[i]);
        }
}

// MPI's gather counts and offsets are ints: a block past INT_MAX elements is refused at set-up, in one line,
// instead of aborting at the first gather.
Test(zero, a_block_past_int_max_is_refused_in_one_line) {
    char err[ERR_LEN] = "";
    cr_expect_eq(train_zero_check((size_t)INT_MAX, err), 0);
    cr_expect_eq(train_zero_check(1000, err), 0);
    cr_assert_eq(train_zero_check((size_t)INT_MAX + 1, err), -1);
    cr_expect(strstr(err, "--zero 1 takes models of at most 2147483647 parameters"), "%s", err);
    cr_expect(strstr(err, "2147483648"), "%s", err);
    cr_expect_null(strchr(err, '\n'), "one line: %s", err);
}

static float *dup(const float *x, size_t n) {
    float *y = common_calloc(n, sizeof(float));
    memcpy(y, x, n * sizeof(float));
    return y;
}

// For 1..7 shards: each shard's step, from the same weights and moments, against the unsharded step.
Test(zero, a_shard_step_is_the_unsharded_step_on_its_elements) {
    ModelConfig mc = {.vocab_size = 29, .n_layer = 2, .n_head = 4, .n_kv_head = 2, .n_embd = 32, .n_hidden = 96,
                      .block_size = 16, .rope_theta = 10000.0f, .norm_eps = 1e-5f, .dropout = 0.1f};
    TrainConfig tc = {.batch_size = 2, .seq_len = 16, .max_steps = 10, .warmup_steps = 2, .lr = 1e-2f,
                      .min_lr = 1e-3f, .weight_decay = 0.1f, .beta1 = 0.9f, .beta2 = 0.99f, .adam_eps = 1e-8f,
                      .grad_clip = 1.0f, .grad_accum = 2, .eval_interval = 0, .eval_windows = 4, .seed = 3};
    enum { NTOK = 2000 };
    Rng rng;
    rng_init(&rng, 77);
    int *tokens = common_calloc(NTOK, sizeof(int));
    for (int i = 0; i < NTOK; i++) tokens[i] = (int)rng_below(&rng, 29);
    Corpus c = {tokens, NTOK, NTOK * 9 / 10, NULL};
    Model m;
    model_init(&m, &mc, &ops_cpu);
    model_init_weights(&m, 78);
    model_alloc_acts(&m, tc.batch_size, tc.seq_len);
    size_t n = m.n_params;
    int in[2 * 16], tg[2 * 16];
    // the reference: two unsharded steps (the second with non-zero moments), the state before the second kept
    TrainState ref;
    train_state_init(&ref, n, 79);
    train_step(&m, &ref, &tc, &c, in, tg, NULL);
    float *p0 = dup(m.params_memory, n), *m0 = dup(ref.m, n), *v0 = dup(ref.v, n);
    TrainState before = ref;
    train_step(&m, &ref, &tc, &c, in, tg, NULL);
    float *p1 = dup(m.params_memory, n);
    for (int size = 1; size <= 7; size++)
        for (int rank = 0; rank < size; rank++) {
            TrainState s;
            train_state_init(&s, n, 0);
            memcpy(s.m, m0, n * sizeof(float));
            memcpy(s.v, v0, n * sizeof(float));
            s.step = before.step;
            s.data_rng = before.data_rng;
            s.dropout_rng = before.dropout_rng;
            train_state_shard(&s, n, rank, size);
            model_params_upload(&m, p0);
            train_step(&m, &s, &tc, &c, in, tg, NULL); // one process: no all-gather, only this shard moves
            size_t lo = s.shard_lo, k = s.shard_n;
            cr_assert_eq(memcmp(m.params_memory + lo, p1 + lo, k * sizeof(float)), 0, "%d shards, shard %d: weights",
                         size, rank);
            cr_assert_eq(memcmp(m.params_memory, p0, lo * sizeof(float)), 0, "before the shard: untouched");
            cr_assert_eq(memcmp(m.params_memory + lo + k, p0 + lo + k, (n - lo - k) * sizeof(float)), 0,
                         "after the shard: untouched");
            cr_assert_eq(memcmp(s.m, ref.m + lo, k * sizeof(float)), 0, "%d shards, shard %d: m", size, rank);
            cr_assert_eq(memcmp(s.v, ref.v + lo, k * sizeof(float)), 0, "%d shards, shard %d: v", size, rank);
            cr_assert_eq(s.step, ref.step);
            train_state_free(&s);
        }
    common_free(p0);
    common_free(p1);
    common_free(m0);
    common_free(v0);
    train_state_free(&ref);
    model_free(&m);
    common_free(tokens);
}
