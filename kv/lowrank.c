#include "lowrank.h"

#include <cblas.h>
#include <stddef.h>
#include <stdlib.h>

#include "../common/common.h"

// LAPACK's symmetric eigensolver, as OpenBLAS exports it (Fortran calling convention, hidden string lengths).
void ssyev_(const char *jobz, const char *uplo, const int *n, float *a, const int *lda, float *w, float *work,
            const int *lwork, int *info, size_t jobz_len, size_t uplo_len);

int lowrank_basis_fit(float *U, const float *X, int n, int HD, int R, char *err) {
    if (n < 1 || R < 1 || R > HD) {
        err_set(err, "low-rank fit needs samples and 1 <= rank <= %d (got %d samples, rank %d)", HD, n, R);
        return -1;
    }
    float *A = common_calloc((size_t)HD * HD, sizeof(float)), *w = common_calloc(HD, sizeof(float));
    // A (HD, HD) = X^T X, upper triangle (column-major for LAPACK: the same memory, read as its transpose)
    cblas_ssyrk(CblasRowMajor, CblasLower, CblasTrans, HD, n, 1.0f, X, HD, 0.0f, A, HD);
    int lwork = -1, info = 0;
    float query;
    ssyev_("V", "U", &HD, A, &HD, w, &query, &lwork, &info, 1, 1);
    lwork = (int)query;
    float *work = common_calloc(lwork > 1 ? lwork : 1, sizeof(float));
    ssyev_("V", "U", &HD, A, &HD, w, work, &lwork, &info, 1, 1);
    common_free(work);
    if (info != 0) {
        err_set(err, "low-rank fit: LAPACK ssyev failed (info %d)", info);
        common_free(A);
        common_free(w);
        return -1;
    }
    // eigenvalues ascending; eigenvector j is column j in column-major, i.e. A[j * HD + i]. Take the last R.
    for (int j = 0; j < R; j++) {
        const float *vec = A + (size_t)(HD - 1 - j) * HD;
        for (int i = 0; i < HD; i++) U[(size_t)i * R + j] = vec[i];
    }
    common_free(A);
    common_free(w);
    return 0;
}

void lowrank_project(float *c, const float *U, const float *x, int HD, int R) {
    cblas_sgemv(CblasRowMajor, CblasTrans, HD, R, 1.0f, U, R, x, 1, 0.0f, c, 1);
}

void lowrank_rebuild(float *x, const float *U, const float *c, int HD, int R) {
    cblas_sgemv(CblasRowMajor, CblasNoTrans, HD, R, 1.0f, U, R, c, 1, 0.0f, x, 1);
}
