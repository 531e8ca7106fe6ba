/* A pread hook for the loader (lt_loader_opts.pread_fn) that fails with EIO once a number of
 * calls is used up, as a failing disk would mid-epoch. user: an int counter of calls left. */
#ifndef LATHE_TESTS_LOADER_FAULT_PREAD_H
#define LATHE_TESTS_LOADER_FAULT_PREAD_H
#include <errno.h>
#include <sys/types.h>
#include <unistd.h>

static ssize_t failing_pread(void *user, int fd, void *buf, size_t n, off_t off) {
  int *left = user;
  if (__atomic_sub_fetch(left, 1, __ATOMIC_SEQ_CST) < 0) {
    errno = EIO;
    return -1;
  }
  return pread(fd, buf, n, off);
}
#endif
