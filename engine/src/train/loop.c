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

/* Forward one staged batch; outputs land in b->out. */
static lt_status loop_forward(lt_exec *ex, lt_backend *be, loop_batch *b, lt_err *err) {
  lt_status st = be->vt->to_device(be, lt_exec_input(ex, 0)->data, b->x,
                                   (size_t)b->n * b->in_per * sizeof(float), err);
  if (!st) st = lt_exec_forward(ex, err);
  if (!st)
    st = be->vt->to_host(be, b->out, lt_exec_output(ex, 0)->data,
                         (size_t)b->n * b->k * sizeof(float), err);
  return st;
}

/* Summed loss over the first n_valid rows (and their correct count); the gradient of the mean
 * loss over the batch goes into b->dout when want_grad. */
static double loop_loss(const loop_task *t, loop_batch *b, int n_valid, int want_grad,
                        int64_t *correct) {
  if (t->classify) {
    return lt_cpu_softmax_xent(n_valid, t->k, b->out, b->labels, 1.0f / (float)n_valid,
                               want_grad ? b->dout : NULL, correct);
  }
  /* MSE as torch.nn.MSELoss: mean over every element; reported per sample as that mean. */
  size_t count = (size_t)n_valid * (size_t)t->k;
  double sum = lt_cpu_mse(count, b->out, b->targets, 1.0f / (float)count,
                          want_grad ? b->dout : NULL);
  return sum / t->k;
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
    if (!st) st = loop_forward(ex, be, &b, err);
    if (!st) {
      int64_t c = 0;
      loss += loop_loss(&t, &b, valid, 0, &c);
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

static lt_status loop_checkpoint(const lt_train_config *c, const lt_graph *g, const lt_optim *o,
                                 const lt_ckpt_meta *m, lt_err *err) {
  if (!c->checkpoint_path) return LT_OK;
  lt_status st = lt_ckpt_save(c->checkpoint_path, g, o, m, err);
  if (st) lt_err_prefix(err, "writing checkpoint");
  return st;
}

lt_status lt_train_run(lt_graph *g, lt_backend *be, const lt_train_config *c, lt_train_result *r,
                       lt_err *err) {
  loop_task t;
  lt_status st = loop_check_config(c, err);
  if (!st) st = loop_task_make(g, c->train, &t, err);
  if (!st && c->val) st = loop_task_make(g, c->val, &(loop_task){0}, err);
  if (st) return st;
  if (be->device >= 0)
    return lt_errorf(err, LT_ERR_UNSUPPORTED,
                     "training on %s needs device-side optimizer updates, which this build lacks; "
                     "train with device cpu",
                     be->vt->name);
  const int B = c->batch_size;
  const int64_t spe = c->train->n / B;
  int64_t total = c->epochs * spe;
  if (c->max_steps > 0 && c->max_steps < total) total = c->max_steps;
  lt_schedule sched = c->sched;
  if (sched.total_steps == 0) sched.total_steps = total;
  if ((st = lt_schedule_check(&sched, err))) return st;

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
  lt_ckpt_meta m = c->meta;
  m.seed = c->seed;
  m.epoch = m.step = m.epoch_step = m.epoch_seen = m.epoch_correct = 0;
  m.epoch_loss_sum = 0;
  if (c->resume_from) {
    lt_ckpt_meta saved;
    if ((st = lt_ckpt_load(c->resume_from, g, opt, &saved, err))) goto done;
    if (saved.seed != c->seed) {
      st = lt_errorf(err, LT_ERR_INVALID,
                     "checkpoint %s was written by a run with seed %llu, this run has seed %llu; "
                     "resume with the same seed",
                     c->resume_from, (unsigned long long)saved.seed,
                     (unsigned long long)c->seed);
      goto done;
    }
    m.epoch = saved.epoch;
    m.step = saved.step;
    m.epoch_step = saved.epoch_step;
    m.epoch_loss_sum = saved.epoch_loss_sum;
    m.epoch_correct = saved.epoch_correct;
    m.epoch_seen = saved.epoch_seen;
  }
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
  if ((st = loop_batch_alloc(&b, B, &t, err))) goto done;

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
      if (!st) st = loop_forward(ex, be, &b, err);
      if (st) goto done;
      int64_t correct = 0;
      double loss = loop_loss(&t, &b, B, 1, &correct);
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
      int ckpt_due = c->checkpoint_every > 0 && m.step % c->checkpoint_every == 0;
      if (ckpt_due || stop) {
        lt_ckpt_meta saved = m;
        saved.epoch_step = m.epoch_step + 1;
        if ((st = loop_checkpoint(c, g, opt, &saved, err))) goto done;
      }
      if (stop) {
        st = lt_errorf(err, LT_ERR_CANCELLED, "training cancelled at step %lld",
                       (long long)m.step);
        goto done;
      }
    }
    train_time += epoch_time;
    train_samples += epoch_samples;
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
