/* Pointwise kernels on the CPU: activations, dropout and batch normalisation. Loops are flat,
 * contiguous and restrict-qualified so they vectorise; `accumulate` is hoisted out of them.
 */
#include "backend/cpu/kernels.h"

#include <math.h>
#include <string.h>

#include "lathe/core.h"

/* dx[i] = v or dx[i] += v. Kept inline so each loop below stays one vectorisable body. */
#define PUT(dx, i, v, acc) ((dx)[i] = (acc) ? (dx)[i] + (v) : (v))

/* ---- activations --------------------------------------------------------------------------- */

void lt_cpu_relu_fwd(size_t count, const float *restrict x, float *restrict y) {
  /* written so that NaN passes through, as torch.relu does: a diverging run stays visible */
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

/* Mean and biased variance of channel ch over (n, hw), two passes with double accumulators so a
 * large batch with a large mean does not lose the variance. */
static void channel_stats(int n, int c, int hw, const float *x, int ch, double *mean, double *var) {
  double s = 0.0;
  for (int img = 0; img < n; img++) {
    const float *restrict p = x + ((size_t)img * c + ch) * hw;
    float part = 0.0f;
    for (int i = 0; i < hw; i++)
      part += p[i];
    s += part;
  }
  const double cnt = (double)n * hw, m = s / cnt;
  const float mf = (float)m;
  double q = 0.0;
  for (int img = 0; img < n; img++) {
    const float *restrict p = x + ((size_t)img * c + ch) * hw;
    float part = 0.0f;
    for (int i = 0; i < hw; i++) {
      const float d = p[i] - mf;
      part += d * d;
    }
    q += part;
  }
  *mean = m;
  *var = q / cnt;
}

/* y = x * scale + shift over channel ch. */
static void channel_affine(int n, int c, int hw, const float *x, int ch, float scale, float shift,
                           float *y) {
  for (int img = 0; img < n; img++) {
    const float *restrict p = x + ((size_t)img * c + ch) * hw;
    float *restrict q = y + ((size_t)img * c + ch) * hw;
    for (int i = 0; i < hw; i++)
      q[i] = p[i] * scale + shift;
  }
}

void lt_cpu_bn_fwd_train(int n, int c, int hw, const float *x, const float *gamma,
                         const float *beta, float eps, float momentum, float *y, float *save_mean,
                         float *save_invstd, float *running_mean, float *running_var) {
  const double cnt = (double)n * hw;
#pragma omp parallel for schedule(static)
  for (int ch = 0; ch < c; ch++) {
    double mean, var;
    channel_stats(n, c, hw, x, ch, &mean, &var);
    const float invstd = (float)(1.0 / sqrt(var + eps));
    const float g = gamma ? gamma[ch] : 1.0f, b = beta ? beta[ch] : 0.0f;
    channel_affine(n, c, hw, x, ch, g * invstd, b - (float)mean * g * invstd, y);
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

void lt_cpu_bn_fwd_infer(int n, int c, int hw, const float *x, const float *gamma,
                         const float *beta, const float *running_mean, const float *running_var,
                         float eps, float *y) {
#pragma omp parallel for schedule(static)
  for (int ch = 0; ch < c; ch++) {
    const float invstd = 1.0f / sqrtf(running_var[ch] + eps);
    const float g = gamma ? gamma[ch] : 1.0f, b = beta ? beta[ch] : 0.0f;
    channel_affine(n, c, hw, x, ch, g * invstd, b - running_mean[ch] * g * invstd, y);
  }
}

void lt_cpu_bn_bwd(int n, int c, int hw, const float *x, const float *dy, const float *gamma,
                   const float *save_mean, const float *save_invstd, float *dx, float *dgamma,
                   float *dbeta, int accumulate) {
  const double cnt = (double)n * hw;
#pragma omp parallel for schedule(static)
  for (int ch = 0; ch < c; ch++) {
    const float mean = save_mean[ch], invstd = save_invstd[ch];
    /* sum(dy) and sum(dy * xhat), xhat = (x - mean) * invstd */
    double sdy = 0.0, sdyx = 0.0;
    for (int img = 0; img < n; img++) {
      const float *restrict xp = x + ((size_t)img * c + ch) * hw;
      const float *restrict dyp = dy + ((size_t)img * c + ch) * hw;
      float a = 0.0f, b = 0.0f;
      for (int i = 0; i < hw; i++) {
        a += dyp[i];
        b += dyp[i] * (xp[i] - mean);
      }
      sdy += a;
      sdyx += b;
    }
    sdyx *= invstd;
    if (dbeta) dbeta[ch] = accumulate ? dbeta[ch] + (float)sdy : (float)sdy;
    if (dgamma) dgamma[ch] = accumulate ? dgamma[ch] + (float)sdyx : (float)sdyx;
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
      if (accumulate)
        for (int i = 0; i < hw; i++)
          dxp[i] += dyp[i] * k1 + xp[i] * k2 + k3;
      else
        for (int i = 0; i < hw; i++)
          dxp[i] = dyp[i] * k1 + xp[i] * k2 + k3;
    }
  }
}
