/* Inference through the op table, one node at a time, for the ONNX reference tests.
 *
 * The executor (lathe/exec.h) is the engine's way to run a graph; this harness runs each node's
 * CPU forward from the op table directly, with one buffer per value, so that the importer can
 * be checked against onnxruntime on its own. It allocates naively and supports inference only.
 */
#ifndef LATHE_TEST_ONNX_FORWARD_H
#define LATHE_TEST_ONNX_FORWARD_H
#include <stdlib.h>
#include <string.h>

#include "lathe/graph.h"
#include "ops/ops.h"

/* Runs g on x (batch, per-sample input shape) and returns a new tensor with output 0. */
static lt_tensor *test_forward(const lt_graph *g, int batch, const float *x, lt_err *err) {
  lt_tensor **vals = calloc((size_t)g->n_values, sizeof *vals);
  lt_tensor *result = NULL;
  if (!vals) return NULL;
  for (int v = 0; v < g->n_values; v++) {
    const lt_value *val = &g->values[v];
    if (val->kind == LT_VALUE_PARAM || val->kind == LT_VALUE_CONST) continue;
    int64_t shape[LT_MAX_DIMS];
    shape[0] = batch;
    memcpy(shape + 1, val->shape, sizeof(int64_t) * (size_t)val->ndim);
    if (!(vals[v] = lt_tensor_new(val->dtype, val->ndim + 1, shape, LT_MEM_ACTIVATIONS, err))) goto done;
  }
  memcpy(vals[g->inputs[0]]->data, x, lt_tensor_nbytes(vals[g->inputs[0]]));
  for (int i = 0; i < g->n_nodes; i++) {
    const lt_node *n = &g->nodes[i];
    const lt_op_desc *d = lt_op_get(n->op);
    lt_node_ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    ctx.g = g;
    ctx.node = i;
    ctx.batch = batch;
    ctx.mode = LT_MODE_INFER;
    for (int k = 0; k < n->n_in; k++) {
      const lt_value *val = &g->values[n->in[k]];
      ctx.in[k] = val->data ? val->data : vals[n->in[k]];
    }
    for (int k = 0; k < n->n_out; k++) ctx.out[k] = vals[n->out[k]];
    lt_op_aux aux[LT_MAX_IO];
    int n_aux = d->aux ? d->aux(g, n, LT_MODE_INFER, batch, aux) : 0;
    for (int k = 0; k < n_aux; k++) ctx.aux[k] = lt_tensor_new(aux[k].dtype, aux[k].ndim, aux[k].shape, LT_MEM_WORKSPACE, err);
    size_t ws = d->ws_cpu ? d->ws_cpu(g, n, batch) : 0;
    ctx.ws = ws ? malloc(ws) : NULL;
    lt_status st = d->fwd_cpu(&ctx, err);
    free(ctx.ws);
    for (int k = 0; k < n_aux; k++) lt_tensor_free(ctx.aux[k]);
    if (st) goto done;
  }
  result = lt_tensor_clone(vals[g->outputs[0]], LT_MEM_DATA, err);
done:
  for (int v = 0; v < g->n_values; v++) lt_tensor_free(vals[v]);
  free(vals);
  return result;
}
#endif
