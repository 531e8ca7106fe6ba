/* Writes valid streams of every codec kind into a folder: the seed corpus of fuzz_decode.
 * Usage: actcomp_fuzz_seeds DIR */
#include "actcomp/ac_internal.h"
#include "lathe/actcomp.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <zstd.h>

static int write_seed(const char *dir, const char *name, int mode, const lt_ac_buf *b) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "wb");
  if (!f) return -1;
  unsigned char m = (unsigned char)mode;
  fwrite(&m, 1, 1, f);
  fwrite(b->data, 1, b->len, f);
  return fclose(f);
}

/* b with its payload (Huffman bits, raw or one zstd frame) replaced by nf zstd frames of it, the
 * zstd flag set: the multi-frame form the encoder writes for payloads of AC_ZSTD_SLICE bytes and
 * more, made here from a small stream so that the fuzzer's inputs stay small. */
static int multi_frame(const lt_ac_buf *b, int nf, lt_ac_buf *out) {
  ac_hdr hd;
  lt_err err = {0};
  if (ac_parse_header(b->data, b->len, &hd, &err)) return -1;
  const uint8_t *pay = b->data + hd.off_payload;
  uint8_t *raw = malloc(hd.raw_bytes + 1);
  const size_t cap = (size_t)nf * ZSTD_compressBound(hd.raw_bytes);
  uint8_t *z = malloc(cap);
  size_t zl = 0;
  int rc = !raw || !z;
  if (!rc && hd.zstd)
    rc = ZSTD_decompress(raw, hd.raw_bytes, pay, hd.stored_bytes) != hd.raw_bytes;
  else if (!rc)
    memcpy(raw, pay, hd.raw_bytes);
  const size_t sl = hd.raw_bytes / (size_t)nf;
  for (int i = 0; i < nf && !rc; i++) {
    size_t n = i == nf - 1 ? hd.raw_bytes - (size_t)i * sl : sl;
    size_t r = ZSTD_compress(z + zl, cap - zl, raw + (size_t)i * sl, n, 1);
    rc = ZSTD_isError(r) != 0;
    zl += rc ? 0 : r;
  }
  const size_t tail = b->len - hd.off_esc;
  if (!rc) rc = ac_buf_reserve(out, hd.off_payload + zl + tail, &err) != LT_OK;
  if (!rc) {
    memcpy(out->data, b->data, hd.off_payload);
    memcpy(out->data + hd.off_payload, z, zl);
    memcpy(out->data + hd.off_payload + zl, b->data + hd.off_esc, tail);
    out->len = hd.off_payload + zl + tail;
    out->data[7] |= AC_FLAG_ZSTD;
    ac_put_u64(out->data + 120, zl);
    ac_put_u32(out->data + AC_CRC_OFFSET, ac_stream_checksum(out->data, out->len));
    lt_ac_info info;
    rc = lt_ac_stream_info(out->data, out->len, &info, &err) != LT_OK;
  }
  free(raw);
  free(z);
  return rc ? -1 : 0;
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s DIR\n", argv[0]);
    return 2;
  }
  mkdir(argv[1], 0755);
  lt_err err = {0};
  lt_ac_codec *c = lt_ac_codec_new(NULL, &err);
  lt_rng rng = lt_rng_make(8, 3);
  enum { N = 2 * 3 * 9 * 11 };
  float x[N];
  for (int i = 0; i < N; i++) {
    float v = lt_rng_normal(&rng);
    x[i] = i == 7 ? 1e6f : i == 9 ? 0.0f / 0.0f : v > 0 ? v : 0;
  }
  int64_t shape[4] = {2, 3, 9, 11};
  lt_ac_buf b = {0};
  const double ebs[] = {0.001, 0.05, 0.5};
  int k = 0, rc = 0;
  for (int z = 0; z <= 1; z++) {
    lt_ac_opts o = lt_ac_opts_default();
    o.zstd_level = z;
    lt_ac_codec_set_opts(c, &o);
    for (int e = 0; e < 3; e++) {
      char name[64];
      rc |= lt_ac_encode(c, LT_AC_KIND_LORENZO, x, 4, shape, ebs[e], &b, &err);
      for (int mode = 0; mode <= 1; mode++) {
        snprintf(name, sizeof name, "lorenzo-%d-%d", k++, mode);
        rc |= write_seed(argv[1], name, mode, &b);
      }
    }
  }
  /* Three frames: decoded like any zstd stream, each frame's sizes read first. */
  lt_ac_buf m = {0};
  rc |= lt_ac_encode(c, LT_AC_KIND_LORENZO, x, 4, shape, 0.001, &b, &err);
  rc |= multi_frame(&b, 3, &m);
  float y0[N], y1[N];
  rc |= lt_ac_decode(c, b.data, b.len, y0, N, &err) || lt_ac_decode(c, m.data, m.len, y1, N, &err) ||
        memcmp(y0, y1, sizeof y0);
  for (int mode = 0; mode <= 1 && !rc; mode++) {
    char name[64];
    snprintf(name, sizeof name, "lorenzo-frames-%d", mode);
    rc |= write_seed(argv[1], name, mode, &m);
  }
  lt_ac_buf_free(&m);
  rc |= lt_ac_encode(c, LT_AC_KIND_ZSTD, x, 4, shape, 0, &b, &err);
  rc |= write_seed(argv[1], "zstd", 0, &b);
  if (lt_ac_kind_available(LT_AC_KIND_ZFP)) {
    rc |= lt_ac_encode(c, LT_AC_KIND_ZFP, x, 4, shape, 0.05, &b, &err);
    rc |= write_seed(argv[1], "zfp", 0, &b);
  }
  lt_ac_buf_free(&b);
  lt_ac_codec_free(c);
  if (rc) fprintf(stderr, "fuzz seeds: %s\n", err.msg);
  return rc ? 1 : 0;
}
