/* workers/inspect.h — summaries of uploaded files, for `lathe inspect`, the `inspect` job kind
 * and the server's upload check (which runs `lathe inspect` in a child with limits).
 *
 *   inspect_opts o = {0};                  // sampled statistics, no progress, no stop
 *   cJSON *summary; char err[1024];
 *   int rc = inspect_file_json("data.h5", &o, &summary, err, sizeof err);
 *   if (rc) fprintf(stderr, "%s\n", err);  // rc is JOB_EXIT_BAD_INPUT or JOB_EXIT_FAILED
 *
 * inspect_file_json dispatches on the file's content: HDF5 is recognised by its signature; other
 * formats (ONNX, once workers/inspect_onnx.c exists) are one line in the table in inspect.c.
 * Every file is hostile input: a truncated, damaged or non-HDF5 file is refused with a message,
 * never a crash; memory use is bounded by the block size, not by the file.
 *
 * Not for: training-time dataset access (the engine's loader does that with positioned reads).
 */
#ifndef LATHE_WORKERS_INSPECT_H
#define LATHE_WORKERS_INSPECT_H

#include <cjson/cJSON.h>
#include <stddef.h>

typedef struct inspect_opts {
  int exact;                                  /* statistics over every element, not a sample */
  int (*should_stop)(void *user);             /* polled between blocks; NULL = never */
  void (*progress)(void *user, double fraction, const char *what); /* NULL = silent */
  void *user;
} inspect_opts;

/* 0 with *out set (caller frees), or JOB_EXIT_BAD_INPUT (not a file this build can read, damaged)
 * / JOB_EXIT_FAILED (stopped, out of memory) with err filled. */
int inspect_file_json(const char *path, const inspect_opts *opts, cJSON **out, char *err,
                      size_t errcap);
int inspect_hdf5_json(const char *path, const inspect_opts *opts, cJSON **out, char *err,
                      size_t errcap);

/* The ONNX summary (per layer op, output shape, parameters, MACs), written in
 * workers/inspect_onnx.c by the ONNX work; inspect_file_json reaches it through the format table
 * in inspect.c once that file is in the tree (one line there). 0 or non-zero with err filled. */
int inspect_onnx_json(const char *path, cJSON **out, char *err, size_t errcap);

/* HDF5 1.10 can crash on a hostile file (out-of-bounds reads in its global heap, for one), which
 * no checking on our side can prevent. A process that inspects untrusted files (of any format)
 * calls this first:
 * a SIGSEGV/SIGBUS/SIGFPE/SIGILL then prints a message naming `path` on stderr — and, when
 * json_event is set, a {"type":"error"} event line on stdout for lathe-worker — and exits with
 * JOB_EXIT_BAD_INPUT, so a damaged upload is refused with a reason instead of a bare crash. */
void inspect_crash_guard(const char *path, int json_event);

#endif
