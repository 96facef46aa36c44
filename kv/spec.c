// The --kv grammar (spec.h): the first term names a policy from the registry (or, when it names none, full
// selection and the term is read as a storage or placement term); the other terms are a codec from the
// registry or one of the modifiers parsed here. Composition rules follow the parse, each with its own message.
#include "spec.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/common.h"
#include "codec.h"
#include "policy.h"

int kv_parse_ints(const char *s, int *out, int max) {
    int n = 0;
    if (!s) return 0;
    while (*s) {
        if (n == max) return -1;
        if (*s < '0' || *s > '9') return -1; // no blank, sign or other prefix strtol would skip or take
        if (*s == '0' && s[1] >= '0' && s[1] <= '9') return -1; // no leading zeros: one spelling per number
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

// The registries' forms and the pool's policies, written once (the server parses specs on several threads).
static char forms[1024], paged_msg[256];
static pthread_once_t messages_once = PTHREAD_ONCE_INIT;
static void write_messages(void);

static void write_forms(void) {
    size_t at = 0;
    for (int i = 0; i < kv_policy_count; i++)
        at += (size_t)snprintf(forms + at, sizeof(forms) - at, "%s%s", i ? " | " : "", kv_policies[i]->form);
    at += (size_t)snprintf(forms + at, sizeof(forms) - at, " | paged:BLOCK, then optional");
    for (int i = 0; i < kv_codec_count; i++)
        at += (size_t)snprintf(forms + at, sizeof(forms) - at, " +%s", kv_codecs[i]->form);
    snprintf(forms + at, sizeof(forms) - at,
             " | +lowrank:R | +fpkeep:S,R | +minicache:L[,A] | +hadamard | +pyramid | +paged:BLOCK | +tier:N "
             "(a bare storage term means full selection: int4 = full+int4)");
}

const char *kv_spec_forms(void) {
    pthread_once(&messages_once, write_messages);
    return forms;
}

// The modifiers: what is shared (minicache), where rows live (paged, tier), how they are transformed
// (lowrank, hadamard, fpkeep) and how budgets spread (pyramid). 1 = not a modifier, -1 = malformed.
static int parse_modifier(KVSpec *sp, const char *t) {
    int v[2], n;
    if (strncmp(t, "tier:", 5) == 0) {
        if (sp->tier_fast || kv_parse_ints(t + 5, v, 1) != 1 || v[0] < 2) return -1;
        sp->tier_fast = v[0];
        return 0;
    }
    if (strncmp(t, "paged:", 6) == 0) {
        if (sp->paged_block || kv_parse_ints(t + 6, v, 1) != 1 || v[0] < 1 || v[0] > 4096) return -1;
        sp->paged_block = v[0];
        return 0;
    }
    if (strcmp(t, "hadamard") == 0) {
        if (sp->hadamard) return -1;
        sp->hadamard = 1;
        return 0;
    }
    if (strncmp(t, "fpkeep:", 7) == 0) {
        if (sp->fp_sink || sp->fp_recent || kv_parse_ints(t + 7, v, 2) != 2 || v[0] + v[1] < 1) return -1;
        sp->fp_sink = v[0];
        sp->fp_recent = v[1];
        return 0;
    }
    if (strncmp(t, "minicache:", 10) == 0) {
        if (sp->merge_from || (n = kv_parse_ints(t + 10, v, 2)) < 1) return -1;
        sp->merge_from = v[0] + 1;
        sp->merge_angle = n > 1 ? v[1] : 45;
        return sp->merge_angle <= 180 ? 0 : -1;
    }
    if (strncmp(t, "lowrank:", 8) == 0) {
        if (sp->rank || kv_parse_ints(t + 8, v, 1) != 1 || v[0] < 1) return -1;
        sp->rank = v[0];
        return 0;
    }
    if (strcmp(t, "pyramid") == 0) {
        if (sp->pyramid) return -1;
        sp->pyramid = 1;
        return 0;
    }
    return 1;
}

// The term's name (up to ':') and its arguments (after it, NULL when bare).
static const char *term_args(const char *t, size_t *name_len) {
    const char *colon = strchr(t, ':');
    *name_len = colon ? (size_t)(colon - t) : strlen(t);
    return colon ? colon + 1 : NULL;
}

// What is wrong with a term, for the message.
enum { TERM_OK = 0, TERM_MALFORMED = -1, TERM_SECOND_CODEC = -2, TERM_POLICY = -3, TERM_UNKNOWN = -4 };

static const char *term_problem(int rc) {
    switch (rc) {
    case TERM_SECOND_CODEC: return "is a second storage format (a spec holds one)";
    case TERM_POLICY: return "is a selection policy: it goes first";
    case TERM_UNKNOWN: return "is not a policy, a storage format or a modifier";
    default: return "is malformed or repeated";
    }
}

// A storage or placement term.
static int parse_term(KVSpec *sp, const char *t) {
    size_t len;
    const char *args = term_args(t, &len);
    const KVCodec *c = kv_codec_find(t, len);
    if (c) {
        if (sp->codec_named) return TERM_SECOND_CODEC;
        sp->codec_named = 1;
        sp->codec = c;
        return (c->parse ? c->parse(sp, args) : (args ? -1 : 0)) == 0 ? TERM_OK : TERM_MALFORMED;
    }
    if (kv_policy_find(t, len)) return TERM_POLICY;
    int rc = parse_modifier(sp, t);
    return rc == 0 ? TERM_OK : rc > 0 ? TERM_UNKNOWN : TERM_MALFORMED;
}

static int fail(char *err, const char *text, const char *term, const char *why) {
    if (term) err_set(err, "bad --kv '%s': term '%s' %s; valid forms are %s", text, term, why, kv_spec_forms());
    else err_set(err, "bad --kv '%s': %s; valid forms are %s", text, why, kv_spec_forms());
    return -1;
}

// "full, window, sink, h2o or random": the policies that run on pages, from the registry.
static void write_paged_policies(void) {
    char *msg = paged_msg;
    const char *names[32];
    int n = 0;
    for (int i = 0; i < kv_policy_count && n < 32; i++)
        if (!kv_policies[i]->budget || kv_policies[i]->block_victim) names[n++] = kv_policies[i]->name;
    size_t at = (size_t)snprintf(msg, sizeof(paged_msg), "paged:BLOCK composes with ");
    for (int i = 0; i < n; i++)
        at += (size_t)snprintf(msg + at, sizeof(paged_msg) - at, "%s%s", names[i],
                               i + 2 < n ? ", " : i + 2 == n ? " or " : " selection only");
}

static void write_messages(void) {
    write_forms();
    write_paged_policies();
}

static const char *paged_policies(void) {
    pthread_once(&messages_once, write_messages);
    return paged_msg;
}

// Composition rules, checked after every term parsed: NULL when the spec composes.
static const char *composition_error(const KVSpec *sp) {
    int full = kv_spec_is_full(sp);
    if (sp->hadamard && !sp->codec->quantized && !sp->codec->is_kivi)
        return "hadamard rotates keys before a quantized format (int8/int4/int2, fp8, kivi)";
    if (sp->codec->is_kivi && !full) return "kivi groups span tokens: it goes with full selection only";
    if (sp->rank && (sp->codec->is_kivi || sp->hadamard)) return "lowrank coefficients take per-token formats only";
    if ((sp->fp_sink || sp->fp_recent) && (!sp->codec->quantized || sp->codec->is_kivi))
        return "fpkeep keeps tokens in fp32 under a per-token quantized format (int8/int4/int2, fp8)";
    if (sp->merge_from && (!full || sp->rank || (sp->codec != &kv_codec_f32 && strcmp(sp->codec->name, "fp16"))))
        return "minicache merges full caches held in fp32 or fp16 rows";
    if (sp->pyramid && kv_spec_budget(sp) == 0) return "pyramid spreads a budget: it needs an evicting policy";
    if (sp->tier_fast && (!sp->paged_block || !full || sp->codec != &kv_codec_f32 || sp->rank || sp->hadamard ||
                          sp->merge_from || sp->pyramid))
        return "tier:N (N >= 2 fast blocks) goes with paged:BLOCK alone, e.g. paged:16+tier:4";
    if (sp->paged_block && !sp->policy->block_victim && !full)
        return paged_policies();
    if (sp->paged_block && (!sp->codec->row_bytes || sp->rank || sp->hadamard || sp->fp_sink || sp->fp_recent ||
                            sp->merge_from || sp->pyramid))
        return "paged:BLOCK holds rows of a per-row format (fp32, fp16, fp8, int8/int4/int2), with no other terms";
    return NULL;
}

int kv_spec_parse(KVSpec *sp, const char *text, char *err) {
    memset(sp, 0, sizeof(*sp));
    sp->codec = &kv_codec_f32;
    size_t n = strlen(text);
    if (n >= sizeof(sp->text)) {
        err_set(err, "--kv spec is too long (%zu characters)", n);
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)text[i] <= ' ' || (unsigned char)text[i] >= 0x7f) {
            err_set(err, "bad --kv: byte %zu is a blank or control character (0x%02x); a spec is printable ASCII "
                    "without spaces", i, (unsigned char)text[i]);
            return -1;
        }
    snprintf(sp->text, sizeof(sp->text), "%s", text);
    if (n == 0 || text[0] == '+' || text[n - 1] == '+' || strstr(text, "++"))
        return fail(err, text, NULL, "empty term");
    char buf[128];
    snprintf(buf, sizeof(buf), "%s", text);
    char *save = NULL, *tok = strtok_r(buf, "+", &save);
    size_t len;
    const char *args = term_args(tok, &len);
    const KVPolicy *pol = kv_policy_find(tok, len);
    int rc;
    if (pol) {
        sp->policy = pol;
        if (pol->parse(sp, args) != 0) return fail(err, text, tok, "is malformed");
    } else {
        sp->policy = &kv_policy_full;
        if ((rc = parse_term(sp, tok)) != TERM_OK) return fail(err, text, tok, term_problem(rc));
    }
    while ((tok = strtok_r(NULL, "+", &save)))
        if ((rc = parse_term(sp, tok)) != TERM_OK) return fail(err, text, tok, term_problem(rc));
    const char *why = composition_error(sp);
    if (why) return fail(err, text, NULL, why);
    return 0;
}

int kv_spec_budget(const KVSpec *sp) { return sp->policy->budget ? sp->policy->budget(sp) : 0; }
int kv_spec_is_full(const KVSpec *sp) { return sp->policy->budget == NULL; }
const char *kv_spec_policy_name(const KVSpec *sp) { return sp->policy->name; }
const char *kv_spec_codec_name(const KVSpec *sp) { return sp->codec->name; }
