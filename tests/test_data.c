// Tokenizer and loader: round trip, the tiny Shakespeare vocabulary, out-of-vocabulary handling, splits.
#include <criterion/criterion.h>
#include <string.h>

#include "../data/loader.h"
#include "../data/tokenizer.h"

Test(data, tokenizer_round_trip) {
    const char *text = "Hello, world!\nTo be, or not to be.";
    Tokenizer tok;
    char err[ERR_LEN];
    cr_assert_eq(tokenizer_build(&tok, (const unsigned char *)text, strlen(text), err), 0);
    int ids[64];
    size_t oov = 99, n = tokenizer_encode(&tok, (const unsigned char *)text, strlen(text), ids, &oov);
    cr_assert_eq(n, strlen(text));
    cr_assert_eq(oov, 0);
    char back[64];
    cr_assert_eq(tokenizer_decode(&tok, ids, n, back), 0);
    cr_assert_str_eq(back, text);
    // ids follow the sorted byte order
    for (int i = 1; i < tok.vocab_size; i++) cr_assert_lt(tok.id_to_byte[i - 1], tok.id_to_byte[i]);
    int bad = tok.vocab_size;
    cr_assert_eq(tokenizer_decode(&tok, &bad, 1, back), -1);
}

Test(data, oov_is_skipped_and_counted) {
    Tokenizer tok;
    char err[ERR_LEN];
    cr_assert_eq(tokenizer_build(&tok, (const unsigned char *)"abc ", 4, err), 0);
    const unsigned char text[] = "a Zb\xc3\xa9" "c";
    int ids[16];
    size_t oov = 0, n = tokenizer_encode(&tok, text, sizeof(text) - 1, ids, &oov);
    cr_assert_eq(n, 4); // a, ' ', b, c
    cr_assert_eq(oov, 3); // Z and the two bytes of the UTF-8 e-acute
    cr_assert_eq(tokenizer_find_oov(&tok, text, sizeof(text) - 1), 2);
    cr_assert_eq(tokenizer_find_oov(&tok, (const unsigned char *)"cab", 3), -1);
}

Test(data, empty_text_rejected) {
    Tokenizer tok;
    char err[ERR_LEN] = "";
    cr_assert_eq(tokenizer_build(&tok, (const unsigned char *)"", 0, err), -1);
    cr_assert(strstr(err, "empty"));
}

Test(data, tinyshakespeare_vocab_and_split) {
    Tokenizer tok;
    Corpus c;
    char err[ERR_LEN];
    size_t oov = 1;
    cr_assert_eq(corpus_load(&c, &tok, "data/tinyshakespeare.txt", 1, &oov, err), 0, "%s", err);
    cr_assert_eq(tok.vocab_size, 65); // nanoGPT shakespeare_char's vocabulary
    cr_assert_eq(tok.id_to_byte[0], '\n');
    cr_assert_eq(tok.id_to_byte[1], ' ');
    cr_assert_eq(oov, 0);
    cr_assert_eq(c.n_tokens, 1115394);
    cr_assert_eq(c.n_train, 1115394 * 9 / 10);
    // validation windows are fixed and inside the validation split; training windows follow the seed
    int in1[32], tg1[32], in2[32], tg2[32];
    loader_val_window(&c, 3, 10, 32, in1, tg1);
    loader_val_window(&c, 3, 10, 32, in2, tg2);
    cr_assert_arr_eq(in1, in2, sizeof(in1));
    cr_assert_eq(in1[1], tg1[0]);
    Rng a, b;
    rng_init(&a, 5);
    rng_init(&b, 5);
    loader_train_batch(&c, &a, 1, 32, 0.0f, in1, tg1);
    loader_train_batch(&c, &b, 1, 32, 0.0f, in2, tg2);
    cr_assert_arr_eq(in1, in2, sizeof(in1));
    cr_assert_eq(corpus_check_context(&c, 1 << 20, err), -1);
    corpus_free(&c);
}

#include "../data/recall.h"

Test(data, recall_sequence_layout) {
    Tokenizer tok;
    Corpus c;
    char err[ERR_LEN];
    cr_assert_eq(corpus_load(&c, &tok, "data/tinyshakespeare.txt", 1, NULL, err), 0, "%s", err);
    cr_assert_eq(recall_check_vocab(&tok, err), 0, "%s", err);
    Rng rng;
    rng_init(&rng, 1);
    int n = 200, seq[200];
    char text[201];
    for (int d = recall_min_distance(); d <= recall_max_distance(n); d += 37) {
        int ans = recall_sequence(&tok, &c, &rng, n, d, seq, NULL);
        cr_assert_eq(tokenizer_decode(&tok, seq, n, text), 0);
        int query = n - 1 - RECALL_ITEM_LEN;
        cr_assert_eq(ans, query + 1 + RECALL_KEY_LEN + 1);
        cr_assert_eq(text[query], '$');
        cr_assert_eq(text[query - d], '$', "the definition sits %d tokens before the query", d);
        cr_assert_eq(memcmp(text + query + 1, text + query - d + 1, RECALL_ITEM_LEN - 1), 0, "%s", text);
        int defs = 0;
        for (int i = 0; i < n; i++) defs += text[i] == '$';
        cr_assert_geq(defs, RECALL_PAIRS + 1, "every definition and the query: %s", text); // '$' is nearly absent from the filler
    }
    // a full mix makes every training window a recall sequence; inputs and targets stay shifted by one
    int in[4 * 64], tg[4 * 64];
    loader_train_batch(&c, &rng, 4, 64, 1.0f, in, tg);
    for (int b = 0; b < 4; b++) {
        int marks = 0;
        for (int t = 0; t < 64; t++) marks += tg[b * 64 + t] == tok.byte_to_id['$'];
        cr_assert_geq(marks, 1 + RECALL_PAIRS - (in[b * 64] == tok.byte_to_id['$']), "definitions and the query");
        for (int t = 1; t < 64; t++) cr_assert_eq(in[b * 64 + t], tg[b * 64 + t - 1]);
    }
    corpus_free(&c);
}
