/* CUDA kernels on raw device arrays: the GPU twin of backend/cpu/kernels.h, one function per CPU
 * kernel with the same arguments and the same semantics (float32, dense, row-major, NCHW;
 * `accumulate` 0 overwrites, 1 adds; a NULL output is skipped). tests/gpu/test_cuda_conformance
 * compares every one of them with its CPU twin, with the tolerance stated there.
 *
 * Array arguments are device pointers; shapes, geometry and other small arrays (shapes, sizes,
 * perm, the concat input list) are host memory, as for the CPU. Kernels are queued on the stream
 * and cuBLAS handle of lt_cuda_ctx_set (the backend's) and return without synchronising, except
 * the losses, whose double result comes back to the host.
 *
 * Kernels return void like their twins; a failed launch or cuBLAS call is recorded (the first one,
 * with file and line) and turned into an lt_status by lt_cuda_take_error, which the backend calls
 * after every node. Not for: op glue or shapes (cuda_backend.cu, ops/).
 */
#ifndef LATHE_CUDA_KERNELS_H
#define LATHE_CUDA_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Inside the C block: kernels.h has no guards of its own, and C++ (nvcc) must see C linkage. */
#include "backend/cpu/kernels.h"
#include "lathe/core.h"

/* The stream and cuBLAS handle kernels run on (opaque here so that C callers need no CUDA
 * headers): cudaStream_t and cublasHandle_t. Set once per thread by the backend. */
void lt_cuda_ctx_set(void *stream, void *cublas);
/* LT_OK, or the first failure recorded since the last call, as an lt_status with the CUDA or
 * cuBLAS error name and file:line. Clears the record. */
lt_status lt_cuda_take_error(lt_err *err);

/* ---- matrix products ---------------------------------------------------------------------- */
void lt_cuda_gemm(int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a,
                  int lda, const float *b, int ldb, float beta, float *c, int ldc);

/* ---- convolution: explicit im2col over a chunk of images + one cuBLAS product per group ---- */
/* Workspace for the CUDA conv kernels (not the CPU's size: the GPU lowers several images at
 * once). */
size_t lt_cuda_conv2d_workspace(const lt_conv_geom *g);
void lt_cuda_conv2d_fwd(const lt_conv_geom *g, const float *x, const float *w, const float *b,
                        float *y, void *ws);
void lt_cuda_conv2d_bwd_data(const lt_conv_geom *g, const float *dy, const float *w, float *dx,
                             int accumulate, void *ws);
void lt_cuda_conv2d_bwd_filter(const lt_conv_geom *g, const float *x, const float *dy, float *dw,
                               float *db, int accumulate, void *ws);
size_t lt_cuda_conv_transpose2d_workspace(const lt_conv_geom *g);
void lt_cuda_conv_transpose2d_fwd(const lt_conv_geom *g, const float *x, const float *w,
                                  const float *b, float *y, void *ws);
void lt_cuda_conv_transpose2d_bwd_data(const lt_conv_geom *g, const float *dy, const float *w,
                                       float *dx, int accumulate, void *ws);
void lt_cuda_conv_transpose2d_bwd_filter(const lt_conv_geom *g, const float *x, const float *dy,
                                         float *dw, float *db, int accumulate, void *ws);

void lt_cuda_linear_fwd(int n, int k, int m, const float *x, const float *w, const float *b,
                        float *y);
void lt_cuda_linear_bwd(int n, int k, int m, const float *x, const float *w, const float *dy,
                        float *dx, float *dw, float *db, int accumulate);

/* ---- batch norm ------------------------------------------------------------------------------ */
void lt_cuda_bn_fwd_train(int n, int c, int hw, const float *x, const float *gamma,
                          const float *beta, float eps, float momentum, float *y, float *save_mean,
                          float *save_invstd, float *running_mean, float *running_var);
void lt_cuda_bn_fwd_infer(int n, int c, int hw, const float *x, const float *gamma,
                          const float *beta, const float *running_mean, const float *running_var,
                          float eps, float *y);
void lt_cuda_bn_bwd(int n, int c, int hw, const float *x, const float *dy, const float *gamma,
                    const float *save_mean, const float *save_invstd, float *dx, float *dgamma,
                    float *dbeta, int accumulate);

/* ---- activations ------------------------------------------------------------------------------ */
void lt_cuda_relu_fwd(size_t count, const float *x, float *y);
void lt_cuda_relu_bwd(size_t count, const float *y, const float *dy, float *dx, int accumulate);
void lt_cuda_leaky_relu_fwd(size_t count, float alpha, const float *x, float *y);
void lt_cuda_leaky_relu_bwd(size_t count, float alpha, const float *x, const float *dy, float *dx,
                            int accumulate);
void lt_cuda_sigmoid_fwd(size_t count, const float *x, float *y);
void lt_cuda_sigmoid_bwd(size_t count, const float *y, const float *dy, float *dx, int accumulate);
void lt_cuda_tanh_fwd(size_t count, const float *x, float *y);
void lt_cuda_tanh_bwd(size_t count, const float *y, const float *dy, float *dx, int accumulate);
void lt_cuda_clip_fwd(size_t count, float lo, float hi, const float *x, float *y);
void lt_cuda_clip_bwd(size_t count, float lo, float hi, const float *x, const float *dy, float *dx,
                      int accumulate);
/* dx = dy (accumulate 0) or dx += dy: identity-like backward (Reshape, Flatten, Identity). */
void lt_cuda_pass_grad(size_t count, const float *dy, float *dx, int accumulate);

/* ---- pooling and upsampling ------------------------------------------------------------------- */
void lt_cuda_maxpool_fwd(const lt_pool_geom *g, const float *x, float *y, uint8_t *argmax);
void lt_cuda_maxpool_bwd(const lt_pool_geom *g, const uint8_t *argmax, const float *dy, float *dx,
                         int accumulate);
void lt_cuda_avgpool_fwd(const lt_pool_geom *g, const float *x, float *y);
void lt_cuda_avgpool_bwd(const lt_pool_geom *g, const float *dy, float *dx, int accumulate);
void lt_cuda_global_avgpool_fwd(int n, int c, int hw, const float *x, float *y);
void lt_cuda_global_avgpool_bwd(int n, int c, int hw, const float *dy, float *dx, int accumulate);
void lt_cuda_upsample_fwd(lt_upsample_mode mode, int align_corners, int n, int c, int h, int w,
                          int oh, int ow, const float *x, float *y);
void lt_cuda_upsample_bwd(lt_upsample_mode mode, int align_corners, int n, int c, int h, int w,
                          int oh, int ow, const float *dy, float *dx, int accumulate);

/* ---- broadcasting binary ops and data movement ------------------------------------------------ */
void lt_cuda_binary_fwd(lt_binary_op op, int ndim, const int64_t *ashape, const float *a,
                        const int64_t *bshape, const float *b, const int64_t *yshape, float *y);
void lt_cuda_binary_bwd(lt_binary_op op, int ndim, const int64_t *ashape, const float *a,
                        const int64_t *bshape, const float *b, const int64_t *yshape,
                        const float *dy, float *da, float *db, int accumulate);
void lt_cuda_concat(int ninputs, const void *const *inputs, const int64_t *sizes, int64_t outer,
                    int64_t inner, size_t elem, void *y);
void lt_cuda_split(int noutputs, void *const *outputs, const int64_t *sizes, int64_t outer,
                   int64_t inner, size_t elem, const void *y, int accumulate_f32);
void lt_cuda_slice_fwd(int ndim, const int64_t *xshape, const int64_t *start,
                       const int64_t *step, const int64_t *yshape, size_t elem, const void *x,
                       void *y);
void lt_cuda_slice_bwd(int ndim, const int64_t *xshape, const int64_t *start,
                       const int64_t *step, const int64_t *yshape, const float *dy, float *dx,
                       int accumulate);
void lt_cuda_pad_fwd(int ndim, const int64_t *xshape, const int64_t *pads, float value,
                     const float *x, float *y);
void lt_cuda_pad_bwd(int ndim, const int64_t *xshape, const int64_t *pads, const float *dy,
                     float *dx, int accumulate);
void lt_cuda_transpose(int ndim, const int64_t *xshape, const int *perm, size_t elem,
                       const void *x, void *y);

/* ---- dropout (same Philox keying as the CPU, so masks are bit-identical) ---------------------- */
void lt_cuda_dropout_fwd(size_t count, float p, uint64_t seed, uint64_t stream, const float *x,
                         float *y, uint8_t *mask_bits);
void lt_cuda_dropout_bwd(size_t count, float p, const uint8_t *mask_bits, const float *dy,
                         float *dx, int accumulate);

/* ---- softmax, losses (labels, logits, targets on the device; result to the host) -------------- */
void lt_cuda_softmax_fwd(int n, int k, const float *x, float *y);
void lt_cuda_softmax_bwd(int n, int k, const float *y, const float *dy, float *dx, int accumulate);
double lt_cuda_softmax_xent(int n, int k, const float *logits, const int32_t *labels, float scale,
                            float *dlogits, int64_t *correct);
double lt_cuda_mse(size_t count, const float *pred, const float *target, float scale,
                   float *dpred);
double lt_cuda_l1(size_t count, const float *pred, const float *target, float scale, float *dpred);

/* ---- optimizer updates ------------------------------------------------------------------------ */
void lt_cuda_sgd_step(size_t count, float lr, float momentum, float dampening, float weight_decay,
                      int nesterov, float *w, const float *g, float *velocity, int first_step);
void lt_cuda_adamw_step(size_t count, float lr, float beta1, float beta2, float eps,
                        float weight_decay, int64_t step, float *w, const float *g, float *m,
                        float *v);

#ifdef __cplusplus
}
#endif
#endif
