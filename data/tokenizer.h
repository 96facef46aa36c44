// The tokenizer of a model. Two kinds behind one interface:
//   - characters: the sorted distinct bytes of the training text (65 symbols for tiny Shakespeare, the same ids
//     as nanoGPT's shakespeare_char); stored in kvlab checkpoints;
//   - byte-level BPE (data/bpe.h), built from a GGUF model file (bpe != NULL; the character fields unused).
// A Tokenizer that may hold a BPE is released with tokenizer_free.
#ifndef KVLAB_TOKENIZER_H
#define KVLAB_TOKENIZER_H

#include <stddef.h>

#include "bpe.h"

typedef struct {
    int vocab_size;               // number of symbols: 1..256 for characters, the BPE's vocabulary otherwise
    unsigned char id_to_byte[256];
    short byte_to_id[256];        // -1 for bytes outside the vocabulary
    Bpe *bpe;                     // owned; NULL for the character tokenizer
} Tokenizer;

// Takes a built BPE (owned from now on; freed by tokenizer_free).
void tokenizer_from_bpe(Tokenizer *tok, Bpe *bpe);
// Frees a BPE if the tokenizer holds one; the character tokenizer holds nothing. Safe to call twice.
void tokenizer_free(Tokenizer *tok);
// Whether generation should stop at token id (a BPE's end-of-text tokens, bpe_ends_text; never for characters).
int tokenizer_ends_text(const Tokenizer *tok, int id);
// The start-of-sequence symbol a model saw at position 0 of every training window, -1 when none: for
// characters, STX (TOKENIZER_BOS_BYTE) when the vocabulary holds it (build/train --bos adds it; no text holds
// it); for a BPE, the bos its encoding prepends. Evaluations that cut streams out of a text put it first.
#define TOKENIZER_BOS_BYTE 0x02
int tokenizer_bos_id(const Tokenizer *tok);
// The bytes token id stands for (one byte for characters); NULL and *len = 0 for an id out of range.
const unsigned char *tokenizer_token_bytes(const Tokenizer *tok, int id, size_t *len);

// Builds the vocabulary from text (every distinct byte, sorted). Returns -1 for empty text.
int tokenizer_build(Tokenizer *tok, const unsigned char *text, size_t len, char *err);
// Rebuilds the lookup table from id_to_byte[0..vocab_size); -1 if the list is not strictly increasing.
int tokenizer_from_bytes(Tokenizer *tok, const unsigned char *bytes, int vocab_size, char *err);

// Encodes text. Bytes outside the vocabulary are skipped and counted in *n_oov (may be NULL; always 0 for BPE).
// out must hold len + 1 ints (a BPE may prepend its bos); returns the number of tokens written.
size_t tokenizer_encode(const Tokenizer *tok, const unsigned char *text, size_t len, int *out, size_t *n_oov);
// Index of the first byte outside the vocabulary, or -1 if all are inside (always -1 for BPE).
long tokenizer_find_oov(const Tokenizer *tok, const unsigned char *text, size_t len);
// Decodes ids of the character tokenizer to bytes; out must hold n + 1 bytes (NUL-terminated). Returns -1 on
// an id out of range or for a BPE (use tokenizer_token_bytes).
int tokenizer_decode(const Tokenizer *tok, const int *ids, size_t n, char *out);

#endif
