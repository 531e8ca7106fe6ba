/* Stand-alone driver of `lathe bench codec` (workers/cmd_bench_codec.c) for this suite's
 * bench-smoke test and for benchmarking before the CLI table carries the subcommand. */
int cmd_bench_codec(int argc, char **argv);
int main(int argc, char **argv) { return cmd_bench_codec(argc, argv); }
