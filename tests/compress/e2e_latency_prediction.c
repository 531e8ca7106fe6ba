/* Predicted whole-model latency of a compressed model is within 10% of the measured one. The
 * prediction is the job's: the dense model's measured latency, minus the latency of each
 * factorised layer's dense conv, plus that of its Tucker-2 block at the chosen rank, each timed
 * alone (lt_lat_measure_layer, as the profiler times table entries). ResNet-20 (zoo weights:
 * latency does not depend on values) at batch 16 on the CPU backend.
 *
 * The machine is shared by several builds, and its speed drifts by 2x over seconds, so every
 * quantity is measured in interleaved rounds and each takes its median over the rounds: drift
 * then hits all of them alike instead of whichever happened to run during a busy second. When
 * the machine is oversubscribed (1-minute load above twice its cores) no timing means anything
 * and the test skips (77) saying so. */
#include <unistd.h>

#include "lathe/backend.h"
#include "lathe/compress.h"
#include "lathe/zoo.h"
#include "test.h"

enum { ROUNDS = 9, BATCH = 16 };

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp);
  return v[n / 2];
}

TEST_CASE(predicted_latency_within_10_percent_of_measured) {
  lt_err err = {0};
  lt_backend *be = lt_backend_get("cpu", &err);
  lt_zoo_opts o = {.seed = 1};
  lt_graph *g = lt_zoo_build("resnet20", &o, &err), *h = lt_zoo_build("resnet20", &o, &err);
  REQUIRE(g && h);
  lt_compress_layer *L;
  int n;
  REQUIRE(lt_compress_layers_find(g, 8, &L, &n, &err) == LT_OK);
  int ranks[64];
  for (int l = 0; l < n; l++) ranks[l] = L[l].cand[L[l].n_cand / 2]; /* a middle candidate */
  REQUIRE(lt_compress_apply(h, L, n, ranks, &err) == LT_OK);
  lt_lat_opts lo = {.min_reps = 3, .max_reps = 5};
  double before[ROUNDS], after[ROUNDS], dense[64][ROUNDS], block[64][ROUNDS];
  for (int r = 0; r < ROUNDS; r++) {
    REQUIRE(lt_lat_measure_graph(g, be, BATCH, &lo, &before[r], &err) == LT_OK);
    for (int l = 0; l < n; l++) {
      REQUIRE(lt_lat_measure_layer(&L[l], 0, be, BATCH, &lo, &dense[l][r], &err) == LT_OK);
      REQUIRE(lt_lat_measure_layer(&L[l], ranks[l], be, BATCH, &lo, &block[l][r], &err) == LT_OK);
    }
    REQUIRE(lt_lat_measure_graph(h, be, BATCH, &lo, &after[r], &err) == LT_OK);
  }
  double pred = median(before, ROUNDS), meas = median(after, ROUNDS);
  printf("dense model %.2f ms", pred);
  for (int l = 0; l < n; l++) pred += median(block[l], ROUNDS) - median(dense[l], ROUNDS);
  printf(", compressed: predicted %.2f ms, measured %.2f ms (%+.1f%%)\n", pred, meas,
         100 * (pred - meas) / meas);
  CHECK_MSG(fabs(pred - meas) <= 0.10 * meas, "prediction off by %.1f%%",
            100 * (pred - meas) / meas);
  free(L);
  lt_graph_free(g);
  lt_graph_free(h);
}

int main(void) {
  double load = 0;
  FILE *f = fopen("/proc/loadavg", "r");
  if (f && fscanf(f, "%lf", &load) != 1) load = 0;
  if (f) fclose(f);
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  if (load > 2.0 * (double)cores) {
    printf("skip: load average %.1f on %ld cores; latency cannot be measured here now\n", load,
           cores);
    return 77;
  }
  RUN(predicted_latency_within_10_percent_of_measured);
  return test_summary();
}
