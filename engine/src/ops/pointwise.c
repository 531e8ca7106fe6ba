/* BatchNorm2d and the pointwise activations (ReLU, LeakyReLU, Sigmoid, Tanh, Clip). Each saves
 * the cheapest exact thing its backward needs: ReLU its output (only the sign is read, so a
 * 1-bit mask is exact), Sigmoid/Tanh their output, LeakyReLU/Clip their input. */
#include <string.h>

#include "backend/cpu/kernels_fused.h"
#include "ops/fused.h"
#include "ops/ops.h"

/* ---- batch norm: x (C, ...) per sample; gamma, beta, running_mean, running_var (C) ---------- */

static lt_status bn_infer(const lt_graph *g, const lt_node *n, lt_value *out, lt_err *err) {
  lt_status st = lt_op_check_f32(g, n, 0, -1, "input", err);
  if (st) return st;
  const lt_value *x = lt_op_in(g, n, 0);
  if (x->ndim < 1) return lt_op_fail(err, LT_ERR_INVALID, n, "input has no channel axis");
  static const char *const what[] = {"", "gamma", "beta", "running_mean", "running_var"};
  for (int i = 1; i < 5; i++) {
    if ((st = lt_op_check_f32(g, n, i, 1, what[i], err))) return st;
    if (lt_op_in(g, n, i)->shape[0] != x->shape[0] || lt_value_batched(lt_op_in(g, n, i)))
      return lt_op_fail(err, LT_ERR_INVALID, n,
                        "%s must be a parameter of %lld elements (one per channel of the input)",
                        what[i], (long long)x->shape[0]);
  }
  if (!(n->a.eps > 0))
    return lt_op_fail(err, LT_ERR_INVALID, n, "eps %g must be > 0 (default 1e-5)", n->a.eps);
  lt_op_out_like(out, x);
  return LT_OK;
}

static int bn_saves(const lt_graph *g, const lt_node *n, lt_op_save *out) {
  out[0] = (lt_op_save){LT_SAVE_SRC_IN, 0, LT_SAVE_BN_INPUT};
  return 1;
}

/* Training mode keeps the batch mean and 1/std (C) for backward. */
static int bn_aux(const lt_graph *g, const lt_node *n, lt_mode mode, int batch, lt_op_aux *out) {
  if (mode != LT_MODE_TRAIN) return 0;
  for (int i = 0; i < 2; i++)
    out[i] = (lt_op_aux){.dtype = LT_F32, .ndim = 1, .shape = {lt_op_in(g, n, 0)->shape[0]}};
  return 2;
}

/* (n, c, hw) view of a (batch, C, ...) tensor. */
static void bn_dims(const lt_tensor *x, int *n, int *c, int *hw) {
  *n = (int)x->shape[0];
  *c = (int)x->shape[1];
  *hw = (int)(lt_tensor_numel(x) / ((int64_t)*n * *c));
}

/* Forward, with relu(y) written instead of y when relu is set (the executor's BN+ReLU fusion). */
static lt_status bn_fwd_impl(lt_node_ctx *ctx, int relu) {
  const lt_node_attrs *a = &ctx->g->nodes[ctx->node].a;
  int n, c, hw;
  bn_dims(ctx->in[0], &n, &c, &hw);
  float *const *p = (float *const[]){lt_tensor_f32(ctx->in[1]), lt_tensor_f32(ctx->in[2]),
                                     lt_tensor_f32(ctx->in[3]), lt_tensor_f32(ctx->in[4])};
  if (ctx->mode == LT_MODE_TRAIN)
    lt_cpu_bn_fwd_train_ex(n, c, hw, lt_tensor_f32(ctx->in[0]), p[0], p[1], a->eps, a->momentum,
                           lt_tensor_f32(ctx->out[0]), lt_tensor_f32(ctx->aux[0]),
                           lt_tensor_f32(ctx->aux[1]), p[2], p[3], relu);
  else
    lt_cpu_bn_fwd_infer_ex(n, c, hw, lt_tensor_f32(ctx->in[0]), p[0], p[1], p[2], p[3], a->eps,
                           lt_tensor_f32(ctx->out[0]), relu);
  return LT_OK;
}
static lt_status bn_fwd(lt_node_ctx *ctx, lt_err *err) { return bn_fwd_impl(ctx, 0); }
lt_status lt_op_bn_fwd_relu(lt_node_ctx *ctx, lt_err *err) { return bn_fwd_impl(ctx, 1); }

static lt_status bn_bwd_impl(lt_node_ctx *ctx, const lt_tensor *relu_y) {
  int n, c, hw;
  bn_dims(ctx->saved[0], &n, &c, &hw);
  float *dx = ctx->din[0] ? lt_tensor_f32(ctx->din[0]) : NULL;
  float *dg = ctx->din[1] ? lt_tensor_f32(ctx->din[1]) : NULL;
  float *db = ctx->din[2] ? lt_tensor_f32(ctx->din[2]) : NULL;
  float *const gb[2] = {dg, db};
  int acc_p = dg ? ctx->accumulate_in[1] : ctx->accumulate_in[2];
  /* dgamma and dbeta share one flag in the kernel: when they differ (one fresh, one
   * accumulating), run the fresh one through a zeroed accumulation. */
  if (dg && db && ctx->accumulate_in[1] != ctx->accumulate_in[2]) {
    float *fresh = gb[ctx->accumulate_in[1] ? 1 : 0];
    memset(fresh, 0, sizeof(float) * (size_t)c);
    acc_p = 1;
  }
  lt_cpu_bn_bwd_ex(n, c, hw, lt_tensor_f32(ctx->saved[0]), lt_tensor_f32(ctx->dout[0]),
                   relu_y ? lt_tensor_f32(relu_y) : NULL, lt_tensor_f32(ctx->in[1]),
                   lt_tensor_f32(ctx->aux[0]), lt_tensor_f32(ctx->aux[1]), dx,
                   dx ? ctx->accumulate_in[0] : 0, dg, db, acc_p);
  return LT_OK;
}
static lt_status bn_bwd(lt_node_ctx *ctx, lt_err *err) { return bn_bwd_impl(ctx, NULL); }
lt_status lt_op_bn_bwd_relu(lt_node_ctx *ctx, const lt_tensor *relu_y, lt_err *err) {
  return bn_bwd_impl(ctx, relu_y);
}

const lt_op_desc lt_op_batchnorm = {
    .name = "BatchNorm2d", .min_in = 5, .max_in = 5, .infer = bn_infer, .param_slots = 0x6,
    .saves = bn_saves, .aux = bn_aux, .fwd_cpu = bn_fwd, .bwd_cpu = bn_bwd};

/* ---- pointwise activations -------------------------------------------------------------------- */

static lt_status pointwise_infer(const lt_graph *g, const lt_node *n, lt_value *out, lt_err *err) {
  lt_status st = lt_op_check_f32(g, n, 0, -1, "input", err);
  if (st) return st;
  if (n->op == LT_OP_CLIP && !(n->a.lo <= n->a.hi))
    return lt_op_fail(err, LT_ERR_INVALID, n, "clip range [%g, %g] is empty", n->a.lo, n->a.hi);
  lt_op_out_like(out, lt_op_in(g, n, 0));
  return LT_OK;
}

static int saves_output(const lt_graph *g, const lt_node *n, lt_op_save *out) {
  out[0] = (lt_op_save){LT_SAVE_SRC_OUT, 0, LT_SAVE_EXACT};
  return 1;
}
static int saves_input(const lt_graph *g, const lt_node *n, lt_op_save *out) {
  out[0] = (lt_op_save){LT_SAVE_SRC_IN, 0, LT_SAVE_EXACT};
  return 1;
}
static int relu_saves(const lt_graph *g, const lt_node *n, lt_op_save *out) {
  out[0] = (lt_op_save){LT_SAVE_SRC_OUT, 0, LT_SAVE_RELU_OUTPUT};
  return 1;
}

static size_t ctx_count(const lt_node_ctx *ctx) { return (size_t)lt_tensor_numel(ctx->out[0]); }
static const float *in0(const lt_node_ctx *ctx) { return lt_tensor_f32(ctx->in[0]); }
static float *out0(const lt_node_ctx *ctx) { return lt_tensor_f32(ctx->out[0]); }
static const float *saved0(const lt_node_ctx *ctx) { return lt_tensor_f32(ctx->saved[0]); }
static const float *dy0(const lt_node_ctx *ctx) { return lt_tensor_f32(ctx->dout[0]); }
static float *dx0(const lt_node_ctx *ctx) { return lt_tensor_f32(ctx->din[0]); }
static const lt_node_attrs *attrs(const lt_node_ctx *ctx) { return &ctx->g->nodes[ctx->node].a; }

static lt_status relu_fwd(lt_node_ctx *c, lt_err *e) {
  lt_cpu_relu_fwd(ctx_count(c), in0(c), out0(c));
  return LT_OK;
}
static lt_status relu_bwd(lt_node_ctx *c, lt_err *e) {
  lt_cpu_relu_bwd(ctx_count(c), saved0(c), dy0(c), dx0(c), c->accumulate_in[0]);
  return LT_OK;
}
static lt_status leaky_fwd(lt_node_ctx *c, lt_err *e) {
  lt_cpu_leaky_relu_fwd(ctx_count(c), attrs(c)->alpha, in0(c), out0(c));
  return LT_OK;
}
static lt_status leaky_bwd(lt_node_ctx *c, lt_err *e) {
  lt_cpu_leaky_relu_bwd(ctx_count(c), attrs(c)->alpha, saved0(c), dy0(c), dx0(c),
                        c->accumulate_in[0]);
  return LT_OK;
}
static lt_status sigmoid_fwd(lt_node_ctx *c, lt_err *e) {
  lt_cpu_sigmoid_fwd(ctx_count(c), in0(c), out0(c));
  return LT_OK;
}
static lt_status sigmoid_bwd(lt_node_ctx *c, lt_err *e) {
  lt_cpu_sigmoid_bwd(ctx_count(c), saved0(c), dy0(c), dx0(c), c->accumulate_in[0]);
  return LT_OK;
}
static lt_status tanh_fwd(lt_node_ctx *c, lt_err *e) {
  lt_cpu_tanh_fwd(ctx_count(c), in0(c), out0(c));
  return LT_OK;
}
static lt_status tanh_bwd(lt_node_ctx *c, lt_err *e) {
  lt_cpu_tanh_bwd(ctx_count(c), saved0(c), dy0(c), dx0(c), c->accumulate_in[0]);
  return LT_OK;
}
static lt_status clip_fwd(lt_node_ctx *c, lt_err *e) {
  lt_cpu_clip_fwd(ctx_count(c), attrs(c)->lo, attrs(c)->hi, in0(c), out0(c));
  return LT_OK;
}
static lt_status clip_bwd(lt_node_ctx *c, lt_err *e) {
  lt_cpu_clip_bwd(ctx_count(c), attrs(c)->lo, attrs(c)->hi, saved0(c), dy0(c), dx0(c),
                  c->accumulate_in[0]);
  return LT_OK;
}

#define POINTWISE(sym, nm, sv, f, b)                                                               \
  const lt_op_desc sym = {.name = nm, .min_in = 1, .max_in = 1, .infer = pointwise_infer,         \
                          .saves = sv, .fwd_cpu = f, .bwd_cpu = b}
POINTWISE(lt_op_relu, "Relu", relu_saves, relu_fwd, relu_bwd);
POINTWISE(lt_op_leaky_relu, "LeakyRelu", saves_input, leaky_fwd, leaky_bwd);
POINTWISE(lt_op_sigmoid, "Sigmoid", saves_output, sigmoid_fwd, sigmoid_bwd);
POINTWISE(lt_op_tanh, "Tanh", saves_output, tanh_fwd, tanh_bwd);
POINTWISE(lt_op_clip, "Clip", saves_input, clip_fwd, clip_bwd);

/* ---- softmax over the last axis ---------------------------------------------------------------- */

static lt_status softmax_fwd(lt_node_ctx *c, lt_err *e) {
  const lt_tensor *x = c->in[0];
  int k = (int)x->shape[x->ndim - 1];
  lt_cpu_softmax_fwd((int)(lt_tensor_numel(x) / k), k, in0(c), out0(c));
  return LT_OK;
}
static lt_status softmax_bwd(lt_node_ctx *c, lt_err *e) {
  const lt_tensor *y = c->saved[0];
  int k = (int)y->shape[y->ndim - 1];
  lt_cpu_softmax_bwd((int)(lt_tensor_numel(y) / k), k, saved0(c), dy0(c), dx0(c),
                     c->accumulate_in[0]);
  return LT_OK;
}
POINTWISE(lt_op_softmax, "Softmax", saves_output, softmax_fwd, softmax_bwd);

/* ---- dropout: mask bits from the counter-based RNG keyed by (seed, node, step) ---------------- */

static lt_status dropout_infer(const lt_graph *g, const lt_node *n, lt_value *out, lt_err *err) {
  if (!(n->a.p >= 0 && n->a.p < 1))
    return lt_op_fail(err, LT_ERR_INVALID, n, "drop probability %g must be in [0, 1)", n->a.p);
  return pointwise_infer(g, n, out, err);
}

static int dropout_aux(const lt_graph *g, const lt_node *n, lt_mode mode, int batch,
                       lt_op_aux *out) {
  if (mode != LT_MODE_TRAIN) return 0;
  const lt_value *x = lt_op_in(g, n, 0);
  int64_t count = (int64_t)batch * lt_shape_numel(x->ndim, x->shape);
  out[0] = (lt_op_aux){.dtype = LT_U8, .ndim = 1, .shape = {(count + 7) / 8}};
  return 1;
}
static int dropout_saves(const lt_graph *g, const lt_node *n, lt_op_save *out) {
  out[0] = (lt_op_save){LT_SAVE_SRC_AUX, 0, LT_SAVE_EXACT};
  return 1;
}

static lt_status dropout_fwd(lt_node_ctx *c, lt_err *e) {
  if (c->mode != LT_MODE_TRAIN) {
    lt_op_cpu_pass_grad(ctx_count(c), in0(c), out0(c), 0);
    return LT_OK;
  }
  /* The stream folds node and step together so that every node and every step draws afresh. */
  uint64_t stream = (c->step << 20) ^ (uint64_t)c->node;
  lt_cpu_dropout_fwd(ctx_count(c), attrs(c)->p, c->seed, stream, in0(c), out0(c),
                     (uint8_t *)c->aux[0]->data);
  return LT_OK;
}
static lt_status dropout_bwd(lt_node_ctx *c, lt_err *e) {
  lt_cpu_dropout_bwd(ctx_count(c), attrs(c)->p, (const uint8_t *)c->saved[0]->data, dy0(c),
                     dx0(c), c->accumulate_in[0]);
  return LT_OK;
}

const lt_op_desc lt_op_dropout = {
    .name = "Dropout", .min_in = 1, .max_in = 1, .infer = dropout_infer, .saves = dropout_saves,
    .aux = dropout_aux, .fwd_cpu = dropout_fwd, .bwd_cpu = dropout_bwd};
