/* Direct convolutions on the CPU, for the shapes where lowering to sgemm (or Winograd's channel
 * padding) runs far below the machine's rate: pointwise convolutions (1×1, stride 1, no padding,
 * groups 1), stride-1 convolutions with few channels, and strided ones
 * (lt_cpu_direct_active). Low-rank (Tucker-2) compressed networks are made of exactly these: 1×1 convolutions C -> r and r -> S
 * around a 3×3 core r_in -> r_out with ranks of 4..36. Per-image sgemm calls with M or K of
 * 4..36 spend their time packing, and im2col of a 4-channel core costs more than its product.
 *
 * Kernel. One micro-kernel (kernels_direct_body.h) keeps a block of ob output channels times
 * nv 16-pixel vectors in registers and walks the reduction (input channel, then tap): each
 * step loads nv vectors of input pixels and does ob broadcast multiply-adds per vector, so the
 * input is read from L1 once per block of output channels and the output written once. ob and
 * nv are chosen per geometry by a cost model (dc_plan: on AVX-512 up to 8 channels, up to 6
 * vectors, at most 24 accumulators), the output channels split evenly and the pixels with
 * little remainder: an 8×8 image's 5 vectors as one block of 5 (28 channels: 7 blocks of 4),
 * 4 channels of a 32×32 image's 68 vectors as 11 blocks of 4 × 6 and one of 4 × 2. NCHW needs
 * no reordering for it: pixels of one channel are contiguous.
 *  - Pointwise: the pixels of one image are the columns; y (s, hw) = w (s, c) · x (c, hw) + b
 *    (pw_apply also takes the weight strided, e.g. transposed for a backward data). Pixel tails
 *    (hw not a multiple of 16) are computed by a scalar loop in the same summation order.
 *  - k×k (any kernel, stride, dilation and padding): each image is copied into a zero-bordered
 *    plane (c, hp, wp) and the output is computed on the "padded-pitch" grid: output (oy, ox)
 *    is position p = oy*wp + ox, and tap (ki, kj) reads the plane at p + ki*dil_h*wp + kj*dil_w,
 *    so every tap is one contiguous run and the micro-kernel needs no bounds: the columns
 *    ox >= ow are computed and dropped when the result is copied into NCHW y. Strides > 1 split
 *    the plane into stride_h*stride_w phase planes (kx_shape) so that taps stay contiguous.
 *    At stride 1 with narrow outputs or many output channels, kw shifted planes on y's own grid
 *    instead: no dropped columns, and y written in place.
 * Only inference forwards use these kernels (kernels_conv.c says why); training and grouped
 * convolutions stay on kernels_conv.c's lowering or Winograd.
 *
 * Reproducibility. Each output element is computed by one fixed sequence of operations that
 * depends on the geometry only (not on the thread count or on which thread computes it), so the
 * results are identical at any thread count.
 *
 * Threads: the work is split into units (one image, or a run of pixels of one image when there
 * are fewer images than threads) across OpenMP threads.
 *
 * Instruction sets as in kernels_winograd.c: the body is compiled for AVX-512, for AVX2+FMA and
 * for the build's own target, and the first use picks the best the CPU has. LATHE_CONV_DIRECT (or
 * lt_cpu_direct_set_mode) selects "0"/"off" (kernels_conv.c's lowering everywhere), "generic",
 * "avx2", "avx512" (forced: every groups-1 convolution, unless a Winograd mode is forced too),
 * or automatic (unset or anything else).
 */
#include "backend/cpu/kernels.h"

#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef float dc_v16 __attribute__((vector_size(64)));
typedef int dc_v16i __attribute__((vector_size(64)));
typedef float dc_v16u __attribute__((vector_size(64), aligned(4), may_alias));
#define DC_V(p) (*(dc_v16u *)(uintptr_t)(p))

/* How one run of pixels is blocked (kernels_direct_body.h's DC_FN(plan) and DC_FN(run)):
 * blocks of nv 16-pixel vectors and one of rem; a block of v vectors splits the output channels
 * into nb[v] blocks. */
typedef struct dc_plan {
  int nv, rem, nb[8];
} dc_plan;
typedef void (*dc_plan_fn)(dc_plan *pl, int npix, int s, int steps);
typedef void (*dc_run_fn)(const dc_plan *pl, int npix, int s, int c, int nt,
                          const ptrdiff_t *toff, const float *x, ptrdiff_t xcs, const float *w,
                          ptrdiff_t wo, ptrdiff_t wk, const float *bias, float *y, ptrdiff_t ycs,
                          const float *res, int relu);
typedef struct dc_impl {
  const char *name;
  dc_plan_fn plan;
  dc_run_fn run;
} dc_impl;

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define DC_HAVE_X86 1
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma")
#define DC_FN(f) dc_##f##_avx512
#define DC_NV 6
#define DC_OB 8
#define DC_ACC 24
#include "backend/cpu/kernels_direct_body.h"
#undef DC_FN
#undef DC_NV
#undef DC_OB
#undef DC_ACC
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,no-avx512f")
#define DC_FN(f) dc_##f##_avx2
#define DC_NV 1
#define DC_OB 6
#define DC_ACC 6
#include "backend/cpu/kernels_direct_body.h"
#undef DC_FN
#undef DC_NV
#undef DC_OB
#undef DC_ACC
#pragma GCC pop_options
#endif

#define DC_FN(f) dc_##f##_generic
#define DC_NV 1
#define DC_OB 3
#define DC_ACC 3
#include "backend/cpu/kernels_direct_body.h"
#undef DC_FN
#undef DC_NV
#undef DC_OB
#undef DC_ACC

static const dc_impl impl_generic = {"generic", dc_plan_generic, dc_run_generic};
#ifdef DC_HAVE_X86
static const dc_impl impl_avx2 = {"avx2", dc_plan_avx2, dc_run_avx2};
static const dc_impl impl_avx512 = {"avx512", dc_plan_avx512, dc_run_avx512};
#endif

static int dc_mode = -1; /* LT_DIRECT_*, -1 until the first use reads the environment */

void lt_cpu_direct_set_mode(int mode) { __atomic_store_n(&dc_mode, mode, __ATOMIC_RELAXED); }

int lt_cpu_direct_mode(void) {
  int m = __atomic_load_n(&dc_mode, __ATOMIC_RELAXED);
  if (m >= 0) return m;
  const char *e = getenv("LATHE_CONV_DIRECT");
  m = LT_DIRECT_AUTO;
  if (e && (!strcmp(e, "0") || !strcmp(e, "off"))) m = LT_DIRECT_OFF;
  else if (e && !strcmp(e, "generic")) m = LT_DIRECT_GENERIC;
  else if (e && !strcmp(e, "avx2")) m = LT_DIRECT_AVX2;
  else if (e && !strcmp(e, "avx512")) m = LT_DIRECT_AVX512;
  __atomic_store_n(&dc_mode, m, __ATOMIC_RELAXED);
  return m;
}

static const dc_impl *dc_pick(void) {
  const int m = lt_cpu_direct_mode();
  if (m == LT_DIRECT_OFF) return NULL;
#ifdef DC_HAVE_X86
  const int avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
                     __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
  const int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if ((m == LT_DIRECT_AUTO || m == LT_DIRECT_AVX512) && avx512) return &impl_avx512;
  if (m != LT_DIRECT_GENERIC && avx2) return &impl_avx2;
#endif
  return &impl_generic;
}

const char *lt_cpu_direct_impl_name(void) {
  const dc_impl *im = dc_pick();
  return im ? im->name : "off";
}

static int is_pointwise(const lt_conv_geom *g) {
  return g->kh == 1 && g->kw == 1 && g->stride_h == 1 && g->stride_w == 1 && g->pad_t == 0 &&
         g->pad_l == 0 && g->pad_b == 0 && g->pad_r == 0 && g->oh == g->h && g->ow == g->w &&
         g->groups == 1;
}

static int round16(int v) { return (v + 15) & ~15; }

/* Which convolutions automatic mode takes (forced modes: every groups-1 convolution). Measured
 * with bench_models on the Tucker-compressed and dense ResNet-20 at batch 64, two threads,
 * process CPU time, direct against what the rest of the dispatch would do:
 *  - pointwise, up to 256 channels in and out: 2.4-6x faster than per-image sgemm at 4..64;
 *  - stride 1, fewer than 8 channels in or out (Winograd declines them, im2col): 4.4x on the
 *    rank-4 cores (4->4 32×32), 2.6x on the dense network's 3->16 first conv;
 *  - stride 1 where padding the channels to 16 costs Winograd over 16/9 of the products
 *    (16*c*s <= 9*cp*sp): 8->8 32×32 0.71 vs 1.47 ms (F(4×4)), 12->12 32×32 1.17 vs 1.69,
 *    20->20 8×8 0.25 vs 0.33, 36->36 8×8 0.70 vs 0.88, 24->24 16×16 1.16 vs 1.21; beyond it
 *    Winograd wins (16->16 16×16 0.56 vs 0.38, 16->16 32×32 12.1 vs 9.3);
 *  - stride 1 with at most 512 output pixels in the batch (16×16 images at batch 1 or 2, 8×8 up
 *    to 8), where Winograd's per-call costs (filter transform, padded buffers) are not paid back:
 *    batch 1, 32->32 16×16 0.047 vs 0.26 ms, 64->64 8×8 0.054 vs 0.17, 24->24 16×16 0.034 vs
 *    0.155, 28->28 8×8 0.008 vs 0.040 (but 16->16 32×32, 1024 pixels: 0.044 vs 0.032);
 *  - strided 3×3 (and larger) with at most 64 input channels: 16->16 3×3/2 32×32 1.60 vs 2.22 ms,
 *    32->32 3×3/2 16×16 1.01 vs 1.68, dense 16->32 2.06 vs 3.11, 32->64 1.56 vs 2.18.
 * With the AVX-512 kernels' per-geometry blocking (one thread, batch 32, process CPU time,
 * direct vs Winograd or im2col, tests/kernels/bench_models' conv table):
 *  - stride 1 on images of at most 64 pixels (8×8), up to c*s = 1600 whatever the padding:
 *    16->16 0.065 vs 0.088 ms, 28->28 0.169 vs 0.184, 32->32 0.214 vs 0.217, 40->40 0.323 vs
 *    0.343, 16->64 0.223 vs 0.251, 64->24 0.298 vs 0.319; Winograd from 44->44 (0.383 vs 0.347),
 *    48->48 0.455 vs 0.380;
 *  - on larger images the 16/9 rule only up to c*s = 1024: 36->36 16×16 0.87 vs 0.62 ms,
 *    36->36 32×32 3.3 vs 2.7-3.2 (where 16*c*s = 9*cp*sp);
 *  - strided, also above 64 input channels while an image's channels hold at most 2^16 pixels:
 *    64->128 3×3/2 16×16 1.62 vs 3.02 ms, 128->128 3×3/2 16×16 3.2 vs 6.0, 256->256 3×3/2
 *    8×8 5.1 vs 6.6. */
int lt_cpu_direct_active(const lt_conv_geom *g) {
  const int m = lt_cpu_direct_mode();
  if (m == LT_DIRECT_OFF || g->groups != 1) return 0;
  if (m != LT_DIRECT_AUTO) return 1;
  if (is_pointwise(g)) return g->c <= 256 && g->s <= 256;
  const char *isa = lt_cpu_direct_impl_name();
  const int wide = !strcmp(isa, "avx512"); /* the wider rules were measured with it */
  const size_t cs = (size_t)g->c * g->s;
  if (g->stride_h == 1 && g->stride_w == 1) {
    if (g->c < 8 || g->s < 8 || (size_t)g->n * g->oh * g->ow <= 512) return 1;
    if (wide && (size_t)g->oh * g->ow <= 64) return cs <= 1600;
    return 16 * cs <= 9 * (size_t)round16(g->c) * round16(g->s) && (!wide || cs <= 1024);
  }
  return g->kh >= 3 && g->kw >= 3 &&
         (g->c <= 64 || (wide && g->c <= 256 && (size_t)g->c * g->h * g->w <= 65536));
}

/* Threads worth waking for a product of this many multiply-adds: one per 2^20 (tens of
 * microseconds), so that the small convolutions of a batch-1 inference do not pay a parallel
 * region's start (large with OMP_WAIT_POLICY=passive) for a few microseconds of work. */
static int work_threads(double macs) {
  const int most = omp_get_max_threads();
  const double t = macs / (1 << 20) + 1;
  return t < most ? (int)t : most;
}

/* ---- pointwise ------------------------------------------------------------------------------ */

/* Pixels per unit of work (a multiple of 16 * the widest DC_NV), and output channels per pass
 * when accumulating through the stack buffer. */
#define DC_PW_BLOCK 256
#define DC_PW_OCH 32
/* Input channel rows a multiple of 4 KiB apart (32×32 images) fall into the same L1 sets: when
 * each input is used for at least as many outputs as it has channels, the block's rows are first
 * copied DC_PW_XS floats apart (up to DC_PW_XC channels, on the stack). Batch 32, one thread:
 * 4->16 32×32 0.055 -> 0.045 ms, 8->16 0.074 -> 0.067, 16->16 0.129 -> 0.111; not worth its
 * copy below that (16->4 0.042 -> 0.050, 64->4 0.120 -> 0.197) or on 16×16 and 8×8 images
 * (8->32 16×16 0.026 -> 0.027, 28->64 8×8 0.031 -> 0.033). */
#define DC_PW_XS (DC_PW_BLOCK + 16)
#define DC_PW_XC 64

/* y (n, cout, hw) [+]= W · x (n, cin, hw) + b, with W's element (o, k) at w[o*wo + k*wk]. */
static void pw_apply(const dc_impl *im, int n, int cin, int cout, size_t hw, const float *x,
                     const float *w, ptrdiff_t wo, ptrdiff_t wk, const float *b, float *y,
                     int accumulate, const lt_conv_epi *epi) {
  const int64_t blocks = (int64_t)((hw + DC_PW_BLOCK - 1) / DC_PW_BLOCK), units = blocks * n;
  const ptrdiff_t zero = 0;
  const int threads = work_threads((double)n * cin * cout * hw);
  /* the blockings: whole or last pixel block (f, t) times whole or last channel pass */
  const size_t tail = (hw % DC_PW_BLOCK) & ~(size_t)15;
  const int orest = cout % DC_PW_OCH;
  dc_plan pff = {0}, pft = {0}, ptf = {0}, ptt = {0}; /* only those used: small calls count */
  const int whole = hw >= DC_PW_BLOCK, opass = cout >= DC_PW_OCH;
  if (whole && opass) im->plan(&pff, DC_PW_BLOCK, DC_PW_OCH, cin);
  if (whole && orest) im->plan(&pft, DC_PW_BLOCK, orest, cin);
  if (tail && opass) im->plan(&ptf, (int)tail, DC_PW_OCH, cin);
  if (tail && orest) im->plan(&ptt, (int)tail, orest, cin);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t u = 0; u < units; u++) {
    const int img = (int)(u / blocks);
    const size_t p0 = (size_t)(u % blocks) * DC_PW_BLOCK;
    const size_t len = hw - p0 < DC_PW_BLOCK ? hw - p0 : DC_PW_BLOCK;
    const size_t vlen = len & ~(size_t)15;
    const float *xi = x + (size_t)img * cin * hw + p0;
    float *yi = y + (size_t)img * cout * hw + p0;
    float tmp[DC_PW_OCH * DC_PW_BLOCK];
    float xs[DC_PW_XC * DC_PW_XS];
    const float *xr = xi; /* the vector part's input, channel k at xr + k*xcs */
    ptrdiff_t xcs = (ptrdiff_t)hw;
    if (hw % 1024 == 0 && cout >= cin && cin > 1 && cin <= DC_PW_XC && vlen) {
      for (int k = 0; k < cin; k++)
        memcpy(xs + (size_t)k * DC_PW_XS, xi + (size_t)k * hw, sizeof(float) * vlen);
      xr = xs, xcs = DC_PW_XS;
    }
    for (int o0 = 0; o0 < cout; o0 += DC_PW_OCH) {
      const int oc = cout - o0 < DC_PW_OCH ? cout - o0 : DC_PW_OCH;
      const float *wo0 = w + o0 * wo, *bo = b ? b + o0 : NULL;
      const dc_plan *pl = len == DC_PW_BLOCK ? (oc == DC_PW_OCH ? &pff : &pft)
                                             : (oc == DC_PW_OCH ? &ptf : &ptt);
      float *yo = yi + (size_t)o0 * hw;
      if (vlen) {
        if (accumulate) {
          im->run(pl, (int)vlen, oc, cin, 1, &zero, xr, xcs, wo0, wo, wk, bo, tmp,
                  DC_PW_BLOCK, NULL, 0);
          for (int o = 0; o < oc; o++)
            for (size_t i = 0; i < vlen; i++)
              yo[(size_t)o * hw + i] += tmp[(size_t)o * DC_PW_BLOCK + i];
        } else {
          /* the epilogue in the micro-kernel, on the sums in registers */
          im->run(pl, (int)vlen, oc, cin, 1, &zero, xr, xcs, wo0, wo, wk, bo, yo,
                  (ptrdiff_t)hw, epi && epi->res ? epi->res + (yo - y) : NULL,
                  epi ? epi->relu : 0);
        }
      }
      for (size_t i = vlen; i < len; i++) /* tail: same summation order, scalar */
        for (int o = 0; o < oc; o++) {
          float acc = bo ? bo[o] : 0.0f;
          for (int k = 0; k < cin; k++)
            acc += wo0[o * wo + k * wk] * xi[(size_t)k * hw + i];
          yo[(size_t)o * hw + i] = accumulate ? yo[(size_t)o * hw + i] + acc : acc;
        }
      /* the epilogue where the micro-kernel did not apply it: accumulated blocks, scalar tails */
      const size_t e0 = accumulate ? 0 : vlen;
      for (int o = 0; o < oc && epi && e0 < len; o++)
        lt_conv_epi_apply(epi, yo + (size_t)o * hw + e0, (size_t)(yo - y) + (size_t)o * hw + e0,
                          len - e0);
    }
  }
}

/* ---- k×k, any stride ------------------------------------------------------------------------ */

/* Each image is stored as sh*nb planes per channel, hq rows of pitch P each: plane (a, q) holds
 * at (i, j) the zero-bordered image's pixel (sh*i + a, sw*j + col[q]), i.e. the input pixel
 * (sh*i + a - pad_t, sw*j + col[q] - pad_l), zero outside the image. The output (oy, ox) is grid
 * position p = oy*P + ox, and tap (ki, kj) reads plane ((ki*dh) % sh, q(kj)) at
 * p + ((ki*dh) / sh)*P + shift(kj): every tap is one contiguous run at a constant offset and the
 * micro-kernel needs no bounds. Two column layouts:
 *  - phase planes (nb = sw, col[q] = q, P = ceil(wp / sw)): tap column kj reads plane
 *    (kj*dw) % sw shifted by (kj*dw) / sw. One copy of each input pixel; the columns ox >= ow
 *    of the grid are computed and dropped when the result is copied into y.
 *  - shifted planes (nb = kw, col[q] = q*dw, P = ow): tap column kj reads plane kj unshifted.
 *    kw copies of each pixel, but the grid is y's own layout: no discarded columns (20% of an
 *    8×8 image's grid of pitch 10) and the micro-kernel writes y in place, the epilogue applied
 *    in registers. Taken at stride 1 for outputs at most 8 wide or at least 16 output channels
 *    (at larger strides: at least 64 output channels)
 *    (the copies cost per input channel, the columns saved per output channel), measured at
 *    batch 32 on one thread, shifted vs phase planes: 28->28 8×8 0.146 vs 0.165 ms, 40->40 8×8
 *    0.270 vs 0.311, 3->16 32×32 0.143 vs 0.170, 4->36 32×32 0.385 vs 0.458, 20->20 16×16 and
 *    32×32 even; but 4->4 32×32 0.069 vs 0.063, 8->8 16×16 0.062 vs 0.058. At stride 2 the
 *    kw copies of every pixel replace one even/odd split and pay for themselves later: 32->64
 *    3×3/2 16×16 0.404 vs 0.438 ms, but 16->16 32×32 0.306 vs 0.242, 16->32 0.460 vs 0.415,
 *    24->24 16×16 0.164 vs 0.143. */
typedef struct kx_shape {
  int shifted;    /* the layout: shifted planes (1) or phase planes (0) */
  int nb;         /* planes per row phase: sw (phase planes) or kw (shifted) */
  int hq, pitch;  /* one plane: hq rows (oh + ((kh-1)*dh) / sh) of P floats */
  size_t plane;   /* hq*P */
  size_t chan;    /* sh*nb*plane: floats per channel */
  int npos;       /* grid positions (oh-1)*P + ow, rounded up to 16 */
  size_t xfloats; /* c*chan + P + 16 (runs read past the last plane's rows) */
  size_t yfloats; /* s*npos: the outputs when they do not go to y directly */
  size_t slice;   /* xfloats + yfloats + a row's even/odd split, rounded up to 16 */
  /* plane q's columns [j0, j1) are inside the image, input column sw*j + off[q]; tap column kj
   * reads plane qof[kj] shifted by shift[kj] (kw <= 64) */
  int j0[64], j1[64], off[64], qof[64], shift[64];
} kx_shape;

static kx_shape kx_make(const lt_conv_geom *g) {
  kx_shape k;
  const int sw = g->stride_w, dw = g->dil_w, kw = g->kw < 64 ? g->kw : 64;
  const int shifted = sw == 1 ? g->ow <= 8 || g->s >= 16 : g->s >= 64;
  k.shifted = shifted;
  k.nb = shifted ? kw : sw;
  k.pitch = shifted ? g->ow : (g->w + g->pad_l + g->pad_r + sw - 1) / sw;
  k.hq = g->oh + (g->kh - 1) * g->dil_h / g->stride_h;
  k.plane = (size_t)k.hq * k.pitch;
  k.chan = (size_t)g->stride_h * k.nb * k.plane;
  k.npos = (int)(((size_t)(g->oh - 1) * k.pitch + g->ow + 15) & ~(size_t)15);
  k.xfloats = (size_t)g->c * k.chan + k.pitch + 16;
  k.yfloats = (size_t)g->s * k.npos;
  k.slice = (k.xfloats + k.yfloats + (size_t)g->w + 32 + 15) & ~(size_t)15;
  for (int q = 0; q < k.nb && q < 64; q++) {
    const int off = (shifted ? q * dw : q) - g->pad_l;
    const int j0 = off < 0 ? (-off + sw - 1) / sw : 0, j1 = (g->w - off + sw - 1) / sw;
    k.off[q] = off, k.j0[q] = j0, k.j1[q] = j1 < k.pitch ? j1 : k.pitch;
  }
  for (int kj = 0; kj < kw; kj++) {
    k.qof[kj] = shifted ? kj : kj * dw % sw;
    k.shift[kj] = shifted ? 0 : kj * dw / sw;
  }
  return k;
}

/* The plane copies move a few rows of 8..64 floats each per channel: GCC would turn their loops
 * into memcpy calls, whose call and size dispatch cost more than the copy (a third of a rank-4
 * core's time went to them). */
#pragma GCC push_options
#pragma GCC optimize("no-tree-loop-distribute-patterns")

/* Unaligned 16- and 8-float vectors for the plane copies. */
typedef float dc_v8u __attribute__((vector_size(32), aligned(4), may_alias));
typedef float dc_v8 __attribute__((vector_size(32)));
typedef int dc_v8i __attribute__((vector_size(32)));
#define DC_V8(p) (*(dc_v8u *)(uintptr_t)(p))
typedef float dc_v4u __attribute__((vector_size(16), aligned(4), may_alias));
#define DC_V4(p) (*(dc_v4u *)(uintptr_t)(p))

/* d[0, n) = s[0, n): whole vectors, the last one overlapping the one before when n is not a
 * multiple (n >= the vector's width), scalars below 8. */
static inline void kx_copy(float *restrict d, const float *restrict s, int n) {
  if (n >= 16) {
    int i = 0;
    for (; i + 16 <= n; i += 16) DC_V(d + i) = DC_V(s + i);
    if (i < n) DC_V(d + n - 16) = DC_V(s + n - 16);
  } else if (n >= 8) {
    DC_V8(d) = DC_V8(s);
    DC_V8(d + n - 8) = DC_V8(s + n - 8);
  } else if (n >= 4) {
    DC_V4(d) = DC_V4(s);
    DC_V4(d + n - 4) = DC_V4(s + n - 4);
  } else {
    for (int i = 0; i < n; i++) d[i] = s[i];
  }
}

/* Element m of s[q + 2m] (q = 0, 1) into d_q[m], m < ceil((n - q) / 2): 32 (then 16) source
 * floats at a time split into their even and odd elements, then scalars. */
#ifdef __clang__ /* the fuzzing build */
#define DC_EVEN16(a, b)                                                                            \
  __builtin_shufflevector(a, b, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30)
#define DC_ODD16(a, b)                                                                             \
  __builtin_shufflevector(a, b, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31)
#define DC_EVEN8(a, b) __builtin_shufflevector(a, b, 0, 2, 4, 6, 8, 10, 12, 14)
#define DC_ODD8(a, b) __builtin_shufflevector(a, b, 1, 3, 5, 7, 9, 11, 13, 15)
#else
#define DC_EVEN16(a, b)                                                                            \
  __builtin_shuffle(a, b, (dc_v16i){0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30})
#define DC_ODD16(a, b)                                                                             \
  __builtin_shuffle(a, b, (dc_v16i){1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31})
#define DC_EVEN8(a, b) __builtin_shuffle(a, b, (dc_v8i){0, 2, 4, 6, 8, 10, 12, 14})
#define DC_ODD8(a, b) __builtin_shuffle(a, b, (dc_v8i){1, 3, 5, 7, 9, 11, 13, 15})
#endif
static inline void kx_split2(const float *restrict s, int n, float *restrict d0,
                             float *restrict d1) {
  int m = 0;
  for (; 2 * m + 32 <= n; m += 16) {
    const dc_v16 lo = DC_V(s + 2 * m), hi = DC_V(s + 2 * m + 16);
    DC_V(d0 + m) = DC_EVEN16(lo, hi);
    DC_V(d1 + m) = DC_ODD16(lo, hi);
  }
  for (; 2 * m + 16 <= n; m += 8) {
    const dc_v8 lo = DC_V8(s + 2 * m), hi = DC_V8(s + 2 * m + 8);
    DC_V8(d0 + m) = DC_EVEN8(lo, hi);
    DC_V8(d1 + m) = DC_ODD8(lo, hi);
  }
  for (; 2 * m < n; m++) {
    d0[m] = s[2 * m];
    if (2 * m + 1 < n) d1[m] = s[2 * m + 1];
  }
}

/* The planes of one image (c, h, w) into xp (c, sh, nb, hq, P), channels [c0, c1): the image's
 * pixels only. The zeros (padding, and plane positions past the image) are not written: the
 * caller zeroes the planes once (kx_zero) and reuses them for any number of images of the same
 * geometry. split: scratch of w + 32 floats (stride 2). */
static void kx_pack(const lt_conv_geom *g, const kx_shape *k, const float *restrict x,
                    float *restrict xp, float *restrict split, int c0, int c1) {
  /* everything in locals: the vector stores may alias anything, *k and *g included */
  const int sh = g->stride_h, sw = g->stride_w, wd = g->w, ht = g->h, pt = g->pad_t;
  const int pl = g->pad_l, nb = k->nb, hq = k->hq, shifted = k->shifted;
  const size_t plane = k->plane, chan = k->chan, pitch = (size_t)k->pitch;
  int j0[64], j1[64], off[64];
  for (int q = 0; q < nb; q++) j0[q] = k->j0[q], j1[q] = k->j1[q], off[q] = k->off[q];
  float *ev = split, *od = split + (wd + 1) / 2 + 16;
  for (int ch = c0; ch < c1; ch++) {
    const float *restrict s = x + (size_t)ch * ht * wd;
    for (int a = 0; a < sh; a++)
      for (int i = 0; i < hq; i++) {
        const int iy = sh * i + a - pt;
        if (iy < 0 || iy >= ht) continue;
        const float *restrict sr = s + (size_t)iy * wd;
        float *restrict d = xp + (size_t)ch * chan + (size_t)a * nb * plane + (size_t)i * pitch;
        if (sw == 2 && !shifted) {
          /* phase planes: input column ix is plane (ix + pad_l) % 2's (ix + pad_l) / 2 */
          kx_split2(sr, wd, d + (size_t)(pl % 2) * plane + pl / 2,
                    d + (size_t)((pl + 1) % 2) * plane + (pl + 1) / 2);
          continue;
        }
        if (sw == 2) kx_split2(sr, wd, ev, od);
        for (int q = 0; q < nb; q++, d += plane) {
          if (j0[q] >= j1[q]) continue;
          const int o = off[q];
          if (sw == 1) {
            kx_copy(d + j0[q], sr + j0[q] + o, j1[q] - j0[q]);
          } else if (sw == 2) {
            /* input column 2j + o: even ones ev[j + o/2], odd ones od[j + (o - 1)/2] */
            const int h2 = (o - (o & 1)) / 2;
            kx_copy(d + j0[q], ((o & 1) ? od : ev) + (j0[q] + h2), j1[q] - j0[q]);
          } else {
            for (int j = j0[q]; j < j1[q]; j++) d[j] = sr[sw * j + o];
          }
        }
      }
  }
}

/* The planes of channels [c0, c1) zeroed, and the margin after the last channel. */
static void kx_zero(const lt_conv_geom *g, const kx_shape *k, float *xp, int c0, int c1) {
  memset(xp + (size_t)c0 * k->chan, 0, sizeof(float) * (size_t)(c1 - c0) * k->chan);
  if (c1 == g->c)
    memset(xp + (size_t)g->c * k->chan, 0, sizeof(float) * (k->xfloats - (size_t)g->c * k->chan));
}

/* One run of n outputs: d = act(s [+ res]), the epilogue's operations in its order. */
static inline __attribute__((always_inline)) void kx_row(float *restrict d,
                                                        const float *restrict s,
                                                        const float *restrict res, int relu,
                                                        int n) {
#pragma omp simd
  for (int i = 0; i < n; i++) {
    float v = s[i];
    if (res) v = v + res[i];
    if (relu) v = v > 0.0f ? v : 0.0f;
    d[i] = v;
  }
}

/* y[o*ycs + r*n + i] [+]= yt[o*yts + r*pitch + i] for outputs [o0, o1), rows r < rows and
 * i < n, then the epilogue (in the same pass when not accumulating); res laid out as y, y at
 * offset yoff of the epilogue's residual. */
static void kx_unpack(const float *restrict yt, size_t yts, size_t pitch, float *restrict y,
                      size_t ycs, int rows, int n, int accumulate, const lt_conv_epi *epi,
                      size_t yoff, int o0, int o1) {
  const float *res = epi && epi->res ? epi->res + yoff : NULL;
  const int relu = epi && epi->relu;
  for (int o = o0; o < o1; o++)
    for (int r = 0; r < rows; r++) {
      const float *restrict s = yt + (size_t)o * yts + (size_t)r * pitch;
      const size_t off = (size_t)o * ycs + (size_t)r * n;
      float *restrict d = y + off;
      if (accumulate) {
        for (int i = 0; i < n; i++)
          d[i] += s[i];
        lt_conv_epi_apply(epi, d, yoff + off, (size_t)n);
      } else if (res && relu) {
        kx_row(d, s, res + off, 1, n);
      } else if (res) {
        kx_row(d, s, res + off, 0, n);
      } else if (relu) {
        kx_row(d, s, NULL, 1, n);
      } else {
        kx_copy(d, s, n);
      }
    }
}

#pragma GCC pop_options

int lt_cpu_direct_fwd(const lt_conv_geom *g, const float *x, const float *w, const float *b,
                      float *y, int accumulate, void *ws, size_t ws_bytes,
                      const lt_conv_epi *epi) {
  const dc_impl *im = dc_pick();
  if (!im || !lt_cpu_direct_active(g)) return -1;
  const size_t hw = (size_t)g->h * g->w;
  if (is_pointwise(g)) {
    pw_apply(im, g->n, g->c, g->s, hw, x, w, g->c, 1, b, y, accumulate, epi);
    return 0;
  }
  const kx_shape k = kx_make(g);
  const int kk = g->kh * g->kw;
  if (kk > 64 || !ws || ws_bytes / sizeof(float) < k.slice) return -1;
  ptrdiff_t toff[64];
  for (int i = 0; i < g->kh; i++)
    for (int j = 0; j < g->kw; j++) {
      const int dy = i * g->dil_h;
      toff[i * g->kw + j] =
          (ptrdiff_t)((dy % g->stride_h) * k.nb + k.qof[j]) * (ptrdiff_t)k.plane +
          (ptrdiff_t)(dy / g->stride_h) * k.pitch + k.shift[j];
    }
  const size_t ohw = (size_t)g->oh * g->ow, max_slices = ws_bytes / sizeof(float) / k.slice;
  const ptrdiff_t wo = (ptrdiff_t)g->c * kk;
  const int direct = k.pitch == g->ow; /* the grid is y's layout: outputs written in place */
  const size_t full = direct ? ohw & ~(size_t)15 : 0; /* in place; the rest through yt */
  int threads = work_threads((double)g->n * g->s * g->c * kk * k.npos);
  if ((size_t)threads > max_slices) threads = (int)max_slices;
  if (g->n >= threads) {
    dc_plan pl = {0}, pl16 = {0}, pln = {0}; /* only those used: small calls count */
    if (direct && !accumulate) {
      im->plan(&pl, (int)full, g->s, g->c * kk);
      if (full < ohw) im->plan(&pl16, 16, g->s, g->c * kk);
    } else {
      im->plan(&pln, k.npos, g->s, g->c * kk);
    }
    /* a run of images per thread, each thread in its own slice, its planes zeroed once */
#pragma omp parallel num_threads(threads)
    {
      const int t = omp_get_thread_num(), nth = omp_get_num_threads();
      const int i0 = (int)((int64_t)g->n * t / nth), i1 = (int)((int64_t)g->n * (t + 1) / nth);
      float *xp = (float *)ws + (size_t)t * k.slice, *yt = xp + k.xfloats;
      float *split = yt + k.yfloats;
      if (i0 < i1) kx_zero(g, &k, xp, 0, g->c);
      for (int img = i0; img < i1; img++) {
        const size_t yoff = (size_t)img * g->s * ohw;
        float *yi = y + yoff;
        kx_pack(g, &k, x + (size_t)img * g->c * hw, xp, split, 0, g->c);
        if (!direct || accumulate) { /* the grid through yt, copied into y with the epilogue */
          im->run(&pln, k.npos, g->s, g->c, kk, toff, xp, (ptrdiff_t)k.chan, w, wo, kk, b, yt,
                  k.npos, NULL, 0);
          kx_unpack(yt, (size_t)k.npos, (size_t)k.pitch, yi, ohw, g->oh, g->ow, accumulate, epi,
                    yoff, 0, g->s);
          continue;
        }
        /* in place, the epilogue on the sums in registers; a partial last vector through yt */
        im->run(&pl, (int)full, g->s, g->c, kk, toff, xp, (ptrdiff_t)k.chan, w, wo, kk, b, yi,
                (ptrdiff_t)ohw, epi && epi->res ? epi->res + yoff : NULL, epi ? epi->relu : 0);
        if (full < ohw) {
          im->run(&pl16, 16, g->s, g->c, kk, toff, xp + full, (ptrdiff_t)k.chan, w, wo, kk, b,
                  yt, 16, NULL, 0);
          kx_unpack(yt, 16, 0, yi + full, ohw, 1, (int)(ohw - full), 0, epi, yoff + full, 0,
                    g->s);
        }
      }
    }
    return 0;
  }
  /* fewer images than threads: the pixel runs of one image across threads, through yt */
  float *xp = ws, *yt = xp + k.xfloats;
  const int runs = (k.npos + 63) / 64;
  dc_plan pl64, plt;
  im->plan(&pl64, 64, g->s, g->c * kk), im->plan(&plt, k.npos - (runs - 1) * 64, g->s, g->c * kk);
  for (int img = 0; img < g->n; img++) {
    const size_t yoff = (size_t)img * g->s * ohw;
#pragma omp parallel num_threads(threads)
    {
      /* the row scratch of the thread's own slice (slice 0 holds the planes and outputs) */
      float *sp = (float *)ws + (size_t)omp_get_thread_num() * k.slice + k.xfloats + k.yfloats;
#pragma omp for schedule(static)
      for (int ch = 0; ch < g->c; ch++) {
        if (img == 0) kx_zero(g, &k, xp, ch, ch + 1);
        kx_pack(g, &k, x + (size_t)img * g->c * hw, xp, sp, ch, ch + 1);
      }
#pragma omp for schedule(static)
      for (int r = 0; r < runs; r++) {
        const int p0 = r * 64, len = k.npos - p0 < 64 ? k.npos - p0 : 64;
        im->run(len == 64 ? &pl64 : &plt, len, g->s, g->c, kk, toff, xp + p0,
                (ptrdiff_t)k.chan, w, wo, kk, b, yt + p0, k.npos, NULL, 0);
      }
#pragma omp for schedule(static)
      for (int o = 0; o < g->s; o++)
        kx_unpack(yt, (size_t)k.npos, (size_t)k.pitch, y + yoff, ohw, g->oh, g->ow, accumulate,
                  epi, yoff, o, o + 1);
    }
  }
  return 0;
}

size_t lt_cpu_direct_slice_bytes(const lt_conv_geom *g) {
  if (is_pointwise(g)) return 0;
  return kx_make(g).slice * sizeof(float);
}
