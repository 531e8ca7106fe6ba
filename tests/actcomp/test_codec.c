/* Activation codec: the strict bound on every element, exact zeros, round trips, identical
 * streams across SIMD levels and thread counts, and a decoder that rejects damaged streams. */
#include "actcomp/ac_internal.h"
#include "lathe/actcomp.h"
#include "test.h"
#include "relu_field.h"

#include <float.h>
#include <zstd.h>
#include <stdint.h>

static lt_rng rng;

/* Post-ReLU-like data: a smooth field through max(0, ·), so about half the values are 0. */
static void fill_relu(float *x, int64_t planes, int64_t h, int64_t w) {
  ac_test_fill_relu(&rng, x, planes, h, w);
}

/* Checks a decode against the source: strict bound (in double), zeros exact, non-finite and
 * unquantisable values bit-exact. Returns the number of violations. */
static int64_t check_bound(const float *x, const float *y, int64_t n, double eb) {
  int64_t bad = 0;
  for (int64_t i = 0; i < n; i++) {
    if (!isfinite(x[i]) || fabs((double)x[i]) > 1e30) {
      if (memcmp(&x[i], &y[i], 4)) bad++;
    } else if (x[i] == 0.0f) {
      if (y[i] != 0.0f) bad++;
    } else if (!(fabs((double)x[i] - (double)y[i]) <= eb)) {
      if (bad < 5)
        fprintf(stderr, "  element %lld: %.9g -> %.9g (eb %g)\n", (long long)i, x[i], y[i], eb);
      bad++;
    }
  }
  return bad;
}

/* Encodes with every SIMD level and 1 or 2 threads, checks that all streams are identical and
 * that each decodes (with each level) within the bound. */
static void roundtrip_all(const float *x, int ndim, const int64_t *shape, double eb) {
  int64_t n = lt_shape_numel(ndim, shape);
  float *y = malloc((size_t)n * sizeof *y);
  lt_ac_buf ref = {0}, out = {0};
  lt_err err = {0};
  lt_ac_simd levels[3] = {LT_AC_SIMD_SCALAR, LT_AC_SIMD_AVX2, LT_AC_SIMD_AVX512};
  for (int li = 0; li < 3; li++)
    for (int th = 1; th <= 2; th++)
      for (int z = 0; z <= 1; z++) {
        lt_ac_opts o = {.threads = th, .zstd_level = z, .simd = levels[li]};
        lt_ac_codec *c = lt_ac_codec_new(&o, &err);
        REQUIRE(c);
        lt_status st = lt_ac_encode(c, LT_AC_KIND_LORENZO, x, ndim, shape, eb, &out, &err);
        CHECK_MSG(st == LT_OK, "encode: %s", err.msg);
        if (li == 0 && th == 1 && z == 0) {
          ac_buf_reserve(&ref, out.len, &err);
          memcpy(ref.data, out.data, out.len);
          ref.len = out.len;
        } else if (z == 0) {
          CHECK_MSG(out.len == ref.len && !memcmp(out.data, ref.data, out.len),
                    "stream differs at simd %s threads %d", lt_ac_simd_name(levels[li]), th);
        }
        memset(y, 0xA5, (size_t)n * sizeof *y);
        st = lt_ac_decode(c, out.data, out.len, y, n, &err);
        CHECK_MSG(st == LT_OK, "decode: %s", err.msg);
        int64_t bad = check_bound(x, y, n, eb);
        CHECK_MSG(bad == 0, "%lld elements out of bound (simd %s, threads %d, zstd %d)",
                  (long long)bad, lt_ac_simd_name(levels[li]), th, z);
        lt_ac_codec_free(c);
      }
  lt_ac_buf_free(&ref);
  lt_ac_buf_free(&out);
  free(y);
}

TEST_CASE(codec_bound_holds_on_random_tensors_every_simd_level) {
  int64_t shapes[][4] = {{1, 1, 1, 1}, {1, 1, 1, 7}, {1, 1, 3, 5}, {2, 3, 17, 19},
                         {4, 16, 32, 32}, {3, 1, 1, 40000}};
  double ebs[] = {1e-3, 0.01, 0.1, 1.0};
  for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++) {
    int64_t n = lt_shape_numel(4, shapes[si]);
    float *x = malloc((size_t)n * sizeof *x);
    for (int64_t i = 0; i < n; i++) x[i] = 2.0f * lt_rng_normal(&rng);
    for (size_t e = 0; e < sizeof ebs / sizeof *ebs; e++) roundtrip_all(x, 4, shapes[si], ebs[e]);
    fill_relu(x, shapes[si][0] * shapes[si][1], shapes[si][2], shapes[si][3]);
    for (size_t e = 0; e < sizeof ebs / sizeof *ebs; e++) roundtrip_all(x, 4, shapes[si], ebs[e]);
    free(x);
  }
}

TEST_CASE(codec_bound_holds_on_adversarial_values) {
  enum { N = 4099 };
  float *x = malloc(N * sizeof *x);
  const float specials[] = {NAN, -NAN, INFINITY, -INFINITY, FLT_MAX, -FLT_MAX, 1e30f, -3e29f,
                            FLT_MIN, -FLT_MIN, 1e-40f, -1e-45f, 0.0f, -0.0f, 0.005f, 0.015f,
                            -0.005f, 1.0f, 8388607.0f, 1e7f};
  const int ns = sizeof specials / sizeof *specials;
  for (int i = 0; i < N; i++)
    x[i] = (i % 3 == 0) ? specials[lt_rng_below(&rng, ns)] : lt_rng_normal(&rng) * 100.0f;
  const double ebs[] = {1e-6, 0.005, 0.01, 0.5, 1e6};
  int64_t shape2[2] = {37, 110}, shape1[1] = {N - 6};
  for (size_t e = 0; e < sizeof ebs / sizeof *ebs; e++) {
    roundtrip_all(x, 2, shape2, ebs[e]);
    roundtrip_all(x, 1, shape1, ebs[e]);
  }
  /* Every value on an exact half step, where rounding is decided by the last bit. */
  for (int i = 0; i < N; i++) x[i] = (float)(i - N / 2) * 0.01f;
  roundtrip_all(x, 1, shape1, 0.005);
  free(x);
}

TEST_CASE(codec_constants_zeros_and_escapes_round_trip) {
  enum { N = 70000 };
  float *x = malloc(N * sizeof *x), *y = malloc(N * sizeof *y);
  int64_t shape[3] = {7, 100, 100};
  for (int i = 0; i < N; i++) x[i] = 0.0f;
  roundtrip_all(x, 3, shape, 0.01);
  for (int i = 0; i < N; i++) x[i] = 3.25f;
  roundtrip_all(x, 3, shape, 0.01);
  /* Jumps of 10^4 at eb 0.01 give residuals near 5·10^5: far beyond the radius, so escapes. */
  for (int i = 0; i < N; i++) x[i] = (i % 5 == 0) ? 1e4f : 0.0f;
  roundtrip_all(x, 3, shape, 0.01);
  lt_err err = {0};
  lt_ac_codec *c = lt_ac_codec_new(NULL, &err);
  lt_ac_buf out = {0};
  REQUIRE(lt_ac_encode(c, LT_AC_KIND_LORENZO, x, 3, shape, 0.01, &out, &err) == LT_OK);
  lt_ac_info info;
  REQUIRE(lt_ac_stream_info(out.data, out.len, &info, &err) == LT_OK);
  CHECK(info.n_escapes > 0);
  CHECK(info.n == N && info.ndim == 3 && info.shape[1] == 100 && info.eb == 0.01);
  /* Element count mismatch is the caller's error. */
  CHECK(lt_ac_decode(c, out.data, out.len, y, N - 1, &err) == LT_ERR_INVALID);
  lt_ac_buf_free(&out);
  lt_ac_codec_free(c);
  free(x);
  free(y);
}

TEST_CASE(codec_rejects_bad_arguments_with_a_message) {
  lt_err err = {0};
  lt_ac_codec *c = lt_ac_codec_new(NULL, &err);
  lt_ac_buf out = {0};
  float x[4] = {1, 2, 3, 4};
  int64_t shape[1] = {4}, zero[1] = {0};
  CHECK(lt_ac_encode(c, LT_AC_KIND_LORENZO, x, 1, shape, 0.0, &out, &err) == LT_ERR_INVALID);
  CHECK_STR_CONTAINS(err.msg, "error bound");
  CHECK(lt_ac_encode(c, LT_AC_KIND_LORENZO, x, 1, shape, NAN, &out, &err) == LT_ERR_INVALID);
  CHECK(lt_ac_encode(c, LT_AC_KIND_LORENZO, x, 1, zero, 0.1, &out, &err) == LT_ERR_INVALID);
  CHECK(lt_ac_encode(c, LT_AC_KIND_LORENZO, x, 9, shape, 0.1, &out, &err) == LT_ERR_INVALID);
  CHECK(lt_ac_decode(c, (const uint8_t *)"nope", 4, x, 4, &err) == LT_ERR_FORMAT);
  lt_ac_buf_free(&out);
  lt_ac_codec_free(c);
}

TEST_CASE(codec_every_truncation_and_bit_flip_is_rejected_or_bounded) {
  enum { H = 20, W = 23 };
  float x[3 * H * W], y[3 * H * W];
  fill_relu(x, 3, H, W);
  x[5] = NAN;
  x[77] = 1e6f; /* an escape at eb 0.05 */
  int64_t shape[3] = {3, H, W};
  lt_err err = {0};
  lt_ac_codec *c = lt_ac_codec_new(NULL, &err);
  lt_ac_buf out = {0};
  REQUIRE(lt_ac_encode(c, LT_AC_KIND_LORENZO, x, 3, shape, 0.05, &out, &err) == LT_OK);
  size_t len = out.len;
  uint8_t *s = malloc(len);
  for (size_t cut = 0; cut < len; cut++) {
    uint8_t *t = malloc(cut ? cut : 1); /* exact-size copy so ASan sees any overread */
    memcpy(t, out.data, cut);
    CHECK(lt_ac_decode(c, t, cut, y, 3 * H * W, &err) == LT_ERR_FORMAT);
    free(t);
  }
  int64_t accepted_with_crc_fixed = 0;
  for (size_t i = 0; i < len; i++)
    for (int b = 0; b < 8; b++) {
      memcpy(s, out.data, len);
      s[i] ^= (uint8_t)(1u << b);
      CHECK(lt_ac_decode(c, s, len, y, 3 * H * W, &err) != LT_OK); /* the CRC catches it */
      /* Behind a repaired CRC the parser and decoder meet the damage itself: they must reject
       * it or decode something, never touch memory outside the stream and the output. */
      if (i < AC_CRC_OFFSET || i >= AC_CRC_OFFSET + 4) {
        uint32_t crc = ac_stream_checksum(s, len);
        memcpy(s + AC_CRC_OFFSET, &crc, 4);
        if (lt_ac_decode(c, s, len, y, 3 * H * W, &err) == LT_OK) accepted_with_crc_fixed++;
      }
    }
  printf("  %lld of %zu bit flips behind a repaired CRC still decode (payload bits)\n",
         (long long)accepted_with_crc_fixed, len * 8);
  free(s);
  lt_ac_buf_free(&out);
  lt_ac_codec_free(c);
}

TEST_CASE(comparison_codecs_round_trip) {
  enum { N = 2 * 8 * 16 * 16 };
  float x[N], y[N];
  fill_relu(x, 16, 16, 16);
  int64_t shape[4] = {2, 8, 16, 16};
  lt_err err = {0};
  lt_ac_codec *c = lt_ac_codec_new(NULL, &err);
  lt_ac_buf out = {0};
  REQUIRE(lt_ac_encode(c, LT_AC_KIND_ZSTD, x, 4, shape, 0.1, &out, &err) == LT_OK);
  REQUIRE(lt_ac_decode(c, out.data, out.len, y, N, &err) == LT_OK);
  CHECK(!memcmp(x, y, sizeof x));
  if (lt_ac_kind_available(LT_AC_KIND_ZFP)) {
    REQUIRE(lt_ac_encode(c, LT_AC_KIND_ZFP, x, 4, shape, 0.05, &out, &err) == LT_OK);
    REQUIRE(lt_ac_decode(c, out.data, out.len, y, N, &err) == LT_OK);
    double maxe = 0;
    for (int i = 0; i < N; i++) maxe = fmax(maxe, fabs((double)x[i] - y[i]));
    CHECK_MSG(maxe <= 0.05, "ZFP max error %g over tolerance 0.05", maxe);
    lt_ac_info info;
    CHECK(lt_ac_stream_info(out.data, out.len, &info, &err) == LT_OK && info.kind == LT_AC_KIND_ZFP);
    for (size_t cut = 0; cut + 1 < out.len; cut += 7) /* truncations fail or stay in bounds */
      lt_ac_decode(c, out.data, cut, y, N, &err);
  } else {
    CHECK(lt_ac_encode(c, LT_AC_KIND_ZFP, x, 4, shape, 0.05, &out, &err) == LT_ERR_UNSUPPORTED);
  }
  lt_ac_buf_free(&out);
  lt_ac_codec_free(c);
}

TEST_CASE(codec_post_relu_ratio_beats_plain_quantisation) {
  enum { P = 64, H = 32, W = 32 };
  float *x = malloc(P * H * W * sizeof *x);
  fill_relu(x, P, H, W);
  int64_t shape[4] = {4, 16, H, W};
  lt_err err = {0};
  lt_ac_codec *c = lt_ac_codec_new(NULL, &err);
  lt_ac_buf out = {0};
  REQUIRE(lt_ac_encode(c, LT_AC_KIND_LORENZO, x, 4, shape, 0.1, &out, &err) == LT_OK);
  double ratio = (double)(P * H * W * 4) / (double)out.len;
  printf("  synthetic post-ReLU, eb 0.1: ratio %.2f\n", ratio);
  CHECK(ratio > 6.0); /* below 5.3 bits per value */
  lt_ac_buf_free(&out);
  lt_ac_codec_free(c);
  free(x);
}

TEST_CASE(codec_picks_lorenzo_on_smooth_data_and_no_prediction_on_sparse_relu) {
  enum { P = 4, H = 64, W = 64 };
  float *x = malloc(P * H * W * sizeof *x);
  int64_t shape[3] = {P, H, W};
  lt_err err = {0};
  lt_ac_codec *c = lt_ac_codec_new(NULL, &err);
  lt_ac_buf out = {0};
  lt_ac_info info;
  for (int p = 0; p < P; p++)
    for (int i = 0; i < H; i++)
      for (int j = 0; j < W; j++) x[(p * H + i) * W + j] = 3 * sinf(0.05f * i) + 2 * cosf(0.07f * j) + p;
  REQUIRE(lt_ac_encode(c, LT_AC_KIND_LORENZO, x, 3, shape, 0.01, &out, &err) == LT_OK);
  REQUIRE(lt_ac_stream_info(out.data, out.len, &info, &err) == LT_OK);
  CHECK(info.predictor == 2);
  roundtrip_all(x, 3, shape, 0.01);
  for (int i = 0; i < P * H * W; i++) {
    float v = lt_rng_normal(&rng);
    x[i] = v > 0 ? v : 0;
  }
  REQUIRE(lt_ac_encode(c, LT_AC_KIND_LORENZO, x, 3, shape, 0.3, &out, &err) == LT_OK);
  REQUIRE(lt_ac_stream_info(out.data, out.len, &info, &err) == LT_OK);
  CHECK(info.predictor == 0);
  roundtrip_all(x, 3, shape, 0.3);
  lt_ac_buf_free(&out);
  lt_ac_codec_free(c);
  free(x);
}

/* The plane-at-a-time paths (whole planes up to AC_PLANE_MAX, two 8-wide rows per vector in
 * the AVX-512 decode) on ResNet-sized planes, odd row counts and widths that are not a multiple
 * of the vector: every SIMD level must decode the very same floats as the scalar reference, on
 * smooth data (Lorenzo) and on sparse data (no prediction), with escapes (tiny bound). */
TEST_CASE(codec_small_planes_decode_identically_on_every_simd_level) {
  int64_t shapes[][4] = {{3, 5, 8, 8}, {2, 3, 7, 8}, {2, 3, 9, 8}, {4, 2, 16, 16},
                         {2, 2, 32, 32}, {1, 2, 9, 24}, {1, 1, 130, 130}};
  double ebs[] = {1e-6, 0.01, 0.3};
  lt_ac_simd levels[3] = {LT_AC_SIMD_SCALAR, LT_AC_SIMD_AVX2, LT_AC_SIMD_AVX512};
  lt_err err = {0};
  for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++) {
    const int64_t n = lt_shape_numel(4, shapes[si]), h = shapes[si][2], w = shapes[si][3];
    float *x = malloc((size_t)n * sizeof *x), *ref = malloc((size_t)n * sizeof *ref),
          *y = malloc((size_t)n * sizeof *y);
    for (int smooth = 0; smooth <= 1; smooth++) {
      if (smooth)
        for (int64_t i = 0; i < n; i++)
          x[i] = 3 * sinf(0.05f * (float)(i / w % h)) + 2 * cosf(0.07f * (float)(i % w)) +
                 (float)(i / (h * w));
      else
        fill_relu(x, n / (h * w), h, w);
      for (size_t e = 0; e < sizeof ebs / sizeof *ebs; e++) {
        roundtrip_all(x, 4, shapes[si], ebs[e]);
        lt_ac_buf out = {0};
        lt_ac_codec *c0 = lt_ac_codec_new(NULL, &err);
        REQUIRE(c0);
        REQUIRE(lt_ac_encode(c0, LT_AC_KIND_LORENZO, x, 4, shapes[si], ebs[e], &out, &err) ==
                LT_OK);
        for (int li = 0; li < 3; li++)
          for (int th = 1; th <= 2; th++) {
            lt_ac_opts o = {.threads = th, .zstd_level = 1, .simd = levels[li]};
            lt_ac_codec *c = lt_ac_codec_new(&o, &err);
            REQUIRE(c);
            REQUIRE(lt_ac_decode(c, out.data, out.len, li || th > 1 ? y : ref, n, &err) == LT_OK);
            if (li || th > 1)
              CHECK_MSG(!memcmp(y, ref, (size_t)n * sizeof *y),
                        "shape %lldx%lld eb %g: %s decode with %d threads differs from scalar",
                        (long long)h, (long long)w, ebs[e], lt_ac_simd_name(levels[li]), th);
            lt_ac_codec_free(c);
          }
        lt_ac_codec_free(c0);
        lt_ac_buf_free(&out);
      }
    }
    free(x);
    free(ref);
    free(y);
  }
}

/* lt_ac_encode_affine codes z = (x − off_c)·scale_c per channel: the same stream as encoding z
 * itself, on every SIMD level. */
TEST_CASE(codec_affine_encode_equals_encoding_the_mapped_tensor) {
  int64_t shape[4] = {3, 4, 16, 8};
  const int64_t n = 3 * 4 * 16 * 8, hw = 16 * 8;
  float *x = malloc(n * sizeof *x), *z = malloc(n * sizeof *z);
  float off[4] = {0.5f, -1.25f, 3.0f, 0.0f}, scale[4] = {2.0f, 0.7f, 1.3f, 10.0f};
  for (int64_t i = 0; i < n; i++) {
    x[i] = lt_rng_normal(&rng) + (float)(i % 7) * 0.1f;
    const int64_t c = i / hw % 4;
    z[i] = (x[i] - off[c]) * scale[c];
  }
  x[5] = NAN; /* an outlier keeps its mapped bits */
  z[5] = (x[5] - off[0]) * scale[0];
  lt_ac_simd levels[3] = {LT_AC_SIMD_SCALAR, LT_AC_SIMD_AVX2, LT_AC_SIMD_AVX512};
  lt_err err = {0};
  lt_ac_buf a = {0}, b = {0};
  for (int li = 0; li < 3; li++) {
    lt_ac_opts o = {.threads = 1, .zstd_level = 0, .simd = levels[li]};
    lt_ac_codec *c = lt_ac_codec_new(&o, &err);
    REQUIRE(c);
    REQUIRE(lt_ac_encode_affine(c, x, 4, shape, 0.5, off, scale, &a, &err) == LT_OK);
    REQUIRE(lt_ac_encode(c, LT_AC_KIND_LORENZO, z, 4, shape, 0.5, &b, &err) == LT_OK);
    CHECK_MSG(a.len == b.len && !memcmp(a.data, b.data, a.len), "affine stream differs (%s)",
              lt_ac_simd_name(levels[li]));
    lt_ac_codec_free(c);
  }
  lt_ac_buf_free(&a);
  lt_ac_buf_free(&b);
  free(x);
  free(z);
}

TEST_CASE(codec_scratch_is_counted_and_returned) {
  lt_mem_stats m0, m1, m2;
  lt_mem_get_stats(&m0);
  enum { N = 100000 };
  float *x = malloc(N * sizeof *x);
  for (int i = 0; i < N; i++) x[i] = lt_rng_normal(&rng);
  int64_t shape[2] = {100, 1000};
  lt_err err = {0};
  lt_ac_codec *c = lt_ac_codec_new(NULL, &err);
  lt_ac_buf out = {0};
  REQUIRE(lt_ac_encode(c, LT_AC_KIND_LORENZO, x, 2, shape, 0.01, &out, &err) == LT_OK);
  REQUIRE(lt_ac_decode(c, out.data, out.len, x, N, &err) == LT_OK);
  lt_mem_get_stats(&m1);
  CHECK(m1.current[LT_MEM_WORKSPACE] > m0.current[LT_MEM_WORKSPACE]); /* scratch is counted */
  lt_ac_buf_free(&out);
  lt_ac_codec_free(c);
  lt_mem_get_stats(&m2);
  CHECK(m2.current[LT_MEM_WORKSPACE] == m0.current[LT_MEM_WORKSPACE]);
  free(x);
}

/* Streams with smaller Huffman chunks (what the GPU encoder writes) decode to exactly what the
 * default chunking decodes to, on one and two threads, and with escapes spread over chunks; a
 * chunk size that is not a power of two in 1024..16384 is refused by encoder and decoder. */
TEST_CASE(codec_smaller_chunks_decode_identically) {
  enum { P = 6, H = 37, W = 41, N = P * H * W };
  float *x = malloc(N * sizeof *x), *y0 = malloc(N * sizeof *y0), *y = malloc(N * sizeof *y);
  fill_relu(x, P, H, W);
  for (int i = 0; i < N; i += 997) x[i] = 5e3f; /* escapes in several chunks */
  x[7] = NAN;
  int64_t shape[3] = {P, H, W};
  lt_err err = {0};
  lt_ac_buf out = {0};
  lt_ac_codec *c = lt_ac_codec_new(NULL, &err);
  REQUIRE(c);
  REQUIRE(lt_ac_encode(c, LT_AC_KIND_LORENZO, x, 3, shape, 0.02, &out, &err) == LT_OK);
  REQUIRE(lt_ac_decode(c, out.data, out.len, y0, N, &err) == LT_OK);
  CHECK(check_bound(x, y0, N, 0.02) == 0);
  const int chunks[3] = {1024, 2048, 8192};
  for (int k = 0; k < 3; k++)
    for (int th = 1; th <= 2; th++) {
      lt_ac_opts o = lt_ac_opts_default();
      o.chunk = chunks[k];
      o.threads = th;
      o.zstd_level = 0;
      lt_ac_codec_set_opts(c, &o);
      REQUIRE(lt_ac_encode(c, LT_AC_KIND_LORENZO, x, 3, shape, 0.02, &out, &err) == LT_OK);
      CHECK(ac_get_u32(out.data + 88) == (uint32_t)chunks[k]);
      memset(y, 0xA5, N * sizeof *y);
      CHECK_MSG(lt_ac_decode(c, out.data, out.len, y, N, &err) == LT_OK, "chunk %d: %s",
                chunks[k], err.msg);
      CHECK_MSG(!memcmp(y, y0, N * sizeof *y), "chunk %d threads %d decodes differently",
                chunks[k], th);
    }
  /* The decoder refuses a chunk size outside the set even with a valid checksum. */
  ac_put_u32(out.data + 88, 3000);
  ac_put_u32(out.data + AC_CRC_OFFSET, ac_stream_checksum(out.data, out.len));
  CHECK(lt_ac_decode(c, out.data, out.len, y, N, &err) == LT_ERR_FORMAT);
  CHECK_STR_CONTAINS(err.msg, "chunk size");
  lt_ac_opts o = lt_ac_opts_default();
  o.chunk = 512;
  lt_ac_codec_set_opts(c, &o);
  CHECK(lt_ac_encode(c, LT_AC_KIND_LORENZO, x, 3, shape, 0.02, &out, &err) == LT_ERR_INVALID);
  CHECK_STR_CONTAINS(err.msg, "chunk size");
  lt_ac_buf_free(&out);
  lt_ac_codec_free(c);
  free(x);
  free(y0);
  free(y);
}

/* One codec reused across tensors writes exactly the bytes a fresh codec writes: its histograms
 * are cleared only over the symbols the previous tensor used, so a wide range (noise at a fine
 * bound, escapes with code 0) followed by a narrow one, a narrow one followed by a wide one, a
 * tiny tensor, and large planes (row by row, with the four-way sub-histograms on two threads),
 * on every SIMD level and on one then two threads (the histograms grow), must all match. */
TEST_CASE(codec_reused_codec_writes_what_a_fresh_codec_writes) {
  enum { NT = 6, NMAX = 4 * 200 * 800 };
  float *x = malloc(NMAX * sizeof *x);
  const int64_t shapes[NT][3] = {{16, 32, 32}, {16, 32, 32}, {7, 100, 100},
                                 {1, 3, 5},    {4, 200, 800}, {16, 32, 32}};
  const double ebs[NT] = {1e-4, 0.3, 0.01, 0.05, 0.02, 1e-3};
  lt_ac_simd levels[3] = {LT_AC_SIMD_SCALAR, LT_AC_SIMD_AVX2, LT_AC_SIMD_AVX512};
  lt_err err = {0};
  lt_ac_buf fresh = {0}, out = {0};
  for (int li = 0; li < 3; li++) {
    lt_ac_opts o = {.threads = 1, .zstd_level = 0, .simd = levels[li]};
    lt_ac_codec *reused = lt_ac_codec_new(&o, &err);
    REQUIRE(reused);
    for (int th = 1; th <= 2; th++)
      for (int k = 0; k < NT; k++) {
        const int64_t n = shapes[k][0] * shapes[k][1] * shapes[k][2];
        lt_rng r = lt_rng_make(8, 100 + (uint64_t)k);
        if (k == 2) /* escapes: jumps far beyond the radius */
          for (int64_t i = 0; i < n; i++) x[i] = (i % 5 == 0) ? 1e4f : 0.0f;
        else if (k == 4)
          for (int64_t i = 0; i < n; i++) x[i] = (float)(i % 800) * 0.01f + lt_rng_normal(&r) * 0.05f;
        else
          for (int64_t i = 0; i < n; i++) x[i] = lt_rng_normal(&r) * (k == 0 ? 1.0f : 3.0f);
        o.threads = th;
        lt_ac_codec_set_opts(reused, &o);
        lt_ac_codec *c = lt_ac_codec_new(&o, &err);
        REQUIRE(c);
        REQUIRE(lt_ac_encode(c, LT_AC_KIND_LORENZO, x, 3, shapes[k], ebs[k], &fresh, &err) ==
                LT_OK);
        REQUIRE(lt_ac_encode(reused, LT_AC_KIND_LORENZO, x, 3, shapes[k], ebs[k], &out, &err) ==
                LT_OK);
        CHECK_MSG(out.len == fresh.len && !memcmp(out.data, fresh.data, out.len),
                  "tensor %d (simd %s, %d threads): the reused codec wrote %zu bytes, a fresh one "
                  "%zu or other bytes",
                  k, lt_ac_simd_name(levels[li]), th, out.len, fresh.len);
        lt_ac_codec_free(c);
      }
    lt_ac_codec_free(reused);
  }
  lt_ac_buf_free(&fresh);
  lt_ac_buf_free(&out);
  free(x);
}

/* Replaces the payload of a stream that has neither escapes nor outliers (the payload runs to the
 * end) by pay[0..plen), with its stored size and CRC updated; returns the new length. */
static size_t splice_payload(uint8_t *dst, const uint8_t *s, size_t len, const uint8_t *pay,
                             size_t plen) {
  const size_t off = len - ac_get_u64(s + 120);
  memcpy(dst, s, off);
  memcpy(dst + off, pay, plen);
  ac_put_u64(dst + 120, plen);
  ac_put_u32(dst + AC_CRC_OFFSET, ac_stream_checksum(dst, off + plen));
  return off + plen;
}

/* The zstd pass writes one frame per AC_ZSTD_SLICE bytes of Huffman payload, compressed and
 * decompressed in parallel: the stream does not depend on the thread count and decodes to what
 * the stream without zstd decodes to; a single frame (what earlier encoders wrote) still decodes;
 * frame directories that do not add up, skippable frames and more than AC_ZSTD_MAX_FRAMES frames
 * are refused. */
TEST_CASE(codec_zstd_frames_are_parallel_and_checked) {
  enum { P = 64, H = 128, W = 128, N = P * H * W };
  float *x = malloc(N * sizeof *x), *y0 = malloc(N * sizeof *y0), *y = malloc(N * sizeof *y);
  fill_relu(x, P, H, W);
  int64_t shape[3] = {P, H, W};
  lt_err err = {0};
  lt_ac_buf plain = {0}, one = {0}, two = {0};
  lt_ac_opts o = lt_ac_opts_default();
  o.threads = 1;
  o.zstd_level = 0;
  lt_ac_codec *c = lt_ac_codec_new(&o, &err);
  REQUIRE(c);
  REQUIRE(lt_ac_encode(c, LT_AC_KIND_LORENZO, x, 3, shape, 0.01, &plain, &err) == LT_OK);
  REQUIRE(lt_ac_decode(c, plain.data, plain.len, y0, N, &err) == LT_OK);
  o.zstd_level = 1;
  lt_ac_codec_set_opts(c, &o);
  REQUIRE(lt_ac_encode(c, LT_AC_KIND_LORENZO, x, 3, shape, 0.01, &one, &err) == LT_OK);
  o.threads = 2;
  lt_ac_codec_set_opts(c, &o);
  REQUIRE(lt_ac_encode(c, LT_AC_KIND_LORENZO, x, 3, shape, 0.01, &two, &err) == LT_OK);
  REQUIRE(one.data[7] & AC_FLAG_ZSTD);
  CHECK(one.len == two.len && !memcmp(one.data, two.data, one.len));
  REQUIRE(ac_get_u64(one.data + 96) == 0 && ac_get_u64(one.data + 104) == 0);
  const uint64_t raw_bytes = ac_get_u64(one.data + 112), stored = ac_get_u64(one.data + 120);
  const uint8_t *frames = one.data + one.len - stored;
  int nf = 0;
  for (size_t at = 0; at < stored; nf++) {
    size_t f = ZSTD_findFrameCompressedSize(frames + at, stored - at);
    REQUIRE(!ZSTD_isError(f));
    at += f;
  }
  CHECK_MSG(nf == (int)(raw_bytes / AC_ZSTD_SLICE) && nf >= 3, "%d frames for %llu bytes", nf,
            (unsigned long long)raw_bytes);
  for (int th = 1; th <= 2; th++) {
    o.threads = th;
    lt_ac_codec_set_opts(c, &o);
    memset(y, 0xA5, N * sizeof *y);
    REQUIRE(lt_ac_decode(c, one.data, one.len, y, N, &err) == LT_OK);
    CHECK_MSG(!memcmp(y, y0, N * sizeof *y), "%d threads: the zstd stream decodes differently", th);
  }

  /* The raw Huffman payload, then other frame layouts of it spliced into the stream. */
  uint8_t *raw = calloc(raw_bytes + 1, 1), *pay = malloc(2 * raw_bytes + 65536); /* a spare byte: one frame below holds raw_bytes + 1 */
  uint8_t *s = malloc(one.len + 2 * raw_bytes + 65536);
  REQUIRE(ZSTD_decompress(raw, raw_bytes, frames, stored) == raw_bytes);
  size_t plen = ZSTD_compress(pay, 2 * raw_bytes, raw, raw_bytes, 1); /* one frame */
  REQUIRE(!ZSTD_isError(plen));
  size_t len = splice_payload(s, one.data, one.len, pay, plen);
  memset(y, 0xA5, N * sizeof *y);
  CHECK_MSG(lt_ac_decode(c, s, len, y, N, &err) == LT_OK, "one frame: %s", err.msg);
  CHECK(!memcmp(y, y0, N * sizeof *y));

  /* A skippable frame in front. */
  static const uint8_t skip[12] = {0x50, 0x2A, 0x4D, 0x18, 4, 0, 0, 0, 1, 2, 3, 4};
  memmove(pay + sizeof skip, pay, plen);
  memcpy(pay, skip, sizeof skip);
  len = splice_payload(s, one.data, one.len, pay, plen + sizeof skip);
  CHECK(lt_ac_decode(c, s, len, y, N, &err) == LT_ERR_FORMAT);
  CHECK_STR_CONTAINS(err.msg, "zstd frame 0");

  /* Frames that hold one byte more or less than the header's raw size. */
  for (int d = -1; d <= 1; d += 2) {
    plen = ZSTD_compress(pay, 2 * raw_bytes, raw, raw_bytes + (size_t)d, 1);
    REQUIRE(!ZSTD_isError(plen));
    len = splice_payload(s, one.data, one.len, pay, plen);
    CHECK(lt_ac_decode(c, s, len, y, N, &err) == LT_ERR_FORMAT);
    CHECK_STR_CONTAINS(err.msg, "zstd frame");
  }

  /* AC_ZSTD_MAX_FRAMES + 1 small frames. */
  const size_t nsl = AC_ZSTD_MAX_FRAMES + 1, sl = raw_bytes / nsl;
  REQUIRE(sl > 0);
  plen = 0;
  for (size_t i = 0; i < nsl; i++) {
    size_t l = i == nsl - 1 ? raw_bytes - i * sl : sl;
    size_t z = ZSTD_compress(pay + plen, 2 * raw_bytes + 65536 - plen, raw + i * sl, l, 1);
    REQUIRE(!ZSTD_isError(z));
    plen += z;
  }
  len = splice_payload(s, one.data, one.len, pay, plen);
  CHECK(lt_ac_decode(c, s, len, y, N, &err) == LT_ERR_FORMAT);
  CHECK_STR_CONTAINS(err.msg, "zstd frames");

  /* A frame cut short, and damage in the second frame's header, behind a repaired CRC. */
  len = splice_payload(s, one.data, one.len, frames, stored - 1);
  CHECK(lt_ac_decode(c, s, len, y, N, &err) == LT_ERR_FORMAT);
  const size_t f0 = ZSTD_findFrameCompressedSize(frames, stored);
  for (size_t i = 0; i < 8; i++)
    for (int b = 0; b < 8; b++) {
      memcpy(pay, frames, stored);
      pay[f0 + i] ^= (uint8_t)(1u << b);
      len = splice_payload(s, one.data, one.len, pay, stored);
      lt_status st = lt_ac_decode(c, s, len, y, N, &err);
      CHECK(st == LT_OK || st == LT_ERR_FORMAT);
    }
  free(raw);
  free(pay);
  free(s);
  lt_ac_buf_free(&plain);
  lt_ac_buf_free(&one);
  lt_ac_buf_free(&two);
  lt_ac_codec_free(c);
  free(x);
  free(y0);
  free(y);
}

int main(void) {
  rng = lt_rng_make(8, 1);
  RUN(codec_bound_holds_on_random_tensors_every_simd_level);
  RUN(codec_bound_holds_on_adversarial_values);
  RUN(codec_small_planes_decode_identically_on_every_simd_level);
  RUN(codec_affine_encode_equals_encoding_the_mapped_tensor);
  RUN(codec_constants_zeros_and_escapes_round_trip);
  RUN(codec_reused_codec_writes_what_a_fresh_codec_writes);
  RUN(codec_rejects_bad_arguments_with_a_message);
  RUN(codec_every_truncation_and_bit_flip_is_rejected_or_bounded);
  RUN(comparison_codecs_round_trip);
  RUN(codec_post_relu_ratio_beats_plain_quantisation);
  RUN(codec_picks_lorenzo_on_smooth_data_and_no_prediction_on_sparse_relu);
  RUN(codec_scratch_is_counted_and_returned);
  RUN(codec_smaller_chunks_decode_identically);
  RUN(codec_zstd_frames_are_parallel_and_checked);
  return test_summary();
}
