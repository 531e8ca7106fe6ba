/* CPU kernels beyond kernels.h: batch norm with an optional trailing ReLU and separate accumulate
 * flags, Add+ReLU, and a parallel gradient pass-through. The kernels.h batch-norm entry points
 * are thin wrappers of these. Internal to liblathe. */
#ifndef LATHE_KERNELS_FUSED_H
#define LATHE_KERNELS_FUSED_H

#include <stddef.h>
#include <stdint.h>

/* lt_cpu_bn_fwd_train / lt_cpu_bn_fwd_infer with y = relu(bn(x)) when relu is set. Reductions
 * have a fixed order (32 lanes per (image, channel) plane in float, planes summed in double), so
 * results depend neither on the thread count nor on the vector width. The inference form may
 * write y over x. */
void lt_cpu_bn_fwd_train_ex(int n, int c, int hw, const float *x, const float *gamma,
                            const float *beta, float eps, float momentum, float *y,
                            float *save_mean, float *save_invstd, float *running_mean,
                            float *running_var, int relu);
void lt_cpu_bn_fwd_infer_ex(int n, int c, int hw, const float *x, const float *gamma,
                            const float *beta, const float *running_mean,
                            const float *running_var, float eps, float *y, int relu);
/* lt_cpu_bn_bwd with one accumulate flag for dx and one for dgamma/dbeta. With relu_y (the
 * output of a ReLU applied to this batch norm's output) the gradient taken is that of the pair:
 * dy is the ReLU's output gradient and passes where relu_y > 0, exactly as lt_cpu_relu_bwd. */
void lt_cpu_bn_bwd_ex(int n, int c, int hw, const float *x, const float *dy, const float *relu_y,
                      const float *gamma, const float *save_mean, const float *save_invstd,
                      float *dx, int acc_dx, float *dgamma, float *dbeta, int acc_params);

/* y = relu(a + b) elementwise (NaN passes through, as torch.relu); y may be a or b. */
void lt_cpu_add_relu_fwd(size_t count, const float *a, const float *b, float *y);
/* Backward of y = relu(a + b): g = (y > 0 ? dy : 0), then da = g (+= with acc_a) and db = g (+=
 * with acc_b) in one pass; da or db may be NULL, and da == db is allowed. */
void lt_cpu_add_relu_bwd(size_t count, const float *y, const float *dy, float *da, int acc_a,
                         float *db, int acc_b);
/* dx = dy, or dx += dy when accumulating; parallel. */
void lt_cpu_pass_grad(size_t count, const float *dy, float *dx, int accumulate);

/* lt_cpu_sgd_step / lt_cpu_adamw_step on elements [lo, hi) only, on the calling thread (the
 * same update code, so the same bits): for one parallel pass over many parameter tensors. */
void lt_cpu_sgd_step_range(size_t lo, size_t hi, float lr, float momentum, float dampening,
                           float weight_decay, int nesterov, float *w, const float *g,
                           float *velocity, int first_step);
void lt_cpu_adamw_step_range(size_t lo, size_t hi, float lr, float beta1, float beta2, float eps,
                             float weight_decay, int64_t step, float *w, const float *g, float *m,
                             float *v);

#endif
