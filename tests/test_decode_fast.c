// Tests of the fast decode paths, suite `decode_fast`: attention_decode_cpu (matvec scores, vectorised softmax,
// register-held weighted sum, heads across threads) against a double-precision reference on odd shapes, with
// 1 and 2 threads giving the same bits; softmax_inplace_cpu against double; and the decode step's fused
// products: a batch of rows gives each row the bits it gets alone, and a store that drops rows after K and V
// sees queries computed for the rows it kept.
#include <criterion/criterion.h>

#include <math.h>
#include <omp.h>
#include <string.h>

#include "../attention/attention.h"
#include "../decode/step.h"
#include "../layers/model.h"

static void fill_normal(float *x, size_t n, Rng *rng, float scale) {
    for (size_t i = 0; i < n; i++) x[i] = scale * rng_normal(rng);
}

// One decode query against (NKV, stride) head-major keys and values, in double: probabilities and output.
static void attention_ref(double *out, double *att, const float *q, const float *kc, const float *vc, int Tc,
                          size_t stride, int NH, int NKV, int HD) {
    for (int h = 0; h < NH; h++) {
        const float *k = kc + (h / (NH / NKV)) * stride, *v = vc + (h / (NH / NKV)) * stride;
        double *p = att + (size_t)h * Tc, mx = -INFINITY, sum = 0.0;
        for (int t = 0; t < Tc; t++) {
            double s = 0.0;
            for (int i = 0; i < HD; i++) s += (double)q[h * HD + i] * k[(size_t)t * HD + i];
            p[t] = s / sqrt((double)HD);
            mx = fmax(mx, p[t]);
        }
        for (int t = 0; t < Tc; t++) sum += p[t] = exp(p[t] - mx);
        for (int t = 0; t < Tc; t++) p[t] /= sum;
        for (int i = 0; i < HD; i++) {
            double o = 0.0;
            for (int t = 0; t < Tc; t++) o += p[t] * v[(size_t)t * HD + i];
            out[h * HD + i] = o;
        }
    }
}

Test(decode_fast, attention_decode_matches_double_reference) {
    const int heads[][2] = {{4, 4}, {4, 2}, {4, 1}, {3, 1}, {6, 3}};
    const int hds[] = {2, 6, 8, 16, 24, 32, 40, 64, 80};
    const int tcs[] = {1, 2, 3, 17, 64, 301};
    Rng rng;
    rng_init(&rng, 5);
    for (size_t a = 0; a < sizeof heads / sizeof *heads; a++)
        for (size_t b = 0; b < sizeof hds / sizeof *hds; b++)
            for (size_t c = 0; c < sizeof tcs / sizeof *tcs; c++) {
                int NH = heads[a][0], NKV = heads[a][1], HD = hds[b], Tc = tcs[c];
                size_t stride = (size_t)(Tc + 3) * HD; // room past each head's rows, as a cache with capacity
                size_t nq = (size_t)NH * HD, na = (size_t)NH * Tc;
                float *q = common_calloc(nq, sizeof(float)), *out1 = common_calloc(nq, sizeof(float));
                float *out2 = common_calloc(nq, sizeof(float)), *att1 = common_calloc(na, sizeof(float));
                float *att2 = common_calloc(na, sizeof(float)), *kc = common_calloc(stride * NKV, sizeof(float));
                float *vc = common_calloc(stride * NKV, sizeof(float));
                double *oref = common_calloc(nq, sizeof(double)), *aref = common_calloc(na, sizeof(double));
                fill_normal(q, (size_t)NH * HD, &rng, 2.0f); // sharp enough that the softmax is far from uniform
                fill_normal(kc, stride * NKV, &rng, 1.0f);
                fill_normal(vc, stride * NKV, &rng, 1.0f);
                omp_set_num_threads(1);
                attention_decode_cpu(out1, att1, q, kc, vc, Tc, stride, NH, NKV, HD);
                omp_set_num_threads(2);
                attention_decode_cpu(out2, att2, q, kc, vc, Tc, stride, NH, NKV, HD);
                omp_set_num_threads(1);
                attention_ref(oref, aref, q, kc, vc, Tc, stride, NH, NKV, HD);
                for (int i = 0; i < NH * Tc; i++)
                    cr_assert(fabs(att1[i] - aref[i]) <= 2e-6 * fmax(1.0, fabs(aref[i]) * HD),
                              "NH %d NKV %d HD %d Tc %d: att[%d] %.9g vs %.9g", NH, NKV, HD, Tc, i, att1[i], aref[i]);
                for (int i = 0; i < NH * HD; i++)
                    cr_assert(fabs(out1[i] - oref[i]) <= 1e-5, "NH %d NKV %d HD %d Tc %d: out[%d] %.9g vs %.9g", NH,
                              NKV, HD, Tc, i, out1[i], oref[i]);
                cr_assert(!memcmp(out1, out2, sizeof(float) * NH * HD) && !memcmp(att1, att2, sizeof(float) * NH * Tc),
                          "NH %d HD %d Tc %d: 1 vs 2 threads differ", NH, HD, Tc);
                common_free(q), common_free(kc), common_free(vc), common_free(out1), common_free(out2);
                common_free(att1), common_free(att2), common_free(oref), common_free(aref);
            }
}

Test(decode_fast, softmax_inplace_matches_double) {
    Rng rng;
    rng_init(&rng, 9);
    for (int n = 1; n <= 70; n += 3) {
        float p[70];
        double ref[70], mx = -INFINITY, sum = 0.0;
        fill_normal(p, n, &rng, 6.0f);
        for (int i = 0; i < n; i++) mx = fmax(mx, p[i]);
        for (int i = 0; i < n; i++) sum += ref[i] = exp((double)p[i] - mx);
        softmax_inplace_cpu(p, n);
        for (int i = 0; i < n; i++)
            cr_assert(fabs(p[i] - ref[i] / sum) <= 1e-6 * fmax(1e-3, ref[i] / sum) + 1e-9, "n %d p[%d] %.9g vs %.9g", n,
                      i, p[i], ref[i] / sum);
    }
}

// --- the decode step ------------------------------------------------------------------------------------------

static const ModelConfig CFG = {.vocab_size = 13, .n_layer = 3, .n_head = 4, .n_kv_head = 2, .n_embd = 32,
                                .n_hidden = 48, .block_size = 24, .rope_theta = 10000.0f, .norm_eps = 1e-5f,
                                .dropout = 0.0f};

static void model_setup(Model *m) {
    model_init(m, &CFG, &ops_cpu);
    model_init_weights(m, 42);
    for (size_t i = 0; i < m->n_params; i++) m->params_memory[i] *= 3.0f;
}

// Each row's products are computed exactly as for that row alone, so a paged batch gives every row the bits
// of its single step (the batch fuses Q, K, V for 3 rows in one call).
Test(decode_fast, batch_rows_bit_identical_to_single_steps) {
    Model m;
    model_setup(&m);
    enum { T = 12, S = 3 };
    KVShape shape = decode_kv_shape(&CFG, T);
    char err[ERR_LEN];
    KVPool *single, *batched;
    cr_assert_eq(kv_pool_init(&single, &shape, 4, S * 3, err), 0, "%s", err);
    cr_assert_eq(kv_pool_init(&batched, &shape, 4, S * 3, err), 0, "%s", err);
    KVSeq a[S] = {{0}}, b[S] = {{0}};
    DecodeState ds, db;
    decode_state_init(&ds, &CFG, 1, T);
    decode_state_init(&db, &CFG, S, T);
    for (int threads = 1; threads <= 2; threads++) {
        omp_set_num_threads(threads);
        for (int t = 0; t < T / 2; t++) {
            int pos = (threads - 1) * T / 2 + t;
            KVSeq *seqs[S];
            int tok[S], p[S];
            float ref[S][13];
            for (int s = 0; s < S; s++) {
                tok[s] = (pos * 5 + s * 3) % CFG.vocab_size, p[s] = pos, seqs[s] = &b[s];
                cr_assert_eq(model_decode_step_paged(&m, &ds, single, &a[s], tok[s], pos, err), 0, "%s", err);
                memcpy(ref[s], ds.logits, sizeof(ref[s]));
            }
            cr_assert_eq(model_decode_batch_paged(&m, &db, batched, seqs, tok, p, S, err), 0, "%s", err);
            for (int s = 0; s < S; s++)
                cr_assert(!memcmp(db.logits + s * CFG.vocab_size, ref[s], sizeof(ref[s])),
                          "threads %d pos %d row %d: batch differs from its single step", threads, pos, s);
        }
    }
    omp_set_num_threads(1);
    for (int s = 0; s < S; s++) kv_paged_end(single, &a[s]), kv_paged_end(batched, &b[s]);
    kv_pool_free(single), kv_pool_free(batched);
    decode_state_free(&ds), decode_state_free(&db);
    model_free(&m);
}

// A store that, at layer 0, keeps only the last row (compacting it to the front, its value row with it) and
// whose "attention" is a fixed function of each row's query and value: if queries were computed before the
// rows were dropped, the kept row would read another row's query.
static int keep_last(KVStore *st, const Model *m, DecodeState *s, int layer, int n) {
    (void)st;
    int C = m->cfg.n_embd, KVC = model_kv_dim(&m->cfg);
    if (layer > 0 || n == 1) return n;
    memmove(s->x, s->x + (size_t)(n - 1) * C, sizeof(float) * C);
    memmove(s->xn, s->xn + (size_t)(n - 1) * C, sizeof(float) * C);
    memmove(s->v, s->v + (size_t)(n - 1) * KVC, sizeof(float) * KVC);
    s->pos[0] = s->pos[n - 1], s->tokens[0] = s->tokens[n - 1];
    return 1;
}

static int mix_attend(KVStore *st, const Model *m, DecodeState *s, int layer, int row0, int n, char *err) {
    (void)st, (void)layer, (void)err;
    int C = m->cfg.n_embd, KVC = model_kv_dim(&m->cfg), HD = model_head_dim(&m->cfg);
    int rep = m->cfg.n_head / m->cfg.n_kv_head;
    for (int r = row0; r < row0 + n; r++)
        for (int i = 0; i < C; i++)
            s->atty[(size_t)r * C + i] =
                tanhf(s->q[(size_t)r * C + i]) * s->v[(size_t)r * KVC + (i / HD / rep) * HD + i % HD];
    return 0;
}

static const KVStoreOps keep_last_ops = {.select_rows = keep_last, .attend = mix_attend};

Test(decode_fast, queries_follow_the_rows_a_store_keeps) {
    Model m;
    model_setup(&m);
    DecodeState s;
    decode_state_init(&s, &CFG, 3, 8);
    KVStore st = {&keep_last_ops, NULL};
    KVStore *stores[] = {&st};
    int tokens[3] = {3, 7, 11}, pos[3] = {0, 1, 2};
    cr_assert_eq(decode_forward(&m, &s, stores, 1, tokens, pos, 3, DECODE_LOGITS_LAST, NULL), 1);
    float got[13];
    memcpy(got, s.logits, sizeof(got));
    // the kept row alone from the start
    cr_assert_eq(decode_forward(&m, &s, stores, 1, tokens + 2, pos + 2, 1, DECODE_LOGITS_LAST, NULL), 1);
    cr_assert(!memcmp(got, s.logits, sizeof(got)), "the kept row's logits differ from the row alone");
    // and the check can fail: another row alone gives other logits
    cr_assert_eq(decode_forward(&m, &s, stores, 1, tokens, pos, 1, DECODE_LOGITS_LAST, NULL), 1);
    cr_assert(memcmp(got, s.logits, sizeof(got)) != 0);
    decode_state_free(&s);
    model_free(&m);
}
