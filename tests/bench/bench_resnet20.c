/* ResNet-20 (CIFAR, 32x32) at batch 128 through the whole engine: training steps (forward,
 * softmax cross-entropy, backward, SGD with momentum) and inference forwards, plus OpenBLAS sgemm
 * measured in the same process at the same thread count. Prints one JSON line for resnet20.sh,
 * which puts PyTorch 1.13's figures beside it.
 *
 *   bench_resnet20 [--ops] [BATCH] [TRAIN_STEPS] [INFER_STEPS]
 *
 * --ops (or LATHE_PROFILE=1) also prints, on stderr, where a training step and an inference
 * forward spend their time: the executor's per-op profile (lt_exec_profile_print) and the step's
 * parts outside the executor (input copy, loss, optimizer).
 *
 * GFLOP/s counts 2 flops per multiply-accumulate and a training step as 3 forward passes, the
 * usual convention (and the one resnet20.py uses for PyTorch). Random inputs: throughput does
 * not depend on the pixel values. */
#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend/cpu/kernels.h"
#include "lathe/backend.h"
#include "lathe/train.h"

/* Process CPU time, all threads: steadier than wall time on a shared machine. */
static double cpu_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double bench_sgemm(int n, int reps) {
  float *a = malloc(sizeof(float) * n * n), *b = malloc(sizeof(float) * n * n),
        *c = malloc(sizeof(float) * n * n);
  for (int i = 0; i < n * n; i++) a[i] = b[i] = (float)(i % 13) * 0.01f;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1, a, n, b, n, 0, c, n);
  double best = 1e30;
  for (int r = 0; r < reps; r++) {
    double t0 = lt_now();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1, a, n, b, n, 0, c, n);
    double t = lt_now() - t0;
    if (t < best) best = t;
  }
  free(a), free(b), free(c);
  return 2.0 * n * (double)n * n / best / 1e9;
}

int main(int argc, char **argv) {
  int ops = 0, pos = 0, num[3] = {128, 10, 20};
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--ops") == 0)
      ops = 1;
    else if (pos < 3 && atoi(argv[i]) > 0)
      num[pos++] = atoi(argv[i]);
    else {
      fprintf(stderr, "usage: bench_resnet20 [--ops] [BATCH] [TRAIN_STEPS] [INFER_STEPS]\n");
      return 2;
    }
  }
  int batch = num[0], train_steps = num[1], infer_steps = num[2];
  lt_err err = {0};
  lt_zoo_opts zo = {.seed = 1};
  lt_graph *g = lt_zoo_build("resnet20", &zo, &err);
  lt_backend *be = g ? lt_backend_get("cpu", &err) : NULL;
  if (!be) {
    fprintf(stderr, "bench_resnet20: %s\n", err.msg);
    return 1;
  }
  int np = lt_train_params(g, NULL, 0);
  int *ids = malloc(sizeof(int) * np);
  lt_tensor **params = malloc(sizeof *params * np), **grads = malloc(sizeof *grads * np);
  lt_train_params(g, ids, np);
  for (int i = 0; i < np; i++) params[i] = g->values[ids[i]].data;
  lt_optim_config oc = lt_optim_config_default(LT_OPTIM_SGD);
  oc.momentum = 0.9f;
  oc.weight_decay = 5e-4f;
  lt_optim *opt = lt_optim_create(&oc, np, params, &err);
  lt_exec *ex = lt_exec_create(g, batch, LT_MODE_TRAIN, be, NULL, &err);
  if (!opt || !ex) {
    fprintf(stderr, "bench_resnet20: %s\n", err.msg);
    return 1;
  }
  for (int i = 0; i < np; i++) grads[i] = lt_exec_param_grad(ex, ids[i]);
  if (ops) lt_exec_profile_enable(ex, 1);
  ops = lt_exec_profile_enabled(ex);
  double part[3] = {0}, cpart[3] = {0}, c_train = 0; /* input copy, loss, optimizer */
  lt_rng r = lt_rng_make(3, 0);
  /* A host batch copied in every step, as the training loop does: the executor may reuse the
   * input buffer for activations once the first layer's backward is done. */
  size_t nx = (size_t)batch * 3 * 32 * 32;
  float *x = malloc(nx * sizeof(float));
  for (size_t i = 0; i < nx; i++) x[i] = lt_rng_normal(&r);
  int32_t *labels = malloc(sizeof(int32_t) * batch);
  for (int i = 0; i < batch; i++) labels[i] = (int32_t)lt_rng_below(&r, 10);

  double t_train = 0, loss = 0;
  for (int s = -1; s < train_steps; s++) { /* step -1 warms up */
    if (s == 0 && ops) lt_exec_profile_enable(ex, 1); /* drop the warm-up step */
    double t0 = lt_now(), c0 = cpu_now(), t1, c1, t2 = 0, c2 = 0, t3 = 0, c3 = 0;
    memcpy(lt_tensor_f32(lt_exec_input(ex, 0)), x, nx * sizeof(float));
    t1 = lt_now(), c1 = cpu_now();
    if (lt_exec_forward(ex, &err)) break;
    if (ops) t2 = lt_now(), c2 = cpu_now();
    loss = lt_cpu_softmax_xent(batch, 10, lt_tensor_f32(lt_exec_output(ex, 0)), labels,
                               1.0f / batch, lt_tensor_f32(lt_exec_output_grad(ex, 0)), NULL) /
           batch;
    if (ops) t3 = lt_now(), c3 = cpu_now();
    lt_exec_zero_grads(ex);
    if (lt_exec_backward(ex, &err)) break;
    double t4 = lt_now(), c4 = cpu_now();
    if (lt_optim_step(opt, grads, 0.01f, &err)) break;
    double t5 = lt_now(), c5 = cpu_now();
    if (s >= 0) {
      t_train += t5 - t0;
      c_train += c5 - c0;
      part[0] += t1 - t0, part[1] += t3 - t2, part[2] += t5 - t4;
      cpart[0] += c1 - c0, cpart[1] += c3 - c2, cpart[2] += c5 - c4;
    }
  }
  if (ops && train_steps > 0) {
    fprintf(stderr, "training step, batch %d, %d threads, mean of %d steps (wall ms):\n", batch,
            omp_get_max_threads(), train_steps);
    lt_exec_profile_print(ex, stderr);
    fprintf(stderr, "outside the executor, wall ms: input copy %.3f, softmax-xent %.3f, optimizer "
            "%.3f; whole step %.3f\n", 1e3 * part[0] / train_steps, 1e3 * part[1] / train_steps,
            1e3 * part[2] / train_steps, 1e3 * t_train / train_steps);
    fprintf(stderr, "outside the executor, cpu ms: input copy %.3f, softmax-xent %.3f, optimizer "
            "%.3f; whole step %.3f\n\n", 1e3 * cpart[0] / train_steps,
            1e3 * cpart[1] / train_steps, 1e3 * cpart[2] / train_steps,
            1e3 * c_train / train_steps);
  }
  lt_mem_stats mem;
  lt_mem_get_stats(&mem);
  lt_exec_free(ex);
  lt_exec *inf = lt_exec_create(g, batch, LT_MODE_INFER, be, NULL, &err);
  if (!inf) {
    fprintf(stderr, "bench_resnet20: %s\n", err.msg);
    return 1;
  }
  double t_inf = 0, c_inf = 0;
  for (int s = -1; s < infer_steps; s++) {
    if (s == 0 && ops) lt_exec_profile_enable(inf, 1);
    double t0 = lt_now(), c0 = cpu_now();
    memcpy(lt_tensor_f32(lt_exec_input(inf, 0)), x, nx * sizeof(float));
    if (lt_exec_forward(inf, &err)) break;
    if (s >= 0) t_inf += lt_now() - t0, c_inf += cpu_now() - c0;
  }
  if (err.status) {
    fprintf(stderr, "bench_resnet20: %s\n", err.msg);
    return 1;
  }
  if (ops && infer_steps > 0) {
    fprintf(stderr, "inference forward, batch %d, mean of %d forwards (wall ms):\n", batch,
            infer_steps);
    lt_exec_profile_print(inf, stderr);
    fprintf(stderr, "whole forward with input copy: wall %.3f ms, cpu %.3f ms\n\n",
            1e3 * t_inf / infer_steps, 1e3 * c_inf / infer_steps);
  }
  double macs = (double)lt_graph_macs(g);
  double train_ips = train_steps * (double)batch / t_train, infer_ips = infer_steps * (double)batch / t_inf;
  double sgemm = bench_sgemm(1024, 5);
  printf("{\"engine\":\"lathe\",\"threads\":%d,\"batch\":%d,\"macs_per_image\":%.0f,"
         "\"train_images_per_s\":%.2f,\"infer_images_per_s\":%.2f,"
         "\"train_gflops\":%.2f,\"infer_gflops\":%.2f,\"sgemm_gflops\":%.2f,\"last_loss\":%.4f,"
         "\"peak_bytes\":{\"weights\":%lld,\"gradients\":%lld,\"optimizer\":%lld,"
         "\"activations_saved\":%lld,\"workspace\":%lld}}\n",
         omp_get_max_threads(), batch, macs, train_ips, infer_ips, train_ips * 6 * macs / 1e9,
         infer_ips * 2 * macs / 1e9, sgemm, loss, (long long)mem.peak[LT_MEM_WEIGHTS],
         (long long)mem.peak[LT_MEM_GRADIENTS], (long long)mem.peak[LT_MEM_OPTIMIZER],
         (long long)mem.peak[LT_MEM_SAVED], (long long)mem.peak[LT_MEM_WORKSPACE]);
  lt_exec_free(inf);
  lt_optim_free(opt);
  lt_graph_free(g);
  free(ids), free(params), free(grads), free(labels), free(x);
  return 0;
}
