/* Winograd convolution on the CPU: the fast path of kernels_conv.c for 3×3 stride-1
 * convolutions (groups 1, dilation 1, top and left padding at most 2), for forward, backward data
 * and backward filter.
 *
 * Algorithm (Lavin & Gray 2016). The output is cut into m×m tiles; the (m+2)×(m+2) input patch d
 * of a tile goes to V = Bᵀ d B, the 3×3 filter g to U = G g Gᵀ, and the tile is
 * Aᵀ [Σ_c U ⊙ V] A: for each of the nf = (m+2)² "frequencies" ξ a product
 * M_ξ (tiles, s) = V_ξ (tiles, c) · U_ξ (c, s). F(2×2, 3×3) (m = 2, 16 frequencies) does 16/36 =
 * 0.44 of the direct convolution's multiplies, F(4×4, 3×3) (m = 4, 36 frequencies, points 0, ±1,
 * ±2) 36/144 = 0.25. Backward data is the forward on dy with the filter rotated by 180° and
 * transposed (c ↔ s) and padding 2 - p (hence p <= 2). Backward filter uses the transposed
 * transforms of F(2×2): dU_ξ (s, c) = Σ_tiles (A dY Aᵀ)_ξ ⊗ V_ξ, one product per frequency with
 * the tiles as the reduction, then dw = Gᵀ dU G.
 *
 * Accuracy. F(2×2)'s transforms have entries 0, ±1 and ±½: test_winograd measures 2.5e-6 of the
 * output's RMS against a float64 direct convolution (float32 im2col: about 1e-6). F(4×4)'s
 * entries reach 8 and 1/24 and its error is about ten times larger (2.7e-5 of RMS on the same
 * shapes), still within the PyTorch reference tolerance (1e-4), but enough to move training
 * gradients of a whole network visibly (pick_m). So F(4×4) serves only forwards in inference
 * (lt_cpu_conv2d_fwd_infer) with outputs of at least 16×16, where it pays; training forwards,
 * backward data and backward filter use F(2×2).
 *
 * Layout. The Winograd domain is channel-innermost with channels padded to multiples of 16
 * (cp, sp): V (nf, tp, cp), M (nf, tp, sp), U (nf, cp, sp), so the transforms run on whole
 * 16-float vectors of channels and each per-frequency product is a small row-major GEMM with
 * 16-float columns. A chunk of images is first reordered from NCHW into xt (nb, hp, wp, cp), a
 * zero-bordered channel-innermost copy covering every tile's patch; the output transform writes
 * one tile row at a time into a small buffer that is reordered into NCHW y.
 *
 * Threads and chunks are as in kernels_conv.c: the batch is cut into chunks of nb whole images,
 * nb chosen so that one chunk's xt, V and M (about WG_TEAM_BYTES) stay in the core's L2 between
 * the input transform, the products and the output transform; each OpenMP thread ("team") owns a
 * contiguous run of chunks and a slice of the workspace. Forward and backward data results do
 * not depend on the chunking or the thread count at all (every output element is computed by one
 * fixed sequence of operations). Backward filter keeps one partial dU per team and sums them in
 * team order, so it is reproducible at a given thread count.
 *
 * Instruction sets. The vector code (kernels_winograd_body.h: micro-kernel, transforms) is
 * written with GCC vector extensions and compiled three times: for AVX-512, for AVX2+FMA without
 * AVX-512, and for the build's own target (portable); the first call picks the best one the CPU
 * has (__builtin_cpu_supports), so the build needs no -march flags. LATHE_CONV_WINOGRAD (or
 * lt_cpu_winograd_set_mode) selects: "0"/"off" (im2col everywhere), "generic", "avx2", "avx512",
 * or automatic (unset or anything else).
 */
#include "backend/cpu/kernels.h"

#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Bytes of one team's chunk scratch (xt, V, M, ...). Measured on ResNet-20's layers at batch 128
 * (bench_conv): see the report in the commit that set it. */
#define WG_TEAM_BYTES ((size_t)1 << 20)
/* Team slices the workspace has room for (the thread count is not known when it is sized). */
#define WG_MAX_TEAMS 8
/* Images whose single-image scratch exceeds this take the im2col path instead. */
#define WG_MAX_SLICE_BYTES ((size_t)64 << 20)
/* Output tile of forward and backward data: 0 picks per convolution (pick_m), 2 or 4 force
 * F(2×2, 3×3) or F(4×4, 3×3), -1 reads LATHE_CONV_WINOGRAD_TILE on first use. */
#define WG_M_FWD -1

typedef float wg_v16 __attribute__((vector_size(64), may_alias));
/* Floats between consecutive frequencies of V (tp, c) or M: one cache line more than the matrix,
 * so that the nf rows a transform reads or writes for one tile do not all fall into the same L1
 * set when tp * c * 4 is a multiple of 4 KiB (as with 256 tiles × 16 channels). */
#define WG_FSTRIDE(tp, c) ((ptrdiff_t)(tp) * (c) + 16)
#define WG_V(p) (*(wg_v16 *)(uintptr_t)(p))

/* One forward-type pass: input (c, h, w) -> output (s, oh, ow), top/left padding pt, pl. */
typedef struct wg_shape {
  int c, s, h, w, oh, ow, pt, pl;
  int m, nf;  /* output tile m×m (2 or 4), nf = (m+2)² frequencies */
  int cp, sp; /* channels rounded up to 16 */
  int ty, tx; /* m×m tiles per image: ceil(oh/m), ceil(ow/m) */
  int hp, wp; /* rows and columns of xt: every tile's (m+2)² patch, m*ty + 2, m*tx + 2 */
} wg_shape;

static int round16(int v) { return (v + 15) & ~15; }

static wg_shape shape_make(int m, int c, int s, int h, int w, int oh, int ow, int pt, int pl) {
  wg_shape sh = {.c = c, .s = s, .h = h, .w = w, .oh = oh, .ow = ow, .pt = pt, .pl = pl, .m = m};
  sh.nf = (m + 2) * (m + 2);
  sh.cp = round16(c);
  sh.sp = round16(s);
  sh.ty = (oh + m - 1) / m;
  sh.tx = (ow + m - 1) / m;
  sh.hp = m * sh.ty + 2;
  sh.wp = m * sh.tx + 2;
  return sh;
}

/* Tile sizes: forward and backward data m (wg_m_fwd, or pick_m), backward filter 2. */
static int wg_m_fwd = WG_M_FWD;

/* F(4×4) for inference forwards with outputs of at least 16×16, F(2×2) otherwise. Speed,
 * measured with bench_conv --tile, one thread, process CPU time, ResNet-20 at batch 128: F(4×4)
 * forward 199 vs 155 effective GFLOP/s on 16->16 32×32 and 255 vs 220 on 32->32 16×16, but 183
 * vs 220 on 64->64 8×8 (2×2 tiles per image leave the per-frequency products short). Accuracy:
 * in training, F(4×4)'s larger rounding error moves ResNet-20's parameter gradients by 2% against
 * PyTorch (engine.ref_resnet20_matches_pytorch: worst 0.023 against a tolerance of 2e-4; F(2×2):
 * 5.5e-6 at one and two threads), so training forwards and backward data keep F(2×2). */
static int pick_m(int oh, int ow, int infer) {
  int m = __atomic_load_n(&wg_m_fwd, __ATOMIC_RELAXED);
  if (m < 0) { /* first use: LATHE_CONV_WINOGRAD_TILE=2 or 4 forces a tile size */
    const char *e = getenv("LATHE_CONV_WINOGRAD_TILE");
    m = e && (!strcmp(e, "2") || !strcmp(e, "4")) ? atoi(e) : 0;
    __atomic_store_n(&wg_m_fwd, m, __ATOMIC_RELAXED);
  }
  if (m == 2 || m == 4) return m;
  return infer && oh >= 16 && ow >= 16 ? 4 : 2;
}

static wg_shape shape_fwd_m(const lt_conv_geom *g, int m) {
  return shape_make(m, g->c, g->s, g->h, g->w, g->oh, g->ow, g->pad_t, g->pad_l);
}

/* Backward data as a forward pass: dy (s, oh, ow) -> dx (c, h, w), padding 2 - p. */
static wg_shape shape_bwd_data_m(const lt_conv_geom *g, int m) {
  return shape_make(m, g->s, g->c, g->oh, g->ow, g->h, g->w, 2 - g->pad_t, 2 - g->pad_l);
}

/* Floats of chunk scratch per image, and fixed per team, for a forward-type pass (filt = 0: xt,
 * V, M, and the tile-row buffer) or backward filter (filt = 1: dU, xt, V, dyt, M'). The fixed
 * part covers rounding the tile count up to a multiple of 16. All are multiples of 16. */
static size_t floats_per_image(const wg_shape *sh, int filt) {
  const size_t tiles = (size_t)sh->ty * sh->tx, nf = (size_t)sh->nf;
  size_t f = (size_t)sh->hp * sh->wp * sh->cp + nf * tiles * (size_t)(sh->cp + sh->sp);
  if (filt) f += (size_t)sh->m * sh->m * tiles * sh->sp;
  return f;
}
static size_t floats_fixed(const wg_shape *sh, int filt) {
  const size_t nf = (size_t)sh->nf;
  return nf * 15 * (size_t)(sh->cp + sh->sp) + nf * 2 * 16 +
         (filt ? nf * (size_t)sh->sp * sh->cp : (size_t)sh->m * sh->m * sh->tx * sh->sp);
}

typedef struct wg_plan {
  int nb, chunks, teams;
  size_t slice; /* floats of one team's slice */
} wg_plan;

static wg_plan plan_pass(const wg_shape *sh, int n, int filt) {
  const size_t per = floats_per_image(sh, filt), fix = floats_fixed(sh, filt);
  const size_t budget = WG_TEAM_BYTES / sizeof(float);
  size_t nb = budget > fix ? (budget - fix) / per : 0;
  if (nb > (size_t)n) nb = (size_t)n;
  if (nb < 1) nb = 1;
  wg_plan p = {.nb = (int)nb, .slice = nb * per + fix};
  p.chunks = (int)((n + nb - 1) / nb);
  return p;
}

/* Floats of all team slices: room for WG_MAX_TEAMS slices of WG_TEAM_BYTES, or one slice when a
 * single image needs more. */
/* The largest slice any pass needs, for either tile size (the tile size can be switched at run
 * time: lt_cpu_winograd_set_tile). */
static size_t slice_max(const lt_conv_geom *g) {
  const wg_shape f2 = shape_fwd_m(g, 2), d2 = shape_bwd_data_m(g, 2);
  const wg_shape f4 = shape_fwd_m(g, 4), d4 = shape_bwd_data_m(g, 4);
  const size_t s[5] = {plan_pass(&f2, g->n, 0).slice, plan_pass(&d2, g->n, 0).slice,
                       plan_pass(&f4, g->n, 0).slice, plan_pass(&d4, g->n, 0).slice,
                       plan_pass(&f2, g->n, 1).slice};
  size_t most = 0;
  for (int i = 0; i < 5; i++)
    if (s[i] > most) most = s[i];
  return most;
}

static size_t floats_slices(const lt_conv_geom *g) {
  const size_t most = slice_max(g), teams = WG_MAX_TEAMS * (WG_TEAM_BYTES / sizeof(float));
  return most > teams ? most : teams;
}

int lt_cpu_winograd_eligible(const lt_conv_geom *g) {
  if (g->kh != 3 || g->kw != 3 || g->stride_h != 1 || g->stride_w != 1 || g->dil_h != 1 ||
      g->dil_w != 1 || g->groups != 1 || g->pad_t > 2 || g->pad_l > 2 || g->pad_t < 0 ||
      g->pad_l < 0 || g->pad_b < 0 || g->pad_r < 0 || g->oh < 1 || g->ow < 1)
    return 0;
  return slice_max(g) * sizeof(float) <= WG_MAX_SLICE_BYTES;
}

/* Floats of U at the start of the workspace: room for 36 frequencies. */
static size_t floats_u(const lt_conv_geom *g) { return 36 * (size_t)round16(g->c) * round16(g->s); }

size_t lt_cpu_winograd_workspace(const lt_conv_geom *g) {
  if (!lt_cpu_winograd_eligible(g)) return 0;
  return (16 + floats_u(g) + floats_slices(g)) * sizeof(float);
}

/* ---- the per-ISA vector code --------------------------------------------------------------- */

typedef struct wg_impl {
  const char *name;
  void (*gemm)(int m, int n, int k, const float *a, ptrdiff_t sam, ptrdiff_t sak, const float *b,
               ptrdiff_t ldb, float *c, ptrdiff_t ldc, int accumulate);
  void (*in_tf)(const wg_shape *sh, int nb, const float *xt, float *V, int tp);
  void (*dy_tf)(const wg_shape *sh, int nb, const float *dyt, float *M, int tp);
  void (*out_tf)(const wg_shape *sh, int nb, const float *M, int tp, const float *b, float *y,
                 int accumulate, float *yrow);
  void (*to_tiles)(int nb, int c, int h, int w, int cp, int hp, int wp, int pt, int pl,
                   const float *x, float *xt);
  void (*in_tf4)(const wg_shape *sh, int nb, const float *xt, float *V, int tp);
  void (*out_tf4)(const wg_shape *sh, int nb, const float *M, int tp, const float *b, float *y,
                  int accumulate, float *yrow);
} wg_impl;

#define WG_IMPL(sfx)                                                                               \
  { #sfx, wg_gemm_##sfx, wg_in_tf_##sfx, wg_dy_tf_##sfx, wg_out_tf_##sfx, wg_to_tiles_##sfx,     \
    wg_in_tf4_##sfx, wg_out_tf4_##sfx }

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define WG_HAVE_X86 1
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma")
#define WG_FN(f) wg_##f##_avx512
#define WG_ACC 16
#define WG_NVMAX 4
#include "backend/cpu/kernels_winograd_body.h"
#undef WG_FN
#undef WG_ACC
#undef WG_NVMAX
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,no-avx512f")
#define WG_FN(f) wg_##f##_avx2
#define WG_ACC 4
#define WG_NVMAX 1
#include "backend/cpu/kernels_winograd_body.h"
#undef WG_FN
#undef WG_ACC
#undef WG_NVMAX
#pragma GCC pop_options
#endif

/* The build's own target: whatever the compiler flags allow. */
#define WG_FN(f) wg_##f##_generic
#define WG_ACC 4
#define WG_NVMAX 1
#include "backend/cpu/kernels_winograd_body.h"
#undef WG_FN
#undef WG_ACC
#undef WG_NVMAX

static const wg_impl impl_generic = WG_IMPL(generic);
#ifdef WG_HAVE_X86
static const wg_impl impl_avx2 = WG_IMPL(avx2);
static const wg_impl impl_avx512 = WG_IMPL(avx512);
#endif

static int wg_mode = -1; /* LT_WINOGRAD_*, -1 until the first use reads the environment */

void lt_cpu_winograd_set_mode(int mode) { __atomic_store_n(&wg_mode, mode, __ATOMIC_RELAXED); }

int lt_cpu_winograd_mode(void) {
  int m = __atomic_load_n(&wg_mode, __ATOMIC_RELAXED);
  if (m >= 0) return m;
  const char *e = getenv("LATHE_CONV_WINOGRAD");
  m = LT_WINOGRAD_AUTO;
  if (e && (!strcmp(e, "0") || !strcmp(e, "off"))) m = LT_WINOGRAD_OFF;
  else if (e && !strcmp(e, "generic")) m = LT_WINOGRAD_GENERIC;
  else if (e && !strcmp(e, "avx2")) m = LT_WINOGRAD_AVX2;
  else if (e && !strcmp(e, "avx512")) m = LT_WINOGRAD_AVX512;
  __atomic_store_n(&wg_mode, m, __ATOMIC_RELAXED);
  return m;
}

/* The implementation the mode asks for, lowered to what the CPU has; NULL when off. */
static const wg_impl *wg_pick(void) {
  const int m = lt_cpu_winograd_mode();
  if (m == LT_WINOGRAD_OFF) return NULL;
#ifdef WG_HAVE_X86
  const int avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
                     __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
  const int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if ((m == LT_WINOGRAD_AUTO || m == LT_WINOGRAD_AVX512) && avx512) return &impl_avx512;
  if (m != LT_WINOGRAD_GENERIC && avx2) return &impl_avx2;
#endif
  return &impl_generic;
}

const char *lt_cpu_winograd_impl_name(void) {
  const wg_impl *im = wg_pick();
  return im ? im->name : "off";
}

/* In automatic mode, convolutions with fewer than 8 input or output channels stay on im2col:
 * padding 3 channels to 16 (ResNet's first conv) makes Winograd slower than im2col there
 * (bench_conv: conv1 3->16 at 24 vs 46 GFLOP/s, one thread). Forced modes take every eligible
 * convolution (the tests use them on odd channel counts). */
int lt_cpu_winograd_active(const lt_conv_geom *g) {
  const int m = lt_cpu_winograd_mode();
  if (m == LT_WINOGRAD_OFF || !lt_cpu_winograd_eligible(g)) return 0;
  return m != LT_WINOGRAD_AUTO || (g->c >= 8 && g->s >= 8);
}

/* ---- movement and filter transforms (scalar) ----------------------------------------------- */

/* The filter transforms G (n×3, n = m + 2) for F(2×2, 3×3) and F(4×4, 3×3) (points 0, ±1, ±2). */
static const double wg_g2[4][3] = {{1, 0, 0}, {0.5, 0.5, 0.5}, {0.5, -0.5, 0.5}, {0, 0, 1}};
static const double wg_g4[6][3] = {{1.0 / 4, 0, 0},
                                   {-1.0 / 6, -1.0 / 6, -1.0 / 6},
                                   {-1.0 / 6, 1.0 / 6, -1.0 / 6},
                                   {1.0 / 24, 1.0 / 12, 1.0 / 6},
                                   {1.0 / 24, -1.0 / 12, 1.0 / 6},
                                   {0, 0, 1}};

/* U[ξ][k][n] = (G g Gᵀ)[ξ] with g = w[n][k] (forward) or g = w[k][n] rotated by 180° (backward
 * data), computed in double; padded entries are zero. */
static void filter_tf(const wg_shape *sh, const float *restrict w, int flip, float *restrict U) {
  const int cp = sh->cp, sp = sh->sp, n6 = sh->m + 2;
  const double(*G)[3] = sh->m == 4 ? wg_g4 : wg_g2;
  memset(U, 0, sizeof(float) * (size_t)sh->nf * cp * sp);
#pragma omp parallel for schedule(static)
  for (int k = 0; k < sh->c; k++)
    for (int n = 0; n < sh->s; n++) {
      const float *src = w + ((size_t)(flip ? k * sh->s + n : n * sh->c + k)) * 9;
      double g[3][3], a[6][3];
      for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++)
          g[i][j] = flip ? src[(2 - i) * 3 + (2 - j)] : src[i * 3 + j];
      for (int i = 0; i < n6; i++)
        for (int j = 0; j < 3; j++)
          a[i][j] = G[i][0] * g[0][j] + G[i][1] * g[1][j] + G[i][2] * g[2][j];
      for (int i = 0; i < n6; i++)
        for (int j = 0; j < n6; j++)
          U[((size_t)(n6 * i + j) * cp + k) * sp + n] =
              (float)(a[i][0] * G[j][0] + a[i][1] * G[j][1] + a[i][2] * G[j][2]);
    }
}

/* ---- the passes ---------------------------------------------------------------------------- */

/* Aligns the workspace to 64 bytes (the size function adds the 16 floats of slack). */
static float *ws_align(void *ws) { return (float *)(((uintptr_t)ws + 63) & ~(uintptr_t)63); }

static int team_count(const wg_plan *p, size_t slices_floats) {
  int t = omp_get_max_threads();
  if (t > p->chunks) t = p->chunks;
  if ((size_t)t > slices_floats / p->slice) t = (int)(slices_floats / p->slice);
  if (t > WG_MAX_TEAMS) t = WG_MAX_TEAMS;
  return t < 1 ? 1 : t;
}

/* Chunks [*c0, *c1) of a team: a contiguous run. */
static void team_chunks(const wg_plan *p, int teams, int team, int *c0, int *c1) {
  *c0 = (int)((int64_t)p->chunks * team / teams);
  *c1 = (int)((int64_t)p->chunks * (team + 1) / teams);
}

/* y [+]= conv(x, w) + b on the pass shape sh (forward, or backward data with flip). */
static void fwd_pass(const wg_impl *im, const wg_shape *sh, int n, const float *x, const float *w,
                     int flip, const float *b, float *y, int accumulate,
                     const lt_conv_epi *epi, float *ws,
                     size_t u_floats, size_t slices_floats) {
  const int cp = sh->cp, sp = sh->sp, tiles = sh->ty * sh->tx, nf = sh->nf;
  float *U = ws, *slices = ws + u_floats;
  filter_tf(sh, w, flip, U);
  const wg_plan p = plan_pass(sh, n, 0);
  const int teams = team_count(&p, slices_floats);
  const size_t xin = (size_t)sh->c * sh->h * sh->w, yout = (size_t)sh->s * sh->oh * sh->ow;
#pragma omp parallel for num_threads(teams) schedule(static, 1)
  for (int team = 0; team < teams; team++) {
    int c0, c1;
    team_chunks(&p, teams, team, &c0, &c1);
    float *xt = slices + (size_t)team * p.slice;
    for (int ch = c0; ch < c1; ch++) {
      const int a = ch * p.nb, nb = n - a < p.nb ? n - a : p.nb, tp = round16(nb * tiles);
      float *V = xt + (size_t)nb * sh->hp * sh->wp * cp, *M = V + nf * WG_FSTRIDE(tp, cp);
      float *yrow = M + nf * WG_FSTRIDE(tp, sp);
      im->to_tiles(nb, sh->c, sh->h, sh->w, cp, sh->hp, sh->wp, sh->pt, sh->pl, x + a * xin, xt);
      (sh->m == 4 ? im->in_tf4 : im->in_tf)(sh, nb, xt, V, tp);
      for (int f = 0; f < nf; f++)
        im->gemm(tp, sp, cp, V + f * WG_FSTRIDE(tp, cp), cp, 1, U + (size_t)f * cp * sp, sp,
                 M + f * WG_FSTRIDE(tp, sp), sp, 0);
      (sh->m == 4 ? im->out_tf4 : im->out_tf)(sh, nb, M, tp, b, y + a * yout, accumulate, yrow);
      /* the chunk just written, mostly still in cache */
      lt_conv_epi_apply(epi, y + a * yout, (size_t)a * yout, (size_t)nb * yout);
    }
  }
}

void lt_cpu_winograd_set_tile(int m) { wg_m_fwd = m == 2 || m == 4 ? m : 0; }

void lt_cpu_winograd_fwd(const lt_conv_geom *g, const float *x, const float *w, const float *b,
                         float *y, int accumulate, int infer, const lt_conv_epi *epi, void *ws) {
  const wg_shape sh = shape_fwd_m(g, pick_m(g->oh, g->ow, infer));
  fwd_pass(wg_pick() ? wg_pick() : &impl_generic, &sh, g->n, x, w, 0, b, y, accumulate, epi,
           ws_align(ws), floats_u(g), floats_slices(g));
}

void lt_cpu_winograd_bwd_data(const lt_conv_geom *g, const float *dy, const float *w, float *dx,
                              int accumulate, void *ws) {
  const wg_shape sh = shape_bwd_data_m(g, pick_m(g->h, g->w, 0));
  fwd_pass(wg_pick() ? wg_pick() : &impl_generic, &sh, g->n, dy, w, 1, NULL, dx, accumulate, NULL,
           ws_align(ws), floats_u(g), floats_slices(g));
}

void lt_cpu_winograd_bwd_filter(const lt_conv_geom *g, const float *x, const float *dy, float *dw,
                                int accumulate, void *ws) {
  const wg_impl *im = wg_pick() ? wg_pick() : &impl_generic;
  const wg_shape sh = shape_fwd_m(g, 2);
  const int cp = sh.cp, sp = sh.sp, tiles = sh.ty * sh.tx, n = g->n;
  float *slices = ws_align(ws) + floats_u(g);
  const wg_plan p = plan_pass(&sh, n, 1);
  const int teams = team_count(&p, floats_slices(g));
  const size_t xin = (size_t)sh.c * sh.h * sh.w, yout = (size_t)sh.s * sh.oh * sh.ow;
  const size_t du_floats = 16 * (size_t)sp * cp;
#pragma omp parallel for num_threads(teams) schedule(static, 1)
  for (int team = 0; team < teams; team++) {
    int c0, c1;
    team_chunks(&p, teams, team, &c0, &c1);
    float *dU = slices + (size_t)team * p.slice, *xt = dU + du_floats;
    for (int ch = c0; ch < c1; ch++) {
      const int a = ch * p.nb, nb = n - a < p.nb ? n - a : p.nb, tp = round16(nb * tiles);
      float *V = xt + (size_t)nb * sh.hp * sh.wp * cp, *dyt = V + 16 * WG_FSTRIDE(tp, cp);
      float *M = dyt + (size_t)nb * 4 * tiles * sp;
      im->to_tiles(nb, sh.c, sh.h, sh.w, cp, sh.hp, sh.wp, sh.pt, sh.pl, x + a * xin, xt);
      im->in_tf(&sh, nb, xt, V, tp);
      im->to_tiles(nb, sh.s, sh.oh, sh.ow, sp, 2 * sh.ty, 2 * sh.tx, 0, 0, dy + a * yout, dyt);
      im->dy_tf(&sh, nb, dyt, M, tp);
      for (int f = 0; f < 16; f++)
        im->gemm(sp, cp, tp, M + f * WG_FSTRIDE(tp, sp), 1, sp, V + f * WG_FSTRIDE(tp, cp), cp,
                 dU + (size_t)f * sp * cp, cp, ch > c0);
    }
  }
  /* dw = Gᵀ (Σ_teams dU) G, the sum in team order; Gᵀ = [1 ½ ½ 0; 0 ½ -½ 0; 0 ½ ½ 1]. */
  const int S = g->s, C = g->c;
#pragma omp parallel for schedule(static)
  for (int sc = 0; sc < S * C; sc++) {
    const int s = sc / C, c = sc % C;
    float u[4][4], b[3][4];
    for (int f = 0; f < 16; f++) {
      const size_t off = ((size_t)f * sp + s) * cp + c;
      float acc = slices[off];
      for (int t = 1; t < teams; t++)
        acc += slices[(size_t)t * p.slice + off];
      u[f / 4][f % 4] = acc;
    }
    for (int j = 0; j < 4; j++) {
      b[0][j] = u[0][j] + 0.5f * (u[1][j] + u[2][j]);
      b[1][j] = 0.5f * (u[1][j] - u[2][j]);
      b[2][j] = 0.5f * (u[1][j] + u[2][j]) + u[3][j];
    }
    float *o = dw + (size_t)sc * 9;
    for (int i = 0; i < 3; i++) {
      const float r[3] = {b[i][0] + 0.5f * (b[i][1] + b[i][2]), 0.5f * (b[i][1] - b[i][2]),
                          0.5f * (b[i][1] + b[i][2]) + b[i][3]};
      for (int j = 0; j < 3; j++)
        o[i * 3 + j] = accumulate ? o[i * 3 + j] + r[j] : r[j];
    }
  }
}
