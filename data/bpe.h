// Byte-level BPE (GPT-2 style), built from a GGUF file's tokenizer.ggml.* keys: every byte of the text is
// mapped to a printable unicode symbol (GPT-2's byte-to-unicode table), the text is split into pieces by the
// pre-tokenizer named in tokenizer.ggml.pre, each piece is merged by merge rank (lowest rank first), and the
// resulting symbols are looked up in the vocabulary. Control tokens (token type 3, e.g. "<|im_start|>") are
// matched literally in the input before the split, as the reference implementation does with added tokens.
//
// Pre-tokenizers:
//   "gpt2"    GPT-2's pattern: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//   "smollm"  every digit a piece of its own (\p{N} alone), then the gpt2 pattern (SmolLM, StarCoder)
// Unicode classes (\p{L}, \p{N}, \s) come from data/unicode.c, generated from Python's unicodedata.
//
// Thread safety: a built Bpe is read-only; encode and token_bytes may run concurrently.
#ifndef KVLAB_BPE_H
#define KVLAB_BPE_H

#include <stddef.h>

typedef struct Bpe Bpe;

// The vocabulary as a GGUF file holds it. Strings are NUL-terminated UTF-8 (a GGUF string holding a NUL is
// refused by the reader before this point). tokens[i] is id i, in byte-to-unicode form for normal tokens and
// literal text for control tokens; types[i] is the GGUF token type (1 normal, 2 unknown, 3 control,
// 4 user-defined, 5 unused, 6 byte). merges[r] is "left right" (one space), rank r.
typedef struct {
    const char *const *tokens;
    const int *types;
    int n_tokens;
    const char *const *merges;
    int n_merges;
    const char *pre;   // tokenizer.ggml.pre ("gpt2" when the key is absent)
    int bos_id;        // -1 when absent
    int eos_id;        // -1 when absent
    int add_bos;       // prepend bos_id to every encoding
} BpeVocab;

// Builds the tokenizer. -1 with one line in err (ERR_LEN bytes): an unknown pre-tokenizer, a merge that is not
// "a b" or names a symbol (or makes one) the vocabulary lacks, duplicate tokens, bos/eos out of range. A byte
// with no token is allowed (SmolLM2 lacks 21, e.g. 0x04, 0xC0): encoding drops it, as the reference does.
int bpe_init(Bpe **out, const BpeVocab *v, char *err);
void bpe_free(Bpe *b);
int bpe_vocab_size(const Bpe *b);
int bpe_eos_id(const Bpe *b); // -1 when the vocabulary names none
int bpe_bos_prepended(const Bpe *b); // the bos id bpe_encode puts first, -1 when it puts none
// Whether token id ends a generated text: the eos id, or a control token reading <|endoftext|>, <|im_end|>,
// <|eot_id|>, <|end_of_text|> or </s>.
int bpe_ends_text(const Bpe *b, int id);
// Encodes len bytes of text (any bytes; invalid UTF-8 is encoded byte by byte); out must hold len + 1 ints
// (every token covers at least one byte, plus an optional bos). Returns the number of ids written.
size_t bpe_encode(const Bpe *b, const unsigned char *text, size_t len, int *out);
// The bytes token id stands for (a control token: its text); NULL and *len = 0 for an id out of range.
const unsigned char *bpe_token_bytes(const Bpe *b, int id, size_t *len);

#endif
