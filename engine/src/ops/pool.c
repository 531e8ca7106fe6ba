/* MaxPool2d, AvgPool2d, global average pool and Upsample: spatial ops on (C, H, W) per sample.
 * Max pooling saves its argmax (a uint8 index within the window) as LT_SAVE_POOL_ARGMAX, which a
 * stash policy may pack to 2 bits for 2x2 windows. */
#include "ops/ops.h"

static lt_status pool_infer(const lt_graph *g, const lt_node *n, lt_value *out, lt_err *err) {
  lt_status st = lt_op_check_f32(g, n, 0, 3, "input", err);
  if (st) return st;
  lt_pool_geom geom;
  if ((st = lt_op_pool_geom(g, n, 1, &geom, err))) return st;
  if (n->op == LT_OP_MAXPOOL && geom.kh * geom.kw > 256)
    return lt_op_fail(err, LT_ERR_UNSUPPORTED, n,
                      "window %dx%d has more than 256 positions; the argmax is stored as uint8",
                      geom.kh, geom.kw);
  out->dtype = LT_F32;
  out->ndim = 3;
  out->shape[0] = geom.c, out->shape[1] = geom.oh, out->shape[2] = geom.ow;
  return LT_OK;
}

static int maxpool_aux(const lt_graph *g, const lt_node *n, lt_mode mode, int batch,
                       lt_op_aux *out) {
  if (mode != LT_MODE_TRAIN) return 0;
  const lt_value *y = &g->values[n->out[0]];
  out[0] = (lt_op_aux){.dtype = LT_U8, .ndim = 4};
  lt_op_full_shape(y, batch, 4, out[0].shape);
  return 1;
}
static int maxpool_saves(const lt_graph *g, const lt_node *n, lt_op_save *out) {
  out[0] = (lt_op_save){LT_SAVE_SRC_AUX, 0, LT_SAVE_POOL_ARGMAX};
  return 1;
}

static lt_status ctx_pool_geom(const lt_node_ctx *ctx, lt_pool_geom *geom, lt_err *err) {
  return lt_op_pool_geom(ctx->g, &ctx->g->nodes[ctx->node], ctx->batch, geom, err);
}

static lt_status maxpool_fwd(lt_node_ctx *ctx, lt_err *err) {
  lt_pool_geom geom;
  lt_status st = ctx_pool_geom(ctx, &geom, err);
  if (st) return st;
  lt_cpu_maxpool_fwd(&geom, lt_tensor_f32(ctx->in[0]), lt_tensor_f32(ctx->out[0]),
                     ctx->mode == LT_MODE_TRAIN ? (uint8_t *)ctx->aux[0]->data : NULL);
  return LT_OK;
}
static lt_status maxpool_bwd(lt_node_ctx *ctx, lt_err *err) {
  lt_pool_geom geom;
  lt_status st = ctx_pool_geom(ctx, &geom, err);
  if (st) return st;
  lt_cpu_maxpool_bwd(&geom, (const uint8_t *)ctx->saved[0]->data, lt_tensor_f32(ctx->dout[0]),
                     lt_tensor_f32(ctx->din[0]), ctx->accumulate_in[0]);
  return LT_OK;
}
static lt_status avgpool_fwd(lt_node_ctx *ctx, lt_err *err) {
  lt_pool_geom geom;
  lt_status st = ctx_pool_geom(ctx, &geom, err);
  if (st) return st;
  lt_cpu_avgpool_fwd(&geom, lt_tensor_f32(ctx->in[0]), lt_tensor_f32(ctx->out[0]));
  return LT_OK;
}
static lt_status avgpool_bwd(lt_node_ctx *ctx, lt_err *err) {
  lt_pool_geom geom;
  lt_status st = ctx_pool_geom(ctx, &geom, err);
  if (st) return st;
  lt_cpu_avgpool_bwd(&geom, lt_tensor_f32(ctx->dout[0]), lt_tensor_f32(ctx->din[0]),
                     ctx->accumulate_in[0]);
  return LT_OK;
}

const lt_op_desc lt_op_maxpool = {
    .name = "MaxPool2d", .min_in = 1, .max_in = 1, .infer = pool_infer, .saves = maxpool_saves,
    .aux = maxpool_aux, .fwd_cpu = maxpool_fwd, .bwd_cpu = maxpool_bwd};
const lt_op_desc lt_op_avgpool = {.name = "AvgPool2d", .min_in = 1, .max_in = 1,
                                  .infer = pool_infer, .fwd_cpu = avgpool_fwd,
                                  .bwd_cpu = avgpool_bwd};

/* ---- global average pool: (C, H, W) -> (C, 1, 1) ------------------------------------------- */

static lt_status gap_infer(const lt_graph *g, const lt_node *n, lt_value *out, lt_err *err) {
  lt_status st = lt_op_check_f32(g, n, 0, 3, "input", err);
  if (st) return st;
  lt_op_out_like(out, lt_op_in(g, n, 0));
  out->shape[1] = out->shape[2] = 1;
  return LT_OK;
}
static lt_status gap_fwd(lt_node_ctx *ctx, lt_err *err) {
  const lt_tensor *x = ctx->in[0];
  lt_cpu_global_avgpool_fwd((int)x->shape[0], (int)x->shape[1], (int)(x->shape[2] * x->shape[3]),
                            lt_tensor_f32(x), lt_tensor_f32(ctx->out[0]));
  return LT_OK;
}
static lt_status gap_bwd(lt_node_ctx *ctx, lt_err *err) {
  const lt_tensor *x = ctx->in[0]; /* shape only: the data is not kept for backward */
  lt_cpu_global_avgpool_bwd((int)x->shape[0], (int)x->shape[1], (int)(x->shape[2] * x->shape[3]),
                            lt_tensor_f32(ctx->dout[0]), lt_tensor_f32(ctx->din[0]),
                            ctx->accumulate_in[0]);
  return LT_OK;
}
const lt_op_desc lt_op_global_avgpool = {.name = "GlobalAvgPool", .min_in = 1, .max_in = 1,
                                         .infer = gap_infer, .fwd_cpu = gap_fwd,
                                         .bwd_cpu = gap_bwd};

/* ---- upsample: (C, H, W) -> (C, out_h, out_w) ------------------------------------------------ */

static lt_status upsample_infer(const lt_graph *g, const lt_node *n, lt_value *out, lt_err *err) {
  lt_status st = lt_op_check_f32(g, n, 0, 3, "input", err);
  if (st) return st;
  if (n->a.out_h < 1 || n->a.out_w < 1)
    return lt_op_fail(err, LT_ERR_INVALID, n, "output size %dx%d must be set (attrs out_h, out_w)",
                      n->a.out_h, n->a.out_w);
  if (n->a.mode != LT_UPSAMPLE_NEAREST && n->a.mode != LT_UPSAMPLE_BILINEAR)
    return lt_op_fail(err, LT_ERR_UNSUPPORTED, n, "mode %d is neither nearest nor bilinear",
                      n->a.mode);
  lt_op_out_like(out, lt_op_in(g, n, 0));
  out->shape[1] = n->a.out_h, out->shape[2] = n->a.out_w;
  return LT_OK;
}
static lt_status upsample_fwd(lt_node_ctx *ctx, lt_err *err) {
  const lt_tensor *x = ctx->in[0];
  const lt_node_attrs *a = &ctx->g->nodes[ctx->node].a;
  lt_cpu_upsample_fwd((lt_upsample_mode)a->mode, a->align_corners, (int)x->shape[0],
                      (int)x->shape[1], (int)x->shape[2], (int)x->shape[3], a->out_h, a->out_w,
                      lt_tensor_f32(x), lt_tensor_f32(ctx->out[0]));
  return LT_OK;
}
static lt_status upsample_bwd(lt_node_ctx *ctx, lt_err *err) {
  const lt_tensor *x = ctx->in[0];
  const lt_node_attrs *a = &ctx->g->nodes[ctx->node].a;
  lt_cpu_upsample_bwd((lt_upsample_mode)a->mode, a->align_corners, (int)x->shape[0],
                      (int)x->shape[1], (int)x->shape[2], (int)x->shape[3], a->out_h, a->out_w,
                      lt_tensor_f32(ctx->dout[0]), lt_tensor_f32(ctx->din[0]),
                      ctx->accumulate_in[0]);
  return LT_OK;
}
const lt_op_desc lt_op_upsample = {.name = "Upsample", .min_in = 1, .max_in = 1,
                                   .infer = upsample_infer, .fwd_cpu = upsample_fwd,
                                   .bwd_cpu = upsample_bwd};
