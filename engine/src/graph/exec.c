/* The executor: plans every buffer of a graph at one batch size before the first step, then runs
 * forward and backward through a backend without allocating.
 *
 * Planning works on a timeline of 2F steps for F nodes: node i runs forward at step i and
 * backward at step 2F-1-i. Every buffer gets a lifetime on it: an activation from its producer to
 * its last consumer, extended to the backward step of each node that saves it in place; an
 * activation gradient from its first writer in backward to its producer's backward. Buffers are
 * then packed into three arenas (activations, saved, activation gradients, each counted under its
 * own lt_mem_cat) by greedy best-offset placement, largest first; buffers whose lifetimes do not
 * overlap share memory. Saved buffers all cross the forward/backward turn, so the saved arena is
 * exactly the dense stash. Graph inputs, outputs, output gradients and parameter gradients get
 * dedicated memory: callers read and write them between steps.
 *
 * Fusion (CPU, unless opts.no_fuse): a ReLU that is the only consumer of a BatchNorm or a
 * same-shape Add runs inside that node's forward, which writes the ReLU's output; the ReLU's
 * output buffer then lives from the head node's step. The skipped ReLU still stores its output
 * in the stash at its own step. When the ReLU's saved output stays in its forward buffer (no
 * stash policy, or one that keeps it), the pair's backward runs as one too, at the head's step:
 * the ReLU's output and output gradient then live until that step. A value that a fused forward
 * never writes (the head's own output here, a folded or epilogue-fused conv's below) shares the
 * buffer written in its place (plan_alias); an unfused forward runs the pointwise nodes in place.
 *
 * Inference only (CPU): a BatchNorm whose input only it reads is folded into the Conv2d that
 * produces it (plan_fold), the residual Add runs in the Conv2d before it (plan_residual), a chain
 * of Slices (and a Pad) runs as one strided copy (plan_window), and a batch of at least two
 * images per thread runs as one child executor per thread on a slice of the batch
 * (exec_split_plan).
 */
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ops/fused.h"
#include "ops/ops.h"

enum { ARENA_ACT = 0, ARENA_SAVED, ARENA_GRAD, ARENA_COUNT, ARENA_DEDICATED = ARENA_COUNT };

static const lt_mem_cat arena_cat[ARENA_COUNT] = {LT_MEM_ACTIVATIONS, LT_MEM_SAVED,
                                                  LT_MEM_GRADIENTS};

/* One planned buffer: the tensor whose data it becomes, its size and lifetime. */
typedef struct exec_buf {
  lt_tensor *t;
  int64_t bytes;
  int start, end; /* timeline steps, inclusive */
  int arena;      /* ARENA_* */
  lt_mem_cat cat; /* dedicated buffers only */
  int64_t offset; /* within the arena */
} exec_buf;

/* One tensor backward needs from forward. */
typedef struct exec_save {
  lt_save_kind kind;
  int value;       /* value id for IN/OUT sources, -1 for aux */
  lt_tensor *src;  /* the forward tensor (a value, a parameter or an aux buffer) */
  int is_param;    /* parameters and constants: read in place, never offered to the policy */
  int kept;        /* the forward buffer lives until backward */
  void *handle;    /* policy token between store() and release() */
  lt_tensor restore; /* load() target when not kept */
} exec_save;

typedef struct exec_node {
  int backward; /* runs in backward (its output needs a gradient) */
  int n_aux;
  lt_tensor aux[LT_MAX_IO];
  int n_saves;
  exec_save saves[LT_MAX_IO];
  int acc[LT_MAX_IO];     /* accumulate flag per input slot in backward */
  int observed;           /* din[1]/din[2] go to the observe() scratch */
} exec_node;

struct lt_exec {
  lt_graph *g;
  lt_backend *be;
  int batch;
  lt_mode mode;
  lt_exec_opts opts;
  int F;             /* nodes */
  lt_tensor *val;    /* (n_values) activations and inputs (batch, ...); device copies of params */
  lt_tensor *grad;   /* (n_values) gradients; data NULL where none */
  char *need_grad;   /* (n_values) */
  int *live_end;     /* (n_values) last step the value's buffer holds it; INT_MAX: dedicated */
  int *alias;        /* (n_values) the value whose buffer this one shares (plan_alias), -1: none */
  exec_node *nodes;  /* (F) */
  exec_buf *bufs;    /* (n_bufs) */
  int n_bufs, cap_bufs;
  void *arena[ARENA_COUNT];
  int64_t arena_bytes[ARENA_COUNT];
  int64_t dedicated_bytes, param_grad_bytes;
  void *ws;          /* max workspace over nodes */
  size_t ws_bytes;
  void *obs;         /* observe() scratch: dW then db of one node */
  size_t obs_bytes;
  int64_t saved_dense, saved_kept, saved_held;
  uint64_t step;
  lt_exec_hook hook;
  void *hook_user;
  int *fuse_relu;    /* (F) for a fused head node, the ReLU node it runs; -1 otherwise */
  char *fused_tail;  /* (F) 1 for a ReLU whose forward runs inside its head node */
  char *bwd_fused;   /* (F) 1 for a fused pair (head and ReLU) whose backward also runs as one,
                        in the head's backward: the ReLU's saved output stays in its buffer */
  /* profile (LATHE_PROFILE=1 or lt_exec_profile_enable) */
  int prof_on;
  int prof_env; /* LATHE_PROFILE set: print the profile on stderr when the executor is freed */
  double *prof;      /* (4F) forward then backward wall seconds per node, then the same in
                        process CPU seconds */
  double prof_exec[2], prof_zero, prof_exec_cpu[2], prof_zero_cpu;
  int64_t prof_steps[2];
  /* batch split (inference on the CPU backend, see exec_split_plan) */
  int n_split;       /* child executors, 0: none */
  lt_exec **split;   /* (n_split) one contiguous slice of the batch each */
  int *split_first;  /* (n_split) the slice's first image */
  int split_on;      /* forwards go through the children (lt_exec_set_batch_split) */
  int split_last;    /* the last forward ran split: only inputs and outputs hold its values */
  lt_status *split_st; /* (n_split) each slice's status in the last split forward */
  lt_err *split_err;   /* (n_split) and its error */
  int is_child;      /* a child: plans like its parent, never splits, prints no profile */
  int arenas_ready;  /* arenas and workspace allocated (a splitting executor does it only when a
                        forward runs unsplit) */
  unsigned fuse_off; /* LT_FUSE_* kinds turned off by lt_exec_set_fusion */
  /* BatchNorm folding (inference on the CPU backend, see plan_fold) */
  int *fold_bn;      /* (F) for a Conv2d whose BatchNorm is folded into it, that BN; -1 otherwise */
  char *bn_folded;   /* (F) 1 for a BatchNorm folded into the Conv2d before it */
  lt_tensor *fold;   /* (2F) folded weight and bias of each folding Conv2d (a child's point at
                        its parent's, which the parent refolds before each forward) */
  int n_fold;
  /* residual Add fusion (inference on the CPU backend, see plan_residual) */
  int *res_add;      /* (F) for a Conv2d that runs the Add after it (and its BN), that Add; -1 */
  int *res_val;      /* (F) the value that Add adds to the conv's (BN's) output */
  int *res_conv;     /* (F) for an Add so fused, its Conv2d; -1 otherwise */
  /* Slice chains (inference on the CPU backend, see plan_window) */
  int *win_tail;     /* (F) for the first node of a fused chain, the chain's last node; -1 */
  char *win_skip;    /* (F) 1 for a chain node after the first: the first one does its work */
  lt_op_window *win; /* (F) the composed window of each chain's first node */
};

/* ---- arena packing ------------------------------------------------------------------------- */

static int64_t align64(int64_t x) { return (x + 63) & ~(int64_t)63; }

static int buf_by_size(const void *a, const void *b) {
  const exec_buf *x = *(exec_buf *const *)a, *y = *(exec_buf *const *)b;
  if (x->bytes != y->bytes) return x->bytes < y->bytes ? 1 : -1;
  return x->start - y->start;
}
static int buf_by_offset(const void *a, const void *b) {
  const exec_buf *x = *(exec_buf *const *)a, *y = *(exec_buf *const *)b;
  return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* Places the arena's buffers; returns its size in bytes, or -1 when out of memory. Largest
 * first, each at the lowest offset where it fits between buffers alive at the same time. */
static int64_t arena_pack(exec_buf *bufs, int n, int arena, int reuse) {
  exec_buf **mine = malloc(sizeof *mine * ((size_t)n + 1));
  exec_buf **overlap = malloc(sizeof *overlap * ((size_t)n + 1));
  int64_t total = -1;
  if (!mine || !overlap) goto done;
  int m = 0;
  for (int i = 0; i < n; i++)
    if (bufs[i].arena == arena) mine[m++] = &bufs[i];
  qsort(mine, (size_t)m, sizeof *mine, buf_by_size);
  total = 0;
  for (int i = 0; i < m; i++) {
    exec_buf *b = mine[i];
    int64_t size = align64(b->bytes), at = 0;
    if (reuse) {
      int k = 0;
      for (int j = 0; j < i; j++)
        if (mine[j]->start <= b->end && b->start <= mine[j]->end) overlap[k++] = mine[j];
      qsort(overlap, (size_t)k, sizeof *overlap, buf_by_offset);
      for (int j = 0; j < k; j++) {
        if (overlap[j]->offset >= at + size) break;
        int64_t end = overlap[j]->offset + align64(overlap[j]->bytes);
        if (end > at) at = end;
      }
    } else {
      at = total;
    }
    b->offset = at;
    if (at + size > total) total = at + size;
  }
done:
  free(mine);
  free(overlap);
  return total;
}

/* ---- planning helpers ------------------------------------------------------------------------ */

static lt_status exec_add_buf(lt_exec *ex, lt_tensor *t, int start, int end, int arena,
                              lt_mem_cat cat, lt_err *err) {
  if (ex->n_bufs == ex->cap_bufs) {
    int cap = ex->cap_bufs ? 2 * ex->cap_bufs : 256;
    exec_buf *nb = realloc(ex->bufs, sizeof *nb * (size_t)cap);
    if (!nb) return lt_errorf(err, LT_ERR_NOMEM, "out of memory planning %d buffers", cap);
    ex->bufs = nb;
    ex->cap_bufs = cap;
  }
  ex->bufs[ex->n_bufs++] = (exec_buf){.t = t, .bytes = (int64_t)lt_tensor_nbytes(t),
                                      .start = start, .end = end, .arena = arena, .cat = cat};
  return LT_OK;
}

static void tensor_header(lt_tensor *t, lt_dtype dtype, int ndim, const int64_t *shape,
                          int device, lt_mem_cat cat) {
  memset(t, 0, sizeof *t);
  t->dtype = dtype;
  t->ndim = ndim;
  memcpy(t->shape, shape, sizeof(int64_t) * (size_t)ndim);
  t->device = device;
  t->cat = cat;
}

/* The tensor a node input reads: a batched value, or a parameter (graph memory on host
 * backends, the executor's device copy otherwise). */
static lt_tensor *exec_tensor(lt_exec *ex, int v) {
  const lt_value *val = &ex->g->values[v];
  if (!lt_value_batched(val) && ex->be->device < 0) return val->data;
  return &ex->val[v];
}

static int fwd_step(const lt_exec *ex, int i) { return i; }
static int bwd_step(const lt_exec *ex, int i) { return 2 * ex->F - 1 - i; }

static int is_output(const lt_graph *g, int v) {
  for (int i = 0; i < g->n_outputs; i++)
    if (g->outputs[i] == v) return 1;
  return 0;
}

/* Which values need a gradient: those that depend on a trainable parameter and reach an
 * output. Graph inputs never get one. */
static lt_status plan_need_grad(lt_exec *ex, lt_err *err) {
  const lt_graph *g = ex->g;
  char *dep = calloc((size_t)g->n_values + 1, 1), *reach = calloc((size_t)g->n_values + 1, 1);
  lt_status st = LT_OK;
  if (!dep || !reach) {
    st = lt_errorf(err, LT_ERR_NOMEM, "out of memory finding which values need gradients");
    goto done;
  }
  for (int v = 0; v < g->n_values; v++) dep[v] = g->values[v].kind == LT_VALUE_PARAM && g->values[v].trainable;
  for (int i = 0; i < g->n_nodes; i++) {
    const lt_node *n = &g->nodes[i];
    for (int k = 0; k < n->n_in; k++) dep[n->out[0]] |= dep[n->in[k]];
  }
  for (int i = 0; i < g->n_outputs; i++) reach[g->outputs[i]] = 1;
  for (int i = g->n_nodes - 1; i >= 0; i--) {
    const lt_node *n = &g->nodes[i];
    if (!reach[n->out[0]]) continue;
    for (int k = 0; k < n->n_in; k++) reach[n->in[k]] = 1;
  }
  for (int v = 0; v < g->n_values; v++) {
    const lt_value *val = &g->values[v];
    ex->need_grad[v] = dep[v] && reach[v] && (val->kind == LT_VALUE_ACT || val->trainable);
  }
done:
  free(dep);
  free(reach);
  return st;
}

/* Value and aux tensors, with the lifetimes forward alone gives them. */
static lt_status plan_forward(lt_exec *ex, int *first, int *last, lt_err *err) {
  lt_graph *g = ex->g;
  for (int v = 0; v < g->n_values; v++) {
    const lt_value *val = &g->values[v];
    first[v] = INT_MAX;
    last[v] = -1;
    if (lt_value_batched(val)) {
      int64_t shape[LT_MAX_DIMS];
      shape[0] = ex->batch;
      memcpy(shape + 1, val->shape, sizeof(int64_t) * (size_t)val->ndim);
      tensor_header(&ex->val[v], val->dtype, val->ndim + 1, shape, ex->be->device,
                    LT_MEM_ACTIVATIONS);
      if (val->kind == LT_VALUE_ACT) first[v] = last[v] = val->producer;
    } else if (val->data) {
      tensor_header(&ex->val[v], val->dtype, val->ndim, val->shape, ex->be->device,
                    LT_MEM_WEIGHTS);
    }
  }
  for (int i = 0; i < ex->F; i++) {
    const lt_node *n = &g->nodes[i];
    if (n->n_out != 1)
      return lt_op_fail(err, LT_ERR_UNSUPPORTED, n, "has %d outputs; the executor runs "
                        "single-output nodes", n->n_out);
    if (!ex->be->vt->supports(ex->be, g, i))
      return lt_op_fail(err, LT_ERR_UNSUPPORTED, n, "backend '%s' cannot run this op",
                        ex->be->vt->name);
    for (int k = 0; k < n->n_in; k++)
      if (last[n->in[k]] < i) last[n->in[k]] = i;
    const lt_op_desc *d = lt_op_get(n->op);
    exec_node *en = &ex->nodes[i];
    lt_op_aux aux[LT_MAX_IO];
    en->n_aux = d->aux ? d->aux(g, n, ex->mode, ex->batch, aux) : 0;
    for (int k = 0; k < en->n_aux; k++)
      tensor_header(&en->aux[k], aux[k].dtype, aux[k].ndim, aux[k].shape, ex->be->device,
                    LT_MEM_ACTIVATIONS);
    size_t ws = ex->be->vt->workspace_bytes(ex->be, g, i, ex->batch);
    if (ws > ex->ws_bytes) ex->ws_bytes = ws;
  }
  return LT_OK;
}

/* How many inputs of the forward nodes read value v (a node reading it twice counts twice). */
static int forward_readers(const lt_exec *ex, int v) {
  const lt_graph *g = ex->g;
  int uses = 0;
  for (int k = 0; k < ex->F; k++)
    for (int s = 0; s < g->nodes[k].n_in; s++) uses += g->nodes[k].in[s] == v;
  return uses;
}

/* Which ReLUs run inside the node before them: the ReLU must be the only consumer of a value
 * that is no graph output, produced by a node the CPU kernels can fuse with it. The ReLU's output
 * is then written at the head's step, so its lifetime starts there. */
static void plan_fusion(lt_exec *ex, int *first) {
  const lt_graph *g = ex->g;
  for (int i = 0; i < ex->F; i++) ex->fuse_relu[i] = -1;
  if (ex->be->device >= 0 || ex->opts.no_fuse || ex->opts.no_reuse) return;
  for (int j = 0; j < ex->F; j++) {
    const lt_node *r = &g->nodes[j];
    if (r->op != LT_OP_RELU || r->n_in != 1) continue;
    int v = r->in[0];
    const lt_value *val = &g->values[v];
    if (val->kind != LT_VALUE_ACT || is_output(g, v)) continue;
    int i = val->producer, uses = forward_readers(ex, v);
    if (i < 0 || i >= j) continue;
    if (uses != 1 || ex->fuse_relu[i] >= 0 || ex->fused_tail[i]) continue;
    if (!lt_op_cpu_relu_fusable(g, &g->nodes[i])) continue;
    ex->fuse_relu[i] = j;
    ex->fused_tail[j] = 1;
    int out = r->out[0];
    if (first[out] > i) first[out] = i;
  }
}

/* Which values share another's buffer: those a fused forward never writes. In an unfused forward
 * (a hook, lt_exec_set_fusion) each is written at its producer's step and read once, by the node
 * that the fused kernel stands in for, which writes its own output over it in place:
 *   - a fused head's own output (the BatchNorm's or Add's, before its ReLU), read by the ReLU;
 *   - an inference conv's output whose BatchNorm is folded into it, read by the BN;
 *   - an inference conv's (or folded BN's) output whose residual Add runs in its epilogue, read
 *     by the Add.
 * Each shares the buffer of the value the fused kernel writes instead, followed to the end of such
 * links (conv → BN → Add → ReLU is one buffer), which already lives from the fused writer's step
 * (plan_fusion, plan_fold, plan_residual). Without this, every fused step held a dead buffer
 * beside its input and output. Only when that buffer is in an arena (not a graph output, whose
 * memory a split forward swaps) and lives at least as long. Runs after plan_saves, which extends
 * lifetimes; without memory for its scratch it shares nothing. */
static void plan_alias(lt_exec *ex, const int *first, const int *last) {
  const lt_graph *g = ex->g;
  for (int v = 0; v < g->n_values; v++) ex->alias[v] = -1;
  int *next = malloc(sizeof *next * ((size_t)g->n_values + 1));
  if (!next) return;
  for (int v = 0; v < g->n_values; v++) next[v] = -1;
  for (int i = 0; i < ex->F; i++) {
    const int out = g->nodes[i].out[0];
    if (ex->fuse_relu[i] >= 0) next[out] = g->nodes[ex->fuse_relu[i]].out[0];
    if (ex->fold_bn[i] >= 0) next[out] = g->nodes[ex->fold_bn[i]].out[0];
    if (ex->res_add[i] >= 0) {
      const lt_node *a = &g->nodes[ex->res_add[i]];
      next[a->in[0] == ex->res_val[i] ? a->in[1] : a->in[0]] = a->out[0];
    }
  }
  for (int v = 0; v < g->n_values; v++) {
    int o = next[v];
    if (o < 0) continue;
    for (int k = 0; next[o] >= 0 && k < g->n_values; k++) o = next[o];
    if (is_output(g, o) || is_output(g, v)) continue;
    const int end_v = last[v] < first[v] ? first[v] : last[v];
    const int end_o = last[o] < first[o] ? first[o] : last[o];
    if (first[o] <= first[v] && end_v <= end_o) ex->alias[v] = o;
  }
  free(next);
}

/* Which inference BatchNorms fold into the Conv2d before them: the BN's input must be a conv
 * output that nothing else reads and no graph output, and the conv's weights (and bias) and the
 * BN's parameters must be graph tensors. The conv then runs with w' = w * g/sqrt(v + eps) per
 * output channel and bias b' = (b - mean) * g/sqrt(v + eps) + beta, writing the BN's output (or,
 * when the BN's ReLU is fused, relu of it: the ReLU's output); the BN is skipped. The folded
 * tensors are recomputed before every forward (a few multiplies per weight): the parameters may
 * change between forwards, as when a training executor shares the graph. The BN's (and the
 * ReLU's) output then lives from the conv's step; the unfused nodes still find their buffers when
 * folding is off for a forward (a hook, lt_exec_set_fusion). */
static void plan_fold(lt_exec *ex, int *first) {
  const lt_graph *g = ex->g;
  for (int i = 0; i < ex->F; i++) ex->fold_bn[i] = -1;
  if (ex->mode != LT_MODE_INFER || ex->be->device >= 0 || ex->opts.no_fuse || ex->opts.no_reuse)
    return;
  for (int j = 0; j < ex->F; j++) {
    const lt_node *b = &g->nodes[j];
    if (b->op != LT_OP_BATCHNORM || b->n_in != 5) continue;
    const int v = b->in[0];
    const lt_value *val = &g->values[v];
    if (val->kind != LT_VALUE_ACT || is_output(g, v) || val->ndim < 1) continue;
    const int i = val->producer;
    if (i < 0 || i >= j || g->nodes[i].op != LT_OP_CONV2D || ex->fold_bn[i] >= 0) continue;
    const lt_node *c = &g->nodes[i];
    int uses = forward_readers(ex, v), ok = 1;
    for (int s = 1; s < c->n_in; s++) {
      const lt_value *p = &g->values[c->in[s]];
      ok &= !lt_value_batched(p) && p->data && p->data->dtype == LT_F32;
    }
    for (int s = 1; s < 5; s++) {
      const lt_value *p = &g->values[b->in[s]];
      ok &= !lt_value_batched(p) && p->data && p->data->dtype == LT_F32 &&
            lt_tensor_numel(p->data) == val->shape[0];
    }
    const lt_tensor *w = g->values[c->in[1]].data;
    if (uses != 1 || !ok || w->ndim != 4 || w->shape[0] != val->shape[0]) continue;
    ex->fold_bn[i] = j;
    ex->bn_folded[j] = 1;
    ex->n_fold++;
    tensor_header(&ex->fold[2 * i], LT_F32, 4, w->shape, -1, LT_MEM_WEIGHTS);
    tensor_header(&ex->fold[2 * i + 1], LT_F32, 1, w->shape, -1, LT_MEM_WEIGHTS);
    int out = b->out[0];
    if (first[out] > i) first[out] = i;
    if (ex->fuse_relu[j] >= 0 && first[g->nodes[ex->fuse_relu[j]].out[0]] > i)
      first[g->nodes[ex->fuse_relu[j]].out[0]] = i;
  }
}

/* Which residual Adds run in the Conv2d before them (inference, CPU): an Add of two operands of
 * one shape, one of them the output of a Conv2d, or of a BatchNorm folded into one, that nothing
 * else reads, the other (the residual) computed before that conv. The conv's epilogue then
 * writes act(conv + b + residual) into the Add's output (the ReLU's, when the Add's ReLU is
 * fused), and the Add is skipped. The Add's (and ReLU's) output lives from the conv's step. */
static void plan_residual(lt_exec *ex, int *first) {
  const lt_graph *g = ex->g;
  for (int i = 0; i < ex->F; i++) ex->res_add[i] = ex->res_conv[i] = ex->res_val[i] = -1;
  if (ex->mode != LT_MODE_INFER || ex->be->device >= 0 || ex->opts.no_fuse || ex->opts.no_reuse)
    return;
  for (int a = 0; a < ex->F; a++) {
    const lt_node *add = &g->nodes[a];
    if (!lt_op_add_flat(g, add) || add->in[0] == add->in[1]) continue;
    for (int side = 0; side < 2; side++) {
      const int u = add->in[side], r = add->in[1 - side];
      const lt_value *uv = &g->values[u], *rv = &g->values[r];
      if (uv->kind != LT_VALUE_ACT || is_output(g, u) || uv->producer < 0) continue;
      int i = uv->producer;
      if (ex->bn_folded[i]) { /* conv -> folded BN -> Add */
        const int bin = g->nodes[i].in[0];
        i = g->values[bin].producer;
      } else if (g->nodes[i].op != LT_OP_CONV2D || ex->fold_bn[i] >= 0) {
        continue;
      }
      if (i < 0 || g->nodes[i].op != LT_OP_CONV2D || ex->res_add[i] >= 0) continue;
      const int uses = forward_readers(ex, u);
      const int rp = rv->kind == LT_VALUE_ACT ? rv->producer : -1;
      if (uses != 1 || !lt_value_batched(rv) || rp >= i) continue;
      ex->res_add[i] = a;
      ex->res_val[i] = r;
      ex->res_conv[a] = i;
      if (first[add->out[0]] > i) first[add->out[0]] = i;
      if (ex->fuse_relu[a] >= 0 && first[g->nodes[ex->fuse_relu[a]].out[0]] > i)
        first[g->nodes[ex->fuse_relu[a]].out[0]] = i;
      break;
    }
  }
}

/* Which chains of Slices (the last may be a Pad) run as one strided copy (inference, CPU): each
 * value between two nodes of the chain is read by the next one only and is no graph output, and
 * the nodes compose into one window of the chain's input (lt_op_window_then). The first node then
 * writes the last one's output straight from the chain's input, while that input is fresh in
 * cache, and the others are skipped; the last output lives from the first node's step, and the
 * skipped nodes' buffers stay planned for forwards with the fusion off. ResNet's option-A
 * shortcut, x[:, :, ::2, ::2] then zero channels on both sides, is such a chain of three. */
static void plan_window(lt_exec *ex, int *first) {
  enum { MAX_CHAIN = 16 };
  const lt_graph *g = ex->g;
  for (int i = 0; i < ex->F; i++) ex->win_tail[i] = -1;
  if (ex->mode != LT_MODE_INFER || ex->be->device >= 0 || ex->opts.no_fuse || ex->opts.no_reuse)
    return;
  for (int t = ex->F - 1; t >= 0; t--) {
    const lt_node *tn = &g->nodes[t];
    if ((tn->op != LT_OP_SLICE && tn->op != LT_OP_PAD) || ex->win_skip[t]) continue;
    int chain[MAX_CHAIN], n = 0; /* last node first */
    chain[n++] = t;
    while (n < MAX_CHAIN) { /* back while the input is a Slice's that only the chain reads */
      const int v = g->nodes[chain[n - 1]].in[0];
      const lt_value *val = &g->values[v];
      const int p = val->kind == LT_VALUE_ACT ? val->producer : -1;
      if (p < 0 || g->nodes[p].op != LT_OP_SLICE || is_output(g, v)) break;
      if (forward_readers(ex, v) != 1) break;
      chain[n++] = p;
    }
    if (n < 2) continue;
    const int h = chain[n - 1], x = g->nodes[h].in[0];
    lt_op_window *w = &ex->win[h];
    lt_op_window_init(w, ex->val[x].ndim, ex->val[x].shape);
    int ok = 1;
    for (int k = n - 1; k >= 0 && ok; k--) ok = !lt_op_window_then(w, g, &g->nodes[chain[k]], NULL);
    if (!ok) continue;
    ex->win_tail[h] = t;
    for (int k = 0; k < n - 1; k++) ex->win_skip[chain[k]] = 1;
    if (first[tn->out[0]] > h) first[tn->out[0]] = h;
  }
}

/* The folded weights and biases from the graph's current parameters (see plan_fold). */
static void exec_refold(lt_exec *ex) {
  const lt_graph *g = ex->g;
  for (int i = 0; i < ex->F; i++) {
    const int j = ex->fold_bn[i];
    if (j < 0) continue;
    const lt_node *c = &g->nodes[i], *b = &g->nodes[j];
    const lt_tensor *wt = g->values[c->in[1]].data;
    const float *w = lt_tensor_f32(wt);
    const float *bias = c->n_in > 2 ? lt_tensor_f32(g->values[c->in[2]].data) : NULL;
    const float *gamma = lt_tensor_f32(g->values[b->in[1]].data);
    const float *beta = lt_tensor_f32(g->values[b->in[2]].data);
    const float *mean = lt_tensor_f32(g->values[b->in[3]].data);
    const float *var = lt_tensor_f32(g->values[b->in[4]].data);
    float *fw = lt_tensor_f32(&ex->fold[2 * i]), *fb = lt_tensor_f32(&ex->fold[2 * i + 1]);
    const int64_t S = wt->shape[0], per = lt_tensor_numel(wt) / S;
    for (int64_t o = 0; o < S; o++) {
      /* the same scale and shift as the BN kernel (lt_cpu_bn_fwd_infer_ex) */
      const float invstd = 1.0f / sqrtf(var[o] + b->a.eps), k = gamma[o] * invstd;
      /* Subnormal products (a channel whose gamma is almost 0 gives weights near 1e-40) become
       * 0: the kernels would run at a fraction of their speed on them (microcode assists), for
       * a contribution below 1e-38. */
      const float *restrict wo = w + o * per;
      float *restrict fo = fw + o * per;
#pragma omp simd
      for (int64_t e = 0; e < per; e++) {
        const float v = wo[e] * k;
        fo[e] = fabsf(v) < FLT_MIN ? 0.0f : v;
      }
      const float sh = (bias ? bias[o] : 0.0f) * k + (beta[o] - mean[o] * k);
      fb[o] = fabsf(sh) < FLT_MIN ? 0.0f : sh;
    }
  }
}

/* What each backward-running node saves, kept in place or offered to the policy. */
static lt_status plan_saves(lt_exec *ex, int *last, int *aux_last, lt_err *err) {
  lt_graph *g = ex->g;
  const lt_stash_policy *pol = ex->opts.stash;
  char *counted = calloc((size_t)g->n_values + 1, 1); /* dense bytes count each value once */
  if (!counted) return lt_errorf(err, LT_ERR_NOMEM, "out of memory planning the stash");
  for (int i = 0; i < ex->F; i++) {
    const lt_node *n = &g->nodes[i];
    const lt_op_desc *d = lt_op_get(n->op);
    exec_node *en = &ex->nodes[i];
    for (int k = 0; k < en->n_aux; k++) aux_last[i * LT_MAX_IO + k] = fwd_step(ex, i);
    if (!en->backward) continue;
    /* Aux that the op reads in backward without saving it (BN batch statistics) stays. */
    for (int k = 0; k < en->n_aux; k++) aux_last[i * LT_MAX_IO + k] = bwd_step(ex, i);
    lt_op_save sv[LT_MAX_IO];
    en->n_saves = d->saves ? d->saves(g, n, sv) : 0;
    for (int s = 0; s < en->n_saves; s++) {
      exec_save *es = &en->saves[s];
      es->kind = sv[s].kind;
      es->value = sv[s].src == LT_SAVE_SRC_IN ? n->in[sv[s].idx]
                  : sv[s].src == LT_SAVE_SRC_OUT ? n->out[sv[s].idx] : -1;
      es->src = es->value >= 0 ? exec_tensor(ex, es->value) : &en->aux[sv[s].idx];
      es->is_param = es->value >= 0 && !lt_value_batched(&g->values[es->value]);
      if (es->is_param) continue;
      es->kept = pol ? pol->keeps_buffer(pol->user, g, i, s, es->kind) : 1;
      int64_t bytes = (int64_t)lt_tensor_nbytes(es->src);
      if (es->value < 0 || !counted[es->value]) ex->saved_dense += bytes;
      if (es->value >= 0) counted[es->value] = 1;
      if (es->kept) {
        if (es->value >= 0) {
          if (last[es->value] < bwd_step(ex, i)) last[es->value] = bwd_step(ex, i);
        } else {
          aux_last[i * LT_MAX_IO + sv[s].idx] = bwd_step(ex, i);
        }
      } else {
        if (es->value < 0) aux_last[i * LT_MAX_IO + sv[s].idx] = fwd_step(ex, i);
        es->restore = *es->src;
        es->restore.cat = LT_MEM_ACTIVATIONS;
        lt_status st = exec_add_buf(ex, &es->restore, bwd_step(ex, i), bwd_step(ex, i),
                                    ARENA_ACT, LT_MEM_ACTIVATIONS, err);
        if (st) {
          free(counted);
          return st;
        }
      }
    }
  }
  /* Backward fusion of the fused pairs whose ReLU output stays in place. */
  for (int i = 0; i < ex->F; i++) {
    int j = ex->fuse_relu[i];
    if (j < 0 || !ex->nodes[i].backward || !ex->nodes[j].backward) continue;
    const exec_save *es = &ex->nodes[j].saves[0];
    if (ex->nodes[j].n_saves != 1 || es->is_param || !es->kept) continue;
    ex->bwd_fused[i] = ex->bwd_fused[j] = 1;
    if (last[es->value] < bwd_step(ex, i)) last[es->value] = bwd_step(ex, i);
  }
  /* Kept bytes: each distinct buffer once (a value saved by two nodes is held once). */
  memset(counted, 0, (size_t)g->n_values + 1);
  for (int i = 0; i < ex->F; i++) {
    exec_node *en = &ex->nodes[i];
    for (int k = 0; k < en->n_aux; k++)
      if (en->backward) {
        int stashed = 0;
        for (int s = 0; s < en->n_saves; s++) stashed |= en->saves[s].src == &en->aux[k];
        if (!stashed) ex->saved_dense += (int64_t)lt_tensor_nbytes(&en->aux[k]);
        if (aux_last[i * LT_MAX_IO + k] > fwd_step(ex, i))
          ex->saved_kept += (int64_t)lt_tensor_nbytes(&en->aux[k]);
      }
    for (int s = 0; s < en->n_saves; s++) {
      exec_save *es = &en->saves[s];
      if (es->is_param || !es->kept || es->value < 0 || counted[es->value]) continue;
      counted[es->value] = 1;
      ex->saved_kept += (int64_t)lt_tensor_nbytes(es->src);
    }
  }
  free(counted);
  return LT_OK;
}

/* Gradient tensors, accumulate flags, and which input slots each backward node writes. */
static lt_status plan_backward(lt_exec *ex, lt_err *err) {
  lt_graph *g = ex->g;
  const lt_stash_policy *pol = ex->opts.stash;
  char *written = calloc((size_t)g->n_values + 1, 1);
  int *gfirst = malloc(sizeof(int) * ((size_t)g->n_values + 1));
  lt_status st = LT_OK;
  if (!written || !gfirst) {
    st = lt_errorf(err, LT_ERR_NOMEM, "out of memory planning gradients");
    goto done;
  }
  for (int v = 0; v < g->n_values; v++) {
    gfirst[v] = INT_MAX;
    if (!ex->need_grad[v]) continue;
    ex->grad[v] = ex->val[v];
    ex->grad[v].cat = LT_MEM_GRADIENTS;
    /* Output gradients are filled by the caller; parameter gradients persist across steps. */
    if (is_output(g, v) || g->values[v].kind == LT_VALUE_PARAM) written[v] = 1;
  }
  for (int i = ex->F - 1; i >= 0; i--) {
    const lt_node *n = &g->nodes[i];
    exec_node *en = &ex->nodes[i];
    if (!en->backward) continue;
    const lt_op_desc *d = lt_op_get(n->op);
    en->observed = pol && pol->observe && d->weight_grad && n->n_in > 1 &&
                   ex->need_grad[n->in[1]];
    for (int k = 0; k < n->n_in; k++) {
      int v = n->in[k];
      if (!ex->need_grad[v]) continue;
      if (en->observed && (k == 1 || k == 2)) {
        en->acc[k] = 0; /* this step's dW alone, added to the parameter gradient after observe */
        continue;
      }
      en->acc[k] = written[v];
      written[v] = 1;
      if (gfirst[v] > bwd_step(ex, i)) gfirst[v] = bwd_step(ex, i);
    }
    if (en->observed) {
      size_t bytes = lt_tensor_nbytes(&ex->val[n->in[1]]);
      if (n->n_in > 2) bytes += lt_tensor_nbytes(&ex->val[n->in[2]]);
      if (bytes > ex->obs_bytes) ex->obs_bytes = bytes;
    }
  }
  for (int v = 0; v < g->n_values; v++) {
    if (!ex->need_grad[v] || g->values[v].kind != LT_VALUE_ACT) continue;
    if (is_output(g, v)) {
      st = exec_add_buf(ex, &ex->grad[v], 0, INT_MAX, ARENA_DEDICATED, LT_MEM_GRADIENTS, err);
    } else if (gfirst[v] == INT_MAX) {
      continue; /* no consumer writes it: the producer's backward gets no dout (cannot happen
                   for values that reach an output) */
    } else {
      /* a fused ReLU's output gradient is read in its head node's backward */
      int p = g->values[v].producer, end = bwd_step(ex, p);
      if (ex->fused_tail[p] && ex->bwd_fused[p])
        for (int h = 0; h < p; h++)
          if (ex->fuse_relu[h] == p) end = bwd_step(ex, h);
      st = exec_add_buf(ex, &ex->grad[v], gfirst[v], end, ARENA_GRAD, LT_MEM_GRADIENTS, err);
    }
    if (st) goto done;
  }
done:
  free(written);
  free(gfirst);
  return st;
}

static lt_status exec_plan(lt_exec *ex, lt_err *err) {
  lt_graph *g = ex->g;
  int *first = malloc(sizeof(int) * ((size_t)g->n_values + 1));
  int *last = malloc(sizeof(int) * ((size_t)g->n_values + 1));
  int *aux_last = malloc(sizeof(int) * ((size_t)ex->F * LT_MAX_IO + 1));
  lt_status st = LT_OK;
  if (!first || !last || !aux_last) {
    st = lt_errorf(err, LT_ERR_NOMEM, "out of memory planning %d values", g->n_values);
    goto done;
  }
  if ((st = plan_forward(ex, first, last, err))) goto done;
  plan_fusion(ex, first);
  plan_fold(ex, first);
  plan_residual(ex, first);
  plan_window(ex, first);
  if (ex->mode == LT_MODE_TRAIN) {
    if ((st = plan_need_grad(ex, err))) goto done;
    for (int i = 0; i < ex->F; i++) ex->nodes[i].backward = ex->need_grad[g->nodes[i].out[0]];
  }
  if ((st = plan_saves(ex, last, aux_last, err))) goto done;
  if (ex->mode == LT_MODE_TRAIN && (st = plan_backward(ex, err))) goto done;
  plan_alias(ex, first, last);
  /* Values: inputs and outputs dedicated, the rest in the activation or saved arena. */
  for (int v = 0; v < g->n_values; v++) {
    const lt_value *val = &g->values[v];
    if (!lt_value_batched(val)) continue;
    if (ex->alias[v] >= 0) {
      ex->live_end[v] = -1; /* never holds its value after the forward */
    } else if (val->kind == LT_VALUE_INPUT || is_output(g, v)) {
      ex->live_end[v] = INT_MAX;
      st = exec_add_buf(ex, &ex->val[v], 0, INT_MAX, ARENA_DEDICATED,
                        val->kind == LT_VALUE_INPUT ? LT_MEM_DATA : LT_MEM_ACTIVATIONS, err);
    } else {
      int end = last[v] < first[v] ? first[v] : last[v];
      ex->live_end[v] = ex->opts.no_reuse ? INT_MAX : end;
      st = exec_add_buf(ex, &ex->val[v], first[v], end,
                        end >= ex->F ? ARENA_SAVED : ARENA_ACT, LT_MEM_ACTIVATIONS, err);
    }
    if (st) goto done;
  }
  for (int i = 0; i < ex->F; i++)
    for (int k = 0; k < ex->nodes[i].n_aux; k++) {
      int end = aux_last[i * LT_MAX_IO + k];
      st = exec_add_buf(ex, &ex->nodes[i].aux[k], fwd_step(ex, i), end,
                        end >= ex->F ? ARENA_SAVED : ARENA_ACT, LT_MEM_ACTIVATIONS, err);
      if (st) goto done;
    }
done:
  free(first);
  free(last);
  free(aux_last);
  return st;
}

/* ---- memory ---------------------------------------------------------------------------------- */

static void *exec_alloc(lt_exec *ex, size_t bytes, lt_mem_cat cat, lt_err *err) {
  return ex->be->vt->alloc(ex->be, bytes ? bytes : 1, cat, err);
}

/* The arenas and the workspace, and the data pointers of the buffers placed in them. */
static lt_status exec_allocate_arenas(lt_exec *ex, lt_err *err) {
  if (ex->arenas_ready) return LT_OK;
  for (int a = 0; a < ARENA_COUNT; a++) {
    const int64_t size = ex->arena_bytes[a];
    if (!(ex->arena[a] = exec_alloc(ex, (size_t)size, arena_cat[a], err)))
      return lt_err_prefix(err, "allocating %lld bytes of %s for batch %d", (long long)size,
                           lt_mem_cat_name(arena_cat[a]), ex->batch);
  }
  for (int b = 0; b < ex->n_bufs; b++) {
    exec_buf *eb = &ex->bufs[b];
    if (eb->arena != ARENA_DEDICATED) eb->t->data = (char *)ex->arena[eb->arena] + eb->offset;
  }
  for (int v = 0; v < ex->g->n_values; v++)
    if (ex->alias[v] >= 0) ex->val[v].data = ex->val[ex->alias[v]].data;
  if (ex->ws_bytes && !(ex->ws = exec_alloc(ex, ex->ws_bytes, LT_MEM_WORKSPACE, err)))
    return lt_err_prefix(err, "allocating %zu bytes of workspace", ex->ws_bytes);
  ex->arenas_ready = 1;
  return LT_OK;
}

static lt_status exec_allocate(lt_exec *ex, lt_err *err) {
  lt_backend *be = ex->be;
  /* arena sizes and offsets are planned now; their memory when a forward needs it */
  for (int a = 0; a < ARENA_COUNT; a++) {
    int64_t size = arena_pack(ex->bufs, ex->n_bufs, a, !ex->opts.no_reuse);
    if (size < 0) return lt_errorf(err, LT_ERR_NOMEM, "out of memory packing buffers");
    ex->arena_bytes[a] = size;
  }
  if (!ex->n_split) {
    lt_status st = exec_allocate_arenas(ex, err);
    if (st) return st;
  }
  for (int b = 0; b < ex->n_bufs; b++) {
    exec_buf *eb = &ex->bufs[b];
    if (eb->arena != ARENA_DEDICATED) continue;
    if (!(eb->t->data = exec_alloc(ex, (size_t)eb->bytes, eb->cat, err)))
      return lt_err_prefix(err, "allocating a %s buffer", lt_mem_cat_name(eb->cat));
    eb->t->owned = 1;
    ex->dedicated_bytes += eb->bytes;
    lt_status st = be->vt->memset0(be, eb->t->data, (size_t)eb->bytes, err);
    if (st) return st;
  }
  for (int i = 0; i < ex->F && !ex->is_child; i++)
    for (int k = 0; k < 2 && ex->fold_bn[i] >= 0; k++) {
      lt_tensor *t = &ex->fold[2 * i + k];
      if (!(t->data = exec_alloc(ex, lt_tensor_nbytes(t), LT_MEM_WEIGHTS, err)))
        return lt_err_prefix(err, "allocating a folded convolution");
      t->owned = 1;
    }
  if (ex->obs_bytes && !(ex->obs = exec_alloc(ex, ex->obs_bytes, LT_MEM_WORKSPACE, err)))
    return lt_err_prefix(err, "allocating the observe() scratch");
  /* Parameters: device copies on device backends, gradients for trainable ones. */
  for (int v = 0; v < ex->g->n_values; v++) {
    const lt_value *val = &ex->g->values[v];
    if (lt_value_batched(val) || !val->data) continue;
    size_t bytes = lt_tensor_nbytes(val->data);
    if (be->device >= 0) {
      if (!(ex->val[v].data = exec_alloc(ex, bytes, LT_MEM_WEIGHTS, err)))
        return lt_err_prefix(err, "allocating parameter '%s'", val->name);
      ex->val[v].owned = 1;
      lt_status st = be->vt->to_device(be, ex->val[v].data, val->data->data, bytes, err);
      if (st) return st;
    }
    if (ex->need_grad[v]) {
      if (!(ex->grad[v].data = exec_alloc(ex, bytes, LT_MEM_GRADIENTS, err)))
        return lt_err_prefix(err, "allocating the gradient of '%s'", val->name);
      ex->grad[v].owned = 1;
      ex->param_grad_bytes += (int64_t)bytes;
      lt_status st = be->vt->memset0(be, ex->grad[v].data, bytes, err);
      if (st) return st;
    }
  }
  return LT_OK;
}

void lt_exec_free(lt_exec *ex) {
  if (!ex) return;
  if (ex->prof_env && ex->prof_on && ex->prof) {
    int64_t sf = 0, sb = 0;
    lt_exec_profile_row row;
    lt_exec_profile_get(ex, &row, 1, &sf, &sb);
    if (sf || sb) {
      fprintf(stderr, "LATHE_PROFILE: executor of batch %d (%s)\n", ex->batch,
              ex->mode == LT_MODE_TRAIN ? "train" : "infer");
      lt_exec_profile_print(ex, stderr);
    }
  }
  if (ex->split)
    for (int t = 0; t < ex->n_split; t++) lt_exec_free(ex->split[t]);
  free(ex->split);
  free(ex->split_first);
  free(ex->split_st);
  free(ex->split_err);
  lt_backend *be = ex->be;
  if (ex->opts.stash && ex->nodes)
    for (int i = 0; i < ex->F; i++)
      for (int s = 0; s < ex->nodes[i].n_saves; s++)
        if (ex->nodes[i].saves[s].handle) {
          ex->opts.stash->release(ex->opts.stash->user, ex->nodes[i].saves[s].handle);
          ex->nodes[i].saves[s].handle = NULL;
        }
  for (int a = 0; a < ARENA_COUNT; a++)
    if (ex->arena[a])
      be->vt->free(be, ex->arena[a], (size_t)(ex->arena_bytes[a] ? ex->arena_bytes[a] : 1),
                   arena_cat[a]);
  for (int b = 0; b < ex->n_bufs; b++) {
    exec_buf *eb = &ex->bufs[b];
    if (eb->arena == ARENA_DEDICATED && eb->t->owned && eb->t->data)
      be->vt->free(be, eb->t->data, (size_t)(eb->bytes ? eb->bytes : 1), eb->cat);
  }
  if (ex->val && ex->grad)
    for (int v = 0; v < ex->g->n_values; v++) {
      const lt_value *val = &ex->g->values[v];
      if (lt_value_batched(val) || !val->data) continue;
      size_t bytes = lt_tensor_nbytes(val->data);
      if (ex->val[v].owned && ex->val[v].data)
        be->vt->free(be, ex->val[v].data, bytes ? bytes : 1, LT_MEM_WEIGHTS);
      if (ex->grad[v].owned && ex->grad[v].data)
        be->vt->free(be, ex->grad[v].data, bytes ? bytes : 1, LT_MEM_GRADIENTS);
    }
  if (ex->fold)
    for (int k = 0; k < 2 * ex->F; k++)
      if (ex->fold[k].owned && ex->fold[k].data)
        be->vt->free(be, ex->fold[k].data, lt_tensor_nbytes(&ex->fold[k]), LT_MEM_WEIGHTS);
  if (ex->ws) be->vt->free(be, ex->ws, ex->ws_bytes, LT_MEM_WORKSPACE);
  if (ex->obs) be->vt->free(be, ex->obs, ex->obs_bytes, LT_MEM_WORKSPACE);
  free(ex->val);
  free(ex->grad);
  free(ex->need_grad);
  free(ex->live_end);
  free(ex->alias);
  free(ex->nodes);
  free(ex->bufs);
  free(ex->fuse_relu);
  free(ex->fused_tail);
  free(ex->bwd_fused);
  free(ex->fold_bn);
  free(ex->bn_folded);
  free(ex->fold);
  free(ex->res_add);
  free(ex->res_val);
  free(ex->res_conv);
  free(ex->win_tail);
  free(ex->win_skip);
  free(ex->win);
  free(ex->prof);
  free(ex);
}

static lt_exec *exec_create(lt_graph *g, int batch, lt_mode mode, lt_backend *be,
                            const lt_exec_opts *opts, int child, lt_err *err);

/* Batch split: an inference executor on the CPU backend whose batch gives every thread at least
 * two images runs forwards as T child executors, one per thread, each on a contiguous slice of
 * the batch (sizes differ by at most one) with single-threaded kernels: no fork and join per
 * node, and every thread works on data it wrote. The children share the graph's parameters and
 * read and write the parent's input and output buffers in place (NCHW slices are contiguous);
 * the parent's own arenas are allocated only if a forward runs unsplit (a hook is set, the
 * profile is on, or lt_exec_set_batch_split(ex, 0)). Every kernel computes an image from that
 * image alone, so the results are those of the whole batch, up to the kernels' choice of
 * algorithm by batch size (kernels_direct.c takes stride-1 convolutions of at most 512 output
 * pixels in the batch: different float rounding, well within the reference tolerances). Off
 * with opts.no_split, opts.no_reuse or LATHE_INFER_SPLIT=0. */
static lt_status exec_split_plan(lt_exec *ex, lt_err *err) {
  const lt_graph *g = ex->g;
  const char *env = getenv("LATHE_INFER_SPLIT");
  if (ex->mode != LT_MODE_INFER || ex->be->device >= 0 || ex->opts.no_split ||
      ex->opts.no_reuse || (env && (!strcmp(env, "0") || !strcmp(env, "off"))))
    return LT_OK;
  int T = lt_cpu_threads();
  if (T > 64) T = 64;
  if (T < 2 || ex->batch < 2 * T) return LT_OK;
  for (int i = 0; i < g->n_outputs; i++)
    if (!lt_value_batched(&g->values[g->outputs[i]])) return LT_OK;
  ex->split = calloc((size_t)T, sizeof *ex->split);
  ex->split_first = calloc((size_t)T, sizeof *ex->split_first);
  ex->split_st = calloc((size_t)T, sizeof *ex->split_st);
  ex->split_err = calloc((size_t)T, sizeof *ex->split_err);
  if (!ex->split || !ex->split_first || !ex->split_st || !ex->split_err)
    return lt_errorf(err, LT_ERR_NOMEM, "out of memory for %d batch slices", T);
  ex->n_split = T;
  for (int t = 0; t < T; t++) {
    const int b0 = (int)((int64_t)ex->batch * t / T), b1 = (int)((int64_t)ex->batch * (t + 1) / T);
    ex->split_first[t] = b0;
    if (!(ex->split[t] = exec_create(ex->g, b1 - b0, ex->mode, ex->be, &ex->opts, 1, err)))
      return lt_err_prefix(err, "batch slice %d of %d (images %d..%d)", t + 1, T, b0, b1 - 1);
    /* its inputs and outputs are slices of ours, set at each forward */
    lt_exec *c = ex->split[t];
    for (int b = 0; b < c->n_bufs; b++) {
      exec_buf *eb = &c->bufs[b];
      if (eb->arena != ARENA_DEDICATED || !eb->t->owned || eb->t->cat == LT_MEM_GRADIENTS)
        continue;
      c->be->vt->free(c->be, eb->t->data, (size_t)(eb->bytes ? eb->bytes : 1), eb->cat);
      c->dedicated_bytes -= eb->bytes;
      eb->t->data = NULL;
      eb->t->owned = 0;
    }
  }
  ex->split_on = 1;
  return LT_OK;
}

lt_exec *lt_exec_create(lt_graph *g, int batch, lt_mode mode, lt_backend *be,
                        const lt_exec_opts *opts, lt_err *err) {
  return exec_create(g, batch, mode, be, opts, 0, err);
}

static lt_exec *exec_create(lt_graph *g, int batch, lt_mode mode, lt_backend *be,
                            const lt_exec_opts *opts, int child, lt_err *err) {
  if (!g || !be || batch < 1) {
    lt_errorf(err, LT_ERR_INVALID, "lt_exec_create needs a graph, a backend and a batch >= 1 "
              "(got batch %d)", batch);
    return NULL;
  }
  if (g->n_outputs < 1) {
    lt_errorf(err, LT_ERR_INVALID, "the graph has no output; call lt_graph_set_output");
    return NULL;
  }
  const lt_stash_policy *pol = opts ? opts->stash : NULL;
  if (pol && (!pol->keeps_buffer || !pol->store || !pol->load || !pol->release)) {
    lt_errorf(err, LT_ERR_INVALID, "a stash policy needs keeps_buffer, store, load and release");
    return NULL;
  }
  if (pol && pol->observe && be->device >= 0 && !be->vt->accumulate) {
    lt_errorf(err, LT_ERR_UNSUPPORTED,
              "backend %s cannot add gradients in its memory (no accumulate): a stash policy "
              "with observe() runs on host backends only there", be->vt->name);
    return NULL;
  }
  if (pol && pol->bind && pol->bind(pol->user, be, err)) {
    lt_err_prefix(err, "the stash policy on backend %s", be->vt->name);
    return NULL;
  }
  lt_exec *ex = calloc(1, sizeof *ex);
  if (!ex) {
    lt_errorf(err, LT_ERR_NOMEM, "out of memory for an executor");
    return NULL;
  }
  ex->g = g;
  ex->be = be;
  ex->batch = batch;
  ex->mode = mode;
  if (opts) ex->opts = *opts;
  ex->is_child = child;
  ex->F = g->n_nodes;
  size_t nv = (size_t)g->n_values + 1;
  ex->val = calloc(nv, sizeof *ex->val);
  ex->grad = calloc(nv, sizeof *ex->grad);
  ex->need_grad = calloc(nv, 1);
  ex->live_end = calloc(nv, sizeof *ex->live_end);
  ex->alias = malloc(nv * sizeof *ex->alias);
  ex->nodes = calloc((size_t)ex->F + 1, sizeof *ex->nodes);
  ex->fuse_relu = calloc((size_t)ex->F + 1, sizeof *ex->fuse_relu);
  ex->fused_tail = calloc((size_t)ex->F + 1, 1);
  ex->bwd_fused = calloc((size_t)ex->F + 1, 1);
  ex->fold_bn = calloc((size_t)ex->F + 1, sizeof *ex->fold_bn);
  ex->bn_folded = calloc((size_t)ex->F + 1, 1);
  ex->fold = calloc(2 * (size_t)ex->F + 1, sizeof *ex->fold);
  ex->res_add = calloc((size_t)ex->F + 1, sizeof *ex->res_add);
  ex->res_val = calloc((size_t)ex->F + 1, sizeof *ex->res_val);
  ex->res_conv = calloc((size_t)ex->F + 1, sizeof *ex->res_conv);
  ex->win_tail = calloc((size_t)ex->F + 1, sizeof *ex->win_tail);
  ex->win_skip = calloc((size_t)ex->F + 1, 1);
  ex->win = calloc((size_t)ex->F + 1, sizeof *ex->win);
  ex->prof = calloc(4 * (size_t)ex->F + 1, sizeof *ex->prof);
  if (!ex->val || !ex->grad || !ex->need_grad || !ex->live_end || !ex->alias || !ex->nodes ||
      !ex->fuse_relu || !ex->fused_tail || !ex->bwd_fused || !ex->prof || !ex->fold_bn ||
      !ex->bn_folded || !ex->fold || !ex->res_add || !ex->res_val || !ex->res_conv ||
      !ex->win_tail || !ex->win_skip || !ex->win) {
    lt_errorf(err, LT_ERR_NOMEM, "out of memory for an executor of %d values", g->n_values);
    goto fail;
  }
  /* a child's graph was sorted and its shapes inferred by its parent a moment ago */
  if ((!child && (lt_graph_toposort(g, err) || lt_graph_infer_shapes(g, err))) ||
      exec_plan(ex, err) || (!child && exec_split_plan(ex, err)) || exec_allocate(ex, err))
    goto fail;
  const char *prof = getenv("LATHE_PROFILE");
  ex->prof_on = ex->prof_env = !child && prof && prof[0] && strcmp(prof, "0") != 0;
  return ex;
fail:
  lt_exec_free(ex);
  return NULL;
}

/* ---- running ----------------------------------------------------------------------------------- */

/* Process CPU time, all threads (the profile's second clock). */
static double cpu_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void exec_ctx_init(lt_exec *ex, int i, lt_node_ctx *ctx) {
  const lt_node *n = &ex->g->nodes[i];
  memset(ctx, 0, sizeof *ctx);
  ctx->g = ex->g;
  ctx->node = i;
  ctx->batch = ex->batch;
  ctx->mode = ex->mode;
  for (int k = 0; k < n->n_in; k++) ctx->in[k] = exec_tensor(ex, n->in[k]);
  ctx->out[0] = &ex->val[n->out[0]];
  for (int k = 0; k < ex->nodes[i].n_aux; k++) ctx->aux[k] = &ex->nodes[i].aux[k];
  ctx->ws = ex->ws;
  ctx->seed = ex->opts.seed;
  ctx->step = ex->step;
}

static void exec_release_handles(lt_exec *ex, int i) {
  const lt_stash_policy *pol = ex->opts.stash;
  for (int s = 0; s < ex->nodes[i].n_saves; s++) {
    exec_save *es = &ex->nodes[i].saves[s];
    if (es->handle) pol->release(pol->user, es->handle);
    es->handle = NULL;
  }
}

/* Whether conv i runs its residual Add in this forward: planned, on, and its BN (if any) folded. */
static int resid_on(const lt_exec *ex, int i, int fold, int resid) {
  return resid && ex->res_add[i] >= 0 && (ex->fold_bn[i] < 0 || fold);
}

/* Node by node over the whole batch. */
static lt_status exec_forward_nodes(lt_exec *ex, lt_err *err) {
  const lt_stash_policy *pol = ex->opts.stash;
  if (pol)
    for (int i = 0; i < ex->F; i++) exec_release_handles(ex, i); /* a forward without backward */
  lt_mem_stats before, after;
  lt_mem_get_stats(&before);
  /* hooks see every node's own output */
  const int prof = ex->prof_on, fuse = !ex->hook && !(ex->fuse_off & LT_FUSE_RELU);
  const int fold = ex->n_fold && !ex->hook && !(ex->fuse_off & LT_FUSE_BN);
  const int resid = !ex->hook && !(ex->fuse_off & LT_FUSE_ADD);
  const int window = !ex->hook && !(ex->fuse_off & LT_FUSE_SLICE);
  const double t_start = prof ? lt_now() : 0.0, c_start = prof ? cpu_now() : 0.0;
  double t_nodes = 0.0, c_nodes = 0.0;
  for (int i = 0; i < ex->F; i++) {
    lt_node_ctx ctx;
    exec_ctx_init(ex, i, &ctx);
    const double t0 = prof ? lt_now() : 0.0, c0 = prof ? cpu_now() : 0.0;
    lt_status st = LT_OK;
    if (fuse && ex->fused_tail[i]) {
      /* its output was written by its head node's fused kernel */
    } else if (fold && ex->bn_folded[i]) {
      /* folded into the convolution before it */
    } else if (ex->res_conv[i] >= 0 && resid_on(ex, ex->res_conv[i], fold, resid)) {
      /* run by the convolution before it */
    } else if (window && ex->win_skip[i]) {
      /* run by the first node of its Slice chain */
    } else if (window && ex->win_tail[i] >= 0) {
      ctx.out[0] = &ex->val[ex->g->nodes[ex->win_tail[i]].out[0]];
      lt_op_window_cpu(&ex->win[i], lt_dtype_size(ctx.in[0]->dtype), ctx.in[0]->data,
                       ctx.out[0]->data);
    } else if ((fold && ex->fold_bn[i] >= 0) || resid_on(ex, i, fold, resid)) {
      const int j = fold ? ex->fold_bn[i] : -1;
      int target = j >= 0 ? j : i, relu = 0;
      const lt_tensor *res = NULL;
      if (j >= 0) {
        ctx.in[1] = &ex->fold[2 * i];
        ctx.in[2] = &ex->fold[2 * i + 1];
      }
      if (resid_on(ex, i, fold, resid)) {
        target = ex->res_add[i];
        res = exec_tensor(ex, ex->res_val[i]);
      }
      const int k = fuse && target != i ? ex->fuse_relu[target] : -1;
      if (k >= 0) target = k, relu = 1;
      ctx.out[0] = &ex->val[ex->g->nodes[target].out[0]];
      st = relu || res ? lt_op_conv_fwd_infer_epi(&ctx, res, relu, err)
                       : ex->be->vt->forward(ex->be, &ctx, err);
    } else if (fuse && ex->fuse_relu[i] >= 0) {
      ctx.out[0] = &ex->val[ex->g->nodes[ex->fuse_relu[i]].out[0]];
      st = lt_op_cpu_fwd_relu(&ctx, err);
      ctx.out[0] = &ex->val[ex->g->nodes[i].out[0]];
    } else {
      st = ex->be->vt->forward(ex->be, &ctx, err);
    }
    if (prof) {
      const double dt = lt_now() - t0, dc = cpu_now() - c0;
      ex->prof[i] += dt;
      ex->prof[2 * ex->F + i] += dc;
      t_nodes += dt;
      c_nodes += dc;
    }
    if (st) return lt_err_prefix(err, "forward of node '%s'", ex->g->nodes[i].name);
    if (ex->hook) ex->hook(ex->hook_user, ex, i, ctx.out[0]);
    if (!pol) continue;
    exec_node *en = &ex->nodes[i];
    for (int s = 0; s < en->n_saves; s++) {
      exec_save *es = &en->saves[s];
      if (es->is_param) continue;
      st = pol->store(pol->user, ex->g, i, s, es->kind, es->src,
                      (const lt_tensor *const *)ctx.in, (const lt_tensor *const *)ctx.aux,
                      &es->handle, err);
      if (st) return lt_err_prefix(err, "stashing input of node '%s'", ex->g->nodes[i].name);
    }
  }
  ex->step++;
  if (prof) {
    ex->prof_exec[0] += lt_now() - t_start - t_nodes;
    ex->prof_exec_cpu[0] += cpu_now() - c_start - c_nodes;
    ex->prof_steps[0]++;
  }
  lt_mem_get_stats(&after);
  /* The policy's bytes are what it allocated under LT_MEM_SAVED during this forward. */
  ex->saved_held = ex->saved_kept + (pol ? after.current[LT_MEM_SAVED] -
                                               before.current[LT_MEM_SAVED] : 0);
  return LT_OK;
}

static void split_run(void *user, int t) {
  lt_exec *ex = user;
  ex->split_st[t] = exec_forward_nodes(ex->split[t], &ex->split_err[t]);
}

/* Points a child's input and output tensors at its slice of ours. */
static void split_alias(lt_exec *ex, int t) {
  lt_exec *c = ex->split[t];
  const lt_graph *g = ex->g;
  for (int k = 0; k < g->n_inputs + g->n_outputs; k++) {
    const int v = k < g->n_inputs ? g->inputs[k] : g->outputs[k - g->n_inputs];
    const size_t per = lt_tensor_nbytes(&ex->val[v]) / (size_t)ex->batch;
    c->val[v].data = (char *)ex->val[v].data + per * (size_t)ex->split_first[t];
  }
  c->fuse_off = ex->fuse_off;
  for (int k = 0; k < 2 * ex->F; k++) c->fold[k].data = ex->fold[k].data; /* refolded by us */
}

static lt_status exec_forward_split(lt_exec *ex, lt_err *err) {
  for (int t = 0; t < ex->n_split; t++) split_alias(ex, t);
  lt_cpu_run_split(ex->n_split, split_run, ex);
  lt_status st = LT_OK;
  for (int t = 0; t < ex->n_split && !st; t++)
    if ((st = ex->split_st[t])) {
      if (err) *err = ex->split_err[t];
      lt_err_prefix(err, "batch slice %d of %d", t + 1, ex->n_split);
    }
  ex->step++;
  ex->split_last = 1;
  return st;
}

lt_status lt_exec_forward(lt_exec *ex, lt_err *err) {
  if (ex->n_fold && !ex->hook && !(ex->fuse_off & LT_FUSE_BN)) exec_refold(ex);
  if (ex->n_split && ex->split_on && !ex->hook && !ex->prof_on) return exec_forward_split(ex, err);
  lt_status st = exec_allocate_arenas(ex, err);
  if (st) return st;
  ex->split_last = 0;
  return exec_forward_nodes(ex, err);
}

int lt_exec_set_batch_split(lt_exec *ex, int on) {
  ex->split_on = on && ex->n_split > 0;
  return ex->split_on;
}

void lt_exec_set_fusion(lt_exec *ex, unsigned which) { ex->fuse_off = ~which & LT_FUSE_ALL; }

/* dW (and db) of an observed node went to scratch: show it to the policy, then add it to the
 * parameter gradients (in the backend's memory: its accumulate on a device, checked at create). */
static lt_status exec_observe(lt_exec *ex, int i, lt_node_ctx *ctx, lt_err *err) {
  const lt_stash_policy *pol = ex->opts.stash;
  const lt_node *n = &ex->g->nodes[i];
  pol->observe(pol->user, ex->g, i, ctx->saved[0], ctx->dout[0], ctx->din[1]);
  for (int k = 1; k < n->n_in && k < 3; k++) {
    if (!ctx->din[k]) continue;
    const size_t count = (size_t)lt_tensor_numel(ctx->din[k]);
    float *dst = lt_tensor_f32(&ex->grad[n->in[k]]);
    if (ex->be->device < 0) {
      lt_op_cpu_pass_grad(count, lt_tensor_f32(ctx->din[k]), dst, 1);
    } else {
      lt_status st = ex->be->vt->accumulate(ex->be, count, lt_tensor_f32(ctx->din[k]), dst, err);
      if (st) return lt_err_prefix(err, "adding the weight gradient of node '%s'", n->name);
    }
  }
  return LT_OK;
}

lt_status lt_exec_backward(lt_exec *ex, lt_err *err) {
  if (ex->mode != LT_MODE_TRAIN)
    return lt_errorf(err, LT_ERR_INVALID, "this executor was created in inference mode; create "
                     "it with LT_MODE_TRAIN to run backward");
  const lt_stash_policy *pol = ex->opts.stash;
  const int prof = ex->prof_on;
  const double t_start = prof ? lt_now() : 0.0, c_start = prof ? cpu_now() : 0.0;
  double t_nodes = 0.0, c_nodes = 0.0;
  for (int i = ex->F - 1; i >= 0; i--) {
    exec_node *en = &ex->nodes[i];
    if (!en->backward) continue;
    const lt_node *n = &ex->g->nodes[i];
    lt_node_ctx ctx;
    exec_ctx_init(ex, i, &ctx);
    ctx.step = ex->step ? ex->step - 1 : 0; /* the step whose forward this undoes */
    ctx.dout[0] = &ex->grad[n->out[0]];
    lt_tensor obs[2];
    char *scratch = ex->obs;
    for (int k = 0; k < n->n_in; k++) {
      if (!ex->need_grad[n->in[k]]) continue;
      ctx.accumulate_in[k] = en->acc[k];
      ctx.din[k] = &ex->grad[n->in[k]];
      if (en->observed && (k == 1 || k == 2)) {
        obs[k - 1] = ex->grad[n->in[k]];
        obs[k - 1].data = scratch;
        scratch += lt_tensor_nbytes(&obs[k - 1]);
        ctx.din[k] = &obs[k - 1];
      }
    }
    for (int s = 0; s < en->n_saves; s++) {
      exec_save *es = &en->saves[s];
      if (es->is_param || es->kept) {
        ctx.saved[s] = es->src;
        continue;
      }
      lt_status st = pol->load(pol->user, es->handle, &es->restore, err);
      if (st) return lt_err_prefix(err, "restoring the stash of node '%s'", n->name);
      ctx.saved[s] = &es->restore;
    }
    const double t0 = prof ? lt_now() : 0.0, c0 = prof ? cpu_now() : 0.0;
    lt_status st = LT_OK;
    if (ex->bwd_fused[i] && ex->fused_tail[i]) {
      /* runs in its head node's backward */
    } else if (ex->bwd_fused[i]) {
      const int j = ex->fuse_relu[i];
      ctx.dout[0] = &ex->grad[ex->g->nodes[j].out[0]];
      st = lt_op_cpu_bwd_relu(&ctx, ex->nodes[j].saves[0].src, err);
    } else {
      st = ex->be->vt->backward(ex->be, &ctx, err);
    }
    if (prof) {
      const double dt = lt_now() - t0, dc = cpu_now() - c0;
      ex->prof[ex->F + i] += dt;
      ex->prof[3 * ex->F + i] += dc;
      t_nodes += dt;
      c_nodes += dc;
    }
    if (st) return lt_err_prefix(err, "backward of node '%s'", n->name);
    if (en->observed && (st = exec_observe(ex, i, &ctx, err))) return st;
    if (pol) exec_release_handles(ex, i);
  }
  if (prof) {
    ex->prof_exec[1] += lt_now() - t_start - t_nodes;
    ex->prof_exec_cpu[1] += cpu_now() - c_start - c_nodes;
    ex->prof_steps[1]++;
  }
  return LT_OK;
}

/* ---- accessors ------------------------------------------------------------------------------------ */

int lt_exec_batch(const lt_exec *ex) { return ex->batch; }

lt_tensor *lt_exec_input(lt_exec *ex, int i) {
  return i >= 0 && i < ex->g->n_inputs ? &ex->val[ex->g->inputs[i]] : NULL;
}

lt_tensor *lt_exec_output(lt_exec *ex, int i) {
  return i >= 0 && i < ex->g->n_outputs ? &ex->val[ex->g->outputs[i]] : NULL;
}

lt_tensor *lt_exec_value(lt_exec *ex, int v) {
  if (v < 0 || v >= ex->g->n_values || !lt_value_batched(&ex->g->values[v])) return NULL;
  if (ex->split_last && ex->live_end[v] != INT_MAX) return NULL; /* held by the children */
  /* Alive after forward: dedicated, or kept into backward, or never reused. */
  return ex->live_end[v] >= ex->F - 1 ? &ex->val[v] : NULL;
}

lt_tensor *lt_exec_output_grad(lt_exec *ex, int i) {
  if (i < 0 || i >= ex->g->n_outputs) return NULL;
  lt_tensor *t = &ex->grad[ex->g->outputs[i]];
  return t->data ? t : NULL;
}

lt_tensor *lt_exec_param(lt_exec *ex, int v) {
  if (v < 0 || v >= ex->g->n_values || ex->g->values[v].kind != LT_VALUE_PARAM ||
      !ex->g->values[v].data)
    return NULL;
  return exec_tensor(ex, v);
}

lt_tensor *lt_exec_param_grad(lt_exec *ex, int v) {
  if (v < 0 || v >= ex->g->n_values || ex->g->values[v].kind != LT_VALUE_PARAM) return NULL;
  return ex->grad[v].data ? &ex->grad[v] : NULL;
}

void lt_exec_zero_grads(lt_exec *ex) {
  const double t0 = ex->prof_on ? lt_now() : 0.0, c0 = ex->prof_on ? cpu_now() : 0.0;
  for (int v = 0; v < ex->g->n_values; v++)
    if (ex->g->values[v].kind == LT_VALUE_PARAM && ex->grad[v].data)
      ex->be->vt->memset0(ex->be, ex->grad[v].data, lt_tensor_nbytes(&ex->grad[v]), NULL);
  if (ex->prof_on) {
    ex->prof_zero += lt_now() - t0;
    ex->prof_zero_cpu += cpu_now() - c0;
  }
}

void lt_exec_set_forward_hook(lt_exec *ex, lt_exec_hook fn, void *user) {
  ex->hook = fn;
  ex->hook_user = user;
}

/* Copies the graph's parameter values to or from the device copies; with state_only, just the
 * non-trainable ones (what a training forward writes: batch-norm running statistics). */
static lt_status exec_sync(lt_exec *ex, int to_device, int state_only, lt_err *err) {
  if (ex->be->device < 0) return LT_OK;
  for (int v = 0; v < ex->g->n_values; v++) {
    const lt_value *val = &ex->g->values[v];
    if (lt_value_batched(val) || !val->data || (state_only && val->trainable)) continue;
    size_t bytes = lt_tensor_nbytes(val->data);
    lt_status st = to_device
                       ? ex->be->vt->to_device(ex->be, ex->val[v].data, val->data->data, bytes, err)
                       : ex->be->vt->to_host(ex->be, val->data->data, ex->val[v].data, bytes, err);
    if (st) return lt_err_prefix(err, "syncing parameter '%s'", val->name);
  }
  return LT_OK;
}

lt_status lt_exec_sync_params(lt_exec *ex, int to_device, lt_err *err) {
  return exec_sync(ex, to_device, 0, err);
}

lt_status lt_exec_pull_state(lt_exec *ex, lt_err *err) { return exec_sync(ex, 0, 1, err); }

void lt_exec_saved_bytes(const lt_exec *ex, int64_t *dense, int64_t *held) {
  if (dense) *dense = ex->saved_dense;
  if (held) *held = ex->opts.stash ? ex->saved_held : ex->saved_kept;
}

void lt_exec_plan_stats_get(const lt_exec *ex, lt_exec_plan_stats *out) {
  out->activations = ex->arena_bytes[ARENA_ACT];
  out->saved = ex->arena_bytes[ARENA_SAVED];
  out->gradients = ex->arena_bytes[ARENA_GRAD];
  out->param_grads = ex->param_grad_bytes;
  out->dedicated = ex->dedicated_bytes;
  out->workspace = (int64_t)(ex->ws_bytes + ex->obs_bytes);
}

/* ---- profile ------------------------------------------------------------------------------------ */

void lt_exec_profile_enable(lt_exec *ex, int on) {
  ex->prof_on = on != 0;
  memset(ex->prof, 0, sizeof *ex->prof * 4 * (size_t)ex->F);
  ex->prof_exec[0] = ex->prof_exec[1] = ex->prof_zero = 0.0;
  ex->prof_exec_cpu[0] = ex->prof_exec_cpu[1] = ex->prof_zero_cpu = 0.0;
  ex->prof_steps[0] = ex->prof_steps[1] = 0;
}

int lt_exec_profile_enabled(const lt_exec *ex) { return ex->prof_on; }

static int prof_row_cmp(const void *a, const void *b) {
  const lt_exec_profile_row *x = a, *y = b;
  const double tx = x->fwd_s + x->bwd_s, ty = y->fwd_s + y->bwd_s;
  return tx < ty ? 1 : tx > ty ? -1 : strcmp(x->op, y->op);
}

/* "Slice+Slice+Pad": the ops of a fused chain from its head h to its last node t. */
static void prof_chain_name(const lt_graph *g, int h, int t, char *name, size_t cap) {
  const int v = g->nodes[t].in[0];
  if (t == h || g->values[v].producer < 0) {
    snprintf(name, cap, "%s", lt_op_name(g->nodes[t].op));
    return;
  }
  prof_chain_name(g, h, g->values[v].producer, name, cap);
  const size_t len = strlen(name);
  snprintf(name + len, cap - len, "+%s", lt_op_name(g->nodes[t].op));
}

int lt_exec_profile_get(const lt_exec *ex, lt_exec_profile_row *rows, int cap, int64_t *fwd_steps,
                        int64_t *bwd_steps) {
  /* At most one row per op type, per fused pair type, and the two executor rows. */
  enum { MAX_ROWS = 3 * LT_OP_COUNT + 2 };
  lt_exec_profile_row all[MAX_ROWS];
  int n = 0;
  const int fuse = !ex->hook && !(ex->fuse_off & LT_FUSE_RELU);
  const int fold = ex->n_fold && !ex->hook && !(ex->fuse_off & LT_FUSE_BN);
  const int resid = !ex->hook && !(ex->fuse_off & LT_FUSE_ADD);
  const int window = !ex->hook && !(ex->fuse_off & LT_FUSE_SLICE);
  for (int i = 0; i < ex->F; i++) {
    const lt_node *nd = &ex->g->nodes[i];
    char name[48];
    const int fb = fold && ex->fold_bn[i] >= 0, ra = resid_on(ex, i, fold, resid);
    if (fb || ra) {
      const int tail = ra ? ex->res_add[i] : ex->fold_bn[i];
      snprintf(name, sizeof name, "%s%s%s%s", lt_op_name(nd->op), fb ? "+BatchNorm2d" : "",
               ra ? "+Add" : "", fuse && ex->fuse_relu[tail] >= 0 ? "+Relu" : "");
    } else if (ex->res_conv[i] >= 0 && resid_on(ex, ex->res_conv[i], fold, resid))
      snprintf(name, sizeof name, "%s (fused)", lt_op_name(nd->op));
    else if (fold && ex->bn_folded[i])
      snprintf(name, sizeof name, "%s (folded)", lt_op_name(nd->op));
    else if (window && ex->win_skip[i])
      snprintf(name, sizeof name, "%s (fused)", lt_op_name(nd->op));
    else if (window && ex->win_tail[i] >= 0)
      prof_chain_name(ex->g, i, ex->win_tail[i], name, sizeof name);
    else if (ex->fuse_relu[i] >= 0 && fuse)
      snprintf(name, sizeof name, "%s+Relu", lt_op_name(nd->op));
    else
      snprintf(name, sizeof name, "%s", lt_op_name(nd->op));
    /* A skipped ReLU's forward costs nothing; its backward is its own. */
    int r = 0;
    while (r < n && strcmp(all[r].op, name) != 0) r++;
    if (r == n) {
      if (n == MAX_ROWS - 2) continue;
      memset(&all[n], 0, sizeof all[n]);
      snprintf(all[n].op, sizeof all[n].op, "%s", name);
      n++;
    }
    all[r].nodes++;
    all[r].fwd_s += ex->prof[i];
    all[r].bwd_s += ex->prof[ex->F + i];
    all[r].fwd_cpu_s += ex->prof[2 * ex->F + i];
    all[r].bwd_cpu_s += ex->prof[3 * ex->F + i];
  }
  memset(&all[n], 0, 2 * sizeof all[n]);
  snprintf(all[n].op, sizeof all[n].op, "(executor)");
  all[n].fwd_s = ex->prof_exec[0];
  all[n].bwd_s = ex->prof_exec[1];
  all[n].fwd_cpu_s = ex->prof_exec_cpu[0];
  all[n].bwd_cpu_s = ex->prof_exec_cpu[1];
  n++;
  snprintf(all[n].op, sizeof all[n].op, "(zero_grads)");
  all[n].bwd_s = ex->prof_zero;
  all[n].bwd_cpu_s = ex->prof_zero_cpu;
  n++;
  qsort(all, (size_t)n, sizeof all[0], prof_row_cmp);
  for (int r = 0; r < n && r < cap; r++) rows[r] = all[r];
  if (fwd_steps) *fwd_steps = ex->prof_steps[0];
  if (bwd_steps) *bwd_steps = ex->prof_steps[1];
  return n;
}

void lt_exec_profile_print(const lt_exec *ex, void *fp) {
  FILE *f = fp;
  lt_exec_profile_row rows[3 * LT_OP_COUNT + 2];
  int64_t sf, sb;
  int n = lt_exec_profile_get(ex, rows, (int)(sizeof rows / sizeof rows[0]), &sf, &sb);
  const double pf = sf ? 1e3 / (double)sf : 0.0, pb = sb ? 1e3 / (double)sb : 0.0;
  double tf = 0.0, tb = 0.0, cf = 0.0, cb = 0.0;
  for (int r = 0; r < n; r++) {
    tf += rows[r].fwd_s * pf, tb += rows[r].bwd_s * pb;
    cf += rows[r].fwd_cpu_s * pf, cb += rows[r].bwd_cpu_s * pb;
  }
  fprintf(f, "%-18s %5s %9s %9s %9s %6s | %9s %9s %9s\n", "op", "nodes", "fwd ms", "bwd ms",
          "total ms", "share", "fwd cpu", "bwd cpu", "total cpu");
  for (int r = 0; r < n; r++) {
    const double a = rows[r].fwd_s * pf, b = rows[r].bwd_s * pb;
    const double ca = rows[r].fwd_cpu_s * pf, cbb = rows[r].bwd_cpu_s * pb;
    fprintf(f, "%-18s %5d %9.3f %9.3f %9.3f %5.1f%% | %9.3f %9.3f %9.3f\n", rows[r].op,
            rows[r].nodes, a, b, a + b, tf + tb > 0 ? 100.0 * (a + b) / (tf + tb) : 0.0, ca, cbb,
            ca + cbb);
  }
  fprintf(f, "%-18s %5s %9.3f %9.3f %9.3f %6s | %9.3f %9.3f %9.3f  (per step, %lld forwards, "
          "%lld backwards)\n", "total", "", tf, tb, tf + tb, "", cf, cb, cf + cb, (long long)sf,
          (long long)sb);
}
