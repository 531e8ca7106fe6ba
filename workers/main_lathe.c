/* workers/main_lathe.c — the `lathe` command-line tool; the subcommands live in cli.c. */
#include "cli.h"

#if defined(__SANITIZE_ADDRESS__)
/* In sanitizer builds: HDF5 1.10 leaks on its own error paths when it refuses a damaged file
 * (allocations made and lost entirely inside libhdf5); those are not ours to fix, and would turn
 * every refusal into exit 1. Leaks with any other origin are still reported. */
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void) { return "leak:libhdf5_serial.so\n"; }
#endif

int main(int argc, char **argv) { return cli_main(argc, argv); }
