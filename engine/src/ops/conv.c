/* Conv2d, ConvTranspose2d and Linear: the ops with weights and multiply-accumulates. Backward
 * reads only the saved input (for dW) and the weights (for dX), so the input is saved as
 * LT_SAVE_WEIGHT_INPUT: an error in it stays in this layer's weight gradient. */
#include <string.h>

#include "ops/ops.h"

/* Weight-like inputs come from the graph, never from the batch. */
static lt_status conv_check_weights(const lt_graph *g, const lt_node *n, lt_err *err) {
  for (int i = 1; i < n->n_in; i++)
    if (lt_value_batched(lt_op_in(g, n, i)))
      return lt_op_fail(err, LT_ERR_UNSUPPORTED, n,
                        "input %d '%s' is an activation; weights and bias must be parameters or "
                        "constants",
                        i, lt_op_in(g, n, i)->name);
  return LT_OK;
}

static lt_status conv_check_bias(const lt_graph *g, const lt_node *n, int64_t s, lt_err *err) {
  if (n->n_in < 3) return LT_OK;
  lt_status st = lt_op_check_f32(g, n, 2, 1, "bias", err);
  if (st) return st;
  if (lt_op_in(g, n, 2)->shape[0] != s)
    return lt_op_fail(err, LT_ERR_INVALID, n, "bias has %lld elements, expected %lld (one per "
                      "output channel)",
                      (long long)lt_op_in(g, n, 2)->shape[0], (long long)s);
  return LT_OK;
}

static lt_status conv_infer_any(const lt_graph *g, const lt_node *n, lt_value *out, int transpose,
                                lt_err *err) {
  lt_status st;
  if ((st = lt_op_check_f32(g, n, 0, 3, "input", err))) return st;
  if ((st = lt_op_check_f32(g, n, 1, 4, "weight", err))) return st;
  if ((st = conv_check_weights(g, n, err))) return st;
  lt_conv_geom geom;
  if ((st = lt_op_conv_geom(g, n, 1, transpose, &geom, err))) return st;
  if ((st = conv_check_bias(g, n, geom.s, err))) return st;
  out->dtype = LT_F32;
  out->ndim = 3;
  out->shape[0] = geom.s, out->shape[1] = geom.oh, out->shape[2] = geom.ow;
  return LT_OK;
}

static lt_status conv_infer(const lt_graph *g, const lt_node *n, lt_value *out, lt_err *err) {
  return conv_infer_any(g, n, out, 0, err);
}
static lt_status convt_infer(const lt_graph *g, const lt_node *n, lt_value *out, lt_err *err) {
  return conv_infer_any(g, n, out, 1, err);
}

/* Every output element is a dot product over (C/groups)·kh·kw inputs. */
static int64_t conv_macs(const lt_graph *g, const lt_node *n) {
  const lt_value *y = &g->values[n->out[0]], *w = lt_op_in(g, n, 1);
  return lt_shape_numel(y->ndim, y->shape) * w->shape[1] * w->shape[2] * w->shape[3];
}
/* Every input element is scattered into (S/groups)·kh·kw outputs. */
static int64_t convt_macs(const lt_graph *g, const lt_node *n) {
  const lt_value *x = lt_op_in(g, n, 0), *w = lt_op_in(g, n, 1);
  return lt_shape_numel(x->ndim, x->shape) * w->shape[1] * w->shape[2] * w->shape[3];
}

static int weight_input_saves(const lt_graph *g, const lt_node *n, lt_op_save *out) {
  out[0] = (lt_op_save){LT_SAVE_SRC_IN, 0, LT_SAVE_WEIGHT_INPUT};
  return 1;
}

static size_t conv_ws(const lt_graph *g, const lt_node *n, int batch) {
  lt_conv_geom geom;
  if (lt_op_conv_geom(g, n, batch, 0, &geom, NULL)) return 0;
  return lt_cpu_conv2d_workspace(&geom);
}
static size_t convt_ws(const lt_graph *g, const lt_node *n, int batch) {
  lt_conv_geom geom;
  if (lt_op_conv_geom(g, n, batch, 1, &geom, NULL)) return 0;
  return lt_cpu_conv_transpose2d_workspace(&geom);
}

/* The bias: the node's third input, or one the executor supplies (a folded BatchNorm's shift on
 * a convolution without bias). */
static const float *ctx_bias(const lt_node_ctx *ctx) {
  const lt_node *n = &ctx->g->nodes[ctx->node];
  return n->n_in > 2 || ctx->in[2] ? lt_tensor_f32(ctx->in[2]) : NULL;
}

static lt_status conv_fwd(lt_node_ctx *ctx, lt_err *err) {
  lt_conv_geom geom;
  lt_status st = lt_op_conv_geom(ctx->g, &ctx->g->nodes[ctx->node], ctx->batch, 0, &geom, err);
  if (st) return st;
  /* inference: no gradient follows, so the forward may take the faster, less exact Winograd */
  (ctx->mode == LT_MODE_INFER ? lt_cpu_conv2d_fwd_infer : lt_cpu_conv2d_fwd)(
      &geom, lt_tensor_f32(ctx->in[0]), lt_tensor_f32(ctx->in[1]), ctx_bias(ctx),
      lt_tensor_f32(ctx->out[0]), ctx->ws);
  return LT_OK;
}
lt_status lt_op_conv_fwd_infer_epi(lt_node_ctx *ctx, const lt_tensor *res, int relu,
                                   lt_err *err) {
  const lt_node *n = &ctx->g->nodes[ctx->node];
  if (ctx->mode != LT_MODE_INFER || n->op != LT_OP_CONV2D)
    return lt_op_fail(err, LT_ERR_INTERNAL, n, "a fused convolution epilogue runs on inference "
                      "Conv2d only");
  lt_conv_geom geom;
  lt_status st = lt_op_conv_geom(ctx->g, n, ctx->batch, 0, &geom, err);
  if (st) return st;
  if (res && lt_tensor_numel(res) != lt_tensor_numel(ctx->out[0]))
    return lt_op_fail(err, LT_ERR_INTERNAL, n, "the fused residual has %lld elements, the output "
                      "%lld", (long long)lt_tensor_numel(res),
                      (long long)lt_tensor_numel(ctx->out[0]));
  const lt_conv_epi epi = {.res = res ? lt_tensor_f32(res) : NULL, .relu = relu};
  lt_cpu_conv2d_fwd_infer_epi(&geom, lt_tensor_f32(ctx->in[0]), lt_tensor_f32(ctx->in[1]),
                              ctx_bias(ctx), &epi, lt_tensor_f32(ctx->out[0]), ctx->ws);
  return LT_OK;
}
static lt_status convt_fwd(lt_node_ctx *ctx, lt_err *err) {
  lt_conv_geom geom;
  lt_status st = lt_op_conv_geom(ctx->g, &ctx->g->nodes[ctx->node], ctx->batch, 1, &geom, err);
  if (st) return st;
  lt_cpu_conv_transpose2d_fwd(&geom, lt_tensor_f32(ctx->in[0]), lt_tensor_f32(ctx->in[1]),
                              ctx_bias(ctx), lt_tensor_f32(ctx->out[0]), ctx->ws);
  return LT_OK;
}

/* dW and db share one accumulate flag in the kernels; the executor hands both the same one. */
static int ctx_param_accumulate(const lt_node_ctx *ctx) {
  return ctx->din[1] ? ctx->accumulate_in[1] : ctx->accumulate_in[2];
}

static float *grad_ptr(const lt_node_ctx *ctx, int i) {
  const lt_node *n = &ctx->g->nodes[ctx->node];
  return i < n->n_in && ctx->din[i] ? lt_tensor_f32(ctx->din[i]) : NULL;
}

static lt_status conv_bwd_any(lt_node_ctx *ctx, int transpose, lt_err *err) {
  lt_conv_geom geom;
  lt_status st =
      lt_op_conv_geom(ctx->g, &ctx->g->nodes[ctx->node], ctx->batch, transpose, &geom, err);
  if (st) return st;
  const float *dy = lt_tensor_f32(ctx->dout[0]), *w = lt_tensor_f32(ctx->in[1]);
  float *dx = grad_ptr(ctx, 0), *dw = grad_ptr(ctx, 1), *db = grad_ptr(ctx, 2);
  if (dx) {
    if (transpose)
      lt_cpu_conv_transpose2d_bwd_data(&geom, dy, w, dx, ctx->accumulate_in[0], ctx->ws);
    else
      lt_cpu_conv2d_bwd_data(&geom, dy, w, dx, ctx->accumulate_in[0], ctx->ws);
  }
  if (dw || db) {
    const float *x = lt_tensor_f32(ctx->saved[0]);
    if (transpose)
      lt_cpu_conv_transpose2d_bwd_filter(&geom, x, dy, dw, db, ctx_param_accumulate(ctx), ctx->ws);
    else
      lt_cpu_conv2d_bwd_filter(&geom, x, dy, dw, db, ctx_param_accumulate(ctx), ctx->ws);
  }
  return LT_OK;
}
static lt_status conv_bwd(lt_node_ctx *ctx, lt_err *err) { return conv_bwd_any(ctx, 0, err); }
static lt_status convt_bwd(lt_node_ctx *ctx, lt_err *err) { return conv_bwd_any(ctx, 1, err); }

const lt_op_desc lt_op_conv2d = {
    .name = "Conv2d", .min_in = 2, .max_in = 3, .infer = conv_infer, .macs = conv_macs,
    .param_slots = 0x6, .saves = weight_input_saves, .weight_grad = 1, .ws_cpu = conv_ws,
    .fwd_cpu = conv_fwd, .bwd_cpu = conv_bwd};

const lt_op_desc lt_op_conv_transpose2d = {
    .name = "ConvTranspose2d", .min_in = 2, .max_in = 3, .infer = convt_infer,
    .macs = convt_macs, .param_slots = 0x6, .saves = weight_input_saves, .weight_grad = 1,
    .ws_cpu = convt_ws, .fwd_cpu = convt_fwd, .bwd_cpu = convt_bwd};

/* ---- linear: x (..., K), w (M, K), b (M) -> (..., M) --------------------------------------- */

static lt_status linear_infer(const lt_graph *g, const lt_node *n, lt_value *out, lt_err *err) {
  lt_status st;
  if ((st = lt_op_check_f32(g, n, 0, -1, "input", err))) return st;
  if ((st = lt_op_check_f32(g, n, 1, 2, "weight", err))) return st;
  if ((st = conv_check_weights(g, n, err))) return st;
  const lt_value *x = lt_op_in(g, n, 0), *w = lt_op_in(g, n, 1);
  char xs[128], ws[128];
  if (x->ndim < 1 || x->shape[x->ndim - 1] != w->shape[1])
    return lt_op_fail(err, LT_ERR_INVALID, n,
                      "input %s (per sample) does not end in the weight's %lld input features "
                      "(weight %s is (out, in)); insert a Flatten before it?",
                      lt_shape_str(x->ndim, x->shape, xs, sizeof xs), (long long)w->shape[1],
                      lt_shape_str(w->ndim, w->shape, ws, sizeof ws));
  if ((st = conv_check_bias(g, n, w->shape[0], err))) return st;
  lt_op_out_like(out, x);
  out->shape[out->ndim - 1] = w->shape[0];
  return LT_OK;
}

static int64_t linear_macs(const lt_graph *g, const lt_node *n) {
  const lt_value *y = &g->values[n->out[0]], *w = lt_op_in(g, n, 1);
  return lt_shape_numel(y->ndim, y->shape) * w->shape[1];
}

/* Rows of the (rows, K) matrix the kernel sees: batch times the leading per-sample dims. */
static int linear_rows(const lt_node_ctx *ctx) {
  const lt_tensor *x = ctx->in[0];
  return (int)(lt_tensor_numel(x) / x->shape[x->ndim - 1]);
}

static lt_status linear_fwd(lt_node_ctx *ctx, lt_err *err) {
  const lt_tensor *w = ctx->in[1];
  lt_cpu_linear_fwd(linear_rows(ctx), (int)w->shape[1], (int)w->shape[0],
                    lt_tensor_f32(ctx->in[0]), lt_tensor_f32(w), ctx_bias(ctx),
                    lt_tensor_f32(ctx->out[0]));
  return LT_OK;
}

static lt_status linear_bwd(lt_node_ctx *ctx, lt_err *err) {
  const lt_tensor *w = ctx->in[1];
  int rows = linear_rows(ctx), k = (int)w->shape[1], m = (int)w->shape[0];
  const float *dy = lt_tensor_f32(ctx->dout[0]);
  float *dx = grad_ptr(ctx, 0), *dw = grad_ptr(ctx, 1), *db = grad_ptr(ctx, 2);
  const float *x = (dw || db) ? lt_tensor_f32(ctx->saved[0]) : NULL;
  /* The kernel takes one accumulate flag; dX and the parameter gradients often differ (first
   * writer vs. accumulating across micro-batches), so they go in separate calls then. */
  if (dx && (dw || db) && ctx->accumulate_in[0] != ctx_param_accumulate(ctx)) {
    lt_cpu_linear_bwd(rows, k, m, x, lt_tensor_f32(w), dy, dx, NULL, NULL, ctx->accumulate_in[0]);
    dx = NULL;
  }
  if (dx || dw || db)
    lt_cpu_linear_bwd(rows, k, m, x, lt_tensor_f32(w), dy, dx, dw, db,
                      dx ? ctx->accumulate_in[0] : ctx_param_accumulate(ctx));
  return LT_OK;
}

const lt_op_desc lt_op_linear = {
    .name = "Linear", .min_in = 2, .max_in = 3, .infer = linear_infer, .macs = linear_macs,
    .param_slots = 0x6, .saves = weight_input_saves, .weight_grad = 1, .fwd_cpu = linear_fwd,
    .bwd_cpu = linear_bwd};
