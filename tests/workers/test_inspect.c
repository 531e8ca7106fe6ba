/* `lathe inspect` and the HDF5 inspector (workers/inspect.c), on files this test writes with the
 * HDF5 C API: a well-formed dataset file, and files that are truncated, not HDF5, empty, or a
 * directory, each of which must be refused with exit status 2 and a message, never a crash. */
#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "inspect.h"
#include "job.h"
#include "test.h"

static char dir[256];

static void path_in_dir(char *out, size_t cap, const char *name) { snprintf(out, cap, "%s/%s", dir, name); }

/* /train/x (6,3,4,4) uint8 chunked + shuffle + deflate, /train/y (6) int64, /test/x float32 with a
 * NaN and an Inf, string and numeric attributes. */
static void write_good(const char *path) {
  hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  hid_t g = H5Gcreate2(f, "/train", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  hsize_t xd[4] = {6, 3, 4, 4}, ck[4] = {2, 3, 4, 4};
  unsigned char x[6 * 3 * 4 * 4];
  for (size_t i = 0; i < sizeof x; i++) x[i] = (unsigned char)(i % 200 + 10); /* 10..209 */
  hid_t sp = H5Screate_simple(4, xd, NULL);
  hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
  H5Pset_chunk(dcpl, 4, ck);
  H5Pset_shuffle(dcpl);
  H5Pset_deflate(dcpl, 4);
  hid_t d = H5Dcreate2(g, "x", H5T_STD_U8LE, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT);
  H5Dwrite(d, H5T_NATIVE_UCHAR, H5S_ALL, H5S_ALL, H5P_DEFAULT, x);
  H5Dclose(d);
  H5Pclose(dcpl);
  H5Sclose(sp);
  hsize_t yd = 6;
  long long y[6] = {0, 1, 2, 3, 4, 9};
  sp = H5Screate_simple(1, &yd, NULL);
  d = H5Dcreate2(g, "y", H5T_STD_I64LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  H5Dwrite(d, H5T_NATIVE_LLONG, H5S_ALL, H5S_ALL, H5P_DEFAULT, y);
  /* a variable-length string attribute and a numeric array attribute */
  hid_t st = H5Tcopy(H5T_C_S1);
  H5Tset_size(st, H5T_VARIABLE);
  hid_t as = H5Screate(H5S_SCALAR);
  hid_t a = H5Acreate2(d, "classes", st, as, H5P_DEFAULT, H5P_DEFAULT);
  const char *classes = "cat,dog";
  H5Awrite(a, st, &classes);
  H5Aclose(a);
  H5Sclose(as);
  H5Tclose(st);
  hsize_t ad = 3;
  double mean[3] = {0.5, 0.25, 0.125};
  as = H5Screate_simple(1, &ad, NULL);
  a = H5Acreate2(g, "mean", H5T_IEEE_F64LE, as, H5P_DEFAULT, H5P_DEFAULT);
  H5Awrite(a, H5T_NATIVE_DOUBLE, mean);
  H5Aclose(a);
  H5Sclose(as);
  H5Dclose(d);
  H5Sclose(sp);
  H5Gclose(g);
  g = H5Gcreate2(f, "/test", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  hsize_t td = 5;
  float t[5] = {1.0f, -2.0f, NAN, INFINITY, 4.0f};
  sp = H5Screate_simple(1, &td, NULL);
  d = H5Dcreate2(g, "x", H5T_IEEE_F32LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, t);
  H5Dclose(d);
  H5Sclose(sp);
  H5Gclose(g);
  H5Fclose(f);
}

static const cJSON *object_at(const cJSON *summary, const char *path) {
  const cJSON *o;
  cJSON_ArrayForEach(o, cJSON_GetObjectItem(summary, "objects"))
    if (!strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(o, "path")), path)) return o;
  return NULL;
}

static double num(const cJSON *o, const char *a, const char *b) {
  const cJSON *v = cJSON_GetObjectItem(o, a);
  if (b) v = cJSON_GetObjectItem(v, b);
  return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

TEST_CASE(inspect_hdf5_lists_groups_datasets_and_stats) {
  char p[512];
  path_in_dir(p, sizeof p, "good.h5");
  write_good(p);
  cJSON *s = NULL;
  char err[1024] = "";
  inspect_opts o = {0};
  REQUIRE(inspect_file_json(p, &o, &s, err, sizeof err) == 0);
  CHECK(!strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(s, "format")), "hdf5"));
  CHECK(num(s, "groups", NULL) == 3); /* /, /train, /test */
  CHECK(num(s, "datasets", NULL) == 3);
  const cJSON *x = object_at(s, "/train/x");
  REQUIRE(x);
  CHECK(!strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(x, "dtype")), "uint8"));
  char *shape = cJSON_PrintUnformatted(cJSON_GetObjectItem(x, "shape"));
  char *chunks = cJSON_PrintUnformatted(cJSON_GetObjectItem(x, "chunks"));
  CHECK(!strcmp(shape, "[6,3,4,4]"));
  CHECK(!strcmp(chunks, "[2,3,4,4]"));
  free(shape);
  free(chunks);
  CHECK(!strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(x, "layout")), "chunked"));
  CHECK(!strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(x, "compression")), "deflate"));
  const cJSON *filters = cJSON_GetObjectItem(x, "filters");
  CHECK(cJSON_GetArraySize(filters) == 2);
  CHECK(num(cJSON_GetArrayItem(filters, 0), "id", NULL) == H5Z_FILTER_SHUFFLE);
  CHECK(num(cJSON_GetArrayItem(filters, 1), "id", NULL) == H5Z_FILTER_DEFLATE);
  CHECK(cJSON_GetArrayItem(cJSON_GetObjectItem(cJSON_GetArrayItem(filters, 1), "params"), 0)->valuedouble == 4);
  CHECK(num(x, "stats", "min") == 10);
  CHECK(num(x, "stats", "max") == 209);
  double sum = 0;
  for (int i = 0; i < 6 * 3 * 16; i++) sum += i % 200 + 10;
  CHECK_NEAR(num(x, "stats", "mean"), sum / (6 * 3 * 16), 1e-9);
  CHECK(cJSON_IsFalse(cJSON_GetObjectItem(cJSON_GetObjectItem(x, "stats"), "sampled")));
  const cJSON *y = object_at(s, "/train/y");
  REQUIRE(y);
  CHECK(!strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(y, "dtype")), "int64"));
  CHECK(num(y, "stats", "max") == 9);
  CHECK(!strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(cJSON_GetObjectItem(y, "attributes"), "classes")), "cat,dog"));
  char *mean = cJSON_PrintUnformatted(cJSON_GetObjectItem(cJSON_GetObjectItem(object_at(s, "/train"), "attributes"), "mean"));
  CHECK(!strcmp(mean, "[0.5,0.25,0.125]"));
  free(mean);
  const cJSON *t = object_at(s, "/test/x");
  REQUIRE(t);
  CHECK(num(t, "stats", "min") == -2);
  CHECK(num(t, "stats", "max") == 4);
  CHECK_NEAR(num(t, "stats", "mean"), 1.0, 1e-12);
  CHECK(num(t, "stats", "nan") == 1);
  CHECK(num(t, "stats", "inf") == 1);
  /* the split summary of DESIGN.md's layout */
  CHECK(num(cJSON_GetObjectItem(s, "splits"), "train", "samples") == 6);
  CHECK(!cJSON_GetObjectItem(cJSON_GetObjectItem(s, "splits"), "test")); /* no /test/y */
  cJSON_Delete(s);
}

/* A dataset larger than the sample budget: sampled stats by default, exact ones on request. */
TEST_CASE(inspect_hdf5_samples_large_datasets_exact_reads_all) {
  char p[512];
  path_in_dir(p, sizeof p, "large.h5");
  hsize_t n = 3u << 20; /* 3 Mi elements > the 1 Mi sample budget */
  unsigned short *v = malloc(n * sizeof *v);
  REQUIRE(v);
  double sum = 0;
  for (hsize_t i = 0; i < n; i++) {
    v[i] = (unsigned short)(i % 1000);
    sum += v[i];
  }
  v[n - 1] = 60000; /* the exact maximum sits in the last element */
  sum += 60000 - (double)((n - 1) % 1000);
  hid_t f = H5Fcreate(p, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  hid_t sp = H5Screate_simple(1, &n, NULL);
  hid_t d = H5Dcreate2(f, "v", H5T_STD_U16LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  H5Dwrite(d, H5T_NATIVE_USHORT, H5S_ALL, H5S_ALL, H5P_DEFAULT, v);
  H5Dclose(d);
  H5Sclose(sp);
  H5Fclose(f);
  free(v);
  cJSON *s = NULL;
  char err[1024];
  inspect_opts o = {0};
  REQUIRE(inspect_file_json(p, &o, &s, err, sizeof err) == 0);
  const cJSON *st = cJSON_GetObjectItem(object_at(s, "/v"), "stats");
  CHECK(cJSON_IsTrue(cJSON_GetObjectItem(st, "sampled")));
  CHECK(num(st, "elements_read", NULL) <= (1 << 20));
  CHECK(num(st, "elements_read", NULL) >= (1 << 19));
  CHECK(num(st, "max", NULL) <= 999 || num(st, "max", NULL) == 60000);
  cJSON_Delete(s);
  o.exact = 1;
  REQUIRE(inspect_file_json(p, &o, &s, err, sizeof err) == 0);
  st = cJSON_GetObjectItem(object_at(s, "/v"), "stats");
  CHECK(cJSON_IsFalse(cJSON_GetObjectItem(st, "sampled")));
  CHECK(num(st, "elements_read", NULL) == (double)n);
  CHECK(num(st, "max", NULL) == 60000);
  CHECK_NEAR(num(st, "mean", NULL), sum / (double)n, 1e-9);
  CHECK(cJSON_IsTrue(cJSON_GetObjectItem(s, "exact")));
  cJSON_Delete(s);
}

static int stop_after_first(void *user) { return (*(int *)user)++ > 0; }

TEST_CASE(inspect_exact_stops_when_asked) {
  char p[512];
  path_in_dir(p, sizeof p, "large.h5");
  int calls = 0;
  inspect_opts o = {1, stop_after_first, NULL, &calls};
  cJSON *s = NULL;
  char err[1024];
  CHECK(inspect_file_json(p, &o, &s, err, sizeof err) == JOB_EXIT_FAILED);
  CHECK(s == NULL);
  CHECK_STR_CONTAINS(err, "stopped while reading /v");
}

static int refused(const char *name, const char *expect) {
  char p[512];
  path_in_dir(p, sizeof p, name);
  cJSON *s = NULL;
  char err[1024] = "";
  int rc = inspect_file_json(p, NULL, &s, err, sizeof err);
  if (rc != JOB_EXIT_BAD_INPUT || s || !strstr(err, expect)) {
    fprintf(stderr, "%s: rc %d, message \"%s\", expected to contain \"%s\"\n", name, rc, err, expect);
    cJSON_Delete(s);
    return 0;
  }
  return 1;
}

static void write_bytes(const char *name, const void *bytes, size_t n) {
  char p[512];
  path_in_dir(p, sizeof p, name);
  FILE *fp = fopen(p, "wb");
  fwrite(bytes, 1, n, fp);
  fclose(fp);
}

TEST_CASE(inspect_refuses_bad_files_with_a_message) {
  char good[512];
  path_in_dir(good, sizeof good, "good.h5");
  FILE *fp = fopen(good, "rb");
  REQUIRE(fp);
  static unsigned char buf[1 << 20];
  size_t n = fread(buf, 1, sizeof buf, fp);
  fclose(fp);
  REQUIRE(n > 2048);
  write_bytes("truncated.h5", buf, n / 2);
  CHECK(refused("truncated.h5", "not a readable HDF5 file"));
  write_bytes("sig-only.h5", buf, 8); /* the signature and nothing else */
  CHECK(refused("sig-only.h5", "not a readable HDF5 file"));
  /* the superblock intact, the rest overwritten with garbage */
  for (size_t i = 96; i < n; i++) buf[i] = (unsigned char)(i * 131 + 7);
  write_bytes("garbage.h5", buf, n);
  CHECK(refused("garbage.h5", "HDF5"));
  write_bytes("text.h5", "hello, world\n", 13);
  CHECK(refused("text.h5", "is not an HDF5 file"));
  write_bytes("empty.h5", "", 0);
  CHECK(refused("empty.h5", "is not an HDF5 file"));
  CHECK(refused("missing.h5", "No such file"));
  char sub[512];
  path_in_dir(sub, sizeof sub, "adir");
  mkdir(sub, 0700);
  CHECK(refused("adir", "not a regular file"));
}

/* The CLI: exit status and stdout/stderr, as lathe-server's upload check sees them. */
static int run_cli(const char *args, char *out, size_t cap) {
  char cmd[2048];
  snprintf(cmd, sizeof cmd, "%s %s 2>&1", LATHE_BIN, args);
  FILE *p = popen(cmd, "r");
  if (!p) return -1;
  size_t n = fread(out, 1, cap - 1, p);
  out[n] = 0;
  int st = pclose(p);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

TEST_CASE(lathe_inspect_cli_exit_codes) {
  static char out[1 << 16];
  char args[1024];
  snprintf(args, sizeof args, "inspect %s/good.h5", dir);
  CHECK(run_cli(args, out, sizeof out) == 0);
  cJSON *j = cJSON_Parse(out);
  CHECK(j && cJSON_GetObjectItem(j, "objects"));
  cJSON_Delete(j);
  snprintf(args, sizeof args, "inspect %s/truncated.h5", dir);
  CHECK(run_cli(args, out, sizeof out) == 2);
  CHECK_STR_CONTAINS(out, "lathe inspect: ");
  CHECK(!strstr(out, "HDF5-DIAG")); /* HDF5's own error stack stays silent */
  snprintf(args, sizeof args, "inspect %s/text.h5", dir);
  CHECK(run_cli(args, out, sizeof out) == 2);
  CHECK_STR_CONTAINS(out, "not an HDF5 file");
  CHECK(run_cli("inspect", out, sizeof out) == 2);
  CHECK(run_cli("--version", out, sizeof out) == 0);
  CHECK_STR_CONTAINS(out, "lathe 0.");
  CHECK_STR_CONTAINS(out, "backends: cpu");
  CHECK(run_cli("frobnicate", out, sizeof out) == 2);
}

/* A hostile but valid file cannot make the summary huge: objects and attribute bytes are capped
 * and the summary says so. */
TEST_CASE(inspect_summary_size_is_bounded) {
  char p[512];
  path_in_dir(p, sizeof p, "many.h5");
  hid_t f = H5Fcreate(p, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  for (int i = 0; i < 5000; i++) {
    char name[32];
    snprintf(name, sizeof name, "g%05d", i);
    H5Gclose(H5Gcreate2(f, name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
  }
  /* 300 attributes of 4096 bytes each on the root: 1.2 MB of values */
  static char text[4097];
  memset(text, 'a', 4096);
  hid_t st = H5Tcopy(H5T_C_S1);
  H5Tset_size(st, 4096);
  hid_t as = H5Screate(H5S_SCALAR);
  for (int i = 0; i < 300; i++) {
    char name[32];
    snprintf(name, sizeof name, "a%03d", i);
    hid_t a = H5Acreate2(f, name, st, as, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(a, st, text);
    H5Aclose(a);
  }
  H5Sclose(as);
  H5Tclose(st);
  H5Fclose(f);
  cJSON *s = NULL;
  char err[1024];
  REQUIRE(inspect_file_json(p, NULL, &s, err, sizeof err) == 0);
  CHECK(cJSON_IsTrue(cJSON_GetObjectItem(s, "objects_truncated")));
  CHECK(cJSON_GetArraySize(cJSON_GetObjectItem(s, "objects")) == 4096);
  const cJSON *attrs = cJSON_GetObjectItem(object_at(s, "/"), "attributes");
  CHECK(cJSON_GetArraySize(attrs) == 256 + 1); /* 256 listed, then "..." */
  CHECK(cJSON_IsString(cJSON_GetObjectItem(attrs, "a000")));
  const cJSON *late = cJSON_GetObjectItem(attrs, "a255");
  CHECK(cJSON_IsObject(late) && !strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(late, "dtype")), "string"));
  char *all = cJSON_PrintUnformatted(s);
  CHECK(strlen(all) < (2u << 20));
  free(all);
  cJSON_Delete(s);
}

/* Regression: a file whose variable-length string attribute points into a damaged global heap
 * crashed HDF5 1.10.8 inside H5Aread (found by byte-flip fuzzing); lathe inspect must refuse it
 * with exit 2 and a message, not die by SIGSEGV. */
TEST_CASE(lathe_inspect_refuses_file_that_crashes_hdf5) {
  static char out[1 << 16];
  CHECK(run_cli("inspect " LATHE_SOURCE_DIR "/tests/workers/data/vlen-heap-crash.h5", out, sizeof out) == 2);
  CHECK_STR_CONTAINS(out, "is damaged");
}

/* Regressions found by byte-flip fuzzing under AddressSanitizer: files HDF5 1.10 opens but then
 * reads past its own buffers on (a chunk larger than a fixed maximum dimension, a current size
 * above the maximum, a chunked dataset whose filter pipeline was lost, a 28932-byte float). Each
 * is refused before any data is read, with exit 2 and what is wrong. */
TEST_CASE(lathe_inspect_refuses_inconsistent_datasets_before_reading) {
  static const char *const cases[][2] = {
      {"chunk-above-maxdims.h5", "its chunk shape does not fit its dataspace"},
      {"dims-above-maxdims.h5", "dimension 1 is 3808428035, above its maximum 3"},
      {"lost-filter-pipeline.h5", "its unfiltered data takes 1618 bytes in the file, but its shape needs 20000"},
      {"float-type-28932-bytes.h5", "its number type is 28932 bytes"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    static char out[1 << 16];
    char args[1024];
    snprintf(args, sizeof args, "inspect --exact %s/tests/workers/data/%s", LATHE_SOURCE_DIR, cases[i][0]);
    int rc = run_cli(args, out, sizeof out);
    CHECK_MSG(rc == 2, "%s: exit %d", cases[i][0], rc);
    CHECK_STR_CONTAINS(out, cases[i][1]);
    CHECK_STR_CONTAINS(out, "the file is damaged");
  }
}

/* Byte flips in a valid file: every damaged copy gets exit 0 or 2 (with the crash guard catching
 * what HDF5 itself cannot survive), never a signal or a hang. */
TEST_CASE(lathe_inspect_survives_damaged_copies) {
  char good[512], bad[512];
  path_in_dir(good, sizeof good, "good.h5");
  path_in_dir(bad, sizeof bad, "flipped.h5");
  FILE *fp = fopen(good, "rb");
  REQUIRE(fp);
  static unsigned char orig[1 << 20], buf[1 << 20];
  size_t n = fread(orig, 1, sizeof orig, fp);
  fclose(fp);
  unsigned long long x = 0x9E3779B97F4A7C15ull;
  int refused = 0, read_ok = 0;
  for (int round = 0; round < 60; round++) {
    memcpy(buf, orig, n);
    for (int k = 0; k < 1 + round % 16; k++) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      buf[(x >> 8) % n] = (unsigned char)x;
    }
    write_bytes("flipped.h5", buf, n);
    static char out[1 << 16];
    char args[1024];
    snprintf(args, sizeof args, "inspect %s", bad);
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "timeout 30 %s %s >/dev/null 2>&1; echo $?", LATHE_BIN, args);
    FILE *p = popen(cmd, "r");
    REQUIRE(p);
    size_t got = fread(out, 1, sizeof out - 1, p);
    out[got] = 0;
    pclose(p);
    int rc = atoi(out);
    CHECK_MSG(rc == 0 || rc == 2, "round %d: exit %d (124 = hang, >128 = signal)", round, rc);
    refused += rc == 2;
    read_ok += rc == 0;
  }
  CHECK(refused > 0); /* the flips did damage something */
}

int main(void) {
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  snprintf(dir, sizeof dir, "/tmp/lathe-test-inspect-XXXXXX");
  if (!mkdtemp(dir)) return 1;
  RUN(inspect_hdf5_lists_groups_datasets_and_stats);
  RUN(inspect_hdf5_samples_large_datasets_exact_reads_all);
  RUN(inspect_exact_stops_when_asked);
  RUN(inspect_refuses_bad_files_with_a_message);
  RUN(inspect_summary_size_is_bounded);
  RUN(lathe_inspect_cli_exit_codes);
  RUN(lathe_inspect_refuses_file_that_crashes_hdf5);
  RUN(lathe_inspect_refuses_inconsistent_datasets_before_reading);
  RUN(lathe_inspect_survives_damaged_copies);
  char cmd[512];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
  return test_summary();
}
