#include "tokenizer.h"

#include <string.h>

#include "../common/common.h"

int tokenizer_build(Tokenizer *tok, const unsigned char *text, size_t len, char *err) {
    unsigned char seen[256] = {0};
    for (size_t i = 0; i < len; i++) seen[text[i]] = 1;
    unsigned char bytes[256];
    int n = 0;
    for (int b = 0; b < 256; b++)
        if (seen[b]) bytes[n++] = (unsigned char)b;
    if (n == 0) {
        err_set(err, "the corpus is empty: no characters to build a vocabulary from");
        return -1;
    }
    return tokenizer_from_bytes(tok, bytes, n, err);
}

int tokenizer_from_bytes(Tokenizer *tok, const unsigned char *bytes, int vocab_size, char *err) {
    if (vocab_size < 1 || vocab_size > 256) {
        err_set(err, "vocabulary size %d is outside 1..256", vocab_size);
        return -1;
    }
    memset(tok, 0, sizeof(*tok));
    for (int b = 0; b < 256; b++) tok->byte_to_id[b] = -1;
    for (int i = 0; i < vocab_size; i++) {
        if (i > 0 && bytes[i] <= bytes[i - 1]) {
            err_set(err, "vocabulary bytes are not strictly increasing at index %d", i);
            return -1;
        }
        tok->id_to_byte[i] = bytes[i];
        tok->byte_to_id[bytes[i]] = (short)i;
    }
    tok->vocab_size = vocab_size;
    return 0;
}

void tokenizer_from_bpe(Tokenizer *tok, Bpe *bpe) {
    memset(tok, 0, sizeof(*tok));
    for (int b = 0; b < 256; b++) tok->byte_to_id[b] = -1;
    tok->vocab_size = bpe_vocab_size(bpe);
    tok->bpe = bpe;
}

void tokenizer_free(Tokenizer *tok) {
    bpe_free(tok->bpe);
    tok->bpe = NULL;
}

int tokenizer_ends_text(const Tokenizer *tok, int id) { return tok->bpe ? bpe_ends_text(tok->bpe, id) : 0; }

int tokenizer_bos_id(const Tokenizer *tok) {
    if (tok->bpe) return bpe_bos_prepended(tok->bpe);
    return tok->byte_to_id[TOKENIZER_BOS_BYTE];
}

const unsigned char *tokenizer_token_bytes(const Tokenizer *tok, int id, size_t *len) {
    if (tok->bpe) return bpe_token_bytes(tok->bpe, id, len);
    if (id < 0 || id >= tok->vocab_size) {
        *len = 0;
        return NULL;
    }
    *len = 1;
    return &tok->id_to_byte[id];
}

size_t tokenizer_encode(const Tokenizer *tok, const unsigned char *text, size_t len, int *out, size_t *n_oov) {
    if (tok->bpe) {
        if (n_oov) *n_oov = 0;
        return bpe_encode(tok->bpe, text, len, out);
    }
    size_t n = 0, oov = 0;
    for (size_t i = 0; i < len; i++) {
        int id = tok->byte_to_id[text[i]];
        if (id < 0) {
            oov++;
            continue;
        }
        out[n++] = id;
    }
    if (n_oov) *n_oov = oov;
    return n;
}

long tokenizer_find_oov(const Tokenizer *tok, const unsigned char *text, size_t len) {
    if (tok->bpe) return -1;
    for (size_t i = 0; i < len; i++)
        if (tok->byte_to_id[text[i]] < 0) return (long)i;
    return -1;
}

int tokenizer_decode(const Tokenizer *tok, const int *ids, size_t n, char *out) {
    if (tok->bpe) return -1;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= tok->vocab_size) return -1;
        out[i] = (char)tok->id_to_byte[ids[i]];
    }
    out[n] = 0;
    return 0;
}
