// Attention maps (infer/attnmap.h): the collected matrices are causal probability rows and equal the
// training forward's attention; the statistics are exact on constructed matrices; the PNGs have the
// promised size and content; a missing directory or an unwritable file is one clear error.
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../infer/attnmap.h"
#include "../data/tokenizer.h"
#include "../layers/model.h"

// stb_image decodes the PNGs back (this file only, static, PNG only). Its static declarations we never use
// are reported at the end of the file, so that warning stays off for the whole file.
#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_STATIC
#define STBI_ONLY_PNG
#define STBI_NO_STDIO
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wsign-compare"
#include <stb/stb_image.h>
#pragma GCC diagnostic pop

// A tiny random model with GQA (4 query heads over 2 key/value heads), weights scaled up so attention is
// far from uniform, and T random tokens.
static void tiny_model(Model *m, int *tokens, int T) {
    ModelConfig cfg = {.vocab_size = 13, .n_layer = 2, .n_head = 4, .n_kv_head = 2, .n_embd = 32,
                       .n_hidden = 48, .block_size = 24, .rope_theta = 10000.0f, .norm_eps = 1e-5f, .dropout = 0.0f};
    model_init(m, &cfg, &ops_cpu);
    model_init_weights(m, 42);
    for (size_t i = 0; i < m->n_params; i++) m->params_memory[i] *= 3.0f;
    Rng rng;
    rng_init(&rng, 5);
    for (int t = 0; t < T; t++) tokens[t] = (int)rng_below(&rng, cfg.vocab_size);
}

static float *alloc_att(const Model *m, int T) {
    return common_calloc((size_t)m->cfg.n_layer * m->cfg.n_head * T * T, sizeof(float));
}

// T = 40 runs past the trained context (24): the full cache is sized for T, RoPE extrapolates.
Test(attnmap, collect_rows_are_causal_probabilities) {
    enum { T = 40 };
    Model m;
    int tokens[T];
    tiny_model(&m, tokens, T);
    float *att = alloc_att(&m, T);
    char err[ERR_LEN];
    cr_assert_eq(attn_maps_collect(&m, tokens, T, att, err), 0, "%s", err);
    int LH = m.cfg.n_layer * m.cfg.n_head;
    float max_uniform_dev = 0.0f;
    for (int i = 0; i < LH; i++)
        for (int t = 0; t < T; t++) {
            const float *row = att + ((size_t)i * T + t) * T;
            double sum = 0;
            for (int j = 0; j <= t; j++) {
                cr_assert(row[j] >= 0.0f && row[j] <= 1.0f, "head %d row %d key %d: %g", i, t, j, row[j]);
                sum += row[j];
                max_uniform_dev = fmaxf(max_uniform_dev, fabsf(row[j] - 1.0f / (t + 1)));
            }
            cr_assert(fabs(sum - 1.0) < 1e-5, "head %d row %d sums to %.8f", i, t, sum);
            for (int j = t + 1; j < T; j++) cr_assert_eq(row[j], 0.0f, "head %d row %d: future key %d is %g", i, t, j, row[j]);
        }
    cr_assert(max_uniform_dev > 0.1f, "attention is nearly uniform (max deviation %g): the test says little", max_uniform_dev);
    common_free(att);
    model_free(&m);
}

// The decode path through the full cache sees exactly the attention of the training forward pass.
Test(attnmap, collect_matches_training_forward) {
    enum { T = 24 };
    Model m;
    int tokens[T];
    tiny_model(&m, tokens, T);
    float *att = alloc_att(&m, T);
    char err[ERR_LEN];
    cr_assert_eq(attn_maps_collect(&m, tokens, T, att, err), 0, "%s", err);
    model_alloc_inference_acts(&m, 1, T);
    model_forward(&m, tokens, NULL, 1, T, 0);
    size_t n = (size_t)m.cfg.n_layer * m.cfg.n_head * T * T; // acts.att is (L, B=1, NH, T, T)
    float max_err = 0.0f;
    for (size_t i = 0; i < n; i++) max_err = fmaxf(max_err, fabsf(att[i] - m.acts.att[i]));
    cr_assert(max_err < 1e-5f, "decode vs forward attention max |diff| %g", max_err);
    common_free(att);
    model_free(&m);
}

// ---------------------------------------------------------------------------------------------------------
// Statistics on constructed matrices (T = 64: rows 16..63 are averaged, the top 10% is ceil(6.4) = 7 keys).

typedef float (*CellFn)(int t, int j);
static float *make_matrix(int T, CellFn f) {
    float *a = common_calloc((size_t)T * T, sizeof(float));
    for (int t = 0; t < T; t++)
        for (int j = 0; j <= t; j++) a[(size_t)t * T + j] = f(t, j);
    return a;
}
static float all_on_key0(int t, int j) { return j == 0 ? 1.0f : 0.0f; }
static float all_on_self(int t, int j) { return j == t ? 1.0f : 0.0f; }
static float uniform(int t, int j) { return 1.0f / (float)(t + 1); }
static float half_sink_half_self(int t, int j) { return t == 0 ? 1.0f : (j == 0 || j == t) ? 0.5f : 0.0f; }

static void assert_stats(const AttnHeadStats *s, double sink1, double sink4, double heavy, double recent, double tol) {
    cr_assert(fabs(s->sink1 - sink1) <= tol, "sink1 %.8f, expected %.8f", s->sink1, sink1);
    cr_assert(fabs(s->sink4 - sink4) <= tol, "sink4 %.8f, expected %.8f", s->sink4, sink4);
    cr_assert(fabs(s->heavy - heavy) <= tol, "heavy %.8f, expected %.8f", s->heavy, heavy);
    cr_assert(fabs(s->recent - recent) <= tol, "recent %.8f, expected %.8f", s->recent, recent);
}

Test(attnmap, stats_all_mass_on_key0_is_a_full_sink) {
    float *a = make_matrix(64, all_on_key0);
    AttnHeadStats s;
    attn_head_stats(a, 64, &s);
    // key 0 has the largest column sum, so it is a heavy hitter; it is never among rows >= 16's last 16 keys
    assert_stats(&s, 1, 1, 1, 0, 0);
    common_free(a);
}

Test(attnmap, stats_all_mass_on_self_is_all_recent) {
    float *a = make_matrix(64, all_on_self);
    AttnHeadStats s;
    attn_head_stats(a, 64, &s);
    // every column sums to 1: ties go to the earliest keys 0..6, which rows >= 16 never look at
    assert_stats(&s, 0, 0, 0, 1, 0);
    common_free(a);
}

Test(attnmap, stats_half_sink_half_self) {
    float *a = make_matrix(64, half_sink_half_self);
    AttnHeadStats s;
    attn_head_stats(a, 64, &s);
    // heavy hitters: key 0, then keys 1..6 (ties at 0.5); rows >= 16 put 0.5 on key 0 and 0.5 on themselves
    assert_stats(&s, 0.5, 0.5, 0.5, 0.5, 1e-7);
    common_free(a);
}

Test(attnmap, stats_uniform_match_closed_form) {
    enum { T = 64 };
    float *a = make_matrix(T, uniform);
    AttnHeadStats s;
    attn_head_stats(a, T, &s);
    // row t: 1/(t+1) per key; column sums fall with the key index, so the heavy hitters are keys 0..6
    double s1 = 0, s4 = 0, hv = 0, rc = 0;
    for (int t = 16; t < T; t++) s1 += 1.0 / (t + 1), s4 += 4.0 / (t + 1), hv += 7.0 / (t + 1), rc += 16.0 / (t + 1);
    int n = T - 16;
    assert_stats(&s, s1 / n, s4 / n, hv / n, rc / n, 1e-6);
    // and the baseline attn_map_stats_compute reports is the same numbers
    AttnMapStats st;
    attn_map_stats_compute(&st, a, 1, 1, T);
    assert_stats(&st.uniform, s1 / n, s4 / n, hv / n, rc / n, 1e-6);
    cr_assert_eq(st.first_row, 16);
    cr_assert_eq(st.top_keys, 7);
    attn_map_stats_free(&st);
    common_free(a);
}

// Short sequences still average at least the last row: T = 8 uses row 7 only.
Test(attnmap, stats_short_sequence_uses_last_row) {
    float *a = make_matrix(8, uniform);
    AttnHeadStats s;
    attn_head_stats(a, 8, &s);
    assert_stats(&s, 1.0 / 8, 4.0 / 8, 1.0 / 8, 1.0, 1e-7); // top keys: ceil(0.8) = 1 (key 0)
    common_free(a);
}

// Means and maxima over heads and layers, and the JSON lines: (layer 0: sink head, self head), (layer 1: two
// uniform heads).
Test(attnmap, stats_reductions_and_json) {
    enum { T = 64, TT = T * T };
    float *att = common_calloc(4 * TT, sizeof(float));
    CellFn fs[4] = {all_on_key0, all_on_self, uniform, uniform};
    for (int i = 0; i < 4; i++) {
        float *a = make_matrix(T, fs[i]);
        memcpy(att + (size_t)i * TT, a, TT * sizeof(float));
        common_free(a);
    }
    AttnMapStats st;
    attn_map_stats_compute(&st, att, 2, 2, T);
    assert_stats(&st.layer_mean[0], 0.5, 0.5, 0.5, 0.5, 0);
    assert_stats(&st.layer_max[0], 1, 1, 1, 1, 0);
    assert_stats(&st.layer_mean[1], st.uniform.sink1, st.uniform.sink4, st.uniform.heavy, st.uniform.recent, 1e-7);
    assert_stats(&st.max, 1, 1, 1, 1, 0);
    cr_assert(fabs(st.mean.sink1 - (1 + 2 * st.uniform.sink1) / 4) < 1e-6);

    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    cr_assert_not_null(f);
    attn_map_stats_print_json(f, &st);
    fclose(f);
    int lines = 0;
    for (size_t i = 0; i < len; i++) lines += buf[i] == '\n';
    cr_assert_eq(lines, 3, "%s", buf);
    cr_assert(strstr(buf, "{\"type\": \"attn_layer\", \"layer\": 0, \"heads\": 2, \"T\": 64, \"sink1\": [1, 0], "
                          "\"sink4\": [1, 0], \"heavy\": [1, 0], \"recent\": [0, 1], "
                          "\"mean\": {\"sink1\": 0.5, \"sink4\": 0.5, \"heavy\": 0.5, \"recent\": 0.5}, "
                          "\"max\": {\"sink1\": 1, \"sink4\": 1, \"heavy\": 1, \"recent\": 1}}\n"),
              "%s", buf);
    cr_assert(strstr(buf, "{\"type\": \"attn_summary\", \"layers\": 2, \"heads\": 2, \"T\": 64, \"first_row\": 16, "
                          "\"top_keys\": 7, \"recent_keys\": 16, \"mean\": {"),
              "%s", buf);
    cr_assert(strstr(buf, "\"uniform\": {\"sink1\": "), "%s", buf);
    free(buf);
    attn_map_stats_free(&st);
    common_free(att);
}

// ---------------------------------------------------------------------------------------------------------
// Pictures.

Test(attnmap, colour_scale) {
    unsigned char lo[3], lo2[3], hi[3], mid[3];
    attn_map_colour(0.0f, lo);
    attn_map_colour(1e-5f, lo2);
    attn_map_colour(1.0f, hi);
    cr_assert(memcmp(lo, lo2, 3) == 0, "everything below 1e-3 is the darkest colour");
    cr_assert(lo[0] == 68 && lo[1] == 1 && lo[2] == 84 && hi[0] == 253 && hi[1] == 231 && hi[2] == 37);
    attn_map_colour(NAN, mid);
    cr_assert(memcmp(lo, mid, 3) == 0, "NaN draws as no attention, not garbage");
    // brighter with more attention across the whole scale (Rec. 709 luma of the colour)
    float prev = -1.0f;
    for (int i = 0; i <= 60; i++) {
        float p = powf(10.0f, -3.0f + i / 20.0f);
        attn_map_colour(p, mid);
        float luma = 0.2126f * mid[0] + 0.7152f * mid[1] + 0.0722f * mid[2];
        cr_assert(luma > prev, "luma not increasing at p = %g", p);
        prev = luma;
    }
    cr_assert_eq(attn_map_scale(64), 4);
    cr_assert_eq(attn_map_scale(100), 3);
    cr_assert_eq(attn_map_scale(256), 1);
    cr_assert_eq(attn_map_scale(1000), 1);
}

static void make_tmpdir(char *dir) {
    strcpy(dir, "/tmp/kvlab-attnmap-XXXXXX");
    cr_assert_not_null(mkdtemp(dir), "mkdtemp: %s", strerror(errno));
}

static unsigned char *read_all(const char *path, size_t *len) {
    char err[ERR_LEN];
    unsigned char *b = common_read_file(path, len, err);
    cr_assert_not_null(b, "%s", err);
    return b;
}

static unsigned be32(const unsigned char *p) { return (unsigned)p[0] << 24 | p[1] << 16 | p[2] << 8 | p[3]; }

// Checks the PNG signature and IHDR size, decodes it, and returns the pixels (w*h*3).
static unsigned char *check_png(const char *path, int w, int h) {
    size_t len;
    unsigned char *b = read_all(path, &len);
    static const unsigned char sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    cr_assert(len > 33 && memcmp(b, sig, 8) == 0 && memcmp(b + 12, "IHDR", 4) == 0, "%s is not a PNG", path);
    cr_assert_eq(be32(b + 16), (unsigned)w, "%s width %u, expected %d", path, be32(b + 16), w);
    cr_assert_eq(be32(b + 20), (unsigned)h, "%s height %u, expected %d", path, be32(b + 20), h);
    int dw, dh, ch;
    unsigned char *px = stbi_load_from_memory(b, (int)len, &dw, &dh, &ch, 3);
    cr_assert_not_null(px, "%s does not decode: %s", path, stbi_failure_reason());
    cr_assert(dw == w && dh == h);
    free(b);
    return px;
}

static int px_is(const unsigned char *px, int w, int x, int y, int r, int g, int b) {
    const unsigned char *p = px + 3 * ((size_t)y * w + x);
    return p[0] == r && p[1] == g && p[2] == b;
}

Test(attnmap, writes_layer_and_summary_pngs) {
    enum { T = 20 };
    Model m;
    int tokens[T];
    tiny_model(&m, tokens, T);
    char dir[64], path[256], err[ERR_LEN];
    make_tmpdir(dir);
    AttnMapStats st;
    cr_assert_eq(attn_maps(&m, tokens, T, dir, "tiny", &st, err), 0, "%s", err);
    int s = attn_map_scale(T), cell = T * s; // 13 pixels a cell, 260 a head
    cr_assert_eq(s, 13);
    int NH = m.cfg.n_head, L = m.cfg.n_layer, w = NH * cell + (NH - 1) * 2;
    unsigned char one[3];
    attn_map_colour(1.0f, one);
    for (int l = 0; l < L; l++) {
        snprintf(path, sizeof(path), "%s/tiny-layer%d.png", dir, l);
        unsigned char *px = check_png(path, w, cell);
        for (int h = 0; h < NH; h++) {
            int x0 = h * (cell + 2);
            // row 0 attends only to key 0 (probability 1): the brightest colour; the future is grey
            cr_assert(px_is(px, w, x0, 0, one[0], one[1], one[2]), "layer %d head %d: cell (0,0)", l, h);
            cr_assert(px_is(px, w, x0 + cell - 1, 0, 128, 128, 128), "layer %d head %d: future not grey", l, h);
            if (h > 0) cr_assert(px_is(px, w, x0 - 1, cell / 2, 255, 255, 255), "separator before head %d", h);
        }
        // non-trivial: the lower triangle of head 0 holds many different colours
        int distinct = 0;
        unsigned char seen[64][3];
        for (int r = 1; r < T && distinct < 64; r++)
            for (int c = 0; c <= r && distinct < 64; c++) {
                const unsigned char *p = px + 3 * ((size_t)(r * s) * w + c * s);
                int found = 0;
                for (int i = 0; i < distinct && !found; i++) found = memcmp(seen[i], p, 3) == 0;
                if (!found) memcpy(seen[distinct++], p, 3);
            }
        cr_assert(distinct >= 20, "layer %d: only %d colours in head 0", l, distinct);
        stbi_image_free(px);
        unlink(path);
    }
    snprintf(path, sizeof(path), "%s/tiny-summary.png", dir);
    stbi_image_free(check_png(path, L * cell + (L - 1) * 2, cell));
    unlink(path);
    cr_assert_eq(rmdir(dir), 0, "%s holds files besides the %d layers and the summary", dir, L);

    cr_assert(st.n_layer == L && st.n_head == NH && st.T == T && st.first_row == 16 && st.top_keys == 2);
    for (int i = 0; i < L * NH; i++) {
        const AttnHeadStats *h = &st.head[i];
        cr_assert(h->sink1 >= 0 && h->sink1 <= h->sink4 && h->sink4 <= 1.0001f && h->heavy >= 0 &&
                  h->heavy <= 1.0001f && h->recent > 0 && h->recent <= 1.0001f,
                  "head %d: %g %g %g %g", i, h->sink1, h->sink4, h->heavy, h->recent);
    }
    attn_map_stats_free(&st);
    model_free(&m);
}

Test(attnmap, errors_are_one_clear_line) {
    enum { T = 20 };
    Model m;
    int tokens[T];
    tiny_model(&m, tokens, T);
    char dir[64], path[256], err[ERR_LEN];
    make_tmpdir(dir);
    AttnMapStats st;

    snprintf(path, sizeof(path), "%s/missing", dir);
    cr_assert_eq(attn_maps(&m, tokens, T, path, "x", &st, err), -1);
    cr_assert(strstr(err, "does not exist") && strstr(err, path) && !strchr(err, '\n'), "%s", err);
    cr_assert_null(st.head, "stats are not allocated on failure");

    snprintf(path, sizeof(path), "%s/file", dir);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fclose(f);
    cr_assert_eq(attn_maps(&m, tokens, T, path, "x", &st, err), -1);
    cr_assert(strstr(err, "not a directory"), "%s", err);
    unlink(path);

    // the directory exists but a file in it cannot be created (the prefix names a missing subdirectory)
    cr_assert_eq(attn_maps(&m, tokens, T, dir, "nosub/x", &st, err), -1);
    cr_assert(strstr(err, "cannot write") && strstr(err, "nosub/x-layer0.png") && strstr(err, "No such file"), "%s", err);
    cr_assert_null(st.head);

    tokens[3] = 13;
    cr_assert_eq(attn_maps(&m, tokens, T, dir, "x", &st, err), -1);
    cr_assert(strstr(err, "position 3") && strstr(err, "vocabulary"), "%s", err);
    tokens[3] = 0;
    cr_assert_eq(attn_maps(&m, tokens, 1, dir, "x", &st, err), -1);
    cr_assert(strstr(err, "2..1024"), "%s", err);
    cr_assert_eq(rmdir(dir), 0, "a failed call left files in %s", dir);
    model_free(&m);
}

// ---------------------------------------------------------------------------------------------------------
// Text matrices (--matrix-out) and the start symbol.

// Reads a matrix file of T lines of T numbers into a (T, T); fails the test on any other shape.
static float *read_matrix(const char *path, int T) {
    size_t len;
    char *text = (char *)read_all(path, &len);
    float *a = common_calloc((size_t)T * T, sizeof(float));
    const char *p = text;
    for (int t = 0; t < T; t++) {
        for (int j = 0; j < T; j++) {
            char *end;
            a[(size_t)t * T + j] = strtof(p, &end);
            cr_assert(end != p, "%s: line %d has fewer than %d numbers", path, t + 1, T);
            cr_assert(*end == (j == T - 1 ? '\n' : ' '), "%s line %d: bad separator after number %d", path, t + 1, j);
            p = end + 1;
        }
    }
    cr_assert_eq(*p, '\0', "%s holds more than %d lines", path, T);
    free(text);
    return a;
}

// The text matrices hold exactly the collected attention (per head) and the summary's means (per layer):
// causal probability rows, written precisely enough to round-trip; and the index names every file.
Test(attnmap, text_matrices_round_trip) {
    enum { T = 30 };
    Model m;
    int tokens[T];
    tiny_model(&m, tokens, T);
    int L = m.cfg.n_layer, NH = m.cfg.n_head;
    float *att = alloc_att(&m, T);
    char dir[64], path[256], err[ERR_LEN];
    cr_assert_eq(attn_maps_collect(&m, tokens, T, att, err), 0, "%s", err);
    make_tmpdir(dir);
    AttnMapOutput o = {.matrix_dir = dir, .prefix = "tm"};
    AttnMapStats st;
    cr_assert_eq(attn_maps_write(&m, tokens, T, &o, &st, err), 0, "%s", err);
    cr_assert_eq(st.bos, 0);
    for (int l = 0; l < L; l++) {
        double mean[T * T] = {0}; // the summary's panel, computed here in double
        for (int h = 0; h < NH; h++) {
            snprintf(path, sizeof(path), "%s/tm-L%d-H%d.txt", dir, l, h);
            float *a = read_matrix(path, T);
            const float *ref = att + ((size_t)l * NH + h) * T * T;
            for (int t = 0; t < T; t++) {
                double sum = 0;
                for (int j = 0; j < T; j++) {
                    float x = a[t * T + j], r = ref[t * T + j];
                    if (j > t) cr_assert_eq(x, 0.0f, "%s: row %d key %d is in the future but %g", path, t, j, x);
                    cr_assert(fabsf(x - r) <= 1e-6f * fabsf(r), "%s (%d, %d): %.9g, collected %.9g", path, t, j, x, r);
                    sum += x;
                    mean[t * T + j] += r / NH;
                }
                cr_assert(fabs(sum - 1.0) < 1e-5, "%s row %d sums to %.8f", path, t, sum);
            }
            common_free(a);
            unlink(path);
        }
        snprintf(path, sizeof(path), "%s/tm-L%d-mean.txt", dir, l);
        float *a = read_matrix(path, T);
        float *lm = common_calloc((size_t)T * T, sizeof(float));
        attn_map_layer_mean(att + (size_t)l * NH * T * T, NH, T, lm); // what the summary PNG draws
        for (int i = 0; i < T * T; i++) {
            cr_assert(fabs(a[i] - mean[i]) < 1e-6, "%s cell %d: %.9g, mean of heads %.9g", path, i, a[i], mean[i]);
            cr_assert(fabsf(a[i] - lm[i]) <= 1e-6f * lm[i], "%s cell %d: %.9g, PNG path %.9g", path, i, a[i], lm[i]);
        }
        for (int t = 0; t < T; t++) {
            double sum = 0;
            for (int j = 0; j <= t; j++) sum += a[t * T + j];
            cr_assert(fabs(sum - 1.0) < 1e-5, "%s row %d sums to %.8f", path, t, sum);
        }
        common_free(a);
        common_free(lm);
        unlink(path);
    }
    snprintf(path, sizeof(path), "%s/tm-matrices.json", dir);
    size_t len;
    char *idx = (char *)read_all(path, &len);
    cr_assert(strstr(idx, "\"T\": 30, \"layers\": 2, \"heads\": 4, \"bos\": false"), "%s", idx);
    cr_assert(strstr(idx, "[\"tm-L1-H0.txt\", \"tm-L1-H1.txt\", \"tm-L1-H2.txt\", \"tm-L1-H3.txt\"]"), "%s", idx);
    cr_assert(strstr(idx, "\"mean_files\": [\"tm-L0-mean.txt\", \"tm-L1-mean.txt\"]"), "%s", idx);
    char want[128];
    snprintf(want, sizeof(want), "{\"layer\": 1, \"head\": 3, \"stats\": {\"sink1\": %.6g,", st.head[7].sink1);
    cr_assert(strstr(idx, want), "%s lacks %s", idx, want);
    free(idx);
    unlink(path);
    cr_assert_eq(rmdir(dir), 0, "%s holds files besides the matrices and the index (no PNGs without png_dir)", dir);
    attn_map_stats_free(&st);
    common_free(att);
    model_free(&m);
}

// A missing matrix directory is found before the forward pass; a failed file is named.
Test(attnmap, text_matrices_errors) {
    enum { T = 8 };
    Model m;
    int tokens[T];
    tiny_model(&m, tokens, T);
    char dir[64], path[256], err[ERR_LEN];
    make_tmpdir(dir);
    snprintf(path, sizeof(path), "%s/missing", dir);
    AttnMapOutput o = {.png_dir = dir, .matrix_dir = path, .prefix = "x"};
    AttnMapStats st;
    cr_assert_eq(attn_maps_write(&m, tokens, T, &o, &st, err), -1);
    cr_assert(strstr(err, "does not exist") && strstr(err, path), "%s", err);
    cr_assert_null(st.head);
    o = (AttnMapOutput){.matrix_dir = dir, .prefix = "nosub/x"};
    cr_assert_eq(attn_maps_write(&m, tokens, T, &o, &st, err), -1);
    cr_assert(strstr(err, "cannot write") && strstr(err, "nosub/x-L0-H0.txt"), "%s", err);
    cr_assert_eq(rmdir(dir), 0, "a failed call left files in %s", dir);
    model_free(&m);
}

// The start symbol: a character vocabulary holding STX has one; the window puts it first and drops the last
// text token; a window that already starts with it (a BPE's split) and a model without one are left alone.
Test(attnmap, window_starts_with_the_start_symbol) {
    Tokenizer with, without;
    char err[ERR_LEN];
    const unsigned char bytes[] = {0x02, ' ', 'a', 'b', 'c'};
    cr_assert_eq(tokenizer_from_bytes(&with, bytes, 5, err), 0, "%s", err);
    cr_assert_eq(tokenizer_from_bytes(&without, bytes + 1, 4, err), 0, "%s", err);
    int bos = tokenizer_bos_id(&with);
    cr_assert_eq(bos, 0, "STX is the smallest byte, so id 0");
    cr_assert_eq(tokenizer_bos_id(&without), -1);

    const int src[6] = {2, 3, 1, 4, 2, 3};
    int out[6];
    cr_assert_eq(attn_map_window(src, 6, bos, out), 1);
    const int want[6] = {0, 2, 3, 1, 4, 2};
    cr_assert(memcmp(out, want, sizeof(want)) == 0, "got %d %d %d %d %d %d", out[0], out[1], out[2], out[3], out[4], out[5]);
    cr_assert_eq(attn_map_window(src, 6, tokenizer_bos_id(&without), out), 0);
    cr_assert(memcmp(out, src, sizeof(src)) == 0);
    const int has[4] = {0, 4, 4, 1};
    cr_assert_eq(attn_map_window(has, 4, bos, out), 1);
    cr_assert(memcmp(out, has, sizeof(has)) == 0, "a window that starts with the start symbol keeps its tokens");
    tokenizer_free(&with);
    tokenizer_free(&without);
}

// Through the model: with the start symbol first, sink1 is the attention on it, and the index and the
// statistics say so.
Test(attnmap, start_symbol_is_token_zero_of_the_maps) {
    enum { T = 24 };
    Model m;
    int text[T], window[T];
    tiny_model(&m, text, T);
    for (int t = 0; t < T; t++) text[t] = 1 + text[t] % 12; // the text never holds token 0, the start symbol
    cr_assert_eq(attn_map_window(text, T, 0, window), 1);
    char dir[64], path[256], err[ERR_LEN];
    make_tmpdir(dir);
    AttnMapOutput o = {.matrix_dir = dir, .prefix = "b", .bos = 1};
    AttnMapStats st;
    cr_assert_eq(attn_maps_write(&m, window, T, &o, &st, err), 0, "%s", err);
    cr_assert_eq(st.bos, 1);
    // sink1 of head (0, 0) is the mean over rows >= 16 of the attention on key 0 of that head's file
    snprintf(path, sizeof(path), "%s/b-L0-H0.txt", dir);
    float *a = read_matrix(path, T);
    double s = 0;
    for (int t = st.first_row; t < T; t++) s += a[t * T];
    cr_assert(fabs(s / (T - st.first_row) - st.head[0].sink1) < 1e-6, "sink1 %g, file %g", st.head[0].sink1,
              s / (T - st.first_row));
    common_free(a);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    attn_map_stats_print_json(f, &st);
    attn_map_stats_print_text(f, &st);
    fclose(f);
    cr_assert(strstr(buf, "\"bos\": true}") && strstr(buf, "(token 0: the start symbol)"), "%s", buf);
    free(buf);
    snprintf(path, sizeof(path), "%s/b-matrices.json", dir);
    char *idx = (char *)read_all(path, &len);
    cr_assert(strstr(idx, "\"bos\": true"), "%s", idx);
    free(idx);
    attn_map_stats_free(&st);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -r '%s'", dir);
    cr_assert_eq(system(cmd), 0);
    model_free(&m);
}
