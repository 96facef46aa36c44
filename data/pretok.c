// The BPE pre-tokenizers (data/pretok.h): the gpt2 pattern matched by hand, alternative by alternative, in
// the order the regex tries them, and smollm's digit split in front of it.
#include "pretok.h"

#include <string.h>

#include "unicode.h"

int pretok_parse(const char *name, PretokKind *out) {
    if (strcmp(name, "gpt2") == 0 || strcmp(name, "default") == 0) {
        *out = PRETOK_GPT2;
        return 0;
    }
    if (strcmp(name, "smollm") == 0) {
        *out = PRETOK_SMOLLM;
        return 0;
    }
    return -1;
}

static int is_cont(const unsigned char *s, size_t len, size_t i, unsigned lo, unsigned hi) {
    return i < len && s[i] >= lo && s[i] <= hi;
}

int utf8_decode(const unsigned char *s, size_t len, size_t i, long *cp) {
    unsigned c = s[i];
    *cp = -1;
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if (c >= 0xC2 && c <= 0xDF) {
        if (!is_cont(s, len, i + 1, 0x80, 0xBF)) return 1;
        *cp = (long)(c & 0x1F) << 6 | (s[i + 1] & 0x3F);
        return 2;
    }
    if (c >= 0xE0 && c <= 0xEF) { // E0: no overlong forms; ED: no surrogates
        unsigned lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
        if (!is_cont(s, len, i + 1, lo, hi) || !is_cont(s, len, i + 2, 0x80, 0xBF)) return 1;
        *cp = (long)(c & 0x0F) << 12 | (long)(s[i + 1] & 0x3F) << 6 | (s[i + 2] & 0x3F);
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) { // F0: no overlong forms; F4: nothing above U+10FFFF
        unsigned lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
        if (!is_cont(s, len, i + 1, lo, hi) || !is_cont(s, len, i + 2, 0x80, 0xBF) ||
            !is_cont(s, len, i + 3, 0x80, 0xBF))
            return 1;
        *cp = (long)(c & 0x07) << 18 | (long)(s[i + 1] & 0x3F) << 12 | (long)(s[i + 2] & 0x3F) << 6 |
              (s[i + 3] & 0x3F);
        return 4;
    }
    return 1;
}

size_t utf8_complete_prefix(const unsigned char *s, size_t n) {
    for (size_t back = 1; back <= 3 && back <= n; back++) {
        unsigned char b = s[n - back];
        if ((b & 0xc0) == 0x80) continue; // a continuation byte: its lead is further back
        size_t need = b >= 0xf0 ? 4 : b >= 0xe0 ? 3 : b >= 0xc0 ? 2 : 1;
        return need > back ? n - back : n;
    }
    return n;
}

size_t utf8_fix(const unsigned char *s, size_t n, char *out) {
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        long cp;
        int len = utf8_decode(s, n, i, &cp);
        if (cp >= 0) {
            memcpy(out + k, s + i, (size_t)len);
            k += (size_t)len;
        } else { // U+FFFD
            out[k++] = (char)0xef;
            out[k++] = (char)0xbf;
            out[k++] = (char)0xbd;
        }
        i += (size_t)len;
    }
    return k;
}

// The class of the character at s[i] (i < e) and its length in *n; an invalid byte is UNICODE_OTHER.
static UnicodeClass class_at(const unsigned char *s, size_t e, size_t i, int *n) {
    unsigned c = s[i];
    if (c < 0x80) {
        *n = 1;
        if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') return UNICODE_LETTER;
        if (c >= '0' && c <= '9') return UNICODE_NUMBER;
        if (c == ' ' || (c >= 0x09 && c <= 0x0D)) return UNICODE_SPACE;
        return UNICODE_OTHER;
    }
    long cp;
    *n = utf8_decode(s, e, i, &cp);
    return cp < 0 ? UNICODE_OTHER : unicode_class((unsigned)cp);
}

// The end of the gpt2 pattern's match at s[i], the text ending at e (i < e).
static size_t gpt2_piece(const unsigned char *s, size_t i, size_t e) {
    if (s[i] == '\'' && i + 1 < e) { // 's 't 're 've 'm 'll 'd (lowercase only)
        unsigned char a = s[i + 1], b = i + 2 < e ? s[i + 2] : 0;
        if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
        if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return i + 3;
    }
    // ' ?\p{L}+', ' ?\p{N}+', ' ?[^\s\p{L}\p{N}]+': an optional space, then a run of one class
    int n;
    size_t j = i;
    UnicodeClass cls = class_at(s, e, i, &n);
    if (s[i] == ' ' && i + 1 < e) {
        int n2;
        UnicodeClass next = class_at(s, e, i + 1, &n2);
        if (next != UNICODE_SPACE) j = i + 1, cls = next, n = n2;
    }
    if (cls != UNICODE_SPACE) {
        size_t k = j + (size_t)n;
        while (k < e && class_at(s, e, k, &n) == cls) k += (size_t)n;
        return k;
    }
    // '\s+(?!\S)' then '\s+': the whole run at the end of the text or when it is one character; otherwise
    // all but its last character, which then starts the next piece
    size_t k = i, last = i;
    int count = 0;
    while (k < e && class_at(s, e, k, &n) == UNICODE_SPACE) last = k, k += (size_t)n, count++;
    return k == e || count == 1 ? k : last;
}

void pretok_start(Pretok *p, PretokKind kind, const unsigned char *s, size_t len) {
    p->s = s;
    p->len = len;
    p->pos = 0;
    p->stretch_end = 0;
    p->kind = kind;
}

int pretok_next(Pretok *p, size_t *start, size_t *end) {
    size_t i = p->pos, e = p->len;
    if (i >= e) return 0;
    if (p->kind == PRETOK_SMOLLM) {
        if (i >= p->stretch_end) { // a number alone, or find where the stretch before the next number ends
            int n;
            if (class_at(p->s, e, i, &n) == UNICODE_NUMBER) {
                *start = i, *end = p->pos = i + (size_t)n;
                return 1;
            }
            size_t k = i;
            while (k < e && class_at(p->s, e, k, &n) != UNICODE_NUMBER) k += (size_t)n;
            p->stretch_end = k;
        }
        e = p->stretch_end;
    }
    *start = i;
    *end = p->pos = gpt2_piece(p->s, i, e);
    return 1;
}
