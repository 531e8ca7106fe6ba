/* Data path: every kind of bad dataset file gets a clear error, good files round-trip, JPEG
 * containers decode, IDX files convert, and batches are deterministic per (seed, epoch, index). */
#include "test.h"

#include "lathe/data.h"

#include <hdf5.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <turbojpeg.h>
#include <unistd.h>

static char tmpdir[256];

static const char *tpath(const char *name) {
  static char buf[8][512];
  static int k;
  char *p = buf[k++ % 8];
  snprintf(p, 512, "%s/%s", tmpdir, name);
  return p;
}

/* Writes one dataset into an open file or group. */
static void h5_put(hid_t loc, const char *name, hid_t type, int ndim, const hsize_t *dims,
                   const void *data) {
  hid_t s = H5Screate_simple(ndim, dims, NULL);
  hid_t d = H5Dcreate2(loc, name, type, s, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  H5Dwrite(d, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data);
  H5Dclose(d);
  H5Sclose(s);
}

/* A split "train" with x of the given rank/type and y of the given type; values filled. */
typedef struct bad_spec {
  int x_ndim;
  hid_t x_type;
  int64_t n_x, n_y;
  hid_t y_type;
  int label_value_at_3; /* written at y[3] */
  float x_poison;       /* written at x[5] when x is float */
} bad_spec;

static const char *write_file(const char *name, const bad_spec *b) {
  const char *path = tpath(name);
  hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  hid_t g = H5Gcreate2(f, "train", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  hsize_t xd[4] = {(hsize_t)b->n_x, 1, 4, 4};
  int xnd = b->x_ndim;
  if (xnd == 3) xd[1] = 4, xd[2] = 4;
  size_t xcount = (size_t)b->n_x * 16;
  double *xv = calloc(xcount, sizeof *xv);
  for (size_t i = 0; i < xcount; i++) xv[i] = (double)(i % 200);
  if (b->x_poison != 0) xv[5] = b->x_poison;
  /* Written through a double buffer: HDF5 converts to the file type. */
  hid_t s = H5Screate_simple(xnd, xd, NULL);
  hid_t d = H5Dcreate2(g, "x", b->x_type, s, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  H5Dwrite(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, xv);
  H5Dclose(d);
  H5Sclose(s);
  free(xv);
  int64_t *yv = calloc((size_t)b->n_y, sizeof *yv);
  for (int64_t i = 0; i < b->n_y; i++) yv[i] = i % 10;
  if (b->n_y > 3) yv[3] = b->label_value_at_3;
  hsize_t yd[1] = {(hsize_t)b->n_y};
  s = H5Screate_simple(1, yd, NULL);
  d = H5Dcreate2(g, "y", b->y_type, s, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  H5Dwrite(d, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, yv);
  H5Dclose(d);
  H5Sclose(s);
  free(yv);
  H5Gclose(g);
  H5Fclose(f);
  return path;
}

static bad_spec good_spec(void) {
  return (bad_spec){.x_ndim = 4, .x_type = H5T_STD_U8LE, .n_x = 20, .n_y = 20,
                    .y_type = H5T_STD_U8LE, .label_value_at_3 = 3};
}

/* Loads path/train expecting failure; returns the message. */
static const char *load_fails(const char *path, const char *split, int num_classes,
                              lt_status want) {
  static lt_err err;
  memset(&err, 0, sizeof err);
  lt_dataset_opts o = {.num_classes = num_classes};
  lt_dataset *ds = lt_dataset_load(path, split, &o, &err);
  if (ds) {
    TEST_FAIL_AT("loading %s/%s succeeded, expected %s", path, split, lt_status_name(want));
    lt_dataset_free(ds);
    return "";
  }
  CHECK_MSG(err.status == want, "status %s, expected %s: %s", lt_status_name(err.status),
            lt_status_name(want), err.msg);
  return err.msg;
}

TEST_CASE(data_good_file_loads_with_uint8_kept) {
  bad_spec b = good_spec();
  const char *p = write_file("good.h5", &b);
  lt_err err = {0};
  lt_dataset_opts o = {.num_classes = 10};
  lt_dataset *ds = lt_dataset_load(p, "train", &o, &err);
  REQUIRE(ds);
  CHECK(ds->n == 20 && ds->c == 1 && ds->h == 4 && ds->w == 4);
  CHECK(ds->x_dtype == LT_U8);
  CHECK(((uint8_t *)ds->x)[17] == 17);
  CHECK(ds->labels && ds->labels[13] == 3 && ds->num_classes == 10);
  lt_dataset_free(ds);
}

TEST_CASE(data_missing_path_is_named) {
  const char *m = load_fails(tpath("nope.h5"), "train", 0, LT_ERR_INVALID);
  CHECK_STR_CONTAINS(m, "does not exist");
  CHECK_STR_CONTAINS(m, "nope.h5");
}

TEST_CASE(data_non_hdf5_file_is_refused) {
  const char *p = tpath("text.h5");
  FILE *f = fopen(p, "w");
  fputs("this is not HDF5\n", f);
  fclose(f);
  CHECK_STR_CONTAINS(load_fails(p, "train", 0, LT_ERR_FORMAT), "not an HDF5 file");
}

TEST_CASE(data_truncated_file_is_refused) {
  bad_spec b = good_spec();
  b.n_x = b.n_y = 4000;
  const char *p = write_file("trunc.h5", &b);
  struct stat sb;
  stat(p, &sb);
  REQUIRE(truncate(p, sb.st_size / 2) == 0);
  const char *m = load_fails(p, "train", 0, LT_ERR_FORMAT);
  CHECK_STR_CONTAINS(m, "truncated");
}

TEST_CASE(data_wrong_rank_says_expected_layout) {
  bad_spec b = good_spec();
  b.x_ndim = 3;
  const char *m = load_fails(write_file("rank3.h5", &b), "train", 0, LT_ERR_INVALID);
  CHECK_STR_CONTAINS(m, "/train/x has 3 dims, expected 4 (N,C,H,W)");
  CHECK_STR_CONTAINS(m, "lathe data convert");
}

TEST_CASE(data_wrong_dtype_is_named) {
  bad_spec b = good_spec();
  b.x_type = H5T_STD_I16LE;
  CHECK_STR_CONTAINS(load_fails(write_file("i16.h5", &b), "train", 0, LT_ERR_INVALID),
                     "is int16; expected uint8 pixels or float32");
  b.x_type = H5T_IEEE_F64LE;
  CHECK_STR_CONTAINS(load_fails(write_file("f64.h5", &b), "train", 0, LT_ERR_INVALID),
                     "is float64");
}

TEST_CASE(data_n_mismatch_between_x_and_y) {
  bad_spec b = good_spec();
  b.n_y = 19;
  const char *m = load_fails(write_file("nmis.h5", &b), "train", 0, LT_ERR_INVALID);
  CHECK_STR_CONTAINS(m, "/train/y has 19 entries but x has 20 samples");
}

TEST_CASE(data_labels_out_of_range) {
  bad_spec b = good_spec();
  b.label_value_at_3 = 10;
  const char *m = load_fails(write_file("lab10.h5", &b), "train", 10, LT_ERR_INVALID);
  CHECK_STR_CONTAINS(m, "/train/y[3] = 10 is out of range");
  CHECK_STR_CONTAINS(m, "[0, 10)");
  b.y_type = H5T_STD_I8LE;
  b.label_value_at_3 = -1;
  m = load_fails(write_file("labneg.h5", &b), "train", 0, LT_ERR_INVALID);
  CHECK_STR_CONTAINS(m, "/train/y[3] = -1 is out of range");
}

TEST_CASE(data_nan_and_inf_in_float_inputs) {
  bad_spec b = good_spec();
  b.x_type = H5T_IEEE_F32LE;
  b.x_poison = NAN;
  const char *m = load_fails(write_file("nan.h5", &b), "train", 0, LT_ERR_INVALID);
  CHECK_STR_CONTAINS(m, "holds NaN in sample 0");
  b.x_poison = INFINITY;
  m = load_fails(write_file("inf.h5", &b), "train", 0, LT_ERR_INVALID);
  CHECK_STR_CONTAINS(m, "holds Inf");
}

TEST_CASE(data_missing_split_lists_present_groups) {
  bad_spec b = good_spec();
  const char *m = load_fails(write_file("nosplit.h5", &b), "val", 0, LT_ERR_INVALID);
  CHECK_STR_CONTAINS(m, "no split /val (groups present: train)");
}

/* ---- JPEG containers -------------------------------------------------------------------- */

/* Encodes n w×h RGB images with a known pattern and writes a jpeg/offsets/y split. */
static const char *write_jpeg_file(const char *name, int n, int corrupt_image, int bad_offsets) {
  const int w = 8, h = 8;
  tjhandle tj = tjInitCompress();
  uint8_t *all = NULL;
  size_t total = 0;
  uint64_t *offs = calloc((size_t)n + 1, sizeof *offs);
  uint8_t rgb[8 * 8 * 3];
  for (int i = 0; i < n; i++) {
    for (int p = 0; p < w * h * 3; p++) rgb[p] = (uint8_t)(i * 20 + (p % 3) * 60);
    unsigned char *jpg = NULL;
    unsigned long len = 0;
    tjCompress2(tj, rgb, w, w * 3, h, TJPF_RGB, &jpg, &len, TJSAMP_444, 95, 0);
    if (i == corrupt_image) len = len / 2; /* cut the scan short */
    all = realloc(all, total + len);
    memcpy(all + total, jpg, len);
    total += len;
    offs[i + 1] = total;
    tjFree(jpg);
  }
  tjDestroy(tj);
  if (bad_offsets) offs[2] = offs[1];
  const char *path = tpath(name);
  hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  hid_t g = H5Gcreate2(f, "test", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  hsize_t jd = total, od = (hsize_t)n + 1, yd = (hsize_t)n;
  h5_put(g, "jpeg", H5T_NATIVE_UINT8, 1, &jd, all);
  h5_put(g, "offsets", H5T_NATIVE_UINT64, 1, &od, offs);
  uint8_t *y = calloc((size_t)n, 1);
  for (int i = 0; i < n; i++) y[i] = (uint8_t)(i % 10);
  h5_put(g, "y", H5T_NATIVE_UINT8, 1, &yd, y);
  H5Gclose(g);
  H5Fclose(f);
  free(all);
  free(offs);
  free(y);
  return path;
}

TEST_CASE(data_jpeg_container_decodes_planar_rgb) {
  const char *p = write_jpeg_file("jpg.h5", 9, -1, 0);
  lt_err err = {0};
  lt_dataset *ds = lt_dataset_load(p, "test", NULL, &err);
  REQUIRE(ds);
  CHECK(ds->n == 9 && ds->c == 3 && ds->h == 8 && ds->w == 8 && ds->from_jpeg);
  const uint8_t *x = ds->x;
  /* Image 4 is a flat colour (80, 140, 200): quality-95 4:4:4 JPEG keeps it within a few levels. */
  for (int ch = 0; ch < 3; ch++) {
    int want = 4 * 20 + ch * 60;
    int got = x[4 * 192 + ch * 64 + 27];
    CHECK_MSG(abs(got - want) <= 3, "channel %d: %d, expected about %d", ch, got, want);
  }
  CHECK(ds->labels[7] == 7);
  lt_dataset_free(ds);
}

TEST_CASE(data_jpeg_container_converts_to_plain) {
  const char *in = write_jpeg_file("jpgconv-in.h5", 5, -1, 0), *out = tpath("jpgconv-out.h5");
  lt_err err = {0};
  REQUIRE(lt_data_convert_jpeg(in, out, 2, &err) == LT_OK);
  lt_dataset *a = lt_dataset_load(in, "test", NULL, &err), *b = lt_dataset_load(out, "test", NULL, &err);
  REQUIRE(a && b);
  CHECK(!b->from_jpeg && b->x_dtype == LT_U8 && b->n == 5 && b->c == 3);
  CHECK(memcmp(a->x, b->x, 5 * 192) == 0);
  CHECK(memcmp(a->labels, b->labels, 5 * sizeof(int32_t)) == 0);
  lt_dataset_free(a);
  lt_dataset_free(b);
}

TEST_CASE(data_jpeg_corrupt_image_is_named) {
  const char *m = load_fails(write_jpeg_file("jpgbad.h5", 9, 5, 0), "test", 0, LT_ERR_FORMAT);
  CHECK_STR_CONTAINS(m, "/test/jpeg: image 5");
}

TEST_CASE(data_jpeg_offsets_must_increase) {
  const char *m = load_fails(write_jpeg_file("jpgoff.h5", 9, -1, 1), "test", 0, LT_ERR_INVALID);
  CHECK_STR_CONTAINS(m, "/test/offsets is not increasing at entry 1");
}

/* The real container, when ../shared/data is present: a few thousand images decode, sizes and
 * labels are as the README says, and the pixel statistics are those of CIFAR-10. */
TEST_CASE(data_cifar_container_loads) {
  const char *dir = getenv("LATHE_SHARED_DATA");
  char p[1024];
  snprintf(p, sizeof p, "%s/cifar10-jpeg.h5", dir ? dir : "../shared/data");
  if (access(p, R_OK) != 0) {
    printf("skip: %s absent\n", p);
    return;
  }
  lt_err err = {0};
  lt_dataset_opts o = {.num_classes = 10};
  lt_dataset *ds = lt_dataset_load(p, "test", &o, &err);
  REQUIRE(ds);
  CHECK(ds->n == 10000 && ds->c == 3 && ds->h == 32 && ds->w == 32);
  double sum[3] = {0};
  const uint8_t *x = ds->x;
  for (int64_t i = 0; i < ds->n; i++)
    for (int ch = 0; ch < 3; ch++)
      for (int k = 0; k < 1024; k++) sum[ch] += x[i * 3072 + ch * 1024 + k];
  const double want[3] = {0.4914, 0.4822, 0.4465};
  for (int ch = 0; ch < 3; ch++) CHECK_NEAR(sum[ch] / (ds->n * 1024.0) / 255.0, want[ch], 0.01);
  lt_dataset_free(ds);
}

/* ---- round trip and IDX conversion ------------------------------------------------------ */

/* An IDX file whose header declares dims; the payload is the declared size minus trunc bytes,
 * capped at 1 MiB so that absurd headers stay cheap to write. */
static const char *write_idx(const char *name, int ndim, const uint32_t *dims, int trunc) {
  const char *p = tpath(name);
  FILE *f = fopen(p, "wb");
  uint8_t head[4] = {0, 0, 8, (uint8_t)ndim};
  fwrite(head, 1, 4, f);
  size_t total = 1;
  for (int i = 0; i < ndim; i++) {
    uint8_t be[4] = {(uint8_t)(dims[i] >> 24), (uint8_t)(dims[i] >> 16), (uint8_t)(dims[i] >> 8),
                     (uint8_t)dims[i]};
    fwrite(be, 1, 4, f);
    total = total * dims[i] > (1u << 20) ? (1u << 20) : total * dims[i];
  }
  for (size_t i = 0; i < total - (size_t)trunc; i++) fputc((int)(i * 7 % 10), f);
  fclose(f);
  return p;
}

TEST_CASE(data_idx_converts_and_round_trips) {
  uint32_t imd[3] = {30, 5, 6}, lbd[1] = {30}, ted[3] = {10, 5, 6}, tld[1] = {10};
  const char *ti = write_idx("tr-img", 3, imd, 0), *tl = write_idx("tr-lab", 1, lbd, 0);
  const char *si = write_idx("te-img", 3, ted, 0), *sl = write_idx("te-lab", 1, tld, 0);
  lt_err err = {0};
  const char *out = tpath("conv.h5");
  REQUIRE(lt_data_convert_idx(ti, tl, si, sl, out, &err) == LT_OK);
  lt_dataset *ds = lt_dataset_load(out, "test", &(lt_dataset_opts){.num_classes = 10}, &err);
  REQUIRE(ds);
  CHECK(ds->n == 10 && ds->c == 1 && ds->h == 5 && ds->w == 6 && ds->x_dtype == LT_U8);
  CHECK(((uint8_t *)ds->x)[13] == 13 * 7 % 10);
  CHECK(ds->labels[9] == 9 * 7 % 10);
  lt_dataset_free(ds);
  char splits[64];
  REQUIRE(lt_dataset_list_splits(out, splits, sizeof splits, &err) == LT_OK);
  CHECK(strcmp(splits, "test,train") == 0);
}

TEST_CASE(data_idx_hostile_headers) {
  lt_idx idx;
  lt_err err = {0};
  uint32_t d[3] = {30, 5, 6};
  CHECK(lt_idx_read(write_idx("short", 3, d, 1), &idx, &err) == LT_ERR_FORMAT);
  CHECK_STR_CONTAINS(err.msg, "truncated");
  uint32_t huge[3] = {0xffffffffu, 0xffffffffu, 0xffffffffu};
  CHECK(lt_idx_read(write_idx("huge", 3, huge, 0), &idx, &err) == LT_ERR_FORMAT);
  const char *gz = tpath("gz");
  FILE *f = fopen(gz, "wb");
  fwrite("\x1f\x8b\x08\x00rest", 1, 8, f);
  fclose(f);
  CHECK(lt_idx_read(gz, &idx, &err) == LT_ERR_FORMAT);
  CHECK_STR_CONTAINS(err.msg, "gunzip");
}

/* ---- batches and augmentation ----------------------------------------------------------- */

static lt_dataset *make_ds(int n, int c, int h, int w) {
  lt_dataset *ds = lt_calloc(LT_MEM_OTHER, sizeof *ds, NULL);
  snprintf(ds->split, sizeof ds->split, "train");
  ds->n = n, ds->c = c, ds->h = h, ds->w = w, ds->x_dtype = LT_U8;
  ds->x = lt_alloc(LT_MEM_DATA, (size_t)n * c * h * w, NULL);
  for (size_t i = 0; i < (size_t)n * c * h * w; i++) ((uint8_t *)ds->x)[i] = (uint8_t)(i * 31 % 251);
  ds->labels = lt_alloc(LT_MEM_DATA, (size_t)n * sizeof(int32_t), NULL);
  for (int i = 0; i < n; i++) ds->labels[i] = i % 10;
  ds->num_classes = 10;
  return ds;
}

TEST_CASE(data_normalisation_matches_formula) {
  lt_dataset *ds = make_ds(4, 3, 5, 5);
  lt_batch_opts o = {.norm = {.n = 3, .mean = {0.5f, 0.4f, 0.3f}, .std = {0.2f, 0.25f, 0.3f}}};
  int64_t idx[2] = {2, 0};
  float x[2 * 75];
  int32_t y[2];
  lt_err err = {0};
  REQUIRE(lt_batch_fill(ds, idx, 2, &o, 1, 0, x, y, NULL, &err) == LT_OK);
  for (int ch = 0; ch < 3; ch++) {
    uint8_t v = ((uint8_t *)ds->x)[2 * 75 + ch * 25 + 7];
    CHECK_NEAR(x[ch * 25 + 7], (v / 255.0 - o.norm.mean[ch]) / o.norm.std[ch], 1e-5);
  }
  CHECK(y[0] == 2 && y[1] == 0);
  lt_batch_opts bad = {.norm = {.n = 2, .mean = {0, 0}, .std = {1, 1}}};
  CHECK(lt_batch_fill(ds, idx, 2, &bad, 1, 0, x, y, NULL, &err) == LT_ERR_INVALID);
  CHECK_STR_CONTAINS(err.msg, "2 mean/std values but the data has 3 channels");
  lt_dataset_free(ds);
}

/* Every augmented sample is the source shifted by (dy, dx) in [-pad, pad] and maybe mirrored,
 * with zeros (pixel space) where the shift leaves the image. */
static int is_shift_of(const float *out, const uint8_t *src, int c, int h, int w, int pad) {
  for (int flip = 0; flip < 2; flip++)
    for (int dy = -pad; dy <= pad; dy++)
      for (int dx = -pad; dx <= pad; dx++) {
        int ok = 1;
        for (int ch = 0; ch < c && ok; ch++)
          for (int y = 0; y < h && ok; y++)
            for (int x = 0; x < w && ok; x++) {
              int sx = (flip ? w - 1 - x : x) + dx, sy = y + dy;
              float want = sy >= 0 && sy < h && sx >= 0 && sx < w
                               ? src[ch * h * w + sy * w + sx] / 255.0f
                               : 0.0f;
              ok = fabsf(out[ch * h * w + y * w + x] - want) < 1e-6f;
            }
        if (ok) return 1;
      }
  return 0;
}

TEST_CASE(data_augmentation_deterministic_per_seed_epoch_index) {
  lt_dataset *ds = make_ds(64, 3, 8, 8);
  lt_batch_opts o = {.pad = 2, .flip = 1};
  const size_t per = 3 * 64;
  int64_t a_idx[64], b_idx[5] = {40, 3, 17, 63, 0};
  for (int i = 0; i < 64; i++) a_idx[i] = i;
  float *a = malloc(64 * per * sizeof(float)), *b = malloc(5 * per * sizeof(float));
  float *c = malloc(64 * per * sizeof(float));
  lt_err err = {0};
  REQUIRE(lt_batch_fill(ds, a_idx, 64, &o, 42, 3, a, NULL, NULL, &err) == LT_OK);
  REQUIRE(lt_batch_fill(ds, b_idx, 5, &o, 42, 3, b, NULL, NULL, &err) == LT_OK);
  /* Same sample, same (seed, epoch): same pixels, whatever batch it lands in. */
  for (int i = 0; i < 5; i++)
    CHECK_MSG(memcmp(b + i * per, a + b_idx[i] * per, per * sizeof(float)) == 0,
              "sample %lld differs between batches", (long long)b_idx[i]);
  /* Each output is a legal crop/flip of its source. */
  for (int i = 0; i < 64; i++)
    CHECK_MSG(is_shift_of(a + i * per, (uint8_t *)ds->x + i * per, 3, 8, 8, 2),
              "sample %d is not a shifted/flipped copy", i);
  /* Another epoch draws other crops for most samples. */
  REQUIRE(lt_batch_fill(ds, a_idx, 64, &o, 42, 4, c, NULL, NULL, &err) == LT_OK);
  int differ = 0;
  for (int i = 0; i < 64; i++) differ += memcmp(a + i * per, c + i * per, per * sizeof(float)) != 0;
  CHECK_MSG(differ > 48, "only %d of 64 samples changed between epochs", differ);
  free(a);
  free(b);
  free(c);
  lt_dataset_free(ds);
}

TEST_CASE(data_shuffle_is_a_permutation_per_seed_and_epoch) {
  enum { N = 1000 };
  int64_t p1[N], p2[N], p3[N];
  lt_data_shuffle(N, 7, 1, p1);
  lt_data_shuffle(N, 7, 1, p2);
  lt_data_shuffle(N, 7, 2, p3);
  CHECK(memcmp(p1, p2, sizeof p1) == 0);
  CHECK(memcmp(p1, p3, sizeof p1) != 0);
  char seen[N] = {0};
  for (int i = 0; i < N; i++) {
    REQUIRE(p1[i] >= 0 && p1[i] < N && !seen[p1[i]]);
    seen[p1[i]] = 1;
  }
}

int main(void) {
  snprintf(tmpdir, sizeof tmpdir, "/tmp/lathe-test-data-XXXXXX");
  if (!mkdtemp(tmpdir)) return 1;
  RUN(data_good_file_loads_with_uint8_kept);
  RUN(data_missing_path_is_named);
  RUN(data_non_hdf5_file_is_refused);
  RUN(data_truncated_file_is_refused);
  RUN(data_wrong_rank_says_expected_layout);
  RUN(data_wrong_dtype_is_named);
  RUN(data_n_mismatch_between_x_and_y);
  RUN(data_labels_out_of_range);
  RUN(data_nan_and_inf_in_float_inputs);
  RUN(data_missing_split_lists_present_groups);
  RUN(data_jpeg_container_decodes_planar_rgb);
  RUN(data_jpeg_container_converts_to_plain);
  RUN(data_jpeg_corrupt_image_is_named);
  RUN(data_jpeg_offsets_must_increase);
  RUN(data_cifar_container_loads);
  RUN(data_idx_converts_and_round_trips);
  RUN(data_idx_hostile_headers);
  RUN(data_normalisation_matches_formula);
  RUN(data_augmentation_deterministic_per_seed_epoch_index);
  RUN(data_shuffle_is_a_permutation_per_seed_and_epoch);
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
  return test_summary();
}
