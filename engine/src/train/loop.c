/* The training and evaluation loops: batches from lathe/data.h, forward and backward through the
 * executor, softmax cross-entropy (class labels) or mean squared error (target tensors), an
 * optimizer step at the scheduled rate, callbacks per step and per epoch, checkpoints, resume.
 *
 * The last partial batch of a training epoch is dropped, so every step has the planned batch
 * size and the epoch length is a pure function of (N, batch). Evaluation covers every sample: a
 * partial last batch is padded with repeats of its last sample whose outputs are ignored (in
 * inference mode samples do not interact). */
#include "lathe/backend.h"
#include "lathe/train.h"
#include "backend/cpu/kernels.h"

#include <math.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

lt_train_config lt_train_config_default(void) {
  lt_train_config c = {0};
  c.batch_size = 128;
  c.epochs = 1;
  c.optim = lt_optim_config_default(LT_OPTIM_SGD);
  c.sched.kind = LT_SCHED_CONSTANT;
  c.sched.lr = 0.01;
  c.sched.warmup_start_factor = 1.0 / 3.0;
  c.sched.gamma = 0.1;
  c.sched.pct_start = 0.3;
  c.sched.div_factor = 25;
  c.sched.final_div_factor = 1e4;
  c.seed = 1;
  return c;
}

/* What the loss needs to know about the model's output and the data. */
typedef struct loop_task {
  int classify;       /* 1: softmax cross-entropy over k classes; 0: MSE over numel values */
  int k;              /* classes, or values per sample */
  size_t in_per;      /* input floats per sample */
} loop_task;

/* Checks that the graph's single input and output fit the dataset. */
static lt_status loop_task_make(const lt_graph *g, const lt_dataset *ds, loop_task *t,
                                lt_err *err) {
  if (g->n_inputs != 1 || g->n_outputs < 1)
    return lt_errorf(err, LT_ERR_UNSUPPORTED,
                     "training needs a model with one input and an output (this one has %d "
                     "inputs, %d outputs)",
                     g->n_inputs, g->n_outputs);
  const lt_value *in = &g->values[g->inputs[0]], *out = &g->values[g->outputs[0]];
  int64_t want[3] = {ds->c, ds->h, ds->w};
  if (in->dtype != LT_F32 || !lt_shape_equal(in->ndim, in->shape, 3, want)) {
    char a[96], b[96];
    return lt_errorf(err, LT_ERR_INVALID,
                     "the model takes inputs of shape %s but split %s holds samples of shape %s; "
                     "pick the model built for this data",
                     lt_shape_str(in->ndim, in->shape, a, sizeof a), ds->split,
                     lt_shape_str(3, want, b, sizeof b));
  }
  t->in_per = (size_t)ds->c * ds->h * ds->w;
  int64_t out_numel = lt_shape_numel(out->ndim, out->shape);
  if (ds->labels) {
    if (out->ndim != 1)
      return lt_errorf(err, LT_ERR_INVALID,
                       "split %s holds class labels but the model's output has %d dims per "
                       "sample; a classifier outputs (classes)",
                       ds->split, out->ndim);
    t->classify = 1;
    t->k = (int)out->shape[0];
    if (ds->num_classes > t->k)
      return lt_errorf(err, LT_ERR_INVALID,
                       "split %s has labels up to %d but the model outputs %d classes; build the "
                       "model with num_classes >= %d",
                       ds->split, ds->num_classes - 1, t->k, ds->num_classes);
  } else {
    if (!ds->targets || out_numel != ds->target_numel)
      return lt_errorf(err, LT_ERR_INVALID,
                       "split %s holds targets of %lld values per sample but the model outputs "
                       "%lld",
                       ds->split, (long long)ds->target_numel, (long long)out_numel);
    t->classify = 0;
    t->k = (int)out_numel;
  }
  return LT_OK;
}

/* Host buffers of one batch. The executor's tensors may live on a device, so batches are staged
 * here and copied over; on the CPU the copy is a memcpy of one batch. */
typedef struct loop_batch {
  int n;
  float *x;        /* (n, in_per) */
  int32_t *labels; /* (n) */
  float *targets;  /* (n, k) regression only */
  float *out;      /* (n, k) outputs copied back from the executor */
  float *dout;     /* (n, k) loss gradient */
  int64_t *idx;    /* (n) sample indices */
  size_t in_per;
  int k;
} loop_batch;

static void loop_batch_free(loop_batch *b) {
  lt_free(LT_MEM_DATA, b->x, (size_t)b->n * b->in_per * sizeof(float));
  lt_free(LT_MEM_DATA, b->labels, (size_t)b->n * sizeof(int32_t));
  lt_free(LT_MEM_DATA, b->targets, (size_t)b->n * b->k * sizeof(float));
  lt_free(LT_MEM_WORKSPACE, b->out, (size_t)b->n * b->k * sizeof(float));
  lt_free(LT_MEM_WORKSPACE, b->dout, (size_t)b->n * b->k * sizeof(float));
  lt_free(LT_MEM_OTHER, b->idx, (size_t)b->n * sizeof(int64_t));
  memset(b, 0, sizeof *b);
}

static lt_status loop_batch_alloc(loop_batch *b, int n, const loop_task *t, lt_err *err) {
  memset(b, 0, sizeof *b);
  b->n = n;
  b->in_per = t->in_per;
  b->k = t->k;
  b->x = lt_alloc(LT_MEM_DATA, (size_t)n * t->in_per * sizeof(float), err);
  b->labels = lt_alloc(LT_MEM_DATA, (size_t)n * sizeof(int32_t), err);
  b->targets = lt_alloc(LT_MEM_DATA, (size_t)n * t->k * sizeof(float), err);
  b->out = lt_alloc(LT_MEM_WORKSPACE, (size_t)n * t->k * sizeof(float), err);
  b->dout = lt_alloc(LT_MEM_WORKSPACE, (size_t)n * t->k * sizeof(float), err);
  b->idx = lt_alloc(LT_MEM_OTHER, (size_t)n * sizeof(int64_t), err);
  if (!b->x || !b->labels || !b->targets || !b->out || !b->dout || !b->idx) {
    loop_batch_free(b);
    return LT_ERR_NOMEM;
  }
  return LT_OK;
}

/* Forward the first n staged samples (the executor's batch); outputs land in b->out. */
static lt_status loop_forward(lt_exec *ex, lt_backend *be, loop_batch *b, int n, lt_err *err) {
  lt_status st = be->vt->to_device(be, lt_exec_input(ex, 0)->data, b->x,
                                   (size_t)n * b->in_per * sizeof(float), err);
  if (!st) st = lt_exec_forward(ex, err);
  if (!st)
    st = be->vt->to_host(be, b->out, lt_exec_output(ex, 0)->data,
                         (size_t)n * b->k * sizeof(float), err);
  return st;
}

/* Summed loss over the first n_valid rows (and their correct count); when want_grad, b->dout gets
 * the gradient of that sum divided by n_div: n_valid for the batch mean, 1 for the plain sum that
 * a multi-rank step all-reduces and divides by the global batch. */
static double loop_loss(const loop_task *t, loop_batch *b, int n_valid, int n_div, int want_grad,
                        int64_t *correct) {
  if (t->classify) {
    return lt_cpu_softmax_xent(n_valid, t->k, b->out, b->labels, 1.0f / (float)n_div,
                               want_grad ? b->dout : NULL, correct);
  }
  /* MSE as torch.nn.MSELoss: mean over every element; reported per sample as that mean. */
  size_t count = (size_t)n_valid * (size_t)t->k;
  double sum = lt_cpu_mse(count, b->out, b->targets, 1.0f / (float)((size_t)n_div * t->k),
                          want_grad ? b->dout : NULL);
  return sum / t->k;
}

/* The training loss of a step: the configured hook, or the built-in loss (gradient always). */
static lt_status loop_train_loss(const lt_train_config *c, const loop_task *t, loop_batch *b,
                                 int n_valid, int n_div, double *loss, int64_t *correct,
                                 lt_err *err) {
  *correct = 0;
  if (!c->loss) {
    *loss = loop_loss(t, b, n_valid, n_div, 1, correct);
    return LT_OK;
  }
  if (!c->loss->fn) return lt_errorf(err, LT_ERR_INVALID, "a training loss hook needs fn");
  return c->loss->fn(c->loss->user, n_valid, t->k, b->x, b->out, t->classify ? b->labels : NULL,
                     t->classify ? NULL : b->targets, 1.0f / (float)n_div, b->dout, loss, correct,
                     err);
}

lt_status lt_evaluate(lt_graph *g, lt_backend *be, const lt_dataset *ds, const lt_norm *norm,
                      int batch_size, lt_eval_result *r, lt_err *err) {
  loop_task t;
  lt_status st = loop_task_make(g, ds, &t, err);
  if (st) return st;
  if (batch_size < 1) return lt_errorf(err, LT_ERR_INVALID, "batch size %d must be >= 1", batch_size);
  int bs = ds->n < batch_size ? (int)ds->n : batch_size;
  loop_batch b;
  if ((st = loop_batch_alloc(&b, bs, &t, err))) return st;
  lt_exec *ex = lt_exec_create(g, bs, LT_MODE_INFER, be, NULL, err);
  if (!ex) {
    loop_batch_free(&b);
    return err ? err->status : LT_ERR_INTERNAL;
  }
  lt_batch_opts bo = {.norm = *norm};
  double loss = 0;
  int64_t correct = 0;
  for (int64_t i0 = 0; i0 < ds->n && !st; i0 += bs) {
    int valid = ds->n - i0 < bs ? (int)(ds->n - i0) : bs;
    for (int i = 0; i < bs; i++) b.idx[i] = i0 + (i < valid ? i : valid - 1);
    st = lt_batch_fill(ds, b.idx, bs, &bo, 0, 0, b.x, b.labels, b.targets, err);
    if (!st) st = loop_forward(ex, be, &b, bs, err);
    if (!st) {
      int64_t c = 0;
      loss += loop_loss(&t, &b, valid, valid, 0, &c);
      correct += c;
    }
  }
  lt_exec_free(ex);
  loop_batch_free(&b);
  if (st) return st;
  r->samples = ds->n;
  r->loss = loss / (double)ds->n;
  r->accuracy = t.classify ? (double)correct / (double)ds->n : NAN;
  if (!isfinite(r->loss))
    return lt_errorf(err, LT_ERR_INVALID,
                     "evaluation loss is not finite; the model diverged or its weights are "
                     "damaged");
  return LT_OK;
}

lt_status lt_bn_recalibrate(lt_graph *g, lt_backend *be, const lt_dataset *ds,
                            const lt_batch_opts *bo, int batch_size, int batches, uint64_t seed,
                            lt_err *err) {
  int n_bn = 0;
  for (int i = 0; i < g->n_nodes; i++) n_bn += g->nodes[i].op == LT_OP_BATCHNORM;
  if (n_bn == 0 || batches < 1) return LT_OK;
  if (batch_size < 2 || ds->n < 2)
    return lt_errorf(err, LT_ERR_INVALID,
                     "batch-norm statistics need batches of at least 2 samples (batch size %d, "
                     "%lld samples)", batch_size, (long long)ds->n);
  loop_task t;
  lt_status st = loop_task_make(g, ds, &t, err);
  if (st) return st;
  int bs = ds->n < batch_size ? (int)ds->n : batch_size;
  float *momentum = malloc(sizeof(float) * (size_t)g->n_nodes);
  if (!momentum) return lt_errorf(err, LT_ERR_NOMEM, "out of memory recalibrating batch norm");
  for (int i = 0; i < g->n_nodes; i++) momentum[i] = g->nodes[i].a.momentum;
  loop_batch b;
  if ((st = loop_batch_alloc(&b, bs, &t, err))) {
    free(momentum);
    return st;
  }
  /* Training-mode forwards update the running statistics; nothing runs backward. */
  lt_exec *ex = lt_exec_create(g, bs, LT_MODE_TRAIN, be, NULL, err);
  if (!ex) st = err ? err->status : LT_ERR_INTERNAL;
  lt_rng r = lt_rng_make(seed, 0x6263616cULL);
  for (int k = 0; k < batches && !st; k++) {
    /* momentum 1/(k+1): after batch k the running figures are the mean over batches 0..k */
    for (int i = 0; i < g->n_nodes; i++)
      if (g->nodes[i].op == LT_OP_BATCHNORM) g->nodes[i].a.momentum = 1.0f / (float)(k + 1);
    for (int i = 0; i < bs; i++) b.idx[i] = (int64_t)lt_rng_below(&r, (uint64_t)ds->n);
    st = lt_batch_fill(ds, b.idx, bs, bo, seed, (uint64_t)k, b.x, b.labels, b.targets, err);
    if (!st) st = loop_forward(ex, be, &b, bs, err);
  }
  if (!st) st = lt_exec_sync_params(ex, 0, err);
  for (int i = 0; i < g->n_nodes; i++) g->nodes[i].a.momentum = momentum[i];
  free(momentum);
  lt_exec_free(ex);
  loop_batch_free(&b);
  return st;
}

static lt_status loop_check_config(const lt_train_config *c, lt_err *err) {
  if (!c->train) return lt_errorf(err, LT_ERR_INVALID, "no training split given");
  if (c->batch_size < 1 || c->batch_size > c->train->n)
    return lt_errorf(err, LT_ERR_INVALID,
                     "batch size %d must lie in [1, %lld] (the samples of split %s)",
                     c->batch_size, (long long)c->train->n, c->train->split);
  if (c->epochs < 1) return lt_errorf(err, LT_ERR_INVALID, "epochs must be >= 1");
  if (c->max_steps < 0 || c->checkpoint_every < 0)
    return lt_errorf(err, LT_ERR_INVALID, "max_steps and checkpoint_every must be >= 0");
  lt_status st = lt_optim_config_check(&c->optim, err);
  if (!st) st = lt_norm_check(&c->batch.norm, c->train->c, err);
  return st;
}

static lt_status loop_check_backend(const lt_backend *be, const lt_train_config *c, lt_err *err) {
  if (be->device < 0) return LT_OK;
  if (c->stash && !be->vt->actcomp)
    return lt_errorf(err, LT_ERR_UNSUPPORTED,
                     "backend %s has no device form of activation_compression's stash; train with "
                     "device cpu, or on %s without activation_compression",
                     be->vt->name, be->vt->name);
  return lt_optim_check_backend(be, err);
}

/* ---- training on a device backend ----------------------------------------------------------
 *
 * The executor keeps device copies of the parameters (lt_exec_param) and computes their
 * gradients there. The in-memory loop attaches the optimizer to the device, so a step moves
 * nothing but the batch, the logits and their gradient; the graph's host tensors and the
 * optimizer's host state are brought up to date (loop_pull) only where something reads them:
 * before a validation pass, a checkpoint, and at every epoch end (so the caller finds the trained
 * weights and batch-norm running statistics in the graph). The loader loop keeps the parameters
 * on the host instead (its gradients are all-reduced there): every step sends them to the
 * executor it runs (one per local batch size) and brings back the gradients and the running
 * statistics. On host backends all of this does nothing. */

/* Moves opt's updates onto ex's device copies of the parameters ids (np of them). */
static lt_status loop_attach(lt_backend *be, lt_exec *ex, lt_optim *opt, const int *ids, int np,
                             lt_err *err) {
  if (be->device < 0) return LT_OK;
  const size_t bytes = (size_t)(np ? np : 1) * sizeof(lt_tensor *);
  lt_tensor **dev = lt_alloc(LT_MEM_OTHER, bytes, err);
  if (!dev) return LT_ERR_NOMEM;
  for (int i = 0; i < np; i++) dev[i] = lt_exec_param(ex, ids[i]);
  lt_status st = lt_optim_attach(opt, be, dev, err);
  lt_free(LT_MEM_OTHER, dev, bytes);
  return st;
}

/* The graph's parameters (running statistics included) and the optimizer state, brought back
 * from ex's device copies. */
static lt_status loop_pull(lt_exec *ex, lt_optim *opt, lt_err *err) {
  lt_status st = lt_exec_sync_params(ex, 0, err);
  return st ? st : lt_optim_sync_to_host(opt, err);
}

static lt_status loop_checkpoint(const lt_train_config *c, const lt_graph *g, const lt_optim *o,
                                 const lt_ckpt_meta *m, lt_err *err) {
  if (!c->checkpoint_path) return LT_OK;
  lt_status st = lt_ckpt_save(c->checkpoint_path, g, o, m, err);
  if (st) lt_err_prefix(err, "writing checkpoint");
  return st;
}

/* Rank 0 writes the checkpoint; every rank learns whether it worked. */
static lt_status loop_checkpoint_rank0(const lt_train_config *c, const lt_graph *g,
                                       const lt_optim *o, const lt_ckpt_meta *m, int rank, int multi,
                                       lt_err *err) {
  lt_status st = rank == 0 ? loop_checkpoint(c, g, o, m, err) : LT_OK;
  return multi ? lt_loader_agree(st, err) : st;
}

/* The end of every optimizer step in both loops: a checkpoint when one is due or the run is
 * stopping (written by rank 0, agreed by all ranks; first brought back from ex's device copies
 * when ex is given), then the cancellation. */
static lt_status loop_step_end(const lt_train_config *c, const lt_graph *g, lt_optim *o,
                               lt_exec *ex, const lt_ckpt_meta *m, int stop, int rank, int multi,
                               lt_err *err) {
  int ckpt_due = c->checkpoint_every > 0 && m->step % c->checkpoint_every == 0;
  if (ckpt_due || stop) {
    if (ex && (stop || c->checkpoint_path)) { /* a stopped run leaves its weights in g */
      lt_status st = loop_pull(ex, o, err);
      if (st) return st;
    }
    lt_ckpt_meta saved = *m;
    saved.epoch_step = m->epoch_step + 1;
    lt_status st = loop_checkpoint_rank0(c, g, o, &saved, rank, multi, err);
    if (st) return st;
  }
  if (stop)
    return lt_errorf(err, LT_ERR_CANCELLED, "training cancelled at step %lld", (long long)m->step);
  return LT_OK;
}

/* Where a run starts: the configured metadata at step 0, or the position a checkpoint recorded
 * (its weights and optimizer state loaded into g and o). */
static lt_status loop_resume(const lt_train_config *c, lt_graph *g, lt_optim *o, lt_ckpt_meta *m,
                             lt_err *err) {
  *m = c->meta;
  m->seed = c->seed;
  m->epoch = m->step = m->epoch_step = m->epoch_seen = m->epoch_correct = 0;
  m->epoch_loss_sum = 0;
  if (!c->resume_from) return LT_OK;
  lt_ckpt_meta saved;
  lt_status st = lt_ckpt_load(c->resume_from, g, o, &saved, err);
  if (st) return st;
  if (saved.seed != c->seed)
    return lt_errorf(err, LT_ERR_INVALID,
                     "checkpoint %s was written by a run with seed %llu, this run has seed %llu; "
                     "resume with the same seed",
                     c->resume_from, (unsigned long long)saved.seed, (unsigned long long)c->seed);
  m->epoch = saved.epoch;
  m->step = saved.step;
  m->epoch_step = saved.epoch_step;
  m->epoch_loss_sum = saved.epoch_loss_sum;
  m->epoch_correct = saved.epoch_correct;
  m->epoch_seen = saved.epoch_seen;
  return LT_OK;
}

static lt_status loop_run_loader(lt_graph *g, lt_backend *be, const lt_train_config *c,
                                 lt_train_result *r, lt_err *err);

/* The run's length in optimizer steps (epochs × steps per epoch, capped by max_steps) and its
 * schedule, whose total defaults to that length; shared by the in-memory and the loader loops. */
static lt_status loop_schedule(const lt_train_config *c, int64_t steps_per_epoch, int64_t *total,
                               lt_schedule *sched, lt_err *err) {
  *total = c->epochs * steps_per_epoch;
  if (c->max_steps > 0 && c->max_steps < *total) *total = c->max_steps;
  *sched = c->sched;
  if (sched->total_steps == 0) sched->total_steps = *total;
  return lt_schedule_check(sched, err);
}

lt_status lt_train_run(lt_graph *g, lt_backend *be, const lt_train_config *c, lt_train_result *r,
                       lt_err *err) {
  if (c->loader) return loop_run_loader(g, be, c, r, err);
  loop_task t;
  lt_status st = loop_check_config(c, err);
  if (!st) st = loop_task_make(g, c->train, &t, err);
  if (!st && c->val) st = loop_task_make(g, c->val, &(loop_task){0}, err);
  if (!st) st = loop_check_backend(be, c, err);
  if (st) return st;
  const int B = c->batch_size;
  const int64_t spe = c->train->n / B;
  int64_t total;
  lt_schedule sched;
  if ((st = loop_schedule(c, spe, &total, &sched, err))) return st;

  lt_mem_reset_peaks();
  int np = lt_train_params(g, NULL, 0);
  int *ids = lt_alloc(LT_MEM_OTHER, (size_t)(np ? np : 1) * sizeof *ids, err);
  lt_tensor **params = lt_alloc(LT_MEM_OTHER, (size_t)(np ? np : 1) * sizeof *params, err);
  lt_tensor **grads = lt_alloc(LT_MEM_OTHER, (size_t)(np ? np : 1) * sizeof *grads, err);
  int64_t *perm = lt_alloc(LT_MEM_OTHER, (size_t)c->train->n * sizeof *perm, err);
  lt_optim *opt = NULL;
  lt_exec *ex = NULL;
  loop_batch b = {0};
  if (!ids || !params || !grads || !perm) {
    st = LT_ERR_NOMEM;
    goto done;
  }
  lt_train_params(g, ids, np);
  for (int i = 0; i < np; i++) params[i] = g->values[ids[i]].data;
  if (!(opt = lt_optim_create(&c->optim, np, params, err))) {
    st = err ? err->status : LT_ERR_NOMEM;
    goto done;
  }
  lt_ckpt_meta m;
  if ((st = loop_resume(c, g, opt, &m, err))) goto done;
  lt_exec_opts xo = {.seed = c->seed, .stash = c->stash};
  if (!(ex = lt_exec_create(g, B, LT_MODE_TRAIN, be, &xo, err))) {
    st = err ? err->status : LT_ERR_INTERNAL;
    goto done;
  }
  for (int i = 0; i < np; i++) {
    grads[i] = lt_exec_param_grad(ex, ids[i]);
    if (!grads[i]) {
      st = lt_errorf(err, LT_ERR_INTERNAL, "no gradient for trainable parameter %s",
                     g->values[ids[i]].name);
      goto done;
    }
  }
  if ((st = loop_attach(be, ex, opt, ids, np, err)) || (st = loop_batch_alloc(&b, B, &t, err)))
    goto done;

  double train_time = 0;
  int64_t train_samples = 0;
  memset(r, 0, sizeof *r);
  r->val_loss = r->val_accuracy = NAN;
  r->train_accuracy = NAN;
  for (; m.epoch < c->epochs && m.step < total; m.epoch++) {
    if (!c->source) lt_data_shuffle(c->train->n, c->seed, (uint64_t)m.epoch, perm);
    double epoch_time = 0;
    int64_t epoch_samples = 0;
    for (; m.epoch_step < spe && m.step < total; m.epoch_step++) {
      double t0 = lt_now();
      if (c->source) {
        st = c->source->fill(c->source->user, m.epoch, m.epoch_step, B, b.x, b.labels, b.targets,
                             err);
      } else {
        memcpy(b.idx, perm + m.epoch_step * B, (size_t)B * sizeof *b.idx);
        st = lt_batch_fill(c->train, b.idx, B, &c->batch, c->seed, (uint64_t)m.epoch, b.x,
                           b.labels, b.targets, err);
      }
      if (!st) st = loop_forward(ex, be, &b, B, err);
      if (st) goto done;
      int64_t correct = 0;
      double loss = 0;
      if ((st = loop_train_loss(c, &t, &b, B, B, &loss, &correct, err))) goto done;
      if (!isfinite(loss)) {
        st = lt_errorf(err, LT_ERR_INVALID,
                       "training loss became %g at step %lld; lower the learning rate",
                       loss, (long long)m.step);
        goto done;
      }
      lt_exec_zero_grads(ex);
      if ((st = be->vt->to_device(be, lt_exec_output_grad(ex, 0)->data, b.dout,
                                  (size_t)B * t.k * sizeof(float), err)) ||
          (st = lt_exec_backward(ex, err)))
        goto done;
      double lr = lt_schedule_lr(&sched, m.step);
      if ((st = lt_optim_step(opt, grads, (float)lr, err))) goto done;
      m.step++;
      m.epoch_loss_sum += loss;
      m.epoch_correct += correct;
      m.epoch_seen += B;
      double dt = lt_now() - t0;
      epoch_time += dt;
      epoch_samples += B;
      lt_train_progress p = {.epoch = m.epoch, .epochs = c->epochs, .step = m.step,
                             .total_steps = total, .epoch_step = m.epoch_step + 1,
                             .steps_per_epoch = spe, .loss = loss / B,
                             .accuracy = t.classify ? (double)correct / B : NAN, .lr = lr,
                             .samples_per_s = dt > 0 ? B / dt : 0, .val_loss = NAN,
                             .val_accuracy = NAN};
      lt_mem_get_stats(&p.mem);
      int stop = c->on_step && c->on_step(c->user, &p);
      if ((st = loop_step_end(c, g, opt, ex, &m, stop, 0, 0, err))) goto done;
    }
    train_time += epoch_time;
    train_samples += epoch_samples;
    if ((st = loop_pull(ex, opt, err))) goto done;
    r->train_loss = m.epoch_seen ? m.epoch_loss_sum / m.epoch_seen : NAN;
    r->train_accuracy = t.classify && m.epoch_seen ? (double)m.epoch_correct / m.epoch_seen : NAN;
    lt_train_progress p = {.epoch = m.epoch, .epochs = c->epochs, .step = m.step,
                           .total_steps = total, .epoch_step = m.epoch_step,
                           .steps_per_epoch = spe, .loss = r->train_loss,
                           .accuracy = r->train_accuracy,
                           .lr = lt_schedule_lr(&sched, m.step ? m.step - 1 : 0),
                           .samples_per_s = epoch_time > 0 ? epoch_samples / epoch_time : 0,
                           .val_loss = NAN, .val_accuracy = NAN};
    if (c->val) {
      lt_norm norm = c->batch.norm;
      lt_eval_result ev;
      if ((st = lt_evaluate(g, be, c->val, &norm, B, &ev, err))) goto done;
      p.val_loss = r->val_loss = ev.loss;
      p.val_accuracy = r->val_accuracy = ev.accuracy;
    }
    lt_mem_get_stats(&p.mem);
    r->epochs = m.epoch + 1;
    int stop = c->on_epoch && c->on_epoch(c->user, &p);
    /* The checkpoint at an epoch end points at the start of the next epoch. */
    lt_ckpt_meta next = m;
    next.epoch = m.epoch + 1;
    next.epoch_step = next.epoch_seen = next.epoch_correct = 0;
    next.epoch_loss_sum = 0;
    if ((st = loop_checkpoint(c, g, opt, &next, err))) goto done;
    if (stop) {
      st = lt_errorf(err, LT_ERR_CANCELLED, "training cancelled after epoch %lld",
                     (long long)m.epoch + 1);
      goto done;
    }
    m.epoch_step = m.epoch_seen = m.epoch_correct = 0;
    m.epoch_loss_sum = 0;
  }
  if (r->epochs == 0) {
    /* Resumed from a checkpoint of a finished run: nothing trained, so report where it stands. */
    r->epochs = m.epoch;
    r->train_loss = NAN;
    if (c->val) {
      lt_eval_result ev;
      if ((st = lt_evaluate(g, be, c->val, &c->batch.norm, B, &ev, err))) goto done;
      r->val_loss = ev.loss;
      r->val_accuracy = ev.accuracy;
    }
  }
  r->steps = m.step;
  r->samples_per_s = train_time > 0 ? train_samples / train_time : 0;
  lt_mem_get_stats(&r->mem);
done:
  loop_batch_free(&b);
  lt_exec_free(ex);
  lt_optim_free(opt);
  lt_free(LT_MEM_OTHER, perm, (size_t)c->train->n * sizeof *perm);
  lt_free(LT_MEM_OTHER, grads, (size_t)(np ? np : 1) * sizeof *grads);
  lt_free(LT_MEM_OTHER, params, (size_t)(np ? np : 1) * sizeof *params);
  lt_free(LT_MEM_OTHER, ids, (size_t)(np ? np : 1) * sizeof *ids);
  return st;
}

/* ---- training from a loader, on one or many ranks ----------------------------------------------
 *
 * Every rank runs this loop in lockstep: the loader hands each rank its local samples of the
 * global step (the plan puts a buffered sample on the rank that holds it, so local batches differ
 * and may be empty), the rank sums the loss over them, and one all-reduce of a packed vector
 * (parameter gradients, batch-norm running statistics weighted by local batch, loss, correct
 * count) divided by the global batch gives every rank the single-process mean gradient of the
 * global batch. Every rank then applies the same update. Any failure, stop request or checkpoint
 * error is agreed on (lt_loader_agree) before the next collective, so no rank waits forever. */

/* Executors per local batch size. The local batch varies with the plan, and batch norm couples the
 * samples of a batch, so padding a short batch up to one planned size would change the result:
 * each size gets its own plan, the most recently used few are kept. */
#define LOOP_EXEC_CACHE 8

typedef struct loop_exec_cache {
  lt_exec *ex[LOOP_EXEC_CACHE]; /* owned, NULL when free */
  int batch[LOOP_EXEC_CACHE];
  int64_t used[LOOP_EXEC_CACHE]; /* clock of the last use */
  int64_t clock;
} loop_exec_cache;

static lt_exec *loop_exec_get(loop_exec_cache *cache, lt_graph *g, int n, lt_backend *be,
                              const lt_exec_opts *xo, lt_err *err) {
  int victim = 0;
  for (int i = 0; i < LOOP_EXEC_CACHE; i++) {
    if (cache->ex[i] && cache->batch[i] == n) {
      cache->used[i] = ++cache->clock;
      return cache->ex[i];
    }
    if (!cache->ex[victim]) continue;
    if (!cache->ex[i] || cache->used[i] < cache->used[victim]) victim = i;
  }
  lt_exec_free(cache->ex[victim]);
  cache->ex[victim] = lt_exec_create(g, n, LT_MODE_TRAIN, be, xo, err);
  cache->batch[victim] = n;
  cache->used[victim] = ++cache->clock;
  return cache->ex[victim];
}

static void loop_exec_cache_free(loop_exec_cache *cache) {
  for (int i = 0; i < LOOP_EXEC_CACHE; i++) lt_exec_free(cache->ex[i]);
  memset(cache, 0, sizeof *cache);
}

/* What the loader delivers, checked against the model. The loader knows bytes per sample only, so
 * the element types follow from the model's sizes: x holds float32 or uint8 values of the input's
 * shape; y holds float32 targets of the output's size (MSE), or, for a classifier, one uint8 or
 * int32 label (cross-entropy). */
typedef struct loop_source {
  int c, h, w;
  lt_dtype x_dtype;
  size_t label_bytes; /* 1 or 4 for labels, 0 for targets */
} loop_source;

static lt_status loop_source_make(const lt_graph *g, const lt_loader *ld, loop_task *t,
                                  loop_source *src, lt_err *err) {
  if (g->n_inputs != 1 || g->n_outputs < 1)
    return lt_errorf(err, LT_ERR_UNSUPPORTED,
                     "training needs a model with one input and an output (this one has %d "
                     "inputs, %d outputs)",
                     g->n_inputs, g->n_outputs);
  const lt_value *in = &g->values[g->inputs[0]], *out = &g->values[g->outputs[0]];
  char a[96];
  if (in->dtype != LT_F32 || in->ndim != 3)
    return lt_errorf(err, LT_ERR_UNSUPPORTED,
                     "the loader feeds images (C, H, W) but the model takes %s; pick an image model",
                     lt_shape_str(in->ndim, in->shape, a, sizeof a));
  src->c = (int)in->shape[0];
  src->h = (int)in->shape[1];
  src->w = (int)in->shape[2];
  t->in_per = (size_t)lt_shape_numel(3, in->shape);
  size_t xb = lt_loader_x_sample_bytes(ld), yb = lt_loader_y_sample_bytes(ld);
  if (xb == t->in_per * sizeof(float)) src->x_dtype = LT_F32;
  else if (xb == t->in_per) src->x_dtype = LT_U8;
  else
    return lt_errorf(err, LT_ERR_INVALID,
                     "the loader's inputs hold %zu bytes per sample but the model takes %s (%zu "
                     "float32 or uint8 values); pick the model built for this data",
                     xb, lt_shape_str(3, in->shape, a, sizeof a), t->in_per);
  int64_t k = lt_shape_numel(out->ndim, out->shape);
  t->k = (int)k;
  if (yb == (size_t)k * sizeof(float)) {
    t->classify = 0;
    src->label_bytes = 0;
  } else if (out->ndim == 1 && (yb == 1 || yb == 4)) {
    t->classify = 1;
    src->label_bytes = yb;
  } else {
    return lt_errorf(err, LT_ERR_INVALID,
                     "the loader's targets hold %zu bytes per sample; the model outputs %lld values, "
                     "so they must be %lld float32 targets%s",
                     yb, (long long)k, (long long)k,
                     out->ndim == 1 ? " or one uint8/int32 class label" : "");
  }
  return LT_OK;
}

/* A loader batch → the staged float batch: labels widened and range-checked, x scaled and
 * normalised by lt_batch_fill over a view of the delivered bytes. */
static lt_status loop_stage(const loop_task *t, const loop_source *src, const lt_batch_opts *bo,
                            const lt_loader_batch *lb, loop_batch *b, lt_err *err) {
  int n = (int)lb->n_local;
  lt_dataset view = {.n = n, .c = src->c, .h = src->h, .w = src->w, .x_dtype = src->x_dtype,
                     .x = (void *)lb->x, .num_classes = t->k};
  snprintf(view.split, sizeof view.split, "loader");
  if (t->classify) {
    for (int i = 0; i < n; i++) {
      const uint8_t *y = (const uint8_t *)lb->y + (size_t)i * src->label_bytes;
      int32_t v;
      if (src->label_bytes == 1) v = y[0];
      else memcpy(&v, y, sizeof v);
      if (v < 0 || v >= t->k)
        return lt_errorf(err, LT_ERR_INVALID,
                         "sample %lld has label %d outside the model's %d classes; fix the dataset "
                         "or build the model with more classes",
                         (long long)lb->indices[i], v, t->k);
      b->labels[i] = v;
    }
  } else {
    view.targets = (float *)lb->y;
    view.target_numel = t->k;
  }
  for (int i = 0; i < n; i++) b->idx[i] = i;
  return lt_batch_fill(&view, b->idx, n, bo, 0, 0, b->x, NULL, t->classify ? NULL : b->targets,
                       err);
}

/* The per-rank figures of one epoch, added up over ranks at its end (one small all-reduce). */
static void loop_loader_epoch(lt_loader *ld, const lt_loader_stats *at_start, double epoch_s,
                              const int64_t *rank_sum, const int64_t *rank_max, int64_t steps,
                              double *scratch, double *rank_mean, int64_t *rank_max_all,
                              lt_train_loader_epoch *e) {
  int P = lt_loader_n_ranks(ld), me = lt_loader_rank(ld);
  lt_loader_stats now;
  lt_loader_get_stats(ld, &now);
  /* [samples, hits, bytes, requests, stall fraction, epoch seconds, per-rank sums (P), maxima (P)] */
  memset(scratch, 0, (size_t)(6 + 2 * P) * sizeof *scratch);
  scratch[0] = (double)(now.samples - at_start->samples);
  scratch[1] = (double)(now.hits - at_start->hits);
  scratch[2] = (double)(now.storage_bytes - at_start->storage_bytes);
  scratch[3] = (double)(now.storage_requests - at_start->storage_requests);
  scratch[4] = epoch_s > 0 ? (now.stall_s - at_start->stall_s) / epoch_s : 0;
  scratch[5] = epoch_s;
  scratch[6 + me] = (double)rank_sum[me];
  scratch[6 + P + me] = (double)rank_max[me];
  if (P > 1) lt_loader_sum(scratch, 6 + 2 * P);
  e->samples = (int64_t)scratch[0];
  e->hits = (int64_t)scratch[1];
  e->storage_bytes = (int64_t)scratch[2];
  e->storage_requests = (int64_t)scratch[3];
  e->hit_rate = e->samples ? (double)e->hits / (double)e->samples : 0;
  e->stall_fraction = scratch[4] / P;
  double mean_s = scratch[5] / P;
  e->samples_per_s = mean_s > 0 ? (double)e->samples / mean_s : 0;
  e->n_ranks = P;
  for (int i = 0; i < P; i++) {
    rank_mean[i] = steps ? scratch[6 + i] / (double)steps : 0;
    rank_max_all[i] = (int64_t)scratch[6 + P + i];
  }
  e->rank_batch_mean = rank_mean;
  e->rank_batch_max = rank_max_all;
}

static lt_status loop_run_loader(lt_graph *g, lt_backend *be, const lt_train_config *c,
                                 lt_train_result *r, lt_err *err) {
  lt_loader *ld = c->loader;
  const int P = lt_loader_n_ranks(ld), rank = lt_loader_rank(ld), multi = P > 1;
  int world_rank, world_n;
  lt_loader_world(&world_rank, &world_n);
  /* A loader whose ranks are not this MPI world's would make this rank's collectives meet nobody
   * (or the wrong peers): refuse it on every rank alike. */
  if (world_n != P || world_rank != rank)
    return lt_errorf(err, LT_ERR_INVALID,
                     "the loader runs as rank %d of %d but this process is rank %d of %d MPI ranks; "
                     "open the loader with rank and n_ranks from MPI (-1)",
                     rank, P, world_rank, world_n);
  loop_task t = {0};
  loop_source src = {0};
  lt_status st = loop_source_make(g, ld, &t, &src, err);
  if (!st && c->val) st = loop_task_make(g, c->val, &(loop_task){0}, err);
  if (!st) st = loop_check_backend(be, c, err);
  if (!st && (c->batch_size < 1 || c->epochs < 1 || c->max_steps < 0 || c->checkpoint_every < 0))
    st = lt_errorf(err, LT_ERR_INVALID,
                   "batch size and epochs must be >= 1, max_steps and checkpoint_every >= 0");
  if (!st && (c->batch.pad || c->batch.flip))
    st = lt_errorf(err, LT_ERR_UNSUPPORTED,
                   "augmentation (crop padding, flip) is not available with the loader: its draws "
                   "are keyed by the in-memory sample position; turn augmentation off or drop the "
                   "loader");
  if (!st) st = lt_optim_config_check(&c->optim, err);
  if (!st) st = lt_norm_check(&c->batch.norm, src.c, err);
  if (st) return st; /* every check above gives the same answer on every rank */

  const int64_t N = lt_loader_n_samples(ld), B = c->batch_size;
  const int64_t spe = (N + B - 1) / B, local_max = B < N ? B : N;
  int64_t total;
  lt_schedule sched;
  if ((st = loop_schedule(c, spe, &total, &sched, err))) return st;

  lt_mem_reset_peaks();
  int np = lt_train_params(g, NULL, 0);
  /* batch-norm running statistics: forward updates them from the local batch, so ranks drift
   * apart unless they are averaged with the gradients */
  int n_stats = 0;
  for (int i = 0; i < g->n_nodes; i++) n_stats += multi && g->nodes[i].op == LT_OP_BATCHNORM ? 2 : 0;
  size_t slots = (size_t)(np + n_stats + 1);
  int *ids = lt_alloc(LT_MEM_OTHER, slots * sizeof *ids, err);
  lt_tensor **params = lt_alloc(LT_MEM_OTHER, slots * sizeof *params, err);
  lt_tensor **gptr = lt_alloc(LT_MEM_OTHER, slots * sizeof *gptr, err);
  lt_tensor *gview = lt_alloc(LT_MEM_OTHER, slots * sizeof *gview, err);
  size_t *off = lt_alloc(LT_MEM_OTHER, slots * sizeof *off, err);
  double *scratch = lt_alloc(LT_MEM_OTHER, (size_t)(6 + 2 * P) * sizeof(double), err);
  double *rank_mean = lt_alloc(LT_MEM_OTHER, (size_t)P * sizeof(double), err);
  int64_t *rank_sum = lt_alloc(LT_MEM_OTHER, (size_t)P * sizeof(int64_t), err);
  int64_t *rank_max = lt_alloc(LT_MEM_OTHER, (size_t)P * sizeof(int64_t), err);
  int64_t *rank_max_all = lt_alloc(LT_MEM_OTHER, (size_t)P * sizeof(int64_t), err);
  float *packed = NULL;
  size_t n_packed = 0;
  lt_optim *opt = NULL;
  loop_exec_cache cache = {0};
  loop_batch b = {0};
  if (!ids || !params || !gptr || !gview || !off || !scratch || !rank_mean || !rank_sum ||
      !rank_max || !rank_max_all) {
    st = LT_ERR_NOMEM;
    goto agreed;
  }
  lt_train_params(g, ids, np);
  for (int i = 0, j = np; i < g->n_nodes; i++)
    if (multi && g->nodes[i].op == LT_OP_BATCHNORM) {
      ids[j++] = g->nodes[i].in[3];
      ids[j++] = g->nodes[i].in[4];
    }
  /* packed: (gradients of the np trainable parameters | running statistics × local batch |
   * loss sum | correct count), floats */
  for (int i = 0; i < np + n_stats; i++) {
    params[i] = g->values[ids[i]].data;
    off[i] = n_packed;
    n_packed += (size_t)lt_shape_numel(params[i]->ndim, params[i]->shape);
  }
  n_packed += 2;
  if (!(packed = lt_alloc(LT_MEM_GRADIENTS, n_packed * sizeof(float), err))) {
    st = LT_ERR_NOMEM;
    goto agreed;
  }
  for (int i = 0; i < np; i++) {
    gview[i] = lt_tensor_wrap(LT_F32, params[i]->ndim, params[i]->shape, packed + off[i]);
    gptr[i] = &gview[i];
  }
  if (!(opt = lt_optim_create(&c->optim, np, params, err))) {
    st = err ? err->status : LT_ERR_NOMEM;
    goto agreed;
  }
  lt_ckpt_meta m;
  if ((st = loop_resume(c, g, opt, &m, err))) goto agreed;
  st = loop_batch_alloc(&b, (int)local_max, &t, err);
agreed:
  /* the first collective after setup: a rank that failed alone takes the others down with it */
  if (multi) st = lt_loader_agree(st, err);
  if (st) goto done;

  memset(r, 0, sizeof *r);
  r->val_loss = r->val_accuracy = NAN;
  r->train_accuracy = NAN;
  lt_exec_opts xo = {.seed = c->seed, .stash = c->stash};
  const size_t i_loss = n_packed - 2, i_correct = n_packed - 1;
  double train_time = 0;
  int64_t train_samples = 0;
  lt_loader_batch lb;
  /* a resumed run fast-forwards the loader through the steps already taken: the plan (and the
   * buffers' contents) are sequential in the steps, so they are replayed, not skipped */
  for (int64_t s = 0; s < m.epoch * spe + m.epoch_step; s++)
    if ((st = lt_loader_next(ld, &lb, err))) goto done;
  for (; m.epoch < c->epochs && m.step < total; m.epoch++) {
    lt_loader_stats at_start;
    lt_loader_get_stats(ld, &at_start);
    memset(rank_sum, 0, (size_t)P * sizeof *rank_sum);
    memset(rank_max, 0, (size_t)P * sizeof *rank_max);
    double epoch_time = 0;
    int64_t epoch_samples = 0, epoch_steps = 0;
    for (; m.epoch_step < spe && m.step < total; m.epoch_step++) {
      double t0 = lt_now();
      if ((st = lt_loader_next(ld, &lb, err))) goto done; /* collective: agreed inside */
      if (lb.n_local < 0 || lb.epoch != m.epoch || lb.step != m.epoch_step) {
        st = lt_errorf(err, LT_ERR_INVALID,
                       "the loader delivered epoch %d step %lld where the loop expected epoch "
                       "%lld step %lld; open it with global_batch = batch_size and epochs = epochs",
                       lb.epoch, (long long)lb.step, (long long)m.epoch, (long long)m.epoch_step);
        goto done;
      }
      const int n = (int)lb.n_local;
      memset(packed, 0, n_packed * sizeof(float));
      if (n > 0) {
        lt_exec *ex = loop_exec_get(&cache, g, n, be, &xo, err);
        st = ex ? loop_stage(&t, &src, &c->batch, &lb, &b, err) : (err ? err->status : LT_ERR_NOMEM);
        if (!st) st = lt_exec_sync_params(ex, 1, err); /* device: this step's weights */
        if (!st) st = loop_forward(ex, be, &b, n, err);
        if (!st) {
          int64_t correct = 0;
          double loss = 0;
          st = loop_train_loss(c, &t, &b, n, 1, &loss, &correct, err);
          packed[i_loss] = (float)loss;
          packed[i_correct] = (float)correct;
          lt_exec_zero_grads(ex);
          if (!st)
            st = be->vt->to_device(be, lt_exec_output_grad(ex, 0)->data, b.dout,
                                   (size_t)n * t.k * sizeof(float), err);
        }
        if (!st) st = lt_exec_backward(ex, err);
        if (!st) st = lt_exec_pull_state(ex, err); /* device: the running statistics */
        for (int i = 0; i < np && !st; i++) {
          lt_tensor *gi = lt_exec_param_grad(ex, ids[i]);
          if (!gi)
            st = lt_errorf(err, LT_ERR_INTERNAL, "no gradient for trainable parameter %s",
                           g->values[ids[i]].name);
          else
            st = be->vt->to_host(be, packed + off[i], gi->data, lt_tensor_nbytes(gi), err);
        }
        for (int i = np; i < np + n_stats && !st; i++) {
          const float *v = params[i]->data;
          int64_t cnt = lt_shape_numel(params[i]->ndim, params[i]->shape);
          for (int64_t j = 0; j < cnt; j++) packed[off[i] + j] = v[j] * (float)n;
        }
      }
      if (multi) st = lt_loader_agree(st, err);
      if (st) goto done;
      if ((st = lt_loader_allreduce_grad(packed, n_packed, lb.global_n, err))) goto done;
      for (int i = np; i < np + n_stats; i++)
        memcpy(params[i]->data, packed + off[i],
               (size_t)lt_shape_numel(params[i]->ndim, params[i]->shape) * sizeof(float));
      const double loss = packed[i_loss], acc = packed[i_correct];
      if (!isfinite(loss)) {
        st = lt_errorf(err, LT_ERR_INVALID,
                       "training loss became %g at step %lld; lower the learning rate",
                       loss, (long long)m.step);
        goto done;
      }
      double lr = lt_schedule_lr(&sched, m.step);
      if ((st = lt_optim_step(opt, gptr, (float)lr, err))) goto done;
      m.step++;
      m.epoch_loss_sum += loss * (double)lb.global_n;
      m.epoch_correct += t.classify ? llround(acc * (double)lb.global_n) : 0;
      m.epoch_seen += lb.global_n;
      rank_sum[rank] += n;
      if (n > rank_max[rank]) rank_max[rank] = n;
      double dt = lt_now() - t0;
      epoch_time += dt;
      epoch_samples += lb.global_n;
      epoch_steps++;
      lt_train_progress p = {.epoch = m.epoch, .epochs = c->epochs, .step = m.step,
                             .total_steps = total, .epoch_step = m.epoch_step + 1,
                             .steps_per_epoch = spe, .loss = loss,
                             .accuracy = t.classify ? acc : NAN, .lr = lr,
                             .samples_per_s = dt > 0 ? lb.global_n / dt : 0, .val_loss = NAN,
                             .val_accuracy = NAN};
      lt_mem_get_stats(&p.mem);
      int stop = c->on_step && c->on_step(c->user, &p);
      /* a stop seen by one rank (a signal arrives at different times) stops all of them */
      if (multi) stop = lt_loader_agree(stop ? LT_ERR_CANCELLED : LT_OK, err) != LT_OK;
      if ((st = loop_step_end(c, g, opt, NULL, &m, stop, rank, multi, err))) goto done;
    }
    train_time += epoch_time;
    train_samples += epoch_samples;
    lt_train_loader_epoch le;
    loop_loader_epoch(ld, &at_start, epoch_time, rank_sum, rank_max, epoch_steps, scratch,
                      rank_mean, rank_max_all, &le);
    r->train_loss = m.epoch_seen ? m.epoch_loss_sum / m.epoch_seen : NAN;
    r->train_accuracy = t.classify && m.epoch_seen ? (double)m.epoch_correct / m.epoch_seen : NAN;
    lt_train_progress p = {.epoch = m.epoch, .epochs = c->epochs, .step = m.step,
                           .total_steps = total, .epoch_step = m.epoch_step,
                           .steps_per_epoch = spe, .loss = r->train_loss,
                           .accuracy = r->train_accuracy,
                           .lr = lt_schedule_lr(&sched, m.step ? m.step - 1 : 0),
                           .samples_per_s = le.samples_per_s, .val_loss = NAN,
                           .val_accuracy = NAN, .loader = &le};
    /* validation on rank 0 only: it reports; the others would compute the same numbers */
    if (c->val && rank == 0) {
      lt_eval_result ev;
      st = lt_evaluate(g, be, c->val, &c->batch.norm, (int)local_max, &ev, err);
      if (!st) {
        p.val_loss = r->val_loss = ev.loss;
        p.val_accuracy = r->val_accuracy = ev.accuracy;
      }
    }
    if (multi) st = lt_loader_agree(st, err);
    if (st) goto done;
    lt_mem_get_stats(&p.mem);
    r->epochs = m.epoch + 1;
    int stop = c->on_epoch && c->on_epoch(c->user, &p);
    if (multi) stop = lt_loader_agree(stop ? LT_ERR_CANCELLED : LT_OK, err) != LT_OK;
    lt_ckpt_meta next = m;
    next.epoch = m.epoch + 1;
    next.epoch_step = next.epoch_seen = next.epoch_correct = 0;
    next.epoch_loss_sum = 0;
    if ((st = loop_checkpoint_rank0(c, g, opt, &next, rank, multi, err))) goto done;
    if (stop) {
      st = lt_errorf(err, LT_ERR_CANCELLED, "training cancelled after epoch %lld",
                     (long long)m.epoch + 1);
      goto done;
    }
    m.epoch_step = m.epoch_seen = m.epoch_correct = 0;
    m.epoch_loss_sum = 0;
  }
  if (r->epochs == 0) r->epochs = m.epoch; /* resumed after the end: nothing trained */
  r->steps = m.step;
  r->samples_per_s = train_time > 0 ? train_samples / train_time : 0;
  lt_mem_get_stats(&r->mem);
  lt_loader_get_stats(ld, &r->loader);
  double sums[6] = {(double)r->loader.samples, (double)r->loader.hits,
                    (double)r->loader.storage_bytes, (double)r->loader.storage_requests,
                    r->loader.stall_s, r->loader.total_s};
  if (multi) lt_loader_sum(sums, 6);
  r->loader.samples = (int64_t)sums[0];
  r->loader.hits = (int64_t)sums[1];
  r->loader.storage_bytes = (int64_t)sums[2];
  r->loader.storage_requests = (int64_t)sums[3];
  r->loader.stall_s = sums[4];
  r->loader.total_s = sums[5];
  r->loader_ranks = P;
done:
  loop_batch_free(&b);
  loop_exec_cache_free(&cache);
  lt_optim_free(opt);
  lt_free(LT_MEM_GRADIENTS, packed, n_packed * sizeof(float));
  lt_free(LT_MEM_OTHER, rank_max_all, (size_t)P * sizeof(int64_t));
  lt_free(LT_MEM_OTHER, rank_max, (size_t)P * sizeof(int64_t));
  lt_free(LT_MEM_OTHER, rank_sum, (size_t)P * sizeof(int64_t));
  lt_free(LT_MEM_OTHER, rank_mean, (size_t)P * sizeof(double));
  lt_free(LT_MEM_OTHER, scratch, (size_t)(6 + 2 * P) * sizeof(double));
  lt_free(LT_MEM_OTHER, off, slots * sizeof *off);
  lt_free(LT_MEM_OTHER, gview, slots * sizeof *gview);
  lt_free(LT_MEM_OTHER, gptr, slots * sizeof *gptr);
  lt_free(LT_MEM_OTHER, params, slots * sizeof *params);
  lt_free(LT_MEM_OTHER, ids, slots * sizeof *ids);
  return st;
}
