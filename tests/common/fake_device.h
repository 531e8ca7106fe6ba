/* A device backend for tests on machines without one: the CPU backend under device number 0,
 * with the CPU optimizer kernels (lt_cpu_sgd_step / lt_cpu_adamw_step, the twins of the CUDA
 * ones) as its optim_step. The executor and the training loops take every path they take on a
 * GPU (device copies of the parameters moved with to_device / to_host, no fusion, the optimizer
 * attached to the copies); only the kernels are the CPU's.
 *
 * Its memory is host memory, but the pointers it hands out are moved TEST_FAKE_DEVICE_OFFSET
 * bytes away, into addresses nothing maps: host code that reads or writes "device" memory
 * directly (as it could not on a GPU) crashes instead of silently working. The backend's own
 * entry points move them back before running the CPU's.
 *
 * Its activation-compression table (ac_dev.h) runs the stash's CPU twins and the CPU codec on
 * the same moved pointers, so the device stash's routing is tested here: a host-side touch of a
 * device entry crashes.
 *
 * test_fake_device_optim_calls counts the optimizer updates it ran, test_fake_device_ac_calls
 * the stash operations. Needs engine/src on the include path. */
#ifndef LATHE_TEST_FAKE_DEVICE_H
#define LATHE_TEST_FAKE_DEVICE_H

#include "actcomp/ac_dev.h"
#include "backend/cpu/kernels.h"
#include "lathe/actcomp.h"
#include "lathe/backend.h"
#include "ops/ops.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define TEST_FAKE_DEVICE_OFFSET ((uintptr_t)1 << 46)

static lt_backend_vtbl test_fake_device_vt;
static lt_backend test_fake_device_be;
static const lt_backend_vtbl *test_fake_device_cpu;
static int64_t test_fake_device_optim_calls;
static int64_t test_fake_device_ac_calls;

static void *test_fake_device_host(const void *p) {
  return p ? (void *)((uintptr_t)p - TEST_FAKE_DEVICE_OFFSET) : NULL;
}

static void *test_fake_device_alloc(lt_backend *be, size_t bytes, lt_mem_cat cat, lt_err *err) {
  void *p = test_fake_device_cpu->alloc(be, bytes, cat, err);
  return p ? (void *)((uintptr_t)p + TEST_FAKE_DEVICE_OFFSET) : NULL;
}

static void test_fake_device_free(lt_backend *be, void *p, size_t bytes, lt_mem_cat cat) {
  test_fake_device_cpu->free(be, test_fake_device_host(p), bytes, cat);
}

static lt_status test_fake_device_to_device(lt_backend *be, void *dst, const void *src,
                                            size_t bytes, lt_err *err) {
  return test_fake_device_cpu->to_device(be, test_fake_device_host(dst), src, bytes, err);
}

static lt_status test_fake_device_to_host(lt_backend *be, void *dst, const void *src,
                                          size_t bytes, lt_err *err) {
  return test_fake_device_cpu->to_host(be, dst, test_fake_device_host(src), bytes, err);
}

static lt_status test_fake_device_memset0(lt_backend *be, void *p, size_t bytes, lt_err *err) {
  return test_fake_device_cpu->memset0(be, test_fake_device_host(p), bytes, err);
}

/* The node's tensors with their data moved back to host addresses, in `keep` (6 arrays). */
static void test_fake_device_unpoison(lt_node_ctx *c, lt_tensor keep[6][LT_MAX_IO]) {
  lt_tensor **sets[6] = {c->in, c->out, c->dout, c->din, c->saved, c->aux};
  for (int s = 0; s < 6; s++)
    for (int i = 0; i < LT_MAX_IO; i++)
      if (sets[s][i] && sets[s][i]->device >= 0) {
        keep[s][i] = *sets[s][i];
        keep[s][i].data = test_fake_device_host(keep[s][i].data);
        keep[s][i].device = -1;
        sets[s][i] = &keep[s][i];
      }
  c->ws = test_fake_device_host(c->ws);
}

static lt_status test_fake_device_forward(lt_backend *be, lt_node_ctx *ctx, lt_err *err) {
  lt_node_ctx c = *ctx;
  lt_tensor keep[6][LT_MAX_IO];
  test_fake_device_unpoison(&c, keep);
  return test_fake_device_cpu->forward(be, &c, err);
}

static lt_status test_fake_device_backward(lt_backend *be, lt_node_ctx *ctx, lt_err *err) {
  lt_node_ctx c = *ctx;
  lt_tensor keep[6][LT_MAX_IO];
  test_fake_device_unpoison(&c, keep);
  return test_fake_device_cpu->backward(be, &c, err);
}

static lt_status test_fake_device_optim_step(lt_backend *be, const lt_optim_update *u,
                                             size_t count, float *w, const float *g, float *s0,
                                             float *s1, lt_err *err) {
  (void)be, (void)err;
  w = test_fake_device_host(w);
  g = test_fake_device_host(g);
  s0 = test_fake_device_host(s0);
  s1 = test_fake_device_host(s1);
  if (u->adamw)
    lt_cpu_adamw_step(count, u->lr, u->beta1, u->beta2, u->eps, u->weight_decay, u->step, w, g, s0,
                      s1);
  else
    lt_cpu_sgd_step(count, u->lr, u->momentum, u->dampening, u->weight_decay, u->nesterov, w, g,
                    s0, u->first);
  test_fake_device_optim_calls++;
  return LT_OK;
}

static lt_status test_fake_device_copy(lt_backend *be, void *dst, const void *src, size_t bytes,
                                       lt_err *err) {
  (void)be, (void)err;
  memcpy(test_fake_device_host(dst), test_fake_device_host(src), bytes);
  return LT_OK;
}

static lt_status test_fake_device_accumulate(lt_backend *be, size_t count, const float *src,
                                             float *dst, lt_err *err) {
  (void)be, (void)err;
  lt_op_cpu_pass_grad(count, test_fake_device_host(src), test_fake_device_host(dst), 1);
  return LT_OK;
}

/* ---- the stash's table: CPU twins on moved pointers ------------------------------------------ */

typedef struct test_fake_ac {
  lt_backend *be;
  lt_ac_codec *codec;
  lt_ac_buf out;
} test_fake_ac;

static void *test_fake_ac_open(lt_backend *be, lt_err *err) {
  test_fake_ac *c = calloc(1, sizeof *c);
  if (!c || !(c->codec = lt_ac_codec_new(NULL, err))) {
    free(c);
    return NULL;
  }
  c->be = be;
  return c;
}

static void test_fake_ac_close(void *ctx) {
  test_fake_ac *c = ctx;
  if (!c) return;
  lt_ac_buf_free(&c->out);
  lt_ac_codec_free(c->codec);
  free(c);
}

static lt_status test_fake_ac_encode(void *ctx, const float *x, int ndim, const int64_t *shape,
                                     double eb, const float *off, const float *scale,
                                     uint8_t **data, size_t *bytes, lt_err *err) {
  test_fake_ac *c = ctx;
  test_fake_device_ac_calls++;
  x = test_fake_device_host(x);
  lt_status st = off ? lt_ac_encode_affine(c->codec, x, ndim, shape, eb, off, scale, &c->out, err)
                     : lt_ac_encode(c->codec, LT_AC_KIND_LORENZO, x, ndim, shape, eb, &c->out, err);
  if (st) return st;
  if (!(*data = test_fake_device_alloc(c->be, c->out.len, LT_MEM_SAVED, err)))
    return err ? err->status : LT_ERR_NOMEM;
  memcpy(test_fake_device_host(*data), c->out.data, c->out.len);
  *bytes = c->out.len;
  return LT_OK;
}

static lt_status test_fake_ac_decode(void *ctx, const uint8_t *data, size_t bytes, float *y,
                                     int64_t n, lt_err *err) {
  test_fake_device_ac_calls++;
  return lt_ac_decode(((test_fake_ac *)ctx)->codec, test_fake_device_host(data), bytes,
                      test_fake_device_host(y), n, err);
}

static lt_status test_fake_ac_mask1_pack(void *ctx, const float *y, int64_t n, uint8_t *mask,
                                         int64_t *nnz, lt_err *err) {
  (void)ctx, (void)err;
  test_fake_device_ac_calls++;
  *nnz = ac_mask1_pack(test_fake_device_host(y), n, test_fake_device_host(mask));
  return LT_OK;
}

static lt_status test_fake_ac_mask1_unpack(void *ctx, const uint8_t *mask, int64_t n, float *y,
                                           lt_err *err) {
  (void)ctx, (void)err;
  test_fake_device_ac_calls++;
  ac_mask1_unpack(test_fake_device_host(mask), n, test_fake_device_host(y));
  return LT_OK;
}

static lt_status test_fake_ac_pack2(void *ctx, const uint8_t *a, int64_t n, uint8_t *p,
                                    int *fits, lt_err *err) {
  (void)ctx, (void)err;
  test_fake_device_ac_calls++;
  const uint8_t *h = test_fake_device_host(a);
  *fits = 1;
  for (int64_t i = 0; i < n && *fits; i++) *fits = h[i] <= 3;
  if (*fits) lt_cpu_argmax_pack2((size_t)n, h, test_fake_device_host(p));
  return LT_OK;
}

static lt_status test_fake_ac_unpack2(void *ctx, const uint8_t *p, int64_t n, uint8_t *a,
                                      lt_err *err) {
  (void)ctx, (void)err;
  test_fake_device_ac_calls++;
  lt_cpu_argmax_unpack2((size_t)n, test_fake_device_host(p), test_fake_device_host(a));
  return LT_OK;
}

static lt_status test_fake_ac_chan_map(void *ctx, float *y, const float *z, int64_t batch,
                                       int64_t nchan, int64_t hw, const float *a, const float *b,
                                       const uint8_t *mask, lt_err *err) {
  (void)ctx, (void)err;
  test_fake_device_ac_calls++;
  ac_chan_map(test_fake_device_host(y), test_fake_device_host(z), batch, nchan, hw, a, b,
              test_fake_device_host(mask));
  return LT_OK;
}

static lt_status test_fake_ac_count_zeros(void *ctx, const float *x, int64_t n, int64_t *zeros,
                                          lt_err *err) {
  (void)ctx, (void)err;
  test_fake_device_ac_calls++;
  *zeros = ac_count_zeros(test_fake_device_host(x), n);
  return LT_OK;
}

static lt_status test_fake_ac_sum_pow(void *ctx, const float *x, int64_t n, int p, double *sum,
                                      lt_err *err) {
  (void)ctx, (void)err;
  test_fake_device_ac_calls++;
  *sum = ac_sum_pow(test_fake_device_host(x), n, p);
  return LT_OK;
}

static const ac_dev_ops test_fake_ac_ops = {
    test_fake_ac_open,        test_fake_ac_close,       test_fake_ac_encode,
    test_fake_ac_decode,      test_fake_ac_mask1_pack,  test_fake_ac_mask1_unpack,
    test_fake_ac_pack2,       test_fake_ac_unpack2,     test_fake_ac_chan_map,
    test_fake_ac_count_zeros, test_fake_ac_sum_pow};

/* The backend, (re)initialised: a test may clear optim_step in test_fake_device_vt afterwards. */
static lt_backend *test_fake_device(void) {
  lt_backend *cpu = lt_backend_get("cpu", NULL);
  test_fake_device_cpu = cpu->vt;
  test_fake_device_vt = *cpu->vt;
  test_fake_device_vt.name = "cpu-as-device";
  test_fake_device_vt.alloc = test_fake_device_alloc;
  test_fake_device_vt.free = test_fake_device_free;
  test_fake_device_vt.to_device = test_fake_device_to_device;
  test_fake_device_vt.to_host = test_fake_device_to_host;
  test_fake_device_vt.memset0 = test_fake_device_memset0;
  test_fake_device_vt.forward = test_fake_device_forward;
  test_fake_device_vt.backward = test_fake_device_backward;
  test_fake_device_vt.optim_step = test_fake_device_optim_step;
  test_fake_device_vt.copy = test_fake_device_copy;
  test_fake_device_vt.accumulate = test_fake_device_accumulate;
  test_fake_device_vt.actcomp = &test_fake_ac_ops;
  test_fake_device_be = *cpu;
  test_fake_device_be.vt = &test_fake_device_vt;
  test_fake_device_be.device = 0;
  return &test_fake_device_be;
}

#endif
