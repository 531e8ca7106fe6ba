/* ResNet-20 against PyTorch (ref_resnet20.py writes the reference): with PyTorch's weights
 * loaded into the zoo graph by name, in training mode (BN batch statistics), the logits, the
 * loss, every parameter gradient and the BN running statistics match, and ten plain SGD steps
 * (kernels.h's lt_cpu_sgd_step) track PyTorch's losses.
 *
 * Tolerances, relative to the largest magnitude of each reference tensor: logits 1e-5, loss
 * 1e-5, gradients 2e-4, running statistics 1e-4 (measured: logits 3.5e-7, gradients 5.3e-6; the
 * margin covers other summation orders, thread counts and BLAS builds). SGD at lr 0.1 on one batch amplifies rounding: PyTorch's own float32
 * and float64 runs part by a few percent by step 5, so each step's loss must lie within 1e-3
 * plus the largest relative float32/float64 gap of PyTorch's run up to that step.
 *
 * Usage: engine_ref_resnet20 REF.bin */
#include "backend/cpu/kernels.h"
#include "lathe/backend.h"
#include "lathe/exec.h"
#include "lathe/zoo.h"
#include "test.h"

typedef struct ref_tensor {
  char name[128];
  int ndim;
  int64_t shape[LT_MAX_DIMS];
  float *data; /* owned */
} ref_tensor;

static ref_tensor refs[512];
static int n_refs;

static int ref_load(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    fprintf(stderr, "cannot open %s; run ref_resnet20.py first\n", path);
    return -1;
  }
  char magic[8];
  uint32_t count;
  int ok = fread(magic, 1, 8, f) == 8 && memcmp(magic, "LTREF1\0\0", 8) == 0 &&
           fread(&count, 4, 1, f) == 1 && count <= 512;
  for (uint32_t i = 0; ok && i < count; i++) {
    ref_tensor *t = &refs[n_refs];
    uint32_t len, nd;
    ok = fread(&len, 4, 1, f) == 1 && len < sizeof t->name && fread(t->name, 1, len, f) == len &&
         fread(&nd, 4, 1, f) == 1 && nd <= LT_MAX_DIMS &&
         fread(t->shape, 8, nd, f) == nd;
    if (!ok) break;
    t->name[len] = '\0';
    t->ndim = (int)nd;
    int64_t n = lt_shape_numel(t->ndim, t->shape);
    t->data = malloc(sizeof(float) * (size_t)(n ? n : 1));
    ok = t->data && fread(t->data, 4, (size_t)n, f) == (size_t)n;
    n_refs++;
  }
  fclose(f);
  if (!ok) fprintf(stderr, "%s is truncated or not a reference file\n", path);
  return ok ? 0 : -1;
}

static const ref_tensor *ref_get(const char *name) {
  for (int i = 0; i < n_refs; i++)
    if (strcmp(refs[i].name, name) == 0) return &refs[i];
  TEST_FAIL_AT("reference has no tensor '%s'", name);
  return NULL;
}

/* max |a - ref| against tol * max(1e-3, max |ref|); returns max |a - ref| / max(1e-3, max |ref|). */
static double compare(const char *what, const float *a, const ref_tensor *r, double tol) {
  int64_t n = lt_shape_numel(r->ndim, r->shape);
  double worst = 0, scale = 1e-3;
  for (int64_t i = 0; i < n; i++) {
    worst = fmax(worst, fabs((double)a[i] - r->data[i]));
    scale = fmax(scale, fabs(r->data[i]));
  }
  CHECK_MSG(worst <= tol * scale, "%s: max |diff| %.3g exceeds %.1g x max |ref| %.3g", what, worst,
            tol, scale);
  return worst / scale;
}

static lt_graph *g;
static lt_exec *ex;
static int32_t labels[64];
static int batch;

static double loss_and_grad(void) {
  lt_tensor *y = lt_exec_output(ex, 0);
  int k = (int)y->shape[1];
  double sum = lt_cpu_softmax_xent(batch, k, lt_tensor_f32(y), labels, 1.0f / (float)batch,
                                   lt_tensor_f32(lt_exec_output_grad(ex, 0)), NULL);
  return sum / batch;
}

TEST_CASE(resnet20_loads_pytorch_weights_by_name) {
  lt_err err = {0};
  g = lt_zoo_build("resnet20", NULL, &err);
  REQUIRE(g);
  int loaded = 0;
  for (int v = 0; v < g->n_values; v++) {
    lt_value *val = &g->values[v];
    if (val->kind != LT_VALUE_PARAM) continue;
    const ref_tensor *r = ref_get(val->name);
    REQUIRE(r);
    REQUIRE(lt_shape_equal(r->ndim, r->shape, val->ndim, val->shape));
    memcpy(val->data->data, r->data, lt_tensor_nbytes(val->data));
    loaded++;
  }
  CHECK(loaded == 19 + 19 * 4 + 2); /* 19 convs, 19 BNs of 4 tensors, the linear layer */
  const ref_tensor *x = ref_get("input"), *lab = ref_get("labels");
  REQUIRE(x && lab);
  batch = (int)x->shape[0];
  for (int i = 0; i < batch; i++) labels[i] = (int32_t)lab->data[i];
  ex = lt_exec_create(g, batch, LT_MODE_TRAIN, lt_backend_get("cpu", NULL), NULL, &err);
  REQUIRE(ex);
  memcpy(lt_exec_input(ex, 0)->data, x->data, lt_tensor_nbytes(lt_exec_input(ex, 0)));
}

TEST_CASE(resnet20_training_forward_and_backward_match_pytorch) {
  REQUIRE(ex);
  lt_err err = {0};
  REQUIRE(lt_exec_forward(ex, &err) == LT_OK);
  double e_logits = compare("logits", lt_tensor_f32(lt_exec_output(ex, 0)), ref_get("logits"), 1e-5);
  double loss = loss_and_grad();
  CHECK_NEAR(loss, ref_get("loss")->data[0], 1e-5 * fabs(ref_get("loss")->data[0]));
  lt_exec_zero_grads(ex);
  REQUIRE(lt_exec_backward(ex, &err) == LT_OK);
  int compared = 0;
  double e_grad = 0;
  for (int i = 0; i < n_refs; i++) {
    if (strncmp(refs[i].name, "grad.", 5) == 0) {
      lt_tensor *gr = lt_exec_param_grad(ex, lt_graph_find_value(g, refs[i].name + 5));
      CHECK_MSG(gr, "no gradient for %s", refs[i].name + 5);
      if (gr) e_grad = fmax(e_grad, compare(refs[i].name, lt_tensor_f32(gr), &refs[i], 2e-4));
      compared++;
    } else if (strncmp(refs[i].name, "after1.", 7) == 0) {
      int v = lt_graph_find_value(g, refs[i].name + 7);
      REQUIRE(v >= 0);
      compare(refs[i].name, lt_tensor_f32(g->values[v].data), &refs[i], 1e-4);
    }
  }
  CHECK(compared == 19 + 19 * 2 + 2); /* conv weights, BN gamma and beta, linear w and b */
  printf("  logits max |diff| / max |ref| = %.2g; worst parameter gradient %.2g; loss %.8f vs "
         "%.8f\n", e_logits, e_grad, loss, ref_get("loss")->data[0]);
}

TEST_CASE(resnet20_ten_sgd_steps_track_pytorch_losses) {
  REQUIRE(ex);
  const ref_tensor *want = ref_get("sgd_losses"), *f64 = ref_get("sgd_losses_f64");
  REQUIRE(want && f64);
  lt_err err = {0};
  double spread = 0; /* largest relative float32/float64 gap of PyTorch's run so far */
  /* Step 0's gradients are those of the previous case. */
  for (int step = 0; step < (int)want->shape[0]; step++) {
    double loss = ref_get("loss")->data[0];
    if (step > 0) {
      REQUIRE(lt_exec_forward(ex, &err) == LT_OK);
      loss = loss_and_grad();
      lt_exec_zero_grads(ex);
      REQUIRE(lt_exec_backward(ex, &err) == LT_OK);
    }
    printf("  step %d: loss %.6f, pytorch %.6f (float64 %.6f)\n", step, loss, want->data[step],
           f64->data[step]);
    double w = want->data[step];
    spread = fmax(spread, fabs(w - f64->data[step]) / fabs(f64->data[step]));
    CHECK_NEAR(loss, w, (1e-3 + spread) * fabs(w));
    for (int v = 0; v < g->n_values; v++) {
      lt_tensor *gr = lt_exec_param_grad(ex, v);
      if (gr)
        lt_cpu_sgd_step((size_t)lt_tensor_numel(gr), 0.1f, 0, 0, 0, 0,
                        lt_tensor_f32(g->values[v].data), lt_tensor_f32(gr), NULL, step == 0);
    }
  }
}

int main(int argc, char **argv) {
  if (argc < 2 || ref_load(argv[1])) return 1;
  RUN(resnet20_loads_pytorch_weights_by_name);
  RUN(resnet20_training_forward_and_backward_match_pytorch);
  RUN(resnet20_ten_sgd_steps_track_pytorch_losses);
  lt_exec_free(ex);
  lt_graph_free(g);
  for (int i = 0; i < n_refs; i++) free(refs[i].data);
  return test_summary();
}
