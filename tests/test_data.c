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
    for (int d = recall_min_distance(&tok); d <= recall_max_distance(&tok, n); d += 37) {
        int answer_len = 0;
        int ans = recall_sequence(&tok, &c, &rng, n, d, seq, NULL, &answer_len);
        cr_assert_eq(answer_len, RECALL_VAL_LEN);
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

// The training form: recall_train_pairs(n) items, each written exactly twice (same key, same value), keys
// distinct, items never overlapping, anywhere in the window.
Test(data, recall_train_sequence_layout) {
    Tokenizer tok;
    Corpus c;
    char err[ERR_LEN];
    cr_assert_eq(corpus_load(&c, &tok, "data/tinyshakespeare.txt", 1, NULL, err), 0, "%s", err);
    Rng rng;
    rng_init(&rng, 7);
    enum { N = 257 };
    int k = recall_train_pairs(N);
    cr_assert_geq(k, 4, "a 256-token window holds several pairs");
    cr_assert_leq(2 * k * RECALL_ITEM_LEN, N);
    int x[N - 1], y[N - 1], first_item_at_0 = 0, last_item_at_end = 0;
    char text[N + 1]; // tokenizer_decode NUL-terminates
    for (int trial = 0; trial < 200; trial++) {
        recall_train_sequence(&tok, &c, &rng, N, x, y);
        for (int t = 1; t < N - 1; t++) cr_assert_eq(x[t], y[t - 1]);
        int seq[N];
        seq[0] = x[0];
        memcpy(seq + 1, y, sizeof(y));
        cr_assert_eq(tokenizer_decode(&tok, seq, N, text), 0);
        // items: "$" + 2 letters + ":" + 4 letters + ";"; Shakespeare has no '$', so each '$' starts one
        int n_items = 0, counted[N] = {0};
        for (int i = 0; i < N; i++) {
            if (text[i] != '$') continue;
            cr_assert_leq(i + RECALL_ITEM_LEN, N, "an item fits in the window");
            cr_assert_eq(text[i + 1 + RECALL_KEY_LEN], ':');
            cr_assert_eq(text[i + RECALL_ITEM_LEN - 1], ';');
            for (int j = 1; j < RECALL_ITEM_LEN - 1; j++)
                if (j != 1 + RECALL_KEY_LEN) cr_assert(text[i + j] >= 'a' && text[i + j] <= 'z', "%s", text);
            n_items++;
            first_item_at_0 |= i == 0;
            last_item_at_end |= i + RECALL_ITEM_LEN == N;
            if (counted[i]) continue;
            int copies = 0;
            for (int j = 0; j < N; j++)
                if (text[j] == '$' && memcmp(text + j, text + i, 1 + RECALL_KEY_LEN) == 0) {
                    cr_assert_eq(memcmp(text + j, text + i, RECALL_ITEM_LEN), 0, "same key, same value: %s", text);
                    counted[j] = 1;
                    copies++;
                }
            cr_assert_eq(copies, 2, "each key is written twice: %s", text);
        }
        cr_assert_eq(n_items, 2 * k, "%s", text);
    }
    cr_assert(first_item_at_0 && last_item_at_end, "items reach both ends of the window");
    corpus_free(&c);
}
