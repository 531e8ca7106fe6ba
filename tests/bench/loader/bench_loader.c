/* Loader benchmark, one process per rank (mpirun -np 4): runs the Lathe loader over a dataset for
 * a few epochs, dropping the file's cached pages before each epoch, optionally simulating compute
 * per sample, and prints one JSON line per epoch with the figures of the issue: samples/s,
 * storage bytes and requests, hit rate, stall fraction, p50/p99 step time, max/mean local batch,
 * and the bound T. Storage counters come from the shared throttle (throttle.h) when it is in use,
 * so that Lathe and the PyTorch baselines are counted by the same code.
 *
 *   loader_bench --file F --batch 32 --epochs 3 --fraction 0.5 [--policy static] [--balance cost]
 *                [--io-threads 2] [--prefetch 4] [--o-direct] [--compute-us 0] [--bw B --lat-us L]
 *   loader_bench --file F --batch 32 --epochs 3 --dump-perm DIR   (the permutations, for Python)
 */
#define _GNU_SOURCE
#include "lathe/config.h"
#include "lathe/loader.h"
#include "throttle.h"

#include <fcntl.h>
#include <math.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#if LATHE_HAVE_MPI
#include <mpi.h>
#endif

static int rank = 0, size = 1;

static void barrier(void) {
#if LATHE_HAVE_MPI
  MPI_Barrier(MPI_COMM_WORLD);
#endif
}

/* element-wise reduction to rank 0 (op: 0 sum, 1 max) */
static void reduce_d(double *v, int n, int op) {
#if LATHE_HAVE_MPI
  MPI_Allreduce(MPI_IN_PLACE, v, n, MPI_DOUBLE, op ? MPI_MAX : MPI_SUM, MPI_COMM_WORLD);
#endif
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static void drop_cache(const char *path) {
  int fd = open(path, O_RDONLY);
  if (fd < 0) return;
  fdatasync(fd);
  posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  close(fd);
}

static throttle_state *map_throttle(void) {
  const char *shm = getenv("LATHE_THROTTLE_SHM");
  if (!shm) return NULL;
  int fd = open(shm, O_RDWR | O_CREAT, 0600);
  if (fd < 0 || ftruncate(fd, sizeof(throttle_state)) != 0) return NULL;
  void *p = mmap(NULL, sizeof(throttle_state), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  return p == MAP_FAILED ? NULL : p;
}

int main(int argc, char **argv) {
#if LATHE_HAVE_MPI
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
#endif
  lt_loader_opts o = lt_loader_opts_default();
  o.global_batch = 32;
  o.epochs = 3;
  o.prefetch_steps = 4;
  double compute_us = 0, bw = 0, lat_us = 0;
  const char *dump = NULL, *label = "lathe";
  static const struct option opts[] = {
      {"file", 1, 0, 'f'},     {"batch", 1, 0, 'b'},      {"epochs", 1, 0, 'e'},
      {"fraction", 1, 0, 'c'}, {"policy", 1, 0, 'p'},     {"balance", 1, 0, 'B'},
      {"io-threads", 1, 0, 't'}, {"prefetch", 1, 0, 'k'}, {"o-direct", 0, 0, 'd'},
      {"compute-us", 1, 0, 'u'}, {"bw", 1, 0, 'w'},       {"lat-us", 1, 0, 'l'},
      {"dump-perm", 1, 0, 'D'}, {"seed", 1, 0, 's'},      {"label", 1, 0, 'L'},
      {0, 0, 0, 0}};
  lt_err err = {0};
  int c;
  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (c) {
    case 'f': o.path = optarg; break;
    case 'b': o.global_batch = atoll(optarg); break;
    case 'e': o.epochs = atoi(optarg); break;
    case 'c': o.buffer_fraction = atof(optarg); break;
    case 'p':
      if (lt_loader_policy_parse(optarg, &o.policy, &err)) goto bad;
      break;
    case 'B':
      if (lt_loader_balance_parse(optarg, &o.balance, &err)) goto bad;
      break;
    case 't': o.io_threads = atoi(optarg); break;
    case 'k': o.prefetch_steps = atoi(optarg); break;
    case 'd': o.o_direct = true; break;
    case 'u': compute_us = atof(optarg); break;
    case 'w': bw = atof(optarg); break;
    case 'l': lat_us = atof(optarg); break;
    case 'D': dump = optarg; break;
    case 's': o.seed = strtoull(optarg, NULL, 10); break;
    case 'L': label = optarg; break;
    default: snprintf(err.msg, sizeof err.msg, "unknown option"); goto bad;
    }
  }
  if (!o.path) {
    snprintf(err.msg, sizeof err.msg, "--file is required");
    goto bad;
  }
  lt_loader *ld = lt_loader_open(&o, &err);
  if (!ld) goto bad;
  int64_t N = lt_loader_n_samples(ld), B = o.global_batch, steps = (N + B - 1) / B;
  if (dump) {
    /* the reference permutations, raw uint32 per epoch, for the Python baselines */
    uint32_t *perm = malloc((size_t)N * 4);
    for (int e = 0; e < o.epochs && rank == 0; e++) {
      char p[4096];
      snprintf(p, sizeof p, "%s/perm_%d.u32", dump, e);
      lt_plan_permutation(o.seed, e, N, perm);
      FILE *f = fopen(p, "wb");
      if (!f || fwrite(perm, 4, (size_t)N, f) != (size_t)N) {
        fprintf(stderr, "cannot write %s\n", p);
        return 1;
      }
      fclose(f);
    }
    free(perm);
    lt_loader_close(ld);
#if LATHE_HAVE_MPI
    MPI_Finalize();
#endif
    return 0;
  }
  throttle_state *thr = map_throttle();
  double *step_s = malloc((size_t)steps * sizeof(double)), *nloc = malloc((size_t)steps * sizeof(double));
  double *nmax = malloc((size_t)steps * sizeof(double));
  /* storage reads per rank and step: the step cost when loading dominates */
  double *rsum = malloc((size_t)steps * sizeof(double)), *rmax = malloc((size_t)steps * sizeof(double));
  size_t sample_bytes = lt_loader_x_sample_bytes(ld) + lt_loader_y_sample_bytes(ld);
  lt_loader_batch b;
  lt_loader_stats s0, s1;
  for (int e = 0; e < o.epochs; e++) {
    barrier();
    if (rank == 0) drop_cache(o.path);
    barrier();
    int64_t tb0 = thr ? thr->bytes : 0, tr0 = thr ? thr->requests : 0;
    lt_loader_get_stats(ld, &s0);
    double t0 = lt_now(), last = t0;
    for (int64_t s = 0; s < steps; s++) {
      if (lt_loader_next(ld, &b, &err) != LT_OK) goto bad;
      if (compute_us > 0) {
        double us = compute_us * (double)b.n_local;
        struct timespec ts = {(time_t)(us / 1e6), (long)(fmod(us, 1e6) * 1e3)};
        nanosleep(&ts, NULL);
      }
      double now = lt_now();
      step_s[s] = now - last;
      last = now;
      nloc[s] = nmax[s] = (double)b.n_local;
      rsum[s] = rmax[s] = (double)(b.n_local - b.hits);
    }
    double epoch_s = lt_now() - t0;
    lt_loader_get_stats(ld, &s1);
    double sums[5] = {(double)(s1.hits - s0.hits), (double)(s1.samples - s0.samples),
                      s1.stall_s - s0.stall_s, (double)(s1.storage_bytes - s0.storage_bytes),
                      (double)(s1.storage_requests - s0.storage_requests)};
    reduce_d(sums, 5, 0);
    reduce_d(&epoch_s, 1, 1);
    reduce_d(step_s, (int)steps, 1);
    reduce_d(nloc, (int)steps, 0);
    reduce_d(nmax, (int)steps, 1);
    reduce_d(rsum, (int)steps, 0);
    reduce_d(rmax, (int)steps, 1);
    barrier();
    int64_t tbytes = thr ? thr->bytes - tb0 : (int64_t)sums[3];
    int64_t treq = thr ? thr->requests - tr0 : (int64_t)sums[4];
    if (rank == 0) {
      double imb = 0, worst = 0, rimb = 0;
      int64_t rsteps = 0;
      for (int64_t s = 0; s < steps; s++) {
        double r = nmax[s] / (nloc[s] / size);
        imb += r / (double)steps;
        if (r > worst) worst = r;
        if (rsum[s] > 0) rimb += rmax[s] / (rsum[s] / size), rsteps++;
      }
      rimb = rsteps ? rimb / (double)rsteps : 1.0;
      qsort(step_s, (size_t)steps, sizeof(double), cmp_d);
      double h = sums[0] / sums[1];
      /* T: storage time at the throttle's bandwidth, plus latency spread over the readers in
       * flight at once (ranks × I/O threads); or compute, whichever is longer */
      double storage_t = bw > 0 ? (double)tbytes / bw + (double)treq * lat_us * 1e-6 / (size * o.io_threads) : 0;
      double compute_t = compute_us * 1e-6 * (double)N / size;
      double bound = storage_t > compute_t ? storage_t : compute_t;
      printf("{\"impl\":\"%s\",\"policy\":\"%s\",\"balance\":\"%s\",\"fraction\":%.2f,\"ranks\":%d,"
             "\"o_direct\":%s,\"epoch\":%d,\"epoch_s\":%.4f,\"samples_per_s\":%.1f,"
             "\"storage_bytes\":%lld,\"storage_requests\":%lld,\"dataset_bytes\":%lld,"
             "\"hit_rate\":%.4f,\"stall_fraction\":%.4f,\"p50_step_s\":%.5f,\"p99_step_s\":%.5f,"
             "\"batch_max_over_mean\":%.3f,\"batch_max_over_mean_worst\":%.3f,"
             "\"reads_max_over_mean\":%.3f,\"bound_s\":%.4f}\n",
             label, lt_loader_policy_name(o.policy), lt_loader_balance_name(o.balance),
             o.buffer_fraction, size, o.o_direct ? "true" : "false", e, epoch_s, (double)N / epoch_s,
             (long long)tbytes, (long long)treq, (long long)(N * (int64_t)sample_bytes), h,
             sums[2] / (epoch_s * size), step_s[steps / 2], step_s[(steps * 99) / 100], imb, worst,
             rimb, bound);
      fflush(stdout);
    }
  }
  free(step_s);
  free(nloc);
  free(nmax);
  free(rsum);
  free(rmax);
  lt_loader_close(ld);
#if LATHE_HAVE_MPI
  MPI_Finalize();
#endif
  return 0;
bad:
  fprintf(stderr, "loader_bench (rank %d): %s\n", rank, err.msg);
#if LATHE_HAVE_MPI
  MPI_Abort(MPI_COMM_WORLD, 2);
#endif
  return 2;
}
