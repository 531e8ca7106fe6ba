/* Micro-benchmark of the CPU convolution kernels on ResNet-20's conv layers (CIFAR, 32×32) at
 * batch 128: forward, backward data and backward filter per distinct layer shape, each next to a
 * plain sgemm of the same lowered size (M = out channels, N = batch*oh*ow, K = in*kh*kw) measured
 * in the same run. Built, not run by ctest:
 *
 *   OMP_WAIT_POLICY=passive build/bin/bench_conv [--cpu] [--tile 2|4] [BATCH [LAYER]]
 *
 * LAYER selects one row (for profiling). --cpu times with the process CPU clock instead of the
 * wall clock: run single-threaded (OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1) it gives stable
 * per-core figures on a machine that others are loading, where wall-clock figures swing 2-3x.
 *
 * GFLOP/s counts 2 flops per multiply-accumulate, as sgemm figures do (Lathe's reports count
 * MACs; divide by 2 to compare); for the Winograd path it is the direct convolution's flop count
 * over the time taken ("effective"). Times are the median of the repetitions.
 *
 * Every layer runs twice in the same process: the im2col path ("old", LT_WINOGRAD_OFF) and the
 * path the library picks ("new": Winograd where lt_cpu_winograd_active, with the instruction set
 * printed; LATHE_CONV_WINOGRAD and LATHE_CONV_WINOGRAD_TILE select as in kernels_winograd.c),
 * with the ratio new/old in speed. "fwd" is the training forward (lt_cpu_conv2d_fwd), "infer"
 * the inference forward (lt_cpu_conv2d_fwd_infer: F(4×4) on outputs of 16×16 and more).
 */
#include <stdio.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cpu/kernels.h"
#include "lathe/core.h"

typedef struct layer {
  const char *name;
  int c, h, s, stride, count; /* count: how many such convs ResNet-20 has */
} layer;

static const layer layers[] = {
    {"conv1 3->16 32x32", 3, 32, 16, 1, 1},
    {"stage1 16->16 32x32", 16, 32, 16, 1, 6},
    {"stage2 16->32 s2 ->16x16", 16, 32, 32, 2, 1},
    {"stage2 32->32 16x16", 32, 16, 32, 1, 5},
    {"stage3 32->64 s2 ->8x8", 32, 16, 64, 2, 1},
    {"stage3 64->64 8x8", 64, 8, 64, 1, 5},
};

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

enum { REPS = 5 };
typedef void (*bench_fn)(void *ctx);
static int use_cpu_clock;

static double now(void) {
  if (!use_cpu_clock) return lt_now();
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Median seconds of REPS calls after one warm-up call. */
static double time_median(bench_fn f, void *ctx) {
  double t[REPS];
  f(ctx);
  for (int i = 0; i < REPS; i++) {
    double t0 = now();
    f(ctx);
    t[i] = now() - t0;
  }
  qsort(t, REPS, sizeof(double), cmp_double);
  return t[REPS / 2];
}

typedef struct ctx {
  lt_conv_geom g;
  float *x, *w, *b, *y, *dy, *dx, *dw, *db;
  void *ws;
  int m, n, k; /* the plain sgemm */
  float *ga, *gb, *gc;
} ctx;

static void run_fwd(void *p) {
  ctx *c = p;
  lt_cpu_conv2d_fwd(&c->g, c->x, c->w, NULL, c->y, c->ws);
}
static void run_infer(void *p) {
  ctx *c = p;
  lt_cpu_conv2d_fwd_infer(&c->g, c->x, c->w, NULL, c->y, c->ws);
}
static void run_bwd_data(void *p) {
  ctx *c = p;
  lt_cpu_conv2d_bwd_data(&c->g, c->dy, c->w, c->dx, 0, c->ws);
}
static void run_bwd_filter(void *p) {
  ctx *c = p;
  lt_cpu_conv2d_bwd_filter(&c->g, c->x, c->dy, c->dw, NULL, 0, c->ws);
}
static void run_sgemm(void *p) {
  ctx *c = p;
  lt_cpu_gemm(0, 0, c->m, c->n, c->k, 1.0f, c->ga, c->k, c->gb, c->n, 0.0f, c->gc, c->n);
}

static float *filled(size_t n) {
  float *p = malloc(n * sizeof(float));
  for (size_t i = 0; i < n; i++) p[i] = (float)((i * 2654435761u) % 1000) * 1e-3f - 0.5f;
  return p;
}

int main(int argc, char **argv) {
  int tile = 0;
  for (;;) {
    if (argc > 1 && strcmp(argv[1], "--cpu") == 0) {
      use_cpu_clock = 1;
      argc--, argv++;
    } else if (argc > 2 && strcmp(argv[1], "--tile") == 0) {
      tile = atoi(argv[2]);
      lt_cpu_winograd_set_tile(tile);
      argc -= 2, argv += 2;
    } else {
      break;
    }
  }
  const int batch = argc > 1 ? atoi(argv[1]) : 128;
  const int only = argc > 2 ? atoi(argv[2]) : -1;
  printf("clock: %s\n", use_cpu_clock ? "process CPU time" : "wall");
  double tot[2][4] = {{0, 0, 0, 0}, {0, 0, 0, 0}}, tot_flops = 0;
  const char *wait = getenv("OMP_WAIT_POLICY");
  /* Spinning OpenMP workers steal the cores from OpenBLAS's threads between regions; the
   * figures depend on this setting, so say it. */
  printf("OMP_WAIT_POLICY=%s\n", wait ? wait : "(unset: libgomp spins ~300k iterations after each region)");
  {
    ctx sq = {.m = 1024, .n = 1024, .k = 1024};
    sq.ga = filled(1 << 20), sq.gb = filled(1 << 20), sq.gc = filled(1 << 20);
    printf("plain sgemm 1024x1024x1024: %.1f GFLOP/s\n", 2.0 * 1024 * 1024 * 1024 / time_median(run_sgemm, &sq) * 1e-9);
    free(sq.ga), free(sq.gb), free(sq.gc);
  }
  const int mode = lt_cpu_winograd_mode();
  printf("new path: %s (LATHE_CONV_WINOGRAD=%s), forward/backward-data tile %s\n",
         lt_cpu_winograd_impl_name(),
         getenv("LATHE_CONV_WINOGRAD") ? getenv("LATHE_CONV_WINOGRAD") : "(unset)",
         tile ? (tile == 4 ? "4x4" : "2x2") : "default");
  printf("ResNet-20 conv layers, batch %d (GFLOP/s = 2*MACs/s of the direct convolution; median of %d)\n",
         batch, REPS);
  printf("%-26s %5s %7s | %-21s | %-21s | %-21s | %-21s | %7s %6s\n", "layer", "count", "GFLOP",
         "fwd old  new  ratio", "bwd_data old new ratio", "bwd_filt old new ratio",
         "infer old new ratio", "sgemm", "ws MiB");
  for (size_t li = 0; li < sizeof layers / sizeof layers[0]; li++) {
    if (only >= 0 && (size_t)only != li) continue;
    const layer *L = &layers[li];
    ctx c;
    memset(&c, 0, sizeof c);
    c.g = (lt_conv_geom){.n = batch, .c = L->c, .h = L->h, .w = L->h, .s = L->s, .kh = 3, .kw = 3,
                         .stride_h = L->stride, .stride_w = L->stride, .pad_t = 1, .pad_l = 1,
                         .pad_b = 1, .pad_r = 1, .dil_h = 1, .dil_w = 1, .groups = 1};
    if (lt_conv_geom_finish(&c.g, 0)) return 1;
    const size_t nx = (size_t)batch * L->c * L->h * L->h, ny = (size_t)batch * L->s * c.g.oh * c.g.ow;
    const size_t nw = (size_t)L->s * L->c * 9;
    c.x = filled(nx), c.w = filled(nw), c.y = filled(ny), c.dy = filled(ny), c.dx = filled(nx), c.dw = filled(nw);
    const size_t wsb = lt_cpu_conv2d_workspace(&c.g);
    c.ws = malloc(wsb + 64);
    c.m = L->s, c.n = batch * c.g.oh * c.g.ow, c.k = L->c * 9;
    c.ga = filled((size_t)c.m * c.k), c.gb = filled((size_t)c.k * c.n), c.gc = filled((size_t)c.m * c.n);
    const double flops = 2.0 * c.m * (double)c.n * c.k;
    double t[2][4];
    for (int v = 0; v < 2; v++) { /* 0: im2col, 1: what the library picks */
      lt_cpu_winograd_set_mode(v ? mode : LT_WINOGRAD_OFF);
      t[v][0] = time_median(run_fwd, &c);
      t[v][1] = time_median(run_bwd_data, &c);
      t[v][2] = time_median(run_bwd_filter, &c);
      t[v][3] = time_median(run_infer, &c);
      for (int k = 0; k < 4; k++) tot[v][k] += L->count * t[v][k];
    }
    const int wino = lt_cpu_winograd_active(&c.g);
    lt_cpu_winograd_set_mode(mode);
    const double tg = time_median(run_sgemm, &c);
    printf("%-26s %5d %7.3f |", L->name, L->count, flops * 1e-9);
    for (int k = 0; k < 4; k++)
      printf(" %6.1f %6.1f %5.2fx |", flops / t[0][k] * 1e-9, flops / t[1][k] * 1e-9, t[0][k] / t[1][k]);
    printf(" %7.1f %6.1f%s\n", flops / tg * 1e-9, (double)wsb / (1 << 20), wino ? "  winograd" : "");
    /* conv1 needs no dx in training; count it anyway as a bound */
    tot_flops += L->count * flops;
    free(c.x), free(c.w), free(c.y), free(c.dy), free(c.dx), free(c.dw), free(c.ws);
    free(c.ga), free(c.gb), free(c.gc);
  }
  for (int v = 0; v < 2; v++) {
    const double train = tot[v][0] + tot[v][1] + tot[v][2];
    printf("%s all 19 convs: fwd %.4f s (%.1f GFLOP/s), bwd_data %.4f s, bwd_filter %.4f s, "
           "inference fwd %.4f s; conv-only bound: inference %.0f img/s, training %.0f img/s\n",
           v ? "new" : "old", tot[v][0], tot_flops / tot[v][0] * 1e-9, tot[v][1], tot[v][2],
           tot[v][3], batch / tot[v][3], batch / train);
  }
  printf("ratio new/old: fwd %.2fx, bwd_data %.2fx, bwd_filter %.2fx, inference fwd %.2fx, "
         "training %.2fx\n",
         tot[0][0] / tot[1][0], tot[0][1] / tot[1][1], tot[0][2] / tot[1][2], tot[0][3] / tot[1][3],
         (tot[0][0] + tot[0][1] + tot[0][2]) / (tot[1][0] + tot[1][1] + tot[1][2]));
  return 0;
}
