/* ZFP fixed-accuracy compression through libzfp, the lossy comparison codec of `lathe bench
 * codec`. Tensors map to ZFP fields as 1-D (one dim), 2-D (two) or 3-D with the leading dims
 * folded into z. The error is bounded by the tolerance but neither uniform nor zero-preserving.
 * Built only when libzfp was found (engine/CMakeLists.txt drops zfp_*.c otherwise). */
#include "actcomp/ac_internal.h"

#include <zfp.h>

/* Field over x (not owned) with the tensor's shape folded to at most three dims. */
static zfp_field *field_for(float *x, int ndim, const int64_t *shape) {
  if (ndim == 1) return zfp_field_1d(x, zfp_type_float, (size_t)shape[0]);
  size_t nx = (size_t)shape[ndim - 1], ny = (size_t)shape[ndim - 2], nz = 1;
  if (ndim == 2) return zfp_field_2d(x, zfp_type_float, nx, ny);
  for (int i = 0; i < ndim - 2; i++) nz *= (size_t)shape[i];
  return zfp_field_3d(x, zfp_type_float, nx, ny, nz);
}

/* Runs one direction; x is read when compressing and written when decompressing. */
static lt_status zfp_run(int compress, float *x, int ndim, const int64_t *shape, double eb,
                         uint8_t *buf, size_t cap, size_t *used, lt_err *err) {
  zfp_field *f = field_for(x, ndim, shape);
  zfp_stream *zs = zfp_stream_open(NULL);
  bitstream *bs = stream_open(buf, cap);
  lt_status st = LT_OK;
  if (!f || !zs || !bs) {
    st = lt_errorf(err, LT_ERR_NOMEM, "libzfp could not allocate its stream");
  } else {
    zfp_stream_set_accuracy(zs, eb);
    zfp_stream_set_bit_stream(zs, bs);
    zfp_stream_rewind(zs);
    size_t r = compress ? zfp_compress(zs, f) : zfp_decompress(zs, f);
    if (!r)
      st = lt_errorf(err, compress ? LT_ERR_INTERNAL : LT_ERR_FORMAT, "libzfp %s failed",
                     compress ? "compression" : "decompression");
    if (used) *used = r;
    if (!compress && r > cap) st = lt_errorf(err, LT_ERR_FORMAT, "ZFP stream overran");
  }
  if (bs) stream_close(bs);
  if (zs) zfp_stream_close(zs);
  if (f) zfp_field_free(f);
  return st;
}

lt_status ac_zfp_encode(const float *x, int ndim, const int64_t *shape, double eb, lt_ac_buf *out,
                        lt_err *err) {
  int64_t n;
  lt_status st = ac_check_shape(ndim, shape, &n, err);
  if (st) return st;
  if (!(eb > 0))
    return lt_errorf(err, LT_ERR_INVALID, "ZFP tolerance must be positive, got %g", eb);
  zfp_field *f = field_for((float *)x, ndim, shape);
  zfp_stream *zs = zfp_stream_open(NULL);
  if (!f || !zs) {
    if (f) zfp_field_free(f);
    if (zs) zfp_stream_close(zs);
    return lt_errorf(err, LT_ERR_NOMEM, "libzfp could not allocate its stream");
  }
  zfp_stream_set_accuracy(zs, eb);
  size_t cap = zfp_stream_maximum_size(zs, f);
  zfp_field_free(f);
  zfp_stream_close(zs);
  if ((st = ac_buf_reserve(out, AC_SMALL_HEADER_BYTES + cap, err))) return st;
  ac_small_header_put(out->data, "LTZF", ndim, shape, eb);
  size_t used = 0;
  st = zfp_run(1, (float *)x, ndim, shape, eb, out->data + AC_SMALL_HEADER_BYTES, cap, &used, err);
  if (st) return st;
  out->len = AC_SMALL_HEADER_BYTES + used;
  return LT_OK;
}

lt_status ac_zfp_decode(const uint8_t *src, size_t len, float *x, int64_t n, lt_ac_info *info,
                        lt_err *err) {
  lt_ac_info hi;
  lt_status st = ac_small_header_parse(src, len, LT_AC_KIND_ZFP, n, x != NULL, &hi, err);
  if (st) return st;
  if (info) *info = hi;
  if (!x) return LT_OK;
  if (!(hi.eb > 0) || !(hi.eb < 1e30)) return lt_errorf(err, LT_ERR_FORMAT, "ZFP stream: bad tolerance");
  /* libzfp's bit reader does not bound its reads, so decode from a zero-padded copy as large as
   * the most any stream of this field and tolerance can consume. */
  zfp_field *f = field_for(x, hi.ndim, hi.shape);
  zfp_stream *zs = zfp_stream_open(NULL);
  size_t cap = 0;
  if (f && zs) {
    zfp_stream_set_accuracy(zs, hi.eb);
    cap = zfp_stream_maximum_size(zs, f);
  }
  if (f) zfp_field_free(f);
  if (zs) zfp_stream_close(zs);
  size_t payload = len - AC_SMALL_HEADER_BYTES;
  if (!cap || payload > cap) return lt_errorf(err, LT_ERR_FORMAT, "ZFP stream larger than its field");
  lt_ac_buf pad = {0};
  if ((st = ac_buf_reserve(&pad, cap, err))) return st;
  memcpy(pad.data, src + AC_SMALL_HEADER_BYTES, payload);
  memset(pad.data + payload, 0, cap - payload);
  st = zfp_run(0, x, hi.ndim, hi.shape, hi.eb, pad.data, cap, NULL, err);
  lt_ac_buf_free(&pad);
  return st;
}
