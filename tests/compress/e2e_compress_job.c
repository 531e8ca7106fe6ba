/* The `compress` job end to end on the shared ResNet-20 and CIFAR-10 JPEG data, with tiny
 * budgets:
 *   job   the result carries every field issue 6 lists, the search and both baselines meet the
 *         FLOPs target, the artifacts exist, the latency table is cached (a second job on this
 *         device measures nothing), and bad inputs (an unmeetable target, a model with no
 *         compressible layer, a dataset that does not fit the model) fail with exit 2 and a
 *         message that says so
 *   ort   the compressed model.onnx runs in onnxruntime-node with the engine's outputs
 * Skips (77) when ../shared/data is absent (and, for ort, when onnxruntime-node is). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "lathe/backend.h"
#include "lathe/data.h"
#include "lathe/exec.h"
#include "lathe/onnx.h"
#include "test.h"

#define DATA LATHE_SOURCE_DIR "/../shared/data"
#define FASHION LATHE_BUILD_DIR "/data/fashion-mnist.h5"
static char dir[256];

/* Runs a job spec (JSON text of "spec") into dir/OUT; returns the exit status and keeps all of
 * stdout (the events) in *events (malloc'd). */
static int run_job(const char *spec, const char *out, char **events) {
  char path[512], cmd[2048];
  snprintf(path, sizeof path, "%s/%s.json", dir, out);
  FILE *f = fopen(path, "w");
  fprintf(f, "{\"kind\": \"compress\", \"device\": \"cpu\", \"spec\": %s}\n", spec);
  fclose(f);
  snprintf(cmd, sizeof cmd, "mkdir -p %s/%s && OMP_WAIT_POLICY=passive %s run %s --out %s/%s",
           dir, out, LATHE_BIN, path, dir, out);
  FILE *p = popen(cmd, "r");
  size_t cap = 1 << 20, len = 0;
  char *buf = malloc(cap);
  size_t got;
  while ((got = fread(buf + len, 1, cap - len - 1, p)) > 0) {
    len += got;
    if (len + 1 == cap) buf = realloc(buf, cap *= 2);
  }
  buf[len] = 0;
  *events = buf;
  int st = pclose(p);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* The summary of the final result event, or NULL. */
static cJSON *result_of(const char *events) {
  const char *r = strstr(events, "{\"type\":\"result\"");
  cJSON *j = r ? cJSON_Parse(r) : NULL;
  cJSON *s = j ? cJSON_DetachItemFromObject(j, "summary") : NULL;
  cJSON_Delete(j);
  return s;
}

static double num(const cJSON *o, const char *k) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
  return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

#define MODEL "{\"file\": \"" DATA "/models/resnet20-cifar10-bn.onnx\"}"
#define NORM "\"normalisation\": {\"mean\": [0.4914, 0.4822, 0.4465], \"std\": [0.2470, 0.2435, 0.2616]}"

/* A spec with tiny budgets; latency NULL: batch 4, measured, cached in dir/cache. */
static void spec_small_lat(char *buf, size_t cap, const char *model, const char *dataset,
                           const char *target, int search_steps, int ft_steps,
                           const char *baselines, const char *latency) {
  char lat[600];
  if (latency) snprintf(lat, sizeof lat, "%s", latency);
  else snprintf(lat, sizeof lat, "{\"batch\": 4, \"cache_dir\": \"%s/cache\"}", dir);
  snprintf(buf, cap,
           "{\"model\": %s, \"dataset\": \"%s\", \"splits\": {\"train\": \"train\", \"test\": "
           "\"test\"}, \"eval_samples\": 200, \"target\": %s, \"search\": {\"steps\": %d, "
           "\"batch_size\": 16}, \"finetune\": {\"steps\": %d, \"batch_size\": 32}, "
           "\"baselines\": %s, \"sensitivity\": {\"ratios\": 3, \"samples\": 64}, \"latency\": "
           "%s, " NORM ", \"threads\": 2}",
           model, dataset, target, search_steps, ft_steps, baselines, lat);
}

static void spec_small(char *buf, size_t cap, const char *model, const char *dataset,
                       const char *target, int search_steps, int ft_steps,
                       const char *baselines) {
  spec_small_lat(buf, cap, model, dataset, target, search_steps, ft_steps, baselines, NULL);
}

TEST_CASE(compress_job_meets_target_caches_table_and_refuses_bad_input) {
  char spec[4096], *ev = NULL;
  spec_small(spec, sizeof spec, MODEL, DATA "/cifar10-jpeg.h5",
             "{\"kind\": \"flops\", \"reduction\": 0.6}", 6, 4, "[\"uniform\", \"sensitivity\"]");
  int rc = run_job(spec, "ok", &ev);
  CHECK_MSG(rc == 0, "compress job exited %d:\n%s", rc, ev + (strlen(ev) > 2000 ? strlen(ev) - 2000 : 0));
  cJSON *r = result_of(ev);
  REQUIRE(r != NULL);
  static const char *fields[] = {"flops_before", "flops_after", "flops_reduction", "params_before",
                                 "params_after", "accuracy_before", "accuracy_after",
                                 "latency_ms_before", "latency_ms_after", "speedup_measured",
                                 "latency_prediction_error"};
  for (size_t i = 0; i < sizeof fields / sizeof *fields; i++) {
    /* a busy machine: the job says why it could not check the prediction */
    if (!strcmp(fields[i], "latency_prediction_error") &&
        cJSON_IsString(cJSON_GetObjectItemCaseSensitive(r, "latency_prediction_note")))
      continue;
    CHECK_MSG(isfinite(num(r, fields[i])), "result field %s missing or not a number", fields[i]);
  }
  CHECK(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(r, "device")));
  /* the latency model's reference (every searched layer at its smallest rank) is faster than
   * the original, and its slope a plausible one */
  if (isfinite(num(r, "latency_prediction_error"))) {
    CHECK(num(r, "latency_ms_reference") > 0 &&
          num(r, "latency_ms_reference") < num(r, "latency_ms_before"));
    CHECK(num(r, "latency_prediction_slope") >= 0.5 && num(r, "latency_prediction_slope") <= 2);
  }
  /* how busy the machine was while timing, and the warning exactly when others kept it busy */
  const cJSON *cond = cJSON_GetObjectItemCaseSensitive(r, "latency_conditions");
  double others = num(cond, "other_busy_cores");
  CHECK(num(cond, "cores") >= 1 && num(cond, "seconds") > 0);
  CHECK(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(cond, "omp_wait_policy")));
  CHECK_MSG(isfinite(others) && others >= 0 && others <= num(cond, "cores") + 0.05,
            "other_busy_cores %g", others);
  CHECK(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(r, "latency_note")) == (others > 0.25));
  const cJSON *target = cJSON_GetObjectItemCaseSensitive(r, "target");
  double T = num(target, "value");
  CHECK(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(target, "met")));
  CHECK(num(r, "flops_after") <= T);
  CHECK(num(r, "flops_reduction") >= 0.6 - 1e-9);
  /* The right data, model and normalisation: the reference is 80.73% on the whole test split. */
  CHECK(num(r, "accuracy_before") > 0.7);
  /* fine-tuned, distilled from the original by default */
  const cJSON *ft = cJSON_GetObjectItemCaseSensitive(r, "finetune");
  CHECK(num(ft, "steps") == 4);
  CHECK(isfinite(num(cJSON_GetObjectItemCaseSensitive(ft, "distill"), "alpha")));
  CHECK(isfinite(num(r, "accuracy_before_finetune")));
  const cJSON *layers = cJSON_GetObjectItemCaseSensitive(r, "layers");
  CHECK(cJSON_GetArraySize(layers) == 19); /* 18 convs and the classifier (64 -> 10: rank 8) */
  const cJSON *l0 = cJSON_GetArrayItem(layers, 0);
  CHECK(cJSON_GetObjectItemCaseSensitive(l0, "candidate_ranks") &&
        isfinite(num(l0, "latency_ms_predicted")) && isfinite(num(l0, "latency_ms_measured")));
  const cJSON *bl = cJSON_GetObjectItemCaseSensitive(r, "baselines");
  CHECK(num(cJSON_GetObjectItemCaseSensitive(bl, "uniform"), "flops") <= T);
  CHECK(num(cJSON_GetObjectItemCaseSensitive(bl, "sensitivity"), "flops") <= T);
  static const char *arts[] = {"model.onnx", "latency_table.json", "search_trajectory.json"};
  for (size_t i = 0; i < 3; i++) {
    char p[512];
    snprintf(p, sizeof p, "%s/ok/%s", dir, arts[i]);
    CHECK_MSG(access(p, R_OK) == 0, "artifact %s missing", arts[i]);
  }
  cJSON_Delete(r);
  free(ev);

  /* Same device, same cache: nothing measured again; then the target fails. */
  spec_small(spec, sizeof spec, MODEL, DATA "/cifar10-jpeg.h5",
             "{\"kind\": \"flops\", \"value\": 1000}", 6, 4, "[]");
  rc = run_job(spec, "unmet", &ev);
  CHECK(rc == 2);
  CHECK_STR_CONTAINS(ev, "cannot be met");
  CHECK_STR_CONTAINS(ev, "(6 from the cache");
  free(ev);

  /* A latency target on this worker's own table (from the cache): the latency model's intercept
   * and slope are logged, and the target is met in its terms. */
  spec_small(spec, sizeof spec, MODEL, DATA "/cifar10-jpeg.h5",
             "{\"kind\": \"latency\", \"reduction\": 0.4}", 4, 0, "[]");
  rc = run_job(spec, "latency", &ev);
  CHECK_MSG(rc == 0, "latency-target job exited %d", rc);
  r = result_of(ev);
  target = cJSON_GetObjectItemCaseSensitive(r, "target");
  CHECK(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(target, "met")));
  CHECK(num(target, "achieved") <= num(target, "value") &&
        num(target, "value") < num(target, "before"));
  CHECK_STR_CONTAINS(ev, "latency model: ");
  cJSON_Delete(r);
  free(ev);

  /* A latency target with a table measured by `lathe profile` (the path for compressing for
   * another device), and a roofline estimate, labelled as such. */
  char cmd[1024], lat[1024];
  snprintf(cmd, sizeof cmd, "OMP_WAIT_POLICY=passive %s profile %s/models/resnet20-cifar10.onnx "
           "--out %s/profiled.json --batch 16 --threads 2 > /dev/null", LATHE_BIN, DATA, dir);
  CHECK(system(cmd) == 0);
  snprintf(lat, sizeof lat, "{\"batch\": 16, \"table\": \"%s/profiled.json\"}", dir);
  spec_small_lat(spec, sizeof spec, MODEL, DATA "/cifar10-jpeg.h5",
                 "{\"kind\": \"latency\", \"reduction\": 0.1}", 4, 0, "[]", lat);
  rc = run_job(spec, "table", &ev);
  CHECK_MSG(rc == 0, "latency-target job with a given table exited %d", rc);
  r = result_of(ev);
  target = cJSON_GetObjectItemCaseSensitive(r, "target");
  CHECK(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(target, "met")));
  CHECK_STR_CONTAINS(ev, "latency table from");
  cJSON_Delete(r);
  free(ev);

  /* The baselines alone: same target, no search, the uniform baseline within it. */
  spec_small(spec, sizeof spec, MODEL, DATA "/cifar10-jpeg.h5",
             "{\"kind\": \"flops\", \"reduction\": 0.6}", 2, 2, "[\"uniform\"]");
  strcpy(spec + strlen(spec) - 1, ", \"baselines_only\": true}");
  rc = run_job(spec, "bonly", &ev);
  CHECK_MSG(rc == 0, "baselines-only job exited %d", rc);
  r = result_of(ev);
  REQUIRE(r != NULL);
  CHECK(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r, "baselines_only")));
  CHECK(cJSON_GetObjectItemCaseSensitive(r, "accuracy_after") == NULL);
  CHECK(num(cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(r, "baselines"),
                                             "uniform"), "flops") <=
        num(cJSON_GetObjectItemCaseSensitive(r, "target"), "value"));
  CHECK(strstr(ev, "rank search") == NULL);
  cJSON_Delete(r);
  free(ev);

  /* Fine-tuning given both as steps and as epochs. */
  spec_small(spec, sizeof spec, MODEL, DATA "/cifar10-jpeg.h5", "{}", 2, 3, "[]");
  char *at = strstr(spec, "\"finetune\": {");
  REQUIRE(at != NULL);
  at += strlen("\"finetune\": {");
  memmove(at + 15, at, strlen(at) + 1);
  memcpy(at, "\"epochs\": 0.5, ", 15);
  rc = run_job(spec, "both", &ev);
  CHECK(rc == 2);
  CHECK_STR_CONTAINS(ev, "steps or epochs, not both");
  free(ev);

  /* A model with no compressible layer: 1x1 conv, global pool, flatten. */
  lt_err err = {0};
  lt_graph *g = lt_graph_new();
  int x = lt_graph_add_input(g, "input", LT_F32, 3, (int64_t[]){3, 32, 32});
  int w = lt_graph_add_param(g, "w", lt_tensor_new(LT_F32, 4, (int64_t[]){10, 3, 1, 1}, LT_MEM_WEIGHTS, &err), 1);
  lt_node_attrs a = lt_attrs_conv(1, 1, 0, 1, 1);
  int y = lt_graph_add_node(g, LT_OP_CONV2D, "pw", (int[]){x, w}, 2, &a, &err);
  lt_node_attrs d = lt_attrs_default();
  y = lt_graph_add_node(g, LT_OP_GLOBAL_AVGPOOL, "gap", &y, 1, &d, &err);
  y = lt_graph_add_node(g, LT_OP_FLATTEN, "flat", &y, 1, &d, &err);
  lt_graph_set_output(g, y);
  char path[512], model[700];
  snprintf(path, sizeof path, "%s/pointwise.onnx", dir);
  REQUIRE(lt_onnx_save(g, path, &err) == LT_OK);
  lt_graph_free(g);
  snprintf(model, sizeof model, "{\"file\": \"%s\"}", path);
  spec_small(spec, sizeof spec, model, DATA "/cifar10-jpeg.h5", "{}", 2, 0, "[]");
  rc = run_job(spec, "none", &ev);
  CHECK(rc == 2);
  CHECK_STR_CONTAINS(ev, "no compressible layer");
  free(ev);

  /* A dataset of 8x8 images for a 32x32 model. */
  uint8_t px[4 * 3 * 8 * 8] = {0};
  int32_t lab[4] = {0, 1, 2, 3};
  lt_dataset tr = {.split = "train", .n = 4, .c = 3, .h = 8, .w = 8, .x_dtype = LT_U8, .x = px,
                   .labels = lab, .num_classes = 10};
  lt_dataset te = tr;
  snprintf(te.split, sizeof te.split, "test");
  lt_dataset *splits[2] = {&tr, &te};
  snprintf(path, sizeof path, "%s/small.h5", dir);
  REQUIRE(lt_dataset_save(path, splits, 2, &err) == LT_OK);
  spec_small(spec, sizeof spec, MODEL, path, "{}", 2, 0, "[]");
  rc = run_job(spec, "misfit", &ev);
  CHECK(rc == 2);
  CHECK_STR_CONTAINS(ev, "does not fit the model");
  free(ev);
}

/* The engine's and onnxruntime's outputs of dir/OUT/model.onnx on a batch of 4 random inputs
 * (dims "4,C,H,W", 10 classes) agree. */
static void check_onnx_against_ort(const char *outdir, const char *dims) {
  char model[512], in[512], out[512], cmd[2048];
  snprintf(model, sizeof model, "%s/%s/model.onnx", dir, outdir);
  snprintf(in, sizeof in, "%s/%s/in.f32", dir, outdir);
  snprintf(out, sizeof out, "%s/%s/out.f32", dir, outdir);
  lt_err err = {0};
  lt_graph *g = lt_onnx_load(model, NULL, &err);
  REQUIRE(g != NULL);
  lt_exec *ex = lt_exec_create(g, 4, LT_MODE_INFER, lt_backend_get("cpu", &err), NULL, &err);
  REQUIRE(ex != NULL);
  lt_tensor *xt = lt_exec_input(ex, 0);
  lt_rng rng = lt_rng_make(9, 0);
  for (int64_t i = 0; i < lt_tensor_numel(xt); i++) lt_tensor_f32(xt)[i] = lt_rng_normal(&rng);
  FILE *f = fopen(in, "wb");
  fwrite(xt->data, 1, lt_tensor_nbytes(xt), f);
  fclose(f);
  REQUIRE(lt_exec_forward(ex, &err) == LT_OK);
  snprintf(cmd, sizeof cmd, "node %s %s %s %s %s", ORT_RUN, model, in, dims, out);
  CHECK_MSG(system(cmd) == 0, "onnxruntime-node failed on the compressed model");
  float ref[40];
  f = fopen(out, "rb");
  REQUIRE(f && fread(ref, sizeof(float), 40, f) == 40);
  fclose(f);
  const float *y = lt_tensor_f32(lt_exec_output(ex, 0));
  double worst = 0;
  for (int i = 0; i < 40; i++) worst = fmax(worst, fabs(y[i] - ref[i]) / fmax(1.0, fabs(ref[i])));
  CHECK_MSG(worst < 1e-4, "engine and onnxruntime differ by %g", worst);
  lt_exec_free(ex);
  lt_graph_free(g);
}

TEST_CASE(compressed_onnx_matches_onnxruntime) {
  char spec[4096], *ev = NULL;
  spec_small(spec, sizeof spec, MODEL, DATA "/cifar10-jpeg.h5",
             "{\"kind\": \"flops\", \"reduction\": 0.5}", 3, 2, "[]");
  int rc = run_job(spec, "ort", &ev);
  free(ev);
  REQUIRE(rc == 0);
  check_onnx_against_ort("ort", "4,3,32,32");
}

static int have_ort(void) {
  return system("node -e \"require('onnxruntime-node')\" 2>/dev/null") == 0;
}

/* The zoo small CNN on Fashion-MNIST (issue 6): its linear layers are searched with its conv.
 * fc1 holds 401k of its 428k parameters, so a target of half the parameters is met only by
 * factorising fc1: the result lists fc1 and fc2 as linear layers ([M, K], input [K]), fc1 at a
 * rank, the search and both baselines meet the target, and model.onnx (fc1 as two Gemms) runs in
 * onnxruntime with the engine's outputs. */
TEST_CASE(smallcnn_job_compresses_its_linear_layers) {
  char spec[4096], *ev = NULL;
  snprintf(spec, sizeof spec,
           "{\"model\": {\"zoo\": \"smallcnn\", \"num_classes\": 10}, \"dataset\": \"%s\", "
           "\"splits\": {\"train\": \"train\", \"test\": \"test\"}, \"eval_samples\": 200, "
           "\"target\": {\"kind\": \"params\", \"reduction\": 0.5}, \"search\": {\"steps\": 6, "
           "\"batch_size\": 16}, \"finetune\": {\"steps\": 2, \"batch_size\": 32}, "
           "\"baselines\": [\"uniform\", \"sensitivity\"], \"sensitivity\": {\"ratios\": 3, "
           "\"samples\": 64}, \"latency\": {\"batch\": 4, \"cache_dir\": \"%s/cache\"}, "
           "\"normalisation\": {\"mean\": [0.286], \"std\": [0.353]}, \"threads\": 2}",
           FASHION, dir);
  int rc = run_job(spec, "smallcnn", &ev);
  CHECK_MSG(rc == 0, "compress job exited %d:\n%s", rc, ev + (strlen(ev) > 2000 ? strlen(ev) - 2000 : 0));
  cJSON *r = result_of(ev);
  REQUIRE(r != NULL);
  const cJSON *target = cJSON_GetObjectItemCaseSensitive(r, "target");
  double T = num(target, "value");
  CHECK(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(target, "met")));
  CHECK(num(r, "params_after") <= T);
  const cJSON *bl = cJSON_GetObjectItemCaseSensitive(r, "baselines");
  CHECK(num(cJSON_GetObjectItemCaseSensitive(bl, "uniform"), "params") <= T);
  CHECK(num(cJSON_GetObjectItemCaseSensitive(bl, "sensitivity"), "params") <= T);
  const cJSON *layers = cJSON_GetObjectItemCaseSensitive(r, "layers"), *l;
  CHECK(cJSON_GetArraySize(layers) == 3);
  int fc1 = 0, fc2 = 0;
  cJSON_ArrayForEach(l, layers) {
    const cJSON *nm = cJSON_GetObjectItemCaseSensitive(l, "name");
    const cJSON *kind = cJSON_GetObjectItemCaseSensitive(l, "kind");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(l, "shape");
    const cJSON *in = cJSON_GetObjectItemCaseSensitive(l, "input");
    REQUIRE(cJSON_IsString(nm) && cJSON_IsString(kind));
    if (strcmp(kind->valuestring, "linear")) continue;
    CHECK(cJSON_GetArraySize(shape) == 2 && cJSON_GetArraySize(in) == 1 &&
          cJSON_GetArrayItem(shape, 1)->valueint == cJSON_GetArrayItem(in, 0)->valueint);
    if (strstr(nm->valuestring, "fc1")) {
      fc1++;
      CHECK(cJSON_GetArrayItem(shape, 0)->valueint == 128 &&
            cJSON_GetArrayItem(shape, 1)->valueint == 3136);
      double rank = num(l, "chosen_rank");
      CHECK_MSG(rank > 0, "fc1 stayed dense (rank %g) under a target only fc1 can meet", rank);
      CHECK(num(l, "params_after") == rank * (3136 + 128));
      CHECK(isfinite(num(l, "latency_ms_predicted")) && isfinite(num(l, "latency_ms_measured")));
    }
    if (strstr(nm->valuestring, "fc2")) fc2++;
  }
  CHECK(fc1 == 1 && fc2 == 1);
  cJSON_Delete(r);
  free(ev);
  if (have_ort()) check_onnx_against_ort("smallcnn", "4,1,28,28");
  else printf("note: onnxruntime-node not found (NODE_PATH); the ONNX check was left out\n");
}

int main(int argc, char **argv) {
  const char *mode = argc > 1 ? argv[1] : "job";
  const char *need = !strcmp(mode, "smallcnn") ? FASHION : DATA "/cifar10-jpeg.h5";
  if (access(need, R_OK) != 0) {
    printf("skip: %s absent\n", need);
    return 77;
  }
  snprintf(dir, sizeof dir, "/tmp/lathe-compress-XXXXXX");
  if (!mkdtemp(dir)) return 1;
  if (!strcmp(mode, "smallcnn")) {
    RUN(smallcnn_job_compresses_its_linear_layers);
  } else if (!strcmp(mode, "ort")) {
    if (!have_ort()) {
      printf("skip: onnxruntime-node not found (NODE_PATH)\n");
      return 77;
    }
    RUN(compressed_onnx_matches_onnxruntime);
  } else {
    RUN(compress_job_meets_target_caches_table_and_refuses_bad_input);
  }
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
  return test_summary();
}
