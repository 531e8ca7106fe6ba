/* Publishing a finished file atomically: the writer fills a temp file beside the target, then
 * lt_file_publish fsyncs it, renames it over the target and fsyncs the folder, so a reader (or a
 * job resumed after kill -9) sees either the old file or the whole new one, never a torn one.
 * Used by dataset conversion and by training checkpoints. */
#ifndef LATHE_IO_DATASET_FILE_H
#define LATHE_IO_DATASET_FILE_H

#include "lathe/core.h"

#include <stddef.h>

/* "<path>.tmp.<pid>" into buf; 0, or -1 when it does not fit. */
int lt_file_temp_name(const char *path, char *buf, size_t cap);
/* fsync(tmp), rename(tmp, path), fsync(dirname(path)). Removes tmp on failure. */
lt_status lt_file_publish(const char *tmp, const char *path, lt_err *err);

#endif
