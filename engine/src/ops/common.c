/* The op table and the helpers every op family shares: error prefixes, input checks, geometry
 * from attributes, full shapes from per-sample shapes. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "backend/cpu/kernels_fused.h"
#include "ops/fused.h"
#include "ops/ops.h"

static const lt_op_desc *const op_table[LT_OP_COUNT] = {
    [LT_OP_CONV2D] = &lt_op_conv2d,
    [LT_OP_CONV_TRANSPOSE2D] = &lt_op_conv_transpose2d,
    [LT_OP_BATCHNORM] = &lt_op_batchnorm,
    [LT_OP_RELU] = &lt_op_relu,
    [LT_OP_LEAKY_RELU] = &lt_op_leaky_relu,
    [LT_OP_SIGMOID] = &lt_op_sigmoid,
    [LT_OP_TANH] = &lt_op_tanh,
    [LT_OP_CLIP] = &lt_op_clip,
    [LT_OP_MAXPOOL] = &lt_op_maxpool,
    [LT_OP_AVGPOOL] = &lt_op_avgpool,
    [LT_OP_GLOBAL_AVGPOOL] = &lt_op_global_avgpool,
    [LT_OP_ADD] = &lt_op_add,
    [LT_OP_SUB] = &lt_op_sub,
    [LT_OP_MUL] = &lt_op_mul,
    [LT_OP_DIV] = &lt_op_div,
    [LT_OP_CONCAT] = &lt_op_concat,
    [LT_OP_SLICE] = &lt_op_slice,
    [LT_OP_PAD] = &lt_op_pad,
    [LT_OP_RESHAPE] = &lt_op_reshape,
    [LT_OP_FLATTEN] = &lt_op_flatten,
    [LT_OP_TRANSPOSE] = &lt_op_transpose,
    [LT_OP_LINEAR] = &lt_op_linear,
    [LT_OP_UPSAMPLE] = &lt_op_upsample,
    [LT_OP_DROPOUT] = &lt_op_dropout,
    [LT_OP_SOFTMAX] = &lt_op_softmax,
    [LT_OP_IDENTITY] = &lt_op_identity,
};

const lt_op_desc *lt_op_get(lt_op_type op) {
  if ((int)op < 0 || op >= LT_OP_COUNT) return NULL;
  return op_table[op];
}

const char *lt_op_name(lt_op_type op) {
  const lt_op_desc *d = lt_op_get(op);
  return d ? d->name : "invalid-op";
}

void lt_op_out_like(lt_value *out, const lt_value *in) {
  out->dtype = in->dtype;
  out->ndim = in->ndim;
  memcpy(out->shape, in->shape, sizeof out->shape);
}

lt_status lt_op_fail(lt_err *err, lt_status st, const lt_node *n, const char *fmt, ...) {
  if (!err) return st;
  char body[768];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(body, sizeof body, fmt, ap);
  va_end(ap);
  return lt_errorf(err, st, "node '%.200s' (%s): %s", n->name ? n->name : "?", lt_op_name(n->op),
                   body);
}

lt_status lt_op_check_f32(const lt_graph *g, const lt_node *n, int i, int rank, const char *what,
                          lt_err *err) {
  const lt_value *v = lt_op_in(g, n, i);
  char s[128];
  if (v->dtype != LT_F32)
    return lt_op_fail(err, LT_ERR_UNSUPPORTED, n, "%s '%s' is %s; this op computes in float32",
                      what, v->name, lt_dtype_name(v->dtype));
  if (rank >= 0 && v->ndim != rank)
    return lt_op_fail(err, LT_ERR_INVALID, n, "%s '%s' has shape %s (%s), expected rank %d", what,
                      v->name, lt_shape_str(v->ndim, v->shape, s, sizeof s),
                      lt_value_batched(v) ? "per sample" : "full", rank);
  return LT_OK;
}

void lt_op_full_shape(const lt_value *v, int batch, int ndim, int64_t *shape) {
  int lead = ndim - v->ndim;
  for (int i = 0; i < lead; i++) shape[i] = 1;
  memcpy(shape + lead, v->shape, sizeof(int64_t) * (size_t)v->ndim);
  if (lt_value_batched(v) && lead > 0) shape[0] = batch;
}

void lt_op_cpu_pass_grad(size_t count, const float *dy, float *dx, int accumulate) {
  lt_cpu_pass_grad(count, dy, dx, accumulate);
}

int lt_op_cpu_relu_fusable(const lt_graph *g, const lt_node *n) {
  if (n->op == LT_OP_BATCHNORM) return lt_op_in(g, n, 0)->dtype == LT_F32;
  return lt_op_add_flat(g, n);
}

lt_status lt_op_cpu_fwd_relu(lt_node_ctx *ctx, lt_err *err) {
  const lt_node *n = &ctx->g->nodes[ctx->node];
  if (n->op == LT_OP_BATCHNORM) return lt_op_bn_fwd_relu(ctx, err);
  if (lt_op_add_flat(ctx->g, n)) return lt_op_add_fwd_relu(ctx, err);
  return lt_op_fail(err, LT_ERR_INTERNAL, n, "has no fused ReLU forward");
}

lt_status lt_op_cpu_bwd_relu(lt_node_ctx *ctx, const lt_tensor *relu_y, lt_err *err) {
  const lt_node *n = &ctx->g->nodes[ctx->node];
  if (n->op == LT_OP_BATCHNORM) return lt_op_bn_bwd_relu(ctx, relu_y, err);
  if (lt_op_add_flat(ctx->g, n)) return lt_op_add_bwd_relu(ctx, relu_y, err);
  return lt_op_fail(err, LT_ERR_INTERNAL, n, "has no fused ReLU backward");
}

void lt_op_slice_axis(int64_t dim, int64_t start, int64_t end, int64_t step, int64_t *first,
                      int64_t *len) {
  /* ONNX Slice: negative indices count from the end, then clamp; a negative step walks back. */
  if (start < 0) start += dim;
  if (end < 0 && end > INT64_MIN / 2) end += dim;
  if (step > 0) {
    start = start < 0 ? 0 : start > dim ? dim : start;
    end = end < 0 ? 0 : end > dim ? dim : end;
  } else {
    start = start < 0 ? 0 : start > dim - 1 ? dim - 1 : start;
    end = end < -1 ? -1 : end > dim - 1 ? dim - 1 : end;
  }
  *len = lt_op_slice_len(start, end, step);
  *first = start;
}

int64_t lt_op_slice_len(int64_t start, int64_t end, int64_t step) {
  /* ceil(distance / |step|) without forming distance + |step| - 1, which overflows for a step
   * near INT64_MAX; |step| is taken unsigned so that INT64_MIN is a step too. start and end are
   * clamped to [-1, dim], so their distance fits. */
  int64_t dist = step > 0 ? end - start : start - end;
  if (dist <= 0) return 0;
  uint64_t mag = step > 0 ? (uint64_t)step : 0 - (uint64_t)step;
  return (int64_t)(((uint64_t)dist - 1) / mag + 1);
}

/* The spatial attributes shared by conv and pool, with unset kernel taken from `kh, kw`. */
static lt_status op_check_spatial(const lt_node *n, int kh, int kw, lt_err *err) {
  const lt_node_attrs *a = &n->a;
  if ((a->kernel[0] && a->kernel[0] != kh) || (a->kernel[1] && a->kernel[1] != kw))
    return lt_op_fail(err, LT_ERR_INVALID, n, "kernel attribute %dx%d disagrees with weight %dx%d",
                      a->kernel[0], a->kernel[1], kh, kw);
  if (a->stride[0] < 1 || a->stride[1] < 1 || a->dilation[0] < 1 || a->dilation[1] < 1)
    return lt_op_fail(err, LT_ERR_INVALID, n,
                      "stride %dx%d and dilation %dx%d must be >= 1 (use lt_attrs_conv or "
                      "lt_attrs_default)",
                      a->stride[0], a->stride[1], a->dilation[0], a->dilation[1]);
  for (int i = 0; i < 4; i++)
    if (a->pads[i] < 0) return lt_op_fail(err, LT_ERR_INVALID, n, "negative padding %d", a->pads[i]);
  return LT_OK;
}

lt_status lt_op_conv_geom(const lt_graph *g, const lt_node *n, int batch, int transpose,
                          lt_conv_geom *geom, lt_err *err) {
  const lt_value *x = lt_op_in(g, n, 0), *w = lt_op_in(g, n, 1);
  const lt_node_attrs *a = &n->a;
  char xs[128], ws[128];
  lt_status st = op_check_spatial(n, (int)w->shape[2], (int)w->shape[3], err);
  if (st) return st;
  int groups = a->groups < 1 ? 1 : a->groups;
  memset(geom, 0, sizeof *geom);
  geom->n = batch;
  geom->c = (int)x->shape[0];
  geom->h = (int)x->shape[1];
  geom->w = (int)x->shape[2];
  geom->kh = (int)w->shape[2];
  geom->kw = (int)w->shape[3];
  geom->stride_h = a->stride[0], geom->stride_w = a->stride[1];
  geom->pad_t = a->pads[0], geom->pad_l = a->pads[1], geom->pad_b = a->pads[2];
  geom->pad_r = a->pads[3];
  geom->dil_h = a->dilation[0], geom->dil_w = a->dilation[1];
  geom->groups = groups;
  geom->out_pad_h = a->out_pad[0], geom->out_pad_w = a->out_pad[1];
  /* conv: w (S, C/groups, kh, kw); conv_transpose: w (C, S/groups, kh, kw). */
  int64_t w_in = transpose ? w->shape[0] : w->shape[1] * groups;
  geom->s = (int)(transpose ? w->shape[1] * groups : w->shape[0]);
  if (w_in != geom->c || geom->c % groups || geom->s % groups)
    return lt_op_fail(err, LT_ERR_INVALID, n,
                      "input %s (C,H,W) does not fit weight %s with groups=%d: weight expects %lld "
                      "input channels",
                      lt_shape_str(x->ndim, x->shape, xs, sizeof xs),
                      lt_shape_str(w->ndim, w->shape, ws, sizeof ws), groups, (long long)w_in);
  if (lt_conv_geom_finish(geom, transpose) != 0 || geom->oh <= 0 || geom->ow <= 0)
    return lt_op_fail(err, LT_ERR_INVALID, n,
                      "impossible geometry: input %s with kernel %dx%d, stride %dx%d, pads "
                      "(%d,%d,%d,%d), dilation %dx%d gives no output; use a smaller kernel or more "
                      "padding",
                      lt_shape_str(x->ndim, x->shape, xs, sizeof xs), geom->kh, geom->kw,
                      geom->stride_h, geom->stride_w, geom->pad_t, geom->pad_l, geom->pad_b,
                      geom->pad_r, geom->dil_h, geom->dil_w);
  return LT_OK;
}

lt_status lt_op_pool_geom(const lt_graph *g, const lt_node *n, int batch, lt_pool_geom *geom,
                          lt_err *err) {
  const lt_value *x = lt_op_in(g, n, 0);
  const lt_node_attrs *a = &n->a;
  char xs[128];
  if (a->kernel[0] < 1 || a->kernel[1] < 1)
    return lt_op_fail(err, LT_ERR_INVALID, n, "pool kernel %dx%d must be >= 1 (use lt_attrs_pool)",
                      a->kernel[0], a->kernel[1]);
  lt_status st = op_check_spatial(n, a->kernel[0], a->kernel[1], err);
  if (st) return st;
  memset(geom, 0, sizeof *geom);
  geom->n = batch;
  geom->c = (int)x->shape[0], geom->h = (int)x->shape[1], geom->w = (int)x->shape[2];
  geom->kh = a->kernel[0], geom->kw = a->kernel[1];
  geom->stride_h = a->stride[0], geom->stride_w = a->stride[1];
  geom->pad_t = a->pads[0], geom->pad_l = a->pads[1], geom->pad_b = a->pads[2];
  geom->pad_r = a->pads[3];
  geom->dil_h = a->dilation[0], geom->dil_w = a->dilation[1];
  geom->ceil_mode = a->ceil_mode;
  geom->count_include_pad = a->count_include_pad;
  if (lt_pool_geom_finish(geom) != 0 || geom->oh <= 0 || geom->ow <= 0)
    return lt_op_fail(err, LT_ERR_INVALID, n,
                      "impossible geometry: input %s with window %dx%d, stride %dx%d, pads "
                      "(%d,%d,%d,%d) gives no output",
                      lt_shape_str(x->ndim, x->shape, xs, sizeof xs), geom->kh, geom->kw,
                      geom->stride_h, geom->stride_w, geom->pad_t, geom->pad_l, geom->pad_b,
                      geom->pad_r);
  return LT_OK;
}
