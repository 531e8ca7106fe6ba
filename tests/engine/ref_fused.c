/* Writes the fused CPU kernels' results for ref_fused.py to check against PyTorch (float64):
 * BatchNorm2d+ReLU in training (output, batch statistics, running statistics, and the pair's
 * backward: dx, dgamma, dbeta) and inference, and Add+ReLU forward and backward, at odd shapes:
 * batch 1, 1x1 spatial, channel counts that are no multiple of 16.
 *
 * Usage: engine_ref_fused OUT.bin
 * Format: "LTFUSED1", then records (u32 name length, name, u32 ndim, i64 dims, f32 data) and a
 * u32 0 at the end. Names are "<case>.<tensor>"; "<case>.shape" holds (n, c, h, w) as floats. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cpu/kernels.h"
#include "backend/cpu/kernels_fused.h"
#include "lathe/core.h"

static FILE *out;

static void put(const char *cs, const char *name, int ndim, const int64_t *dims, const float *d) {
  char full[96];
  snprintf(full, sizeof full, "%s.%s", cs, name);
  uint32_t len = (uint32_t)strlen(full), nd = (uint32_t)ndim;
  int64_t cnt = 1;
  for (int i = 0; i < ndim; i++) cnt *= dims[i];
  fwrite(&len, 4, 1, out);
  fwrite(full, 1, len, out);
  fwrite(&nd, 4, 1, out);
  fwrite(dims, 8, (size_t)ndim, out);
  fwrite(d, 4, (size_t)cnt, out);
}

static void fill(float *p, int64_t n, uint64_t stream, float lo, float hi) {
  lt_rng r = lt_rng_make(777, stream);
  for (int64_t i = 0; i < n; i++) p[i] = lo + (hi - lo) * (float)lt_rng_uniform(&r);
}

static void bn_case(int k, int n, int c, int h, int w) {
  char cs[16];
  snprintf(cs, sizeof cs, "bn%d", k);
  const int hw = h * w;
  const int64_t cnt = (int64_t)n * c * hw, xd[4] = {n, c, h, w}, cd[1] = {c}, sd[1] = {4};
  float *x = malloc(sizeof(float) * cnt), *y = malloc(sizeof(float) * cnt),
        *yi = malloc(sizeof(float) * cnt), *dy = malloc(sizeof(float) * cnt),
        *dx = malloc(sizeof(float) * cnt);
  float *g = malloc(sizeof(float) * c), *b = malloc(sizeof(float) * c),
        *rm = malloc(sizeof(float) * c), *rv = malloc(sizeof(float) * c),
        *rm1 = malloc(sizeof(float) * c), *rv1 = malloc(sizeof(float) * c),
        *m = malloc(sizeof(float) * c), *is = malloc(sizeof(float) * c),
        *dg = malloc(sizeof(float) * c), *db = malloc(sizeof(float) * c);
  fill(x, cnt, 10 * k + 1, -2.0f, 3.0f);
  fill(dy, cnt, 10 * k + 2, -1.0f, 1.0f);
  fill(g, c, 10 * k + 3, 0.5f, 1.5f);
  fill(b, c, 10 * k + 4, -0.5f, 0.5f);
  fill(rm, c, 10 * k + 5, -0.2f, 0.2f);
  fill(rv, c, 10 * k + 6, 0.5f, 1.5f);
  memcpy(rm1, rm, sizeof(float) * c);
  memcpy(rv1, rv, sizeof(float) * c);
  lt_cpu_bn_fwd_infer_ex(n, c, hw, x, g, b, rm, rv, 1e-5f, yi, 1);
  lt_cpu_bn_fwd_train_ex(n, c, hw, x, g, b, 1e-5f, 0.1f, y, m, is, rm1, rv1, 1);
  lt_cpu_bn_bwd_ex(n, c, hw, x, dy, y, g, m, is, dx, 0, dg, db, 0);
  const float shape[4] = {(float)n, (float)c, (float)h, (float)w};
  put(cs, "shape", 1, sd, shape);
  put(cs, "x", 4, xd, x);
  put(cs, "dy", 4, xd, dy);
  put(cs, "gamma", 1, cd, g);
  put(cs, "beta", 1, cd, b);
  put(cs, "running_mean", 1, cd, rm);
  put(cs, "running_var", 1, cd, rv);
  put(cs, "y_infer", 4, xd, yi);
  put(cs, "y", 4, xd, y);
  put(cs, "mean", 1, cd, m);
  put(cs, "invstd", 1, cd, is);
  put(cs, "running_mean_after", 1, cd, rm1);
  put(cs, "running_var_after", 1, cd, rv1);
  put(cs, "dx", 4, xd, dx);
  put(cs, "dgamma", 1, cd, dg);
  put(cs, "dbeta", 1, cd, db);
  free(x), free(y), free(yi), free(dy), free(dx), free(g), free(b), free(rm), free(rv), free(rm1),
      free(rv1), free(m), free(is), free(dg), free(db);
}

static void add_case(int k, int64_t count) {
  char cs[16];
  snprintf(cs, sizeof cs, "add%d", k);
  const int64_t d[1] = {count};
  float *a = malloc(sizeof(float) * count), *b = malloc(sizeof(float) * count),
        *y = malloc(sizeof(float) * count), *dy = malloc(sizeof(float) * count),
        *da = malloc(sizeof(float) * count), *db = malloc(sizeof(float) * count);
  fill(a, count, 100 + k, -1.0f, 1.0f);
  fill(b, count, 200 + k, -1.0f, 1.0f);
  fill(dy, count, 300 + k, -1.0f, 1.0f);
  fill(db, count, 400 + k, -1.0f, 1.0f); /* accumulated into: the reference adds it too */
  put(cs, "a", 1, d, a);
  put(cs, "b", 1, d, b);
  put(cs, "dy", 1, d, dy);
  put(cs, "db_before", 1, d, db);
  lt_cpu_add_relu_fwd((size_t)count, a, b, y);
  lt_cpu_add_relu_bwd((size_t)count, y, dy, da, 0, db, 1);
  put(cs, "y", 1, d, y);
  put(cs, "da", 1, d, da);
  put(cs, "db", 1, d, db);
  free(a), free(b), free(y), free(dy), free(da), free(db);
}

int main(int argc, char **argv) {
  if (argc < 2 || !(out = fopen(argv[1], "wb"))) {
    fprintf(stderr, "usage: engine_ref_fused OUT.bin\n");
    return 1;
  }
  fwrite("LTFUSED1", 1, 8, out);
  static const int bn_shapes[][4] = {{1, 3, 2, 3}, {4, 17, 1, 1}, {3, 20, 5, 7},
                                     {2, 33, 8, 8}, {16, 7, 4, 5}};
  for (int k = 0; k < 5; k++)
    bn_case(k, bn_shapes[k][0], bn_shapes[k][1], bn_shapes[k][2], bn_shapes[k][3]);
  add_case(0, 1);
  add_case(1, 17);
  add_case(2, 5003);
  uint32_t zero = 0;
  fwrite(&zero, 4, 1, out);
  return fclose(out) == 0 ? 0 : 1;
}
