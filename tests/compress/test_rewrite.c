/* Graph rewrites: a model whose convs and linear layer are replaced by full-rank factors computes
 * the same logits; truncated factors cut MACs by exactly the factorised-layer formula. */
#include "lathe/backend.h"
#include "lathe/compress.h"
#include "lathe/exec.h"
#include "lathe/zoo.h"
#include "test.h"

static float *run_logits(lt_graph *g, const float *x, int batch, size_t *n_out) {
  lt_err err = {0};
  lt_backend *be = lt_backend_get("cpu", &err);
  lt_exec *ex = lt_exec_create(g, batch, LT_MODE_INFER, be, NULL, &err);
  if (!ex) {
    fprintf(stderr, "%s\n", err.msg);
    return NULL;
  }
  lt_tensor *in = lt_exec_input(ex, 0);
  memcpy(in->data, x, lt_tensor_nbytes(in));
  if (lt_exec_forward(ex, &err) != LT_OK) {
    fprintf(stderr, "%s\n", err.msg);
    lt_exec_free(ex);
    return NULL;
  }
  lt_tensor *y = lt_exec_output(ex, 0);
  *n_out = (size_t)lt_tensor_numel(y);
  float *out = malloc(lt_tensor_nbytes(y));
  memcpy(out, y->data, lt_tensor_nbytes(y));
  lt_exec_free(ex);
  return out;
}

static int count_op(const lt_graph *g, lt_op_type op) {
  int n = 0;
  for (int i = 0; i < g->n_nodes; i++) n += g->nodes[i].op == op;
  return n;
}

/* Factorises every square 3x3 conv (S == C) of g at rank_fraction of S; returns how many. */
static int factorize_square_convs(lt_graph *g, double rank_fraction, lt_err *err) {
  int done = 0;
  for (int again = 1; again;) {
    again = 0;
    for (int i = 0; i < g->n_nodes; i++) {
      lt_node *n = &g->nodes[i];
      if (n->op != LT_OP_CONV2D || strstr(n->name, ".core") || strstr(n->name, ".u_")) continue;
      const lt_value *w = &g->values[n->in[1]];
      if (w->shape[2] != 3 || w->shape[0] != w->shape[1]) continue;
      int r = (int)(w->shape[0] * rank_fraction);
      if (lt_compress_factorize_conv(g, i, r, err) != LT_OK) return -1;
      done++;
      again = 1; /* node ids changed: rescan */
      break;
    }
  }
  return done;
}

TEST_CASE(full_rank_factorised_resnet20_computes_the_same_logits) {
  lt_err err = {0};
  lt_zoo_opts o = {.seed = 7};
  lt_graph *g = lt_zoo_build("resnet20", &o, &err);
  REQUIRE(g);
  lt_graph *f = lt_graph_clone(g, &err);
  REQUIRE(f);
  int n = factorize_square_convs(f, 1.0, &err);
  CHECK_MSG(n == 16, "factorised %d convs (%s)", n, err.msg); /* 6 + 5 + 5 square 3x3 convs */
  REQUIRE(n > 0);
  CHECK(count_op(f, LT_OP_CONV2D) == count_op(g, LT_OP_CONV2D) + 2 * n);
  int batch = 2;
  float *x = malloc(sizeof(float) * batch * 3 * 32 * 32);
  lt_rng r = lt_rng_make(3, 0);
  for (int i = 0; i < batch * 3 * 32 * 32; i++) x[i] = lt_rng_normal(&r);
  size_t na = 0, nb = 0;
  float *a = run_logits(g, x, batch, &na), *b = run_logits(f, x, batch, &nb);
  REQUIRE(a && b && na == nb);
  double worst = 0, scale = 0;
  for (size_t i = 0; i < na; i++) worst = fmax(worst, fabs(a[i] - b[i])), scale = fmax(scale, fabs(a[i]));
  CHECK_MSG(worst <= 1e-3 * scale, "max |diff| %g against max |logit| %g", worst, scale);
  free(a), free(b), free(x);
  lt_graph_free(g), lt_graph_free(f);
}

TEST_CASE(truncated_factors_cut_macs_by_the_factorised_layer_formula) {
  lt_err err = {0};
  lt_graph *g = lt_zoo_build("resnet20", NULL, &err);
  REQUIRE(g);
  int64_t before = lt_graph_macs(g);
  lt_graph *f = lt_graph_clone(g, &err);
  REQUIRE(factorize_square_convs(f, 0.25, &err) == 16);
  /* Square stride-1 3x3 convs: 6 of width 16 at 32x32, 5 of width 32 at 16x16, 5 of width 64 at
   * 8x8 (the first conv of stages 2 and 3 widens the channels). Per pixel each goes from 9w² to
   * w·r + 9r² + r·w MACs. */
  int64_t want = before;
  int widths[3] = {16, 32, 64}, sides[3] = {32, 16, 8}, square[3] = {6, 5, 5};
  for (int s = 0; s < 3; s++) {
    int64_t w = widths[s], r = w / 4, px = (int64_t)sides[s] * sides[s];
    want -= square[s] * px * (lt_conv_macs_dense(w, w, 3, 3) - lt_conv_macs_tucker2(w, w, 3, 3, r));
  }
  CHECK_MSG(lt_graph_macs(f) == want, "MACs %lld, expected %lld (before %lld)",
            (long long)lt_graph_macs(f), (long long)want, (long long)before);
  lt_graph_free(g), lt_graph_free(f);
}

TEST_CASE(full_rank_svd_of_a_linear_layer_is_exact) {
  lt_err err = {0};
  lt_graph *g = lt_zoo_build("smallcnn", NULL, &err);
  REQUIRE(g);
  lt_graph *f = lt_graph_clone(g, &err);
  int lin = -1;
  for (int i = 0; i < f->n_nodes; i++)
    if (f->nodes[i].op == LT_OP_LINEAR && lin < 0) lin = i;
  REQUIRE(lin >= 0);
  const lt_value *w = &f->values[f->nodes[lin].in[1]];
  int r = (int)(w->shape[0] < w->shape[1] ? w->shape[0] : w->shape[1]);
  REQUIRE(lt_compress_factorize_linear(f, lin, r, &err) == LT_OK);
  CHECK(count_op(f, LT_OP_LINEAR) == count_op(g, LT_OP_LINEAR) + 1);
  float x[4 * 28 * 28];
  lt_rng rr = lt_rng_make(9, 0);
  for (int i = 0; i < 4 * 28 * 28; i++) x[i] = lt_rng_normal(&rr);
  size_t na, nb;
  float *a = run_logits(g, x, 4, &na), *b = run_logits(f, x, 4, &nb);
  REQUIRE(a && b);
  double worst = 0;
  for (size_t i = 0; i < na; i++) worst = fmax(worst, fabs(a[i] - b[i]));
  CHECK_MSG(worst < 1e-3, "max |diff| %g", worst);
  free(a), free(b);
  /* Balanced factors (for fine-tuning): column j of a and row j of b have the same norm
   * (sqrt of singular value j), not all of the scale in a. */
  char nm[300];
  snprintf(nm, sizeof nm, "%s.a.weight", g->nodes[lin].name);
  const lt_value *va = &f->values[lt_graph_find_value(f, nm)];
  snprintf(nm, sizeof nm, "%s.b.weight", g->nodes[lin].name);
  const lt_value *vb = &f->values[lt_graph_find_value(f, nm)];
  int M = (int)va->shape[0], K = (int)vb->shape[1];
  REQUIRE(va->shape[1] == r && vb->shape[0] == r);
  double worst_rel = 0;
  for (int j = 0; j < r; j++) {
    double na2 = 0, nb2 = 0;
    for (int i = 0; i < M; i++) na2 += pow(lt_tensor_f32(va->data)[(size_t)i * r + j], 2);
    for (int i = 0; i < K; i++) nb2 += pow(lt_tensor_f32(vb->data)[(size_t)j * K + i], 2);
    worst_rel = fmax(worst_rel, fabs(sqrt(na2) - sqrt(nb2)) / fmax(sqrt(nb2), 1e-12));
  }
  CHECK_MSG(worst_rel < 1e-3, "factor norms differ by %g (relative)", worst_rel);
  lt_graph_free(g), lt_graph_free(f);
}

TEST_CASE(factorising_a_non_conv_is_refused) {
  lt_err err = {0};
  lt_graph *g = lt_zoo_build("smallcnn", NULL, &err);
  REQUIRE(g);
  int relu = -1;
  for (int i = 0; i < g->n_nodes; i++)
    if (g->nodes[i].op == LT_OP_RELU) relu = i;
  CHECK(lt_compress_factorize_conv(g, relu, 4, &err) == LT_ERR_INVALID);
  CHECK_STR_CONTAINS(err.msg, "not a convolution");
  lt_graph_free(g);
}

int main(void) {
  RUN(full_rank_factorised_resnet20_computes_the_same_logits);
  RUN(truncated_factors_cut_macs_by_the_factorised_layer_formula);
  RUN(full_rank_svd_of_a_linear_layer_is_exact);
  RUN(factorising_a_non_conv_is_refused);
  return test_summary();
}
