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
#pragma GCC unroll 8
    for (int v = 0; v < nv; v++)
      acc[o][v] = (dc_v16){0} + (bias ? bias[o] : 0.0f);
  for (int k = 0; k < c; k++) {
    const float *restrict xk = x + k * xcs, *restrict wkp = w + k * wk;
    for (int t = 0; t < nt; t++) {
      dc_v16 xv[DC_NV];
#pragma GCC unroll 8
      for (int v = 0; v < nv; v++)
        xv[v] = DC_V(xk + toff[t] + v * 16);
#pragma GCC unroll 8
      for (int o = 0; o < ob; o++) {
        const float s = wkp[o * wo + t];
#pragma GCC unroll 8
        for (int v = 0; v < nv; v++)
          acc[o][v] += s * xv[v];
      }
    }
  }
  if (res || relu) /* the epilogue (lt_conv_epi): + residual (y's layout), then max(., 0) */
#pragma GCC unroll 8
    for (int o = 0; o < ob; o++)
#pragma GCC unroll 8
      for (int v = 0; v < nv; v++) {
        if (res) acc[o][v] += DC_V(res + o * ycs + v * 16);
        if (relu) acc[o][v] = (dc_v16)((dc_v16i)acc[o][v] & (acc[o][v] > (dc_v16){0}));
      }
#pragma GCC unroll 8
  for (int o = 0; o < ob; o++)
#pragma GCC unroll 8
    for (int v = 0; v < nv; v++)
      DC_V(y + o * ycs + v * 16) = acc[o][v];
}

/* One block for runtime ob and nv: each (ob, nv) pair the ISA allows is its own fully unrolled
 * instance (the others are never asked for: dc_plan keeps ob <= DC_OB, nv <= DC_NV and
 * ob * nv <= DC_ACC). */
static inline __attribute__((always_inline)) void DC_FN(block)(
    int ob, int nv, int c, int nt, const ptrdiff_t *toff, const float *x, ptrdiff_t xcs,
    const float *w, ptrdiff_t wo, ptrdiff_t wk, const float *bias, float *y, ptrdiff_t ycs,
    const float *res, int relu) {
  switch (nv * 16 + ob) {
#define DC_OK(o, v) ((o) <= DC_OB && (v) <= DC_NV && (o) * (v) <= DC_ACC)
#define DC_T(o, v)                                                                                 \
  case (v) * 16 + (o):                                                                             \
    if (DC_OK(o, v))                                                                               \
      DC_FN(tile)(DC_OK(o, v) ? (o) : 1, DC_OK(o, v) ? (v) : 1, c, nt, toff, x, xcs, w, wo, wk,    \
                  bias, y, ycs, res, relu);                                                        \
    break;
#define DC_TV(v)                                                                                   \
  DC_T(1, v) DC_T(2, v) DC_T(3, v) DC_T(4, v) DC_T(5, v) DC_T(6, v) DC_T(7, v) DC_T(8, v)
    DC_TV(1)
    DC_TV(2)
    DC_TV(3)
    DC_TV(4)
    DC_TV(5)
    DC_TV(6)
#undef DC_TV
#undef DC_T
#undef DC_OK
  default: break;
  }
}

/* How a run is blocked: pixel blocks of nv vectors and one of rem (< nv) vectors; for a pixel
 * block of v vectors, the s output channels in nb[v] blocks as even as can be (s % nb of
 * s / nb + 1 channels, the others s / nb). Chosen per run from (npix, s, c * nt) only, so the
 * same geometry always blocks the same way (and the sum of each output element runs over k, t
 * in the same order in any block). The cost model, in half cycles per reduction step of a
 * block: ob * nv multiply-adds at two per cycle, 2 * nv + ob loads (the unaligned pixel loads
 * mostly split cache lines) at two per cycle, the four-cycle add latency; per block, the stores
 * and the set-up. */
static int DC_FN(och_blocks)(int s, int v) {
  int most = DC_ACC / v;
  if (most > DC_OB) most = DC_OB;
  return (s + most - 1) / most;
}

static long DC_FN(cost)(int s, int v, int steps, int nb) {
  long total = 0;
  for (int i = 0; i < nb; i++) {
    const int ob = s / nb + (i < s % nb);
    long step = (long)ob * v;
    if (step < 8) step = 8;
    if (2 * v + ob > step) step = 2 * v + ob;
    total += step * steps + 2L * ob * v + 24;
  }
  return total;
}

static void DC_FN(plan)(dc_plan *best, int npix, int s, int steps) {
  const int nvec = npix / 16;
  long best_cost = -1;
  *best = (dc_plan){1, 0, {0}};
  for (int nv = DC_NV < nvec ? DC_NV : nvec; nv >= 1; nv--) {
    const int rem = nvec % nv, full = nvec / nv;
    const int nbf = DC_FN(och_blocks)(s, nv), nbr = rem ? DC_FN(och_blocks)(s, rem) : 0;
    const long cost =
        full * DC_FN(cost)(s, nv, steps, nbf) + (rem ? DC_FN(cost)(s, rem, steps, nbr) : 0);
    if (best_cost < 0 || cost < best_cost) {
      best_cost = cost;
      best->nv = nv, best->rem = rem;
      for (int v = 1; v <= DC_NV; v++) best->nb[v] = DC_FN(och_blocks)(s, v);
    }
  }
}

/* All s output channels for nv pixel vectors, in nb blocks. */
static inline __attribute__((always_inline)) void DC_FN(cols)(
    int nv, int nb, int s, int c, int nt, const ptrdiff_t *toff, const float *x, ptrdiff_t xcs,
    const float *w, ptrdiff_t wo, ptrdiff_t wk, const float *bias, float *y, ptrdiff_t ycs,
    const float *res, int relu) {
  int o = 0;
  for (int i = 0; i < nb; i++) {
    const int ob = s / nb + (i < s % nb);
    DC_FN(block)(ob, nv, c, nt, toff, x, xcs, w + o * wo, wo, wk, bias ? bias + o : NULL,
                 y + o * ycs, ycs, res ? res + o * ycs : NULL, relu);
    o += ob;
  }
}

/* y (s, npix) for one run of npix pixels (a multiple of 16) blocked by pl, DC_FN(plan)'s answer
 * for (npix, s, c * nt): blocks of pl->nv vectors, then one of pl->rem. x and y point at the
 * run's first pixel; every load of x stays within npix pixels of the start plus the taps'
 * offsets (callers guarantee that much readable memory). res (NULL: none; laid out as y) is
 * added and relu applied to the sums before they are stored. */
static void DC_FN(run)(const dc_plan *pl, int npix, int s, int c, int nt, const ptrdiff_t *toff,
                       const float *x, ptrdiff_t xcs, const float *w, ptrdiff_t wo, ptrdiff_t wk,
                       const float *bias, float *y, ptrdiff_t ycs, const float *res, int relu) {
  const int nv = pl->nv, nbv = pl->nb[nv];
  int p = 0;
  for (; p + 16 * nv <= npix; p += 16 * nv)
    DC_FN(cols)(nv, nbv, s, c, nt, toff, x + p, xcs, w, wo, wk, bias, y + p, ycs,
                res ? res + p : NULL, relu);
  if (pl->rem)
    DC_FN(cols)(pl->rem, pl->nb[pl->rem], s, c, nt, toff, x + p, xcs, w, wo, wk, bias, y + p, ycs,
                res ? res + p : NULL, relu);
}
