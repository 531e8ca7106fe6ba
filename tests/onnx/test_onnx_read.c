/* ONNX reader and importer on hostile and real input: every malformed file is a clear error
 * (never a crash: this suite also runs under ASan/UBSan), the shared ResNet-20 files import with
 * their published size, and a graph survives export → import unchanged. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io/pb.h"
#include "lathe/backend.h"
#include "lathe/exec.h"
#include "lathe/onnx.h"
#include "onnx_builder.h"
#include "test.h"

enum { V_OK, V_CYCLE, V_DANGLING_INPUT, V_DANGLING_OUTPUT, V_ABSURD_DIMS, V_NEGATIVE_DIM,
       V_SHORT_DATA, V_UNSUPPORTED_OP, V_REVERSED, V_EXTERNAL, V_EXTERNAL_ESCAPE, V_DUPLICATE,
       V_EMPTY_INTS, V_ONE_INPUT_ADD };

/* x (N,2,4,4) → Conv(3x3, pad 1) → Relu → GlobalAveragePool → Flatten → Gemm → y (N,4). */
static void build(int variant, int64_t opset, pb_buf *out) {
  pb_buf g = {0}, conv = {0}, flat = {0}, gemm = {0};
  float w[3 * 2 * 3 * 3], b[3], fw[4 * 3], fb[4];
  for (int i = 0; i < 54; i++) w[i] = (float)((i * 7) % 11 - 5) / 10.f;
  for (int i = 0; i < 3; i++) b[i] = 0.1f * (float)i;
  for (int i = 0; i < 12; i++) fw[i] = (float)(i % 5) / 4.f - 0.5f;
  for (int i = 0; i < 4; i++) fb[i] = 0.01f * (float)i;
  int64_t wd[4] = {3, 2, 3, 3}, bd[1] = {3}, fwd[2] = {4, 3}, fbd[1] = {4};
  if (variant == V_ABSURD_DIMS) wd[0] = (int64_t)1 << 40;
  if (variant == V_NEGATIVE_DIM) wd[1] = -2;
  if (variant == V_EXTERNAL || variant == V_EXTERNAL_ESCAPE) {
    /* conv.weight lives in an external file (data_location = EXTERNAL). */
    pb_buf t = {0}, kv = {0};
    for (int i = 0; i < 4; i++) pb_put_int(&t, 1, wd[i]);
    pb_put_int(&t, 2, 1);
    pb_put_str(&t, 8, "conv.weight");
    pb_put_str(&kv, 1, "location");
    pb_put_str(&kv, 2, variant == V_EXTERNAL ? "weights.bin" : "../../etc/passwd");
    pb_put_msg(&t, 13, &kv);
    pb_put_int(&t, 14, 1);
    pb_put_msg(&g, 5, &t);
    pb_buf_free(&t);
    pb_buf_free(&kv);
  } else {
    ob_tensor(&g, 5, "conv.weight", 4, wd, variant == V_SHORT_DATA ? w + 1 : w,
              variant == V_SHORT_DATA ? 10 : 54);
  }
  ob_tensor(&g, 5, "conv.bias", 1, bd, b, 3);
  ob_tensor(&g, 5, "fc.weight", 2, fwd, fw, 12);
  ob_tensor(&g, 5, "fc.bias", 1, fbd, fb, 4);
  if (variant == V_DUPLICATE) ob_tensor(&g, 5, "fc.bias", 1, fbd, fb, 4);
  int64_t pads[4] = {1, 1, 1, 1}, ks[2] = {3, 3};
  ob_attr_ints(&conv, "pads", 4, pads);
  ob_attr_ints(&conv, "kernel_shape", 2, ks);
  if (variant == V_EMPTY_INTS) ob_attr_ints(&conv, "dilations", 0, NULL); /* a list of none */
  ob_attr_int(&flat, "axis", 1);
  ob_attr_int(&gemm, "transB", 1);
  const char *relu_in = variant == V_CYCLE ? "f" : variant == V_DANGLING_INPUT ? "nowhere" : "c";
  /* Nodes, in file order (reversed for V_REVERSED: still a valid graph once sorted). */
  struct { const char *op, *name; const char *const *in, *const *out; pb_buf *a; } nodes[5] = {
      {"Conv", "conv", OB_LIST("x", "conv.weight", "conv.bias"), OB_LIST("c"), &conv},
      {variant == V_UNSUPPORTED_OP ? "LSTM" : "Relu", "relu", OB_LIST(relu_in), OB_LIST("r"), NULL},
      {"GlobalAveragePool", "gap", OB_LIST("r"), OB_LIST("p"), NULL},
      {"Flatten", "flatten", OB_LIST("p"), OB_LIST("f"), &flat},
      {"Gemm", "fc", OB_LIST("f", "fc.weight", "fc.bias"), OB_LIST("y"), &gemm}};
  for (int k = 0; k < 5; k++) {
    int i = variant == V_REVERSED ? 4 - k : k;
    ob_node(&g, nodes[i].op, nodes[i].name, nodes[i].in, nodes[i].out, nodes[i].a);
  }
  /* (fuzz crash-aafa4dd3) an Add of constants with its second input missing */
  if (variant == V_ONE_INPUT_ADD) ob_node(&g, "Add", "half_add", OB_LIST("conv.bias"), OB_LIST("q"), NULL);
  int64_t xd[4] = {-1, 2, 4, 4}, yd[2] = {-1, 4};
  ob_valinfo(&g, 11, "x", 4, xd);
  ob_valinfo(&g, 12, variant == V_DANGLING_OUTPUT ? "zz" : "y", 2, yd);
  pb_put_str(&g, 2, "tiny");
  ob_model(out, &g, opset);
  pb_buf_free(&g);
  pb_buf_free(&conv);
  pb_buf_free(&flat);
  pb_buf_free(&gemm);
}

/* Loads variant from memory and expects failure with needle in the message. */
static void expect_error(int variant, const char *needle) {
  pb_buf m = {0};
  build(variant, 13, &m);
  lt_err err = {0};
  lt_graph *g = lt_onnx_load_buffer(m.data, m.len, NULL, &err);
  CHECK_MSG(g == NULL, "variant %d imported but should fail with '%s'", variant, needle);
  CHECK_STR_CONTAINS(err.msg, needle);
  CHECK(err.status != LT_OK);
  lt_graph_free(g);
  pb_buf_free(&m);
}

TEST_CASE(onnx_tiny_model_imports_with_unknown_fields_skipped) {
  pb_buf m = {0};
  build(V_OK, 13, &m);
  lt_err err = {0};
  lt_graph *g = lt_onnx_load_buffer(m.data, m.len, NULL, &err);
  CHECK_MSG(g != NULL, "%s", err.msg);
  if (g) {
    CHECK(g->n_nodes == 5);
    CHECK(g->n_outputs == 1 && g->values[g->outputs[0]].ndim == 1 && g->values[g->outputs[0]].shape[0] == 4);
    CHECK(lt_graph_params(g) == 54 + 3 + 12 + 4);
    CHECK(lt_graph_macs(g) == 3 * 4 * 4 * 2 * 9 + 12);
    CHECK(strcmp(g->nodes[0].name, "conv") == 0);
    CHECK(lt_graph_find_value(g, "y") >= 0);
  }
  lt_graph_free(g);
  pb_buf_free(&m);
}

TEST_CASE(onnx_nodes_out_of_order_are_sorted) {
  pb_buf m = {0};
  build(V_REVERSED, 13, &m);
  lt_err err = {0};
  lt_graph *g = lt_onnx_load_buffer(m.data, m.len, NULL, &err);
  CHECK_MSG(g != NULL, "%s", err.msg);
  if (g) CHECK(g->n_nodes == 5 && g->nodes[0].op == LT_OP_CONV2D);
  lt_graph_free(g);
  pb_buf_free(&m);
}

TEST_CASE(onnx_every_truncation_is_a_clear_error) {
  pb_buf m = {0};
  build(V_OK, 13, &m);
  int failures_ok = 1;
  for (size_t len = 0; len < m.len; len++) {
    lt_err err = {0};
    lt_graph *g = lt_onnx_load_buffer(m.data, len, NULL, &err);
    /* A cut exactly between two top-level fields can still be a complete, smaller message (for
     * instance without its opset_import); it must then fail for a named reason, not crash. */
    if (g || err.msg[0] == '\0') failures_ok = 0;
    lt_graph_free(g);
  }
  CHECK(failures_ok);
  pb_buf_free(&m);
}

TEST_CASE(onnx_wrong_magic_is_a_clear_error) {
  static const char *files[] = {"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "\x89HDF\r\n\x1a\n\0\0\0\0\0\0\0\0",
                                "hello, this is a text file\n", ""};
  for (int i = 0; i < 4; i++) {
    lt_err err = {0};
    lt_graph *g = lt_onnx_load_buffer(files[i], strlen(files[i]) + (i < 2 ? 8 : 0), NULL, &err);
    CHECK(g == NULL);
    CHECK(err.status == LT_ERR_FORMAT || err.status == LT_ERR_UNSUPPORTED);
    CHECK_MSG(strstr(err.msg, "ONNX") || strstr(err.msg, "protobuf"), "message: %s", err.msg);
  }
}

TEST_CASE(onnx_malformed_graphs_are_clear_errors) {
  expect_error(V_CYCLE, "cycle");
  expect_error(V_DANGLING_INPUT, "dangling");
  expect_error(V_DANGLING_OUTPUT, "dangling");
  expect_error(V_ABSURD_DIMS, "absurd");
  expect_error(V_NEGATIVE_DIM, "negative");
  expect_error(V_SHORT_DATA, "need");
  expect_error(V_DUPLICATE, "defined twice");
  expect_error(V_EXTERNAL, "external file");  /* from memory: no folder to resolve it in */
}

/* Regression (fuzz crash-af71ce54, UBSan): an ints attribute with no values was copied from a
 * NULL list. An empty dilations list is refused as a clear error, or read as the default. */
TEST_CASE(onnx_constant_add_without_second_input_is_a_clear_error) {
  expect_error(V_ONE_INPUT_ADD, "missing its second input");
}

TEST_CASE(onnx_empty_ints_attribute_is_handled) {
  pb_buf m = {0};
  build(V_EMPTY_INTS, 13, &m);
  lt_err err = {0};
  lt_graph *g = lt_onnx_load_buffer(m.data, m.len, NULL, &err);
  CHECK_MSG(g || (err.status != LT_OK && err.msg[0]), "neither a graph nor an error");
  lt_graph_free(g);
  pb_buf_free(&m);
}

TEST_CASE(onnx_unsupported_op_names_op_node_and_opset) {
  pb_buf m = {0};
  build(V_UNSUPPORTED_OP, 11, &m);
  lt_err err = {0};
  lt_graph *g = lt_onnx_load_buffer(m.data, m.len, NULL, &err);
  CHECK(g == NULL && err.status == LT_ERR_UNSUPPORTED);
  CHECK_STR_CONTAINS(err.msg, "LSTM");
  CHECK_STR_CONTAINS(err.msg, "'relu'");
  CHECK_STR_CONTAINS(err.msg, "opset 11");
  pb_buf_free(&m);
  build(V_OK, 8, &m);
  g = lt_onnx_load_buffer(m.data, m.len, NULL, &err);
  CHECK(g == NULL);
  CHECK_STR_CONTAINS(err.msg, "opset 8");
  pb_buf_free(&m);
}

static int write_file(const char *path, const void *p, size_t n) {
  FILE *f = fopen(path, "wb");
  if (!f) return -1;
  int ok = fwrite(p, 1, n, f) == n;
  return fclose(f) == 0 && ok ? 0 : -1;
}

TEST_CASE(onnx_external_data_only_beside_the_model) {
  char dir[] = "/tmp/lathe-onnx-ext-XXXXXX", path[512], bin[512];
  REQUIRE(mkdtemp(dir) != NULL);
  snprintf(path, sizeof path, "%s/model.onnx", dir);
  snprintf(bin, sizeof bin, "%s/weights.bin", dir);
  float w[54];
  for (int i = 0; i < 54; i++) w[i] = (float)i / 54.f;
  REQUIRE(write_file(bin, w, sizeof w) == 0);
  pb_buf m = {0};
  build(V_EXTERNAL, 13, &m);
  REQUIRE(write_file(path, m.data, m.len) == 0);
  pb_buf_free(&m);
  lt_err err = {0};
  lt_graph *g = lt_onnx_load(path, NULL, &err);
  CHECK_MSG(g != NULL, "%s", err.msg);
  if (g) {
    int wid = lt_graph_find_value(g, "conv.weight");
    CHECK(wid >= 0 && lt_tensor_f32(g->values[wid].data)[53] == w[53]);
  }
  lt_graph_free(g);
  build(V_EXTERNAL_ESCAPE, 13, &m);
  REQUIRE(write_file(path, m.data, m.len) == 0);
  pb_buf_free(&m);
  g = lt_onnx_load(path, NULL, &err);
  CHECK(g == NULL);
  CHECK_STR_CONTAINS(err.msg, "leaves the model's folder");
  /* A short external file is refused, not read past its end. */
  REQUIRE(write_file(bin, w, 20) == 0);
  build(V_EXTERNAL, 13, &m);
  REQUIRE(write_file(path, m.data, m.len) == 0);
  pb_buf_free(&m);
  g = lt_onnx_load(path, NULL, &err);
  CHECK(g == NULL);
  CHECK_STR_CONTAINS(err.msg, "does not hold");
  unlink(bin);
  unlink(path);
  rmdir(dir);
}

TEST_CASE(onnx_export_reimport_keeps_graph) {
  pb_buf m = {0};
  build(V_OK, 13, &m);
  lt_err err = {0};
  lt_graph *g = lt_onnx_load_buffer(m.data, m.len, NULL, &err);
  pb_buf_free(&m);
  REQUIRE(g != NULL);
  uint8_t *buf = NULL;
  size_t len = 0;
  CHECK(lt_onnx_save_buffer(g, &buf, &len, &err) == LT_OK);
  lt_graph *h = buf ? lt_onnx_load_buffer(buf, len, NULL, &err) : NULL;
  CHECK_MSG(h != NULL, "%s", err.msg);
  if (h) {
    CHECK(h->n_nodes == g->n_nodes);
    for (int i = 0; i < g->n_nodes && i < h->n_nodes; i++) {
      CHECK(h->nodes[i].op == g->nodes[i].op);
      CHECK(strcmp(h->nodes[i].name, g->nodes[i].name) == 0);
      CHECK(strcmp(h->values[h->nodes[i].out[0]].name, g->values[g->nodes[i].out[0]].name) == 0);
    }
    CHECK(lt_graph_params(h) == lt_graph_params(g) && lt_graph_macs(h) == lt_graph_macs(g));
    int a = lt_graph_find_value(g, "conv.weight"), b = lt_graph_find_value(h, "conv.weight");
    CHECK(a >= 0 && b >= 0 && memcmp(g->values[a].data->data, h->values[b].data->data, 54 * 4) == 0);
  }
  free(buf);
  lt_graph_free(h);
  lt_graph_free(g);
}

/* Regression (fuzz crash e9ce3c12): two nodes with the same name, each exported with attribute
 * initializers ("<node>.min"), made the export define an initializer twice. */
TEST_CASE(onnx_export_with_duplicate_node_names_reimports) {
  pb_buf g = {0}, m = {0};
  int64_t none[1] = {0};
  float lo = -0.5f, hi = 0.5f;
  ob_tensor(&g, 5, "lo", 0, none, &lo, 1);
  ob_tensor(&g, 5, "hi", 0, none, &hi, 1);
  ob_node(&g, "Clip", "dup", OB_LIST("x", "lo", "hi"), OB_LIST("a"), NULL);
  ob_node(&g, "Clip", "dup", OB_LIST("a", "lo", "hi"), OB_LIST("y"), NULL);
  int64_t xd[4] = {-1, 2, 4, 4};
  ob_valinfo(&g, 11, "x", 4, xd);
  ob_valinfo(&g, 12, "y", 4, xd);
  ob_model(&m, &g, 13);
  lt_err err = {0};
  lt_graph *gr = lt_onnx_load_buffer(m.data, m.len, NULL, &err);
  CHECK_MSG(gr != NULL, "%s", err.msg);
  uint8_t *buf = NULL;
  size_t len = 0;
  CHECK(gr && lt_onnx_save_buffer(gr, &buf, &len, &err) == LT_OK);
  lt_graph *h = buf ? lt_onnx_load_buffer(buf, len, NULL, &err) : NULL;
  CHECK_MSG(h != NULL, "%s", err.msg);
  if (h) CHECK(h->n_nodes == 2 && h->nodes[1].op == LT_OP_CLIP && h->nodes[1].a.hi == 0.5f);
  free(buf);
  lt_graph_free(h);
  lt_graph_free(gr);
  pb_buf_free(&g);
  pb_buf_free(&m);
}

/* MatMul with a constant weight becomes a linear layer (the weight transposed to (M, K)), and a
 * binary op may take its constant first: y = 1 - (x W + b), checked by hand on two samples. */
TEST_CASE(onnx_matmul_and_constant_first_sub_compute_by_hand) {
  pb_buf g = {0}, m = {0};
  const float w[4 * 3] = {1, 0, 2, 0, 1, 0, -1, 0, 1, 0.5f, 0.5f, 0.5f}; /* (K=4, M=3) */
  const float b[3] = {0.1f, 0.2f, 0.3f}, one = 1.f;
  int64_t wd[2] = {4, 3}, bd[1] = {3}, none[1] = {0};
  ob_tensor(&g, 5, "w", 2, wd, w, 12);
  ob_tensor(&g, 5, "b", 1, bd, b, 3);
  ob_tensor(&g, 5, "one", 0, none, &one, 1);
  ob_node(&g, "MatMul", "mm", OB_LIST("x", "w"), OB_LIST("h"), NULL);
  ob_node(&g, "Add", "bias", OB_LIST("h", "b"), OB_LIST("hb"), NULL);
  ob_node(&g, "Sub", "flip", OB_LIST("one", "hb"), OB_LIST("y"), NULL);
  int64_t xd[2] = {-1, 4}, yd[2] = {-1, 3};
  ob_valinfo(&g, 11, "x", 2, xd);
  ob_valinfo(&g, 12, "y", 2, yd);
  ob_model(&m, &g, 13);
  lt_err err = {0};
  lt_graph *gr = lt_onnx_load_buffer(m.data, m.len, NULL, &err);
  pb_buf_free(&g);
  pb_buf_free(&m);
  REQUIRE(gr != NULL);
  CHECK(gr->n_nodes == 3 && gr->nodes[0].op == LT_OP_LINEAR && gr->nodes[2].op == LT_OP_SUB);
  CHECK(lt_graph_macs(gr) == 12);
  lt_backend *be = lt_backend_get("cpu", &err);
  lt_exec *ex = be ? lt_exec_create(gr, 2, LT_MODE_INFER, be, NULL, &err) : NULL;
  CHECK_MSG(ex != NULL, "%s", err.msg);
  if (ex) {
    const float x[8] = {1, 2, 3, 4, -1, 0.5f, 0, 2};
    memcpy(lt_exec_input(ex, 0)->data, x, sizeof x);
    CHECK(lt_exec_forward(ex, &err) == LT_OK);
    const float *y = lt_tensor_f32(lt_exec_output(ex, 0));
    for (int n = 0; n < 2; n++)
      for (int j = 0; j < 3; j++) {
        float h = b[j];
        for (int k = 0; k < 4; k++) h += x[n * 4 + k] * w[k * 3 + j];
        CHECK_NEAR(y[n * 3 + j], 1.f - h, 1e-5);
      }
    lt_exec_free(ex);
  }
  lt_graph_free(gr);
}

/* Regression (CI fuzz crash-82276d0b, UBSan): a Slice step near INT64_MAX overflowed the
 * ceil-division of the output length, in the importer and in the op; composed into one window,
 * two such slices multiplied their steps. x (N,8) → Slice(start 0, step INT64_MAX) → a (N,1) →
 * Slice(start -1, end INT64_MIN, step -INT64_MAX) → y (N,1) must be x[:, 0], run as a chain. */
TEST_CASE(onnx_slice_with_extreme_steps_keeps_one_element) {
  pb_buf g = {0}, m = {0};
  const int64_t s0[1] = {0}, e0[1] = {8}, ax[1] = {1}, st0[1] = {INT64_MAX};
  const int64_t s1[1] = {-1}, e1[1] = {INT64_MIN}, st1[1] = {-INT64_MAX};
  ob_tensor_i64(&g, 5, "s0", 1, s0);
  ob_tensor_i64(&g, 5, "e0", 1, e0);
  ob_tensor_i64(&g, 5, "ax", 1, ax);
  ob_tensor_i64(&g, 5, "st0", 1, st0);
  ob_tensor_i64(&g, 5, "s1", 1, s1);
  ob_tensor_i64(&g, 5, "e1", 1, e1);
  ob_tensor_i64(&g, 5, "st1", 1, st1);
  ob_node(&g, "Slice", "first", OB_LIST("x", "s0", "e0", "ax", "st0"), OB_LIST("a"), NULL);
  ob_node(&g, "Slice", "back", OB_LIST("a", "s1", "e1", "ax", "st1"), OB_LIST("y"), NULL);
  int64_t xd[2] = {-1, 8}, yd[2] = {-1, 1};
  ob_valinfo(&g, 11, "x", 2, xd);
  ob_valinfo(&g, 12, "y", 2, yd);
  ob_model(&m, &g, 13);
  lt_err err = {0};
  lt_graph *gr = lt_onnx_load_buffer(m.data, m.len, NULL, &err);
  pb_buf_free(&g);
  pb_buf_free(&m);
  CHECK_MSG(gr != NULL, "%s", err.msg);
  if (!gr) return;
  lt_backend *be = lt_backend_get("cpu", &err);
  lt_exec *ex = be ? lt_exec_create(gr, 3, LT_MODE_INFER, be, NULL, &err) : NULL;
  CHECK_MSG(ex != NULL, "%s", err.msg);
  if (ex) {
    float *x = lt_tensor_f32(lt_exec_input(ex, 0));
    for (int i = 0; i < 24; i++) x[i] = (float)i;
    CHECK(lt_exec_forward(ex, &err) == LT_OK);
    const lt_tensor *y = lt_exec_output(ex, 0);
    CHECK(y->ndim == 2 && y->shape[0] == 3 && y->shape[1] == 1);
    for (int n = 0; n < 3; n++) CHECK_NEAR(lt_tensor_f32(y)[n], (float)(8 * n), 0);
    lt_exec_free(ex);
  }
  lt_graph_free(gr);
}

/* Regression (fuzz oom-be4697c1): folded ConstantOfShape/Concat results, each under the
 * per-tensor cap, added up to gigabytes; the total held by folded constants is capped too. */
TEST_CASE(onnx_folding_memory_is_bounded) {
  pb_buf g = {0}, m = {0};
  int64_t big[1] = {(int64_t)1 << 24}; /* 16 M floats = 64 MiB per constant */
  pb_buf t = {0}; /* shape tensor {2^25} as int64 raw data */
  pb_put_int(&t, 1, 1);
  pb_put_int(&t, 2, 7);
  pb_put_str(&t, 8, "shape");
  pb_put_bytes(&t, 9, big, 8);
  pb_put_msg(&g, 5, &t);
  pb_buf_free(&t);
  /* Five constants of 64 MiB each: every one is under the per-tensor cap, together not. */
  char out[5][8];
  for (int k = 0; k < 5; k++) {
    snprintf(out[k], sizeof out[k], "c%d", k);
    const char *outs[2] = {out[k], NULL};
    ob_node(&g, "ConstantOfShape", out[k], OB_LIST("shape"), outs, NULL);
  }
  ob_node(&g, "Relu", "r", OB_LIST("x"), OB_LIST("y"), NULL);
  int64_t xd[2] = {-1, 4};
  ob_valinfo(&g, 11, "x", 2, xd);
  ob_valinfo(&g, 12, "y", 2, xd);
  ob_model(&m, &g, 13);
  lt_err err = {0};
  lt_mem_stats before, after;
  lt_mem_get_stats(&before);
  lt_graph *gr = lt_onnx_load_buffer(m.data, m.len, NULL, &err);
  lt_mem_get_stats(&after);
  CHECK(gr == NULL);
  CHECK_STR_CONTAINS(err.msg, "constant folding would hold more than");
  CHECK(after.current[LT_MEM_WEIGHTS] == before.current[LT_MEM_WEIGHTS]); /* nothing leaked */
  lt_graph_free(gr);
  pb_buf_free(&g);
  pb_buf_free(&m);
}

static const char *data_dir;

TEST_CASE(onnx_shared_resnet20_files_import) {
  static const struct { const char *file; int onnx_nodes, nodes; int64_t params; } want[2] = {
      {"resnet20-cifar10.onnx", 102, 56, 269034},     /* BN folded into the convolutions */
      {"resnet20-cifar10-bn.onnx", 135, 75, 269722}}; /* + 19 BatchNorm (gamma, beta) */
  for (int i = 0; i < 2; i++) {
    char path[1024];
    snprintf(path, sizeof path, "%s/models/%s", data_dir, want[i].file);
    lt_err err = {0};
    lt_onnx_info info;
    CHECK_MSG(lt_onnx_probe(path, &info, &err) == LT_OK, "%s", err.msg);
    CHECK(info.opset == 13 && info.n_nodes == want[i].onnx_nodes);
    lt_graph *g = lt_onnx_load(path, NULL, &err);
    CHECK_MSG(g != NULL, "%s", err.msg);
    if (!g) continue;
    /* The shape subgraph of the downsampling shortcut folded away: only tensor ops remain. */
    CHECK(g->n_nodes == want[i].nodes);
    CHECK(lt_graph_params(g) == want[i].params);
    CHECK(lt_graph_macs(g) == 40551040); /* ~40.5 M MACs per 32x32 image */
    const lt_value *in = &g->values[g->inputs[0]], *out = &g->values[g->outputs[0]];
    CHECK(strcmp(in->name, "input") == 0 && in->ndim == 3 && in->shape[0] == 3 && in->shape[2] == 32);
    CHECK(strcmp(out->name, "logits") == 0 && out->ndim == 1 && out->shape[0] == 10);
    int pads = 0;
    for (int k = 0; k < g->n_nodes; k++) pads += g->nodes[k].op == LT_OP_PAD;
    CHECK(pads == 2);
    lt_graph_free(g);
  }
}

TEST_CASE(onnx_truncated_real_model_is_a_clear_error) {
  char path[1024];
  snprintf(path, sizeof path, "%s/models/resnet20-cifar10.onnx", data_dir);
  FILE *f = fopen(path, "rb");
  REQUIRE(f != NULL);
  static uint8_t buf[2 << 20];
  size_t n = fread(buf, 1, sizeof buf, f);
  fclose(f);
  int bad = 0;
  for (size_t cut = 1; cut < n; cut += n / 97 + 1) {
    lt_err err = {0};
    lt_graph *g = lt_onnx_load_buffer(buf, cut, NULL, &err);
    if (g || !strstr(err.msg, "truncated")) bad++;
    lt_graph_free(g);
  }
  CHECK_MSG(bad == 0, "%d truncations did not say 'truncated'", bad);
}

int main(int argc, char **argv) {
  data_dir = argc > 1 ? argv[1] : NULL;
  RUN(onnx_tiny_model_imports_with_unknown_fields_skipped);
  RUN(onnx_nodes_out_of_order_are_sorted);
  RUN(onnx_every_truncation_is_a_clear_error);
  RUN(onnx_wrong_magic_is_a_clear_error);
  RUN(onnx_malformed_graphs_are_clear_errors);
  RUN(onnx_empty_ints_attribute_is_handled);
  RUN(onnx_constant_add_without_second_input_is_a_clear_error);
  RUN(onnx_unsupported_op_names_op_node_and_opset);
  RUN(onnx_external_data_only_beside_the_model);
  RUN(onnx_export_reimport_keeps_graph);
  RUN(onnx_export_with_duplicate_node_names_reimports);
  RUN(onnx_matmul_and_constant_first_sub_compute_by_hand);
  RUN(onnx_slice_with_extreme_steps_keeps_one_element);
  RUN(onnx_folding_memory_is_bounded);
  if (data_dir && access(data_dir, R_OK) == 0) {
    RUN(onnx_shared_resnet20_files_import);
    RUN(onnx_truncated_real_model_is_a_clear_error);
  } else {
    printf("skip onnx_shared_resnet20_files_import: ../shared/data absent\n");
  }
  return test_summary();
}
