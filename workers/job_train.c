/* workers/job_train.c — the `train` job kind: reads the spec (schema/jobs/train.json), builds or
 * loads the model, loads the splits, runs lt_train_run with events per step and per epoch, and
 * returns the result summary. Checkpoints go to OUT/checkpoint.h5; when that file already exists
 * (the same job run again after a crash or kill -9) the run resumes from it and ends where an
 * uninterrupted run ends. Artifacts: the final checkpoint and the trained model as model.onnx.
 *
 * With a `loader` object the training split is not read into memory: the clairvoyant loader
 * (lathe/loader.h) reads batches straight from the file, on every MPI rank when the worker runs the
 * job under `mpirun -np ranks`; rank 0 alone prints events and writes the checkpoint, and the result
 * adds loader.* figures summed over ranks. `activation_compression` (issue 8) becomes the stash
 * policy lt_train_config.stash, with its metrics emitted from the step callback and its report
 * added to the result (the jt_ac_* functions below). */
#include <hdf5.h>
#include <math.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "job.h"
#include "lathe/actcomp.h"
#include "lathe/backend.h"
#include "lathe/config.h"
#include "lathe/onnx.h"
#include "lathe/train.h"

#if LATHE_HAVE_MPI
#include <mpi.h>
#endif

/* Spec accessors: the validator has filled defaults, so a missing value is a schema bug; the
 * fallback keeps the job safe if it ever happens. */
static double jt_num(const cJSON *obj, const char *key, double fallback) {
  const cJSON *v = obj ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;
  return cJSON_IsNumber(v) ? v->valuedouble : fallback;
}

static const char *jt_str(const cJSON *obj, const char *key, const char *fallback) {
  const cJSON *v = obj ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;
  return cJSON_IsString(v) ? v->valuestring : fallback;
}

static const cJSON *jt_obj(const cJSON *obj, const char *key) {
  return cJSON_GetObjectItemCaseSensitive(obj, key);
}

/* ---- activation compression (specs/actcomp.md) --------------------------------------------- */

int job_train_exit_code(lt_status st); /* below */

/* The stash policy of a run and what its metrics need. */
typedef struct jt_ac {
  lt_ac_stash *st;    /* owned; NULL when activation_compression.mode is off */
  const lt_graph *g;  /* borrowed: node names for metric keys and the result */
  int window;         /* metrics every this many steps (the controller's update window) */
  int exact_steps;    /* adaptive: the first window when it runs exact (initial_eb 0); the
                         report's peaks restart after it */
  int sample_every;   /* steps on which the stash measured observed/predicted dW error */
  int64_t step0;      /* optimizer steps before the stash's first (a resumed run starts later):
                         the stash counts its own steps, the result reports the run's; -1 unset */
} jt_ac;

/* spec.activation_compression → lt_ac_config. Returns the mode (LT_AC_OFF: no policy at all, so
 * saved tensors stay zero-copy in their forward buffers). */
static lt_ac_mode jt_ac_config(const cJSON *spec, lt_ac_config *cfg) {
  const cJSON *a = jt_obj(spec, "activation_compression");
  const char *mode = jt_str(a, "mode", "off");
  *cfg = lt_ac_config_default();
  cfg->mode = !strcmp(mode, "fixed")      ? LT_AC_FIXED
              : !strcmp(mode, "relative") ? LT_AC_RELATIVE
              : !strcmp(mode, "adaptive") ? LT_AC_ADAPTIVE
                                          : LT_AC_OFF;
  cfg->eb = jt_num(a, "eb", cfg->eb);
  cfg->rel = jt_num(a, "relative", cfg->rel);
  cfg->rho = jt_num(a, "rho", cfg->rho);
  cfg->window = (int)jt_num(a, "window", cfg->window);
  cfg->smoothing = jt_num(a, "smoothing", cfg->smoothing);
  cfg->eb_min = jt_num(a, "eb_min", cfg->eb_min);
  cfg->eb_max = jt_num(a, "eb_max", cfg->eb_max);
  const cJSON *bn = jt_obj(a, "bn");
  cfg->bn_mode = !strcmp(jt_str(bn, "mode", "exact"), "lossy") ? LT_AC_BN_LOSSY : LT_AC_BN_EXACT;
  cfg->bn_eb = jt_num(bn, "eb", cfg->bn_eb);
  cfg->initial_eb = jt_num(a, "initial_eb", cfg->initial_eb);
  const cJSON *z = jt_obj(a, "zstd");
  if (cJSON_IsBool(z) && !cJSON_IsTrue(z)) cfg->codec.zstd_level = 0;
  cfg->sample_every = (int)jt_num(a, "sample_every", cfg->sample_every);
  return cfg->mode;
}

/* Creates the policy for a spec that asks for one. 0, or an exit status with job->error set. */
static int jt_ac_open(job_ctx *job, const cJSON *spec, const lt_graph *g, jt_ac *ac) {
  lt_ac_config cfg;
  memset(ac, 0, sizeof *ac);
  if (jt_ac_config(spec, &cfg) == LT_AC_OFF) return JOB_EXIT_OK;
  lt_err err = {0};
  if (!(ac->st = lt_ac_stash_new(&cfg, &err)))
    return job_fail(job, job_train_exit_code(err.status), "$.spec.activation_compression: %s",
                    err.msg);
  ac->g = g;
  ac->step0 = -1;
  ac->window = cfg.window; /* the schema keeps it >= 1 in every mode */
  /* adaptive with initial_eb 0: the exact first window, whose peak the report leaves out */
  ac->exact_steps = cfg.mode == LT_AC_ADAPTIVE && cfg.initial_eb == 0 ? cfg.window : 0;
  ac->sample_every = cfg.sample_every;
  return JOB_EXIT_OK;
}

/* A node's name as a metric-key segment: the server takes [A-Za-z0-9._-] only (ONNX names carry
 * slashes and colons). */
static void jt_ac_key(char *key, size_t cap, const char *prefix, const lt_graph *g, int node) {
  const char *name = node < g->n_nodes && g->nodes[node].name ? g->nodes[node].name : "node";
  int n = snprintf(key, cap, "%s.", prefix);
  size_t i = n > 0 && (size_t)n < cap ? (size_t)n : 0;
  for (const char *c = name; *c && i + 1 < cap && i < 120; c++, i++)
    key[i] = (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
                     *c == '.' || *c == '_' || *c == '-'
                 ? *c
                 : '_';
  key[i] = 0;
}

/* After every optimizer step: advances the controller, and every window (and on sampled steps)
 * emits per-layer bounds, saved bytes and the observed/predicted gradient error. */
static void jt_ac_step(jt_ac *ac, job_ctx *job, int64_t step) {
  if (!ac->st) return;
  if (ac->step0 < 0) ac->step0 = step - 1;
  /* The stash samples on its own step count, which step_end is about to advance. */
  lt_ac_report rep;
  lt_ac_stash_report(ac->st, &rep);
  const int sampled = ac->sample_every > 0 && rep.step % ac->sample_every == 0;
  lt_ac_stash_step_end(ac->st);
  if (rep.step + 1 == ac->exact_steps) lt_ac_stash_reset_peaks(ac->st);
  const int window_end = step % ac->window == 0;
  if (!window_end && !sampled) return;
  lt_ac_stash_report(ac->st, &rep);
  char key[160];
  for (int i = 0; i < rep.n_layers; i++) {
    const lt_ac_layer_report *l = &rep.layers[i];
    if (l->kind != LT_SAVE_WEIGHT_INPUT && l->kind != LT_SAVE_BN_INPUT) continue;
    if (window_end) {
      jt_ac_key(key, sizeof key, "actcomp.eb", ac->g, l->node);
      job_emit_metric(job, key, step, l->eb);
    }
    if (sampled && l->n_samples > 0 && l->last_predicted_sigma > 0) {
      jt_ac_key(key, sizeof key, "actcomp.obs_pred", ac->g, l->node);
      job_emit_metric(job, key, step, l->last_observed_sigma / l->last_predicted_sigma);
    }
  }
  if (window_end) {
    job_emit_metric(job, "actcomp.saved_bytes.before", step, (double)rep.bytes_dense);
    job_emit_metric(job, "actcomp.saved_bytes.after", step, (double)rep.bytes_held);
  }
}

static const char *jt_ac_kind_name(lt_save_kind k) {
  switch (k) {
  case LT_SAVE_WEIGHT_INPUT: return "weight_input";
  case LT_SAVE_RELU_OUTPUT: return "relu_mask";
  case LT_SAVE_POOL_ARGMAX: return "pool_argmax";
  case LT_SAVE_BN_INPUT: return "bn_input";
  case LT_SAVE_EXACT: break;
  }
  return "exact";
}

/* result.activation_compression: totals of the last step, peaks within a step over the run
 * (adaptive: after its exact first window; memory_peak_bytes.activations_saved has the whole
 * run's), and per layer the bytes, the bound's history and the measured gradient error. */
static void jt_ac_result(const jt_ac *ac, const cJSON *spec, cJSON *res) {
  if (!ac->st) return;
  lt_ac_report rep;
  lt_ac_stash_report(ac->st, &rep);
  const cJSON *a = jt_obj(spec, "activation_compression");
  cJSON *o = cJSON_AddObjectToObject(res, "activation_compression");
  cJSON_AddStringToObject(o, "mode", jt_str(a, "mode", "off"));
  cJSON_AddNumberToObject(o, "ratio", rep.bytes_held ? (double)rep.bytes_dense / rep.bytes_held : 0);
  cJSON_AddNumberToObject(o, "saved_bytes_before", (double)rep.bytes_dense);
  cJSON_AddNumberToObject(o, "saved_bytes_after", (double)rep.bytes_held);
  cJSON_AddNumberToObject(o, "peak_saved_bytes_before", (double)rep.peak_dense);
  cJSON_AddNumberToObject(o, "peak_saved_bytes_after", (double)rep.peak_held);
  cJSON_AddNumberToObject(o, "peak_ratio",
                          rep.peak_held ? (double)rep.peak_dense / rep.peak_held : 0);
  const char *base = jt_str(a, "baseline_job", NULL);
  if (base) cJSON_AddStringToObject(o, "baseline_job", base);
  cJSON *layers = cJSON_AddArrayToObject(o, "layers");
  for (int i = 0; i < rep.n_layers; i++) {
    const lt_ac_layer_report *l = &rep.layers[i];
    cJSON *x = cJSON_CreateObject();
    const lt_node *nd = l->node < ac->g->n_nodes ? &ac->g->nodes[l->node] : NULL;
    cJSON_AddStringToObject(x, "name", nd && nd->name ? nd->name : "?");
    cJSON_AddStringToObject(x, "op", nd ? lt_op_name(nd->op) : "?");
    cJSON_AddStringToObject(x, "kind", jt_ac_kind_name(l->kind));
    cJSON_AddNumberToObject(x, "bytes_before", (double)l->bytes_dense);
    cJSON_AddNumberToObject(x, "bytes_after", (double)l->bytes_held);
    cJSON_AddNumberToObject(x, "eb", l->eb);
    cJSON *h = cJSON_AddArrayToObject(x, "eb_history");
    for (int k = 0; k < l->n_history; k++) {
      cJSON *pt = cJSON_CreateObject();
      cJSON_AddNumberToObject(pt, "step", (double)(l->eb_step[k] + (ac->step0 > 0 ? ac->step0 : 0)));
      cJSON_AddNumberToObject(pt, "eb", l->eb_history[k]);
      cJSON_AddItemToArray(h, pt);
    }
    if (l->n_samples) {
      cJSON *g = cJSON_AddObjectToObject(x, "grad_error");
      cJSON_AddNumberToObject(g, "samples", l->n_samples);
      cJSON_AddNumberToObject(g, "observed_sigma", l->last_observed_sigma);
      cJSON_AddNumberToObject(g, "predicted_sigma", l->last_predicted_sigma);
      cJSON_AddNumberToObject(g, "mean_ratio", l->mean_ratio);
    }
    cJSON_AddItemToArray(layers, x);
  }
}

/* ---- callbacks ---------------------------------------------------------------------------- */

/* What the callbacks need. */
typedef struct jt_state {
  job_ctx *job;
  double started;
  int64_t last_progress_step;
  cJSON *loader_epochs; /* with a loader: one object per epoch for the result, owned */
  jt_ac ac;
} jt_state;

static void jt_emit_memory(job_ctx *job, int64_t step, const lt_mem_stats *mem) {
  static const lt_mem_cat cats[] = {LT_MEM_WEIGHTS, LT_MEM_GRADIENTS, LT_MEM_OPTIMIZER,
                                    LT_MEM_SAVED, LT_MEM_WORKSPACE, LT_MEM_ACTIVATIONS,
                                    LT_MEM_DATA};
  for (size_t i = 0; i < sizeof cats / sizeof cats[0]; i++) {
    char key[64];
    snprintf(key, sizeof key, "memory.%s", lt_mem_cat_name(cats[i]));
    job_emit_metric(job, key, step, (double)mem->current[cats[i]]);
  }
}

static int jt_on_step(void *user, const lt_train_progress *p) {
  jt_state *s = user;
  jt_ac_step(&s->ac, s->job, p->step);
  job_emit_metric(s->job, "train.loss", p->step, p->loss);
  if (!isnan(p->accuracy)) job_emit_metric(s->job, "train.accuracy", p->step, p->accuracy);
  job_emit_metric(s->job, "lr", p->step, p->lr);
  job_emit_metric(s->job, "throughput.samples_per_s", p->step, p->samples_per_s);
  if (p->step == 1 || p->step % 50 == 0) jt_emit_memory(s->job, p->step, &p->mem);
  /* Progress a few times per epoch, not every step. */
  int64_t every = p->total_steps / 100 > 1 ? p->total_steps / 100 : 1;
  if (p->step - s->last_progress_step >= every) {
    s->last_progress_step = p->step;
    double f = (double)p->step / (double)p->total_steps, el = lt_now() - s->started;
    char msg[128];
    snprintf(msg, sizeof msg, "epoch %lld/%lld, step %lld/%lld", (long long)p->epoch + 1,
             (long long)p->epochs, (long long)p->step, (long long)p->total_steps);
    job_emit_progress(s->job, f, msg, f > 0 ? el / f * (1 - f) : -1);
  }
  return job_should_stop(s->job);
}

/* ---- the loader ---------------------------------------------------------------------------- */

/* Under an MPI launcher (mpirun sets these for every rank it starts), MPI must be initialised
 * before the loader asks for its rank; a plain `lathe run` stays a single process without MPI. */
static int jt_mpi_launched(void) {
  static const char *const vars[] = {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", NULL};
  for (const char *const *v = vars; *v; v++)
    if (getenv(*v) && *getenv(*v)) return 1;
  return 0;
}

/* Returns 1 when this call initialised MPI (and jt_mpi_end must finalise it). */
static int jt_mpi_begin(void) {
#if LATHE_HAVE_MPI
  int init = 0;
  MPI_Initialized(&init);
  if (!init && jt_mpi_launched() && MPI_Init(NULL, NULL) == MPI_SUCCESS) return 1;
#endif
  return 0;
}

static void jt_mpi_end(int began) {
#if LATHE_HAVE_MPI
  if (began) MPI_Finalize();
#else
  (void)began;
#endif
}

/* The training split's geometry without reading its samples: /split/x must be (N, C, H, W). The
 * loader checks the bytes per sample against the model; this gives the zoo its input size and
 * the schedule its steps per epoch. */
static int jt_loader_geometry(job_ctx *job, const char *path, const char *split, lt_dataset *geo) {
  char name[64];
  snprintf(name, sizeof name, "/%s/x", split);
  H5E_auto2_t old_fn;
  void *old_data;
  H5Eget_auto2(H5E_DEFAULT, &old_fn, &old_data);
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  int rc = JOB_EXIT_OK, nd = -1;
  hsize_t dims[8] = {0};
  hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
  hid_t d = f >= 0 ? H5Dopen2(f, name, H5P_DEFAULT) : -1;
  hid_t sp = d >= 0 ? H5Dget_space(d) : -1;
  if (sp >= 0) nd = H5Sget_simple_extent_ndims(sp);
  if (nd >= 0 && nd <= 8) H5Sget_simple_extent_dims(sp, dims, NULL);
  if (f < 0)
    rc = job_fail(job, JOB_EXIT_BAD_INPUT, "cannot open %s as HDF5; check the dataset file", path);
  else if (d < 0)
    rc = job_fail(job, JOB_EXIT_BAD_INPUT, "%s has no dataset %s; $.spec.splits.train names the split",
                  path, name);
  else if (nd != 4)
    rc = job_fail(job, JOB_EXIT_BAD_INPUT,
                  "%s%s has %d dims; the loader needs images (N, C, H, W)", path, name, nd);
  if (sp >= 0) H5Sclose(sp);
  if (d >= 0) H5Dclose(d);
  if (f >= 0) H5Fclose(f);
  H5Eset_auto2(H5E_DEFAULT, old_fn, old_data);
  if (rc) return rc;
  memset(geo, 0, sizeof *geo);
  snprintf(geo->split, sizeof geo->split, "%s", split);
  geo->n = (int64_t)dims[0];
  geo->c = (int)dims[1];
  geo->h = (int)dims[2];
  geo->w = (int)dims[3];
  return JOB_EXIT_OK;
}

/* $.spec.loader → loader options for the train split (global batch and epochs as the loop's). */
static int jt_loader_opts(job_ctx *job, const cJSON *lo, const char *path, const char *split,
                          const lt_train_config *c, lt_loader_opts *o, char *names, size_t cap) {
  lt_err err = {0};
  *o = lt_loader_opts_default();
  o->path = path;
  int n = snprintf(names, cap, "/%s/x", split);
  snprintf(names + n + 1, cap - (size_t)n - 1, "/%s/y", split);
  o->x_name = names;
  o->y_name = names + n + 1;
  o->global_batch = c->batch_size;
  o->epochs = (int)c->epochs;
  o->seed = c->seed;
  o->buffer_fraction = jt_num(lo, "buffer_fraction", 0.5);
  o->prefetch_steps = (int)jt_num(lo, "prefetch_steps", 2);
  o->io_threads = (int)jt_num(lo, "io_threads", 2);
  o->o_direct = cJSON_IsTrue(jt_obj(lo, "o_direct"));
  o->merge_gap = (int64_t)jt_num(lo, "merge_gap", 64 << 10);
  o->merge_max = (int64_t)jt_num(lo, "merge_max", 4 << 20);
  if (lt_loader_policy_parse(jt_str(lo, "policy", "static"), &o->policy, &err) ||
      lt_loader_balance_parse(jt_str(lo, "balance", "cost"), &o->balance, &err))
    return job_fail(job, JOB_EXIT_BAD_INPUT, "$.spec.loader: %s", err.msg);
  return JOB_EXIT_OK;
}

/* Per-epoch loading figures: metrics (step = epoch) and one object of the result's loader.epochs. */
static void jt_loader_on_epoch(jt_state *s, const lt_train_progress *p) {
  const lt_train_loader_epoch *le = p->loader;
  if (!le) return;
  int64_t e = p->epoch + 1;
  job_emit_metric(s->job, "loader.hit_rate", e, le->hit_rate);
  job_emit_metric(s->job, "loader.storage_bytes", e, (double)le->storage_bytes);
  job_emit_metric(s->job, "loader.samples_per_s", e, le->samples_per_s);
  job_emit_metric(s->job, "loader.stall_fraction", e, le->stall_fraction);
  if (!s->loader_epochs) s->loader_epochs = cJSON_CreateArray();
  cJSON *o = cJSON_CreateObject();
  cJSON_AddNumberToObject(o, "epoch", (double)e);
  cJSON_AddNumberToObject(o, "samples_per_s", le->samples_per_s);
  cJSON_AddNumberToObject(o, "hit_rate", le->hit_rate);
  cJSON_AddNumberToObject(o, "storage_bytes", (double)le->storage_bytes);
  cJSON_AddNumberToObject(o, "storage_requests", (double)le->storage_requests);
  cJSON_AddNumberToObject(o, "stall_fraction", le->stall_fraction);
  cJSON *mean = cJSON_AddArrayToObject(o, "rank_batch_mean");
  cJSON *most = cJSON_AddArrayToObject(o, "rank_batch_max");
  for (int r = 0; r < le->n_ranks; r++) {
    cJSON_AddItemToArray(mean, cJSON_CreateNumber(le->rank_batch_mean[r]));
    cJSON_AddItemToArray(most, cJSON_CreateNumber((double)le->rank_batch_max[r]));
  }
  cJSON_AddItemToArray(s->loader_epochs, o);
}

/* result.loader: the run's loading figures over all ranks, the options and the epochs. */
static void jt_loader_result(cJSON *res, const lt_train_result *r, const lt_loader_opts *o,
                             jt_state *s) {
  const lt_loader_stats *ls = &r->loader;
  cJSON *l = cJSON_AddObjectToObject(res, "loader");
  cJSON_AddStringToObject(l, "policy", lt_loader_policy_name(o->policy));
  cJSON_AddStringToObject(l, "balance", lt_loader_balance_name(o->balance));
  cJSON_AddNumberToObject(l, "buffer_fraction", o->buffer_fraction);
  cJSON_AddNumberToObject(l, "ranks", r->loader_ranks);
  cJSON_AddNumberToObject(l, "hit_rate", ls->samples ? (double)ls->hits / (double)ls->samples : 0);
  cJSON_AddNumberToObject(l, "storage_bytes", (double)ls->storage_bytes);
  cJSON_AddNumberToObject(l, "storage_requests", (double)ls->storage_requests);
  cJSON_AddNumberToObject(l, "stall_fraction", ls->total_s > 0 ? ls->stall_s / ls->total_s : 0);
  cJSON_AddNumberToObject(l, "batch_imbalance", ls->batch_imbalance);
  cJSON_AddItemToObject(l, "epochs", s->loader_epochs ? s->loader_epochs : cJSON_CreateArray());
  s->loader_epochs = NULL;
}

static int jt_on_epoch(void *user, const lt_train_progress *p) {
  jt_state *s = user;
  jt_loader_on_epoch(s, p);
  int64_t e = p->epoch + 1;
  if (!isnan(p->val_loss)) job_emit_metric(s->job, "val.loss", e, p->val_loss);
  if (!isnan(p->val_accuracy)) job_emit_metric(s->job, "val.accuracy", e, p->val_accuracy);
  jt_emit_memory(s->job, p->step, &p->mem);
  job_emit_log(s->job, "info",
               "epoch %lld/%lld: train loss %.4f acc %.4f, val loss %.4f acc %.4f, %.0f samples/s",
               (long long)e, (long long)p->epochs, p->loss, p->accuracy, p->val_loss,
               p->val_accuracy, p->samples_per_s);
  return job_should_stop(s->job);
}

/* Spec → optimizer, schedule (epoch counts turned into steps) and batch options. */
static int jt_config(job_ctx *job, const cJSON *spec, const lt_dataset *train,
                     lt_train_config *c) {
  c->epochs = (int64_t)jt_num(spec, "epochs", 10);
  c->batch_size = (int)jt_num(spec, "batch_size", 128);
  c->max_steps = (int64_t)jt_num(spec, "max_steps", 0);
  c->checkpoint_every = (int64_t)jt_num(spec, "checkpoint_every", 0);
  c->seed = (uint64_t)jt_num(spec, "seed", 1);
  if (c->batch_size > train->n)
    return job_fail(job, JOB_EXIT_BAD_INPUT,
                    "$.spec.batch_size %d exceeds the %lld samples of split %s", c->batch_size,
                    (long long)train->n, train->split);
  const int64_t spe = train->n / c->batch_size;

  const cJSON *o = jt_obj(spec, "optimizer");
  int adamw = !strcmp(jt_str(o, "kind", "sgd"), "adamw");
  c->optim = lt_optim_config_default(adamw ? LT_OPTIM_ADAMW : LT_OPTIM_SGD);
  c->optim.weight_decay = (float)jt_num(spec, "weight_decay", 5e-4);
  c->optim.momentum = adamw ? 0.0f : (float)jt_num(o, "momentum", 0.9);
  c->optim.dampening = adamw ? 0.0f : (float)jt_num(o, "dampening", 0);
  c->optim.nesterov = !adamw && cJSON_IsTrue(jt_obj(o, "nesterov"));
  c->optim.beta1 = (float)jt_num(o, "beta1", 0.9);
  c->optim.beta2 = (float)jt_num(o, "beta2", 0.999);
  c->optim.eps = (float)jt_num(o, "eps", 1e-8);

  const cJSON *s = jt_obj(spec, "schedule");
  const char *kind = jt_str(s, "kind", "cosine");
  lt_schedule *sc = &c->sched;
  sc->kind = !strcmp(kind, "step")       ? LT_SCHED_STEP
             : !strcmp(kind, "cosine")   ? LT_SCHED_COSINE
             : !strcmp(kind, "onecycle") ? LT_SCHED_ONECYCLE
                                         : LT_SCHED_CONSTANT;
  sc->lr = jt_num(spec, "lr", 0.1);
  sc->warmup_steps = (int64_t)llround(jt_num(s, "warmup_epochs", 0) * (double)spe);
  sc->warmup_start_factor = jt_num(s, "warmup_start_factor", 0.1);
  sc->step_size = (int64_t)llround(jt_num(s, "step_epochs", 30) * (double)spe);
  if (sc->step_size < 1) sc->step_size = 1;
  sc->gamma = jt_num(s, "gamma", 0.1);
  sc->min_lr = jt_num(s, "min_lr", 0);
  sc->pct_start = jt_num(s, "pct_start", 0.3);
  sc->div_factor = jt_num(s, "div_factor", 25);
  sc->final_div_factor = jt_num(s, "final_div_factor", 1e4);
  sc->total_steps = 0; /* the loop fills in epochs * steps per epoch, or max_steps */

  const cJSON *a = jt_obj(spec, "augmentation");
  c->batch.pad = (int)jt_num(a, "crop_padding", 0);
  c->batch.flip = cJSON_IsTrue(jt_obj(a, "flip"));
  const cJSON *nm = jt_obj(spec, "normalisation");
  if (nm) {
    const cJSON *mean = jt_obj(nm, "mean"), *sd = jt_obj(nm, "std");
    int n = cJSON_GetArraySize(mean);
    if (n != cJSON_GetArraySize(sd) || n > LT_DATA_MAX_CH)
      return job_fail(job, JOB_EXIT_BAD_INPUT,
                      "$.spec.normalisation: mean and std need the same number of values");
    c->batch.norm.n = n;
    for (int i = 0; i < n; i++) {
      c->batch.norm.mean[i] = (float)cJSON_GetArrayItem(mean, i)->valuedouble;
      c->batch.norm.std[i] = (float)cJSON_GetArrayItem(sd, i)->valuedouble;
    }
  }
  return JOB_EXIT_OK;
}

/* lt_status of a failed engine call → exit status: this machine's trouble (memory, disk, a
 * broken invariant, a stop request) is retried; anything else is the caller's input. Shared with
 * `lathe eval` and `lathe data convert`. */
int job_train_exit_code(lt_status st) {
  return st == LT_ERR_NOMEM || st == LT_ERR_INTERNAL || st == LT_ERR_IO || st == LT_ERR_CANCELLED
             ? JOB_EXIT_FAILED
             : JOB_EXIT_BAD_INPUT;
}

static cJSON *jt_result(const lt_train_result *r, const char *ckpt) {
  cJSON *res = cJSON_CreateObject();
  cJSON_AddNumberToObject(res, "epochs", (double)r->epochs);
  cJSON_AddNumberToObject(res, "steps", (double)r->steps);
  cJSON *fin = cJSON_AddObjectToObject(res, "final");
  cJSON_AddNumberToObject(fin, "train_loss", r->train_loss);
  if (!isnan(r->train_accuracy)) cJSON_AddNumberToObject(fin, "train_accuracy", r->train_accuracy);
  if (isnan(r->val_loss)) cJSON_AddNullToObject(fin, "val_loss");
  else cJSON_AddNumberToObject(fin, "val_loss", r->val_loss);
  if (isnan(r->val_accuracy)) cJSON_AddNullToObject(fin, "val_accuracy");
  else cJSON_AddNumberToObject(fin, "val_accuracy", r->val_accuracy);
  cJSON_AddNumberToObject(res, "throughput_samples_per_s", r->samples_per_s);
  cJSON *mem = cJSON_AddObjectToObject(res, "memory_peak_bytes");
  static const struct { const char *key; lt_mem_cat cat; } cats[] = {
      {"weights", LT_MEM_WEIGHTS},         {"gradients", LT_MEM_GRADIENTS},
      {"optimizer", LT_MEM_OPTIMIZER},     {"activations_saved", LT_MEM_SAVED},
      {"workspace", LT_MEM_WORKSPACE},     {"activations", LT_MEM_ACTIVATIONS},
      {"data", LT_MEM_DATA}};
  for (size_t i = 0; i < sizeof cats / sizeof cats[0]; i++)
    cJSON_AddNumberToObject(mem, cats[i].key, (double)r->mem.peak[cats[i].cat]);
  cJSON_AddNumberToObject(mem, "total", (double)r->mem.total_peak);
  cJSON_AddStringToObject(res, "checkpoint", ckpt);
  return res;
}

int job_train_run(job_ctx *job, cJSON **result) {
  const cJSON *spec = job->spec;
  const cJSON *lspec = jt_obj(spec, "loader");
  const int ranks = (int)jt_num(spec, "ranks", 1);
  if (ranks > 1 && !lspec)
    return job_fail(job, JOB_EXIT_BAD_INPUT,
                    "$.spec.ranks is %d but only the loader trains over several ranks; add "
                    "$.spec.loader or set ranks to 1", ranks);
  /* from here on, a rank of a multi-rank job that fails must still meet the others once (the
   * agreement before the loader opens), or they would wait for it forever */
  const int mpi_began = lspec ? jt_mpi_begin() : 0;
  int ld_agreed = 0;
  lt_loader *ld = NULL;
  lt_loader_opts lopts;
  char lnames[80];
  lt_dataset geo;
  lt_dataset *train = NULL, *val = NULL;
  lt_graph *g = NULL;
  jt_state st = {.job = job, .started = lt_now()}; /* before the first goto: done: frees it */
  int rc = JOB_EXIT_OK;
  const char *dpath = job_file(job, "dataset");
  if (!dpath) {
    rc = JOB_EXIT_BAD_INPUT;
    goto done;
  }
  const char *device = job->device ? job->device : jt_str(spec, "device", "cpu");
  lt_train_set_threads((int)jt_num(spec, "threads", 0));

  lt_err err = {0};
  lt_backend *be = lt_backend_get(device, &err);
  if (!be) {
    rc = job_fail(job, JOB_EXIT_BAD_INPUT, "device %s: %s", device, err.msg);
    goto done;
  }

  const cJSON *splits = jt_obj(spec, "splits");
  const char *train_split = jt_str(splits, "train", "train"), *val_split = jt_str(splits, "val", "test");
  const cJSON *model = jt_obj(spec, "model");
  const char *zoo = jt_str(model, "zoo", NULL);
  const char *mref = zoo;
  if (!zoo) {
    const cJSON *f = jt_obj(model, "file");
    mref = cJSON_IsString(f) ? job_resolve_ref(job, f->valuestring) : NULL;
    if (!mref) {
      rc = JOB_EXIT_BAD_INPUT;
      goto done;
    }
  }

  char ckpt[4096];
  if (snprintf(ckpt, sizeof ckpt, "%s/checkpoint.h5", job->out_dir) >= (int)sizeof ckpt) {
    rc = job_fail(job, JOB_EXIT_BAD_INPUT, "output folder path is too long");
    goto done;
  }
  int resume = access(ckpt, R_OK) == 0;

  job_emit_progress(job, 0, "loading data", -1);
  /* with a loader the training samples stay in the file: only the split's geometry is read */
  if (lspec) {
    if ((rc = jt_loader_geometry(job, dpath, train_split, &geo))) goto done;
    if (ranks > geo.n) {
      rc = job_fail(job, JOB_EXIT_BAD_INPUT,
                    "$.spec.ranks %d exceeds the %lld samples of split %s: some ranks would never "
                    "get a sample; use at most %lld ranks", ranks, (long long)geo.n, train_split,
                    (long long)geo.n);
      goto done;
    }
  } else if (!(train = lt_dataset_load(dpath, train_split, NULL, &err))) {
    rc = job_fail(job, job_train_exit_code(err.status), "%s", err.msg);
    goto done;
  }
  const lt_dataset *tr = lspec ? &geo : train;
  if (val_split[0] && !(val = lt_dataset_load(dpath, val_split, NULL, &err))) {
    rc = job_fail(job, job_train_exit_code(err.status), "%s", err.msg);
    goto done;
  }
  lt_zoo_opts zo = {.in_channels = tr->c, .height = tr->h, .width = tr->w,
                    .seed = (uint64_t)jt_num(spec, "seed", 1)};
  int num_classes = (int)jt_num(model, "num_classes", 10);
  if (zoo && !strcmp(zoo, "unet")) zo.out_channels = num_classes;
  else zo.num_classes = num_classes;
  lt_ckpt_meta meta;
  if (!(g = lt_model_load(mref, &zo, NULL, &meta, &err))) {
    rc = job_fail(job, job_train_exit_code(err.status), "%s", err.msg);
    goto done;
  }

  lt_train_config c = lt_train_config_default();
  if ((rc = jt_config(job, spec, tr, &c))) goto done;
  c.train = train;
  c.val = val;
  c.checkpoint_path = ckpt;
  c.resume_from = resume ? ckpt : NULL;
  snprintf(c.meta.model, sizeof c.meta.model, "%s", zoo ? zoo : meta.model);
  c.meta.num_classes = zoo ? num_classes : meta.num_classes;
  if ((rc = jt_ac_open(job, spec, g, &st.ac))) goto done;
  c.stash = st.ac.st ? lt_ac_stash_policy(st.ac.st) : NULL;
  c.on_step = jt_on_step;
  c.on_epoch = jt_on_epoch;
  c.user = &st;
  if (lspec) {
    if ((rc = jt_loader_opts(job, lspec, dpath, train_split, &c, &lopts, lnames, sizeof lnames)))
      goto done;
    ld_agreed = 1;
    if (lt_loader_agree(LT_OK, &err) != LT_OK) {
      rc = job_fail(job, JOB_EXIT_FAILED, "%s", err.msg);
      goto done;
    }
    if (!(ld = lt_loader_open(&lopts, &err))) {
      rc = job_fail(job, job_train_exit_code(err.status), "%s", err.msg);
      goto done;
    }
    c.loader = ld;
    if (lt_loader_n_ranks(ld) != ranks)
      job_emit_log(job, "warn",
                   "$.spec.ranks asks for %d ranks but the job runs on %d (start it with mpirun "
                   "-np %d, as lathe-worker does); the training is the same, only slower or faster",
                   ranks, lt_loader_n_ranks(ld), ranks);
  }
  if (resume) job_emit_log(job, "info", "resuming from %s", ckpt);
  job_emit_log(job, "info", "training %s (%lld parameters, %lld MACs per sample) on %lld samples",
               c.meta.model, (long long)lt_graph_params(g), (long long)lt_graph_macs(g),
               (long long)tr->n);
  lt_train_result r;
  lt_status s = lt_train_run(g, be, &c, &r, &err);
  if (s) {
    rc = job_fail(job, job_train_exit_code(s), "%s", err.msg);
    goto done;
  }
  /* every rank holds the same weights: rank 0 alone writes the files */
  if (!ld || lt_loader_rank(ld) == 0) {
    job_emit_artifact(job, "checkpoint.h5", ckpt);
    char onnx[4200];
    snprintf(onnx, sizeof onnx, "%s/model.onnx", job->out_dir);
    /* The checkpoint is the result that resumes and evaluates; a model the ONNX writer cannot
     * express is reported, not a failed job. */
    if (lt_onnx_save(g, onnx, &err) == LT_OK) job_emit_artifact(job, "model.onnx", onnx);
    else job_emit_log(job, "warn", "model.onnx not written: %s", err.msg);
  }
  job_emit_progress(job, 1, "done", 0);
  *result = jt_result(&r, ckpt);
  if (ld) jt_loader_result(*result, &r, &lopts, &st);
  jt_ac_result(&st.ac, spec, *result);
done:
  /* a rank that failed before the agreement still takes part in it, so the others stop too */
  if (mpi_began && !ld_agreed) lt_loader_agree(LT_ERR_INVALID, &(lt_err){0});
  lt_loader_close(ld);
  cJSON_Delete(st.loader_epochs);
  lt_ac_stash_free(st.ac.st);
  lt_graph_free(g);
  lt_dataset_free(val);
  lt_dataset_free(train);
  jt_mpi_end(mpi_began);
  return rc;
}
