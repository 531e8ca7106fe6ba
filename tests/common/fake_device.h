/* A device backend for tests on machines without one: the CPU backend under device number 0,
 * with the CPU optimizer kernels (lt_cpu_sgd_step / lt_cpu_adamw_step, the twins of the CUDA
 * ones) as its optim_step. The executor and the training loops take every path they take on a
 * GPU (device copies of the parameters moved with to_device / to_host, no fusion, the optimizer
 * attached to the copies); only the kernels are the CPU's. test_fake_device_optim_calls counts
 * the optimizer updates it ran. Needs engine/src on the include path. */
#ifndef LATHE_TEST_FAKE_DEVICE_H
#define LATHE_TEST_FAKE_DEVICE_H

#include "backend/cpu/kernels.h"
#include "lathe/backend.h"

static lt_backend_vtbl test_fake_device_vt;
static lt_backend test_fake_device_be;
static int64_t test_fake_device_optim_calls;

static lt_status test_fake_device_optim_step(lt_backend *be, const lt_optim_update *u,
                                             size_t count, float *w, const float *g, float *s0,
                                             float *s1, lt_err *err) {
  (void)be, (void)err;
  if (u->adamw)
    lt_cpu_adamw_step(count, u->lr, u->beta1, u->beta2, u->eps, u->weight_decay, u->step, w, g, s0,
                      s1);
  else
    lt_cpu_sgd_step(count, u->lr, u->momentum, u->dampening, u->weight_decay, u->nesterov, w, g,
                    s0, u->first);
  test_fake_device_optim_calls++;
  return LT_OK;
}

/* The backend, (re)initialised: a test may clear optim_step in test_fake_device_vt afterwards. */
static lt_backend *test_fake_device(void) {
  lt_backend *cpu = lt_backend_get("cpu", NULL);
  test_fake_device_vt = *cpu->vt;
  test_fake_device_vt.name = "cpu-as-device";
  test_fake_device_vt.optim_step = test_fake_device_optim_step;
  test_fake_device_be = *cpu;
  test_fake_device_be.vt = &test_fake_device_vt;
  test_fake_device_be.device = 0;
  return &test_fake_device_be;
}

#endif
