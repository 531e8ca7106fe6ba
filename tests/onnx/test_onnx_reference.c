/* ONNX reference tests: Lathe's import (and export → re-import) computes what onnxruntime and
 * PyTorch compute.
 *
 *   test_onnx_reference shared DATA_DIR ORT_RUN.cjs   ResNet-20 files vs onnxruntime-node
 *   test_onnx_reference torch MODELS_DIR ORT_RUN.cjs  torch 1.13 exports (opsets 9-17, BN folded
 *                                                     and kept) vs PyTorch and onnxruntime
 *   test_onnx_reference zoo - ORT_RUN.cjs             every zoo model, exported, run by
 *                                                     onnxruntime vs Lathe
 *
 * Tolerance: max |lathe - reference| <= 1e-4 * max(1, max |reference|), i.e. float32 rounding
 * through ~20 layers of accumulation; measured differences are printed. Exits 77 (skipped) when
 * the data, node or onnxruntime-node is absent. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lathe/backend.h"
#include "lathe/exec.h"
#include "lathe/onnx.h"
#include "lathe/zoo.h"
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

/* onnxruntime runs are queued and done by one node process per test case (starting node and
 * onnxruntime takes longer than running these models). Each job compares onnxruntime's output
 * for (model, x) with Lathe's output `lathe`. */
typedef struct ort_job {
  char model[512], in[512], out[512], label[256];
  int dims[4];
  float *lathe; /* (n) owned */
  size_t n;
} ort_job;
static ort_job jobs[64];
static int n_jobs;

static void ort_defer(const char *model, const float *x, const int *dims, const float *lathe,
                      size_t n, const char *label) {
  REQUIRE(n_jobs < 64);
  ort_job *j = &jobs[n_jobs];
  snprintf(j->model, sizeof j->model, "%s", model);
  snprintf(j->in, sizeof j->in, "%s/in%d.f32", tmpdir, n_jobs);
  snprintf(j->out, sizeof j->out, "%s/out%d.f32", tmpdir, n_jobs);
  snprintf(j->label, sizeof j->label, "%s", label);
  memcpy(j->dims, dims, sizeof j->dims);
  j->n = n;
  j->lathe = malloc(n * sizeof(float));
  REQUIRE(j->lathe && write_f32(j->in, x, (size_t)dims[0] * dims[1] * dims[2] * dims[3]) == 0);
  memcpy(j->lathe, lathe, n * sizeof(float));
  n_jobs++;
}

static void ort_flush(void) {
  char list[512], cmd[2048];
  snprintf(list, sizeof list, "%s/jobs.txt", tmpdir);
  FILE *f = fopen(list, "w");
  REQUIRE(f != NULL);
  for (int i = 0; i < n_jobs; i++)
    fprintf(f, "%s\t%s\t%d,%d,%d,%d\t%s\n", jobs[i].model, jobs[i].in, jobs[i].dims[0], jobs[i].dims[1],
            jobs[i].dims[2], jobs[i].dims[3], jobs[i].out);
  fclose(f);
  snprintf(cmd, sizeof cmd, "node '%s' --jobs '%s' >/dev/null", ort_script, list);
  CHECK_MSG(system(cmd) == 0, "onnxruntime-node failed on one of the models (see stderr)");
  for (int i = 0; i < n_jobs; i++) {
    size_t n = 0;
    float *o = read_f32(jobs[i].out, &n);
    CHECK_MSG(o && n == jobs[i].n, "%s: no or wrong-sized onnxruntime output", jobs[i].label);
    if (o && n == jobs[i].n) compare(jobs[i].label, jobs[i].lathe, o, n);
    free(o);
    free(jobs[i].lathe);
  }
  n_jobs = 0;
}

/* Runs g for one batch on the CPU executor; returns output 0 (a new tensor) or NULL. */
static lt_tensor *lathe_forward(lt_graph *g, int batch, const float *x, lt_err *err) {
  lt_backend *be = lt_backend_get("cpu", err);
  lt_exec *ex = be ? lt_exec_create(g, batch, LT_MODE_INFER, be, NULL, err) : NULL;
  if (!ex) return NULL;
  lt_tensor *in = lt_exec_input(ex, 0), *y = NULL;
  memcpy(in->data, x, lt_tensor_nbytes(in));
  if (lt_exec_forward(ex, err) == LT_OK) y = lt_tensor_clone(lt_exec_output(ex, 0), LT_MEM_DATA, err);
  lt_exec_free(ex);
  return y;
}

static float *random_input(int n, uint64_t seed) {
  float *x = malloc(sizeof(float) * (size_t)n);
  lt_rng r = lt_rng_make(seed, 0);
  for (int i = 0; i < n; i++) x[i] = lt_rng_normal(&r);
  return x;
}

/* Imports model and runs it on x; compares with ref when given (PyTorch's output), and queues
 * onnxruntime on the original (with_original) and on Lathe's export, both against Lathe's
 * output. The export is re-imported and must compute the same. */
static void check_model(const char *path, const char *label, const float *x, int batch, const float *ref,
                        size_t nref, int with_original) {
  lt_err err = {0};
  lt_graph *g = lt_onnx_load(path, NULL, &err);
  CHECK_MSG(g != NULL, "%s: %s", label, err.msg);
  if (!g) return;
  const lt_value *in = &g->values[g->inputs[0]];
  int dims[4] = {batch, (int)in->shape[0], (int)in->shape[1], (int)in->shape[2]};
  char what[512];
  lt_tensor *y = lathe_forward(g, batch, x, &err);
  CHECK_MSG(y != NULL, "%s: forward: %s", label, err.msg);
  if (!y) {
    lt_graph_free(g);
    return;
  }
  size_t ny = (size_t)lt_tensor_numel(y);
  if (ref) {
    snprintf(what, sizeof what, "%s: Lathe import vs PyTorch", label);
    CHECK(ny == nref);
    if (ny == nref) compare(what, lt_tensor_f32(y), ref, nref);
  }
  if (with_original) {
    snprintf(what, sizeof what, "%s: Lathe import vs onnxruntime", label);
    ort_defer(path, x, dims, lt_tensor_f32(y), ny, what);
  }
  char exported[512];
  snprintf(exported, sizeof exported, "%s/export%d.onnx", tmpdir, n_jobs);
  CHECK_MSG(lt_onnx_save(g, exported, &err) == LT_OK, "%s: export: %s", label, err.msg);
  snprintf(what, sizeof what, "%s: Lathe vs onnxruntime on Lathe's export", label);
  ort_defer(exported, x, dims, lt_tensor_f32(y), ny, what);
  lt_graph *h = lt_onnx_load(exported, NULL, &err);
  CHECK_MSG(h != NULL, "%s: re-import: %s", label, err.msg);
  if (h) {
    CHECK(h->n_nodes == g->n_nodes);
    CHECK(lt_graph_params(h) == lt_graph_params(g) && lt_graph_macs(h) == lt_graph_macs(g));
    lt_tensor *y2 = lathe_forward(h, batch, x, &err);
    CHECK_MSG(y2 != NULL, "%s: forward after round trip: %s", label, err.msg);
    snprintf(what, sizeof what, "%s: export -> re-import vs import", label);
    if (y2 && (size_t)lt_tensor_numel(y2) == ny) compare(what, lt_tensor_f32(y2), lt_tensor_f32(y), ny);
    lt_tensor_free(y2);
  }
  lt_tensor_free(y);
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
    check_model(path, files[i], x, batch, NULL, 0, 1);
  }
  ort_flush();
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
    if (x && ref) check_model(path, name, x, b, ref, nr, 0);
    free(x);
    free(ref);
    cnt++;
  }
  fclose(f);
  ort_flush();
  CHECK(cnt == 18); /* opsets 9..17, BN folded and kept */
}

/* Training-mode forwards on random batches: batch-norm running statistics move away from
 * (0, 1), as after a train job, so the export carries non-trivial statistics. */
static void move_bn_statistics(lt_graph *g, uint64_t seed) {
  lt_err err = {0};
  lt_backend *be = lt_backend_get("cpu", &err);
  lt_exec *ex = be ? lt_exec_create(g, 4, LT_MODE_TRAIN, be, NULL, &err) : NULL;
  CHECK_MSG(ex != NULL, "%s", err.msg);
  if (!ex) return;
  for (int step = 0; step < 3; step++) {
    lt_tensor *in = lt_exec_input(ex, 0);
    lt_rng r = lt_rng_make(seed, (uint64_t)step + 1);
    for (int64_t i = 0; i < lt_tensor_numel(in); i++) lt_tensor_f32(in)[i] = 2.f * lt_rng_normal(&r) + 0.5f;
    CHECK(lt_exec_forward(ex, &err) == LT_OK);
  }
  lt_exec_free(ex);
}

/* Graphs built by Lathe (as train and compress produce them) export to ONNX that onnxruntime
 * runs to the same outputs as Lathe. */
TEST_CASE(zoo_models_export_and_match_onnxruntime) {
  for (const char *const *name = lt_zoo_names(); *name; name++) {
    lt_err err = {0};
    lt_zoo_opts o = {.seed = 7};
    lt_graph *g = lt_zoo_build(*name, &o, &err);
    CHECK_MSG(g != NULL, "%s: %s", *name, err.msg);
    if (!g) continue;
    move_bn_statistics(g, 11);
    char path[512], label[128];
    snprintf(path, sizeof path, "%s/zoo-%s.onnx", tmpdir, *name);
    snprintf(label, sizeof label, "zoo %s", *name);
    CHECK_MSG(lt_onnx_save(g, path, &err) == LT_OK, "%s: export: %s", *name, err.msg);
    const lt_value *in = &g->values[g->inputs[0]];
    int n = 2 * (int)lt_shape_numel(in->ndim, in->shape);
    float *x = random_input(n, 3);
    check_model(path, label, x, 2, NULL, 0, 0); /* the export is what check_model imports */
    free(x);
    lt_graph_free(g);
  }
  ort_flush();
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s shared|torch|zoo DIR ORT_RUN.cjs\n", argv[0]);
    return 2;
  }
  data_dir = argv[2];
  ort_script = argv[3];
  if (system("node -e \"require('onnxruntime-node')\" 2>/dev/null") != 0) {
    printf("skipped: node or onnxruntime-node not found (set NODE_PATH to <repo>/node_modules)\n");
    return 77;
  }
  if (strcmp(argv[1], "zoo") && access(data_dir, R_OK) != 0) {
    printf("skipped: %s is absent\n", data_dir);
    return 77;
  }
  snprintf(tmpdir, sizeof tmpdir, "/tmp/lathe-onnx-ref-XXXXXX");
  if (!mkdtemp(tmpdir)) return 1;
  if (!strcmp(argv[1], "shared")) RUN(resnet20_files_match_onnxruntime);
  else if (!strcmp(argv[1], "zoo")) RUN(zoo_models_export_and_match_onnxruntime);
  else RUN(torch_exports_match_pytorch);
  char cmd[512];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
  return test_summary();
}
