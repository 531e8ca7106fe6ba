/* Matrix-product CUDA kernels: row-major GEMM on cuBLAS, Conv2d and ConvTranspose2d as explicit
 * im2col + one strided-batched cuBLAS SGEMM (batch = groups) per chunk of images, and Linear;
 * GPU twins of kernels_conv.c.
 *
 * Layouts. For a chunk of nb images with P = oh*ow output positions and K = (C/groups)*kh*kw:
 *   cols (groups*K, nb*P) row-major: row (c, ki, kj), column (image, oy, ox)   — im2col
 *   tmp  (S, nb*P) row-major: the output (or its gradient) with channels outermost
 * so each group's product is one GEMM with no per-image loop. The chunk is as many images as fit
 * a workspace cap, so large inputs run in a few chunks instead of failing.
 * ConvTranspose2d is the adjoint of Conv2d with the roles of input and output swapped, so it
 * reuses the same kernels on the swapped geometry.
 */
#include "backend/cuda/cuda_common.cuh"

/* ---- GEMM ------------------------------------------------------------------------------------ */

/* Row-major C = op(A) op(B) is column-major Cᵀ = op(B)ᵀ op(A)ᵀ: swap the operands. */
extern "C" void lt_cuda_gemm(int trans_a, int trans_b, int m, int n, int k, float alpha,
                             const float *a, int lda, const float *b, int ldb, float beta,
                             float *c, int ldc) {
  if (m <= 0 || n <= 0) return;
  CHECK_CUBLAS(cublasSgemm(lt_cuda_cublas, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                           trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, n, m, k, &alpha, b, ldb, a, lda,
                           &beta, c, ldc));
}

/* The same for `batch` independent products at fixed strides (one per conv group). */
static void gemm_batched(int trans_a, int trans_b, int m, int n, int k, const float *a, int lda,
                         long long sa, const float *b, int ldb, long long sb, float beta, float *c,
                         int ldc, long long sc, int batch) {
  const float one = 1.0f;
  CHECK_CUBLAS(cublasSgemmStridedBatched(
      lt_cuda_cublas, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, n,
      m, k, &one, b, ldb, sb, a, lda, sa, &beta, c, ldc, sc, batch));
}

/* ---- im2col / col2im --------------------------------------------------------------------------- */

/* Images per chunk: the workspace of one chunk stays under this many bytes (one image at least). */
#define CONV_WS_CAP ((size_t)256 << 20)

static size_t conv_cols_rows(const lt_conv_geom *g) { return (size_t)g->c * g->kh * g->kw; }

static int conv_chunk(const lt_conv_geom *g) {
  const size_t per_image = (conv_cols_rows(g) + (size_t)g->s) * g->oh * g->ow * sizeof(float);
  size_t nb = CONV_WS_CAP / (per_image ? per_image : 1);
  if (nb < 1) nb = 1;
  if (nb > (size_t)g->n) nb = (size_t)g->n;
  return (int)nb;
}

extern "C" size_t lt_cuda_conv2d_workspace(const lt_conv_geom *g) {
  return (conv_cols_rows(g) + (size_t)g->s) * (size_t)conv_chunk(g) * g->oh * g->ow *
         sizeof(float);
}

/* cols (C*kh*kw, nb*P) from x images [0, nb) (x points at the chunk's first image). */
__global__ void im2col_k(lt_conv_geom g, int nb, const float *x, float *cols) {
  const unsigned np = (unsigned)nb * g.oh * g.ow, count = (unsigned)g.c * g.kh * g.kw * np;
  const unsigned ow = g.ow, oh = g.oh, kw = g.kw, kh = g.kh;
  GRID_STRIDE(i, count) {
    const unsigned col = i % np, row = i / np;
    const int ox = (int)(col % ow), oy = (int)((col / ow) % oh), b = (int)(col / (oh * ow));
    const int kj = (int)(row % kw), ki = (int)((row / kw) % kh), c = (int)(row / (kh * kw));
    const int iy = oy * g.stride_h - g.pad_t + ki * g.dil_h;
    const int ix = ox * g.stride_w - g.pad_l + kj * g.dil_w;
    cols[i] = (iy >= 0 && iy < g.h && ix >= 0 && ix < g.w)
                  ? x[(((size_t)b * g.c + c) * g.h + iy) * g.w + ix]
                  : 0.0f;
  }
}

/* dx images [0, nb) (+)= the sum of the cols entries that read each pixel: a gather per input
 * pixel, so no atomics and a deterministic order. */
__global__ void col2im_k(lt_conv_geom g, int nb, const float *cols, float *dx, int acc) {
  const size_t np = (size_t)nb * g.oh * g.ow;
  const unsigned count = (unsigned)nb * g.c * g.h * g.w, w = g.w, h = g.h, cc = g.c;
  GRID_STRIDE(i, count) {
    const int ix = (int)(i % w), iy = (int)((i / w) % h);
    const int c = (int)((i / (w * h)) % cc), b = (int)(i / (w * h * cc));
    float s = 0.0f;
    for (int ki = 0; ki < g.kh; ki++) {
      const int ty = iy + g.pad_t - ki * g.dil_h;
      if (ty < 0 || ty % g.stride_h) continue;
      const int oy = ty / g.stride_h;
      if (oy >= g.oh) continue;
      for (int kj = 0; kj < g.kw; kj++) {
        const int tx = ix + g.pad_l - kj * g.dil_w;
        if (tx < 0 || tx % g.stride_w) continue;
        const int ox = tx / g.stride_w;
        if (ox >= g.ow) continue;
        const size_t row = ((size_t)c * g.kh + ki) * g.kw + kj;
        s += cols[row * np + ((size_t)b * g.oh + oy) * g.ow + ox];
      }
    }
    dx[i] = acc ? dx[i] + s : s;
  }
}

/* Between (nb, S, P) image layout and (S, nb*P): dir 0 tmp -> y (adding bias, accumulating),
 * dir 1 y -> tmp. */
__global__ void nchw_k(int nb, int s, int p, const float *src, float *dst, const float *bias,
                       int dir, int acc) {
  const unsigned count = (unsigned)nb * s * p, up = p, us = s;
  GRID_STRIDE(i, count) { /* i walks (b, ch, q) */
    const int q = (int)(i % up), ch = (int)((i / up) % us), b = (int)(i / (up * us));
    const size_t t = ((size_t)ch * nb + b) * p + q;
    if (dir == 0) {
      const float v = src[t] + (bias ? bias[ch] : 0.0f);
      dst[i] = acc ? dst[i] + v : v;
    } else {
      dst[t] = src[i];
    }
  }
}

/* db[ch] (+)= sum of dy over (n, p): one block per channel. */
__global__ void channel_sum_k(int n, int s, int p, const float *dy, float *db, int acc) {
  __shared__ float part[32];
  const int ch = blockIdx.x;
  float v = 0.0f;
  const unsigned cnt = (unsigned)n * p, up = p;
  for (unsigned i = threadIdx.x; i < cnt; i += blockDim.x)
    v += dy[((size_t)(i / up) * s + ch) * p + i % up];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
  __syncthreads();
  if (threadIdx.x < 32) {
    v = threadIdx.x < (blockDim.x >> 5) ? part[threadIdx.x] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    if (threadIdx.x == 0) db[ch] = acc ? db[ch] + v : v;
  }
}

static void channel_sum(int n, int s, int p, const float *dy, float *db, int acc) {
  if (!db || s <= 0) return;
  channel_sum_k<<<s, 256, 0, lt_cuda_stream>>>(n, s, p, dy, db, acc);
  CHECK_LAUNCH();
}

/* ---- Conv2d ------------------------------------------------------------------------------------ */

/* Per-chunk views into the workspace. */
struct conv_ws {
  float *cols; /* (C*kh*kw, nb*P) */
  float *tmp;  /* (S, nb*P) */
};

static conv_ws conv_ws_split(const lt_conv_geom *g, void *ws) {
  conv_ws w;
  w.cols = (float *)ws;
  w.tmp = w.cols + conv_cols_rows(g) * (size_t)conv_chunk(g) * g->oh * g->ow;
  return w;
}

/* y (+)= conv(x, w) + b: the forward, with accumulate for ConvTranspose2d's data gradient. */
static void conv_fwd_any(const lt_conv_geom *g, const float *x, const float *w, const float *b,
                         float *y, int acc, void *ws) {
  const conv_ws cw = conv_ws_split(g, ws);
  const int nbmax = conv_chunk(g), P = g->oh * g->ow, G = g->groups;
  const int Sg = g->s / G, Kg = (g->c / G) * g->kh * g->kw;
  for (int img0 = 0; img0 < g->n; img0 += nbmax) {
    const int nb = g->n - img0 < nbmax ? g->n - img0 : nbmax;
    const size_t np = (size_t)nb * P;
    const float *xc = x + (size_t)img0 * g->c * g->h * g->w;
    float *yc = y + (size_t)img0 * g->s * P;
    LAUNCH_1D(im2col_k, conv_cols_rows(g) * np, *g, nb, xc, cw.cols);
    /* tmp_g (Sg, np) = W_g (Sg, Kg) · cols_g (Kg, np) */
    gemm_batched(0, 0, Sg, (int)np, Kg, w, Kg, (long long)Sg * Kg, cw.cols, (int)np,
                 (long long)Kg * np, 0.0f, cw.tmp, (int)np, (long long)Sg * np, G);
    LAUNCH_1D(nchw_k, (size_t)g->s * np, nb, g->s, P, cw.tmp, yc, b, 0, acc);
  }
}

/* dx (+)= convᵀ(dy, w). */
static void conv_bwd_data_any(const lt_conv_geom *g, const float *dy, const float *w, float *dx,
                              int acc, void *ws) {
  const conv_ws cw = conv_ws_split(g, ws);
  const int nbmax = conv_chunk(g), P = g->oh * g->ow, G = g->groups;
  const int Sg = g->s / G, Kg = (g->c / G) * g->kh * g->kw;
  for (int img0 = 0; img0 < g->n; img0 += nbmax) {
    const int nb = g->n - img0 < nbmax ? g->n - img0 : nbmax;
    const size_t np = (size_t)nb * P;
    LAUNCH_1D(nchw_k, (size_t)g->s * np, nb, g->s, P, dy + (size_t)img0 * g->s * P, cw.tmp,
              (const float *)NULL, 1, 0);
    /* dcols_g (Kg, np) = W_gᵀ (Kg, Sg) · dy_g (Sg, np) */
    gemm_batched(1, 0, Kg, (int)np, Sg, w, Kg, (long long)Sg * Kg, cw.tmp, (int)np,
                 (long long)Sg * np, 0.0f, cw.cols, (int)np, (long long)Kg * np, G);
    LAUNCH_1D(col2im_k, (size_t)nb * g->c * g->h * g->w, *g, nb, cw.cols,
              dx + (size_t)img0 * g->c * g->h * g->w, acc);
  }
}

/* dw (+)= dy ⋆ x, summed over the batch (chunks after the first always add). */
static void conv_bwd_filter_any(const lt_conv_geom *g, const float *x, const float *dy, float *dw,
                                int acc, void *ws) {
  const conv_ws cw = conv_ws_split(g, ws);
  const int nbmax = conv_chunk(g), P = g->oh * g->ow, G = g->groups;
  const int Sg = g->s / G, Kg = (g->c / G) * g->kh * g->kw;
  for (int img0 = 0; img0 < g->n; img0 += nbmax) {
    const int nb = g->n - img0 < nbmax ? g->n - img0 : nbmax;
    const size_t np = (size_t)nb * P;
    LAUNCH_1D(im2col_k, conv_cols_rows(g) * np, *g, nb, x + (size_t)img0 * g->c * g->h * g->w,
              cw.cols);
    LAUNCH_1D(nchw_k, (size_t)g->s * np, nb, g->s, P, dy + (size_t)img0 * g->s * P, cw.tmp,
              (const float *)NULL, 1, 0);
    /* dW_g (Sg, Kg) (+)= dy_g (Sg, np) · cols_gᵀ (np, Kg) */
    gemm_batched(0, 1, Sg, Kg, (int)np, cw.tmp, (int)np, (long long)Sg * np, cw.cols, (int)np,
                 (long long)Kg * np, (acc || img0 > 0) ? 1.0f : 0.0f, dw, Kg,
                 (long long)Sg * Kg, G);
  }
}

extern "C" void lt_cuda_conv2d_fwd(const lt_conv_geom *g, const float *x, const float *w,
                                   const float *b, float *y, void *ws) {
  conv_fwd_any(g, x, w, b, y, 0, ws);
}

extern "C" void lt_cuda_conv2d_bwd_data(const lt_conv_geom *g, const float *dy, const float *w,
                                        float *dx, int accumulate, void *ws) {
  if (dx) conv_bwd_data_any(g, dy, w, dx, accumulate, ws);
}

extern "C" void lt_cuda_conv2d_bwd_filter(const lt_conv_geom *g, const float *x, const float *dy,
                                          float *dw, float *db, int accumulate, void *ws) {
  if (dw) conv_bwd_filter_any(g, x, dy, dw, accumulate, ws);
  channel_sum(g->n, g->s, g->oh * g->ow, dy, db, accumulate);
}

/* ---- ConvTranspose2d: Conv2d's adjoint on the swapped geometry --------------------------------- */

/* The Conv2d that maps the transposed conv's output space (S, OH, OW) to its input space
 * (C, H, W), with the same weight tensor (C, S/groups, kh, kw) read as (out, in/groups, kh, kw). */
static lt_conv_geom convt_swap(const lt_conv_geom *g) {
  lt_conv_geom s = *g;
  s.c = g->s, s.h = g->oh, s.w = g->ow;
  s.s = g->c, s.oh = g->h, s.ow = g->w;
  s.out_pad_h = s.out_pad_w = 0;
  return s;
}

extern "C" size_t lt_cuda_conv_transpose2d_workspace(const lt_conv_geom *g) {
  const lt_conv_geom s = convt_swap(g);
  return lt_cuda_conv2d_workspace(&s);
}

/* Adds b[ch] to every (n, ch, p) element. */
__global__ void bias_add_k(size_t count, int s, int p, const float *b, float *y) {
  GRID_STRIDE(i, count) y[i] += b[(i / (unsigned)p) % (unsigned)s];
}

extern "C" void lt_cuda_conv_transpose2d_fwd(const lt_conv_geom *g, const float *x,
                                             const float *w, const float *b, float *y, void *ws) {
  const lt_conv_geom s = convt_swap(g);
  conv_bwd_data_any(&s, x, w, y, 0, ws);
  if (b) {
    const size_t count = (size_t)g->n * g->s * g->oh * g->ow;
    LAUNCH_1D(bias_add_k, count, count, g->s, g->oh * g->ow, b, y);
  }
}

extern "C" void lt_cuda_conv_transpose2d_bwd_data(const lt_conv_geom *g, const float *dy,
                                                  const float *w, float *dx, int accumulate,
                                                  void *ws) {
  const lt_conv_geom s = convt_swap(g);
  if (dx) conv_fwd_any(&s, dy, w, NULL, dx, accumulate, ws);
}

extern "C" void lt_cuda_conv_transpose2d_bwd_filter(const lt_conv_geom *g, const float *x,
                                                    const float *dy, float *dw, float *db,
                                                    int accumulate, void *ws) {
  const lt_conv_geom s = convt_swap(g);
  if (dw) conv_bwd_filter_any(&s, dy, x, dw, accumulate, ws);
  channel_sum(g->n, g->s, g->oh * g->ow, dy, db, accumulate);
}

/* ---- Linear: y (n, m) = x (n, k) · wᵀ + b ------------------------------------------------------ */

extern "C" void lt_cuda_linear_fwd(int n, int k, int m, const float *x, const float *w,
                                   const float *b, float *y) {
  lt_cuda_gemm(0, 1, n, m, k, 1.0f, x, k, w, k, 0.0f, y, m);
  if (b) {
    const size_t count = (size_t)n * m;
    LAUNCH_1D(bias_add_k, count, count, m, 1, b, y);
  }
}

extern "C" void lt_cuda_linear_bwd(int n, int k, int m, const float *x, const float *w,
                                   const float *dy, float *dx, float *dw, float *db,
                                   int accumulate) {
  const float beta = accumulate ? 1.0f : 0.0f;
  if (dx) lt_cuda_gemm(0, 0, n, k, m, 1.0f, dy, m, w, k, beta, dx, k); /* dy · w */
  if (dw) lt_cuda_gemm(1, 0, m, k, n, 1.0f, dy, m, x, k, beta, dw, k); /* dyᵀ · x */
  channel_sum(n, m, 1, dy, db, accumulate);
}
