/* Broadcasting arithmetic and data movement on the CPU: binary ops with NumPy broadcasting,
 * concat/split, strided slice, constant pad and transpose. All of them walk the output as rows of
 * its last dimension: a row's multi-index is decoded once (ndim <= LT_KMAX_DIMS), then the inner
 * loop runs with one stride per operand. Rows are independent, so the walks run in parallel.
 */
#include "backend/cpu/kernels.h"

#include <assert.h>
#include <omp.h>
#include <string.h>

/* Decodes row r of a tensor of shape (ndim) into idx[0..ndim-1) (the last dim is the row). */
static void row_index(int ndim, const int64_t *shape, int64_t r, int64_t *idx) {
  for (int d = ndim - 2; d >= 0; d--) {
    idx[d] = r % shape[d];
    r /= shape[d];
  }
}

static int64_t prod(int n, const int64_t *shape) {
  int64_t p = 1;
  for (int d = 0; d < n; d++)
    p *= shape[d];
  return p;
}

/* Row-major strides of shape, in elements. */
static void strides_of(int ndim, const int64_t *shape, int64_t *st) {
  int64_t s = 1;
  for (int d = ndim - 1; d >= 0; d--) {
    st[d] = s;
    s *= shape[d];
  }
}

/* Copies one element of `elem` bytes; the common sizes avoid a memcpy call per element. */
static inline void copy_elem(void *dst, const void *src, size_t elem) {
  switch (elem) {
  case 4: *(uint32_t *)dst = *(const uint32_t *)src; break;
  case 1: *(uint8_t *)dst = *(const uint8_t *)src; break;
  case 2: *(uint16_t *)dst = *(const uint16_t *)src; break;
  case 8: *(uint64_t *)dst = *(const uint64_t *)src; break;
  default: memcpy(dst, src, elem);
  }
}

/* ---- binary ops with broadcasting ---------------------------------------------------------- */

/* Strides of an operand in the output's index space: 0 along broadcast dims. */
static void bcast_strides(int ndim, const int64_t *shape, const int64_t *yshape, int64_t *st) {
  strides_of(ndim, shape, st);
  for (int d = 0; d < ndim; d++)
    if (shape[d] == 1 && yshape[d] != 1) st[d] = 0;
}

static inline float bin_apply(lt_binary_op op, float a, float b) {
  switch (op) {
  case LT_BIN_ADD: return a + b;
  case LT_BIN_SUB: return a - b;
  case LT_BIN_MUL: return a * b;
  default: return a / b;
  }
}

/* 1 when a, b and y all have the same shape: the flat loops then need no index arithmetic
 * (residual additions, the common case). */
static int same_shapes(int ndim, const int64_t *as, const int64_t *bs, const int64_t *ys) {
  for (int d = 0; d < ndim; d++)
    if (as[d] != ys[d] || bs[d] != ys[d]) return 0;
  return 1;
}

void lt_cpu_binary_fwd(lt_binary_op op, int ndim, const int64_t *ashape, const float *a,
                       const int64_t *bshape, const float *b, const int64_t *yshape, float *y) {
  int64_t as[LT_KMAX_DIMS], bs[LT_KMAX_DIMS];
  assert(ndim <= LT_KMAX_DIMS);
  if (ndim <= 0) {
    y[0] = bin_apply(op, a[0], b[0]);
    return;
  }
  if (same_shapes(ndim, ashape, bshape, yshape)) {
    /* y may be a or b (an unfused forward runs a residual Add in place): omp simd, not restrict */
    const int64_t total = prod(ndim, yshape);
    const float *ap = a, *bp = b;
    float *yp = y;
    switch (op) {
    case LT_BIN_ADD:
#pragma omp parallel for simd schedule(static)
      for (int64_t i = 0; i < total; i++)
        yp[i] = ap[i] + bp[i];
      break;
    case LT_BIN_SUB:
#pragma omp parallel for simd schedule(static)
      for (int64_t i = 0; i < total; i++)
        yp[i] = ap[i] - bp[i];
      break;
    case LT_BIN_MUL:
#pragma omp parallel for simd schedule(static)
      for (int64_t i = 0; i < total; i++)
        yp[i] = ap[i] * bp[i];
      break;
    case LT_BIN_DIV:
#pragma omp parallel for simd schedule(static)
      for (int64_t i = 0; i < total; i++)
        yp[i] = ap[i] / bp[i];
      break;
    }
    return;
  }
  bcast_strides(ndim, ashape, yshape, as);
  bcast_strides(ndim, bshape, yshape, bs);
  const int64_t inner = yshape[ndim - 1], rows = prod(ndim - 1, yshape);
  const int64_t ai = as[ndim - 1], bi = bs[ndim - 1];
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; r++) {
    int64_t idx[LT_KMAX_DIMS], ao = 0, bo = 0;
    row_index(ndim, yshape, r, idx);
    for (int d = 0; d < ndim - 1; d++) {
      ao += idx[d] * as[d];
      bo += idx[d] * bs[d];
    }
    const float *restrict ap = a + ao, *restrict bp = b + bo;
    float *restrict yp = y + r * inner;
    switch (op) { /* one loop per op so each vectorises */
    case LT_BIN_ADD:
      for (int64_t j = 0; j < inner; j++)
        yp[j] = ap[j * ai] + bp[j * bi];
      break;
    case LT_BIN_SUB:
      for (int64_t j = 0; j < inner; j++)
        yp[j] = ap[j * ai] - bp[j * bi];
      break;
    case LT_BIN_MUL:
      for (int64_t j = 0; j < inner; j++)
        yp[j] = ap[j * ai] * bp[j * bi];
      break;
    case LT_BIN_DIV:
      for (int64_t j = 0; j < inner; j++)
        yp[j] = ap[j * ai] / bp[j * bi];
      break;
    }
  }
}

/* d(out)/d(a) and d(out)/d(b) at one element, times dy. */
static inline float grad_a(lt_binary_op op, float dy, float a, float b) {
  switch (op) {
  case LT_BIN_ADD:
  case LT_BIN_SUB: return dy;
  case LT_BIN_MUL: return dy * b;
  default: return dy / b;
  }
}
static inline float grad_b(lt_binary_op op, float dy, float a, float b) {
  switch (op) {
  case LT_BIN_ADD: return dy;
  case LT_BIN_SUB: return -dy;
  case LT_BIN_MUL: return dy * a;
  default: return -dy * a / (b * b);
  }
}

/* The gradient of one operand (which = 0 for a, 1 for b). When the operand has the output's
 * shape every element is written once (parallel); otherwise the broadcast dims are summed by a
 * serial scatter into the zeroed (or kept) gradient. */
static void binary_grad(lt_binary_op op, int which, int ndim, const int64_t *as, const float *a,
                        const int64_t *bs, const float *b, const int64_t *yshape, const float *dy,
                        const int64_t *gshape, float *dg, int accumulate, int flat) {
  const int64_t total = prod(ndim, yshape);
  if (flat) { /* a, b and y share one shape: every offset is i */
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < total; i++) {
      const float av = a ? a[i] : 0.0f, bv = b ? b[i] : 0.0f;
      const float v = which ? grad_b(op, dy[i], av, bv) : grad_a(op, dy[i], av, bv);
      dg[i] = accumulate ? dg[i] + v : v;
    }
    return;
  }
  int same = 1;
  for (int d = 0; d < ndim; d++)
    same &= gshape[d] == yshape[d];
  if (same) { /* one element of the gradient per output element: parallel, no reduction */
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < total; i++) {
      int64_t ao = 0, bo = 0, r = i;
      for (int d = ndim - 1; d >= 0; d--) {
        const int64_t id = r % yshape[d];
        r /= yshape[d];
        ao += id * as[d];
        bo += id * bs[d];
      }
      const float av = a ? a[ao] : 0.0f, bv = b ? b[bo] : 0.0f;
      const float v = which ? grad_b(op, dy[i], av, bv) : grad_a(op, dy[i], av, bv);
      dg[i] = accumulate ? dg[i] + v : v;
    }
    return;
  }
  if (!accumulate) memset(dg, 0, sizeof(float) * (size_t)prod(ndim, gshape));
  int64_t idx[LT_KMAX_DIMS];
  memset(idx, 0, sizeof idx);
  for (int64_t i = 0; i < total; i++) {
    int64_t ao = 0, bo = 0;
    for (int d = 0; d < ndim; d++) {
      ao += idx[d] * as[d];
      bo += idx[d] * bs[d];
    }
    const float av = a ? a[ao] : 0.0f, bv = b ? b[bo] : 0.0f;
    dg[which ? bo : ao] += which ? grad_b(op, dy[i], av, bv) : grad_a(op, dy[i], av, bv);
    for (int d = ndim - 1; d >= 0; d--) { /* odometer step */
      if (++idx[d] < yshape[d]) break;
      idx[d] = 0;
    }
  }
}

void lt_cpu_binary_bwd(lt_binary_op op, int ndim, const int64_t *ashape, const float *a,
                       const int64_t *bshape, const float *b, const int64_t *yshape,
                       const float *dy, float *da, float *db, int accumulate) {
  int64_t as[LT_KMAX_DIMS], bs[LT_KMAX_DIMS];
  static const int64_t one[1] = {1};
  assert(ndim <= LT_KMAX_DIMS);
  if (ndim <= 0) {
    ndim = 1;
    ashape = bshape = yshape = one;
  }
  bcast_strides(ndim, ashape, yshape, as);
  bcast_strides(ndim, bshape, yshape, bs);
  const int flat = same_shapes(ndim, ashape, bshape, yshape);
  if (da) binary_grad(op, 0, ndim, as, a, bs, b, yshape, dy, ashape, da, accumulate, flat);
  if (db) binary_grad(op, 1, ndim, as, a, bs, b, yshape, dy, bshape, db, accumulate, flat);
}

/* ---- concat / split ------------------------------------------------------------------------ */

void lt_cpu_concat(int ninputs, const void *const *inputs, const int64_t *sizes, int64_t outer,
                   int64_t inner, size_t elem, void *y) {
  int64_t total = 0;
  for (int i = 0; i < ninputs; i++)
    total += sizes[i];
  const size_t yrow = (size_t)total * inner * elem;
#pragma omp parallel for schedule(static)
  for (int64_t o = 0; o < outer; o++) {
    char *dst = (char *)y + o * yrow;
    for (int i = 0; i < ninputs; i++) {
      const size_t seg = (size_t)sizes[i] * inner * elem;
      memcpy(dst, (const char *)inputs[i] + o * seg, seg);
      dst += seg;
    }
  }
}

void lt_cpu_split(int noutputs, void *const *outputs, const int64_t *sizes, int64_t outer,
                  int64_t inner, size_t elem, const void *y, int accumulate_f32) {
  int64_t total = 0;
  for (int i = 0; i < noutputs; i++)
    total += sizes[i];
  const size_t yrow = (size_t)total * inner * elem;
#pragma omp parallel for schedule(static)
  for (int64_t o = 0; o < outer; o++) {
    const char *src = (const char *)y + o * yrow;
    for (int i = 0; i < noutputs; i++) {
      const size_t seg = (size_t)sizes[i] * inner * elem;
      if (outputs[i]) {
        char *dst = (char *)outputs[i] + o * seg;
        if (accumulate_f32) {
          float *restrict d = (float *)dst;
          const float *restrict s = (const float *)src;
          for (size_t j = 0; j < seg / sizeof(float); j++)
            d[j] += s[j];
        } else {
          memcpy(dst, src, seg);
        }
      }
      src += seg;
    }
  }
}

/* ---- slice --------------------------------------------------------------------------------- */

/* The slice and pad walks below give each thread a contiguous range of output rows, decode the
 * first row's multi-index once and step the rest like an odometer: rows are short (16 floats
 * for ResNet's strided shortcut), so a division per dim per row would cost more than the copy. */

/* [lo, hi) of this thread's static share of n rows */
static void row_share(int64_t n, int64_t *lo, int64_t *hi) {
  const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
  const int64_t per = n / nt, extra = n % nt;
  *lo = t * per + (t < extra ? t : extra);
  *hi = *lo + per + (t < extra);
}

/* Inside a parallel region: this thread's share of x[0, n) set to zero (a barrier must follow
 * before anyone adds into x). */
static void zero_share(float *x, int64_t n) {
  int64_t lo, hi;
  row_share(n, &lo, &hi);
  memset(x + lo, 0, sizeof(float) * (size_t)(hi - lo));
}

/* idx (the row's outer dims) to the next row */
static inline void row_next(int ndim, const int64_t *shape, int64_t *idx) {
  for (int d = ndim - 2; d >= 0; d--) {
    if (++idx[d] < shape[d]) return;
    idx[d] = 0;
  }
}

/* Element offset in x of the y row at idx. */
static inline int64_t slice_row_offset(int ndim, const int64_t *xst, const int64_t *start,
                                       const int64_t *step, const int64_t *idx) {
  int64_t off = start[ndim - 1] * xst[ndim - 1];
  for (int d = 0; d < ndim - 1; d++)
    off += (start[d] + idx[d] * step[d]) * xst[d];
  return off;
}

/* ---- strided window with constant fill (slice and pad forward) -------------------------------- */

/* y[from, to) set to value (elements of elem bytes; zero bytes unless elem is 4). */
static void window_fill(char *y, int64_t from, int64_t to, float value, int zero, size_t elem) {
  if (to <= from) return;
  if (zero) {
    memset(y + from * (int64_t)elem, 0, (size_t)(to - from) * elem);
    return;
  }
  float *restrict yp = (float *)y + from;
  for (int64_t j = 0; j < to - from; j++)
    yp[j] = value;
}

/* rows of n elements each: row r of y (at y + r * ys bytes) from x + r * xs bytes at an element
 * stride of is. One branch per call, not per row: rows are short. The stride-2 loop is ResNet's
 * option-A shortcut (x[:, :, ::2, ::2]), written out so that it vectorises as shuffles; short
 * contiguous rows copy inline rather than through a memcpy call each. */
static void window_rows(char *restrict y, int64_t ys, const char *restrict x, int64_t xs,
                        int64_t rows, int64_t n, int64_t is, size_t elem) {
  const int64_t e = (int64_t)elem;
  if (is == 1 && (elem != 4 || n * e >= 256)) {
    if (xs == n * e && ys == n * e) {
      memcpy(y, x, (size_t)(rows * n * e));
      return;
    }
    for (int64_t r = 0; r < rows; r++)
      memcpy(y + r * ys, x + r * xs, (size_t)(n * e));
  } else if (elem == 4 && is == 1) {
    for (int64_t r = 0; r < rows; r++) {
      const float *restrict sp = (const float *)(x + r * xs);
      float *restrict dp = (float *)(y + r * ys);
#pragma omp simd
      for (int64_t j = 0; j < n; j++)
        dp[j] = sp[j];
    }
  } else if (elem == 4 && is == 2) {
    for (int64_t r = 0; r < rows; r++) {
      const float *restrict sp = (const float *)(x + r * xs);
      float *restrict dp = (float *)(y + r * ys);
#pragma omp simd
      for (int64_t j = 0; j < n; j++)
        dp[j] = sp[2 * j];
    }
  } else if (elem == 4) {
    for (int64_t r = 0; r < rows; r++) {
      const float *restrict sp = (const float *)(x + r * xs);
      float *restrict dp = (float *)(y + r * ys);
      for (int64_t j = 0; j < n; j++)
        dp[j] = sp[j * is];
    }
  } else {
    for (int64_t r = 0; r < rows; r++)
      for (int64_t j = 0; j < n; j++)
        copy_elem(y + r * ys + j * e, x + r * xs + j * is * e, elem);
  }
}

/* The x offset of the outer dims [0, od) of a y row at idx, and whether they all lie inside. */
static int64_t window_base(int od, const int64_t *xst, const int64_t *start, const int64_t *step,
                           const int64_t *lo, const int64_t *hi, const int64_t *idx, int *in) {
  int64_t off = 0;
  *in = 1;
  for (int d = 0; d < od; d++) {
    *in &= idx[d] >= lo[d] && idx[d] < hi[d];
    off += (start[d] + (idx[d] - lo[d]) * step[d]) * xst[d];
  }
  return off;
}

/* Each thread takes a contiguous range of y rows (the last dim) and walks it as runs of rows of
 * one plane (the last two dims): the outer dims' offset is computed once per plane, and a run of
 * rows inside the window copies in one call (window_rows). The fill between copied rows is one
 * memset per gap, a whole run of planes for padded channels. */
void lt_cpu_window_fwd(int ndim, const int64_t *xshape, const int64_t *yshape,
                       const int64_t *start, const int64_t *step, const int64_t *lo,
                       const int64_t *hi, float value, size_t elem, const void *x, void *y) {
  assert(ndim >= 1 && ndim <= LT_KMAX_DIMS); /* a slice or pad of a 0-d tensor has no axis */
  /* a leading dim of 1: every row then lies in a plane */
  enum { K = LT_KMAX_DIMS + 1 };
  const int nd = ndim + 1, od = nd - 2;
  int64_t xs[K], ys[K], st[K], sp[K], l[K], h[K], xst[K];
  xs[0] = ys[0] = sp[0] = h[0] = 1;
  st[0] = l[0] = 0;
  for (int d = 0; d < ndim; d++) {
    xs[d + 1] = xshape[d], ys[d + 1] = yshape[d], st[d + 1] = start[d], sp[d + 1] = step[d];
    l[d + 1] = lo[d], h[d + 1] = hi[d] < lo[d] ? lo[d] : hi[d];
  }
  strides_of(nd, xs, xst);
  const int64_t inner = ys[nd - 1], rows = prod(nd - 1, ys), e = (int64_t)elem;
  const int64_t c_lo = l[nd - 1], c_hi = h[nd - 1], plane = ys[od];
  const int gaps = c_lo > 0 || c_hi < inner;
  uint32_t bits;
  memcpy(&bits, &value, sizeof bits);
  const int zero = elem != 4 || bits == 0;
  char *yb = y;
#pragma omp parallel if (rows * inner * e >= (1 << 16))
  {
    int64_t r0, r1, idx[K] = {0};
    row_share(rows, &r0, &r1);
    row_index(nd, ys, r0, idx);
    int64_t fill = r0 * inner; /* the pending run of fill starts here (y element) */
    for (int64_t r = r0; r < r1;) {
      /* rows [i0, i1) of the plane at idx[0..od) */
      const int64_t i0 = idx[od], i1 = plane - i0 < r1 - r ? plane : i0 + (r1 - r);
      const int64_t row0 = r - i0; /* the plane's first row */
      int in;
      const int64_t base = window_base(od, xst, st, sp, l, h, idx, &in);
      const int64_t a = i0 > l[od] ? i0 : l[od], b = i1 < h[od] ? i1 : h[od];
      if (in && a < b && c_hi > c_lo) {
        window_fill(yb, fill, (row0 + a) * inner, value, zero, elem);
        for (int64_t i = a; i < b && gaps; i++) {
          window_fill(yb, (row0 + i) * inner, (row0 + i) * inner + c_lo, value, zero, elem);
          window_fill(yb, (row0 + i) * inner + c_hi, (row0 + i + 1) * inner, value, zero, elem);
        }
        const int64_t off = base + (st[od] + (a - l[od]) * sp[od]) * xst[od] + st[nd - 1];
        window_rows(yb + ((row0 + a) * inner + c_lo) * e, inner * e, (const char *)x + off * e,
                    sp[od] * xst[od] * e, b - a, c_hi - c_lo, sp[nd - 1], elem);
        fill = (row0 + b) * inner;
      }
      r += i1 - i0;
      idx[od] = 0;
      for (int d = od - 1; d >= 0; d--) {
        if (++idx[d] < ys[d]) break;
        idx[d] = 0;
      }
    }
    window_fill(yb, fill, r1 * inner, value, zero, elem);
  }
}

void lt_cpu_slice_fwd(int ndim, const int64_t *xshape, const int64_t *start, const int64_t *step,
                      const int64_t *yshape, size_t elem, const void *x, void *y) {
  int64_t lo[LT_KMAX_DIMS] = {0};
  lt_cpu_window_fwd(ndim, xshape, yshape, start, step, lo, yshape, 0.0f, elem, x, y);
}

void lt_cpu_slice_bwd(int ndim, const int64_t *xshape, const int64_t *start, const int64_t *step,
                      const int64_t *yshape, const float *dy, float *dx, int accumulate) {
  assert(ndim >= 1 && ndim <= LT_KMAX_DIMS); /* a slice or pad of a 0-d tensor has no axis */
  if (!dx) return;
  int64_t xst[LT_KMAX_DIMS];
  strides_of(ndim, xshape, xst);
  const int64_t inner = yshape[ndim - 1], rows = prod(ndim - 1, yshape), xn = prod(ndim, xshape);
  const int64_t is = step[ndim - 1] * xst[ndim - 1];
  /* a slice maps distinct y elements to distinct x elements, so rows scatter without races */
#pragma omp parallel
  {
    if (!accumulate) {
      zero_share(dx, xn);
#pragma omp barrier
    }
    int64_t lo, hi, idx[LT_KMAX_DIMS] = {0};
    row_share(rows, &lo, &hi);
    row_index(ndim, yshape, lo, idx);
    for (int64_t r = lo; r < hi; r++, row_next(ndim, yshape, idx)) {
      float *dst = dx + slice_row_offset(ndim, xst, start, step, idx);
      const float *restrict src = dy + r * inner;
      for (int64_t j = 0; j < inner; j++)
        dst[j * is] += src[j];
    }
  }
}

/* ---- constant pad -------------------------------------------------------------------------- */

/* The x row offset of the y row at idx, or -1 when the row lies in the padding of an outer dim. */
static inline int64_t pad_row_offset(int ndim, const int64_t *xshape, const int64_t *xst,
                                     const int64_t *pads, const int64_t *idx) {
  int64_t off = 0;
  for (int d = 0; d < ndim - 1; d++) {
    const int64_t xi = idx[d] - pads[d];
    if (xi < 0 || xi >= xshape[d]) return -1;
    off += xi * xst[d];
  }
  return off;
}

static void pad_yshape(int ndim, const int64_t *xshape, const int64_t *pads, int64_t *yshape) {
  for (int d = 0; d < ndim; d++)
    yshape[d] = xshape[d] + pads[d] + pads[ndim + d];
}

/* The part of a y row of the last dim that holds x: [j0, j1), x column j - b. */
static void pad_span(int64_t inner, int64_t b, int64_t xw, int64_t *j0, int64_t *j1) {
  *j0 = b < 0 ? 0 : (b > inner ? inner : b);
  *j1 = b + xw < *j0 ? *j0 : (b + xw > inner ? inner : b + xw);
}

void lt_cpu_pad_fwd(int ndim, const int64_t *xshape, const int64_t *pads, float value,
                    const float *x, float *y) {
  assert(ndim >= 1 && ndim <= LT_KMAX_DIMS); /* a slice or pad of a 0-d tensor has no axis */
  int64_t yshape[LT_KMAX_DIMS], start[LT_KMAX_DIMS], step[LT_KMAX_DIMS], lo[LT_KMAX_DIMS];
  int64_t hi[LT_KMAX_DIMS];
  pad_yshape(ndim, xshape, pads, yshape);
  for (int d = 0; d < ndim; d++) {
    /* y index i holds x index i - pads[d] where that lies in x */
    lo[d] = pads[d] > 0 ? pads[d] : 0;
    start[d] = lo[d] - pads[d];
    step[d] = 1;
    hi[d] = xshape[d] + pads[d] < yshape[d] ? xshape[d] + pads[d] : yshape[d];
  }
  lt_cpu_window_fwd(ndim, xshape, yshape, start, step, lo, hi, value, sizeof(float), x, y);
}

void lt_cpu_pad_bwd(int ndim, const int64_t *xshape, const int64_t *pads, const float *dy,
                    float *dx, int accumulate) {
  assert(ndim >= 1 && ndim <= LT_KMAX_DIMS); /* a slice or pad of a 0-d tensor has no axis */
  if (!dx) return;
  int64_t xst[LT_KMAX_DIMS] = {0}, yshape[LT_KMAX_DIMS] = {0};
  strides_of(ndim, xshape, xst);
  pad_yshape(ndim, xshape, pads, yshape);
  const int64_t inner = yshape[ndim - 1], rows = prod(ndim - 1, yshape), xn = prod(ndim, xshape);
  const int64_t b = pads[ndim - 1], xw = xshape[ndim - 1];
  int64_t j0, j1;
  pad_span(inner, b, xw, &j0, &j1);
  /* the pad map is injective: each y row adds into its own x row */
#pragma omp parallel
  {
    if (!accumulate) {
      zero_share(dx, xn);
#pragma omp barrier
    }
    int64_t lo, hi, idx[LT_KMAX_DIMS] = {0};
    row_share(rows, &lo, &hi);
    row_index(ndim, yshape, lo, idx);
    for (int64_t r = lo; r < hi; r++, row_next(ndim, yshape, idx)) {
      const int64_t off = pad_row_offset(ndim, xshape, xst, pads, idx);
      if (off < 0) continue;
      const float *restrict dyp = dy + r * inner;
      float *restrict dxp = dx + off - b;
      for (int64_t j = j0; j < j1; j++)
        dxp[j] += dyp[j];
    }
  }
}

/* ---- transpose ----------------------------------------------------------------------------- */

void lt_cpu_transpose(int ndim, const int64_t *xshape, const int *perm, size_t elem, const void *x,
                      void *y) {
  assert(ndim <= LT_KMAX_DIMS);
  if (ndim <= 0) { /* a 0-d tensor is its own transpose */
    memcpy(y, x, elem);
    return;
  }
  int64_t xst[LT_KMAX_DIMS] = {0}, yshape[LT_KMAX_DIMS] = {0}, pst[LT_KMAX_DIMS] = {0};
  strides_of(ndim, xshape, xst);
  for (int d = 0; d < ndim; d++) {
    yshape[d] = xshape[perm[d]];
    pst[d] = xst[perm[d]]; /* x stride of y's dim d */
  }
  const int64_t inner = yshape[ndim - 1], rows = prod(ndim - 1, yshape), is = pst[ndim - 1];
  const int64_t e = (int64_t)elem;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; r++) {
    int64_t idx[LT_KMAX_DIMS], off = 0;
    row_index(ndim, yshape, r, idx);
    for (int d = 0; d < ndim - 1; d++)
      off += idx[d] * pst[d];
    const char *src = (const char *)x + off * e;
    char *dst = (char *)y + r * inner * e;
    if (is == 1)
      memcpy(dst, src, (size_t)(inner * e));
    else
      for (int64_t j = 0; j < inner; j++)
        copy_elem(dst + j * e, src + j * is * e, elem);
  }
}
