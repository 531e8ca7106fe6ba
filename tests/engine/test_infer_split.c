/* Inference speed-ups of the executor against its plain path: batch split (each thread runs the
 * whole graph on a slice of the batch), BatchNorm folding into the convolution before it and
 * the residual Add (+ ReLU) run in that convolution's epilogue,
 * on the shared ResNet-20 with its BatchNorms kept (../shared/data) and on a Tucker-2
 * factorisation of it, at odd batch sizes and batches too small to split. The reference is an
 * executor of the same graph with opts.no_split and opts.no_fuse (every node on its own over the
 * whole batch, threads inside the kernels); logits must agree within 1e-4 of their largest
 * magnitude. Skips the real-model cases when ../shared/data is absent. */
#include <omp.h>
#include <unistd.h>

#include "lathe/backend.h"
#include "lathe/compress.h"
#include "lathe/exec.h"
#include "lathe/onnx.h"
#include "lathe/train.h"
#include "test.h"

#define MODEL LATHE_SOURCE_DIR "/../shared/data/models/resnet20-cifar10-bn.onnx"

static lt_backend *cpu(void) { return lt_backend_get("cpu", NULL); }

static lt_graph *load_dense(void) {
  lt_err err = {0};
  lt_graph *g = lt_onnx_load(MODEL, NULL, &err);
  if (!g) fprintf(stderr, "%s\n", err.msg);
  return g;
}

/* Every 3×3 convolution with at least 16 channels factorised at ranks 4, 8, 12, 16 in turn. */
static lt_graph *load_compressed(void) {
  lt_graph *g = load_dense();
  if (!g) return NULL;
  lt_err err = {0};
  int k = 0;
  for (int i = 0; i < g->n_nodes; i++) {
    const lt_node *n = &g->nodes[i];
    if (n->op != LT_OP_CONV2D || strstr(n->name, ".core")) continue;
    const lt_value *w = &g->values[n->in[1]];
    if (w->shape[2] != 3 || w->shape[0] < 16 || w->shape[1] < 16) continue;
    if (lt_compress_factorize_conv(g, i, 4 * (1 + k++ % 4), &err)) {
      fprintf(stderr, "factorize %s: %s\n", n->name, err.msg);
      lt_graph_free(g);
      return NULL;
    }
    i = -1; /* the rewrite renumbers nodes: start over (factorised convs are skipped) */
  }
  return k ? g : (lt_graph_free(g), NULL);
}

static void fill_input(lt_exec *ex, uint64_t seed) {
  lt_tensor *in = lt_exec_input(ex, 0);
  lt_rng r = lt_rng_make(seed, 0);
  float *p = lt_tensor_f32(in);
  for (int64_t i = 0; i < lt_tensor_numel(in); i++) p[i] = lt_rng_normal(&r);
}

/* max |a - b| / max |b| over the outputs of two executors with the same input. */
static double rel_diff(lt_exec *a, lt_exec *b) {
  const lt_tensor *ya = lt_exec_output(a, 0), *yb = lt_exec_output(b, 0);
  const float *pa = lt_tensor_f32(ya), *pb = lt_tensor_f32(yb);
  double d = 0, m = 0;
  for (int64_t i = 0; i < lt_tensor_numel(yb); i++) {
    if (fabs(pa[i] - pb[i]) > d || pa[i] != pa[i]) d = pa[i] != pa[i] ? INFINITY : fabs(pa[i] - pb[i]);
    if (fabs(pb[i]) > m) m = fabs(pb[i]);
  }
  return m > 0 ? d / m : d;
}

static const lt_exec_opts plain = {.no_split = 1, .no_fuse = 1};

/* The default executor against the plain one at several batch sizes; `split` and `folded`
 * say what the default one must be doing. */
static void compare_batches(lt_graph *g, const char *what) {
  const int batches[] = {1, 3, 4, 5, 64, 65};
  for (size_t b = 0; b < sizeof batches / sizeof batches[0]; b++) {
    const int B = batches[b];
    lt_err err = {0};
    lt_exec *ref = lt_exec_create(g, B, LT_MODE_INFER, cpu(), &plain, &err);
    lt_exec *ex = lt_exec_create(g, B, LT_MODE_INFER, cpu(), NULL, &err);
    REQUIRE(ref && ex);
    fill_input(ref, 100 + B);
    memcpy(lt_exec_input(ex, 0)->data, lt_exec_input(ref, 0)->data,
           lt_tensor_nbytes(lt_exec_input(ref, 0)));
    const int split = lt_exec_set_batch_split(ex, 1);
    CHECK_MSG(split == (B >= 2 * omp_get_max_threads()), "%s batch %d: split %d", what, B, split);
    for (int rep = 0; rep < 2; rep++) { /* a second forward reuses the buffers */
      REQUIRE(lt_exec_forward(ref, &err) == LT_OK);
      REQUIRE(lt_exec_forward(ex, &err) == LT_OK);
      const double d = rel_diff(ex, ref);
      CHECK_MSG(d <= 1e-4, "%s batch %d (split %d): logits differ by %.3g of their range", what, B,
                split, d);
      if (rep == 0) printf("  %s batch %d: split %d, max diff %.3g\n", what, B, split, d);
    }
    /* every subset of the fusions, switched at run time, split or not */
    for (unsigned kinds = 0; kinds <= LT_FUSE_ALL && (B == 5 || B == 64); kinds++) {
      lt_exec_set_fusion(ex, kinds);
      REQUIRE(lt_exec_forward(ex, &err) == LT_OK);
      CHECK_MSG(rel_diff(ex, ref) <= 1e-4, "%s batch %d, fusions %u: %.3g", what, B, kinds,
                rel_diff(ex, ref));
    }
    lt_exec_set_fusion(ex, LT_FUSE_ALL);
    /* the split forward filled only inputs and outputs */
    if (split) CHECK(lt_exec_value(ex, g->nodes[g->n_nodes - 2].out[0]) == NULL);
    /* unsplit at run time: the same numbers again */
    CHECK(lt_exec_set_batch_split(ex, 0) == 0);
    REQUIRE(lt_exec_forward(ex, &err) == LT_OK);
    CHECK(rel_diff(ex, ref) <= 1e-4);
    lt_exec_free(ex);
    lt_exec_free(ref);
  }
}

TEST_CASE(infer_split_matches_plain_dense_resnet20) {
  lt_graph *g = load_dense();
  REQUIRE(g);
  compare_batches(g, "dense");
  lt_graph_free(g);
}

TEST_CASE(infer_split_matches_plain_tucker_resnet20) {
  lt_graph *g = load_compressed();
  REQUIRE(g);
  compare_batches(g, "tucker");
  lt_graph_free(g);
}

/* LATHE_INFER_SPLIT=0 and opts.no_split keep the executor unsplit; training never splits. */
TEST_CASE(infer_split_off_switches) {
  lt_graph *g = load_dense();
  REQUIRE(g);
  lt_err err = {0};
  lt_exec_opts o = {.no_split = 1};
  lt_exec *a = lt_exec_create(g, 64, LT_MODE_INFER, cpu(), &o, &err);
  lt_exec *t = lt_exec_create(g, 64, LT_MODE_TRAIN, cpu(), NULL, &err);
  setenv("LATHE_INFER_SPLIT", "0", 1);
  lt_exec *e = lt_exec_create(g, 64, LT_MODE_INFER, cpu(), NULL, &err);
  unsetenv("LATHE_INFER_SPLIT");
  REQUIRE(a && t && e);
  CHECK(lt_exec_set_batch_split(a, 1) == 0);
  CHECK(lt_exec_set_batch_split(t, 1) == 0);
  CHECK(lt_exec_set_batch_split(e, 1) == 0);
  lt_exec_free(a);
  lt_exec_free(t);
  lt_exec_free(e);
  lt_graph_free(g);
}

/* Parameters changed between two forwards (as when a training executor shares the graph): the
 * folded convolutions must follow, split or not. */
TEST_CASE(folded_forward_follows_parameter_changes) {
  lt_graph *g = load_dense();
  REQUIRE(g);
  lt_err err = {0};
  lt_exec *ref = lt_exec_create(g, 8, LT_MODE_INFER, cpu(), &plain, &err);
  lt_exec *ex = lt_exec_create(g, 8, LT_MODE_INFER, cpu(), NULL, &err);
  lt_exec_opts one = {.no_split = 1};
  lt_exec *ex1 = lt_exec_create(g, 8, LT_MODE_INFER, cpu(), &one, &err);
  REQUIRE(ref && ex && ex1);
  fill_input(ref, 9);
  memcpy(lt_exec_input(ex, 0)->data, lt_exec_input(ref, 0)->data,
         lt_tensor_nbytes(lt_exec_input(ref, 0)));
  memcpy(lt_exec_input(ex1, 0)->data, lt_exec_input(ref, 0)->data,
         lt_tensor_nbytes(lt_exec_input(ref, 0)));
  REQUIRE(lt_exec_forward(ref, &err) == LT_OK);
  REQUIRE(lt_exec_forward(ex, &err) == LT_OK);
  REQUIRE(lt_exec_forward(ex1, &err) == LT_OK);
  float before[80];
  memcpy(before, lt_exec_output(ref, 0)->data, sizeof before);
  int bns = 0;
  for (int i = 0; i < g->n_nodes; i++) {
    const lt_node *n = &g->nodes[i];
    if (n->op == LT_OP_BATCHNORM) {
      bns++;
      float *p[4];
      for (int k = 0; k < 4; k++) p[k] = lt_tensor_f32(g->values[n->in[k + 1]].data);
      for (int64_t c = 0; c < lt_tensor_numel(g->values[n->in[1]].data); c++) {
        p[0][c] *= 1.25f, p[1][c] += 0.05f, p[2][c] -= 0.03f, p[3][c] *= 1.5f;
      }
    } else if (n->op == LT_OP_CONV2D) {
      lt_tensor *w = g->values[n->in[1]].data;
      for (int64_t e = 0; e < lt_tensor_numel(w); e++) lt_tensor_f32(w)[e] *= 0.9f;
    }
  }
  CHECK(bns == 19);
  REQUIRE(lt_exec_forward(ref, &err) == LT_OK);
  REQUIRE(lt_exec_forward(ex, &err) == LT_OK);
  REQUIRE(lt_exec_forward(ex1, &err) == LT_OK);
  double moved = 0;
  for (int i = 0; i < 80; i++) moved = fmax(moved, fabs(before[i] - lt_tensor_f32(lt_exec_output(ref, 0))[i]));
  CHECK(moved > 0.1); /* the change shows in the logits */
  CHECK_MSG(rel_diff(ex, ref) <= 1e-4, "split: %g", rel_diff(ex, ref));
  CHECK_MSG(rel_diff(ex1, ref) <= 1e-4, "unsplit: %g", rel_diff(ex1, ref));
  /* the profile names the folds (a profiled forward runs unsplit): every BN folds into its
   * conv, and the ten followed by a ReLU take it too */
  lt_exec_profile_enable(ex, 1);
  REQUIRE(lt_exec_forward(ex, &err) == LT_OK);
  lt_exec_profile_row rows[64];
  const int nr = lt_exec_profile_get(ex, rows, 64, NULL, NULL);
  int folded = 0, folded_relu = 0, bn_rows = 0, with_add = 0, adds = 0;
  for (int r = 0; r < nr && r < 64; r++) {
    if (!strcmp(rows[r].op, "Conv2d+BatchNorm2d+Relu")) folded_relu += rows[r].nodes;
    if (!strcmp(rows[r].op, "Conv2d+BatchNorm2d+Add+Relu")) with_add += rows[r].nodes;
    if (!strcmp(rows[r].op, "Add (fused)")) adds += rows[r].nodes;
    if (!strcmp(rows[r].op, "BatchNorm2d (folded)")) folded += rows[r].nodes;
    if (!strncmp(rows[r].op, "BatchNorm2d", 11) && strcmp(rows[r].op, "BatchNorm2d (folded)"))
      bn_rows++;
  }
  CHECK_MSG(folded == 19 && folded_relu == 10 && bn_rows == 0, "folded %d, with ReLU %d, BN rows %d",
            folded, folded_relu, bn_rows);
  /* and the nine residual Adds (with their ReLUs) into the second conv of each block */
  CHECK_MSG(with_add == 9 && adds == 9, "convs with the Add %d, Adds fused %d", with_add, adds);
  lt_exec_free(ex);
  lt_exec_free(ex1);
  lt_exec_free(ref);
  lt_graph_free(g);
}

static int hook_calls;
static void count_hook(void *user, lt_exec *ex, int node, const lt_tensor *out) {
  (void)user, (void)ex, (void)node;
  hook_calls++;
  CHECK(out->shape[0] == 64); /* the whole batch, never a slice */
}

/* A hook sees every node over the whole batch: split and fusion stay off for that forward. */
TEST_CASE(infer_split_hook_sees_every_node) {
  lt_graph *g = load_dense();
  REQUIRE(g);
  lt_err err = {0};
  lt_exec *ref = lt_exec_create(g, 64, LT_MODE_INFER, cpu(), &plain, &err);
  lt_exec *ex = lt_exec_create(g, 64, LT_MODE_INFER, cpu(), NULL, &err);
  REQUIRE(ref && ex);
  fill_input(ref, 5);
  memcpy(lt_exec_input(ex, 0)->data, lt_exec_input(ref, 0)->data,
         lt_tensor_nbytes(lt_exec_input(ref, 0)));
  lt_exec_set_forward_hook(ex, count_hook, NULL);
  hook_calls = 0;
  REQUIRE(lt_exec_forward(ex, &err) == LT_OK);
  REQUIRE(lt_exec_forward(ref, &err) == LT_OK);
  CHECK(hook_calls == g->n_nodes);
  CHECK(rel_diff(ex, ref) <= 1e-4);
  lt_exec_free(ex);
  lt_exec_free(ref);
  lt_graph_free(g);
}

int main(void) {
  omp_set_num_threads(2); /* the split needs >= 2 threads; the machine may have fewer cores */
  if (access(MODEL, R_OK) != 0) {
    printf("skip: %s is absent\n", MODEL);
    return 77;
  }
  RUN(infer_split_matches_plain_dense_resnet20);
  RUN(infer_split_matches_plain_tucker_resnet20);
  RUN(infer_split_off_switches);
  RUN(folded_forward_follows_parameter_changes);
  RUN(infer_split_hook_sees_every_node);
  return test_summary();
}
