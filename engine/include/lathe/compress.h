/* lathe/compress.h — low-rank factorisation of convolutions (Tucker-2) and linear layers (SVD),
 * and the graph rewrites that put the factors into a model.
 *
 * Usage:
 *   lt_tucker2 t;
 *   lt_tucker2_decompose(w, S, C, 3, 3, r, r, &t, &err);   // truncated HOSVD, r ≤ min(S, C)
 *   // t.u_in (C, r_in), t.core (r_out, r_in, kh, kw), t.u_out (S, r_out): every smaller rank is a
 *   // prefix of these factors (lt_tucker2_core_prefix extracts the core of a smaller rank).
 *   lt_tucker2_free(&t);
 *
 *   lt_compress_factorize_conv(g, node, 16, &err);          // conv → 1×1, k×k, 1×1 in the graph
 *
 * Not for: choosing ranks (the search) or measuring latency.
 */
#ifndef LATHE_COMPRESS_H
#define LATHE_COMPRESS_H

#include "lathe/graph.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lt_tucker2 {
  int s, c, kh, kw;  /* dense weight W (s, c, kh, kw) */
  int r_out, r_in;   /* ranks of the output and input modes */
  float *u_out;      /* (s, r_out) row-major, orthonormal columns, owned */
  float *u_in;       /* (c, r_in) row-major, orthonormal columns, owned */
  float *core;       /* (r_out, r_in, kh, kw) = W ×₁ U_outᵀ ×₂ U_inᵀ, owned */
  double *sv_out;    /* singular values of the mode-1 unfolding (s × c·kh·kw), descending, owned */
  double *sv_in;     /* singular values of the mode-2 unfolding (c × s·kh·kw), descending, owned */
  int n_sv_out, n_sv_in;
} lt_tucker2;

/* Truncated HOSVD of a conv weight. Fails with LT_ERR_INVALID when a rank is outside
 * 1..min(mode size, other modes' product). */
lt_status lt_tucker2_decompose(const float *w, int s, int c, int kh, int kw, int r_out, int r_in,
                               lt_tucker2 *out, lt_err *err);
void lt_tucker2_free(lt_tucker2 *t);
/* Core of a smaller rank (r_out' ≤ r_out, r_in' ≤ r_in): the leading block, copied into dst
 * (r_out', r_in', kh, kw). */
void lt_tucker2_core_prefix(const lt_tucker2 *t, int r_out, int r_in, float *dst);
/* Rebuilds the dense weight (s, c, kh, kw) from the leading r_out/r_in components. */
void lt_tucker2_reconstruct(const lt_tucker2 *t, int r_out, int r_in, float *w);

/* Two-factor SVD of a linear weight W (m, k): W ≈ A B with A (m, r) = U_r Σ_r, B (r, k) = V_rᵀ. */
typedef struct lt_svd2 {
  int m, k, r;
  float *a;    /* (m, r) row-major, owned */
  float *b;    /* (r, k) row-major, owned */
  double *sv;  /* all min(m, k) singular values, descending, owned */
  int n_sv;
} lt_svd2;

lt_status lt_svd2_decompose(const float *w, int m, int k, int r, lt_svd2 *out, lt_err *err);
void lt_svd2_free(lt_svd2 *t);

/* MACs per output pixel of a k×k conv C→S, dense and as a tied-rank Tucker-2 (stride 1):
 * S·C·k² against C·r + k²·r² + r·S. */
int64_t lt_conv_macs_dense(int s, int c, int kh, int kw);
int64_t lt_conv_macs_tucker2(int s, int c, int kh, int kw, int r);
/* Largest tied rank r (a multiple of step) whose factorised cost stays below the dense cost, or
 * 0 when no rank is cheaper (the layer stays dense). */
int lt_tucker2_max_rank(int s, int c, int kh, int kw, int step);

/* Graph rewrites. The node must be a conv (groups 1) or linear with constant weights; the new
 * nodes are named <node>.u_in / <node>.core / <node>.u_out (and <node>.a / <node>.b for linear),
 * inherit stride/padding/dilation on the k×k core, and the bias on the last factor. */
lt_status lt_compress_factorize_conv(lt_graph *g, int node, int rank, lt_err *err);
lt_status lt_compress_factorize_linear(lt_graph *g, int node, int rank, lt_err *err);

#ifdef __cplusplus
}
#endif
#endif
