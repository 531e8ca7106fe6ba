/* lathe/onnx.h — reading ONNX models into the engine graph and writing graphs back to ONNX.
 *
 * Usage:
 *   lt_err err = {0};
 *   lt_graph *g = lt_onnx_load("resnet20.onnx", NULL, &err);   // shapes inferred, per sample
 *   if (!g) { fprintf(stderr, "%s\n", err.msg); return err.status; }
 *   ... train, compress ...
 *   lt_onnx_save(g, "out.onnx", &err);                          // opset 13, dynamic batch
 *   lt_graph_free(g);
 *
 * Import reads opsets 9 to 17 of the default domain. The reader is written for hostile files
 * (bounds-checked protobuf decoding, caps on sizes and counts). Shape-computing subgraphs
 * (Shape, Gather, ConstantOfShape, Concat, Reshape, Cast, Slice, ... on constants) are folded
 * at import once the input shape is known, so the graph holds only tensor ops. The first
 * dimension of every graph input is the batch; the graph stores per-sample shapes.
 * Gemm, and MatMul with a constant 2-D weight, become LT_OP_LINEAR.
 *
 * Not for: running models (lathe/exec.h), or ONNX features outside CNN inference and training
 * (control flow, sequences, quantized types, custom domains): those fail with an error naming
 * the op, the node and the opset.
 */
#ifndef LATHE_ONNX_H
#define LATHE_ONNX_H

#include "lathe/graph.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lt_onnx_load_opts {
  /* Per-sample shape for the first graph input, used where the file leaves non-batch
   * dimensions symbolic. in_ndim 0: take the shape from the file. */
  int in_ndim;
  int64_t in_shape[LT_MAX_DIMS];
} lt_onnx_load_opts;

/* Reads an ONNX file. External tensor data is read only from files inside the model's folder.
 * opts may be NULL. Returns NULL with err filled on any failure. */
lt_graph *lt_onnx_load(const char *path, const lt_onnx_load_opts *opts, lt_err *err);
/* The same from bytes in memory; external data is refused (no folder to resolve it in). */
lt_graph *lt_onnx_load_buffer(const void *data, size_t len, const lt_onnx_load_opts *opts,
                              lt_err *err);

/* Writes g as ONNX (IR version 8, opset 13) with its parameters and constants as
 * initializers, node and value names kept, and a symbolic batch dimension "batch" on every
 * graph input and output. */
lt_status lt_onnx_save(const lt_graph *g, const char *path, lt_err *err);
/* The same into a malloc'd buffer (*out, *len); the caller frees *out. */
lt_status lt_onnx_save_buffer(const lt_graph *g, uint8_t **out, size_t *len, lt_err *err);

/* Basic facts about a model file that do not need a successful import (for inspect): the IR
 * version, the default-domain opset, node and initializer counts. */
typedef struct lt_onnx_info {
  int64_t ir_version, opset;
  int n_nodes, n_initializers;
  char producer[128];
} lt_onnx_info;
lt_status lt_onnx_probe(const char *path, lt_onnx_info *info, lt_err *err);

#ifdef __cplusplus
}
#endif
#endif
