/* Batch-norm recalibration (lt_bn_recalibrate), as the compress job runs it after a rank change:
 * the running statistics become the mean over the sampled batches of each batch's mean and
 * unbiased variance (torch's momentum None), computed here in double from the same batches;
 * weights and the BN momentum attribute are left as they were; a model without BN is untouched. */
#include "test.h"

#include "lathe/backend.h"
#include "lathe/data.h"
#include "lathe/graph.h"
#include "lathe/train.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { C = 2, H = 3, W = 5, N = 40, BATCH = 8, BATCHES = 6, SEED = 11 };

static int param(lt_graph *g, const char *name, int64_t n0, int64_t n1, float v) {
  int64_t shape[2] = {n0, n1};
  lt_tensor *t = lt_tensor_new(LT_F32, n1 ? 2 : 1, shape, LT_MEM_WEIGHTS, NULL);
  float *p = lt_tensor_f32(t);
  for (int64_t i = 0; i < lt_tensor_numel(t); i++) p[i] = v + 0.01f * (float)i;
  return lt_graph_add_param(g, name, t, 1);
}

/* x (C, H, W) -> BN -> GAP -> flatten -> linear to 3 classes; running statistics far off. */
static lt_graph *build(int with_bn) {
  lt_graph *g = lt_graph_new();
  int x = lt_graph_add_input(g, "x", LT_F32, 3, (int64_t[]){C, H, W});
  if (with_bn) {
    int in[5] = {x, param(g, "bn.w", C, 0, 1.0f), param(g, "bn.b", C, 0, 0.0f),
                 param(g, "bn.rm", C, 0, 100.0f), param(g, "bn.rv", C, 0, 1e4f)};
    x = lt_graph_add_node(g, LT_OP_BATCHNORM, "bn", in, 5, NULL, NULL);
  }
  x = lt_graph_add_node(g, LT_OP_GLOBAL_AVGPOOL, "gap", &x, 1, NULL, NULL);
  x = lt_graph_add_node(g, LT_OP_FLATTEN, "flat", &x, 1, NULL, NULL);
  int fc[3] = {x, param(g, "fc.w", 3, C, 0.1f), param(g, "fc.b", 3, 0, 0.0f)};
  x = lt_graph_add_node(g, LT_OP_LINEAR, "fc", fc, 3, NULL, NULL);
  lt_graph_set_output(g, x);
  return g;
}

static const float *value(const lt_graph *g, const char *name) {
  for (int v = 0; v < g->n_values; v++)
    if (g->values[v].data && !strcmp(g->values[v].name, name))
      return lt_tensor_f32(g->values[v].data);
  return NULL;
}

TEST_CASE(running_statistics_are_the_mean_of_the_batch_statistics) {
  static uint8_t x[N * C * H * W];
  static int32_t y[N];
  lt_rng r = lt_rng_make(3, 0);
  for (int i = 0; i < N * C * H * W; i++) x[i] = (uint8_t)lt_rng_below(&r, 256);
  for (int i = 0; i < N; i++) y[i] = i % 3;
  lt_dataset ds = {.split = "train", .n = N, .c = C, .h = H, .w = W, .x_dtype = LT_U8, .x = x,
                   .labels = y, .num_classes = 3};
  lt_batch_opts bo = {.norm = {.n = C, .mean = {0.5f, 0.4f}, .std = {0.2f, 0.3f}}};
  lt_graph *g = build(1);
  REQUIRE(g != NULL);
  lt_err err = {0};
  REQUIRE(lt_bn_recalibrate(g, lt_backend_get("cpu", NULL), &ds, &bo, BATCH, BATCHES, SEED, &err) ==
          LT_OK);

  /* The reference: the same batches (the function draws them with this stream), statistics in
   * double. */
  lt_rng rb = lt_rng_make(SEED, 0x6263616cULL);
  int64_t idx[BATCH];
  static float xb[BATCH * C * H * W];
  double mean[C] = {0}, var[C] = {0};
  for (int k = 0; k < BATCHES; k++) {
    for (int i = 0; i < BATCH; i++) idx[i] = (int64_t)lt_rng_below(&rb, N);
    REQUIRE(lt_batch_fill(&ds, idx, BATCH, &bo, SEED, (uint64_t)k, xb, NULL, NULL, &err) == LT_OK);
    for (int c = 0; c < C; c++) {
      double s = 0, s2 = 0, m = (double)BATCH * H * W;
      for (int i = 0; i < BATCH; i++)
        for (int p = 0; p < H * W; p++) s += xb[(i * C + c) * H * W + p];
      for (int i = 0; i < BATCH; i++)
        for (int p = 0; p < H * W; p++) {
          double d = xb[(i * C + c) * H * W + p] - s / m;
          s2 += d * d;
        }
      mean[c] += s / m / BATCHES;
      var[c] += s2 / (m - 1) / BATCHES;
    }
  }
  const float *rm = value(g, "bn.rm"), *rv = value(g, "bn.rv");
  REQUIRE(rm && rv);
  for (int c = 0; c < C; c++) {
    CHECK_NEAR(rm[c], mean[c], 1e-5 * (1 + fabs(mean[c])));
    CHECK_NEAR(rv[c], var[c], 1e-5 * (1 + var[c]));
  }
  /* Nothing else moved: affine parameters, the linear layer, the momentum attribute. */
  CHECK(value(g, "bn.w")[1] == 1.01f && value(g, "bn.b")[0] == 0.0f);
  CHECK(value(g, "fc.w")[0] == 0.1f);
  for (int i = 0; i < g->n_nodes; i++)
    if (g->nodes[i].op == LT_OP_BATCHNORM) CHECK(g->nodes[i].a.momentum == lt_attrs_default().momentum);
  lt_graph_free(g);

  /* No batch norm: nothing to do. Batches of one sample: an error that says so. */
  g = build(0);
  CHECK(lt_bn_recalibrate(g, lt_backend_get("cpu", NULL), &ds, &bo, BATCH, BATCHES, SEED, &err) ==
        LT_OK);
  lt_graph_free(g);
  g = build(1);
  CHECK(lt_bn_recalibrate(g, lt_backend_get("cpu", NULL), &ds, &bo, 1, BATCHES, SEED, &err) ==
        LT_ERR_INVALID);
  CHECK_STR_CONTAINS(err.msg, "at least 2 samples");
  lt_graph_free(g);
}

int main(void) {
  RUN(running_statistics_are_the_mean_of_the_batch_statistics);
  return test_summary();
}
