/* Graph IR: building, per-sample shape inference, errors for bad arity and impossible geometry,
 * cycles and dangling values, pruning, cloning, and MAC/parameter counts of the zoo. */
#include <stdio.h>

#include "lathe/graph.h"
#include "lathe/zoo.h"
#include "test.h"

static int add_weight(lt_graph *g, const char *name, int ndim, const int64_t *shape) {
  return lt_graph_add_param(g, name, lt_tensor_new(LT_F32, ndim, shape, LT_MEM_WEIGHTS, NULL), 1);
}

TEST_CASE(graph_conv_shape_inference_per_sample) {
  lt_err err = {0};
  lt_graph *g = lt_graph_new();
  int x = lt_graph_add_input(g, "input", LT_F32, 3, (int64_t[]){3, 32, 32});
  int w = add_weight(g, "w", 4, (int64_t[]){8, 3, 3, 3});
  lt_node_attrs a = lt_attrs_conv(3, 2, 1, 1, 1);
  int y = lt_graph_add_node(g, LT_OP_CONV2D, "conv", (int[]){x, w}, 2, &a, &err);
  REQUIRE(y >= 0);
  CHECK(g->values[y].ndim == 3);
  CHECK(g->values[y].shape[0] == 8 && g->values[y].shape[1] == 16 && g->values[y].shape[2] == 16);
  CHECK(lt_node_macs(g, &g->nodes[0]) == 8LL * 16 * 16 * 27);
  CHECK(lt_node_params(g, &g->nodes[0]) == 8 * 27);
  /* Depthwise with dilation: groups = channels. */
  int dw = add_weight(g, "dw", 4, (int64_t[]){8, 1, 3, 3});
  lt_node_attrs d = lt_attrs_conv(3, 1, 2, 2, 8);
  int z = lt_graph_add_node(g, LT_OP_CONV2D, "dwconv", (int[]){y, dw}, 2, &d, &err);
  REQUIRE(z >= 0);
  CHECK(g->values[z].shape[0] == 8 && g->values[z].shape[1] == 16);
  CHECK(lt_node_macs(g, &g->nodes[1]) == 8LL * 16 * 16 * 9);
  lt_graph_free(g);
}

TEST_CASE(graph_bad_arity_is_refused_with_a_message) {
  lt_err err = {0};
  lt_graph *g = lt_graph_new();
  int x = lt_graph_add_input(g, "input", LT_F32, 1, (int64_t[]){4});
  CHECK(lt_graph_add_node(g, LT_OP_RELU, "r", (int[]){x, x}, 2, NULL, &err) < 0);
  CHECK(err.status == LT_ERR_INVALID);
  CHECK_STR_CONTAINS(err.msg, "takes 1 inputs, got 2");
  CHECK(lt_graph_add_node(g, LT_OP_ADD, "a", (int[]){x}, 1, NULL, &err) < 0);
  CHECK_STR_CONTAINS(err.msg, "'a' (Add)");
  CHECK(lt_graph_add_node(g, LT_OP_RELU, "bad", (int[]){42}, 1, NULL, &err) < 0);
  CHECK_STR_CONTAINS(err.msg, "does not exist");
  CHECK(g->n_nodes == 0 && g->n_values == 1); /* failed adds leave the graph unchanged */
  lt_graph_free(g);
}

TEST_CASE(graph_impossible_geometry_is_refused) {
  lt_err err = {0};
  lt_graph *g = lt_graph_new();
  int x = lt_graph_add_input(g, "input", LT_F32, 3, (int64_t[]){3, 4, 4});
  int w = add_weight(g, "w", 4, (int64_t[]){8, 3, 7, 7});
  lt_node_attrs a = lt_attrs_conv(7, 1, 0, 1, 1);
  CHECK(lt_graph_add_node(g, LT_OP_CONV2D, "big", (int[]){x, w}, 2, &a, &err) < 0);
  CHECK_STR_CONTAINS(err.msg, "impossible geometry");
  int w2 = add_weight(g, "w2", 4, (int64_t[]){8, 2, 3, 3});
  lt_node_attrs b = lt_attrs_conv(3, 1, 1, 1, 1);
  CHECK(lt_graph_add_node(g, LT_OP_CONV2D, "chan", (int[]){x, w2}, 2, &b, &err) < 0);
  CHECK_STR_CONTAINS(err.msg, "input channels");
  lt_node_attrs p = lt_attrs_pool(5, 1, 0);
  CHECK(lt_graph_add_node(g, LT_OP_MAXPOOL, "pool", (int[]){x}, 1, &p, &err) < 0);
  CHECK_STR_CONTAINS(err.msg, "impossible geometry");
  int v = lt_graph_add_input(g, "vec", LT_F32, 1, (int64_t[]){5});
  int lw = add_weight(g, "lw", 2, (int64_t[]){3, 6});
  CHECK(lt_graph_add_node(g, LT_OP_LINEAR, "fc", (int[]){v, lw}, 2, NULL, &err) < 0);
  CHECK_STR_CONTAINS(err.msg, "input features");
  int u = lt_graph_add_input(g, "u", LT_F32, 3, (int64_t[]){3, 4, 5});
  CHECK(lt_graph_add_node(g, LT_OP_ADD, "add", (int[]){x, u}, 2, NULL, &err) < 0);
  CHECK_STR_CONTAINS(err.msg, "do not broadcast");
  lt_graph_free(g);
}

TEST_CASE(graph_broadcast_slice_pad_concat_shapes) {
  lt_err err = {0};
  lt_graph *g = lt_graph_new();
  int x = lt_graph_add_input(g, "input", LT_F32, 3, (int64_t[]){4, 6, 6});
  int c = lt_graph_add_const(g, "scale", lt_tensor_new(LT_F32, 4, (int64_t[]){1, 4, 1, 1},
                                                       LT_MEM_WEIGHTS, NULL));
  int m = lt_graph_add_node(g, LT_OP_MUL, "mul", (int[]){x, c}, 2, NULL, &err);
  REQUIRE(m >= 0);
  CHECK(g->values[m].ndim == 3 && g->values[m].shape[0] == 4 && g->values[m].shape[2] == 6);
  lt_node_attrs s = lt_attrs_default();
  s.n_ints = 9;
  int64_t sl[9] = {0, 0, 0, INT64_MAX, INT64_MAX, INT64_MAX, 1, 2, 2};
  memcpy(s.ints, sl, sizeof sl);
  int y = lt_graph_add_node(g, LT_OP_SLICE, "slice", (int[]){m}, 1, &s, &err);
  REQUIRE(y >= 0);
  CHECK(g->values[y].shape[0] == 4 && g->values[y].shape[1] == 3 && g->values[y].shape[2] == 3);
  lt_node_attrs p = lt_attrs_default();
  p.n_ints = 6;
  int64_t pd[6] = {2, 0, 0, 2, 0, 0};
  memcpy(p.ints, pd, sizeof pd);
  int z = lt_graph_add_node(g, LT_OP_PAD, "pad", (int[]){y}, 1, &p, &err);
  REQUIRE(z >= 0);
  CHECK(g->values[z].shape[0] == 8);
  lt_node_attrs cat = lt_attrs_default();
  int q = lt_graph_add_node(g, LT_OP_CONCAT, "cat", (int[]){z, y}, 2, &cat, &err);
  REQUIRE(q >= 0);
  CHECK(g->values[q].shape[0] == 12);
  CHECK(lt_graph_add_node(g, LT_OP_CONCAT, "cat2", (int[]){q, x}, 2, &cat, &err) < 0);
  CHECK_STR_CONTAINS(err.msg, "does not match");
  /* The data-movement kernels index at most 6 axes, the batch included. */
  int deep = lt_graph_add_input(g, "deep", LT_F32, 6, (int64_t[]){1, 2, 1, 2, 1, 2});
  lt_node_attrs tr = lt_attrs_default();
  tr.n_ints = 6;
  for (int i = 0; i < 6; i++) tr.ints[i] = 5 - i;
  CHECK(lt_graph_add_node(g, LT_OP_TRANSPOSE, "deep.t", &deep, 1, &tr, &err) < 0);
  CHECK_STR_CONTAINS(err.msg, "per-sample rank 6 exceeds");
  lt_graph_free(g);
}

TEST_CASE(graph_duplicate_names_are_refused) {
  lt_err err = {0};
  lt_graph *g = lt_graph_new();
  int x = lt_graph_add_input(g, "input", LT_F32, 1, (int64_t[]){4});
  CHECK(lt_graph_add_input(g, "input", LT_F32, 1, (int64_t[]){4}) < 0);
  CHECK(lt_graph_add_node(g, LT_OP_RELU, "r", (int[]){x}, 1, NULL, &err) >= 0);
  CHECK(lt_graph_add_node(g, LT_OP_RELU, "r", (int[]){x}, 1, NULL, &err) < 0);
  CHECK_STR_CONTAINS(err.msg, "already used");
  lt_graph_free(g);
}

/* a -> b -> c; then rewire a to read c: a cycle. */
TEST_CASE(graph_toposort_orders_and_finds_cycles_and_dangling_values) {
  lt_err err = {0};
  lt_graph *g = lt_graph_new();
  int x = lt_graph_add_input(g, "input", LT_F32, 1, (int64_t[]){4});
  int a = lt_graph_add_node(g, LT_OP_RELU, "a", (int[]){x}, 1, NULL, &err);
  int b = lt_graph_add_node(g, LT_OP_TANH, "b", (int[]){a}, 1, NULL, &err);
  int c = lt_graph_add_node(g, LT_OP_SIGMOID, "c", (int[]){b}, 1, NULL, &err);
  REQUIRE(c >= 0);
  /* Reverse the node array: toposort must restore a, b, c. */
  lt_node t = g->nodes[0];
  g->nodes[0] = g->nodes[2];
  g->nodes[2] = t;
  CHECK(lt_graph_toposort(g, &err) == LT_OK);
  CHECK(strcmp(g->nodes[0].name, "a") == 0 && strcmp(g->nodes[2].name, "c") == 0);
  CHECK(g->values[c].producer == 2);
  g->nodes[0].in[0] = c;
  CHECK(lt_graph_toposort(g, &err) == LT_ERR_INVALID);
  CHECK_STR_CONTAINS(err.msg, "cycle");
  g->nodes[0].in[0] = x;
  /* A node reading an activation no node produces. */
  g->nodes[1].out[0] = x; /* b now claims to write the input; c reads b's old, orphaned value */
  CHECK(lt_graph_toposort(g, &err) == LT_ERR_INVALID);
  CHECK_STR_CONTAINS(err.msg, "dangling");
  lt_graph_free(g);
}

TEST_CASE(graph_prune_removes_what_no_output_needs) {
  lt_err err = {0};
  lt_graph *g = lt_graph_new();
  int x = lt_graph_add_input(g, "input", LT_F32, 1, (int64_t[]){4});
  int w = add_weight(g, "unused.weight", 2, (int64_t[]){3, 4});
  int dead = lt_graph_add_node(g, LT_OP_LINEAR, "dead", (int[]){x, w}, 2, NULL, &err);
  int a = lt_graph_add_node(g, LT_OP_RELU, "a", (int[]){x}, 1, NULL, &err);
  REQUIRE(dead >= 0 && a >= 0);
  lt_graph_set_output(g, a);
  lt_graph_prune(g);
  CHECK(g->n_nodes == 1 && g->n_values == 2);
  CHECK(lt_graph_find_value(g, "unused.weight") < 0);
  int na = lt_graph_find_value(g, "a");
  CHECK(g->outputs[0] == na && g->nodes[0].out[0] == na && g->values[na].producer == 0);
  lt_graph_free(g);
}

TEST_CASE(graph_clone_is_deep) {
  lt_err err = {0};
  lt_graph *g = lt_zoo_build("resnet20", NULL, &err);
  REQUIRE(g);
  lt_graph *c = lt_graph_clone(g, &err);
  REQUIRE(c);
  int w = lt_graph_find_value(g, "conv1.weight");
  REQUIRE(w >= 0);
  CHECK(c->values[w].data != g->values[w].data);
  CHECK(memcmp(c->values[w].data->data, g->values[w].data->data,
               lt_tensor_nbytes(g->values[w].data)) == 0);
  lt_tensor_f32(c->values[w].data)[0] += 1.0f;
  CHECK(lt_tensor_f32(c->values[w].data)[0] != lt_tensor_f32(g->values[w].data)[0]);
  CHECK(lt_graph_macs(c) == lt_graph_macs(g) && c->n_nodes == g->n_nodes);
  lt_graph_free(c);
  lt_graph_free(g);
}

/* Published: ResNet-20/32/56 0.27/0.46/0.85 M params, ResNet-20 40.55 M MACs (He et al. 2016,
 * Idelbayev's table);
 * the exact figures match PyTorch's parameters() and a conv+linear MAC count
 * (tests/engine/zoo_counts.py checks them against torch). */
TEST_CASE(zoo_macs_and_params_match_published_figures) {
  struct {
    const char *name;
    int64_t macs, params;
  } want[] = {
      {"resnet20", 40551040, 269722},
      {"resnet32", 68862592, 464154},
      {"resnet56", 125485696, 853018},
  };
  for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
    lt_err err = {0};
    lt_graph *g = lt_zoo_build(want[i].name, NULL, &err);
    CHECK_MSG(g, "%s: %s", want[i].name, err.msg);
    if (!g) continue;
    CHECK_MSG(lt_graph_macs(g) == want[i].macs, "%s macs %lld", want[i].name,
              (long long)lt_graph_macs(g));
    CHECK_MSG(lt_graph_params(g) == want[i].params, "%s params %lld", want[i].name,
              (long long)lt_graph_params(g));
    lt_graph_free(g);
  }
}

TEST_CASE(zoo_builds_every_model_and_refuses_unknown_names) {
  lt_err err = {0};
  for (const char *const *n = lt_zoo_names(); *n; n++) {
    lt_graph *g = lt_zoo_build(*n, NULL, &err);
    CHECK_MSG(g, "%s: %s", *n, err.msg);
    if (g) CHECK(lt_graph_toposort(g, &err) == LT_OK && g->n_outputs == 1);
    lt_graph_free(g);
  }
  CHECK(lt_zoo_build("resnet21", NULL, &err) == NULL);
  CHECK_STR_CONTAINS(err.msg, "unknown model 'resnet21'");
  lt_zoo_opts o = {.height = 30, .width = 30};
  CHECK(lt_zoo_build("unet", &o, &err) == NULL);
  CHECK_STR_CONTAINS(err.msg, "multiple of 4");
  lt_zoo_opts u = {.in_channels = 2, .out_channels = 3, .height = 16, .width = 24};
  lt_graph *g = lt_zoo_build("unet", &u, &err);
  REQUIRE(g);
  const lt_value *out = &g->values[g->outputs[0]];
  CHECK(out->shape[0] == 3 && out->shape[1] == 16 && out->shape[2] == 24);
  lt_graph_free(g);
}

TEST_CASE(zoo_init_is_a_function_of_the_seed) {
  lt_err err = {0};
  lt_zoo_opts a = {.seed = 7}, b = {.seed = 8};
  lt_graph *g1 = lt_zoo_build("smallcnn", &a, &err), *g2 = lt_zoo_build("smallcnn", &a, &err),
           *g3 = lt_zoo_build("smallcnn", &b, &err);
  REQUIRE(g1 && g2 && g3);
  int w = lt_graph_find_value(g1, "block1.conv.weight");
  REQUIRE(w >= 0);
  size_t nb = lt_tensor_nbytes(g1->values[w].data);
  CHECK(memcmp(g1->values[w].data->data, g2->values[w].data->data, nb) == 0);
  CHECK(memcmp(g1->values[w].data->data, g3->values[w].data->data, nb) != 0);
  /* Kaiming normal, fan_in 9: std sqrt(2/9) = 0.471 over 288 draws. */
  const float *p = lt_tensor_f32(g1->values[w].data);
  double ss = 0;
  for (int i = 0; i < 288; i++) ss += (double)p[i] * p[i];
  CHECK_NEAR(sqrt(ss / 288), 0.4714, 0.06);
  lt_graph_free(g1);
  lt_graph_free(g2);
  lt_graph_free(g3);
}

/* The name index: every name found after 200,000 appends (a scan would take minutes), a failed
 * add's rolled-back value leaves no stale hit, and pruning and cloning keep lookups right. */
TEST_CASE(graph_name_lookup_is_indexed_and_survives_prune_and_clone) {
  enum { N = 200000 };
  lt_err err = {0};
  lt_graph *g = lt_graph_new();
  int prev = lt_graph_add_input(g, "x", LT_F32, 1, (int64_t[]){4});
  char name[32];
  for (int i = 0; i < N; i++) {
    snprintf(name, sizeof name, "relu_%d", i);
    prev = lt_graph_add_node(g, LT_OP_RELU, name, &prev, 1, NULL, &err);
    if (prev < 0) break;
  }
  CHECK(prev == N);
  lt_graph_set_output(g, prev);
  int ok = 1;
  for (int i = 0; i < N; i += 7) {
    snprintf(name, sizeof name, "relu_%d", i);
    ok &= lt_graph_find_value(g, name) == i + 1;
  }
  CHECK(ok);
  CHECK(lt_graph_find_value(g, "x") == 0);
  CHECK(lt_graph_find_value(g, "relu_") == -1 && lt_graph_find_value(g, "") == -1);
  CHECK(lt_graph_add_node(g, LT_OP_RELU, "relu_5", &prev, 1, NULL, &err) < 0); /* duplicate */
  /* An unconnected branch: pruned away, its names must disappear, the chain's ids shift. */
  int side = lt_graph_add_node(g, LT_OP_RELU, "side", (int[]){0}, 1, NULL, &err);
  CHECK(side == N + 1 && lt_graph_find_value(g, "side") == side);
  lt_graph *c = lt_graph_clone(g, &err);
  CHECK(c && lt_graph_find_value(c, "side") == side && lt_graph_find_value(c, "relu_123") == 124);
  lt_graph_prune(g);
  CHECK(lt_graph_find_value(g, "side") == -1);
  CHECK(lt_graph_find_value(g, "relu_199999") == g->n_values - 1);
  CHECK(lt_graph_add_node(g, LT_OP_RELU, "side", (int[]){0}, 1, NULL, &err) == g->n_values - 1);
  lt_graph_free(c);
  lt_graph_free(g);
}

int main(void) {
  RUN(graph_conv_shape_inference_per_sample);
  RUN(graph_bad_arity_is_refused_with_a_message);
  RUN(graph_impossible_geometry_is_refused);
  RUN(graph_broadcast_slice_pad_concat_shapes);
  RUN(graph_duplicate_names_are_refused);
  RUN(graph_toposort_orders_and_finds_cycles_and_dangling_values);
  RUN(graph_prune_removes_what_no_output_needs);
  RUN(graph_clone_is_deep);
  RUN(graph_name_lookup_is_indexed_and_survives_prune_and_clone);
  RUN(zoo_macs_and_params_match_published_figures);
  RUN(zoo_builds_every_model_and_refuses_unknown_names);
  RUN(zoo_init_is_a_function_of_the_seed);
  return test_summary();
}
