/* Shared by the CUDA sources: the per-thread stream and cuBLAS handle kernels run on, the
 * first-error record behind CHECK_CUDA / CHECK_CUBLAS, and launch helpers. Internal. */
#ifndef LATHE_CUDA_COMMON_CUH
#define LATHE_CUDA_COMMON_CUH

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "backend/cuda/cuda_kernels.h"

/* Set by lt_cuda_ctx_set; kernels launch on these. */
extern thread_local cudaStream_t lt_cuda_stream;
extern thread_local cublasHandle_t lt_cuda_cublas;

/* The stash's data operations on this backend's memory (stash_cuda.cu): its vtable's actcomp. */
struct ac_dev_ops;
extern "C" const struct ac_dev_ops lt_cuda_ac_ops;

/* Records the first failure (what, file, line) for lt_cuda_take_error. */
void lt_cuda_record(const char *what, const char *file, int line);

/* Inside void kernels: record and return. Inside lt_status functions use the *_ST forms. */
#define CHECK_CUDA(call)                                                                           \
  do {                                                                                             \
    cudaError_t e_ = (call);                                                                       \
    if (e_ != cudaSuccess) {                                                                       \
      lt_cuda_record(cudaGetErrorName(e_), __FILE__, __LINE__);                                    \
      return;                                                                                      \
    }                                                                                              \
  } while (0)
#define CHECK_CUBLAS(call)                                                                         \
  do {                                                                                             \
    cublasStatus_t s_ = (call);                                                                    \
    if (s_ != CUBLAS_STATUS_SUCCESS) {                                                             \
      lt_cuda_record(cublasGetStatusName(s_), __FILE__, __LINE__);                                 \
      return;                                                                                      \
    }                                                                                              \
  } while (0)
/* A launch: checks the configuration error right away (a bad grid), not the asynchronous ones. */
#define CHECK_LAUNCH() CHECK_CUDA(cudaGetLastError())
#define CHECK_CUDA_ST(call, err)                                                                   \
  do {                                                                                             \
    cudaError_t e_ = (call);                                                                       \
    if (e_ != cudaSuccess)                                                                         \
      return lt_errorf(err, LT_ERR_INTERNAL, "CUDA: %s (%s) at %s:%d", cudaGetErrorName(e_),       \
                       cudaGetErrorString(e_), __FILE__, __LINE__);                                \
  } while (0)

/* Grid for a grid-stride loop over count elements. */
static inline unsigned lt_cuda_blocks(size_t count, unsigned threads) {
  size_t b = (count + threads - 1) / threads;
  if (b < 1) b = 1;
  if (b > 65535u * 8u) b = 65535u * 8u;
  return (unsigned)b;
}
#define LT_CUDA_THREADS 256
/* Kernels index with 32-bit unsigned arithmetic: a 64-bit division costs several times a 32-bit
 * one on the GPU, and the index math of im2col, pooling and broadcasting is mostly divisions.
 * Launches therefore refuse 2^31 elements or more (LT_CUDA_MAX_COUNT), which also keeps
 * i + stride from wrapping. */
#define LT_CUDA_MAX_COUNT ((size_t)1 << 31)
#define GRID_STRIDE(i, count)                                                                      \
  for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < (unsigned)(count);                \
       i += gridDim.x * blockDim.x)

/* For launches not made through LAUNCH_1D. */
#define CHECK_COUNT(count)                                                                         \
  do {                                                                                             \
    if ((size_t)(count) >= LT_CUDA_MAX_COUNT) {                                                    \
      lt_cuda_record("2^31 elements or more in one launch", __FILE__, __LINE__);                   \
      return;                                                                                      \
    }                                                                                              \
  } while (0)

/* Launches kernel over count elements on the kernel stream, in a void function: returns early
 * for no work, records an error for too much. */
#define LAUNCH_1D(kernel, count, ...)                                                              \
  do {                                                                                             \
    const size_t n_ = (count);                                                                     \
    if (n_ == 0) return;                                                                           \
    if (n_ >= LT_CUDA_MAX_COUNT) {                                                                 \
      lt_cuda_record(#kernel ": 2^31 elements or more in one launch", __FILE__, __LINE__);         \
      return;                                                                                      \
    }                                                                                              \
    kernel<<<lt_cuda_blocks(n_, LT_CUDA_THREADS), LT_CUDA_THREADS, 0, lt_cuda_stream>>>(          \
        __VA_ARGS__);                                                                              \
    CHECK_LAUNCH();                                                                                \
  } while (0)

/* dx = 0 unless accumulating: the scatters that follow add into it. */
#define ZERO_UNLESS(acc, p, bytes)                                                                 \
  do {                                                                                             \
    if (!(acc)) CHECK_CUDA(cudaMemsetAsync((p), 0, (bytes), lt_cuda_stream));                      \
  } while (0)

#endif
