/* workers/cmd_profile.c — `lathe profile MODEL --out TABLE.json [--batch N] [--probe-step N]
 * [--device cpu|cuda:N] [--threads N]`: measures the latency table of a model's compressible
 * layers on this machine, in the format the compress job reads from $.spec.latency.table. Run it
 * on the device the model will serve from (an embedded board, say) and compress anywhere. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "cli.h"
#include "lathe/backend.h"
#include "lathe/compress.h"
#include "lathe/train.h"

/* Shared with the compress job (workers/job_compress.c). */
int compress_lat_write(const char *path, const lt_lat_table *t, char *why, size_t cap);

int cmd_profile(int argc, char **argv) {
  const char *model = NULL, *out = NULL, *device = "cpu";
  int batch = 64, probe = 4, threads = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--out") && v) out = v, i++;
    else if (!strcmp(a, "--batch") && v) batch = atoi(v), i++;
    else if (!strcmp(a, "--probe-step") && v) probe = atoi(v), i++;
    else if (!strcmp(a, "--device") && v) device = v, i++;
    else if (!strcmp(a, "--threads") && v) threads = atoi(v), i++;
    else if (a[0] != '-' && !model) model = a;
    else {
      fprintf(stderr, "%s: unknown or incomplete option %s\n", argv[0], a);
      return 2;
    }
  }
  if (!model || !out || batch < 1 || probe < 1) {
    fprintf(stderr, "usage: lathe profile MODEL --out TABLE.json [--batch N (64)] "
                    "[--probe-step N (4)] [--device cpu] [--threads N]\n"
                    "MODEL: a zoo name, an ONNX file or a Lathe checkpoint\n");
    return 2;
  }
  lt_train_set_threads(threads);
  lt_err err = {0};
  lt_backend *be = lt_backend_get(device, &err);
  if (!be) {
    fprintf(stderr, "lathe profile: device %s: %s\n", device, err.msg);
    return 2;
  }
  lt_graph *g = lt_model_load(model, NULL, NULL, NULL, &err);
  if (!g) {
    fprintf(stderr, "lathe profile: %s\n", err.msg);
    return 2;
  }
  lt_lat_table t = {0};
  lt_lat_opts lo = {.probe_step = probe};
  double t0 = lt_now();
  lt_status st = lt_lat_profile(g, be, batch, &lo, &t, &err);
  lt_graph_free(g);
  if (st) {
    fprintf(stderr, "lathe profile: %s\n", err.msg);
    lt_lat_table_free(&t);
    return st == LT_ERR_INVALID || st == LT_ERR_UNSUPPORTED ? 2 : 3;
  }
  char why[512];
  int rc = compress_lat_write(out, &t, why, sizeof why);
  if (rc) fprintf(stderr, "lathe profile: %s\n", why);
  else
    printf("{\"table\": \"%s\", \"device\": \"%s\", \"batch\": %d, \"shapes\": %d, \"step\": %d, "
           "\"seconds\": %.1f}\n",
           out, t.device, t.batch, t.n, t.step, lt_now() - t0);
  lt_lat_table_free(&t);
  return rc ? 3 : 0;
}
