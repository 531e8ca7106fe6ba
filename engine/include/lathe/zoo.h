/* lathe/zoo.h — ready-made models built as lathe graphs, initialised from the counter-based RNG.
 *
 * Usage:
 *   lt_zoo_opts o = {.seed = 1};                      // zeros mean "the model's default"
 *   lt_graph *g = lt_zoo_build("resnet20", &o, &err); // input "input" (3, 32, 32), output "logits"
 *   ... lt_graph_macs(g) == 40551040, lt_graph_params(g) == 269722 ...
 *   lt_graph_free(g);
 *
 * Models: resnet20, resnet32, resnet56 (CIFAR ResNets of He et al. 2016, option-A shortcuts as in
 * Yerlan Idelbayev's pytorch_resnet_cifar10, parameter names as in its state_dict), vgg16 (with
 * batch norm, for 32x32), smallcnn (28x28x1: conv32-bn-relu-pool, conv64-bn-relu-pool,
 * linear 128, relu, linear 10), unet (2-level encoder-decoder with nearest upsampling and concat
 * skips, per-pixel regression output "output"). Conv and linear weights are Kaiming-normal
 * (fan-in, gain sqrt 2), biases uniform in +-1/sqrt(fan_in), BN gamma 1, beta 0.
 *
 * Not for: loading ONNX models (lathe/onnx.h) or training (lathe/train.h).
 */
#ifndef LATHE_ZOO_H
#define LATHE_ZOO_H

#include "lathe/graph.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lt_zoo_opts {
  int in_channels;   /* 0: 3 for resnet/vgg, 1 for smallcnn and unet */
  int num_classes;   /* classifiers; 0: 10 */
  int out_channels;  /* unet: output channels; 0: 1 */
  int height, width; /* input size; 0: 32x32 (smallcnn 28x28); unet needs multiples of 4 */
  int base_width;    /* unet: channels of the first level; 0: 16 */
  uint64_t seed;     /* initialisation: parameter i draws from lt_rng_make(seed, i) */
} lt_zoo_opts;

/* NULL opts means all defaults. Returns NULL with err filled for an unknown name or options
 * the model cannot take. */
lt_graph *lt_zoo_build(const char *name, const lt_zoo_opts *opts, lt_err *err);

/* The names lt_zoo_build knows, NULL-terminated. */
const char *const *lt_zoo_names(void);

#ifdef __cplusplus
}
#endif
#endif
