// The paged pool composed with the other KV techniques: rows held in fp16 or int formats read back exactly as
// kv/quant.h encodes them and attention over them equals attention over those decoded rows; block-granular
// window, sink and h2o policies drop exactly the blocks they should, attention skips the holes, the pool stays
// consistent and dropped full blocks stay findable by prefix; the spec grammar and its errors; a decoded
// stream through SELECT+paged:B[+FORMAT] against the full cache.
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../infer/kveval.h"
#include "../kv/paged.h"
#include "../kv/quant.h"
#include "../layers/cpu_ops.h"
#include "../decode/step.h"

enum { L = 2, NH = 4, NKV = 2, HD = 8, ROW = NKV * HD };

static KVPool *pool_of(int block, int n_blocks, int bits, int group) {
    KVShape shape = {L, NH, NKV, HD, 1024, 10000.0f, 0};
    KVPool *p;
    char err[ERR_LEN], format[32];
    if (bits >= 16) snprintf(format, sizeof(format), "fp%d", bits);
    else if (group) snprintf(format, sizeof(format), "int%d:%d", bits, group);
    else snprintf(format, sizeof(format), "int%d", bits);
    cr_assert_eq(kv_pool_init_format(&p, &shape, block, n_blocks, format, err), 0, "%s", err);
    return p;
}

static void check_pool(const KVPool *p) {
    char err[ERR_LEN] = "";
    cr_assert_eq(kv_pool_validate(p, err), 0, "%s", err);
}

// Deterministic rows of (layer, pos): varied magnitudes so quantization error is visible.
static void rows(float *k, float *v, int layer, int pos) {
    for (int i = 0; i < ROW; i++) {
        k[i] = sinf(0.37f * (float)(pos * ROW + i) + (float)layer) * (1.0f + (float)(i % 3));
        v[i] = cosf(0.11f * (float)(pos * ROW + i) - (float)layer);
    }
}

static void feed(KVPool *p, KVSeq *s, int from, int to) {
    float k[ROW], v[ROW];
    char err[ERR_LEN];
    for (int t = from; t < to; t++)
        for (int l = 0; l < L; l++) {
            rows(k, v, l, t);
            cr_assert_eq(kv_paged_append(p, s, l, t, 100 + t, k, v, err), 0, "%s", err);
        }
}

// What a row of head_dim floats becomes in `bits` (an independent round trip through kv/quant.h).
static void round_trip(float *dst, const float *src, int bits, int group) {
    uint8_t buf[256];
    uint16_t half[HD];
    if (bits == 32) memcpy(dst, src, sizeof(float) * HD);
    else if (bits == 16) quant_f16_encode_row(half, src, HD), quant_f16_decode_row(dst, half, HD);
    else quant_encode_row(buf, src, HD, group, bits), quant_decode_row(dst, buf, HD, group, bits);
}

// ---- storage formats -------------------------------------------------------------------------------------

Test(paged_compose, formats_read_back_as_encoded_and_attend_over_decoded_rows) {
    int formats[][2] = {{32, 0}, {16, 0}, {8, 8}, {4, 4}, {2, 8}};
    for (int f = 0; f < 5; f++) {
        int bits = formats[f][0], group = formats[f][1], B = 3, T = 11;
        KVPool *p = pool_of(B, 8, bits, group);
        KVSeq s = {0};
        feed(p, &s, 0, T);
        // independent reference: the rows as written, round-tripped through the format, contiguous per head
        float kc[NKV][11][HD], vc[NKV][11][HD], k[ROW], v[ROW], got[HD];
        for (int t = 0; t < T; t++) {
            rows(k, v, 1, t);
            for (int g = 0; g < NKV; g++) {
                round_trip(kc[g][t], k + g * HD, bits, group ? group : HD);
                round_trip(vc[g][t], v + g * HD, bits, group ? group : HD);
                int b = s.table[t / B], slot = t % B;
                float buf[3 * HD];
                kv_pool_read(p, 0, b, 1, g, slot + 1, buf);
                memcpy(got, buf + slot * HD, sizeof(got));
                cr_assert(!memcmp(got, kc[g][t], sizeof(got)), "bits %d: key row %d head %d", bits, t, g);
            }
        }
        float q[NH * HD], out[NH * HD], ref[NH * HD], att[NH * 11], att_ref[NH * 11];
        for (int i = 0; i < NH * HD; i++) q[i] = 0.3f * (float)(i % 5) - 0.5f;
        float kflat[NKV * 11 * HD], vflat[NKV * 11 * HD];
        memcpy(kflat, kc, sizeof(kflat));
        memcpy(vflat, vc, sizeof(vflat));
        attention_decode_paged(out, att, q, p, &s, 1, NH, NKV, HD);
        attention_decode_cpu(ref, att_ref, q, kflat, vflat, T, (size_t)T * HD, NH, NKV, HD);
        for (int i = 0; i < NH * HD; i++)
            cr_assert(fabsf(out[i] - ref[i]) <= 1e-6f, "bits %d: out[%d] %g vs %g", bits, i, out[i], ref[i]);
        KVPagedStats st;
        kv_pool_stats(p, &st);
        size_t row_bytes = bits == 32 ? HD * 4 : bits == 16 ? HD * 2 : quant_row_bytes(HD, group, bits);
        cr_assert_eq(p->row_bytes, row_bytes);
        cr_assert_eq(st.bytes_used, 2 * (size_t)4 * L * NKV * B * row_bytes, "bits %d: 4 blocks held", bits);
        kv_paged_end(p, &s);
        check_pool(p);
        kv_pool_free(p);
    }
}

Test(paged_compose, quantized_blocks_are_shared_and_copied_on_write_encoded) {
    KVPool *p = pool_of(4, 8, 4, 4);
    KVSeq a = {0}, b = {0};
    feed(p, &a, 0, 6); // one full block, a partial one
    kv_paged_fork(p, &b, &a);
    float k[ROW], v[ROW];
    char err[ERR_LEN];
    rows(k, v, 0, 6);
    k[0] = 99.0f; // b diverges at position 6: its partial block is copied, a's is untouched
    for (int l = 0; l < L; l++) cr_assert_eq(kv_paged_append(p, &b, l, 6, 7, k, v, err), 0, "%s", err);
    cr_assert_eq(p->cow, 1);
    cr_assert_neq(a.table[1], b.table[1]);
    cr_assert_eq(a.table[0], b.table[0]);
    cr_assert(!memcmp(kv_pool_rows(p, 0, a.table[1], 1, 0), kv_pool_rows(p, 0, b.table[1], 1, 0), 2 * p->row_bytes),
              "the copied slots are byte-identical");
    kv_paged_end(p, &a);
    kv_paged_end(p, &b);
    check_pool(p);
    kv_pool_free(p);
}

Test(paged_compose, bad_format_is_an_error) {
    KVShape shape = {L, NH, NKV, HD, 1024, 10000.0f, 0};
    KVPool *p;
    char err[ERR_LEN] = "";
    cr_assert_eq(kv_pool_init_format(&p, &shape, 4, 4, "int4:3", err), -1);
    cr_assert(strstr(err, "group"), "%s", err);
    cr_assert_null(p);
    cr_assert_eq(kv_pool_init_format(&p, &shape, 4, 4, "int5", err), -1);
    cr_assert_null(p);
}

// ---- policies --------------------------------------------------------------------------------------------

static KVSeqPolicy policy_of(const char *text) {
    KVSpec spec;
    KVSeqPolicy pol;
    char err[ERR_LEN];
    cr_assert_eq(kv_spec_parse(&spec, text, err), 0, "%s", err);
    cr_assert_eq(kv_paged_policy(&pol, &spec, err), 0, "%s", err);
    return pol;
}

// Feeds T tokens one step at a time, enforcing after each (as the decode step does).
static void feed_enforced(KVPool *p, KVSeq *s, int T) {
    for (int t = s->n_tokens; t < T; t++) {
        feed(p, s, t, t + 1);
        kv_paged_enforce(p, s);
    }
}

static int held_blocks(const KVSeq *s) {
    int n = 0;
    for (int i = 0; i < kv_paged_blocks(s); i++) n += s->table[i] != KV_BLOCK_DROPPED;
    return n;
}

Test(paged_compose, window_keeps_the_blocks_of_the_newest_tokens) {
    int B = 4, W = 6;
    KVPool *p = pool_of(B, 16, 32, 0);
    KVSeq s = {.policy = policy_of("window:6+paged:4")};
    for (int T = 1; T <= 30; T++) {
        feed_enforced(p, &s, T);
        for (int i = 0; i < kv_paged_blocks(&s); i++) {
            int last_pos = (i + 1) * B - 1, keep = last_pos >= T - W || i == (T - 1) / B;
            cr_assert_eq(s.table[i] != KV_BLOCK_DROPPED, keep, "T %d block %d", T, i);
        }
        int held = kv_paged_held(p, &s);
        cr_assert(held >= (T < W ? T : W) && held < W + B, "T %d: %d tokens held", T, held);
        check_pool(p);
    }
    // dropped full blocks stay cached: a request with the same tokens and the same policy finds every one
    // (and then holds only the window's); one with another policy (here: every block) finds none, since
    // beyond layer 0 a block's K/V depends on what the policy let attention see
    KVPagedStats st;
    kv_pool_stats(p, &st);
    cr_assert_eq(st.blocks_used, held_blocks(&s));
    cr_assert_eq(st.blocks_cached, 30 / B - (held_blocks(&s) - 1), "every dropped block is cached");
    int toks[30];
    for (int t = 0; t < 30; t++) toks[t] = 100 + t;
    KVSeq r = {.policy = s.policy}, f = {0};
    char err[ERR_LEN];
    cr_assert_eq(kv_paged_begin(p, &r, toks, 30, KV_PRIORITY_DEFAULT, err), 28, "%s", err); // 7 full blocks
    cr_assert_eq(held_blocks(&r), 2, "the policy applies to reused blocks: 20..27 hold the window of 6");
    cr_assert(r.table[5] != KV_BLOCK_DROPPED && r.table[6] == s.table[6], "block 5 back from the cache, 6 shared");
    cr_assert_eq(kv_paged_begin(p, &f, toks, 30, KV_PRIORITY_DEFAULT, err), 0, "%s", err);
    check_pool(p);
    kv_paged_end(p, &r);
    kv_paged_end(p, &f);
    kv_paged_end(p, &s);
    check_pool(p);
    kv_pool_free(p);
}

Test(paged_compose, sink_keeps_the_first_blocks_too) {
    int B = 4;
    KVPool *p = pool_of(B, 16, 32, 0);
    KVSeq s = {.policy = policy_of("sink:5,window:4+paged:4")};
    feed_enforced(p, &s, 26);
    // sinks 0..4 live in blocks 0 and 1; the window 22..25 in blocks 5 and 6 (the last)
    int expect[7] = {1, 1, 0, 0, 0, 1, 1};
    cr_assert_eq(kv_paged_blocks(&s), 7);
    for (int i = 0; i < 7; i++) cr_assert_eq(s.table[i] != KV_BLOCK_DROPPED, expect[i], "block %d", i);
    cr_assert_eq(kv_paged_held(p, &s), 8 + 4 + 2);
    cr_assert_eq(s.dropped, 3);
    kv_paged_end(p, &s);
    check_pool(p);
    kv_pool_free(p);
}

// h2o: the block with the least accumulated attention goes first; recent blocks never do.
Test(paged_compose, h2o_drops_the_least_attended_old_block) {
    int B = 4;
    KVPool *p = pool_of(B, 16, 32, 0);
    KVSeq s = {.policy = policy_of("h2o:4,4+paged:4")}; // budget ceil(8/4)+1 = 3 blocks
    feed(p, &s, 0, 12);                                  // 3 blocks, none dropped yet
    cr_assert_eq(kv_paged_enforce(p, &s), 0);
    // attention over the 12 held tokens, every head: block 0 gets 0.5, block 1 0.1, block 2 0.4
    float att[NH * 12];
    for (int h = 0; h < NH; h++)
        for (int t = 0; t < 12; t++) att[h * 12 + t] = t < 4 ? 0.125f : t < 8 ? 0.025f : 0.1f;
    kv_paged_observe(p, &s, att, NH);
    cr_assert_float_eq(s.score[1], 0.4f, 1e-6f);
    feed(p, &s, 12, 13); // a 4th block: over budget, block 1 (least attention, not recent) goes
    cr_assert_eq(kv_paged_enforce(p, &s), 1);
    cr_assert_eq(s.table[1], KV_BLOCK_DROPPED);
    cr_assert_neq(s.table[0], KV_BLOCK_DROPPED);
    cr_assert_neq(s.table[2], KV_BLOCK_DROPPED);
    // attention now runs over blocks 0, 2, 3 (9 tokens): the observed mass lands on the right blocks
    float att2[NH * 9];
    for (int h = 0; h < NH; h++)
        for (int t = 0; t < 9; t++) att2[h * 9 + t] = t < 4 ? 0.0f : t < 8 ? 0.2f : 0.2f;
    kv_paged_observe(p, &s, att2, NH);
    cr_assert_float_eq(s.score[0], 2.0f, 1e-6f);
    cr_assert_float_eq(s.score[2], 1.6f + 3.2f, 1e-5f);
    cr_assert_float_eq(s.score[3], 0.8f, 1e-6f);
    feed_enforced(p, &s, 40);
    cr_assert_leq(held_blocks(&s), 3);
    cr_assert_neq(s.table[kv_paged_blocks(&s) - 1], KV_BLOCK_DROPPED);
    kv_paged_end(p, &s);
    check_pool(p);
    kv_pool_free(p);
}

// Attention over a table with holes equals attention over the held tokens gathered contiguously.
Test(paged_compose, attention_skips_dropped_blocks) {
    int B = 3, T = 20;
    KVPool *p = pool_of(B, 16, 32, 0);
    KVSeq s = {.policy = policy_of("sink:2,window:7+paged:3")};
    feed_enforced(p, &s, T);
    int Tc = kv_paged_held(p, &s), n = 0;
    cr_assert_lt(Tc, T);
    float kc[NKV * 20 * HD], vc[NKV * 20 * HD], k[ROW], v[ROW];
    for (int t = 0; t < T; t++) {
        if (s.table[t / B] == KV_BLOCK_DROPPED) continue;
        rows(k, v, 0, t);
        for (int g = 0; g < NKV; g++) {
            memcpy(kc + ((size_t)g * Tc + n) * HD, k + g * HD, sizeof(float) * HD);
            memcpy(vc + ((size_t)g * Tc + n) * HD, v + g * HD, sizeof(float) * HD);
        }
        n++;
    }
    cr_assert_eq(n, Tc);
    float q[NH * HD], out[NH * HD], ref[NH * HD], att[NH * 20], att_ref[NH * 20];
    for (int i = 0; i < NH * HD; i++) q[i] = 0.2f * (float)(i % 7) - 0.6f;
    attention_decode_paged(out, att, q, p, &s, 0, NH, NKV, HD);
    attention_decode_cpu(ref, att_ref, q, kc, vc, Tc, (size_t)Tc * HD, NH, NKV, HD);
    for (int i = 0; i < NH * HD; i++) cr_assert(fabsf(out[i] - ref[i]) <= 1e-6f, "out[%d] %g vs %g", i, out[i], ref[i]);
    kv_paged_end(p, &s);
    kv_pool_free(p);
}

// ---- spec grammar ----------------------------------------------------------------------------------------

Test(paged_compose, spec_forms) {
    const char *good[] = {"paged:16", "full+paged:16", "window:64+paged:16+int4", "paged:16+int8:8",
                          "sink:4,window:60+paged:8+fp16", "h2o:16,16+paged:16", "full+int2+paged:4",
                          "paged:16+tier:4"};
    KVSpec sp;
    char err[ERR_LEN];
    for (size_t i = 0; i < sizeof(good) / sizeof(*good); i++)
        cr_assert_eq(kv_spec_parse(&sp, good[i], err), 0, "%s: %s", good[i], err);
    cr_assert_eq(kv_spec_parse(&sp, "window:64+paged:16+int4", err), 0);
    cr_assert_eq(sp.paged_block, 16);
    cr_assert(sp.policy == kv_policy_find("window", 6));
    cr_assert_eq(sp.codec->bits, 4);
    const char *bad[][2] = {{"tova:32+paged:16", "selection"}, {"snapkv:32+paged:16", "selection"},
                            {"paged:16+kivi4", "rows"},        {"paged:16+lowrank:4", "rows"},
                            {"paged:16+hadamard", "valid"},    {"paged:16+paged:8", "valid"},
                            {"full+paged:0", "valid"},         {"window:8+paged:16+pyramid", "rows"},
                            {"window:8+paged:16+tier:4", "tier:N"}, {"full+tier:4", "tier:N"},
                            {"paged:16+tier:1", "valid"},      {"paged:16+int4+tier:4", "tier:N"}};
    for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
        err[0] = 0;
        cr_assert_eq(kv_spec_parse(&sp, bad[i][0], err), -1, "%s accepted", bad[i][0]);
        cr_assert(strstr(err, bad[i][1]) && !strchr(err, '\n'), "%s: %s", bad[i][0], err);
    }
}

// ---- through the model -----------------------------------------------------------------------------------

static void small_model(Model *m) {
    ModelConfig cfg = {.vocab_size = 13, .n_layer = 3, .n_head = 4, .n_kv_head = 2, .n_embd = 32,
                       .n_hidden = 48, .block_size = 48, .rope_theta = 10000.0f, .norm_eps = 1e-5f, .dropout = 0.0f};
    model_init(m, &cfg, &ops_cpu);
    model_init_weights(m, 42);
    for (size_t i = 0; i < m->n_params; i++) m->params_memory[i] *= 3.0f;
}

// The streaming eval over paged specs: a window wider than the stream is the full cache exactly; int8 pages
// are close; a window of 16 drops blocks and so holds fewer bytes and differs.
Test(paged_compose, streaming_eval_through_paged_specs) {
    Model m;
    small_model(&m);
    int tokens[200];
    Rng rng;
    rng_init(&rng, 3);
    for (int i = 0; i < 200; i++) tokens[i] = (int)rng_below(&rng, 13);
    KVEvalConfig cfg = {.context = 48, .prefill = 8, .streams = 3};
    const char *specs[] = {"window:64+paged:8", "paged:8+int8", "window:16+paged:8", "h2o:8,8+paged:4+int4"};
    KVEvalResult r[4];
    char err[ERR_LEN];
    for (int i = 0; i < 4; i++) {
        KVSpec sp;
        cr_assert_eq(kv_spec_parse(&sp, specs[i], err), 0, "%s", err);
        cr_assert_eq(kv_eval_streams(&m, &sp, tokens, 200, &cfg, &r[i], err), 0, "%s: %s", specs[i], err);
        cr_assert(isfinite(r[i].ppl) && r[i].tokens == 3 * 40, "%s", specs[i]);
    }
    cr_assert(r[0].kl < 1e-10 && r[0].top1_agree == 1.0, "window wider than the stream: KL %g", r[0].kl);
    cr_assert(r[1].kl > 0 && r[1].kl < 1e-3 && r[1].top1_agree > 0.97, "int8 pages: KL %g", r[1].kl);
    cr_assert(r[2].kl > 1e-4, "window:16 must change predictions (KL %g)", r[2].kl);
    cr_assert_lt(r[2].kv_bytes, r[0].kv_bytes / 2, "window:16 holds %zu vs %zu", r[2].kv_bytes, r[0].kv_bytes);
    cr_assert_lt(r[1].kv_bytes, r[0].kv_bytes * 4 / 10, "int8 pages hold %zu vs %zu", r[1].kv_bytes, r[0].kv_bytes);
    cr_assert(r[3].kv_bytes < r[2].kv_bytes, "h2o int4 pages");
    for (int i = 0; i < 4; i++) kv_eval_result_free(&r[i]);
    model_free(&m);
}
