// FlashAttention's forward and backward on the CPU and the IO counters (see flash_cpu.h); the counted naive attention is
// attention_forward_counted_cpu in attention.c, the training op itself.
//
// "Loading a tile" is literal here: Q_i, K_j and V_j are copied from the strided (T, HD) head views into small
// contiguous per-thread buffers that stand for the on-chip SRAM, and the counters are bumped at those copies
// and at the final stores. The tile products are CBLAS sgemm calls on those buffers; the online softmax's
// max, exp and rescale run through common/vmath.h.
#include "flash_cpu.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <string.h>

#include "../common/common.h"
#include "../common/vmath.h"

#define F (sizeof(float))

void flash_tiles_resolve(const FlashTiles *cfg, int HD, int *Br, int *Bc) {
    CHECK(HD >= 1);
    FlashTiles c = cfg ? *cfg : (FlashTiles){FLASH_DEFAULT_M, 0, 0};
    if (c.M <= 0) c.M = FLASH_DEFAULT_M;
    CHECK(c.Br >= 0 && c.Bc >= 0);
    // Algorithm 1, line 1: Bc = ceil(M / 4d) so that Q_i, K_j, V_j and O_i (each at most Bc x d) fill M.
    int bc = (int)(((long)c.M + 4L * HD - 1) / (4L * HD));
    int br = bc < HD ? bc : HD;
    *Bc = c.Bc ? c.Bc : bc;
    *Br = c.Br ? c.Br : br;
}

uint64_t attn_io_read_bytes(const AttnIO *io) {
    return io->q_load + io->k_load + io->v_load + io->o_load + io->stat_load + io->s_load + io->p_load;
}

uint64_t attn_io_write_bytes(const AttnIO *io) { return io->o_store + io->stat_store + io->s_store + io->p_store; }

uint64_t attn_io_total_bytes(const AttnIO *io) { return attn_io_read_bytes(io) + attn_io_write_bytes(io); }

void attn_io_add(AttnIO *dst, const AttnIO *src) {
    dst->q_load += src->q_load;
    dst->k_load += src->k_load;
    dst->v_load += src->v_load;
    dst->o_load += src->o_load;
    dst->o_store += src->o_store;
    dst->stat_load += src->stat_load;
    dst->stat_store += src->stat_store;
    dst->s_store += src->s_store;
    dst->s_load += src->s_load;
    dst->p_store += src->p_store;
    dst->p_load += src->p_load;
    dst->intermediate_bytes += src->intermediate_bytes;
}

// --- flash -------------------------------------------------------------------------------------------------

// One thread's on-chip stand-in: every buffer is sized by the tiles, never by T.
typedef struct {
    int Br, Bc, HD;
    float *q;   // (Br, HD)  Q_i, pre-multiplied by the softmax scale
    float *k;   // (Bc, HD)  K_j
    float *v;   // (Bc, HD)  V_j
    float *s;   // (Br, Bc)  S_ij, then P~_ij in place
    float *acc; // (Br, HD)  O_i, unnormalised
    float *m;   // (Br)      running max
    float *l;   // (Br)      running sum of exp(s - m)
    float *block;
    size_t bytes;
} FlashWork;

static void flash_work_init(FlashWork *w, int Br, int Bc, int HD) {
    size_t nq = (size_t)Br * HD, nk = (size_t)Bc * HD, ns = (size_t)Br * Bc;
    size_t n = nq + 2 * nk + ns + nq + 2 * (size_t)Br;
    w->Br = Br, w->Bc = Bc, w->HD = HD;
    w->block = common_calloc(n, F);
    w->bytes = n * F;
    w->q = w->block;
    w->k = w->q + nq;
    w->v = w->k + nk;
    w->s = w->v + nk;
    w->acc = w->s + ns;
    w->m = w->acc + nq;
    w->l = w->m + Br;
}

// Copies rows [r0, r0 + n) of a strided (T, HD) head view into a contiguous tile, times `mul`.
static void load_rows(float *dst, const float *src, int ld, int r0, int n, int HD, float mul) {
    for (int r = 0; r < n; r++) {
        const float *row = src + (size_t)(r0 + r) * ld;
        float *d = dst + (size_t)r * HD;
        for (int c = 0; c < HD; c++) d[c] = row[c] * mul;
    }
}

// Online softmax over one tile: S (nr, nc) at rows r0.., keys c0.. becomes P~ = exp(S - m_new) (0 where the
// causal mask hides key > query), and m, l and the accumulator rows are rescaled by exp(m_old - m_new) so that
// acc / l stays the softmax-weighted sum of every tile seen so far.
static void flash_softmax_tile(FlashWork *w, int r0, int nr, int c0, int nc) {
    for (int r = 0; r < nr; r++) {
        float *srow = w->s + (size_t)r * w->Bc;
        int nvalid = r0 + r - c0 + 1; // keys c0 .. query row are visible
        if (nvalid > nc) nvalid = nc;
        if (nvalid <= 0) { // a diagonal tile's row that sees none of this tile's keys
            memset(srow, 0, (size_t)nc * F);
            continue;
        }
        float mx = vmath_max(srow, nvalid);
        float m_new = w->m[r] > mx ? w->m[r] : mx;
        float alpha = expf(w->m[r] - m_new); // m starts at -inf, so the first tile gives alpha = 0
        float sum = vmath_exp_shift_sum(srow, nvalid, m_new);
        for (int s = nvalid; s < nc; s++) srow[s] = 0.0f;
        w->l[r] = alpha * w->l[r] + sum;
        w->m[r] = m_new;
        if (alpha != 1.0f) vmath_scale(w->acc + (size_t)r * w->HD, w->HD, alpha);
    }
}

// One query tile of one head: rows [r0, r0 + nr). Counts into io when it is non-NULL.
static void flash_query_tile(FlashWork *w, float *oh, float *lseh, const float *qh, const float *kh,
                             const float *vh, int ldq, int ldkv, int T, int r0, int nr, float scale, AttnIO *io) {
    int HD = w->HD, Bc = w->Bc;
    load_rows(w->q, qh, ldq, r0, nr, HD, scale); // folding the scale in here saves a pass over every S tile
    if (io) io->q_load += (uint64_t)nr * HD * F;
    // O_i, l_i, m_i start on chip (0, 0, -inf) and stay there across the key loop: nothing to load for them.
    memset(w->acc, 0, (size_t)nr * HD * F);
    memset(w->l, 0, (size_t)nr * F);
    for (int r = 0; r < nr; r++) w->m[r] = -INFINITY;
    int r1 = r0 + nr;
    for (int c0 = 0; c0 < r1; c0 += Bc) { // key tiles wholly above the diagonal (c0 >= r1) are skipped
        int nc = T - c0 < Bc ? T - c0 : Bc;
        load_rows(w->k, kh, ldkv, c0, nc, HD, 1.0f);
        load_rows(w->v, vh, ldkv, c0, nc, HD, 1.0f);
        if (io) {
            io->k_load += (uint64_t)nc * HD * F;
            io->v_load += (uint64_t)nc * HD * F;
        }
        // S_ij (nr, nc) = (scale Q_i) K_j^T
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nr, nc, HD, 1.0f, w->q, HD, w->k, HD, 0.0f, w->s, Bc);
        flash_softmax_tile(w, r0, nr, c0, nc);
        // O_i += P~_ij V_j (the rescale by alpha already happened row by row)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nr, HD, nc, 1.0f, w->s, Bc, w->v, HD, 1.0f, w->acc,
                    HD);
    }
    for (int r = 0; r < nr; r++) { // every row saw key 0, so l > 0 and m is finite
        float inv = 1.0f / w->l[r];
        const float *arow = w->acc + (size_t)r * HD;
        float *orow = oh + (size_t)(r0 + r) * ldq;
        for (int c = 0; c < HD; c++) orow[c] = arow[c] * inv;
        lseh[r0 + r] = w->m[r] + logf(w->l[r]);
    }
    if (io) {
        io->o_store += (uint64_t)nr * HD * F;
        io->stat_store += (uint64_t)nr * F;
    }
}

void attention_flash_forward_cpu(float *out, float *lse, const float *q, const float *k, const float *v, int B,
                                 int T, int NH, int NKV, int HD, const FlashTiles *tiles, AttnIO *io) {
    CHECK(B >= 1 && T >= 1 && NH >= 1 && NKV >= 1 && NH % NKV == 0 && HD >= 1);
    int Br, Bc;
    flash_tiles_resolve(tiles, HD, &Br, &Bc);
    int C = NH * HD, KVC = NKV * HD, rep = NH / NKV;
    float scale = 1.0f / sqrtf((float)HD);
    // No more threads than (batch, head) pairs: each thread pays for a workspace, so an idle one would only
    // add to the intermediate memory.
    int nthreads = omp_get_max_threads();
    if ((long)nthreads > (long)B * NH) nthreads = B * NH;
#pragma omp parallel num_threads(nthreads)
    {
        FlashWork w;
        flash_work_init(&w, Br, Bc, HD);
        AttnIO local = {0}, *lio = io ? &local : NULL;
#pragma omp for collapse(2) schedule(static)
        for (int b = 0; b < B; b++) {
            for (int h = 0; h < NH; h++) {
                const float *qh = q + (size_t)b * T * C + h * HD;           // (T, HD) stride C
                const float *kh = k + (size_t)b * T * KVC + (h / rep) * HD; // (T, HD) stride KVC
                const float *vh = v + (size_t)b * T * KVC + (h / rep) * HD;
                float *oh = out + (size_t)b * T * C + h * HD;
                float *lseh = lse + ((size_t)b * NH + h) * T;
                for (int r0 = 0; r0 < T; r0 += Br) {
                    int nr = T - r0 < Br ? T - r0 : Br;
                    flash_query_tile(&w, oh, lseh, qh, kh, vh, C, KVC, T, r0, nr, scale, lio);
                }
            }
        }
        if (io) {
            local.intermediate_bytes += w.bytes;
#pragma omp critical(attn_io_merge)
            attn_io_add(io, &local);
        }
        common_free(w.block);
    }
}

// --- flash backward ----------------------------------------------------------------------------------------

// One thread's tiles for the backward pass (FlashAttention-2, Algorithm 2): for a key tile K_j, V_j and its
// gradients dK_j, dV_j held on chip, every query tile i at or below the diagonal is visited once per query head
// of the group.
typedef struct {
    int Br, Bc, HD;
    float *k, *v, *dk, *dv; // (Bc, HD)
    float *q, *dO, *dq;     // (Br, HD); q pre-multiplied by the scale
    float *p, *dp;          // (Br, Bc)
    float *lse, *D;         // (Br)
    float *block;
} FlashBackWork;

static void flash_back_init(FlashBackWork *w, int Br, int Bc, int HD) {
    size_t nk = (size_t)Bc * HD, nq = (size_t)Br * HD, ns = (size_t)Br * Bc;
    w->Br = Br, w->Bc = Bc, w->HD = HD;
    w->block = common_calloc(4 * nk + 3 * nq + 2 * ns + 2 * (size_t)Br, F);
    float *x = w->block;
    w->k = x, x += nk;
    w->v = x, x += nk;
    w->dk = x, x += nk;
    w->dv = x, x += nk;
    w->q = x, x += nq;
    w->dO = x, x += nq;
    w->dq = x, x += nq;
    w->p = x, x += ns;
    w->dp = x, x += ns;
    w->lse = x, x += Br;
    w->D = x;
}

// Adds a contiguous (n, HD) tile times mul into rows [r0, r0 + n) of a strided (T, HD) head view.
static void add_rows(float *dst, int ld, int r0, int n, int HD, const float *src, float mul) {
    for (int r = 0; r < n; r++) {
        float *row = dst + (size_t)(r0 + r) * ld;
        const float *s = src + (size_t)r * HD;
        for (int c = 0; c < HD; c++) row[c] += s[c] * mul;
    }
}

void attention_flash_backward_cpu(float *dq, float *dk, float *dv, const float *dout, const float *out,
                                  const float *lse, const float *q, const float *k, const float *v, int B, int T,
                                  int NH, int NKV, int HD, const FlashTiles *tiles) {
    CHECK(B >= 1 && T >= 1 && NH >= 1 && NKV >= 1 && NH % NKV == 0 && HD >= 1);
    int Br, Bc;
    flash_tiles_resolve(tiles, HD, &Br, &Bc);
    int C = NH * HD, KVC = NKV * HD, rep = NH / NKV;
    float scale = 1.0f / sqrtf((float)HD);
    // D (B, NH, T) = rowsum(dO o O): the softmax backward's correction term, one pass before the tiles
    float *D = common_calloc((size_t)B * NH * T, F);
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int h = 0; h < NH; h++) {
                const float *o = out + ((size_t)b * T + t) * C + h * HD, *d = dout + ((size_t)b * T + t) * C + h * HD;
                float s = 0.0f;
                for (int c = 0; c < HD; c++) s += o[c] * d[c];
                D[((size_t)b * NH + h) * T + t] = s;
            }
    // a thread owns (batch, kv head): the dK, dV of its key tiles and the dQ rows of the group's query heads,
    // so no two threads write the same element and the sums run in a fixed order
    int nthreads = omp_get_max_threads();
    if ((long)nthreads > (long)B * NKV) nthreads = B * NKV;
#pragma omp parallel num_threads(nthreads)
    {
        FlashBackWork w;
        flash_back_init(&w, Br, Bc, HD);
#pragma omp for collapse(2) schedule(static)
        for (int b = 0; b < B; b++) {
            for (int g = 0; g < NKV; g++) {
                const float *kh = k + (size_t)b * T * KVC + g * HD, *vh = v + (size_t)b * T * KVC + g * HD;
                for (int c0 = 0; c0 < T; c0 += Bc) {
                    int nc = T - c0 < Bc ? T - c0 : Bc;
                    load_rows(w.k, kh, KVC, c0, nc, HD, 1.0f);
                    load_rows(w.v, vh, KVC, c0, nc, HD, 1.0f);
                    memset(w.dk, 0, (size_t)nc * HD * F);
                    memset(w.dv, 0, (size_t)nc * HD * F);
                    for (int h = g * rep; h < (g + 1) * rep; h++) {
                        const float *qh = q + (size_t)b * T * C + h * HD, *doh = dout + (size_t)b * T * C + h * HD;
                        const float *lseh = lse + ((size_t)b * NH + h) * T, *Dh = D + ((size_t)b * NH + h) * T;
                        float *dqh = dq + (size_t)b * T * C + h * HD;
                        for (int r0 = (c0 / Br) * Br; r0 < T; r0 += Br) { // query tiles that see this key tile
                            int nr = T - r0 < Br ? T - r0 : Br;
                            load_rows(w.q, qh, C, r0, nr, HD, scale);
                            load_rows(w.dO, doh, C, r0, nr, HD, 1.0f);
                            // P = exp(scale Q K^T - lse), 0 where the key is after the query
                            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nr, nc, HD, 1.0f, w.q, HD, w.k, HD, 0.0f,
                                        w.p, Bc);
                            for (int r = 0; r < nr; r++) {
                                float *prow = w.p + (size_t)r * Bc;
                                int nvalid = r0 + r - c0 + 1;
                                if (nvalid > nc) nvalid = nc;
                                if (nvalid < 0) nvalid = 0;
                                float l = lseh[r0 + r];
                                for (int s = 0; s < nvalid; s++) prow[s] = expf(prow[s] - l);
                                for (int s = nvalid; s < nc; s++) prow[s] = 0.0f;
                            }
                            // dV_j += P^T dO_i
                            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nc, HD, nr, 1.0f, w.p, Bc, w.dO, HD, 1.0f,
                                        w.dv, HD);
                            // dP = dO_i V_j^T; dS = P o (dP - D_i), in w.dp
                            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nr, nc, HD, 1.0f, w.dO, HD, w.v, HD, 0.0f,
                                        w.dp, Bc);
                            for (int r = 0; r < nr; r++) {
                                float *dprow = w.dp + (size_t)r * Bc;
                                const float *prow = w.p + (size_t)r * Bc;
                                float d = Dh[r0 + r];
                                for (int s = 0; s < nc; s++) dprow[s] = prow[s] * (dprow[s] - d);
                            }
                            // dQ_i += scale dS K_j; dK_j += dS^T (scale Q_i)
                            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nr, HD, nc, 1.0f, w.dp, Bc, w.k, HD, 0.0f,
                                        w.dq, HD);
                            add_rows(dqh, C, r0, nr, HD, w.dq, scale);
                            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nc, HD, nr, 1.0f, w.dp, Bc, w.q, HD, 1.0f,
                                        w.dk, HD);
                        }
                    }
                    add_rows(dk + (size_t)b * T * KVC + g * HD, KVC, c0, nc, HD, w.dk, 1.0f);
                    add_rows(dv + (size_t)b * T * KVC + g * HD, KVC, c0, nc, HD, w.dv, 1.0f);
                }
            }
        }
        common_free(w.block);
    }
    common_free(D);
}

// --- closed forms ------------------------------------------------------------------------------------------

uint64_t attention_naive_io_formula(int B, int T, int NH, int HD) {
    uint64_t t = (uint64_t)T, d = (uint64_t)HD;
    return (uint64_t)B * NH * (4 * t * d + 4 * t * t) * F;
}

uint64_t attention_flash_io_formula(int B, int T, int NH, int HD, int Br) {
    uint64_t t = (uint64_t)T, d = (uint64_t)HD, tr = (t + (uint64_t)Br - 1) / (uint64_t)Br;
    return (uint64_t)B * NH * (2 * t * d + 2 * t * d * tr + t) * F;
}
