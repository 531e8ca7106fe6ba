/* The vectorised part of the direct convolutions (kernels_direct.c), written once with GCC vector
 * extensions and compiled once per instruction set: kernels_direct.c includes this file several
 * times, each inside a `#pragma GCC target` region, with DC_FN(name) giving the functions a
 * per-ISA suffix. DC_NV is the widest pixel block in 16-float vectors and DC_OB how many output
 * channels one micro-kernel call keeps in registers (DC_OB * DC_NV accumulators: 24 zmm registers
 * on AVX-512; on AVX2 a dc_v16 is two ymm registers, on the portable build four xmm). */

/* y (ob, 16*nv) = bias + Σ_k Σ_t w(o, k, t) · x(k, pixels + toff[t]) for ob output channels and
 * nv 16-pixel vectors: x's channel k starts at x + k*xcs (unaligned loads), the weight of output
 * o, reduction channel k and tap t is w[o*wo + k*wk + t], y's output o starts at y + o*ycs.
 * ob and nv are constants at every call, so the accumulators live in registers. The sum runs
 * over k, then t, in that order for every output element, whatever the block it falls in. */
static inline __attribute__((always_inline)) void DC_FN(tile)(
    const int ob, const int nv, int c, int nt, const ptrdiff_t *restrict toff,
    const float *restrict x, ptrdiff_t xcs, const float *restrict w, ptrdiff_t wo, ptrdiff_t wk,
    const float *restrict bias, float *restrict y, ptrdiff_t ycs, const float *restrict res,
    int relu) {
  dc_v16 acc[DC_OB][DC_NV];
#pragma GCC unroll 8
  for (int o = 0; o < ob; o++)
#pragma GCC unroll 4
    for (int v = 0; v < nv; v++)
      acc[o][v] = (dc_v16){0} + (bias ? bias[o] : 0.0f);
  for (int k = 0; k < c; k++) {
    const float *restrict xk = x + k * xcs, *restrict wkp = w + k * wk;
    for (int t = 0; t < nt; t++) {
      dc_v16 xv[DC_NV];
#pragma GCC unroll 4
      for (int v = 0; v < nv; v++)
        xv[v] = DC_V(xk + toff[t] + v * 16);
#pragma GCC unroll 8
      for (int o = 0; o < ob; o++) {
        const float s = wkp[o * wo + t];
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++)
          acc[o][v] += s * xv[v];
      }
    }
  }
  if (res || relu) /* the epilogue (lt_conv_epi): + residual (y's layout), then max(., 0) */
#pragma GCC unroll 8
    for (int o = 0; o < ob; o++)
#pragma GCC unroll 4
      for (int v = 0; v < nv; v++) {
        if (res) acc[o][v] += DC_V(res + o * ycs + v * 16);
        if (relu) acc[o][v] = (dc_v16)((dc_v16i)acc[o][v] & (acc[o][v] > (dc_v16){0}));
      }
#pragma GCC unroll 8
  for (int o = 0; o < ob; o++)
#pragma GCC unroll 4
    for (int v = 0; v < nv; v++)
      DC_V(y + o * ycs + v * 16) = acc[o][v];
}

/* All s output channels for nv pixel vectors: blocks of DC_OB channels and one shorter block. */
static inline __attribute__((always_inline)) void DC_FN(cols)(
    const int nv, int s, int c, int nt, const ptrdiff_t *toff, const float *x, ptrdiff_t xcs,
    const float *w, ptrdiff_t wo, ptrdiff_t wk, const float *bias, float *y, ptrdiff_t ycs,
    const float *res, int relu) {
  int o = 0;
  for (; o + DC_OB <= s; o += DC_OB)
    DC_FN(tile)(DC_OB, nv, c, nt, toff, x, xcs, w + o * wo, wo, wk, bias ? bias + o : NULL,
                y + o * ycs, ycs, res ? res + o * ycs : NULL, relu);
  const float *wr = w + o * wo, *br = bias ? bias + o : NULL, *rr = res ? res + o * ycs : NULL;
  float *yr = y + o * ycs;
  switch (s - o) { /* the remaining channels, each count its own fully unrolled kernel */
  case 0: break;
#define DC_REST(r)                                                                                 \
  case r:                                                                                          \
    if (r < DC_OB)                                                                                 \
      DC_FN(tile)(r < DC_OB ? r : 1, nv, c, nt, toff, x, xcs, wr, wo, wk, br, yr, ycs, rr, relu);  \
    break;
    DC_REST(1)
    DC_REST(2)
    DC_REST(3)
    DC_REST(4)
    DC_REST(5)
    DC_REST(6)
    DC_REST(7)
#undef DC_REST
  default: break;
  }
}

/* y (s, 16*nvec + tail) for one run of npix pixels: whole blocks of DC_NV vectors, then single
 * vectors. x and y point at the run's first pixel; every load of x stays within npix + 16 * ceil
 * pixels of the start (callers guarantee that much readable memory, or pass npix a multiple of
 * 16 and handle the rest themselves). npix must be a multiple of 16. res (NULL: none; laid out
 * as y) is added and relu applied to the sums before they are stored. */
static void DC_FN(run)(int npix, int s, int c, int nt, const ptrdiff_t *toff, const float *x,
                       ptrdiff_t xcs, const float *w, ptrdiff_t wo, ptrdiff_t wk,
                       const float *bias, float *y, ptrdiff_t ycs, const float *res, int relu) {
  int p = 0;
  for (; p + 16 * DC_NV <= npix; p += 16 * DC_NV)
    DC_FN(cols)(DC_NV, s, c, nt, toff, x + p, xcs, w, wo, wk, bias, y + p, ycs,
                res ? res + p : NULL, relu);
  for (; p + 16 <= npix; p += 16)
    DC_FN(cols)(1, s, c, nt, toff, x + p, xcs, w, wo, wk, bias, y + p, ycs, res ? res + p : NULL,
                relu);
}
