/* IDX files (the MNIST family): a 4-byte magic (0, 0, type, ndim), ndim big-endian uint32 dims,
 * then the data. Only unsigned-byte data (type 0x08) is accepted, which is what image and label
 * files use. The declared size must match the file size exactly, so a truncated download or a
 * file with trailing garbage is refused rather than half-read. */
#include "lathe/data.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

static uint32_t idx_be32(const uint8_t *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

lt_status lt_idx_read(const char *path, lt_idx *out, lt_err *err) {
  memset(out, 0, sizeof *out);
  FILE *f = fopen(path, "rb");
  if (!f)
    return lt_errorf(err, errno == ENOENT ? LT_ERR_INVALID : LT_ERR_IO,
                     "cannot open IDX file %s: %s", path, strerror(errno));
  lt_status st = LT_OK;
  uint8_t head[4 + 4 * 4];
  struct stat sb;
  if (fstat(fileno(f), &sb) != 0 || fread(head, 1, 4, f) != 4) {
    st = lt_errorf(err, LT_ERR_FORMAT, "%s is too short to be an IDX file", path);
    goto done;
  }
  if (head[0] == 0x1f && head[1] == 0x8b) {
    st = lt_errorf(err, LT_ERR_FORMAT,
                   "%s is gzip-compressed; decompress it first (gunzip -k %s) and pass the "
                   "plain IDX file",
                   path, path);
    goto done;
  }
  int ndim = head[3];
  if (head[0] != 0 || head[1] != 0 || head[2] != 0x08 || ndim < 1 || ndim > 4) {
    st = lt_errorf(err, LT_ERR_FORMAT,
                   "%s is not an unsigned-byte IDX file (magic %02x %02x %02x %02x; expected "
                   "00 00 08 01..04)",
                   path, head[0], head[1], head[2], head[3]);
    goto done;
  }
  if (fread(head + 4, 4, (size_t)ndim, f) != (size_t)ndim) {
    st = lt_errorf(err, LT_ERR_FORMAT, "%s ends inside its header", path);
    goto done;
  }
  size_t total = 1;
  for (int i = 0; i < ndim; i++) {
    uint32_t d = idx_be32(head + 4 + 4 * i);
    out->shape[i] = d;
    if (d == 0 || __builtin_mul_overflow(total, (size_t)d, &total)) {
      st = lt_errorf(err, LT_ERR_FORMAT, "%s declares dimension %d = %u, which is not usable",
                     path, i, d);
      goto done;
    }
  }
  size_t header = 4 + 4 * (size_t)ndim;
  if ((uint64_t)sb.st_size != header + total) {
    st = lt_errorf(err, LT_ERR_FORMAT,
                   "%s is %lld bytes but its header declares %zu bytes of data after a %zu-byte "
                   "header; the file is truncated or not IDX",
                   path, (long long)sb.st_size, total, header);
    goto done;
  }
  out->ndim = ndim;
  out->data = lt_alloc(LT_MEM_DATA, total, err);
  if (!out->data) {
    st = LT_ERR_NOMEM;
    goto done;
  }
  if (fread(out->data, 1, total, f) != total) {
    st = lt_errorf(err, LT_ERR_IO, "reading %s failed: %s", path, strerror(errno));
    goto done;
  }
done:
  fclose(f);
  if (st) lt_idx_free(out);
  return st;
}

void lt_idx_free(lt_idx *idx) {
  if (!idx || !idx->data) return;
  lt_free(LT_MEM_DATA, idx->data, (size_t)lt_shape_numel(idx->ndim, idx->shape));
  idx->data = NULL;
}
