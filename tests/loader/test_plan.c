/* Loader planner: the invariants of loader.md (every sample once per epoch, global batches equal
 * the reference permutation, buffer slots consistent), the hit rates of the policies against
 * naive reference simulators, balance, bad input, and the planning time for N = 10^6 × 100. */
#include "lathe/loader.h"
#include "test.h"

#include <stdint.h>

static lt_plan_opts opts(int64_t n, int64_t b, int64_t c, int p, int e, lt_loader_policy pol) {
  lt_plan_opts o = lt_plan_opts_default();
  o.n_samples = n;
  o.global_batch = b;
  o.buffer_samples = c;
  o.n_ranks = p;
  o.epochs = e;
  o.seed = 42;
  o.policy = pol;
  return o;
}

/* Runs the whole plan and checks, epoch by epoch: each sample once, each step equal (as a set,
 * here as a sequence) to the reference permutation, and that every hit names the slot that the
 * rank last filled with that very sample. Returns total hits, or -1 on a failed check. */
static int64_t check_plan(const lt_plan_opts *o, int64_t *hits_per_epoch) {
  lt_err err = {0};
  lt_plan *p = lt_plan_create(o, &err);
  if (!p) {
    TEST_FAIL_AT("lt_plan_create: %s", err.msg);
    return -1;
  }
  int64_t N = o->n_samples, total = 0;
  uint32_t *ref = malloc((size_t)N * 4), *seen = calloc((size_t)N, 4);
  /* per rank slot → sample, as the data path's buffer would hold it */
  int64_t slots_total = o->buffer_samples + o->n_ranks;
  uint32_t *slot_sample = malloc((size_t)slots_total * 4);
  int64_t *slot_base = calloc((size_t)o->n_ranks, 8);
  for (int64_t i = 0; i < slots_total; i++) slot_sample[i] = UINT32_MAX;
  for (int r = 1; r < o->n_ranks; r++) slot_base[r] = slot_base[r - 1] + lt_plan_rank_capacity(p, r - 1);
  int bad = 0;
  for (int e = 0; e < o->epochs && !bad; e++) {
    const lt_plan_epoch *v = lt_plan_next_epoch(p, &err);
    if (!v) {
      TEST_FAIL_AT("epoch %d: %s", e, err.msg);
      bad = 1;
      break;
    }
    lt_plan_permutation(o->seed, v->perm_index, N, ref);
    int64_t hits = 0;
    for (int64_t i = 0; i < N; i++) {
      uint32_t s = v->perm[i];
      if (s != ref[i]) bad = 1;
      if (seen[s] != (uint32_t)e) bad = 1;
      seen[s] = (uint32_t)e + 1;
      if (v->rank[i] >= o->n_ranks) bad = 1;
      if (v->flags[i] & LT_PLAN_HIT) {
        hits++;
        if (v->slot[i] >= lt_plan_rank_capacity(p, v->rank[i]) ||
            slot_sample[slot_base[v->rank[i]] + v->slot[i]] != s)
          bad = 2;
      }
    }
    /* inserts are applied after the step's hits, as the data path does */
    for (int64_t s0 = 0; s0 < N; s0 += o->global_batch)
      for (int64_t i = s0; i < N && i < s0 + o->global_batch; i++)
        if (v->flags[i] & LT_PLAN_INSERT) {
          if (v->slot[i] >= lt_plan_rank_capacity(p, v->rank[i])) bad = 3;
          else slot_sample[slot_base[v->rank[i]] + v->slot[i]] = v->perm[i];
        }
    if (hits != v->hits) bad = 4;
    if (hits_per_epoch) hits_per_epoch[e] = hits;
    total += hits;
    CHECK_MSG(!bad, "epoch %d of policy %s: invariant %d broken", e, lt_loader_policy_name(o->policy), bad);
  }
  free(ref);
  free(seen);
  free(slot_sample);
  free(slot_base);
  lt_plan_free(p);
  return bad ? -1 : total;
}

TEST_CASE(loader_every_sample_once_per_epoch_and_batches_match_reference) {
  for (int pol = 0; pol <= LT_LOADER_POLICY_NONE; pol++)
    for (int bal = 0; bal <= LT_LOADER_BALANCE_EVEN; bal++) {
      lt_plan_opts o = opts(1003, 64, 300, 3, 5, (lt_loader_policy)pol);
      o.balance = (lt_loader_balance)bal;
      CHECK(check_plan(&o, NULL) >= 0);
    }
}

TEST_CASE(loader_plan_is_deterministic) {
  lt_plan_opts o = opts(5000, 100, 1000, 4, 3, LT_LOADER_POLICY_BELADY);
  lt_err err = {0};
  lt_plan *a = lt_plan_create(&o, &err), *b = lt_plan_create(&o, &err);
  REQUIRE(a && b);
  for (int e = 0; e < 3; e++) {
    const lt_plan_epoch *va = lt_plan_next_epoch(a, &err);
    uint8_t *copy = malloc(5000 * 7);
    memcpy(copy, va->rank, 5000 * 2);
    memcpy(copy + 10000, va->slot, 5000 * 4);
    memcpy(copy + 30000, va->flags, 5000);
    const lt_plan_epoch *vb = lt_plan_next_epoch(b, &err);
    CHECK(memcmp(copy, vb->rank, 10000) == 0);
    CHECK(memcmp(copy + 10000, vb->slot, 20000) == 0);
    CHECK(memcmp(copy + 30000, vb->flags, 5000) == 0);
    free(copy);
  }
  lt_plan_free(a);
  lt_plan_free(b);
}

TEST_CASE(loader_static_hit_rate_is_c_over_n_and_belady_never_below) {
  int64_t N = 20000, C = 5000;
  int E = 6;
  int64_t hs[6], hb[6];
  lt_plan_opts o = opts(N, 128, C, 4, E, LT_LOADER_POLICY_STATIC);
  int64_t total_static = check_plan(&o, hs);
  CHECK(hs[0] == 0); /* the first epoch fills the buffer */
  for (int e = 1; e < E; e++) CHECK_NEAR((double)hs[e] / N, (double)C / N, 0.02 * C / N);
  o.policy = LT_LOADER_POLICY_BELADY;
  int64_t total_belady = check_plan(&o, hb);
  printf("  static hits %lld, belady hits %lld over %d epochs (N=%lld, C=%lld, P=4)\n",
         (long long)total_static, (long long)total_belady, E, (long long)N, (long long)C);
  CHECK(total_belady >= total_static);
  /* and on other shapes: fractions, rank counts, batch sizes */
  int64_t cs[] = {100, 1000, 2500, 4000};
  int ps[] = {1, 2, 4, 7};
  for (int k = 0; k < 4; k++) {
    lt_plan_opts a = opts(5000, 1 + 37 * k, cs[k], ps[k], 4, LT_LOADER_POLICY_STATIC);
    int64_t s = check_plan(&a, NULL);
    a.policy = LT_LOADER_POLICY_BELADY;
    int64_t b = check_plan(&a, NULL);
    CHECK_MSG(b >= s, "belady %lld < static %lld at C=%lld P=%d", (long long)b, (long long)s,
              (long long)cs[k], ps[k]);
  }
}

/* ---- naive single-rank reference simulators for the hand-checkable cases ---------------------- */

/* Returns the hit flag of each access of the concatenated epochs (E·N accesses) for one rank
 * with capacity c. kind: 0 lru, 1 fifo, 2 belady-with-bypass. */
static void naive_cache(const uint32_t *seq, int64_t len, int64_t c, int kind, uint8_t *hit) {
  uint32_t *buf = malloc((size_t)(c ? c : 1) * 4);
  int64_t *stamp = malloc((size_t)(c ? c : 1) * 8);
  int64_t used = 0;
  for (int64_t t = 0; t < len; t++) {
    int64_t where = -1;
    for (int64_t i = 0; i < used; i++)
      if (buf[i] == seq[t]) where = i;
    hit[t] = where >= 0;
    if (where >= 0) {
      if (kind == 0) stamp[where] = t; /* lru refreshes; fifo keeps insertion time */
      continue;
    }
    if (c == 0) continue;
    /* next use of a sample after time t, or len if none */
    int64_t victim = -1;
    if (used < c) {
      if (kind == 2) {
        int64_t nu = len;
        for (int64_t u = t + 1; u < len; u++)
          if (seq[u] == seq[t]) { nu = u; break; }
        if (nu == len) continue;
      }
      buf[used] = seq[t];
      stamp[used++] = t;
      continue;
    }
    if (kind == 2) {
      int64_t far = -1, mine = len;
      for (int64_t u = t + 1; u < len; u++)
        if (seq[u] == seq[t]) { mine = u; break; }
      for (int64_t i = 0; i < used; i++) {
        int64_t nu = len;
        for (int64_t u = t + 1; u < len; u++)
          if (seq[u] == buf[i]) { nu = u; break; }
        if (nu > far) far = nu, victim = i;
      }
      if (far <= mine) continue; /* bypass */
    } else {
      victim = 0;
      for (int64_t i = 1; i < used; i++)
        if (stamp[i] < stamp[victim]) victim = i;
    }
    buf[victim] = seq[t];
    stamp[victim] = t;
  }
  free(buf);
  free(stamp);
}

TEST_CASE(loader_lru_fifo_belady_match_naive_single_rank_simulators) {
  int64_t sizes[][2] = {{40, 9}, {60, 1}, {50, 25}, {30, 30}, {33, 0}};
  int E = 4;
  lt_loader_policy pols[] = {LT_LOADER_POLICY_LRU, LT_LOADER_POLICY_SOLAR, LT_LOADER_POLICY_BELADY};
  for (int z = 0; z < 15; z++) {
    int k = z % 3;
    int64_t N = sizes[z / 3][0], C = sizes[z / 3][1];
    lt_plan_opts o = opts(N, 1, C, 1, E, pols[k]); /* batch 1: the naive models serve one access at a time */
    if (pols[k] == LT_LOADER_POLICY_SOLAR) o.epochs = 2; /* with 2 epochs solar keeps the order */
    lt_err err = {0};
    lt_plan *p = lt_plan_create(&o, &err);
    REQUIRE(p);
    uint32_t *seq = malloc((size_t)(N * o.epochs) * 4);
    uint8_t *got = malloc((size_t)(N * o.epochs)), *want = malloc((size_t)(N * o.epochs));
    for (int e = 0; e < o.epochs; e++) {
      const lt_plan_epoch *v = lt_plan_next_epoch(p, &err);
      REQUIRE(v);
      for (int64_t i = 0; i < N; i++) {
        seq[e * N + i] = v->perm[i];
        got[e * N + i] = (v->flags[i] & LT_PLAN_HIT) != 0;
      }
    }
    naive_cache(seq, N * o.epochs, C, k, want);
    int64_t hits = 0, diff = 0;
    for (int64_t t = 0; t < N * o.epochs; t++) hits += got[t], diff += got[t] != want[t];
    CHECK_MSG(diff == 0, "%s N=%lld C=%lld: %lld of %lld accesses differ from the brute-force cache replay",
              lt_loader_policy_name(pols[k]), (long long)N, (long long)C, (long long)diff,
              (long long)(N * o.epochs));
    if (pols[k] == LT_LOADER_POLICY_BELADY) CHECK(hits == C * (E - 1)); /* the optimum: C per epoch */
    free(seq);
    free(got);
    free(want);
    lt_plan_free(p);
  }
}

TEST_CASE(loader_static_and_none_by_hand) {
  /* N=6, C=2, one rank, batch 1: epoch 0 has no hits, every later epoch exactly the 2 pinned
   * samples, always the same two; none never hits. */
  lt_plan_opts o = opts(6, 1, 2, 1, 3, LT_LOADER_POLICY_STATIC);
  lt_err err = {0};
  lt_plan *p = lt_plan_create(&o, &err);
  REQUIRE(p);
  uint32_t pinned[2] = {0, 0};
  for (int e = 0; e < 3; e++) {
    const lt_plan_epoch *v = lt_plan_next_epoch(p, &err);
    REQUIRE(v);
    int k = 0, ins = 0;
    for (int i = 0; i < 6; i++) {
      if (v->flags[i] & LT_PLAN_INSERT) ins++;
      if (v->flags[i] & LT_PLAN_HIT) {
        if (e == 1) pinned[k] = v->perm[i];
        else CHECK(v->perm[i] == pinned[0] || v->perm[i] == pinned[1]);
        k++;
      }
    }
    CHECK(k == (e == 0 ? 0 : 2));
    CHECK(ins == (e == 0 ? 2 : 0));
  }
  CHECK(pinned[0] != pinned[1]);
  CHECK(lt_plan_next_epoch(p, &err) == NULL);
  lt_plan_free(p);
  o.policy = LT_LOADER_POLICY_NONE;
  int64_t h[3];
  CHECK(check_plan(&o, h) == 0);
}

TEST_CASE(loader_static_pins_c_over_p_per_rank) {
  lt_plan_opts o = opts(1000, 50, 301, 4, 2, LT_LOADER_POLICY_STATIC);
  lt_err err = {0};
  lt_plan *p = lt_plan_create(&o, &err);
  REQUIRE(p);
  CHECK(lt_plan_rank_capacity(p, 0) == 76 && lt_plan_rank_capacity(p, 3) == 75);
  lt_plan_next_epoch(p, &err);
  const lt_plan_epoch *v = lt_plan_next_epoch(p, &err);
  int64_t per_rank[4] = {0};
  for (int i = 0; i < 1000; i++)
    if (v->flags[i] & LT_PLAN_HIT) per_rank[v->rank[i]]++;
  for (int r = 0; r < 4; r++) CHECK(per_rank[r] == lt_plan_rank_capacity(p, r));
  lt_plan_free(p);
}

TEST_CASE(loader_even_balance_splits_reads_within_one_and_cost_balances_step_time) {
  for (int bal = 0; bal <= 1; bal++) {
    lt_plan_opts o = opts(4000, 64, 2000, 4, 3, LT_LOADER_POLICY_STATIC);
    o.balance = (lt_loader_balance)bal;
    o.load_cost = 3e-3;
    o.compute_cost = 1e-3;
    lt_err err = {0};
    lt_plan *p = lt_plan_create(&o, &err);
    REQUIRE(p);
    double worst = 0;
    for (int e = 0; e < 3; e++) {
      const lt_plan_epoch *v = lt_plan_next_epoch(p, &err);
      if (e == 0) continue; /* epoch 0 reads pinned samples on their owners */
      for (int64_t s0 = 0; s0 < 4000; s0 += 64) {
        int64_t reads[4] = {0}, hits[4] = {0};
        for (int64_t i = s0; i < s0 + 64 && i < 4000; i++) {
          if (v->flags[i] & LT_PLAN_HIT) hits[v->rank[i]]++;
          else reads[v->rank[i]]++;
        }
        int64_t lo = reads[0], hi = reads[0];
        double cost[4], mx = 0, mean = 0;
        for (int r = 0; r < 4; r++) {
          if (reads[r] < lo) lo = reads[r];
          if (reads[r] > hi) hi = reads[r];
          cost[r] = hits[r] * 1e-3 + reads[r] * 4e-3;
          mean += cost[r] / 4;
          if (cost[r] > mx) mx = cost[r];
        }
        if (bal == LT_LOADER_BALANCE_EVEN) CHECK(hi - lo <= 1);
        if (mx / mean > worst) worst = mx / mean;
      }
    }
    printf("  balance %s: worst max/mean estimated step cost %.3f\n",
           lt_loader_balance_name((lt_loader_balance)bal), worst);
    /* cost balance leaves at most one read's worth of cost (4 ms of a ~64 ms step) above the mean */
    if (bal == LT_LOADER_BALANCE_COST) CHECK(worst < 1.3);
    lt_plan_free(p);
  }
}

TEST_CASE(loader_bad_input_gives_clear_errors) {
  lt_err err = {0};
  lt_plan_opts o = opts(100, 10, 101, 2, 1, LT_LOADER_POLICY_STATIC);
  CHECK(lt_plan_create(&o, &err) == NULL);
  CHECK(err.status == LT_ERR_INVALID);
  CHECK_STR_CONTAINS(err.msg, "larger than the data");
  o = opts(3, 10, 1, 4, 1, LT_LOADER_POLICY_STATIC);
  CHECK(lt_plan_create(&o, &err) == NULL);
  CHECK_STR_CONTAINS(err.msg, "more ranks (4) than samples (3)");
  o = opts(100, 0, 10, 1, 1, LT_LOADER_POLICY_STATIC);
  CHECK(lt_plan_create(&o, &err) == NULL);
  CHECK_STR_CONTAINS(err.msg, "batch size of at least 1");
  o = opts(100, 10, 10, 1, 0, LT_LOADER_POLICY_STATIC);
  CHECK(lt_plan_create(&o, &err) == NULL);
  CHECK_STR_CONTAINS(err.msg, "epochs");
  lt_loader_policy pol;
  CHECK(lt_loader_policy_parse("fifo", &pol, &err) == LT_ERR_INVALID);
  CHECK_STR_CONTAINS(err.msg, "static, belady, solar, lru or none");
  CHECK(lt_loader_policy_parse("belady", &pol, &err) == LT_OK && pol == LT_LOADER_POLICY_BELADY);
}

TEST_CASE(loader_solar_reorders_epochs_to_raise_overlap) {
  /* With a buffer and several epochs the open TSP path picks an order whose total overlap is at
   * least that of the identity order; the plan still covers each permutation exactly once. */
  lt_plan_opts o = opts(2000, 50, 1000, 2, 8, LT_LOADER_POLICY_SOLAR);
  lt_err err = {0};
  lt_plan *p = lt_plan_create(&o, &err);
  REQUIRE(p);
  int used[8] = {0};
  for (int e = 0; e < 8; e++) {
    const lt_plan_epoch *v = lt_plan_next_epoch(p, &err);
    REQUIRE(v);
    used[v->perm_index]++;
  }
  for (int e = 0; e < 8; e++) CHECK(used[e] == 1);
  lt_plan_free(p);
  CHECK(check_plan(&o, NULL) >= 0);
}

TEST_CASE(loader_plans_a_million_samples_over_100_epochs_quickly) {
  lt_plan_opts o = opts(1000000, 256, 500000, 4, 100, LT_LOADER_POLICY_STATIC);
  lt_err err = {0};
  double t0 = lt_now();
  lt_plan *p = lt_plan_create(&o, &err);
  REQUIRE(p);
  int64_t hits = 0;
  for (int e = 0; e < 100; e++) {
    const lt_plan_epoch *v = lt_plan_next_epoch(p, &err);
    REQUIRE(v);
    hits += v->hits;
  }
  double dt = lt_now() - t0;
  lt_plan_free(p);
  printf("  planned N=1e6 x 100 epochs (static, P=4, B=256, C=N/2) in %.3f s, hit rate %.4f\n", dt,
         hits / 1e8);
  CHECK(hits == 99 * 500000);
  /* the goal is 2 s on an idle core; the assertion allows for a shared CI machine and sanitizers */
  CHECK(dt < 20.0);
}

int main(void) {
  RUN(loader_every_sample_once_per_epoch_and_batches_match_reference);
  RUN(loader_plan_is_deterministic);
  RUN(loader_static_hit_rate_is_c_over_n_and_belady_never_below);
  RUN(loader_lru_fifo_belady_match_naive_single_rank_simulators);
  RUN(loader_static_and_none_by_hand);
  RUN(loader_static_pins_c_over_p_per_rank);
  RUN(loader_even_balance_splits_reads_within_one_and_cost_balances_step_time);
  RUN(loader_bad_input_gives_clear_errors);
  RUN(loader_solar_reorders_epochs_to_raise_overlap);
  RUN(loader_plans_a_million_samples_over_100_epochs_quickly);
  return test_summary();
}
