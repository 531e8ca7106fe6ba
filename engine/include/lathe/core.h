/* lathe/core.h — status codes, error messages, the counting allocator, the counter-based RNG.
 *
 * Usage:
 *   lt_err err = {0};
 *   float *w = lt_alloc(LT_MEM_WEIGHTS, n * sizeof(float), &err);
 *   if (!w) { fprintf(stderr, "%s\n", err.msg); return err.status; }
 *   ...
 *   lt_free(LT_MEM_WEIGHTS, w, n * sizeof(float));
 *   lt_mem_stats s; lt_mem_get_stats(&s);   // current and peak bytes per category
 *
 * Not for: HTTP, JSON, SQLite or anything a job spec says; those live in workers/ and server/.
 * Library functions never exit or abort on bad input: they return a status and fill an lt_err
 * whose message says what went wrong and what to do next.
 */
#ifndef LATHE_CORE_H
#define LATHE_CORE_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum lt_status {
  LT_OK = 0,
  LT_ERR_INVALID,     /* bad argument, bad spec, bad data: the caller's input is wrong */
  LT_ERR_IO,          /* a file could not be read or written */
  LT_ERR_FORMAT,      /* a file or stream is malformed (ONNX, HDF5, codec stream) */
  LT_ERR_UNSUPPORTED, /* valid input that this build cannot handle (an op, a dtype, a backend) */
  LT_ERR_NOMEM,       /* an allocation failed or a memory cap was hit */
  LT_ERR_CANCELLED,   /* a callback asked to stop */
  LT_ERR_INTERNAL     /* a broken invariant that is not the caller's fault */
} lt_status;

/* An error value: the status plus a message for a person. Functions that take an lt_err * fill
 * it only on failure; NULL is accepted where the caller does not care. */
typedef struct lt_err {
  lt_status status;
  char msg[1024];
} lt_err;

const char *lt_status_name(lt_status st);

/* Fills err (when non-NULL) and returns st, so that a failure is one line:
 *   return lt_errorf(err, LT_ERR_INVALID, "dataset %s has %d dims, expected 4 (N,C,H,W)", ...); */
lt_status lt_errorf(lt_err *err, lt_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prepends context to an existing message: "loading model.onnx: <old message>". */
lt_status lt_err_prefix(lt_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Memory categories. Every engine allocation is tagged with one; current and peak bytes per
 * category are part of every job's result. */
typedef enum lt_mem_cat {
  LT_MEM_WEIGHTS = 0,
  LT_MEM_GRADIENTS,
  LT_MEM_OPTIMIZER,
  LT_MEM_ACTIVATIONS,       /* forward values that are not kept for backward */
  LT_MEM_SAVED,             /* tensors kept for backward (the stash), codec metadata included */
  LT_MEM_WORKSPACE,         /* scratch: im2col buffers, codec scratch, reductions */
  LT_MEM_DATA,              /* input batches, loader buffers */
  LT_MEM_OTHER,
  LT_MEM_COUNT
} lt_mem_cat;

const char *lt_mem_cat_name(lt_mem_cat cat); /* "weights", "gradients", "optimizer", ... */

typedef struct lt_mem_stats {
  int64_t current[LT_MEM_COUNT]; /* bytes held now */
  int64_t peak[LT_MEM_COUNT];    /* highest value of current since the last reset */
  int64_t total_current;
  int64_t total_peak;            /* peak of the sum, not the sum of peaks */
} lt_mem_stats;

/* 64-byte aligned allocation, counted under cat. Returns NULL and fills err on failure or when
 * the optional cap (lt_mem_set_cap) would be exceeded. */
void *lt_alloc(lt_mem_cat cat, size_t bytes, lt_err *err);
void *lt_calloc(lt_mem_cat cat, size_t bytes, lt_err *err);
void lt_free(lt_mem_cat cat, void *p, size_t bytes); /* accepts NULL */
/* Keeps the first `keep` bytes of a block from lt_alloc of `bytes` and hands the rest back; the
 * block is counted under `to` from then on. Returns it (it may have moved: 16-byte aligned only
 * then), or NULL with p untouched and still counted under `from`. Pass it to lt_free as
 * (to, keep). */
void *lt_shrink(lt_mem_cat from, void *p, size_t bytes, lt_mem_cat to, size_t keep);
/* Counts bytes that live elsewhere (device memory, a codec's output) without allocating. */
void lt_mem_account(lt_mem_cat cat, int64_t delta_bytes);
void lt_mem_get_stats(lt_mem_stats *out);
void lt_mem_reset_peaks(void);
void lt_mem_set_cap(int64_t bytes); /* 0 = no cap */

/* Counter-based RNG (Philox-4x32-10): the value at (seed, stream, index) is a pure function of
 * its key, so every rank and every rerun sees the same shuffles, augmentations and inits. */
typedef struct lt_rng {
  uint64_t seed;
  uint64_t stream;
  uint64_t counter; /* next index; saved in checkpoints */
} lt_rng;

void lt_philox(uint64_t seed, uint64_t stream, uint64_t index, uint32_t out[4]);
lt_rng lt_rng_make(uint64_t seed, uint64_t stream);
uint32_t lt_rng_u32(lt_rng *r);
uint64_t lt_rng_u64(lt_rng *r);
double lt_rng_uniform(lt_rng *r);            /* [0, 1) */
float lt_rng_normal(lt_rng *r);              /* N(0, 1) */
uint64_t lt_rng_below(lt_rng *r, uint64_t n); /* uniform in [0, n), unbiased */

/* Logging goes through a callback so that `lathe run` can turn it into JSON-lines events. */
typedef enum lt_log_level { LT_LOG_DEBUG, LT_LOG_INFO, LT_LOG_WARN, LT_LOG_ERROR } lt_log_level;
typedef void (*lt_log_fn)(lt_log_level level, const char *msg, void *user);
void lt_log_set_handler(lt_log_fn fn, void *user);
void lt_log(lt_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Monotonic clock in seconds. */
double lt_now(void);

/* How busy the machine is apart from this process: lt_busy_others of two samples is the number
 * of cores that other work (other processes, and steal: a hypervisor running other guests) kept
 * busy on average between them, from /proc/stat's busy time less this process's CPU time; NAN
 * when /proc/stat cannot be read or less than 0.1 s lies between the samples. */
typedef struct lt_busy {
  double machine, self, wall; /* seconds; machine < 0: unknown */
} lt_busy;
void lt_busy_sample(lt_busy *b);
double lt_busy_others(const lt_busy *a, const lt_busy *b);

const char *lt_version(void);
/* "cpu" or "cpu cuda": the backends compiled in. */
const char *lt_backends_compiled(void);

#ifdef __cplusplus
}
#endif
#endif
