/* workers/cmd_eval.c — `lathe eval MODEL DATA.h5 [--split test] [--checkpoint CK.h5]
 * [--mean M1,M2,M3 --std S1,S2,S3] [--batch N] [--threads N]`: evaluates a model on a split and
 * prints {"accuracy":…,"loss":…,"samples":…}. MODEL is a zoo name (with --checkpoint for its
 * weights) or a checkpoint file (lt_model_load; ONNX joins there). uint8 pixels are scaled to
 * [0, 1] before normalisation. Exit 0, 2 bad input, 3 failure. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "job.h"
#include "lathe/backend.h"
#include "lathe/train.h"

static const char cmd_eval_usage[] =
    "usage: lathe eval MODEL DATA.h5 [--split test] [--checkpoint CK.h5]\n"
    "                  [--mean M1,M2,M3 --std S1,S2,S3] [--batch N] [--threads N]\n"
    "  MODEL: a zoo name (smallcnn, resnet20, ...) or a Lathe checkpoint file\n";

/* "0.4914,0.4822,0.4465" → vals; returns the count, or -1 when malformed. */
static int cmd_eval_floats(const char *s, float *vals, int cap) {
  int n = 0;
  while (*s) {
    char *end;
    double v = strtod(s, &end);
    if (end == s || n == cap || !isfinite(v)) return -1;
    vals[n++] = (float)v;
    s = end;
    if (*s == ',') s++;
    else if (*s) return -1;
  }
  return n;
}

int job_train_exit_code(lt_status st); /* workers/job_train.c */

int cmd_eval(int argc, char **argv) {
  const char *model = NULL, *data = NULL, *split = "test", *ckpt = NULL;
  const char *mean_s = NULL, *std_s = NULL;
  int batch = 256, threads = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    int has = i + 1 < argc;
    if (!strcmp(a, "--split") && has) split = argv[++i];
    else if (!strcmp(a, "--checkpoint") && has) ckpt = argv[++i];
    else if (!strcmp(a, "--mean") && has) mean_s = argv[++i];
    else if (!strcmp(a, "--std") && has) std_s = argv[++i];
    else if (!strcmp(a, "--batch") && has) batch = atoi(argv[++i]);
    else if (!strcmp(a, "--threads") && has) threads = atoi(argv[++i]);
    else if (a[0] == '-') {
      fprintf(stderr, "lathe eval: unknown option %s\n%s", a, cmd_eval_usage);
      return JOB_EXIT_BAD_INPUT;
    } else if (!model) model = a;
    else if (!data) data = a;
    else {
      fprintf(stderr, "%s", cmd_eval_usage);
      return JOB_EXIT_BAD_INPUT;
    }
  }
  lt_norm norm = {0};
  int nm = mean_s ? cmd_eval_floats(mean_s, norm.mean, LT_DATA_MAX_CH) : 0;
  int ns = std_s ? cmd_eval_floats(std_s, norm.std, LT_DATA_MAX_CH) : 0;
  if (!model || !data || nm < 0 || ns < 0 || nm != ns || batch < 1) {
    fprintf(stderr, "%s%s", nm != ns ? "lathe eval: --mean and --std need the same number of "
                                       "comma-separated values\n" : "",
            cmd_eval_usage);
    return JOB_EXIT_BAD_INPUT;
  }
  norm.n = nm;
  lt_train_set_threads(threads);
  lt_err err = {0};
  lt_dataset *ds = lt_dataset_load(data, split, NULL, &err);
  lt_graph *g = NULL;
  lt_status st = ds ? LT_OK : err.status;
  if (!st) {
    lt_zoo_opts zo = {.in_channels = ds->c, .height = ds->h, .width = ds->w, .seed = 1};
    g = lt_model_load(model, &zo, ckpt, NULL, &err);
    if (!g) st = err.status;
  }
  lt_backend *be = st ? NULL : lt_backend_get("cpu", &err);
  if (!st && !be) st = err.status;
  lt_eval_result r;
  if (!st) st = lt_evaluate(g, be, ds, &norm, batch, &r, &err);
  lt_graph_free(g);
  lt_dataset_free(ds);
  if (st) {
    fprintf(stderr, "lathe eval: %s\n", err.msg);
    return job_train_exit_code(st);
  }
  if (isnan(r.accuracy))
    printf("{\"accuracy\":null,\"loss\":%.6g,\"samples\":%lld}\n", r.loss, (long long)r.samples);
  else
    printf("{\"accuracy\":%.6g,\"loss\":%.6g,\"samples\":%lld}\n", r.accuracy, r.loss,
           (long long)r.samples);
  return 0;
}
