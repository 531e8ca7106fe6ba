/* workers/run.h — what the `lathe run` runner (run.c) shares with job.c; not for job kinds,
 * which use job.h only. */
#ifndef LATHE_WORKERS_RUN_H
#define LATHE_WORKERS_RUN_H

#include <cjson/cJSON.h>
#include <signal.h>

extern volatile sig_atomic_t job_stop_signal; /* the signal that asked the run to stop, or 0 */

/* The closing event of a run: the result (takes ownership of summary) or the error. */
void job_emit_result(cJSON *summary);
void job_emit_error(const char *message, int retryable);

#endif
