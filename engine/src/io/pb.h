/* Protobuf wire format: a bounds-checked decoder for untrusted bytes and a small encoder.
 *
 * Decoding walks one message at a time: pb_next() yields each field (number, wire type, and
 * either the integer or a view of the bytes) and never reads outside [p, end). Nested messages
 * are decoded by starting a new reader over the field's bytes, so the caller controls depth.
 * Groups (wire types 3 and 4) are refused: no proto3 or ONNX message uses them.
 *
 *   pb_reader r = pb_reader_make(buf, len);
 *   pb_field f;
 *   int rc;
 *   while ((rc = pb_next(&r, &f, err)) > 0) { if (f.num == 7 && f.wire == PB_LEN) ... }
 *   if (rc < 0) return err->status;
 *
 * Not for: schemas or reflection; onnx_read.c knows the ONNX field numbers.
 */
#ifndef LATHE_IO_PB_H
#define LATHE_IO_PB_H

#include "lathe/core.h"

enum { PB_VARINT = 0, PB_I64 = 1, PB_LEN = 2, PB_I32 = 5 };

typedef struct pb_reader {
  const uint8_t *p;   /* next byte to read */
  const uint8_t *end; /* one past the last readable byte */
} pb_reader;

typedef struct pb_field {
  uint32_t num;        /* field number, >= 1 */
  int wire;            /* PB_VARINT, PB_I64, PB_LEN or PB_I32 */
  uint64_t u;          /* the value for VARINT, I64, I32 (raw bits) */
  const uint8_t *data; /* PB_LEN: view into the reader's buffer */
  size_t len;          /* PB_LEN: byte count of data */
} pb_field;

pb_reader pb_reader_make(const void *data, size_t len);
/* 1: a field was read into *f; 0: clean end of the message; -1: malformed (err filled). */
int pb_next(pb_reader *r, pb_field *f, lt_err *err);
/* Reads one varint; -1 on truncation or a varint longer than 10 bytes. */
int pb_read_varint(pb_reader *r, uint64_t *v, lt_err *err);

/* Field value helpers that check the wire type. */
lt_status pb_field_i64(const pb_field *f, int64_t *v, lt_err *err);   /* int64/int32/enum/bool */
lt_status pb_field_f32(const pb_field *f, float *v, lt_err *err);     /* float (fixed32) */

/* Repeated scalar fields arrive packed (one PB_LEN field) or unpacked (one field per element);
 * these count and decode either form. Counting first lets the caller allocate once. */
lt_status pb_count_varints(const pb_field *f, size_t *n, lt_err *err);
/* Appends the values of f to out[*n...] without passing cap. */
lt_status pb_get_varints(const pb_field *f, int64_t *out, size_t cap, size_t *n, lt_err *err);
lt_status pb_count_fixed(const pb_field *f, int width, size_t *n, lt_err *err);
/* width 4: float bits into uint32 out; width 8: double/uint64 bits. */
lt_status pb_get_fixed(const pb_field *f, int width, void *out, size_t cap, size_t *n,
                       lt_err *err);

/* Encoder: a growing byte buffer. Allocation failure is sticky (oom) and checked once at the
 * end, so encoding code stays a straight line. */
typedef struct pb_buf {
  uint8_t *data; /* (len) owned, malloc */
  size_t len, cap;
  int oom;
} pb_buf;

void pb_buf_free(pb_buf *b);
void pb_put_raw(pb_buf *b, const void *p, size_t n);
void pb_put_varint(pb_buf *b, uint64_t v);
void pb_put_tag(pb_buf *b, uint32_t num, int wire);
void pb_put_int(pb_buf *b, uint32_t num, int64_t v);         /* int64 / enum field */
void pb_put_float(pb_buf *b, uint32_t num, float v);
void pb_put_bytes(pb_buf *b, uint32_t num, const void *p, size_t n);
void pb_put_str(pb_buf *b, uint32_t num, const char *s);
void pb_put_msg(pb_buf *b, uint32_t num, const pb_buf *msg); /* nested message */
void pb_put_packed_ints(pb_buf *b, uint32_t num, const int64_t *v, size_t n);

#endif
