/* `lathe data gen-surrogate`: the layout the loader relies on (contiguous, 4 KiB-aligned,
 * (N, 2, G, G) float32 in /train and /test), the physics (y is x advanced Δ steps by an
 * independent double-precision Gray-Scott stepper; consecutive samples of a run chain), real
 * patterns, and argument errors. */
#include "lathe/loader.h"
#include "test.h"

#include <hdf5.h>

int cmd_gen_surrogate(int argc, char **argv);

#define G 32
#define DELTA 10

static int gen(const char *out, const char *samples, const char *extra) {
  char *argv[16] = {"gen-surrogate", "--out", (char *)out, "--samples", (char *)samples,
                    "--test-samples", "8", "--grid", "32", "--per-run", "16", "--delta", "10",
                    "--warmup", "300", NULL};
  int argc = 15;
  if (extra) argv[argc++] = (char *)extra;
  return cmd_gen_surrogate(argc, argv);
}

static hid_t open_ds(hid_t f, const char *name, hsize_t *dims) {
  hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
  hid_t s = H5Dget_space(d);
  H5Sget_simple_extent_dims(s, dims, NULL);
  H5Sclose(s);
  return d;
}

/* Reference Gray-Scott in double, written independently of the command's float version. */
static void reference_advance(double *u, double *v, double F, double k, int steps) {
  double un[G * G], vn[G * G];
  for (int s = 0; s < steps; s++) {
    for (int i = 0; i < G; i++)
      for (int j = 0; j < G; j++) {
        int c = i * G + j;
        int nb[4] = {((i + G - 1) % G) * G + j, ((i + 1) % G) * G + j, i * G + (j + G - 1) % G,
                     i * G + (j + 1) % G};
        double lu = -4 * u[c], lv = -4 * v[c];
        for (int q = 0; q < 4; q++) lu += u[nb[q]], lv += v[nb[q]];
        double uvv = u[c] * v[c] * v[c];
        un[c] = u[c] + 0.16 * lu - uvv + F * (1 - u[c]);
        vn[c] = v[c] + 0.08 * lv + uvv - (F + k) * v[c];
      }
    memcpy(u, un, sizeof un);
    memcpy(v, vn, sizeof vn);
  }
}

TEST_CASE(gen_surrogate_writes_aligned_contiguous_splits) {
  const char *path = "surrogate_small.h5";
  REQUIRE(gen(path, "40", NULL) == 0);
  hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
  REQUIRE(f >= 0);
  const char *names[4] = {"/train/x", "/train/y", "/test/x", "/test/y"};
  hsize_t want_n[4] = {40, 40, 8, 8};
  for (int i = 0; i < 4; i++) {
    hsize_t dims[4] = {0};
    hid_t d = open_ds(f, names[i], dims);
    REQUIRE(d >= 0);
    CHECK(dims[0] == want_n[i] && dims[1] == 2 && dims[2] == G && dims[3] == G);
    hid_t dcpl = H5Dget_create_plist(d);
    CHECK(H5Pget_layout(dcpl) == H5D_CONTIGUOUS);
    H5Pclose(dcpl);
    haddr_t off = H5Dget_offset(d);
    CHECK_MSG(off != HADDR_UNDEF && off % 4096 == 0, "%s at byte %llu, not 4 KiB-aligned", names[i],
              (unsigned long long)off);
    H5Dclose(d);
  }
  H5Fclose(f);
  remove(path);
}

TEST_CASE(gen_surrogate_targets_are_the_inputs_advanced_delta_steps) {
  const char *path = "surrogate_physics.h5";
  REQUIRE(gen(path, "40", NULL) == 0);
  hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
  hsize_t dims[4], pd[2];
  hid_t dx = open_ds(f, "/train/x", dims), dy = open_ds(f, "/train/y", dims),
        dp = open_ds(f, "/train/params", pd);
  float *x = malloc(40 * 2 * G * G * 4), *y = malloc(40 * 2 * G * G * 4), p[80];
  REQUIRE(H5Dread(dx, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, x) >= 0);
  REQUIRE(H5Dread(dy, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, y) >= 0);
  REQUIRE(H5Dread(dp, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, p) >= 0);
  /* within a run (16 samples), the target of sample s is the input of sample s + 1 */
  for (int s = 0; s < 15; s++)
    CHECK(memcmp(y + s * 2 * G * G, x + (s + 1) * 2 * G * G, 2 * G * G * 4) == 0);
  /* runs differ in their parameters, drawn in the pattern-forming band */
  CHECK(p[0] != p[16 * 2] && p[1] != p[16 * 2 + 1]);
  for (int s = 0; s < 40; s++) CHECK(p[2 * s] >= 0.025f && p[2 * s] <= 0.055f && p[2 * s + 1] >= 0.057f && p[2 * s + 1] <= 0.065f);
  double worst = 0, vmax = 0, vmin = 1;
  for (int s = 0; s < 40; s += 7) {
    double u[G * G], v[G * G];
    for (int c = 0; c < G * G; c++) u[c] = x[s * 2 * G * G + c], v[c] = x[s * 2 * G * G + G * G + c];
    reference_advance(u, v, p[2 * s], p[2 * s + 1], DELTA);
    for (int c = 0; c < G * G; c++) {
      double du = fabs(u[c] - y[s * 2 * G * G + c]), dv = fabs(v[c] - y[s * 2 * G * G + G * G + c]);
      if (du > worst) worst = du;
      if (dv > worst) worst = dv;
      if (v[c] > vmax) vmax = v[c];
      if (v[c] < vmin) vmin = v[c];
    }
  }
  printf("  max |y - reference| = %.2e, v in [%.3f, %.3f]\n", worst, vmin, vmax);
  CHECK(worst < 1e-4);
  CHECK(vmax - vmin > 0.05); /* a pattern, not a homogeneous field */
  free(x);
  free(y);
  H5Dclose(dx);
  H5Dclose(dy);
  H5Dclose(dp);
  H5Fclose(f);
  remove(path);
}

TEST_CASE(gen_surrogate_is_read_by_the_loader_with_o_direct_when_possible) {
  const char *path = "surrogate_loader.h5";
  REQUIRE(gen(path, "40", NULL) == 0);
  lt_loader_opts o = lt_loader_opts_default();
  o.path = path;
  o.global_batch = 8;
  o.rank = 0;
  o.n_ranks = 1;
  o.o_direct = true;
  lt_err err = {0};
  lt_loader *ld = lt_loader_open(&o, &err);
  if (!ld) {
    CHECK_STR_CONTAINS(err.msg, "O_DIRECT"); /* e.g. tmpfs: say so, then read without it */
    o.o_direct = false;
    ld = lt_loader_open(&o, &err);
  }
  REQUIRE(ld);
  CHECK(lt_loader_x_sample_bytes(ld) == 2 * G * G * 4);
  lt_loader_batch b;
  int64_t seen = 0;
  while (lt_loader_next(ld, &b, &err) == LT_OK && b.n_local >= 0) seen += b.n_local;
  CHECK(seen == 40);
  lt_loader_close(ld);
  remove(path);
}

TEST_CASE(gen_surrogate_rejects_bad_arguments) {
  char *no_out[] = {"gen-surrogate", "--samples", "10", NULL};
  CHECK(cmd_gen_surrogate(3, no_out) == 2);
  char *bad_grid[] = {"gen-surrogate", "--out", "x.h5", "--samples", "10", "--grid", "abc", NULL};
  CHECK(cmd_gen_surrogate(7, bad_grid) == 2);
  char *bad_dir[] = {"gen-surrogate", "--out", "/nonexistent/dir/x.h5", "--samples", "1", "--grid", "8", NULL};
  CHECK(cmd_gen_surrogate(7, bad_dir) == 3);
}

int main(void) {
  RUN(gen_surrogate_writes_aligned_contiguous_splits);
  RUN(gen_surrogate_targets_are_the_inputs_advanced_delta_steps);
  RUN(gen_surrogate_is_read_by_the_loader_with_o_direct_when_possible);
  RUN(gen_surrogate_rejects_bad_arguments);
  return test_summary();
}
