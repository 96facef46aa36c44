// MiniCache (Liu et al. 2024): adjacent layers' KV states in the middle-to-deep part of a network point in
// similar directions, so a token's two states can share one direction (SLERP of the two) with each layer
// keeping its own norm; pairs that disagree too much are kept unmerged.
#ifndef KVLAB_MINICACHE_H
#define KVLAB_MINICACHE_H

// If the angle between a and b (n values each) is at most max_angle radians, writes the SLERP at t of their
// unit directions to e, their norms to *na and *nb, and returns 1; otherwise returns 0 and writes nothing.
int minicache_merge(float *e, float *na, float *nb, const float *a, const float *b, int n, float t, float max_angle);

#endif
