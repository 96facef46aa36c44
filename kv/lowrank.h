// Low-rank KV (in the spirit of Palu / SVD-based KV compression): each key or value head vector x (HD) is
// held as c = U^T x (R) on an orthonormal basis U (HD, R), the top-R eigenvectors of the uncentred
// second-moment matrix X^T X of calibration samples (equivalently, X's top right singular vectors), and
// rebuilt as U c for attention. At R = HD the basis is complete and the rebuild exact up to rounding.
#ifndef KVLAB_LOWRANK_H
#define KVLAB_LOWRANK_H

// U (HD, R) row-major from samples X (n, HD). -1 with a message if LAPACK fails or n < 1.
int lowrank_basis_fit(float *U, const float *X, int n, int HD, int R, char *err);
void lowrank_project(float *c, const float *U, const float *x, int HD, int R); // c (R) = U^T x
void lowrank_rebuild(float *x, const float *U, const float *c, int HD, int R); // x (HD) = U c

#endif
