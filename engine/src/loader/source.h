/* Where each sample of an HDF5 dataset lives in the file, asked from HDF5 once at open, so that
 * the loader can read sample bytes with plain positioned reads (no HDF5 call, no HDF5 lock, on
 * the hot path). Private to engine/src/loader. */
#ifndef LATHE_LOADER_SOURCE_H
#define LATHE_LOADER_SOURCE_H

#include "lathe/core.h"

#include <hdf5.h>

/* One dataset of N samples along axis 0, each sample_bytes of raw native-order bytes. */
typedef struct ld_source {
  char name[256];
  int64_t n;             /* samples */
  size_t sample_bytes;   /* product of the trailing dims × element size */
  int rank;              /* dataset rank (≥ 1) */
  hsize_t dims[8];       /* (rank) */
  bool chunked;
  /* contiguous: sample i lives at base + i·sample_bytes */
  int64_t base;          /* file offset of sample 0 (userblock included) */
  /* chunked: chunks span the full trailing dims, chunk_n samples each */
  int64_t chunk_n;       /* samples per chunk */
  int64_t n_chunks;
  bool deflate;          /* the filter pipeline is deflate alone */
  int64_t *chunk_off;    /* (n_chunks) file offsets of the stored chunks, owned */
  int64_t *chunk_len;    /* (n_chunks) stored bytes, owned */
  uint8_t *chunk_raw;    /* (n_chunks) 1 when the chunk is stored without its filters, owned */
  int64_t max_chunk_len; /* largest stored chunk */
} ld_source;

/* Validates the dataset (exists, rank ≥ 1, fixed-size little-endian or 1-byte type, storage
 * allocated, chunks spanning whole samples, no filter but deflate) and records where every sample
 * lives. userblock: bytes before the HDF5 superblock (H5Pget_userblock). */
lt_status ld_source_open(hid_t file, const char *name, hsize_t userblock, ld_source *s, lt_err *err);
void ld_source_free(ld_source *s);

/* Contiguous, or chunked without filters: the file offset of sample i. Compressed: not defined. */
static inline int64_t ld_source_offset(const ld_source *s, int64_t i) {
  if (!s->chunked) return s->base + i * (int64_t)s->sample_bytes;
  int64_t c = i / s->chunk_n;
  return s->chunk_off[c] + (i % s->chunk_n) * (int64_t)s->sample_bytes;
}

/* Whether sample i must be read as a whole compressed chunk and decoded. */
static inline bool ld_source_compressed(const ld_source *s, int64_t i) {
  return s->chunked && s->deflate && !s->chunk_raw[i / s->chunk_n];
}

#endif
