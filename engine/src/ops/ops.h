/* The op table: one descriptor per lt_op_type saying how the op checks its inputs, infers its
 * per-sample output shape, counts MACs and parameters, what backward needs from forward (and in
 * which lt_save_kind), which op-private buffers (aux) it writes, and how the CPU backend runs it.
 *
 * Everything except the *_cpu slots is backend-independent: the graph (shape inference, MACs,
 * params) and the executor (planning the stash and aux buffers) read it, and a CUDA backend
 * reuses it with its own kernels. Internal to liblathe.
 */
#ifndef LATHE_OPS_H
#define LATHE_OPS_H

#include "lathe/backend.h"
#include "lathe/graph.h"
#include "backend/cpu/kernels.h"

/* Where a saved tensor comes from: a forward input slot, a forward output slot, or an aux slot. */
typedef enum lt_save_src { LT_SAVE_SRC_IN = 0, LT_SAVE_SRC_OUT, LT_SAVE_SRC_AUX } lt_save_src;

typedef struct lt_op_save {
  lt_save_src src;
  int idx;           /* slot within src */
  lt_save_kind kind; /* what a stash policy may do with it */
} lt_op_save;

/* An op-private buffer written in forward (BN batch statistics, pool argmax, dropout mask).
 * Shapes are full (batch included where it applies). */
typedef struct lt_op_aux {
  lt_dtype dtype;
  int ndim;
  int64_t shape[LT_MAX_DIMS];
} lt_op_aux;

/* The node context the executor hands to fwd/bwd: in forward, in/out/aux hold data. In backward,
 * in/out carry shapes, but only parameter inputs still hold data: activations an op needs in
 * backward must be declared in saves() and read from ctx->saved. Aux buffers hold their forward
 * contents in backward unless a save of them went through a stash policy (then read saved[]). */
typedef struct lt_op_desc {
  const char *name; /* "Conv2d", ... */
  int min_in, max_in;
  /* Per-sample output shape and dtype from the node's inputs; n's output value is `out`. */
  lt_status (*infer)(const lt_graph *g, const lt_node *n, lt_value *out, lt_err *err);
  int64_t (*macs)(const lt_graph *g, const lt_node *n); /* NULL: no multiply-accumulates */
  unsigned param_slots; /* bit i: input slot i counts as a parameter (BN: gamma, beta only) */
  /* Training mode: what backward reads from forward, in ctx->saved order. NULL: nothing. */
  int (*saves)(const lt_graph *g, const lt_node *n, lt_op_save *out);
  /* Op-private buffers for a forward in this mode at this batch. NULL: none. */
  int (*aux)(const lt_graph *g, const lt_node *n, lt_mode mode, int batch, lt_op_aux *out);
  int weight_grad; /* backward forms din[1] (and din[2]) from saved[0]: stash observe() applies */
  /* CPU backend. */
  size_t (*ws_cpu)(const lt_graph *g, const lt_node *n, int batch); /* NULL: no scratch */
  lt_status (*fwd_cpu)(lt_node_ctx *ctx, lt_err *err);
  lt_status (*bwd_cpu)(lt_node_ctx *ctx, lt_err *err); /* NULL: not differentiable */
} lt_op_desc;

/* NULL for an out-of-range type. */
const lt_op_desc *lt_op_get(lt_op_type op);

/* ---- helpers shared by the op files ------------------------------------------------------ */

/* The value behind input slot i of n. */
static inline const lt_value *lt_op_in(const lt_graph *g, const lt_node *n, int i) {
  return &g->values[n->in[i]];
}
/* 1 when the value carries a batch dimension at run time (inputs and activations). */
static inline int lt_value_batched(const lt_value *v) {
  return v->kind == LT_VALUE_INPUT || v->kind == LT_VALUE_ACT;
}
/* Copies ndim/shape/dtype of a value into out. */
void lt_op_out_like(lt_value *out, const lt_value *in);
/* Fails unless input slot i is float32 with the given per-sample (or full, for params) rank;
 * rank < 0 accepts any rank. */
lt_status lt_op_check_f32(const lt_graph *g, const lt_node *n, int i, int rank, const char *what,
                          lt_err *err);
/* Errors about a node start with this prefix: "node 'layer1.0.conv1' (Conv2d): ". */
lt_status lt_op_fail(lt_err *err, lt_status st, const lt_node *n, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Convolution and pooling geometry of a node at a batch size, from its attributes, its
 * per-sample input shape and (conv) its weight shape. The kernels' *_geom_finish decides what is
 * possible, so shape inference and the kernels agree by construction. */
lt_status lt_op_conv_geom(const lt_graph *g, const lt_node *n, int batch, int transpose,
                          lt_conv_geom *geom, lt_err *err);
lt_status lt_op_pool_geom(const lt_graph *g, const lt_node *n, int batch, lt_pool_geom *geom,
                          lt_err *err);

/* Pads a per-sample shape to `ndim` full dims: leading 1s, then batch in front when batched. */
void lt_op_full_shape(const lt_value *v, int batch, int ndim, int64_t *shape);

/* Resolves one slice axis (ONNX clamping; negative indices count from the end). */
void lt_op_slice_axis(int64_t dim, int64_t start, int64_t end, int64_t step, int64_t *first,
                      int64_t *len);

/* The number of elements a slice takes from start (included) towards end (excluded) in steps
 * of step (non-zero); start and end already clamped to [-1, dim]. Any step, INT64_MIN too. */
int64_t lt_op_slice_len(int64_t start, int64_t end, int64_t step);

/* A strided window of a tensor with constant fill, as lt_cpu_window_fwd runs it: Slice and Pad
 * are each one, and so is a chain of Slices that may end in one Pad, composed node by node from
 * the chain's input (the inference executor runs such a chain as one copy, exec.c plan_window).
 * Full shapes, batch first. */
typedef struct lt_op_window {
  int ndim;
  int64_t xshape[LT_MAX_DIMS], yshape[LT_MAX_DIMS];
  int64_t start[LT_MAX_DIMS], step[LT_MAX_DIMS], lo[LT_MAX_DIMS], hi[LT_MAX_DIMS];
  float value;
  int padded; /* some of y is fill: no Slice or Pad composes after it */
} lt_op_window;
/* The window that reads all of x (full shape) unchanged. */
void lt_op_window_init(lt_op_window *w, int ndim, const int64_t *xshape);
/* w followed by node n (a Slice or a Pad whose input has w's output shape). Fails for any other
 * op and after a Pad. */
lt_status lt_op_window_then(lt_op_window *w, const lt_graph *g, const lt_node *n, lt_err *err);
/* y = the window of x, elem bytes per element (a padded window takes float32). */
void lt_op_window_cpu(const lt_op_window *w, size_t elem, const void *x, void *y);

/* Gradient of an identity-like op on the CPU: dx = dy, or dx += dy when accumulating. */
void lt_op_cpu_pass_grad(size_t count, const float *dy, float *dx, int accumulate);

/* Descriptors, one per op family file. */
extern const lt_op_desc lt_op_conv2d, lt_op_conv_transpose2d, lt_op_linear;
extern const lt_op_desc lt_op_batchnorm;
extern const lt_op_desc lt_op_relu, lt_op_leaky_relu, lt_op_sigmoid, lt_op_tanh, lt_op_clip;
extern const lt_op_desc lt_op_maxpool, lt_op_avgpool, lt_op_global_avgpool;
extern const lt_op_desc lt_op_add, lt_op_sub, lt_op_mul, lt_op_div;
extern const lt_op_desc lt_op_concat, lt_op_slice, lt_op_pad, lt_op_reshape, lt_op_flatten,
    lt_op_transpose, lt_op_identity;
extern const lt_op_desc lt_op_upsample, lt_op_dropout, lt_op_softmax;

#endif
