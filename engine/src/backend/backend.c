/* Backend lookup by name. Backends are process-wide singletons: "cpu" always, "cuda[:N]" when a
 * CUDA backend is compiled in (another issue adds it behind the same vtable). */
#include <string.h>

#include "lathe/backend.h"

/* Defined in backend/cpu/cpu_backend.c. */
lt_backend *lt_cpu_backend(void);

lt_backend *lt_backend_get(const char *name, lt_err *err) {
  if (!name || strcmp(name, "cpu") == 0) return lt_cpu_backend();
  if (strncmp(name, "cuda", 4) == 0) {
    lt_errorf(err, LT_ERR_UNSUPPORTED,
              "backend '%s' is not available: this build has backends '%s'; use \"cpu\" or "
              "rebuild where nvcc is found",
              name, lt_backends_compiled());
    return NULL;
  }
  lt_errorf(err, LT_ERR_INVALID, "unknown backend '%s'; known: \"cpu\", \"cuda\", \"cuda:N\"",
            name);
  return NULL;
}
