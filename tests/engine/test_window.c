/* Strided windows (Slice and Pad forward, lt_cpu_window_fwd) against a brute-force index walk,
 * and the inference executor's fused Slice chains (plan_window) against the same graph run node
 * by node: random shapes, negative steps, negative pads (crops), fill values, element sizes 1 to
 * 8, one and two threads, tensors large enough for the kernel to go parallel; chains that must
 * not fuse (an intermediate read twice, or a graph output); batch split on and off. */
#include <omp.h>

#include "backend/cpu/kernels.h"
#include "lathe/backend.h"
#include "lathe/exec.h"
#include "test.h"

/* ---- the kernel ---------------------------------------------------------------------------- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static int64_t rnd(int64_t n) { /* uniform in [0, n) */
  rng_state ^= rng_state << 13, rng_state ^= rng_state >> 7, rng_state ^= rng_state << 17;
  return (int64_t)(rng_state % (uint64_t)n);
}

/* y by walking every y index and applying the definition in kernels.h. */
static void window_brute(int ndim, const int64_t *xshape, const int64_t *yshape,
                         const int64_t *start, const int64_t *step, const int64_t *lo,
                         const int64_t *hi, float value, size_t elem, const char *x, char *y) {
  int64_t n = 1, idx[LT_KMAX_DIMS] = {0};
  for (int d = 0; d < ndim; d++) n *= yshape[d];
  for (int64_t e = 0; e < n; e++) {
    int64_t r = e, off = 0, in = 1;
    for (int d = ndim - 1; d >= 0; d--) idx[d] = r % yshape[d], r /= yshape[d];
    for (int d = 0; d < ndim; d++) {
      in &= idx[d] >= lo[d] && idx[d] < hi[d];
      off = off * xshape[d] + start[d] + (idx[d] - lo[d]) * step[d];
    }
    if (in)
      memcpy(y + e * (int64_t)elem, x + off * (int64_t)elem, elem);
    else if (elem == 4)
      memcpy(y + e * 4, &value, 4);
    else
      memset(y + e * (int64_t)elem, 0, elem);
  }
}

/* One random window: every dim gets a y extent, a window [lo, hi) within it and a step whose
 * reads stay inside x. big: a tensor of a few hundred KB (the kernel goes parallel). */
static int window_case(int ndim, int big, int64_t *xs, int64_t *ys, int64_t *st, int64_t *sp,
                       int64_t *lo, int64_t *hi) {
  for (int d = 0; d < ndim; d++) {
    const int64_t cap = big && d >= ndim - 2 ? 48 : 6;
    ys[d] = 1 + rnd(cap);
    lo[d] = rnd(3) == 0 ? rnd(ys[d] + 1) : 0;
    hi[d] = rnd(3) == 0 ? lo[d] + rnd(ys[d] - lo[d] + 1) : ys[d];
    if (rnd(8) == 0) hi[d] = lo[d] > 0 ? lo[d] - 1 : 0; /* empty, hi below lo */
    const int64_t cnt = hi[d] > lo[d] ? hi[d] - lo[d] : 0;
    sp[d] = (1 + rnd(3)) * (rnd(3) == 0 ? -1 : 1);
    const int64_t span = cnt > 0 ? (cnt - 1) * (sp[d] < 0 ? -sp[d] : sp[d]) + 1 : 1;
    xs[d] = span + rnd(4);
    const int64_t slack = xs[d] - span;
    st[d] = sp[d] > 0 ? rnd(slack + 1) : xs[d] - 1 - rnd(slack + 1);
  }
  int64_t n = 1;
  for (int d = 0; d < ndim; d++) n *= xs[d] > ys[d] ? xs[d] : ys[d];
  return n <= (1 << 20);
}

TEST_CASE(window_kernel_matches_brute_force) {
  const size_t elems[] = {4, 4, 1, 2, 8};
  int cases = 0;
  for (int it = 0; it < 600; it++) {
    const int ndim = 1 + (int)rnd(LT_KMAX_DIMS), big = it % 10 == 0;
    int64_t xs[LT_KMAX_DIMS], ys[LT_KMAX_DIMS], st[LT_KMAX_DIMS], sp[LT_KMAX_DIMS];
    int64_t lo[LT_KMAX_DIMS], hi[LT_KMAX_DIMS];
    if (!window_case(ndim, big, xs, ys, st, sp, lo, hi)) continue;
    const size_t elem = elems[rnd(5)];
    const float value = rnd(2) ? 0.0f : -1.5f;
    int64_t nx = 1, ny = 1;
    for (int d = 0; d < ndim; d++) nx *= xs[d], ny *= ys[d];
    char *x = malloc((size_t)nx * elem), *want = malloc((size_t)ny * elem);
    char *got = malloc((size_t)ny * elem);
    for (int64_t i = 0; i < nx * (int64_t)elem; i++) x[i] = (char)rnd(251);
    window_brute(ndim, xs, ys, st, sp, lo, hi, value, elem, x, want);
    for (int threads = 1; threads <= 2; threads++) {
      omp_set_num_threads(threads);
      memset(got, 0x5a, (size_t)ny * elem);
      lt_cpu_window_fwd(ndim, xs, ys, st, sp, lo, hi, value, elem, x, got);
      CHECK_MSG(!memcmp(got, want, (size_t)ny * elem), "case %d: ndim %d elem %zu threads %d "
                "y[0] %lld x[0] %lld step[last] %lld", it, ndim, elem, threads, (long long)ys[0],
                (long long)xs[0], (long long)sp[ndim - 1]);
    }
    cases++;
    free(x), free(want), free(got);
  }
  CHECK(cases > 500);
  omp_set_num_threads(2);
}

/* The Slice and Pad kernels (which run through the window) at negative steps and crops. */
TEST_CASE(slice_and_pad_kernels_match_brute_force) {
  for (int it = 0; it < 200; it++) {
    const int ndim = 1 + (int)rnd(4);
    int64_t xs[4], ys[4], st[4], sp[4], pads[8], pys[4], lo[4], hi[4], one[4], zero[4] = {0};
    for (int d = 0; d < ndim; d++) {
      xs[d] = 1 + rnd(9);
      sp[d] = (1 + rnd(3)) * (rnd(2) ? -1 : 1);
      st[d] = rnd(xs[d]);
      /* as many as fit from st in the step's direction */
      ys[d] = sp[d] > 0 ? (xs[d] - 1 - st[d]) / sp[d] + 1 : st[d] / -sp[d] + 1;
      pads[d] = rnd(5) - 2, pads[ndim + d] = rnd(5) - 2;
      if (xs[d] + pads[d] + pads[ndim + d] < 1) pads[d] = pads[ndim + d] = 0;
      pys[d] = xs[d] + pads[d] + pads[ndim + d];
      lo[d] = pads[d] > 0 ? pads[d] : 0;
      hi[d] = xs[d] + pads[d] < pys[d] ? xs[d] + pads[d] : pys[d];
      one[d] = 1;
    }
    float x[9 * 9 * 9 * 9], y[13 * 13 * 13 * 13], want[13 * 13 * 13 * 13];
    int64_t nx = 1, ny = 1, np = 1;
    for (int d = 0; d < ndim; d++) nx *= xs[d], ny *= ys[d], np *= pys[d];
    for (int64_t i = 0; i < nx; i++) x[i] = (float)i;
    lt_cpu_slice_fwd(ndim, xs, st, sp, ys, sizeof(float), x, y);
    window_brute(ndim, xs, ys, st, sp, zero, ys, 0.0f, sizeof(float), (const char *)x,
                 (char *)want);
    CHECK_MSG(!memcmp(y, want, sizeof(float) * (size_t)ny), "slice case %d", it);
    int64_t pst[4];
    for (int d = 0; d < ndim; d++) pst[d] = lo[d] - pads[d];
    lt_cpu_pad_fwd(ndim, xs, pads, 0.25f, x, y);
    window_brute(ndim, xs, pys, pst, one, lo, hi, 0.25f, sizeof(float), (const char *)x,
                 (char *)want);
    CHECK_MSG(!memcmp(y, want, sizeof(float) * (size_t)np), "pad case %d", it);
  }
}

/* ---- fused chains in the executor ---------------------------------------------------------- */

static lt_node_attrs slice_attrs(int r, const int64_t *starts, const int64_t *ends,
                                 const int64_t *steps) {
  lt_node_attrs a = lt_attrs_default();
  a.n_ints = 3 * r;
  for (int d = 0; d < r; d++)
    a.ints[d] = starts[d], a.ints[r + d] = ends[d], a.ints[2 * r + d] = steps[d];
  return a;
}

static lt_node_attrs pad_attrs(int r, const int64_t *begins, const int64_t *ends, float value) {
  lt_node_attrs a = lt_attrs_default();
  a.n_ints = 2 * r;
  for (int d = 0; d < r; d++) a.ints[d] = begins[d], a.ints[r + d] = ends[d];
  a.value = value;
  return a;
}

static int add(lt_graph *g, lt_op_type op, const char *name, int in, const lt_node_attrs *a) {
  lt_err err = {0};
  const int v = lt_graph_add_node(g, op, name, (int[]){in}, 1, a, &err);
  if (v < 0) fprintf(stderr, "%s: %s\n", name, err.msg);
  return v;
}

/* Input (5, 9, 11). Chains:
 *   a: ResNet's shortcut at odd sizes: [:, ::2, ::2] as two Slices, then channels padded 2 and 3
 *   b: a reversed, offset slice of channels, then rows from the end with step -3, then a crop
 *      by negative pads on one side and fill 0.5 on the other
 *   c: a Slice read by two nodes (no fusion through it), each continuing with a Slice
 *   d: a Slice that is a graph output, then a Slice after it (no fusion through it)
 * Every end is a graph output. */
static lt_graph *chain_graph(void) {
  lt_graph *g = lt_graph_new();
  const int x = lt_graph_add_input(g, "x", LT_F32, 3, (int64_t[]){5, 9, 11});
  const int64_t big = INT64_MAX;
  lt_node_attrs a;
  a = slice_attrs(3, (int64_t[]){0, 0, 0}, (int64_t[]){big, big, big}, (int64_t[]){1, 2, 1});
  int v = add(g, LT_OP_SLICE, "a.h", x, &a);
  a = slice_attrs(3, (int64_t[]){0, 0, 0}, (int64_t[]){big, big, big}, (int64_t[]){1, 1, 2});
  v = add(g, LT_OP_SLICE, "a.w", v, &a);
  a = pad_attrs(3, (int64_t[]){2, 0, 0}, (int64_t[]){3, 0, 0}, 0.0f);
  lt_graph_set_output(g, add(g, LT_OP_PAD, "a.pad", v, &a));
  a = slice_attrs(3, (int64_t[]){-1, 1, 0}, (int64_t[]){0, big, big}, (int64_t[]){-1, 1, 1});
  v = add(g, LT_OP_SLICE, "b.c", x, &a);
  a = slice_attrs(3, (int64_t[]){0, -1, 0}, (int64_t[]){big, -big, big}, (int64_t[]){1, -3, 1});
  v = add(g, LT_OP_SLICE, "b.h", v, &a);
  a = pad_attrs(3, (int64_t[]){0, -1, 1}, (int64_t[]){1, 0, -2}, 0.5f);
  lt_graph_set_output(g, add(g, LT_OP_PAD, "b.pad", v, &a));
  a = slice_attrs(3, (int64_t[]){1, 1, 1}, (int64_t[]){4, 8, 10}, (int64_t[]){1, 1, 1});
  const int c = add(g, LT_OP_SLICE, "c.0", x, &a);
  a = slice_attrs(3, (int64_t[]){0, 0, 0}, (int64_t[]){big, big, big}, (int64_t[]){2, 2, 2});
  lt_graph_set_output(g, add(g, LT_OP_SLICE, "c.1", c, &a));
  a = slice_attrs(3, (int64_t[]){1, 0, -1}, (int64_t[]){big, big, -big}, (int64_t[]){1, 3, -1});
  lt_graph_set_output(g, add(g, LT_OP_SLICE, "c.2", c, &a));
  a = slice_attrs(3, (int64_t[]){0, 2, 0}, (int64_t[]){big, 7, big}, (int64_t[]){1, 1, 3});
  const int d = add(g, LT_OP_SLICE, "d.0", x, &a);
  lt_graph_set_output(g, d);
  a = slice_attrs(3, (int64_t[]){0, 0, 0}, (int64_t[]){big, big, big}, (int64_t[]){2, 1, 1});
  lt_graph_set_output(g, add(g, LT_OP_SLICE, "d.1", d, &a));
  return g;
}

/* Every output of two executors of g, byte for byte. */
static int same_outputs(lt_exec *a, lt_exec *b, int n_out) {
  for (int i = 0; i < n_out; i++)
    if (memcmp(lt_exec_output(a, i)->data, lt_exec_output(b, i)->data,
               lt_tensor_nbytes(lt_exec_output(b, i))))
      return 0;
  return 1;
}

TEST_CASE(fused_slice_chains_match_node_by_node) {
  lt_graph *g = chain_graph();
  lt_err err = {0};
  REQUIRE(lt_graph_infer_shapes(g, &err) == LT_OK);
  lt_backend *cpu = lt_backend_get("cpu", NULL);
  const lt_exec_opts plain = {.no_split = 1, .no_fuse = 1};
  for (int B = 1; B <= 5; B += 2) {
    lt_exec *ref = lt_exec_create(g, B, LT_MODE_INFER, cpu, &plain, &err);
    lt_exec *ex = lt_exec_create(g, B, LT_MODE_INFER, cpu, NULL, &err);
    REQUIRE(ref && ex);
    lt_tensor *in = lt_exec_input(ref, 0);
    for (int64_t i = 0; i < lt_tensor_numel(in); i++) lt_tensor_f32(in)[i] = (float)i * 0.5f - 7;
    memcpy(lt_exec_input(ex, 0)->data, in->data, lt_tensor_nbytes(in));
    REQUIRE(lt_exec_forward(ref, &err) == LT_OK);
    /* split (batch 5 at two threads) and not, each fusion on and off */
    for (int split = 0; split <= 1; split++)
      for (unsigned kinds = 0; kinds <= LT_FUSE_SLICE; kinds += LT_FUSE_SLICE) {
        lt_exec_set_batch_split(ex, split);
        lt_exec_set_fusion(ex, kinds);
        REQUIRE(lt_exec_forward(ex, &err) == LT_OK);
        CHECK_MSG(same_outputs(ex, ref, g->n_outputs), "batch %d split %d fusions %u", B, split,
                  kinds);
      }
    /* the profile (unsplit) names the two fused chains and the nodes they skip */
    lt_exec_set_fusion(ex, LT_FUSE_ALL);
    lt_exec_profile_enable(ex, 1);
    REQUIRE(lt_exec_forward(ex, &err) == LT_OK);
    CHECK(same_outputs(ex, ref, g->n_outputs));
    lt_exec_profile_row rows[32];
    const int nr = lt_exec_profile_get(ex, rows, 32, NULL, NULL);
    int chains = 0, slices = 0, pads = 0, plain_slices = 0;
    for (int r = 0; r < nr && r < 32; r++) {
      if (!strcmp(rows[r].op, "Slice+Slice+Pad")) chains += rows[r].nodes;
      if (!strcmp(rows[r].op, "Slice (fused)")) slices += rows[r].nodes;
      if (!strcmp(rows[r].op, "Pad (fused)")) pads += rows[r].nodes;
      if (!strcmp(rows[r].op, "Slice")) plain_slices += rows[r].nodes;
    }
    CHECK_MSG(chains == 2 && slices == 2 && pads == 2 && plain_slices == 5,
              "chains %d, fused slices %d, fused pads %d, plain slices %d", chains, slices, pads,
              plain_slices);
    lt_exec_free(ex);
    lt_exec_free(ref);
  }
  lt_graph_free(g);
}

/* Training runs the chains node by node (the fusion is planned for inference only). */
TEST_CASE(slice_chains_train_unfused) {
  lt_graph *g = chain_graph();
  lt_err err = {0};
  REQUIRE(lt_graph_infer_shapes(g, &err) == LT_OK);
  lt_exec *ex = lt_exec_create(g, 2, LT_MODE_TRAIN, lt_backend_get("cpu", NULL), NULL, &err);
  REQUIRE(ex);
  lt_exec_profile_enable(ex, 1);
  REQUIRE(lt_exec_forward(ex, &err) == LT_OK);
  lt_exec_profile_row rows[32];
  const int nr = lt_exec_profile_get(ex, rows, 32, NULL, NULL);
  for (int r = 0; r < nr && r < 32; r++) CHECK_MSG(!strchr(rows[r].op, '+'), "%s", rows[r].op);
  lt_exec_free(ex);
  lt_graph_free(g);
}

int main(void) {
  omp_set_num_threads(2);
  RUN(window_kernel_matches_brute_force);
  RUN(slice_and_pad_kernels_match_brute_force);
  RUN(fused_slice_chains_match_node_by_node);
  RUN(slice_chains_train_unfused);
  return test_summary();
}
