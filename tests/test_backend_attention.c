// CPU-vs-CUDA tests of the attention ops: the naive materialised pair, flash attention (against the same CPU
// reference: out, a float64 log-sum-exp, and the gradients), fp32 decode and decode from a group-quantized cache
// (against attention_decode_cpu on the rows kv/quant.h decodes), decode by kv head group at NH/NKV 1, 4 and NH,
// keys rotated at view for a StreamingLLM ring, and the device's row encoder byte for byte against
// quant_encode_row. Odd shapes: B=2, T 37 and 130, NH 6 over
// NKV 6 / 2 / 1, HD 16 / 32 / 64 (plus odd head dims), Tc up to 3000 (and one long context). Outputs start as
// NaN so an unwritten element fails; gradients start random so accumulation (+=) is checked; cache rows past
// Tc are NaN so a read past the end fails. Without a GPU every test skips.
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#include "../kv/quant.h"
#include "../layers/cpu_ops.h"
#include "backend_util.h"

#if KVLAB_CUDA
#include "../attention/attention_cuda.h"
#include "../layers/cuda_ops.h"

// fp32 against fp32 in another summation order lands near 1e-13; any indexing or masking bug far above.
#define TOL 1e-8

static const int TS[] = {37, 130};
static const int HDS[] = {16, 32, 64};
#define B_ 2
#define NH_ 6

static float *copy_floats(const float *src, size_t n) {
    float *d = common_calloc(n ? n : 1, sizeof(float));
    memcpy(d, src, n * sizeof(float));
    return d;
}

// lse (B,NH,T) = log sum_{s<=t} exp(scale q_t . k_s), in float64.
static void ref_lse(float *lse, const float *q, const float *k, int B, int T, int NH, int NKV, int HD) {
    int rep = NH / NKV;
    double scale = 1.0 / sqrt((double)HD);
    double *s = common_calloc((size_t)T, sizeof(double));
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++) {
                const float *qt = q + (((size_t)b * T + t) * NH + h) * HD;
                double mx = -INFINITY, sum = 0.0;
                for (int j = 0; j <= t; j++) {
                    const float *kj = k + (((size_t)b * T + j) * NKV + h / rep) * HD;
                    double dot = 0.0;
                    for (int d = 0; d < HD; d++) dot += (double)qt[d] * kj[d];
                    s[j] = dot * scale;
                    mx = s[j] > mx ? s[j] : mx;
                }
                for (int j = 0; j <= t; j++) sum += exp(s[j] - mx);
                lse[((size_t)b * NH + h) * T + t] = (float)(mx + log(sum));
            }
    common_free(s);
}

static void forward_case(int T, int NKV, int HD, int flash, uint64_t seed) {
    const int B = B_, NH = NH_;
    size_t nq = (size_t)B * T * NH * HD, nkv = (size_t)B * T * NKV * HD, na = (size_t)B * NH * T * T;
    size_t nl = (size_t)B * NH * T;
    float *q = bk_host_random(nq, seed, 2.0f), *k = bk_host_random(nkv, seed + 1, 2.0f);
    float *v = bk_host_random(nkv, seed + 2, 1.0f);
    float *out = common_calloc(nq, sizeof(float)), *att = common_calloc(na, sizeof(float));
    attention_forward_cpu(out, att, q, k, v, B, T, NH, NKV, HD);

    float *dq = bk_dev_from_host(q, nq), *dk = bk_dev_from_host(k, nkv), *dv = bk_dev_from_host(v, nkv);
    float *dout = bk_dev_poisoned(nq);
    char what[160];
    if (flash) {
        float *lse = common_calloc(nl, sizeof(float));
        ref_lse(lse, q, k, B, T, NH, NKV, HD);
        float *dlse = bk_dev_poisoned(nl);
        attention_flash_forward_cuda(dout, dlse, dq, dk, dv, B, T, NH, NKV, HD);
        snprintf(what, sizeof(what), "flash forward out T=%d NKV=%d HD=%d", T, NKV, HD);
        bk_expect_close(dout, out, nq, TOL, what);
        snprintf(what, sizeof(what), "flash forward lse T=%d NKV=%d HD=%d", T, NKV, HD);
        bk_expect_close(dlse, lse, nl, TOL, what);
        bk_dev_free(dlse);
        common_free(lse);
    } else {
        float *datt = bk_dev_poisoned(na);
        attention_forward_cuda(dout, datt, dq, dk, dv, B, T, NH, NKV, HD);
        snprintf(what, sizeof(what), "forward out T=%d NKV=%d HD=%d", T, NKV, HD);
        bk_expect_close(dout, out, nq, TOL, what);
        snprintf(what, sizeof(what), "forward att T=%d NKV=%d HD=%d", T, NKV, HD);
        bk_expect_close(datt, att, na, TOL, what);
        bk_dev_free(datt);
    }
    bk_dev_free(dq), bk_dev_free(dk), bk_dev_free(dv), bk_dev_free(dout);
    common_free(q), common_free(k), common_free(v), common_free(out), common_free(att);
}

// Runs the CUDA backward from the given initial gradients into fresh device buffers; returns them on the host.
static void backward_cuda_run(float **gq, float **gk, float **gv, const float *gq0, const float *gk0, const float *gv0,
                              const float *dq, const float *dk, const float *dv, const float *ddout, const float *dout_fw,
                              const float *dlse, const float *datt, int T, int NKV, int HD, int flash, int check) {
    const int B = B_, NH = NH_;
    size_t nq = (size_t)B * T * NH * HD, nkv = (size_t)B * T * NKV * HD, na = (size_t)B * NH * T * T;
    float *dgq = bk_dev_from_host(gq0, nq), *dgk = bk_dev_from_host(gk0, nkv), *dgv = bk_dev_from_host(gv0, nkv);
    if (flash) {
        attention_flash_backward_cuda(dgq, dgk, dgv, ddout, dout_fw, dlse, dq, dk, dv, B, T, NH, NKV, HD);
    } else {
        float *dscratch = bk_dev_poisoned(na);
        attention_backward_cuda(dgq, dgk, dgv, dscratch, ddout, datt, dq, dk, dv, B, T, NH, NKV, HD);
        if (check) bk_check_guard(dscratch, na, "backward scratch");
        bk_dev_free(dscratch);
    }
    if (check) {
        bk_check_guard(dgq, nq, "dq"), bk_check_guard(dgk, nkv, "dk"), bk_check_guard(dgv, nkv, "dv");
    }
    *gq = bk_download(dgq, nq), *gk = bk_download(dgk, nkv), *gv = bk_download(dgv, nkv);
    bk_dev_free(dgq), bk_dev_free(dgk), bk_dev_free(dgv);
}

static void expect_host_close(const float *x, const float *ref, size_t n, const char *what) {
    for (size_t i = 0; i < n; i++) cr_assert(isfinite(x[i]), "%s: element %zu not finite (%g)", what, i, (double)x[i]);
    double e = bk_nmse(x, ref, n);
    cr_assert(e <= TOL, "%s: nmse %.3g > %.1g", what, e, TOL);
}

static void backward_case(int T, int NKV, int HD, int flash, uint64_t seed) {
    const int B = B_, NH = NH_;
    size_t nq = (size_t)B * T * NH * HD, nkv = (size_t)B * T * NKV * HD, na = (size_t)B * NH * T * T;
    size_t nl = (size_t)B * NH * T;
    float *q = bk_host_random(nq, seed, 2.0f), *k = bk_host_random(nkv, seed + 1, 2.0f);
    float *v = bk_host_random(nkv, seed + 2, 1.0f), *dout = bk_host_random(nq, seed + 3, 1.0f);
    float *gq0 = bk_host_random(nq, seed + 4, 0.1f), *gk0 = bk_host_random(nkv, seed + 5, 0.1f);
    float *gv0 = bk_host_random(nkv, seed + 6, 0.1f);
    float *out = common_calloc(nq, sizeof(float)), *att = common_calloc(na, sizeof(float));
    float *scratch = common_calloc(na, sizeof(float)), *lse = common_calloc(nl, sizeof(float));
    attention_forward_cpu(out, att, q, k, v, B, T, NH, NKV, HD);
    float *gq = copy_floats(gq0, nq), *gk = copy_floats(gk0, nkv), *gv = copy_floats(gv0, nkv);
    attention_backward_cpu(gq, gk, gv, scratch, dout, att, q, k, v, B, T, NH, NKV, HD);
    ref_lse(lse, q, k, B, T, NH, NKV, HD);

    float *dq = bk_dev_from_host(q, nq), *dk = bk_dev_from_host(k, nkv), *dv = bk_dev_from_host(v, nkv);
    float *ddout = bk_dev_from_host(dout, nq), *dout_fw = bk_dev_from_host(out, nq);
    float *dlse = bk_dev_from_host(lse, nl), *datt = flash ? NULL : bk_dev_from_host(att, na);
    float *cq, *ck, *cv, *cq2, *ck2, *cv2;
    backward_cuda_run(&cq, &ck, &cv, gq0, gk0, gv0, dq, dk, dv, ddout, dout_fw, dlse, datt, T, NKV, HD, flash, 1);
    backward_cuda_run(&cq2, &ck2, &cv2, gq0, gk0, gv0, dq, dk, dv, ddout, dout_fw, dlse, datt, T, NKV, HD, flash, 0);
    char what[160];
    const char *name = flash ? "flash backward" : "backward";
    snprintf(what, sizeof(what), "%s dq T=%d NKV=%d HD=%d", name, T, NKV, HD);
    expect_host_close(cq, gq, nq, what);
    snprintf(what, sizeof(what), "%s dk T=%d NKV=%d HD=%d", name, T, NKV, HD);
    expect_host_close(ck, gk, nkv, what);
    snprintf(what, sizeof(what), "%s dv T=%d NKV=%d HD=%d", name, T, NKV, HD);
    expect_host_close(cv, gv, nkv, what);
    // deterministic: a second run gives the same bits
    cr_assert(memcmp(cq, cq2, nq * sizeof(float)) == 0, "%s: dq differs between two runs (T=%d NKV=%d HD=%d)", name,
              T, NKV, HD);
    cr_assert(memcmp(ck, ck2, nkv * sizeof(float)) == 0, "%s: dk differs between two runs (T=%d NKV=%d HD=%d)", name,
              T, NKV, HD);
    cr_assert(memcmp(cv, cv2, nkv * sizeof(float)) == 0, "%s: dv differs between two runs (T=%d NKV=%d HD=%d)", name,
              T, NKV, HD);

    bk_dev_free(dq), bk_dev_free(dk), bk_dev_free(dv), bk_dev_free(ddout), bk_dev_free(dout_fw);
    bk_dev_free(dlse), bk_dev_free(datt);
    float *host[] = {q, k, v, dout, gq0, gk0, gv0, out, att, scratch, lse, gq, gk, gv, cq, ck, cv, cq2, ck2, cv2};
    for (size_t i = 0; i < sizeof(host) / sizeof(host[0]); i++) common_free(host[i]);
}

static void all_shapes(int NKV, int flash, int backward) {
    uint64_t seed = 1000 + 100 * (uint64_t)NKV + 10 * (uint64_t)flash;
    for (size_t i = 0; i < sizeof(TS) / sizeof(TS[0]); i++)
        for (size_t j = 0; j < sizeof(HDS) / sizeof(HDS[0]); j++, seed += 7) {
            if (backward)
                backward_case(TS[i], NKV, HDS[j], flash, seed);
            else
                forward_case(TS[i], NKV, HDS[j], flash, seed);
        }
}

static void run_forward_mha(void) { all_shapes(6, 0, 0); }
static void run_forward_gqa(void) { all_shapes(2, 0, 0); }
static void run_forward_mqa(void) { all_shapes(1, 0, 0); }
static void run_backward_mha(void) { all_shapes(6, 0, 1); }
static void run_backward_gqa(void) { all_shapes(2, 0, 1); }
static void run_backward_mqa(void) { all_shapes(1, 0, 1); }
static void run_flash_forward_mha(void) { all_shapes(6, 1, 0); }
static void run_flash_forward_gqa(void) { all_shapes(2, 1, 0); }
static void run_flash_forward_mqa(void) { all_shapes(1, 1, 0); }
static void run_flash_backward_mha(void) { all_shapes(6, 1, 1); }
static void run_flash_backward_gqa(void) { all_shapes(2, 1, 1); }
static void run_flash_backward_mqa(void) { all_shapes(1, 1, 1); }

// head dims that are not a multiple of 4 (zero-padded tiles), partial last warp of dims, and the maximum; with
// 16..64 above, every kernel instance (NI = ceil(HD/32) = 1, 2, 3, 4) runs
static void run_flash_odd_head_dims(void) {
    static const int hds[] = {4, 13, 50, 75, 100, 128};
    for (size_t i = 0; i < sizeof(hds) / sizeof(hds[0]); i++) {
        forward_case(70, 2, hds[i], 1, 5000 + 10 * i);
        backward_case(70, 2, hds[i], 1, 5100 + 10 * i);
    }
}

// --- decode ---------------------------------------------------------------------------------------------

static void decode_case(int NKV, int HD, int Tc, uint64_t seed) {
    const int NH = NH_, cap = Tc + 7;
    size_t hs = (size_t)cap * HD, ncache = (size_t)NKV * hs, nq = (size_t)NH * HD, na = (size_t)NH * Tc;
    float *kc = bk_host_random(ncache, seed, 2.0f), *vc = bk_host_random(ncache, seed + 1, 1.0f);
    float *q = bk_host_random(nq, seed + 2, 2.0f);
    for (int g = 0; g < NKV; g++) // slots past Tc: a read of them turns the result into NaN
        for (size_t i = (size_t)Tc * HD; i < hs; i++) kc[g * hs + i] = vc[g * hs + i] = NAN;
    float *out = common_calloc(nq, sizeof(float)), *att = common_calloc(na, sizeof(float));
    attention_decode_cpu(out, att, q, kc, vc, Tc, hs, NH, NKV, HD);

    float *dkc = bk_dev_from_host(kc, ncache), *dvc = bk_dev_from_host(vc, ncache), *dq = bk_dev_from_host(q, nq);
    float *dout = bk_dev_poisoned(nq), *datt = bk_dev_poisoned(na);
    attention_decode_cuda(dout, datt, dq, dkc, dvc, Tc, hs, NH, NKV, HD);
    char what[160];
    snprintf(what, sizeof(what), "decode out Tc=%d NKV=%d HD=%d", Tc, NKV, HD);
    bk_expect_close(dout, out, nq, TOL, what);
    snprintf(what, sizeof(what), "decode att Tc=%d NKV=%d HD=%d", Tc, NKV, HD);
    bk_expect_close(datt, att, na, TOL, what);
    bk_dev_free(dkc), bk_dev_free(dvc), bk_dev_free(dq), bk_dev_free(dout), bk_dev_free(datt);
    common_free(kc), common_free(vc), common_free(q), common_free(out), common_free(att);
}

static void decode_shapes(int NKV) {
    static const int tcs[] = {1, 37, 3000};
    uint64_t seed = 2000 + 100 * (uint64_t)NKV;
    for (size_t i = 0; i < sizeof(tcs) / sizeof(tcs[0]); i++)
        for (size_t j = 0; j < sizeof(HDS) / sizeof(HDS[0]); j++, seed += 7) decode_case(NKV, HDS[j], tcs[i], seed);
}

static void run_decode_mha(void) { decode_shapes(6); }
static void run_decode_gqa(void) { decode_shapes(2); }
static void run_decode_mqa(void) { decode_shapes(1); }
// larger chunks (Tc 20000 gives 256-row chunks at NH 6), and head dims the thread groups do not divide evenly
static void run_decode_long_and_odd(void) {
    decode_case(2, 64, 20000, 2900);
    decode_case(2, 20, 300, 2910);
    decode_case(1, 160, 300, 2920);
}

// Rows quantized with quant_encode_row at odd (unaligned) row and head strides, head-major or (interleaved)
// position-major; the reference decodes them with quant_decode_row and runs attention_decode_cpu on the floats.
static void decode_q_case(int NKV, int HD, int Tc, int bits, int group, int interleaved, uint64_t seed) {
    const int NH = NH_, cap = Tc + 5;
    size_t qrb = quant_row_bytes(HD, group, bits);
    cr_assert(qrb > 0);
    size_t row_bytes, hsb, nbytes;
    if (interleaved) { // position t holds every head's row: [head 0][head 1]...
        hsb = qrb + 1, row_bytes = (size_t)NKV * hsb + 2, nbytes = (size_t)cap * row_bytes;
    } else {
        row_bytes = qrb + 3, hsb = (size_t)cap * row_bytes + 1, nbytes = (size_t)NKV * hsb;
    }
    size_t nrows = (size_t)NKV * Tc * HD, nq = (size_t)NH * HD, na = (size_t)NH * Tc;
    float *kf = bk_host_random(nrows, seed, 2.0f), *vf = bk_host_random(nrows, seed + 1, 1.0f);
    float *q = bk_host_random(nq, seed + 2, 2.0f);
    float *kd = common_calloc(nrows, sizeof(float)), *vd = common_calloc(nrows, sizeof(float));
    uint8_t *kq = common_calloc(nbytes, 1), *vq = common_calloc(nbytes, 1);
    memset(kq, 0xFF, nbytes); // unused bytes decode as NaN scales: a read of them shows
    memset(vq, 0xFF, nbytes);
    for (int g = 0; g < NKV; g++)
        for (int t = 0; t < Tc; t++) {
            size_t f = ((size_t)g * Tc + t) * HD, o = (size_t)g * hsb + (size_t)t * row_bytes;
            quant_encode_row(kq + o, kf + f, HD, group, bits);
            quant_encode_row(vq + o, vf + f, HD, group, bits);
            quant_decode_row(kd + f, kq + o, HD, group, bits);
            quant_decode_row(vd + f, vq + o, HD, group, bits);
        }
    float *out = common_calloc(nq, sizeof(float)), *att = common_calloc(na, sizeof(float));
    attention_decode_cpu(out, att, q, kd, vd, Tc, (size_t)Tc * HD, NH, NKV, HD);

    uint8_t *dkq = device_malloc(nbytes), *dvq = device_malloc(nbytes);
    device_upload(dkq, kq, nbytes);
    device_upload(dvq, vq, nbytes);
    float *dq = bk_dev_from_host(q, nq), *dout = bk_dev_poisoned(nq), *datt = bk_dev_poisoned(na);
    attention_decode_q_cuda(dout, datt, dq, dkq, dvq, bits, group, Tc, hsb, row_bytes, NH, NKV, HD);
    char what[160];
    snprintf(what, sizeof(what), "decode int%d g%d%s out Tc=%d NKV=%d HD=%d", bits, group,
             interleaved ? " interleaved" : "", Tc, NKV, HD);
    bk_expect_close(dout, out, nq, TOL, what);
    snprintf(what, sizeof(what), "decode int%d g%d%s att Tc=%d NKV=%d HD=%d", bits, group,
             interleaved ? " interleaved" : "", Tc, NKV, HD);
    bk_expect_close(datt, att, na, TOL, what);
    device_free(dkq), device_free(dvq);
    bk_dev_free(dq), bk_dev_free(dout), bk_dev_free(datt);
    float *host[] = {kf, vf, q, kd, vd, out, att};
    for (size_t i = 0; i < sizeof(host) / sizeof(host[0]); i++) common_free(host[i]);
    common_free(kq), common_free(vq);
}

static void decode_q_shapes(int bits) {
    static const int nkvs[] = {6, 2, 1}, hds[] = {32, 64}, tcs[] = {1, 300, 3000}, groups[] = {16, 32};
    uint64_t seed = 3000 + 100 * (uint64_t)bits;
    for (size_t a = 0; a < 3; a++)
        for (size_t b = 0; b < 2; b++)
            for (size_t c = 0; c < 3; c++)
                for (size_t d = 0; d < 2; d++, seed += 7)
                    decode_q_case(nkvs[a], hds[b], tcs[c], bits, groups[d], 0, seed);
    decode_q_case(2, 16, 37, bits, 16, 0, seed);      // one group per row
    decode_q_case(2, 26, 100, bits, 13, 0, seed + 1); // odd group: a partial last code byte, odd head dim
    decode_q_case(2, 64, 300, bits, 32, 1, seed + 2); // heads interleaved per position
    decode_q_case(6, 32, 37, bits, 16, 1, seed + 3);
}

// --- decode by kv head group (one block per (chunk, kv head) serves its NH/NKV query heads) -----------------

// att == NULL: the kernels skip the probabilities, and out keeps the bits of the att-writing run (ref, nq
// floats). attention_decode_cuda and attention_decode_kv_cuda (bits 32, no RoPE) over the same fp32 rows.
static void expect_same_out_without_att(const float *ref, size_t nq, const float *dq, const float *dkc,
                                        const float *dvc, int Tc, size_t hs, int NH, int NKV, int HD) {
    float *dout = bk_dev_poisoned(nq);
    attention_decode_cuda(dout, NULL, dq, dkc, dvc, Tc, hs, NH, NKV, HD);
    float *o = bk_download(dout, nq);
    cr_assert(memcmp(o, ref, nq * sizeof(float)) == 0, "decode NH=%d NKV=%d HD=%d Tc=%d: out differs without att", NH,
              NKV, HD, Tc);
    common_free(o);
    bk_dev_free(dout);
    dout = bk_dev_poisoned(nq);
    attention_decode_kv_cuda(dout, NULL, dq, (const uint8_t *)dkc, (const uint8_t *)dvc, 32, HD, Tc, hs * sizeof(float),
                             (size_t)HD * sizeof(float), NH, NKV, HD, NULL, NULL, 0, 0, 0);
    o = bk_download(dout, nq);
    cr_assert(memcmp(o, ref, nq * sizeof(float)) == 0, "decode_kv NH=%d NKV=%d HD=%d Tc=%d: out differs without att",
              NH, NKV, HD, Tc);
    common_free(o);
    bk_dev_free(dout);
}

// attention_decode_cuda at any NH/NKV against attention_decode_cpu, twice the same bits, and the same out bits
// without att.
static void decode_group_case(int NH, int NKV, int HD, int Tc, uint64_t seed) {
    const int cap = Tc + 3;
    size_t hs = (size_t)cap * HD, ncache = (size_t)NKV * hs, nq = (size_t)NH * HD, na = (size_t)NH * Tc;
    float *kc = bk_host_random(ncache, seed, 2.0f), *vc = bk_host_random(ncache, seed + 1, 1.0f);
    float *q = bk_host_random(nq, seed + 2, 2.0f);
    for (int g = 0; g < NKV; g++)
        for (size_t i = (size_t)Tc * HD; i < hs; i++) kc[g * hs + i] = vc[g * hs + i] = NAN;
    float *out = common_calloc(nq, sizeof(float)), *att = common_calloc(na, sizeof(float));
    attention_decode_cpu(out, att, q, kc, vc, Tc, hs, NH, NKV, HD);
    float *dkc = bk_dev_from_host(kc, ncache), *dvc = bk_dev_from_host(vc, ncache), *dq = bk_dev_from_host(q, nq);
    float *dout = bk_dev_poisoned(nq), *datt = bk_dev_poisoned(na);
    attention_decode_cuda(dout, datt, dq, dkc, dvc, Tc, hs, NH, NKV, HD);
    char what[160];
    snprintf(what, sizeof(what), "decode out NH=%d NKV=%d HD=%d Tc=%d", NH, NKV, HD, Tc);
    bk_expect_close(dout, out, nq, TOL, what);
    snprintf(what, sizeof(what), "decode att NH=%d NKV=%d HD=%d Tc=%d", NH, NKV, HD, Tc);
    bk_expect_close(datt, att, na, TOL, what);
    float *o1 = bk_download(dout, nq), *a1 = bk_download(datt, na);
    attention_decode_cuda(dout, datt, dq, dkc, dvc, Tc, hs, NH, NKV, HD);
    float *o2 = bk_download(dout, nq), *a2 = bk_download(datt, na);
    cr_assert(memcmp(o1, o2, nq * sizeof(float)) == 0 && memcmp(a1, a2, na * sizeof(float)) == 0,
              "decode NH=%d NKV=%d HD=%d Tc=%d: two runs differ", NH, NKV, HD, Tc);
    expect_same_out_without_att(o1, nq, dq, dkc, dvc, Tc, hs, NH, NKV, HD);
    bk_dev_free(dkc);
    bk_dev_free(dvc);
    bk_dev_free(dq);
    bk_dev_free(dout);
    bk_dev_free(datt);
    float *host[] = {kc, vc, q, out, att, o1, o2, a1, a2};
    for (size_t i = 0; i < sizeof(host) / sizeof(host[0]); i++) common_free(host[i]);
}

// NH/NKV = 1, 4 and NH (MQA); Tc of one row, under one chunk (odd), one row past a chunk, and many chunks; head
// dims under a warp, odd, and past the block's threads
static void run_decode_groups(void) {
    static const int nkvs[] = {8, 2, 1}, hds[] = {8, 26, 64}, tcs[] = {1, 5, 65, 4097};
    uint64_t seed = 6000;
    for (size_t a = 0; a < 3; a++)
        for (size_t b = 0; b < 3; b++)
            for (size_t c = 0; c < 4; c++, seed += 7) decode_group_case(8, nkvs[a], hds[b], tcs[c], seed);
    decode_group_case(12, 3, 160, 300, seed);  // HD past the block's 128 threads, a group of 4
    decode_group_case(32, 1, 128, 700, seed + 1); // MQA, 32 wide queries: past 48 KB of shared memory (opt-in)
    decode_group_case(64, 1, 128, 130, seed + 2); // the chunk shrinks to fit shared memory
}

// attention_decode_fits says which shapes the launchers take: the largest group of 128-wide heads that fits
// runs (its chunk at the floor), one more head does not fit.
static void run_decode_fits(void) {
    int R = 1;
    while (attention_decode_fits(R + 1, 128)) R++;
    cr_assert(R > 64 && !attention_decode_fits(R + 1, 128), "largest group of 128-wide heads: %d", R);
    cr_assert(attention_decode_smem_bytes(R, 128, ATTENTION_DECODE_CHUNK_FLOOR) <= ATTENTION_DECODE_SMEM_MAX);
    decode_group_case(R, 1, 128, 40, 6900);
}

// RoPE at view for a StreamingLLM cache on the device (attention_decode_kv_cuda with tables): the device holds
// pre-RoPE rows in physical order (sinks, then a ring of `window` rows, the newest at sink + newest); the
// reference lays the same rows out in cache order (sinks, then the window oldest first), rotates row s to
// position s as kv/cache.c's view does, and runs attention_decode_cpu. att is compared row by row through the
// ring's permutation. bits 32 and 4 (the reference decodes the int4 rows first).
static void decode_rope_case(int NH, int NKV, int HD, int sink, int window, int seen, int bits, uint64_t seed) {
    const int half = HD / 2, group = 16;
    int n_win = seen - sink < window ? seen - sink : window, Tc = sink + (n_win > 0 ? n_win : 0);
    if (seen < sink) Tc = seen;
    int newest = seen > sink ? (seen - 1 - sink) % window : 0;
    size_t rb = bits == 32 ? (size_t)HD * sizeof(float) : quant_row_bytes(HD, group, bits);
    size_t hsb = (size_t)(sink + window) * rb, nbytes = (size_t)NKV * hsb, nq = (size_t)NH * HD;
    float *kf = bk_host_random((size_t)NKV * Tc * HD, seed, 2.0f), *vf = bk_host_random((size_t)NKV * Tc * HD, seed + 1, 1.0f);
    float *q = bk_host_random(nq, seed + 2, 2.0f);
    uint8_t *kq = common_calloc(nbytes, 1), *vq = common_calloc(nbytes, 1);
    float *kr = common_calloc((size_t)NKV * Tc * HD, sizeof(float)), *vr = common_calloc((size_t)NKV * Tc * HD, sizeof(float));
    int *order = common_calloc(Tc, sizeof(int)); // cache slot s -> physical row
    for (int s = 0; s < Tc; s++) {
        int age = Tc - 1 - s; // window rows: the newest at slot Tc - 1
        order[s] = s < sink ? s : sink + ((newest - age) % window + window) % window;
    }
    float *cs = common_calloc((size_t)(sink + window) * half, sizeof(float)), *sn = common_calloc((size_t)(sink + window) * half, sizeof(float));
    for (int p = 0; p < sink + window; p++)
        for (int i = 0; i < half; i++) {
            double ang = rope_angle(p, i, HD, 10000.0f);
            cs[(size_t)p * half + i] = (float)cos(ang);
            sn[(size_t)p * half + i] = (float)sin(ang);
        }
    for (int g = 0; g < NKV; g++)
        for (int t = 0; t < Tc; t++) { // physical row t holds kf row t; the reference's slot s holds row order[s]
            const float *kt = kf + ((size_t)g * Tc + t) * HD, *vt = vf + ((size_t)g * Tc + t) * HD;
            uint8_t *ko = kq + (size_t)g * hsb + (size_t)t * rb, *vo = vq + (size_t)g * hsb + (size_t)t * rb;
            if (bits == 32) {
                memcpy(ko, kt, HD * sizeof(float));
                memcpy(vo, vt, HD * sizeof(float));
            } else {
                quant_encode_row(ko, kt, HD, group, bits);
                quant_encode_row(vo, vt, HD, group, bits);
            }
        }
    for (int g = 0; g < NKV; g++)
        for (int s = 0; s < Tc; s++) {
            const uint8_t *ko = kq + (size_t)g * hsb + (size_t)order[s] * rb, *vo = vq + (size_t)g * hsb + (size_t)order[s] * rb;
            float *kd = kr + ((size_t)g * Tc + s) * HD, *vd = vr + ((size_t)g * Tc + s) * HD;
            if (bits == 32) {
                memcpy(kd, ko, HD * sizeof(float));
                memcpy(vd, vo, HD * sizeof(float));
            } else {
                quant_decode_row(kd, ko, HD, group, bits);
                quant_decode_row(vd, vo, HD, group, bits);
            }
            for (int i = 0; i < half; i++) { // kv/cache.c's rope_row at position s
                float a = kd[2 * i], b = kd[2 * i + 1], c = cs[(size_t)s * half + i], n = sn[(size_t)s * half + i];
                kd[2 * i] = a * c - b * n;
                kd[2 * i + 1] = a * n + b * c;
            }
        }
    float *out = common_calloc(nq, sizeof(float)), *att = common_calloc((size_t)NH * Tc, sizeof(float));
    attention_decode_cpu(out, att, q, kr, vr, Tc, (size_t)Tc * HD, NH, NKV, HD);
    float *perm = common_calloc((size_t)NH * Tc, sizeof(float)); // the reference's att in physical row order
    for (int h = 0; h < NH; h++)
        for (int s = 0; s < Tc; s++) perm[(size_t)h * Tc + order[s]] = att[(size_t)h * Tc + s];
    uint8_t *dk = device_malloc(nbytes), *dv = device_malloc(nbytes);
    device_upload(dk, kq, nbytes);
    device_upload(dv, vq, nbytes);
    float *dcs = bk_dev_from_host(cs, (size_t)(sink + window) * half), *dsn = bk_dev_from_host(sn, (size_t)(sink + window) * half);
    float *dq = bk_dev_from_host(q, nq), *dout = bk_dev_poisoned(nq), *datt = bk_dev_poisoned((size_t)NH * Tc);
    attention_decode_kv_cuda(dout, datt, dq, dk, dv, bits, group, Tc, hsb, rb, NH, NKV, HD, dcs, dsn, sink, window, newest);
    char what[160];
    snprintf(what, sizeof(what), "decode rope int%d sink %d window %d seen %d out", bits, sink, window, seen);
    bk_expect_close(dout, out, nq, TOL, what);
    snprintf(what, sizeof(what), "decode rope int%d sink %d window %d seen %d att", bits, sink, window, seen);
    bk_expect_close(datt, perm, (size_t)NH * Tc, TOL, what);
    float *o1 = bk_download(dout, nq), *dout2 = bk_dev_poisoned(nq); // without att: the same out bits
    attention_decode_kv_cuda(dout2, NULL, dq, dk, dv, bits, group, Tc, hsb, rb, NH, NKV, HD, dcs, dsn, sink, window, newest);
    float *o2 = bk_download(dout2, nq);
    bk_dev_free(dout2);
    cr_assert(memcmp(o1, o2, nq * sizeof(float)) == 0, "decode rope int%d sink %d window %d seen %d: out differs without att",
              bits, sink, window, seen);
    common_free(o1);
    common_free(o2);
    device_free(dk);
    device_free(dv);
    bk_dev_free(dcs);
    bk_dev_free(dsn);
    bk_dev_free(dq);
    bk_dev_free(dout);
    bk_dev_free(datt);
    float *host[] = {kf, vf, q, kr, vr, cs, sn, out, att, perm};
    for (size_t i = 0; i < sizeof(host) / sizeof(host[0]); i++) common_free(host[i]);
    common_free(kq);
    common_free(vq);
    common_free(order);
}

// before the sinks fill, before the ring wraps, just after, and many wraps later; fp32 and int4; MHA and GQA
static void run_decode_rope_ring(void) {
    static const int seens[] = {3, 10, 21, 22, 1000};
    uint64_t seed = 7000;
    for (size_t i = 0; i < 5; i++, seed += 10) {
        decode_rope_case(4, 4, 32, 4, 17, seens[i], 32, seed);
        decode_rope_case(8, 2, 64, 4, 17, seens[i], 4, seed + 5);
    }
    decode_rope_case(6, 1, 16, 1, 300, 2000, 32, seed); // a ring of several chunks
}

// kv_encode_rows_cuda writes what quant_encode_row writes, byte for byte (8, 4 and 2 bits, groups that leave a
// partial code byte, constant groups, values at fp16's edges, strided rows); bits 32 copies rows.
static void encode_rows_case(int n, int HD, int group, int bits, size_t src_stride, uint64_t seed) {
    size_t rb = bits == 32 ? (size_t)HD * sizeof(float) : quant_row_bytes(HD, group, bits);
    cr_assert(rb > 0);
    size_t dst_stride = rb + (bits == 32 ? 8 : 5), nbytes = (size_t)n * dst_stride; // unaligned quantized rows
    float *src = bk_host_random((size_t)n * src_stride, seed, 3.0f);
    for (int i = 0; i < n; i++) {
        float *r = src + (size_t)i * src_stride;
        if (i % 5 == 1)
            for (int d = 0; d < group && d < HD; d++) r[d] = 0.75f; // a constant group
        if (i % 5 == 2) { // fp16's edges
            r[0] = 60000.0f;
            r[1] = -65504.0f;
        }
        if (i % 5 == 3)
            for (int d = 0; d < HD; d++) r[d] = 1e-6f * r[d] + 100.0f; // a large offset, a tiny spread
        if (i % 5 == 4) r[HD - 1] = 1e-7f; // subnormal territory
    }
    uint8_t *ref = common_calloc(nbytes, 1), *got = common_calloc(nbytes, 1);
    memset(ref, 0xA5, nbytes);
    for (int i = 0; i < n; i++) {
        uint8_t *o = ref + (size_t)i * dst_stride;
        if (bits == 32) memcpy(o, src + (size_t)i * src_stride, (size_t)HD * sizeof(float));
        else quant_encode_row(o, src + (size_t)i * src_stride, HD, group, bits);
    }
    uint8_t *d = device_malloc(nbytes);
    device_memset(d, 0xA5, nbytes);
    float *dsrc = bk_dev_from_host(src, (size_t)n * src_stride);
    kv_encode_rows_cuda(d, dst_stride, dsrc, src_stride, n, HD, group, bits);
    device_download(got, d, nbytes);
    for (size_t i = 0; i < nbytes; i++)
        cr_assert(got[i] == ref[i], "encode int%d HD=%d group=%d: byte %zu (row %zu) is 0x%02x, quant_encode_row 0x%02x",
                  bits, HD, group, i, i / dst_stride, got[i], ref[i]);
    device_free(d);
    bk_dev_free(dsrc);
    common_free(src);
    common_free(ref);
    common_free(got);
}

static void run_encode_rows(void) {
    static const int bitss[] = {8, 4, 2};
    uint64_t seed = 8000;
    for (int b = 0; b < 3; b++, seed += 10) {
        encode_rows_case(40, 64, 32, bitss[b], 64, seed);
        encode_rows_case(13, 26, 13, bitss[b], 30, seed + 1); // odd groups: a partial last code byte
        encode_rows_case(7, 16, 16, bitss[b], 16, seed + 2);
        encode_rows_case(5, 96, 3, bitss[b], 100, seed + 3);
    }
    encode_rows_case(9, 24, 24, 32, 31, seed);
}

static void run_decode_q8(void) { decode_q_shapes(8); }
static void run_decode_q4(void) { decode_q_shapes(4); }
static void run_decode_q2(void) { decode_q_shapes(2); }
#endif

Test(backend_attention, forward_mha) { BACKEND_REQUIRE_CUDA(); BK_RUN(run_forward_mha); }
Test(backend_attention, forward_gqa) { BACKEND_REQUIRE_CUDA(); BK_RUN(run_forward_gqa); }
Test(backend_attention, forward_mqa) { BACKEND_REQUIRE_CUDA(); BK_RUN(run_forward_mqa); }
Test(backend_attention, backward_mha) { BACKEND_REQUIRE_CUDA(); BK_RUN(run_backward_mha); }
Test(backend_attention, backward_gqa) { BACKEND_REQUIRE_CUDA(); BK_RUN(run_backward_gqa); }
Test(backend_attention, backward_mqa) { BACKEND_REQUIRE_CUDA(); BK_RUN(run_backward_mqa); }
Test(backend_attention, flash_forward_mha) { BACKEND_REQUIRE_CUDA(); BK_RUN(run_flash_forward_mha); }
Test(backend_attention, flash_forward_gqa) { BACKEND_REQUIRE_CUDA(); BK_RUN(run_flash_forward_gqa); }
Test(backend_attention, flash_forward_mqa) { BACKEND_REQUIRE_CUDA(); BK_RUN(run_flash_forward_mqa); }
Test(backend_attention, flash_backward_mha) { BACKEND_REQUIRE_CUDA(); BK_RUN(run_flash_backward_mha); }
Test(backend_attention, flash_backward_gqa) { BACKEND_REQUIRE_CUDA(); BK_RUN(run_flash_backward_gqa); }
Test(backend_attention, flash_backward_mqa) { BACKEND_REQUIRE_CUDA(); BK_RUN(run_flash_backward_mqa); }
Test(backend_attention, flash_odd_head_dims) { BACKEND_REQUIRE_CUDA(); BK_RUN(run_flash_odd_head_dims); }
Test(backend_attention, decode_mha) { BACKEND_REQUIRE_CUDA(); BK_RUN(run_decode_mha); }
Test(backend_attention, decode_gqa) { BACKEND_REQUIRE_CUDA(); BK_RUN(run_decode_gqa); }
Test(backend_attention, decode_mqa) { BACKEND_REQUIRE_CUDA(); BK_RUN(run_decode_mqa); }
Test(backend_attention, decode_long_and_odd) { BACKEND_REQUIRE_CUDA(); BK_RUN(run_decode_long_and_odd); }
Test(backend_attention, decode_int8) { BACKEND_REQUIRE_CUDA(); BK_RUN(run_decode_q8); }
Test(backend_attention, decode_int4) { BACKEND_REQUIRE_CUDA(); BK_RUN(run_decode_q4); }
Test(backend_attention, decode_int2) { BACKEND_REQUIRE_CUDA(); BK_RUN(run_decode_q2); }
Test(backend_attention, decode_kv_groups) { BACKEND_REQUIRE_CUDA(); BK_RUN(run_decode_groups); }
Test(backend_attention, decode_fits_says_which_groups_run) { BACKEND_REQUIRE_CUDA(); BK_RUN(run_decode_fits); }
Test(backend_attention, decode_rope_ring) { BACKEND_REQUIRE_CUDA(); BK_RUN(run_decode_rope_ring); }
Test(backend_attention, encode_rows_byte_exact) { BACKEND_REQUIRE_CUDA(); BK_RUN(run_encode_rows); }
