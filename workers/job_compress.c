/* workers/job_compress.c — the `compress` job kind (schema/jobs/compress.json): hardware-aware
 * low-rank compression as in ../shared/specs/compress.md. The phases, each an engine call:
 *   load      the model (zoo, ONNX, checkpoint) and the splits; accuracy and latency before
 *   profile   the latency table: given (latency.table), estimated (latency.roofline), or measured
 *             on this backend with a per-device cache so the next job on this device reuses it
 *   search    lt_compress_search under the target; argmax ranks; re-factorised trained weights
 *   finetune  lt_train_run (cosine schedule) on the compressed model
 *   evaluate  accuracy, whole-model and per-layer latency measured against the prediction
 *   baselines uniform rank ratio and a greedy sensitivity sweep at the same target, each
 *             fine-tuned with the same budget
 * Artifacts: model.onnx, latency_table.json, search_trajectory.json. The latency-table JSON
 * functions are shared with `lathe profile` (workers/cmd_profile.c). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "job.h"
#include "lathe/backend.h"
#include "lathe/compress.h"
#include "lathe/onnx.h"
#include "lathe/train.h"

/* ---- latency tables as JSON (also used by lathe profile) ----------------------------------- */

static cJSON *jc_int_array(const int *v, int n) { return cJSON_CreateIntArray(v, n); }

cJSON *compress_lat_to_json(const lt_lat_table *t) {
  cJSON *j = cJSON_CreateObject();
  cJSON_AddStringToObject(j, "device", t->device);
  cJSON_AddNumberToObject(j, "batch", t->batch);
  cJSON_AddBoolToObject(j, "estimated", t->estimated);
  cJSON_AddNumberToObject(j, "probe_step", t->probe_step);
  cJSON_AddNumberToObject(j, "step", t->step);
  cJSON *es = cJSON_AddArrayToObject(j, "entries");
  for (int i = 0; i < t->n; i++) {
    const lt_lat_entry *e = &t->e[i];
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "kind", e->kind == LT_COMPRESS_LINEAR ? "linear" : "conv");
    cJSON_AddItemToObject(o, "weight", jc_int_array((int[]){e->s, e->c, e->kh, e->kw}, 4));
    cJSON_AddItemToObject(o, "input", jc_int_array((int[]){e->in_h, e->in_w}, 2));
    cJSON_AddItemToObject(o, "stride", jc_int_array(e->stride, 2));
    cJSON_AddItemToObject(o, "pads", jc_int_array(e->pads, 4));
    cJSON_AddItemToObject(o, "dilation", jc_int_array(e->dilation, 2));
    cJSON_AddBoolToObject(o, "bias", e->bias);
    cJSON_AddNumberToObject(o, "dense_ms", e->dense_ms);
    cJSON_AddItemToObject(o, "ranks", jc_int_array(e->ranks, e->n));
    cJSON_AddItemToObject(o, "ms", cJSON_CreateDoubleArray(e->ms, e->n));
    cJSON_AddItemToArray(es, o);
  }
  return j;
}

/* Reads n ints of array key into dst; 0 on success. */
static int jc_ints(const cJSON *o, const char *key, int *dst, int n) {
  const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!cJSON_IsArray(a) || cJSON_GetArraySize(a) != n) return -1;
  for (int i = 0; i < n; i++) {
    const cJSON *v = cJSON_GetArrayItem(a, i);
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > 1 << 20) return -1;
    dst[i] = v->valueint;
  }
  return 0;
}

int compress_lat_from_json(const cJSON *j, lt_lat_table *t, char *why, size_t cap) {
  memset(t, 0, sizeof *t);
  const cJSON *dev = cJSON_GetObjectItemCaseSensitive(j, "device");
  const cJSON *b = cJSON_GetObjectItemCaseSensitive(j, "batch");
  const cJSON *ps = cJSON_GetObjectItemCaseSensitive(j, "probe_step");
  const cJSON *st = cJSON_GetObjectItemCaseSensitive(j, "step");
  const cJSON *es = cJSON_GetObjectItemCaseSensitive(j, "entries");
  if (!cJSON_IsString(dev) || !cJSON_IsNumber(b) || b->valueint < 1 || !cJSON_IsNumber(ps) ||
      ps->valueint < 1 || !cJSON_IsNumber(st) || st->valueint < 1 || !cJSON_IsArray(es)) {
    snprintf(why, cap, "a latency table needs device, batch, probe_step, step and entries; "
                       "make one with lathe profile MODEL --out TABLE.json");
    return -1;
  }
  snprintf(t->device, sizeof t->device, "%s", dev->valuestring);
  t->batch = b->valueint, t->probe_step = ps->valueint, t->step = st->valueint;
  t->estimated = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "estimated"));
  int i = 0;
  const cJSON *o;
  cJSON_ArrayForEach(o, es) {
    lt_lat_entry e = {0};
    int w[4], in[2];
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(o, "dense_ms");
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(o, "ranks");
    const cJSON *ms = cJSON_GetObjectItemCaseSensitive(o, "ms");
    int n = cJSON_GetArraySize(r);
    if (jc_ints(o, "weight", w, 4) || jc_ints(o, "input", in, 2) ||
        jc_ints(o, "stride", e.stride, 2) || jc_ints(o, "pads", e.pads, 4) ||
        jc_ints(o, "dilation", e.dilation, 2) || !cJSON_IsNumber(d) || !cJSON_IsArray(ms) ||
        n > LT_COMPRESS_MAX_CAND || cJSON_GetArraySize(ms) != n || jc_ints(o, "ranks", e.ranks, n)) {
      snprintf(why, cap, "latency table entry %d is malformed (weight[4], input[2], stride[2], "
                         "pads[4], dilation[2], dense_ms, ranks[], ms[] of equal length)", i);
      lt_lat_table_free(t);
      return -1;
    }
    e.s = w[0], e.c = w[1], e.kh = w[2], e.kw = w[3], e.in_h = in[0], e.in_w = in[1];
    /* Tables written before linear layers were profiled hold convs only. */
    const cJSON *kind = cJSON_GetObjectItemCaseSensitive(o, "kind");
    if (kind && (!cJSON_IsString(kind) || (strcmp(kind->valuestring, "conv") &&
                                           strcmp(kind->valuestring, "linear")))) {
      snprintf(why, cap, "latency table entry %d has kind other than \"conv\" or \"linear\"", i);
      lt_lat_table_free(t);
      return -1;
    }
    e.kind = kind && !strcmp(kind->valuestring, "linear") ? LT_COMPRESS_LINEAR : LT_COMPRESS_CONV;
    /* Tables written before the key had a bias were all timed with one. */
    const cJSON *bias = cJSON_GetObjectItemCaseSensitive(o, "bias");
    e.bias = bias ? cJSON_IsTrue(bias) : 1;
    e.dense_ms = d->valuedouble;
    e.n = n;
    for (int k = 0; k < n; k++) e.ms[k] = cJSON_GetArrayItem(ms, k)->valuedouble;
    lt_err err = {0};
    if (lt_lat_table_add(t, &e, &err)) {
      snprintf(why, cap, "%s", err.msg);
      lt_lat_table_free(t);
      return -1;
    }
    i++;
  }
  return 0;
}

int compress_lat_read(const char *path, lt_lat_table *t, char *why, size_t cap) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    snprintf(why, cap, "cannot read latency table %s: %s", path, strerror(errno));
    return -1;
  }
  fseek(f, 0, SEEK_END);
  long len = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *buf = len > 0 && len < (64L << 20) ? malloc((size_t)len + 1) : NULL;
  size_t got = buf ? fread(buf, 1, (size_t)len, f) : 0;
  fclose(f);
  if (!buf || got != (size_t)len) {
    free(buf);
    snprintf(why, cap, "latency table %s is empty, too large or unreadable", path);
    return -1;
  }
  buf[len] = 0;
  cJSON *j = cJSON_Parse(buf);
  free(buf);
  if (!j) {
    snprintf(why, cap, "latency table %s is not JSON", path);
    return -1;
  }
  int rc = compress_lat_from_json(j, t, why, cap);
  cJSON_Delete(j);
  return rc;
}

/* Writes JSON atomically (temp file, fsync, rename), so a reader never sees half a table. */
static int jc_write_json(const char *path, const cJSON *j, char *why, size_t cap) {
  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
  char *text = cJSON_Print(j);
  FILE *f = text ? fopen(tmp, "wb") : NULL;
  int ok = f && fputs(text, f) >= 0 && fflush(f) == 0 && fsync(fileno(f)) == 0;
  if (f) ok = (fclose(f) == 0) && ok;
  free(text);
  if (!ok || rename(tmp, path) != 0) {
    snprintf(why, cap, "cannot write %s: %s", path, strerror(errno));
    unlink(tmp);
    return -1;
  }
  return 0;
}

int compress_lat_write(const char *path, const lt_lat_table *t, char *why, size_t cap) {
  cJSON *j = compress_lat_to_json(t);
  int rc = jc_write_json(path, j, why, cap);
  cJSON_Delete(j);
  return rc;
}

/* ---- the job -------------------------------------------------------------------------------- */

static double jc_num(const cJSON *obj, const char *key, double fallback) {
  const cJSON *v = obj ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;
  return cJSON_IsNumber(v) ? v->valuedouble : fallback;
}

static const char *jc_str(const cJSON *obj, const char *key, const char *fallback) {
  const cJSON *v = obj ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;
  return cJSON_IsString(v) ? v->valuestring : fallback;
}

static const cJSON *jc_obj(const cJSON *obj, const char *key) {
  return obj ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;
}

static int jc_exit(lt_status st) {
  return st == LT_ERR_NOMEM || st == LT_ERR_INTERNAL || st == LT_ERR_IO || st == LT_ERR_CANCELLED
             ? JOB_EXIT_FAILED
             : JOB_EXIT_BAD_INPUT;
}

/* Everything the phases share. */
typedef struct jc {
  job_ctx *job;
  const cJSON *spec;
  lt_backend *be;
  lt_dataset *train, *test;
  lt_dataset test_view, held_view; /* borrowed views: the first eval_samples test samples; the
                                      sensitivity samples at the end of train */
  lt_batch_opts bo;                /* normalisation + augmentation */
  lt_graph *g;                     /* the original model, owned */
  lt_compress_layer *L;            /* (n_all) owned: the n searched layers, then those that stay
                                      dense because no rank is faster on the device */
  int n, n_all;
  lt_target_kind kind;
  double target, fixed;            /* whole-model budget; cost outside the searched layers */
  double layer_scale;              /* each searched layer's cost is multiplied by it (latency:
                                      the model's slope over its layers' sum; otherwise 1) */
  int lat_batch;
  double t_phase;
  cJSON *phases, *traj;            /* wall seconds per phase; search trajectory (owned) */
  lt_err err;
} jc;

static void jc_phase_end(jc *c, const char *name) {
  double now = lt_now();
  cJSON_AddNumberToObject(c->phases, name, now - c->t_phase);
  c->t_phase = now;
}

static int jc_fail_engine(jc *c, const char *what) {
  return job_fail(c->job, jc_exit(c->err.status), "%s: %s", what, c->err.msg);
}

static int jc_on_search(void *user, const lt_search_progress *p) {
  jc *c = user;
  job_emit_metric(c->job, "search.expected_cost", p->step, p->expected_cost);
  job_emit_metric(c->job, "search.argmax_cost", p->step, p->argmax_cost);
  if (c->kind == LT_TARGET_LATENCY)
    job_emit_metric(c->job, "search.expected_latency", p->step, p->expected_cost);
  job_emit_metric(c->job, "search.loss", p->step, p->loss);
  job_emit_metric(c->job, "search.task_loss", p->step, p->task_loss);
  job_emit_metric(c->job, "search.fm_loss", p->step, p->fm_loss);
  job_emit_metric(c->job, "search.tau", p->step, p->tau);
  cJSON *o = cJSON_CreateObject();
  cJSON_AddNumberToObject(o, "step", (double)p->step);
  cJSON_AddNumberToObject(o, "tau", p->tau);
  cJSON_AddNumberToObject(o, "expected_cost", p->expected_cost);
  cJSON_AddNumberToObject(o, "argmax_cost", p->argmax_cost);
  cJSON_AddNumberToObject(o, "loss", p->loss);
  cJSON_AddItemToObject(o, "ranks", cJSON_CreateIntArray(p->ranks, p->n_layers));
  cJSON_AddItemToArray(c->traj, o);
  int64_t every = p->steps / 50 > 1 ? p->steps / 50 : 1;
  if (p->step % every == 0) {
    char msg[96];
    snprintf(msg, sizeof msg, "search step %lld/%lld", (long long)p->step, (long long)p->steps);
    job_emit_progress(c->job, 0.15 + 0.35 * (double)p->step / (double)p->steps, msg, -1);
  }
  return job_should_stop(c->job);
}

typedef struct jc_ft {
  jc *c;
  const char *key;
  double f0, f1;
} jc_ft;

static int jc_on_finetune(void *user, const lt_train_progress *p) {
  jc_ft *s = user;
  job_emit_metric(s->c->job, s->key, p->step, p->loss);
  int64_t every = p->total_steps / 50 > 1 ? p->total_steps / 50 : 1;
  if (p->step % every == 0) {
    char msg[96];
    snprintf(msg, sizeof msg, "%s %lld/%lld", s->key, (long long)p->step,
             (long long)p->total_steps);
    job_emit_progress(s->c->job, s->f0 + (s->f1 - s->f0) * (double)p->step / (double)p->total_steps,
                      msg, -1);
  }
  return job_should_stop(s->c->job);
}

/* The fine-tuning budget in optimizer steps: finetune.steps, or finetune.epochs passes over the
 * training split (the last partial batch of each dropped); 0 skips fine-tuning. */
static int64_t jc_finetune_steps(const jc *c, int batch) {
  const cJSON *ft = jc_obj(c->spec, "finetune");
  if (cJSON_IsNumber(jc_obj(ft, "epochs")))
    return (int64_t)(jc_num(ft, "epochs", 0) * (double)(c->train->n / batch));
  return (int64_t)jc_num(ft, "steps", 300);
}

/* Fine-tunes g on the training split (cosine or one-cycle schedule), distilled from the original
 * model unless finetune.distill is false; metric key names the phase. The run's figures go into
 * info (may be NULL). */
static lt_status jc_finetune(jc *c, lt_graph *g, const char *key, double f0, double f1,
                             cJSON *info) {
  const cJSON *ft = jc_obj(c->spec, "finetune"), *dj = jc_obj(ft, "distill");
  lt_train_config tc = lt_train_config_default();
  tc.train = c->train;
  tc.batch_size = (int)jc_num(ft, "batch_size", 128);
  if (tc.batch_size > c->train->n) tc.batch_size = (int)c->train->n;
  int64_t steps = jc_finetune_steps(c, tc.batch_size);
  if (steps <= 0) return LT_OK;
  tc.max_steps = steps;
  tc.epochs = steps / (c->train->n / tc.batch_size) + 1;
  tc.optim = lt_optim_config_default(LT_OPTIM_SGD);
  tc.optim.momentum = (float)jc_num(ft, "momentum", 0.9);
  tc.optim.weight_decay = (float)jc_num(ft, "weight_decay", 5e-4);
  const char *sk = jc_str(ft, "schedule", "cosine");
  tc.sched.kind = !strcmp(sk, "onecycle") ? LT_SCHED_ONECYCLE : LT_SCHED_COSINE;
  tc.sched.lr = jc_num(ft, "lr", 0.01);
  tc.sched.total_steps = steps;
  tc.sched.warmup_steps = tc.sched.kind == LT_SCHED_COSINE ? (int64_t)jc_num(ft, "warmup_steps", 0) : 0;
  if (tc.sched.warmup_steps >= steps) tc.sched.warmup_steps = 0;
  tc.batch = c->bo;
  tc.seed = (uint64_t)jc_num(c->spec, "seed", 1);
  jc_ft s = {c, key, f0, f1};
  tc.on_step = jc_on_finetune;
  tc.user = &s;
  /* distill: {alpha, temperature} (defaults 0.5 and 4), true for the defaults, false for none */
  lt_distiller *d = NULL;
  lt_train_loss hook;
  double alpha = jc_num(dj, "alpha", 0.5), temp = jc_num(dj, "temperature", 4);
  if (!cJSON_IsFalse(dj)) {
    if (!(d = lt_distiller_create(c->g, c->be, tc.batch_size, alpha, temp, &c->err)))
      return c->err.status;
    hook = lt_distiller_loss(d);
    tc.loss = &hook;
  }
  lt_train_result r;
  double t0 = lt_now();
  lt_status st = lt_train_run(g, c->be, &tc, &r, &c->err);
  lt_distiller_free(d);
  if (!st && info) {
    cJSON_AddNumberToObject(info, "steps", (double)r.steps);
    cJSON_AddNumberToObject(info, "epochs", (double)r.steps * tc.batch_size / (double)c->train->n);
    cJSON_AddNumberToObject(info, "batch_size", tc.batch_size);
    cJSON_AddStringToObject(info, "schedule", sk);
    cJSON_AddNumberToObject(info, "lr", tc.sched.lr);
    if (d) {
      cJSON *o = cJSON_AddObjectToObject(info, "distill");
      cJSON_AddNumberToObject(o, "alpha", alpha);
      cJSON_AddNumberToObject(o, "temperature", temp);
    } else
      cJSON_AddBoolToObject(info, "distill", 0);
    cJSON_AddNumberToObject(info, "train_loss", r.train_loss);
    cJSON_AddNumberToObject(info, "samples_per_s", r.samples_per_s);
    cJSON_AddNumberToObject(info, "wall_s", lt_now() - t0);
  }
  return st;
}

static int jc_cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* Median of n ≤ 16 values (v is left as it was). */
static double jc_median(const double *v, int n) {
  double t[16];
  memcpy(t, v, sizeof(double) * (size_t)n);
  qsort(t, (size_t)n, sizeof *t, jc_cmp_double);
  return n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
}

/* Latency of two models measured in alternating rounds, each the median over the rounds: on a
 * machine whose speed drifts (shared, throttling) both see the same conditions, so their ratio
 * (the measured speedup) holds even when the absolute figures move. */
static lt_status jc_measure_pair(jc *c, lt_graph *a, lt_graph *b, int batch, double *ms_a,
                                 double *ms_b) {
  enum { ROUNDS = 5 };
  double ta[ROUNDS], tb[ROUNDS];
  lt_lat_opts lo = {.min_reps = 3, .max_reps = 10};
  for (int r = 0; r < ROUNDS; r++) {
    lt_status st = lt_lat_measure_graph(a, c->be, batch, &lo, &ta[r], &c->err);
    if (!st) st = lt_lat_measure_graph(b, c->be, batch, &lo, &tb[r], &c->err);
    if (st) return st;
  }
  for (int i = 1; i < ROUNDS; i++) /* insertion sort of five */
    for (int j = i; j > 0 && ta[j] < ta[j - 1]; j--) {
      double t = ta[j]; ta[j] = ta[j - 1]; ta[j - 1] = t;
    }
  for (int i = 1; i < ROUNDS; i++)
    for (int j = i; j > 0 && tb[j] < tb[j - 1]; j--) {
      double t = tb[j]; tb[j] = tb[j - 1]; tb[j - 1] = t;
    }
  *ms_a = ta[ROUNDS / 2];
  *ms_b = tb[ROUNDS / 2];
  return LT_OK;
}

static lt_status jc_accuracy(jc *c, lt_graph *g, const lt_dataset *ds, double *acc) {
  lt_eval_result r = {.accuracy = NAN};
  lt_status st = lt_evaluate(g, c->be, ds, &c->bo.norm, 256, &r, &c->err);
  *acc = r.accuracy;
  return st;
}

static double jc_model_cost(jc *c, lt_graph *g, double lat_ms) {
  switch (c->kind) {
  case LT_TARGET_LATENCY: return lat_ms;
  case LT_TARGET_FLOPS: return (double)lt_graph_macs(g);
  case LT_TARGET_PARAMS: return (double)lt_graph_params(g);
  }
  return NAN;
}

static double jc_ranks_cost(const jc *c, const int *pick /* candidate indices, -1 dense */) {
  double e = 0;
  for (int l = 0; l < c->n; l++) e += lt_compress_layer_cost(&c->L[l], c->kind, pick[l]);
  return c->fixed + c->layer_scale * e;
}

/* Uniform rank ratio: every layer at the largest candidate ≤ ratio·min(S, C) (its smallest when
 * none), the ratio bisected to the largest that meets the target. On a coarse rank grid that can
 * land far under the target (ResNet-20 at 70% fewer FLOPs: 79%), so the rest of the budget is
 * then spent one candidate at a time on the layer with the lowest rank ratio that still fits:
 * ratios stay as even as the grid allows, at (nearly) the search's cost. */
static void jc_uniform(const jc *c, int *pick) {
  double lo = 0, hi = 1;
  int *tmp = malloc(sizeof(int) * (size_t)c->n);
  for (int it = 0; it < 40 && tmp; it++) {
    double q = 0.5 * (lo + hi);
    for (int l = 0; l < c->n; l++) {
      const lt_compress_layer *y = &c->L[l];
      double lim = q * (y->s < y->c ? y->s : y->c);
      tmp[l] = 0;
      for (int i = 0; i < y->n_cand; i++)
        if (y->cand[i] <= lim) tmp[l] = i;
    }
    if (jc_ranks_cost(c, tmp) <= c->target) lo = q, memcpy(pick, tmp, sizeof(int) * (size_t)c->n);
    else hi = q;
  }
  if (lo == 0)
    for (int l = 0; l < c->n; l++) pick[l] = 0;
  free(tmp);
  for (;;) {
    int best = -1;
    double best_ratio = 2;
    for (int l = 0; l < c->n; l++) {
      const lt_compress_layer *y = &c->L[l];
      if (pick[l] + 1 >= y->n_cand) continue;
      pick[l]++;
      int fits = jc_ranks_cost(c, pick) <= c->target;
      pick[l]--;
      double ratio = (double)y->cand[pick[l]] / (y->s < y->c ? y->s : y->c);
      if (fits && ratio < best_ratio) best = l, best_ratio = ratio;
    }
    if (best < 0) break;
    pick[best]++;
  }
}

/* AIMET-style greedy sensitivity: each layer alone at each of Q rank levels (candidate fraction
 * q/(Q-1)), scored on held-out samples; then every layer takes its smallest level whose accuracy
 * drop stays within δ, with δ bisected to the smallest that meets the target. */
static lt_status jc_sensitivity(jc *c, int *pick) {
  const cJSON *so = jc_obj(c->spec, "sensitivity");
  int Q = (int)jc_num(so, "ratios", 10);
  double base;
  lt_status st = jc_accuracy(c, c->g, &c->held_view, &base);
  if (st) return st;
  double *acc = malloc(sizeof(double) * (size_t)c->n * Q);
  int *lvl = malloc(sizeof(int) * (size_t)c->n * Q), *ranks = calloc((size_t)c->n, sizeof(int));
  if (!acc || !lvl || !ranks) {
    free(acc), free(lvl), free(ranks);
    return lt_errorf(&c->err, LT_ERR_NOMEM, "out of memory for the sensitivity sweep");
  }
  for (int l = 0; l < c->n && !st; l++)
    for (int q = 0; q < Q && !st; q++) {
      const lt_compress_layer *y = &c->L[l];
      int i = (int)lround((double)q / (Q - 1) * (y->n_cand - 1));
      lvl[l * Q + q] = i;
      if (q > 0 && lvl[l * Q + q - 1] == i) {
        acc[l * Q + q] = acc[l * Q + q - 1];
        continue;
      }
      lt_graph *h = lt_graph_clone(c->g, &c->err);
      if (!h) {
        st = c->err.status;
        break;
      }
      memset(ranks, 0, sizeof(int) * (size_t)c->n);
      ranks[l] = y->cand[i];
      st = lt_compress_apply(h, c->L, c->n, ranks, &c->err);
      if (!st) st = jc_accuracy(c, h, &c->held_view, &acc[l * Q + q]);
      lt_graph_free(h);
      if (job_should_stop(c->job)) st = lt_errorf(&c->err, LT_ERR_CANCELLED, "stopped");
    }
  if (!st) {
    double lo = 0, hi = 1;
    int *tmp = malloc(sizeof(int) * (size_t)c->n);
    for (int l = 0; l < c->n; l++) pick[l] = 0;
    for (int it = 0; it < 40 && tmp; it++) {
      double d = 0.5 * (lo + hi);
      for (int l = 0; l < c->n; l++) {
        tmp[l] = lvl[l * Q + Q - 1];
        for (int q = 0; q < Q; q++)
          if (base - acc[l * Q + q] <= d) {
            tmp[l] = lvl[l * Q + q];
            break;
          }
      }
      if (jc_ranks_cost(c, tmp) <= c->target) hi = d, memcpy(pick, tmp, sizeof(int) * (size_t)c->n);
      else lo = d;
    }
    free(tmp);
  }
  free(acc), free(lvl), free(ranks);
  return st;
}

/* A copy of the model with every searched layer at its smallest candidate rank: the latency
 * model's reference. NULL with c->err set when it cannot be built. */
static lt_graph *jc_reference(jc *c) {
  int *r0 = malloc(sizeof(int) * (size_t)c->n);
  if (!r0) {
    lt_errorf(&c->err, LT_ERR_NOMEM, "out of memory");
    return NULL;
  }
  for (int l = 0; l < c->n; l++) r0[l] = c->L[l].cand[0];
  lt_graph *h = lt_graph_clone(c->g, &c->err);
  if (h && lt_compress_apply(h, c->L, c->n, r0, &c->err)) {
    lt_graph_free(h);
    h = NULL;
  }
  free(r0);
  return h;
}

/* The factorised layers feed batch norms whose running statistics describe the old layers:
 * re-estimate them (finetune.bn_recalibrate batches, from training samples) before the model is
 * scored or fine-tuned. */
static lt_status jc_recalibrate(jc *c, lt_graph *g) {
  const cJSON *ft = jc_obj(c->spec, "finetune");
  int batches = (int)jc_num(ft, "bn_recalibrate", 20);
  return lt_bn_recalibrate(g, c->be, c->train, &c->bo, (int)jc_num(ft, "batch_size", 128), batches,
                           (uint64_t)jc_num(c->spec, "seed", 1), &c->err);
}

/* Compresses a fresh copy of the model at the baseline's ranks, fine-tunes and scores it. */
static int jc_baseline(jc *c, const char *name, const int *pick, cJSON *out, double f0, double f1) {
  int *ranks = malloc(sizeof(int) * (size_t)c->n);
  lt_graph *h = ranks ? lt_graph_clone(c->g, &c->err) : NULL;
  if (!h) {
    free(ranks);
    return job_fail(c->job, JOB_EXIT_FAILED, "baseline %s: out of memory", name);
  }
  for (int l = 0; l < c->n; l++) ranks[l] = c->L[l].cand[pick[l]];
  char key[64];
  snprintf(key, sizeof key, "baseline.%s.finetune.loss", name);
  double acc = NAN, ms = NAN;
  lt_status st = lt_compress_apply(h, c->L, c->n, ranks, &c->err);
  if (!st) st = jc_recalibrate(c, h);
  double acc_pre = NAN;
  cJSON *fi = cJSON_CreateObject();
  if (!st) st = jc_accuracy(c, h, &c->test_view, &acc_pre);
  if (!st) st = jc_finetune(c, h, key, f0, f1, fi);
  if (!st) st = jc_accuracy(c, h, &c->test_view, &acc);
  if (!st) st = lt_lat_measure_graph(h, c->be, c->lat_batch, NULL, &ms, &c->err);
  int rc = JOB_EXIT_OK;
  if (st) rc = jc_fail_engine(c, name);
  else {
    job_emit_log(c->job, "info", "baseline %s: accuracy %.4f before fine-tuning, %.4f after", name,
                 acc_pre, acc);
    cJSON *b = cJSON_AddObjectToObject(out, name);
    cJSON_AddNumberToObject(b, "flops", (double)lt_graph_macs(h));
    cJSON_AddNumberToObject(b, "params", (double)lt_graph_params(h));
    cJSON_AddNumberToObject(b, "accuracy", acc);
    cJSON_AddNumberToObject(b, "accuracy_before_finetune", acc_pre);
    cJSON_AddNumberToObject(b, "latency_ms", ms);
    cJSON_AddItemToObject(b, "finetune", fi);
    fi = NULL;
    cJSON_AddItemToObject(b, "ranks", cJSON_CreateIntArray(ranks, c->n));
  }
  cJSON_Delete(fi);
  lt_graph_free(h);
  free(ranks);
  return rc;
}

/* Every baseline the spec asks for, at the job's target, each fine-tuned with the same budget;
 * results under res.baselines. */
static int jc_baselines(jc *c, cJSON *res) {
  cJSON *bl = cJSON_AddObjectToObject(res, "baselines");
  const cJSON *b;
  int nb = cJSON_GetArraySize(jc_obj(c->spec, "baselines")), ib = 0;
  cJSON_ArrayForEach(b, jc_obj(c->spec, "baselines")) {
    double f0 = 0.8 + 0.2 * ib / nb, f1 = 0.8 + 0.2 * (ib + 1) / nb;
    ib++;
    job_emit_progress(c->job, f0, b->valuestring, -1);
    int *bp = calloc((size_t)c->n, sizeof(int));
    if (!bp) return job_fail(c->job, JOB_EXIT_FAILED, "out of memory");
    if (!strcmp(b->valuestring, "uniform")) jc_uniform(c, bp);
    else if (jc_sensitivity(c, bp)) {
      free(bp);
      return jc_fail_engine(c, "sensitivity sweep");
    }
    int rc = jc_baseline(c, b->valuestring, bp, bl, f0, f1);
    free(bp);
    if (rc) return rc;
    char ph[64];
    snprintf(ph, sizeof ph, "baseline_%s", b->valuestring);
    jc_phase_end(c, ph);
  }
  return JOB_EXIT_OK;
}

/* FNV-1a of the device and batch names the cache file of its latency table. */
static void jc_cache_path(const jc *c, const char *dir, int probe_step, char *out, size_t cap) {
  char key[400];
  /* "conv+bn+relu": layers timed with the batch norm and ReLU after them (tables measured before
   * that are not reused); the engine's version: another release has other kernels */
  snprintf(key, sizeof key, "%s|batch %d|probe %d|conv+bn+relu|lathe %s", c->be->description,
           c->lat_batch, probe_step, lt_version());
  uint64_t h = 1469598103934665603ull;
  for (const char *p = key; *p; p++) h = (h ^ (unsigned char)*p) * 1099511628211ull;
  snprintf(out, cap, "%s/latency-%016llx.json", dir, (unsigned long long)h);
}

/* Latency table: given, estimated, or measured here (through the cache). */
static int jc_profile(jc *c, lt_lat_table *t, int *foreign) {
  const cJSON *lat = jc_obj(c->spec, "latency"), *rf = jc_obj(lat, "roofline");
  const char *given = jc_str(lat, "table", NULL);
  int probe = (int)jc_num(jc_obj(c->spec, "search"), "probe_step", 4);
  char why[512];
  *foreign = 0;
  if (given) {
    const char *path = job_resolve_ref(c->job, given);
    if (!path) return JOB_EXIT_BAD_INPUT;
    if (compress_lat_read(path, t, why, sizeof why))
      return job_fail(c->job, JOB_EXIT_BAD_INPUT, "$.spec.latency.table: %s", why);
    *foreign = t->estimated || strcmp(t->device, c->be->description) || t->batch != c->lat_batch;
    job_emit_log(c->job, "info", "latency table from %s (%s, batch %d)", path, t->device, t->batch);
    return JOB_EXIT_OK;
  }
  if (rf) {
    lt_roofline r = {jc_num(rf, "gflops", 0), jc_num(rf, "gbytes_s", 0)};
    *foreign = 1;
    if (lt_lat_estimate(c->g, &r, c->lat_batch, probe, t, &c->err))
      return jc_fail_engine(c, "latency estimate");
    job_emit_log(c->job, "warn", "latencies are a roofline ESTIMATE (%s), not measurements",
                 t->device);
    return JOB_EXIT_OK;
  }
  char dir[4096], path[4200];
  const char *cd = jc_str(lat, "cache_dir", "");
  if (*cd) snprintf(dir, sizeof dir, "%s", cd);
  else if (getenv("LATHE_CACHE_DIR")) snprintf(dir, sizeof dir, "%s", getenv("LATHE_CACHE_DIR"));
  else snprintf(dir, sizeof dir, "%s/.cache/lathe", getenv("HOME") ? getenv("HOME") : "/tmp");
  jc_cache_path(c, dir, probe, path, sizeof path);
  int cached = 0;
  if (access(path, R_OK) == 0) {
    if (compress_lat_read(path, t, why, sizeof why) == 0) cached = t->n;
    else job_emit_log(c->job, "warn", "ignoring latency cache: %s", why);
  }
  lt_lat_opts lo = {.probe_step = probe};
  if (lt_lat_profile(c->g, c->be, c->lat_batch, &lo, t, &c->err))
    return jc_fail_engine(c, "latency profile");
  job_emit_log(c->job, "info", "latency table: %d shapes (%d from the cache %s), rank step %d",
               t->n, cached, path, t->step);
  if (t->n > cached) {
    if (job_dir_make(dir, 0755) || compress_lat_write(path, t, why, sizeof why))
      job_emit_log(c->job, "warn", "latency cache not written: %s", why);
  }
  return JOB_EXIT_OK;
}

static lt_target_kind jc_kind(const char *s) {
  return !strcmp(s, "latency") ? LT_TARGET_LATENCY
         : !strcmp(s, "params") ? LT_TARGET_PARAMS
                                : LT_TARGET_FLOPS;
}

static int jc_load(jc *c) {
  const cJSON *spec = c->spec;
  const char *dpath = job_file(c->job, "dataset");
  if (!dpath) return JOB_EXIT_BAD_INPUT;
  const cJSON *splits = jc_obj(spec, "splits");
  if (!(c->train = lt_dataset_load(dpath, jc_str(splits, "train", "train"), NULL, &c->err)) ||
      !(c->test = lt_dataset_load(dpath, jc_str(splits, "test", "test"), NULL, &c->err)))
    return jc_fail_engine(c, "dataset");
  if (!c->train->labels)
    return job_fail(c->job, JOB_EXIT_BAD_INPUT,
                    "split %s holds targets, not class labels; compress searches classifiers",
                    c->train->split);
  const cJSON *model = jc_obj(spec, "model");
  const char *zoo = jc_str(model, "zoo", NULL), *ref = zoo;
  if (!zoo) {
    ref = job_resolve_ref(c->job, jc_str(model, "file", ""));
    if (!ref) return JOB_EXIT_BAD_INPUT;
  }
  /* A zoo model is built for the data; a file keeps its own input shape, so that data that does
   * not fit it is reported rather than imported at another size. */
  lt_zoo_opts zo = {.num_classes = (int)jc_num(model, "num_classes", 10),
                    .seed = (uint64_t)jc_num(spec, "seed", 1)};
  if (zoo) zo.in_channels = c->train->c, zo.height = c->train->h, zo.width = c->train->w;
  if (!(c->g = lt_model_load(ref, &zo, NULL, NULL, &c->err)))
    return jc_fail_engine(c, "model");
  c->test_view = *c->test;
  int64_t es = (int64_t)jc_num(spec, "eval_samples", 0);
  if (es > 0 && es < c->test->n) c->test_view.n = es;
  /* Sensitivity samples: the tail of the training split, which the search also holds out. */
  int64_t hs = (int64_t)jc_num(jc_obj(spec, "sensitivity"), "samples", 512);
  if (hs > c->train->n / 2) hs = c->train->n / 2;
  c->held_view = *c->train;
  c->held_view.n = hs;
  c->held_view.x = (uint8_t *)c->train->x + (size_t)(c->train->n - hs) * lt_dataset_sample_bytes(c->train);
  c->held_view.labels = c->train->labels + (c->train->n - hs);

  const cJSON *a = jc_obj(spec, "augmentation"), *nm = jc_obj(spec, "normalisation");
  c->bo.pad = (int)jc_num(a, "crop_padding", 4);
  c->bo.flip = cJSON_IsTrue(jc_obj(a, "flip"));
  if (nm) {
    const cJSON *mean = jc_obj(nm, "mean"), *sd = jc_obj(nm, "std");
    int n = cJSON_GetArraySize(mean);
    if (n != cJSON_GetArraySize(sd) || n > LT_DATA_MAX_CH)
      return job_fail(c->job, JOB_EXIT_BAD_INPUT,
                      "$.spec.normalisation: mean and std need the same number of values");
    c->bo.norm.n = n;
    for (int i = 0; i < n; i++) {
      c->bo.norm.mean[i] = (float)cJSON_GetArrayItem(mean, i)->valuedouble;
      c->bo.norm.std[i] = (float)cJSON_GetArrayItem(sd, i)->valuedouble;
    }
  }
  if (lt_norm_check(&c->bo.norm, c->train->c, &c->err)) return jc_fail_engine(c, "normalisation");
  return JOB_EXIT_OK;
}

/* now_scale carries the table's latencies into the conditions the layer was measured in. */
static cJSON *jc_layer_json(const lt_compress_layer *l, int rank, int pick, double measured_ms,
                            double now_scale) {
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "name", l->name);
  if (l->kind == LT_COMPRESS_LINEAR) {
    cJSON_AddStringToObject(o, "kind", "linear");
    cJSON_AddItemToObject(o, "shape", cJSON_CreateIntArray((int[]){l->s, l->c}, 2));
    cJSON_AddItemToObject(o, "input", cJSON_CreateIntArray((int[]){l->c}, 1));
  } else {
    cJSON_AddStringToObject(o, "kind", "conv");
    cJSON_AddItemToObject(o, "shape", cJSON_CreateIntArray((int[]){l->s, l->c, l->kh, l->kw}, 4));
    cJSON_AddItemToObject(o, "input", cJSON_CreateIntArray((int[]){l->c, l->in_h, l->in_w}, 3));
  }
  cJSON_AddItemToObject(o, "candidate_ranks", cJSON_CreateIntArray(l->cand, l->n_cand));
  cJSON_AddNumberToObject(o, "chosen_rank", rank);
  cJSON_AddNumberToObject(o, "params_before", (double)l->dense_params);
  cJSON_AddNumberToObject(o, "params_after", (double)(rank ? l->params[pick] : l->dense_params));
  cJSON_AddNumberToObject(o, "flops_before", (double)l->dense_macs);
  cJSON_AddNumberToObject(o, "flops_after", (double)(rank ? l->macs[pick] : l->dense_macs));
  cJSON_AddNumberToObject(o, "latency_ms_dense", l->dense_ms);
  cJSON_AddNumberToObject(o, "latency_ms_predicted", (rank ? l->ms[pick] : l->dense_ms) * now_scale);
  cJSON_AddNumberToObject(o, "latency_ms_measured", measured_ms);
  return o;
}

int job_compress_run(job_ctx *job, cJSON **result) {
  jc c = {.job = job, .spec = job->spec, .t_phase = lt_now()};
  const cJSON *spec = job->spec, *so = jc_obj(spec, "search"), *to = jc_obj(spec, "target");
  const char *device = job->device ? job->device : jc_str(spec, "device", "cpu");
  lt_train_set_threads((int)jc_num(spec, "threads", 0));
  c.phases = cJSON_CreateObject();
  c.traj = cJSON_CreateArray();
  c.kind = jc_kind(jc_str(to, "kind", "flops"));
  c.lat_batch = (int)jc_num(jc_obj(spec, "latency"), "batch", 64);
  lt_lat_table tab = {0};
  lt_graph *cg = NULL, *cg_search = NULL, *ref = NULL;
  int *ranks = NULL, *pick = NULL, foreign = 0, rc;
  cJSON *res = cJSON_CreateObject();
  char path[4200], why[512];
  double acc0 = NAN, acc1 = NAN, ms0 = NAN, ms1 = NAN, ms1_1 = NAN;

  if (!(c.be = lt_backend_get(device, &c.err))) {
    rc = job_fail(job, JOB_EXIT_BAD_INPUT, "device %s: %s", device, c.err.msg);
    goto done;
  }
  const cJSON *ftj = jc_obj(spec, "finetune");
  if (jc_obj(ftj, "steps") && jc_obj(ftj, "epochs")) {
    rc = job_fail(job, JOB_EXIT_BAD_INPUT,
                  "$.spec.finetune: give steps or epochs, not both");
    goto done;
  }
  job_emit_progress(job, 0, "loading model and data", -1);
  if ((rc = jc_load(&c))) goto done;
  int probe = (int)jc_num(so, "probe_step", 4);
  if (lt_compress_layers_find(c.g, probe, &c.L, &c.n, &c.err)) {
    rc = jc_fail_engine(&c, "model");
    goto done;
  }
  if (c.n == 0) {
    rc = job_fail(job, JOB_EXIT_BAD_INPUT,
                  "the model has no compressible layer: no dense k x k convolution (k > 1, "
                  "groups 1) or linear layer with constant weights has a rank of step %d "
                  "cheaper than itself",
                  probe);
    goto done;
  }
  if (jc_accuracy(&c, c.g, &c.test_view, &acc0)) {
    rc = jc_fail_engine(&c, "the dataset does not fit the model");
    goto done;
  }
  job_emit_log(job, "info", "%d compressible layers; accuracy %.4f", c.n, acc0);
  jc_phase_end(&c, "load");

  job_emit_progress(job, 0.05, "latency table", -1);
  if ((rc = jc_profile(&c, &tab, &foreign))) goto done;
  snprintf(path, sizeof path, "%s/latency_table.json", job->out_dir);
  if (compress_lat_write(path, &tab, why, sizeof why)) {
    rc = job_fail(job, JOB_EXIT_FAILED, "%s", why);
    goto done;
  }
  job_emit_artifact(job, "latency_table.json", path);
  int step = (int)jc_num(so, "rank_step", 0);
  if (step <= 0) step = tab.step;
  if (lt_compress_layers_set_latency(c.L, c.n, &tab, step, &c.err)) {
    rc = jc_fail_engine(&c, "latency table");
    goto done;
  }
  c.n_all = c.n;
  if (!cJSON_IsFalse(jc_obj(so, "latency_cap"))) {
    const double margin = jc_num(so, "latency_margin", 0.1);
    c.n = lt_compress_layers_keep_faster(c.L, c.n_all, margin);
    for (int l = c.n; l < c.n_all; l++)
      job_emit_log(job, "info", "layer %s stays dense: no rank of step %d is %.0f%% faster than "
                   "the dense layer on %s (%.3f ms)", c.L[l].name, step, 100 * margin, tab.device,
                   c.L[l].dense_ms);
    if (c.n == 0) {
      rc = job_fail(job, JOB_EXIT_BAD_INPUT,
                    "no layer of this model runs faster factorised on %s: every rank of step %d "
                    "costs at least the dense layer's latency (set search.latency_cap false to "
                    "search ranks by FLOPs or parameters alone)", tab.device, step);
      goto done;
    }
  }

  /* The target as a whole-model budget and the part of it the search cannot change. */
  double sum_dense_ms = 0, sum_dense = 0, sum_small_ms = 0, ms_ref = NAN;
  for (int l = 0; l < c.n; l++) {
    sum_dense_ms += c.L[l].dense_ms;
    sum_small_ms += c.L[l].ms[0];
    sum_dense += lt_compress_layer_cost(&c.L[l], c.kind, -1);
  }
  /* The latency model (lt_lat_model_slope): affine in the searched layers' sum, through the
   * original model and, when the table measures this device, a reference model with every
   * searched layer at its smallest rank. Taking all that lies outside the layers from the
   * original alone put the predictions for fast models 7-29% high
   * (tests/compress/e2e_latency_prediction.c). Both in interleaved rounds, each the median: one
   * measurement alone was now and then twice too slow (the reference at 3.7-3.9 ms against
   * 1.8-2.0 ms in 3 of 7 jobs, the first time it ran in the process, never again after). */
  if (!foreign && !(ref = jc_reference(&c))) {
    rc = jc_fail_engine(&c, "the reference model for the latency prediction");
    goto done;
  }
  enum { ROUNDS0 = 3 };
  double t0[ROUNDS0], tr[ROUNDS0];
  lt_status st = LT_OK;
  for (int r = 0; r < ROUNDS0 && !st; r++) {
    if (ref) st = lt_lat_measure_graph(ref, c.be, c.lat_batch, NULL, &tr[r], &c.err);
    if (!st) st = lt_lat_measure_graph(c.g, c.be, c.lat_batch, NULL, &t0[r], &c.err);
  }
  if (st) {
    rc = jc_fail_engine(&c, "latency of the original and reference models");
    goto done;
  }
  ms0 = jc_median(t0, ROUNDS0);
  if (ref) {
    ms_ref = jc_median(tr, ROUNDS0);
    job_emit_log(job, "info", "original model %.3f ms at batch %d; reference model (every searched "
                 "layer at its smallest rank) %.3f ms", ms0, c.lat_batch, ms_ref);
  }
  /* A table from the cache was measured at another time, and a shared machine's speed drifts:
   * time the dense layers again now, and carry the whole-model latency into the table's scale
   * (scale = table / now) so that the layers outside the search, the target and the prediction
   * all agree with the table. A table measured just now gives scale 1 up to noise. */
  double scale = 1, sum_now = 0;
  if (!foreign) {
    for (int l = 0; l < c.n; l++) {
      double m;
      if (lt_lat_measure_layer(&c.L[l], 0, c.be, c.lat_batch, NULL, &m, &c.err)) {
        rc = jc_fail_engine(&c, "dense layer latency");
        goto done;
      }
      sum_now += m;
    }
    scale = sum_dense_ms / sum_now;
    job_emit_log(job, "info", "dense layers: %.3f ms in the table, %.3f ms now (scale %.3f)",
                 sum_dense_ms, sum_now, scale);
  }
  jc_phase_end(&c, "profile");
  double slope =
      foreign ? 1 : lt_lat_model_slope(ms0 * scale, ms_ref * scale, sum_dense_ms, sum_small_ms);
  double fixed_ms = foreign ? 0 : ms_ref * scale - slope * sum_small_ms;
  if (!foreign)
    job_emit_log(job, "info", "latency model: %.3f ms + %.3f x the searched layers' sum (table)",
                 fixed_ms, slope);
  double before = c.kind == LT_TARGET_LATENCY && foreign ? sum_dense_ms
                  : c.kind == LT_TARGET_LATENCY          ? ms0 * scale
                                                         : jc_model_cost(&c, c.g, ms0);
  c.fixed = c.kind == LT_TARGET_LATENCY ? fixed_ms : before - sum_dense;
  c.layer_scale = c.kind == LT_TARGET_LATENCY ? slope : 1;
  double tv = jc_num(to, "value", 0);
  c.target = tv > 0 ? tv : (1 - jc_num(to, "reduction", 0.7)) * before;
  if (c.kind == LT_TARGET_LATENCY && foreign)
    job_emit_log(job, "warn", "the latency table is not a measurement of this device at batch %d: "
                 "the latency target covers the compressible layers only", c.lat_batch);

  if (cJSON_IsTrue(jc_obj(spec, "baselines_only"))) {
    /* The baselines alone at this target (to rerun or extend them without the search): the
     * result holds the original model's figures, the target and the baselines. */
    if (!cJSON_GetArraySize(jc_obj(spec, "baselines"))) {
      rc = job_fail(job, JOB_EXIT_BAD_INPUT, "$.spec.baselines_only needs at least one baseline");
      goto done;
    }
    if ((rc = jc_baselines(&c, res))) goto done;
    cJSON_AddBoolToObject(res, "baselines_only", 1);
    cJSON_AddNumberToObject(res, "flops_before", (double)lt_graph_macs(c.g));
    cJSON_AddNumberToObject(res, "params_before", (double)lt_graph_params(c.g));
    cJSON_AddNumberToObject(res, "accuracy_before", acc0);
    cJSON_AddNumberToObject(res, "eval_samples", (double)c.test_view.n);
    cJSON_AddNumberToObject(res, "latency_batch", c.lat_batch);
    cJSON_AddNumberToObject(res, "latency_ms_before", ms0);
    cJSON_AddStringToObject(res, "device", c.be->description);
    cJSON *tb = cJSON_AddObjectToObject(res, "target");
    cJSON_AddStringToObject(tb, "kind", jc_str(to, "kind", "flops"));
    cJSON_AddNumberToObject(tb, "value", c.target);
    cJSON_AddNumberToObject(tb, "before", before);
    cJSON_AddItemToObject(res, "phases_s", c.phases);
    c.phases = NULL;
    job_emit_progress(job, 1, "done", 0);
    *result = res;
    res = NULL;
    rc = JOB_EXIT_OK;
    goto done;
  }

  job_emit_progress(job, 0.15, "rank search", -1);
  lt_search_config sc = lt_search_config_default();
  sc.train = c.train;
  sc.n_weights = c.train->n - (int64_t)(jc_num(so, "held_out", 0.1) * (double)c.train->n);
  sc.batch = c.bo;
  sc.batch_size = (int)jc_num(so, "batch_size", 64);
  sc.steps = (int64_t)jc_num(so, "steps", 200);
  sc.lr_weights = jc_num(so, "lr_weights", 0.01);
  sc.lr_logits = jc_num(so, "lr_logits", 0.05);
  sc.tau_start = jc_num(so, "tau_start", 5);
  sc.tau_end = jc_num(so, "tau_end", 0.1);
  sc.beta = jc_num(so, "beta", 1.5);
  sc.fm_weight = jc_num(so, "fm_weight", 1.0);
  sc.target = c.kind;
  sc.target_value = c.target;
  sc.fixed_cost = c.fixed;
  sc.layer_cost_scale = c.layer_scale;
  sc.seed = (uint64_t)jc_num(spec, "seed", 1);
  sc.on_step = jc_on_search;
  sc.user = &c;
  ranks = calloc((size_t)c.n, sizeof(int));
  pick = calloc((size_t)c.n, sizeof(int));
  if (!ranks || !pick) {
    rc = job_fail(job, JOB_EXIT_FAILED, "out of memory");
    goto done;
  }
  if (lt_compress_search(c.g, c.be, c.L, c.n, &sc, ranks, &cg_search, &c.err)) {
    rc = jc_fail_engine(&c, "search");
    goto done;
  }
  cg = cg_search;
  for (int l = 0; l < c.n; l++)
    for (int i = 0; i < c.L[l].n_cand; i++)
      if (c.L[l].cand[i] == ranks[l]) pick[l] = i;
  snprintf(path, sizeof path, "%s/search_trajectory.json", job->out_dir);
  if (jc_write_json(path, c.traj, why, sizeof why)) {
    rc = job_fail(job, JOB_EXIT_FAILED, "%s", why);
    goto done;
  }
  job_emit_artifact(job, "search_trajectory.json", path);
  jc_phase_end(&c, "search");

  job_emit_progress(job, 0.5, "fine-tuning", -1);
  /* Where fine-tuning starts: the searched copy (weights trained under the rank mixture, then
   * truncated) or a fresh decomposition of the original weights at the same ranks; finetune.init
   * "auto" keeps whichever scores better on the held-out training samples (never the test split). */
  cJSON *fti = cJSON_AddObjectToObject(res, "finetune");
  const char *init = jc_str(jc_obj(spec, "finetune"), "init", "auto");
  if (jc_recalibrate(&c, cg)) {
    rc = jc_fail_engine(&c, "batch-norm statistics of the searched model");
    goto done;
  }
  if (strcmp(init, "searched")) {
    lt_graph *fresh = lt_graph_clone(c.g, &c.err);
    double a_s = NAN, a_f = NAN;
    if (!fresh || lt_compress_apply(fresh, c.L, c.n, ranks, &c.err) || jc_recalibrate(&c, fresh) ||
        (!strcmp(init, "auto") && (jc_accuracy(&c, cg, &c.held_view, &a_s) ||
                                   jc_accuracy(&c, fresh, &c.held_view, &a_f)))) {
      lt_graph_free(fresh);
      rc = jc_fail_engine(&c, "re-factorising the original weights");
      goto done;
    }
    cJSON_AddNumberToObject(fti, "held_out_accuracy_searched", a_s);
    cJSON_AddNumberToObject(fti, "held_out_accuracy_fresh", a_f);
    if (!strcmp(init, "fresh") || a_f > a_s) {
      lt_graph_free(cg);
      cg = cg_search = fresh;
      init = "fresh";
    } else {
      lt_graph_free(fresh);
      init = "searched";
    }
    job_emit_log(job, "info", "fine-tuning starts from the %s weights (held-out accuracy: searched "
                 "%.4f, fresh %.4f)", init, a_s, a_f);
  }
  cJSON_AddStringToObject(fti, "init", init);
  double acc_pre = NAN;
  if (jc_accuracy(&c, cg, &c.test_view, &acc_pre)) {
    rc = jc_fail_engine(&c, "evaluating the searched model");
    goto done;
  }
  job_emit_log(job, "info", "compressed model before fine-tuning: accuracy %.4f", acc_pre);
  if (jc_finetune(&c, cg, "finetune.loss", 0.5, 0.75, fti)) {
    rc = jc_fail_engine(&c, "fine-tuning");
    goto done;
  }
  jc_phase_end(&c, "finetune");

  job_emit_progress(job, 0.75, "evaluating", -1);
  /* Latency in interleaved rounds, each figure the median over the rounds so that the drift of a
   * shared machine hits them alike: the original model, its compressible layers alone (dense),
   * the reference model and the compressed model. The prediction carries the table into the
   * conditions of now by the ratio of the dense layers measured now to the table's, and puts
   * the chosen layers' sum on the latency model through the original and the reference, now. */
  enum { ROUNDS = 5 };
  double t_orig[ROUNDS], td[ROUNDS], tref[ROUNDS], tcm[ROUNDS], pair0, pair0_1;
  lt_lat_opts lo = {.min_reps = 3, .max_reps = 10};
  lt_status ast = jc_accuracy(&c, cg, &c.test_view, &acc1);
  if (!ast)
    job_emit_log(job, "info", "compressed model after fine-tuning: accuracy %.4f (original %.4f)",
                 acc1, acc0);
  lt_busy busy0, busy1;
  lt_busy_sample(&busy0);
  for (int r = 0; r < ROUNDS && !ast; r++) {
    td[r] = 0;
    ast = lt_lat_measure_graph(c.g, c.be, c.lat_batch, &lo, &t_orig[r], &c.err);
    for (int l = 0; l < c.n && !ast && !foreign; l++) {
      double m;
      ast = lt_lat_measure_layer(&c.L[l], 0, c.be, c.lat_batch, &lo, &m, &c.err);
      td[r] += m;
    }
    if (!ast && !foreign) ast = lt_lat_measure_graph(ref, c.be, c.lat_batch, &lo, &tref[r], &c.err);
    if (!ast) ast = lt_lat_measure_graph(cg, c.be, c.lat_batch, &lo, &tcm[r], &c.err);
  }
  if (!ast) ast = jc_measure_pair(&c, c.g, cg, 1, &pair0_1, &ms1_1);
  lt_busy_sample(&busy1);
  if (ast) {
    rc = jc_fail_engine(&c, "evaluating the compressed model");
    goto done;
  }
  pair0 = jc_median(t_orig, ROUNDS);
  ms1 = jc_median(tcm, ROUNDS);
  double dense_now = jc_median(td, ROUNDS), now_scale = foreign ? 1 : dense_now / sum_dense_ms;
  double ref_now = foreign ? NAN : jc_median(tref, ROUNDS), small_now = sum_small_ms * now_scale;
  double slope_now = foreign ? 1 : lt_lat_model_slope(pair0, ref_now, dense_now, small_now);
  double chosen_ms = 0; /* the chosen layers' sum in the table */
  cJSON *layers = cJSON_AddArrayToObject(res, "layers");
  for (int l = 0; l < c.n; l++) {
    double m = NAN;
    if (lt_lat_measure_layer(&c.L[l], ranks[l], c.be, c.lat_batch, NULL, &m, &c.err)) {
      rc = jc_fail_engine(&c, "per-layer latency");
      goto done;
    }
    chosen_ms += ranks[l] ? c.L[l].ms[pick[l]] : c.L[l].dense_ms;
    cJSON_AddItemToArray(layers, jc_layer_json(&c.L[l], ranks[l], pick[l], m, now_scale));
  }
  /* the latency model of now, and of the table (what the latency target was met in) */
  const double pred_now = ref_now + slope_now * (chosen_ms * now_scale - small_now);
  const double pred_ms = fixed_ms + slope * chosen_ms;
  for (int l = c.n; l < c.n_all; l++) { /* stayed dense: no faster rank on this device */
    double m = NAN;
    if (lt_lat_measure_layer(&c.L[l], 0, c.be, c.lat_batch, NULL, &m, &c.err)) {
      rc = jc_fail_engine(&c, "per-layer latency");
      goto done;
    }
    cJSON_AddItemToArray(layers, jc_layer_json(&c.L[l], 0, 0, m, now_scale));
  }
  snprintf(path, sizeof path, "%s/model.onnx", job->out_dir);
  if (lt_onnx_save(cg, path, &c.err)) {
    rc = jc_fail_engine(&c, "writing model.onnx");
    goto done;
  }
  job_emit_artifact(job, "model.onnx", path);
  jc_phase_end(&c, "evaluate");

  if ((rc = jc_baselines(&c, res))) goto done;

  double f_before = (double)lt_graph_macs(c.g), f_after = (double)lt_graph_macs(cg);
  cJSON_AddNumberToObject(res, "flops_before", f_before);
  cJSON_AddNumberToObject(res, "flops_after", f_after);
  cJSON_AddNumberToObject(res, "flops_reduction", 1 - f_after / f_before);
  cJSON_AddNumberToObject(res, "params_before", (double)lt_graph_params(c.g));
  cJSON_AddNumberToObject(res, "params_after", (double)lt_graph_params(cg));
  cJSON_AddNumberToObject(res, "accuracy_before", acc0);
  cJSON_AddNumberToObject(res, "accuracy_after", acc1);
  cJSON_AddNumberToObject(res, "accuracy_before_finetune", acc_pre);
  cJSON_AddNumberToObject(res, "eval_samples", (double)c.test_view.n);
  cJSON_AddNumberToObject(res, "latency_batch", c.lat_batch);
  cJSON_AddNumberToObject(res, "latency_ms_before", pair0);
  cJSON_AddNumberToObject(res, "latency_ms_after", ms1);
  cJSON_AddNumberToObject(res, "speedup_measured", pair0 / ms1);
  cJSON_AddNumberToObject(res, "latency_ms_before_batch1", pair0_1);
  cJSON_AddNumberToObject(res, "latency_ms_after_batch1", ms1_1);
  cJSON_AddNumberToObject(res, "speedup_measured_batch1", pair0_1 / ms1_1);
  /* What else ran while the latencies were timed. Latency is wall time: with as many threads as
   * cores, one more busy thread slows every forward, and a large and a small model unequally,
   * so the measured speedup moves with it (one model: 1.74x under load, 1.96x idle). The job
   * reports the figure and warns; it does not pretend to correct for it. */
  double others = lt_busy_others(&busy0, &busy1);
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  cJSON *cond = cJSON_AddObjectToObject(res, "latency_conditions");
  cJSON_AddNumberToObject(cond, "cores", (double)cores);
  cJSON_AddNumberToObject(cond, "seconds", busy1.wall - busy0.wall);
  /* OpenMP's wait policy moves small-batch latency several-fold (a futex wake-up per operator
   * when passive, which main_lathe.c sets unless the environment has a policy: the dense
   * ResNet-20 at batch 1 took 2.6 ms against 0.4 ms with active waiting) */
  const char *wait = getenv("OMP_WAIT_POLICY");
  cJSON_AddStringToObject(cond, "omp_wait_policy", wait && *wait ? wait : "default");
  if (isnan(others)) {
    cJSON_AddNullToObject(cond, "other_busy_cores");
  } else {
    cJSON_AddNumberToObject(cond, "other_busy_cores", others);
    if (others > 0.25) {
      char note[256];
      snprintf(note, sizeof note,
               "other work kept %.2f of %ld cores busy while the latencies were timed: the "
               "measured latencies and speedup are less reliable; time on an idle worker",
               others, cores);
      job_emit_log(job, "warn", "%s", note);
      cJSON_AddStringToObject(res, "latency_note", note);
    }
  }
  if (foreign) {
    cJSON_AddNullToObject(res, "latency_ms_predicted");
    cJSON_AddNullToObject(res, "latency_prediction_error");
  } else {
    cJSON_AddNumberToObject(res, "latency_ms_predicted", pred_now);
    cJSON_AddNumberToObject(res, "latency_prediction_error", (pred_now - ms1) / ms1);
    cJSON_AddNumberToObject(res, "latency_table_scale", 1 / now_scale);
    cJSON_AddNumberToObject(res, "latency_ms_reference", ref_now);
    cJSON_AddNumberToObject(res, "latency_prediction_slope", slope_now);
  }
  cJSON_AddStringToObject(res, "device", c.be->description);
  cJSON *lt = cJSON_AddObjectToObject(res, "latency_table");
  cJSON_AddStringToObject(lt, "device", tab.device);
  cJSON_AddBoolToObject(lt, "estimated", tab.estimated);
  cJSON_AddNumberToObject(lt, "batch", tab.batch);
  cJSON_AddNumberToObject(lt, "rank_step", step);
  cJSON *tg = cJSON_AddObjectToObject(res, "target");
  cJSON_AddStringToObject(tg, "kind", jc_str(to, "kind", "flops"));
  cJSON_AddNumberToObject(tg, "value", c.target);
  cJSON_AddNumberToObject(tg, "before", before);
  double achieved = c.kind == LT_TARGET_LATENCY ? pred_ms : jc_model_cost(&c, cg, ms1);
  if (c.kind == LT_TARGET_LATENCY && foreign) achieved = jc_ranks_cost(&c, pick);
  cJSON_AddNumberToObject(tg, "achieved", achieved);
  cJSON_AddBoolToObject(tg, "met", achieved <= c.target * (1 + 1e-9));
  /* The trajectory in brief (at most 100 points) for the result view; all of it is an artifact. */
  cJSON *tj = cJSON_AddObjectToObject(res, "search_trajectory");
  cJSON *ts = cJSON_AddArrayToObject(tj, "step"), *te = cJSON_AddArrayToObject(tj, "expected_cost"),
        *ta = cJSON_AddArrayToObject(tj, "argmax_cost");
  int nt = cJSON_GetArraySize(c.traj), every = nt / 100 + 1;
  for (int i = 0; i < nt; i++) {
    if (i % every && i != nt - 1) continue;
    const cJSON *p = cJSON_GetArrayItem(c.traj, i);
    cJSON_AddItemToArray(ts, cJSON_CreateNumber(jc_num(p, "step", 0)));
    cJSON_AddItemToArray(te, cJSON_CreateNumber(jc_num(p, "expected_cost", 0)));
    cJSON_AddItemToArray(ta, cJSON_CreateNumber(jc_num(p, "argmax_cost", 0)));
  }
  cJSON_AddItemToObject(res, "phases_s", c.phases);
  c.phases = NULL;
  job_emit_progress(job, 1, "done", 0);
  *result = res;
  res = NULL;
  rc = JOB_EXIT_OK;
done:
  cJSON_Delete(res);
  cJSON_Delete(c.phases);
  cJSON_Delete(c.traj);
  lt_lat_table_free(&tab);
  lt_graph_free(cg);
  lt_graph_free(ref);
  lt_graph_free(c.g);
  free(c.L), free(ranks), free(pick);
  lt_dataset_free(c.train);
  lt_dataset_free(c.test);
  return rc;
}
