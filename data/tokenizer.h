// Character tokenizer: the sorted distinct bytes of the training text (65 symbols for tiny Shakespeare, the
// same ids as nanoGPT's shakespeare_char). Stored in the checkpoint.
#ifndef KVLAB_TOKENIZER_H
#define KVLAB_TOKENIZER_H

#include <stddef.h>

typedef struct {
    int vocab_size;               // number of symbols, 1..256
    unsigned char id_to_byte[256];
    short byte_to_id[256];        // -1 for bytes outside the vocabulary
} Tokenizer;

// Builds the vocabulary from text (every distinct byte, sorted). Returns -1 for empty text.
int tokenizer_build(Tokenizer *tok, const unsigned char *text, size_t len, char *err);
// Rebuilds the lookup table from id_to_byte[0..vocab_size); -1 if the list is not strictly increasing.
int tokenizer_from_bytes(Tokenizer *tok, const unsigned char *bytes, int vocab_size, char *err);

// Encodes text. Bytes outside the vocabulary are skipped and counted in *n_oov (may be NULL).
// out must hold len ints; returns the number of tokens written.
size_t tokenizer_encode(const Tokenizer *tok, const unsigned char *text, size_t len, int *out, size_t *n_oov);
// Index of the first byte outside the vocabulary, or -1 if all are inside.
long tokenizer_find_oov(const Tokenizer *tok, const unsigned char *text, size_t len);
// Decodes ids to bytes; out must hold n + 1 bytes (NUL-terminated). Returns -1 on an id out of range.
int tokenizer_decode(const Tokenizer *tok, const int *ids, size_t n, char *out);

#endif
