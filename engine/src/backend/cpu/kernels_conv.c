/* Convolution and matrix-product kernels on the CPU: 3×3 stride-1 convolutions take the Winograd
 * fast path of kernels_winograd.c (when lt_cpu_winograd_active: groups 1, dilation 1, top/left
 * padding <= 2, at least 8 channels in and out unless a Winograd mode is forced); every other
 * convolution is lowered to a few large OpenBLAS sgemm calls as below.
 *
 * Lowering. A chunk of nb images is unfolded by im2col into one column matrix
 * col (c*kh*kw, nb*oh*ow), so that the GEMM's N dimension spans several images (ResNet-style
 * layers have few channels, and per-image GEMMs with N = 64 run far below the sgemm rate). The GEMM
 * writes a channel-major product (s, nb*oh*ow) that one pass reorders into NCHW (adding the
 * bias on the way). Backward data is the transposed GEMM followed by col2im; backward filter
 * multiplies the reordered dy by the same im2col. 1×1 stride-1 unpadded convolutions skip im2col
 * and use the input as the column matrix, image by image. Depthwise convolutions (one input
 * channel per group) are direct loops: their per-group GEMMs would be too small to pay.
 *
 * conv_transpose2d is the adjoint of conv2d: its forward is conv2d's backward data, its backward
 * data is conv2d's forward and its backward filter is conv2d's backward filter with x and dy
 * swapped, all on the "mirror" geometry built by mirror_geom. One implementation serves both.
 *
 * Threads. The batch is split into one contiguous range of images per OpenMP thread ("teams",
 * plan_teams), and each team runs the whole lowering on its range with a single-threaded sgemm
 * (OpenBLAS is pinned to one thread for the duration). ResNet-style GEMMs (M = 16..64) scale
 * poorly across threads inside sgemm, and this way im2col, the reorders and col2im run in parallel
 * on data the same core wrote. Backward filter sums per-team partial weight gradients in team
 * order, so results are reproducible at a given thread count. 1×1 and depthwise paths keep
 * OpenBLAS's own threads and OpenMP loops.
 *
 * Direct kernels (kernels_direct.c) come first in inference forwards (lt_cpu_conv2d_fwd_infer)
 * where lt_cpu_direct_active, unless a Winograd mode is forced and takes the convolution:
 * pointwise convolutions (Tucker-compressed networks' 1×1 convolutions, where per-image sgemm
 * calls with M or K of 4..36 run far below rate), narrow stride-1 convolutions (their low-rank
 * 3×3 cores, which Winograd declines or pads to 16 channels) and strided 3×3 convolutions with at
 * most 64 channels in.
 */
#include "backend/cpu/kernels.h"

#include <cblas.h>
#include <omp.h>
#include <string.h>

/* Scratch of one team: its column matrix and channel-major product for one chunk of images, and
 * its partial weight gradient. Each chunk holds as many whole images as fit (a single image that
 * needs more gets a chunk of its own). The size keeps the column matrix in cache between im2col
 * writing it and sgemm packing it: measured on ResNet-20's convs at batch 128, single-threaded by
 * process CPU time (bench_conv --cpu), 1, 2 and 4 MiB within 3% of each other, 8 MiB 10% slower,
 * 32 MiB 30-40% slower. It does not depend on the thread count, so neither do the chunks, and the
 * forward and backward data give the same bits at any number of threads. */
#define LT_CONV_TEAM_BYTES ((size_t)2 << 20)
/* Teams the workspace has room for: the workspace is sized before the thread count is known (and
 * the count may change after), so it holds this many team slices, 16 MiB in all. */
#define LT_CONV_MAX_TEAMS 8

void lt_cpu_gemm(int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a,
                 int lda, const float *b, int ldb, float beta, float *c, int ldc) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) { /* BLAS leaves C untouched when k = 0 only if beta = 1; make it explicit */
    for (int i = 0; i < m; i++)
      for (int j = 0; j < n; j++)
        c[(size_t)i * ldc + j] = beta == 0.0f ? 0.0f : beta * c[(size_t)i * ldc + j];
    return;
  }
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

int lt_conv_geom_finish(lt_conv_geom *g, int transpose) {
  if (g->n <= 0 || g->c <= 0 || g->h <= 0 || g->w <= 0 || g->s <= 0 || g->kh <= 0 || g->kw <= 0 ||
      g->stride_h <= 0 || g->stride_w <= 0 || g->dil_h <= 0 || g->dil_w <= 0 || g->groups <= 0 ||
      g->pad_t < 0 || g->pad_l < 0 || g->pad_b < 0 || g->pad_r < 0)
    return -1;
  if (g->c % g->groups || g->s % g->groups) return -1;
  if (transpose) {
    if (g->out_pad_h < 0 || g->out_pad_w < 0) return -1;
    /* PyTorch refuses output padding that is not smaller than stride or dilation. */
    if ((g->out_pad_h >= g->stride_h && g->out_pad_h >= g->dil_h) ||
        (g->out_pad_w >= g->stride_w && g->out_pad_w >= g->dil_w))
      return -1;
    g->oh =
        (g->h - 1) * g->stride_h - g->pad_t - g->pad_b + g->dil_h * (g->kh - 1) + g->out_pad_h + 1;
    g->ow =
        (g->w - 1) * g->stride_w - g->pad_l - g->pad_r + g->dil_w * (g->kw - 1) + g->out_pad_w + 1;
  } else {
    int eh = g->h + g->pad_t + g->pad_b - g->dil_h * (g->kh - 1) - 1;
    int ew = g->w + g->pad_l + g->pad_r - g->dil_w * (g->kw - 1) - 1;
    if (eh < 0 || ew < 0) return -1;
    g->oh = eh / g->stride_h + 1;
    g->ow = ew / g->stride_w + 1;
  }
  return g->oh > 0 && g->ow > 0 ? 0 : -1;
}

void lt_conv_epi_apply(const lt_conv_epi *e, float *restrict y, size_t off,
                       size_t n) {
  if (!e) return;
  const float *restrict r = e->res ? e->res + off : NULL;
  if (r && e->relu) {
#pragma omp simd
    for (size_t i = 0; i < n; i++) {
      const float v = y[i] + r[i];
      y[i] = v > 0.0f ? v : 0.0f;
    }
  } else if (r) {
#pragma omp simd
    for (size_t i = 0; i < n; i++)
      y[i] += r[i];
  } else if (e->relu) {
#pragma omp simd
    for (size_t i = 0; i < n; i++)
      y[i] = y[i] > 0.0f ? y[i] : 0.0f;
  }
}

/* ---- im2col / col2im ----------------------------------------------------------------------- */

/* The four movement helpers below (im2col, col2im, cm_to_nchw, nchw_to_cm) are serial: each team
 * runs them on its own images (see plan_teams). */

/* Unfolds images [0, nb) of x (nb, c, h, w) into col (c*kh*kw, ld) at column offset
 * img*oh*ow; ld = nb*oh*ow. Zero where the window reads padding. */
static void im2col(const lt_conv_geom *g, int nb, const float *restrict x, float *restrict col) {
  const int c = g->c, h = g->h, w = g->w, oh = g->oh, ow = g->ow, kh = g->kh, kw = g->kw;
  const size_t ohw = (size_t)oh * ow, ld = (size_t)nb * ohw;
  for (int img = 0; img < nb; img++)
    for (int ch = 0; ch < c; ch++) {
      const float *restrict xp = x + ((size_t)img * c + ch) * h * w; /* (h, w) */
      for (int ki = 0; ki < kh; ki++)
        for (int kj = 0; kj < kw; kj++) {
          float *restrict row =
              col + ((size_t)(ch * kh + ki) * kw + kj) * ld + img * ohw; /* (oh, ow) */
          const int dy = ki * g->dil_h - g->pad_t, dx = kj * g->dil_w - g->pad_l;
          for (int oy = 0; oy < oh; oy++) {
            float *restrict r = row + (size_t)oy * ow;
            const int iy = oy * g->stride_h + dy;
            if (iy < 0 || iy >= h) {
              memset(r, 0, sizeof(float) * ow);
              continue;
            }
            const float *restrict xr = xp + (size_t)iy * w;
            if (g->stride_w == 1) {
              /* contiguous: zero the padded ends, copy the middle */
              int lo = -dx > 0 ? -dx : 0, hi = w - dx < ow ? w - dx : ow;
              if (hi < lo) hi = lo;
              for (int ox = 0; ox < lo; ox++)
                r[ox] = 0.0f;
              if (hi > lo) memcpy(r + lo, xr + lo + dx, sizeof(float) * (hi - lo));
              for (int ox = hi; ox < ow; ox++)
                r[ox] = 0.0f;
            } else {
              for (int ox = 0; ox < ow; ox++) {
                const int ix = ox * g->stride_w + dx;
                r[ox] = (ix >= 0 && ix < w) ? xr[ix] : 0.0f;
              }
            }
          }
        }
    }
}

/* The adjoint of im2col: x (nb, c, h, w) [+]= col (c*kh*kw, nb*oh*ow). Each (image, channel)
 * plane is owned by one thread, which zeroes it first unless accumulating, so the scatter needs
 * no atomics. */
static void col2im(const lt_conv_geom *g, int nb, const float *restrict col, float *restrict x,
                   int accumulate) {
  const int c = g->c, h = g->h, w = g->w, oh = g->oh, ow = g->ow, kh = g->kh, kw = g->kw;
  const size_t ohw = (size_t)oh * ow, ld = (size_t)nb * ohw;
  for (int img = 0; img < nb; img++)
    for (int ch = 0; ch < c; ch++) {
      float *restrict xp = x + ((size_t)img * c + ch) * h * w;
      if (!accumulate) memset(xp, 0, sizeof(float) * h * w);
      for (int ki = 0; ki < kh; ki++)
        for (int kj = 0; kj < kw; kj++) {
          const float *restrict row = col + ((size_t)(ch * kh + ki) * kw + kj) * ld + img * ohw;
          const int dy = ki * g->dil_h - g->pad_t, dx = kj * g->dil_w - g->pad_l;
          for (int oy = 0; oy < oh; oy++) {
            const int iy = oy * g->stride_h + dy;
            if (iy < 0 || iy >= h) continue;
            const float *restrict r = row + (size_t)oy * ow;
            float *restrict xr = xp + (size_t)iy * w;
            if (g->stride_w == 1) {
              int lo = -dx > 0 ? -dx : 0, hi = w - dx < ow ? w - dx : ow;
              for (int ox = lo; ox < hi; ox++)
                xr[ox + dx] += r[ox];
            } else {
              for (int ox = 0; ox < ow; ox++) {
                const int ix = ox * g->stride_w + dx;
                if (ix >= 0 && ix < w) xr[ix] += r[ox];
              }
            }
          }
        }
    }
}

/* ---- chunking and reordering --------------------------------------------------------------- */

static int is_pointwise(const lt_conv_geom *g) {
  return g->kh == 1 && g->kw == 1 && g->stride_h == 1 && g->stride_w == 1 && g->pad_t == 0 &&
         g->pad_l == 0 && g->pad_b == 0 && g->pad_r == 0 && g->oh == g->h && g->ow == g->w;
}

/* One input channel per group (depthwise, and any conv of a single-channel input): the direct
 * loops below serve it. */
static int is_depthwise(const lt_conv_geom *g) { return g->groups == g->c; }

/* Floats of scratch per image: the column block plus the channel-major product block. */
static size_t floats_per_image(const lt_conv_geom *g) {
  return ((size_t)g->c * g->kh * g->kw + (size_t)g->s) * g->oh * g->ow;
}

/* Floats of one weight gradient: each team's partial dw in backward filter. */
static size_t floats_dw(const lt_conv_geom *g) {
  return (size_t)g->s * (g->c / g->groups) * g->kh * g->kw;
}

/* Floats of one team's slice: LT_CONV_TEAM_BYTES, or one image's scratch and one partial dw when
 * that alone is larger. */
static size_t floats_team(const lt_conv_geom *g) {
  const size_t one = floats_per_image(g) + floats_dw(g);
  return LT_CONV_TEAM_BYTES / sizeof(float) > one ? LT_CONV_TEAM_BYTES / sizeof(float) : one;
}

/* Floats of the whole workspace: LT_CONV_MAX_TEAMS slices of LT_CONV_TEAM_BYTES, or a single
 * slice when one image alone needs more (a large image then runs as one team, with OpenBLAS's
 * threads, rather than multiplying its scratch by the thread count). */
static size_t floats_workspace(const lt_conv_geom *g) {
  const size_t team = floats_team(g), most = LT_CONV_MAX_TEAMS * LT_CONV_TEAM_BYTES / sizeof(float);
  return team > most ? team : most;
}

/* How a convolution's batch is split. The batch is cut into fixed chunks of nb images; each team
 * owns a contiguous run of chunks and a slice of team_floats floats of the workspace: col
 * (c*kh*kw, nb*oh*ow), then prod (s, nb*oh*ow), then a partial dw (s, c/groups, kh, kw). */
typedef struct conv_plan {
  int teams;          /* one per OpenMP thread, at most one per chunk */
  int nb;             /* images per chunk (GEMM N = nb*oh*ow) */
  int chunks;         /* ceil(n / nb) */
  size_t col_floats;  /* c*kh*kw * nb*oh*ow */
  size_t dw_floats;   /* floats_dw */
  size_t team_floats; /* floats_team */
} conv_plan;

/* Small ResNet-style GEMMs (M = 16..64) scale poorly inside sgemm, so splitting the batch and
 * running one single-threaded sgemm per team keeps every core busy, and im2col and the reorders
 * run on data the same core just wrote. */
static conv_plan plan_teams(const lt_conv_geom *g) {
  const size_t per = floats_per_image(g), dwf = floats_dw(g), team = floats_team(g);
  size_t nb = (team - dwf) / per;
  if (nb > (size_t)g->n) nb = (size_t)g->n;
  if (nb < 1) nb = 1;
  conv_plan p = {.nb = (int)nb, .dw_floats = dwf, .team_floats = team};
  p.chunks = (int)((g->n + nb - 1) / nb);
  p.teams = omp_get_max_threads();
  if (p.teams > p.chunks) p.teams = p.chunks;
  if ((size_t)p.teams > floats_workspace(g) / team) p.teams = (int)(floats_workspace(g) / team);
  if (p.teams < 1) p.teams = 1;
  p.col_floats = (size_t)g->c * g->kh * g->kw * nb * g->oh * g->ow;
  return p;
}

/* Bound: max(LT_CONV_MAX_TEAMS * LT_CONV_TEAM_BYTES, one image's scratch + one dw), i.e. 16 MiB
 * unless a single image needs more; 0 for 1×1 stride-1 unpadded and for depthwise convolutions.
 * The same scratch serves forward, backward data and backward filter at any thread count. */
size_t lt_cpu_conv2d_workspace(const lt_conv_geom *g) {
  if (is_pointwise(g) || is_depthwise(g)) return 0;
  const size_t im2col = floats_workspace(g) * sizeof(float), wino = lt_cpu_winograd_workspace(g),
               direct = lt_cpu_direct_slice_bytes(g);
  const size_t most = wino > im2col ? wino : im2col;
  return direct > most ? direct : most;
}

/* y (nb, s, ohw) = [accumulate ? y : 0] + p (s, nb*ohw) + b (s) (b may be NULL), then the
 * epilogue (its residual at y's offsets plus yoff). */
static void cm_to_nchw(int nb, int s, size_t ohw, const float *restrict p, const float *restrict b,
                       float *restrict y, int accumulate, const lt_conv_epi *epi, size_t yoff) {
  for (int img = 0; img < nb; img++)
    for (int ch = 0; ch < s; ch++) {
      const float *restrict src = p + ((size_t)ch * nb + img) * ohw;
      float *restrict dst = y + ((size_t)img * s + ch) * ohw;
      const float bias = b ? b[ch] : 0.0f;
      if (accumulate)
        for (size_t i = 0; i < ohw; i++)
          dst[i] += src[i] + bias;
      else
        for (size_t i = 0; i < ohw; i++)
          dst[i] = src[i] + bias;
      lt_conv_epi_apply(epi, dst, yoff + ((size_t)img * s + ch) * ohw, ohw);
    }
}

/* The epilogue over count floats of y, in parallel: the second pass of the paths that cannot
 * apply it block by block. */
static void epi_pass(const lt_conv_epi *epi, float *y, size_t count) {
  if (!epi || (!epi->res && !epi->relu)) return;
  const size_t blk = 4096, nblk = (count + blk - 1) / blk;
#pragma omp parallel for schedule(static)
  for (size_t k = 0; k < nblk; k++)
    lt_conv_epi_apply(epi, y + k * blk, k * blk, count - k * blk < blk ? count - k * blk : blk);
}

/* p (s, nb*ohw) = y (nb, s, ohw): the inverse reorder, for dy. */
static void nchw_to_cm(int nb, int s, size_t ohw, const float *restrict y, float *restrict p) {
  for (int ch = 0; ch < s; ch++)
    for (int img = 0; img < nb; img++)
      memcpy(p + ((size_t)ch * nb + img) * ohw, y + ((size_t)img * s + ch) * ohw,
             sizeof(float) * ohw);
}

/* db (c) [+]= sum over n and hw of dy (n, c, hw). Double accumulation keeps large batches exact
 * enough to compare with PyTorch. */
static void channel_sum(int n, int c, size_t hw, const float *restrict dy, float *restrict db,
                        int accumulate) {
#pragma omp parallel for schedule(static)
  for (int ch = 0; ch < c; ch++) {
    double acc = 0.0;
    for (int img = 0; img < n; img++) {
      const float *restrict p = dy + ((size_t)img * c + ch) * hw;
      float part = 0.0f;
      for (size_t i = 0; i < hw; i++)
        part += p[i];
      acc += part;
    }
    db[ch] = accumulate ? db[ch] + (float)acc : (float)acc;
  }
}

/* ---- depthwise (one input channel per group) ------------------------------------------------ */

/* With c/groups = 1 every output plane reads one input plane, and lowering to GEMM would give one
 * (s/groups × kh*kw)·(kh*kw × N) product per channel: too small for sgemm to pay. These direct
 * loops run one output plane (forward, backward filter) or one input plane (backward data) per
 * thread, with the output column range of each tap precomputed so the inner loop has no bounds
 * checks and vectorises when the stride is 1. */

static int ceil_div(int a, int b) { return a >= 0 ? (a + b - 1) / b : -((-a) / b); }

/* Output columns [*lo, *hi) whose tap at input offset d (= kj*dil - pad) lands inside [0, w). */
static void tap_range(int d, int w, int stride, int ow, int *lo, int *hi) {
  *lo = ceil_div(-d, stride);
  if (*lo < 0) *lo = 0;
  *hi = ceil_div(w - d, stride);
  if (*hi > ow) *hi = ow;
  if (*hi < *lo) *hi = *lo;
}

/* y [+]= depthwise(x, w) + b. Output channel o reads input channel o / (s/c). */
static void dw_fwd(const lt_conv_geom *g, const float *x, const float *w, const float *b, float *y,
                   int accumulate) {
  const int mult = g->s / g->c, h = g->h, wd = g->w, oh = g->oh, ow = g->ow, sw = g->stride_w;
#pragma omp parallel for collapse(2) schedule(static)
  for (int img = 0; img < g->n; img++)
    for (int o = 0; o < g->s; o++) {
      const float *restrict xp = x + ((size_t)img * g->c + o / mult) * h * wd; /* (h, w) */
      const float *restrict wp = w + (size_t)o * g->kh * g->kw;                /* (kh, kw) */
      float *restrict yp = y + ((size_t)img * g->s + o) * oh * ow;             /* (oh, ow) */
      const float bias = b ? b[o] : 0.0f;
      for (size_t i = 0; i < (size_t)oh * ow; i++)
        yp[i] = (accumulate ? yp[i] : 0.0f) + bias;
      for (int ki = 0; ki < g->kh; ki++)
        for (int kj = 0; kj < g->kw; kj++) {
          const float wv = wp[ki * g->kw + kj];
          const int dx = kj * g->dil_w - g->pad_l;
          int lo, hi;
          tap_range(dx, wd, sw, ow, &lo, &hi);
          for (int oy = 0; oy < oh; oy++) {
            const int iy = oy * g->stride_h + ki * g->dil_h - g->pad_t;
            if (iy < 0 || iy >= h) continue;
            const float *restrict xr = xp + (size_t)iy * wd + dx;
            float *restrict yr = yp + (size_t)oy * ow;
            for (int ox = lo; ox < hi; ox++)
              yr[ox] += wv * xr[ox * sw];
          }
        }
    }
}

/* dx [+]= depthwiseᵀ(dy, w): input plane ch gathers from its mult output planes. */
static void dw_bwd_data(const lt_conv_geom *g, const float *dy, const float *w, float *dx,
                        int accumulate) {
  const int mult = g->s / g->c, h = g->h, wd = g->w, oh = g->oh, ow = g->ow, sw = g->stride_w;
#pragma omp parallel for collapse(2) schedule(static)
  for (int img = 0; img < g->n; img++)
    for (int ch = 0; ch < g->c; ch++) {
      float *restrict xp = dx + ((size_t)img * g->c + ch) * h * wd;
      if (!accumulate) memset(xp, 0, sizeof(float) * h * wd);
      for (int o = ch * mult; o < (ch + 1) * mult; o++) {
        const float *restrict wp = w + (size_t)o * g->kh * g->kw;
        const float *restrict yp = dy + ((size_t)img * g->s + o) * oh * ow;
        for (int ki = 0; ki < g->kh; ki++)
          for (int kj = 0; kj < g->kw; kj++) {
            const float wv = wp[ki * g->kw + kj];
            const int dxo = kj * g->dil_w - g->pad_l;
            int lo, hi;
            tap_range(dxo, wd, sw, ow, &lo, &hi);
            for (int oy = 0; oy < oh; oy++) {
              const int iy = oy * g->stride_h + ki * g->dil_h - g->pad_t;
              if (iy < 0 || iy >= h) continue;
              float *restrict xr = xp + (size_t)iy * wd + dxo;
              const float *restrict yr = yp + (size_t)oy * ow;
              for (int ox = lo; ox < hi; ox++)
                xr[ox * sw] += wv * yr[ox];
            }
          }
      }
    }
}

/* dw [+]= sum over images of dy ⋆ x, one output channel per thread. */
static void dw_bwd_filter(const lt_conv_geom *g, const float *x, const float *dy, float *dw,
                          int accumulate) {
  const int mult = g->s / g->c, h = g->h, wd = g->w, oh = g->oh, ow = g->ow, sw = g->stride_w;
#pragma omp parallel for schedule(static)
  for (int o = 0; o < g->s; o++) {
    float *restrict wp = dw + (size_t)o * g->kh * g->kw;
    for (int ki = 0; ki < g->kh; ki++)
      for (int kj = 0; kj < g->kw; kj++) {
        const int dx = kj * g->dil_w - g->pad_l;
        int lo, hi;
        tap_range(dx, wd, sw, ow, &lo, &hi);
        double acc = 0.0;
        for (int img = 0; img < g->n; img++) {
          const float *restrict xp = x + ((size_t)img * g->c + o / mult) * h * wd;
          const float *restrict yp = dy + ((size_t)img * g->s + o) * oh * ow;
          float part = 0.0f;
          for (int oy = 0; oy < oh; oy++) {
            const int iy = oy * g->stride_h + ki * g->dil_h - g->pad_t;
            if (iy < 0 || iy >= h) continue;
            const float *restrict xr = xp + (size_t)iy * wd + dx;
            const float *restrict yr = yp + (size_t)oy * ow;
            for (int ox = lo; ox < hi; ox++)
              part += yr[ox] * xr[ox * sw];
          }
          acc += part;
        }
        const int k = ki * g->kw + kj;
        wp[k] = accumulate ? wp[k] + (float)acc : (float)acc;
      }
  }
}

/* ---- conv2d, shared by conv_transpose2d ---------------------------------------------------- */

/* Runs the statements (team) for team = 0..teams-1, one team per OpenMP thread. With several teams sgemm
 * is pinned to one thread for the duration (each team's GEMMs are its own); a single team keeps
 * OpenBLAS's threads, so a batch of one still runs its GEMM in parallel. The loop form makes every
 * team run even when the region gets fewer threads than asked (nested inside another region). */
#define CONV_TEAMS(teams, team, ...)                                                               \
  do {                                                                                             \
    const int nteams_ = (teams);                                                                   \
    const int blas_threads_ = nteams_ > 1 ? openblas_get_num_threads() : 0;                        \
    if (nteams_ > 1) openblas_set_num_threads(1);                                                  \
    _Pragma("omp parallel for num_threads(nteams_) schedule(static, 1)")                           \
    for (int team = 0; team < nteams_; team++) {                                                   \
      __VA_ARGS__                                                                                  \
    }                                                                                              \
    if (nteams_ > 1) openblas_set_num_threads(blas_threads_);                                      \
  } while (0)

/* Images [*i0, *i1) of the batch that a team owns: a contiguous run of whole chunks. */
static void team_range(const lt_conv_geom *g, const conv_plan *p, int team, int *i0, int *i1) {
  const int c0 = (int)((int64_t)p->chunks * team / p->teams);
  const int c1 = (int)((int64_t)p->chunks * (team + 1) / p->teams);
  *i0 = c0 * p->nb < g->n ? c0 * p->nb : g->n;
  *i1 = c1 * p->nb < g->n ? c1 * p->nb : g->n;
}

/* y[i0:i1] [+]= conv(x[i0:i1], w) + b, in chunks of at most p->nb images. */
static void fwd_range(const lt_conv_geom *g, const conv_plan *p, int i0, int i1, const float *x,
                      const float *w, const float *b, float *y, int accumulate,
                      const lt_conv_epi *epi, float *col, float *prod) {
  const int G = g->groups, cg = g->c / G, sg = g->s / G, kk = g->kh * g->kw;
  const size_t hw = (size_t)g->h * g->w, ohw = (size_t)g->oh * g->ow;
  for (int a = i0; a < i1; a += p->nb) {
    const int nb = i1 - a < p->nb ? i1 - a : p->nb, ncols = (int)(nb * ohw);
    im2col(g, nb, x + (size_t)a * g->c * hw, col);
    for (int gr = 0; gr < G; gr++)
      lt_cpu_gemm(0, 0, sg, ncols, cg * kk, 1.0f, w + (size_t)gr * sg * cg * kk, cg * kk,
                  col + (size_t)gr * cg * kk * ncols, ncols, 0.0f, prod + (size_t)gr * sg * ncols,
                  ncols);
    cm_to_nchw(nb, g->s, ohw, prod, b, y + (size_t)a * g->s * ohw, accumulate, epi,
               (size_t)a * g->s * ohw);
  }
}

/* dx[i0:i1] [+]= convᵀ(dy[i0:i1], w). */
static void bwd_data_range(const lt_conv_geom *g, const conv_plan *p, int i0, int i1,
                           const float *dy, const float *w, float *dx, int accumulate, float *col,
                           float *prod) {
  const int G = g->groups, cg = g->c / G, sg = g->s / G, kk = g->kh * g->kw;
  const size_t hw = (size_t)g->h * g->w, ohw = (size_t)g->oh * g->ow;
  for (int a = i0; a < i1; a += p->nb) {
    const int nb = i1 - a < p->nb ? i1 - a : p->nb, ncols = (int)(nb * ohw);
    nchw_to_cm(nb, g->s, ohw, dy + (size_t)a * g->s * ohw, prod);
    for (int gr = 0; gr < G; gr++)
      lt_cpu_gemm(1, 0, cg * kk, ncols, sg, 1.0f, w + (size_t)gr * sg * cg * kk, cg * kk,
                  prod + (size_t)gr * sg * ncols, ncols, 0.0f, col + (size_t)gr * cg * kk * ncols,
                  ncols);
    col2im(g, nb, col, dx + (size_t)a * g->c * hw, accumulate);
  }
}

/* dw [+]= dy[i0:i1] ⋆ x[i0:i1]. */
static void bwd_filter_range(const lt_conv_geom *g, const conv_plan *p, int i0, int i1,
                             const float *x, const float *dy, float *dw, int accumulate,
                             float *col, float *prod) {
  const int G = g->groups, cg = g->c / G, sg = g->s / G, kk = g->kh * g->kw;
  const size_t hw = (size_t)g->h * g->w, ohw = (size_t)g->oh * g->ow;
  for (int a = i0; a < i1; a += p->nb) {
    const int nb = i1 - a < p->nb ? i1 - a : p->nb, ncols = (int)(nb * ohw);
    im2col(g, nb, x + (size_t)a * g->c * hw, col);
    nchw_to_cm(nb, g->s, ohw, dy + (size_t)a * g->s * ohw, prod);
    for (int gr = 0; gr < G; gr++)
      lt_cpu_gemm(0, 1, sg, cg * kk, ncols, 1.0f, prod + (size_t)gr * sg * ncols, ncols,
                  col + (size_t)gr * cg * kk * ncols, ncols, (accumulate || a > i0) ? 1.0f : 0.0f,
                  dw + (size_t)gr * sg * cg * kk, cg * kk);
  }
}

/* y [+]= conv(x, w) + b, then the epilogue (may be NULL). */
static void conv_fwd(const lt_conv_geom *g, const float *x, const float *w, const float *b,
                     float *y, int accumulate, int infer, const lt_conv_epi *epi, void *ws) {
  const int G = g->groups, cg = g->c / G, sg = g->s / G;
  const size_t hw = (size_t)g->h * g->w;
  if (is_depthwise(g)) {
    dw_fwd(g, x, w, b, y, accumulate);
    epi_pass(epi, y, (size_t)g->n * g->s * g->oh * g->ow);
    return;
  }
  /* inference forwards: direct kernels first, unless a Winograd mode is forced (tests,
   * benchmarks) and takes the convolution. Training keeps the paths below: with the direct
   * kernels on ResNet-20's first convolution (3->16) engine.ref_resnet20_matches_pytorch's
   * parameter gradients moved by 1.7% (tolerance 2e-4), though its logits stayed within 5e-7 */
  const int wm = lt_cpu_winograd_mode();
  if (infer && !(wm != LT_WINOGRAD_AUTO && lt_cpu_winograd_active(g)) &&
      !lt_cpu_direct_fwd(g, x, w, b, y, accumulate, ws, ws ? lt_cpu_conv2d_workspace(g) : 0,
                         epi))
    return;
  if (is_pointwise(g)) {
    /* y[img] (s, hw) = w (s, c) · x[img] (c, hw), per group */
    for (int img = 0; img < g->n; img++)
      for (int gr = 0; gr < G; gr++)
        lt_cpu_gemm(0, 0, sg, (int)hw, cg, 1.0f, w + (size_t)gr * sg * cg, cg,
                    x + ((size_t)img * g->c + (size_t)gr * cg) * hw, (int)hw,
                    accumulate ? 1.0f : 0.0f, y + ((size_t)img * g->s + (size_t)gr * sg) * hw,
                    (int)hw);
    if (b || epi) {
#pragma omp parallel for collapse(2) schedule(static)
      for (int img = 0; img < g->n; img++)
        for (int ch = 0; ch < g->s; ch++) {
          float *restrict p = y + ((size_t)img * g->s + ch) * hw;
          const float bias = b ? b[ch] : 0.0f;
          for (size_t i = 0; i < hw; i++)
            p[i] += bias;
          lt_conv_epi_apply(epi, p, ((size_t)img * g->s + ch) * hw, hw);
        }
    }
    return;
  }
  if (lt_cpu_winograd_active(g)) {
    lt_cpu_winograd_fwd(g, x, w, b, y, accumulate, infer, epi, ws);
    return;
  }
  const conv_plan p = plan_teams(g);
  CONV_TEAMS(p.teams, t, {
    int i0, i1;
    team_range(g, &p, t, &i0, &i1);
    float *col = (float *)ws + (size_t)t * p.team_floats;
    fwd_range(g, &p, i0, i1, x, w, b, y, accumulate, epi, col, col + p.col_floats);
  });
}

/* dx [+]= convᵀ(dy, w). */
static void conv_bwd_data(const lt_conv_geom *g, const float *dy, const float *w, float *dx,
                          int accumulate, void *ws) {
  const int G = g->groups, cg = g->c / G, sg = g->s / G;
  const size_t hw = (size_t)g->h * g->w;
  if (is_depthwise(g)) {
    dw_bwd_data(g, dy, w, dx, accumulate);
    return;
  }
  if (is_pointwise(g)) {
    /* dx[img] (c, hw) = wᵀ (c, s) · dy[img] (s, hw), per group */
    for (int img = 0; img < g->n; img++)
      for (int gr = 0; gr < G; gr++)
        lt_cpu_gemm(1, 0, cg, (int)hw, sg, 1.0f, w + (size_t)gr * sg * cg, cg,
                    dy + ((size_t)img * g->s + (size_t)gr * sg) * hw, (int)hw,
                    accumulate ? 1.0f : 0.0f, dx + ((size_t)img * g->c + (size_t)gr * cg) * hw,
                    (int)hw);
    return;
  }
  if (lt_cpu_winograd_active(g)) {
    lt_cpu_winograd_bwd_data(g, dy, w, dx, accumulate, ws);
    return;
  }
  const conv_plan p = plan_teams(g);
  CONV_TEAMS(p.teams, t, {
    int i0, i1;
    team_range(g, &p, t, &i0, &i1);
    float *col = (float *)ws + (size_t)t * p.team_floats;
    bwd_data_range(g, &p, i0, i1, dy, w, dx, accumulate, col, col + p.col_floats);
  });
}

/* dw [+]= dy ⋆ x (no bias: callers reduce the right tensor for it). With several teams each
 * forms the product of its images in its own slice, and one pass sums the slices in team order
 * (fixed, so the result does not depend on scheduling). */
static void conv_bwd_filter(const lt_conv_geom *g, const float *x, const float *dy, float *dw,
                            int accumulate, void *ws) {
  const int G = g->groups, cg = g->c / G, sg = g->s / G;
  const size_t hw = (size_t)g->h * g->w;
  if (is_depthwise(g)) {
    dw_bwd_filter(g, x, dy, dw, accumulate);
    return;
  }
  if (is_pointwise(g)) {
    /* dw (s, c) += dy[img] (s, hw) · x[img]ᵀ (hw, c), per group */
    for (int img = 0; img < g->n; img++)
      for (int gr = 0; gr < G; gr++)
        lt_cpu_gemm(0, 1, sg, cg, (int)hw, 1.0f, dy + ((size_t)img * g->s + (size_t)gr * sg) * hw,
                    (int)hw, x + ((size_t)img * g->c + (size_t)gr * cg) * hw, (int)hw,
                    (accumulate || img > 0) ? 1.0f : 0.0f, dw + (size_t)gr * sg * cg, cg);
    return;
  }
  if (lt_cpu_winograd_active(g)) {
    lt_cpu_winograd_bwd_filter(g, x, dy, dw, accumulate, ws);
    return;
  }
  const conv_plan p = plan_teams(g);
  if (p.teams == 1) {
    bwd_filter_range(g, &p, 0, g->n, x, dy, dw, accumulate, ws, (float *)ws + p.col_floats);
    return;
  }
  const size_t col_prod = p.team_floats - p.dw_floats;
  CONV_TEAMS(p.teams, t, {
    int i0, i1;
    team_range(g, &p, t, &i0, &i1);
    float *col = (float *)ws + (size_t)t * p.team_floats;
    bwd_filter_range(g, &p, i0, i1, x, dy, col + col_prod, 0, col, col + p.col_floats);
  });
  const float *part = (const float *)ws + col_prod;
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < p.dw_floats; i++) {
    float acc = accumulate ? dw[i] : 0.0f;
    for (int t = 0; t < p.teams; t++)
      acc += part[(size_t)t * p.team_floats + i];
    dw[i] = acc;
  }
}

void lt_cpu_conv2d_fwd(const lt_conv_geom *g, const float *x, const float *w, const float *b,
                       float *y, void *ws) {
  conv_fwd(g, x, w, b, y, 0, 0, NULL, ws);
}

void lt_cpu_conv2d_fwd_infer(const lt_conv_geom *g, const float *x, const float *w, const float *b,
                             float *y, void *ws) {
  conv_fwd(g, x, w, b, y, 0, 1, NULL, ws);
}

void lt_cpu_conv2d_fwd_infer_epi(const lt_conv_geom *g, const float *x, const float *w,
                                 const float *b, const lt_conv_epi *epi, float *y, void *ws) {
  conv_fwd(g, x, w, b, y, 0, 1, epi && (epi->res || epi->relu) ? epi : NULL, ws);
}

void lt_cpu_conv2d_bwd_data(const lt_conv_geom *g, const float *dy, const float *w, float *dx,
                            int accumulate, void *ws) {
  if (dx) conv_bwd_data(g, dy, w, dx, accumulate, ws);
}

void lt_cpu_conv2d_bwd_filter(const lt_conv_geom *g, const float *x, const float *dy, float *dw,
                              float *db, int accumulate, void *ws) {
  if (dw) conv_bwd_filter(g, x, dy, dw, accumulate, ws);
  if (db) channel_sum(g->n, g->s, (size_t)g->oh * g->ow, dy, db, accumulate);
}

/* ---- conv_transpose2d ---------------------------------------------------------------------- */

/* The conv2d whose backward data is this conv_transpose2d: its input is our output (n, s, oh, ow),
 * its output is our input (n, c, h, w), and our weight (c, s/groups, kh, kw) is its weight
 * (out = c, in/groups = s/groups). Output padding only enlarges the conv2d's input, so its output
 * size is our h, w (set directly: the floor formula could disagree when output padding is used). */
static lt_conv_geom mirror_geom(const lt_conv_geom *g) {
  lt_conv_geom m = *g;
  m.c = g->s;
  m.h = g->oh;
  m.w = g->ow;
  m.s = g->c;
  m.oh = g->h;
  m.ow = g->w;
  m.out_pad_h = m.out_pad_w = 0;
  return m;
}

size_t lt_cpu_conv_transpose2d_workspace(const lt_conv_geom *g) {
  lt_conv_geom m = mirror_geom(g);
  return lt_cpu_conv2d_workspace(&m);
}

void lt_cpu_conv_transpose2d_fwd(const lt_conv_geom *g, const float *x, const float *w,
                                 const float *b, float *y, void *ws) {
  lt_conv_geom m = mirror_geom(g);
  conv_bwd_data(&m, x, w, y, 0, ws);
  if (b) {
    const size_t ohw = (size_t)g->oh * g->ow;
#pragma omp parallel for collapse(2) schedule(static)
    for (int img = 0; img < g->n; img++)
      for (int ch = 0; ch < g->s; ch++) {
        float *restrict p = y + ((size_t)img * g->s + ch) * ohw;
        for (size_t i = 0; i < ohw; i++)
          p[i] += b[ch];
      }
  }
}

void lt_cpu_conv_transpose2d_bwd_data(const lt_conv_geom *g, const float *dy, const float *w,
                                      float *dx, int accumulate, void *ws) {
  lt_conv_geom m = mirror_geom(g);
  if (dx) conv_fwd(&m, dy, w, NULL, dx, accumulate, 0, NULL, ws);
}

void lt_cpu_conv_transpose2d_bwd_filter(const lt_conv_geom *g, const float *x, const float *dy,
                                        float *dw, float *db, int accumulate, void *ws) {
  lt_conv_geom m = mirror_geom(g);
  if (dw) conv_bwd_filter(&m, dy, x, dw, accumulate, ws);
  if (db) channel_sum(g->n, g->s, (size_t)g->oh * g->ow, dy, db, accumulate);
}

/* ---- linear -------------------------------------------------------------------------------- */

void lt_cpu_linear_fwd(int n, int k, int m, const float *x, const float *w, const float *b,
                       float *y) {
  /* y (n, m) = x (n, k) · wᵀ (k, m) */
  lt_cpu_gemm(0, 1, n, m, k, 1.0f, x, k, w, k, 0.0f, y, m);
  if (b) {
#pragma omp parallel for schedule(static)
    for (int i = 0; i < n; i++)
      for (int j = 0; j < m; j++)
        y[(size_t)i * m + j] += b[j];
  }
}

void lt_cpu_linear_bwd(int n, int k, int m, const float *x, const float *w, const float *dy,
                       float *dx, float *dw, float *db, int accumulate) {
  const float beta = accumulate ? 1.0f : 0.0f;
  if (dx) lt_cpu_gemm(0, 0, n, k, m, 1.0f, dy, m, w, k, beta, dx, k); /* (n,m)·(m,k) */
  if (dw) lt_cpu_gemm(1, 0, m, k, n, 1.0f, dy, m, x, k, beta, dw, k); /* (m,n)·(n,k) */
  if (db) {
#pragma omp parallel for schedule(static)
    for (int j = 0; j < m; j++) {
      double acc = 0.0;
      for (int i = 0; i < n; i++)
        acc += dy[(size_t)i * m + j];
      db[j] = accumulate ? db[j] + (float)acc : (float)acc;
    }
  }
}
