/* Model references (see lt_model_load in lathe/train.h): zoo names and checkpoint files. */
#include "lathe/train.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int model_is_zoo_name(const char *ref) {
  for (const char *const *n = lt_zoo_names(); *n; n++)
    if (!strcmp(*n, ref)) return 1;
  return 0;
}

/* Builds a zoo model and loads a checkpoint's weights into it (optimizer state is not read). */
static lt_graph *model_zoo_with_ckpt(const char *name, const lt_zoo_opts *zoo,
                                     const char *checkpoint, lt_ckpt_meta *meta, lt_err *err) {
  lt_graph *g = lt_zoo_build(name, zoo, err);
  if (!g) return NULL;
  if (checkpoint && lt_ckpt_load(checkpoint, g, NULL, meta, err) != LT_OK) {
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
  if (model_is_zoo_name(ref)) return model_zoo_with_ckpt(ref, &zo, checkpoint, meta, err);
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
  if (checkpoint) {
    lt_errorf(err, LT_ERR_INVALID,
              "a checkpoint (%s) applies to a zoo model, but the model is the file %s", checkpoint,
              ref);
    return NULL;
  }
  if (lt_ckpt_read_meta(ref, meta, err) != LT_OK) {
    lt_err_prefix(err, "model file %s is not a Lathe checkpoint (ONNX models need the ONNX "
                  "reader)", ref);
    return NULL;
  }
  if (!model_is_zoo_name(meta->model)) {
    lt_errorf(err, LT_ERR_UNSUPPORTED,
              "checkpoint %s records model \"%s\", which is not in the zoo; rebuild it from the "
              "model it was trained from",
              ref, meta->model);
    return NULL;
  }
  if (meta->num_classes > 0) {
    if (!strcmp(meta->model, "unet")) zo.out_channels = meta->num_classes;
    else zo.num_classes = meta->num_classes;
  }
  return model_zoo_with_ckpt(meta->model, &zo, ref, meta, err);
}
