/* The loader's planner: per-epoch permutations drawn lazily from the counter-based RNG keyed by
 * (seed, epoch), a simulation of every rank's buffer under the chosen policy, and the split of
 * each global batch into hits (computed on the rank that holds them) and storage reads (given to
 * ranks by the balance rule). It is a pure function of its options, so every rank computes the
 * same plan with no communication. Memory is O(N): the permutation(s) of the epoch in flight plus
 * per-sample buffer state. */
#include "lathe/loader.h"

#include <stdlib.h>
#include <string.h>

#define NO_RANK UINT16_MAX
#define NO_SLOT UINT32_MAX
#define NO_SAMPLE UINT32_MAX
/* Philox stream tags: the high 32 bits name the purpose, the low 32 bits the permutation number,
 * so that the loader's draws never collide with initialisation or augmentation streams. */
#define STREAM_PERM 0x4C445031ull /* "LDP1" */
#define STREAM_PIN 0x4C445049ull  /* "LDPI" */

static const char *policy_names[] = {"static", "belady", "solar", "lru", "none"};
static const char *balance_names[] = {"cost", "even"};

const char *lt_loader_policy_name(lt_loader_policy p) {
  return (unsigned)p < 5 ? policy_names[p] : "invalid";
}
const char *lt_loader_balance_name(lt_loader_balance b) {
  return (unsigned)b < 2 ? balance_names[b] : "invalid";
}

lt_status lt_loader_policy_parse(const char *name, lt_loader_policy *out, lt_err *err) {
  for (int i = 0; i < 5; i++)
    if (name && strcmp(name, policy_names[i]) == 0) {
      *out = (lt_loader_policy)i;
      return LT_OK;
    }
  return lt_errorf(err, LT_ERR_INVALID,
                   "unknown loader policy \"%s\"; use static, belady, solar, lru or none",
                   name ? name : "(null)");
}

lt_status lt_loader_balance_parse(const char *name, lt_loader_balance *out, lt_err *err) {
  for (int i = 0; i < 2; i++)
    if (name && strcmp(name, balance_names[i]) == 0) {
      *out = (lt_loader_balance)i;
      return LT_OK;
    }
  return lt_errorf(err, LT_ERR_INVALID, "unknown loader balance \"%s\"; use cost or even",
                   name ? name : "(null)");
}

lt_plan_opts lt_plan_opts_default(void) {
  lt_plan_opts o = {0};
  o.n_ranks = 1;
  o.epochs = 1;
  o.policy = LT_LOADER_POLICY_STATIC;
  o.balance = LT_LOADER_BALANCE_COST;
  o.load_cost = 1e-3;
  o.compute_cost = 1e-3;
  return o;
}

/* Uniform draws in [0, range) from one Philox stream, four 32-bit words per block. Lemire's
 * multiply-shift with rejection: unbiased, and almost never divides. */
typedef struct draw {
  uint64_t seed, stream, index;
  uint32_t buf[4];
  int left;
} draw;

static uint32_t draw_u32(draw *d) {
  if (d->left == 0) {
    lt_philox(d->seed, d->stream, d->index++, d->buf);
    d->left = 4;
  }
  return d->buf[--d->left];
}

static uint32_t draw_below(draw *d, uint32_t range) {
  uint64_t m = (uint64_t)draw_u32(d) * range;
  uint32_t low = (uint32_t)m;
  if (low < range) {
    uint32_t floor = (uint32_t)(-range) % range;
    while (low < floor) {
      m = (uint64_t)draw_u32(d) * range;
      low = (uint32_t)m;
    }
  }
  return (uint32_t)(m >> 32);
}

static void permutation(uint64_t seed, uint64_t tag, int64_t k, int64_t n, uint32_t *perm) {
  draw d = {seed, (tag << 32) | (uint32_t)k, 0, {0}, 0};
  for (int64_t i = 0; i < n; i++) perm[i] = (uint32_t)i;
  for (int64_t i = n - 1; i > 0; i--) {
    uint32_t j = draw_below(&d, (uint32_t)(i + 1));
    uint32_t t = perm[i];
    perm[i] = perm[j];
    perm[j] = t;
  }
}

void lt_plan_permutation(uint64_t seed, int64_t k, int64_t n, uint32_t *perm) {
  permutation(seed, STREAM_PERM, k, n, perm);
}

struct lt_plan {
  lt_plan_opts o;
  int next_epoch;      /* logical epoch planned by the next lt_plan_next_epoch */
  int *order;          /* (E) permutation index run at each logical epoch (solar reorders) */
  int64_t *cap;        /* (P) buffer capacity per rank */
  int64_t *used;       /* (P) buffered samples per rank */
  /* (N) per-sample buffer state, packed so that the one random access per planned sample
   * touches one cache line (three separate arrays made planning ~2x slower) */
  struct sample_state {
    uint32_t slot;  /* slot in its owner's buffer (static: fixed at create for pinned samples) */
    uint16_t owner; /* rank whose buffer holds it, NO_RANK if none */
    uint16_t pin;   /* static: the rank it is pinned to, NO_RANK if not pinned */
  } *st;
  /* lru: doubly linked list per rank, most recent at head */
  uint32_t *lru_prev, *lru_next; /* (N) */
  uint32_t *lru_head, *lru_tail; /* (P) */
  /* solar: per-rank FIFO ring, the rings of all ranks laid end to end in one (C) array */
  uint32_t *fifo;                /* (C) sample ids */
  int64_t *fifo_base, *fifo_head; /* (P) start of the rank's ring in fifo; index of its oldest */
  /* belady. Each sample is used once per epoch, so a buffered sample not yet used this epoch
   * ("pending") is always needed sooner than one already used, whose next use is its position in
   * the next epoch; and any newcomer is needed only next epoch. Belady therefore never evicts a
   * pending sample: it evicts the used sample needed latest next epoch, or bypasses. Only the used
   * samples need an order: per rank a max-heap of their next-epoch positions (keys are unique,
   * next_perm maps a key back to its sample). At an epoch boundary every used sample becomes
   * pending and the heaps empty. */
  uint32_t *heap;       /* (C) next-epoch positions, the ranks' heaps laid end to end */
  int64_t *heap_base;   /* (P) start of each rank's heap */
  int64_t *heap_n;      /* (P) entries in each rank's heap */
  uint32_t *next_perm;  /* (N) the next epoch's permutation (belady looks one epoch ahead) */
  uint32_t *next_pos;   /* (N) inverse of next_perm */
  /* the epoch view handed out */
  lt_plan_epoch view;
  double *rank_time;    /* (P) cost balance: estimated step time per rank */
  uint32_t *miss_pos;   /* (B) positions of a step that must come from storage */
};

int64_t lt_plan_rank_capacity(const lt_plan *p, int rank) {
  return rank >= 0 && rank < p->o.n_ranks ? p->cap[rank] : 0;
}

void lt_plan_set_costs(lt_plan *p, double load_cost, double compute_cost) {
  if (load_cost > 0) p->o.load_cost = load_cost;
  if (compute_cost > 0) p->o.compute_cost = compute_cost;
}

static void *plan_alloc(size_t count, size_t each, lt_err *err) {
  size_t bytes = count * each;
  return lt_calloc(LT_MEM_DATA, bytes ? bytes : 1, err);
}

/* lt_free needs the size for accounting; the plan's arrays are all sized from N, P, B, C, E. */
#define PLAN_FREE(ptr, count) lt_free(LT_MEM_DATA, (ptr), ((count) ? (size_t)(count) * sizeof *(ptr) : 1))

void lt_plan_free(lt_plan *p) {
  if (!p) return;
  int64_t N = p->o.n_samples, P = p->o.n_ranks, C = p->o.buffer_samples, B = p->o.global_batch;
  PLAN_FREE(p->order, p->o.epochs);
  PLAN_FREE(p->cap, P);
  PLAN_FREE(p->used, P);
  PLAN_FREE(p->st, N);
  PLAN_FREE(p->lru_prev, p->lru_prev ? N : 0);
  PLAN_FREE(p->lru_next, p->lru_next ? N : 0);
  PLAN_FREE(p->lru_head, p->lru_head ? P : 0);
  PLAN_FREE(p->lru_tail, p->lru_tail ? P : 0);
  PLAN_FREE(p->fifo, p->fifo ? C : 0);
  PLAN_FREE(p->fifo_base, p->fifo_base ? P : 0);
  PLAN_FREE(p->fifo_head, p->fifo_head ? P : 0);
  PLAN_FREE(p->heap, p->heap ? C : 0);
  PLAN_FREE(p->heap_base, p->heap_base ? P : 0);
  PLAN_FREE(p->heap_n, p->heap_n ? P : 0);
  PLAN_FREE(p->next_perm, p->next_perm ? N : 0);
  PLAN_FREE(p->next_pos, p->next_pos ? N : 0);
  PLAN_FREE(p->view.perm, N);
  PLAN_FREE(p->view.rank, N);
  PLAN_FREE(p->view.flags, N);
  PLAN_FREE(p->view.slot, N);
  PLAN_FREE(p->rank_time, P);
  PLAN_FREE(p->miss_pos, B < N ? B : N);
  lt_free(LT_MEM_DATA, p, sizeof *p);
}

static lt_status validate(const lt_plan_opts *o, lt_err *err) {
  if (o->n_samples <= 0)
    return lt_errorf(err, LT_ERR_INVALID, "the dataset has %lld samples; a loader needs at least 1",
                     (long long)o->n_samples);
  if (o->n_samples >= (int64_t)UINT32_MAX)
    return lt_errorf(err, LT_ERR_UNSUPPORTED,
                     "%lld samples exceed the loader's limit of %u; split the dataset into files",
                     (long long)o->n_samples, UINT32_MAX - 1);
  if (o->global_batch <= 0)
    return lt_errorf(err, LT_ERR_INVALID, "global batch is %lld; set a batch size of at least 1",
                     (long long)o->global_batch);
  if (o->n_ranks < 1 || o->n_ranks >= NO_RANK)
    return lt_errorf(err, LT_ERR_INVALID, "%d ranks; the loader supports 1 to %d ranks", o->n_ranks,
                     NO_RANK - 1);
  if (o->n_ranks > o->n_samples)
    return lt_errorf(err, LT_ERR_INVALID,
                     "more ranks (%d) than samples (%lld): some ranks would never get a sample; "
                     "run with at most %lld ranks or use a larger dataset",
                     o->n_ranks, (long long)o->n_samples, (long long)o->n_samples);
  if (o->buffer_samples < 0 || o->buffer_samples > o->n_samples)
    return lt_errorf(err, LT_ERR_INVALID,
                     "buffer of %lld samples is larger than the data (%lld samples) or negative; "
                     "use a buffer fraction between 0 and 1",
                     (long long)o->buffer_samples, (long long)o->n_samples);
  if (o->epochs < 1)
    return lt_errorf(err, LT_ERR_INVALID, "%d epochs; plan at least 1", o->epochs);
  if ((unsigned)o->policy > LT_LOADER_POLICY_NONE || (unsigned)o->balance > LT_LOADER_BALANCE_EVEN)
    return lt_errorf(err, LT_ERR_INVALID, "unknown loader policy or balance value");
  if (!(o->load_cost > 0) || !(o->compute_cost > 0))
    return lt_errorf(err, LT_ERR_INVALID,
                     "load and compute cost estimates must be positive (got %g and %g seconds)",
                     o->load_cost, o->compute_cost);
  return LT_OK;
}

/* ---- solar: epoch order by an open travelling-salesman path --------------------------------- */

/* Cost of running permutation j right after permutation i: the samples in the first C positions
 * of j that are not among the last C of i (what a FIFO of C leaves behind). Bitsets make each of
 * the E² overlaps N/64 word operations. The path is the best greedy nearest-neighbour walk over
 * all start points, which is what the paper's heuristic does for tens of epochs. */
static lt_status solar_order(lt_plan *p, lt_err *err) {
  int E = p->o.epochs;
  int64_t N = p->o.n_samples, C = p->o.buffer_samples, W = (N + 63) / 64;
  for (int e = 0; e < E; e++) p->order[e] = e;
  if (E < 3 || C == 0) return LT_OK; /* with two epochs either order costs the same */
  lt_status st = LT_OK;
  uint64_t *head = plan_alloc((size_t)E * W, 8, err), *tail = plan_alloc((size_t)E * W, 8, err);
  uint32_t *perm = plan_alloc(N, 4, err);
  int64_t *cost = plan_alloc((size_t)E * E, 8, err);
  int *path = plan_alloc(E, sizeof(int), err);
  char *seen = plan_alloc(E, 1, err);
  if (!head || !tail || !perm || !cost || !path || !seen) {
    st = LT_ERR_NOMEM;
    goto done;
  }
  for (int e = 0; e < E; e++) {
    lt_plan_permutation(p->o.seed, e, N, perm);
    for (int64_t i = 0; i < C; i++) {
      head[e * W + perm[i] / 64] |= 1ull << (perm[i] % 64);
      tail[e * W + perm[N - 1 - i] / 64] |= 1ull << (perm[N - 1 - i] % 64);
    }
  }
  for (int i = 0; i < E; i++)
    for (int j = 0; j < E; j++) {
      int64_t overlap = 0;
      for (int64_t w = 0; w < W; w++) overlap += __builtin_popcountll(tail[i * W + w] & head[j * W + w]);
      cost[i * E + j] = C - overlap;
    }
  int64_t best = INT64_MAX;
  for (int start = 0; start < E; start++) {
    memset(seen, 0, (size_t)E);
    path[0] = start;
    seen[start] = 1;
    int64_t total = 0;
    for (int k = 1; k < E; k++) {
      int cur = path[k - 1], pick = -1;
      for (int j = 0; j < E; j++)
        if (!seen[j] && (pick < 0 || cost[cur * E + j] < cost[cur * E + pick])) pick = j;
      path[k] = pick;
      seen[pick] = 1;
      total += cost[cur * E + pick];
    }
    if (total < best) {
      best = total;
      memcpy(p->order, path, (size_t)E * sizeof(int));
    }
  }
done:
  lt_free(LT_MEM_DATA, head, head ? (size_t)E * W * 8 : 0);
  lt_free(LT_MEM_DATA, tail, tail ? (size_t)E * W * 8 : 0);
  lt_free(LT_MEM_DATA, perm, perm ? (size_t)N * 4 : 0);
  lt_free(LT_MEM_DATA, cost, cost ? (size_t)E * E * 8 : 0);
  lt_free(LT_MEM_DATA, path, path ? (size_t)E * sizeof(int) : 0);
  lt_free(LT_MEM_DATA, seen, seen ? (size_t)E : 0);
  return st;
}

lt_plan *lt_plan_create(const lt_plan_opts *o, lt_err *err) {
  if (validate(o, err) != LT_OK) return NULL;
  lt_plan *p = lt_calloc(LT_MEM_DATA, sizeof *p, err);
  if (!p) return NULL;
  p->o = *o;
  int64_t N = o->n_samples, P = o->n_ranks, C = o->buffer_samples, B = o->global_batch;
  lt_loader_policy pol = o->policy;
  if (pol == LT_LOADER_POLICY_NONE) p->o.buffer_samples = C = 0;
  bool ok = (p->order = plan_alloc(o->epochs, sizeof(int), err)) && (p->cap = plan_alloc(P, 8, err)) &&
            (p->used = plan_alloc(P, 8, err)) && (p->st = plan_alloc(N, sizeof *p->st, err)) && (p->view.perm = plan_alloc(N, 4, err)) &&
            (p->view.rank = plan_alloc(N, 2, err)) && (p->view.flags = plan_alloc(N, 1, err)) &&
            (p->view.slot = plan_alloc(N, 4, err)) && (p->rank_time = plan_alloc(P, 8, err)) &&
            (p->miss_pos = plan_alloc(B < N ? B : N, 4, err));
  if (ok && pol == LT_LOADER_POLICY_LRU)
    ok = (p->lru_prev = plan_alloc(N, 4, err)) && (p->lru_next = plan_alloc(N, 4, err)) &&
         (p->lru_head = plan_alloc(P, 4, err)) && (p->lru_tail = plan_alloc(P, 4, err));
  if (ok && pol == LT_LOADER_POLICY_SOLAR)
    ok = (p->fifo = plan_alloc(C, 4, err)) && (p->fifo_base = plan_alloc(P, 8, err)) &&
         (p->fifo_head = plan_alloc(P, 8, err));
  if (ok && pol == LT_LOADER_POLICY_BELADY)
    ok = (p->heap = plan_alloc(C, 4, err)) && (p->heap_base = plan_alloc(P, 8, err)) &&
         (p->heap_n = plan_alloc(P, 8, err)) &&
         (p->next_perm = plan_alloc(N, 4, err)) && (p->next_pos = plan_alloc(N, 4, err));
  if (!ok) {
    lt_plan_free(p);
    return NULL;
  }
  p->view.n = N;
  p->view.n_steps = (N + B - 1) / B;
  for (int64_t i = 0; i < N; i++) p->st[i].owner = p->st[i].pin = NO_RANK;
  int64_t base = 0;
  for (int r = 0; r < P; r++) {
    p->cap[r] = C / P + (r < C % P);
    if (p->fifo_base) p->fifo_base[r] = base;
    if (p->heap_base) p->heap_base[r] = base;
    if (p->lru_head) p->lru_head[r] = p->lru_tail[r] = NO_SAMPLE;
    base += p->cap[r];
  }
  if (pol == LT_LOADER_POLICY_STATIC) {
    /* The pinned set: the first C of a seeded permutation, dealt round-robin so that rank r holds
     * cap[r] samples and pin j sits at slot j / P of rank j % P. */
    uint32_t *perm = p->view.perm; /* borrowed as scratch before the first epoch */
    permutation(o->seed, STREAM_PIN, 0, N, perm);
    for (int64_t j = 0; j < C; j++) {
      p->st[perm[j]].pin = (uint16_t)(j % P);
      p->st[perm[j]].slot = (uint32_t)(j / P);
    }
  }
  if (pol == LT_LOADER_POLICY_SOLAR) {
    if (solar_order(p, err) != LT_OK) {
      lt_plan_free(p);
      return NULL;
    }
  } else {
    for (int e = 0; e < o->epochs; e++) p->order[e] = e;
  }
  if (pol == LT_LOADER_POLICY_BELADY) {
    lt_plan_permutation(o->seed, 0, N, p->next_perm);
    for (int64_t i = 0; i < N; i++) p->next_pos[p->next_perm[i]] = (uint32_t)i;
  }
  return p;
}

/* ---- buffer policies ------------------------------------------------------------------------ */

static void lru_unlink(lt_plan *p, int r, uint32_t s) {
  uint32_t a = p->lru_prev[s], b = p->lru_next[s];
  if (a != NO_SAMPLE) p->lru_next[a] = b;
  else p->lru_head[r] = b;
  if (b != NO_SAMPLE) p->lru_prev[b] = a;
  else p->lru_tail[r] = a;
}

static void lru_push_front(lt_plan *p, int r, uint32_t s) {
  p->lru_prev[s] = NO_SAMPLE;
  p->lru_next[s] = p->lru_head[r];
  if (p->lru_head[r] != NO_SAMPLE) p->lru_prev[p->lru_head[r]] = s;
  else p->lru_tail[r] = s;
  p->lru_head[r] = s;
}

/* Max-heap of keys h (n entries): the root is the key needed latest. */
static void heap_push(uint32_t *h, int64_t n, uint32_t key) {
  int64_t i = n;
  while (i > 0 && h[(i - 1) / 2] < key) {
    h[i] = h[(i - 1) / 2];
    i = (i - 1) / 2;
  }
  h[i] = key;
}

static void heap_replace_top(uint32_t *h, int64_t n, uint32_t key) {
  int64_t i = 0;
  for (;;) {
    int64_t l = 2 * i + 1, m = l;
    if (l >= n) break;
    if (l + 1 < n && h[l + 1] > h[l]) m = l + 1;
    if (h[m] <= key) break;
    h[i] = h[m];
    i = m;
  }
  h[i] = key;
}

static void on_hit(lt_plan *p, int epoch, int r, uint32_t s) {
  if (p->lru_prev) {
    lru_unlink(p, r, s);
    lru_push_front(p, r, s);
  } else if (p->heap && epoch + 1 < p->o.epochs) {
    /* pending → used: from now on it is needed at its position in the next epoch */
    heap_push(p->heap + p->heap_base[r], p->heap_n[r]++, p->next_pos[s]);
  }
}

/* Sample s was just read by rank r at position pos. Decides whether r keeps it and what it
 * evicts; returns its slot, or NO_SLOT when it is not kept. */
static uint32_t on_read(lt_plan *p, int epoch, int r, uint32_t s) {
  int64_t cap = p->cap[r];
  if (cap == 0) return NO_SLOT;
  uint32_t victim = NO_SAMPLE, slot;
  switch (p->o.policy) {
  case LT_LOADER_POLICY_STATIC:
    if (p->st[s].pin != r) return NO_SLOT;
    p->st[s].owner = (uint16_t)r;
    return p->st[s].slot; /* fixed at create */
  case LT_LOADER_POLICY_LRU:
    if (p->used[r] == cap) {
      victim = p->lru_tail[r];
      lru_unlink(p, r, victim);
    }
    lru_push_front(p, r, s);
    break;
  case LT_LOADER_POLICY_SOLAR: {
    uint32_t *ring = p->fifo + p->fifo_base[r];
    if (p->used[r] == cap) {
      victim = ring[p->fifo_head[r]];
      ring[p->fifo_head[r]] = s;
      p->fifo_head[r] = (p->fifo_head[r] + 1) % cap;
    } else {
      ring[(p->fifo_head[r] + p->used[r]) % cap] = s;
    }
    break;
  }
  case LT_LOADER_POLICY_BELADY: {
    if (epoch + 1 >= p->o.epochs) return NO_SLOT; /* never needed again */
    uint32_t key = p->next_pos[s], *h = p->heap + p->heap_base[r];
    if (p->used[r] == cap) {
      /* full: only a used sample needed later than the newcomer may go; else bypass */
      if (p->heap_n[r] == 0 || h[0] <= key) return NO_SLOT;
      victim = p->next_perm[h[0]];
      heap_replace_top(h, p->heap_n[r], key);
    } else {
      heap_push(h, p->heap_n[r]++, key);
    }
    break;
  }
  case LT_LOADER_POLICY_NONE: return NO_SLOT;
  }
  if (victim != NO_SAMPLE) {
    slot = p->st[victim].slot;
    p->st[victim].owner = NO_RANK;
  } else {
    slot = (uint32_t)p->used[r]++;
  }
  p->st[s].owner = (uint16_t)r;
  p->st[s].slot = slot;
  return slot;
}

/* ---- planning one epoch ----------------------------------------------------------------------- */

/* Picks the rank for one storage read among P, by the balance rule. even_next rotates so that
 * the remainder of an uneven split moves between ranks from step to step. */
static int pick_rank(lt_plan *p, int *even_next) {
  int P = p->o.n_ranks;
  if (p->o.balance == LT_LOADER_BALANCE_EVEN) {
    int r = *even_next;
    *even_next = (r + 1) % P;
    return r;
  }
  int best = 0;
  for (int r = 1; r < P; r++)
    if (p->rank_time[r] < p->rank_time[best]) best = r;
  return best;
}

const lt_plan_epoch *lt_plan_next_epoch(lt_plan *p, lt_err *err) {
  int e = p->next_epoch;
  if (e >= p->o.epochs) {
    lt_errorf(err, LT_ERR_INVALID, "all %d planned epochs were already handed out", p->o.epochs);
    return NULL;
  }
  int64_t N = p->o.n_samples, B = p->o.global_batch;
  int P = p->o.n_ranks;
  lt_plan_epoch *v = &p->view;
  v->epoch = e;
  v->perm_index = p->order[e];
  v->hits = 0;
  if (p->next_perm) {
    /* belady: the permutation computed as "next" last epoch is this epoch's; draw the one after */
    memcpy(v->perm, p->next_perm, (size_t)N * 4);
    for (int r = 0; r < P; r++) p->heap_n[r] = 0; /* every used sample becomes pending */
    if (e + 1 < p->o.epochs) {
      lt_plan_permutation(p->o.seed, e + 1, N, p->next_perm);
      for (int64_t i = 0; i < N; i++) p->next_pos[p->next_perm[i]] = (uint32_t)i;
    }
  } else {
    lt_plan_permutation(p->o.seed, v->perm_index, N, v->perm);
  }
  double load = p->o.load_cost, compute = p->o.compute_cost;
  int even_next = 0;
  /* static after the first epoch keeps nothing a read brings in: the pins are all loaded */
  bool keeps_reads = p->o.buffer_samples > 0 && !(p->o.policy == LT_LOADER_POLICY_STATIC && e > 0);
  for (int64_t s0 = 0; s0 < N; s0 += B) {
    int64_t s1 = s0 + B < N ? s0 + B : N, n_miss = 0;
    for (int r = 0; r < P; r++) p->rank_time[r] = 0;
    /* Hits first: a buffered sample is computed where it lives. */
    for (int64_t i = s0; i < s1; i++) {
      uint32_t s = v->perm[i];
      /* the sample state is a random access into N·8 bytes: ask for it a few samples early */
      if (i + 16 < N) __builtin_prefetch(&p->st[v->perm[i + 16]]);
      struct sample_state ss = p->st[s];
      int r = ss.owner;
      if (r != NO_RANK) {
        v->rank[i] = (uint16_t)r;
        v->flags[i] = LT_PLAN_HIT;
        v->slot[i] = ss.slot;
        p->rank_time[r] += compute;
        v->hits++;
        on_hit(p, e, r, s);
      } else if (ss.pin != NO_RANK) {
        /* static, first sight of a pinned sample: its owner reads it to fill its buffer */
        v->rank[i] = ss.pin;
        p->rank_time[ss.pin] += load + compute;
        v->flags[i] = 0;
        v->slot[i] = NO_SLOT;
      } else {
        p->miss_pos[n_miss++] = (uint32_t)i;
        v->flags[i] = 0;
        v->slot[i] = NO_SLOT;
      }
    }
    for (int64_t m = 0; m < n_miss; m++) {
      int r = pick_rank(p, &even_next);
      v->rank[p->miss_pos[m]] = (uint16_t)r;
      p->rank_time[r] += load + compute;
    }
    /* Then the reads enter the buffers, in position order (after this step's hits were served,
     * so an eviction never takes a sample this step still needs). */
    for (int64_t i = s0; i < s1 && keeps_reads; i++) {
      if (v->flags[i] & LT_PLAN_HIT) continue;
      uint32_t slot = on_read(p, e, v->rank[i], v->perm[i]);
      v->slot[i] = slot;
      if (slot != NO_SLOT) v->flags[i] = LT_PLAN_INSERT;
    }
  }
  p->next_epoch++;
  return v;
}
