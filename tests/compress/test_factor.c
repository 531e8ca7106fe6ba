/* Tucker-2 and SVD factorisation: exact at full rank, truncation error equal to (or, for the
 * two-sided HOSVD, bounded by) the discarded singular values, nested ranks share factors. */
#include "lathe/compress.h"
#include "test.h"

static float *random_weight(size_t n, uint64_t seed) {
  lt_rng r = lt_rng_make(seed, 0);
  float *w = malloc(sizeof(float) * n);
  for (size_t i = 0; i < n; i++) w[i] = lt_rng_normal(&r);
  return w;
}

static double sq_err(const float *a, const float *b, size_t n) {
  double e = 0;
  for (size_t i = 0; i < n; i++) e += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
  return e;
}

static double tail(const double *sv, int n, int r) {
  double e = 0;
  for (int i = r; i < n; i++) e += sv[i] * sv[i];
  return e;
}

TEST_CASE(tucker2_full_rank_reproduces_the_layer) {
  int s = 24, c = 16, k = 3;
  size_t n = (size_t)s * c * k * k;
  float *w = random_weight(n, 1), *rec = malloc(sizeof(float) * n);
  lt_tucker2 t;
  lt_err err = {0};
  REQUIRE(lt_tucker2_decompose(w, s, c, k, k, s, c, &t, &err) == LT_OK);
  lt_tucker2_reconstruct(&t, s, c, rec);
  double norm = 0;
  for (size_t i = 0; i < n; i++) norm += (double)w[i] * w[i];
  CHECK_MSG(sq_err(w, rec, n) / norm < 1e-10, "relative squared error %g", sq_err(w, rec, n) / norm);
  lt_tucker2_free(&t);
  free(w), free(rec);
}

TEST_CASE(tucker2_one_sided_truncation_error_equals_discarded_singular_values) {
  int s = 32, c = 16, k = 3;
  size_t n = (size_t)s * c * k * k;
  float *w = random_weight(n, 2), *rec = malloc(sizeof(float) * n);
  lt_err err = {0};
  for (int r = 4; r <= 28; r += 8) {
    lt_tucker2 t;
    REQUIRE(lt_tucker2_decompose(w, s, c, k, k, r, c, &t, &err) == LT_OK);
    lt_tucker2_reconstruct(&t, r, c, rec);
    double e = sq_err(w, rec, n), want = tail(t.sv_out, t.n_sv_out, r);
    CHECK_MSG(fabs(e - want) <= 1e-4 * want, "rank %d: error %g, discarded %g", r, e, want);
    lt_tucker2_free(&t);
  }
  free(w), free(rec);
}

TEST_CASE(tucker2_two_sided_error_bounded_by_both_tails) {
  int s = 32, c = 24, k = 3;
  size_t n = (size_t)s * c * k * k;
  float *w = random_weight(n, 3), *rec = malloc(sizeof(float) * n);
  lt_err err = {0};
  lt_tucker2 t;
  REQUIRE(lt_tucker2_decompose(w, s, c, k, k, 12, 12, &t, &err) == LT_OK);
  lt_tucker2_reconstruct(&t, 12, 12, rec);
  double e = sq_err(w, rec, n);
  double bound = tail(t.sv_out, t.n_sv_out, 12) + tail(t.sv_in, t.n_sv_in, 12);
  CHECK_MSG(e <= bound * (1 + 1e-5), "error %g above the HOSVD bound %g", e, bound);
  CHECK_MSG(e >= tail(t.sv_out, t.n_sv_out, 12) * (1 - 1e-5), "error %g below the one-mode tail", e);
  lt_tucker2_free(&t);
  free(w), free(rec);
}

TEST_CASE(tucker2_smaller_ranks_are_prefixes_of_one_decomposition) {
  int s = 16, c = 16, k = 3, p = 9;
  float *w = random_weight((size_t)s * c * p, 4);
  lt_err err = {0};
  lt_tucker2 big, small;
  REQUIRE(lt_tucker2_decompose(w, s, c, k, k, 16, 16, &big, &err) == LT_OK);
  REQUIRE(lt_tucker2_decompose(w, s, c, k, k, 8, 8, &small, &err) == LT_OK);
  float *prefix = malloc(sizeof(float) * 8 * 8 * p);
  lt_tucker2_core_prefix(&big, 8, 8, prefix);
  double worst = 0;
  for (int i = 0; i < 8 * 8 * p; i++) worst = fmax(worst, fabs(prefix[i] - small.core[i]));
  for (int i = 0; i < s; i++)
    for (int j = 0; j < 8; j++) worst = fmax(worst, fabs(big.u_out[i * 16 + j] - small.u_out[i * 8 + j]));
  CHECK_MSG(worst < 1e-5, "prefix differs from the rank-8 decomposition by %g", worst);
  lt_tucker2_free(&big), lt_tucker2_free(&small);
  free(w), free(prefix);
}

TEST_CASE(svd2_truncation_error_equals_discarded_singular_values) {
  int m = 40, k = 64;
  float *w = random_weight((size_t)m * k, 5), *rec = malloc(sizeof(float) * m * k);
  lt_err err = {0};
  for (int r = 1; r <= 40; r += 13) {
    lt_svd2 f;
    REQUIRE(lt_svd2_decompose(w, m, k, r, &f, &err) == LT_OK);
    for (int i = 0; i < m; i++)
      for (int j = 0; j < k; j++) {
        double acc = 0;
        for (int q = 0; q < r; q++) acc += (double)f.a[i * r + q] * f.b[q * k + j];
        rec[i * k + j] = (float)acc;
      }
    double e = sq_err(w, rec, (size_t)m * k), want = tail(f.sv, f.n_sv, r);
    CHECK_MSG(fabs(e - want) <= 1e-4 * (want + 1e-3), "rank %d: error %g, discarded %g", r, e, want);
    lt_svd2_free(&f);
  }
  free(w), free(rec);
}

TEST_CASE(rank_space_stops_where_factorising_stops_paying) {
  /* 64→64 3×3: dense 36864 MACs per pixel; 9r² + 128r < 36864 holds up to r = 57. */
  CHECK(lt_tucker2_max_rank(64, 64, 3, 3, 1) == 57);
  CHECK(lt_tucker2_max_rank(64, 64, 3, 3, 8) == 56);
  CHECK(lt_tucker2_max_rank(4, 4, 1, 1, 1) == 1); /* 1×1 4→4: r=1 costs 8 < 16, r=2 costs 20 */
  CHECK(lt_tucker2_max_rank(3, 3, 1, 1, 2) == 0); /* nothing cheaper: stays dense */
}

TEST_CASE(bad_ranks_are_refused_with_a_message) {
  float w[2 * 2 * 9] = {0};
  lt_err err = {0};
  lt_tucker2 t;
  CHECK(lt_tucker2_decompose(w, 2, 2, 3, 3, 3, 1, &t, &err) == LT_ERR_INVALID);
  CHECK_STR_CONTAINS(err.msg, "outside");
  lt_svd2 f;
  CHECK(lt_svd2_decompose(w, 2, 2, 0, &f, &err) == LT_ERR_INVALID);
}

int main(void) {
  RUN(tucker2_full_rank_reproduces_the_layer);
  RUN(tucker2_one_sided_truncation_error_equals_discarded_singular_values);
  RUN(tucker2_two_sided_error_bounded_by_both_tails);
  RUN(tucker2_smaller_ranks_are_prefixes_of_one_decomposition);
  RUN(svd2_truncation_error_equals_discarded_singular_values);
  RUN(rank_space_stops_where_factorising_stops_paying);
  RUN(bad_ranks_are_refused_with_a_message);
  return test_summary();
}
