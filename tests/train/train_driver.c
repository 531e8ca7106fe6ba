/* Test driver for the train-side commands until their lines are in the shared tables
 * (workers/cli.c, workers/jobs.c): the same functions `lathe` will call, behind one binary.
 *   train_driver data convert ARGS...   → cmd_data_convert
 *   train_driver eval ARGS...           → cmd_eval
 *   train_driver run JOB.json --out DIR → validate the spec, run job_train_run, print events
 * Exit codes are those of `lathe run` (workers/job.h). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "job.h"
#include "run.h"
#include "spec.h"

int cmd_data_convert(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int job_train_run(job_ctx *job, cJSON **result);

static void driver_on_signal(int sig) { job_stop_signal = sig; }

static int driver_run(const char *path, const char *out) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    fprintf(stderr, "cannot open %s\n", path);
    return JOB_EXIT_BAD_INPUT;
  }
  static char text[1 << 16];
  size_t n = fread(text, 1, sizeof text - 1, f);
  fclose(f);
  text[n] = '\0';
  cJSON *doc = cJSON_Parse(text);
  cJSON *spec = doc ? cJSON_GetObjectItemCaseSensitive(doc, "spec") : NULL;
  spec_fault fault;
  if (!spec || spec_validate("train", spec, &fault) != 0) {
    job_emit_error(spec ? fault.message : "job file is not JSON with a spec", 0);
    if (spec) fprintf(stderr, "%s: %s\n", fault.path, fault.message);
    cJSON_Delete(doc);
    return JOB_EXIT_BAD_INPUT;
  }
  mkdir(out, 0755);
  const cJSON *dev = cJSON_GetObjectItemCaseSensitive(doc, "device");
  job_ctx job = {.kind = "train", .spec = spec,
                 .files = cJSON_GetObjectItemCaseSensitive(doc, "files"), .out_dir = out,
                 .device = cJSON_IsString(dev) ? dev->valuestring : NULL};
  struct sigaction sa = {.sa_handler = driver_on_signal};
  sigaction(SIGTERM, &sa, NULL);
  cJSON *result = NULL;
  int rc = job_train_run(&job, &result);
  if (rc == JOB_EXIT_OK) job_emit_result(result);
  else job_emit_error(job.error, rc == JOB_EXIT_FAILED);
  cJSON_Delete(doc);
  return rc;
}

int main(int argc, char **argv) {
  if (argc >= 3 && !strcmp(argv[1], "data") && !strcmp(argv[2], "convert")) {
    argv[2] = "data convert";
    return cmd_data_convert(argc - 2, argv + 2);
  }
  if (argc >= 2 && !strcmp(argv[1], "eval")) return cmd_eval(argc - 1, argv + 1);
  if (argc == 5 && !strcmp(argv[1], "run") && !strcmp(argv[3], "--out"))
    return driver_run(argv[2], argv[4]);
  fprintf(stderr, "usage: train_driver data convert ... | eval ... | run JOB.json --out DIR\n");
  return JOB_EXIT_BAD_INPUT;
}
