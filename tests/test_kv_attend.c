// Attention straight from encoded KV rows (kv/packed.h, the codecs' score/accumulate hooks, kv_cache_attend)
// against decode-then-attend: the packed kernels against each codec's own decode and a double-precision dot
// product, for every row codec, group size, odd lengths, strides and unaligned rows (and nothing read past the
// last row), and KIVI's key blocks;
// then whole caches (GQA, fpkeep, Hadamard, KIVI, evicting policies) against the fp32 view through
// attention_decode_cpu, outputs and probabilities; then greedy generation through a model with and without
// the packed path; and the paged pool's attention over encoded blocks against its decoded rows.
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "../attention/attention.h"
#include "../decode/sample.h"
#include "../decode/step.h"
#include "../kv/codec.h"
#include "../kv/kv.h"
#include "../kv/packed.h"
#include "../kv/paged.h"
#include "../kv/quant.h"

TestSuite(kv_attend);

enum { MAX_DIM = 128, MAX_ROWS = 100 };

// A row with its own offset and spread, so that groups have non-zero minima and different scales.
static void random_row(Rng *rng, float *x, int dim) {
    float off = 3.0f * rng_normal(rng), spread = 0.1f + 2.0f * rng_uniform(rng);
    for (int i = 0; i < dim; i++) x[i] = off + spread * rng_normal(rng);
}

static float max_abs(const float *x, int n) {
    float m = 0.0f;
    for (int i = 0; i < n; i++) m = fmaxf(m, fabsf(x[i]));
    return m;
}

// n rows of codec c encoded at buf + 1 + s * stride (never aligned), and their decoded values.
static void encode_rows(const KVCodec *c, Rng *rng, uint8_t *buf, size_t stride, float *dec, int n, int dim, int g) {
    float x[MAX_DIM];
    memset(buf, 0xA5, 1 + (size_t)n * stride); // padding between rows is never read as values
    for (int s = 0; s < n; s++) {
        random_row(rng, x, dim);
        c->encode(c, buf + 1 + (size_t)s * stride, x, dim, g);
        c->decode(c, dec + (size_t)s * dim, buf + 1 + (size_t)s * stride, dim, g);
    }
}

static void check_rows(const KVCodec *c, int dim, int g, int n, size_t pad, Rng *rng) {
    size_t rb = c->row_bytes(c, dim, g), stride = rb + pad;
    cr_assert_gt(rb, 0);
    static uint8_t buf[1 + MAX_ROWS * (MAX_DIM * 5 + 8)]; // int8 in groups of 1: 5 bytes a value
    static float dec[MAX_ROWS * MAX_DIM];
    float q[MAX_DIM], scores[MAX_ROWS], p[MAX_ROWS], out[MAX_DIM], out0[MAX_DIM];
    encode_rows(c, rng, buf, stride, dec, n, dim, g);
    for (int i = 0; i < dim; i++) q[i] = rng_normal(rng);
    float qabs = 0.0f;
    for (int i = 0; i < dim; i++) qabs += fabsf(q[i]);
    c->score(c, scores, q, buf + 1, stride, n, dim, g);
    for (int s = 0; s < n; s++) {
        const float *x = dec + (size_t)s * dim;
        double ref = 0.0;
        for (int i = 0; i < dim; i++) ref += (double)q[i] * x[i];
        // the affine split scale * (q . codes) + min * sum(q) rounds on the scale of |q| * |x|
        double tol = 4e-6 * qabs * max_abs(x, dim) * 4 + 1e-6;
        cr_assert(fabs(scores[s] - ref) <= tol, "%s dim %d group %d n %d row %d: score %.9g, decoded %.9g", c->name,
                  dim, g, n, s, scores[s], ref);
    }
    for (int s = 0; s < n; s++) p[s] = rng_uniform(rng) - 0.2f; // any weights, negative ones too
    for (int i = 0; i < dim; i++) out[i] = out0[i] = rng_normal(rng);
    c->accumulate(c, out, p, buf + 1, stride, n, dim, g);
    for (int i = 0; i < dim; i++) {
        double ref = out0[i], mag = fabs(out0[i]);
        for (int s = 0; s < n; s++) {
            ref += (double)p[s] * dec[(size_t)s * dim + i];
            mag += fabs(p[s]) * max_abs(dec + (size_t)s * dim, dim) * 4;
        }
        cr_assert(fabs(out[i] - ref) <= 4e-6 * mag + 1e-6, "%s dim %d group %d n %d channel %d: %.9g, decoded %.9g",
                  c->name, dim, g, n, i, out[i], ref);
    }
    // the same rows ending against an unreadable page: nothing past the last row is read
    static uint8_t *guarded;
    long page = sysconf(_SC_PAGESIZE);
    size_t span = (size_t)(n - 1) * stride + rb;
    if (!guarded) {
        guarded = mmap(NULL, 32 * (size_t)page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        cr_assert(guarded != MAP_FAILED);
        cr_assert_eq(mprotect(guarded + 31 * (size_t)page, (size_t)page, PROT_NONE), 0);
    }
    cr_assert_leq(span, 31 * (size_t)page);
    uint8_t *at = guarded + 31 * (size_t)page - span;
    memcpy(at, buf + 1, span);
    float scores2[MAX_ROWS], out2[MAX_DIM];
    c->score(c, scores2, q, at, stride, n, dim, g);
    cr_assert(!memcmp(scores2, scores, n * sizeof(float)), "%s dim %d group %d n %d: scores at a page end", c->name, dim, g, n);
    memcpy(out2, out0, sizeof(out2));
    c->accumulate(c, out2, p, at, stride, n, dim, g);
    cr_assert(!memcmp(out2, out, dim * sizeof(float)), "%s dim %d group %d n %d: sums at a page end", c->name, dim, g, n);
}

Test(kv_attend, every_row_codec_scores_and_accumulates_as_it_decodes) {
    const int dims[] = {8, 24, 32, 48, 64, 128}, groups[] = {1, 4, 8, 12, 16, 32, 64, 128};
    const int lengths[] = {1, 3, 16, 33, 100};
    Rng rng;
    rng_init(&rng, 7);
    int checked = 0;
    for (int ci = 0; ci < kv_codec_count; ci++) {
        const KVCodec *c = kv_codecs[ci];
        if (!c->row_bytes) continue; // KIVI: below
        cr_assert(c->score && c->accumulate, "the row codec %s has no attention hooks", c->name);
        for (size_t d = 0; d < sizeof(dims) / sizeof(dims[0]); d++)
            for (size_t gi = 0; gi < sizeof(groups) / sizeof(groups[0]); gi++) {
                int dim = dims[d], g = groups[gi];
                if (g > dim || dim % g != 0 || c->row_bytes(c, dim, g) == 0) continue;
                for (size_t li = 0; li < sizeof(lengths) / sizeof(lengths[0]); li++)
                    for (size_t pad = 0; pad <= 5; pad += 5) check_rows(c, dim, g, lengths[li], pad, &rng), checked++;
            }
    }
    cr_assert_gt(checked, 300);
}

Test(kv_attend, kivi_key_blocks_score_as_their_columns_decode) {
    const int dims[] = {8, 32, 40}, Gs[] = {1, 4, 8, 16, 20, 32, 48, 64}, bits[] = {2, 4, 8};
    Rng rng;
    rng_init(&rng, 9);
    static float keys[64 * 40], dec[64 * 40];
    static uint8_t block[40 * (4 + 64)];
    for (size_t b = 0; b < 3; b++)
        for (size_t d = 0; d < 3; d++)
            for (size_t gi = 0; gi < 8; gi++) {
                int dim = dims[d], G = Gs[gi];
                size_t cb = quant_row_bytes(G, G, bits[b]);
                float chan_off[40], q[40], scores[64];
                for (int c = 0; c < dim; c++) chan_off[c] = 4.0f * rng_normal(&rng); // KIVI's outlier channels
                for (int t = 0; t < G; t++)
                    for (int c = 0; c < dim; c++) keys[t * dim + c] = chan_off[c] + rng_normal(&rng);
                for (int c = 0; c < dim; c++) {
                    quant_encode_col(block + c * cb, keys, G, dim, c, bits[b]);
                    quant_decode_col(dec, block + c * cb, G, dim, c, bits[b]);
                }
                float qabs = 0.0f;
                for (int c = 0; c < dim; c++) q[c] = rng_normal(&rng), qabs += fabsf(q[c]);
                packed_score_cols(scores, q, block, cb, G, dim, bits[b]);
                for (int t = 0; t < G; t++) {
                    double ref = 0.0;
                    for (int c = 0; c < dim; c++) ref += (double)q[c] * dec[t * dim + c];
                    double tol = 4e-6 * qabs * max_abs(dec + t * dim, dim) * 4 + 1e-6;
                    cr_assert(fabs(scores[t] - ref) <= tol, "bits %d dim %d G %d token %d: %.9g vs %.9g", bits[b], dim,
                              G, t, scores[t], ref);
                }
            }
}

// ---- whole caches against their fp32 view ----------------------------------------------------------------

enum { LAYERS = 2, MAXP = 80 };

static KVCache *cache(const char *text, int NH, int NKV, int HD, int keep_prerope) {
    KVSpec sp;
    char err[ERR_LEN];
    cr_assert_eq(kv_spec_parse(&sp, text, err), 0, "%s: %s", text, err);
    KVShape shape = {LAYERS, NH, NKV, HD, MAXP, 10000.0f, keep_prerope};
    KVCache *kv;
    cr_assert_eq(kv_cache_init(&kv, &sp, &shape, err), 0, "%s: %s", text, err);
    return kv;
}

// Feeds n tokens with per-channel biased keys; after each append, in each layer, one query through
// kv_cache_attend and through the view and attention_decode_cpu must agree.
static void attend_against_view(const char *text, int NH, int NKV, int HD, int n) {
    KVCache *kv = cache(text, NH, NKV, HD, 0);
    cr_assert(kv_cache_attends_packed(kv), "%s should attend from its encoded rows", text);
    Rng rng;
    rng_init(&rng, 5);
    static float k[8 * 128], v[8 * 128], q[8 * 128], bias[8 * 128];
    static float out1[8 * 128], out2[8 * 128], att1[8 * MAXP], att2[8 * MAXP];
    for (int i = 0; i < NKV * HD; i++) bias[i] = 2.0f * rng_normal(&rng);
    for (int t = 0; t < n; t++)
        for (int l = 0; l < LAYERS; l++) {
            for (int i = 0; i < NKV * HD; i++) k[i] = bias[i] + rng_normal(&rng), v[i] = rng_normal(&rng);
            for (int i = 0; i < NH * HD; i++) q[i] = rng_normal(&rng);
            cr_assert_eq(kv_cache_append(kv, l, t, k, v), 0);
            int Tc = kv_cache_attend(kv, l, q, out1, att1), T2, qpos;
            cr_assert_eq(Tc, kv_cache_tokens(kv, l), "%s", text);
            const float *kc, *vc;
            size_t stride;
            kv_cache_view(kv, l, &kc, &vc, &T2, &qpos, &stride);
            cr_assert_eq(T2, Tc);
            cr_assert_eq(qpos, kv_cache_query_pos(kv, l));
            attention_decode_cpu(out2, att2, q, kc, vc, Tc, stride, NH, NKV, HD);
            for (int i = 0; i < NH * Tc; i++)
                cr_assert(fabsf(att1[i] - att2[i]) <= 2e-5f * att2[i] + 1e-7f,
                          "%s (NH %d NKV %d HD %d) token %d layer %d: p[%d] %.9g vs %.9g", text, NH, NKV, HD, t, l, i,
                          att1[i], att2[i]);
            for (int i = 0; i < NH * HD; i++)
                cr_assert(fabsf(out1[i] - out2[i]) <= 2e-5f * (1.0f + fabsf(out2[i])),
                          "%s (NH %d NKV %d HD %d) token %d layer %d: out[%d] %.9g vs %.9g", text, NH, NKV, HD, t, l,
                          i, out1[i], out2[i]);
            kv_cache_observe(kv, l, att2);
        }
    kv_cache_free(kv);
}

Test(kv_attend, caches_attend_as_their_view) {
    // (NH, NKV, HD): GQA, MHA, MQA; head dims that do and do not fill whole vectors
    const int shapes[][3] = {{4, 2, 8}, {4, 4, 32}, {6, 2, 64}, {3, 1, 24}};
    const char *specs[] = {"int8", "int4", "int2", "int4:8", "int2:16", "fp8", "fp8:8", "fp16", "int4+fpkeep:2,5",
                           "kivi2", "kivi4:4,8", "kivi2:16,32", "kivi4:5,10", "window:12+int4", "h2o:8,4+int8",
                           "tova:10+fp8", "random:9+int2", "knorm:6,0+int4", "window:20+int4+fpkeep:1,3"};
    const char *pow2_specs[] = {"int4+hadamard", "int2+hadamard+fpkeep:1,3", "kivi2+hadamard", "h2o:6,6+int4+hadamard"};
    for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
        int NH = shapes[s][0], NKV = shapes[s][1], HD = shapes[s][2];
        for (size_t i = 0; i < sizeof(specs) / sizeof(specs[0]); i++) {
            if (HD % 16 && !strncmp(specs[i], "int2:16", 7)) continue; // groups of 16 channels
            attend_against_view(specs[i], NH, NKV, HD, 70);
        }
        if ((HD & (HD - 1)) == 0)
            for (size_t i = 0; i < sizeof(pow2_specs) / sizeof(pow2_specs[0]); i++)
                attend_against_view(pow2_specs[i], NH, NKV, HD, 70);
    }
}

Test(kv_attend, caches_that_keep_the_view) {
    // fp32 rows are their own view; positions that change or rows rebuilt from bases keep keys before RoPE
    const char *specs[] = {"full", "window:8", "sink:2,window:6+int4", "full+minicache:0", "sink:1,window:9+kivi2"};
    for (size_t i = 0; i < sizeof(specs) / sizeof(specs[0]); i++) {
        KVSpec sp;
        char err[ERR_LEN];
        if (kv_spec_parse(&sp, specs[i], err) != 0) continue; // (a combination the grammar refuses)
        KVCache *kv = cache(specs[i], 4, 2, 8, 0);
        cr_assert(!kv_cache_attends_packed(kv), "%s", specs[i]);
        float k[16] = {1}, v[16] = {2}, q[32] = {1}, out[32], att[4 * MAXP];
        cr_assert_eq(kv_cache_append(kv, 0, 0, k, v), 0);
        cr_assert_eq(kv_cache_attend(kv, 0, q, out, att), 0, "%s", specs[i]);
        kv_cache_free(kv);
    }
    KVCache *kv = cache("int4", 4, 2, 8, 1); // keys kept before RoPE (low-rank calibration)
    cr_assert(!kv_cache_attends_packed(kv));
    kv_cache_free(kv);
    kv = cache("int4", 4, 2, 8, 0);
    cr_assert(kv_cache_attends_packed(kv));
    kv_cache_set_attend_packed(kv, 0);
    cr_assert(!kv_cache_attends_packed(kv));
    kv_cache_free(kv);
}

// ---- through a model -------------------------------------------------------------------------------------

// Greedy generation through spec with the packed path on and off: the same tokens, the same logits up to
// float rounding.
static void generate_both_ways(const char *text) {
    ModelConfig cfg = {.vocab_size = 13, .n_layer = 2, .n_head = 4, .n_kv_head = 2, .n_embd = 64, .n_hidden = 96,
                       .block_size = 64, .rope_theta = 10000.0f, .norm_eps = 1e-5f, .dropout = 0.0f};
    Model m;
    model_init(&m, &cfg, &ops_cpu);
    model_init_weights(&m, 3);
    for (size_t i = 0; i < m.n_params; i++) m.params_memory[i] *= 3.0f; // sharp enough to tell caches apart
    KVSpec sp;
    char err[ERR_LEN];
    cr_assert_eq(kv_spec_parse(&sp, text, err), 0, "%s", err);
    KVShape shape = decode_kv_shape(&cfg, cfg.block_size);
    KVCache *kv[2];
    DecodeState ds[2];
    int tok[2] = {1, 1};
    for (int w = 0; w < 2; w++) {
        cr_assert_eq(kv_cache_init(&kv[w], &sp, &shape, err), 0, "%s", err);
        decode_state_init(&ds[w], &cfg, 1, cfg.block_size);
    }
    kv_cache_set_attend_packed(kv[1], 0);
    cr_assert(kv_cache_attends_packed(kv[0]));
    float worst = 0.0f;
    for (int pos = 0; pos < cfg.block_size; pos++) {
        for (int w = 0; w < 2; w++) cr_assert_eq(model_decode_step(&m, &ds[w], kv[w], tok[w], pos), 0);
        for (int i = 0; i < cfg.vocab_size; i++) worst = fmaxf(worst, fabsf(ds[0].logits[i] - ds[1].logits[i]));
        for (int w = 0; w < 2; w++) tok[w] = sample_argmax(ds[w].logits, cfg.vocab_size);
        cr_assert_eq(tok[0], tok[1], "%s: the packed path generated %d at position %d, the view %d", text, tok[0],
                     pos + 1, tok[1]);
    }
    // float-rounding differences (1e-6) stay small, unless a later layer's key or value lands on the other side
    // of a quantization boundary in one path: one code a step apart moves logits by up to ~1e-2 here
    cr_assert_leq(worst, 5e-2f, "%s: logits differ by %g", text, worst);
    for (int w = 0; w < 2; w++) {
        kv_cache_free(kv[w]);
        decode_state_free(&ds[w]);
    }
    model_free(&m);
}

Test(kv_attend, generation_matches_the_view_path) {
    const char *specs[] = {"int4", "int2", "kivi2:8,16", "fp8", "window:24+int4+hadamard", "int4+fpkeep:2,8"};
    for (size_t i = 0; i < sizeof(specs) / sizeof(specs[0]); i++) generate_both_ways(specs[i]);
}

// ---- the paged pool --------------------------------------------------------------------------------------

// A pool in each encoded format, blocks of 5 with a window dropping old ones: attention_decode_paged (straight
// from the encoded rows) against the held rows decoded by kv_pool_read, contiguous, through
// attention_decode_cpu.
Test(kv_attend, paged_blocks_attend_as_their_decoded_rows) {
    enum { PL = 2, PNH = 6, PNKV = 2, PHD = 32, B = 5, T = 47 };
    const char *formats[] = {"fp16", "fp8", "int8:16", "int4", "int2", "int4:8"};
    KVShape shape = {PL, PNH, PNKV, PHD, 1024, 10000.0f, 0};
    Rng rng;
    rng_init(&rng, 13);
    static float k[PNKV * PHD], v[PNKV * PHD], q[PNH * PHD], kc[PNKV * T * PHD], vc[PNKV * T * PHD];
    static float out[PNH * PHD], ref[PNH * PHD], att[PNH * T], att_ref[PNH * T];
    for (size_t f = 0; f < sizeof(formats) / sizeof(formats[0]); f++) {
        KVPool *p;
        char err[ERR_LEN];
        cr_assert_eq(kv_pool_init_format(&p, &shape, B, 16, formats[f], err), 0, "%s", err);
        KVSeq s = {0};
        KVSpec spec;
        cr_assert_eq(kv_spec_parse(&spec, "window:12", err), 0);
        cr_assert_eq(kv_paged_policy(&s.policy, &spec, err), 0, "%s", err);
        int dropped = 0;
        for (int t = 0; t < T; t++) {
            for (int l = 0; l < PL; l++) {
                for (int i = 0; i < PNKV * PHD; i++) k[i] = 1.5f * rng_normal(&rng) + (float)(i % 5), v[i] = rng_normal(&rng);
                cr_assert_eq(kv_paged_append(p, &s, l, t, t, k, v, err), 0, "%s", err);
                for (int i = 0; i < PNH * PHD; i++) q[i] = rng_normal(&rng);
                int held = kv_paged_held(p, &s), off = 0;
                for (int i = 0; i < kv_paged_blocks(&s); i++) {
                    int rows = kv_paged_rows(p, &s, i);
                    if (!rows) continue;
                    for (int g = 0; g < PNKV; g++) {
                        kv_pool_read(p, 0, s.table[i], l, g, rows, kc + ((size_t)g * held + off) * PHD);
                        kv_pool_read(p, 1, s.table[i], l, g, rows, vc + ((size_t)g * held + off) * PHD);
                    }
                    off += rows;
                }
                cr_assert_eq(off, held);
                attention_decode_paged(out, att, q, p, &s, l, PNH, PNKV, PHD);
                attention_decode_cpu(ref, att_ref, q, kc, vc, held, (size_t)held * PHD, PNH, PNKV, PHD);
                for (int i = 0; i < PNH * held; i++)
                    cr_assert(fabsf(att[i] - att_ref[i]) <= 2e-5f * att_ref[i] + 1e-7f, "%s token %d: p[%d] %g vs %g",
                              formats[f], t, i, att[i], att_ref[i]);
                for (int i = 0; i < PNH * PHD; i++)
                    cr_assert(fabsf(out[i] - ref[i]) <= 2e-5f * (1.0f + fabsf(ref[i])), "%s token %d: out[%d] %g vs %g",
                              formats[f], t, i, out[i], ref[i]);
            }
            dropped += kv_paged_enforce(p, &s);
        }
        cr_assert_gt(dropped, 0, "the window dropped blocks");
        kv_paged_end(p, &s);
        kv_pool_free(p);
    }
}
