/* The vectorised parts of the Winograd convolution (kernels_winograd.c), written once with GCC
 * vector extensions and compiled once per instruction set: kernels_winograd.c includes this file
 * several times, each time inside a `#pragma GCC target` region and with WG_FN(name) giving the
 * functions a per-ISA suffix. WG_ACC is how many 16-float accumulators one micro-kernel call
 * keeps (16 on AVX-512, where a wg_v16 is one zmm register; fewer where it is two ymm or four xmm
 * registers) and WG_NVMAX the widest column block in 16-float vectors.
 *
 * Layouts (see kernels_winograd.c): V (nf, tp, cp), M (nf, tp, sp) with frequency stride
 * WG_FSTRIDE, U (nf, cp, sp), xt
 * (nb, hp, wp, cp), channels innermost and padded to multiples of 16, so every access below is
 * a whole aligned wg_v16.
 *
 * memset and memcpy are written as __builtin_memset and __builtin_memcpy: where the C library
 * fortifies them (_FORTIFY_SOURCE, on by default in Ubuntu's gcc) they are always-inline
 * wrappers built for the whole file's target, which a narrower `GCC target` region (the AVX2 one
 * under -march=native on an AVX-512 machine) cannot inline, and the build fails. */

/* C (m, n) [+]= A (m, k) · B (k, n) for mr rows and nv 16-float column vectors: A's element
 * (i, kk) is a[i*sam + kk*sak] (broadcast), B and C are row-major with leading dimensions ldb,
 * ldc. mr and nv are constants at every call, so the accumulators live in registers. */
static inline __attribute__((always_inline)) void WG_FN(kern)(const int mr, const int nv, int k,
                                                             const float *restrict a,
                                                             ptrdiff_t sam, ptrdiff_t sak,
                                                             const float *restrict b,
                                                             ptrdiff_t ldb, float *restrict c,
                                                             ptrdiff_t ldc, int accumulate) {
  wg_v16 acc[16][4];
#pragma GCC unroll 16
  for (int r = 0; r < mr; r++)
#pragma GCC unroll 4
    for (int v = 0; v < nv; v++)
      acc[r][v] = accumulate ? WG_V(c + r * ldc + v * 16) : (wg_v16){0};
  for (int kk = 0; kk < k; kk++) {
    wg_v16 bv[4];
    const float *restrict bk = b + kk * ldb, *restrict ak = a + kk * sak;
#pragma GCC unroll 4
    for (int v = 0; v < nv; v++)
      bv[v] = WG_V(bk + v * 16);
#pragma GCC unroll 16
    for (int r = 0; r < mr; r++) {
      const float av = ak[r * sam];
#pragma GCC unroll 4
      for (int v = 0; v < nv; v++)
        acc[r][v] += av * bv[v];
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < mr; r++)
#pragma GCC unroll 4
    for (int v = 0; v < nv; v++)
      WG_V(c + r * ldc + v * 16) = acc[r][v];
}

/* C (m, n) [+]= A (m, k) · B (k, n), m a multiple of 16, n a multiple of 16 (A strided as in
 * kern). Column blocks of up to WG_NVMAX vectors, WG_ACC / nv rows per call. */
static void WG_FN(gemm)(int m, int n, int k, const float *a, ptrdiff_t sam, ptrdiff_t sak,
                        const float *b, ptrdiff_t ldb, float *c, ptrdiff_t ldc, int accumulate) {
  for (int n0 = 0; n0 < n;) {
    const int left = (n - n0) / 16;
    const int nv = left >= 4 && WG_NVMAX >= 4 ? 4 : left >= 2 && WG_NVMAX >= 2 ? 2 : 1;
    const float *bn = b + n0;
    float *cn = c + n0;
    if (WG_NVMAX >= 4 && nv == 4) {
      for (int m0 = 0; m0 < m; m0 += WG_ACC / 4)
        WG_FN(kern)(WG_ACC / 4, 4, k, a + m0 * sam, sam, sak, bn, ldb, cn + m0 * ldc, ldc,
                    accumulate);
    } else if (WG_NVMAX >= 2 && nv == 2) {
      for (int m0 = 0; m0 < m; m0 += WG_ACC / 2)
        WG_FN(kern)(WG_ACC / 2, 2, k, a + m0 * sam, sam, sak, bn, ldb, cn + m0 * ldc, ldc,
                    accumulate);
    } else {
      for (int m0 = 0; m0 < m; m0 += WG_ACC)
        WG_FN(kern)(WG_ACC, 1, k, a + m0 * sam, sam, sak, bn, ldb, cn + m0 * ldc, ldc,
                    accumulate);
    }
    n0 += nv * 16;
  }
}

/* Transposes the 16×16 block r (r[i][j] -> r[j][i]) in four rounds of interleaving rows i and
 * i + 8 (the perfect-shuffle transpose). */
static inline __attribute__((always_inline)) void WG_FN(tr16)(wg_v16 r[16]) {
#pragma GCC unroll 4
  for (int k = 0; k < 4; k++) {
    wg_v16 t[16];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) {
      t[2 * i] = __builtin_shufflevector(r[i], r[i + 8], 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21,
                                         6, 22, 7, 23);
      t[2 * i + 1] = __builtin_shufflevector(r[i], r[i + 8], 8, 24, 9, 25, 10, 26, 11, 27, 12, 28,
                                             13, 29, 14, 30, 15, 31);
    }
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++)
      r[i] = t[i];
  }
}

/* xt (nb, hp, wp, cp) = x (nb, c, h, w) placed at row pt, column pl, zero elsewhere (padding,
 * padded channels); input rows and columns beyond xt are not read by any tile and are dropped.
 * Whole 16-channel × 16-column blocks go through tr16, the rest element by element. */
static void WG_FN(to_tiles)(int nb, int c, int h, int w, int cp, int hp, int wp, int pt, int pl,
                            const float *restrict x, float *restrict xt) {
  const int rows = h < hp - pt ? h : hp - pt, cols = w < wp - pl ? w : wp - pl;
  for (int img = 0; img < nb; img++) {
    const float *restrict x0 = x + (size_t)img * c * h * w;
    for (int r = 0; r < hp; r++) {
      float *restrict row = xt + ((size_t)img * hp + r) * wp * cp;
      const int yy = r - pt;
      if (yy < 0 || yy >= rows) {
        __builtin_memset(row, 0, sizeof(float) * (size_t)wp * cp);
        continue;
      }
      __builtin_memset(row, 0, sizeof(float) * (size_t)pl * cp);
      __builtin_memset(row + (size_t)(pl + cols) * cp, 0, sizeof(float) * (size_t)(wp - pl - cols) * cp);
      float *restrict dst = row + (size_t)pl * cp;
      for (int cb = 0; cb < cp; cb += 16) {
        int xx = 0;
        if (cb + 16 <= c)
          for (; xx + 16 <= cols; xx += 16) {
            wg_v16 v[16];
#pragma GCC unroll 16
            for (int l = 0; l < 16; l++)
              __builtin_memcpy(&v[l], x0 + ((size_t)(cb + l) * h + yy) * w + xx, sizeof(wg_v16));
            WG_FN(tr16)(v);
#pragma GCC unroll 16
            for (int j = 0; j < 16; j++)
              WG_V(dst + (size_t)(xx + j) * cp + cb) = v[j];
          }
        for (; xx < cols; xx += 16) {
          /* the last columns, or a partial channel block: through a zeroed 16×16 block */
          const int nx = cols - xx < 16 ? cols - xx : 16, nc = c - cb < 16 ? c - cb : 16;
          float blk[16][16] __attribute__((aligned(64)));
          __builtin_memset(blk, 0, sizeof blk);
          for (int l = 0; l < nc; l++)
            for (int j = 0; j < nx; j++)
              blk[l][j] = x0[((size_t)(cb + l) * h + yy) * w + xx + j];
          wg_v16 v[16];
#pragma GCC unroll 16
          for (int l = 0; l < 16; l++)
            v[l] = WG_V(blk[l]);
          WG_FN(tr16)(v);
          for (int j = 0; j < nx; j++)
            WG_V(dst + (size_t)(xx + j) * cp + cb) = v[j];
        }
      }
    }
  }
}

/* V[ξ][t][:] = (Bᵀ d B)[ξ] for the 4×4 input patch d of every tile t of nb images of xt
 * (F(2×2, 3×3): Bᵀ = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]); rows [t, tp) are zeroed. */
static void WG_FN(in_tf)(const wg_shape *sh, int nb, const float *restrict xt, float *restrict V,
                         int tp) {
  const int cp = sh->cp, wp = sh->wp;
  const ptrdiff_t xs = WG_FSTRIDE(tp, cp);
  int t = 0;
  for (int img = 0; img < nb; img++)
    for (int ty = 0; ty < sh->ty; ty++)
      for (int tx = 0; tx < sh->tx; tx++, t++) {
        const float *restrict base = xt + (((ptrdiff_t)img * sh->hp + 2 * ty) * wp + 2 * tx) * cp;
        float *restrict v = V + (ptrdiff_t)t * cp;
        for (int cb = 0; cb < cp; cb += 16) {
          wg_v16 d[4][4], u[4][4];
#pragma GCC unroll 4
          for (int i = 0; i < 4; i++)
#pragma GCC unroll 4
            for (int j = 0; j < 4; j++)
              d[i][j] = WG_V(base + ((ptrdiff_t)i * wp + j) * cp + cb);
#pragma GCC unroll 4
          for (int j = 0; j < 4; j++) {
            u[0][j] = d[0][j] - d[2][j];
            u[1][j] = d[1][j] + d[2][j];
            u[2][j] = d[2][j] - d[1][j];
            u[3][j] = d[1][j] - d[3][j];
          }
#pragma GCC unroll 4
          for (int i = 0; i < 4; i++) {
            WG_V(v + (4 * i + 0) * xs + cb) = u[i][0] - u[i][2];
            WG_V(v + (4 * i + 1) * xs + cb) = u[i][1] + u[i][2];
            WG_V(v + (4 * i + 2) * xs + cb) = u[i][2] - u[i][1];
            WG_V(v + (4 * i + 3) * xs + cb) = u[i][1] - u[i][3];
          }
        }
      }
  for (int f = 0; f < 16 && t < tp; f++)
    __builtin_memset(V + f * xs + (ptrdiff_t)t * cp, 0, sizeof(float) * (size_t)(tp - t) * cp);
}

/* M'[ξ][t][:] = (A dY Aᵀ)[ξ] for the 2×2 output-gradient block dY of every tile of nb images of
 * dyt (nb, 2*ty, 2*tx, sp) (A = [1 0; 1 1; 1 -1; 0 -1]); rows [t, tp) are zeroed. */
static void WG_FN(dy_tf)(const wg_shape *sh, int nb, const float *restrict dyt,
                         float *restrict M, int tp) {
  const int sp = sh->sp, rw = 2 * sh->tx;
  const ptrdiff_t xs = WG_FSTRIDE(tp, sp);
  int t = 0;
  for (int img = 0; img < nb; img++)
    for (int ty = 0; ty < sh->ty; ty++)
      for (int tx = 0; tx < sh->tx; tx++, t++) {
        const float *restrict base =
            dyt + (((ptrdiff_t)img * 2 * sh->ty + 2 * ty) * rw + 2 * tx) * sp;
        float *restrict m = M + (ptrdiff_t)t * sp;
        for (int sb = 0; sb < sp; sb += 16) {
          const wg_v16 d00 = WG_V(base + sb), d01 = WG_V(base + sp + sb);
          const wg_v16 d10 = WG_V(base + (ptrdiff_t)rw * sp + sb);
          const wg_v16 d11 = WG_V(base + (ptrdiff_t)(rw + 1) * sp + sb);
          wg_v16 e[4][2];
          e[0][0] = d00, e[0][1] = d01;
          e[1][0] = d00 + d10, e[1][1] = d01 + d11;
          e[2][0] = d00 - d10, e[2][1] = d01 - d11;
          e[3][0] = -d10, e[3][1] = -d11;
#pragma GCC unroll 4
          for (int i = 0; i < 4; i++) {
            WG_V(m + (4 * i + 0) * xs + sb) = e[i][0];
            WG_V(m + (4 * i + 1) * xs + sb) = e[i][0] + e[i][1];
            WG_V(m + (4 * i + 2) * xs + sb) = e[i][0] - e[i][1];
            WG_V(m + (4 * i + 3) * xs + sb) = -e[i][1];
          }
        }
      }
  for (int f = 0; f < 16 && t < tp; f++)
    __builtin_memset(M + f * xs + (ptrdiff_t)t * sp, 0, sizeof(float) * (size_t)(tp - t) * sp);
}

/* Rows [oy0, oy0 + m) of image img of y [+]= yrow (m, rw, sp) + b, reordered into NCHW: whole
 * 16-channel × 16-column blocks through tr16, the rest one by one. */
static void WG_FN(scatter)(const wg_shape *sh, int img, int oy0, const float *restrict yrow,
                           int rw, const float *restrict b, float *restrict y, int accumulate) {
  const int sp = sh->sp, oh = sh->oh, ow = sh->ow;
  for (int i = 0; i < sh->m && oy0 + i < oh; i++) {
    float *restrict y0 = y + ((ptrdiff_t)img * sh->s * oh + oy0 + i) * ow;
    const float *restrict src = yrow + (ptrdiff_t)i * rw * sp;
    const ptrdiff_t plane = (ptrdiff_t)oh * ow;
    int s0 = 0;
    for (; s0 + 16 <= sh->s; s0 += 16) {
      int ox = 0;
      for (; ox + 16 <= ow; ox += 16) {
        wg_v16 v[16];
#pragma GCC unroll 16
        for (int j = 0; j < 16; j++)
          v[j] = WG_V(src + (ptrdiff_t)(ox + j) * sp + s0);
        WG_FN(tr16)(v);
#pragma GCC unroll 16
        for (int l = 0; l < 16; l++) {
          float *dst = y0 + (s0 + l) * plane + ox;
          wg_v16 o = v[l] + (b ? b[s0 + l] : 0.0f);
          if (accumulate) {
            wg_v16 old;
            __builtin_memcpy(&old, dst, sizeof old);
            o += old;
          }
          __builtin_memcpy(dst, &o, sizeof o);
        }
      }
      if (ox < ow) {
        /* the last columns: transpose a block padded with zeros, store nx of each row */
        const int nx = ow - ox;
        wg_v16 v[16];
#pragma GCC unroll 16
        for (int j = 0; j < 16; j++)
          v[j] = j < nx ? WG_V(src + (ptrdiff_t)(ox + j) * sp + s0) : (wg_v16){0};
        WG_FN(tr16)(v);
        for (int l = 0; l < 16; l++) {
          float *dst = y0 + (s0 + l) * plane + ox;
          const float bias = b ? b[s0 + l] : 0.0f;
          for (int j = 0; j < nx; j++)
            dst[j] = accumulate ? dst[j] + v[l][j] + bias : v[l][j] + bias;
        }
      }
    }
    for (int s = s0; s < sh->s; s++) {
      const float bias = b ? b[s] : 0.0f;
      float *restrict dst = y0 + s * plane;
      if (accumulate)
        for (int ox = 0; ox < ow; ox++)
          dst[ox] += src[(ptrdiff_t)ox * sp + s] + bias;
      else
        for (int ox = 0; ox < ow; ox++)
          dst[ox] = src[(ptrdiff_t)ox * sp + s] + bias;
    }
  }
}

/* y[img] [+]= Aᵀ M A + b for every tile of nb images (Aᵀ = [1 1 1 0; 0 1 -1 -1]), one tile row at
 * a time through yrow (2, 2*tx, sp), which is then reordered into NCHW y (nb, s, oh, ow). */
static void WG_FN(out_tf)(const wg_shape *sh, int nb, const float *restrict M, int tp,
                          const float *restrict b, float *restrict y, int accumulate,
                          float *restrict yrow) {
  const int sp = sh->sp, rw = 2 * sh->tx;
  const ptrdiff_t xs = WG_FSTRIDE(tp, sp);
  int t = 0;
  for (int img = 0; img < nb; img++)
    for (int ty = 0; ty < sh->ty; ty++) {
      for (int tx = 0; tx < sh->tx; tx++, t++) {
        const float *restrict m = M + (ptrdiff_t)t * sp;
        float *restrict o = yrow + (ptrdiff_t)2 * tx * sp;
        for (int sb = 0; sb < sp; sb += 16) {
          wg_v16 u[2][4];
#pragma GCC unroll 4
          for (int j = 0; j < 4; j++) {
            const wg_v16 m0 = WG_V(m + (0 + j) * xs + sb), m1 = WG_V(m + (4 + j) * xs + sb);
            const wg_v16 m2 = WG_V(m + (8 + j) * xs + sb), m3 = WG_V(m + (12 + j) * xs + sb);
            u[0][j] = m0 + m1 + m2;
            u[1][j] = m1 - m2 - m3;
          }
#pragma GCC unroll 2
          for (int i = 0; i < 2; i++) {
            WG_V(o + (ptrdiff_t)i * rw * sp + sb) = u[i][0] + u[i][1] + u[i][2];
            WG_V(o + ((ptrdiff_t)i * rw + 1) * sp + sb) = u[i][1] - u[i][2] - u[i][3];
          }
        }
      }
      WG_FN(scatter)(sh, img, 2 * ty, yrow, rw, b, y, accumulate);
    }
}

/* ---- F(4×4, 3×3): 6×6 patches, 36 frequencies ---------------------------------------------- */

/* o = Bᵀ d for the 6-point transform, Bᵀ = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0;
 * 0 -2 -1 2 1 0; 0 2 -1 -2 1 0; 0 4 0 -5 0 1]. */
#define WG_BT6(d, o)                                                                               \
  do {                                                                                             \
    const wg_v16 p1_ = d[4] - 4.0f * d[2], p2_ = d[3] - 4.0f * d[1];                               \
    const wg_v16 q1_ = d[4] - d[2], q2_ = 2.0f * (d[3] - d[1]);                                    \
    o[0] = 4.0f * d[0] - 5.0f * d[2] + d[4];                                                       \
    o[1] = p1_ + p2_;                                                                              \
    o[2] = p1_ - p2_;                                                                              \
    o[3] = q1_ + q2_;                                                                              \
    o[4] = q1_ - q2_;                                                                              \
    o[5] = 4.0f * d[1] - 5.0f * d[3] + d[5];                                                       \
  } while (0)

/* V[ξ][t][:] = (Bᵀ d B)[ξ] for the 6×6 patch d of every 4×4 tile; rows [t, tp) zeroed. */
static void WG_FN(in_tf4)(const wg_shape *sh, int nb, const float *restrict xt, float *restrict V,
                          int tp) {
  const int cp = sh->cp, wp = sh->wp;
  const ptrdiff_t xs = WG_FSTRIDE(tp, cp);
  int t = 0;
  for (int img = 0; img < nb; img++)
    for (int ty = 0; ty < sh->ty; ty++)
      for (int tx = 0; tx < sh->tx; tx++, t++) {
        const float *restrict base = xt + (((ptrdiff_t)img * sh->hp + 4 * ty) * wp + 4 * tx) * cp;
        float *restrict v = V + (ptrdiff_t)t * cp;
        for (int cb = 0; cb < cp; cb += 16) {
          wg_v16 u[6][6];
#pragma GCC unroll 6
          for (int j = 0; j < 6; j++) {
            wg_v16 d[6], o[6];
#pragma GCC unroll 6
            for (int i = 0; i < 6; i++)
              d[i] = WG_V(base + ((ptrdiff_t)i * wp + j) * cp + cb);
            WG_BT6(d, o);
#pragma GCC unroll 6
            for (int i = 0; i < 6; i++)
              u[i][j] = o[i];
          }
#pragma GCC unroll 6
          for (int i = 0; i < 6; i++) {
            wg_v16 o[6];
            WG_BT6(u[i], o);
#pragma GCC unroll 6
            for (int j = 0; j < 6; j++)
              WG_V(v + (6 * i + j) * xs + cb) = o[j];
          }
        }
      }
  for (int f = 0; f < 36 && t < tp; f++)
    __builtin_memset(V + f * xs + (ptrdiff_t)t * cp, 0, sizeof(float) * (size_t)(tp - t) * cp);
}

/* y = Aᵀ m for the 6-point transform, Aᵀ = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0;
 * 0 1 -1 8 -8 1]. */
#define WG_AT6(m, y)                                                                               \
  do {                                                                                             \
    const wg_v16 a_ = m[1] + m[2], b_ = m[1] - m[2], c_ = m[3] + m[4], d_ = m[3] - m[4];           \
    y[0] = m[0] + a_ + c_;                                                                         \
    y[1] = b_ + 2.0f * d_;                                                                         \
    y[2] = a_ + 4.0f * c_;                                                                         \
    y[3] = b_ + 8.0f * d_ + m[5];                                                                  \
  } while (0)

/* y [+]= Aᵀ M A + b for every 4×4 tile, one tile row at a time through yrow (4, 4*tx, sp). */
static void WG_FN(out_tf4)(const wg_shape *sh, int nb, const float *restrict M, int tp,
                           const float *restrict b, float *restrict y, int accumulate,
                           float *restrict yrow) {
  const int sp = sh->sp, rw = 4 * sh->tx;
  const ptrdiff_t xs = WG_FSTRIDE(tp, sp);
  int t = 0;
  for (int img = 0; img < nb; img++)
    for (int ty = 0; ty < sh->ty; ty++) {
      for (int tx = 0; tx < sh->tx; tx++, t++) {
        const float *restrict m = M + (ptrdiff_t)t * sp;
        float *restrict o = yrow + (ptrdiff_t)4 * tx * sp;
        for (int sb = 0; sb < sp; sb += 16) {
          wg_v16 u[4][6];
#pragma GCC unroll 6
          for (int j = 0; j < 6; j++) {
            wg_v16 c[6], r[4];
#pragma GCC unroll 6
            for (int i = 0; i < 6; i++)
              c[i] = WG_V(m + (6 * i + j) * xs + sb);
            WG_AT6(c, r);
#pragma GCC unroll 4
            for (int i = 0; i < 4; i++)
              u[i][j] = r[i];
          }
#pragma GCC unroll 4
          for (int i = 0; i < 4; i++) {
            wg_v16 r[4];
            WG_AT6(u[i], r);
#pragma GCC unroll 4
            for (int j = 0; j < 4; j++)
              WG_V(o + ((ptrdiff_t)i * rw + j) * sp + sb) = r[j];
          }
        }
      }
      WG_FN(scatter)(sh, img, 4 * ty, yrow, rw, b, y, accumulate);
    }
}

#undef WG_BT6
#undef WG_AT6
