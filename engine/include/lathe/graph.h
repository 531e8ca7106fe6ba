/* lathe/graph.h — the model as a graph of nodes over values, with shape inference, FLOPs and
 * parameter counts.
 *
 * Usage (a conv → relu → global pool → linear classifier):
 *   lt_graph *g = lt_graph_new();
 *   int x = lt_graph_add_input(g, "input", LT_F32, 3, (int64_t[]){3, 32, 32}); // per-sample shape
 *   int w = lt_graph_add_param(g, "conv1.weight", w_tensor, 1);  // graph takes ownership
 *   lt_node_attrs a = lt_attrs_conv(3, 3, 1, 1, 1);               // kernel, stride, pad
 *   int y = lt_graph_add_node(g, LT_OP_CONV2D, "conv1", (int[]){x, w}, 2, &a, &err);
 *   ... lt_graph_set_output(g, logits);
 *   lt_graph_infer_shapes(g, &err);
 *   lt_graph_free(g);
 *
 * Shapes of inputs and activations are stored per sample (without the batch dimension); the
 * executor (lathe/exec.h) plans buffers for a concrete batch. Parameters and constants have
 * their full shapes. A value id is an index into g->values; a node id an index into g->nodes;
 * nodes are kept in topological order (lt_graph_toposort restores it after rewrites).
 *
 * Not for: running the graph (lathe/exec.h) or reading ONNX (lathe/onnx.h).
 */
#ifndef LATHE_GRAPH_H
#define LATHE_GRAPH_H

#include "lathe/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum lt_op_type {
  LT_OP_CONV2D = 0,         /* in: x, w[, b]             attrs: kernel, stride, pads, dilation, groups */
  LT_OP_CONV_TRANSPOSE2D,   /* in: x, w[, b]             attrs: as conv + out_pad */
  LT_OP_BATCHNORM,          /* in: x, gamma, beta, running_mean, running_var   attrs: eps, momentum */
  LT_OP_RELU,
  LT_OP_LEAKY_RELU,         /* attrs: alpha */
  LT_OP_SIGMOID,
  LT_OP_TANH,
  LT_OP_CLIP,               /* attrs: lo, hi */
  LT_OP_MAXPOOL,            /* attrs: kernel, stride, pads, dilation, ceil_mode */
  LT_OP_AVGPOOL,            /* attrs: kernel, stride, pads, ceil_mode, count_include_pad */
  LT_OP_GLOBAL_AVGPOOL,     /* (C, H, W) -> (C, 1, 1) */
  LT_OP_ADD,                /* NumPy broadcasting over the per-sample shapes */
  LT_OP_SUB,
  LT_OP_MUL,
  LT_OP_DIV,
  LT_OP_CONCAT,             /* attrs: axis (per-sample axis, 0 = channels) */
  LT_OP_SLICE,              /* attrs: starts/ends/steps per per-sample axis in ints[] */
  LT_OP_PAD,                /* attrs: pads (2*ndim, ONNX order, per-sample axes), value */
  LT_OP_RESHAPE,            /* attrs: shape (per-sample, -1 infers one dim) */
  LT_OP_FLATTEN,            /* per sample to one dim */
  LT_OP_TRANSPOSE,          /* attrs: perm over per-sample axes */
  LT_OP_LINEAR,             /* in: x (K), w (M, K)[, b (M)] -> (M) */
  LT_OP_UPSAMPLE,           /* attrs: mode, align_corners, out_h, out_w */
  LT_OP_DROPOUT,            /* attrs: p; identity in inference mode */
  LT_OP_SOFTMAX,            /* over the last axis */
  LT_OP_IDENTITY,
  LT_OP_COUNT
} lt_op_type;

const char *lt_op_name(lt_op_type op); /* "Conv2d", "BatchNorm2d", ... */

#define LT_MAX_IO 8
#define LT_MAX_ATTR_INTS 32

/* One flat attribute record serves every op (each op reads the fields its comment above names). */
typedef struct lt_node_attrs {
  int kernel[2];   /* kh, kw */
  int stride[2];
  int pads[4];     /* top, left, bottom, right */
  int dilation[2];
  int groups;
  int out_pad[2];
  int ceil_mode;
  int count_include_pad;
  int axis;
  int align_corners;
  int mode;        /* LT_UPSAMPLE_* for upsample */
  int out_h, out_w;
  float alpha, eps, momentum, lo, hi, p, value;
  int n_ints;
  int64_t ints[LT_MAX_ATTR_INTS]; /* slice: starts, ends, steps (3*ndim); pad: 2*ndim; reshape
                                     shape; transpose perm */
} lt_node_attrs;

lt_node_attrs lt_attrs_default(void); /* stride 1, dilation 1, groups 1, eps 1e-5, momentum 0.1 */
lt_node_attrs lt_attrs_conv(int k, int stride, int pad, int dilation, int groups);
lt_node_attrs lt_attrs_pool(int k, int stride, int pad);

typedef enum lt_value_kind {
  LT_VALUE_INPUT = 0, /* fed each step, per-sample shape */
  LT_VALUE_PARAM,     /* weights (trainable or not): full shape, data owned by the graph */
  LT_VALUE_CONST,     /* constants (BN running stats are PARAM with trainable = 0) */
  LT_VALUE_ACT        /* produced by a node, per-sample shape */
} lt_value_kind;

typedef struct lt_value {
  char *name;           /* owned; unique within the graph */
  lt_value_kind kind;
  lt_dtype dtype;
  int ndim;             /* per-sample rank for INPUT/ACT, full rank for PARAM/CONST */
  int64_t shape[LT_MAX_DIMS];
  lt_tensor *data;      /* PARAM/CONST: owned, host memory; NULL otherwise */
  int trainable;        /* PARAM: receives a gradient and an optimizer update */
  int producer;         /* node id for ACT, -1 otherwise */
} lt_value;

typedef struct lt_node {
  char *name; /* owned */
  lt_op_type op;
  int n_in, in[LT_MAX_IO];   /* value ids */
  int n_out, out[LT_MAX_IO]; /* value ids */
  lt_node_attrs a;
} lt_node;

typedef struct lt_graph {
  lt_value *values; /* (n_values) owned */
  int n_values, cap_values;
  lt_node *nodes;   /* (n_nodes) owned, topological order */
  int n_nodes, cap_nodes;
  int n_inputs, inputs[LT_MAX_IO];
  int n_outputs, outputs[LT_MAX_IO];
  /* Name index for lt_graph_find_value (graph.c keeps it): open addressing over value ids + 1,
   * 0 = empty; name_cap == 0 means no index (lookups scan). */
  int *name_slots;
  int name_cap, name_used;
} lt_graph;

lt_graph *lt_graph_new(void);
void lt_graph_free(lt_graph *g);
lt_graph *lt_graph_clone(const lt_graph *g, lt_err *err); /* deep copy, parameters included */

int lt_graph_add_input(lt_graph *g, const char *name, lt_dtype dtype, int ndim,
                       const int64_t *shape);
/* Takes ownership of t (also on failure). Returns the value id, or -1. */
int lt_graph_add_param(lt_graph *g, const char *name, lt_tensor *t, int trainable);
int lt_graph_add_const(lt_graph *g, const char *name, lt_tensor *t);
/* Adds a node with one output (named after the node) and infers its shape. Returns the output
 * value id, or -1 with err filled (bad arity, incompatible shapes, impossible geometry). */
int lt_graph_add_node(lt_graph *g, lt_op_type op, const char *name, const int *inputs, int n_in,
                      const lt_node_attrs *a, lt_err *err);
void lt_graph_set_output(lt_graph *g, int value_id);
int lt_graph_find_value(const lt_graph *g, const char *name); /* -1 when absent */

/* Re-runs shape inference over the whole graph in node order. */
lt_status lt_graph_infer_shapes(lt_graph *g, lt_err *err);
/* Restores topological order after rewrites; fails on a cycle or a dangling value. */
lt_status lt_graph_toposort(lt_graph *g, lt_err *err);
/* Removes nodes and values that no output depends on. */
void lt_graph_prune(lt_graph *g);

/* Multiply-accumulates per sample of one node, and of the whole graph. */
int64_t lt_node_macs(const lt_graph *g, const lt_node *n);
int64_t lt_graph_macs(const lt_graph *g);
/* Parameter elements (trainable and not) of one node / the whole graph. */
int64_t lt_node_params(const lt_graph *g, const lt_node *n);
int64_t lt_graph_params(const lt_graph *g);

#ifdef __cplusplus
}
#endif
#endif
