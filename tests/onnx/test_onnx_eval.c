/* The shared ResNet-20 ONNX files, imported by Lathe, score PyTorch's 80.73% top-1 (± 0.3 pp) on
 * the JPEG CIFAR-10 test split (decoders may differ by ±1 in a pixel). This is the accuracy half
 * of `lathe eval`, through the same lt_evaluate, with the model read from ONNX.
 *
 *   test_onnx_eval DATA_DIR [all]   the folded file; with "all" also the batch-norm file (the
 *                                   reference tests already show both compute the same logits) */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "lathe/backend.h"
#include "lathe/data.h"
#include "lathe/onnx.h"
#include "lathe/train.h"
#include "test.h"

static const char *data_dir;
static int n_files = 1;

TEST_CASE(onnx_resnet20_accuracy_on_cifar10_jpeg) {
  char path[1024];
  snprintf(path, sizeof path, "%s/cifar10-jpeg.h5", data_dir);
  lt_err err = {0};
  lt_dataset_opts dopts = {.num_classes = 10};
  lt_dataset *ds = lt_dataset_load(path, "test", &dopts, &err);
  REQUIRE(ds != NULL);
  lt_backend *be = lt_backend_get("cpu", &err);
  REQUIRE(be != NULL);
  lt_norm norm = {.n = 3, .mean = {0.4914f, 0.4822f, 0.4465f}, .std = {0.2470f, 0.2435f, 0.2616f}};
  const char *files[2] = {"resnet20-cifar10.onnx", "resnet20-cifar10-bn.onnx"};
  for (int i = 0; i < n_files; i++) {
    snprintf(path, sizeof path, "%s/models/%s", data_dir, files[i]);
    lt_graph *g = lt_onnx_load(path, NULL, &err);
    CHECK_MSG(g != NULL, "%s", err.msg);
    if (!g) continue;
    lt_eval_result r;
    double t0 = lt_now();
    CHECK_MSG(lt_evaluate(g, be, ds, &norm, 250, &r, &err) == LT_OK, "%s", err.msg);
    printf("  %s: top-1 %.2f%% over %lld images (PyTorch: 80.73%%), %.1f s\n", files[i],
           100.0 * r.accuracy, (long long)r.samples, lt_now() - t0);
    CHECK(r.samples == 10000);
    CHECK_NEAR(100.0 * r.accuracy, 80.73, 0.3);
    lt_graph_free(g);
  }
  lt_dataset_free(ds);
}

int main(int argc, char **argv) {
  data_dir = argc > 1 ? argv[1] : "";
  if (argc > 2 && !strcmp(argv[2], "all")) n_files = 2;
  char probe[1024];
  snprintf(probe, sizeof probe, "%s/cifar10-jpeg.h5", data_dir);
  if (access(probe, R_OK) != 0) {
    printf("skipped: %s is absent\n", probe);
    return 77;
  }
  RUN(onnx_resnet20_accuracy_on_cifar10_jpeg);
  return test_summary();
}
