/* Learning-rate schedules as closed-form functions of the step, matching torch.optim.lr_scheduler
 * (StepLR, CosineAnnealingLR, LinearLR warm-up chained by SequentialLR, OneCycleLR with cosine
 * annealing). Closed form means a resumed run needs nothing but the step count. */
#include "lathe/train.h"

#include <math.h>

lt_status lt_schedule_check(const lt_schedule *s, lt_err *err) {
  if (!(s->lr >= 0) || !isfinite(s->lr))
    return lt_errorf(err, LT_ERR_INVALID, "learning rate %g must be a finite value >= 0", s->lr);
  if (s->warmup_steps < 0 ||
      (s->warmup_steps > 0 && !(s->warmup_start_factor > 0 && s->warmup_start_factor <= 1)))
    return lt_errorf(err, LT_ERR_INVALID,
                     "warm-up of %lld steps needs a start factor in (0, 1], got %g",
                     (long long)s->warmup_steps, s->warmup_start_factor);
  switch (s->kind) {
  case LT_SCHED_CONSTANT: return LT_OK;
  case LT_SCHED_STEP:
    if (s->step_size < 1 || !(s->gamma > 0) || !isfinite(s->gamma))
      return lt_errorf(err, LT_ERR_INVALID,
                       "step schedule needs step_size >= 1 and gamma > 0 (got %lld and %g)",
                       (long long)s->step_size, s->gamma);
    return LT_OK;
  case LT_SCHED_COSINE:
    if (s->total_steps <= s->warmup_steps || !(s->min_lr >= 0) || s->min_lr > s->lr)
      return lt_errorf(err, LT_ERR_INVALID,
                       "cosine schedule needs total steps (%lld) > warm-up steps (%lld) and "
                       "0 <= min_lr (%g) <= lr (%g)",
                       (long long)s->total_steps, (long long)s->warmup_steps, s->min_lr, s->lr);
    return LT_OK;
  case LT_SCHED_ONECYCLE:
    if (s->warmup_steps)
      return lt_errorf(err, LT_ERR_INVALID,
                       "one-cycle has its own warm-up (pct_start); set warm-up steps to 0");
    if (s->total_steps < 2 || !(s->pct_start > 0 && s->pct_start < 1) || !(s->div_factor > 0) ||
        !(s->final_div_factor > 0) || s->pct_start * (double)s->total_steps < 2.0)
      return lt_errorf(err, LT_ERR_INVALID,
                       "one-cycle needs total steps >= 2, pct_start in (0, 1) with at least 2 "
                       "rising steps, and positive div factors");
    return LT_OK;
  }
  return lt_errorf(err, LT_ERR_INVALID, "unknown schedule kind %d", s->kind);
}

/* torch's _annealing_cos: from start at pct 0 to end at pct 1. */
static double sched_cos(double start, double end, double pct) {
  return end + (start - end) / 2.0 * (cos(M_PI * pct) + 1.0);
}

double lt_schedule_lr(const lt_schedule *s, int64_t step) {
  if (s->kind == LT_SCHED_ONECYCLE) {
    /* OneCycleLR, two phases: step 0 .. pct*T-1 rises, then falls to step T-1. */
    double initial = s->lr / s->div_factor, final = initial / s->final_div_factor;
    double end1 = s->pct_start * (double)s->total_steps - 1.0, end2 = (double)s->total_steps - 1.0;
    double t = (double)step;
    if (t <= end1) return sched_cos(initial, s->lr, t / end1);
    if (t > end2) t = end2;
    return sched_cos(s->lr, final, (t - end1) / (end2 - end1));
  }
  const int64_t w = s->warmup_steps;
  if (step < w) {
    double f = s->warmup_start_factor + (1.0 - s->warmup_start_factor) * (double)step / (double)w;
    return s->lr * f;
  }
  const int64_t t = step - w;
  switch (s->kind) {
  case LT_SCHED_STEP: return s->lr * pow(s->gamma, (double)(t / s->step_size));
  case LT_SCHED_COSINE: {
    double span = (double)(s->total_steps - w), tt = (double)t < span ? (double)t : span;
    return sched_cos(s->lr, s->min_lr, tt / span);
  }
  default: return s->lr;
  }
}
