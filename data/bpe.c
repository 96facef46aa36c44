// Byte-level BPE (data/bpe.h). bpe_init turns the vocabulary into what encoding needs: the token of each of
// the 256 bytes, a hash map (stb_ds) from a pair of token ids to the merge's rank and result, every token's
// raw bytes, and the control tokens longest first. Encoding splits the text at control tokens (leftmost,
// longest), pre-tokenizes each stretch between them (data/pretok.c) and merges each piece over token ids
// with a min-heap of (rank, position), the standard loop of the reference: the lowest-ranked pair merges
// first, the leftmost among equal ranks. Symbols are token ids from the start and every merge result is a
// token, so a piece always ends as vocabulary tokens; there is nothing to fall back from. A byte whose symbol
// the vocabulary lacks is dropped before merging, as the reference (HF tokenizers, no unknown token) drops a
// character its BPE vocabulary lacks: SmolLM2's lacks 21 bytes (0x04, 0xC0, 0xFF, ...), "!\x04!" is "!!".
#if defined(__GNUC__) && !defined(__clang__) // stb_ds's hm* macros say typeof: not a keyword in -std=c11
#define typeof __typeof__
#endif
#include <stb/stb_ds.h> // the implementation is compiled in kv/paged.c

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../common/common.h"
#include "bpe.h"
#include "pretok.h"

enum { TOKEN_CONTROL = 3, UNICODE_FORMS = 0x144 }; // the byte-to-unicode map's symbols are below U+0144

typedef struct {
    int rank, id; // the merge's rank and the token it makes
} BpeMerge;

typedef struct {
    uint64_t key; // left id << 32 | right id
    BpeMerge value;
} MergeEntry;

typedef struct {
    char *key; // the vocabulary's own string (bpe_init only)
    int value;
} TokenEntry;

struct Bpe {
    int n_tokens, bos_id, eos_id, add_bos;
    PretokKind pre;
    int byte_id[256];       // the token of each byte
    MergeEntry *merges;     // stb_ds hash map
    unsigned char *bytes;   // every token's raw bytes, back to back
    size_t *offset;         // token i is bytes[offset[i], offset[i + 1])
    int *control;           // control token ids, longest text first (empty ones left out)
    int n_control;
    unsigned char first[256]; // whether some control token starts with this byte
};

// GPT-2's byte-to-unicode table: printable bytes stand for themselves, the other 68 for U+0100 onward.
static void byte_forms(unsigned form[256]) {
    unsigned next = 0x100;
    for (unsigned b = 0; b < 256; b++)
        form[b] = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174 ? b : next++;
}

static int utf8_encode(unsigned cp, char *out) { // cp < 0x800: all the table needs
    if (cp < 0x80) return out[0] = (char)cp, 1;
    out[0] = (char)(0xC0 | cp >> 6), out[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
}

// A token's text for a one-line message: control characters escaped, at most about 60 bytes.
static const char *shown(const char *s, char buf[256]) {
    size_t n = 0;
    for (; *s && n < 60; s++) {
        unsigned char c = (unsigned char)*s;
        if (c < 0x20 || c == 0x7F)
            n += (size_t)snprintf(buf + n, 8, "\\x%02x", c);
        else
            buf[n++] = (char)c;
    }
    strcpy(buf + n, *s ? "..." : "");
    return buf;
}

// The raw bytes of a normal token: each symbol of the byte-to-unicode map back to its byte; any other
// character (not in the map, or invalid UTF-8) is kept as it is. Returns the length written.
static size_t token_raw(const char *s, const short inverse[UNICODE_FORMS], unsigned char *out) {
    size_t len = strlen(s), n = 0;
    for (size_t i = 0; i < len;) {
        long cp;
        int k = utf8_decode((const unsigned char *)s, len, i, &cp);
        if (cp >= 0 && cp < UNICODE_FORMS && inverse[cp] >= 0)
            out[n++] = (unsigned char)inverse[cp];
        else
            memcpy(out + n, s + i, (size_t)k), n += (size_t)k;
        i += (size_t)k;
    }
    return n;
}

static size_t token_len(const Bpe *b, int id) { return b->offset[id + 1] - b->offset[id]; }

typedef struct {
    size_t len;
    int id;
} Control;

static int longer_first(const void *x, const void *y) {
    const Control *a = x, *c = y;
    return a->len != c->len ? (a->len < c->len ? 1 : -1) : (a->id > c->id) - (a->id < c->id);
}

// The merges into b->merges; -1 with one line in err.
static int load_merges(Bpe *b, const BpeVocab *v, TokenEntry *map, char *err) {
    char buf[256], buf2[256], *left = NULL;
    size_t cap = 0;
    int rc = -1;
    for (int r = 0; r < v->n_merges; r++) {
        const char *m = v->merges[r];
        if (!m) {
            err_set(err, "BPE merge %d is missing (NULL)", r);
            goto done;
        }
        const char *space = strchr(m, ' ');
        if (!space || space == m || !space[1] || strchr(space + 1, ' ')) {
            err_set(err, "BPE merge %d '%s' is not two symbols separated by one space", r, shown(m, buf));
            goto done;
        }
        size_t len = strlen(m), nl = (size_t)(space - m);
        if (2 * len + 2 > cap) {
            cap = 2 * len + 64;
            left = realloc(left, cap);
            CHECK(left);
        }
        char *right = left + nl + 1, *merged = left + len + 1; // "l\0r\0" then "lr\0"
        memcpy(left, m, len + 1);
        left[nl] = 0;
        memcpy(merged, left, nl), memcpy(merged + nl, right, len - nl);
        ptrdiff_t li = shgeti(map, left), ri = shgeti(map, right), mi = shgeti(map, merged);
        if (li < 0 || ri < 0 || mi < 0) {
            err_set(err, "BPE merge %d '%s': the vocabulary has no token '%s'%s", r, shown(m, buf),
                    shown(li < 0 ? left : ri < 0 ? right : merged, buf2),
                    li < 0 || ri < 0 ? "" : " (the merged symbol)");
            goto done;
        }
        uint64_t key = (uint64_t)(uint32_t)map[li].value << 32 | (uint32_t)map[ri].value;
        BpeMerge val = {r, map[mi].value}; // a repeated pair takes its last rank, as in the reference
        hmput(b->merges, key, val);
    }
    rc = 0;
done:
    free(left);
    return rc;
}

// Token strings, bytes and control tokens; the token map for load_merges. -1 with one line in err.
static int load_tokens(Bpe *b, const BpeVocab *v, TokenEntry **map, char *err) {
    char buf[256];
    unsigned form[256];
    short inverse[UNICODE_FORMS];
    byte_forms(form);
    for (int i = 0; i < UNICODE_FORMS; i++) inverse[i] = -1;
    for (int i = 0; i < 256; i++) inverse[form[i]] = (short)i;
    size_t total = 0;
    for (int i = 0; i < v->n_tokens; i++) {
        if (!v->tokens[i]) {
            err_set(err, "BPE token %d is missing (NULL)", i);
            return -1;
        }
        ptrdiff_t at = shgeti(*map, (char *)v->tokens[i]);
        if (at >= 0) {
            err_set(err, "BPE token %d '%s' duplicates token %d", i, shown(v->tokens[i], buf), (*map)[at].value);
            return -1;
        }
        shput(*map, (char *)v->tokens[i], i);
        total += strlen(v->tokens[i]);
    }
    for (int c = 0; c < 256; c++) { // a byte may lack a token (see the top)
        char sym[3] = {0};
        utf8_encode(form[c], sym);
        ptrdiff_t at = shgeti(*map, sym);
        b->byte_id[c] = at < 0 ? -1 : (*map)[at].value;
    }
    b->bytes = common_calloc(total + 1, 1);
    b->offset = common_calloc((size_t)v->n_tokens + 1, sizeof(size_t));
    b->control = common_calloc((size_t)v->n_tokens, sizeof(int));
    for (int i = 0; i < v->n_tokens; i++) {
        size_t at = b->offset[i], len = strlen(v->tokens[i]);
        int control = v->types && v->types[i] == TOKEN_CONTROL;
        if (control)
            memcpy(b->bytes + at, v->tokens[i], len);
        else
            len = token_raw(v->tokens[i], inverse, b->bytes + at);
        b->offset[i + 1] = at + len;
        if (control && len > 0) b->control[b->n_control++] = i, b->first[(unsigned char)v->tokens[i][0]] = 1;
    }
    for (int i = 0; v->n_merges == 0 && i < v->n_tokens; i++) // no merges can make a multi-byte token
        if ((!v->types || v->types[i] == 1) && token_len(b, i) > 1) {
            char buf[256];
            err_set(err, "the BPE has no merges but normal tokens of several bytes (token %d '%s'): its "
                         "merges are missing, and every text would be split into single bytes", i,
                    shown(v->tokens[i], buf));
            return -1;
        }
    Control *order = common_calloc((size_t)b->n_control + 1, sizeof(Control));
    for (int c = 0; c < b->n_control; c++) order[c] = (Control){token_len(b, b->control[c]), b->control[c]};
    qsort(order, (size_t)b->n_control, sizeof(Control), longer_first);
    for (int c = 0; c < b->n_control; c++) b->control[c] = order[c].id;
    common_free(order);
    return 0;
}

int bpe_init(Bpe **out, const BpeVocab *v, char *err) {
    *out = NULL;
    if (!v->tokens || v->n_tokens <= 0 || v->n_merges < 0 || (v->n_merges > 0 && !v->merges)) {
        err_set(err, "the BPE vocabulary is empty or malformed (%d tokens, %d merges)", v->n_tokens, v->n_merges);
        return -1;
    }
    const char *pre = v->pre ? v->pre : "gpt2";
    PretokKind kind;
    if (pretok_parse(pre, &kind) != 0) {
        char buf[256];
        err_set(err, "unknown BPE pre-tokenizer '%s' (supported: %s)", shown(pre, buf), PRETOK_NAMES);
        return -1;
    }
    if (v->bos_id < -1 || v->bos_id >= v->n_tokens || v->eos_id < -1 || v->eos_id >= v->n_tokens) {
        err_set(err, "BPE bos id %d or eos id %d is outside the vocabulary of %d tokens", v->bos_id, v->eos_id,
                v->n_tokens);
        return -1;
    }
    if (v->add_bos && v->bos_id < 0) {
        err_set(err, "the BPE vocabulary asks to prepend bos but names no bos token");
        return -1;
    }
    Bpe *b = common_calloc(1, sizeof(Bpe));
    b->n_tokens = v->n_tokens, b->bos_id = v->bos_id, b->eos_id = v->eos_id, b->add_bos = v->add_bos;
    b->pre = kind;
    TokenEntry *map = NULL;
    int rc = load_tokens(b, v, &map, err);
    if (rc == 0) rc = load_merges(b, v, map, err);
    shfree(map);
    if (rc != 0) {
        bpe_free(b);
        return -1;
    }
    *out = b;
    return 0;
}

void bpe_free(Bpe *b) {
    if (!b) return;
    hmfree(b->merges);
    common_free(b->bytes);
    common_free(b->offset);
    common_free(b->control);
    common_free(b);
}

int bpe_vocab_size(const Bpe *b) { return b->n_tokens; }
int bpe_bos_prepended(const Bpe *b) { return b->add_bos ? b->bos_id : -1; }
int bpe_eos_id(const Bpe *b) { return b->eos_id; }

// The texts of the control tokens that end a text or a turn in the common vocabularies (GPT-2, ChatML, Llama 3,
// Llama 2): a model may write any of them where its eos id names another.
static const char *const bpe_end_texts[] = {"<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "</s>"};

int bpe_ends_text(const Bpe *b, int id) {
    if (id < 0 || id >= b->n_tokens) return 0;
    if (id == b->eos_id) return 1;
    for (int i = 0; i < b->n_control; i++) {
        if (b->control[i] != id) continue;
        size_t len = token_len(b, id);
        for (size_t j = 0; j < sizeof(bpe_end_texts) / sizeof(bpe_end_texts[0]); j++)
            if (strlen(bpe_end_texts[j]) == len && memcmp(b->bytes + b->offset[id], bpe_end_texts[j], len) == 0)
                return 1;
    }
    return 0;
}

const unsigned char *bpe_token_bytes(const Bpe *b, int id, size_t *len) {
    if (!b || id < 0 || id >= b->n_tokens) {
        *len = 0;
        return NULL;
    }
    *len = token_len(b, id);
    return b->bytes + b->offset[id];
}

// --- encoding -------------------------------------------------------------------------------------------

typedef struct {
    int rank, pos, left, right, id; // merge symbols pos (token left) and its next (token right) into id
} HeapItem;

typedef struct { // scratch of one bpe_encode call, grown to the longest piece (stb_ds arrays)
    int *id, *next, *prev; // the piece's symbols: token id (-1 once merged away) and a linked list
    HeapItem *heap;
} Work;

static int heap_less(const HeapItem *a, const HeapItem *b) {
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static void heap_push(Work *w, HeapItem item) {
    arrput(w->heap, item);
    for (ptrdiff_t i = arrlen(w->heap) - 1; i > 0;) {
        ptrdiff_t up = (i - 1) / 2;
        if (!heap_less(&w->heap[i], &w->heap[up])) break;
        HeapItem t = w->heap[i];
        w->heap[i] = w->heap[up], w->heap[up] = t, i = up;
    }
}

static HeapItem heap_pop(Work *w) {
    HeapItem top = w->heap[0];
    ptrdiff_t n = arrlen(w->heap) - 1;
    w->heap[0] = w->heap[n];
    arrsetlen(w->heap, n);
    for (ptrdiff_t i = 0;;) {
        ptrdiff_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && heap_less(&w->heap[l], &w->heap[m])) m = l;
        if (r < n && heap_less(&w->heap[r], &w->heap[m])) m = r;
        if (m == i) break;
        HeapItem t = w->heap[i];
        w->heap[i] = w->heap[m], w->heap[m] = t, i = m;
    }
    return top;
}

// Queues the merge of symbols l and r, if the pair has one.
static void push_pair(const Bpe *b, Work *w, int l, int r) {
    MergeEntry *merges = b->merges; // the _ts lookup writes nothing into a non-empty map: safe to share
    if (!merges) return;            // (on an empty one it would allocate)
    uint64_t key = (uint64_t)(uint32_t)w->id[l] << 32 | (uint32_t)w->id[r];
    ptrdiff_t tmp, at = hmgeti_ts(merges, key, tmp);
    if (at >= 0) heap_push(w, (HeapItem){merges[at].value.rank, l, w->id[l], w->id[r], merges[at].value.id});
}

// Merges one piece s[0, n) and appends its tokens to out[*count...].
static void encode_piece(const Bpe *b, Work *w, const unsigned char *s, int n, int *out, size_t *count) {
    if (n == 1) { // a space, a digit, a newline: common, and nothing to merge
        if (b->byte_id[s[0]] >= 0) out[(*count)++] = b->byte_id[s[0]];
        return;
    }
    arrsetlen(w->id, n), arrsetlen(w->next, n), arrsetlen(w->prev, n), arrsetlen(w->heap, 0);
    int k = 0;
    for (int i = 0; i < n; i++) // a byte with no token is left out; its neighbours may merge
        if (b->byte_id[s[i]] >= 0) w->id[k] = b->byte_id[s[i]], w->next[k] = k + 1, w->prev[k] = k - 1, k++;
    if (k == 0) return;
    n = k, w->next[n - 1] = -1;
    for (int i = 0; i + 1 < n; i++) push_pair(b, w, i, i + 1);
    while (arrlen(w->heap) > 0) {
        HeapItem m = heap_pop(w);
        int r = w->next[m.pos];
        if (w->id[m.pos] != m.left || r < 0 || w->id[r] != m.right) continue; // stale: a symbol has changed
        w->id[m.pos] = m.id, w->id[r] = -1;
        w->next[m.pos] = w->next[r];
        if (w->next[r] >= 0) w->prev[w->next[r]] = m.pos;
        if (w->prev[m.pos] >= 0) push_pair(b, w, w->prev[m.pos], m.pos);
        if (w->next[m.pos] >= 0) push_pair(b, w, m.pos, w->next[m.pos]);
    }
    for (int i = 0; i >= 0; i = w->next[i]) out[(*count)++] = w->id[i];
}

// The control token at s[0, len), longest first; -1 for none.
static int match_control(const Bpe *b, const unsigned char *s, size_t len) {
    for (int c = 0; c < b->n_control; c++) {
        int id = b->control[c];
        size_t n = token_len(b, id);
        if (n <= len && memcmp(s, b->bytes + b->offset[id], n) == 0) return id;
    }
    return -1;
}

size_t bpe_encode(const Bpe *b, const unsigned char *text, size_t len, int *out) {
    size_t count = 0, pos = 0;
    if (b->add_bos) out[count++] = b->bos_id;
    Work w = {0};
    while (pos < len) {
        size_t at = pos;
        int control = -1;
        while (at < len && !(b->first[text[at]] && (control = match_control(b, text + at, len - at)) >= 0)) at++;
        Pretok p;
        size_t start, end;
        pretok_start(&p, b->pre, text + pos, at - pos);
        while (pretok_next(&p, &start, &end)) {
            CHECK(end - start <= INT32_MAX);
            encode_piece(b, &w, text + pos + start, (int)(end - start), out, &count);
        }
        if (control < 0) break;
        out[count++] = control;
        pos = at + token_len(b, control);
    }
    arrfree(w.id), arrfree(w.next), arrfree(w.prev), arrfree(w.heap);
    return count;
}
