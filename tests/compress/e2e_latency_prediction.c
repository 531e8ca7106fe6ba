/* Predicted whole-model latency of a compressed model is within 10% of the measured one (issue 6).
 * The prediction is the job's latency model (lt_lat_model_slope): whole-model latency affine in
 * the sum of the searched layers' latencies, each layer timed alone (lt_lat_measure_layer, as
 * the profiler times table entries; layers of one shape and rank share one timing, as they
 * share a table entry), through two measured models: the dense one and a reference with every
 * layer at its smallest candidate rank. Checked at four other rank choices spread over the range
 * (second-smallest, middle, a seeded random mix and largest) on ResNet-20 (zoo weights: latency
 * does not depend on values) at batch 16 on the CPU backend.
 *
 * On a shared 2-core machine wall time swings 2-3x with the other processes, and the dense
 * model's wall latency with two threads was bimodal from run to run; so the check runs on one
 * thread and times with the process's CPU time (lt_lat_opts.cpu_time), which other processes do
 * not inflate, in interleaved rounds with each quantity the median over the rounds. What it pins
 * is the prediction model and the timing protocol. History: +10..+13% while the profiler timed
 * every block with a bias the model's bias-free convs do not have (now part of the table's key);
 * +7..+33% at the smallest ranks while every rep was one forward (a whole model's forward
 * contains the machine's small disturbances, the median of single forwards of a layer alone
 * leaves them out; every rep is now a window of at least 10 ms, profile.c LAT_WINDOW_S). Then,
 * while everything outside the layers was taken from the dense model (its latency less its
 * layers'), the fast models ran 7-29% high: a layer in the model costs about 10% more than
 * alone, so the dense model's excess is larger than a small model's (0.49-0.64 ms against
 * 0.16-0.17 ms at the smallest ranks), and the dense model's own median moves up to 8% from one
 * executor to the next (where its buffers land in the physically indexed L2), all of which the
 * subtraction carried into the smallest prediction. The affine model through both ends gave
 * -2..+2% at these four choices in the same runs.
 *
 * By hand, with threads and wall time: compress_e2e_latency THREADS WALL(0|1) [BATCH [ROUNDS]]. */
#include <stdlib.h>
#include <unistd.h>

#include "lathe/backend.h"
#include "lathe/compress.h"
#include "lathe/train.h"
#include "lathe/zoo.h"
#include "test.h"

enum { MAX_ROUNDS = 15 };
static int threads = 1, wall = 0, batch = 16, rounds = 13;

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median(const double *v, int n) {
  double t[MAX_ROUNDS];
  memcpy(t, v, sizeof(double) * (size_t)n);
  qsort(t, (size_t)n, sizeof *t, cmp);
  return t[n / 2];
}

static int same_shape(const lt_compress_layer *a, const lt_compress_layer *b) {
  return a->kind == b->kind && a->c == b->c && a->s == b->s && a->kh == b->kh && a->kw == b->kw &&
         a->in_h == b->in_h && a->in_w == b->in_w && a->out_h == b->out_h && a->out_w == b->out_w &&
         a->bias == b->bias && !memcmp(a->a.stride, b->a.stride, sizeof a->a.stride) &&
         !memcmp(a->a.pads, b->a.pads, sizeof a->a.pads) &&
         !memcmp(a->a.dilation, b->a.dilation, sizeof a->a.dilation);
}

/* Rank choices: 0 dense, 1 the reference (smallest candidates), then the checked ones. */
enum { DENSE, REF, N_MODELS = 6, MAX_LAYERS = 64 };
static const char *model_name[N_MODELS] = {"dense", "smallest (reference)", "second-smallest",
                                           "middle", "seeded mix", "largest"};

static int pick_candidate(int model, int n_cand, unsigned *seed) {
  switch (model) {
  case REF: return 0;
  case 2: return n_cand > 1;
  case 3: return n_cand / 2;
  case 4: return (int)((*seed = *seed * 1103515245u + 12345u) >> 16) % n_cand;
  default: return n_cand - 1;
  }
}

/* One timing per distinct (shape, rank): the layers' sum of model m, per round. */
typedef struct {
  int n, first[N_MODELS][MAX_LAYERS];
  double t[N_MODELS][MAX_LAYERS][MAX_ROUNDS];
} layer_times;

TEST_CASE(predicted_latency_within_10_percent) {
  lt_err err = {0};
  lt_backend *be = lt_backend_get("cpu", &err);
  lt_zoo_opts o = {.seed = 1};
  lt_graph *g[N_MODELS];
  for (int m = 0; m < N_MODELS; m++) REQUIRE((g[m] = lt_zoo_build("resnet20", &o, &err)));
  lt_compress_layer *L;
  int n;
  REQUIRE(lt_compress_layers_find(g[DENSE], 8, &L, &n, &err) == LT_OK);
  REQUIRE(n > 0 && n <= MAX_LAYERS);
  static int ranks[N_MODELS][MAX_LAYERS];
  static layer_times lt;
  unsigned seed = 12345;
  for (int m = 1; m < N_MODELS; m++) {
    /* The classifier (64 -> 10) stays dense, as the job leaves it: its factors are no faster
     * (1.3 us either way at batch 16), so the latency cap drops every rank of it. */
    for (int l = 0; l < n; l++)
      ranks[m][l] = L[l].kind == LT_COMPRESS_LINEAR ? 0
                                                    : L[l].cand[pick_candidate(m, L[l].n_cand, &seed)];
    REQUIRE(lt_compress_apply(g[m], L, n, ranks[m], &err) == LT_OK);
  }
  for (int m = 0; m < N_MODELS; m++)
    for (int l = 0; l < n; l++) {
      lt.first[m][l] = l;
      for (int j = 0; j < l && lt.first[m][l] == l; j++)
        if (same_shape(&L[j], &L[l]) && ranks[m][j] == ranks[m][l]) lt.first[m][l] = j;
    }
  lt_lat_opts lo = {.min_reps = 3, .max_reps = 5, .cpu_time = !wall};
  lt_busy b0, b1;
  lt_busy_sample(&b0);
  double whole[N_MODELS][MAX_ROUNDS];
  for (int r = 0; r < rounds; r++)
    for (int m = 0; m < N_MODELS; m++) {
      REQUIRE(lt_lat_measure_graph(g[m], be, batch, &lo, &whole[m][r], &err) == LT_OK);
      for (int l = 0; l < n; l++)
        if (lt.first[m][l] == l)
          REQUIRE(lt_lat_measure_layer(&L[l], ranks[m][l], be, batch, &lo, &lt.t[m][l][r], &err) ==
                  LT_OK);
    }
  lt_busy_sample(&b1);
  double t[N_MODELS], s[N_MODELS];
  for (int m = 0; m < N_MODELS; m++) {
    t[m] = median(whole[m], rounds), s[m] = 0;
    for (int l = 0; l < n; l++) s[m] += median(lt.t[m][lt.first[m][l]], rounds);
  }
  /* Other work on the machine (more than half a core on average; the job warns at a quarter)
   * inflates the whole models' CPU time more than the layers' (one busy thread beside it on 2
   * cores once put a fast model 18.6% high): the bound holds on a quiet machine, a looser one
   * still catches a broken model when it is not. */
  const double others = lt_busy_others(&b0, &b1);
  const double tol = others > 0.5 ? 0.40 : 0.10;
  const double k = lt_lat_model_slope(t[DENSE], t[REF], s[DENSE], s[REF]);
  printf("dense model %.3f ms (layers alone %.3f), reference %.3f ms (layers alone %.3f), slope "
         "%.3f [%s, %d thread(s), batch %d, %d rounds, other work %.2f cores]\n",
         t[DENSE], s[DENSE], t[REF], s[REF], k, wall ? "wall time" : "CPU time", threads, batch,
         rounds, others);
  CHECK_MSG(k > 0.9 && k < 1.3, "slope %.3f: the layers alone should sum to about the model", k);
  for (int m = REF + 1; m < N_MODELS; m++) {
    double pred = t[REF] + k * (s[m] - s[REF]), err_m = (pred - t[m]) / t[m];
    printf("  %-16s layers alone %.3f ms, predicted %.3f ms, measured %.3f ms (%+.1f%%)\n",
           model_name[m], s[m], pred, t[m], 100 * err_m);
    CHECK_MSG(fabs(err_m) <= tol, "%s: prediction off by %.1f%% (bound %.0f%%)", model_name[m],
              100 * err_m, 100 * tol);
  }
  free(L);
  for (int m = 0; m < N_MODELS; m++) lt_graph_free(g[m]);
}

int main(int argc, char **argv) {
  if (argc > 1) threads = atoi(argv[1]);
  if (argc > 2) wall = atoi(argv[2]);
  if (argc > 3) batch = atoi(argv[3]);
  if (argc > 4) rounds = atoi(argv[4]);
  if (threads < 1 || batch < 1 || rounds < 1 || rounds > MAX_ROUNDS) {
    fprintf(stderr, "usage: %s [THREADS [WALL(0|1) [BATCH [ROUNDS <= %d]]]]\n", argv[0],
            MAX_ROUNDS);
    return 2;
  }
  /* CPU time is immune to waiting for a core but not to sharing the caches and memory bus: with
   * more than eight runnable threads per core (other builds, test suites, training runs) the
   * standalone layers and the whole model are slowed unequally (seen at load 20 on 2 cores), so
   * the check skips then, saying so. It runs, and has caught a real fault, below that. */
  double load = 0;
  FILE *f = fopen("/proc/loadavg", "r");
  if (f && fscanf(f, "%lf", &load) != 1) load = 0;
  if (f) fclose(f);
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  if (load > 8.0 * (double)cores) {
    printf("skip: load average %.1f on %ld cores; latency cannot be compared here now\n", load,
           cores);
    return 77;
  }
  lt_train_set_threads(threads);
  RUN(predicted_latency_within_10_percent);
  return test_summary();
}
