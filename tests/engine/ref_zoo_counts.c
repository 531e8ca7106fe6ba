/* Prints "name macs params" per zoo model, for zoo_counts.py to compare with PyTorch. */
#include <stdio.h>

#include "lathe/zoo.h"

int main(void) {
  for (const char *const *n = lt_zoo_names(); *n; n++) {
    lt_err err = {0};
    lt_graph *g = lt_zoo_build(*n, NULL, &err);
    if (!g) {
      fprintf(stderr, "%s: %s\n", *n, err.msg);
      return 1;
    }
    printf("%s %lld %lld\n", *n, (long long)lt_graph_macs(g), (long long)lt_graph_params(g));
    lt_graph_free(g);
  }
  return 0;
}
