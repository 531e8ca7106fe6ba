/* Protobuf wire-format decoder on edge cases: it returns every value the encoder writes, and
 * refuses truncated data, over-long varints, lengths past the end, and group wire types. */
#include <stdint.h>
#include <string.h>

#include "io/pb.h"
#include "test.h"

TEST_CASE(pb_varints_round_trip) {
  const uint64_t v[] = {0, 1, 127, 128, 300, 16383, 16384, UINT32_MAX, (uint64_t)1 << 63, UINT64_MAX};
  pb_buf b = {0};
  for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) pb_put_int(&b, (uint32_t)(i + 1), (int64_t)v[i]);
  pb_reader r = pb_reader_make(b.data, b.len);
  pb_field f;
  lt_err err = {0};
  size_t i = 0;
  int rc;
  while ((rc = pb_next(&r, &f, &err)) > 0) {
    CHECK(f.num == i + 1 && f.wire == PB_VARINT && f.u == v[i]);
    i++;
  }
  CHECK(rc == 0 && i == sizeof v / sizeof v[0]);
  CHECK(UINT64_MAX == 0xffffffffffffffffull && b.len > 10);
  pb_buf_free(&b);
}

TEST_CASE(pb_bad_varints_are_refused) {
  lt_err err = {0};
  uint64_t v;
  const uint8_t eleven[11] = {0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01};
  pb_reader r = pb_reader_make(eleven, sizeof eleven);
  CHECK(pb_read_varint(&r, &v, &err) < 0);
  const uint8_t overflow[10] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02};
  r = pb_reader_make(overflow, sizeof overflow);
  CHECK(pb_read_varint(&r, &v, &err) < 0);
  CHECK_STR_CONTAINS(err.msg, "overflows");
  const uint8_t truncated[2] = {0x80, 0x80};
  r = pb_reader_make(truncated, sizeof truncated);
  CHECK(pb_read_varint(&r, &v, &err) < 0);
  CHECK_STR_CONTAINS(err.msg, "truncated");
}

TEST_CASE(pb_lengths_past_the_end_and_groups_are_refused) {
  lt_err err = {0};
  pb_field f;
  /* Field 1, length-delimited, claims 5 bytes with 2 present. */
  const uint8_t shortlen[4] = {0x0a, 0x05, 'a', 'b'};
  pb_reader r = pb_reader_make(shortlen, sizeof shortlen);
  CHECK(pb_next(&r, &f, &err) < 0);
  CHECK_STR_CONTAINS(err.msg, "only 2 remain");
  /* A length near 2^64 must not wrap the pointer arithmetic. */
  const uint8_t huge[12] = {0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0};
  r = pb_reader_make(huge, sizeof huge);
  CHECK(pb_next(&r, &f, &err) < 0);
  const uint8_t group[2] = {0x0b, 0x0c}; /* field 1 start-group, end-group */
  r = pb_reader_make(group, sizeof group);
  CHECK(pb_next(&r, &f, &err) < 0);
  CHECK_STR_CONTAINS(err.msg, "wire type 3");
  const uint8_t field0[2] = {0x00, 0x01};
  r = pb_reader_make(field0, sizeof field0);
  CHECK(pb_next(&r, &f, &err) < 0);
  const uint8_t fixed_short[3] = {0x0d, 0x01, 0x02}; /* fixed32 with 2 bytes */
  r = pb_reader_make(fixed_short, sizeof fixed_short);
  CHECK(pb_next(&r, &f, &err) < 0);
}

TEST_CASE(pb_packed_and_unpacked_repeated_fields) {
  const int64_t v[5] = {0, -1, 3, 1 << 20, INT64_MIN};
  pb_buf b = {0};
  pb_put_packed_ints(&b, 4, v, 5);
  pb_put_int(&b, 4, 42); /* the same field, unpacked: values append */
  pb_reader r = pb_reader_make(b.data, b.len);
  pb_field f;
  lt_err err = {0};
  int64_t out[6];
  size_t n = 0, cnt, total = 0;
  while (pb_next(&r, &f, &err) > 0) {
    CHECK(pb_count_varints(&f, &cnt, &err) == LT_OK);
    total += cnt;
    CHECK(pb_get_varints(&f, out, 6, &n, &err) == LT_OK);
  }
  CHECK(total == 6 && n == 6);
  CHECK(memcmp(out, v, sizeof v) == 0 && out[5] == 42);
  /* A packed run that ends inside a varint is refused. */
  const uint8_t bad[3] = {0x22, 0x01, 0x80};
  r = pb_reader_make(bad, sizeof bad);
  CHECK(pb_next(&r, &f, &err) > 0);
  CHECK(pb_count_varints(&f, &cnt, &err) != LT_OK);
  /* Packed floats: byte count must be a multiple of 4, and cap is respected. */
  float fl[3] = {1.5f, -2.f, 0.25f}, got[3];
  pb_buf fb = {0};
  pb_put_bytes(&fb, 7, fl, sizeof fl);
  r = pb_reader_make(fb.data, fb.len);
  CHECK(pb_next(&r, &f, &err) > 0);
  n = 0;
  CHECK(pb_get_fixed(&f, 4, got, 3, &n, &err) == LT_OK && n == 3 && got[1] == -2.f);
  n = 1;
  CHECK(pb_get_fixed(&f, 4, got, 3, &n, &err) != LT_OK); /* would write past the cap */
  pb_buf_free(&fb);
  pb_buf_free(&b);
}

int main(void) {
  RUN(pb_varints_round_trip);
  RUN(pb_bad_varints_are_refused);
  RUN(pb_lengths_past_the_end_and_groups_are_refused);
  RUN(pb_packed_and_unpacked_repeated_fields);
  return test_summary();
}
