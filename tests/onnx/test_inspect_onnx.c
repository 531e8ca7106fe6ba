/* `lathe inspect MODEL.onnx` summary (workers/inspect_onnx.c): per-layer op, shape, params and
 * MACs with totals for the shared ResNet-20, and a bad-input code with a message for junk. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "job.h"
#include "test.h"

int inspect_onnx_json(const char *path, cJSON **out, char *err, size_t errcap);

static const char *data_dir;

TEST_CASE(inspect_onnx_resnet20_totals_and_layers) {
  char path[1024], err[1024] = "";
  snprintf(path, sizeof path, "%s/models/resnet20-cifar10-bn.onnx", data_dir);
  cJSON *j = NULL;
  REQUIRE(inspect_onnx_json(path, &j, err, sizeof err) == 0);
  CHECK(cJSON_GetObjectItem(j, "params")->valuedouble == 269722);
  CHECK(cJSON_GetObjectItem(j, "macs")->valuedouble == 40551040);
  CHECK(cJSON_GetObjectItem(j, "opset")->valuedouble == 13);
  cJSON *layers = cJSON_GetObjectItem(j, "layers");
  CHECK(cJSON_GetArraySize(layers) == 75);
  cJSON *first = cJSON_GetArrayItem(layers, 0);
  CHECK(strcmp(cJSON_GetObjectItem(first, "op")->valuestring, "Conv2d") == 0);
  CHECK(cJSON_GetObjectItem(first, "macs")->valuedouble == 16 * 32 * 32 * 27);
  CHECK(cJSON_GetObjectItem(first, "params")->valuedouble == 16 * 27); /* conv without bias: BN follows */
  cJSON *shape = cJSON_GetObjectItem(first, "output_shape");
  CHECK(cJSON_GetArraySize(shape) == 4 && cJSON_GetArrayItem(shape, 1)->valuedouble == 16);
  cJSON *in = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "inputs"), 0);
  CHECK(strcmp(cJSON_GetObjectItem(in, "name")->valuestring, "input") == 0);
  CHECK(strcmp(cJSON_GetArrayItem(cJSON_GetObjectItem(in, "shape"), 0)->valuestring, "batch") == 0);
  cJSON_Delete(j);
}

TEST_CASE(inspect_onnx_junk_is_bad_input) {
  char path[] = "/tmp/lathe-inspect-onnx-XXXXXX", err[1024] = "";
  int fd = mkstemp(path);
  REQUIRE(fd >= 0);
  CHECK(write(fd, "not a model at all", 18) == 18);
  close(fd);
  cJSON *j = NULL;
  CHECK(inspect_onnx_json(path, &j, err, sizeof err) == JOB_EXIT_BAD_INPUT);
  CHECK(j == NULL && err[0] != '\0');
  unlink(path);
}

int main(int argc, char **argv) {
  data_dir = argc > 1 ? argv[1] : "";
  if (access(data_dir, R_OK) == 0) RUN(inspect_onnx_resnet20_totals_and_layers);
  else printf("skip inspect_onnx_resnet20_totals_and_layers: ../shared/data absent\n");
  RUN(inspect_onnx_junk_is_bad_input);
  return test_summary();
}
