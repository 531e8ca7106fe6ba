/* Prints, for every sample the loader delivers on one process, "epoch index crc32(x) crc32(y)",
 * so that test_h5py_reference.py can compare them with h5py's own reads of the same file.
 *   loader_dump FILE X Y EPOCHS BATCH FRACTION POLICY [o_direct] */
#include "lathe/loader.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

int main(int argc, char **argv) {
  if (argc < 8) {
    fprintf(stderr, "usage: loader_dump FILE X Y EPOCHS BATCH FRACTION POLICY [o_direct]\n");
    return 2;
  }
  lt_loader_opts o = lt_loader_opts_default();
  o.path = argv[1];
  o.x_name = argv[2];
  o.y_name = argv[3];
  o.epochs = atoi(argv[4]);
  o.global_batch = atoll(argv[5]);
  o.buffer_fraction = atof(argv[6]);
  o.rank = 0;
  o.n_ranks = 1;
  o.o_direct = argc > 8 && strcmp(argv[8], "o_direct") == 0;
  lt_err err = {0};
  if (lt_loader_policy_parse(argv[7], &o.policy, &err) != LT_OK) {
    fprintf(stderr, "%s\n", err.msg);
    return 2;
  }
  lt_loader *ld = lt_loader_open(&o, &err);
  if (!ld) {
    fprintf(stderr, "%s\n", err.msg);
    return 1;
  }
  size_t xb = lt_loader_x_sample_bytes(ld), yb = lt_loader_y_sample_bytes(ld);
  lt_loader_batch b;
  while (lt_loader_next(ld, &b, &err) == LT_OK && b.n_local >= 0)
    for (int64_t j = 0; j < b.n_local; j++)
      printf("%d %lld %lu %lu\n", b.epoch, (long long)b.indices[j],
             crc32(0, (const Bytef *)b.x + j * xb, (uInt)xb), crc32(0, (const Bytef *)b.y + j * yb, (uInt)yb));
  int rc = err.status == LT_OK ? 0 : 1;
  if (rc) fprintf(stderr, "%s\n", err.msg);
  lt_loader_close(ld);
  return rc;
}
