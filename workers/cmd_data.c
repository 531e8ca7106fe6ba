/* workers/cmd_data.c — `lathe data convert IN OUT.h5`: IN is a folder of IDX files (the MNIST
 * family: train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte,
 * t10k-labels-idx1-ubyte) or an HDF5 JPEG container (jpeg + offsets + y per split); OUT is plain
 * HDF5 (/train, /test with x (N, C, H, W) uint8 and y). Exit 0, 2 bad input, 3 failure. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "job.h"
#include "lathe/data.h"

static const char cmd_data_usage[] =
    "usage: lathe data convert [--threads N] IN OUT.h5\n"
    "  IN: a folder with train-images-idx3-ubyte, train-labels-idx1-ubyte,\n"
    "      t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (gunzip them first), or\n"
    "      an HDF5 JPEG container (jpeg + offsets + y per split)\n";

int job_train_exit_code(lt_status st); /* workers/job_train.c */

int cmd_data_convert(int argc, char **argv) {
  const char *in = NULL, *out = NULL;
  int threads = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--threads") && i + 1 < argc) {
      threads = atoi(argv[++i]);
    } else if (argv[i][0] == '-') {
      fprintf(stderr, "lathe data convert: unknown option %s\n%s", argv[i], cmd_data_usage);
      return JOB_EXIT_BAD_INPUT;
    } else if (!in) {
      in = argv[i];
    } else if (!out) {
      out = argv[i];
    } else {
      fprintf(stderr, "%s", cmd_data_usage);
      return JOB_EXIT_BAD_INPUT;
    }
  }
  if (!in || !out) {
    fprintf(stderr, "%s", cmd_data_usage);
    return JOB_EXIT_BAD_INPUT;
  }
  lt_err err = {0};
  lt_status st;
  struct stat sb;
  if (stat(in, &sb) == 0 && S_ISDIR(sb.st_mode)) {
    static const char *const names[4] = {"train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"};
    if (strlen(in) > 4000) {
      fprintf(stderr, "lathe data convert: the folder path is too long\n");
      return JOB_EXIT_BAD_INPUT;
    }
    char paths[4][4096], gz[4100];
    for (int i = 0; i < 4; i++) {
      snprintf(paths[i], sizeof paths[i], "%.4000s/%s", in, names[i]);
      snprintf(gz, sizeof gz, "%.4000s/%s.gz", in, names[i]);
      if (stat(paths[i], &sb) != 0 && stat(gz, &sb) == 0) {
        fprintf(stderr,
                "lathe data convert: %s is gzip-compressed; decompress the folder first "
                "(gunzip -k %s/*.gz)\n",
                gz, in);
        return JOB_EXIT_BAD_INPUT;
      }
    }
    st = lt_data_convert_idx(paths[0], paths[1], paths[2], paths[3], out, &err);
  } else {
    st = lt_data_convert_jpeg(in, out, threads, &err);
  }
  if (st) {
    fprintf(stderr, "lathe data convert: %s\n", err.msg);
    return job_train_exit_code(st);
  }
  char splits[256];
  if (lt_dataset_list_splits(out, splits, sizeof splits, &err) == LT_OK)
    printf("{\"output\":\"%s\",\"splits\":\"%s\"}\n", out, splits);
  return 0;
}
