/* workers/run.c — `lathe run JOB.json --out DIR`: reads a job file (schema/CONTRACT.md), checks
 * its spec with the shared validator, runs the kind and reports through JSON-lines events.
 *
 * Every way out of a run ends with exactly one closing event on stdout — {"type":"result"} with
 * exit 0, or {"type":"error"} with exit 2 (bad input, not retried) or 3 (runtime failure,
 * retried) — so lathe-worker can always tell the server why. SIGTERM/SIGINT ask the kind to stop
 * (job_should_stop); a second one ends the process at once.
 */
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "job.h"
#include "lathe/core.h"
#include "run.h"
#include "spec.h"

enum { RUN_JOB_FILE_MAX = 16 << 20 };

static void run_on_signal(int sig) {
  if (job_stop_signal) { /* asked twice: stop now */
    signal(sig, SIG_DFL);
    raise(sig);
    return;
  }
  job_stop_signal = sig;
}

static void run_log_bridge(lt_log_level level, const char *msg, void *user) {
  static const char *const names[] = {"debug", "info", "warn", "error"};
  if (level == LT_LOG_DEBUG) return;
  job_emit_log(user, names[level <= LT_LOG_ERROR ? level : LT_LOG_ERROR], "%s", msg);
}

/* Ends the run with the error event; returns the exit status. */
static int run_fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int run_fail(int code, const char *fmt, ...) {
  char msg[2400];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  job_emit_error(msg, code != JOB_EXIT_BAD_INPUT);
  fprintf(stderr, "lathe run: %s\n", msg);
  return code;
}

static char *run_read_file(const char *path, char *why, size_t cap) {
  FILE *fp = fopen(path, "rb");
  if (!fp) {
    snprintf(why, cap, "cannot open %s: %s", path, strerror(errno));
    return NULL;
  }
  char *buf = malloc(RUN_JOB_FILE_MAX + 1);
  size_t n = buf ? fread(buf, 1, RUN_JOB_FILE_MAX + 1, fp) : 0;
  int bad = !buf || ferror(fp);
  fclose(fp);
  if (bad || n > RUN_JOB_FILE_MAX) {
    snprintf(why, cap, bad ? "cannot read %s" : "%s is larger than the 16 MiB a job file may be",
             path);
    free(buf);
    return NULL;
  }
  buf[n] = 0;
  return buf;
}

int cmd_run(int argc, char **argv) {
  const char *job_path = NULL, *out_dir = NULL;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--out") && i + 1 < argc)
      out_dir = argv[++i];
    else if (argv[i][0] == '-' || job_path)
      return run_fail(JOB_EXIT_BAD_INPUT, "unexpected argument %s; usage: lathe run JOB.json --out DIR", argv[i]);
    else
      job_path = argv[i];
  }
  if (!job_path || !out_dir)
    return run_fail(JOB_EXIT_BAD_INPUT, "usage: lathe run JOB.json --out DIR");

  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = run_on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);

  char why[1024];
  char *text = run_read_file(job_path, why, sizeof why);
  if (!text) return run_fail(JOB_EXIT_BAD_INPUT, "%s", why);
  const char *end = NULL;
  cJSON *doc = cJSON_ParseWithOpts(text, &end, 1);
  if (!doc) {
    long at = end ? (long)(end - text) : 0;
    free(text);
    return run_fail(JOB_EXIT_BAD_INPUT, "%s is not valid JSON (near byte %ld)", job_path, at);
  }
  free(text);
  const cJSON *kind = cJSON_GetObjectItemCaseSensitive(doc, "kind");
  cJSON *spec = cJSON_GetObjectItemCaseSensitive(doc, "spec");
  cJSON *files = cJSON_GetObjectItemCaseSensitive(doc, "files");
  const cJSON *device = cJSON_GetObjectItemCaseSensitive(doc, "device");
  int rc;
  if (!cJSON_IsObject(doc) || !cJSON_IsString(kind)) {
    rc = run_fail(JOB_EXIT_BAD_INPUT, "%s must be an object with \"kind\" (a string) and \"spec\"", job_path);
    goto done;
  }
  if (files && !cJSON_IsObject(files)) {
    rc = run_fail(JOB_EXIT_BAD_INPUT, "%s: \"files\" must map upload ids to local paths", job_path);
    goto done;
  }
  if (device && !cJSON_IsString(device)) {
    rc = run_fail(JOB_EXIT_BAD_INPUT, "%s: \"device\" must be a string such as \"cpu\" or \"cuda:0\"", job_path);
    goto done;
  }
  spec_fault fault;
  if (spec_validate(kind->valuestring, spec, &fault) != 0) {
    rc = run_fail(JOB_EXIT_BAD_INPUT, "invalid job: %s: %s", fault.path, fault.message);
    goto done;
  }
  const job_kind *k = job_kind_find(kind->valuestring);
  if (!k) {
    rc = run_fail(JOB_EXIT_BAD_INPUT, "job kind \"%s\" has a schema but this build of lathe cannot run it",
                  kind->valuestring);
    goto done;
  }
  const char *dev = device ? device->valuestring : "cpu";
  if (job_device_check(dev, why, sizeof why)) {
    rc = run_fail(JOB_EXIT_BAD_INPUT, "%s", why);
    goto done;
  }
  if (job_dir_make(out_dir, 0777) != 0) {
    rc = run_fail(JOB_EXIT_FAILED, "cannot create the output folder %s: %s", out_dir, strerror(errno));
    goto done;
  }
  job_ctx job;
  memset(&job, 0, sizeof job);
  job.kind = k->kind;
  job.spec = spec;
  job.files = files;
  job.out_dir = out_dir;
  job.device = dev;
  lt_log_set_handler(run_log_bridge, &job);
  cJSON *result = NULL;
  rc = k->run(&job, &result);
  lt_log_set_handler(NULL, NULL);
  if (rc == JOB_EXIT_OK) { /* finished, even if a stop came too late to matter */
    job_emit_result(result);
  } else {
    cJSON_Delete(result);
    if (job_stop_signal) {
      rc = run_fail(JOB_EXIT_FAILED, "stopped by %s before the job finished%s%s",
                    job_stop_signal == SIGINT ? "SIGINT" : "SIGTERM", job.error[0] ? ": " : "", job.error);
    } else {
      if (rc != JOB_EXIT_BAD_INPUT) rc = JOB_EXIT_FAILED;
      rc = run_fail(rc, "%s", job.error[0] ? job.error : "the job failed without saying why");
    }
  }
done:
  cJSON_Delete(doc);
  return rc;
}
