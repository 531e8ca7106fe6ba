/* The CPU backend: host memory through the counting allocator, and each node run by its op
 * descriptor's CPU entry points (which call the kernels of kernels.h). Op logic that does not
 * depend on the backend (shapes, geometry, what to save) stays in ops/, so other backends reuse
 * it. */
#include <cblas.h>
#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "ops/ops.h"

lt_backend *lt_cpu_backend(void);

int lt_cpu_threads(void) { return omp_get_max_threads(); }

void lt_cpu_run_split(int n, void (*fn)(void *user, int t), void *user) {
  if (n < 1) return;
  const int blas = openblas_get_num_threads();
  openblas_set_num_threads(1);
#pragma omp parallel for num_threads(n) schedule(static, 1)
  for (int t = 0; t < n; t++) {
    omp_set_num_threads(1); /* this implicit task's regions: one thread (not inherited past it) */
    fn(user, t);
  }
  openblas_set_num_threads(blas);
}

static int cpu_supports(lt_backend *be, const lt_graph *g, int node) {
  const lt_op_desc *d = lt_op_get(g->nodes[node].op);
  return d && d->fwd_cpu;
}

static void *cpu_alloc(lt_backend *be, size_t bytes, lt_mem_cat cat, lt_err *err) {
  return lt_alloc(cat, bytes, err);
}

static void cpu_free(lt_backend *be, void *p, size_t bytes, lt_mem_cat cat) {
  lt_free(cat, p, bytes);
}

static lt_status cpu_copy(lt_backend *be, void *dst, const void *src, size_t bytes, lt_err *err) {
  if (bytes) memmove(dst, src, bytes);
  return LT_OK;
}

static lt_status cpu_memset0(lt_backend *be, void *p, size_t bytes, lt_err *err) {
  if (bytes) memset(p, 0, bytes);
  return LT_OK;
}

static size_t cpu_workspace_bytes(lt_backend *be, const lt_graph *g, int node, int batch) {
  const lt_op_desc *d = lt_op_get(g->nodes[node].op);
  return d && d->ws_cpu ? d->ws_cpu(g, &g->nodes[node], batch) : 0;
}

static lt_status cpu_forward(lt_backend *be, lt_node_ctx *ctx, lt_err *err) {
  const lt_node *n = &ctx->g->nodes[ctx->node];
  const lt_op_desc *d = lt_op_get(n->op);
  if (!d || !d->fwd_cpu)
    return lt_op_fail(err, LT_ERR_UNSUPPORTED, n, "the CPU backend cannot run this op");
  return d->fwd_cpu(ctx, err);
}

static lt_status cpu_backward(lt_backend *be, lt_node_ctx *ctx, lt_err *err) {
  const lt_node *n = &ctx->g->nodes[ctx->node];
  const lt_op_desc *d = lt_op_get(n->op);
  if (!d || !d->bwd_cpu)
    return lt_op_fail(err, LT_ERR_UNSUPPORTED, n, "the CPU backend has no backward for this op");
  return d->bwd_cpu(ctx, err);
}

static lt_status cpu_synchronize(lt_backend *be, lt_err *err) { return LT_OK; }

static void cpu_destroy(lt_backend *be) {}

static const lt_backend_vtbl cpu_vtbl = {
    .name = "cpu",
    .supports = cpu_supports,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .to_device = cpu_copy,
    .to_host = cpu_copy,
    .memset0 = cpu_memset0,
    .workspace_bytes = cpu_workspace_bytes,
    .forward = cpu_forward,
    .backward = cpu_backward,
    .synchronize = cpu_synchronize,
    .destroy = cpu_destroy,
};

/* "Intel(R) Xeon(R) ... , 2 cores": what latency profiles and benchmarks are keyed by. */
static void cpu_describe(char *buf, size_t cap) {
  char model[200] = "unknown CPU";
  FILE *f = fopen("/proc/cpuinfo", "r");
  if (f) {
    char line[512];
    while (fgets(line, sizeof line, f)) {
      char *colon = strchr(line, ':');
      if (strncmp(line, "model name", 10) == 0 && colon) {
        snprintf(model, sizeof model, "%s", colon + 2);
        model[strcspn(model, "\n")] = '\0';
        break;
      }
    }
    fclose(f);
  }
  snprintf(buf, cap, "%s, %ld cores", model, sysconf(_SC_NPROCESSORS_ONLN));
}

static lt_backend cpu_be = {.vt = &cpu_vtbl, .device = -1};
static pthread_once_t cpu_once = PTHREAD_ONCE_INIT;

static void cpu_init(void) { cpu_describe(cpu_be.description, sizeof cpu_be.description); }

lt_backend *lt_cpu_backend(void) {
  pthread_once(&cpu_once, cpu_init);
  return &cpu_be;
}
