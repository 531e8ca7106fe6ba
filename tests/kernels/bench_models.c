/* Inference latency of two ONNX models side by side (typically a dense network and its
 * low-rank-compressed version), and where the time goes: one line per distinct convolution
 * geometry with its share of a forward. Built, not run by ctest.
 *
 *   bench_models DENSE.onnx COMPRESSED.onnx [REPS] [BATCH...]      (default: 15 reps, batch 64 1)
 *
 * Each batch size runs the two models' forwards (LT_MODE_INFER, as the compress job's latency
 * measurement and eval do) interleaved, REPS times each, and reports the median wall time per
 * forward and the ratio dense / compressed. Every repetition runs each model in several
 * configurations, so that "before" and "after" come from the same run under the same load:
 *  - direct off: the im2col/sgemm lowering instead of the direct kernels (kernels_direct.c);
 *  - op-parallel: every node over the whole batch, threads inside each kernel (batch split off,
 *    BatchNorm folding and Add fusion off; the executor before this work);
 *  - fused: the inference BatchNorms folded into their convolutions (LT_FUSE_BN) and the
 *    residual Adds run in the convolution before them (LT_FUSE_ADD), unsplit;
 *  - split: batch split (lt_exec_set_batch_split), each thread the whole graph on a slice;
 *  - split + fused: both (the default).
 * Set LATHE_BENCH_NO_BREAKDOWN=1 to skip the per-geometry tables, LATHE_BENCH_PROFILE=1 for
 * per-op tables (lt_exec_profile) of the unsplit configurations.
 *
 * Per-geometry times call lt_cpu_conv2d_fwd_infer on random data of that geometry in isolation
 * (median of REPS, process CPU time of all threads, which other processes' load disturbs far
 * less than wall time), multiplied by how many convolutions of the model have it. */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend/cpu/kernels.h"
#include "lathe/backend.h"
#include "lathe/exec.h"
#include "lathe/onnx.h"
#include "lathe/train.h"
#include "ops/ops.h"

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
  qsort(v, n, sizeof *v, cmp_double);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* The configurations every repetition runs, in this order. */
static const struct {
  const char *name;
  int direct, split;
  unsigned fuse;
} confs[] = {
    {"direct off", 0, 0, LT_FUSE_RELU},
    {"op-parallel (before)", 1, 0, LT_FUSE_RELU},
    {"fused", 1, 0, LT_FUSE_ALL},
    {"split", 1, 1, LT_FUSE_RELU},
    {"split + fused (after)", 1, 1, LT_FUSE_ALL},
};
#define NCONF ((int)(sizeof confs / sizeof confs[0]))

static lt_exec *make_exec(lt_graph *g, int batch, lt_backend *be) {
  lt_err err = {0};
  lt_exec *ex = lt_exec_create(g, batch, LT_MODE_INFER, be, NULL, &err);
  if (!ex) {
    fprintf(stderr, "bench_models: %s\n", err.msg);
    exit(1);
  }
  lt_tensor *in = lt_exec_input(ex, 0);
  lt_rng r = lt_rng_make(7, 0);
  float *p = lt_tensor_f32(in);
  for (int64_t i = 0; i < lt_tensor_numel(in); i++) p[i] = lt_rng_normal(&r);
  return ex;
}

/* Process CPU time (all threads): far less disturbed by other processes on a shared machine than
 * wall time, and what a kernel costs. */
static double cpu_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static double time_forward(lt_exec *ex, double *cpu) {
  lt_err err = {0};
  double t0 = lt_now(), c0 = cpu_now();
  if (lt_exec_forward(ex, &err)) {
    fprintf(stderr, "bench_models: %s\n", err.msg);
    exit(1);
  }
  *cpu = cpu_now() - c0;
  return lt_now() - t0;
}

/* ---- per-geometry breakdown ---------------------------------------------------------------- */

typedef struct geo_row {
  lt_conv_geom g;
  int count;
  double ms[3]; /* direct kernels off, automatic, forced (every convolution they can take) */
} geo_row;

static int same_geom(const lt_conv_geom *a, const lt_conv_geom *b) {
  return a->c == b->c && a->s == b->s && a->h == b->h && a->w == b->w && a->kh == b->kh &&
         a->kw == b->kw && a->stride_h == b->stride_h && a->stride_w == b->stride_w &&
         a->pad_t == b->pad_t && a->pad_l == b->pad_l && a->pad_b == b->pad_b &&
         a->pad_r == b->pad_r && a->groups == b->groups && a->dil_h == b->dil_h &&
         a->dil_w == b->dil_w;
}

static const int geo_modes[3] = {LT_DIRECT_OFF, LT_DIRECT_AUTO, LT_DIRECT_AVX512};

/* Median CPU ms of one lt_cpu_conv2d_fwd_infer call in each of the three modes, interleaved;
 * "forced" also turns Winograd off, so it shows the direct kernel wherever it can run. */
static void time_geom(const lt_conv_geom *g, int reps, double ms[3]) {
  const size_t nx = (size_t)g->n * g->c * g->h * g->w, ny = (size_t)g->n * g->s * g->oh * g->ow,
               nw = (size_t)g->s * (g->c / g->groups) * g->kh * g->kw;
  float *x = malloc(nx * sizeof(float)), *y = malloc(ny * sizeof(float)),
        *w = malloc(nw * sizeof(float)), *b = malloc(g->s * sizeof(float));
  const size_t wsb = lt_cpu_conv2d_workspace(g);
  void *ws = wsb ? malloc(wsb) : NULL;
  lt_rng r = lt_rng_make(11, 0);
  for (size_t i = 0; i < nx; i++) x[i] = lt_rng_normal(&r);
  for (size_t i = 0; i < nw; i++) w[i] = 0.1f * lt_rng_normal(&r);
  for (int i = 0; i < g->s; i++) b[i] = 0.01f * i;
  double *t[3];
  for (int m = 0; m < 3; m++) t[m] = malloc(sizeof(double) * reps);
  for (int k = -1; k < reps; k++) /* k = -1 warms up */
    for (int m = 0; m < 3; m++) {
      lt_cpu_direct_set_mode(geo_modes[m]);
      lt_cpu_winograd_set_mode(m == 2 ? LT_WINOGRAD_OFF : LT_WINOGRAD_AUTO);
      double t0 = cpu_now();
      lt_cpu_conv2d_fwd_infer(g, x, w, b, y, ws);
      if (k >= 0) t[m][k] = cpu_now() - t0;
    }
  lt_cpu_direct_set_mode(-1);
  lt_cpu_winograd_set_mode(LT_WINOGRAD_AUTO);
  for (int m = 0; m < 3; m++) {
    ms[m] = median(t[m], reps) * 1e3;
    free(t[m]);
  }
  free(x), free(y), free(w), free(b), free(ws);
}

static void breakdown(const char *label, lt_graph *g, int batch, int reps) {
  geo_row rows[128];
  int nrows = 0;
  for (int i = 0; i < g->n_nodes; i++) {
    const lt_node *n = &g->nodes[i];
    if (n->op != LT_OP_CONV2D) continue;
    lt_conv_geom geom;
    if (lt_op_conv_geom(g, n, batch, 0, &geom, NULL)) continue;
    int k = 0;
    while (k < nrows && !same_geom(&rows[k].g, &geom))
      k++;
    if (k == nrows) {
      if (nrows == 128) continue;
      rows[nrows++] = (geo_row){.g = geom};
    }
    rows[k].count++;
  }
  double tot[3] = {0, 0, 0};
  for (int k = 0; k < nrows; k++) {
    time_geom(&rows[k].g, reps, rows[k].ms);
    for (int m = 0; m < 3; m++) {
      rows[k].ms[m] *= rows[k].count;
      tot[m] += rows[k].ms[m];
    }
  }
  printf("\n%s, batch %d: %d distinct conv geometries (CPU ms, all threads = median per "
         "forward x count; off = before, auto = after, forced = direct kernels on every conv they "
         "can take, Winograd off)\n",
         label, batch, nrows);
  printf("  %-30s %5s %9s %9s %9s %7s %6s\n", "c->s hxw kxk/stride pad", "count", "ms off",
         "ms auto", "ms forced", "off/auto", "share");
  for (int k = 0; k < nrows; k++) {
    const lt_conv_geom *q = &rows[k].g;
    char desc[64];
    snprintf(desc, sizeof desc, "%d->%d %dx%d %dx%d/%d p%d%s", q->c, q->s, q->h, q->w, q->kh, q->kw,
             q->stride_h, q->pad_t, q->groups > 1 ? " grouped" : "");
    printf("  %-30s %5d %9.3f %9.3f %9.3f %7.2f %5.1f%%\n", desc, rows[k].count, rows[k].ms[0],
           rows[k].ms[1], rows[k].ms[2], rows[k].ms[0] / rows[k].ms[1],
           100.0 * rows[k].ms[1] / tot[1]);
  }
  printf("  %-30s %5s %9.3f %9.3f %9.3f %7.2f\n", "all convolutions", "", tot[0], tot[1], tot[2],
         tot[0] / tot[1]);
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: bench_models DENSE.onnx COMPRESSED.onnx [REPS] [BATCH...]\n");
    return 2;
  }
  const int reps = argc > 3 ? atoi(argv[3]) : 15;
  int batches[16] = {64, 1}, nbatch = 2;
  if (argc > 4) {
    nbatch = 0;
    for (int i = 4; i < argc && nbatch < 16; i++)
      batches[nbatch++] = atoi(argv[i]);
  }
  if (reps < 1) return 2;
  lt_err err = {0};
  lt_graph *g[2];
  for (int m = 0; m < 2; m++)
    if (!(g[m] = lt_onnx_load(argv[1 + m], NULL, &err))) {
      fprintf(stderr, "bench_models: %s: %s\n", argv[1 + m], err.msg);
      return 1;
    }
  lt_backend *be = lt_backend_get("cpu", &err);
  if (!be) {
    fprintf(stderr, "bench_models: %s\n", err.msg);
    return 1;
  }
  printf("threads %d, direct conv kernels: %s, Winograd: %s, %d interleaved reps\n",
         omp_get_max_threads(), lt_cpu_direct_impl_name(), lt_cpu_winograd_impl_name(), reps);
  printf("dense: %s\ncompressed: %s\n", argv[1], argv[2]);
  for (int bi = 0; bi < nbatch; bi++) {
    const int batch = batches[bi];
    lt_exec *ex[2] = {make_exec(g[0], batch, be), make_exec(g[1], batch, be)};
    double *t[2][NCONF], *tc[2][NCONF];
    for (int m = 0; m < 2; m++)
      for (int k = 0; k < NCONF; k++) {
        t[m][k] = malloc(sizeof(double) * reps);
        tc[m][k] = malloc(sizeof(double) * reps);
      }
    int split_ok = 1;
    for (int k = -1; k < reps; k++) /* k = -1 warms up */
      for (int f = 0; f < NCONF; f++) {
        lt_cpu_direct_set_mode(confs[f].direct ? LT_DIRECT_AUTO : LT_DIRECT_OFF);
        for (int m = 0; m < 2; m++) {
          split_ok &= lt_exec_set_batch_split(ex[m], confs[f].split) == confs[f].split;
          lt_exec_set_fusion(ex[m], confs[f].fuse);
          double c, s = time_forward(ex[m], &c);
          if (k >= 0) t[m][f][k] = s, tc[m][f][k] = c;
        }
      }
    lt_cpu_direct_set_mode(-1);
    printf("\nbatch %d                  wall ms: dense  compressed  speedup |  CPU ms: dense  "
           "compressed  speedup\n",
           batch);
    if (!split_ok) printf("  (no batch split at this batch: it needs >= 2 images per thread)\n");
    for (int f = 0; f < NCONF; f++) {
      double d = median(t[0][f], reps) * 1e3, c = median(t[1][f], reps) * 1e3;
      double dc = median(tc[0][f], reps) * 1e3, cc = median(tc[1][f], reps) * 1e3;
      printf("  %-22s %14.2f %11.2f %7.2fx | %14.2f %11.2f %7.2fx\n", confs[f].name, d, c, d / c,
             dc, cc, dc / cc);
    }
    if (getenv("LATHE_BENCH_PROFILE")) /* per-op tables of the unsplit configurations */
      for (int f = 0; f < NCONF; f++) {
        if (confs[f].split || !confs[f].direct) continue;
        for (int m = 0; m < 2; m++) {
          lt_exec_set_fusion(ex[m], confs[f].fuse);
          lt_exec_profile_enable(ex[m], 1);
          double c;
          for (int k = 0; k < reps; k++) time_forward(ex[m], &c);
          printf("\n%s, %s, batch %d: per-op profile\n", m ? "compressed" : "dense", confs[f].name,
                 batch);
          lt_exec_profile_print(ex[m], stdout);
          lt_exec_profile_enable(ex[m], 0);
        }
      }
    for (int m = 0; m < 2; m++) {
      lt_exec_free(ex[m]);
      for (int f = 0; f < NCONF; f++)
        free(t[m][f]), free(tc[m][f]);
    }
    if (!getenv("LATHE_BENCH_NO_BREAKDOWN")) {
      breakdown("dense", g[0], batch, reps);
      breakdown("compressed", g[1], batch, reps);
    }
  }
  lt_graph_free(g[0]);
  lt_graph_free(g[1]);
  return 0;
}
