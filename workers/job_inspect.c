/* workers/job_inspect.c — the `inspect` job kind: the summary of `lathe inspect` for an uploaded
 * model or dataset, as the job result and as the artifact inspect.json. With "exact": true the
 * statistics read every element (a full audit of a large upload), with progress events and a
 * prompt stop on cancel. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "inspect.h"
#include "job.h"
#include "lathe/core.h"

typedef struct job_inspect_state {
  job_ctx *job;
  double started, last_emit, last_fraction;
} job_inspect_state;

static int job_inspect_should_stop(void *user) {
  job_inspect_state *s = user;
  return job_should_stop(s->job);
}

/* At most a few progress events per second, however many blocks there are. */
static void job_inspect_progress(void *user, double fraction, const char *what) {
  job_inspect_state *s = user;
  double now = lt_now();
  if (now - s->last_emit < 0.5 && fraction - s->last_fraction < 0.05 && fraction < 1) return;
  s->last_emit = now;
  s->last_fraction = fraction;
  double elapsed = now - s->started;
  double eta = fraction > 0.01 ? elapsed / fraction * (1 - fraction) : -1;
  char msg[256];
  snprintf(msg, sizeof msg, "reading %.200s", what);
  job_emit_progress(s->job, fraction, msg, eta);
}

int job_inspect_run(job_ctx *job, cJSON **result) {
  const char *key = cJSON_GetObjectItemCaseSensitive(job->spec, "model") ? "model" : "dataset";
  const char *path = job_file(job, key);
  if (!path) return JOB_EXIT_BAD_INPUT;
  inspect_crash_guard(path, 1);
  job_inspect_state st = {job, lt_now(), 0, 0};
  inspect_opts o = {cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(job->spec, "exact")),
                    job_inspect_should_stop, job_inspect_progress, &st};
  job_emit_progress(job, 0, "opening the file", -1);
  cJSON *summary = NULL;
  int rc = inspect_file_json(path, &o, &summary, job->error, sizeof job->error);
  if (rc) return rc;
  char out[4096];
  snprintf(out, sizeof out, "%s/inspect.json", job->out_dir);
  char *text = cJSON_Print(summary);
  FILE *fp = text ? fopen(out, "w") : NULL;
  int ok = fp && fputs(text, fp) >= 0 && fputc('\n', fp) != EOF;
  if (fp && fclose(fp) != 0) ok = 0;
  free(text);
  if (!ok) {
    cJSON_Delete(summary);
    return job_fail(job, JOB_EXIT_FAILED, "cannot write %s: %m", out);
  }
  job_emit_artifact(job, "inspect.json", out);
  job_emit_progress(job, 1, "done", 0);
  *result = summary;
  return JOB_EXIT_OK;
}
