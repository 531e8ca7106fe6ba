/* Backend lookup by name. Backends are process-wide singletons: "cpu" always, "cuda[:N]" when a
 * CUDA backend is compiled in (backend/cuda/cuda_backend.cu). */
#include <stdlib.h>
#include <string.h>

#include "lathe/backend.h"
#include "lathe/config.h"

/* Defined in backend/cpu/cpu_backend.c. */
lt_backend *lt_cpu_backend(void);
/* Defined in backend/cuda/cuda_backend.cu when CUDA is built. Weak, so that a program that
 * compiles this file without the CUDA objects (the ONNX fuzz target) links and reports "cuda" as
 * unavailable. */
lt_backend *lt_cuda_backend(int device, lt_err *err) __attribute__((weak));

lt_backend *lt_backend_get(const char *name, lt_err *err) {
  if (!name || strcmp(name, "cpu") == 0) return lt_cpu_backend();
  if (strncmp(name, "cuda", 4) == 0) {
    char *end = NULL;
    long dev = name[4] == ':' ? strtol(name + 5, &end, 10) : 0;
    int well_formed =
        name[4] == '\0' || (name[4] == ':' && end != name + 5 && *end == '\0' && dev >= 0);
    if (well_formed && LATHE_HAVE_CUDA && lt_cuda_backend) return lt_cuda_backend((int)dev, err);
    if (well_formed) {
      lt_errorf(err, LT_ERR_UNSUPPORTED,
                "backend '%s' is not available: this build has backends '%s'; use \"cpu\" or "
                "rebuild where nvcc is found",
                name, lt_backends_compiled());
      return NULL;
    }
  }
  lt_errorf(err, LT_ERR_INVALID, "unknown backend '%s'; known: \"cpu\", \"cuda\", \"cuda:N\"",
            name);
  return NULL;
}
