/* Fused CPU kernels and the executor's BN+ReLU / Add+ReLU fusion against the unfused path:
 * the fused kernels give the same bits as the two kernels in turn (they do the same float
 * operations), the new accumulate flags against a brute-force double reference, and whole
 * graphs run fused and with lt_exec_opts.no_fuse give identical outputs, parameter gradients
 * and BN running statistics, in training and inference, at odd shapes (batch 1, 1x1 spatial,
 * channel counts that are no multiple of 16). PyTorch's side: ref_fused.c/ref_fused.py (label
 * reference) and engine.ref_resnet20_matches_pytorch, which runs fused by default. */
#include "backend/cpu/kernels.h"
#include "backend/cpu/kernels_fused.h"
#include "lathe/actcomp.h"
#include "lathe/backend.h"
#include "lathe/exec.h"
#include "test.h"

static void fill(float *p, int64_t n, uint64_t stream, float lo, float hi) {
  lt_rng r = lt_rng_make(4321, stream);
  for (int64_t i = 0; i < n; i++) p[i] = lo + (hi - lo) * (float)lt_rng_uniform(&r);
}

static int same_bits(const float *a, const float *b, int64_t n) {
  return memcmp(a, b, sizeof(float) * (size_t)n) == 0;
}

static float *fbuf(int64_t n) { return calloc((size_t)(n ? n : 1), sizeof(float)); }

/* (n, c, hw) shapes: batch 1, 1x1 spatial, c not a multiple of 16, hw around the 16-lane blocks */
static const int shapes[][3] = {{1, 3, 5},  {4, 17, 1},  {1, 1, 1},   {3, 20, 33},
                                {9, 5, 16}, {2, 33, 64}, {16, 7, 47}, {8, 16, 1024}};
#define N_SHAPES (int)(sizeof shapes / sizeof shapes[0])

TEST_CASE(bn_relu_forward_matches_bn_then_relu_bit_for_bit) {
  for (int s = 0; s < N_SHAPES; s++) {
    const int n = shapes[s][0], c = shapes[s][1], hw = shapes[s][2];
    const int64_t cnt = (int64_t)n * c * hw;
    float *x = fbuf(cnt), *y1 = fbuf(cnt), *y2 = fbuf(cnt), *r = fbuf(cnt);
    float g[64], b[64], m1[64], m2[64], i1[64], i2[64], rm1[64], rm2[64], rv1[64], rv2[64];
    fill(x, cnt, (uint64_t)s, -2.0f, 3.0f);
    fill(g, c, 100 + (uint64_t)s, 0.5f, 1.5f);
    fill(b, c, 200 + (uint64_t)s, -0.5f, 0.5f);
    for (int k = 0; k < c; k++) rm1[k] = rm2[k] = 0.1f * (float)k, rv1[k] = rv2[k] = 1.0f;
    lt_cpu_bn_fwd_train(n, c, hw, x, g, b, 1e-5f, 0.1f, y1, m1, i1, rm1, rv1);
    lt_cpu_relu_fwd((size_t)cnt, y1, r);
    lt_cpu_bn_fwd_train_ex(n, c, hw, x, g, b, 1e-5f, 0.1f, y2, m2, i2, rm2, rv2, 1);
    CHECK_MSG(same_bits(r, y2, cnt), "train, shape %d: fused output differs", s);
    CHECK_MSG(same_bits(m1, m2, c) && same_bits(i1, i2, c) && same_bits(rm1, rm2, c) &&
                  same_bits(rv1, rv2, c),
              "train, shape %d: statistics differ", s);
    /* the statistics themselves, against double */
    for (int k = 0; k < c; k++) {
      double sum = 0, sq = 0;
      for (int i = 0; i < n; i++)
        for (int j = 0; j < hw; j++) sum += x[((size_t)i * c + k) * hw + j];
      const double mean = sum / ((double)n * hw);
      for (int i = 0; i < n; i++)
        for (int j = 0; j < hw; j++) {
          const double d = x[((size_t)i * c + k) * hw + j] - mean;
          sq += d * d;
        }
      CHECK_NEAR(m2[k], mean, 1e-5);
      CHECK_NEAR(i2[k], 1.0 / sqrt(sq / ((double)n * hw) + 1e-5), 1e-4 * i2[k]);
    }
    lt_cpu_bn_fwd_infer(n, c, hw, x, g, b, rm1, rv1, 1e-5f, y1);
    lt_cpu_relu_fwd((size_t)cnt, y1, r);
    lt_cpu_bn_fwd_infer_ex(n, c, hw, x, g, b, rm1, rv1, 1e-5f, y2, 1);
    CHECK_MSG(same_bits(r, y2, cnt), "infer, shape %d: fused output differs", s);
    free(x), free(y1), free(y2), free(r);
  }
}

TEST_CASE(bn_relu_backward_matches_relu_then_bn_bit_for_bit) {
  for (int s = 0; s < N_SHAPES; s++) {
    const int n = shapes[s][0], c = shapes[s][1], hw = shapes[s][2];
    const int64_t cnt = (int64_t)n * c * hw;
    float *x = fbuf(cnt), *y = fbuf(cnt), *r = fbuf(cnt), *dy = fbuf(cnt), *gy = fbuf(cnt),
          *dx1 = fbuf(cnt), *dx2 = fbuf(cnt);
    float g[64], b[64], m[64], is[64], dg1[64], dg2[64], db1[64], db2[64];
    fill(x, cnt, 10 + (uint64_t)s, -2.0f, 3.0f);
    fill(dy, cnt, 20 + (uint64_t)s, -1.0f, 1.0f);
    fill(g, c, 30 + (uint64_t)s, 0.5f, 1.5f);
    fill(b, c, 40 + (uint64_t)s, -0.5f, 0.5f);
    lt_cpu_bn_fwd_train(n, c, hw, x, g, b, 1e-5f, 0.1f, y, m, is, NULL, NULL);
    lt_cpu_relu_fwd((size_t)cnt, y, r);
    for (int acc = 0; acc < 2; acc++) {
      fill(dx1, cnt, 50, -1.0f, 1.0f);
      memcpy(dx2, dx1, sizeof(float) * (size_t)cnt);
      fill(dg1, c, 60, -1.0f, 1.0f);
      fill(db1, c, 70, -1.0f, 1.0f);
      memcpy(dg2, dg1, sizeof dg1);
      memcpy(db2, db1, sizeof db1);
      lt_cpu_relu_bwd((size_t)cnt, r, dy, gy, 0);
      lt_cpu_bn_bwd_ex(n, c, hw, x, gy, NULL, g, m, is, dx1, acc, dg1, db1, !acc);
      lt_cpu_bn_bwd_ex(n, c, hw, x, dy, r, g, m, is, dx2, acc, dg2, db2, !acc);
      CHECK_MSG(same_bits(dx1, dx2, cnt) && same_bits(dg1, dg2, c) && same_bits(db1, db2, c),
                "shape %d, accumulate dx %d: fused backward differs", s, acc);
    }
    free(x), free(y), free(r), free(dy), free(gy), free(dx1), free(dx2);
  }
}

/* dx accumulates while dgamma/dbeta are written fresh (and the other way round), against the
 * textbook formula in double. */
TEST_CASE(bn_backward_separate_accumulate_flags_match_double) {
  const int n = 3, c = 5, hw = 7;
  const int64_t cnt = (int64_t)n * c * hw;
  float *x = fbuf(cnt), *y = fbuf(cnt), *dy = fbuf(cnt), *dx = fbuf(cnt), *dx0 = fbuf(cnt);
  float g[5], b[5], m[5], is[5], dg[5], db[5], dg0[5], db0[5];
  fill(x, cnt, 1, -2.0f, 3.0f);
  fill(dy, cnt, 2, -1.0f, 1.0f);
  fill(g, c, 3, 0.5f, 1.5f);
  fill(b, c, 4, -0.5f, 0.5f);
  lt_cpu_bn_fwd_train(n, c, hw, x, g, b, 1e-5f, 0.1f, y, m, is, NULL, NULL);
  for (int acc_dx = 0; acc_dx < 2; acc_dx++)
    for (int acc_p = 0; acc_p < 2; acc_p++) {
      fill(dx0, cnt, 5, -1.0f, 1.0f);
      fill(dg0, c, 6, -1.0f, 1.0f);
      fill(db0, c, 7, -1.0f, 1.0f);
      memcpy(dx, dx0, sizeof(float) * (size_t)cnt);
      memcpy(dg, dg0, sizeof dg);
      memcpy(db, db0, sizeof db);
      lt_cpu_bn_bwd_ex(n, c, hw, x, dy, NULL, g, m, is, dx, acc_dx, dg, db, acc_p);
      for (int k = 0; k < c; k++) {
        double sdy = 0, sdyx = 0;
        const double inv = is[k], N = (double)n * hw;
        for (int i = 0; i < n; i++)
          for (int j = 0; j < hw; j++) {
            const size_t o = ((size_t)i * c + k) * hw + j;
            sdy += dy[o];
            sdyx += dy[o] * (x[o] - m[k]) * inv;
          }
        CHECK_NEAR(db[k], (acc_p ? db0[k] : 0) + sdy, 1e-5);
        CHECK_NEAR(dg[k], (acc_p ? dg0[k] : 0) + sdyx, 1e-5);
        for (int i = 0; i < n; i++)
          for (int j = 0; j < hw; j++) {
            const size_t o = ((size_t)i * c + k) * hw + j;
            const double xh = (x[o] - m[k]) * inv;
            const double want = g[k] * inv * (dy[o] - sdy / N - xh * sdyx / N);
            CHECK_NEAR(dx[o], (acc_dx ? dx0[o] : 0) + want, 1e-5);
          }
      }
    }
  free(x), free(y), free(dy), free(dx), free(dx0);
}

TEST_CASE(add_relu_matches_add_then_relu_bit_for_bit) {
  const int64_t sizes[] = {1, 7, 16, 1000, 4099};
  for (int s = 0; s < 5; s++) {
    const int64_t cnt = sizes[s];
    float *a = fbuf(cnt), *b = fbuf(cnt), *y1 = fbuf(cnt), *y2 = fbuf(cnt), *dy = fbuf(cnt),
          *g = fbuf(cnt), *da1 = fbuf(cnt), *db1 = fbuf(cnt), *da2 = fbuf(cnt), *db2 = fbuf(cnt);
    fill(a, cnt, 1 + (uint64_t)s, -1.0f, 1.0f);
    fill(b, cnt, 2 + (uint64_t)s, -1.0f, 1.0f);
    fill(dy, cnt, 3 + (uint64_t)s, -1.0f, 1.0f);
    if (cnt > 3) a[3] = NAN; /* NaN passes forward, as torch.relu; its gradient is 0 */
    const int64_t shape[1] = {cnt};
    lt_cpu_binary_fwd(LT_BIN_ADD, 1, shape, a, shape, b, shape, g);
    lt_cpu_relu_fwd((size_t)cnt, g, y1);
    lt_cpu_add_relu_fwd((size_t)cnt, a, b, y2);
    CHECK_MSG(same_bits(y1, y2, cnt), "size %lld: forward differs", (long long)cnt);
    for (int flags = 0; flags < 4; flags++) {
      const int acc_a = flags & 1, acc_b = flags >> 1;
      fill(da1, cnt, 8, -1.0f, 1.0f);
      fill(db1, cnt, 9, -1.0f, 1.0f);
      memcpy(da2, da1, sizeof(float) * (size_t)cnt);
      memcpy(db2, db1, sizeof(float) * (size_t)cnt);
      lt_cpu_relu_bwd((size_t)cnt, y2, dy, g, 0);
      lt_cpu_pass_grad((size_t)cnt, g, da1, acc_a);
      lt_cpu_pass_grad((size_t)cnt, g, db1, acc_b);
      lt_cpu_add_relu_bwd((size_t)cnt, y2, dy, da2, acc_a, db2, acc_b);
      CHECK_MSG(same_bits(da1, da2, cnt) && same_bits(db1, db2, cnt),
                "size %lld, flags %d: backward differs", (long long)cnt, flags);
    }
    /* x + x: both gradients into one buffer, a's written first */
    lt_cpu_relu_bwd((size_t)cnt, y2, dy, g, 0);
    lt_cpu_add_relu_bwd((size_t)cnt, y2, dy, da2, 0, da2, 1);
    for (int64_t i = 0; i < cnt; i++) CHECK(da2[i] == g[i] + g[i]);
    free(a), free(b), free(y1), free(y2), free(dy), free(g), free(da1), free(db1), free(da2),
        free(db2);
  }
}

/* ---- whole graphs, fused against no_fuse ----------------------------------------------------- */

static int param(lt_graph *g, const char *name, int ndim, const int64_t *shape, float lo, float hi,
                 int trainable) {
  lt_tensor *t = lt_tensor_new(LT_F32, ndim, shape, LT_MEM_WEIGHTS, NULL);
  fill(lt_tensor_f32(t), lt_tensor_numel(t), (uint64_t)strlen(name) * 31 + (uint64_t)ndim, lo,
       hi);
  return lt_graph_add_param(g, name, t, trainable);
}

static int bn(lt_graph *g, const char *name, int x, int c) {
  char pn[64];
  int64_t shape[1] = {c};
  int in[5] = {x};
  static const char *const sfx[4] = {"w", "b", "rm", "rv"};
  static const float lo[4] = {0.5f, -0.5f, -0.2f, 0.5f}, hi[4] = {1.5f, 0.5f, 0.2f, 1.5f};
  for (int i = 0; i < 4; i++) {
    snprintf(pn, sizeof pn, "%s.%s", name, sfx[i]);
    in[i + 1] = param(g, pn, 1, shape, lo[i], hi[i], i < 2);
  }
  return lt_graph_add_node(g, LT_OP_BATCHNORM, name, in, 5, NULL, NULL);
}

static int conv(lt_graph *g, const char *name, int x, int cin, int cout) {
  char pn[64];
  snprintf(pn, sizeof pn, "%s.w", name);
  int64_t ws[4] = {cout, cin, 3, 3};
  int w = param(g, pn, 4, ws, -0.3f, 0.3f, 1);
  lt_node_attrs a = lt_attrs_conv(3, 1, 1, 1, 1);
  return lt_graph_add_node(g, LT_OP_CONV2D, name, (int[]){x, w}, 2, &a, NULL);
}

/* The same with a bias (folding then scales and shifts it). */
static int conv_bias(lt_graph *g, const char *name, int x, int cin, int cout) {
  char pn[64];
  snprintf(pn, sizeof pn, "%s.w", name);
  int w = param(g, pn, 4, (int64_t[]){cout, cin, 3, 3}, -0.3f, 0.3f, 1);
  snprintf(pn, sizeof pn, "%s.b", name);
  int b = param(g, pn, 1, (int64_t[]){cout}, -0.5f, 0.5f, 1);
  lt_node_attrs a = lt_attrs_conv(3, 1, 1, 1, 1);
  return lt_graph_add_node(g, LT_OP_CONV2D, name, (int[]){x, w, b}, 3, &a, NULL);
}

static int relu(lt_graph *g, const char *name, int x) {
  return lt_graph_add_node(g, LT_OP_RELU, name, &x, 1, NULL, NULL);
}

/* conv-bn-relu, a residual block (conv-bn-relu-conv-bn + shortcut, relu), a conv with bias and
 * a BN whose output feeds both a ReLU and an Add (not fusable), then GAP. c channels of h x w. */
static lt_graph *build(int c, int h, int w) {
  lt_graph *g = lt_graph_new();
  int x = lt_graph_add_input(g, "x", LT_F32, 3, (int64_t[]){3, h, w});
  x = relu(g, "stem.relu", bn(g, "stem.bn", conv(g, "stem.conv", x, 3, c), c));
  int y = relu(g, "b.relu1", bn(g, "b.bn1", conv(g, "b.conv1", x, c, c), c));
  y = bn(g, "b.bn2", conv(g, "b.conv2", y, c, c), c);
  y = relu(g, "b.relu2", lt_graph_add_node(g, LT_OP_ADD, "b.add", (int[]){y, x}, 2, NULL, NULL));
  int z = bn(g, "two.bn", conv_bias(g, "two.conv", y, c, c), c);
  int zr = relu(g, "two.relu", z);
  z = lt_graph_add_node(g, LT_OP_ADD, "two.add", (int[]){zr, z}, 2, NULL, NULL);
  z = lt_graph_add_node(g, LT_OP_GLOBAL_AVGPOOL, "gap", &z, 1, NULL, NULL);
  lt_graph_set_output(g, z);
  return g;
}

/* One forward (and backward in training) with or without fusion; copies the output, the
 * parameter gradients and the parameters (BN running statistics change in training) into out. */
static int64_t run_kinds(lt_graph *g, int batch, lt_mode mode, int no_fuse, unsigned kinds,
                         float *out, int *fused, int *folded) {
  lt_err err = {0};
  lt_exec_opts o = {.no_fuse = no_fuse};
  lt_exec *ex = lt_exec_create(g, batch, mode, lt_backend_get("cpu", NULL), &o, &err);
  if (!ex) {
    fprintf(stderr, "%s\n", err.msg);
    return -1;
  }
  lt_exec_set_fusion(ex, kinds);
  lt_exec_profile_enable(ex, 1);
  lt_tensor *x = lt_exec_input(ex, 0);
  fill(lt_tensor_f32(x), lt_tensor_numel(x), 5, -1.0f, 1.0f);
  int64_t k = 0;
  if (lt_exec_forward(ex, &err)) goto fail;
  lt_tensor *y = lt_exec_output(ex, 0);
  memcpy(out, y->data, lt_tensor_nbytes(y));
  k += lt_tensor_numel(y);
  if (mode == LT_MODE_TRAIN) {
    fill(lt_tensor_f32(lt_exec_output_grad(ex, 0)), lt_tensor_numel(y), 6, -1.0f, 1.0f);
    lt_exec_zero_grads(ex);
    if (lt_exec_backward(ex, &err)) goto fail;
  }
  for (int v = 0; v < g->n_values; v++) {
    if (g->values[v].kind != LT_VALUE_PARAM) continue;
    const lt_tensor *p = g->values[v].data, *gr = lt_exec_param_grad(ex, v);
    memcpy(out + k, p->data, lt_tensor_nbytes(p));
    k += lt_tensor_numel(p);
    if (gr) {
      memcpy(out + k, gr->data, lt_tensor_nbytes(gr));
      k += lt_tensor_numel(gr);
    }
  }
  lt_exec_profile_row rows[64];
  int nr = lt_exec_profile_get(ex, rows, 64, NULL, NULL);
  *fused = 0;
  if (folded) *folded = 0;
  for (int r = 0; r < nr && r < 64; r++) {
    if (strstr(rows[r].op, "+Relu")) *fused += rows[r].nodes;
    if (folded && strstr(rows[r].op, "Conv2d+BatchNorm2d")) *folded += rows[r].nodes;
  }
  lt_exec_free(ex);
  return k;
fail:
  fprintf(stderr, "%s\n", err.msg);
  lt_exec_free(ex);
  return -1;
}

/* The graph planned with fusion and run with the fusion kinds `kinds` on, against the graph
 * planned without it, bit for bit in inference and training: with the ReLU fusion alone both
 * compute the same operations in the same order. fused_pairs: how many pairs the first runs
 * fused. */
static void check_same_bits(unsigned kinds, int fused_pairs) {
  static const int cases[][4] = {{1, 5, 4, 4}, {3, 17, 1, 1}, {2, 20, 5, 7}, {4, 8, 8, 8}};
  for (int cs = 0; cs < 4; cs++) {
    const int batch = cases[cs][0], c = cases[cs][1], h = cases[cs][2], w = cases[cs][3];
    for (int mode = 0; mode < 2; mode++) {
      /* same starting parameters for both runs: training changes running statistics */
      lt_graph *g1 = build(c, h, w), *g2 = build(c, h, w);
      REQUIRE(g1 && g2);
      float *o1 = fbuf(1 << 16), *o2 = fbuf(1 << 16);
      int f1 = -1, f2 = -1;
      int64_t k1 = run_kinds(g1, batch, (lt_mode)mode, 0, kinds, o1, &f1, NULL);
      int64_t k2 = run_kinds(g2, batch, (lt_mode)mode, 1, kinds, o2, &f2, NULL);
      CHECK_MSG(f1 == fused_pairs && f2 == 0, "fused pairs: %d planned with fusion, %d without",
                f1, f2);
      CHECK_MSG(k1 > 0 && k1 == k2 && same_bits(o1, o2, k1),
                "batch %d, %d channels, %dx%d, %s, fusions %u: differs from the unfused plan",
                batch, c, h, w, mode ? "train" : "infer", kinds);
      free(o1), free(o2);
      lt_graph_free(g1);
      lt_graph_free(g2);
    }
  }
}

/* stem bn+relu, bn1+relu1, add+relu2 fuse; two.bn feeds two nodes and stays apart */
TEST_CASE(fused_graph_matches_unfused_graph_bit_for_bit) { check_same_bits(LT_FUSE_RELU, 3); }

/* Inference BatchNorm folding (with the ReLU fusion): every conv-BN pair folds, two.bn too (its
 * output feeds two nodes, but the conv's output only the BN); equal to the unfused run within
 * float rounding (the folded weights round differently). Training never folds. */
TEST_CASE(folded_batchnorm_matches_unfused_graph) {
  static const int cases[][4] = {{1, 5, 4, 4}, {3, 17, 1, 1}, {2, 20, 5, 7}, {4, 8, 8, 8}};
  for (int cs = 0; cs < 4; cs++) {
    const int batch = cases[cs][0], c = cases[cs][1], h = cases[cs][2], w = cases[cs][3];
    for (int mode = 0; mode < 2; mode++) {
      lt_graph *g1 = build(c, h, w), *g2 = build(c, h, w);
      REQUIRE(g1 && g2);
      float *o1 = fbuf(1 << 16), *o2 = fbuf(1 << 16);
      int f1 = -1, f2 = -1, d1 = -1, d2 = -1;
      int64_t k1 = run_kinds(g1, batch, (lt_mode)mode, 0, LT_FUSE_ALL, o1, &f1, &d1);
      int64_t k2 = run_kinds(g2, batch, (lt_mode)mode, 1, LT_FUSE_ALL, o2, &f2, &d2);
      REQUIRE(k1 > 0 && k1 == k2);
      CHECK_MSG(d1 == (mode == LT_MODE_INFER ? 4 : 0) && d2 == 0, "folded: %d and %d", d1, d2);
      CHECK_MSG(f1 == 3 && f2 == 0, "fused pairs: %d with fusion, %d without", f1, f2);
      double worst = 0, big = 0;
      for (int64_t i = 0; i < k1; i++) {
        worst = fmax(worst, fabs(o1[i] - o2[i]));
        big = fmax(big, fabs(o2[i]));
      }
      CHECK_MSG(worst <= 1e-5 * big, "batch %d, %d channels, %dx%d, %s: differs by %g of %g",
                batch, c, h, w, mode ? "train" : "infer", worst, big);
      free(o1), free(o2);
      lt_graph_free(g1);
      lt_graph_free(g2);
    }
  }
}

/* A fused head's own output shares its ReLU's buffer (exec.c plan_alias): with the fusion turned
 * off at run time the head writes it and the ReLU overwrites it in place, which must give the
 * unfused graph's results bit for bit, forward and backward. The plan then holds no more forward
 * memory than the unfused one (before the sharing it held a third buffer at each fused head). */
TEST_CASE(fusion_off_at_run_time_matches_unfused_graph_in_shared_buffers) {
  check_same_bits(0, 0);
  /* Forward memory (activations and saved arenas), fused against unfused planning, ResNet-block
   * shapes: in training with a stash that keeps nothing in its forward buffers (activation
   * compression, batch-norm inputs lossy), and in inference, where the BNs fold into their convs
   * and the residual Add runs in the conv before it (those convs' own outputs are dead too). */
  lt_graph *g = build(16, 32, 32);
  REQUIRE(g);
  lt_err err = {0};
  for (int mode = 0; mode < 2; mode++) {
    int64_t fwd[2];
    for (int no_fuse = 0; no_fuse < 2; no_fuse++) {
      lt_ac_config cfg = lt_ac_config_default();
      cfg.mode = LT_AC_FIXED;
      cfg.eb = 0.01;
      cfg.bn_mode = LT_AC_BN_LOSSY;
      lt_ac_stash *sp = lt_ac_stash_new(&cfg, &err);
      REQUIRE(sp);
      lt_exec_opts o = {.no_fuse = no_fuse, .no_split = 1};
      if (mode == LT_MODE_TRAIN) o.stash = lt_ac_stash_policy(sp);
      lt_exec *ex = lt_exec_create(g, 8, (lt_mode)mode, lt_backend_get("cpu", NULL), &o, &err);
      REQUIRE(ex);
      lt_exec_plan_stats st;
      lt_exec_plan_stats_get(ex, &st);
      fwd[no_fuse] = st.activations + st.saved;
      lt_exec_free(ex);
      lt_ac_stash_free(sp);
    }
    CHECK_MSG(fwd[0] <= fwd[1], "%s forward memory: %lld bytes fused, %lld unfused",
              mode == LT_MODE_TRAIN ? "training" : "inference", (long long)fwd[0],
              (long long)fwd[1]);
  }
  lt_graph_free(g);
}

/* A forward hook sees each node's own output: the BN's, negative values included. */
static int hook_negatives;
static void hook(void *user, lt_exec *ex, int node, const lt_tensor *out) {
  const lt_graph *g = user;
  if (g->nodes[node].op != LT_OP_BATCHNORM) return;
  for (int64_t i = 0; i < lt_tensor_numel(out); i++) hook_negatives += lt_tensor_f32(out)[i] < 0;
}

TEST_CASE(forward_hook_sees_unfused_outputs) {
  lt_graph *g = build(6, 4, 4);
  lt_err err = {0};
  lt_exec *ex = lt_exec_create(g, 2, LT_MODE_TRAIN, lt_backend_get("cpu", NULL), NULL, &err);
  REQUIRE(ex);
  fill(lt_tensor_f32(lt_exec_input(ex, 0)), lt_tensor_numel(lt_exec_input(ex, 0)), 5, -1, 1);
  float before[6], after[6];
  REQUIRE(lt_exec_forward(ex, &err) == LT_OK);
  memcpy(before, lt_exec_output(ex, 0)->data, sizeof before);
  hook_negatives = 0;
  lt_exec_set_forward_hook(ex, hook, g);
  REQUIRE(lt_exec_forward(ex, &err) == LT_OK);
  memcpy(after, lt_exec_output(ex, 0)->data, sizeof after);
  CHECK(hook_negatives > 0);
  /* running statistics moved between the two forwards, batch statistics did not */
  CHECK(same_bits(before, after, 6));
  lt_exec_free(ex);
  lt_graph_free(g);
}

int main(void) {
  RUN(bn_relu_forward_matches_bn_then_relu_bit_for_bit);
  RUN(bn_relu_backward_matches_relu_then_bn_bit_for_bit);
  RUN(bn_backward_separate_accumulate_flags_match_double);
  RUN(add_relu_matches_add_then_relu_bit_for_bit);
  RUN(fused_graph_matches_unfused_graph_bit_for_bit);
  RUN(folded_batchnorm_matches_unfused_graph);
  RUN(fusion_off_at_run_time_matches_unfused_graph_in_shared_buffers);
  RUN(forward_hook_sees_unfused_outputs);
  return test_summary();
}
