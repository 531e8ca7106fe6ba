/* workers/cli.h — the `lathe` command-line tool as a table of subcommands.
 *
 * A subcommand is a function in its own file plus one line in the table in workers/cli.c:
 *   { "data convert", "convert a dataset to Lathe HDF5: lathe data convert IN OUT", cmd_data_convert },
 * The name may be several words; the function receives the arguments after them (argv[0] is the
 * full command name, for messages). It returns the process exit status: 0 success, 2 bad input
 * (usage, a bad file), 3 a runtime failure — the same codes as `lathe run` (workers/job.h).
 *
 * Not for: the job kinds of `lathe run` (workers/jobs.c) or lathe-worker (main_worker.c).
 */
#ifndef LATHE_WORKERS_CLI_H
#define LATHE_WORKERS_CLI_H

typedef int (*cli_fn)(int argc, char **argv);

typedef struct cli_command {
  const char *name;    /* "run", "data convert" */
  const char *summary; /* one line for `lathe --help` */
  cli_fn fn;
} cli_command;

/* Finds the subcommand named by the leading words of argv (after the program name), runs it and
 * returns its exit status; prints usage and returns 2 when none matches. */
int cli_main(int argc, char **argv);

int cmd_run(int argc, char **argv);
int cmd_inspect(int argc, char **argv);
int cmd_version(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_data_convert(int argc, char **argv);
int cmd_gen_surrogate(int argc, char **argv);
int cmd_bench_codec(int argc, char **argv);
int cmd_profile(int argc, char **argv);

#endif
