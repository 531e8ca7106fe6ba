/* Training on a device backend (lt_train_run with be->device >= 0), checked without a GPU on the
 * CPU backend posing as one (fake_device.h). The executor then takes every device path it takes
 * on CUDA (its own parameter copies, moved with to_device / to_host, no fusion), and so does the
 * loop: the optimizer attached to those copies, the graph brought up to date only before
 * validation, checkpoints and epoch ends, resume. What CUDA adds on top (its kernels, the
 * optimizer kernels among them) is checked against the CPU by tests/gpu/test_cuda_conformance.c.
 *
 * Activation compression on the device: the stash keeps its entries in device memory and runs
 * through the backend's table (ac_dev.h; the fake device's runs the CPU twins on moved pointers),
 * and training with it matches training with the host stash.
 *
 * With LATHE_TEST_BACKEND=cuda (ctest gpu.train, tests/gpu/check.sh) the loop cases run on that
 * backend instead, with tolerances for its own arithmetic (cuDNN and cuBLAS sum in other orders,
 * and not always the same order twice); exit 77 when it is not available. */
#include "test.h"

#include "fake_device.h"
#include "lathe/actcomp.h"
#include "lathe/backend.h"
#include "lathe/data.h"
#include "lathe/graph.h"
#include "lathe/train.h"
#include "lathe/zoo.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { C = 3, H = 8, W = 8, CLASSES = 4, N_TRAIN = 96, N_VAL = 32, BATCH = 16 };

static lt_backend *real; /* LATHE_TEST_BACKEND's backend, or NULL: the fake device */

/* The device under test, fresh. */
static lt_backend *device_under_test(void) { return real ? real : test_fake_device(); }

/* ---- the optimizer, attached ----------------------------------------------------------------- */

static void optimizer_case(lt_optim_kind kind) {
  enum { NP = 2, STEPS = 4 };
  const int64_t sizes[NP] = {37, 5};
  lt_backend *be = test_fake_device();
  lt_err err = {0};
  /* host: the plain optimizer's parameters; mirror: the attached one's host side, which stays
   * put; copy and dgrad: the parameters and gradients in device memory */
  lt_tensor *host[NP], *mirror[NP], *grad[NP], copy[NP], dgrad[NP], *cp[NP], *dg[NP];
  float back[37];
  lt_rng r = lt_rng_make(7, kind);
  for (int i = 0; i < NP; i++) {
    host[i] = lt_tensor_new(LT_F32, 1, &sizes[i], LT_MEM_WEIGHTS, NULL);
    mirror[i] = lt_tensor_new(LT_F32, 1, &sizes[i], LT_MEM_WEIGHTS, NULL);
    grad[i] = lt_tensor_new(LT_F32, 1, &sizes[i], LT_MEM_GRADIENTS, NULL);
    REQUIRE(host[i] && mirror[i] && grad[i]);
    const size_t bytes = lt_tensor_nbytes(host[i]);
    copy[i] = dgrad[i] = *host[i];
    copy[i].device = dgrad[i].device = 0;
    copy[i].data = be->vt->alloc(be, bytes, LT_MEM_WEIGHTS, &err);
    dgrad[i].data = be->vt->alloc(be, bytes, LT_MEM_GRADIENTS, &err);
    REQUIRE(copy[i].data && dgrad[i].data);
    cp[i] = &copy[i];
    dg[i] = &dgrad[i];
    for (int64_t j = 0; j < sizes[i]; j++)
      lt_tensor_f32(host[i])[j] = lt_tensor_f32(mirror[i])[j] = lt_rng_normal(&r);
    REQUIRE(be->vt->to_device(be, copy[i].data, host[i]->data, bytes, &err) == LT_OK);
  }
  lt_optim_config c = lt_optim_config_default(kind);
  if (kind == LT_OPTIM_SGD) {
    c.momentum = 0.9f;
    c.nesterov = 1;
    c.weight_decay = 5e-4f;
  }
  lt_optim *a = lt_optim_create(&c, NP, host, &err), *b = lt_optim_create(&c, NP, mirror, &err);
  REQUIRE(a && b);
  REQUIRE(lt_optim_attach(b, be, cp, &err) == LT_OK);
  CHECK(lt_optim_attach(b, be, cp, &err) == LT_ERR_INVALID); /* once only */
  const int64_t calls0 = test_fake_device_optim_calls;
  for (int s = 0; s < STEPS; s++) {
    for (int i = 0; i < NP; i++) {
      for (int64_t j = 0; j < sizes[i]; j++) lt_tensor_f32(grad[i])[j] = lt_rng_normal(&r);
      REQUIRE(be->vt->to_device(be, dgrad[i].data, grad[i]->data, lt_tensor_nbytes(grad[i]),
                                &err) == LT_OK);
    }
    REQUIRE(lt_optim_step(a, grad, 0.05f, &err) == LT_OK);
    REQUIRE(lt_optim_step(b, dg, 0.05f, &err) == LT_OK);
  }
  CHECK(test_fake_device_optim_calls - calls0 == STEPS * NP);
  /* The device copies took the host optimizer's updates bit for bit; the mirror did not move
   * until synced, and then holds the same state. */
  for (int i = 0; i < NP; i++) {
    const size_t bytes = lt_tensor_nbytes(host[i]);
    REQUIRE(be->vt->to_host(be, back, copy[i].data, bytes, &err) == LT_OK);
    CHECK(memcmp(back, host[i]->data, bytes) == 0);
    CHECK(memcmp(mirror[i]->data, host[i]->data, bytes) != 0);
  }
  REQUIRE(b->n_slots == a->n_slots && b->n_slots > 0);
  CHECK(memcmp(b->state[0], a->state[0], lt_tensor_nbytes(host[0])) != 0);
  REQUIRE(lt_optim_sync_to_host(b, &err) == LT_OK);
  for (int k = 0; k < NP * a->n_slots; k++)
    CHECK(memcmp(b->state[k], a->state[k], lt_tensor_nbytes(host[k / a->n_slots])) == 0);
  CHECK(b->step == a->step);
  lt_optim_free(a);
  lt_optim_free(b);
  for (int i = 0; i < NP; i++) {
    be->vt->free(be, copy[i].data, lt_tensor_nbytes(host[i]), LT_MEM_WEIGHTS);
    be->vt->free(be, dgrad[i].data, lt_tensor_nbytes(host[i]), LT_MEM_GRADIENTS);
    lt_tensor_free(host[i]);
    lt_tensor_free(mirror[i]);
    lt_tensor_free(grad[i]);
  }
}

TEST_CASE(attached_optimizer_updates_the_device_copies_like_the_host_one) {
  optimizer_case(LT_OPTIM_SGD);
  optimizer_case(LT_OPTIM_ADAMW);
}

/* ---- the training loop ----------------------------------------------------------------------- */

static uint8_t xs[(N_TRAIN + N_VAL) * C * H * W];
static int32_t ys[N_TRAIN + N_VAL];
static lt_dataset train_ds, val_ds;

static void make_data(void) {
  lt_rng r = lt_rng_make(5, 0);
  /* class k brightens channel k % C in the quadrant k: learnable in a few steps */
  for (int i = 0; i < N_TRAIN + N_VAL; i++) {
    int k = ys[i] = (int)lt_rng_below(&r, CLASSES);
    for (int c = 0; c < C; c++)
      for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
          int hot = c == k % C && (y < H / 2) == (k < 2) && (x < W / 2) == (k % 2 == 0);
          xs[((size_t)i * C + c) * H * W + y * W + x] =
              (uint8_t)(lt_rng_below(&r, 96) + (hot ? 128 : 0));
        }
  }
  train_ds = (lt_dataset){.split = "train", .n = N_TRAIN, .c = C, .h = H, .w = W,
                          .x_dtype = LT_U8, .x = xs, .labels = ys, .num_classes = CLASSES};
  val_ds = train_ds;
  snprintf(val_ds.split, sizeof val_ds.split, "val");
  val_ds.n = N_VAL;
  val_ds.x = xs + (size_t)N_TRAIN * C * H * W;
  val_ds.labels = ys + N_TRAIN;
}

static lt_graph *model_named(const char *name) {
  lt_zoo_opts o = {.in_channels = C, .height = H, .width = W, .num_classes = CLASSES, .seed = 9};
  lt_graph *g = lt_zoo_build(name, &o, NULL);
  if (!g) {
    fprintf(stderr, "cannot build %s\n", name);
    exit(1);
  }
  return g;
}

static lt_graph *model(void) { return model_named("smallcnn"); }

typedef struct watch {
  lt_graph *g;
  int stop_at;       /* > 0: on_step asks to stop after this step */
  float first;       /* the host value of the first weight when the run started */
  int host_moved;    /* steps of the first epoch at whose end the host weight had changed */
  lt_ac_stash *stash; /* advanced after every step, as the train job does */
} watch;

static float first_weight(const lt_graph *g) {
  int id = -1;
  lt_train_params(g, &id, 1);
  return id >= 0 ? lt_tensor_f32(g->values[id].data)[0] : NAN;
}

static int on_step(void *user, const lt_train_progress *p) {
  watch *w = user;
  if (p->epoch == 0 && first_weight(w->g) != w->first) w->host_moved++;
  if (w->stash) lt_ac_stash_step_end(w->stash);
  return w->stop_at > 0 && p->step >= w->stop_at;
}

static lt_train_config config(lt_sched_kind sched, int64_t epochs, const char *ckpt,
                              const char *resume, watch *w) {
  lt_train_config c = lt_train_config_default();
  c.train = &train_ds;
  c.val = &val_ds;
  c.batch_size = BATCH;
  c.epochs = epochs;
  c.optim = lt_optim_config_default(LT_OPTIM_SGD);
  c.optim.momentum = 0.9f;
  c.optim.nesterov = 1;
  c.optim.weight_decay = 5e-4f;
  c.sched = (lt_schedule){.kind = sched, .lr = 0.05};
  c.batch.norm = (lt_norm){.n = C, .mean = {0.4f, 0.4f, 0.4f}, .std = {0.25f, 0.25f, 0.25f}};
  c.batch.flip = 1;
  c.seed = 3;
  c.checkpoint_path = ckpt;
  c.resume_from = resume;
  snprintf(c.meta.model, sizeof c.meta.model, "smallcnn");
  c.meta.num_classes = CLASSES;
  c.on_step = on_step;
  c.user = w;
  return c;
}

/* Largest |a - b| / (1 + |b|) over every parameter value (running statistics included). */
static double params_diff(const lt_graph *a, const lt_graph *b) {
  double worst = 0;
  for (int v = 0; v < a->n_values; v++) {
    if (a->values[v].kind != LT_VALUE_PARAM || !a->values[v].data) continue;
    const float *x = lt_tensor_f32(a->values[v].data), *y = lt_tensor_f32(b->values[v].data);
    for (int64_t i = 0; i < lt_tensor_numel(a->values[v].data); i++) {
      double d = fabs((double)x[i] - y[i]) / (1 + fabs((double)y[i]));
      worst = d > worst ? d : worst;
    }
  }
  return worst;
}

static int params_equal(const lt_graph *a, const lt_graph *b) {
  for (int v = 0; v < a->n_values; v++)
    if (a->values[v].kind == LT_VALUE_PARAM && a->values[v].data &&
        memcmp(a->values[v].data->data, b->values[v].data->data,
               lt_tensor_nbytes(a->values[v].data)))
      return 0;
  return 1;
}

/* Bitwise on the fake device; a real GPU's reductions may differ from run to run. */
static int same_params(const lt_graph *a, const lt_graph *b) {
  return real ? params_diff(a, b) < 1e-4 : params_equal(a, b);
}

static lt_status train(lt_graph *g, lt_backend *be, lt_train_config *c, watch *w,
                       lt_train_result *r, lt_err *err) {
  w->g = g;
  w->first = first_weight(g);
  w->host_moved = 0;
  return lt_train_run(g, be, c, r, err);
}

TEST_CASE(device_training_matches_cpu_training) {
  lt_graph *ref = model(), *g = model();
  watch wr = {0}, wd = {0};
  lt_train_config cr = config(LT_SCHED_COSINE, 2, NULL, NULL, &wr);
  lt_train_config cd = config(LT_SCHED_COSINE, 2, NULL, NULL, &wd);
  lt_train_result rr, rd;
  lt_err err = {0};
  REQUIRE(train(ref, lt_backend_get("cpu", NULL), &cr, &wr, &rr, &err) == LT_OK);
  const int64_t calls0 = test_fake_device_optim_calls;
  int np = lt_train_params(g, NULL, 0);
  lt_backend *dev = device_under_test();
  REQUIRE(train(g, dev, &cd, &wd, &rd, &err) == LT_OK);
  /* Every update ran on the device, and the graph's own tensors stayed put through the first
   * epoch (on the CPU they move every step). */
  if (!real) CHECK(test_fake_device_optim_calls - calls0 == rd.steps * np);
  CHECK(wd.host_moved == 0);
  CHECK(wr.host_moved == N_TRAIN / BATCH);
  /* The device path runs every node on its own where the CPU fuses ReLUs into batch norms and
   * adds: the same arithmetic up to float rounding. */
  CHECK(rd.steps == rr.steps && rd.steps == 2 * (N_TRAIN / BATCH));
  const double tol = real ? 2e-3 : 1e-4;
  double d = params_diff(g, ref);
  printf("  %s: parameters after %lld steps differ from the CPU's by %.2e (tolerance %.0e); val "
         "loss %.6f against %.6f\n", dev->vt->name, (long long)rd.steps, d, tol,
         rd.val_loss, rr.val_loss);
  CHECK_MSG(d < tol, "device and CPU parameters differ by %g", d);
  CHECK_NEAR(rd.val_loss, rr.val_loss, tol * (1 + rr.val_loss));
  CHECK_NEAR(rd.train_loss, rr.train_loss, tol * (1 + rr.train_loss));
  CHECK(rd.val_accuracy > 1.0 / CLASSES); /* it learned something */
  lt_graph_free(ref);
  lt_graph_free(g);
}

/* Resume on the device, from an epoch-end checkpoint and from one written when a run is stopped
 * mid-epoch, ends bit for bit where an uninterrupted device run ends (on a real GPU: within its
 * run-to-run tolerance): the weights, the running statistics and the optimizer state all came
 * back from the device before they were saved. */
TEST_CASE(device_checkpoints_resume_bit_exactly) {
  const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
  char a[512], b[512];
  snprintf(a, sizeof a, "%s/lathe_device_train_%d.full.h5", tmp, (int)getpid());
  snprintf(b, sizeof b, "%s/lathe_device_train_%d.h5", tmp, (int)getpid());
  lt_backend *dev = device_under_test();
  lt_err err = {0};
  lt_train_result r;
  watch w = {0};
  lt_graph *full = model();
  lt_train_config c = config(LT_SCHED_CONSTANT, 3, a, NULL, &w);
  REQUIRE(train(full, dev, &c, &w, &r, &err) == LT_OK);

  /* one epoch, then two more from its checkpoint */
  lt_graph *g = model();
  c = config(LT_SCHED_CONSTANT, 1, b, NULL, &w);
  REQUIRE(train(g, dev, &c, &w, &r, &err) == LT_OK);
  lt_graph_free(g);
  g = model();
  c = config(LT_SCHED_CONSTANT, 3, b, b, &w);
  REQUIRE(train(g, dev, &c, &w, &r, &err) == LT_OK);
  CHECK(same_params(g, full));
  lt_graph_free(g);
  unlink(b);

  /* stopped at step 9 (mid-epoch 2, a checkpoint every 4 steps besides), then resumed */
  g = model();
  w.stop_at = 9;
  c = config(LT_SCHED_CONSTANT, 3, b, NULL, &w);
  c.checkpoint_every = 4;
  CHECK(train(g, dev, &c, &w, &r, &err) == LT_ERR_CANCELLED);
  lt_graph_free(g);
  g = model();
  w.stop_at = 0;
  c = config(LT_SCHED_CONSTANT, 3, b, b, &w);
  c.checkpoint_every = 4;
  REQUIRE(train(g, dev, &c, &w, &r, &err) == LT_OK);
  CHECK(r.steps == 3 * (N_TRAIN / BATCH));
  CHECK(same_params(g, full));
  lt_graph_free(g);
  lt_graph_free(full);
  unlink(a);
  unlink(b);
}

/* Training with activation compression (adaptive bounds from the first step, lossy and then
 * exact batch-norm inputs, a sampled step every other step) on the device against the same on the CPU: smallcnn
 * has max-pool argmax and plain codec streams, resnet20 conv inputs rebuilt from batch-norm
 * entries and masks. On the fake device every form restores the same values as on the host, so
 * training is the same up to the unfused device path's rounding. On a GPU its own arithmetic
 * moves activations across quantisation steps now and then, and ResNet-20's 12 steps amplify
 * that: a CPU run whose learning rate is nudged by 1e-6 ends 8e-2 away from the plain one. So
 * there the parameters are held to 3 times what such a nudge gives on the CPU (2e-2 at least),
 * beside the loss, the bytes and the per-layer figures. */
TEST_CASE(device_stash_matches_the_host_stash) {
  static const char *const names[] = {"smallcnn", "resnet20"};
  for (int m = 0; m < 4; m++) { /* each model with lossy, then exact batch-norm inputs (exact
                                   copies in device memory, from which conv inputs are rebuilt) */
    lt_ac_config ac = lt_ac_config_default();
    ac.window = 3;
    ac.initial_eb = 0.02;
    ac.bn_mode = m < 2 ? LT_AC_BN_LOSSY : LT_AC_BN_EXACT;
    ac.sample_every = 2;
    ac.codec.threads = 1;
    lt_err err = {0};
    lt_ac_stash *sr = lt_ac_stash_new(&ac, &err), *sd = lt_ac_stash_new(&ac, &err);
    REQUIRE(sr && sd);
    lt_graph *ref = model_named(names[m % 2]), *g = model_named(names[m % 2]);
    watch wr = {.stash = sr}, wd = {.stash = sd};
    lt_train_config cr = config(LT_SCHED_COSINE, 2, NULL, NULL, &wr);
    lt_train_config cd = config(LT_SCHED_COSINE, 2, NULL, NULL, &wd);
    cr.stash = lt_ac_stash_policy(sr);
    cd.stash = lt_ac_stash_policy(sd);
    lt_train_result rr, rd;
    REQUIRE(train(ref, lt_backend_get("cpu", NULL), &cr, &wr, &rr, &err) == LT_OK);
    double floor = 0; /* how far a nudge of the learning rate moves the CPU's own run */
    if (real) {
      lt_ac_stash *sn = lt_ac_stash_new(&ac, &err);
      lt_graph *gn = model_named(names[m % 2]);
      watch wn = {.stash = sn};
      lt_train_config cn = config(LT_SCHED_COSINE, 2, NULL, NULL, &wn);
      cn.stash = lt_ac_stash_policy(sn);
      cn.sched.lr *= 1 + 1e-6;
      lt_train_result rn;
      REQUIRE(sn && train(gn, lt_backend_get("cpu", NULL), &cn, &wn, &rn, &err) == LT_OK);
      floor = params_diff(gn, ref);
      lt_graph_free(gn);
      lt_ac_stash_free(sn);
    }
    const int64_t calls0 = test_fake_device_ac_calls;
    lt_backend *dev = device_under_test();
    const lt_status rs = train(g, dev, &cd, &wd, &rd, &err);
    if (rs) printf("  %s\n", err.msg);
    REQUIRE(rs == LT_OK);
    if (!real) CHECK(test_fake_device_ac_calls - calls0 > rd.steps * 4);
    lt_ac_report a, b;
    lt_ac_stash_report(sr, &a);
    const int64_t peak_dense = a.peak_dense, peak_host = a.peak_held;
    lt_ac_stash_report(sd, &b);
    const double tol = real ? fmax(2e-2, 3 * floor) : 1e-4, d = params_diff(g, ref);
    printf("  %s (batch-norm inputs %s) on %s: parameters after %lld steps differ from the CPU's "
           "by %.2e (tolerance %.1e; the CPU nudged: %.1e); train loss %.4f against %.4f; peak "
           "saved bytes %lld, held %lld on the device (%.2fx), %lld on the host (%.2fx)\n",
           names[m % 2], m < 2 ? "lossy" : "exact", dev->vt->name, (long long)rd.steps, d, tol, floor, rd.train_loss,
           rr.train_loss, (long long)b.peak_dense,
           (long long)b.peak_held, (double)b.peak_dense / (double)b.peak_held,
           (long long)peak_host, (double)peak_dense / (double)peak_host);
    CHECK_MSG(d < tol, "device and CPU parameters differ by %g", d);
    CHECK_NEAR(rd.train_loss, rr.train_loss, tol * (1 + rr.train_loss));
    CHECK(b.peak_dense == peak_dense);
    /* The device entries keep γ and β beside the statistics (8 bytes a channel); the fake
     * device's codec tries zstd on every stream, where the host stash stops trying it on nodes
     * it does not pay for; the host codes a conv input that is a ReLU output as its non-zeros
     * alone (the mask holds the zeros), the device the whole tensor; a GPU's streams are sized by
     * its own encoder (smaller Huffman chunks, no zstd pass). */
    CHECK(b.peak_held > 0 && (double)peak_dense / (double)b.peak_held > (m < 2 ? 2.5 : 1.3));
    const double held_ratio = (double)b.peak_held / (double)peak_host;
    CHECK_MSG(held_ratio > 0.95 && held_ratio < (real ? 1.3 : 1.1),
              "the device holds %.3fx the host's bytes", held_ratio);
    /* The same layers, with bounds and sampled dW errors of the same size. */
    CHECK(a.n_layers == b.n_layers);
    int sampled = 0;
    for (int i = 0; i < a.n_layers && a.n_layers == b.n_layers; i++) {
      const lt_ac_layer_report *x = &a.layers[i], *y = &b.layers[i];
      CHECK(x->node == y->node && x->kind == y->kind && x->bytes_dense == y->bytes_dense);
      CHECK_NEAR(y->eb, x->eb, (real ? 0.05 : 1e-3) * x->eb);
      CHECK(x->n_samples == y->n_samples);
      if (x->n_samples && y->n_samples) {
        CHECK_NEAR(y->mean_ratio, x->mean_ratio, (real ? 0.1 : 1e-3) * x->mean_ratio);
        sampled++;
      }
    }
    CHECK(sampled >= 2);
    lt_graph_free(ref);
    lt_graph_free(g);
    lt_ac_stash_free(sr);
    lt_ac_stash_free(sd);
  }
}

TEST_CASE(device_training_refusals_say_what_to_do) {
  lt_graph *g = model();
  watch w = {0};
  lt_train_config c = config(LT_SCHED_CONSTANT, 1, NULL, NULL, &w);
  lt_train_result r;
  lt_err err = {0};
  /* activation compression on a device whose backend has no stash operations: refused before
   * anything runs */
  lt_ac_stash *st = lt_ac_stash_new(NULL, &err);
  REQUIRE(st);
  c.stash = lt_ac_stash_policy(st);
  lt_backend *nd = test_fake_device();
  test_fake_device_vt.actcomp = NULL;
  CHECK(lt_train_run(g, nd, &c, &r, &err) == LT_ERR_UNSUPPORTED);
  CHECK_STR_CONTAINS(err.msg, "activation_compression");
  CHECK_STR_CONTAINS(err.msg, "device cpu");
  /* and by the stash itself, for an executor made without the loop */
  lt_exec_opts xo = {.stash = lt_ac_stash_policy(st)};
  CHECK(!lt_exec_create(g, BATCH, LT_MODE_TRAIN, nd, &xo, &err));
  CHECK(err.status == LT_ERR_UNSUPPORTED);
  CHECK_STR_CONTAINS(err.msg, "no device form");
  c.stash = NULL;
  lt_ac_stash_free(st);
  /* a device backend without optimizer kernels */
  lt_backend *d = test_fake_device();
  test_fake_device_vt.optim_step = NULL;
  CHECK(lt_train_run(g, d, &c, &r, &err) == LT_ERR_UNSUPPORTED);
  CHECK_STR_CONTAINS(err.msg, "no device optimizer");
  lt_graph_free(g);
}

int main(void) {
  make_data();
  const char *name = getenv("LATHE_TEST_BACKEND");
  if (name && *name) {
    lt_err err = {0};
    if (!(real = lt_backend_get(name, &err))) {
      printf("SKIP: %s\n", err.msg);
      return 77;
    }
    RUN(device_training_matches_cpu_training);
    RUN(device_checkpoints_resume_bit_exactly);
    RUN(device_stash_matches_the_host_stash);
    return test_summary();
  }
  RUN(attached_optimizer_updates_the_device_copies_like_the_host_one);
  RUN(device_training_matches_cpu_training);
  RUN(device_checkpoints_resume_bit_exactly);
  RUN(device_stash_matches_the_host_stash);
  RUN(device_training_refusals_say_what_to_do);
  return test_summary();
}
