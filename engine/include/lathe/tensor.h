/* lathe/tensor.h — dense n-dimensional arrays in host or device memory.
 *
 * Usage:
 *   int64_t shape[4] = {128, 3, 32, 32};
 *   lt_tensor *x = lt_tensor_new(LT_F32, 4, shape, LT_MEM_DATA, &err);   // zeroed
 *   float *p = lt_tensor_f32(x);
 *   lt_tensor_free(x);
 *
 * Not for: broadcasting arithmetic or autograd; tensors are storage, ops live in the graph.
 */
#ifndef LATHE_TENSOR_H
#define LATHE_TENSOR_H

#include "lathe/core.h"

#ifdef __cplusplus
extern "C" {
#endif

#define LT_MAX_DIMS 8

typedef enum lt_dtype { LT_F32 = 0, LT_U8, LT_I32, LT_I64 } lt_dtype;

size_t lt_dtype_size(lt_dtype t);
const char *lt_dtype_name(lt_dtype t); /* "float32", "uint8", "int32", "int64" */

typedef struct lt_tensor {
  lt_dtype dtype;
  int ndim;
  int64_t shape[LT_MAX_DIMS];
  void *data;     /* dense, row-major; host memory when device < 0, else memory of that device */
  lt_mem_cat cat; /* category the bytes are counted under */
  int owned;      /* 1: lt_tensor_free releases data; 0: a view of someone else's buffer */
  int device;     /* -1 host, >= 0 device index of the backend that owns data */
} lt_tensor;

lt_tensor *lt_tensor_new(lt_dtype dtype, int ndim, const int64_t *shape, lt_mem_cat cat,
                         lt_err *err);
/* A non-owning header over existing host memory. */
lt_tensor lt_tensor_wrap(lt_dtype dtype, int ndim, const int64_t *shape, void *data);
lt_tensor *lt_tensor_clone(const lt_tensor *t, lt_mem_cat cat, lt_err *err);
void lt_tensor_free(lt_tensor *t); /* accepts NULL */

int64_t lt_shape_numel(int ndim, const int64_t *shape);
int64_t lt_tensor_numel(const lt_tensor *t);
size_t lt_tensor_nbytes(const lt_tensor *t);
int lt_shape_equal(int na, const int64_t *a, int nb, const int64_t *b);
/* "(128, 3, 32, 32)" into buf; returns buf. */
char *lt_shape_str(int ndim, const int64_t *shape, char *buf, size_t cap);

static inline float *lt_tensor_f32(const lt_tensor *t) { return (float *)t->data; }

#ifdef __cplusplus
}
#endif
#endif
