/* `lathe inspect MODEL.onnx`: a JSON summary of an ONNX model as Lathe imports it: inputs and
 * outputs, and per layer the op, output shape, parameters and MACs (multiply-accumulates per
 * sample), with totals. Shapes list the batch as "batch" followed by the per-sample dims.
 *
 * The model is read with the engine's hostile-input ONNX reader; anything it refuses (a damaged
 * file, an op outside the supported set) is reported as bad input with the reader's message. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <string.h>

#include "job.h"
#include "lathe/onnx.h"

int inspect_onnx_json(const char *path, cJSON **out, char *err, size_t errcap);

static cJSON *shape_json(const lt_value *v) {
  cJSON *a = cJSON_CreateArray();
  if (!a) return NULL;
  cJSON_AddItemToArray(a, cJSON_CreateString("batch"));
  for (int i = 0; i < v->ndim; i++) cJSON_AddItemToArray(a, cJSON_CreateNumber((double)v->shape[i]));
  return a;
}

static cJSON *io_json(const lt_graph *g, const int *ids, int n) {
  cJSON *arr = cJSON_CreateArray();
  for (int i = 0; arr && i < n; i++) {
    const lt_value *v = &g->values[ids[i]];
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", v->name);
    cJSON_AddStringToObject(o, "dtype", lt_dtype_name(v->dtype));
    cJSON_AddItemToObject(o, "shape", shape_json(v));
    cJSON_AddItemToArray(arr, o);
  }
  return arr;
}

int inspect_onnx_json(const char *path, cJSON **out, char *err, size_t errcap) {
  *out = NULL;
  lt_err e = {0};
  lt_onnx_info info;
  if (lt_onnx_probe(path, &info, &e) != LT_OK) {
    snprintf(err, errcap, "%s", e.msg);
    return e.status == LT_ERR_NOMEM ? JOB_EXIT_FAILED : JOB_EXIT_BAD_INPUT;
  }
  lt_graph *g = lt_onnx_load(path, NULL, &e);
  if (!g) {
    snprintf(err, errcap, "%s", e.msg);
    return e.status == LT_ERR_NOMEM ? JOB_EXIT_FAILED : JOB_EXIT_BAD_INPUT;
  }
  cJSON *root = cJSON_CreateObject();
  cJSON *layers = cJSON_CreateArray();
  if (!root || !layers) {
    cJSON_Delete(root);
    cJSON_Delete(layers);
    lt_graph_free(g);
    snprintf(err, errcap, "out of memory building the summary of %s", path);
    return JOB_EXIT_FAILED;
  }
  cJSON_AddStringToObject(root, "format", "onnx");
  cJSON_AddNumberToObject(root, "ir_version", (double)info.ir_version);
  cJSON_AddNumberToObject(root, "opset", (double)info.opset);
  cJSON_AddStringToObject(root, "producer", info.producer);
  cJSON_AddNumberToObject(root, "onnx_nodes", info.n_nodes);
  cJSON_AddNumberToObject(root, "initializers", info.n_initializers);
  cJSON_AddItemToObject(root, "inputs", io_json(g, g->inputs, g->n_inputs));
  cJSON_AddItemToObject(root, "outputs", io_json(g, g->outputs, g->n_outputs));
  for (int i = 0; i < g->n_nodes; i++) {
    const lt_node *n = &g->nodes[i];
    cJSON *l = cJSON_CreateObject();
    cJSON_AddStringToObject(l, "name", n->name);
    cJSON_AddStringToObject(l, "op", lt_op_name(n->op));
    cJSON_AddItemToObject(l, "output_shape", shape_json(&g->values[n->out[0]]));
    cJSON_AddNumberToObject(l, "params", (double)lt_node_params(g, n));
    cJSON_AddNumberToObject(l, "macs", (double)lt_node_macs(g, n));
    cJSON_AddItemToArray(layers, l);
  }
  cJSON_AddItemToObject(root, "layers", layers);
  /* Totals per sample; MACs count multiply-accumulates, as the compression literature does. */
  cJSON_AddNumberToObject(root, "params", (double)lt_graph_params(g));
  cJSON_AddNumberToObject(root, "macs", (double)lt_graph_macs(g));
  lt_graph_free(g);
  *out = root;
  return 0;
}
