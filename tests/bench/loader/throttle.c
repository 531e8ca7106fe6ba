/* LD_PRELOAD shim: throttles and counts every read of one file (see throttle.h). Reads of other
 * files pass straight through. Both Lathe (pread on a plain fd) and h5py (HDF5's sec2 driver:
 * pread, or lseek + read) go through here, so both see the same storage. */
#define _GNU_SOURCE
#include "throttle.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define MAX_FD 65536
static _Atomic bool tracked[MAX_FD];
static throttle_state *state;
static const char *target; /* last path component of the dataset */
static double bw, lat_ns;

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

__attribute__((constructor)) static void throttle_init(void) {
  const char *shm = getenv("LATHE_THROTTLE_SHM");
  target = getenv("LATHE_THROTTLE_FILE");
  if (!shm || !target) return;
  const char *slash = strrchr(target, '/');
  if (slash) target = slash + 1;
  bw = getenv("LATHE_THROTTLE_BW") ? atof(getenv("LATHE_THROTTLE_BW")) : 0;
  lat_ns = getenv("LATHE_THROTTLE_LAT_US") ? atof(getenv("LATHE_THROTTLE_LAT_US")) * 1e3 : 0;
  __typeof__(&open) real_open = (__typeof__(&open))dlsym(RTLD_NEXT, "open");
  int fd = real_open(shm, O_RDWR | O_CREAT, 0600);
  if (fd < 0) return;
  if (ftruncate(fd, sizeof(throttle_state)) == 0) {
    void *p = mmap(NULL, sizeof(throttle_state), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p != MAP_FAILED) state = p; /* a fresh file is all zeros: next_free 0, counters 0 */
  }
  close(fd);
}

static void track(int fd, const char *path) {
  if (fd < 0 || fd >= MAX_FD || !state || !path) return;
  const char *slash = strrchr(path, '/');
  tracked[fd] = strcmp(slash ? slash + 1 : path, target) == 0;
}

/* Charge n bytes: wait for the shared bandwidth, then the request's own latency. */
static void charge(ssize_t n) {
  if (n < 0) return;
  atomic_fetch_add(&state->bytes, n);
  atomic_fetch_add(&state->requests, 1);
  int64_t now = now_ns(), cur = atomic_load(&state->next_free_ns), done;
  do {
    int64_t start = cur > now ? cur : now;
    done = start + (bw > 0 ? (int64_t)((double)n / bw * 1e9) : 0);
  } while (!atomic_compare_exchange_weak(&state->next_free_ns, &cur, done));
  int64_t until = done + (int64_t)lat_ns;
  struct timespec ts = {until / 1000000000, until % 1000000000};
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) != 0) {
  }
}

/* the next definition of a libc function (ours shadows it) */
#define REAL(name)                                                                                  \
  static __typeof__(&name) real_##name;                                                             \
  if (!real_##name) real_##name = (__typeof__(&name))dlsym(RTLD_NEXT, #name)

#define OPEN_WRAPPER(name)                                                                          \
  int name(const char *path, int flags, ...) {                                                     \
    REAL(name);                                                    \
    mode_t mode = 0;                                                                                \
    if (flags & (O_CREAT | O_TMPFILE)) {                                                            \
      va_list ap;                                                                                   \
      va_start(ap, flags);                                                                          \
      mode = va_arg(ap, mode_t);                                                                    \
      va_end(ap);                                                                                   \
    }                                                                                               \
    int fd = real_##name(path, flags, mode);                                                        \
    track(fd, path);                                                                                \
    return fd;                                                                                      \
  }
OPEN_WRAPPER(open)
OPEN_WRAPPER(open64)

#define OPENAT_WRAPPER(name)                                                                        \
  int name(int dirfd, const char *path, int flags, ...) {                                          \
    REAL(name);                                               \
    mode_t mode = 0;                                                                                \
    if (flags & (O_CREAT | O_TMPFILE)) {                                                            \
      va_list ap;                                                                                   \
      va_start(ap, flags);                                                                          \
      mode = va_arg(ap, mode_t);                                                                    \
      va_end(ap);                                                                                   \
    }                                                                                               \
    int fd = real_##name(dirfd, path, flags, mode);                                                 \
    track(fd, path);                                                                                \
    return fd;                                                                                      \
  }
OPENAT_WRAPPER(openat)
OPENAT_WRAPPER(openat64)

int close(int fd) {
  REAL(close);
  if (fd >= 0 && fd < MAX_FD) tracked[fd] = false;
  return real_close(fd);
}

#define PREAD_WRAPPER(name, off_type)                                                               \
  ssize_t name(int fd, void *buf, size_t n, off_type off) {                                         \
    REAL(name);                                         \
    ssize_t r = real_##name(fd, buf, n, off);                                                       \
    if (fd >= 0 && fd < MAX_FD && tracked[fd]) charge(r);                                           \
    return r;                                                                                       \
  }
PREAD_WRAPPER(pread, off_t)
PREAD_WRAPPER(pread64, off64_t)

ssize_t read(int fd, void *buf, size_t n) {
  REAL(read);
  ssize_t r = real_read(fd, buf, n);
  if (fd >= 0 && fd < MAX_FD && tracked[fd]) charge(r);
  return r;
}
