/* Softmax, losses and optimizer updates on the CPU. Losses return double sums so that the mean
 * the caller takes does not drift with the batch size; optimizer steps follow torch.optim.SGD and
 * torch.optim.AdamW (PyTorch 1.13, single-tensor path) operation for operation.
 */
#include "backend/cpu/kernels.h"

#include <math.h>
#include <omp.h>

#include "backend/cpu/kernels_fused.h"

/* ---- softmax ------------------------------------------------------------------------------- */

/* y (k) = softmax(x (k)); returns log(sum(exp(x - max))) + max, the row's log-sum-exp. */
static double softmax_row(int k, const float *restrict x, float *restrict y) {
  float mx = x[0];
  for (int j = 1; j < k; j++)
    mx = x[j] > mx ? x[j] : mx;
  double s = 0.0;
  for (int j = 0; j < k; j++) {
    y[j] = expf(x[j] - mx);
    s += y[j];
  }
  const float inv = (float)(1.0 / s);
  for (int j = 0; j < k; j++)
    y[j] *= inv;
  return log(s) + mx;
}

void lt_cpu_softmax_fwd(int n, int k, const float *x, float *y) {
#pragma omp parallel for schedule(static)
  for (int i = 0; i < n; i++)
    softmax_row(k, x + (size_t)i * k, y + (size_t)i * k);
}

void lt_cpu_softmax_bwd(int n, int k, const float *y, const float *dy, float *dx, int accumulate) {
  if (!dx) return;
#pragma omp parallel for schedule(static)
  for (int i = 0; i < n; i++) {
    const float *restrict yr = y + (size_t)i * k, *restrict dyr = dy + (size_t)i * k;
    float *restrict dxr = dx + (size_t)i * k;
    double dot = 0.0;
    for (int j = 0; j < k; j++)
      dot += (double)dyr[j] * yr[j];
    const float d = (float)dot;
    for (int j = 0; j < k; j++) {
      const float v = yr[j] * (dyr[j] - d);
      dxr[j] = accumulate ? dxr[j] + v : v;
    }
  }
}

/* ---- losses -------------------------------------------------------------------------------- */

double lt_cpu_softmax_xent(int n, int k, const float *logits, const int32_t *labels, float scale,
                           float *dlogits, int64_t *correct) {
  double loss = 0.0;
  int64_t hits = 0;
  int bad = 0;
#pragma omp parallel for schedule(static) reduction(+ : loss, hits, bad)
  for (int i = 0; i < n; i++) {
    const float *restrict x = logits + (size_t)i * k;
    const int32_t lab = labels[i];
    int am = 0; /* first maximum, as torch.argmax */
    for (int j = 1; j < k; j++)
      if (x[j] > x[am]) am = j;
    if (lab < 0 || lab >= k) {
      bad++;
      if (dlogits)
        for (int j = 0; j < k; j++)
          dlogits[(size_t)i * k + j] = NAN;
      continue;
    }
    hits += am == lab;
    if (dlogits) {
      float *restrict d = dlogits + (size_t)i * k;
      const double lse = softmax_row(k, x, d);
      loss += lse - x[lab];
      for (int j = 0; j < k; j++)
        d[j] *= scale;
      d[lab] -= scale;
    } else {
      float mx = x[0];
      for (int j = 1; j < k; j++)
        mx = x[j] > mx ? x[j] : mx;
      double s = 0.0;
      for (int j = 0; j < k; j++)
        s += expf(x[j] - mx);
      loss += log(s) + mx - x[lab];
    }
  }
  if (correct) *correct = hits;
  return bad ? NAN : loss;
}

double lt_cpu_mse(size_t count, const float *pred, const float *target, float scale, float *dpred) {
  double loss = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : loss)
  for (size_t i = 0; i < count; i++) {
    const float d = pred[i] - target[i];
    loss += (double)d * d;
    if (dpred) dpred[i] = 2.0f * scale * d;
  }
  return loss;
}

double lt_cpu_l1(size_t count, const float *pred, const float *target, float scale, float *dpred) {
  double loss = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : loss)
  for (size_t i = 0; i < count; i++) {
    const float d = pred[i] - target[i];
    loss += fabs((double)d);
    /* sign(0) = 0, as torch's l1_loss backward */
    if (dpred) dpred[i] = d > 0.0f ? scale : (d < 0.0f ? -scale : 0.0f);
  }
  return loss;
}

/* ---- optimizers ---------------------------------------------------------------------------- */

/* The updates are written once, for a range of elements, and run either parallel over one tensor
 * (lt_cpu_*_step) or serially on a slice (lt_cpu_*_step_range, for lt_optim_step's single
 * parallel pass over all parameters): the same code, so the same bits either way. */

/* torch.optim.SGD: d = g + wd*w; buf = d on the first step, else momentum*buf + (1-dampening)*d;
 * d = nesterov ? d + momentum*buf : buf; w -= lr*d. velocity may be NULL when momentum is 0. */
static inline void sgd_range(size_t lo, size_t hi, float lr, float momentum, float dampening,
                             float weight_decay, int nesterov, float *restrict w,
                             const float *restrict g, float *restrict velocity, int first_step) {
  const int use_mom = momentum != 0.0f && velocity;
#pragma omp simd
  for (size_t i = lo; i < hi; i++) {
    float d = g[i];
    if (weight_decay != 0.0f) d += weight_decay * w[i];
    if (use_mom) {
      const float buf = first_step ? d : momentum * velocity[i] + (1.0f - dampening) * d;
      velocity[i] = buf;
      d = nesterov ? d + momentum * buf : buf;
    }
    w[i] -= lr * d;
  }
}

/* [lo, hi) of this thread's static share of count elements */
static void thread_share(size_t count, size_t *lo, size_t *hi) {
  const size_t nt = (size_t)omp_get_num_threads(), t = (size_t)omp_get_thread_num();
  const size_t per = count / nt, extra = count % nt;
  *lo = t * per + (t < extra ? t : extra);
  *hi = *lo + per + (t < extra);
}

void lt_cpu_sgd_step(size_t count, float lr, float momentum, float dampening, float weight_decay,
                     int nesterov, float *restrict w, const float *restrict g,
                     float *restrict velocity, int first_step) {
#pragma omp parallel
  {
    size_t lo, hi;
    thread_share(count, &lo, &hi);
    sgd_range(lo, hi, lr, momentum, dampening, weight_decay, nesterov, w, g, velocity, first_step);
  }
}

void lt_cpu_sgd_step_range(size_t lo, size_t hi, float lr, float momentum, float dampening,
                           float weight_decay, int nesterov, float *w, const float *g,
                           float *velocity, int first_step) {
  sgd_range(lo, hi, lr, momentum, dampening, weight_decay, nesterov, w, g, velocity, first_step);
}

/* torch.optim.AdamW: w *= 1 - lr*wd; m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g²;
 * w -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps), with t = step (1 on the first call). */
static inline void adamw_range(size_t lo, size_t hi, float lr, float beta1, float beta2, float eps,
                               float weight_decay, int64_t step, float *restrict w,
                               const float *restrict g, float *restrict m, float *restrict v) {
  const double bc1 = 1.0 - pow((double)beta1, (double)step);
  const double bc2 = 1.0 - pow((double)beta2, (double)step);
  const float step_size = (float)(lr / bc1);
  const float bc2_sqrt = (float)sqrt(bc2);
  const float decay = 1.0f - lr * weight_decay;
#pragma omp simd
  for (size_t i = lo; i < hi; i++) {
    w[i] *= decay;
    m[i] = beta1 * m[i] + (1.0f - beta1) * g[i];
    v[i] = beta2 * v[i] + (1.0f - beta2) * g[i] * g[i];
    w[i] -= step_size * m[i] / (sqrtf(v[i]) / bc2_sqrt + eps);
  }
}

void lt_cpu_adamw_step(size_t count, float lr, float beta1, float beta2, float eps,
                       float weight_decay, int64_t step, float *restrict w, const float *restrict g,
                       float *restrict m, float *restrict v) {
#pragma omp parallel
  {
    size_t lo, hi;
    thread_share(count, &lo, &hi);
    adamw_range(lo, hi, lr, beta1, beta2, eps, weight_decay, step, w, g, m, v);
  }
}

void lt_cpu_adamw_step_range(size_t lo, size_t hi, float lr, float beta1, float beta2, float eps,
                             float weight_decay, int64_t step, float *w, const float *g, float *m,
                             float *v) {
  adamw_range(lo, hi, lr, beta1, beta2, eps, weight_decay, step, w, g, m, v);
}
