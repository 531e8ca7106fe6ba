/* Builds small ONNX models byte by byte for the reader tests, with the engine's protobuf
 * encoder, so that malformed variants (cycles, dangling names, absurd dims, external data,
 * unknown fields) can be made precisely. Field numbers follow onnx/onnx.proto. */
#ifndef LATHE_TEST_ONNX_BUILDER_H
#define LATHE_TEST_ONNX_BUILDER_H
#include <stdarg.h>
#include <string.h>

#include "io/pb.h"

/* TensorProto with float data as raw bytes; dims as given (data may be NULL: no data field). */
static void ob_tensor(pb_buf *out, uint32_t field, const char *name, int ndim, const int64_t *dims,
                      const float *data, size_t n) {
  pb_buf t = {0};
  for (int i = 0; i < ndim; i++) pb_put_int(&t, 1, dims[i]);
  pb_put_int(&t, 2, 1); /* FLOAT */
  pb_put_str(&t, 8, name);
  if (data) pb_put_bytes(&t, 9, data, n * sizeof(float));
  pb_put_msg(out, field, &t);
  pb_buf_free(&t);
}

/* TensorProto of int64 values (int64_data, packed), as Slice's starts/ends/axes/steps. */
static void ob_tensor_i64(pb_buf *out, uint32_t field, const char *name, int n, const int64_t *v) {
  pb_buf t = {0};
  pb_put_int(&t, 1, n);
  pb_put_int(&t, 2, 7); /* INT64 */
  pb_put_packed_ints(&t, 7, v, (size_t)n);
  pb_put_str(&t, 8, name);
  pb_put_msg(out, field, &t);
  pb_buf_free(&t);
}

/* NodeProto: op, name, inputs and outputs as NULL-terminated lists, attributes pre-encoded. */
static void ob_node(pb_buf *graph, const char *op, const char *name, const char *const *in,
                    const char *const *out, const pb_buf *attrs) {
  pb_buf n = {0};
  for (int i = 0; in && in[i]; i++) pb_put_str(&n, 1, in[i]);
  for (int i = 0; out && out[i]; i++) pb_put_str(&n, 2, out[i]);
  pb_put_str(&n, 3, name);
  pb_put_str(&n, 4, op);
  if (attrs) pb_put_raw(&n, attrs->data, attrs->len);
  pb_put_int(&n, 999, 7); /* an unknown field: readers must skip it */
  pb_put_msg(graph, 1, &n);
  pb_buf_free(&n);
}

static void ob_attr_ints(pb_buf *attrs, const char *name, int n, const int64_t *v) {
  pb_buf a = {0};
  pb_put_str(&a, 1, name);
  pb_put_packed_ints(&a, 8, v, (size_t)n);
  pb_put_int(&a, 20, 7); /* INTS */
  pb_put_msg(attrs, 5, &a);
  pb_buf_free(&a);
}

static void ob_attr_int(pb_buf *attrs, const char *name, int64_t v) {
  pb_buf a = {0};
  pb_put_str(&a, 1, name);
  pb_put_int(&a, 3, v);
  pb_put_int(&a, 20, 2); /* INT */
  pb_put_msg(attrs, 5, &a);
  pb_buf_free(&a);
}

/* ValueInfoProto of a float tensor; dims < 0 are written as dim_param "batch". */
static void ob_valinfo(pb_buf *graph, uint32_t field, const char *name, int ndim, const int64_t *dims) {
  pb_buf shape = {0}, tt = {0}, type = {0}, vi = {0}, dim = {0};
  for (int i = 0; i < ndim; i++) {
    dim.len = 0;
    if (dims[i] < 0) pb_put_str(&dim, 2, "batch");
    else pb_put_int(&dim, 1, dims[i]);
    pb_put_msg(&shape, 1, &dim);
  }
  pb_put_int(&tt, 1, 1);
  pb_put_msg(&tt, 2, &shape);
  pb_put_msg(&type, 1, &tt);
  pb_put_str(&vi, 1, name);
  pb_put_msg(&vi, 2, &type);
  pb_put_msg(graph, field, &vi);
  pb_buf_free(&shape);
  pb_buf_free(&tt);
  pb_buf_free(&type);
  pb_buf_free(&vi);
  pb_buf_free(&dim);
}

/* ModelProto around a graph. */
static void ob_model(pb_buf *model, const pb_buf *graph, int64_t opset) {
  pb_buf op = {0};
  pb_put_int(model, 1, 8);
  pb_put_str(model, 2, "lathe-test");
  pb_put_str(model, 77, "unknown field at model level");
  pb_put_msg(model, 7, graph);
  pb_put_str(&op, 1, "");
  pb_put_int(&op, 2, opset);
  pb_put_msg(model, 8, &op);
  pb_buf_free(&op);
}

#define OB_LIST(...) ((const char *const[]){__VA_ARGS__, NULL})
#endif
