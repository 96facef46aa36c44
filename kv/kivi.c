// KIVI (Liu et al. 2024): keys quantized per channel over groups of G tokens, values per token, the newest
// tokens in fp32 until R of them wait, then the oldest G are quantized (G 32, R 128; R a multiple of G).
// Not a row format: cache.c holds its blocks; this entry names and parses it.
#include "codec.h"

static int kivi_parse(KVSpec *spec, const char *args) {
    int v[2], n;
    spec->group = 32;
    spec->residual = 128;
    if (!args) return 0;
    if ((n = kv_parse_ints(args, v, 2)) < 1 || v[0] < 1) return -1;
    spec->group = v[0];
    spec->residual = n > 1 ? v[1] : (128 / v[0] > 0 ? 128 / v[0] : 1) * v[0];
    return spec->residual >= spec->group && spec->residual % spec->group == 0 ? 0 : -1;
}


const KVCodec kv_codec_kivi2 = {
    .name = "kivi2",
    .form = "kivi2[:G[,R]]",
    .help = "KIVI 2-bit: keys per channel over G tokens (32), values per token, newest R (128) in fp32",
    .bits = 2,
    .parse = kivi_parse,
    .is_kivi = 1,
};

const KVCodec kv_codec_kivi4 = {
    .name = "kivi4",
    .form = "kivi4[:G[,R]]",
    .help = "KIVI 4-bit (as kivi2)",
    .bits = 4,
    .parse = kivi_parse,
    .is_kivi = 1,
};
