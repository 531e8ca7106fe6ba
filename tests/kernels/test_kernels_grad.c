/* CPU kernels: every backward against central finite differences of its forward, plus the
 * header's contract for gradients: accumulate = 0 overwrites (never reads) the buffer,
 * accumulate = 1 adds to it, and a NULL output is skipped without touching the others.
 *
 * Each case defines a scalar loss L = sum(y * r) over the forward output y with fixed random r,
 * and a backward that receives dy = r. The kernels run in float; L is summed in double, so the
 * difference quotient (L(x+e) - L(x-e)) / 2e with e = 1e-2 is accurate to about 1e-4 here, and
 * analytic and numeric gradients must agree within 2e-3 * max(1, |g|) (5e-3 for batch norm,
 * whose loss mixes every element). Kinked kernels (relu, clip, max pooling, l1) get inputs kept
 * further than e from their kinks.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cpu/kernels.h"
#include "lathe/core.h"
#include "test.h"

static lt_rng rng;

static float *randn(size_t n, float scale) {
  float *p = malloc(n * sizeof(float) + 4);
  for (size_t i = 0; i < n; i++) p[i] = scale * lt_rng_normal(&rng);
  return p;
}

/* Values in ±[lo, lo + 1): away from 0 so that sign-based kernels have no kink within ±e. */
static float *rand_away(size_t n, float lo) {
  float *p = randn(n, 1.0f);
  for (size_t i = 0; i < n; i++) p[i] = p[i] >= 0 ? lo + fmodf(p[i], 1.0f) : -lo - fmodf(-p[i], 1.0f);
  return p;
}

static double dot(size_t n, const float *a, const float *b) {
  double s = 0;
  for (size_t i = 0; i < n; i++) s += (double)a[i] * b[i];
  return s;
}

/* ---- the generic harness ------------------------------------------------------------------- */

typedef struct fd_param {
  const char *name;
  float *x; /* (n) the input perturbed by the finite differences */
  float *g; /* (n) its gradient, written by the backward */
  size_t n;
} fd_param;

typedef struct fd_case fd_case;
struct fd_case {
  int np;
  fd_param p[4];
  double (*loss)(fd_case *c);                        /* forward, returns sum(y * r) */
  void (*grad)(fd_case *c, int accumulate, int skip); /* backward; p[i].g is NULL when bit i of skip */
  void *ctx;
  double tol;
};

/* The gradient buffer of param i for this call, or NULL when skipped. */
static float *G(fd_case *c, int i, int skip) { return (skip >> i) & 1 ? NULL : c->p[i].g; }

static void fill(float *p, size_t n, float v) {
  for (size_t i = 0; i < n; i++) p[i] = v;
}

static void run_fd(const char *name, fd_case *c) {
  float *g0[4];
  const float eps = 1e-2f;
  /* accumulate = 0 must overwrite: start from NaN, which any read would propagate */
  for (int i = 0; i < c->np; i++) fill(c->p[i].g, c->p[i].n, NAN);
  c->grad(c, 0, 0);
  for (int i = 0; i < c->np; i++) {
    g0[i] = malloc(c->p[i].n * sizeof(float) + 4);
    memcpy(g0[i], c->p[i].g, c->p[i].n * sizeof(float));
  }
  for (int i = 0; i < c->np; i++) {
    fd_param *p = &c->p[i];
    /* every element for tiny tensors; otherwise an even spread of 97 of them */
    const size_t stride = p->n <= 97 ? 1 : p->n / 97;
    double worst = 0;
    for (size_t j = 0; j < p->n; j += stride) {
      const float keep = p->x[j];
      p->x[j] = keep + eps;
      const double lp = c->loss(c);
      p->x[j] = keep - eps;
      const double lm = c->loss(c);
      p->x[j] = keep;
      const double num = (lp - lm) / (2.0 * (double)eps), ana = g0[i][j];
      const double err = fabs(num - ana) / fmax(1.0, fabs(ana));
      if (!(err <= worst)) worst = err;
      CHECK_MSG(err <= c->tol, "%s d%s[%zu]: analytic %.6g, numeric %.6g", name, p->name, j, ana, num);
      if (err > c->tol) break;
    }
    printf("  %-28s d%-6s max rel err %.2e (tol %.0e)\n", name, p->name, worst, c->tol);
  }
  /* accumulate = 1 adds onto what is there */
  for (int i = 0; i < c->np; i++) fill(c->p[i].g, c->p[i].n, 0.5f);
  c->grad(c, 1, 0);
  for (int i = 0; i < c->np; i++)
    for (size_t j = 0; j < c->p[i].n; j++)
      if (fabsf(c->p[i].g[j] - (g0[i][j] + 0.5f)) > 1e-5f * (1.0f + fabsf(g0[i][j]))) {
        TEST_FAIL_AT("%s d%s[%zu] with accumulate: %.7g, expected %.7g", name, c->p[i].name, j,
                     c->p[i].g[j], g0[i][j] + 0.5f);
        break;
      }
  /* a NULL output is skipped and the others are still right */
  for (int k = 0; k < c->np; k++) {
    for (int i = 0; i < c->np; i++) fill(c->p[i].g, c->p[i].n, NAN);
    c->grad(c, 0, 1 << k);
    for (int i = 0; i < c->np; i++)
      for (size_t j = 0; j < c->p[i].n; j++) {
        const float v = c->p[i].g[j];
        const int ok = i == k ? isnan(v) : v == g0[i][j];
        if (!ok) {
          TEST_FAIL_AT("%s with d%s = NULL: d%s[%zu] = %.7g", name, c->p[k].name, c->p[i].name, j, v);
          break;
        }
      }
  }
  for (int i = 0; i < c->np; i++) free(g0[i]);
}

static void free_params(fd_case *c) {
  for (int i = 0; i < c->np; i++) free(c->p[i].x), free(c->p[i].g);
}

static fd_param param(const char *name, float *x, size_t n) {
  fd_param p = {name, x, malloc(n * sizeof(float) + 4), n};
  return p;
}

/* ---- convolution --------------------------------------------------------------------------- */

typedef struct conv_ctx {
  lt_conv_geom g;
  int transpose;
  float *y, *r; /* (n, s, oh, ow) */
  void *ws;
} conv_ctx;

static double conv_loss(fd_case *c) {
  conv_ctx *k = c->ctx;
  if (k->transpose)
    lt_cpu_conv_transpose2d_fwd(&k->g, c->p[0].x, c->p[1].x, c->p[2].x, k->y, k->ws);
  else
    lt_cpu_conv2d_fwd(&k->g, c->p[0].x, c->p[1].x, c->p[2].x, k->y, k->ws);
  return dot((size_t)k->g.n * k->g.s * k->g.oh * k->g.ow, k->y, k->r);
}

static void conv_grad(fd_case *c, int acc, int skip) {
  conv_ctx *k = c->ctx;
  if (k->transpose) {
    lt_cpu_conv_transpose2d_bwd_data(&k->g, k->r, c->p[1].x, G(c, 0, skip), acc, k->ws);
    lt_cpu_conv_transpose2d_bwd_filter(&k->g, c->p[0].x, k->r, G(c, 1, skip), G(c, 2, skip), acc, k->ws);
  } else {
    lt_cpu_conv2d_bwd_data(&k->g, k->r, c->p[1].x, G(c, 0, skip), acc, k->ws);
    lt_cpu_conv2d_bwd_filter(&k->g, c->p[0].x, k->r, G(c, 1, skip), G(c, 2, skip), acc, k->ws);
  }
}

static void conv_fd(const char *name, int transpose, lt_conv_geom g) {
  REQUIRE(lt_conv_geom_finish(&g, transpose) == 0);
  conv_ctx k = {.g = g, .transpose = transpose};
  const size_t nx = (size_t)g.n * g.c * g.h * g.w, ny = (size_t)g.n * g.s * g.oh * g.ow;
  const size_t nw = (size_t)(transpose ? g.c * (g.s / g.groups) : g.s * (g.c / g.groups)) * g.kh * g.kw;
  k.y = malloc(ny * sizeof(float));
  k.r = randn(ny, 1);
  k.ws = malloc((transpose ? lt_cpu_conv_transpose2d_workspace(&g) : lt_cpu_conv2d_workspace(&g)) + 4);
  fd_case c = {.np = 3, .loss = conv_loss, .grad = conv_grad, .ctx = &k, .tol = 2e-3};
  c.p[0] = param("x", randn(nx, 1), nx);
  c.p[1] = param("w", randn(nw, 0.5f), nw);
  c.p[2] = param("b", randn((size_t)g.s, 1), (size_t)g.s);
  run_fd(name, &c);
  free_params(&c);
  free(k.y), free(k.r), free(k.ws);
}

TEST_CASE(conv2d_gradients_match_finite_differences) {
  conv_fd("conv 3x3 s2 asym-pad g2", 0,
          (lt_conv_geom){.n = 2, .c = 4, .h = 5, .w = 6, .s = 6, .kh = 3, .kw = 3, .stride_h = 2,
                         .stride_w = 2, .pad_t = 1, .pad_l = 0, .pad_b = 1, .pad_r = 2, .dil_h = 1,
                         .dil_w = 1, .groups = 2});
  conv_fd("conv 3x3 s1 odd asym-pad", 0,
          (lt_conv_geom){.n = 2, .c = 3, .h = 5, .w = 6, .s = 4, .kh = 3, .kw = 3, .stride_h = 1,
                         .stride_w = 1, .pad_t = 1, .pad_l = 0, .pad_b = 2, .pad_r = 1, .dil_h = 1,
                         .dil_w = 1, .groups = 1});
  conv_fd("conv 1x1 pointwise", 0,
          (lt_conv_geom){.n = 2, .c = 3, .h = 3, .w = 4, .s = 5, .kh = 1, .kw = 1, .stride_h = 1,
                         .stride_w = 1, .dil_h = 1, .dil_w = 1, .groups = 1});
  conv_fd("conv depthwise dil2", 0,
          (lt_conv_geom){.n = 1, .c = 3, .h = 6, .w = 5, .s = 3, .kh = 3, .kw = 2, .stride_h = 1,
                         .stride_w = 1, .pad_t = 2, .pad_l = 1, .pad_b = 2, .pad_r = 1, .dil_h = 2,
                         .dil_w = 2, .groups = 3});
}

TEST_CASE(conv_transpose2d_gradients_match_finite_differences) {
  conv_fd("convT s2 outpad1", 1,
          (lt_conv_geom){.n = 2, .c = 3, .h = 3, .w = 4, .s = 4, .kh = 3, .kw = 3, .stride_h = 2,
                         .stride_w = 2, .pad_t = 1, .pad_l = 1, .pad_b = 1, .pad_r = 0, .dil_h = 1,
                         .dil_w = 1, .groups = 1, .out_pad_h = 1, .out_pad_w = 1});
  conv_fd("convT g2 dil2", 1,
          (lt_conv_geom){.n = 1, .c = 4, .h = 3, .w = 3, .s = 2, .kh = 2, .kw = 3, .stride_h = 1,
                         .stride_w = 2, .pad_t = 0, .pad_l = 1, .pad_b = 1, .pad_r = 1, .dil_h = 2,
                         .dil_w = 1, .groups = 2});
  conv_fd("convT depthwise s2", 1,
          (lt_conv_geom){.n = 2, .c = 3, .h = 3, .w = 3, .s = 6, .kh = 3, .kw = 3, .stride_h = 2,
                         .stride_w = 2, .pad_t = 1, .pad_l = 1, .pad_b = 1, .pad_r = 1, .dil_h = 1,
                         .dil_w = 1, .groups = 3, .out_pad_h = 1});
}

/* ---- linear -------------------------------------------------------------------------------- */

typedef struct lin_ctx {
  int n, k, m;
  float *y, *r; /* (n, m) */
} lin_ctx;

static double lin_loss(fd_case *c) {
  lin_ctx *l = c->ctx;
  lt_cpu_linear_fwd(l->n, l->k, l->m, c->p[0].x, c->p[1].x, c->p[2].x, l->y);
  return dot((size_t)l->n * l->m, l->y, l->r);
}
static void lin_grad(fd_case *c, int acc, int skip) {
  lin_ctx *l = c->ctx;
  lt_cpu_linear_bwd(l->n, l->k, l->m, c->p[0].x, c->p[1].x, l->r, G(c, 0, skip), G(c, 1, skip),
                    G(c, 2, skip), acc);
}

TEST_CASE(linear_gradients_match_finite_differences) {
  lin_ctx l = {3, 5, 4, malloc(12 * sizeof(float)), randn(12, 1)};
  fd_case c = {.np = 3, .loss = lin_loss, .grad = lin_grad, .ctx = &l, .tol = 2e-3};
  c.p[0] = param("x", randn(15, 1), 15);
  c.p[1] = param("w", randn(20, 1), 20);
  c.p[2] = param("b", randn(4, 1), 4);
  run_fd("linear", &c);
  free_params(&c);
  free(l.y), free(l.r);
}

/* ---- batch norm ---------------------------------------------------------------------------- */

typedef struct bn_ctx {
  int n, c, hw;
  float *y, *r, mean[8], invstd[8];
} bn_ctx;

static double bn_loss(fd_case *c) {
  bn_ctx *b = c->ctx;
  lt_cpu_bn_fwd_train(b->n, b->c, b->hw, c->p[0].x, c->p[1].x, c->p[2].x, 1e-5f, 0.1f, b->y,
                      b->mean, b->invstd, NULL, NULL);
  return dot((size_t)b->n * b->c * b->hw, b->y, b->r);
}
static void bn_grad(fd_case *c, int acc, int skip) {
  bn_ctx *b = c->ctx;
  bn_loss(c); /* refresh the saved statistics */
  lt_cpu_bn_bwd(b->n, b->c, b->hw, c->p[0].x, b->r, c->p[1].x, b->mean, b->invstd, G(c, 0, skip),
                G(c, 1, skip), G(c, 2, skip), acc);
}

TEST_CASE(batchnorm_gradients_match_finite_differences) {
  bn_ctx b = {.n = 3, .c = 2, .hw = 4};
  const size_t cnt = 24;
  b.y = malloc(cnt * sizeof(float));
  b.r = randn(cnt, 1);
  fd_case c = {.np = 3, .loss = bn_loss, .grad = bn_grad, .ctx = &b, .tol = 5e-3};
  c.p[0] = param("x", randn(cnt, 1), cnt);
  c.p[1] = param("gamma", randn(2, 1), 2);
  c.p[2] = param("beta", randn(2, 1), 2);
  run_fd("batchnorm train", &c);
  free_params(&c);
  free(b.y), free(b.r);
}

/* ---- pointwise ----------------------------------------------------------------------------- */

enum { ACT_RELU, ACT_RELU_MASK, ACT_LEAKY, ACT_SIGMOID, ACT_TANH, ACT_CLIP, ACT_DROPOUT };
typedef struct act_ctx {
  int kind;
  size_t n;
  float *y, *r;
  uint8_t *mask;
} act_ctx;

static double act_loss(fd_case *c) {
  act_ctx *a = c->ctx;
  const float *x = c->p[0].x;
  switch (a->kind) {
  case ACT_RELU:
  case ACT_RELU_MASK: lt_cpu_relu_fwd(a->n, x, a->y); break;
  case ACT_LEAKY: lt_cpu_leaky_relu_fwd(a->n, 0.1f, x, a->y); break;
  case ACT_SIGMOID: lt_cpu_sigmoid_fwd(a->n, x, a->y); break;
  case ACT_TANH: lt_cpu_tanh_fwd(a->n, x, a->y); break;
  case ACT_CLIP: lt_cpu_clip_fwd(a->n, -0.5f, 1.0f, x, a->y); break;
  case ACT_DROPOUT: lt_cpu_dropout_fwd(a->n, 0.3f, 42, 7, x, a->y, a->mask); break;
  }
  return dot(a->n, a->y, a->r);
}
static void act_grad(fd_case *c, int acc, int skip) {
  act_ctx *a = c->ctx;
  const float *x = c->p[0].x;
  float *dx = G(c, 0, skip);
  act_loss(c);
  switch (a->kind) {
  case ACT_RELU: lt_cpu_relu_bwd(a->n, a->y, a->r, dx, acc); break;
  case ACT_RELU_MASK:
    lt_cpu_relu_mask_pack(a->n, a->y, a->mask);
    lt_cpu_relu_bwd_mask(a->n, a->mask, a->r, dx, acc);
    break;
  case ACT_LEAKY: lt_cpu_leaky_relu_bwd(a->n, 0.1f, x, a->r, dx, acc); break;
  case ACT_SIGMOID: lt_cpu_sigmoid_bwd(a->n, a->y, a->r, dx, acc); break;
  case ACT_TANH: lt_cpu_tanh_bwd(a->n, a->y, a->r, dx, acc); break;
  case ACT_CLIP: lt_cpu_clip_bwd(a->n, -0.5f, 1.0f, x, a->r, dx, acc); break;
  case ACT_DROPOUT: lt_cpu_dropout_bwd(a->n, 0.3f, a->mask, a->r, dx, acc); break;
  }
}

static void act_fd(const char *name, int kind) {
  const size_t n = 37;
  act_ctx a = {kind, n, malloc(n * sizeof(float)), randn(n, 1), calloc((n + 7) / 8, 1)};
  fd_case c = {.np = 1, .loss = act_loss, .grad = act_grad, .ctx = &a, .tol = 2e-3};
  float *x = rand_away(n, 0.05f);
  if (kind == ACT_CLIP) /* keep away from the clip bounds too */
    for (size_t i = 0; i < n; i++)
      if (fabsf(x[i] - 1.0f) < 0.05f || fabsf(x[i] + 0.5f) < 0.05f) x[i] += 0.2f;
  c.p[0] = param("x", x, n);
  run_fd(name, &c);
  free_params(&c);
  free(a.y), free(a.r), free(a.mask);
}

TEST_CASE(activation_gradients_match_finite_differences) {
  act_fd("relu", ACT_RELU);
  act_fd("relu (mask form)", ACT_RELU_MASK);
  act_fd("leaky_relu", ACT_LEAKY);
  act_fd("sigmoid", ACT_SIGMOID);
  act_fd("tanh", ACT_TANH);
  act_fd("clip", ACT_CLIP);
  act_fd("dropout", ACT_DROPOUT);
}

TEST_CASE(dropout_mask_is_keyed_and_keeps_one_minus_p) {
  const size_t n = 100003;
  float *x = malloc(n * sizeof(float)), *y = malloc(n * sizeof(float)), *y2 = malloc(n * sizeof(float));
  uint8_t *m = malloc((n + 7) / 8), *m2 = malloc((n + 7) / 8);
  fill(x, n, 1.0f);
  lt_cpu_dropout_fwd(n, 0.25f, 9, 3, x, y, m);
  lt_cpu_dropout_fwd(n, 0.25f, 9, 3, x, y2, m2);
  CHECK(memcmp(m, m2, (n + 7) / 8) == 0); /* same key, same mask */
  size_t kept = 0;
  for (size_t i = 0; i < n; i++) {
    const int bit = (m[i / 8] >> (i % 8)) & 1;
    kept += (size_t)bit;
    CHECK_MSG(y[i] == (bit ? 1.0f / 0.75f : 0.0f), "y[%zu] = %g with mask bit %d", i, y[i], bit);
    if (test_case_failed) break;
  }
  /* binomial: sd = sqrt(n p (1-p)) ~ 137; 6 sd */
  CHECK_NEAR((double)kept, 0.75 * n, 6 * 137.0);
  lt_cpu_dropout_fwd(n, 0.25f, 9, 4, x, y2, m2);
  CHECK(memcmp(m, m2, (n + 7) / 8) != 0); /* another stream, another mask */
  lt_cpu_dropout_fwd(n, 0.0f, 9, 3, x, y2, m2);
  CHECK(memcmp(x, y2, n * sizeof(float)) == 0); /* p = 0 is the identity */
  free(x), free(y), free(y2), free(m), free(m2);
}

/* ---- pooling and upsampling ---------------------------------------------------------------- */

typedef struct pool_ctx {
  lt_pool_geom g;
  int avg;
  float *y, *r;
  uint8_t *am;
} pool_ctx;

static double pool_loss(fd_case *c) {
  pool_ctx *p = c->ctx;
  if (p->avg)
    lt_cpu_avgpool_fwd(&p->g, c->p[0].x, p->y);
  else
    lt_cpu_maxpool_fwd(&p->g, c->p[0].x, p->y, p->am);
  return dot((size_t)p->g.n * p->g.c * p->g.oh * p->g.ow, p->y, p->r);
}
static void pool_grad(fd_case *c, int acc, int skip) {
  pool_ctx *p = c->ctx;
  pool_loss(c);
  if (p->avg)
    lt_cpu_avgpool_bwd(&p->g, p->r, G(c, 0, skip), acc);
  else
    lt_cpu_maxpool_bwd(&p->g, p->am, p->r, G(c, 0, skip), acc);
}

static void pool_fd(const char *name, int avg, lt_pool_geom g) {
  REQUIRE(lt_pool_geom_finish(&g) == 0);
  const size_t nx = (size_t)g.n * g.c * g.h * g.w, ny = (size_t)g.n * g.c * g.oh * g.ow;
  pool_ctx p = {g, avg, malloc(ny * sizeof(float)), randn(ny, 1), malloc(ny)};
  fd_case c = {.np = 1, .loss = pool_loss, .grad = pool_grad, .ctx = &p, .tol = 2e-3};
  /* distinct values at least 0.05 apart, so no max changes within ±e */
  float *x = malloc(nx * sizeof(float));
  for (size_t i = 0; i < nx; i++) x[i] = 0.05f * (float)((i * 7919) % nx) - 1.0f;
  c.p[0] = param("x", x, nx);
  run_fd(name, &c);
  free_params(&c);
  free(p.y), free(p.r), free(p.am);
}

TEST_CASE(pooling_gradients_match_finite_differences) {
  pool_fd("maxpool 3x3 s2 p1 ceil", 0,
          (lt_pool_geom){.n = 2, .c = 2, .h = 7, .w = 6, .kh = 3, .kw = 3, .stride_h = 2, .stride_w = 2,
                         .pad_t = 1, .pad_l = 1, .pad_b = 1, .pad_r = 1, .dil_h = 1, .dil_w = 1, .ceil_mode = 1});
  pool_fd("maxpool 2x2 dil2", 0,
          (lt_pool_geom){.n = 1, .c = 2, .h = 6, .w = 7, .kh = 2, .kw = 2, .stride_h = 1, .stride_w = 2,
                         .dil_h = 2, .dil_w = 2});
  pool_fd("avgpool incl-pad ceil", 1,
          (lt_pool_geom){.n = 2, .c = 2, .h = 7, .w = 6, .kh = 3, .kw = 3, .stride_h = 2, .stride_w = 2,
                         .pad_t = 1, .pad_l = 1, .pad_b = 1, .pad_r = 1, .dil_h = 1, .dil_w = 1,
                         .ceil_mode = 1, .count_include_pad = 1});
  /* PyTorch has no dilated average pooling (ONNX does): only this gradient check covers it */
  pool_fd("avgpool dil2 incl-pad", 1,
          (lt_pool_geom){.n = 1, .c = 2, .h = 7, .w = 6, .kh = 2, .kw = 3, .stride_h = 2, .stride_w = 1,
                         .pad_t = 1, .pad_l = 1, .pad_b = 1, .pad_r = 1, .dil_h = 2, .dil_w = 2,
                         .count_include_pad = 1});
  pool_fd("avgpool excl-pad", 1,
          (lt_pool_geom){.n = 1, .c = 3, .h = 5, .w = 5, .kh = 2, .kw = 3, .stride_h = 1, .stride_w = 2,
                         .pad_t = 1, .pad_l = 1, .pad_b = 1, .pad_r = 1, .dil_h = 1, .dil_w = 1});
}

TEST_CASE(argmax_pack2_round_trips) {
  uint8_t a[11], packed[3], back[11];
  for (int i = 0; i < 11; i++) a[i] = (uint8_t)((i * 3 + 1) % 4);
  lt_cpu_argmax_pack2(11, a, packed);
  lt_cpu_argmax_unpack2(11, packed, back);
  CHECK(memcmp(a, back, 11) == 0);
  CHECK(packed[0] == (uint8_t)(1 | 0 << 2 | 3 << 4 | 2 << 6));
}

typedef struct up_ctx {
  lt_upsample_mode mode;
  int ac, n, c, h, w, oh, ow;
  float *y, *r;
} up_ctx;

static double up_loss(fd_case *c) {
  up_ctx *u = c->ctx;
  lt_cpu_upsample_fwd(u->mode, u->ac, u->n, u->c, u->h, u->w, u->oh, u->ow, c->p[0].x, u->y);
  return dot((size_t)u->n * u->c * u->oh * u->ow, u->y, u->r);
}
static void up_grad(fd_case *c, int acc, int skip) {
  up_ctx *u = c->ctx;
  lt_cpu_upsample_bwd(u->mode, u->ac, u->n, u->c, u->h, u->w, u->oh, u->ow, u->r, G(c, 0, skip), acc);
}

static void up_fd(const char *name, lt_upsample_mode mode, int ac, int h, int w, int oh, int ow) {
  up_ctx u = {mode, ac, 2, 2, h, w, oh, ow, NULL, NULL};
  const size_t nx = (size_t)4 * h * w, ny = (size_t)4 * oh * ow;
  u.y = malloc(ny * sizeof(float));
  u.r = randn(ny, 1);
  fd_case c = {.np = 1, .loss = up_loss, .grad = up_grad, .ctx = &u, .tol = 2e-3};
  c.p[0] = param("x", randn(nx, 1), nx);
  run_fd(name, &c);
  free_params(&c);
  free(u.y), free(u.r);
}

typedef struct gap_ctx {
  int n, c, hw;
  float *y, *r; /* (n, c) */
} gap_ctx;

static double gap_loss(fd_case *c) {
  gap_ctx *g = c->ctx;
  lt_cpu_global_avgpool_fwd(g->n, g->c, g->hw, c->p[0].x, g->y);
  return dot((size_t)g->n * g->c, g->y, g->r);
}
static void gap_grad(fd_case *c, int acc, int skip) {
  gap_ctx *g = c->ctx;
  lt_cpu_global_avgpool_bwd(g->n, g->c, g->hw, g->r, G(c, 0, skip), acc);
}

TEST_CASE(upsample_and_global_pool_gradients_match_finite_differences) {
  gap_ctx g = {2, 3, 5, malloc(6 * sizeof(float)), randn(6, 1)};
  fd_case c = {.np = 1, .loss = gap_loss, .grad = gap_grad, .ctx = &g, .tol = 2e-3};
  c.p[0] = param("x", randn(30, 1), 30);
  run_fd("global avgpool", &c);
  free_params(&c);
  free(g.y), free(g.r);

  up_fd("upsample nearest 3x4->7x6", LT_UPSAMPLE_NEAREST, 0, 3, 4, 7, 6);
  up_fd("upsample bilinear ac0", LT_UPSAMPLE_BILINEAR, 0, 3, 4, 7, 6);
  up_fd("upsample bilinear ac1", LT_UPSAMPLE_BILINEAR, 1, 3, 4, 7, 6);
}

/* ---- broadcasting and data movement -------------------------------------------------------- */

typedef struct bin_ctx {
  lt_binary_op op;
  int64_t as[4], bs[4], ys[4];
  float *y, *r;
  size_t ny;
} bin_ctx;

static double bin_loss(fd_case *c) {
  bin_ctx *b = c->ctx;
  lt_cpu_binary_fwd(b->op, 4, b->as, c->p[0].x, b->bs, c->p[1].x, b->ys, b->y);
  return dot(b->ny, b->y, b->r);
}
static void bin_grad(fd_case *c, int acc, int skip) {
  bin_ctx *b = c->ctx;
  lt_cpu_binary_bwd(b->op, 4, b->as, c->p[0].x, b->bs, c->p[1].x, b->ys, b->r, G(c, 0, skip),
                    G(c, 1, skip), acc);
}

static void bin_fd(const char *name, lt_binary_op op, const int64_t as[4], const int64_t bs[4]) {
  bin_ctx b = {.op = op};
  size_t na = 1, nb = 1;
  b.ny = 1;
  for (int d = 0; d < 4; d++) {
    b.as[d] = as[d], b.bs[d] = bs[d], b.ys[d] = as[d] > bs[d] ? as[d] : bs[d];
    na *= (size_t)as[d], nb *= (size_t)bs[d], b.ny *= (size_t)b.ys[d];
  }
  b.y = malloc(b.ny * sizeof(float));
  b.r = randn(b.ny, 1);
  fd_case c = {.np = 2, .loss = bin_loss, .grad = bin_grad, .ctx = &b, .tol = 2e-3};
  c.p[0] = param("a", randn(na, 1), na);
  c.p[1] = param("b", rand_away(nb, 1.0f), nb); /* |b| >= 1 keeps the quotient smooth */
  run_fd(name, &c);
  free_params(&c);
  free(b.y), free(b.r);
}

TEST_CASE(binary_gradients_reduce_over_broadcast_dims) {
  const int64_t s[4] = {2, 3, 2, 2}, ch[4] = {1, 3, 1, 1}, row[4] = {1, 1, 2, 1}, col[4] = {2, 1, 1, 3};
  bin_fd("add channel-broadcast", LT_BIN_ADD, s, ch);
  bin_fd("sub both-broadcast", LT_BIN_SUB, row, col);
  bin_fd("mul same-shape", LT_BIN_MUL, s, s);
  bin_fd("mul channel-broadcast", LT_BIN_MUL, ch, s);
  bin_fd("div both-broadcast", LT_BIN_DIV, col, row);
}

typedef struct move_ctx {
  int pad; /* 1: pad, 0: slice */
  int64_t xs[3], ys[3], start[3], step[3], pads[6];
  float *y, *r;
  size_t ny;
} move_ctx;

static double move_loss(fd_case *c) {
  move_ctx *m = c->ctx;
  if (m->pad)
    lt_cpu_pad_fwd(3, m->xs, m->pads, 0.3f, c->p[0].x, m->y);
  else
    lt_cpu_slice_fwd(3, m->xs, m->start, m->step, m->ys, sizeof(float), c->p[0].x, m->y);
  return dot(m->ny, m->y, m->r);
}
static void move_grad(fd_case *c, int acc, int skip) {
  move_ctx *m = c->ctx;
  if (m->pad)
    lt_cpu_pad_bwd(3, m->xs, m->pads, m->r, G(c, 0, skip), acc);
  else
    lt_cpu_slice_bwd(3, m->xs, m->start, m->step, m->ys, m->r, G(c, 0, skip), acc);
}

TEST_CASE(slice_and_pad_gradients_match_finite_differences) {
  move_ctx m = {.pad = 0, .xs = {3, 4, 5}, .ys = {2, 2, 3}, .start = {0, 3, 4}, .step = {2, -2, -2}};
  m.ny = 12;
  m.y = malloc(m.ny * sizeof(float));
  m.r = randn(m.ny, 1);
  fd_case c = {.np = 1, .loss = move_loss, .grad = move_grad, .ctx = &m, .tol = 2e-3};
  c.p[0] = param("x", randn(60, 1), 60);
  run_fd("slice strided", &c);
  free(m.y), free(m.r);

  move_ctx p = {.pad = 1, .xs = {3, 4, 5}, .pads = {1, -1, 2, 0, 1, -2}};
  p.ny = 4 * 4 * 5;
  p.y = malloc(p.ny * sizeof(float));
  p.r = randn(p.ny, 1);
  c.ctx = &p;
  run_fd("pad with crop", &c);
  free_params(&c);
  free(p.y), free(p.r);
}

TEST_CASE(concat_split_and_transpose_invert_each_other) {
  const int64_t sizes[2] = {2, 3};
  float a[2 * 2 * 3], b[2 * 3 * 3], y[2 * 5 * 3], a2[12], b2[18];
  for (int i = 0; i < 12; i++) a[i] = (float)i;
  for (int i = 0; i < 18; i++) b[i] = 100.0f + (float)i;
  const void *ins[2] = {a, b};
  lt_cpu_concat(2, ins, sizes, 2, 3, sizeof(float), y);
  CHECK(y[5] == 5.0f && y[6] == 100.0f && y[15] == 6.0f);
  void *outs[2] = {a2, b2};
  lt_cpu_split(2, outs, sizes, 2, 3, sizeof(float), y, 0);
  CHECK(memcmp(a, a2, sizeof a) == 0 && memcmp(b, b2, sizeof b) == 0);
  lt_cpu_split(2, outs, sizes, 2, 3, sizeof(float), y, 1); /* accumulate doubles them */
  CHECK(a2[7] == 14.0f && b2[4] == 208.0f);
  void *only_b[2] = {NULL, b2};
  lt_cpu_split(2, only_b, sizes, 2, 3, sizeof(float), y, 0); /* NULL output skipped */
  CHECK(memcmp(b, b2, sizeof b) == 0 && a2[7] == 14.0f);

  const int64_t xs[4] = {2, 3, 4, 5}, ts[4] = {4, 2, 5, 3};
  const int perm[4] = {2, 0, 3, 1}, inv[4] = {1, 3, 0, 2};
  float x[120], t[120], back[120];
  uint8_t xb[120], tb[120];
  for (int i = 0; i < 120; i++) x[i] = (float)i, xb[i] = (uint8_t)i;
  lt_cpu_transpose(4, xs, perm, sizeof(float), x, t);
  CHECK(t[1] == x[20]); /* t[i0,i1,i2,i3] = x[i1,i3,i0,i2]: t[0,0,0,1] = x[0,1,0,0] */
  lt_cpu_transpose(4, ts, inv, sizeof(float), t, back);
  CHECK(memcmp(x, back, sizeof x) == 0);
  lt_cpu_transpose(4, xs, perm, 1, xb, tb); /* element size 1 */
  for (int i = 0; i < 120; i++) CHECK((float)tb[i] == t[i]);
}

/* ---- softmax and losses -------------------------------------------------------------------- */

typedef struct sm_ctx {
  int n, k;
  float *y, *r;
} sm_ctx;

static double sm_loss(fd_case *c) {
  sm_ctx *s = c->ctx;
  lt_cpu_softmax_fwd(s->n, s->k, c->p[0].x, s->y);
  return dot((size_t)s->n * s->k, s->y, s->r);
}
static void sm_grad(fd_case *c, int acc, int skip) {
  sm_ctx *s = c->ctx;
  sm_loss(c);
  lt_cpu_softmax_bwd(s->n, s->k, s->y, s->r, G(c, 0, skip), acc);
}

TEST_CASE(softmax_gradient_matches_finite_differences) {
  sm_ctx s = {3, 5, malloc(15 * sizeof(float)), randn(15, 1)};
  fd_case c = {.np = 1, .loss = sm_loss, .grad = sm_grad, .ctx = &s, .tol = 2e-3};
  c.p[0] = param("x", randn(15, 2), 15);
  run_fd("softmax", &c);
  free_params(&c);
  free(s.y), free(s.r);
}

/* Loss gradients come from the same call as the loss: checked directly against differences. */
TEST_CASE(loss_gradients_match_finite_differences) {
  const int n = 4, k = 6;
  const int32_t labels[4] = {0, 5, 2, 2};
  float *x = randn((size_t)n * k, 2), *t = randn((size_t)n * k, 1), *g = malloc(sizeof(float) * n * k);
  const float eps = 1e-2f;
  for (int which = 0; which < 3; which++) {
    const float scale = 0.5f;
    int64_t correct = -1;
    if (which == 0) lt_cpu_softmax_xent(n, k, x, labels, scale, g, &correct);
    if (which == 1) lt_cpu_mse((size_t)n * k, x, t, scale, g);
    if (which == 2) lt_cpu_l1((size_t)n * k, x, t, scale, g);
    for (int i = 0; i < n * k; i++) {
      if (which == 2 && fabsf(x[i] - t[i]) < 2 * eps) continue; /* |.| kink */
      const float keep = x[i];
      double l[2];
      for (int s = 0; s < 2; s++) {
        x[i] = keep + (s ? -eps : eps);
        l[s] = which == 0 ? lt_cpu_softmax_xent(n, k, x, labels, 1, NULL, NULL)
               : which == 1 ? lt_cpu_mse((size_t)n * k, x, t, 1, NULL)
                            : lt_cpu_l1((size_t)n * k, x, t, 1, NULL);
      }
      x[i] = keep;
      const double num = scale * (l[0] - l[1]) / (2.0 * eps);
      CHECK_MSG(fabs(num - g[i]) <= 2e-3 * fmax(1.0, fabs(num)), "loss %d d[%d]: analytic %g, numeric %g", which, i, g[i], num);
    }
  }
  int32_t bad[4] = {0, 6, 1, 1};
  CHECK(isnan(lt_cpu_softmax_xent(n, k, x, bad, 1, g, NULL))); /* label out of range */
  free(x), free(t), free(g);
}

TEST_CASE(xent_counts_correct_argmax) {
  const float logits[6] = {1, 3, 2, /**/ 5, 0, 5}; /* row 1 ties: the first maximum counts */
  const int32_t labels[2] = {1, 0};
  int64_t correct = -1;
  const double loss = lt_cpu_softmax_xent(2, 3, logits, labels, 1, NULL, &correct);
  CHECK(correct == 2);
  const double want = (log(exp(1.0) + exp(3.0) + exp(2.0)) - 3.0) + (log(2 * exp(5.0) + 1.0) - 5.0);
  CHECK_NEAR(loss, want, 1e-5);
}

/* ---- optimizers ---------------------------------------------------------------------------- */

TEST_CASE(sgd_first_step_seeds_the_velocity) {
  float w[2] = {1.0f, -2.0f}, g[2] = {0.5f, 0.25f}, v[2] = {123.0f, 123.0f};
  /* first step: buf = g + wd*w (dampening not applied), w -= lr*buf */
  lt_cpu_sgd_step(2, 0.1f, 0.9f, 0.5f, 0.1f, 0, w, g, v, 1);
  CHECK_NEAR(v[0], 0.6, 1e-6);
  CHECK_NEAR(w[0], 1.0 - 0.06, 1e-6);
  /* second step: buf = 0.9*buf + 0.5*d */
  lt_cpu_sgd_step(2, 0.1f, 0.9f, 0.5f, 0.1f, 0, w, g, v, 0);
  const double d = 0.5 + 0.1 * 0.94, buf = 0.9 * 0.6 + 0.5 * d;
  CHECK_NEAR(v[0], buf, 1e-6);
  CHECK_NEAR(w[0], 0.94 - 0.1 * buf, 1e-6);
  /* momentum 0 needs no velocity buffer: w -= lr * (g + wd*w) */
  float w1 = 1.0f, g1 = 0.5f;
  lt_cpu_sgd_step(1, 0.1f, 0.0f, 0.0f, 0.1f, 0, &w1, &g1, NULL, 1);
  CHECK_NEAR(w1, 0.94, 1e-6);
}

/* A diverging run must stay visible: NaN passes through as it does in PyTorch. */
TEST_CASE(nan_propagates_through_relu_clip_and_maxpool) {
  const float x[4] = {NAN, -1.0f, 2.0f, 0.5f};
  float y[4];
  lt_cpu_relu_fwd(4, x, y);
  CHECK(isnan(y[0]) && y[1] == 0.0f && y[2] == 2.0f);
  lt_cpu_clip_fwd(4, 0.0f, 1.0f, x, y);
  CHECK(isnan(y[0]) && y[1] == 0.0f && y[2] == 1.0f);
  lt_pool_geom g = {.n = 1, .c = 1, .h = 2, .w = 2, .kh = 2, .kw = 2, .stride_h = 2, .stride_w = 2,
                    .dil_h = 1, .dil_w = 1};
  REQUIRE(lt_pool_geom_finish(&g) == 0);
  const float xp[4] = {1.0f, 3.0f, NAN, 2.0f};
  uint8_t am = 9;
  lt_cpu_maxpool_fwd(&g, xp, y, &am);
  CHECK(isnan(y[0]) && am == 2);
}

int main(void) {
  rng = lt_rng_make(20261126, 1);
  RUN(conv2d_gradients_match_finite_differences);
  RUN(conv_transpose2d_gradients_match_finite_differences);
  RUN(linear_gradients_match_finite_differences);
  RUN(batchnorm_gradients_match_finite_differences);
  RUN(activation_gradients_match_finite_differences);
  RUN(dropout_mask_is_keyed_and_keeps_one_minus_p);
  RUN(pooling_gradients_match_finite_differences);
  RUN(argmax_pack2_round_trips);
  RUN(upsample_and_global_pool_gradients_match_finite_differences);
  RUN(binary_gradients_reduce_over_broadcast_dims);
  RUN(slice_and_pad_gradients_match_finite_differences);
  RUN(concat_split_and_transpose_invert_each_other);
  RUN(softmax_gradient_matches_finite_differences);
  RUN(loss_gradients_match_finite_differences);
  RUN(xent_counts_correct_argmax);
  RUN(sgd_first_step_seeds_the_velocity);
  RUN(nan_propagates_through_relu_clip_and_maxpool);
  return test_summary();
}
