/* Training from the loader over MPI ranks (issue 7): a multi-rank run sums the loss over each
 * rank's local samples and all-reduces the gradient divided by the global batch, so its weights
 * after N steps equal the single-process run's on the same global batches (float reassociation
 * only), whatever the local batch sizes, empty ones included; every rank ends with bitwise the same
 * weights and batch-norm statistics; a read failure on one rank mid-epoch stops every rank at the
 * same step with an error instead of a hang.
 *
 *   loader_test_train_mpi --reference   one process, no MPI: writes the dataset and the reference
 *                                       weights (ref_weights.bin) into the working directory
 *   mpirun -np P loader_test_train_mpi  compares against them (ctest: fixture loader_train_ref) */
#include "lathe/backend.h"
#include "lathe/loader.h"
#include "lathe/train.h"
#include "fake_device.h"
#include "fault_pread.h"
#include "test.h"

#include <mpi.h>

int cmd_gen_surrogate(int argc, char **argv);

#define GRID 8
static const char *data_path = "train_mpi.h5";
static const char *ref_path = "ref_weights.bin";
static int rank, size;
static lt_backend *train_be; /* cpu, or with --device the CPU posing as a device backend */

/* A regression model without batch norm, so that its gradient over a batch is exactly the sum of
 * per-sample gradients and the multi-rank step can equal the single-process one:
 * conv3x3 (2→4) + bias, relu, conv1x1 (4→2) + bias. */
static lt_graph *small_model(void) {
  lt_err err = {0};
  lt_graph *g = lt_graph_new();
  int x = lt_graph_add_input(g, "input", LT_F32, 3, (int64_t[]){2, GRID, GRID});
  int64_t w1s[4] = {4, 2, 3, 3}, b1s[1] = {4}, w2s[4] = {2, 4, 1, 1}, b2s[1] = {2};
  lt_tensor *w1 = lt_tensor_new(LT_F32, 4, w1s, LT_MEM_WEIGHTS, &err);
  lt_tensor *b1 = lt_tensor_new(LT_F32, 1, b1s, LT_MEM_WEIGHTS, &err);
  lt_tensor *w2 = lt_tensor_new(LT_F32, 4, w2s, LT_MEM_WEIGHTS, &err);
  lt_tensor *b2 = lt_tensor_new(LT_F32, 1, b2s, LT_MEM_WEIGHTS, &err);
  lt_tensor *ts[4] = {w1, b1, w2, b2};
  for (int t = 0; t < 4; t++) {
    float *p = ts[t]->data;
    int64_t n = lt_shape_numel(ts[t]->ndim, ts[t]->shape);
    for (int64_t i = 0; i < n; i++) p[i] = 0.05f * (float)(((i + 3 * t) * 7919) % 17 - 8);
  }
  int iw1 = lt_graph_add_param(g, "c1.weight", w1, 1), ib1 = lt_graph_add_param(g, "c1.bias", b1, 1);
  int iw2 = lt_graph_add_param(g, "c2.weight", w2, 1), ib2 = lt_graph_add_param(g, "c2.bias", b2, 1);
  lt_node_attrs a3 = lt_attrs_conv(3, 1, 1, 1, 1), a1 = lt_attrs_conv(1, 1, 0, 1, 1);
  int h = lt_graph_add_node(g, LT_OP_CONV2D, "c1", (int[]){x, iw1, ib1}, 3, &a3, &err);
  h = lt_graph_add_node(g, LT_OP_RELU, "r1", (int[]){h}, 1, NULL, &err);
  int y = lt_graph_add_node(g, LT_OP_CONV2D, "c2", (int[]){h, iw2, ib2}, 3, &a1, &err);
  if (y < 0) {
    fprintf(stderr, "building the test model: %s\n", err.msg);
    lt_graph_free(g);
    return NULL;
  }
  lt_graph_set_output(g, y);
  return g;
}

/* on_epoch: asks to stop after the epoch number *user (1-based). */
static int stop_after(void *user, const lt_train_progress *p) {
  return p->epoch + 1 == *(const int *)user;
}

/* Trains g for a few epochs from a loader over data_path; NULL hooks: plain pread. With ckpt,
 * checkpoints there (resuming from it when resume) and stops after epoch stop_epoch when > 0. */
static lt_status train_ckpt(lt_graph *g, lt_loader_pread_fn fn, void *user, int batch, int epochs,
                            const char *ckpt, int resume, int stop_epoch, lt_train_result *r,
                            lt_err *err) {
  lt_loader_opts o = lt_loader_opts_default();
  o.path = data_path;
  o.global_batch = batch;
  o.epochs = epochs;
  o.seed = 5;
  o.buffer_fraction = 0.5;
  o.pread_fn = fn;
  o.pread_user = user;
  lt_loader *ld = lt_loader_open(&o, err);
  if (!ld) return err->status;
  lt_train_config c = lt_train_config_default();
  c.loader = ld;
  c.batch_size = batch;
  c.epochs = epochs;
  c.seed = 5;
  c.optim = lt_optim_config_default(LT_OPTIM_SGD);
  c.optim.momentum = 0.9f;
  c.sched.lr = 0.05;
  c.checkpoint_path = ckpt;
  c.resume_from = resume ? ckpt : NULL;
  c.meta.num_classes = 2;
  if (stop_epoch > 0) {
    c.on_epoch = stop_after;
    c.user = &stop_epoch;
  }
  lt_status st = lt_train_run(g, train_be, &c, r, err);
  lt_loader_close(ld);
  return st;
}

static lt_status train(lt_graph *g, lt_loader_pread_fn fn, void *user, int batch, int epochs,
                       lt_train_result *r, lt_err *err) {
  return train_ckpt(g, fn, user, batch, epochs, NULL, 0, 0, r, err);
}

/* Every parameter (trainable or not) of g, flattened: n floats into a new buffer. */
static float *flat_params(const lt_graph *g, int64_t *n) {
  *n = 0;
  for (int v = 0; v < g->n_values; v++)
    if (g->values[v].kind == LT_VALUE_PARAM) *n += lt_shape_numel(g->values[v].data->ndim, g->values[v].data->shape);
  float *out = malloc((size_t)*n * sizeof(float)), *p = out;
  for (int v = 0; v < g->n_values; v++) {
    if (g->values[v].kind != LT_VALUE_PARAM) continue;
    int64_t k = lt_shape_numel(g->values[v].data->ndim, g->values[v].data->shape);
    memcpy(p, g->values[v].data->data, (size_t)k * sizeof(float));
    p += k;
  }
  return out;
}

/* Global batch 10 over 73 samples: 8 steps per epoch, the last of 3 samples, so with 4 ranks some
 * rank computes nothing in that step, and the buffer policy makes local batches uneven. */
#define BATCH 10
#define EPOCHS 3

TEST_CASE(train_mpi_weights_equal_single_process) {
  lt_graph *g = small_model();
  REQUIRE(g);
  lt_err err = {0};
  lt_train_result r;
  lt_status st = train(g, NULL, NULL, BATCH, EPOCHS, &r, &err);
  if (st) TEST_FAIL_AT("rank %d: %s", rank, err.msg);
  REQUIRE(st == LT_OK);
  CHECK(r.steps == EPOCHS * 8 && r.loader_ranks == size);
  CHECK(r.loader.samples == 73 * EPOCHS);
  int64_t n;
  float *w = flat_params(g, &n);
  /* every rank applied the same updates: bitwise equal to rank 0 */
  float *w0 = malloc((size_t)n * sizeof(float));
  memcpy(w0, w, (size_t)n * sizeof(float));
  MPI_Bcast(w0, (int)n, MPI_FLOAT, 0, MPI_COMM_WORLD);
  CHECK_MSG(memcmp(w0, w, (size_t)n * sizeof(float)) == 0, "rank %d: weights differ from rank 0", rank);
  /* and equal to one process training on the same global batches, up to float reassociation:
   * the per-sample gradients are the same, only the order of their sum differs */
  FILE *f = fopen(ref_path, "rb");
  REQUIRE(f);
  float *ref = malloc((size_t)n * sizeof(float));
  CHECK(fread(ref, sizeof(float), (size_t)n, f) == (size_t)n);
  fclose(f);
  double worst = 0;
  for (int64_t i = 0; i < n; i++) {
    double d = fabs((double)w[i] - ref[i]) / (1e-3 + fabs(ref[i]));
    if (d > worst) worst = d;
  }
  if (rank == 0)
    printf("  %d ranks, %d steps: weights vs single process, max rel diff %.2e (tolerance 1e-4); "
           "batch imbalance %.3f, hit rate %.3f\n", size, (int)r.steps, worst,
           r.loader.batch_imbalance, (double)r.loader.hits / (double)r.loader.samples);
  CHECK(worst < 1e-4);
  free(ref);
  free(w0);
  free(w);
  lt_graph_free(g);
}

/* The zoo's unet has batch norm: ranks see different local batches, so their running statistics
 * would drift apart; the loop averages them, and every rank ends with the same parameters. */
TEST_CASE(train_mpi_unet_ranks_end_identical) {
  lt_err err = {0};
  lt_zoo_opts zo = {.in_channels = 2, .out_channels = 2, .height = GRID, .width = GRID,
                    .base_width = 4, .seed = 3};
  lt_graph *g = lt_zoo_build("unet", &zo, &err);
  REQUIRE(g);
  lt_train_result r;
  lt_status st = train(g, NULL, NULL, 16, 1, &r, &err);
  if (st) TEST_FAIL_AT("rank %d: %s", rank, err.msg);
  REQUIRE(st == LT_OK);
  CHECK(isfinite(r.train_loss));
  int64_t n;
  float *w = flat_params(g, &n), *w0 = malloc((size_t)n * sizeof(float));
  memcpy(w0, w, (size_t)n * sizeof(float));
  MPI_Bcast(w0, (int)n, MPI_FLOAT, 0, MPI_COMM_WORLD);
  CHECK_MSG(memcmp(w0, w, (size_t)n * sizeof(float)) == 0,
            "rank %d: unet parameters (batch-norm statistics included) differ from rank 0", rank);
  /* and the running statistics moved from their initial zeros (on a device backend they come
   * back from the executor's copies every step) */
  double moved = 0;
  for (int v = 0; v < g->n_values; v++)
    if (g->values[v].data && strstr(g->values[v].name, "running_mean"))
      for (int64_t i = 0; i < lt_tensor_numel(g->values[v].data); i++)
        moved += fabs(lt_tensor_f32(g->values[v].data)[i]);
  CHECK_MSG(moved > 0, "rank %d: the batch-norm running means never moved", rank);
  free(w0);
  free(w);
  lt_graph_free(g);
}

/* Stopped after epoch 1 (rank 0 checkpoints), resumed on every rank from that checkpoint: the
 * loader is replayed up to the saved position and the run ends where the uninterrupted one does
 * (up to float reassociation: the cost balance may assign samples to other ranks on the rerun). */
TEST_CASE(train_mpi_resume_ends_at_reference) {
  /* Its own name per run kind: the np2, np4 and device runs share this directory and may run
   * at the same time (ctest -j). */
  char ckpt[64];
  snprintf(ckpt, sizeof ckpt, "resume_ckpt.np%d%s.h5", size, train_be->device >= 0 ? ".device" : "");
  lt_graph *g = small_model();
  REQUIRE(g);
  lt_err err = {0};
  lt_train_result r;
  lt_status st = train_ckpt(g, NULL, NULL, BATCH, EPOCHS, ckpt, 0, 1, &r, &err);
  CHECK(st == LT_ERR_CANCELLED);
  lt_graph_free(g);
  g = small_model(); /* fresh weights: the checkpoint must bring them back */
  st = train_ckpt(g, NULL, NULL, BATCH, EPOCHS, ckpt, 1, 0, &r, &err);
  if (st) TEST_FAIL_AT("rank %d: resumed run: %s", rank, err.msg);
  CHECK(st == LT_OK && r.steps == EPOCHS * 8);
  int64_t n;
  float *w = flat_params(g, &n), *ref = malloc((size_t)n * sizeof(float));
  FILE *f = fopen(ref_path, "rb");
  REQUIRE(f);
  CHECK(fread(ref, sizeof(float), (size_t)n, f) == (size_t)n);
  fclose(f);
  double worst = 0;
  for (int64_t i = 0; i < n; i++) {
    double d = fabs((double)w[i] - ref[i]) / (1e-3 + fabs(ref[i]));
    if (d > worst) worst = d;
  }
  CHECK_MSG(worst < 1e-4, "rank %d: resumed weights off by %.2e", rank, worst);
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) remove(ckpt);
  free(ref);
  free(w);
  lt_graph_free(g);
}

/* A disk error on the last rank mid-epoch: lt_train_run fails on every rank, at the same step. */
TEST_CASE(train_mpi_read_error_on_one_rank_stops_all) {
  lt_graph *g = small_model();
  REQUIRE(g);
  lt_err err = {0};
  lt_train_result r = {0};
  int left = 12;
  int bad = rank == size - 1;
  lt_status st = train(g, bad ? failing_pread : NULL, bad ? &left : NULL, BATCH, EPOCHS, &r, &err);
  CHECK(st != LT_OK);
  if (bad) CHECK_STR_CONTAINS(err.msg, "Input/output error");
  else CHECK_STR_CONTAINS(err.msg, "failed");
  lt_graph_free(g);
}

static int make_data(void) {
  char *args[] = {"gen-surrogate", "--out", (char *)data_path, "--samples", "73", "--grid", "8",
                  "--per-run", "16", "--warmup", "50", "--delta", "5", NULL};
  return cmd_gen_surrogate(13, args);
}

/* One process, no MPI: the reference the multi-rank runs are held to. */
static int write_reference(void) {
  if (make_data() != 0) return 1;
  lt_graph *g = small_model();
  lt_err err = {0};
  lt_train_result r;
  if (!g || train(g, NULL, NULL, BATCH, EPOCHS, &r, &err) != LT_OK) {
    fprintf(stderr, "reference run: %s\n", err.msg);
    return 1;
  }
  int64_t n;
  float *w = flat_params(g, &n);
  FILE *f = fopen(ref_path, "wb");
  int ok = f && fwrite(w, sizeof(float), (size_t)n, f) == (size_t)n;
  if (f) fclose(f);
  printf("reference: %lld parameters after %lld steps, train loss %.5f\n", (long long)n,
         (long long)r.steps, r.train_loss);
  /* one process is deterministic: stopped after epoch 2 and resumed, it ends bitwise equal */
  const char *ckpt = "reference_ckpt.h5";
  lt_graph *g2 = small_model();
  if (train_ckpt(g2, NULL, NULL, BATCH, EPOCHS, ckpt, 0, 2, &r, &err) != LT_ERR_CANCELLED ||
      train_ckpt(g2, NULL, NULL, BATCH, EPOCHS, ckpt, 1, 0, &r, &err) != LT_OK) {
    fprintf(stderr, "reference resume: %s\n", err.msg);
    ok = 0;
  }
  int64_t n2;
  float *w2 = flat_params(g2, &n2);
  if (n2 != n || memcmp(w, w2, (size_t)n * sizeof(float)) != 0) {
    fprintf(stderr, "reference resume: weights differ from the uninterrupted run\n");
    ok = 0;
  }
  remove(ckpt);
  free(w2);
  lt_graph_free(g2);
  free(w);
  lt_graph_free(g);
  return ok ? 0 : 1;
}

int main(int argc, char **argv) {
  lt_train_set_threads(1);
  train_be = lt_backend_get("cpu", NULL);
  if (argc > 1 && !strcmp(argv[1], "--reference")) return write_reference();
  /* --device: the ranks train through the device paths of the loop (parameters sent to the
   * executor each step, gradients and running statistics brought back) against the same
   * CPU reference */
  if (argc > 1 && !strcmp(argv[1], "--device")) train_be = test_fake_device();
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  RUN(train_mpi_weights_equal_single_process);
  RUN(train_mpi_unet_ranks_end_identical);
  RUN(train_mpi_resume_ends_at_reference);
  if (size > 1) RUN(train_mpi_read_error_on_one_rank_stops_all);
  int failed = test_summary();
  MPI_Allreduce(MPI_IN_PLACE, &failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return failed;
}
