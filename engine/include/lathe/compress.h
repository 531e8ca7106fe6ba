/* lathe/compress.h — low-rank factorisation of convolutions (Tucker-2) and linear layers (SVD),
 * and the graph rewrites that put the factors into a model.
 *
 * Usage:
 *   lt_tucker2 t;
 *   lt_tucker2_decompose(w, S, C, 3, 3, r, r, &t, &err);   // truncated HOSVD, r ≤ min(S, C)
 *   // t.u_in (C, r_in), t.core (r_out, r_in, kh, kw), t.u_out (S, r_out): every smaller rank is a
 *   // prefix of these factors (lt_tucker2_core_prefix extracts the core of a smaller rank).
 *   lt_tucker2_free(&t);
 *
 *   lt_compress_factorize_conv(g, node, 16, &err);          // conv → 1×1, k×k, 1×1 in the graph
 *
 * Usage (the whole pipeline, as workers/job_compress.c runs it):
 *   lt_compress_layer *L; int n;
 *   lt_compress_layers_find(g, 4, &L, &n, &err);             // compressible convs and linear
 *                                                            // layers, ranks 4, 8, …
 *   lt_lat_table t = {0};
 *   lt_lat_profile(g, be, 64, NULL, &t, &err);               // measures what t does not hold yet
 *   lt_compress_layers_set_latency(L, n, &t, t.step);        // candidates = multiples of the step
 *   lt_search_config sc = lt_search_config_default(); ... sc.target_value = ...;
 *   lt_compress_search(g, be, L, n, &sc, ranks, &err);       // ranks (n), 0 = stays dense
 *   lt_compress_apply(g, L, n, ranks, &err);                 // fresh HOSVD at the chosen ranks
 *
 * Not for: reading job specs, JSON, files (workers/job_compress.c), or fine-tuning (train.h).
 */
#ifndef LATHE_COMPRESS_H
#define LATHE_COMPRESS_H

#include "lathe/data.h"
#include "lathe/exec.h"
#include "lathe/train.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lt_tucker2 {
  int s, c, kh, kw;  /* dense weight W (s, c, kh, kw) */
  int r_out, r_in;   /* ranks of the output and input modes */
  float *u_out;      /* (s, r_out) row-major, orthonormal columns, owned */
  float *u_in;       /* (c, r_in) row-major, orthonormal columns, owned */
  float *core;       /* (r_out, r_in, kh, kw) = W ×₁ U_outᵀ ×₂ U_inᵀ, owned */
  double *sv_out;    /* singular values of the mode-1 unfolding (s × c·kh·kw), descending, owned */
  double *sv_in;     /* singular values of the mode-2 unfolding (c × s·kh·kw), descending, owned */
  int n_sv_out, n_sv_in;
} lt_tucker2;

/* Truncated HOSVD of a conv weight. Fails with LT_ERR_INVALID when a rank is outside
 * 1..min(mode size, other modes' product). */
lt_status lt_tucker2_decompose(const float *w, int s, int c, int kh, int kw, int r_out, int r_in,
                               lt_tucker2 *out, lt_err *err);
void lt_tucker2_free(lt_tucker2 *t);
/* Core of a smaller rank (r_out' ≤ r_out, r_in' ≤ r_in): the leading block, copied into dst
 * (r_out', r_in', kh, kw). */
void lt_tucker2_core_prefix(const lt_tucker2 *t, int r_out, int r_in, float *dst);
/* Rebuilds the dense weight (s, c, kh, kw) from the leading r_out/r_in components. */
void lt_tucker2_reconstruct(const lt_tucker2 *t, int r_out, int r_in, float *w);

/* Two-factor SVD of a linear weight W (m, k): W ≈ A B with A (m, r) = U_r Σ_r, B (r, k) = V_rᵀ. */
typedef struct lt_svd2 {
  int m, k, r;
  float *a;    /* (m, r) row-major, owned */
  float *b;    /* (r, k) row-major, owned */
  double *sv;  /* all min(m, k) singular values, descending, owned */
  int n_sv;
} lt_svd2;

lt_status lt_svd2_decompose(const float *w, int m, int k, int r, lt_svd2 *out, lt_err *err);
void lt_svd2_free(lt_svd2 *t);

/* MACs per output pixel of a k×k conv C→S, dense and as a tied-rank Tucker-2 (stride 1):
 * S·C·k² against C·r + k²·r² + r·S. */
int64_t lt_conv_macs_dense(int s, int c, int kh, int kw);
int64_t lt_conv_macs_tucker2(int s, int c, int kh, int kw, int r);
/* Largest tied rank r (a multiple of step) whose factorised cost stays below the dense cost, or
 * 0 when no rank is cheaper (the layer stays dense). */
int lt_tucker2_max_rank(int s, int c, int kh, int kw, int step);

/* Graph rewrites. The node must be a conv (groups 1) or linear with constant weights; the new
 * nodes are named <node>.u_in / <node>.core / <node>.u_out (and <node>.a / <node>.b for linear),
 * inherit stride/padding/dilation on the k×k core, and the bias on the last factor. A linear
 * layer's factors are balanced for training: b = Σ_r^½ V_rᵀ, a = U_r Σ_r^½. */
lt_status lt_compress_factorize_conv(lt_graph *g, int node, int rank, lt_err *err);
lt_status lt_compress_factorize_linear(lt_graph *g, int node, int rank, lt_err *err);
/* Either of the two, by the node's op. */
lt_status lt_compress_factorize(lt_graph *g, int node, int rank, lt_err *err);

/* ---- compressible layers ---------------------------------------------------------------- */

#define LT_COMPRESS_MAX_CAND 64

/* What a compressible layer is: a k×k conv (Tucker-2) or a linear layer (two-factor SVD). */
typedef enum lt_compress_kind { LT_COMPRESS_CONV = 0, LT_COMPRESS_LINEAR = 1 } lt_compress_kind;

/* One convolution or linear layer the search may factorise, its candidate ranks and what each
 * costs. Costs are per sample (MACs, parameters) or per batch of the latency table
 * (milliseconds). A linear layer x(K) -> W(M, K) has s = M, c = K, kh = kw = 1 and
 * in/out h, w = 1; at rank r it costs r·(K + M) MACs and parameters (dense: K·M). */
typedef struct lt_compress_layer {
  char name[128];              /* node name (node ids change with rewrites; names do not) */
  lt_compress_kind kind;       /* 0 (conv) in a zeroed struct */
  int s, c, kh, kw;            /* weight (s, c, kh, kw); linear: (M, K, 1, 1) */
  int in_h, in_w, out_h, out_w;
  lt_node_attrs a;             /* the conv's geometry (stride, pads, dilation) */
  int bias;                    /* 1: the conv adds a bias (the factorised block's last conv will) */
  int max_rank;                /* largest tied rank cheaper than dense in MACs (multiple of step) */
  int n_cand;
  int cand[LT_COMPRESS_MAX_CAND]; /* ascending ranks, multiples of the step, ≤ max_rank */
  int64_t dense_macs, dense_params;
  int64_t macs[LT_COMPRESS_MAX_CAND], params[LT_COMPRESS_MAX_CAND];
  double dense_ms;                /* latency of the dense conv; NaN until set from a table */
  double ms[LT_COMPRESS_MAX_CAND];
} lt_compress_layer;

/* Every dense conv (groups 1, kernel larger than 1×1) and every linear layer with constant
 * (float, 2-D for linear) weights for which some tied rank (a multiple of step) is cheaper than
 * the dense layer, in graph order. *out is malloc'd (free()); *n may be 0
 * (the caller decides whether a model with nothing to compress is an error). Candidates are the
 * multiples of step up to max_rank; at most LT_COMPRESS_MAX_CAND (the step grows per layer when
 * needed). */
lt_status lt_compress_layers_find(const lt_graph *g, int step, lt_compress_layer **out, int *n,
                                  lt_err *err);
/* Re-derives the candidates of every layer as multiples of step (max_rank too). */
void lt_compress_layers_set_step(lt_compress_layer *l, int n, int step);

/* MACs per sample and parameters of a conv factorised at tied rank r with this geometry (the 1×1
 * input factor runs at the input resolution, the core and output factor at the output one); of a
 * linear layer at rank r: r·(K + M) both. */
int64_t lt_compress_layer_macs(const lt_compress_layer *l, int r);
int64_t lt_compress_layer_params(const lt_compress_layer *l, int r);

/* Replaces each layer i with ranks[i] > 0 by its Tucker-2 factors at that rank (a fresh
 * truncated HOSVD of the weight g holds now; linear layers: a fresh two-factor SVD);
 * ranks[i] == 0 leaves it dense. */
lt_status lt_compress_apply(lt_graph *g, const lt_compress_layer *l, int n, const int *ranks,
                            lt_err *err);

/* ---- latency table -------------------------------------------------------------------------- */

/* One distinct conv or linear shape: the dense layer and its factorised block at each probed
 * rank, timed as a forward pass of a graph holding just that block, at the table's batch. */
typedef struct lt_lat_entry {
  lt_compress_kind kind; /* part of the key: a linear shape never matches a conv one */
  int s, c, kh, kw, in_h, in_w;
  int stride[2], pads[4], dilation[2];
  int bias;        /* timed with a bias (part of the key: on the CPU a 1x1 conv adds its bias in
                      a separate pass worth ~10% of a small block) */
  double dense_ms;
  int n;
  int ranks[LT_COMPRESS_MAX_CAND]; /* ascending */
  double ms[LT_COMPRESS_MAX_CAND];
} lt_lat_entry;

typedef struct lt_lat_table {
  char device[256];  /* the backend's description (fingerprint) the table was measured on */
  int batch;
  int estimated;     /* 1: roofline estimate, not a measurement */
  int probe_step;    /* ranks were probed at multiples of this */
  int step;          /* the rank step where latency jumps (a multiple of probe_step) */
  int n, cap;
  lt_lat_entry *e;   /* (n) owned (malloc) */
} lt_lat_table;

typedef struct lt_lat_opts {
  int probe_step;   /* ranks probed at multiples of this; 0: 4 */
  int warmup;       /* forward passes before timing; 0: 2 */
  int min_reps, max_reps; /* 0: 5 and 40 */
  double max_s;     /* time cap per measurement (seconds); 0: 0.5 */
  double rel_tol;   /* stop once the median moves less than this; 0: 0.02 */
  int cpu_time;     /* 1: the process's CPU time (all threads) instead of wall time: immune to
                       other processes taking the cores, for checks on a shared machine; equals
                       wall time only when this process runs one thread and never waits */
} lt_lat_opts;

/* Peak figures of a device for a roofline estimate. */
typedef struct lt_roofline {
  double gflops;   /* peak multiply-adds ×2 per second / 1e9 */
  double gbytes_s; /* memory bandwidth, GB/s */
} lt_roofline;

/* Measures every conv and linear shape of g's compressible layers that t does not already hold
 * (a cache loaded from a file, or a table measured elsewhere) at t->batch (set it, or pass
 * batch > 0 for a new table), then finds the step. A table for another device or batch is
 * refused. */
lt_status lt_lat_profile(lt_graph *g, lt_backend *be, int batch, const lt_lat_opts *o,
                         lt_lat_table *t, lt_err *err);
/* The same table from a roofline model (t->estimated = 1). */
lt_status lt_lat_estimate(lt_graph *g, const lt_roofline *rf, int batch, int probe_step,
                          lt_lat_table *t, lt_err *err);
/* Median forward latency (ms) of a whole graph at batch, measured as the profiler measures. */
lt_status lt_lat_measure_graph(lt_graph *g, lt_backend *be, int batch, const lt_lat_opts *o,
                               double *ms, lt_err *err);
/* Median forward latency (ms) of layer l alone at batch: dense (rank 0) or as its Tucker-2 block
 * (linear: its two factors), followed by what the profiler times with it (conv: batch norm and
 * ReLU; linear: ReLU). */
lt_status lt_lat_measure_layer(const lt_compress_layer *l, int rank, lt_backend *be, int batch,
                               const lt_lat_opts *o, double *ms, lt_err *err);
/* A whole model's latency is taken as affine in the sum of its searched layers' latencies
 * (each timed alone): t = t_ref + slope * (s - s_ref), through the dense model (t_dense, its
 * layers' sum s_dense) and a reference model with every searched layer at its smallest rank
 * (t_ref, s_ref). The intercept is what lies outside the layers; the slope is the layers'
 * excess in the model, where their inputs and weights are found in the caches less often than
 * when timed alone (ResNet-20: 0.99-1.05, on one thread at batch 16 and two at batch 64). Returns the slope; 1 (the layers
 * count as timed alone) when the two sums lie within 5% of s_dense, where noise decides it, or
 * when it falls outside [0.5, 2]. */
double lt_lat_model_slope(double t_dense, double t_ref, double s_dense, double s_ref);
/* The rank step: the most common distance between ranks where latency jumps up (>= 5% over the
 * previous probe), rounded to a multiple of probe_step; probe_step when there are no jumps. */
int lt_lat_find_step(const lt_lat_table *t);
/* Appends an entry (copied); LT_ERR_NOMEM on failure. */
lt_status lt_lat_table_add(lt_lat_table *t, const lt_lat_entry *e, lt_err *err);
const lt_lat_entry *lt_lat_lookup(const lt_lat_table *t, const lt_compress_layer *l);
void lt_lat_table_free(lt_lat_table *t);
/* Copies latencies from the table into the layers (dense_ms, ms per candidate), with candidates
 * re-derived as multiples of step; a shape present only with the other bias setting is taken as
 * it is. LT_ERR_INVALID when a layer's shape or a rank is missing. */
lt_status lt_compress_layers_set_latency(lt_compress_layer *l, int n, const lt_lat_table *t,
                                         int step, lt_err *err);
/* Latency caps the rank space (HALOC: a factorisation that is not faster on the device is not
 * worth its accuracy): drops every candidate whose latency is not below (1 - margin) times the
 * dense layer's. The margin keeps out ranks that only timing noise puts below dense (a 16->16
 * 32x32 block at rank 12 timed 0.70 ms in the model against 0.67 dense, yet just under dense in
 * a table, and the search took it: 1.85x instead of 2.26x). Layers left without a candidate stay
 * dense; they are moved behind the others, in their original order, with n_cand 0. Returns how
 * many layers keep candidates (the first ones). Needs latencies (lt_compress_layers_set_latency). */
int lt_compress_layers_keep_faster(lt_compress_layer *l, int n, double margin);

/* ---- the differentiable search -------------------------------------------------------------- */

/* Candidates are prefixes of one decomposition, so the Gumbel-softmax mixture Σ_i m_i f_i of a
 * layer is one factorised layer whose core G (r, r, p) is masked: G_eff[a][b] = c_max(a,b) G[a][b]
 * with c_j = Σ_{i: cand_i > j} m_i. These are the pieces, exposed for the test that pins them. */
void lt_mixture_cummask(int n_cand, const int *cand, const float *m, float *c /* (cand[n-1]) */);
void lt_mixture_apply(const float *g, int r, int p, const float *c, float *g_eff);
/* From dL/dG_eff: dG = M ⊙ dG_eff and dc_j = Σ_{max(a,b)=j} G[a][b] dG_eff[a][b]. */
void lt_mixture_backward(const float *g, int r, int p, const float *c, const float *dg_eff,
                         float *dg, double *dc);
/* dm_i = Σ_{j < cand_i} dc_j (through the cumulative sum). */
void lt_mixture_dm(int n_cand, const int *cand, const double *dc, double *dm);
/* The same for a two-factor (linear) layer, masked on the rows of its first factor B (r, p):
 * B_eff[j] = c_j B[j]; dB = M ⊙ dB_eff and dc_j = Σ_k B[j][k] dB_eff[j][k] (dw may be NULL). */
void lt_mixture_apply_rows(const float *w, int r, int p, const float *c, float *w_eff);
void lt_mixture_backward_rows(const float *w, int r, int p, const float *c, const float *dw_eff,
                              float *dw, double *dc);
/* m = softmax((alpha + gumbel) / tau); gumbel may be NULL (plain softmax). */
void lt_gumbel_softmax(int n, const double *alpha, const double *gumbel, double tau, double *m);
/* dalpha_k = (1/tau) m_k (dm_k - Σ_i m_i dm_i). */
void lt_gumbel_softmax_backward(int n, const double *m, double tau, const double *dm,
                                double *dalpha);

typedef enum lt_target_kind { LT_TARGET_LATENCY = 0, LT_TARGET_FLOPS, LT_TARGET_PARAMS } lt_target_kind;

/* Cost of layer l at candidate i (i < 0: dense) in the target's unit. */
double lt_compress_layer_cost(const lt_compress_layer *l, lt_target_kind kind, int i);

typedef struct lt_search_progress {
  int64_t step, steps;
  double tau;
  double task_loss, loss, fm_loss, fm_weight;
  double expected_cost;  /* E[cost] of the whole model under the current mixture */
  double argmax_cost;    /* cost of the argmax ranks */
  const int *ranks;      /* (n_layers) argmax ranks */
  int n_layers;
} lt_search_progress;

typedef struct lt_search_config {
  const lt_dataset *train;  /* samples [0, n_weights) train weights, [n_weights, n) the logits */
  int64_t n_weights;
  lt_batch_opts batch;      /* normalisation (and augmentation for the weight steps) */
  int batch_size;
  int64_t steps;            /* alternating steps (one weight and one logit update each) */
  double lr_weights, momentum, weight_decay; /* SGD */
  double lr_logits;         /* Adam on the logits */
  double tau_start, tau_end; /* exponential annealing */
  double beta;              /* hardware loss exponent */
  lt_target_kind target;
  double target_value;      /* whole-model budget in the target's unit */
  double fixed_cost;        /* cost of everything outside the searched layers */
  double layer_cost_scale;  /* each searched layer's cost counts this many times (0: once): for
                               latency, the whole model's slope over its layers timed alone */
  double fm_weight;         /* feature-map loss weight at step 0, decaying linearly to 0 */
  uint64_t seed;
  int (*on_step)(void *user, const lt_search_progress *p); /* non-zero stops: LT_ERR_CANCELLED */
  void *user;
} lt_search_config;

lt_search_config lt_search_config_default(void);

/* Runs the search on a copy of g (g is not modified) and writes each layer's chosen rank into
 * ranks (n): the argmax of its logits, then fitted to the target (layers whose logits lose least
 * per unit of cost step down while over it, step up while budget is left). Fails with
 * LT_ERR_INVALID, before any work, when even the smallest ranks miss the target or n is 0. The caller then factorises g afresh at those ranks (lt_compress_apply) or, to keep
 * what the search trained, uses trained_out: when non-NULL it receives the searched copy with
 * each layer truncated to its chosen rank (re-decomposed from the trained weights). */
lt_status lt_compress_search(const lt_graph *g, lt_backend *be, const lt_compress_layer *l, int n,
                             const lt_search_config *c, int *ranks, lt_graph **trained_out,
                             lt_err *err);

/* ---- distillation for fine-tuning ------------------------------------------------------------ */

/* Knowledge-distillation loss summed over n rows of k logits (student s, teacher t):
 *   alpha·T²·KL(softmax(t/T) ‖ softmax(s/T)) + (1 − alpha)·CE(s, label)
 * (torch: alpha·T²·kl_div(log_softmax(s/T), softmax(t/T), 'sum') + (1 − alpha)·cross_entropy(s, y,
 * 'sum')). When ds is non-NULL it receives the gradient of (sum × scale) with respect to s;
 * *correct (may be NULL) counts argmax(s) == label. A label outside [0, k) makes the loss NaN. */
double lt_distill_loss(int n, int k, const float *s, const float *t, const int32_t *labels,
                       double alpha, double temp, float scale, float *ds, int64_t *correct);

/* A teacher for lt_train_run's loss hook: the original model run in inference mode on each
 * training batch (up to batch samples), its logits distilled into the student as above.
 *   lt_distiller *d = lt_distiller_create(original, be, 128, 0.9, 4, &err);
 *   lt_train_loss hook = lt_distiller_loss(d); cfg.loss = &hook; lt_train_run(...);
 *   lt_distiller_free(d);
 * The teacher graph must outlive the distiller and is not modified. */
typedef struct lt_distiller lt_distiller;
lt_distiller *lt_distiller_create(lt_graph *teacher, lt_backend *be, int batch, double alpha,
                                  double temperature, lt_err *err);
void lt_distiller_free(lt_distiller *d);
lt_train_loss lt_distiller_loss(lt_distiller *d);

#ifdef __cplusplus
}
#endif
#endif
