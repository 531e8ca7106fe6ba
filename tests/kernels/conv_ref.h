/* Shared by the convolution kernel tests (test_winograd.c, test_direct.c): random inputs, a
 * brute-force convolution in double precision over any lt_conv_geom (groups 1), and the error
 * measure |got - ref| relative to max(1, rms(ref)). */
#ifndef LATHE_TESTS_CONV_REF_H
#define LATHE_TESTS_CONV_REF_H

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cpu/kernels.h"
#include "lathe/core.h"

static lt_rng rng;

static inline float *randn(size_t n, float scale) {
  float *p = malloc(n * sizeof(float) + 4);
  for (size_t i = 0; i < n; i++) p[i] = scale * lt_rng_normal(&rng);
  return p;
}

/* y = conv(x, w) + b in double; with dy, also dx = convᵀ(dy, w) and dw = dy ⋆ x. */
static inline void conv_ref(const lt_conv_geom *g, const float *x, const float *w, const float *b,
                            const float *dy, double *y, double *dx, double *dw) {
  const int C = g->c, S = g->s, H = g->h, W = g->w, OH = g->oh, OW = g->ow, KH = g->kh, KW = g->kw;
  if (dy) {
    memset(dx, 0, sizeof(double) * g->n * C * H * W);
    memset(dw, 0, sizeof(double) * S * C * KH * KW);
  }
  for (int n = 0; n < g->n; n++)
    for (int s = 0; s < S; s++)
      for (int oy = 0; oy < OH; oy++)
        for (int ox = 0; ox < OW; ox++) {
          const size_t yi = (((size_t)n * S + s) * OH + oy) * OW + ox;
          double acc = b ? b[s] : 0.0;
          for (int c = 0; c < C; c++)
            for (int ki = 0; ki < KH; ki++)
              for (int kj = 0; kj < KW; kj++) {
                const int iy = oy * g->stride_h + ki * g->dil_h - g->pad_t,
                          ix = ox * g->stride_w + kj * g->dil_w - g->pad_l;
                if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                const size_t xi = (((size_t)n * C + c) * H + iy) * W + ix;
                const size_t wi = (((size_t)s * C + c) * KH + ki) * KW + kj;
                acc += (double)x[xi] * w[wi];
                if (dy) {
                  dx[xi] += (double)dy[yi] * w[wi];
                  dw[wi] += (double)dy[yi] * x[xi];
                }
              }
          y[yi] = acc;
        }
}

static inline double rms(const double *r, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; i++) s += r[i] * r[i];
  return n ? sqrt(s / n) : 0;
}

/* Worst |got - (ref + add)| / max(1, rms(ref)); add may be NULL. NaN in got propagates. */
static inline double err(const float *got, const double *ref, size_t n, const float *add) {
  const double r = rms(ref, n);
  double worst = 0;
  for (size_t i = 0; i < n; i++) {
    const double e = fabs(got[i] - (ref[i] + (add ? add[i] : 0.0)));
    if (!(e <= worst)) worst = e;
  }
  return worst / (r > 1 ? r : 1);
}

#endif
