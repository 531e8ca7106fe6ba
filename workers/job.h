/* workers/job.h — how a job kind plugs into `lathe run`: spec in, engine calls, events out.
 *
 * A job kind is one entry in the table in workers/jobs.c:
 *   { "train", job_train_run },
 * and a run function that reads its (already validated, defaults filled) spec, calls the engine
 * and reports through the job_emit_* functions, which print JSON-lines events on stdout
 * (schema/CONTRACT.md). It returns 0 and sets *result (the summary the dashboard shows), or
 * returns JOB_EXIT_BAD_INPUT / JOB_EXIT_FAILED with job->error filled.
 *
 *   int job_train_run(job_ctx *job, cJSON **result) {
 *     const char *path = job_file(job, "dataset");          // id or path → local path
 *     if (!path) return JOB_EXIT_BAD_INPUT;                  // job->error says why
 *     job_emit_progress(job, 0.5, "epoch 1/2", 30.0);
 *     job_emit_metric(job, "train.loss", step, loss);
 *     ...
 *   }
 *
 * Not for: HTTP or the server; the worker runs `lathe run` as a child and relays its stdout.
 */
#ifndef LATHE_WORKERS_JOB_H
#define LATHE_WORKERS_JOB_H

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

enum {
  JOB_EXIT_OK = 0,
  JOB_EXIT_BAD_INPUT = 2, /* the spec or an input file is wrong: not retried */
  JOB_EXIT_FAILED = 3     /* a runtime failure: retried up to max_attempts */
};

typedef struct job_ctx {
  const char *kind;
  cJSON *spec;         /* validated, defaults filled; owned by the runner */
  cJSON *files;        /* {"ds_…": "/local/path", ...} or NULL */
  const char *out_dir; /* artifacts go here; exists */
  const char *device;  /* "cpu", "cuda:0" */
  char error[2048];    /* filled on failure: what went wrong and what to do */
} job_ctx;

typedef int (*job_run_fn)(job_ctx *job, cJSON **result);

typedef struct job_kind {
  const char *kind;
  job_run_fn run;
} job_kind;

const job_kind *job_kind_find(const char *kind); /* NULL when unknown */

/* Resolves the spec string at `key` (an upload id mapped through job->files, or a path) to a
 * readable local path. NULL with job->error filled when missing or unreadable. */
const char *job_file(job_ctx *job, const char *key);
const char *job_resolve_ref(job_ctx *job, const char *ref);

/* Events (one JSON object per line on stdout, flushed). */
void job_emit_progress(job_ctx *job, double fraction, const char *message, double eta_s);
void job_emit_metric(job_ctx *job, const char *key, int64_t step, double value);
void job_emit_log(job_ctx *job, const char *level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void job_emit_artifact(job_ctx *job, const char *name, const char *path);

/* An upload id as the server hands them out: "mdl_" (file_kind "model") or "ds_" ("dataset")
 * and 16 lowercase hex digits; file_kind NULL accepts either. */
int job_ref_is_upload_id(const char *ref, const char *file_kind);
/* "cpu", or "cuda:N" when this build has the CUDA backend. 0, or -1 with why filled. */
int job_device_check(const char *device, char *why, size_t cap);
/* mkdir -p with mode; 0 when dir exists as a folder afterwards. */
int job_dir_make(const char *dir, unsigned mode);

/* True once `lathe run` has been asked to stop (SIGTERM/SIGINT: a cancel, or the worker shutting
 * down). A long-running kind polls it between steps and returns job_fail(job, JOB_EXIT_FAILED,
 * ...) promptly; the runner then reports the stop as a retryable error. */
int job_should_stop(const job_ctx *job);

/* Fills job->error and returns code, so a failure is one line. */
int job_fail(job_ctx *job, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
