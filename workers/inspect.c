/* workers/inspect.c — file summaries: the format dispatch and the HDF5 inspector.
 *
 * The HDF5 summary lists every group and dataset (dtype, shape, layout, chunking, filters,
 * storage size, attributes) and, for numeric datasets, min/max/mean with NaN/Inf counts. By
 * default the statistics come from at most INSPECT_SAMPLE_BLOCKS evenly spaced blocks totalling
 * INSPECT_SAMPLE_ELEMS elements, so inspecting a multi-gigabyte upload takes a moment; with
 * `exact` every element is read, block by block (INSPECT_EXACT_BLOCK elements at a time), with
 * progress and a stop check between blocks — what the `inspect` job kind uses for a full audit.
 *
 * HDF5 prints its error stack to stderr by default; it is silenced here, and the innermost
 * entry of the stack is turned into the message instead.
 */
#include "inspect.h"

#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "job.h"

enum {
  INSPECT_SAMPLE_ELEMS = 1 << 20, /* elements read per dataset when sampling */
  INSPECT_SAMPLE_BLOCKS = 64,     /* evenly spaced blocks they come from */
  INSPECT_EXACT_BLOCK = 1 << 20,  /* elements per read in exact mode (8 MiB of doubles) */
  INSPECT_MAX_OBJECTS = 4096,     /* groups + datasets listed before the summary is cut */
  INSPECT_ATTR_BUDGET = 1 << 20,  /* bytes of attribute values shown per file; the rest are
                                     described by dtype, so the summary stays a few MiB at most */
  INSPECT_MAX_ATTRS = 256,        /* attributes listed per object */
  INSPECT_ATTR_ELEMS = 64,        /* attribute values longer than this are described, not read */
  INSPECT_ATTR_STRING = 4096,     /* bytes of a string attribute shown */
  INSPECT_MAX_RANK = 32           /* H5S_MAX_RANK */
};

/* ---- errors ---- */

static int inspect_fail(char *err, size_t cap, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int inspect_fail(char *err, size_t cap, int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, cap, fmt, ap);
  va_end(ap);
  return code;
}

typedef struct inspect_h5_why {
  char text[256];
} inspect_h5_why;

static herr_t inspect_h5_walk(unsigned n, const H5E_error2_t *e, void *user) {
  inspect_h5_why *w = user;
  if (n > 0) return 0; /* the innermost entry says what is actually wrong */
  char minor[128] = "";
  H5Eget_msg(e->min_num, NULL, minor, sizeof minor);
  snprintf(w->text, sizeof w->text, "%s%s%s", minor, e->desc && e->desc[0] ? ": " : "",
           e->desc ? e->desc : "");
  return 0;
}

/* The innermost HDF5 error on this thread's stack, e.g. "truncated file: eof = 1024, ...". */
static void inspect_h5_error(char *out, size_t cap) {
  inspect_h5_why w = {""};
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, inspect_h5_walk, &w);
  H5Eclear2(H5E_DEFAULT);
  snprintf(out, cap, "%s", w.text[0] ? w.text : "no detail from HDF5");
}

/* ---- JSON helpers ---- */

/* HDF5 names and string attributes are arbitrary bytes; JSON output must be valid UTF-8, so
 * anything that is not is replaced by '?'. Returns a malloc'd copy of at most max bytes. */
static char *inspect_utf8_clean(const char *s, size_t len, size_t max) {
  if (len > max) len = max;
  char *out = malloc(len + 1);
  if (!out) return NULL;
  size_t i = 0, o = 0;
  const unsigned char *u = (const unsigned char *)s;
  while (i < len) {
    unsigned char c = u[i];
    size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    int ok = n > 0 && i + n <= len && c != 0;
    for (size_t k = 1; ok && k < n; k++) ok = (u[i + k] & 0xC0) == 0x80;
    if (ok) {
      memcpy(out + o, s + i, n);
      o += n;
      i += n;
    } else {
      out[o++] = '?';
      i++;
    }
  }
  out[o] = 0;
  return out;
}

static cJSON *inspect_json_string(const char *s, size_t len) {
  char *clean = inspect_utf8_clean(s, len, INSPECT_ATTR_STRING);
  cJSON *j = clean ? cJSON_CreateString(clean) : NULL;
  free(clean);
  return j;
}

static cJSON *inspect_json_dims(int rank, const hsize_t *dims) {
  cJSON *a = cJSON_CreateArray();
  for (int i = 0; a && i < rank; i++) cJSON_AddItemToArray(a, cJSON_CreateNumber((double)dims[i]));
  return a;
}

/* "uint8", "float32", "string", ...: the names the dashboard and the loader use. */
static void inspect_dtype_name(hid_t type, char *out, size_t cap) {
  H5T_class_t cls = H5Tget_class(type);
  size_t size = H5Tget_size(type);
  switch (cls) {
  case H5T_INTEGER:
    snprintf(out, cap, "%sint%zu", H5Tget_sign(type) == H5T_SGN_NONE ? "u" : "", size * 8);
    return;
  case H5T_FLOAT: snprintf(out, cap, "float%zu", size * 8); return;
  case H5T_STRING: snprintf(out, cap, "string"); return;
  case H5T_BITFIELD: snprintf(out, cap, "bitfield%zu", size * 8); return;
  case H5T_OPAQUE: snprintf(out, cap, "opaque"); return;
  case H5T_COMPOUND: snprintf(out, cap, "compound"); return;
  case H5T_REFERENCE: snprintf(out, cap, "reference"); return;
  case H5T_ENUM: snprintf(out, cap, "enum"); return;
  case H5T_VLEN: snprintf(out, cap, "vlen"); return;
  case H5T_ARRAY: snprintf(out, cap, "array"); return;
  case H5T_TIME: snprintf(out, cap, "time"); return;
  default: snprintf(out, cap, "unknown"); return;
  }
}

static int inspect_dtype_is_numeric(hid_t type) {
  H5T_class_t cls = H5Tget_class(type);
  return cls == H5T_INTEGER || cls == H5T_FLOAT;
}

/* ---- attributes ---- */

static cJSON *inspect_attr_strings(hid_t attr, hid_t type, hssize_t n) {
  cJSON *values = cJSON_CreateArray();
  if (!values) return NULL;
  if (H5Tis_variable_str(type) > 0) {
    hid_t mem = H5Tcopy(H5T_C_S1);
    H5Tset_size(mem, H5T_VARIABLE);
    H5Tset_cset(mem, H5Tget_cset(type));
    char **buf = calloc((size_t)n, sizeof *buf);
    hid_t space = H5Aget_space(attr);
    if (buf && H5Aread(attr, mem, buf) >= 0) {
      for (hssize_t i = 0; i < n; i++)
        cJSON_AddItemToArray(values, buf[i] ? inspect_json_string(buf[i], strlen(buf[i]))
                                            : cJSON_CreateNull());
      H5Dvlen_reclaim(mem, space, H5P_DEFAULT, buf);
    } else {
      cJSON_Delete(values);
      values = NULL;
    }
    free(buf);
    H5Sclose(space);
    H5Tclose(mem);
    return values;
  }
  size_t size = H5Tget_size(type);
  if (size == 0 || size > INSPECT_ATTR_STRING) {
    cJSON_Delete(values);
    return NULL;
  }
  hid_t mem = H5Tcopy(type);
  char *buf = malloc((size_t)n * size + 1);
  if (buf && H5Aread(attr, mem, buf) >= 0) {
    for (hssize_t i = 0; i < n; i++) {
      const char *s = buf + (size_t)i * size;
      cJSON_AddItemToArray(values, inspect_json_string(s, strnlen(s, size)));
    }
  } else {
    cJSON_Delete(values);
    values = NULL;
  }
  free(buf);
  H5Tclose(mem);
  return values;
}

static cJSON *inspect_attr_value(hid_t attr, size_t *budget) {
  hid_t type = H5Aget_type(attr), space = H5Aget_space(attr);
  cJSON *value = NULL;
  hssize_t n = H5Sget_simple_extent_npoints(space);
  int scalar = H5Sget_simple_extent_type(space) == H5S_SCALAR;
  char dtype[32];
  inspect_dtype_name(type, dtype, sizeof dtype);
  if (n >= 0 && n <= INSPECT_ATTR_ELEMS && n > 0 && *budget > 0) {
    cJSON *values = NULL;
    if (H5Tget_class(type) == H5T_STRING) {
      values = inspect_attr_strings(attr, type, n);
    } else if (inspect_dtype_is_numeric(type)) {
      double buf[INSPECT_ATTR_ELEMS];
      if (H5Aread(attr, H5T_NATIVE_DOUBLE, buf) >= 0) values = cJSON_CreateDoubleArray(buf, (int)n);
    }
    char *text = values ? cJSON_PrintUnformatted(values) : NULL;
    size_t used = text ? strlen(text) : 0;
    free(text);
    if (used > *budget) {
      cJSON_Delete(values);
      values = NULL;
      *budget = 0;
    } else {
      *budget -= used;
    }
    if (values && scalar && cJSON_GetArraySize(values) == 1) {
      value = cJSON_DetachItemFromArray(values, 0);
      cJSON_Delete(values);
    } else {
      value = values;
    }
  }
  if (!value) {
    /* Too large or of a type shown by description only: say what it is, not its bytes. */
    value = cJSON_CreateObject();
    cJSON_AddStringToObject(value, "dtype", dtype);
    cJSON_AddNumberToObject(value, "elements", (double)(n > 0 ? n : 0));
    H5Eclear2(H5E_DEFAULT);
  }
  H5Tclose(type);
  H5Sclose(space);
  return value;
}

typedef struct inspect_attrs {
  cJSON *obj;
  int count;
  size_t *budget; /* bytes of values still to show in this file */
} inspect_attrs;

static herr_t inspect_attr_visit(hid_t loc, const char *name, const H5A_info_t *info, void *user) {
  inspect_attrs *a = user;
  if (a->count++ >= INSPECT_MAX_ATTRS) {
    cJSON_AddBoolToObject(a->obj, "...", 1);
    return 1; /* stop: the rest is not listed */
  }
  hid_t attr = H5Aopen(loc, name, H5P_DEFAULT);
  if (attr < 0) return -1;
  char *key = inspect_utf8_clean(name, strlen(name), 256);
  cJSON *value = inspect_attr_value(attr, a->budget);
  H5Aclose(attr);
  if (!key || !value) {
    free(key);
    cJSON_Delete(value);
    return -1;
  }
  cJSON_AddItemToObject(a->obj, key, value);
  free(key);
  return 0;
}

static int inspect_attrs_read(hid_t obj, cJSON *into, const char *path, size_t *budget, char *err,
                              size_t cap) {
  inspect_attrs a = {cJSON_CreateObject(), 0, budget};
  if (!a.obj) return inspect_fail(err, cap, JOB_EXIT_FAILED, "out of memory");
  hsize_t idx = 0;
  if (H5Aiterate2(obj, H5_INDEX_NAME, H5_ITER_INC, &idx, inspect_attr_visit, &a) < 0) {
    char why[256];
    inspect_h5_error(why, sizeof why);
    cJSON_Delete(a.obj);
    return inspect_fail(err, cap, JOB_EXIT_BAD_INPUT,
                        "reading the attributes of %s failed (%s); the file is damaged", path, why);
  }
  cJSON_AddItemToObject(into, "attributes", a.obj);
  return 0;
}

/* ---- statistics ---- */

typedef struct inspect_stats {
  double min, max;
  long double sum;
  uint64_t count;   /* finite values */
  uint64_t nan, inf;
} inspect_stats;

static void inspect_stats_add(inspect_stats *s, const double *v, size_t n) {
  for (size_t i = 0; i < n; i++) {
    double x = v[i];
    if (isnan(x)) {
      s->nan++;
    } else if (isinf(x)) {
      s->inf++;
    } else {
      if (s->count == 0 || x < s->min) s->min = x;
      if (s->count == 0 || x > s->max) s->max = x;
      s->sum += x;
      s->count++;
    }
  }
}

/* How a dataset is cut into blocks: dims before `k` are fixed per block (count 1), dim k takes
 * `count_k` indices, dims after k are whole. Each block is at most `budget` elements. */
typedef struct inspect_blocks {
  int rank, k;
  hsize_t dims[INSPECT_MAX_RANK];
  hsize_t count_k, per_k; /* indices of dim k per block; blocks along dim k */
  uint64_t outer;         /* product of dims before k */
  uint64_t positions;     /* outer * per_k: number of blocks */
  uint64_t tail;          /* product of dims after k */
} inspect_blocks;

static int inspect_blocks_plan(inspect_blocks *b, int rank, const hsize_t *dims, uint64_t budget) {
  b->rank = rank;
  memcpy(b->dims, dims, (size_t)rank * sizeof *dims);
  uint64_t tail = 1;
  int k = rank - 1;
  /* the smallest k whose trailing product fits the budget */
  for (int d = rank - 1; d > 0; d--) {
    uint64_t t;
    if (__builtin_mul_overflow(tail, (uint64_t)dims[d], &t) || t > budget) break;
    tail = t;
    k = d - 1;
  }
  b->k = k;
  b->tail = tail;
  b->count_k = budget / tail;
  if (b->count_k < 1) b->count_k = 1;
  if (b->count_k > dims[k]) b->count_k = dims[k];
  b->per_k = (dims[k] + b->count_k - 1) / b->count_k;
  b->outer = 1;
  for (int d = 0; d < k; d++)
    if (__builtin_mul_overflow(b->outer, (uint64_t)dims[d], &b->outer)) return -1;
  if (__builtin_mul_overflow(b->outer, (uint64_t)b->per_k, &b->positions)) return -1;
  return 0;
}

/* The hyperslab of block `pos`; returns its element count. */
static uint64_t inspect_blocks_select(const inspect_blocks *b, uint64_t pos, hsize_t *start,
                                      hsize_t *count) {
  uint64_t o = pos / b->per_k, j = pos % b->per_k;
  for (int d = b->k - 1; d >= 0; d--) {
    start[d] = o % b->dims[d];
    count[d] = 1;
    o /= b->dims[d];
  }
  start[b->k] = j * b->count_k;
  count[b->k] = b->dims[b->k] - start[b->k] < b->count_k ? b->dims[b->k] - start[b->k] : b->count_k;
  for (int d = b->k + 1; d < b->rank; d++) {
    start[d] = 0;
    count[d] = b->dims[d];
  }
  return (uint64_t)count[b->k] * b->tail;
}

typedef struct inspect_run {
  const inspect_opts *opts;
  uint64_t total_elems; /* numeric elements the statistics will read, for progress */
  uint64_t done_elems;
} inspect_run;

static int inspect_stop_requested(const inspect_run *r) {
  return r->opts->should_stop && r->opts->should_stop(r->opts->user);
}

/* min/max/mean of one numeric dataset, read as doubles (HDF5 converts). */
static int inspect_dataset_stats(hid_t ds, const char *path, inspect_run *r, cJSON *into,
                                 char *err, size_t cap) {
  hid_t fspace = H5Dget_space(ds);
  int rank = H5Sget_simple_extent_ndims(fspace);
  hsize_t dims[INSPECT_MAX_RANK];
  hssize_t npoints = H5Sget_simple_extent_npoints(fspace);
  if (rank < 0 || rank > INSPECT_MAX_RANK || npoints < 0) {
    H5Sclose(fspace);
    return inspect_fail(err, cap, JOB_EXIT_BAD_INPUT, "%s has an unreadable dataspace", path);
  }
  if (npoints == 0) {
    H5Sclose(fspace);
    return 0;
  }
  if (rank == 0) { /* a scalar: one element */
    rank = 1;
    dims[0] = 1;
  } else {
    H5Sget_simple_extent_dims(fspace, dims, NULL);
  }
  int exact = r->opts->exact;
  uint64_t budget = exact ? INSPECT_EXACT_BLOCK : INSPECT_SAMPLE_ELEMS / INSPECT_SAMPLE_BLOCKS;
  if ((uint64_t)npoints <= INSPECT_SAMPLE_ELEMS && !exact) budget = (uint64_t)npoints;
  inspect_blocks b;
  if (inspect_blocks_plan(&b, rank, dims, budget)) {
    H5Sclose(fspace);
    return inspect_fail(err, cap, JOB_EXIT_BAD_INPUT, "%s: dataspace too large", path);
  }
  int scalar = H5Sget_simple_extent_type(fspace) == H5S_SCALAR;
  uint64_t blocks = exact ? b.positions
                          : (b.positions < INSPECT_SAMPLE_BLOCKS ? b.positions
                                                                 : INSPECT_SAMPLE_BLOCKS);
  double *buf = malloc((size_t)(b.count_k * b.tail) * sizeof *buf);
  if (!buf) {
    H5Sclose(fspace);
    return inspect_fail(err, cap, JOB_EXIT_FAILED, "out of memory reading %s", path);
  }
  inspect_stats s = {0};
  int rc = 0;
  uint64_t read_elems = 0;
  for (uint64_t i = 0; i < blocks && !rc; i++) {
    if (inspect_stop_requested(r)) {
      rc = inspect_fail(err, cap, JOB_EXIT_FAILED, "stopped while reading %s", path);
      break;
    }
    /* evenly spaced sample blocks; all of them, in order, when exact */
    uint64_t pos = exact ? i : (uint64_t)(((unsigned __int128)i * b.positions) / blocks);
    hsize_t start[INSPECT_MAX_RANK], count[INSPECT_MAX_RANK];
    uint64_t n = inspect_blocks_select(&b, pos, start, count);
    hsize_t mdims = n;
    hid_t mspace = H5Screate_simple(1, &mdims, NULL);
    herr_t st = scalar ? H5Dread(ds, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf)
                       : (H5Sselect_hyperslab(fspace, H5S_SELECT_SET, start, NULL, count, NULL) < 0
                              ? -1
                              : H5Dread(ds, H5T_NATIVE_DOUBLE, mspace, fspace, H5P_DEFAULT, buf));
    H5Sclose(mspace);
    if (st < 0) {
      char why[256];
      inspect_h5_error(why, sizeof why);
      rc = inspect_fail(err, cap, JOB_EXIT_BAD_INPUT,
                        "reading %s failed (%s); the file is damaged or uses a filter this build "
                        "lacks", path, why);
      break;
    }
    inspect_stats_add(&s, buf, (size_t)n);
    read_elems += n;
    r->done_elems += n;
    if (r->opts->progress && r->total_elems)
      r->opts->progress(r->opts->user, (double)r->done_elems / (double)r->total_elems, path);
  }
  free(buf);
  H5Sclose(fspace);
  if (rc) return rc;
  cJSON *st = cJSON_CreateObject();
  if (s.count) {
    cJSON_AddNumberToObject(st, "min", s.min);
    cJSON_AddNumberToObject(st, "max", s.max);
    cJSON_AddNumberToObject(st, "mean", (double)(s.sum / (long double)s.count));
  }
  cJSON_AddNumberToObject(st, "elements_read", (double)read_elems);
  cJSON_AddBoolToObject(st, "sampled", read_elems < (uint64_t)npoints);
  if (s.nan) cJSON_AddNumberToObject(st, "nan", (double)s.nan);
  if (s.inf) cJSON_AddNumberToObject(st, "inf", (double)s.inf);
  cJSON_AddItemToObject(into, "stats", st);
  return 0;
}

/* ---- the object walk ---- */

typedef struct inspect_walk {
  cJSON *objects;   /* array of summaries, in visit order */
  int groups, datasets, listed;
  int truncated;
  int rc;
  char *err;
  size_t errcap;
  uint64_t numeric_elems;
  int exact;
  size_t attr_budget;
} inspect_walk;

/* Adds layout, chunks, filters and compression. A chunk larger than a fixed maximum dimension
 * is something HDF5 never writes (H5Pset_chunk refuses it) but, when a damaged file claims it,
 * reads past its own buffers: such a file is refused (-1, why filled) before any data is read. */
static int inspect_dataset_layout(hid_t ds, int rank, const hsize_t *maxdims, cJSON *o, char *why,
                                  size_t cap) {
  hid_t dcpl = H5Dget_create_plist(ds);
  if (dcpl < 0) return 0;
  H5D_layout_t layout = H5Pget_layout(dcpl);
  static const char *const names[] = {"compact", "contiguous", "chunked", "virtual"};
  cJSON_AddStringToObject(o, "layout", layout >= 0 && layout <= 3 ? names[layout] : "unknown");
  if (layout == H5D_CHUNKED) {
    hsize_t chunk[INSPECT_MAX_RANK];
    int crank = H5Pget_chunk(dcpl, INSPECT_MAX_RANK, chunk);
    cJSON_AddItemToObject(o, "chunks", crank > 0 ? inspect_json_dims(crank, chunk) : cJSON_CreateNull());
    int bad = crank != rank;
    for (int d = 0; !bad && d < rank; d++)
      bad = chunk[d] == 0 || (maxdims[d] != H5S_UNLIMITED && chunk[d] > maxdims[d]);
    if (bad) {
      snprintf(why, cap, "its chunk shape does not fit its dataspace (a chunk dimension is 0 or larger "
               "than the fixed maximum, or the ranks differ: %d and %d)", crank, rank);
      H5Pclose(dcpl);
      return -1;
    }
  } else {
    cJSON_AddNullToObject(o, "chunks");
  }
  cJSON *filters = cJSON_CreateArray();
  const char *compression = "none";
  int nf = H5Pget_nfilters(dcpl);
  for (int i = 0; i < nf && i < 32; i++) {
    unsigned flags = 0, config = 0, cd[16];
    size_t ncd = 16;
    char name[128] = "";
    H5Z_filter_t id = H5Pget_filter2(dcpl, (unsigned)i, &flags, &ncd, cd, sizeof name, name, &config);
    cJSON *f = cJSON_CreateObject();
    cJSON_AddNumberToObject(f, "id", (double)id);
    char *clean = inspect_utf8_clean(name, strnlen(name, sizeof name), sizeof name);
    cJSON_AddStringToObject(f, "name", clean ? clean : "");
    free(clean);
    cJSON *params = cJSON_CreateArray();
    for (size_t p = 0; p < ncd && p < 16; p++) cJSON_AddItemToArray(params, cJSON_CreateNumber(cd[p]));
    cJSON_AddItemToObject(f, "params", params);
    cJSON_AddItemToArray(filters, f);
    /* shuffle and checksums are not compression; the first other filter is */
    if (!strcmp(compression, "none") && id != H5Z_FILTER_SHUFFLE && id != H5Z_FILTER_FLETCHER32)
      compression = id == H5Z_FILTER_DEFLATE ? "deflate" : id == H5Z_FILTER_SZIP ? "szip"
                    : id == H5Z_FILTER_NBIT ? "nbit" : id == H5Z_FILTER_SCALEOFFSET ? "scaleoffset"
                    : "other";
  }
  cJSON_AddItemToObject(o, "filters", filters);
  cJSON_AddStringToObject(o, "compression", compression);
  H5Pclose(dcpl);
  return 0;
}

/* Unfiltered data has a known size: contiguous storage is every element, each unfiltered chunk
 * is a full chunk. A damaged file that disagrees (a lost filter pipeline, a wrong size) would
 * make HDF5 read past its buffers, so it is refused. -1 with why filled. */
static int inspect_storage_check(hid_t ds, size_t elem_size, hssize_t npoints, char *why,
                                 size_t cap) {
  hid_t dcpl = H5Dget_create_plist(ds);
  if (dcpl < 0) return 0;
  H5D_layout_t layout = H5Pget_layout(dcpl);
  int nf = H5Pget_nfilters(dcpl);
  hsize_t chunk[INSPECT_MAX_RANK];
  int crank = layout == H5D_CHUNKED ? H5Pget_chunk(dcpl, INSPECT_MAX_RANK, chunk) : 0;
  H5Pclose(dcpl);
  hsize_t stored = H5Dget_storage_size(ds);
  uint64_t expect = 0;
  if (layout == H5D_CONTIGUOUS && stored != 0) {
    if (__builtin_mul_overflow((uint64_t)npoints, (uint64_t)elem_size, &expect)) expect = 0;
  } else if (layout == H5D_CHUNKED && nf == 0 && crank > 0) {
    hsize_t nchunks = 0;
    hid_t space = H5Dget_space(ds); /* HDF5 1.10 does not take H5S_ALL here */
    herr_t rc = space < 0 ? -1 : H5Dget_num_chunks(ds, space, &nchunks);
    if (space >= 0) H5Sclose(space);
    if (rc < 0) {
      H5Eclear2(H5E_DEFAULT);
      return 0;
    }
    expect = (uint64_t)elem_size * nchunks;
    for (int d = 0; d < crank; d++)
      if (__builtin_mul_overflow(expect, (uint64_t)chunk[d], &expect)) expect = 0;
  } else {
    return 0;
  }
  if ((uint64_t)stored == expect) return 0;
  snprintf(why, cap, "its unfiltered data takes %llu bytes in the file, but its shape needs %llu",
           (unsigned long long)stored, (unsigned long long)expect);
  return -1;
}

static int inspect_dataset_describe(hid_t ds, cJSON *o, inspect_walk *w, const char *path) {
  hid_t type = H5Dget_type(ds), space = H5Dget_space(ds);
  if (type < 0 || space < 0) {
    if (type >= 0) H5Tclose(type);
    if (space >= 0) H5Sclose(space);
    char why[256];
    inspect_h5_error(why, sizeof why);
    return inspect_fail(w->err, w->errcap, JOB_EXIT_BAD_INPUT,
                        "%s: cannot read its type or shape (%s); the file is damaged", path, why);
  }
  char dtype[32];
  inspect_dtype_name(type, dtype, sizeof dtype);
  cJSON_AddStringToObject(o, "dtype", dtype);
  /* a number wider than 16 bytes, or whose bits lie outside its bytes, is a damaged type
   * (HDF5 over-reads converting it) */
  if (inspect_dtype_is_numeric(type)) {
    size_t size = H5Tget_size(type), prec = H5Tget_precision(type);
    int off = H5Tget_offset(type);
    if (size == 0 || size > 16 || prec == 0 || off < 0 || prec + (size_t)off > size * 8) {
      H5Tclose(type);
      H5Sclose(space);
      return inspect_fail(w->err, w->errcap, JOB_EXIT_BAD_INPUT,
                          "%s: its number type is %zu bytes with %zu bits at offset %d; the file "
                          "is damaged", path, size, prec, off);
    }
  }
  int rank = H5Sget_simple_extent_ndims(space);
  hsize_t dims[INSPECT_MAX_RANK];
  if (rank > 0 && rank <= INSPECT_MAX_RANK) H5Sget_simple_extent_dims(space, dims, NULL);
  cJSON_AddItemToObject(o, "shape", inspect_json_dims(rank > 0 ? rank : 0, dims));
  hssize_t n = H5Sget_simple_extent_npoints(space);
  cJSON_AddNumberToObject(o, "elements", (double)(n > 0 ? n : 0));
  cJSON_AddNumberToObject(o, "storage_bytes", (double)H5Dget_storage_size(ds));
  hsize_t maxdims[INSPECT_MAX_RANK];
  if (rank > 0 && rank <= INSPECT_MAX_RANK) H5Sget_simple_extent_dims(space, NULL, maxdims);
  /* HDF5 never writes a current size above the maximum; a damaged one would make an exact
   * inspect read a dataspace that does not exist */
  for (int d = 0; d < rank && d < INSPECT_MAX_RANK; d++)
    if (maxdims[d] != H5S_UNLIMITED && dims[d] > maxdims[d]) {
      H5Tclose(type);
      H5Sclose(space);
      return inspect_fail(w->err, w->errcap, JOB_EXIT_BAD_INPUT,
                          "%s: dimension %d is %llu, above its maximum %llu; the file is damaged",
                          path, d, (unsigned long long)dims[d], (unsigned long long)maxdims[d]);
    }
  char why[256];
  if (inspect_dataset_layout(ds, rank > 0 ? rank : 0, maxdims, o, why, sizeof why) != 0) {
    H5Tclose(type);
    H5Sclose(space);
    return inspect_fail(w->err, w->errcap, JOB_EXIT_BAD_INPUT, "%s: %s; the file is damaged", path, why);
  }
  if (inspect_dtype_is_numeric(type) && inspect_storage_check(ds, H5Tget_size(type), n, why, sizeof why)) {
    H5Tclose(type);
    H5Sclose(space);
    return inspect_fail(w->err, w->errcap, JOB_EXIT_BAD_INPUT, "%s: %s; the file is damaged", path, why);
  }
  /* what the statistics pass will read, so that progress reaches 1 in both modes */
  if (inspect_dtype_is_numeric(type) && n > 0)
    w->numeric_elems += w->exact || n <= INSPECT_SAMPLE_ELEMS ? (uint64_t)n : INSPECT_SAMPLE_ELEMS;
  H5Tclose(type);
  H5Sclose(space);
  return 0;
}

static herr_t inspect_object_visit(hid_t root, const char *name, const H5O_info_t *info,
                                   void *user) {
  inspect_walk *w = user;
  if (w->listed >= INSPECT_MAX_OBJECTS) {
    w->truncated = 1;
    return 1;
  }
  char path[1024];
  char *clean = inspect_utf8_clean(name, strlen(name), 1000);
  if (!clean) {
    w->rc = inspect_fail(w->err, w->errcap, JOB_EXIT_FAILED, "out of memory");
    return -1;
  }
  snprintf(path, sizeof path, "/%s", strcmp(name, ".") ? clean : "");
  free(clean);
  if (info->type != H5O_TYPE_GROUP && info->type != H5O_TYPE_DATASET) return 0;
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "path", path);
  cJSON_AddStringToObject(o, "type", info->type == H5O_TYPE_GROUP ? "group" : "dataset");
  hid_t obj = H5Oopen(root, name, H5P_DEFAULT);
  int rc = 0;
  if (obj < 0) {
    char why[256];
    inspect_h5_error(why, sizeof why);
    rc = inspect_fail(w->err, w->errcap, JOB_EXIT_BAD_INPUT, "cannot open %s (%s); the file is damaged",
                      path, why);
  } else {
    if (info->type == H5O_TYPE_DATASET) {
      rc = inspect_dataset_describe(obj, o, w, path);
      w->datasets++;
    } else {
      w->groups++;
    }
    if (!rc) rc = inspect_attrs_read(obj, o, path, &w->attr_budget, w->err, w->errcap);
    H5Oclose(obj);
  }
  cJSON_AddItemToArray(w->objects, o);
  w->listed++;
  if (rc) {
    w->rc = rc;
    return -1;
  }
  return 0;
}

/* For the dataset layouts of DESIGN.md (/train, /test, /val with x + y, or jpeg + offsets + y):
 * per split, the sample count and which layout it uses, so the dashboard can say "50,000 train
 * images" without the reader knowing HDF5. */
static cJSON *inspect_splits(const cJSON *objects) {
  static const char *const splits[] = {"train", "val", "test"};
  cJSON *out = cJSON_CreateObject();
  for (int s = 0; s < 3; s++) {
    const cJSON *x = NULL, *y = NULL, *jpeg = NULL, *offsets = NULL, *o;
    char want[64];
    cJSON_ArrayForEach(o, objects) {
      const char *p = cJSON_GetStringValue(cJSON_GetObjectItem(o, "path"));
      if (!p) continue;
      snprintf(want, sizeof want, "/%s/x", splits[s]);
      if (!strcmp(p, want)) x = o;
      snprintf(want, sizeof want, "/%s/y", splits[s]);
      if (!strcmp(p, want)) y = o;
      snprintf(want, sizeof want, "/%s/jpeg", splits[s]);
      if (!strcmp(p, want)) jpeg = o;
      snprintf(want, sizeof want, "/%s/offsets", splits[s]);
      if (!strcmp(p, want)) offsets = o;
    }
    if (!y || !(x || (jpeg && offsets))) continue;
    const cJSON *yshape = cJSON_GetObjectItem(y, "shape");
    cJSON *split = cJSON_CreateObject();
    cJSON_AddNumberToObject(split, "samples",
                            cJSON_GetArraySize(yshape) > 0 ? cJSON_GetArrayItem(yshape, 0)->valuedouble : 0);
    cJSON_AddStringToObject(split, "layout", x ? "tensor" : "jpeg");
    if (x) cJSON_AddItemToObject(split, "x_shape", cJSON_Duplicate(cJSON_GetObjectItem(x, "shape"), 1));
    cJSON_AddItemToObject(out, splits[s], split);
  }
  return out;
}

static int inspect_stats_all(hid_t file, inspect_walk *w, inspect_run *r) {
  cJSON *o;
  cJSON_ArrayForEach(o, w->objects) {
    const char *type = cJSON_GetStringValue(cJSON_GetObjectItem(o, "type"));
    const char *dtype = cJSON_GetStringValue(cJSON_GetObjectItem(o, "dtype"));
    if (!type || strcmp(type, "dataset") || !dtype ||
        !(strncmp(dtype, "int", 3) == 0 || strncmp(dtype, "uint", 4) == 0 ||
          strncmp(dtype, "float", 5) == 0))
      continue;
    const char *path = cJSON_GetStringValue(cJSON_GetObjectItem(o, "path"));
    hid_t ds = H5Dopen2(file, path, H5P_DEFAULT);
    if (ds < 0) {
      char why[256];
      inspect_h5_error(why, sizeof why);
      return inspect_fail(w->err, w->errcap, JOB_EXIT_BAD_INPUT,
                          "cannot open %s (%s); the file is damaged", path, why);
    }
    int rc = inspect_dataset_stats(ds, path, r, o, w->err, w->errcap);
    H5Dclose(ds);
    if (rc) return rc;
  }
  return 0;
}

int inspect_hdf5_json(const char *path, const inspect_opts *opts, cJSON **out, char *err,
                      size_t errcap) {
  static const inspect_opts defaults = {0, NULL, NULL, NULL};
  if (!opts) opts = &defaults;
  *out = NULL;
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  struct stat st;
  if (stat(path, &st) != 0)
    return inspect_fail(err, errcap, JOB_EXIT_BAD_INPUT, "%s: %s", path, strerror(errno));
  hid_t file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
  if (file < 0) {
    char why[256];
    inspect_h5_error(why, sizeof why);
    return inspect_fail(err, errcap, JOB_EXIT_BAD_INPUT,
                        "%s is not a readable HDF5 file (%s); it may be truncated or damaged: "
                        "upload it again", path, why);
  }
  inspect_walk w = {cJSON_CreateArray(), 0, 0, 0, 0, 0, err, errcap, 0, opts->exact,
                    INSPECT_ATTR_BUDGET};
  herr_t vrc = H5Ovisit2(file, H5_INDEX_NAME, H5_ITER_INC, inspect_object_visit, &w, H5O_INFO_BASIC);
  if (vrc < 0 && !w.rc) {
    char why[256];
    inspect_h5_error(why, sizeof why);
    w.rc = inspect_fail(err, errcap, JOB_EXIT_BAD_INPUT,
                        "%s: walking its groups failed (%s); the file is damaged", path, why);
  }
  inspect_run r = {opts, w.numeric_elems, 0};
  if (!w.rc) w.rc = inspect_stats_all(file, &w, &r);
  H5Fclose(file);
  if (w.rc) {
    cJSON_Delete(w.objects);
    return w.rc;
  }
  cJSON *s = cJSON_CreateObject();
  const char *base = strrchr(path, '/');
  char *name = inspect_utf8_clean(base ? base + 1 : path, strlen(base ? base + 1 : path), 255);
  cJSON_AddStringToObject(s, "format", "hdf5");
  cJSON_AddStringToObject(s, "file", name ? name : "");
  free(name);
  cJSON_AddNumberToObject(s, "size_bytes", (double)st.st_size);
  cJSON_AddNumberToObject(s, "groups", w.groups);
  cJSON_AddNumberToObject(s, "datasets", w.datasets);
  cJSON_AddBoolToObject(s, "exact", opts->exact != 0);
  if (w.truncated) cJSON_AddBoolToObject(s, "objects_truncated", 1);
  cJSON_AddItemToObject(s, "splits", inspect_splits(w.objects));
  cJSON_AddItemToObject(s, "objects", w.objects);
  *out = s;
  return 0;
}

/* ---- the crash guard ---- */

static char inspect_guard_text[1536];     /* written by the handler: async-signal-safe */
static size_t inspect_guard_text_len;
static char inspect_guard_event[1536];
static size_t inspect_guard_event_len;

static void inspect_guard_on_crash(int sig) {
  if (inspect_guard_event_len && write(1, inspect_guard_event, inspect_guard_event_len) < 0) _exit(JOB_EXIT_BAD_INPUT);
  if (write(2, inspect_guard_text, inspect_guard_text_len) < 0) _exit(JOB_EXIT_BAD_INPUT);
  _exit(JOB_EXIT_BAD_INPUT);
}

void inspect_crash_guard(const char *path, int json_event) {
  static char alt_stack[1 << 16]; /* a crash from deep recursion has no stack left of its own */
  char *clean = inspect_utf8_clean(path, strlen(path), 512);
  const char *shown = clean ? clean : "the file";
  char msg[1024];
  snprintf(msg, sizeof msg,
           "%s is damaged: reading it crashed the file reader (HDF5 1.10 itself crashes on some "
           "damaged files), so it is refused; check the file (h5dump for HDF5) or write it again",
           shown);
  inspect_guard_text_len = (size_t)snprintf(inspect_guard_text, sizeof inspect_guard_text,
                                            "lathe: %s\n", msg);
  inspect_guard_event_len = 0;
  if (json_event) {
    cJSON *e = cJSON_CreateObject();
    cJSON_AddStringToObject(e, "type", "error");
    cJSON_AddStringToObject(e, "message", msg);
    cJSON_AddBoolToObject(e, "retryable", 0);
    char *line = cJSON_PrintUnformatted(e);
    if (line && strlen(line) + 2 < sizeof inspect_guard_event)
      inspect_guard_event_len = (size_t)snprintf(inspect_guard_event, sizeof inspect_guard_event, "%s\n", line);
    free(line);
    cJSON_Delete(e);
  }
  free(clean);
  stack_t ss = {.ss_sp = alt_stack, .ss_size = sizeof alt_stack, .ss_flags = 0};
  sigaltstack(&ss, NULL);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = inspect_guard_on_crash;
  sa.sa_flags = SA_ONSTACK | SA_RESETHAND;
  sigemptyset(&sa.sa_mask);
  static const int sigs[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL};
  for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) sigaction(sigs[i], &sa, NULL);
}

/* ---- format dispatch ---- */

/* HDF5's superblock signature sits at offset 0, 512, 1024, 2048, ... (after a user block). */
static int inspect_probe_hdf5(int fd, off_t size) {
  static const unsigned char sig[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
  for (off_t at = 0; at + 8 <= size; at = at ? at * 2 : 512) {
    unsigned char buf[8];
    if (pread(fd, buf, 8, at) != 8) return 0;
    if (!memcmp(buf, sig, 8)) return 1;
  }
  return 0;
}

/* One entry per format. A format with a probe is chosen by it; entries without one are tried in
 * order on whatever no probe claimed, and refuse what they cannot parse. */
typedef struct inspect_format {
  const char *name;
  int (*probe)(int fd, off_t size);
  int (*inspect)(const char *path, const inspect_opts *opts, cJSON **out, char *err, size_t cap);
  int (*inspect_plain)(const char *path, cJSON **out, char *err, size_t cap); /* no options */
} inspect_format;

/* ONNX has no signature (a protobuf message): a file no probe claims is tried as ONNX, whose
 * reader refuses what it cannot parse. */
static const inspect_format inspect_formats[] = {
    {"HDF5", inspect_probe_hdf5, inspect_hdf5_json, NULL},
    {"ONNX model", NULL, NULL, inspect_onnx_json},
};

int inspect_file_json(const char *path, const inspect_opts *opts, cJSON **out, char *err,
                      size_t errcap) {
  *out = NULL;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return inspect_fail(err, errcap, JOB_EXIT_BAD_INPUT, "cannot open %s: %s", path, strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return inspect_fail(err, errcap, JOB_EXIT_BAD_INPUT, "%s is not a regular file", path);
  }
  const size_t n = sizeof inspect_formats / sizeof inspect_formats[0];
  for (size_t i = 0; i < n; i++) {
    if (inspect_formats[i].probe && inspect_formats[i].probe(fd, st.st_size)) {
      close(fd);
      return inspect_formats[i].inspect(path, opts, out, err, errcap);
    }
  }
  close(fd);
  char tried[256] = "", last[1024] = "";
  for (size_t i = 0; i < n; i++) {
    if (inspect_formats[i].probe) {
      size_t len = strlen(tried);
      snprintf(tried + len, sizeof tried - len, "%s%s", len ? " or " : "", inspect_formats[i].name);
      continue;
    }
    int rc = inspect_formats[i].inspect ? inspect_formats[i].inspect(path, opts, out, err, errcap)
                                        : inspect_formats[i].inspect_plain(path, out, err, errcap);
    if (rc == 0) return 0;
    snprintf(last, sizeof last, "; as %s: %.900s", inspect_formats[i].name, err);
  }
  return inspect_fail(err, errcap, JOB_EXIT_BAD_INPUT,
                      "%s is not an %s file (no signature found)%s", path, tried, last);
}
