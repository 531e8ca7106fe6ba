/* The loader's data path: the plan says, for every step, which samples this rank computes, which
 * of them are hits in its buffer and which must come from storage. Storage reads for the next k
 * steps are sorted by file offset, merged with their neighbours and handed to a pool of I/O
 * threads that pread them (optionally O_DIRECT) into a ring of step buffers; compressed chunks are
 * read raw and inflated in those threads. lt_loader_next waits for the current step, copies its
 * hits out of the buffer and its planned inserts into it, and hands the step over. */
#define _GNU_SOURCE /* O_DIRECT */
#include "lathe/loader.h"
#include "lathe/config.h"
#include "loader/comm.h"
#include "loader/source.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#define DIRECT_ALIGN 4096

/* A part of a read that belongs to one sample: src bytes into the read (or into the inflated
 * chunk) go to dst. */
typedef struct io_piece {
  int64_t src;
  uint8_t *dst;
  size_t n;
} io_piece;

typedef struct ring_slot ring_slot;

/* One pread (after merging) or one compressed chunk. */
typedef struct io_req {
  int64_t off, len;  /* file range */
  int64_t inflated;  /* > 0: the range is a deflate stream of this many bytes */
  int first, count;  /* pieces [first, first + count) of the slot */
  ring_slot *slot;
} io_req;

/* One step in flight: its plan for this rank, its read requests and the bytes they fill. */
struct ring_slot {
  int64_t g;           /* global step (over all epochs) held here, -1 when free */
  int epoch;
  int64_t step, n_local, global_n, hits;
  double imbalance;    /* max over ranks of the local batch / mean local batch, from the plan */
  int64_t *indices;    /* (B) sample ids computed here, in position order */
  uint8_t *flags;      /* (B) LT_PLAN_* of each */
  uint32_t *bslot;     /* (B) buffer slot of each hit or insert */
  uint8_t *x;          /* (B, xb) */
  uint8_t *y;          /* (B, yb) */
  io_req *reqs;        /* (2B) */
  io_piece *pieces;    /* (2B) */
  int n_reqs, pending; /* pending: requests not finished (under ld->mu) */
  lt_status st;        /* first failure of a request, with its message */
  lt_err err;
};

/* A storage read wanted by a step before sorting and merging. */
typedef struct want {
  int64_t key, key2; /* raw: file offset; compressed: (source, chunk) */
  int64_t src;       /* compressed: byte offset of the sample in the inflated chunk */
  uint8_t *dst;
  size_t n;
  int64_t chunk_off, chunk_len, inflated;
} want;

struct lt_loader {
  lt_loader_opts o;
  int rank, n_ranks;
  bool collective;       /* ranks came from MPI: errors and cost estimates are agreed on */
  int fd;
  ld_source src[2];      /* x, y */
  int n_src;
  size_t xb, yb;         /* bytes per sample of x and y (yb 0 without targets) */
  int64_t N, B;
  lt_plan *plan;
  const lt_plan_epoch *view; /* the epoch being submitted */
  int64_t steps_per_epoch, total_steps;
  int64_t next_submit;   /* global step to submit next */
  int64_t next_deliver;  /* global step lt_loader_next hands out next */
  int n_ring;            /* k + 1 */
  ring_slot *ring;       /* (n_ring) */
  want *wants;           /* (2B) scratch of the submitter */
  int64_t *rank_count;   /* (P) scratch of the submitter: local batch of each rank */
  int64_t cap;           /* buffer slots on this rank */
  uint8_t *buf_x;        /* (cap, xb) the samples this rank keeps */
  uint8_t *buf_y;        /* (cap, yb) */
  size_t stage_bytes;    /* per-thread staging size */
  size_t inflate_bytes;  /* per-thread inflate output size */
  /* the I/O pool */
  pthread_t *threads;
  int n_threads;
  pthread_mutex_t mu;
  pthread_cond_t work, done;
  bool mu_ready, stop;
  io_req **queue;        /* (n_ring · 2B) FIFO of requests */
  int64_t q_head, q_len, q_cap;
  /* measurements */
  lt_loader_stats stats;
  double io_busy_s;      /* summed thread time in pread (under mu) */
  int64_t samples_read;
  /* compute per sample of recent steps: the time between lt_loader_next calls over the local
   * batch. The median of these is the estimate, so that pauses between epochs (evaluation,
   * checkpoints, a benchmark's cache drop) do not pass for compute. */
  double *compute_per_sample; /* (steps_per_epoch) ring */
  int64_t n_compute;          /* entries filled since the last estimate (≤ steps_per_epoch) */
  int64_t last_n_local;       /* local batch handed out by the previous call, 0 before any */
  double t_open, t_return;
  double next_load_cost, next_compute_cost; /* agreed estimates for the next epoch's plan, 0 = none */
  double imbalance_sum;  /* of the delivered steps' imbalance */
  lt_status failed;      /* sticky: after a failure every call returns it */
  lt_err fail_err;
};

lt_loader_opts lt_loader_opts_default(void) {
  lt_loader_opts o = {0};
  o.x_name = "/train/x";
  o.y_name = "/train/y";
  o.global_batch = 32;
  o.epochs = 1;
  o.buffer_fraction = 0.5;
  o.buffer_samples = -1;
  o.policy = LT_LOADER_POLICY_STATIC;
  o.balance = LT_LOADER_BALANCE_COST;
  o.rank = o.n_ranks = -1;
  o.io_threads = 2;
  o.prefetch_steps = 2;
  o.merge_gap = 64 << 10;
  o.merge_max = 4 << 20;
  return o;
}

#if !LATHE_HAVE_MPI
void lt_loader_world(int *rank, int *n_ranks) {
  *rank = 0;
  *n_ranks = 1;
}
bool ld_comm_active(void) { return false; }
void ld_comm_sum(double *v, int n) {}
lt_status ld_comm_sum_f32(float *g, size_t n, lt_err *err) { return LT_OK; }
lt_status ld_comm_agree(lt_status local, lt_err *err) { return local; }
#endif

lt_status lt_loader_agree(lt_status local, lt_err *err) { return ld_comm_agree(local, err); }

lt_status lt_loader_allreduce_grad(float *g, size_t n, int64_t global_n, lt_err *err) {
  if (global_n <= 0)
    return lt_errorf(err, LT_ERR_INVALID, "global batch of %lld samples: nothing to average over",
                     (long long)global_n);
  lt_status st = ld_comm_sum_f32(g, n, err);
  if (st != LT_OK) return st;
  /* divide, not multiply by the inverse: the same rounding as a single process dividing its sum */
  for (size_t i = 0; i < n; i++) g[i] /= (float)global_n;
  return LT_OK;
}

/* ---- I/O threads ------------------------------------------------------------------------------- */

static ssize_t do_pread(const lt_loader *ld, void *buf, size_t n, off_t off) {
  return ld->o.pread_fn ? ld->o.pread_fn(ld->o.pread_user, ld->fd, buf, n, off)
                        : pread(ld->fd, buf, n, off);
}

/* Reads [off, off + need) fully (more may come when O_DIRECT rounds the length up). */
static lt_status read_range(lt_loader *ld, uint8_t *buf, int64_t off, int64_t len, int64_t need,
                            int64_t *requests, lt_err *err) {
  int64_t got = 0;
  while (got < need) {
    ssize_t r = do_pread(ld, buf + got, (size_t)(len - got), (off_t)(off + got));
    (*requests)++;
    if (r < 0 && errno == EINTR) continue;
    if (r < 0)
      return lt_errorf(err, LT_ERR_IO, "reading %s at byte %lld: %s; check the file and its disk",
                       ld->o.path, (long long)(off + got), strerror(errno));
    if (r == 0)
      return lt_errorf(err, LT_ERR_IO,
                       "reading %s at byte %lld: the file ends early (truncated or replaced while "
                       "training?); restore the dataset file",
                       ld->o.path, (long long)(off + got));
    got += r;
  }
  return LT_OK;
}

static lt_status run_req(lt_loader *ld, io_req *q, uint8_t *stage, uint8_t *inflated,
                         int64_t *bytes, int64_t *requests, lt_err *err) {
  io_piece *pc = q->slot->pieces + q->first;
  int64_t a0 = q->off, a1 = q->off + q->len;
  if (ld->o.o_direct) {
    a0 &= ~(int64_t)(DIRECT_ALIGN - 1);
    a1 = (a1 + DIRECT_ALIGN - 1) & ~(int64_t)(DIRECT_ALIGN - 1);
  }
  *bytes += a1 - a0;
  if (!ld->o.o_direct && !q->inflated && q->count == 1 && pc[0].src == 0 && (int64_t)pc[0].n == q->len)
    return read_range(ld, pc[0].dst, q->off, q->len, q->len, requests, err); /* straight to its place */
  lt_status st = read_range(ld, stage, a0, a1 - a0, q->off + q->len - a0, requests, err);
  if (st != LT_OK) return st;
  const uint8_t *data = stage + (q->off - a0);
  if (q->inflated) {
    z_stream z = {0};
    if (inflateInit(&z) != Z_OK) return lt_errorf(err, LT_ERR_NOMEM, "zlib inflateInit failed");
    z.next_in = (Bytef *)data;
    z.avail_in = (uInt)q->len;
    z.next_out = inflated;
    z.avail_out = (uInt)q->inflated;
    int zr = inflate(&z, Z_FINISH);
    uLong out = z.total_out;
    inflateEnd(&z);
    if (zr != Z_STREAM_END || (int64_t)out != q->inflated)
      return lt_errorf(err, LT_ERR_FORMAT,
                       "chunk at byte %lld of %s does not inflate to %lld bytes (zlib %d); the file "
                       "is corrupt", (long long)q->off, ld->o.path, (long long)q->inflated, zr);
    data = inflated;
  }
  for (int i = 0; i < q->count; i++) memcpy(pc[i].dst, data + pc[i].src, pc[i].n);
  return LT_OK;
}

static void *io_thread(void *arg) {
  lt_loader *ld = arg;
  lt_err err = {0};
  /* O_DIRECT wants the buffer aligned to the block size: over-allocate and align by hand */
  uint8_t *stage_mem = lt_alloc(LT_MEM_DATA, ld->stage_bytes + DIRECT_ALIGN, &err);
  uint8_t *stage = stage_mem ? (uint8_t *)(((uintptr_t)stage_mem + DIRECT_ALIGN - 1) & ~(uintptr_t)(DIRECT_ALIGN - 1)) : NULL;
  uint8_t *inflated = ld->inflate_bytes ? lt_alloc(LT_MEM_DATA, ld->inflate_bytes, &err) : NULL;
  bool ok = stage && (inflated || !ld->inflate_bytes);
  pthread_mutex_lock(&ld->mu);
  for (;;) {
    while (!ld->stop && ld->q_len == 0) pthread_cond_wait(&ld->work, &ld->mu);
    if (ld->stop) break;
    io_req *q = ld->queue[ld->q_head];
    ld->q_head = (ld->q_head + 1) % ld->q_cap;
    ld->q_len--;
    pthread_mutex_unlock(&ld->mu);
    int64_t bytes = 0, requests = 0;
    double t0 = lt_now();
    lt_status st = ok ? run_req(ld, q, stage, inflated, &bytes, &requests, &err) : LT_ERR_NOMEM;
    double dt = lt_now() - t0;
    pthread_mutex_lock(&ld->mu);
    ld->stats.storage_bytes += bytes;
    ld->stats.storage_requests += requests;
    ld->io_busy_s += dt;
    ring_slot *s = q->slot;
    if (st != LT_OK && s->st == LT_OK) {
      s->st = st;
      s->err = err;
    }
    if (--s->pending == 0) pthread_cond_broadcast(&ld->done);
  }
  pthread_mutex_unlock(&ld->mu);
  lt_free(LT_MEM_DATA, stage_mem, ld->stage_bytes + DIRECT_ALIGN);
  lt_free(LT_MEM_DATA, inflated, ld->inflate_bytes);
  return NULL;
}

/* ---- submitting steps ---------------------------------------------------------------------------- */

static int want_cmp(const void *a, const void *b) {
  const want *x = a, *y = b;
  if (x->key != y->key) return x->key < y->key ? -1 : 1;
  if (x->key2 != y->key2) return x->key2 < y->key2 ? -1 : 1;
  return x->src < y->src ? -1 : x->src > y->src;
}

static void add_want(lt_loader *ld, int64_t *n, int si, int64_t sample, uint8_t *dst) {
  const ld_source *s = &ld->src[si];
  want *w = &ld->wants[(*n)++];
  memset(w, 0, sizeof *w);
  w->dst = dst;
  w->n = s->sample_bytes;
  if (ld_source_compressed(s, sample)) {
    int64_t c = sample / s->chunk_n;
    /* compressed wants sort after every raw one and group by (source, chunk) */
    w->key = INT64_MAX - si;
    w->key2 = c;
    w->src = (sample % s->chunk_n) * (int64_t)s->sample_bytes;
    w->chunk_off = s->chunk_off[c];
    w->chunk_len = s->chunk_len[c];
    w->inflated = s->chunk_n * (int64_t)s->sample_bytes;
  } else {
    w->key = ld_source_offset(s, sample);
  }
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* The cost balance needs per-sample load and compute estimates that every rank agrees on. They
 * are measured up to the delivery of the step just before the next epoch's first step is
 * submitted, added over ranks in one small all-reduce (right after the error flag, so every rank
 * is known to be there) and applied by submit when it plans that epoch. */
static void measure_costs(lt_loader *ld) {
  if (ld->o.balance != LT_LOADER_BALANCE_COST) return;
  if (ld->n_ranks > 1 && !ld->collective) return; /* simulated ranks in one process: keep fixed */
  double io_busy;
  pthread_mutex_lock(&ld->mu);
  io_busy = ld->io_busy_s;
  pthread_mutex_unlock(&ld->mu);
  int64_t k = ld->n_compute < ld->steps_per_epoch ? ld->n_compute : ld->steps_per_epoch;
  qsort(ld->compute_per_sample, (size_t)k, sizeof(double), cmp_double);
  double median = k ? ld->compute_per_sample[k / 2] : 0;
  ld->n_compute = 0;
  /* sums over ranks: load as total busy time over total reads, compute as the mean median */
  double m[4] = {io_busy / ld->o.io_threads, (double)ld->samples_read, median, k ? 1.0 : 0.0};
  if (ld->collective) ld_comm_sum(m, 4);
  if (m[0] > 0 && m[1] > 0 && m[2] > 0 && m[3] > 0) {
    ld->next_load_cost = m[0] / m[1];
    ld->next_compute_cost = m[2] / m[3];
  }
}

/* Fills ring slot for global step g from the plan and queues its storage reads. */
static lt_status submit(lt_loader *ld, lt_err *err) {
  int64_t g = ld->next_submit;
  int64_t step = g % ld->steps_per_epoch;
  if (step == 0) {
    if (ld->next_load_cost > 0) lt_plan_set_costs(ld->plan, ld->next_load_cost, ld->next_compute_cost);
    ld->view = lt_plan_next_epoch(ld->plan, err);
    if (!ld->view) return err ? err->status : LT_ERR_INTERNAL;
  }
  const lt_plan_epoch *v = ld->view;
  ring_slot *s = &ld->ring[g % ld->n_ring];
  s->g = g;
  s->epoch = v->epoch;
  s->step = step;
  s->st = LT_OK;
  int64_t p0 = step * ld->B, p1 = p0 + ld->B < ld->N ? p0 + ld->B : ld->N, n = 0, nw = 0, hits = 0;
  s->global_n = p1 - p0;
  memset(ld->rank_count, 0, (size_t)ld->n_ranks * sizeof *ld->rank_count);
  for (int64_t i = p0; i < p1; i++) {
    ld->rank_count[v->rank[i]]++;
    if (v->rank[i] != ld->rank) continue;
    s->indices[n] = v->perm[i];
    s->flags[n] = v->flags[i];
    s->bslot[n] = v->slot[i];
    if (v->flags[i] & LT_PLAN_HIT) {
      hits++;
    } else {
      add_want(ld, &nw, 0, v->perm[i], s->x + n * ld->xb);
      if (ld->n_src > 1) add_want(ld, &nw, 1, v->perm[i], s->y + n * ld->yb);
    }
    n++;
  }
  s->n_local = n;
  s->hits = hits;
  int64_t most = 0;
  for (int r = 0; r < ld->n_ranks; r++)
    if (ld->rank_count[r] > most) most = ld->rank_count[r];
  s->imbalance = (double)most * ld->n_ranks / (double)s->global_n;
  ld->samples_read += n - hits;
  /* sort by offset and merge neighbours into reads of bounded gap and size */
  qsort(ld->wants, (size_t)nw, sizeof(want), want_cmp);
  int nr = 0;
  for (int64_t i = 0; i < nw; i++) {
    want *w = &ld->wants[i];
    io_req *q = nr ? &s->reqs[nr - 1] : NULL;
    bool compressed = w->inflated > 0;
    if (q && compressed && q->inflated && q->off == w->chunk_off) {
      /* same chunk: one read and one inflate serve both */
    } else if (q && !compressed && !q->inflated && w->key - (q->off + q->len) <= ld->o.merge_gap &&
               w->key + (int64_t)w->n - q->off <= ld->o.merge_max) {
      if (w->key + (int64_t)w->n > q->off + q->len) q->len = w->key + (int64_t)w->n - q->off;
    } else {
      q = &s->reqs[nr++];
      q->slot = s;
      q->first = (int)i;
      q->count = 0;
      q->off = compressed ? w->chunk_off : w->key;
      q->len = compressed ? w->chunk_len : (int64_t)w->n;
      q->inflated = compressed ? w->inflated : 0;
    }
    s->pieces[i] = (io_piece){compressed ? w->src : w->key - q->off, w->dst, w->n};
    q->count++;
  }
  pthread_mutex_lock(&ld->mu);
  s->n_reqs = nr;
  s->pending = nr;
  for (int i = 0; i < nr; i++) {
    ld->queue[(ld->q_head + ld->q_len) % ld->q_cap] = &s->reqs[i];
    ld->q_len++;
  }
  pthread_cond_broadcast(&ld->work);
  pthread_mutex_unlock(&ld->mu);
  ld->next_submit++;
  return LT_OK;
}

/* ---- open / next / close ------------------------------------------------------------------------- */

static lt_status open_sources(lt_loader *ld, lt_err *err) {
  /* HDF5 prints its error stack to stderr by default; our messages say it better */
  H5E_auto2_t old_fn;
  void *old_data;
  H5Eget_auto2(H5E_DEFAULT, &old_fn, &old_data);
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  lt_status st = LT_OK;
  hid_t f = H5Fopen(ld->o.path, H5F_ACC_RDONLY, H5P_DEFAULT);
  if (f < 0) {
    st = lt_errorf(err, LT_ERR_IO, "cannot open %s as HDF5 (missing, unreadable or not HDF5); "
                   "check the path", ld->o.path);
    goto done;
  }
  hsize_t userblock = 0;
  hid_t fcpl = H5Fget_create_plist(f);
  if (fcpl >= 0) {
    H5Pget_userblock(fcpl, &userblock);
    H5Pclose(fcpl);
  }
  ld->n_src = ld->o.y_name ? 2 : 1;
  for (int i = 0; i < ld->n_src && st == LT_OK; i++)
    st = ld_source_open(f, i ? ld->o.y_name : ld->o.x_name, userblock, &ld->src[i], err);
  if (st == LT_OK && ld->n_src > 1 && ld->src[0].n != ld->src[1].n)
    st = lt_errorf(err, LT_ERR_INVALID,
                   "inputs %s have %lld samples but targets %s have %lld; every input needs its "
                   "target: fix the dataset",
                   ld->o.x_name, (long long)ld->src[0].n, ld->o.y_name, (long long)ld->src[1].n);
  H5Fclose(f);
done:
  H5Eset_auto2(H5E_DEFAULT, old_fn, old_data);
  if (st != LT_OK) lt_err_prefix(err, "loader");
  return st;
}

static void *ld_calloc(size_t bytes, lt_err *err) { return lt_calloc(LT_MEM_DATA, bytes ? bytes : 1, err); }
static void ld_free(void *p, size_t bytes) { lt_free(LT_MEM_DATA, p, bytes ? bytes : 1); }

/* Everything that can fail on one rank alone: the file, the plan, the memory, the threads. */
static lt_status open_local(lt_loader *ld, lt_err *err) {
  const lt_loader_opts *o = &ld->o;
  if (!o->path || !o->x_name)
    return lt_errorf(err, LT_ERR_INVALID, "loader: no dataset path or inputs name given");
  if (o->io_threads < 1 || o->prefetch_steps < 1 || o->merge_gap < 0 || o->merge_max < 1)
    return lt_errorf(err, LT_ERR_INVALID,
                     "loader: io_threads and prefetch_steps must be at least 1 and merge sizes "
                     "non-negative (got %d, %d, %lld, %lld)", o->io_threads, o->prefetch_steps,
                     (long long)o->merge_gap, (long long)o->merge_max);
  lt_status st = open_sources(ld, err);
  if (st != LT_OK) return st;
  ld->N = ld->src[0].n;
  ld->B = o->global_batch;
  ld->xb = ld->src[0].sample_bytes;
  ld->yb = ld->n_src > 1 ? ld->src[1].sample_bytes : 0;
  lt_plan_opts po = lt_plan_opts_default();
  po.n_samples = ld->N;
  po.global_batch = o->global_batch;
  po.buffer_samples = o->buffer_samples >= 0 ? o->buffer_samples : (int64_t)(o->buffer_fraction * (double)ld->N + 0.5);
  if (o->buffer_samples < 0 && !(o->buffer_fraction >= 0 && o->buffer_fraction <= 1))
    return lt_errorf(err, LT_ERR_INVALID,
                     "loader: buffer fraction %g is outside [0, 1]; a buffer larger than the data "
                     "cannot be filled", o->buffer_fraction);
  po.n_ranks = ld->n_ranks;
  po.epochs = o->epochs;
  po.seed = o->seed;
  po.policy = o->policy;
  po.balance = o->balance;
  ld->plan = lt_plan_create(&po, err);
  if (!ld->plan) return lt_err_prefix(err, "loader");
  ld->steps_per_epoch = (ld->N + ld->B - 1) / ld->B;
  ld->total_steps = ld->steps_per_epoch * o->epochs;
  ld->cap = lt_plan_rank_capacity(ld->plan, ld->rank);
  int64_t B = ld->B < ld->N ? ld->B : ld->N;
  ld->n_ring = o->prefetch_steps + 1;
  ld->q_cap = ld->n_ring * 2 * B;
  if (!(ld->ring = ld_calloc(ld->n_ring * sizeof(ring_slot), err)) ||
      !(ld->wants = ld_calloc(2 * B * sizeof(want), err)) ||
      !(ld->queue = ld_calloc(ld->q_cap * sizeof(io_req *), err)) ||
      !(ld->rank_count = ld_calloc(ld->n_ranks * sizeof(int64_t), err)) ||
      !(ld->compute_per_sample = ld_calloc(ld->steps_per_epoch * sizeof(double), err)) ||
      !(ld->buf_x = ld_calloc(ld->cap * ld->xb, err)) || !(ld->buf_y = ld_calloc(ld->cap * ld->yb, err)))
    return err->status;
  for (int i = 0; i < ld->n_ring; i++) {
    ring_slot *s = &ld->ring[i];
    s->g = -1;
    if (!(s->indices = ld_calloc(B * 8, err)) || !(s->flags = ld_calloc(B, err)) ||
        !(s->bslot = ld_calloc(B * 4, err)) || !(s->x = ld_calloc(B * ld->xb, err)) ||
        !(s->y = ld_calloc(B * ld->yb, err)) || !(s->reqs = ld_calloc(2 * B * sizeof(io_req), err)) ||
        !(s->pieces = ld_calloc(2 * B * sizeof(io_piece), err)))
      return err->status;
  }
  int64_t stage = o->merge_max;
  for (int i = 0; i < ld->n_src; i++) {
    const ld_source *s = &ld->src[i];
    if ((int64_t)s->sample_bytes > stage) stage = (int64_t)s->sample_bytes;
    if (s->max_chunk_len > stage) stage = s->max_chunk_len;
    if (s->deflate && (size_t)(s->chunk_n * (int64_t)s->sample_bytes) > ld->inflate_bytes)
      ld->inflate_bytes = (size_t)(s->chunk_n * (int64_t)s->sample_bytes);
  }
  ld->stage_bytes = (size_t)stage + 2 * DIRECT_ALIGN;
  int flags = O_RDONLY | O_CLOEXEC | (o->o_direct ? O_DIRECT : 0);
  ld->fd = open(o->path, flags);
  if (ld->fd < 0)
    return lt_errorf(err, LT_ERR_IO, "loader: cannot open %s%s: %s%s", o->path,
                     o->o_direct ? " with O_DIRECT" : "", strerror(errno),
                     o->o_direct && errno == EINVAL ? "; this file system has no O_DIRECT, turn it off" : "");
  if (pthread_mutex_init(&ld->mu, NULL) || pthread_cond_init(&ld->work, NULL) ||
      pthread_cond_init(&ld->done, NULL))
    return lt_errorf(err, LT_ERR_INTERNAL, "loader: cannot create thread synchronisation");
  ld->mu_ready = true;
  if (!(ld->threads = ld_calloc(o->io_threads * sizeof(pthread_t), err))) return err->status;
  for (int i = 0; i < o->io_threads; i++) {
    if (pthread_create(&ld->threads[i], NULL, io_thread, ld) != 0)
      return lt_errorf(err, LT_ERR_INTERNAL, "loader: cannot start I/O thread %d: %s", i, strerror(errno));
    ld->n_threads++;
  }
  /* start reading ahead: steps 0..k-1 (lt_loader_next tops the ring up to k ahead) */
  while (ld->next_submit < ld->total_steps && ld->next_submit < o->prefetch_steps)
    if ((st = submit(ld, err)) != LT_OK) return st;
  return LT_OK;
}

lt_loader *lt_loader_open(const lt_loader_opts *o, lt_err *err) {
  lt_err local_err = {0};
  if (!err) err = &local_err;
  lt_loader *ld = lt_calloc(LT_MEM_DATA, sizeof *ld, err);
  if (!ld) return NULL;
  ld->o = *o;
  ld->fd = -1;
  ld->t_open = ld->t_return = lt_now();
  int wr, wn;
  lt_loader_world(&wr, &wn);
  if (o->rank < 0 || o->n_ranks < 0) {
    ld->rank = wr;
    ld->n_ranks = wn;
    ld->collective = wn > 1;
  } else {
    ld->rank = o->rank;
    ld->n_ranks = o->n_ranks;
  }
  lt_status st = LT_OK;
  if (ld->rank >= ld->n_ranks)
    st = lt_errorf(err, LT_ERR_INVALID, "loader: rank %d of %d ranks", ld->rank, ld->n_ranks);
  if (st == LT_OK) st = open_local(ld, err);
  if (ld->collective) st = ld_comm_agree(st, err);
  if (st != LT_OK) {
    lt_loader_close(ld);
    return NULL;
  }
  return ld;
}

static lt_status fail(lt_loader *ld, lt_status st, lt_err *err) {
  ld->failed = st;
  ld->fail_err = *err;
  return st;
}

lt_status lt_loader_next(lt_loader *ld, lt_loader_batch *b, lt_err *err) {
  lt_err local_err = {0};
  if (!err) err = &local_err;
  if (ld->failed != LT_OK) {
    *err = ld->fail_err;
    return ld->failed;
  }
  double t_in = lt_now();
  if (ld->last_n_local > 0) {
    ld->compute_per_sample[ld->n_compute % ld->steps_per_epoch] = (t_in - ld->t_return) / (double)ld->last_n_local;
    ld->n_compute++;
  }
  memset(b, 0, sizeof *b);
  int64_t g = ld->next_deliver;
  if (g >= ld->total_steps) {
    b->n_local = -1;
    b->epoch = ld->o.epochs;
    return LT_OK;
  }
  lt_status st = LT_OK;
  /* top the ring up to k steps ahead of g; step g-1's slot is free again */
  while (st == LT_OK && ld->next_submit < ld->total_steps && ld->next_submit <= g + ld->o.prefetch_steps)
    st = submit(ld, err);
  ring_slot *s = &ld->ring[g % ld->n_ring];
  pthread_mutex_lock(&ld->mu);
  while (st == LT_OK && s->pending > 0) pthread_cond_wait(&ld->done, &ld->mu);
  pthread_mutex_unlock(&ld->mu);
  if (st == LT_OK && s->st != LT_OK) {
    st = s->st;
    *err = s->err;
  }
  if (ld->collective) st = ld_comm_agree(st, err);
  if (st != LT_OK) return fail(ld, st, err);
  /* the next call submits the first step of an epoch: agree on the costs it will be planned with */
  if ((g + ld->o.prefetch_steps + 1) % ld->steps_per_epoch == 0) measure_costs(ld);
  /* hits out of the buffer, then the planned inserts into it (the plan orders them so) */
  for (int64_t j = 0; j < s->n_local; j++) {
    if (s->flags[j] & LT_PLAN_HIT) {
      memcpy(s->x + j * ld->xb, ld->buf_x + (size_t)s->bslot[j] * ld->xb, ld->xb);
      memcpy(s->y + j * ld->yb, ld->buf_y + (size_t)s->bslot[j] * ld->yb, ld->yb);
    }
  }
  for (int64_t j = 0; j < s->n_local; j++) {
    if (s->flags[j] & LT_PLAN_INSERT) {
      memcpy(ld->buf_x + (size_t)s->bslot[j] * ld->xb, s->x + j * ld->xb, ld->xb);
      memcpy(ld->buf_y + (size_t)s->bslot[j] * ld->yb, s->y + j * ld->yb, ld->yb);
    }
  }
  b->epoch = s->epoch;
  b->step = s->step;
  b->n_local = s->n_local;
  b->global_n = s->global_n;
  b->indices = s->indices;
  b->x = s->x;
  b->y = ld->n_src > 1 ? s->y : NULL;
  b->hits = s->hits;
  ld->stats.steps++;
  ld->imbalance_sum += s->imbalance;
  ld->stats.samples += s->n_local;
  ld->stats.hits += s->hits;
  ld->next_deliver++;
  ld->last_n_local = s->n_local;
  ld->t_return = lt_now();
  /* the whole call counts as stall: waiting for reads, for the slowest rank at the error flag,
   * and the copies in and out of the buffer are all time the training loop does not compute */
  ld->stats.stall_s += ld->t_return - t_in;
  return LT_OK;
}

void lt_loader_get_stats(const lt_loader *ld, lt_loader_stats *out) {
  pthread_mutex_lock((pthread_mutex_t *)&ld->mu);
  *out = ld->stats;
  pthread_mutex_unlock((pthread_mutex_t *)&ld->mu);
  out->batch_imbalance = ld->stats.steps ? ld->imbalance_sum / (double)ld->stats.steps : 1.0;
  out->total_s = lt_now() - ld->t_open;
}

int64_t lt_loader_n_samples(const lt_loader *ld) { return ld->N; }
size_t lt_loader_x_sample_bytes(const lt_loader *ld) { return ld->xb; }
size_t lt_loader_y_sample_bytes(const lt_loader *ld) { return ld->yb; }
int lt_loader_rank(const lt_loader *ld) { return ld->rank; }
int lt_loader_n_ranks(const lt_loader *ld) { return ld->n_ranks; }

void lt_loader_close(lt_loader *ld) {
  if (!ld) return;
  if (ld->mu_ready) {
    pthread_mutex_lock(&ld->mu);
    ld->stop = true;
    pthread_cond_broadcast(&ld->work);
    pthread_mutex_unlock(&ld->mu);
  }
  for (int i = 0; i < ld->n_threads; i++) pthread_join(ld->threads[i], NULL);
  if (ld->mu_ready) {
    pthread_mutex_destroy(&ld->mu);
    pthread_cond_destroy(&ld->work);
    pthread_cond_destroy(&ld->done);
  }
  ld_free(ld->threads, ld->threads ? ld->o.io_threads * sizeof(pthread_t) : 0);
  if (ld->fd >= 0) close(ld->fd);
  int64_t B = ld->B < ld->N ? ld->B : ld->N;
  if (ld->ring)
    for (int i = 0; i < ld->n_ring; i++) {
      ring_slot *s = &ld->ring[i];
      ld_free(s->indices, B * 8);
      ld_free(s->flags, B);
      ld_free(s->bslot, B * 4);
      ld_free(s->x, B * ld->xb);
      ld_free(s->y, B * ld->yb);
      ld_free(s->reqs, 2 * B * sizeof(io_req));
      ld_free(s->pieces, 2 * B * sizeof(io_piece));
    }
  ld_free(ld->ring, ld->ring ? ld->n_ring * sizeof(ring_slot) : 0);
  ld_free(ld->wants, ld->wants ? 2 * B * sizeof(want) : 0);
  ld_free(ld->queue, ld->queue ? ld->q_cap * sizeof(io_req *) : 0);
  ld_free(ld->rank_count, ld->rank_count ? ld->n_ranks * sizeof(int64_t) : 0);
  ld_free(ld->compute_per_sample, ld->compute_per_sample ? ld->steps_per_epoch * sizeof(double) : 0);
  ld_free(ld->buf_x, ld->buf_x ? ld->cap * ld->xb : 0);
  ld_free(ld->buf_y, ld->buf_y ? ld->cap * ld->yb : 0);
  lt_plan_free(ld->plan);
  for (int i = 0; i < 2; i++) ld_source_free(&ld->src[i]);
  lt_free(LT_MEM_DATA, ld, sizeof *ld);
}
