/* Activation-compression stash policy and controller, driven directly through the
 * lt_stash_policy callbacks (no executor): the compact forms, byte accounting under
 * LT_MEM_SAVED, the adaptive bound, and the observed/predicted dW error on real conv layers.
 *
 * Usage: actcomp_test_stash [ACTS.h5]   (the file from capture_activations.py adds the
 * ResNet-20 layers to the gradient-error check) */
#include "fake_device.h"
#include "lathe/actcomp.h"
#include "relu_field.h"
#include "test.h"

#include <hdf5.h>

static lt_rng rng;

/* A graph with just the nodes observe() reads: node 0 a 3×3 conv (stride, pad given). */
static lt_graph conv_graph(lt_node *nodes, int stride, int pad) {
  memset(nodes, 0, sizeof *nodes);
  nodes[0].op = LT_OP_CONV2D;
  nodes[0].a.kernel[0] = nodes[0].a.kernel[1] = 3;
  nodes[0].a.stride[0] = nodes[0].a.stride[1] = stride;
  nodes[0].a.pads[0] = nodes[0].a.pads[1] = nodes[0].a.pads[2] = nodes[0].a.pads[3] = pad;
  nodes[0].a.dilation[0] = nodes[0].a.dilation[1] = 1;
  nodes[0].a.groups = 1;
  lt_graph g = {0};
  g.nodes = nodes;
  g.n_nodes = 1;
  return g;
}

/* Naive direct convolution: y (n, s, oh, ow) = conv(x (n, c, h, w), w (s, c, k, k)). */
static void conv_ref(const float *x, const float *w, float *y, int n, int c, int h, int wd, int s,
                     int k, int stride, int pad, int oh, int ow) {
  for (int b = 0; b < n; b++)
    for (int o = 0; o < s; o++)
      for (int i = 0; i < oh; i++)
        for (int j = 0; j < ow; j++) {
          double acc = 0;
          for (int ci = 0; ci < c; ci++)
            for (int u = 0; u < k; u++)
              for (int v = 0; v < k; v++) {
                int iy = i * stride - pad + u, ix = j * stride - pad + v;
                if (iy < 0 || iy >= h || ix < 0 || ix >= wd) continue;
                acc += (double)x[((b * c + ci) * h + iy) * wd + ix] * w[((o * c + ci) * k + u) * k + v];
              }
          y[((b * s + o) * oh + i) * ow + j] = (float)acc;
        }
}

/* dW (s, c, k, k) = Σ dy · x, the reference weight gradient. */
static void conv_dw_ref(const float *x, const float *dy, float *dw, int n, int c, int h, int wd,
                        int s, int k, int stride, int pad, int oh, int ow) {
  for (int o = 0; o < s; o++)
    for (int ci = 0; ci < c; ci++)
      for (int u = 0; u < k; u++)
        for (int v = 0; v < k; v++) {
          double acc = 0;
          for (int b = 0; b < n; b++)
            for (int i = 0; i < oh; i++)
              for (int j = 0; j < ow; j++) {
                int iy = i * stride - pad + u, ix = j * stride - pad + v;
                if (iy < 0 || iy >= h || ix < 0 || ix >= wd) continue;
                acc += (double)dy[((b * s + o) * oh + i) * ow + j] * x[((b * c + ci) * h + iy) * wd + ix];
              }
          dw[((o * c + ci) * k + u) * k + v] = (float)acc;
        }
}

TEST_CASE(stash_compact_forms_restore_what_backward_needs) {
  lt_mem_stats m0, m1;
  lt_mem_get_stats(&m0);
  lt_ac_config cfg = lt_ac_config_default();
  cfg.mode = LT_AC_FIXED;
  cfg.eb = 0.05;
  lt_err err = {0};
  lt_ac_stash *st = lt_ac_stash_new(&cfg, &err);
  REQUIRE(st);
  const lt_stash_policy *p = lt_ac_stash_policy(st);
  lt_node nodes[1];
  lt_graph g = conv_graph(nodes, 1, 1);
  int64_t shape[4] = {4, 8, 16, 16};
  const int64_t n = 4 * 8 * 16 * 16;
  float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y);
  for (int64_t i = 0; i < n; i++) {
    float v = lt_rng_normal(&rng);
    x[i] = v > 0 ? v : 0;
  }
  lt_tensor t = lt_tensor_wrap(LT_F32, 4, shape, x), d = lt_tensor_wrap(LT_F32, 4, shape, y);
  void *h_in, *h_relu, *h_exact, *h_bn;
  REQUIRE(p->store(p->user, &g, 0, 0, LT_SAVE_WEIGHT_INPUT, &t, NULL, NULL, &h_in, &err) == LT_OK);
  REQUIRE(p->store(p->user, &g, 1, 0, LT_SAVE_RELU_OUTPUT, &t, NULL, NULL, &h_relu, &err) == LT_OK);
  REQUIRE(p->store(p->user, &g, 2, 0, LT_SAVE_EXACT, &t, NULL, NULL, &h_exact, &err) == LT_OK);
  REQUIRE(p->store(p->user, &g, 3, 0, LT_SAVE_BN_INPUT, &t, NULL, NULL, &h_bn, &err) == LT_OK);
  uint8_t am[1001], am2[1001];
  for (int i = 0; i < 1001; i++) am[i] = (uint8_t)lt_rng_below(&rng, 4);
  int64_t ashape[1] = {1001};
  lt_tensor ta = lt_tensor_wrap(LT_U8, 1, ashape, am), da = lt_tensor_wrap(LT_U8, 1, ashape, am2);
  void *h_arg;
  REQUIRE(p->store(p->user, &g, 4, 0, LT_SAVE_POOL_ARGMAX, &ta, NULL, NULL, &h_arg, &err) == LT_OK);

  lt_mem_get_stats(&m1);
  int64_t saved = m1.current[LT_MEM_SAVED] - m0.current[LT_MEM_SAVED];
  lt_ac_stash_step_end(st);
  lt_ac_report rep;
  lt_ac_stash_report(st, &rep);
  CHECK(rep.n_layers == 5);
  CHECK(rep.bytes_dense == 3 * n * 4 + n * 4 + 1001);
  /* Everything the stash holds is under LT_MEM_SAVED (the stash's own tables are too). */
  CHECK_MSG(saved >= rep.bytes_held, "LT_MEM_SAVED grew %lld, stash says it holds %lld",
            (long long)saved, (long long)rep.bytes_held);
  for (int i = 0; i < rep.n_layers; i++) {
    const lt_ac_layer_report *r = &rep.layers[i];
    /* 1 bit an element plus the entry's own metadata (about 120 bytes, counted) */
    if (r->kind == LT_SAVE_RELU_OUTPUT) CHECK(r->bytes_held < r->bytes_dense / 32 + 160);
    if (r->kind == LT_SAVE_POOL_ARGMAX) CHECK(r->bytes_held < 1001 / 4 + 200);
    if (r->kind == LT_SAVE_WEIGHT_INPUT) CHECK(r->bytes_held < r->bytes_dense / 4);
    if (r->kind == LT_SAVE_EXACT || r->kind == LT_SAVE_BN_INPUT) CHECK(r->bytes_held >= r->bytes_dense);
  }

  REQUIRE(p->load(p->user, h_in, &d, &err) == LT_OK);
  int64_t bad = 0;
  for (int64_t i = 0; i < n; i++) bad += !(fabs((double)x[i] - y[i]) <= 0.05) || (x[i] == 0 && y[i] != 0);
  CHECK(bad == 0);
  REQUIRE(p->load(p->user, h_relu, &d, &err) == LT_OK);
  bad = 0;
  for (int64_t i = 0; i < n; i++) bad += (x[i] > 0) != (y[i] > 0);
  CHECK(bad == 0);
  REQUIRE(p->load(p->user, h_exact, &d, &err) == LT_OK);
  CHECK(!memcmp(x, y, n * sizeof *x));
  REQUIRE(p->load(p->user, h_bn, &d, &err) == LT_OK);
  CHECK(!memcmp(x, y, n * sizeof *x)); /* BN exact by default */
  REQUIRE(p->load(p->user, h_arg, &da, &err) == LT_OK);
  CHECK(!memcmp(am, am2, sizeof am));
  /* A mismatched destination is refused, not overrun. */
  int64_t small[1] = {10};
  lt_tensor ds = lt_tensor_wrap(LT_F32, 1, small, y);
  CHECK(p->load(p->user, h_in, &ds, &err) != LT_OK);
  p->release(p->user, h_in);
  p->release(p->user, h_relu);
  p->release(p->user, h_exact);
  p->release(p->user, h_bn);
  p->release(p->user, h_arg);
  lt_ac_stash_free(st);
  lt_mem_get_stats(&m1);
  CHECK(m1.current[LT_MEM_SAVED] == m0.current[LT_MEM_SAVED]);
  free(x);
  free(y);
}

TEST_CASE(stash_argmax_beyond_2x2_stays_exact_and_off_mode_keeps_everything) {
  lt_ac_config cfg = lt_ac_config_default();
  cfg.mode = LT_AC_OFF;
  lt_err err = {0};
  lt_ac_stash *st = lt_ac_stash_new(&cfg, &err);
  const lt_stash_policy *p = lt_ac_stash_policy(st);
  lt_node nodes[1];
  lt_graph g = conv_graph(nodes, 1, 1);
  float x[100], y[100];
  for (int i = 0; i < 100; i++) x[i] = lt_rng_normal(&rng);
  int64_t shape[1] = {100};
  lt_tensor t = lt_tensor_wrap(LT_F32, 1, shape, x), d = lt_tensor_wrap(LT_F32, 1, shape, y);
  void *h;
  REQUIRE(p->store(p->user, &g, 0, 0, LT_SAVE_WEIGHT_INPUT, &t, NULL, NULL, &h, &err) == LT_OK);
  REQUIRE(p->load(p->user, h, &d, &err) == LT_OK);
  CHECK(!memcmp(x, y, sizeof x));
  p->release(p->user, h);
  lt_ac_stash_free(st);

  cfg.mode = LT_AC_FIXED;
  st = lt_ac_stash_new(&cfg, &err);
  p = lt_ac_stash_policy(st);
  uint8_t am[9] = {0, 1, 2, 3, 8, 4, 0, 1, 2}, am2[9];
  int64_t as[1] = {9};
  lt_tensor ta = lt_tensor_wrap(LT_U8, 1, as, am), da = lt_tensor_wrap(LT_U8, 1, as, am2);
  REQUIRE(p->store(p->user, &g, 0, 0, LT_SAVE_POOL_ARGMAX, &ta, NULL, NULL, &h, &err) == LT_OK);
  REQUIRE(p->load(p->user, h, &da, &err) == LT_OK);
  CHECK(!memcmp(am, am2, 9));
  p->release(p->user, h);
  /* ReLU masks of an odd length (vector body plus scalar tail): the sign pattern survives. */
  float r[1001], r2[1001];
  for (int i = 0; i < 1001; i++) r[i] = i % 7 == 0 ? NAN : lt_rng_normal(&rng);
  int64_t rs[1] = {1001};
  lt_tensor tr = lt_tensor_wrap(LT_F32, 1, rs, r), dr = lt_tensor_wrap(LT_F32, 1, rs, r2);
  REQUIRE(p->store(p->user, &g, 1, 0, LT_SAVE_RELU_OUTPUT, &tr, NULL, NULL, &h, &err) == LT_OK);
  REQUIRE(p->load(p->user, h, &dr, &err) == LT_OK);
  int wrong = 0;
  for (int i = 0; i < 1001; i++) wrong += (r[i] > 0) != (r2[i] > 0);
  CHECK(wrong == 0);
  p->release(p->user, h);
  lt_ac_stash_free(st);
  /* Noise at a tiny bound does not compress: the stash keeps the smaller exact copy. */
  lt_ac_config tiny = lt_ac_config_default();
  tiny.mode = LT_AC_FIXED;
  tiny.eb = 1e-7;
  lt_ac_stash *st2 = lt_ac_stash_new(&tiny, &err);
  p = lt_ac_stash_policy(st2);
  REQUIRE(p->store(p->user, &g, 0, 0, LT_SAVE_WEIGHT_INPUT, &t, NULL, NULL, &h, &err) == LT_OK);
  REQUIRE(p->load(p->user, h, &d, &err) == LT_OK);
  CHECK(!memcmp(x, y, sizeof x));
  lt_ac_stash_step_end(st2);
  lt_ac_report rep;
  lt_ac_stash_report(st2, &rep);
  CHECK(rep.n_layers == 1 && rep.layers[0].bytes_held <= rep.layers[0].bytes_dense + 128);
  p->release(p->user, h);
  lt_ac_stash_free(st2);
  /* Bad configurations are refused with a message. */
  cfg.mode = LT_AC_ADAPTIVE;
  cfg.rho = -1;
  CHECK(lt_ac_stash_new(&cfg, &err) == NULL);
  CHECK_STR_CONTAINS(err.msg, "rho");
}

TEST_CASE(stash_relative_mode_bound_follows_the_value_range) {
  lt_ac_config cfg = lt_ac_config_default();
  cfg.mode = LT_AC_RELATIVE;
  cfg.rel = 0.01;
  lt_err err = {0};
  lt_ac_stash *st = lt_ac_stash_new(&cfg, &err);
  const lt_stash_policy *p = lt_ac_stash_policy(st);
  lt_node nodes[1];
  lt_graph g = conv_graph(nodes, 1, 1);
  enum { N = 5000 };
  float x[N], y[N];
  for (int i = 0; i < N; i++) x[i] = 5.0f * (float)lt_rng_uniform(&rng) - 1.0f;
  x[0] = -1.0f;
  x[1] = 4.0f; /* range exactly 5 */
  int64_t shape[2] = {50, 100};
  lt_tensor t = lt_tensor_wrap(LT_F32, 2, shape, x), d = lt_tensor_wrap(LT_F32, 2, shape, y);
  void *h;
  REQUIRE(p->store(p->user, &g, 0, 0, LT_SAVE_WEIGHT_INPUT, &t, NULL, NULL, &h, &err) == LT_OK);
  double eb = lt_ac_stash_layer_eb(st, 0);
  CHECK_NEAR(eb, 0.05, 1e-6);
  REQUIRE(p->load(p->user, h, &d, &err) == LT_OK);
  int bad = 0;
  for (int i = 0; i < N; i++) bad += !(fabs((double)x[i] - y[i]) <= eb);
  CHECK(bad == 0);
  p->release(p->user, h);
  lt_ac_stash_step_end(st);
  lt_ac_report rep;
  lt_ac_stash_report(st, &rep);
  CHECK(rep.n_layers == 1 && rep.layers[0].n_history == 1 && rep.layers[0].eb_history[0] == eb);
  lt_ac_stash_free(st);
}

/* Runs the adaptive controller on one conv layer: a first exact window, then compressed steps
 * on which the observed dW error is measured. Returns the mean observed/predicted ratio. */
static double controller_ratio(const float *x, const float *dy_fixed, int n, int c, int h, int w,
                               int s, int stride, int pad, double rho, double *eb_out) {
  const int k = 3, oh = (h + 2 * pad - k) / stride + 1, ow = (w + 2 * pad - k) / stride + 1;
  const int64_t nx = (int64_t)n * c * h * w, ndy = (int64_t)n * s * oh * ow, nw = (int64_t)s * c * k * k;
  lt_ac_config cfg = lt_ac_config_default();
  cfg.mode = LT_AC_ADAPTIVE;
  cfg.rho = rho;
  cfg.window = 1;
  cfg.sample_every = 1;
  cfg.eb_min = 1e-6;
  lt_err err = {0};
  lt_ac_stash *st = lt_ac_stash_new(&cfg, &err);
  const lt_stash_policy *p = lt_ac_stash_policy(st);
  lt_node nodes[1];
  lt_graph g = conv_graph(nodes, stride, pad);
  float *xr = malloc(nx * sizeof *xr), *dy = malloc(ndy * sizeof *dy), *dw = malloc(nw * sizeof *dw);
  int64_t xs[4] = {n, c, h, w}, ys[4] = {n, s, oh, ow}, ws[4] = {s, c, k, k};
  for (int step = 0; step < 4; step++) {
    for (int64_t i = 0; i < ndy; i++) dy[i] = dy_fixed ? dy_fixed[i] : lt_rng_normal(&rng);
    lt_tensor t = lt_tensor_wrap(LT_F32, 4, xs, (void *)x), d = lt_tensor_wrap(LT_F32, 4, xs, xr);
    void *hd;
    if (p->store(p->user, &g, 0, 0, LT_SAVE_WEIGHT_INPUT, &t, NULL, NULL, &hd, &err) ||
        p->load(p->user, hd, &d, &err)) {
      fprintf(stderr, "%s\n", err.msg);
      break;
    }
    conv_dw_ref(xr, dy, dw, n, c, h, w, s, k, stride, pad, oh, ow);
    lt_tensor tdy = lt_tensor_wrap(LT_F32, 4, ys, dy), tdw = lt_tensor_wrap(LT_F32, 4, ws, dw);
    p->observe(p->user, &g, 0, &d, &tdy, &tdw);
    p->release(p->user, hd);
    lt_ac_stash_step_end(st);
    if (step == 0) CHECK(lt_ac_stash_layer_eb(st, 0) > 0); /* first window exact, then a bound */
  }
  lt_ac_report rep;
  lt_ac_stash_report(st, &rep);
  double ratio = rep.n_layers == 1 && rep.layers[0].n_samples == 3 ? rep.layers[0].mean_ratio : -1;
  *eb_out = lt_ac_stash_layer_eb(st, 0);
  CHECK(rep.n_layers == 1 && rep.layers[0].n_history == 4);
  lt_ac_stash_free(st);
  free(xr);
  free(dy);
  free(dw);
  return ratio;
}

/* x (c, h, w) → BatchNorm → ReLU → 3×3 conv to s channels, with γ_c = ±(g0 + gs·c) (negative for
 * channel 2), β_c random, running statistics 0 and 1. γ and β go to gam and bet, the three
 * nodes' ids to nb, nr and nc; NULL when the graph cannot be built. */
static lt_graph *bn_relu_conv_graph(int c, int h, int w, int s, float g0, float gs, float *gam,
                                    float *bet, int *nb, int *nr, int *nc) {
  lt_err err = {0};
  lt_graph *g = lt_graph_new();
  if (!g) return NULL;
  int x = lt_graph_add_input(g, "x", LT_F32, 3, (int64_t[]){c, h, w});
  lt_tensor *pt[4];
  for (int i = 0; i < 4; i++) pt[i] = lt_tensor_new(LT_F32, 1, (int64_t[]){c}, LT_MEM_WEIGHTS, &err);
  for (int k = 0; k < c; k++) {
    gam[k] = (k == 2 ? -1.0f : 1.0f) * (g0 + gs * k);
    bet[k] = 0.3f * (float)lt_rng_normal(&rng);
    lt_tensor_f32(pt[0])[k] = gam[k];
    lt_tensor_f32(pt[1])[k] = bet[k];
    lt_tensor_f32(pt[2])[k] = 0.0f;
    lt_tensor_f32(pt[3])[k] = 1.0f;
  }
  int pg = lt_graph_add_param(g, "bn.gamma", pt[0], 1), pb = lt_graph_add_param(g, "bn.beta", pt[1], 1);
  int pm = lt_graph_add_param(g, "bn.rm", pt[2], 0), pv = lt_graph_add_param(g, "bn.rv", pt[3], 0);
  lt_node_attrs ba = lt_attrs_default();
  int y = lt_graph_add_node(g, LT_OP_BATCHNORM, "bn", (int[]){x, pg, pb, pm, pv}, 5, &ba, &err);
  int r = lt_graph_add_node(g, LT_OP_RELU, "relu", (int[]){y}, 1, NULL, &err);
  int wt = lt_graph_add_param(g, "conv.w", lt_tensor_new(LT_F32, 4, (int64_t[]){s, c, 3, 3}, LT_MEM_WEIGHTS, &err), 1);
  lt_node_attrs ca = lt_attrs_conv(3, 1, 1, 1, 1);
  int o = lt_graph_add_node(g, LT_OP_CONV2D, "conv", (int[]){r, wt}, 2, &ca, &err);
  if (y < 0 || r < 0 || o < 0) {
    lt_graph_free(g);
    return NULL;
  }
  lt_graph_set_output(g, o);
  *nb = g->values[y].producer, *nr = g->values[r].producer, *nc = g->values[o].producer;
  return g;
}

/* x (n, c, h, w) → BatchNorm → ReLU → conv: the BN input is kept in the normalised domain and the
 * conv's input, ReLU(BN(x)), is rebuilt from it and the ReLU mask (nothing of its own), within
 * the conv's bound, zeros exact, whatever order backward releases the three entries in. */
static void bn_relu_conv(lt_ac_bn_mode bn_mode, double eb, double bn_eb) {
  enum { N = 4, C = 6, H = 12, W = 10, S = 5 };
  const int64_t n = (int64_t)N * C * H * W;
  lt_err err = {0};
  float gam[C], bet[C];
  int nb, nr, nc;
  /* |γ| from 0.1 (bound set by bn_eb) to 4 (set by eb/|γ|), one negative */
  lt_graph *g = bn_relu_conv_graph(C, H, W, S, 0.1f, 0.8f, gam, bet, &nb, &nr, &nc);
  REQUIRE(g);

  /* Channels with different means and scales; the forward of BN and ReLU in double. */
  float *xs = malloc(n * sizeof *xs), *rs = malloc(n * sizeof *rs), *out = malloc(n * sizeof *out);
  double mean[C] = {0}, var[C] = {0};
  for (int64_t i = 0; i < n; i++) {
    int c = (int)(i / (H * W) % C);
    xs[i] = (float)(3.0 * c - 4.0 + (0.2 + c) * lt_rng_normal(&rng));
    mean[c] += xs[i];
  }
  for (int c = 0; c < C; c++) mean[c] /= (double)N * H * W;
  for (int64_t i = 0; i < n; i++) {
    int c = (int)(i / (H * W) % C);
    var[c] += (xs[i] - mean[c]) * (xs[i] - mean[c]);
  }
  for (int c = 0; c < C; c++) var[c] = var[c] / ((double)N * H * W) + g->nodes[nb].a.eps;
  int64_t zeros = 0;
  for (int64_t i = 0; i < n; i++) {
    int c = (int)(i / (H * W) % C);
    double v = gam[c] * (xs[i] - mean[c]) / sqrt(var[c]) + bet[c];
    rs[i] = v > 0 ? (float)v : 0.0f;
    zeros += rs[i] == 0;
  }
  CHECK(zeros > n / 10 && zeros < n * 9 / 10);

  lt_ac_config cfg = lt_ac_config_default();
  cfg.mode = LT_AC_FIXED;
  cfg.eb = eb;
  cfg.bn_mode = bn_mode;
  cfg.bn_eb = bn_eb;
  lt_mem_stats m0, m1;
  lt_mem_get_stats(&m0);
  lt_ac_stash *st = lt_ac_stash_new(&cfg, &err);
  REQUIRE(st);
  const lt_stash_policy *p = lt_ac_stash_policy(st);
  int64_t shape[4] = {N, C, H, W};
  lt_tensor tx = lt_tensor_wrap(LT_F32, 4, shape, xs), tr = lt_tensor_wrap(LT_F32, 4, shape, rs);
  lt_tensor to = lt_tensor_wrap(LT_F32, 4, shape, out);
  void *hb, *hr, *hc;
  REQUIRE(p->store(p->user, g, nb, 0, LT_SAVE_BN_INPUT, &tx, NULL, NULL, &hb, &err) == LT_OK);
  REQUIRE(p->store(p->user, g, nr, 0, LT_SAVE_RELU_OUTPUT, &tr, NULL, NULL, &hr, &err) == LT_OK);
  REQUIRE(p->store(p->user, g, nc, 0, LT_SAVE_WEIGHT_INPUT, &tr, NULL, NULL, &hc, &err) == LT_OK);
  lt_ac_stash_step_end(st);
  lt_ac_report rep;
  lt_ac_stash_report(st, &rep);
  REQUIRE(rep.n_layers == 3);
  for (int i = 0; i < 3; i++) {
    const lt_ac_layer_report *l = &rep.layers[i];
    if (l->kind == LT_SAVE_WEIGHT_INPUT) CHECK_MSG(l->bytes_held < 256, "conv input holds %lld", (long long)l->bytes_held);
    if (l->kind == LT_SAVE_BN_INPUT && bn_mode == LT_AC_BN_LOSSY)
      CHECK_MSG(l->bytes_held < l->bytes_dense / 2, "bn input %lld of %lld", (long long)l->bytes_held, (long long)l->bytes_dense);
  }
  /* Backward order: conv, ReLU, BN; then again with the BN released first (the conv's entry
   * keeps its sources). */
  for (int order = 0; order < 2; order++) {
    if (order == 1) { /* all three were released at the end of order 0 */
      REQUIRE(p->store(p->user, g, nb, 0, LT_SAVE_BN_INPUT, &tx, NULL, NULL, &hb, &err) == LT_OK);
      REQUIRE(p->store(p->user, g, nr, 0, LT_SAVE_RELU_OUTPUT, &tr, NULL, NULL, &hr, &err) == LT_OK);
      REQUIRE(p->store(p->user, g, nc, 0, LT_SAVE_WEIGHT_INPUT, &tr, NULL, NULL, &hc, &err) == LT_OK);
      p->release(p->user, hb);
      p->release(p->user, hr);
      hb = hr = NULL;
    }
    REQUIRE(p->load(p->user, hc, &to, &err) == LT_OK);
    int64_t bad = 0;
    double worst = 0;
    for (int64_t i = 0; i < n; i++) {
      double d = fabs((double)out[i] - rs[i]);
      worst = d > worst ? d : worst;
      bad += !(d <= eb * (1 + 1e-5) + 1e-6) || ((rs[i] == 0) != (out[i] == 0) && rs[i] == 0);
    }
    CHECK_MSG(bad == 0, "order %d: %lld conv-input elements off (worst %g, eb %g)", order,
              (long long)bad, worst, eb);
    if (order == 0) {
      REQUIRE(p->load(p->user, hb, &to, &err) == LT_OK);
      bad = 0;
      for (int64_t i = 0; i < n; i++) {
        int c = (int)(i / (H * W) % C);
        double ebn = bn_mode == LT_AC_BN_EXACT ? 0 : fmin(bn_eb, eb / fabs(gam[c]));
        double d = fabs((double)out[i] - xs[i]) / sqrt(var[c]); /* error of x̂ */
        bad += !(d <= ebn * (1 + 1e-4) + 1e-6);
      }
      CHECK_MSG(bad == 0, "%lld batch-norm inputs beyond the normalised bound", (long long)bad);
      p->release(p->user, hb);
      p->release(p->user, hr);
    }
    p->release(p->user, hc);
  }
  lt_mem_get_stats(&m1);
  CHECK(m1.current[LT_MEM_SAVED] - m0.current[LT_MEM_SAVED] <= (int64_t)(1 << 16)); /* tables */
  lt_ac_stash_free(st);
  lt_mem_get_stats(&m1);
  CHECK(m1.current[LT_MEM_SAVED] == m0.current[LT_MEM_SAVED]);
  lt_graph_free(g);
  free(xs);
  free(rs);
  free(out);
}

/* The batch norm's own statistics (its forward's aux: mean and 1/σ) are what the stash codes
 * the input against when the executor passes them: given a 1/σ four times the true one, the
 * restored input's error shrinks fourfold with it; without aux the stash computes its own. */
TEST_CASE(stash_bn_input_uses_the_forward_statistics) {
  enum { N = 4, C = 3, HW = 256 };
  const int64_t n = (int64_t)N * C * HW;
  const double bn_eb = 0.2;
  float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y), mean[C], invstd[C];
  for (int64_t i = 0; i < n; i++) {
    int c = (int)(i / HW % C);
    x[i] = (float)(2.0 * c - 1.0 + (0.5 + c) * lt_rng_normal(&rng));
  }
  for (int c = 0; c < C; c++) {
    double s = 0, s2 = 0;
    for (int b = 0; b < N; b++)
      for (int i = 0; i < HW; i++) s += x[((int64_t)b * C + c) * HW + i];
    const double m = s / ((double)N * HW);
    for (int b = 0; b < N; b++)
      for (int i = 0; i < HW; i++) {
        const double d = x[((int64_t)b * C + c) * HW + i] - m;
        s2 += d * d;
      }
    mean[c] = (float)m;
    invstd[c] = (float)(1.0 / sqrt(s2 / ((double)N * HW) + 1e-5));
  }
  lt_ac_config cfg = lt_ac_config_default();
  cfg.mode = LT_AC_FIXED;
  cfg.bn_mode = LT_AC_BN_LOSSY;
  cfg.bn_eb = bn_eb;
  lt_err err = {0};
  lt_ac_stash *st = lt_ac_stash_new(&cfg, &err);
  REQUIRE(st);
  const lt_stash_policy *p = lt_ac_stash_policy(st);
  lt_node nodes[1];
  lt_graph g = conv_graph(nodes, 1, 1);
  /* (batch, channels, w) as a 1-d batch norm sees it, and (batch, channels, h, w) */
  int64_t shape[2][4] = {{N, C, HW}, {N, C, 16, HW / 16}}, cshape[1] = {C};
  for (int k = 0; k < 4; k++) {
    const int dims = k < 2 ? 3 : 4, scale = k % 2 ? 4 : 1;
    lt_tensor t = lt_tensor_wrap(LT_F32, dims, shape[dims - 3], x);
    lt_tensor d = lt_tensor_wrap(LT_F32, dims, shape[dims - 3], y);
    float inv[C];
    for (int c = 0; c < C; c++) inv[c] = invstd[c] * (float)scale;
    lt_tensor am = lt_tensor_wrap(LT_F32, 1, cshape, mean), ai = lt_tensor_wrap(LT_F32, 1, cshape, inv);
    const lt_tensor *aux[LT_MAX_IO] = {&am, &ai};
    for (int given = 0; given < 2; given++) {
      void *h;
      REQUIRE(p->store(p->user, &g, 3, 0, LT_SAVE_BN_INPUT, &t, NULL, given ? aux : NULL, &h, &err) ==
              LT_OK);
      REQUIRE(p->load(p->user, h, &d, &err) == LT_OK);
      p->release(p->user, h);
      double worst = 0; /* largest error of x̂ = (x - mean)/σ, true σ */
      for (int64_t i = 0; i < n; i++) {
        const double e = fabs((double)y[i] - x[i]) * invstd[i / HW % C];
        worst = e > worst ? e : worst;
      }
      const double bound = given ? bn_eb / scale : bn_eb;
      CHECK_MSG(worst <= bound * (1 + 1e-4), "%d-d, aux %s, 1/σ x%d: x̂ error %g beyond %g",
                dims, given ? "given" : "absent", scale, worst, bound);
      /* the bound is used, not just met: the error reaches most of it */
      CHECK_MSG(worst > 0.5 * bound, "%d-d, aux %s, 1/σ x%d: x̂ error %g, bound %g", dims,
                given ? "given" : "absent", scale, worst, bound);
    }
  }
  lt_ac_stash_free(st);
  free(x);
  free(y);
}

TEST_CASE(stash_bn_input_normalised_and_conv_input_rebuilt_from_it) {
  bn_relu_conv(LT_AC_BN_LOSSY, 0.05, 0.2);
  bn_relu_conv(LT_AC_BN_LOSSY, 0.5, 0.1);
  bn_relu_conv(LT_AC_BN_EXACT, 0.05, 0.2);
}


/* x (c, h, w) → ReLU → 3×3 conv to s channels; the two nodes' ids to nr and nc. */
static lt_graph *relu_conv_graph(int c, int h, int w, int s, int *nr, int *nc) {
  lt_err err = {0};
  lt_graph *g = lt_graph_new();
  if (!g) return NULL;
  int x = lt_graph_add_input(g, "x", LT_F32, 3, (int64_t[]){c, h, w});
  int r = lt_graph_add_node(g, LT_OP_RELU, "relu", (int[]){x}, 1, NULL, &err);
  int wt = lt_graph_add_param(g, "conv.w", lt_tensor_new(LT_F32, 4, (int64_t[]){s, c, 3, 3}, LT_MEM_WEIGHTS, &err), 1);
  lt_node_attrs ca = lt_attrs_conv(3, 1, 1, 1, 1);
  int o = lt_graph_add_node(g, LT_OP_CONV2D, "conv", (int[]){r, wt}, 2, &ca, &err);
  if (r < 0 || o < 0) {
    lt_graph_free(g);
    return NULL;
  }
  lt_graph_set_output(g, o);
  *nr = g->values[r].producer, *nc = g->values[o].producer;
  return g;
}

/* A conv input that is a ReLU output, with the ReLU's mask held, is coded as its non-zeros only:
 * it restores exactly what the plain codec restores at the same bound (the element-wise
 * reconstruction is the same), zeros exact, in fewer bytes than the plain stream, also after
 * the mask's own handle is released; a tensor that is not zero everywhere the mask is clear (a
 * NaN, or another tensor) falls back to the plain codec. Odd sizes over several threads' blocks. */
TEST_CASE(stash_relu_output_conv_input_coded_as_its_non_zeros) {
  enum { B = 3, C = 5, H = 67, W = 129, N = B * C * H * W };
  int nr, nc;
  lt_graph *g = relu_conv_graph(C, H, W, 4, &nr, &nc);
  REQUIRE(g);
  float *x = malloc(N * sizeof *x), *y = malloc(N * sizeof *y), *ref = malloc(N * sizeof *ref);
  ac_test_fill_relu(&rng, x, B * C, H, W);
  int64_t zeros = 0;
  for (int64_t i = 0; i < N; i++) zeros += x[i] == 0.0f;
  REQUIRE(zeros > N / 4 && zeros < 3 * N / 4);
  const double eb = 0.02;
  lt_err err = {0};
  lt_ac_codec *codec = lt_ac_codec_new(NULL, &err);
  lt_ac_buf plain = {0};
  int64_t shape[4] = {B, C, H, W};
  REQUIRE(lt_ac_encode(codec, LT_AC_KIND_LORENZO, x, 4, shape, eb, &plain, &err) == LT_OK);
  REQUIRE(lt_ac_decode(codec, plain.data, plain.len, ref, N, &err) == LT_OK);
  lt_tensor t = lt_tensor_wrap(LT_F32, 4, shape, x), d = lt_tensor_wrap(LT_F32, 4, shape, y);
  for (int variant = 0; variant < 3; variant++) {
    lt_ac_config cfg = lt_ac_config_default();
    cfg.mode = LT_AC_FIXED;
    cfg.eb = eb;
    lt_ac_stash *st = lt_ac_stash_new(&cfg, &err);
    REQUIRE(st);
    const lt_stash_policy *p = lt_ac_stash_policy(st);
    /* variant 1: a NaN where the mask is clear; variant 2: the mask of another tensor */
    float *in = malloc(N * sizeof *in);
    memcpy(in, x, N * sizeof *in);
    int64_t z0 = 0;
    while (x[z0] != 0.0f) z0++;
    if (variant == 1) in[z0] = NAN;
    lt_tensor ti = lt_tensor_wrap(LT_F32, 4, shape, in);
    float *other = malloc(N * sizeof *other);
    for (int64_t i = 0; i < N; i++) other[i] = x[(i + 7) % N];
    lt_tensor to = lt_tensor_wrap(LT_F32, 4, shape, other);
    void *hm, *hc;
    REQUIRE(p->store(p->user, g, nr, 0, LT_SAVE_RELU_OUTPUT, variant == 2 ? &to : &t, NULL, NULL,
                     &hm, &err) == LT_OK);
    REQUIRE(p->store(p->user, g, nc, 0, LT_SAVE_WEIGHT_INPUT, &ti, NULL, NULL, &hc, &err) ==
            LT_OK);
    lt_ac_stash_step_end(st);
    lt_ac_report rep;
    lt_ac_stash_report(st, &rep);
    int64_t held = -1;
    for (int i = 0; i < rep.n_layers; i++)
      if (rep.layers[i].node == nc) held = rep.layers[i].bytes_held;
    p->release(p->user, hm); /* the conv's entry keeps the mask it needs */
    memset(y, 0xA5, N * sizeof *y);
    REQUIRE(p->load(p->user, hc, &d, &err) == LT_OK);
    if (variant == 0) {
      CHECK_MSG(held > 0 && held < (int64_t)plain.len * 95 / 100,
                "held %lld bytes, the plain stream is %zu", (long long)held, plain.len);
      CHECK(!memcmp(y, ref, N * sizeof *y));
    } else {
      CHECK_MSG(held >= (int64_t)plain.len, "variant %d held %lld bytes, the plain stream %zu",
                variant, (long long)held, plain.len);
      int64_t bad = 0;
      for (int64_t i = 0; i < N; i++)
        bad += isnan(in[i]) ? !isnan(y[i]) : !(fabs((double)in[i] - y[i]) <= eb) || (in[i] == 0 && y[i] != 0);
      CHECK_MSG(bad == 0, "variant %d: %lld elements wrong", variant, (long long)bad);
    }
    p->release(p->user, hc);
    lt_ac_stash_free(st);
    free(in);
    free(other);
  }
  lt_ac_buf_free(&plain);
  lt_ac_codec_free(codec);
  lt_graph_free(g);
  free(x);
  free(y);
  free(ref);
}

TEST_CASE(controller_first_window_exact_then_formula_bound) {
  /* One step of statistics with window 1: eb = rho·√3·mean|G| / (δ_rms·√(N(1−R))). */
  enum { N = 2, C = 3, H = 6, W = 6, S = 4 };
  float x[N * C * H * W], dy[N * S * H * W], dw[S * C * 9];
  for (int i = 0; i < N * C * H * W; i++) x[i] = i % 3 ? fabsf(lt_rng_normal(&rng)) : 0.0f;
  for (int i = 0; i < N * S * H * W; i++) dy[i] = lt_rng_normal(&rng);
  conv_dw_ref(x, dy, dw, N, C, H, W, S, 3, 1, 1, H, W);
  double sg = 0, sd = 0;
  for (int i = 0; i < S * C * 9; i++) sg += fabs(dw[i]);
  for (int i = 0; i < N * S * H * W; i++) sd += (double)dy[i] * dy[i];
  double mean_g = sg / (S * C * 9), drms = sqrt(sd / (N * S * H * W)), nn = N * H * W;
  int zeros = 0;
  for (int i = 0; i < N * C * H * W; i++) zeros += x[i] == 0;
  double r = (double)zeros / (N * C * H * W);
  double expect = 0.2 * sqrt(3.0) * mean_g / (drms * sqrt(nn * (1 - r)));

  lt_ac_config cfg = lt_ac_config_default();
  cfg.rho = 0.2;
  cfg.window = 2;
  cfg.smoothing = 0.5;
  cfg.eb_min = 1e-9;
  cfg.eb_max = 1e9;
  lt_err err = {0};
  lt_ac_stash *st = lt_ac_stash_new(&cfg, &err);
  const lt_stash_policy *p = lt_ac_stash_policy(st);
  lt_node nodes[1];
  lt_graph g = conv_graph(nodes, 1, 1);
  int64_t xs[4] = {N, C, H, W}, ys[4] = {N, S, H, W}, ws[4] = {S, C, 3, 3};
  lt_tensor t = lt_tensor_wrap(LT_F32, 4, xs, x), tdy = lt_tensor_wrap(LT_F32, 4, ys, dy),
            tdw = lt_tensor_wrap(LT_F32, 4, ws, dw);
  lt_ac_report rep;
  int64_t exact_peak = 0;
  for (int step = 0; step < 4; step++) {
    void *h;
    REQUIRE(p->store(p->user, &g, 0, 0, LT_SAVE_WEIGHT_INPUT, &t, NULL, NULL, &h, &err) == LT_OK);
    p->observe(p->user, &g, 0, &t, &tdy, &tdw);
    p->release(p->user, h);
    lt_ac_stash_step_end(st);
    if (step == 0) CHECK(lt_ac_stash_layer_eb(st, 0) == 0); /* still in the first window */
    if (step == 1) {
      CHECK_NEAR(lt_ac_stash_layer_eb(st, 0), expect, 1e-9 * expect);
      /* The exact window's peak, then peaks restarted for the compressed steps. */
      lt_ac_stash_report(st, &rep);
      exact_peak = rep.peak_held;
      CHECK(exact_peak >= rep.peak_dense);
      lt_ac_stash_reset_peaks(st);
      lt_ac_stash_report(st, &rep);
      CHECK(rep.peak_held == 0 && rep.peak_dense == 0); /* nothing held between steps */
    }
  }
  lt_ac_stash_report(st, &rep);
  CHECK_MSG(rep.peak_held > 0 && rep.peak_held < exact_peak,
            "peak after reset %lld, exact window %lld", (long long)rep.peak_held,
            (long long)exact_peak);
  CHECK(rep.peak_dense == (int64_t)sizeof x);
  /* Same statistics again: smoothing keeps it there. */
  CHECK_NEAR(lt_ac_stash_layer_eb(st, 0), expect, 1e-9 * expect);
  lt_ac_stash_free(st);
  /* Clamping. */
  cfg.eb_max = expect / 10;
  st = lt_ac_stash_new(&cfg, &err);
  p = lt_ac_stash_policy(st);
  for (int step = 0; step < 2; step++) {
    void *h;
    REQUIRE(p->store(p->user, &g, 0, 0, LT_SAVE_WEIGHT_INPUT, &t, NULL, NULL, &h, &err) == LT_OK);
    p->observe(p->user, &g, 0, &t, &tdy, &tdw);
    p->release(p->user, h);
    lt_ac_stash_step_end(st);
  }
  CHECK_NEAR(lt_ac_stash_layer_eb(st, 0), expect / 10, 1e-12);
  lt_ac_stash_free(st);
}

/* initial_eb: the adaptive controller's first window runs at that fixed bound instead of exact
 * (what a memory cap needs), then the formula takes over. */
TEST_CASE(controller_initial_eb_compresses_the_first_window) {
  enum { N = 4, C = 8, H = 16, W = 16, S = 4 };
  const int64_t n = (int64_t)N * C * H * W;
  float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y), *dy = malloc(N * S * H * W * sizeof *dy);
  float dw[S * C * 9];
  for (int64_t i = 0; i < n; i++) {
    float v = lt_rng_normal(&rng);
    x[i] = v > 0 ? v : 0;
  }
  for (int i = 0; i < N * S * H * W; i++) dy[i] = lt_rng_normal(&rng);
  conv_dw_ref(x, dy, dw, N, C, H, W, S, 3, 1, 1, H, W);
  lt_ac_config cfg = lt_ac_config_default();
  cfg.window = 2;
  cfg.initial_eb = 0.05;
  cfg.sample_every = 0;
  lt_err err = {0};
  lt_ac_stash *st = lt_ac_stash_new(&cfg, &err);
  REQUIRE(st);
  const lt_stash_policy *p = lt_ac_stash_policy(st);
  lt_node nodes[1];
  lt_graph g = conv_graph(nodes, 1, 1);
  int64_t xs[4] = {N, C, H, W}, ys[4] = {N, S, H, W}, ws[4] = {S, C, 3, 3};
  lt_tensor t = lt_tensor_wrap(LT_F32, 4, xs, x), d = lt_tensor_wrap(LT_F32, 4, xs, y),
            tdy = lt_tensor_wrap(LT_F32, 4, ys, dy), tdw = lt_tensor_wrap(LT_F32, 4, ws, dw);
  for (int step = 0; step < 3; step++) {
    const double eb = lt_ac_stash_layer_eb(st, 0);
    if (step < 2) CHECK_NEAR(eb, 0.05, 1e-12); /* the first window, before any statistics */
    else CHECK(eb > 0 && fabs(eb - 0.05) > 1e-6); /* the formula's bound from then on */
    void *h;
    REQUIRE(p->store(p->user, &g, 0, 0, LT_SAVE_WEIGHT_INPUT, &t, NULL, NULL, &h, &err) == LT_OK);
    lt_ac_report rep;
    lt_ac_stash_report(st, &rep);
    CHECK_MSG(rep.peak_held < (int64_t)(n * sizeof *x) / 4, "step %d holds %lld of %lld", step,
              (long long)rep.peak_held, (long long)(n * sizeof *x));
    REQUIRE(p->load(p->user, h, &d, &err) == LT_OK);
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++) bad += !(fabs((double)x[i] - y[i]) <= eb) || (x[i] == 0 && y[i] != 0);
    CHECK(bad == 0);
    p->observe(p->user, &g, 0, &t, &tdy, &tdw);
    p->release(p->user, h);
    lt_ac_stash_step_end(st);
  }
  lt_ac_stash_free(st);
  free(x);
  free(y);
  free(dy);
}

TEST_CASE(controller_observed_over_predicted_dw_error_on_relu_conv_stack) {
  /* x = ReLU(BN(conv(random input))): a post-ReLU conv input with about half exact zeros. */
  enum { N = 8, C0 = 8, C = 16, H = 16, W = 16, S = 16 };
  float *in = malloc(N * C0 * H * W * sizeof *in), *w0 = malloc(C * C0 * 9 * sizeof *w0);
  float *x = malloc(N * C * H * W * sizeof *x);
  for (int i = 0; i < N * C0 * H * W; i++) in[i] = lt_rng_normal(&rng);
  for (int i = 0; i < C * C0 * 9; i++) w0[i] = lt_rng_normal(&rng) / sqrtf(C0 * 9);
  conv_ref(in, w0, x, N, C0, H, W, C, 3, 1, 1, H, W);
  for (int ch = 0; ch < C; ch++) { /* batch norm per channel, then ReLU */
    double s1 = 0, s2 = 0;
    for (int b = 0; b < N; b++)
      for (int i = 0; i < H * W; i++) {
        double v = x[(b * C + ch) * H * W + i];
        s1 += v;
        s2 += v * v;
      }
    double mu = s1 / (N * H * W), sd = sqrt(s2 / (N * H * W) - mu * mu + 1e-5);
    for (int b = 0; b < N; b++)
      for (int i = 0; i < H * W; i++) {
        float *v = &x[(b * C + ch) * H * W + i];
        *v = (float)((*v - mu) / sd);
        *v = *v > 0 ? *v : 0;
      }
  }
  for (int ri = 0; ri < 3; ri++) {
    double rho = ri == 0 ? 0.05 : ri == 1 ? 0.1 : 0.2, eb;
    double ratio = controller_ratio(x, NULL, N, C, H, W, S, 1, 1, rho, &eb);
    printf("  relu conv stack, rho %.2f: eb %.4g, observed/predicted %.3f\n", rho, eb, ratio);
    CHECK_MSG(ratio >= 0.8 && ratio <= 1.25, "ratio %.3f outside 0.8..1.25", ratio);
  }
  free(in);
  free(w0);
  free(x);
}

/* The captured ResNet-20 layers (real inputs and real output gradients), when given. */
static const char *acts_path;

static float *read_ds(hid_t f, const char *name, int64_t *shape, int *nd) {
  hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
  if (d < 0) return NULL;
  hid_t sp = H5Dget_space(d);
  hsize_t dims[8];
  *nd = H5Sget_simple_extent_ndims(sp);
  H5Sget_simple_extent_dims(sp, dims, NULL);
  int64_t n = 1;
  for (int i = 0; i < *nd; i++) n *= (int64_t)(shape[i] = (int64_t)dims[i]);
  float *p = malloc(n * sizeof *p);
  H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, p);
  H5Sclose(sp);
  H5Dclose(d);
  return p;
}

TEST_CASE(controller_observed_over_predicted_dw_error_on_resnet20_layers) {
  if (!acts_path) {
    printf("  (no capture given: skipped; pass the file from capture_activations.py)\n");
    return;
  }
  hid_t f = H5Fopen(acts_path, H5F_ACC_RDONLY, H5P_DEFAULT);
  REQUIRE(f >= 0);
  /* A few conv layers across the network: stride 1 and the strided downsampling convs, with
   * 8 samples of the batch to keep the reference dW loops short. */
  const char *layers[] = {"layer1.0.conv2", "layer2.0.conv1", "layer2.2.conv1", "layer3.0.conv1",
                          "layer3.2.conv2"};
  for (size_t li = 0; li < sizeof layers / sizeof *layers; li++) {
    char name[128];
    int64_t xs[8], ys[8];
    int nx, ny;
    snprintf(name, sizeof name, "/acts/%s", layers[li]);
    float *x = read_ds(f, name, xs, &nx);
    snprintf(name, sizeof name, "/dy/%s", layers[li]);
    float *dy = read_ds(f, name, ys, &ny);
    REQUIRE(x && dy && nx == 4 && ny == 4);
    int stride = xs[2] == ys[2] ? 1 : 2, nb = 8;
    /* the first nb samples of the batch: x and dy are (n, ...) row-major */
    double eb;
    double ratio = controller_ratio(x, dy, nb, (int)xs[1], (int)xs[2], (int)xs[3], (int)ys[1],
                                    stride, 1, 0.1, &eb);
    printf("  %s: eb %.4g, observed/predicted %.3f\n", layers[li], eb, ratio);
    CHECK_MSG(ratio >= 0.8 && ratio <= 1.25, "%s: ratio %.3f outside 0.8..1.25", layers[li], ratio);
    free(x);
    free(dy);
  }
  H5Fclose(f);
}

/* A device copy (on the fake device) of a host tensor, and back. */
static lt_tensor dev_copy(lt_backend *be, const lt_tensor *h) {
  lt_tensor d = *h;
  d.data = be->vt->alloc(be, lt_tensor_nbytes(h), LT_MEM_ACTIVATIONS, NULL);
  d.device = 0;
  be->vt->to_device(be, d.data, h->data, lt_tensor_nbytes(h), NULL);
  return d;
}

/* The stash bound to a device (the fake one: CPU twins behind moved pointers, so a host-side
 * touch of device memory crashes) keeps and restores every form as the host stash does, in
 * FIXED and RELATIVE modes: codec streams, masks, 2-bit argmax and its exact fallback, exact
 * copies, batch-norm inputs with the forward's statistics (lossy 4-d, exact 2-d on a device)
 * and a conv input rebuilt from them; entries live in device memory, and a bound stash refuses
 * to move while it holds them. */
TEST_CASE(device_stash_restores_what_the_host_stash_restores) {
  enum { N = 4, C = 6, H = 8, W = 10, NA = 1001, NF = 37 };
  const int64_t n = (int64_t)N * C * H * W;
  lt_backend *dev = test_fake_device(), *cpu = lt_backend_get("cpu", NULL);
  lt_err err = {0};
  float gam[C], bet[C];
  int nb, nr, nc;
  lt_graph *g = bn_relu_conv_graph(C, H, W, 5, 0.2f, 0.5f, gam, bet, &nb, &nr, &nc);
  REQUIRE(g);
  const lt_tensor *pt[2] = {g->values[g->nodes[nb].in[1]].data, g->values[g->nodes[nb].in[2]].data};

  /* the batch norm's input with its batch statistics, ReLU(BN(x)), a plain conv input, argmax
   * indices (2×2, then one of 3×3), a 2-d batch-norm input and a small exact tensor */
  float *xs = malloc(n * sizeof *xs), *rs = malloc(n * sizeof *rs), *ps = malloc(n * sizeof *ps);
  float mean[C], inv[C], x2[N * C * 12], f[NF];
  for (int64_t i = 0; i < n; i++) {
    const int c = (int)(i / (H * W) % C);
    xs[i] = (float)(1.5 * c - 3.0 + (0.3 + c) * lt_rng_normal(&rng));
    const float v = (float)lt_rng_normal(&rng);
    ps[i] = v > 0.3f ? v : 0;
  }
  for (int c = 0; c < C; c++) {
    double s1 = 0, s2 = 0;
    for (int b = 0; b < N; b++)
      for (int i = 0; i < H * W; i++) s1 += xs[((int64_t)b * C + c) * H * W + i];
    const double m = s1 / (N * H * W);
    for (int b = 0; b < N; b++)
      for (int i = 0; i < H * W; i++) {
        const double d = xs[((int64_t)b * C + c) * H * W + i] - m;
        s2 += d * d;
      }
    mean[c] = (float)m;
    inv[c] = (float)(1.0 / sqrt(s2 / (N * H * W) + g->nodes[nb].a.eps));
  }
  for (int64_t i = 0; i < n; i++) {
    const int c = (int)(i / (H * W) % C);
    const float v = lt_tensor_f32(pt[0])[c] * (xs[i] - mean[c]) * inv[c] + lt_tensor_f32(pt[1])[c];
    rs[i] = v > 0 ? v : 0;
  }
  for (int i = 0; i < N * C * 12; i++) x2[i] = (float)(5 + lt_rng_normal(&rng));
  for (int i = 0; i < NF; i++) f[i] = (float)lt_rng_normal(&rng);
  uint8_t am[NA], am3[NA];
  for (int i = 0; i < NA; i++) am[i] = am3[i] = (uint8_t)lt_rng_below(&rng, 4);
  am3[NA / 2] = 5;
  int64_t shape[4] = {N, C, H, W}, cshape[1] = {C}, ashape[1] = {NA}, s2d[2] = {N, C * 12},
          fshape[1] = {NF};
  lt_tensor host[9] = {
      lt_tensor_wrap(LT_F32, 4, shape, xs),   lt_tensor_wrap(LT_F32, 4, shape, rs),
      lt_tensor_wrap(LT_F32, 4, shape, rs),   lt_tensor_wrap(LT_F32, 4, shape, ps),
      lt_tensor_wrap(LT_U8, 1, ashape, am),   lt_tensor_wrap(LT_U8, 1, ashape, am3),
      lt_tensor_wrap(LT_F32, 2, s2d, x2),     lt_tensor_wrap(LT_F32, 1, fshape, f),
      lt_tensor_wrap(LT_F32, 4, shape, ps)};
  const int node[9] = {nb, nr, nc, 20, 21, 22, 23, 24, 25};
  const lt_save_kind kind[9] = {LT_SAVE_BN_INPUT,     LT_SAVE_RELU_OUTPUT, LT_SAVE_WEIGHT_INPUT,
                                LT_SAVE_WEIGHT_INPUT, LT_SAVE_POOL_ARGMAX, LT_SAVE_POOL_ARGMAX,
                                LT_SAVE_BN_INPUT,     LT_SAVE_WEIGHT_INPUT, LT_SAVE_EXACT};
  lt_tensor am_h = lt_tensor_wrap(LT_F32, 1, cshape, mean), ai_h = lt_tensor_wrap(LT_F32, 1, cshape, inv);

  for (int mode = 0; mode < 2; mode++) {
    lt_ac_config cfg = lt_ac_config_default();
    cfg.mode = mode ? LT_AC_RELATIVE : LT_AC_FIXED;
    cfg.eb = 0.05;
    cfg.rel = 0.01;
    cfg.bn_mode = LT_AC_BN_LOSSY;
    float *back[2][9];
    for (int side = 0; side < 2; side++) { /* 0: host, 1: device */
      lt_backend *be = side ? dev : cpu;
      lt_ac_stash *st = lt_ac_stash_new(&cfg, &err);
      REQUIRE(st);
      const lt_stash_policy *p = lt_ac_stash_policy(st);
      REQUIRE(p->bind(p->user, be, &err) == LT_OK);
      lt_tensor t[9], aux_t[2], par[2];
      for (int i = 0; i < 9; i++) t[i] = side ? dev_copy(dev, &host[i]) : host[i];
      aux_t[0] = side ? dev_copy(dev, &am_h) : am_h;
      aux_t[1] = side ? dev_copy(dev, &ai_h) : ai_h;
      par[0] = side ? dev_copy(dev, pt[0]) : *pt[0];
      par[1] = side ? dev_copy(dev, pt[1]) : *pt[1];
      const lt_tensor *aux[LT_MAX_IO] = {&aux_t[0], &aux_t[1]};
      const lt_tensor *in[LT_MAX_IO] = {&t[0], &par[0], &par[1]};
      const int64_t calls = test_fake_device_ac_calls;
      void *h[9];
      for (int i = 0; i < 9; i++)
        REQUIRE(p->store(p->user, g, node[i], 0, kind[i], &t[i], i == 0 ? in : NULL,
                         i == 0 ? aux : NULL, &h[i], &err) == LT_OK);
      if (side) {
        CHECK(test_fake_device_ac_calls - calls >= 6);
        /* bound to the device while it holds entries: it stays there */
        CHECK(p->bind(p->user, cpu, &err) == LT_ERR_INVALID);
        CHECK_STR_CONTAINS(err.msg, "holds tensors");
      }
      lt_ac_report rep;
      lt_ac_stash_report(st, &rep);
      CHECK(rep.peak_held < rep.peak_dense / 2); /* small tensors: metadata weighs */
      for (int i = 0; i < 9; i++) {
        const size_t bytes = lt_tensor_nbytes(&host[i]);
        back[side][i] = malloc(bytes);
        lt_tensor d = t[i];
        d.data = side ? be->vt->alloc(be, bytes, LT_MEM_ACTIVATIONS, NULL) : back[side][i];
        REQUIRE(p->load(p->user, h[i], &d, &err) == LT_OK);
        if (side) {
          be->vt->to_host(be, back[side][i], d.data, bytes, NULL);
          be->vt->free(be, d.data, bytes, LT_MEM_ACTIVATIONS);
        }
      }
      for (int i = 0; i < 9; i++) p->release(p->user, h[i]);
      if (side) {
        CHECK(p->bind(p->user, cpu, &err) == LT_OK); /* nothing held now */
        for (int i = 0; i < 9; i++) be->vt->free(be, t[i].data, lt_tensor_nbytes(&t[i]), LT_MEM_ACTIVATIONS);
        for (int k = 0; k < 2; k++) {
          be->vt->free(be, aux_t[k].data, lt_tensor_nbytes(&aux_t[k]), LT_MEM_ACTIVATIONS);
          be->vt->free(be, par[k].data, lt_tensor_nbytes(&par[k]), LT_MEM_ACTIVATIONS);
        }
      }
      lt_ac_stash_free(st);
    }
    /* The same values on both sides, except the 2-d batch-norm input: lossy on the host, exact
     * on a device. Then what each form promises. */
    for (int i = 0; i < 9; i++) {
      if (i == 6) continue;
      CHECK_MSG(!memcmp(back[0][i], back[1][i], lt_tensor_nbytes(&host[i])),
                "mode %d, tensor %d: the device restored other values than the host", mode, i);
    }
    CHECK(!memcmp(back[1][6], x2, sizeof x2));
    CHECK(!memcmp(back[1][4], am, NA) && !memcmp(back[1][5], am3, NA) && !memcmp(back[1][8], ps, n * 4));
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++) {
      bad += (back[1][1][i] != 0) != (rs[i] > 0);       /* the mask: the sign pattern */
      bad += rs[i] == 0 && back[1][2][i] != 0;         /* zeros exact */
      bad += !(fabsf(back[1][2][i] - rs[i]) <= (mode ? 0.5f : 0.05f));
      bad += !(fabsf(back[1][0][i] - xs[i]) <= 0.2f / inv[i / (H * W) % C] * 1.0001f);
      bad += (ps[i] == 0) != (back[1][3][i] == 0);
    }
    CHECK_MSG(bad == 0, "mode %d: %lld elements out of their form's promise", mode, (long long)bad);
    for (int side = 0; side < 2; side++)
      for (int i = 0; i < 9; i++) free(back[side][i]);
  }
  free(xs), free(rs), free(ps);
  lt_graph_free(g);
}

int main(int argc, char **argv) {
  rng = lt_rng_make(8, 2);
  acts_path = argc > 1 ? argv[1] : NULL;
  RUN(stash_compact_forms_restore_what_backward_needs);
  RUN(stash_argmax_beyond_2x2_stays_exact_and_off_mode_keeps_everything);
  RUN(stash_relative_mode_bound_follows_the_value_range);
  RUN(stash_bn_input_uses_the_forward_statistics);
  RUN(stash_bn_input_normalised_and_conv_input_rebuilt_from_it);
  RUN(stash_relu_output_conv_input_coded_as_its_non_zeros);
  RUN(device_stash_restores_what_the_host_stash_restores);
  RUN(controller_first_window_exact_then_formula_bound);
  RUN(controller_initial_eb_compresses_the_first_window);
  RUN(controller_observed_over_predicted_dw_error_on_relu_conv_stack);
  RUN(controller_observed_over_predicted_dw_error_on_resnet20_layers);
  return test_summary();
}
