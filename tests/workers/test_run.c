/* `lathe run JOB.json --out DIR` (workers/run.c): the job-file format, JSON-lines events, exit
 * codes 0/2/3 with exactly one closing event, the `files` map, and SIGTERM stopping a running
 * job cleanly with a retryable error event. */
#include <errno.h>
#include <hdf5.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "test.h"

static char dir[256];

static void write_text(const char *name, const char *text) {
  char p[512];
  snprintf(p, sizeof p, "%s/%s", dir, name);
  FILE *fp = fopen(p, "w");
  fputs(text, fp);
  fclose(fp);
}

/* Runs lathe with args; stdout (the events) goes to out, stderr is dropped. */
static int run_lathe(const char *args, char *out, size_t cap) {
  char cmd[4096];
  snprintf(cmd, sizeof cmd, "cd '%s' && %s %s 2>/dev/null", dir, LATHE_BIN, args);
  FILE *p = popen(cmd, "r");
  if (!p) return -1;
  size_t n = fread(out, 1, cap - 1, p);
  out[n] = 0;
  int st = pclose(p);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* The last non-empty line of the event stream, parsed; every line must be a JSON object. */
static cJSON *last_event(const char *out, int *lines) {
  cJSON *last = NULL;
  *lines = 0;
  const char *line = out;
  while (*line) {
    const char *nl = strchr(line, '\n');
    size_t len = nl ? (size_t)(nl - line) : strlen(line);
    if (len) {
      cJSON *e = cJSON_ParseWithLength(line, len);
      if (!e || !cJSON_IsString(cJSON_GetObjectItem(e, "type"))) {
        fprintf(stderr, "not an event line: %.*s\n", (int)len, line);
        cJSON_Delete(e);
        cJSON_Delete(last);
        return NULL;
      }
      cJSON_Delete(last);
      last = e;
      (*lines)++;
    }
    line += len + (nl ? 1 : 0);
  }
  return last;
}

static const char *etype(const cJSON *e) { return cJSON_GetStringValue(cJSON_GetObjectItem(e, "type")); }
static const char *emsg(const cJSON *e) { return cJSON_GetStringValue(cJSON_GetObjectItem(e, "message")); }

static void write_small_h5(const char *name) {
  char p[512];
  snprintf(p, sizeof p, "%s/%s", dir, name);
  hid_t f = H5Fcreate(p, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  hsize_t n = 10;
  int v[10] = {3, 1, 4, 1, 5, 9, 2, 6, 5, 3};
  hid_t sp = H5Screate_simple(1, &n, NULL);
  hid_t d = H5Dcreate2(f, "v", H5T_STD_I32LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  H5Dwrite(d, H5T_NATIVE_INT, H5S_ALL, H5S_ALL, H5P_DEFAULT, v);
  H5Dclose(d);
  H5Sclose(sp);
  H5Fclose(f);
}

TEST_CASE(run_inspect_job_events_result_and_artifact) {
  static char out[1 << 16];
  write_small_h5("small.h5");
  write_text("job.json", "{\"kind\":\"inspect\",\"spec\":{\"dataset\":\"small.h5\"},\"device\":\"cpu\"}");
  CHECK(run_lathe("run job.json --out out1", out, sizeof out) == 0);
  int lines;
  cJSON *e = last_event(out, &lines);
  REQUIRE(e);
  CHECK(lines >= 3);
  CHECK(!strcmp(etype(e), "result"));
  const cJSON *sum = cJSON_GetObjectItem(e, "summary");
  CHECK(!strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(sum, "format")), "hdf5"));
  CHECK(cJSON_IsFalse(cJSON_GetObjectItem(sum, "exact"))); /* the default was filled */
  cJSON_Delete(e);
  CHECK_STR_CONTAINS(out, "{\"type\":\"artifact\",\"name\":\"inspect.json\",\"path\":\"out1/inspect.json\"}");
  char p[512];
  snprintf(p, sizeof p, "%s/out1/inspect.json", dir);
  CHECK(access(p, R_OK) == 0);
}

TEST_CASE(run_files_map_resolves_upload_ids) {
  static char out[1 << 16];
  write_text("mapped.json", "{\"kind\":\"inspect\",\"spec\":{\"dataset\":\"ds_0123456789abcdef\"},"
                            "\"files\":{\"ds_0123456789abcdef\":\"small.h5\"}}");
  CHECK(run_lathe("run mapped.json --out out2", out, sizeof out) == 0);
  write_text("unmapped.json", "{\"kind\":\"inspect\",\"spec\":{\"dataset\":\"ds_0123456789abcdef\"}}");
  CHECK(run_lathe("run unmapped.json --out out3", out, sizeof out) == 2);
  int lines;
  cJSON *e = last_event(out, &lines);
  REQUIRE(e);
  CHECK(!strcmp(etype(e), "error"));
  CHECK_STR_CONTAINS(emsg(e), "\"files\" map has no local path");
  CHECK(cJSON_IsFalse(cJSON_GetObjectItem(e, "retryable")));
  cJSON_Delete(e);
}

/* Each bad job ends with exit 2 and one error event whose message says what is wrong. */
static void expect_bad(const char *job_text, const char *args, const char *expect) {
  static char out[1 << 16];
  write_text("bad.json", job_text);
  char a[256];
  snprintf(a, sizeof a, "%s", args ? args : "run bad.json --out outbad");
  int rc = run_lathe(a, out, sizeof out);
  CHECK_MSG(rc == 2, "%s: exit %d, expected 2", job_text, rc);
  int lines;
  cJSON *e = last_event(out, &lines);
  const char *first_error = strstr(out, "{\"type\":\"error\"");
  CHECK_MSG(e && !strcmp(etype(e), "error") && first_error && !strstr(first_error + 1, "{\"type\":\"error\"") &&
                !strstr(out, "{\"type\":\"result\""),
            "%s: expected exactly one closing error event, got %s", job_text, out);
  if (e) CHECK_STR_CONTAINS(emsg(e), expect);
  cJSON_Delete(e);
}

TEST_CASE(run_refuses_bad_jobs_with_exit_2) {
  expect_bad("{\"kind\":\"inspect\",\"spec\":{\"dataset\":\"small.h5\",\"exakt\":true}}", NULL,
             "$.spec.exakt: unknown property");
  expect_bad("{\"kind\":\"inspect\",\"spec\":{\"dataset\":\"small.h5\",\"exact\":1}}", NULL,
             "$.spec.exact: must be a boolean");
  expect_bad("{\"kind\":\"inspect\",\"spec\":{}}", NULL, "$.spec: must be an object with \"model\"");
  expect_bad("{\"kind\":\"sleep\",\"spec\":{}}", NULL, "$.kind: unknown job kind \"sleep\"");
  expect_bad("{\"kind\":\"inspect\",\"spec\":{\"dataset\":\"small.h5\"}", NULL, "not valid JSON");
  expect_bad("[]", NULL, "must be an object with \"kind\"");
  expect_bad("{\"kind\":\"inspect\",\"spec\":{\"dataset\":\"nope.h5\"}}", NULL, "cannot read nope.h5");
  expect_bad("{\"kind\":\"inspect\",\"spec\":{\"dataset\":\"job.json\"}}", NULL, "is not an HDF5 file");
  expect_bad("{\"kind\":\"inspect\",\"spec\":{\"dataset\":\"small.h5\"},\"device\":\"tpu:0\"}", NULL,
             "device \"tpu:0\" is not");
  expect_bad("{\"kind\":\"inspect\",\"spec\":{\"dataset\":\"small.h5\"},\"files\":[]}", NULL,
             "\"files\" must map");
  expect_bad("{}", "run bad.json", "usage: lathe run JOB.json --out DIR");
  expect_bad("{}", "run missing.json --out x", "cannot open missing.json");
}

/* A dataset of 2^31 elements whose chunks were never written: reading it exactly is real work
 * (HDF5 fills and converts every element) from a file of a few kilobytes. */
static void write_big_unwritten_h5(const char *path) {
  hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  hsize_t n = 1ull << 31, chunk = 1 << 20;
  hid_t sp = H5Screate_simple(1, &n, NULL);
  hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
  H5Pset_chunk(dcpl, 1, &chunk);
  unsigned char fill = 7;
  H5Pset_fill_value(dcpl, H5T_NATIVE_UCHAR, &fill);
  hid_t d = H5Dcreate2(f, "big", H5T_STD_U8LE, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT);
  H5Dclose(d);
  H5Pclose(dcpl);
  H5Sclose(sp);
  H5Fclose(f);
}

TEST_CASE(run_sigterm_stops_cleanly_with_retryable_error) {
  char p[512];
  snprintf(p, sizeof p, "%s/big.h5", dir);
  write_big_unwritten_h5(p);
  write_text("big.json", "{\"kind\":\"inspect\",\"spec\":{\"dataset\":\"big.h5\",\"exact\":true}}");
  int fds[2];
  REQUIRE(pipe(fds) == 0);
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    dup2(fds[1], 1);
    close(fds[0]);
    close(fds[1]);
    if (chdir(dir) != 0) _exit(99);
    execl(LATHE_BIN, LATHE_BIN, "run", "big.json", "--out", "outbig", (char *)NULL);
    _exit(99);
  }
  close(fds[1]);
  FILE *in = fdopen(fds[0], "r");
  static char line[1 << 16], last[1 << 16];
  int signalled = 0;
  last[0] = 0;
  while (fgets(line, sizeof line, in)) {
    snprintf(last, sizeof last, "%s", line);
    /* stop it once it is reading, as a cancel would */
    if (!signalled && strstr(line, "\"reading /big\"")) {
      kill(pid, SIGTERM);
      signalled = 1;
    }
  }
  fclose(in);
  int st;
  waitpid(pid, &st, 0);
  CHECK(signalled);
  CHECK_MSG(WIFEXITED(st) && WEXITSTATUS(st) == 3, "status %d", st);
  cJSON *e = cJSON_Parse(last);
  REQUIRE(e);
  CHECK(!strcmp(etype(e), "error"));
  CHECK_STR_CONTAINS(emsg(e), "stopped by SIGTERM");
  CHECK(cJSON_IsTrue(cJSON_GetObjectItem(e, "retryable")));
  cJSON_Delete(e);
}

/* schema/jobs/inspect.example.json runs as is from the repository root. */
TEST_CASE(run_example_job_from_repo_root) {
  if (access(LATHE_SOURCE_DIR "/../shared/data/cifar10-jpeg.h5", R_OK) != 0) {
    printf("skip: ../shared/data/cifar10-jpeg.h5 is absent\n");
    return;
  }
  static char out[1 << 18];
  char cmd[2048];
  snprintf(cmd, sizeof cmd, "cd '%s' && %s run schema/jobs/inspect.example.json --out '%s/example'",
           LATHE_SOURCE_DIR, LATHE_BIN, dir);
  FILE *p = popen(cmd, "r");
  REQUIRE(p);
  size_t n = fread(out, 1, sizeof out - 1, p);
  out[n] = 0;
  CHECK(pclose(p) == 0);
  int lines;
  cJSON *e = last_event(out, &lines);
  REQUIRE(e);
  CHECK(!strcmp(etype(e), "result"));
  const cJSON *train = cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetObjectItem(e, "summary"), "splits"), "train");
  CHECK(cJSON_GetObjectItem(train, "samples") && cJSON_GetObjectItem(train, "samples")->valuedouble == 50000);
  cJSON_Delete(e);
}

int main(void) {
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  snprintf(dir, sizeof dir, "/tmp/lathe-test-run-XXXXXX");
  if (!mkdtemp(dir)) return 1;
  RUN(run_inspect_job_events_result_and_artifact);
  RUN(run_files_map_resolves_upload_ids);
  RUN(run_refuses_bad_jobs_with_exit_2);
  RUN(run_sigterm_stops_cleanly_with_retryable_error);
  RUN(run_example_job_from_repo_root);
  char cmd[512];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
  return test_summary();
}
