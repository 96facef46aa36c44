// The technique registries (kv/registry.c) and the two techniques added through them as one file each:
// random:B (kv/random.c) and fp8 (kv/fp8.c). The grammar reads policies and codecs only from the registries,
// so every entry must parse from its own form, and every name the grammar lists must be an entry.
#include <criterion/criterion.h>
#include <ctype.h>
#include <math.h>
#include <string.h>

#include "../kv/codec.h"
#include "../kv/kv.h"
#include "../kv/paged.h"
#include "../kv/policy.h"

// A form with its optional parts dropped and every placeholder (an upper-case name) set to 8:
// "snapkv:B[,W[,K]]" -> "snapkv:8", "sink:S,window:W" -> "sink:8,window:8".
static void example_of(const char *form, char *out, size_t cap) {
    size_t o = 0;
    int depth = 0;
    for (const char *p = form; *p && o + 2 < cap; p++) {
        if (*p == '[') depth++;
        else if (*p == ']') depth--;
        else if (depth == 0 && isupper((unsigned char)*p)) {
            while (isupper((unsigned char)p[1])) p++;
            out[o++] = '8';
        } else if (depth == 0) {
            out[o++] = *p;
        }
    }
    out[o] = 0;
}

Test(registry, every_policy_parses_from_its_form_and_is_listed) {
    char text[64], err[ERR_LEN];
    KVSpec sp;
    cr_assert_geq(kv_policy_count, 8);
    for (int i = 0; i < kv_policy_count; i++) {
        const KVPolicy *p = kv_policies[i];
        example_of(p->form, text, sizeof(text));
        cr_assert_eq(kv_spec_parse(&sp, text, err), 0, "%s (%s): %s", p->name, text, err);
        cr_assert(sp.policy == p, "%s parsed as %s", text, sp.policy->name);
        cr_assert(strstr(kv_spec_forms(), p->form), "forms do not list %s", p->form);
        cr_assert(kv_policy_find(p->name, strlen(p->name)) == p);
        cr_assert(p->help && p->help[0], "%s has no help line", p->name);
    }
}

Test(registry, every_codec_parses_from_its_form_bare_and_after_a_policy) {
    char text[64], spec_text[80], err[ERR_LEN];
    KVSpec bare, composed;
    for (int i = 0; i < kv_codec_count; i++) {
        const KVCodec *c = kv_codecs[i];
        example_of(c->form, text, sizeof(text));
        cr_assert_eq(kv_spec_parse(&bare, text, err), 0, "%s (%s): %s", c->name, text, err);
        snprintf(spec_text, sizeof(spec_text), "full+%s", text);
        cr_assert_eq(kv_spec_parse(&composed, spec_text, err), 0, "%s: %s", spec_text, err);
        // a bare storage term is full selection with that storage: the same spec but for its text
        cr_assert(bare.codec == c && composed.codec == c && kv_spec_is_full(&bare));
        snprintf(bare.text, sizeof(bare.text), "%s", composed.text);
        cr_assert(memcmp(&bare, &composed, sizeof(bare)) == 0, "'%s' differs from '%s'", text, spec_text);
        cr_assert(strstr(kv_spec_forms(), c->form), "forms do not list %s", c->form);
    }
}

// The grammar accepts a first term only through the registries: a name that is neither a policy, a codec nor
// a modifier is refused, naming the term.
Test(registry, unknown_names_are_refused_naming_the_term) {
    char err[ERR_LEN];
    KVSpec sp;
    const char *bad[] = {"lru:8", "fp4", "window:8+fp4", "int4+lru"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        cr_assert_eq(kv_spec_parse(&sp, bad[i], err), -1, "'%s' accepted", bad[i]);
        cr_assert(strstr(err, "term '") && !strchr(err, '\n'), "%s: %s", bad[i], err);
    }
}

// A bad spec's message says what is wrong with which term.
Test(registry, spec_errors_name_the_term_and_the_problem) {
    const char *cases[][3] = {
        {"int4+int8", "'int8'", "second storage format"},
        {"paged:8+tova:4", "'tova:4'", "selection policy: it goes first"},
        {"int4+window:8", "'window:8'", "selection policy: it goes first"},
        {"window:8+lru", "'lru'", "not a policy, a storage format or a modifier"},
        {"random:4,4", "'random:4,4'", "malformed"},
        {"fp8:0", "'fp8:0'", "malformed"},
    };
    char err[ERR_LEN];
    KVSpec sp;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        cr_assert_eq(kv_spec_parse(&sp, cases[i][0], err), -1, "'%s' accepted", cases[i][0]);
        cr_assert(strstr(err, cases[i][1]) && strstr(err, cases[i][2]), "%s: %s", cases[i][0], err);
    }
}

// A spec is printable ASCII, numbers have one spelling: blanks, signs, leading zeros and control characters
// are refused (a newline would otherwise break the one-line error), naming the byte.
Test(registry, specs_refuse_blanks_leading_zeros_and_control_characters) {
    const char *bad[] = {"window: 4", "window:4 ", " window:4", "snapkv:00000000000000000000004", "window:04",
                         "window:+4", "h2o:4, 4", "window:4\n+int4", "int4\t", "window:\x7f"};
    char err[ERR_LEN];
    KVSpec sp;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        cr_assert_eq(kv_spec_parse(&sp, bad[i], err), -1, "'%s' accepted", bad[i]);
        cr_assert(!strchr(err, '\n') && strstr(err, "bad --kv"), "%s", err);
    }
    cr_assert_eq(kv_spec_parse(&sp, "window:0", err), -1, "a zero window means nothing");
    cr_assert_eq(kv_spec_parse(&sp, "knorm:8,0", err), 0, "zero is spelt 0: %s", err);
    cr_assert_eq(kv_spec_parse(&sp, "window:4\n", err), -1);
    cr_assert(strstr(err, "byte 8") && strstr(err, "0x0a"), "%s", err);
}

// A budget beyond what the stream can hold is clamped at init: nothing is allocated for it, and the cache
// says it clamped so the program can tell the user.
Test(registry, budgets_beyond_the_stream_are_clamped) {
    char err[ERR_LEN];
    KVSpec sp;
    KVShape shape = {2, 4, 2, 8, 64, 10000.0f, 0};
    KVCache *kv;
    cr_assert_eq(kv_spec_parse(&sp, "h2o:16777216,16777216", err), 0, "%s", err);
    cr_assert_eq(kv_cache_init(&kv, &sp, &shape, err), 0, "%s", err);
    cr_assert_eq(kv_cache_clamped_budget(kv), 2 * 16777216);
    cr_assert_eq(kv_cache_layer_budget(kv, 0), 64);
    float k[2 * 8] = {0}, v[2 * 8] = {0}, att[4 * 64];
    for (int i = 0; i < 4 * 64; i++) att[i] = 1.0f / 64;
    for (int t = 0; t < 64; t++)
        for (int l = 0; l < 2; l++) {
            cr_assert_eq(kv_cache_append(kv, l, t, k, v), 0);
            kv_cache_observe(kv, l, att);
        }
    cr_assert_eq(kv_cache_tokens(kv, 1), 64, "a clamped budget keeps every token of the stream");
    kv_cache_free(kv);
    cr_assert_eq(kv_spec_parse(&sp, "window:32", err), 0, "%s", err);
    cr_assert_eq(kv_cache_init(&kv, &sp, &shape, err), 0, "%s", err);
    cr_assert_eq(kv_cache_clamped_budget(kv), 0);
    kv_cache_free(kv);
}

// Modifiers out of the model's range are refused when the cache is made, not run as something else.
Test(registry, out_of_range_layers_are_refused_at_init) {
    const char *bad[] = {"minicache:1", "knorm:4,2"}; // the test shape has L = 2 layers
    char err[ERR_LEN];
    KVSpec sp;
    KVShape shape = {2, 4, 2, 8, 64, 10000.0f, 0};
    KVCache *kv;
    for (size_t i = 0; i < 2; i++) {
        cr_assert_eq(kv_spec_parse(&sp, bad[i], err), 0, "%s", err);
        cr_assert_eq(kv_cache_init(&kv, &sp, &shape, err), -1, "'%s' accepted", bad[i]);
        cr_assert(strstr(err, "this model has 2"), "%s", err);
    }
    cr_assert_eq(kv_spec_parse(&sp, "minicache:0", err), 0, "%s", err);
    cr_assert_eq(kv_cache_init(&kv, &sp, &shape, err), 0, "%s", err);
    kv_cache_free(kv);
}

// ---- random:B ---------------------------------------------------------------------------------------------

enum { L = 2, NH = 4, NKV = 2, HD = 8, MAXP = 128 };

static KVCache *cache_of(const char *text) {
    KVSpec sp;
    char err[ERR_LEN];
    cr_assert_eq(kv_spec_parse(&sp, text, err), 0, "%s", err);
    KVShape shape = {L, NH, NKV, HD, MAXP, 10000.0f, 0};
    KVCache *kv;
    cr_assert_eq(kv_cache_init(&kv, &sp, &shape, err), 0, "%s", err);
    return kv;
}

// Appends positions 0..n-1 to every layer (random needs no attention).
static void append_all(KVCache *kv, int n) {
    float k[NKV * HD], v[NKV * HD];
    for (int t = 0; t < n; t++) {
        for (int i = 0; i < NKV * HD; i++) k[i] = v[i] = (float)t;
        for (int l = 0; l < L; l++) cr_assert_eq(kv_cache_append(kv, l, t, k, v), 0);
    }
}

static void positions(const KVCache *kv, int layer, int head, int *out, int *n) {
    const KVLane *lane = kv_cache_lane(kv, layer, head);
    *n = lane->n;
    for (int s = 0; s < lane->n; s++) out[s] = kv_lane_pos(lane, s);
}

Test(registry, random_keeps_its_budget_and_the_newest_and_repeats_for_a_seed) {
    KVCache *a = cache_of("random:16,4,7"), *b = cache_of("random:16,4,7"), *c = cache_of("random:16,4,8");
    append_all(a, 100);
    append_all(b, 100);
    append_all(c, 100);
    int pa[MAXP], pb[MAXP], pc[MAXP], na, nb, nc, differs = 0;
    for (int l = 0; l < L; l++)
        for (int g = 0; g < NKV; g++) {
            positions(a, l, g, pa, &na);
            positions(b, l, g, pb, &nb);
            positions(c, l, g, pc, &nc);
            cr_assert(na == 16 && nb == 16 && nc == 16, "budget: %d %d %d", na, nb, nc);
            cr_assert(memcmp(pa, pb, sizeof(int) * 16) == 0, "same seed, different victims");
            differs |= memcmp(pa, pc, sizeof(int) * 16) != 0;
            for (int s = 0; s < 4; s++) cr_assert_eq(pa[12 + s], 96 + s, "the newest 4 stay"); // ascending slots
            for (int s = 1; s < 16; s++) cr_assert_gt(pa[s], pa[s - 1]);
        }
    cr_assert(differs, "another seed picked the same victims everywhere");
    // the victims are spread, not the oldest: some of the first 48 positions survive in some lane
    int old = 0;
    for (int l = 0; l < L; l++)
        for (int g = 0; g < NKV; g++) {
            positions(a, l, g, pa, &na);
            old += pa[0] < 48;
        }
    cr_assert_gt(old, 0, "random evicted like a window");
    kv_cache_reset(a);
    append_all(a, 100);
    positions(a, 0, 0, pa, &na);
    positions(b, 0, 0, pb, &nb);
    cr_assert(memcmp(pa, pb, sizeof(int) * 16) == 0, "a reset cache repeats its choices");
    kv_cache_free(a);
    kv_cache_free(b);
    kv_cache_free(c);
}

Test(registry, random_on_pages_drops_blocks_outside_the_newest_to_its_budget) {
    KVSpec sp;
    char err[ERR_LEN];
    cr_assert_eq(kv_spec_parse(&sp, "random:8,4+paged:4", err), 0, "%s", err);
    KVShape shape = {L, NH, NKV, HD, MAXP, 10000.0f, 0};
    KVPool *p;
    cr_assert_eq(kv_pool_init_spec(&p, &shape, &sp, 64, err), 0, "%s", err);
    KVSeq s = {0};
    cr_assert_eq(kv_paged_policy(&s.policy, &sp, err), 0, "%s", err);
    cr_assert_eq(kv_paged_begin(p, &s, NULL, 0, KV_PRIORITY_DEFAULT, err), 0, "%s", err);
    float k[NKV * HD] = {0}, v[NKV * HD] = {0};
    for (int t = 0; t < 61; t++) {
        for (int l = 0; l < L; l++) cr_assert_eq(kv_paged_append(p, &s, l, t, t, k, v, err), 0, "%s", err);
        kv_paged_enforce(p, &s);
        int held = 0, nb = kv_paged_blocks(&s);
        for (int i = 0; i < nb; i++) held += s.table[i] != KV_BLOCK_DROPPED;
        cr_assert_leq(held, 8 / 4 + 1, "t %d: %d blocks held", t, held);
        cr_assert_neq(s.table[nb - 1], KV_BLOCK_DROPPED, "the block being written stays");
        if (t >= 4) cr_assert_neq(s.table[(t - 3) / 4], KV_BLOCK_DROPPED, "t %d: the newest tokens stay", t);
    }
    cr_assert_gt(s.dropped, 0);
    cr_assert_eq(kv_pool_validate(p, err), 0, "%s", err);
    kv_paged_end(p, &s);
    kv_pool_free(p);
}

// ---- fp8 (E4M3) -------------------------------------------------------------------------------------------

// Every finite code decodes to a value that encodes back to the same code (0x7F and 0xFF are NaN).
Test(registry, fp8_every_code_round_trips) {
    for (int c = 0; c < 256; c++) {
        if ((c & 0x7F) == 0x7F) {
            cr_assert(isnan(kv_fp8_to_f32((uint8_t)c)));
            continue;
        }
        float x = kv_fp8_to_f32((uint8_t)c);
        cr_assert_eq(kv_f32_to_fp8(x), c, "code 0x%02x = %g encodes to 0x%02x", c, x, kv_f32_to_fp8(x));
    }
    cr_assert_eq(kv_fp8_to_f32(0x7E), 448.0f);
    cr_assert_eq(kv_fp8_to_f32(0x01), ldexpf(1.0f, -9));
    cr_assert_eq(kv_fp8_to_f32(0x08), ldexpf(1.0f, -6));
}

// The encoder against an independent reference: the nearest of the 127 non-negative finite values by brute
// force, ties to the even code, saturating at 448.
static int nearest_code(float a) {
    int best = 0;
    for (int c = 1; c <= 0x7E; c++) {
        float dc = fabsf(kv_fp8_to_f32((uint8_t)c) - a), db = fabsf(kv_fp8_to_f32((uint8_t)best) - a);
        if (dc < db || (dc == db && (c & 1) == 0)) best = c;
    }
    return best;
}

Test(registry, fp8_rounds_to_nearest_even_like_brute_force) {
    Rng rng;
    rng_init(&rng, 5);
    for (int i = 0; i < 20000; i++) {
        float mag = ldexpf(rng_uniform(&rng), (int)rng_below(&rng, 22) - 12); // 2^-12 .. 2^9, past 448
        float x = rng_uniform(&rng) < 0.5f ? -mag : mag;
        int want = nearest_code(fabsf(x)) | (x < 0 ? 0x80 : 0);
        cr_assert_eq(kv_f32_to_fp8(x), want, "%.9g -> 0x%02x, want 0x%02x", x, kv_f32_to_fp8(x), want);
    }
    for (int c = 0; c < 0x7E; c++) { // exact midpoints between neighbours go to the even code
        float mid = 0.5f * (kv_fp8_to_f32((uint8_t)c) + kv_fp8_to_f32((uint8_t)(c + 1)));
        cr_assert_eq(kv_f32_to_fp8(mid), (c & 1) ? c + 1 : c, "midpoint of 0x%02x", c);
    }
}

// A row through the codec: layout size, and each value within half a mantissa step (2^-4 relative) of the
// group's scale range, or an absolute scale * 2^-10 in the subnormal range.
Test(registry, fp8_rows_hold_the_bound_and_the_layout) {
    KVSpec sp;
    char err[ERR_LEN];
    cr_assert_eq(kv_spec_parse(&sp, "fp8:16", err), 0, "%s", err);
    enum { D = 64 };
    cr_assert_eq(sp.codec->row_bytes(sp.codec, D, kv_codec_group(&sp, D)), 4 * (2 + 16));
    cr_assert_eq(sp.codec->row_bytes(sp.codec, 40, kv_codec_group(&sp, 40)), 0, "a group that does not divide the row");
    Rng rng;
    rng_init(&rng, 9);
    float x[D], y[D];
    uint8_t row[4 * 18];
    for (int trial = 0; trial < 200; trial++) {
        float spread = ldexpf(1.0f, (int)rng_below(&rng, 16) - 8);
        for (int i = 0; i < D; i++) x[i] = rng_normal(&rng) * spread * (i % 16 == 3 ? 30.0f : 1.0f); // outliers
        if (trial == 0) memset(x, 0, sizeof(x));
        sp.codec->encode(sp.codec, row, x, D, 16);
        sp.codec->decode(sp.codec, y, row, D, 16);
        for (int g = 0; g < D / 16; g++) {
            float amax = 0.0f;
            for (int i = 0; i < 16; i++) amax = fmaxf(amax, fabsf(x[g * 16 + i]));
            float scale = amax / 448.0f * (1.0f + 0x1p-10f); // the fp16 scale rounds up by at most an ulp
            for (int i = 0; i < 16; i++) {
                float a = x[g * 16 + i], bound = fmaxf(fabsf(a) * 0x1p-4f, scale * 0x1p-10f) * 1.0001f;
                cr_assert_leq(fabsf(y[g * 16 + i] - a), bound, "trial %d value %d: %g -> %g", trial, g * 16 + i, a,
                              y[g * 16 + i]);
            }
        }
    }
}

// fp8 rows in the paged pool read back as the codec's round trip.
Test(registry, fp8_pool_rows_read_back_as_encoded) {
    KVShape shape = {L, NH, NKV, HD, MAXP, 10000.0f, 0};
    KVPool *p;
    char err[ERR_LEN];
    cr_assert_eq(kv_pool_init_format(&p, &shape, 4, 8, "fp8:4", err), 0, "%s", err);
    KVSeq s = {0};
    cr_assert_eq(kv_paged_begin(p, &s, NULL, 0, KV_PRIORITY_DEFAULT, err), 0, "%s", err);
    float k[NKV * HD], v[NKV * HD], got[4 * HD], want[HD];
    uint8_t enc[64];
    for (int t = 0; t < 4; t++) {
        for (int i = 0; i < NKV * HD; i++) {
            k[i] = sinf(0.7f * (float)(t * 16 + i)) * (1.0f + (float)(i % 5));
            v[i] = cosf(0.3f * (float)(t * 16 + i));
        }
        for (int l = 0; l < L; l++) cr_assert_eq(kv_paged_append(p, &s, l, t, t, k, v, err), 0, "%s", err);
    }
    kv_pool_read(p, 0, s.table[0], 1, 1, 4, got);
    for (int t = 0; t < 4; t++) {
        for (int i = 0; i < NKV * HD; i++) k[i] = sinf(0.7f * (float)(t * 16 + i)) * (1.0f + (float)(i % 5));
        p->codec->encode(p->codec, enc, k + HD, HD, p->group);
        p->codec->decode(p->codec, want, enc, HD, p->group);
        cr_assert(memcmp(got + t * HD, want, sizeof(want)) == 0, "row %d", t);
    }
    kv_paged_end(p, &s);
    kv_pool_free(p);
}
