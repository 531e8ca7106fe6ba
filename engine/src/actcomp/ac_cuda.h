/* The LORENZO activation codec on device memory (backend/cuda/codec_cuda.cu; built with the CUDA
 * backend only). It reads and writes the very stream format of the CPU codec (codec.c): a stream
 * the GPU writes decodes on the CPU to the same floats, and the other way round; the streams may
 * differ in three ways only: the GPU picks the predictor from another sample (every 16th plane
 * whole, where the CPU takes the leading rows of 16 planes; the cost estimate is the same), it
 * writes Huffman chunks of AC_CUDA_CHUNK symbols (one decode thread each), and it never runs the
 * optional zstd pass (zstd-packed streams decode on the CPU).
 *
 * Usage (dx, ds: device pointers on the backend's device):
 *   ac_cuda *c = ac_cuda_new(be, &err);                       // be: lt_backend_get("cuda")
 *   ac_dstream s = {0};
 *   ac_cuda_encode(c, dx, 4, shape, 0.05, LT_MEM_SAVED, &s, &err);  // s.data: s.len device bytes
 *   ac_cuda_decode(c, s.data, s.len, dy, n, &err);           // |x - y| <= 0.05 everywhere
 *   ac_cuda_stream_free(c, &s);
 *   ac_cuda_free(c);
 *
 * Work is queued on the backend's stream. The encoder waits for the device twice (the histogram
 * the Huffman code is built from on the host, then the payload size the stream is allocated
 * with); the decoder three times (the header, the code table and chunk sizes, and the final
 * error word). Device memory comes from the backend (counted per category: the stream under the
 * caller's category, scratch under LT_MEM_WORKSPACE).
 *
 * Limits: fewer than 2^31 elements per tensor (the kernels' 32-bit indexing). Escape and outlier
 * lists start at n/64 + 1024 entries; a tensor with more runs the main pass a second time. */
#ifndef LATHE_AC_CUDA_H
#define LATHE_AC_CUDA_H

#include "lathe/backend.h"

#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

#define AC_CUDA_CHUNK 1024 /* symbols per Huffman chunk in GPU-written streams: the smallest the
                              format allows, for the most decode threads (4 bytes of chunk table
                              each, about 1 % of a stream) */

typedef struct ac_cuda ac_cuda;

typedef struct ac_dstream {
  uint8_t *data; /* device memory, from the backend */
  size_t len;
  lt_mem_cat cat;
  int predictor; /* AC_PREDICTOR_*, as written */
} ac_dstream;

ac_cuda *ac_cuda_new(lt_backend *be, lt_err *err);
void ac_cuda_free(ac_cuda *c);
void ac_cuda_stream_free(ac_cuda *c, ac_dstream *s);

/* Encodes the n = prod(shape) floats at dx (device) at bound eb into *out (its old data, if any,
 * is freed first). */
lt_status ac_cuda_encode(ac_cuda *c, const float *dx, int ndim, const int64_t *shape, double eb,
                         lt_mem_cat cat, ac_dstream *out, lt_err *err);
/* Decodes len device bytes at ds into n floats at dx (device). Every check of the CPU decoder is
 * made (header, checksum, code table, chunk sizes, chunk ends, list order); a malformed stream
 * gives LT_ERR_FORMAT and dx is then unspecified. */
lt_status ac_cuda_decode(ac_cuda *c, const uint8_t *ds, size_t len, float *dx, int64_t n,
                         lt_err *err);

/* CRC-32C (the stream's checksum function, ac_crc32c) of n device bytes, on the device. */
lt_status ac_cuda_crc32c(ac_cuda *c, const uint8_t *d, size_t n, uint32_t *crc, lt_err *err);

/* The device checksum's combination of segment CRCs (its table-driven GF(2) shifts and tree),
 * run on the host against ac_crc32c over lengths around its boundaries: 0 when all agree, the
 * number that do not, -1 when out of memory. Needs no device. */
int ac_cuda_crc_combine_check(void);

/* With LATHE_AC_CUDA_PROFILE=1 in the environment when the codec was made: the device time
 * between its stages, summed over the calls since the last print, one line per direction
 * (then reset). Nothing otherwise. */
void ac_cuda_profile_print(ac_cuda *c, FILE *f);

/* Makes this thread's CUDA calls go to the backend's device and stream (cuda_backend.cu). */
lt_status lt_cuda_backend_enter(lt_backend *be, lt_err *err);

#ifdef __cplusplus
}
#endif
#endif
