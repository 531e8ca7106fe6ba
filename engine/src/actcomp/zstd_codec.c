/* zstd alone on the float bytes, the lossless baseline of `lathe bench codec`, and the small
 * header that both comparison codecs (zstd, ZFP) put in front of their payload. */
#include "actcomp/ac_internal.h"

#include <zstd.h>

void ac_small_header_put(uint8_t *o, const char *magic, int ndim, const int64_t *shape,
                         double eb) {
  memset(o, 0, AC_SMALL_HEADER_BYTES);
  memcpy(o, magic, 4);
  ac_put_u32(o + 4, (uint32_t)ndim);
  for (int i = 0; i < ndim; i++) ac_put_u64(o + 8 + 8 * i, (uint64_t)shape[i]);
  memcpy(o + 72, &eb, 8);
}

lt_status ac_small_header_parse(const uint8_t *s, size_t len, lt_ac_kind kind, int64_t n,
                                int check_n, lt_ac_info *info, lt_err *err) {
  lt_ac_info tmp;
  if (!info) info = &tmp;
  if (len < AC_SMALL_HEADER_BYTES)
    return lt_errorf(err, LT_ERR_FORMAT, "%s stream of %zu bytes is shorter than its header",
                     lt_ac_kind_name(kind), len);
  uint32_t nd = ac_get_u32(s + 4);
  if (nd < 1 || nd > LT_MAX_DIMS)
    return lt_errorf(err, LT_ERR_FORMAT, "%s stream: %u dims", lt_ac_kind_name(kind), nd);
  info->kind = kind;
  info->ndim = (int)nd;
  for (int i = 0; i < LT_MAX_DIMS; i++) info->shape[i] = (int64_t)ac_get_u64(s + 8 + 8 * i);
  if (ac_check_shape(info->ndim, info->shape, &info->n, NULL))
    return lt_errorf(err, LT_ERR_FORMAT, "%s stream: bad shape", lt_ac_kind_name(kind));
  memcpy(&info->eb, s + 72, 8);
  info->stream_bytes = len;
  info->payload_bytes = (int64_t)(len - AC_SMALL_HEADER_BYTES);
  if (check_n && info->n != n)
    return lt_errorf(err, LT_ERR_INVALID, "%s stream holds %lld elements, buffer %lld",
                     lt_ac_kind_name(kind), (long long)info->n, (long long)n);
  return LT_OK;
}

lt_status ac_zstd_encode(const float *x, int ndim, const int64_t *shape, int level,
                         lt_ac_buf *out, lt_err *err) {
  int64_t n;
  lt_status st = ac_check_shape(ndim, shape, &n, err);
  if (st) return st;
  size_t bound = ZSTD_compressBound((size_t)n * 4);
  if ((st = ac_buf_reserve(out, AC_SMALL_HEADER_BYTES + bound, err))) return st;
  ac_small_header_put(out->data, "LTZS", ndim, shape, 0.0);
  size_t z = ZSTD_compress(out->data + AC_SMALL_HEADER_BYTES, bound, x, (size_t)n * 4, level);
  if (ZSTD_isError(z))
    return lt_errorf(err, LT_ERR_INTERNAL, "zstd compression failed: %s", ZSTD_getErrorName(z));
  out->len = AC_SMALL_HEADER_BYTES + z;
  return LT_OK;
}

lt_status ac_zstd_decode(const uint8_t *src, size_t len, float *x, int64_t n, lt_ac_info *info,
                         lt_err *err) {
  lt_ac_info hi;
  lt_status st = ac_small_header_parse(src, len, LT_AC_KIND_ZSTD, n, x != NULL, &hi, err);
  if (st) return st;
  if (info) *info = hi;
  if (!x) return LT_OK;
  size_t got = ZSTD_decompress(x, (size_t)n * 4, src + AC_SMALL_HEADER_BYTES,
                               len - AC_SMALL_HEADER_BYTES);
  if (ZSTD_isError(got) || got != (size_t)n * 4)
    return lt_errorf(err, LT_ERR_FORMAT, "zstd stream does not decode to %lld floats",
                     (long long)n);
  return LT_OK;
}
