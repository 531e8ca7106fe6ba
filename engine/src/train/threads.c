/* One knob for CPU parallelism: kernels run OpenMP loops and call OpenBLAS outside them, so both
 * pools must agree, or a 2-thread job would still run sgemm on every core. */
#include "lathe/train.h"

#include <cblas.h>
#include <omp.h>

void lt_train_set_threads(int n) {
  if (n <= 0) return;
  omp_set_num_threads(n);
  openblas_set_num_threads(n);
}
