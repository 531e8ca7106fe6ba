/* The Winograd fast path of the CPU convolutions (kernels_winograd.c) against a
 * brute-force direct convolution in double precision and against the im2col path
 * (LT_WINOGRAD_OFF), for forward, backward data and backward filter, on shapes that stress the
 * tiling: batch 1, 1×1, 2×2 and odd spatial sizes (tiles crossing the bottom/right border),
 * channel counts that are not multiples of 8 or 16, padding 0, 1, 2 and asymmetric, and batches
 * larger than one chunk. Every instruction-set variant the CPU has runs (AVX-512, AVX2 without
 * AVX-512, the portable build-target code), selected with lt_cpu_winograd_set_mode, each with
 * forward and backward data forced to F(2×2, 3×3) and to F(4×4, 3×3) (lt_cpu_winograd_set_tile;
 * backward filter is F(2×2) in both).
 *
 * Tolerance: |got - ref| <= tol * max(1, rms(ref)) elementwise, with ref the float64 direct
 * convolution; tol = 2e-5 for F(2×2) and 1e-4 (the PyTorch reference tolerance of ref_check.py)
 * for F(4×4). Inputs are N(0,1), weights N(0, 0.3²). Measured worst: F(2×2) 2.7e-6 (the float32
 * im2col path: about 1e-6), F(4×4) 2.7e-5 (transform entries up to 8 and 1/24).
 *
 * Also: accumulate = 1 adds to the output (y, dx, dw), bias is added once, forward and backward
 * data give the same bits at 1 and 2 threads, and backward filter gives the same bits on a
 * second call.
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cpu/kernels.h"
#include "conv_ref.h"
#include "lathe/core.h"
#include "test.h"

typedef struct shape {
  int n, c, h, w, s, pt, pl, pb, pr;
} shape;

static const shape shapes[] = {
    {1, 2, 1, 1, 1, 1, 1, 1, 1},     /* 1×1 image (one input channel would be depthwise) */
    {1, 3, 2, 2, 5, 1, 1, 1, 1},     /* 2×2 */
    {2, 5, 1, 7, 3, 1, 1, 1, 1},     /* one row */
    {1, 7, 5, 3, 9, 0, 0, 0, 0},     /* padding 0: 3×1 output */
    {3, 17, 7, 9, 13, 1, 1, 1, 1},   /* odd sizes, channels past 16 */
    {2, 16, 8, 8, 16, 1, 1, 1, 1},   /* ResNet-like, exact tiles */
    {2, 9, 6, 5, 33, 2, 0, 1, 2},    /* asymmetric padding incl. 2 */
    {1, 33, 11, 10, 20, 2, 2, 2, 2}, /* padding 2 */
    {2, 4, 3, 3, 4, 0, 1, 2, 0},     /* more asymmetry */
    {9, 24, 13, 13, 40, 1, 1, 1, 1}, /* several chunks per team */
    {2, 20, 18, 35, 17, 1, 1, 1, 1}, /* whole and partial 16×16 reorder blocks */
    {1, 16, 32, 32, 16, 1, 1, 1, 1}, /* ResNet-20 stage 1, one image */
    {2, 64, 8, 8, 64, 1, 1, 1, 1},   /* ResNet-20 stage 3 */
    {1, 5, 6, 6, 7, 0, 0, 0, 0},     /* F(4×4): exactly one tile */
    {2, 3, 5, 9, 4, 1, 1, 0, 2},     /* F(4×4): partial tiles on both borders */
    {1, 4, 5, 6, 9, 1, 0, 3, 4},     /* bottom/right padding past the kernel's reach */
};

static lt_conv_geom geom(const shape *s) {
  lt_conv_geom g = {.n = s->n, .c = s->c, .h = s->h, .w = s->w, .s = s->s, .kh = 3, .kw = 3,
                    .stride_h = 1, .stride_w = 1, .pad_t = s->pt, .pad_l = s->pl, .pad_b = s->pb,
                    .pad_r = s->pr, .dil_h = 1, .dil_w = 1, .groups = 1};
  lt_conv_geom_finish(&g, 0);
  return g;
}

static double TOL = 2e-5;  /* per tile size, set by run_mode */
static double worst_seen; /* printed per mode */

/* One shape under the current mode: all three passes against the direct reference, accumulate,
 * reproducibility, and the im2col path. */
static void check_shape(const shape *sh, const char *mode) {
  lt_conv_geom g = geom(sh);
  const size_t nx = (size_t)g.n * g.c * g.h * g.w, ny = (size_t)g.n * g.s * g.oh * g.ow;
  const size_t nw = (size_t)g.s * g.c * 9;
  float *x = randn(nx, 1.0f), *w = randn(nw, 0.3f), *b = randn((size_t)g.s, 1.0f);
  float *dy = randn(ny, 1.0f), *y = randn(ny, 1.0f), *dx = randn(nx, 1.0f), *dw = randn(nw, 1.0f);
  float *y0 = malloc(ny * sizeof(float) + 4), *dx0 = malloc(nx * sizeof(float) + 4);
  float *dw0 = malloc(nw * sizeof(float) + 4);
  double *ry = malloc(ny * sizeof(double) + 8), *rdx = malloc(nx * sizeof(double) + 8);
  double *rdw = malloc(nw * sizeof(double) + 8);
  conv_ref(&g, x, w, b, dy, ry, rdx, rdw);
  const size_t wsb = lt_cpu_conv2d_workspace(&g);
  CHECK(lt_cpu_winograd_eligible(&g));
  CHECK(wsb >= lt_cpu_winograd_workspace(&g));
  void *ws = malloc(wsb);

  /* NaN in the outputs: accumulate = 0 must not read them */
  for (size_t i = 0; i < ny; i++) y[i] = NAN;
  for (size_t i = 0; i < nx; i++) dx[i] = NAN;
  for (size_t i = 0; i < nw; i++) dw[i] = NAN;
  lt_cpu_conv2d_fwd(&g, x, w, b, y, ws);
  lt_cpu_conv2d_bwd_data(&g, dy, w, dx, 0, ws);
  lt_cpu_conv2d_bwd_filter(&g, x, dy, dw, NULL, 0, ws);
  const double ey = err(y, ry, ny, NULL), edx = err(dx, rdx, nx, NULL),
               edw = err(dw, rdw, nw, NULL);
  worst_seen = fmax(worst_seen, fmax(ey, fmax(edx, edw)));
  /* the inference forward (F(4×4) for outputs of 16×16 and more unless a tile is forced) */
  for (size_t i = 0; i < ny; i++) y0[i] = NAN;
  lt_cpu_conv2d_fwd_infer(&g, x, w, b, y0, ws);
  const double ei = err(y0, ry, ny, NULL);
  worst_seen = fmax(worst_seen, ei);
  CHECK_MSG(ei <= 1e-4, "%s: inference forward error/rms %.2g (tol 1e-4)", mode, ei);
  CHECK_MSG(ey <= TOL && edx <= TOL && edw <= TOL,
            "%s n%d c%d %dx%d s%d pad %d,%d,%d,%d: error/rms y %.2g dx %.2g dw %.2g (tol %g)",
            mode, sh->n, sh->c, sh->h, sh->w, sh->s, sh->pt, sh->pl, sh->pb, sh->pr, ey, edx, edw,
            TOL);

  /* accumulate = 1 adds: y += conv + b through conv_transpose2d's backward data (the conv2d
   * forward with accumulate), dx and dw through their accumulate flags */
  memcpy(y0, y, ny * sizeof(float));
  memcpy(dx0, dx, nx * sizeof(float));
  memcpy(dw0, dw, nw * sizeof(float));
  lt_cpu_conv2d_bwd_data(&g, dy, w, dx, 1, ws);
  lt_cpu_conv2d_bwd_filter(&g, x, dy, dw, NULL, 1, ws);
  CHECK_MSG(err(dx, rdx, nx, dx0) <= 2 * TOL && err(dw, rdw, nw, dw0) <= 2 * TOL,
            "%s: accumulate=1 does not add (dx %.2g, dw %.2g)", mode, err(dx, rdx, nx, dx0),
            err(dw, rdw, nw, dw0));

  /* reproducibility: forward and backward data bitwise equal at 1 and 2 threads; backward
   * filter bitwise equal on a second call at the same thread count */
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  lt_cpu_conv2d_fwd(&g, x, w, b, y0, ws);
  lt_cpu_conv2d_bwd_data(&g, dy, w, dx0, 0, ws);
  omp_set_num_threads(2);
  lt_cpu_conv2d_fwd(&g, x, w, b, y, ws);
  lt_cpu_conv2d_bwd_data(&g, dy, w, dx, 0, ws);
  CHECK_MSG(!memcmp(y, y0, ny * sizeof(float)) && !memcmp(dx, dx0, nx * sizeof(float)),
            "%s: forward/backward data differ between 1 and 2 threads", mode);
  lt_cpu_conv2d_bwd_filter(&g, x, dy, dw, NULL, 0, ws);
  lt_cpu_conv2d_bwd_filter(&g, x, dy, dw0, NULL, 0, ws);
  CHECK_MSG(!memcmp(dw, dw0, nw * sizeof(float)), "%s: backward filter not reproducible", mode);
  omp_set_num_threads(threads);

  /* the im2col path on the same inputs agrees within the same tolerance */
  const int m = lt_cpu_winograd_mode();
  lt_cpu_winograd_set_mode(LT_WINOGRAD_OFF);
  CHECK(!lt_cpu_winograd_active(&g));
  lt_cpu_conv2d_fwd(&g, x, w, b, y0, ws);
  lt_cpu_conv2d_bwd_data(&g, dy, w, dx0, 0, ws);
  lt_cpu_conv2d_bwd_filter(&g, x, dy, dw0, NULL, 0, ws);
  lt_cpu_winograd_set_mode(m);
  double ry0 = 0, e0 = 0;
  for (size_t i = 0; i < ny; i++) {
    ry0 = fmax(ry0, fabs(ry[i]));
    e0 = fmax(e0, fabs((double)y[i] - y0[i]));
  }
  CHECK_MSG(e0 <= 2 * TOL * fmax(1, rms(ry, ny)), "%s: winograd and im2col forward differ by %.3g",
            mode, e0);
  free(x), free(w), free(b), free(dy), free(y), free(dx), free(dw), free(y0), free(dx0), free(dw0);
  free(ry), free(rdx), free(rdw), free(ws);
}

static void run_mode(int mode, const char *want) {
  lt_cpu_winograd_set_mode(mode);
  const char *name = lt_cpu_winograd_impl_name();
  if (strcmp(name, want) != 0) {
    printf("skip %s: this CPU runs %s for it\n", want, name);
    return;
  }
  for (int m = 2; m <= 4; m += 2) {
    lt_cpu_winograd_set_tile(m);
    TOL = m == 2 ? 2e-5 : 1e-4;
    worst_seen = 0;
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
      check_shape(&shapes[i], name);
    printf("%s F(%dx%d): worst error / max(1, rms) %.3g (tolerance %g)\n", name, m, m, worst_seen,
           TOL);
  }
  lt_cpu_winograd_set_tile(0);
}

TEST_CASE(winograd_avx512) { run_mode(LT_WINOGRAD_AVX512, "avx512"); }
TEST_CASE(winograd_avx2) { run_mode(LT_WINOGRAD_AVX2, "avx2"); }
TEST_CASE(winograd_generic) { run_mode(LT_WINOGRAD_GENERIC, "generic"); }

/* Which convolutions take the fast path. */
TEST_CASE(winograd_eligibility) {
  lt_cpu_winograd_set_mode(LT_WINOGRAD_AUTO);
  shape s = {2, 16, 8, 8, 16, 1, 1, 1, 1};
  lt_conv_geom g = geom(&s);
  CHECK(lt_cpu_winograd_active(&g));
  lt_conv_geom h = g;
  h.stride_h = h.stride_w = 2;
  lt_conv_geom_finish(&h, 0);
  CHECK(!lt_cpu_winograd_eligible(&h));
  h = g, h.groups = 2, h.s = 16;
  CHECK(!lt_cpu_winograd_eligible(&h));
  h = g, h.dil_h = 2;
  lt_conv_geom_finish(&h, 0);
  CHECK(!lt_cpu_winograd_eligible(&h));
  h = g, h.pad_t = 3;
  lt_conv_geom_finish(&h, 0);
  CHECK(!lt_cpu_winograd_eligible(&h));
  h = g, h.kh = h.kw = 5;
  lt_conv_geom_finish(&h, 0);
  CHECK(!lt_cpu_winograd_eligible(&h));
  lt_cpu_winograd_set_mode(LT_WINOGRAD_OFF);
  CHECK(!lt_cpu_winograd_active(&g));
  lt_cpu_winograd_set_mode(LT_WINOGRAD_AUTO);
}

int main(void) {
  rng = lt_rng_make(7, 0);
  RUN(winograd_avx512);
  RUN(winograd_avx2);
  RUN(winograd_generic);
  RUN(winograd_eligibility);
  return test_summary();
}
