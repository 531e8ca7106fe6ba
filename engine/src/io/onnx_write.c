/* ONNX export: lt_graph → ModelProto (IR version 8, opset 13). Parameters and constants become
 * initializers under their value names; attributes that opset 13 takes as inputs (Slice
 * bounds, Pad amounts, Reshape shape, Clip limits, Resize scales, Dropout ratio) become small
 * initializers named after their node. Every graph input and output gets the symbolic batch
 * dimension "batch" in front of its per-sample shape. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cpu/kernels.h" /* lt_upsample_mode */
#include "io/onnx_model.h"
#include "io/pb.h"
#include "lathe/onnx.h"

/* Field numbers of onnx.proto used below. */
enum {
  MODEL_IR_VERSION = 1, MODEL_PRODUCER = 2, MODEL_PRODUCER_VERSION = 3, MODEL_GRAPH = 7, MODEL_OPSET = 8,
  GRAPH_NODE = 1, GRAPH_NAME = 2, GRAPH_INIT = 5, GRAPH_INPUT = 11, GRAPH_OUTPUT = 12,
  NODE_INPUT = 1, NODE_OUTPUT = 2, NODE_NAME = 3, NODE_OP = 4, NODE_ATTR = 5,
  ATTR_NAME = 1, ATTR_F = 2, ATTR_I = 3, ATTR_S = 4, ATTR_INTS = 8, ATTR_TYPE = 20,
  TENSOR_DIMS = 1, TENSOR_TYPE = 2, TENSOR_NAME = 8, TENSOR_RAW = 9
};

typedef struct wr {
  const lt_graph *g;
  pb_buf graph;   /* GraphProto being built */
  int n_extra;    /* initializers added for attribute inputs */
  lt_err *err;
} wr;

static int onnx_type(lt_dtype t) {
  switch (t) {
  case LT_F32: return OX_FLOAT;
  case LT_U8: return OX_UINT8;
  case LT_I32: return OX_INT32;
  case LT_I64: return OX_INT64;
  }
  return 0;
}

static void put_tensor(pb_buf *b, const char *name, lt_dtype dt, int ndim, const int64_t *shape,
                       const void *data) {
  pb_buf t = {0};
  for (int i = 0; i < ndim; i++) pb_put_int(&t, TENSOR_DIMS, shape[i]);
  pb_put_int(&t, TENSOR_TYPE, onnx_type(dt));
  pb_put_str(&t, TENSOR_NAME, name);
  pb_put_bytes(&t, TENSOR_RAW, data, (size_t)lt_shape_numel(ndim, shape) * lt_dtype_size(dt));
  pb_put_msg(b, GRAPH_INIT, &t);
  pb_buf_free(&t);
}

/* A fresh initializer for an attribute input; writes its name into name (cap 512+). */
static void extra_init(wr *w, const lt_node *n, const char *what, lt_dtype dt, int ndim,
                       const int64_t *shape, const void *data, char *name, size_t cap) {
  snprintf(name, cap, "%s.%s", n->name, what);
  /* Value names are unique in the graph, but one could collide with ours. */
  if (lt_graph_find_value(w->g, name) >= 0) snprintf(name, cap, "%s.%s.%d", n->name, what, w->n_extra);
  w->n_extra++;
  put_tensor(&w->graph, name, dt, ndim, shape, data);
}

static void put_valinfo(pb_buf *b, uint32_t field, const lt_value *v) {
  pb_buf vi = {0}, type = {0}, tt = {0}, shape = {0}, dim = {0};
  pb_put_str(&dim, 2, "batch"); /* Dimension.dim_param */
  pb_put_msg(&shape, 1, &dim);
  for (int i = 0; i < v->ndim; i++) {
    dim.len = 0;
    pb_put_int(&dim, 1, v->shape[i]); /* Dimension.dim_value */
    pb_put_msg(&shape, 1, &dim);
  }
  pb_put_int(&tt, 1, onnx_type(v->dtype)); /* TypeProto.Tensor.elem_type */
  pb_put_msg(&tt, 2, &shape);               /* .shape */
  pb_put_msg(&type, 1, &tt);                /* TypeProto.tensor_type */
  pb_put_str(&vi, 1, v->name);
  pb_put_msg(&vi, 2, &type);
  pb_put_msg(b, field, &vi);
  pb_buf_free(&vi);
  pb_buf_free(&type);
  pb_buf_free(&tt);
  pb_buf_free(&shape);
  pb_buf_free(&dim);
}

static void attr_int(pb_buf *node, const char *name, int64_t v) {
  pb_buf a = {0};
  pb_put_str(&a, ATTR_NAME, name);
  pb_put_int(&a, ATTR_I, v);
  pb_put_int(&a, ATTR_TYPE, OX_ATTR_INT);
  pb_put_msg(node, NODE_ATTR, &a);
  pb_buf_free(&a);
}
static void attr_float(pb_buf *node, const char *name, float v) {
  pb_buf a = {0};
  pb_put_str(&a, ATTR_NAME, name);
  pb_put_float(&a, ATTR_F, v);
  pb_put_int(&a, ATTR_TYPE, OX_ATTR_FLOAT);
  pb_put_msg(node, NODE_ATTR, &a);
  pb_buf_free(&a);
}
static void attr_str(pb_buf *node, const char *name, const char *v) {
  pb_buf a = {0};
  pb_put_str(&a, ATTR_NAME, name);
  pb_put_str(&a, ATTR_S, v);
  pb_put_int(&a, ATTR_TYPE, OX_ATTR_STRING);
  pb_put_msg(node, NODE_ATTR, &a);
  pb_buf_free(&a);
}
static void attr_ints(pb_buf *node, const char *name, const int64_t *v, int n) {
  pb_buf a = {0};
  pb_put_str(&a, ATTR_NAME, name);
  pb_put_packed_ints(&a, ATTR_INTS, v, (size_t)n);
  pb_put_int(&a, ATTR_TYPE, OX_ATTR_INTS);
  pb_put_msg(node, NODE_ATTR, &a);
  pb_buf_free(&a);
}
static void attr_pair(pb_buf *node, const char *name, const int *v) {
  int64_t x[2] = {v[0], v[1]};
  attr_ints(node, name, x, 2);
}

static void window_attrs(pb_buf *nb, const lt_node_attrs *a, int dilation) {
  int64_t pads[4] = {a->pads[0], a->pads[1], a->pads[2], a->pads[3]};
  attr_pair(nb, "kernel_shape", a->kernel);
  attr_pair(nb, "strides", a->stride);
  attr_ints(nb, "pads", pads, 4);
  if (dilation) attr_pair(nb, "dilations", a->dilation);
}

static lt_status write_node(wr *w, const lt_node *n) {
  const lt_graph *g = w->g;
  const lt_node_attrs *a = &n->a;
  const lt_value *x = &g->values[n->in[0]];
  const lt_value *y = &g->values[n->out[0]];
  int r = x->ndim; /* per-sample rank of the data input */
  pb_buf nb = {0};
  const char *op = NULL;
  const char *extra_in[4] = {0};
  char names[4][1200];
  int n_extra = 0, n_graph_in = n->n_in;
  switch (n->op) {
  case LT_OP_CONV2D:
  case LT_OP_CONV_TRANSPOSE2D:
    op = n->op == LT_OP_CONV2D ? "Conv" : "ConvTranspose";
    window_attrs(&nb, a, 1);
    attr_int(&nb, "group", a->groups);
    if (n->op == LT_OP_CONV_TRANSPOSE2D) attr_pair(&nb, "output_padding", a->out_pad);
    break;
  case LT_OP_BATCHNORM:
    op = "BatchNormalization";
    attr_float(&nb, "epsilon", a->eps);
    attr_float(&nb, "momentum", 1.0f - a->momentum); /* ONNX weighs the running value */
    break;
  case LT_OP_RELU: op = "Relu"; break;
  case LT_OP_SIGMOID: op = "Sigmoid"; break;
  case LT_OP_TANH: op = "Tanh"; break;
  case LT_OP_SOFTMAX: op = "Softmax"; attr_int(&nb, "axis", -1); break;
  case LT_OP_IDENTITY: op = "Identity"; break;
  case LT_OP_GLOBAL_AVGPOOL: op = "GlobalAveragePool"; break;
  case LT_OP_FLATTEN: op = "Flatten"; attr_int(&nb, "axis", 1); break;
  case LT_OP_ADD: op = "Add"; break;
  case LT_OP_SUB: op = "Sub"; break;
  case LT_OP_MUL: op = "Mul"; break;
  case LT_OP_DIV: op = "Div"; break;
  case LT_OP_LEAKY_RELU: op = "LeakyRelu"; attr_float(&nb, "alpha", a->alpha); break;
  case LT_OP_CLIP: {
    op = "Clip";
    extra_init(w, n, "min", LT_F32, 0, NULL, &a->lo, names[0], sizeof names[0]);
    extra_init(w, n, "max", LT_F32, 0, NULL, &a->hi, names[1], sizeof names[1]);
    extra_in[n_extra++] = names[0];
    extra_in[n_extra++] = names[1];
    break;
  }
  case LT_OP_MAXPOOL:
  case LT_OP_AVGPOOL:
    op = n->op == LT_OP_MAXPOOL ? "MaxPool" : "AveragePool";
    window_attrs(&nb, a, n->op == LT_OP_MAXPOOL);
    attr_int(&nb, "ceil_mode", a->ceil_mode);
    if (n->op == LT_OP_AVGPOOL) attr_int(&nb, "count_include_pad", a->count_include_pad);
    break;
  case LT_OP_CONCAT: op = "Concat"; attr_int(&nb, "axis", a->axis + 1); break;
  case LT_OP_TRANSPOSE: {
    op = "Transpose";
    int64_t perm[LT_MAX_DIMS + 1] = {0};
    for (int i = 0; i < a->n_ints; i++) perm[i + 1] = a->ints[i] + 1;
    attr_ints(&nb, "perm", perm, a->n_ints + 1);
    break;
  }
  case LT_OP_RESHAPE: {
    op = "Reshape";
    int64_t shape[LT_MAX_DIMS + 1], len = y->ndim + 1;
    shape[0] = -1; /* the batch: every other dim is concrete */
    memcpy(shape + 1, y->shape, sizeof(int64_t) * (size_t)y->ndim);
    extra_init(w, n, "shape", LT_I64, 1, &len, shape, names[0], sizeof names[0]);
    extra_in[n_extra++] = names[0];
    break;
  }
  case LT_OP_SLICE: {
    op = "Slice";
    int64_t v[4][LT_MAX_DIMS], len = r;
    const char *what[4] = {"starts", "ends", "axes", "steps"};
    for (int i = 0; i < r; i++) {
      v[0][i] = a->ints[i];
      v[1][i] = a->ints[r + i];
      v[2][i] = i + 1;
      v[3][i] = a->ints[2 * r + i];
    }
    for (int k = 0; k < 4; k++) {
      extra_init(w, n, what[k], LT_I64, 1, &len, v[k], names[k], sizeof names[k]);
      extra_in[n_extra++] = names[k];
    }
    break;
  }
  case LT_OP_PAD: {
    op = "Pad";
    int64_t pads[2 * (LT_MAX_DIMS + 1)] = {0}, len = 2 * (r + 1);
    for (int i = 0; i < r; i++) {
      pads[1 + i] = a->ints[i];
      pads[r + 2 + i] = a->ints[r + i];
    }
    extra_init(w, n, "pads", LT_I64, 1, &len, pads, names[0], sizeof names[0]);
    extra_init(w, n, "value", LT_F32, 0, NULL, &a->value, names[1], sizeof names[1]);
    extra_in[n_extra++] = names[0];
    extra_in[n_extra++] = names[1];
    attr_str(&nb, "mode", "constant");
    break;
  }
  case LT_OP_LINEAR:
    if (r != 1)
      return lt_errorf(w->err, LT_ERR_UNSUPPORTED, "node '%s': exporting a linear layer over a "
                       "per-sample rank-%d input is not supported (Gemm takes (N, K))", n->name, r);
    op = "Gemm";
    attr_int(&nb, "transB", 1);
    break;
  case LT_OP_UPSAMPLE: {
    op = "Resize";
    float scales[4] = {1, 1, (float)a->out_h / (float)x->shape[1], (float)a->out_w / (float)x->shape[2]};
    int64_t len = 4;
    extra_init(w, n, "scales", LT_F32, 1, &len, scales, names[1], sizeof names[1]);
    names[0][0] = '\0'; /* roi: omitted */
    extra_in[n_extra++] = names[0];
    extra_in[n_extra++] = names[1];
    if (a->mode == LT_UPSAMPLE_NEAREST) {
      attr_str(&nb, "mode", "nearest");
      attr_str(&nb, "coordinate_transformation_mode", "asymmetric");
      attr_str(&nb, "nearest_mode", "floor");
    } else {
      attr_str(&nb, "mode", "linear");
      attr_str(&nb, "coordinate_transformation_mode", a->align_corners ? "align_corners" : "pytorch_half_pixel");
    }
    break;
  }
  case LT_OP_DROPOUT: {
    op = "Dropout";
    extra_init(w, n, "ratio", LT_F32, 0, NULL, &a->p, names[0], sizeof names[0]);
    extra_in[n_extra++] = names[0];
    break;
  }
  default:
    pb_buf_free(&nb);
    return lt_errorf(w->err, LT_ERR_UNSUPPORTED, "node '%s': op %s has no ONNX export", n->name,
                     lt_op_name(n->op));
  }
  for (int i = 0; i < n_graph_in; i++) pb_put_str(&nb, NODE_INPUT, g->values[n->in[i]].name);
  for (int i = 0; i < n_extra; i++) pb_put_str(&nb, NODE_INPUT, extra_in[i]);
  for (int i = 0; i < n->n_out; i++) pb_put_str(&nb, NODE_OUTPUT, g->values[n->out[i]].name);
  pb_put_str(&nb, NODE_NAME, n->name);
  pb_put_str(&nb, NODE_OP, op);
  pb_put_msg(&w->graph, GRAPH_NODE, &nb);
  pb_buf_free(&nb);
  return LT_OK;
}

lt_status lt_onnx_save_buffer(const lt_graph *g, uint8_t **out, size_t *len, lt_err *err) {
  wr w = {0};
  w.g = g;
  w.err = err;
  lt_status st = LT_OK;
  pb_put_str(&w.graph, GRAPH_NAME, "lathe");
  for (int i = 0; i < g->n_nodes && !st; i++) st = write_node(&w, &g->nodes[i]);
  /* Initializers: every parameter and constant a node reads, once. */
  char *used = calloc((size_t)g->n_values + 1, 1);
  if (!used && !st) st = lt_errorf(err, LT_ERR_NOMEM, "out of memory");
  for (int i = 0; i < g->n_nodes && !st; i++)
    for (int k = 0; k < g->nodes[i].n_in; k++) used[g->nodes[i].in[k]] = 1;
  for (int v = 0; v < g->n_values && !st; v++) {
    const lt_value *val = &g->values[v];
    if (!used[v] || (val->kind != LT_VALUE_PARAM && val->kind != LT_VALUE_CONST)) continue;
    if (!val->data || val->data->device >= 0) {
      st = lt_errorf(err, LT_ERR_INVALID, "parameter '%s' has no host data; sync parameters to the "
                     "host (lt_exec_sync_params) before exporting", val->name);
      break;
    }
    put_tensor(&w.graph, val->name, val->data->dtype, val->data->ndim, val->data->shape, val->data->data);
  }
  free(used);
  for (int i = 0; i < g->n_inputs && !st; i++) put_valinfo(&w.graph, GRAPH_INPUT, &g->values[g->inputs[i]]);
  for (int i = 0; i < g->n_outputs && !st; i++) put_valinfo(&w.graph, GRAPH_OUTPUT, &g->values[g->outputs[i]]);
  pb_buf model = {0}, opset = {0};
  if (!st) {
    pb_put_int(&model, MODEL_IR_VERSION, 8);
    pb_put_str(&model, MODEL_PRODUCER, "lathe");
    pb_put_str(&model, MODEL_PRODUCER_VERSION, lt_version());
    pb_put_msg(&model, MODEL_GRAPH, &w.graph);
    pb_put_str(&opset, 1, "");
    pb_put_int(&opset, 2, 13);
    pb_put_msg(&model, MODEL_OPSET, &opset);
    if (model.oom) st = lt_errorf(err, LT_ERR_NOMEM, "out of memory serialising the model");
  }
  pb_buf_free(&w.graph);
  pb_buf_free(&opset);
  if (st) {
    pb_buf_free(&model);
    return st;
  }
  *out = model.data;
  *len = model.len;
  return LT_OK;
}

lt_status lt_onnx_save(const lt_graph *g, const char *path, lt_err *err) {
  uint8_t *buf = NULL;
  size_t len = 0;
  lt_status st = lt_onnx_save_buffer(g, &buf, &len, err);
  if (st) return st;
  /* Written beside the target and renamed, so a reader never sees half a model. */
  char tmp[4096];
  if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) {
    free(buf);
    return lt_errorf(err, LT_ERR_INVALID, "output path is too long");
  }
  FILE *f = fopen(tmp, "wb");
  if (!f) {
    free(buf);
    return lt_errorf(err, LT_ERR_IO, "cannot write '%s': %s", tmp, strerror(errno));
  }
  int ok = fwrite(buf, 1, len, f) == len;
  ok &= fclose(f) == 0;
  free(buf);
  if (!ok || rename(tmp, path) != 0) {
    remove(tmp);
    return lt_errorf(err, LT_ERR_IO, "writing '%s' failed: %s", path, strerror(errno));
  }
  return LT_OK;
}
