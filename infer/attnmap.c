// Attention heat maps and sink / heavy-hitter statistics (attnmap.h explains the pictures and the numbers).
#include "attnmap.h"

#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <string.h>
#include <sys/stat.h>

#include "../kv/kv.h"
#include "../decode/step.h"

// stb_image_write is compiled into this file only, with static linkage so nothing clashes if another file
// ever includes it too, and without its stdio writers: we write through our own callback so a failed fwrite
// or fclose (a full disk) is reported instead of leaving a truncated PNG behind silently.
#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STB_IMAGE_WRITE_STATIC
#define STBI_WRITE_NO_STDIO
// (its static declarations we never use are reported at the end of the file: that warning stays off here)
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#include <stb/stb_image_write.h>
#pragma GCC diagnostic pop

// ---------------------------------------------------------------------------------------------------------
// Collecting the matrices.

static int check_args(const Model *m, const int *tokens, int T, char *err) {
    if (m->ops != &ops_cpu)
        return err_set(err, "attention maps run on the CPU backend (got --device %s)", m->ops->name), -1;
    if (T < 2 || T > ATTN_MAP_MAX_T)
        return err_set(err, "attention maps need 2..%d tokens, got %d", ATTN_MAP_MAX_T, T), -1;
    for (int t = 0; t < T; t++)
        if (tokens[t] < 0 || tokens[t] >= m->cfg.vocab_size)
            return err_set(err, "token %d at position %d is outside the vocabulary (%d)", tokens[t], t,
                           m->cfg.vocab_size), -1;
    return 0;
}

typedef struct {
    float *att; // (L, NH, T, T)
    int NH, T;
} Collect;

// A copy of each layer's probabilities: s->att is scratch the next layer overwrites.
static void collect(void *ctx, int l, int pos, const float *att, int Tc) {
    Collect *cc = ctx;
    int T = cc->T;
    CHECK(Tc == pos + 1); // a full cache holds every key so far: row pos has pos+1
    for (int h = 0; h < cc->NH; h++)
        memcpy(cc->att + (((size_t)l * cc->NH + h) * T + pos) * T, att + (size_t)h * Tc, (size_t)Tc * sizeof(float));
}

int attn_maps_collect(const Model *m, const int *tokens, int T, float *att, char *err) {
    if (check_args(m, tokens, T, err) != 0) return -1;
    const ModelConfig *c = &m->cfg;
    memset(att, 0, (size_t)c->n_layer * c->n_head * T * T * sizeof(float)); // the future stays zero
    KVCache *kv;
    KVShape shape = decode_kv_shape(c, T);
    if (kv_full_init(&kv, &shape, err) != 0) return -1;
    DecodeState ds;
    decode_state_init(&ds, c, 1, T);
    Collect cc = {att, c->n_head, T};
    DecodeCache dc = {.kv = kv, .watch = collect, .watch_ctx = &cc};
    KVStore st = decode_store_cache(&dc);
    KVStore *stores[] = {&st};
    int rc = 0;
    for (int t = 0; t < T && rc == 0; t++)
        rc = decode_forward(m, &ds, stores, 1, &tokens[t], &t, 1, DECODE_LOGITS_ALL, err) < 0 ? -1 : 0;
    decode_state_free(&ds);
    kv_cache_free(kv);
    if (rc != 0) err_set(err, "the full KV cache refused a token (%d positions)", T);
    return rc;
}

// ---------------------------------------------------------------------------------------------------------
// Statistics.

static int stats_first_row(int T) { return T - 1 < ATTN_MAP_FIRST_ROW ? T - 1 : ATTN_MAP_FIRST_ROW; }
static int stats_top_keys(int T) { return (T + 9) / 10; }

// Marks in top[0..T) (zeroed) the k keys with the largest column sums, ties to the earlier key. A selection
// of k maxima (k = T/10 <= 103) is cheap next to the T^2 pass that made the sums, and keeps the order exact.
static void mark_top_keys(const double *col, int T, int k, unsigned char *top) {
    for (int i = 0; i < k; i++) {
        int best = -1;
        for (int j = 0; j < T; j++)
            if (!top[j] && (best < 0 || col[j] > col[best])) best = j;
        top[best] = 1;
    }
}

void attn_head_stats(const float *att, int T, AttnHeadStats *out) {
    CHECK(T >= 1);
    int first = stats_first_row(T), k = stats_top_keys(T);
    double *col = common_calloc((size_t)T, sizeof(double));
    unsigned char *top = common_calloc((size_t)T, 1);
    for (int t = 0; t < T; t++)
        for (int j = 0; j <= t; j++) col[j] += att[(size_t)t * T + j];
    mark_top_keys(col, T, k, top);
    double sink1 = 0, sink4 = 0, heavy = 0, recent = 0;
    for (int t = first; t < T; t++) {
        const float *row = att + (size_t)t * T;
        double total = 0, s4 = 0, hv = 0, rc = 0;
        for (int j = 0; j <= t; j++) {
            total += row[j];
            if (j < 4) s4 += row[j];
            if (top[j]) hv += row[j];
            if (j > t - ATTN_MAP_RECENT_KEYS) rc += row[j];
        }
        if (total <= 0) continue; // an empty row counts as no mass anywhere
        // shares of the row's mass: a probability row sums to 1, a mean of rows too, within rounding
        sink1 += row[0] / total, sink4 += s4 / total, heavy += hv / total, recent += rc / total;
    }
    int n = T - first;
    *out = (AttnHeadStats){(float)(sink1 / n), (float)(sink4 / n), (float)(heavy / n), (float)(recent / n)};
    common_free(col);
    common_free(top);
}

// The four metrics by index, so means, maxima and printing are one loop each.
#define N_METRICS 4
static const char *metric_names[N_METRICS] = {"sink1", "sink4", "heavy", "recent"};

static float metric_get(const AttnHeadStats *s, int i) {
    const float f[N_METRICS] = {s->sink1, s->sink4, s->heavy, s->recent};
    return f[i];
}

static void metric_set(AttnHeadStats *s, int i, float x) {
    float *f[N_METRICS] = {&s->sink1, &s->sink4, &s->heavy, &s->recent};
    *f[i] = x;
}

static void reduce(const AttnHeadStats *in, int n, AttnHeadStats *mean, AttnHeadStats *max) {
    for (int i = 0; i < N_METRICS; i++) {
        double sum = 0;
        float mx = -INFINITY;
        for (int j = 0; j < n; j++) {
            float x = metric_get(&in[j], i);
            sum += x;
            mx = x > mx ? x : mx;
        }
        metric_set(mean, i, (float)(sum / n));
        metric_set(max, i, mx);
    }
}

void attn_map_stats_compute(AttnMapStats *st, const float *att, int n_layer, int n_head, int T) {
    memset(st, 0, sizeof(*st));
    st->n_layer = n_layer, st->n_head = n_head, st->T = T;
    st->first_row = stats_first_row(T), st->top_keys = stats_top_keys(T);
    st->head = common_calloc((size_t)n_layer * n_head, sizeof(AttnHeadStats));
    st->layer_mean = common_calloc((size_t)n_layer, sizeof(AttnHeadStats));
    st->layer_max = common_calloc((size_t)n_layer, sizeof(AttnHeadStats));
    for (int i = 0; i < n_layer * n_head; i++) attn_head_stats(att + (size_t)i * T * T, T, &st->head[i]);
    for (int l = 0; l < n_layer; l++)
        reduce(st->head + (size_t)l * n_head, n_head, &st->layer_mean[l], &st->layer_max[l]);
    reduce(st->head, n_layer * n_head, &st->mean, &st->max);
    float *uni = common_calloc((size_t)T * T, sizeof(float));
    for (int t = 0; t < T; t++)
        for (int j = 0; j <= t; j++) uni[(size_t)t * T + j] = 1.0f / (float)(t + 1);
    attn_head_stats(uni, T, &st->uniform);
    common_free(uni);
}

void attn_map_stats_free(AttnMapStats *st) {
    common_free(st->head);
    common_free(st->layer_mean);
    common_free(st->layer_max);
    memset(st, 0, sizeof(*st));
}

static void json_stats(FILE *o, const char *name, const AttnHeadStats *s) {
    fprintf(o, "\"%s\": {", name);
    for (int i = 0; i < N_METRICS; i++)
        fprintf(o, "%s\"%s\": %.6g", i ? ", " : "", metric_names[i], metric_get(s, i));
    fputc('}', o);
}

void attn_map_stats_print_json(FILE *o, const AttnMapStats *st) {
    for (int l = 0; l < st->n_layer; l++) {
        fprintf(o, "{\"type\": \"attn_layer\", \"layer\": %d, \"heads\": %d, \"T\": %d", l, st->n_head, st->T);
        for (int i = 0; i < N_METRICS; i++) {
            fprintf(o, ", \"%s\": [", metric_names[i]);
            for (int h = 0; h < st->n_head; h++)
                fprintf(o, "%s%.6g", h ? ", " : "", metric_get(&st->head[(size_t)l * st->n_head + h], i));
            fputc(']', o);
        }
        fputs(", ", o);
        json_stats(o, "mean", &st->layer_mean[l]);
        fputs(", ", o);
        json_stats(o, "max", &st->layer_max[l]);
        fputs("}\n", o);
    }
    fprintf(o, "{\"type\": \"attn_summary\", \"layers\": %d, \"heads\": %d, \"T\": %d, \"first_row\": %d, "
               "\"top_keys\": %d, \"recent_keys\": %d, ",
            st->n_layer, st->n_head, st->T, st->first_row, st->top_keys, ATTN_MAP_RECENT_KEYS);
    json_stats(o, "mean", &st->mean);
    fputs(", ", o);
    json_stats(o, "max", &st->max);
    fputs(", ", o);
    json_stats(o, "uniform", &st->uniform);
    fprintf(o, ", \"bos\": %s}\n", st->bos ? "true" : "false");
}

static void text_stats(FILE *o, const AttnHeadStats *mean, const AttnHeadStats *max) {
    for (int i = 0; i < N_METRICS; i++)
        fprintf(o, "  %s %.3f (max %.3f)", metric_names[i], metric_get(mean, i),
                metric_get(max, i));
    fputc('\n', o);
}

void attn_map_stats_print_text(FILE *o, const AttnMapStats *st) {
    fprintf(o, "attention over %d tokens%s, %d layers x %d heads, rows >= %d; mean over heads (max over heads):\n",
            st->T, st->bos ? " (token 0: the start symbol)" : "", st->n_layer, st->n_head, st->first_row);
    for (int l = 0; l < st->n_layer; l++) {
        fprintf(o, "  layer %-3d", l);
        text_stats(o, &st->layer_mean[l], &st->layer_max[l]);
    }
    fprintf(o, "  all      ");
    text_stats(o, &st->mean, &st->max);
    const AttnHeadStats *u = &st->uniform;
    fprintf(o, "  uniform attention would give: sink1 %.3f  sink4 %.3f  heavy %.3f (top %d keys)  recent %.3f\n",
            u->sink1, u->sink4, u->heavy, st->top_keys, u->recent);
}

// ---------------------------------------------------------------------------------------------------------
// Pictures.

// Viridis (matplotlib's default map) sampled at v = 0, 0.1, ..., 1; linear in between. Its lightness rises
// steadily from end to end, so brighter always means more attention, in colour and in grey print.
static const unsigned char viridis[11][3] = {
    {68, 1, 84},    {72, 36, 117},  {65, 68, 135},  {53, 95, 141},   {42, 120, 142}, {33, 145, 140},
    {34, 168, 132}, {68, 191, 112}, {122, 209, 81}, {189, 223, 38}, {253, 231, 37},
};
static const unsigned char future_rgb[3] = {128, 128, 128}; // above the diagonal: not attended, not zero
static const unsigned char sep_rgb[3] = {255, 255, 255};

void attn_map_colour(float p, unsigned char rgb[3]) {
    float lo = -(float)ATTN_MAP_DECADES;
    float lg = p > 0 ? log10f(p) : lo; // also catches NaN
    float v = (fmaxf(lg, lo) - lo) / -lo;
    v = fminf(fmaxf(v, 0.0f), 1.0f) * 10.0f;
    int i = (int)v < 10 ? (int)v : 9;
    float f = v - (float)i;
    for (int c = 0; c < 3; c++)
        rgb[c] = (unsigned char)lrintf((1.0f - f) * viridis[i][c] + f * viridis[i + 1][c]);
}

int attn_map_scale(int T) { return (ATTN_MAP_MIN_HEAD_PX + T - 1) / T; }

typedef struct {
    unsigned char *px; // (h, w, 3)
    int w, h;
} Image;

// n matrices side by side, each T*s pixels square, with separators between.
static void image_init(Image *im, int n, int T) {
    int cell = T * attn_map_scale(T);
    im->w = n * cell + (n - 1) * ATTN_MAP_SEP_PX, im->h = cell;
    im->px = common_calloc((size_t)im->w * im->h, 3);
    for (size_t i = 0; i < (size_t)im->w * im->h; i++) memcpy(im->px + 3 * i, sep_rgb, 3);
}

// Draws matrix a (T, T) into panel `slot`: each cell an s x s block, the future grey.
static void draw_panel(Image *im, int slot, const float *a, int T) {
    int s = attn_map_scale(T), x0 = slot * (T * s + ATTN_MAP_SEP_PX);
    for (int r = 0; r < T; r++)
        for (int c = 0; c < T; c++) {
            unsigned char rgb[3];
            if (c > r) memcpy(rgb, future_rgb, 3);
            else attn_map_colour(a[(size_t)r * T + c], rgb);
            for (int y = r * s; y < (r + 1) * s; y++)
                for (int x = x0 + c * s; x < x0 + (c + 1) * s; x++) memcpy(im->px + 3 * ((size_t)y * im->w + x), rgb, 3);
        }
}

typedef struct {
    FILE *f;
    int failed;
} PngSink;

static void png_write_cb(void *ctx, void *data, int size) {
    PngSink *ps = ctx;
    if (!ps->failed && fwrite(data, 1, (size_t)size, ps->f) != (size_t)size) ps->failed = errno ? errno : EIO;
}

static int image_save(const Image *im, const char *path, char *err) {
    errno = 0;
    FILE *f = fopen(path, "wb");
    if (!f) return err_set(err, "cannot write '%s': %s", path, strerror(errno)), -1;
    PngSink ps = {f, 0};
    int ok = stbi_write_png_to_func(png_write_cb, &ps, im->w, im->h, 3, im->px, im->w * 3);
    if (fclose(f) != 0 && !ps.failed) ps.failed = errno ? errno : EIO;
    if (!ok) return err_set(err, "cannot encode '%s' (%d x %d pixels)", path, im->w, im->h), -1;
    if (ps.failed) return err_set(err, "cannot write '%s': %s", path, strerror(ps.failed)), -1;
    return 0;
}

static int check_dir(const char *dir, char *err) {
    struct stat sb;
    if (stat(dir, &sb) != 0) {
        if (errno == ENOENT) return err_set(err, "output directory '%s' does not exist (create it first)", dir), -1;
        return err_set(err, "output directory '%s': %s", dir, strerror(errno)), -1;
    }
    if (!S_ISDIR(sb.st_mode)) return err_set(err, "output path '%s' is not a directory", dir), -1;
    return 0;
}

static int make_path(char *path, size_t size, const char *dir, const char *prefix, const char *name, char *err) {
    int n = snprintf(path, size, "%s/%s-%s.png", dir, prefix, name);
    if (n < 0 || (size_t)n >= size) return err_set(err, "output path '%s/%s-%s.png' is too long", dir, prefix, name), -1;
    return 0;
}

int attn_maps_write_png(const float *att, int n_layer, int n_head, int T, const char *dir, const char *prefix,
                        char *err) {
    if (check_dir(dir, err) != 0) return -1;
    char path[4096], name[32];
    size_t TT = (size_t)T * T;
    float *mean = common_calloc(TT, sizeof(float));
    Image heads, layers;
    image_init(&heads, n_head, T);
    image_init(&layers, n_layer, T);
    int rc = 0;
    for (int l = 0; l < n_layer && rc == 0; l++) {
        const float *la = att + (size_t)l * n_head * TT;
        for (int h = 0; h < n_head; h++) draw_panel(&heads, h, la + (size_t)h * TT, T);
        attn_map_layer_mean(la, n_head, T, mean);
        draw_panel(&layers, l, mean, T);
        snprintf(name, sizeof(name), "layer%d", l);
        rc = make_path(path, sizeof(path), dir, prefix, name, err);
        if (rc == 0) rc = image_save(&heads, path, err);
    }
    if (rc == 0) rc = make_path(path, sizeof(path), dir, prefix, "summary", err);
    if (rc == 0) rc = image_save(&layers, path, err);
    common_free(heads.px);
    common_free(layers.px);
    common_free(mean);
    return rc;
}

void attn_map_layer_mean(const float *att, int n_head, int T, float *mean) {
    size_t TT = (size_t)T * T;
    memset(mean, 0, TT * sizeof(float));
    for (int h = 0; h < n_head; h++) {
        const float *a = att + (size_t)h * TT;
        for (size_t i = 0; i < TT; i++) mean[i] += a[i] / (float)n_head;
    }
}

int attn_map_window(const int *src, int T, int bos_id, int *out) {
    if (bos_id < 0 || src[0] == bos_id) {
        memcpy(out, src, (size_t)T * sizeof(int));
        return bos_id >= 0;
    }
    out[0] = bos_id;
    memcpy(out + 1, src, (size_t)(T - 1) * sizeof(int));
    return 1;
}

// ---------------------------------------------------------------------------------------------------------
// Text matrices.

// An open output file that remembers its path, so a failed write or close is reported with it.
typedef struct {
    FILE *f;
    char path[4096];
} TextFile;

static int text_open(TextFile *tf, const char *dir, const char *prefix, const char *name, char *err) {
    int n = snprintf(tf->path, sizeof(tf->path), "%s/%s-%s", dir, prefix, name);
    if (n < 0 || (size_t)n >= sizeof(tf->path))
        return err_set(err, "output path '%s/%s-%s' is too long", dir, prefix, name), -1;
    errno = 0;
    tf->f = fopen(tf->path, "w");
    if (!tf->f) return err_set(err, "cannot write '%s': %s", tf->path, strerror(errno)), -1;
    return 0;
}

static int text_close(TextFile *tf, char *err) {
    errno = 0;
    int bad = ferror(tf->f);
    int e = errno;
    if (fclose(tf->f) != 0 && !bad) bad = 1, e = errno;
    tf->f = NULL;
    if (bad) return err_set(err, "cannot write '%s': %s", tf->path, strerror(e ? e : EIO)), -1;
    return 0;
}

// One T x T matrix, a line per query row; the future (above the diagonal) is written as a plain 0.
static int write_matrix(const float *a, int T, const char *dir, const char *prefix, const char *name, char *err) {
    TextFile tf;
    if (text_open(&tf, dir, prefix, name, err) != 0) return -1;
    for (int t = 0; t < T; t++) {
        const float *row = a + (size_t)t * T;
        for (int j = 0; j < T; j++) {
            if (j > 0) fputc(' ', tf.f);
            if (j > t) fputc('0', tf.f);
            else fprintf(tf.f, "%.7g", row[j]);
        }
        fputc('\n', tf.f);
    }
    return text_close(&tf, err);
}

static void json_file_list(FILE *o, const char *prefix, int l, int n_head) {
    fputc('[', o);
    for (int h = 0; h < n_head; h++) fprintf(o, "%s\"%s-L%d-H%d.txt\"", h ? ", " : "", prefix, l, h);
    fputc(']', o);
}

static int write_index(int n_layer, int n_head, int T, const char *dir, const char *prefix, const AttnMapStats *st,
                       char *err) {
    TextFile tf;
    if (text_open(&tf, dir, prefix, "matrices.json", err) != 0) return -1;
    FILE *o = tf.f;
    fprintf(o, "{\"format\": \"one line per query position, space-separated probabilities over key positions\", "
               "\"T\": %d, \"layers\": %d, \"heads\": %d, \"bos\": %s,\n \"head_files\": [",
            T, n_layer, n_head, st && st->bos ? "true" : "false");
    for (int l = 0; l < n_layer; l++) {
        fputs(l ? ",\n   " : "", o);
        json_file_list(o, prefix, l, n_head);
    }
    fputs("],\n \"mean_files\": [", o);
    for (int l = 0; l < n_layer; l++) fprintf(o, "%s\"%s-L%d-mean.txt\"", l ? ", " : "", prefix, l);
    fputc(']', o);
    if (st) {
        fprintf(o, ",\n \"first_row\": %d, \"top_keys\": %d, \"recent_keys\": %d, ", st->first_row, st->top_keys,
                ATTN_MAP_RECENT_KEYS);
        json_stats(o, "uniform", &st->uniform);
        fputs(",\n \"head_stats\": [", o);
        for (int l = 0; l < n_layer; l++)
            for (int h = 0; h < n_head; h++) {
                fprintf(o, "%s{\"layer\": %d, \"head\": %d, ", l || h ? ",\n   " : "", l, h);
                json_stats(o, "stats", &st->head[(size_t)l * n_head + h]);
                fputc('}', o);
            }
        fputs("],\n \"layer_mean_stats\": [", o);
        for (int l = 0; l < n_layer; l++) {
            fprintf(o, "%s{\"layer\": %d, ", l ? ",\n   " : "", l);
            json_stats(o, "stats", &st->layer_mean[l]);
            fputc('}', o);
        }
        fputc(']', o);
    }
    fputs("}\n", o);
    return text_close(&tf, err);
}

int attn_maps_write_text(const float *att, int n_layer, int n_head, int T, const char *dir, const char *prefix,
                         const AttnMapStats *st, char *err) {
    if (check_dir(dir, err) != 0) return -1;
    size_t TT = (size_t)T * T;
    float *mean = common_calloc(TT, sizeof(float));
    char name[64];
    int rc = 0;
    for (int l = 0; l < n_layer && rc == 0; l++) {
        const float *la = att + (size_t)l * n_head * TT;
        for (int h = 0; h < n_head && rc == 0; h++) {
            snprintf(name, sizeof(name), "L%d-H%d.txt", l, h);
            rc = write_matrix(la + (size_t)h * TT, T, dir, prefix, name, err);
        }
        if (rc != 0) break;
        attn_map_layer_mean(la, n_head, T, mean);
        snprintf(name, sizeof(name), "L%d-mean.txt", l);
        rc = write_matrix(mean, T, dir, prefix, name, err);
    }
    if (rc == 0) rc = write_index(n_layer, n_head, T, dir, prefix, st, err);
    common_free(mean);
    return rc;
}

int attn_maps_write(const Model *m, const int *tokens, int T, const AttnMapOutput *o, AttnMapStats *st, char *err) {
    if (st) memset(st, 0, sizeof(*st));
    // the cheap checks first, so a typo in --out costs no forward pass
    if ((o->png_dir && check_dir(o->png_dir, err) != 0) || (o->matrix_dir && check_dir(o->matrix_dir, err) != 0) ||
        check_args(m, tokens, T, err) != 0)
        return -1;
    const ModelConfig *c = &m->cfg;
    float *att = common_calloc((size_t)c->n_layer * c->n_head * T * T, sizeof(float));
    AttnMapStats mine = {0};
    int rc = attn_maps_collect(m, tokens, T, att, err);
    if (rc == 0) {
        attn_map_stats_compute(&mine, att, c->n_layer, c->n_head, T);
        mine.bos = o->bos != 0;
    }
    if (rc == 0 && o->png_dir) rc = attn_maps_write_png(att, c->n_layer, c->n_head, T, o->png_dir, o->prefix, err);
    if (rc == 0 && o->matrix_dir)
        rc = attn_maps_write_text(att, c->n_layer, c->n_head, T, o->matrix_dir, o->prefix, &mine, err);
    if (rc == 0 && st) *st = mine;
    else attn_map_stats_free(&mine);
    common_free(att);
    return rc;
}

int attn_maps(const Model *m, const int *tokens, int T, const char *dir, const char *prefix, AttnMapStats *st,
              char *err) {
    AttnMapOutput o = {.png_dir = dir, .prefix = prefix};
    return attn_maps_write(m, tokens, T, &o, st, err);
}
