/* workers/main_lathe.c — the `lathe` command-line tool; the subcommands live in cli.c. */
#include "cli.h"

int main(int argc, char **argv) { return cli_main(argc, argv); }
