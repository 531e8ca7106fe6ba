/* Pointwise kernels on the CPU: activations, dropout and batch normalisation. Loops are flat,
 * contiguous and restrict-qualified so they vectorise; `accumulate` is hoisted out of them.
 */
#include "backend/cpu/kernels.h"
#include "backend/cpu/kernels_fused.h"

#include <math.h>
#include <string.h>

#include "lathe/core.h"

/* dx[i] = v or dx[i] += v. Kept inline so each loop below stays one vectorisable body. */
#define PUT(dx, i, v, acc) ((dx)[i] = (acc) ? (dx)[i] + (v) : (v))

/* ---- activations --------------------------------------------------------------------------- */

void lt_cpu_relu_fwd(size_t count, const float *x, float *y) {
  /* written so that NaN passes through, as torch.relu does: a diverging run stays visible; y may
   * be x (the executor's unfused forward of a fused pair runs it in place) */
#pragma omp parallel for simd schedule(static)
  for (size_t i = 0; i < count; i++)
    y[i] = x[i] < 0.0f ? 0.0f : x[i];
}

void lt_cpu_relu_bwd(size_t count, const float *restrict y, const float *restrict dy,
                     float *restrict dx, int accumulate) {
  if (!dx) return;
#pragma omp parallel for simd schedule(static)
  for (size_t i = 0; i < count; i++)
    PUT(dx, i, y[i] > 0.0f ? dy[i] : 0.0f, accumulate);
}

void lt_cpu_relu_mask_pack(size_t count, const float *restrict y, uint8_t *restrict mask) {
  const size_t nbytes = (count + 7) / 8;
#pragma omp parallel for schedule(static)
  for (size_t b = 0; b < nbytes; b++) {
    uint8_t v = 0;
    for (size_t j = 0; j < 8 && 8 * b + j < count; j++)
      v |= (uint8_t)((y[8 * b + j] > 0.0f) << j);
    mask[b] = v;
  }
}

void lt_cpu_relu_bwd_mask(size_t count, const uint8_t *restrict mask, const float *restrict dy,
                          float *restrict dx, int accumulate) {
  if (!dx) return;
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < count; i++)
    PUT(dx, i, ((mask[i >> 3] >> (i & 7)) & 1u) ? dy[i] : 0.0f, accumulate);
}

void lt_cpu_leaky_relu_fwd(size_t count, float alpha, const float *restrict x, float *restrict y) {
#pragma omp parallel for simd schedule(static)
  for (size_t i = 0; i < count; i++)
    y[i] = x[i] > 0.0f ? x[i] : alpha * x[i];
}

void lt_cpu_leaky_relu_bwd(size_t count, float alpha, const float *restrict x,
                           const float *restrict dy, float *restrict dx, int accumulate) {
  if (!dx) return;
#pragma omp parallel for simd schedule(static)
  for (size_t i = 0; i < count; i++)
    PUT(dx, i, x[i] > 0.0f ? dy[i] : alpha * dy[i], accumulate);
}

void lt_cpu_sigmoid_fwd(size_t count, const float *restrict x, float *restrict y) {
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < count; i++)
    y[i] = 1.0f / (1.0f + expf(-x[i]));
}

void lt_cpu_sigmoid_bwd(size_t count, const float *restrict y, const float *restrict dy,
                        float *restrict dx, int accumulate) {
  if (!dx) return;
#pragma omp parallel for simd schedule(static)
  for (size_t i = 0; i < count; i++)
    PUT(dx, i, dy[i] * y[i] * (1.0f - y[i]), accumulate);
}

void lt_cpu_tanh_fwd(size_t count, const float *restrict x, float *restrict y) {
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < count; i++)
    y[i] = tanhf(x[i]);
}

void lt_cpu_tanh_bwd(size_t count, const float *restrict y, const float *restrict dy,
                     float *restrict dx, int accumulate) {
  if (!dx) return;
#pragma omp parallel for simd schedule(static)
  for (size_t i = 0; i < count; i++)
    PUT(dx, i, dy[i] * (1.0f - y[i] * y[i]), accumulate);
}

void lt_cpu_clip_fwd(size_t count, float lo, float hi, const float *restrict x, float *restrict y) {
#pragma omp parallel for simd schedule(static)
  for (size_t i = 0; i < count; i++)
    y[i] = x[i] < lo ? lo : (x[i] > hi ? hi : x[i]);
}

void lt_cpu_clip_bwd(size_t count, float lo, float hi, const float *restrict x,
                     const float *restrict dy, float *restrict dx, int accumulate) {
  if (!dx) return;
    /* PyTorch passes the gradient on the closed interval [lo, hi] */
#pragma omp parallel for simd schedule(static)
  for (size_t i = 0; i < count; i++)
    PUT(dx, i, (x[i] >= lo && x[i] <= hi) ? dy[i] : 0.0f, accumulate);
}

/* ---- dropout ------------------------------------------------------------------------------- */

/* Element i is kept when word i%4 of Philox(seed, stream, i/4) is >= p * 2^32, so the mask is a
 * pure function of (seed, stream, i) whatever the thread count. */
void lt_cpu_dropout_fwd(size_t count, float p, uint64_t seed, uint64_t stream, const float *x,
                        float *y, uint8_t *mask_bits) {
  const double thr_d = (double)p * 4294967296.0;
  const uint64_t thr =
      thr_d <= 0.0 ? 0 : (thr_d >= 4294967296.0 ? (uint64_t)1 << 32 : (uint64_t)thr_d);
  const float scale = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
  const size_t nbytes = (count + 7) / 8;
#pragma omp parallel for schedule(static)
  for (size_t b = 0; b < nbytes; b++) {
    uint32_t r[8];
    lt_philox(seed, stream, 2 * b, r);
    lt_philox(seed, stream, 2 * b + 1, r + 4);
    uint8_t m = 0;
    for (size_t j = 0; j < 8 && 8 * b + j < count; j++) {
      const int keep = (uint64_t)r[j] >= thr;
      m |= (uint8_t)(keep << j);
      y[8 * b + j] = keep ? x[8 * b + j] * scale : 0.0f;
    }
    if (mask_bits) mask_bits[b] = m;
  }
}

void lt_cpu_dropout_bwd(size_t count, float p, const uint8_t *restrict mask_bits,
                        const float *restrict dy, float *restrict dx, int accumulate) {
  if (!dx) return;
  const float scale = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < count; i++)
    PUT(dx, i, ((mask_bits[i >> 3] >> (i & 7)) & 1u) ? dy[i] * scale : 0.0f, accumulate);
}

/* ---- batch normalisation ------------------------------------------------------------------- */

/* The backward's reductions (sum(dy), sum(dy * (x - mean))) run in double, as PyTorch's CPU
 * batch norm accumulates (acc_type<float> is double). GCC vector extensions give 16 double lanes in two 8-wide accumulators (one zmm each on
 * AVX-512, two ymm on AVX2, four xmm on SSE2) plus a scalar tail, then a fixed-order horizontal
 * sum: the order is the same on every ISA and thread count, only the speed changes. Vectors
 * travel through pointers and macros, never by value across a call, so builds without AVX-512
 * see no ABI warning. */
typedef float vf8 __attribute__((vector_size(32)));
typedef int32_t vi8 __attribute__((vector_size(32)));
typedef double vd8 __attribute__((vector_size(64)));
#define VLOAD(v, p) memcpy(&(v), (p), sizeof(v))
#define VWIDEN(v) __builtin_convertvector((v), vd8)
/* dy where r > 0, else 0 (lt_cpu_relu_bwd's choice, bit for bit: NaN in r gives 0). */
#define VMASK(d, r)                                                                                \
  do {                                                                                             \
    const vf8 zero_ = {0};                                                                         \
    (d) = (vf8)((vi8)(d) & ((r) > zero_));                                                         \
  } while (0)

static double hsum8(const vd8 *v) {
  double s = 0.0;
  for (int j = 0; j < 8; j++)
    s += (*v)[j];
  return s;
}

/* *sdy += sum(g[i]), *sdyx += sum(g[i] * (x[i] - m)), g = dy, or relu_bwd(r, dy) when r is set */
static void plane_dot(const float *x, const float *dy, const float *r, int hw, float m,
                      double *sdy, double *sdyx) {
  vd8 a0 = {0}, a1 = {0}, b0 = {0}, b1 = {0};
  vf8 u, w, d, e, q, t;
  int i = 0;
  for (; i + 16 <= hw; i += 16) {
    VLOAD(u, x + i);
    VLOAD(w, x + i + 8);
    VLOAD(d, dy + i);
    VLOAD(e, dy + i + 8);
    if (r) {
      VLOAD(q, r + i);
      VLOAD(t, r + i + 8);
      VMASK(d, q);
      VMASK(e, t);
    }
    const vd8 dd = VWIDEN(d), de = VWIDEN(e);
    a0 += dd;
    a1 += de;
    b0 += dd * VWIDEN(u - m);
    b1 += de * VWIDEN(w - m);
  }
  double ta = 0.0, tb = 0.0;
  for (; i < hw; i++) {
    const float g = r ? (r[i] > 0.0f ? dy[i] : 0.0f) : dy[i];
    ta += g;
    tb += (double)g * (x[i] - m);
  }
  a0 += a1;
  b0 += b1;
  *sdy += hsum8(&a0) + ta;
  *sdyx += hsum8(&b0) + tb;
}

/* Mean and biased variance of channel ch over (n, hw): two passes (the second mostly from cache:
 * one channel is n*hw*4 bytes), each plane summed in float, in index order, and the plane sums
 * added in double in image order, so a large batch with a large mean does not lose the variance.
 * That order is kept exactly (it decides which values land next to 0 for a ReLU after the batch
 * norm, and PyTorch's reference tests see a flipped sign as a whole element's gradient moving);
 * the speed comes from running 8 planes' sums side by side, 8 independent dependency chains
 * instead of one. */
#define PLANES_8(stmt)                                                                             \
  do {                                                                                             \
    stmt(0);                                                                                       \
    stmt(1);                                                                                       \
    stmt(2);                                                                                       \
    stmt(3);                                                                                       \
    stmt(4);                                                                                       \
    stmt(5);                                                                                       \
    stmt(6);                                                                                       \
    stmt(7);                                                                                       \
  } while (0)

/* out[j] = sum of plane j's elements, or of (x - m)^2 when sq, for k <= 8 planes `step` apart. */
static void planes_reduce(const float *x, size_t step, int k, int hw, int sq, float m, float *out) {
  if (k == 8) {
    const float *restrict p0 = x, *restrict p1 = x + step, *restrict p2 = x + 2 * step,
                          *restrict p3 = x + 3 * step, *restrict p4 = x + 4 * step,
                          *restrict p5 = x + 5 * step, *restrict p6 = x + 6 * step,
                          *restrict p7 = x + 7 * step;
    float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f, a4 = 0.0f, a5 = 0.0f, a6 = 0.0f, a7 = 0.0f;
    if (sq) {
#define SQ_STEP(j)                                                                                 \
  {                                                                                                \
    const float d = p##j[i] - m;                                                                   \
    a##j += d * d;                                                                                 \
  }
      for (int i = 0; i < hw; i++)
        PLANES_8(SQ_STEP);
#undef SQ_STEP
    } else {
#define SUM_STEP(j) a##j += p##j[i]
      for (int i = 0; i < hw; i++)
        PLANES_8(SUM_STEP);
#undef SUM_STEP
    }
    out[0] = a0, out[1] = a1, out[2] = a2, out[3] = a3;
    out[4] = a4, out[5] = a5, out[6] = a6, out[7] = a7;
    return;
  }
  for (int j = 0; j < k; j++) {
    const float *restrict p = x + (size_t)j * step;
    float a = 0.0f;
    if (sq) {
      for (int i = 0; i < hw; i++) {
        const float d = p[i] - m;
        a += d * d;
      }
    } else {
      for (int i = 0; i < hw; i++)
        a += p[i];
    }
    out[j] = a;
  }
}

static double channel_reduce(int n, int c, int hw, const float *x, int ch, int sq, float m) {
  double s = 0.0;
  float part[8];
  for (int img = 0; img < n; img += 8) {
    const int k = n - img < 8 ? n - img : 8;
    planes_reduce(x + ((size_t)img * c + ch) * hw, (size_t)c * hw, k, hw, sq, m, part);
    for (int j = 0; j < k; j++)
      s += part[j];
  }
  return s;
}

static void channel_stats(int n, int c, int hw, const float *x, int ch, double *mean, double *var) {
  const double cnt = (double)n * hw, m = channel_reduce(n, c, hw, x, ch, 0, 0.0f) / cnt;
  *mean = m;
  *var = channel_reduce(n, c, hw, x, ch, 1, (float)m) / cnt;
}

/* y = x * scale + shift over channel ch, then max(y, 0) when relu (NaN passes, as torch.relu).
 * y may be x (an unfused inference forward runs a folded BatchNorm in place). */
static void channel_affine(int n, int c, int hw, const float *x, int ch, float scale, float shift,
                           float *y, int relu) {
  for (int img = 0; img < n; img++) {
    const float *p = x + ((size_t)img * c + ch) * hw;
    float *q = y + ((size_t)img * c + ch) * hw;
    if (relu) {
#pragma omp simd
      for (int i = 0; i < hw; i++) {
        const float v = p[i] * scale + shift;
        q[i] = v < 0.0f ? 0.0f : v;
      }
    } else {
#pragma omp simd
      for (int i = 0; i < hw; i++)
        q[i] = p[i] * scale + shift;
    }
  }
}

void lt_cpu_bn_fwd_train_ex(int n, int c, int hw, const float *x, const float *gamma,
                            const float *beta, float eps, float momentum, float *y,
                            float *save_mean, float *save_invstd, float *running_mean,
                            float *running_var, int relu) {
  const double cnt = (double)n * hw;
#pragma omp parallel for schedule(static)
  for (int ch = 0; ch < c; ch++) {
    double mean, var;
    channel_stats(n, c, hw, x, ch, &mean, &var);
    const float invstd = (float)(1.0 / sqrt(var + eps));
    const float g = gamma ? gamma[ch] : 1.0f, b = beta ? beta[ch] : 0.0f;
    channel_affine(n, c, hw, x, ch, g * invstd, b - (float)mean * g * invstd, y, relu);
    if (save_mean) save_mean[ch] = (float)mean;
    if (save_invstd) save_invstd[ch] = invstd;
    if (running_mean)
      running_mean[ch] = (1.0f - momentum) * running_mean[ch] + momentum * (float)mean;
    if (running_var) {
      const double unbiased = cnt > 1.0 ? var * cnt / (cnt - 1.0) : var;
      running_var[ch] = (1.0f - momentum) * running_var[ch] + momentum * (float)unbiased;
    }
  }
}

void lt_cpu_bn_fwd_train(int n, int c, int hw, const float *x, const float *gamma,
                         const float *beta, float eps, float momentum, float *y, float *save_mean,
                         float *save_invstd, float *running_mean, float *running_var) {
  lt_cpu_bn_fwd_train_ex(n, c, hw, x, gamma, beta, eps, momentum, y, save_mean, save_invstd,
                         running_mean, running_var, 0);
}

void lt_cpu_bn_fwd_infer_ex(int n, int c, int hw, const float *x, const float *gamma,
                            const float *beta, const float *running_mean,
                            const float *running_var, float eps, float *y, int relu) {
  /* (n, c) planes, so that small channel counts still use every thread */
#pragma omp parallel for schedule(static)
  for (int64_t pl = 0; pl < (int64_t)n * c; pl++) {
    const int ch = (int)(pl % c), img = (int)(pl / c);
    const float invstd = 1.0f / sqrtf(running_var[ch] + eps);
    const float g = gamma ? gamma[ch] : 1.0f, b = beta ? beta[ch] : 0.0f;
    channel_affine(1, c, hw, x + (size_t)img * c * hw, ch, g * invstd,
                   b - running_mean[ch] * g * invstd, y + (size_t)img * c * hw, relu);
  }
}

void lt_cpu_bn_fwd_infer(int n, int c, int hw, const float *x, const float *gamma,
                         const float *beta, const float *running_mean, const float *running_var,
                         float eps, float *y) {
  lt_cpu_bn_fwd_infer_ex(n, c, hw, x, gamma, beta, running_mean, running_var, eps, y, 0);
}

void lt_cpu_bn_bwd_ex(int n, int c, int hw, const float *x, const float *dy, const float *relu_y,
                      const float *gamma, const float *save_mean, const float *save_invstd,
                      float *dx, int acc_dx, float *dgamma, float *dbeta, int acc_params) {
  const double cnt = (double)n * hw;
#pragma omp parallel for schedule(static)
  for (int ch = 0; ch < c; ch++) {
    const float mean = save_mean[ch], invstd = save_invstd[ch];
    /* sum(dy) and sum(dy * xhat), xhat = (x - mean) * invstd */
    double sdy = 0.0, sdyx = 0.0;
    for (int img = 0; img < n; img++) {
      const size_t off = ((size_t)img * c + ch) * hw;
      plane_dot(x + off, dy + off, relu_y ? relu_y + off : NULL, hw, mean, &sdy, &sdyx);
    }
    sdyx *= invstd;
    if (dbeta) dbeta[ch] = acc_params ? dbeta[ch] + (float)sdy : (float)sdy;
    if (dgamma) dgamma[ch] = acc_params ? dgamma[ch] + (float)sdyx : (float)sdyx;
    if (!dx) continue;
    /* dx = g*invstd * (dy - mean(dy) - xhat * mean(dy*xhat)), folded into dx = dy*k1 + x*k2 + k3 */
    const float g = gamma ? gamma[ch] : 1.0f;
    const float k1 = g * invstd;
    const float mdy = (float)(sdy / cnt), mdyx = (float)(sdyx / cnt);
    const float k2 = -k1 * mdyx * invstd;
    const float k3 = -k1 * mdy - k2 * mean;
    for (int img = 0; img < n; img++) {
      const float *restrict xp = x + ((size_t)img * c + ch) * hw;
      const float *restrict dyp = dy + ((size_t)img * c + ch) * hw;
      float *restrict dxp = dx + ((size_t)img * c + ch) * hw;
      if (relu_y) {
        const float *restrict rp = relu_y + ((size_t)img * c + ch) * hw;
        if (acc_dx) {
#pragma omp simd
          for (int i = 0; i < hw; i++)
            dxp[i] += (rp[i] > 0.0f ? dyp[i] : 0.0f) * k1 + xp[i] * k2 + k3;
        } else {
#pragma omp simd
          for (int i = 0; i < hw; i++)
            dxp[i] = (rp[i] > 0.0f ? dyp[i] : 0.0f) * k1 + xp[i] * k2 + k3;
        }
      } else if (acc_dx) {
#pragma omp simd
        for (int i = 0; i < hw; i++)
          dxp[i] += dyp[i] * k1 + xp[i] * k2 + k3;
      } else {
#pragma omp simd
        for (int i = 0; i < hw; i++)
          dxp[i] = dyp[i] * k1 + xp[i] * k2 + k3;
      }
    }
  }
}

void lt_cpu_bn_bwd(int n, int c, int hw, const float *x, const float *dy, const float *gamma,
                   const float *save_mean, const float *save_invstd, float *dx, float *dgamma,
                   float *dbeta, int accumulate) {
  lt_cpu_bn_bwd_ex(n, c, hw, x, dy, NULL, gamma, save_mean, save_invstd, dx, accumulate, dgamma,
                   dbeta, accumulate);
}

/* ---- fused elementwise ----------------------------------------------------------------------- */

void lt_cpu_add_relu_fwd(size_t count, const float *a, const float *b, float *y) {
  /* y may be a or b: the executor's unfused forward runs a residual Add in place */
#pragma omp parallel for simd schedule(static)
  for (size_t i = 0; i < count; i++) {
    const float v = a[i] + b[i];
    y[i] = v < 0.0f ? 0.0f : v;
  }
}

void lt_cpu_add_relu_bwd(size_t count, const float *y, const float *dy, float *da, int acc_a,
                         float *db, int acc_b) {
  if (da && da == db) { /* x + x: both gradients land in one buffer, a's first */
    lt_cpu_relu_bwd(count, y, dy, da, acc_a);
    lt_cpu_relu_bwd(count, y, dy, db, 1);
    return;
  }
  if (!da || !db) {
    lt_cpu_relu_bwd(count, y, dy, da ? da : db, da ? acc_a : acc_b);
    return;
  }
  const float *restrict yp = y, *restrict dyp = dy;
  float *restrict ap = da, *restrict bp = db;
#pragma omp parallel for simd schedule(static)
  for (size_t i = 0; i < count; i++) {
    const float g = yp[i] > 0.0f ? dyp[i] : 0.0f;
    PUT(ap, i, g, acc_a);
    PUT(bp, i, g, acc_b);
  }
}

void lt_cpu_pass_grad(size_t count, const float *restrict dy, float *restrict dx, int accumulate) {
  if (accumulate) {
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < count; i++)
      dx[i] += dy[i];
  } else {
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < count; i++)
      dx[i] = dy[i];
  }
}
