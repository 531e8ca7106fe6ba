/* Checkpoints as HDF5 files, so `lathe inspect` and h5py can read them:
 *   /params/<name>        every parameter of the graph, trainable or not (BN running stats)
 *   /optim/<name>#<slot>  optimizer state per trainable parameter (velocity; or m and v)
 *   attributes on /       format, model, num_classes, epoch, step, epoch_step, seed, epoch
 *                         accumulators, optimizer kind and step
 * Written to a temp file, fsynced and renamed (io/dataset_file.h), so a job killed at any moment
 * leaves the previous checkpoint or the new one, never a torn file. Reading treats the file as
 * hostile: every tensor is checked against the graph's shape before its bytes are read. */
#include "lathe/train.h"
#include "io/dataset_file.h"

#include <hdf5.h>
#include <stdio.h>
#include <string.h>

#define CKPT_FORMAT "lathe-checkpoint-1"

static hid_t ckpt_native(lt_dtype t) {
  switch (t) {
  case LT_F32: return H5T_NATIVE_FLOAT;
  case LT_U8: return H5T_NATIVE_UINT8;
  case LT_I32: return H5T_NATIVE_INT32;
  case LT_I64: return H5T_NATIVE_INT64;
  }
  return H5T_NATIVE_FLOAT;
}

static lt_status ckpt_attr_put(hid_t loc, const char *name, hid_t type, const void *v,
                               lt_err *err) {
  hid_t s = H5Screate(H5S_SCALAR);
  hid_t a = H5Acreate2(loc, name, type, s, H5P_DEFAULT, H5P_DEFAULT);
  herr_t rc = a >= 0 ? H5Awrite(a, type, v) : -1;
  if (a >= 0) H5Aclose(a);
  H5Sclose(s);
  return rc < 0 ? lt_errorf(err, LT_ERR_IO, "writing checkpoint attribute %s failed", name) : LT_OK;
}

static lt_status ckpt_attr_get(hid_t loc, const char *name, hid_t type, void *v, lt_err *err) {
  hid_t a = H5Aexists(loc, name) > 0 ? H5Aopen(loc, name, H5P_DEFAULT) : -1;
  herr_t rc = -1;
  if (a >= 0) {
    hid_t s = H5Aget_space(a);
    if (s >= 0 && H5Sget_simple_extent_npoints(s) == 1) rc = H5Aread(a, type, v);
    if (s >= 0) H5Sclose(s);
    H5Aclose(a);
  }
  return rc < 0 ? lt_errorf(err, LT_ERR_FORMAT,
                            "checkpoint attribute %s is missing or malformed; the file is not a "
                            "Lathe checkpoint or is damaged",
                            name)
                : LT_OK;
}

/* A fixed-size string type of cap bytes, null-terminated. */
static hid_t ckpt_str_type(size_t cap) {
  hid_t t = H5Tcopy(H5T_C_S1);
  H5Tset_size(t, cap);
  H5Tset_strpad(t, H5T_STR_NULLTERM);
  return t;
}

static lt_status ckpt_write_tensor(hid_t loc, const char *name, const lt_tensor *t,
                                   const void *data, lt_err *err) {
  hsize_t d[LT_MAX_DIMS];
  for (int i = 0; i < t->ndim; i++) d[i] = (hsize_t)t->shape[i];
  hid_t s = t->ndim ? H5Screate_simple(t->ndim, d, NULL) : H5Screate(H5S_SCALAR);
  hid_t ds = s >= 0 ? H5Dcreate2(loc, name, ckpt_native(t->dtype), s, H5P_DEFAULT, H5P_DEFAULT,
                                 H5P_DEFAULT)
                    : -1;
  herr_t rc = ds >= 0 ? H5Dwrite(ds, ckpt_native(t->dtype), H5S_ALL, H5S_ALL, H5P_DEFAULT, data)
                      : -1;
  if (ds >= 0) H5Dclose(ds);
  if (s >= 0) H5Sclose(s);
  return rc < 0 ? lt_errorf(err, LT_ERR_IO, "writing checkpoint tensor %s failed", name) : LT_OK;
}

/* Reads loc/name into data after checking that its shape is t's shape. */
static lt_status ckpt_read_tensor(hid_t loc, const char *name, const lt_tensor *t, void *data,
                                  lt_err *err) {
  if (H5Lexists(loc, name, H5P_DEFAULT) <= 0)
    return lt_errorf(err, LT_ERR_INVALID,
                     "checkpoint lacks %s; it was written for another model", name);
  hid_t ds = H5Dopen2(loc, name, H5P_DEFAULT);
  if (ds < 0) return lt_errorf(err, LT_ERR_FORMAT, "checkpoint entry %s is not a dataset", name);
  hid_t s = H5Dget_space(ds);
  int nd = s >= 0 ? H5Sget_simple_extent_ndims(s) : -1;
  hsize_t d[LT_MAX_DIMS];
  int same = nd == t->ndim && nd >= 0 && nd <= LT_MAX_DIMS;
  if (same) {
    H5Sget_simple_extent_dims(s, d, NULL);
    for (int i = 0; i < nd; i++) same &= (int64_t)d[i] == t->shape[i];
  }
  lt_status st = LT_OK;
  if (!same) {
    char want[96];
    st = lt_errorf(err, LT_ERR_INVALID,
                   "checkpoint tensor %s does not have the model's shape %s; it was written for "
                   "another model or width",
                   name, lt_shape_str(t->ndim, t->shape, want, sizeof want));
  } else if (H5Dread(ds, ckpt_native(t->dtype), H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0) {
    st = lt_errorf(err, LT_ERR_FORMAT, "reading checkpoint tensor %s failed: the file is damaged",
                   name);
  }
  if (s >= 0) H5Sclose(s);
  H5Dclose(ds);
  return st;
}

int lt_train_params(const lt_graph *g, int *ids, int cap) {
  int n = 0;
  for (int v = 0; v < g->n_values; v++) {
    if (g->values[v].kind != LT_VALUE_PARAM || !g->values[v].trainable) continue;
    if (ids && n < cap) ids[n] = v;
    n++;
  }
  return n;
}

static lt_status ckpt_check_optim(const lt_graph *g, const lt_optim *o, lt_err *err) {
  int n = lt_train_params(g, NULL, 0);
  if (o->n != n)
    return lt_errorf(err, LT_ERR_INTERNAL,
                     "optimizer holds %d parameters but the graph has %d trainable ones", o->n, n);
  return LT_OK;
}

static lt_status ckpt_write_meta(hid_t f, const lt_ckpt_meta *m, const lt_optim *o, lt_err *err) {
  hid_t st64 = ckpt_str_type(64);
  char format[64] = CKPT_FORMAT, model[64] = {0}; /* H5Awrite reads all 64 bytes */
  lt_status st = ckpt_attr_put(f, "format", st64, format, err);
  snprintf(model, sizeof model, "%s", m->model);
  if (!st) st = ckpt_attr_put(f, "model", st64, model, err);
  H5Tclose(st64);
  int64_t optim_kind = o ? (int64_t)o->cfg.kind : -1, optim_step = o ? o->step : 0;
  int64_t nc = m->num_classes;
  struct { const char *name; const int64_t *v; } ints[] = {
      {"num_classes", &nc},        {"epoch", &m->epoch},
      {"step", &m->step},          {"epoch_step", &m->epoch_step},
      {"epoch_correct", &m->epoch_correct}, {"epoch_seen", &m->epoch_seen},
      {"optim_kind", &optim_kind}, {"optim_step", &optim_step}};
  for (size_t i = 0; i < sizeof ints / sizeof ints[0] && !st; i++)
    st = ckpt_attr_put(f, ints[i].name, H5T_NATIVE_INT64, ints[i].v, err);
  if (!st) st = ckpt_attr_put(f, "seed", H5T_NATIVE_UINT64, &m->seed, err);
  if (!st) st = ckpt_attr_put(f, "epoch_loss_sum", H5T_NATIVE_DOUBLE, &m->epoch_loss_sum, err);
  return st;
}

lt_status lt_ckpt_save(const char *path, const lt_graph *g, const lt_optim *o,
                       const lt_ckpt_meta *m, lt_err *err) {
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  if (o) {
    lt_status st = ckpt_check_optim(g, o, err);
    if (st) return st;
  }
  char tmp[4096];
  if (lt_file_temp_name(path, tmp, sizeof tmp) != 0)
    return lt_errorf(err, LT_ERR_INVALID, "checkpoint path is too long: %s", path);
  hid_t f = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  if (f < 0)
    return lt_errorf(err, LT_ERR_IO, "cannot create checkpoint %s; check that the folder exists "
                     "and is writable", tmp);
  hid_t gp = H5Gcreate2(f, "params", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  hid_t go = o ? H5Gcreate2(f, "optim", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT) : -1;
  lt_status st = gp < 0 || (o && go < 0) ? lt_errorf(err, LT_ERR_IO, "cannot create groups in %s", tmp)
                                         : ckpt_write_meta(f, m, o, err);
  int k = 0; /* index among trainable parameters = optimizer index */
  for (int v = 0; v < g->n_values && !st; v++) {
    const lt_value *val = &g->values[v];
    if (val->kind != LT_VALUE_PARAM) continue;
    if (strchr(val->name, '/') || strchr(val->name, '#')) {
      st = lt_errorf(err, LT_ERR_UNSUPPORTED,
                     "parameter name \"%s\" contains '/' or '#', which checkpoints reserve",
                     val->name);
      break;
    }
    st = ckpt_write_tensor(gp, val->name, val->data, val->data->data, err);
    if (!st && o && val->trainable) {
      for (int s = 0; s < o->n_slots && !st; s++) {
        char name[512];
        snprintf(name, sizeof name, "%s#%d", val->name, s);
        st = ckpt_write_tensor(go, name, val->data, o->state[k * o->n_slots + s], err);
      }
    }
    if (val->trainable) k++;
  }
  if (go >= 0) H5Gclose(go);
  if (gp >= 0) H5Gclose(gp);
  if (H5Fclose(f) < 0 && !st)
    st = lt_errorf(err, LT_ERR_IO, "closing checkpoint %s failed; check free disk space", tmp);
  if (st) {
    remove(tmp);
    return st;
  }
  return lt_file_publish(tmp, path, err);
}

static hid_t ckpt_open(const char *path, lt_err *err) {
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  if (H5Fis_hdf5(path) <= 0) {
    lt_errorf(err, LT_ERR_FORMAT, "%s is missing or not an HDF5 checkpoint", path);
    return -1;
  }
  hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
  if (f < 0) {
    lt_errorf(err, LT_ERR_FORMAT, "checkpoint %s cannot be opened: truncated or damaged", path);
    return -1;
  }
  char format[64] = {0};
  hid_t st64 = ckpt_str_type(64);
  lt_status st = ckpt_attr_get(f, "format", st64, format, err);
  H5Tclose(st64);
  format[63] = '\0';
  if (st || strcmp(format, CKPT_FORMAT) != 0) {
    lt_errorf(err, LT_ERR_FORMAT, "%s is not a Lathe checkpoint (format \"%s\", expected \"%s\")",
              path, format, CKPT_FORMAT);
    H5Fclose(f);
    return -1;
  }
  return f;
}

static lt_status ckpt_read_meta_f(hid_t f, lt_ckpt_meta *m, int64_t *optim_kind,
                                  int64_t *optim_step, lt_err *err) {
  memset(m, 0, sizeof *m);
  hid_t st64 = ckpt_str_type(64);
  lt_status st = ckpt_attr_get(f, "model", st64, m->model, err);
  H5Tclose(st64);
  m->model[sizeof m->model - 1] = '\0';
  int64_t nc = 0;
  struct { const char *name; int64_t *v; } ints[] = {
      {"num_classes", &nc},       {"epoch", &m->epoch},
      {"step", &m->step},         {"epoch_step", &m->epoch_step},
      {"epoch_correct", &m->epoch_correct}, {"epoch_seen", &m->epoch_seen},
      {"optim_kind", optim_kind}, {"optim_step", optim_step}};
  for (size_t i = 0; i < sizeof ints / sizeof ints[0] && !st; i++)
    st = ckpt_attr_get(f, ints[i].name, H5T_NATIVE_INT64, ints[i].v, err);
  if (!st) st = ckpt_attr_get(f, "seed", H5T_NATIVE_UINT64, &m->seed, err);
  if (!st) st = ckpt_attr_get(f, "epoch_loss_sum", H5T_NATIVE_DOUBLE, &m->epoch_loss_sum, err);
  if (!st && (nc < 0 || nc > 1000000 || m->epoch < 0 || m->step < 0 || m->epoch_step < 0))
    st = lt_errorf(err, LT_ERR_FORMAT, "checkpoint position (epoch %lld, step %lld) is invalid",
                   (long long)m->epoch, (long long)m->step);
  m->num_classes = (int)nc;
  return st;
}

lt_status lt_ckpt_read_meta(const char *path, lt_ckpt_meta *m, lt_err *err) {
  hid_t f = ckpt_open(path, err);
  if (f < 0) return err ? err->status : LT_ERR_FORMAT;
  int64_t kind, step;
  lt_status st = ckpt_read_meta_f(f, m, &kind, &step, err);
  H5Fclose(f);
  if (st) lt_err_prefix(err, "%s", path);
  return st;
}

lt_status lt_ckpt_load(const char *path, lt_graph *g, lt_optim *o, lt_ckpt_meta *m, lt_err *err) {
  hid_t f = ckpt_open(path, err);
  if (f < 0) return err ? err->status : LT_ERR_FORMAT;
  lt_ckpt_meta meta;
  int64_t optim_kind = -1, optim_step = 0;
  hid_t gp = -1, go = -1;
  lt_status st = ckpt_read_meta_f(f, &meta, &optim_kind, &optim_step, err);
  if (!st && o) st = ckpt_check_optim(g, o, err);
  if (!st && o && optim_kind != (int64_t)o->cfg.kind)
    st = lt_errorf(err, LT_ERR_INVALID,
                   "checkpoint holds %s optimizer state but the run uses %s; resume with the same "
                   "optimizer",
                   optim_kind < 0 ? "no" : optim_kind == LT_OPTIM_SGD ? "SGD" : "AdamW",
                   o->cfg.kind == LT_OPTIM_SGD ? "SGD" : "AdamW");
  if (!st && (gp = H5Gopen2(f, "params", H5P_DEFAULT)) < 0)
    st = lt_errorf(err, LT_ERR_FORMAT, "checkpoint has no /params group");
  if (!st && o && (go = H5Gopen2(f, "optim", H5P_DEFAULT)) < 0)
    st = lt_errorf(err, LT_ERR_FORMAT, "checkpoint has no /optim group");
  int k = 0, n_params = 0;
  for (int v = 0; v < g->n_values && !st; v++) {
    lt_value *val = &g->values[v];
    if (val->kind != LT_VALUE_PARAM) continue;
    n_params++;
    st = ckpt_read_tensor(gp, val->name, val->data, val->data->data, err);
    if (!st && o && val->trainable) {
      for (int s = 0; s < o->n_slots && !st; s++) {
        char name[512];
        snprintf(name, sizeof name, "%s#%d", val->name, s);
        st = ckpt_read_tensor(go, name, val->data, o->state[k * o->n_slots + s], err);
      }
    }
    if (val->trainable) k++;
  }
  if (!st) {
    H5G_info_t gi;
    if (H5Gget_info(gp, &gi) < 0 || gi.nlinks != (hsize_t)n_params)
      st = lt_errorf(err, LT_ERR_INVALID,
                     "checkpoint holds %llu parameters but the model has %d; it was written for "
                     "another model",
                     (unsigned long long)gi.nlinks, n_params);
  }
  if (go >= 0) H5Gclose(go);
  if (gp >= 0) H5Gclose(gp);
  H5Fclose(f);
  if (st) return lt_err_prefix(err, "loading checkpoint %s", path);
  if (o) o->step = optim_step;
  if (m) *m = meta;
  return LT_OK;
}
