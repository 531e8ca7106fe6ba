/* Benchmark: ResNet-20 trained through lt_train_run on one backend (the CPU, or a GPU with the
 * device stash) on real CIFAR-10 images, once exact and once with activation compression as a
 * train job runs it by default with lossy batch-norm inputs (adaptive, rho 0.1, W 20, the first
 * window exact), from the same initialisation on the same batches. Prints, per run, the steps,
 * images/s, the last epoch's mean loss and the saved-activation bytes: the stash's own peak
 * (dense: what exact storage of what it kept takes; held: what it holds, codec metadata
 * included), both after the first window, and the allocator's LT_MEM_SAVED peak over the same
 * steps (on a device: its memory, plus the entries' small host metadata). The exact run's
 * allocator figure is what the executor keeps for backward without a stash.
 *
 *   actcomp_bench_device DATA.h5 SPLIT [DEVICE] [EPOCHS] [BATCH]
 *
 * tests/gpu/check.sh runs it on the GPU with the 2048 CIFAR-10 test images it carries (a few
 * epochs), and it runs the same here on the CPU. One JSON line per run, then a table. */
#include "lathe/actcomp.h"
#include "lathe/backend.h"
#include "lathe/data.h"
#include "lathe/train.h"
#include "lathe/zoo.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct run {
  const char *name;
  lt_ac_stash *st;
  int window;             /* steps of the exact first window (0: none) */
  int64_t step;
  lt_mem_stats mem;       /* allocator peaks since the window ended */
  lt_ac_report rep;
  lt_train_result res;
} run;

static int on_step(void *user, const lt_train_progress *p) {
  run *r = user;
  r->step = p->step;
  if (r->st) lt_ac_stash_step_end(r->st);
  if (p->step == r->window) { /* the peaks of compressed training only, as the job reports */
    lt_mem_reset_peaks();
    if (r->st) lt_ac_stash_reset_peaks(r->st);
  }
  return 0;
}

static int train(run *r, lt_backend *be, lt_dataset *ds, int epochs, int batch) {
  lt_err err = {0};
  lt_zoo_opts zo = {.seed = 1};
  lt_graph *g = lt_zoo_build("resnet20", &zo, &err);
  if (!g) {
    fprintf(stderr, "actcomp_bench_device: %s\n", err.msg);
    return -1;
  }
  lt_train_config c = lt_train_config_default();
  c.train = ds;
  c.batch_size = batch;
  c.epochs = epochs;
  c.optim = lt_optim_config_default(LT_OPTIM_SGD);
  c.optim.momentum = 0.9f;
  c.optim.weight_decay = 5e-4f;
  c.sched = (lt_schedule){.kind = LT_SCHED_CONSTANT, .lr = 0.05};
  c.batch.norm = (lt_norm){.n = 3, .mean = {0.4914f, 0.4822f, 0.4465f},
                           .std = {0.247f, 0.2435f, 0.2616f}};
  c.batch.pad = 4;
  c.batch.flip = 1;
  c.seed = 1;
  c.on_step = on_step;
  c.user = r;
  c.stash = r->st ? lt_ac_stash_policy(r->st) : NULL;
  lt_mem_reset_peaks();
  lt_status st = lt_train_run(g, be, &c, &r->res, &err);
  lt_graph_free(g);
  if (st) {
    fprintf(stderr, "actcomp_bench_device: %s run: %s\n", r->name, err.msg);
    return -1;
  }
  lt_mem_get_stats(&r->mem);
  if (r->st) lt_ac_stash_report(r->st, &r->rep);
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: actcomp_bench_device DATA.h5 SPLIT [DEVICE] [EPOCHS] [BATCH]\n");
    return 2;
  }
  const char *device = argc > 3 ? argv[3] : "cpu";
  const int epochs = argc > 4 ? atoi(argv[4]) : 3, batch = argc > 5 ? atoi(argv[5]) : 128;
  lt_err err = {0};
  lt_backend *be = lt_backend_get(device, &err);
  if (!be) {
    printf("SKIP: %s\n", err.msg);
    return 77;
  }
  lt_dataset_opts o = {.num_classes = 10};
  lt_dataset *ds = lt_dataset_load(argv[1], argv[2], &o, &err);
  if (!ds) {
    fprintf(stderr, "actcomp_bench_device: %s\n", err.msg);
    return 1;
  }
  lt_ac_config cfg = lt_ac_config_default();
  cfg.bn_mode = LT_AC_BN_LOSSY;
  run runs[2] = {{.name = "exact", .window = cfg.window},
                 {.name = "adaptive", .window = cfg.window}};
  if (!(runs[1].st = lt_ac_stash_new(&cfg, &err))) {
    fprintf(stderr, "actcomp_bench_device: %s\n", err.msg);
    return 1;
  }
  if (ds->n / batch * epochs <= cfg.window) {
    fprintf(stderr, "actcomp_bench_device: %d epochs of %lld images at batch %d end within the "
            "first window of %d steps; give more epochs\n", epochs, (long long)ds->n, batch,
            cfg.window);
    return 2;
  }
  for (int i = 0; i < 2; i++) {
    if (train(&runs[i], be, ds, epochs, batch)) return 1;
    const run *r = &runs[i];
    printf("{\"run\":\"%s\",\"device\":\"%s\",\"batch\":%d,\"steps\":%lld,\"images_per_s\":%.1f,"
           "\"train_loss\":%.4f,\"alloc_saved_peak\":%lld,\"stash_peak_dense\":%lld,"
           "\"stash_peak_held\":%lld}\n",
           r->name, be->description, batch, (long long)r->res.steps, r->res.samples_per_s,
           r->res.train_loss, (long long)r->mem.peak[LT_MEM_SAVED], (long long)r->rep.peak_dense,
           (long long)r->rep.peak_held);
  }
  const run *x = &runs[0], *a = &runs[1];
  printf("ResNet-20 on %s, batch %d, %lld steps (peaks after step %d): exact %.0f img/s, "
         "adaptive %.0f img/s (%.2fx)\n",
         device, batch, (long long)a->res.steps, cfg.window, x->res.samples_per_s,
         a->res.samples_per_s, a->res.samples_per_s / x->res.samples_per_s);
  printf("  stash peak: %.1f MB dense, %.2f MB held: %.2fx smaller\n", a->rep.peak_dense / 1e6,
         a->rep.peak_held / 1e6, (double)a->rep.peak_dense / (double)a->rep.peak_held);
  printf("  allocator LT_MEM_SAVED peak: exact %.1f MB, adaptive %.2f MB: %.2fx smaller\n",
         x->mem.peak[LT_MEM_SAVED] / 1e6, a->mem.peak[LT_MEM_SAVED] / 1e6,
         (double)x->mem.peak[LT_MEM_SAVED] / (double)a->mem.peak[LT_MEM_SAVED]);
  printf("  train loss (last epoch): exact %.4f, adaptive %.4f\n", x->res.train_loss,
         a->res.train_loss);
  lt_ac_stash_free(runs[1].st);
  lt_dataset_free(ds);
  return 0;
}
