/* The stash's data operations on CUDA device memory: the CUDA backend's table of actcomp/ac_dev.h
 * (lt_cuda_ac_ops, its vtable's actcomp). Each operation's CPU twin is named in ac_dev.h, and
 * tests/gpu/test_cuda_codec.c checks one against the other.
 *
 *   encode, decode: the GPU codec (codec_cuda.cu); with an affine map, encode first writes
 *     z = (x − off_c)·scale_c into scratch, a rounded difference then a rounded product as the
 *     CPU quantiser computes it (no fused multiply-add), and codes z.
 *   mask1_pack: one thread per element, a warp ballot of y > 0 gives 4 mask bytes (lanes 0..3
 *     store them); the set bits are counted per block and added to a device word.
 *   mask1_unpack, pack2, unpack2: one thread per element or output byte.
 *   chan_map: one thread per element, its channel from its plane; fmaf, then the mask.
 *   count_zeros, sum_pow: per-thread counts or double sums, one block reduction and one atomic
 *     add per block.
 * Kernels are grid-stride loops with 64-bit indices, so any count fits, except where an index is
 * divided by the plane size: chan_map uses 32 bits below 2^31 elements, and the affine map takes
 * fewer than 2^31, as the codec does. Scalar results come back with one copy and one wait on the
 * backend's stream. */
#include <cub/cub.cuh>
#include <stdlib.h>

#include "backend/cuda/cuda_common.cuh"

extern "C" {
#include "actcomp/ac_cuda.h"
#include "actcomp/ac_dev.h"
}

#define WORD_BYTES 16 /* the scratch word: a count or sum (8 bytes), pack2's overflow flag (4) */

typedef unsigned long long u64;

/* Device scratch that grows on demand: cap bytes at p (old contents are not kept). */
typedef struct dscratch {
  void *p;
  size_t cap;
} dscratch;

/* One stash's context on one CUDA backend. Scratch is the backend's LT_MEM_WORKSPACE memory. */
typedef struct stash_cuda {
  lt_backend *be;
  ac_cuda *codec; /* owned */
  void *word;     /* (WORD_BYTES) device, owned */
  dscratch chan;  /* floats, owned: two per-channel arrays (nchan each) back to back */
  dscratch z;     /* floats, owned: encode's affine image of x, (n) */
} stash_cuda;

/* All threads of the grid over count elements, i in 64 bits. */
#define GRID_STRIDE64(i, count)                                                                    \
  for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < (u64)(count);                     \
       i += (u64)gridDim.x * blockDim.x)

static unsigned blocks(int64_t count) { return lt_cuda_blocks((size_t)count, LT_CUDA_THREADS); }

/* ---- kernels ---------------------------------------------------------------------------------- */

/* z[i] = (x[i] − off[c])·scale[c], c = (i / hw) % nchan; off then scale in chan. */
__global__ void k_affine(const float *x, float *z, unsigned n, unsigned hw, unsigned nchan,
                         const float *chan) {
  GRID_STRIDE(i, n) {
    const unsigned c = i / hw % nchan;
    z[i] = __fmul_rn(__fsub_rn(x[i], chan[c]), chan[nchan + c]);
  }
}

/* Bit i of mask = y[i] > 0 (LSB first), exactly (n + 7) / 8 bytes; the set bits are added to
 * *nnz. A warp handles 32 consecutive elements per step (4 whole bytes: the warp's first index
 * is a multiple of 32), so the loop bound is the same for all its lanes and the ballot sees all. */
__global__ void k_mask1_pack(const float *y, u64 n, uint8_t *mask, u64 *nnz) {
  typedef cub::BlockReduce<u64, LT_CUDA_THREADS> reduce;
  __shared__ typename reduce::TempStorage tmp;
  const unsigned lane = threadIdx.x & 31;
  const u64 nbytes = (n + 7) / 8, stride = (u64)gridDim.x * blockDim.x;
  u64 count = 0;
  for (u64 i0 = blockIdx.x * (u64)blockDim.x + threadIdx.x - lane; i0 < n; i0 += stride) {
    const u64 i = i0 + lane;
    const bool pos = i < n && y[i] > 0.0f; /* NaN: false */
    const unsigned bits = __ballot_sync(0xffffffffu, pos);
    if (lane < 4 && i0 / 8 + lane < nbytes) mask[i0 / 8 + lane] = (uint8_t)(bits >> (8 * lane));
    count += pos;
  }
  const u64 total = reduce(tmp).Sum(count);
  if (threadIdx.x == 0) atomicAdd(nnz, total);
}

__global__ void k_mask1_unpack(const uint8_t *mask, u64 n, float *y) {
  GRID_STRIDE64(i, n) y[i] = (mask[i >> 3] >> (i & 7)) & 1 ? 1.0f : 0.0f;
}

/* Byte b of p holds a[4b + j] & 3 at bits 2j..2j+1 (lt_cpu_argmax_pack2); *over = 1 when an index
 * is above 3. */
__global__ void k_pack2(const uint8_t *a, u64 n, uint8_t *p, unsigned *over) {
  GRID_STRIDE64(b, (n + 3) / 4) {
    unsigned v = 0, big = 0;
    for (unsigned j = 0; j < 4 && 4 * b + j < n; j++) {
      const unsigned ai = a[4 * b + j];
      big |= ai > 3u;
      v |= (ai & 3u) << (2 * j);
    }
    p[b] = (uint8_t)v;
    if (big) atomicOr(over, 1u);
  }
}

__global__ void k_unpack2(const uint8_t *p, u64 n, uint8_t *a) {
  GRID_STRIDE64(i, n) a[i] = (uint8_t)((p[i >> 2] >> (2 * (i & 3))) & 3u);
}

/* y[i] = fmaf(z[i], a[c], b[c]) with c = (i / hw) % nchan, a then b in ab; with mask, 0 where bit
 * i is clear and max(0, ·) where it is set (NaN → 0). y may be z: each element is read, then
 * written, by one thread. I: unsigned below 2^31 elements (i + stride cannot wrap), else u64. */
template <typename I>
__global__ void k_chan_map(float *y, const float *z, I n, I hw, I nchan, const float *ab,
                           const uint8_t *mask) {
  for (I i = blockIdx.x * (I)blockDim.x + threadIdx.x; i < n; i += (I)gridDim.x * blockDim.x) {
    const I c = i / hw % nchan;
    float v = fmaf(z[i], ab[c], ab[nchan + c]);
    if (mask) v = (mask[i >> 3] >> (i & 7)) & 1 && v > 0.0f ? v : 0.0f;
    y[i] = v;
  }
}

/* *zeros += the number of x[i] == 0 (either sign). */
__global__ void k_count_zeros(const float *x, u64 n, u64 *zeros) {
  typedef cub::BlockReduce<u64, LT_CUDA_THREADS> reduce;
  __shared__ typename reduce::TempStorage tmp;
  u64 count = 0;
  GRID_STRIDE64(i, n) count += x[i] == 0.0f;
  const u64 total = reduce(tmp).Sum(count);
  if (threadIdx.x == 0) atomicAdd(zeros, total);
}

/* *sum += Σ|x| (p 1) or Σx² (p 2), in double. */
__global__ void k_sum_pow(const float *x, u64 n, int p, double *sum) {
  typedef cub::BlockReduce<double, LT_CUDA_THREADS> reduce;
  __shared__ typename reduce::TempStorage tmp;
  double s = 0;
  GRID_STRIDE64(i, n) {
    const double v = x[i];
    s += p == 1 ? fabs(v) : v * v;
  }
  const double total = reduce(tmp).Sum(s);
  if (threadIdx.x == 0) atomicAdd(sum, total);
}

/* ---- host side ---------------------------------------------------------------------------------- */

/* Enters the backend for one operation; LT_ERR_INVALID without a context or a host result
 * pointer (have_result 0), with a negative count, or with a device array missing (have_arrays 0)
 * while the count is not 0. */
static lt_status begin(stash_cuda *s, const char *op, int64_t n, int have_arrays,
                       int have_result, lt_err *err) {
  if (!s || !have_result || n < 0 || (n && !have_arrays))
    return lt_errorf(err, LT_ERR_INVALID,
                     "GPU stash %s: needs its context, its arrays, its result and a count >= 0 "
                     "(got %lld)", op, (long long)n);
  return lt_cuda_backend_enter(s->be, err);
}

/* Makes b hold at least bytes. */
static lt_status grow(stash_cuda *s, dscratch *b, size_t bytes, lt_err *err) {
  if (b->cap >= bytes && b->p) return LT_OK;
  s->be->vt->free(s->be, b->p, b->cap, LT_MEM_WORKSPACE); /* stream-ordered: queued work first */
  b->p = NULL;
  b->cap = 0;
  const size_t want = bytes < 1024 ? 1024 : bytes + bytes / 4;
  if (!(b->p = s->be->vt->alloc(s->be, want, LT_MEM_WORKSPACE, err)))
    return err ? lt_err_prefix(err, "GPU stash scratch of %zu bytes", want) : LT_ERR_NOMEM;
  b->cap = want;
  return LT_OK;
}

/* The nchan floats at host u, then those at host v, into the channel scratch; returns it. */
static const float *upload_chan(stash_cuda *s, const float *u, const float *v, int64_t nchan,
                                lt_err *err) {
  const size_t half = (size_t)nchan * sizeof(float);
  if (grow(s, &s->chan, 2 * half, err)) return NULL;
  float *d = (float *)s->chan.p;
  cudaError_t e = cudaMemcpyAsync(d, u, half, cudaMemcpyHostToDevice, lt_cuda_stream);
  if (e == cudaSuccess)
    e = cudaMemcpyAsync(d + nchan, v, half, cudaMemcpyHostToDevice, lt_cuda_stream);
  if (e != cudaSuccess) {
    lt_errorf(err, LT_ERR_INTERNAL, "CUDA: %s (%s) uploading %lld channel values",
              cudaGetErrorName(e), cudaGetErrorString(e), (long long)nchan);
    return NULL;
  }
  return d;
}

/* Zeroes the scratch word before a kernel adds into it. */
static lt_status word_clear(stash_cuda *s, lt_err *err) {
  CHECK_CUDA_ST(cudaMemsetAsync(s->word, 0, WORD_BYTES, lt_cuda_stream), err);
  return LT_OK;
}

/* Checks the launch just queued, then copies bytes of the scratch word from offset off to host dst
 * and waits for the stream. */
static lt_status word_read(stash_cuda *s, size_t off, void *dst, size_t bytes, lt_err *err) {
  CHECK_CUDA_ST(cudaGetLastError(), err);
  CHECK_CUDA_ST(cudaMemcpyAsync(dst, (uint8_t *)s->word + off, bytes, cudaMemcpyDeviceToHost,
                                lt_cuda_stream),
                err);
  CHECK_CUDA_ST(cudaStreamSynchronize(lt_cuda_stream), err);
  return LT_OK;
}

static void sc_close(void *ctx) {
  stash_cuda *s = (stash_cuda *)ctx;
  if (!s) return;
  if (s->be) {
    s->be->vt->free(s->be, s->word, WORD_BYTES, LT_MEM_WORKSPACE);
    s->be->vt->free(s->be, s->chan.p, s->chan.cap, LT_MEM_WORKSPACE);
    s->be->vt->free(s->be, s->z.p, s->z.cap, LT_MEM_WORKSPACE);
  }
  ac_cuda_free(s->codec);
  free(s);
}

static void *sc_open(lt_backend *be, lt_err *err) {
  stash_cuda *s = (stash_cuda *)calloc(1, sizeof *s);
  if (!s) {
    lt_errorf(err, LT_ERR_NOMEM, "out of host memory for the GPU stash");
    return NULL;
  }
  if (!(s->codec = ac_cuda_new(be, err))) { /* checks be, enters it */
    free(s);
    return NULL;
  }
  s->be = be;
  if (!(s->word = be->vt->alloc(be, WORD_BYTES, LT_MEM_WORKSPACE, err))) {
    sc_close(s);
    return NULL;
  }
  return s;
}

static lt_status sc_encode(void *ctx, const float *x, int ndim, const int64_t *shape, double eb,
                           const float *off, const float *scale, uint8_t **data, size_t *bytes,
                           lt_err *err) {
  stash_cuda *s = (stash_cuda *)ctx;
  if (!data || !bytes || !shape || !off != !scale)
    return lt_errorf(err, LT_ERR_INVALID, "GPU stash encode: needs shape and outputs, and both or "
                     "neither of off and scale");
  *data = NULL;
  *bytes = 0;
  lt_status st = begin(s, "encode", 1, x != NULL, 1, err);
  if (st) return st;
  const float *src = x;
  int64_t as4[4];
  if (off) {
    /* lt_ac_encode_affine's shapes: (batch, channels, ..., w), and (batch, channels, w) coded as
     * (batch, channels, 1, w) so that a plane lies in one channel */
    if (ndim < 3 || ndim > LT_MAX_DIMS)
      return lt_errorf(err, LT_ERR_INVALID, "GPU stash encode: an affine map needs (batch, "
                       "channels, ..., w), ndim 3..%d, got %d", LT_MAX_DIMS, ndim);
    int64_t n = 1;
    for (int d = 0; d < ndim; d++) {
      if (shape[d] < 1 || shape[d] > ((int64_t)LT_CUDA_MAX_COUNT - 1) / n)
        return lt_errorf(err, LT_ERR_INVALID, "GPU stash encode: dim %d is %lld; dims must be "
                         ">= 1, fewer than 2^31 elements in all", d, (long long)shape[d]);
      n *= shape[d];
    }
    if (ndim == 3) {
      as4[0] = shape[0], as4[1] = shape[1], as4[2] = 1, as4[3] = shape[2];
      shape = as4;
      ndim = 4;
    }
    const int64_t nchan = shape[1], hw = n / shape[0] / nchan;
    const float *chan = upload_chan(s, off, scale, nchan, err);
    if (!chan) return err ? err->status : LT_ERR_INTERNAL;
    if ((st = grow(s, &s->z, (size_t)n * sizeof(float), err))) return st;
    float *z = (float *)s->z.p;
    k_affine<<<blocks(n), LT_CUDA_THREADS, 0, lt_cuda_stream>>>(x, z, (unsigned)n, (unsigned)hw,
                                                                 (unsigned)nchan, chan);
    CHECK_CUDA_ST(cudaGetLastError(), err);
    src = z;
  }
  ac_dstream ds = {};
  if ((st = ac_cuda_encode(s->codec, src, ndim, shape, eb, LT_MEM_SAVED, &ds, err))) {
    ac_cuda_stream_free(s->codec, &ds);
    return st;
  }
  *data = ds.data; /* allocated at exactly ds.len bytes under LT_MEM_SAVED */
  *bytes = ds.len;
  return LT_OK;
}

static lt_status sc_decode(void *ctx, const uint8_t *data, size_t bytes, float *y, int64_t n,
                           lt_err *err) {
  stash_cuda *s = (stash_cuda *)ctx;
  lt_status st = begin(s, "decode", n, y != NULL, 1, err);
  if (st) return st;
  return ac_cuda_decode(s->codec, data, bytes, y, n, err);
}

static lt_status sc_mask1_pack(void *ctx, const float *y, int64_t n, uint8_t *mask, int64_t *nnz,
                               lt_err *err) {
  stash_cuda *s = (stash_cuda *)ctx;
  lt_status st = begin(s, "mask1_pack", n, y && mask, nnz != NULL, err);
  if (st) return st;
  *nnz = 0;
  if (!n) return LT_OK;
  if ((st = word_clear(s, err))) return st;
  k_mask1_pack<<<blocks(n), LT_CUDA_THREADS, 0, lt_cuda_stream>>>(y, (u64)n, mask,
                                                                   (u64 *)s->word);
  u64 count = 0;
  if ((st = word_read(s, 0, &count, sizeof count, err))) return st;
  *nnz = (int64_t)count;
  return LT_OK;
}

static lt_status sc_mask1_unpack(void *ctx, const uint8_t *mask, int64_t n, float *y,
                                 lt_err *err) {
  stash_cuda *s = (stash_cuda *)ctx;
  lt_status st = begin(s, "mask1_unpack", n, mask && y, 1, err);
  if (st || !n) return st;
  k_mask1_unpack<<<blocks(n), LT_CUDA_THREADS, 0, lt_cuda_stream>>>(mask, (u64)n, y);
  CHECK_CUDA_ST(cudaGetLastError(), err);
  return LT_OK;
}

static lt_status sc_pack2(void *ctx, const uint8_t *a, int64_t n, uint8_t *p, int *fits,
                          lt_err *err) {
  stash_cuda *s = (stash_cuda *)ctx;
  lt_status st = begin(s, "pack2", n, a && p, fits != NULL, err);
  if (st) return st;
  *fits = 1;
  if (!n) return LT_OK;
  if ((st = word_clear(s, err))) return st;
  k_pack2<<<blocks((n + 3) / 4), LT_CUDA_THREADS, 0, lt_cuda_stream>>>(
      a, (u64)n, p, (unsigned *)((uint8_t *)s->word + 8));
  unsigned over = 0;
  if ((st = word_read(s, 8, &over, sizeof over, err))) return st;
  *fits = !over;
  return LT_OK;
}

static lt_status sc_unpack2(void *ctx, const uint8_t *p, int64_t n, uint8_t *a, lt_err *err) {
  stash_cuda *s = (stash_cuda *)ctx;
  lt_status st = begin(s, "unpack2", n, p && a, 1, err);
  if (st || !n) return st;
  k_unpack2<<<blocks(n), LT_CUDA_THREADS, 0, lt_cuda_stream>>>(p, (u64)n, a);
  CHECK_CUDA_ST(cudaGetLastError(), err);
  return LT_OK;
}

static lt_status sc_chan_map(void *ctx, float *y, const float *z, int64_t batch, int64_t nchan,
                             int64_t hw, const float *a, const float *b, const uint8_t *mask,
                             lt_err *err) {
  stash_cuda *s = (stash_cuda *)ctx;
  if (batch < 0 || nchan < 0 || hw < 0 || (nchan && hw && batch > INT64_MAX / nchan / hw))
    return lt_errorf(err, LT_ERR_INVALID, "GPU stash chan_map: bad shape (%lld, %lld, %lld)",
                     (long long)batch, (long long)nchan, (long long)hw);
  const int64_t n = batch * nchan * hw;
  lt_status st = begin(s, "chan_map", n, y && z && a && b, 1, err);
  if (st || !n) return st;
  const float *ab = upload_chan(s, a, b, nchan, err);
  if (!ab) return err ? err->status : LT_ERR_INTERNAL;
  if ((size_t)n < LT_CUDA_MAX_COUNT)
    k_chan_map<unsigned><<<blocks(n), LT_CUDA_THREADS, 0, lt_cuda_stream>>>(
        y, z, (unsigned)n, (unsigned)hw, (unsigned)nchan, ab, mask);
  else
    k_chan_map<u64><<<blocks(n), LT_CUDA_THREADS, 0, lt_cuda_stream>>>(
        y, z, (u64)n, (u64)hw, (u64)nchan, ab, mask);
  CHECK_CUDA_ST(cudaGetLastError(), err);
  return LT_OK;
}

static lt_status sc_count_zeros(void *ctx, const float *x, int64_t n, int64_t *zeros,
                                lt_err *err) {
  stash_cuda *s = (stash_cuda *)ctx;
  lt_status st = begin(s, "count_zeros", n, x != NULL, zeros != NULL, err);
  if (st) return st;
  *zeros = 0;
  if (!n) return LT_OK;
  if ((st = word_clear(s, err))) return st;
  k_count_zeros<<<blocks(n), LT_CUDA_THREADS, 0, lt_cuda_stream>>>(x, (u64)n, (u64 *)s->word);
  u64 count = 0;
  if ((st = word_read(s, 0, &count, sizeof count, err))) return st;
  *zeros = (int64_t)count;
  return LT_OK;
}

static lt_status sc_sum_pow(void *ctx, const float *x, int64_t n, int p, double *sum,
                            lt_err *err) {
  stash_cuda *s = (stash_cuda *)ctx;
  if (p != 1 && p != 2)
    return lt_errorf(err, LT_ERR_INVALID, "GPU stash sum_pow: p is 1 or 2, got %d", p);
  lt_status st = begin(s, "sum_pow", n, x != NULL, sum != NULL, err);
  if (st) return st;
  *sum = 0;
  if (!n) return LT_OK;
  if ((st = word_clear(s, err))) return st; /* all-zero bits: 0.0 */
  k_sum_pow<<<blocks(n), LT_CUDA_THREADS, 0, lt_cuda_stream>>>(x, (u64)n, p, (double *)s->word);
  return word_read(s, 0, sum, sizeof *sum, err);
}

extern "C" const ac_dev_ops lt_cuda_ac_ops = {
    sc_open,     sc_close,    sc_encode,   sc_decode,      sc_mask1_pack, sc_mask1_unpack,
    sc_pack2,    sc_unpack2,  sc_chan_map, sc_count_zeros, sc_sum_pow};
