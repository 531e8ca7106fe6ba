/* Captures real activation tensors from a training run in the engine, for `lathe bench codec`:
 * the input of every conv and linear node (what the stash compresses), taken from the forward of
 * a training step through an lt_exec forward hook, written as /acts/<node name> float32 in the
 * layout capture_activations.py uses, plus /y (the batch's labels). No Python, no PyTorch.
 *
 * Usage: actcomp_capture MODEL DATA.h5 SPLIT OUT.h5 [BATCH] [TRAIN_STEPS]
 *   MODEL  a zoo name, an ONNX file or a Lathe checkpoint (lt_model_load)
 *   TRAIN_STEPS steps of SGD before the capture (default 0: the model as loaded), so that a
 *   randomly initialised zoo model shows trained-network activations.
 * Inputs are normalised with the CIFAR-10 statistics for 3-channel data and Fashion-MNIST's for
 * 1-channel data. Exit status 0, 1 on failure, 77 when DATA.h5 is absent. */
#include "lathe/backend.h"
#include "lathe/train.h"

#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct capture {
  const lt_graph *g;
  hid_t acts;        /* the /acts group */
  char *wanted;      /* (n_values) 1 for values that are the data input of a conv or linear */
  int written, failed;
} capture;

/* Forward hook: a node whose output feeds a conv or linear node as its data input writes that
 * output, once, under the consumer's name (as the Python capture names the input of conv1 by
 * conv1). The graph input itself is written before the forward. */
static void write_tensor(capture *c, const char *name, const lt_tensor *t) {
  hsize_t dims[LT_MAX_DIMS];
  for (int i = 0; i < t->ndim; i++) dims[i] = (hsize_t)t->shape[i];
  hid_t sp = H5Screate_simple(t->ndim, dims, NULL);
  hid_t d = sp >= 0 ? H5Dcreate2(c->acts, name, H5T_IEEE_F32LE, sp, H5P_DEFAULT, H5P_DEFAULT,
                                 H5P_DEFAULT)
                    : -1;
  if (d < 0 || H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, t->data) < 0) {
    fprintf(stderr, "capture: cannot write /acts/%s\n", name);
    c->failed = 1;
  } else {
    c->written++;
  }
  if (d >= 0) H5Dclose(d);
  if (sp >= 0) H5Sclose(sp);
}

/* HDF5 names may not contain '/': ONNX node names often do. */
static void consumer_name(const lt_graph *g, int value, char *out, size_t cap) {
  for (int n = 0; n < g->n_nodes; n++) {
    const lt_node *nd = &g->nodes[n];
    if ((nd->op == LT_OP_CONV2D || nd->op == LT_OP_LINEAR) && nd->in[0] == value) {
      snprintf(out, cap, "%s", nd->name);
      for (char *p = out; *p; p++)
        if (*p == '/') *p = '_';
      return;
    }
  }
  snprintf(out, cap, "value%d", value);
}

static void on_forward(void *user, lt_exec *ex, int node, const lt_tensor *out) {
  capture *c = user;
  (void)ex;
  int v = c->g->nodes[node].out[0];
  if (!c->wanted[v] || out->dtype != LT_F32) return;
  c->wanted[v] = 0; /* a value feeding two convs is written once */
  char name[256];
  consumer_name(c->g, v, name, sizeof name);
  write_tensor(c, name, out);
}

int main(int argc, char **argv) {
  if (argc < 5) {
    fprintf(stderr, "usage: actcomp_capture MODEL DATA.h5 SPLIT OUT.h5 [BATCH] [TRAIN_STEPS]\n");
    return 2;
  }
  const char *model = argv[1], *data = argv[2], *split = argv[3], *outp = argv[4];
  int batch = argc > 5 ? atoi(argv[5]) : 256, steps = argc > 6 ? atoi(argv[6]) : 0;
  if (access(data, R_OK)) {
    printf("%s absent: skipped\n", data);
    return 77;
  }
  lt_err err = {0};
  lt_dataset *ds = lt_dataset_load(data, split, NULL, &err);
  if (!ds) goto fail;
  lt_zoo_opts zo = {.in_channels = ds->c, .height = ds->h, .width = ds->w, .num_classes = 10,
                    .seed = 1};
  lt_graph *g = lt_model_load(model, &zo, NULL, NULL, &err);
  lt_backend *be = lt_backend_get("cpu", &err);
  if (!g || !be) goto fail;
  lt_batch_opts bo = {0};
  if (ds->c == 3)
    bo.norm = (lt_norm){.n = 3, .mean = {0.4914f, 0.4822f, 0.4465f},
                        .std = {0.2470f, 0.2435f, 0.2616f}};
  else
    bo.norm = (lt_norm){.n = 1, .mean = {0.286f}, .std = {0.353f}};
  if (batch < 1 || batch > ds->n) batch = (int)ds->n;
  if (steps > 0) {
    lt_train_config tc = lt_train_config_default();
    tc.train = ds;
    tc.batch_size = batch;
    tc.max_steps = steps;
    tc.batch = bo;
    tc.optim.momentum = 0.9f;
    tc.sched.lr = 0.05;
    lt_train_result r;
    if (lt_train_run(g, be, &tc, &r, &err)) goto fail;
    printf("trained %lld steps, last train accuracy %.3f\n", (long long)r.steps,
           r.train_accuracy);
  }
  /* Every buffer kept (no_reuse): a hook may read any value while it is still being produced. */
  lt_exec_opts eo = {.no_reuse = 1};
  lt_exec *ex = lt_exec_create(g, batch, LT_MODE_TRAIN, be, &eo, &err);
  if (!ex) goto fail;
  int64_t *idx = malloc((size_t)batch * sizeof *idx);
  int32_t *labels = malloc((size_t)batch * sizeof *labels);
  for (int i = 0; i < batch; i++) idx[i] = i;
  capture c = {.g = g, .wanted = calloc((size_t)g->n_values, 1)};
  for (int n = 0; n < g->n_nodes; n++)
    if (g->nodes[n].op == LT_OP_CONV2D || g->nodes[n].op == LT_OP_LINEAR)
      c.wanted[g->nodes[n].in[0]] = 1;
  hid_t f = H5Fcreate(outp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  c.acts = f >= 0 ? H5Gcreate2(f, "acts", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT) : -1;
  if (c.acts < 0) {
    fprintf(stderr, "capture: cannot create %s\n", outp);
    return 1;
  }
  lt_tensor *in = lt_exec_input(ex, 0);
  if (lt_batch_fill(ds, idx, batch, &bo, 0, 0, lt_tensor_f32(in), labels, NULL, &err)) goto fail;
  int vin = g->inputs[0];
  if (c.wanted[vin]) { /* the first conv reads the graph input */
    char name[256];
    consumer_name(g, vin, name, sizeof name);
    write_tensor(&c, name, in);
    c.wanted[vin] = 0;
  }
  lt_exec_set_forward_hook(ex, on_forward, &c);
  if (lt_exec_forward(ex, &err)) goto fail;
  hsize_t ny = (hsize_t)batch;
  hid_t sp = H5Screate_simple(1, &ny, NULL);
  hid_t dy = H5Dcreate2(f, "y", H5T_STD_I32LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  if (dy < 0 || H5Dwrite(dy, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, labels) < 0)
    c.failed = 1;
  H5Dclose(dy);
  H5Sclose(sp);
  H5Gclose(c.acts);
  H5Fclose(f);
  printf("captured the inputs of %d conv/linear layers of %s (batch %d, training mode) into %s\n",
         c.written, model, batch, outp);
  free(c.wanted);
  free(idx);
  free(labels);
  lt_exec_free(ex);
  lt_graph_free(g);
  lt_dataset_free(ds);
  return c.failed || c.written == 0;
fail:
  fprintf(stderr, "capture: %s\n", err.msg);
  return 1;
}
