/* lathe/actcomp.h — error-bounded activation compression: the codec, two comparison codecs, and
 * the stash policy with its error-bound controller (specs/actcomp.md).
 *
 * Usage (the codec alone):
 *   lt_ac_codec *c = lt_ac_codec_new(NULL, &err);          // default options: all SIMD, OpenMP
 *   lt_ac_buf out = {0};
 *   lt_ac_encode(c, LT_AC_KIND_LORENZO, x, 4, (int64_t[]){n, ch, h, w}, 0.05, &out, &err);
 *   ... out.data / out.len is a self-describing stream ...
 *   lt_ac_decode(c, out.data, out.len, y, n * ch * h * w, &err); // |x - y| <= 0.05 everywhere
 *   lt_ac_buf_free(&out);
 *   lt_ac_codec_free(c);
 *
 * Usage (the stash policy, plugged into the executor):
 *   lt_ac_config cfg = lt_ac_config_default();  cfg.mode = LT_AC_ADAPTIVE;  cfg.rho = 0.1;
 *   lt_ac_stash *st = lt_ac_stash_new(&cfg, &err);
 *   lt_exec_opts o = {.stash = lt_ac_stash_policy(st)};
 *   ... lt_exec_create(g, batch, LT_MODE_TRAIN, be, &o, &err); train; after each backward:
 *   lt_ac_stash_step_end(st);                  // advances the controller's window
 *   lt_ac_stash_report(st, &rep);              // bytes before/after, per-layer eb history
 *
 * The LORENZO codec: prequantise q = round(x / 2eb) (int32, zeros stay zero, non-finite or
 * bound-missing values stored raw), 2-D Lorenzo prediction on the integers per H×W plane (the
 * last two dims) or no prediction, whichever a sample of planes says codes smaller (post-ReLU
 * maps at coarse bounds prefer none), residual codes within radius 2^15, canonical
 * length-limited Huffman in fixed chunks with per-chunk bit counts (parallel decode), optional
 * zstd pass, CRC-32C over the stream. Every element decodes within eb; the decoder checks the
 * whole stream before trusting it and rejects malformed input with LT_ERR_FORMAT. AVX-512, AVX2
 * or scalar kernels are picked at run time; threads work on planes (encode) and chunks (decode).
 * Scratch: about 2 bytes per element plus 12 bytes per element of one row, per thread (so 1-D
 * tensors, one long row, cost more).
 *
 * Measured (tests/actcomp, `lathe bench codec`): on ResNet-20's conv/linear inputs it beats
 * SZ3's ratio at every bound with zeros exact, at 1.5+ GB/s compress and 2.3+ GB/s decompress
 * on one core.
 *
 * On a device backend (CUDA) the executor binds the stash to it (lt_stash_policy.bind): the
 * compressed entries then live in device memory and every data operation (codec, masks, affine
 * maps, the controller's sums) runs there; a stash serves one backend at a time.
 *
 * Not for: general-purpose float compression of files (no streaming, one tensor per stream), or
 * lossy storage of anything whose error reaches other layers' gradients (use LT_SAVE_EXACT).
 * ZFP and zstd streams are comparison codecs: their decoders are not hardened against hostile
 * input (ZFP's bit reader trusts its stream); only the LORENZO decoder is.
 */
#ifndef LATHE_ACTCOMP_H
#define LATHE_ACTCOMP_H

#include "lathe/exec.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- codecs ---------------------------------------------------------------------------------- */

typedef enum lt_ac_kind {
  LT_AC_KIND_LORENZO = 0, /* this module's codec: strict bound, zeros exact */
  LT_AC_KIND_ZFP,         /* libzfp fixed accuracy: bounded error, not uniform, zeros not kept */
  LT_AC_KIND_ZSTD         /* zstd alone, lossless (eb ignored) */
} lt_ac_kind;

const char *lt_ac_kind_name(lt_ac_kind k); /* "lorenzo", "zfp", "zstd" */
int lt_ac_kind_available(lt_ac_kind k);    /* ZFP needs libzfp at build time */

/* Instruction set of the LORENZO codec's vector kernels. AUTO picks the best the CPU has;
 * forcing a level the CPU lacks falls back to the best it has. Streams are identical at every
 * level (a tested property). */
typedef enum lt_ac_simd {
  LT_AC_SIMD_AUTO = 0,
  LT_AC_SIMD_SCALAR,
  LT_AC_SIMD_AVX2,
  LT_AC_SIMD_AVX512
} lt_ac_simd;

const char *lt_ac_simd_name(lt_ac_simd s);
lt_ac_simd lt_ac_simd_resolve(lt_ac_simd s); /* what AUTO or a forced level runs on this CPU */

typedef struct lt_ac_opts {
  int threads;     /* OpenMP threads; 0 = omp_get_max_threads(), 1 = single-threaded */
  int zstd_level;  /* LORENZO: zstd pass over the Huffman payload at this level (kept only when it
                      shrinks it); 0 = none. ZSTD kind: its level (0 means 3). */
  lt_ac_simd simd;
  int chunk;       /* LORENZO: symbols per Huffman chunk, a power of two from 1024 to 16384;
                      0 = 16384. Smaller chunks decode with more parallelism (the GPU decoder
                      runs one thread per chunk) and cost 4 bytes of chunk table each. */
} lt_ac_opts;

lt_ac_opts lt_ac_opts_default(void); /* threads 0, zstd_level 1, simd AUTO */

/* A growable output buffer, counted under cat (LT_MEM_WORKSPACE when zero-initialised). */
typedef struct lt_ac_buf {
  uint8_t *data; /* (cap) owned */
  size_t len, cap;
  lt_mem_cat cat;
} lt_ac_buf;

void lt_ac_buf_free(lt_ac_buf *b); /* accepts a zeroed or NULL buffer */

/* Scratch space and options, reused across calls so that a training step allocates nothing once
 * the largest tensor has been seen. Not thread-safe: one codec per concurrent caller. */
typedef struct lt_ac_codec lt_ac_codec;

lt_ac_codec *lt_ac_codec_new(const lt_ac_opts *opts, lt_err *err); /* opts NULL: defaults */
void lt_ac_codec_free(lt_ac_codec *c);
void lt_ac_codec_set_opts(lt_ac_codec *c, const lt_ac_opts *opts);

/* Compresses x (shape, ndim 1..LT_MAX_DIMS, row-major) with absolute error bound eb > 0
 * (ignored by ZSTD) into out (replacing its contents, growing it as needed). */
lt_status lt_ac_encode(lt_ac_codec *c, lt_ac_kind kind, const float *x, int ndim,
                       const int64_t *shape, double eb, lt_ac_buf *out, lt_err *err);
/* LORENZO of z = (x − off[c])·scale[c], c the channel (dim 1) of each element, without
 * materialising z: each row is mapped into a per-thread row buffer before prequantisation. The
 * stream decodes (lt_ac_decode) to z' with |z − z'| <= eb; the caller maps it back. ndim >= 3
 * (batch, channels, ..., w), so that a row lies within one channel. */
lt_status lt_ac_encode_affine(lt_ac_codec *c, const float *x, int ndim, const int64_t *shape,
                              double eb, const float *off, const float *scale, lt_ac_buf *out,
                              lt_err *err);
/* Decodes a stream of any kind (the magic says which) into x, which holds n elements; n must
 * equal the stream's element count. */
lt_status lt_ac_decode(lt_ac_codec *c, const uint8_t *src, size_t len, float *x, int64_t n,
                       lt_err *err);

/* What a stream says about itself (parsed and checked, payload not decoded). */
typedef struct lt_ac_info {
  lt_ac_kind kind;
  int ndim;
  int64_t shape[LT_MAX_DIMS];
  int64_t n;
  double eb;
  int predictor;          /* LORENZO: 2 = 2-D Lorenzo, 0 = none (q coded directly) */
  int zstd;               /* LORENZO: 1 when the payload went through zstd */
  int64_t n_outliers;     /* values stored raw (non-finite, huge, bound-missing) */
  int64_t n_escapes;      /* residuals beyond the radius, stored as int32 */
  int64_t n_symbols;      /* distinct Huffman symbols */
  int64_t payload_bytes;  /* Huffman payload as stored */
  size_t stream_bytes;
} lt_ac_info;

lt_status lt_ac_stream_info(const uint8_t *src, size_t len, lt_ac_info *info, lt_err *err);

/* ---- stash policy and error-bound controller ------------------------------------------------ */

typedef enum lt_ac_mode {
  LT_AC_OFF = 0,   /* everything exact (still as a policy: bytes are counted the same way) */
  LT_AC_FIXED,     /* eb = cfg.eb for every layer */
  LT_AC_RELATIVE,  /* eb = cfg.rel * (max - min) of each tensor */
  LT_AC_ADAPTIVE   /* eb = rho·√3·mean|G| / (δ_rms·√(N(1−R))) per layer, from observe() */
} lt_ac_mode;

typedef enum lt_ac_bn_mode {
  LT_AC_BN_EXACT = 0, /* batch-norm inputs kept bit-exact */
  LT_AC_BN_LOSSY      /* compressed in the normalised domain: |x̂ − x̂'| <= cfg.bn_eb, i.e.
                         |x − x'| <= bn_eb·σ_c per channel (σ_c = √(var_c + eps), the batch's) */
} lt_ac_bn_mode;

typedef struct lt_ac_config {
  lt_ac_mode mode;
  double eb;          /* FIXED: absolute bound */
  double rel;         /* RELATIVE: fraction of the value range */
  double rho;         /* ADAPTIVE: predicted gradient-error σ as a fraction of mean|G| */
  int window;         /* ADAPTIVE: iterations per update W; the first window runs exact */
  double initial_eb;  /* ADAPTIVE: conv/linear bound during the first window, before the
                         controller has statistics; 0 = exact (the spec's default). Set it (a
                         conservative 0.01, say) under a memory cap: then no step needs the
                         uncompressed stash, so the larger batch that compression allows fits
                         from the first step */
  double smoothing;   /* ADAPTIVE: eb ← (1-s)·eb_new + s·eb_old, s in [0, 1) */
  double eb_min, eb_max; /* clamp for ADAPTIVE and RELATIVE (absolute units) */
  lt_ac_bn_mode bn_mode;
  double bn_eb;       /* BN_LOSSY: bound on the normalised input x̂ = (x − mean_c)/σ_c, which is
                         what batch-norm backward reads */
  int sample_every;   /* measure observed vs predicted dW error every this many steps; 0 = never */
  lt_ac_opts codec;
} lt_ac_config;

lt_ac_config lt_ac_config_default(void); /* ADAPTIVE, rho 0.1, W 20, smoothing 0.5, eb in
                                            [1e-4, 1], BN exact (bn_eb 0.2 when lossy),
                                            sample_every 50, initial_eb 0 */

typedef struct lt_ac_stash lt_ac_stash;

lt_ac_stash *lt_ac_stash_new(const lt_ac_config *cfg, lt_err *err);
void lt_ac_stash_free(lt_ac_stash *st); /* releases everything still held */
/* The policy to put in lt_exec_opts.stash; valid while st lives. */
const lt_stash_policy *lt_ac_stash_policy(lt_ac_stash *st);
/* Marks the end of a training step: advances the controller (every W steps in ADAPTIVE). */
void lt_ac_stash_step_end(lt_ac_stash *st);
/* The bound of this node: for conv/linear inputs in FIXED and ADAPTIVE modes the one its next
 * store() uses, otherwise (RELATIVE, batch-norm inputs) the one its last store() used; 0 = exact. */
double lt_ac_stash_layer_eb(const lt_ac_stash *st, int node);

#define LT_AC_HISTORY 64 /* eb updates kept per layer (the most recent) */

typedef struct lt_ac_layer_report {
  int node;                  /* graph node id of the conv/linear layer (or BN/ReLU/pool node) */
  lt_save_kind kind;
  int64_t bytes_dense;       /* what exact storage takes, last step */
  int64_t bytes_held;        /* what was held, last step, codec metadata included */
  double eb;                 /* current bound (0 = exact) */
  int n_history;             /* entries in eb_history (most recent last) */
  int64_t eb_step[LT_AC_HISTORY];
  double eb_history[LT_AC_HISTORY];
  /* Sampled steps: observed RMS error of dW caused by compression, and the σ predicted by
   * eb·√(N(1−R)/3)·δ_rms; their ratio should sit near 1. */
  int n_samples;
  double last_observed_sigma, last_predicted_sigma;
  double mean_ratio;         /* mean observed/predicted over samples */
} lt_ac_layer_report;

typedef struct lt_ac_report {
  int64_t step;
  int64_t bytes_dense, bytes_held; /* totals over layers, last step */
  int64_t peak_dense, peak_held;   /* peaks within a step, over all steps */
  int n_layers;
  lt_ac_layer_report *layers; /* (n_layers) owned by the stash; valid until the next call */
} lt_ac_report;

void lt_ac_stash_report(lt_ac_stash *st, lt_ac_report *out);
/* Restarts the report's peaks (peak_dense, peak_held) from what is held now. The train job calls
 * it when the adaptive controller's exact first window ends, so that the peaks it reports are
 * those of compressed training; the allocator's LT_MEM_SAVED peak still covers the whole run. */
void lt_ac_stash_reset_peaks(lt_ac_stash *st);

#ifdef __cplusplus
}
#endif
#endif
