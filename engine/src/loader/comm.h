/* The loader's few collectives, behind one interface so that loader.c reads the same with and
 * without MPI: mpi_comm.c implements them over MPI_COMM_WORLD, loader.c has the one-process
 * versions when MPI is absent. Private to engine/src/loader. */
#ifndef LATHE_LOADER_COMM_H
#define LATHE_LOADER_COMM_H

#include "lathe/core.h"

/* Whether MPI is initialised with more than one rank (false without MPI). */
bool ld_comm_active(void);
/* Sums v (n doubles) over all ranks in place; a no-op when !ld_comm_active(). */
void ld_comm_sum(double *v, int n);
/* Sums g (n floats) over all ranks in place (the gradient all-reduce); LT_OK when inactive. */
lt_status ld_comm_sum_f32(float *g, size_t n, lt_err *err);
/* The collective error flag: returns LT_OK only if every rank passed LT_OK; a rank that passed
 * LT_OK but sees a failure elsewhere gets a message naming the lowest failing rank. */
lt_status ld_comm_agree(lt_status local, lt_err *err);

#endif
