/* ONNX reader: ModelProto bytes → ox_model (onnx_model.h). Written for hostile input: built on
 * the bounds-checked decoder in pb.c, every repeated field is counted before it is allocated,
 * counts and sizes are capped (OX_MAX_*), tensor byte counts are checked against the declared
 * dims without overflow, and external data may only come from a regular file inside the model's
 * folder. Subgraph attributes (If/Loop bodies) are skipped, never descended into, so the parser's
 * depth is fixed (model → graph → node → attribute → tensor) and hostile nesting cannot recurse.
 *
 * Field numbers are those of onnx/onnx.proto (stable since IR version 3). */
#include "io/onnx_model.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/pb.h"

#define FAIL(...) lt_errorf(err, LT_ERR_FORMAT, __VA_ARGS__)

/* Loops over the fields of one message; on a decode error jumps out with the status. */
#define PB_EACH(r, f, st)                                                                          \
  for (int rc_; (rc_ = pb_next(&(r), &(f), err)) != 0;)                                      \
    if (rc_ < 0) {                                                                                 \
      st = err ? err->status : LT_ERR_FORMAT;                                                      \
      break;                                                                                       \
    } else

static lt_status dup_str(const pb_field *f, char **out, lt_err *err) {
  if (f->wire != PB_LEN) return FAIL("protobuf field %u: expected a string", f->num);
  if (f->len > OX_MAX_NAME) return FAIL("a name or string of %zu bytes exceeds the %d-byte limit", f->len, OX_MAX_NAME);
  if (memchr(f->data, 0, f->len)) return FAIL("a name contains a NUL byte");
  char *s = malloc(f->len + 1);
  if (!s) return lt_errorf(err, LT_ERR_NOMEM, "out of memory reading a name");
  memcpy(s, f->data, f->len);
  s[f->len] = '\0';
  free(*out); /* a repeated singular field: the last one wins, as in protobuf */
  *out = s;
  return LT_OK;
}

/* Checked counter for repeated fields: refuses more than cap occurrences. */
static lt_status bump(int *n, int cap, const char *what, lt_err *err) {
  if (*n >= cap) return FAIL("more than %d %s; the file is corrupt or beyond Lathe's limits", cap, what);
  (*n)++;
  return LT_OK;
}

static lt_status ox_lt_dtype(int onnx_type, lt_dtype *out, lt_err *err) {
  switch (onnx_type) {
  case OX_FLOAT: case OX_DOUBLE: *out = LT_F32; return LT_OK;
  case OX_UINT8: case OX_BOOL: *out = LT_U8; return LT_OK;
  case OX_INT8: case OX_INT32: *out = LT_I32; return LT_OK;
  case OX_INT64: *out = LT_I64; return LT_OK;
  default:
    return lt_errorf(err, LT_ERR_UNSUPPORTED,
                     "tensor data type %d is not supported (Lathe reads float, double, uint8, "
                     "int8, int32, int64, bool); convert the model to float32", onnx_type);
  }
}

static size_t onnx_elem_size(int t) {
  switch (t) {
  case OX_FLOAT: case OX_INT32: return 4;
  case OX_UINT8: case OX_INT8: case OX_BOOL: return 1;
  case OX_INT64: case OX_DOUBLE: return 8;
  default: return 0;
  }
}

/* Widens one stored element (raw little-endian bytes of ONNX type t) into the tensor. */
static void store_elem(lt_tensor *t, int64_t i, int onnx_type, const uint8_t *src) {
  switch (onnx_type) {
  case OX_FLOAT: memcpy((float *)t->data + i, src, 4); break;
  case OX_DOUBLE: { double d; memcpy(&d, src, 8); ((float *)t->data)[i] = (float)d; break; }
  case OX_UINT8: case OX_BOOL: ((uint8_t *)t->data)[i] = src[0]; break;
  case OX_INT8: ((int32_t *)t->data)[i] = (int8_t)src[0]; break;
  case OX_INT32: memcpy((int32_t *)t->data + i, src, 4); break;
  case OX_INT64: memcpy((int64_t *)t->data + i, src, 8); break;
  }
}

/* Reads external tensor bytes: only a regular file inside the model's folder. */
static lt_status read_external(const char *dir, const char *location, int64_t offset,
                               int64_t length, uint8_t **out, size_t want, lt_err *err) {
  if (!dir)
    return lt_errorf(err, LT_ERR_UNSUPPORTED, "tensor data is stored in an external file '%s', but "
                     "the model was not loaded from a file; load it from its folder", location);
  if (location[0] == '/' || strstr(location, ".."))
    return lt_errorf(err, LT_ERR_INVALID, "external data location '%s' leaves the model's folder; "
                     "only files beside the model are read", location);
  char path[PATH_MAX], real_dir[PATH_MAX], real_file[PATH_MAX];
  if (snprintf(path, sizeof path, "%s/%s", dir, location) >= (int)sizeof path)
    return lt_errorf(err, LT_ERR_INVALID, "external data path is too long");
  if (!realpath(dir, real_dir) || !realpath(path, real_file))
    return lt_errorf(err, LT_ERR_IO, "external data file '%s' beside the model cannot be opened: %s; "
                     "copy it next to the .onnx file", location, strerror(errno));
  size_t dl = strlen(real_dir);
  if (strncmp(real_file, real_dir, dl) != 0 || real_file[dl] != '/')
    return lt_errorf(err, LT_ERR_INVALID, "external data '%s' resolves outside the model's folder "
                     "(symbolic link?); refused", location);
  int fd = open(real_file, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return lt_errorf(err, LT_ERR_IO, "cannot open external data '%s': %s", location, strerror(errno));
  struct stat sb;
  lt_status st = LT_OK;
  if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
    st = lt_errorf(err, LT_ERR_INVALID, "external data '%s' is not a regular file", location);
  } else if (offset < 0 || (length >= 0 && (uint64_t)length != (uint64_t)want) || /* -1: absent */
             offset > sb.st_size || (int64_t)want > sb.st_size - offset) {
    st = FAIL("external data '%s' (offset %lld, length %lld) does not hold the %zu bytes the "
              "tensor needs (file has %lld bytes)", location, (long long)offset, (long long)length,
              want, (long long)sb.st_size);
  } else {
    *out = malloc(want ? want : 1);
    if (!*out) {
      st = lt_errorf(err, LT_ERR_NOMEM, "out of memory for %zu bytes of external data", want);
    } else {
      size_t got = 0;
      while (got < want) {
        ssize_t n = pread(fd, *out + got, want - got, (off_t)(offset + (int64_t)got));
        if (n <= 0) {
          st = lt_errorf(err, LT_ERR_IO, "reading external data '%s' failed", location);
          break;
        }
        got += (size_t)n;
      }
    }
  }
  close(fd);
  if (st) {
    free(*out);
    *out = NULL;
  }
  return st;
}

/* TensorProto → lt_tensor (host, counted under LT_MEM_WEIGHTS). name may be NULL. */
static lt_status parse_tensor(const uint8_t *buf, size_t len, const char *dir, lt_tensor **out,
                              char **name, lt_err *err) {
  lt_status st = LT_OK;
  pb_reader r = pb_reader_make(buf, len);
  pb_field f;
  int64_t dims[LT_MAX_DIMS];
  size_t ndim = 0, n_typed = 0, cnt;
  int64_t dtype = 0, location = 0;
  const uint8_t *raw = NULL;
  size_t raw_len = 0;
  int has_raw = 0;
  char *ext_loc = NULL;
  int64_t ext_off = 0, ext_len = -1;
  char *my_name = NULL;
  /* Pass 1: scalars, dims, raw data, and how many typed values there are. */
  PB_EACH(r, f, st) {
    switch (f.num) {
    case 1: /* dims */
      if ((st = pb_count_varints(&f, &cnt, err))) break;
      if (cnt > LT_MAX_DIMS - ndim) { st = lt_errorf(err, LT_ERR_UNSUPPORTED, "a tensor has more than %d dimensions", LT_MAX_DIMS); break; }
      st = pb_get_varints(&f, dims, LT_MAX_DIMS, &ndim, err);
      break;
    case 2: st = pb_field_i64(&f, &dtype, err); break;
    case 8: st = dup_str(&f, &my_name, err); break;
    case 9:
      if (f.wire != PB_LEN) { st = FAIL("tensor raw_data is not a byte string"); break; }
      raw = f.data; raw_len = f.len; has_raw = 1;
      break;
    case 14: st = pb_field_i64(&f, &location, err); break;
    case 13: { /* external_data: StringStringEntryProto {key = 1, value = 2} */
      if (f.wire != PB_LEN) { st = FAIL("tensor external_data is not a message"); break; }
      pb_reader er = pb_reader_make(f.data, f.len);
      pb_field ef;
      char *key = NULL, *val = NULL;
      PB_EACH(er, ef, st) {
        if (ef.num == 1) st = dup_str(&ef, &key, err);
        else if (ef.num == 2) st = dup_str(&ef, &val, err);
        if (st) break;
      }
      if (!st && key && val) {
        char *end = NULL;
        if (!strcmp(key, "location")) { free(ext_loc); ext_loc = val; val = NULL; }
        else if (!strcmp(key, "offset")) ext_off = strtoll(val, &end, 10);
        else if (!strcmp(key, "length")) ext_len = strtoll(val, &end, 10);
        if (end && *end) st = FAIL("external data %s '%s' is not a number", key, val);
      }
      free(key);
      free(val);
      break;
    }
    case 4: if (!(st = pb_count_fixed(&f, 4, &cnt, err))) n_typed += cnt; break;
    case 10: case 11: if (!(st = pb_count_fixed(&f, 8, &cnt, err))) n_typed += cnt; break;
    case 5: case 7: if (!(st = pb_count_varints(&f, &cnt, err))) n_typed += cnt; break;
    case 3: st = lt_errorf(err, LT_ERR_UNSUPPORTED, "segmented tensors are not supported"); break;
    default: break; /* doc_string, string_data (refused below by dtype), unknown fields */
    }
    if (st) break;
  }
  lt_tensor *t = NULL;
  lt_dtype lt = LT_F32;
  if (st) goto done;
  if ((st = ox_lt_dtype((int)dtype, &lt, err))) goto done;
  int64_t numel = 1;
  for (size_t i = 0; i < ndim; i++) {
    if (dims[i] < 0 || (dims[i] > 0 && numel > OX_MAX_TENSOR_ELEMS / dims[i])) {
      st = FAIL("tensor '%s' has a negative or absurd dimension %lld (limit %lld elements)",
                my_name ? my_name : "", (long long)dims[i], (long long)OX_MAX_TENSOR_ELEMS);
      goto done;
    }
    numel *= dims[i];
  }
  size_t esz = onnx_elem_size((int)dtype);
  size_t want = (size_t)numel * esz;
  uint8_t *ext = NULL;
  if (location == 1) {
    if (!ext_loc) { st = FAIL("tensor '%s' is marked external but names no location", my_name ? my_name : ""); goto done; }
    if ((st = read_external(dir, ext_loc, ext_off, ext_len, &ext, want, err))) goto done;
    raw = ext; raw_len = want; has_raw = 1;
  }
  /* The data must be present before anything is allocated for it: absurd dims with a few bytes
   * of data fail here instead of allocating gigabytes. */
  if (has_raw && raw_len != want) {
    st = FAIL("tensor '%s' has %zu bytes of raw data, but its shape and type need %zu",
              my_name ? my_name : "", raw_len, want);
    free(ext);
    goto done;
  }
  if (!has_raw && n_typed != (size_t)numel) {
    st = FAIL("tensor '%s' holds %zu values, but its shape needs %lld", my_name ? my_name : "",
              n_typed, (long long)numel);
    goto done;
  }
  t = lt_tensor_new(lt, (int)ndim, dims, LT_MEM_WEIGHTS, err);
  if (!t) { st = err ? err->status : LT_ERR_NOMEM; free(ext); goto done; }
  if (has_raw) {
    for (int64_t i = 0; i < numel; i++) store_elem(t, i, (int)dtype, raw + (size_t)i * esz);
    free(ext);
  } else if (numel > 0) {
    /* Pass 2: typed fields. Which field carries the data depends on the type (onnx.proto). */
    int64_t *tmp = malloc((size_t)numel * 8);
    size_t got = 0;
    if (!tmp) { st = lt_errorf(err, LT_ERR_NOMEM, "out of memory reading tensor data"); goto done; }
    int field = dtype == OX_FLOAT ? 4 : dtype == OX_DOUBLE ? 10 : dtype == OX_INT64 ? 7 : 5;
    r = pb_reader_make(buf, len);
    PB_EACH(r, f, st) {
      if ((int)f.num != field) continue;
      if (field == 4) st = pb_get_fixed(&f, 4, tmp, (size_t)numel * 2, &got, err);
      else if (field == 10) st = pb_get_fixed(&f, 8, tmp, (size_t)numel, &got, err);
      else st = pb_get_varints(&f, tmp, (size_t)numel, &got, err);
      if (st) break;
    }
    if (!st && got != (size_t)numel)
      st = FAIL("tensor '%s': data is in a field that does not match its type %lld",
                my_name ? my_name : "", (long long)dtype);
    for (int64_t i = 0; !st && i < numel; i++) {
      if (field == 4) memcpy((float *)t->data + i, (uint32_t *)tmp + i, 4);
      else if (field == 10) { double d; memcpy(&d, tmp + i, 8); ((float *)t->data)[i] = (float)d; }
      else if (lt == LT_I64) ((int64_t *)t->data)[i] = tmp[i];
      else if (lt == LT_I32) ((int32_t *)t->data)[i] = (int32_t)tmp[i];
      else ((uint8_t *)t->data)[i] = (uint8_t)tmp[i];
    }
    free(tmp);
  }
done:
  free(ext_loc);
  if (st) {
    lt_tensor_free(t);
    free(my_name);
    return st;
  }
  *out = t;
  if (name) *name = my_name ? my_name : strdup("");
  else free(my_name);
  if (name && !*name) { lt_tensor_free(t); *out = NULL; return lt_errorf(err, LT_ERR_NOMEM, "out of memory"); }
  return LT_OK;
}

static lt_status parse_attr(const pb_field *outer, const char *dir, ox_attr *a, lt_err *err) {
  lt_status st = LT_OK;
  pb_reader r = pb_reader_make(outer->data, outer->len);
  pb_field f;
  size_t n_ints = 0, n_floats = 0, cnt;
  PB_EACH(r, f, st) {
    switch (f.num) {
    case 1: st = dup_str(&f, &a->name, err); break;
    case 20: { int64_t v; if (!(st = pb_field_i64(&f, &v, err))) a->type = (int)v; break; }
    case 2: st = pb_field_f32(&f, &a->f, err); break;
    case 3: st = pb_field_i64(&f, &a->i, err); break;
    case 4: st = dup_str(&f, &a->s, err); break;
    case 5:
      if (f.wire != PB_LEN) { st = FAIL("attribute tensor is not a message"); break; }
      lt_tensor_free(a->t);
      a->t = NULL;
      st = parse_tensor(f.data, f.len, dir, &a->t, NULL, err);
      break;
    case 7: if (!(st = pb_count_fixed(&f, 4, &cnt, err))) n_floats += cnt; break;
    case 8: if (!(st = pb_count_varints(&f, &cnt, err))) n_ints += cnt; break;
    default: break; /* subgraphs and the rest: skipped, never parsed */
    }
    if (st) return st;
  }
  if (st) return st;
  if (!a->name) return FAIL("a node attribute has no name");
  if (n_ints > OX_MAX_ATTR_VALUES || n_floats > OX_MAX_ATTR_VALUES)
    return FAIL("attribute '%s' has more than %d values", a->name, OX_MAX_ATTR_VALUES);
  if (n_ints || n_floats) {
    a->ints = malloc((n_ints ? n_ints : 1) * sizeof *a->ints);
    a->floats = malloc((n_floats ? n_floats : 1) * sizeof *a->floats);
    if (!a->ints || !a->floats) return lt_errorf(err, LT_ERR_NOMEM, "out of memory reading attributes");
    size_t gi = 0, gf = 0;
    r = pb_reader_make(outer->data, outer->len);
    PB_EACH(r, f, st) {
      if (f.num == 7) st = pb_get_fixed(&f, 4, a->floats, n_floats, &gf, err);
      else if (f.num == 8) st = pb_get_varints(&f, a->ints, n_ints, &gi, err);
      if (st) return st;
    }
    a->n = (int)(a->type == OX_ATTR_FLOATS ? n_floats : n_ints);
  }
  return st;
}

static lt_status parse_node(const pb_field *outer, const char *dir, ox_node *n, lt_err *err) {
  lt_status st = LT_OK;
  pb_reader r = pb_reader_make(outer->data, outer->len);
  pb_field f;
  int ni = 0, no = 0, na = 0;
  PB_EACH(r, f, st) {
    if (f.num == 1) st = bump(&ni, OX_MAX_NODE_IO, "inputs on one node", err);
    else if (f.num == 2) st = bump(&no, OX_MAX_NODE_IO, "outputs on one node", err);
    else if (f.num == 5) st = bump(&na, OX_MAX_ATTRS, "attributes on one node", err);
    if (st) return st;
  }
  if (st) return st;
  n->in = calloc((size_t)ni + 1, sizeof *n->in);
  n->out = calloc((size_t)no + 1, sizeof *n->out);
  n->attrs = calloc((size_t)na + 1, sizeof *n->attrs);
  if (!n->in || !n->out || !n->attrs) return lt_errorf(err, LT_ERR_NOMEM, "out of memory reading a node");
  r = pb_reader_make(outer->data, outer->len);
  PB_EACH(r, f, st) {
    switch (f.num) {
    case 1: st = dup_str(&f, &n->in[n->n_in++], err); break;
    case 2: st = dup_str(&f, &n->out[n->n_out++], err); break;
    case 3: st = dup_str(&f, &n->name, err); break;
    case 4: st = dup_str(&f, &n->op, err); break;
    case 7: st = dup_str(&f, &n->domain, err); break;
    case 5:
      if (f.wire != PB_LEN) { st = FAIL("node attribute is not a message"); break; }
      st = parse_attr(&f, dir, &n->attrs[n->n_attrs++], err);
      break;
    default: break;
    }
    if (st) return st;
  }
  if (st) return st;
  if (!n->op) return FAIL("a node has no op_type");
  if (!n->name && !(n->name = strdup(""))) return lt_errorf(err, LT_ERR_NOMEM, "out of memory");
  return LT_OK;
}

/* ValueInfoProto {name 1, type 2: TypeProto {tensor_type 1: {elem_type 1, shape 2:
 * TensorShapeProto {dim 1: {dim_value 1, dim_param 2}}}}}. */
static lt_status parse_valinfo(const pb_field *outer, ox_valinfo *v, lt_err *err) {
  lt_status st = LT_OK;
  pb_reader r = pb_reader_make(outer->data, outer->len);
  pb_field f;
  v->ndim = -1;
  PB_EACH(r, f, st) {
    if (f.num == 1) st = dup_str(&f, &v->name, err);
    if (f.num != 2 || st) { if (st) return st; continue; }
    if (f.wire != PB_LEN) return FAIL("value type is not a message");
    pb_reader tr = pb_reader_make(f.data, f.len);
    pb_field tf;
    PB_EACH(tr, tf, st) {
      if (tf.num != 1) continue; /* sequences, maps, optionals: left undeclared */
      if (tf.wire != PB_LEN) return FAIL("tensor type is not a message");
      pb_reader ttr = pb_reader_make(tf.data, tf.len);
      pb_field ttf;
      PB_EACH(ttr, ttf, st) {
        if (ttf.num == 1) {
          int64_t e;
          if ((st = pb_field_i64(&ttf, &e, err))) return st;
          v->elem = (int)e;
        } else if (ttf.num == 2) {
          if (ttf.wire != PB_LEN) return FAIL("tensor shape is not a message");
          v->ndim = 0;
          pb_reader sr = pb_reader_make(ttf.data, ttf.len);
          pb_field sf;
          PB_EACH(sr, sf, st) {
            if (sf.num != 1) continue;
            if (sf.wire != PB_LEN) return FAIL("tensor dimension is not a message");
            if (v->ndim >= LT_MAX_DIMS)
              return lt_errorf(err, LT_ERR_UNSUPPORTED, "value '%s' has more than %d dimensions",
                               v->name ? v->name : "", LT_MAX_DIMS);
            int64_t d = -1;
            pb_reader dr = pb_reader_make(sf.data, sf.len);
            pb_field df;
            PB_EACH(dr, df, st) {
              if (df.num == 1 && (st = pb_field_i64(&df, &d, err))) return st;
            }
            if (st) return st;
            v->dims[v->ndim++] = d < 0 ? -1 : d;
          }
          if (st) return st;
        }
      }
      if (st) return st;
    }
    if (st) return st;
  }
  if (st) return st;
  if (!v->name) return FAIL("a graph input or output has no name");
  return LT_OK;
}

static lt_status parse_graph(const pb_field *outer, const char *dir, ox_model *m, lt_err *err) {
  lt_status st = LT_OK;
  pb_reader r = pb_reader_make(outer->data, outer->len);
  pb_field f;
  int nn = 0, ni = 0, nin = 0, nout = 0;
  PB_EACH(r, f, st) {
    if (f.num == 1) st = bump(&nn, OX_MAX_NODES, "nodes", err);
    else if (f.num == 5) st = bump(&ni, OX_MAX_TENSORS, "initializers", err);
    else if (f.num == 11) st = bump(&nin, OX_MAX_TENSORS, "graph inputs", err);
    else if (f.num == 12) st = bump(&nout, OX_MAX_TENSORS, "graph outputs", err);
    else if (f.num == 15) st = lt_errorf(err, LT_ERR_UNSUPPORTED, "sparse initializers are not supported; "
                                         "store the weights densely");
    if (st) return st;
  }
  if (st) return st;
  m->nodes = calloc((size_t)nn + 1, sizeof *m->nodes);
  m->inits = calloc((size_t)ni + 1, sizeof *m->inits);
  m->inputs = calloc((size_t)nin + 1, sizeof *m->inputs);
  m->outputs = calloc((size_t)nout + 1, sizeof *m->outputs);
  if (!m->nodes || !m->inits || !m->inputs || !m->outputs)
    return lt_errorf(err, LT_ERR_NOMEM, "out of memory reading the graph");
  r = pb_reader_make(outer->data, outer->len);
  PB_EACH(r, f, st) {
    if ((f.num == 1 || f.num == 5 || f.num == 11 || f.num == 12) && f.wire != PB_LEN) {
      st = FAIL("graph field %u is not a message", f.num);
      break;
    }
    switch (f.num) {
    case 1:
      st = parse_node(&f, dir, &m->nodes[m->n_nodes++], err);
      if (st) lt_err_prefix(err, "node %d", m->n_nodes - 1);
      break;
    case 5: {
      ox_init *in = &m->inits[m->n_inits++];
      st = parse_tensor(f.data, f.len, dir, &in->t, &in->name, err);
      if (st) lt_err_prefix(err, "initializer %d", m->n_inits - 1);
      break;
    }
    case 11: st = parse_valinfo(&f, &m->inputs[m->n_inputs++], err); break;
    case 12: st = parse_valinfo(&f, &m->outputs[m->n_outputs++], err); break;
    default: break;
    }
    if (st) return st;
  }
  return st;
}

ox_model *ox_model_parse(const void *data, size_t len, const char *dir, lt_err *err) {
  if (len > OX_MAX_FILE_BYTES) {
    lt_errorf(err, LT_ERR_FORMAT, "model of %zu bytes exceeds the 2 GiB protobuf limit", len);
    return NULL;
  }
  ox_model *m = calloc(1, sizeof *m);
  if (!m) {
    lt_errorf(err, LT_ERR_NOMEM, "out of memory");
    return NULL;
  }
  m->opset = -1;
  lt_status st = LT_OK;
  pb_reader r = pb_reader_make(data, len);
  pb_field f;
  int graphs = 0;
  PB_EACH(r, f, st) {
    switch (f.num) {
    case 1: st = pb_field_i64(&f, &m->ir_version, err); break;
    case 2: st = dup_str(&f, &m->producer, err); break;
    case 7:
      if (f.wire != PB_LEN) { st = FAIL("model graph is not a message (not an ONNX file?)"); break; }
      if (graphs++) { st = FAIL("model has more than one graph"); break; }
      st = parse_graph(&f, dir, m, err);
      break;
    case 8: { /* OperatorSetIdProto {domain 1, version 2} */
      if (f.wire != PB_LEN) { st = FAIL("opset_import is not a message (not an ONNX file?)"); break; }
      pb_reader orr = pb_reader_make(f.data, f.len);
      pb_field of;
      char *domain = NULL;
      int64_t version = -1;
      PB_EACH(orr, of, st) {
        if (of.num == 1) st = dup_str(&of, &domain, err);
        else if (of.num == 2) st = pb_field_i64(&of, &version, err);
        if (st) break;
      }
      if (!st && (!domain || !domain[0] || !strcmp(domain, "ai.onnx"))) m->opset = version;
      free(domain);
      break;
    }
    default: break;
    }
    if (st) break;
  }
  if (!st && !graphs) st = FAIL("no graph found: this is not an ONNX model (or it is empty)");
  if (!st && m->ir_version <= 0) st = FAIL("no ir_version: this is not an ONNX model");
  if (!st && m->opset < 0) {
    /* IR version 2 files predate opset_import and mean opset 1. */
    st = lt_errorf(err, LT_ERR_UNSUPPORTED, "model declares no opset for the default ONNX domain; "
                   "re-export it with opset 9 to 17");
  }
  if (st) {
    ox_model_free(m);
    return NULL;
  }
  return m;
}

static void free_attr(ox_attr *a) {
  free(a->name);
  free(a->s);
  free(a->ints);
  free(a->floats);
  lt_tensor_free(a->t);
}

void ox_model_free(ox_model *m) {
  if (!m) return;
  for (int i = 0; i < m->n_nodes; i++) {
    ox_node *n = &m->nodes[i];
    free(n->name);
    free(n->op);
    free(n->domain);
    for (int j = 0; j < n->n_in; j++) free(n->in[j]);
    for (int j = 0; j < n->n_out; j++) free(n->out[j]);
    for (int j = 0; j < n->n_attrs; j++) free_attr(&n->attrs[j]);
    free(n->in);
    free(n->out);
    free(n->attrs);
  }
  for (int i = 0; i < m->n_inits; i++) {
    free(m->inits[i].name);
    lt_tensor_free(m->inits[i].t);
  }
  for (int i = 0; i < m->n_inputs; i++) free(m->inputs[i].name);
  for (int i = 0; i < m->n_outputs; i++) free(m->outputs[i].name);
  free(m->nodes);
  free(m->inits);
  free(m->inputs);
  free(m->outputs);
  free(m->producer);
  free(m);
}

const ox_attr *ox_node_attr(const ox_node *n, const char *name) {
  for (int i = 0; i < n->n_attrs; i++)
    if (n->attrs[i].name && !strcmp(n->attrs[i].name, name)) return &n->attrs[i];
  return NULL;
}
