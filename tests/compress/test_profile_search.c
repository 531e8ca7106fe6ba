/* The profiler and the search on small models: the rank step is read off a latency staircase;
 * a cached table is reused (nothing is measured twice); the search meets a FLOPs target and its
 * cost model agrees with the graph's own MAC count after the rewrite; impossible targets and
 * models with nothing to compress get errors that say what to do. */
#include "lathe/backend.h"
#include "lathe/compress.h"
#include "lathe/exec.h"
#include "lathe/zoo.h"
#include "test.h"

TEST_CASE(rank_step_is_the_distance_between_latency_jumps) {
  lt_lat_table t = {.probe_step = 4, .batch = 1};
  lt_lat_entry e = {.s = 64, .c = 64, .kh = 3, .kw = 3, .in_h = 8, .in_w = 8, .n = 12};
  /* A staircase: flat within each 16 ranks, a jump after every multiple of 16. */
  for (int k = 0; k < e.n; k++) e.ranks[k] = 4 * (k + 1), e.ms[k] = 1.0 + (double)((4 * k) / 16);
  REQUIRE(lt_lat_table_add(&t, &e, NULL) == LT_OK);
  CHECK(lt_lat_find_step(&t) == 16);
  /* No staircase (smooth growth below the 5% jump threshold): the probe step. */
  for (int k = 0; k < e.n; k++) t.e[0].ms[k] = 1.0 + 0.01 * k;
  CHECK(lt_lat_find_step(&t) == 4);
  lt_lat_table_free(&t);
}

/* The latency cap: candidates not faster than the dense layer go; a layer left with none stays
 * dense and moves behind the searched ones, the dropped layers keeping their order. */
TEST_CASE(latency_cap_keeps_faster_ranks_and_leaves_slow_layers_dense) {
  lt_compress_layer L[4] = {0};
  const char *names[4] = {"a", "b", "c", "d"};
  for (int i = 0; i < 4; i++) {
    snprintf(L[i].name, sizeof L[i].name, "%s", names[i]);
    L[i].dense_ms = 1.0;
    L[i].n_cand = 3;
    for (int k = 0; k < 3; k++) L[i].cand[k] = 4 * (k + 1), L[i].macs[k] = 100 * (k + 1);
  }
  double ms[4][3] = {{0.5, 0.9, 1.0}, {1.2, 1.5, 2.0}, {1.0, NAN, 3.0}, {0.2, 1.1, 0.7}};
  for (int i = 0; i < 4; i++)
    for (int k = 0; k < 3; k++) L[i].ms[k] = ms[i][k];
  lt_compress_layer M[4];
  memcpy(M, L, sizeof M);
  int k = lt_compress_layers_keep_faster(L, 4, 0);
  REQUIRE(k == 2);
  CHECK(strcmp(L[0].name, "a") == 0);
  CHECK(L[0].n_cand == 2 && L[0].cand[1] == 8 && L[0].max_rank == 8 && L[0].ms[1] == 0.9);
  CHECK(strcmp(L[1].name, "d") == 0);
  CHECK(L[1].n_cand == 2 && L[1].cand[0] == 4 && L[1].cand[1] == 12 && L[1].macs[1] == 300 &&
        L[1].ms[1] == 0.7);
  CHECK(strcmp(L[2].name, "b") == 0);
  CHECK(strcmp(L[3].name, "c") == 0);
  CHECK(L[2].n_cand == 0 && L[3].n_cand == 0 && L[3].dense_ms == 1.0);
  /* a 15% margin: 0.9 (10% faster) goes too, and a's only rank left is 4; d keeps 4 and 12 */
  k = lt_compress_layers_keep_faster(M, 4, 0.15);
  REQUIRE(k == 2);
  CHECK(strcmp(M[0].name, "a") == 0 && M[0].n_cand == 1 && M[0].max_rank == 4);
  CHECK(strcmp(M[1].name, "d") == 0 && M[1].n_cand == 2 && M[1].cand[1] == 12);
}

TEST_CASE(profile_reuses_a_cached_table) {
  lt_err err = {0};
  lt_zoo_opts o = {.seed = 1};
  lt_graph *g = lt_zoo_build("smallcnn", &o, &err);
  REQUIRE(g != NULL);
  lt_backend *be = lt_backend_get("cpu", &err);
  lt_lat_opts lo = {.probe_step = 8, .min_reps = 3, .max_reps = 3};
  lt_lat_table t = {0};
  lt_status st = lt_lat_profile(g, be, 2, &lo, &t, &err);
  CHECK_MSG(st == LT_OK, "%s", err.msg);
  REQUIRE(st == LT_OK);
  /* smallcnn: conv 32→64 (conv 1→32 has no rank below its 1 input), fc1 and fc2 */
  CHECK(t.n == 3);
  int linear = 0;
  for (int i = 0; i < t.n; i++) linear += t.e[i].kind == LT_COMPRESS_LINEAR;
  CHECK(linear == 2);
  for (int i = 0; i < t.n; i++) {
    CHECK(t.e[i].dense_ms > 0);
    for (int k = 0; k < t.e[i].n; k++) CHECK(t.e[i].ms[k] > 0);
  }
  double first = t.e[0].dense_ms;
  REQUIRE(lt_lat_profile(g, be, 2, &lo, &t, &err) == LT_OK);
  CHECK(t.n == 3 && t.e[0].dense_ms == first); /* nothing re-measured */
  /* A table from another batch is refused rather than silently mixed. */
  CHECK(lt_lat_profile(g, be, 4, &lo, &t, &err) == LT_ERR_INVALID);
  CHECK_STR_CONTAINS(err.msg, "measure a new one");
  lt_lat_table_free(&t);
  lt_graph_free(g);
}

/* A labelled dataset in memory (not from a file): n random 1×28×28 images, 10 classes. */
static lt_dataset fake_data(int64_t n, uint8_t **x, int32_t **y) {
  *x = malloc((size_t)n * 28 * 28);
  *y = malloc(sizeof(int32_t) * (size_t)n);
  lt_rng r = lt_rng_make(5, 0);
  for (int64_t i = 0; i < n * 28 * 28; i++) (*x)[i] = (uint8_t)lt_rng_below(&r, 256);
  for (int64_t i = 0; i < n; i++) (*y)[i] = (int32_t)lt_rng_below(&r, 10);
  lt_dataset ds = {.split = "train", .n = n, .c = 1, .h = 28, .w = 28, .x_dtype = LT_U8,
                   .x = *x, .labels = *y, .num_classes = 10};
  return ds;
}

TEST_CASE(search_meets_a_flops_target_and_its_cost_model_matches_the_graph) {
  lt_err err = {0};
  lt_zoo_opts o = {.seed = 2};
  lt_graph *g = lt_zoo_build("smallcnn", &o, &err);
  REQUIRE(g != NULL);
  lt_backend *be = lt_backend_get("cpu", &err);
  lt_compress_layer *L;
  int n;
  REQUIRE(lt_compress_layers_find(g, 4, &L, &n, &err) == LT_OK);
  REQUIRE(n == 3); /* block2's conv, fc1, fc2 */
  uint8_t *x;
  int32_t *y;
  lt_dataset ds = fake_data(64, &x, &y);
  double before = (double)lt_graph_macs(g), dense = 0;
  for (int l = 0; l < n; l++) dense += (double)L[l].dense_macs;
  lt_search_config c = lt_search_config_default();
  c.train = &ds;
  c.n_weights = 48;
  c.batch_size = 8;
  c.steps = 6;
  c.target = LT_TARGET_FLOPS;
  c.fixed_cost = before - dense;
  c.target_value = 0.5 * before;
  int ranks[3];
  lt_graph *trained = NULL;
  REQUIRE(lt_compress_search(g, be, L, n, &c, ranks, &trained, &err) == LT_OK);
  double predicted = c.fixed_cost;
  for (int l = 0; l < n; l++) {
    int i = 0;
    while (i < L[l].n_cand && L[l].cand[i] != ranks[l]) i++;
    REQUIRE(i < L[l].n_cand);
    predicted += (double)L[l].macs[i];
  }
  CHECK(predicted <= c.target_value);
  CHECK_NEAR((double)lt_graph_macs(trained), predicted, 0.5);
  /* The linear layers were searched and come out as two factors at their chosen ranks. */
  for (int l = 1; l < 3; l++) {
    char nm[200];
    snprintf(nm, sizeof nm, "%s.b.weight", L[l].name);
    int v = lt_graph_find_value(trained, nm);
    REQUIRE(v >= 0);
    CHECK(trained->values[v].shape[0] == ranks[l] && trained->values[v].shape[1] == L[l].c);
  }
  /* The trained copy runs. */
  lt_exec *ex = lt_exec_create(trained, 2, LT_MODE_INFER, be, NULL, &err);
  CHECK(ex && lt_exec_forward(ex, &err) == LT_OK);
  lt_exec_free(ex);
  lt_graph_free(trained);

  /* Each layer's cost counted twice (layer_cost_scale: a latency target's slope of the whole
   * model over its layers timed alone): the chosen ranks fit the target at twice their cost, and
   * a target that the smallest ranks meet only at their cost counted once cannot be met. */
  double small = 0;
  for (int l = 0; l < n; l++) small += (double)L[l].macs[0];
  c.layer_cost_scale = 2;
  c.target_value = c.fixed_cost + 2 * small + 0.3 * (2 * dense - 2 * small);
  REQUIRE(lt_compress_search(g, be, L, n, &c, ranks, NULL, &err) == LT_OK);
  double twice = c.fixed_cost;
  for (int l = 0; l < n; l++) {
    int i = 0;
    while (i < L[l].n_cand && L[l].cand[i] != ranks[l]) i++;
    REQUIRE(i < L[l].n_cand);
    twice += 2 * (double)L[l].macs[i];
  }
  CHECK(twice <= c.target_value);
  CHECK(twice > c.fixed_cost + 2 * small); /* the budget left above the smallest ranks is used */
  c.target_value = c.fixed_cost + 1.5 * small;
  CHECK(lt_compress_search(g, be, L, n, &c, ranks, NULL, &err) == LT_ERR_INVALID);
  CHECK_STR_CONTAINS(err.msg, "cannot be met");
  c.layer_cost_scale = 0; /* once */
  /* An impossible target: even the smallest ranks cost more. */
  c.target_value = c.fixed_cost + 1;
  CHECK(lt_compress_search(g, be, L, n, &c, ranks, NULL, &err) == LT_ERR_INVALID);
  CHECK_STR_CONTAINS(err.msg, "cannot be met");
  /* Nothing to compress. */
  c.target_value = before;
  CHECK(lt_compress_search(g, be, L, 0, &c, ranks, NULL, &err) == LT_ERR_INVALID);
  CHECK_STR_CONTAINS(err.msg, "no compressible");
  free(L), free(x), free(y);
  lt_graph_free(g);
}

/* Brute force: the small CNN's linear layers (from their weights in the graph) with every rank r
 * (a multiple of the step, r <= min(K, M)) for which r·(K + M) < K·M, and their MACs. */
TEST_CASE(layers_find_lists_linear_layers_with_cheaper_ranks) {
  lt_err err = {0};
  lt_zoo_opts o = {.seed = 1};
  lt_graph *g = lt_zoo_build("smallcnn", &o, &err);
  REQUIRE(g != NULL);
  for (int step = 4; step <= 8; step += 4) {
    lt_compress_layer *L;
    int n;
    REQUIRE(lt_compress_layers_find(g, step, &L, &n, &err) == LT_OK);
    int seen = 0;
    for (int i = 0; i < g->n_nodes; i++) {
      const lt_node *nd = &g->nodes[i];
      if (nd->op != LT_OP_LINEAR) continue;
      const lt_value *w = &g->values[nd->in[1]];
      int M = (int)w->shape[0], K = (int)w->shape[1], want[LT_COMPRESS_MAX_CAND], nw = 0;
      for (int r = 1; r <= (M < K ? M : K); r++)
        if (r % step == 0 && (int64_t)r * (K + M) < (int64_t)K * M) want[nw++] = r;
      const lt_compress_layer *l = NULL;
      for (int k = 0; k < n; k++)
        if (!strcmp(L[k].name, nd->name)) l = &L[k];
      if (nw == 0) {
        CHECK_MSG(l == NULL, "%s listed without a cheaper rank", nd->name);
        continue;
      }
      REQUIRE(l != NULL);
      seen++;
      CHECK(l->kind == LT_COMPRESS_LINEAR && l->s == M && l->c == K && l->kh == 1 && l->kw == 1);
      CHECK(l->dense_macs == (int64_t)K * M && l->dense_params == (int64_t)K * M);
      CHECK_MSG(l->n_cand == nw, "%s: %d candidates, want %d", nd->name, l->n_cand, nw);
      for (int k = 0; k < nw && k < l->n_cand; k++) {
        CHECK(l->cand[k] == want[k]);
        CHECK(l->macs[k] == (int64_t)want[k] * (K + M) && l->params[k] == l->macs[k]);
      }
      /* The rewrite at a candidate changes the graph's MACs by exactly the predicted amount. */
      lt_graph *h = lt_graph_clone(g, &err);
      REQUIRE(h != NULL);
      int ranks[8] = {0};
      int idx = (int)(l - L);
      ranks[idx] = l->cand[l->n_cand / 2];
      REQUIRE(n <= 8);
      REQUIRE(lt_compress_apply(h, L, n, ranks, &err) == LT_OK);
      CHECK(lt_graph_macs(g) - lt_graph_macs(h) == l->dense_macs - l->macs[l->n_cand / 2]);
      lt_graph_free(h);
    }
    /* fc1 (3136 -> 128) and fc2 (128 -> 10: 8·138 = 1104 < 1280, so rank 8 is cheaper) */
    CHECK(seen == 2);
    free(L);
  }
  lt_graph_free(g);
}

/* A linear shape and a conv shape with the same numbers are different table entries. */
TEST_CASE(latency_table_keys_linear_apart_from_conv) {
  lt_lat_table t = {.probe_step = 4, .batch = 1};
  lt_lat_entry e = {.kind = LT_COMPRESS_CONV, .s = 16, .c = 32, .kh = 1, .kw = 1, .in_h = 1,
                    .in_w = 1, .stride = {1, 1}, .dilation = {1, 1}, .bias = 1, .dense_ms = 1,
                    .n = 1, .ranks = {4}, .ms = {0.5}};
  REQUIRE(lt_lat_table_add(&t, &e, NULL) == LT_OK);
  lt_compress_layer l = {.name = "fc", .kind = LT_COMPRESS_LINEAR, .s = 16, .c = 32, .kh = 1,
                         .kw = 1, .in_h = 1, .in_w = 1, .out_h = 1, .out_w = 1, .bias = 1,
                         .dense_macs = 512};
  l.a = lt_attrs_default();
  CHECK(lt_lat_lookup(&t, &l) == NULL);
  lt_err err = {0};
  CHECK(lt_compress_layers_set_latency(&l, 1, &t, 4, &err) == LT_ERR_INVALID);
  CHECK_STR_CONTAINS(err.msg, "linear layer fc");
  e.kind = LT_COMPRESS_LINEAR, e.dense_ms = 2;
  REQUIRE(lt_lat_table_add(&t, &e, NULL) == LT_OK);
  CHECK(lt_lat_lookup(&t, &l) == &t.e[1]);
  CHECK(lt_compress_layers_set_latency(&l, 1, &t, 4, &err) == LT_OK);
  CHECK(l.dense_ms == 2 && l.n_cand == 1 && l.ms[0] == 0.5 && l.macs[0] == 4 * 48);
  lt_lat_table_free(&t);
}

int main(void) {
  RUN(rank_step_is_the_distance_between_latency_jumps);
  RUN(latency_cap_keeps_faster_ranks_and_leaves_slow_layers_dense);
  RUN(profile_reuses_a_cached_table);
  RUN(layers_find_lists_linear_layers_with_cheaper_ranks);
  RUN(latency_table_keys_linear_apart_from_conv);
  RUN(search_meets_a_flops_target_and_its_cost_model_matches_the_graph);
  return test_summary();
}
