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
// Text matrices (for gnuplot; scripts/heatmaps.py draws them with axes, colour bar and titles), in dir:
//   {prefix}-L{l}-H{h}.txt   head h of layer l: T lines, one per query position 0..T-1 (top to bottom), each
//                            T space-separated probabilities over key positions 0..T-1 ("%.7g"; the future 0):
//                            gnuplot's `matrix` format, column = key, row = query;
//   {prefix}-L{l}-mean.txt   the mean over layer l's heads, the panel the summary PNG draws (same format);
//   {prefix}-matrices.json   the index: T, layers, heads, the files by layer and head, whether the window
//                            starts with the model's start symbol, and each head's statistics (below).
// The matrices are exactly what the PNGs draw (one window of T tokens, no averaging over windows; the
// means are attn_map_layer_mean's, which the summary PNG uses too).
//
// The start symbol: a model trained with one (tokenizer_bos_id >= 0: STX for a character model trained with
// `build/train --bos`, a BPE's bos) saw it at position 0 of every window. attn_map_window puts it first, so
// the sink statistics (key 0) measure attention on the start symbol, as in StreamingLLM.
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
    int bos;                   // 1 when token 0 was the model's start symbol (set by attn_maps_write)
} AttnMapStats;

// Where attn_maps_write puts its files; a NULL directory writes nothing of that kind.
typedef struct {
    const char *png_dir;    // {prefix}-layer{L}.png and {prefix}-summary.png
    const char *matrix_dir; // the text matrices and their index
    const char *prefix;
    int bos;                // 1: tokens[0] is the model's start symbol (recorded in the index and st)
} AttnMapOutput;

// The whole thing: checks dir, collects the matrices, writes the layer and summary PNGs and, when st is
// non-NULL, fills st (free with attn_map_stats_free). tokens[0..T) must be in the model's vocabulary;
// 2 <= T <= ATTN_MAP_MAX_T (T may exceed the trained context; RoPE extrapolates). CPU backend only.
// -1 with one line in err (ERR_LEN) when the directory is missing, a file cannot be written or an argument
// is out of range; st is then not allocated.
int attn_maps(const Model *m, const int *tokens, int T, const char *dir, const char *prefix, AttnMapStats *st,
              char *err);

// The same with a choice of outputs (PNGs, text matrices, both): checks every directory before the forward
// pass; st is filled even when no file is asked for. Same errors as attn_maps.
int attn_maps_write(const Model *m, const int *tokens, int T, const AttnMapOutput *o, AttnMapStats *st, char *err);

// The window the attention mode analyses, from T tokens of text src: with a start symbol (bos_id >= 0) it
// comes first, then src[0..T-1) (the last token drops so the length stays T), unless src[0] already is it (a
// BPE's encoding prepends its bos to a split); without one (bos_id < 0), src[0..T) as it is. Returns 1 when
// out[0] is the start symbol, 0 otherwise. out may not overlap src.
int attn_map_window(const int *src, int T, int bos_id, int *out);

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

// The mean over n_head heads of one layer's matrices att (n_head, T, T) into mean (T, T): the summary's
// panel for that layer, in the PNG and in the text matrices alike.
void attn_map_layer_mean(const float *att, int n_head, int T, float *mean);

// Writes the text matrices and the index for att (n_layer, n_head, T, T) (see above); st (may be NULL)
// adds the statistics and the start-symbol flag to the index. -1 with one line in err on a missing
// directory or a failed write.
int attn_maps_write_text(const float *att, int n_layer, int n_head, int T, const char *dir, const char *prefix,
                         const AttnMapStats *st, char *err);

// Writes the PNGs for att (n_layer, n_head, T, T). -1 with one line in err on a missing directory or a
// failed write.
int attn_maps_write_png(const float *att, int n_layer, int n_head, int T, const char *dir, const char *prefix,
                        char *err);
// The colour of probability p (the mapping above).
void attn_map_colour(float p, unsigned char rgb[3]);
// Pixels per matrix cell for T tokens: ceil(ATTN_MAP_MIN_HEAD_PX / T).
int attn_map_scale(int T);

#endif
