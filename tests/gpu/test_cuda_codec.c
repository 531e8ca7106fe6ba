/* The GPU activation codec (backend/cuda/codec_cuda.cu) against its CPU twin (actcomp/codec.c),
 * in both directions, on random, post-ReLU, smooth and adversarial tensors (NaN, ±Inf, huge
 * values, denormals, constants, all zeros, escapes, 1-element and odd shapes):
 *   - GPU encode, then GPU decode and CPU decode of that stream: both equal, bit for bit, the
 *     CPU's own round trip (q depends on x and eb alone, so every decoder must give the same
 *     floats whatever predictor or chunking the encoder chose), and |x - x'| <= eb, zeros exact;
 *   - CPU streams (16384- and 1024-symbol chunks, no zstd) decoded on the GPU: same floats;
 *   - a zstd-packed CPU stream is refused with a message;
 *   - the device CRC-32C equals the CPU's on lengths around its segment size;
 *   - damaged streams: every truncation and single-bit flip is refused (the checksum), and with
 *     the checksum refreshed so that the parsers behind it are reached, the GPU decoder accepts
 *     exactly what the CPU decoder accepts and then decodes the same floats;
 *   - the stream is counted under the caller's category and given back.
 * Exits 77 (skipped) with a message when no CUDA device is visible. */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actcomp/ac_cuda.h"
#include "actcomp/ac_internal.h"
#include "lathe/actcomp.h"
#include "lathe/backend.h"
#include "test.h"
#include "../actcomp/relu_field.h"

static lt_backend *gpu;
static ac_cuda *gc;
static lt_ac_codec *cc;
static lt_rng rng;

static void *dev_copy(const void *src, size_t bytes) {
  lt_err err = {0};
  void *d = gpu->vt->alloc(gpu, bytes ? bytes : 1, LT_MEM_DATA, &err);
  if (d && bytes && gpu->vt->to_device(gpu, d, src, bytes, &err)) d = NULL;
  return d;
}

static void dev_free(void *d, size_t bytes) {
  gpu->vt->free(gpu, d, bytes ? bytes : 1, LT_MEM_DATA);
}

/* |x - y| <= eb, zeros exact, non-quantisable values bit-exact; returns the violations. */
static int64_t check_bound(const float *x, const float *y, int64_t n, double eb) {
  int64_t bad = 0;
  for (int64_t i = 0; i < n; i++) {
    if (!isfinite(x[i]) || fabs((double)x[i]) > 1e30) bad += memcmp(&x[i], &y[i], 4) != 0;
    else if (x[i] == 0.0f) bad += y[i] != 0.0f;
    else bad += !(fabs((double)x[i] - (double)y[i]) <= eb);
  }
  return bad;
}

/* GPU decode of len device bytes at ds into host y; returns the status. */
static lt_status gpu_decode(const uint8_t *ds, size_t len, float *y, int64_t n, lt_err *err) {
  float *dy = gpu->vt->alloc(gpu, (size_t)n * 4, LT_MEM_WORKSPACE, err);
  if (!dy) return LT_ERR_NOMEM;
  lt_status st = ac_cuda_decode(gc, ds, len, dy, n, err);
  if (!st) st = gpu->vt->to_host(gpu, y, dy, (size_t)n * 4, err);
  gpu->vt->free(gpu, dy, (size_t)n * 4, LT_MEM_WORKSPACE);
  return st;
}

/* Both directions for one tensor at one bound. */
static void twin(const char *what, const float *x, int ndim, const int64_t *shape, double eb) {
  const int64_t n = lt_shape_numel(ndim, shape);
  const size_t nb = (size_t)n * 4;
  float *ref = malloc(nb), *y = malloc(nb);
  lt_err err = {0};
  lt_ac_buf cs = {0}, hs = {0};
  REQUIRE(ref && y);
  lt_ac_opts o = lt_ac_opts_default();
  o.zstd_level = 0;
  lt_ac_codec_set_opts(cc, &o);
  if (lt_ac_encode(cc, LT_AC_KIND_LORENZO, x, ndim, shape, eb, &cs, &err) ||
      lt_ac_decode(cc, cs.data, cs.len, ref, n, &err)) {
    TEST_FAIL_AT("%s: CPU round trip: %s", what, err.msg);
    lt_ac_buf_free(&cs);
    free(ref);
    free(y);
    return;
  }
  CHECK_MSG(check_bound(x, ref, n, eb) == 0, "%s: CPU round trip out of bound", what);

  /* GPU encode */
  float *dx = dev_copy(x, nb);
  REQUIRE(dx);
  ac_dstream s = {0};
  lt_status st = ac_cuda_encode(gc, dx, ndim, shape, eb, LT_MEM_SAVED, &s, &err);
  CHECK_MSG(st == LT_OK, "%s: GPU encode: %s", what, err.msg);
  if (st == LT_OK) {
    REQUIRE(ac_buf_reserve(&hs, s.len, &err) == LT_OK);
    REQUIRE(gpu->vt->to_host(gpu, hs.data, s.data, s.len, &err) == LT_OK);
    hs.len = s.len;
    memset(y, 0xA5, nb);
    st = lt_ac_decode(cc, hs.data, hs.len, y, n, &err);
    CHECK_MSG(st == LT_OK, "%s: CPU decode of the GPU stream: %s", what, err.msg);
    CHECK_MSG(st || !memcmp(y, ref, nb), "%s: CPU decode of the GPU stream differs", what);
    memset(y, 0xA5, nb);
    st = gpu_decode(s.data, s.len, y, n, &err);
    CHECK_MSG(st == LT_OK, "%s: GPU decode of the GPU stream: %s", what, err.msg);
    CHECK_MSG(st || !memcmp(y, ref, nb), "%s: GPU decode of the GPU stream differs", what);
    /* the GPU chooses the predictor on the whole tensor, so it may differ from the CPU's sample
     * choice; the size then differs too, but never by much */
    CHECK_MSG((double)s.len <= 1.15 * (double)cs.len + 64 * 4 + 512,
              "%s: GPU stream %zu bytes against the CPU's %zu", what, s.len, cs.len);
  }
  ac_cuda_stream_free(gc, &s);

  /* CPU streams on the GPU, at two chunk sizes */
  const int chunks[2] = {0, 1024};
  for (int k = 0; k < 2; k++) {
    o.chunk = chunks[k];
    lt_ac_codec_set_opts(cc, &o);
    REQUIRE(lt_ac_encode(cc, LT_AC_KIND_LORENZO, x, ndim, shape, eb, &cs, &err) == LT_OK);
    uint8_t *ds = dev_copy(cs.data, cs.len);
    REQUIRE(ds);
    memset(y, 0xA5, nb);
    st = gpu_decode(ds, cs.len, y, n, &err);
    CHECK_MSG(st == LT_OK, "%s: GPU decode of a CPU stream (chunk %d): %s", what, chunks[k],
              err.msg);
    CHECK_MSG(st || !memcmp(y, ref, nb), "%s: GPU decode of a CPU stream (chunk %d) differs",
              what, chunks[k]);
    dev_free(ds, cs.len);
  }
  dev_free(dx, nb);
  lt_ac_buf_free(&cs);
  lt_ac_buf_free(&hs);
  free(ref);
  free(y);
}

static void fill_relu(float *x, int64_t planes, int64_t h, int64_t w) {
  ac_test_fill_relu(&rng, x, planes, h, w);
}

TEST_CASE(gpu_codec_matches_cpu_on_activations) {
  int64_t shape[4] = {8, 16, 32, 32};
  const int64_t n = 8 * 16 * 32 * 32;
  float *x = malloc((size_t)n * 4);
  fill_relu(x, 8 * 16, 32, 32);
  const double ebs[4] = {0.01, 0.05, 0.1, 0.3};
  for (int e = 0; e < 4; e++) twin("post-ReLU 8x16x32x32", x, 4, shape, ebs[e]);
  /* smooth: Lorenzo wins */
  for (int64_t i = 0; i < n; i++)
    x[i] = sinf(0.01f * (float)(i % 1024)) + 0.001f * (float)(i / 1024);
  twin("smooth", x, 4, shape, 0.01);
  /* dense random */
  for (int64_t i = 0; i < n; i++) x[i] = lt_rng_normal(&rng);
  twin("normal", x, 4, shape, 0.05);
  free(x);
}

TEST_CASE(gpu_codec_matches_cpu_on_adversarial_values) {
  enum { N = 5000 };
  float x[N];
  const float specials[] = {NAN, INFINITY, -INFINITY, FLT_MAX, -FLT_MAX, 1e-45f, -1e-45f,
                            1.17549435e-38f, 0.0f, -0.0f, 3e38f, 8388607.0f, 1e7f, 0.005f,
                            -0.005f, 0.015f};
  for (int i = 0; i < N; i++)
    x[i] = (i % 7 == 0) ? specials[(i / 7) % (int)(sizeof specials / sizeof *specials)]
                        : lt_rng_normal(&rng) * 10;
  int64_t s1[1] = {N}, s2[2] = {50, 100}, s3[3] = {5, 20, 50}, s4[4] = {2, 5, 20, 25};
  twin("specials 1-D", x, 1, s1, 0.01);
  twin("specials 2-D", x, 2, s2, 0.01);
  twin("specials 3-D", x, 3, s3, 1e-3);
  twin("specials 4-D", x, 4, s4, 0.5);
  /* escapes: jumps far beyond the radius */
  for (int i = 0; i < N; i++) x[i] = (i % 5 == 0) ? 1e4f : 0.0f;
  twin("escapes", x, 3, s3, 0.01);
  /* escapes on every other element: more than the encoder's first guess at its list size, so
   * its second pass runs */
  for (int i = 0; i < N; i++) x[i] = (i % 2) ? 1e4f : -1e4f;
  twin("escape-dense", x, 2, s2, 0.01);
  for (int i = 0; i < N; i++) x[i] = (i % 2) ? NAN : 1.0f;
  twin("outlier-dense", x, 2, s2, 0.01);
  for (int i = 0; i < N; i++) x[i] = 0.0f;
  twin("zeros", x, 2, s2, 0.1);
  for (int i = 0; i < N; i++) x[i] = 3.25f;
  twin("constant", x, 2, s2, 0.1);
  for (int i = 0; i < N; i++) x[i] = 1e-40f * (float)(i % 3);
  twin("denormals", x, 2, s2, 1e-20);
  int64_t one[1] = {1}, odd[4] = {3, 1, 7, 1}, oddw[2] = {1, 4999};
  float v = 0.7f;
  twin("1 element", &v, 1, one, 0.1);
  twin("odd 3x1x7x1", x, 4, odd, 0.1);
  for (int i = 0; i < N; i++) x[i] = lt_rng_normal(&rng);
  twin("odd 1x4999", x, 2, oddw, 0.02);
  int64_t big[3] = {3, 1, 70001}; /* one long row per plane */
  float *xb = malloc(3 * 70001 * 4);
  for (int i = 0; i < 3 * 70001; i++) xb[i] = sinf(0.001f * (float)i) * 5;
  twin("long rows", xb, 3, big, 0.01);
  free(xb);
}

TEST_CASE(gpu_decoder_refuses_zstd_streams_and_bad_arguments) {
  enum { N = 65536 };
  float *x = malloc(N * 4);
  fill_relu(x, 64, 32, 32);
  int64_t shape[3] = {64, 32, 32};
  lt_err err = {0};
  lt_ac_buf cs = {0};
  lt_ac_opts o = lt_ac_opts_default();
  o.zstd_level = 19;
  lt_ac_codec_set_opts(cc, &o);
  REQUIRE(lt_ac_encode(cc, LT_AC_KIND_LORENZO, x, 3, shape, 0.3, &cs, &err) == LT_OK);
  if (cs.data[7] & AC_FLAG_ZSTD) {
    uint8_t *ds = dev_copy(cs.data, cs.len);
    float *y = malloc(N * 4);
    CHECK(gpu_decode(ds, cs.len, y, N, &err) == LT_ERR_UNSUPPORTED);
    CHECK_STR_CONTAINS(err.msg, "CPU");
    free(y);
    dev_free(ds, cs.len);
  }
  float *dx = dev_copy(x, N * 4);
  ac_dstream s = {0};
  CHECK(ac_cuda_encode(gc, dx, 3, shape, 0.0, LT_MEM_SAVED, &s, &err) == LT_ERR_INVALID);
  CHECK_STR_CONTAINS(err.msg, "error bound");
  CHECK(ac_cuda_encode(gc, dx, 9, shape, 0.1, LT_MEM_SAVED, &s, &err) == LT_ERR_INVALID);
  REQUIRE(ac_cuda_encode(gc, dx, 3, shape, 0.1, LT_MEM_SAVED, &s, &err) == LT_OK);
  float *dy = gpu->vt->alloc(gpu, N * 4, LT_MEM_WORKSPACE, &err);
  CHECK(ac_cuda_decode(gc, s.data, s.len, dy, N - 1, &err) == LT_ERR_INVALID);
  CHECK(ac_cuda_decode(gc, s.data, 100, dy, N, &err) == LT_ERR_FORMAT);
  gpu->vt->free(gpu, dy, N * 4, LT_MEM_WORKSPACE);
  ac_cuda_stream_free(gc, &s);
  dev_free(dx, N * 4);
  lt_ac_buf_free(&cs);
  free(x);
}

TEST_CASE(gpu_crc32c_matches_cpu) {
  enum { MAX = 300000 };
  uint8_t *b = malloc(MAX);
  for (int i = 0; i < MAX; i++) b[i] = (uint8_t)(lt_rng_u64(&rng) >> 13);
  uint8_t *d = dev_copy(b, MAX);
  const size_t lens[] = {0, 1, 7, 8, 9, 1023, 1024, 1025, 2048, 4097, 65536, 131071, MAX};
  lt_err err = {0};
  for (size_t k = 0; k < sizeof lens / sizeof *lens; k++) {
    uint32_t g = 0;
    REQUIRE(ac_cuda_crc32c(gc, d, lens[k], &g, &err) == LT_OK);
    CHECK_MSG(g == ac_crc32c(0, b, lens[k]), "length %zu: GPU %08x, CPU %08x", lens[k], g,
              ac_crc32c(0, b, lens[k]));
  }
  dev_free(d, MAX);
  free(b);
}

/* Flips and truncations of a GPU stream: with the stale checksum every one is refused; with the
 * checksum refreshed, the GPU decoder agrees with the CPU decoder on accept or refuse, and on
 * the floats when both accept. */
TEST_CASE(gpu_decoder_agrees_with_cpu_on_damaged_streams) {
  enum { P = 4, H = 20, W = 23, N = P * H * W };
  float x[N], yc[N], yg[N];
  fill_relu(x, P, H, W);
  for (int i = 0; i < N; i += 101) x[i] = 1e4f; /* escapes */
  x[3] = NAN;                                   /* an outlier */
  int64_t shape[3] = {P, H, W};
  lt_err err = {0};
  float *dx = dev_copy(x, sizeof x);
  ac_dstream s = {0};
  REQUIRE(ac_cuda_encode(gc, dx, 3, shape, 0.02, LT_MEM_SAVED, &s, &err) == LT_OK);
  const size_t len = s.len;
  uint8_t *good = malloc(len), *bad = malloc(len);
  REQUIRE(gpu->vt->to_host(gpu, good, s.data, len, &err) == LT_OK);
  uint8_t *ds = gpu->vt->alloc(gpu, len, LT_MEM_DATA, &err);
  int refused = 0, tried = 0, agree = 0, behind = 0, both_ok = 0;
  for (size_t cut = 0; cut < len; cut += 1 + cut / 8) { /* truncations */
    REQUIRE(gpu->vt->to_device(gpu, ds, good, cut, &err) == LT_OK);
    lt_status g = gpu_decode(ds, cut, yg, N, &err);
    refused += g != LT_OK;
    tried++;
  }
  CHECK_MSG(refused == tried, "%d of %d truncations decoded", tried - refused, tried);
  refused = tried = 0;
  for (size_t byte = 0; byte < len; byte += 1 + byte / 16)
    for (int bit = 0; bit < 8; bit += 3) {
      memcpy(bad, good, len);
      bad[byte] ^= (uint8_t)(1u << bit);
      REQUIRE(gpu->vt->to_device(gpu, ds, bad, len, &err) == LT_OK);
      refused += gpu_decode(ds, len, yg, N, &err) == LT_ERR_FORMAT;
      tried++;
      if (byte >= AC_CRC_OFFSET && byte < AC_CRC_OFFSET + 4) continue;
      ac_put_u32(bad + AC_CRC_OFFSET, ac_stream_checksum(bad, len));
      REQUIRE(gpu->vt->to_device(gpu, ds, bad, len, &err) == LT_OK);
      lt_status g = gpu_decode(ds, len, yg, N, &err);
      lt_status c = lt_ac_decode(cc, bad, len, yc, N, &err);
      behind++;
      int same = (g == LT_OK) == (c == LT_OK);
      if (same && g == LT_OK) {
        both_ok++;
        same = !memcmp(yg, yc, sizeof yg);
      }
      if (!same)
        fprintf(stderr, "  byte %zu bit %d: GPU %d, CPU %d\n", byte, bit, (int)g, (int)c);
      agree += same;
    }
  CHECK_MSG(refused == tried, "%d of %d bit flips decoded despite the checksum", tried - refused,
            tried);
  CHECK_MSG(agree == behind && behind > 0, "GPU and CPU decoders disagree on %d of %d",
            behind - agree, behind);
  printf("  damaged streams: %d of %d flips refused; behind the checksum the decoders agreed on"
         " %d of %d (%d decoded by both)\n", refused, tried, agree, behind, both_ok);
  gpu->vt->free(gpu, ds, len, LT_MEM_DATA);
  ac_cuda_stream_free(gc, &s);
  dev_free(dx, sizeof x);
  free(good);
  free(bad);
}

TEST_CASE(gpu_stream_is_counted_under_its_category) {
  enum { N = 1 << 16 };
  float *x = malloc(N * 4);
  fill_relu(x, 64, 32, 32);
  int64_t shape[3] = {64, 32, 32};
  lt_err err = {0};
  float *dx = dev_copy(x, N * 4);
  lt_mem_stats a, b, c;
  lt_mem_get_stats(&a);
  ac_dstream s = {0};
  REQUIRE(ac_cuda_encode(gc, dx, 3, shape, 0.1, LT_MEM_SAVED, &s, &err) == LT_OK);
  lt_mem_get_stats(&b);
  CHECK(b.current[LT_MEM_SAVED] - a.current[LT_MEM_SAVED] == (int64_t)s.len);
  CHECK(s.len < N * 4 / 8); /* post-ReLU at eb 0.1: well over 8x */
  ac_cuda_stream_free(gc, &s);
  lt_mem_get_stats(&c);
  CHECK(c.current[LT_MEM_SAVED] == a.current[LT_MEM_SAVED]);
  dev_free(dx, N * 4);
  free(x);
}

int main(void) {
  lt_err err = {0};
  /* the device checksum's combination math, on the host: runs without a GPU too */
  const int crc_bad = ac_cuda_crc_combine_check();
  printf("%s CRC combination (host run of the device's tree)\n", crc_bad ? "FAIL" : "ok  ");
  gpu = lt_backend_get("cuda", &err);
  if (!gpu) {
    printf("SKIP: the rest of the GPU codec test needs a GPU: %s\n", err.msg);
    return crc_bad ? 1 : 77;
  }
  if (crc_bad) test_cases_failed++, test_failures_total++;
  printf("cuda: %s\n", gpu->description);
  rng = lt_rng_make(11, 3);
  gc = ac_cuda_new(gpu, &err);
  cc = lt_ac_codec_new(NULL, &err);
  if (!gc || !cc) {
    printf("FAIL: codec set-up: %s\n", err.msg);
    return 1;
  }
  RUN(gpu_crc32c_matches_cpu);
  RUN(gpu_codec_matches_cpu_on_activations);
  RUN(gpu_codec_matches_cpu_on_adversarial_values);
  RUN(gpu_decoder_refuses_zstd_streams_and_bad_arguments);
  RUN(gpu_decoder_agrees_with_cpu_on_damaged_streams);
  RUN(gpu_stream_is_counted_under_its_category);
  ac_cuda_free(gc);
  lt_ac_codec_free(cc);
  return test_summary();
}
