#include "minicache.h"

#include <math.h>

int minicache_merge(float *e, float *na, float *nb, const float *a, const float *b, int n, float t, float max_angle) {
    double aa = 0.0, bb = 0.0, ab = 0.0;
    for (int i = 0; i < n; i++) aa += (double)a[i] * a[i], bb += (double)b[i] * b[i], ab += (double)a[i] * b[i];
    double la = sqrt(aa), lb = sqrt(bb);
    if (la == 0.0 || lb == 0.0) return 0; // no direction to share
    double cosv = ab / (la * lb);
    cosv = cosv > 1.0 ? 1.0 : cosv < -1.0 ? -1.0 : cosv;
    double theta = acos(cosv);
    if (theta > max_angle) return 0;
    // SLERP of the unit directions; at tiny angles it is the linear interpolation
    double wa = 1.0 - t, wb = t;
    if (theta > 1e-4) wa = sin((1.0 - t) * theta) / sin(theta), wb = sin(t * theta) / sin(theta);
    double norm = 0.0;
    for (int i = 0; i < n; i++) {
        double v = wa * a[i] / la + wb * b[i] / lb;
        e[i] = (float)v;
        norm += v * v;
    }
    float inv = (float)(1.0 / sqrt(norm)); // renormalise the float result
    for (int i = 0; i < n; i++) e[i] *= inv;
    *na = (float)la;
    *nb = (float)lb;
    return 1;
}
