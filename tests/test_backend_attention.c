// CPU-vs-CUDA tests of the attention ops: the naive materialised pair, flash attention (against the same CPU
// reference: out, a float64 log-sum-exp, and the gradients), fp32 decode and decode from a group-quantized cache
// (against attention_decode_cpu on the rows kv/quant.h decodes). Odd shapes: B=2, T 37 and 130, NH 6 over
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
