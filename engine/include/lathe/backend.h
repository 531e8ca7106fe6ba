/* lathe/backend.h — compute backends behind one vtable (CPU reference, CUDA when built).
 *
 * Usage:
 *   lt_backend *be = lt_backend_get("cpu", &err);      // or "cuda:0"
 *   if (!be->vt->supports(be, g, node_id)) ...          // the executor asks before planning
 *
 * A backend owns its memory (buffers the executor plans are allocated through it) and runs one
 * node forward or backward at a time on tensors already in its memory. The CPU backend is the
 * reference: every other backend is tested op by op against it (tests/engine/test_ops_conformance).
 *
 * Not for: planning or scheduling (lathe/exec.h).
 */
#ifndef LATHE_BACKEND_H
#define LATHE_BACKEND_H

#include "lathe/exec.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Everything a kernel needs to run one node: its tensors in backend memory, in the node's
 * input/output order. Gradient tensors are NULL where no gradient is wanted. */
typedef struct lt_node_ctx {
  const lt_graph *g;
  int node;
  int batch;
  lt_mode mode;
  lt_tensor *in[LT_MAX_IO];    /* forward inputs (params included) */
  lt_tensor *out[LT_MAX_IO];   /* forward outputs */
  lt_tensor *dout[LT_MAX_IO];  /* backward: gradients of the outputs */
  lt_tensor *din[LT_MAX_IO];   /* backward: gradients of the inputs, accumulated into when
                                  accumulate_in[i] is set */
  int accumulate_in[LT_MAX_IO];
  lt_tensor *saved[LT_MAX_IO]; /* backward: restored saved tensors, in the order the op saved */
  lt_tensor *aux[LT_MAX_IO];   /* op-private state that survives forward → backward (BN batch
                                  statistics, pool argmax, dropout mask) */
  void *ws;                    /* scratch of at least workspace_bytes(node) */
  uint64_t seed, step;
} lt_node_ctx;

/* One optimizer update of a parameter tensor in backend memory, with the arithmetic of
 * train/optim.c (torch.optim's): SGD with momentum, dampening, Nesterov and L2 weight decay, or
 * AdamW with decoupled weight decay. */
typedef struct lt_optim_update {
  int adamw;      /* 0: SGD, 1: AdamW */
  float lr, weight_decay;
  float momentum, dampening; /* SGD */
  int nesterov;              /* SGD */
  int first;                 /* SGD: the first update (the velocity starts as the gradient) */
  float beta1, beta2, eps;   /* AdamW */
  int64_t step;              /* AdamW: updates so far, this one included (bias correction) */
} lt_optim_update;

typedef struct lt_backend_vtbl {
  const char *name; /* "cpu", "cuda" */
  int (*supports)(lt_backend *be, const lt_graph *g, int node);
  void *(*alloc)(lt_backend *be, size_t bytes, lt_mem_cat cat, lt_err *err);
  void (*free)(lt_backend *be, void *p, size_t bytes, lt_mem_cat cat);
  lt_status (*to_device)(lt_backend *be, void *dst, const void *src, size_t bytes, lt_err *err);
  lt_status (*to_host)(lt_backend *be, void *dst, const void *src, size_t bytes, lt_err *err);
  lt_status (*memset0)(lt_backend *be, void *p, size_t bytes, lt_err *err);
  size_t (*workspace_bytes)(lt_backend *be, const lt_graph *g, int node, int batch);
  lt_status (*forward)(lt_backend *be, lt_node_ctx *ctx, lt_err *err);
  lt_status (*backward)(lt_backend *be, lt_node_ctx *ctx, lt_err *err);
  lt_status (*synchronize)(lt_backend *be, lt_err *err);
  void (*destroy)(lt_backend *be);
  /* Device backends: applies u to the count floats at w (in place) with gradient g and state s0
   * (SGD velocity, NULL without momentum; AdamW m) and s1 (AdamW v), all in backend memory.
   * Queued on the backend's stream like a kernel. NULL on host backends, whose optimizer runs
   * the CPU kernels itself (train/optim.c). */
  lt_status (*optim_step)(lt_backend *be, const lt_optim_update *u, size_t count, float *w,
                          const float *g, float *s0, float *s1, lt_err *err);
  /* Device backends: bytes from src to dst, both in backend memory, queued on the stream. NULL
   * on host backends (memcpy). */
  lt_status (*copy)(lt_backend *be, void *dst, const void *src, size_t bytes, lt_err *err);
  /* Device backends: dst[i] += src[i] over count floats in backend memory, queued. NULL on host
   * backends. */
  lt_status (*accumulate)(lt_backend *be, size_t count, const float *src, float *dst,
                          lt_err *err);
  /* Device backends that can hold the activation-compression stash: its data operations on
   * their memory (the table of engine/src/actcomp/ac_dev.h). NULL elsewhere: the host stash
   * needs none, and a device without it trains without activation compression only. */
  const struct ac_dev_ops *actcomp;
} lt_backend_vtbl;

struct lt_backend {
  const lt_backend_vtbl *vt;
  int device; /* -1 for host backends */
  char description[256]; /* device fingerprint: CPU model and cores, or GPU name and SM count */
  void *impl;
};

/* "cpu", "cuda", "cuda:N". Backends are process-wide singletons; do not free them. */
lt_backend *lt_backend_get(const char *name, lt_err *err);

#ifdef __cplusplus
}
#endif
#endif
