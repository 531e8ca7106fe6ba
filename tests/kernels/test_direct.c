/* The direct convolution kernels (kernels_direct.c) against a brute-force convolution in double
 * precision and against kernels_conv.c's im2col/sgemm lowering (LT_DIRECT_OFF), on shapes that
 * stress the blocking: batch 1 and batches larger than the thread count, 1×1 and odd spatial
 * sizes (pixel counts that are not multiples of 16: scalar tails for pointwise, partial runs on
 * the padded-pitch grid or a partial last vector written in place on shifted planes), channel counts 1..40 that are not multiples of 4, 8 or 16 (partial
 * blocks of output channels), asymmetric padding, non-square and dilated kernels, strides 2
 * and 3 (phase planes). Every
 * instruction-set variant the CPU has runs (lt_cpu_direct_set_mode: AVX-512, AVX2 without
 * AVX-512, portable), in forced mode with Winograd off so that every stride-1 convolution
 * takes the direct path; automatic mode is checked for which convolutions it takes.
 *
 * Checked per shape: the inference forward (the direct kernels' entry point), accumulate = 1
 * adding to the output, bias added once, outputs not read when accumulate = 0 (NaN-filled),
 * bitwise equality at 1 and 2 threads, agreement with the im2col path, and the training
 * forward (which keeps the lowering) still right.
 * Tolerance: |got - ref| <= 2e-5 * max(1, rms(ref)) with ref the float64 convolution (inputs
 * N(0,1), weights N(0, 0.3²)).
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

static const double TOL = 2e-5;
static double worst_seen;

typedef struct shape {
  int n, c, h, w, s, kh, kw, pt, pl, pb, pr, dil, stride; /* stride 0 means 1 */
} shape;

static const shape shapes[] = {
    /* pointwise */
    {1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1},       /* 1×1 image, one channel */
    {1, 3, 7, 7, 5, 1, 1, 0, 0, 0, 0, 1, 1},       /* 49 pixels: 48 vector + scalar tail */
    {3, 13, 5, 5, 29, 1, 1, 0, 0, 0, 0, 1, 1},     /* 25 pixels, odd channel counts */
    {2, 40, 9, 11, 7, 1, 1, 0, 0, 0, 0, 1, 1},     /* 99 pixels */
    {1, 16, 32, 32, 36, 1, 1, 0, 0, 0, 0, 1, 1},   /* Tucker u_out-like, one image */
    {5, 36, 16, 17, 12, 1, 1, 0, 0, 0, 0, 1, 1},   /* 272 pixels: two blocks, one partial */
    {2, 7, 3, 200, 38, 1, 1, 0, 0, 0, 0, 1, 1},    /* 600 pixels, 38 = 6*6 + 2 output channels */
    {3, 5, 64, 16, 9, 1, 1, 0, 0, 0, 0, 1, 1},     /* 1024 pixels: rows copied apart first */
    /* k×k stride 1 */
    {1, 4, 8, 8, 4, 3, 3, 1, 1, 1, 1, 1, 1},       /* Tucker core at rank 4 */
    {3, 4, 32, 32, 12, 3, 3, 1, 1, 1, 1, 1, 1},    /* rank 4 -> 12 */
    {2, 1, 5, 9, 3, 3, 3, 1, 1, 1, 1, 1, 1},       /* one input channel, groups 1 */
    {1, 6, 1, 1, 5, 3, 3, 1, 1, 1, 1, 1, 1},       /* 1×1 image, padded */
    {2, 5, 7, 3, 7, 3, 3, 0, 0, 0, 0, 1, 1},       /* no padding */
    {1, 3, 6, 9, 11, 3, 3, 2, 0, 1, 2, 1, 1},      /* asymmetric padding */
    {4, 2, 9, 6, 40, 3, 5, 1, 2, 1, 2, 1, 1},      /* 3×5 kernel */
    {1, 7, 10, 12, 3, 3, 3, 2, 2, 2, 2, 2, 1},     /* dilation 2 */
    {2, 17, 13, 13, 6, 1, 1, 1, 0, 0, 1, 1, 1},    /* 1×1 with padding */
    {2, 21, 11, 7, 19, 3, 3, 1, 1, 1, 1, 1, 1},    /* wide: forced modes only */
    /* strided (phase planes) */
    {3, 4, 8, 8, 4, 3, 3, 1, 1, 1, 1, 1, 2},    /* Tucker core, stride 2 */
    {1, 5, 9, 11, 13, 3, 3, 1, 1, 1, 1, 1, 2},  /* odd sizes, stride 2 */
    {2, 3, 10, 7, 6, 3, 5, 2, 0, 1, 2, 1, 3},   /* stride 3, 3×5, asymmetric padding */
    {2, 6, 12, 12, 5, 3, 3, 2, 2, 2, 2, 2, 2},  /* dilation 2, stride 2 */
    {1, 9, 7, 7, 2, 1, 1, 0, 0, 0, 0, 1, 2},    /* 1×1 stride 2 (a shortcut) */
    {2, 16, 16, 16, 17, 3, 3, 1, 1, 1, 1, 1, 2}, /* wide, stride 2: forced only */
    /* stride 2, the plane copies: 16- and 8-float even/odd splits and scalar tails, odd and
     * even left padding (which phase the first pixel lands in), several images per thread (the
     * zeroed border reused) */
    {5, 3, 15, 15, 7, 3, 3, 0, 0, 0, 0, 1, 2},    /* no padding, odd size */
    {3, 8, 32, 32, 8, 3, 3, 1, 1, 1, 1, 1, 2},    /* 32-float splits */
    {4, 11, 7, 7, 20, 3, 3, 2, 2, 2, 2, 1, 2},    /* padding 2 */
    {2, 24, 16, 16, 24, 3, 3, 1, 1, 1, 1, 1, 2},  /* 16-float splits */
    {3, 5, 33, 31, 9, 3, 3, 2, 1, 0, 2, 1, 2},    /* 31 wide: 16 + 8 + scalars, asymmetric */
    {1, 2, 32, 35, 3, 3, 3, 1, 0, 1, 2, 1, 2},    /* even left padding, one image */
    {6, 40, 8, 8, 40, 3, 3, 1, 1, 1, 1, 1, 2},    /* 40 -> 40 */
    /* stride 1 on shifted planes (outputs at most 8 wide or 16+ output channels): written in
     * place with a partial last vector, dilation, asymmetric padding, one image across threads */
    {2, 5, 9, 8, 18, 3, 3, 2, 2, 2, 2, 2, 1},     /* dilation 2 */
    {2, 3, 6, 9, 17, 3, 3, 2, 0, 1, 2, 1, 1},     /* asymmetric padding, 9 wide */
    {1, 40, 16, 16, 24, 3, 3, 1, 1, 1, 1, 1, 1},  /* one image, two threads' runs */
    {1, 32, 15, 15, 20, 3, 3, 1, 1, 1, 1, 1, 1},  /* one image, 225 outputs */
    /* shifted planes at strides 2 and 3 (64+ output channels) */
    {2, 6, 15, 15, 64, 3, 3, 1, 1, 1, 1, 1, 2},   /* odd size */
    {3, 5, 16, 16, 70, 3, 3, 0, 1, 2, 0, 1, 2},   /* asymmetric padding */
    {2, 3, 10, 7, 64, 3, 5, 2, 0, 1, 2, 1, 3},    /* stride 3, 3×5 */
};

static lt_conv_geom geom(const shape *s) {
  lt_conv_geom g = {.n = s->n, .c = s->c, .h = s->h, .w = s->w, .s = s->s, .kh = s->kh,
                    .kw = s->kw, .stride_h = s->stride ? s->stride : 1,
                    .stride_w = s->stride ? s->stride : 1, .pad_t = s->pt, .pad_l = s->pl,
                    .pad_b = s->pb, .pad_r = s->pr, .dil_h = s->dil, .dil_w = s->dil, .groups = 1};
  CHECK(lt_conv_geom_finish(&g, 0) == 0);
  return g;
}

/* lt_cpu_conv2d_fwd_infer_epi against lt_cpu_conv2d_fwd_infer's output y, then the epilogue
 * computed here: ReLU, residual, both (bit for bit: the same sum, then the same operations). */
static void check_epilogues(const lt_conv_geom *g, const float *x, const float *w, const float *b,
                            const float *y, void *ws, const char *desc) {
  const size_t ny = (size_t)g->n * g->s * g->oh * g->ow;
  float *res = randn(ny, 1.0f), *y1 = malloc(ny * sizeof(float) + 4);
  for (int kind = 1; kind < 4; kind++) {
    const lt_conv_epi epi = {.res = kind & 2 ? res : NULL, .relu = kind & 1};
    for (size_t i = 0; i < ny; i++) y1[i] = NAN;
    lt_cpu_conv2d_fwd_infer_epi(g, x, w, b, &epi, y1, ws);
    size_t bad = 0;
    for (size_t i = 0; i < ny; i++) {
      const float v = epi.res ? y[i] + res[i] : y[i], want = epi.relu ? (v > 0.0f ? v : 0.0f) : v;
      bad += !(y1[i] == want);
    }
    CHECK_MSG(bad == 0, "%s: epilogue (relu %d, residual %d) differs at %zu of %zu", desc,
              epi.relu, epi.res != NULL, bad, ny);
  }
  free(res), free(y1);
}

static void check_shape(const shape *sh, const char *mode) {
  const lt_conv_geom g = geom(sh);
  const size_t nx = (size_t)g.n * g.c * g.h * g.w, ny = (size_t)g.n * g.s * g.oh * g.ow;
  const size_t nw = (size_t)g.s * g.c * g.kh * g.kw;
  float *x = randn(nx, 1.0f), *w = randn(nw, 0.3f), *b = randn((size_t)g.s, 1.0f);
  float *y = malloc(ny * sizeof(float) + 4);
  float *y0 = malloc(ny * sizeof(float) + 4);
  double *ry = malloc(ny * sizeof(double) + 8);
  conv_ref(&g, x, w, b, NULL, ry, NULL, NULL);
  /* one input channel is depthwise to kernels_conv.c (no workspace): give the direct entry point
   * its slice anyway */
  const size_t wconv = lt_cpu_conv2d_workspace(&g), slice = lt_cpu_direct_slice_bytes(&g);
  const size_t wsb = wconv > slice ? wconv : slice;
  void *ws = wsb ? malloc(wsb) : NULL;
  CHECK_MSG(lt_cpu_direct_active(&g), "%s: direct path not active", mode);
  CHECK(g.c == 1 || wconv >= slice);
  char desc[96];
  snprintf(desc, sizeof desc, "%s n%d c%d %dx%d s%d k%dx%d pad %d,%d,%d,%d dil %d", mode, sh->n,
           sh->c, sh->h, sh->w, sh->s, sh->kh, sh->kw, sh->pt, sh->pl, sh->pb, sh->pr, sh->dil);

  /* the inference forward (direct), outputs NaN-filled (accumulate = 0 must not read them) */
  for (size_t i = 0; i < ny; i++) y[i] = NAN;
  lt_cpu_conv2d_fwd_infer(&g, x, w, b, y, ws);
  const double ey = err(y, ry, ny, NULL);
  worst_seen = fmax(worst_seen, ey);
  CHECK_MSG(ey <= TOL, "%s: forward error/rms %.2g", desc, ey);
  /* the epilogues: bit for bit max(forward, 0), forward + res, max(forward + res, 0) */
  check_epilogues(&g, x, w, b, y, ws, desc);
  /* in a workspace of exactly one slice (one thread; ASan sees any read or write past it), the
   * same bits (one input channel: y came from kernels_conv.c's depthwise loops) */
  if (slice && g.c > 1) {
    void *ws1 = malloc(slice);
    for (size_t i = 0; i < ny; i++) y0[i] = NAN;
    CHECK(lt_cpu_direct_fwd(&g, x, w, b, y0, 0, ws1, slice, 0) == 0);
    CHECK_MSG(!memcmp(y, y0, ny * sizeof(float)), "%s: one-slice forward differs", desc);
    free(ws1);
  }
  /* the direct entry point with accumulate = 1 adds conv + b once */
  memcpy(y0, y, ny * sizeof(float));
  CHECK(lt_cpu_direct_fwd(&g, x, w, b, y, 1, ws, wsb, 0) == 0);
  const double ea = err(y, ry, ny, y0);
  CHECK_MSG(ea <= 2 * TOL, "%s: accumulate forward error/rms %.2g", desc, ea);
  memcpy(y, y0, ny * sizeof(float));

  /* bitwise equal at 1 and 2 threads */
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  lt_cpu_conv2d_fwd_infer(&g, x, w, b, y0, ws);
  omp_set_num_threads(threads);
  CHECK_MSG(!memcmp(y, y0, ny * sizeof(float)), "%s: forward differs at 1 and 2 threads", desc);
  /* training forwards do not take the direct path: same inputs through the lowering, whose
   * workspace the direct path fits in */
  for (size_t i = 0; i < ny; i++) y0[i] = NAN;
  lt_cpu_conv2d_fwd(&g, x, w, b, y0, ws);
  CHECK_MSG(err(y0, ry, ny, NULL) <= TOL, "%s: training forward error/rms %.2g", desc,
            err(y0, ry, ny, NULL));

  /* the im2col/sgemm lowering agrees */
  const int m = lt_cpu_direct_mode();
  lt_cpu_direct_set_mode(LT_DIRECT_OFF);
  CHECK(!lt_cpu_direct_active(&g));
  lt_cpu_conv2d_fwd_infer(&g, x, w, b, y0, ws);
  lt_cpu_direct_set_mode(m);
  double e0 = 0;
  for (size_t i = 0; i < ny; i++)
    e0 = fmax(e0, fabs((double)y[i] - y0[i]));
  double r = 0;
  for (size_t i = 0; i < ny; i++) r += ry[i] * ry[i];
  r = sqrt(r / ny);
  CHECK_MSG(e0 <= 2 * TOL * fmax(1, r), "%s: direct and im2col forward differ by %.3g", desc, e0);
  free(x), free(w), free(b), free(y), free(y0), free(ry);
  free(ws);
}

/* Every output-channel count 1..40 (each a different split into register blocks), against
 * images whose output grids are 3..69 vectors (different pixel blockings and remainders):
 * 7×7, 8×8, 15×15, 32×32 at strides 1 and 2, padding 0..2, two images. */
static void check_blockings(const char *mode) {
  static const int sizes[4] = {7, 8, 15, 32};
  for (int s = 1; s <= 40; s++) {
    const int hw = sizes[s % 4], stride = 1 + (s / 4) % 2, pad = s % 3;
    const shape sh = {2, 1 + (s * 7) % 13, hw, hw, s, 3, 3, pad, pad, pad, pad, 1, stride};
    check_shape(&sh, mode);
  }
}

static void run_mode(int mode, const char *want) {
  const int wm = lt_cpu_winograd_mode();
  lt_cpu_winograd_set_mode(LT_WINOGRAD_OFF);
  lt_cpu_direct_set_mode(mode);
  const char *name = lt_cpu_direct_impl_name();
  if (strcmp(name, want) != 0) {
    printf("skip %s: this CPU runs %s for it\n", want, name);
  } else {
    worst_seen = 0;
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
      check_shape(&shapes[i], name);
    check_blockings(name);
    printf("%s: worst error / max(1, rms) %.3g (tolerance %g)\n", name, worst_seen, TOL);
  }
  lt_cpu_direct_set_mode(LT_DIRECT_AUTO);
  lt_cpu_winograd_set_mode(wm);
}

TEST_CASE(direct_avx512) { run_mode(LT_DIRECT_AVX512, "avx512"); }
TEST_CASE(direct_avx2) { run_mode(LT_DIRECT_AVX2, "avx2"); }
TEST_CASE(direct_generic) { run_mode(LT_DIRECT_GENERIC, "generic"); }

/* Which convolutions automatic mode takes, and that off takes none. */
TEST_CASE(direct_eligibility) {
  lt_cpu_winograd_set_mode(LT_WINOGRAD_AUTO);
  lt_cpu_direct_set_mode(LT_DIRECT_AUTO);
  shape pw = {2, 16, 8, 8, 36, 1, 1, 0, 0, 0, 0, 1, 1}, core = {2, 4, 8, 8, 12, 3, 3, 1, 1, 1, 1, 1, 1};
  shape wide = {2, 16, 8, 8, 16, 3, 3, 1, 1, 1, 1, 1, 1};
  lt_conv_geom g = geom(&pw), c = geom(&core), d = geom(&wide);
  CHECK(lt_cpu_direct_active(&g));
  CHECK(lt_cpu_direct_active(&c));
  CHECK(lt_cpu_direct_active(&d)); /* 128 output pixels: Winograd's per-call costs not repaid */
  const int avx512 = !strcmp(lt_cpu_direct_impl_name(), "avx512");
  d.n = 64;
  CHECK(lt_cpu_direct_active(&d) == avx512); /* 8×8: AVX-512 direct up to c*s = 1600 */
  lt_conv_geom h = d;
  h.c = h.s = 40;
  CHECK(lt_cpu_direct_active(&h) == avx512);
  h.c = h.s = 44;
  CHECK(!lt_cpu_direct_active(&h));
  h = d, h.h = h.w = 16;
  lt_conv_geom_finish(&h, 0);
  CHECK(!lt_cpu_direct_active(&h)); /* Winograd's: 16 channels need no padding */
  h.c = h.s = 12;
  CHECK(lt_cpu_direct_active(&h)); /* 12 -> 12: Winograd would pad to 16 */
  h.c = h.s = 28;
  CHECK(!lt_cpu_direct_active(&h));
  h.c = h.s = 36;
  CHECK(lt_cpu_direct_active(&h) == !avx512); /* 16*c*s = 9*cp*sp, but c*s > 1024 */
  h = d, h.stride_h = h.stride_w = 2;
  lt_conv_geom_finish(&h, 0);
  CHECK(lt_cpu_direct_active(&h)); /* strided 3×3 */
  h.c = 128;
  CHECK(lt_cpu_direct_active(&h) == avx512); /* 128 channels of 64 pixels */
  h.h = h.w = 32;
  lt_conv_geom_finish(&h, 0);
  CHECK(!lt_cpu_direct_active(&h)); /* wide strided, large images: im2col */
  h = g, h.stride_h = h.stride_w = 2;
  lt_conv_geom_finish(&h, 0);
  CHECK(!lt_cpu_direct_active(&h)); /* 1×1 strided: im2col */
  h = g, h.groups = 4, h.s = 32;
  CHECK(!lt_cpu_direct_active(&h)); /* grouped */
  lt_cpu_direct_set_mode(LT_DIRECT_OFF);
  CHECK(!lt_cpu_direct_active(&g) && !lt_cpu_direct_active(&c));
  CHECK(lt_cpu_direct_fwd(&g, NULL, NULL, NULL, NULL, 0, NULL, 0, 0) == -1);
  lt_cpu_direct_set_mode(LT_DIRECT_AUTO);
  /* a workspace too small for one slice is refused, not overrun */
  CHECK(lt_cpu_direct_fwd(&c, NULL, NULL, NULL, NULL, 0, NULL, 0, 0) == -1);
}

/* A model-like chain, end to end through the automatic mode (Winograd on): 1×1 16->4, 3×3 4->4,
 * 1×1 4->16 at batch 3 against the double reference of each stage fed the float stage before. */
TEST_CASE(direct_auto_chain) {
  lt_cpu_winograd_set_mode(LT_WINOGRAD_AUTO);
  lt_cpu_direct_set_mode(LT_DIRECT_AUTO);
  const shape st[3] = {{3, 16, 9, 9, 4, 1, 1, 0, 0, 0, 0, 1, 1},
                       {3, 4, 9, 9, 4, 3, 3, 1, 1, 1, 1, 1, 1},
                       {3, 4, 9, 9, 16, 1, 1, 0, 0, 0, 0, 1, 1}};
  for (int i = 0; i < 3; i++) check_shape(&st[i], "auto");
}

/* lt_cpu_conv2d_fwd_infer_epi on the paths other than direct: Winograd F(4×4) and F(2×2),
 * im2col, per-image sgemm for pointwise, depthwise; bit for bit as computed after the forward. */
TEST_CASE(conv_infer_epilogue_other_paths) {
  const shape st[] = {{2, 16, 32, 32, 16, 3, 3, 1, 1, 1, 1, 1, 1}, /* Winograd F(4×4) */
                      {9, 64, 8, 8, 64, 3, 3, 1, 1, 1, 1, 1, 1},   /* Winograd F(2×2) */
                      {2, 9, 11, 13, 10, 3, 3, 1, 1, 1, 1, 1, 2},  /* im2col (direct off) */
                      {2, 12, 7, 9, 20, 1, 1, 0, 0, 0, 0, 1, 1}};  /* sgemm (direct off) */
  for (int k = 0; k < 5; k++) {
    lt_conv_geom g;
    if (k < 4) {
      g = geom(&st[k]);
    } else { /* depthwise, 2 outputs per channel */
      g = (lt_conv_geom){.n = 2, .c = 6, .h = 9, .w = 9, .s = 12, .kh = 3, .kw = 3, .stride_h = 1,
                         .stride_w = 1, .pad_t = 1, .pad_l = 1, .pad_b = 1, .pad_r = 1,
                         .dil_h = 1, .dil_w = 1, .groups = 6};
      REQUIRE(lt_conv_geom_finish(&g, 0) == 0);
    }
    lt_cpu_winograd_set_mode(LT_WINOGRAD_AUTO);
    lt_cpu_direct_set_mode(k < 2 ? LT_DIRECT_AUTO : LT_DIRECT_OFF);
    if (k < 2) CHECK(lt_cpu_winograd_active(&g) && !lt_cpu_direct_active(&g));
    const size_t nx = (size_t)g.n * g.c * g.h * g.w, ny = (size_t)g.n * g.s * g.oh * g.ow;
    float *x = randn(nx, 1.0f), *w = randn((size_t)g.s * (g.c / g.groups) * 9, 0.3f);
    float *b = randn((size_t)g.s, 1.0f), *y = malloc(ny * sizeof(float)),
          *y0 = malloc(ny * sizeof(float));
    const size_t wsb = lt_cpu_conv2d_workspace(&g);
    void *ws = wsb ? malloc(wsb) : NULL;
    lt_cpu_conv2d_fwd_infer(&g, x, w, b, y, ws);
    size_t neg = 0;
    for (size_t i = 0; i < ny; i++) neg += y[i] < 0.0f;
    CHECK(neg > 0);
    char desc[32];
    snprintf(desc, sizeof desc, "path %d", k);
    check_epilogues(&g, x, w, b, y, ws, desc);
    free(x), free(w), free(b), free(y), free(y0), free(ws);
  }
  lt_cpu_direct_set_mode(LT_DIRECT_AUTO);
}

int main(void) {
  rng = lt_rng_make(9, 0);
  RUN(direct_avx512);
  RUN(direct_avx2);
  RUN(direct_generic);
  RUN(direct_eligibility);
  RUN(direct_auto_chain);
  RUN(conv_infer_epilogue_other_paths);
  return test_summary();
}
