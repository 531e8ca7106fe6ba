/* A minimal test harness for the C suites: named cases, checks that report file and line, and a
 * closing line per binary. A failing CHECK marks the case failed and carries on; REQUIRE returns
 * from the case.
 *
 *   TEST_CASE(rng_same_key_same_value) { CHECK(a == b); CHECK_NEAR(x, y, 1e-6); }
 *   int main(void) { RUN(rng_same_key_same_value); return test_summary(); }
 */
#ifndef LATHE_TEST_H
#define LATHE_TEST_H
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int test_failures_total, test_cases_failed, test_cases_run, test_case_failed;

#define TEST_CASE(name) static void name(void)
#define RUN(name)                                                                                   \
  do {                                                                                              \
    test_case_failed = 0;                                                                           \
    test_cases_run++;                                                                               \
    name();                                                                                         \
    if (test_case_failed) test_cases_failed++;                                                      \
    printf("%s %s\n", test_case_failed ? "FAIL" : "ok  ", #name);                                   \
    fflush(stdout);                                                                                 \
  } while (0)
#define TEST_FAIL_AT(...)                                                                           \
  do {                                                                                              \
    fprintf(stderr, "%s:%d: ", __FILE__, __LINE__);                                                 \
    fprintf(stderr, __VA_ARGS__);                                                                   \
    fputc('\n', stderr);                                                                            \
    test_case_failed = 1;                                                                           \
    test_failures_total++;                                                                          \
  } while (0)
#define CHECK(cond)                                                                                 \
  do {                                                                                              \
    if (!(cond)) TEST_FAIL_AT("check failed: %s", #cond);                                           \
  } while (0)
#define CHECK_MSG(cond, ...)                                                                        \
  do {                                                                                              \
    if (!(cond)) TEST_FAIL_AT(__VA_ARGS__);                                                         \
  } while (0)
#define REQUIRE(cond)                                                                               \
  do {                                                                                              \
    if (!(cond)) {                                                                                  \
      TEST_FAIL_AT("requirement failed: %s", #cond);                                                \
      return;                                                                                       \
    }                                                                                               \
  } while (0)
#define CHECK_NEAR(a, b, tol)                                                                       \
  do {                                                                                              \
    double a_ = (double)(a), b_ = (double)(b);                                                      \
    if (!(fabs(a_ - b_) <= (tol))) TEST_FAIL_AT("%s = %.9g, %s = %.9g, |diff| > %g", #a, a_, #b, b_, (double)(tol)); \
  } while (0)
#define CHECK_STR_CONTAINS(haystack, needle)                                                        \
  do {                                                                                              \
    const char *h_ = (haystack), *n_ = (needle);                                                    \
    if (!h_ || !strstr(h_, n_)) TEST_FAIL_AT("\"%s\" does not contain \"%s\"", h_ ? h_ : "(null)", n_); \
  } while (0)

static inline int test_summary(void) {
  printf("%d passed, %d failed\n", test_cases_run - test_cases_failed, test_cases_failed);
  return test_cases_failed ? 1 : 0;
}
#endif
