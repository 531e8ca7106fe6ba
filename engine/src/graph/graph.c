/* The graph IR: values and nodes, construction with per-node shape inference through the op
 * table, topological sorting, pruning, deep cloning, and MAC/parameter counts. */
#include <stdlib.h>
#include <string.h>

#include "ops/ops.h"

lt_node_attrs lt_attrs_default(void) {
  lt_node_attrs a;
  memset(&a, 0, sizeof a);
  a.stride[0] = a.stride[1] = 1;
  a.dilation[0] = a.dilation[1] = 1;
  a.groups = 1;
  a.eps = 1e-5f;
  a.momentum = 0.1f;
  return a;
}

lt_node_attrs lt_attrs_conv(int k, int stride, int pad, int dilation, int groups) {
  lt_node_attrs a = lt_attrs_default();
  a.kernel[0] = a.kernel[1] = k;
  a.stride[0] = a.stride[1] = stride;
  for (int i = 0; i < 4; i++) a.pads[i] = pad;
  a.dilation[0] = a.dilation[1] = dilation;
  a.groups = groups;
  return a;
}

lt_node_attrs lt_attrs_pool(int k, int stride, int pad) { return lt_attrs_conv(k, stride, pad, 1, 1); }

lt_graph *lt_graph_new(void) { return calloc(1, sizeof(lt_graph)); }

static void value_clear(lt_value *v) {
  free(v->name);
  lt_tensor_free(v->data);
}

void lt_graph_free(lt_graph *g) {
  if (!g) return;
  free(g->name_slots);
  for (int i = 0; i < g->n_values; i++) value_clear(&g->values[i]);
  for (int i = 0; i < g->n_nodes; i++) free(g->nodes[i].name);
  free(g->values);
  free(g->nodes);
  free(g);
}

/* ---- name index ---------------------------------------------------------------------------
 * ONNX graphs can hold 10^5 nodes, and import and export look every name up, so lookups go
 * through a hash index instead of a scan. A slot holds a value id + 1. Entries are checked
 * against the value's name, so a slot left behind by a rolled-back value is harmless. */

static uint32_t name_hash(const char *s) {
  uint32_t h = 2166136261u; /* FNV-1a */
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 16777619u;
  return h;
}

static void index_put(lt_graph *g, int id) {
  uint32_t m = (uint32_t)g->name_cap - 1, i = name_hash(g->values[id].name) & m;
  while (g->name_slots[i]) i = (i + 1) & m;
  g->name_slots[i] = id + 1;
  g->name_used++;
}

/* Rebuilds the index over every value; without memory the graph falls back to scanning. */
static void index_rebuild(lt_graph *g) {
  free(g->name_slots);
  g->name_slots = NULL;
  g->name_cap = g->name_used = 0;
  int cap = 64;
  while (cap < 4 * g->n_values && cap < (1 << 29)) cap *= 2;
  if (!(g->name_slots = calloc((size_t)cap, sizeof(int)))) return;
  g->name_cap = cap;
  for (int v = 0; v < g->n_values; v++) index_put(g, v);
}

/* Indexes value id, just appended: a table more than half full is rebuilt twice as large. */
static void index_add(lt_graph *g, int id) {
  if (g->name_cap == 0 || 2 * (g->name_used + 1) > g->name_cap)
    index_rebuild(g);
  else
    index_put(g, id);
}

int lt_graph_find_value(const lt_graph *g, const char *name) {
  if (g->name_cap == 0) {
    for (int i = 0; i < g->n_values; i++)
      if (strcmp(g->values[i].name, name) == 0) return i;
    return -1;
  }
  uint32_t m = (uint32_t)g->name_cap - 1, i = name_hash(name) & m;
  for (; g->name_slots[i]; i = (i + 1) & m) {
    int id = g->name_slots[i] - 1;
    if (id < g->n_values && strcmp(g->values[id].name, name) == 0) return id;
  }
  return -1;
}

/* Appends a value; returns its id or -1 (duplicate name, no memory). */
static int graph_push_value(lt_graph *g, const char *name, lt_value_kind kind, lt_err *err) {
  if (!name || !*name) {
    lt_errorf(err, LT_ERR_INVALID, "a value needs a non-empty name");
    return -1;
  }
  if (lt_graph_find_value(g, name) >= 0) {
    lt_errorf(err, LT_ERR_INVALID, "the name '%s' is already used in this graph; names are unique",
              name);
    return -1;
  }
  if (g->n_values == g->cap_values) {
    int cap = g->cap_values ? 2 * g->cap_values : 64;
    lt_value *v = realloc(g->values, sizeof *v * (size_t)cap);
    if (!v) {
      lt_errorf(err, LT_ERR_NOMEM, "out of memory growing the graph to %d values", cap);
      return -1;
    }
    g->values = v;
    g->cap_values = cap;
  }
  lt_value *v = &g->values[g->n_values];
  memset(v, 0, sizeof *v);
  v->name = strdup(name);
  if (!v->name) {
    lt_errorf(err, LT_ERR_NOMEM, "out of memory for a value name");
    return -1;
  }
  v->kind = kind;
  v->producer = -1;
  int id = g->n_values++;
  index_add(g, id);
  return id;
}

int lt_graph_add_input(lt_graph *g, const char *name, lt_dtype dtype, int ndim,
                       const int64_t *shape) {
  /* The batch takes one dim of the LT_MAX_DIMS a tensor can have. */
  if (g->n_inputs == LT_MAX_IO || ndim < 0 || ndim >= LT_MAX_DIMS) return -1;
  for (int i = 0; i < ndim; i++)
    if (shape[i] < 1) return -1;
  int id = graph_push_value(g, name, LT_VALUE_INPUT, NULL);
  if (id < 0) return -1;
  lt_value *v = &g->values[id];
  v->dtype = dtype;
  v->ndim = ndim;
  memcpy(v->shape, shape, sizeof(int64_t) * (size_t)ndim);
  g->inputs[g->n_inputs++] = id;
  return id;
}

static int graph_add_tensor(lt_graph *g, const char *name, lt_tensor *t, lt_value_kind kind,
                            int trainable) {
  if (!t) return -1;
  int id = graph_push_value(g, name, kind, NULL);
  if (id < 0) {
    lt_tensor_free(t);
    return -1;
  }
  lt_value *v = &g->values[id];
  v->dtype = t->dtype;
  v->ndim = t->ndim;
  memcpy(v->shape, t->shape, sizeof v->shape);
  v->data = t;
  v->trainable = kind == LT_VALUE_PARAM && trainable;
  return id;
}

int lt_graph_add_param(lt_graph *g, const char *name, lt_tensor *t, int trainable) {
  return graph_add_tensor(g, name, t, LT_VALUE_PARAM, trainable);
}

int lt_graph_add_const(lt_graph *g, const char *name, lt_tensor *t) {
  return graph_add_tensor(g, name, t, LT_VALUE_CONST, 0);
}

/* Checks arity and input ids, then infers the output's shape into *out. */
static lt_status node_infer(const lt_graph *g, const lt_node *n, lt_value *out, lt_err *err) {
  const lt_op_desc *d = lt_op_get(n->op);
  if (!d) return lt_errorf(err, LT_ERR_INVALID, "node '%s': op type %d is not an lt_op_type",
                           n->name, (int)n->op);
  if (n->n_in < d->min_in || n->n_in > d->max_in) {
    if (d->min_in == d->max_in)
      return lt_op_fail(err, LT_ERR_INVALID, n, "takes %d inputs, got %d", d->min_in, n->n_in);
    return lt_op_fail(err, LT_ERR_INVALID, n, "takes %d to %d inputs, got %d", d->min_in,
                      d->max_in, n->n_in);
  }
  for (int i = 0; i < n->n_in; i++) {
    int v = n->in[i];
    if (v < 0 || v >= g->n_values)
      return lt_op_fail(err, LT_ERR_INVALID, n, "input %d refers to value id %d, which does not "
                        "exist (an earlier add failed?)",
                        i, v);
    if (g->values[v].kind == LT_VALUE_ACT && g->values[v].producer < 0)
      return lt_op_fail(err, LT_ERR_INVALID, n, "input %d '%s' has no producer", i,
                        g->values[v].name);
  }
  return d->infer(g, n, out, err);
}

int lt_graph_add_node(lt_graph *g, lt_op_type op, const char *name, const int *inputs, int n_in,
                      const lt_node_attrs *a, lt_err *err) {
  if (n_in < 0 || n_in > LT_MAX_IO) {
    lt_errorf(err, LT_ERR_INVALID, "node '%s': %d inputs, at most %d are supported",
              name ? name : "?", n_in, LT_MAX_IO);
    return -1;
  }
  if (g->n_nodes == g->cap_nodes) {
    int cap = g->cap_nodes ? 2 * g->cap_nodes : 64;
    lt_node *nn = realloc(g->nodes, sizeof *nn * (size_t)cap);
    if (!nn) {
      lt_errorf(err, LT_ERR_NOMEM, "out of memory growing the graph to %d nodes", cap);
      return -1;
    }
    g->nodes = nn;
    g->cap_nodes = cap;
  }
  lt_node n;
  memset(&n, 0, sizeof n);
  n.name = (char *)(name ? name : "");
  n.op = op;
  n.n_in = n_in;
  if (n_in) memcpy(n.in, inputs, sizeof(int) * (size_t)n_in);
  n.a = a ? *a : lt_attrs_default();
  /* Infer first, into a scratch value, so that a failed add leaves the graph untouched. */
  lt_value out;
  memset(&out, 0, sizeof out);
  if (node_infer(g, &n, &out, err)) return -1;
  int id = graph_push_value(g, n.name, LT_VALUE_ACT, err);
  if (id < 0) return -1;
  n.name = strdup(n.name);
  if (!n.name) {
    value_clear(&g->values[--g->n_values]);
    lt_errorf(err, LT_ERR_NOMEM, "out of memory for a node name");
    return -1;
  }
  lt_value *v = &g->values[id];
  v->dtype = out.dtype;
  v->ndim = out.ndim;
  memcpy(v->shape, out.shape, sizeof v->shape);
  v->producer = g->n_nodes;
  n.n_out = 1;
  n.out[0] = id;
  g->nodes[g->n_nodes++] = n;
  return id;
}

void lt_graph_set_output(lt_graph *g, int value_id) {
  if (value_id < 0 || value_id >= g->n_values || g->n_outputs == LT_MAX_IO) return;
  for (int i = 0; i < g->n_outputs; i++)
    if (g->outputs[i] == value_id) return;
  g->outputs[g->n_outputs++] = value_id;
}

lt_status lt_graph_infer_shapes(lt_graph *g, lt_err *err) {
  for (int i = 0; i < g->n_nodes; i++) {
    lt_node *n = &g->nodes[i];
    lt_value out;
    memset(&out, 0, sizeof out);
    lt_status st = node_infer(g, n, &out, err);
    if (st) return st;
    lt_value *v = &g->values[n->out[0]];
    v->dtype = out.dtype;
    v->ndim = out.ndim;
    memcpy(v->shape, out.shape, sizeof v->shape);
  }
  return LT_OK;
}

lt_status lt_graph_toposort(lt_graph *g, lt_err *err) {
  /* Producers are recomputed from the nodes, since rewrites may have moved them. */
  for (int v = 0; v < g->n_values; v++) g->values[v].producer = -1;
  for (int i = 0; i < g->n_nodes; i++)
    for (int o = 0; o < g->nodes[i].n_out; o++) {
      int v = g->nodes[i].out[o];
      if (v < 0 || v >= g->n_values)
        return lt_errorf(err, LT_ERR_INVALID, "node '%s' writes value id %d, which does not exist",
                         g->nodes[i].name, v);
      if (g->values[v].producer >= 0)
        return lt_errorf(err, LT_ERR_INVALID, "value '%s' is produced by both '%s' and '%s'",
                         g->values[v].name, g->nodes[g->values[v].producer].name,
                         g->nodes[i].name);
      g->values[v].producer = i;
    }
  int n = g->n_nodes;
  int *pending = calloc((size_t)n + 1, sizeof(int)); /* unresolved inputs per node */
  int *order = malloc(sizeof(int) * ((size_t)n + 1));
  int *ready = malloc(sizeof(int) * ((size_t)n + 1));
  lt_node *sorted = malloc(sizeof(lt_node) * ((size_t)n + 1));
  lt_status st = LT_OK;
  if (!pending || !order || !ready || !sorted) {
    st = lt_errorf(err, LT_ERR_NOMEM, "out of memory sorting %d nodes", n);
    goto done;
  }
  for (int i = 0; i < n; i++)
    for (int k = 0; k < g->nodes[i].n_in; k++) {
      int v = g->nodes[i].in[k];
      if (v < 0 || v >= g->n_values) {
        st = lt_errorf(err, LT_ERR_INVALID, "node '%s' reads value id %d, which does not exist",
                       g->nodes[i].name, v);
        goto done;
      }
      if (g->values[v].kind == LT_VALUE_ACT && g->values[v].producer < 0) {
        st = lt_errorf(err, LT_ERR_INVALID, "node '%s' reads '%s', which no node produces "
                       "(dangling value)", g->nodes[i].name, g->values[v].name);
        goto done;
      }
      if (g->values[v].producer >= 0) pending[i]++;
    }
  /* Kahn's algorithm with a FIFO seeded in the current order, so a sorted graph stays as is. */
  int head = 0, tail = 0, done_n = 0;
  for (int i = 0; i < n; i++)
    if (!pending[i]) ready[tail++] = i;
  while (head < tail) {
    int i = ready[head++];
    order[done_n++] = i;
    for (int o = 0; o < g->nodes[i].n_out; o++)
      for (int j = 0; j < n; j++)
        for (int k = 0; k < g->nodes[j].n_in; k++)
          if (g->nodes[j].in[k] == g->nodes[i].out[o] && --pending[j] == 0) ready[tail++] = j;
  }
  if (done_n < n) {
    for (int i = 0; i < n; i++)
      if (pending[i]) {
        st = lt_errorf(err, LT_ERR_INVALID, "the graph has a cycle through node '%s' (%d nodes "
                       "cannot be ordered)", g->nodes[i].name, n - done_n);
        break;
      }
    goto done;
  }
  for (int i = 0; i < n; i++) sorted[i] = g->nodes[order[i]];
  memcpy(g->nodes, sorted, sizeof(lt_node) * (size_t)n);
  for (int i = 0; i < n; i++)
    for (int o = 0; o < g->nodes[i].n_out; o++) g->values[g->nodes[i].out[o]].producer = i;
done:
  free(pending);
  free(order);
  free(ready);
  free(sorted);
  return st;
}

void lt_graph_prune(lt_graph *g) {
  /* Mark backwards from the outputs; nodes are in topological order, so one reverse pass. */
  char *live_v = calloc((size_t)g->n_values + 1, 1), *live_n = calloc((size_t)g->n_nodes + 1, 1);
  int *remap = malloc(sizeof(int) * ((size_t)g->n_values + 1));
  if (!live_v || !live_n || !remap) goto done; /* pruning is an optimisation: skip it */
  for (int i = 0; i < g->n_outputs; i++) live_v[g->outputs[i]] = 1;
  for (int i = 0; i < g->n_inputs; i++) live_v[g->inputs[i]] = 1;
  for (int i = g->n_nodes - 1; i >= 0; i--) {
    lt_node *n = &g->nodes[i];
    for (int o = 0; o < n->n_out; o++) live_n[i] |= live_v[n->out[o]];
    if (!live_n[i]) continue;
    for (int o = 0; o < n->n_out; o++) live_v[n->out[o]] = 1;
    for (int k = 0; k < n->n_in; k++) live_v[n->in[k]] = 1;
  }
  int nv = 0;
  for (int v = 0; v < g->n_values; v++) {
    if (!live_v[v]) {
      value_clear(&g->values[v]);
      remap[v] = -1;
      continue;
    }
    remap[v] = nv;
    g->values[nv++] = g->values[v];
  }
  int nn = 0;
  for (int i = 0; i < g->n_nodes; i++) {
    if (!live_n[i]) {
      free(g->nodes[i].name);
      continue;
    }
    lt_node *n = &g->nodes[nn];
    *n = g->nodes[i];
    for (int k = 0; k < n->n_in; k++) n->in[k] = remap[n->in[k]];
    for (int o = 0; o < n->n_out; o++) {
      n->out[o] = remap[n->out[o]];
      g->values[n->out[o]].producer = nn;
    }
    nn++;
  }
  g->n_values = nv;
  g->n_nodes = nn;
  for (int i = 0; i < g->n_inputs; i++) g->inputs[i] = remap[g->inputs[i]];
  for (int i = 0; i < g->n_outputs; i++) g->outputs[i] = remap[g->outputs[i]];
  index_rebuild(g);
done:
  free(live_v);
  free(live_n);
  free(remap);
}

lt_graph *lt_graph_clone(const lt_graph *g, lt_err *err) {
  lt_graph *c = lt_graph_new();
  if (!c) goto nomem;
  c->values = calloc((size_t)g->n_values + 1, sizeof(lt_value));
  c->nodes = calloc((size_t)g->n_nodes + 1, sizeof(lt_node));
  if (!c->values || !c->nodes) goto nomem;
  c->cap_values = g->n_values + 1;
  c->cap_nodes = g->n_nodes + 1;
  for (int v = 0; v < g->n_values; v++) {
    c->values[v] = g->values[v];
    c->values[v].name = NULL;
    c->values[v].data = NULL;
    c->n_values = v + 1; /* from here on lt_graph_free releases this value */
    if (!(c->values[v].name = strdup(g->values[v].name))) goto nomem;
    if (g->values[v].data) {
      c->values[v].data = lt_tensor_clone(g->values[v].data, g->values[v].data->cat, err);
      if (!c->values[v].data) goto fail;
    }
  }
  for (int i = 0; i < g->n_nodes; i++) {
    c->nodes[i] = g->nodes[i];
    c->nodes[i].name = NULL;
    c->n_nodes = i + 1;
    if (!(c->nodes[i].name = strdup(g->nodes[i].name))) goto nomem;
  }
  c->n_inputs = g->n_inputs;
  memcpy(c->inputs, g->inputs, sizeof c->inputs);
  c->n_outputs = g->n_outputs;
  memcpy(c->outputs, g->outputs, sizeof c->outputs);
  index_rebuild(c);
  return c;
nomem:
  lt_errorf(err, LT_ERR_NOMEM, "out of memory cloning a graph of %d values", g->n_values);
fail:
  lt_graph_free(c);
  return NULL;
}

int64_t lt_node_macs(const lt_graph *g, const lt_node *n) {
  const lt_op_desc *d = lt_op_get(n->op);
  return d && d->macs ? d->macs(g, n) : 0;
}

int64_t lt_graph_macs(const lt_graph *g) {
  int64_t total = 0;
  for (int i = 0; i < g->n_nodes; i++) total += lt_node_macs(g, &g->nodes[i]);
  return total;
}

/* Input slots of n that hold parameters: the op's declared slots, or for ops without a
 * declaration every PARAM input (a learned scale in a Mul, say). BN running statistics are
 * buffers, not parameters, as in PyTorch's parameters(). */
static int node_slot_is_param(const lt_graph *g, const lt_node *n, int slot) {
  const lt_op_desc *d = lt_op_get(n->op);
  const lt_value *v = &g->values[n->in[slot]];
  if (v->kind != LT_VALUE_PARAM) return 0;
  return d && d->param_slots ? (int)((d->param_slots >> slot) & 1u) : 1;
}

int64_t lt_node_params(const lt_graph *g, const lt_node *n) {
  int64_t total = 0;
  for (int k = 0; k < n->n_in; k++)
    if (node_slot_is_param(g, n, k)) {
      const lt_value *v = &g->values[n->in[k]];
      total += lt_shape_numel(v->ndim, v->shape);
    }
  return total;
}

int64_t lt_graph_params(const lt_graph *g) {
  /* A parameter shared by several nodes counts once. */
  char *seen = calloc((size_t)g->n_values + 1, 1);
  if (!seen) return -1;
  int64_t total = 0;
  for (int i = 0; i < g->n_nodes; i++) {
    const lt_node *n = &g->nodes[i];
    for (int k = 0; k < n->n_in; k++)
      if (node_slot_is_param(g, n, k) && !seen[n->in[k]]) {
        const lt_value *v = &g->values[n->in[k]];
        seen[n->in[k]] = 1;
        total += lt_shape_numel(v->ndim, v->shape);
      }
  }
  free(seen);
  return total;
}
