// Suite `bos`: the start symbol of build/train --bos (issue 15's attention-sink control). The loader puts STX
// at position 0 of every training, recall and validation window of a corpus whose vocabulary holds it, with the
// targets the window's text (inputs = [BOS, t0..t_{T-2}], targets = [t0..t_{T-1}]), and nowhere else; without
// it the batches are the same bits as before the start symbol existed (checksums captured from that code).
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../data/loader.h"
#include "../data/recall.h"
#include "../data/tokenizer.h"

// FNV-1a over the ints (their values, whatever the byte order).
static uint64_t fnv(uint64_t h, const int *v, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint32_t x = (uint32_t)v[i];
        for (int k = 0; k < 4; k++) h = (h ^ ((x >> (8 * k)) & 0xff)) * 0x100000001b3ull;
    }
    return h;
}

enum { B = 4, T = 64 };

// Batches of tiny Shakespeare at seed 5 (text only, then a recall mix of one half) and 10 validation windows.
static void batch_checksums(const Corpus *c, uint64_t out[3]) {
    static int in[B * T], tg[B * T];
    Rng rng;
    rng_init(&rng, 5);
    uint64_t h = 0xcbf29ce484222325ull;
    for (int i = 0; i < 3; i++) {
        loader_train_batch(c, &rng, B, T, 0.0f, in, tg);
        h = fnv(fnv(h, in, B * T), tg, B * T);
    }
    out[0] = h;
    h = 0xcbf29ce484222325ull;
    for (int i = 0; i < 3; i++) {
        loader_train_batch(c, &rng, B, T, 0.5f, in, tg);
        h = fnv(fnv(h, in, B * T), tg, B * T);
    }
    out[1] = h;
    h = 0xcbf29ce484222325ull;
    for (int i = 0; i < 10; i++) {
        loader_val_window(c, i, 10, T, in, tg);
        h = fnv(fnv(h, in, T), tg, T);
    }
    out[2] = h;
}

static void load(Corpus *c, Tokenizer *tok, int mode) {
    char err[ERR_LEN];
    cr_assert_eq(corpus_load(c, tok, "data/tinyshakespeare.txt", mode, NULL, err), 0, "%s", err);
}

// Without a start symbol the batches are the bits the loader gave before --bos existed: these checksums were
// printed by batch_checksums on that code (commit 053415a).
Test(bos, plain_batches_unchanged) {
    Tokenizer tok;
    Corpus c;
    load(&c, &tok, CORPUS_VOCAB_BUILD);
    cr_assert_eq(corpus_bos(&c), -1);
    uint64_t h[3];
    batch_checksums(&c, h);
    cr_assert_eq(h[0], 0x5ac905247479f0afull, "text batches changed");
    cr_assert_eq(h[1], 0x90a647eb54ecbce5ull, "recall-mix batches changed");
    cr_assert_eq(h[2], 0xcbc9b7a59834459bull, "validation windows changed");
    corpus_free(&c);
    Corpus hand = {NULL, 0, 0, NULL}; // a corpus built by hand, without a tokenizer (tests/test_optim.c)
    cr_assert_eq(corpus_bos(&hand), -1);
}

// The vocabulary with STX: tiny Shakespeare's 65 bytes and STX first (it sorts below '\n'), every other id one
// higher, the text encoded the same.
Test(bos, vocabulary_with_stx) {
    Tokenizer plain, tok;
    Corpus p, c;
    load(&p, &plain, CORPUS_VOCAB_BUILD);
    load(&c, &tok, CORPUS_VOCAB_BUILD_BOS);
    cr_assert_eq(tok.vocab_size, 66);
    cr_assert_eq(tok.id_to_byte[0], TOKENIZER_BOS_BYTE);
    cr_assert_eq(tokenizer_bos_id(&tok), 0);
    cr_assert_eq(corpus_bos(&c), 0);
    cr_assert_eq(tokenizer_bos_id(&plain), -1);
    for (int i = 0; i < plain.vocab_size; i++) cr_assert_eq(tok.id_to_byte[i + 1], plain.id_to_byte[i]);
    cr_assert_eq(c.n_tokens, p.n_tokens);
    cr_assert_eq(c.n_train, p.n_train);
    for (size_t i = 0; i < c.n_tokens; i += 997) cr_assert_eq(c.tokens[i], p.tokens[i] + 1);
    // a stored vocabulary with STX (as a checkpoint holds it) has the same start symbol
    Tokenizer stored;
    char err[ERR_LEN];
    cr_assert_eq(tokenizer_from_bytes(&stored, tok.id_to_byte, tok.vocab_size, err), 0, "%s", err);
    cr_assert_eq(tokenizer_bos_id(&stored), 0);
    // a vocabulary of bytes 0 and 1 only: STX goes last
    const unsigned char low[] = {0, 1, 0, 1};
    char path[] = "/tmp/kvlab-bos-XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, low, sizeof low), (ssize_t)sizeof low);
    close(fd);
    Corpus l;
    Tokenizer lt;
    cr_assert_eq(corpus_load(&l, &lt, path, CORPUS_VOCAB_BUILD_BOS, NULL, err), 0, "%s", err);
    unlink(path);
    cr_assert_eq(lt.vocab_size, 3);
    cr_assert_eq(tokenizer_bos_id(&lt), 2);
    corpus_free(&l);
    corpus_free(&p);
    corpus_free(&c);
}

// The decoded bytes of n ids.
static void text_of(const Tokenizer *tok, const int *ids, int n, char *out) {
    cr_assert_eq(tokenizer_decode(tok, ids, (size_t)n, out), 0);
}

// BOS at position 0 of every window and nowhere else; the targets are the window's text from its first
// character; the inputs after BOS are the targets shifted by one. Checked against the plain corpus: at the same
// seed a --bos window's text is the plain window's inputs (the same offsets are drawn).
Test(bos, windows_start_with_bos) {
    Tokenizer plain, tok;
    Corpus p, c;
    load(&p, &plain, CORPUS_VOCAB_BUILD);
    load(&c, &tok, CORPUS_VOCAB_BUILD_BOS);
    int bos = corpus_bos(&c);
    static int pin[B * T], ptg[B * T], in[B * T], tg[B * T];
    char a[T + 1], b[T + 1];
    Rng rp, rc;
    rng_init(&rp, 11);
    rng_init(&rc, 11);
    for (int step = 0; step < 5; step++) {
        loader_train_batch(&p, &rp, B, T, 0.0f, pin, ptg);
        loader_train_batch(&c, &rc, B, T, 0.0f, in, tg);
        for (int r = 0; r < B; r++) {
            const int *x = in + r * T, *y = tg + r * T;
            cr_assert_eq(x[0], bos, "window %d starts with %d", r, x[0]);
            for (int t = 1; t < T; t++) cr_assert_eq(x[t], y[t - 1]);
            for (int t = 0; t < T; t++) cr_assert_neq(y[t], bos, "BOS is never a target");
            text_of(&tok, y, T, a);
            text_of(&plain, pin + r * T, T, b);
            cr_assert_str_eq(a, b, "the --bos window's text is the plain window's inputs");
        }
    }
    for (int i = 0; i < 7; i++) {
        loader_val_window(&p, i, 7, T, pin, ptg);
        loader_val_window(&c, i, 7, T, in, tg);
        cr_assert_eq(in[0], bos);
        for (int t = 1; t < T; t++) cr_assert_eq(in[t], tg[t - 1]);
        for (int t = 0; t < T; t++) cr_assert_neq(tg[t], bos);
        text_of(&tok, tg, T, a);
        text_of(&plain, pin, T, b);
        cr_assert_str_eq(a, b, "validation window %d", i);
    }
    corpus_free(&p);
    corpus_free(&c);
}

// Recall windows (--mix recall) with BOS: the same layout, the task's items in the T tokens after it.
Test(bos, recall_windows_start_with_bos) {
    Tokenizer tok;
    Corpus c;
    load(&c, &tok, CORPUS_VOCAB_BUILD_BOS);
    int bos = corpus_bos(&c), dollar = tok.byte_to_id['$'];
    static int in[B * T], tg[B * T];
    Rng rng;
    rng_init(&rng, 3);
    for (int step = 0; step < 5; step++) {
        loader_train_batch(&c, &rng, B, T, 1.0f, in, tg);
        for (int r = 0; r < B; r++) {
            const int *x = in + r * T, *y = tg + r * T;
            cr_assert_eq(x[0], bos);
            int marks = 0;
            for (int t = 1; t < T; t++) cr_assert_eq(x[t], y[t - 1]);
            for (int t = 0; t < T; t++) {
                cr_assert_neq(y[t], bos);
                marks += y[t] == dollar;
            }
            cr_assert_geq(marks, 2 * recall_train_pairs(T), "every item twice in the %d tokens after BOS", T);
        }
    }
    corpus_free(&c);
}

// A text holding byte 0x02 is refused wherever it would read as the start symbol; against a vocabulary
// without STX the byte is just outside it (skipped and counted).
Test(bos, text_with_stx_refused) {
    const char text[] = "abc\x02" "def ghi jkl";
    char path[] = "/tmp/kvlab-bos-XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, text, sizeof text - 1), (ssize_t)(sizeof text - 1));
    close(fd);
    Tokenizer tok;
    Corpus c;
    char err[ERR_LEN] = "";
    cr_assert_eq(corpus_load(&c, &tok, path, CORPUS_VOCAB_BUILD_BOS, NULL, err), -1);
    cr_assert(strstr(err, "0x02") && strstr(err, "offset 3"), "%s", err);
    err[0] = 0;
    cr_assert_eq(corpus_load(&c, &tok, path, CORPUS_VOCAB_BUILD, NULL, err), -1, "a plain vocabulary would hold STX");
    cr_assert(strstr(err, "0x02"), "%s", err);
    const unsigned char with_stx[] = {TOKENIZER_BOS_BYTE, 'a', 'b', 'c'};
    cr_assert_eq(tokenizer_from_bytes(&tok, with_stx, 4, err), 0, "%s", err);
    err[0] = 0;
    cr_assert_eq(corpus_load(&c, &tok, path, CORPUS_VOCAB_GIVEN, NULL, err), -1);
    cr_assert(strstr(err, "0x02"), "%s", err);
    cr_assert_eq(tokenizer_from_bytes(&tok, with_stx + 1, 3, err), 0, "%s", err);
    size_t oov = 0;
    cr_assert_eq(corpus_load(&c, &tok, path, CORPUS_VOCAB_GIVEN, &oov, err), 0, "%s", err);
    cr_assert_eq(oov, 1 + 11, "STX and \"def ghi jkl\" are outside {a, b, c}");
    unlink(path);
    corpus_free(&c);
}
