/* The loader's collectives over MPI_COMM_WORLD: the error flag that keeps ranks from hanging when
 * one fails, the sum used to agree on cost estimates, and the gradient sum. Built only when
 * MPI was found; the one-process versions live in loader.c. */
#include "lathe/loader.h"
#include "loader/comm.h"

#include <mpi.h>

void lt_loader_world(int *rank, int *n_ranks) {
  int init = 0, fin = 0;
  MPI_Initialized(&init);
  MPI_Finalized(&fin);
  *rank = 0;
  *n_ranks = 1;
  if (init && !fin) {
    MPI_Comm_rank(MPI_COMM_WORLD, rank);
    MPI_Comm_size(MPI_COMM_WORLD, n_ranks);
  }
}

bool ld_comm_active(void) {
  int rank, size;
  lt_loader_world(&rank, &size);
  return size > 1;
}

void ld_comm_sum(double *v, int n) {
  if (ld_comm_active()) MPI_Allreduce(MPI_IN_PLACE, v, n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
}

lt_status ld_comm_agree(lt_status local, lt_err *err) {
  if (!ld_comm_active()) return local;
  int rank, size;
  lt_loader_world(&rank, &size);
  /* MIN over "first failing rank" (size when fine) names one culprit on every rank */
  int mine = local == LT_OK ? size : rank, first = size;
  MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  if (first == size) return LT_OK;
  if (local != LT_OK) return local;
  return lt_errorf(err, LT_ERR_IO,
                   "rank %d of %d failed (its own log says why); this rank stops with it so that "
                   "no rank waits forever", first, size);
}

lt_status ld_comm_sum_f32(float *g, size_t n, lt_err *err) {
  if (!ld_comm_active()) return LT_OK;
  /* MPI counts are int: reduce in pieces of at most 2^30 floats */
  for (size_t off = 0; off < n;) {
    int m = n - off > (1u << 30) ? (1 << 30) : (int)(n - off);
    int rc = MPI_Allreduce(MPI_IN_PLACE, g + off, m, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    if (rc != MPI_SUCCESS)
      return lt_errorf(err, LT_ERR_IO, "MPI_Allreduce of %d gradient floats failed (code %d)", m, rc);
    off += (size_t)m;
  }
  return LT_OK;
}
