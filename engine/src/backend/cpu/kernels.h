/* CPU kernels on raw arrays: the reference implementation of every op, forward and backward.
 *
 * Every tensor is float32, dense, row-major, NCHW unless said otherwise. Shapes are passed
 * explicitly; kernels never allocate (callers size scratch with the *_workspace functions and
 * pass it in). Backward kernels take `accumulate`: 0 overwrites the gradient buffer, 1 adds to
 * it (fan-out in the graph, gradient accumulation). Any output pointer that is NULL is skipped
 * (e.g. no dx for the first layer, no db when the layer has no bias).
 *
 * Kernels run multi-threaded with OpenMP. They call OpenBLAS sgemm outside parallel regions, except
 * the im2col convolutions, which split the batch across threads and pin sgemm to one thread for
 * the duration (kernels_conv.c).
 * Every CUDA kernel in backend/cuda has one of these as its CPU twin, with the same arguments.
 *
 * Not for: shape inference, FLOPs or the graph: that is ops/ and graph/.
 */
#ifndef LATHE_CPU_KERNELS_H
#define LATHE_CPU_KERNELS_H

#include <stddef.h>
#include <stdint.h>

/* ---- threads ------------------------------------------------------------------------------ */

/* OpenMP threads the kernels use (omp_get_max_threads of the calling thread). */
int lt_cpu_threads(void);
/* Runs fn(user, t) for t = 0..n-1 at once, one OpenMP thread each, with every kernel called
 * inside running single-threaded: each calling thread's OpenMP thread count and OpenBLAS's are
 * 1 for the duration (restored after). Each t runs exactly once even when the region gets fewer
 * threads (nested in another region); then some run one after the other. fn must not use memory
 * another t writes: kernels' per-thread scratch is indexed from 0 in every t. */
void lt_cpu_run_split(int n, void (*fn)(void *user, int t), void *user);

/* ---- matrix products --------------------------------------------------------------------- */

/* C (m,n) = alpha * op(A) op(B) + beta * C, row-major, op = transpose when trans_* != 0. */
void lt_cpu_gemm(int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a,
                 int lda, const float *b, int ldb, float beta, float *c, int ldc);

/* ---- convolution --------------------------------------------------------------------------- */

/* Geometry of a 2-D convolution. For conv2d: x (n, c, h, w), w (s, c/groups, kh, kw),
 * y (n, s, oh, ow). For conv_transpose2d: x (n, c, h, w), w (c, s/groups, kh, kw),
 * y (n, s, oh, ow) with oh = (h-1)*stride_h - pad_t - pad_b + dil_h*(kh-1) + out_pad_h + 1. */
typedef struct lt_conv_geom {
  int n, c, h, w;         /* input */
  int s, oh, ow;          /* output channels and spatial size (filled by lt_conv_geom_finish) */
  int kh, kw;
  int stride_h, stride_w;
  int pad_t, pad_l, pad_b, pad_r;
  int dil_h, dil_w;
  int groups;
  int out_pad_h, out_pad_w; /* conv_transpose only */
} lt_conv_geom;

/* Computes oh, ow; returns 0, or -1 when the geometry is impossible (non-positive output,
 * channels not divisible by groups). transpose selects the conv_transpose formula. */
int lt_conv_geom_finish(lt_conv_geom *g, int transpose);

/* Bytes of scratch for fwd and bwd, whatever the thread count: max(16 MiB,
 * 4*((c*kh*kw + s)*oh*ow + s*(c/groups)*kh*kw)), and at least lt_cpu_winograd_workspace for
 * Winograd-eligible convolutions (whatever the Winograd mode, which may change later); 0 for 1×1
 * stride-1 unpadded and for depthwise (groups == c) convolutions. */
size_t lt_cpu_conv2d_workspace(const lt_conv_geom *g);
void lt_cpu_conv2d_fwd(const lt_conv_geom *g, const float *x, const float *w, const float *b,
                       float *y, void *ws);
/* The forward of an inference (no backward follows): may trade accuracy for speed within the
 * reference tolerances (Winograd F(4×4, 3×3), about 3e-5 of the output's RMS). */
void lt_cpu_conv2d_fwd_infer(const lt_conv_geom *g, const float *x, const float *w, const float *b,
                             float *y, void *ws);
/* What an inference convolution does to its output before it is final: y = act(conv + b + res),
 * res (y's shape, NULL: none) a residual added, act max(., 0) when relu. */
typedef struct lt_conv_epi {
  const float *res;
  int relu;
} lt_conv_epi;
/* y[i] = act(y[i] + res[off + i]) for i < n (epi NULL or empty: nothing). */
void lt_conv_epi_apply(const lt_conv_epi *e, float *y, size_t off, size_t n);
/* The inference forward with an epilogue, applied to each block of y right after the block is
 * written (while it is in cache) on the direct, Winograd and im2col paths, in a second pass on
 * the others. For inference executors that fold a BatchNorm into the convolution and fuse the
 * ReLU, or the residual Add and its ReLU, after it. */
void lt_cpu_conv2d_fwd_infer_epi(const lt_conv_geom *g, const float *x, const float *w,
                                 const float *b, const lt_conv_epi *epi, float *y, void *ws);
void lt_cpu_conv2d_bwd_data(const lt_conv_geom *g, const float *dy, const float *w, float *dx,
                            int accumulate, void *ws);
void lt_cpu_conv2d_bwd_filter(const lt_conv_geom *g, const float *x, const float *dy, float *dw,
                              float *db, int accumulate, void *ws);

/* Winograd F(2×2, 3×3) fast path for 3×3 stride-1 convolutions (kernels_winograd.c), used by
 * the conv2d functions above (and conv_transpose2d through its mirror conv2d) whenever
 * lt_cpu_winograd_active. eligible: kernel 3×3, stride 1, dilation 1, groups 1, pad_t and
 * pad_l <= 2, and a single image's scratch within bounds; the conv2d workspace covers it then. */
enum {
  LT_WINOGRAD_OFF = 0,     /* im2col for every convolution */
  LT_WINOGRAD_AUTO = 1,    /* the best instruction set the CPU has */
  LT_WINOGRAD_GENERIC = 2, /* the portable build-target code */
  LT_WINOGRAD_AVX2 = 3,    /* AVX2+FMA without AVX-512 (lower if the CPU lacks it) */
  LT_WINOGRAD_AVX512 = 4
};
/* The mode: set here, else from LATHE_CONV_WINOGRAD (0/off, generic, avx2, avx512; else auto). */
void lt_cpu_winograd_set_mode(int mode);
int lt_cpu_winograd_mode(void);
const char *lt_cpu_winograd_impl_name(void); /* "avx512", "avx2", "generic" or "off" */
/* Output tile of forward and backward data: 0 (the default) picks F(4×4, 3×3) for inference
 * forwards (infer = 1, lt_cpu_conv2d_fwd_infer) with outputs of at least 16×16 and F(2×2, 3×3)
 * otherwise; 2 or 4 force one (also LATHE_CONV_WINOGRAD_TILE). Backward filter always uses
 * F(2×2). For tests and benchmarks; the workspace covers both. */
void lt_cpu_winograd_set_tile(int m);
int lt_cpu_winograd_eligible(const lt_conv_geom *g);
/* eligible, the mode is not off, and in automatic mode at least 8 input and output channels */
int lt_cpu_winograd_active(const lt_conv_geom *g);
size_t lt_cpu_winograd_workspace(const lt_conv_geom *g);
void lt_cpu_winograd_fwd(const lt_conv_geom *g, const float *x, const float *w, const float *b,
                         float *y, int accumulate, int infer, const lt_conv_epi *epi, void *ws);
void lt_cpu_winograd_bwd_data(const lt_conv_geom *g, const float *dy, const float *w, float *dx,
                              int accumulate, void *ws);
void lt_cpu_winograd_bwd_filter(const lt_conv_geom *g, const float *x, const float *dy, float *dw,
                                int accumulate, void *ws);

/* Direct convolutions (kernels_direct.c), used by lt_cpu_conv2d_fwd_infer ahead of Winograd and
 * im2col whenever lt_cpu_direct_active (and no Winograd mode is forced that takes the
 * convolution); training passes keep the other paths. Automatic mode takes pointwise (1×1,
 * stride 1, unpadded) convolutions up to 256 channels, stride-1 convolutions with fewer than 8
 * channels in or out, whose channels Winograd would pad by more than 16/9, or with at most 512
 * output pixels in the batch, and strided
 * convolutions with kernels of at least 3×3 and at most 64 input channels; with the AVX-512
 * kernels also stride-1 convolutions with outputs of at most 64 pixels up to c*s = 1600 (and the
 * 16/9 rule only up to c*s = 1024), and strided ones up to 256 input channels of at most 2^16
 * pixels in all (lt_cpu_direct_active says why); groups 1 only.
 * Results do not depend on the thread count. */
enum {
  LT_DIRECT_OFF = 0,     /* kernels_conv.c's lowering everywhere */
  LT_DIRECT_AUTO = 1,    /* the best instruction set the CPU has, on the shapes above */
  LT_DIRECT_GENERIC = 2, /* forced (every groups-1 convolution), portable */
  LT_DIRECT_AVX2 = 3,    /* forced, AVX2+FMA (lower if the CPU lacks it) */
  LT_DIRECT_AVX512 = 4   /* forced, AVX-512 (lower if the CPU lacks it) */
};
/* The mode: set here (-1: read the environment again on next use), else from LATHE_CONV_DIRECT
 * (0/off, generic, avx2, avx512; else auto). */
void lt_cpu_direct_set_mode(int mode);
int lt_cpu_direct_mode(void);
const char *lt_cpu_direct_impl_name(void); /* "avx512", "avx2", "generic" or "off" */
int lt_cpu_direct_active(const lt_conv_geom *g);
/* Bytes of scratch one thread needs for a non-pointwise direct forward (0 for pointwise). */
size_t lt_cpu_direct_slice_bytes(const lt_conv_geom *g);
/* Return 0 when done, -1 (nothing written) when the direct path does not take this convolution
 * or ws (ws_bytes) is too small for one thread's slice. epi (may be NULL) after the sum. */
int lt_cpu_direct_fwd(const lt_conv_geom *g, const float *x, const float *w, const float *b,
                      float *y, int accumulate, void *ws, size_t ws_bytes,
                      const lt_conv_epi *epi);

size_t lt_cpu_conv_transpose2d_workspace(const lt_conv_geom *g);
void lt_cpu_conv_transpose2d_fwd(const lt_conv_geom *g, const float *x, const float *w,
                                 const float *b, float *y, void *ws);
void lt_cpu_conv_transpose2d_bwd_data(const lt_conv_geom *g, const float *dy, const float *w,
                                      float *dx, int accumulate, void *ws);
void lt_cpu_conv_transpose2d_bwd_filter(const lt_conv_geom *g, const float *x, const float *dy,
                                        float *dw, float *db, int accumulate, void *ws);

/* ---- linear: y (n, m) = x (n, k) · wᵀ (w: (m, k)) + b (m) --------------------------------- */

void lt_cpu_linear_fwd(int n, int k, int m, const float *x, const float *w, const float *b,
                       float *y);
void lt_cpu_linear_bwd(int n, int k, int m, const float *x, const float *w, const float *dy,
                       float *dx, float *dw, float *db, int accumulate);

/* ---- batch norm over (n, c, hw) ------------------------------------------------------------ */

/* Training mode: normalises with batch statistics, writes save_mean/save_invstd (c) for backward
 * and updates running stats as PyTorch does (unbiased variance, running = (1-m)*running + m*batch). */
void lt_cpu_bn_fwd_train(int n, int c, int hw, const float *x, const float *gamma,
                         const float *beta, float eps, float momentum, float *y, float *save_mean,
                         float *save_invstd, float *running_mean, float *running_var);
void lt_cpu_bn_fwd_infer(int n, int c, int hw, const float *x, const float *gamma,
                         const float *beta, const float *running_mean, const float *running_var,
                         float eps, float *y);
void lt_cpu_bn_bwd(int n, int c, int hw, const float *x, const float *dy, const float *gamma,
                   const float *save_mean, const float *save_invstd, float *dx, float *dgamma,
                   float *dbeta, int accumulate);

/* ---- pointwise activations (count elements) ------------------------------------------------ */

/* y may be x. */
void lt_cpu_relu_fwd(size_t count, const float *x, float *y);
/* dx = dy where y > 0 (y is the forward output, or any tensor with the same sign pattern). */
void lt_cpu_relu_bwd(size_t count, const float *y, const float *dy, float *dx, int accumulate);
/* Mask form: bit i of mask (LSB first within each byte) is 1 where the output was positive. */
void lt_cpu_relu_mask_pack(size_t count, const float *y, uint8_t *mask);
void lt_cpu_relu_bwd_mask(size_t count, const uint8_t *mask, const float *dy, float *dx,
                          int accumulate);
void lt_cpu_leaky_relu_fwd(size_t count, float alpha, const float *x, float *y);
void lt_cpu_leaky_relu_bwd(size_t count, float alpha, const float *x, const float *dy, float *dx,
                           int accumulate);
void lt_cpu_sigmoid_fwd(size_t count, const float *x, float *y);
void lt_cpu_sigmoid_bwd(size_t count, const float *y, const float *dy, float *dx, int accumulate);
void lt_cpu_tanh_fwd(size_t count, const float *x, float *y);
void lt_cpu_tanh_bwd(size_t count, const float *y, const float *dy, float *dx, int accumulate);
void lt_cpu_clip_fwd(size_t count, float lo, float hi, const float *x, float *y);
void lt_cpu_clip_bwd(size_t count, float lo, float hi, const float *x, const float *dy, float *dx,
                     int accumulate);

/* ---- pooling -------------------------------------------------------------------------------- */

typedef struct lt_pool_geom {
  int n, c, h, w;
  int oh, ow; /* filled by lt_pool_geom_finish */
  int kh, kw, stride_h, stride_w, pad_t, pad_l, pad_b, pad_r, dil_h, dil_w;
  int ceil_mode;
  int count_include_pad; /* avg pool */
} lt_pool_geom;

int lt_pool_geom_finish(lt_pool_geom *g); /* 0, or -1 when impossible */

/* argmax (n, c, oh, ow): index within the window, row-major (kh*kw values), or NULL. */
void lt_cpu_maxpool_fwd(const lt_pool_geom *g, const float *x, float *y, uint8_t *argmax);
void lt_cpu_maxpool_bwd(const lt_pool_geom *g, const uint8_t *argmax, const float *dy, float *dx,
                        int accumulate);
/* 2-bit packed form of the argmax for 2×2 windows: 4 windows per byte, LSB first. */
void lt_cpu_argmax_pack2(size_t count, const uint8_t *argmax, uint8_t *packed);
void lt_cpu_argmax_unpack2(size_t count, const uint8_t *packed, uint8_t *argmax);
void lt_cpu_avgpool_fwd(const lt_pool_geom *g, const float *x, float *y);
void lt_cpu_avgpool_bwd(const lt_pool_geom *g, const float *dy, float *dx, int accumulate);
void lt_cpu_global_avgpool_fwd(int n, int c, int hw, const float *x, float *y);
void lt_cpu_global_avgpool_bwd(int n, int c, int hw, const float *dy, float *dx, int accumulate);

/* ---- elementwise with NumPy broadcasting (up to LT_KMAX_DIMS dims, shapes right-aligned) --- */

#define LT_KMAX_DIMS 6
typedef enum lt_binary_op { LT_BIN_ADD, LT_BIN_SUB, LT_BIN_MUL, LT_BIN_DIV } lt_binary_op;

/* a, b, y shapes have ndim dims each (callers pad with leading 1s); y's shape is the broadcast.
 * When all three shapes are equal, y may be a or b. */
void lt_cpu_binary_fwd(lt_binary_op op, int ndim, const int64_t *ashape, const float *a,
                       const int64_t *bshape, const float *b, const int64_t *yshape, float *y);
/* Gradients of a and b, reduced over broadcast dims. Needs a and b for MUL and DIV. */
void lt_cpu_binary_bwd(lt_binary_op op, int ndim, const int64_t *ashape, const float *a,
                       const int64_t *bshape, const float *b, const int64_t *yshape,
                       const float *dy, float *da, float *db, int accumulate);

/* ---- data movement (element size in bytes, so they serve every dtype) ----------------------- */

/* Concatenation along axis: inputs[i] has shape with dim axis = sizes[i]; outer = product of
 * dims before axis, inner = product after. The backward is lt_cpu_split with the same args. */
void lt_cpu_concat(int ninputs, const void *const *inputs, const int64_t *sizes, int64_t outer,
                   int64_t inner, size_t elem, void *y);
void lt_cpu_split(int noutputs, void *const *outputs, const int64_t *sizes, int64_t outer,
                  int64_t inner, size_t elem, const void *y, int accumulate_f32);
/* Strided window with constant fill: along dim d, y index i reads x index
 * start[d] + (i - lo[d]) * step[d] where lo[d] <= i < hi[d] on every dim, and y is value
 * elsewhere (value for 4-byte elements; zero bytes for other sizes). A slice (lo 0, hi yshape), a
 * constant pad (step 1) and a chain of slices ending in a pad are each one window. */
void lt_cpu_window_fwd(int ndim, const int64_t *xshape, const int64_t *yshape,
                       const int64_t *start, const int64_t *step, const int64_t *lo,
                       const int64_t *hi, float value, size_t elem, const void *x, void *y);
/* Strided slice: y[i...] = x[start + i*step ...] per dim (step may be negative). */
void lt_cpu_slice_fwd(int ndim, const int64_t *xshape, const int64_t *start, const int64_t *step,
                      const int64_t *yshape, size_t elem, const void *x, void *y);
void lt_cpu_slice_bwd(int ndim, const int64_t *xshape, const int64_t *start, const int64_t *step,
                      const int64_t *yshape, const float *dy, float *dx, int accumulate);
/* Constant pad: pads[2*ndim] = begins then ends (ONNX order); negative pads crop. */
void lt_cpu_pad_fwd(int ndim, const int64_t *xshape, const int64_t *pads, float value,
                    const float *x, float *y);
void lt_cpu_pad_bwd(int ndim, const int64_t *xshape, const int64_t *pads, const float *dy,
                    float *dx, int accumulate);
/* Generic transpose by perm; backward is the inverse permutation. */
void lt_cpu_transpose(int ndim, const int64_t *xshape, const int *perm, size_t elem, const void *x,
                      void *y);

/* ---- upsampling ----------------------------------------------------------------------------- */

typedef enum lt_upsample_mode { LT_UPSAMPLE_NEAREST, LT_UPSAMPLE_BILINEAR } lt_upsample_mode;
/* align_corners as in PyTorch; nearest uses PyTorch's 'nearest' (floor(dst * in/out)). */
/* Sizes, not scale factors, define the mapping (scale = in/out): a resize that PyTorch or ONNX
 * drives by a non-integer scale factor maps differently and is not this kernel. */
void lt_cpu_upsample_fwd(lt_upsample_mode mode, int align_corners, int n, int c, int h, int w,
                         int oh, int ow, const float *x, float *y);
void lt_cpu_upsample_bwd(lt_upsample_mode mode, int align_corners, int n, int c, int h, int w,
                         int oh, int ow, const float *dy, float *dx, int accumulate);

/* ---- dropout: mask bits come from the counter-based RNG keyed by (seed, stream, element) ---- */
/* Element i is kept when word i%4 of lt_philox(seed, stream, i/4) >= p * 2^32; kept elements are
 * scaled by 1/(1-p). mask_bits (count bits, LSB first) may be NULL in the forward. */

void lt_cpu_dropout_fwd(size_t count, float p, uint64_t seed, uint64_t stream, const float *x,
                        float *y, uint8_t *mask_bits);
void lt_cpu_dropout_bwd(size_t count, float p, const uint8_t *mask_bits, const float *dy,
                        float *dx, int accumulate);

/* ---- softmax and losses --------------------------------------------------------------------- */

void lt_cpu_softmax_fwd(int n, int k, const float *x, float *y); /* over the last axis */
void lt_cpu_softmax_bwd(int n, int k, const float *y, const float *dy, float *dx, int accumulate);

/* Softmax cross-entropy over logits (n, k) and labels (n). Returns the summed loss (double);
 * writes dlogits = scale * (softmax - onehot) when dlogits != NULL, and the number of correct
 * argmax predictions into *correct when non-NULL. A label outside [0, k) returns NaN. */
double lt_cpu_softmax_xent(int n, int k, const float *logits, const int32_t *labels, float scale,
                           float *dlogits, int64_t *correct);
/* Sum over elements of (p - t)^2 and |p - t|; gradients scaled by scale. */
double lt_cpu_mse(size_t count, const float *pred, const float *target, float scale, float *dpred);
double lt_cpu_l1(size_t count, const float *pred, const float *target, float scale, float *dpred);

/* ---- optimizer updates ---------------------------------------------------------------------- */

/* SGD as torch.optim.SGD; first_step seeds velocity with the gradient (PyTorch's empty buffer);
 * velocity may be NULL when momentum is 0. AdamW as torch.optim.AdamW with step = 1 on the first
 * call (the bias corrections use beta^step). */
void lt_cpu_sgd_step(size_t count, float lr, float momentum, float dampening, float weight_decay,
                     int nesterov, float *w, const float *g, float *velocity, int first_step);
void lt_cpu_adamw_step(size_t count, float lr, float beta1, float beta2, float eps,
                       float weight_decay, int64_t step, float *w, const float *g, float *m,
                       float *v);

#endif
