/* server/series.h — downsampling of a metric series for charts.
 *
 *   size_t n_out = series_downsample(points, n, 300, out);   // out has room for n points
 *
 * A series longer than max_points is cut into max_points/3 buckets of consecutive points; each
 * bucket keeps its minimum, its maximum and its last point (in step order, without repeats), so
 * spikes survive and the line ends where the data ends. Not for: aggregation across series.
 */
#ifndef LATHE_SERVER_SERIES_H
#define LATHE_SERVER_SERIES_H

#include <stddef.h>
#include <stdint.h>

typedef struct series_point {
  int64_t step;
  double value;
  int64_t time_ms; /* unix ms when it was recorded */
} series_point;

/* in: n points sorted by step. out: room for n points (may not alias in). Returns the number of
 * points written: n when n <= max_points, else at most max_points (at least 3 when n >= 3,
 * whatever max_points is, since one bucket needs three). */
size_t series_downsample(const series_point *in, size_t n, size_t max_points, series_point *out);

#endif
