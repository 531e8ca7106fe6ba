/* Atomic publication of written files (see dataset_file.h). */
#include "io/dataset_file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int lt_file_temp_name(const char *path, char *buf, size_t cap) {
  int n = snprintf(buf, cap, "%s.tmp.%ld", path, (long)getpid());
  return n < 0 || (size_t)n >= cap ? -1 : 0;
}

static int file_fsync_path(const char *path, int flags) {
  int fd = open(path, flags | O_CLOEXEC);
  if (fd < 0) return -1;
  int rc = fsync(fd);
  close(fd);
  return rc;
}

lt_status lt_file_publish(const char *tmp, const char *path, lt_err *err) {
  if (file_fsync_path(tmp, O_RDONLY) != 0) {
    int e = errno;
    unlink(tmp);
    return lt_errorf(err, LT_ERR_IO, "cannot fsync %s: %s; check the disk of the output folder",
                     tmp, strerror(e));
  }
  if (rename(tmp, path) != 0) {
    int e = errno;
    unlink(tmp);
    return lt_errorf(err, LT_ERR_IO, "cannot rename %s to %s: %s", tmp, path, strerror(e));
  }
  /* The rename is durable only once the folder entry is on disk. */
  char dir[4096];
  const char *slash = strrchr(path, '/');
  if (!slash) {
    strcpy(dir, ".");
  } else if (slash == path) {
    strcpy(dir, "/");
  } else {
    size_t n = (size_t)(slash - path);
    if (n >= sizeof dir) return LT_OK; /* cannot name the folder; the rename itself succeeded */
    memcpy(dir, path, n);
    dir[n] = '\0';
  }
  if (file_fsync_path(dir, O_RDONLY | O_DIRECTORY) != 0)
    return lt_errorf(err, LT_ERR_IO, "cannot fsync folder %s: %s", dir, strerror(errno));
  return LT_OK;
}
