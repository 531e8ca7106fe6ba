/* Op conformance of the CUDA backend against the CPU reference: every op of the op table, forward
 * and backward, through each backend's vtable (alloc, to_device, forward, backward, to_host),
 * plus the loss and optimizer kernels that train/ calls directly.
 *
 * Each op runs on a one-node graph with the same inputs, parameters, output gradients and seeds
 * on both backends. Compared: outputs, aux buffers (BN batch statistics, max-pool argmax and the
 * dropout mask: these two bit-exact), parameters updated in place (BN running statistics), and
 * every input gradient, once overwriting (accumulate 0) and once adding into random prior
 * contents (accumulate 1).
 *
 * Tolerance: |gpu - cpu| <= atol + rtol * |cpu| per element, with rtol = 1e-4, atol = 1e-5 for
 * elementwise and data-movement ops and rtol = 2e-3, atol = 2e-4 for ops that reduce (conv,
 * linear, BN, pools, broadcast gradients, losses): the GPU sums in another order (cuBLAS tiles,
 * atomics), and both sides stay in float32 (cuBLAS without TF32).
 *
 * Exits 77 (skipped) with a message when no CUDA device is visible.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/cuda_kernels.h"
#include "lathe/backend.h"
#include "ops/ops.h"
#include "test.h"

static lt_backend *cpu, *gpu;
static int covered[LT_OP_COUNT]; /* ops that ran through run_case */

#define TOL_EXACT 0.0, 0.0
#define TOL_POINT 1e-4, 1e-5
#define TOL_REDUCE 2e-3, 2e-4

/* ---- host data -------------------------------------------------------------------------------- */

static uint64_t data_seed = 100;

/* Uniform in [lo, hi) from the counter-based RNG, a fresh stream per call. */
static void fill(float *p, size_t n, float lo, float hi) {
  lt_rng r = lt_rng_make(7, data_seed++);
  for (size_t i = 0; i < n; i++) p[i] = lo + (hi - lo) * (float)lt_rng_uniform(&r);
}

static lt_tensor *host_tensor(int ndim, const int64_t *shape, float lo, float hi) {
  lt_tensor *t = lt_tensor_new(LT_F32, ndim, shape, LT_MEM_WEIGHTS, NULL);
  if (t) fill(lt_tensor_f32(t), (size_t)lt_tensor_numel(t), lo, hi);
  return t;
}

/* Counts mismatches beyond atol + rtol*|ref| and reports the worst one. */
static int compare(const char *what, const void *gpu_data, const void *cpu_data, lt_dtype dt,
                   size_t n, double rtol, double atol) {
  size_t bad = 0, worst = 0;
  double worst_excess = -1;
  for (size_t i = 0; i < n; i++) {
    double g, c;
    if (dt == LT_U8)
      g = ((const uint8_t *)gpu_data)[i], c = ((const uint8_t *)cpu_data)[i];
    else
      g = ((const float *)gpu_data)[i], c = ((const float *)cpu_data)[i];
    const double lim = atol + rtol * fabs(c), diff = fabs(g - c);
    if (!(diff <= lim) && !(isnan(g) && isnan(c))) {
      bad++;
      if (diff - lim > worst_excess || isnan(diff)) worst_excess = diff - lim, worst = i;
    }
  }
  if (bad) {
    double g = dt == LT_U8 ? ((const uint8_t *)gpu_data)[worst] : ((const float *)gpu_data)[worst];
    double c = dt == LT_U8 ? ((const uint8_t *)cpu_data)[worst] : ((const float *)cpu_data)[worst];
    TEST_FAIL_AT("%s: %zu of %zu elements differ; worst [%zu] cuda %.9g cpu %.9g (rtol %g atol %g)",
                 what, bad, n, worst, g, c, rtol, atol);
  }
  return bad == 0;
}

/* ---- one tensor on both backends --------------------------------------------------------------- */

typedef struct pair {
  lt_tensor t[2]; /* [0] cpu, [1] cuda: same header, each backend's memory */
  size_t bytes;
} pair;

static lt_backend *be_of(int k) { return k ? gpu : cpu; }

/* Allocates on both backends and uploads the same host contents (NULL: zeros). */
static int pair_make(pair *p, lt_dtype dt, int ndim, const int64_t *shape, const void *host) {
  memset(p, 0, sizeof *p);
  lt_err err = {0};
  p->bytes = lt_shape_numel(ndim, shape) * lt_dtype_size(dt);
  for (int k = 0; k < 2; k++) {
    lt_backend *be = be_of(k);
    lt_tensor *t = &p->t[k];
    t->dtype = dt, t->ndim = ndim, t->cat = LT_MEM_OTHER, t->device = be->device;
    memcpy(t->shape, shape, sizeof(int64_t) * (size_t)ndim);
    t->data = be->vt->alloc(be, p->bytes, LT_MEM_OTHER, &err);
    if (!t->data) {
      TEST_FAIL_AT("alloc on %s: %s", be->vt->name, err.msg);
      return 0;
    }
    lt_status st = host ? be->vt->to_device(be, t->data, host, p->bytes, &err)
                        : be->vt->memset0(be, t->data, p->bytes, &err);
    if (st) {
      TEST_FAIL_AT("upload on %s: %s", be->vt->name, err.msg);
      return 0;
    }
  }
  return 1;
}

static void pair_free(pair *p) {
  for (int k = 0; k < 2; k++)
    if (p->t[k].data) be_of(k)->vt->free(be_of(k), p->t[k].data, p->bytes, LT_MEM_OTHER);
  memset(p, 0, sizeof *p);
}

/* Downloads both sides and compares. */
static int pair_check(const char *what, const pair *p, double rtol, double atol) {
  lt_err err = {0};
  void *h[2] = {malloc(p->bytes), malloc(p->bytes)};
  int ok = h[0] && h[1];
  for (int k = 0; ok && k < 2; k++)
    if (be_of(k)->vt->to_host(be_of(k), h[k], p->t[k].data, p->bytes, &err)) {
      TEST_FAIL_AT("%s: download from %s: %s", what, be_of(k)->vt->name, err.msg);
      ok = 0;
    }
  if (ok)
    ok = compare(what, h[1], h[0], p->t[0].dtype,
                 p->bytes / lt_dtype_size(p->t[0].dtype), rtol, atol);
  free(h[0]), free(h[1]);
  return ok;
}

/* ---- running one node on both backends --------------------------------------------------------- */

typedef struct op_case {
  const char *name;
  lt_graph *g;
  int node;
  int batch;
  double rtol, atol;
  float lo, hi; /* range of activation inputs and output gradients */
} op_case;

/* Forward (and in training mode backward, twice: overwriting, then accumulating) of c's node. */
static void run_case(const op_case *c, lt_mode mode) {
  const lt_graph *g = c->g;
  const lt_node *n = &g->nodes[c->node];
  const lt_op_desc *d = lt_op_get(n->op);
  char what[256];
  const char *mname = mode == LT_MODE_TRAIN ? "train" : "infer";
  pair in[LT_MAX_IO], out = {0}, aux[LT_MAX_IO], dout = {0}, din[LT_MAX_IO];
  void *ws[2] = {NULL, NULL};
  size_t ws_bytes[2] = {0, 0};
  int naux = 0;
  lt_op_aux auxd[LT_MAX_IO];
  memset(in, 0, sizeof in), memset(aux, 0, sizeof aux), memset(din, 0, sizeof din);
  covered[n->op] = 1;
  if (!cpu->vt->supports(cpu, g, c->node) || !gpu->vt->supports(gpu, g, c->node)) {
    TEST_FAIL_AT("%s: a backend does not support the node", c->name);
    return;
  }
  /* inputs: activations get a batch dim and random data, parameters their graph data */
  for (int i = 0; i < n->n_in; i++) {
    const lt_value *v = lt_op_in(g, n, i);
    int64_t shape[LT_MAX_DIMS];
    int nd = v->ndim;
    if (lt_value_batched(v)) {
      shape[0] = c->batch;
      memcpy(shape + 1, v->shape, sizeof(int64_t) * (size_t)v->ndim);
      nd++;
    } else {
      memcpy(shape, v->shape, sizeof(int64_t) * (size_t)v->ndim);
    }
    const size_t cnt = (size_t)lt_shape_numel(nd, shape);
    float *host = malloc(sizeof(float) * (cnt ? cnt : 1));
    if (v->data)
      memcpy(host, v->data->data, sizeof(float) * cnt);
    else
      fill(host, cnt, c->lo, c->hi);
    int ok = pair_make(&in[i], v->dtype, nd, shape, host);
    free(host);
    if (!ok) goto done;
  }
  {
    const lt_value *y = &g->values[n->out[0]];
    int64_t shape[LT_MAX_DIMS];
    shape[0] = c->batch;
    memcpy(shape + 1, y->shape, sizeof(int64_t) * (size_t)y->ndim);
    if (!pair_make(&out, y->dtype, y->ndim + 1, shape, NULL)) goto done;
  }
  naux = d->aux ? d->aux(g, n, mode, c->batch, auxd) : 0;
  for (int i = 0; i < naux; i++)
    if (!pair_make(&aux[i], auxd[i].dtype, auxd[i].ndim, auxd[i].shape, NULL)) goto done;
  for (int k = 0; k < 2; k++) {
    lt_err err = {0};
    ws_bytes[k] = be_of(k)->vt->workspace_bytes(be_of(k), g, c->node, c->batch);
    if (ws_bytes[k] && !(ws[k] = be_of(k)->vt->alloc(be_of(k), ws_bytes[k], LT_MEM_WORKSPACE,
                                                      &err))) {
      TEST_FAIL_AT("%s: workspace: %s", c->name, err.msg);
      goto done;
    }
  }
  /* forward */
  for (int k = 0; k < 2; k++) {
    lt_node_ctx ctx;
    lt_err err = {0};
    memset(&ctx, 0, sizeof ctx);
    ctx.g = g, ctx.node = c->node, ctx.batch = c->batch, ctx.mode = mode;
    ctx.seed = 1234, ctx.step = 5;
    for (int i = 0; i < n->n_in; i++) ctx.in[i] = &in[i].t[k];
    ctx.out[0] = &out.t[k];
    for (int i = 0; i < naux; i++) ctx.aux[i] = &aux[i].t[k];
    ctx.ws = ws[k];
    lt_status st = be_of(k)->vt->forward(be_of(k), &ctx, &err);
    if (!st) st = be_of(k)->vt->synchronize(be_of(k), &err);
    if (st) {
      TEST_FAIL_AT("%s %s forward on %s: %s", c->name, mname, be_of(k)->vt->name, err.msg);
      goto done;
    }
  }
  snprintf(what, sizeof what, "%s %s forward output", c->name, mname);
  pair_check(what, &out, c->rtol, c->atol);
  for (int i = 0; i < naux; i++) {
    snprintf(what, sizeof what, "%s %s aux %d", c->name, mname, i);
    pair_check(what, &aux[i], auxd[i].dtype == LT_U8 ? 0.0 : c->rtol,
               auxd[i].dtype == LT_U8 ? 0.0 : c->atol);
  }
  for (int i = 0; i < n->n_in; i++) { /* parameters updated in place (BN running statistics) */
    snprintf(what, sizeof what, "%s %s input %d after forward", c->name, mname, i);
    pair_check(what, &in[i], c->rtol, c->atol);
  }
  if (mode != LT_MODE_TRAIN || !d->bwd_cpu) goto done;

  /* backward: output gradient, saved tensors as the op declares them, then both flag values */
  {
    const size_t cnt = out.bytes / sizeof(float);
    float *host = malloc(out.bytes);
    fill(host, cnt, c->lo, c->hi);
    int ok = pair_make(&dout, LT_F32, out.t[0].ndim, out.t[0].shape, host);
    free(host);
    if (!ok) goto done;
  }
  lt_op_save saves[LT_MAX_IO];
  const int nsaves = d->saves ? d->saves(g, n, saves) : 0;
  for (int acc = 0; acc < 2; acc++) {
    for (int i = 0; i < n->n_in; i++) {
      const lt_value *v = lt_op_in(g, n, i);
      const int wants = lt_value_batched(v) || v->trainable;
      pair_free(&din[i]);
      if (!wants) continue;
      const size_t cnt = in[i].bytes / sizeof(float);
      float *host = malloc(in[i].bytes);
      fill(host, cnt, -1.0f, 1.0f); /* prior contents: kept when accumulating */
      int ok = pair_make(&din[i], LT_F32, in[i].t[0].ndim, in[i].t[0].shape, host);
      free(host);
      if (!ok) goto done;
    }
    for (int k = 0; k < 2; k++) {
      lt_node_ctx ctx;
      lt_err err = {0};
      memset(&ctx, 0, sizeof ctx);
      ctx.g = g, ctx.node = c->node, ctx.batch = c->batch, ctx.mode = mode;
      ctx.seed = 1234, ctx.step = 5;
      for (int i = 0; i < n->n_in; i++) {
        ctx.in[i] = &in[i].t[k];
        ctx.din[i] = din[i].t[k].data ? &din[i].t[k] : NULL;
        ctx.accumulate_in[i] = acc;
      }
      ctx.out[0] = &out.t[k];
      ctx.dout[0] = &dout.t[k];
      for (int i = 0; i < naux; i++) ctx.aux[i] = &aux[i].t[k];
      for (int s = 0; s < nsaves; s++)
        ctx.saved[s] = saves[s].src == LT_SAVE_SRC_IN    ? &in[saves[s].idx].t[k]
                       : saves[s].src == LT_SAVE_SRC_OUT ? &out.t[k]
                                                         : &aux[saves[s].idx].t[k];
      ctx.ws = ws[k];
      lt_status st = be_of(k)->vt->backward(be_of(k), &ctx, &err);
      if (!st) st = be_of(k)->vt->synchronize(be_of(k), &err);
      if (st) {
        TEST_FAIL_AT("%s backward (accumulate %d) on %s: %s", c->name, acc, be_of(k)->vt->name,
                     err.msg);
        goto done;
      }
    }
    for (int i = 0; i < n->n_in; i++) {
      if (!din[i].bytes) continue;
      snprintf(what, sizeof what, "%s backward (accumulate %d) gradient of input %d", c->name,
               acc, i);
      pair_check(what, &din[i], c->rtol, c->atol);
    }
  }
done:
  for (int i = 0; i < LT_MAX_IO; i++) pair_free(&in[i]), pair_free(&aux[i]), pair_free(&din[i]);
  pair_free(&out), pair_free(&dout);
  for (int k = 0; k < 2; k++)
    if (ws[k]) be_of(k)->vt->free(be_of(k), ws[k], ws_bytes[k], LT_MEM_WORKSPACE);
}

/* ---- graphs of one node ------------------------------------------------------------------------ */

typedef struct builder {
  lt_graph *g;
  int ids[LT_MAX_IO], n;
  char name[32];
} builder;

static void b_begin(builder *b) {
  memset(b, 0, sizeof *b);
  b->g = lt_graph_new();
}
static void b_input(builder *b, int ndim, const int64_t *shape) {
  snprintf(b->name, sizeof b->name, "in%d", b->n);
  b->ids[b->n++] = lt_graph_add_input(b->g, b->name, LT_F32, ndim, shape);
}
static void b_param(builder *b, int ndim, const int64_t *shape, float lo, float hi,
                    int trainable) {
  snprintf(b->name, sizeof b->name, "p%d", b->n);
  b->ids[b->n++] = lt_graph_add_param(b->g, b->name, host_tensor(ndim, shape, lo, hi), trainable);
}

/* Adds the node and runs the case in training (and, where the op differs, inference) mode. */
static void b_run(builder *b, const char *name, lt_op_type op, const lt_node_attrs *a,
                  double rtol, double atol, float lo, float hi) {
  lt_err err = {0};
  int y = lt_graph_add_node(b->g, op, name, b->ids, b->n, a, &err);
  if (y < 0) {
    TEST_FAIL_AT("%s: building the graph: %s", name, err.msg);
  } else {
    lt_graph_set_output(b->g, y);
    op_case c = {name, b->g, b->g->n_nodes - 1, 3, rtol, atol, lo, hi};
    run_case(&c, LT_MODE_TRAIN);
    if (op == LT_OP_BATCHNORM || op == LT_OP_DROPOUT || op == LT_OP_MAXPOOL)
      run_case(&c, LT_MODE_INFER);
  }
  lt_graph_free(b->g);
}

#define SHAPE(...) (sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), (int64_t[]){__VA_ARGS__}

TEST_CASE(conv2d_matches_cpu) {
  builder b;
  lt_node_attrs a = lt_attrs_conv(3, 1, 1, 1, 1);
  b_begin(&b), b_input(&b, SHAPE(4, 7, 7)), b_param(&b, SHAPE(6, 4, 3, 3), -0.5f, 0.5f, 1);
  b_param(&b, SHAPE(6), -0.5f, 0.5f, 1);
  b_run(&b, "conv3x3_bias", LT_OP_CONV2D, &a, TOL_REDUCE, -1, 1);

  a = lt_attrs_conv(3, 2, 2, 2, 2); /* stride 2, pad 2, dilation 2, 2 groups */
  b_begin(&b), b_input(&b, SHAPE(4, 9, 8)), b_param(&b, SHAPE(6, 2, 3, 3), -0.5f, 0.5f, 1);
  b_run(&b, "conv_strided_dilated_grouped", LT_OP_CONV2D, &a, TOL_REDUCE, -1, 1);

  a = lt_attrs_conv(1, 1, 0, 1, 1);
  b_begin(&b), b_input(&b, SHAPE(8, 5, 5)), b_param(&b, SHAPE(3, 8, 1, 1), -0.5f, 0.5f, 1);
  b_run(&b, "conv1x1", LT_OP_CONV2D, &a, TOL_REDUCE, -1, 1);

  a = lt_attrs_conv(3, 1, 1, 1, 4); /* depthwise */
  b_begin(&b), b_input(&b, SHAPE(4, 6, 6)), b_param(&b, SHAPE(4, 1, 3, 3), -0.5f, 0.5f, 1);
  b_run(&b, "conv_depthwise", LT_OP_CONV2D, &a, TOL_REDUCE, -1, 1);
}

TEST_CASE(conv_transpose2d_matches_cpu) {
  builder b;
  lt_node_attrs a = lt_attrs_conv(3, 2, 1, 1, 1);
  a.out_pad[0] = a.out_pad[1] = 1;
  b_begin(&b), b_input(&b, SHAPE(4, 5, 5)), b_param(&b, SHAPE(4, 3, 3, 3), -0.5f, 0.5f, 1);
  b_param(&b, SHAPE(3), -0.5f, 0.5f, 1);
  b_run(&b, "conv_transpose_s2_outpad", LT_OP_CONV_TRANSPOSE2D, &a, TOL_REDUCE, -1, 1);

  a = lt_attrs_conv(2, 2, 0, 1, 2);
  b_begin(&b), b_input(&b, SHAPE(4, 4, 3)), b_param(&b, SHAPE(4, 3, 2, 2), -0.5f, 0.5f, 1);
  b_run(&b, "conv_transpose_grouped", LT_OP_CONV_TRANSPOSE2D, &a, TOL_REDUCE, -1, 1);
}

TEST_CASE(linear_matches_cpu) {
  builder b;
  lt_node_attrs a = lt_attrs_default();
  b_begin(&b), b_input(&b, SHAPE(16)), b_param(&b, SHAPE(5, 16), -0.5f, 0.5f, 1);
  b_param(&b, SHAPE(5), -0.5f, 0.5f, 1);
  b_run(&b, "linear_bias", LT_OP_LINEAR, &a, TOL_REDUCE, -1, 1);
  b_begin(&b), b_input(&b, SHAPE(2, 16)), b_param(&b, SHAPE(7, 16), -0.5f, 0.5f, 1);
  b_run(&b, "linear_rank2_input", LT_OP_LINEAR, &a, TOL_REDUCE, -1, 1);
}

TEST_CASE(batchnorm_matches_cpu) {
  builder b;
  lt_node_attrs a = lt_attrs_default();
  b_begin(&b), b_input(&b, SHAPE(4, 5, 5));
  b_param(&b, SHAPE(4), 0.5f, 1.5f, 1), b_param(&b, SHAPE(4), -0.5f, 0.5f, 1);
  b_param(&b, SHAPE(4), -0.2f, 0.2f, 0), b_param(&b, SHAPE(4), 0.5f, 1.5f, 0);
  b_run(&b, "batchnorm", LT_OP_BATCHNORM, &a, TOL_REDUCE, 1, 3);
}

TEST_CASE(activations_match_cpu) {
  static const struct {
    const char *name;
    lt_op_type op;
  } acts[] = {{"relu", LT_OP_RELU},       {"leaky_relu", LT_OP_LEAKY_RELU},
              {"sigmoid", LT_OP_SIGMOID}, {"tanh", LT_OP_TANH},
              {"clip", LT_OP_CLIP},       {"softmax", LT_OP_SOFTMAX}};
  for (size_t i = 0; i < sizeof acts / sizeof acts[0]; i++) {
    builder b;
    lt_node_attrs a = lt_attrs_default();
    a.alpha = 0.1f, a.lo = -0.5f, a.hi = 0.5f;
    b_begin(&b), b_input(&b, SHAPE(3, 4, 10));
    b_run(&b, acts[i].name, acts[i].op, &a, TOL_POINT, -2, 2);
  }
}

TEST_CASE(pools_match_cpu) {
  builder b;
  lt_node_attrs a = lt_attrs_pool(2, 2, 0);
  b_begin(&b), b_input(&b, SHAPE(3, 8, 8));
  b_run(&b, "maxpool2x2", LT_OP_MAXPOOL, &a, TOL_POINT, -1, 1);
  a = lt_attrs_pool(3, 2, 1);
  a.ceil_mode = 1;
  b_begin(&b), b_input(&b, SHAPE(3, 8, 7));
  b_run(&b, "maxpool3x3_ceil", LT_OP_MAXPOOL, &a, TOL_POINT, -1, 1);
  for (int incl = 0; incl < 2; incl++) {
    a = lt_attrs_pool(3, 2, 1);
    a.count_include_pad = incl;
    b_begin(&b), b_input(&b, SHAPE(3, 7, 8));
    b_run(&b, incl ? "avgpool_incl_pad" : "avgpool_excl_pad", LT_OP_AVGPOOL, &a, TOL_REDUCE, -1,
          1);
  }
  a = lt_attrs_default();
  b_begin(&b), b_input(&b, SHAPE(5, 6, 7));
  b_run(&b, "global_avgpool", LT_OP_GLOBAL_AVGPOOL, &a, TOL_REDUCE, -1, 1);
}

TEST_CASE(upsample_matches_cpu) {
  for (int mode = 0; mode < 3; mode++) {
    builder b;
    lt_node_attrs a = lt_attrs_default();
    a.mode = mode ? LT_UPSAMPLE_BILINEAR : LT_UPSAMPLE_NEAREST;
    a.align_corners = mode == 2;
    a.out_h = 9, a.out_w = 12;
    b_begin(&b), b_input(&b, SHAPE(2, 4, 5));
    b_run(&b, mode == 0 ? "upsample_nearest" : mode == 1 ? "upsample_bilinear"
                                                         : "upsample_bilinear_align",
          LT_OP_UPSAMPLE, &a, TOL_REDUCE, -1, 1);
  }
}

TEST_CASE(binary_ops_match_cpu) {
  static const struct {
    const char *name;
    lt_op_type op;
  } ops[] = {{"add", LT_OP_ADD}, {"sub", LT_OP_SUB}, {"mul", LT_OP_MUL}, {"div", LT_OP_DIV}};
  for (size_t i = 0; i < 4; i++) {
    builder b;
    lt_node_attrs a = lt_attrs_default();
    char name[64];
    /* positive operands keep Div away from zero divisors */
    b_begin(&b), b_input(&b, SHAPE(3, 4, 5)), b_input(&b, SHAPE(3, 4, 5));
    snprintf(name, sizeof name, "%s_same_shape", ops[i].name);
    b_run(&b, name, ops[i].op, &a, TOL_POINT, 0.5f, 1.5f);
    b_begin(&b), b_input(&b, SHAPE(3, 4, 5)), b_param(&b, SHAPE(3, 1, 1), 0.5f, 1.5f, 1);
    snprintf(name, sizeof name, "%s_broadcast_param", ops[i].name);
    b_run(&b, name, ops[i].op, &a, TOL_REDUCE, 0.5f, 1.5f);
    b_begin(&b), b_input(&b, SHAPE(3, 1, 5)), b_input(&b, SHAPE(3, 4, 1));
    snprintf(name, sizeof name, "%s_broadcast_both", ops[i].name);
    b_run(&b, name, ops[i].op, &a, TOL_REDUCE, 0.5f, 1.5f);
  }
}

TEST_CASE(data_movement_matches_cpu) {
  builder b;
  lt_node_attrs a = lt_attrs_default();
  a.axis = 0;
  b_begin(&b), b_input(&b, SHAPE(2, 3, 4)), b_input(&b, SHAPE(5, 3, 4));
  b_input(&b, SHAPE(1, 3, 4));
  b_run(&b, "concat_channels", LT_OP_CONCAT, &a, TOL_POINT, -1, 1);
  a.axis = -1;
  b_begin(&b), b_input(&b, SHAPE(2, 3, 4)), b_input(&b, SHAPE(2, 3, 2));
  b_run(&b, "concat_last_axis", LT_OP_CONCAT, &a, TOL_POINT, -1, 1);

  a = lt_attrs_default(); /* starts, ends, steps over (C, H, W) */
  a.n_ints = 9;
  int64_t sl[9] = {1, 0, 7, 4, 8, -9, 1, 2, -2}; /* W walks back 7, 5, 3, 1 */
  memcpy(a.ints, sl, sizeof sl);
  b_begin(&b), b_input(&b, SHAPE(4, 8, 8));
  b_run(&b, "slice_steps", LT_OP_SLICE, &a, TOL_POINT, -1, 1);

  a = lt_attrs_default(); /* begins then ends over (C, H, W); negative crops */
  a.n_ints = 6, a.value = 0.25f;
  int64_t pd[6] = {0, 1, 2, 1, -1, 0};
  memcpy(a.ints, pd, sizeof pd);
  b_begin(&b), b_input(&b, SHAPE(3, 5, 6));
  b_run(&b, "pad_and_crop", LT_OP_PAD, &a, TOL_POINT, -1, 1);

  a = lt_attrs_default();
  a.n_ints = 3;
  int64_t perm[3] = {2, 0, 1};
  memcpy(a.ints, perm, sizeof perm);
  b_begin(&b), b_input(&b, SHAPE(3, 4, 5));
  b_run(&b, "transpose", LT_OP_TRANSPOSE, &a, TOL_POINT, -1, 1);

  a = lt_attrs_default();
  a.n_ints = 2, a.ints[0] = 6, a.ints[1] = -1;
  b_begin(&b), b_input(&b, SHAPE(3, 4, 5));
  b_run(&b, "reshape", LT_OP_RESHAPE, &a, TOL_POINT, -1, 1);
  a = lt_attrs_default();
  b_begin(&b), b_input(&b, SHAPE(3, 4, 5));
  b_run(&b, "flatten", LT_OP_FLATTEN, &a, TOL_POINT, -1, 1);
  b_begin(&b), b_input(&b, SHAPE(3, 4, 5));
  b_run(&b, "identity", LT_OP_IDENTITY, &a, TOL_POINT, -1, 1);
}

TEST_CASE(dropout_mask_identical_to_cpu) {
  builder b;
  lt_node_attrs a = lt_attrs_default();
  a.p = 0.3f;
  b_begin(&b), b_input(&b, SHAPE(3, 7, 5)); /* 105 per sample: a partial last mask byte */
  b_run(&b, "dropout", LT_OP_DROPOUT, &a, TOL_POINT, -1, 1);
}

/* Every op of the table ran above: a new op without a CUDA case fails here. */
TEST_CASE(every_op_has_a_conformance_case) {
  for (int op = 0; op < LT_OP_COUNT; op++)
    CHECK_MSG(covered[op], "op %s has no CUDA conformance case", lt_op_name((lt_op_type)op));
}

/* ---- kernels train/ calls directly: losses and optimizer steps --------------------------------- */

/* Uploads host floats (or int32) into a fresh device buffer. */
static void *dev_copy(const void *host, size_t bytes) {
  lt_err err = {0};
  void *p = gpu->vt->alloc(gpu, bytes, LT_MEM_OTHER, &err);
  if (p && gpu->vt->to_device(gpu, p, host, bytes, &err)) p = NULL;
  if (!p) TEST_FAIL_AT("device copy: %s", err.msg);
  return p;
}
static void dev_back(void *host, void *dev, size_t bytes) {
  lt_err err = {0};
  if (gpu->vt->to_host(gpu, host, dev, bytes, &err)) TEST_FAIL_AT("download: %s", err.msg);
  gpu->vt->free(gpu, dev, bytes, LT_MEM_OTHER);
}

TEST_CASE(losses_match_cpu) {
  enum { N = 37, K = 10 };
  float logits[N * K], dl_cpu[N * K], dl_gpu[N * K], pred[N * K], target[N * K];
  int32_t labels[N];
  fill(logits, N * K, -3, 3), fill(pred, N * K, -1, 1), fill(target, N * K, -1, 1);
  for (int i = 0; i < N; i++) labels[i] = (i * 7) % K;
  lt_err err = {0};
  REQUIRE(gpu->vt->synchronize(gpu, &err) == LT_OK); /* binds the backend's stream */
  int64_t hits_cpu, hits_gpu;
  double l_cpu = lt_cpu_softmax_xent(N, K, logits, labels, 1.0f / N, dl_cpu, &hits_cpu);
  float *dlog = dev_copy(logits, sizeof logits), *ddl = dev_copy(dl_gpu, sizeof dl_gpu);
  int32_t *dlab = dev_copy(labels, sizeof labels);
  REQUIRE(dlog && ddl && dlab);
  double l_gpu = lt_cuda_softmax_xent(N, K, dlog, dlab, 1.0f / N, ddl, &hits_gpu);
  CHECK(lt_cuda_take_error(&err) == LT_OK);
  CHECK_NEAR(l_gpu, l_cpu, 1e-4 * fabs(l_cpu));
  CHECK(hits_gpu == hits_cpu);
  dev_back(dl_gpu, ddl, sizeof dl_gpu);
  compare("softmax_xent dlogits", dl_gpu, dl_cpu, LT_F32, N * K, TOL_REDUCE);
  labels[3] = K; /* out of range: NaN, as the CPU */
  gpu->vt->to_device(gpu, dlab, labels, sizeof labels, &err);
  CHECK(isnan(lt_cuda_softmax_xent(N, K, dlog, dlab, 1.0f, NULL, NULL)));
  gpu->vt->free(gpu, dlog, sizeof logits, LT_MEM_OTHER);
  gpu->vt->free(gpu, dlab, sizeof labels, LT_MEM_OTHER);

  for (int kind = 0; kind < 2; kind++) {
    float dp_cpu[N * K], dp_gpu[N * K];
    double lc = kind ? lt_cpu_l1(N * K, pred, target, 0.5f, dp_cpu)
                     : lt_cpu_mse(N * K, pred, target, 0.5f, dp_cpu);
    float *dp = dev_copy(pred, sizeof pred), *dt = dev_copy(target, sizeof target),
          *dd = dev_copy(dp_gpu, sizeof dp_gpu);
    REQUIRE(dp && dt && dd);
    double lg = kind ? lt_cuda_l1(N * K, dp, dt, 0.5f, dd) : lt_cuda_mse(N * K, dp, dt, 0.5f, dd);
    CHECK(lt_cuda_take_error(&err) == LT_OK);
    CHECK_NEAR(lg, lc, 1e-4 * fabs(lc));
    dev_back(dp_gpu, dd, sizeof dp_gpu);
    compare(kind ? "l1 gradient" : "mse gradient", dp_gpu, dp_cpu, LT_F32, N * K, TOL_POINT);
    gpu->vt->free(gpu, dp, sizeof pred, LT_MEM_OTHER);
    gpu->vt->free(gpu, dt, sizeof target, LT_MEM_OTHER);
  }
}

TEST_CASE(optimizer_steps_match_cpu) {
  enum { N = 1000 };
  static float w0[N], g[N], w_cpu[N], v_cpu[N], m_cpu[N], w_gpu[N], v_gpu[N], m_gpu[N];
  fill(w0, N, -1, 1), fill(g, N, -1, 1);
  lt_err err = {0};
  REQUIRE(gpu->vt->synchronize(gpu, &err) == LT_OK);
  for (int nesterov = 0; nesterov < 2; nesterov++) {
    memcpy(w_cpu, w0, sizeof w0), memset(v_cpu, 0, sizeof v_cpu);
    float *dw = dev_copy(w0, sizeof w0), *dg = dev_copy(g, sizeof g), *dv = dev_copy(v_cpu, sizeof v_cpu);
    REQUIRE(dw && dg && dv);
    for (int step = 0; step < 3; step++) {
      lt_cpu_sgd_step(N, 0.1f, 0.9f, 0.0f, 5e-4f, nesterov, w_cpu, g, v_cpu, step == 0);
      lt_cuda_sgd_step(N, 0.1f, 0.9f, 0.0f, 5e-4f, nesterov, dw, dg, dv, step == 0);
    }
    CHECK(lt_cuda_take_error(&err) == LT_OK);
    dev_back(w_gpu, dw, sizeof w_gpu), dev_back(v_gpu, dv, sizeof v_gpu);
    gpu->vt->free(gpu, dg, sizeof g, LT_MEM_OTHER);
    compare("sgd weights", w_gpu, w_cpu, LT_F32, N, TOL_POINT);
    compare("sgd velocity", v_gpu, v_cpu, LT_F32, N, TOL_POINT);
  }
  memcpy(w_cpu, w0, sizeof w0), memset(m_cpu, 0, sizeof m_cpu), memset(v_cpu, 0, sizeof v_cpu);
  float *dw = dev_copy(w0, sizeof w0), *dg = dev_copy(g, sizeof g);
  float *dm = dev_copy(m_cpu, sizeof m_cpu), *dv = dev_copy(v_cpu, sizeof v_cpu);
  REQUIRE(dw && dg && dm && dv);
  for (int step = 1; step <= 3; step++) {
    lt_cpu_adamw_step(N, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, step, w_cpu, g, m_cpu, v_cpu);
    lt_cuda_adamw_step(N, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, step, dw, dg, dm, dv);
  }
  CHECK(lt_cuda_take_error(&err) == LT_OK);
  dev_back(w_gpu, dw, sizeof w_gpu), dev_back(m_gpu, dm, sizeof m_gpu);
  dev_back(v_gpu, dv, sizeof v_gpu);
  gpu->vt->free(gpu, dg, sizeof g, LT_MEM_OTHER);
  compare("adamw weights", w_gpu, w_cpu, LT_F32, N, TOL_POINT);
  compare("adamw m", m_gpu, m_cpu, LT_F32, N, TOL_POINT);
  compare("adamw v", v_gpu, v_cpu, LT_F32, N, TOL_POINT);
}

/* Device memory is counted per category like host memory, and returns to zero when freed. */
TEST_CASE(device_memory_is_accounted) {
  lt_err err = {0};
  lt_mem_stats before, during, after;
  lt_mem_get_stats(&before);
  void *p = gpu->vt->alloc(gpu, 1 << 20, LT_MEM_SAVED, &err);
  REQUIRE(p);
  lt_mem_get_stats(&during);
  gpu->vt->free(gpu, p, 1 << 20, LT_MEM_SAVED);
  lt_mem_get_stats(&after);
  CHECK(during.current[LT_MEM_SAVED] - before.current[LT_MEM_SAVED] == 1 << 20);
  CHECK(after.current[LT_MEM_SAVED] == before.current[LT_MEM_SAVED]);
}

TEST_CASE(bad_device_index_is_an_error) {
  lt_err err = {0};
  CHECK(lt_backend_get("cuda:999", &err) == NULL);
  CHECK_STR_CONTAINS(err.msg, "no CUDA device 999");
  CHECK(lt_backend_get("cuda:x", &err) == NULL);
}

int main(void) {
  lt_err err = {0};
  cpu = lt_backend_get("cpu", &err);
  gpu = lt_backend_get("cuda", &err);
  if (!gpu) {
    printf("SKIP: CUDA op conformance needs a GPU: %s\n", err.msg);
    return 77;
  }
  printf("cuda: %s\ncpu: %s\n", gpu->description, cpu->description);
  RUN(conv2d_matches_cpu);
  RUN(conv_transpose2d_matches_cpu);
  RUN(linear_matches_cpu);
  RUN(batchnorm_matches_cpu);
  RUN(activations_match_cpu);
  RUN(pools_match_cpu);
  RUN(upsample_matches_cpu);
  RUN(binary_ops_match_cpu);
  RUN(data_movement_matches_cpu);
  RUN(dropout_mask_identical_to_cpu);
  RUN(every_op_has_a_conformance_case);
  RUN(losses_match_cpu);
  RUN(optimizer_steps_match_cpu);
  RUN(device_memory_is_accounted);
  RUN(bad_device_index_is_an_error);
  return test_summary();
}
