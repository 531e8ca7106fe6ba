/* Fused CPU entry points the executor uses when a ReLU is the only consumer of a node's output
 * (see lt_exec_opts.no_fuse). The graph keeps both nodes: the head node's kernel writes the
 * ReLU's output directly, the ReLU's forward is skipped, and backward runs unchanged (the ReLU's
 * saved output and the head's saved tensors are exactly those of the unfused run). Internal to
 * liblathe. */
#ifndef LATHE_OPS_FUSED_H
#define LATHE_OPS_FUSED_H

#include "ops/ops.h"

/* 1 when node n can compute relu(its output) in one pass on the CPU at this batch: BatchNorm2d,
 * and Add of two operands of one shape. */
int lt_op_cpu_relu_fusable(const lt_graph *g, const lt_node *n);
/* Runs node ctx->node forward with ReLU applied, writing ctx->out[0] (the ReLU's output). */
lt_status lt_op_cpu_fwd_relu(lt_node_ctx *ctx, lt_err *err);
/* Backward of the pair: ctx->dout[0] is the ReLU's output gradient and relu_y its saved output;
 * writes the head node's input (and parameter) gradients as the two backwards in turn would. */
lt_status lt_op_cpu_bwd_relu(lt_node_ctx *ctx, const lt_tensor *relu_y, lt_err *err);

/* Per-op fused forwards, by op file. */
lt_status lt_op_bn_fwd_relu(lt_node_ctx *ctx, lt_err *err);
lt_status lt_op_add_fwd_relu(lt_node_ctx *ctx, lt_err *err);
lt_status lt_op_bn_bwd_relu(lt_node_ctx *ctx, const lt_tensor *relu_y, lt_err *err);
lt_status lt_op_add_bwd_relu(lt_node_ctx *ctx, const lt_tensor *relu_y, lt_err *err);
int lt_op_add_flat(const lt_graph *g, const lt_node *n);
/* Inference forward of a Conv2d writing act(conv + bias + res) (res: NULL or a tensor of the
 * output's shape; act: ReLU when relu): a folded BatchNorm's ReLU, or the residual Add (and its
 * ReLU) after the conv. The executor may supply folded weight and bias in ctx->in[1], ctx->in[2]. */
lt_status lt_op_conv_fwd_infer_epi(lt_node_ctx *ctx, const lt_tensor *res, int relu,
                                   lt_err *err);

#endif
