// Attention heat maps and the statistics behind StreamingLLM's attention sinks and H2O's heavy hitters.
// T tokens run through the model one at a time against the full fp32 KV cache; at every step each layer's
// and head's attention probabilities over keys 0..t are kept, giving one causal T x T matrix per (layer,
// head): row t is what token t paid to keys 0..t (sums to 1), the upper triangle (the future) is zero.
//
// Pictures (PNG, stb_image_write). {dir}/{prefix}-layer{L}.png: layer L's heads side by side, head 0 on
// the left, query rows top to bottom and keys left to right, a 2-pixel white separator between heads;
// {dir}/{prefix}-summary.png: the mean over heads of each layer, layers side by side (StreamingLLM's
// Figure 2 layout). Each matrix cell is an s x s block of pixels, s = ceil(256 / T), so a head is at least
// 256 pixels square. Colour: a probability p maps to v = (log10(max(p, 1e-3)) + 3) / 3 in [0, 1]: three
// decades on one fixed, absolute scale (1e-3 and below darkest, 0.01 at a third, 0.1 at two thirds, 1
// brightest), the same for every image and model so they can be compared; v is looked up in a viridis
// table (dark purple -> teal -> yellow, perceptually ordered). Uniform attention over 256 keys (0.004)
// sits at v = 0.2, so small probabilities stay visible. The future is drawn mid grey.
//
// Statistics, per (layer, head), over the rows t >= first_row = min(16, T - 1) (the first rows have so few
// keys that any pattern puts its mass on early keys):
//   sink1  mean attention on key 0 (StreamingLLM's attention sink);
//   sink4  mean attention on keys 0..3 (StreamingLLM keeps 4 sink tokens);
//   heavy  mean share of the row's mass on the top_keys = ceil(T / 10) keys with the largest column sums
//          over all T rows (H2O's accumulated attention; ties go to the earlier key);
//   recent mean share on the last 16 keys t-15..t (what a sliding window keeps).
// Column sums favour early keys (key j is seen by T - j rows), so even uniform attention has heavy > 0.1;
// `uniform` holds every statistic for uniform causal attention at the same T, the no-pattern baseline.
#ifndef KVLAB_ATTNMAP_H
#define KVLAB_ATTNMAP_H

#include <stdio.h>

#include "../layers/model.h"

#define ATTN_MAP_MAX_T 1024      // L * NH * T^2 floats are held: 1024 keeps a 6x6-head model near 150 MB
#define ATTN_MAP_FIRST_ROW 16    // statistics skip rows before this
#define ATTN_MAP_RECENT_KEYS 16  // the "recent" window
#define ATTN_MAP_MIN_HEAD_PX 256 // a head's picture is at least this many pixels square
#define ATTN_MAP_SEP_PX 2        // separator between heads (and layers in the summary)
#define ATTN_MAP_DECADES 3       // the colour scale spans [10^-DECADES, 1]

typedef struct {
    float sink1, sink4, heavy, recent;
} AttnHeadStats;

typedef struct {
    int n_layer, n_head, T;
    int first_row, top_keys;   // the rows averaged over and the heavy-hitter set size (see above)
    AttnHeadStats *head;       // (n_layer, n_head)
    AttnHeadStats *layer_mean; // (n_layer) mean over heads
    AttnHeadStats *layer_max;  // (n_layer) max over heads, metric by metric
    AttnHeadStats mean, max;   // over all layers and heads
    AttnHeadStats uniform;     // uniform causal attention at this T
} AttnMapStats;

// The whole thing: checks dir, collects the matrices, writes the layer and summary PNGs and, when st is
// non-NULL, fills st (free with attn_map_stats_free). tokens[0..T) must be in the model's vocabulary;
// 2 <= T <= ATTN_MAP_MAX_T (T may exceed the trained context; RoPE extrapolates). CPU backend only.
// -1 with one line in err (ERR_LEN) when the directory is missing, a file cannot be written or an argument
// is out of range; st is then not allocated.
int attn_maps(const Model *m, const int *tokens, int T, const char *dir, const char *prefix, AttnMapStats *st,
              char *err);

// Runs tokens[0..T) through a full cache and fills att (n_layer, n_head, T, T), which the caller sizes;
// the upper triangles are zeroed. Same arguments and errors as attn_maps, minus the files.
int attn_maps_collect(const Model *m, const int *tokens, int T, float *att, char *err);

// Statistics of one causal T x T matrix (row t over keys 0..t; entries above the diagonal are ignored).
// Pure: the same matrix gives the same numbers, whatever produced it.
void attn_head_stats(const float *att, int T, AttnHeadStats *out);
// Statistics of att (n_layer, n_head, T, T), as laid out by attn_maps_collect; allocates st's arrays.
void attn_map_stats_compute(AttnMapStats *st, const float *att, int n_layer, int n_head, int T);
void attn_map_stats_free(AttnMapStats *st);

// One JSON object per line: {"type": "attn_layer", ...} per layer (per-head arrays, mean and max over
// heads), then {"type": "attn_summary", ...} (mean and max over everything, the uniform baseline).
void attn_map_stats_print_json(FILE *out, const AttnMapStats *st);
// The same as a short table, one line per layer.
void attn_map_stats_print_text(FILE *out, const AttnMapStats *st);

// Writes the PNGs for att (n_layer, n_head, T, T). -1 with one line in err on a missing directory or a
// failed write.
int attn_maps_write_png(const float *att, int n_layer, int n_head, int T, const char *dir, const char *prefix,
                        char *err);
// The colour of probability p (the mapping above).
void attn_map_colour(float p, unsigned char rgb[3]);
// Pixels per matrix cell for T tokens: ceil(ATTN_MAP_MIN_HEAD_PX / T).
int attn_map_scale(int T);

#endif
