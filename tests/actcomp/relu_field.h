/* Post-ReLU-like test data for the codec tests (CPU: test_codec.c, GPU: tests/gpu/
 * test_cuda_codec.c): per plane a smooth field plus noise through max(0, ·), so about half the
 * values are 0 and the rest vary smoothly, as activations after a ReLU do. */
#ifndef LATHE_TEST_RELU_FIELD_H
#define LATHE_TEST_RELU_FIELD_H

#include <math.h>
#include <stdint.h>

#include "lathe/core.h"

static inline void ac_test_fill_relu(lt_rng *rng, float *x, int64_t planes, int64_t h, int64_t w) {
  for (int64_t p = 0; p < planes; p++) {
    float a = lt_rng_normal(rng), b = lt_rng_normal(rng), off = 0.3f * lt_rng_normal(rng);
    for (int64_t i = 0; i < h; i++)
      for (int64_t j = 0; j < w; j++) {
        float v = off + 0.8f * sinf(0.3f * a * (float)i + 0.2f * b * (float)j) +
                  0.3f * lt_rng_normal(rng);
        x[(p * h + i) * w + j] = v > 0 ? v : 0;
      }
  }
}

#endif
