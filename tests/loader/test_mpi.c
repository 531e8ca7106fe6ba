/* Loader under MPI (run with mpirun -np 2 and -np 4): every rank plans alone, yet the ranks'
 * local batches together are exactly each global batch of the reference permutation; the bytes
 * are the file's; the summed-and-divided gradient of a linear model equals the single-process
 * gradient of the same global batch; and a failure on one rank (at open, or a read error
 * mid-epoch) reaches every rank instead of hanging them. */
#include "lathe/loader.h"
#include "test.h"
#include "fault_pread.h"

#include <errno.h>
#include <hdf5.h>
#include <mpi.h>
#include <unistd.h>

int cmd_gen_surrogate(int argc, char **argv);

#define GRID 8
#define D (2 * GRID * GRID)
static const char *path = "loader_mpi.h5";
static int rank, size;

static int cmp_i64(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

static void read_sample(hid_t ds, int64_t i, float *out) {
  hsize_t start[4] = {(hsize_t)i, 0, 0, 0}, count[4] = {1, 2, GRID, GRID};
  hid_t fs = H5Dget_space(ds), ms = H5Screate_simple(4, count, NULL);
  H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL);
  H5Dread(ds, H5T_NATIVE_FLOAT, ms, fs, H5P_DEFAULT, out);
  H5Sclose(ms);
  H5Sclose(fs);
}

/* Linear model f(x) = w·x against the target t = mean(y); loss ½(f − t)² summed over samples:
 * adds the per-sample gradient (f − t)·x to g (D). */
static void add_grad(const float *w, const float *x, const float *y, float *g) {
  float f = 0, t = 0;
  for (int k = 0; k < D; k++) f += w[k] * x[k], t += y[k];
  t /= D;
  for (int k = 0; k < D; k++) g[k] += (f - t) * x[k];
}

TEST_CASE(loader_mpi_ranks_cover_global_batches_and_gradient_matches_single_process) {
  lt_loader_opts o = lt_loader_opts_default();
  o.path = path;
  o.global_batch = 10;
  o.epochs = 3;
  o.seed = 11;
  o.buffer_fraction = 0.5;
  lt_err err = {0};
  lt_loader *ld = lt_loader_open(&o, &err);
  if (!ld) TEST_FAIL_AT("rank %d: %s", rank, err.msg);
  REQUIRE(ld);
  CHECK(lt_loader_rank(ld) == rank && lt_loader_n_ranks(ld) == size);
  int64_t N = lt_loader_n_samples(ld), B = o.global_batch;
  hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
  hid_t dx = H5Dopen2(f, "/train/x", H5P_DEFAULT), dy = H5Dopen2(f, "/train/y", H5P_DEFAULT);
  uint32_t *perm = malloc((size_t)N * 4);
  int64_t *all = malloc((size_t)B * 8), *want = malloc((size_t)B * 8);
  int *counts = malloc((size_t)size * sizeof(int)), *displs = malloc((size_t)size * sizeof(int));
  float w[D], g[D], ref[D], xs[D], ys[D];
  for (int k = 0; k < D; k++) w[k] = 0.01f * (float)((k * 7919) % 13 - 6);
  double worst_rel = 0;
  int bad = 0, max_local = 0;
  double seen_imbalance = 0;
  lt_loader_batch b;
  for (int e = 0; e < o.epochs; e++) {
    lt_plan_permutation(o.seed, e, N, perm);
    for (int64_t s = 0; s * B < N; s++) {
      REQUIRE(lt_loader_next(ld, &b, &err) == LT_OK);
      int n = (int)b.n_local;
      if (n > max_local) max_local = n;
      MPI_Allgather(&n, 1, MPI_INT, counts, 1, MPI_INT, MPI_COMM_WORLD);
      int tot = 0, most = 0;
      for (int r = 0; r < size; r++) {
        displs[r] = tot, tot += counts[r];
        if (counts[r] > most) most = counts[r];
      }
      seen_imbalance += (double)most * size / (double)tot;
      MPI_Allgatherv(b.indices, n, MPI_INT64_T, all, counts, displs, MPI_INT64_T, MPI_COMM_WORLD);
      int64_t gn = N - s * B < B ? N - s * B : B;
      if (tot != gn || b.global_n != gn) bad = 1;
      for (int64_t p = 0; p < gn; p++) want[p] = perm[s * B + p];
      qsort(all, (size_t)tot, 8, cmp_i64);
      qsort(want, (size_t)gn, 8, cmp_i64);
      if (tot == gn && memcmp(all, want, (size_t)gn * 8) != 0) bad = 2;
      /* local gradient from the delivered bytes (checked against the file on the way) */
      memset(g, 0, sizeof g);
      for (int j = 0; j < n; j++) {
        read_sample(dx, b.indices[j], xs);
        read_sample(dy, b.indices[j], ys);
        if (memcmp(xs, (const float *)b.x + j * D, sizeof xs) || memcmp(ys, (const float *)b.y + j * D, sizeof ys))
          bad = 3;
        add_grad(w, (const float *)b.x + j * D, (const float *)b.y + j * D, g);
      }
      REQUIRE(lt_loader_allreduce_grad(g, D, b.global_n, &err) == LT_OK);
      /* the single-process gradient of the same global batch, in position order */
      memset(ref, 0, sizeof ref);
      for (int64_t p = 0; p < gn; p++) {
        read_sample(dx, perm[s * B + p], xs);
        read_sample(dy, perm[s * B + p], ys);
        add_grad(w, xs, ys, ref);
      }
      for (int k = 0; k < D; k++) {
        ref[k] /= (float)gn;
        double rel = fabs(g[k] - ref[k]) / (fabs(ref[k]) + 1e-6);
        if (rel > worst_rel) worst_rel = rel;
      }
    }
    CHECK_MSG(!bad, "rank %d epoch %d: check %d failed", rank, e, bad);
  }
  CHECK(lt_loader_next(ld, &b, &err) == LT_OK && b.n_local == -1);
  lt_loader_stats st;
  lt_loader_get_stats(ld, &st);
  int64_t hits = st.hits, samples = st.samples;
  MPI_Allreduce(MPI_IN_PLACE, &hits, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
  MPI_Allreduce(MPI_IN_PLACE, &samples, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
  if (rank == 0)
    printf("  %d ranks: hit rate %.3f over %d epochs, max local batch %d of %lld, "
           "gradient max rel diff %.2e\n", size, (double)hits / samples, o.epochs, max_local,
           (long long)B, worst_rel);
  /* the same sums in another order: float reassociation only */
  CHECK(worst_rel < 1e-4);
  CHECK(samples == N * o.epochs);
  /* the plan-derived imbalance agrees with what the ranks actually got */
  double imb = st.batch_imbalance, imb_max = imb;
  MPI_Allreduce(MPI_IN_PLACE, &imb_max, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  CHECK(imb == imb_max && imb >= 1.0);
  CHECK_NEAR(imb, seen_imbalance / (double)st.steps, 1e-9);
  free(perm);
  free(all);
  free(want);
  free(counts);
  free(displs);
  H5Dclose(dx);
  H5Dclose(dy);
  H5Fclose(f);
  lt_loader_close(ld);
}

TEST_CASE(loader_mpi_open_failure_on_one_rank_fails_all) {
  lt_loader_opts o = lt_loader_opts_default();
  o.path = path;
  o.global_batch = 10;
  o.y_name = rank == size - 1 ? "/train/missing" : "/train/y";
  lt_err err = {0};
  lt_loader *ld = lt_loader_open(&o, &err);
  CHECK(ld == NULL);
  if (rank == size - 1) CHECK_STR_CONTAINS(err.msg, "not found");
  else CHECK_STR_CONTAINS(err.msg, "failed");
  lt_loader_close(ld);
}

TEST_CASE(loader_mpi_read_error_on_one_rank_reaches_every_rank) {
  lt_loader_opts o = lt_loader_opts_default();
  o.path = path;
  o.global_batch = 8;
  o.epochs = 2;
  o.policy = LT_LOADER_POLICY_NONE;
  int left = 5;
  if (rank == 1) {
    o.pread_fn = failing_pread;
    o.pread_user = &left;
  }
  lt_err err = {0};
  lt_loader *ld = lt_loader_open(&o, &err);
  REQUIRE(ld);
  lt_loader_batch b;
  lt_status st = LT_OK;
  int steps = 0;
  while (st == LT_OK && steps < 100) {
    st = lt_loader_next(ld, &b, &err);
    if (st == LT_OK && b.n_local < 0) break;
    steps++;
  }
  CHECK(st == LT_ERR_IO);
  if (rank == 1) CHECK_STR_CONTAINS(err.msg, "Input/output error");
  else CHECK_STR_CONTAINS(err.msg, "rank 1 of");
  /* every rank stopped at the same step */
  int lo = steps, hi = steps;
  MPI_Allreduce(MPI_IN_PLACE, &lo, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  MPI_Allreduce(MPI_IN_PLACE, &hi, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  CHECK(lo == hi);
  lt_loader_close(ld);
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  int gen_rc = 0;
  if (rank == 0) {
    char *args[] = {"gen-surrogate", "--out", (char *)path, "--samples", "73", "--grid", "8",
                    "--per-run", "16", "--warmup", "50", "--delta", "5", NULL};
    gen_rc = cmd_gen_surrogate(13, args);
  }
  MPI_Bcast(&gen_rc, 1, MPI_INT, 0, MPI_COMM_WORLD);
  if (gen_rc != 0) {
    MPI_Finalize();
    return 1;
  }
  RUN(loader_mpi_ranks_cover_global_batches_and_gradient_matches_single_process);
  RUN(loader_mpi_open_failure_on_one_rank_fails_all);
  if (size > 1) RUN(loader_mpi_read_error_on_one_rank_reaches_every_rank);
  int failed = test_summary();
  MPI_Allreduce(MPI_IN_PLACE, &failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) remove(path);
  MPI_Finalize();
  return failed;
}
