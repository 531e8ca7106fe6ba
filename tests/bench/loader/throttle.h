/* The storage throttle shared by every reader of the benchmark (Lathe's ranks and the PyTorch
 * DataLoader processes alike): a token bucket for bandwidth plus a fixed latency per request,
 * kept in a small shared-memory file so that all processes draw from one bucket. libthrottle.so
 * (throttle.c) is LD_PRELOADed and applies it to every pread/read of the dataset file; the
 * benchmark drivers read the counters from the same file. */
#ifndef LATHE_BENCH_THROTTLE_H
#define LATHE_BENCH_THROTTLE_H
#include <stdint.h>

typedef struct throttle_state {
  uint64_t magic;                 /* THROTTLE_MAGIC once initialised */
  _Atomic int64_t next_free_ns;   /* CLOCK_MONOTONIC time at which the bandwidth is free again */
  _Atomic int64_t bytes;          /* bytes read from the dataset file, all processes */
  _Atomic int64_t requests;       /* read calls on the dataset file, all processes */
} throttle_state;

#define THROTTLE_MAGIC 0x4C54485254544C31ull /* "LTHRTTL1" */

/* Environment: LATHE_THROTTLE_SHM (state file, e.g. /dev/shm/lathe-throttle), LATHE_THROTTLE_FILE
 * (the dataset path, matched by its last component), LATHE_THROTTLE_BW (bytes/s, 0 = unlimited),
 * LATHE_THROTTLE_LAT_US (microseconds per request). */
#endif
