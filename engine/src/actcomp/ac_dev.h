/* The stash's data operations on a device backend's memory (stash.c), one table per backend
 * (lt_backend_vtbl.actcomp): the CUDA backend's (backend/cuda/stash_cuda.cu) and the tests' fake
 * device's (tests/common/fake_device.h). On the host the stash runs its own CPU code; each
 * operation here has that code as its CPU twin, exported below for the twins' tests.
 *
 * Usage (stash.c, once bound to a device backend be):
 *   const ac_dev_ops *ops = be->vt->actcomp;
 *   void *ctx = ops->open(be, &err);
 *   ops->mask1_pack(ctx, dy, n, dmask, &nnz, &err);   // every pointer: be's device memory
 *   ...
 *   ops->close(ctx);
 *
 * All array arguments are device memory of the context's backend, except the per-channel arrays
 * (a, b, off, scale: nchan host floats each) and the scalar results (host). Work is queued on
 * the backend's stream; an operation that returns a scalar to the host (nnz, zeros, a sum, fits,
 * a stream's length) waits for it. Streams are the CPU codec's format (lt_ac_decode reads them
 * once copied to the host). */
#ifndef LATHE_AC_DEV_H
#define LATHE_AC_DEV_H

#include "lathe/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ac_dev_ops {
  /* A context for one stash on be: codec scratch and the like, released by close(). */
  void *(*open)(lt_backend *be, lt_err *err);
  void (*close)(void *ctx);
  /* A LORENZO stream of the prod(shape) floats at x at bound eb, into *data (allocated from the
   * backend under LT_MEM_SAVED, *bytes long; free it with the backend's free, same size and
   * category). With off and scale (nchan = shape[1] host floats each; ndim >= 3) the stream is
   * of z = (x − off_c)·scale_c instead, computed as that product of that difference in float
   * (lt_ac_encode_affine's map). */
  lt_status (*encode)(void *ctx, const float *x, int ndim, const int64_t *shape, double eb,
                      const float *off, const float *scale, uint8_t **data, size_t *bytes,
                      lt_err *err);
  /* Decodes a stream of encode() into the n floats at y; LT_ERR_FORMAT on a malformed one. */
  lt_status (*decode)(void *ctx, const uint8_t *data, size_t bytes, float *y, int64_t n,
                      lt_err *err);
  /* mask bit i (LSB first within each byte) = y[i] > 0, (n + 7) / 8 bytes; *nnz = bits set. */
  lt_status (*mask1_pack)(void *ctx, const float *y, int64_t n, uint8_t *mask, int64_t *nnz,
                          lt_err *err);
  /* y[i] = 1.0f where mask bit i is set, else 0.0f. */
  lt_status (*mask1_unpack)(void *ctx, const uint8_t *mask, int64_t n, float *y, lt_err *err);
  /* 2-bit packing of n argmax indices (lt_cpu_argmax_pack2's layout, (n + 3) / 4 bytes);
   * *fits = 0, p unspecified, when an index is above 3. */
  lt_status (*pack2)(void *ctx, const uint8_t *a, int64_t n, uint8_t *p, int *fits, lt_err *err);
  lt_status (*unpack2)(void *ctx, const uint8_t *p, int64_t n, uint8_t *a, lt_err *err);
  /* Over the (batch, nchan, hw) planes of z: y = fmaf(z, a_c, b_c), c the plane's channel;
   * with mask (bit i for element i, as mask1_pack) then 0 where the bit is clear and
   * max(0, ·) where it is set. y may be z. */
  lt_status (*chan_map)(void *ctx, float *y, const float *z, int64_t batch, int64_t nchan,
                        int64_t hw, const float *a, const float *b, const uint8_t *mask,
                        lt_err *err);
  /* Exact zeros among the n floats at x. */
  lt_status (*count_zeros)(void *ctx, const float *x, int64_t n, int64_t *zeros, lt_err *err);
  /* Σ|x| (p 1) or Σx² (p 2) of the n floats at x, accumulated in double. */
  lt_status (*sum_pow)(void *ctx, const float *x, int64_t n, int p, double *sum, lt_err *err);
} ac_dev_ops;

/* ---- the CPU twins (stash.c): what each operation computes, on host memory ------------------ */
int64_t ac_mask1_pack(const float *y, int64_t n, uint8_t *mask);
void ac_mask1_unpack(const uint8_t *mask, int64_t n, float *y);
/* chan_map's twin. Bit-identical to it where the device computes fmaf (the AVX-512 path does;
 * a scalar tail may round a*z and + b separately). */
void ac_chan_map(float *y, const float *z, int64_t batch, int64_t nchan, int64_t hw,
                 const float *a, const float *b, const uint8_t *mask);
int64_t ac_count_zeros(const float *x, int64_t n);
double ac_sum_pow(const float *x, int64_t n, int p);

#ifdef __cplusplus
}
#endif
#endif
