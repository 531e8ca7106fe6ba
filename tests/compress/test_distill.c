/* Fine-tuning with distillation through lt_train_run's loss hook:
 *   - lt_distill_loss at alpha = 0 is the built-in softmax cross-entropy (value and gradient);
 *   - a training run whose hook is the built-in loss rebuilt by hand takes the same steps as the
 *     run without a hook (the hook sees the batch the model saw, its outputs and labels);
 *   - the distiller's teacher sees exactly the student's batch: with the teacher a copy of the
 *     student (no batch-norm, so train and inference mode agree) and alpha = 1, the loss and its
 *     gradient are zero and plain SGD leaves the weights where they were, while alpha = 0.5
 *     moves them;
 *   - bad settings are refused with clear errors.
 * The loss value and gradient against PyTorch: distill_ref_check.py (label reference). */
#include "backend/cpu/kernels.h"
#include "lathe/backend.h"
#include "lathe/compress.h"
#include "lathe/train.h"
#include "test.h"

enum { N = 64, C = 2, H = 6, W = 6, K = 5, B = 16 };

static lt_tensor *rand_tensor(int ndim, const int64_t *shape, lt_rng *r, float scale) {
  lt_tensor *t = lt_tensor_new(LT_F32, ndim, shape, LT_MEM_WEIGHTS, NULL);
  float *p = lt_tensor_f32(t);
  for (int64_t i = 0; i < lt_tensor_numel(t); i++) p[i] = scale * (float)(lt_rng_uniform(r) * 2 - 1);
  return t;
}

/* x (C, H, W) → conv 3×3 pad 1 (4) → relu → flatten → linear (K) + bias. */
static lt_graph *tiny(uint64_t seed) {
  lt_rng r = lt_rng_make(seed, 0);
  lt_err err = {0};
  lt_graph *g = lt_graph_new();
  int x = lt_graph_add_input(g, "x", LT_F32, 3, (int64_t[]){C, H, W});
  int w = lt_graph_add_param(g, "w", rand_tensor(4, (int64_t[]){4, C, 3, 3}, &r, 0.4f), 1);
  int wl = lt_graph_add_param(g, "wl", rand_tensor(2, (int64_t[]){K, 4 * H * W}, &r, 0.2f), 1);
  int bl = lt_graph_add_param(g, "bl", rand_tensor(1, (int64_t[]){K}, &r, 0.1f), 1);
  lt_node_attrs cv = lt_attrs_conv(3, 1, 1, 1, 1), none = lt_attrs_default();
  int y = lt_graph_add_node(g, LT_OP_CONV2D, "conv", (int[]){x, w}, 2, &cv, &err);
  y = lt_graph_add_node(g, LT_OP_RELU, "relu", (int[]){y}, 1, &none, &err);
  y = lt_graph_add_node(g, LT_OP_FLATTEN, "flat", (int[]){y}, 1, &none, &err);
  y = lt_graph_add_node(g, LT_OP_LINEAR, "fc", (int[]){y, wl, bl}, 3, &none, &err);
  lt_graph_set_output(g, y);
  return g;
}

static lt_dataset *data(void) {
  static uint8_t x[N * C * H * W];
  static int32_t y[N];
  static lt_dataset ds;
  lt_rng r = lt_rng_make(9, 0);
  for (size_t i = 0; i < sizeof x; i++) x[i] = (uint8_t)(lt_rng_uniform(&r) * 255);
  for (int i = 0; i < N; i++) y[i] = i % K;
  ds = (lt_dataset){.n = N, .c = C, .h = H, .w = W, .x_dtype = LT_U8, .x = x, .labels = y,
                    .num_classes = K};
  snprintf(ds.split, sizeof ds.split, "train");
  return &ds;
}

static lt_train_config config(lt_dataset *ds) {
  lt_train_config c = lt_train_config_default();
  c.train = ds;
  c.batch_size = B;
  c.epochs = 2;
  c.sched.lr = 0.1;
  c.optim.momentum = 0, c.optim.weight_decay = 0;
  c.batch.pad = 1, c.batch.flip = 1; /* augmentation: the hook must see the augmented batch */
  c.seed = 5;
  return c;
}

/* max |a - b| over the trainable parameters of two graphs of the same structure */
static double max_param_diff(const lt_graph *a, const lt_graph *b) {
  int ids[16], n = lt_train_params(a, ids, 16);
  double d = 0;
  for (int i = 0; i < n; i++) {
    const lt_tensor *ta = a->values[ids[i]].data, *tb = b->values[ids[i]].data;
    for (int64_t j = 0; j < lt_tensor_numel(ta); j++) {
      double e = fabs((double)lt_tensor_f32((lt_tensor *)ta)[j] - lt_tensor_f32((lt_tensor *)tb)[j]);
      d = e > d ? e : d;
    }
  }
  return d;
}

TEST_CASE(distill_alpha_zero_is_cross_entropy) {
  lt_rng r = lt_rng_make(1, 0);
  float s[B * K], t[B * K], g1[B * K], g2[B * K];
  int32_t y[B];
  for (int i = 0; i < B * K; i++) s[i] = (float)(lt_rng_uniform(&r) * 6 - 3), t[i] = -s[i];
  for (int i = 0; i < B; i++) y[i] = (i * 3) % K;
  int64_t c1 = 0, c2 = 0;
  double l1 = lt_distill_loss(B, K, s, t, y, 0, 3, 1.0f / B, g1, &c1);
  double l2 = lt_cpu_softmax_xent(B, K, s, y, 1.0f / B, g2, &c2);
  CHECK_NEAR(l1, l2, 1e-5 * fabs(l2));
  CHECK(c1 == c2);
  for (int i = 0; i < B * K; i++) CHECK_NEAR(g1[i], g2[i], 1e-6);
}

/* The built-in loss, through the hook. */
static lt_status ce_hook(void *user, int n, int k, const float *x, const float *out,
                         const int32_t *labels, const float *targets, float scale, float *dout,
                         double *loss_sum, int64_t *correct, lt_err *err) {
  (void)x, (void)targets, (void)err;
  (*(int *)user)++;
  *loss_sum = lt_cpu_softmax_xent(n, k, out, labels, scale, dout, correct);
  return LT_OK;
}

TEST_CASE(a_hook_computing_cross_entropy_trains_as_the_built_in_loss) {
  lt_err err = {0};
  lt_backend *be = lt_backend_get("cpu", &err);
  lt_dataset *ds = data();
  lt_graph *a = tiny(1), *b = tiny(1);
  lt_train_config ca = config(ds), cb = config(ds);
  int calls = 0;
  lt_train_loss hook = {.user = &calls, .fn = ce_hook};
  cb.loss = &hook;
  lt_train_result ra, rb;
  REQUIRE(lt_train_run(a, be, &ca, &ra, &err) == LT_OK);
  REQUIRE(lt_train_run(b, be, &cb, &rb, &err) == LT_OK);
  CHECK(calls == 2 * (N / B));
  CHECK(max_param_diff(a, b) == 0);
  CHECK(ra.train_loss == rb.train_loss);
  lt_graph_free(a);
  lt_graph_free(b);
}

TEST_CASE(a_teacher_equal_to_the_student_leaves_it_unchanged_at_alpha_one) {
  lt_err err = {0};
  lt_backend *be = lt_backend_get("cpu", &err);
  lt_dataset *ds = data();
  lt_graph *student = tiny(2), *teacher = tiny(2), *before = tiny(2);
  lt_distiller *d = lt_distiller_create(teacher, be, B, 1.0, 3.0, &err);
  REQUIRE(d);
  lt_train_loss hook = lt_distiller_loss(d);
  lt_train_config c = config(ds);
  c.loss = &hook;
  lt_train_result r;
  REQUIRE(lt_train_run(student, be, &c, &r, &err) == LT_OK);
  CHECK_MSG(fabs(r.train_loss) < 1e-6, "KL to an identical teacher should be 0, got %g",
            r.train_loss);
  CHECK_MSG(max_param_diff(student, before) < 1e-6, "weights moved by %g",
            max_param_diff(student, before));
  lt_distiller_free(d);
  /* half hard labels: the weights move and the loss is the cross-entropy half */
  d = lt_distiller_create(teacher, be, B, 0.5, 3.0, &err);
  REQUIRE(d);
  hook = lt_distiller_loss(d);
  REQUIRE(lt_train_run(student, be, &c, &r, &err) == LT_OK);
  CHECK(max_param_diff(student, before) > 1e-3);
  CHECK(r.train_loss > 0.1);
  lt_distiller_free(d);
  lt_graph_free(student);
  lt_graph_free(teacher);
  lt_graph_free(before);
}

TEST_CASE(bad_distillation_settings_are_refused) {
  lt_err err = {0};
  lt_backend *be = lt_backend_get("cpu", &err);
  lt_graph *t = tiny(3);
  CHECK(lt_distiller_create(t, be, B, 1.5, 4, &err) == NULL && err.status == LT_ERR_INVALID);
  CHECK(strstr(err.msg, "alpha") != NULL);
  CHECK(lt_distiller_create(t, be, B, 0.5, 0, &err) == NULL && err.status == LT_ERR_INVALID);
  CHECK(lt_distiller_create(t, be, B, 0.5, NAN, &err) == NULL && err.status == LT_ERR_INVALID);
  /* a student with another number of classes */
  lt_distiller *d = lt_distiller_create(t, be, B, 0.5, 4, &err);
  REQUIRE(d);
  lt_train_loss h = lt_distiller_loss(d);
  float x[B * C * H * W] = {0}, out[B * 7] = {0}, dout[B * 7];
  int32_t y[B] = {0};
  double loss;
  int64_t correct;
  CHECK(h.fn(h.user, B, 7, x, out, y, NULL, 1, dout, &loss, &correct, &err) == LT_ERR_INVALID);
  CHECK(strstr(err.msg, "classes") != NULL);
  /* regression targets instead of labels */
  CHECK(h.fn(h.user, B, K, x, out, NULL, out, 1, dout, &loss, &correct, &err) == LT_ERR_INVALID);
  lt_distiller_free(d);
  lt_graph_free(t);
}

int main(void) {
  RUN(distill_alpha_zero_is_cross_entropy);
  RUN(a_hook_computing_cross_entropy_trains_as_the_built_in_loss);
  RUN(a_teacher_equal_to_the_student_leaves_it_unchanged_at_alpha_one);
  RUN(bad_distillation_settings_are_refused);
  return test_summary();
}
