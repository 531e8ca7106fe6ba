/* libFuzzer target for the ONNX reader and importer: any bytes either import or fail with a
 * message; a graph that imports must export, and its export must import again. Built with
 * clang -fsanitize=fuzzer,address(,undefined) by tests/onnx/CMakeLists.txt when clang can. */
#include <stdint.h>
#include <stdlib.h>

#include "lathe/onnx.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  lt_err err = {0};
  lt_graph *g = lt_onnx_load_buffer(data, size, NULL, &err);
  if (!g) {
    if (!err.msg[0]) abort(); /* every failure must say why */
    return 0;
  }
  uint8_t *buf = NULL;
  size_t len = 0;
  if (lt_onnx_save_buffer(g, &buf, &len, &err) == LT_OK) {
    lt_graph *h = lt_onnx_load_buffer(buf, len, NULL, &err);
    if (!h) abort(); /* Lathe must read what it writes */
    lt_graph_free(h);
  }
  free(buf);
  lt_graph_free(g);
  return 0;
}
