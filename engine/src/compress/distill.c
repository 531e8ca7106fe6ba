/* Knowledge distillation for the fine-tuning after compression (../shared/specs/compress.md:
 * "fine-tuned ... optionally distilled from the original model"): the loss of Hinton et al.,
 *   alpha·T²·KL(softmax(t/T) ‖ softmax(s/T)) + (1 − alpha)·CE(s, y),
 * and a teacher that runs the original model in inference mode on each training batch, plugged
 * into lt_train_run through its loss hook (lathe/train.h). */
#include "lathe/backend.h"
#include "lathe/compress.h"
#include "lathe/train.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* log-softmax of x/temp (k) into lp; double throughout, so T² scaling does not amplify rounding. */
static void ds_log_softmax(int k, const float *x, double temp, double *lp) {
  double mx = x[0];
  for (int j = 1; j < k; j++) mx = x[j] > mx ? x[j] : mx;
  double s = 0;
  for (int j = 0; j < k; j++) s += exp((x[j] - mx) / temp);
  double lse = log(s);
  for (int j = 0; j < k; j++) lp[j] = (x[j] - mx) / temp - lse;
}

double lt_distill_loss(int n, int k, const float *s, const float *t, const int32_t *labels,
                       double alpha, double temp, float scale, float *ds, int64_t *correct) {
  double *buf = malloc(sizeof(double) * 3 * (size_t)(k > 0 ? k : 1));
  if (!buf || n < 0 || k < 1 || !(temp > 0)) {
    free(buf);
    return NAN;
  }
  double *lps = buf, *lpt = buf + k, *lp1 = buf + 2 * k;
  double loss = 0;
  int64_t hits = 0;
  for (int i = 0; i < n; i++) {
    const float *si = s + (size_t)i * k, *ti = t + (size_t)i * k;
    float *di = ds ? ds + (size_t)i * k : NULL;
    int y = labels[i], am = 0;
    for (int j = 1; j < k; j++)
      if (si[j] > si[am]) am = j;
    if (y < 0 || y >= k) {
      loss = NAN;
      if (di)
        for (int j = 0; j < k; j++) di[j] = NAN;
      continue;
    }
    hits += am == y;
    ds_log_softmax(k, si, temp, lps);
    ds_log_softmax(k, ti, temp, lpt);
    ds_log_softmax(k, si, 1.0, lp1);
    double kl = 0;
    for (int j = 0; j < k; j++) {
      double pt = exp(lpt[j]);
      if (pt > 0) kl += pt * (lpt[j] - lps[j]);
    }
    loss += alpha * temp * temp * kl - (1 - alpha) * lp1[y];
    if (di)
      for (int j = 0; j < k; j++) {
        /* d/ds_j: alpha·T·(p_s − p_t) at temperature T, (1 − alpha)(softmax(s)_j − [j = y]) */
        double g = alpha * temp * (exp(lps[j]) - exp(lpt[j])) +
                   (1 - alpha) * (exp(lp1[j]) - (j == y));
        di[j] = (float)(g * scale);
      }
  }
  free(buf);
  if (correct) *correct = hits;
  return loss;
}

struct lt_distiller {
  lt_exec *ex;
  lt_backend *be;
  int batch, k;
  size_t in_per;
  double alpha, temp;
  float *tout; /* (batch, k) teacher logits */
};

lt_distiller *lt_distiller_create(lt_graph *teacher, lt_backend *be, int batch, double alpha,
                                  double temperature, lt_err *err) {
  if (!(alpha >= 0 && alpha <= 1) || !(temperature > 0) || !isfinite(temperature)) {
    lt_errorf(err, LT_ERR_INVALID,
              "distillation needs alpha in [0, 1] and a temperature > 0 (got %g and %g)", alpha,
              temperature);
    return NULL;
  }
  if (teacher->n_inputs != 1 || teacher->n_outputs < 1 ||
      teacher->values[teacher->outputs[0]].ndim != 1) {
    lt_errorf(err, LT_ERR_INVALID,
              "distillation needs a teacher with one input and a classifier output (classes)");
    return NULL;
  }
  lt_distiller *d = calloc(1, sizeof *d);
  if (!d) {
    lt_errorf(err, LT_ERR_NOMEM, "out of memory");
    return NULL;
  }
  const lt_value *in = &teacher->values[teacher->inputs[0]];
  d->be = be, d->batch = batch, d->alpha = alpha, d->temp = temperature;
  d->k = (int)teacher->values[teacher->outputs[0]].shape[0];
  d->in_per = (size_t)lt_shape_numel(in->ndim, in->shape);
  d->tout = malloc(sizeof(float) * (size_t)batch * (size_t)d->k);
  if (!d->tout) {
    lt_errorf(err, LT_ERR_NOMEM, "out of memory");
    lt_distiller_free(d);
    return NULL;
  }
  if (!(d->ex = lt_exec_create(teacher, batch, LT_MODE_INFER, be, NULL, err))) {
    lt_distiller_free(d);
    return NULL;
  }
  return d;
}

void lt_distiller_free(lt_distiller *d) {
  if (!d) return;
  lt_exec_free(d->ex);
  free(d->tout);
  free(d);
}

/* The loss hook: teacher forward on the batch as the student saw it, then the distillation loss. */
static lt_status ds_loss(void *user, int n, int k, const float *x, const float *out,
                         const int32_t *labels, const float *targets, float scale, float *dout,
                         double *loss_sum, int64_t *correct, lt_err *err) {
  (void)targets;
  lt_distiller *d = user;
  if (!labels || k != d->k || n > d->batch)
    return lt_errorf(err, LT_ERR_INVALID,
                     "distillation needs class labels, the teacher's %d classes (the student has "
                     "%d) and batches of at most %d (got %d)",
                     d->k, k, d->batch, n);
  *loss_sum = 0;
  *correct = 0;
  if (n == 0) return LT_OK;
  lt_status st = d->be->vt->to_device(d->be, lt_exec_input(d->ex, 0)->data, x,
                                      (size_t)n * d->in_per * sizeof(float), err);
  if (!st) st = lt_exec_forward(d->ex, err);
  if (!st)
    st = d->be->vt->to_host(d->be, d->tout, lt_exec_output(d->ex, 0)->data,
                            (size_t)n * (size_t)k * sizeof(float), err);
  if (st) return st;
  *loss_sum = lt_distill_loss(n, k, out, d->tout, labels, d->alpha, d->temp, scale, dout, correct);
  return LT_OK;
}

lt_train_loss lt_distiller_loss(lt_distiller *d) { return (lt_train_loss){.user = d, .fn = ds_loss}; }
