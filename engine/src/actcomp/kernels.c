/* The element-wise stages of the activation codec — prequantisation, 2-D Lorenzo prediction on
 * the integers, and its inverse (prefix sums and dequantisation) — in three instruction sets
 * picked at run time. Every version computes exactly the same integers and floats, so a stream
 * does not depend on the machine that wrote it; the scalar one is the reference.
 *
 * The prediction kernel takes the four neighbours as separate rows so that one kernel serves
 * both predictors: 2-D Lorenzo (left, up, up-left) and none (all four rows zero).
 *
 * Floating-point contraction is off in this file: the encoder's bound check must use the very
 * product (float)q * twoeb that the decoder computes, not a fused multiply-subtract. */
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "actcomp/ac_internal.h"

#include <immintrin.h>
#include <math.h>

int ac_qp_init(double eb, ac_qp *p) {
  if (!(eb > 0) || !isfinite(eb) || eb > 1e30) return -1;
  float ebf = (float)eb;
  if ((double)ebf > eb) ebf = nextafterf(ebf, 0.0f);
  float two = (float)(2.0 * eb);
  float inv = (float)(1.0 / (2.0 * eb));
  /* A step that is denormal or whose inverse overflows would make every value an outlier or
   * the arithmetic inexact in ways the check cannot see; refuse it. */
  if (!(ebf >= 1e-30f) || !isfinite(two) || !isfinite(inv) || !(inv > 0)) return -1;
  p->inv2eb = inv;
  p->twoeb = two;
  p->eb = ebf;
  return 0;
}

/* ---- scalar reference ------------------------------------------------------------------------ */

static inline int32_t quant_one(float x, const ac_qp *p, int *outlier) {
  float t = x * p->inv2eb;
  if (!(fabsf(t) < AC_QLIMIT)) { /* NaN, ±Inf, overflow */
    *outlier = 1;
    return 0;
  }
  int32_t q = (int32_t)rintf(t);
  float xr = (float)q * p->twoeb;
  if (!(fabsf(x - xr) <= p->eb)) {
    *outlier = 1;
    return 0;
  }
  *outlier = 0;
  return q;
}

static void quant_scalar(const float *x, int64_t n, const ac_qp *p, const float *aff, int32_t *q,
                         ac_list *outl, int64_t base) {
  for (int64_t i = 0; i < n; i++) {
    int o;
    const float z = aff ? (x[i] - aff[0]) * aff[1] : x[i];
    q[i] = quant_one(z, p, &o);
    if (o) {
      uint32_t bits;
      memcpy(&bits, &z, 4);
      ac_list_push(outl, base + i, bits);
    }
  }
}

static inline uint16_t code_one(int32_t d, ac_list *esc, int64_t idx) {
  if (d > -AC_RADIUS && d < AC_RADIUS) return (uint16_t)(d + AC_RADIUS);
  ac_list_push(esc, idx, (uint32_t)d);
  return 0;
}

static void predict_scalar(const int32_t *c, const int32_t *cl, const int32_t *u,
                           const int32_t *ul, int64_t w, uint16_t *codes, ac_list *esc,
                           int64_t base) {
  for (int64_t j = 0; j < w; j++) {
    int32_t d = (c[j] - cl[j]) - (u[j] - ul[j]);
    codes[j] = code_one(d, esc, base + j);
  }
}

static void unpredict_scalar(ac_i32a *row, int32_t *u, int64_t w, float twoeb) {
  /* Unsigned arithmetic: a hostile stream may carry any residuals, and wrap-around is what the
   * vector versions do too. */
  uint32_t acc = 0;
  for (int64_t j = 0; j < w; j++) {
    acc += (uint32_t)row[j];
    uint32_t q = acc + (uint32_t)u[j];
    u[j] = (int32_t)q;
    float f = (float)(int32_t)q * twoeb;
    memcpy((void *)&row[j], &f, 4);
  }
}

static void dequant_scalar(ac_i32a *row, int64_t n, float twoeb) {
  for (int64_t j = 0; j < n; j++) {
    float f = (float)row[j] * twoeb;
    memcpy((void *)&row[j], &f, 4);
  }
}

/* ---- AVX2 ------------------------------------------------------------------------------------ */

__attribute__((target("avx2"))) static void quant_avx2(const float *x, int64_t n, const ac_qp *p,
                                                       const float *aff, int32_t *q, ac_list *outl,
                                                       int64_t base) {
  const __m256 vinv = _mm256_set1_ps(p->inv2eb), v2eb = _mm256_set1_ps(p->twoeb);
  const __m256 veb = _mm256_set1_ps(p->eb), vlim = _mm256_set1_ps(AC_QLIMIT);
  const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256 voff = _mm256_set1_ps(aff ? aff[0] : 0.0f);
  const __m256 vsc = _mm256_set1_ps(aff ? aff[1] : 1.0f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 v = _mm256_loadu_ps(x + i);
    if (aff) v = _mm256_mul_ps(_mm256_sub_ps(v, voff), vsc);
    __m256 t = _mm256_mul_ps(v, vinv);
    __m256 inr = _mm256_cmp_ps(_mm256_and_ps(t, absm), vlim, _CMP_LT_OQ);
    __m256i qi = _mm256_and_si256(_mm256_cvtps_epi32(t), _mm256_castps_si256(inr));
    __m256 xr = _mm256_mul_ps(_mm256_cvtepi32_ps(qi), v2eb);
    __m256 ok = _mm256_and_ps(
        inr, _mm256_cmp_ps(_mm256_and_ps(_mm256_sub_ps(v, xr), absm), veb, _CMP_LE_OQ));
    qi = _mm256_and_si256(qi, _mm256_castps_si256(ok));
    _mm256_storeu_si256((__m256i *)(q + i), qi);
    int m = _mm256_movemask_ps(ok);
    if (m != 0xff) {
      uint32_t zb[8];
      _mm256_storeu_ps((float *)zb, v);
      for (int k = 0; k < 8; k++)
        if (!(m >> k & 1)) ac_list_push(outl, base + i + k, zb[k]);
    }
  }
  quant_scalar(x + i, n - i, p, aff, q + i, outl, base + i);
}

__attribute__((target("avx2"))) static void predict_avx2(const int32_t *c, const int32_t *cl,
                                                         const int32_t *u, const int32_t *ul,
                                                         int64_t w, uint16_t *codes, ac_list *esc,
                                                         int64_t base) {
  const __m256i r = _mm256_set1_epi32(AC_RADIUS), lo = _mm256_set1_epi32(-AC_RADIUS);
  int64_t j = 0;
  for (; j + 8 <= w; j += 8) {
    __m256i cc = _mm256_loadu_si256((const __m256i *)(c + j));
    __m256i cw = _mm256_loadu_si256((const __m256i *)(cl + j));
    __m256i uu = _mm256_loadu_si256((const __m256i *)(u + j));
    __m256i uw = _mm256_loadu_si256((const __m256i *)(ul + j));
    __m256i d = _mm256_sub_epi32(_mm256_sub_epi32(cc, cw), _mm256_sub_epi32(uu, uw));
    __m256i inr = _mm256_and_si256(_mm256_cmpgt_epi32(d, lo), _mm256_cmpgt_epi32(r, d));
    __m256i code = _mm256_and_si256(_mm256_add_epi32(d, r), inr);
    /* Pack 8 int32 codes (each in [0, 65535]) to uint16: packus saturates, which is exact here. */
    __m256i packed = _mm256_packus_epi32(code, code);
    packed = _mm256_permute4x64_epi64(packed, 0x08);
    _mm_storeu_si128((__m128i *)(codes + j), _mm256_castsi256_si128(packed));
    int m = _mm256_movemask_ps(_mm256_castsi256_ps(inr));
    if (m != 0xff) {
      int32_t dv[8];
      _mm256_storeu_si256((__m256i *)dv, d);
      for (int k = 0; k < 8; k++)
        if (!(m >> k & 1)) ac_list_push(esc, base + j + k, (uint32_t)dv[k]);
    }
  }
  predict_scalar(c + j, cl + j, u + j, ul + j, w - j, codes + j, esc, base + j);
}

__attribute__((target("avx2"))) static void unpredict_avx2(ac_i32a *row, int32_t *u, int64_t w,
                                                           float twoeb) {
  const __m256 v2eb = _mm256_set1_ps(twoeb);
  const __m256i last = _mm256_set1_epi32(7);
  __m256i carry = _mm256_setzero_si256();
  int64_t j = 0;
  for (; j + 8 <= w; j += 8) {
    __m256i d = _mm256_loadu_si256((const __m256i *)(row + j));
    d = _mm256_add_epi32(d, _mm256_slli_si256(d, 4));
    d = _mm256_add_epi32(d, _mm256_slli_si256(d, 8));
    /* Carry the low 128-bit lane's total into the high lane. */
    __m256i lo = _mm256_permute2x128_si256(d, d, 0x08);
    d = _mm256_add_epi32(d, _mm256_shuffle_epi32(lo, 0xff));
    d = _mm256_add_epi32(d, carry);
    carry = _mm256_permutevar8x32_epi32(d, last);
    __m256i qv = _mm256_add_epi32(d, _mm256_loadu_si256((const __m256i *)(u + j)));
    _mm256_storeu_si256((__m256i *)(u + j), qv);
    _mm256_storeu_ps((float *)(row + j), _mm256_mul_ps(_mm256_cvtepi32_ps(qv), v2eb));
  }
  if (j < w) {
    /* The scalar tail continues the running sum: fold the carry into its first residual. */
    int32_t c = _mm256_extract_epi32(carry, 7);
    row[j] = (int32_t)((uint32_t)row[j] + (uint32_t)c);
    unpredict_scalar(row + j, u + j, w - j, twoeb);
  }
}

__attribute__((target("avx2"))) static void dequant_avx2(ac_i32a *row, int64_t n, float twoeb) {
  const __m256 v2eb = _mm256_set1_ps(twoeb);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    __m256i q = _mm256_loadu_si256((const __m256i *)(row + j));
    _mm256_storeu_ps((float *)(row + j), _mm256_mul_ps(_mm256_cvtepi32_ps(q), v2eb));
  }
  dequant_scalar(row + j, n - j, twoeb);
}

/* ---- AVX-512 --------------------------------------------------------------------------------- */

#define AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))
#define AVX512_INLINE AVX512_TARGET static inline __attribute__((always_inline))

/* Each AVX-512 kernel handles 16 lanes in a body that is inlined twice: with full = 1 for the
 * main loop (plain loads and stores) and with full = 0 and a lane mask for the tail. Masked
 * stores are slow on some cores, so the main loop must not use them. */
static inline __mmask16 tail_mask(int64_t left) {
  return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
}

AVX512_INLINE void quant16(const float *x, const ac_qp *p, const float *aff, int32_t *q,
                           ac_list *outl, int64_t base, __mmask16 live, int full) {
  const __m512 vinv = _mm512_set1_ps(p->inv2eb), v2eb = _mm512_set1_ps(p->twoeb);
  const __m512 veb = _mm512_set1_ps(p->eb), vlim = _mm512_set1_ps(AC_QLIMIT);
  __m512 v = full ? _mm512_loadu_ps(x) : _mm512_maskz_loadu_ps(live, x);
  if (aff) v = _mm512_mul_ps(_mm512_sub_ps(v, _mm512_set1_ps(aff[0])), _mm512_set1_ps(aff[1]));
  __m512 t = _mm512_mul_ps(v, vinv);
  __mmask16 inr = _mm512_mask_cmp_ps_mask(live, _mm512_abs_ps(t), vlim, _CMP_LT_OQ);
  __m512i qi = _mm512_maskz_cvtps_epi32(inr, t);
  __m512 xr = _mm512_mul_ps(_mm512_cvtepi32_ps(qi), v2eb);
  __mmask16 ok =
      _mm512_mask_cmp_ps_mask(inr, _mm512_abs_ps(_mm512_sub_ps(v, xr)), veb, _CMP_LE_OQ);
  qi = _mm512_maskz_mov_epi32(ok, qi);
  if (full) _mm512_storeu_si512(q, qi);
  else _mm512_mask_storeu_epi32(q, live, qi);
  unsigned bad = (unsigned)live & ~(unsigned)ok;
  if (bad) {
    uint32_t zb[16];
    _mm512_storeu_ps((float *)zb, v);
    while (bad) {
      int k = __builtin_ctz(bad);
      bad &= bad - 1;
      ac_list_push(outl, base + k, zb[k]);
    }
  }
}

AVX512_TARGET static void quant_avx512(const float *x, int64_t n, const ac_qp *p,
                                       const float *aff, int32_t *q, ac_list *outl, int64_t base) {
  int64_t i = 0;
  if (aff) {
    for (; i + 16 <= n; i += 16) quant16(x + i, p, aff, q + i, outl, base + i, 0xffff, 1);
    if (i < n) quant16(x + i, p, aff, q + i, outl, base + i, tail_mask(n - i), 0);
  } else {
    for (; i + 16 <= n; i += 16) quant16(x + i, p, NULL, q + i, outl, base + i, 0xffff, 1);
    if (i < n) quant16(x + i, p, NULL, q + i, outl, base + i, tail_mask(n - i), 0);
  }
}

AVX512_INLINE void predict16(const int32_t *c, const int32_t *cl, const int32_t *u,
                             const int32_t *ul, uint16_t *codes, ac_list *esc, int64_t base,
                             __mmask16 live, int full) {
  const __m512i r = _mm512_set1_epi32(AC_RADIUS), lo = _mm512_set1_epi32(-AC_RADIUS);
  __m512i cc, cw, uu, uw;
  if (full) {
    cc = _mm512_loadu_si512(c);
    cw = _mm512_loadu_si512(cl);
    uu = _mm512_loadu_si512(u);
    uw = _mm512_loadu_si512(ul);
  } else {
    cc = _mm512_maskz_loadu_epi32(live, c);
    cw = _mm512_maskz_loadu_epi32(live, cl);
    uu = _mm512_maskz_loadu_epi32(live, u);
    uw = _mm512_maskz_loadu_epi32(live, ul);
  }
  __m512i d = _mm512_sub_epi32(_mm512_sub_epi32(cc, cw), _mm512_sub_epi32(uu, uw));
  __mmask16 inr = _mm512_mask_cmpgt_epi32_mask(live, d, lo) & _mm512_cmpgt_epi32_mask(r, d);
  __m256i code = _mm512_cvtepi32_epi16(_mm512_maskz_add_epi32(inr, d, r));
  if (full) _mm256_storeu_si256((__m256i *)codes, code);
  else _mm256_mask_storeu_epi16(codes, live, code);
  unsigned bad = (unsigned)live & ~(unsigned)inr;
  if (bad) {
    int32_t dv[16];
    _mm512_storeu_si512(dv, d);
    while (bad) {
      int k = __builtin_ctz(bad);
      bad &= bad - 1;
      ac_list_push(esc, base + k, (uint32_t)dv[k]);
    }
  }
}

AVX512_TARGET static void predict_avx512(const int32_t *c, const int32_t *cl, const int32_t *u,
                                         const int32_t *ul, int64_t w, uint16_t *codes,
                                         ac_list *esc, int64_t base) {
  int64_t j = 0;
  for (; j + 16 <= w; j += 16)
    predict16(c + j, cl + j, u + j, ul + j, codes + j, esc, base + j, 0xffff, 1);
  if (j < w)
    predict16(c + j, cl + j, u + j, ul + j, codes + j, esc, base + j, tail_mask(w - j), 0);
}

AVX512_INLINE __m512i unpredict16(ac_i32a *row, int32_t *u, float twoeb, __m512i carry,
                                  __mmask16 live, int full) {
  const __m512i zero = _mm512_setzero_si512(), last = _mm512_set1_epi32(15);
  __m512i d = full ? _mm512_loadu_si512((const void *)row)
                   : _mm512_maskz_loadu_epi32(live, (const void *)row);
  /* Inclusive scan in log steps: alignr(d, 0, 16-k) shifts d up by k lanes. */
  d = _mm512_add_epi32(d, _mm512_alignr_epi32(d, zero, 15));
  d = _mm512_add_epi32(d, _mm512_alignr_epi32(d, zero, 14));
  d = _mm512_add_epi32(d, _mm512_alignr_epi32(d, zero, 12));
  d = _mm512_add_epi32(d, _mm512_alignr_epi32(d, zero, 8));
  d = _mm512_add_epi32(d, carry);
  __m512i uu = full ? _mm512_loadu_si512(u) : _mm512_maskz_loadu_epi32(live, u);
  __m512i qv = _mm512_add_epi32(d, uu);
  __m512 f = _mm512_mul_ps(_mm512_cvtepi32_ps(qv), _mm512_set1_ps(twoeb));
  if (full) {
    _mm512_storeu_si512(u, qv);
    _mm512_storeu_ps((void *)row, f);
  } else {
    _mm512_mask_storeu_epi32(u, live, qv);
    _mm512_mask_storeu_ps((void *)row, live, f);
  }
  return _mm512_permutexvar_epi32(last, d);
}

AVX512_TARGET static void unpredict_avx512(ac_i32a *row, int32_t *u, int64_t w, float twoeb) {
  __m512i carry = _mm512_setzero_si512();
  int64_t j = 0;
  for (; j + 16 <= w; j += 16) carry = unpredict16(row + j, u + j, twoeb, carry, 0xffff, 1);
  if (j < w) unpredict16(row + j, u + j, twoeb, carry, tail_mask(w - j), 0);
}

AVX512_TARGET static void dequant_avx512(ac_i32a *row, int64_t n, float twoeb) {
  const __m512 v2eb = _mm512_set1_ps(twoeb);
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    __m512i q = _mm512_loadu_si512((const void *)(row + j));
    _mm512_storeu_ps((void *)(row + j), _mm512_mul_ps(_mm512_cvtepi32_ps(q), v2eb));
  }
  if (j < n) {
    __mmask16 live = tail_mask(n - j);
    __m512i q = _mm512_maskz_loadu_epi32(live, (const void *)(row + j));
    _mm512_mask_storeu_ps((void *)(row + j), live, _mm512_mul_ps(_mm512_cvtepi32_ps(q), v2eb));
  }
}

/* A whole H×W plane: rows in one call (ResNet rows are 8 to 32 elements), u zeroed by the
 * caller. w = 8 packs two rows in one vector: a segmented scan along each half, then the upper
 * row adds the lower's q. */
AVX512_TARGET static void unpredict_plane_avx512(ac_i32a *x, int32_t *u, int64_t h, int64_t w,
                                                 float twoeb) {
  if (w == 8 && h % 2 == 0) {
    const __m512i zero = _mm512_setzero_si512();
    const __m512 v2eb = _mm512_set1_ps(twoeb);
    /* lanes whose segment (of 8) has a lane k below them */
    const __mmask16 m1 = 0xfefe, m2 = 0xfcfc, m4 = 0xf0f0;
    __m512i prev = zero; /* q of the row above, in every lane of both halves */
    for (int64_t r = 0; r < h; r += 2) {
      ac_i32a *row = x + r * 8;
      __m512i d = _mm512_loadu_si512((const void *)row);
      d = _mm512_mask_add_epi32(d, m1, d, _mm512_alignr_epi32(d, zero, 15));
      d = _mm512_mask_add_epi32(d, m2, d, _mm512_alignr_epi32(d, zero, 14));
      d = _mm512_mask_add_epi32(d, m4, d, _mm512_alignr_epi32(d, zero, 12));
      /* the upper row adds the lower row's prefix sums lane by lane (its column's sum) */
      __m512i lower = _mm512_permutexvar_epi32(
          _mm512_set_epi32(7, 6, 5, 4, 3, 2, 1, 0, 7, 6, 5, 4, 3, 2, 1, 0), d);
      d = _mm512_mask_add_epi32(d, 0xff00, d, lower);
      __m512i q = _mm512_add_epi32(d, prev);
      _mm512_storeu_ps((void *)row, _mm512_mul_ps(_mm512_cvtepi32_ps(q), v2eb));
      /* next rows' "up": the upper row's q, in both halves */
      prev = _mm512_permutexvar_epi32(
          _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 15, 14, 13, 12, 11, 10, 9, 8), q);
    }
    return;
  }
  for (int64_t r = 0; r < h; r++) {
    ac_i32a *row = x + r * w;
    __m512i carry = _mm512_setzero_si512();
    int64_t j = 0;
    for (; j + 16 <= w; j += 16) carry = unpredict16(row + j, u + j, twoeb, carry, 0xffff, 1);
    if (j < w) unpredict16(row + j, u + j, twoeb, carry, tail_mask(w - j), 0);
  }
}

static void unpredict_plane_scalar(ac_i32a *x, int32_t *u, int64_t h, int64_t w, float twoeb) {
  for (int64_t r = 0; r < h; r++) unpredict_scalar(x + r * w, u, w, twoeb);
}

__attribute__((target("avx2"))) static void unpredict_plane_avx2(ac_i32a *x, int32_t *u,
                                                                 int64_t h, int64_t w,
                                                                 float twoeb) {
  for (int64_t r = 0; r < h; r++) unpredict_avx2(x + r * w, u, w, twoeb);
}

/* ---- dispatch -------------------------------------------------------------------------------- */

static const ac_kernels k_scalar = {LT_AC_SIMD_SCALAR, quant_scalar, predict_scalar,
                                    unpredict_scalar, dequant_scalar, unpredict_plane_scalar};
static const ac_kernels k_avx2 = {LT_AC_SIMD_AVX2, quant_avx2, predict_avx2, unpredict_avx2,
                                  dequant_avx2, unpredict_plane_avx2};
static const ac_kernels k_avx512 = {LT_AC_SIMD_AVX512, quant_avx512, predict_avx512,
                                    unpredict_avx512, dequant_avx512, unpredict_plane_avx512};

static int cpu_has_avx512(void) {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}

static int cpu_has_avx2(void) {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2");
}

lt_ac_simd lt_ac_simd_resolve(lt_ac_simd s) {
  if (s == LT_AC_SIMD_SCALAR) return s;
  if ((s == LT_AC_SIMD_AUTO || s == LT_AC_SIMD_AVX512) && cpu_has_avx512())
    return LT_AC_SIMD_AVX512;
  if (cpu_has_avx2()) return LT_AC_SIMD_AVX2;
  return LT_AC_SIMD_SCALAR;
}

const char *lt_ac_simd_name(lt_ac_simd s) {
  switch (s) {
  case LT_AC_SIMD_AUTO: return "auto";
  case LT_AC_SIMD_SCALAR: return "scalar";
  case LT_AC_SIMD_AVX2: return "avx2";
  case LT_AC_SIMD_AVX512: return "avx512";
  }
  return "unknown";
}

const ac_kernels *ac_kernels_get(lt_ac_simd s) {
  switch (lt_ac_simd_resolve(s)) {
  case LT_AC_SIMD_AVX512: return &k_avx512;
  case LT_AC_SIMD_AVX2: return &k_avx2;
  default: return &k_scalar;
  }
}
