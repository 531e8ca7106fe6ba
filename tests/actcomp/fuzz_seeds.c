/* Writes valid streams of every codec kind into a folder: the seed corpus of fuzz_decode.
 * Usage: actcomp_fuzz_seeds DIR */
#include "lathe/actcomp.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

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
