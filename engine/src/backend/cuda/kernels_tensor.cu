/* Spatial and data-movement CUDA kernels: max/avg/global pooling, upsampling, broadcasting binary
 * ops, concat/split, slice, pad and transpose; GPU twins of kernels_pool.c and
 * kernels_tensor.c. Forward kernels give one thread per output element. Backward kernels whose
 * map is not one-to-one (pool and upsample windows, broadcast reductions) zero the gradient when
 * not accumulating and scatter with atomicAdd, so sums may differ from the CPU's in the last
 * bits (order of addition); the conformance test's tolerance covers that.
 */
#include <math.h>

#include "backend/cuda/cuda_common.cuh"

/* Shapes travel to kernels by value. */
struct dims {
  int64_t d[LT_KMAX_DIMS];
};

static dims dims_of(int ndim, const int64_t *v) {
  dims r;
  for (int i = 0; i < LT_KMAX_DIMS; i++) r.d[i] = i < ndim ? v[i] : 1;
  return r;
}

static int64_t numel(int ndim, const int64_t *shape) {
  int64_t p = 1;
  for (int d = 0; d < ndim; d++) p *= shape[d];
  return p;
}

/* Row-major strides, in elements. */
static dims strides_of(int ndim, const int64_t *shape) {
  dims st = dims_of(0, NULL);
  int64_t s = 1;
  for (int d = ndim - 1; d >= 0; d--) {
    st.d[d] = s;
    s *= shape[d];
  }
  return st;
}

/* ---- max pooling --------------------------------------------------------------------------- */

__global__ void maxpool_fwd_k(lt_pool_geom g, const float *x, float *y, uint8_t *argmax) {
  const size_t count = (size_t)g.n * g.c * g.oh * g.ow;
  GRID_STRIDE(i, count) {
    const unsigned ow = g.ow, oh = g.oh;
    const int ox = (int)(i % ow), oy = (int)((i / ow) % oh);
    const size_t p = i / (oh * ow);
    const float *xp = x + p * g.h * g.w;
    const int y0 = oy * g.stride_h - g.pad_t, x0 = ox * g.stride_w - g.pad_l;
    float best = -INFINITY;
    int besti = -1;
    for (int ki = 0; ki < g.kh; ki++) {
      const int iy = y0 + ki * g.dil_h;
      if (iy < 0 || iy >= g.h) continue;
      for (int kj = 0; kj < g.kw; kj++) {
        const int ix = x0 + kj * g.dil_w;
        if (ix < 0 || ix >= g.w) continue;
        const float v = xp[(size_t)iy * g.w + ix];
        /* the first in-bounds element wins ties and all -inf windows; NaN wins and stops */
        if (besti < 0 || v > best || isnan(v)) {
          best = v;
          besti = ki * g.kw + kj;
          if (isnan(v)) goto done;
        }
      }
    }
  done:
    y[i] = best;
    if (argmax) argmax[i] = (uint8_t)(besti < 0 ? 0 : besti);
  }
}

__global__ void maxpool_bwd_k(lt_pool_geom g, const uint8_t *argmax, const float *dy, float *dx) {
  const size_t count = (size_t)g.n * g.c * g.oh * g.ow;
  GRID_STRIDE(i, count) {
    const unsigned ow = g.ow, oh = g.oh;
    const int ox = (int)(i % ow), oy = (int)((i / ow) % oh);
    const size_t p = i / (oh * ow);
    const int a = argmax[i];
    const int iy = oy * g.stride_h - g.pad_t + (a / g.kw) * g.dil_h;
    const int ix = ox * g.stride_w - g.pad_l + (a % g.kw) * g.dil_w;
    if (iy >= 0 && iy < g.h && ix >= 0 && ix < g.w)
      atomicAdd(dx + p * g.h * g.w + (size_t)iy * g.w + ix, dy[i]);
  }
}

extern "C" void lt_cuda_maxpool_fwd(const lt_pool_geom *g, const float *x, float *y,
                                    uint8_t *argmax) {
  const size_t count = (size_t)g->n * g->c * g->oh * g->ow;
  LAUNCH_1D(maxpool_fwd_k, count, *g, x, y, argmax);
}

extern "C" void lt_cuda_maxpool_bwd(const lt_pool_geom *g, const uint8_t *argmax, const float *dy,
                                    float *dx, int accumulate) {
  if (!dx) return;
  ZERO_UNLESS(accumulate, dx, sizeof(float) * (size_t)g->n * g->c * g->h * g->w);
  const size_t count = (size_t)g->n * g->c * g->oh * g->ow;
  LAUNCH_1D(maxpool_bwd_k, count, *g, argmax, dy, dx);
}

/* ---- average pooling ----------------------------------------------------------------------- */

/* The in-bounds taps [t0, t1) of one output along one axis and PyTorch's divisor, as
 * avg_window in kernels_pool.c. */
struct win1 {
  int t0, t1, div;
};

__device__ win1 avg_window(int o, int in, int k, int stride, int pad_b, int pad_e, int dil,
                           int incl) {
  const int start = o * stride - pad_b;
  win1 r = {0, 0, 0};
  int padded = 0;
  for (int t = 0; t < k; t++) {
    const int i = start + t * dil;
    if (i >= -pad_b && i < in + pad_e) padded++;
    if (i < 0) r.t0 = t + 1;
    if (i < in) r.t1 = t + 1;
  }
  if (r.t1 < r.t0) r.t1 = r.t0;
  r.div = incl ? padded : r.t1 - r.t0;
  return r;
}

/* dir 0: forward (y = mean of window); 1: backward (scatter dy / div into dx). */
__global__ void avgpool_k(lt_pool_geom g, const float *src, float *dst, int dir) {
  const size_t count = (size_t)g.n * g.c * g.oh * g.ow;
  GRID_STRIDE(i, count) {
    const unsigned ow = g.ow, oh = g.oh;
    const int ox = (int)(i % ow), oy = (int)((i / ow) % oh);
    const size_t p = i / (oh * ow);
    const win1 wy = avg_window(oy, g.h, g.kh, g.stride_h, g.pad_t, g.pad_b, g.dil_h,
                               g.count_include_pad);
    const win1 wx = avg_window(ox, g.w, g.kw, g.stride_w, g.pad_l, g.pad_r, g.dil_w,
                               g.count_include_pad);
    const int y0 = oy * g.stride_h - g.pad_t, x0 = ox * g.stride_w - g.pad_l;
    const int div = wy.div * wx.div;
    if (dir == 0) {
      const float *xp = src + p * g.h * g.w;
      float s = 0.0f;
      for (int ki = wy.t0; ki < wy.t1; ki++)
        for (int kj = wx.t0; kj < wx.t1; kj++)
          s += xp[(size_t)(y0 + ki * g.dil_h) * g.w + x0 + kj * g.dil_w];
      dst[i] = div > 0 ? s / (float)div : 0.0f;
    } else {
      if (div <= 0) continue;
      const float v = src[i] / (float)div;
      float *dxp = dst + p * g.h * g.w;
      for (int ki = wy.t0; ki < wy.t1; ki++)
        for (int kj = wx.t0; kj < wx.t1; kj++)
          atomicAdd(dxp + (size_t)(y0 + ki * g.dil_h) * g.w + x0 + kj * g.dil_w, v);
    }
  }
}

extern "C" void lt_cuda_avgpool_fwd(const lt_pool_geom *g, const float *x, float *y) {
  const size_t count = (size_t)g->n * g->c * g->oh * g->ow;
  LAUNCH_1D(avgpool_k, count, *g, x, y, 0);
}

extern "C" void lt_cuda_avgpool_bwd(const lt_pool_geom *g, const float *dy, float *dx,
                                    int accumulate) {
  if (!dx) return;
  ZERO_UNLESS(accumulate, dx, sizeof(float) * (size_t)g->n * g->c * g->h * g->w);
  const size_t count = (size_t)g->n * g->c * g->oh * g->ow;
  LAUNCH_1D(avgpool_k, count, *g, dy, dx, 1);
}

/* One warp per plane (grid-stride over planes): a coalesced read of the plane and a shuffle sum.
 * Warp-uniform loop bounds keep every lane in the shuffles. */
__global__ void gap_fwd_k(int planes, int hw, const float *x, float *y) {
  const int lane = threadIdx.x & 31;
  const unsigned warps = (gridDim.x * blockDim.x) >> 5;
  for (unsigned p = (blockIdx.x * blockDim.x + threadIdx.x) >> 5; p < (unsigned)planes;
       p += warps) {
    const float *xp = x + (size_t)p * hw;
    float s = 0.0f;
    for (int i = lane; i < hw; i += 32) s += xp[i];
    for (int o = 16; o > 0; o >>= 1) s += __shfl_down_sync(0xffffffffu, s, o);
    if (lane == 0) y[p] = s / (float)hw;
  }
}

__global__ void gap_bwd_k(size_t count, int hw, const float *dy, float *dx, int acc) {
  GRID_STRIDE(i, count) {
    const float v = dy[i / (unsigned)hw] / (float)hw;
    dx[i] = acc ? dx[i] + v : v;
  }
}

extern "C" void lt_cuda_global_avgpool_fwd(int n, int c, int hw, const float *x, float *y) {
  const size_t threads = (size_t)n * c * 32;
  LAUNCH_1D(gap_fwd_k, threads, n * c, hw, x, y);
}

extern "C" void lt_cuda_global_avgpool_bwd(int n, int c, int hw, const float *dy, float *dx,
                                           int accumulate) {
  if (!dx) return;
  const size_t count = (size_t)n * c * hw;
  LAUNCH_1D(gap_bwd_k, count, count, hw, dy, dx, accumulate);
}

/* ---- upsampling ---------------------------------------------------------------------------- */

struct tap1 {
  int i0, i1;
  float l;
};

/* As upsample_tap in kernels_pool.c: sizes, not scale factors, define the map. */
__device__ tap1 upsample_tap(int mode, int align_corners, int in, int out, int o) {
  tap1 t;
  if (mode == LT_UPSAMPLE_NEAREST) {
    const float scale = (float)in / (float)out;
    int i = (int)floorf((float)o * scale);
    if (i > in - 1) i = in - 1;
    t.i0 = t.i1 = i;
    t.l = 0.0f;
    return t;
  }
  float src;
  if (align_corners) {
    src = out > 1 ? (float)o * ((float)(in - 1) / (float)(out - 1)) : 0.0f;
  } else {
    src = ((float)o + 0.5f) * ((float)in / (float)out) - 0.5f;
    if (src < 0.0f) src = 0.0f;
  }
  int i0 = (int)src;
  if (i0 > in - 1) i0 = in - 1;
  t.i0 = i0;
  t.i1 = i0 + (i0 < in - 1 ? 1 : 0);
  t.l = src - (float)i0;
  return t;
}

__global__ void upsample_k(int mode, int ac, int planes, int h, int w, int oh, int ow,
                           const float *src, float *dst, int dir) {
  const size_t count = (size_t)planes * oh * ow;
  GRID_STRIDE(i, count) {
    const int ox = (int)(i % (unsigned)ow), oy = (int)((i / (unsigned)ow) % (unsigned)oh);
    const size_t p = i / ((unsigned)oh * ow);
    const tap1 ty = upsample_tap(mode, ac, h, oh, oy), tx = upsample_tap(mode, ac, w, ow, ox);
    const size_t r0 = p * h * w + (size_t)ty.i0 * w, r1 = p * h * w + (size_t)ty.i1 * w;
    if (dir == 0) {
      const float top = (1.0f - tx.l) * src[r0 + tx.i0] + tx.l * src[r0 + tx.i1];
      const float bot = (1.0f - tx.l) * src[r1 + tx.i0] + tx.l * src[r1 + tx.i1];
      dst[i] = (1.0f - ty.l) * top + ty.l * bot;
    } else {
      const float v = src[i], vt = (1.0f - ty.l) * v, vb = ty.l * v;
      atomicAdd(dst + r0 + tx.i0, (1.0f - tx.l) * vt);
      atomicAdd(dst + r0 + tx.i1, tx.l * vt);
      atomicAdd(dst + r1 + tx.i0, (1.0f - tx.l) * vb);
      atomicAdd(dst + r1 + tx.i1, tx.l * vb);
    }
  }
}

extern "C" void lt_cuda_upsample_fwd(lt_upsample_mode mode, int align_corners, int n, int c,
                                     int h, int w, int oh, int ow, const float *x, float *y) {
  const size_t count = (size_t)n * c * oh * ow;
  LAUNCH_1D(upsample_k, count, (int)mode, align_corners, n * c, h, w, oh, ow, x, y, 0);
}

extern "C" void lt_cuda_upsample_bwd(lt_upsample_mode mode, int align_corners, int n, int c,
                                     int h, int w, int oh, int ow, const float *dy, float *dx,
                                     int accumulate) {
  if (!dx) return;
  ZERO_UNLESS(accumulate, dx, sizeof(float) * (size_t)n * c * h * w);
  const size_t count = (size_t)n * c * oh * ow;
  LAUNCH_1D(upsample_k, count, (int)mode, align_corners, n * c, h, w, oh, ow, dy, dx, 1);
}

/* ---- broadcasting binary ops --------------------------------------------------------------- */

/* Broadcast strides of an operand against the output shape: 0 where the operand has size 1. */
static dims bcast_strides(int ndim, const int64_t *shape, const int64_t *yshape) {
  dims st = strides_of(ndim, shape);
  for (int d = 0; d < ndim; d++)
    if (shape[d] == 1 && yshape[d] != 1) st.d[d] = 0;
  return st;
}

__device__ __forceinline__ float bin_apply(int op, float a, float b) {
  switch (op) {
  case LT_BIN_ADD: return a + b;
  case LT_BIN_SUB: return a - b;
  case LT_BIN_MUL: return a * b;
  default: return a / b;
  }
}
__device__ __forceinline__ float grad_a(int op, float dy, float a, float b) {
  return op == LT_BIN_ADD || op == LT_BIN_SUB ? dy : op == LT_BIN_MUL ? dy * b : dy / b;
}
__device__ __forceinline__ float grad_b(int op, float dy, float a, float b) {
  return op == LT_BIN_ADD   ? dy
         : op == LT_BIN_SUB ? -dy
         : op == LT_BIN_MUL ? dy * a
                            : -dy * a / (b * b);
}

/* Offsets of output element i in a and b. */
__device__ __forceinline__ void bin_offsets(int ndim, const dims &ys, const dims &as,
                                            const dims &bs, unsigned i, int64_t *ao, int64_t *bo) {
  unsigned r = (unsigned)i;
  int64_t a = 0, b = 0;
  for (int d = ndim - 1; d >= 0; d--) {
    const unsigned id = r % (unsigned)ys.d[d];
    r /= (unsigned)ys.d[d];
    a += id * as.d[d];
    b += id * bs.d[d];
  }
  *ao = a, *bo = b;
}

__global__ void binary_fwd_k(int op, int ndim, dims ys, dims as, dims bs, size_t count,
                             const float *a, const float *b, float *y) {
  GRID_STRIDE(i, count) {
    int64_t ao, bo;
    bin_offsets(ndim, ys, as, bs, i, &ao, &bo);
    y[i] = bin_apply(op, a[ao], b[bo]);
  }
}

/* Gradient of one operand; `direct` when it has the output's shape (one write per element),
 * else a scatter-add into the zeroed or kept gradient. a, b may be NULL for Add and Sub. */
__global__ void binary_grad_k(int op, int which, int ndim, dims ys, dims as, dims bs,
                              size_t count, const float *a, const float *b, const float *dy,
                              float *dg, int direct, int acc) {
  GRID_STRIDE(i, count) {
    int64_t ao, bo;
    bin_offsets(ndim, ys, as, bs, i, &ao, &bo);
    const float av = a ? a[ao] : 0.0f, bv = b ? b[bo] : 0.0f;
    const float v = which ? grad_b(op, dy[i], av, bv) : grad_a(op, dy[i], av, bv);
    if (direct)
      dg[i] = acc ? dg[i] + v : v;
    else
      atomicAdd(dg + (which ? bo : ao), v);
  }
}

extern "C" void lt_cuda_binary_fwd(lt_binary_op op, int ndim, const int64_t *ashape,
                                   const float *a, const int64_t *bshape, const float *b,
                                   const int64_t *yshape, float *y) {
  static const int64_t one[1] = {1};
  if (ndim <= 0) ndim = 1, ashape = bshape = yshape = one;
  const size_t count = (size_t)numel(ndim, yshape);
  LAUNCH_1D(binary_fwd_k, count, (int)op, ndim, dims_of(ndim, yshape),
            bcast_strides(ndim, ashape, yshape), bcast_strides(ndim, bshape, yshape), count, a, b,
            y);
}

extern "C" void lt_cuda_binary_bwd(lt_binary_op op, int ndim, const int64_t *ashape,
                                   const float *a, const int64_t *bshape, const float *b,
                                   const int64_t *yshape, const float *dy, float *da, float *db,
                                   int accumulate) {
  static const int64_t one[1] = {1};
  if (ndim <= 0) ndim = 1, ashape = bshape = yshape = one;
  const size_t count = (size_t)numel(ndim, yshape);
  const dims ys = dims_of(ndim, yshape), as = bcast_strides(ndim, ashape, yshape),
             bs = bcast_strides(ndim, bshape, yshape);
  float *grads[2] = {da, db};
  const int64_t *shapes[2] = {ashape, bshape};
  for (int which = 0; which < 2; which++) {
    if (!grads[which]) continue;
    int direct = 1;
    for (int d = 0; d < ndim; d++) direct &= shapes[which][d] == yshape[d];
    if (!direct)
      ZERO_UNLESS(accumulate, grads[which], sizeof(float) * (size_t)numel(ndim, shapes[which]));
    LAUNCH_1D(binary_grad_k, count, (int)op, which, ndim, ys, as, bs, count, a, b, dy,
              grads[which], direct, accumulate);
  }
}

/* ---- concat / split: pitched 2-D copies, one per operand ----------------------------------- */

extern "C" void lt_cuda_concat(int ninputs, const void *const *inputs, const int64_t *sizes,
                               int64_t outer, int64_t inner, size_t elem, void *y) {
  int64_t total = 0;
  for (int i = 0; i < ninputs; i++) total += sizes[i];
  const size_t yrow = (size_t)total * inner * elem;
  size_t at = 0;
  for (int i = 0; i < ninputs; i++) {
    const size_t seg = (size_t)sizes[i] * inner * elem;
    if (seg && outer)
      CHECK_CUDA(cudaMemcpy2DAsync((char *)y + at, yrow, inputs[i], seg, seg, (size_t)outer,
                                   cudaMemcpyDeviceToDevice, lt_cuda_stream));
    at += seg;
  }
}

/* dst (outer, seg) += src rows of pitch yrow. */
__global__ void split_add_k(int64_t outer, int64_t seg, int64_t yrow, const float *src,
                            float *dst) {
  const size_t count = (size_t)(outer * seg);
  GRID_STRIDE(i, count) dst[i] += src[(int64_t)(i / (unsigned)seg) * yrow + i % (unsigned)seg];
}

extern "C" void lt_cuda_split(int noutputs, void *const *outputs, const int64_t *sizes,
                              int64_t outer, int64_t inner, size_t elem, const void *y,
                              int accumulate_f32) {
  int64_t total = 0;
  for (int i = 0; i < noutputs; i++) total += sizes[i];
  const size_t yrow = (size_t)total * inner * elem;
  size_t at = 0;
  for (int i = 0; i < noutputs; i++) {
    const size_t seg = (size_t)sizes[i] * inner * elem;
    if (outputs[i] && seg && outer) {
      if (accumulate_f32) {
        const size_t count = (size_t)outer * (seg / sizeof(float));
        CHECK_COUNT(count);
        split_add_k<<<lt_cuda_blocks(count, LT_CUDA_THREADS), LT_CUDA_THREADS, 0,
                      lt_cuda_stream>>>(outer, (int64_t)(seg / sizeof(float)),
                                        (int64_t)(yrow / sizeof(float)),
                                        (const float *)((const char *)y + at),
                                        (float *)outputs[i]);
        CHECK_LAUNCH();
      } else {
        CHECK_CUDA(cudaMemcpy2DAsync(outputs[i], seg, (const char *)y + at, yrow, seg,
                                     (size_t)outer, cudaMemcpyDeviceToDevice, lt_cuda_stream));
      }
    }
    at += seg;
  }
}

/* ---- slice, pad, transpose: one thread per output element, offsets decoded per element ----- */

/* Element of `E` bytes, so one kernel body serves every dtype. */
template <int E> struct elem_t;
template <> struct elem_t<1> { typedef uint8_t type; };
template <> struct elem_t<2> { typedef uint16_t type; };
template <> struct elem_t<4> { typedef uint32_t type; };
template <> struct elem_t<8> { typedef uint64_t type; };

/* y[i] = x[src_off(i)], with src_off = sum over dims of idx(i, yshape)[d] * xst[d] + base. */
template <int E>
__global__ void gather_k(int ndim, dims ys, dims xst, int64_t base, size_t count, const void *x,
                         void *y) {
  typedef typename elem_t<E>::type T;
  GRID_STRIDE(i, count) {
    unsigned r = i;
    int64_t off = base;
    for (int d = ndim - 1; d >= 0; d--) {
      off += (int64_t)(r % (unsigned)ys.d[d]) * xst.d[d];
      r /= (unsigned)ys.d[d];
    }
    ((T *)y)[i] = ((const T *)x)[off];
  }
}

/* The gather for elem bytes (1, 2, 4 or 8). */
static void gather(size_t elem, int ndim, dims ys, dims xst, int64_t base, size_t count,
                   const void *x, void *y) {
  const unsigned blocks = lt_cuda_blocks(count, LT_CUDA_THREADS);
  if (count == 0) return;
  CHECK_COUNT(count);
  switch (elem) {
  case 1: gather_k<1><<<blocks, LT_CUDA_THREADS, 0, lt_cuda_stream>>>(ndim, ys, xst, base, count, x, y); break;
  case 2: gather_k<2><<<blocks, LT_CUDA_THREADS, 0, lt_cuda_stream>>>(ndim, ys, xst, base, count, x, y); break;
  case 4: gather_k<4><<<blocks, LT_CUDA_THREADS, 0, lt_cuda_stream>>>(ndim, ys, xst, base, count, x, y); break;
  case 8: gather_k<8><<<blocks, LT_CUDA_THREADS, 0, lt_cuda_stream>>>(ndim, ys, xst, base, count, x, y); break;
  default: lt_cuda_record("gather: element size is not 1, 2, 4 or 8 bytes", __FILE__, __LINE__); return;
  }
  CHECK_LAUNCH();
}

/* A slice reads x at (start + idx*step) per dim: strides step*xst, base sum(start*xst). */
static void slice_map(int ndim, const int64_t *xshape, const int64_t *start, const int64_t *step,
                      dims *sst, int64_t *base) {
  const dims xst = strides_of(ndim, xshape);
  *sst = xst;
  *base = 0;
  for (int d = 0; d < ndim; d++) {
    sst->d[d] = step[d] * xst.d[d];
    *base += start[d] * xst.d[d];
  }
}

extern "C" void lt_cuda_slice_fwd(int ndim, const int64_t *xshape, const int64_t *start,
                                  const int64_t *step, const int64_t *yshape, size_t elem,
                                  const void *x, void *y) {
  dims sst;
  int64_t base;
  slice_map(ndim, xshape, start, step, &sst, &base);
  gather(elem, ndim, dims_of(ndim, yshape), sst, base, (size_t)numel(ndim, yshape), x, y);
}

/* A slice maps distinct y elements to distinct x elements: plain adds, no atomics. */
__global__ void slice_bwd_k(int ndim, dims ys, dims sst, int64_t base, size_t count,
                            const float *dy, float *dx) {
  GRID_STRIDE(i, count) {
    unsigned r = i;
    int64_t off = base;
    for (int d = ndim - 1; d >= 0; d--) {
      off += (int64_t)(r % (unsigned)ys.d[d]) * sst.d[d];
      r /= (unsigned)ys.d[d];
    }
    dx[off] += dy[i];
  }
}

extern "C" void lt_cuda_slice_bwd(int ndim, const int64_t *xshape, const int64_t *start,
                                  const int64_t *step, const int64_t *yshape, const float *dy,
                                  float *dx, int accumulate) {
  if (!dx) return;
  ZERO_UNLESS(accumulate, dx, sizeof(float) * (size_t)numel(ndim, xshape));
  dims sst;
  int64_t base;
  slice_map(ndim, xshape, start, step, &sst, &base);
  const size_t count = (size_t)numel(ndim, yshape);
  LAUNCH_1D(slice_bwd_k, count, ndim, dims_of(ndim, yshape), sst, base, count, dy, dx);
}

/* dir 0: y[i] = x at (idx - begin) or value; dir 1 (over x): dx[i] (+)= dy at (idx + begin) when
 * that lies inside y (negative pads crop). */
__global__ void pad_k(int ndim, dims from_shape, dims to_shape, dims to_st, dims shift,
                      size_t count, float value, const float *src, float *dst, int dir, int acc) {
  GRID_STRIDE(i, count) {
    unsigned r = i;
    int64_t off = 0;
    int inside = 1;
    for (int d = ndim - 1; d >= 0; d--) {
      const int64_t t = (int64_t)(r % (unsigned)from_shape.d[d]) + shift.d[d];
      r /= (unsigned)from_shape.d[d];
      inside &= t >= 0 && t < to_shape.d[d];
      off += t * to_st.d[d];
    }
    if (dir == 0)
      dst[i] = inside ? src[off] : value;
    else
      dst[i] = (acc ? dst[i] : 0.0f) + (inside ? src[off] : 0.0f);
  }
}

static void pad_run(int ndim, const int64_t *xshape, const int64_t *pads, float value,
                    const float *src, float *dst, int dir, int acc) {
  int64_t yshape[LT_KMAX_DIMS];
  dims shift = dims_of(0, NULL);
  for (int d = 0; d < ndim; d++) {
    yshape[d] = xshape[d] + pads[d] + pads[ndim + d];
    shift.d[d] = dir == 0 ? -pads[d] : pads[d];
  }
  const int64_t *from = dir == 0 ? yshape : xshape, *to = dir == 0 ? xshape : yshape;
  const size_t count = (size_t)numel(ndim, from);
  LAUNCH_1D(pad_k, count, ndim, dims_of(ndim, from), dims_of(ndim, to), strides_of(ndim, to),
            shift, count, value, src, dst, dir, acc);
}

extern "C" void lt_cuda_pad_fwd(int ndim, const int64_t *xshape, const int64_t *pads, float value,
                                const float *x, float *y) {
  pad_run(ndim, xshape, pads, value, x, y, 0, 0);
}

extern "C" void lt_cuda_pad_bwd(int ndim, const int64_t *xshape, const int64_t *pads,
                                const float *dy, float *dx, int accumulate) {
  if (!dx) return;
  pad_run(ndim, xshape, pads, 0.0f, dy, dx, 1, accumulate);
}

extern "C" void lt_cuda_transpose(int ndim, const int64_t *xshape, const int *perm, size_t elem,
                                  const void *x, void *y) {
  if (ndim <= 0) { /* a 0-d tensor is its own transpose */
    CHECK_CUDA(cudaMemcpyAsync(y, x, elem, cudaMemcpyDeviceToDevice, lt_cuda_stream));
    return;
  }
  const dims xst = strides_of(ndim, xshape);
  dims pst = dims_of(0, NULL);
  int64_t yshape[LT_KMAX_DIMS];
  for (int d = 0; d < ndim; d++) {
    yshape[d] = xshape[perm[d]];
    pst.d[d] = xst.d[perm[d]]; /* x stride of y's dim d */
  }
  gather(elem, ndim, dims_of(ndim, yshape), pst, 0, (size_t)numel(ndim, yshape), x, y);
}
