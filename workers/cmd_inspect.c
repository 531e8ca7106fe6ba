/* workers/cmd_inspect.c — `lathe inspect [--exact] FILE`: the JSON summary of a file on stdout.
 * lathe-server runs this in a child with time and memory limits to check an upload, so the exit
 * status matters: 0 readable, 2 not a file Lathe can read (message on stderr), 3 a failure of
 * this machine (memory). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "inspect.h"
#include "job.h"

int cmd_inspect(int argc, char **argv) {
  inspect_opts o = {0};
  const char *path = NULL;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--exact")) {
      o.exact = 1;
    } else if (argv[i][0] == '-' && argv[i][1]) {
      fprintf(stderr, "lathe inspect: unknown option %s; usage: lathe inspect [--exact] FILE\n",
              argv[i]);
      return JOB_EXIT_BAD_INPUT;
    } else if (path) {
      fprintf(stderr, "lathe inspect: one file at a time; usage: lathe inspect [--exact] FILE\n");
      return JOB_EXIT_BAD_INPUT;
    } else {
      path = argv[i];
    }
  }
  if (!path) {
    fprintf(stderr, "usage: lathe inspect [--exact] FILE\n");
    return JOB_EXIT_BAD_INPUT;
  }
  inspect_crash_guard(path, 0);
  cJSON *summary = NULL;
  char err[2048];
  int rc = inspect_file_json(path, &o, &summary, err, sizeof err);
  if (rc) {
    fprintf(stderr, "lathe inspect: %s\n", err);
    return rc;
  }
  char *text = cJSON_Print(summary);
  cJSON_Delete(summary);
  if (!text) {
    fprintf(stderr, "lathe inspect: out of memory printing the summary\n");
    return JOB_EXIT_FAILED;
  }
  puts(text);
  free(text);
  return fflush(stdout) == 0 ? 0 : JOB_EXIT_FAILED;
}
