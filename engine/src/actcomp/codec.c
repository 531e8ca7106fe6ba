/* The LORENZO activation codec: stream layout, encoder and decoder orchestration, and the
 * kind-dispatching entry points shared with the comparison codecs.
 *
 * Stream (little-endian), AC_HEADER_BYTES of header then five sections:
 *   0   "LTAC"             4   u16 version (1)      6   u8 predictor       7   u8 flags (1: zstd)
 *   8   u32 ndim           12  u32 radius           16  i64 shape[8] (unused dims 0)
 *   80  f64 eb             88  u32 chunk symbols    92  u32 table entries
 *   96  u64 escapes        104 u64 outliers         112 u64 payload bytes (raw, before zstd)
 *   120 u64 payload bytes as stored                 128 u32 CRC-32C     132 u32 reserved (0)
 *   table     entries × (u16 symbol, u8 length), symbols increasing
 *   chunks    ceil(n / chunk) × u32 bit count; chunk i starts at the byte after chunk i-1
 *   payload   Huffman bits, or zstd frames of them: consecutive slices of AC_ZSTD_SLICE bytes
 *             (the last takes the rest), each its own frame, so both directions run in parallel
 *   escapes   count × (u64 index, i32 residual), indices increasing
 *   outliers  count × (u64 index, u32 float bits), indices increasing
 * The CRC covers every byte but its own four. The decoder parses and checks all of it (sizes
 * against each other and against the element count, table completeness, every chunk ending on
 * its bit count, indices in range and increasing) before a byte of output is trusted.
 *
 * Predictor 2 is 2-D Lorenzo on the integers; predictor 0 codes q itself. The encoder picks per
 * tensor from a sample of planes: on post-ReLU activations at coarse bounds, where most q are 0
 * or 1, Lorenzo turns every zero/non-zero edge into two non-zero residuals and loses to no
 * prediction; on smooth inputs (the normalised image) it wins. */
#include "actcomp/ac_internal.h"
#include "lathe/config.h"

#include <math.h>
#include <immintrin.h>
#include <omp.h>
#include <stdlib.h>
#include <zstd.h>

#define AC_HIST4_MIN ((int64_t)1 << 18) /* a thread with this many elements counts into 4
                                            interleaved histograms (zeroed per call) */
#define AC_PAR_MIN 65536                 /* below this many elements threads cost more than
                                            they save */

/* ---- small shared helpers -------------------------------------------------------------------- */

void ac_put_u32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
void ac_put_u64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
uint32_t ac_get_u32(const uint8_t *p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}
uint64_t ac_get_u64(const uint8_t *p) {
  uint64_t v;
  memcpy(&v, p, 8);
  return v;
}

lt_status ac_check_shape(int ndim, const int64_t *shape, int64_t *n, lt_err *err) {
  if (ndim < 1 || ndim > LT_MAX_DIMS)
    return lt_errorf(err, LT_ERR_INVALID, "tensor has %d dims; the codec takes 1 to %d", ndim,
                     LT_MAX_DIMS);
  int64_t total = 1;
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 1 || shape[i] > AC_MAX_ELEMS)
      return lt_errorf(err, LT_ERR_INVALID, "dim %d is %lld; every dim must be in 1..2^33", i,
                       (long long)shape[i]);
    if (total > AC_MAX_ELEMS / shape[i])
      return lt_errorf(err, LT_ERR_INVALID, "tensor has more than 2^33 elements; split it");
    total *= shape[i];
  }
  *n = total;
  return LT_OK;
}

lt_status ac_buf_reserve(lt_ac_buf *b, size_t cap, lt_err *err) {
  if (b->cap >= cap) return LT_OK;
  if (b->cat == 0 && !b->data) b->cat = LT_MEM_WORKSPACE; /* zeroed buffer: workspace */
  size_t ncap = b->cap + b->cap / 2 > cap ? b->cap + b->cap / 2 : cap;
  uint8_t *p = lt_alloc(b->cat, ncap, err);
  if (!p) return lt_err_prefix(err, "codec output buffer of %zu bytes", ncap);
  if (b->len) memcpy(p, b->data, b->len);
  lt_free(b->cat, b->data, b->cap);
  b->data = p;
  b->cap = ncap;
  return LT_OK;
}

void lt_ac_buf_free(lt_ac_buf *b) {
  if (!b) return;
  lt_free(b->cat, b->data, b->cap);
  b->data = NULL;
  b->len = b->cap = 0;
}

void ac_list_push(ac_list *l, int64_t idx, uint32_t val) {
  if (l->failed) return;
  if (l->n == l->cap) {
    int64_t ncap = l->cap ? 2 * l->cap : 256;
    int64_t *ni = lt_alloc(LT_MEM_WORKSPACE, (size_t)ncap * sizeof *ni, NULL);
    uint32_t *nv = lt_alloc(LT_MEM_WORKSPACE, (size_t)ncap * sizeof *nv, NULL);
    if (!ni || !nv) {
      lt_free(LT_MEM_WORKSPACE, ni, (size_t)ncap * sizeof *ni);
      lt_free(LT_MEM_WORKSPACE, nv, (size_t)ncap * sizeof *nv);
      l->failed = 1;
      return;
    }
    if (l->n) {
      memcpy(ni, l->idx, (size_t)l->n * sizeof *ni);
      memcpy(nv, l->val, (size_t)l->n * sizeof *nv);
    }
    lt_free(LT_MEM_WORKSPACE, l->idx, (size_t)l->cap * sizeof *l->idx);
    lt_free(LT_MEM_WORKSPACE, l->val, (size_t)l->cap * sizeof *l->val);
    l->idx = ni;
    l->val = nv;
    l->cap = ncap;
  }
  l->idx[l->n] = idx;
  l->val[l->n] = val;
  l->n++;
}

void ac_list_free(ac_list *l) {
  lt_free(LT_MEM_WORKSPACE, l->idx, (size_t)l->cap * sizeof *l->idx);
  lt_free(LT_MEM_WORKSPACE, l->val, (size_t)l->cap * sizeof *l->val);
  memset(l, 0, sizeof *l);
}

/* ---- the codec object ------------------------------------------------------------------------ */

typedef struct ac_scratch {
  void *p;
  size_t cap;
} ac_scratch;

struct lt_ac_codec {
  lt_ac_opts opts;
  const ac_kernels *k;
  ac_scratch codes;   /* uint16 (n): residual codes */
  ac_scratch rows;    /* int32 per thread: 3 rows of W+1 (zero row, current, previous) */
  ac_scratch hist;    /* uint64 (threads, AC_NSYM), zero outside the range below */
  int hd_lo, hd_hi, hd_t; /* symbols [hd_lo, hd_hi] of hist rows [0, hd_t) may be nonzero */
  ac_scratch sub;     /* uint32 (threads, 4, AC_NSYM): see hist_add */
  ac_scratch chunks;  /* uint64 (n_chunks): bit counts, then byte offsets */
  ac_scratch payload; /* raw Huffman payload of a zstd-packed stream being decoded */
  ac_scratch pranges; /* int64 (threads, 2): planes each decode thread finished */
  ac_list *outl, *esc; /* (n_lists) per-thread lists */
  int n_lists;
  uint8_t len[AC_NSYM];
  uint32_t enc[AC_NSYM];
  int64_t lscratch[3 * AC_NSYM];
  ac_huff_dec dec;
  ac_scratch zframes; /* zstd frames being written: (slices) regions of compressBound bytes */
  ac_scratch zdir;    /* zstd frame sizes: (slices) size_t encoding; (frames, 4) u64 source
                         offset, size, raw offset, size decoding */
  ZSTD_CCtx **zc;     /* (n_zc) one per thread */
  ZSTD_DCtx **zd;     /* (n_zd) */
  int n_zc, n_zd;
};

static void *scratch_get(ac_scratch *s, size_t bytes, lt_err *err) {
  if (s->cap >= bytes) return s->p;
  lt_free(LT_MEM_WORKSPACE, s->p, s->cap);
  s->p = NULL;
  s->cap = 0;
  void *p = lt_alloc(LT_MEM_WORKSPACE, bytes ? bytes : 1, err);
  if (!p) {
    lt_err_prefix(err, "codec scratch of %zu bytes", bytes);
    return NULL;
  }
  s->p = p;
  s->cap = bytes ? bytes : 1;
  return p;
}

static void scratch_free(ac_scratch *s) {
  lt_free(LT_MEM_WORKSPACE, s->p, s->cap);
  s->p = NULL;
  s->cap = 0;
}

/* Clears what earlier encodes left in the per-thread histograms: only the symbols they touched. */
static void hist_clean(lt_ac_codec *c) {
  uint64_t *h = c->hist.p;
  if (h && c->hd_lo <= c->hd_hi)
    for (int i = 0; i < c->hd_t; i++)
      memset(h + (size_t)i * AC_NSYM + c->hd_lo, 0,
             (size_t)(c->hd_hi - c->hd_lo + 1) * sizeof *h);
  c->hd_lo = AC_NSYM;
  c->hd_hi = -1;
  c->hd_t = 0;
}

/* Records that histogram rows [0, t) may hold counts in symbols [lo, hi]. */
static void hist_dirty(lt_ac_codec *c, int t, int lo, int hi) {
  if (lo > hi) return;
  c->hd_lo = lo < c->hd_lo ? lo : c->hd_lo;
  c->hd_hi = hi > c->hd_hi ? hi : c->hd_hi;
  c->hd_t = t > c->hd_t ? t : c->hd_t;
}

/* The (t, AC_NSYM) histograms, every count zero. */
static uint64_t *hist_get(lt_ac_codec *c, int t, lt_err *err) {
  const size_t bytes = (size_t)t * AC_NSYM * sizeof(uint64_t);
  if (c->hist.cap >= bytes) {
    hist_clean(c);
    return c->hist.p;
  }
  uint64_t *h = scratch_get(&c->hist, bytes, err);
  if (h) memset(h, 0, bytes);
  c->hd_lo = AC_NSYM;
  c->hd_hi = -1;
  c->hd_t = 0;
  return h;
}

lt_ac_opts lt_ac_opts_default(void) {
  lt_ac_opts o = {.threads = 0, .zstd_level = 1, .simd = LT_AC_SIMD_AUTO, .chunk = 0};
  return o;
}

lt_ac_codec *lt_ac_codec_new(const lt_ac_opts *opts, lt_err *err) {
  lt_ac_codec *c = lt_calloc(LT_MEM_WORKSPACE, sizeof *c, err);
  if (!c) return NULL;
  lt_ac_codec_set_opts(c, opts);
  return c;
}

/* At least k zstd compression contexts (dir 0) or decompression contexts (dir 1): one a thread. */
static lt_status zstd_contexts(lt_ac_codec *c, int dir, int k, lt_err *err) {
  if (dir && c->n_zd < k) {
    ZSTD_DCtx **a = realloc(c->zd, (size_t)k * sizeof *a);
    if (!a) return lt_errorf(err, LT_ERR_NOMEM, "zstd context table allocation failed");
    c->zd = a;
    for (; c->n_zd < k; c->n_zd++)
      if (!(a[c->n_zd] = ZSTD_createDCtx()))
        return lt_errorf(err, LT_ERR_NOMEM, "zstd context allocation failed");
  } else if (!dir && c->n_zc < k) {
    ZSTD_CCtx **a = realloc(c->zc, (size_t)k * sizeof *a);
    if (!a) return lt_errorf(err, LT_ERR_NOMEM, "zstd context table allocation failed");
    c->zc = a;
    for (; c->n_zc < k; c->n_zc++)
      if (!(a[c->n_zc] = ZSTD_createCCtx()))
        return lt_errorf(err, LT_ERR_NOMEM, "zstd context allocation failed");
  }
  return LT_OK;
}

void lt_ac_codec_set_opts(lt_ac_codec *c, const lt_ac_opts *opts) {
  c->opts = opts ? *opts : lt_ac_opts_default();
  c->k = ac_kernels_get(c->opts.simd);
}

/* Per-channel affine map applied row by row before prequantisation (lt_ac_encode_affine). */
typedef struct ac_affine {
  const float *off, *scale; /* (nchan) */
  int64_t nchan, hw;        /* channel of element i: (i / hw) % nchan; hw a multiple of W */
} ac_affine;

static void free_lists(lt_ac_codec *c) {
  for (int i = 0; i < c->n_lists; i++) {
    ac_list_free(&c->outl[i]);
    ac_list_free(&c->esc[i]);
  }
  lt_free(LT_MEM_WORKSPACE, c->outl, (size_t)c->n_lists * sizeof *c->outl);
  lt_free(LT_MEM_WORKSPACE, c->esc, (size_t)c->n_lists * sizeof *c->esc);
  c->outl = c->esc = NULL;
  c->n_lists = 0;
}

void lt_ac_codec_free(lt_ac_codec *c) {
  if (!c) return;
  scratch_free(&c->codes);
  scratch_free(&c->rows);
  scratch_free(&c->hist);
  scratch_free(&c->sub);
  scratch_free(&c->chunks);
  scratch_free(&c->payload);
  scratch_free(&c->pranges);
  free_lists(c);
  scratch_free(&c->zframes);
  scratch_free(&c->zdir);
  for (int i = 0; i < c->n_zc; i++) ZSTD_freeCCtx(c->zc[i]);
  for (int i = 0; i < c->n_zd; i++) ZSTD_freeDCtx(c->zd[i]);
  free(c->zc);
  free(c->zd);
  lt_free(LT_MEM_WORKSPACE, c, sizeof *c);
}

static int codec_threads(const lt_ac_codec *c, int64_t n, int64_t units) {
  int t = c->opts.threads > 0 ? c->opts.threads : omp_get_max_threads();
  if (n < AC_PAR_MIN) t = 1;
  if (t > units) t = (int)units;
  return t < 1 ? 1 : t;
}

static lt_status lists_reset(lt_ac_codec *c, int t, lt_err *err) {
  if (c->n_lists < t) {
    free_lists(c);
    c->outl = lt_calloc(LT_MEM_WORKSPACE, (size_t)t * sizeof *c->outl, err);
    c->esc = lt_calloc(LT_MEM_WORKSPACE, (size_t)t * sizeof *c->esc, err);
    if (!c->outl || !c->esc) {
      lt_free(LT_MEM_WORKSPACE, c->outl, (size_t)t * sizeof *c->outl);
      lt_free(LT_MEM_WORKSPACE, c->esc, (size_t)t * sizeof *c->esc);
      c->outl = c->esc = NULL;
      return lt_err_prefix(err, "codec outlier lists");
    }
    c->n_lists = t;
  }
  for (int i = 0; i < c->n_lists; i++) {
    c->outl[i].n = c->esc[i].n = 0;
    c->outl[i].failed = c->esc[i].failed = 0;
  }
  return LT_OK;
}

/* The plane layout shared by encoder and decoder: H×W planes over the last two dims. */
static void plane_dims(int ndim, const int64_t *shape, int64_t *h, int64_t *w) {
  *w = shape[ndim - 1];
  *h = ndim >= 2 ? shape[ndim - 2] : 1;
}

/* ---- encoder --------------------------------------------------------------------------------- */

/* The symbols a histogram was given, [lo, hi] (lo > hi: none): the loops over the alphabet after
 * counting (merge, code lengths, table, clean-up) run over this range, not all AC_NSYM symbols,
 * which on tensors of a few thousand to a few hundred thousand elements cost more than the
 * counting itself. */
typedef struct ac_srange {
  int lo, hi;
} ac_srange;
#define AC_SRANGE_EMPTY ((ac_srange){AC_NSYM, -1})

/* Histogram of codes: straight into hist, or, with sub (4 × AC_NSYM uint32), round-robin into
 * four counters so that runs of one code do not serialise on one memory location. */
static void hist_add(const uint16_t *cp, int64_t m, uint64_t *hist, uint32_t *sub,
                     ac_srange *sr) {
  int64_t i = 0;
  unsigned lo = (unsigned)sr->lo, hi = (unsigned)(sr->hi + 1); /* [lo, hi) here; sr->hi >= -1 */
#define AC_SR_PUT(v) (lo = (v) < lo ? (v) : lo, hi = (v) + 1 > hi ? (v) + 1 : hi)
  if (sub) {
    uint32_t *s0 = sub, *s1 = sub + AC_NSYM, *s2 = sub + 2 * AC_NSYM, *s3 = sub + 3 * AC_NSYM;
    for (; i + 4 <= m; i += 4) {
      const unsigned a = cp[i], b = cp[i + 1], c = cp[i + 2], d = cp[i + 3];
      s0[a]++;
      s1[b]++;
      s2[c]++;
      s3[d]++;
      AC_SR_PUT(a);
      AC_SR_PUT(b);
      AC_SR_PUT(c);
      AC_SR_PUT(d);
    }
  }
  for (; i < m; i++) {
    const unsigned a = cp[i];
    hist[a]++;
    AC_SR_PUT(a);
  }
#undef AC_SR_PUT
  sr->lo = (int)lo;
  sr->hi = (int)hi - 1;
}

/* hist_add for codes dominated by a few values (R and R ± 1, residuals 0 and ±1: most codes of
 * activations at the bounds in use): those are counted with compares and popcounts, the others
 * are packed into a small buffer (register compress, then one store) and counted by hist_add.
 * Runs of one code then no longer chain increments on one counter, so no sub-histograms. */
__attribute__((target("avx512f,avx512bw,avx512vbmi2"))) static void
hist_add_avx512(const uint16_t *cp, int64_t m, uint64_t *hist, ac_srange *sr) {
  uint16_t rest[1024 + 32];
  const __m512i r0 = _mm512_set1_epi16((short)AC_RADIUS), rm = _mm512_set1_epi16(AC_RADIUS - 1),
                rp = _mm512_set1_epi16((short)(AC_RADIUS + 1));
  uint64_t c0 = 0, cm = 0, cp1 = 0;
  int64_t i = 0;
  while (i + 32 <= m) {
    int nr = 0;
    for (int64_t e = i + 1024 <= m ? i + 1024 : m - (m - i) % 32; i < e; i += 32) {
      const __m512i v = _mm512_loadu_si512((const void *)(cp + i));
      const __mmask32 a = _mm512_cmpeq_epi16_mask(v, r0), b = _mm512_cmpeq_epi16_mask(v, rm),
                      c = _mm512_cmpeq_epi16_mask(v, rp);
      const __mmask32 other = ~(a | b | c);
      c0 += (uint64_t)__builtin_popcount(a);
      cm += (uint64_t)__builtin_popcount(b);
      cp1 += (uint64_t)__builtin_popcount(c);
      _mm512_storeu_si512((void *)(rest + nr), _mm512_maskz_compress_epi16(other, v));
      nr += __builtin_popcount(other);
    }
    hist_add(rest, nr, hist, NULL, sr);
  }
  hist_add(cp + i, m - i, hist, NULL, sr);
  hist[AC_RADIUS] += c0;
  hist[AC_RADIUS - 1] += cm;
  hist[AC_RADIUS + 1] += cp1;
  if (c0 | cm | cp1) {
    const int lo = cm ? AC_RADIUS - 1 : c0 ? AC_RADIUS : AC_RADIUS + 1;
    const int hi = cp1 ? AC_RADIUS + 1 : c0 ? AC_RADIUS : AC_RADIUS - 1;
    sr->lo = lo < sr->lo ? lo : sr->lo;
    sr->hi = hi > sr->hi ? hi : sr->hi;
  }
}

static int cpu_has_vbmi2(void) {
  static int has = -1;
  if (has < 0) {
    __builtin_cpu_init();
    has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
          __builtin_cpu_supports("avx512vbmi2");
  }
  return has;
}

/* Planes up to this many elements are coded whole (one kernel call per stage), larger ones row
 * by row; rows of ResNet-sized planes are 8 to 32 elements, too short for per-row calls. */
#define AC_PLANE_MAX 16384

/* Codes the first `rows` rows of the h×w plane starting at element base into codes (same offsets)
 * and adds them to hist (or sub, see hist_add). rb holds the thread's rows (plane_rows_ints).
 *
 * Whole plane (h·w <= AC_PLANE_MAX): rb is [w zeros | q (n) | w zeros | L (n)] with L[i] =
 * q[i-1] but 0 at each row start; then u = q - w, ul = L - w read the zeros above row 0, and
 * one predict call covers the plane. Row by row: rb is 3 rows of w+1 ints, a zero row and two
 * working rows, each with a zero at index 0 for the column left of the plane. */
static void code_plane(const ac_kernels *k, const float *x, const ac_qp *qp, int pred,
                       int64_t h, int64_t rows, int64_t w, int64_t base, int32_t *rb,
                       uint16_t *codes, ac_list *outl, ac_list *esc, uint64_t *hist, uint32_t *sub,
                       ac_srange *sr, const ac_affine *af) {
  float aff[2];
  const int64_t n = rows * w;
  if (af) { /* z = (x − off_c)·scale_c; a plane lies in one channel (hw is a multiple of it) */
    const int64_t ch = base / af->hw % af->nchan;
    aff[0] = af->off[ch];
    aff[1] = af->scale[ch];
  }
  if (h * w <= AC_PLANE_MAX) {
    int32_t *q = rb + w, *L = q + n + w;
    memset(rb, 0, (size_t)w * sizeof *rb);
    memset(q + n, 0, (size_t)w * sizeof *rb);
    k->quant(x + base, n, qp, af ? aff : NULL, q, outl, base);
    if (pred == AC_PREDICTOR_LORENZO2D) {
      L[0] = 0;
      memcpy(L + 1, q, (size_t)(n - 1) * sizeof *L);
      for (int64_t r = 1; r < rows; r++) L[r * w] = 0;
      k->predict(q, L, q - w, L - w, n, codes + base, esc, base);
    } else {
      /* No prediction: the neighbour rows are zeros (L's region, zeroed here). */
      memset(L, 0, (size_t)n * sizeof *L);
      k->predict(q, L, L, L, n, codes + base, esc, base);
    }
    if (k->level == LT_AC_SIMD_AVX512 && cpu_has_vbmi2()) hist_add_avx512(codes + base, n, hist, sr);
    else hist_add(codes + base, n, hist, sub, sr);
    return;
  }
  int32_t *zero = rb, *cur = rb + (w + 1), *prev = cur + (w + 1);
  memset(zero, 0, (size_t)(w + 1) * sizeof *zero);
  cur[0] = prev[0] = 0;
  const int32_t *up = zero;
  for (int64_t r = 0; r < rows; r++) {
    int64_t off = base + r * w;
    k->quant(x + off, w, qp, af ? aff : NULL, cur + 1, outl, off);
    if (pred == AC_PREDICTOR_LORENZO2D)
      k->predict(cur + 1, cur, up + 1, up, w, codes + off, esc, off);
    else
      k->predict(cur + 1, zero + 1, zero + 1, zero + 1, w, codes + off, esc, off);
    int32_t *tmp = prev;
    prev = cur;
    cur = tmp;
    up = prev;
  }
  hist_add(codes + base, n, hist, sub, sr);
}

/* Ints of row scratch one thread needs for planes of h×w (see code_plane). */
static size_t plane_rows_ints(int64_t h, int64_t w) {
  return h * w <= AC_PLANE_MAX ? (size_t)(2 * (h * w + w)) : (size_t)(3 * (w + 1));
}

/* The zstd pass over the raw Huffman bits at pay, in place: cut into slices of AC_ZSTD_SLICE
 * bytes (the last takes the remainder, so the frames depend on the size alone, not on the thread
 * count), each compressed as its own frame by one thread into scratch sized by the actual bits,
 * the frames then copied back to back over pay. *stored is their total, or raw_bytes (pay left
 * as it was) when they would not be smaller. */
static lt_status zstd_pack(lt_ac_codec *c, uint8_t *pay, size_t raw_bytes, size_t *stored,
                           lt_err *err) {
  int64_t ns = (int64_t)(raw_bytes / AC_ZSTD_SLICE);
  ns = ns < 1 ? 1 : ns > AC_ZSTD_MAX_FRAMES ? AC_ZSTD_MAX_FRAMES : ns;
  const size_t slice = raw_bytes / (size_t)ns;
  const size_t bound = ZSTD_compressBound(slice + raw_bytes % (size_t)ns);
  const int tz = codec_threads(c, AC_PAR_MIN, ns); /* no size cut-off: a slice is 64 KiB */
  size_t *zlen = scratch_get(&c->zdir, (size_t)ns * sizeof *zlen, err);
  uint8_t *zb = scratch_get(&c->zframes, (size_t)ns * bound, err);
  if (!zlen || !zb) return err ? err->status : LT_ERR_NOMEM;
  lt_status st = zstd_contexts(c, 0, tz, err);
  if (st) return st;
  int failed = 0;
#pragma omp parallel for num_threads(tz) schedule(static) reduction(| : failed)
  for (int64_t i = 0; i < ns; i++) {
    const size_t len = i == ns - 1 ? raw_bytes - (size_t)i * slice : slice;
    zlen[i] = ZSTD_compressCCtx(c->zc[omp_get_thread_num()], zb + (size_t)i * bound, bound,
                                pay + (size_t)i * slice, len, c->opts.zstd_level);
    failed |= ZSTD_isError(zlen[i]) != 0;
  }
  size_t total = 0;
  for (int64_t i = 0; i < ns && !failed; i++) total += zlen[i];
  if (failed || total >= raw_bytes) {
    *stored = raw_bytes;
    return LT_OK;
  }
  for (int64_t i = 0, at = 0; i < ns; at += (int64_t)zlen[i], i++)
    memcpy(pay + at, zb + (size_t)i * bound, zlen[i]);
  *stored = total;
  return LT_OK;
}

static lt_status lorenzo_encode(lt_ac_codec *c, const float *x, int ndim, const int64_t *shape,
                                double eb, const ac_affine *af, lt_ac_buf *out, lt_err *err) {
  int64_t n, h, w;
  lt_status st = ac_check_shape(ndim, shape, &n, err);
  if (st) return st;
  ac_qp qp;
  if (ac_qp_init(eb, &qp))
    return lt_errorf(err, LT_ERR_INVALID,
                     "error bound %g is not usable: give a finite eb between 1e-30 and 1e30", eb);
  plane_dims(ndim, shape, &h, &w);
  const int64_t plane = h * w, nplanes = n / plane;
  const int64_t chunk = c->opts.chunk ? c->opts.chunk : AC_CHUNK;
  if (!ac_chunk_valid(chunk))
    return lt_errorf(err, LT_ERR_INVALID, "chunk size %lld: give a power of two from %d to %d",
                     (long long)chunk, AC_CHUNK_MIN, AC_CHUNK);
  const int64_t nchunks = (n + chunk - 1) / chunk;
  const int t = codec_threads(c, n, nplanes);
  const ac_kernels *k = c->k;

  uint16_t *codes = scratch_get(&c->codes, (size_t)n * sizeof *codes, err);
  const size_t rb_ints = plane_rows_ints(h, w);
  int32_t *rows = scratch_get(&c->rows, (size_t)t * rb_ints * sizeof *rows, err);
  uint64_t *hist = hist_get(c, t, err);
  /* (nchunks) bit counts, then (nchunks + 1) byte offsets */
  uint64_t *cbits = scratch_get(&c->chunks, (size_t)(2 * nchunks + 1) * sizeof *cbits, err);
  if (!codes || !rows || !hist || !cbits) return err ? err->status : LT_ERR_NOMEM;
  if ((st = lists_reset(c, t, err))) return st;

  /* Predictor choice on a sample of planes (their leading rows), coded both ways with thread
   * 0's rows, lists and histogram; the cost estimate is the order-0 entropy of the codes plus
   * escapes and table entries. */
  int pred = AC_PREDICTOR_LORENZO2D;
  {
    const int64_t stride = nplanes > 16 ? nplanes / 16 : 1;
    const int64_t rows_max = h < 64 ? h : 64;
    double cost[2];
    const int preds[2] = {AC_PREDICTOR_LORENZO2D, AC_PREDICTOR_NONE};
    for (int pi = 0; pi < 2; pi++) {
      ac_srange sr = AC_SRANGE_EMPTY;
      c->esc[0].n = c->outl[0].n = 0;
      int64_t total = 0;
      for (int64_t p = 0; p < nplanes; p += stride) {
        code_plane(k, x, &qp, preds[pi], h, rows_max, w, p * plane, rows, codes, &c->outl[0],
                   &c->esc[0], hist, NULL, &sr, af);
        total += rows_max * w;
      }
      hist_dirty(c, 1, sr.lo, sr.hi);
      cost[pi] = 96.0 * (double)c->esc[0].n;
      for (int sy = sr.lo; sy <= sr.hi; sy++)
        if (hist[sy]) cost[pi] += (double)hist[sy] * log2((double)total / (double)hist[sy]) + 24;
      hist_clean(c);
    }
    if (cost[1] < cost[0]) pred = AC_PREDICTOR_NONE;
    if ((st = lists_reset(c, t, err))) return st;
  }

  /* Stage 1: prequantise and predict, one plane at a time; static scheduling gives each thread
   * a contiguous run of planes, so concatenating the per-thread lists keeps indices sorted. */
  const int use_sub = n / t >= AC_HIST4_MIN &&
                      !(k->level == LT_AC_SIMD_AVX512 && cpu_has_vbmi2() && plane <= AC_PLANE_MAX);
  uint32_t *subs = NULL;
  if (use_sub &&
      !(subs = scratch_get(&c->sub, (size_t)t * 4 * AC_NSYM * sizeof *subs, err)))
    return err ? err->status : LT_ERR_NOMEM;
  int slo = AC_NSYM, shi = -1; /* the symbols coded, over all threads */
#pragma omp parallel num_threads(t) reduction(min : slo) reduction(max : shi)
  {
    int tid = omp_get_thread_num();
    int32_t *rb = rows + (size_t)tid * rb_ints;
    uint64_t *hi = hist + (size_t)tid * AC_NSYM;
    uint32_t *sub = use_sub ? subs + (size_t)tid * 4 * AC_NSYM : NULL;
    ac_srange sr = AC_SRANGE_EMPTY;
    if (sub) memset(sub, 0, 4 * AC_NSYM * sizeof *sub);
#pragma omp for schedule(static) nowait
    for (int64_t p = 0; p < nplanes; p++)
      code_plane(k, x, &qp, pred, h, h, w, p * plane, rb, codes, &c->outl[tid], &c->esc[tid], hi,
                 sub, &sr, af);
    if (sub)
      for (int sy = sr.lo; sy <= sr.hi; sy++)
        hi[sy] += (uint64_t)sub[sy] + sub[AC_NSYM + sy] + sub[2 * AC_NSYM + sy] +
                  sub[3 * AC_NSYM + sy];
    slo = sr.lo;
    shi = sr.hi;
  }
  hist_dirty(c, t, slo, shi);
  int64_t nout = 0, nesc = 0;
  for (int i = 0; i < t; i++) {
    if (c->outl[i].failed || c->esc[i].failed)
      return lt_errorf(err, LT_ERR_NOMEM, "codec outlier list allocation failed");
    nout += c->outl[i].n;
    nesc += c->esc[i].n;
    if (i)
      for (int s = slo; s <= shi; s++) hist[s] += hist[(size_t)i * AC_NSYM + s];
  }

  /* Stage 2: the code. */
  ac_huff_lengths(hist, slo, shi, c->len, c->lscratch);
  ac_huff_enc_table(c->len, slo, shi, c->enc);
  int64_t nsym = 0;
  for (int s = slo; s <= shi; s++) nsym += c->len[s] != 0;

  /* Stage 3: sections. The payload is at most 16 bits per symbol. */
  const size_t table_bytes = (size_t)nsym * 3, chunk_bytes = (size_t)nchunks * 4;
  const size_t raw_cap = (size_t)n * 2 + 16; /* zstd frames replace the bits only when smaller */
  const int use_zstd = c->opts.zstd_level > 0;
  const size_t tail_bytes = (size_t)(nesc + nout) * 12;
  if ((st = ac_buf_reserve(out, AC_HEADER_BYTES + table_bytes + chunk_bytes + raw_cap + tail_bytes,
                           err)))
    return st;
  uint8_t *o = out->data; /* the header is written last (ac_header_put) */
  uint8_t *tp = o + AC_HEADER_BYTES;
  for (int s = slo; s <= shi; s++)
    if (c->len[s]) {
      tp[0] = (uint8_t)s;
      tp[1] = (uint8_t)(s >> 8);
      tp[2] = c->len[s];
      tp += 3;
    }
  uint8_t *chunk_sec = tp;
  uint8_t *pay = chunk_sec + chunk_bytes;

  /* Huffman chunks, back to back. ac_huff_encode may touch the worst case, 2 bytes a symbol,
   * from where a chunk starts; that start is at most twice the chunk's first symbol, so every
   * write stays below twice the chunk's end. With several threads each encodes a contiguous run
   * of chunks into its own region of pay (regions start at twice the run's first symbol, so they
   * cannot overlap), then the runs move down to close the gaps. */
  size_t raw_bytes = 0;
  const int te = codec_threads(c, n, nchunks);
  if (te == 1) {
    for (int64_t ci = 0; ci < nchunks; ci++) {
      int64_t s0 = ci * chunk, m = n - s0 < chunk ? n - s0 : chunk;
      int64_t bits = ac_huff_encode(codes + s0, m, c->enc, pay + raw_bytes);
      cbits[ci] = (uint64_t)bits;
      raw_bytes += (size_t)(bits + 7) / 8;
    }
  } else {
    uint64_t *run = cbits + nchunks; /* (te) bytes each thread wrote */
#pragma omp parallel num_threads(te)
    {
      const int tid = omp_get_thread_num();
      const int64_t c0 = nchunks * tid / te, c1 = nchunks * (tid + 1) / te;
      uint8_t *dst = pay + 2 * (size_t)(c0 * chunk);
      size_t used = 0;
      for (int64_t ci = c0; ci < c1; ci++) {
        int64_t s0 = ci * chunk, m = n - s0 < chunk ? n - s0 : chunk;
        int64_t bits = ac_huff_encode(codes + s0, m, c->enc, dst + used);
        cbits[ci] = (uint64_t)bits;
        used += (size_t)(bits + 7) / 8;
      }
      run[tid] = used;
    }
    for (int i = 0; i < te; i++) {
      const int64_t c0 = nchunks * i / te;
      if (i) memmove(pay + raw_bytes, pay + 2 * (size_t)(c0 * chunk), run[i]);
      raw_bytes += run[i];
    }
  }
  for (int64_t ci = 0; ci < nchunks; ci++) ac_put_u32(chunk_sec + 4 * ci, (uint32_t)cbits[ci]);

  size_t stored = raw_bytes;
  uint8_t flags = 0;
  if (use_zstd) {
    st = zstd_pack(c, pay, raw_bytes, &stored, err);
    if (st) return st;
    if (stored < raw_bytes) flags |= AC_FLAG_ZSTD;
  }

  uint8_t *ep = pay + stored;
  for (int i = 0; i < t; i++)
    for (int64_t j = 0; j < c->esc[i].n; j++, ep += 12) {
      ac_put_u64(ep, (uint64_t)c->esc[i].idx[j]);
      ac_put_u32(ep + 8, c->esc[i].val[j]);
    }
  for (int i = 0; i < t; i++)
    for (int64_t j = 0; j < c->outl[i].n; j++, ep += 12) {
      ac_put_u64(ep, (uint64_t)c->outl[i].idx[j]);
      ac_put_u32(ep + 8, c->outl[i].val[j]);
    }

  ac_header_put(o, pred, flags, ndim, shape, eb, (uint32_t)chunk, nsym, nesc, nout, raw_bytes,
                stored);
  out->len = (size_t)(ep - o);
  ac_put_u32(o + AC_CRC_OFFSET, ac_stream_checksum(o, out->len));
  return LT_OK;
}

void ac_header_put(uint8_t *o, int pred, int flags, int ndim, const int64_t *shape, double eb,
                   uint32_t chunk, int64_t nsym, int64_t nesc, int64_t nout, uint64_t raw_bytes,
                   uint64_t stored_bytes) {
  memset(o, 0, AC_HEADER_BYTES);
  memcpy(o, AC_MAGIC, 4);
  o[4] = AC_VERSION;
  o[6] = (uint8_t)pred;
  o[7] = (uint8_t)flags;
  ac_put_u32(o + 8, (uint32_t)ndim);
  ac_put_u32(o + 12, AC_RADIUS);
  for (int i = 0; i < ndim; i++) ac_put_u64(o + 16 + 8 * i, (uint64_t)shape[i]);
  memcpy(o + 80, &eb, 8);
  ac_put_u32(o + 88, chunk);
  ac_put_u32(o + 92, (uint32_t)nsym);
  ac_put_u64(o + 96, (uint64_t)nesc);
  ac_put_u64(o + 104, (uint64_t)nout);
  ac_put_u64(o + 112, raw_bytes);
  ac_put_u64(o + 120, stored_bytes);
}

/* ---- parsing --------------------------------------------------------------------------------- */

uint32_t ac_stream_checksum(const uint8_t *src, size_t len) {
  uint32_t crc = ac_crc32c(0, src, AC_CRC_OFFSET);
  return ac_crc32c(crc, src + AC_CRC_OFFSET + 4, len - AC_CRC_OFFSET - 4);
}

#define BAD(...) lt_errorf(err, LT_ERR_FORMAT, "activation stream: " __VA_ARGS__)

lt_status ac_parse_header(const uint8_t *s, size_t len, ac_hdr *hd, lt_err *err) {
  if (len < AC_HEADER_BYTES) return BAD("%zu bytes, shorter than its %d-byte header", len,
                                        AC_HEADER_BYTES);
  if (memcmp(s, AC_MAGIC, 4)) return BAD("bad magic (not a Lathe activation stream)");
  if (s[4] != AC_VERSION || s[5] != 0)
    return BAD("version %u; this build reads version %d", s[4] | s[5] << 8, AC_VERSION);
  if (s[6] != AC_PREDICTOR_LORENZO2D && s[6] != AC_PREDICTOR_NONE)
    return BAD("unknown predictor %u", s[6]);
  hd->pred = s[6];
  if (s[7] & ~AC_FLAG_ZSTD) return BAD("unknown flags 0x%x", s[7]);
  if (ac_get_u32(s + 132) != 0) return BAD("reserved field is not zero");
  hd->zstd = s[7] & AC_FLAG_ZSTD;
  uint32_t nd = ac_get_u32(s + 8);
  if (nd < 1 || nd > LT_MAX_DIMS) return BAD("%u dims (expected 1..%d)", nd, LT_MAX_DIMS);
  hd->ndim = (int)nd;
  memset(hd->shape, 0, sizeof hd->shape);
  for (int i = 0; i < LT_MAX_DIMS; i++) {
    uint64_t v = ac_get_u64(s + 16 + 8 * i);
    if (i >= hd->ndim && v != 0) return BAD("unused dim %d is not zero", i);
    if (i < hd->ndim) {
      if (v < 1 || v > (uint64_t)AC_MAX_ELEMS) return BAD("dim %d is %llu", i,
                                                          (unsigned long long)v);
      hd->shape[i] = (int64_t)v;
    }
  }
  if (ac_check_shape(hd->ndim, hd->shape, &hd->n, NULL)) return BAD("more than 2^33 elements");
  if (ac_get_u32(s + 12) != AC_RADIUS) return BAD("radius %u (expected %d)", ac_get_u32(s + 12),
                                                  AC_RADIUS);
  memcpy(&hd->eb, s + 80, 8);
  ac_qp qp;
  if (ac_qp_init(hd->eb, &qp)) return BAD("error bound %g is not usable", hd->eb);
  const uint32_t chunk = ac_get_u32(s + 88);
  if (!ac_chunk_valid(chunk))
    return BAD("chunk size %u (expected a power of two from %d to %d)", chunk, AC_CHUNK_MIN,
               AC_CHUNK);
  hd->chunk = chunk;
  plane_dims(hd->ndim, hd->shape, &hd->h, &hd->w);
  hd->nchunks = (hd->n + hd->chunk - 1) / hd->chunk;
  hd->nsym = ac_get_u32(s + 92);
  uint64_t nesc = ac_get_u64(s + 96), nout = ac_get_u64(s + 104);
  hd->raw_bytes = ac_get_u64(s + 112);
  hd->stored_bytes = ac_get_u64(s + 120);
  if (hd->nsym < 1 || hd->nsym > AC_NSYM) return BAD("%lld table entries", (long long)hd->nsym);
  if (nesc > (uint64_t)hd->n || nout > (uint64_t)hd->n)
    return BAD("more escapes or outliers than elements");
  hd->nesc = (int64_t)nesc;
  hd->nout = (int64_t)nout;
  /* Each symbol takes 1 to 16 bits, each chunk pads to a byte. */
  if (hd->raw_bytes > (uint64_t)hd->n * 2 + (uint64_t)hd->nchunks ||
      hd->raw_bytes < (uint64_t)hd->n / 8)
    return BAD("payload of %llu bytes cannot hold %lld symbols",
               (unsigned long long)hd->raw_bytes, (long long)hd->n);
  if (!hd->zstd && hd->stored_bytes != hd->raw_bytes)
    return BAD("stored payload size differs from its raw size without zstd");
  if (hd->stored_bytes > len) return BAD("payload larger than the stream");
  uint64_t need = AC_HEADER_BYTES + (uint64_t)hd->nsym * 3 + (uint64_t)hd->nchunks * 4 +
                  hd->stored_bytes + (nesc + nout) * 12;
  if (need != len)
    return BAD("sections add up to %llu bytes but the stream has %zu (truncated or padded)",
               (unsigned long long)need, len);
  hd->off_table = AC_HEADER_BYTES;
  hd->off_chunks = hd->off_table + (size_t)hd->nsym * 3;
  hd->off_payload = hd->off_chunks + (size_t)hd->nchunks * 4;
  hd->off_esc = hd->off_payload + hd->stored_bytes;
  hd->off_outl = hd->off_esc + (size_t)hd->nesc * 12;
  return LT_OK;
}

lt_status ac_parse_chunks(const ac_hdr *hd, const uint8_t *chunk_sec, lt_err *err) {
  /* Chunk bit counts: each within [symbols, 16·symbols], byte sizes summing to the payload. */
  uint64_t total = 0;
  for (int64_t ci = 0; ci < hd->nchunks; ci++) {
    uint64_t b = ac_get_u32(chunk_sec + 4 * ci);
    int64_t m = hd->n - ci * hd->chunk < hd->chunk ? hd->n - ci * hd->chunk : hd->chunk;
    if (b < (uint64_t)m || b > (uint64_t)m * AC_MAXLEN)
      return BAD("chunk %lld has %llu bits for %lld symbols", (long long)ci,
                 (unsigned long long)b, (long long)m);
    total += (b + 7) / 8;
  }
  if (total != hd->raw_bytes) return BAD("chunk sizes do not add up to the payload");
  return LT_OK;
}

static lt_status parse_lorenzo(const uint8_t *s, size_t len, ac_hdr *hd, lt_err *err) {
  lt_status st = ac_parse_header(s, len, hd, err);
  if (st) return st;
  if (ac_get_u32(s + AC_CRC_OFFSET) != ac_stream_checksum(s, len))
    return BAD("checksum mismatch: the stream is corrupt or truncated");
  hd->table = s + hd->off_table;
  hd->chunk_sec = s + hd->off_chunks;
  hd->payload = s + hd->off_payload;
  hd->esc = s + hd->off_esc;
  hd->outl = s + hd->off_outl;
  if ((st = ac_parse_chunks(hd, hd->chunk_sec, err))) return st;
  /* Indices strictly increasing and in range. */
  const uint8_t *lists[2] = {hd->esc, hd->outl};
  int64_t counts[2] = {hd->nesc, hd->nout};
  for (int li = 0; li < 2; li++) {
    uint64_t prev = 0;
    for (int64_t j = 0; j < counts[li]; j++) {
      uint64_t idx = ac_get_u64(lists[li] + 12 * j);
      if (idx >= (uint64_t)hd->n || (j > 0 && idx <= prev))
        return BAD("%s index %llu out of order or out of range", li ? "outlier" : "escape",
                   (unsigned long long)idx);
      prev = idx;
    }
  }
  return LT_OK;
}

/* ---- decoder --------------------------------------------------------------------------------- */

/* Prefix sums and dequantisation of whole planes [p0, p1). u is W ints of scratch. */
static void finish_planes(const ac_kernels *k, const ac_hdr *hd, float twoeb, float *x,
                          int64_t p0, int64_t p1, int32_t *u) {
  const int64_t plane = hd->h * hd->w;
  if (hd->pred == AC_PREDICTOR_NONE) {
    k->dequant((ac_i32a *)(x + p0 * plane), (p1 - p0) * plane, twoeb);
    return;
  }
  for (int64_t p = p0; p < p1; p++) {
    memset(u, 0, (size_t)hd->w * sizeof *u);
    k->unpredict_plane((ac_i32a *)(x + p * plane), u, hd->h, hd->w, twoeb);
  }
}

/* Puts escape residuals into place for escapes [*next, ...) below element end. Each must sit on
 * an escape symbol, which decodes to -R, a value no regular code produces. */
static int apply_escapes(const ac_hdr *hd, float *x, int64_t *next, int64_t end) {
  ac_i32a *d = (ac_i32a *)x;
  for (; *next < hd->nesc; (*next)++) {
    const uint8_t *e = hd->esc + 12 * *next;
    int64_t idx = (int64_t)ac_get_u64(e);
    if (idx >= end) break;
    if (d[idx] != -AC_RADIUS) return -1;
    d[idx] = (int32_t)ac_get_u32(e + 8);
  }
  return 0;
}

/* Index into the escape list of the first escape at or after element e (the list is sorted). */
static int64_t first_escape_at(const ac_hdr *hd, int64_t e) {
  int64_t lo = 0, hi = hd->nesc;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if ((int64_t)ac_get_u64(hd->esc + 12 * mid) < e) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

static int decode_groups(const ac_huff_dec *dec, const ac_hdr *hd, const uint8_t *payload,
                         const uint64_t *cstart, float *x, int64_t g) {
  ac_chunk ch[AC_GROUP];
  int nch = 0;
  for (int64_t ci = g * AC_GROUP; ci < hd->nchunks && nch < AC_GROUP; ci++, nch++) {
    int64_t s0 = ci * hd->chunk;
    ch[nch].bit0 = cstart[ci] * 8;
    ch[nch].nbits = ac_get_u32(hd->chunk_sec + 4 * ci);
    ch[nch].nsym = hd->n - s0 < hd->chunk ? hd->n - s0 : hd->chunk;
    ch[nch].out = (ac_i32a *)(x + s0);
  }
  return ac_huff_decode_group(dec, payload, hd->raw_bytes, ch, nch);
}

/* The zstd frames of the payload, decompressed in parallel into raw. Each frame's compressed and
 * content sizes are read from its header first: at most AC_ZSTD_MAX_FRAMES frames, each with a
 * declared content size of at least one byte (no skippable or size-less frames), exactly filling
 * the stored bytes and, together, the raw payload size; each must then decode to its size. */
static lt_status zstd_unpack(lt_ac_codec *c, const ac_hdr *hd, uint8_t *raw, lt_err *err) {
  uint64_t *dir = scratch_get(&c->zdir, (size_t)AC_ZSTD_MAX_FRAMES * 4 * sizeof *dir, err);
  if (!dir) return err ? err->status : LT_ERR_NOMEM;
  int64_t nf = 0;
  uint64_t at = 0, out = 0;
  while (at < hd->stored_bytes) {
    if (nf == AC_ZSTD_MAX_FRAMES) return BAD("more than %d zstd frames", AC_ZSTD_MAX_FRAMES);
    const size_t fsz = ZSTD_findFrameCompressedSize(hd->payload + at, hd->stored_bytes - at);
    if (ZSTD_isError(fsz) || fsz == 0) return BAD("zstd frame %lld is malformed", (long long)nf);
    const unsigned long long csz = ZSTD_getFrameContentSize(hd->payload + at, fsz);
    if (csz == ZSTD_CONTENTSIZE_UNKNOWN || csz == ZSTD_CONTENTSIZE_ERROR || csz == 0 ||
        csz > hd->raw_bytes - out)
      return BAD("zstd frame %lld does not declare a size within the payload", (long long)nf);
    dir[4 * nf] = at;
    dir[4 * nf + 1] = fsz;
    dir[4 * nf + 2] = out;
    dir[4 * nf + 3] = csz;
    at += fsz;
    out += csz;
    nf++;
  }
  if (out != hd->raw_bytes) return BAD("zstd frames hold %llu bytes, the payload %llu",
                                       (unsigned long long)out, (unsigned long long)hd->raw_bytes);
  const int tz = codec_threads(c, AC_PAR_MIN, nf);
  lt_status st = zstd_contexts(c, 1, tz, err);
  if (st) return st;
  int bad = 0;
#pragma omp parallel for num_threads(tz) schedule(static) reduction(| : bad)
  for (int64_t i = 0; i < nf; i++) {
    size_t got = ZSTD_decompressDCtx(c->zd[omp_get_thread_num()], raw + dir[4 * i + 2],
                                     dir[4 * i + 3], hd->payload + dir[4 * i], dir[4 * i + 1]);
    bad |= ZSTD_isError(got) || got != dir[4 * i + 3];
  }
  return bad ? BAD("zstd payload does not decode") : LT_OK;
}

static lt_status lorenzo_decode(lt_ac_codec *c, const uint8_t *src, size_t len, float *x,
                                int64_t n, lt_err *err) {
  ac_hdr hd;
  lt_status st = parse_lorenzo(src, len, &hd, err);
  if (st) return st;
  if (hd.n != n)
    return lt_errorf(err, LT_ERR_INVALID, "activation stream holds %lld elements, buffer %lld",
                     (long long)hd.n, (long long)n);
  uint16_t *syms = (uint16_t *)c->lscratch;
  uint8_t *lens = (uint8_t *)(syms + AC_NSYM);
  for (int64_t i = 0; i < hd.nsym; i++) {
    syms[i] = (uint16_t)(hd.table[3 * i] | hd.table[3 * i + 1] << 8);
    lens[i] = hd.table[3 * i + 2];
  }
  if (ac_huff_dec_build(&c->dec, syms, lens, hd.nsym))
    return BAD("Huffman table is not a valid prefix code");

  const uint8_t *payload = hd.payload;
  if (hd.zstd) {
    uint8_t *raw = scratch_get(&c->payload, hd.raw_bytes, err);
    if (!raw) return err ? err->status : LT_ERR_NOMEM;
    if ((st = zstd_unpack(c, &hd, raw, err))) return st;
    payload = raw;
  }
  uint64_t *cstart = scratch_get(&c->chunks, (size_t)(hd.nchunks + 1) * sizeof *cstart, err);
  if (!cstart) return err ? err->status : LT_ERR_NOMEM;
  cstart[0] = 0;
  for (int64_t ci = 0; ci < hd.nchunks; ci++)
    cstart[ci + 1] = cstart[ci] + (ac_get_u32(hd.chunk_sec + 4 * ci) + 7) / 8;

  ac_qp qp;
  ac_qp_init(hd.eb, &qp); /* checked by the parser */
  const int64_t plane = hd.h * hd.w;
  const int64_t ngroups = (hd.nchunks + AC_GROUP - 1) / AC_GROUP;
  const int t = codec_threads(c, hd.n, ngroups);
  int32_t *rows = scratch_get(&c->rows, (size_t)t * (size_t)hd.w * sizeof *rows, err);
  int64_t *pr = scratch_get(&c->pranges, (size_t)t * 2 * sizeof *pr, err);
  if (!rows || !pr) return err ? err->status : LT_ERR_NOMEM;
  int bad = 0;
  /* Each thread decodes a contiguous run of groups and finishes every plane inside its run as
   * soon as the plane's residuals are there, while they are still in cache; the planes that
   * straddle two runs are finished afterwards. */
#pragma omp parallel num_threads(t) reduction(| : bad)
  {
    const int tid = omp_get_thread_num();
    const int64_t g0 = ngroups * tid / t, g1 = ngroups * (tid + 1) / t;
    const int64_t e0 = g0 * AC_GROUP * hd.chunk;
    int32_t *u = rows + (size_t)tid * (size_t)hd.w;
    int64_t next_esc = first_escape_at(&hd, e0);
    const int64_t pa = (e0 + plane - 1) / plane;
    int64_t done = pa;
    for (int64_t g = g0; g < g1; g++) {
      bad |= decode_groups(&c->dec, &hd, payload, cstart, x, g);
      int64_t end = (g + 1) * AC_GROUP * hd.chunk;
      if (end > hd.n) end = hd.n;
      bad |= apply_escapes(&hd, x, &next_esc, end);
      const int64_t p1 = end / plane;
      if (p1 > done) {
        finish_planes(c->k, &hd, qp.twoeb, x, done, p1, u);
        done = p1;
      }
    }
    pr[2 * tid] = pa;
    pr[2 * tid + 1] = done;
  }
  for (int i = 0; i + 1 < t; i++)
    if (pr[2 * i + 1] < pr[2 * i + 2])
      finish_planes(c->k, &hd, qp.twoeb, x, pr[2 * i + 1], pr[2 * i + 2], rows);
  if (bad) return BAD("Huffman payload does not decode to its chunk sizes");
  for (int64_t j = 0; j < hd.nout; j++) {
    const uint8_t *e = hd.outl + 12 * j;
    uint32_t bits = ac_get_u32(e + 8);
    memcpy(&x[ac_get_u64(e)], &bits, 4);
  }
  return LT_OK;
}

/* ---- entry points ---------------------------------------------------------------------------- */

const char *lt_ac_kind_name(lt_ac_kind k) {
  switch (k) {
  case LT_AC_KIND_LORENZO: return "lorenzo";
  case LT_AC_KIND_ZFP: return "zfp";
  case LT_AC_KIND_ZSTD: return "zstd";
  }
  return "unknown";
}

int lt_ac_kind_available(lt_ac_kind k) {
  if (k == LT_AC_KIND_ZFP) return LATHE_HAVE_ZFP;
  return k == LT_AC_KIND_LORENZO || k == LT_AC_KIND_ZSTD;
}

lt_status lt_ac_encode(lt_ac_codec *c, lt_ac_kind kind, const float *x, int ndim,
                       const int64_t *shape, double eb, lt_ac_buf *out, lt_err *err) {
  if (!c || !x || !shape || !out)
    return lt_errorf(err, LT_ERR_INVALID, "lt_ac_encode: codec, data, shape and out are required");
  out->len = 0;
  switch (kind) {
  case LT_AC_KIND_LORENZO: return lorenzo_encode(c, x, ndim, shape, eb, NULL, out, err);
  case LT_AC_KIND_ZSTD:
    return ac_zstd_encode(x, ndim, shape, c->opts.zstd_level > 0 ? c->opts.zstd_level : 3, out,
                          err);
  case LT_AC_KIND_ZFP:
    if (!lt_ac_kind_available(kind))
      return lt_errorf(err, LT_ERR_UNSUPPORTED,
                       "this build has no libzfp; install libzfp-dev and reconfigure");
    return ac_zfp_encode(x, ndim, shape, eb, out, err);
  }
  return lt_errorf(err, LT_ERR_INVALID, "unknown codec kind %d", (int)kind);
}

lt_status lt_ac_encode_affine(lt_ac_codec *c, const float *x, int ndim, const int64_t *shape,
                              double eb, const float *off, const float *scale, lt_ac_buf *out,
                              lt_err *err) {
  if (!c || !x || !shape || !out || !off || !scale)
    return lt_errorf(err, LT_ERR_INVALID,
                     "lt_ac_encode_affine: codec, data, shape, offsets, scales and out are required");
  out->len = 0;
  if (ndim < 3 || ndim > LT_MAX_DIMS)
    return lt_errorf(err, LT_ERR_INVALID,
                     "lt_ac_encode_affine: needs (batch, channels, ..., w), ndim 3..%d, got %d",
                     LT_MAX_DIMS, ndim);
  int64_t n;
  lt_status st = ac_check_shape(ndim, shape, &n, err);
  if (st) return st;
  /* Each plane (the last two dims) must lie inside one channel, which (batch, channels, w) does
   * not: it is coded as (batch, channels, 1, w). */
  const int64_t as4[4] = {shape[0], shape[1], 1, ndim == 3 ? shape[2] : 1};
  if (ndim == 3) {
    ndim = 4;
    shape = as4;
  }
  ac_affine af = {.off = off, .scale = scale, .nchan = shape[1], .hw = n / shape[0] / shape[1]};
  return lorenzo_encode(c, x, ndim, shape, eb, &af, out, err);
}

lt_status lt_ac_decode(lt_ac_codec *c, const uint8_t *src, size_t len, float *x, int64_t n,
                       lt_err *err) {
  if (!c || (!src && len) || (!x && n))
    return lt_errorf(err, LT_ERR_INVALID, "lt_ac_decode: codec, stream and output are required");
  if (len >= 4 && !memcmp(src, AC_MAGIC, 4)) return lorenzo_decode(c, src, len, x, n, err);
  if (len >= 4 && !memcmp(src, "LTZS", 4)) return ac_zstd_decode(src, len, x, n, NULL, err);
  if (len >= 4 && !memcmp(src, "LTZF", 4)) {
    if (!lt_ac_kind_available(LT_AC_KIND_ZFP))
      return lt_errorf(err, LT_ERR_UNSUPPORTED, "ZFP stream, but this build has no libzfp");
    return ac_zfp_decode(src, len, x, n, NULL, err);
  }
  return BAD("unknown magic: not a stream of any Lathe codec");
}

lt_status lt_ac_stream_info(const uint8_t *src, size_t len, lt_ac_info *info, lt_err *err) {
  memset(info, 0, sizeof *info);
  info->stream_bytes = len;
  if (len >= 4 && !memcmp(src, "LTZS", 4)) return ac_zstd_decode(src, len, NULL, 0, info, err);
  if (len >= 4 && !memcmp(src, "LTZF", 4)) {
    if (!lt_ac_kind_available(LT_AC_KIND_ZFP))
      return lt_errorf(err, LT_ERR_UNSUPPORTED, "ZFP stream, but this build has no libzfp");
    return ac_zfp_decode(src, len, NULL, 0, info, err);
  }
  ac_hdr hd;
  lt_status st = parse_lorenzo(src, len, &hd, err);
  if (st) return st;
  info->kind = LT_AC_KIND_LORENZO;
  info->ndim = hd.ndim;
  memcpy(info->shape, hd.shape, sizeof hd.shape);
  info->n = hd.n;
  info->eb = hd.eb;
  info->predictor = hd.pred;
  info->zstd = hd.zstd;
  info->n_outliers = hd.nout;
  info->n_escapes = hd.nesc;
  info->n_symbols = hd.nsym;
  info->payload_bytes = (int64_t)hd.stored_bytes;
  return LT_OK;
}
