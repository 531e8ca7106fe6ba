/* `lathe data convert`: IDX image/label pairs and JPEG containers into the plain HDF5 layout
 * (/split/x (N, C, H, W) uint8, /split/y labels). Both paths build lt_dataset splits in memory
 * and hand them to lt_dataset_save, so the written layout is defined in one place. */
#include "lathe/data.h"

#include <stdio.h>
#include <string.h>

/* One split from an (N, H, W) image file and an (N) label file. */
static lt_dataset *convert_idx_split(const char *split, const char *images, const char *labels,
                                     lt_err *err) {
  lt_idx im = {0}, lb = {0};
  lt_dataset *ds = NULL;
  if (lt_idx_read(images, &im, err) || lt_idx_read(labels, &lb, err)) goto done;
  if (im.ndim != 3) {
    lt_errorf(err, LT_ERR_INVALID, "%s has %d dims; an IDX image file is (N, H, W)", images,
              im.ndim);
    goto done;
  }
  if (lb.ndim != 1 || lb.shape[0] != im.shape[0]) {
    lt_errorf(err, LT_ERR_INVALID,
              "%s holds %lld labels in %d dims but %s holds %lld images; pass the matching "
              "label file",
              labels, (long long)lb.shape[0], lb.ndim, images, (long long)im.shape[0]);
    goto done;
  }
  ds = lt_calloc(LT_MEM_OTHER, sizeof *ds, err);
  if (!ds) goto done;
  snprintf(ds->split, sizeof ds->split, "%s", split);
  ds->n = im.shape[0];
  ds->c = 1;
  ds->h = (int)im.shape[1];
  ds->w = (int)im.shape[2];
  ds->x_dtype = LT_U8;
  ds->x = im.data; /* same bytes, same layout: (N, H, W) is (N, 1, H, W) */
  im.data = NULL;
  ds->labels = lt_alloc(LT_MEM_DATA, (size_t)ds->n * sizeof *ds->labels, err);
  if (!ds->labels) {
    lt_dataset_free(ds);
    ds = NULL;
    goto done;
  }
  int maxv = 0;
  for (int64_t i = 0; i < ds->n; i++) {
    ds->labels[i] = lb.data[i];
    if (lb.data[i] > maxv) maxv = lb.data[i];
  }
  ds->num_classes = maxv + 1;
done:
  lt_idx_free(&im);
  lt_idx_free(&lb);
  return ds;
}

lt_status lt_data_convert_idx(const char *train_images, const char *train_labels,
                              const char *test_images, const char *test_labels,
                              const char *out_path, lt_err *err) {
  lt_dataset *splits[2] = {convert_idx_split("train", train_images, train_labels, err), NULL};
  if (splits[0]) splits[1] = convert_idx_split("test", test_images, test_labels, err);
  lt_status st = splits[0] && splits[1] ? lt_dataset_save(out_path, splits, 2, err)
                                        : (err ? err->status : LT_ERR_INVALID);
  lt_dataset_free(splits[0]);
  lt_dataset_free(splits[1]);
  return st;
}

lt_status lt_data_convert_jpeg(const char *in_path, const char *out_path, int threads,
                               lt_err *err) {
  static const char *const names[] = {"train", "val", "test"};
  char present[256];
  lt_status st = lt_dataset_list_splits(in_path, present, sizeof present, err);
  if (st) return st;
  lt_dataset *splits[3] = {NULL, NULL, NULL};
  int n = 0;
  lt_dataset_opts o = {.threads = threads};
  for (int i = 0; i < 3 && st == LT_OK; i++) {
    /* Match whole names in the comma-separated list. */
    char key[40];
    snprintf(key, sizeof key, ",%s,", names[i]);
    char padded[260];
    snprintf(padded, sizeof padded, ",%s,", present);
    if (!strstr(padded, key)) continue;
    splits[n] = lt_dataset_load(in_path, names[i], &o, err);
    if (!splits[n]) st = err ? err->status : LT_ERR_FORMAT;
    else n++;
  }
  if (st == LT_OK && n == 0)
    st = lt_errorf(err, LT_ERR_INVALID, "%s has no train, val or test split (groups: %s)",
                   in_path, present[0] ? present : "none");
  if (st == LT_OK) st = lt_dataset_save(out_path, splits, n, err);
  for (int i = 0; i < n; i++) lt_dataset_free(splits[i]);
  return st;
}
