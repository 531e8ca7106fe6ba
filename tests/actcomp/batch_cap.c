/* Benchmark: under a fixed memory cap (lt_mem_set_cap), the largest batch a model trains at, exact
 * and with activation compression. Each probe is a real lt_train_run of a few steps at that batch
 * (optimizer, executor plan, stash and codec scratch all counted); a probe passes when the run
 * ends without LT_ERR_NOMEM. The cap is BUDGET bytes on top of what the loaded split holds, so
 * the data does not count against it.
 *
 * Adaptive mode runs its first window exact by default (specs/actcomp.md), so under a cap it
 * needs the exact run's memory for those steps; with initial_eb set (a conservative 0.01 here)
 * the first window is compressed too. The probe runs past one window so that both peaks count.
 *
 * Usage: actcomp_batch_cap DATA.h5 SPLIT MODEL BUDGET_MIB MODE [EB|RHO] [STEPS]
 *   MODE off, or fixed|adaptive with suffixes -bnlossy (batch-norm inputs in the normalised
 *   domain) and, for adaptive, -exactfirst (initial_eb 0: the spec's exact first window);
 *   prints one JSON line. */
#include "lathe/actcomp.h"
#include "lathe/backend.h"
#include "lathe/train.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct probe_cfg {
  lt_dataset *ds;
  const char *model;
  int64_t budget;
  lt_ac_config ac;
  int steps;
} probe_cfg;

/* The loop's step callback: the controller's window advances after every optimizer step. */
static int step_end(void *user, const lt_train_progress *p) {
  (void)p;
  lt_ac_stash_step_end(user);
  return 0;
}

/* 1: trains at batch b under the cap; 0: ran out of memory; -1: failed for another reason. */
static int probe(const probe_cfg *p, int b, lt_mem_stats *peaks) {
  lt_err err = {0};
  lt_zoo_opts zo = {.in_channels = p->ds->c, .height = p->ds->h, .width = p->ds->w,
                    .num_classes = 10, .seed = 1};
  lt_graph *g = lt_zoo_build(p->model, &zo, &err);
  if (!g) {
    fprintf(stderr, "%s\n", err.msg);
    return -1;
  }
  lt_mem_stats ms;
  lt_mem_get_stats(&ms);
  /* Cap relative to what is held now (the split and the graph's weights), so every probe sees
   * the same budget for training state. */
  lt_mem_set_cap(ms.total_current + p->budget);
  lt_ac_stash *st = NULL;
  if (p->ac.mode != LT_AC_OFF && !(st = lt_ac_stash_new(&p->ac, &err))) {
    lt_mem_set_cap(0);
    lt_graph_free(g);
    fprintf(stderr, "%s\n", err.msg);
    return -1;
  }
  lt_train_config c = lt_train_config_default();
  c.train = p->ds;
  c.batch_size = b;
  c.max_steps = p->steps;
  c.optim.momentum = 0.9f;
  c.sched.lr = 0.05;
  c.stash = st ? lt_ac_stash_policy(st) : NULL;
  if (st) {
    c.on_step = step_end;
    c.user = st;
  }
  lt_train_result r;
  lt_status s = lt_train_run(g, lt_backend_get("cpu", &err), &c, &r, &err);
  lt_mem_set_cap(0);
  if (!s) *peaks = r.mem;
  lt_ac_stash_free(st);
  lt_graph_free(g);
  if (s == LT_ERR_NOMEM) return 0;
  if (s) {
    fprintf(stderr, "batch %d: %s\n", b, err.msg);
    return -1;
  }
  return 1;
}

int main(int argc, char **argv) {
  if (argc < 6) {
    fprintf(stderr, "usage: actcomp_batch_cap DATA.h5 SPLIT MODEL BUDGET_MIB "
                    "off|fixed|adaptive|fixed-bnlossy|adaptive-bnlossy [EB|RHO] [STEPS]\n");
    return 2;
  }
  probe_cfg p = {.model = argv[3], .budget = (int64_t)(atof(argv[4]) * 1048576.0)};
  p.ac = lt_ac_config_default();
  const char *mode = argv[5];
  p.ac.mode = !strncmp(mode, "fixed", 5) ? LT_AC_FIXED
              : !strncmp(mode, "adaptive", 8) ? LT_AC_ADAPTIVE : LT_AC_OFF;
  if (strstr(mode, "bnlossy")) p.ac.bn_mode = LT_AC_BN_LOSSY;
  p.ac.initial_eb = strstr(mode, "exactfirst") ? 0 : 0.01;
  if (argc > 6) p.ac.eb = p.ac.rho = atof(argv[6]);
  p.ac.window = 2;
  p.ac.sample_every = 0; /* sampling keeps exact copies: a measurement aid, not training state */
  p.steps = argc > 7 ? atoi(argv[7]) : 2 * p.ac.window + 1;
  lt_err err = {0};
  p.ds = lt_dataset_load(argv[1], argv[2], NULL, &err);
  if (!p.ds) {
    fprintf(stderr, "%s\n", err.msg);
    return 2;
  }
  /* Doubling from 8, then bisection to a multiple of 8. */
  int good = 0, bad = 0;
  lt_mem_stats peak = {0}, good_peak = {0};
  for (int b = 8; b <= p.ds->n; b *= 2) {
    int ok = probe(&p, b, &peak);
    if (ok < 0) return 1;
    if (!ok) {
      bad = b;
      break;
    }
    good = b;
    good_peak = peak;
  }
  if (!bad) bad = (int)p.ds->n + 1;
  while (bad - good > 8) {
    int mid = (good + bad) / 2 / 8 * 8;
    if (mid <= good) break;
    int ok = probe(&p, mid, &peak);
    if (ok < 0) return 1;
    if (ok) {
      good = mid;
      good_peak = peak;
    } else {
      bad = mid;
    }
  }
  printf("{\"model\":\"%s\",\"budget_mib\":%g,\"mode\":\"%s\",\"param\":%g,\"steps\":%d,"
         "\"initial_eb\":%g,\"largest_batch\":%d,\"first_failing_batch\":%d,\"peak_bytes\":{",
         p.model, atof(argv[4]), mode, argc > 6 ? atof(argv[6]) : 0.0, p.steps,
         p.ac.mode == LT_AC_ADAPTIVE ? p.ac.initial_eb : 0.0, good, bad);
  /* Where the memory of the largest batch that fits goes (peaks per category, and of the sum). */
  for (int k = 0; k < LT_MEM_COUNT; k++)
    printf("\"%s\":%lld,", lt_mem_cat_name((lt_mem_cat)k), (long long)good_peak.peak[k]);
  printf("\"total\":%lld}}\n", (long long)good_peak.total_peak);
  lt_dataset_free(p.ds);
  return 0;
}
