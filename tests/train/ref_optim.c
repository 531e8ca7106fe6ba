/* Dumps optimizer trajectories and schedule values as JSON for ref_optim.py, which replays them
 * with torch.optim and torch.optim.lr_scheduler and compares. Parameters and gradients come from
 * the counter-based RNG; the learning rate of each optimizer step is written out so that torch
 * uses exactly the same one. */
#include <stdio.h>

#include "lathe/train.h"

#define STEPS 10

static void dump_floats(const float *v, int n) {
  printf("[");
  for (int i = 0; i < n; i++) printf("%s%.9g", i ? "," : "", (double)v[i]);
  printf("]");
}

static void dump_optim(const char *name, lt_optim_config c, int first) {
  int64_t s0[2] = {7, 5}, s1[1] = {3};
  lt_err err = {0};
  lt_tensor *p[2] = {lt_tensor_new(LT_F32, 2, s0, LT_MEM_WEIGHTS, &err),
                     lt_tensor_new(LT_F32, 1, s1, LT_MEM_WEIGHTS, &err)};
  lt_tensor *g[2] = {lt_tensor_new(LT_F32, 2, s0, LT_MEM_GRADIENTS, &err),
                     lt_tensor_new(LT_F32, 1, s1, LT_MEM_GRADIENTS, &err)};
  lt_rng r = lt_rng_make(11, 0);
  for (int k = 0; k < 2; k++)
    for (int64_t i = 0; i < lt_tensor_numel(p[k]); i++) lt_tensor_f32(p[k])[i] = lt_rng_normal(&r);
  printf("%s\"%s\":{\"kind\":\"%s\",\"wd\":%.9g,\"momentum\":%.9g,\"dampening\":%.9g,"
         "\"nesterov\":%d,\"betas\":[%.9g,%.9g],\"eps\":%.9g,\"p0\":[",
         first ? "" : ",", name, c.kind == LT_OPTIM_SGD ? "sgd" : "adamw", (double)c.weight_decay,
         (double)c.momentum, (double)c.dampening, c.nesterov, (double)c.beta1, (double)c.beta2,
         (double)c.eps);
  for (int k = 0; k < 2; k++) {
    printf(k ? "," : "");
    dump_floats(lt_tensor_f32(p[k]), (int)lt_tensor_numel(p[k]));
  }
  printf("],\"steps\":[");
  lt_optim *o = lt_optim_create(&c, 2, p, &err);
  lt_schedule sc = {.kind = LT_SCHED_COSINE, .lr = 0.1, .total_steps = STEPS, .min_lr = 0.01};
  for (int s = 0; s < STEPS; s++) {
    for (int k = 0; k < 2; k++)
      for (int64_t i = 0; i < lt_tensor_numel(g[k]); i++) lt_tensor_f32(g[k])[i] = lt_rng_normal(&r);
    float lr = (float)lt_schedule_lr(&sc, s);
    printf("%s{\"lr\":%.9g,\"g\":[", s ? "," : "", (double)lr);
    for (int k = 0; k < 2; k++) {
      printf(k ? "," : "");
      dump_floats(lt_tensor_f32(g[k]), (int)lt_tensor_numel(g[k]));
    }
    lt_optim_step(o, g, lr, &err);
    printf("],\"p\":[");
    for (int k = 0; k < 2; k++) {
      printf(k ? "," : "");
      dump_floats(lt_tensor_f32(p[k]), (int)lt_tensor_numel(p[k]));
    }
    printf("]}");
  }
  printf("]}");
  lt_optim_free(o);
  for (int k = 0; k < 2; k++) {
    lt_tensor_free(p[k]);
    lt_tensor_free(g[k]);
  }
}

static void dump_sched(const char *name, lt_schedule s, int first) {
  printf("%s\"%s\":[", first ? "" : ",", name);
  for (int64_t t = 0; t < s.total_steps; t++)
    printf("%s%.17g", t ? "," : "", lt_schedule_lr(&s, t));
  printf("]");
}

int main(void) {
  printf("{\"optim\":{");
  lt_optim_config sgd = lt_optim_config_default(LT_OPTIM_SGD);
  sgd.weight_decay = 0.01f;
  dump_optim("sgd_plain_wd", sgd, 1);
  sgd.momentum = 0.9f;
  sgd.dampening = 0.1f;
  dump_optim("sgd_momentum_dampening", sgd, 0);
  sgd.dampening = 0;
  sgd.nesterov = 1;
  sgd.weight_decay = 5e-4f;
  dump_optim("sgd_nesterov", sgd, 0);
  dump_optim("adamw", lt_optim_config_default(LT_OPTIM_ADAMW), 0);
  lt_optim_config aw = lt_optim_config_default(LT_OPTIM_ADAMW);
  aw.beta1 = 0.8f, aw.beta2 = 0.99f, aw.eps = 1e-6f, aw.weight_decay = 0.1f;
  dump_optim("adamw_custom", aw, 0);
  printf("},\"sched\":{");
  dump_sched("step", (lt_schedule){.kind = LT_SCHED_STEP, .lr = 0.2, .total_steps = 30,
                                   .step_size = 7, .gamma = 0.5}, 1);
  dump_sched("cosine", (lt_schedule){.kind = LT_SCHED_COSINE, .lr = 0.1, .total_steps = 30,
                                     .min_lr = 0.001}, 0);
  dump_sched("warmup_cosine", (lt_schedule){.kind = LT_SCHED_COSINE, .lr = 0.1, .total_steps = 30,
                                            .warmup_steps = 5, .warmup_start_factor = 0.1}, 0);
  dump_sched("warmup_step", (lt_schedule){.kind = LT_SCHED_STEP, .lr = 0.1, .total_steps = 30,
                                          .warmup_steps = 4, .warmup_start_factor = 0.25,
                                          .step_size = 10, .gamma = 0.1}, 0);
  dump_sched("onecycle", (lt_schedule){.kind = LT_SCHED_ONECYCLE, .lr = 0.5, .total_steps = 40,
                                       .pct_start = 0.3, .div_factor = 25,
                                       .final_div_factor = 1e4}, 0);
  printf("}}\n");
  return 0;
}
