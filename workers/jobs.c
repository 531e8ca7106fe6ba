/* workers/jobs.c — the job kinds `lathe run` knows. A kind is its schema in
 * schema/jobs/<kind>.json, its run function in workers/job_<kind>.c and one line here. */
#include <string.h>

#include "job.h"

int job_inspect_run(job_ctx *job, cJSON **result);
int job_train_run(job_ctx *job, cJSON **result);
int job_compress_run(job_ctx *job, cJSON **result);

static const job_kind job_kinds[] = {
    {"inspect", job_inspect_run},
    {"train", job_train_run},
    {"compress", job_compress_run},
};

const job_kind *job_kind_find(const char *kind) {
  if (!kind) return NULL;
  for (size_t i = 0; i < sizeof job_kinds / sizeof job_kinds[0]; i++)
    if (!strcmp(job_kinds[i].kind, kind)) return &job_kinds[i];
  return NULL;
}
