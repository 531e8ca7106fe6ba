/* workers/job.c — the services job.h gives a job kind: resolving file references and printing
 * JSON-lines events on stdout (schema/CONTRACT.md).
 *
 * Events are whole lines written under the stdout lock and flushed, so a line is never torn even
 * when the engine logs from worker threads, and lathe-worker sees each event as it happens.
 * Under mpirun only rank 0 prints events: the worker relays one stream, and the kind itself
 * decides what rank 0 reports for the others.
 */
#include "job.h"

#include "run.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lathe/core.h"

volatile sig_atomic_t job_stop_signal;

int job_should_stop(const job_ctx *job) { return job_stop_signal != 0; }

/* The MPI rank from the launcher's environment (Open MPI, PMIx, MPICH); 0 outside MPI. */
static int job_mpi_rank(void) {
  static const char *const vars[] = {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", NULL};
  for (const char *const *v = vars; *v; v++) {
    const char *s = getenv(*v);
    if (s && *s) return atoi(s);
  }
  return 0;
}

static void job_emit(cJSON *event) {
  static int rank = -1;
  if (rank < 0) rank = job_mpi_rank();
  char *line = event ? cJSON_PrintUnformatted(event) : NULL;
  if (line && rank == 0) {
    flockfile(stdout);
    fputs(line, stdout);
    fputc('\n', stdout);
    fflush(stdout);
    funlockfile(stdout);
  }
  free(line);
  cJSON_Delete(event);
}

void job_emit_progress(job_ctx *job, double fraction, const char *message, double eta_s) {
  cJSON *e = cJSON_CreateObject();
  cJSON_AddStringToObject(e, "type", "progress");
  cJSON_AddNumberToObject(e, "fraction", fraction < 0 ? 0 : fraction > 1 ? 1 : fraction);
  if (message) cJSON_AddStringToObject(e, "message", message);
  if (eta_s >= 0) cJSON_AddNumberToObject(e, "eta_s", eta_s);
  job_emit(e);
}

void job_emit_metric(job_ctx *job, const char *key, int64_t step, double value) {
  cJSON *e = cJSON_CreateObject();
  cJSON_AddStringToObject(e, "type", "metric");
  cJSON_AddStringToObject(e, "key", key);
  cJSON_AddNumberToObject(e, "step", (double)step);
  cJSON_AddNumberToObject(e, "value", value); /* cJSON prints NaN/Inf as null */
  job_emit(e);
}

static void job_emit_log_v(const char *level, const char *fmt, va_list ap) {
  char msg[4096];
  vsnprintf(msg, sizeof msg, fmt, ap);
  cJSON *e = cJSON_CreateObject();
  cJSON_AddStringToObject(e, "type", "log");
  cJSON_AddStringToObject(e, "level", level);
  cJSON_AddStringToObject(e, "message", msg);
  job_emit(e);
}

void job_emit_log(job_ctx *job, const char *level, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  job_emit_log_v(level, fmt, ap);
  va_end(ap);
}

void job_emit_artifact(job_ctx *job, const char *name, const char *path) {
  cJSON *e = cJSON_CreateObject();
  cJSON_AddStringToObject(e, "type", "artifact");
  cJSON_AddStringToObject(e, "name", name);
  cJSON_AddStringToObject(e, "path", path);
  job_emit(e);
}

void job_emit_result(cJSON *summary) {
  cJSON *e = cJSON_CreateObject();
  cJSON_AddStringToObject(e, "type", "result");
  cJSON_AddItemToObject(e, "summary", summary ? summary : cJSON_CreateObject());
  job_emit(e);
}

void job_emit_error(const char *message, int retryable) {
  cJSON *e = cJSON_CreateObject();
  cJSON_AddStringToObject(e, "type", "error");
  cJSON_AddStringToObject(e, "message", message);
  cJSON_AddBoolToObject(e, "retryable", retryable);
  job_emit(e);
}

int job_fail(job_ctx *job, int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(job->error, sizeof job->error, fmt, ap);
  va_end(ap);
  return code;
}

int job_ref_is_upload_id(const char *ref, const char *file_kind) {
  int model = !strncmp(ref, "mdl_", 4), dataset = !strncmp(ref, "ds_", 3);
  if (file_kind && !strcmp(file_kind, "model")) dataset = 0;
  if (file_kind && !strcmp(file_kind, "dataset")) model = 0;
  const char *hex = model ? ref + 4 : dataset ? ref + 3 : NULL;
  return hex && strlen(hex) == 16 && strspn(hex, "0123456789abcdef") == 16;
}

int job_device_check(const char *device, char *why, size_t cap) {
  if (!strcmp(device, "cpu")) return 0;
  if (!strncmp(device, "cuda:", 5) && device[5] && strlen(device + 5) <= 4 &&
      strspn(device + 5, "0123456789") == strlen(device + 5)) {
    if (strstr(lt_backends_compiled(), "cuda")) return 0;
    snprintf(why, cap, "device %s asked for, but this build of lathe has no CUDA backend (backends: %s)",
             device, lt_backends_compiled());
    return -1;
  }
  snprintf(why, cap, "device \"%.64s\" is not \"cpu\" or \"cuda:N\"", device);
  return -1;
}

/* mkdir -p: output and job folders may be new. */
int job_dir_make(const char *dir, unsigned mode) {
  char p[8192];
  if (snprintf(p, sizeof p, "%s", dir) >= (int)sizeof p) return -1;
  for (char *c = p + 1; *c; c++) {
    if (*c != '/') continue;
    *c = 0;
    if (mkdir(p, mode) != 0 && errno != EEXIST) return -1;
    *c = '/';
  }
  if (mkdir(p, mode) != 0 && errno != EEXIST) return -1;
  struct stat st;
  return stat(p, &st) == 0 && S_ISDIR(st.st_mode) ? 0 : -1;
}

const char *job_resolve_ref(job_ctx *job, const char *ref) {
  if (!ref || !*ref) {
    job_fail(job, JOB_EXIT_BAD_INPUT, "empty file reference");
    return NULL;
  }
  const cJSON *mapped = job->files ? cJSON_GetObjectItemCaseSensitive(job->files, ref) : NULL;
  const char *path = ref;
  if (mapped) {
    if (!cJSON_IsString(mapped)) {
      job_fail(job, JOB_EXIT_BAD_INPUT, "files[\"%s\"] in the job file must be a path string", ref);
      return NULL;
    }
    path = mapped->valuestring;
  } else if (job_ref_is_upload_id(ref, NULL)) {
    job_fail(job, JOB_EXIT_BAD_INPUT,
             "%s is an upload id but the job file's \"files\" map has no local path for it; "
             "run the job through lathe-worker, or give a path instead of the id", ref);
    return NULL;
  }
  if (access(path, R_OK) != 0) {
    job_fail(job, JOB_EXIT_BAD_INPUT, "cannot read %s%s%s: %m", path, mapped ? " for " : "",
             mapped ? ref : "");
    return NULL;
  }
  return path;
}

const char *job_file(job_ctx *job, const char *key) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(job->spec, key);
  if (!cJSON_IsString(v)) {
    job_fail(job, JOB_EXIT_BAD_INPUT, "$.spec.%s must name a file (an upload id or a path)", key);
    return NULL;
  }
  return job_resolve_ref(job, v->valuestring);
}
