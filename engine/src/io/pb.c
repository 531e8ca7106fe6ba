/* Protobuf wire format decoder and encoder (see pb.h). The decoder is written for hostile input:
 * every length is compared with the bytes left before anything is read, varints stop at 10
 * bytes, and no arithmetic on a length can overflow because lengths are checked against the
 * remaining span (a size_t difference) rather than by adding to a pointer. */
#include "io/pb.h"

#include <stdlib.h>
#include <string.h>

pb_reader pb_reader_make(const void *data, size_t len) {
  pb_reader r;
  r.p = (const uint8_t *)data;
  r.end = r.p + len;
  return r;
}

int pb_read_varint(pb_reader *r, uint64_t *v, lt_err *err) {
  uint64_t x = 0;
  for (int i = 0; i < 10; i++) {
    if (r->p >= r->end) {
      lt_errorf(err, LT_ERR_FORMAT, "protobuf varint runs past the end of the data (truncated file?)");
      return -1;
    }
    uint8_t byte = *r->p++;
    /* The tenth byte may only carry the top bit of a 64-bit value. */
    if (i == 9 && byte > 1) {
      lt_errorf(err, LT_ERR_FORMAT, "protobuf varint overflows 64 bits");
      return -1;
    }
    x |= (uint64_t)(byte & 0x7f) << (7 * i);
    if (!(byte & 0x80)) {
      *v = x;
      return 0;
    }
  }
  lt_errorf(err, LT_ERR_FORMAT, "protobuf varint longer than 10 bytes");
  return -1;
}

static int read_fixed(pb_reader *r, int width, uint64_t *v, lt_err *err) {
  if ((size_t)(r->end - r->p) < (size_t)width) {
    lt_errorf(err, LT_ERR_FORMAT, "protobuf fixed%d field runs past the end of the data", width * 8);
    return -1;
  }
  uint64_t x = 0;
  for (int i = 0; i < width; i++) x |= (uint64_t)r->p[i] << (8 * i); /* little-endian on the wire */
  r->p += width;
  *v = x;
  return 0;
}

int pb_next(pb_reader *r, pb_field *f, lt_err *err) {
  if (r->p >= r->end) return 0;
  uint64_t key;
  if (pb_read_varint(r, &key, err) < 0) return -1;
  uint64_t num = key >> 3;
  if (num == 0 || num > 536870911u) {
    lt_errorf(err, LT_ERR_FORMAT, "protobuf field number %llu is invalid (not a protobuf/ONNX file?)",
              (unsigned long long)num);
    return -1;
  }
  f->num = (uint32_t)num;
  f->wire = (int)(key & 7);
  f->u = 0;
  f->data = NULL;
  f->len = 0;
  switch (f->wire) {
  case PB_VARINT: return pb_read_varint(r, &f->u, err) < 0 ? -1 : 1;
  case PB_I64: return read_fixed(r, 8, &f->u, err) < 0 ? -1 : 1;
  case PB_I32: return read_fixed(r, 4, &f->u, err) < 0 ? -1 : 1;
  case PB_LEN: {
    uint64_t len;
    if (pb_read_varint(r, &len, err) < 0) return -1;
    if (len > (uint64_t)(r->end - r->p)) {
      lt_errorf(err, LT_ERR_FORMAT,
                "protobuf field %u claims %llu bytes but only %zu remain (truncated or corrupt file)",
                f->num, (unsigned long long)len, (size_t)(r->end - r->p));
      return -1;
    }
    f->data = r->p;
    f->len = (size_t)len;
    r->p += len;
    return 1;
  }
  default:
    lt_errorf(err, LT_ERR_FORMAT, "protobuf field %u has wire type %d, which ONNX never uses "
              "(corrupt file or not ONNX)", f->num, f->wire);
    return -1;
  }
}

lt_status pb_field_i64(const pb_field *f, int64_t *v, lt_err *err) {
  if (f->wire != PB_VARINT)
    return lt_errorf(err, LT_ERR_FORMAT, "protobuf field %u: expected an integer, found wire type %d",
                     f->num, f->wire);
  *v = (int64_t)f->u;
  return LT_OK;
}

lt_status pb_field_f32(const pb_field *f, float *v, lt_err *err) {
  if (f->wire != PB_I32)
    return lt_errorf(err, LT_ERR_FORMAT, "protobuf field %u: expected a float, found wire type %d",
                     f->num, f->wire);
  uint32_t bits = (uint32_t)f->u;
  memcpy(v, &bits, sizeof *v);
  return LT_OK;
}

lt_status pb_count_varints(const pb_field *f, size_t *n, lt_err *err) {
  if (f->wire == PB_VARINT) {
    *n = 1;
    return LT_OK;
  }
  if (f->wire != PB_LEN)
    return lt_errorf(err, LT_ERR_FORMAT, "protobuf field %u: expected integers, found wire type %d",
                     f->num, f->wire);
  /* Every varint ends with exactly one byte whose top bit is clear. */
  size_t c = 0;
  for (size_t i = 0; i < f->len; i++) c += !(f->data[i] & 0x80);
  if (f->len && (f->data[f->len - 1] & 0x80))
    return lt_errorf(err, LT_ERR_FORMAT, "protobuf packed field %u ends inside a varint", f->num);
  *n = c;
  return LT_OK;
}

lt_status pb_get_varints(const pb_field *f, int64_t *out, size_t cap, size_t *n, lt_err *err) {
  if (f->wire == PB_VARINT) {
    if (*n >= cap) return lt_errorf(err, LT_ERR_INTERNAL, "protobuf field %u: more values than counted", f->num);
    out[(*n)++] = (int64_t)f->u;
    return LT_OK;
  }
  if (f->wire != PB_LEN)
    return lt_errorf(err, LT_ERR_FORMAT, "protobuf field %u: expected integers, found wire type %d",
                     f->num, f->wire);
  pb_reader r = pb_reader_make(f->data, f->len);
  while (r.p < r.end) {
    uint64_t v;
    if (pb_read_varint(&r, &v, err) < 0) return err ? err->status : LT_ERR_FORMAT;
    if (*n >= cap) return lt_errorf(err, LT_ERR_INTERNAL, "protobuf field %u: more values than counted", f->num);
    out[(*n)++] = (int64_t)v;
  }
  return LT_OK;
}

lt_status pb_count_fixed(const pb_field *f, int width, size_t *n, lt_err *err) {
  int want = width == 4 ? PB_I32 : PB_I64;
  if (f->wire == want) {
    *n = 1;
    return LT_OK;
  }
  if (f->wire != PB_LEN || f->len % (size_t)width)
    return lt_errorf(err, LT_ERR_FORMAT, "protobuf field %u: expected packed %d-byte values", f->num,
                     width);
  *n = f->len / (size_t)width;
  return LT_OK;
}

lt_status pb_get_fixed(const pb_field *f, int width, void *out, size_t cap, size_t *n,
                       lt_err *err) {
  size_t cnt = 0;
  lt_status st = pb_count_fixed(f, width, &cnt, err);
  if (st) return st;
  if (cnt > cap || *n > cap - cnt)
    return lt_errorf(err, LT_ERR_INTERNAL, "protobuf field %u: more values than counted", f->num);
  uint8_t *dst = (uint8_t *)out + *n * (size_t)width;
  if (f->wire == PB_LEN) {
    memcpy(dst, f->data, f->len); /* little-endian host assumed, as everywhere in Lathe */
  } else {
    memcpy(dst, &f->u, (size_t)width);
  }
  *n += cnt;
  return LT_OK;
}

/* ---- encoder --------------------------------------------------------------------------------- */

void pb_buf_free(pb_buf *b) {
  free(b->data);
  memset(b, 0, sizeof *b);
}

void pb_put_raw(pb_buf *b, const void *p, size_t n) {
  if (b->oom || n == 0) return;
  if (n > b->cap - b->len) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len < n) {
      if (cap > SIZE_MAX / 2) {
        b->oom = 1;
        return;
      }
      cap *= 2;
    }
    uint8_t *d = realloc(b->data, cap);
    if (!d) {
      b->oom = 1;
      return;
    }
    b->data = d;
    b->cap = cap;
  }
  memcpy(b->data + b->len, p, n);
  b->len += n;
}

void pb_put_varint(pb_buf *b, uint64_t v) {
  uint8_t tmp[10];
  int n = 0;
  do {
    tmp[n] = (uint8_t)(v & 0x7f);
    v >>= 7;
    if (v) tmp[n] |= 0x80;
    n++;
  } while (v);
  pb_put_raw(b, tmp, (size_t)n);
}

void pb_put_tag(pb_buf *b, uint32_t num, int wire) { pb_put_varint(b, ((uint64_t)num << 3) | (uint64_t)wire); }

void pb_put_int(pb_buf *b, uint32_t num, int64_t v) {
  pb_put_tag(b, num, PB_VARINT);
  pb_put_varint(b, (uint64_t)v);
}

void pb_put_float(pb_buf *b, uint32_t num, float v) {
  pb_put_tag(b, num, PB_I32);
  pb_put_raw(b, &v, 4);
}

void pb_put_bytes(pb_buf *b, uint32_t num, const void *p, size_t n) {
  pb_put_tag(b, num, PB_LEN);
  pb_put_varint(b, n);
  pb_put_raw(b, p, n);
}

void pb_put_str(pb_buf *b, uint32_t num, const char *s) { pb_put_bytes(b, num, s, strlen(s)); }

void pb_put_msg(pb_buf *b, uint32_t num, const pb_buf *msg) {
  if (msg->oom) b->oom = 1;
  pb_put_bytes(b, num, msg->data, msg->len);
}

void pb_put_packed_ints(pb_buf *b, uint32_t num, const int64_t *v, size_t n) {
  pb_buf tmp = {0};
  for (size_t i = 0; i < n; i++) pb_put_varint(&tmp, (uint64_t)v[i]);
  pb_put_msg(b, num, &tmp);
  pb_buf_free(&tmp);
}
