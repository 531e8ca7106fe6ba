/* The model zoo: CIFAR ResNets, VGG-16 with BN, a small CNN for 28x28 images and a small U-Net,
 * built node by node through the public graph API. A small builder carries the first error, so
 * each model reads as its architecture and is checked once at the end. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lathe/zoo.h"
#include "backend/cpu/kernels.h" /* LT_UPSAMPLE_* */

typedef struct zoo_builder {
  lt_graph *g;
  lt_err *err;
  uint64_t seed;
  int n_params; /* parameters created so far: the RNG stream of the next one */
  int failed;
} zoo_builder;

typedef enum zoo_init { ZOO_INIT_KAIMING, ZOO_INIT_FAN_IN_UNIFORM, ZOO_INIT_ONES, ZOO_INIT_ZEROS } zoo_init;

/* A float32 parameter initialised from (seed, parameter index). */
static int zoo_param(zoo_builder *b, const char *name, int ndim, const int64_t *shape,
                     zoo_init init, int64_t fan_in, int trainable) {
  if (b->failed) return -1;
  lt_tensor *t = lt_tensor_new(LT_F32, ndim, shape, LT_MEM_WEIGHTS, b->err);
  if (!t) {
    b->failed = 1;
    return -1;
  }
  float *p = lt_tensor_f32(t);
  int64_t n = lt_tensor_numel(t);
  lt_rng r = lt_rng_make(b->seed, (uint64_t)b->n_params++);
  double std = sqrt(2.0 / (double)fan_in), bound = 1.0 / sqrt((double)fan_in);
  for (int64_t i = 0; i < n; i++) {
    switch (init) {
    case ZOO_INIT_KAIMING: p[i] = (float)(std * lt_rng_normal(&r)); break;
    case ZOO_INIT_FAN_IN_UNIFORM: p[i] = (float)(bound * (2.0 * lt_rng_uniform(&r) - 1.0)); break;
    case ZOO_INIT_ONES: p[i] = 1.0f; break;
    case ZOO_INIT_ZEROS: p[i] = 0.0f; break;
    }
  }
  int id = lt_graph_add_param(b->g, name, t, trainable);
  if (id < 0) {
    b->failed = 1;
    lt_errorf(b->err, LT_ERR_INTERNAL, "zoo: could not add parameter '%s'", name);
  }
  return id;
}

static int zoo_node(zoo_builder *b, lt_op_type op, const char *name, const int *in, int n_in,
                    const lt_node_attrs *a) {
  if (b->failed) return -1;
  for (int i = 0; i < n_in; i++)
    if (in[i] < 0) return -1;
  int id = lt_graph_add_node(b->g, op, name, in, n_in, a, b->err);
  if (id < 0) b->failed = 1;
  return id;
}

static int zoo_conv(zoo_builder *b, const char *name, int x, int cin, int cout, int k, int stride,
                    int pad, int bias) {
  char pn[160];
  snprintf(pn, sizeof pn, "%s.weight", name);
  int64_t wshape[4] = {cout, cin, k, k}, bshape[1] = {cout};
  int64_t fan_in = (int64_t)cin * k * k;
  int in[3] = {x, zoo_param(b, pn, 4, wshape, ZOO_INIT_KAIMING, fan_in, 1), -1};
  if (bias) {
    snprintf(pn, sizeof pn, "%s.bias", name);
    in[2] = zoo_param(b, pn, 1, bshape, ZOO_INIT_FAN_IN_UNIFORM, fan_in, 1);
  }
  lt_node_attrs a = lt_attrs_conv(k, stride, pad, 1, 1);
  return zoo_node(b, LT_OP_CONV2D, name, in, bias ? 3 : 2, &a);
}

static int zoo_bn(zoo_builder *b, const char *name, int x, int c) {
  static const char *const suffix[4] = {"weight", "bias", "running_mean", "running_var"};
  static const zoo_init init[4] = {ZOO_INIT_ONES, ZOO_INIT_ZEROS, ZOO_INIT_ZEROS, ZOO_INIT_ONES};
  int in[5] = {x};
  int64_t shape[1] = {c};
  char pn[160];
  for (int i = 0; i < 4; i++) {
    snprintf(pn, sizeof pn, "%s.%s", name, suffix[i]);
    in[i + 1] = zoo_param(b, pn, 1, shape, init[i], 1, i < 2);
  }
  return zoo_node(b, LT_OP_BATCHNORM, name, in, 5, NULL);
}

static int zoo_unary(zoo_builder *b, lt_op_type op, const char *name, int x,
                     const lt_node_attrs *a) {
  return zoo_node(b, op, name, &x, 1, a);
}

static int zoo_linear(zoo_builder *b, const char *name, int x, int k, int m) {
  char pn[160];
  int64_t wshape[2] = {m, k}, bshape[1] = {m};
  snprintf(pn, sizeof pn, "%s.weight", name);
  int w = zoo_param(b, pn, 2, wshape, ZOO_INIT_KAIMING, k, 1);
  snprintf(pn, sizeof pn, "%s.bias", name);
  int bias = zoo_param(b, pn, 1, bshape, ZOO_INIT_FAN_IN_UNIFORM, k, 1);
  return zoo_node(b, LT_OP_LINEAR, name, (int[]){x, w, bias}, 3, NULL);
}

/* conv -> bn -> relu, named "<name>.conv", "<name>.bn", "<name>.relu". */
static int zoo_conv_bn_relu(zoo_builder *b, const char *name, int x, int cin, int cout) {
  char cn[160], bn[160], rn[160];
  snprintf(cn, sizeof cn, "%s.conv", name);
  snprintf(bn, sizeof bn, "%s.bn", name);
  snprintf(rn, sizeof rn, "%s.relu", name);
  x = zoo_conv(b, cn, x, cin, cout, 3, 1, 1, 0);
  x = zoo_bn(b, bn, x, cout);
  return zoo_unary(b, LT_OP_RELU, rn, x, NULL);
}

static int zoo_maxpool2(zoo_builder *b, const char *name, int x) {
  lt_node_attrs a = lt_attrs_pool(2, 2, 0);
  return zoo_unary(b, LT_OP_MAXPOOL, name, x, &a);
}

/* ---- CIFAR ResNet (option A) ------------------------------------------------------------------ */

/* BasicBlock: conv-bn-relu-conv-bn, plus the shortcut, then relu. A shortcut that changes shape
 * takes every second pixel (slice ::2) and zero-pads planes/4 channels on each side. */
static int resnet_block(zoo_builder *b, const char *pre, int x, int in_planes, int planes,
                        int stride) {
  char n1[160], n2[160], n3[160], n4[160], n5[160], n6[160];
  snprintf(n1, sizeof n1, "%s.conv1", pre);
  snprintf(n2, sizeof n2, "%s.bn1", pre);
  snprintf(n3, sizeof n3, "%s.relu1", pre);
  snprintf(n4, sizeof n4, "%s.conv2", pre);
  snprintf(n5, sizeof n5, "%s.bn2", pre);
  int y = zoo_conv(b, n1, x, in_planes, planes, 3, stride, 1, 0);
  y = zoo_bn(b, n2, y, planes);
  y = zoo_unary(b, LT_OP_RELU, n3, y, NULL);
  y = zoo_conv(b, n4, y, planes, planes, 3, 1, 1, 0);
  y = zoo_bn(b, n5, y, planes);
  int sc = x;
  if (stride != 1 || in_planes != planes) {
    lt_node_attrs s = lt_attrs_default();
    s.n_ints = 9; /* starts, ends, steps over (C, H, W) */
    int64_t sl[9] = {0, 0, 0, INT64_MAX, INT64_MAX, INT64_MAX, 1, 2, 2};
    memcpy(s.ints, sl, sizeof sl);
    snprintf(n6, sizeof n6, "%s.shortcut.slice", pre);
    sc = zoo_unary(b, LT_OP_SLICE, n6, sc, &s);
    lt_node_attrs p = lt_attrs_default();
    p.n_ints = 6; /* begins then ends over (C, H, W) */
    int64_t pd[6] = {planes / 4, 0, 0, planes / 4, 0, 0};
    memcpy(p.ints, pd, sizeof pd);
    snprintf(n6, sizeof n6, "%s.shortcut.pad", pre);
    sc = zoo_unary(b, LT_OP_PAD, n6, sc, &p);
  }
  snprintf(n6, sizeof n6, "%s.add", pre);
  y = zoo_node(b, LT_OP_ADD, n6, (int[]){y, sc}, 2, NULL);
  snprintf(n6, sizeof n6, "%s.relu2", pre);
  return zoo_unary(b, LT_OP_RELU, n6, y, NULL);
}

static int zoo_resnet(zoo_builder *b, int x, int in_ch, int classes, int depth) {
  int blocks = (depth - 2) / 6;
  x = zoo_conv(b, "conv1", x, in_ch, 16, 3, 1, 1, 0);
  x = zoo_bn(b, "bn1", x, 16);
  x = zoo_unary(b, LT_OP_RELU, "relu", x, NULL);
  int in_planes = 16;
  for (int layer = 0; layer < 3; layer++) {
    int planes = 16 << layer;
    for (int i = 0; i < blocks; i++) {
      char pre[64];
      snprintf(pre, sizeof pre, "layer%d.%d", layer + 1, i);
      x = resnet_block(b, pre, x, in_planes, planes, i == 0 && layer > 0 ? 2 : 1);
      in_planes = planes;
    }
  }
  x = zoo_unary(b, LT_OP_GLOBAL_AVGPOOL, "avgpool", x, NULL);
  x = zoo_unary(b, LT_OP_FLATTEN, "flatten", x, NULL);
  return zoo_linear(b, "linear", x, 64, classes);
}

/* ---- VGG-16 with BN for 32x32 (features of 13 convs, 5 pools; one linear classifier) ----------- */

static int zoo_vgg16(zoo_builder *b, int x, int in_ch, int classes, int h, int w) {
  static const int cfg[] = {64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0,
                            512, 512, 512, 0};
  int c = in_ch, conv_i = 0, pool_i = 0;
  for (size_t i = 0; i < sizeof cfg / sizeof cfg[0]; i++) {
    char name[64];
    if (cfg[i] == 0) {
      snprintf(name, sizeof name, "features.pool%d", pool_i++);
      x = zoo_maxpool2(b, name, x);
      h /= 2, w /= 2;
      continue;
    }
    char cn[64], bn[64], rn[64];
    snprintf(cn, sizeof cn, "features.conv%d", conv_i);
    snprintf(bn, sizeof bn, "features.bn%d", conv_i);
    snprintf(rn, sizeof rn, "features.relu%d", conv_i++);
    x = zoo_conv(b, cn, x, c, cfg[i], 3, 1, 1, 1);
    x = zoo_bn(b, bn, x, cfg[i]);
    x = zoo_unary(b, LT_OP_RELU, rn, x, NULL);
    c = cfg[i];
  }
  x = zoo_unary(b, LT_OP_FLATTEN, "flatten", x, NULL);
  return zoo_linear(b, "classifier", x, c * h * w, classes);
}

/* ---- small CNN for 28x28 ------------------------------------------------------------------------ */

static int zoo_smallcnn(zoo_builder *b, int x, int in_ch, int classes, int h, int w) {
  x = zoo_conv_bn_relu(b, "block1", x, in_ch, 32);
  x = zoo_maxpool2(b, "block1.pool", x);
  x = zoo_conv_bn_relu(b, "block2", x, 32, 64);
  x = zoo_maxpool2(b, "block2.pool", x);
  x = zoo_unary(b, LT_OP_FLATTEN, "flatten", x, NULL);
  x = zoo_linear(b, "fc1", x, 64 * (h / 4) * (w / 4), 128);
  x = zoo_unary(b, LT_OP_RELU, "fc1.relu", x, NULL);
  return zoo_linear(b, "fc2", x, 128, classes);
}

/* ---- U-Net, 2 levels ---------------------------------------------------------------------------- */

static int zoo_double_conv(zoo_builder *b, const char *name, int x, int cin, int cout) {
  char n1[96], n2[96];
  snprintf(n1, sizeof n1, "%s.0", name);
  snprintf(n2, sizeof n2, "%s.1", name);
  x = zoo_conv_bn_relu(b, n1, x, cin, cout);
  return zoo_conv_bn_relu(b, n2, x, cout, cout);
}

static int zoo_up_cat(zoo_builder *b, const char *name, int x, int skip, int h, int w) {
  char un[96], cn[96];
  lt_node_attrs a = lt_attrs_default();
  a.mode = LT_UPSAMPLE_NEAREST;
  a.out_h = h, a.out_w = w;
  snprintf(un, sizeof un, "%s.upsample", name);
  snprintf(cn, sizeof cn, "%s.concat", name);
  x = zoo_unary(b, LT_OP_UPSAMPLE, un, x, &a);
  lt_node_attrs c = lt_attrs_default(); /* axis 0: channels */
  return zoo_node(b, LT_OP_CONCAT, cn, (int[]){x, skip}, 2, &c);
}

static int zoo_unet(zoo_builder *b, int x, int in_ch, int out_ch, int wb, int h, int w) {
  int e1 = zoo_double_conv(b, "enc1", x, in_ch, wb);
  int e2 = zoo_double_conv(b, "enc2", zoo_maxpool2(b, "pool1", e1), wb, 2 * wb);
  int mid = zoo_double_conv(b, "mid", zoo_maxpool2(b, "pool2", e2), 2 * wb, 4 * wb);
  int d2 = zoo_double_conv(b, "dec2", zoo_up_cat(b, "up2", mid, e2, h / 2, w / 2), 6 * wb, 2 * wb);
  int d1 = zoo_double_conv(b, "dec1", zoo_up_cat(b, "up1", d2, e1, h, w), 3 * wb, wb);
  return zoo_conv(b, "head", d1, wb, out_ch, 1, 1, 0, 1);
}

/* ---- entry point ---------------------------------------------------------------------------------- */

static const char *const zoo_names[] = {"resnet20", "resnet32", "resnet56", "vgg16",
                                        "smallcnn", "unet",     NULL};

const char *const *lt_zoo_names(void) { return zoo_names; }

lt_graph *lt_zoo_build(const char *name, const lt_zoo_opts *opts, lt_err *err) {
  lt_zoo_opts o = opts ? *opts : (lt_zoo_opts){0};
  int known = -1;
  for (int i = 0; name && zoo_names[i]; i++)
    if (strcmp(name, zoo_names[i]) == 0) known = i;
  if (known < 0) {
    lt_errorf(err, LT_ERR_INVALID,
              "unknown model '%s'; the zoo has resnet20, resnet32, resnet56, vgg16, smallcnn, "
              "unet", name ? name : "(null)");
    return NULL;
  }
  int is_small = strcmp(name, "smallcnn") == 0, is_unet = strcmp(name, "unet") == 0;
  int in_ch = o.in_channels ? o.in_channels : (is_small || is_unet) ? 1 : 3;
  int h = o.height ? o.height : is_small ? 28 : 32;
  int w = o.width ? o.width : is_small ? 28 : 32;
  int classes = o.num_classes ? o.num_classes : 10;
  int out_ch = o.out_channels ? o.out_channels : 1;
  int wb = o.base_width ? o.base_width : 16;
  if (in_ch < 1 || h < 1 || w < 1 || classes < 1 || out_ch < 1 || wb < 1) {
    lt_errorf(err, LT_ERR_INVALID, "model '%s': channels, size and classes must be positive", name);
    return NULL;
  }
  int min = strcmp(name, "vgg16") == 0 ? 32 : 4;
  if ((is_unet || is_small || min == 32) && (h % min || w % min)) {
    lt_errorf(err, LT_ERR_INVALID,
              "model '%s' halves the input %d times; %dx%d is not a multiple of %d", name,
              min == 32 ? 5 : 2, h, w, min);
    return NULL;
  }
  zoo_builder b = {.g = lt_graph_new(), .err = err, .seed = o.seed};
  if (!b.g) {
    lt_errorf(err, LT_ERR_NOMEM, "out of memory for a graph");
    return NULL;
  }
  int x = lt_graph_add_input(b.g, "input", LT_F32, 3, (int64_t[]){in_ch, h, w});
  int y;
  if (is_unet)
    y = zoo_unet(&b, x, in_ch, out_ch, wb, h, w);
  else if (is_small)
    y = zoo_smallcnn(&b, x, in_ch, classes, h, w);
  else if (strcmp(name, "vgg16") == 0)
    y = zoo_vgg16(&b, x, in_ch, classes, h, w);
  else
    y = zoo_resnet(&b, x, in_ch, classes, atoi(name + 6));
  if (y < 0 || b.failed) {
    lt_err_prefix(err, "building %s", name);
    lt_graph_free(b.g);
    return NULL;
  }
  /* The output carries the name callers look for. */
  int out = zoo_node(&b, LT_OP_IDENTITY, is_unet ? "output" : "logits", &y, 1, NULL);
  if (out < 0) {
    lt_err_prefix(err, "building %s", name);
    lt_graph_free(b.g);
    return NULL;
  }
  lt_graph_set_output(b.g, out);
  return b.g;
}
