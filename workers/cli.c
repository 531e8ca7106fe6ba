/* workers/cli.c — the subcommand table of `lathe` and its dispatcher (see cli.h). */
#include "cli.h"

#include <stdio.h>
#include <string.h>

#include "lathe/core.h"


static const cli_command cli_commands[] = {
    {"run", "run a job file, JSON-lines events on stdout: lathe run JOB.json --out DIR", cmd_run},
    {"inspect", "print a JSON summary of an HDF5 dataset or an ONNX model: lathe inspect [--exact] FILE",
     cmd_inspect},
    {"eval", "accuracy and loss of a model on a dataset split: lathe eval MODEL DATA.h5 [--split test]",
     cmd_eval},
    {"data convert", "IDX folder or JPEG container to Lathe HDF5: lathe data convert IN OUT.h5",
     cmd_data_convert},
    {"data gen-surrogate",
     "Gray-Scott surrogate dataset: lathe data gen-surrogate --out F.h5 --samples N [--grid G]",
     cmd_gen_surrogate},
    {"bench codec",
     "activation codec ratio and GB/s vs ZFP and zstd: lathe bench codec [--input ACTS.h5] [--eb LIST]",
     cmd_bench_codec},
    {"profile", "measure a latency table for compress: lathe profile MODEL --out TABLE.json",
     cmd_profile},
    {"version", "print the version and the compiled backends: lathe --version", cmd_version},
};

int cmd_version(int argc, char **argv) {
  printf("lathe %s\nbackends: %s\n", lt_version(), lt_backends_compiled());
  return 0;
}

static void cli_usage(FILE *to) {
  fprintf(to, "usage: lathe COMMAND [ARGS...]\n\ncommands:\n");
  for (size_t i = 0; i < sizeof cli_commands / sizeof cli_commands[0]; i++)
    fprintf(to, "  %-22s %s\n", cli_commands[i].name, cli_commands[i].summary);
  fprintf(to, "\n  --version, --help\n");
}

/* Matches the leading words of argv against a (possibly multi-word) command name; returns how
 * many words matched, 0 when it does not. */
static int cli_match(const char *name, int argc, char **argv) {
  int words = 0;
  const char *n = name;
  while (*n) {
    if (words >= argc) return 0;
    size_t len = strcspn(n, " ");
    if (strlen(argv[words]) != len || strncmp(argv[words], n, len)) return 0;
    words++;
    n += len;
    while (*n == ' ') n++;
  }
  return words;
}

int cli_main(int argc, char **argv) {
  if (argc < 2) {
    cli_usage(stderr);
    return 2;
  }
  if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "-V")) return cmd_version(argc - 1, argv + 1);
  if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
    cli_usage(stdout);
    return 0;
  }
  const cli_command *best = NULL;
  int best_words = 0;
  for (size_t i = 0; i < sizeof cli_commands / sizeof cli_commands[0]; i++) {
    int w = cli_match(cli_commands[i].name, argc - 1, argv + 1);
    if (w > best_words) {
      best = &cli_commands[i];
      best_words = w;
    }
  }
  if (!best) {
    fprintf(stderr, "lathe: unknown command \"%s\"; run lathe --help for the list\n", argv[1]);
    return 2;
  }
  /* The command sees its full name as argv[0] and the remaining arguments after it. */
  char **sub = argv + best_words;
  sub[0] = (char *)best->name;
  return best->fn(argc - best_words, sub);
}
