/* ONNX reference tests: Lathe's import (and export → re-import) computes what onnxruntime and
 * PyTorch compute.
 *
 *   test_onnx_reference shared DATA_DIR ORT_RUN.cjs   ResNet-20 files vs onnxruntime-node
 *   test_onnx_reference torch MODELS_DIR ORT_RUN.cjs  torch 1.13 exports (opsets 9-17, BN folded
 *                                                     and kept) vs PyTorch and onnxruntime
 *
 * Tolerance: max |lathe - reference| <= 1e-4 * max(1, max |reference|), i.e. float32 rounding
 * through ~20 layers of accumulation; measured differences are printed. Exits 77 (skipped) when
 * the data, node or onnxruntime-node is absent. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "forward.h"
#include "lathe/onnx.h"
#include "test.h"

static const char *ort_script;
static char tmpdir[256];

#define TOL_REL 1e-4

static float *read_f32(const char *path, size_t *n) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long len = ftell(f);
  fseek(f, 0, SEEK_SET);
  float *p = malloc((size_t)len + 4);
  if (p && fread(p, 1, (size_t)len, f) != (size_t)len) {
    free(p);
    p = NULL;
  }
  fclose(f);
  *n = (size_t)len / 4;
  return p;
}

static int write_f32(const char *path, const float *p, size_t n) {
  FILE *f = fopen(path, "wb");
  if (!f) return -1;
  int ok = fwrite(p, 4, n, f) == n;
  return fclose(f) == 0 && ok ? 0 : -1;
}

/* Runs onnxruntime on model with input x (batch, 3, h, w); returns the output or NULL. */
static float *ort(const char *model, const float *x, int batch, int c, int h, int w, size_t *n) {
  char in[512], out[512], cmd[2048];
  snprintf(in, sizeof in, "%s/in.f32", tmpdir);
  snprintf(out, sizeof out, "%s/out.f32", tmpdir);
  if (write_f32(in, x, (size_t)batch * c * h * w)) return NULL;
  snprintf(cmd, sizeof cmd, "node '%s' '%s' '%s' %d,%d,%d,%d '%s' >/dev/null", ort_script, model, in,
           batch, c, h, w, out);
  if (system(cmd) != 0) return NULL;
  return read_f32(out, n);
}

/* max |a - b| against the tolerance; prints the figure. */
static void compare(const char *what, const float *a, const float *ref, size_t n) {
  double maxd = 0, maxr = 0;
  for (size_t i = 0; i < n; i++) {
    maxd = fmax(maxd, fabs((double)a[i] - ref[i]));
    maxr = fmax(maxr, fabs((double)ref[i]));
  }
  double tol = TOL_REL * fmax(1.0, maxr);
  printf("  %-58s max|diff| %.3g (tolerance %.3g, max|ref| %.3g)\n", what, maxd, tol, maxr);
  CHECK_MSG(maxd <= tol && !isnan(maxd), "%s: max |diff| %g exceeds %g", what, maxd, tol);
}

static float *random_input(int n, uint64_t seed) {
  float *x = malloc(sizeof(float) * (size_t)n);
  lt_rng r = lt_rng_make(seed, 0);
  for (int i = 0; i < n; i++) x[i] = lt_rng_normal(&r);
  return x;
}

/* Imports model, runs it on x, compares with ref; then exports, re-imports, compares again. */
static void check_model(const char *path, const char *label, const float *x, int batch, const float *ref,
                        size_t nref) {
  lt_err err = {0};
  lt_graph *g = lt_onnx_load(path, NULL, &err);
  CHECK_MSG(g != NULL, "%s: %s", label, err.msg);
  if (!g) return;
  lt_tensor *y = test_forward(g, batch, x, &err);
  CHECK_MSG(y != NULL, "%s: forward: %s", label, err.msg);
  if (y) {
    CHECK((size_t)lt_tensor_numel(y) == nref);
    char what[256];
    snprintf(what, sizeof what, "%s import", label);
    if ((size_t)lt_tensor_numel(y) == nref) compare(what, lt_tensor_f32(y), ref, nref);
  }
  lt_tensor_free(y);
  char exported[512];
  snprintf(exported, sizeof exported, "%s/export.onnx", tmpdir);
  CHECK_MSG(lt_onnx_save(g, exported, &err) == LT_OK, "%s: export: %s", label, err.msg);
  lt_graph *h = lt_onnx_load(exported, NULL, &err);
  CHECK_MSG(h != NULL, "%s: re-import: %s", label, err.msg);
  if (h) {
    CHECK(h->n_nodes == g->n_nodes);
    CHECK(lt_graph_params(h) == lt_graph_params(g));
    y = test_forward(h, batch, x, &err);
    CHECK_MSG(y != NULL, "%s: forward after round trip: %s", label, err.msg);
    char what[256];
    snprintf(what, sizeof what, "%s export -> re-import", label);
    if (y && (size_t)lt_tensor_numel(y) == nref) compare(what, lt_tensor_f32(y), ref, nref);
    lt_tensor_free(y);
  }
  /* The exported file itself, run by onnxruntime. */
  const lt_value *in = &g->values[g->inputs[0]];
  size_t n = 0;
  float *o = ort(exported, x, batch, (int)in->shape[0], (int)in->shape[1], (int)in->shape[2], &n);
  CHECK_MSG(o != NULL, "%s: onnxruntime failed on the exported model", label);
  if (o && n == nref) {
    char what[256];
    snprintf(what, sizeof what, "%s export, run by onnxruntime", label);
    compare(what, o, ref, nref);
  }
  free(o);
  lt_graph_free(h);
  lt_graph_free(g);
}

static const char *data_dir;

TEST_CASE(resnet20_files_match_onnxruntime) {
  const char *files[2] = {"resnet20-cifar10.onnx", "resnet20-cifar10-bn.onnx"};
  const int batch = 4;
  float *x = random_input(batch * 3 * 32 * 32, 42);
  for (int i = 0; i < 2; i++) {
    char path[1024];
    snprintf(path, sizeof path, "%s/models/%s", data_dir, files[i]);
    size_t n = 0;
    float *ref = ort(path, x, batch, 3, 32, 32, &n);
    CHECK_MSG(ref && n == (size_t)batch * 10, "onnxruntime failed on %s", path);
    if (ref) check_model(path, files[i], x, batch, ref, n);
    free(ref);
  }
  free(x);
}

TEST_CASE(torch_exports_match_pytorch) {
  char path[1024];
  snprintf(path, sizeof path, "%s/manifest.txt", data_dir);
  FILE *f = fopen(path, "r");
  REQUIRE(f != NULL);
  char name[256];
  int b, c, h, w, cnt = 0;
  size_t nout;
  while (fscanf(f, "%255s %d %d %d %d %zu", name, &b, &c, &h, &w, &nout) == 6) {
    size_t nx = 0, nr = 0;
    snprintf(path, sizeof path, "%s/%s.in.f32", data_dir, name);
    float *x = read_f32(path, &nx);
    snprintf(path, sizeof path, "%s/%s.out.f32", data_dir, name);
    float *ref = read_f32(path, &nr);
    snprintf(path, sizeof path, "%s/%s.onnx", data_dir, name);
    CHECK(x && ref && nx == (size_t)b * c * h * w && nr == nout);
    if (x && ref) check_model(path, name, x, b, ref, nr);
    free(x);
    free(ref);
    cnt++;
  }
  fclose(f);
  CHECK(cnt >= 8);
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s shared|torch DIR ORT_RUN.cjs\n", argv[0]);
    return 2;
  }
  data_dir = argv[2];
  ort_script = argv[3];
  if (system("node -e \"require('onnxruntime-node')\" 2>/dev/null") != 0) {
    printf("skipped: node or onnxruntime-node not found (set NODE_PATH to <repo>/node_modules)\n");
    return 77;
  }
  if (access(data_dir, R_OK) != 0) {
    printf("skipped: %s is absent\n", data_dir);
    return 77;
  }
  snprintf(tmpdir, sizeof tmpdir, "/tmp/lathe-onnx-ref-XXXXXX");
  if (!mkdtemp(tmpdir)) return 1;
  if (!strcmp(argv[1], "shared")) RUN(resnet20_files_match_onnxruntime);
  else RUN(torch_exports_match_pytorch);
  char cmd[512];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
  return test_summary();
}
