/* Pooling and upsampling kernels on the CPU, PyTorch semantics: max pooling pads with -inf and
 * propagates NaN, average pooling divides by the window clipped to the padded input
 * (count_include_pad) or to the input, ceil_mode drops a last window that would start in the
 * right padding. Every kernel is parallel over (image, channel) planes, so the backward scatters
 * need no atomics.
 */
#include "backend/cpu/kernels.h"

#include <math.h>
#include <string.h>

/* PyTorch's pooling_output_shape, with the begin pad for the "starts inside" rule. */
static int pool_out(int in, int k, int stride, int pad_b, int pad_e, int dil, int ceil_mode) {
  int span = in + pad_b + pad_e - dil * (k - 1) - 1;
  if (span < 0) return 0;
  int out = (span + (ceil_mode ? stride - 1 : 0)) / stride + 1;
  if (ceil_mode && (out - 1) * stride >= in + pad_b) out--;
  return out;
}

int lt_pool_geom_finish(lt_pool_geom *g) {
  if (g->n <= 0 || g->c <= 0 || g->h <= 0 || g->w <= 0 || g->kh <= 0 || g->kw <= 0 ||
      g->stride_h <= 0 || g->stride_w <= 0 || g->dil_h <= 0 || g->dil_w <= 0 || g->pad_t < 0 ||
      g->pad_l < 0 || g->pad_b < 0 || g->pad_r < 0)
    return -1;
  if (g->kh * g->kw > 256) return -1; /* the argmax is one byte */
  g->oh = pool_out(g->h, g->kh, g->stride_h, g->pad_t, g->pad_b, g->dil_h, g->ceil_mode);
  g->ow = pool_out(g->w, g->kw, g->stride_w, g->pad_l, g->pad_r, g->dil_w, g->ceil_mode);
  return g->oh > 0 && g->ow > 0 ? 0 : -1;
}

/* ---- max pooling --------------------------------------------------------------------------- */

void lt_cpu_maxpool_fwd(const lt_pool_geom *g, const float *x, float *y, uint8_t *argmax) {
  const int h = g->h, w = g->w, oh = g->oh, ow = g->ow;
  const int planes = g->n * g->c;
#pragma omp parallel for schedule(static)
  for (int p = 0; p < planes; p++) {
    const float *restrict xp = x + (size_t)p * h * w;
    float *restrict yp = y + (size_t)p * oh * ow;
    uint8_t *ap = argmax ? argmax + (size_t)p * oh * ow : NULL;
    for (int oy = 0; oy < oh; oy++)
      for (int ox = 0; ox < ow; ox++) {
        const int y0 = oy * g->stride_h - g->pad_t, x0 = ox * g->stride_w - g->pad_l;
        float best = -INFINITY;
        int besti = -1;
        for (int ki = 0; ki < g->kh; ki++) {
          const int iy = y0 + ki * g->dil_h;
          if (iy < 0 || iy >= h) continue;
          for (int kj = 0; kj < g->kw; kj++) {
            const int ix = x0 + kj * g->dil_w;
            if (ix < 0 || ix >= w) continue;
            const float v = xp[(size_t)iy * w + ix];
            /* the first in-bounds element wins ties and all -inf windows, as in PyTorch */
            if (besti < 0 || v > best || isnan(v)) {
              best = v;
              besti = ki * g->kw + kj;
              if (isnan(v)) goto done;
            }
          }
        }
      done:
        yp[oy * ow + ox] = best;
        if (ap) ap[oy * ow + ox] = (uint8_t)(besti < 0 ? 0 : besti);
      }
  }
}

void lt_cpu_maxpool_bwd(const lt_pool_geom *g, const uint8_t *argmax, const float *dy, float *dx,
                        int accumulate) {
  if (!dx) return;
  const int h = g->h, w = g->w, oh = g->oh, ow = g->ow;
  const int planes = g->n * g->c;
#pragma omp parallel for schedule(static)
  for (int p = 0; p < planes; p++) {
    const uint8_t *restrict ap = argmax + (size_t)p * oh * ow;
    const float *restrict dyp = dy + (size_t)p * oh * ow;
    float *restrict dxp = dx + (size_t)p * h * w;
    if (!accumulate) memset(dxp, 0, sizeof(float) * h * w);
    for (int oy = 0; oy < oh; oy++)
      for (int ox = 0; ox < ow; ox++) {
        const int a = ap[oy * ow + ox];
        const int iy = oy * g->stride_h - g->pad_t + (a / g->kw) * g->dil_h;
        const int ix = ox * g->stride_w - g->pad_l + (a % g->kw) * g->dil_w;
        /* a window with no in-bounds element cannot occur for a finished geometry; guard anyway */
        if (iy >= 0 && iy < h && ix >= 0 && ix < w) dxp[(size_t)iy * w + ix] += dyp[oy * ow + ox];
      }
  }
}

void lt_cpu_argmax_pack2(size_t count, const uint8_t *argmax, uint8_t *packed) {
  const size_t nbytes = (count + 3) / 4;
#pragma omp parallel for schedule(static)
  for (size_t b = 0; b < nbytes; b++) {
    uint8_t v = 0;
    for (size_t j = 0; j < 4 && 4 * b + j < count; j++)
      v |= (uint8_t)((argmax[4 * b + j] & 3u) << (2 * j));
    packed[b] = v;
  }
}

void lt_cpu_argmax_unpack2(size_t count, const uint8_t *packed, uint8_t *argmax) {
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < count; i++)
    argmax[i] = (packed[i / 4] >> (2 * (i % 4))) & 3u;
}

/* ---- average pooling ----------------------------------------------------------------------- */

/* The window of output (oy, ox) along one axis: taps t in [t0, t1) are in bounds; `div` is the
 * PyTorch divisor along that axis (taps inside the padded input, or inside the input). */
typedef struct win1 {
  int t0, t1, div;
} win1;

static win1 avg_window(int o, int in, int k, int stride, int pad_b, int pad_e, int dil, int incl) {
  const int start = o * stride - pad_b;
  win1 r = {0, 0, 0};
  int padded = 0;
  for (int t = 0; t < k; t++) {
    const int i = start + t * dil;
    if (i >= -pad_b && i < in + pad_e) padded++;
    if (i < 0) r.t0 = t + 1;
    if (i < in) r.t1 = t + 1;
  }
  if (r.t1 < r.t0) r.t1 = r.t0;
  r.div = incl ? padded : r.t1 - r.t0;
  return r;
}

void lt_cpu_avgpool_fwd(const lt_pool_geom *g, const float *x, float *y) {
  const int h = g->h, w = g->w, oh = g->oh, ow = g->ow;
  const int planes = g->n * g->c;
#pragma omp parallel for schedule(static)
  for (int p = 0; p < planes; p++) {
    const float *restrict xp = x + (size_t)p * h * w;
    float *restrict yp = y + (size_t)p * oh * ow;
    for (int oy = 0; oy < oh; oy++) {
      const win1 wy =
          avg_window(oy, h, g->kh, g->stride_h, g->pad_t, g->pad_b, g->dil_h, g->count_include_pad);
      const int y0 = oy * g->stride_h - g->pad_t;
      for (int ox = 0; ox < ow; ox++) {
        const win1 wx = avg_window(ox, w, g->kw, g->stride_w, g->pad_l, g->pad_r, g->dil_w,
                                   g->count_include_pad);
        const int x0 = ox * g->stride_w - g->pad_l;
        float s = 0.0f;
        for (int ki = wy.t0; ki < wy.t1; ki++)
          for (int kj = wx.t0; kj < wx.t1; kj++)
            s += xp[(size_t)(y0 + ki * g->dil_h) * w + x0 + kj * g->dil_w];
        const int div = wy.div * wx.div;
        yp[oy * ow + ox] = div > 0 ? s / (float)div : 0.0f;
      }
    }
  }
}

void lt_cpu_avgpool_bwd(const lt_pool_geom *g, const float *dy, float *dx, int accumulate) {
  if (!dx) return;
  const int h = g->h, w = g->w, oh = g->oh, ow = g->ow;
  const int planes = g->n * g->c;
#pragma omp parallel for schedule(static)
  for (int p = 0; p < planes; p++) {
    const float *restrict dyp = dy + (size_t)p * oh * ow;
    float *restrict dxp = dx + (size_t)p * h * w;
    if (!accumulate) memset(dxp, 0, sizeof(float) * h * w);
    for (int oy = 0; oy < oh; oy++) {
      const win1 wy =
          avg_window(oy, h, g->kh, g->stride_h, g->pad_t, g->pad_b, g->dil_h, g->count_include_pad);
      const int y0 = oy * g->stride_h - g->pad_t;
      for (int ox = 0; ox < ow; ox++) {
        const win1 wx = avg_window(ox, w, g->kw, g->stride_w, g->pad_l, g->pad_r, g->dil_w,
                                   g->count_include_pad);
        const int x0 = ox * g->stride_w - g->pad_l;
        const int div = wy.div * wx.div;
        if (div <= 0) continue;
        const float v = dyp[oy * ow + ox] / (float)div;
        for (int ki = wy.t0; ki < wy.t1; ki++)
          for (int kj = wx.t0; kj < wx.t1; kj++)
            dxp[(size_t)(y0 + ki * g->dil_h) * w + x0 + kj * g->dil_w] += v;
      }
    }
  }
}

void lt_cpu_global_avgpool_fwd(int n, int c, int hw, const float *x, float *y) {
  const int planes = n * c;
#pragma omp parallel for schedule(static)
  for (int p = 0; p < planes; p++) {
    const float *restrict xp = x + (size_t)p * hw;
    float s = 0.0f;
    /* in vector lanes, then across them: one chain of dependent adds per plane would take
     * four times as long as reading the plane */
#pragma omp simd reduction(+ : s)
    for (int i = 0; i < hw; i++)
      s += xp[i];
    y[p] = s / (float)hw;
  }
}

void lt_cpu_global_avgpool_bwd(int n, int c, int hw, const float *dy, float *dx, int accumulate) {
  if (!dx) return;
  const int planes = n * c;
#pragma omp parallel for schedule(static)
  for (int p = 0; p < planes; p++) {
    float *restrict dxp = dx + (size_t)p * hw;
    const float v = dy[p] / (float)hw;
    if (accumulate)
      for (int i = 0; i < hw; i++)
        dxp[i] += v;
    else
      for (int i = 0; i < hw; i++)
        dxp[i] = v;
  }
}

/* ---- upsampling ---------------------------------------------------------------------------- */

/* Source taps of one output coordinate: out = (1-l)*in[i0] + l*in[i1]. Nearest sets l = 0. */
typedef struct tap1 {
  int i0, i1;
  float l;
} tap1;

static tap1 upsample_tap(lt_upsample_mode mode, int align_corners, int in, int out, int o) {
  tap1 t;
  if (mode == LT_UPSAMPLE_NEAREST) {
    /* PyTorch 'nearest': floor(o * (in/out)) in float, clamped */
    const float scale = (float)in / (float)out;
    int i = (int)floorf((float)o * scale);
    if (i > in - 1) i = in - 1;
    t.i0 = t.i1 = i;
    t.l = 0.0f;
    return t;
  }
  float src;
  if (align_corners)
    src = out > 1 ? (float)o * ((float)(in - 1) / (float)(out - 1)) : 0.0f;
  else {
    src = ((float)o + 0.5f) * ((float)in / (float)out) - 0.5f;
    if (src < 0.0f) src = 0.0f;
  }
  int i0 = (int)src;
  if (i0 > in - 1) i0 = in - 1;
  t.i0 = i0;
  t.i1 = i0 + (i0 < in - 1 ? 1 : 0);
  t.l = src - (float)i0;
  return t;
}

void lt_cpu_upsample_fwd(lt_upsample_mode mode, int align_corners, int n, int c, int h, int w,
                         int oh, int ow, const float *x, float *y) {
  const int planes = n * c;
#pragma omp parallel for schedule(static)
  for (int p = 0; p < planes; p++) {
    const float *restrict xp = x + (size_t)p * h * w;
    float *restrict yp = y + (size_t)p * oh * ow;
    for (int oy = 0; oy < oh; oy++) {
      const tap1 ty = upsample_tap(mode, align_corners, h, oh, oy);
      const float *r0 = xp + (size_t)ty.i0 * w, *r1 = xp + (size_t)ty.i1 * w;
      for (int ox = 0; ox < ow; ox++) {
        const tap1 tx = upsample_tap(mode, align_corners, w, ow, ox);
        const float top = (1.0f - tx.l) * r0[tx.i0] + tx.l * r0[tx.i1];
        const float bot = (1.0f - tx.l) * r1[tx.i0] + tx.l * r1[tx.i1];
        yp[(size_t)oy * ow + ox] = (1.0f - ty.l) * top + ty.l * bot;
      }
    }
  }
}

void lt_cpu_upsample_bwd(lt_upsample_mode mode, int align_corners, int n, int c, int h, int w,
                         int oh, int ow, const float *dy, float *dx, int accumulate) {
  if (!dx) return;
  const int planes = n * c;
#pragma omp parallel for schedule(static)
  for (int p = 0; p < planes; p++) {
    const float *restrict dyp = dy + (size_t)p * oh * ow;
    float *restrict dxp = dx + (size_t)p * h * w;
    if (!accumulate) memset(dxp, 0, sizeof(float) * h * w);
    for (int oy = 0; oy < oh; oy++) {
      const tap1 ty = upsample_tap(mode, align_corners, h, oh, oy);
      float *r0 = dxp + (size_t)ty.i0 * w, *r1 = dxp + (size_t)ty.i1 * w;
      for (int ox = 0; ox < ow; ox++) {
        const tap1 tx = upsample_tap(mode, align_corners, w, ow, ox);
        const float v = dyp[(size_t)oy * ow + ox];
        const float vt = (1.0f - ty.l) * v, vb = ty.l * v;
        r0[tx.i0] += (1.0f - tx.l) * vt;
        r0[tx.i1] += tx.l * vt;
        r1[tx.i0] += (1.0f - tx.l) * vb;
        r1[tx.i1] += tx.l * vb;
      }
    }
  }
}
