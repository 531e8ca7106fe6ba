/* The gen-surrogate command as a stand-alone tool for the benchmark script, so that it runs
 * whether or not the `lathe` CLI table carries the subcommand yet. */
int cmd_gen_surrogate(int argc, char **argv);
int main(int argc, char **argv) { return cmd_gen_surrogate(argc, argv); }
