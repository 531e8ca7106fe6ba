/* `lathe bench codec`: ratio and single-/multi-thread speed of the activation codec against ZFP
 * (fixed accuracy) and zstd alone, at the same error bounds, on real activation tensors read
 * from an HDF5 file (every dataset under /acts, as written by
 * tests/actcomp/capture_activations.py or by a training run's activation capture).
 *
 *   lathe bench codec [--input FILE.h5] [--eb 0.01,0.05,0.1,0.3] [--threads 1] [--repeat 3]
 *                     [--zstd-level 1] [--codecs lorenzo,zfp,zstd] [--clock wall|cpu]
 *                     [--simd auto|scalar|avx2|avx512] [--device cuda[:N]] [--json]
 *
 * --device cuda adds the GPU codec (row "lorenzo-gpu", builds with the CUDA backend): tensors
 * are on the device before the clock starts, and its speed is wall time per pass over all of them
 * with the device synchronised at the end (each encode also waits for the device twice inside,
 * see actcomp/ac_cuda.h). Its first pass is checked against the CPU: the GPU's decode must equal,
 * bit for bit, the CPU's decode of the same GPU stream and the CPU's own round trip.
 *
 * Speed is input bytes (float32) over the best of --repeat times, compress and decompress
 * separately, summed over all tensors. Times are wall-clock by default; --clock cpu uses the
 * process CPU time instead, which on a shared, oversubscribed machine tracks what one idle core
 * would do far better than wall time (with one thread; with several it sums their time). Each decode is checked: LORENZO must meet |x - x'| <= eb
 * everywhere and keep zeros; the others report their max error and how many zeros survive.
 * Exit status as every lathe command: 0, 2 for bad usage or input, 3 for a runtime failure. */
#include "lathe/actcomp.h"
#include "lathe/config.h"
#if LATHE_HAVE_CUDA
#include "actcomp/ac_cuda.h"
#include "actcomp/ac_internal.h"
#include "lathe/backend.h"
#endif

#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct bench_tensor {
  char name[128];
  int ndim;
  int64_t shape[LT_MAX_DIMS];
  int64_t n;
  float *x; /* (n) owned */
} bench_tensor;

typedef struct bench_set {
  bench_tensor *t; /* (count) owned */
  int count, cap;
} bench_set;

static herr_t collect(hid_t group, const char *name, const H5L_info_t *info, void *user) {
  bench_set *s = user;
  hid_t d = H5Dopen2(group, name, H5P_DEFAULT);
  if (d < 0) return 0; /* not a dataset: skip */
  hid_t sp = H5Dget_space(d);
  int nd = H5Sget_simple_extent_ndims(sp);
  hsize_t dims[LT_MAX_DIMS];
  herr_t rc = 0;
  if (nd >= 1 && nd <= LT_MAX_DIMS) {
    H5Sget_simple_extent_dims(sp, dims, NULL);
    if (s->count == s->cap) {
      s->cap = s->cap ? 2 * s->cap : 32;
      s->t = realloc(s->t, (size_t)s->cap * sizeof *s->t);
    }
    bench_tensor *t = &s->t[s->count];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->ndim = nd;
    t->n = 1;
    for (int i = 0; i < nd; i++) t->n *= (int64_t)(t->shape[i] = (int64_t)dims[i]);
    t->x = malloc((size_t)t->n * sizeof *t->x);
    if (!t->x || H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, t->x) < 0) {
      fprintf(stderr, "bench codec: cannot read dataset /acts/%s\n", name);
      free(t->x);
      rc = -1;
    } else {
      s->count++;
    }
  }
  H5Sclose(sp);
  H5Dclose(d);
  return rc;
}

static int load_set(const char *path, bench_set *s) {
  hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
  if (f < 0) {
    fprintf(stderr,
            "bench codec: cannot open %s; capture activations first with\n"
            "  /usr/bin/python3 tests/actcomp/capture_activations.py %s\n",
            path, path);
    return -1;
  }
  hid_t g = H5Gopen2(f, "/acts", H5P_DEFAULT);
  int rc = -1;
  if (g < 0) {
    fprintf(stderr, "bench codec: %s has no /acts group of activation tensors\n", path);
  } else {
    rc = H5Literate(g, H5_INDEX_NAME, H5_ITER_INC, NULL, collect, s) < 0 ? -1 : 0;
    H5Gclose(g);
  }
  H5Fclose(f);
  if (!rc && s->count == 0) {
    fprintf(stderr, "bench codec: %s has no datasets under /acts\n", path);
    rc = -1;
  }
  return rc;
}

typedef struct bench_result {
  double ratio, comp_gbs, decomp_gbs, max_err;
  int64_t zeros_in, zeros_kept, violations;
} bench_result;

static int use_cpu_clock;

static double bench_now(void) {
  if (!use_cpu_clock) return lt_now();
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Adds one decode y of tensor t to r: largest error, zeros kept, and (bounded) elements off by
 * more than eb. */
static void tally(const bench_tensor *t, const float *y, int bounded, double eb,
                  bench_result *r) {
  for (int64_t j = 0; j < t->n; j++) {
    double e = fabs((double)t->x[j] - (double)y[j]);
    if (e > r->max_err) r->max_err = e;
    if (bounded && !(e <= eb)) r->violations++;
    if (t->x[j] == 0.0f) {
      r->zeros_in++;
      r->zeros_kept += y[j] == 0.0f;
    }
  }
}

static int run_one(lt_ac_codec *c, lt_ac_kind kind, const bench_set *s, double eb, int repeat,
                   float *y, bench_result *r) {
  lt_err err = {0};
  lt_ac_buf *bufs = calloc((size_t)s->count, sizeof *bufs);
  double best_c = 1e30, best_d = 1e30;
  int64_t raw = 0, packed = 0;
  memset(r, 0, sizeof *r);
  int rc = 0;
  for (int rep = 0; rep < repeat && !rc; rep++) {
    double t0 = bench_now();
    for (int i = 0; i < s->count && !rc; i++)
      if (lt_ac_encode(c, kind, s->t[i].x, s->t[i].ndim, s->t[i].shape, eb, &bufs[i], &err)) {
        fprintf(stderr, "bench codec: %s on %s: %s\n", lt_ac_kind_name(kind), s->t[i].name,
                err.msg);
        rc = -1;
      }
    double t1 = bench_now();
    for (int i = 0; i < s->count && !rc; i++) {
      /* Decode into one buffer per tensor size: y holds the largest. */
      if (lt_ac_decode(c, bufs[i].data, bufs[i].len, y, s->t[i].n, &err)) {
        fprintf(stderr, "bench codec: decoding %s on %s: %s\n", lt_ac_kind_name(kind),
                s->t[i].name, err.msg);
        rc = -1;
      }
      if (rep == 0 && !rc) tally(&s->t[i], y, kind == LT_AC_KIND_LORENZO, eb, r);
    }
    double t2 = bench_now();
    if (rep == 0) /* the first decode also ran the checks: time decoding again without them */
      for (int i = 0; i < s->count && !rc; i++)
        lt_ac_decode(c, bufs[i].data, bufs[i].len, y, s->t[i].n, &err);
    double t3 = bench_now();
    if (t1 - t0 < best_c) best_c = t1 - t0;
    double dt = rep == 0 ? t3 - t2 : t2 - t1;
    if (dt < best_d) best_d = dt;
  }
  for (int i = 0; i < s->count; i++) {
    raw += s->t[i].n * 4;
    packed += (int64_t)bufs[i].len;
    lt_ac_buf_free(&bufs[i]);
  }
  free(bufs);
  if (rc) return rc;
  r->ratio = (double)raw / (double)packed;
  r->comp_gbs = (double)raw / best_c / 1e9;
  r->decomp_gbs = (double)raw / best_d / 1e9;
  return 0;
}

#if LATHE_HAVE_CUDA
/* The GPU codec over the whole set: dx[i] holds tensor i on the device, dy the largest; host
 * buffers y and yc hold the largest. mismatches counts tensors whose GPU decode differs from the
 * CPU's decode of the GPU stream or from the CPU's own round trip. */
static int run_one_gpu(lt_backend *be, ac_cuda *g, lt_ac_codec *cpu, const bench_set *s,
                       float **dx, float *dy, double eb, int repeat, float *y, float *yc,
                       bench_result *r, int64_t *mismatches) {
  lt_err err = {0};
  ac_dstream *st = calloc((size_t)s->count, sizeof *st);
  lt_ac_buf hs = {0}, cs = {0};
  double best_c = 1e30, best_d = 1e30;
  int64_t raw = 0, packed = 0;
  memset(r, 0, sizeof *r);
  *mismatches = 0;
  int rc = st ? 0 : -1;
  for (int rep = 0; rep < repeat && !rc; rep++) {
    double t0 = lt_now();
    for (int i = 0; i < s->count && !rc; i++)
      if (ac_cuda_encode(g, dx[i], s->t[i].ndim, s->t[i].shape, eb, LT_MEM_SAVED, &st[i], &err))
        rc = -1;
    if (!rc && be->vt->synchronize(be, &err)) rc = -1;
    double t1 = lt_now();
    for (int i = 0; i < s->count && !rc; i++)
      if (ac_cuda_decode(g, st[i].data, st[i].len, dy, s->t[i].n, &err)) rc = -1;
    if (!rc && be->vt->synchronize(be, &err)) rc = -1;
    double t2 = lt_now();
    if (rc) {
      fprintf(stderr, "bench codec: lorenzo-gpu: %s\n", err.msg);
      break;
    }
    if (t1 - t0 < best_c) best_c = t1 - t0;
    if (t2 - t1 < best_d) best_d = t2 - t1;
    for (int i = 0; rep == 0 && i < s->count && !rc; i++) {
      const bench_tensor *t = &s->t[i];
      const size_t nb = (size_t)t->n * sizeof(float);
      if (ac_cuda_decode(g, st[i].data, st[i].len, dy, t->n, &err) ||
          be->vt->to_host(be, y, dy, nb, &err) || ac_buf_reserve(&hs, st[i].len, &err) ||
          be->vt->to_host(be, hs.data, st[i].data, st[i].len, &err)) {
        fprintf(stderr, "bench codec: lorenzo-gpu on %s: %s\n", t->name, err.msg);
        rc = -1;
        break;
      }
      tally(t, y, 1, eb, r);
      int same = !lt_ac_decode(cpu, hs.data, st[i].len, yc, t->n, &err) && !memcmp(y, yc, nb);
      same = same &&
             !lt_ac_encode(cpu, LT_AC_KIND_LORENZO, t->x, t->ndim, t->shape, eb, &cs, &err) &&
             !lt_ac_decode(cpu, cs.data, cs.len, yc, t->n, &err) && !memcmp(y, yc, nb);
      if (!same) {
        fprintf(stderr, "bench codec: lorenzo-gpu on %s differs from the CPU codec\n", t->name);
        ++*mismatches;
      }
    }
  }
  for (int i = 0; i < s->count; i++) {
    raw += s->t[i].n * 4;
    packed += (int64_t)st[i].len;
    if (st) ac_cuda_stream_free(g, &st[i]);
  }
  free(st);
  lt_ac_buf_free(&hs);
  lt_ac_buf_free(&cs);
  if (rc) return rc;
  r->ratio = (double)raw / (double)packed;
  r->comp_gbs = (double)raw / best_c / 1e9;
  r->decomp_gbs = (double)raw / best_d / 1e9;
  return 0;
}
#endif

/* One result row, as text or as a JSON object (first: no comma before it); mismatches < 0 when
 * the row has no CPU comparison. */
static void print_row(int json, int first, const char *name, double eb, const bench_result *r,
                      int64_t mismatches) {
  double kept = r->zeros_in ? (double)r->zeros_kept / (double)r->zeros_in : 1.0;
  if (json) {
    printf("%s{\"codec\":\"%s\",\"eb\":%g,\"ratio\":%.4f,\"compress_gbs\":%.4f,"
           "\"decompress_gbs\":%.4f,\"max_error\":%.6g,\"zeros_kept\":%.6f,\"violations\":%lld",
           first ? "" : ",", name, eb, r->ratio, r->comp_gbs, r->decomp_gbs, r->max_err, kept,
           (long long)r->violations);
    if (mismatches >= 0) printf(",\"cpu_mismatches\":%lld", (long long)mismatches);
    printf("}");
    return;
  }
  const int nw = (int)strlen(name) > 8 ? (int)strlen(name) : 8; /* name and eb: 15 columns */
  printf("%-*s %*g %8.2f %10.3f %10.3f %10.4g %9.1f%%%s%s\n", nw, name, 14 - nw, eb, r->ratio,
         r->comp_gbs, r->decomp_gbs, r->max_err, 100 * kept,
         r->violations ? "  BOUND VIOLATED" : "", mismatches > 0 ? "  DIFFERS FROM CPU" : "");
}

static int parse_list(const char *s, double *out, int cap) {
  int n = 0;
  while (*s && n < cap) {
    char *end;
    out[n++] = strtod(s, &end);
    if (end == s) return -1;
    s = *end == ',' ? end + 1 : end;
  }
  return n;
}

int cmd_bench_codec(int argc, char **argv) {
  const char *input = "build/actcomp/resnet20_acts.h5", *codecs = "lorenzo,zfp,zstd";
  const char *device = NULL;
  double ebs[16] = {0.01, 0.05, 0.1, 0.3};
  int n_eb = 4, threads = 1, repeat = 3, zlevel = 1, json = 0;
  lt_ac_simd simd = LT_AC_SIMD_AUTO;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--input") && v) input = argv[++i];
    else if (!strcmp(a, "--eb") && v) {
      n_eb = parse_list(argv[++i], ebs, 16);
      if (n_eb < 1) {
        fprintf(stderr, "bench codec: --eb takes a comma-separated list such as 0.01,0.1\n");
        return 2;
      }
    } else if (!strcmp(a, "--threads") && v) threads = atoi(argv[++i]);
    else if (!strcmp(a, "--repeat") && v) repeat = atoi(argv[++i]);
    else if (!strcmp(a, "--zstd-level") && v) zlevel = atoi(argv[++i]);
    else if (!strcmp(a, "--codecs") && v) codecs = argv[++i];
    else if (!strcmp(a, "--json")) json = 1;
    else if (!strcmp(a, "--device") && v) device = argv[++i];
    else if (!strcmp(a, "--clock") && v) use_cpu_clock = !strcmp(argv[++i], "cpu");
    else if (!strcmp(a, "--simd") && v) {
      const char *sv = argv[++i];
      simd = !strcmp(sv, "scalar") ? LT_AC_SIMD_SCALAR
             : !strcmp(sv, "avx2") ? LT_AC_SIMD_AVX2
             : !strcmp(sv, "avx512") ? LT_AC_SIMD_AVX512
                                     : LT_AC_SIMD_AUTO;
    }
    else {
      fprintf(stderr,
              "usage: lathe bench codec [--input FILE.h5] [--eb 0.01,0.05,0.1,0.3] [--threads N]\n"
              "                         [--repeat R] [--zstd-level L] [--codecs lorenzo,zfp,zstd]"
              " [--clock wall|cpu]\n"
              "                         [--simd auto|scalar|avx2|avx512] [--device cuda[:N]]"
              " [--json]\n");
      return 2;
    }
  }
  if (repeat < 1) repeat = 1;
  bench_set s = {0};
  if (load_set(input, &s)) return 2;
  int64_t maxn = 0, total = 0;
  for (int i = 0; i < s.count; i++) {
    if (s.t[i].n > maxn) maxn = s.t[i].n;
    total += s.t[i].n;
  }
  float *y = malloc((size_t)maxn * sizeof *y);
  lt_err err = {0};
  lt_ac_opts o = {.threads = threads, .zstd_level = zlevel, .simd = simd};
  lt_ac_codec *c = lt_ac_codec_new(&o, &err);
  if (!c || !y) {
    fprintf(stderr, "bench codec: %s\n", c ? "out of memory" : err.msg);
    return 3;
  }
  if (!json)
    printf("%d tensors, %.1f MB float32, threads %d, simd %s, %s clock\n"
           "%-8s %6s %8s %10s %10s %10s %s\n",
           s.count, (double)total * 4 / 1e6, threads,
           lt_ac_simd_name(lt_ac_simd_resolve(simd)), use_cpu_clock ? "cpu" : "wall",
           "codec", "eb", "ratio",
           "comp GB/s", "dec GB/s", "max err", "zeros kept");
  else
    printf("{\"tensors\":%d,\"bytes\":%lld,\"threads\":%d,\"clock\":\"%s\",\"results\":[",
           s.count, (long long)total * 4, threads, use_cpu_clock ? "cpu" : "wall");
  int rc = 0, first = 1;
  lt_ac_kind kinds[3] = {LT_AC_KIND_LORENZO, LT_AC_KIND_ZFP, LT_AC_KIND_ZSTD};
  for (int ki = 0; ki < 3 && !rc; ki++) {
    if (!strstr(codecs, lt_ac_kind_name(kinds[ki]))) continue;
    if (!lt_ac_kind_available(kinds[ki])) {
      if (!json) printf("%-8s (not in this build)\n", lt_ac_kind_name(kinds[ki]));
      continue;
    }
    for (int e = 0; e < (kinds[ki] == LT_AC_KIND_ZSTD ? 1 : n_eb) && !rc; e++) {
      bench_result r;
      double eb = kinds[ki] == LT_AC_KIND_ZSTD ? 0 : ebs[e];
      if (kinds[ki] == LT_AC_KIND_ZSTD) { /* zstd alone at the level the issue compares with */
        lt_ac_opts oz = o;
        oz.zstd_level = 3;
        lt_ac_codec_set_opts(c, &oz);
      }
      rc = run_one(c, kinds[ki], &s, eb, repeat, y, &r);
      lt_ac_codec_set_opts(c, &o);
      if (rc) break;
      print_row(json, first, lt_ac_kind_name(kinds[ki]), eb, &r, -1);
      first = 0;
      if (r.violations) rc = 1;
    }
  }
  if (device && !rc) {
#if LATHE_HAVE_CUDA
    lt_backend *be = lt_backend_get(device, &err);
    ac_cuda *g = be ? ac_cuda_new(be, &err) : NULL;
    float **dx = calloc((size_t)s.count, sizeof *dx);
    float *yc = malloc((size_t)maxn * sizeof *yc);
    float *dy = g ? be->vt->alloc(be, (size_t)maxn * sizeof(float), LT_MEM_WORKSPACE, &err) : NULL;
    for (int i = 0; dy && dx && i < s.count && !rc; i++)
      if (!(dx[i] = be->vt->alloc(be, (size_t)s.t[i].n * 4, LT_MEM_DATA, &err)) ||
          be->vt->to_device(be, dx[i], s.t[i].x, (size_t)s.t[i].n * 4, &err))
        rc = 1;
    if (!dy || !dx || !yc || rc) {
      fprintf(stderr, "bench codec: %s: %s\n", device, err.msg);
      rc = 1;
    }
    lt_ac_opts o1 = o;
    o1.zstd_level = 0; /* the CPU twin, as the GPU writes: no zstd pass */
    lt_ac_codec_set_opts(c, &o1);
    if (!rc && !json) printf("GPU: %s\n", be->description);
    for (int e = 0; e < n_eb && !rc; e++) {
      bench_result r;
      int64_t mism = 0;
      rc = run_one_gpu(be, g, c, &s, dx, dy, ebs[e], repeat, y, yc, &r, &mism);
      if (rc) break;
      print_row(json, first, "lorenzo-gpu", ebs[e], &r, mism);
      if (!json) ac_cuda_profile_print(g, stdout);
      first = 0;
      if (r.violations || mism) rc = 1;
    }
    lt_ac_codec_set_opts(c, &o);
    for (int i = 0; dx && i < s.count; i++)
      if (dx[i]) be->vt->free(be, dx[i], (size_t)s.t[i].n * 4, LT_MEM_DATA);
    if (dy) be->vt->free(be, dy, (size_t)maxn * sizeof(float), LT_MEM_WORKSPACE);
    ac_cuda_free(g);
    free(dx);
    free(yc);
#else
    fprintf(stderr, "bench codec: --device %s: this build has no CUDA backend\n", device);
    rc = 2;
#endif
  }
  if (json) printf("]}\n");
  lt_ac_codec_free(c);
  free(y);
  for (int i = 0; i < s.count; i++) free(s.t[i].x);
  free(s.t);
  return rc == 2 ? 2 : rc ? 3 : 0; /* a codec failure or a bound violation is a runtime failure */
}
