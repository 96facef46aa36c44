// The BPE pre-tokenizers (data/bpe.h): split text into the pieces that are merged independently.
//   PRETOK_GPT2    's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+  with the
//                  regex's semantics (first alternative that matches wins, greedy runs, the lookahead
//                  leaving a run's last whitespace to the next piece when a non-space follows)
//   PRETOK_SMOLLM  every \p{N} character a piece of its own, then the gpt2 pattern on each stretch between
//                  them (each stretch is matched as a string of its own: its end is the pattern's end of text)
// Text is UTF-8; a byte that does not start a valid UTF-8 sequence (overlong forms, surrogates and values
// above U+10FFFF included) is a symbol of its own, neither letter, number nor space.
#ifndef KVLAB_PRETOK_H
#define KVLAB_PRETOK_H

#include <stddef.h>

typedef enum { PRETOK_GPT2, PRETOK_SMOLLM } PretokKind;

// "gpt2" and "default" are PRETOK_GPT2, "smollm" PRETOK_SMOLLM; -1 for any other name.
int pretok_parse(const char *name, PretokKind *out);
#define PRETOK_NAMES "gpt2, default, smollm"

typedef struct {
    const unsigned char *s;
    size_t len, pos;
    size_t stretch_end; // smollm: where the current stretch without numbers ends
    PretokKind kind;
} Pretok;

void pretok_start(Pretok *p, PretokKind kind, const unsigned char *s, size_t len);
// The next piece is s[*start, *end) (never empty); 0 once the text is used up.
int pretok_next(Pretok *p, size_t *start, size_t *end);

// Decodes one UTF-8 character at s[i] (i < len): its length in bytes; *cp is -1 for an invalid byte (length 1).
int utf8_decode(const unsigned char *s, size_t len, size_t i, long *cp);
// How much of s[0..n) to hand on now when more bytes may follow: all but an unfinished character at the end
// (a lead byte within the last 3 whose sequence needs more bytes than are there). No valid character of the
// whole text ever straddles the cut, so text sent in such pieces maps piece by piece as the whole would.
size_t utf8_complete_prefix(const unsigned char *s, size_t n);
// Writes s[0..n) as valid UTF-8 to out (3n bytes suffice): valid characters as they are, every other byte as
// U+FFFD, the replacement character (three bytes). Returns the bytes written. Local: each byte's fate depends
// on it and the 3 after it only.
size_t utf8_fix(const unsigned char *s, size_t n, char *out);

#endif
