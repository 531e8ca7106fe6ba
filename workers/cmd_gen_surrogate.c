/* `lathe data gen-surrogate`: writes a surrogate-training dataset made by a real simulation,
 * Gray-Scott reaction-diffusion on a periodic G×G grid,
 *   ∂u/∂t = Du ∇²u − u v² + F (1 − u),   ∂v/∂t = Dv ∇²v + u v² − (F + k) v,
 * integrated by explicit Euler with the 5-point Laplacian (dx = 1, dt = 1, Du = 0.16, Dv = 0.08,
 * stable since Du·dt ≤ 1/4). Each run draws (F, k) from the seed in the pattern-forming range and
 * seeds a few random square perturbations; after a warm-up, every Δ steps gives one sample:
 * x = (u, v) at t, y = (u, v) at t + Δ, float32 (N, 2, G, G). Datasets are contiguous and
 * 4 KiB-aligned so that a loader can pread (even O_DIRECT) whole samples, and are written run by
 * run so memory stays bounded whatever the size. /train/params and /test/params hold (F, k) per
 * sample. */
#include "cli.h"
#include "lathe/core.h"

#include <getopt.h>
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GS_DU 0.16f
#define GS_DV 0.08f
#define GS_DT 1.0f


typedef struct gs_opts {
  const char *out;
  int64_t train, test;
  int grid, delta, warmup, per_run;
  uint64_t seed;
} gs_opts;

/* One explicit Euler step of both fields, periodic in both directions: u, v (G, G) → un, vn. */
static void gs_step(int G, float F, float k, const float *u, const float *v, float *un, float *vn) {
  for (int i = 0; i < G; i++) {
    int up = (i + G - 1) % G, dn = (i + 1) % G;
    for (int j = 0; j < G; j++) {
      int l = j ? j - 1 : G - 1, r = j + 1 < G ? j + 1 : 0;
      float uc = u[i * G + j], vc = v[i * G + j];
      float lu = u[up * G + j] + u[dn * G + j] + u[i * G + l] + u[i * G + r] - 4.0f * uc;
      float lv = v[up * G + j] + v[dn * G + j] + v[i * G + l] + v[i * G + r] - 4.0f * vc;
      float uvv = uc * vc * vc;
      un[i * G + j] = uc + GS_DT * (GS_DU * lu - uvv + F * (1.0f - uc));
      vn[i * G + j] = vc + GS_DT * (GS_DV * lv + uvv - (F + k) * vc);
    }
  }
}

/* Advances (u, v) by n steps, ping-ponging through the scratch pair. */
static void gs_advance(int G, float F, float k, int n, float *u, float *v, float *su, float *sv) {
  for (int s = 0; s < n; s++) {
    gs_step(G, F, k, u, v, su, sv);
    memcpy(u, su, (size_t)G * G * sizeof(float));
    memcpy(v, sv, (size_t)G * G * sizeof(float));
  }
}

static void usage(FILE *f) {
  fprintf(f,
          "usage: lathe data gen-surrogate --out F.h5 --samples N [--test-samples M] [--grid G]\n"
          "         [--seed S] [--delta STEPS] [--warmup STEPS] [--per-run K]\n"
          "Simulates Gray-Scott reaction-diffusion and writes /train and /test with\n"
          "x = (u, v) at t and y = (u, v) at t + delta, float32 (N, 2, G, G), contiguous and\n"
          "4 KiB-aligned. Defaults: grid 128, test samples N/10 (at least 1), seed 1, delta 20,\n"
          "warmup 1000, 64 samples per simulation run.\n");
}

static int parse(int argc, char **argv, gs_opts *o) {
  static const struct option longopts[] = {
      {"out", required_argument, 0, 'o'},    {"samples", required_argument, 0, 'n'},
      {"test-samples", required_argument, 0, 't'}, {"grid", required_argument, 0, 'g'},
      {"seed", required_argument, 0, 's'},   {"delta", required_argument, 0, 'd'},
      {"warmup", required_argument, 0, 'w'}, {"per-run", required_argument, 0, 'r'},
      {"help", no_argument, 0, 'h'},         {0, 0, 0, 0}};
  *o = (gs_opts){NULL, 0, -1, 128, 20, 1000, 64, 1};
  optind = 1;
  int c, li = 0;
  while ((c = getopt_long(argc, argv, "", longopts, &li)) != -1) {
    char *end = NULL;
    long long v = optarg ? strtoll(optarg, &end, 10) : 0;
    bool bad_num = optarg && (!*optarg || *end);
    switch (c) {
    case 'o': o->out = optarg; continue;
    case 'h': usage(stdout); return 1;
    case 'n': o->train = v; break;
    case 't': o->test = v; break;
    case 'g': o->grid = (int)v; break;
    case 's': o->seed = (uint64_t)v; break;
    case 'd': o->delta = (int)v; break;
    case 'w': o->warmup = (int)v; break;
    case 'r': o->per_run = (int)v; break;
    default: usage(stderr); return 2;
    }
    if (bad_num) {
      fprintf(stderr, "gen-surrogate: --%s needs an integer, got \"%s\"\n", longopts[li].name, optarg);
      return 2;
    }
  }
  if (!o->out || o->train < 1) {
    fprintf(stderr, "gen-surrogate: --out FILE and --samples N (N ≥ 1) are required\n");
    usage(stderr);
    return 2;
  }
  if (o->test < 0) o->test = o->train / 10 > 0 ? o->train / 10 : 1;
  if (o->grid < 8 || o->grid > 4096 || o->delta < 1 || o->warmup < 0 || o->per_run < 1) {
    fprintf(stderr, "gen-surrogate: need 8 ≤ grid ≤ 4096, delta ≥ 1, warmup ≥ 0, per-run ≥ 1\n");
    return 2;
  }
  return 0;
}

/* Creates group/x, group/y (n, 2, G, G) and group/params (n, 2), contiguous, allocated now. */
static int create_split(hid_t f, const char *group, int64_t n, int G, hid_t ds[3]) {
  hid_t g = H5Gcreate2(f, group, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  if (g < 0) return -1;
  hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
  H5Pset_layout(dcpl, H5D_CONTIGUOUS);
  /* early allocation: one extent per dataset, placed (and aligned) before any data is written */
  H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_EARLY);
  H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER);
  hsize_t dims[4] = {(hsize_t)n, 2, (hsize_t)G, (hsize_t)G}, pd[2] = {(hsize_t)n, 2};
  hid_t space = H5Screate_simple(4, dims, NULL), pspace = H5Screate_simple(2, pd, NULL);
  ds[0] = H5Dcreate2(g, "x", H5T_IEEE_F32LE, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
  ds[1] = H5Dcreate2(g, "y", H5T_IEEE_F32LE, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
  ds[2] = H5Dcreate2(g, "params", H5T_IEEE_F32LE, pspace, H5P_DEFAULT, dcpl, H5P_DEFAULT);
  H5Sclose(space);
  H5Sclose(pspace);
  H5Pclose(dcpl);
  H5Gclose(g);
  return ds[0] < 0 || ds[1] < 0 || ds[2] < 0 ? -1 : 0;
}

/* Writes rows [at, at + m) of a (n, ...) dataset from buf. */
static int write_rows(hid_t ds, int64_t at, int64_t m, hid_t memtype, const void *buf) {
  hid_t fs = H5Dget_space(ds);
  int rank = H5Sget_simple_extent_ndims(fs);
  hsize_t dims[4], start[4] = {(hsize_t)at, 0, 0, 0}, count[4];
  H5Sget_simple_extent_dims(fs, dims, NULL);
  for (int i = 0; i < rank; i++) count[i] = i ? dims[i] : (hsize_t)m;
  hid_t ms = H5Screate_simple(rank, count, NULL);
  H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL);
  herr_t r = H5Dwrite(ds, memtype, ms, fs, H5P_DEFAULT, buf);
  H5Sclose(ms);
  H5Sclose(fs);
  return r < 0 ? -1 : 0;
}

/* Simulates runs until n samples of one split are written. run0 numbers the runs so that train
 * and test draw different parameters from the same seed. */
static int fill_split(const gs_opts *o, hid_t ds[3], int64_t n, uint64_t run0, float *work) {
  int G = o->grid;
  size_t field = (size_t)G * G, sample = 2 * field;
  float *u = work, *v = u + field, *su = v + field, *sv = su + field;
  float *xs = sv + field;                    /* (per_run, 2, G, G) */
  float *ys = xs + (size_t)o->per_run * sample; /* (per_run, 2, G, G) */
  float *ps = ys + (size_t)o->per_run * sample; /* (per_run, 2) */
  for (int64_t at = 0, run = (int64_t)run0; at < n; run++) {
    lt_rng rng = lt_rng_make(o->seed, 0x47530000ull + (uint64_t)run); /* "GS" + run */
    /* Pearson's (1993) pattern-forming band: spots, stripes and labyrinths */
    float F = 0.025f + 0.030f * (float)lt_rng_uniform(&rng);
    float k = 0.057f + 0.008f * (float)lt_rng_uniform(&rng);
    for (size_t i = 0; i < field; i++) {
      u[i] = 1.0f;
      v[i] = 0.0f;
    }
    int squares = 3 + (int)lt_rng_below(&rng, 6), side = G / 10 > 2 ? G / 10 : 2;
    for (int q = 0; q < squares; q++) {
      int ci = (int)lt_rng_below(&rng, (uint64_t)G), cj = (int)lt_rng_below(&rng, (uint64_t)G);
      for (int a = 0; a < side; a++)
        for (int b = 0; b < side; b++) {
          size_t idx = (size_t)((ci + a) % G) * G + (size_t)((cj + b) % G);
          u[idx] = 0.5f + 0.02f * (float)(lt_rng_uniform(&rng) - 0.5);
          v[idx] = 0.25f + 0.02f * (float)(lt_rng_uniform(&rng) - 0.5);
        }
    }
    gs_advance(G, F, k, o->warmup, u, v, su, sv);
    int64_t m = n - at < o->per_run ? n - at : o->per_run;
    for (int64_t s = 0; s < m; s++) {
      memcpy(xs + s * sample, u, field * sizeof(float));
      memcpy(xs + s * sample + field, v, field * sizeof(float));
      gs_advance(G, F, k, o->delta, u, v, su, sv);
      memcpy(ys + s * sample, u, field * sizeof(float));
      memcpy(ys + s * sample + field, v, field * sizeof(float));
      ps[2 * s] = F;
      ps[2 * s + 1] = k;
    }
    if (write_rows(ds[0], at, m, H5T_NATIVE_FLOAT, xs) || write_rows(ds[1], at, m, H5T_NATIVE_FLOAT, ys) ||
        write_rows(ds[2], at, m, H5T_NATIVE_FLOAT, ps))
      return -1;
    at += m;
  }
  return 0;
}

int cmd_gen_surrogate(int argc, char **argv) {
  gs_opts o;
  int rc = parse(argc, argv, &o);
  if (rc) return rc == 1 ? 0 : rc;
  size_t field = (size_t)o.grid * o.grid, sample = 2 * field;
  size_t work_floats = 4 * field + 2 * (size_t)o.per_run * sample + 2 * (size_t)o.per_run;
  lt_err err = {0};
  float *work = lt_alloc(LT_MEM_WORKSPACE, work_floats * sizeof(float), &err);
  if (!work) {
    fprintf(stderr, "gen-surrogate: %s; lower --per-run or --grid\n", err.msg);
    return 3;
  }
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL); /* our messages instead of HDF5's error stack */
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  /* every object of 4 KiB or more starts on a 4 KiB boundary: with 4 KiB-multiple samples
   * (G ≥ 32) each sample is then page-aligned, as O_DIRECT wants */
  H5Pset_alignment(fapl, 4096, 4096);
  hid_t f = H5Fcreate(o.out, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
  H5Pclose(fapl);
  hid_t tr[3] = {-1, -1, -1}, te[3] = {-1, -1, -1};
  rc = 0;
  double t0 = lt_now();
  if (f < 0) {
    fprintf(stderr, "gen-surrogate: cannot create %s; check the directory exists and is writable\n", o.out);
    rc = 3;
  } else if (create_split(f, "/train", o.train, o.grid, tr) || create_split(f, "/test", o.test, o.grid, te)) {
    fprintf(stderr, "gen-surrogate: cannot create the datasets in %s (disk full?)\n", o.out);
    rc = 3;
  } else {
    uint64_t train_runs = (uint64_t)((o.train + o.per_run - 1) / o.per_run);
    if (fill_split(&o, tr, o.train, 0, work) || fill_split(&o, te, o.test, train_runs, work)) {
      fprintf(stderr, "gen-surrogate: writing %s failed (disk full?)\n", o.out);
      rc = 3;
    }
  }
  for (int i = 0; i < 3; i++) {
    if (tr[i] >= 0) H5Dclose(tr[i]);
    if (te[i] >= 0) H5Dclose(te[i]);
  }
  if (f >= 0 && H5Fclose(f) < 0 && rc == 0) {
    fprintf(stderr, "gen-surrogate: closing %s failed (disk full?)\n", o.out);
    rc = 3;
  }
  lt_free(LT_MEM_WORKSPACE, work, work_floats * sizeof(float));
  if (rc == 0)
    printf("{\"train\":%lld,\"test\":%lld,\"grid\":%d,\"delta\":%d,"
           "\"sample_bytes\":%zu,\"seconds\":%.2f}\n",
           (long long)o.train, (long long)o.test, o.grid, o.delta, sample * sizeof(float),
           lt_now() - t0);
  return rc;
}
