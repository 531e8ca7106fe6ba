/* The differentiable rank search (HALOC): every searched conv becomes one Tucker-2 block at its
 * largest candidate rank whose core is masked by the cumulative Gumbel-softmax weights of its
 * candidates (a linear layer: its two SVD factors at the largest candidate, the rows of the first
 * factor masked), so the mixture of all K candidates costs one forward and one backward. The
 * mask lives host-side: a master copy of each core (first factor) is kept, G ⊙ M is written
 * into the core conv's weight before each forward, and after backward the core gradient gives
 * dG = M ⊙ dG_eff (for the SGD step on the master) and dc (for the logits, through the
 * cumulative sum and the softmax).
 * Weights (SGD, training samples) and logits (Adam, held-out samples) update in alternation
 * under loss = task × (E[cost]/T)^β when E[cost] > T, plus a decaying feature-map loss between
 * stage outputs of the searched model and the original one. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cpu/kernels.h"
#include "lathe/backend.h"
#include "lathe/compress.h"
#include "lathe/train.h"

/* ---- the masked mixture -------------------------------------------------------------------- */

void lt_mixture_cummask(int n_cand, const int *cand, const float *m, float *c) {
  int r = cand[n_cand - 1];
  for (int j = 0; j < r; j++) {
    double acc = 0;
    for (int i = 0; i < n_cand; i++)
      if (cand[i] > j) acc += m[i];
    c[j] = (float)acc;
  }
}

void lt_mixture_apply(const float *g, int r, int p, const float *c, float *g_eff) {
  for (int a = 0; a < r; a++)
    for (int b = 0; b < r; b++) {
      float s = c[a > b ? a : b];
      const float *src = g + ((size_t)a * r + b) * p;
      float *dst = g_eff + ((size_t)a * r + b) * p;
      for (int k = 0; k < p; k++) dst[k] = s * src[k];
    }
}

void lt_mixture_backward(const float *g, int r, int p, const float *c, const float *dg_eff,
                         float *dg, double *dc) {
  for (int j = 0; j < r; j++) dc[j] = 0;
  for (int a = 0; a < r; a++)
    for (int b = 0; b < r; b++) {
      int j = a > b ? a : b;
      size_t o = ((size_t)a * r + b) * p;
      double acc = 0;
      for (int k = 0; k < p; k++) {
        acc += (double)g[o + k] * dg_eff[o + k];
        if (dg) dg[o + k] = c[j] * dg_eff[o + k];
      }
      dc[j] += acc;
    }
}

void lt_mixture_dm(int n_cand, const int *cand, const double *dc, double *dm) {
  double acc = 0;
  int j = 0;
  for (int i = 0; i < n_cand; i++) {
    for (; j < cand[i]; j++) acc += dc[j];
    dm[i] = acc;
  }
}

void lt_mixture_apply_rows(const float *w, int r, int p, const float *c, float *w_eff) {
  for (int j = 0; j < r; j++)
    for (int k = 0; k < p; k++) w_eff[(size_t)j * p + k] = c[j] * w[(size_t)j * p + k];
}

void lt_mixture_backward_rows(const float *w, int r, int p, const float *c, const float *dw_eff,
                              float *dw, double *dc) {
  for (int j = 0; j < r; j++) {
    const float *wj = w + (size_t)j * p, *gj = dw_eff + (size_t)j * p;
    double acc = 0;
    for (int k = 0; k < p; k++) {
      acc += (double)wj[k] * gj[k];
      if (dw) dw[(size_t)j * p + k] = c[j] * gj[k];
    }
    dc[j] = acc;
  }
}

void lt_gumbel_softmax(int n, const double *alpha, const double *gumbel, double tau, double *m) {
  double mx = -INFINITY;
  for (int i = 0; i < n; i++) {
    m[i] = (alpha[i] + (gumbel ? gumbel[i] : 0)) / tau;
    if (m[i] > mx) mx = m[i];
  }
  double sum = 0;
  for (int i = 0; i < n; i++) sum += (m[i] = exp(m[i] - mx));
  for (int i = 0; i < n; i++) m[i] /= sum;
}

void lt_gumbel_softmax_backward(int n, const double *m, double tau, const double *dm,
                                double *dalpha) {
  double dot = 0;
  for (int i = 0; i < n; i++) dot += m[i] * dm[i];
  for (int i = 0; i < n; i++) dalpha[i] = m[i] * (dm[i] - dot) / tau;
}

double lt_compress_layer_cost(const lt_compress_layer *l, lt_target_kind kind, int i) {
  switch (kind) {
  case LT_TARGET_LATENCY: return i < 0 ? l->dense_ms : l->ms[i];
  case LT_TARGET_FLOPS: return (double)(i < 0 ? l->dense_macs : l->macs[i]);
  case LT_TARGET_PARAMS: return (double)(i < 0 ? l->dense_params : l->params[i]);
  }
  return NAN;
}

static double layer_scale(const lt_search_config *c) {
  return c->layer_cost_scale > 0 ? c->layer_cost_scale : 1;
}

lt_search_config lt_search_config_default(void) {
  return (lt_search_config){.batch_size = 64, .steps = 200, .lr_weights = 0.01, .momentum = 0.9,
                            .weight_decay = 5e-4, .lr_logits = 0.05, .tau_start = 5,
                            .tau_end = 0.1, .beta = 1.5, .fm_weight = 1.0, .seed = 1};
}

/* ---- the search ---------------------------------------------------------------------------- */

#define SEARCH_MAX_STAGES (LT_MAX_IO - 1)

typedef struct search_layer {
  int linear;             /* a two-factor layer: the mask scales the rows of its first factor */
  int n_cand;
  const int *cand;        /* (n_cand) borrowed from lt_compress_layer */
  int r, p;               /* largest candidate, kh·kw (linear: K) */
  int core, u_in, u_out;  /* value ids in the searched graph (linear: core = b, u_out = a) */
  lt_tensor *master;      /* (r, r, kh, kw) the unmasked core (linear: b (r, K)), owned */
  lt_tensor *dmaster;     /* its gradient M ⊙ dG_eff, owned */
  lt_tensor *alpha;       /* (n_cand) logits, owned */
  lt_tensor *dalpha;      /* (n_cand) owned */
  double m[LT_COMPRESS_MAX_CAND];  /* current mixture weights */
  float c[4096];          /* cumulative mask (r) */
  double cost[LT_COMPRESS_MAX_CAND];
} search_layer;

typedef struct search_state {
  const lt_search_config *cfg;
  lt_graph *sg, *tg;      /* searched copy, teacher copy (stage outputs added), owned */
  lt_exec *sx, *tx;
  int n;
  search_layer *L;        /* (n) owned */
  int n_stage;            /* extra outputs 1..n_stage of both graphs */
  int B, k;
  float *x, *dlogits;     /* (B, in) and (B, k) */
  int32_t *labels;        /* (B) */
  int64_t *idx;           /* (B) */
  lt_rng rng;
} search_state;

static int node_by_name(const lt_graph *g, const char *name) {
  for (int i = 0; i < g->n_nodes; i++)
    if (!strcmp(g->nodes[i].name, name)) return i;
  return -1;
}

static int value_of(const lt_graph *g, const char *layer, const char *suffix) {
  char name[300];
  snprintf(name, sizeof name, "%s.%s", layer, suffix);
  return lt_graph_find_value(g, name);
}

/* Stage outputs: activations entering a node that lowers spatial resolution (a strided conv or
 * pool, global pooling), found in the original graph and present by name in the searched one. */
static void add_stage_outputs(const lt_graph *g, lt_graph *sg, lt_graph *tg, int *n_stage) {
  *n_stage = 0;
  for (int i = 0; i < g->n_nodes && *n_stage < SEARCH_MAX_STAGES; i++) {
    const lt_node *nd = &g->nodes[i];
    int lowers = nd->op == LT_OP_GLOBAL_AVGPOOL || nd->op == LT_OP_MAXPOOL ||
                 nd->op == LT_OP_AVGPOOL ||
                 (nd->op == LT_OP_CONV2D && (nd->a.stride[0] > 1 || nd->a.stride[1] > 1));
    if (!lowers) continue;
    const lt_value *v = &g->values[nd->in[0]];
    if (v->kind != LT_VALUE_ACT) continue;
    int sv = lt_graph_find_value(sg, v->name), tv = lt_graph_find_value(tg, v->name);
    if (sv < 0 || tv < 0) continue;
    int dup = 0;
    for (int k = 1; k < sg->n_outputs; k++) dup |= sg->outputs[k] == sv;
    if (dup) continue;
    lt_graph_set_output(sg, sv);
    lt_graph_set_output(tg, tv);
    (*n_stage)++;
  }
}

static void search_free(search_state *s) {
  for (int i = 0; s->L && i < s->n; i++) {
    lt_tensor_free(s->L[i].master), lt_tensor_free(s->L[i].dmaster);
    lt_tensor_free(s->L[i].alpha), lt_tensor_free(s->L[i].dalpha);
  }
  free(s->L);
  lt_exec_free(s->sx), lt_exec_free(s->tx);
  lt_graph_free(s->sg), lt_graph_free(s->tg);
  free(s->x), free(s->dlogits), free(s->labels), free(s->idx);
}

/* Draws fresh Gumbel noise, recomputes every layer's mixture and writes G ⊙ M into the cores. */
static void search_set_mixture(search_state *s, double tau, int noisy) {
  for (int l = 0; l < s->n; l++) {
    search_layer *y = &s->L[l];
    double alpha[LT_COMPRESS_MAX_CAND], gum[LT_COMPRESS_MAX_CAND];
    const float *a = lt_tensor_f32(y->alpha);
    for (int i = 0; i < y->n_cand; i++) {
      alpha[i] = a[i];
      double u = lt_rng_uniform(&s->rng);
      gum[i] = -log(-log(u + 1e-20) + 1e-20);
    }
    lt_gumbel_softmax(y->n_cand, alpha, noisy ? gum : NULL, tau, y->m);
    float mf[LT_COMPRESS_MAX_CAND];
    for (int i = 0; i < y->n_cand; i++) mf[i] = (float)y->m[i];
    lt_mixture_cummask(y->n_cand, y->cand, mf, y->c);
    if (y->linear)
      lt_mixture_apply_rows(lt_tensor_f32(y->master), y->r, y->p, y->c,
                            lt_tensor_f32(s->sg->values[y->core].data));
    else
      lt_mixture_apply(lt_tensor_f32(y->master), y->r, y->p, y->c,
                       lt_tensor_f32(s->sg->values[y->core].data));
  }
}

static void search_mixture_backward(const search_layer *y, const float *dw_eff, float *dw,
                                    double *dc) {
  if (y->linear)
    lt_mixture_backward_rows(lt_tensor_f32(y->master), y->r, y->p, y->c, dw_eff, dw, dc);
  else
    lt_mixture_backward(lt_tensor_f32(y->master), y->r, y->p, y->c, dw_eff, dw, dc);
}

static double search_expected_cost(const search_state *s) {
  double e = s->cfg->fixed_cost;
  for (int l = 0; l < s->n; l++)
    for (int i = 0; i < s->L[l].n_cand; i++) e += s->L[l].m[i] * s->L[l].cost[i];
  return e;
}

static int search_argmax(const search_layer *y) {
  const float *a = lt_tensor_f32(y->alpha);
  int best = 0;
  for (int i = 1; i < y->n_cand; i++)
    if (a[i] > a[best]) best = i;
  return best;
}

/* One forward and backward on a batch drawn from [lo, lo + span): the task loss scaled by the
 * hardware factor, plus the feature-map loss. Leaves parameter gradients in the executor. */
static lt_status search_pass(search_state *s, int64_t lo, int64_t span, int augment, int64_t step,
                             double fm_w, double *task, double *fm, double *hw_dE, lt_err *err) {
  const lt_search_config *c = s->cfg;
  for (int i = 0; i < s->B; i++) s->idx[i] = lo + (int64_t)lt_rng_below(&s->rng, (uint64_t)span);
  lt_batch_opts bo = c->batch;
  if (!augment) bo.pad = 0, bo.flip = 0;
  lt_status st = lt_batch_fill(c->train, s->idx, s->B, &bo, c->seed, (uint64_t)step, s->x,
                               s->labels, NULL, err);
  if (st) return st;
  size_t xb = lt_tensor_nbytes(lt_exec_input(s->sx, 0));
  memcpy(lt_exec_input(s->sx, 0)->data, s->x, xb);
  if ((st = lt_exec_forward(s->sx, err))) return st;
  if (s->n_stage && fm_w > 0) {
    memcpy(lt_exec_input(s->tx, 0)->data, s->x, xb);
    if ((st = lt_exec_forward(s->tx, err))) return st;
  }
  double e = search_expected_cost(s), T = c->target_value;
  double f = e > T ? pow(e / T, c->beta) : 1.0;
  *task = lt_cpu_softmax_xent(s->B, s->k, lt_tensor_f32(lt_exec_output(s->sx, 0)), s->labels,
                              (float)(f / s->B), s->dlogits, NULL) / s->B;
  if (!isfinite(*task))
    return lt_errorf(err, LT_ERR_INVALID,
                     "search loss became %g at step %lld; lower search.lr_weights", *task,
                     (long long)step);
  *hw_dE = e > T ? *task * c->beta * pow(e / T, c->beta - 1) / T : 0.0;
  lt_exec_zero_grads(s->sx);
  memcpy(lt_exec_output_grad(s->sx, 0)->data, s->dlogits, sizeof(float) * (size_t)s->B * s->k);
  *fm = 0;
  for (int k = 1; k <= s->n_stage; k++) {
    lt_tensor *dg = lt_exec_output_grad(s->sx, k);
    if (!dg) continue;
    size_t cnt = (size_t)lt_tensor_numel(dg);
    if (fm_w > 0)
      *fm += fm_w / (double)cnt *
             lt_cpu_mse(cnt, lt_tensor_f32(lt_exec_output(s->sx, k)),
                        lt_tensor_f32(lt_exec_output(s->tx, k)), (float)(fm_w / (double)cnt),
                        lt_tensor_f32(dg));
    else
      memset(dg->data, 0, lt_tensor_nbytes(dg));
  }
  return lt_exec_backward(s->sx, err);
}

/* Sets up the searched copy (every layer at its largest candidate), the teacher, the buffers. */
static lt_status search_setup(search_state *s, const lt_graph *g, lt_backend *be,
                              const lt_compress_layer *L, int n, lt_err *err) {
  const lt_search_config *c = s->cfg;
  if (!(s->sg = lt_graph_clone(g, err)) || !(s->tg = lt_graph_clone(g, err)))
    return err ? err->status : LT_ERR_NOMEM;
  s->n = n;
  if (!(s->L = calloc((size_t)n, sizeof *s->L)))
    return lt_errorf(err, LT_ERR_NOMEM, "out of memory for the search state");
  for (int l = 0; l < n; l++) {
    search_layer *y = &s->L[l];
    if (L[l].n_cand < 1 || L[l].cand[L[l].n_cand - 1] > 4096)
      return lt_errorf(err, LT_ERR_INVALID, "layer %s has no candidate rank to search",
                       L[l].name);
    y->n_cand = L[l].n_cand, y->cand = L[l].cand, y->r = L[l].cand[L[l].n_cand - 1];
    y->linear = L[l].kind == LT_COMPRESS_LINEAR;
    y->p = y->linear ? L[l].c : L[l].kh * L[l].kw;
    for (int i = 0; i < y->n_cand; i++) {
      y->cost[i] = layer_scale(c) * lt_compress_layer_cost(&L[l], c->target, i);
      if (!isfinite(y->cost[i]))
        return lt_errorf(err, LT_ERR_INVALID,
                         "layer %s has no latency for rank %d; set latencies from a table first",
                         L[l].name, y->cand[i]);
    }
    int node = node_by_name(s->sg, L[l].name);
    if (node < 0) return lt_errorf(err, LT_ERR_INVALID, "layer %s is not in the model", L[l].name);
    lt_status st = lt_compress_factorize(s->sg, node, y->r, err);
    if (st) return st;
  }
  /* Value ids only now: every rewrite prunes, which renumbers values. */
  for (int l = 0; l < n; l++) {
    search_layer *y = &s->L[l];
    y->core = value_of(s->sg, L[l].name, y->linear ? "b.weight" : "core.weight");
    y->u_in = y->linear ? -1 : value_of(s->sg, L[l].name, "u_in.weight");
    y->u_out = value_of(s->sg, L[l].name, y->linear ? "a.weight" : "u_out.weight");
    if (y->core < 0 || y->u_out < 0 || (!y->linear && y->u_in < 0))
      return lt_errorf(err, LT_ERR_INTERNAL, "the factors of %s are missing after the rewrite",
                       L[l].name);
    const lt_tensor *cw = s->sg->values[y->core].data;
    y->master = lt_tensor_clone(cw, LT_MEM_WEIGHTS, err);
    y->dmaster = lt_tensor_clone(cw, LT_MEM_GRADIENTS, err);
    y->alpha = lt_tensor_new(LT_F32, 1, (int64_t[]){y->n_cand}, LT_MEM_WEIGHTS, err);
    y->dalpha = lt_tensor_new(LT_F32, 1, (int64_t[]){y->n_cand}, LT_MEM_GRADIENTS, err);
    if (!y->master || !y->dmaster || !y->alpha || !y->dalpha) return LT_ERR_NOMEM;
  }
  lt_status st = lt_graph_infer_shapes(s->sg, err);
  if (st) return st;
  add_stage_outputs(g, s->sg, s->tg, &s->n_stage);
  s->B = c->batch_size;
  const lt_value *out = &g->values[g->outputs[0]];
  s->k = (int)lt_shape_numel(out->ndim, out->shape);
  lt_exec_opts xo = {.seed = c->seed};
  if (!(s->sx = lt_exec_create(s->sg, s->B, LT_MODE_TRAIN, be, &xo, err))) return err->status;
  if (s->n_stage && !(s->tx = lt_exec_create(s->tg, s->B, LT_MODE_INFER, be, &xo, err)))
    return err->status;
  size_t in_per = (size_t)c->train->c * c->train->h * c->train->w;
  s->x = malloc(sizeof(float) * s->B * in_per);
  s->dlogits = malloc(sizeof(float) * (size_t)s->B * s->k);
  s->labels = malloc(sizeof(int32_t) * (size_t)s->B);
  s->idx = malloc(sizeof(int64_t) * (size_t)s->B);
  if (!s->x || !s->dlogits || !s->labels || !s->idx)
    return lt_errorf(err, LT_ERR_NOMEM, "out of memory for search batches");
  s->rng = lt_rng_make(c->seed, 0x5345415243480000ull);
  return LT_OK;
}

static lt_status search_check(const lt_graph *g, lt_backend *be, const lt_compress_layer *L, int n,
                              const lt_search_config *c, lt_err *err) {
  if (be->device >= 0)
    return lt_errorf(err, LT_ERR_UNSUPPORTED,
                     "the rank search keeps its masked cores in host memory; run it on the cpu "
                     "backend");
  if (!c->train || !c->train->labels)
    return lt_errorf(err, LT_ERR_INVALID, "the rank search needs a split with class labels");
  if (g->n_inputs != 1 || g->n_outputs != 1)
    return lt_errorf(err, LT_ERR_UNSUPPORTED, "the rank search needs a model with one input and "
                                              "one output");
  const lt_value *in = &g->values[g->inputs[0]];
  int64_t want[3] = {c->train->c, c->train->h, c->train->w};
  if (!lt_shape_equal(in->ndim, in->shape, 3, want))
    return lt_errorf(err, LT_ERR_INVALID,
                     "the model takes inputs of %d dims that do not match the dataset's samples "
                     "(%d, %d, %d); pick the dataset the model was trained on",
                     in->ndim, c->train->c, c->train->h, c->train->w);
  if (c->n_weights < c->batch_size || c->train->n - c->n_weights < c->batch_size)
    return lt_errorf(err, LT_ERR_INVALID,
                     "the search needs at least one batch (%d) of training and of held-out "
                     "samples; split %s has %lld, %lld used for weights",
                     c->batch_size, c->train->split, (long long)c->train->n,
                     (long long)c->n_weights);
  if (n < 1)
    return lt_errorf(err, LT_ERR_INVALID, "the model has no compressible layer");
  double lo = c->fixed_cost;
  for (int l = 0; l < n; l++) lo += layer_scale(c) * lt_compress_layer_cost(&L[l], c->target, 0);
  if (!(c->target_value > 0) || lo > c->target_value)
    return lt_errorf(err, LT_ERR_INVALID,
                     "the target %g cannot be met: even the smallest ranks cost %g (%g of it in "
                     "layers that stay as they are); relax the target",
                     c->target_value, lo, c->fixed_cost);
  return LT_OK;
}

/* Total cost of the picked candidates. */
static double search_cost(const search_state *s, const int *pick) {
  double cost = s->cfg->fixed_cost;
  for (int l = 0; l < s->n; l++) cost += s->L[l].cost[pick[l]];
  return cost;
}

/* Fits the argmax ranks to the target. Over it: step down the layer whose next lower candidate
 * gives up the least logit per unit of cost saved, until the target is met (search_check made
 * sure it can be). Then, since the annealed logits can settle well under the budget, spend what
 * is left: step up the layer whose next candidate loses the least logit per unit of cost, while
 * the target still holds. */
static void search_fit(search_state *s, int *pick) {
  const double T = s->cfg->target_value;
  for (int dir = -1; dir <= 1; dir += 2) {
    for (;;) {
      double cost = search_cost(s, pick);
      if (dir < 0 && cost <= T) break;
      int best = -1;
      double best_score = INFINITY;
      for (int l = 0; l < s->n; l++) {
        const search_layer *y = &s->L[l];
        int to = pick[l] + dir;
        if (to < 0 || to >= y->n_cand) continue;
        const float *a = lt_tensor_f32(y->alpha);
        double dcost = (y->cost[to] - y->cost[pick[l]]) * dir; /* > 0 when the step moves cost
                                                                  the intended way */
        if (dcost <= 0) continue;
        if (dir > 0 && cost + dcost > T) continue;
        double score = (a[pick[l]] - a[to]) / dcost;
        if (score < best_score) best_score = score, best = l;
      }
      if (best < 0) break;
      pick[best] += dir;
    }
  }
}

/* The searched copy's layers re-decomposed at the chosen ranks from their trained factors: each
 * trained block (master core, not the mask) truncated to its rank gives a dense weight that is
 * written into a fresh copy of g together with every other trained parameter, which is then
 * factorised afresh. */
static lt_status search_trained_graph(search_state *s, const lt_graph *g,
                                      const lt_compress_layer *L, const int *ranks,
                                      lt_graph **out, lt_err *err) {
  lt_graph *h = lt_graph_clone(g, err);
  if (!h) return err->status;
  for (int v = 0; v < h->n_values; v++) {
    lt_value *hv = &h->values[v];
    if (!hv->data) continue;
    int sv = lt_graph_find_value(s->sg, hv->name);
    if (sv >= 0 && s->sg->values[sv].data &&
        lt_tensor_nbytes(s->sg->values[sv].data) == lt_tensor_nbytes(hv->data))
      memcpy(hv->data->data, s->sg->values[sv].data->data, lt_tensor_nbytes(hv->data));
  }
  lt_status st = LT_OK;
  for (int l = 0; l < s->n && !st; l++) {
    search_layer *y = &s->L[l];
    int node = node_by_name(h, L[l].name);
    lt_tensor *w = h->values[h->nodes[node].in[1]].data;
    if (y->linear) {
      /* W (M, K) = A[:, :r] B[:r, :] from the trained a (M, R) and the master b (R, K). */
      const float *a = lt_tensor_f32(s->sg->values[y->u_out].data), *b = lt_tensor_f32(y->master);
      float *wd = lt_tensor_f32(w);
      int M = L[l].s, K = L[l].c, R = y->r;
      for (int i = 0; i < M; i++)
        for (int k = 0; k < K; k++) {
          double acc = 0;
          for (int j = 0; j < ranks[l]; j++)
            acc += (double)a[(size_t)i * R + j] * b[(size_t)j * K + k];
          wd[(size_t)i * K + k] = (float)acc;
        }
      continue;
    }
    const float *ui = lt_tensor_f32(s->sg->values[y->u_in].data); /* (r, c, 1, 1) */
    lt_tucker2 t = {.s = L[l].s, .c = L[l].c, .kh = L[l].kh, .kw = L[l].kw, .r_out = y->r,
                    .r_in = y->r};
    t.u_in = malloc(sizeof(float) * (size_t)L[l].c * y->r);
    if (!t.u_in) {
      st = lt_errorf(err, LT_ERR_NOMEM, "out of memory rebuilding %s", L[l].name);
      break;
    }
    for (int b = 0; b < y->r; b++)
      for (int ic = 0; ic < L[l].c; ic++) t.u_in[(size_t)ic * y->r + b] = ui[(size_t)b * L[l].c + ic];
    t.u_out = lt_tensor_f32(s->sg->values[y->u_out].data); /* (s, r, 1, 1) = (s, r) */
    t.core = lt_tensor_f32(y->master);
    lt_tucker2_reconstruct(&t, ranks[l], ranks[l], lt_tensor_f32(w));
    free(t.u_in);
  }
  if (!st) st = lt_compress_apply(h, L, s->n, ranks, err);
  if (st) lt_graph_free(h);
  else *out = h;
  return st;
}

lt_status lt_compress_search(const lt_graph *g, lt_backend *be, const lt_compress_layer *L, int n,
                             const lt_search_config *c, int *ranks, lt_graph **trained_out,
                             lt_err *err) {
  lt_status st = search_check(g, be, L, n, c, err);
  if (st) return st;
  search_state s = {.cfg = c};
  lt_optim *ow = NULL, *oa = NULL;
  lt_tensor **wp = NULL, **wg = NULL, **ap = NULL, **ag = NULL;
  int *pick = calloc((size_t)n, sizeof(int));
  if (!pick) return lt_errorf(err, LT_ERR_NOMEM, "out of memory for the search");
  if ((st = search_setup(&s, g, be, L, n, err))) goto done;

  /* Weights: every trainable parameter, the master copy standing in for each masked core. */
  int np = lt_train_params(s.sg, NULL, 0);
  int *ids = malloc(sizeof(int) * (size_t)np);
  wp = malloc(sizeof *wp * (size_t)np), wg = malloc(sizeof *wg * (size_t)np);
  ap = malloc(sizeof *ap * (size_t)n), ag = malloc(sizeof *ag * (size_t)n);
  if (!ids || !wp || !wg || !ap || !ag) {
    free(ids);
    st = lt_errorf(err, LT_ERR_NOMEM, "out of memory for the search");
    goto done;
  }
  lt_train_params(s.sg, ids, np);
  for (int i = 0; i < np; i++) {
    wp[i] = s.sg->values[ids[i]].data;
    wg[i] = lt_exec_param_grad(s.sx, ids[i]);
    for (int l = 0; l < n; l++)
      if (ids[i] == s.L[l].core) wp[i] = s.L[l].master, wg[i] = s.L[l].dmaster;
  }
  free(ids);
  for (int l = 0; l < n; l++) ap[l] = s.L[l].alpha, ag[l] = s.L[l].dalpha;
  lt_optim_config wc = lt_optim_config_default(LT_OPTIM_SGD);
  wc.momentum = (float)c->momentum, wc.weight_decay = (float)c->weight_decay;
  lt_optim_config acfg = lt_optim_config_default(LT_OPTIM_ADAMW);
  acfg.weight_decay = 0;
  if (!(ow = lt_optim_create(&wc, np, wp, err)) || !(oa = lt_optim_create(&acfg, n, ap, err))) {
    st = err->status;
    goto done;
  }

  int64_t nw = c->n_weights, nh = c->train->n - c->n_weights;
  for (int64_t t = 0; t < c->steps; t++) {
    double frac = c->steps > 1 ? (double)t / (double)(c->steps - 1) : 1.0;
    double tau = c->tau_start * pow(c->tau_end / c->tau_start, frac);
    double fm_w = c->fm_weight * (1.0 - frac);
    double task, fm, dE;
    /* Weight step: sampled mixture, training samples, SGD on the masters. */
    search_set_mixture(&s, tau, 1);
    if ((st = search_pass(&s, 0, nw, 1, t, fm_w, &task, &fm, &dE, err))) goto done;
    for (int l = 0; l < n; l++) {
      search_layer *y = &s.L[l];
      double dc[4096];
      search_mixture_backward(y, lt_tensor_f32(lt_exec_param_grad(s.sx, y->core)),
                              lt_tensor_f32(y->dmaster), dc);
    }
    if ((st = lt_optim_step(ow, wg, (float)c->lr_weights, err))) goto done;
    /* Logit step: a fresh sample on held-out samples, Adam on the logits. */
    search_set_mixture(&s, tau, 1);
    double e = search_expected_cost(&s);
    if ((st = search_pass(&s, nw, nh, 0, t, fm_w, &task, &fm, &dE, err))) goto done;
    for (int l = 0; l < n; l++) {
      search_layer *y = &s.L[l];
      double dc[4096], dm[LT_COMPRESS_MAX_CAND], da[LT_COMPRESS_MAX_CAND];
      search_mixture_backward(y, lt_tensor_f32(lt_exec_param_grad(s.sx, y->core)), NULL, dc);
      lt_mixture_dm(y->n_cand, y->cand, dc, dm);
      for (int i = 0; i < y->n_cand; i++) dm[i] += dE * y->cost[i];
      lt_gumbel_softmax_backward(y->n_cand, y->m, tau, dm, da);
      float *g = lt_tensor_f32(y->dalpha);
      for (int i = 0; i < y->n_cand; i++) g[i] = (float)da[i];
    }
    if ((st = lt_optim_step(oa, ag, (float)c->lr_logits, err))) goto done;

    double ac = c->fixed_cost;
    for (int l = 0; l < n; l++) {
      pick[l] = search_argmax(&s.L[l]);
      ranks[l] = s.L[l].cand[pick[l]];
      ac += s.L[l].cost[pick[l]];
    }
    double f = e > c->target_value ? pow(e / c->target_value, c->beta) : 1.0;
    lt_search_progress p = {.step = t + 1, .steps = c->steps, .tau = tau, .task_loss = task,
                            .loss = task * f + fm, .fm_loss = fm, .fm_weight = fm_w,
                            .expected_cost = e, .argmax_cost = ac, .ranks = ranks,
                            .n_layers = n};
    if (c->on_step && c->on_step(c->user, &p)) {
      st = lt_errorf(err, LT_ERR_CANCELLED, "search stopped at step %lld", (long long)t + 1);
      goto done;
    }
  }
  for (int l = 0; l < n; l++) pick[l] = search_argmax(&s.L[l]);
  search_fit(&s, pick);
  for (int l = 0; l < n; l++) ranks[l] = s.L[l].cand[pick[l]];
  if (trained_out) st = search_trained_graph(&s, g, L, ranks, trained_out, err);
done:
  lt_optim_free(ow), lt_optim_free(oa);
  free(wp), free(wg), free(ap), free(ag), free(pick);
  search_free(&s);
  return st;
}
