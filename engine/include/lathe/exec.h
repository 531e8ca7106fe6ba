/* lathe/exec.h — running a graph forward and backward on a backend, with the saved-tensor stash.
 *
 * Usage (one training step):
 *   lt_backend *be = lt_backend_get("cpu", &err);
 *   lt_exec *ex = lt_exec_create(g, 128, LT_MODE_TRAIN, be, NULL, &err);
 *   memcpy(lt_exec_input(ex, 0)->data, batch, bytes);
 *   lt_exec_forward(ex, &err);
 *   lt_tensor *logits = lt_exec_output(ex, 0);
 *   ... write dL/dlogits into lt_exec_output_grad(ex, 0) ...
 *   lt_exec_zero_grads(ex);            // or skip to accumulate over micro-batches
 *   lt_exec_backward(ex, &err);        // parameter gradients in lt_exec_param_grad(ex, value_id)
 *   lt_exec_free(ex);
 *
 * All buffers are planned in lt_exec_create (liveness-based reuse); forward and backward
 * allocate nothing on the CPU backend, except what a stash policy allocates for compressed forms.
 *
 * Not for: optimizers, losses or data (lathe/train.h).
 */
#ifndef LATHE_EXEC_H
#define LATHE_EXEC_H

#include "lathe/graph.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lt_backend lt_backend; /* lathe/backend.h */
typedef struct lt_exec lt_exec;

typedef enum lt_mode { LT_MODE_INFER = 0, LT_MODE_TRAIN } lt_mode;

/* What backward needs from forward, as declared by each op. The kind tells a stash policy what
 * it may do with the tensor. */
typedef enum lt_save_kind {
  LT_SAVE_EXACT = 0,  /* must come back bit-exact */
  LT_SAVE_WEIGHT_INPUT, /* input of conv/linear: used only for the weight gradient, so a bounded
                           error stays in that layer's dW (lossy compression allowed) */
  LT_SAVE_RELU_OUTPUT,  /* only its sign pattern is used: a 1-bit mask is exact */
  LT_SAVE_POOL_ARGMAX,  /* uint8 window indices: 2 bits each for 2x2 windows */
  LT_SAVE_BN_INPUT      /* batch-norm input: exact, or lossy under a tighter bound */
} lt_save_kind;

/* A pluggable policy for the stash (activation compression implements one). With no policy the
 * executor keeps saved values in their forward buffers until backward (exact, zero-copy).
 * `slot` is the index of the tensor in the op's saved order (ctx->saved[slot] in backward).
 * Tensors that are parameters or constants are never offered (they outlive the step anyway).
 * A value saved by two nodes (a ReLU output read by the ReLU and the next conv) is offered once
 * per node, with each node's kind. For a slot where keeps_buffer() said 1, store() is still
 * called (the policy may keep a view or gather statistics), backward reads the forward buffer
 * directly without load(), and release() follows; for the other slots backward calls load()
 * into a planned buffer, then release(). */
typedef struct lt_stash_policy {
  void *user;
  /* Plan time: 1 when the executor must keep this forward buffer alive until backward (the
   * policy keeps a view), 0 when store() makes its own copy and the buffer can be reused. */
  int (*keeps_buffer)(void *user, const lt_graph *g, int node, int slot, lt_save_kind kind);
  /* Create time, optional: the backend whose memory every tensor offered to this policy lives
   * in (the executor's). An error refuses the executor: the policy cannot work there. */
  lt_status (*bind)(void *user, lt_backend *be, lt_err *err);
  /* Forward, right after node ran: keep what backward needs. *handle is the policy's token.
   * in: the node's forward inputs as its kernel read them (LT_MAX_IO entries, NULL past the
   * node's count; parameters are the executor's copies, in backend memory), or NULL.
   * aux: the node's op-private tensors as its forward left them (LT_MAX_IO entries, NULL past
   * the op's count; a training batch norm's are its batch mean and 1/σ per channel), or NULL.
   * Bytes the policy holds must be counted under LT_MEM_SAVED (lt_alloc does that). */
  lt_status (*store)(void *user, const lt_graph *g, int node, int slot, lt_save_kind kind,
                     const lt_tensor *t, const lt_tensor *const *in,
                     const lt_tensor *const *aux, void **handle, lt_err *err);
  /* Backward: reconstruct the saved tensor into dst (shape and dtype already set). */
  lt_status (*load)(void *user, void *handle, lt_tensor *dst, lt_err *err);
  void (*release)(void *user, void *handle);
  /* Backward of a conv/linear node, after its weight gradient is computed: x is the (restored)
   * saved input, dy the output gradient, dw the weight gradient of this step alone, all in the
   * backend's memory. Optional; on a device backend the executor needs the backend's
   * accumulate (it adds dw to the parameter's gradient afterwards). */
  void (*observe)(void *user, const lt_graph *g, int node, const lt_tensor *x,
                  const lt_tensor *dy, const lt_tensor *dw);
} lt_stash_policy;

typedef struct lt_exec_opts {
  const lt_stash_policy *stash; /* NULL: exact, zero-copy */
  uint64_t seed;                /* dropout masks: keyed by (seed, node, step) */
  int no_reuse; /* 1: every buffer gets its own memory (measuring what reuse saves, debugging:
                   every activation stays readable through lt_exec_value) */
  int no_fuse;  /* 1: run every node on its own. By default the CPU backend runs a ReLU that is
                   the only consumer of a BatchNorm or same-shape Add inside that node's kernel
                   (one pass instead of two); the graph, the stash and the results are the same
                   (checked by tests/engine/test_pointwise_fused.c). In LT_MODE_INFER it also
                   folds a BatchNorm into the Conv2d whose output only it reads (weights scaled
                   and bias shifted per output channel, recomputed from the graph's parameters
                   before every forward), the BN's fused ReLU then applied by the conv kernel:
                   equal up to float rounding. Inference also runs a chain of Slices, ending
                   in a Pad or not, as one strided copy from the chain's input (bit-identical).
                   A forward hook turns fusion off for that forward,
                   so hooks see every node's output. */
  int no_split; /* 1: inference forwards run every node over the whole batch with the threads
                   inside each kernel. By default an LT_MODE_INFER executor on the CPU backend
                   whose batch is at least twice the thread count T splits the batch into T
                   contiguous slices, and each thread runs the whole graph on its slice with
                   single-threaded kernels (no fork and join per node). Results are the same up
                   to float rounding (tests/engine/test_infer_split.c). LATHE_INFER_SPLIT=0 in the
                   environment turns it off at create time; no_reuse does too. A forward with a
                   hook set or the profile on runs unsplit (the executor's own buffers are then
                   allocated on that first forward), and after a split forward lt_exec_value
                   returns only inputs and outputs. */
} lt_exec_opts;

/* Bytes of the executor's planned memory, by what it holds. */
typedef struct lt_exec_plan_stats {
  int64_t activations; /* arena of forward values not kept for backward (+ restored stash) */
  int64_t saved;       /* arena of values kept for backward in their forward buffers */
  int64_t gradients;   /* arena of activation gradients (parameter gradients excluded) */
  int64_t param_grads; /* one buffer per trainable parameter */
  int64_t dedicated;   /* graph inputs, outputs and output gradients */
  int64_t workspace;   /* max over nodes, plus the observe() scratch */
} lt_exec_plan_stats;
void lt_exec_plan_stats_get(const lt_exec *ex, lt_exec_plan_stats *out);

/* Sorts g topologically and re-infers its shapes, then plans and allocates every buffer for this
 * batch. The graph must outlive the executor; its parameters are used in place on CPU. */
lt_exec *lt_exec_create(lt_graph *g, int batch, lt_mode mode, lt_backend *be,
                        const lt_exec_opts *opts, lt_err *err);
void lt_exec_free(lt_exec *ex);

int lt_exec_batch(const lt_exec *ex);
lt_tensor *lt_exec_input(lt_exec *ex, int i);       /* (batch, per-sample shape), fill before forward */
lt_status lt_exec_forward(lt_exec *ex, lt_err *err);
lt_tensor *lt_exec_output(lt_exec *ex, int i);
lt_tensor *lt_exec_value(lt_exec *ex, int value_id); /* any activation still live after forward
                                                        (outputs always are), NULL otherwise */
lt_tensor *lt_exec_output_grad(lt_exec *ex, int i);  /* dL/d output, fill before backward; NULL
                                                        in inference mode or when no trainable
                                                        parameter reaches it. Backward adds into
                                                        it when the output also feeds other nodes */
lt_status lt_exec_backward(lt_exec *ex, lt_err *err);
void lt_exec_zero_grads(lt_exec *ex);
lt_tensor *lt_exec_param_grad(lt_exec *ex, int value_id); /* NULL for non-trainable values and
                                                             parameters no output depends on */
/* The tensor forward and backward read for a parameter value: the graph's own on host backends,
 * the executor's device copy on device backends (what a device-side optimizer updates; see
 * lt_exec_sync_params). NULL for values that are not parameters. */
lt_tensor *lt_exec_param(lt_exec *ex, int value_id);
/* Called after a node's forward (for feature-map losses, latency probes, activation capture). */
typedef void (*lt_exec_hook)(void *user, lt_exec *ex, int node, const lt_tensor *out);
void lt_exec_set_forward_hook(lt_exec *ex, lt_exec_hook fn, void *user);
/* Run-time switches, for benchmarks that compare before and after in one process. Batch split
 * (opts.no_split): on by default where the executor planned it; returns 1 when forwards now run
 * split, 0 when they run unsplit (always 0 where it was not planned). Fusion (opts.no_fuse): from the
 * next forward only the planned fusions of the kinds in `which` run (0: every node on its own, as
 * with a hook; LT_FUSE_ALL, the default: all that were planned). */
int lt_exec_set_batch_split(lt_exec *ex, int on);
enum { LT_FUSE_RELU = 1, /* a ReLU into the BatchNorm or Add before it */
       LT_FUSE_BN = 2,   /* an inference BatchNorm folded into the Conv2d before it */
       LT_FUSE_ADD = 4,  /* an inference residual Add into the Conv2d (+ folded BN) before it */
       LT_FUSE_SLICE = 8, /* an inference chain of Slices (and a Pad after them) as one copy */
       LT_FUSE_ALL = 15 };
void lt_exec_set_fusion(lt_exec *ex, unsigned which); /* LT_FUSE_* bits that stay on */
/* Copies parameters from the graph after an optimizer step on a device backend (no-op on CPU,
 * where the executor works on the graph's parameter tensors directly). */
lt_status lt_exec_sync_params(lt_exec *ex, int to_device, lt_err *err);
/* The same from the device for the non-trainable parameters alone: what a training forward
 * updates (batch-norm running statistics). No-op on CPU. */
lt_status lt_exec_pull_state(lt_exec *ex, lt_err *err);

/* Per-op profile, off by default and free when off: wall time per node in forward and backward,
 * summed over steps and reported per op type ("BatchNorm2d+Relu" for a fused pair), plus the
 * executor's own time around the kernels (context set-up, stash store/load/release) and
 * lt_exec_zero_grads. Turned on at create time by LATHE_PROFILE=1 in the environment, or by
 * lt_exec_profile_enable (which also clears what was gathered). */
typedef struct lt_exec_profile_row {
  char op[48];      /* op type name, "BatchNorm2d+Relu" (a fused pair), "Conv2d+BatchNorm2d"
                       (+"+Relu": a fold), "BatchNorm2d (folded)", "(executor)" or
                       "(zero_grads)" */
  int nodes;        /* nodes of this type in the graph */
  double fwd_s;     /* wall seconds summed over forwards */
  double bwd_s;     /* wall seconds summed over backwards */
  double fwd_cpu_s; /* process CPU seconds (all threads) summed over forwards: steadier than wall
                       time on a shared machine */
  double bwd_cpu_s;
} lt_exec_profile_row;
void lt_exec_profile_enable(lt_exec *ex, int on);
int lt_exec_profile_enabled(const lt_exec *ex);
/* Fills up to cap rows, largest total first; returns the number of rows there are. *fwd_steps
 * and *bwd_steps (either may be NULL) get how many forwards and backwards were timed. */
int lt_exec_profile_get(const lt_exec *ex, lt_exec_profile_row *rows, int cap, int64_t *fwd_steps,
                        int64_t *bwd_steps);
/* A table of the rows in milliseconds per step (wall, and process CPU time), with shares of the
 * wall total, written to f (a FILE *; void here so that this header needs no <stdio.h>). */
void lt_exec_profile_print(const lt_exec *ex, void *f);

/* Bytes the stash held at the end of the last forward: dense is what exact storage would take
 * (each saved value once, BN batch statistics included), held what was actually kept (equal
 * without a policy; with one, the buffers kept in place plus what the policy allocated under
 * LT_MEM_SAVED during that forward). */
void lt_exec_saved_bytes(const lt_exec *ex, int64_t *dense, int64_t *held);

#ifdef __cplusplus
}
#endif
#endif
