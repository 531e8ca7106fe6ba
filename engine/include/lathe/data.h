/* lathe/data.h — datasets in memory: HDF5 splits, JPEG containers, IDX conversion, batch assembly
 * with normalisation and deterministic augmentation.
 *
 * Usage (one training batch):
 *   lt_err err = {0};
 *   lt_dataset_opts o = {.num_classes = 10};
 *   lt_dataset *ds = lt_dataset_load("fashion-mnist.h5", "train", &o, &err);
 *   if (!ds) { fprintf(stderr, "%s\n", err.msg); return err.status; }
 *   int64_t *perm = ...;  lt_data_shuffle(ds->n, seed, epoch, perm);
 *   lt_batch_opts b = {.norm = {.n = 1, .mean = {0.286f}, .std = {0.353f}}, .pad = 4, .flip = 1};
 *   lt_batch_fill(ds, perm + i0, 128, &b, seed, epoch, x, labels, NULL, &err);
 *   lt_dataset_free(ds);
 *
 * A dataset file holds one group per split (/train, /test, /val), each with either
 *   x (N, C, H, W) uint8 or float32 and y (N) integer labels or (N, ...) float32 targets, or
 *   jpeg (bytes) uint8, offsets (N+1) uint64 and y (N), as in ../shared/data/cifar10-jpeg.h5.
 * A split is read whole into memory (uint8 stays uint8; JPEGs are decoded once, in parallel).
 * Every file is treated as hostile: ranks, dtypes, extents, offsets and labels are checked, and a
 * bad file gets an lt_err that says what is wrong and how to fix it, never a crash.
 *
 * Not for: streaming reads, epoch planning or multi-rank sharding (lathe/loader.h).
 */
#ifndef LATHE_DATA_H
#define LATHE_DATA_H

#include "lathe/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

#define LT_DATA_MAX_CH 16

/* RNG streams of the data path (lathe/core.h): (seed, stream | epoch, index). */
#define LT_RNG_STREAM_SHUFFLE ((uint64_t)0x5348 << 32)
#define LT_RNG_STREAM_AUGMENT ((uint64_t)0x4155 << 32)

typedef struct lt_dataset_opts {
  int num_classes; /* > 0: labels must lie in [0, num_classes); 0: only checked to be >= 0 */
  int threads;     /* JPEG decode threads; 0 = OpenMP default */
} lt_dataset_opts;

/* One split, in memory. */
typedef struct lt_dataset {
  char split[32];
  int64_t n;                  /* samples */
  int c, h, w;                /* per-sample shape of x */
  lt_dtype x_dtype;           /* LT_U8 or LT_F32 */
  void *x;                    /* (n, c, h, w) row-major, owned, counted under LT_MEM_DATA */
  int32_t *labels;            /* (n) when y holds class labels, else NULL; owned */
  int num_classes;            /* max label + 1, or opts.num_classes when given */
  float *targets;             /* (n, target_numel) when y holds target tensors, else NULL; owned */
  int target_ndim;            /* per-sample rank of a target (0 for a scalar) */
  int64_t target_shape[LT_MAX_DIMS];
  int64_t target_numel;       /* elements per target (1 for a scalar) */
  int from_jpeg;              /* 1 when x was decoded from a jpeg + offsets container */
} lt_dataset;

/* Reads /<split> of an HDF5 dataset file. NULL with err filled on any fault. */
lt_dataset *lt_dataset_load(const char *path, const char *split, const lt_dataset_opts *opts,
                            lt_err *err);
void lt_dataset_free(lt_dataset *ds); /* accepts NULL and half-built datasets */
/* Names of the splits (top-level groups) in a file, comma-separated, into buf. */
lt_status lt_dataset_list_splits(const char *path, char *buf, size_t cap, lt_err *err);
size_t lt_dataset_sample_bytes(const lt_dataset *ds); /* c*h*w*dtype size */

/* Writes splits as plain x/y datasets into a new HDF5 file, atomically (temp file, fsync,
 * rename). Labels are stored as uint8 when every class fits, else int32. */
lt_status lt_dataset_save(const char *path, lt_dataset *const *splits, int n_splits, lt_err *err);

/* Decodes n JPEG images (image i is bytes [offsets[i], offsets[i+1]) of buf) into out
 * (n, c, h, w) uint8, c = 3 (RGB) or 1 (grey); every image must be h x w. Runs in parallel. */
lt_status lt_jpeg_decode_batch(const uint8_t *buf, size_t buf_len, const uint64_t *offsets,
                               int64_t n, int c, int h, int w, int threads, uint8_t *out,
                               lt_err *err);
/* Size and component count of one JPEG image, from its header. */
lt_status lt_jpeg_header(const uint8_t *jpg, size_t len, int *h, int *w, int *c, lt_err *err);

/* Per-channel normalisation applied after uint8 pixels are scaled to [0, 1] (float inputs are
 * taken as they are): (v - mean[ch]) / std[ch]. n = 0: none; n = 1: one value for every channel. */
typedef struct lt_norm {
  int n;
  float mean[LT_DATA_MAX_CH];
  float std[LT_DATA_MAX_CH];
} lt_norm;

typedef struct lt_batch_opts {
  lt_norm norm;
  int pad;  /* random crop: pad by this many zero pixels each side, crop back to (h, w); 0 = off */
  int flip; /* random horizontal flip with probability 1/2 */
} lt_batch_opts;

/* Checks a normalisation against a channel count (std > 0, finite, n in {0, 1, c}). */
lt_status lt_norm_check(const lt_norm *norm, int c, lt_err *err);

/* Assembles a batch: x_out (n, c, h, w) float32 normalised and augmented; labels_out (n) or
 * targets_out (n, target_numel) when non-NULL and the dataset has them. Augmentation of sample
 * idx[i] is a pure function of (seed, epoch, idx[i]), so batches are the same on every rerun,
 * resume and rank. */
lt_status lt_batch_fill(const lt_dataset *ds, const int64_t *idx, int n, const lt_batch_opts *o,
                        uint64_t seed, uint64_t epoch, float *x_out, int32_t *labels_out,
                        float *targets_out, lt_err *err);

/* perm (n) = a permutation of 0..n-1 that depends only on (seed, epoch). */
void lt_data_shuffle(int64_t n, uint64_t seed, uint64_t epoch, int64_t *perm);

/* IDX files (the MNIST family). Images: magic 0x00000803, (N, H, W) uint8; labels: 0x00000801,
 * (N) uint8. Gzip-compressed files are refused with a hint to gunzip them first. */
typedef struct lt_idx {
  int ndim;
  int64_t shape[4];
  uint8_t *data; /* product(shape) bytes, owned, counted under LT_MEM_DATA */
} lt_idx;

lt_status lt_idx_read(const char *path, lt_idx *out, lt_err *err);
void lt_idx_free(lt_idx *idx);

/* lathe data convert: IDX (train images/labels, test images/labels) → /train, /test x, y. */
lt_status lt_data_convert_idx(const char *train_images, const char *train_labels,
                              const char *test_images, const char *test_labels,
                              const char *out_path, lt_err *err);
/* A jpeg + offsets container → plain x (N, C, H, W) uint8 + y for every split it holds. */
lt_status lt_data_convert_jpeg(const char *in_path, const char *out_path, int threads,
                               lt_err *err);

#ifdef __cplusplus
}
#endif
#endif
