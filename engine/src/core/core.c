/* Status messages, the counting allocator, Philox RNG, logging and clocks: the pieces every other
 * engine module leans on. Counters are atomics so that kernels running under OpenMP can allocate
 * scratch without a lock. */
#include "lathe/core.h"
#include "lathe/config.h"

#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

const char *lt_status_name(lt_status st) {
  switch (st) {
  case LT_OK: return "ok";
  case LT_ERR_INVALID: return "invalid";
  case LT_ERR_IO: return "io";
  case LT_ERR_FORMAT: return "format";
  case LT_ERR_UNSUPPORTED: return "unsupported";
  case LT_ERR_NOMEM: return "nomem";
  case LT_ERR_CANCELLED: return "cancelled";
  case LT_ERR_INTERNAL: return "internal";
  }
  return "unknown";
}

lt_status lt_errorf(lt_err *err, lt_status st, const char *fmt, ...) {
  if (err) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    err->status = st;
  }
  return st;
}

lt_status lt_err_prefix(lt_err *err, const char *fmt, ...) {
  if (!err) return LT_ERR_INTERNAL;
  char prefix[512], old[sizeof err->msg];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(prefix, sizeof prefix, fmt, ap);
  va_end(ap);
  memcpy(old, err->msg, sizeof old);
  /* Built by hand: snprintf("%s: %s") trips -Wformat-truncation, and truncation is intended. */
  size_t n = strlen(prefix), cap = sizeof err->msg - 1;
  if (n > cap) n = cap;
  memcpy(err->msg, prefix, n);
  if (n + 2 <= cap) {
    memcpy(err->msg + n, ": ", 2);
    n += 2;
  }
  size_t m = strnlen(old, sizeof old - 1);
  if (m > cap - n) m = cap - n;
  memcpy(err->msg + n, old, m);
  err->msg[n + m] = '\0';
  return err->status;
}

/* ---- counting allocator ------------------------------------------------------------------ */

static _Atomic int64_t mem_current[LT_MEM_COUNT];
static _Atomic int64_t mem_peak[LT_MEM_COUNT];
static _Atomic int64_t mem_total_current;
static _Atomic int64_t mem_total_peak;
static _Atomic int64_t mem_cap;

const char *lt_mem_cat_name(lt_mem_cat cat) {
  static const char *names[LT_MEM_COUNT] = {"weights",   "gradients", "optimizer", "activations",
                                            "activations_saved", "workspace", "data", "other"};
  return (unsigned)cat < LT_MEM_COUNT ? names[cat] : "invalid";
}

static void atomic_max(_Atomic int64_t *slot, int64_t v) {
  int64_t cur = atomic_load(slot);
  while (v > cur && !atomic_compare_exchange_weak(slot, &cur, v)) {
  }
}

void lt_mem_account(lt_mem_cat cat, int64_t delta) {
  if ((unsigned)cat >= LT_MEM_COUNT) cat = LT_MEM_OTHER;
  int64_t c = atomic_fetch_add(&mem_current[cat], delta) + delta;
  int64_t t = atomic_fetch_add(&mem_total_current, delta) + delta;
  if (delta > 0) {
    atomic_max(&mem_peak[cat], c);
    atomic_max(&mem_total_peak, t);
  }
}

void *lt_alloc(lt_mem_cat cat, size_t bytes, lt_err *err) {
  int64_t cap = atomic_load(&mem_cap);
  if (cap > 0 && atomic_load(&mem_total_current) + (int64_t)bytes > cap) {
    lt_errorf(err, LT_ERR_NOMEM,
              "memory cap of %lld bytes would be exceeded by %zu more bytes of %s "
              "(%lld held); lower the batch size or raise the cap",
              (long long)cap, bytes, lt_mem_cat_name(cat), (long long)atomic_load(&mem_total_current));
    return NULL;
  }
  size_t rounded = (bytes + 63) & ~(size_t)63;
  void *p = aligned_alloc(64, rounded ? rounded : 64);
  if (!p) {
    lt_errorf(err, LT_ERR_NOMEM, "out of memory allocating %zu bytes of %s", bytes,
              lt_mem_cat_name(cat));
    return NULL;
  }
  lt_mem_account(cat, (int64_t)bytes);
  return p;
}

void *lt_calloc(lt_mem_cat cat, size_t bytes, lt_err *err) {
  void *p = lt_alloc(cat, bytes, err);
  if (p) memset(p, 0, bytes);
  return p;
}

void lt_free(lt_mem_cat cat, void *p, size_t bytes) {
  if (!p) return;
  free(p);
  lt_mem_account(cat, -(int64_t)bytes);
}

void *lt_shrink(lt_mem_cat from, void *p, size_t bytes, lt_mem_cat to, size_t keep) {
  if (!p || keep > bytes) return NULL;
  /* glibc shrinks in place (a split heap chunk, or mremap of a mapped one); the block may still
   * move, and then only malloc's alignment is promised */
  void *q = realloc(p, keep ? keep : 1);
  if (!q) return NULL;
  lt_mem_account(from, -(int64_t)bytes);
  lt_mem_account(to, (int64_t)keep);
  return q;
}

void lt_mem_get_stats(lt_mem_stats *out) {
  for (int i = 0; i < LT_MEM_COUNT; i++) {
    out->current[i] = atomic_load(&mem_current[i]);
    out->peak[i] = atomic_load(&mem_peak[i]);
  }
  out->total_current = atomic_load(&mem_total_current);
  out->total_peak = atomic_load(&mem_total_peak);
}

void lt_mem_reset_peaks(void) {
  for (int i = 0; i < LT_MEM_COUNT; i++) atomic_store(&mem_peak[i], atomic_load(&mem_current[i]));
  atomic_store(&mem_total_peak, atomic_load(&mem_total_current));
}

void lt_mem_set_cap(int64_t bytes) { atomic_store(&mem_cap, bytes > 0 ? bytes : 0); }

/* ---- Philox-4x32-10 (Salmon et al., SC'11) ----------------------------------------------- */

void lt_philox(uint64_t seed, uint64_t stream, uint64_t index, uint32_t out[4]) {
  uint32_t c0 = (uint32_t)index, c1 = (uint32_t)(index >> 32);
  uint32_t c2 = (uint32_t)stream, c3 = (uint32_t)(stream >> 32);
  uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
  for (int r = 0; r < 10; r++) {
    uint64_t p0 = (uint64_t)0xD2511F53u * c0;
    uint64_t p1 = (uint64_t)0xCD9E8D57u * c2;
    uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0;
    uint32_t n1 = (uint32_t)p1;
    uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
    uint32_t n3 = (uint32_t)p0;
    c0 = n0, c1 = n1, c2 = n2, c3 = n3;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  out[0] = c0, out[1] = c1, out[2] = c2, out[3] = c3;
}

lt_rng lt_rng_make(uint64_t seed, uint64_t stream) {
  lt_rng r = {seed, stream, 0};
  return r;
}

uint32_t lt_rng_u32(lt_rng *r) {
  uint32_t o[4];
  lt_philox(r->seed, r->stream, r->counter++, o);
  return o[0];
}

uint64_t lt_rng_u64(lt_rng *r) {
  uint32_t o[4];
  lt_philox(r->seed, r->stream, r->counter++, o);
  return ((uint64_t)o[1] << 32) | o[0];
}

double lt_rng_uniform(lt_rng *r) { return (double)(lt_rng_u64(r) >> 11) * 0x1.0p-53; }

float lt_rng_normal(lt_rng *r) {
  /* Box-Muller from one Philox block, so one counter step gives one normal. */
  uint32_t o[4];
  lt_philox(r->seed, r->stream, r->counter++, o);
  double u1 = ((double)(((uint64_t)o[1] << 32 | o[0]) >> 11) + 0.5) * 0x1.0p-53;
  double u2 = (double)(((uint64_t)o[3] << 32 | o[2]) >> 11) * 0x1.0p-53;
  return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

uint64_t lt_rng_below(lt_rng *r, uint64_t n) {
  if (n <= 1) return 0;
  uint64_t limit = UINT64_MAX - UINT64_MAX % n; /* reject the biased tail */
  uint64_t v;
  do v = lt_rng_u64(r);
  while (v >= limit);
  return v % n;
}

/* ---- logging, clocks, version ------------------------------------------------------------ */

static lt_log_fn log_fn;
static void *log_user;

void lt_log_set_handler(lt_log_fn fn, void *user) {
  log_fn = fn;
  log_user = user;
}

void lt_log(lt_log_level level, const char *fmt, ...) {
  char buf[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  if (log_fn) {
    log_fn(level, buf, log_user);
  } else if (level >= LT_LOG_INFO) {
    static const char *names[] = {"debug", "info", "warn", "error"};
    fprintf(stderr, "lathe %s: %s\n", names[level], buf);
  }
}

double lt_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void lt_busy_sample(lt_busy *b) {
  /* cpu user nice system idle iowait irq softirq steal, in clock ticks */
  unsigned long long v[8] = {0};
  FILE *f = fopen("/proc/stat", "r");
  int n = f ? fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
                     &v[4], &v[5], &v[6], &v[7])
            : 0;
  if (f) fclose(f);
  long hz = sysconf(_SC_CLK_TCK);
  b->machine = n == 8 && hz > 0 ? (double)(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / (double)hz
                                : -1;
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  b->self = (double)ts.tv_sec + ts.tv_nsec * 1e-9;
  b->wall = lt_now();
}

double lt_busy_others(const lt_busy *a, const lt_busy *b) {
  double dt = b->wall - a->wall;
  if (a->machine < 0 || b->machine < 0 || !(dt >= 0.1)) return NAN;
  double o = ((b->machine - a->machine) - (b->self - a->self)) / dt;
  return o > 0 ? o : 0; /* ticks (1/100 s) against nanoseconds: a little below 0 when idle */
}

const char *lt_version(void) { return LATHE_VERSION; }

const char *lt_backends_compiled(void) { return LATHE_HAVE_CUDA ? "cpu cuda" : "cpu"; }
