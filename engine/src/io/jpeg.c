/* JPEG decoding with libturbojpeg: one decompressor per OpenMP thread, images decoded straight
 * into interleaved scratch and transposed to planar (C, H, W) uint8. Warnings (a truncated scan,
 * corrupt data that libjpeg would paper over with grey) are treated as errors: a training set
 * with silently damaged images is worse than a refused one. */
#include "lathe/data.h"

#include <omp.h>
#include <stdio.h>
#include <string.h>
#include <turbojpeg.h>

/* Refuse absurd headers before allocating anything for them. */
#define JPEG_MAX_SIDE 16384

lt_status lt_jpeg_header(const uint8_t *jpg, size_t len, int *h, int *w, int *c, lt_err *err) {
  if (len < 4 || len > (size_t)0x7fffffff)
    return lt_errorf(err, LT_ERR_FORMAT, "is %zu bytes long, not a JPEG image", len);
  tjhandle tj = tjInitDecompress();
  if (!tj) return lt_errorf(err, LT_ERR_NOMEM, "cannot create a JPEG decompressor");
  int ww, hh, sub, cs;
  int rc = tjDecompressHeader3(tj, jpg, (unsigned long)len, &ww, &hh, &sub, &cs);
  lt_status st = LT_OK;
  if (rc != 0) {
    st = lt_errorf(err, LT_ERR_FORMAT, "is not a readable JPEG (%s)", tjGetErrorStr2(tj));
  } else if (ww < 1 || hh < 1 || ww > JPEG_MAX_SIDE || hh > JPEG_MAX_SIDE) {
    st = lt_errorf(err, LT_ERR_FORMAT, "declares %dx%d pixels; at most %d per side is accepted",
                   ww, hh, JPEG_MAX_SIDE);
  } else {
    *h = hh;
    *w = ww;
    *c = cs == TJCS_GRAY ? 1 : 3;
  }
  tjDestroy(tj);
  return st;
}

/* Decodes one image into planar out (c, h, w); rgb is (h, w, c) scratch. 0 or -1 with msg. */
static int jpeg_decode_one(tjhandle tj, const uint8_t *jpg, size_t len, int c, int h, int w,
                           uint8_t *rgb, uint8_t *out, char *msg, size_t cap) {
  int ww, hh, sub, cs;
  if (len > (size_t)0x7fffffff ||
      tjDecompressHeader3(tj, jpg, (unsigned long)len, &ww, &hh, &sub, &cs) != 0) {
    snprintf(msg, cap, "is not a readable JPEG (%s)", tjGetErrorStr2(tj));
    return -1;
  }
  if (ww != w || hh != h) {
    snprintf(msg, cap, "is %dx%d but the first image is %dx%d; every image of a split must have "
             "the same size", ww, hh, w, h);
    return -1;
  }
  int pf = c == 1 ? TJPF_GRAY : TJPF_RGB;
  if (tjDecompress2(tj, jpg, (unsigned long)len, rgb, w, w * c, h, pf, TJFLAG_STOPONWARNING) != 0) {
    snprintf(msg, cap, "failed to decode (%s); the image is truncated or corrupt",
             tjGetErrorStr2(tj));
    return -1;
  }
  size_t hw = (size_t)h * (size_t)w;
  if (c == 1) {
    memcpy(out, rgb, hw);
  } else {
    for (size_t p = 0; p < hw; p++)
      for (int ch = 0; ch < c; ch++) out[(size_t)ch * hw + p] = rgb[p * (size_t)c + ch];
  }
  return 0;
}

lt_status lt_jpeg_decode_batch(const uint8_t *buf, size_t buf_len, const uint64_t *offsets,
                               int64_t n, int c, int h, int w, int threads, uint8_t *out,
                               lt_err *err) {
  if ((c != 1 && c != 3) || h < 1 || w < 1 || h > JPEG_MAX_SIDE || w > JPEG_MAX_SIDE)
    return lt_errorf(err, LT_ERR_INVALID, "JPEG decode into (%d, %d, %d) is not supported; "
                     "expected 1 or 3 channels", c, h, w);
  size_t per = (size_t)c * (size_t)h * (size_t)w;
  int64_t bad = -1; /* lowest failing index, so the message is the same at any thread count */
  char bad_msg[512] = "";
  lt_status alloc_st = LT_OK;
  int nt = threads > 0 ? threads : omp_get_max_threads();
#pragma omp parallel num_threads(nt)
  {
    tjhandle tj = tjInitDecompress();
    lt_err lerr = {0};
    uint8_t *rgb = lt_alloc(LT_MEM_WORKSPACE, per, &lerr);
    if (!tj || !rgb) {
#pragma omp critical(lt_jpeg_err)
      alloc_st = LT_ERR_NOMEM;
    }
#pragma omp barrier
    char msg[512];
#pragma omp for schedule(dynamic, 64)
    for (int64_t i = 0; i < n; i++) {
      if (alloc_st != LT_OK) continue;
      uint64_t a = offsets[i], b = offsets[i + 1];
      int rc = -1;
      if (b <= a || b > buf_len)
        snprintf(msg, sizeof msg, "has bytes [%llu, %llu) outside the %zu-byte array",
                 (unsigned long long)a, (unsigned long long)b, buf_len);
      else
        rc = jpeg_decode_one(tj, buf + a, (size_t)(b - a), c, h, w, rgb, out + (size_t)i * per,
                             msg, sizeof msg);
      if (rc != 0) {
#pragma omp critical(lt_jpeg_err)
        if (bad < 0 || i < bad) {
          bad = i;
          snprintf(bad_msg, sizeof bad_msg, "%s", msg);
        }
      }
    }
    lt_free(LT_MEM_WORKSPACE, rgb, per);
    if (tj) tjDestroy(tj);
  }
  if (alloc_st) return lt_errorf(err, alloc_st, "out of memory for JPEG decode scratch");
  if (bad >= 0) return lt_errorf(err, LT_ERR_FORMAT, "image %lld %s", (long long)bad, bad_msg);
  return LT_OK;
}
