/* Tensor storage: allocation through the counting allocator, views, shape helpers. */
#include "lathe/tensor.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

size_t lt_dtype_size(lt_dtype t) {
  switch (t) {
  case LT_F32: return 4;
  case LT_U8: return 1;
  case LT_I32: return 4;
  case LT_I64: return 8;
  }
  return 0;
}

const char *lt_dtype_name(lt_dtype t) {
  switch (t) {
  case LT_F32: return "float32";
  case LT_U8: return "uint8";
  case LT_I32: return "int32";
  case LT_I64: return "int64";
  }
  return "invalid";
}

int64_t lt_shape_numel(int ndim, const int64_t *shape) {
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) n *= shape[i];
  return n;
}

int64_t lt_tensor_numel(const lt_tensor *t) { return lt_shape_numel(t->ndim, t->shape); }

size_t lt_tensor_nbytes(const lt_tensor *t) {
  return (size_t)lt_tensor_numel(t) * lt_dtype_size(t->dtype);
}

int lt_shape_equal(int na, const int64_t *a, int nb, const int64_t *b) {
  if (na != nb) return 0;
  for (int i = 0; i < na; i++)
    if (a[i] != b[i]) return 0;
  return 1;
}

char *lt_shape_str(int ndim, const int64_t *shape, char *buf, size_t cap) {
  size_t used = 0;
  buf[0] = '\0';
  used += (size_t)snprintf(buf + used, cap - used, "(");
  for (int i = 0; i < ndim && used < cap; i++)
    used += (size_t)snprintf(buf + used, cap - used, "%s%lld", i ? ", " : "", (long long)shape[i]);
  if (used < cap) snprintf(buf + used, cap - used, ")");
  return buf;
}

lt_tensor *lt_tensor_new(lt_dtype dtype, int ndim, const int64_t *shape, lt_mem_cat cat,
                         lt_err *err) {
  if (ndim < 0 || ndim > LT_MAX_DIMS) {
    lt_errorf(err, LT_ERR_INVALID, "tensor rank %d is outside 0..%d", ndim, LT_MAX_DIMS);
    return NULL;
  }
  int64_t numel = 1;
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 0 || (shape[i] > 0 && numel > INT64_MAX / 16 / shape[i])) {
      char s[256];
      lt_errorf(err, LT_ERR_INVALID, "tensor shape %s is negative or too large",
                lt_shape_str(ndim, shape, s, sizeof s));
      return NULL;
    }
    numel *= shape[i];
  }
  lt_tensor *t = calloc(1, sizeof *t);
  if (!t) {
    lt_errorf(err, LT_ERR_NOMEM, "out of memory for a tensor header");
    return NULL;
  }
  t->dtype = dtype;
  t->ndim = ndim;
  memcpy(t->shape, shape, sizeof(int64_t) * (size_t)ndim);
  t->cat = cat;
  t->owned = 1;
  t->device = -1;
  t->data = lt_calloc(cat, (size_t)numel * lt_dtype_size(dtype), err);
  if (!t->data) {
    free(t);
    return NULL;
  }
  return t;
}

lt_tensor lt_tensor_wrap(lt_dtype dtype, int ndim, const int64_t *shape, void *data) {
  lt_tensor t;
  memset(&t, 0, sizeof t);
  t.dtype = dtype;
  t.ndim = ndim;
  memcpy(t.shape, shape, sizeof(int64_t) * (size_t)ndim);
  t.data = data;
  t.cat = LT_MEM_OTHER;
  t.owned = 0;
  t.device = -1;
  return t;
}

lt_tensor *lt_tensor_clone(const lt_tensor *src, lt_mem_cat cat, lt_err *err) {
  lt_tensor *t = lt_tensor_new(src->dtype, src->ndim, src->shape, cat, err);
  if (t) memcpy(t->data, src->data, lt_tensor_nbytes(src));
  return t;
}

void lt_tensor_free(lt_tensor *t) {
  if (!t) return;
  if (t->owned && t->device < 0) lt_free(t->cat, t->data, lt_tensor_nbytes(t));
  free(t);
}
