/* Runs every CPU kernel, forward and backward, on seeded random data and writes inputs and
 * outputs to a binary file that ref_check.py recomputes with PyTorch.
 *
 *   kernels_ref_dump OUT.bin [SEED]      (SEED defaults to the clock: fresh inputs every run)
 *
 * File: "LTK1", then cases. A case is name (u32 length + bytes), params (u32 count + f64 each),
 * then tensors, each name (u32 length > 0 + bytes), u32 ndim, i64 dims, f32 data; a u32 0 ends
 * the tensors. A u32 0 where a case name would start ends the file. Integer tensors (labels) are
 * written as float.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend/cpu/kernels.h"
#include "lathe/core.h"

static FILE *out;
static lt_rng rng;

static void put_u32(uint32_t v) { fwrite(&v, 4, 1, out); }
static void put_str(const char *s) {
  put_u32((uint32_t)strlen(s));
  fwrite(s, 1, strlen(s), out);
}

/* Starts a case: name, then np double params. */
static void case_begin(const char *name, int np, const double *p) {
  put_str(name);
  put_u32((uint32_t)np);
  if (np > 0) fwrite(p, sizeof(double), (size_t)np, out);
}
static void case_end(void) { put_u32(0); }

/* One tensor: name, ndim dims (variadic int), data. */
static void put_t(const char *name, const float *data, int ndim, ...) {
  int64_t dims[8], count = 1;
  va_list ap;
  va_start(ap, ndim);
  for (int i = 0; i < ndim; i++) {
    dims[i] = va_arg(ap, int);
    count *= dims[i];
  }
  va_end(ap);
  put_str(name);
  put_u32((uint32_t)ndim);
  fwrite(dims, sizeof(int64_t), (size_t)ndim, out);
  fwrite(data, sizeof(float), (size_t)count, out);
}

static float *randn(size_t count, float scale) {
  float *p = malloc(count * sizeof(float) + 4);
  for (size_t i = 0; i < count; i++) p[i] = scale * lt_rng_normal(&rng);
  return p;
}
static float *zeros(size_t count) { return calloc(count + 1, sizeof(float)); }

/* ---- convolutions -------------------------------------------------------------------------- */

static void conv_case(const char *name, int transpose, int n, int c, int h, int w, int s, int kh,
                      int kw, int sh, int sw, int pt, int pl, int pb, int pr, int dh, int dw,
                      int groups, int oph, int opw, int bias) {
  lt_conv_geom g = {.n = n, .c = c, .h = h, .w = w, .s = s, .kh = kh, .kw = kw, .stride_h = sh,
                    .stride_w = sw, .pad_t = pt, .pad_l = pl, .pad_b = pb, .pad_r = pr, .dil_h = dh,
                    .dil_w = dw, .groups = groups, .out_pad_h = oph, .out_pad_w = opw};
  if (lt_conv_geom_finish(&g, transpose)) {
    fprintf(stderr, "bad geometry in case %s\n", name);
    exit(2);
  }
  /* conv2d w (s, c/G, kh, kw); conv_transpose2d w (c, s/G, kh, kw) */
  const int w0 = transpose ? c : s, w1 = transpose ? s / groups : c / groups;
  const size_t nx = (size_t)n * c * h * w, ny = (size_t)n * s * g.oh * g.ow, nw = (size_t)w0 * w1 * kh * kw;
  float *x = randn(nx, 1.0f), *wt = randn(nw, 0.3f), *b = bias ? randn((size_t)s, 1.0f) : NULL;
  float *dy = randn(ny, 1.0f), *y = zeros(ny), *dx = zeros(nx), *dwt = zeros(nw), *db = zeros((size_t)s);
  size_t wsb = transpose ? lt_cpu_conv_transpose2d_workspace(&g) : lt_cpu_conv2d_workspace(&g);
  void *ws = malloc(wsb + 64);
  if (transpose) {
    lt_cpu_conv_transpose2d_fwd(&g, x, wt, b, y, ws);
    lt_cpu_conv_transpose2d_bwd_data(&g, dy, wt, dx, 0, ws);
    lt_cpu_conv_transpose2d_bwd_filter(&g, x, dy, dwt, bias ? db : NULL, 0, ws);
  } else {
    lt_cpu_conv2d_fwd(&g, x, wt, b, y, ws);
    lt_cpu_conv2d_bwd_data(&g, dy, wt, dx, 0, ws);
    lt_cpu_conv2d_bwd_filter(&g, x, dy, dwt, bias ? db : NULL, 0, ws);
  }
  double p[] = {transpose, sh, sw, pt, pl, pb, pr, dh, dw, groups, oph, opw};
  case_begin(name, 12, p);
  put_t("x", x, 4, n, c, h, w);
  put_t("w", wt, 4, w0, w1, kh, kw);
  if (bias) put_t("b", b, 1, s);
  put_t("dy", dy, 4, n, s, g.oh, g.ow);
  put_t("y", y, 4, n, s, g.oh, g.ow);
  put_t("dx", dx, 4, n, c, h, w);
  put_t("dw", dwt, 4, w0, w1, kh, kw);
  if (bias) put_t("db", db, 1, s);
  case_end();
  free(x), free(wt), free(b), free(dy), free(y), free(dx), free(dwt), free(db), free(ws);
}

static void conv_cases(void) {
  /*        name                     T  n  c  h  w  s  kh kw sh sw pt pl pb pr dh dw G oph opw bias */
  conv_case("conv:resnet3x3",        0, 2, 16, 8, 8, 16, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0);
  conv_case("conv:batch1_stride2",   0, 1, 3, 7, 9, 5, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1);
  conv_case("conv:pointwise",        0, 3, 6, 5, 5, 10, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 0, 0, 1);
  conv_case("conv:pointwise_g2",     0, 2, 6, 4, 3, 10, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 2, 0, 0, 0);
  conv_case("conv:1x1_stride2",      0, 2, 5, 7, 7, 3, 1, 1, 2, 2, 0, 0, 0, 0, 1, 1, 1, 0, 0, 1);
  conv_case("conv:dil2_asympad",     0, 2, 5, 9, 8, 7, 3, 3, 1, 1, 1, 2, 0, 1, 2, 2, 1, 0, 0, 1);
  conv_case("conv:groups2",          0, 2, 6, 6, 6, 4, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 2, 0, 0, 1);
  conv_case("conv:depthwise_s2",     0, 2, 8, 9, 9, 8, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 8, 0, 0, 0);
  conv_case("conv:depthwise_mult2",  0, 1, 4, 6, 5, 8, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 4, 0, 0, 1);
  conv_case("conv:single_channel",   0, 2, 1, 7, 6, 5, 3, 3, 2, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1);
  conv_case("conv:1x1_spatial",      0, 3, 7, 1, 1, 9, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1);
  conv_case("conv:rect_kernel",      0, 2, 3, 6, 7, 5, 2, 3, 2, 1, 0, 1, 1, 1, 1, 1, 1, 0, 0, 1);
  /* several chunks: one image's scratch is (144 + 16) * 48*48 floats = 1.47 MB, so the 4 MiB
   * chunk of kernels_conv.c holds two images and the batch of three runs as 2 + 1 */
  conv_case("conv:chunked",          0, 3, 16, 48, 48, 16, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1);
  /* stride 1 with odd output sizes, asymmetric pads, a pad wider than the kernel's reach */
  conv_case("conv:s1_odd_asym",      0, 2, 5, 7, 6, 3, 3, 3, 1, 1, 2, 0, 1, 1, 1, 1, 1, 0, 0, 1);
  conv_case("conv:s1_pad3",          0, 1, 4, 5, 5, 6, 3, 3, 1, 1, 3, 1, 0, 1, 1, 1, 1, 0, 0, 0);
  /* the Winograd path (kernels_winograd.c; automatic mode takes 3×3 stride-1 convolutions with
   * at least 8 input and output channels, F(4×4) for outputs of 16×16 and more): batch 1, 1×1,
   * 2×2 and odd sizes (tiles crossing the border), channels not multiples of 8 or 16, padding 0,
   * 1, 2 and asymmetric. ctest also runs every case with LATHE_CONV_WINOGRAD=generic and =avx512,
   * which send every eligible convolution (the small-channel ones above too) through Winograd. */
  conv_case("conv:wg_batch1_1x1",    0, 1, 9, 1, 1, 10, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1);
  conv_case("conv:wg_2x2",           0, 2, 11, 2, 2, 9, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0);
  conv_case("conv:wg_odd",           0, 3, 17, 7, 9, 13, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1);
  conv_case("conv:wg_pad0",          0, 2, 12, 9, 7, 20, 3, 3, 1, 1, 0, 0, 0, 0, 1, 1, 1, 0, 0, 1);
  conv_case("conv:wg_pad2_asym",     0, 2, 10, 6, 5, 33, 3, 3, 1, 1, 2, 0, 1, 2, 1, 1, 1, 0, 0, 0);
  conv_case("conv:wg_f4_odd",        0, 2, 20, 18, 35, 17, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1);
  conv_case("conv:wg_f4_resnet",     0, 2, 16, 32, 32, 16, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0);
  conv_case("conv:wg_f4_pad0",       0, 1, 24, 21, 19, 40, 3, 3, 1, 1, 0, 0, 0, 0, 1, 1, 1, 0, 0, 1);
  conv_case("convT:wg_stride1",      1, 2, 12, 9, 11, 10, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1);
  conv_case("convT:stride1_3x3",     1, 2, 4, 5, 6, 5, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1);
  conv_case("convT:stride2_outpad",  1, 2, 4, 5, 5, 6, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1);
  conv_case("convT:groups2_dil2",    1, 2, 6, 4, 5, 4, 3, 3, 1, 2, 1, 0, 1, 0, 2, 2, 2, 0, 1, 1);
  conv_case("convT:batch1_asym",     1, 1, 3, 4, 4, 5, 4, 4, 2, 2, 1, 2, 2, 1, 1, 1, 1, 0, 0, 0);
  conv_case("convT:pointwise",       1, 2, 5, 3, 4, 7, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 0, 0, 1);
  conv_case("convT:depthwise",       1, 2, 6, 5, 5, 6, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 6, 1, 1, 0);
}

/* ---- linear, batch norm -------------------------------------------------------------------- */

static void linear_case(const char *name, int n, int k, int m) {
  float *x = randn((size_t)n * k, 1), *w = randn((size_t)m * k, 0.5f), *b = randn((size_t)m, 1);
  float *dy = randn((size_t)n * m, 1), *y = zeros((size_t)n * m), *dx = zeros((size_t)n * k);
  float *dw = zeros((size_t)m * k), *db = zeros((size_t)m);
  lt_cpu_linear_fwd(n, k, m, x, w, b, y);
  lt_cpu_linear_bwd(n, k, m, x, w, dy, dx, dw, db, 0);
  case_begin(name, 0, NULL);
  put_t("x", x, 2, n, k), put_t("w", w, 2, m, k), put_t("b", b, 1, m), put_t("dy", dy, 2, n, m);
  put_t("y", y, 2, n, m), put_t("dx", dx, 2, n, k), put_t("dw", dw, 2, m, k), put_t("db", db, 1, m);
  case_end();
  free(x), free(w), free(b), free(dy), free(y), free(dx), free(dw), free(db);
}

static void bn_case(const char *name, int n, int c, int h, int w) {
  const size_t cnt = (size_t)n * c * h * w;
  const float eps = 1e-5f, mom = 0.1f;
  float *x = randn(cnt, 2.0f), *gamma = randn((size_t)c, 1), *beta = randn((size_t)c, 1);
  for (size_t i = 0; i < cnt; i++) x[i] += 3.0f; /* a non-zero mean exercises the variance pass */
  float *rm = randn((size_t)c, 1), *rv = randn((size_t)c, 1), *dy = randn(cnt, 1);
  for (int i = 0; i < c; i++) rv[i] = rv[i] * rv[i] + 0.5f;
  float *rm0 = malloc(sizeof(float) * c), *rv0 = malloc(sizeof(float) * c);
  memcpy(rm0, rm, sizeof(float) * c), memcpy(rv0, rv, sizeof(float) * c);
  float *y = zeros(cnt), *yi = zeros(cnt), *sm = zeros((size_t)c), *si = zeros((size_t)c);
  float *dx = zeros(cnt), *dg = zeros((size_t)c), *dbt = zeros((size_t)c);
  lt_cpu_bn_fwd_infer(n, c, h * w, x, gamma, beta, rm0, rv0, eps, yi);
  lt_cpu_bn_fwd_train(n, c, h * w, x, gamma, beta, eps, mom, y, sm, si, rm, rv);
  lt_cpu_bn_bwd(n, c, h * w, x, dy, gamma, sm, si, dx, dg, dbt, 0);
  double p[] = {eps, mom};
  case_begin(name, 2, p);
  put_t("x", x, 4, n, c, h, w), put_t("gamma", gamma, 1, c), put_t("beta", beta, 1, c);
  put_t("rm0", rm0, 1, c), put_t("rv0", rv0, 1, c), put_t("dy", dy, 4, n, c, h, w);
  put_t("y", y, 4, n, c, h, w), put_t("y_infer", yi, 4, n, c, h, w);
  put_t("save_mean", sm, 1, c), put_t("save_invstd", si, 1, c);
  put_t("running_mean", rm, 1, c), put_t("running_var", rv, 1, c);
  put_t("dx", dx, 4, n, c, h, w), put_t("dgamma", dg, 1, c), put_t("dbeta", dbt, 1, c);
  case_end();
  free(x), free(gamma), free(beta), free(rm), free(rv), free(rm0), free(rv0), free(dy), free(y);
  free(yi), free(sm), free(si), free(dx), free(dg), free(dbt);
}

/* ---- pointwise ----------------------------------------------------------------------------- */

static void act_cases(void) {
  const size_t n = 1001; /* not a multiple of 8: the mask tail byte is exercised */
  float *x = randn(n, 2.0f), *dy = randn(n, 1.0f), *y = zeros(n), *dx = zeros(n), *dx2 = zeros(n);
  uint8_t *mask = calloc((n + 7) / 8, 1);
  double p[2];

  lt_cpu_relu_fwd(n, x, y);
  lt_cpu_relu_bwd(n, y, dy, dx, 0);
  lt_cpu_relu_mask_pack(n, y, mask);
  lt_cpu_relu_bwd_mask(n, mask, dy, dx2, 0);
  case_begin("act:relu", 0, NULL);
  put_t("x", x, 1, (int)n), put_t("dy", dy, 1, (int)n), put_t("y", y, 1, (int)n);
  put_t("dx", dx, 1, (int)n), put_t("dx_mask", dx2, 1, (int)n);
  case_end();

  p[0] = 0.07;
  lt_cpu_leaky_relu_fwd(n, 0.07f, x, y);
  lt_cpu_leaky_relu_bwd(n, 0.07f, x, dy, dx, 0);
  case_begin("act:leaky_relu", 1, p);
  put_t("x", x, 1, (int)n), put_t("dy", dy, 1, (int)n), put_t("y", y, 1, (int)n), put_t("dx", dx, 1, (int)n);
  case_end();

  lt_cpu_sigmoid_fwd(n, x, y);
  lt_cpu_sigmoid_bwd(n, y, dy, dx, 0);
  case_begin("act:sigmoid", 0, NULL);
  put_t("x", x, 1, (int)n), put_t("dy", dy, 1, (int)n), put_t("y", y, 1, (int)n), put_t("dx", dx, 1, (int)n);
  case_end();

  lt_cpu_tanh_fwd(n, x, y);
  lt_cpu_tanh_bwd(n, y, dy, dx, 0);
  case_begin("act:tanh", 0, NULL);
  put_t("x", x, 1, (int)n), put_t("dy", dy, 1, (int)n), put_t("y", y, 1, (int)n), put_t("dx", dx, 1, (int)n);
  case_end();

  p[0] = -0.5, p[1] = 1.25;
  lt_cpu_clip_fwd(n, -0.5f, 1.25f, x, y);
  lt_cpu_clip_bwd(n, -0.5f, 1.25f, x, dy, dx, 0);
  case_begin("act:clip", 2, p);
  put_t("x", x, 1, (int)n), put_t("dy", dy, 1, (int)n), put_t("y", y, 1, (int)n), put_t("dx", dx, 1, (int)n);
  case_end();

  free(x), free(dy), free(y), free(dx), free(dx2), free(mask);
}

/* ---- pooling and upsampling ---------------------------------------------------------------- */

static void pool_case(const char *name, int avg, int n, int c, int h, int w, int kh, int kw,
                      int sh, int sw, int ph, int pw, int dh, int dw, int ceil_mode, int incl) {
  lt_pool_geom g = {.n = n, .c = c, .h = h, .w = w, .kh = kh, .kw = kw, .stride_h = sh,
                    .stride_w = sw, .pad_t = ph, .pad_l = pw, .pad_b = ph, .pad_r = pw,
                    .dil_h = dh, .dil_w = dw, .ceil_mode = ceil_mode, .count_include_pad = incl};
  if (lt_pool_geom_finish(&g)) {
    fprintf(stderr, "bad geometry in case %s\n", name);
    exit(2);
  }
  const size_t nx = (size_t)n * c * h * w, ny = (size_t)n * c * g.oh * g.ow;
  float *x = randn(nx, 1), *dy = randn(ny, 1), *y = zeros(ny), *dx = zeros(nx);
  uint8_t *am = calloc(ny, 1);
  if (avg) {
    lt_cpu_avgpool_fwd(&g, x, y);
    lt_cpu_avgpool_bwd(&g, dy, dx, 0);
  } else {
    lt_cpu_maxpool_fwd(&g, x, y, am);
    lt_cpu_maxpool_bwd(&g, am, dy, dx, 0);
  }
  double p[] = {avg, kh, kw, sh, sw, ph, pw, dh, dw, ceil_mode, incl};
  case_begin(name, 11, p);
  put_t("x", x, 4, n, c, h, w), put_t("dy", dy, 4, n, c, g.oh, g.ow);
  put_t("y", y, 4, n, c, g.oh, g.ow), put_t("dx", dx, 4, n, c, h, w);
  case_end();
  free(x), free(dy), free(y), free(dx), free(am);
}

static void pool_cases(void) {
  /*        name                        avg n  c  h   w  kh kw sh sw ph pw dh dw ceil incl */
  pool_case("maxpool:2x2",              0, 2, 3, 8,  8, 2, 2, 2, 2, 0, 0, 1, 1, 0, 0);
  pool_case("maxpool:3x3s2p1_ceil",     0, 2, 5, 9,  8, 3, 3, 2, 2, 1, 1, 1, 1, 1, 0);
  pool_case("maxpool:dil2",             0, 1, 3, 10, 9, 3, 2, 1, 2, 1, 1, 2, 2, 0, 0);
  pool_case("maxpool:ceil_odd",         0, 1, 2, 7,  5, 2, 2, 2, 2, 0, 0, 1, 1, 1, 0);
  pool_case("avgpool:3x3s2p1_incl",     1, 2, 3, 9,  8, 3, 3, 2, 2, 1, 1, 1, 1, 0, 1);
  pool_case("avgpool:3x3s2p1_excl",     1, 2, 3, 9,  8, 3, 3, 2, 2, 1, 1, 1, 1, 0, 0);
  pool_case("avgpool:ceil_incl",        1, 1, 2, 7,  6, 3, 2, 2, 2, 1, 1, 1, 1, 1, 1);
  pool_case("avgpool:ceil_excl",        1, 1, 2, 7,  6, 3, 2, 2, 2, 1, 1, 1, 1, 1, 0);

  const int n = 3, c = 5, hw = 7;
  float *x = randn((size_t)n * c * hw, 1), *dy = randn((size_t)n * c, 1);
  float *y = zeros((size_t)n * c), *dx = zeros((size_t)n * c * hw);
  lt_cpu_global_avgpool_fwd(n, c, hw, x, y);
  lt_cpu_global_avgpool_bwd(n, c, hw, dy, dx, 0);
  case_begin("gap:basic", 0, NULL);
  put_t("x", x, 4, n, c, 1, hw), put_t("dy", dy, 4, n, c, 1, 1);
  put_t("y", y, 4, n, c, 1, 1), put_t("dx", dx, 4, n, c, 1, hw);
  case_end();
  free(x), free(dy), free(y), free(dx);
}

static void upsample_case(const char *name, lt_upsample_mode mode, int ac, int n, int c, int h,
                          int w, int oh, int ow) {
  const size_t nx = (size_t)n * c * h * w, ny = (size_t)n * c * oh * ow;
  float *x = randn(nx, 1), *dy = randn(ny, 1), *y = zeros(ny), *dx = zeros(nx);
  lt_cpu_upsample_fwd(mode, ac, n, c, h, w, oh, ow, x, y);
  lt_cpu_upsample_bwd(mode, ac, n, c, h, w, oh, ow, dy, dx, 0);
  double p[] = {mode == LT_UPSAMPLE_BILINEAR, ac};
  case_begin(name, 2, p);
  put_t("x", x, 4, n, c, h, w), put_t("dy", dy, 4, n, c, oh, ow);
  put_t("y", y, 4, n, c, oh, ow), put_t("dx", dx, 4, n, c, h, w);
  case_end();
  free(x), free(dy), free(y), free(dx);
}

static void upsample_cases(void) {
  upsample_case("up:nearest_x2", LT_UPSAMPLE_NEAREST, 0, 2, 3, 4, 5, 8, 10);
  upsample_case("up:nearest_odd", LT_UPSAMPLE_NEAREST, 0, 1, 2, 5, 3, 7, 8);
  upsample_case("up:nearest_down", LT_UPSAMPLE_NEAREST, 0, 1, 2, 7, 9, 3, 4);
  upsample_case("up:bilinear_ac0", LT_UPSAMPLE_BILINEAR, 0, 2, 3, 4, 5, 7, 9);
  upsample_case("up:bilinear_ac1", LT_UPSAMPLE_BILINEAR, 1, 2, 3, 4, 5, 7, 9);
  upsample_case("up:bilinear_ac0_x2", LT_UPSAMPLE_BILINEAR, 0, 1, 2, 3, 3, 6, 6);
  upsample_case("up:bilinear_ac1_1px", LT_UPSAMPLE_BILINEAR, 1, 1, 2, 1, 4, 3, 5);
}

/* ---- broadcasting and data movement -------------------------------------------------------- */

static void binary_case(const char *name, lt_binary_op op, const int64_t *as, const int64_t *bs) {
  int64_t ys[4], na = 1, nb = 1, ny = 1;
  for (int d = 0; d < 4; d++) {
    ys[d] = as[d] > bs[d] ? as[d] : bs[d];
    na *= as[d], nb *= bs[d], ny *= ys[d];
  }
  float *a = randn((size_t)na, 1), *b = randn((size_t)nb, 1), *dy = randn((size_t)ny, 1);
  if (op == LT_BIN_DIV) /* keep |b| away from 0 so the quotient is well conditioned */
    for (int64_t i = 0; i < nb; i++) b[i] = b[i] >= 0 ? b[i] + 0.5f : b[i] - 0.5f;
  float *y = zeros((size_t)ny), *da = zeros((size_t)na), *db = zeros((size_t)nb);
  lt_cpu_binary_fwd(op, 4, as, a, bs, b, ys, y);
  lt_cpu_binary_bwd(op, 4, as, a, bs, b, ys, dy, da, db, 0);
  double p[] = {op};
  case_begin(name, 1, p);
  put_t("a", a, 4, (int)as[0], (int)as[1], (int)as[2], (int)as[3]);
  put_t("b", b, 4, (int)bs[0], (int)bs[1], (int)bs[2], (int)bs[3]);
  put_t("dy", dy, 4, (int)ys[0], (int)ys[1], (int)ys[2], (int)ys[3]);
  put_t("y", y, 4, (int)ys[0], (int)ys[1], (int)ys[2], (int)ys[3]);
  put_t("da", da, 4, (int)as[0], (int)as[1], (int)as[2], (int)as[3]);
  put_t("db", db, 4, (int)bs[0], (int)bs[1], (int)bs[2], (int)bs[3]);
  case_end();
  free(a), free(b), free(dy), free(y), free(da), free(db);
}

static void binary_cases(void) {
  const int64_t s4[4] = {2, 3, 4, 5}, ch[4] = {1, 3, 1, 1}, row[4] = {1, 1, 4, 1}, col[4] = {1, 3, 1, 5};
  const int64_t sc[4] = {1, 1, 1, 1};
  binary_case("bin:add_same", LT_BIN_ADD, s4, s4);
  binary_case("bin:add_channel", LT_BIN_ADD, s4, ch);
  binary_case("bin:sub_both_bcast", LT_BIN_SUB, row, col);
  binary_case("bin:mul_channel", LT_BIN_MUL, s4, ch);
  binary_case("bin:mul_same", LT_BIN_MUL, s4, s4);
  binary_case("bin:div_scalar", LT_BIN_DIV, s4, sc);
  binary_case("bin:div_same", LT_BIN_DIV, s4, s4);
  binary_case("bin:div_lhs_bcast", LT_BIN_DIV, ch, s4);
}

static void movement_cases(void) {
  /* concat of (2,3,4), (2,1,4), (2,2,4) along axis 1; its backward is split */
  const int64_t sizes[3] = {3, 1, 2};
  float *in[3], *dys = randn(2 * 6 * 4, 1), *y = zeros(2 * 6 * 4), *g[3];
  for (int i = 0; i < 3; i++) in[i] = randn((size_t)(2 * sizes[i] * 4), 1), g[i] = zeros((size_t)(2 * sizes[i] * 4));
  lt_cpu_concat(3, (const void *const *)in, sizes, 2, 4, sizeof(float), y);
  lt_cpu_split(3, (void *const *)g, sizes, 2, 4, sizeof(float), dys, 0);
  case_begin("concat:axis1", 0, NULL);
  put_t("a0", in[0], 3, 2, 3, 4), put_t("a1", in[1], 3, 2, 1, 4), put_t("a2", in[2], 3, 2, 2, 4);
  put_t("dy", dys, 3, 2, 6, 4), put_t("y", y, 3, 2, 6, 4);
  put_t("d0", g[0], 3, 2, 3, 4), put_t("d1", g[1], 3, 2, 1, 4), put_t("d2", g[2], 3, 2, 2, 4);
  case_end();
  for (int i = 0; i < 3; i++) free(in[i]), free(g[i]);
  free(dys), free(y);

  /* slice x (4,5,6): [1:4:2, 4:0:-1, ::3] -> (2, 4, 2) */
  const int64_t xs[3] = {4, 5, 6}, st[3] = {1, 4, 0}, sp[3] = {2, -1, 3}, ysl[3] = {2, 4, 2};
  float *x = randn(120, 1), *dy = randn(16, 1), *ys = zeros(16), *dx = zeros(120);
  lt_cpu_slice_fwd(3, xs, st, sp, ysl, sizeof(float), x, ys);
  lt_cpu_slice_bwd(3, xs, st, sp, ysl, dy, dx, 0);
  double sp_p[] = {1, 4, 2, 4, 0, -1, 0, 6, 3};
  case_begin("slice:strided", 9, sp_p);
  put_t("x", x, 3, 4, 5, 6), put_t("dy", dy, 3, 2, 4, 2), put_t("y", ys, 3, 2, 4, 2), put_t("dx", dx, 3, 4, 5, 6);
  case_end();
  free(dy), free(ys), free(dx);

  /* pad x (4,5,6) with begins (0,2,-1), ends (1,-1,3): y (5,6,8) */
  const int64_t pads[6] = {0, 2, -1, 1, -1, 3};
  float *yp = zeros(5 * 6 * 8), *dyp = randn(5 * 6 * 8, 1), *dxp = zeros(120);
  lt_cpu_pad_fwd(3, xs, pads, 0.75f, x, yp);
  lt_cpu_pad_bwd(3, xs, pads, dyp, dxp, 0);
  double pp[] = {0, 2, -1, 1, -1, 3, 0.75};
  case_begin("pad:mixed", 7, pp);
  put_t("x", x, 3, 4, 5, 6), put_t("dy", dyp, 3, 5, 6, 8), put_t("y", yp, 3, 5, 6, 8), put_t("dx", dxp, 3, 4, 5, 6);
  case_end();
  free(yp), free(dyp), free(dxp);

  /* transpose x (4,5,6) by (2,0,1) -> (6,4,5) */
  const int perm[3] = {2, 0, 1};
  float *yt = zeros(120);
  lt_cpu_transpose(3, xs, perm, sizeof(float), x, yt);
  double tp[] = {2, 0, 1};
  case_begin("transpose:201", 3, tp);
  put_t("x", x, 3, 4, 5, 6), put_t("y", yt, 3, 6, 4, 5);
  case_end();
  free(yt), free(x);
}

/* ---- softmax, losses, optimizers ----------------------------------------------------------- */

static void loss_cases(void) {
  const int n = 7, k = 10;
  float *x = randn((size_t)n * k, 2), *dy = randn((size_t)n * k, 1), *y = zeros((size_t)n * k);
  float *dx = zeros((size_t)n * k), *dl = zeros((size_t)n * k), lab[7], loss[2];
  int32_t labels[7];
  lt_cpu_softmax_fwd(n, k, x, y);
  lt_cpu_softmax_bwd(n, k, y, dy, dx, 0);
  case_begin("softmax:rows", 0, NULL);
  put_t("x", x, 2, n, k), put_t("dy", dy, 2, n, k), put_t("y", y, 2, n, k), put_t("dx", dx, 2, n, k);
  case_end();

  for (int i = 0; i < n; i++) labels[i] = (int32_t)lt_rng_below(&rng, (uint64_t)k), lab[i] = (float)labels[i];
  int64_t correct = -1;
  loss[0] = (float)lt_cpu_softmax_xent(n, k, x, labels, 1.0f / n, dl, &correct);
  loss[1] = (float)correct;
  case_begin("xent:mean", 0, NULL);
  put_t("x", x, 2, n, k), put_t("labels", lab, 1, n), put_t("loss_correct", loss, 1, 2), put_t("dx", dl, 2, n, k);
  case_end();

  float *t = randn((size_t)n * k, 1);
  loss[0] = (float)lt_cpu_mse((size_t)n * k, x, t, 0.5f, dl);
  case_begin("mse:scale0.5", 0, NULL);
  put_t("p", x, 2, n, k), put_t("t", t, 2, n, k), put_t("loss", loss, 1, 1), put_t("dp", dl, 2, n, k);
  case_end();
  loss[0] = (float)lt_cpu_l1((size_t)n * k, x, t, 0.25f, dl);
  case_begin("l1:scale0.25", 0, NULL);
  put_t("p", x, 2, n, k), put_t("t", t, 2, n, k), put_t("loss", loss, 1, 1), put_t("dp", dl, 2, n, k);
  case_end();
  free(x), free(dy), free(y), free(dx), free(dl), free(t);
}

/* Three optimizer steps on fixed gradients; params hold the hyper-parameters. */
static void opt_case(const char *name, int adamw, float lr, float a, float b, float c, float wd,
                     int nesterov) {
  enum { N = 257, STEPS = 3 };
  float *w0 = randn(N, 1), *g = randn(N * STEPS, 1), *w = malloc(sizeof(float) * N);
  float *m = zeros(N), *v = zeros(N);
  memcpy(w, w0, sizeof(float) * N);
  for (int s = 0; s < STEPS; s++) {
    if (adamw)
      lt_cpu_adamw_step(N, lr, a, b, c, wd, s + 1, w, g + s * N, m, v);
    else
      lt_cpu_sgd_step(N, lr, a, b, wd, nesterov, w, g + s * N, m, s == 0);
  }
  double p[] = {adamw, lr, a, b, c, wd, nesterov};
  case_begin(name, 7, p);
  put_t("w0", w0, 1, N), put_t("g", g, 2, STEPS, N), put_t("w", w, 1, N);
  case_end();
  free(w0), free(g), free(w), free(m), free(v);
}

static void opt_cases(void) {
  /*       name                  adamw lr    mom/b1 damp/b2 eps  wd    nesterov */
  opt_case("sgd:plain",          0, 0.1f,  0.0f, 0.0f,  0.0f, 0.0f,  0);
  opt_case("sgd:momentum_wd",    0, 0.05f, 0.9f, 0.0f,  0.0f, 5e-4f, 0);
  opt_case("sgd:dampening",      0, 0.05f, 0.9f, 0.3f,  0.0f, 1e-3f, 0);
  opt_case("sgd:nesterov",       0, 0.05f, 0.9f, 0.0f,  0.0f, 1e-2f, 1);
  opt_case("adamw:default",      1, 1e-3f, 0.9f, 0.999f, 1e-8f, 1e-2f, 0);
  opt_case("adamw:strong_wd",    1, 3e-2f, 0.8f, 0.99f, 1e-6f, 0.3f, 0);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s OUT.bin [SEED]\n", argv[0]);
    return 2;
  }
  const uint64_t seed = argc > 2 ? strtoull(argv[2], NULL, 10) : (uint64_t)time(NULL);
  printf("kernels_ref_dump: seed %llu\n", (unsigned long long)seed);
  rng = lt_rng_make(seed, 0);
  out = fopen(argv[1], "wb");
  if (!out) {
    perror(argv[1]);
    return 2;
  }
  fwrite("LTK1", 1, 4, out);
  conv_cases();
  linear_case("linear:basic", 5, 7, 3);
  linear_case("linear:batch1", 1, 9, 4);
  bn_case("bn:basic", 4, 5, 3, 3);
  bn_case("bn:batch1", 1, 3, 1, 7);
  bn_case("bn:1x1_spatial", 5, 3, 1, 1);
  act_cases();
  pool_cases();
  upsample_cases();
  binary_cases();
  movement_cases();
  loss_cases();
  opt_cases();
  put_u32(0);
  return fclose(out) ? 2 : 0;
}
