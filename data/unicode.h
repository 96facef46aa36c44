// Unicode character classes for the BPE pre-tokenizers: \p{L}, \p{N} and \s (White_Space), looked up by
// binary search in a range table that scripts/gen_unicode.py generates into data/unicode.c from Python's
// unicodedata (rerun it to move to another Unicode version).
#ifndef KVLAB_UNICODE_H
#define KVLAB_UNICODE_H

typedef enum {
    UNICODE_OTHER = 0,  // anything else, unassigned code points included
    UNICODE_LETTER = 1, // general categories Lu Ll Lt Lm Lo
    UNICODE_NUMBER = 2, // Nd Nl No
    UNICODE_SPACE = 3,  // the White_Space property
} UnicodeClass;

// The class of code point cp (any value; above U+10FFFF is UNICODE_OTHER).
UnicodeClass unicode_class(unsigned cp);

#endif
