/* Elementwise binary ops with broadcasting, and the data-movement ops: Concat, Slice, Pad,
 * Reshape, Flatten, Transpose, Identity. None of them has MACs or parameters; only Mul and Div
 * save anything (their operands). */
#include <string.h>

#include "backend/cpu/kernels_fused.h"
#include "ops/fused.h"
#include "ops/ops.h"

/* ---- binary ops: NumPy broadcasting of full shapes ----------------------------------------------
 * Activations carry a batch dimension in front; parameters and constants do not. A constant's
 * shape is right-aligned against the activation's full shape, so (C,1,1) or (1,C,1,1) both
 * broadcast over (N,C,H,W); a constant may not vary along the batch. */

static lt_status binary_shapes(const lt_graph *g, const lt_node *n, int batch, int64_t *as,
                               int64_t *bs, int64_t *ys, int *ndim, lt_err *err) {
  const lt_value *v[2] = {lt_op_in(g, n, 0), lt_op_in(g, n, 1)};
  int64_t *full[2] = {as, bs};
  int r = -1;
  for (int i = 0; i < 2; i++) {
    if (v[i]->dtype != LT_F32)
      return lt_op_fail(err, LT_ERR_UNSUPPORTED, n, "operand '%s' is %s; this op computes in "
                        "float32", v[i]->name, lt_dtype_name(v[i]->dtype));
    if (lt_value_batched(v[i])) {
      if (r >= 0 && r != v[i]->ndim)
        return lt_op_fail(err, LT_ERR_INVALID, n,
                          "activations of per-sample rank %d and %d cannot broadcast; reshape one",
                          r, v[i]->ndim);
      r = v[i]->ndim;
    }
  }
  if (r < 0)
    return lt_op_fail(err, LT_ERR_UNSUPPORTED, n,
                      "both operands are constants; fold them before building the graph");
  if (r + 1 > LT_KMAX_DIMS)
    return lt_op_fail(err, LT_ERR_UNSUPPORTED, n, "per-sample rank %d exceeds the %d the kernels "
                      "support", r, LT_KMAX_DIMS - 1);
  for (int i = 0; i < 2; i++) {
    const lt_value *x = v[i];
    int64_t *f = full[i];
    if (lt_value_batched(x)) {
      lt_op_full_shape(x, batch, r + 1, f);
      continue;
    }
    /* A constant aligned on the right; dims beyond the per-sample rank must be 1. */
    for (int d = 0; d < x->ndim - r; d++)
      if (x->shape[d] != 1) {
        char s[128];
        return lt_op_fail(err, LT_ERR_UNSUPPORTED, n,
                          "constant '%s' %s would vary along the batch; only per-sample "
                          "broadcasting is supported",
                          x->name, lt_shape_str(x->ndim, x->shape, s, sizeof s));
      }
    int keep = x->ndim < r ? x->ndim : r;
    for (int d = 0; d <= r; d++) f[d] = 1;
    memcpy(f + 1 + r - keep, x->shape + x->ndim - keep, sizeof(int64_t) * (size_t)keep);
  }
  for (int d = 0; d <= r; d++) {
    if (as[d] != bs[d] && as[d] != 1 && bs[d] != 1) {
      char s0[128], s1[128];
      return lt_op_fail(err, LT_ERR_INVALID, n,
                        "shapes %s and %s do not broadcast (axis %d: %lld vs %lld)",
                        lt_shape_str(v[0]->ndim, v[0]->shape, s0, sizeof s0),
                        lt_shape_str(v[1]->ndim, v[1]->shape, s1, sizeof s1), d - 1,
                        (long long)as[d], (long long)bs[d]);
    }
    ys[d] = as[d] == 1 ? bs[d] : as[d];
  }
  *ndim = r + 1;
  return LT_OK;
}

static lt_status binary_infer(const lt_graph *g, const lt_node *n, lt_value *out, lt_err *err) {
  int64_t as[LT_KMAX_DIMS], bs[LT_KMAX_DIMS], ys[LT_KMAX_DIMS];
  int nd;
  lt_status st = binary_shapes(g, n, 1, as, bs, ys, &nd, err);
  if (st) return st;
  out->dtype = LT_F32;
  out->ndim = nd - 1;
  memcpy(out->shape, ys + 1, sizeof(int64_t) * (size_t)(nd - 1));
  return LT_OK;
}

static int binary_saves(const lt_graph *g, const lt_node *n, lt_op_save *out) {
  out[0] = (lt_op_save){LT_SAVE_SRC_IN, 0, LT_SAVE_EXACT};
  out[1] = (lt_op_save){LT_SAVE_SRC_IN, 1, LT_SAVE_EXACT};
  return 2;
}

static lt_binary_op binary_kind(lt_op_type op) {
  switch (op) {
  case LT_OP_SUB: return LT_BIN_SUB;
  case LT_OP_MUL: return LT_BIN_MUL;
  case LT_OP_DIV: return LT_BIN_DIV;
  default: return LT_BIN_ADD;
  }
}

static lt_status binary_fwd(lt_node_ctx *ctx, lt_err *err) {
  const lt_node *n = &ctx->g->nodes[ctx->node];
  int64_t as[LT_KMAX_DIMS], bs[LT_KMAX_DIMS], ys[LT_KMAX_DIMS];
  int nd;
  lt_status st = binary_shapes(ctx->g, n, ctx->batch, as, bs, ys, &nd, err);
  if (st) return st;
  lt_cpu_binary_fwd(binary_kind(n->op), nd, as, lt_tensor_f32(ctx->in[0]), bs,
                    lt_tensor_f32(ctx->in[1]), ys, lt_tensor_f32(ctx->out[0]));
  return LT_OK;
}

/* 1 for an Add of two activations of one shape (a residual addition): its forward can take a
 * trailing ReLU, and its backward is two gradient copies. */
int lt_op_add_flat(const lt_graph *g, const lt_node *n) {
  if (n->op != LT_OP_ADD || n->n_in != 2) return 0;
  const lt_value *a = lt_op_in(g, n, 0), *b = lt_op_in(g, n, 1);
  return lt_value_batched(a) && lt_value_batched(b) && a->dtype == LT_F32 &&
         b->dtype == LT_F32 && lt_shape_equal(a->ndim, a->shape, b->ndim, b->shape);
}

lt_status lt_op_add_fwd_relu(lt_node_ctx *ctx, lt_err *err) {
  lt_cpu_add_relu_fwd((size_t)lt_tensor_numel(ctx->out[0]), lt_tensor_f32(ctx->in[0]),
                      lt_tensor_f32(ctx->in[1]), lt_tensor_f32(ctx->out[0]));
  return LT_OK;
}

lt_status lt_op_add_bwd_relu(lt_node_ctx *ctx, const lt_tensor *relu_y, lt_err *err) {
  lt_cpu_add_relu_bwd((size_t)lt_tensor_numel(ctx->dout[0]), lt_tensor_f32(relu_y),
                      lt_tensor_f32(ctx->dout[0]),
                      ctx->din[0] ? lt_tensor_f32(ctx->din[0]) : NULL, ctx->accumulate_in[0],
                      ctx->din[1] ? lt_tensor_f32(ctx->din[1]) : NULL, ctx->accumulate_in[1]);
  return LT_OK;
}

static lt_status binary_bwd(lt_node_ctx *ctx, lt_err *err) {
  const lt_node *n = &ctx->g->nodes[ctx->node];
  if (lt_op_add_flat(ctx->g, n)) {
    const size_t count = (size_t)lt_tensor_numel(ctx->dout[0]);
    const float *dy = lt_tensor_f32(ctx->dout[0]);
    for (int k = 0; k < 2; k++)
      if (ctx->din[k]) lt_cpu_pass_grad(count, dy, lt_tensor_f32(ctx->din[k]), ctx->accumulate_in[k]);
    return LT_OK;
  }
  int64_t as[LT_KMAX_DIMS], bs[LT_KMAX_DIMS], ys[LT_KMAX_DIMS];
  int nd;
  lt_status st = binary_shapes(ctx->g, n, ctx->batch, as, bs, ys, &nd, err);
  if (st) return st;
  lt_binary_op op = binary_kind(n->op);
  int needs_operands = op == LT_BIN_MUL || op == LT_BIN_DIV;
  const float *a = needs_operands ? lt_tensor_f32(ctx->saved[0]) : NULL;
  const float *b = needs_operands ? lt_tensor_f32(ctx->saved[1]) : NULL;
  const float *dy = lt_tensor_f32(ctx->dout[0]);
  float *da = ctx->din[0] ? lt_tensor_f32(ctx->din[0]) : NULL;
  float *db = ctx->din[1] ? lt_tensor_f32(ctx->din[1]) : NULL;
  /* One accumulate flag per kernel call: operands with different flags go in separate calls
   * (a residual Add often has a fresh gradient on one side and a fan-out on the other). */
  if (da && db && ctx->accumulate_in[0] != ctx->accumulate_in[1]) {
    lt_cpu_binary_bwd(op, nd, as, a, bs, b, ys, dy, da, NULL, ctx->accumulate_in[0]);
    da = NULL;
  }
  if (da || db)
    lt_cpu_binary_bwd(op, nd, as, a, bs, b, ys, dy, da, db,
                      da ? ctx->accumulate_in[0] : ctx->accumulate_in[1]);
  return LT_OK;
}

#define BINARY(sym, nm, sv)                                                                        \
  const lt_op_desc sym = {.name = nm, .min_in = 2, .max_in = 2, .infer = binary_infer,            \
                          .saves = sv, .fwd_cpu = binary_fwd, .bwd_cpu = binary_bwd}
BINARY(lt_op_add, "Add", NULL);
BINARY(lt_op_sub, "Sub", NULL);
BINARY(lt_op_mul, "Mul", binary_saves);
BINARY(lt_op_div, "Div", binary_saves);

/* ---- data movement --------------------------------------------------------------------------- */

static lt_status check_batched(const lt_graph *g, const lt_node *n, lt_err *err) {
  for (int i = 0; i < n->n_in; i++)
    if (!lt_value_batched(lt_op_in(g, n, i)))
      return lt_op_fail(err, LT_ERR_UNSUPPORTED, n,
                        "input '%s' is a constant; fold constant data movement before building "
                        "the graph",
                        lt_op_in(g, n, i)->name);
  return LT_OK;
}

/* Slice, Pad and Transpose index every axis in the kernels, which take LT_KMAX_DIMS dims with the
 * batch among them. */
static lt_status check_kernel_rank(const lt_graph *g, const lt_node *n, lt_err *err) {
  const lt_value *x = lt_op_in(g, n, 0);
  if (x->ndim + 1 > LT_KMAX_DIMS)
    return lt_op_fail(err, LT_ERR_UNSUPPORTED, n,
                      "per-sample rank %d exceeds the %d this op supports; reshape to fewer axes",
                      x->ndim, LT_KMAX_DIMS - 1);
  if (x->ndim < 1)
    return lt_op_fail(err, LT_ERR_INVALID, n, "input '%s' has no axes to index", x->name);
  return LT_OK;
}

/* Full shape of a tensor as the kernels see it, and the element size. */
static size_t ctx_elem(const lt_tensor *t) { return lt_dtype_size(t->dtype); }

/* Concat along a per-sample axis. */
static int concat_axis(const lt_node *n, int ndim) {
  return n->a.axis < 0 ? n->a.axis + ndim : n->a.axis;
}

static lt_status concat_infer(const lt_graph *g, const lt_node *n, lt_value *out, lt_err *err) {
  lt_status st = check_batched(g, n, err);
  if (st) return st;
  const lt_value *x0 = lt_op_in(g, n, 0);
  int ax = concat_axis(n, x0->ndim);
  if (ax < 0 || ax >= x0->ndim)
    return lt_op_fail(err, LT_ERR_INVALID, n, "axis %d is outside the per-sample rank %d (0 is "
                      "channels)", n->a.axis, x0->ndim);
  lt_op_out_like(out, x0);
  for (int i = 1; i < n->n_in; i++) {
    const lt_value *x = lt_op_in(g, n, i);
    int same = x->ndim == x0->ndim && x->dtype == x0->dtype;
    for (int d = 0; same && d < x->ndim; d++) same = d == ax || x->shape[d] == x0->shape[d];
    if (!same) {
      char s0[128], s1[128];
      return lt_op_fail(err, LT_ERR_INVALID, n,
                        "input %d '%s' %s %s does not match input 0 %s %s outside axis %d", i,
                        x->name, lt_shape_str(x->ndim, x->shape, s1, sizeof s1),
                        lt_dtype_name(x->dtype), lt_shape_str(x0->ndim, x0->shape, s0, sizeof s0),
                        lt_dtype_name(x0->dtype), ax);
    }
    out->shape[ax] += x->shape[ax];
  }
  return LT_OK;
}

/* outer/inner extents around the concat axis of the full (batched) output. */
static void concat_extents(const lt_node_ctx *ctx, int64_t *sizes, int64_t *outer,
                           int64_t *inner) {
  const lt_node *n = &ctx->g->nodes[ctx->node];
  const lt_tensor *y = ctx->out[0];
  int ax = concat_axis(n, y->ndim - 1) + 1;
  *outer = lt_shape_numel(ax, y->shape);
  *inner = lt_shape_numel(y->ndim - ax - 1, y->shape + ax + 1);
  for (int i = 0; i < n->n_in; i++) sizes[i] = ctx->in[i]->shape[ax];
}

static lt_status concat_fwd(lt_node_ctx *ctx, lt_err *err) {
  const lt_node *n = &ctx->g->nodes[ctx->node];
  int64_t sizes[LT_MAX_IO], outer, inner;
  const void *ins[LT_MAX_IO];
  concat_extents(ctx, sizes, &outer, &inner);
  for (int i = 0; i < n->n_in; i++) ins[i] = ctx->in[i]->data;
  lt_cpu_concat(n->n_in, ins, sizes, outer, inner, ctx_elem(ctx->out[0]), ctx->out[0]->data);
  return LT_OK;
}

static lt_status concat_bwd(lt_node_ctx *ctx, lt_err *err) {
  const lt_node *n = &ctx->g->nodes[ctx->node];
  int64_t sizes[LT_MAX_IO], outer, inner;
  concat_extents(ctx, sizes, &outer, &inner);
  /* The split kernel takes one accumulate flag: fresh and accumulating gradients go in two
   * passes, each skipping the other's outputs (NULL). */
  for (int acc = 0; acc < 2; acc++) {
    void *outs[LT_MAX_IO];
    int any = 0;
    for (int i = 0; i < n->n_in; i++) {
      int take = ctx->din[i] && ctx->accumulate_in[i] == acc;
      outs[i] = take ? ctx->din[i]->data : NULL;
      any |= take;
    }
    if (any)
      lt_cpu_split(n->n_in, outs, sizes, outer, inner, sizeof(float), ctx->dout[0]->data, acc);
  }
  return LT_OK;
}

const lt_op_desc lt_op_concat = {.name = "Concat", .min_in = 1, .max_in = LT_MAX_IO,
                                 .infer = concat_infer, .fwd_cpu = concat_fwd,
                                 .bwd_cpu = concat_bwd};

/* Slice: ints = starts[r], ends[r], steps[r] over the per-sample axes. */
static lt_status slice_plan(const lt_graph *g, const lt_node *n, int64_t *first, int64_t *len,
                            lt_err *err) {
  const lt_value *x = lt_op_in(g, n, 0);
  int r = x->ndim;
  if (n->a.n_ints != 3 * r)
    return lt_op_fail(err, LT_ERR_INVALID, n,
                      "slice needs starts, ends and steps for each of the %d per-sample axes (%d "
                      "ints), got %d",
                      r, 3 * r, n->a.n_ints);
  for (int d = 0; d < r; d++) {
    int64_t step = n->a.ints[2 * r + d];
    if (step == 0) return lt_op_fail(err, LT_ERR_INVALID, n, "step of axis %d is 0", d);
    lt_op_slice_axis(x->shape[d], n->a.ints[d], n->a.ints[r + d], step, &first[d], &len[d]);
    if (len[d] < 1)
      return lt_op_fail(err, LT_ERR_INVALID, n, "axis %d of size %lld is sliced to nothing "
                        "(start %lld, end %lld, step %lld)",
                        d, (long long)x->shape[d], (long long)n->a.ints[d],
                        (long long)n->a.ints[r + d], (long long)step);
  }
  return LT_OK;
}

static lt_status slice_infer(const lt_graph *g, const lt_node *n, lt_value *out, lt_err *err) {
  lt_status st = check_batched(g, n, err);
  if (st) return st;
  if ((st = check_kernel_rank(g, n, err))) return st;
  int64_t first[LT_MAX_DIMS], len[LT_MAX_DIMS];
  if ((st = slice_plan(g, n, first, len, err))) return st;
  lt_op_out_like(out, lt_op_in(g, n, 0));
  memcpy(out->shape, len, sizeof(int64_t) * (size_t)out->ndim);
  return LT_OK;
}

/* Start and step per full axis (batch axis untouched). */
static lt_status slice_full(const lt_node_ctx *ctx, int64_t *start, int64_t *step, lt_err *err) {
  const lt_node *n = &ctx->g->nodes[ctx->node];
  int64_t first[LT_MAX_DIMS], len[LT_MAX_DIMS];
  lt_status st = slice_plan(ctx->g, n, first, len, err);
  if (st) return st;
  int r = ctx->in[0]->ndim - 1;
  start[0] = 0, step[0] = 1;
  for (int d = 0; d < r; d++) start[d + 1] = first[d], step[d + 1] = n->a.ints[2 * r + d];
  return LT_OK;
}

/* Slice and Pad forward: the node's own window over its input. */
static lt_status window_fwd(lt_node_ctx *ctx, lt_err *err) {
  const lt_tensor *x = ctx->in[0];
  lt_op_window w;
  lt_op_window_init(&w, x->ndim, x->shape);
  lt_status st = lt_op_window_then(&w, ctx->g, &ctx->g->nodes[ctx->node], err);
  if (st) return st;
  lt_op_window_cpu(&w, ctx_elem(x), x->data, ctx->out[0]->data);
  return LT_OK;
}

static lt_status slice_bwd(lt_node_ctx *ctx, lt_err *err) {
  int64_t start[LT_MAX_DIMS], step[LT_MAX_DIMS];
  lt_status st = slice_full(ctx, start, step, err);
  if (st) return st;
  const lt_tensor *x = ctx->in[0], *y = ctx->out[0];
  lt_cpu_slice_bwd(x->ndim, x->shape, start, step, y->shape, lt_tensor_f32(ctx->dout[0]),
                   lt_tensor_f32(ctx->din[0]), ctx->accumulate_in[0]);
  return LT_OK;
}
const lt_op_desc lt_op_slice = {.name = "Slice", .min_in = 1, .max_in = 1, .infer = slice_infer,
                                .fwd_cpu = window_fwd, .bwd_cpu = slice_bwd};

/* Pad: ints = begins[r] then ends[r] over per-sample axes (ONNX order); negative crops. */
static lt_status pad_infer(const lt_graph *g, const lt_node *n, lt_value *out, lt_err *err) {
  lt_status st = check_batched(g, n, err);
  if (st) return st;
  if ((st = check_kernel_rank(g, n, err))) return st;
  if ((st = lt_op_check_f32(g, n, 0, -1, "input", err))) return st;
  const lt_value *x = lt_op_in(g, n, 0);
  int r = x->ndim;
  if (n->a.n_ints != 2 * r)
    return lt_op_fail(err, LT_ERR_INVALID, n,
                      "pad needs begins and ends for each of the %d per-sample axes (%d ints), "
                      "got %d",
                      r, 2 * r, n->a.n_ints);
  lt_op_out_like(out, x);
  for (int d = 0; d < r; d++) {
    out->shape[d] += n->a.ints[d] + n->a.ints[r + d];
    if (out->shape[d] < 1)
      return lt_op_fail(err, LT_ERR_INVALID, n, "axis %d of size %lld is cropped to nothing", d,
                        (long long)x->shape[d]);
  }
  return LT_OK;
}

static void pad_full(const lt_node_ctx *ctx, int64_t *pads) {
  const lt_node *n = &ctx->g->nodes[ctx->node];
  int r = ctx->in[0]->ndim - 1;
  pads[0] = pads[r + 1] = 0;
  for (int d = 0; d < r; d++) pads[1 + d] = n->a.ints[d], pads[r + 2 + d] = n->a.ints[r + d];
}

static lt_status pad_bwd(lt_node_ctx *ctx, lt_err *err) {
  int64_t pads[2 * LT_MAX_DIMS];
  pad_full(ctx, pads);
  const lt_tensor *x = ctx->in[0];
  lt_cpu_pad_bwd(x->ndim, x->shape, pads, lt_tensor_f32(ctx->dout[0]), lt_tensor_f32(ctx->din[0]),
                 ctx->accumulate_in[0]);
  return LT_OK;
}
const lt_op_desc lt_op_pad = {.name = "Pad", .min_in = 1, .max_in = 1, .infer = pad_infer,
                              .fwd_cpu = window_fwd, .bwd_cpu = pad_bwd};

void lt_op_window_init(lt_op_window *w, int ndim, const int64_t *xshape) {
  memset(w, 0, sizeof *w);
  w->ndim = ndim;
  for (int d = 0; d < ndim; d++) {
    w->xshape[d] = w->yshape[d] = w->hi[d] = xshape[d];
    w->step[d] = 1;
  }
}

lt_status lt_op_window_then(lt_op_window *w, const lt_graph *g, const lt_node *n, lt_err *err) {
  if (w->padded || (n->op != LT_OP_SLICE && n->op != LT_OP_PAD))
    return lt_op_fail(err, LT_ERR_UNSUPPORTED, n, "does not compose into a strided window%s",
                      w->padded ? " after a Pad" : "");
  const int r = w->ndim - 1;
  if (n->op == LT_OP_SLICE) {
    int64_t first[LT_MAX_DIMS], len[LT_MAX_DIMS];
    lt_status st = slice_plan(g, n, first, len, err);
    if (st) return st;
    /* y index i of the slice reads index first + i * s of the window's output. A slice that
     * keeps one element never steps, so its step is taken as 1: composed steps then stay within
     * the input's extent instead of multiplying a huge step into an overflow. */
    for (int d = 0; d < r; d++) {
      const int64_t s = len[d] > 1 ? n->a.ints[2 * r + d] : 1;
      w->start[d + 1] += first[d] * w->step[d + 1];
      w->step[d + 1] *= s;
      w->yshape[d + 1] = w->hi[d + 1] = len[d];
    }
    return LT_OK;
  }
  if (n->a.n_ints != 2 * r)
    return lt_op_fail(err, LT_ERR_INVALID, n, "pad needs %d ints, got %d", 2 * r, n->a.n_ints);
  for (int d = 0; d < r; d++) {
    /* y index i holds index i - b of the window's output where that lies in it */
    const int64_t b = n->a.ints[d], e = n->a.ints[r + d], x = w->yshape[d + 1], y = x + b + e;
    const int64_t lo = b > 0 ? b : 0, hi = x + b < y ? x + b : y;
    w->start[d + 1] += (lo - b) * w->step[d + 1];
    w->yshape[d + 1] = y;
    w->lo[d + 1] = lo;
    w->hi[d + 1] = hi > lo ? hi : lo;
    w->padded |= lo > 0 || w->hi[d + 1] < y;
  }
  w->value = n->a.value;
  return LT_OK;
}

void lt_op_window_cpu(const lt_op_window *w, size_t elem, const void *x, void *y) {
  lt_cpu_window_fwd(w->ndim, w->xshape, w->yshape, w->start, w->step, w->lo, w->hi, w->value,
                    elem, x, y);
}

/* Reshape, Flatten and Identity move no data in the row-major layout: forward copies, backward
 * passes the gradient through. */
static lt_status copy_fwd(lt_node_ctx *ctx, lt_err *err) {
  memcpy(ctx->out[0]->data, ctx->in[0]->data, lt_tensor_nbytes(ctx->in[0]));
  return LT_OK;
}
static lt_status copy_bwd(lt_node_ctx *ctx, lt_err *err) {
  lt_op_cpu_pass_grad((size_t)lt_tensor_numel(ctx->dout[0]), lt_tensor_f32(ctx->dout[0]),
                      lt_tensor_f32(ctx->din[0]), ctx->accumulate_in[0]);
  return LT_OK;
}

static lt_status reshape_infer(const lt_graph *g, const lt_node *n, lt_value *out, lt_err *err) {
  lt_status st = check_batched(g, n, err);
  if (st) return st;
  const lt_value *x = lt_op_in(g, n, 0);
  int64_t numel = lt_shape_numel(x->ndim, x->shape), known = 1;
  int infer_at = -1;
  char s[128];
  if (n->a.n_ints < 1 || n->a.n_ints >= LT_MAX_DIMS)
    return lt_op_fail(err, LT_ERR_INVALID, n, "target rank %d is outside 1..%d (per sample)",
                      n->a.n_ints, LT_MAX_DIMS - 1);
  out->dtype = x->dtype;
  out->ndim = n->a.n_ints;
  for (int d = 0; d < out->ndim; d++) {
    int64_t v = n->a.ints[d];
    if (v == 0 && d < x->ndim) v = x->shape[d]; /* ONNX: 0 copies the input's dim */
    if (v == -1) {
      if (infer_at >= 0)
        return lt_op_fail(err, LT_ERR_INVALID, n, "more than one -1 in the target shape");
      infer_at = d;
      v = 1;
    } else if (v < 1) {
      return lt_op_fail(err, LT_ERR_INVALID, n, "target dim %d is %lld", d, (long long)v);
    }
    out->shape[d] = v;
    known *= v;
  }
  if (infer_at >= 0 && known > 0 && numel % known == 0) out->shape[infer_at] = numel / known;
  if (lt_shape_numel(out->ndim, out->shape) != numel)
    return lt_op_fail(err, LT_ERR_INVALID, n, "cannot reshape %s (%lld elements per sample) to "
                      "the target shape",
                      lt_shape_str(x->ndim, x->shape, s, sizeof s), (long long)numel);
  return LT_OK;
}
const lt_op_desc lt_op_reshape = {.name = "Reshape", .min_in = 1, .max_in = 1,
                                  .infer = reshape_infer, .fwd_cpu = copy_fwd,
                                  .bwd_cpu = copy_bwd};

static lt_status flatten_infer(const lt_graph *g, const lt_node *n, lt_value *out, lt_err *err) {
  lt_status st = check_batched(g, n, err);
  if (st) return st;
  const lt_value *x = lt_op_in(g, n, 0);
  out->dtype = x->dtype;
  out->ndim = 1;
  out->shape[0] = lt_shape_numel(x->ndim, x->shape);
  return LT_OK;
}
const lt_op_desc lt_op_flatten = {.name = "Flatten", .min_in = 1, .max_in = 1,
                                  .infer = flatten_infer, .fwd_cpu = copy_fwd,
                                  .bwd_cpu = copy_bwd};

static lt_status identity_infer(const lt_graph *g, const lt_node *n, lt_value *out, lt_err *err) {
  lt_status st = check_batched(g, n, err);
  if (st) return st;
  lt_op_out_like(out, lt_op_in(g, n, 0));
  return LT_OK;
}
const lt_op_desc lt_op_identity = {.name = "Identity", .min_in = 1, .max_in = 1,
                                   .infer = identity_infer, .fwd_cpu = copy_fwd,
                                   .bwd_cpu = copy_bwd};

/* Transpose: ints = perm over the per-sample axes; the batch axis stays first. */
static lt_status transpose_infer(const lt_graph *g, const lt_node *n, lt_value *out,
                                 lt_err *err) {
  lt_status st = check_batched(g, n, err);
  if (st) return st;
  if ((st = check_kernel_rank(g, n, err))) return st;
  const lt_value *x = lt_op_in(g, n, 0);
  int seen[LT_MAX_DIMS] = {0};
  if (n->a.n_ints != x->ndim)
    return lt_op_fail(err, LT_ERR_INVALID, n, "perm has %d entries for per-sample rank %d",
                      n->a.n_ints, x->ndim);
  lt_op_out_like(out, x);
  for (int d = 0; d < x->ndim; d++) {
    int64_t p = n->a.ints[d];
    if (p < 0 || p >= x->ndim || seen[p]++)
      return lt_op_fail(err, LT_ERR_INVALID, n, "perm is not a permutation of 0..%d", x->ndim - 1);
    out->shape[d] = x->shape[p];
  }
  return LT_OK;
}

static void transpose_perm(const lt_node_ctx *ctx, int *perm, int inverse) {
  const lt_node *n = &ctx->g->nodes[ctx->node];
  perm[0] = 0;
  for (int d = 0; d < n->a.n_ints; d++) {
    if (inverse)
      perm[1 + n->a.ints[d]] = 1 + d;
    else
      perm[1 + d] = 1 + (int)n->a.ints[d];
  }
}

static size_t transpose_ws(const lt_graph *g, const lt_node *n, int batch) {
  /* Backward transposes into scratch when it must accumulate (the kernel only overwrites). */
  const lt_value *x = lt_op_in(g, n, 0);
  return (size_t)batch * (size_t)lt_shape_numel(x->ndim, x->shape) * lt_dtype_size(x->dtype);
}

static lt_status transpose_fwd(lt_node_ctx *ctx, lt_err *err) {
  int perm[LT_MAX_DIMS];
  transpose_perm(ctx, perm, 0);
  const lt_tensor *x = ctx->in[0];
  lt_cpu_transpose(x->ndim, x->shape, perm, ctx_elem(x), x->data, ctx->out[0]->data);
  return LT_OK;
}
static lt_status transpose_bwd(lt_node_ctx *ctx, lt_err *err) {
  int perm[LT_MAX_DIMS];
  transpose_perm(ctx, perm, 1);
  const lt_tensor *dy = ctx->dout[0];
  size_t count = (size_t)lt_tensor_numel(dy);
  float *dst = ctx->accumulate_in[0] ? (float *)ctx->ws : lt_tensor_f32(ctx->din[0]);
  lt_cpu_transpose(dy->ndim, dy->shape, perm, sizeof(float), dy->data, dst);
  if (ctx->accumulate_in[0]) lt_op_cpu_pass_grad(count, dst, lt_tensor_f32(ctx->din[0]), 1);
  return LT_OK;
}
const lt_op_desc lt_op_transpose = {.name = "Transpose", .min_in = 1, .max_in = 1,
                                    .infer = transpose_infer, .ws_cpu = transpose_ws,
                                    .fwd_cpu = transpose_fwd, .bwd_cpu = transpose_bwd};
