/* Core: errors, the counting allocator, the counter-based RNG, the machine-busy sampler. */
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lathe/core.h"
#include "test.h"

TEST_CASE(alloc_counts_current_and_peak_per_category) {
  lt_mem_reset_peaks();
  lt_mem_stats before, mid, after;
  lt_mem_get_stats(&before);
  lt_err err = {0};
  void *a = lt_alloc(LT_MEM_SAVED, 1000, &err);
  void *b = lt_alloc(LT_MEM_SAVED, 500, &err);
  REQUIRE(a && b);
  lt_free(LT_MEM_SAVED, a, 1000);
  lt_mem_get_stats(&mid);
  CHECK(mid.current[LT_MEM_SAVED] - before.current[LT_MEM_SAVED] == 500);
  CHECK(mid.peak[LT_MEM_SAVED] - before.current[LT_MEM_SAVED] == 1500);
  lt_free(LT_MEM_SAVED, b, 500);
  lt_mem_get_stats(&after);
  CHECK(after.current[LT_MEM_SAVED] == before.current[LT_MEM_SAVED]);
}

/* lt_shrink keeps a block's first bytes and moves its count to another category: a large block
 * (mapped) and a small one (heap), each filled and checked after the cut. */
TEST_CASE(shrink_keeps_bytes_and_moves_the_count) {
  const size_t sizes[2] = {(size_t)8 << 20, 3000};
  for (int k = 0; k < 2; k++) {
    lt_mem_stats before, mid, after;
    lt_mem_get_stats(&before);
    lt_err err = {0};
    unsigned char *p = lt_alloc(LT_MEM_WORKSPACE, sizes[k], &err);
    REQUIRE(p);
    const size_t keep = sizes[k] / 7 + 5;
    for (size_t i = 0; i < keep; i++) p[i] = (unsigned char)(i * 31 + 7);
    unsigned char *q = lt_shrink(LT_MEM_WORKSPACE, p, sizes[k], LT_MEM_SAVED, keep);
    REQUIRE(q);
    lt_mem_get_stats(&mid);
    CHECK(mid.current[LT_MEM_WORKSPACE] == before.current[LT_MEM_WORKSPACE]);
    CHECK(mid.current[LT_MEM_SAVED] - before.current[LT_MEM_SAVED] == (int64_t)keep);
    size_t bad = 0;
    for (size_t i = 0; i < keep; i++) bad += q[i] != (unsigned char)(i * 31 + 7);
    CHECK_MSG(bad == 0, "%zu of %zu bytes changed by the cut", bad, keep);
    lt_free(LT_MEM_SAVED, q, keep);
    lt_mem_get_stats(&after);
    CHECK(after.current[LT_MEM_SAVED] == before.current[LT_MEM_SAVED]);
  }
  /* growing is refused, the block untouched */
  lt_err err = {0};
  void *p = lt_alloc(LT_MEM_OTHER, 100, &err);
  REQUIRE(p);
  CHECK(lt_shrink(LT_MEM_OTHER, p, 100, LT_MEM_SAVED, 200) == NULL);
  lt_free(LT_MEM_OTHER, p, 100);
}

TEST_CASE(alloc_cap_refused_with_message) {
  lt_mem_set_cap(4096);
  lt_err err = {0};
  void *p = lt_alloc(LT_MEM_WORKSPACE, 1 << 20, &err);
  CHECK(p == NULL);
  CHECK(err.status == LT_ERR_NOMEM);
  CHECK_STR_CONTAINS(err.msg, "memory cap");
  lt_mem_set_cap(0);
}

TEST_CASE(philox_matches_published_known_answer) {
  /* Random123 kat_vectors: philox4x32 10 rounds, counter 0, key 0. */
  uint32_t o[4];
  lt_philox(0, 0, 0, o);
  CHECK(o[0] == 0x6627e8d5u && o[1] == 0xe169c58du && o[2] == 0xbc57ac4cu && o[3] == 0x9b00dbd8u);
}

TEST_CASE(rng_is_a_function_of_its_key) {
  lt_rng a = lt_rng_make(42, 7), b = lt_rng_make(42, 7), c = lt_rng_make(42, 8);
  int same = 1, differ = 0;
  for (int i = 0; i < 100; i++) {
    uint64_t x = lt_rng_u64(&a), y = lt_rng_u64(&b), z = lt_rng_u64(&c);
    same &= x == y;
    differ |= x != z;
  }
  CHECK(same);
  CHECK(differ);
}

TEST_CASE(rng_below_is_uniform_enough) {
  lt_rng r = lt_rng_make(1, 0);
  int counts[10] = {0};
  for (int i = 0; i < 100000; i++) counts[lt_rng_below(&r, 10)]++;
  for (int i = 0; i < 10; i++) CHECK_MSG(counts[i] > 9500 && counts[i] < 10500, "bucket %d has %d", i, counts[i]);
  double s = 0, s2 = 0;
  for (int i = 0; i < 100000; i++) {
    double v = lt_rng_normal(&r);
    s += v, s2 += v * v;
  }
  CHECK_NEAR(s / 100000, 0.0, 0.02);
  CHECK_NEAR(s2 / 100000, 1.0, 0.02);
}

TEST_CASE(error_prefix_keeps_status_and_message) {
  lt_err err = {0};
  lt_errorf(&err, LT_ERR_FORMAT, "bad magic %x", 0x12);
  lt_err_prefix(&err, "loading %s", "m.onnx");
  CHECK(err.status == LT_ERR_FORMAT);
  CHECK(strcmp(err.msg, "loading m.onnx: bad magic 12") == 0);
}

static void spin(double seconds) {
  volatile double x = 1;
  for (double t0 = lt_now(); lt_now() - t0 < seconds;)
    for (int i = 0; i < 100000; i++) x = x * 1.0000001 + 1e-9;
}

/* The other work a child process does counts as others, this process's own work does not. The
 * child's CPU time comes from the kernel (wait4), so the check holds at any load: others must
 * be at least that (less the two samples' clock-tick rounding), and this process's spinning must
 * leave room for itself (others + own rate cannot exceed the cores). */
TEST_CASE(busy_sampler_counts_other_processes_not_this_one) {
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  lt_busy a, b;
  lt_busy_sample(&a);
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    spin(0.6);
    _exit(0);
  }
  spin(0.3); /* this process busy too, for part of the window */
  int st = 0;
  struct rusage ru;
  REQUIRE(wait4(pid, &st, 0, &ru) == pid);
  lt_busy_sample(&b);
  double dt = b.wall - a.wall, child = (double)ru.ru_utime.tv_sec + 1e-6 * ru.ru_utime.tv_usec +
                                       (double)ru.ru_stime.tv_sec + 1e-6 * ru.ru_stime.tv_usec;
  double others = lt_busy_others(&a, &b), self = (b.self - a.self) / dt;
  printf("busy sampler: %.2f s, child %.2f s of CPU, others %.2f cores, self %.2f cores, %ld cores\n",
         dt, child, others, self, cores);
  REQUIRE(isfinite(others));
  CHECK_MSG(others >= child / dt - 0.05, "others %.3f below the child's %.3f", others, child / dt);
  CHECK_MSG(others + self <= (double)cores + 0.05, "others %.3f + self %.3f > %ld cores", others,
            self, cores);
  lt_busy c = a;
  c.wall = a.wall + 0.01; /* too short a window to say */
  CHECK(isnan(lt_busy_others(&a, &c)));
}

int main(void) {
  RUN(alloc_counts_current_and_peak_per_category);
  RUN(shrink_keeps_bytes_and_moves_the_count);
  RUN(alloc_cap_refused_with_message);
  RUN(philox_matches_published_known_answer);
  RUN(rng_is_a_function_of_its_key);
  RUN(rng_below_is_uniform_enough);
  RUN(error_prefix_keeps_status_and_message);
  RUN(busy_sampler_counts_other_processes_not_this_one);
  return test_summary();
}
