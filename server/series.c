/* server/series.c — min/max/last bucket downsampling (see series.h). */
#include "series.h"

#include <string.h>

size_t series_downsample(const series_point *in, size_t n, size_t max_points, series_point *out) {
  if (n <= max_points) {
    if (n) memcpy(out, in, n * sizeof *in);
    return n;
  }
  size_t buckets = max_points / 3;
  if (buckets == 0) buckets = 1;
  size_t n_out = 0;
  for (size_t b = 0; b < buckets; b++) {
    /* Bucket b holds points [lo, hi): equal counts, remainder spread evenly. */
    size_t lo = b * n / buckets, hi = (b + 1) * n / buckets;
    if (lo >= hi) continue;
    size_t imin = lo, imax = lo, ilast = hi - 1;
    for (size_t i = lo + 1; i < hi; i++) {
      if (in[i].value < in[imin].value) imin = i;
      if (in[i].value > in[imax].value) imax = i;
    }
    /* Emit the (up to) three kept indices in step order, each once. */
    size_t keep[3] = {imin, imax, ilast};
    for (int i = 0; i < 3; i++)
      for (int j = i + 1; j < 3; j++)
        if (keep[j] < keep[i]) {
          size_t t = keep[i];
          keep[i] = keep[j];
          keep[j] = t;
        }
    for (int i = 0; i < 3; i++)
      if (i == 0 || keep[i] != keep[i - 1]) out[n_out++] = in[keep[i]];
  }
  return n_out;
}
