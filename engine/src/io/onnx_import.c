/* ONNX import: ox_model (onnx_model.h) → lt_graph.
 *
 * Every ONNX tensor name maps to one entry: a constant (a host tensor with its full shape), or a
 * graph value (per-sample shape, batch first and implicit). Nodes are visited in topological
 * order; a node whose inputs are all constants is evaluated here (constant folding), so the
 * shape arithmetic that exporters emit (Shape → Gather → Concat → Reshape → ConstantOfShape →
 * Cast → Slice ...) disappears and only tensor ops reach the graph.
 *
 * The batch size is unknown at import. Shape() of a graph value yields 1 for the batch element
 * and marks that element "batch" in the constant's dyn[] mask; data-movement folds carry the mask
 * along, Reshape reads it to recognise the batch, and arithmetic or ConstantOfShape on a batch
 * element is refused (the result would depend on the batch size). */
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "backend/cpu/kernels.h" /* lt_upsample_mode */
#include "io/onnx_model.h"
#include "lathe/onnx.h"
#include "ops/ops.h"

enum { ENT_UNDEF = 0, ENT_CONST, ENT_VALUE, ENT_UNAVAILABLE };

typedef struct ent {
  const char *name; /* borrowed from the ox_model */
  int producer;     /* node index, -1 for initializers, graph inputs, and unknown names */
  int kind;         /* ENT_* */
  lt_tensor *c;     /* ENT_CONST: owned, full shape */
  uint8_t *dyn;     /* ENT_CONST: (numel) 1 where the element is the batch size; NULL if none */
  int vid;          /* ENT_VALUE: value id; ENT_CONST: value id once added to the graph, or -1 */
} ent;

typedef struct imp {
  ox_model *m;
  lt_graph *g;
  const lt_onnx_load_opts *opts;
  ent *ents;   /* (n_ents) owned */
  int n_ents, cap_ents;
  int *table;  /* (tcap) open-addressing hash of names → ents index, -1 empty */
  int tcap;
  int64_t opset;
  lt_err *err;
  const ox_node *node; /* the node being converted, for error messages */
  int64_t folded_bytes; /* held by constants made at import (folds, clones) */
} imp;

/* ---- name table ------------------------------------------------------------------------------ */

static uint64_t hash_str(const char *s) {
  uint64_t h = 1469598103934665603ull; /* FNV-1a */
  for (; *s; s++) h = (h ^ (uint8_t)*s) * 1099511628211ull;
  return h;
}

static int ent_find(const imp *im, const char *name) {
  for (uint64_t i = hash_str(name) & (uint64_t)(im->tcap - 1);; i = (i + 1) & (uint64_t)(im->tcap - 1)) {
    int k = im->table[i];
    if (k < 0) return -1;
    if (!strcmp(im->ents[k].name, name)) return k;
  }
}

/* Returns the entry for name, adding it when absent. The table was sized for every name the
 * model can mention, so it never fills. */
static int ent_get(imp *im, const char *name) {
  uint64_t i = hash_str(name) & (uint64_t)(im->tcap - 1);
  for (;; i = (i + 1) & (uint64_t)(im->tcap - 1)) {
    int k = im->table[i];
    if (k < 0) break;
    if (!strcmp(im->ents[k].name, name)) return k;
  }
  int k = im->n_ents++;
  ent *e = &im->ents[k];
  memset(e, 0, sizeof *e);
  e->name = name;
  e->producer = -1;
  e->vid = -1;
  im->table[i] = k;
  return k;
}

/* ---- errors ---------------------------------------------------------------------------------- */

static lt_status node_err(imp *im, lt_status st, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static lt_status node_err(imp *im, lt_status st, const char *fmt, ...) {
  char msg[768];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  const ox_node *n = im->node;
  return lt_errorf(im->err, st, "node '%s' (%s, opset %lld): %s", n ? n->name : "?", n ? n->op : "?",
                   (long long)im->opset, msg);
}

/* ---- attribute and input access ------------------------------------------------------------- */

static int64_t attr_i(const ox_node *n, const char *name, int64_t def) {
  const ox_attr *a = ox_node_attr(n, name);
  return a && a->type == OX_ATTR_INT ? a->i : def;
}
static float attr_f(const ox_node *n, const char *name, float def) {
  const ox_attr *a = ox_node_attr(n, name);
  return a && a->type == OX_ATTR_FLOAT ? a->f : def;
}
static const char *attr_s(const ox_node *n, const char *name, const char *def) {
  const ox_attr *a = ox_node_attr(n, name);
  return a && a->type == OX_ATTR_STRING && a->s ? a->s : def;
}
/* ints attribute into out (at most cap); returns the count, or -1 when absent or too long. */
static int attr_ints(const ox_node *n, const char *name, int64_t *out, int cap) {
  const ox_attr *a = ox_node_attr(n, name);
  if (!a || a->type != OX_ATTR_INTS || a->n > cap) return -1;
  if (a->n) memcpy(out, a->ints, sizeof *out * (size_t)a->n); /* an empty list has no array */
  return a->n;
}

/* Input i of the current node, or NULL when omitted (past the end, or named ""). */
static ent *input(imp *im, int i) {
  const ox_node *n = im->node;
  if (i >= n->n_in || !n->in[i][0]) return NULL;
  return &im->ents[ent_find(im, n->in[i])];
}

/* A constant input as int64 values (int64, int32 or uint8 tensors). Returns the count or -1. */
static int const_ints(const ent *e, int64_t *out, int cap) {
  if (!e || e->kind != ENT_CONST) return -1;
  const lt_tensor *t = e->c;
  int64_t n = lt_tensor_numel(t);
  if (n > cap) return -1;
  for (int64_t i = 0; i < n; i++) {
    switch (t->dtype) {
    case LT_I64: out[i] = ((int64_t *)t->data)[i]; break;
    case LT_I32: out[i] = ((int32_t *)t->data)[i]; break;
    case LT_U8: out[i] = ((uint8_t *)t->data)[i]; break;
    case LT_F32: return -1;
    }
  }
  return (int)n;
}

static int const_has_dyn(const ent *e) {
  if (!e->dyn) return 0;
  int64_t n = lt_tensor_numel(e->c);
  for (int64_t i = 0; i < n; i++)
    if (e->dyn[i]) return 1;
  return 0;
}

/* A scalar (one-element) constant as a double. */
static int const_scalar(const ent *e, double *v) {
  if (!e || e->kind != ENT_CONST || lt_tensor_numel(e->c) != 1) return 0;
  const lt_tensor *t = e->c;
  switch (t->dtype) {
  case LT_F32: *v = ((float *)t->data)[0]; break;
  case LT_I64: *v = (double)((int64_t *)t->data)[0]; break;
  case LT_I32: *v = ((int32_t *)t->data)[0]; break;
  case LT_U8: *v = ((uint8_t *)t->data)[0]; break;
  }
  return 1;
}

/* ---- defining outputs ------------------------------------------------------------------------ */

static ent *out_ent(imp *im, int i) { return &im->ents[ent_find(im, im->node->out[i])]; }

/* Output 0 of the current node becomes the constant t (ownership taken, also on failure). */
static lt_status def_const(imp *im, lt_tensor *t, uint8_t *dyn) {
  ent *e = out_ent(im, 0);
  e->kind = ENT_CONST;
  e->c = t;
  e->dyn = dyn;
  return LT_OK;
}

/* Folded constants are shape vectors and the odd transposed weight; these caps keep hostile
 * ConstantOfShape / Concat chains from allocating gigabytes (found by fuzzing: oom-be4697c1). */
#define MAX_FOLDED_ELEMS ((int64_t)1 << 25)
#define MAX_FOLDED_BYTES ((int64_t)256 << 20)

static lt_status fold_account(imp *im, int64_t bytes) {
  if (bytes > MAX_FOLDED_BYTES - im->folded_bytes)
    return node_err(im, LT_ERR_UNSUPPORTED, "constant folding would hold more than %lld MiB",
                    (long long)(MAX_FOLDED_BYTES >> 20));
  im->folded_bytes += bytes;
  return LT_OK;
}

static lt_tensor *new_tensor(imp *im, lt_dtype dt, int ndim, const int64_t *shape) {
  int64_t numel = 1;
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 0 || (shape[i] > 0 && numel > MAX_FOLDED_ELEMS / shape[i])) {
      node_err(im, LT_ERR_FORMAT, "a folded constant would have an absurd shape");
      return NULL;
    }
    numel *= shape[i];
  }
  if (fold_account(im, numel * (int64_t)lt_dtype_size(dt))) return NULL;
  return lt_tensor_new(dt, ndim, shape, LT_MEM_WEIGHTS, im->err);
}

/* Adds a constant entry to the graph once: as a parameter when it is a weight by role (conv,
 * linear and batch-norm inputs), else as a constant. ONNX does not say
 * which tensors are trained; deciding by role keeps parameter counts stable through an
 * export → import round trip (where every constant becomes an initializer).
 * Leading 1-dims are dropped first, which NumPy broadcasting ignores, so a (1, C, 1, 1) bias
 * meets a per-sample (C, H, W) activation as (C, 1, 1). */
static int graph_const(imp *im, ent *e, int role_param, int trainable, int squeeze) {
  if (e->vid >= 0) return e->vid;
  if (const_has_dyn(e)) {
    node_err(im, LT_ERR_UNSUPPORTED, "input '%s' depends on the batch size; Lathe graphs cannot "
             "hold batch-dependent constants", e->name);
    return -1;
  }
  lt_tensor *t = lt_tensor_clone(e->c, LT_MEM_WEIGHTS, im->err);
  if (!t) return -1;
  if (squeeze) {
    int lead = 0;
    while (lead < t->ndim && t->shape[lead] == 1) lead++;
    memmove(t->shape, t->shape + lead, sizeof(int64_t) * (size_t)(t->ndim - lead));
    t->ndim -= lead;
  }
  if (t->dtype != LT_F32) {
    lt_tensor_free(t);
    node_err(im, LT_ERR_UNSUPPORTED, "input '%s' is %s; graph tensors must be float32", e->name,
             lt_dtype_name(e->c->dtype));
    return -1;
  }
  int id = role_param ? lt_graph_add_param(im->g, e->name, t, trainable)
                        : lt_graph_add_const(im->g, e->name, t);
  if (id < 0) node_err(im, LT_ERR_NOMEM, "adding '%s' to the graph failed", e->name);
  e->vid = id;
  return id;
}

/* Adds one graph node for the current ONNX node. Output 0's ONNX name becomes the value name
 * (lt_graph_add_node names the value after the node, so the node is created under the tensor
 * name and renamed to the ONNX node name after). */
static lt_status emit(imp *im, lt_op_type op, const int *ins, int n_in, const lt_node_attrs *a) {
  const ox_node *n = im->node;
  int vid = lt_graph_add_node(im->g, op, n->out[0], ins, n_in, a, im->err);
  if (vid < 0) return lt_err_prefix(im->err, "node '%s' (%s, opset %lld)", n->name, n->op, (long long)im->opset);
  const lt_value *ov = &im->g->values[vid];
  /* Capping every activation keeps sizes and MAC counts far from int64 overflow downstream. */
  int64_t numel = 1;
  for (int d = 0; d < ov->ndim; d++) {
    numel *= ov->shape[d] > 0 ? ov->shape[d] : 1;
    if (ov->shape[d] > ((int64_t)1 << 31) || numel > ((int64_t)1 << 31))
      return node_err(im, LT_ERR_UNSUPPORTED, "the output has more than 2^31 elements per sample");
  }
  lt_node *gn = &im->g->nodes[im->g->n_nodes - 1];
  char fallback[64];
  snprintf(fallback, sizeof fallback, "%s_%d", n->op, (int)(n - im->m->nodes));
  char *name = strdup(n->name[0] ? n->name : fallback);
  if (!name) return lt_errorf(im->err, LT_ERR_NOMEM, "out of memory");
  free(gn->name);
  gn->name = name;
  ent *e = out_ent(im, 0);
  e->kind = ENT_VALUE;
  e->vid = vid;
  /* Outputs beyond the first (BatchNorm statistics, Dropout mask, MaxPool indices) are not
   * computed; a consumer of one gets a clear error. */
  for (int i = 1; i < n->n_out; i++)
    if (n->out[i][0]) out_ent(im, i)->kind = ENT_UNAVAILABLE;
  return LT_OK;
}

static int is_graph_output(const imp *im, const char *name) {
  for (int i = 0; i < im->m->n_outputs; i++)
    if (!strcmp(im->m->outputs[i].name, name)) return 1;
  return 0;
}

/* Output 0 is the same value as x (Identity, Cast to float, inference Dropout ...). A graph
 * output keeps its name through an Identity node. */
static lt_status alias(imp *im, const ent *x) {
  if (is_graph_output(im, im->node->out[0])) {
    lt_node_attrs a = lt_attrs_default();
    return emit(im, LT_OP_IDENTITY, &x->vid, 1, &a);
  }
  ent *e = out_ent(im, 0);
  e->kind = ENT_VALUE;
  e->vid = x->vid;
  return LT_OK;
}

static const lt_value *val(const imp *im, const ent *e) { return &im->g->values[e->vid]; }

/* ---- shape helpers shared by folding and mapping -------------------------------------------- */

static int norm_axis(int64_t axis, int rank, int *out) {
  if (axis < -rank || axis >= rank) return -1;
  *out = (int)(axis < 0 ? axis + rank : axis);
  return 0;
}

/* ONNX Slice on one axis of size d: clamps start/end as the spec says and returns the output
 * length; start/end come back normalised (end may be -1 for negative steps). */
static int64_t slice_axis(int64_t d, int64_t *start, int64_t *end, int64_t step) {
  int64_t s = *start, e = *end;
  if (s < 0) s = s < -d ? 0 : s + d;
  if (e < 0) e = e < -d ? -1 : e + d;
  if (step > 0) {
    if (s > d) s = d;
    if (e > d) e = d;
    if (e < 0) e = 0;
  } else {
    if (s > d - 1) s = d - 1;
    if (e > d - 1) e = d - 1;
  }
  *start = s;
  *end = e;
  return lt_op_slice_len(s, e, step);
}

static void row_major_strides(int nd, const int64_t *shape, int64_t *st) {
  int64_t s = 1;
  for (int i = nd - 1; i >= 0; i--) {
    st[i] = s;
    s *= shape[i];
  }
}

/* ---- constant folding ------------------------------------------------------------------------ */

/* A new constant whose element i is src element idx[i] (data movement: Gather, Slice,
 * Transpose); the batch mask moves with the data. Takes ownership of idx. */
static lt_status fold_take(imp *im, const ent *src, int ndim, const int64_t *shape, int64_t *idx) {
  lt_tensor *t = new_tensor(im, src->c->dtype, ndim, shape);
  if (!t) {
    free(idx);
    return im->err ? im->err->status : LT_ERR_NOMEM;
  }
  int64_t n = lt_tensor_numel(t);
  size_t es = lt_dtype_size(t->dtype);
  uint8_t *dyn = src->dyn ? calloc((size_t)n + 1, 1) : NULL;
  if (src->dyn && !dyn) {
    free(idx);
    lt_tensor_free(t);
    return lt_errorf(im->err, LT_ERR_NOMEM, "out of memory");
  }
  for (int64_t i = 0; i < n; i++) {
    memcpy((uint8_t *)t->data + (size_t)i * es, (const uint8_t *)src->c->data + (size_t)idx[i] * es, es);
    if (dyn) dyn[i] = src->dyn[idx[i]];
  }
  free(idx);
  return def_const(im, t, dyn);
}

static int64_t *alloc_idx(imp *im, int ndim, const int64_t *shape) {
  int64_t n = lt_shape_numel(ndim, shape);
  int64_t *idx = malloc(sizeof *idx * (size_t)(n + 1));
  if (!idx) lt_errorf(im->err, LT_ERR_NOMEM, "out of memory folding constants");
  return idx;
}

/* Same data, new shape (Reshape, Flatten, Squeeze, Unsqueeze, Identity). */
static lt_status fold_reshape(imp *im, const ent *src, int ndim, const int64_t *shape) {
  if (lt_shape_numel(ndim, shape) != lt_tensor_numel(src->c))
    return node_err(im, LT_ERR_FORMAT, "reshaping a constant of %lld elements to %lld",
                    (long long)lt_tensor_numel(src->c), (long long)lt_shape_numel(ndim, shape));
  if (fold_account(im, (int64_t)lt_tensor_nbytes(src->c))) return im->err->status;
  lt_tensor *t = lt_tensor_clone(src->c, LT_MEM_WEIGHTS, im->err);
  if (!t) return im->err ? im->err->status : LT_ERR_NOMEM;
  t->ndim = ndim;
  memcpy(t->shape, shape, sizeof(int64_t) * (size_t)ndim);
  uint8_t *dyn = NULL;
  if (src->dyn) {
    size_t n = (size_t)lt_tensor_numel(t);
    dyn = malloc(n + 1);
    if (!dyn) {
      lt_tensor_free(t);
      return lt_errorf(im->err, LT_ERR_NOMEM, "out of memory");
    }
    memcpy(dyn, src->dyn, n);
  }
  return def_const(im, t, dyn);
}

static double get_d(const lt_tensor *t, int64_t i) {
  switch (t->dtype) {
  case LT_F32: return ((float *)t->data)[i];
  case LT_I64: return (double)((int64_t *)t->data)[i];
  case LT_I32: return ((int32_t *)t->data)[i];
  case LT_U8: return ((uint8_t *)t->data)[i];
  }
  return 0;
}
static int64_t get_i(const lt_tensor *t, int64_t i) {
  switch (t->dtype) {
  case LT_F32: return (int64_t)((float *)t->data)[i];
  case LT_I64: return ((int64_t *)t->data)[i];
  case LT_I32: return ((int32_t *)t->data)[i];
  case LT_U8: return ((uint8_t *)t->data)[i];
  }
  return 0;
}
static void set_d(lt_tensor *t, int64_t i, double v) {
  switch (t->dtype) {
  case LT_F32: ((float *)t->data)[i] = (float)v; break;
  case LT_I64: ((int64_t *)t->data)[i] = (int64_t)v; break;
  case LT_I32: ((int32_t *)t->data)[i] = (int32_t)v; break;
  case LT_U8: ((uint8_t *)t->data)[i] = (uint8_t)v; break;
  }
}
static void set_i(lt_tensor *t, int64_t i, int64_t v) {
  switch (t->dtype) {
  case LT_F32: ((float *)t->data)[i] = (float)v; break;
  case LT_I64: ((int64_t *)t->data)[i] = v; break;
  case LT_I32: ((int32_t *)t->data)[i] = (int32_t)v; break;
  case LT_U8: ((uint8_t *)t->data)[i] = (uint8_t)v; break;
  }
}

static lt_status fold_cast(imp *im, const ent *x, lt_dtype to) {
  lt_tensor *t = new_tensor(im, to, x->c->ndim, x->c->shape);
  if (!t) return im->err ? im->err->status : LT_ERR_NOMEM;
  int64_t n = lt_tensor_numel(t);
  for (int64_t i = 0; i < n; i++) {
    if (to == LT_F32 || x->c->dtype == LT_F32) set_d(t, i, get_d(x->c, i));
    else set_i(t, i, get_i(x->c, i));
  }
  uint8_t *dyn = NULL;
  if (x->dyn && (dyn = malloc((size_t)n + 1))) memcpy(dyn, x->dyn, (size_t)n);
  if (x->dyn && !dyn) {
    lt_tensor_free(t);
    return lt_errorf(im->err, LT_ERR_NOMEM, "out of memory");
  }
  return def_const(im, t, dyn);
}

/* Add/Sub/Mul/Div of two constants with NumPy broadcasting. */
static lt_status fold_binary(imp *im, const ent *a, const ent *b, char op) {
  if (!b) return node_err(im, LT_ERR_FORMAT, "missing its second input");
  if (const_has_dyn(a) || const_has_dyn(b))
    return node_err(im, LT_ERR_UNSUPPORTED, "arithmetic on the batch size; export the model with a "
                    "fixed batch or without shape arithmetic on it");
  if (a->c->dtype != b->c->dtype)
    return node_err(im, LT_ERR_FORMAT, "operands have different types (%s, %s)",
                    lt_dtype_name(a->c->dtype), lt_dtype_name(b->c->dtype));
  int nd = a->c->ndim > b->c->ndim ? a->c->ndim : b->c->ndim;
  int64_t as[LT_MAX_DIMS], bs[LT_MAX_DIMS], ys[LT_MAX_DIMS], ast[LT_MAX_DIMS], bst[LT_MAX_DIMS];
  for (int i = 0; i < nd; i++) {
    int ia = i - (nd - a->c->ndim), ib = i - (nd - b->c->ndim);
    as[i] = ia >= 0 ? a->c->shape[ia] : 1;
    bs[i] = ib >= 0 ? b->c->shape[ib] : 1;
    if (as[i] != bs[i] && as[i] != 1 && bs[i] != 1)
      return node_err(im, LT_ERR_FORMAT, "shapes do not broadcast");
    ys[i] = as[i] == 1 ? bs[i] : as[i];
  }
  row_major_strides(nd, as, ast);
  row_major_strides(nd, bs, bst);
  lt_tensor *t = new_tensor(im, a->c->dtype, nd, ys);
  if (!t) return im->err ? im->err->status : LT_ERR_NOMEM;
  int64_t n = lt_tensor_numel(t);
  for (int64_t i = 0; i < n; i++) {
    int64_t r = i, ia = 0, ib = 0;
    for (int d = nd - 1; d >= 0; d--) {
      int64_t c = r % ys[d];
      r /= ys[d];
      if (as[d] != 1) ia += c * ast[d];
      if (bs[d] != 1) ib += c * bst[d];
    }
    if (t->dtype == LT_F32) {
      double x = get_d(a->c, ia), y = get_d(b->c, ib);
      set_d(t, i, op == '+' ? x + y : op == '-' ? x - y : op == '*' ? x * y : x / y);
    } else {
      int64_t x = get_i(a->c, ia), y = get_i(b->c, ib);
      if (op == '/' && (y == 0 || (x == INT64_MIN && y == -1))) {
        lt_tensor_free(t);
        return node_err(im, LT_ERR_FORMAT, "integer division by zero in a constant");
      }
      /* Wrapping arithmetic, as onnxruntime does, without signed-overflow UB. */
      uint64_t ux = (uint64_t)x, uy = (uint64_t)y;
      set_i(t, i, op == '+' ? (int64_t)(ux + uy) : op == '-' ? (int64_t)(ux - uy)
                  : op == '*' ? (int64_t)(ux * uy) : x / y);
    }
  }
  return def_const(im, t, NULL);
}

/* Reshape target → concrete dims: 0 copies the input dim (unless allowzero), -1 is inferred. */
static lt_status reshape_dims(imp *im, int in_nd, const int64_t *in_shape, int64_t in_numel,
                              int64_t *sh, int nd, int allowzero) {
  int infer = -1;
  int64_t known = 1;
  for (int i = 0; i < nd; i++) {
    if (sh[i] == 0 && !allowzero) {
      if (i >= in_nd) return node_err(im, LT_ERR_FORMAT, "shape copies dim %d the input lacks", i);
      sh[i] = in_shape[i];
    }
    if (sh[i] == -1) {
      if (infer >= 0) return node_err(im, LT_ERR_FORMAT, "shape has more than one -1");
      infer = i;
    } else if (sh[i] < 0) {
      return node_err(im, LT_ERR_FORMAT, "shape has a negative dimension %lld", (long long)sh[i]);
    } else {
      if (sh[i] > 0 && known > OX_MAX_TENSOR_ELEMS / sh[i])
        return node_err(im, LT_ERR_FORMAT, "shape is absurdly large");
      known *= sh[i];
    }
  }
  if (infer >= 0) {
    if (known == 0 || in_numel % known) return node_err(im, LT_ERR_FORMAT, "cannot infer the -1 dimension");
    sh[infer] = in_numel / known;
  } else if (known != in_numel) {
    return node_err(im, LT_ERR_FORMAT, "target shape holds %lld elements, input %lld",
                    (long long)known, (long long)in_numel);
  }
  return LT_OK;
}

/* Squeeze/Unsqueeze axes: from the attribute before opset 13, from input 1 after. */
static int axes_of(imp *im, int64_t *axes, int cap) {
  if (im->opset < 13) return attr_ints(im->node, "axes", axes, cap);
  return const_ints(input(im, 1), axes, cap);
}

/* New shape after Unsqueeze (unsq) or Squeeze; for Squeeze without axes, every 1-dim from
 * first_dim on is removed. */
static lt_status squeeze_shape(imp *im, int unsq, int nd, const int64_t *shape, int first_dim,
                               int *out_nd, int64_t *out) {
  int64_t axes[LT_MAX_DIMS];
  int na = axes_of(im, axes, LT_MAX_DIMS);
  uint8_t mark[LT_MAX_DIMS * 2] = {0};
  if (unsq) {
    if (na < 0) return node_err(im, LT_ERR_FORMAT, "Unsqueeze needs axes");
    int ond = nd + na;
    if (ond > LT_MAX_DIMS) return node_err(im, LT_ERR_UNSUPPORTED, "result has more than %d dims", LT_MAX_DIMS);
    for (int i = 0; i < na; i++) {
      int ax;
      if (norm_axis(axes[i], ond, &ax) || mark[ax]) return node_err(im, LT_ERR_FORMAT, "bad axes");
      mark[ax] = 1;
    }
    for (int i = 0, j = 0; i < ond; i++) out[i] = mark[i] ? 1 : shape[j++];
    *out_nd = ond;
    return LT_OK;
  }
  if (na < 0) {
    for (int i = first_dim; i < nd; i++) mark[i] = shape[i] == 1;
  } else {
    for (int i = 0; i < na; i++) {
      int ax;
      if (norm_axis(axes[i], nd, &ax) || shape[ax] != 1 || mark[ax])
        return node_err(im, LT_ERR_FORMAT, "squeezed axis %lld is not a 1-dim", (long long)axes[i]);
      mark[ax] = 1;
    }
  }
  int o = 0;
  for (int i = 0; i < nd; i++)
    if (!mark[i]) out[o++] = shape[i];
  *out_nd = o;
  return LT_OK;
}

/* Slice parameters (starts, ends, axes, steps) from attributes (opset < 10) or inputs. Fills
 * per-axis start/end/step for rank nd and the output shape. */
static lt_status slice_params(imp *im, int nd, const int64_t *shape, int64_t *st, int64_t *en,
                              int64_t *sp, int64_t *oshape, uint8_t *touched) {
  int64_t s[LT_MAX_DIMS], e[LT_MAX_DIMS], ax[LT_MAX_DIMS], stp[LT_MAX_DIMS];
  int ns, ne, na, nstp;
  if (im->opset < 10) {
    ns = attr_ints(im->node, "starts", s, LT_MAX_DIMS);
    ne = attr_ints(im->node, "ends", e, LT_MAX_DIMS);
    na = attr_ints(im->node, "axes", ax, LT_MAX_DIMS);
    nstp = -1;
  } else {
    for (int i = 1; i <= 4; i++) {
      ent *x = input(im, i);
      if (x && x->kind != ENT_CONST)
        return node_err(im, LT_ERR_UNSUPPORTED, "slice bounds computed at run time are not supported");
    }
    ns = const_ints(input(im, 1), s, LT_MAX_DIMS);
    ne = const_ints(input(im, 2), e, LT_MAX_DIMS);
    na = const_ints(input(im, 3), ax, LT_MAX_DIMS);
    nstp = const_ints(input(im, 4), stp, LT_MAX_DIMS);
  }
  if (ns < 0 || ne != ns || (na >= 0 && na != ns) || (nstp >= 0 && nstp != ns))
    return node_err(im, LT_ERR_FORMAT, "starts, ends, axes and steps are missing or differ in length");
  for (int i = 0; i < nd; i++) {
    st[i] = 0;
    en[i] = shape[i];
    sp[i] = 1;
    oshape[i] = shape[i];
    touched[i] = 0;
  }
  for (int i = 0; i < ns; i++) {
    int a;
    if (norm_axis(na >= 0 ? ax[i] : i, nd, &a) || touched[a])
      return node_err(im, LT_ERR_FORMAT, "slice axis %lld is out of range or repeated", (long long)(na >= 0 ? ax[i] : i));
    int64_t step = nstp >= 0 ? stp[i] : 1;
    if (step == 0 || step == INT64_MIN) return node_err(im, LT_ERR_FORMAT, "slice step %lld is invalid", (long long)step);
    touched[a] = 1;
    st[a] = s[i];
    en[a] = e[i];
    sp[a] = step;
    oshape[a] = slice_axis(shape[a], &st[a], &en[a], step);
  }
  return LT_OK;
}

static lt_status fold_slice(imp *im, const ent *x) {
  int nd = x->c->ndim;
  int64_t st[LT_MAX_DIMS], en[LT_MAX_DIMS], sp[LT_MAX_DIMS], os[LT_MAX_DIMS], xs[LT_MAX_DIMS];
  uint8_t touched[LT_MAX_DIMS];
  lt_status s = slice_params(im, nd, x->c->shape, st, en, sp, os, touched);
  if (s) return s;
  int64_t *idx = alloc_idx(im, nd, os);
  if (!idx) return LT_ERR_NOMEM;
  row_major_strides(nd, x->c->shape, xs);
  int64_t n = lt_shape_numel(nd, os);
  for (int64_t i = 0; i < n; i++) {
    int64_t r = i, src = 0;
    for (int d = nd - 1; d >= 0; d--) {
      src += (st[d] + (r % os[d]) * sp[d]) * xs[d];
      r /= os[d];
    }
    idx[i] = src;
  }
  return fold_take(im, x, nd, os, idx);
}

static lt_status fold_gather(imp *im, const ent *x, const ent *ind) {
  int axis;
  if (!ind) return node_err(im, LT_ERR_FORMAT, "missing its second input");
  if (norm_axis(attr_i(im->node, "axis", 0), x->c->ndim, &axis))
    return node_err(im, LT_ERR_FORMAT, "axis out of range");
  if (ind->c->dtype == LT_F32) return node_err(im, LT_ERR_FORMAT, "indices must be integers");
  int nd = x->c->ndim - 1 + ind->c->ndim;
  if (nd > LT_MAX_DIMS) return node_err(im, LT_ERR_UNSUPPORTED, "result has more than %d dims", LT_MAX_DIMS);
  int64_t os[LT_MAX_DIMS], xs[LT_MAX_DIMS];
  int o = 0;
  for (int i = 0; i < axis; i++) os[o++] = x->c->shape[i];
  for (int i = 0; i < ind->c->ndim; i++) os[o++] = ind->c->shape[i];
  for (int i = axis + 1; i < x->c->ndim; i++) os[o++] = x->c->shape[i];
  int64_t *idx = alloc_idx(im, nd, os);
  if (!idx) return LT_ERR_NOMEM;
  row_major_strides(x->c->ndim, x->c->shape, xs);
  int64_t n = lt_shape_numel(nd, os), nind = lt_tensor_numel(ind->c);
  int64_t inner = xs[axis], dim = x->c->shape[axis];
  for (int64_t i = 0; i < n; i++) {
    int64_t in_i = i % inner, rest = i / inner;
    int64_t k = rest % nind, outer = rest / nind;
    int64_t q = get_i(ind->c, k);
    if (q < -dim || q >= dim) {
      free(idx);
      return node_err(im, LT_ERR_FORMAT, "index %lld is out of range for a dim of %lld", (long long)q, (long long)dim);
    }
    if (q < 0) q += dim;
    idx[i] = (outer * dim + q) * inner + in_i;
  }
  return fold_take(im, x, nd, os, idx);
}

static lt_status fold_transpose(imp *im, const ent *x, const int64_t *perm) {
  int nd = x->c->ndim;
  int64_t os[LT_MAX_DIMS], xs[LT_MAX_DIMS];
  row_major_strides(nd, x->c->shape, xs);
  for (int i = 0; i < nd; i++) os[i] = x->c->shape[perm[i]];
  int64_t *idx = alloc_idx(im, nd, os);
  if (!idx) return LT_ERR_NOMEM;
  int64_t n = lt_shape_numel(nd, os);
  for (int64_t i = 0; i < n; i++) {
    int64_t r = i, src = 0;
    for (int d = nd - 1; d >= 0; d--) {
      src += (r % os[d]) * xs[perm[d]];
      r /= os[d];
    }
    idx[i] = src;
  }
  return fold_take(im, x, nd, os, idx);
}

static lt_status fold_concat(imp *im, int axis_raw) {
  const ox_node *n = im->node;
  ent *first = input(im, 0);
  if (!first) return node_err(im, LT_ERR_FORMAT, "no inputs");
  int nd = first->c->ndim, axis;
  if (norm_axis(axis_raw, nd, &axis)) return node_err(im, LT_ERR_FORMAT, "axis out of range");
  int64_t os[LT_MAX_DIMS];
  memcpy(os, first->c->shape, sizeof(int64_t) * (size_t)nd);
  os[axis] = 0;
  int any_dyn = 0;
  for (int i = 0; i < n->n_in; i++) {
    ent *x = input(im, i);
    if (!x) continue;
    if (x->c->ndim != nd || x->c->dtype != first->c->dtype)
      return node_err(im, LT_ERR_FORMAT, "inputs differ in rank or type");
    for (int d = 0; d < nd; d++)
      if (d != axis && x->c->shape[d] != os[d]) return node_err(im, LT_ERR_FORMAT, "inputs differ in shape");
    if (os[axis] > OX_MAX_TENSOR_ELEMS - x->c->shape[axis]) return node_err(im, LT_ERR_FORMAT, "result too large");
    os[axis] += x->c->shape[axis];
    any_dyn |= x->dyn != NULL;
  }
  lt_tensor *t = new_tensor(im, first->c->dtype, nd, os);
  if (!t) return im->err ? im->err->status : LT_ERR_NOMEM;
  int64_t outer = 1, inner = 1, total = lt_tensor_numel(t);
  for (int d = 0; d < axis; d++) outer *= os[d];
  for (int d = axis + 1; d < nd; d++) inner *= os[d];
  size_t es = lt_dtype_size(t->dtype);
  uint8_t *dyn = any_dyn ? calloc((size_t)total + 1, 1) : NULL;
  if (any_dyn && !dyn) {
    lt_tensor_free(t);
    return lt_errorf(im->err, LT_ERR_NOMEM, "out of memory");
  }
  int64_t off = 0; /* elements along axis written so far */
  for (int i = 0; i < n->n_in; i++) {
    ent *x = input(im, i);
    if (!x) continue;
    int64_t rows = x->c->shape[axis] * inner;
    for (int64_t o = 0; o < outer; o++) {
      int64_t dst = o * os[axis] * inner + off * inner;
      memcpy((uint8_t *)t->data + (size_t)dst * es, (uint8_t *)x->c->data + (size_t)(o * rows) * es, (size_t)rows * es);
      if (x->dyn) memcpy(dyn + dst, x->dyn + o * rows, (size_t)rows);
    }
    off += x->c->shape[axis];
  }
  return def_const(im, t, dyn);
}

/* Constant, ConstantOfShape: the value attribute(s). */
static lt_status fold_constant(imp *im) {
  const ox_node *n = im->node;
  const ox_attr *a;
  if ((a = ox_node_attr(n, "value")) && a->t) {
    if (fold_account(im, (int64_t)lt_tensor_nbytes(a->t))) return im->err->status;
    lt_tensor *t = lt_tensor_clone(a->t, LT_MEM_WEIGHTS, im->err);
    return t ? def_const(im, t, NULL) : LT_ERR_NOMEM;
  }
  int64_t one = 1;
  lt_tensor *t = NULL;
  if ((a = ox_node_attr(n, "value_float")) && a->type == OX_ATTR_FLOAT) {
    if ((t = new_tensor(im, LT_F32, 0, NULL))) ((float *)t->data)[0] = a->f;
  } else if ((a = ox_node_attr(n, "value_int")) && a->type == OX_ATTR_INT) {
    if ((t = new_tensor(im, LT_I64, 0, NULL))) ((int64_t *)t->data)[0] = a->i;
  } else if ((a = ox_node_attr(n, "value_floats")) && a->type == OX_ATTR_FLOATS) {
    one = a->n;
    if ((t = new_tensor(im, LT_F32, 1, &one)) && a->n) memcpy(t->data, a->floats, sizeof(float) * (size_t)a->n);
  } else if ((a = ox_node_attr(n, "value_ints")) && a->type == OX_ATTR_INTS) {
    one = a->n;
    if ((t = new_tensor(im, LT_I64, 1, &one)) && a->n) memcpy(t->data, a->ints, sizeof(int64_t) * (size_t)a->n);
  } else {
    return node_err(im, LT_ERR_UNSUPPORTED, "Constant without a tensor, float or int value");
  }
  return t ? def_const(im, t, NULL) : (im->err ? im->err->status : LT_ERR_NOMEM);
}

static lt_status fold_constant_of_shape(imp *im, const ent *shape_in) {
  int64_t sh[LT_MAX_DIMS];
  int nd = const_ints(shape_in, sh, LT_MAX_DIMS);
  if (nd < 0) return node_err(im, LT_ERR_UNSUPPORTED, "shape must be a constant int64 vector of at most %d dims", LT_MAX_DIMS);
  if (const_has_dyn(shape_in))
    return node_err(im, LT_ERR_UNSUPPORTED, "the shape depends on the batch size");
  const ox_attr *a = ox_node_attr(im->node, "value");
  if (a && (!a->t || lt_tensor_numel(a->t) != 1)) return node_err(im, LT_ERR_FORMAT, "value must hold one element");
  lt_tensor *t = new_tensor(im, a ? a->t->dtype : LT_F32, nd, sh);
  if (!t) return im->err ? im->err->status : LT_ERR_NOMEM;
  int64_t n = lt_tensor_numel(t);
  size_t es = lt_dtype_size(t->dtype);
  for (int64_t i = 0; a && i < n; i++) memcpy((uint8_t *)t->data + (size_t)i * es, a->t->data, es);
  return def_const(im, t, NULL); /* lt_tensor_new zeroes: the default value is 0.0f */
}

/* Shape of a constant or a graph value; for a graph value the batch element is marked. */
static lt_status fold_shape(imp *im, const ent *x) {
  int64_t full[LT_MAX_DIMS + 1];
  int nd;
  int batch = x->kind == ENT_VALUE;
  if (batch) {
    const lt_value *v = val(im, x);
    nd = v->ndim + 1;
    if (nd > LT_MAX_DIMS) return node_err(im, LT_ERR_UNSUPPORTED, "input rank too large");
    full[0] = 1;
    memcpy(full + 1, v->shape, sizeof(int64_t) * (size_t)v->ndim);
  } else {
    nd = x->c->ndim;
    memcpy(full, x->c->shape, sizeof(int64_t) * (size_t)nd);
  }
  /* Opset 15 added start/end attributes, clamped like Slice. */
  int64_t s = attr_i(im->node, "start", 0), e = attr_i(im->node, "end", nd);
  int64_t len = slice_axis(nd, &s, &e, 1);
  lt_tensor *t = new_tensor(im, LT_I64, 1, &len);
  if (!t) return im->err ? im->err->status : LT_ERR_NOMEM;
  uint8_t *dyn = batch ? calloc((size_t)len + 1, 1) : NULL;
  if (batch && !dyn) {
    lt_tensor_free(t);
    return lt_errorf(im->err, LT_ERR_NOMEM, "out of memory");
  }
  for (int64_t i = 0; i < len; i++) {
    ((int64_t *)t->data)[i] = full[s + i];
    if (dyn) dyn[i] = (s + i) == 0;
  }
  return def_const(im, t, dyn);
}

static lt_dtype cast_target(int64_t to, int *ok) {
  *ok = 1;
  switch (to) {
  case OX_FLOAT: case OX_DOUBLE: return LT_F32;
  case OX_INT64: return LT_I64;
  case OX_INT32: case OX_INT8: return LT_I32;
  case OX_UINT8: case OX_BOOL: return LT_U8;
  default: *ok = 0; return LT_F32;
  }
}

/* Evaluates the current node on constant inputs. Returns LT_ERR_UNSUPPORTED (without touching
 * err) through *handled = 0 for ops that are not folded. */
static lt_status fold_node(imp *im, int *handled) {
  const ox_node *n = im->node;
  const char *op = n->op;
  ent *x = input(im, 0);
  *handled = 1;
  if (!strcmp(op, "Constant")) return fold_constant(im);
  if (!strcmp(op, "Identity") || !strcmp(op, "Dropout"))
    return fold_reshape(im, x, x->c->ndim, x->c->shape);
  if (!strcmp(op, "Cast")) {
    int ok;
    lt_dtype to = cast_target(attr_i(n, "to", 0), &ok);
    if (!ok) return node_err(im, LT_ERR_UNSUPPORTED, "Cast to ONNX type %lld", (long long)attr_i(n, "to", 0));
    return fold_cast(im, x, to);
  }
  if (!strcmp(op, "Shape")) return fold_shape(im, x);
  if (!strcmp(op, "ConstantOfShape")) return fold_constant_of_shape(im, x);
  if (!strcmp(op, "Gather")) return fold_gather(im, x, input(im, 1));
  if (!strcmp(op, "Slice")) return fold_slice(im, x);
  if (!strcmp(op, "Concat")) return fold_concat(im, (int)attr_i(n, "axis", 0));
  if (!strcmp(op, "Add")) return fold_binary(im, x, input(im, 1), '+');
  if (!strcmp(op, "Sub")) return fold_binary(im, x, input(im, 1), '-');
  if (!strcmp(op, "Mul")) return fold_binary(im, x, input(im, 1), '*');
  if (!strcmp(op, "Div")) return fold_binary(im, x, input(im, 1), '/');
  if (!strcmp(op, "Transpose")) {
    int nd = x->c->ndim;
    int64_t perm[LT_MAX_DIMS];
    uint8_t seen[LT_MAX_DIMS] = {0};
    int np = attr_ints(n, "perm", perm, LT_MAX_DIMS);
    if (np < 0)
      for (int i = 0; i < (np = nd); i++) perm[i] = nd - 1 - i;
    if (np != nd) return node_err(im, LT_ERR_FORMAT, "perm has %d entries for rank %d", np, nd);
    for (int i = 0; i < nd; i++) {
      if (perm[i] < 0 || perm[i] >= nd || seen[perm[i]]) return node_err(im, LT_ERR_FORMAT, "perm is not a permutation");
      seen[perm[i]] = 1;
    }
    return fold_transpose(im, x, perm);
  }
  if (!strcmp(op, "Reshape")) {
    int64_t sh[LT_MAX_DIMS];
    int nd = const_ints(input(im, 1), sh, LT_MAX_DIMS);
    if (nd < 0) return node_err(im, LT_ERR_FORMAT, "shape must be a constant int64 vector of at most %d dims", LT_MAX_DIMS);
    lt_status st = reshape_dims(im, x->c->ndim, x->c->shape, lt_tensor_numel(x->c), sh, nd,
                                (int)attr_i(n, "allowzero", 0));
    return st ? st : fold_reshape(im, x, nd, sh);
  }
  if (!strcmp(op, "Flatten")) {
    int axis;
    if (norm_axis(attr_i(n, "axis", 1), x->c->ndim + 1, &axis)) return node_err(im, LT_ERR_FORMAT, "axis out of range");
    int64_t sh[2] = {lt_shape_numel(axis, x->c->shape), lt_shape_numel(x->c->ndim - axis, x->c->shape + axis)};
    return fold_reshape(im, x, 2, sh);
  }
  if (!strcmp(op, "Squeeze") || !strcmp(op, "Unsqueeze")) {
    int64_t sh[LT_MAX_DIMS];
    int nd;
    lt_status st = squeeze_shape(im, op[0] == 'U', x->c->ndim, x->c->shape, 0, &nd, sh);
    return st ? st : fold_reshape(im, x, nd, sh);
  }
  *handled = 0;
  return LT_OK;
}

/* ---- mapping onto graph ops ----------------------------------------------------------------- */

/* Resolves auto_pad for a 2-D window op over input (h, w); pads are top, left, bottom, right. */
static lt_status window_attrs(imp *im, const int64_t *hw, int *k, int *s, int *d, int *pads) {
  const ox_node *n = im->node;
  int64_t v[4];
  int cnt;
  if ((cnt = attr_ints(n, "strides", v, 4)) >= 0) {
    if (cnt != 2) return node_err(im, LT_ERR_UNSUPPORTED, "only 2-D windows are supported");
    s[0] = (int)v[0], s[1] = (int)v[1];
  }
  if ((cnt = attr_ints(n, "dilations", v, 4)) >= 0) {
    if (cnt != 2) return node_err(im, LT_ERR_UNSUPPORTED, "only 2-D windows are supported");
    d[0] = (int)v[0], d[1] = (int)v[1];
  }
  if ((cnt = attr_ints(n, "pads", v, 4)) >= 0) {
    if (cnt != 4) return node_err(im, LT_ERR_UNSUPPORTED, "only 2-D windows are supported");
    for (int i = 0; i < 4; i++) pads[i] = (int)v[i]; /* ONNX order: h_begin, w_begin, h_end, w_end */
  }
  for (int i = 0; i < 2; i++)
    if (k[i] < 1 || s[i] < 1 || d[i] < 1 || k[i] > 65535 || s[i] > 65535 || d[i] > 65535)
      return node_err(im, LT_ERR_FORMAT, "kernel, stride and dilation must be in 1..65535");
  for (int i = 0; i < 4; i++)
    if (pads[i] < 0 || pads[i] > 65535) return node_err(im, LT_ERR_FORMAT, "pads must be in 0..65535");
  const char *ap = attr_s(n, "auto_pad", "NOTSET");
  if (!strcmp(ap, "VALID")) {
    memset(pads, 0, 4 * sizeof *pads);
  } else if (!strcmp(ap, "SAME_UPPER") || !strcmp(ap, "SAME_LOWER")) {
    for (int i = 0; i < 2; i++) {
      int64_t out = (hw[i] + s[i] - 1) / s[i];
      int64_t total = (out - 1) * s[i] + (int64_t)(k[i] - 1) * d[i] + 1 - hw[i];
      if (total < 0) total = 0;
      int small = (int)(total / 2), big = (int)(total - total / 2);
      pads[i] = ap[5] == 'U' ? small : big;
      pads[i + 2] = ap[5] == 'U' ? big : small;
    }
  } else if (strcmp(ap, "NOTSET")) {
    return node_err(im, LT_ERR_FORMAT, "unknown auto_pad '%s'", ap);
  }
  return LT_OK;
}

static lt_status need_rank(imp *im, const ent *x, int rank, const char *what) {
  if (val(im, x)->ndim != rank)
    return node_err(im, LT_ERR_UNSUPPORTED, "input has %d dims per sample; %s", val(im, x)->ndim + 1, what);
  return LT_OK;
}

static lt_status map_conv(imp *im, ent *x, int transpose) {
  ent *w = input(im, 1), *b = input(im, 2);
  lt_status st;
  if ((st = need_rank(im, x, 3, "only 2-D convolutions (N, C, H, W) are supported"))) return st;
  if (!w || w->kind != ENT_CONST || w->c->ndim != 4 || (b && (b->kind != ENT_CONST || b->c->ndim != 1)))
    return node_err(im, LT_ERR_UNSUPPORTED, "weights must be constant 4-D (and bias 1-D)");
  lt_node_attrs a = lt_attrs_default();
  a.kernel[0] = (int)w->c->shape[2];
  a.kernel[1] = (int)w->c->shape[3];
  int64_t ks[4];
  if (attr_ints(im->node, "kernel_shape", ks, 4) == 2 && (ks[0] != w->c->shape[2] || ks[1] != w->c->shape[3]))
    return node_err(im, LT_ERR_FORMAT, "kernel_shape disagrees with the weight shape");
  a.groups = (int)attr_i(im->node, "group", 1);
  if (a.groups < 1) return node_err(im, LT_ERR_FORMAT, "group must be >= 1");
  if ((st = window_attrs(im, val(im, x)->shape + 1, a.kernel, a.stride, a.dilation, a.pads))) return st;
  if (transpose) {
    int64_t op[4];
    if (ox_node_attr(im->node, "output_shape"))
      return node_err(im, LT_ERR_UNSUPPORTED, "ConvTranspose output_shape is not supported; export with explicit pads");
    if (attr_ints(im->node, "output_padding", op, 4) == 2) a.out_pad[0] = (int)op[0], a.out_pad[1] = (int)op[1];
  }
  int ins[3] = {x->vid, graph_const(im, w, 1, 1, 0), -1};
  if (ins[1] < 0) return im->err->status;
  if (b && (ins[2] = graph_const(im, b, 1, 1, 0)) < 0) return im->err->status;
  return emit(im, transpose ? LT_OP_CONV_TRANSPOSE2D : LT_OP_CONV2D, ins, b ? 3 : 2, &a);
}

static lt_status map_pool(imp *im, ent *x, lt_op_type op) {
  lt_status st;
  if ((st = need_rank(im, x, 3, "only 2-D pooling (N, C, H, W) is supported"))) return st;
  lt_node_attrs a = lt_attrs_default();
  if (op != LT_OP_GLOBAL_AVGPOOL) {
    int64_t ks[4];
    if (attr_ints(im->node, "kernel_shape", ks, 4) != 2) return node_err(im, LT_ERR_UNSUPPORTED, "kernel_shape must have 2 entries");
    if (ks[0] < 1 || ks[1] < 1 || ks[0] > 65535 || ks[1] > 65535) return node_err(im, LT_ERR_FORMAT, "bad kernel_shape");
    a.kernel[0] = (int)ks[0], a.kernel[1] = (int)ks[1];
    a.stride[0] = a.stride[1] = 1;
    if ((st = window_attrs(im, val(im, x)->shape + 1, a.kernel, a.stride, a.dilation, a.pads))) return st;
    a.ceil_mode = (int)attr_i(im->node, "ceil_mode", 0);
    a.count_include_pad = (int)attr_i(im->node, "count_include_pad", 0);
  }
  return emit(im, op, &x->vid, 1, &a);
}

static lt_status map_batchnorm(imp *im, ent *x) {
  lt_node_attrs a = lt_attrs_default();
  a.eps = attr_f(im->node, "epsilon", 1e-5f);
  /* ONNX: running = momentum * running + (1 - momentum) * batch; Lathe follows PyTorch. */
  a.momentum = 1.0f - attr_f(im->node, "momentum", 0.9f);
  int ins[5] = {x->vid};
  for (int i = 1; i <= 4; i++) {
    ent *p = input(im, i);
    if (!p || p->kind != ENT_CONST || p->c->ndim != 1)
      return node_err(im, LT_ERR_UNSUPPORTED, "scale, bias, mean and var must be constant vectors");
    if ((ins[i] = graph_const(im, p, 1, i <= 2, 0)) < 0) return im->err->status;
  }
  return emit(im, LT_OP_BATCHNORM, ins, 5, &a);
}

static lt_status map_binary(imp *im, ent *a_, ent *b_, lt_op_type op) {
  int ins[2];
  ent *e[2] = {a_, b_};
  for (int i = 0; i < 2; i++) {
    if (!e[i]) return node_err(im, LT_ERR_FORMAT, "needs two inputs");
    if (e[i]->kind == ENT_VALUE) {
      ins[i] = e[i]->vid;
    } else {
      if ((ins[i] = graph_const(im, e[i], 0, 0, 1)) < 0) return im->err->status;
      const lt_value *other = val(im, e[1 - i]);
      if (im->g->values[ins[i]].ndim > other->ndim)
        return node_err(im, LT_ERR_UNSUPPORTED, "constant '%s' has more dims than the per-sample "
                        "input; it would broadcast over the batch", e[i]->name);
    }
  }
  lt_node_attrs a = lt_attrs_default();
  return emit(im, op, ins, 2, &a);
}

static lt_status map_gemm(imp *im, ent *x, int matmul) {
  const ox_node *n = im->node;
  ent *w = input(im, 1), *c = matmul ? NULL : input(im, 2);
  lt_status st;
  /* The linear layer acts on the last axis, which is MatMul's semantics with a 2-D weight;
   * Gemm is defined on (N, K) only. */
  if (!matmul && (st = need_rank(im, x, 1, "Gemm takes (N, K) inputs"))) return st;
  if (val(im, x)->ndim < 1) return node_err(im, LT_ERR_UNSUPPORTED, "MatMul on a per-sample scalar");
  if (!w || w->kind != ENT_CONST || w->c->ndim != 2 || w->c->dtype != LT_F32)
    return node_err(im, LT_ERR_UNSUPPORTED, "the second input must be a constant float 2-D weight");
  if (!matmul && attr_i(n, "transA", 0))
    return node_err(im, LT_ERR_UNSUPPORTED, "transA = 1 is not supported");
  int transb = matmul ? 0 : (int)attr_i(n, "transB", 0);
  float alpha = matmul ? 1.f : attr_f(n, "alpha", 1.f), beta = matmul ? 1.f : attr_f(n, "beta", 1.f);
  int64_t K = val(im, x)->shape[val(im, x)->ndim - 1];
  int64_t M = transb ? w->c->shape[0] : w->c->shape[1];
  if ((transb ? w->c->shape[1] : w->c->shape[0]) != K)
    return node_err(im, LT_ERR_FORMAT, "weight shape does not match input width %lld", (long long)K);
  /* The linear layer wants W (M, K); the weight is (K, M) unless transB. Alpha and beta are
   * folded into the weight and the bias. A reused weight is copied, not shared. */
  int64_t ws[2] = {M, K};
  lt_tensor *W = lt_tensor_new(LT_F32, 2, ws, LT_MEM_WEIGHTS, im->err);
  if (!W) return im->err->status;
  const float *src = lt_tensor_f32(w->c);
  for (int64_t m = 0; m < M; m++)
    for (int64_t k = 0; k < K; k++) lt_tensor_f32(W)[m * K + k] = alpha * (transb ? src[m * K + k] : src[k * M + m]);
  int simple_w = !transb || alpha != 1.f ? 0 : 1;
  int ins[3] = {x->vid, -1, -1};
  if (simple_w) {
    lt_tensor_free(W);
    if ((ins[1] = graph_const(im, w, 1, 1, 0)) < 0) return im->err->status;
  } else {
    char name[OX_MAX_NAME + 16];
    snprintf(name, sizeof name, "%s%s", w->name, transb ? ".scaled" : ".T");
    if (lt_graph_find_value(im->g, name) >= 0) snprintf(name, sizeof name, "%s.%s.weight", w->name, n->out[0]);
    if ((ins[1] = lt_graph_add_param(im->g, name, W, 1)) < 0) return node_err(im, LT_ERR_NOMEM, "adding weight failed");
  }
  if (c) {
    if (c->kind != ENT_CONST || c->c->dtype != LT_F32) return node_err(im, LT_ERR_UNSUPPORTED, "bias C must be a constant float");
    int64_t cn = lt_tensor_numel(c->c);
    int ok = cn == 1 || (cn == M && c->c->shape[c->c->ndim - 1] == M);
    if (!ok) return node_err(im, LT_ERR_UNSUPPORTED, "bias C must broadcast as (M) over the batch");
    if (cn == M && c->c->ndim == 1 && beta == 1.f) {
      if ((ins[2] = graph_const(im, c, 1, 1, 0)) < 0) return im->err->status;
    } else {
      lt_tensor *B = lt_tensor_new(LT_F32, 1, &M, LT_MEM_WEIGHTS, im->err);
      if (!B) return im->err->status;
      for (int64_t m = 0; m < M; m++) lt_tensor_f32(B)[m] = beta * lt_tensor_f32(c->c)[cn == 1 ? 0 : m];
      char name[OX_MAX_NAME + 16];
      snprintf(name, sizeof name, "%s.bias", n->out[0]);
      if ((ins[2] = lt_graph_add_param(im->g, name, B, 1)) < 0) return node_err(im, LT_ERR_NOMEM, "adding bias failed");
    }
  }
  lt_node_attrs a = lt_attrs_default();
  return emit(im, LT_OP_LINEAR, ins, c ? 3 : 2, &a);
}

/* Reshape, Flatten, Squeeze, Unsqueeze on a graph value: a per-sample reshape, provided the
 * batch stays the leading dimension. full[] is the ONNX output shape (batch first). */
static lt_status emit_reshape(imp *im, ent *x, int nd, const int64_t *full) {
  if (nd < 1) return node_err(im, LT_ERR_UNSUPPORTED, "the result has no batch dimension");
  lt_node_attrs a = lt_attrs_default();
  if (nd - 1 > LT_MAX_ATTR_INTS) return node_err(im, LT_ERR_UNSUPPORTED, "too many dims");
  a.n_ints = nd - 1;
  for (int i = 1; i < nd; i++) a.ints[i - 1] = full[i];
  return emit(im, LT_OP_RESHAPE, &x->vid, 1, &a);
}

static lt_status map_reshape(imp *im, ent *x) {
  const lt_value *v = val(im, x);
  ent *s = input(im, 1);
  int64_t sh[LT_MAX_DIMS];
  int nd = const_ints(s, sh, LT_MAX_DIMS);
  if (nd < 1) return node_err(im, LT_ERR_UNSUPPORTED, "the target shape must be a constant int64 vector computable at import");
  int allowzero = (int)attr_i(im->node, "allowzero", 0);
  /* The leading target element must keep the batch: the batch itself (from Shape), 0 (copy), or
   * -1 with every other dim known. */
  int lead_batch = (s->dyn && s->dyn[0]) || (sh[0] == 0 && !allowzero) || sh[0] == -1;
  for (int i = 1; i < nd; i++)
    if (s->dyn && s->dyn[i]) return node_err(im, LT_ERR_UNSUPPORTED, "moves the batch dimension");
  if (!lead_batch)
    return node_err(im, LT_ERR_UNSUPPORTED, "target shape starts with %lld, which changes the batch "
                    "dimension; Lathe keeps the batch as the leading dimension", (long long)sh[0]);
  int64_t in_full[LT_MAX_DIMS + 1];
  in_full[0] = 1;
  memcpy(in_full + 1, v->shape, sizeof(int64_t) * (size_t)v->ndim);
  sh[0] = 1; /* per sample */
  lt_status st = reshape_dims(im, v->ndim + 1, in_full, lt_shape_numel(v->ndim, v->shape), sh, nd, allowzero);
  return st ? st : emit_reshape(im, x, nd, sh);
}

static lt_status map_pad(imp *im, ent *x) {
  const ox_node *n = im->node;
  const lt_value *v = val(im, x);
  int r = v->ndim + 1;
  if (strcmp(attr_s(n, "mode", "constant"), "constant"))
    return node_err(im, LT_ERR_UNSUPPORTED, "pad mode '%s'; only constant padding is supported", attr_s(n, "mode", ""));
  int64_t p[2 * LT_MAX_DIMS];
  double value = 0;
  int np;
  if (im->opset < 11) {
    np = attr_ints(n, "pads", p, 2 * LT_MAX_DIMS);
    value = attr_f(n, "value", 0.f);
  } else {
    np = const_ints(input(im, 1), p, 2 * LT_MAX_DIMS);
    ent *cv = input(im, 2);
    if (cv && !const_scalar(cv, &value)) return node_err(im, LT_ERR_UNSUPPORTED, "constant_value must be a constant scalar");
    if (input(im, 3)) return node_err(im, LT_ERR_UNSUPPORTED, "the axes input is not supported");
  }
  if (np != 2 * r) return node_err(im, LT_ERR_UNSUPPORTED, "pads must be a constant with %d entries", 2 * r);
  if (p[0] || p[r]) return node_err(im, LT_ERR_UNSUPPORTED, "padding the batch dimension");
  lt_node_attrs a = lt_attrs_default();
  a.n_ints = 2 * (r - 1);
  for (int i = 1; i < r; i++) {
    if (p[i] < -65535 || p[i] > 65535 || p[r + i] < -65535 || p[r + i] > 65535)
      return node_err(im, LT_ERR_FORMAT, "pad amounts are absurd");
    a.ints[i - 1] = p[i];
    a.ints[r - 1 + i - 1] = p[r + i];
  }
  a.value = (float)value;
  return emit(im, LT_OP_PAD, &x->vid, 1, &a);
}

static lt_status map_slice(imp *im, ent *x) {
  const lt_value *v = val(im, x);
  int r = v->ndim + 1;
  int64_t full[LT_MAX_DIMS + 1], st[LT_MAX_DIMS + 1], en[LT_MAX_DIMS + 1], sp[LT_MAX_DIMS + 1], os[LT_MAX_DIMS + 1];
  uint8_t touched[LT_MAX_DIMS + 1];
  if (r > LT_MAX_DIMS) return node_err(im, LT_ERR_UNSUPPORTED, "rank too large");
  /* The batch size is unknown: stand in a huge one, and accept only a slice that keeps all of it. */
  full[0] = INT64_MAX / 4;
  memcpy(full + 1, v->shape, sizeof(int64_t) * (size_t)v->ndim);
  lt_status s = slice_params(im, r, full, st, en, sp, os, touched);
  if (s) return s;
  if (touched[0] && (st[0] != 0 || sp[0] != 1 || os[0] != full[0]))
    return node_err(im, LT_ERR_UNSUPPORTED, "slicing the batch dimension");
  lt_node_attrs a = lt_attrs_default();
  int nd = r - 1;
  if (3 * nd > LT_MAX_ATTR_INTS) return node_err(im, LT_ERR_UNSUPPORTED, "rank too large");
  a.n_ints = 3 * nd;
  for (int i = 0; i < nd; i++) {
    a.ints[i] = st[i + 1];
    /* The graph's Slice reads ONNX semantics again, where -1 would mean "last": "before the
     * first element" of a backward slice is INT64_MIN there. */
    a.ints[nd + i] = sp[i + 1] < 0 && en[i + 1] < 0 ? INT64_MIN : en[i + 1];
    a.ints[2 * nd + i] = sp[i + 1];
  }
  return emit(im, LT_OP_SLICE, &x->vid, 1, &a);
}

static lt_status map_resize(imp *im, ent *x) {
  const ox_node *n = im->node;
  lt_status st;
  if ((st = need_rank(im, x, 3, "only 2-D resizing (N, C, H, W) is supported"))) return st;
  const lt_value *v = val(im, x);
  int upsample = !strcmp(n->op, "Upsample");
  /* Scales: attribute (Upsample-7), input 1 (Upsample-9, Resize-10), input 2 (Resize-11+);
   * sizes: input 3 (Resize-11+). */
  ent *scales = upsample || im->opset < 11 ? input(im, 1) : input(im, 2);
  ent *sizes = upsample || im->opset < 11 ? NULL : input(im, 3);
  double sc[4] = {1, 1, 1, 1};
  int64_t sz[4];
  lt_node_attrs a = lt_attrs_default();
  if (sizes && sizes->kind == ENT_CONST && lt_tensor_numel(sizes->c) == 4 && const_ints(sizes, sz, 4) == 4) {
    if (sz[1] != v->shape[0]) return node_err(im, LT_ERR_UNSUPPORTED, "resizing the channel dimension");
    if (sz[2] < 1 || sz[3] < 1 || sz[2] > (1 << 20) || sz[3] > (1 << 20))
      return node_err(im, LT_ERR_FORMAT, "sizes are out of range");
    a.out_h = (int)sz[2], a.out_w = (int)sz[3];
    sc[2] = (double)sz[2] / (double)v->shape[1];
    sc[3] = (double)sz[3] / (double)v->shape[2];
  } else if (scales && scales->kind == ENT_CONST && lt_tensor_numel(scales->c) == 4 && scales->c->dtype == LT_F32) {
    for (int i = 0; i < 4; i++) sc[i] = lt_tensor_f32(scales->c)[i];
  } else if (upsample && ox_node_attr(n, "scales") && ox_node_attr(n, "scales")->n == 4) {
    for (int i = 0; i < 4; i++) sc[i] = ox_node_attr(n, "scales")->floats[i];
  } else {
    return node_err(im, LT_ERR_UNSUPPORTED, "scales or sizes must be constant 4-vectors");
  }
  if (sc[0] != 1 || sc[1] != 1) return node_err(im, LT_ERR_UNSUPPORTED, "resizing batch or channels");
  if (!(sc[2] > 0 && sc[3] > 0 && sc[2] < 65536 && sc[3] < 65536)) return node_err(im, LT_ERR_FORMAT, "bad scales");
  if (!a.out_h) {
    double oh = floor((double)v->shape[1] * sc[2]), ow = floor((double)v->shape[2] * sc[3]);
    if (!(oh >= 1 && ow >= 1 && oh <= (1 << 20) && ow <= (1 << 20)))
      return node_err(im, LT_ERR_FORMAT, "output size %gx%g is out of range", oh, ow);
    a.out_h = (int)oh;
    a.out_w = (int)ow;
  }
  const char *mode = attr_s(n, "mode", "nearest");
  const char *ctm = im->opset < 11 ? "asymmetric" : attr_s(n, "coordinate_transformation_mode", "half_pixel");
  const char *nm = im->opset < 11 ? "floor" : attr_s(n, "nearest_mode", "round_prefer_floor");
  int integer_scale = sc[2] == floor(sc[2]) && sc[3] == floor(sc[3]);
  if (!strcmp(mode, "nearest")) {
    /* Lathe's nearest is PyTorch's: src = floor(dst * in / out). ONNX matches it with asymmetric
     * + floor, and with half-pixel centres at integer scales (no rounding ties arise). */
    int ok = (!strcmp(ctm, "asymmetric") && !strcmp(nm, "floor")) ||
             (integer_scale && (!strcmp(ctm, "half_pixel") || !strcmp(ctm, "pytorch_half_pixel")));
    if (!ok) return node_err(im, LT_ERR_UNSUPPORTED, "nearest resize with coordinate mode '%s' and "
                             "nearest_mode '%s' at scale %gx%g", ctm, nm, sc[2], sc[3]);
    a.mode = LT_UPSAMPLE_NEAREST;
  } else if (!strcmp(mode, "linear") || !strcmp(mode, "bilinear")) {
    a.mode = LT_UPSAMPLE_BILINEAR;
    if (!strcmp(ctm, "align_corners")) a.align_corners = 1;
    else if (!strcmp(ctm, "half_pixel") || (!strcmp(ctm, "pytorch_half_pixel") && a.out_h > 1 && a.out_w > 1)) a.align_corners = 0;
    else return node_err(im, LT_ERR_UNSUPPORTED, "linear resize with coordinate mode '%s'", ctm);
  } else {
    return node_err(im, LT_ERR_UNSUPPORTED, "resize mode '%s'", mode);
  }
  return emit(im, LT_OP_UPSAMPLE, &x->vid, 1, &a);
}

/* Maps the current node onto graph ops; at least one input is a graph value. */
static lt_status map_node(imp *im) {
  const ox_node *n = im->node;
  const char *op = n->op;
  ent *x = input(im, 0);
  lt_node_attrs a = lt_attrs_default();
  /* Binary ops may take the constant first (2 - x); every other op's data is input 0. */
  int binary = !strcmp(op, "Add") || !strcmp(op, "Sub") || !strcmp(op, "Mul") || !strcmp(op, "Div");
  if ((!x || x->kind != ENT_VALUE) && !binary)
    return node_err(im, LT_ERR_UNSUPPORTED, "the first input must be the data tensor");
  if (!strcmp(op, "Conv")) return map_conv(im, x, 0);
  if (!strcmp(op, "ConvTranspose")) return map_conv(im, x, 1);
  if (!strcmp(op, "BatchNormalization")) return map_batchnorm(im, x);
  if (!strcmp(op, "Relu")) return emit(im, LT_OP_RELU, &x->vid, 1, &a);
  if (!strcmp(op, "Sigmoid")) return emit(im, LT_OP_SIGMOID, &x->vid, 1, &a);
  if (!strcmp(op, "Tanh")) return emit(im, LT_OP_TANH, &x->vid, 1, &a);
  if (!strcmp(op, "LeakyRelu")) {
    a.alpha = attr_f(n, "alpha", 0.01f);
    return emit(im, LT_OP_LEAKY_RELU, &x->vid, 1, &a);
  }
  if (!strcmp(op, "Clip")) {
    double lo = -FLT_MAX, hi = FLT_MAX;
    if (im->opset < 11) {
      lo = attr_f(n, "min", -FLT_MAX);
      hi = attr_f(n, "max", FLT_MAX);
    } else {
      ent *l = input(im, 1), *h = input(im, 2);
      if ((l && !const_scalar(l, &lo)) || (h && !const_scalar(h, &hi)))
        return node_err(im, LT_ERR_UNSUPPORTED, "min and max must be constant scalars");
    }
    a.lo = (float)lo;
    a.hi = (float)hi;
    return emit(im, LT_OP_CLIP, &x->vid, 1, &a);
  }
  if (!strcmp(op, "MaxPool")) {
    if (attr_i(n, "storage_order", 0)) return node_err(im, LT_ERR_UNSUPPORTED, "storage_order 1");
    return map_pool(im, x, LT_OP_MAXPOOL);
  }
  if (!strcmp(op, "AveragePool")) return map_pool(im, x, LT_OP_AVGPOOL);
  if (!strcmp(op, "GlobalAveragePool")) return map_pool(im, x, LT_OP_GLOBAL_AVGPOOL);
  if (!strcmp(op, "Add")) return map_binary(im, x, input(im, 1), LT_OP_ADD);
  if (!strcmp(op, "Sub")) return map_binary(im, x, input(im, 1), LT_OP_SUB);
  if (!strcmp(op, "Mul")) return map_binary(im, x, input(im, 1), LT_OP_MUL);
  if (!strcmp(op, "Div")) return map_binary(im, x, input(im, 1), LT_OP_DIV);
  if (!strcmp(op, "Concat")) {
    int r = val(im, x)->ndim + 1, axis, ins[LT_MAX_IO], k = 0;
    if (norm_axis(attr_i(n, "axis", 1), r, &axis)) return node_err(im, LT_ERR_FORMAT, "axis out of range");
    if (axis == 0) return node_err(im, LT_ERR_UNSUPPORTED, "concatenating along the batch dimension");
    for (int i = 0; i < n->n_in; i++) {
      ent *e = input(im, i);
      if (!e) continue;
      if (e->kind != ENT_VALUE) return node_err(im, LT_ERR_UNSUPPORTED, "mixes constants with data along the batch");
      if (k == LT_MAX_IO) return node_err(im, LT_ERR_UNSUPPORTED, "more than %d inputs", LT_MAX_IO);
      ins[k++] = e->vid;
    }
    a.axis = axis - 1;
    return emit(im, LT_OP_CONCAT, ins, k, &a);
  }
  if (!strcmp(op, "Flatten")) {
    int axis;
    if (norm_axis(attr_i(n, "axis", 1), val(im, x)->ndim + 2, &axis)) return node_err(im, LT_ERR_FORMAT, "axis out of range");
    if (axis != 1) return node_err(im, LT_ERR_UNSUPPORTED, "Flatten with axis %d mixes the batch into features; only axis 1 is supported", axis);
    return emit(im, LT_OP_FLATTEN, &x->vid, 1, &a);
  }
  if (!strcmp(op, "Reshape")) return map_reshape(im, x);
  if (!strcmp(op, "Squeeze") || !strcmp(op, "Unsqueeze")) {
    const lt_value *v = val(im, x);
    int64_t full[LT_MAX_DIMS + 1], out[LT_MAX_DIMS + 1];
    int nd;
    if (v->ndim + 1 > LT_MAX_DIMS) return node_err(im, LT_ERR_UNSUPPORTED, "rank too large");
    full[0] = INT64_MAX / 4; /* the batch: never squeezable, never confused with a 1 */
    memcpy(full + 1, v->shape, sizeof(int64_t) * (size_t)v->ndim);
    lt_status st = squeeze_shape(im, op[0] == 'U', v->ndim + 1, full, 1, &nd, out);
    if (st) return st;
    if (nd < 1 || out[0] != INT64_MAX / 4) return node_err(im, LT_ERR_UNSUPPORTED, "moves the batch dimension");
    return emit_reshape(im, x, nd, out);
  }
  if (!strcmp(op, "Gemm")) return map_gemm(im, x, 0);
  if (!strcmp(op, "MatMul")) return map_gemm(im, x, 1);
  if (!strcmp(op, "Transpose")) {
    int r = val(im, x)->ndim + 1;
    int64_t perm[LT_MAX_DIMS];
    int np = attr_ints(n, "perm", perm, LT_MAX_DIMS);
    if (np < 0) return node_err(im, LT_ERR_UNSUPPORTED, "a default (reversing) perm moves the batch");
    if (np != r || perm[0] != 0) return node_err(im, LT_ERR_UNSUPPORTED, "perm must keep the batch first and cover every axis");
    a.n_ints = r - 1;
    for (int i = 1; i < r; i++) a.ints[i - 1] = perm[i] - 1;
    return emit(im, LT_OP_TRANSPOSE, &x->vid, 1, &a);
  }
  if (!strcmp(op, "Pad")) return map_pad(im, x);
  if (!strcmp(op, "Slice")) return map_slice(im, x);
  if (!strcmp(op, "Identity")) return alias(im, x);
  if (!strcmp(op, "Cast")) {
    int ok;
    if (cast_target(attr_i(n, "to", 0), &ok) != LT_F32 || !ok)
      return node_err(im, LT_ERR_UNSUPPORTED, "casting activations to a non-float type");
    return alias(im, x);
  }
  if (!strcmp(op, "Dropout")) {
    double p = 0.5;
    if (im->opset < 12) p = attr_f(n, "ratio", 0.5f);
    else if (input(im, 1) && !const_scalar(input(im, 1), &p))
      return node_err(im, LT_ERR_UNSUPPORTED, "ratio must be a constant");
    a.p = (float)p;
    return emit(im, LT_OP_DROPOUT, &x->vid, 1, &a);
  }
  if (!strcmp(op, "Resize") || !strcmp(op, "Upsample")) return map_resize(im, x);
  if (!strcmp(op, "Softmax")) {
    int r = val(im, x)->ndim + 1, axis;
    if (norm_axis(attr_i(n, "axis", im->opset < 13 ? 1 : -1), r, &axis)) return node_err(im, LT_ERR_FORMAT, "axis out of range");
    /* Before opset 13 Softmax flattens from axis on; the same as the last axis only when axis is
     * the last one. */
    if (axis != r - 1) return node_err(im, LT_ERR_UNSUPPORTED, "softmax over axis %d; only the last axis is supported", axis);
    return emit(im, LT_OP_SOFTMAX, &x->vid, 1, &a);
  }
  if (!strcmp(op, "Shape")) return fold_shape(im, x);
  if (!strcmp(op, "Gather") || !strcmp(op, "ConstantOfShape"))
    return node_err(im, LT_ERR_UNSUPPORTED, "%s on activations is not supported (only on values computable at import)", op);
  return node_err(im, LT_ERR_UNSUPPORTED, "op %s is not supported by Lathe's ONNX importer", op);
}

static const char *const known_ops[] = {
  "Conv", "ConvTranspose", "BatchNormalization", "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip",
  "MaxPool", "AveragePool", "GlobalAveragePool", "Add", "Sub", "Mul", "Div", "Concat", "Flatten",
  "Reshape", "Gemm", "MatMul", "Transpose", "Pad", "Slice", "Gather", "Shape", "Constant",
  "ConstantOfShape", "Cast", "Unsqueeze", "Squeeze", "Identity", "Dropout", "Resize", "Upsample",
  "Softmax", NULL};

static lt_status convert_node(imp *im) {
  const ox_node *n = im->node;
  int known = 0;
  for (int i = 0; known_ops[i]; i++) known |= !strcmp(known_ops[i], n->op);
  if ((n->domain && n->domain[0] && strcmp(n->domain, "ai.onnx")) || !known)
    return node_err(im, LT_ERR_UNSUPPORTED, "op %s%s%s is not supported by Lathe's ONNX importer",
                    n->domain && n->domain[0] ? n->domain : "", n->domain && n->domain[0] ? "." : "", n->op);
  if (n->n_out < 1 || !n->out[0][0]) return node_err(im, LT_ERR_FORMAT, "node has no output");
  int all_const = 1;
  for (int i = 0; i < n->n_in; i++) {
    ent *e = input(im, i);
    if (!e) continue;
    if (e->kind == ENT_UNAVAILABLE)
      return node_err(im, LT_ERR_UNSUPPORTED, "uses '%s', an extra output (statistics, mask or "
                      "indices) that Lathe does not compute", e->name);
    if (e->kind != ENT_CONST) all_const = 0;
  }
  if (all_const && strcmp(n->op, "Constant") && !input(im, 0))
    return node_err(im, LT_ERR_FORMAT, "missing its first input");
  if (all_const) {
    int handled;
    lt_status st = fold_node(im, &handled);
    if (handled) return st;
    return node_err(im, LT_ERR_UNSUPPORTED, "every input is a constant, and Lathe folds only shape "
                    "and arithmetic ops; fold the model first (e.g. onnxsim)");
  }
  return map_node(im);
}

/* ---- driver ---------------------------------------------------------------------------------- */

static lt_status add_inputs(imp *im) {
  int first = 1;
  for (int i = 0; i < im->m->n_inputs; i++) {
    const ox_valinfo *vi = &im->m->inputs[i];
    ent *e = &im->ents[ent_get(im, vi->name)];
    if (e->kind == ENT_CONST) continue; /* an initializer listed as input (IR < 4 style) */
    if (e->kind != ENT_UNDEF) return lt_errorf(im->err, LT_ERR_FORMAT, "graph input '%s' is declared twice", vi->name);
    if (vi->elem != OX_FLOAT)
      return lt_errorf(im->err, LT_ERR_UNSUPPORTED, "graph input '%s' has ONNX type %d; only float inputs are supported",
                       vi->name, vi->elem);
    int64_t shape[LT_MAX_DIMS];
    int nd = vi->ndim - 1;
    if (vi->ndim < 1)
      return lt_errorf(im->err, LT_ERR_UNSUPPORTED, "graph input '%s' declares no shape with a batch "
                       "dimension; pass the per-sample shape in lt_onnx_load_opts", vi->name);
    memcpy(shape, vi->dims + 1, sizeof(int64_t) * (size_t)nd);
    if (first && im->opts && im->opts->in_ndim > 0) {
      if (im->opts->in_ndim != nd)
        return lt_errorf(im->err, LT_ERR_INVALID, "input '%s' has %d dims per sample, the given shape %d",
                         vi->name, nd, im->opts->in_ndim);
      for (int d = 0; d < nd; d++)
        if (shape[d] < 0) shape[d] = im->opts->in_shape[d];
        else if (im->opts->in_shape[d] != shape[d])
          return lt_errorf(im->err, LT_ERR_INVALID, "input '%s' dim %d is %lld in the file, %lld given",
                           vi->name, d + 1, (long long)shape[d], (long long)im->opts->in_shape[d]);
    }
    int64_t numel = 1;
    for (int d = 0; d < nd; d++) {
      if (shape[d] <= 0 || shape[d] > (1 << 24))
        return lt_errorf(im->err, LT_ERR_INVALID, "graph input '%s' dim %d is symbolic or absurd (%lld); "
                         "pass the per-sample input shape in lt_onnx_load_opts", vi->name, d + 1, (long long)shape[d]);
      numel *= shape[d];
      /* Bounds every activation's size, so MAC counts and buffer sizes cannot overflow. */
      if (numel > ((int64_t)1 << 28))
        return lt_errorf(im->err, LT_ERR_UNSUPPORTED, "graph input '%s' has more than 2^28 elements "
                         "per sample", vi->name);
    }
    if (im->g->n_inputs >= LT_MAX_IO) return lt_errorf(im->err, LT_ERR_UNSUPPORTED, "more than %d graph inputs", LT_MAX_IO);
    e->kind = ENT_VALUE;
    e->vid = lt_graph_add_input(im->g, vi->name, LT_F32, nd, shape);
    if (e->vid < 0) return lt_errorf(im->err, LT_ERR_NOMEM, "adding input '%s' failed", vi->name);
    first = 0;
  }
  if (first) return lt_errorf(im->err, LT_ERR_FORMAT, "the model has no graph input besides its weights");
  return LT_OK;
}

/* Node order: file order when it is topological (ONNX requires it), else Kahn's algorithm.
 * Fails on a name produced twice, an input nobody produces, and cycles. */
static lt_status node_order(imp *im, int *order) {
  ox_model *m = im->m;
  int nn = m->n_nodes;
  for (int i = 0; i < nn; i++)
    for (int j = 0; j < m->nodes[i].n_out; j++) {
      const char *o = m->nodes[i].out[j];
      if (!o[0]) continue;
      ent *e = &im->ents[ent_get(im, o)];
      if (e->producer >= 0 || e->kind != ENT_UNDEF)
        return lt_errorf(im->err, LT_ERR_FORMAT, "tensor '%s' is produced twice (by node '%s' and %s)", o,
                         m->nodes[i].name, e->producer >= 0 ? m->nodes[e->producer].name : "an initializer or input");
      e->producer = i;
    }
  int *indeg = calloc((size_t)nn + 1, sizeof *indeg);
  if (!indeg) return lt_errorf(im->err, LT_ERR_NOMEM, "out of memory");
  int sorted = 1;
  size_t n_edges = 0;
  for (int i = 0; i < nn; i++)
    for (int j = 0; j < m->nodes[i].n_in; j++) {
      const char *s = m->nodes[i].in[j];
      if (!s[0]) continue;
      int k = ent_find(im, s);
      if (k < 0 || (im->ents[k].producer < 0 && im->ents[k].kind == ENT_UNDEF)) {
        free(indeg);
        return lt_errorf(im->err, LT_ERR_FORMAT, "node '%s' (%s) reads '%s', which no node, "
                         "initializer or graph input defines (dangling name)", m->nodes[i].name, m->nodes[i].op, s);
      }
      int p = im->ents[k].producer;
      if (p >= 0) {
        indeg[i]++;
        n_edges++;
        if (p >= i) sorted = 0;
      }
    }
  lt_status st = LT_OK;
  if (sorted) {
    for (int i = 0; i < nn; i++) order[i] = i;
  } else {
    /* Kahn's algorithm over a CSR adjacency (producer → consumers): linear in the graph size,
     * so a hostile node order cannot make the import quadratic. */
    {
      int *q = malloc(((size_t)nn + 1) * sizeof *q);
      int *st2 = calloc((size_t)nn + 2, sizeof *st2), *adj2 = malloc((n_edges + 1) * sizeof *adj2), *f2 = calloc((size_t)nn + 1, sizeof *f2);
      if (!q || !st2 || !adj2 || !f2) {
        st = lt_errorf(im->err, LT_ERR_NOMEM, "out of memory");
      } else {
        for (int i = 0; i < nn; i++)
          for (int j = 0; j < m->nodes[i].n_in; j++)
            if (m->nodes[i].in[j][0]) {
              int p = im->ents[ent_find(im, m->nodes[i].in[j])].producer;
              if (p >= 0) st2[p + 1]++;
            }
        for (int i = 0; i < nn; i++) st2[i + 1] += st2[i];
        for (int i = 0; i < nn; i++)
          for (int j = 0; j < m->nodes[i].n_in; j++)
            if (m->nodes[i].in[j][0]) {
              int p = im->ents[ent_find(im, m->nodes[i].in[j])].producer;
              if (p >= 0) adj2[st2[p] + f2[p]++] = i;
            }
        int head = 0, tail = 0;
        for (int i = 0; i < nn; i++)
          if (!indeg[i]) q[tail++] = i;
        while (head < tail) {
          int u = q[head++];
          order[head - 1] = u;
          for (int k = st2[u]; k < st2[u + 1]; k++)
            if (--indeg[adj2[k]] == 0) q[tail++] = adj2[k];
        }
        if (tail < nn) {
          int stuck = 0;
          while (indeg[stuck] == 0) stuck++;
          st = lt_errorf(im->err, LT_ERR_FORMAT, "the graph has a cycle through node '%s' (%s); ONNX "
                         "graphs must be acyclic", m->nodes[stuck].name, m->nodes[stuck].op);
        }
      }
      free(q);
      free(st2);
      free(adj2);
      free(f2);
    }
  }
  free(indeg);
  return st;
}

static lt_graph *import_model(ox_model *m, const lt_onnx_load_opts *opts, lt_err *err) {
  lt_err scratch; /* the converters read the status back from the error */
  if (!err) err = &scratch;
  if (m->opset < 9 || m->opset > 17) {
    lt_errorf(err, LT_ERR_UNSUPPORTED, "model uses opset %lld; Lathe imports opsets 9 to 17 "
              "(re-export, e.g. torch.onnx.export(..., opset_version=13))", (long long)m->opset);
    return NULL;
  }
  imp im = {0};
  im.m = m;
  im.opts = opts;
  im.err = err;
  im.opset = m->opset;
  size_t names = (size_t)m->n_inits + (size_t)m->n_inputs + (size_t)m->n_outputs;
  for (int i = 0; i < m->n_nodes; i++) names += (size_t)m->nodes[i].n_in + (size_t)m->nodes[i].n_out;
  if (names > ((size_t)1 << 22)) {
    lt_errorf(err, LT_ERR_UNSUPPORTED, "model makes %zu tensor references, beyond the 4 M Lathe "
              "imports", names);
    return NULL;
  }
  size_t tcap = 16;
  while (tcap < 2 * names + 16) tcap *= 2;
  im.tcap = (int)tcap;
  im.table = malloc(tcap * sizeof *im.table);
  im.ents = malloc((names + 1) * sizeof *im.ents);
  int *order = malloc(((size_t)m->n_nodes + 1) * sizeof *order);
  im.g = lt_graph_new();
  lt_status st = LT_OK;
  if (!im.table || !im.ents || !order || !im.g) {
    st = lt_errorf(err, LT_ERR_NOMEM, "out of memory importing the model");
    goto done;
  }
  memset(im.table, 0xff, tcap * sizeof *im.table);
  for (int i = 0; i < m->n_inits; i++) {
    ent *e = &im.ents[ent_get(&im, m->inits[i].name)];
    if (e->kind != ENT_UNDEF) {
      st = lt_errorf(err, LT_ERR_FORMAT, "initializer '%s' is defined twice", m->inits[i].name);
      goto done;
    }
    e->kind = ENT_CONST;
    e->c = m->inits[i].t; /* moved: the model no longer owns it */
    m->inits[i].t = NULL;
  }
  if ((st = add_inputs(&im))) goto done;
  if ((st = node_order(&im, order))) goto done;
  for (int k = 0; k < m->n_nodes; k++) {
    im.node = &m->nodes[order[k]];
    if ((st = convert_node(&im))) goto done;
  }
  im.node = NULL;
  for (int i = 0; i < m->n_outputs; i++) {
    int k = ent_find(&im, m->outputs[i].name);
    ent *e = k >= 0 ? &im.ents[k] : NULL;
    if (!e || e->kind == ENT_UNDEF) {
      st = lt_errorf(err, LT_ERR_FORMAT, "graph output '%s' is not produced by any node (dangling name)", m->outputs[i].name);
      goto done;
    }
    if (e->kind != ENT_VALUE) {
      st = lt_errorf(err, LT_ERR_UNSUPPORTED, "graph output '%s' does not depend on the input "
                     "(a constant); Lathe graphs compute every output from the input", m->outputs[i].name);
      goto done;
    }
    if (im.g->n_outputs >= LT_MAX_IO) {
      st = lt_errorf(err, LT_ERR_UNSUPPORTED, "more than %d graph outputs", LT_MAX_IO);
      goto done;
    }
    lt_graph_set_output(im.g, e->vid);
  }
  if (!m->n_outputs) {
    st = lt_errorf(err, LT_ERR_FORMAT, "the model declares no graph output");
    goto done;
  }
  lt_graph_prune(im.g);
  st = lt_graph_infer_shapes(im.g, err);
done:
  if (im.ents)
    for (int i = 0; i < im.n_ents; i++) {
      lt_tensor_free(im.ents[i].c);
      free(im.ents[i].dyn);
    }
  free(im.ents);
  free(im.table);
  free(order);
  if (st) {
    lt_graph_free(im.g);
    return NULL;
  }
  return im.g;
}

lt_graph *lt_onnx_load_buffer(const void *data, size_t len, const lt_onnx_load_opts *opts, lt_err *err) {
  ox_model *m = ox_model_parse(data, len, NULL, err);
  if (!m) return NULL;
  lt_graph *g = import_model(m, opts, err);
  ox_model_free(m);
  return g;
}

/* Reads a whole file, refusing anything beyond the protobuf size limit. */
static uint8_t *slurp(const char *path, size_t *len, lt_err *err) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    lt_errorf(err, LT_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
    return NULL;
  }
  struct stat sb;
  if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
    fclose(f);
    lt_errorf(err, LT_ERR_IO, "'%s' is not a regular file", path);
    return NULL;
  }
  if ((uint64_t)sb.st_size > OX_MAX_FILE_BYTES) {
    fclose(f);
    lt_errorf(err, LT_ERR_FORMAT, "'%s' is %lld bytes, beyond the 2 GiB ONNX limit", path, (long long)sb.st_size);
    return NULL;
  }
  size_t n = (size_t)sb.st_size;
  uint8_t *buf = malloc(n ? n : 1);
  if (!buf || fread(buf, 1, n, f) != n) {
    lt_errorf(err, buf ? LT_ERR_IO : LT_ERR_NOMEM, "reading '%s' failed", path);
    free(buf);
    fclose(f);
    return NULL;
  }
  fclose(f);
  *len = n;
  return buf;
}

static ox_model *parse_file(const char *path, lt_err *err) {
  size_t len = 0;
  uint8_t *buf = slurp(path, &len, err);
  if (!buf) return NULL;
  char dir[4096];
  const char *slash = strrchr(path, '/');
  if (!slash) snprintf(dir, sizeof dir, ".");
  else snprintf(dir, sizeof dir, "%.*s", (int)(slash - path) ? (int)(slash - path) : 1, path);
  ox_model *m = ox_model_parse(buf, len, dir, err);
  free(buf);
  if (!m) lt_err_prefix(err, "reading %s", path);
  return m;
}

lt_graph *lt_onnx_load(const char *path, const lt_onnx_load_opts *opts, lt_err *err) {
  ox_model *m = parse_file(path, err);
  if (!m) return NULL;
  lt_graph *g = import_model(m, opts, err);
  ox_model_free(m);
  if (!g) lt_err_prefix(err, "importing %s", path);
  return g;
}

lt_status lt_onnx_probe(const char *path, lt_onnx_info *info, lt_err *err) {
  ox_model *m = parse_file(path, err);
  if (!m) return err ? err->status : LT_ERR_FORMAT;
  memset(info, 0, sizeof *info);
  info->ir_version = m->ir_version;
  info->opset = m->opset;
  info->n_nodes = m->n_nodes;
  info->n_initializers = m->n_inits;
  if (m->producer) snprintf(info->producer, sizeof info->producer, "%s", m->producer);
  ox_model_free(m);
  return LT_OK;
}
