/* Optimizers over lists of parameter tensors: SGD (momentum, dampening, Nesterov, L2 weight
 * decay) and AdamW (decoupled weight decay), with the update arithmetic of torch.optim. The
 * per-element updates are the CPU kernels lt_cpu_sgd_step / lt_cpu_adamw_step; this file owns
 * the state buffers and the step count that checkpoints save. */
#include "lathe/train.h"
#include "lathe/backend.h"
#include "backend/cpu/kernels.h"
#include "backend/cpu/kernels_fused.h"

#include <math.h>
#include <string.h>

lt_optim_config lt_optim_config_default(lt_optim_kind kind) {
  lt_optim_config c = {.kind = kind};
  if (kind == LT_OPTIM_ADAMW) {
    c.beta1 = 0.9f;
    c.beta2 = 0.999f;
    c.eps = 1e-8f;
    c.weight_decay = 0.01f;
  }
  return c;
}

lt_status lt_optim_config_check(const lt_optim_config *c, lt_err *err) {
  if (c->kind != LT_OPTIM_SGD && c->kind != LT_OPTIM_ADAMW)
    return lt_errorf(err, LT_ERR_INVALID, "unknown optimizer kind %d; use sgd or adamw", c->kind);
  if (!(c->weight_decay >= 0) || !isfinite(c->weight_decay))
    return lt_errorf(err, LT_ERR_INVALID, "weight decay %g must be a finite value >= 0",
                     (double)c->weight_decay);
  if (c->kind == LT_OPTIM_SGD) {
    if (!(c->momentum >= 0 && c->momentum < 1))
      return lt_errorf(err, LT_ERR_INVALID, "SGD momentum %g must lie in [0, 1)",
                       (double)c->momentum);
    if (!(c->dampening >= 0 && c->dampening <= 1))
      return lt_errorf(err, LT_ERR_INVALID, "SGD dampening %g must lie in [0, 1]",
                       (double)c->dampening);
    if (c->nesterov && (c->momentum <= 0 || c->dampening != 0))
      return lt_errorf(err, LT_ERR_INVALID,
                       "Nesterov momentum needs momentum > 0 and dampening 0 (got %g and %g)",
                       (double)c->momentum, (double)c->dampening);
  } else {
    if (!(c->beta1 >= 0 && c->beta1 < 1) || !(c->beta2 >= 0 && c->beta2 < 1))
      return lt_errorf(err, LT_ERR_INVALID, "AdamW betas (%g, %g) must lie in [0, 1)",
                       (double)c->beta1, (double)c->beta2);
    if (!(c->eps > 0) || !isfinite(c->eps))
      return lt_errorf(err, LT_ERR_INVALID, "AdamW eps %g must be a finite value > 0",
                       (double)c->eps);
  }
  return LT_OK;
}

static int optim_slots(const lt_optim_config *c) {
  if (c->kind == LT_OPTIM_ADAMW) return 2;
  return c->momentum != 0 ? 1 : 0;
}

/* Entries of the params and state arrays, never 0 so that an empty model still allocates. */
static size_t optim_count(int n, int slots) {
  size_t k = (size_t)n * (size_t)slots;
  return k ? k : 1;
}

lt_optim *lt_optim_create(const lt_optim_config *c, int n, lt_tensor *const *params, lt_err *err) {
  if (lt_optim_config_check(c, err)) return NULL;
  if (n < 0) {
    lt_errorf(err, LT_ERR_INVALID, "optimizer over %d parameters", n);
    return NULL;
  }
  for (int i = 0; i < n; i++) {
    if (params[i]->dtype != LT_F32 || params[i]->device >= 0) {
      lt_errorf(err, LT_ERR_UNSUPPORTED,
                "parameter %d is %s in %s memory; optimizers update float32 host tensors", i,
                lt_dtype_name(params[i]->dtype), params[i]->device >= 0 ? "device" : "host");
      return NULL;
    }
  }
  lt_optim *o = lt_calloc(LT_MEM_OTHER, sizeof *o, err);
  if (!o) return NULL;
  o->cfg = *c;
  o->n = n;
  o->n_slots = optim_slots(c);
  o->params = lt_calloc(LT_MEM_OTHER, optim_count(n, 1) * sizeof *o->params, err);
  o->state = lt_calloc(LT_MEM_OTHER, optim_count(n, o->n_slots) * sizeof *o->state, err);
  if (!o->params || !o->state) {
    lt_optim_free(o);
    return NULL;
  }
  for (int i = 0; i < n; i++) {
    o->params[i] = params[i];
    for (int s = 0; s < o->n_slots; s++) {
      o->state[i * o->n_slots + s] = lt_calloc(LT_MEM_OPTIMIZER, lt_tensor_nbytes(params[i]), err);
      if (!o->state[i * o->n_slots + s]) {
        lt_optim_free(o);
        return NULL;
      }
    }
  }
  return o;
}

/* The device state buffers, freed (attached optimizers only). */
static void optim_detach(lt_optim *o) {
  if (!o->dstate) return;
  for (int i = 0; i < o->n; i++)
    for (int s = 0; s < o->n_slots; s++)
      o->be->vt->free(o->be, o->dstate[i * o->n_slots + s], lt_tensor_nbytes(o->params[i]),
                      LT_MEM_OPTIMIZER);
  lt_free(LT_MEM_OTHER, o->dstate, optim_count(o->n, o->n_slots) * sizeof *o->dstate);
  lt_free(LT_MEM_OTHER, o->dparams, optim_count(o->n, 1) * sizeof *o->dparams);
  o->dstate = NULL;
  o->dparams = NULL;
  o->be = NULL;
}

lt_status lt_optim_check_backend(const lt_backend *be, lt_err *err) {
  if (!be || be->device < 0 || be->vt->optim_step) return LT_OK;
  return lt_errorf(err, LT_ERR_UNSUPPORTED,
                   "backend %s has no device optimizer; train with device cpu", be->vt->name);
}

lt_status lt_optim_attach(lt_optim *o, lt_backend *be, lt_tensor *const *dparams, lt_err *err) {
  if (!be || be->device < 0) return LT_OK;
  if (o->be)
    return lt_errorf(err, LT_ERR_INVALID, "optimizer is already attached to %s", o->be->vt->name);
  lt_status st = lt_optim_check_backend(be, err);
  if (st) return st;
  for (int i = 0; i < o->n; i++)
    if (!dparams[i] || dparams[i]->dtype != LT_F32 ||
        !lt_shape_equal(dparams[i]->ndim, dparams[i]->shape, o->params[i]->ndim,
                        o->params[i]->shape))
      return lt_errorf(err, LT_ERR_INVALID,
                       "device copy of parameter %d is missing or does not match its shape", i);
  o->dparams = lt_calloc(LT_MEM_OTHER, optim_count(o->n, 1) * sizeof *o->dparams, err);
  o->dstate = lt_calloc(LT_MEM_OTHER, optim_count(o->n, o->n_slots) * sizeof *o->dstate, err);
  o->be = be;
  if (!o->dparams || !o->dstate) {
    optim_detach(o);
    return LT_ERR_NOMEM;
  }
  for (int i = 0; i < o->n; i++) {
    o->dparams[i] = dparams[i];
    const size_t bytes = lt_tensor_nbytes(o->params[i]);
    for (int s = 0; s < o->n_slots; s++) {
      const int k = i * o->n_slots + s;
      lt_status st = (o->dstate[k] = be->vt->alloc(be, bytes, LT_MEM_OPTIMIZER, err))
                         ? be->vt->to_device(be, o->dstate[k], o->state[k], bytes, err)
                         : (err ? err->status : LT_ERR_NOMEM);
      if (st) {
        optim_detach(o);
        return lt_err_prefix(err, "moving the optimizer state to %s", be->vt->name);
      }
    }
  }
  return LT_OK;
}

lt_status lt_optim_sync_to_host(lt_optim *o, lt_err *err) {
  for (int i = 0; o->be && i < o->n; i++)
    for (int s = 0; s < o->n_slots; s++) {
      const int k = i * o->n_slots + s;
      lt_status st = o->be->vt->to_host(o->be, o->state[k], o->dstate[k],
                                        lt_tensor_nbytes(o->params[i]), err);
      if (st) return lt_err_prefix(err, "bringing the optimizer state back from the device");
    }
  return LT_OK;
}

void lt_optim_free(lt_optim *o) {
  if (!o) return;
  optim_detach(o);
  if (o->state && o->params) {
    for (int i = 0; i < o->n; i++)
      for (int s = 0; s < o->n_slots; s++)
        if (o->params[i])
          lt_free(LT_MEM_OPTIMIZER, o->state[i * o->n_slots + s], lt_tensor_nbytes(o->params[i]));
  }
  lt_free(LT_MEM_OTHER, o->state, optim_count(o->n, o->n_slots) * sizeof *o->state);
  lt_free(LT_MEM_OTHER, o->params, optim_count(o->n, 1) * sizeof *o->params);
  lt_free(LT_MEM_OTHER, o, sizeof *o);
}

lt_status lt_optim_step(lt_optim *o, lt_tensor *const *grads, float lr, lt_err *err) {
  if (!isfinite(lr) || lr < 0)
    return lt_errorf(err, LT_ERR_INVALID, "learning rate %g must be a finite value >= 0",
                     (double)lr);
  for (int i = 0; i < o->n; i++) {
    if (!grads[i] || !lt_shape_equal(grads[i]->ndim, grads[i]->shape, o->params[i]->ndim,
                                     o->params[i]->shape) || grads[i]->dtype != LT_F32)
      return lt_errorf(err, LT_ERR_INTERNAL,
                       "gradient %d is missing or does not match its parameter's shape", i);
  }
  const lt_optim_config *c = &o->cfg;
  o->step++;
  if (o->be) { /* attached: one queued update per tensor on the device */
    lt_optim_update u = {.adamw = c->kind == LT_OPTIM_ADAMW, .lr = lr,
                         .weight_decay = c->weight_decay, .momentum = c->momentum,
                         .dampening = c->dampening, .nesterov = c->nesterov,
                         .first = o->step == 1, .beta1 = c->beta1, .beta2 = c->beta2,
                         .eps = c->eps, .step = o->step};
    for (int i = 0; i < o->n; i++) {
      float *s0 = o->n_slots ? o->dstate[i * o->n_slots] : NULL;
      float *s1 = o->n_slots > 1 ? o->dstate[i * o->n_slots + 1] : NULL;
      lt_status st = o->be->vt->optim_step(o->be, &u, (size_t)lt_tensor_numel(o->params[i]),
                                           lt_tensor_f32(o->dparams[i]), lt_tensor_f32(grads[i]),
                                           s0, s1, err);
      if (st) return st;
    }
    return LT_OK;
  }
  /* One parallel pass over all parameters: the tensors are cut into chunks of at most
   * OPTIM_CHUNK elements, dealt statically to the threads (one fork/join per step instead of
   * one per tensor; the update of each element is the same). */
  enum { OPTIM_CHUNK = 8192 };
  int64_t chunks = 0;
  for (int i = 0; i < o->n; i++)
    chunks += (lt_tensor_numel(o->params[i]) + OPTIM_CHUNK - 1) / OPTIM_CHUNK;
#pragma omp parallel for schedule(static)
  for (int64_t k = 0; k < chunks; k++) {
    int i = 0;
    int64_t first = k, n_i = 0;
    for (;; i++) { /* the tensor of chunk k (a few dozen tensors: a linear walk is fine) */
      n_i = (lt_tensor_numel(o->params[i]) + OPTIM_CHUNK - 1) / OPTIM_CHUNK;
      if (first < n_i) break;
      first -= n_i;
    }
    const size_t count = (size_t)lt_tensor_numel(o->params[i]);
    const size_t lo = (size_t)first * OPTIM_CHUNK;
    const size_t hi = lo + OPTIM_CHUNK < count ? lo + OPTIM_CHUNK : count;
    float *w = lt_tensor_f32(o->params[i]);
    const float *g = lt_tensor_f32(grads[i]);
    if (c->kind == LT_OPTIM_SGD)
      lt_cpu_sgd_step_range(lo, hi, lr, c->momentum, c->dampening, c->weight_decay, c->nesterov,
                            w, g, o->n_slots ? o->state[i] : NULL, o->step == 1);
    else
      lt_cpu_adamw_step_range(lo, hi, lr, c->beta1, c->beta2, c->eps, c->weight_decay, o->step, w,
                              g, o->state[2 * i], o->state[2 * i + 1]);
  }
  return LT_OK;
}
