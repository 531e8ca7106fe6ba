/* Batch assembly: gather samples by index, scale uint8 pixels to [0, 1], normalise per channel,
 * and apply random crop-with-padding and horizontal flip. The random choices of a sample come
 * from one Philox block keyed by (seed, AUGMENT | epoch, sample index), never from a running
 * generator, so a batch is the same whatever the thread count, the batch composition, or whether
 * the run was resumed from a checkpoint. */
#include "lathe/data.h"

#include <math.h>
#include <string.h>

lt_status lt_norm_check(const lt_norm *norm, int c, lt_err *err) {
  if (norm->n != 0 && norm->n != 1 && norm->n != c)
    return lt_errorf(err, LT_ERR_INVALID,
                     "normalisation has %d mean/std values but the data has %d channels; give "
                     "one value or one per channel",
                     norm->n, c);
  if (norm->n < 0 || norm->n > LT_DATA_MAX_CH)
    return lt_errorf(err, LT_ERR_INVALID, "normalisation has %d values; at most %d", norm->n,
                     LT_DATA_MAX_CH);
  for (int i = 0; i < norm->n; i++) {
    if (!isfinite(norm->mean[i]) || !isfinite(norm->std[i]) || !(norm->std[i] > 0))
      return lt_errorf(err, LT_ERR_INVALID,
                       "normalisation channel %d has mean %g and std %g; std must be a finite "
                       "value > 0",
                       i, (double)norm->mean[i], (double)norm->std[i]);
  }
  return LT_OK;
}

void lt_data_shuffle(int64_t n, uint64_t seed, uint64_t epoch, int64_t *perm) {
  for (int64_t i = 0; i < n; i++) perm[i] = i;
  lt_rng r = lt_rng_make(seed, LT_RNG_STREAM_SHUFFLE | (epoch & 0xffffffffu));
  for (int64_t i = n - 1; i > 0; i--) {
    int64_t j = (int64_t)lt_rng_below(&r, (uint64_t)i + 1);
    int64_t t = perm[i];
    perm[i] = perm[j];
    perm[j] = t;
  }
}

/* One sample's augmentation, from its own Philox block. The modulo bias of 2^32 mod (2*pad+1)
 * is below 1e-8 for any pad in use, far under what a crop distribution can show. */
typedef struct aug_choice {
  int dy, dx; /* crop origin in the padded image, in [0, 2*pad] */
  int flip;
} aug_choice;

static aug_choice aug_choose(uint64_t seed, uint64_t epoch, int64_t index, int pad, int flip) {
  uint32_t r[4];
  lt_philox(seed, LT_RNG_STREAM_AUGMENT | (epoch & 0xffffffffu), (uint64_t)index, r);
  aug_choice a = {pad, pad, 0};
  if (pad > 0) {
    a.dy = (int)(r[0] % (uint32_t)(2 * pad + 1));
    a.dx = (int)(r[1] % (uint32_t)(2 * pad + 1));
  }
  if (flip) a.flip = (int)(r[2] & 1u);
  return a;
}

lt_status lt_batch_fill(const lt_dataset *ds, const int64_t *idx, int n, const lt_batch_opts *o,
                        uint64_t seed, uint64_t epoch, float *x_out, int32_t *labels_out,
                        float *targets_out, lt_err *err) {
  lt_status st = lt_norm_check(&o->norm, ds->c, err);
  if (st) return st;
  if (o->pad < 0 || o->pad > ds->h || o->pad > ds->w)
    return lt_errorf(err, LT_ERR_INVALID,
                     "crop padding %d is out of range for %dx%d images; use 0 to %d", o->pad,
                     ds->h, ds->w, ds->h < ds->w ? ds->h : ds->w);
  if ((o->pad > 0 || o->flip) && ds->targets && ds->target_ndim >= 2)
    return lt_errorf(err, LT_ERR_UNSUPPORTED,
                     "crop and flip move the pixels of x only and would misalign the dense "
                     "targets of split %s; turn augmentation off for this dataset",
                     ds->split);
  for (int i = 0; i < n; i++) {
    if (idx[i] < 0 || idx[i] >= ds->n)
      return lt_errorf(err, LT_ERR_INVALID, "sample index %lld is outside the %lld samples of %s",
                       (long long)idx[i], (long long)ds->n, ds->split);
  }
  const int c = ds->c, h = ds->h, w = ds->w, pad = o->pad;
  const size_t hw = (size_t)h * (size_t)w, per = (size_t)c * hw;
  float scale[LT_DATA_MAX_CH], shift[LT_DATA_MAX_CH];
  const float pix = ds->x_dtype == LT_U8 ? 1.0f / 255.0f : 1.0f;
  for (int ch = 0; ch < c; ch++) {
    int k = o->norm.n == 1 ? 0 : ch;
    float mean = o->norm.n ? o->norm.mean[k] : 0.0f, sd = o->norm.n ? o->norm.std[k] : 1.0f;
    scale[ch] = pix / sd;
    shift[ch] = -mean / sd;
  }
#pragma omp parallel for schedule(static)
  for (int i = 0; i < n; i++) {
    aug_choice a = aug_choose(seed, epoch, idx[i], pad, o->flip);
    float *dst = x_out + (size_t)i * per;
    for (int ch = 0; ch < c; ch++) {
      for (int y = 0; y < h; y++) {
        int sy = y + a.dy - pad;
        float *row = dst + (size_t)ch * hw + (size_t)y * w;
        for (int x = 0; x < w; x++) {
          int sx0 = a.flip ? w - 1 - x : x;
          int sx = sx0 + a.dx - pad;
          float v = 0.0f; /* padding is black in pixel space, as torchvision pads before Normalize */
          if (sy >= 0 && sy < h && sx >= 0 && sx < w) {
            size_t off = (size_t)idx[i] * per + (size_t)ch * hw + (size_t)sy * w + (size_t)sx;
            v = ds->x_dtype == LT_U8 ? (float)((const uint8_t *)ds->x)[off]
                                     : ((const float *)ds->x)[off];
          }
          row[x] = v * scale[ch] + shift[ch];
        }
      }
    }
    if (labels_out && ds->labels) labels_out[i] = ds->labels[idx[i]];
    if (targets_out && ds->targets)
      memcpy(targets_out + (size_t)i * ds->target_numel,
             ds->targets + (size_t)idx[i] * ds->target_numel, ds->target_numel * sizeof(float));
  }
  return LT_OK;
}
