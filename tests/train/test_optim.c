/* Optimizers, schedules and checkpoints without Python: closed-form properties of each schedule,
 * optimizer state accounting, and checkpoints that round-trip bit-exactly and refuse files that
 * do not fit. The numbers themselves are checked against torch in ref_optim.py. */
#include "test.h"

#include "lathe/train.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char tmpdir[256];

TEST_CASE(schedule_cosine_with_warmup_endpoints) {
  lt_schedule s = {.kind = LT_SCHED_COSINE, .lr = 0.1, .total_steps = 110, .warmup_steps = 10,
                   .warmup_start_factor = 0.1, .min_lr = 0.001};
  REQUIRE(lt_schedule_check(&s, NULL) == LT_OK);
  CHECK_NEAR(lt_schedule_lr(&s, 0), 0.01, 1e-12);
  CHECK_NEAR(lt_schedule_lr(&s, 5), 0.1 * (0.1 + 0.9 * 0.5), 1e-12);
  CHECK_NEAR(lt_schedule_lr(&s, 10), 0.1, 1e-12);
  CHECK_NEAR(lt_schedule_lr(&s, 60), (0.1 + 0.001) / 2, 1e-12);
  CHECK_NEAR(lt_schedule_lr(&s, 110), 0.001, 1e-12);
  CHECK_NEAR(lt_schedule_lr(&s, 500), 0.001, 1e-12); /* past the horizon: stays at min_lr */
}

TEST_CASE(schedule_step_and_onecycle_shapes) {
  lt_schedule st = {.kind = LT_SCHED_STEP, .lr = 1, .step_size = 3, .gamma = 0.5};
  CHECK_NEAR(lt_schedule_lr(&st, 2), 1, 0);
  CHECK_NEAR(lt_schedule_lr(&st, 3), 0.5, 0);
  CHECK_NEAR(lt_schedule_lr(&st, 9), 0.125, 0);
  lt_schedule oc = {.kind = LT_SCHED_ONECYCLE, .lr = 1, .total_steps = 100, .pct_start = 0.3,
                    .div_factor = 25, .final_div_factor = 1e4};
  REQUIRE(lt_schedule_check(&oc, NULL) == LT_OK);
  CHECK_NEAR(lt_schedule_lr(&oc, 0), 1.0 / 25, 1e-12);
  CHECK_NEAR(lt_schedule_lr(&oc, 29), 1.0, 1e-12);
  CHECK_NEAR(lt_schedule_lr(&oc, 99), 1.0 / 25 / 1e4, 1e-12);
  lt_err err = {0};
  lt_schedule bad = {.kind = LT_SCHED_COSINE, .lr = 0.1, .total_steps = 10, .warmup_steps = 10,
                     .warmup_start_factor = 0.5};
  CHECK(lt_schedule_check(&bad, &err) == LT_ERR_INVALID);
  CHECK_STR_CONTAINS(err.msg, "total steps (10) > warm-up steps (10)");
}

TEST_CASE(optim_state_counted_and_config_checked) {
  int64_t shape[2] = {4, 5};
  lt_err err = {0};
  lt_tensor *w = lt_tensor_new(LT_F32, 2, shape, LT_MEM_WEIGHTS, &err);
  lt_mem_stats before, after;
  lt_mem_get_stats(&before);
  lt_optim_config c = lt_optim_config_default(LT_OPTIM_ADAMW);
  lt_optim *o = lt_optim_create(&c, 1, &w, &err);
  REQUIRE(o);
  lt_mem_get_stats(&after);
  CHECK(after.current[LT_MEM_OPTIMIZER] - before.current[LT_MEM_OPTIMIZER] == 2 * 20 * 4);
  lt_optim_free(o);
  lt_mem_get_stats(&after);
  CHECK(after.current[LT_MEM_OPTIMIZER] == before.current[LT_MEM_OPTIMIZER]);
  lt_optim_config n = lt_optim_config_default(LT_OPTIM_SGD);
  n.nesterov = 1;
  CHECK(lt_optim_create(&n, 1, &w, &err) == NULL);
  CHECK_STR_CONTAINS(err.msg, "Nesterov momentum needs momentum > 0");
  lt_tensor_free(w);
}

/* A two-parameter graph by hand: w (trainable) and a non-trainable running statistic. */
static lt_graph *tiny_graph(float fill) {
  lt_graph *g = lt_graph_new();
  int64_t ws[2] = {3, 4}, rs[1] = {3};
  lt_tensor *w = lt_tensor_new(LT_F32, 2, ws, LT_MEM_WEIGHTS, NULL);
  lt_tensor *r = lt_tensor_new(LT_F32, 1, rs, LT_MEM_WEIGHTS, NULL);
  for (int i = 0; i < 12; i++) lt_tensor_f32(w)[i] = fill * (float)i + 0.1f;
  for (int i = 0; i < 3; i++) lt_tensor_f32(r)[i] = fill - (float)i;
  lt_graph_add_param(g, "layer.weight", w, 1);
  lt_graph_add_param(g, "bn.running_mean", r, 0);
  return g;
}

TEST_CASE(checkpoint_round_trips_bit_exact) {
  lt_err err = {0};
  lt_graph *g = tiny_graph(0.37f);
  int id;
  REQUIRE(lt_train_params(g, &id, 1) == 1);
  lt_tensor *w = g->values[id].data;
  lt_optim_config c = lt_optim_config_default(LT_OPTIM_SGD);
  c.momentum = 0.9f;
  lt_optim *o = lt_optim_create(&c, 1, &w, &err);
  lt_tensor *grad = lt_tensor_clone(w, LT_MEM_GRADIENTS, &err);
  for (int s = 0; s < 3; s++) REQUIRE(lt_optim_step(o, &grad, 0.1f, &err) == LT_OK);
  lt_ckpt_meta m = {.model = "tiny", .num_classes = 7, .epoch = 2, .step = 3, .epoch_step = 1,
                    .seed = 99, .epoch_loss_sum = 1.25, .epoch_correct = 5, .epoch_seen = 8};
  char path[512];
  snprintf(path, sizeof path, "%s/ck.h5", tmpdir);
  REQUIRE(lt_ckpt_save(path, g, o, &m, &err) == LT_OK);

  lt_graph *h = tiny_graph(0.0f);
  REQUIRE(lt_train_params(h, &id, 1) == 1);
  lt_tensor *w2 = h->values[id].data;
  lt_optim *o2 = lt_optim_create(&c, 1, &w2, &err);
  lt_ckpt_meta m2;
  REQUIRE(lt_ckpt_load(path, h, o2, &m2, &err) == LT_OK);
  CHECK(memcmp(w->data, w2->data, 48) == 0);
  CHECK(memcmp(g->values[1].data->data, h->values[1].data->data, 12) == 0);
  CHECK(memcmp(o->state[0], o2->state[0], 48) == 0);
  CHECK(o2->step == 3);
  CHECK(strcmp(m2.model, "tiny") == 0 && m2.num_classes == 7 && m2.epoch == 2 && m2.step == 3 &&
        m2.epoch_step == 1 && m2.seed == 99 && m2.epoch_loss_sum == 1.25 &&
        m2.epoch_correct == 5 && m2.epoch_seen == 8);
  /* No temp file is left beside the checkpoint. */
  char tmp[600];
  snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
  CHECK(access(tmp, F_OK) != 0);

  /* A checkpoint of another optimizer kind is refused with the reason. */
  lt_optim_config a = lt_optim_config_default(LT_OPTIM_ADAMW);
  lt_optim *o3 = lt_optim_create(&a, 1, &w2, &err);
  CHECK(lt_ckpt_load(path, h, o3, NULL, &err) == LT_ERR_INVALID);
  CHECK_STR_CONTAINS(err.msg, "holds SGD optimizer state but the run uses AdamW");
  lt_optim_free(o3);
  lt_optim_free(o2);
  lt_optim_free(o);
  lt_tensor_free(grad);
  lt_graph_free(h);
  lt_graph_free(g);
}

TEST_CASE(checkpoint_refuses_other_models_and_files) {
  lt_err err = {0};
  char path[512], junk[512];
  snprintf(path, sizeof path, "%s/ck2.h5", tmpdir);
  snprintf(junk, sizeof junk, "%s/junk.h5", tmpdir);
  lt_graph *g = tiny_graph(1.0f);
  lt_ckpt_meta m = {.model = "tiny"};
  REQUIRE(lt_ckpt_save(path, g, NULL, &m, &err) == LT_OK);
  /* Same names, other shape. */
  lt_graph *h = lt_graph_new();
  int64_t ws[2] = {4, 3}, rs[1] = {3};
  lt_graph_add_param(h, "layer.weight", lt_tensor_new(LT_F32, 2, ws, LT_MEM_WEIGHTS, NULL), 1);
  lt_graph_add_param(h, "bn.running_mean", lt_tensor_new(LT_F32, 1, rs, LT_MEM_WEIGHTS, NULL), 0);
  CHECK(lt_ckpt_load(path, h, NULL, NULL, &err) == LT_ERR_INVALID);
  CHECK_STR_CONTAINS(err.msg, "does not have the model's shape (4, 3)");
  /* A file that is not a checkpoint at all. */
  FILE *f = fopen(junk, "w");
  fputs("not hdf5", f);
  fclose(f);
  CHECK(lt_ckpt_load(junk, g, NULL, NULL, &err) == LT_ERR_FORMAT);
  CHECK_STR_CONTAINS(err.msg, "not an HDF5 checkpoint");
  lt_graph_free(h);
  lt_graph_free(g);
}

int main(void) {
  snprintf(tmpdir, sizeof tmpdir, "/tmp/lathe-test-optim-XXXXXX");
  if (!mkdtemp(tmpdir)) return 1;
  RUN(schedule_cosine_with_warmup_endpoints);
  RUN(schedule_step_and_onecycle_shapes);
  RUN(optim_state_counted_and_config_checked);
  RUN(checkpoint_round_trips_bit_exact);
  RUN(checkpoint_refuses_other_models_and_files);
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
  return test_summary();
}
