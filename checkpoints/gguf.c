// GGUF v3 import (layout and validation order in gguf.h). The file is read through a bounded cursor: every
// read checks the bytes left first, every count is checked against what the remaining bytes could hold
// before anything is allocated for it, so a hostile header can make the reader allocate at most a small
// multiple of the file's length. Pass one walks the header, the key/value section (values skipped, their
// bounds validated) and the tensor infos; then the metadata is interpreted (architecture, config, tensor
// set and shapes, tokenizer); only then are the weights dequantized (checkpoints/gguf_quant.c), straight
// into the model's host memory, row-parallel over OpenMP.
#include "gguf.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "../common/par.h"
#include "checkpoint.h"
#include "gguf_quant.h"

enum { // GGUF value types
    V_U8 = 0, V_I8 = 1, V_U16 = 2, V_I16 = 3, V_U32 = 4, V_I32 = 5, V_F32 = 6, V_BOOL = 7, V_STRING = 8,
    V_ARRAY = 9, V_U64 = 10, V_I64 = 11, V_F64 = 12, V_COUNT = 13
};

#define MAX_ARRAY_DEPTH 8     // nesting of arrays inside arrays
#define MAX_DIMS 4            // ggml's GGML_MAX_DIMS
#define MAX_KEY_BYTES 65535   // the GGUF spec's bound on a key
#define KV_MIN_BYTES 14       // key length (8) + one key byte + value type (4) + the smallest value (1)
#define TENSOR_MIN_BYTES 33   // name length (8) + one byte + n_dims (4) + one dim (8) + type (4) + offset (8)
#define DEFAULT_ALIGNMENT 32
#define MAX_BLOCK_SIZE 65536  // ModelConfig.block_size's bound; a longer context_length is clamped to it
#define MAX_VOCAB (1 << 20)

typedef struct {
    const unsigned char *key;
    size_t key_len;
    uint32_t type;
    size_t at; // offset of the value (an array: of its element type)
} Kv;

typedef struct {
    const unsigned char *name;
    size_t name_len;
    uint32_t n_dims, type;
    uint64_t ne[MAX_DIMS]; // fastest-varying first; unused dims 1
    uint64_t offset;       // from the start of the data section
    uint64_t n_elems, n_bytes;
} TensorInfo;

typedef struct {
    const unsigned char *data;
    size_t len;
    const char *name;
    char *err;
    int failed;
    uint64_t n_kv, n_tensors;
    Kv *kv;
    TensorInfo *ti;
    uint64_t alignment;
    size_t data_start;
    int *slot;   // (NUM_PARAM_TENSORS * n_layer) tensor index of each parameter tensor and layer
    char *strings; // the tokenizer's strings, NUL-terminated, and their pointer arrays
    const char **tokens, **merges;
    int *types;
} Gguf;

static int fail(Gguf *g, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(Gguf *g, const char *fmt, ...) {
    if (g->failed) return -1;
    char msg[ERR_LEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    err_set(g->err, "GGUF file '%s': %s", g->name, msg);
    g->failed = 1;
    return -1;
}

// A string from the file, printable for a one-line message: bytes outside ASCII 0x20..0x7e become '?',
// long strings are cut.
typedef struct {
    char s[72];
} Shown;
static Shown show(const unsigned char *p, size_t n) {
    Shown o;
    size_t k = 0;
    for (size_t i = 0; i < n && k < 64; i++) o.s[k++] = p[i] >= 0x20 && p[i] < 0x7f ? (char)p[i] : '?';
    if (n > 64) memcpy(o.s + k, "...", 3), k += 3;
    o.s[k] = 0;
    return o;
}

static const char *value_type_name(uint32_t t) {
    static const char *const names[V_COUNT] = {"u8",  "i8",     "u16",   "i16", "u32", "i32", "f32",
                                               "bool", "string", "array", "u64", "i64", "f64"};
    return t < V_COUNT ? names[t] : "unknown";
}

static size_t scalar_size(uint32_t t) {
    switch (t) {
    case V_U8: case V_I8: case V_BOOL: return 1;
    case V_U16: case V_I16: return 2;
    case V_U32: case V_I32: case V_F32: return 4;
    case V_U64: case V_I64: case V_F64: return 8;
    default: return 0;
    }
}

static uint64_t get_le(const unsigned char *p, size_t n) {
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

// ---- the bounded cursor ---------------------------------------------------------------------------------

static int need(Gguf *g, size_t pos, uint64_t n, const char *what) {
    if (pos <= g->len && n <= g->len - pos) return 0;
    return fail(g, "truncated: %s needs %llu bytes at offset %zu, the file has %zu", what, (unsigned long long)n,
                pos, g->len);
}

static int rd_u32(Gguf *g, size_t *pos, uint32_t *v, const char *what) {
    if (need(g, *pos, 4, what)) return -1;
    *v = (uint32_t)get_le(g->data + *pos, 4);
    *pos += 4;
    return 0;
}

static int rd_u64(Gguf *g, size_t *pos, uint64_t *v, const char *what) {
    if (need(g, *pos, 8, what)) return -1;
    *v = get_le(g->data + *pos, 8);
    *pos += 8;
    return 0;
}

static int rd_str(Gguf *g, size_t *pos, const unsigned char **s, size_t *n, const char *what) {
    uint64_t len;
    if (rd_u64(g, pos, &len, what)) return -1;
    if (len > g->len - *pos)
        return fail(g, "%s: a string of %llu bytes at offset %zu runs past the end of the file (%zu bytes)", what,
                    (unsigned long long)len, *pos - 8, g->len);
    *s = g->data + *pos;
    *n = (size_t)len;
    *pos += (size_t)len;
    return 0;
}

// Steps over a value of type t, checking its bounds (arrays nest at most MAX_ARRAY_DEPTH deep).
static int skip_value(Gguf *g, size_t *pos, uint32_t t, int depth, const char *what) {
    size_t sz = scalar_size(t);
    if (sz) return need(g, *pos, sz, what) ? -1 : (*pos += sz, 0);
    if (t == V_STRING) {
        const unsigned char *s;
        size_t n;
        return rd_str(g, pos, &s, &n, what);
    }
    if (t != V_ARRAY) return fail(g, "%s has unknown value type %u", what, t);
    if (depth >= MAX_ARRAY_DEPTH) return fail(g, "%s: arrays nested more than %d deep", what, MAX_ARRAY_DEPTH);
    uint32_t et;
    uint64_t count;
    if (rd_u32(g, pos, &et, what) || rd_u64(g, pos, &count, what)) return -1;
    size_t left = g->len - *pos;
    size_t esz = scalar_size(et);
    size_t min = esz ? esz : et == V_STRING ? 8 : et == V_ARRAY ? 12 : 0;
    if (!min) return fail(g, "%s is an array of unknown value type %u", what, et);
    if (count > left / min)
        return fail(g, "%s: an array of %llu %s elements does not fit in the %zu bytes left", what,
                    (unsigned long long)count, value_type_name(et), left);
    if (esz) {
        *pos += (size_t)count * esz;
        return 0;
    }
    for (uint64_t i = 0; i < count; i++)
        if (skip_value(g, pos, et, depth + 1, what)) return -1;
    return 0;
}

// ---- keys: lookup and typed access ---------------------------------------------------------------------

static int cmp_kv(const void *a, const void *b) {
    const Kv *x = a, *y = b;
    size_t n = x->key_len < y->key_len ? x->key_len : y->key_len;
    int c = memcmp(x->key, y->key, n);
    return c ? c : (x->key_len > y->key_len) - (x->key_len < y->key_len);
}

static const Kv *kv_find(const Gguf *g, const char *key) {
    size_t n = strlen(key);
    for (uint64_t i = 0; i < g->n_kv; i++)
        if (g->kv[i].key_len == n && memcmp(g->kv[i].key, key, n) == 0) return &g->kv[i];
    return NULL;
}

static int is_int_type(uint32_t t) {
    return t == V_U8 || t == V_I8 || t == V_U16 || t == V_I16 || t == V_U32 || t == V_I32 || t == V_U64 ||
           t == V_I64;
}

// An integer scalar as int64 (-1 for a u64 beyond INT64_MAX, with *big set).
static int64_t int_value(const Gguf *g, const Kv *kv, int *big) {
    size_t sz = scalar_size(kv->type);
    uint64_t u = get_le(g->data + kv->at, sz);
    *big = 0;
    switch (kv->type) {
    case V_I8: return (int8_t)u;
    case V_I16: return (int16_t)u;
    case V_I32: return (int32_t)u;
    case V_I64: return (int64_t)u;
    case V_U64:
        if (u > INT64_MAX) *big = 1;
        return *big ? -1 : (int64_t)u;
    default: return (int64_t)u;
    }
}

// An integer key in [lo, hi]. *present (may be NULL for a required key) says whether it was there.
static int key_int(Gguf *g, const char *key, int64_t lo, int64_t hi, int64_t *out, int *present) {
    const Kv *kv = kv_find(g, key);
    if (present) *present = kv != NULL;
    if (!kv) return present ? 0 : fail(g, "missing key %s", key);
    if (!is_int_type(kv->type))
        return fail(g, "key %s has type %s, expected an integer", key, value_type_name(kv->type));
    int big;
    int64_t v = int_value(g, kv, &big);
    if (big || v < lo || v > hi)
        return fail(g, "key %s is %s%lld, outside %lld..%lld", key, big ? ">" : "", big ? (long long)INT64_MAX : (long long)v,
                    (long long)lo, (long long)hi);
    *out = v;
    return 0;
}

static int key_float(Gguf *g, const char *key, double *out, int *present) {
    const Kv *kv = kv_find(g, key);
    if (present) *present = kv != NULL;
    if (!kv) return present ? 0 : fail(g, "missing key %s", key);
    if (kv->type == V_F32) {
        uint32_t b = (uint32_t)get_le(g->data + kv->at, 4);
        float f;
        memcpy(&f, &b, 4);
        *out = f;
    } else if (kv->type == V_F64) {
        uint64_t b = get_le(g->data + kv->at, 8);
        memcpy(out, &b, 8);
    } else if (is_int_type(kv->type)) {
        int big;
        *out = (double)int_value(g, kv, &big);
        if (big) *out = 1e300;
    } else {
        return fail(g, "key %s has type %s, expected a number", key, value_type_name(kv->type));
    }
    if (!isfinite(*out)) return fail(g, "key %s is %g, not a finite number", key, *out);
    return 0;
}

// A string key (pointer into the file, not NUL-terminated; a NUL inside is refused).
static int key_str(Gguf *g, const char *key, const unsigned char **s, size_t *n, int *present) {
    const Kv *kv = kv_find(g, key);
    if (present) *present = kv != NULL;
    if (!kv) return present ? 0 : fail(g, "missing key %s", key);
    if (kv->type != V_STRING)
        return fail(g, "key %s has type %s, expected a string", key, value_type_name(kv->type));
    *n = (size_t)get_le(g->data + kv->at, 8);
    *s = g->data + kv->at + 8;
    if (memchr(*s, 0, *n)) return fail(g, "key %s holds a NUL byte", key);
    return 0;
}

static int key_bool(Gguf *g, const char *key, int *out, int *present) {
    const Kv *kv = kv_find(g, key);
    *present = kv != NULL;
    if (!kv) return 0;
    if (kv->type != V_BOOL) return fail(g, "key %s has type %s, expected a bool", key, value_type_name(kv->type));
    unsigned char b = g->data[kv->at];
    if (b > 1) return fail(g, "key %s holds the byte %u, not a bool (0 or 1)", key, b);
    *out = b;
    return 0;
}

// An array key: its element type, count and the offset of its first element.
static int key_array(Gguf *g, const char *key, uint32_t *etype, uint64_t *count, size_t *first, int *present) {
    const Kv *kv = kv_find(g, key);
    *present = kv != NULL;
    if (!kv) return 0;
    if (kv->type != V_ARRAY) return fail(g, "key %s has type %s, expected an array", key, value_type_name(kv->type));
    *etype = (uint32_t)get_le(g->data + kv->at, 4);
    *count = get_le(g->data + kv->at + 4, 8);
    *first = kv->at + 12;
    return 0;
}

static int str_is(const unsigned char *s, size_t n, const char *lit) {
    return n == strlen(lit) && memcmp(s, lit, n) == 0;
}

// ---- pass one: header, keys, tensor infos ---------------------------------------------------------------

static int parse_header(Gguf *g) {
    size_t pos = 0;
    size_t have = g->len < 4 ? g->len : 4;
    if (memcmp(g->data, GGUF_MAGIC, have) != 0) return fail(g, "not a GGUF file (bad magic)");
    if (g->len < 24)
        return fail(g, "truncated: %zu bytes, shorter than the 24-byte GGUF header", g->len);
    pos = 4;
    uint32_t version;
    rd_u32(g, &pos, &version, "the header");
    if (version != 3 && version != 2) {
        if (version > 0xffff && (version >> 24) != 0)
            return fail(g, "GGUF version 0x%08x is not supported (a big-endian file?); kvlab reads versions 2 and 3",
                        version);
        return fail(g, "GGUF version %u is not supported; kvlab reads versions 2 and 3", version);
    }
    rd_u64(g, &pos, &g->n_tensors, "the header");
    rd_u64(g, &pos, &g->n_kv, "the header");
    size_t left = g->len - pos;
    if (g->n_kv > left / KV_MIN_BYTES)
        return fail(g, "the header claims %llu keys, more than the %zu bytes after it could hold",
                    (unsigned long long)g->n_kv, left);
    if (g->n_tensors > left / TENSOR_MIN_BYTES ||
        g->n_kv * KV_MIN_BYTES + g->n_tensors * TENSOR_MIN_BYTES > left)
        return fail(g, "the header claims %llu tensors and %llu keys, more than the %zu bytes after it could hold",
                    (unsigned long long)g->n_tensors, (unsigned long long)g->n_kv, left);

    g->kv = common_calloc((size_t)g->n_kv + 1, sizeof *g->kv);
    char what[96];
    for (uint64_t i = 0; i < g->n_kv; i++) {
        Kv *kv = &g->kv[i];
        snprintf(what, sizeof what, "key %llu", (unsigned long long)i);
        if (rd_str(g, &pos, &kv->key, &kv->key_len, what)) return -1;
        if (kv->key_len == 0 || kv->key_len > MAX_KEY_BYTES)
            return fail(g, "key %llu has length %zu (1..%d allowed)", (unsigned long long)i, kv->key_len,
                        MAX_KEY_BYTES);
        if (memchr(kv->key, 0, kv->key_len))
            return fail(g, "key %llu ('%s') holds a NUL byte", (unsigned long long)i, show(kv->key, kv->key_len).s);
        snprintf(what, sizeof what, "key '%s'", show(kv->key, kv->key_len).s);
        if (rd_u32(g, &pos, &kv->type, what)) return -1;
        kv->at = pos;
        if (skip_value(g, &pos, kv->type, 0, what)) return -1;
    }
    if (g->n_kv > 1) {
        Kv *sorted = common_calloc((size_t)g->n_kv, sizeof *sorted);
        memcpy(sorted, g->kv, (size_t)g->n_kv * sizeof *sorted);
        qsort(sorted, (size_t)g->n_kv, sizeof *sorted, cmp_kv);
        for (uint64_t i = 1; i < g->n_kv; i++)
            if (cmp_kv(&sorted[i - 1], &sorted[i]) == 0) {
                Shown k = show(sorted[i].key, sorted[i].key_len);
                common_free(sorted);
                return fail(g, "duplicate key '%s'", k.s);
            }
        common_free(sorted);
    }

    g->ti = common_calloc((size_t)g->n_tensors + 1, sizeof *g->ti);
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        TensorInfo *t = &g->ti[i];
        snprintf(what, sizeof what, "tensor info %llu", (unsigned long long)i);
        if (rd_str(g, &pos, &t->name, &t->name_len, what)) return -1;
        if (t->name_len == 0) return fail(g, "tensor %llu has an empty name", (unsigned long long)i);
        if (memchr(t->name, 0, t->name_len))
            return fail(g, "tensor %llu ('%s') has a NUL byte in its name", (unsigned long long)i,
                        show(t->name, t->name_len).s);
        snprintf(what, sizeof what, "tensor '%s'", show(t->name, t->name_len).s);
        if (rd_u32(g, &pos, &t->n_dims, what)) return -1;
        if (t->n_dims < 1 || t->n_dims > MAX_DIMS)
            return fail(g, "%s has %u dimensions (1..%d allowed)", what, t->n_dims, MAX_DIMS);
        for (int d = 0; d < MAX_DIMS; d++) t->ne[d] = 1;
        for (uint32_t d = 0; d < t->n_dims; d++)
            if (rd_u64(g, &pos, &t->ne[d], what)) return -1;
        if (rd_u32(g, &pos, &t->type, what) || rd_u64(g, &pos, &t->offset, what)) return -1;
    }

    g->alignment = DEFAULT_ALIGNMENT;
    int64_t a;
    int present;
    if (key_int(g, "general.alignment", 0, INT64_MAX, &a, &present)) return -1;
    if (present) {
        if (a == 0 || (a & (a - 1)) != 0 || a > (1 << 30))
            return fail(g, "general.alignment %lld is not a power of two in 1..2^30", (long long)a);
        g->alignment = (uint64_t)a;
    }
    uint64_t start = ((uint64_t)pos + g->alignment - 1) / g->alignment * g->alignment;
    if (g->n_tensors > 0 && start > g->len)
        return fail(g, "truncated: the tensor data would start at offset %llu, the file has %zu bytes",
                    (unsigned long long)start, g->len);
    g->data_start = start > g->len ? g->len : (size_t)start;
    return 0;
}

// ---- the model config -----------------------------------------------------------------------------------

// The config from the llama.* keys; the vocabulary is llama.vocab_size, or else the length of
// tokenizer.ggml.tokens.
static int read_config(Gguf *g, ModelConfig *cfg) {
    const unsigned char *s;
    size_t n;
    int present;
    if (key_str(g, "general.architecture", &s, &n, NULL)) return -1;
    if (!str_is(s, n, "llama"))
        return fail(g, "architecture '%s' is not supported (kvlab imports llama only)", show(s, n).s);

    int64_t n_layer, n_embd, n_hidden, n_head, n_kv_head, ctx, v;
    const int64_t big = 1 << 30;
    if (key_int(g, "llama.block_count", 1, big, &n_layer, NULL) ||
        key_int(g, "llama.embedding_length", 1, big, &n_embd, NULL) ||
        key_int(g, "llama.feed_forward_length", 1, big, &n_hidden, NULL) ||
        key_int(g, "llama.attention.head_count", 1, big, &n_head, NULL) ||
        key_int(g, "llama.context_length", 1, INT64_MAX, &ctx, NULL))
        return -1;
    if (key_int(g, "llama.attention.head_count_kv", 1, big, &n_kv_head, &present)) return -1;
    if (!present) n_kv_head = n_head;
    double theta = 10000.0, eps;
    if (key_float(g, "llama.rope.freq_base", &theta, &present)) return -1;
    if (key_float(g, "llama.attention.layer_norm_rms_epsilon", &eps, NULL)) return -1;

    // What would change the math: RoPE scaling, experts.
    if (key_str(g, "llama.rope.scaling.type", &s, &n, &present)) return -1;
    if (present && !str_is(s, n, "none"))
        return fail(g, "RoPE scaling '%s' (llama.rope.scaling.type) is not supported", show(s, n).s);
    static const char *const factors[] = {"llama.rope.scaling.factor", "llama.rope.scale_linear"};
    for (int i = 0; i < 2; i++) {
        double f;
        if (key_float(g, factors[i], &f, &present)) return -1;
        if (present && f != 0.0 && f != 1.0)
            return fail(g, "RoPE scaling factor %g (%s) is not supported", f, factors[i]);
    }
    if (key_int(g, "llama.expert_count", 0, INT64_MAX, &v, &present)) return -1;
    if (present && v > 0) return fail(g, "a mixture of experts (llama.expert_count %lld) is not supported", (long long)v);

    int64_t vocab;
    if (key_int(g, "llama.vocab_size", 1, MAX_VOCAB, &vocab, &present)) return -1;
    if (!present) {
        uint32_t et;
        uint64_t n_tok;
        size_t at;
        if (key_array(g, "tokenizer.ggml.tokens", &et, &n_tok, &at, &present)) return -1;
        if (!present) return fail(g, "missing key llama.vocab_size (and no tokenizer.ggml.tokens to count)");
        if (n_tok < 1 || n_tok > MAX_VOCAB)
            return fail(g, "tokenizer.ggml.tokens has %llu tokens, outside 1..%d", (unsigned long long)n_tok, MAX_VOCAB);
        vocab = (int64_t)n_tok;
    }

    *cfg = (ModelConfig){.vocab_size = (int)vocab, .n_layer = (int)n_layer, .n_head = (int)n_head,
                         .n_kv_head = (int)n_kv_head, .n_embd = (int)n_embd, .n_hidden = (int)n_hidden,
                         .block_size = (int)(ctx > MAX_BLOCK_SIZE ? MAX_BLOCK_SIZE : ctx),
                         .rope_theta = (float)theta, .norm_eps = (float)eps, .dropout = 0.0f};
    char reason[ERR_LEN];
    if (model_config_validate(cfg, reason) != 0) return fail(g, "unsupported model config: %s", reason);

    int hd = model_head_dim(cfg);
    static const char *const dims[] = {"llama.rope.dimension_count", "llama.attention.key_length",
                                       "llama.attention.value_length"};
    for (int i = 0; i < 3; i++) {
        if (key_int(g, dims[i], 0, INT64_MAX, &v, &present)) return -1;
        if (present && v != hd)
            return fail(g, "%s is %lld but the head dimension (embedding_length / head_count) is %d", dims[i],
                        (long long)v, hd);
    }
    return 0;
}

// ---- tensors --------------------------------------------------------------------------------------------

static const char *const LAYER_TENSORS[NUM_PARAM_TENSORS] = {
    NULL, "attn_norm.weight", "attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight",
    "ffn_norm.weight", "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight", NULL};
enum { P_WTE = 0, P_FINAL_NORM = 10 };

// The GGUF dims (fastest first) parameter p must have.
static int expected_dims(const ModelConfig *c, int p, uint64_t ne[2]) {
    uint64_t C = (uint64_t)c->n_embd, KVC = (uint64_t)model_kv_dim(c), H = (uint64_t)c->n_hidden,
             V = (uint64_t)c->vocab_size;
    switch (p) {
    case 0: ne[0] = C, ne[1] = V; return 2;
    case 1: case 6: case 10: ne[0] = C; return 1;
    case 2: case 5: ne[0] = C, ne[1] = C; return 2;
    case 3: case 4: ne[0] = C, ne[1] = KVC; return 2;
    case 7: case 8: ne[0] = C, ne[1] = H; return 2;
    default: ne[0] = H, ne[1] = C; return 2; // 9: ffn_down
    }
}

// Which parameter tensor and layer a name stands for; -1 (with the reason) when the model has no such tensor.
static int tensor_slot(Gguf *g, const TensorInfo *t, int n_layer) {
    const unsigned char *s = t->name;
    size_t n = t->name_len;
    Shown nm = show(s, n);
    if (str_is(s, n, "token_embd.weight")) return P_WTE * n_layer;
    if (str_is(s, n, "output_norm.weight")) return P_FINAL_NORM * n_layer;
    if (str_is(s, n, "output.weight"))
        return fail(g, "a separate output head (output.weight) is not supported yet (kvlab ties it to token_embd)");
    if (n > 5 && memcmp(s + n - 5, ".bias", 5) == 0)
        return fail(g, "tensor '%s' is a bias; kvlab's llama has no biases", nm.s);
    if (n > 4 && memcmp(s, "blk.", 4) == 0) {
        size_t i = 4;
        int64_t layer = 0;
        while (i < n && s[i] >= '0' && s[i] <= '9' && i < 12) layer = layer * 10 + (s[i++] - '0');
        int digits = (int)i - 4;
        if (digits > 0 && i < n && s[i] == '.' && !(digits > 1 && s[4] == '0')) {
            for (int p = 1; p < P_FINAL_NORM; p++)
                if (str_is(s + i + 1, n - i - 1, LAYER_TENSORS[p])) {
                    if (layer >= n_layer)
                        return fail(g, "tensor '%s' names layer %lld but llama.block_count is %d", nm.s,
                                    (long long)layer, n_layer);
                    return p * n_layer + (int)layer;
                }
        }
    }
    return fail(g, "tensor '%s' is not one kvlab's llama uses", nm.s);
}

static int check_tensors(Gguf *g, const ModelConfig *cfg) {
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        TensorInfo *t = &g->ti[i];
        Shown nm = show(t->name, t->name_len);
        size_t block, bytes;
        if (!gguf_type_supported(t->type, &block, &bytes)) {
            const char *tn = gguf_type_name(t->type);
            if (tn) return fail(g, "tensor '%s' has type %s, which kvlab does not read (F32, F16, BF16, Q8_0, Q4_0, "
                                   "Q4_1, Q4_K, Q6_K)", nm.s, tn);
            return fail(g, "tensor '%s' has unknown ggml type %u", nm.s, t->type);
        }
        uint64_t elems = 1;
        for (int d = 0; d < MAX_DIMS; d++) {
            if (t->ne[d] == 0) return fail(g, "tensor '%s' has a zero dimension", nm.s);
            if (t->ne[d] > (UINT64_MAX >> 2) / elems)
                return fail(g, "tensor '%s': its dimensions overflow 64 bits", nm.s);
            elems *= t->ne[d];
        }
        if (t->ne[0] % block != 0)
            return fail(g, "tensor '%s': row length %llu is not a multiple of the %s block (%zu)", nm.s,
                        (unsigned long long)t->ne[0], gguf_type_name(t->type), block);
        if (elems / block > UINT64_MAX / bytes) return fail(g, "tensor '%s': its byte size overflows", nm.s);
        t->n_elems = elems;
        t->n_bytes = elems / block * bytes;
        if (t->offset % g->alignment != 0)
            return fail(g, "tensor '%s': data offset %llu is not a multiple of the alignment %llu", nm.s,
                        (unsigned long long)t->offset, (unsigned long long)g->alignment);
        uint64_t room = g->len - g->data_start;
        if (t->offset > room || t->n_bytes > room - t->offset)
            return fail(g, "tensor '%s' (%llu bytes at data offset %llu) runs past the end of the file", nm.s,
                        (unsigned long long)t->n_bytes, (unsigned long long)t->offset);
    }

    int L = cfg->n_layer, n_slots = NUM_PARAM_TENSORS * L;
    g->slot = common_calloc((size_t)n_slots, sizeof *g->slot);
    for (int i = 0; i < n_slots; i++) g->slot[i] = -1;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        int s = tensor_slot(g, &g->ti[i], L);
        if (s < 0) return -1;
        if (g->slot[s] >= 0) return fail(g, "tensor '%s' appears twice", show(g->ti[i].name, g->ti[i].name_len).s);
        g->slot[s] = (int)i;
    }
    for (int p = 0; p < NUM_PARAM_TENSORS; p++)
        for (int l = 0; l < L; l++) {
            int per_layer = LAYER_TENSORS[p] != NULL;
            if (!per_layer && l > 0) continue;
            int idx = g->slot[p * L + l];
            if (idx < 0) {
                if (per_layer) return fail(g, "missing tensor 'blk.%d.%s'", l, LAYER_TENSORS[p]);
                return fail(g, "missing tensor '%s'", p == P_WTE ? "token_embd.weight" : "output_norm.weight");
            }
            const TensorInfo *t = &g->ti[idx];
            uint64_t ne[2];
            int nd = expected_dims(cfg, p, ne);
            int ok = 1;
            for (int d = 0; d < MAX_DIMS; d++) ok &= t->ne[d] == (d < nd ? ne[d] : 1);
            if (!ok) {
                char got[96], want[64];
                int k = snprintf(got, sizeof got, "[");
                for (uint32_t d = 0; d < t->n_dims; d++)
                    k += snprintf(got + k, sizeof got - (size_t)k, "%s%llu", d ? ", " : "", (unsigned long long)t->ne[d]);
                snprintf(got + k, sizeof got - (size_t)k, "]");
                if (nd == 1) snprintf(want, sizeof want, "[%llu]", (unsigned long long)ne[0]);
                else snprintf(want, sizeof want, "[%llu, %llu]", (unsigned long long)ne[0], (unsigned long long)ne[1]);
                return fail(g, "tensor '%s' has dims %s, the config needs %s", show(t->name, t->name_len).s, got,
                            want);
            }
        }

    // No two tensors share bytes: the weights the file claims are at most the file's length.
    uint64_t *order = common_calloc((size_t)g->n_tensors + 1, sizeof *order);
    for (uint64_t i = 0; i < g->n_tensors; i++) order[i] = i;
    for (uint64_t i = 1; i < g->n_tensors; i++) { // insertion sort by offset (the usual file is already sorted)
        uint64_t x = order[i], j = i;
        while (j > 0 && g->ti[order[j - 1]].offset > g->ti[x].offset) order[j] = order[j - 1], j--;
        order[j] = x;
    }
    int rc = 0;
    for (uint64_t i = 1; i < g->n_tensors && rc == 0; i++) {
        const TensorInfo *a = &g->ti[order[i - 1]], *b = &g->ti[order[i]];
        if (a->offset + a->n_bytes > b->offset)
            rc = fail(g, "tensors '%s' and '%s' overlap in the file", show(a->name, a->name_len).s,
                      show(b->name, b->name_len).s);
    }
    common_free(order);
    return rc;
}

// ---- the tokenizer --------------------------------------------------------------------------------------

// Copies an array of count strings starting at offset first into NUL-terminated strings in buf (advancing
// *buf) and pointers in out.
static int copy_strings(Gguf *g, const char *key, size_t first, uint64_t count, char **buf, const char **out) {
    size_t pos = first;
    for (uint64_t i = 0; i < count; i++) {
        const unsigned char *s = NULL;
        size_t n = 0;
        if (rd_str(g, &pos, &s, &n, key)) return -1; // bounds were checked in pass one
        if (memchr(s, 0, n)) return fail(g, "%s[%llu] holds a NUL byte", key, (unsigned long long)i);
        memcpy(*buf, s, n);
        (*buf)[n] = 0;
        out[i] = *buf;
        *buf += n + 1;
    }
    return 0;
}

// Bytes the count strings starting at first take (8 + length each).
static size_t strings_bytes(const Gguf *g, size_t first, uint64_t count) {
    size_t pos = first;
    for (uint64_t i = 0; i < count; i++) pos += 8 + (size_t)get_le(g->data + pos, 8);
    return pos - first;
}

static int read_tokenizer(Gguf *g, int vocab_size, Bpe **bpe) {
    const unsigned char *s;
    size_t n;
    int present;
    if (key_str(g, "tokenizer.ggml.model", &s, &n, NULL)) return -1;
    if (!str_is(s, n, "gpt2"))
        return fail(g, "tokenizer '%s' (tokenizer.ggml.model) is not supported; kvlab reads gpt2 (byte-level BPE)",
                    show(s, n).s);
    uint32_t tt, mt = V_STRING, ty = V_I32;
    uint64_t n_tok, n_merge = 0, n_type = 0;
    size_t tok_at, merge_at = 0, type_at = 0;
    if (key_array(g, "tokenizer.ggml.tokens", &tt, &n_tok, &tok_at, &present)) return -1;
    if (!present) return fail(g, "missing key tokenizer.ggml.tokens");
    if (tt != V_STRING) return fail(g, "tokenizer.ggml.tokens is an array of %s, expected strings", value_type_name(tt));
    if (n_tok != (uint64_t)vocab_size)
        return fail(g, "the tokenizer has %llu tokens but the model's vocabulary is %d", (unsigned long long)n_tok,
                    vocab_size);
    int has_merges, has_types;
    if (key_array(g, "tokenizer.ggml.merges", &mt, &n_merge, &merge_at, &has_merges)) return -1;
    if (has_merges && mt != V_STRING)
        return fail(g, "tokenizer.ggml.merges is an array of %s, expected strings", value_type_name(mt));
    if (n_merge > INT_MAX) return fail(g, "tokenizer.ggml.merges has %llu entries", (unsigned long long)n_merge);
    if (key_array(g, "tokenizer.ggml.token_type", &ty, &n_type, &type_at, &has_types)) return -1;
    if (has_types && (!is_int_type(ty) || n_type != n_tok))
        return fail(g, "tokenizer.ggml.token_type must be %llu integers (it is %llu of %s)", (unsigned long long)n_tok,
                    (unsigned long long)n_type, value_type_name(ty));

    BpeVocab v = {.n_tokens = vocab_size, .n_merges = (int)n_merge, .pre = "gpt2", .bos_id = -1, .eos_id = -1};
    char pre[64];
    if (key_str(g, "tokenizer.ggml.pre", &s, &n, &present)) return -1;
    if (present) {
        if (n >= sizeof pre) return fail(g, "tokenizer.ggml.pre '%s' is too long", show(s, n).s);
        memcpy(pre, s, n);
        pre[n] = 0;
        v.pre = pre;
    }
    static const char *const ids[2] = {"tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"};
    for (int i = 0; i < 2; i++) {
        int64_t id;
        if (key_int(g, ids[i], INT64_MIN, INT64_MAX, &id, &present)) return -1;
        if (present && (id < 0 || id >= vocab_size))
            return fail(g, "%s %lld is outside the vocabulary of %d tokens", ids[i], (long long)id, vocab_size);
        if (present) *(i ? &v.eos_id : &v.bos_id) = (int)id;
    }
    if (key_bool(g, "tokenizer.ggml.add_bos_token", &v.add_bos, &present)) return -1;
    if (v.add_bos && v.bos_id < 0)
        return fail(g, "tokenizer.ggml.add_bos_token is set but there is no tokenizer.ggml.bos_token_id");

    size_t tok_bytes = strings_bytes(g, tok_at, n_tok), merge_bytes = strings_bytes(g, merge_at, n_merge);
    g->strings = common_calloc(tok_bytes + merge_bytes + 1, 1); // the lengths shrink by 8, the NULs add 1
    g->tokens = common_calloc((size_t)n_tok + 1, sizeof *g->tokens);
    g->merges = common_calloc((size_t)n_merge + 1, sizeof *g->merges);
    g->types = common_calloc((size_t)n_tok + 1, sizeof *g->types);
    char *buf = g->strings;
    if (copy_strings(g, "tokenizer.ggml.tokens", tok_at, n_tok, &buf, g->tokens) ||
        copy_strings(g, "tokenizer.ggml.merges", merge_at, n_merge, &buf, g->merges))
        return -1;
    size_t tsz = scalar_size(ty);
    for (uint64_t i = 0; i < n_tok; i++) {
        g->types[i] = 1;
        if (!has_types) continue;
        Kv one = {.type = ty, .at = type_at + (size_t)i * tsz};
        int big;
        int64_t t = int_value(g, &one, &big);
        if (big || t < 0 || t > 6)
            return fail(g, "tokenizer.ggml.token_type[%llu] is %lld, not a token type 0..6", (unsigned long long)i,
                        big ? (long long)INT64_MAX : (long long)t);
        g->types[i] = (int)t;
    }
    v.tokens = g->tokens;
    v.merges = g->merges;
    v.types = g->types;
    char reason[ERR_LEN];
    if (bpe_init(bpe, &v, reason) != 0) return fail(g, "bad tokenizer: %s", reason);
    return 0;
}

// ---- the weights ----------------------------------------------------------------------------------------

static void load_weights(const Gguf *g, const ModelConfig *cfg, float *params) {
    size_t sizes[NUM_PARAM_TENSORS];
    model_param_sizes(cfg, sizes);
    int L = cfg->n_layer;
    float *base = params;
    for (int p = 0; p < NUM_PARAM_TENSORS; p++) {
        int per_layer = LAYER_TENSORS[p] != NULL;
        int n = per_layer ? L : 1;
        size_t each = sizes[p] / (size_t)n;
        for (int l = 0; l < n; l++) {
            const TensorInfo *t = &g->ti[g->slot[p * L + l]];
            CHECK(t->n_elems == each);
            const unsigned char *src = g->data + g->data_start + t->offset;
            float *dst = base + (size_t)l * each;
            size_t row = (size_t)t->ne[0], rows = each / row, row_bytes = (size_t)(t->n_bytes / rows);
#pragma omp parallel for if (par_worth(each)) schedule(static)
            for (size_t r = 0; r < rows; r++) gguf_dequantize(t->type, src + r * row_bytes, dst + r * row, row);
        }
        base += sizes[p];
    }
}

// ---- entry points ---------------------------------------------------------------------------------------

static void gguf_release(Gguf *g) {
    common_free(g->kv);
    common_free(g->ti);
    common_free(g->slot);
    common_free(g->strings);
    common_free(g->tokens);
    common_free(g->merges);
    common_free(g->types);
}

int gguf_load_memory(const unsigned char *data, size_t len, const char *name, Model *m, const Ops *ops,
                     Tokenizer *tok, char *err) {
    CHECK(name && (data || len == 0) && (!m || ops));
    static const unsigned char empty[1];
    Gguf g = {.data = data ? data : empty, .len = len, .name = name, .err = err};
    ModelConfig cfg;
    Bpe *bpe = NULL;
    if (parse_header(&g) || read_config(&g, &cfg) || check_tensors(&g, &cfg) ||
        read_tokenizer(&g, cfg.vocab_size, &bpe)) {
        gguf_release(&g);
        return -1;
    }
    if (m) {
        model_init(m, &cfg, ops);
        float *host = m->ops->on_device ? common_calloc(m->n_params, sizeof(float)) : m->params_memory;
        load_weights(&g, &cfg, host);
        char what[160];
        int bad = model_params_describe_nonfinite(&cfg, host, what, sizeof what);
        if (!bad && host != m->params_memory) model_params_upload(m, host);
        if (host != m->params_memory) common_free(host);
        if (bad) {
            fail(&g, "non-finite weights: %s", what);
            model_free(m);
            bpe_free(bpe);
            gguf_release(&g);
            return -1;
        }
    }
    gguf_release(&g);
    if (tok) tokenizer_from_bpe(tok, bpe);
    else bpe_free(bpe);
    return 0;
}

int gguf_load(const char *path, Model *m, const Ops *ops, Tokenizer *tok, char *err) {
    CHECK(path && m && ops);
    uint64_t size = 0;
    FILE *f = common_open_regular(path, "GGUF file", &size, err);
    if (!f) return -1;
    if (size > SIZE_MAX) {
        fclose(f);
        err_set(err, "GGUF file '%s' is too large for this host (%llu bytes)", path, (unsigned long long)size);
        return -1;
    }
    void *map = NULL;
    if (size > 0) {
        map = mmap(NULL, (size_t)size, PROT_READ, MAP_PRIVATE, fileno(f), 0);
        if (map == MAP_FAILED) {
            err_set(err, "cannot map GGUF file '%s': %s", path, strerror(errno));
            fclose(f);
            return -1;
        }
        madvise(map, (size_t)size, MADV_WILLNEED); // a hint: the whole file is read once
    }
    fclose(f); // the mapping stays valid
    int rc = gguf_load_memory(map, (size_t)size, path, m, ops, tok, err);
    if (map) munmap(map, (size_t)size);
    return rc;
}

int gguf_or_checkpoint_load(const char *path, Model *m, const Ops *ops, Tokenizer *tok, char *err) {
    if (gguf_is_file(path)) return gguf_load(path, m, ops, tok, err);
    return checkpoint_load(path, m, ops, tok, NULL, NULL, NULL, err);
}

int gguf_is_file(const char *path) {
    char err[ERR_LEN];
    FILE *f = common_open_regular(path, NULL, NULL, err);
    if (!f) return 0;
    unsigned char magic[4];
    int ok = fread(magic, 1, 4, f) == 4 && memcmp(magic, GGUF_MAGIC, 4) == 0;
    fclose(f);
    return ok;
}
