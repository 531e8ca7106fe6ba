/* The activation-compression stash policy (lt_stash_policy, lathe/exec.h) and its error-bound
 * controller.
 *
 * What is kept for backward, and how:
 *   conv/linear inputs (LT_SAVE_WEIGHT_INPUT)  the LORENZO codec at the layer's current eb; their
 *                                              error stays in that layer's dW
 *   conv/linear input that is a ReLU output    on the host, when that ReLU's mask is held: the
 *   (each ResNet block's output)               codec over its non-zeros only, packed in order
 *                                              (the zeros are the mask's clear bits, so exact and
 *                                              free), restored by expanding them along the mask
 *   ReLU outputs (LT_SAVE_RELU_OUTPUT)         a 1-bit mask, restored as 1.0/0.0 (the same sign
 *                                              pattern, which is all ReLU backward reads)
 *   2×2 max-pool argmax (LT_SAVE_POOL_ARGMAX)  2 bits per window, exact copy if an index is > 3
 *   batch-norm inputs (LT_SAVE_BN_INPUT)       exact, or the codec in the normalised domain:
 *                                              z = (x − mean_c)/(2·bn_eb·σ_c) coded at eb 1/2, so
 *                                              |x̂ − x̂'| <= bn_eb where x̂ = (x − mean_c)/σ_c is
 *                                              what BN backward reads; with the channel's mean,
 *                                              1/σ_c and step kept beside it (12 bytes a channel)
 *   conv/linear input that is ReLU(BN(x))      nothing of its own when that BN input and ReLU
 *   (BN → ReLU → conv, as in every ResNet      mask are held: restored as mask · max(0,
 *   block's conv2 and VGG's convs)             γ_c·x̂' + β_c) from them (references, counted
 *                                              once). The BN input's bound is then tightened per
 *                                              channel to eb_conv/|γ_c| where that is smaller,
 *                                              so the conv input stays within its layer's eb
 *   anything else (LT_SAVE_EXACT)              an exact copy
 * Tensors under AC_MIN_ELEMS elements are kept exact: the stream's header and code table would
 * outweigh what they save.
 * Everything held, the per-entry metadata included, is allocated under LT_MEM_SAVED, so the
 * allocator's saved-activation figure is the real one. store() always copies, so the executor
 * can reuse forward buffers at once.
 *
 * The controller (ADAPTIVE) follows specs/actcomp.md: observe() gathers mean|G|, δ_rms, N and R
 * for each conv/linear layer during backward; every W steps the layer's bound becomes
 * eb = ρ·√3·mean|G| / (δ_rms·√(N(1−R))), smoothed and clamped; the first window runs exact. On
 * sampled steps store() also keeps an exact copy of the input, and observe() measures the actual
 * dW error (E = X − X' through the layer's weight-gradient product) against the predicted
 * σ = eb·√(N(1−R)/3)·δ_rms.
 *
 * On a device backend (bound by the executor through bind(); the CUDA backend, or the tests' fake
 * device) the entries live in that device's memory, counted under its LT_MEM_SAVED, and every
 * data operation goes through the backend's table (ac_dev.h): the codec, masks, the affine maps,
 * zero counts and the controller's sums all run on the device, so a step moves no activation to
 * the host. What comes to the host is small: the batch statistics and γ, β of each batch norm
 * (a few floats a channel, which the entry keeps), and the scalars the controller reads.
 * Exceptions, each a copy to the host: RELATIVE mode's value range, and sampled steps' exact
 * input with the dW error measured by the host's product. */
#include "actcomp/ac_dev.h"
#include "actcomp/ac_internal.h"
#include "backend/cpu/kernels.h"

#include <cblas.h>
#include <immintrin.h>
#include <math.h>

enum {
  FORM_EXACT = 0,
  FORM_CODEC,
  FORM_MASK1,
  FORM_PACK2,
  FORM_BN_EXACT,  /* batch-norm input, exact copy, with per-channel statistics */
  FORM_BN_CODEC,  /* batch-norm input, normalised-domain codec stream, with the statistics */
  FORM_DERIVED,   /* conv input ReLU(BN(x)): rebuilt from a BN entry and a mask entry */
  FORM_MASKED     /* conv input that is a ReLU output: a stream of its non-zeros, in the order
                     of the mask entry's set bits (one ref) */
};

#define AC_MIN_ELEMS 128 /* smaller tensors stay exact: header and table outweigh the data */

/* One stored tensor: the policy's handle. Entries are reference counted: a derived entry holds
 * its BN and mask entries until it is released too, whatever order backward releases them in. */
typedef struct ac_entry {
  int node, form, refs;
  lt_dtype dtype;
  int64_t n;          /* elements */
  uint8_t *data;      /* (bytes) owned, LT_MEM_SAVED */
  size_t bytes;
  int64_t dense;      /* bytes an exact copy takes */
  int64_t nnz;        /* FORM_MASK1: set bits (the ReLU output's non-zeros) */
  /* FORM_BN_*: (batch, channels, hw) layout and (nchan × 3) floats: mean, 1/σ, z step
   * (2·eb_x, 0 for exact), owned, LT_MEM_SAVED */
  int64_t batch, nchan, hw;
  float *chan;
  double y_bound, y_rms; /* largest and RMS over channels of the bound a ReLU(γ·x̂+β) rebuilt
                            from this entry gets (INFINITY: γ unknown) */
  float *gb;          /* FORM_BN_* on a device: γ then β (nchan each, host copies of the
                         executor's parameters as the forward read them), LT_MEM_SAVED; NULL
                         on the host, which reads the graph's */
  struct ac_entry *bn, *mask; /* FORM_DERIVED: the entries it is rebuilt from (one ref each);
                                 FORM_MASKED: mask only */
} ac_entry;

static size_t entry_held(const ac_entry *e) {
  return e->bytes + sizeof *e + (size_t)e->nchan * (e->gb ? 5 : 3) * sizeof(float);
}

typedef struct ac_layer {
  int seen;
  lt_save_kind kind;
  double eb;          /* ADAPTIVE conv/linear inputs: the layer's bound (0 = exact) */
  double eb_used;     /* bound of the last store */
  double zero_frac;   /* R of the last stored input (exact zeros of the original) */
  ac_entry *cur;      /* the entry stored by this node in the current step, NULL once freed */
  int64_t step_dense, step_held, last_dense, last_held;
  /* ADAPTIVE window accumulators */
  double acc_mean_g, acc_drms, acc_n, acc_r;
  int acc_count;
  int n_hist;
  int64_t hist_step[LT_AC_HISTORY];
  double hist_eb[LT_AC_HISTORY];
  /* sampling: an exact copy of the input stored this step, waiting for observe() */
  float *exact;       /* (exact_n) owned, LT_MEM_WORKSPACE, or NULL */
  int64_t exact_n;
  double exact_eb;
  int n_samples;
  double last_obs, last_pred, sum_ratio;
  int64_t zstd_from;  /* step from which this node's streams try the zstd pass again */
} ac_layer;

struct lt_ac_stash {
  lt_ac_config cfg;
  lt_stash_policy policy;
  /* The device backend the executor bound (NULL: host memory), its operations and context. Entry
   * data, zbuf and zdec are that backend's memory. */
  lt_backend *be;
  const ac_dev_ops *dops;
  void *dctx;
  float *stage;                /* (stage_cap) host staging of device data, LT_MEM_WORKSPACE */
  int64_t stage_cap;
  lt_ac_codec *codec;
  lt_ac_buf tmp;               /* encoder output, handed to its entry (take_stream) */
  const lt_graph *g;           /* the graph of the last store() (derived entries read γ, β) */
  float *zbuf;                 /* (zcap) normalised 2-D batch-norm input (host only),
                                  LT_MEM_WORKSPACE */
  int64_t zcap;
  /* The decoded z' of one FORM_BN_CODEC entry, kept from the conv input rebuilt from it (whose
   * backward runs first) to the batch norm's own backward, so each stream decodes once. Also a
   * FORM_MASKED entry's packed non-zeros (host) on their way to or from the codec, which drops
   * any z' held (decoded again if still wanted): one buffer, so no extra workspace. */
  float *zdec;                 /* (zdec_cap) LT_MEM_WORKSPACE */
  int64_t zdec_cap;
  const struct ac_entry *zdec_of; /* the entry zdec holds, or NULL */
  int64_t *moffs;              /* (moffs_cap) set bits before each mask block, LT_MEM_WORKSPACE */
  int64_t moffs_cap;
  float *aff;                  /* (2 × affcap) per-channel offsets then scales, LT_MEM_WORKSPACE */
  int64_t affcap;
  ac_layer *layers;            /* (n_layers) indexed by node id, owned */
  int n_layers;
  lt_ac_layer_report *rep;     /* (rep_cap) owned, filled by lt_ac_stash_report */
  int rep_cap;
  int64_t step;
  int64_t cur_dense, cur_held; /* held right now */
  int64_t peak_dense, peak_held;
  int64_t last_dense, last_held, step_dense, step_held;
};

lt_ac_config lt_ac_config_default(void) {
  lt_ac_config c = {
      .mode = LT_AC_ADAPTIVE,
      .eb = 0.05,
      .rel = 0.01,
      .rho = 0.1,
      .window = 20,
      .smoothing = 0.5,
      .eb_min = 1e-4,
      .eb_max = 1.0,
      .initial_eb = 0,
      .bn_mode = LT_AC_BN_EXACT,
      .bn_eb = 0.2,
      .sample_every = 50,
      .codec = lt_ac_opts_default(),
  };
  return c;
}

/* ---- memory of the bound backend ------------------------------------------------------------ */

static void *mem_alloc(lt_ac_stash *st, size_t bytes, lt_mem_cat cat, lt_err *err) {
  return st->be ? st->be->vt->alloc(st->be, bytes, cat, err) : lt_alloc(cat, bytes, err);
}

static void mem_free(lt_ac_stash *st, void *p, size_t bytes, lt_mem_cat cat) {
  if (!p) return;
  if (st->be) st->be->vt->free(st->be, p, bytes, cat);
  else lt_free(cat, p, bytes);
}

static lt_status mem_copy(lt_ac_stash *st, void *dst, const void *src, size_t bytes,
                          lt_err *err) {
  if (!bytes) return LT_OK;
  if (st->be) return st->be->vt->copy(st->be, dst, src, bytes, err);
  memcpy(dst, src, bytes);
  return LT_OK;
}

/* A float scratch of n elements in the bound backend's memory (*buf of *cap), grown as needed. */
static float *mem_scratch(lt_ac_stash *st, float **buf, int64_t *cap, int64_t n, lt_err *err) {
  if (n <= *cap) return *buf;
  float *p = mem_alloc(st, (size_t)n * sizeof *p, LT_MEM_WORKSPACE, err);
  if (!p) return NULL;
  mem_free(st, *buf, (size_t)*cap * sizeof **buf, LT_MEM_WORKSPACE);
  *buf = p;
  *cap = n;
  return p;
}

/* n floats of device memory at src, copied into the host staging buffer (offset `at` floats). */
static const float *stage_in(lt_ac_stash *st, const void *src, int64_t n, int64_t at,
                             lt_err *err) {
  if (at + n > st->stage_cap) {
    float *p = lt_alloc(LT_MEM_WORKSPACE, (size_t)(at + n) * sizeof *p, err);
    if (!p) return NULL;
    if (at) memcpy(p, st->stage, (size_t)at * sizeof *p);
    lt_free(LT_MEM_WORKSPACE, st->stage, (size_t)st->stage_cap * sizeof *st->stage);
    st->stage = p;
    st->stage_cap = at + n;
  }
  if (st->be->vt->to_host(st->be, st->stage + at, src, (size_t)n * sizeof(float), err)) return NULL;
  return st->stage + at;
}

/* Returns the call's status when it failed (host or device; the caller's cleanup frees what the
 * entry holds). */
#define TRY(call)                                                                                  \
  do {                                                                                             \
    lt_status rc_ = (call);                                                                        \
    if (rc_) return rc_;                                                                           \
  } while (0)

/* ---- bookkeeping ----------------------------------------------------------------------------- */

static ac_layer *layer_at(lt_ac_stash *st, int node, lt_err *err) {
  if (node < 0) {
    lt_errorf(err, LT_ERR_INVALID, "stash: node id %d", node);
    return NULL;
  }
  if (node >= st->n_layers) {
    int n = node + 1 > 2 * st->n_layers ? node + 1 : 2 * st->n_layers;
    ac_layer *l = lt_calloc(LT_MEM_SAVED, (size_t)n * sizeof *l, err);
    if (!l) return NULL;
    if (st->n_layers) memcpy(l, st->layers, (size_t)st->n_layers * sizeof *l);
    lt_free(LT_MEM_SAVED, st->layers, (size_t)st->n_layers * sizeof *st->layers);
    st->layers = l;
    st->n_layers = n;
  }
  return &st->layers[node];
}

static void hist_push(ac_layer *l, int64_t step, double eb) {
  if (l->n_hist == LT_AC_HISTORY) {
    memmove(l->hist_step, l->hist_step + 1, (LT_AC_HISTORY - 1) * sizeof *l->hist_step);
    memmove(l->hist_eb, l->hist_eb + 1, (LT_AC_HISTORY - 1) * sizeof *l->hist_eb);
    l->n_hist--;
  }
  l->hist_step[l->n_hist] = step;
  l->hist_eb[l->n_hist] = eb;
  l->n_hist++;
}

static double clampd(double v, double lo, double hi) { return v < lo ? lo : v > hi ? hi : v; }

static void value_range(const float *x, int64_t n, float *lo, float *hi) {
  float a = INFINITY, b = -INFINITY;
  for (int64_t i = 0; i < n; i++) {
    float v = x[i];
    a = v < a ? v : a; /* NaN compares false and is skipped */
    b = v > b ? v : b;
  }
  *lo = a;
  *hi = b;
}

/* The bound a conv/linear input of this layer gets now (0 = keep exact). */
static double weight_input_eb(lt_ac_stash *st, const ac_layer *l, const lt_tensor *t) {
  const lt_ac_config *c = &st->cfg;
  switch (c->mode) {
  case LT_AC_OFF: return 0;
  case LT_AC_FIXED: return c->eb;
  case LT_AC_RELATIVE: {
    float lo, hi;
    const float *x = lt_tensor_f32(t);
    /* On a device the range is found on a host copy; without one the tensor stays exact. */
    if (st->dops && !(x = stage_in(st, t->data, lt_tensor_numel(t), 0, NULL))) return 0;
    value_range(x, lt_tensor_numel(t), &lo, &hi);
    double range = (double)hi - (double)lo;
    return isfinite(range) && range > 0 ? clampd(c->rel * range, c->eb_min, c->eb_max) : 0;
  }
  case LT_AC_ADAPTIVE: return l->eb > 0 ? l->eb : c->initial_eb;
  }
  return 0;
}

/* ---- graph patterns -------------------------------------------------------------------------- */

static const lt_node *node_at(const lt_graph *g, int node) {
  return g && node >= 0 && node < g->n_nodes ? &g->nodes[node] : NULL;
}

static int is_weight_op(lt_op_type op) {
  return op == LT_OP_CONV2D || op == LT_OP_CONV_TRANSPOSE2D || op == LT_OP_LINEAR;
}

/* The producer node of value v when it is an activation, else -1. */
static int producer_of(const lt_graph *g, int v) {
  if (!g || v < 0 || v >= g->n_values) return -1;
  int p = g->values[v].producer;
  return p >= 0 && p < g->n_nodes ? p : -1;
}

/* γ of batch-norm node b, as a host float array of nchan, or NULL. */
static const float *bn_gamma(const lt_graph *g, int b, int64_t nchan, int beta) {
  const lt_node *nd = node_at(g, b);
  if (!nd || nd->op != LT_OP_BATCHNORM || nd->n_in < 3) return NULL;
  int v = nd->in[beta ? 2 : 1];
  if (v < 0 || v >= g->n_values) return NULL;
  const lt_tensor *t = g->values[v].data;
  if (!t || t->dtype != LT_F32 || t->device >= 0 || lt_tensor_numel(t) != nchan) return NULL;
  return lt_tensor_f32(t);
}

/* For conv/linear node k saving its input: the (ReLU, BN) nodes when that input is ReLU(BN(x)),
 * else 0. */
static int derived_source(const lt_graph *g, int k, int *relu, int *bn) {
  const lt_node *nk = node_at(g, k);
  if (!nk || !is_weight_op(nk->op) || nk->n_in < 1) return 0;
  int r = producer_of(g, nk->in[0]);
  const lt_node *nr = node_at(g, r);
  if (!nr || nr->op != LT_OP_RELU || nr->n_in < 1) return 0;
  int b = producer_of(g, nr->in[0]);
  const lt_node *nb = node_at(g, b);
  if (!nb || nb->op != LT_OP_BATCHNORM) return 0;
  *relu = r;
  *bn = b;
  return 1;
}

/* The tightest bound among the conv/linear layers that will rebuild their input from batch-norm
 * node b's entry (0: none will). */
static double derived_consumer_eb(lt_ac_stash *st, const lt_graph *g, int b) {
  double eb = 0;
  for (int k = 0; g && k < g->n_nodes; k++) {
    int r, bb;
    if (!derived_source(g, k, &r, &bb) || bb != b) continue;
    ac_layer dummy = {0};
    const ac_layer *l = k < st->n_layers ? &st->layers[k] : &dummy;
    if (st->cfg.mode == LT_AC_RELATIVE) continue; /* depends on data not seen yet */
    double e = weight_input_eb(st, l, NULL);
    if (e > 0 && (eb == 0 || e < eb)) eb = e;
  }
  return eb;
}

/* ---- the zstd pass ----------------------------------------------------------------------------
 * zstd over the Huffman payload pays where Huffman's one-bit floor wastes space (sparse inputs at
 * coarse bounds) and costs a quarter of the codec's time everywhere. Each node's streams try it;
 * when it saves under AC_ZSTD_MIN_GAIN of the payload the node codes without it for the next
 * AC_ZSTD_RECHECK steps, then tries again (the data and bounds drift). */
#define AC_ZSTD_MIN_GAIN 0.04
#define AC_ZSTD_RECHECK 25

/* Sets the codec's zstd level for a store by node l; returns whether the pass is tried. */
static int zstd_begin(lt_ac_stash *st, const ac_layer *l) {
  lt_ac_opts o = st->cfg.codec;
  const int tried = o.zstd_level > 0 && st->step >= l->zstd_from;
  if (!tried) o.zstd_level = 0;
  lt_ac_codec_set_opts(st->codec, &o);
  return tried;
}

/* After a LORENZO encode into st->tmp that tried zstd: how much it saved decides the next tries. */
static void zstd_end(lt_ac_stash *st, ac_layer *l, int tried) {
  if (!tried || st->tmp.len < AC_HEADER_BYTES) return;
  const uint64_t raw = ac_get_u64(st->tmp.data + 112), stored = ac_get_u64(st->tmp.data + 120);
  if (!raw || (double)stored > (1.0 - AC_ZSTD_MIN_GAIN) * (double)raw)
    l->zstd_from = st->step + AC_ZSTD_RECHECK;
}

/* The stream the encoder left in st->tmp as an entry's bytes: the buffer itself, cut to the
 * stream's length (LT_MEM_SAVED from then on, *bytes long). st->tmp is then empty, so that no
 * worst-case output buffer (the encoder reserves 2 bytes a symbol) stays held between stores:
 * about a quarter of the workspace a compressed ResNet-20 step held through its forward. The
 * next encode reserves a fresh one, whose untouched pages cost nothing. Falls back to a copy when
 * the cut fails. NULL when out of memory. */
static uint8_t *take_stream(lt_ac_stash *st, size_t *bytes, lt_err *err) {
  lt_ac_buf *b = &st->tmp;
  *bytes = b->len;
  uint8_t *p = lt_shrink(b->cat, b->data, b->cap, LT_MEM_SAVED, b->len);
  if (!p) {
    if (!(p = lt_alloc(LT_MEM_SAVED, b->len, err))) return NULL;
    memcpy(p, b->data, b->len);
    lt_free(b->cat, b->data, b->cap);
  }
  b->data = NULL;
  b->len = b->cap = 0;
  return p;
}

/* ---- batch-norm inputs ----------------------------------------------------------------------- */

/* Per-channel mean and 1/σ (σ = √(var + eps), var biased, as batch norm computes them) of the
 * (batch, nchan, hw) tensor x, into chan (mean, invstd, ·). Sums in float lanes, shifted by the
 * channel's first value, combined in double. 0, or -1 when a statistic is not finite. */
static int bn_stats(const float *x, int64_t batch, int64_t nchan, int64_t hw, double eps,
                    float *chan) {
  int bad = 0;
#pragma omp parallel for schedule(static) reduction(| : bad) if (batch * nchan * hw >= 65536)
  for (int64_t c = 0; c < nchan; c++) {
    const float shift = x[c * hw];
    double s1 = 0, s2 = 0;
    for (int64_t b = 0; b < batch; b++) {
      const float *p = x + (b * nchan + c) * hw;
      float a1[16] = {0}, a2[16] = {0};
      int64_t i = 0;
      for (; i + 16 <= hw; i += 16)
        for (int j = 0; j < 16; j++) {
          float d = p[i + j] - shift;
          a1[j] += d;
          a2[j] += d * d;
        }
      for (; i < hw; i++) {
        double d = (double)p[i] - shift;
        s1 += d;
        s2 += d * d;
      }
      for (int j = 0; j < 16; j++) {
        s1 += a1[j];
        s2 += a2[j];
      }
    }
    const double cnt = (double)(batch * hw), m = s1 / cnt;
    double var = s2 / cnt - m * m;
    if (var < 0) var = 0;
    const double mean = (double)shift + m, invstd = 1.0 / sqrt(var + eps);
    bad |= !isfinite(mean) || !isfinite(invstd);
    chan[3 * c] = (float)mean;
    chan[3 * c + 1] = (float)invstd;
    chan[3 * c + 2] = 0;
  }
  return bad ? -1 : 0;
}

/* The batch statistics the batch norm's forward just computed (its aux: mean and 1/σ, nchan
 * host floats each), into chan; 0, or -1 when they are not there or not finite. Reading them
 * saves a pass over x, and a conv input rebuilt from them uses the very σ its forward did. */
/* Mean and 1/σ (nchan host floats each) into chan; -1 when one is not finite or 1/σ <= 0. */
static int bn_stats_take(const float *mean, const float *invstd, int64_t nchan, float *chan) {
  for (int64_t c = 0; c < nchan; c++) {
    if (!isfinite(mean[c]) || !isfinite(invstd[c]) || !(invstd[c] > 0)) return -1;
    chan[3 * c] = mean[c];
    chan[3 * c + 1] = invstd[c];
    chan[3 * c + 2] = 0;
  }
  return 0;
}

static int bn_stats_of_forward(const lt_tensor *const *aux, int64_t nchan, float *chan) {
  if (!aux || !aux[0] || !aux[1]) return -1;
  for (int k = 0; k < 2; k++)
    if (aux[k]->dtype != LT_F32 || aux[k]->device >= 0 || lt_tensor_numel(aux[k]) != nchan)
      return -1;
  return bn_stats_take(lt_tensor_f32(aux[0]), lt_tensor_f32(aux[1]), nchan, chan);
}

/* 2·nchan floats of per-channel scratch (st->aff: offsets or scales, then the other), NULL
 * when out of memory. */
static float *aff_scratch(lt_ac_stash *st, int64_t nchan, lt_err *err) {
  if (nchan > st->affcap) {
    float *a = lt_alloc(LT_MEM_WORKSPACE, (size_t)nchan * 2 * sizeof *a, err);
    if (!a) return NULL;
    lt_free(LT_MEM_WORKSPACE, st->aff, (size_t)st->affcap * 2 * sizeof *st->aff);
    st->aff = a;
    st->affcap = nchan;
  }
  return st->aff;
}

/* γ (beta 0) or β of batch-norm node `node` as host floats: on a device the entry's copies of the
 * executor's (e->gb), on the host the graph's. NULL when unknown. */
static const float *entry_param(const lt_ac_stash *st, const ac_entry *e, int beta) {
  if (e->gb) return e->gb + (beta ? e->nchan : 0);
  return st->be ? NULL : bn_gamma(st->g, e->node, e->nchan, beta);
}

/* On a device: the forward's batch statistics (aux, device memory) into e->chan, and γ, β (the
 * node's inputs 1 and 2 as the executor holds them) into e->gb. Returns whether the statistics
 * are usable; γ and β stay NULL when they are not there. */
static int bn_fetch_device(lt_ac_stash *st, const lt_tensor *const *in,
                           const lt_tensor *const *aux, ac_entry *e, lt_err *err) {
  const int64_t nc = e->nchan;
  int ok = aux && aux[0] && aux[1];
  for (int k = 0; ok && k < 2; k++)
    ok = aux[k]->dtype == LT_F32 && aux[k]->device >= 0 && lt_tensor_numel(aux[k]) == nc;
  ok = ok && stage_in(st, aux[0]->data, nc, 0, err) && stage_in(st, aux[1]->data, nc, nc, err) &&
       !bn_stats_take(st->stage, st->stage + nc, nc, e->chan);
  int params = in && in[1] && in[2];
  for (int k = 1; params && k < 3; k++)
    params = in[k]->dtype == LT_F32 && in[k]->device >= 0 && lt_tensor_numel(in[k]) == nc;
  if (ok && params && (e->gb = lt_alloc(LT_MEM_SAVED, (size_t)nc * 2 * sizeof(float), err))) {
    if (st->be->vt->to_host(st->be, e->gb, in[1]->data, (size_t)nc * sizeof(float), err) ||
        st->be->vt->to_host(st->be, e->gb + nc, in[2]->data, (size_t)nc * sizeof(float), err)) {
      lt_free(LT_MEM_SAVED, e->gb, (size_t)nc * 2 * sizeof(float));
      e->gb = NULL;
    }
  }
  return ok;
}

/* Stores a batch-norm input as FORM_BN_EXACT or FORM_BN_CODEC into e (data and chan allocated
 * here), with the forward's batch statistics (aux) or, without them on the host, its own. Lossy:
 * channel c gets |x̂ − x̂'| <= min(bn_eb, eb_conv/|γ_c|) where a conv rebuilds ReLU(BN(x)) from
 * this entry, eb_conv its bound. On a device, lossy needs ndim >= 3 (the device encoder maps
 * whole tensors); 2-d inputs are kept exact there. */
static lt_status store_bn(lt_ac_stash *st, const lt_graph *g, int node, const lt_tensor *t,
                          const lt_tensor *const *in, const lt_tensor *const *aux, ac_entry *e,
                          double *eb_report, lt_err *err) {
  const lt_node *nd = node_at(g, node);
  const double eps = nd && nd->op == LT_OP_BATCHNORM && nd->a.eps > 0 ? nd->a.eps : 1e-5;
  const int dev = st->dops != NULL;
  e->batch = t->shape[0];
  e->nchan = t->ndim >= 2 ? t->shape[1] : 1;
  e->hw = e->n / (e->batch * e->nchan);
  e->chan = lt_alloc(LT_MEM_SAVED, (size_t)e->nchan * 3 * sizeof(float), err);
  if (!e->chan) {
    e->nchan = 0;
    return err ? err->status : LT_ERR_NOMEM;
  }
  const float *x = lt_tensor_f32(t);
  const int stats_ok = dev ? bn_fetch_device(st, in, aux, e, err)
                           : !bn_stats_of_forward(aux, e->nchan, e->chan) ||
                                 !bn_stats(x, e->batch, e->nchan, e->hw, eps, e->chan);
  const float *gamma = entry_param(st, e, 0);
  const double cons = stats_ok ? derived_consumer_eb(st, g, node) : 0;
  int lossy = stats_ok && st->cfg.bn_mode == LT_AC_BN_LOSSY && st->cfg.mode != LT_AC_OFF &&
              e->n >= AC_MIN_ELEMS && (!dev || t->ndim >= 3);
  double ymax = 0, ysum = 0, xsum = 0;
  for (int64_t c = 0; lossy && c < e->nchan; c++) {
    double ebn = st->cfg.bn_eb;
    const double gm = gamma ? fabs((double)gamma[c]) : 0;
    if (cons > 0 && gm > 0 && cons / gm < ebn) ebn = cons / gm;
    ebn *= 1.0 - 1e-5; /* room for the float rounding of the affine maps */
    const double mean = e->chan[3 * c], sigma = 1.0 / (double)e->chan[3 * c + 1];
    const double step = 2.0 * ebn * sigma;
    /* Values far from 0 relative to σ would lose the bound to float rounding: keep exact. */
    if (!(step > 0) || !isfinite(step) || (fabs(mean) + 64 * sigma) * 0x1p-20 > 0.01 * step) {
      lossy = 0;
      break;
    }
    e->chan[3 * c + 2] = (float)step;
    const double yb = gm * ebn;
    ymax = yb > ymax ? yb : ymax;
    ysum += yb * yb;
    xsum += ebn * ebn;
  }
  e->y_bound = gamma ? ymax : INFINITY;
  e->y_rms = gamma && e->nchan ? sqrt(ysum / (double)e->nchan) : INFINITY;
  *eb_report = 0;
  if (lossy) {
    lt_status rc;
    float *off = aff_scratch(st, e->nchan, err);
    if (!off) return err ? err->status : LT_ERR_NOMEM;
    float *scale = off + e->nchan;
    for (int64_t c = 0; c < e->nchan; c++) {
      off[c] = e->chan[3 * c];
      scale[c] = 1.0f / e->chan[3 * c + 2];
    }
    if (dev) {
      uint8_t *data = NULL;
      size_t bytes = 0;
      TRY(st->dops->encode(st->dctx, x, t->ndim, t->shape, 0.5, off, scale, &data, &bytes, err));
      if (bytes < (size_t)e->dense) {
        e->form = FORM_BN_CODEC;
        e->data = data;
        e->bytes = bytes;
        *eb_report = sqrt(xsum / (double)e->nchan);
        return LT_OK;
      }
      mem_free(st, data, bytes, LT_MEM_SAVED);
    } else {
      ac_layer *lz = &st->layers[node];
      const int ztry = zstd_begin(st, lz);
      if (t->ndim >= 3) { /* the codec maps each row as it goes: no z copy of the tensor */
        rc = lt_ac_encode_affine(st->codec, x, t->ndim, t->shape, 0.5, off, scale, &st->tmp, err);
      } else {
        if (e->n > st->zcap) {
          float *z = lt_alloc(LT_MEM_WORKSPACE, (size_t)e->n * sizeof *z, err);
          if (!z) return err ? err->status : LT_ERR_NOMEM;
          lt_free(LT_MEM_WORKSPACE, st->zbuf, (size_t)st->zcap * sizeof *st->zbuf);
          st->zbuf = z;
          st->zcap = e->n;
        }
        for (int64_t b = 0; b < e->batch; b++)
          for (int64_t c = 0; c < e->nchan; c++) {
            const float *p = x + (b * e->nchan + c) * e->hw;
            float *z = st->zbuf + (b * e->nchan + c) * e->hw;
            for (int64_t i = 0; i < e->hw; i++) z[i] = (p[i] - off[c]) * scale[c];
          }
        rc = lt_ac_encode(st->codec, LT_AC_KIND_LORENZO, st->zbuf, t->ndim, t->shape, 0.5,
                          &st->tmp, err);
      }
      if (rc) return rc;
      zstd_end(st, lz, ztry);
      if (st->tmp.len < (size_t)e->dense) {
        e->form = FORM_BN_CODEC;
        if (!(e->data = take_stream(st, &e->bytes, err))) return err ? err->status : LT_ERR_NOMEM;
        *eb_report = sqrt(xsum / (double)e->nchan); /* RMS normalised bound */
        return LT_OK;
      }
    }
  }
  /* Exact (with statistics when they are usable, so that a conv can rebuild from it). */
  if (!stats_ok) {
    lt_free(LT_MEM_SAVED, e->chan, (size_t)e->nchan * 3 * sizeof(float));
    lt_free(LT_MEM_SAVED, e->gb, (size_t)e->nchan * 2 * sizeof(float));
    e->chan = e->gb = NULL;
    e->nchan = 0;
  } else {
    for (int64_t c = 0; c < e->nchan; c++) e->chan[3 * c + 2] = 0;
  }
  e->y_bound = stats_ok && gamma ? 0 : INFINITY;
  e->y_rms = e->y_bound;
  e->form = stats_ok ? FORM_BN_EXACT : FORM_EXACT;
  e->bytes = (size_t)e->dense ? (size_t)e->dense : 1;
  if (!(e->data = mem_alloc(st, e->bytes, LT_MEM_SAVED, err))) return err ? err->status : LT_ERR_NOMEM;
  return mem_copy(st, e->data, t->data, (size_t)e->dense, err);
}

/* y[i] = a·z[i] + b over one plane (z may be y), then, with mask (the plane's bits start at bit
 * `bit`), 0 where the mask bit is clear and max(0, ·) where it is set. */
__attribute__((target("avx512f"))) static int64_t plane_map_avx512(float *y, const float *z,
                                                                  int64_t hw, float a, float b,
                                                                  const uint8_t *mask) {
  const __m512 va = _mm512_set1_ps(a), vb = _mm512_set1_ps(b), zero = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= hw; i += 16) {
    __m512 v = _mm512_fmadd_ps(_mm512_loadu_ps(z + i), va, vb);
    if (mask) {
      uint16_t m;
      memcpy(&m, mask + i / 8, 2);
      v = _mm512_maskz_max_ps(m, v, zero);
    }
    _mm512_storeu_ps(y + i, v);
  }
  return i;
}

static void plane_map(float *y, const float *z, int64_t hw, float a, float b,
                      const uint8_t *mask, int64_t bit, int avx512) {
  int64_t i = 0;
  if (avx512 && (!mask || bit % 8 == 0))
    i = plane_map_avx512(y, z, hw, a, b, mask ? mask + bit / 8 : NULL);
  for (; i < hw; i++) {
    float v = fmaf(z[i], a, b); /* as the vector path and the device (one rounding) */
    if (mask) {
      const int64_t k = bit + i;
      v = (mask[k >> 3] >> (k & 7)) & 1 && v > 0 ? v : 0;
    }
    y[i] = v;
  }
}

static int have_avx512(void) {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f");
}

void ac_chan_map(float *y, const float *z, int64_t batch, int64_t nchan, int64_t hw,
                 const float *a, const float *b, const uint8_t *mask) {
  const int avx512 = have_avx512();
  const int64_t planes = batch * nchan;
#pragma omp parallel for schedule(static) if (planes * hw >= 65536)
  for (int64_t pl = 0; pl < planes; pl++) {
    const int64_t c = pl % nchan;
    plane_map(y + pl * hw, z + pl * hw, hw, a[c], b[c], mask, pl * hw, avx512);
  }
}

/* y = a_c·z + b_c per channel, then the mask, on the stash's side of memory. */
static lt_status chan_map(lt_ac_stash *st, float *y, const float *z, const ac_entry *bn,
                          const float *a, const float *b, const uint8_t *mask, lt_err *err) {
  if (st->dops)
    return st->dops->chan_map(st->dctx, y, z, bn->batch, bn->nchan, bn->hw, a, b, mask, err);
  ac_chan_map(y, z, bn->batch, bn->nchan, bn->hw, a, b, mask);
  return LT_OK;
}

static lt_status decode(lt_ac_stash *st, const uint8_t *data, size_t bytes, float *y, int64_t n,
                        lt_err *err) {
  return st->dops ? st->dops->decode(st->dctx, data, bytes, y, n, err)
                  : lt_ac_decode(st->codec, data, bytes, y, n, err);
}

/* Restores a batch-norm entry (x' = mean_c + z'·step_c) into y. */
static lt_status load_bn(lt_ac_stash *st, const ac_entry *e, float *y, lt_err *err) {
  if (e->form != FORM_BN_CODEC) return mem_copy(st, y, e->data, (size_t)e->dense, err);
  const float *z = y;
  if (st->zdec_of == e) { /* decoded already for the conv input rebuilt from it */
    z = st->zdec;
    st->zdec_of = NULL;
  } else {
    TRY(decode(st, e->data, e->bytes, y, e->n, err));
  }
  float *a = aff_scratch(st, e->nchan, err);
  if (!a) return err ? err->status : LT_ERR_NOMEM;
  float *b = a + e->nchan;
  for (int64_t c = 0; c < e->nchan; c++) {
    a[c] = e->chan[3 * c + 2];
    b[c] = e->chan[3 * c];
  }
  return chan_map(st, y, z, e, a, b, NULL, err);
}

/* Rebuilds a conv input ReLU(γ·x̂' + β) from its BN entry and the ReLU's mask into y, in one pass
 * after the decode: y = A_c·z' + β_c with A_c = γ_c·step_c/σ_c from the stream's z', or
 * y = g_c·x + (β_c − mean_c·g_c), g_c = γ_c/σ_c, from an exact copy; then the mask. */
static lt_status load_derived(lt_ac_stash *st, const ac_entry *e, float *y, lt_err *err) {
  const ac_entry *bn = e->bn;
  const float *gamma = entry_param(st, bn, 0), *beta = entry_param(st, bn, 1);
  if (!gamma || !beta)
    return lt_errorf(err, LT_ERR_INTERNAL, "stash: batch-norm node %d lost its parameters",
                     bn->node);
  const int coded = bn->form == FORM_BN_CODEC;
  /* A coded BN entry decodes into zdec, kept for the batch norm's own load (it has another
   * reference: this entry's); without room for it, into y as before. */
  const float *z = coded ? y : (const float *)bn->data;
  if (coded) {
    if (st->zdec_of != bn) {
      st->zdec_of = NULL;
      float *keep = bn->refs > 1 ? mem_scratch(st, &st->zdec, &st->zdec_cap, bn->n, NULL) : NULL;
      float *dst = keep ? keep : y;
      TRY(decode(st, bn->data, bn->bytes, dst, bn->n, err));
      if (dst == st->zdec) st->zdec_of = bn;
    }
    if (st->zdec_of == bn) z = st->zdec;
  }
  float *a = aff_scratch(st, bn->nchan, err);
  if (!a) return err ? err->status : LT_ERR_NOMEM;
  float *b = a + bn->nchan;
  for (int64_t c = 0; c < bn->nchan; c++) {
    const float g = gamma[c] * bn->chan[3 * c + 1];
    a[c] = coded ? g * bn->chan[3 * c + 2] : g;
    b[c] = coded ? beta[c] : beta[c] - bn->chan[3 * c] * g;
  }
  return chan_map(st, y, z, bn, a, b, e->mask->data, err);
}

/* ---- policy callbacks ------------------------------------------------------------------------ */

static int st_keeps_buffer(void *user, const lt_graph *g, int node, int slot, lt_save_kind kind) {
  return 0; /* store() always makes its own copy */
}

/* Restores a 1-bit ReLU mask (lt_cpu_relu_mask_pack's layout, LSB first) as 1.0/0.0: the sign
 * pattern that ReLU backward reads. AVX-512 expands 16 bits per store; scalar for the rest. */
__attribute__((target("avx512f"))) static int64_t unpack_mask1_avx512(const uint8_t *mask,
                                                                     int64_t n, float *y) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    uint16_t m;
    memcpy(&m, mask + i / 8, 2);
    _mm512_storeu_ps(y + i, _mm512_maskz_mov_ps(m, _mm512_set1_ps(1.0f)));
  }
  return i;
}

void ac_mask1_unpack(const uint8_t *mask, int64_t n, float *y) {
  const int avx512 = have_avx512();
  const int64_t nb = (n + 4095) / 4096;
#pragma omp parallel for schedule(static) if (n >= 65536)
  for (int64_t b = 0; b < nb; b++) {
    const int64_t i0 = b * 4096, i1 = i0 + 4096 < n ? i0 + 4096 : n;
    int64_t i = i0 + (avx512 ? unpack_mask1_avx512(mask + i0 / 8, i1 - i0, y + i0) : 0);
    for (; i < i1; i++) y[i] = (mask[i >> 3] >> (i & 7)) & 1 ? 1.0f : 0.0f;
  }
}

/* Packs y > 0 into a 1-bit mask (lt_cpu_relu_mask_pack's layout, LSB first) and returns the
 * number of set bits: the ReLU output's non-zeros, which is also the zero count the controller
 * needs for a conv that reads this output. One pass, threads over blocks of 4096 elements. */
__attribute__((target("avx512f"))) static int64_t pack_mask1_avx512(const float *y, int64_t n,
                                                                   uint8_t *mask) {
  const __m512 zero = _mm512_setzero_ps();
  int64_t i = 0, nnz = 0;
  for (; i + 16 <= n; i += 16) {
    const __mmask16 m = _mm512_cmp_ps_mask(_mm512_loadu_ps(y + i), zero, _CMP_GT_OQ);
    memcpy(mask + i / 8, &m, 2);
    nnz += __builtin_popcount(m);
  }
  return nnz;
}

int64_t ac_mask1_pack(const float *y, int64_t n, uint8_t *mask) {
  const int avx512 = have_avx512();
  const int64_t nb = (n + 4095) / 4096;
  int64_t nnz = 0;
#pragma omp parallel for reduction(+ : nnz) schedule(static) if (n >= 65536)
  for (int64_t b = 0; b < nb; b++) {
    const int64_t i0 = b * 4096, i1 = i0 + 4096 < n ? i0 + 4096 : n;
    int64_t i = i0, c = 0;
    if (avx512) {
      c = pack_mask1_avx512(y + i0, i1 - i0, mask + i0 / 8);
      i = i0 + ((i1 - i0) & ~(int64_t)15);
    }
    for (; i < i1; i += 8) { /* i is a multiple of 8 here, so each byte is built whole */
      uint8_t v = 0;
      for (int64_t j = 0; j < 8 && i + j < i1; j++) v |= (uint8_t)((y[i + j] > 0.0f) << j);
      mask[i / 8] = v;
      c += __builtin_popcount(v);
    }
    nnz += c;
  }
  return nnz;
}

/* Exact zeros of x (the R of the controller), vectorised, threads over blocks. */
__attribute__((target("avx512f"))) static int64_t count_zeros_avx512(const float *x, int64_t n) {
  const __m512 zero = _mm512_setzero_ps();
  int64_t i = 0, z = 0;
  for (; i + 16 <= n; i += 16)
    z += __builtin_popcount(_mm512_cmp_ps_mask(_mm512_loadu_ps(x + i), zero, _CMP_EQ_OQ));
  for (; i < n; i++) z += x[i] == 0.0f;
  return z;
}

int64_t ac_count_zeros(const float *x, int64_t n) {
  const int avx512 = have_avx512();
  const int64_t nb = (n + 4095) / 4096;
  int64_t zeros = 0;
#pragma omp parallel for reduction(+ : zeros) schedule(static) if (n >= 65536)
  for (int64_t b = 0; b < nb; b++) {
    const int64_t i0 = b * 4096, i1 = i0 + 4096 < n ? i0 + 4096 : n;
    if (avx512) {
      zeros += count_zeros_avx512(x + i0, i1 - i0);
    } else {
      int64_t z = 0;
      for (int64_t i = i0; i < i1; i++) z += x[i] == 0.0f;
      zeros += z;
    }
  }
  return zeros;
}

/* ---- ReLU outputs packed along their mask (FORM_MASKED) -------------------------------------- */

#define AC_MBLOCK 4096 /* mask elements per parallel block (a multiple of 64) */
#define AC_MROW 1024   /* packed non-zeros per codec row: streams are (rows, 1, AC_MROW) */

/* The AC_MBLOCK-element blocks a mask of n bits is counted, packed and expanded in. */
static int64_t mask_blocks(int64_t n) { return (n + AC_MBLOCK - 1) / AC_MBLOCK; }

/* offs[b] = set bits of mask before block b, offs[mask_blocks(n)] = all of them; bits past n are
 * not counted. */
static void mask_offsets(const uint8_t *mask, int64_t n, int64_t *offs) {
  const int64_t nb = mask_blocks(n);
#pragma omp parallel for schedule(static) if (n >= 65536)
  for (int64_t b = 0; b < nb; b++) {
    const int64_t i0 = b * AC_MBLOCK, i1 = i0 + AC_MBLOCK < n ? i0 + AC_MBLOCK : n;
    int64_t c = 0, i = i0;
    for (; i + 64 <= i1; i += 64) {
      uint64_t v;
      memcpy(&v, mask + i / 8, 8);
      c += __builtin_popcountll(v);
    }
    for (; i < i1; i++) c += (mask[i >> 3] >> (i & 7)) & 1;
    offs[b + 1] = c;
  }
  offs[0] = 0;
  for (int64_t b = 0; b < nb; b++) offs[b + 1] += offs[b];
}

/* One block's elements with a set bit, in order, to *o (advanced); *nz records an element that
 * is not zero where its bit is clear. A register compress then a full store writes up to 15
 * floats past the packed ones, which later groups overwrite: it is used only while 16 floats
 * fit before end (the block's output end), masked stores after, so nothing lands in another
 * block's output. Returns the elements done (a multiple of 16). */
__attribute__((target("avx512f"))) static int64_t pack_block_avx512(const float *x,
                                                                  const uint8_t *mask, int64_t n,
                                                                  float **o, const float *end,
                                                                  int *nz) {
  const __m512 zero = _mm512_setzero_ps();
  float *p = *o;
  __mmask16 bad = 0;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __mmask16 m;
    memcpy(&m, mask + i / 8, 2);
    const __m512 v = _mm512_loadu_ps(x + i);
    bad |= _mm512_mask_cmp_ps_mask((__mmask16)~m, v, zero, _CMP_NEQ_UQ);
    if (p + 16 <= end) _mm512_storeu_ps(p, _mm512_maskz_compress_ps(m, v));
    else _mm512_mask_compressstoreu_ps(p, m, v);
    p += __builtin_popcount(m);
  }
  *o = p;
  *nz |= bad != 0;
  return i;
}

/* x's elements with a set mask bit, in order, into z (offs from mask_offsets). 0, or -1 when x
 * is not exactly zero (or is NaN) somewhere its bit is clear: the mask is not this tensor's. */
static int mask_pack_values(const float *x, const uint8_t *mask, int64_t n, const int64_t *offs,
                            float *z) {
  const int avx512 = have_avx512();
  const int64_t nb = mask_blocks(n);
  int nz = 0;
#pragma omp parallel for schedule(static) reduction(| : nz) if (n >= 65536)
  for (int64_t b = 0; b < nb; b++) {
    const int64_t i0 = b * AC_MBLOCK, i1 = i0 + AC_MBLOCK < n ? i0 + AC_MBLOCK : n;
    float *o = z + offs[b];
    int64_t i = i0;
    if (avx512) i += pack_block_avx512(x + i0, mask + i0 / 8, i1 - i0, &o, z + offs[b + 1], &nz);
    for (; i < i1; i++) {
      if ((mask[i >> 3] >> (i & 7)) & 1) *o++ = x[i];
      else nz |= x[i] != 0.0f;
    }
  }
  return nz ? -1 : 0;
}

/* y[i] = the next packed value where mask bit i is set, else 0. z must be readable 16 floats
 * past its last packed value (the vector loads read whole groups). */
__attribute__((target("avx512f"))) static int64_t unpack_block_avx512(const uint8_t *mask,
                                                                    int64_t n, float *y,
                                                                    const float **s) {
  const float *p = *s;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __mmask16 m;
    memcpy(&m, mask + i / 8, 2);
    _mm512_storeu_ps(y + i, _mm512_maskz_expand_ps(m, _mm512_loadu_ps(p)));
    p += __builtin_popcount(m);
  }
  *s = p;
  return i;
}

static void mask_unpack_values(const float *z, const uint8_t *mask, int64_t n,
                               const int64_t *offs, float *y) {
  const int avx512 = have_avx512();
  const int64_t nb = mask_blocks(n);
#pragma omp parallel for schedule(static) if (n >= 65536)
  for (int64_t b = 0; b < nb; b++) {
    const int64_t i0 = b * AC_MBLOCK, i1 = i0 + AC_MBLOCK < n ? i0 + AC_MBLOCK : n;
    const float *s = z + offs[b];
    int64_t i = i0 + (avx512 ? unpack_block_avx512(mask + i0 / 8, i1 - i0, y + i0, &s) : 0);
    for (; i < i1; i++) y[i] = (mask[i >> 3] >> (i & 7)) & 1 ? *s++ : 0.0f;
  }
}

/* Host scratch for a packed tensor of n elements: zdec for rows × AC_MROW floats plus 16 (the
 * unpack's vector reads; a z' it held is dropped), moffs for the block offsets. Returns the
 * packed buffer, NULL on failure. */
static float *masked_scratch(lt_ac_stash *st, int64_t n, int64_t rows, lt_err *err) {
  const int64_t nb = mask_blocks(n) + 1;
  st->zdec_of = NULL;
  float *z = mem_scratch(st, &st->zdec, &st->zdec_cap, rows * AC_MROW + 16, err);
  if (!z) return NULL;
  if (nb > st->moffs_cap) {
    int64_t *p = lt_alloc(LT_MEM_WORKSPACE, (size_t)nb * sizeof *p, err);
    if (!p) return NULL;
    lt_free(LT_MEM_WORKSPACE, st->moffs, (size_t)st->moffs_cap * sizeof *st->moffs);
    st->moffs = p;
    st->moffs_cap = nb;
  }
  return z;
}

/* Stores the ReLU output t (a conv's input, host memory) as its non-zeros at bound eb, given the
 * ReLU's mask entry m: sets *done when e holds it. Nothing is stored (and *done stays 0) when t
 * has a non-zero where m's bit is clear, or when the stream would not be smaller than the plain
 * codec's worst case, the dense tensor. */
static lt_status store_masked(lt_ac_stash *st, ac_layer *l, const lt_tensor *t, double eb,
                              ac_entry *m, ac_entry *e, int *done, lt_err *err) {
  *done = 0;
  const int64_t rows = (m->nnz + AC_MROW - 1) / AC_MROW;
  float *z = masked_scratch(st, e->n, rows, err);
  if (!z) return err ? err->status : LT_ERR_NOMEM;
  mask_offsets(m->data, e->n, st->moffs);
  if (st->moffs[mask_blocks(e->n)] != m->nnz ||
      mask_pack_values(lt_tensor_f32(t), m->data, e->n, st->moffs, z))
    return LT_OK;
  memset(z + m->nnz, 0, (size_t)(rows * AC_MROW - m->nnz) * sizeof *z);
  const int ztry = zstd_begin(st, l);
  TRY(lt_ac_encode(st->codec, LT_AC_KIND_LORENZO, z, 3, (int64_t[]){rows, 1, AC_MROW}, eb,
                   &st->tmp, err));
  zstd_end(st, l, ztry);
  if (st->tmp.len >= (size_t)e->dense) return LT_OK;
  if (!(e->data = take_stream(st, &e->bytes, err))) return err ? err->status : LT_ERR_NOMEM;
  e->form = FORM_MASKED;
  e->mask = m;
  m->refs++;
  *done = 1;
  return LT_OK;
}

/* Restores a FORM_MASKED entry into y: the stream's values expanded along the mask. */
static lt_status load_masked(lt_ac_stash *st, const ac_entry *e, float *y, lt_err *err) {
  const ac_entry *m = e->mask;
  const int64_t rows = (m->nnz + AC_MROW - 1) / AC_MROW;
  float *z = masked_scratch(st, e->n, rows, err);
  if (!z) return err ? err->status : LT_ERR_NOMEM;
  TRY(lt_ac_decode(st->codec, e->data, e->bytes, z, rows * AC_MROW, err));
  mask_offsets(m->data, e->n, st->moffs);
  mask_unpack_values(z, m->data, e->n, st->moffs, y);
  return LT_OK;
}

/* Frees e and what it owns (not its sources). */
static void entry_free(lt_ac_stash *st, ac_entry *e) {
  mem_free(st, e->data, e->bytes, LT_MEM_SAVED);
  lt_free(LT_MEM_SAVED, e->chan, (size_t)e->nchan * 3 * sizeof(float));
  lt_free(LT_MEM_SAVED, e->gb, (size_t)e->nchan * 2 * sizeof(float));
  lt_free(LT_MEM_SAVED, e, sizeof *e);
}

/* Frees e once nothing refers to it (its own handle and derived entries), with its sources. */
static void entry_unref(lt_ac_stash *st, ac_entry *e) {
  if (!e || --e->refs > 0) return;
  if (st->zdec_of == e) st->zdec_of = NULL;
  st->cur_dense -= e->dense;
  st->cur_held -= (int64_t)entry_held(e);
  if (e->node >= 0 && e->node < st->n_layers && st->layers[e->node].cur == e)
    st->layers[e->node].cur = NULL;
  ac_entry *bn = e->bn, *mask = e->mask;
  entry_free(st, e);
  entry_unref(st, bn);
  entry_unref(st, mask);
}

/* A conv/linear input that can be rebuilt from this step's BN and mask entries within eb:
 * fills e as FORM_DERIVED and returns 1. */
static int try_derive(lt_ac_stash *st, const lt_graph *g, int node, int slot, double eb,
                      ac_entry *e, double *eb_used) {
  int r, b;
  if (slot != 0 || !(eb > 0) || !derived_source(g, node, &r, &b)) return 0;
  if (r >= st->n_layers || b >= st->n_layers) return 0;
  ac_entry *bn = st->layers[b].cur, *mask = st->layers[r].cur;
  if (!bn || !mask || (bn->form != FORM_BN_EXACT && bn->form != FORM_BN_CODEC) ||
      mask->form != FORM_MASK1 || bn->n != e->n || mask->n != e->n ||
      !(bn->y_bound <= eb * (1 + 1e-9)) || !entry_param(st, bn, 1))
    return 0;
  e->form = FORM_DERIVED;
  e->bn = bn;
  e->mask = mask;
  bn->refs++;
  mask->refs++;
  e->bytes = 0;
  *eb_used = bn->y_rms;
  return 1;
}

/* The current mask entry of the ReLU that produces conv/linear node k's input, or NULL. */
static const ac_entry *relu_mask_of_input(const lt_ac_stash *st, const lt_graph *g, int k,
                                          int64_t n) {
  const lt_node *nk = node_at(g, k);
  if (!nk || nk->n_in < 1) return NULL;
  const int r = producer_of(g, nk->in[0]);
  const lt_node *nr = node_at(g, r);
  if (!nr || nr->op != LT_OP_RELU || r >= st->n_layers) return NULL;
  const ac_entry *m = st->layers[r].cur;
  return m && m->form == FORM_MASK1 && m->n == n ? m : NULL;
}

/* Stores t as the codec's stream at bound eb when eb > 0 (and the stream is smaller), a 1-bit
 * mask (ReLU outputs), 2-bit argmax (pool windows of 2×2) or an exact copy, into e. */
static lt_status store_plain(lt_ac_stash *st, ac_layer *l, lt_save_kind kind, const lt_tensor *t,
                             double eb, ac_entry *e, double *eb_used, lt_err *err) {
  const int f32 = t->dtype == LT_F32, on = st->cfg.mode != LT_AC_OFF, dev = st->dops != NULL;
  if (eb > 0 && e->n >= AC_MIN_ELEMS) {
    uint8_t *data = NULL;
    size_t bytes = 0;
    if (dev) {
      TRY(st->dops->encode(st->dctx, lt_tensor_f32(t), t->ndim, t->shape, eb, NULL, NULL, &data,
                           &bytes, err));
    } else {
      const int ztry = zstd_begin(st, l);
      TRY(lt_ac_encode(st->codec, LT_AC_KIND_LORENZO, lt_tensor_f32(t), t->ndim, t->shape, eb,
                       &st->tmp, err));
      zstd_end(st, l, ztry);
      bytes = st->tmp.len;
    }
    if (bytes < (size_t)e->dense) {
      if (!dev && !(data = take_stream(st, &bytes, err))) return err ? err->status : LT_ERR_NOMEM;
      e->form = FORM_CODEC;
      e->data = data;
      e->bytes = bytes;
      *eb_used = eb;
      return LT_OK;
    }
    /* incompressible (noise at a tiny bound): the exact copy is smaller */
    if (dev) mem_free(st, data, bytes, LT_MEM_SAVED);
  }
  size_t bytes = (size_t)e->dense;
  if (on && f32 && kind == LT_SAVE_RELU_OUTPUT) {
    e->form = FORM_MASK1;
    bytes = (size_t)(e->n + 7) / 8;
  } else if (on && t->dtype == LT_U8 && kind == LT_SAVE_POOL_ARGMAX) {
    e->form = FORM_PACK2;
    bytes = (size_t)(e->n + 3) / 4;
  }
  e->bytes = bytes ? bytes : 1;
  if (!(e->data = mem_alloc(st, e->bytes, LT_MEM_SAVED, err))) return err ? err->status : LT_ERR_NOMEM;
  if (e->form == FORM_MASK1) {
    if (dev) return st->dops->mask1_pack(st->dctx, lt_tensor_f32(t), e->n, e->data, &e->nnz, err);
    e->nnz = ac_mask1_pack(lt_tensor_f32(t), e->n, e->data);
    return LT_OK;
  }
  if (e->form == FORM_PACK2) {
    int fits = 1;
    if (dev) {
      TRY(st->dops->pack2(st->dctx, t->data, e->n, e->data, &fits, err));
    } else {
      for (int64_t i = 0; i < e->n && fits; i++) fits = ((const uint8_t *)t->data)[i] <= 3;
      if (fits) lt_cpu_argmax_pack2((size_t)e->n, t->data, e->data);
    }
    if (fits) return LT_OK;
    /* Windows larger than 2×2: keep the indices exact. */
    mem_free(st, e->data, e->bytes, LT_MEM_SAVED);
    e->form = FORM_EXACT;
    e->bytes = (size_t)e->dense ? (size_t)e->dense : 1;
    if (!(e->data = mem_alloc(st, e->bytes, LT_MEM_SAVED, err))) return err ? err->status : LT_ERR_NOMEM;
  }
  return mem_copy(st, e->data, t->data, (size_t)e->dense, err);
}

static lt_status st_store(void *user, const lt_graph *g, int node, int slot, lt_save_kind kind,
                          const lt_tensor *t, const lt_tensor *const *in,
                          const lt_tensor *const *aux, void **handle, lt_err *err) {
  lt_ac_stash *st = user;
  *handle = NULL;
  if ((t->device >= 0) != (st->dops != NULL))
    return lt_errorf(err, LT_ERR_INTERNAL,
                     "stash: node %d offered a tensor in %s memory to a stash bound to %s", node,
                     t->device >= 0 ? "device" : "host", st->be ? st->be->vt->name : "the host");
  ac_layer *l = layer_at(st, node, err);
  if (!l) return err ? err->status : LT_ERR_NOMEM;
  st->g = g;
  ac_entry *e = lt_calloc(LT_MEM_SAVED, sizeof *e, err);
  if (!e) return err ? err->status : LT_ERR_NOMEM;
  e->node = node;
  e->refs = 1;
  e->dtype = t->dtype;
  e->n = lt_tensor_numel(t);
  e->dense = (int64_t)lt_tensor_nbytes(t);
  const int f32 = t->dtype == LT_F32, on = st->cfg.mode != LT_AC_OFF;
  double eb = 0, eb_used = 0;
  if (f32 && kind == LT_SAVE_WEIGHT_INPUT) eb = weight_input_eb(st, l, t);
  lt_status rc = LT_OK;
  e->form = FORM_EXACT;
  if (on && f32 && kind == LT_SAVE_BN_INPUT && e->n > 0 && t->ndim >= 1) {
    if ((rc = store_bn(st, g, node, t, in, aux, e, &eb_used, err))) goto fail;
  } else if (try_derive(st, g, node, slot, eb, e, &eb_used)) {
    /* nothing of its own */
  } else {
    int done = 0;
    ac_entry *m = kind == LT_SAVE_WEIGHT_INPUT && f32 && eb > 0 && !st->dops
                      ? (ac_entry *)relu_mask_of_input(st, g, node, e->n)
                      : NULL;
    if (m && m->nnz >= AC_MIN_ELEMS && (rc = store_masked(st, l, t, eb, m, e, &done, err)))
      goto fail;
    if (done) eb_used = eb;
    else if ((rc = store_plain(st, l, kind, t, eb, e, &eb_used, err))) goto fail;
  }

  l->eb_used = eb_used;
  if (kind == LT_SAVE_WEIGHT_INPUT && f32) {
    /* The zeros of a ReLU's output are the clear bits of the mask just stored for it (the
     * entry's own reference when it holds one). */
    const ac_entry *m = e->form == FORM_DERIVED || e->form == FORM_MASKED
                            ? e->mask
                            : relu_mask_of_input(st, g, node, e->n);
    const float *x = lt_tensor_f32(t);
    int64_t zeros = m ? e->n - m->nnz : 0;
    if (!m && st->dops) {
      if ((rc = st->dops->count_zeros(st->dctx, x, e->n, &zeros, err))) goto fail;
    } else if (!m) {
      zeros = ac_count_zeros(x, e->n);
    }
    l->zero_frac = e->n ? (double)zeros / (double)e->n : 0;
    /* A sampled step keeps the original too (on the host), for observe() to measure the real dW
     * error. */
    if (eb_used > 0 && st->cfg.sample_every > 0 && st->step % st->cfg.sample_every == 0) {
      lt_free(LT_MEM_WORKSPACE, l->exact, (size_t)l->exact_n * sizeof *l->exact);
      l->exact = lt_alloc(LT_MEM_WORKSPACE, (size_t)e->n * sizeof *l->exact, NULL);
      l->exact_n = l->exact ? e->n : 0;
      if (l->exact && st->be &&
          st->be->vt->to_host(st->be, l->exact, x, (size_t)e->n * sizeof *x, NULL)) {
        lt_free(LT_MEM_WORKSPACE, l->exact, (size_t)l->exact_n * sizeof *l->exact);
        l->exact = NULL; /* no sample this step */
        l->exact_n = 0;
      } else if (l->exact && !st->be) {
        memcpy(l->exact, x, (size_t)e->n * sizeof *x);
      }
      l->exact_eb = eb_used;
    }
  }
  l->seen = 1;
  l->kind = kind;
  if (slot == 0) l->cur = e;
  const int64_t held = (int64_t)entry_held(e);
  l->step_dense += e->dense;
  l->step_held += held;
  st->step_dense += e->dense;
  st->step_held += held;
  st->cur_dense += e->dense;
  st->cur_held += held;
  if (st->cur_dense > st->peak_dense) st->peak_dense = st->cur_dense;
  if (st->cur_held > st->peak_held) st->peak_held = st->cur_held;
  *handle = e;
  return LT_OK;
fail:
  lt_err_prefix(err, "stash: node %d (%s)", node,
                g && node < g->n_nodes && g->nodes[node].name ? g->nodes[node].name : "?");
  if (e->form == FORM_DERIVED || e->form == FORM_MASKED) {
    entry_unref(st, e->bn);
    entry_unref(st, e->mask);
  }
  entry_free(st, e);
  return rc;
}

static lt_status st_load(void *user, void *handle, lt_tensor *dst, lt_err *err) {
  lt_ac_stash *st = user;
  ac_entry *e = handle;
  if (!e) return lt_errorf(err, LT_ERR_INTERNAL, "stash: load of an empty handle");
  if (dst->dtype != e->dtype || lt_tensor_numel(dst) != e->n)
    return lt_errorf(err, LT_ERR_INTERNAL,
                     "stash: node %d restored into a %s tensor of %lld elements, stored %s of %lld",
                     e->node, lt_dtype_name(dst->dtype), (long long)lt_tensor_numel(dst),
                     lt_dtype_name(e->dtype), (long long)e->n);
  if ((dst->device >= 0) != (st->dops != NULL))
    return lt_errorf(err, LT_ERR_INTERNAL, "stash: node %d restored into %s memory", e->node,
                     dst->device >= 0 ? "device" : "host");
  const ac_dev_ops *d = st->dops;
  lt_status rc = LT_OK;
  switch (e->form) {
  case FORM_CODEC: rc = decode(st, e->data, e->bytes, lt_tensor_f32(dst), e->n, err); break;
  case FORM_BN_EXACT:
  case FORM_BN_CODEC: rc = load_bn(st, e, lt_tensor_f32(dst), err); break;
  case FORM_DERIVED: rc = load_derived(st, e, lt_tensor_f32(dst), err); break;
  case FORM_MASKED: rc = load_masked(st, e, lt_tensor_f32(dst), err); break;
  case FORM_MASK1:
    if (d) rc = d->mask1_unpack(st->dctx, e->data, e->n, lt_tensor_f32(dst), err);
    else ac_mask1_unpack(e->data, e->n, lt_tensor_f32(dst));
    break;
  case FORM_PACK2:
    if (d) rc = d->unpack2(st->dctx, e->data, e->n, dst->data, err);
    else lt_cpu_argmax_unpack2((size_t)e->n, e->data, dst->data);
    break;
  default: rc = mem_copy(st, dst->data, e->data, (size_t)e->dense, err); break;
  }
  return rc ? lt_err_prefix(err, "stash: node %d", e->node) : LT_OK;
}

static void st_release(void *user, void *handle) { entry_unref(user, handle); }

/* Σ|x| (p 1) or Σx² (p 2) in double lanes (vectorised), threads over blocks of 4096. */
double ac_sum_pow(const float *x, int64_t n, int p) {
  const int64_t nb = (n + 4095) / 4096;
  double total = 0;
#pragma omp parallel for reduction(+ : total) schedule(static) if (n >= 65536)
  for (int64_t b = 0; b < nb; b++) {
    const int64_t i0 = b * 4096, i1 = i0 + 4096 < n ? i0 + 4096 : n;
    double acc[8] = {0};
    int64_t i = i0;
    for (; i + 8 <= i1; i += 8)
      for (int j = 0; j < 8; j++) {
        const double v = x[i + j];
        acc[j] += p == 1 ? fabs(v) : v * v;
      }
    double s = 0;
    for (; i < i1; i++) s += p == 1 ? fabs((double)x[i]) : (double)x[i] * x[i];
    for (int j = 0; j < 8; j++) s += acc[j];
    total += s;
  }
  return total;
}

/* dG = the weight gradient that input x and output gradient dy give, for the conv or linear
 * node (no accumulation). Returns 0, or -1 for an op or geometry it does not know. */
static int weight_grad(const lt_graph *g, int node, const float *x, const lt_tensor *xt,
                       const lt_tensor *dy, const lt_tensor *dw, float *dg) {
  const lt_node *nd = &g->nodes[node];
  const int64_t nw = lt_tensor_numel(dw);
  if (nd->op == LT_OP_LINEAR) {
    int64_t m = dw->shape[0], k = nw / m, n = lt_tensor_numel(dy) / m;
    if (n * k != lt_tensor_numel(xt)) return -1;
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)m, (int)k, (int)n, 1.0f,
                lt_tensor_f32(dy), (int)m, x, (int)k, 0.0f, dg, (int)k);
    return 0;
  }
  if (nd->op != LT_OP_CONV2D || xt->ndim != 4 || dy->ndim != 4 || dw->ndim != 4) return -1;
  const lt_node_attrs *a = &nd->a;
  const int n = (int)xt->shape[0], c = (int)xt->shape[1], h = (int)xt->shape[2],
            w = (int)xt->shape[3];
  const int s = (int)dy->shape[1], oh = (int)dy->shape[2], ow = (int)dy->shape[3];
  const int kh = (int)dw->shape[2], kw = (int)dw->shape[3];
  const int groups = a->groups > 0 ? a->groups : 1, cg = c / groups, sg = s / groups;
  const int sh = a->stride[0] > 0 ? a->stride[0] : 1, sw = a->stride[1] > 0 ? a->stride[1] : 1;
  const int dh = a->dilation[0] > 0 ? a->dilation[0] : 1,
            dwl = a->dilation[1] > 0 ? a->dilation[1] : 1;
  const int pt = a->pads[0], pl = a->pads[1];
  if (dw->shape[1] != cg || cg * groups != c || sg * groups != s) return -1;
  const int64_t ckk = (int64_t)cg * kh * kw, ohw = (int64_t)oh * ow;
  float *cols = lt_alloc(LT_MEM_WORKSPACE, (size_t)(ckk * ohw) * sizeof *cols, NULL);
  if (!cols) return -1;
  memset(dg, 0, (size_t)nw * sizeof *dg);
  for (int b = 0; b < n; b++)
    for (int gi = 0; gi < groups; gi++) {
      /* im2col of this sample's group: cols (cg·kh·kw, oh·ow) */
      for (int ci = 0; ci < cg; ci++)
        for (int ki = 0; ki < kh; ki++)
          for (int kj = 0; kj < kw; kj++) {
            float *row = cols + (((int64_t)ci * kh + ki) * kw + kj) * ohw;
            const float *plane = x + ((int64_t)b * c + gi * cg + ci) * h * w;
            for (int oy = 0; oy < oh; oy++) {
              int iy = oy * sh - pt + ki * dh;
              for (int ox = 0; ox < ow; ox++) {
                int ix = ox * sw - pl + kj * dwl;
                row[oy * ow + ox] = (iy >= 0 && iy < h && ix >= 0 && ix < w) ? plane[iy * w + ix] : 0;
              }
            }
          }
      const float *dyg = lt_tensor_f32(dy) + ((int64_t)b * s + gi * sg) * ohw;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, sg, (int)ckk, (int)ohw, 1.0f, dyg,
                  (int)ohw, cols, (int)ohw, 1.0f, dg + (int64_t)gi * sg * ckk, (int)ckk);
    }
  lt_free(LT_MEM_WORKSPACE, cols, (size_t)(ckk * ohw) * sizeof *cols);
  return 0;
}

static void st_observe(void *user, const lt_graph *g, int node, const lt_tensor *x,
                       const lt_tensor *dy, const lt_tensor *dw) {
  lt_ac_stash *st = user;
  if (node < 0 || node >= st->n_layers || !x || !dy || !dw) return;
  ac_layer *l = &st->layers[node];
  if (l->kind != LT_SAVE_WEIGHT_INPUT || dw->ndim < 1 || dw->shape[0] < 1) return;
  /* The statistics feed the adaptive controller; sampled steps need them in every mode. */
  const int sampled = l->exact && l->exact_n == lt_tensor_numel(x);
  if (st->cfg.mode != LT_AC_ADAPTIVE && !sampled) return;
  const int64_t nw = lt_tensor_numel(dw), ndy = lt_tensor_numel(dy);
  const float *pw = lt_tensor_f32(dw), *pd = lt_tensor_f32(dy);
  double sum_g, sum_d2;
  lt_tensor hx, hdy, hdw; /* host copies of device tensors for a sampled step's product */
  if (st->dops) {
    const int64_t nx = sampled ? l->exact_n : 0;
    if (st->dops->sum_pow(st->dctx, pw, nw, 1, &sum_g, NULL) ||
        st->dops->sum_pow(st->dctx, pd, ndy, 2, &sum_d2, NULL) ||
        (sampled && (!stage_in(st, x->data, nx, 0, NULL) ||
                     !stage_in(st, dy->data, ndy, nx, NULL) ||
                     !stage_in(st, dw->data, nw, nx + ndy, NULL))))
      goto done; /* the device failed: no statistics this step (the next call reports it) */
    if (sampled) {
      hx = *x, hdy = *dy, hdw = *dw;
      hx.data = st->stage;
      hdy.data = st->stage + nx;
      hdw.data = st->stage + nx + ndy;
      hx.device = hdy.device = hdw.device = -1;
      x = &hx, dy = &hdy, dw = &hdw;
    }
  } else {
    sum_g = ac_sum_pow(pw, nw, 1);
    sum_d2 = ac_sum_pow(pd, ndy, 2);
  }
  const double mean_g = sum_g / (double)nw, drms = sqrt(sum_d2 / (double)ndy);
  /* Terms in each dW element: batch × output positions for conv and linear (dW is (S, ...)),
   * batch × input positions for a transposed conv (dW is (C, ...), one term per input). */
  const double nterms = g->nodes[node].op == LT_OP_CONV_TRANSPOSE2D && x->ndim > 1
                            ? (double)lt_tensor_numel(x) / (double)x->shape[1]
                            : (double)ndy / (double)dw->shape[0];
  l->acc_mean_g += mean_g;
  l->acc_drms += drms;
  l->acc_n += nterms;
  l->acc_r += l->zero_frac;
  l->acc_count++;

  if (sampled) {
    /* E = X − X', through the layer's dW product: the compression error of this dW. */
    float *diff = lt_alloc(LT_MEM_WORKSPACE, (size_t)l->exact_n * sizeof *diff, NULL);
    float *dg = lt_alloc(LT_MEM_WORKSPACE, (size_t)nw * sizeof *dg, NULL);
    if (diff && dg) {
      const float *xr = lt_tensor_f32(x);
      for (int64_t i = 0; i < l->exact_n; i++) diff[i] = l->exact[i] - xr[i];
      if (!weight_grad(g, node, diff, x, dy, dw, dg)) {
        double s2 = 0;
        for (int64_t i = 0; i < nw; i++) s2 += (double)dg[i] * dg[i];
        double obs = sqrt(s2 / (double)nw);
        double pred = l->exact_eb * sqrt(nterms * (1.0 - l->zero_frac) / 3.0) * drms;
        l->last_obs = obs;
        l->last_pred = pred;
        if (pred > 0) {
          l->sum_ratio += obs / pred;
          l->n_samples++;
        }
      }
    }
    lt_free(LT_MEM_WORKSPACE, diff, (size_t)l->exact_n * sizeof *diff);
    lt_free(LT_MEM_WORKSPACE, dg, (size_t)nw * sizeof *dg);
  }
done:
  lt_free(LT_MEM_WORKSPACE, l->exact, (size_t)l->exact_n * sizeof *l->exact);
  l->exact = NULL;
  l->exact_n = 0;
}

/* The executor's backend: the host's memory, or a device's through its operations table. A
 * stash moves between backends only while it holds nothing. */
static lt_status st_bind(void *user, lt_backend *be, lt_err *err) {
  lt_ac_stash *st = user;
  lt_backend *dev = be && be->device >= 0 ? be : NULL;
  if (dev == st->be) return LT_OK;
  if (st->cur_held)
    return lt_errorf(err, LT_ERR_INVALID,
                     "activation compression: this stash holds tensors of %s; one stash serves "
                     "executors of one backend at a time",
                     st->be ? st->be->vt->name : "the host");
  void *ctx = NULL;
  if (dev) {
    if (!dev->vt->actcomp || !dev->vt->copy)
      return lt_errorf(err, LT_ERR_UNSUPPORTED,
                       "activation compression has no device form on backend %s; train on the "
                       "CPU backend or set activation_compression.mode off",
                       dev->vt->name);
    if (!(ctx = dev->vt->actcomp->open(dev, err)))
      return lt_err_prefix(err, "activation compression on %s", dev->vt->name);
  }
  mem_free(st, st->zdec, (size_t)st->zdec_cap * sizeof *st->zdec, LT_MEM_WORKSPACE);
  st->zdec = NULL;
  st->zdec_cap = 0;
  st->zdec_of = NULL;
  if (st->dops) st->dops->close(st->dctx);
  st->be = dev;
  st->dops = dev ? dev->vt->actcomp : NULL;
  st->dctx = ctx;
  return LT_OK;
}

/* ---- public API ------------------------------------------------------------------------------ */

lt_ac_stash *lt_ac_stash_new(const lt_ac_config *cfg, lt_err *err) {
  lt_ac_config c = cfg ? *cfg : lt_ac_config_default();
  if ((unsigned)c.mode > LT_AC_ADAPTIVE) {
    lt_errorf(err, LT_ERR_INVALID, "activation_compression.mode %d: use off, fixed, relative or "
                                   "adaptive", (int)c.mode);
    return NULL;
  }
  if ((c.mode == LT_AC_FIXED && !(c.eb > 0 && isfinite(c.eb))) ||
      (c.mode == LT_AC_RELATIVE && !(c.rel > 0 && c.rel < 1)) ||
      (c.mode == LT_AC_ADAPTIVE && !(c.rho > 0 && isfinite(c.rho)))) {
    lt_errorf(err, LT_ERR_INVALID,
              "activation_compression: fixed needs eb > 0, relative 0 < rel < 1, adaptive "
              "rho > 0 (got eb %g, rel %g, rho %g)", c.eb, c.rel, c.rho);
    return NULL;
  }
  if (c.mode == LT_AC_ADAPTIVE && c.window < 1) {
    lt_errorf(err, LT_ERR_INVALID, "activation_compression.window must be at least 1 step");
    return NULL;
  }
  if (!(c.smoothing >= 0 && c.smoothing < 1) || !(c.eb_min > 0) || !(c.eb_max >= c.eb_min) ||
      !isfinite(c.eb_max) || (c.bn_mode == LT_AC_BN_LOSSY && !(c.bn_eb > 0 && c.bn_eb <= 10)) ||
      c.sample_every < 0 || !(c.initial_eb >= 0 && isfinite(c.initial_eb))) {
    lt_errorf(err, LT_ERR_INVALID,
              "activation_compression: need 0 <= smoothing < 1, 0 < eb_min <= eb_max, "
              "0 < bn eb <= 10 for lossy batch norm, sample_every >= 0, initial_eb >= 0");
    return NULL;
  }
  lt_ac_stash *st = lt_calloc(LT_MEM_SAVED, sizeof *st, err);
  if (!st) return NULL;
  st->cfg = c;
  st->codec = lt_ac_codec_new(&c.codec, err);
  if (!st->codec) {
    lt_free(LT_MEM_SAVED, st, sizeof *st);
    return NULL;
  }
  st->policy = (lt_stash_policy){.user = st,
                                 .bind = st_bind,
                                 .keeps_buffer = st_keeps_buffer,
                                 .store = st_store,
                                 .load = st_load,
                                 .release = st_release,
                                 .observe = st_observe};
  return st;
}

void lt_ac_stash_free(lt_ac_stash *st) {
  if (!st) return;
  for (int i = 0; i < st->n_layers; i++)
    lt_free(LT_MEM_WORKSPACE, st->layers[i].exact,
            (size_t)st->layers[i].exact_n * sizeof *st->layers[i].exact);
  lt_free(LT_MEM_SAVED, st->layers, (size_t)st->n_layers * sizeof *st->layers);
  lt_free(LT_MEM_WORKSPACE, st->rep, (size_t)st->rep_cap * sizeof *st->rep);
  lt_ac_buf_free(&st->tmp);
  lt_free(LT_MEM_WORKSPACE, st->zbuf, (size_t)st->zcap * sizeof *st->zbuf);
  mem_free(st, st->zdec, (size_t)st->zdec_cap * sizeof *st->zdec, LT_MEM_WORKSPACE);
  lt_free(LT_MEM_WORKSPACE, st->moffs, (size_t)st->moffs_cap * sizeof *st->moffs);
  lt_free(LT_MEM_WORKSPACE, st->aff, (size_t)st->affcap * 2 * sizeof *st->aff);
  lt_free(LT_MEM_WORKSPACE, st->stage, (size_t)st->stage_cap * sizeof *st->stage);
  if (st->dops) st->dops->close(st->dctx);
  lt_ac_codec_free(st->codec);
  lt_free(LT_MEM_SAVED, st, sizeof *st);
}

const lt_stash_policy *lt_ac_stash_policy(lt_ac_stash *st) { return &st->policy; }

double lt_ac_stash_layer_eb(const lt_ac_stash *st, int node) {
  if (node < 0 || node >= st->n_layers || !st->layers[node].seen)
    return st->cfg.mode == LT_AC_FIXED      ? st->cfg.eb
           : st->cfg.mode == LT_AC_ADAPTIVE ? st->cfg.initial_eb
                                            : 0;
  const ac_layer *l = &st->layers[node];
  if (l->kind == LT_SAVE_WEIGHT_INPUT && st->cfg.mode == LT_AC_ADAPTIVE)
    return l->eb > 0 ? l->eb : st->cfg.initial_eb;
  if (l->kind == LT_SAVE_WEIGHT_INPUT && st->cfg.mode == LT_AC_FIXED) return st->cfg.eb;
  return l->eb_used; /* relative bounds and batch-norm inputs depend on the data: the last one */
}

void lt_ac_stash_step_end(lt_ac_stash *st) {
  const lt_ac_config *c = &st->cfg;
  st->step++;
  st->last_dense = st->step_dense;
  st->last_held = st->step_held;
  st->step_dense = st->step_held = 0;
  const int update = c->mode == LT_AC_ADAPTIVE && st->step % c->window == 0;
  for (int i = 0; i < st->n_layers; i++) {
    ac_layer *l = &st->layers[i];
    if (!l->seen) continue;
    l->last_dense = l->step_dense;
    l->last_held = l->step_held;
    l->step_dense = l->step_held = 0;
    if (l->kind != LT_SAVE_WEIGHT_INPUT) continue;
    if (update && l->acc_count > 0) {
      double k = l->acc_count;
      double mean_g = l->acc_mean_g / k, drms = l->acc_drms / k, nn = l->acc_n / k;
      double r = l->acc_r / k;
      double denom = drms * sqrt(nn * (1.0 - r));
      double eb_new = denom > 0 ? c->rho * sqrt(3.0) * mean_g / denom : c->eb_max;
      if (!isfinite(eb_new)) eb_new = c->eb_max;
      eb_new = clampd(eb_new, c->eb_min, c->eb_max);
      l->eb = l->eb > 0 ? (1.0 - c->smoothing) * eb_new + c->smoothing * l->eb : eb_new;
      hist_push(l, st->step, l->eb);
      l->acc_mean_g = l->acc_drms = l->acc_n = l->acc_r = 0;
      l->acc_count = 0;
    } else if (c->mode != LT_AC_ADAPTIVE &&
               (l->n_hist == 0 || fabs(l->hist_eb[l->n_hist - 1] - l->eb_used) >
                                      1e-3 * l->eb_used)) {
      hist_push(l, st->step, l->eb_used);
    }
  }
}

void lt_ac_stash_report(lt_ac_stash *st, lt_ac_report *out) {
  memset(out, 0, sizeof *out);
  int n = 0;
  for (int i = 0; i < st->n_layers; i++) n += st->layers[i].seen;
  if (n > st->rep_cap) {
    lt_ac_layer_report *r = lt_alloc(LT_MEM_WORKSPACE, (size_t)n * sizeof *r, NULL);
    if (!r) n = 0; /* report totals only */
    else {
      lt_free(LT_MEM_WORKSPACE, st->rep, (size_t)st->rep_cap * sizeof *st->rep);
      st->rep = r;
      st->rep_cap = n;
    }
  }
  out->step = st->step;
  out->bytes_dense = st->last_dense;
  out->bytes_held = st->last_held;
  out->peak_dense = st->peak_dense;
  out->peak_held = st->peak_held;
  out->layers = st->rep;
  for (int i = 0, j = 0; i < st->n_layers && j < n; i++) {
    const ac_layer *l = &st->layers[i];
    if (!l->seen) continue;
    lt_ac_layer_report *r = &st->rep[j++];
    memset(r, 0, sizeof *r);
    r->node = i;
    r->kind = l->kind;
    r->bytes_dense = l->last_dense;
    r->bytes_held = l->last_held;
    r->eb = lt_ac_stash_layer_eb(st, i);
    r->n_history = l->n_hist;
    memcpy(r->eb_step, l->hist_step, sizeof r->eb_step);
    memcpy(r->eb_history, l->hist_eb, sizeof r->eb_history);
    r->n_samples = l->n_samples;
    r->last_observed_sigma = l->last_obs;
    r->last_predicted_sigma = l->last_pred;
    r->mean_ratio = l->n_samples ? l->sum_ratio / l->n_samples : 0;
    out->n_layers = j;
  }
}

void lt_ac_stash_reset_peaks(lt_ac_stash *st) {
  st->peak_dense = st->cur_dense;
  st->peak_held = st->cur_held;
}
