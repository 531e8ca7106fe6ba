/* workers/main_lathe.c — the `lathe` command-line tool; the subcommands live in cli.c. */
#include "cli.h"

#include <stdlib.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
/* In sanitizer builds: HDF5 1.10 leaks on its own error paths when it refuses a damaged file
 * (allocations made and lost entirely inside libhdf5); those are not ours to fix, and would turn
 * every refusal into exit 1. Leaks with any other origin are still reported. */
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void) { return "leak:libhdf5_serial.so\n"; }
/* A damaged size field can make HDF5 ask malloc for exabytes; in production malloc says NULL and
 * HDF5 reports an error, so the sanitizer build is told to behave the same. */
const char *__asan_default_options(void);
const char *__asan_default_options(void) { return "allocator_may_return_null=1"; }
#endif

int main(int argc, char **argv) {
  /* Idle OpenMP threads spin by default and take the cores from OpenBLAS's own threads (15x
   * slower convolutions on a busy 2-core machine). libgomp reads OMP_WAIT_POLICY when it is
   * loaded, before main, so the only way to default it is to set it and start again. A user's
   * own setting is kept. */
  if (!getenv("OMP_WAIT_POLICY")) {
    setenv("OMP_WAIT_POLICY", "passive", 1);
    execv("/proc/self/exe", argv); /* on failure, carry on with the default policy */
  }
  return cli_main(argc, argv);
}
