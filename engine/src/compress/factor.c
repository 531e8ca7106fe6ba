/* Tucker-2 (truncated HOSVD) of convolution weights and two-factor SVD of linear weights (the
 * graph rewrites that use them are in rewrite.c).
 *
 * SVDs run in double through LAPACKE (dgesdd): the matrices are small (at most a few hundred
 * rows), and double keeps the truncation error equal to the discarded singular values to well
 * below float rounding, which the tests rely on. Singular vectors get a deterministic sign (largest
 * component positive) so that reruns and ranks give identical factors. */
#include "lathe/compress.h"

#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Left singular vectors (m, r) and all singular values of a row-major (m, n) matrix. */
static lt_status svd_left(const double *a_in, int m, int n, int r, double *u_out, double *sv,
                          lt_err *err) {
  int k = m < n ? m : n;
  double *a = malloc(sizeof(double) * (size_t)m * (size_t)n);
  double *u = malloc(sizeof(double) * (size_t)m * (size_t)k);
  double *vt = malloc(sizeof(double) * (size_t)k * (size_t)n);
  if (!a || !u || !vt) {
    free(a), free(u), free(vt);
    return lt_errorf(err, LT_ERR_NOMEM, "out of memory for a %d x %d SVD", m, n);
  }
  memcpy(a, a_in, sizeof(double) * (size_t)m * (size_t)n);
  lapack_int info = LAPACKE_dgesdd(LAPACK_ROW_MAJOR, 'S', m, n, a, n, sv, u, k, vt, n);
  if (info != 0) {
    free(a), free(u), free(vt);
    return lt_errorf(err, LT_ERR_INTERNAL, "SVD of a %d x %d matrix did not converge (LAPACK info %d)",
                     m, n, (int)info);
  }
  for (int j = 0; j < r; j++) {
    int arg = 0;
    for (int i = 1; i < m; i++)
      if (fabs(u[(size_t)i * k + j]) > fabs(u[(size_t)arg * k + j])) arg = i;
    double sign = u[(size_t)arg * k + j] < 0 ? -1.0 : 1.0;
    for (int i = 0; i < m; i++) u_out[(size_t)i * r + j] = sign * u[(size_t)i * k + j];
  }
  free(a), free(u), free(vt);
  return LT_OK;
}

void lt_tucker2_free(lt_tucker2 *t) {
  if (!t) return;
  free(t->u_out), free(t->u_in), free(t->core), free(t->sv_out), free(t->sv_in);
  memset(t, 0, sizeof *t);
}

lt_status lt_tucker2_decompose(const float *w, int s, int c, int kh, int kw, int r_out, int r_in,
                               lt_tucker2 *t, lt_err *err) {
  memset(t, 0, sizeof *t);
  int p = kh * kw;
  int max_out = s < c * p ? s : c * p, max_in = c < s * p ? c : s * p;
  if (s < 1 || c < 1 || kh < 1 || kw < 1)
    return lt_errorf(err, LT_ERR_INVALID, "conv weight (%d, %d, %d, %d) has an empty dimension", s,
                     c, kh, kw);
  if (r_out < 1 || r_out > max_out || r_in < 1 || r_in > max_in)
    return lt_errorf(err, LT_ERR_INVALID,
                     "Tucker-2 ranks (%d, %d) are outside 1..%d and 1..%d for a conv weight "
                     "(%d, %d, %d, %d)",
                     r_out, r_in, max_out, max_in, s, c, kh, kw);
  size_t nw = (size_t)s * c * p;
  double *a1 = malloc(sizeof(double) * nw); /* mode-1 unfolding (s, c·p): W as stored */
  double *a2 = malloc(sizeof(double) * nw); /* mode-2 unfolding (c, s·p) */
  double *uo = malloc(sizeof(double) * (size_t)s * r_out);
  double *ui = malloc(sizeof(double) * (size_t)c * r_in);
  t->n_sv_out = max_out;
  t->n_sv_in = max_in;
  t->sv_out = malloc(sizeof(double) * (size_t)max_out);
  t->sv_in = malloc(sizeof(double) * (size_t)max_in);
  t->u_out = malloc(sizeof(float) * (size_t)s * r_out);
  t->u_in = malloc(sizeof(float) * (size_t)c * r_in);
  t->core = malloc(sizeof(float) * (size_t)r_out * r_in * p);
  double *tmp = malloc(sizeof(double) * (size_t)r_out * c * p); /* U_outᵀ W: (r_out, c, p) */
  lt_status st = LT_OK;
  if (!a1 || !a2 || !uo || !ui || !t->sv_out || !t->sv_in || !t->u_out || !t->u_in || !t->core ||
      !tmp) {
    st = lt_errorf(err, LT_ERR_NOMEM, "out of memory decomposing a (%d, %d, %d, %d) weight", s, c,
                   kh, kw);
    goto done;
  }
  for (int is = 0; is < s; is++)
    for (int ic = 0; ic < c; ic++)
      for (int ip = 0; ip < p; ip++) {
        double v = w[((size_t)is * c + ic) * p + ip];
        a1[((size_t)is * c + ic) * p + ip] = v;
        a2[((size_t)ic * s + is) * p + ip] = v;
      }
  if ((st = svd_left(a1, s, c * p, r_out, uo, t->sv_out, err)) != LT_OK) goto done;
  if ((st = svd_left(a2, c, s * p, r_in, ui, t->sv_in, err)) != LT_OK) goto done;
  /* core = W ×₁ U_outᵀ ×₂ U_inᵀ, as tmp = U_outᵀ · A1 then, per output component a,
   * core_a (r_in, p) = U_inᵀ (r_in, c) · tmp_a (c, p). */
  cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r_out, c * p, s, 1.0, uo, r_out, a1, c * p,
              0.0, tmp, c * p);
  for (int ia = 0; ia < r_out; ia++) {
    double *core_a = a2; /* a2 is no longer needed: reuse it as (r_in, p) scratch */
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r_in, p, c, 1.0, ui, r_in,
                tmp + (size_t)ia * c * p, p, 0.0, core_a, p);
    for (size_t i = 0; i < (size_t)r_in * p; i++) t->core[(size_t)ia * r_in * p + i] = (float)core_a[i];
  }
  for (size_t i = 0; i < (size_t)s * r_out; i++) t->u_out[i] = (float)uo[i];
  for (size_t i = 0; i < (size_t)c * r_in; i++) t->u_in[i] = (float)ui[i];
  t->s = s, t->c = c, t->kh = kh, t->kw = kw, t->r_out = r_out, t->r_in = r_in;
done:
  free(a1), free(a2), free(uo), free(ui), free(tmp);
  if (st != LT_OK) lt_tucker2_free(t);
  return st;
}

void lt_tucker2_core_prefix(const lt_tucker2 *t, int r_out, int r_in, float *dst) {
  int p = t->kh * t->kw;
  for (int a = 0; a < r_out; a++)
    memcpy(dst + (size_t)a * r_in * p, t->core + (size_t)a * t->r_in * p,
           sizeof(float) * (size_t)r_in * p);
}

void lt_tucker2_reconstruct(const lt_tucker2 *t, int r_out, int r_in, float *w) {
  int p = t->kh * t->kw, s = t->s, c = t->c;
  /* w[s][c][p] = Σ_a U_out[s][a] Σ_b core[a][b][p] U_in[c][b], accumulated in double. */
  double *inner = calloc((size_t)r_out * c * p, sizeof(double)); /* (a, c, p) */
  if (!inner) return;
  for (int a = 0; a < r_out; a++)
    for (int b = 0; b < r_in; b++)
      for (int ic = 0; ic < c; ic++) {
        double u = t->u_in[(size_t)ic * t->r_in + b];
        const float *g = t->core + ((size_t)a * t->r_in + b) * p;
        double *dst = inner + ((size_t)a * c + ic) * p;
        for (int ip = 0; ip < p; ip++) dst[ip] += u * g[ip];
      }
  for (int is = 0; is < s; is++)
    for (size_t j = 0; j < (size_t)c * p; j++) {
      double acc = 0;
      for (int a = 0; a < r_out; a++) acc += t->u_out[(size_t)is * t->r_out + a] * inner[(size_t)a * c * p + j];
      w[(size_t)is * c * p + j] = (float)acc;
    }
  free(inner);
}

void lt_svd2_free(lt_svd2 *t) {
  if (!t) return;
  free(t->a), free(t->b), free(t->sv);
  memset(t, 0, sizeof *t);
}

lt_status lt_svd2_decompose(const float *w, int m, int k, int r, lt_svd2 *t, lt_err *err) {
  memset(t, 0, sizeof *t);
  int q = m < k ? m : k;
  if (m < 1 || k < 1 || r < 1 || r > q)
    return lt_errorf(err, LT_ERR_INVALID, "SVD rank %d is outside 1..%d for a (%d, %d) weight", r,
                     q, m, k);
  double *a = malloc(sizeof(double) * (size_t)m * k);
  double *u = malloc(sizeof(double) * (size_t)m * q);
  double *vt = malloc(sizeof(double) * (size_t)q * k);
  t->sv = malloc(sizeof(double) * (size_t)q);
  t->a = malloc(sizeof(float) * (size_t)m * r);
  t->b = malloc(sizeof(float) * (size_t)r * k);
  lt_status st = LT_OK;
  if (!a || !u || !vt || !t->sv || !t->a || !t->b) {
    st = lt_errorf(err, LT_ERR_NOMEM, "out of memory for the SVD of a (%d, %d) weight", m, k);
    goto done;
  }
  for (size_t i = 0; i < (size_t)m * k; i++) a[i] = w[i];
  lapack_int info = LAPACKE_dgesdd(LAPACK_ROW_MAJOR, 'S', m, k, a, k, t->sv, u, q, vt, k);
  if (info != 0) {
    st = lt_errorf(err, LT_ERR_INTERNAL, "SVD of a (%d, %d) weight did not converge (LAPACK info %d)",
                   m, k, (int)info);
    goto done;
  }
  for (int j = 0; j < r; j++) {
    int arg = 0;
    for (int i = 1; i < m; i++)
      if (fabs(u[(size_t)i * q + j]) > fabs(u[(size_t)arg * q + j])) arg = i;
    double sign = u[(size_t)arg * q + j] < 0 ? -1.0 : 1.0;
    for (int i = 0; i < m; i++) t->a[(size_t)i * r + j] = (float)(sign * u[(size_t)i * q + j] * t->sv[j]);
    for (int i = 0; i < k; i++) t->b[(size_t)j * k + i] = (float)(sign * vt[(size_t)j * k + i]);
  }
  t->m = m, t->k = k, t->r = r, t->n_sv = q;
done:
  free(a), free(u), free(vt);
  if (st != LT_OK) lt_svd2_free(t);
  return st;
}

int64_t lt_conv_macs_dense(int s, int c, int kh, int kw) { return (int64_t)s * c * kh * kw; }

int64_t lt_conv_macs_tucker2(int s, int c, int kh, int kw, int r) {
  return (int64_t)c * r + (int64_t)kh * kw * r * r + (int64_t)r * s;
}

int lt_tucker2_max_rank(int s, int c, int kh, int kw, int step) {
  if (step < 1) step = 1;
  int limit = s < c ? s : c, best = 0;
  for (int r = step; r <= limit; r += step)
    if (lt_conv_macs_tucker2(s, c, kh, kw, r) < lt_conv_macs_dense(s, c, kh, kw)) best = r;
  return best;
}
