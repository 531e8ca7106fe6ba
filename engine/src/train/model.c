/* Model references (see lt_model_load in lathe/train.h): zoo names, ONNX files and checkpoint
 * files, told apart by name (zoo) and by the HDF5 signature (checkpoint) rather than by file
 * extension, since uploads are stored under content hashes. */
#include "lathe/onnx.h"
#include "lathe/train.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int model_is_zoo_name(const char *ref) {
  for (const char *const *n = lt_zoo_names(); *n; n++)
    if (!strcmp(*n, ref)) return 1;
  return 0;
}

/* 1 when the file starts with the HDF5 signature (checkpoints are HDF5). */
static int model_is_hdf5(const char *path) {
  static const unsigned char sig[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
  unsigned char head[8];
  FILE *f = fopen(path, "rb");
  if (!f) return 0;
  size_t n = fread(head, 1, sizeof head, f);
  fclose(f);
  return n == sizeof head && !memcmp(head, sig, sizeof sig);
}

/* Loads a checkpoint's weights into g (optimizer state is not read); frees g on failure. */
static lt_graph *model_with_ckpt(lt_graph *g, const char *checkpoint, lt_ckpt_meta *meta,
                                 lt_err *err) {
  if (g && checkpoint && lt_ckpt_load(checkpoint, g, NULL, meta, err) != LT_OK) {
    lt_graph_free(g);
    return NULL;
  }
  return g;
}

lt_graph *lt_model_load(const char *ref, const lt_zoo_opts *zoo, const char *checkpoint,
                        lt_ckpt_meta *meta, lt_err *err) {
  lt_ckpt_meta local;
  if (!meta) meta = &local;
  memset(meta, 0, sizeof *meta);
  lt_zoo_opts zo = zoo ? *zoo : (lt_zoo_opts){0};
  if (model_is_zoo_name(ref))
    return model_with_ckpt(lt_zoo_build(ref, &zo, err), checkpoint, meta, err);
  if (access(ref, R_OK) != 0) {
    char names[512] = "";
    for (const char *const *n = lt_zoo_names(); *n; n++) {
      size_t k = strlen(names);
      snprintf(names + k, sizeof names - k, "%s%s", k ? ", " : "", *n);
    }
    lt_errorf(err, LT_ERR_INVALID,
              "model \"%s\" is neither a zoo model (%s) nor a readable file", ref, names);
    return NULL;
  }
  if (!model_is_hdf5(ref)) {
    lt_onnx_load_opts oo = {0};
    if (zo.in_channels > 0 && zo.height > 0 && zo.width > 0) {
      oo.in_ndim = 3;
      oo.in_shape[0] = zo.in_channels, oo.in_shape[1] = zo.height, oo.in_shape[2] = zo.width;
    }
    lt_graph *g = lt_onnx_load(ref, &oo, err);
    if (!g) lt_err_prefix(err, "model file %s is neither a Lathe checkpoint nor a readable ONNX "
                          "model", ref);
    return model_with_ckpt(g, checkpoint, meta, err);
  }
  if (checkpoint) {
    lt_errorf(err, LT_ERR_INVALID,
              "a checkpoint (%s) applies to a zoo or ONNX model, but the model is itself the "
              "checkpoint %s",
              checkpoint, ref);
    return NULL;
  }
  if (lt_ckpt_read_meta(ref, meta, err) != LT_OK) return NULL;
  if (!model_is_zoo_name(meta->model)) {
    lt_errorf(err, LT_ERR_UNSUPPORTED,
              "checkpoint %s records model \"%s\", which is not in the zoo; pass the ONNX model "
              "it was trained from with this checkpoint",
              ref, meta->model);
    return NULL;
  }
  if (meta->num_classes > 0) {
    if (!strcmp(meta->model, "unet")) zo.out_channels = meta->num_classes;
    else zo.num_classes = meta->num_classes;
  }
  return model_with_ckpt(lt_zoo_build(meta->model, &zo, err), ref, meta, err);
}
