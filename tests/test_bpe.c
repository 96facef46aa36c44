// Byte-level BPE (data/bpe.h): ids identical to HF `tokenizers` on the fixtures of scripts/make-bpe-fixture.py
// (a smollm and a gpt2 vocabulary, a varied text, text with invalid UTF-8), decode(encode(x)) == x on any
// bytes, the merge loop against a naive one on long pieces, the pre-tokenizers' pieces, the unicode table,
// control tokens, bpe_init's errors on bad vocabularies; and the real vocabulary against the reference when
// scripts/bpe_check.py has written models/bpe-check/.
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/common.h"
#include "../data/bpe.h"
#include "../data/pretok.h"
#include "../data/tokenizer.h"
#include "../data/unicode.h"

// --- a vocabulary from the line-per-entry files (scripts/bpe_check.py) --------------------------------------

typedef struct {
    unsigned char *buf[4]; // vocab, types, merges, meta files
    char **tokens, **merges;
    int *types, n_tokens, n_merges;
    char pre[32];
    BpeVocab v;
} Vocab;

// GPT-2's byte-to-unicode form of byte c as UTF-8 (written again here, apart from data/bpe.c).
static void byte_form(unsigned c, char sym[3]) {
    unsigned form = c, extra = 0;
    if (!((c >= 33 && c <= 126) || (c >= 161 && c <= 172) || c >= 174)) {
        for (unsigned d = 0; d < c; d++) extra += !((d >= 33 && d <= 126) || (d >= 161 && d <= 172) || d >= 174);
        form = 256 + extra;
    }
    memset(sym, 0, 3);
    if (form < 128)
        sym[0] = (char)form;
    else
        sym[0] = (char)(0xC0 | form >> 6), sym[1] = (char)(0x80 | (form & 0x3F));
}

static int find_token(char *const *tokens, int n, const char *s) {
    for (int i = 0; i < n; i++)
        if (strcmp(tokens[i], s) == 0) return i;
    return -1;
}

static unsigned char *read_all(const char *dir, const char *name, size_t *len) {
    char path[512], err[ERR_LEN];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    unsigned char *b = common_read_file(path, len, err);
    cr_assert(b, "%s", err);
    return b;
}

// Splits buf into its lines in place (each '\n' becomes a NUL); a NULL-free array of n pointers.
static char **lines(unsigned char *buf, size_t len, int *n) {
    int count = 0;
    for (size_t i = 0; i < len; i++) count += buf[i] == '\n';
    char **out = calloc((size_t)count + 1, sizeof(char *));
    *n = 0;
    for (size_t i = 0, start = 0; i < len; i++)
        if (buf[i] == '\n') buf[i] = 0, out[(*n)++] = (char *)buf + start, start = i + 1;
    return out;
}

static int *read_ids(const char *dir, const char *name, size_t *n) {
    size_t len;
    unsigned char *b = read_all(dir, name, &len);
    int *ids = malloc((len / 2 + 1) * sizeof(int));
    *n = 0;
    for (char *p = (char *)b, *end; *p; p = end) {
        long x = strtol(p, &end, 10);
        if (end == p) break;
        ids[(*n)++] = (int)x;
    }
    free(b);
    return ids;
}

static void vocab_load(Vocab *V, const char *dir) {
    memset(V, 0, sizeof(*V));
    size_t len;
    int n;
    V->buf[0] = read_all(dir, "vocab.txt", &len);
    V->tokens = lines(V->buf[0], len, &V->n_tokens);
    V->buf[1] = read_all(dir, "types.txt", &len);
    char **t = lines(V->buf[1], len, &n);
    cr_assert_eq(n, V->n_tokens);
    V->types = calloc((size_t)n, sizeof(int));
    for (int i = 0; i < n; i++) V->types[i] = atoi(t[i]);
    free(t);
    V->buf[2] = read_all(dir, "merges.txt", &len);
    V->merges = lines(V->buf[2], len, &V->n_merges);
    V->buf[3] = read_all(dir, "meta.txt", &len);
    int bos = -1, eos = -1, add_bos = 0;
    cr_assert_eq(sscanf((char *)V->buf[3], "pre %31s bos %d eos %d add_bos %d", V->pre, &bos, &eos, &add_bos), 4);
    V->v = (BpeVocab){(const char *const *)V->tokens, V->types, V->n_tokens, (const char *const *)V->merges,
                      V->n_merges, V->pre, bos, eos, add_bos};
}

static void vocab_free(Vocab *V) {
    for (int i = 0; i < 4; i++) free(V->buf[i]);
    free(V->tokens), free(V->merges), free(V->types);
}

static Bpe *build(const BpeVocab *v) {
    Bpe *b;
    char err[ERR_LEN] = "";
    cr_assert_eq(bpe_init(&b, v, err), 0, "%s", err);
    return b;
}

static int *encode(const Bpe *b, const unsigned char *s, size_t len, size_t *n) {
    int *ids = malloc((len + 1) * sizeof(int));
    *n = bpe_encode(b, s, len, ids);
    cr_assert_leq(*n, len + 1);
    return ids;
}

// decode(ids) must be s[0, len) byte for byte, less the bytes without a token (dropped[c]; NULL: none).
static void check_round_trip(const Bpe *b, const int *ids, size_t n, const unsigned char *s, size_t len,
                             const char *dropped) {
    unsigned char *kept = malloc(len + 1);
    size_t n_kept = 0, at = 0;
    for (size_t i = 0; i < len; i++)
        if (!dropped || !dropped[s[i]]) kept[n_kept++] = s[i];
    for (size_t i = 0; i < n; i++) {
        size_t k;
        const unsigned char *p = bpe_token_bytes(b, ids[i], &k);
        cr_assert(p && k > 0, "token %zu (id %d) has no bytes", i, ids[i]);
        cr_assert(at + k <= n_kept && memcmp(kept + at, p, k) == 0, "decode differs from the text at byte %zu", at);
        at += k;
    }
    cr_assert_eq(at, n_kept, "decode gives %zu bytes of %zu", at, n_kept);
    free(kept);
}

// The ids of text `text_name` must equal `ids_name`, and decode back to the text.
static void check_fixture(const char *dir, const char *text_name, const char *ids_name) {
    Vocab V;
    vocab_load(&V, dir);
    Bpe *b = build(&V.v);
    size_t len, n, n_ref;
    unsigned char *text = read_all(dir, text_name, &len);
    int *ref = read_ids(dir, ids_name, &n_ref), *ids = encode(b, text, len, &n);
    size_t i = 0;
    while (i < n && i < n_ref && ids[i] == ref[i]) i++;
    cr_assert(i == n && n == n_ref, "%s/%s: %zu ids, the reference %zu; first difference at %zu (%d vs %d)", dir,
              text_name, n, n_ref, i, i < n ? ids[i] : -1, i < n_ref ? ref[i] : -1);
    char dropped[256];
    for (unsigned c = 0; c < 256; c++) {
        char sym[3];
        byte_form(c, sym);
        dropped[c] = find_token(V.tokens, V.n_tokens, sym) < 0;
    }
    check_round_trip(b, ids, n, text, len, dropped);
    free(ids), free(ref), free(text);
    bpe_free(b);
    vocab_free(&V);
}

Test(bpe, fixture_smollm) { check_fixture("tests/data/bpe/smollm", "text.txt", "ids.txt"); }
Test(bpe, fixture_gpt2) { check_fixture("tests/data/bpe/gpt2", "text.txt", "ids.txt"); }
Test(bpe, invalid_utf8_smollm) { check_fixture("tests/data/bpe/smollm", "bad.bin", "ids-bad.txt"); }
Test(bpe, invalid_utf8_gpt2) { check_fixture("tests/data/bpe/gpt2", "bad.bin", "ids-bad.txt"); }

Test(bpe, real_vocabulary) {
    if (access("models/bpe-check/vocab.txt", R_OK) != 0)
        cr_skip_test("models/bpe-check/ not found: run scripts/bpe_check.py --model <a GGUF file> to compare");
    check_fixture("models/bpe-check", "text.txt", "ids.txt");
}

// --- any bytes round-trip; control tokens ---------------------------------------------------------------

Test(bpe, random_bytes_round_trip) {
    Vocab V;
    vocab_load(&V, "tests/data/bpe/smollm");
    Bpe *b = build(&V.v);
    static const char *parts[] = {"<|im_start|>", "<|im_end|>", "<|im_start|>assistant", "<|im_sta", " ", "  ",
                                  "\n", "\t", "7", "'ll", "\xc3\xa9", "\xe4\xb8\xad", "\xf0\x9f\x98\x80", "the"};
    Rng rng;
    rng_init(&rng, 7);
    for (int trial = 0; trial < 300; trial++) {
        size_t len = 0, cap = (size_t)rng_below(&rng, 200);
        unsigned char *s = malloc(cap * 24 + 1); // exactly what is filled below: ASan sees any over-read
        for (size_t k = 0; k < cap; k++) {
            if (rng_below(&rng, 3) == 0) {
                const char *p = parts[rng_below(&rng, sizeof(parts) / sizeof(parts[0]))];
                memcpy(s + len, p, strlen(p)), len += strlen(p);
            } else {
                s[len++] = (unsigned char)rng_below(&rng, 256);
            }
        }
        unsigned char *exact = malloc(len ? len : 1);
        memcpy(exact, s, len);
        size_t n;
        int *ids = encode(b, exact, len, &n);
        check_round_trip(b, ids, n, exact, len, NULL); // every byte has a token here
        free(ids), free(exact), free(s);
    }
    bpe_free(b);
    vocab_free(&V);
}

Test(bpe, control_tokens_longest_first) {
    Vocab V;
    vocab_load(&V, "tests/data/bpe/smollm"); // 0 <|endoftext|>, 1 <|im_start|>, 2 <|im_end|>, 3 <|im_start|>assistant
    Bpe *b = build(&V.v);
    const char *s = "<|im_start|>assistant<|im_start|>assistan<|im_end|><|endoftext|>";
    size_t n;
    int *ids = encode(b, (const unsigned char *)s, strlen(s), &n);
    cr_assert_geq(n, 5);
    cr_assert_eq(ids[0], 3);
    cr_assert_eq(ids[1], 1);
    cr_assert_eq(ids[n - 2], 2);
    cr_assert_eq(ids[n - 1], 0);
    for (size_t i = 2; i < n - 2; i++) cr_assert_gt(ids[i], 3, "'assistan' is plain text");
    check_round_trip(b, ids, n, (const unsigned char *)s, strlen(s), NULL);
    size_t k;
    cr_assert_eq(memcmp(bpe_token_bytes(b, 1, &k), "<|im_start|>", 12), 0);
    cr_assert_eq(k, 12);
    cr_assert_null(bpe_token_bytes(b, -1, &k));
    cr_assert_null(bpe_token_bytes(b, V.n_tokens, &k));
    cr_assert_eq(k, 0);
    cr_assert_eq(bpe_vocab_size(b), V.n_tokens);
    cr_assert_eq(bpe_eos_id(b), 0);
    free(ids);
    bpe_free(b);
    // the same through the Tokenizer, with a bos prepended
    V.v.bos_id = 1, V.v.add_bos = 1;
    Tokenizer tok;
    tokenizer_from_bpe(&tok, build(&V.v));
    int out[16];
    size_t oov = 9;
    cr_assert_eq(tokenizer_encode(&tok, (const unsigned char *)"<|im_end|>", 10, out, &oov), 2);
    cr_assert_eq(out[0], 1);
    cr_assert_eq(out[1], 2);
    cr_assert_eq(oov, 0);
    cr_assert_eq(tokenizer_encode(&tok, (const unsigned char *)"", 0, out, NULL), 1);
    tokenizer_free(&tok);
    tokenizer_free(&tok);
    vocab_free(&V);
}

// --- the merge loop against a naive one ---------------------------------------------------------------

typedef struct {
    uint64_t pair;
    int rank, id;
} NaiveMerge;

static int by_pair(const void *a, const void *b) {
    uint64_t x = ((const NaiveMerge *)a)->pair, y = ((const NaiveMerge *)b)->pair;
    return x < y ? -1 : x > y;
}

// Merges one piece naively: over and over, the lowest-ranked adjacent pair, leftmost among equal ranks.
static size_t naive_piece(const Vocab *V, const NaiveMerge *m, const unsigned char *s, size_t len, int *out) {
    for (size_t i = 0; i < len; i++) {
        char sym[3];
        byte_form(s[i], sym);
        out[i] = find_token(V->tokens, V->n_tokens, sym);
        cr_assert_geq(out[i], 0, "byte 0x%02x has no token", s[i]);
    }
    size_t n = len;
    for (;;) {
        int best = -1;
        const NaiveMerge *bm = NULL;
        for (size_t i = 0; i + 1 < n; i++) {
            NaiveMerge key = {(uint64_t)(uint32_t)out[i] << 32 | (uint32_t)out[i + 1], 0, 0};
            const NaiveMerge *f = bsearch(&key, m, (size_t)V->n_merges, sizeof(NaiveMerge), by_pair);
            if (f && (!bm || f->rank < bm->rank)) bm = f, best = (int)i;
        }
        if (best < 0) return n;
        out[best] = bm->id;
        memmove(out + best + 1, out + best + 2, (n - (size_t)best - 2) * sizeof(int));
        n--;
    }
}

Test(bpe, merge_loop_matches_naive_on_long_pieces) {
    Vocab V;
    vocab_load(&V, "tests/data/bpe/gpt2");
    Bpe *b = build(&V.v);
    NaiveMerge *m = calloc((size_t)V.n_merges, sizeof(NaiveMerge));
    for (int r = 0; r < V.n_merges; r++) {
        char l[64], rr[64], both[128];
        cr_assert_eq(sscanf(V.merges[r], "%63s %63s", l, rr), 2);
        snprintf(both, sizeof(both), "%s%s", l, rr);
        m[r] = (NaiveMerge){(uint64_t)(uint32_t)find_token(V.tokens, V.n_tokens, l) << 32 |
                                (uint32_t)find_token(V.tokens, V.n_tokens, rr),
                            r, find_token(V.tokens, V.n_tokens, both)};
    }
    qsort(m, (size_t)V.n_merges, sizeof(NaiveMerge), by_pair);
    static const char *alphabets[] = {"etaoinshrdlu", "ab", "e", "0123456789", " \t\n", ".,;:!?'-", "thes"};
    static const char *leads[] = {"", "", " ", " ", "", " ", " "};
    Rng rng;
    rng_init(&rng, 3);
    for (int trial = 0; trial < 400; trial++) {
        int a = (int)rng_below(&rng, 7);
        size_t len = strlen(leads[a]), want = 1 + (size_t)rng_below(&rng, trial < 350 ? 40 : 300);
        unsigned char s[320];
        memcpy(s, leads[a], len);
        while (len < want + 1) s[len++] = (unsigned char)alphabets[a][rng_below(&rng, strlen(alphabets[a]))];
        Pretok p; // one piece by construction: a run of one class (whitespace: at the end of the text)
        size_t start, end;
        pretok_start(&p, PRETOK_GPT2, s, len);
        cr_assert(pretok_next(&p, &start, &end) && start == 0 && end == len);
        int ref[320], ids[321];
        size_t n_ref = naive_piece(&V, m, s, len, ref), n = bpe_encode(b, s, len, ids);
        cr_assert_eq(n, n_ref, "trial %d: %zu ids, naive %zu", trial, n, n_ref);
        cr_assert_arr_eq(ids, ref, n * sizeof(int), "trial %d", trial);
    }
    free(m);
    bpe_free(b);
    vocab_free(&V);
}

// --- the pre-tokenizers and the unicode table -------------------------------------------------------

// The pieces of s joined by '|' must be want.
static void expect_pieces(PretokKind kind, const char *s, const char *want) {
    char got[256] = "";
    size_t at = 0, start, end;
    Pretok p;
    pretok_start(&p, kind, (const unsigned char *)s, strlen(s));
    while (pretok_next(&p, &start, &end)) {
        cr_assert_gt(end, start);
        at += (size_t)snprintf(got + at, sizeof(got) - at, "%s%.*s", at ? "|" : "", (int)(end - start), s + start);
    }
    cr_assert_str_eq(got, want, "pieces of '%s'", s);
}

Test(bpe, pretokenizer_pieces) {
    expect_pieces(PRETOK_GPT2, "Hello world", "Hello| world");
    expect_pieces(PRETOK_GPT2, "a   b", "a|  | b");
    expect_pieces(PRETOK_GPT2, "a  1", "a| | 1");
    expect_pieces(PRETOK_SMOLLM, "a  1", "a|  |1");
    expect_pieces(PRETOK_GPT2, "x 42 y", "x| 42| y");
    expect_pieces(PRETOK_SMOLLM, "x 42 y", "x| |4|2| y");
    expect_pieces(PRETOK_GPT2, "I'll don'T 's'", "I|'ll| don|'|T| '|s|'");
    expect_pieces(PRETOK_GPT2, "end  ", "end|  ");
    expect_pieces(PRETOK_GPT2, "\n\nfoo", "\n|\n|foo");
    expect_pieces(PRETOK_GPT2, "a \tb", "a| |\t|b");
    expect_pieces(PRETOK_GPT2, "x  !!?", "x| | !!?");
    expect_pieces(PRETOK_GPT2, "ab\xff" "cd a \xff\xfe", "ab|\xff|cd| a| \xff\xfe");
    expect_pieces(PRETOK_GPT2, "\xe4\xb8\xad\xe6\x96\x87 caf\xc3\xa9", "\xe4\xb8\xad\xe6\x96\x87| caf\xc3\xa9");
    expect_pieces(PRETOK_SMOLLM, "\xd9\xa1\xd9\xa2x", "\xd9\xa1|\xd9\xa2|x");
    expect_pieces(PRETOK_GPT2, "a\xe3\x80\x80\xe3\x80\x80" "b", "a|\xe3\x80\x80|\xe3\x80\x80|b"); // ' ?' is ASCII only
    expect_pieces(PRETOK_GPT2, "\xe4\xb8", "\xe4\xb8"); // a truncated sequence: two symbols, one run
    // overlong forms of 'A' are invalid bytes, not a letter that would join the words around them
    expect_pieces(PRETOK_GPT2, "ab\xe0\x81\x81" "cd x\xf0\x80\x81\x81y w\xc1\x81w",
                  "ab|\xe0\x81\x81|cd| x|\xf0\x80\x81\x81|y| w|\xc1\x81|w");
    PretokKind k;
    cr_assert_eq(pretok_parse("default", &k), 0);
    cr_assert_eq(k, PRETOK_GPT2);
    cr_assert_eq(pretok_parse("llama3", &k), -1);
}

Test(bpe, unicode_classes) {
    for (unsigned c = 0; c < 128; c++) { // the pre-tokenizer's ASCII shortcut agrees with the table
        UnicodeClass want = ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') ? UNICODE_LETTER
                            : (c >= '0' && c <= '9')                 ? UNICODE_NUMBER
                            : (c == ' ' || (c >= 9 && c <= 13))      ? UNICODE_SPACE
                                                                     : UNICODE_OTHER;
        cr_assert_eq(unicode_class(c), want, "U+%04X", c);
    }
    cr_assert_eq(unicode_class(0xE9), UNICODE_LETTER);  // e acute
    cr_assert_eq(unicode_class(0x4E2D), UNICODE_LETTER); // CJK
    cr_assert_eq(unicode_class(0x0661), UNICODE_NUMBER); // Arabic-Indic one
    cr_assert_eq(unicode_class(0x2167), UNICODE_NUMBER); // Roman numeral eight (Nl)
    cr_assert_eq(unicode_class(0xBD), UNICODE_NUMBER);   // one half (No)
    cr_assert_eq(unicode_class(0x3000), UNICODE_SPACE);
    cr_assert_eq(unicode_class(0x2028), UNICODE_SPACE);
    cr_assert_eq(unicode_class(0x85), UNICODE_SPACE);
    cr_assert_eq(unicode_class(0x1C), UNICODE_OTHER);    // Python's isspace says yes; White_Space says no
    cr_assert_eq(unicode_class(0x200B), UNICODE_OTHER);  // zero width space is not White_Space
    cr_assert_eq(unicode_class(0x0301), UNICODE_OTHER);  // combining acute (Mn)
    cr_assert_eq(unicode_class(0x1F600), UNICODE_OTHER); // emoji
    cr_assert_eq(unicode_class(0x10FFFF), UNICODE_OTHER);
    cr_assert_eq(unicode_class(0xFFFFFFFFu), UNICODE_OTHER);
}

// --- bpe_init's errors ---------------------------------------------------------------------------------

// A tiny valid vocabulary: the 256 byte forms (ids 0..255), then "ab", "abc", "<|end|>" (control), "ĠĠ", "bc".
typedef struct {
    char forms[256][3];
    const char *tokens[261];
    int types[261];
    const char *merges[2];
    BpeVocab v;
} Tiny;

static void tiny_init(Tiny *t) {
    memset(t, 0, sizeof(*t));
    for (unsigned c = 0; c < 256; c++) byte_form(c, t->forms[c]), t->tokens[c] = t->forms[c], t->types[c] = 1;
    t->tokens[256] = "ab", t->tokens[257] = "abc", t->tokens[258] = "<|end|>", t->tokens[259] = "ĠĠ";
    t->tokens[260] = "bc";
    t->types[256] = t->types[257] = t->types[259] = t->types[260] = 1, t->types[258] = 3;
    t->merges[0] = "a b", t->merges[1] = "ab c";
    t->v = (BpeVocab){t->tokens, t->types, 261, t->merges, 2, "gpt2", -1, 258, 0};
}

static void expect_error(const BpeVocab *v, const char *part) {
    Bpe *b = (Bpe *)1;
    char err[ERR_LEN] = "";
    cr_assert_eq(bpe_init(&b, v, err), -1, "accepted; expected an error naming '%s'", part);
    cr_assert_null(b);
    cr_assert(strstr(err, part), "error '%s' does not say '%s'", err, part);
    cr_assert_null(strchr(err, '\n'), "error '%s' is not one line", err);
}

// A vocabulary with tokens of several bytes and no merges lost its merges (a GGUF without the key): refused,
// since every text would then be split into bytes. Bytes and control tokens alone need no merges.
Test(bpe, multi_byte_tokens_need_merges) {
    Tiny t;
    tiny_init(&t);
    t.v.n_merges = 0;
    expect_error(&t.v, "no merges");
    t.v.n_tokens = 256; // the byte forms only: a valid vocabulary without merges
    t.v.eos_id = -1;
    Bpe *b = build(&t.v);
    int ids[8];
    cr_assert_eq(bpe_encode(b, (const unsigned char *)"abc", 3, ids), 3);
    bpe_free(b);
}

Test(bpe, init_errors) {
    Tiny t;
    tiny_init(&t);
    Bpe *b = build(&t.v); // valid: "abc" merges to one token, the control token matches, no merge for two spaces
    int ids[16], want[] = {257, 258, 32, 32};
    cr_assert_eq(bpe_encode(b, (const unsigned char *)"abc<|end|>  ", 12, ids), 4);
    cr_assert_arr_eq(ids, want, sizeof(want));
    static const struct {
        int id;
        const char *bytes;
    } raw[] = {{'a', "a"}, {' ', " "}, {'\n', "\n"}, {0xff, "\xff"}, {0xad, "\xad"}, {259, "  "}, {258, "<|end|>"}};
    for (size_t i = 0; i < sizeof(raw) / sizeof(raw[0]); i++) {
        size_t k, want_len = strlen(raw[i].bytes);
        const unsigned char *p = bpe_token_bytes(b, raw[i].id, &k);
        cr_assert(p && k == want_len && memcmp(p, raw[i].bytes, k) == 0, "bytes of token %d", raw[i].id);
    }
    bpe_free(b);
    tiny_init(&t), t.tokens[259] = "x\xe4\xb8\xad\xc4"; // characters outside the byte map are kept as they are
    b = build(&t.v);
    size_t k;
    cr_assert_eq(memcmp(bpe_token_bytes(b, 259, &k), "x\xe4\xb8\xad\xc4", 5), 0);
    cr_assert_eq(k, 5);
    bpe_free(b);
    t.v.types = NULL; // no types: no control tokens, "<|end|>" is plain text
    b = build(&t.v);
    cr_assert_eq(bpe_encode(b, (const unsigned char *)"<|end|>", 7, ids), 7); // "<|", "end", "|>": no merges
    bpe_free(b);
    tiny_init(&t), t.tokens['x'] = "xx"; // no token for 'x': dropped, and "a b" merges across it (as HF does)
    b = build(&t.v);
    cr_assert_eq(bpe_encode(b, (const unsigned char *)"axxbx", 5, ids), 1);
    cr_assert_eq(ids[0], 256);
    cr_assert_eq(bpe_encode(b, (const unsigned char *)"x", 1, ids), 0);
    bpe_free(b);
    // a repeated merge takes its last rank: HF tokenizers gives ['a', 'bc'] for "abc" with merges
    // [a b, b c, a b] (and ['ab', 'c'] without the repeat)
    const char *repeated[] = {"a b", "b c", "a b"};
    tiny_init(&t), t.v.merges = repeated, t.v.n_merges = 3;
    b = build(&t.v);
    cr_assert_eq(bpe_encode(b, (const unsigned char *)"abc", 3, ids), 2);
    cr_assert_eq(ids[0], 'a');
    cr_assert_eq(ids[1], 260);
    bpe_free(b);
    tiny_init(&t), t.v.pre = "llama3", expect_error(&t.v, "unknown BPE pre-tokenizer 'llama3' (supported: gpt2");
    tiny_init(&t), t.tokens[256] = "abc", expect_error(&t.v, "duplicates token");
    tiny_init(&t), t.tokens[5] = NULL, expect_error(&t.v, "token 5 is missing");
    tiny_init(&t), t.merges[1] = NULL, expect_error(&t.v, "merge 1 is missing");
    tiny_init(&t), t.merges[0] = "ab", expect_error(&t.v, "not two symbols");
    tiny_init(&t), t.merges[0] = "a  b", expect_error(&t.v, "not two symbols");
    tiny_init(&t), t.merges[0] = " ab", expect_error(&t.v, "not two symbols");
    tiny_init(&t), t.merges[0] = "a b ", expect_error(&t.v, "not two symbols");
    tiny_init(&t), t.merges[0] = "c a", expect_error(&t.v, "no token 'ca' (the merged symbol)");
    tiny_init(&t), t.merges[1] = "abd c", expect_error(&t.v, "no token 'abd'");
    tiny_init(&t), t.merges[1] = "ab cd", expect_error(&t.v, "no token 'cd'");
    tiny_init(&t), t.v.bos_id = 261, expect_error(&t.v, "bos id 261");
    tiny_init(&t), t.v.eos_id = -2, expect_error(&t.v, "eos id -2");
    tiny_init(&t), t.v.add_bos = 1, expect_error(&t.v, "names no bos");
    tiny_init(&t), t.v.n_tokens = 0, expect_error(&t.v, "empty");
    tiny_init(&t), t.v.merges = NULL, expect_error(&t.v, "malformed");
    tiny_init(&t), t.tokens[258] = "<|\n|>", t.tokens[0] = "<|\n|>", expect_error(&t.v, "'<|\\x0a|>' duplicates");
}

// Streaming text cut by utf8_complete_prefix and mapped piece by piece with utf8_fix gives exactly the whole
// text's mapping (what build/serve's streamed events promise), on texts of valid multi-byte characters
// mixed with stray bytes, cut into random "tokens" of 1-4 bytes. A cut inside a character would split a valid
// sequence into two Latin-1 pairs and differ.
Test(bpe, utf8_pieces_map_as_the_whole_text) {
    const char *chars[] = {"a", " ", "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80", "\xd0\x96", "\xe4\xb8\xad",
                           "\x80", "\xff", "\xe2\x82", "\xf0\x9f"}; // the last four are not characters
    uint64_t state = 7;
    for (int trial = 0; trial < 300; trial++) {
        unsigned char text[256];
        size_t n = 0;
        while (n < 200) {
            state = state * 6364136223846793005ull + 1442695040888963407ull;
            const char *c = chars[(state >> 33) % (sizeof(chars) / sizeof(chars[0]))];
            memcpy(text + n, c, strlen(c));
            n += strlen(c);
        }
        char whole[1024], streamed[1024], piece[1024];
        size_t whole_len = utf8_fix(text, n, whole), streamed_len = 0;
        unsigned char pend[256];
        size_t n_pend = 0;
        for (size_t at = 0; at < n;) {
            state = state * 6364136223846793005ull + 1442695040888963407ull;
            size_t tok = 1 + (state >> 33) % 4;
            if (tok > n - at) tok = n - at;
            memcpy(pend + n_pend, text + at, tok);
            n_pend += tok;
            at += tok;
            size_t k = at == n ? n_pend : utf8_complete_prefix(pend, n_pend);
            size_t w = utf8_fix(pend, k, piece);
            memcpy(streamed + streamed_len, piece, w);
            streamed_len += w;
            memmove(pend, pend + k, n_pend - k);
            n_pend -= k;
        }
        cr_assert(streamed_len == whole_len && memcmp(streamed, whole, whole_len) == 0, "trial %d", trial);
    }
    // the cut itself: an unfinished character stays back, a finished one goes
    cr_assert_eq(utf8_complete_prefix((const unsigned char *)"ab\xe2\x82", 4), 2);
    cr_assert_eq(utf8_complete_prefix((const unsigned char *)"ab\xe2\x82\xac", 5), 5);
    cr_assert_eq(utf8_complete_prefix((const unsigned char *)"\xf0\x9f\x98", 3), 0);
    cr_assert_eq(utf8_complete_prefix((const unsigned char *)"a\x80\x80\x80", 4), 4);
}

// Generation stops at the eos id and at the control tokens that end a text or a turn in the common
// vocabularies, whichever id the file names as eos; never at a normal token or an unrelated control token.
Test(bpe, end_of_text_tokens) {
    Vocab V;
    vocab_load(&V, "tests/data/bpe/smollm");
    Bpe *b = build(&V.v);
    int endoftext = find_token(V.tokens, V.n_tokens, "<|endoftext|>");
    int im_end = find_token(V.tokens, V.n_tokens, "<|im_end|>");
    int im_start = find_token(V.tokens, V.n_tokens, "<|im_start|>");
    int bang = find_token(V.tokens, V.n_tokens, "!");
    cr_assert(endoftext >= 0 && im_end >= 0 && im_start >= 0 && bang >= 0);
    cr_assert(bpe_ends_text(b, endoftext));
    cr_assert(bpe_ends_text(b, im_end));
    cr_assert(!bpe_ends_text(b, im_start));
    cr_assert(!bpe_ends_text(b, bang));
    cr_assert(!bpe_ends_text(b, -1) && !bpe_ends_text(b, V.n_tokens));
    bpe_free(b);
    V.v.eos_id = bang; // a file may name any token its eos
    b = build(&V.v);
    cr_assert(bpe_ends_text(b, bang));
    bpe_free(b);
    vocab_free(&V);
}
