/* ResNet-20 (CIFAR, 32x32) at batch 128 on the CUDA backend: training steps (forward, softmax
 * cross-entropy, backward, SGD with momentum 0.9 and weight decay 5e-4, all on the device) and
 * inference forwards. Prints one JSON line with the keys of tests/bench/bench_resnet20.c, which
 * check.sh puts beside PyTorch's figures from the same run.
 *
 *   gpu_bench_resnet20 [BATCH] [TRAIN_STEPS] [INFER_STEPS] [DEVICE]
 *
 * Inputs and labels are uploaded once (as the PyTorch side keeps its batch on the GPU); each
 * training step brings the loss back to the host, so steps are timed end to end. GFLOP/s counts
 * 2 flops per multiply-accumulate and a training step as 3 forward passes. Then the same model
 * trains through lt_train_run, as a train job does (loop_train_images_per_s, plus its keys).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/cuda_kernels.h"
#include "lathe/backend.h"
#include "lathe/data.h"
#include "lathe/train.h"
#include "lathe/zoo.h"

/* The executor keeps device copies of the parameters but does not hand them out (there is no
 * lt_exec_param yet), so the benchmark wraps the CUDA backend and notes, from the node contexts
 * of the first forward, which tensor holds each parameter value on the device. */
static lt_backend_vtbl spy_vtbl;
static lt_backend spy;
static lt_backend *inner;
static lt_tensor **param_dev; /* (n_values) device tensor of each parameter value, or NULL */

static lt_status spy_forward(lt_backend *be, lt_node_ctx *ctx, lt_err *err) {
  const lt_node *n = &ctx->g->nodes[ctx->node];
  for (int i = 0; i < n->n_in; i++)
    if (ctx->g->values[n->in[i]].kind == LT_VALUE_PARAM) param_dev[n->in[i]] = ctx->in[i];
  return inner->vt->forward(inner, ctx, err);
}

static int fail(const char *what, const lt_err *err) {
  fprintf(stderr, "gpu_bench_resnet20: %s: %s\n", what, err->msg);
  return 1;
}

int main(int argc, char **argv) {
  const int batch = argc > 1 ? atoi(argv[1]) : 128;
  const int train_steps = argc > 2 ? atoi(argv[2]) : 50;
  const int infer_steps = argc > 3 ? atoi(argv[3]) : 100;
  const char *device = argc > 4 ? argv[4] : "cuda";
  lt_err err = {0};
  lt_zoo_opts zo = {.seed = 1};
  lt_graph *g = lt_zoo_build("resnet20", &zo, &err);
  if (!g) return fail("building resnet20", &err);
  if (!(inner = lt_backend_get(device, &err))) {
    printf("SKIP: %s\n", err.msg);
    return 77;
  }
  spy_vtbl = *inner->vt;
  spy_vtbl.forward = spy_forward;
  spy = *inner;
  spy.vt = &spy_vtbl;
  lt_backend *be = &spy;
  param_dev = calloc((size_t)g->n_values, sizeof *param_dev);

  const int np = lt_train_params(g, NULL, 0);
  int *ids = malloc(sizeof(int) * (size_t)np);
  lt_train_params(g, ids, np);
  lt_exec *ex = lt_exec_create(g, batch, LT_MODE_TRAIN, be, NULL, &err);
  if (!ex) return fail("planning the training step", &err);

  /* batch and labels, uploaded once */
  const size_t nx = (size_t)batch * 3 * 32 * 32;
  float *x = malloc(nx * sizeof(float));
  int32_t *labels = malloc(sizeof(int32_t) * (size_t)batch);
  lt_rng r = lt_rng_make(3, 0);
  for (size_t i = 0; i < nx; i++) x[i] = lt_rng_normal(&r);
  for (int i = 0; i < batch; i++) labels[i] = (int32_t)lt_rng_below(&r, 10);
  int32_t *dlabels = be->vt->alloc(be, sizeof(int32_t) * (size_t)batch, LT_MEM_DATA, &err);
  if (!dlabels || be->vt->to_device(be, lt_exec_input(ex, 0)->data, x, nx * sizeof(float), &err) ||
      be->vt->to_device(be, dlabels, labels, sizeof(int32_t) * (size_t)batch, &err))
    return fail("uploading the batch", &err);

  /* SGD velocity per trainable parameter, on the device */
  float **vel = calloc((size_t)np, sizeof *vel);
  for (int i = 0; i < np; i++) {
    const size_t bytes = lt_tensor_nbytes(g->values[ids[i]].data);
    if (!(vel[i] = be->vt->alloc(be, bytes, LT_MEM_OPTIMIZER, &err)))
      return fail("allocating optimizer state", &err);
  }

  double t_train = 0, loss = 0;
  for (int s = -2; s < train_steps; s++) { /* two warm-up steps */
    const double t0 = lt_now();
    if (lt_exec_forward(ex, &err)) return fail("forward", &err);
    lt_exec_zero_grads(ex);
    loss = lt_cuda_softmax_xent(batch, 10, lt_tensor_f32(lt_exec_output(ex, 0)), dlabels,
                                1.0f / batch, lt_tensor_f32(lt_exec_output_grad(ex, 0)), NULL) /
           batch;
    if (lt_cuda_take_error(&err)) return fail("loss", &err);
    if (lt_exec_backward(ex, &err)) return fail("backward", &err);
    for (int i = 0; i < np; i++) {
      lt_tensor *w = param_dev[ids[i]], *gr = lt_exec_param_grad(ex, ids[i]);
      if (!w || !gr) {
        fprintf(stderr, "gpu_bench_resnet20: parameter '%s' has no device copy or gradient\n",
                g->values[ids[i]].name);
        return 1;
      }
      lt_cuda_sgd_step((size_t)lt_tensor_numel(w), 0.01f, 0.9f, 0.0f, 5e-4f, 0,
                       lt_tensor_f32(w), lt_tensor_f32(gr), vel[i], s == -2);
    }
    if (lt_cuda_take_error(&err) || be->vt->synchronize(be, &err)) return fail("SGD", &err);
    if (s >= 0) t_train += lt_now() - t0;
  }
  lt_mem_stats mem;
  lt_mem_get_stats(&mem);
  lt_exec_free(ex);

  lt_exec *inf = lt_exec_create(g, batch, LT_MODE_INFER, be, NULL, &err);
  if (!inf || be->vt->to_device(be, lt_exec_input(inf, 0)->data, x, nx * sizeof(float), &err))
    return fail("planning inference", &err);
  double t_inf = 0;
  for (int s = -2; s < infer_steps; s++) {
    const double t0 = lt_now();
    if (lt_exec_forward(inf, &err) || be->vt->synchronize(be, &err))
      return fail("inference", &err);
    if (s >= 0) t_inf += lt_now() - t0;
  }
  lt_exec_free(inf);

  /* The same model through lt_train_run, as a train job runs it: batches drawn from uint8 images
   * in host memory (random crop with 4 pixels of padding, flip, normalisation) on the host each
   * step, the loss on the host, the optimizer on the device. Its images/s, all steps counted,
   * against the loop above shows what the training loop costs around the kernels. */
  lt_dataset ds = {.split = "train", .n = (int64_t)batch * (train_steps + 2), .c = 3, .h = 32,
                   .w = 32, .x_dtype = LT_U8, .num_classes = 10};
  uint8_t *px = malloc((size_t)ds.n * 3 * 32 * 32);
  int32_t *py = malloc(sizeof(int32_t) * (size_t)ds.n);
  for (int64_t i = 0; i < ds.n * 3 * 32 * 32; i++) px[i] = (uint8_t)lt_rng_below(&r, 256);
  for (int64_t i = 0; i < ds.n; i++) py[i] = (int32_t)lt_rng_below(&r, 10);
  ds.x = px;
  ds.labels = py;
  lt_train_config tc = lt_train_config_default();
  tc.train = &ds;
  tc.batch_size = batch;
  tc.epochs = 1;
  tc.optim = lt_optim_config_default(LT_OPTIM_SGD);
  tc.optim.momentum = 0.9f;
  tc.optim.weight_decay = 5e-4f;
  tc.sched = (lt_schedule){.kind = LT_SCHED_CONSTANT, .lr = 0.01};
  tc.batch.norm = (lt_norm){.n = 3, .mean = {0.49f, 0.48f, 0.45f}, .std = {0.25f, 0.24f, 0.26f}};
  tc.batch.pad = 4;
  tc.batch.flip = 1;
  lt_train_result tr;
  if (lt_train_run(g, inner, &tc, &tr, &err)) return fail("lt_train_run", &err);
  free(px), free(py);

  const double macs = (double)lt_graph_macs(g);
  const double train_ips = train_steps * (double)batch / t_train;
  const double infer_ips = infer_steps * (double)batch / t_inf;
  printf("{\"engine\":\"lathe\",\"device\":\"%s\",\"batch\":%d,\"macs_per_image\":%.0f,"
         "\"train_images_per_s\":%.2f,\"infer_images_per_s\":%.2f,\"train_gflops\":%.2f,"
         "\"infer_gflops\":%.2f,\"last_loss\":%.4f,\"loop_train_images_per_s\":%.2f,"
         "\"loop_steps\":%lld,\"peak_bytes\":{\"weights\":%lld,"
         "\"gradients\":%lld,\"optimizer\":%lld,\"activations_saved\":%lld,\"workspace\":%lld}}\n",
         inner->description, batch, macs, train_ips, infer_ips, train_ips * 6 * macs / 1e9,
         infer_ips * 2 * macs / 1e9, loss, tr.samples_per_s, (long long)tr.steps,
         (long long)mem.peak[LT_MEM_WEIGHTS],
         (long long)mem.peak[LT_MEM_GRADIENTS], (long long)mem.peak[LT_MEM_OPTIMIZER],
         (long long)mem.peak[LT_MEM_SAVED], (long long)mem.peak[LT_MEM_WORKSPACE]);
  for (int i = 0; i < np; i++)
    be->vt->free(be, vel[i], lt_tensor_nbytes(g->values[ids[i]].data), LT_MEM_OPTIMIZER);
  be->vt->free(be, dlabels, sizeof(int32_t) * (size_t)batch, LT_MEM_DATA);
  lt_graph_free(g);
  free(ids), free(vel), free(x), free(labels), free(param_dev);
  return 0;
}
