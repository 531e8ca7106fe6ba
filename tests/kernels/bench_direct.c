/* One convolution geometry through the inference forward three ways in the same process,
 * interleaved: the automatic dispatch, the direct kernels forced (kernels_direct.c) and the direct
 * kernels off (Winograd where it applies, else im2col/sgemm), with the ratios side by side.
 * Built, not run by ctest: the figures behind lt_cpu_direct_active's thresholds and kx_make's
 * layout choice come from runs like
 *
 *   OMP_WAIT_POLICY=passive OMP_NUM_THREADS=1 build/bin/bench_direct 32 28 8 28 3 1
 *
 * Arguments: N C H S K STRIDE [REPS]: batch, input channels, square image side, output
 * channels, square kernel side (padding K/2 on every side), stride, repetitions (default 200,
 * in 10 groups; the best group's mean is reported). Times are process CPU time per forward,
 * which other processes' load disturbs far less than wall time; run single-threaded for
 * per-core figures.
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "backend/cpu/kernels.h"
#include "lathe/core.h"

static double cpu_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv) {
  if (argc < 7) {
    fprintf(stderr, "usage: bench_direct N C H S K STRIDE [REPS]\n");
    return 2;
  }
  const int n = atoi(argv[1]), c = atoi(argv[2]), h = atoi(argv[3]), s = atoi(argv[4]),
            k = atoi(argv[5]), st = atoi(argv[6]), reps = argc > 7 ? atoi(argv[7]) : 200;
  lt_conv_geom g = {.n = n, .c = c, .h = h, .w = h, .s = s, .kh = k, .kw = k, .stride_h = st,
                    .stride_w = st, .pad_t = k / 2, .pad_l = k / 2, .pad_b = k / 2,
                    .pad_r = k / 2, .dil_h = 1, .dil_w = 1, .groups = 1};
  if (n < 1 || c < 1 || s < 1 || k < 1 || st < 1 || reps < 10 || lt_conv_geom_finish(&g, 0)) {
    fprintf(stderr, "bench_direct: bad geometry or REPS < 10\n");
    return 2;
  }
  const size_t nx = (size_t)n * c * h * h, ny = (size_t)n * s * g.oh * g.ow;
  const size_t nw = (size_t)s * c * k * k, wsb = lt_cpu_conv2d_workspace(&g);
  float *x = malloc(nx * sizeof(float)), *w = malloc(nw * sizeof(float));
  float *b = malloc((size_t)s * sizeof(float)), *y = malloc(ny * sizeof(float));
  void *ws = wsb ? malloc(wsb) : NULL;
  if (!x || !w || !b || !y || (wsb && !ws)) {
    fprintf(stderr, "bench_direct: out of memory\n");
    return 1;
  }
  lt_rng rng = lt_rng_make(1, 0);
  for (size_t i = 0; i < nx; i++) x[i] = lt_rng_normal(&rng);
  for (size_t i = 0; i < nw; i++) w[i] = 0.3f * lt_rng_normal(&rng);
  for (int i = 0; i < s; i++) b[i] = 0.1f;
  static const struct {
    const char *name;
    int mode;
  } conf[3] = {{"auto", LT_DIRECT_AUTO}, {"direct", LT_DIRECT_AVX512}, {"off", LT_DIRECT_OFF}};
  lt_cpu_direct_set_mode(LT_DIRECT_AUTO);
  const int auto_direct = lt_cpu_direct_active(&g);
  double best[3] = {1e30, 1e30, 1e30};
  const int per = reps / 10;
  for (int grp = 0; grp < 10; grp++)
    for (int m = 0; m < 3; m++) {
      lt_cpu_direct_set_mode(conf[m].mode);
      lt_cpu_conv2d_fwd_infer(&g, x, w, b, y, ws); /* warm-up */
      const double t0 = cpu_now();
      for (int r = 0; r < per; r++) lt_cpu_conv2d_fwd_infer(&g, x, w, b, y, ws);
      const double t = (cpu_now() - t0) / per;
      if (t < best[m]) best[m] = t;
    }
  lt_cpu_direct_set_mode(LT_DIRECT_AUTO);
  const double macs = (double)n * s * c * k * k * g.oh * g.ow;
  printf("%d->%d %dx%d %dx%d/%d batch %d (direct kernels: %s; automatic mode takes %s)\n", c, s,
         h, h, k, k, st, n, lt_cpu_direct_impl_name(), auto_direct ? "direct" : "the others");
  for (int m = 0; m < 3; m++)
    printf("  %-7s %9.4f ms  %6.1f GMAC/s  off/this %.2f\n", conf[m].name, best[m] * 1e3,
           macs / best[m] * 1e-9, best[2] / best[m]);
  free(x), free(w), free(b), free(y), free(ws);
  return 0;
}
