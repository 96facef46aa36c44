// `build/infer attention` (old spelling: --eval attention): attention heat maps (PNGs, and text matrices for
// scripts/heatmaps.py) and sink / heavy-hitter / recent-window statistics over the --data text's validation
// split, through the full cache (attnmap.h). A model with a start symbol gets it at position 0.
#include <stdio.h>

#include "attnmap.h"
#include "mode.h"

typedef struct {
    ModeCommon common;
    const char *out, *matrix_out, *data;
    int context, json;
} AttentionOpts;

static void attention_set_defaults(void *p) {
    AttentionOpts *o = p;
    o->data = "data/tinyshakespeare.txt";
}

static int attention_run(void *p, char *err) {
    AttentionOpts *o = p;
    if (!o->out && !o->matrix_out) {
        err_set(err, "--eval attention needs --out DIR (an existing directory for the PNGs) or --matrix-out DIR "
                     "(for the text matrices)");
        return -1;
    }
    Model m;
    Tokenizer tok;
    if (mode_load_model(&o->common, 0, &m, &tok, err) != 0) return -1;
    Corpus corpus;
    if (corpus_load(&corpus, &tok, o->data, 0, NULL, err) != 0) {
        model_free(&m);
        tokenizer_free(&tok);
        return -1;
    }
    int T = o->context ? o->context : m.cfg.block_size;
    int rc = -1;
    AttnMapStats st;
    if ((size_t)T > corpus.n_tokens - corpus.n_train)
        err_set(err, "--eval attention: the validation split has %zu tokens, fewer than --context %d",
                corpus.n_tokens - corpus.n_train, T);
    else {
        int *window = common_calloc((size_t)T, sizeof(int));
        AttnMapOutput out = {.png_dir = o->out, .matrix_dir = o->matrix_out, .prefix = "attn"};
        out.bos = attn_map_window(corpus.tokens + corpus.n_train, T, tokenizer_bos_id(&tok), window);
        rc = attn_maps_write(&m, window, T, &out, &st, err);
        common_free(window);
    }
    if (rc == 0) {
        if (o->json) attn_map_stats_print_json(stdout, &st);
        else attn_map_stats_print_text(stdout, &st);
        attn_map_stats_free(&st);
    }
    corpus_free(&corpus);
    model_free(&m);
    tokenizer_free(&tok);
    return rc;
}

static const ModeFlag attention_flags[] = {
    MODE_COMMON_FLAGS,
    {"--out", NULL, MODE_FLAG_STRING, offsetof(AttentionOpts, out), 0, 0, "DIR",
     "an existing directory for attn-layer{L}.png and attn-summary.png"},
    {"--matrix-out", NULL, MODE_FLAG_STRING, offsetof(AttentionOpts, matrix_out), 0, 0, "DIR",
     "an existing directory for the matrices as text (attn-*.txt, attn-matrices.json) for scripts/heatmaps.py"},
    {"--context", NULL, MODE_FLAG_INT, offsetof(AttentionOpts, context), 2, 1 << 20, "N",
     "tokens of the validation split   [model context, at most 1024]"},
    {"--json", NULL, MODE_FLAG_SWITCH, offsetof(AttentionOpts, json), 0, 0, NULL,
     "one JSON line per layer and a summary instead of text"},
    {"--data", NULL, MODE_FLAG_STRING, offsetof(AttentionOpts, data), 0, 0, "FILE",
     "the text (its validation split)   [data/tinyshakespeare.txt]"},
    {0},
};

const Mode mode_attention = {
    .name = "attention",
    .summary = "attention heat maps and sink / heavy-hitter statistics (old spelling: --eval attention)",
    .usage = "build/infer attention --ckpt FILE --out DIR [--matrix-out DIR] [--context N] [--data FILE] [--json]",
    .about = "Runs --context tokens of the --data text's validation split through the full cache, writes one PNG\n"
             "per layer and a summary into --out, the same matrices as text into --matrix-out (one or both),\n"
             "and prints sink, heavy-hitter and recent-window statistics. A model with a start symbol (STX from\n"
             "build/train --bos, a BPE's bos) gets it as token 0 (the text's last token drops), so the sink\n"
             "statistics measure attention on it.\n",
    .flags = attention_flags,
    .opts_size = sizeof(AttentionOpts),
    .defaults = attention_set_defaults,
    .run = attention_run,
};
