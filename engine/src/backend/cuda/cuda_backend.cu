/* The CUDA backend: lt_backend_vtbl over one device. Memory comes from CUDA's stream-ordered pool
 * (cudaMallocAsync on the backend's stream, cached, never returned to the driver mid-run) and is
 * counted per category with lt_mem_account, as the CPU backend counts lt_alloc. Every node runs on
 * the backend's one stream; to_host synchronises, everything else is asynchronous.
 *
 * Matrix products run in full float32 (the CPU's precision, what the conformance test checks);
 * LATHE_CUDA_TF32=1 in the environment lets cuBLAS use TF32 tensor cores instead, as PyTorch's
 * cuDNN convolutions do by default.
 *
 * Each op's glue mirrors its fwd_cpu/bwd_cpu in ops/ (same geometry helpers, same handling of
 * accumulate flags) and calls the lt_cuda_* twin of the CPU kernel. Ops keep their shape logic in
 * ops/; what is here is only the mapping from a node context to kernel arguments.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/cuda_common.cuh"

extern "C" {
#include "ops/ops.h"
}

/* ---- per-thread kernel context and the first-error record ---------------------------------- */

thread_local cudaStream_t lt_cuda_stream;
thread_local cublasHandle_t lt_cuda_cublas;

static thread_local char err_what[160], err_where[200];
static thread_local int err_set;

void lt_cuda_record(const char *what, const char *file, int line) {
  if (err_set) return; /* the first failure is the cause; later ones are consequences */
  snprintf(err_what, sizeof err_what, "%s", what);
  snprintf(err_where, sizeof err_where, "%s:%d", file, line);
  err_set = 1;
}

extern "C" void lt_cuda_ctx_set(void *stream, void *cublas) {
  lt_cuda_stream = (cudaStream_t)stream;
  lt_cuda_cublas = (cublasHandle_t)cublas;
}

extern "C" lt_status lt_cuda_take_error(lt_err *err) {
  /* A launch error not yet seen by a CHECK (the last kernel of a node) surfaces here too. */
  cudaError_t e = cudaGetLastError();
  if (!err_set && e != cudaSuccess) lt_cuda_record(cudaGetErrorName(e), __FILE__, __LINE__);
  if (!err_set) return LT_OK;
  err_set = 0;
  return lt_errorf(err, LT_ERR_INTERNAL, "CUDA: %s at %s", err_what, err_where);
}

/* ---- the backend object -------------------------------------------------------------------- */

typedef struct cuda_backend {
  lt_backend base; /* base.impl points back here */
  cudaStream_t stream;
  cublasHandle_t cublas;
  cudaMemPool_t pool;
} cuda_backend;

/* Through impl, not a cast: a wrapper that copies the lt_backend (a test's spy) still works. */
static cuda_backend *cb(lt_backend *be) { return (cuda_backend *)be->impl; }

/* Makes this thread's CUDA calls go to the backend's device, stream and cuBLAS handle. */
static lt_status cuda_enter(lt_backend *be, lt_err *err) {
  CHECK_CUDA_ST(cudaSetDevice(be->device), err);
  lt_cuda_ctx_set(cb(be)->stream, cb(be)->cublas);
  return LT_OK;
}

extern "C" lt_status lt_cuda_backend_enter(lt_backend *be, lt_err *err) {
  return cuda_enter(be, err);
}

/* Ops whose data-movement kernels index with LT_KMAX_DIMS-dim shapes. */
static int fits_kmax(const lt_graph *g, const lt_node *n) {
  for (int i = 0; i < n->n_in; i++) {
    const lt_value *v = lt_op_in(g, n, i);
    if (v->ndim + (lt_value_batched(v) ? 1 : 0) > LT_KMAX_DIMS) return 0;
  }
  const lt_value *y = &g->values[n->out[0]];
  return y->ndim + 1 <= LT_KMAX_DIMS;
}

static int cuda_supports(lt_backend *be, const lt_graph *g, int node) {
  const lt_node *n = &g->nodes[node];
  switch (n->op) {
  case LT_OP_CONV2D: case LT_OP_CONV_TRANSPOSE2D: case LT_OP_LINEAR: case LT_OP_BATCHNORM:
  case LT_OP_RELU: case LT_OP_LEAKY_RELU: case LT_OP_SIGMOID: case LT_OP_TANH: case LT_OP_CLIP:
  case LT_OP_MAXPOOL: case LT_OP_AVGPOOL: case LT_OP_GLOBAL_AVGPOOL: case LT_OP_UPSAMPLE:
  case LT_OP_DROPOUT: case LT_OP_SOFTMAX: case LT_OP_CONCAT: case LT_OP_RESHAPE:
  case LT_OP_FLATTEN: case LT_OP_IDENTITY:
    return 1;
  case LT_OP_ADD: case LT_OP_SUB: case LT_OP_MUL: case LT_OP_DIV: case LT_OP_SLICE:
  case LT_OP_PAD: case LT_OP_TRANSPOSE:
    return fits_kmax(g, n);
  default:
    return 0;
  }
}

static void *cuda_alloc(lt_backend *be, size_t bytes, lt_mem_cat cat, lt_err *err) {
  void *p = NULL;
  if (cuda_enter(be, err)) return NULL;
  cudaError_t e = cudaMallocAsync(&p, bytes ? bytes : 1, cb(be)->stream);
  if (e != cudaSuccess) {
    lt_errorf(err, LT_ERR_NOMEM, "CUDA: cannot allocate %zu bytes of %s on device %d: %s; use a "
              "smaller batch", bytes, lt_mem_cat_name(cat), be->device, cudaGetErrorString(e));
    return NULL;
  }
  lt_mem_account(cat, (int64_t)bytes);
  return p;
}

static void cuda_free(lt_backend *be, void *p, size_t bytes, lt_mem_cat cat) {
  if (!p) return;
  if (cudaSetDevice(be->device) == cudaSuccess) cudaFreeAsync(p, cb(be)->stream);
  lt_mem_account(cat, -(int64_t)bytes);
}

static lt_status cuda_to_device(lt_backend *be, void *dst, const void *src, size_t bytes,
                                lt_err *err) {
  lt_status st = cuda_enter(be, err);
  if (st || !bytes) return st;
  /* Synchronous with respect to the host buffer: the caller may reuse it on return. */
  CHECK_CUDA_ST(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, cb(be)->stream), err);
  CHECK_CUDA_ST(cudaStreamSynchronize(cb(be)->stream), err);
  return LT_OK;
}

static lt_status cuda_to_host(lt_backend *be, void *dst, const void *src, size_t bytes,
                              lt_err *err) {
  lt_status st = cuda_enter(be, err);
  if (st || !bytes) return st;
  CHECK_CUDA_ST(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, cb(be)->stream), err);
  CHECK_CUDA_ST(cudaStreamSynchronize(cb(be)->stream), err);
  return LT_OK;
}

static lt_status cuda_memset0(lt_backend *be, void *p, size_t bytes, lt_err *err) {
  lt_status st = cuda_enter(be, err);
  if (st || !bytes) return st;
  CHECK_CUDA_ST(cudaMemsetAsync(p, 0, bytes, cb(be)->stream), err);
  return LT_OK;
}

static size_t cuda_workspace_bytes(lt_backend *be, const lt_graph *g, int node, int batch) {
  const lt_node *n = &g->nodes[node];
  lt_conv_geom geom;
  switch (n->op) {
  case LT_OP_CONV2D:
    return lt_op_conv_geom(g, n, batch, 0, &geom, NULL) ? 0 : lt_cuda_conv2d_workspace(&geom);
  case LT_OP_CONV_TRANSPOSE2D:
    return lt_op_conv_geom(g, n, batch, 1, &geom, NULL) ? 0
                                                        : lt_cuda_conv_transpose2d_workspace(&geom);
  case LT_OP_TRANSPOSE: { /* backward transposes into scratch when it must accumulate */
    const lt_value *x = lt_op_in(g, n, 0);
    return (size_t)batch * (size_t)lt_shape_numel(x->ndim, x->shape) * lt_dtype_size(x->dtype);
  }
  default:
    return 0;
  }
}

/* ---- op glue ------------------------------------------------------------------------------- */

static const lt_node *ctx_node(const lt_node_ctx *c) { return &c->g->nodes[c->node]; }
static float *f32(const lt_tensor *t) { return t ? lt_tensor_f32(t) : NULL; }
static float *din(const lt_node_ctx *c, int i) {
  return i < ctx_node(c)->n_in && c->din[i] ? lt_tensor_f32(c->din[i]) : NULL;
}
static size_t out_count(const lt_node_ctx *c) { return (size_t)lt_tensor_numel(c->out[0]); }
/* dW and db share one accumulate flag in the kernels, as on the CPU. */
static int param_acc(const lt_node_ctx *c) {
  return c->din[1] ? c->accumulate_in[1] : c->accumulate_in[2];
}

static lt_status conv_run(lt_node_ctx *c, int transpose, int backward, lt_err *err) {
  lt_conv_geom geom;
  lt_status st = lt_op_conv_geom(c->g, ctx_node(c), c->batch, transpose, &geom, err);
  if (st) return st;
  const float *w = f32(c->in[1]);
  if (!backward) {
    const float *b = ctx_node(c)->n_in > 2 ? f32(c->in[2]) : NULL;
    (transpose ? lt_cuda_conv_transpose2d_fwd : lt_cuda_conv2d_fwd)(&geom, f32(c->in[0]), w, b,
                                                                     f32(c->out[0]), c->ws);
    return LT_OK;
  }
  const float *dy = f32(c->dout[0]);
  float *dx = din(c, 0), *dw = din(c, 1), *db = din(c, 2);
  if (dx)
    (transpose ? lt_cuda_conv_transpose2d_bwd_data : lt_cuda_conv2d_bwd_data)(
        &geom, dy, w, dx, c->accumulate_in[0], c->ws);
  if (dw || db)
    (transpose ? lt_cuda_conv_transpose2d_bwd_filter : lt_cuda_conv2d_bwd_filter)(
        &geom, f32(c->saved[0]), dy, dw, db, param_acc(c), c->ws);
  return LT_OK;
}

static lt_status linear_run(lt_node_ctx *c, int backward) {
  const lt_tensor *w = c->in[1], *x = c->in[0];
  const int rows = (int)(lt_tensor_numel(x) / x->shape[x->ndim - 1]);
  const int k = (int)w->shape[1], m = (int)w->shape[0];
  if (!backward) {
    lt_cuda_linear_fwd(rows, k, m, f32(x), f32(w), ctx_node(c)->n_in > 2 ? f32(c->in[2]) : NULL,
                       f32(c->out[0]));
    return LT_OK;
  }
  const float *dy = f32(c->dout[0]);
  float *dx = din(c, 0), *dw = din(c, 1), *db = din(c, 2);
  const float *xs = (dw || db) ? f32(c->saved[0]) : NULL;
  /* one accumulate flag per call: dX and the parameter gradients go separately when they differ */
  if (dx && (dw || db) && c->accumulate_in[0] != param_acc(c)) {
    lt_cuda_linear_bwd(rows, k, m, xs, f32(w), dy, dx, NULL, NULL, c->accumulate_in[0]);
    dx = NULL;
  }
  if (dx || dw || db)
    lt_cuda_linear_bwd(rows, k, m, xs, f32(w), dy, dx, dw, db,
                       dx ? c->accumulate_in[0] : param_acc(c));
  return LT_OK;
}

static lt_status bn_run(lt_node_ctx *c, int backward, lt_err *err) {
  const lt_node_attrs *a = &ctx_node(c)->a;
  const lt_tensor *x = backward ? c->saved[0] : c->in[0];
  const int n = (int)x->shape[0], ch = (int)x->shape[1];
  const int hw = (int)(lt_tensor_numel(x) / ((int64_t)n * ch));
  if (!backward) {
    if (c->mode == LT_MODE_TRAIN)
      lt_cuda_bn_fwd_train(n, ch, hw, f32(x), f32(c->in[1]), f32(c->in[2]), a->eps, a->momentum,
                           f32(c->out[0]), f32(c->aux[0]), f32(c->aux[1]), f32(c->in[3]),
                           f32(c->in[4]));
    else
      lt_cuda_bn_fwd_infer(n, ch, hw, f32(x), f32(c->in[1]), f32(c->in[2]), f32(c->in[3]),
                           f32(c->in[4]), a->eps, f32(c->out[0]));
    return LT_OK;
  }
  float *dx = din(c, 0), *dg = din(c, 1), *db = din(c, 2);
  const int acc_p = dg ? c->accumulate_in[1] : c->accumulate_in[2];
  int acc = dx ? c->accumulate_in[0] : acc_p;
  /* one flag for dx, dgamma and dbeta: clear a fresh dx and accumulate everything */
  if (dx && (dg || db) && acc != acc_p) {
    CHECK_CUDA_ST(cudaMemsetAsync(dx, 0, lt_tensor_nbytes(c->din[0]), lt_cuda_stream), err);
    acc = 1;
  }
  lt_cuda_bn_bwd(n, ch, hw, f32(x), f32(c->dout[0]), f32(c->in[1]), f32(c->aux[0]),
                 f32(c->aux[1]), dx, dg, db, acc);
  return LT_OK;
}

static lt_status pointwise_run(lt_node_ctx *c, int backward) {
  const lt_node_attrs *a = &ctx_node(c)->a;
  const size_t count = out_count(c);
  if (!backward) {
    const float *x = f32(c->in[0]);
    float *y = f32(c->out[0]);
    switch (ctx_node(c)->op) {
    case LT_OP_RELU: lt_cuda_relu_fwd(count, x, y); break;
    case LT_OP_LEAKY_RELU: lt_cuda_leaky_relu_fwd(count, a->alpha, x, y); break;
    case LT_OP_SIGMOID: lt_cuda_sigmoid_fwd(count, x, y); break;
    case LT_OP_TANH: lt_cuda_tanh_fwd(count, x, y); break;
    default: lt_cuda_clip_fwd(count, a->lo, a->hi, x, y); break;
    }
    return LT_OK;
  }
  const float *s = f32(c->saved[0]), *dy = f32(c->dout[0]);
  float *dx = din(c, 0);
  const int acc = c->accumulate_in[0];
  switch (ctx_node(c)->op) {
  case LT_OP_RELU: lt_cuda_relu_bwd(count, s, dy, dx, acc); break;
  case LT_OP_LEAKY_RELU: lt_cuda_leaky_relu_bwd(count, a->alpha, s, dy, dx, acc); break;
  case LT_OP_SIGMOID: lt_cuda_sigmoid_bwd(count, s, dy, dx, acc); break;
  case LT_OP_TANH: lt_cuda_tanh_bwd(count, s, dy, dx, acc); break;
  default: lt_cuda_clip_bwd(count, a->lo, a->hi, s, dy, dx, acc); break;
  }
  return LT_OK;
}

static lt_status softmax_run(lt_node_ctx *c, int backward) {
  const lt_tensor *t = backward ? c->saved[0] : c->in[0];
  const int k = (int)t->shape[t->ndim - 1], rows = (int)(lt_tensor_numel(t) / k);
  if (!backward)
    lt_cuda_softmax_fwd(rows, k, f32(t), f32(c->out[0]));
  else
    lt_cuda_softmax_bwd(rows, k, f32(t), f32(c->dout[0]), din(c, 0), c->accumulate_in[0]);
  return LT_OK;
}

static lt_status dropout_run(lt_node_ctx *c, int backward) {
  const float p = ctx_node(c)->a.p;
  if (backward) {
    lt_cuda_dropout_bwd(out_count(c), p, (const uint8_t *)c->saved[0]->data, f32(c->dout[0]),
                        din(c, 0), c->accumulate_in[0]);
    return LT_OK;
  }
  if (c->mode != LT_MODE_TRAIN) {
    lt_cuda_pass_grad(out_count(c), f32(c->in[0]), f32(c->out[0]), 0);
    return LT_OK;
  }
  /* the same (seed, stream) as dropout_fwd in ops/pointwise.c, so masks match the CPU's */
  const uint64_t stream = (c->step << 20) ^ (uint64_t)c->node;
  lt_cuda_dropout_fwd(out_count(c), p, c->seed, stream, f32(c->in[0]), f32(c->out[0]),
                      (uint8_t *)c->aux[0]->data);
  return LT_OK;
}

static lt_status pool_run(lt_node_ctx *c, int backward, lt_err *err) {
  const lt_node *n = ctx_node(c);
  if (n->op == LT_OP_GLOBAL_AVGPOOL) {
    const lt_tensor *x = c->in[0]; /* shape only in backward */
    const int nn = (int)x->shape[0], ch = (int)x->shape[1], hw = (int)(x->shape[2] * x->shape[3]);
    if (!backward)
      lt_cuda_global_avgpool_fwd(nn, ch, hw, f32(x), f32(c->out[0]));
    else
      lt_cuda_global_avgpool_bwd(nn, ch, hw, f32(c->dout[0]), din(c, 0), c->accumulate_in[0]);
    return LT_OK;
  }
  if (n->op == LT_OP_UPSAMPLE) {
    const lt_tensor *x = c->in[0];
    const lt_node_attrs *a = &n->a;
    const int nn = (int)x->shape[0], ch = (int)x->shape[1], h = (int)x->shape[2],
              w = (int)x->shape[3];
    if (!backward)
      lt_cuda_upsample_fwd((lt_upsample_mode)a->mode, a->align_corners, nn, ch, h, w, a->out_h,
                           a->out_w, f32(x), f32(c->out[0]));
    else
      lt_cuda_upsample_bwd((lt_upsample_mode)a->mode, a->align_corners, nn, ch, h, w, a->out_h,
                           a->out_w, f32(c->dout[0]), din(c, 0), c->accumulate_in[0]);
    return LT_OK;
  }
  lt_pool_geom geom;
  lt_status st = lt_op_pool_geom(c->g, n, c->batch, &geom, err);
  if (st) return st;
  if (n->op == LT_OP_MAXPOOL) {
    if (!backward)
      lt_cuda_maxpool_fwd(&geom, f32(c->in[0]), f32(c->out[0]),
                          c->mode == LT_MODE_TRAIN ? (uint8_t *)c->aux[0]->data : NULL);
    else
      lt_cuda_maxpool_bwd(&geom, (const uint8_t *)c->saved[0]->data, f32(c->dout[0]), din(c, 0),
                          c->accumulate_in[0]);
  } else if (!backward) {
    lt_cuda_avgpool_fwd(&geom, f32(c->in[0]), f32(c->out[0]));
  } else {
    lt_cuda_avgpool_bwd(&geom, f32(c->dout[0]), din(c, 0), c->accumulate_in[0]);
  }
  return LT_OK;
}

/* Right-aligns t's full shape against `nd` dims (leading 1s; a constant's extra leading dims are
 * 1 by shape inference), the broadcast layout lt_cpu_binary_* take. */
static void binary_shape(const lt_tensor *t, int nd, int64_t *s) {
  for (int d = 0; d < nd; d++) {
    const int src = t->ndim - nd + d;
    s[d] = src >= 0 ? t->shape[src] : 1;
  }
}

static lt_binary_op binary_kind(lt_op_type op) {
  switch (op) {
  case LT_OP_SUB: return LT_BIN_SUB;
  case LT_OP_MUL: return LT_BIN_MUL;
  case LT_OP_DIV: return LT_BIN_DIV;
  default: return LT_BIN_ADD;
  }
}

static lt_status binary_run(lt_node_ctx *c, int backward) {
  const lt_tensor *y = c->out[0];
  const int nd = y->ndim;
  int64_t as[LT_KMAX_DIMS], bs[LT_KMAX_DIMS], ys[LT_KMAX_DIMS];
  binary_shape(c->in[0], nd, as);
  binary_shape(c->in[1], nd, bs);
  binary_shape(y, nd, ys);
  const lt_binary_op op = binary_kind(ctx_node(c)->op);
  if (!backward) {
    lt_cuda_binary_fwd(op, nd, as, f32(c->in[0]), bs, f32(c->in[1]), ys, f32(c->out[0]));
    return LT_OK;
  }
  const int needs = op == LT_BIN_MUL || op == LT_BIN_DIV;
  const float *a = needs ? f32(c->saved[0]) : NULL, *b = needs ? f32(c->saved[1]) : NULL;
  const float *dy = f32(c->dout[0]);
  float *da = din(c, 0), *db = din(c, 1);
  if (da && db && c->accumulate_in[0] != c->accumulate_in[1]) {
    lt_cuda_binary_bwd(op, nd, as, a, bs, b, ys, dy, da, NULL, c->accumulate_in[0]);
    da = NULL;
  }
  if (da || db)
    lt_cuda_binary_bwd(op, nd, as, a, bs, b, ys, dy, da, db,
                       da ? c->accumulate_in[0] : c->accumulate_in[1]);
  return LT_OK;
}

static lt_status concat_run(lt_node_ctx *c, int backward) {
  const lt_node *n = ctx_node(c);
  const lt_tensor *y = c->out[0];
  const int r = y->ndim - 1;
  const int ax = (n->a.axis < 0 ? n->a.axis + r : n->a.axis) + 1;
  const int64_t outer = lt_shape_numel(ax, y->shape);
  const int64_t inner = lt_shape_numel(y->ndim - ax - 1, y->shape + ax + 1);
  int64_t sizes[LT_MAX_IO];
  for (int i = 0; i < n->n_in; i++) sizes[i] = c->in[i]->shape[ax];
  if (!backward) {
    const void *ins[LT_MAX_IO];
    for (int i = 0; i < n->n_in; i++) ins[i] = c->in[i]->data;
    lt_cuda_concat(n->n_in, ins, sizes, outer, inner, lt_dtype_size(y->dtype), y->data);
    return LT_OK;
  }
  for (int acc = 0; acc < 2; acc++) { /* fresh and accumulating gradients in two passes */
    void *outs[LT_MAX_IO];
    int any = 0;
    for (int i = 0; i < n->n_in; i++) {
      const int take = c->din[i] && c->accumulate_in[i] == acc;
      outs[i] = take ? c->din[i]->data : NULL;
      any |= take;
    }
    if (any) lt_cuda_split(n->n_in, outs, sizes, outer, inner, sizeof(float), c->dout[0]->data, acc);
  }
  return LT_OK;
}

static lt_status slice_run(lt_node_ctx *c, int backward) {
  const lt_node *n = ctx_node(c);
  const lt_tensor *x = c->in[0], *y = c->out[0];
  const int r = x->ndim - 1;
  int64_t start[LT_MAX_DIMS], step[LT_MAX_DIMS], len;
  start[0] = 0, step[0] = 1;
  for (int d = 0; d < r; d++) {
    step[d + 1] = n->a.ints[2 * r + d];
    lt_op_slice_axis(x->shape[d + 1], n->a.ints[d], n->a.ints[r + d], step[d + 1], &start[d + 1],
                     &len);
  }
  if (!backward)
    lt_cuda_slice_fwd(x->ndim, x->shape, start, step, y->shape, lt_dtype_size(x->dtype), x->data,
                      y->data);
  else
    lt_cuda_slice_bwd(x->ndim, x->shape, start, step, y->shape, f32(c->dout[0]), din(c, 0),
                      c->accumulate_in[0]);
  return LT_OK;
}

static lt_status pad_run(lt_node_ctx *c, int backward) {
  const lt_node *n = ctx_node(c);
  const lt_tensor *x = c->in[0];
  const int r = x->ndim - 1;
  int64_t pads[2 * LT_MAX_DIMS];
  pads[0] = pads[r + 1] = 0; /* the batch axis is never padded */
  for (int d = 0; d < r; d++) pads[1 + d] = n->a.ints[d], pads[r + 2 + d] = n->a.ints[r + d];
  if (!backward)
    lt_cuda_pad_fwd(x->ndim, x->shape, pads, n->a.value, f32(x), f32(c->out[0]));
  else
    lt_cuda_pad_bwd(x->ndim, x->shape, pads, f32(c->dout[0]), din(c, 0), c->accumulate_in[0]);
  return LT_OK;
}

static lt_status transpose_run(lt_node_ctx *c, int backward) {
  const lt_node *n = ctx_node(c);
  int perm[LT_MAX_DIMS];
  perm[0] = 0;
  for (int d = 0; d < n->a.n_ints; d++) {
    if (backward)
      perm[1 + n->a.ints[d]] = 1 + d; /* the inverse permutation */
    else
      perm[1 + d] = 1 + (int)n->a.ints[d];
  }
  if (!backward) {
    const lt_tensor *x = c->in[0];
    lt_cuda_transpose(x->ndim, x->shape, perm, lt_dtype_size(x->dtype), x->data, c->out[0]->data);
    return LT_OK;
  }
  const lt_tensor *dy = c->dout[0];
  float *dx = din(c, 0);
  if (!dx) return LT_OK;
  const int acc = c->accumulate_in[0];
  float *dst = acc ? (float *)c->ws : dx; /* the kernel only overwrites */
  lt_cuda_transpose(dy->ndim, dy->shape, perm, sizeof(float), dy->data, dst);
  if (acc) lt_cuda_pass_grad((size_t)lt_tensor_numel(dy), dst, dx, 1);
  return LT_OK;
}

static lt_status copy_run(lt_node_ctx *c, int backward, lt_err *err) {
  if (backward) {
    lt_cuda_pass_grad((size_t)lt_tensor_numel(c->dout[0]), f32(c->dout[0]), din(c, 0),
                      c->accumulate_in[0]);
    return LT_OK;
  }
  CHECK_CUDA_ST(cudaMemcpyAsync(c->out[0]->data, c->in[0]->data, lt_tensor_nbytes(c->in[0]),
                                cudaMemcpyDeviceToDevice, lt_cuda_stream),
                err);
  return LT_OK;
}

static lt_status cuda_run(lt_backend *be, lt_node_ctx *c, int backward, lt_err *err) {
  const lt_node *n = ctx_node(c);
  lt_status st = cuda_enter(be, err);
  if (st) return st;
  switch (n->op) {
  case LT_OP_CONV2D: st = conv_run(c, 0, backward, err); break;
  case LT_OP_CONV_TRANSPOSE2D: st = conv_run(c, 1, backward, err); break;
  case LT_OP_LINEAR: st = linear_run(c, backward); break;
  case LT_OP_BATCHNORM: st = bn_run(c, backward, err); break;
  case LT_OP_RELU: case LT_OP_LEAKY_RELU: case LT_OP_SIGMOID: case LT_OP_TANH: case LT_OP_CLIP:
    st = pointwise_run(c, backward);
    break;
  case LT_OP_SOFTMAX: st = softmax_run(c, backward); break;
  case LT_OP_DROPOUT: st = dropout_run(c, backward); break;
  case LT_OP_MAXPOOL: case LT_OP_AVGPOOL: case LT_OP_GLOBAL_AVGPOOL: case LT_OP_UPSAMPLE:
    st = pool_run(c, backward, err);
    break;
  case LT_OP_ADD: case LT_OP_SUB: case LT_OP_MUL: case LT_OP_DIV: st = binary_run(c, backward); break;
  case LT_OP_CONCAT: st = concat_run(c, backward); break;
  case LT_OP_SLICE: st = slice_run(c, backward); break;
  case LT_OP_PAD: st = pad_run(c, backward); break;
  case LT_OP_TRANSPOSE: st = transpose_run(c, backward); break;
  case LT_OP_RESHAPE: case LT_OP_FLATTEN: case LT_OP_IDENTITY: st = copy_run(c, backward, err); break;
  default:
    return lt_op_fail(err, LT_ERR_UNSUPPORTED, n, "the CUDA backend cannot run this op");
  }
  lt_status kst = lt_cuda_take_error(st ? NULL : err);
  if (st) return st;
  return kst ? lt_err_prefix(err, "node '%.200s' (%s) %s", n->name ? n->name : "?",
                             lt_op_name(n->op), backward ? "backward" : "forward")
             : LT_OK;
}

static lt_status cuda_forward(lt_backend *be, lt_node_ctx *ctx, lt_err *err) {
  return cuda_run(be, ctx, 0, err);
}
static lt_status cuda_backward(lt_backend *be, lt_node_ctx *ctx, lt_err *err) {
  return cuda_run(be, ctx, 1, err);
}

static lt_status cuda_synchronize(lt_backend *be, lt_err *err) {
  lt_status st = cuda_enter(be, err);
  if (st) return st;
  CHECK_CUDA_ST(cudaStreamSynchronize(cb(be)->stream), err);
  return LT_OK;
}

/* Backends are process-wide singletons that live until exit. */
static void cuda_destroy(lt_backend *be) {}

/* The optimizer kernels (twins of lt_cpu_sgd_step / lt_cpu_adamw_step, checked against them by
 * tests/gpu/test_cuda_conformance.c), queued on the backend's stream. */
static lt_status cuda_optim_step(lt_backend *be, const lt_optim_update *u, size_t count, float *w,
                                 const float *g, float *s0, float *s1, lt_err *err) {
  lt_status st = cuda_enter(be, err);
  if (st || !count) return st;
  if (u->adamw)
    lt_cuda_adamw_step(count, u->lr, u->beta1, u->beta2, u->eps, u->weight_decay, u->step, w, g,
                       s0, s1);
  else
    lt_cuda_sgd_step(count, u->lr, u->momentum, u->dampening, u->weight_decay, u->nesterov, w, g,
                     s0, u->first);
  return lt_cuda_take_error(err) ? lt_err_prefix(err, "optimizer step") : LT_OK;
}

/* Copies bytes from src to dst, both device memory, queued on the backend's stream. */
static lt_status cuda_copy(lt_backend *be, void *dst, const void *src, size_t bytes, lt_err *err) {
  lt_status st = cuda_enter(be, err);
  if (st || !bytes) return st;
  CHECK_CUDA_ST(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, cb(be)->stream), err);
  return LT_OK;
}

/* dst += src over count device floats, queued (the identity's gradient kernel, accumulating). */
static lt_status cuda_accumulate(lt_backend *be, size_t count, const float *src, float *dst,
                                 lt_err *err) {
  lt_status st = cuda_enter(be, err);
  if (st || !count) return st;
  lt_cuda_pass_grad(count, src, dst, 1);
  return lt_cuda_take_error(err) ? lt_err_prefix(err, "accumulate") : LT_OK;
}

static const lt_backend_vtbl cuda_vtbl = {
    "cuda", cuda_supports, cuda_alloc, cuda_free, cuda_to_device, cuda_to_host, cuda_memset0,
    cuda_workspace_bytes, cuda_forward, cuda_backward, cuda_synchronize, cuda_destroy,
    cuda_optim_step, cuda_copy, cuda_accumulate, &lt_cuda_ac_ops};

/* ---- lookup ------------------------------------------------------------------------------------ */

#define CUDA_MAX_DEVICES 16
static cuda_backend *devices[CUDA_MAX_DEVICES];
static pthread_mutex_t devices_lock = PTHREAD_MUTEX_INITIALIZER;

static lt_status cuda_backend_init(cuda_backend *b, int dev, lt_err *err) {
  cudaDeviceProp prop;
  CHECK_CUDA_ST(cudaSetDevice(dev), err);
  CHECK_CUDA_ST(cudaGetDeviceProperties(&prop, dev), err);
  CHECK_CUDA_ST(cudaStreamCreateWithFlags(&b->stream, cudaStreamNonBlocking), err);
  cublasStatus_t s = cublasCreate(&b->cublas);
  if (s == CUBLAS_STATUS_SUCCESS) s = cublasSetStream(b->cublas, b->stream);
  const char *tf32 = getenv("LATHE_CUDA_TF32");
  if (s == CUBLAS_STATUS_SUCCESS && tf32 && strcmp(tf32, "1") == 0)
    s = cublasSetMathMode(b->cublas, CUBLAS_TF32_TENSOR_OP_MATH);
  if (s != CUBLAS_STATUS_SUCCESS)
    return lt_errorf(err, LT_ERR_INTERNAL, "cuBLAS: %s at %s:%d", cublasGetStatusName(s),
                     __FILE__, __LINE__);
  /* The pool keeps freed memory for reuse instead of returning it at each synchronisation. */
  CHECK_CUDA_ST(cudaDeviceGetDefaultMemPool(&b->pool, dev), err);
  uint64_t keep = UINT64_MAX;
  CHECK_CUDA_ST(cudaMemPoolSetAttribute(b->pool, cudaMemPoolAttrReleaseThreshold, &keep), err);
  b->base.vt = &cuda_vtbl;
  b->base.device = dev;
  b->base.impl = b;
  snprintf(b->base.description, sizeof b->base.description,
           "%.120s, %d SMs, %.1f GiB, compute capability %d.%d", prop.name, prop.multiProcessorCount,
           (double)prop.totalGlobalMem / (1024.0 * 1024.0 * 1024.0), prop.major, prop.minor);
  return LT_OK;
}

/* The backend of CUDA device `dev`, created on first use. Called by lt_backend_get. */
extern "C" lt_backend *lt_cuda_backend(int dev, lt_err *err) {
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    lt_errorf(err, LT_ERR_UNSUPPORTED,
              "no CUDA device: %s; check nvidia-smi and CUDA_VISIBLE_DEVICES, or use \"cpu\"",
              e != cudaSuccess ? cudaGetErrorString(e) : "the driver reports 0 devices");
    return NULL;
  }
  if (dev < 0 || dev >= count || dev >= CUDA_MAX_DEVICES) {
    lt_errorf(err, LT_ERR_INVALID, "no CUDA device %d: %d device%s visible (cuda:0..cuda:%d)",
              dev, count, count == 1 ? " is" : "s are", count - 1);
    return NULL;
  }
  pthread_mutex_lock(&devices_lock);
  cuda_backend *b = devices[dev];
  if (!b) {
    b = (cuda_backend *)calloc(1, sizeof *b);
    if (!b) {
      lt_errorf(err, LT_ERR_NOMEM, "out of host memory creating the CUDA backend");
    } else if (cuda_backend_init(b, dev, err)) {
      lt_err_prefix(err, "CUDA device %d", dev);
      free(b);
      b = NULL;
    } else {
      devices[dev] = b;
    }
  }
  pthread_mutex_unlock(&devices_lock);
  return b ? &b->base : NULL;
}
