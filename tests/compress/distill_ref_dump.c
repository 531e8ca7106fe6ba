/* Writes random student/teacher logits, labels and the engine's distillation loss and gradient
 * (lt_distill_loss) for several (alpha, T), for distill_ref_check.py to recompute in PyTorch.
 * Layout (little-endian): int32 n, k, cases; float32 s (n,k), t (n,k); int32 labels (n); per case:
 * float64 alpha, temp, scale, loss; int64 correct; float32 grad (n,k). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "lathe/compress.h"

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s OUT.bin\n", argv[0]);
    return 2;
  }
  enum { N = 37, K = 10 };
  static float s[N * K], t[N * K], g[N * K];
  static int32_t y[N];
  uint64_t x = 88172645463325252ull;
  for (int i = 0; i < N * K; i++) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    s[i] = (float)((double)(x >> 11) / 9007199254740992.0 * 8 - 4);
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    t[i] = (float)((double)(x >> 11) / 9007199254740992.0 * 12 - 6);
  }
  for (int i = 0; i < N; i++) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    y[i] = (int32_t)(x % K);
  }
  /* a row where the teacher is extremely sure (p_t underflows to 0 for most classes) */
  for (int j = 0; j < K; j++) t[j] = j == 3 ? 200.0f : -200.0f;
  const double cases[][3] = {{0.9, 4, 1.0 / N}, {0.5, 1, 1}, {0, 2, 1.0 / N}, {1, 20, 0.25}};
  int nc = (int)(sizeof cases / sizeof cases[0]);
  FILE *f = fopen(argv[1], "wb");
  if (!f) return 1;
  int32_t hdr[3] = {N, K, nc};
  fwrite(hdr, sizeof hdr, 1, f);
  fwrite(s, sizeof s, 1, f);
  fwrite(t, sizeof t, 1, f);
  fwrite(y, sizeof y, 1, f);
  for (int c = 0; c < nc; c++) {
    int64_t correct = -1;
    double loss = lt_distill_loss(N, K, s, t, y, cases[c][0], cases[c][1], (float)cases[c][2], g,
                                  &correct);
    double no_grad = lt_distill_loss(N, K, s, t, y, cases[c][0], cases[c][1], 1, NULL, NULL);
    if (!(loss == no_grad)) {
      fprintf(stderr, "loss with and without the gradient differ: %g vs %g\n", loss, no_grad);
      return 1;
    }
    double rec[4] = {cases[c][0], cases[c][1], cases[c][2], loss};
    fwrite(rec, sizeof rec, 1, f);
    fwrite(&correct, sizeof correct, 1, f);
    fwrite(g, sizeof g, 1, f);
  }
  /* a bad label makes the loss NaN */
  y[5] = K;
  if (!isnan(lt_distill_loss(N, K, s, t, y, 0.9, 4, 1, g, NULL)) || !isnan(g[5 * K])) {
    fprintf(stderr, "a label out of range should give NaN\n");
    return 1;
  }
  return fclose(f) != 0;
}
