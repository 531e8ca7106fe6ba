/* The latency profiler: times every distinct compressible conv and linear shape of a model on the
 * backend, dense and as a Tucker-2 block (two-factor pair) at each probed rank, each as a small
 * graph run by the engine's own executor (so the figures include exactly the kernels and buffer
 * plans a real model gets).
 * Also the roofline estimate for devices nobody can measure, the rank-step finder, and the
 * compressible-layer list the search and the job share. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lathe/backend.h"
#include "lathe/compress.h"
#include "lathe/exec.h"

/* ---- compressible layers ------------------------------------------------------------------- */

int64_t lt_compress_layer_macs(const lt_compress_layer *l, int r) {
  if (l->kind == LT_COMPRESS_LINEAR) return (int64_t)r * (l->c + l->s);
  int64_t in_px = (int64_t)l->in_h * l->in_w, out_px = (int64_t)l->out_h * l->out_w;
  return (int64_t)l->c * r * in_px + (int64_t)l->kh * l->kw * r * r * out_px +
         (int64_t)r * l->s * out_px;
}

int64_t lt_compress_layer_params(const lt_compress_layer *l, int r) {
  if (l->kind == LT_COMPRESS_LINEAR) return (int64_t)r * (l->c + l->s);
  return (int64_t)l->c * r + (int64_t)l->kh * l->kw * r * r + (int64_t)r * l->s;
}

void lt_compress_layers_set_step(lt_compress_layer *L, int n, int step) {
  for (int i = 0; i < n; i++) {
    lt_compress_layer *l = &L[i];
    int st = step < 1 ? 1 : step;
    int limit = l->s < l->c ? l->s : l->c;
    /* Grow the step for wide layers so that the candidates fit the fixed arrays. */
    while (limit / st > LT_COMPRESS_MAX_CAND) st += step < 1 ? 1 : step;
    l->max_rank = 0;
    l->n_cand = 0;
    for (int r = st; r <= limit; r += st) {
      if (lt_compress_layer_macs(l, r) >= l->dense_macs) break; /* grows with r */
      l->max_rank = r;
      l->cand[l->n_cand] = r;
      l->macs[l->n_cand] = lt_compress_layer_macs(l, r);
      l->params[l->n_cand] = lt_compress_layer_params(l, r);
      l->ms[l->n_cand] = NAN;
      l->n_cand++;
    }
  }
}

lt_status lt_compress_layers_find(const lt_graph *g, int step, lt_compress_layer **out, int *n,
                                  lt_err *err) {
  *out = NULL;
  *n = 0;
  lt_compress_layer *L = calloc((size_t)g->n_nodes + 1, sizeof *L);
  if (!L) return lt_errorf(err, LT_ERR_NOMEM, "out of memory listing compressible layers");
  int k = 0;
  for (int i = 0; i < g->n_nodes; i++) {
    const lt_node *nd = &g->nodes[i];
    if (nd->op == LT_OP_LINEAR) {
      const lt_value *w = &g->values[nd->in[1]], *x = &g->values[nd->in[0]],
                     *y = &g->values[nd->out[0]];
      if (!w->data || w->dtype != LT_F32 || w->ndim != 2 || x->ndim != 1 || y->ndim != 1 ||
          x->shape[0] != w->shape[1] || y->shape[0] != w->shape[0])
        continue;
      lt_compress_layer *l = &L[k];
      snprintf(l->name, sizeof l->name, "%s", nd->name);
      l->kind = LT_COMPRESS_LINEAR;
      l->s = (int)w->shape[0], l->c = (int)w->shape[1], l->kh = l->kw = 1;
      l->in_h = l->in_w = l->out_h = l->out_w = 1;
      l->a = lt_attrs_default();
      l->bias = nd->n_in > 2 && nd->in[2] >= 0;
      l->dense_macs = l->dense_params = (int64_t)l->s * l->c;
      l->dense_ms = NAN;
      lt_compress_layers_set_step(l, 1, step);
      if (l->n_cand > 0) k++;
      continue;
    }
    if (nd->op != LT_OP_CONV2D || nd->a.groups != 1) continue;
    const lt_value *w = &g->values[nd->in[1]], *x = &g->values[nd->in[0]],
                   *y = &g->values[nd->out[0]];
    if (!w->data || w->dtype != LT_F32 || w->ndim != 4 || x->ndim != 3 || y->ndim != 3) continue;
    if (w->shape[2] * w->shape[3] < 2) continue; /* 1×1 convs: nothing for Tucker-2 to save */
    lt_compress_layer *l = &L[k];
    snprintf(l->name, sizeof l->name, "%s", nd->name);
    l->s = (int)w->shape[0], l->c = (int)w->shape[1], l->kh = (int)w->shape[2],
    l->kw = (int)w->shape[3];
    l->in_h = (int)x->shape[1], l->in_w = (int)x->shape[2];
    l->out_h = (int)y->shape[1], l->out_w = (int)y->shape[2];
    l->a = nd->a;
    l->bias = nd->n_in > 2 && nd->in[2] >= 0;
    l->dense_macs = (int64_t)l->s * l->c * l->kh * l->kw * l->out_h * l->out_w;
    l->dense_params = (int64_t)l->s * l->c * l->kh * l->kw;
    l->dense_ms = NAN;
    lt_compress_layers_set_step(l, 1, step);
    if (l->n_cand > 0) k++;
  }
  *out = L;
  *n = k;
  return LT_OK;
}

static int find_node(const lt_graph *g, const char *name) {
  for (int i = 0; i < g->n_nodes; i++)
    if (!strcmp(g->nodes[i].name, name)) return i;
  return -1;
}

lt_status lt_compress_apply(lt_graph *g, const lt_compress_layer *l, int n, const int *ranks,
                            lt_err *err) {
  for (int i = 0; i < n; i++) {
    if (ranks[i] <= 0) continue;
    int node = find_node(g, l[i].name);
    if (node < 0)
      return lt_errorf(err, LT_ERR_INVALID, "layer %s is not in the model any more", l[i].name);
    lt_status st = lt_compress_factorize(g, node, ranks[i], err);
    if (st != LT_OK) return st;
  }
  return lt_graph_infer_shapes(g, err);
}

/* ---- timing -------------------------------------------------------------------------------- */

static lt_lat_opts lat_opts_fill(const lt_lat_opts *o) {
  lt_lat_opts r = o ? *o : (lt_lat_opts){0};
  if (r.probe_step < 1) r.probe_step = 4;
  if (r.warmup < 1) r.warmup = 2;
  if (r.min_reps < 3) r.min_reps = 5;
  if (r.max_reps < r.min_reps) r.max_reps = 40;
  if (r.max_s <= 0) r.max_s = 0.5;
  if (r.rel_tol <= 0) r.rel_tol = 0.02;
  return r;
}

/* Every timed rep is a window of at least LAT_WINDOW_S: a graph faster than that runs back to
 * back as often as it takes (at most LAT_WINDOW_MAX times) and the rep's figure is the time per
 * forward. The latency prediction adds and subtracts figures of graphs of very different
 * lengths: a whole model (milliseconds) and each layer alone (tens to hundreds of microseconds).
 * A forward of a whole model always contains its share of the small disturbances a machine has
 * (interrupts, other processes' cache and memory traffic, preemption and the cache refill after
 * it), while the median of single forwards of a layer alone leaves most of them out: on the
 * shared 2-core test machine (load 7-10) the median whole ResNet-20 forward at batch 16 took
 * 5-7% longer than the sum of its nodes' medians. The layers alone then summed low against the
 * dense model, and the prediction for the fastest compressed model ran +7..+33% high (median
 * +13% over 9 runs; the dense model's excess, 0.3-0.5 ms, against 2.5 ms). Windows of one
 * length put every figure on the same footing (tests/compress/e2e_latency_prediction.c: mostly
 * +0..+12% since, median about +7%); 10 ms is longer than that whole model (7-8 ms). The cost:
 * a measurement takes at least min_reps windows (compress.e2e.job 44 -> 72 s). */
#define LAT_WINDOW_S 0.010
#define LAT_WINDOW_MAX 100000

static double lat_clock(int cpu_time) {
  if (!cpu_time) return lt_now();
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median_of(const double *v, int n, double *scratch) {
  memcpy(scratch, v, sizeof(double) * (size_t)n);
  qsort(scratch, (size_t)n, sizeof(double), cmp_double);
  return n % 2 ? scratch[n / 2] : 0.5 * (scratch[n / 2 - 1] + scratch[n / 2]);
}

lt_status lt_lat_measure_graph(lt_graph *g, lt_backend *be, int batch, const lt_lat_opts *opts,
                               double *ms, lt_err *err) {
  lt_lat_opts o = lat_opts_fill(opts);
  lt_exec *ex = lt_exec_create(g, batch, LT_MODE_INFER, be, NULL, err);
  if (!ex) return err ? err->status : LT_ERR_INTERNAL;
  lt_status st = LT_OK;
  double t[256], scratch[256];
  if (o.max_reps > 256) o.max_reps = 256;
  /* Inputs: a fixed non-zero pattern (timing does not depend on values, but zeros could take
   * shortcuts in some kernels). */
  for (int i = 0; i < g->n_inputs; i++) {
    lt_tensor *in = lt_exec_input(ex, i);
    size_t nb = lt_tensor_nbytes(in), nf = nb / sizeof(float);
    float *h = malloc(nb);
    if (!h) {
      st = lt_errorf(err, LT_ERR_NOMEM, "out of memory for a timing input");
      goto done;
    }
    for (size_t j = 0; j < nf; j++) h[j] = (float)((j * 2654435761u) % 1000) / 1000.0f - 0.5f;
    st = be->vt->to_device(be, in->data, h, nb, err);
    free(h);
    if (st) goto done;
  }
  /* Warm-up; the last forward's time sizes the window. */
  double one = 0;
  for (int i = 0; i < o.warmup; i++) {
    double t0 = lat_clock(o.cpu_time);
    if ((st = lt_exec_forward(ex, err)) || (st = be->vt->synchronize(be, err))) goto done;
    one = lat_clock(o.cpu_time) - t0;
  }
  int inner = 1;
  if (one < LAT_WINDOW_S)
    inner = one > LAT_WINDOW_S / LAT_WINDOW_MAX ? (int)ceil(LAT_WINDOW_S / one) : LAT_WINDOW_MAX;
  int n = 0;
  double start = lt_now(), prev = -1;
  while (n < o.max_reps) {
    double t0 = lat_clock(o.cpu_time);
    for (int k = 0; k < inner; k++)
      if ((st = lt_exec_forward(ex, err)) || (st = be->vt->synchronize(be, err))) goto done;
    t[n++] = (lat_clock(o.cpu_time) - t0) * 1e3 / inner;
    if (n >= o.min_reps) {
      double med = median_of(t, n, scratch);
      /* Stable: the median moved less than rel_tol since the previous rep. */
      if (prev > 0 && fabs(med - prev) <= o.rel_tol * med) break;
      prev = med;
      if (lt_now() - start > o.max_s) break;
    }
  }
  *ms = median_of(t, n, scratch);
done:
  lt_exec_free(ex);
  return st;
}

static lt_tensor *filled(int ndim, const int64_t *shape, float v, lt_err *err) {
  lt_tensor *t = lt_tensor_new(LT_F32, ndim, shape, LT_MEM_WEIGHTS, err);
  if (!t) return NULL;
  float *p = lt_tensor_f32(t);
  for (int64_t i = 0; i < lt_tensor_numel(t); i++) p[i] = v * (float)((i % 7) - 3);
  return t;
}

static lt_tensor *constant(int64_t n, float v, lt_err *err) {
  lt_tensor *t = lt_tensor_new(LT_F32, 1, (int64_t[]){n}, LT_MEM_WEIGHTS, err);
  if (!t) return NULL;
  float *p = lt_tensor_f32(t);
  for (int64_t i = 0; i < n; i++) p[i] = v;
  return t;
}

/* A timing graph whose last node is y (y < 0: building it failed; the graph is freed). */
static lt_graph *timing_graph_finish(lt_graph *g, int y) {
  if (y < 0) {
    lt_graph_free(g);
    return NULL;
  }
  lt_graph_set_output(g, y);
  return g;
}

/* A graph holding one linear layer K -> M (r == 0) or its two factors K -> r -> M at rank r,
 * with a bias on the last one when the layer has one, followed by a ReLU (a hidden linear layer
 * of a CNN's classifier: no batch norm). */
static lt_graph *linear_block_graph(lt_graph *g, const lt_lat_entry *e, int r, lt_err *err) {
  int x = lt_graph_add_input(g, "x", LT_F32, 1, (int64_t[]){e->c});
  lt_node_attrs at = lt_attrs_default();
  int b = e->bias ? lt_graph_add_param(g, "b", filled(1, (int64_t[]){e->s}, 0.01f, err), 1) : -1;
  int nb = e->bias ? 3 : 2;
  int y;
  if (r == 0) {
    int w = lt_graph_add_param(g, "w", filled(2, (int64_t[]){e->s, e->c}, 0.01f, err), 1);
    y = lt_graph_add_node(g, LT_OP_LINEAR, "dense", (int[]){x, w, b}, nb, &at, err);
  } else {
    int wb = lt_graph_add_param(g, "wb", filled(2, (int64_t[]){r, e->c}, 0.01f, err), 1);
    int wa = lt_graph_add_param(g, "wa", filled(2, (int64_t[]){e->s, r}, 0.01f, err), 1);
    int y1 = lt_graph_add_node(g, LT_OP_LINEAR, "fb", (int[]){x, wb}, 2, &at, err);
    y = y1 < 0 ? -1 : lt_graph_add_node(g, LT_OP_LINEAR, "fa", (int[]){y1, wa, b}, nb, &at, err);
  }
  if (y >= 0) y = lt_graph_add_node(g, LT_OP_RELU, "relu", &y, 1, NULL, err);
  return timing_graph_finish(g, y);
}

/* A graph holding one conv of the entry's geometry (r == 0) or its Tucker-2 block at rank r,
 * with a bias on the last conv when the layer has one, as the model has after factorisation,
 * followed by a batch norm and a ReLU. Linear entries: linear_block_graph. */
static lt_graph *block_graph(const lt_lat_entry *e, int r, lt_err *err) {
  lt_graph *g = lt_graph_new();
  if (!g) {
    lt_errorf(err, LT_ERR_NOMEM, "out of memory for a timing graph");
    return NULL;
  }
  if (e->kind == LT_COMPRESS_LINEAR) return linear_block_graph(g, e, r, err);
  int x = lt_graph_add_input(g, "x", LT_F32, 3, (int64_t[]){e->c, e->in_h, e->in_w});
  lt_node_attrs core = lt_attrs_default(), pw = lt_attrs_default();
  core.kernel[0] = e->kh, core.kernel[1] = e->kw;
  memcpy(core.stride, e->stride, sizeof core.stride);
  memcpy(core.pads, e->pads, sizeof core.pads);
  memcpy(core.dilation, e->dilation, sizeof core.dilation);
  pw.kernel[0] = pw.kernel[1] = 1;
  int b = e->bias ? lt_graph_add_param(g, "b", filled(1, (int64_t[]){e->s}, 0.01f, err), 1) : -1;
  int nb = e->bias ? 3 : 2;
  int y;
  if (r == 0) {
    int w = lt_graph_add_param(g, "w", filled(4, (int64_t[]){e->s, e->c, e->kh, e->kw}, 0.01f, err), 1);
    y = lt_graph_add_node(g, LT_OP_CONV2D, "dense", (int[]){x, w, b}, nb, &core, err);
  } else {
    int w1 = lt_graph_add_param(g, "w1", filled(4, (int64_t[]){r, e->c, 1, 1}, 0.01f, err), 1);
    int w2 = lt_graph_add_param(g, "w2", filled(4, (int64_t[]){r, r, e->kh, e->kw}, 0.01f, err), 1);
    int w3 = lt_graph_add_param(g, "w3", filled(4, (int64_t[]){e->s, r, 1, 1}, 0.01f, err), 1);
    int y1 = lt_graph_add_node(g, LT_OP_CONV2D, "u_in", (int[]){x, w1}, 2, &pw, err);
    int y2 = y1 < 0 ? -1 : lt_graph_add_node(g, LT_OP_CONV2D, "core", (int[]){y1, w2}, 2, &core, err);
    y = y2 < 0 ? -1 : lt_graph_add_node(g, LT_OP_CONV2D, "u_out", (int[]){y2, w3, b}, nb, &pw, err);
  }
  /* The batch norm and ReLU that follow a conv in a CNN: inference executors fold the batch
   * norm into the conv and run the ReLU in its output pass, at a cost that differs between a
   * dense conv and a factorised block's last 1x1 conv, so both are timed with them. */
  if (y >= 0) {
    int bn[5] = {y};
    static const float v[4] = {1.0f, 0.0f, 0.0f, 1.0f}; /* gamma, beta, mean, var */
    static const char *const name[4] = {"bn.w", "bn.b", "bn.rm", "bn.rv"};
    for (int i = 0; i < 4; i++)
      bn[i + 1] = lt_graph_add_param(g, name[i], constant(e->s, v[i], err), i < 2);
    y = lt_graph_add_node(g, LT_OP_BATCHNORM, "bn", bn, 5, NULL, err);
    if (y >= 0) y = lt_graph_add_node(g, LT_OP_RELU, "relu", &y, 1, NULL, err);
  }
  return timing_graph_finish(g, y);
}

static void entry_from_layer(const lt_compress_layer *l, lt_lat_entry *e) {
  memset(e, 0, sizeof *e);
  e->kind = l->kind;
  e->s = l->s, e->c = l->c, e->kh = l->kh, e->kw = l->kw, e->in_h = l->in_h, e->in_w = l->in_w;
  memcpy(e->stride, l->a.stride, sizeof e->stride);
  memcpy(e->pads, l->a.pads, sizeof e->pads);
  memcpy(e->dilation, l->a.dilation, sizeof e->dilation);
  e->bias = l->bias;
}

static int entry_matches(const lt_lat_entry *e, const lt_lat_entry *f) {
  return e->kind == f->kind && e->s == f->s && e->c == f->c && e->kh == f->kh && e->kw == f->kw &&
         e->in_h == f->in_h && e->in_w == f->in_w &&
         !memcmp(e->stride, f->stride, sizeof e->stride) &&
         !memcmp(e->pads, f->pads, sizeof e->pads) &&
         !memcmp(e->dilation, f->dilation, sizeof e->dilation) && e->bias == f->bias;
}

const lt_lat_entry *lt_lat_lookup(const lt_lat_table *t, const lt_compress_layer *l) {
  lt_lat_entry key;
  entry_from_layer(l, &key);
  for (int i = 0; i < t->n; i++)
    if (entry_matches(&t->e[i], &key)) return &t->e[i];
  return NULL;
}

/* The entry of l's shape, or failing that the same shape timed with/without a bias (a table
 * profiled on the batch-norm-folded export of the model the job compresses, say). */
static const lt_lat_entry *lookup_nearest(const lt_lat_table *t, const lt_compress_layer *l) {
  const lt_lat_entry *e = lt_lat_lookup(t, l);
  if (e) return e;
  lt_compress_layer other = *l;
  other.bias = !l->bias;
  return lt_lat_lookup(t, &other);
}

lt_status lt_lat_table_add(lt_lat_table *t, const lt_lat_entry *e, lt_err *err) {
  if (t->n == t->cap) {
    int cap = t->cap ? 2 * t->cap : 16;
    lt_lat_entry *p = realloc(t->e, sizeof *p * (size_t)cap);
    if (!p) return lt_errorf(err, LT_ERR_NOMEM, "out of memory growing the latency table");
    t->e = p, t->cap = cap;
  }
  t->e[t->n++] = *e;
  return LT_OK;
}

void lt_lat_table_free(lt_lat_table *t) {
  if (!t) return;
  free(t->e);
  memset(t, 0, sizeof *t);
}

/* The probed ranks of a shape: multiples of probe_step while the block is cheaper than dense. */
static void entry_ranks(lt_lat_entry *e, int probe_step) {
  lt_compress_layer l = {.kind = e->kind, .s = e->s, .c = e->c, .kh = e->kh, .kw = e->kw,
                         .in_h = e->in_h, .in_w = e->in_w, .bias = e->bias};
  lt_node_attrs a = lt_attrs_default();
  memcpy(a.stride, e->stride, sizeof a.stride);
  memcpy(a.pads, e->pads, sizeof a.pads);
  memcpy(a.dilation, e->dilation, sizeof a.dilation);
  l.a = a;
  l.out_h = (e->in_h + e->pads[0] + e->pads[2] - e->dilation[0] * (e->kh - 1) - 1) / e->stride[0] + 1;
  l.out_w = (e->in_w + e->pads[1] + e->pads[3] - e->dilation[1] * (e->kw - 1) - 1) / e->stride[1] + 1;
  l.dense_macs = (int64_t)e->s * e->c * e->kh * e->kw * l.out_h * l.out_w;
  if (e->kind == LT_COMPRESS_LINEAR) l.out_h = l.out_w = 1, l.dense_macs = (int64_t)e->s * e->c;
  lt_compress_layers_set_step(&l, 1, probe_step);
  e->n = l.n_cand;
  memcpy(e->ranks, l.cand, sizeof(int) * (size_t)l.n_cand);
}

double lt_lat_model_slope(double t_dense, double t_ref, double s_dense, double s_ref) {
  double k = (t_dense - t_ref) / (s_dense - s_ref);
  return s_dense - s_ref > 0.05 * s_dense && k >= 0.5 && k <= 2 ? k : 1;
}

lt_status lt_lat_measure_layer(const lt_compress_layer *l, int rank, lt_backend *be, int batch,
                               const lt_lat_opts *o, double *ms, lt_err *err) {
  lt_lat_entry e;
  entry_from_layer(l, &e);
  lt_graph *bg = block_graph(&e, rank, err);
  if (!bg) return err ? err->status : LT_ERR_INTERNAL;
  lt_status st = lt_lat_measure_graph(bg, be, batch, o, ms, err);
  lt_graph_free(bg);
  return st;
}

/* Table setup shared by measuring and estimating: checks a cache against this device and batch. */
static lt_status table_begin(lt_lat_table *t, const char *device, int batch, int probe_step,
                             int estimated, lt_err *err) {
  if (t->n == 0) {
    snprintf(t->device, sizeof t->device, "%s", device);
    t->batch = batch;
    t->probe_step = probe_step;
    t->estimated = estimated;
    return LT_OK;
  }
  if (strcmp(t->device, device) || t->batch != batch || t->estimated != estimated)
    return lt_errorf(err, LT_ERR_INVALID,
                     "the latency table was made for \"%s\" at batch %d%s, not for \"%s\" at "
                     "batch %d; use a table of this device or measure a new one",
                     t->device, t->batch, t->estimated ? " (estimate)" : "", device, batch);
  return LT_OK;
}

lt_status lt_lat_profile(lt_graph *g, lt_backend *be, int batch, const lt_lat_opts *opts,
                         lt_lat_table *t, lt_err *err) {
  lt_lat_opts o = lat_opts_fill(opts);
  if (batch < 1) batch = t->batch;
  if (batch < 1) return lt_errorf(err, LT_ERR_INVALID, "latency batch must be at least 1");
  if (t->n && t->probe_step) o.probe_step = t->probe_step;
  lt_status st = table_begin(t, be->description, batch, o.probe_step, 0, err);
  if (st) return st;
  lt_compress_layer *L;
  int n;
  if ((st = lt_compress_layers_find(g, o.probe_step, &L, &n, err))) return st;
  for (int i = 0; i < n && !st; i++) {
    if (lt_lat_lookup(t, &L[i])) continue; /* measured before (cache or an earlier layer) */
    lt_lat_entry e;
    entry_from_layer(&L[i], &e);
    entry_ranks(&e, o.probe_step);
    for (int k = -1; k < e.n && !st; k++) {
      lt_graph *bg = block_graph(&e, k < 0 ? 0 : e.ranks[k], err);
      if (!bg) {
        st = err ? err->status : LT_ERR_INTERNAL;
        break;
      }
      st = lt_lat_measure_graph(bg, be, batch, &o, k < 0 ? &e.dense_ms : &e.ms[k], err);
      lt_graph_free(bg);
    }
    if (!st) st = lt_lat_table_add(t, &e, err);
  }
  free(L);
  if (!st) t->step = lt_lat_find_step(t);
  return st;
}

lt_status lt_lat_estimate(lt_graph *g, const lt_roofline *rf, int batch, int probe_step,
                          lt_lat_table *t, lt_err *err) {
  if (!rf || !(rf->gflops > 0) || !(rf->gbytes_s > 0))
    return lt_errorf(err, LT_ERR_INVALID,
                     "a roofline estimate needs the device's peak GFLOP/s and memory GB/s (> 0)");
  if (probe_step < 1) probe_step = 4;
  char dev[256];
  snprintf(dev, sizeof dev, "roofline %.6g GFLOP/s, %.6g GB/s", rf->gflops, rf->gbytes_s);
  lt_status st = table_begin(t, dev, batch, probe_step, 1, err);
  if (st) return st;
  lt_compress_layer *L;
  int n;
  if ((st = lt_compress_layers_find(g, probe_step, &L, &n, err))) return st;
  for (int i = 0; i < n && !st; i++) {
    if (lt_lat_lookup(t, &L[i])) continue;
    const lt_compress_layer *l = &L[i];
    lt_lat_entry e;
    entry_from_layer(l, &e);
    entry_ranks(&e, probe_step);
    double in_px = (double)l->in_h * l->in_w, out_px = (double)l->out_h * l->out_w;
    /* Each conv is bound by its arithmetic or by moving its input, output and weight once. */
#define ROOF_MS(macs, bytes) \
  (1e3 * fmax(2.0 * (macs) * batch / (rf->gflops * 1e9), (bytes) / (rf->gbytes_s * 1e9)))
    e.dense_ms = ROOF_MS((double)l->dense_macs,
                         4.0 * (batch * (l->c * in_px + l->s * out_px) + (double)l->dense_params));
    for (int k = 0; k < e.n && l->kind == LT_COMPRESS_LINEAR; k++) {
      double r = e.ranks[k]; /* K -> r, then r -> M */
      e.ms[k] = ROOF_MS(l->c * r, 4.0 * (batch * (l->c + r) + l->c * r)) +
                ROOF_MS(r * l->s, 4.0 * (batch * (r + l->s) + r * l->s));
    }
    for (int k = 0; k < e.n && l->kind != LT_COMPRESS_LINEAR; k++) {
      double r = e.ranks[k];
      e.ms[k] = ROOF_MS(l->c * r * in_px, 4.0 * (batch * (l->c + r) * in_px + l->c * r)) +
                ROOF_MS(l->kh * l->kw * r * r * out_px,
                        4.0 * (batch * (r * in_px + r * out_px) + l->kh * l->kw * r * r)) +
                ROOF_MS(r * l->s * out_px, 4.0 * (batch * (r + l->s) * out_px + r * l->s));
    }
#undef ROOF_MS
    st = lt_lat_table_add(t, &e, err);
  }
  free(L);
  /* A roofline has no staircase: the probe step is the step. */
  t->step = probe_step;
  return st;
}

int lt_lat_find_step(const lt_lat_table *t) {
  int ps = t->probe_step > 0 ? t->probe_step : 1;
  if (t->estimated) return ps;
  /* Histogram of gaps (in probe steps) between consecutive jumps of each shape. */
  int hist[LT_COMPRESS_MAX_CAND + 1] = {0};
  for (int i = 0; i < t->n; i++) {
    const lt_lat_entry *e = &t->e[i];
    int last = -1;
    for (int k = 1; k < e->n; k++) {
      if (!(e->ms[k] > 1.05 * e->ms[k - 1])) continue;
      if (last >= 0) {
        int gap = (e->ranks[k] - e->ranks[last]) / ps;
        if (gap >= 1 && gap <= LT_COMPRESS_MAX_CAND) hist[gap]++;
      }
      last = k;
    }
  }
  int best = 1;
  for (int gap = 2; gap <= LT_COMPRESS_MAX_CAND; gap++)
    if (hist[gap] > hist[best]) best = gap;
  return best * ps;
}

/* Moves candidate `from` of l to slot `to` (<= from) with latency ms: compacting the candidates. */
static void cand_keep(lt_compress_layer *l, int to, int from, double ms) {
  l->cand[to] = l->cand[from], l->macs[to] = l->macs[from], l->params[to] = l->params[from];
  l->ms[to] = ms;
}

lt_status lt_compress_layers_set_latency(lt_compress_layer *L, int n, const lt_lat_table *t,
                                         int step, lt_err *err) {
  lt_compress_layers_set_step(L, n, step);
  for (int i = 0; i < n; i++) {
    lt_compress_layer *l = &L[i];
    const lt_lat_entry *e = lookup_nearest(t, l);
    if (!e)
      return lt_errorf(err, LT_ERR_INVALID,
                       "the latency table has no entry for %s layer %s (%d->%d, %dx%d, input "
                       "%dx%d); profile this model (lathe profile MODEL --out TABLE.json)",
                       l->kind == LT_COMPRESS_LINEAR ? "linear" : "conv", l->name, l->c, l->s,
                       l->kh, l->kw, l->in_h, l->in_w);
    l->dense_ms = e->dense_ms;
    int m = 0;
    for (int k = 0; k < l->n_cand; k++) {
      int j = 0;
      while (j < e->n && e->ranks[j] != l->cand[k]) j++;
      if (j == e->n) continue; /* rank not probed (a table with a coarser probe step) */
      cand_keep(l, m++, k, e->ms[j]);
    }
    l->n_cand = m;
    l->max_rank = m ? l->cand[m - 1] : 0;
    if (m == 0)
      return lt_errorf(err, LT_ERR_INVALID,
                       "the latency table holds no rank of step %d for layer %s; profile with a "
                       "probe step that divides %d",
                       step, l->name, step);
  }
  return LT_OK;
}

int lt_compress_layers_keep_faster(lt_compress_layer *L, int n, double margin) {
  int k = 0;
  for (int i = 0; i < n; i++) {
    lt_compress_layer l = L[i];
    int m = 0;
    for (int j = 0; j < l.n_cand; j++) {
      /* NaN (no figure) counts as not faster */
      if (!(l.ms[j] < (1 - margin) * l.dense_ms)) continue;
      cand_keep(&l, m++, j, l.ms[j]);
    }
    if (m == 0) continue;
    l.n_cand = m;
    l.max_rank = l.cand[m - 1];
    /* [k, i) holds the layers dropped so far: shift them up one, in order, behind this one. */
    memmove(&L[k + 1], &L[k], (size_t)(i - k) * sizeof *L);
    L[k++] = l;
  }
  /* The dropped layers, behind the kept ones, lose their candidates. */
  for (int i = k; i < n; i++) L[i].n_cand = 0, L[i].max_rank = 0;
  return k;
}
