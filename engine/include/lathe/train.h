/* lathe/train.h — optimizers, learning-rate schedules, checkpoints, and the training and
 * evaluation loops.
 *
 * Usage (the pieces on their own):
 *   lt_optim_config oc = lt_optim_config_default(LT_OPTIM_SGD);
 *   oc.momentum = 0.9f; oc.weight_decay = 5e-4f;
 *   lt_optim *opt = lt_optim_create(&oc, n, params, &err);       // state under LT_MEM_OPTIMIZER
 *   lt_schedule s = {.kind = LT_SCHED_COSINE, .lr = 0.1, .total_steps = 1000, .warmup_steps = 50};
 *   for (int64_t t = 0; t < 1000; t++) { ...; lt_optim_step(opt, grads, lt_schedule_lr(&s, t), &err); }
 *   lt_ckpt_save("out/ckpt.h5", g, opt, &meta, &err);            // atomic: temp, fsync, rename
 *   lt_optim_free(opt);
 *
 * Usage (the loop):
 *   lt_train_config c = lt_train_config_default();
 *   c.train = train_split; c.val = test_split; c.epochs = 5; c.batch_size = 128; ...
 *   lt_train_result r;
 *   lt_train_run(g, lt_backend_get("cpu", &err), &c, &r, &err);
 *
 * Determinism: the shuffle of an epoch and the augmentation of a sample are pure functions of
 * (seed, epoch, index) (lathe/data.h), schedules are closed-form functions of the step, and a
 * checkpoint holds every parameter (batch-norm running statistics included), the optimizer state
 * and the position (epoch, step, epoch accumulators). A run resumed from a checkpoint therefore
 * ends bitwise identical to an uninterrupted one on the CPU at the same thread count.
 *
 * Not for: data files (lathe/data.h) or graph execution (lathe/exec.h).
 */
#ifndef LATHE_TRAIN_H
#define LATHE_TRAIN_H

#include "lathe/data.h"
#include "lathe/exec.h"
#include "lathe/loader.h"
#include "lathe/zoo.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- optimizers ---------------------------------------------------------------------------- */

typedef enum lt_optim_kind { LT_OPTIM_SGD = 0, LT_OPTIM_ADAMW } lt_optim_kind;

typedef struct lt_optim_config {
  lt_optim_kind kind;
  float weight_decay; /* SGD: L2 added to the gradient; AdamW: decoupled, w *= 1 - lr*wd */
  float momentum, dampening; /* SGD */
  int nesterov;              /* SGD, needs momentum > 0 and dampening 0 (as torch.optim.SGD) */
  float beta1, beta2, eps;   /* AdamW */
} lt_optim_config;

/* torch.optim defaults: SGD momentum 0; AdamW betas (0.9, 0.999), eps 1e-8, weight decay 0.01. */
lt_optim_config lt_optim_config_default(lt_optim_kind kind);
lt_status lt_optim_config_check(const lt_optim_config *c, lt_err *err);

/* An optimizer over a fixed list of float32 parameter tensors (host memory), which
 * lt_optim_attach can move to a device backend. */
typedef struct lt_optim {
  lt_optim_config cfg;
  int n;                /* parameters */
  lt_tensor **params;   /* (n) borrowed; updated in place */
  int n_slots;          /* state tensors per parameter: 0 (plain SGD), 1 (velocity), 2 (m, v) */
  float **state;        /* (n * n_slots) each numel(params[i]) floats, owned, LT_MEM_OPTIMIZER */
  int64_t step;         /* updates taken so far */
  /* Attached to a device backend: updates run there, on dparams and dstate; params and state
   * are then the host mirror that checkpoints read and write (lt_optim_sync_to_host). */
  lt_backend *be;       /* NULL: host */
  lt_tensor **dparams;  /* (n) borrowed device tensors, or NULL */
  float **dstate;       /* (n * n_slots) in be's memory, LT_MEM_OPTIMIZER, or NULL */
} lt_optim;

lt_optim *lt_optim_create(const lt_optim_config *c, int n, lt_tensor *const *params, lt_err *err);
void lt_optim_free(lt_optim *o); /* accepts NULL and half-built optimizers */
/* One update of every parameter with grads[i] (same shapes as params[i]) at learning rate lr.
 * Once attached, grads are tensors in the device backend's memory and dparams are updated. */
lt_status lt_optim_step(lt_optim *o, lt_tensor *const *grads, float lr, lt_err *err);
/* Moves the updates to device backend be (one with optim_step): dparams[i] is params[i]'s copy
 * there (same shape; the executor's, lt_exec_param). The state is copied over from the host, so
 * an optimizer loaded from a checkpoint carries on. Attaching a host backend does nothing. */
lt_status lt_optim_attach(lt_optim *o, lt_backend *be, lt_tensor *const *dparams, lt_err *err);
/* LT_OK when an optimizer can run on be (a host backend, or a device one with optim_step): what
 * lt_optim_attach refuses, for callers that check before they allocate. */
lt_status lt_optim_check_backend(const lt_backend *be, lt_err *err);
/* Attached: brings the device state back to the host mirror (before a checkpoint). The
 * parameters themselves come back with lt_exec_sync_params. No-op when not attached. */
lt_status lt_optim_sync_to_host(lt_optim *o, lt_err *err);

/* ---- schedules ----------------------------------------------------------------------------- */

typedef enum lt_sched_kind {
  LT_SCHED_CONSTANT = 0,
  LT_SCHED_STEP,    /* lr * gamma^floor(t / step_size)            (torch StepLR) */
  LT_SCHED_COSINE,  /* min_lr + (lr - min_lr)(1 + cos(pi t / T))/2 (torch CosineAnnealingLR) */
  LT_SCHED_ONECYCLE /* torch OneCycleLR, cosine annealing, two phases, lr is the peak */
} lt_sched_kind;

/* The learning rate as a closed-form function of the optimizer step, so that a resumed run needs
 * no scheduler state. A linear warm-up (torch LinearLR from warmup_start_factor to 1) may precede
 * constant, step and cosine; the schedule after it then counts from the end of the warm-up and
 * spans total_steps - warmup_steps (torch SequentialLR). */
typedef struct lt_schedule {
  lt_sched_kind kind;
  double lr;                  /* base rate (one-cycle: the peak, max_lr) */
  int64_t total_steps;        /* cosine and one-cycle horizon, warm-up included */
  int64_t warmup_steps;       /* 0: none */
  double warmup_start_factor; /* first warm-up step runs at lr * this; in (0, 1] */
  int64_t step_size;          /* step: decay every step_size steps */
  double gamma;               /* step: decay factor */
  double min_lr;              /* cosine: eta_min */
  double pct_start;           /* one-cycle: fraction of steps rising (torch default 0.3) */
  double div_factor;          /* one-cycle: initial lr = lr / div_factor (torch 25) */
  double final_div_factor;    /* one-cycle: final lr = initial / final_div_factor (torch 1e4) */
} lt_schedule;

lt_status lt_schedule_check(const lt_schedule *s, lt_err *err);
double lt_schedule_lr(const lt_schedule *s, int64_t step);

/* ---- checkpoints --------------------------------------------------------------------------- */

/* Where a run stands. Everything a resumed run needs beyond the tensors. */
typedef struct lt_ckpt_meta {
  char model[64];          /* zoo name the graph was built from, "" when unknown */
  int num_classes;         /* classifier width the graph was built with, 0 when unknown */
  int64_t epoch;           /* current epoch (0-based) */
  int64_t step;            /* optimizer steps taken in total */
  int64_t epoch_step;      /* steps taken within the current epoch */
  uint64_t seed;           /* the run's seed (shuffle, augmentation, dropout) */
  double epoch_loss_sum;   /* sum of per-sample losses so far in the current epoch */
  int64_t epoch_correct;   /* correct predictions so far in the current epoch */
  int64_t epoch_seen;      /* samples so far in the current epoch */
} lt_ckpt_meta;

/* Writes every parameter of g (trainable or not) and, when o is non-NULL, its state: o must have
 * been created over lt_train_params(g) in that order. Atomic (temp file, fsync, rename). */
lt_status lt_ckpt_save(const char *path, const lt_graph *g, const lt_optim *o,
                       const lt_ckpt_meta *m, lt_err *err);
/* Reads a checkpoint into g (every parameter must be present with its shape) and, when o is
 * non-NULL, its optimizer state (the optimizer kind must match). m may be NULL. */
lt_status lt_ckpt_load(const char *path, lt_graph *g, lt_optim *o, lt_ckpt_meta *m, lt_err *err);
/* Only the metadata: which model to build before lt_ckpt_load. */
lt_status lt_ckpt_read_meta(const char *path, lt_ckpt_meta *m, lt_err *err);

/* The trainable parameters of g in value order (the order optimizers and checkpoints use):
 * fills up to cap value ids into ids (may be NULL) and returns how many there are. */
int lt_train_params(const lt_graph *g, int *ids, int cap);

/* Threads for the CPU backend: OpenMP and OpenBLAS both (0 leaves the defaults: all cores). */
void lt_train_set_threads(int n);

/* ---- models by reference ----------------------------------------------------------------- */

/* The one place that turns a model reference into a graph, for `lathe eval` and the train job:
 *   a zoo name ("resnet20")  built with zoo (seed, sizes, classes);
 *   an ONNX file             read with lt_onnx_load (zoo's in_channels/height/width, when set,
 *                            fix the input shape);
 *   a checkpoint file        its recorded zoo model rebuilt (zoo supplies the input size,
 *                            num_classes comes from the checkpoint) and its weights loaded.
 * checkpoint (zoo names and ONNX files only, may be NULL) then loads weights into the graph.
 * meta (may be NULL) receives the checkpoint's metadata, zeroed when none was read. */
lt_graph *lt_model_load(const char *ref, const lt_zoo_opts *zoo, const char *checkpoint,
                        lt_ckpt_meta *meta, lt_err *err);

/* ---- loops --------------------------------------------------------------------------------- */

typedef struct lt_train_progress {
  int64_t epoch, epochs;       /* current epoch (0-based) and the total */
  int64_t step, total_steps;   /* optimizer steps taken (after this one) and planned */
  int64_t epoch_step, steps_per_epoch;
  double loss;                 /* this step's mean loss, or the epoch's mean on epoch ends */
  double accuracy;             /* classification only; NaN for regression */
  double lr;
  double samples_per_s;        /* over the last step, or over the epoch on epoch ends */
  double val_loss, val_accuracy; /* epoch ends with a validation split; NaN otherwise */
  lt_mem_stats mem;
  /* Epoch ends of a run with a loader (NULL otherwise): the epoch's loading figures, summed over
   * ranks. Valid during the callback only. */
  const struct lt_train_loader_epoch *loader;
} lt_train_progress;

/* One epoch of a run with a loader, over all ranks. */
typedef struct lt_train_loader_epoch {
  int64_t samples, hits;            /* delivered over all ranks, and of those from the buffers */
  int64_t storage_bytes, storage_requests;
  double hit_rate;                  /* hits / samples */
  double stall_fraction;            /* mean over ranks of the time inside lt_loader_next / epoch time */
  double samples_per_s;             /* samples / epoch wall time (the slowest rank's) */
  int n_ranks;
  const double *rank_batch_mean;    /* (n_ranks) mean local batch of each rank over the epoch */
  const int64_t *rank_batch_max;    /* (n_ranks) largest local batch of each rank */
} lt_train_loader_epoch;

/* Callbacks return 0 to go on, non-zero to stop the run with LT_ERR_CANCELLED (after a
 * checkpoint when one is configured). */
typedef int (*lt_train_cb)(void *user, const lt_train_progress *p);

/* Where training batches come from when not from the in-memory split (the loader issue plugs in
 * here): fill batch epoch_step of epoch with n samples, x normalised and augmented (n, C, H, W),
 * and labels (n) or targets (n, target_numel), whichever the split has. It must be a pure function
 * of (epoch, epoch_step) for resume to be exact. */
typedef struct lt_batch_source {
  void *user;
  lt_status (*fill)(void *user, int64_t epoch, int64_t epoch_step, int n, float *x,
                    int32_t *labels, float *targets, lt_err *err);
} lt_batch_source;

/* A training loss in place of the built-in one (softmax cross-entropy or MSE): distillation and
 * the like. Called once per training step after the forward pass with the step's n samples: x the
 * batch as the model received it (normalised, augmented; n × C×H×W floats), out the model's
 * outputs (n × k), labels (classifiers, else NULL) or targets (n × k, else NULL). It writes into
 * dout (n × k) the gradient of (summed loss × scale) with respect to out, stores the loss summed
 * over the n samples in *loss_sum (a non-finite value stops the run as a diverged loss would) and
 * the count of correct predictions in *correct (classifiers). A non-zero status stops the run with
 * that error. Evaluation keeps the built-in loss. */
typedef struct lt_train_loss {
  void *user;
  lt_status (*fn)(void *user, int n, int k, const float *x, const float *out,
                  const int32_t *labels, const float *targets, float scale, float *dout,
                  double *loss_sum, int64_t *correct, lt_err *err);
} lt_train_loss;

typedef struct lt_train_config {
  lt_dataset *train;        /* required: the split's geometry and, without source, its samples */
  lt_dataset *val;          /* optional: evaluated at each epoch end */
  int batch_size;
  int64_t epochs;
  int64_t max_steps;        /* > 0: stop after this many optimizer steps in total */
  lt_optim_config optim;
  lt_schedule sched;        /* total_steps is filled by the loop when 0 */
  lt_batch_opts batch;      /* normalisation and augmentation for training batches */
  uint64_t seed;
  int64_t checkpoint_every; /* > 0: write checkpoint_path every this many steps */
  const char *checkpoint_path; /* also written at each epoch end and at the end, when set */
  const char *resume_from;  /* checkpoint to resume from, or NULL */
  lt_ckpt_meta meta;        /* model and num_classes recorded in checkpoints */
  const lt_batch_source *source;      /* NULL: shuffle train in memory, lt_batch_fill */
  const lt_stash_policy *stash;       /* NULL: exact saved tensors (activation compression
                                         plugs in here) */
  /* Batches from an open loader instead (lathe/loader.h), opened with global_batch = batch_size
   * and epochs = epochs, on every rank. Each step computes this rank's local samples (possibly
   * none), sums the loss over them, all-reduces the gradient divided by the global batch, so every
   * rank applies the same update; batch-norm running statistics are averaged over ranks weighted
   * by local batch. train may then be NULL (the geometry comes from the model and the loader);
   * the last partial step of an epoch is kept; augmentation is refused (it is keyed by position
   * in memory, not by sample id); y holds float32 targets of the output's size, or class labels
   * (uint8 or int32) for a classifier. Only rank 0 writes checkpoints; callbacks run on every
   * rank with the same, all-reduced figures. */
  lt_loader *loader;
  const lt_train_loss *loss; /* NULL: the built-in loss */
  lt_train_cb on_step, on_epoch;
  void *user;
} lt_train_config;

lt_train_config lt_train_config_default(void);

typedef struct lt_train_result {
  int64_t epochs, steps;
  double train_loss, train_accuracy; /* last epoch's means */
  double val_loss, val_accuracy;     /* NaN without a validation split */
  double samples_per_s;              /* training samples over training time (evaluation excluded) */
  lt_mem_stats mem;                  /* peaks over the run */
  /* With a loader: its figures summed over ranks (steps and batch_imbalance as on every rank,
   * stall_s and total_s summed too: divide by loader_ranks for the mean rank). */
  lt_loader_stats loader;
  int loader_ranks;                  /* 0 without a loader */
} lt_train_result;

lt_status lt_train_run(lt_graph *g, lt_backend *be, const lt_train_config *c, lt_train_result *r,
                       lt_err *err);

typedef struct lt_eval_result {
  double loss;     /* mean per sample */
  double accuracy; /* NaN for regression targets */
  int64_t samples;
} lt_eval_result;

/* Evaluates g in inference mode over all of ds with normalisation only. */
lt_status lt_evaluate(lt_graph *g, lt_backend *be, const lt_dataset *ds, const lt_norm *norm,
                      int batch_size, lt_eval_result *r, lt_err *err);

/* Re-estimates every BatchNorm's running mean and variance from `batches` random batches of ds
 * (with bo's normalisation and augmentation) in training-mode forwards: no backward, no weight
 * changes; the result is the mean of the batch statistics (torch's momentum None). For a model
 * whose layers were just replaced, e.g. by low-rank factors, so that the old running statistics
 * no longer describe its activations. A model without BatchNorm is left as it is. */
lt_status lt_bn_recalibrate(lt_graph *g, lt_backend *be, const lt_dataset *ds,
                            const lt_batch_opts *bo, int batch_size, int batches, uint64_t seed,
                            lt_err *err);

#ifdef __cplusplus
}
#endif
#endif
