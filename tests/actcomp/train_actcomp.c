/* Integration: trains the zoo's smallcnn on Fashion-MNIST through the real executor, once exact
 * and once with the activation-compression stash, from the same initialisation on the same
 * batches. Pins that the policy plugs into lt_exec (store/load/release/observe), that the saved
 * bytes drop, that the loss follows the exact run, and that the observed/predicted dW error on
 * sampled steps stays near 1. Exits 77 when the dataset is not installed.
 *
 * Usage: actcomp_train [steps] [mode: adaptive|fixed|relative] [bn: exact|lossy]
 *                      [resnet20 ACTS.h5]
 * With resnet20, the zoo's ResNet-20 (random init) trains on the CIFAR-10 batch stored by
 * capture_activations.py (/acts/conv1 is the normalised input, /y the labels), cycling over it:
 * a measurement of saved bytes on a real network, not a ctest. */
#include "backend/cpu/kernels.h"
#include "lathe/actcomp.h"
#include "lathe/backend.h"
#include "lathe/zoo.h"
#include "test.h"

#include <hdf5.h>
#include <zlib.h>

#define FMNIST "/usr/share/datasets/fashion-mnist/"
enum { B = 64 };

/* The training data: n samples of per-sample size elems, already normalised. */
typedef struct train_data {
  const char *model;
  int64_t n, elems;
  float *x;       /* (n, elems) */
  int32_t *y;     /* (n) */
} train_data;

static uint8_t *read_gz(const char *path, size_t want, size_t skip) {
  gzFile f = gzopen(path, "rb");
  if (!f) return NULL;
  uint8_t *buf = malloc(want);
  int ok = buf && gzseek(f, (z_off_t)skip, SEEK_SET) == (z_off_t)skip &&
           gzread(f, buf, (unsigned)want) == (int)want;
  gzclose(f);
  if (!ok) {
    free(buf);
    return NULL;
  }
  return buf;
}

typedef struct run_result {
  double loss_last;   /* mean loss over the last 10 steps */
  int64_t dense, held; /* saved bytes of the last forward */
  lt_ac_report rep;
} run_result;

static int run(lt_ac_stash *st, int steps, const train_data *d, run_result *r) {
  lt_err err = {0};
  lt_zoo_opts zo = {.seed = 7};
  lt_graph *g = lt_zoo_build(d->model, &zo, &err);
  lt_backend *be = lt_backend_get("cpu", &err);
  if (!g || !be) {
    fprintf(stderr, "%s\n", err.msg);
    return -1;
  }
  lt_exec_opts eo = {.stash = st ? lt_ac_stash_policy(st) : NULL};
  lt_exec *ex = lt_exec_create(g, B, LT_MODE_TRAIN, be, &eo, &err);
  if (!ex) {
    fprintf(stderr, "%s\n", err.msg);
    lt_graph_free(g);
    return -1;
  }
  float **vel = calloc((size_t)g->n_values, sizeof *vel);
  int32_t labels[B];
  float logits_grad_scale = 1.0f / B;
  double tail = 0;
  int rc = 0;
  for (int step = 0; step < steps && !rc; step++) {
    int64_t first = ((int64_t)step * B) % (d->n - B + 1);
    memcpy(lt_tensor_f32(lt_exec_input(ex, 0)), d->x + first * d->elems,
           (size_t)(B * d->elems) * sizeof *d->x);
    memcpy(labels, d->y + first, sizeof labels);
    if (lt_exec_forward(ex, &err)) {
      fprintf(stderr, "forward: %s\n", err.msg);
      rc = -1;
      break;
    }
    double loss = lt_cpu_softmax_xent(B, 10, lt_tensor_f32(lt_exec_output(ex, 0)), labels,
                                      logits_grad_scale, lt_tensor_f32(lt_exec_output_grad(ex, 0)),
                                      NULL) / B;
    if (step >= steps - 10) tail += loss / 10;
    lt_exec_zero_grads(ex);
    if (lt_exec_backward(ex, &err)) {
      fprintf(stderr, "backward: %s\n", err.msg);
      rc = -1;
      break;
    }
    for (int v = 0; v < g->n_values; v++) {
      lt_tensor *gr = lt_exec_param_grad(ex, v);
      if (!gr) continue;
      size_t n = (size_t)lt_tensor_numel(gr);
      if (!vel[v]) vel[v] = calloc(n, sizeof **vel);
      lt_cpu_sgd_step(n, 0.05f, 0.9f, 0.0f, 0.0f, 0, lt_tensor_f32(g->values[v].data),
                      lt_tensor_f32(gr), vel[v], step == 0);
    }
    if (st) lt_ac_stash_step_end(st);
  }
  lt_exec_saved_bytes(ex, &r->dense, &r->held);
  r->loss_last = tail;
  if (st) lt_ac_stash_report(st, &r->rep);
  for (int v = 0; v < g->n_values; v++) free(vel[v]);
  free(vel);
  lt_exec_free(ex);
  lt_graph_free(g);
  return rc;
}

static int steps = 60;
static lt_ac_mode mode = LT_AC_ADAPTIVE;
static lt_ac_bn_mode bn = LT_AC_BN_EXACT;
static train_data data;

TEST_CASE(train_with_activation_compression_follows_exact_training) {
  run_result exact = {0}, comp = {0};
  REQUIRE(run(NULL, steps, &data, &exact) == 0);
  lt_ac_config cfg = lt_ac_config_default();
  cfg.mode = mode;
  cfg.window = 10;
  cfg.sample_every = 10;
  cfg.bn_mode = bn;
  lt_err err = {0};
  lt_ac_stash *st = lt_ac_stash_new(&cfg, &err);
  REQUIRE(st);
  REQUIRE(run(st, steps, &data, &comp) == 0);
  printf("  exact: loss %.4f, saved %lld bytes\n", exact.loss_last, (long long)exact.dense);
  printf("  compressed: loss %.4f, saved %lld -> %lld bytes (%.2fx)\n", comp.loss_last,
         (long long)comp.dense, (long long)comp.held, (double)comp.dense / (double)comp.held);
  double ratio_sum = 0;
  int ratio_n = 0;
  for (int i = 0; i < comp.rep.n_layers; i++) {
    const lt_ac_layer_report *l = &comp.rep.layers[i];
    printf("    node %2d kind %d: %8lld -> %8lld bytes, eb %.4g, samples %d, obs/pred %.3f\n",
           l->node, (int)l->kind, (long long)l->bytes_dense, (long long)l->bytes_held, l->eb,
           l->n_samples, l->mean_ratio);
    if (l->n_samples) {
      ratio_sum += l->mean_ratio;
      ratio_n++;
    }
  }
  CHECK(exact.dense == comp.dense);
  /* Batch-norm inputs are as large as conv inputs: kept exact they bound the total reduction
   * near 2x; compressed too it must be several times. */
  double reduction = (double)comp.dense / (double)comp.held;
  CHECK_MSG(reduction > (bn == LT_AC_BN_LOSSY ? 4.0 : 1.5), "saved bytes reduced only %.2fx",
            reduction);
  CHECK_MSG(fabs(comp.loss_last - exact.loss_last) < 0.1, "loss %.4f vs exact %.4f",
            comp.loss_last, exact.loss_last);
  if (mode == LT_AC_ADAPTIVE) {
    /* Looser than the 0.8..1.25 of the layer tests (test_stash): Fashion-MNIST's uniform
     * background makes whole regions of the input, and of the activations it feeds, one repeated
     * value whose quantisation error is one repeated number, so errors are correlated and the
     * observed dW error exceeds the independent-error prediction (measured 1.0 to 1.6). */
    REQUIRE(ratio_n > 0);
    double mean = ratio_sum / ratio_n;
    CHECK_MSG(mean > 0.7 && mean < 2.0, "mean observed/predicted %.3f", mean);
  }
  lt_ac_stash_free(st);
}

int main(int argc, char **argv) {
  if (argc > 1) steps = atoi(argv[1]);
  if (argc > 2)
    mode = !strcmp(argv[2], "fixed") ? LT_AC_FIXED
           : !strcmp(argv[2], "relative") ? LT_AC_RELATIVE : LT_AC_ADAPTIVE;
  if (argc > 3) bn = !strcmp(argv[3], "lossy") ? LT_AC_BN_LOSSY : LT_AC_BN_EXACT;
  if (steps < 20 || steps * B > 60000) steps = 60;
  if (argc > 5 && !strcmp(argv[4], "resnet20")) {
    hid_t f = H5Fopen(argv[5], H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) {
      printf("%s not found: capture it with capture_activations.py; skipped\n", argv[5]);
      return 77;
    }
    hid_t dx = H5Dopen2(f, "/acts/conv1", H5P_DEFAULT), dy = H5Dopen2(f, "/y", H5P_DEFAULT);
    hsize_t dims[4] = {0};
    if (dx >= 0) H5Sget_simple_extent_dims(H5Dget_space(dx), dims, NULL);
    data = (train_data){"resnet20", (int64_t)dims[0], 3 * 32 * 32, NULL, NULL};
    data.x = malloc((size_t)(data.n * data.elems) * sizeof *data.x);
    data.y = malloc((size_t)data.n * sizeof *data.y);
    if (dx < 0 || dy < 0 || data.n < B ||
        H5Dread(dx, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, data.x) < 0 ||
        H5Dread(dy, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, data.y) < 0) {
      printf("%s lacks /acts/conv1 or /y (recapture): skipped\n", argv[5]);
      return 77;
    }
    H5Dclose(dx);
    H5Dclose(dy);
    H5Fclose(f);
  } else {
    uint8_t *img = read_gz(FMNIST "train-images-idx3-ubyte.gz", (size_t)steps * B * 784, 16);
    uint8_t *lab = read_gz(FMNIST "train-labels-idx1-ubyte.gz", (size_t)steps * B, 8);
    if (!img || !lab) {
      printf("Fashion-MNIST not found under " FMNIST ": skipped\n");
      return 77;
    }
    data = (train_data){"smallcnn", (int64_t)steps * B, 784, NULL, NULL};
    data.x = malloc((size_t)(data.n * data.elems) * sizeof *data.x);
    data.y = malloc((size_t)data.n * sizeof *data.y);
    for (int64_t i = 0; i < data.n * data.elems; i++)
      data.x[i] = ((float)img[i] / 255.0f - 0.2860f) / 0.3530f;
    for (int64_t i = 0; i < data.n; i++) data.y[i] = lab[i];
    free(img);
    free(lab);
  }
  RUN(train_with_activation_compression_follows_exact_training);
  free(data.x);
  free(data.y);
  return test_summary();
}
