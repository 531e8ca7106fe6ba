/* The ONNX model as read from the file, before it becomes an lt_graph: nodes with their
 * attributes, initializers already converted to lt_tensor, and the declared inputs/outputs.
 * onnx_read.c builds it from untrusted bytes; onnx_import.c turns it into a graph.
 *
 * Not for: use outside engine/src/io (the public API is lathe/onnx.h).
 */
#ifndef LATHE_IO_ONNX_MODEL_H
#define LATHE_IO_ONNX_MODEL_H

#include "lathe/tensor.h"

/* Caps for hostile files. Real CNNs are far below every one of them. */
#define OX_MAX_FILE_BYTES ((size_t)2 << 30)   /* protobuf's own 2 GiB message limit */
#define OX_MAX_NODES 100000
#define OX_MAX_TENSORS 100000                  /* initializers */
#define OX_MAX_NODE_IO 4096                    /* inputs or outputs of one node */
#define OX_MAX_ATTRS 256                       /* attributes of one node */
#define OX_MAX_ATTR_VALUES 65536               /* elements of one ints/floats attribute */
#define OX_MAX_NAME 4096                       /* bytes of a name or string attribute */
#define OX_MAX_TENSOR_ELEMS ((int64_t)1 << 31)  /* elements of one tensor */

/* ONNX TensorProto.DataType values that Lathe reads. */
enum {
  OX_FLOAT = 1, OX_UINT8 = 2, OX_INT8 = 3, OX_INT32 = 6, OX_INT64 = 7, OX_BOOL = 9, OX_DOUBLE = 11
};

/* AttributeProto.AttributeType values. */
enum {
  OX_ATTR_FLOAT = 1, OX_ATTR_INT = 2, OX_ATTR_STRING = 3, OX_ATTR_TENSOR = 4, OX_ATTR_GRAPH = 5,
  OX_ATTR_FLOATS = 6, OX_ATTR_INTS = 7, OX_ATTR_STRINGS = 8
};

typedef struct ox_attr {
  char *name;       /* owned */
  int type;         /* OX_ATTR_* (others are kept as type only and refused where used) */
  float f;
  int64_t i;
  char *s;          /* owned, NUL-terminated (string attributes) */
  int n;            /* count of ints or floats */
  int64_t *ints;    /* (n) owned */
  float *floats;    /* (n) owned */
  lt_tensor *t;     /* owned (tensor attributes) */
} ox_attr;

typedef struct ox_node {
  char *name, *op, *domain; /* owned; name may be "" */
  int n_in, n_out;
  char **in, **out;         /* (n_in), (n_out) owned; "" marks an omitted optional input */
  int n_attrs;
  ox_attr *attrs;           /* (n_attrs) owned */
} ox_node;

typedef struct ox_init {
  char *name;   /* owned */
  lt_tensor *t; /* owned */
} ox_init;

/* A declared graph input or output. dims[i] < 0 marks a symbolic or missing dimension. */
typedef struct ox_valinfo {
  char *name; /* owned */
  int elem;   /* TensorProto.DataType, 0 when absent */
  int ndim;   /* -1 when no shape is declared */
  int64_t dims[LT_MAX_DIMS];
} ox_valinfo;

typedef struct ox_model {
  int64_t ir_version;
  int64_t opset;      /* version of the default ("" / "ai.onnx") domain */
  char *producer;     /* owned, may be NULL */
  int n_nodes, n_inits, n_inputs, n_outputs;
  ox_node *nodes;     /* (n_nodes) owned, in file order */
  ox_init *inits;     /* (n_inits) owned */
  ox_valinfo *inputs; /* (n_inputs) owned; may include initializers (IR < 4 style) */
  ox_valinfo *outputs;
} ox_model;

/* Parses a serialized ModelProto. dir is the folder of the model file (for external data), or
 * NULL when the bytes did not come from a file (external data is then refused). */
ox_model *ox_model_parse(const void *data, size_t len, const char *dir, lt_err *err);
void ox_model_free(ox_model *m); /* accepts NULL and half-built models */

const ox_attr *ox_node_attr(const ox_node *n, const char *name);

#endif
