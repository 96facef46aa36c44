// Philox4x32-10 (common/philox.h) and the counter-based dropout mask built on it (layers/residual.c), suite
// `philox`. The generator is checked against the known-answer vectors published with Random123 (the
// reference implementation by the algorithm's authors: kat_vectors, "philox4x32 10" lines); the mask for its
// keep rate, its independence from the thread count, and its dependence on both RNG draws.
#include <criterion/criterion.h>

#include <math.h>
#include <omp.h>

#include "../common/philox.h"
#include "../layers/cpu_ops.h"

Test(philox, random123_known_answers) {
    const struct {
        uint32_t ctr[4], key[2], want[4];
    } kat[] = {
        {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
        {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}, {0xffffffff, 0xffffffff}, {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
        {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}, {0xa4093822, 0x299f31d0}, {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
    };
    for (size_t i = 0; i < sizeof kat / sizeof *kat; i++) {
        uint32_t out[4];
        philox4x32_10(kat[i].ctr, kat[i].key, out);
        for (int j = 0; j < 4; j++)
            cr_expect_eq(out[j], kat[i].want[j], "vector %zu word %d: %08x, want %08x", i, j, out[j], kat[i].want[j]);
    }
}

Test(philox, block_is_the_counter_and_key_in_words) {
    uint64_t key = 0x299f31d0a4093822ull, stream = 0x0370734413198a2eull, b = 0x85a308d3243f6a88ull;
    uint32_t out[4];
    philox_block(key, stream, b, out); // the pi vector, packed as philox_block packs it
    cr_expect(out[0] == 0xd16cfe09 && out[1] == 0x94fdcceb && out[2] == 0x5001e420 && out[3] == 0x24126ea1);
    cr_expect_eq(philox_unit(0xffffffffu), 16777215.0f / 16777216.0f);
    cr_expect_eq(philox_unit(0xffu), 0.0f);
}

static float *mask(size_t N, float p, uint64_t seed, int threads) {
    float *keep = common_calloc(N, sizeof(float));
    Rng rng;
    rng_init(&rng, seed);
    int was = omp_get_max_threads();
    omp_set_num_threads(threads);
    dropout_mask_cpu(keep, N, p, &rng);
    omp_set_num_threads(was);
    return keep;
}

Test(philox, dropout_mask_keep_rate_and_values) {
    const size_t N = 1 << 20;
    const float p = 0.2f;
    float *keep = mask(N, p, 7, 1);
    size_t dropped = 0;
    for (size_t i = 0; i < N; i++) {
        cr_assert(keep[i] == 0.0f || keep[i] == 1.0f / (1.0f - p), "keep[%zu] = %g", i, keep[i]);
        dropped += keep[i] == 0.0f;
    }
    double sd = sqrt(N * p * (1 - p)); // binomial: within 5 standard deviations
    cr_expect(fabs(dropped - N * (double)p) < 5 * sd, "dropped %zu of %zu, expected %.0f +- %.0f", dropped, N, N * (double)p, 5 * sd);
    // neighbours are not correlated: P(both dropped) ~ p^2 over adjacent pairs, including across Philox blocks
    size_t both = 0;
    for (size_t i = 0; i + 1 < N; i++) both += keep[i] == 0.0f && keep[i + 1] == 0.0f;
    double e = (N - 1) * (double)p * p;
    cr_expect(fabs(both - e) < 5 * sqrt(e), "adjacent pairs both dropped: %zu, expected %.0f", both, e);
    common_free(keep);
}

Test(philox, dropout_mask_is_the_same_on_any_thread_count) {
    const size_t N = 300007; // long enough for the parallel loop, not a multiple of 4
    float *one = mask(N, 0.1f, 11, 1), *two = mask(N, 0.1f, 11, 2);
    cr_expect(memcmp(one, two, N * sizeof(float)) == 0, "the mask depends on the thread count");
    common_free(one), common_free(two);
}

Test(philox, dropout_mask_takes_two_draws_and_differs_per_call) {
    const size_t N = 4099;
    float *a = common_calloc(N, sizeof(float)), *b = common_calloc(N, sizeof(float));
    Rng rng, ref;
    rng_init(&rng, 3);
    rng_init(&ref, 3);
    dropout_mask_cpu(a, N, 0.5f, &rng);
    rng_next_u64(&ref), rng_next_u64(&ref);
    cr_expect_eq(rng.state, ref.state, "a mask call takes exactly two draws, whatever N");
    dropout_mask_cpu(b, N, 0.5f, &rng);
    size_t same = 0;
    for (size_t i = 0; i < N; i++) same += a[i] == b[i];
    cr_expect(same > N * 0.4 && same < N * 0.6, "two calls agree on %zu of %zu elements (independent: about half)", same, N);
    // the element is (key, stream, i): the same draws give the same mask, the prefix of a longer one
    Rng again;
    rng_init(&again, 3);
    float *c = common_calloc(2 * N, sizeof(float));
    dropout_mask_cpu(c, 2 * N, 0.5f, &again);
    cr_expect(memcmp(a, c, N * sizeof(float)) == 0, "a mask is the prefix of a longer one from the same draws");
    common_free(a), common_free(b), common_free(c);
}

Test(philox, dropout_mask_is_its_definition) {
    // element i: half-word i % 8 of Philox4x32-10 at counter (i / 8, stream) under key, key and stream being
    // the RNG's next two draws; dropped where that half-word / 65536 < p
    const size_t N = 1001;
    const float p = 0.37f;
    float *keep = mask(N, p, 5, 1);
    Rng rng;
    rng_init(&rng, 5);
    uint64_t key = rng_next_u64(&rng), stream = rng_next_u64(&rng);
    for (size_t i = 0; i < N; i++) {
        uint64_t b = i / 8;
        uint32_t ctr[4] = {(uint32_t)b, (uint32_t)(b >> 32), (uint32_t)stream, (uint32_t)(stream >> 32)};
        uint32_t k[2] = {(uint32_t)key, (uint32_t)(key >> 32)}, w[4];
        philox4x32_10(ctr, k, w);
        uint32_t half = (w[(i % 8) / 2] >> (16 * (i % 2))) & 0xffff;
        float want = half / 65536.0 < p ? 0.0f : 1.0f / (1.0f - p);
        cr_assert_eq(keep[i], want, "element %zu: %g, want %g", i, keep[i], want);
    }
    common_free(keep);
}
