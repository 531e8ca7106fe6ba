/* Pointwise CUDA kernels: activations, dropout, batch normalisation, softmax, losses and
 * optimizer updates; GPU twins of kernels_pointwise.c and kernels_loss.c. Elementwise kernels are
 * grid-stride loops; per-channel and per-row reductions use one block per channel (BN) or one
 * thread per row (softmax, whose rows are class scores), with double accumulators where the CPU
 * uses them so that the two backends agree to float rounding.
 */
#include <math.h>

#include "backend/cuda/cuda_common.cuh"

/* dx[i] = v or dx[i] += v, as the CPU's PUT. */
__device__ __forceinline__ void put(float *dx, size_t i, float v, int acc) {
  dx[i] = acc ? dx[i] + v : v;
}

/* ---- activations --------------------------------------------------------------------------- */

/* One kernel per activation keeps each body a plain load-compute-store. */
#define LT_UNARY_FWD(name, expr)                                                                   \
  __global__ void name##_k(size_t count, float alpha, float lo, float hi, const float *x,         \
                           float *y) {                                                             \
    GRID_STRIDE(i, count) {                                                                        \
      const float v = x[i];                                                                        \
      y[i] = (expr);                                                                               \
    }                                                                                              \
  }
LT_UNARY_FWD(relu_fwd, v < 0.0f ? 0.0f : v) /* NaN passes through, as torch.relu */
LT_UNARY_FWD(leaky_fwd, v > 0.0f ? v : alpha * v)
LT_UNARY_FWD(sigmoid_fwd, 1.0f / (1.0f + expf(-v)))
LT_UNARY_FWD(tanh_fwd, tanhf(v))
LT_UNARY_FWD(clip_fwd, v < lo ? lo : (v > hi ? hi : v))

/* s is the saved tensor (output for relu/sigmoid/tanh, input for leaky/clip). */
#define LT_UNARY_BWD(name, expr)                                                                   \
  __global__ void name##_k(size_t count, float alpha, float lo, float hi, const float *s,         \
                           const float *dy, float *dx, int acc) {                                  \
    GRID_STRIDE(i, count) {                                                                        \
      const float v = s[i], d = dy[i];                                                             \
      put(dx, i, (expr), acc);                                                                     \
    }                                                                                              \
  }
LT_UNARY_BWD(relu_bwd, v > 0.0f ? d : 0.0f)
LT_UNARY_BWD(leaky_bwd, v > 0.0f ? d : alpha * d)
LT_UNARY_BWD(sigmoid_bwd, d * v * (1.0f - v))
LT_UNARY_BWD(tanh_bwd, d * (1.0f - v * v))
LT_UNARY_BWD(clip_bwd, (v >= lo && v <= hi) ? d : 0.0f) /* closed interval, as PyTorch */

extern "C" {
void lt_cuda_relu_fwd(size_t count, const float *x, float *y) {
  LAUNCH_1D(relu_fwd_k, count, count, 0.f, 0.f, 0.f, x, y);
}
void lt_cuda_relu_bwd(size_t count, const float *y, const float *dy, float *dx, int accumulate) {
  if (!dx) return;
  LAUNCH_1D(relu_bwd_k, count, count, 0.f, 0.f, 0.f, y, dy, dx, accumulate);
}
void lt_cuda_leaky_relu_fwd(size_t count, float alpha, const float *x, float *y) {
  LAUNCH_1D(leaky_fwd_k, count, count, alpha, 0.f, 0.f, x, y);
}
void lt_cuda_leaky_relu_bwd(size_t count, float alpha, const float *x, const float *dy, float *dx,
                            int accumulate) {
  if (!dx) return;
  LAUNCH_1D(leaky_bwd_k, count, count, alpha, 0.f, 0.f, x, dy, dx, accumulate);
}
void lt_cuda_sigmoid_fwd(size_t count, const float *x, float *y) {
  LAUNCH_1D(sigmoid_fwd_k, count, count, 0.f, 0.f, 0.f, x, y);
}
void lt_cuda_sigmoid_bwd(size_t count, const float *y, const float *dy, float *dx,
                         int accumulate) {
  if (!dx) return;
  LAUNCH_1D(sigmoid_bwd_k, count, count, 0.f, 0.f, 0.f, y, dy, dx, accumulate);
}
void lt_cuda_tanh_fwd(size_t count, const float *x, float *y) {
  LAUNCH_1D(tanh_fwd_k, count, count, 0.f, 0.f, 0.f, x, y);
}
void lt_cuda_tanh_bwd(size_t count, const float *y, const float *dy, float *dx, int accumulate) {
  if (!dx) return;
  LAUNCH_1D(tanh_bwd_k, count, count, 0.f, 0.f, 0.f, y, dy, dx, accumulate);
}
void lt_cuda_clip_fwd(size_t count, float lo, float hi, const float *x, float *y) {
  LAUNCH_1D(clip_fwd_k, count, count, 0.f, lo, hi, x, y);
}
void lt_cuda_clip_bwd(size_t count, float lo, float hi, const float *x, const float *dy, float *dx,
                      int accumulate) {
  if (!dx) return;
  LAUNCH_1D(clip_bwd_k, count, count, 0.f, lo, hi, x, dy, dx, accumulate);
}
} /* extern "C" */

__global__ void pass_grad_k(size_t count, const float *dy, float *dx) {
  GRID_STRIDE(i, count) dx[i] += dy[i];
}

extern "C" void lt_cuda_pass_grad(size_t count, const float *dy, float *dx, int accumulate) {
  if (!dx || count == 0) return;
  if (!accumulate) {
    CHECK_CUDA(cudaMemcpyAsync(dx, dy, count * sizeof(float), cudaMemcpyDeviceToDevice,
                               lt_cuda_stream));
    return;
  }
  LAUNCH_1D(pass_grad_k, count, count, dy, dx);
}

/* ---- dropout ------------------------------------------------------------------------------- */

/* Philox-4x32-10 exactly as lt_philox in core.c: counter (index, stream), key seed. */
__device__ void philox(uint64_t seed, uint64_t stream, uint64_t index, uint32_t out[4]) {
  uint32_t c0 = (uint32_t)index, c1 = (uint32_t)(index >> 32);
  uint32_t c2 = (uint32_t)stream, c3 = (uint32_t)(stream >> 32);
  uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
#pragma unroll
  for (int r = 0; r < 10; r++) {
    const uint32_t hi0 = __umulhi(0xD2511F53u, c0), lo0 = 0xD2511F53u * c0;
    const uint32_t hi1 = __umulhi(0xCD9E8D57u, c2), lo1 = 0xCD9E8D57u * c2;
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0, c1 = lo1, c2 = n2, c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  out[0] = c0, out[1] = c1, out[2] = c2, out[3] = c3;
}

/* One thread per mask byte (8 elements, two Philox blocks), as the CPU walks them. */
__global__ void dropout_fwd_k(size_t count, uint64_t thr, float scale, uint64_t seed,
                              uint64_t stream, const float *x, float *y, uint8_t *mask) {
  const size_t nbytes = (count + 7) / 8;
  GRID_STRIDE(b, nbytes) {
    uint32_t r[8];
    philox(seed, stream, 2 * (uint64_t)b, r);
    philox(seed, stream, 2 * (uint64_t)b + 1, r + 4);
    uint8_t m = 0;
#pragma unroll
    for (int j = 0; j < 8; j++) {
      const size_t i = 8 * (size_t)b + j;
      if (i >= count) break;
      const int keep = (uint64_t)r[j] >= thr;
      m |= (uint8_t)(keep << j);
      y[i] = keep ? x[i] * scale : 0.0f;
    }
    if (mask) mask[b] = m;
  }
}

__global__ void dropout_bwd_k(size_t count, float scale, const uint8_t *mask, const float *dy,
                              float *dx, int acc) {
  GRID_STRIDE(i, count) put(dx, i, ((mask[i >> 3] >> (i & 7)) & 1u) ? dy[i] * scale : 0.0f, acc);
}

extern "C" void lt_cuda_dropout_fwd(size_t count, float p, uint64_t seed, uint64_t stream,
                                    const float *x, float *y, uint8_t *mask_bits) {
  /* the threshold and scale are computed on the host exactly as the CPU does */
  const double thr_d = (double)p * 4294967296.0;
  const uint64_t thr =
      thr_d <= 0.0 ? 0 : (thr_d >= 4294967296.0 ? (uint64_t)1 << 32 : (uint64_t)thr_d);
  const float scale = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
  LAUNCH_1D(dropout_fwd_k, (count + 7) / 8, count, thr, scale, seed, stream, x, y, mask_bits);
}

extern "C" void lt_cuda_dropout_bwd(size_t count, float p, const uint8_t *mask_bits,
                                    const float *dy, float *dx, int accumulate) {
  if (!dx) return;
  const float scale = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
  LAUNCH_1D(dropout_bwd_k, count, count, scale, mask_bits, dy, dx, accumulate);
}

/* ---- batch normalisation ------------------------------------------------------------------- */

/* Sum of v over the block, returned to every thread (blockDim.x a multiple of 32, <= 1024). */
__device__ double block_sum(double v) {
  __shared__ double part[32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads(); /* part[] may still be read by a previous call */
  if (lane == 0) part[warp] = v;
  __syncthreads();
  v = threadIdx.x < (blockDim.x >> 5) ? part[threadIdx.x] : 0.0;
  if (warp == 0)
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  if (threadIdx.x == 0) part[0] = v;
  __syncthreads();
  return part[0];
}

#define BN_THREADS 512

/* Offset of element i of channel ch's (n, hw) slab; 32-bit arithmetic, since a 64-bit division
 * per element would dominate these reductions (n*hw < 2^31 for any batch that fits a GPU). */
__device__ __forceinline__ size_t bn_off(unsigned i, unsigned hw, unsigned c, unsigned ch) {
  return ((size_t)(i / hw) * c + ch) * hw + i % hw;
}

/* One block per channel: mean, then biased variance around the float mean (two passes, as the
 * CPU), then the saved statistics and the running averages. */
__global__ void bn_stats_k(int n, int c, int hw, const float *x, float eps, float momentum,
                           float *mean_out, float *invstd_out, float *running_mean,
                           float *running_var) {
  const unsigned ch = blockIdx.x, cnt = (unsigned)n * (unsigned)hw;
  double s = 0.0;
  for (unsigned i = threadIdx.x; i < cnt; i += blockDim.x) s += x[bn_off(i, hw, c, ch)];
  const double m = block_sum(s) / (double)cnt;
  const float mf = (float)m;
  double q = 0.0;
  for (unsigned i = threadIdx.x; i < cnt; i += blockDim.x) {
    const float d = x[bn_off(i, hw, c, ch)] - mf;
    q += (double)(d * d);
  }
  const double var = block_sum(q) / (double)cnt;
  if (threadIdx.x == 0) {
    mean_out[ch] = (float)m;
    invstd_out[ch] = (float)(1.0 / sqrt(var + eps));
    if (running_mean) running_mean[ch] = (1.0f - momentum) * running_mean[ch] + momentum * (float)m;
    if (running_var) {
      const double unbiased = cnt > 1 ? var * (double)cnt / (double)(cnt - 1) : var;
      running_var[ch] = (1.0f - momentum) * running_var[ch] + momentum * (float)unbiased;
    }
  }
}

/* y = x * scale[ch] + shift[ch], with scale and shift from (mean, invstd) or the running stats. */
__global__ void bn_apply_k(size_t count, int c, int hw, const float *x, const float *gamma,
                           const float *beta, const float *mean, const float *invstd_or_var,
                           int from_var, float eps, float *y) {
  GRID_STRIDE(i, count) {
    const int ch = (int)((i / (unsigned)hw) % (unsigned)c);
    const float invstd =
        from_var ? 1.0f / sqrtf(invstd_or_var[ch] + eps) : invstd_or_var[ch];
    const float g = gamma ? gamma[ch] : 1.0f, b = beta ? beta[ch] : 0.0f;
    const float sc = g * invstd;
    y[i] = x[i] * sc + (b - mean[ch] * sc);
  }
}

extern "C" void lt_cuda_bn_fwd_train(int n, int c, int hw, const float *x, const float *gamma,
                                     const float *beta, float eps, float momentum, float *y,
                                     float *save_mean, float *save_invstd, float *running_mean,
                                     float *running_var) {
  /* The executor always provides the saved statistics in training mode; the apply pass reads
   * them back from there. */
  if (!save_mean || !save_invstd) {
    lt_cuda_record("lt_cuda_bn_fwd_train needs save_mean and save_invstd", __FILE__, __LINE__);
    return;
  }
  bn_stats_k<<<c, BN_THREADS, 0, lt_cuda_stream>>>(n, c, hw, x, eps, momentum, save_mean,
                                                   save_invstd, running_mean, running_var);
  CHECK_LAUNCH();
  const size_t count = (size_t)n * c * hw;
  LAUNCH_1D(bn_apply_k, count, count, c, hw, x, gamma, beta, save_mean, save_invstd, 0, eps, y);
}

extern "C" void lt_cuda_bn_fwd_infer(int n, int c, int hw, const float *x, const float *gamma,
                                     const float *beta, const float *running_mean,
                                     const float *running_var, float eps, float *y) {
  const size_t count = (size_t)n * c * hw;
  LAUNCH_1D(bn_apply_k, count, count, c, hw, x, gamma, beta, running_mean, running_var, 1, eps,
            y);
}

/* One block per channel: sum(dy) and sum(dy * (x - mean)) * invstd; then dgamma, dbeta and the
 * folded coefficients k1, k2, k3 of dx = dy*k1 + x*k2 + k3 into coef (3c). */
__global__ void bn_bwd_reduce_k(int n, int c, int hw, const float *x, const float *dy,
                                const float *gamma, const float *mean, const float *invstd,
                                float *dgamma, float *dbeta, int acc, float *coef) {
  const unsigned ch = blockIdx.x, cnt = (unsigned)n * (unsigned)hw;
  const float mu = mean[ch], is = invstd[ch];
  double a = 0.0, b = 0.0;
  for (unsigned i = threadIdx.x; i < cnt; i += blockDim.x) {
    const size_t off = bn_off(i, hw, c, ch);
    a += dy[off];
    b += (double)(dy[off] * (x[off] - mu));
  }
  const double sdy = block_sum(a), sdyx = block_sum(b) * is;
  if (threadIdx.x == 0) {
    if (dbeta) dbeta[ch] = acc ? dbeta[ch] + (float)sdy : (float)sdy;
    if (dgamma) dgamma[ch] = acc ? dgamma[ch] + (float)sdyx : (float)sdyx;
    const float g = gamma ? gamma[ch] : 1.0f;
    const float k1 = g * is;
    const float mdy = (float)(sdy / (double)cnt), mdyx = (float)(sdyx / (double)cnt);
    const float k2 = -k1 * mdyx * is;
    coef[ch] = k1, coef[c + ch] = k2, coef[2 * c + ch] = -k1 * mdy - k2 * mu;
  }
}

__global__ void bn_bwd_dx_k(size_t count, int c, int hw, const float *x, const float *dy,
                            const float *coef, float *dx, int acc) {
  GRID_STRIDE(i, count) {
    const int ch = (int)((i / (unsigned)hw) % (unsigned)c);
    put(dx, i, dy[i] * coef[ch] + x[i] * coef[c + ch] + coef[2 * c + ch], acc);
  }
}

/* Device scratch for small per-call results (BN coefficients, loss sums), grown on demand and
 * counted under LT_MEM_WORKSPACE. One per host thread, like the stream. */
static thread_local void *scratch;
static thread_local size_t scratch_bytes;

static void *cuda_scratch(size_t bytes) {
  if (bytes <= scratch_bytes) return scratch;
  if (scratch) {
    /* the previous user may still be queued on the stream */
    if (cudaStreamSynchronize(lt_cuda_stream) != cudaSuccess || cudaFree(scratch) != cudaSuccess)
      return NULL;
    lt_mem_account(LT_MEM_WORKSPACE, -(int64_t)scratch_bytes);
    scratch = NULL, scratch_bytes = 0;
  }
  if (cudaMalloc(&scratch, bytes) != cudaSuccess) {
    scratch = NULL;
    return NULL;
  }
  scratch_bytes = bytes;
  lt_mem_account(LT_MEM_WORKSPACE, (int64_t)bytes);
  return scratch;
}

extern "C" void lt_cuda_bn_bwd(int n, int c, int hw, const float *x, const float *dy,
                               const float *gamma, const float *save_mean,
                               const float *save_invstd, float *dx, float *dgamma, float *dbeta,
                               int accumulate) {
  float *coef = (float *)cuda_scratch(sizeof(float) * 3 * (size_t)c);
  if (!coef) {
    lt_cuda_record("cudaMalloc of BN scratch failed", __FILE__, __LINE__);
    return;
  }
  bn_bwd_reduce_k<<<c, BN_THREADS, 0, lt_cuda_stream>>>(n, c, hw, x, dy, gamma, save_mean,
                                                        save_invstd, dgamma, dbeta, accumulate,
                                                        coef);
  CHECK_LAUNCH();
  if (!dx) return;
  const size_t count = (size_t)n * c * hw;
  LAUNCH_1D(bn_bwd_dx_k, count, count, c, hw, x, dy, coef, dx, accumulate);
}

/* ---- softmax and losses: one thread per row ------------------------------------------------ */

/* y (k) = softmax(x (k)); returns the row's log-sum-exp, as softmax_row in kernels_loss.c. */
__device__ double softmax_row(int k, const float *x, float *y) {
  float mx = x[0];
  for (int j = 1; j < k; j++) mx = x[j] > mx ? x[j] : mx;
  double s = 0.0;
  for (int j = 0; j < k; j++) {
    const float e = expf(x[j] - mx);
    if (y) y[j] = e;
    s += e;
  }
  if (y) {
    const float inv = (float)(1.0 / s);
    for (int j = 0; j < k; j++) y[j] *= inv;
  }
  return log(s) + mx;
}

__global__ void softmax_fwd_k(int n, int k, const float *x, float *y) {
  GRID_STRIDE(i, n) softmax_row(k, x + (size_t)i * k, y + (size_t)i * k);
}

__global__ void softmax_bwd_k(int n, int k, const float *y, const float *dy, float *dx, int acc) {
  GRID_STRIDE(i, n) {
    const float *yr = y + (size_t)i * k, *dyr = dy + (size_t)i * k;
    double dot = 0.0;
    for (int j = 0; j < k; j++) dot += (double)dyr[j] * yr[j];
    const float d = (float)dot;
    for (int j = 0; j < k; j++) put(dx + (size_t)i * k, j, yr[j] * (dyr[j] - d), acc);
  }
}

extern "C" void lt_cuda_softmax_fwd(int n, int k, const float *x, float *y) {
  LAUNCH_1D(softmax_fwd_k, (size_t)n, n, k, x, y);
}
extern "C" void lt_cuda_softmax_bwd(int n, int k, const float *y, const float *dy, float *dx,
                                    int accumulate) {
  if (!dx) return;
  LAUNCH_1D(softmax_bwd_k, (size_t)n, n, k, y, dy, dx, accumulate);
}

/* Loss sums land here (device), then come back to the host in one copy. */
struct loss_acc {
  double loss;
  unsigned long long correct;
  unsigned long long bad;
};

__global__ void xent_k(int n, int k, const float *logits, const int32_t *labels, float scale,
                       float *dlogits, loss_acc *acc) {
  GRID_STRIDE(i, n) {
    const float *x = logits + (size_t)i * k;
    const int32_t lab = labels[i];
    int am = 0; /* first maximum, as torch.argmax */
    for (int j = 1; j < k; j++)
      if (x[j] > x[am]) am = j;
    if (lab < 0 || lab >= k) {
      atomicAdd(&acc->bad, 1ull);
      if (dlogits)
        for (int j = 0; j < k; j++) dlogits[(size_t)i * k + j] = nanf("");
      continue;
    }
    if (am == lab) atomicAdd(&acc->correct, 1ull);
    float *d = dlogits ? dlogits + (size_t)i * k : NULL;
    const double lse = softmax_row(k, x, d);
    atomicAdd(&acc->loss, lse - x[lab]);
    if (d) {
      for (int j = 0; j < k; j++) d[j] *= scale;
      d[lab] -= scale;
    }
  }
}

/* kind 0: squared error, 1: absolute error (sign(0) = 0, as torch's l1_loss backward). */
__global__ void pointloss_k(size_t count, int kind, const float *p, const float *t, float scale,
                            float *dp, loss_acc *acc) {
  double s = 0.0;
  GRID_STRIDE(i, count) {
    const float d = p[i] - t[i];
    s += kind ? fabs((double)d) : (double)d * d;
    if (dp) dp[i] = kind ? (d > 0.0f ? scale : (d < 0.0f ? -scale : 0.0f)) : 2.0f * scale * d;
  }
  s = block_sum(s);
  if (threadIdx.x == 0) atomicAdd(&acc->loss, s);
}

/* Zeroed device sums for one loss call, or NULL (recorded) when the scratch cannot be had. */
static loss_acc *loss_sums_begin(void) {
  loss_acc *dev = (loss_acc *)cuda_scratch(sizeof(loss_acc));
  if (!dev) {
    lt_cuda_record("cudaMalloc of loss scratch failed", __FILE__, __LINE__);
    return NULL;
  }
  if (cudaMemsetAsync(dev, 0, sizeof(loss_acc), lt_cuda_stream) != cudaSuccess) {
    lt_cuda_record("cudaMemsetAsync of loss scratch failed", __FILE__, __LINE__);
    return NULL;
  }
  return dev;
}

/* Brings the sums back (synchronising the stream); NaN loss when a launch or copy failed. */
static loss_acc loss_sums_end(loss_acc *dev) {
  loss_acc h = {NAN, 0, 1};
  cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess)
    e = cudaMemcpyAsync(&h, dev, sizeof h, cudaMemcpyDeviceToHost, lt_cuda_stream);
  if (e == cudaSuccess) e = cudaStreamSynchronize(lt_cuda_stream);
  if (e != cudaSuccess) {
    lt_cuda_record(cudaGetErrorName(e), __FILE__, __LINE__);
    h.loss = NAN;
  }
  return h;
}

extern "C" double lt_cuda_softmax_xent(int n, int k, const float *logits, const int32_t *labels,
                                       float scale, float *dlogits, int64_t *correct) {
  loss_acc *dev = loss_sums_begin();
  if (!dev) return NAN;
  xent_k<<<lt_cuda_blocks((size_t)n, LT_CUDA_THREADS), LT_CUDA_THREADS, 0, lt_cuda_stream>>>(
      n, k, logits, labels, scale, dlogits, dev);
  loss_acc h = loss_sums_end(dev);
  if (correct) *correct = (int64_t)h.correct;
  return h.bad ? NAN : h.loss;
}

static double point_loss(int kind, size_t count, const float *pred, const float *target,
                         float scale, float *dpred) {
  if (count >= LT_CUDA_MAX_COUNT) {
    lt_cuda_record("point_loss: 2^31 elements or more in one launch", __FILE__, __LINE__);
    return NAN;
  }
  loss_acc *dev = loss_sums_begin();
  if (!dev) return NAN;
  if (count)
    pointloss_k<<<lt_cuda_blocks(count, LT_CUDA_THREADS), LT_CUDA_THREADS, 0, lt_cuda_stream>>>(
        count, kind, pred, target, scale, dpred, dev);
  return loss_sums_end(dev).loss;
}

extern "C" double lt_cuda_mse(size_t count, const float *pred, const float *target, float scale,
                              float *dpred) {
  return point_loss(0, count, pred, target, scale, dpred);
}
extern "C" double lt_cuda_l1(size_t count, const float *pred, const float *target, float scale,
                             float *dpred) {
  return point_loss(1, count, pred, target, scale, dpred);
}

/* ---- optimizers: torch.optim.SGD and AdamW, operation for operation as the CPU ------------- */

__global__ void sgd_k(size_t count, float lr, float momentum, float dampening, float wd,
                      int nesterov, float *w, const float *g, float *vel, int use_mom,
                      int first) {
  GRID_STRIDE(i, count) {
    float d = g[i];
    if (wd != 0.0f) d += wd * w[i];
    if (use_mom) {
      const float buf = first ? d : momentum * vel[i] + (1.0f - dampening) * d;
      vel[i] = buf;
      d = nesterov ? d + momentum * buf : buf;
    }
    w[i] -= lr * d;
  }
}

extern "C" void lt_cuda_sgd_step(size_t count, float lr, float momentum, float dampening,
                                 float weight_decay, int nesterov, float *w, const float *g,
                                 float *velocity, int first_step) {
  const int use_mom = momentum != 0.0f && velocity;
  LAUNCH_1D(sgd_k, count, count, lr, momentum, dampening, weight_decay, nesterov, w, g, velocity,
            use_mom, first_step);
}

__global__ void adamw_k(size_t count, float beta1, float beta2, float eps, float step_size,
                        float bc2_sqrt, float decay, float *w, const float *g, float *m,
                        float *v) {
  GRID_STRIDE(i, count) {
    float wi = w[i] * decay;
    const float gi = g[i];
    const float mi = beta1 * m[i] + (1.0f - beta1) * gi;
    const float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
    m[i] = mi, v[i] = vi;
    w[i] = wi - step_size * mi / (sqrtf(vi) / bc2_sqrt + eps);
  }
}

extern "C" void lt_cuda_adamw_step(size_t count, float lr, float beta1, float beta2, float eps,
                                   float weight_decay, int64_t step, float *w, const float *g,
                                   float *m, float *v) {
  const double bc1 = 1.0 - pow((double)beta1, (double)step);
  const double bc2 = 1.0 - pow((double)beta2, (double)step);
  LAUNCH_1D(adamw_k, count, count, beta1, beta2, eps, (float)(lr / bc1), (float)sqrt(bc2),
            1.0f - lr * weight_decay, w, g, m, v);
}
