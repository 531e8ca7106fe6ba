/* HDF5 datasets: reading one split into memory with every field checked, and writing plain
 * x/y splits. The file is hostile until proven otherwise: HDF5's own error printing is silenced
 * and every failure becomes an lt_err naming the dataset path and the fix. */
#include "lathe/data.h"
#include "io/dataset_file.h"

#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Largest accepted per-sample extents: well beyond any image model, small enough that products
 * of them cannot overflow int64. */
#define DS_MAX_HW 65536
#define DS_MAX_N ((int64_t)1 << 40)

/* HDF5 prints its error stack to stderr by default; Lathe reports through lt_err instead. */
static void ds_h5_quiet(void) { H5Eset_auto2(H5E_DEFAULT, NULL, NULL); }

/* Closes an HDF5 id of any kind if it is valid. */
static void ds_h5_close(hid_t id) {
  if (id < 0) return;
  switch (H5Iget_type(id)) {
  case H5I_FILE: H5Fclose(id); break;
  case H5I_GROUP: H5Gclose(id); break;
  case H5I_DATASET: H5Dclose(id); break;
  case H5I_DATASPACE: H5Sclose(id); break;
  case H5I_DATATYPE: H5Tclose(id); break;
  default: break;
  }
}

/* What a dataset inside the file looks like, read without touching its data. */
typedef struct ds_info {
  hid_t id;       /* open dataset, closed by the caller */
  int ndim;
  int64_t dims[LT_MAX_DIMS];
  H5T_class_t cls;
  size_t size;    /* element bytes */
  H5T_sign_t sign;
} ds_info;

static int ds_exists(hid_t loc, const char *name) { return H5Lexists(loc, name, H5P_DEFAULT) > 0; }

/* Opens loc/name and fills info; what = "/train/x" for messages. */
static lt_status ds_open(hid_t loc, const char *name, const char *what, ds_info *info,
                         lt_err *err) {
  memset(info, 0, sizeof *info);
  info->id = -1;
  if (!ds_exists(loc, name))
    return lt_errorf(err, LT_ERR_INVALID, "dataset %s is missing", what);
  info->id = H5Dopen2(loc, name, H5P_DEFAULT);
  if (info->id < 0)
    return lt_errorf(err, LT_ERR_FORMAT, "%s is not a readable dataset (a group, or damaged)", what);
  hid_t space = H5Dget_space(info->id), type = H5Dget_type(info->id);
  lt_status st = LT_OK;
  int nd = space >= 0 ? H5Sget_simple_extent_ndims(space) : -1;
  if (space < 0 || type < 0 || nd < 0) {
    st = lt_errorf(err, LT_ERR_FORMAT, "%s has an unreadable shape or type", what);
  } else if (nd > LT_MAX_DIMS) {
    st = lt_errorf(err, LT_ERR_INVALID, "%s has %d dims; at most %d are supported", what, nd,
                   LT_MAX_DIMS);
  } else {
    hsize_t d[LT_MAX_DIMS];
    H5Sget_simple_extent_dims(space, d, NULL);
    info->ndim = nd;
    for (int i = 0; i < nd; i++) info->dims[i] = (int64_t)d[i];
    info->cls = H5Tget_class(type);
    info->size = H5Tget_size(type);
    info->sign = info->cls == H5T_INTEGER ? H5Tget_sign(type) : H5T_SGN_ERROR;
  }
  ds_h5_close(space);
  ds_h5_close(type);
  return st;
}

static const char *ds_type_str(const ds_info *in, char *buf, size_t cap) {
  if (in->cls == H5T_INTEGER)
    snprintf(buf, cap, "%s%zu", in->sign == H5T_SGN_NONE ? "uint" : "int", in->size * 8);
  else if (in->cls == H5T_FLOAT)
    snprintf(buf, cap, "float%zu", in->size * 8);
  else
    snprintf(buf, cap, "a non-numeric type");
  return buf;
}

/* Reads the whole dataset converted to mem_type into buf (bytes long, already sized). */
static lt_status ds_read_all(const ds_info *in, hid_t mem_type, void *buf, const char *what,
                             lt_err *err) {
  if (H5Dread(in->id, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0)
    return lt_errorf(err, LT_ERR_FORMAT,
                     "reading %s failed: the file is truncated or damaged; upload it again or "
                     "re-create it with lathe data convert",
                     what);
  return LT_OK;
}

/* Product of dims times elem, with overflow and sanity checks. */
static lt_status ds_bytes(int ndim, const int64_t *dims, size_t elem, size_t *out,
                          const char *what, lt_err *err) {
  size_t total = elem;
  for (int i = 0; i < ndim; i++) {
    if (dims[i] < 0 || __builtin_mul_overflow(total, (size_t)dims[i], &total))
      return lt_errorf(err, LT_ERR_INVALID, "%s is too large to hold in memory", what);
  }
  *out = total;
  return LT_OK;
}

static lt_status ds_read_labels_or_targets(hid_t grp, const char *split, lt_dataset *ds,
                                           const lt_dataset_opts *o, lt_err *err) {
  char what[96], tbuf[32];
  snprintf(what, sizeof what, "/%s/y", split);
  ds_info y;
  lt_status st = ds_open(grp, "y", what, &y, err);
  if (st) goto done;
  if (y.ndim < 1 || y.dims[0] != ds->n) {
    st = lt_errorf(err, LT_ERR_INVALID,
                   "%s has %lld entries but x has %lld samples; y needs one label or target per "
                   "sample",
                   what, (long long)(y.ndim ? y.dims[0] : 0), (long long)ds->n);
    goto done;
  }
  if (y.cls == H5T_INTEGER) {
    if (y.ndim != 1) {
      st = lt_errorf(err, LT_ERR_INVALID,
                     "%s is integer with %d dims; class labels must be 1-D (N), targets float32",
                     what, y.ndim);
      goto done;
    }
    size_t n = (size_t)ds->n;
    int64_t *tmp = lt_alloc(LT_MEM_OTHER, n * sizeof *tmp, err);
    ds->labels = lt_alloc(LT_MEM_DATA, n * sizeof *ds->labels, err);
    if (!tmp || !ds->labels) {
      lt_free(LT_MEM_OTHER, tmp, n * sizeof *tmp);
      st = LT_ERR_NOMEM;
      goto done;
    }
    st = ds_read_all(&y, H5T_NATIVE_INT64, tmp, what, err);
    int64_t maxv = -1;
    for (size_t i = 0; st == LT_OK && i < n; i++) {
      int64_t v = tmp[i];
      if (v < 0 || (o->num_classes > 0 && v >= o->num_classes) || v > INT32_MAX - 1) {
        st = o->num_classes > 0
                 ? lt_errorf(err, LT_ERR_INVALID,
                             "%s[%zu] = %lld is out of range: the model has %d classes, so "
                             "labels must lie in [0, %d)",
                             what, i, (long long)v, o->num_classes, o->num_classes)
                 : lt_errorf(err, LT_ERR_INVALID,
                             "%s[%zu] = %lld is out of range: labels must be class indices >= 0",
                             what, i, (long long)v);
        break;
      }
      ds->labels[i] = (int32_t)v;
      if (v > maxv) maxv = v;
    }
    lt_free(LT_MEM_OTHER, tmp, n * sizeof *tmp);
    ds->num_classes = o->num_classes > 0 ? o->num_classes : (int)(maxv + 1);
  } else if (y.cls == H5T_FLOAT) {
    if (y.size != 4) {
      st = lt_errorf(err, LT_ERR_INVALID, "%s is %s; store target tensors as float32", what,
                     ds_type_str(&y, tbuf, sizeof tbuf));
      goto done;
    }
    size_t bytes = 0;
    if ((st = ds_bytes(y.ndim, y.dims, sizeof(float), &bytes, what, err))) goto done;
    ds->target_ndim = y.ndim - 1;
    ds->target_numel = 1;
    for (int i = 1; i < y.ndim; i++) {
      ds->target_shape[i - 1] = y.dims[i];
      ds->target_numel *= y.dims[i];
    }
    ds->targets = lt_alloc(LT_MEM_DATA, bytes ? bytes : 1, err);
    if (!ds->targets) {
      st = LT_ERR_NOMEM;
      goto done;
    }
    if ((st = ds_read_all(&y, H5T_NATIVE_FLOAT, ds->targets, what, err))) goto done;
    size_t count = bytes / sizeof(float);
    for (size_t i = 0; i < count; i++) {
      if (!isfinite(ds->targets[i])) {
        st = lt_errorf(err, LT_ERR_INVALID,
                       "%s holds a non-finite value (%g) at flat index %zu; clean the targets "
                       "before training",
                       what, (double)ds->targets[i], i);
        break;
      }
    }
  } else {
    st = lt_errorf(err, LT_ERR_INVALID,
                   "%s is %s; expected integer class labels (N) or float32 targets (N, ...)", what,
                   ds_type_str(&y, tbuf, sizeof tbuf));
  }
done:
  ds_h5_close(y.id);
  return st;
}

static lt_status ds_read_dense_x(hid_t grp, const char *split, lt_dataset *ds, lt_err *err) {
  char what[96], tbuf[32];
  snprintf(what, sizeof what, "/%s/x", split);
  ds_info x;
  lt_status st = ds_open(grp, "x", what, &x, err);
  if (st) goto done;
  if (x.ndim != 4) {
    st = lt_errorf(err, LT_ERR_INVALID,
                   "dataset %s has %d dims, expected 4 (N,C,H,W); convert with lathe data "
                   "convert",
                   what, x.ndim);
    goto done;
  }
  if (x.cls == H5T_INTEGER && x.size == 1 && x.sign == H5T_SGN_NONE) {
    ds->x_dtype = LT_U8;
  } else if (x.cls == H5T_FLOAT && x.size == 4) {
    ds->x_dtype = LT_F32;
  } else {
    st = lt_errorf(err, LT_ERR_INVALID,
                   "dataset %s is %s; expected uint8 pixels or float32 values", what,
                   ds_type_str(&x, tbuf, sizeof tbuf));
    goto done;
  }
  if (x.dims[0] < 1 || x.dims[0] > DS_MAX_N || x.dims[1] < 1 || x.dims[1] > LT_DATA_MAX_CH ||
      x.dims[2] < 1 || x.dims[2] > DS_MAX_HW || x.dims[3] < 1 || x.dims[3] > DS_MAX_HW) {
    char sbuf[96];
    st = lt_errorf(err, LT_ERR_INVALID,
                   "dataset %s has shape %s; expected N >= 1, 1 <= C <= %d channels and "
                   "1 <= H, W <= %d",
                   what, lt_shape_str(4, x.dims, sbuf, sizeof sbuf), LT_DATA_MAX_CH, DS_MAX_HW);
    goto done;
  }
  ds->n = x.dims[0];
  ds->c = (int)x.dims[1];
  ds->h = (int)x.dims[2];
  ds->w = (int)x.dims[3];
  size_t bytes = 0;
  if ((st = ds_bytes(4, x.dims, lt_dtype_size(ds->x_dtype), &bytes, what, err))) goto done;
  ds->x = lt_alloc(LT_MEM_DATA, bytes, err);
  if (!ds->x) {
    st = LT_ERR_NOMEM;
    goto done;
  }
  st = ds_read_all(&x, ds->x_dtype == LT_U8 ? H5T_NATIVE_UINT8 : H5T_NATIVE_FLOAT, ds->x, what,
                   err);
  if (st == LT_OK && ds->x_dtype == LT_F32) {
    const float *v = ds->x;
    size_t count = bytes / sizeof(float);
    for (size_t i = 0; i < count; i++) {
      if (!isfinite(v[i])) {
        int64_t per = (int64_t)ds->c * ds->h * ds->w;
        st = lt_errorf(err, LT_ERR_INVALID,
                       "dataset %s holds %s in sample %lld (flat index %zu); remove or repair "
                       "that sample",
                       what, isnan(v[i]) ? "NaN" : "Inf", (long long)((int64_t)i / per), i);
        break;
      }
    }
  }
done:
  ds_h5_close(x.id);
  return st;
}

/* The jpeg + offsets layout: offsets (N+1) must be non-decreasing, start at 0 and end within the
 * byte array; y fixes N. Every image must decode to the size of the first. */
static lt_status ds_read_jpeg_x(hid_t grp, const char *split, lt_dataset *ds,
                                const lt_dataset_opts *o, lt_err *err) {
  char what_j[96], what_o[96], what_y[96], tbuf[32];
  snprintf(what_j, sizeof what_j, "/%s/jpeg", split);
  snprintf(what_o, sizeof what_o, "/%s/offsets", split);
  snprintf(what_y, sizeof what_y, "/%s/y", split);
  ds_info j = {.id = -1}, off = {.id = -1}, y = {.id = -1};
  uint8_t *bytes = NULL;
  uint64_t *offs = NULL;
  size_t nbytes = 0, noffs = 0;
  lt_status st;
  if ((st = ds_open(grp, "jpeg", what_j, &j, err)) || (st = ds_open(grp, "offsets", what_o, &off, err)) ||
      (st = ds_open(grp, "y", what_y, &y, err)))
    goto done;
  if (j.ndim != 1 || j.cls != H5T_INTEGER || j.size != 1) {
    st = lt_errorf(err, LT_ERR_INVALID, "%s must be a 1-D uint8 byte array, got %d dims of %s",
                   what_j, j.ndim, ds_type_str(&j, tbuf, sizeof tbuf));
    goto done;
  }
  if (off.ndim != 1 || off.cls != H5T_INTEGER) {
    st = lt_errorf(err, LT_ERR_INVALID, "%s must be 1-D integers (N+1), got %d dims of %s",
                   what_o, off.ndim, ds_type_str(&off, tbuf, sizeof tbuf));
    goto done;
  }
  if (y.ndim < 1 || y.dims[0] < 1 || y.dims[0] > DS_MAX_N || off.dims[0] != y.dims[0] + 1) {
    st = lt_errorf(err, LT_ERR_INVALID,
                   "%s has %lld entries but %s has %lld; offsets needs N+1 entries for N images",
                   what_o, (long long)off.dims[0], what_y, (long long)(y.ndim ? y.dims[0] : 0));
    goto done;
  }
  ds->n = y.dims[0];
  nbytes = (size_t)j.dims[0];
  noffs = (size_t)off.dims[0];
  bytes = lt_alloc(LT_MEM_DATA, nbytes ? nbytes : 1, err);
  offs = lt_alloc(LT_MEM_DATA, noffs * sizeof *offs, err);
  if (!bytes || !offs) {
    st = LT_ERR_NOMEM;
    goto done;
  }
  if ((st = ds_read_all(&j, H5T_NATIVE_UINT8, bytes, what_j, err)) ||
      (st = ds_read_all(&off, H5T_NATIVE_UINT64, offs, what_o, err)))
    goto done;
  if (offs[0] != 0 || offs[noffs - 1] > nbytes) {
    st = lt_errorf(err, LT_ERR_INVALID,
                   "%s must start at 0 and end within the %zu bytes of %s (starts at %llu, ends "
                   "at %llu)",
                   what_o, nbytes, what_j, (unsigned long long)offs[0],
                   (unsigned long long)offs[noffs - 1]);
    goto done;
  }
  for (size_t i = 0; i + 1 < noffs; i++) {
    if (offs[i + 1] <= offs[i]) {
      st = lt_errorf(err, LT_ERR_INVALID,
                     "%s is not increasing at entry %zu (%llu then %llu): image %zu would be "
                     "empty or negative",
                     what_o, i, (unsigned long long)offs[i], (unsigned long long)offs[i + 1], i);
      goto done;
    }
  }
  int h, w, c;
  if ((st = lt_jpeg_header(bytes, (size_t)(offs[1] - offs[0]), &h, &w, &c, err))) {
    lt_err_prefix(err, "%s image 0", what_j);
    goto done;
  }
  ds->c = c;
  ds->h = h;
  ds->w = w;
  ds->x_dtype = LT_U8;
  ds->from_jpeg = 1;
  size_t xbytes = 0;
  int64_t xdims[4] = {ds->n, c, h, w};
  if ((st = ds_bytes(4, xdims, 1, &xbytes, what_j, err))) goto done;
  ds->x = lt_alloc(LT_MEM_DATA, xbytes, err);
  if (!ds->x) {
    st = LT_ERR_NOMEM;
    goto done;
  }
  st = lt_jpeg_decode_batch(bytes, nbytes, offs, ds->n, c, h, w, o->threads, ds->x, err);
  if (st) lt_err_prefix(err, "%s", what_j);
done:
  lt_free(LT_MEM_DATA, bytes, nbytes ? nbytes : 1);
  lt_free(LT_MEM_DATA, offs, noffs * sizeof *offs);
  ds_h5_close(j.id);
  ds_h5_close(off.id);
  ds_h5_close(y.id);
  return st;
}

/* Collects the names of top-level groups, comma-separated, for messages and listings. */
typedef struct ds_names {
  char *p, *end;
  int any;
} ds_names;

static herr_t ds_list_cb(hid_t loc, const char *name, const H5L_info_t *info, void *user) {
  ds_names *nm = user;
  H5O_info_t oi;
  if (H5Oget_info_by_name(loc, name, &oi, H5P_DEFAULT) < 0 || oi.type != H5O_TYPE_GROUP) return 0;
  size_t room = (size_t)(nm->end - nm->p);
  int n = snprintf(nm->p, room, "%s%s", nm->any ? "," : "", name);
  if (n > 0 && (size_t)n < room) {
    nm->p += n;
    nm->any = 1;
  }
  return 0;
}

static void ds_list_groups(hid_t f, char *buf, size_t cap) {
  ds_names nm = {buf, buf + cap, 0};
  buf[0] = '\0';
  hsize_t idx = 0;
  H5Literate(f, H5_INDEX_NAME, H5_ITER_INC, &idx, ds_list_cb, &nm);
}

/* Opens a file for reading with a clear message for a missing, non-HDF5 or damaged file. */
static hid_t ds_file_open(const char *path, lt_err *err) {
  ds_h5_quiet();
  struct stat sb;
  if (stat(path, &sb) != 0) {
    /* A path that names nothing is the caller's mistake, not a failing disk. */
    lt_errorf(err, LT_ERR_INVALID,
              "dataset file %s does not exist; check the path (lathe data convert writes one)",
              path);
    return -1;
  }
  if (!S_ISREG(sb.st_mode)) {
    lt_errorf(err, LT_ERR_INVALID, "dataset path %s is not a regular file", path);
    return -1;
  }
  if (H5Fis_hdf5(path) <= 0) {
    lt_errorf(err, LT_ERR_FORMAT,
              "%s is not an HDF5 file; datasets are HDF5 with /train and /test groups "
              "(convert IDX or JPEG data with lathe data convert)",
              path);
    return -1;
  }
  hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
  if (f < 0)
    lt_errorf(err, LT_ERR_FORMAT,
              "%s could not be opened as HDF5: the file is truncated or damaged; upload it "
              "again",
              path);
  return f;
}

lt_status lt_dataset_list_splits(const char *path, char *buf, size_t cap, lt_err *err) {
  if (cap == 0) return lt_errorf(err, LT_ERR_INVALID, "no room for split names");
  hid_t f = ds_file_open(path, err);
  if (f < 0) return err ? err->status : LT_ERR_IO;
  ds_list_groups(f, buf, cap);
  H5Fclose(f);
  return LT_OK;
}

lt_dataset *lt_dataset_load(const char *path, const char *split, const lt_dataset_opts *opts,
                            lt_err *err) {
  lt_dataset_opts o = opts ? *opts : (lt_dataset_opts){0};
  if (!split || !*split || strlen(split) >= sizeof((lt_dataset *)0)->split || strchr(split, '/')) {
    lt_errorf(err, LT_ERR_INVALID, "split name \"%s\" is invalid; use train, test or val",
              split ? split : "");
    return NULL;
  }
  hid_t f = ds_file_open(path, err);
  if (f < 0) return NULL;
  hid_t grp = -1;
  lt_dataset *ds = lt_calloc(LT_MEM_OTHER, sizeof *ds, err);
  lt_status st = ds ? LT_OK : LT_ERR_NOMEM;
  if (st) goto done;
  snprintf(ds->split, sizeof ds->split, "%s", split);
  if (!ds_exists(f, split) || (grp = H5Gopen2(f, split, H5P_DEFAULT)) < 0) {
    char names[256];
    ds_list_groups(f, names, sizeof names);
    st = lt_errorf(err, LT_ERR_INVALID, "%s has no split /%s (groups present: %s); pick one of "
                   "those or convert the data with lathe data convert",
                   path, split, names[0] ? names : "none");
    goto done;
  }
  if (ds_exists(grp, "x")) {
    if ((st = ds_read_dense_x(grp, split, ds, err))) goto done;
  } else if (ds_exists(grp, "jpeg")) {
    if ((st = ds_read_jpeg_x(grp, split, ds, &o, err))) goto done;
  } else {
    st = lt_errorf(err, LT_ERR_INVALID,
                   "split /%s of %s has neither x (N,C,H,W) nor jpeg + offsets; convert the data "
                   "with lathe data convert",
                   split, path);
    goto done;
  }
  st = ds_read_labels_or_targets(grp, split, ds, &o, err);
done:
  ds_h5_close(grp);
  H5Fclose(f);
  if (st) {
    if (err && !strstr(err->msg, path)) lt_err_prefix(err, "%s", path);
    lt_dataset_free(ds);
    return NULL;
  }
  return ds;
}

size_t lt_dataset_sample_bytes(const lt_dataset *ds) {
  return (size_t)ds->c * (size_t)ds->h * (size_t)ds->w * lt_dtype_size(ds->x_dtype);
}

void lt_dataset_free(lt_dataset *ds) {
  if (!ds) return;
  if (ds->x) lt_free(LT_MEM_DATA, ds->x, (size_t)ds->n * lt_dataset_sample_bytes(ds));
  if (ds->labels) lt_free(LT_MEM_DATA, ds->labels, (size_t)ds->n * sizeof *ds->labels);
  if (ds->targets) {
    size_t bytes = (size_t)ds->n * (size_t)ds->target_numel * sizeof(float);
    lt_free(LT_MEM_DATA, ds->targets, bytes ? bytes : 1);
  }
  lt_free(LT_MEM_OTHER, ds, sizeof *ds);
}

/* ---- writing ------------------------------------------------------------------------------ */

static lt_status ds_write(hid_t loc, const char *name, hid_t file_type, hid_t mem_type, int ndim,
                          const int64_t *dims, const void *data, lt_err *err) {
  hsize_t d[LT_MAX_DIMS];
  for (int i = 0; i < ndim; i++) d[i] = (hsize_t)dims[i];
  hid_t space = H5Screate_simple(ndim, d, NULL);
  hid_t dset = space >= 0 ? H5Dcreate2(loc, name, file_type, space, H5P_DEFAULT, H5P_DEFAULT,
                                       H5P_DEFAULT)
                          : -1;
  herr_t rc = dset >= 0 ? H5Dwrite(dset, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) : -1;
  ds_h5_close(dset);
  ds_h5_close(space);
  if (rc < 0)
    return lt_errorf(err, LT_ERR_IO, "writing dataset %s failed; check free disk space", name);
  return LT_OK;
}

static lt_status ds_write_split(hid_t f, const lt_dataset *ds, lt_err *err) {
  hid_t g = H5Gcreate2(f, ds->split, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  if (g < 0) return lt_errorf(err, LT_ERR_IO, "cannot create group /%s", ds->split);
  int64_t xd[4] = {ds->n, ds->c, ds->h, ds->w};
  lt_status st = ds->x_dtype == LT_U8
                     ? ds_write(g, "x", H5T_STD_U8LE, H5T_NATIVE_UINT8, 4, xd, ds->x, err)
                     : ds_write(g, "x", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 4, xd, ds->x, err);
  if (st == LT_OK && ds->labels) {
    /* Labels that fit a byte are stored as bytes, as the sources (IDX, CIFAR) store them. */
    hid_t ft = ds->num_classes <= 256 ? H5T_STD_U8LE : H5T_STD_I32LE;
    st = ds_write(g, "y", ft, H5T_NATIVE_INT32, 1, &ds->n, ds->labels, err);
  } else if (st == LT_OK && ds->targets) {
    int64_t yd[LT_MAX_DIMS] = {ds->n};
    for (int i = 0; i < ds->target_ndim; i++) yd[i + 1] = ds->target_shape[i];
    st = ds_write(g, "y", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, ds->target_ndim + 1, yd, ds->targets,
                  err);
  }
  H5Gclose(g);
  return st;
}

lt_status lt_dataset_save(const char *path, lt_dataset *const *splits, int n_splits, lt_err *err) {
  ds_h5_quiet();
  char tmp[4096];
  if (lt_file_temp_name(path, tmp, sizeof tmp) != 0)
    return lt_errorf(err, LT_ERR_INVALID, "output path is too long: %s", path);
  hid_t f = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  if (f < 0)
    return lt_errorf(err, LT_ERR_IO, "cannot create %s; check that the folder exists and is "
                     "writable", tmp);
  lt_status st = LT_OK;
  for (int i = 0; i < n_splits && st == LT_OK; i++) st = ds_write_split(f, splits[i], err);
  if (H5Fclose(f) < 0 && st == LT_OK)
    st = lt_errorf(err, LT_ERR_IO, "closing %s failed; check free disk space", tmp);
  if (st) {
    remove(tmp);
    return st;
  }
  return lt_file_publish(tmp, path, err);
}
