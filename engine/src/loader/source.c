/* Asking HDF5, once, where the samples of a dataset live: the dataset's file offset for a
 * contiguous layout, the chunk table for a chunked one. Everything the loader reads afterwards
 * comes from these offsets with pread. */
#include "loader/source.h"

#include <string.h>

/* HDF5 prints its own error stack by default; we turn every failure into an lt_err that carries
 * the location, and leave through the cleanup at `done`. */
#define CHECK_H5(call, ...)                                                                          \
  do {                                                                                               \
    if ((call) < 0) {                                                                                \
      st = lt_errorf(err, LT_ERR_FORMAT, __VA_ARGS__);                                               \
      lt_err_prefix(err, "%s:%d", __FILE__, __LINE__);                                               \
      goto done;                                                                                     \
    }                                                                                                \
  } while (0)

void ld_source_free(ld_source *s) {
  if (!s) return;
  lt_free(LT_MEM_DATA, s->chunk_off, (size_t)s->n_chunks * 8);
  lt_free(LT_MEM_DATA, s->chunk_len, (size_t)s->n_chunks * 8);
  lt_free(LT_MEM_DATA, s->chunk_raw, (size_t)s->n_chunks);
  memset(s, 0, sizeof *s);
}

lt_status ld_source_open(hid_t file, const char *name, hsize_t userblock, ld_source *s, lt_err *err) {
  lt_status st = LT_OK;
  memset(s, 0, sizeof *s);
  snprintf(s->name, sizeof s->name, "%s", name);
  hid_t d = -1, space = -1, type = -1, dcpl = -1;
  if (H5Lexists(file, name, H5P_DEFAULT) <= 0) {
    /* H5Lexists fails rather than answering "no" when a parent group is missing */
    return lt_errorf(err, LT_ERR_INVALID,
                     "dataset %s not found in the file; name an existing dataset (list them with "
                     "lathe inspect FILE)", name);
  }
  CHECK_H5(d = H5Dopen2(file, name, H5P_DEFAULT), "%s is not a dataset; name an HDF5 dataset", name);
  CHECK_H5(space = H5Dget_space(d), "cannot read the dataspace of %s", name);
  int rank = H5Sget_simple_extent_ndims(space);
  if (rank < 1 || rank > 8) {
    st = lt_errorf(err, LT_ERR_UNSUPPORTED,
                   "dataset %s has rank %d; the loader needs 1 to 8 dims with samples along the "
                   "first", name, rank);
    goto done;
  }
  s->rank = rank;
  H5Sget_simple_extent_dims(space, s->dims, NULL);
  s->n = (int64_t)s->dims[0];
  CHECK_H5(type = H5Dget_type(d), "cannot read the type of %s", name);
  H5T_class_t cls = H5Tget_class(type);
  size_t esize = H5Tget_size(type);
  if (cls == H5T_VLEN || cls == H5T_REFERENCE || H5Tis_variable_str(type) > 0 || esize == 0) {
    st = lt_errorf(err, LT_ERR_UNSUPPORTED,
                   "dataset %s has a variable-length or reference type; the loader reads fixed-size "
                   "samples (convert with lathe data …)", name);
    goto done;
  }
  if (esize > 1 && (cls == H5T_INTEGER || cls == H5T_FLOAT) && H5Tget_order(type) != H5T_ORDER_LE) {
    st = lt_errorf(err, LT_ERR_UNSUPPORTED,
                   "dataset %s is big-endian; the loader delivers bytes as stored, so rewrite it "
                   "little-endian (h5repack or lathe data …)", name);
    goto done;
  }
  s->sample_bytes = esize;
  for (int k = 1; k < rank; k++) s->sample_bytes *= s->dims[k];
  CHECK_H5(dcpl = H5Dget_create_plist(d), "cannot read the creation properties of %s", name);
  H5D_layout_t layout = H5Pget_layout(dcpl);
  if (layout == H5D_CONTIGUOUS) {
    if (H5Pget_external_count(dcpl) > 0) {
      st = lt_errorf(err, LT_ERR_UNSUPPORTED, "dataset %s stores its data in external files; "
                     "rewrite it into the HDF5 file (h5repack)", name);
      goto done;
    }
    haddr_t addr = H5Dget_offset(d);
    if (addr == HADDR_UNDEF) {
      st = lt_errorf(err, LT_ERR_FORMAT,
                     "dataset %s has no storage allocated (it was never written); write its data "
                     "first", name);
      goto done;
    }
    s->base = (int64_t)(addr + userblock);
  } else if (layout == H5D_CHUNKED) {
    hsize_t cdims[8];
    if (H5Pget_chunk(dcpl, rank, cdims) != rank) {
      st = lt_errorf(err, LT_ERR_FORMAT, "cannot read the chunk shape of %s", name);
      goto done;
    }
    for (int k = 1; k < rank; k++)
      if (cdims[k] != s->dims[k]) {
        st = lt_errorf(err, LT_ERR_UNSUPPORTED,
                       "dataset %s has chunks that split a sample (dim %d: chunk %llu of %llu); "
                       "rechunk whole samples, e.g. h5repack -l %s:CHUNK=k×(trailing dims)",
                       name, k, (unsigned long long)cdims[k], (unsigned long long)s->dims[k], name);
        goto done;
      }
    int nf = H5Pget_nfilters(dcpl);
    for (int f = 0; f < nf; f++) {
      unsigned flags, cd[8];
      size_t ncd = 8;
      char fname[64];
      H5Z_filter_t id = H5Pget_filter2(dcpl, (unsigned)f, &flags, &ncd, cd, sizeof fname, fname, NULL);
      if (id != H5Z_FILTER_DEFLATE || nf > 1) {
        st = lt_errorf(err, LT_ERR_UNSUPPORTED,
                       "dataset %s uses the filter pipeline %s(%d filters); the loader decodes "
                       "deflate alone: rewrite with h5repack -f %s:GZIP=4 or without filters",
                       name, id == H5Z_FILTER_DEFLATE ? "deflate+… " : "", nf, name);
        goto done;
      }
      s->deflate = true;
    }
    s->chunked = true;
    s->chunk_n = (int64_t)cdims[0];
    s->n_chunks = (s->n + s->chunk_n - 1) / s->chunk_n;
    s->chunk_off = lt_alloc(LT_MEM_DATA, (size_t)s->n_chunks * 8, err);
    s->chunk_len = lt_alloc(LT_MEM_DATA, (size_t)s->n_chunks * 8, err);
    s->chunk_raw = lt_alloc(LT_MEM_DATA, (size_t)s->n_chunks, err);
    if (!s->chunk_off || !s->chunk_len || !s->chunk_raw) {
      st = LT_ERR_NOMEM;
      goto done;
    }
    hsize_t stored = 0;
    /* the space, not H5S_ALL: HDF5 1.10 mishandles H5S_ALL here (see H5Dpublic.h) */
    CHECK_H5(H5Dget_num_chunks(d, space, &stored), "cannot count the chunks of %s", name);
    if ((int64_t)stored < s->n_chunks) {
      st = lt_errorf(err, LT_ERR_FORMAT,
                     "dataset %s has %llu of its %lld chunks written; write every sample before "
                     "training on it", name, (unsigned long long)stored, (long long)s->n_chunks);
      goto done;
    }
    /* By coordinate rather than H5Dget_chunk_info by index: in 1.10 the latter walks the chunk
     * index from the start on every call, which is quadratic in the number of chunks. */
    for (int64_t c = 0; c < s->n_chunks; c++) {
      hsize_t coord[8] = {0};
      coord[0] = (hsize_t)(c * s->chunk_n);
      unsigned mask = 0;
      haddr_t addr = HADDR_UNDEF;
      hsize_t size = 0;
      CHECK_H5(H5Dget_chunk_info_by_coord(d, coord, &mask, &addr, &size),
               "cannot read chunk %lld of %s", (long long)c, name);
      if (addr == HADDR_UNDEF || size == 0) {
        st = lt_errorf(err, LT_ERR_FORMAT, "chunk %lld of %s was never written", (long long)c, name);
        goto done;
      }
      s->chunk_off[c] = (int64_t)(addr + userblock);
      s->chunk_len[c] = (int64_t)size;
      s->chunk_raw[c] = !s->deflate || (mask & 1u); /* bit 0 set: deflate skipped for this chunk */
      if ((int64_t)size > s->max_chunk_len) s->max_chunk_len = (int64_t)size;
    }
  } else {
    st = lt_errorf(err, LT_ERR_UNSUPPORTED,
                   "dataset %s has a compact or virtual layout; rewrite it contiguous or chunked "
                   "(h5repack -l %s:CONTI)", name, name);
    goto done;
  }
done:
  if (dcpl >= 0) H5Pclose(dcpl);
  if (type >= 0) H5Tclose(type);
  if (space >= 0) H5Sclose(space);
  if (d >= 0) H5Dclose(d);
  if (st != LT_OK) ld_source_free(s);
  return st;
}
