#include "spec.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/common.h"

const char *const kv_spec_forms =
    "full | window:W | sink:S,window:W | h2o:H,R | tova:B | snapkv:B[,W[,K]] | knorm:B[,L] | paged:BLOCK, "
    "then optional +fp16 | +int8[:G] | +int4[:G] | +int2[:G] | +kivi2[:G[,R]] | +kivi4[:G[,R]] (full only) | "
    "+lowrank:R | +fpkeep:S,R (with int) | +minicache:L[,A] (full, fp32/fp16) | +hadamard | +pyramid | "
    "+paged:BLOCK (with full, window, sink or h2o and fp32, fp16 or int rows) | +tier:N (with paged:BLOCK alone)";

// Parses "a,b,c" non-negative integers; returns how many were read, -1 on a malformed list.
static int parse_ints(const char *s, int *out, int max) {
    int n = 0;
    while (*s) {
        if (n == max) return -1;
        char *end;
        errno = 0;
        long x = strtol(s, &end, 10);
        if (end == s || *s == '-' || *s == '+' || errno || x < 0 || x > (1 << 24)) return -1;
        out[n++] = (int)x;
        if (*end == ',') {
            s = end + 1;
            if (!*s) return -1;
        } else if (*end) {
            return -1;
        } else {
            s = end;
        }
    }
    return n;
}

static int parse_select(KVSpec *sp, const char *t) {
    int v[3], n;
    if (strcmp(t, "full") == 0) return sp->select = KV_SEL_FULL, 0;
    if (strncmp(t, "paged:", 6) == 0 && parse_ints(t + 6, v, 1) == 1 && v[0] >= 1 && v[0] <= 4096)
        return sp->select = KV_SEL_FULL, sp->paged_block = v[0], 0;
    if (strncmp(t, "window:", 7) == 0 && parse_ints(t + 7, v, 1) == 1)
        return sp->select = KV_SEL_WINDOW, sp->window = v[0], 0;
    if (strncmp(t, "sink:", 5) == 0) {
        const char *w = strstr(t, ",window:");
        char num[32];
        size_t len = w ? (size_t)(w - (t + 5)) : 0;
        if (!w || len == 0 || len >= sizeof(num)) return -1;
        memcpy(num, t + 5, len);
        num[len] = 0;
        if (parse_ints(num, v, 1) != 1 || parse_ints(w + 8, v + 1, 1) != 1) return -1;
        return sp->select = KV_SEL_SINK, sp->sink = v[0], sp->window = v[1], 0;
    }
    if (strncmp(t, "h2o:", 4) == 0 && parse_ints(t + 4, v, 2) == 2)
        return sp->select = KV_SEL_H2O, sp->heavy = v[0], sp->recent = v[1], 0;
    if (strncmp(t, "tova:", 5) == 0 && parse_ints(t + 5, v, 1) == 1) return sp->select = KV_SEL_TOVA, sp->keep = v[0], 0;
    if (strncmp(t, "snapkv:", 7) == 0 && (n = parse_ints(t + 7, v, 3)) >= 1) {
        sp->select = KV_SEL_SNAPKV;
        sp->keep = v[0];
        sp->window = n > 1 ? v[1] : 32;
        sp->kernel = n > 2 ? v[2] : 5;
        return sp->kernel % 2 == 1 ? 0 : -1; // a centred average pool needs an odd kernel
    }
    if (strncmp(t, "knorm:", 6) == 0 && (n = parse_ints(t + 6, v, 2)) >= 1) {
        sp->select = KV_SEL_KNORM;
        sp->keep = v[0];
        sp->skip_layers = n > 1 ? v[1] : 2;
        return 0;
    }
    return -1;
}

static int parse_term(KVSpec *sp, const char *t) {
    int v;
    if (strncmp(t, "tier:", 5) == 0) {
        if (sp->tier_fast || parse_ints(t + 5, &v, 1) != 1 || v < 2) return -1;
        return sp->tier_fast = v, 0;
    }
    if (strncmp(t, "paged:", 6) == 0) {
        if (sp->paged_block || parse_ints(t + 6, &v, 1) != 1 || v < 1 || v > 4096) return -1;
        return sp->paged_block = v, 0;
    }
    if (strcmp(t, "fp16") == 0) {
        if (sp->format != KV_FMT_F32) return -1;
        return sp->format = KV_FMT_F16, 0;
    }
    if (strcmp(t, "hadamard") == 0) return sp->hadamard ? -1 : (sp->hadamard = 1, 0);
    if (strncmp(t, "fpkeep:", 7) == 0) {
        int v[2];
        if (sp->fp_sink || sp->fp_recent || parse_ints(t + 7, v, 2) != 2 || v[0] + v[1] < 1) return -1;
        return sp->fp_sink = v[0], sp->fp_recent = v[1], 0;
    }
    if (strncmp(t, "minicache:", 10) == 0) {
        int v[2], n;
        if (sp->merge_from || (n = parse_ints(t + 10, v, 2)) < 1) return -1;
        sp->merge_from = v[0] + 1;
        sp->merge_angle = n > 1 ? v[1] : 45;
        return sp->merge_angle <= 180 ? 0 : -1;
    }
    if (strncmp(t, "lowrank:", 8) == 0) {
        int r;
        if (sp->rank || parse_ints(t + 8, &r, 1) != 1 || r < 1) return -1;
        return sp->rank = r, 0;
    }
    if (strcmp(t, "pyramid") == 0) return sp->pyramid ? -1 : (sp->pyramid = 1, 0);
    if (strncmp(t, "kivi2", 5) == 0 || strncmp(t, "kivi4", 5) == 0) {
        if (sp->format != KV_FMT_F32) return -1;
        sp->format = KV_FMT_KIVI;
        sp->bits = t[4] - '0';
        sp->group = 32;
        sp->residual = 128;
        if (t[5] == 0) return 0;
        int v[2], n;
        if (t[5] != ':' || (n = parse_ints(t + 6, v, 2)) < 1 || v[0] < 1) return -1;
        sp->group = v[0];
        sp->residual = n > 1 ? v[1] : (128 / v[0] > 0 ? 128 / v[0] : 1) * v[0];
        return sp->residual >= sp->group && sp->residual % sp->group == 0 ? 0 : -1;
    }
    int bits = 0;
    if (strncmp(t, "int8", 4) == 0) bits = 8;
    else if (strncmp(t, "int4", 4) == 0) bits = 4;
    else if (strncmp(t, "int2", 4) == 0) bits = 2;
    if (!bits || sp->format != KV_FMT_F32) return -1;
    sp->format = KV_FMT_INT;
    sp->bits = bits;
    if (t[4] == 0) return 0;
    int g;
    if (t[4] != ':' || parse_ints(t + 5, &g, 1) != 1 || g < 1) return -1;
    sp->group = g;
    return 0;
}

int kv_spec_parse(KVSpec *sp, const char *text, char *err) {
    memset(sp, 0, sizeof(*sp));
    if (strlen(text) >= sizeof(sp->text)) {
        err_set(err, "--kv spec is too long (%zu characters)", strlen(text));
        return -1;
    }
    snprintf(sp->text, sizeof(sp->text), "%s", text);
    char buf[128];
    snprintf(buf, sizeof(buf), "%s", text);
    char *save = NULL, *tok = strtok_r(buf, "+", &save);
    int ok = tok != NULL && text[0] != '+' && text[strlen(text) - 1] != '+' && !strstr(text, "++");
    if (ok) ok = parse_select(sp, tok) == 0;
    // every count must be positive except knorm's skipped layers
    if (ok) ok = (sp->select != KV_SEL_WINDOW || sp->window > 0) &&
                 (sp->select != KV_SEL_SINK || (sp->sink > 0 && sp->window > 0)) &&
                 (sp->select != KV_SEL_H2O || (sp->heavy > 0 && sp->recent > 0)) &&
                 (sp->select != KV_SEL_TOVA || sp->keep > 0) &&
                 (sp->select != KV_SEL_SNAPKV || (sp->keep > 0 && sp->window > 0 && sp->kernel > 0)) &&
                 (sp->select != KV_SEL_KNORM || sp->keep > 0);
    while (ok && (tok = strtok_r(NULL, "+", &save))) ok = parse_term(sp, tok) == 0;
    if (ok && sp->hadamard && sp->format != KV_FMT_INT && sp->format != KV_FMT_KIVI) ok = 0; // only before quantizing
    if (ok && sp->format == KV_FMT_KIVI && sp->select != KV_SEL_FULL) ok = 0; // groups span tokens: no eviction
    if (ok && sp->rank && (sp->format == KV_FMT_KIVI || sp->hadamard)) ok = 0; // coefficients: per-token formats
    if (ok && (sp->fp_sink || sp->fp_recent) && sp->format != KV_FMT_INT) ok = 0; // only an int format has outliers to spare
    if (ok && sp->merge_from && (sp->select != KV_SEL_FULL || sp->rank || (sp->format != KV_FMT_F32 && sp->format != KV_FMT_F16)))
        ok = 0; // merged slots must line up across the pair, in rows that hold directions faithfully
    if (ok && sp->pyramid && kv_spec_budget(sp) == 0) ok = 0;
    if (!ok) {
        err_set(err, "bad --kv '%s': valid forms are %s", text, kv_spec_forms);
        return -1;
    }
    if (sp->tier_fast && (!sp->paged_block || sp->select != KV_SEL_FULL || sp->format != KV_FMT_F32 || sp->rank ||
                          sp->hadamard || sp->merge_from || sp->pyramid)) {
        err_set(err, "bad --kv '%s': tier:N (N >= 2 fast blocks) goes with paged:BLOCK alone, e.g. paged:16+tier:4", text);
        return -1;
    }
    // the pool drops whole blocks and holds per-token rows: say which part does not compose
    if (sp->paged_block && sp->select != KV_SEL_FULL && sp->select != KV_SEL_WINDOW && sp->select != KV_SEL_SINK &&
        sp->select != KV_SEL_H2O) {
        err_set(err, "bad --kv '%s': paged:BLOCK composes with full, window, sink or h2o selection only", text);
        return -1;
    }
    if (sp->paged_block && (sp->format == KV_FMT_KIVI || sp->rank || sp->hadamard || sp->fp_sink || sp->fp_recent ||
                            sp->merge_from || sp->pyramid)) {
        err_set(err, "bad --kv '%s': paged:BLOCK holds fp32, fp16 or int8/int4/int2 rows, with no other terms", text);
        return -1;
    }
    return 0;
}

int kv_spec_budget(const KVSpec *sp) {
    switch (sp->select) {
    case KV_SEL_FULL: return 0;
    case KV_SEL_WINDOW: return sp->window;
    case KV_SEL_SINK: return sp->sink + sp->window;
    case KV_SEL_H2O: return sp->heavy + sp->recent;
    case KV_SEL_TOVA: return sp->keep;
    case KV_SEL_SNAPKV: return sp->keep + sp->window;
    case KV_SEL_KNORM: return sp->keep;
    }
    return 0;
}
