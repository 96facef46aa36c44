// When a parallel region pays for itself. Forking and joining the OpenMP team costs about 1-2 us on a quiet
// machine and much more when a partner thread is descheduled (issue 13: decode collapsed under load), while an
// element-wise pass moves about one element per nanosecond per core: below PAR_MIN_ELEMS elements (or
// multiply-adds, for products) a pass runs on the calling thread. Use as
//   #pragma omp parallel for if (par_worth(n)) schedule(static)
#ifndef KVLAB_PAR_H
#define KVLAB_PAR_H

#include <stddef.h>

#define PAR_MIN_ELEMS ((size_t)1 << 15)

static inline int par_worth(size_t work) { return work >= PAR_MIN_ELEMS; }

#endif
