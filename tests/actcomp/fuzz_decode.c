/* libFuzzer target for the activation-stream decoders (lt_ac_stream_info, lt_ac_decode), built
 * with clang -fsanitize=fuzzer,address,undefined by tests/actcomp/CMakeLists.txt.
 *
 * The first input byte picks a mode: even, the stream as given (so the checksum is tested);
 * odd, the stream with its CRC recomputed, so that mutations reach the parser and the Huffman
 * decoder behind the checksum. The stream is copied to an exact-size buffer so that AddressSanitizer
 * sees any read past its end. */
#include "actcomp/ac_internal.h"
#include "lathe/actcomp.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static lt_ac_codec *codec;
  if (!codec) {
    lt_ac_opts o = lt_ac_opts_default();
    o.threads = 1;
    codec = lt_ac_codec_new(&o, NULL);
    if (!codec) abort();
  }
  if (size < 1) return 0;
  int fix_crc = data[0] & 1;
  data++;
  size--;
  uint8_t *s = malloc(size ? size : 1);
  if (!s) return 0;
  memcpy(s, data, size);
  if (fix_crc && size >= AC_HEADER_BYTES && !memcmp(s, "LTAC", 4)) {
    uint32_t crc = ac_stream_checksum(s, size);
    memcpy(s + AC_CRC_OFFSET, &crc, 4);
  }
  lt_ac_info info;
  lt_err err;
  if (lt_ac_stream_info(s, size, &info, &err) == LT_OK && info.n <= (1 << 22)) {
    float *x = malloc((size_t)info.n * sizeof *x);
    if (x) {
      if (lt_ac_decode(codec, s, size, x, info.n, &err) == LT_OK && info.kind == LT_AC_KIND_LORENZO) {
        /* A stream that decodes must honour its own outlier list. */
        volatile float sink = 0;
        for (int64_t i = 0; i < info.n; i++) sink += x[i];
        (void)sink;
      }
      free(x);
    }
  } else {
    float x[4];
    lt_ac_decode(codec, s, size, x, 4, &err); /* the wrong-count and malformed paths */
  }
  free(s);
  return 0;
}
