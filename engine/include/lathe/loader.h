/* lathe/loader.h — clairvoyant, buffered, balanced HDF5 loading for data-parallel training.
 *
 * Usage (one call per rank; with MPI, rank and size come from MPI_COMM_WORLD):
 *   lt_loader_opts o = lt_loader_opts_default();
 *   o.path = "surrogate.h5"; o.x_name = "/train/x"; o.y_name = "/train/y";
 *   o.global_batch = 64; o.epochs = 10; o.seed = 1; o.buffer_fraction = 0.5;
 *   lt_err err = {0};
 *   lt_loader *ld = lt_loader_open(&o, &err);
 *   if (!ld) { fprintf(stderr, "%s\n", err.msg); return err.status; }
 *   lt_loader_batch b;
 *   while (lt_loader_next(ld, &b, &err) == LT_OK && b.n_local >= 0) {
 *     // b.x: (n_local, x_sample_bytes) raw, b.y likewise; b.indices: (n_local) sample ids
 *     // loss = SUM over local samples; then lt_loader_allreduce_grad(ld, grad, n, &err) sums over
 *     // ranks and divides by b.global_n, which is exactly the single-process mean gradient.
 *   }
 *   lt_loader_close(ld);
 *
 * The planner (lt_plan_*) is usable alone: it needs no file and no MPI, and every rank that calls
 * it with the same options gets the same plan.
 *
 * Not for: augmentation, decoding images (JPEG) or anything model-specific; it delivers the raw
 * bytes of each sample as stored (native byte order assumed).
 */
#ifndef LATHE_LOADER_H
#define LATHE_LOADER_H

#include "lathe/core.h"

#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- the planner ------------------------------------------------------------------------- */

typedef enum lt_loader_policy {
  LT_LOADER_POLICY_STATIC = 0, /* pin a balanced seed-chosen set of C samples, C/P per rank */
  LT_LOADER_POLICY_BELADY,     /* evict the sample whose next use is furthest (known from the plan) */
  LT_LOADER_POLICY_SOLAR,      /* per-rank FIFO + epoch order by an open TSP path (SOLAR paper) */
  LT_LOADER_POLICY_LRU,        /* per-rank least-recently-used */
  LT_LOADER_POLICY_NONE        /* no buffer: every sample is read from storage */
} lt_loader_policy;

typedef enum lt_loader_balance {
  LT_LOADER_BALANCE_COST = 0, /* each storage read to the rank with the lowest estimated step time */
  LT_LOADER_BALANCE_EVEN      /* storage reads split evenly over ranks (SOLAR paper) */
} lt_loader_balance;

/* "static", "belady", ... → enum; returns LT_ERR_INVALID with the accepted names otherwise. */
lt_status lt_loader_policy_parse(const char *name, lt_loader_policy *out, lt_err *err);
lt_status lt_loader_balance_parse(const char *name, lt_loader_balance *out, lt_err *err);
const char *lt_loader_policy_name(lt_loader_policy p);
const char *lt_loader_balance_name(lt_loader_balance b);

typedef struct lt_plan_opts {
  int64_t n_samples;      /* N */
  int64_t global_batch;   /* B: samples per step over all ranks; the last step of an epoch may be short */
  int64_t buffer_samples; /* C: buffered samples over all ranks (C/P per rank), 0 ≤ C ≤ N */
  int n_ranks;            /* P ≥ 1, P ≤ N */
  int epochs;             /* E ≥ 1 */
  uint64_t seed;
  lt_loader_policy policy;
  lt_loader_balance balance;
  double load_cost;    /* cost balance: estimated seconds to read one sample (> 0) */
  double compute_cost; /* cost balance: estimated seconds to compute one sample (> 0) */
} lt_plan_opts;

/* Defaults: static, cost balance, load_cost 1e-3 s, compute_cost 1e-3 s, one rank, one epoch. */
lt_plan_opts lt_plan_opts_default(void);

/* What a rank does with one sample of a step. */
enum {
  LT_PLAN_HIT = 1,   /* served from this rank's buffer (slot says where) */
  LT_PLAN_INSERT = 2 /* read from storage, then kept in this rank's buffer at slot */
};

/* One planned epoch: position p of the epoch holds sample perm[p]; it is computed on rank[p].
 * Global step s covers positions [s·B, min((s+1)·B, N)). */
typedef struct lt_plan_epoch {
  int epoch;        /* logical epoch, 0..E-1 (the order in which epochs run) */
  int perm_index;   /* which seeded permutation it runs: differs from epoch only under solar */
  int64_t n;        /* N */
  int64_t n_steps;  /* ceil(N / B) */
  uint32_t *perm;   /* (N) sample at each position, borrowed from the plan */
  uint16_t *rank;   /* (N) rank that computes the sample at each position */
  uint8_t *flags;   /* (N) LT_PLAN_HIT | LT_PLAN_INSERT bits */
  uint32_t *slot;   /* (N) buffer slot on rank[p] for hits and inserts, else UINT32_MAX */
  int64_t hits;     /* positions flagged LT_PLAN_HIT */
} lt_plan_epoch;

typedef struct lt_plan lt_plan;

/* Validates the options (clear errors for C > N, P > N, B = 0, ...) and prepares the static pin
 * set or the solar epoch order. Memory is O(N) (solar adds E·N/4 bytes of bitsets at create). */
lt_plan *lt_plan_create(const lt_plan_opts *o, lt_err *err);
void lt_plan_free(lt_plan *p);

/* Plans the next epoch in order (epochs are planned sequentially because buffer state carries
 * over). The returned view is valid until the next call. Returns NULL with err set after the last
 * epoch or on failure. */
const lt_plan_epoch *lt_plan_next_epoch(lt_plan *p, lt_err *err);

/* Updates the cost estimates used for the epochs planned from now on. Every rank must pass the
 * same values (the loader all-reduces its measurements first) or the plans diverge. */
void lt_plan_set_costs(lt_plan *p, double load_cost, double compute_cost);

/* The seeded permutation number k of N samples (the "reference permutation" of epoch k when no
 * reordering is in effect): perm (N). Pure function of (seed, k). */
void lt_plan_permutation(uint64_t seed, int64_t k, int64_t n, uint32_t *perm);

/* Per-rank buffer capacity in samples (C/P, the first C mod P ranks hold one more). */
int64_t lt_plan_rank_capacity(const lt_plan *p, int rank);

/* ---- the loader -------------------------------------------------------------------------- */

/* Optional hook replacing pread (a benchmark's storage throttle, a fault injector). Must behave
 * like pread: bytes read, or -1 with errno set. Called from the I/O threads concurrently. */
typedef ssize_t (*lt_loader_pread_fn)(void *user, int fd, void *buf, size_t n, off_t off);

typedef struct lt_loader_opts {
  const char *path;        /* HDF5 file */
  const char *x_name;      /* inputs dataset, e.g. "/train/x": (N, ...) */
  const char *y_name;      /* targets dataset, e.g. "/train/y": (N, ...); NULL for none */
  int64_t global_batch;
  int epochs;
  uint64_t seed;
  double buffer_fraction;  /* C = round(fraction · N), used when buffer_samples < 0 */
  int64_t buffer_samples;  /* C exactly; -1 to use buffer_fraction */
  lt_loader_policy policy;
  lt_loader_balance balance;
  int rank, n_ranks;       /* -1: from MPI_COMM_WORLD (1 process when built without MPI) */
  int io_threads;          /* pread threads per rank (≥ 1) */
  int prefetch_steps;      /* k: steps read ahead while the current step computes (≥ 1) */
  bool o_direct;           /* open with O_DIRECT and read into 4 KiB-aligned buffers */
  int64_t merge_gap;       /* merge two reads when the hole between them is at most this many bytes */
  int64_t merge_max;       /* ... and the merged read stays at most this many bytes */
  lt_loader_pread_fn pread_fn; /* NULL: pread */
  void *pread_user;
} lt_loader_opts;

/* Defaults: static, cost, buffer_fraction 0.5, rank/n_ranks from MPI, 2 I/O threads, prefetch 2,
 * no O_DIRECT, merge_gap 64 KiB, merge_max 4 MiB. */
lt_loader_opts lt_loader_opts_default(void);

/* One step's data for this rank. Views are valid until the next lt_loader_next. */
typedef struct lt_loader_batch {
  int epoch;
  int64_t step;            /* within the epoch */
  int64_t n_local;         /* samples computed on this rank this step; -1 when all epochs are done */
  int64_t global_n;        /* samples in the global batch (divide summed gradients by this) */
  const int64_t *indices;  /* (n_local) sample ids, in global-batch position order */
  const void *x;           /* (n_local, x_sample_bytes) raw bytes, 64-byte aligned */
  const void *y;           /* (n_local, y_sample_bytes) raw bytes; NULL without targets */
  int64_t hits;            /* of n_local, served from the buffer */
} lt_loader_batch;

/* A job's loader.* result fields come from here: hit_rate = hits / samples, storage_bytes,
 * storage_requests (sum them over ranks), stall_fraction = stall_s / total_s, batch_imbalance. */
typedef struct lt_loader_stats {
  int64_t steps;            /* delivered */
  int64_t samples;          /* delivered on this rank */
  int64_t hits;             /* of which from the buffer */
  int64_t storage_bytes;    /* bytes requested from storage by this rank */
  int64_t storage_requests; /* pread calls issued (after merging) */
  double stall_s;           /* time spent inside lt_loader_next (waits for reads and ranks, copies) */
  double batch_imbalance;   /* mean over steps of max/mean local batch over ranks (from the plan:
                             * the same on every rank); 1 = equal local batches */
  double total_s;           /* time since open */
} lt_loader_stats;

typedef struct lt_loader lt_loader;

/* Opens the file, validates x and y (same sample count, ≥ 1 dims), asks HDF5 once where every
 * sample lives, builds the plan and starts the I/O threads. With MPI, every rank must call it. */
lt_loader *lt_loader_open(const lt_loader_opts *o, lt_err *err);
/* Delivers the next step (see lt_loader_batch). With MPI it is collective: a failure on any rank
 * is returned on every rank, so none hangs. */
lt_status lt_loader_next(lt_loader *ld, lt_loader_batch *b, lt_err *err);
void lt_loader_get_stats(const lt_loader *ld, lt_loader_stats *out);
int64_t lt_loader_n_samples(const lt_loader *ld);
size_t lt_loader_x_sample_bytes(const lt_loader *ld);
size_t lt_loader_y_sample_bytes(const lt_loader *ld);
int lt_loader_rank(const lt_loader *ld);
int lt_loader_n_ranks(const lt_loader *ld);
void lt_loader_close(lt_loader *ld);

/* Sums g (n floats) over all ranks and divides by global_n, in place: with the loss summed over
 * local samples, the result is the single-process mean gradient of the global batch, whatever
 * the local batch sizes. Collective under MPI; a plain division on one process. */
lt_status lt_loader_allreduce_grad(float *g, size_t n, int64_t global_n, lt_err *err);

/* Collective error flag: every rank passes its own status; if any failed, every rank gets
 * a failure (the failing rank keeps its own message, others learn which rank failed). */
lt_status lt_loader_agree(lt_status local, lt_err *err);

/* This process's rank and the number of ranks (MPI_COMM_WORLD; 0 and 1 without MPI or when MPI is
 * not initialised). */
void lt_loader_world(int *rank, int *n_ranks);

#ifdef __cplusplus
}
#endif
#endif
