/* The LORENZO activation codec on device memory (interface and stream differences: ac_cuda.h;
 * the stream layout: actcomp/codec.c). Its CPU twin is codec.c with kernels.c and huffman.c, and
 * tests/gpu/test_cuda_codec.c checks one against the other in both directions.
 *
 * Encoder, for n elements in H×W planes (two waits for the host in all):
 *   1. k_sample: on every 16th plane, one thread per element prequantises it and its west, north
 *      and north-west neighbours (the CPU's arithmetic exactly: no fused multiply-add, round half
 *      to even) and histograms the code under both predictors (2-D Lorenzo and none): residual
 *      codes 0 and ±1 by warp ballots, others in a block-private shared window around the radius,
 *      the rest in global memory. k_choose (one block) takes the CPU's cost estimate of each and
 *      leaves the choice on the device.
 *   2. k_codes: every element's code under the chosen predictor, written out, histogrammed the
 *      same way, escapes and outliers appended (unordered; sorted by index later); k_compact
 *      lists the non-zero bins. Wait 1: the host reads the list back and builds the canonical,
 *      length-limited Huffman code from it (ac_huff_lengths_pairs, the CPU's own code).
 *   3. k_bits: one block per chunk of AC_CUDA_CHUNK symbols sums its code lengths; a device scan
 *      turns chunk sizes into offsets. Wait 2: the payload size, to allocate the stream.
 *   4. k_encode: one warp per chunk, the chunk's codes staged in shared memory, each lane a run of
 *      64 symbols at its bit offset (warp scan), OR-ing whole 32-bit words into a zeroed, aligned
 *      payload, then copied into place; header and table from the host; chunk section; sorted
 *      escape and outlier records.
 *   5. CRC-32C: per-segment CRCs (slicing-by-8 from shared tables, one thread per 256 bytes), then
 *      levels of block trees combining them with zlib's GF(2) shift operator.
 * Decoder: header, then table and chunk section read back and checked on the host with the CPU
 * parser; on the device, the checksum and list order checks, one thread per chunk of Huffman
 * decode (primary table in shared memory, canonical slow path for long codes), escapes, prefix
 * sums over rows then columns with dequantisation, outliers. Every kernel bounds its own reads
 * and writes, so a malformed stream cannot make one touch memory outside its buffers; the error
 * word says what was wrong. */
#include <cub/cub.cuh>
#include <math.h>
#include <stdio.h>

#include "backend/cuda/cuda_common.cuh"

extern "C" {
#include "actcomp/ac_cuda.h"
#include "actcomp/ac_internal.h"
}

#define HWIN 2048           /* shared histogram window: codes R-HWIN .. R+HWIN-1 */
#define CRC_SEG 256         /* bytes per CRC segment (one thread each) */
#define CRC_POLY 0x82F63B78u /* CRC-32C, reflected */
#define ENC_RUN (AC_CUDA_CHUNK / 32) /* symbols per lane in k_encode */

/* Counter words of the encoder: outliers and escapes (k_codes), the compacted histogram's length,
 * the predictor choice (k_choose). */
enum { CNT_OUTL = 0, CNT_ESC = 1, CNT_COMP = 2, CNT_PRED = 3, CNT_WORDS = 8 };

/* Error word bits of the decoder. */
enum { E_CRC = 1, E_LIST = 2, E_CODE = 4, E_ESC = 8 };

typedef struct dqp {
  float inv2eb, twoeb, eb;
} dqp;

/* ---- device buffers ------------------------------------------------------------------------ */

typedef struct dbuf {
  void *p;
  size_t cap;
} dbuf;

struct ac_cuda {
  lt_backend *be;
  int sms;
  dbuf hist, comp, encp, codes, cbits, coff, pay, ei, ev, oi, ov, sk, sv, tmp, crc, crctab, denc,
      dtab, sorted, cstart, errw;
  unsigned long long *h_comp; /* pinned: the counter words (4 × 8 bytes), then the compacted
                                histogram; reused for the code's upload */
  uint8_t *h_small; /* pinned: header + table / chunk section staging */
  size_t h_small_cap;
  uint8_t len[AC_NSYM];
  uint32_t enc[AC_NSYM];
  uint16_t syms[AC_NSYM]; /* the code's symbols, increasing */
  uint32_t enc_list[2 * AC_NSYM]; /* (symbol, entry) pairs for k_scatter_enc */
  int64_t lscratch[3 * AC_NSYM];
  ac_huff_dec dec;
  /* LATHE_AC_CUDA_PROFILE=1: device time between stage marks, summed (ac_cuda_profile_print) */
  int prof;
  int hist_plain; /* LATHE_AC_CUDA_HIST=plain: no grouping in hist_add */
  cudaEvent_t evt[2][8];
  double ms[2][8];
  int calls[2];
};

#define ENC 0
#define DEC 1
#define MARK(dir, k)                                                                               \
  do {                                                                                             \
    if (c->prof) cudaEventRecord(c->evt[dir][k], lt_cuda_stream);                                \
  } while (0)

/* Adds the time between consecutive marks 0..last of one call. */
static void prof_end(ac_cuda *c, int dir, int last) {
  if (!c->prof || cudaEventSynchronize(c->evt[dir][last]) != cudaSuccess) return;
  for (int k = 1; k <= last; k++) {
    float ms = 0;
    if (cudaEventElapsedTime(&ms, c->evt[dir][k - 1], c->evt[dir][k]) == cudaSuccess)
      c->ms[dir][k] += ms;
  }
  c->calls[dir]++;
}

extern "C" void ac_cuda_profile_print(ac_cuda *c, FILE *f) {
  static const char *names[2][7] = {
      {"sample + codes + histogram", "read back + code (host)", "chunk bits", "scan + read back",
       "sections + encode", "checksum", NULL},
      {"header (read back)", "tables (read back, host, upload)", "checksum + lists", "Huffman",
       "escapes, prefix sums", "error word", NULL}};
  if (!c->prof) return;
  for (int d = 0; d < 2; d++) {
    if (!c->calls[d]) continue;
    double total = 0;
    for (int k = 1; k <= 6; k++) total += c->ms[d][k];
    fprintf(f, "  %s, %d calls, %.3f ms of device time:", d ? "decode" : "encode", c->calls[d],
            total);
    for (int k = 1; k <= 6; k++) fprintf(f, " %s %.3f;", names[d][k - 1], c->ms[d][k]);
    fprintf(f, "\n");
  }
  memset(c->ms, 0, sizeof c->ms);
  memset(c->calls, 0, sizeof c->calls);
}

static void *dgrow(ac_cuda *c, dbuf *b, size_t bytes, lt_err *err) {
  if (b->cap >= bytes && b->p) return b->p;
  c->be->vt->free(c->be, b->p, b->cap, LT_MEM_WORKSPACE);
  b->p = NULL;
  b->cap = 0;
  size_t want = bytes < 256 ? 256 : bytes + bytes / 4;
  void *p = c->be->vt->alloc(c->be, want, LT_MEM_WORKSPACE, err);
  if (!p) {
    lt_err_prefix(err, "GPU codec scratch of %zu bytes", want);
    return NULL;
  }
  b->p = p;
  b->cap = want;
  return p;
}

static void dfree(ac_cuda *c, dbuf *b) {
  c->be->vt->free(c->be, b->p, b->cap, LT_MEM_WORKSPACE);
  b->p = NULL;
  b->cap = 0;
}

static uint8_t *hsmall(ac_cuda *c, size_t bytes, lt_err *err) {
  if (c->h_small_cap >= bytes) return c->h_small;
  cudaFreeHost(c->h_small);
  c->h_small = NULL;
  c->h_small_cap = 0;
  size_t want = bytes + bytes / 4 + 4096;
  if (cudaMallocHost((void **)&c->h_small, want) != cudaSuccess) {
    lt_errorf(err, LT_ERR_NOMEM, "GPU codec: cannot allocate %zu bytes of pinned host memory",
              want);
    return NULL;
  }
  c->h_small_cap = want;
  return c->h_small;
}

extern "C" ac_cuda *ac_cuda_new(lt_backend *be, lt_err *err) {
  if (!be || be->device < 0) {
    lt_errorf(err, LT_ERR_INVALID, "the GPU codec needs a CUDA backend (lt_backend_get(\"cuda\"))");
    return NULL;
  }
  if (lt_cuda_backend_enter(be, err)) return NULL;
  ac_cuda *c = (ac_cuda *)calloc(1, sizeof *c);
  if (!c) {
    lt_errorf(err, LT_ERR_NOMEM, "out of memory for the GPU codec");
    return NULL;
  }
  c->be = be;
  const char *pe = getenv("LATHE_AC_CUDA_PROFILE");
  c->prof = pe && *pe && strcmp(pe, "0");
  const char *ph = getenv("LATHE_AC_CUDA_HIST");
  c->hist_plain = ph && !strcmp(ph, "plain");
  for (int d = 0; d < 2 && c->prof; d++)
    for (int k = 0; k < 8; k++) cudaEventCreate(&c->evt[d][k]);
  cudaDeviceGetAttribute(&c->sms, cudaDevAttrMultiProcessorCount, be->device);
  if (c->sms < 1) c->sms = 1;
  if (cudaMallocHost((void **)&c->h_comp, (AC_NSYM + 4) * sizeof(unsigned long long)) !=
      cudaSuccess) {
    free(c);
    lt_errorf(err, LT_ERR_NOMEM, "GPU codec: cannot allocate pinned host memory");
    return NULL;
  }
  return c;
}

extern "C" void ac_cuda_free(ac_cuda *c) {
  if (!c) return;
  if (lt_cuda_backend_enter(c->be, NULL) == LT_OK) cudaStreamSynchronize(lt_cuda_stream);
  dbuf *all[] = {&c->hist, &c->comp, &c->encp, &c->codes, &c->cbits, &c->coff, &c->pay,
                 &c->ei, &c->ev, &c->oi, &c->ov, &c->sk, &c->sv, &c->tmp, &c->crc, &c->crctab,
                 &c->denc, &c->dtab, &c->sorted, &c->cstart, &c->errw};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) dfree(c, all[i]);
  cudaFreeHost(c->h_comp);
  for (int d = 0; d < 2 && c->prof; d++)
    for (int k = 0; k < 8; k++) cudaEventDestroy(c->evt[d][k]);
  cudaFreeHost(c->h_small);
  free(c);
}

extern "C" void ac_cuda_stream_free(ac_cuda *c, ac_dstream *s) {
  if (!s || !s->data) return;
  c->be->vt->free(c->be, s->data, s->len, s->cat);
  s->data = NULL;
  s->len = 0;
}

/* ---- prequantisation and prediction (the CPU's arithmetic, bit for bit) -------------------- */

__device__ __forceinline__ int32_t dquant(float x, const dqp &p, int *outl) {
  float t = __fmul_rn(x, p.inv2eb);
  if (!(fabsf(t) < AC_QLIMIT)) {
    *outl = 1;
    return 0;
  }
  int32_t q = __float2int_rn(t); /* rintf: round half to even */
  float xr = __fmul_rn(__int2float_rn(q), p.twoeb);
  if (!(fabsf(__fsub_rn(x, xr)) <= p.eb)) {
    *outl = 1;
    return 0;
  }
  *outl = 0;
  return q;
}

__device__ __forceinline__ int32_t dq(const float *x, unsigned i, const dqp &p) {
  int o;
  return dquant(x[i], p, &o);
}

/* The residual of element i under 2-D Lorenzo (lorenzo = 1) or no prediction, its q already
 * known; w and hw are the plane's row length and size. */
__device__ __forceinline__ int32_t dresid(const float *x, unsigned i, int32_t q, unsigned w,
                                          unsigned hw, const dqp &p, int lorenzo) {
  if (!lorenzo) return q;
  const unsigned in_plane = i % hw, col = in_plane % w;
  const int32_t west = col ? dq(x, i - 1, p) : 0;
  const int32_t north = in_plane >= w ? dq(x, i - w, p) : 0;
  const int32_t nw = col && in_plane >= w ? dq(x, i - w - 1, p) : 0;
  /* (q - west) - (north - nw), in unsigned arithmetic: wraps exactly like the CPU's int32 */
  return (int32_t)(((uint32_t)q - (uint32_t)west) - ((uint32_t)north - (uint32_t)nw));
}

__device__ __forceinline__ unsigned dcode(int32_t d) {
  return d > -AC_RADIUS && d < AC_RADIUS ? (unsigned)(d + AC_RADIUS) : 0u;
}

/* Adds one per valid lane to bin code. Residual codes R and R ± 1 (most of them in activations)
 * are counted by warp ballots into the caller's registers (hot[0..2], lane 0's count is the
 * warp's); lanes with other codes are grouped by code (match) and each group's first lane adds
 * the group's size, to the block's shared window, or to global memory outside it (without MATCH
 * every such lane adds its own one: LATHE_AC_CUDA_HIST=plain, for comparison). All 32 lanes must
 * call it together. */
template <bool MATCH>
__device__ __forceinline__ void hist_add(unsigned *sh, unsigned *g, unsigned code, bool valid,
                                         unsigned *hot) {
  const unsigned d = code - (AC_RADIUS - 1); /* 0, 1, 2 for the hot codes */
  const bool is_hot = valid && d < 3, other = valid && !is_hot;
  hot[0] += __popc(__ballot_sync(0xFFFFFFFFu, is_hot && d == 0));
  hot[1] += __popc(__ballot_sync(0xFFFFFFFFu, is_hot && d == 1));
  hot[2] += __popc(__ballot_sync(0xFFFFFFFFu, is_hot && d == 2));
  unsigned add = 1;
  if (MATCH) {
    if (!__ballot_sync(0xFFFFFFFFu, other)) return;
    const unsigned peers = __match_any_sync(0xFFFFFFFFu, other ? code : 0xFFFFFFFFu);
    if ((threadIdx.x & 31) != (unsigned)(__ffs(peers) - 1)) return;
    add = __popc(peers);
  }
  if (!other) return;
  const int b = (int)code - (AC_RADIUS - HWIN);
  if (b >= 0 && b < 2 * HWIN) atomicAdd(&sh[b], add);
  else atomicAdd(&g[code], add);
}

/* Flushes a block's shared window (and the warps' hot-code counts, already added into it) into
 * the global histogram g. */
__device__ __forceinline__ void hist_flush(unsigned *sh, unsigned *g) {
  __syncthreads();
  for (unsigned j = threadIdx.x; j < 2 * HWIN; j += blockDim.x)
    if (sh[j]) atomicAdd(&g[AC_RADIUS - HWIN + j], sh[j]);
}

__device__ __forceinline__ void hot_flush(unsigned *sh, const unsigned *hot) {
  if ((threadIdx.x & 31) == 0)
    for (int j = 0; j < 3; j++)
      if (hot[j]) atomicAdd(&sh[HWIN - 1 + j], hot[j]);
}

/* Predictor choice, pass 1: histograms of both predictors' codes over a sample, every pstride-th
 * of the planes (sampled elements e in [0, ns) map to plane (e / hw)·pstride). */
template <bool MATCH>
__global__ void __launch_bounds__(256) k_sample(const float *x, unsigned ns, unsigned pstride,
                                                unsigned w, unsigned hw, dqp p,
                                                unsigned *ghist) {
  __shared__ unsigned sh[2][2 * HWIN];
  for (unsigned j = threadIdx.x; j < 4 * HWIN; j += blockDim.x) (&sh[0][0])[j] = 0;
  __syncthreads();
  unsigned hot[2][3] = {{0, 0, 0}, {0, 0, 0}};
  for (unsigned base = blockIdx.x * blockDim.x; base < ns; base += gridDim.x * blockDim.x) {
    const unsigned e = base + threadIdx.x;
    const bool valid = e < ns;
    unsigned cl = 0, cn = 0;
    if (valid) {
      const unsigned i = (e / hw) * pstride * hw + e % hw;
      int o;
      const int32_t q = dquant(x[i], p, &o);
      cl = dcode(dresid(x, i, q, w, hw, p, 1));
      cn = dcode(q);
    }
    hist_add<MATCH>(sh[0], ghist, cl, valid, hot[0]);
    hist_add<MATCH>(sh[1], ghist + AC_NSYM, cn, valid, hot[1]);
  }
  hot_flush(sh[0], hot[0]);
  hot_flush(sh[1], hot[1]);
  hist_flush(sh[0], ghist);
  hist_flush(sh[1], ghist + AC_NSYM);
}

/* Predictor choice, pass 2 (one block): the CPU's cost estimate (codec.c) of each sampled
 * histogram, order-0 entropy plus 96 bits an escape and 24 a table entry; *lorenzo = 1 unless
 * no prediction costs less, as on the CPU. */
__global__ void __launch_bounds__(1024) k_choose(const unsigned *hist, unsigned *lorenzo) {
  typedef cub::BlockReduce<double, 1024> Reduce;
  typedef cub::BlockReduce<unsigned long long, 1024> ReduceU;
  __shared__ typename Reduce::TempStorage tmp;
  __shared__ typename ReduceU::TempStorage tmpu;
  __shared__ double cost[2], total;
  for (int k = 0; k < 2; k++) {
    const unsigned *h = hist + k * AC_NSYM;
    unsigned long long tot = 0;
    for (unsigned j = threadIdx.x; j < AC_NSYM; j += blockDim.x) tot += h[j];
    const unsigned long long t = ReduceU(tmpu).Sum(tot);
    if (threadIdx.x == 0) total = (double)t;
    __syncthreads();
    double c = 0;
    for (unsigned j = threadIdx.x; j < AC_NSYM; j += blockDim.x)
      if (h[j]) c += (double)h[j] * log2(total / (double)h[j]) + 24 + (j == 0 ? 96.0 * h[j] : 0);
    const double sum = Reduce(tmp).Sum(c);
    if (threadIdx.x == 0) cost[k] = sum;
    __syncthreads();
  }
  if (threadIdx.x == 0) *lorenzo = !(cost[1] < cost[0]);
}

/* The main pass: the chosen predictor's code of every element (written to codes), their
 * histogram, and the escapes and outliers appended (unordered, sorted by index later) while
 * they fit their lists; gcnt counts them all, so the host sees when a list was too short. */
template <bool MATCH>
__global__ void __launch_bounds__(256) k_codes(const float *x, unsigned n, unsigned w,
                                               unsigned hw, dqp p, const unsigned *lorenzo_p,
                                               uint16_t *codes, unsigned *ghist, unsigned *gcnt,
                                               unsigned *ei, unsigned *ev, unsigned cap_e,
                                               unsigned *oi, unsigned *ov, unsigned cap_o) {
  __shared__ unsigned sh[2 * HWIN];
  for (unsigned j = threadIdx.x; j < 2 * HWIN; j += blockDim.x) sh[j] = 0;
  __syncthreads();
  const int lorenzo = *lorenzo_p;
  unsigned hot[3] = {0, 0, 0};
  for (unsigned base = blockIdx.x * blockDim.x; base < n; base += gridDim.x * blockDim.x) {
    const unsigned i = base + threadIdx.x;
    const bool valid = i < n;
    unsigned code = 0;
    if (valid) {
      int o;
      const float xv = x[i];
      const int32_t q = dquant(xv, p, &o);
      if (o) {
        const unsigned s = atomicAdd(&gcnt[CNT_OUTL], 1u);
        if (s < cap_o) {
          oi[s] = i;
          ov[s] = __float_as_uint(xv);
        }
      }
      const int32_t d = dresid(x, i, q, w, hw, p, lorenzo);
      code = dcode(d);
      if (!code) {
        const unsigned s = atomicAdd(&gcnt[CNT_ESC], 1u);
        if (s < cap_e) {
          ei[s] = i;
          ev[s] = (uint32_t)d;
        }
      }
      codes[i] = (uint16_t)code;
    }
    hist_add<MATCH>(sh, ghist, code, valid, hot);
  }
  hot_flush(sh, hot);
  hist_flush(sh, ghist);
}

/* The non-zero bins of the histogram as (symbol << 32 | count), unordered: the host builds the
 * code from a few hundred entries instead of reading 65536 bins. */
__global__ void k_compact(const unsigned *hist, unsigned *ncomp, unsigned long long *comp) {
  GRID_STRIDE(b, AC_NSYM) {
    const unsigned v = hist[b];
    if (v) comp[atomicAdd(ncomp, 1u)] = (unsigned long long)b << 32 | v;
  }
}

__global__ void k_scatter_enc(const uint32_t *pairs, unsigned n, uint32_t *enc) {
  GRID_STRIDE(i, n) enc[pairs[2 * i]] = pairs[2 * i + 1];
}

/* One block of 256 threads per chunk: its bit count, and its byte size into coff (scanned into
 * offsets afterwards; coff[nchunks] = 0 becomes the total). */
__global__ void __launch_bounds__(256) k_bits(const uint16_t *codes, unsigned n,
                                              const uint32_t *enc, uint32_t *cbits,
                                              unsigned long long *coff, unsigned nchunks) {
  typedef cub::BlockReduce<unsigned, 256> Reduce;
  __shared__ typename Reduce::TempStorage tmp;
  const unsigned c0 = blockIdx.x * AC_CUDA_CHUNK;
  unsigned bits = 0;
  for (unsigned k = threadIdx.x; k < AC_CUDA_CHUNK && c0 + k < n; k += 256)
    bits += enc[codes[c0 + k]] >> 16;
  const unsigned total = Reduce(tmp).Sum(bits);
  if (threadIdx.x == 0) {
    cbits[blockIdx.x] = total;
    coff[blockIdx.x] = (total + 7u) / 8u;
    if (blockIdx.x == 0) coff[nchunks] = 0;
  }
}

/* One warp per chunk; lane l codes symbols [l·ENC_RUN, (l+1)·ENC_RUN) of it, from the chunk's
 * codes staged in shared memory by coalesced loads (rows of ENC_RUN + 2 codes, so that the lanes'
 * runs start in different banks). */
#define ENC_ROW (ENC_RUN + 2)
__global__ void __launch_bounds__(128) k_encode(const uint16_t *codes, unsigned n,
                                                unsigned nchunks, const uint32_t *enc,
                                                const unsigned long long *coff, uint32_t *pay) {
  __shared__ uint16_t st[4][32 * ENC_ROW];
  const unsigned wid = threadIdx.x / 32, lane = threadIdx.x & 31;
  const unsigned chunk = blockIdx.x * 4 + wid;
  if (chunk >= nchunks) return; /* whole warps leave together; no block-wide barrier below */
  const unsigned c0 = chunk * AC_CUDA_CHUNK, m = min((unsigned)AC_CUDA_CHUNK, n - c0);
  uint16_t *sc = st[wid];
  for (unsigned k = lane; k < m; k += 32) sc[(k / ENC_RUN) * ENC_ROW + k % ENC_RUN] = codes[c0 + k];
  __syncwarp();
  const unsigned r0 = lane * ENC_RUN, r1 = min(r0 + ENC_RUN, m);
  const uint16_t *row = sc + lane * ENC_ROW;
  unsigned bits = 0;
  for (unsigned k = r0; k < r1; k++) bits += enc[row[k - r0]] >> 16;
  unsigned incl = bits;
  for (int off = 1; off < 32; off <<= 1) {
    const unsigned v = __shfl_up_sync(0xFFFFFFFFu, incl, off);
    if (lane >= (unsigned)off) incl += v;
  }
  unsigned long long pos = coff[chunk] * 8ull + (incl - bits);
  unsigned long long wi = pos >> 5;
  unsigned long long acc = 0;
  unsigned nb = (unsigned)(pos & 31);
  for (unsigned k = r0; k < r1; k++) {
    const uint32_t e = enc[row[k - r0]];
    acc |= (unsigned long long)(e & 0xFFFFu) << nb;
    nb += e >> 16;
    if (nb >= 32) {
      atomicOr(&pay[wi++], (uint32_t)acc);
      acc >>= 32;
      nb -= 32;
    }
  }
  if (nb) atomicOr(&pay[wi], (uint32_t)acc); /* zero when the lane had no symbols */
}

__device__ __forceinline__ void put_le(uint8_t *d, unsigned long long v, int bytes) {
  for (int b = 0; b < bytes; b++) d[b] = (uint8_t)(v >> (8 * b));
}

__global__ void k_put_u32(uint8_t *dst, const uint32_t *v, unsigned count) {
  GRID_STRIDE(i, count) put_le(dst + 4ull * i, v[i], 4);
}

/* count × (u64 index, u32 value) records. */
__global__ void k_put_records(uint8_t *dst, const unsigned *idx, const unsigned *val,
                              unsigned count) {
  GRID_STRIDE(i, count) {
    put_le(dst + 12ull * i, idx[i], 8);
    put_le(dst + 12ull * i + 8, val[i], 4);
  }
}

/* ---- CRC-32C on the device ------------------------------------------------------------------ */

/* Slicing-by-8 tables and the shift operators of the CRC combination, built on the host
 * (crc_tabs_build) and copied once into the codec's device buffer crctab. Combining CRCs:
 * crc(A‖B) = shift(crc(A), |B|) ⊕ crc(B), where shift multiplies by x^(8|B|) mod P in GF(2)
 * (zlib's crc32_combine). The operator for any length is a product of at most five table
 * entries: the length's remainder below a segment (tail), then its segment count's base-256
 * digits (seg[L][d] = x^(8·CRC_SEG·d·256^L)); a piece of whole segments, as all but the last
 * are, mostly takes one. */
typedef struct crc_tabs {
  uint32_t t[8][256];
  uint32_t tail[CRC_SEG];
  uint32_t seg[4][256];
} crc_tabs;

#define GF_ONE (1u << 31) /* x^0 in the reflected representation */

__host__ __device__ static inline uint32_t gf_mul(uint32_t a, uint32_t b) {
  uint32_t m = 1u << 31, p = 0;
  for (;;) {
    if (a & m) {
      p ^= b;
      if ((a & (m - 1)) == 0) break;
    }
    m >>= 1;
    b = b & 1 ? (b >> 1) ^ CRC_POLY : b >> 1;
  }
  return p;
}

/* x^(8·len) mod P, for len below CRC_SEG·256^4. */
__host__ __device__ static inline uint32_t crc_shift(const crc_tabs *tb, unsigned long long len) {
  uint32_t sh = tb->tail[len % CRC_SEG];
  unsigned long long q = len / CRC_SEG;
  for (int l = 0; l < 4 && q; l++, q >>= 8)
    if (q & 255) sh = sh == GF_ONE ? tb->seg[l][q & 255] : gf_mul(tb->seg[l][q & 255], sh);
  return sh;
}

/* (crc, len) ← (crc, len) ‖ (cr, lr): the CRC of the two pieces one after the other. */
__host__ __device__ static inline void crc_join(const crc_tabs *tb, uint32_t *crc,
                                                unsigned long long *len, uint32_t cr,
                                                unsigned long long lr) {
  if (!lr) return;
  *crc = *len ? gf_mul(crc_shift(tb, lr), *crc) ^ cr : cr;
  *len += lr;
}

static void crc_tabs_build(crc_tabs *h) {
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t v = i;
    for (int k = 0; k < 8; k++) v = v & 1 ? (v >> 1) ^ CRC_POLY : v >> 1;
    h->t[0][i] = v;
  }
  for (int t = 1; t < 8; t++)
    for (int i = 0; i < 256; i++)
      h->t[t][i] = (h->t[t - 1][i] >> 8) ^ h->t[0][h->t[t - 1][i] & 0xFF];
  const uint32_t x8 = 1u << 23; /* x^8: one byte */
  h->tail[0] = GF_ONE;
  for (int r = 1; r < CRC_SEG; r++) h->tail[r] = gf_mul(x8, h->tail[r - 1]);
  uint32_t unit = gf_mul(x8, h->tail[CRC_SEG - 1]); /* one segment */
  for (int l = 0; l < 4; l++) {
    h->seg[l][0] = GF_ONE;
    for (int d = 1; d < 256; d++) h->seg[l][d] = gf_mul(unit, h->seg[l][d - 1]);
    unit = gf_mul(unit, h->seg[l][255]); /* 256^(l+1) segments */
  }
}

static const crc_tabs *crc_init(ac_cuda *c, lt_err *err) {
  if (c->crctab.p) return (const crc_tabs *)c->crctab.p;
  crc_tabs *h = (crc_tabs *)malloc(sizeof *h);
  if (!h) {
    lt_errorf(err, LT_ERR_NOMEM, "out of memory for CRC tables");
    return NULL;
  }
  crc_tabs_build(h);
  void *d = dgrow(c, &c->crctab, sizeof *h, err);
  cudaError_t e = d ? cudaMemcpy(d, h, sizeof *h, cudaMemcpyHostToDevice) : cudaSuccess;
  free(h);
  if (!d) return NULL;
  if (e != cudaSuccess) {
    lt_errorf(err, LT_ERR_INTERNAL, "CUDA: %s copying CRC tables", cudaGetErrorName(e));
    return NULL;
  }
  return (const crc_tabs *)d;
}

/* Byte j of the checksummed data: the stream with its four CRC bytes left out (skip = 1), or
 * the buffer as it is. */
__device__ __forceinline__ uint8_t crc_byte(const uint8_t *s, unsigned long long j, int skip) {
  return s[skip && j >= AC_CRC_OFFSET ? j + 4 : j];
}

/* One thread per CRC_SEG-byte segment: its standard CRC-32C (initial and final inversion), 8
 * bytes a step through slicing-by-8 tables. When the buffer is 4-byte aligned (data offsets that
 * are multiples of 4 map to stream offsets that are: the skipped field is 4 bytes at 128), the
 * block first stages its 128 segments in shared memory with coalesced word loads, rows padded by
 * a word so that the threads' reads fall in different banks. */
#define SEG_WORDS (CRC_SEG / 4)
__global__ void __launch_bounds__(128) k_crc_seg(const uint8_t *s, unsigned long long n,
                                                 int skip, const crc_tabs *tabs, uint32_t *seg,
                                                 unsigned nseg) {
  __shared__ uint32_t t[8][256];
  __shared__ uint32_t data[128 * (SEG_WORDS + 1)];
  for (unsigned j = threadIdx.x; j < 8 * 256; j += blockDim.x) (&t[0][0])[j] = (&tabs->t[0][0])[j];
  const unsigned long long b0 = (unsigned long long)blockIdx.x * 128 * CRC_SEG;
  const bool aligned = ((uintptr_t)s & 3) == 0;
  if (aligned) { /* whole words of this block's range, coalesced */
    const unsigned long long b1 = min(b0 + 128ull * CRC_SEG, n);
    const unsigned words = (unsigned)((b1 - b0) / 4);
    for (unsigned k = threadIdx.x; k < words; k += blockDim.x) {
      const unsigned long long j = b0 + 4ull * k;
      data[(k / SEG_WORDS) * (SEG_WORDS + 1) + k % SEG_WORDS] =
          *(const uint32_t *)(s + (skip && j >= AC_CRC_OFFSET ? j + 4 : j));
    }
  }
  __syncthreads();
  const unsigned g = blockIdx.x * blockDim.x + threadIdx.x;
  if (g >= nseg) return;
  const unsigned long long a = (unsigned long long)g * CRC_SEG;
  const unsigned long long b = min(a + CRC_SEG, n);
  uint32_t crc = 0xFFFFFFFFu;
  unsigned long long j = a;
  if (aligned) {
    const uint32_t *row = data + threadIdx.x * (SEG_WORDS + 1);
    for (unsigned k = 0; j + 8 <= b; j += 8, k += 2) {
      const uint32_t lo = crc ^ row[k], hi = row[k + 1];
      crc = t[7][lo & 0xFF] ^ t[6][(lo >> 8) & 0xFF] ^ t[5][(lo >> 16) & 0xFF] ^ t[4][lo >> 24] ^
            t[3][hi & 0xFF] ^ t[2][(hi >> 8) & 0xFF] ^ t[1][(hi >> 16) & 0xFF] ^ t[0][hi >> 24];
    }
  }
  for (; j < b; j++) crc = (crc >> 8) ^ t[0][(crc ^ crc_byte(s, j, skip)) & 0xFF];
  seg[g] = ~crc;
}

/* Combines CRCs of consecutive pieces, TREE per block, by a tree in shared memory (crc_join);
 * each piece is (CRC, byte length). Level 1 reads the segment CRCs (lens NULL: lengths from the
 * segment layout over n bytes), later levels the previous level's output. With one block, the
 * result goes to *out and, with cmp, is compared with the stored value. */
#define TREE 256
__global__ void __launch_bounds__(TREE) k_crc_tree(const crc_tabs *tabs, const uint32_t *in,
                                                   const unsigned long long *lens, unsigned nin,
                                                   unsigned long long n, uint32_t *crc_out,
                                                   unsigned long long *len_out, uint32_t *out,
                                                   const uint8_t *cmp, unsigned *errw) {
  __shared__ uint32_t crc[TREE];
  __shared__ unsigned long long len[TREE];
  const unsigned t = threadIdx.x, g = blockIdx.x * TREE + t;
  crc[t] = g < nin ? in[g] : 0u;
  len[t] = g >= nin ? 0ull
           : lens  ? lens[g]
                   : min((unsigned long long)CRC_SEG, n - (unsigned long long)g * CRC_SEG);
  __syncthreads();
  for (unsigned step = 1; step < TREE; step <<= 1) {
    if (t % (2 * step) == 0) crc_join(tabs, &crc[t], &len[t], crc[t + step], len[t + step]);
    __syncthreads();
  }
  if (t) return;
  if (gridDim.x > 1) {
    crc_out[blockIdx.x] = crc[0];
    len_out[blockIdx.x] = len[0];
    return;
  }
  const uint32_t v = len[0] ? crc[0] : 0u;
  if (out) *out = v;
  if (cmp) {
    const uint32_t want = (uint32_t)cmp[0] | (uint32_t)cmp[1] << 8 | (uint32_t)cmp[2] << 16 |
                          (uint32_t)cmp[3] << 24;
    if (want != v) atomicOr(errw, (unsigned)E_CRC);
  }
}

/* The device's combination run on the host, over segment CRCs from the CPU's own CRC: the same
 * pieces, the same pairing, the same crc_join. Returns how many of a set of lengths (around the
 * segment, tree and digit boundaries) give a CRC other than ac_crc32c's of the whole; -1 when out
 * of memory. No device needed. */
extern "C" int ac_cuda_crc_combine_check(void) {
  crc_tabs *tb = (crc_tabs *)malloc(sizeof *tb);
  const size_t maxlen = (size_t)CRC_SEG * TREE * TREE + 3 * CRC_SEG + 7;
  uint8_t *b = (uint8_t *)malloc(maxlen);
  uint32_t *cr = (uint32_t *)malloc((maxlen / CRC_SEG + 2) * 4);
  unsigned long long *ln = (unsigned long long *)malloc((maxlen / CRC_SEG + 2) * 8);
  if (!tb || !b || !cr || !ln) {
    free(tb), free(b), free(cr), free(ln);
    return -1;
  }
  crc_tabs_build(tb);
  uint64_t st = 0x9E3779B97F4A7C15ull;
  for (size_t i = 0; i < maxlen; i++) {
    st = st * 6364136223846793005ull + 1442695040888963407ull;
    b[i] = (uint8_t)(st >> 56);
  }
  const size_t lens[] = {0, 1, 255, 256, 257, 1000, 256 * 255, 256 * 256, 256 * 256 + 1,
                         256 * 257 + 13, 256 * 256 * 3 + 99, (size_t)CRC_SEG * TREE * TREE,
                         maxlen};
  int bad = 0;
  for (size_t k = 0; k < sizeof lens / sizeof *lens; k++) {
    const size_t m = lens[k];
    unsigned nin = (unsigned)((m + CRC_SEG - 1) / CRC_SEG);
    for (unsigned g = 0; g < nin; g++) {
      const size_t a = (size_t)g * CRC_SEG, e = a + CRC_SEG < m ? a + CRC_SEG : m;
      cr[g] = ac_crc32c(0, b + a, e - a);
      ln[g] = e - a;
    }
    for (;;) { /* the levels of k_crc_tree, block by block, step by step */
      const unsigned nb = nin ? (nin + TREE - 1) / TREE : 1;
      for (unsigned blk = 0; blk < nb; blk++) {
        uint32_t c[TREE];
        unsigned long long l[TREE];
        for (unsigned t = 0; t < TREE; t++) {
          const unsigned g = blk * TREE + t;
          c[t] = g < nin ? cr[g] : 0;
          l[t] = g < nin ? ln[g] : 0;
        }
        for (unsigned step = 1; step < TREE; step <<= 1)
          for (unsigned t = 0; t < TREE; t += 2 * step)
            crc_join(tb, &c[t], &l[t], c[t + step], l[t + step]);
        cr[blk] = c[0];
        ln[blk] = l[0];
      }
      nin = nb;
      if (nb == 1) break;
    }
    const uint32_t got = ln[0] ? cr[0] : 0, want = ac_crc32c(0, b, m);
    if (got != want) {
      fprintf(stderr, "  CRC combination over %zu bytes: %08x, expected %08x\n", m, got, want);
      bad++;
    }
  }
  free(tb), free(b), free(cr), free(ln);
  return bad;
}

/* Queues the CRC of n bytes at s (skip: the stream's own CRC field left out) into *dcrc (device)
 * and, with cmp, the comparison with the stored value. */
static lt_status crc_queue(ac_cuda *c, const uint8_t *s, unsigned long long n, int skip,
                           uint32_t *dcrc, const uint8_t *cmp, unsigned *errw, lt_err *err) {
  const crc_tabs *tabs = crc_init(c, err);
  if (!tabs) return err ? err->status : LT_ERR_NOMEM;
  const unsigned long long m = skip ? n - 4 : n;
  const unsigned nseg = (unsigned)((m + CRC_SEG - 1) / CRC_SEG);
  const unsigned nb1 = (nseg + TREE - 1) / TREE;
  /* segment CRCs, then two ping-pong levels of (CRC, length) */
  const size_t lvl = (size_t)nb1 + 1;
  uint8_t *buf = (uint8_t *)dgrow(c, &c->crc, (size_t)(nseg + 1) * 4 + 2 * lvl * 12, err);
  if (!buf) return err ? err->status : LT_ERR_NOMEM;
  uint32_t *seg = (uint32_t *)(void *)buf;
  const size_t seg_bytes = ((size_t)(nseg + 1) * 4 + 7) & ~(size_t)7;
  unsigned long long *l0 = (unsigned long long *)(void *)(buf + seg_bytes);
  unsigned long long *l1 = l0 + lvl;
  uint32_t *c0 = (uint32_t *)(void *)(l1 + lvl), *c1 = c0 + lvl;
  if (nseg)
    k_crc_seg<<<(nseg + 127) / 128, 128, 0, lt_cuda_stream>>>(s, m, skip, tabs, seg, nseg);
  const uint32_t *in = seg;
  const unsigned long long *lens = NULL;
  unsigned nin = nseg;
  for (int level = 0;; level++) {
    const unsigned nb = nin ? (nin + TREE - 1) / TREE : 1;
    uint32_t *co = level & 1 ? c1 : c0;
    unsigned long long *lo = level & 1 ? l1 : l0;
    k_crc_tree<<<nb, TREE, 0, lt_cuda_stream>>>(tabs, in, lens, nin, m, co, lo, dcrc, cmp, errw);
    if (nb == 1) break;
    in = co;
    lens = lo;
    nin = nb;
  }
  CHECK_CUDA_ST(cudaGetLastError(), err);
  return LT_OK;
}

extern "C" lt_status ac_cuda_crc32c(ac_cuda *c, const uint8_t *d, size_t n, uint32_t *crc,
                                    lt_err *err) {
  lt_status st = lt_cuda_backend_enter(c->be, err);
  if (st) return st;
  uint32_t *dv = (uint32_t *)dgrow(c, &c->errw, 16, err);
  if (!dv) return err ? err->status : LT_ERR_NOMEM;
  if ((st = crc_queue(c, d, n, 0, dv, NULL, NULL, err))) return st;
  CHECK_CUDA_ST(cudaMemcpyAsync(crc, dv, 4, cudaMemcpyDeviceToHost, lt_cuda_stream), err);
  CHECK_CUDA_ST(cudaStreamSynchronize(lt_cuda_stream), err);
  return LT_OK;
}

/* ---- encoder -------------------------------------------------------------------------------- */

static lt_status check_dims(int ndim, const int64_t *shape, int64_t *n, int64_t *h, int64_t *w,
                            lt_err *err) {
  lt_status st = ac_check_shape(ndim, shape, n, err);
  if (st) return st;
  if (*n >= (int64_t)LT_CUDA_MAX_COUNT)
    return lt_errorf(err, LT_ERR_INVALID, "the GPU codec takes fewer than 2^31 elements (got "
                     "%lld); split the tensor", (long long)*n);
  *w = shape[ndim - 1];
  *h = ndim >= 2 ? shape[ndim - 2] : 1;
  return LT_OK;
}

static int cmp_u16(const void *a, const void *b) {
  return (int)*(const uint16_t *)a - (int)*(const uint16_t *)b;
}

#define COMP_FIRST 4096 /* list entries read back with the counters; longer lists take a 2nd copy */

extern "C" lt_status ac_cuda_encode(ac_cuda *c, const float *dx, int ndim, const int64_t *shape,
                                    double eb, lt_mem_cat cat, ac_dstream *out, lt_err *err) {
  if (!c || !dx || !shape || !out)
    return lt_errorf(err, LT_ERR_INVALID,
                     "ac_cuda_encode: codec, data, shape and out are required");
  ac_cuda_stream_free(c, out);
  int64_t n64 = 0, h = 1, w = 1;
  lt_status st = check_dims(ndim, shape, &n64, &h, &w, err);
  if (st) return st;
  ac_qp qp;
  if (ac_qp_init(eb, &qp))
    return lt_errorf(err, LT_ERR_INVALID,
                     "error bound %g is not usable: give a finite eb between 1e-30 and 1e30", eb);
  if ((st = lt_cuda_backend_enter(c->be, err))) return st;
  cudaStream_t s = lt_cuda_stream;
  const unsigned n = (unsigned)n64, uw = (unsigned)w, uhw = (unsigned)(h * w);
  const unsigned nplanes = n / uhw, pstride = nplanes >= 16 ? 16 : 1;
  const unsigned nchunks = (n + AC_CUDA_CHUNK - 1) / AC_CUDA_CHUNK;
  const dqp p = {qp.inv2eb, qp.twoeb, qp.eb};

  /* 1. predictor (on a sample, decided on the device), then the codes, their histogram (made
   * compact), escapes and outliers in one pass. The lists start at a sixty-fourth of the
   * elements and are made exact and the pass run again when that was too short (rare). */
  unsigned *hist =
      (unsigned *)dgrow(c, &c->hist, (3 * AC_NSYM + CNT_WORDS) * sizeof(unsigned), err);
  unsigned long long *comp = (unsigned long long *)dgrow(c, &c->comp, AC_NSYM * 8, err);
  uint16_t *codes = (uint16_t *)dgrow(c, &c->codes, (size_t)n * 2, err);
  if (!hist || !comp || !codes) return err ? err->status : LT_ERR_NOMEM;
  unsigned *hmain = hist + 2 * AC_NSYM, *cnt = hist + 3 * AC_NSYM;
  MARK(ENC, 0);
  CHECK_CUDA_ST(cudaMemsetAsync(hist, 0, (3 * AC_NSYM + CNT_WORDS) * sizeof(unsigned), s), err);
  const unsigned ns = (nplanes + pstride - 1) / pstride * uhw;
  const unsigned sblocks = min((ns + 255) / 256, (unsigned)c->sms * 4);
  if (c->hist_plain) k_sample<false><<<sblocks, 256, 0, s>>>(dx, ns, pstride, uw, uhw, p, hist);
  else k_sample<true><<<sblocks, 256, 0, s>>>(dx, ns, pstride, uw, uhw, p, hist);
  k_choose<<<1, 1024, 0, s>>>(hist, cnt + CNT_PRED);
  CHECK_CUDA_ST(cudaGetLastError(), err);
  unsigned cap = n / 64 + 1024, cw[CNT_WORDS];
  unsigned long long *hc = c->h_comp; /* counters, then the compacted histogram */
  for (int attempt = 0;; attempt++) {
    unsigned *ei = (unsigned *)dgrow(c, &c->ei, (size_t)cap * 4, err);
    unsigned *ev = (unsigned *)dgrow(c, &c->ev, (size_t)cap * 4, err);
    unsigned *oi = (unsigned *)dgrow(c, &c->oi, (size_t)cap * 4, err);
    unsigned *ov = (unsigned *)dgrow(c, &c->ov, (size_t)cap * 4, err);
    if (!ei || !ev || !oi || !ov) return err ? err->status : LT_ERR_NOMEM;
    const unsigned cblocks = min((n + 255) / 256, (unsigned)c->sms * 8);
    if (c->hist_plain)
      k_codes<false><<<cblocks, 256, 0, s>>>(dx, n, uw, uhw, p, cnt + CNT_PRED, codes, hmain, cnt,
                                             ei, ev, cap, oi, ov, cap);
    else
      k_codes<true><<<cblocks, 256, 0, s>>>(dx, n, uw, uhw, p, cnt + CNT_PRED, codes, hmain, cnt,
                                            ei, ev, cap, oi, ov, cap);
    k_compact<<<lt_cuda_blocks(AC_NSYM, 256), 256, 0, s>>>(hmain, cnt + CNT_COMP, comp);
    CHECK_CUDA_ST(cudaGetLastError(), err);
    MARK(ENC, 1);
    CHECK_CUDA_ST(cudaMemcpyAsync(hc, cnt, CNT_WORDS * sizeof(unsigned), cudaMemcpyDeviceToHost,
                                  s), err);
    CHECK_CUDA_ST(cudaMemcpyAsync(hc + 4, comp, COMP_FIRST * 8, cudaMemcpyDeviceToHost, s), err);
    CHECK_CUDA_ST(cudaStreamSynchronize(s), err);
    memcpy(cw, hc, sizeof cw);
    if (cw[CNT_OUTL] <= cap && cw[CNT_ESC] <= cap) break;
    if (attempt) return lt_errorf(err, LT_ERR_INTERNAL, "GPU codec: escape or outlier count moved "
                                  "between two passes over the same tensor");
    cap = cw[CNT_OUTL] > cw[CNT_ESC] ? cw[CNT_OUTL] : cw[CNT_ESC];
    CHECK_CUDA_ST(cudaMemsetAsync(hmain, 0, (AC_NSYM + CNT_WORDS) * sizeof(unsigned), s), err);
    CHECK_CUDA_ST(cudaMemcpyAsync(cnt + CNT_PRED, (unsigned *)(void *)hc + CNT_PRED, 4,
                                  cudaMemcpyHostToDevice, s), err);
  }
  const unsigned nsym32 = cw[CNT_COMP];
  if (nsym32 > COMP_FIRST) {
    CHECK_CUDA_ST(cudaMemcpyAsync(hc + 4 + COMP_FIRST, comp + COMP_FIRST,
                                  (size_t)(nsym32 - COMP_FIRST) * 8, cudaMemcpyDeviceToHost, s),
                  err);
    CHECK_CUDA_ST(cudaStreamSynchronize(s), err);
  }

  /* 2. the code, from the used symbols only */
  const int lorenzo = cw[CNT_PRED] != 0;
  const int64_t nsym = nsym32;
  const unsigned nesc = cw[CNT_ESC], nout = cw[CNT_OUTL];
  int64_t *pairs = c->lscratch; /* (weight, symbol), then the length scratch */
  for (int64_t i = 0; i < nsym; i++) {
    pairs[2 * i] = (int64_t)(hc[4 + i] & 0xFFFFFFFFu);
    pairs[2 * i + 1] = (int64_t)(hc[4 + i] >> 32);
    c->syms[i] = (uint16_t)(hc[4 + i] >> 32);
  }
  ac_huff_lengths_pairs(pairs, nsym, c->len, c->lscratch + 2 * nsym);
  qsort(c->syms, (size_t)nsym, sizeof *c->syms, cmp_u16);
  ac_huff_enc_list(c->syms, nsym, c->len, c->enc);
  MARK(ENC, 2);

  /* 3. the code to the device, chunk bit counts and byte sizes */
  uint32_t *denc = (uint32_t *)dgrow(c, &c->denc, AC_NSYM * sizeof(uint32_t), err);
  uint32_t *cbits = (uint32_t *)dgrow(c, &c->cbits, (size_t)nchunks * 4, err);
  unsigned long long *coff =
      (unsigned long long *)dgrow(c, &c->coff, (size_t)(nchunks + 1) * 8, err);
  uint32_t *encp = (uint32_t *)dgrow(c, &c->encp, (size_t)nsym * 8, err);
  if (!denc || !cbits || !coff || !encp) return err ? err->status : LT_ERR_NOMEM;
  uint32_t *pin = (uint32_t *)(void *)hc; /* read: the pinned buffer is free */
  for (int64_t i = 0; i < nsym; i++) {
    pin[2 * i] = c->syms[i];
    pin[2 * i + 1] = c->enc[i];
  }
  CHECK_CUDA_ST(cudaMemcpyAsync(encp, pin, (size_t)nsym * 8, cudaMemcpyHostToDevice, s), err);
  k_scatter_enc<<<lt_cuda_blocks((size_t)nsym, 256), 256, 0, s>>>(encp, (unsigned)nsym, denc);
  k_bits<<<nchunks, 256, 0, s>>>(codes, n, denc, cbits, coff, nchunks);
  CHECK_CUDA_ST(cudaGetLastError(), err);
  MARK(ENC, 3);

  /* 4. chunk byte offsets; coff[nchunks] is the payload size */
  unsigned *ei = (unsigned *)c->ei.p, *ev = (unsigned *)c->ev.p, *oi = (unsigned *)c->oi.p,
           *ov = (unsigned *)c->ov.p;
  size_t scan_tmp = 0, sort_tmp = 0;
  cub::DeviceScan::ExclusiveSum(NULL, scan_tmp, coff, coff, (int)nchunks + 1, s);
  const unsigned nlist = nesc > nout ? nesc : nout;
  if (nlist)
    cub::DeviceRadixSort::SortPairs(NULL, sort_tmp, ei, ei, ev, ev, (int)nlist, 0, 32, s);
  void *tmp = dgrow(c, &c->tmp, scan_tmp > sort_tmp ? scan_tmp : sort_tmp, err);
  unsigned *sk = (unsigned *)dgrow(c, &c->sk, (size_t)nlist * 4 + 4, err);
  unsigned *sv = (unsigned *)dgrow(c, &c->sv, (size_t)nlist * 4 + 4, err);
  if (!tmp || !sk || !sv) return err ? err->status : LT_ERR_NOMEM;
  CHECK_CUDA_ST(cub::DeviceScan::ExclusiveSum(tmp, scan_tmp, coff, coff, (int)nchunks + 1, s),
                err);
  unsigned long long raw = 0;
  CHECK_CUDA_ST(cudaMemcpyAsync(hc, coff + nchunks, 8, cudaMemcpyDeviceToHost, s), err);
  CHECK_CUDA_ST(cudaStreamSynchronize(s), err);
  MARK(ENC, 4);
  raw = hc[0];

  /* 5. the stream: header and table from the host, then the device sections */
  const size_t off_chunks = AC_HEADER_BYTES + (size_t)nsym * 3;
  const size_t off_pay = off_chunks + (size_t)nchunks * 4;
  const size_t off_esc = off_pay + raw, off_outl = off_esc + (size_t)nesc * 12;
  const size_t total = off_outl + (size_t)nout * 12;
  uint32_t *pay = (uint32_t *)dgrow(c, &c->pay, (size_t)raw + 8, err);
  uint8_t *hb = hsmall(c, off_chunks, err);
  if (!pay || !hb) return err ? err->status : LT_ERR_NOMEM;
  uint8_t *o = (uint8_t *)c->be->vt->alloc(c->be, total, cat, err);
  if (!o) return lt_err_prefix(err, "GPU codec output of %zu bytes", total);
  out->data = o;
  out->len = total;
  out->cat = cat;
  out->predictor = lorenzo ? AC_PREDICTOR_LORENZO2D : AC_PREDICTOR_NONE;

  ac_header_put(hb, out->predictor, 0, ndim, shape, eb, AC_CUDA_CHUNK, nsym, nesc, nout, raw,
                raw);
  uint8_t *tp = hb + AC_HEADER_BYTES;
  for (int64_t i = 0; i < nsym; i++, tp += 3) {
    tp[0] = (uint8_t)c->syms[i];
    tp[1] = (uint8_t)(c->syms[i] >> 8);
    tp[2] = c->len[c->syms[i]];
  }
  CHECK_CUDA_ST(cudaMemcpyAsync(o, hb, off_chunks, cudaMemcpyHostToDevice, s), err);
  k_put_u32<<<lt_cuda_blocks(nchunks, 256), 256, 0, s>>>(o + off_chunks, cbits, nchunks);
  CHECK_CUDA_ST(cudaMemsetAsync(pay, 0, (size_t)raw + 8, s), err);
  k_encode<<<(nchunks + 3) / 4, 128, 0, s>>>(codes, n, nchunks, denc, coff, pay);
  CHECK_CUDA_ST(cudaGetLastError(), err);
  if (raw)
    CHECK_CUDA_ST(cudaMemcpyAsync(o + off_pay, pay, raw, cudaMemcpyDeviceToDevice, s), err);
  const unsigned counts[2] = {nesc, nout};
  unsigned *li[2] = {ei, oi}, *lv[2] = {ev, ov};
  const size_t offs[2] = {off_esc, off_outl};
  for (int k = 0; k < 2; k++) {
    if (!counts[k]) continue;
    size_t t = sort_tmp;
    CHECK_CUDA_ST(cub::DeviceRadixSort::SortPairs(tmp, t, li[k], sk, lv[k], sv, (int)counts[k],
                                                  0, 32, s), err);
    k_put_records<<<lt_cuda_blocks(counts[k], 256), 256, 0, s>>>(o + offs[k], sk, sv, counts[k]);
  }
  CHECK_CUDA_ST(cudaGetLastError(), err);

  /* 6. the checksum, straight into its field */
  MARK(ENC, 5);
  if ((st = crc_queue(c, o, total, 1, (uint32_t *)(void *)(o + AC_CRC_OFFSET), NULL, NULL, err)))
    return st;
  MARK(ENC, 6);
  prof_end(c, ENC, 6);
  return LT_OK;
}

/* ---- decoder -------------------------------------------------------------------------------- */

typedef struct dtab {
  uint32_t table[1 << AC_TABLE_BITS];
  uint32_t first[AC_MAXLEN + 2], count[AC_MAXLEN + 2], offset[AC_MAXLEN + 2];
} dtab;

/* Entries strictly increasing and below n, for count 12-byte records. */
__global__ void k_check_list(const uint8_t *rec, unsigned long long count, unsigned long long n,
                             unsigned *errw) {
  for (unsigned long long j = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
       j < count; j += (unsigned long long)gridDim.x * blockDim.x) {
    unsigned long long v = 0, u = 0;
    for (int b = 7; b >= 0; b--) v = v << 8 | rec[12 * j + b];
    if (j)
      for (int b = 7; b >= 0; b--) u = u << 8 | rec[12 * (j - 1) + b];
    if (v >= n || (j && v <= u)) atomicOr(errw, (unsigned)E_LIST);
  }
}

/* One thread per chunk: residuals d = sym − R as int32 into out. */
__global__ void __launch_bounds__(128) k_decode(const uint8_t *pay, unsigned long long size,
                                                const dtab *gt, const uint16_t *sorted,
                                                unsigned nsorted,
                                                const unsigned long long *cstart,
                                                const uint8_t *chunk_sec, unsigned nchunks,
                                                unsigned chunk, unsigned n, int32_t *out,
                                                unsigned *errw) {
  __shared__ dtab t;
  for (unsigned j = threadIdx.x; j < sizeof(dtab) / 4; j += blockDim.x)
    ((uint32_t *)&t)[j] = ((const uint32_t *)gt)[j];
  __syncthreads();
  const unsigned ci = blockIdx.x * blockDim.x + threadIdx.x;
  if (ci >= nchunks) return;
  const unsigned nbits = (uint32_t)chunk_sec[4 * ci] | (uint32_t)chunk_sec[4 * ci + 1] << 8 |
                         (uint32_t)chunk_sec[4 * ci + 2] << 16 |
                         (uint32_t)chunk_sec[4 * ci + 3] << 24;
  const unsigned s0 = ci * chunk, m = min(chunk, n - s0);
  unsigned long long bytepos = cstart[ci];
  unsigned long long buf = 0;
  unsigned nbuf = 0, used = 0;
  bool bad = false;
  for (unsigned k = 0; k < m; k++) {
    /* Refill 32 bits at a time: four independent byte loads (the chunk's start is not aligned)
     * wait for memory once, where a byte at a time waited for each. A code takes at most 16 bits,
     * so a symbol starts with at least 16 in buf, and buf never holds more than 64. */
    if (nbuf <= 32) {
      unsigned long long v = 0;
      if (bytepos + 4 <= size) {
        v = (unsigned long long)pay[bytepos] | (unsigned long long)pay[bytepos + 1] << 8 |
            (unsigned long long)pay[bytepos + 2] << 16 | (unsigned long long)pay[bytepos + 3] << 24;
      } else {
        for (unsigned b = 0; b < 4; b++)
          if (bytepos + b < size) v |= (unsigned long long)pay[bytepos + b] << (8 * b);
      }
      buf |= v << nbuf;
      bytepos += 4;
      nbuf += 32;
    }
    uint32_t e = t.table[buf & ((1u << AC_TABLE_BITS) - 1)];
    if (e < (1u << 16)) { /* long code or no code: canonical decode bit by bit */
      e = 0;
      uint32_t code = 0;
      for (int l = 1; l <= AC_MAXLEN; l++) {
        code = (code << 1) | (uint32_t)((buf >> (l - 1)) & 1);
        const uint32_t q = code - t.first[l];
        if (q < t.count[l]) {
          const uint32_t at = t.offset[l] + q;
          e = at < nsorted ? ((uint32_t)l << 16) | sorted[at] : 0;
          break;
        }
      }
    }
    const unsigned l = e >> 16;
    if (!l) {
      bad = true;
      break;
    }
    out[s0 + k] = (int32_t)(e & 0xFFFFu) - AC_RADIUS;
    buf >>= l;
    nbuf -= l;
    used += l;
    if (used > nbits) {
      bad = true;
      break;
    }
  }
  if (bad || used != nbits) atomicOr(errw, (unsigned)E_CODE);
}

__device__ __forceinline__ unsigned long long rec_idx(const uint8_t *r) {
  unsigned long long v = 0;
  for (int b = 7; b >= 0; b--) v = v << 8 | r[b];
  return v;
}
__device__ __forceinline__ uint32_t rec_val(const uint8_t *r) {
  return (uint32_t)r[8] | (uint32_t)r[9] << 8 | (uint32_t)r[10] << 16 | (uint32_t)r[11] << 24;
}

__global__ void k_escapes(const uint8_t *rec, unsigned count, unsigned n, int32_t *out,
                          unsigned *errw) {
  GRID_STRIDE(j, count) {
    const unsigned long long idx = rec_idx(rec + 12ull * j);
    if (idx >= n) continue; /* reported by k_check_list */
    if (out[idx] != -AC_RADIUS) atomicOr(errw, (unsigned)E_ESC);
    else out[idx] = (int32_t)rec_val(rec + 12ull * j);
  }
}

/* Prefix sums along each row (thread per row), in unsigned arithmetic like the CPU's wrap. */
__global__ void k_rows(int32_t *d, unsigned rows, unsigned w) {
  GRID_STRIDE(r, rows) {
    uint32_t *row = (uint32_t *)d + (size_t)r * w, s = 0;
    for (unsigned j = 0; j < w; j++) row[j] = s += row[j];
  }
}

/* Prefix sums down each column of each plane (thread per column), then x' = (float)q · 2eb. */
__global__ void k_cols(int32_t *d, unsigned cols, unsigned h, unsigned w, float twoeb) {
  GRID_STRIDE(cidx, cols) {
    const unsigned plane = cidx / w, col = cidx % w;
    uint32_t *b = (uint32_t *)d + (size_t)plane * h * w + col, s = 0;
    for (unsigned r = 0; r < h; r++) {
      s += b[(size_t)r * w];
      ((float *)b)[(size_t)r * w] = __fmul_rn(__int2float_rn((int32_t)s), twoeb);
    }
  }
}

__global__ void k_dequant(int32_t *d, unsigned n, float twoeb) {
  GRID_STRIDE(i, n) ((float *)d)[i] = __fmul_rn(__int2float_rn(d[i]), twoeb);
}

__global__ void k_outliers(const uint8_t *rec, unsigned count, unsigned n, float *x) {
  GRID_STRIDE(j, count) {
    const unsigned long long idx = rec_idx(rec + 12ull * j);
    if (idx < n) x[idx] = __uint_as_float(rec_val(rec + 12ull * j));
  }
}

#define BAD(...) lt_errorf(err, LT_ERR_FORMAT, "activation stream: " __VA_ARGS__)

/* 1 when the stream's checksum holds, 0 when not, -1 when it could not be computed. The decoder
 * asks before reporting a header or table fault, so that a damaged stream is called damaged
 * (as the CPU decoder, which checks the sum first, calls it) rather than, say, of another size. */
static int crc_holds(ac_cuda *c, const uint8_t *ds, size_t len) {
  if (len < AC_HEADER_BYTES) return -1;
  unsigned *errw = (unsigned *)dgrow(c, &c->errw, 16, NULL);
  if (!errw || cudaMemsetAsync(errw, 0, 16, lt_cuda_stream) != cudaSuccess ||
      crc_queue(c, ds, len, 1, errw + 1, ds + AC_CRC_OFFSET, errw, NULL))
    return -1;
  unsigned ew = 0;
  if (cudaMemcpyAsync(&ew, errw, 4, cudaMemcpyDeviceToHost, lt_cuda_stream) != cudaSuccess ||
      cudaStreamSynchronize(lt_cuda_stream) != cudaSuccess)
    return -1;
  return !(ew & E_CRC);
}
#define BAD_UNLESS_CRC(st)                                                                         \
  (crc_holds(c, ds, len) == 0 ? BAD("checksum mismatch: the stream is corrupt or truncated") : (st))

extern "C" lt_status ac_cuda_decode(ac_cuda *c, const uint8_t *ds, size_t len, float *dx,
                                    int64_t n64, lt_err *err) {
  if (!c || (!ds && len) || (!dx && n64))
    return lt_errorf(err, LT_ERR_INVALID, "ac_cuda_decode: codec, stream and output are required");
  lt_status st = lt_cuda_backend_enter(c->be, err);
  if (st) return st;
  cudaStream_t s = lt_cuda_stream;
  if (len < AC_HEADER_BYTES) return BAD("%zu bytes, shorter than its %d-byte header", len,
                                        AC_HEADER_BYTES);
  uint8_t *hb = hsmall(c, AC_HEADER_BYTES, err);
  if (!hb) return err ? err->status : LT_ERR_NOMEM;
  MARK(DEC, 0);
  CHECK_CUDA_ST(cudaMemcpyAsync(hb, ds, AC_HEADER_BYTES, cudaMemcpyDeviceToHost, s), err);
  CHECK_CUDA_ST(cudaStreamSynchronize(s), err);
  MARK(DEC, 1);
  ac_hdr hd;
  if ((st = ac_parse_header(hb, len, &hd, err))) return BAD_UNLESS_CRC(st);
  if (hd.n != n64)
    return BAD_UNLESS_CRC(lt_errorf(err, LT_ERR_INVALID,
                                    "activation stream holds %lld elements, buffer %lld",
                                    (long long)hd.n, (long long)n64));
  if (hd.zstd)
    return BAD_UNLESS_CRC(lt_errorf(
        err, LT_ERR_UNSUPPORTED, "activation stream: its payload is zstd-packed, which the GPU "
        "decoder does not unpack; decode it on the CPU (lt_ac_decode)"));
  if (hd.n >= (int64_t)LT_CUDA_MAX_COUNT)
    return lt_errorf(err, LT_ERR_UNSUPPORTED, "the GPU codec takes fewer than 2^31 elements");
  const unsigned n = (unsigned)hd.n, nchunks = (unsigned)hd.nchunks;

  /* table and chunk section: read back, checked with the CPU's parser. One staging buffer holds
   * them, then the decode table and chunk starts on their way to the device. */
  const size_t meta = hd.off_payload - hd.off_table;
  const size_t meta16 = (meta + 15) & ~(size_t)15;
  uint8_t *stage = hsmall(c, meta16 + sizeof(dtab) + (size_t)nchunks * 8 + 16, err);
  if (!(hb = stage)) return err ? err->status : LT_ERR_NOMEM;
  CHECK_CUDA_ST(cudaMemcpyAsync(hb, ds + hd.off_table, meta, cudaMemcpyDeviceToHost, s), err);
  CHECK_CUDA_ST(cudaStreamSynchronize(s), err);
  uint16_t *syms = (uint16_t *)c->lscratch;
  uint8_t *lens = (uint8_t *)(syms + AC_NSYM);
  for (int64_t i = 0; i < hd.nsym; i++) {
    syms[i] = (uint16_t)(hb[3 * i] | hb[3 * i + 1] << 8);
    lens[i] = hb[3 * i + 2];
  }
  if (ac_huff_dec_build(&c->dec, syms, lens, hd.nsym))
    return BAD_UNLESS_CRC(BAD("Huffman table is not a valid prefix code"));
  const uint8_t *chunk_host = hb + (hd.off_chunks - hd.off_table);
  if ((st = ac_parse_chunks(&hd, chunk_host, err))) return BAD_UNLESS_CRC(st);

  /* device copies: decode table, chunk starts; scratch error word */
  dtab *dt = (dtab *)dgrow(c, &c->dtab, sizeof(dtab), err);
  uint16_t *dsorted = (uint16_t *)dgrow(c, &c->sorted, (size_t)hd.nsym * 2, err);
  unsigned long long *cst =
      (unsigned long long *)dgrow(c, &c->cstart, (size_t)nchunks * 8, err);
  unsigned *errw = (unsigned *)dgrow(c, &c->errw, 16, err);
  if (!dt || !dsorted || !cst || !errw) return err ? err->status : LT_ERR_NOMEM;
  dtab *ht = (dtab *)(void *)(stage + meta16);
  memcpy(ht->table, c->dec.table, sizeof ht->table);
  memcpy(ht->first, c->dec.first, sizeof ht->first);
  memcpy(ht->count, c->dec.count, sizeof ht->count);
  memcpy(ht->offset, c->dec.offset, sizeof ht->offset);
  unsigned long long *hcs = (unsigned long long *)(void *)(ht + 1);
  unsigned long long at = 0;
  for (unsigned ci = 0; ci < nchunks; ci++) {
    hcs[ci] = at;
    at += (ac_get_u32(chunk_host + 4 * ci) + 7) / 8;
  }
  CHECK_CUDA_ST(cudaMemcpyAsync(dt, ht, sizeof *ht, cudaMemcpyHostToDevice, s), err);
  CHECK_CUDA_ST(cudaMemcpyAsync(cst, hcs, (size_t)nchunks * 8, cudaMemcpyHostToDevice, s), err);
  CHECK_CUDA_ST(cudaMemcpyAsync(dsorted, c->dec.sorted, (size_t)hd.nsym * 2,
                                cudaMemcpyHostToDevice, s), err);
  CHECK_CUDA_ST(cudaMemsetAsync(errw, 0, 16, s), err);
  MARK(DEC, 2);

  /* checksum and list order */
  if ((st = crc_queue(c, ds, len, 1, errw + 1, ds + AC_CRC_OFFSET, errw, err))) return st;
  if (hd.nesc)
    k_check_list<<<lt_cuda_blocks(hd.nesc, 256), 256, 0, s>>>(ds + hd.off_esc, hd.nesc, hd.n,
                                                              errw);
  if (hd.nout)
    k_check_list<<<lt_cuda_blocks(hd.nout, 256), 256, 0, s>>>(ds + hd.off_outl, hd.nout, hd.n,
                                                              errw);

  /* Huffman, escapes, prefix sums and dequantisation, outliers */
  MARK(DEC, 3);
  int32_t *d = (int32_t *)(void *)dx;
  k_decode<<<(nchunks + 127) / 128, 128, 0, s>>>(ds + hd.off_payload, hd.raw_bytes, dt, dsorted,
                                                 (unsigned)hd.nsym, cst, ds + hd.off_chunks,
                                                 nchunks, (unsigned)hd.chunk, n, d, errw);
  MARK(DEC, 4);
  if (hd.nesc)
    k_escapes<<<lt_cuda_blocks(hd.nesc, 256), 256, 0, s>>>(ds + hd.off_esc, (unsigned)hd.nesc,
                                                           n, d, errw);
  ac_qp qp;
  ac_qp_init(hd.eb, &qp); /* checked by the parser */
  if (hd.pred == AC_PREDICTOR_LORENZO2D) {
    const unsigned rows = (unsigned)(hd.n / hd.w), cols = (unsigned)(hd.n / hd.h);
    k_rows<<<lt_cuda_blocks(rows, 128), 128, 0, s>>>(d, rows, (unsigned)hd.w);
    k_cols<<<lt_cuda_blocks(cols, 128), 128, 0, s>>>(d, cols, (unsigned)hd.h, (unsigned)hd.w,
                                                     qp.twoeb);
  } else {
    k_dequant<<<lt_cuda_blocks(n, 256), 256, 0, s>>>(d, n, qp.twoeb);
  }
  if (hd.nout)
    k_outliers<<<lt_cuda_blocks(hd.nout, 256), 256, 0, s>>>(ds + hd.off_outl, (unsigned)hd.nout,
                                                            n, dx);
  CHECK_CUDA_ST(cudaGetLastError(), err);
  MARK(DEC, 5);
  unsigned ew = 0;
  CHECK_CUDA_ST(cudaMemcpyAsync(stage, errw, 4, cudaMemcpyDeviceToHost, s), err);
  CHECK_CUDA_ST(cudaStreamSynchronize(s), err);
  MARK(DEC, 6);
  prof_end(c, DEC, 6);
  memcpy(&ew, stage, 4);
  if (ew & E_CRC) return BAD("checksum mismatch: the stream is corrupt or truncated");
  if (ew & E_LIST) return BAD("escape or outlier indices out of order or out of range");
  if (ew & E_CODE) return BAD("Huffman payload does not decode to its chunk sizes");
  if (ew & E_ESC) return BAD("an escape does not sit on an escape symbol");
  return LT_OK;
}
