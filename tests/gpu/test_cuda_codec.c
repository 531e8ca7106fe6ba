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
 *   - the stream is counted under the caller's category and given back;
 *   - the device stash operations (backend/cuda/stash_cuda.cu, the table of actcomp/ac_dev.h)
 *     against their CPU twins on data with zeros of both signs, NaN, ±Inf and denormals, at sizes
 *     around byte and warp boundaries: masks, 2-bit packing and zero counts bit-identical,
 *     chan_map bit-identical to fmaf then the mask (and within the twin's own rounding of it),
 *     sums within 1e-12 relative; encode, plain and affine, decodes (GPU and CPU) to the floats
 *     of the CPU codec's stream;
 *   - the backend's copy and accumulate.
 * Exits 77 (skipped) with a message when no CUDA device is visible. */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actcomp/ac_cuda.h"
#include "actcomp/ac_dev.h"
#include "actcomp/ac_internal.h"
#include "backend/cpu/kernels.h"
#include "lathe/actcomp.h"
#include "lathe/backend.h"
#include "test.h"
#include "../actcomp/relu_field.h"

static lt_backend *gpu;
static ac_cuda *gc;
static lt_ac_codec *cc;
static lt_rng rng;

static void *dev_alloc(size_t bytes) {
  lt_err err = {0};
  return gpu->vt->alloc(gpu, bytes ? bytes : 1, LT_MEM_DATA, &err);
}

static void *dev_copy(const void *src, size_t bytes) {
  lt_err err = {0};
  void *d = dev_alloc(bytes);
  if (d && bytes && gpu->vt->to_device(gpu, d, src, bytes, &err)) d = NULL;
  return d;
}

static void dev_free(void *d, size_t bytes) {
  gpu->vt->free(gpu, d, bytes ? bytes : 1, LT_MEM_DATA);
}

/* a and b the same float: bit-identical, or (nan_any) both NaN. Float arithmetic on a NaN keeps
 * its payload on x86 and gives the canonical NaN on the GPU, so where both computed a NaN from
 * one, only NaN-ness can be compared. */
static int same_float(float a, float b, int nan_any) {
  return !memcmp(&a, &b, 4) || (nan_any && isnan(a) && isnan(b));
}

/* |x - y| <= eb, zeros exact, non-quantisable values bit-exact (NaN: see same_float); returns
 * the violations. */
static int64_t check_bound(const float *x, const float *y, int64_t n, double eb, int nan_any) {
  int64_t bad = 0;
  for (int64_t i = 0; i < n; i++) {
    if (!isfinite(x[i]) || fabs((double)x[i]) > 1e30) bad += !same_float(x[i], y[i], nan_any);
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
  CHECK_MSG(check_bound(x, ref, n, eb, 0) == 0, "%s: CPU round trip out of bound", what);

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

/* ---- the device stash operations (backend/cuda/stash_cuda.cu) against their CPU twins ------- */

#define GUARD 8 /* bytes past an output that an operation must leave alone */

static const int64_t stash_sizes[] = {0, 1, 7, 8, 9, 31, 33, 1000, 65537};
#define NSTASH_SIZES ((int)(sizeof stash_sizes / sizeof *stash_sizes))

/* Device bytes back into host memory; returns the status. */
static lt_status to_host(void *h, const void *d, size_t bytes) {
  lt_err err = {0};
  return bytes ? gpu->vt->to_host(gpu, h, d, bytes, &err) : LT_OK;
}

/* Random floats with the values the operations must get right: a quarter zeros of either sign,
 * one in sixteen from specials[lo, hi), the rest normal of either sign. */
static const float specials[] = {NAN, INFINITY, -INFINITY, 1e-45f, -1e-45f, 1.17549435e-38f,
                                 FLT_MAX, -FLT_MAX};
static void fill_special(float *x, int64_t n, int lo, int hi) {
  for (int64_t i = 0; i < n; i++) {
    const uint64_t r = lt_rng_below(&rng, 16);
    if (r < 4) x[i] = r & 1 ? -0.0f : 0.0f;
    else if (r == 4) x[i] = specials[lo + (int)lt_rng_below(&rng, (uint64_t)(hi - lo))];
    else x[i] = 3.0f * lt_rng_normal(&rng);
  }
}

static void *stash_open(void) {
  lt_err err = {0};
  const ac_dev_ops *ops = gpu->vt->actcomp;
  void *ctx = ops ? ops->open(gpu, &err) : NULL;
  if (!ctx) fprintf(stderr, "  GPU stash context: %s\n", ops ? err.msg : "no actcomp table");
  return ctx;
}

TEST_CASE(gpu_stash_masks_match_cpu_twins) {
  const ac_dev_ops *ops = gpu->vt->actcomp;
  void *ctx = stash_open();
  REQUIRE(ctx);
  lt_err err = {0};
  for (int k = 0; k < NSTASH_SIZES; k++) {
    const int64_t n = stash_sizes[k], nb = (n + 7) / 8;
    const size_t fb = (size_t)n * 4;
    float *x = malloc(fb + 4), *yc = malloc(fb + 4), *yg = malloc(fb + 4);
    uint8_t *mc = malloc((size_t)nb + GUARD), *mg = malloc((size_t)nb + GUARD);
    REQUIRE(x && yc && yg && mc && mg);
    fill_special(x, n, 0, 8);
    memset(mc, 0xA5, (size_t)nb + GUARD);
    float *dx = dev_copy(x, fb), *dy = dev_alloc(fb);
    uint8_t *dm = dev_copy(mc, (size_t)nb + GUARD); /* 0xA5 past the mask must stay */
    REQUIRE(dx && dy && dm);
    const int64_t nnz_c = ac_mask1_pack(x, n, mc);
    int64_t nnz_g = -1, nnz_spec = 0;
    for (int64_t i = 0; i < n; i++) nnz_spec += x[i] > 0.0f;
    CHECK_MSG(ops->mask1_pack(ctx, dx, n, dm, &nnz_g, &err) == LT_OK, "n %lld: mask1_pack: %s",
              (long long)n, err.msg);
    REQUIRE(to_host(mg, dm, (size_t)nb + GUARD) == LT_OK);
    CHECK_MSG(nnz_g == nnz_c && nnz_g == nnz_spec, "n %lld: nnz GPU %lld, CPU %lld, y > 0 %lld",
              (long long)n, (long long)nnz_g, (long long)nnz_c, (long long)nnz_spec);
    CHECK_MSG(!memcmp(mg, mc, (size_t)nb), "n %lld: mask bytes differ from the CPU's",
              (long long)n);
    int guard_ok = 1;
    for (int j = 0; j < GUARD; j++) guard_ok &= mg[nb + j] == 0xA5;
    CHECK_MSG(guard_ok, "n %lld: mask1_pack wrote past (n + 7) / 8 bytes", (long long)n);
    CHECK_MSG(n % 8 == 0 || mg[nb - 1] >> (n % 8) == 0, "n %lld: unused high bits of the last "
              "mask byte set", (long long)n);

    ac_mask1_unpack(mc, n, yc);
    memset(yg, 0xA5, fb);
    CHECK_MSG(ops->mask1_unpack(ctx, dm, n, dy, &err) == LT_OK, "n %lld: mask1_unpack: %s",
              (long long)n, err.msg);
    REQUIRE(to_host(yg, dy, fb) == LT_OK);
    CHECK_MSG(!memcmp(yg, yc, fb), "n %lld: unpacked mask differs from the CPU's", (long long)n);
    int64_t spec_bad = 0;
    for (int64_t i = 0; i < n; i++) spec_bad += yg[i] != (x[i] > 0.0f ? 1.0f : 0.0f);
    CHECK_MSG(spec_bad == 0, "n %lld: %lld unpacked values are not y > 0", (long long)n,
              (long long)spec_bad);
    dev_free(dx, fb);
    dev_free(dy, fb);
    dev_free(dm, (size_t)nb + GUARD);
    free(x), free(yc), free(yg), free(mc), free(mg);
  }
  ops->close(ctx);
  ops->close(NULL);
}

TEST_CASE(gpu_stash_pack2_matches_cpu_argmax_packing) {
  const ac_dev_ops *ops = gpu->vt->actcomp;
  void *ctx = stash_open();
  REQUIRE(ctx);
  lt_err err = {0};
  for (int k = 0; k < NSTASH_SIZES; k++) {
    const int64_t n = stash_sizes[k], np = (n + 3) / 4;
    uint8_t *a = malloc((size_t)n + 1), *ac = malloc((size_t)n + 1), *ag = malloc((size_t)n + 1);
    uint8_t *pc = malloc((size_t)np + GUARD), *pg = malloc((size_t)np + GUARD);
    REQUIRE(a && ac && ag && pc && pg);
    for (int64_t i = 0; i < n; i++) a[i] = (uint8_t)lt_rng_below(&rng, 4);
    memset(pc, 0xA5, (size_t)np + GUARD);
    uint8_t *da = dev_copy(a, (size_t)n), *dp = dev_copy(pc, (size_t)np + GUARD);
    uint8_t *dA = dev_alloc((size_t)n);
    REQUIRE(da && dp && dA);
    lt_cpu_argmax_pack2((size_t)n, a, pc);
    int fits = -1;
    CHECK_MSG(ops->pack2(ctx, da, n, dp, &fits, &err) == LT_OK, "n %lld: pack2: %s",
              (long long)n, err.msg);
    CHECK_MSG(fits == 1, "n %lld: indices 0..3 reported as not fitting (%d)", (long long)n, fits);
    REQUIRE(to_host(pg, dp, (size_t)np + GUARD) == LT_OK);
    CHECK_MSG(!memcmp(pg, pc, (size_t)np), "n %lld: packed bytes differ from the CPU's",
              (long long)n);
    int guard_ok = 1;
    for (int j = 0; j < GUARD; j++) guard_ok &= pg[np + j] == 0xA5;
    CHECK_MSG(guard_ok, "n %lld: pack2 wrote past (n + 3) / 4 bytes", (long long)n);

    lt_cpu_argmax_unpack2((size_t)n, pc, ac);
    CHECK_MSG(ops->unpack2(ctx, dp, n, dA, &err) == LT_OK, "n %lld: unpack2: %s", (long long)n,
              err.msg);
    REQUIRE(to_host(ag, dA, (size_t)n) == LT_OK);
    CHECK_MSG(!memcmp(ag, ac, (size_t)n) && !memcmp(ag, a, (size_t)n),
              "n %lld: unpacked indices differ from the CPU's or the originals", (long long)n);

    if (n) { /* one index above 3, anywhere: does not fit */
      a[lt_rng_below(&rng, (uint64_t)n)] = n > 100 ? 255 : 4;
      lt_err e2 = {0};
      REQUIRE(gpu->vt->to_device(gpu, da, a, (size_t)n, &e2) == LT_OK);
      fits = -1;
      CHECK_MSG(ops->pack2(ctx, da, n, dp, &fits, &err) == LT_OK, "n %lld: pack2: %s",
                (long long)n, err.msg);
      CHECK_MSG(fits == 0, "n %lld: an index above 3 reported as fitting (%d)", (long long)n,
                fits);
    }
    dev_free(da, (size_t)n);
    dev_free(dA, (size_t)n);
    dev_free(dp, (size_t)np + GUARD);
    free(a), free(ac), free(ag), free(pc), free(pg);
  }
  ops->close(ctx);
}

/* g within two roundings of a·z + b of c: the CPU twin may round a·z and + b separately where
 * the device computes fmaf (ac_dev.h). */
static int near_fma(float g, float c, float z, float a, float b) {
  if (same_float(g, c, 1)) return 1;
  const double tol = ldexp(fabs((double)a * (double)z) + fabs((double)b), -22) + 1e-44;
  return fabs((double)g - (double)c) <= tol;
}

TEST_CASE(gpu_stash_chan_map_matches_cpu_twin) {
  const ac_dev_ops *ops = gpu->vt->actcomp;
  void *ctx = stash_open();
  REQUIRE(ctx);
  lt_err err = {0};
  static const int64_t shapes[][3] = {{3, 5, 7}, {2, 16, 1024}, {4, 3, 1}, {1, 1, 65537}};
  int64_t twin_ulp = 0, total = 0;
  for (size_t k = 0; k < sizeof shapes / sizeof *shapes; k++) {
    const int64_t B = shapes[k][0], C = shapes[k][1], HW = shapes[k][2], n = B * C * HW;
    const int64_t nb = (n + 7) / 8;
    const size_t fb = (size_t)n * 4;
    float *z = malloc(fb), *model = malloc(fb), *yc = malloc(fb), *yg = malloc(fb);
    float *a = malloc((size_t)C * 4), *b = malloc((size_t)C * 4);
    uint8_t *m = malloc((size_t)nb);
    REQUIRE(z && model && yc && yg && a && b && m);
    /* no ±FLT_MAX: there a separately rounded a·z overflows where fmaf need not */
    fill_special(z, n, 0, 6);
    for (int64_t c = 0; c < C; c++) {
      a[c] = c % 4 == 1 ? 0.0f : lt_rng_normal(&rng); /* a zero scale meets Inf: NaN */
      b[c] = lt_rng_normal(&rng);
    }
    for (int64_t j = 0; j < nb; j++) m[j] = (uint8_t)lt_rng_u32(&rng);
    float *dz = dev_copy(z, fb), *dy = dev_alloc(fb);
    uint8_t *dm = dev_copy(m, (size_t)nb);
    REQUIRE(dz && dy && dm);
    for (int masked = 0; masked < 2; masked++)
      for (int inplace = 0; inplace < 2; inplace++) {
        const uint8_t *mk = masked ? m : NULL;
        for (int64_t i = 0; i < n; i++) { /* the specification */
          const int64_t c = i / HW % C;
          float v = fmaf(z[i], a[c], b[c]);
          if (mk) v = (mk[i >> 3] >> (i & 7)) & 1 && v > 0.0f ? v : 0.0f;
          model[i] = v;
        }
        ac_chan_map(yc, z, B, C, HW, a, b, mk);
        float *dout = dy;
        if (inplace) {
          lt_err e2 = {0};
          REQUIRE(gpu->vt->to_device(gpu, dy, z, fb, &e2) == LT_OK);
        }
        lt_status st = ops->chan_map(ctx, dout, inplace ? dout : dz, B, C, HW, a, b,
                                     masked ? dm : NULL, &err);
        CHECK_MSG(st == LT_OK, "%lldx%lldx%lld: chan_map: %s", (long long)B, (long long)C,
                  (long long)HW, err.msg);
        REQUIRE(to_host(yg, dout, fb) == LT_OK);
        int64_t bad = 0, far = 0;
        for (int64_t i = 0; i < n; i++) {
          const int64_t c = i / HW % C;
          bad += !same_float(yg[i], model[i], 1);
          far += !near_fma(yg[i], yc[i], z[i], a[c], b[c]);
          twin_ulp += !same_float(yg[i], yc[i], 1);
        }
        total += n;
        CHECK_MSG(bad == 0, "%lldx%lldx%lld (mask %d, in place %d): %lld elements differ from "
                  "fmaf then the mask", (long long)B, (long long)C, (long long)HW, masked,
                  inplace, (long long)bad);
        CHECK_MSG(far == 0, "%lldx%lldx%lld (mask %d, in place %d): %lld elements further "
                  "from the CPU twin than its rounding", (long long)B, (long long)C,
                  (long long)HW, masked, inplace, (long long)far);
      }
    dev_free(dz, fb);
    dev_free(dy, fb);
    dev_free(dm, (size_t)nb);
    free(z), free(model), free(yc), free(yg), free(a), free(b), free(m);
  }
  printf("  chan_map: %lld of %lld elements not bit-identical to the CPU twin (its non-fused "
         "rounding)\n", (long long)twin_ulp, (long long)total);
  CHECK(ops->chan_map(ctx, NULL, NULL, 0, 3, 7, NULL, NULL, NULL, &err) == LT_OK);
  ops->close(ctx);
}

TEST_CASE(gpu_stash_counts_and_sums_match_cpu_twins) {
  const ac_dev_ops *ops = gpu->vt->actcomp;
  void *ctx = stash_open();
  REQUIRE(ctx);
  lt_err err = {0};
  for (int k = 0; k < NSTASH_SIZES; k++) {
    const int64_t n = stash_sizes[k];
    const size_t fb = (size_t)n * 4;
    float *x = malloc(fb + 4);
    REQUIRE(x);
    fill_special(x, n, 0, 8);
    float *dx = dev_copy(x, fb);
    REQUIRE(dx);
    int64_t zg = -1, zspec = 0;
    for (int64_t i = 0; i < n; i++) zspec += x[i] == 0.0f;
    CHECK_MSG(ops->count_zeros(ctx, dx, n, &zg, &err) == LT_OK, "n %lld: count_zeros: %s",
              (long long)n, err.msg);
    CHECK_MSG(zg == ac_count_zeros(x, n) && zg == zspec, "n %lld: zeros GPU %lld, CPU %lld, "
              "x == 0 %lld", (long long)n, (long long)zg, (long long)ac_count_zeros(x, n),
              (long long)zspec);

    fill_special(x, n, 3, 8); /* finite: denormals, FLT_MAX */
    lt_err e2 = {0};
    REQUIRE(!n || gpu->vt->to_device(gpu, dx, x, fb, &e2) == LT_OK);
    for (int p = 1; p <= 2; p++) {
      double sg = -1;
      const double sc = ac_sum_pow(x, n, p);
      CHECK_MSG(ops->sum_pow(ctx, dx, n, p, &sg, &err) == LT_OK, "n %lld: sum_pow: %s",
                (long long)n, err.msg);
      CHECK_MSG(fabs(sg - sc) <= 1e-12 * fabs(sc), "n %lld, p %d: sum GPU %.17g, CPU %.17g",
                (long long)n, p, sg, sc);
    }
    if (n >= 2) { /* a NaN makes both sums NaN */
      x[n / 2] = NAN;
      REQUIRE(gpu->vt->to_device(gpu, dx, x, fb, &e2) == LT_OK);
      for (int p = 1; p <= 2; p++) {
        double sg = 0;
        CHECK(ops->sum_pow(ctx, dx, n, p, &sg, &err) == LT_OK);
        CHECK_MSG(isnan(sg) && isnan(ac_sum_pow(x, n, p)), "n %lld, p %d: NaN sum GPU %g",
                  (long long)n, p, sg);
      }
    }
    dev_free(dx, fb);
    free(x);
  }
  double s = 0;
  CHECK(ops->sum_pow(ctx, NULL, 0, 3, &s, &err) == LT_ERR_INVALID);
  ops->close(ctx);
}

/* encode (plain and affine) against lt_ac_encode / lt_ac_encode_affine, all at one bound: the
 * floats every decoder makes of the GPU stream are the CPU stream's. */
TEST_CASE(gpu_stash_encode_matches_cpu_codec) {
  const ac_dev_ops *ops = gpu->vt->actcomp;
  void *ctx = stash_open();
  REQUIRE(ctx);
  lt_err err = {0};
  static const struct {
    int ndim;
    int64_t shape[4];
  } cases[] = {{3, {3, 5, 7, 0}}, {3, {2, 16, 1024, 0}}, {3, {4, 3, 1, 0}}, {4, {2, 4, 9, 11}}};
  const double eb = 0.05;
  lt_ac_opts o = lt_ac_opts_default();
  o.zstd_level = 0;
  lt_ac_codec_set_opts(cc, &o);
  for (size_t k = 0; k < sizeof cases / sizeof *cases; k++)
    for (int affine = 0; affine < 2; affine++) {
      const int ndim = cases[k].ndim;
      const int64_t *shape = cases[k].shape, n = lt_shape_numel(ndim, shape), C = shape[1];
      const int64_t hw = n / shape[0] / C;
      const size_t fb = (size_t)n * 4;
      float *x = malloc(fb), *z = malloc(fb), *ref = malloc(fb), *yg = malloc(fb),
            *yh = malloc(fb);
      float *off = malloc((size_t)C * 4), *scale = malloc((size_t)C * 4);
      REQUIRE(x && z && ref && yg && yh && off && scale);
      fill_special(x, n, 0, 8);
      for (int64_t c = 0; c < C; c++) {
        off[c] = lt_rng_normal(&rng);
        scale[c] = 1.0f / (0.25f + fabsf(lt_rng_normal(&rng)));
      }
      for (int64_t i = 0; i < n; i++) {
        const int64_t c = i / hw % C;
        z[i] = affine ? (x[i] - off[c]) * scale[c] : x[i];
      }
      char what[96];
      snprintf(what, sizeof what, "%s %lldx%lldx%lld%s", affine ? "affine" : "plain",
               (long long)shape[0], (long long)shape[1], (long long)shape[2],
               ndim == 4 ? "x11" : "");
      lt_ac_buf cs = {0}, hs = {0};
      lt_status st = affine ? lt_ac_encode_affine(cc, x, ndim, shape, eb, off, scale, &cs, &err)
                            : lt_ac_encode(cc, LT_AC_KIND_LORENZO, x, ndim, shape, eb, &cs, &err);
      REQUIRE(st == LT_OK && lt_ac_decode(cc, cs.data, cs.len, ref, n, &err) == LT_OK);

      float *dx = dev_copy(x, fb), *dy = dev_alloc(fb);
      REQUIRE(dx && dy);
      lt_mem_stats m0, m1, m2;
      lt_mem_get_stats(&m0);
      uint8_t *data = NULL;
      size_t bytes = 0;
      st = ops->encode(ctx, dx, ndim, shape, eb, affine ? off : NULL, affine ? scale : NULL,
                       &data, &bytes, &err);
      CHECK_MSG(st == LT_OK, "%s: encode: %s", what, err.msg);
      if (st == LT_OK) {
        lt_mem_get_stats(&m1);
        CHECK_MSG(m1.current[LT_MEM_SAVED] - m0.current[LT_MEM_SAVED] == (int64_t)bytes,
                  "%s: the stream is not %zu bytes of LT_MEM_SAVED", what, bytes);
        memset(yg, 0xA5, fb);
        st = ops->decode(ctx, data, bytes, dy, n, &err);
        CHECK_MSG(st == LT_OK, "%s: GPU decode: %s", what, err.msg);
        REQUIRE(to_host(yg, dy, fb) == LT_OK);
        REQUIRE(ac_buf_reserve(&hs, bytes, &err) == LT_OK);
        REQUIRE(to_host(hs.data, data, bytes) == LT_OK);
        memset(yh, 0xA5, fb);
        st = lt_ac_decode(cc, hs.data, bytes, yh, n, &err);
        CHECK_MSG(st == LT_OK, "%s: CPU decode of the GPU stream: %s", what, err.msg);
        int64_t dg = 0, dh = 0;
        for (int64_t i = 0; i < n; i++) {
          dg += !same_float(yg[i], ref[i], affine);
          dh += !same_float(yh[i], ref[i], affine);
        }
        CHECK_MSG(dg == 0 && dh == 0, "%s: %lld (GPU decode), %lld (CPU decode) floats differ "
                  "from the CPU stream's", what, (long long)dg, (long long)dh);
        CHECK_MSG(check_bound(z, yg, n, eb, affine) == 0, "%s: decoded z out of bound", what);
        gpu->vt->free(gpu, data, bytes, LT_MEM_SAVED);
        lt_mem_get_stats(&m2);
        CHECK_MSG(m2.current[LT_MEM_SAVED] == m0.current[LT_MEM_SAVED],
                  "%s: LT_MEM_SAVED not back after the stream's free", what);
      }
      dev_free(dx, fb);
      dev_free(dy, fb);
      lt_ac_buf_free(&cs);
      lt_ac_buf_free(&hs);
      free(x), free(z), free(ref), free(yg), free(yh), free(off), free(scale);
    }
  /* the arguments an affine map needs */
  const int64_t s2[2] = {4, 8}, s3[3] = {2, 4, 8};
  const float one[4] = {1, 1, 1, 1};
  float *dx = dev_alloc(64 * 4);
  uint8_t *data = NULL;
  size_t bytes = 0;
  CHECK(ops->encode(ctx, dx, 2, s2, 0.1, one, one, &data, &bytes, &err) == LT_ERR_INVALID);
  CHECK(ops->encode(ctx, dx, 3, s3, 0.1, one, NULL, &data, &bytes, &err) == LT_ERR_INVALID);
  CHECK(data == NULL);
  dev_free(dx, 64 * 4);
  ops->close(ctx);
}

TEST_CASE(gpu_backend_copy_and_accumulate) {
  REQUIRE(gpu->vt->copy && gpu->vt->accumulate);
  enum { N = 100003, OFF = 7, M = 1000 };
  float *s = malloc(N * 4), *d = malloc(N * 4), *want = malloc(N * 4), *got = malloc(N * 4);
  REQUIRE(s && d && want && got);
  for (int i = 0; i < N; i++) s[i] = lt_rng_normal(&rng), d[i] = lt_rng_normal(&rng);
  float *ds = dev_copy(s, N * 4), *dd = dev_copy(d, N * 4);
  REQUIRE(ds && dd);
  lt_err err = {0};
  /* copy: s[0, M) over d[OFF, OFF + M), nothing else */
  CHECK(gpu->vt->copy(gpu, dd + OFF, ds, M * 4, &err) == LT_OK);
  CHECK(gpu->vt->copy(gpu, dd, ds, 0, &err) == LT_OK);
  memcpy(want, d, N * 4);
  memcpy(want + OFF, s, M * 4);
  REQUIRE(to_host(got, dd, N * 4) == LT_OK);
  CHECK_MSG(!memcmp(got, want, N * 4), "copy: device bytes are not the source's");
  /* accumulate: d += s, float adds as on the host */
  CHECK(gpu->vt->accumulate(gpu, N, ds, dd, &err) == LT_OK);
  CHECK(gpu->vt->accumulate(gpu, 0, ds, dd, &err) == LT_OK);
  for (int i = 0; i < N; i++) want[i] += s[i];
  REQUIRE(to_host(got, dd, N * 4) == LT_OK);
  CHECK_MSG(!memcmp(got, want, N * 4), "accumulate: device sums are not dst + src");
  dev_free(ds, N * 4);
  dev_free(dd, N * 4);
  free(s), free(d), free(want), free(got);
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
  RUN(gpu_stash_masks_match_cpu_twins);
  RUN(gpu_stash_pack2_matches_cpu_argmax_packing);
  RUN(gpu_stash_chan_map_matches_cpu_twin);
  RUN(gpu_stash_counts_and_sums_match_cpu_twins);
  RUN(gpu_stash_encode_matches_cpu_codec);
  RUN(gpu_backend_copy_and_accumulate);
  ac_cuda_free(gc);
  lt_ac_codec_free(cc);
  return test_summary();
}
