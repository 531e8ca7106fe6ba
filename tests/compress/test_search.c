/* The rank search's one-pass masked mixture: for a conv factorised at the largest candidate, the
 * core masked by the cumulative Gumbel-softmax weights computes exactly the explicit mixture
 * Σ_i m_i f_i of the candidates run as separate rank-r_i layers, forward and in every gradient
 * (factors, core, bias, and the logits through the mixture weights); and the Gumbel-softmax backward matches finite
 * differences of the logits. */
#include "lathe/backend.h"
#include "lathe/compress.h"
#include "lathe/exec.h"
#include "test.h"

enum { C = 6, S = 8, H = 7, W = 7, B = 3, R = 6, K = 3 };
static const int cand[K] = {2, 4, 6};

static lt_tensor *tensor_from(int ndim, const int64_t *shape, const float *src) {
  lt_tensor *t = lt_tensor_new(LT_F32, ndim, shape, LT_MEM_WEIGHTS, NULL);
  memcpy(t->data, src, lt_tensor_nbytes(t));
  return t;
}

/* input (C, H, W) → 1×1 (r, C) → 3×3 pad 1 (r, r) → 1×1 (S, r) + bias, from full-rank factors
 * truncated to their rank-r prefixes. */
static lt_graph *block(int r, const float *u_in /* (R, C) */, const float *core /* (R, R, 9) */,
                       const float *u_out /* (S, R) */, const float *bias /* (S) */) {
  float w1[R * C], w2[R * R * 9], w3[S * R];
  for (int a = 0; a < r; a++)
    for (int c = 0; c < C; c++) w1[a * C + c] = u_in[a * C + c];
  for (int a = 0; a < r; a++)
    for (int b = 0; b < r; b++)
      for (int k = 0; k < 9; k++) w2[(a * r + b) * 9 + k] = core[(a * R + b) * 9 + k];
  for (int s = 0; s < S; s++)
    for (int a = 0; a < r; a++) w3[s * r + a] = u_out[s * R + a];
  lt_err err = {0};
  lt_graph *g = lt_graph_new();
  int x = lt_graph_add_input(g, "x", LT_F32, 3, (int64_t[]){C, H, W});
  int p1 = lt_graph_add_param(g, "w1", tensor_from(4, (int64_t[]){r, C, 1, 1}, w1), 1);
  int p2 = lt_graph_add_param(g, "w2", tensor_from(4, (int64_t[]){r, r, 3, 3}, w2), 1);
  int p3 = lt_graph_add_param(g, "w3", tensor_from(4, (int64_t[]){S, r, 1, 1}, w3), 1);
  int pb = lt_graph_add_param(g, "b", tensor_from(1, (int64_t[]){S}, bias), 1);
  lt_node_attrs pw = lt_attrs_conv(1, 1, 0, 1, 1), cv = lt_attrs_conv(3, 1, 1, 1, 1);
  int y1 = lt_graph_add_node(g, LT_OP_CONV2D, "u_in", (int[]){x, p1}, 2, &pw, &err);
  int y2 = lt_graph_add_node(g, LT_OP_CONV2D, "core", (int[]){y1, p2}, 2, &cv, &err);
  int y3 = lt_graph_add_node(g, LT_OP_CONV2D, "u_out", (int[]){y2, p3, pb}, 3, &pw, &err);
  lt_graph_set_output(g, y3);
  return g;
}

#define CHECK_ALL(n, got, want, tol)                                                  \
  do {                                                                                \
    double d_ = 0;                                                                    \
    for (int j = 0; j < (n); j++) d_ = fmax(d_, fabs((got)[j] - (want)[j]));          \
    CHECK_MSG(d_ < (tol), "%s differs from the explicit mixture by %g", #got, d_);    \
  } while (0)

static float frand(lt_rng *r) { return (float)(lt_rng_uniform(r) * 2 - 1); }

TEST_CASE(masked_mixture_equals_explicit_mixture_forward_and_gradients) {
  lt_rng rng = lt_rng_make(3, 0);
  float u_in[R * C], core[R * R * 9], u_out[S * R], bias[S], x[B * C * H * W], w[B * S * H * W];
  for (size_t i = 0; i < sizeof u_in / 4; i++) u_in[i] = frand(&rng);
  for (size_t i = 0; i < sizeof core / 4; i++) core[i] = frand(&rng);
  for (size_t i = 0; i < sizeof u_out / 4; i++) u_out[i] = frand(&rng);
  for (size_t i = 0; i < S; i++) bias[i] = frand(&rng);
  for (size_t i = 0; i < sizeof x / 4; i++) x[i] = frand(&rng);
  for (size_t i = 0; i < sizeof w / 4; i++) w[i] = frand(&rng); /* L = Σ w ⊙ y */
  double alpha[K] = {0.3, -0.2, 0.5}, gum[K] = {0.1, 0.7, -0.4}, m[K];
  lt_gumbel_softmax(K, alpha, gum, 0.7, m);
  float mf[K] = {(float)m[0], (float)m[1], (float)m[2]}, cm[R];
  lt_mixture_cummask(K, cand, mf, cm);
  CHECK_NEAR(cm[0], 1.0, 1e-6);              /* every candidate keeps component 0 */
  CHECK_NEAR(cm[5], mf[2], 1e-7);            /* only rank 6 keeps component 5 */

  lt_err err = {0};
  lt_backend *be = lt_backend_get("cpu", &err);
  /* One pass: the rank-6 block with G ⊙ M as its core. */
  float geff[R * R * 9];
  lt_mixture_apply(core, R, 9, cm, geff);
  lt_graph *gm = block(R, u_in, geff, u_out, bias);
  lt_exec *ex = lt_exec_create(gm, B, LT_MODE_TRAIN, be, NULL, &err);
  REQUIRE(ex != NULL);
  memcpy(lt_exec_input(ex, 0)->data, x, sizeof x);
  REQUIRE(lt_exec_forward(ex, &err) == LT_OK);
  float ym[B * S * H * W];
  memcpy(ym, lt_exec_output(ex, 0)->data, sizeof ym);
  lt_exec_zero_grads(ex);
  memcpy(lt_exec_output_grad(ex, 0)->data, w, sizeof w);
  REQUIRE(lt_exec_backward(ex, &err) == LT_OK);
  float dg[R * R * 9];
  double dc[R], dm[K];
  lt_mixture_backward(core, R, 9, cm, lt_tensor_f32(lt_exec_param_grad(ex, lt_graph_find_value(gm, "w2"))),
                      dg, dc);
  lt_mixture_dm(K, cand, dc, dm);
  const float *du_in_m = lt_tensor_f32(lt_exec_param_grad(ex, lt_graph_find_value(gm, "w1")));
  const float *du_out_m = lt_tensor_f32(lt_exec_param_grad(ex, lt_graph_find_value(gm, "w3")));
  const float *db_m = lt_tensor_f32(lt_exec_param_grad(ex, lt_graph_find_value(gm, "b")));

  /* Explicit: each candidate as its own rank-r layer, outputs weighted by m. */
  double ye[B * S * H * W] = {0}, du_in[R * C] = {0}, dcore[R * R * 9] = {0}, du_out[S * R] = {0},
         db[S] = {0}, dm_e[K] = {0};
  for (int i = 0; i < K; i++) {
    int r = cand[i];
    lt_graph *gi = block(r, u_in, core, u_out, bias);
    lt_exec *xi = lt_exec_create(gi, B, LT_MODE_TRAIN, be, NULL, &err);
    REQUIRE(xi != NULL);
    memcpy(lt_exec_input(xi, 0)->data, x, sizeof x);
    REQUIRE(lt_exec_forward(xi, &err) == LT_OK);
    const float *yi = lt_tensor_f32(lt_exec_output(xi, 0));
    float *dyi = lt_tensor_f32(lt_exec_output_grad(xi, 0));
    for (int j = 0; j < B * S * H * W; j++) {
      ye[j] += m[i] * yi[j];
      dm_e[i] += (double)w[j] * yi[j]; /* ∂L/∂m_i */
      dyi[j] = (float)(m[i] * w[j]);
    }
    lt_exec_zero_grads(xi);
    REQUIRE(lt_exec_backward(xi, &err) == LT_OK);
    const float *g1 = lt_tensor_f32(lt_exec_param_grad(xi, lt_graph_find_value(gi, "w1")));
    const float *g2 = lt_tensor_f32(lt_exec_param_grad(xi, lt_graph_find_value(gi, "w2")));
    const float *g3 = lt_tensor_f32(lt_exec_param_grad(xi, lt_graph_find_value(gi, "w3")));
    const float *gb = lt_tensor_f32(lt_exec_param_grad(xi, lt_graph_find_value(gi, "b")));
    for (int a = 0; a < r; a++)
      for (int c = 0; c < C; c++) du_in[a * C + c] += g1[a * C + c];
    for (int a = 0; a < r; a++)
      for (int b = 0; b < r; b++)
        for (int k = 0; k < 9; k++) dcore[(a * R + b) * 9 + k] += g2[(a * r + b) * 9 + k];
    for (int s = 0; s < S; s++)
      for (int a = 0; a < r; a++) du_out[s * R + a] += g3[s * r + a];
    for (int s = 0; s < S; s++) db[s] += gb[s];
    lt_exec_free(xi);
    lt_graph_free(gi);
  }
  double worst = 0;
  for (int j = 0; j < B * S * H * W; j++) worst = fmax(worst, fabs(ym[j] - ye[j]));
  CHECK_MSG(worst < 1e-4, "forward differs by %g", worst);
  CHECK_ALL(R * C, du_in_m, du_in, 1e-3);
  CHECK_ALL(R * R * 9, dg, dcore, 1e-3);
  CHECK_ALL(S * R, du_out_m, du_out, 1e-3);
  CHECK_ALL(S, db_m, db, 1e-3);
  /* ∂L/∂m_i differ by one constant: the explicit form counts the bias (and the components every
   * candidate shares) once per candidate, the masked form once, as Σ m_i = 1 makes them equal.
   * A constant shift of dm cancels in the softmax backward, so the logit gradients agree. */
  for (int i = 1; i < K; i++)
    CHECK_NEAR((dm[i] - dm[0]) / (dm_e[i] - dm_e[0]), 1.0, 1e-4);
  double da_m[K], da_e[K];
  lt_gumbel_softmax_backward(K, m, 0.7, dm, da_m);
  lt_gumbel_softmax_backward(K, m, 0.7, dm_e, da_e);
  for (int i = 0; i < K; i++) CHECK_NEAR(da_m[i], da_e[i], 1e-4 * fmax(1, fabs(da_e[i])));

  /* Logits: L(α) = Σ_i softmax((α + g)/τ)_i ℓ_i, by central differences. */
  double da[K];
  lt_gumbel_softmax_backward(K, m, 0.7, dm_e, da);
  for (int k = 0; k < K; k++) {
    double ap[K], am[K], mp[K], mm[K], lp = 0, lm = 0, h = 1e-5;
    memcpy(ap, alpha, sizeof ap), memcpy(am, alpha, sizeof am);
    ap[k] += h, am[k] -= h;
    lt_gumbel_softmax(K, ap, gum, 0.7, mp);
    lt_gumbel_softmax(K, am, gum, 0.7, mm);
    for (int i = 0; i < K; i++) lp += mp[i] * dm_e[i], lm += mm[i] * dm_e[i];
    CHECK_NEAR(da[k], (lp - lm) / (2 * h), 1e-5 * fmax(1, fabs(da[k])));
  }
  lt_exec_free(ex);
  lt_graph_free(gm);
}

/* The same for a linear layer x(KL) -> W(ML, KL) + bias as its two SVD factors b (r, KL) then
 * a (ML, r): the rows of b masked by the cumulative weights give the explicit mixture of the
 * rank-r_i pairs, forward and in every gradient (a, b, bias, logits). */
enum { KL = 10, ML = 7, BL = 4 };

static lt_graph *linear_pair(int r, const float *fb /* (R, KL) */, const float *fa /* (ML, R) */,
                             const float *bias /* (ML) */) {
  float wb[R * KL], wa[ML * R];
  for (int j = 0; j < r; j++)
    for (int k = 0; k < KL; k++) wb[j * KL + k] = fb[j * KL + k];
  for (int i = 0; i < ML; i++)
    for (int j = 0; j < r; j++) wa[i * r + j] = fa[i * R + j];
  lt_err err = {0};
  lt_graph *g = lt_graph_new();
  int x = lt_graph_add_input(g, "x", LT_F32, 1, (int64_t[]){KL});
  int pb = lt_graph_add_param(g, "wb", tensor_from(2, (int64_t[]){r, KL}, wb), 1);
  int pa = lt_graph_add_param(g, "wa", tensor_from(2, (int64_t[]){ML, r}, wa), 1);
  int pbias = lt_graph_add_param(g, "bias", tensor_from(1, (int64_t[]){ML}, bias), 1);
  lt_node_attrs at = lt_attrs_default();
  int y1 = lt_graph_add_node(g, LT_OP_LINEAR, "b", (int[]){x, pb}, 2, &at, &err);
  int y2 = lt_graph_add_node(g, LT_OP_LINEAR, "a", (int[]){y1, pa, pbias}, 3, &at, &err);
  lt_graph_set_output(g, y2);
  return g;
}

TEST_CASE(masked_linear_mixture_equals_explicit_mixture_forward_and_gradients) {
  lt_rng rng = lt_rng_make(4, 0);
  float fb[R * KL], fa[ML * R], bias[ML], x[BL * KL], w[BL * ML];
  for (size_t i = 0; i < sizeof fb / 4; i++) fb[i] = frand(&rng);
  for (size_t i = 0; i < sizeof fa / 4; i++) fa[i] = frand(&rng);
  for (size_t i = 0; i < ML; i++) bias[i] = frand(&rng);
  for (size_t i = 0; i < sizeof x / 4; i++) x[i] = frand(&rng);
  for (size_t i = 0; i < sizeof w / 4; i++) w[i] = frand(&rng); /* L = Σ w ⊙ y */
  double alpha[K] = {-0.1, 0.4, 0.2}, gum[K] = {0.5, -0.3, 0.2}, m[K];
  lt_gumbel_softmax(K, alpha, gum, 0.9, m);
  float mf[K] = {(float)m[0], (float)m[1], (float)m[2]}, cm[R];
  lt_mixture_cummask(K, cand, mf, cm);

  lt_err err = {0};
  lt_backend *be = lt_backend_get("cpu", &err);
  float beff[R * KL];
  lt_mixture_apply_rows(fb, R, KL, cm, beff);
  lt_graph *gm = linear_pair(R, beff, fa, bias);
  lt_exec *ex = lt_exec_create(gm, BL, LT_MODE_TRAIN, be, NULL, &err);
  REQUIRE(ex != NULL);
  memcpy(lt_exec_input(ex, 0)->data, x, sizeof x);
  REQUIRE(lt_exec_forward(ex, &err) == LT_OK);
  float ym[BL * ML];
  memcpy(ym, lt_exec_output(ex, 0)->data, sizeof ym);
  lt_exec_zero_grads(ex);
  memcpy(lt_exec_output_grad(ex, 0)->data, w, sizeof w);
  REQUIRE(lt_exec_backward(ex, &err) == LT_OK);
  float db_m[R * KL];
  double dc[R], dm[K];
  lt_mixture_backward_rows(fb, R, KL, cm,
                           lt_tensor_f32(lt_exec_param_grad(ex, lt_graph_find_value(gm, "wb"))),
                           db_m, dc);
  lt_mixture_dm(K, cand, dc, dm);
  const float *da_m = lt_tensor_f32(lt_exec_param_grad(ex, lt_graph_find_value(gm, "wa")));
  const float *dbias_m = lt_tensor_f32(lt_exec_param_grad(ex, lt_graph_find_value(gm, "bias")));

  double ye[BL * ML] = {0}, db_e[R * KL] = {0}, da_e[ML * R] = {0}, dbias_e[ML] = {0},
         dm_e[K] = {0};
  for (int i = 0; i < K; i++) {
    int r = cand[i];
    lt_graph *gi = linear_pair(r, fb, fa, bias);
    lt_exec *xi = lt_exec_create(gi, BL, LT_MODE_TRAIN, be, NULL, &err);
    REQUIRE(xi != NULL);
    memcpy(lt_exec_input(xi, 0)->data, x, sizeof x);
    REQUIRE(lt_exec_forward(xi, &err) == LT_OK);
    const float *yi = lt_tensor_f32(lt_exec_output(xi, 0));
    float *dyi = lt_tensor_f32(lt_exec_output_grad(xi, 0));
    for (int j = 0; j < BL * ML; j++) {
      ye[j] += m[i] * yi[j];
      dm_e[i] += (double)w[j] * yi[j];
      dyi[j] = (float)(m[i] * w[j]);
    }
    lt_exec_zero_grads(xi);
    REQUIRE(lt_exec_backward(xi, &err) == LT_OK);
    const float *gb = lt_tensor_f32(lt_exec_param_grad(xi, lt_graph_find_value(gi, "wb")));
    const float *ga = lt_tensor_f32(lt_exec_param_grad(xi, lt_graph_find_value(gi, "wa")));
    const float *gbias = lt_tensor_f32(lt_exec_param_grad(xi, lt_graph_find_value(gi, "bias")));
    for (int j = 0; j < r; j++)
      for (int k = 0; k < KL; k++) db_e[j * KL + k] += gb[j * KL + k];
    for (int o = 0; o < ML; o++)
      for (int j = 0; j < r; j++) da_e[o * R + j] += ga[o * r + j];
    for (int o = 0; o < ML; o++) dbias_e[o] += gbias[o];
    lt_exec_free(xi);
    lt_graph_free(gi);
  }
  double worst = 0;
  for (int j = 0; j < BL * ML; j++) worst = fmax(worst, fabs(ym[j] - ye[j]));
  CHECK_MSG(worst < 1e-4, "forward differs by %g", worst);
  CHECK_ALL(R * KL, db_m, db_e, 1e-4);
  CHECK_ALL(ML * R, da_m, da_e, 1e-4);
  CHECK_ALL(ML, dbias_m, dbias_e, 1e-4);
  for (int i = 1; i < K; i++)
    CHECK_NEAR((dm[i] - dm[0]) / (dm_e[i] - dm_e[0]), 1.0, 1e-4);
  double ga_m[K], ga_e[K];
  lt_gumbel_softmax_backward(K, m, 0.9, dm, ga_m);
  lt_gumbel_softmax_backward(K, m, 0.9, dm_e, ga_e);
  for (int i = 0; i < K; i++) CHECK_NEAR(ga_m[i], ga_e[i], 1e-4 * fmax(1, fabs(ga_e[i])));
  lt_exec_free(ex);
  lt_graph_free(gm);
}

int main(void) {
  RUN(masked_mixture_equals_explicit_mixture_forward_and_gradients);
  RUN(masked_linear_mixture_equals_explicit_mixture_forward_and_gradients);
  return test_summary();
}
