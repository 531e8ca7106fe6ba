/* Executor: finite-difference gradients through every op, fan-out and micro-batch gradient
 * accumulation, no allocation in a training step, buffer reuse, and the stash policy hook. */
#include "lathe/backend.h"
#include "lathe/exec.h"
#include "lathe/zoo.h"
#include "test.h"

#include "backend/cpu/kernels.h" /* LT_UPSAMPLE_* */

static void fill_uniform(float *p, int64_t n, uint64_t stream, float lo, float hi) {
  lt_rng r = lt_rng_make(1234, stream);
  for (int64_t i = 0; i < n; i++) p[i] = lo + (hi - lo) * (float)lt_rng_uniform(&r);
}

static int add_param(lt_graph *g, const char *name, int ndim, const int64_t *shape, float lo,
                     float hi) {
  lt_tensor *t = lt_tensor_new(LT_F32, ndim, shape, LT_MEM_WEIGHTS, NULL);
  fill_uniform(lt_tensor_f32(t), lt_tensor_numel(t), (uint64_t)lt_shape_numel(ndim, shape) * 7 +
                                                          (uint64_t)strlen(name),
               lo, hi);
  return lt_graph_add_param(g, name, t, 1);
}

/* Loss = sum(out * r) with fixed r, so dL/dout = r. */
static double exec_loss(lt_exec *ex, const float *r) {
  lt_err err = {0};
  if (lt_exec_forward(ex, &err)) {
    fprintf(stderr, "forward: %s\n", err.msg);
    return NAN;
  }
  lt_tensor *y = lt_exec_output(ex, 0);
  double l = 0;
  for (int64_t i = 0; i < lt_tensor_numel(y); i++) l += (double)lt_tensor_f32(y)[i] * r[i];
  return l;
}

/* Checks every trainable parameter's gradient against central differences at up to 16 spread
 * positions, with central differences of step eps. The graph's input 0 is filled with values in [-1, 1]. */
static void fd_check(lt_graph *g, int batch, const char *label, float eps, double tol) {
  lt_err err = {0};
  lt_exec *ex = lt_exec_create(g, batch, LT_MODE_TRAIN, lt_backend_get("cpu", NULL), NULL, &err);
  CHECK_MSG(ex, "%s: %s", label, err.msg);
  if (!ex) return;
  lt_tensor *x = lt_exec_input(ex, 0);
  fill_uniform(lt_tensor_f32(x), lt_tensor_numel(x), 99, -1, 1);
  lt_tensor *y = lt_exec_output(ex, 0);
  int64_t ny = lt_tensor_numel(y);
  float *r = malloc(sizeof(float) * (size_t)ny);
  fill_uniform(r, ny, 77, -1, 1);
  exec_loss(ex, r);
  memcpy(lt_exec_output_grad(ex, 0)->data, r, sizeof(float) * (size_t)ny);
  lt_exec_zero_grads(ex);
  if (lt_exec_backward(ex, &err)) {
    CHECK_MSG(0, "%s: backward: %s", label, err.msg);
    goto done;
  }
  for (int v = 0; v < g->n_values; v++) {
    lt_value *pv = &g->values[v];
    if (pv->kind != LT_VALUE_PARAM || !pv->trainable) continue;
    lt_tensor *gr = lt_exec_param_grad(ex, v);
    CHECK_MSG(gr, "%s: no gradient for %s", label, pv->name);
    if (!gr) continue;
    float *w = lt_tensor_f32(pv->data);
    int64_t n = lt_tensor_numel(pv->data), stride = n > 16 ? n / 16 : 1;
    for (int64_t j = 0; j < n; j += stride) {
      const float saved = w[j];
      w[j] = saved + eps;
      double lp = exec_loss(ex, r);
      w[j] = saved - eps;
      double lm = exec_loss(ex, r);
      w[j] = saved;
      double fd = (lp - lm) / (2.0 * eps), an = lt_tensor_f32(gr)[j];
      CHECK_MSG(fabs(fd - an) <= tol * (1.0 + fabs(fd)), "%s: d/d %s[%lld]: analytic %.6g, finite "
                "difference %.6g", label, pv->name, (long long)j, an, fd);
    }
  }
done:
  free(r);
  lt_exec_free(ex);
}

/* input (c,h,w) + trainable offset p: the op under test then sees a trainable input, so its
 * input gradient shows up as p's gradient. */
static int shifted_input(lt_graph *g, int c, int h, int w) {
  lt_err err = {0};
  int x = lt_graph_add_input(g, "input", LT_F32, 3, (int64_t[]){c, h, w});
  int p = add_param(g, "shift", 3, (int64_t[]){c, h, w}, -0.5f, 0.5f);
  return lt_graph_add_node(g, LT_OP_ADD, "shifted", (int[]){x, p}, 2, NULL, &err);
}

static lt_graph *single_op(lt_op_type op, const lt_node_attrs *a, int c, int h, int w) {
  lt_err err = {0};
  lt_graph *g = lt_graph_new();
  int x = shifted_input(g, c, h, w);
  int y = lt_graph_add_node(g, op, "op", &x, 1, a, &err);
  if (y < 0) fprintf(stderr, "%s\n", err.msg);
  lt_graph_set_output(g, y);
  return g;
}

static void fd_single(lt_op_type op, const lt_node_attrs *a, int c, int h, int w) {
  lt_graph *g = single_op(op, a, c, h, w);
  /* Max pooling has kinks where two window values tie: a small step keeps clear of them. */
  fd_check(g, 2, lt_op_name(op), op == LT_OP_MAXPOOL ? 1e-3f : 1e-2f, 2e-2);
  lt_graph_free(g);
}

TEST_CASE(gradcheck_pointwise_pool_and_shape_ops) {
  lt_node_attrs a = lt_attrs_default();
  fd_single(LT_OP_RELU, &a, 3, 5, 5);
  a.alpha = 0.1f;
  fd_single(LT_OP_LEAKY_RELU, &a, 3, 5, 5);
  fd_single(LT_OP_SIGMOID, &a, 3, 5, 5);
  fd_single(LT_OP_TANH, &a, 3, 5, 5);
  a.lo = -0.5f, a.hi = 0.6f;
  fd_single(LT_OP_CLIP, &a, 3, 5, 5);
  fd_single(LT_OP_SOFTMAX, &a, 3, 5, 5);
  fd_single(LT_OP_IDENTITY, &a, 3, 5, 5);
  fd_single(LT_OP_FLATTEN, &a, 3, 5, 5);
  fd_single(LT_OP_GLOBAL_AVGPOOL, &a, 3, 5, 5);
  lt_node_attrs mp = lt_attrs_pool(2, 2, 0);
  mp.ceil_mode = 1;
  fd_single(LT_OP_MAXPOOL, &mp, 3, 5, 5);
  lt_node_attrs ap = lt_attrs_pool(3, 2, 1);
  fd_single(LT_OP_AVGPOOL, &ap, 3, 5, 5);
  lt_node_attrs up = lt_attrs_default();
  up.mode = LT_UPSAMPLE_NEAREST, up.out_h = 10, up.out_w = 7;
  fd_single(LT_OP_UPSAMPLE, &up, 2, 5, 4);
  up.mode = LT_UPSAMPLE_BILINEAR, up.align_corners = 1;
  fd_single(LT_OP_UPSAMPLE, &up, 2, 5, 4);
  lt_node_attrs sl = lt_attrs_default();
  sl.n_ints = 9;
  int64_t s[9] = {1, 0, -1, 3, INT64_MAX, INT64_MIN, 1, 2, -2};
  memcpy(sl.ints, s, sizeof s);
  fd_single(LT_OP_SLICE, &sl, 3, 5, 5);
  lt_node_attrs pd = lt_attrs_default();
  pd.n_ints = 6;
  int64_t p[6] = {1, 0, 2, 1, -1, 0};
  memcpy(pd.ints, p, sizeof p);
  pd.value = 0.5f;
  fd_single(LT_OP_PAD, &pd, 3, 5, 5);
  lt_node_attrs rs = lt_attrs_default();
  rs.n_ints = 2, rs.ints[0] = 5, rs.ints[1] = -1;
  fd_single(LT_OP_RESHAPE, &rs, 3, 5, 5);
  lt_node_attrs tr = lt_attrs_default();
  tr.n_ints = 3, tr.ints[0] = 2, tr.ints[1] = 0, tr.ints[2] = 1;
  fd_single(LT_OP_TRANSPOSE, &tr, 3, 4, 5);
}

TEST_CASE(gradcheck_conv_linear_batchnorm) {
  lt_err err = {0};
  lt_graph *g = lt_graph_new();
  int x = shifted_input(g, 4, 7, 6);
  int w = add_param(g, "conv.weight", 4, (int64_t[]){6, 2, 3, 3}, -0.3f, 0.3f);
  int b = add_param(g, "conv.bias", 1, (int64_t[]){6}, -0.3f, 0.3f);
  lt_node_attrs ca = lt_attrs_conv(3, 2, 1, 1, 2);
  ca.pads[2] = 0; /* odd padding */
  int y = lt_graph_add_node(g, LT_OP_CONV2D, "conv", (int[]){x, w, b}, 3, &ca, &err);
  int gm = add_param(g, "bn.weight", 1, (int64_t[]){6}, 0.5f, 1.5f);
  int bt = add_param(g, "bn.bias", 1, (int64_t[]){6}, -0.5f, 0.5f);
  int rm = lt_graph_add_param(g, "bn.running_mean",
                              lt_tensor_new(LT_F32, 1, (int64_t[]){6}, LT_MEM_WEIGHTS, NULL), 0);
  lt_tensor *one = lt_tensor_new(LT_F32, 1, (int64_t[]){6}, LT_MEM_WEIGHTS, NULL);
  for (int i = 0; i < 6; i++) lt_tensor_f32(one)[i] = 1;
  int rv = lt_graph_add_param(g, "bn.running_var", one, 0);
  y = lt_graph_add_node(g, LT_OP_BATCHNORM, "bn", (int[]){y, gm, bt, rm, rv}, 5, NULL, &err);
  int tw = add_param(g, "up.weight", 4, (int64_t[]){6, 2, 2, 3}, -0.3f, 0.3f);
  int tb = add_param(g, "up.bias", 1, (int64_t[]){2}, -0.3f, 0.3f);
  lt_node_attrs ta = lt_attrs_conv(0, 2, 1, 1, 1);
  ta.kernel[0] = 2, ta.kernel[1] = 3, ta.out_pad[0] = 1;
  y = lt_graph_add_node(g, LT_OP_CONV_TRANSPOSE2D, "up", (int[]){y, tw, tb}, 3, &ta, &err);
  y = lt_graph_add_node(g, LT_OP_FLATTEN, "flat", &y, 1, NULL, &err);
  REQUIRE(y >= 0);
  int64_t k = g->values[y].shape[0];
  int lw = add_param(g, "fc.weight", 2, (int64_t[]){5, k}, -0.2f, 0.2f);
  int lb = add_param(g, "fc.bias", 1, (int64_t[]){5}, -0.2f, 0.2f);
  y = lt_graph_add_node(g, LT_OP_LINEAR, "fc", (int[]){y, lw, lb}, 3, NULL, &err);
  CHECK_MSG(y >= 0, "%s", err.msg);
  lt_graph_set_output(g, y);
  fd_check(g, 3, "conv-bn-convT-linear", 1e-2f, 2e-2);
  lt_graph_free(g);
}

/* a feeds four consumers (one of them twice): its gradient is the sum of all contributions. */
TEST_CASE(gradcheck_fan_out_and_broadcast_binary_ops) {
  lt_err err = {0};
  lt_graph *g = lt_graph_new();
  int a = shifted_input(g, 3, 4, 4);
  int s = add_param(g, "scale", 3, (int64_t[]){3, 1, 1}, 0.5f, 1.5f);
  int d = add_param(g, "den", 4, (int64_t[]){1, 1, 4, 1}, 1.5f, 2.5f);
  int m = lt_graph_add_node(g, LT_OP_MUL, "mul", (int[]){a, s}, 2, NULL, &err);
  int q = lt_graph_add_node(g, LT_OP_DIV, "div", (int[]){a, d}, 2, NULL, &err);
  int t = lt_graph_add_node(g, LT_OP_TANH, "tanh", &a, 1, NULL, &err);
  int sq = lt_graph_add_node(g, LT_OP_MUL, "square", (int[]){a, a}, 2, NULL, &err);
  int u = lt_graph_add_node(g, LT_OP_SUB, "sub", (int[]){m, q}, 2, NULL, &err);
  lt_node_attrs cat = lt_attrs_default();
  cat.axis = -2;
  int c = lt_graph_add_node(g, LT_OP_CONCAT, "cat", (int[]){u, t, sq}, 3, &cat, &err);
  CHECK_MSG(c >= 0, "%s", err.msg);
  lt_graph_set_output(g, c);
  fd_check(g, 2, "fan-out", 1e-2f, 2e-2);
  lt_graph_free(g);
}

static void run_step(lt_exec *ex, const float *r, int zero) {
  lt_err err = {0};
  CHECK(lt_exec_forward(ex, &err) == LT_OK);
  lt_tensor *dy = lt_exec_output_grad(ex, 0);
  memcpy(dy->data, r, lt_tensor_nbytes(dy));
  if (zero) lt_exec_zero_grads(ex);
  CHECK_MSG(lt_exec_backward(ex, &err) == LT_OK, "%s", err.msg);
}

static lt_exec *smallcnn_exec(lt_graph **g, int batch, const lt_exec_opts *o) {
  lt_err err = {0};
  lt_zoo_opts zo = {.seed = 3};
  *g = lt_zoo_build("smallcnn", &zo, &err);
  if (!*g) return NULL;
  lt_exec *ex = lt_exec_create(*g, batch, LT_MODE_TRAIN, lt_backend_get("cpu", NULL), o, &err);
  if (!ex) {
    fprintf(stderr, "%s\n", err.msg);
    return NULL;
  }
  lt_tensor *x = lt_exec_input(ex, 0);
  fill_uniform(lt_tensor_f32(x), lt_tensor_numel(x), 5, 0, 1);
  return ex;
}

TEST_CASE(exec_gradients_accumulate_until_zeroed) {
  lt_graph *g;
  lt_exec *ex = smallcnn_exec(&g, 4, NULL);
  REQUIRE(ex);
  float r[40];
  fill_uniform(r, 40, 8, -1, 1);
  int w = lt_graph_find_value(g, "block1.conv.weight");
  lt_tensor *gw = lt_exec_param_grad(ex, w);
  REQUIRE(gw);
  int64_t n = lt_tensor_numel(gw);
  float *once = malloc(sizeof(float) * (size_t)n);
  /* BN running stats change between steps but not training-mode outputs: same gradient twice. */
  run_step(ex, r, 1);
  memcpy(once, gw->data, sizeof(float) * (size_t)n);
  run_step(ex, r, 0);
  double worst = 0;
  for (int64_t i = 0; i < n; i++) {
    double d = fabs(lt_tensor_f32(gw)[i] - 2.0 * once[i]);
    if (d > worst) worst = d;
  }
  CHECK_NEAR(worst, 0, 1e-5);
  lt_exec_zero_grads(ex);
  CHECK(lt_tensor_f32(gw)[0] == 0 && lt_tensor_f32(gw)[n - 1] == 0);
  free(once);
  lt_exec_free(ex);
  lt_graph_free(g);
}

TEST_CASE(exec_training_step_allocates_nothing) {
  lt_graph *g;
  lt_exec *ex = smallcnn_exec(&g, 8, NULL);
  REQUIRE(ex);
  float r[80];
  fill_uniform(r, 80, 9, -1, 1);
  run_step(ex, r, 1);
  lt_mem_reset_peaks();
  lt_mem_stats before, after;
  lt_mem_get_stats(&before);
  run_step(ex, r, 1);
  lt_mem_get_stats(&after);
  for (int c = 0; c < LT_MEM_COUNT; c++) {
    CHECK_MSG(after.current[c] == before.current[c], "%s changed by %lld bytes in a step",
              lt_mem_cat_name((lt_mem_cat)c),
              (long long)(after.current[c] - before.current[c]));
    CHECK_MSG(after.peak[c] == before.current[c], "%s peaked %lld bytes above the plan",
              lt_mem_cat_name((lt_mem_cat)c), (long long)(after.peak[c] - before.current[c]));
  }
  lt_exec_free(ex);
  lt_graph_free(g);
}

/* The same ResNet-20 step with and without reuse: identical results, less memory with reuse. */
TEST_CASE(exec_buffer_reuse_cuts_activation_memory_and_changes_nothing) {
  lt_err err = {0};
  lt_graph *g = lt_zoo_build("resnet20", &(lt_zoo_opts){.seed = 4}, &err);
  REQUIRE(g);
  lt_exec_opts plain = {0}, noreuse = {.no_reuse = 1};
  lt_exec *a = lt_exec_create(g, 4, LT_MODE_TRAIN, lt_backend_get("cpu", NULL), &plain, &err);
  lt_exec *b = lt_exec_create(g, 4, LT_MODE_TRAIN, lt_backend_get("cpu", NULL), &noreuse, &err);
  REQUIRE(a && b);
  lt_exec_plan_stats sa, sb;
  lt_exec_plan_stats_get(a, &sa);
  lt_exec_plan_stats_get(b, &sb);
  int64_t ra = sa.activations + sa.saved + sa.gradients, rb = sb.activations + sb.saved + sb.gradients;
  printf("  resnet20 batch 4: activations+saved+gradients %lld bytes with reuse, %lld without "
         "(%.2fx)\n", (long long)ra, (long long)rb, (double)rb / (double)ra);
  CHECK(ra * 2 < rb);
  CHECK(sa.saved == sb.saved); /* the stash crosses the turn: nothing to share */
  int64_t dense, held;
  lt_exec_saved_bytes(a, &dense, &held);
  CHECK(dense == held && held >= sa.saved);
  float r[40];
  fill_uniform(r, 40, 10, -1, 1);
  for (int k = 0; k < 2; k++) {
    lt_exec *ex = k ? b : a;
    lt_tensor *x = lt_exec_input(ex, 0);
    fill_uniform(lt_tensor_f32(x), lt_tensor_numel(x), 11, -1, 1);
  }
  /* Both executors update the same BN running stats; training-mode outputs do not read them. */
  run_step(a, r, 1);
  run_step(b, r, 1);
  for (int i = 0; i < 40; i++)
    CHECK_NEAR(lt_tensor_f32(lt_exec_output(a, 0))[i], lt_tensor_f32(lt_exec_output(b, 0))[i], 1e-5);
  for (int v = 0; v < g->n_values; v++) {
    lt_tensor *ga = lt_exec_param_grad(a, v), *gb = lt_exec_param_grad(b, v);
    if (!ga) continue;
    REQUIRE(gb);
    double worst = 0;
    for (int64_t i = 0; i < lt_tensor_numel(ga); i++)
      worst = fmax(worst, fabs(lt_tensor_f32(ga)[i] - lt_tensor_f32(gb)[i]));
    CHECK_MSG(worst < 1e-5, "%s differs by %g", g->values[v].name, worst);
  }
  /* Without reuse every activation stays readable; with reuse early ones are recycled. */
  int early = lt_graph_find_value(g, "layer1.0.conv1");
  CHECK(lt_exec_value(b, early) != NULL);
  lt_exec_free(a);
  lt_exec_free(b);
  lt_graph_free(g);
}

/* A policy that copies every saved tensor, and records what it was offered. */
typedef struct copy_policy {
  int keep_relu; /* keeps_buffer() says 1 for ReLU outputs: backward reads them in place */
  int stores, loads, releases, observes;
  int kinds[5];
  int observe_bad;
  const lt_graph *g;
} copy_policy;

typedef struct copy_handle {
  void *data;
  size_t bytes;
} copy_handle;

static int cp_keeps(void *u, const lt_graph *g, int node, int slot, lt_save_kind kind) {
  return ((copy_policy *)u)->keep_relu && kind == LT_SAVE_RELU_OUTPUT;
}
static lt_status cp_store(void *u, const lt_graph *g, int node, int slot, lt_save_kind kind,
                          const lt_tensor *t, const lt_tensor *const *in,
                          const lt_tensor *const *aux, void **handle, lt_err *err) {
  copy_policy *p = u;
  p->stores++;
  p->kinds[kind]++;
  /* Kinds match what each op declares. */
  lt_op_type op = g->nodes[node].op;
  lt_save_kind want = op == LT_OP_CONV2D || op == LT_OP_LINEAR ? LT_SAVE_WEIGHT_INPUT
                      : op == LT_OP_RELU                        ? LT_SAVE_RELU_OUTPUT
                      : op == LT_OP_MAXPOOL                     ? LT_SAVE_POOL_ARGMAX
                      : op == LT_OP_BATCHNORM                   ? LT_SAVE_BN_INPUT
                                                                : LT_SAVE_EXACT;
  if (kind != want) p->observe_bad++;
  /* The node's inputs come along: a conv/linear input is its first one, the weight the graph's. */
  if (kind == LT_SAVE_WEIGHT_INPUT &&
      (!in || !in[0] || in[0]->data != t->data || !in[1] ||
       in[1]->data != g->values[g->nodes[node].in[1]].data->data))
    p->observe_bad++;
  copy_handle *h = malloc(sizeof *h);
  if (p->keep_relu && kind == LT_SAVE_RELU_OUTPUT) { /* a view: nothing to copy */
    h->data = NULL;
    h->bytes = 0;
    *handle = h;
    return LT_OK;
  }
  h->bytes = lt_tensor_nbytes(t);
  h->data = lt_alloc(LT_MEM_SAVED, h->bytes, err);
  memcpy(h->data, t->data, h->bytes);
  *handle = h;
  return LT_OK;
}
static lt_status cp_load(void *u, void *handle, lt_tensor *dst, lt_err *err) {
  copy_policy *p = u;
  copy_handle *h = handle;
  p->loads++;
  if (!h->data) return lt_errorf(err, LT_ERR_INTERNAL, "load() of a slot kept in place");
  memcpy(dst->data, h->data, h->bytes);
  return LT_OK;
}
static void cp_release(void *u, void *handle) {
  copy_policy *p = u;
  copy_handle *h = handle;
  p->releases++;
  lt_free(LT_MEM_SAVED, h->data, h->bytes);
  free(h);
}
static void cp_observe(void *u, const lt_graph *g, int node, const lt_tensor *x,
                       const lt_tensor *dy, const lt_tensor *dw) {
  copy_policy *p = u;
  p->observes++;
  if (!x || !dy || !dw || dw->ndim != g->values[g->nodes[node].in[1]].ndim) p->observe_bad++;
}

TEST_CASE(stash_policy_that_copies_gives_identical_gradients) {
  lt_graph *g1, *g2;
  copy_policy cp = {0};
  lt_stash_policy pol = {.user = &cp, .keeps_buffer = cp_keeps, .store = cp_store,
                         .load = cp_load, .release = cp_release, .observe = cp_observe};
  lt_exec_opts o = {.stash = &pol};
  lt_exec *a = smallcnn_exec(&g1, 4, NULL), *b = smallcnn_exec(&g2, 4, &o);
  REQUIRE(a && b);
  float r[40];
  fill_uniform(r, 40, 12, -1, 1);
  run_step(a, r, 1);
  run_step(b, r, 1);
  /* smallcnn: 2 conv + 2 linear inputs, 2 BN inputs, 3 ReLU outputs, 2 pool argmaxes. */
  CHECK(cp.kinds[LT_SAVE_WEIGHT_INPUT] == 4);
  CHECK(cp.kinds[LT_SAVE_BN_INPUT] == 2);
  CHECK(cp.kinds[LT_SAVE_RELU_OUTPUT] == 3);
  CHECK(cp.kinds[LT_SAVE_POOL_ARGMAX] == 2);
  CHECK(cp.stores == 11 && cp.loads == 11 && cp.releases == 11);
  CHECK(cp.observes == 4 && cp.observe_bad == 0);
  int64_t d1, h1, d2, h2;
  lt_exec_saved_bytes(a, &d1, &h1);
  lt_exec_saved_bytes(b, &d2, &h2);
  CHECK(d1 == d2 && h1 == d1);
  CHECK(h2 > 0); /* the copies: ReLU outputs twice (mask for ReLU, input for the next layer) */
  for (int v = 0; v < g1->n_values; v++) {
    lt_tensor *ga = lt_exec_param_grad(a, v), *gb = lt_exec_param_grad(b, v);
    if (!ga) continue;
    REQUIRE(gb);
    CHECK_MSG(memcmp(ga->data, gb->data, lt_tensor_nbytes(ga)) == 0, "%s differs",
              g1->values[v].name);
  }
  /* The copying executor keeps less in its own saved arena (only BN statistics). */
  lt_exec_plan_stats sa, sb;
  lt_exec_plan_stats_get(a, &sa);
  lt_exec_plan_stats_get(b, &sb);
  CHECK(sb.saved < sa.saved);
  lt_exec_free(a);
  lt_exec_free(b);
  CHECK(cp.releases == cp.stores);
  lt_graph_free(g1);
  lt_graph_free(g2);
}

/* Mixed: ReLU outputs stay in their forward buffers (no load), the rest is copied. */
TEST_CASE(stash_policy_keeping_some_buffers_gives_identical_gradients) {
  lt_graph *g1, *g2;
  copy_policy cp = {.keep_relu = 1};
  lt_stash_policy pol = {.user = &cp, .keeps_buffer = cp_keeps, .store = cp_store,
                         .load = cp_load, .release = cp_release};
  lt_exec_opts o = {.stash = &pol};
  lt_exec *a = smallcnn_exec(&g1, 4, NULL), *b = smallcnn_exec(&g2, 4, &o);
  REQUIRE(a && b);
  float r[40];
  fill_uniform(r, 40, 15, -1, 1);
  for (int step = 0; step < 2; step++) {
    run_step(a, r, 1);
    run_step(b, r, 1);
  }
  CHECK(cp.stores == 22 && cp.loads == 16 && cp.releases == 22); /* 3 ReLU slots kept, twice */
  for (int v = 0; v < g1->n_values; v++) {
    lt_tensor *ga = lt_exec_param_grad(a, v), *gb = lt_exec_param_grad(b, v);
    if (ga) CHECK_MSG(gb && memcmp(ga->data, gb->data, lt_tensor_nbytes(ga)) == 0, "%s differs",
                      g1->values[v].name);
  }
  /* Held = the kept ReLU outputs (also read by the next layer, which the policy copies) plus
   * BN statistics in place, plus the copies. */
  int64_t dense, held;
  lt_exec_forward(b, NULL);
  lt_exec_saved_bytes(b, &dense, &held);
  lt_exec_plan_stats sb;
  lt_exec_plan_stats_get(b, &sb);
  CHECK(sb.saved > 0 && held > sb.saved);
  lt_exec_free(a);
  lt_exec_free(b);
  lt_graph_free(g1);
  lt_graph_free(g2);
}

TEST_CASE(exec_inference_mode_refuses_backward) {
  lt_err err = {0};
  lt_graph *g = lt_zoo_build("smallcnn", NULL, &err);
  REQUIRE(g);
  lt_exec *ex = lt_exec_create(g, 2, LT_MODE_INFER, lt_backend_get("cpu", NULL), NULL, &err);
  REQUIRE(ex);
  CHECK(lt_exec_forward(ex, &err) == LT_OK);
  CHECK(lt_exec_output_grad(ex, 0) == NULL);
  CHECK(lt_exec_backward(ex, &err) == LT_ERR_INVALID);
  CHECK_STR_CONTAINS(err.msg, "inference mode");
  int64_t dense, held;
  lt_exec_saved_bytes(ex, &dense, &held);
  CHECK(dense == 0 && held == 0);
  lt_exec_free(ex);
  CHECK(lt_backend_get("tpu", &err) == NULL);
  CHECK_STR_CONTAINS(err.msg, "unknown backend");
  lt_graph_free(g);
}

/* Dropout: the mask is a function of (seed, node, step); backward routes through it. */
TEST_CASE(exec_dropout_mask_matches_in_backward) {
  lt_err err = {0};
  lt_node_attrs a = lt_attrs_default();
  a.p = 0.25f;
  lt_graph *g = single_op(LT_OP_DROPOUT, &a, 4, 8, 8);
  lt_exec_opts o = {.seed = 5};
  lt_exec *ex = lt_exec_create(g, 2, LT_MODE_TRAIN, lt_backend_get("cpu", NULL), &o, &err);
  REQUIRE(ex);
  lt_tensor *x = lt_exec_input(ex, 0);
  fill_uniform(lt_tensor_f32(x), lt_tensor_numel(x), 13, 1, 2); /* all positive after shift */
  float r[512];
  fill_uniform(r, 512, 14, -1, 1);
  run_step(ex, r, 1);
  const float *y = lt_tensor_f32(lt_exec_output(ex, 0));
  const float *gp = lt_tensor_f32(lt_exec_param_grad(ex, lt_graph_find_value(g, "shift")));
  int dropped = 0;
  for (int i = 0; i < 256; i++) {
    /* d shift[i] = sum over the batch of r * mask / (1 - p) */
    double want = 0;
    for (int bi = 0; bi < 2; bi++) want += y[bi * 256 + i] != 0 ? r[bi * 256 + i] / 0.75 : 0;
    CHECK_NEAR(gp[i], want, 1e-5);
    dropped += y[i] == 0;
  }
  CHECK(dropped > 30 && dropped < 100); /* about a quarter of 256 */
  lt_exec_free(ex);
  lt_graph_free(g);
}

/* The U-Net path (max pool, nearest upsample, concat skips, 1x1 head with bias) end to end. A
 * small step: with BN over 8 values at the bottom the network bends sharply (1e-2 crosses kinks). */
TEST_CASE(gradcheck_tiny_unet) {
  lt_err err = {0};
  lt_zoo_opts o = {.in_channels = 2, .out_channels = 2, .height = 8, .width = 8, .base_width = 2,
                   .seed = 21};
  lt_graph *g = lt_zoo_build("unet", &o, &err);
  REQUIRE(g);
  fd_check(g, 2, "unet", 1e-3f, 2e-2);
  lt_graph_free(g);
}

/* Every zoo model runs a training step with finite outputs and gradients. */
TEST_CASE(zoo_models_train_one_step) {
  for (const char *const *name = lt_zoo_names(); *name; name++) {
    lt_err err = {0};
    lt_graph *g = lt_zoo_build(*name, &(lt_zoo_opts){.seed = 1}, &err);
    REQUIRE(g);
    lt_exec *ex = lt_exec_create(g, 2, LT_MODE_TRAIN, lt_backend_get("cpu", NULL), NULL, &err);
    CHECK_MSG(ex, "%s: %s", *name, err.msg);
    if (!ex) {
      lt_graph_free(g);
      continue;
    }
    lt_tensor *x = lt_exec_input(ex, 0), *dy = lt_exec_output_grad(ex, 0);
    fill_uniform(lt_tensor_f32(x), lt_tensor_numel(x), 31, -1, 1);
    CHECK_MSG(lt_exec_forward(ex, &err) == LT_OK, "%s: %s", *name, err.msg);
    fill_uniform(lt_tensor_f32(dy), lt_tensor_numel(dy), 32, -1, 1);
    CHECK_MSG(lt_exec_backward(ex, &err) == LT_OK, "%s: %s", *name, err.msg);
    int finite = 1, nonzero = 0;
    lt_tensor *y = lt_exec_output(ex, 0);
    for (int64_t i = 0; i < lt_tensor_numel(y); i++) finite &= isfinite(lt_tensor_f32(y)[i]);
    for (int v = 0; v < g->n_values; v++) {
      lt_tensor *gr = lt_exec_param_grad(ex, v);
      for (int64_t i = 0; gr && i < lt_tensor_numel(gr); i++) {
        finite &= isfinite(lt_tensor_f32(gr)[i]);
        nonzero |= lt_tensor_f32(gr)[i] != 0;
      }
    }
    CHECK_MSG(finite && nonzero, "%s: non-finite or all-zero outputs/gradients", *name);
    lt_exec_free(ex);
    lt_graph_free(g);
  }
}

int main(void) {
  RUN(gradcheck_pointwise_pool_and_shape_ops);
  RUN(gradcheck_conv_linear_batchnorm);
  RUN(gradcheck_fan_out_and_broadcast_binary_ops);
  RUN(exec_gradients_accumulate_until_zeroed);
  RUN(exec_training_step_allocates_nothing);
  RUN(exec_buffer_reuse_cuts_activation_memory_and_changes_nothing);
  RUN(stash_policy_that_copies_gives_identical_gradients);
  RUN(stash_policy_keeping_some_buffers_gives_identical_gradients);
  RUN(exec_inference_mode_refuses_backward);
  RUN(exec_dropout_mask_matches_in_backward);
  RUN(gradcheck_tiny_unet);
  RUN(zoo_models_train_one_step);
  return test_summary();
}
