/* Writes the HDF5 files the worker and end-to-end tests feed to real jobs, so those tests need
 * no Python:
 *   make_test_h5 small FILE        /train/x (4,3,8,8) uint8, /train/y (4) uint8, a string attribute
 *   make_test_h5 long FILE LOG2N   /big: 2^LOG2N uint8 elements in 1 MiB chunks never written, so
 *                                  the file is tiny but an exact inspect reads (fills) every element
 */
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int make_small(const char *path) {
  hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  if (f < 0) return 1;
  hid_t g = H5Gcreate2(f, "/train", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  hsize_t xd[4] = {4, 3, 8, 8}, yd = 4;
  unsigned char x[4 * 3 * 8 * 8], y[4] = {0, 1, 2, 3};
  for (size_t i = 0; i < sizeof x; i++) x[i] = (unsigned char)(i % 251);
  hid_t sp = H5Screate_simple(4, xd, NULL);
  hid_t d = H5Dcreate2(g, "x", H5T_STD_U8LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  herr_t st = H5Dwrite(d, H5T_NATIVE_UCHAR, H5S_ALL, H5S_ALL, H5P_DEFAULT, x);
  H5Dclose(d);
  H5Sclose(sp);
  sp = H5Screate_simple(1, &yd, NULL);
  d = H5Dcreate2(g, "y", H5T_STD_U8LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  st |= H5Dwrite(d, H5T_NATIVE_UCHAR, H5S_ALL, H5S_ALL, H5P_DEFAULT, y);
  H5Dclose(d);
  H5Sclose(sp);
  hid_t t = H5Tcopy(H5T_C_S1);
  H5Tset_size(t, 8);
  hid_t as = H5Screate(H5S_SCALAR);
  hid_t a = H5Acreate2(f, "classes", t, as, H5P_DEFAULT, H5P_DEFAULT);
  st |= H5Awrite(a, t, "a,b,c,d");
  H5Aclose(a);
  H5Sclose(as);
  H5Tclose(t);
  H5Gclose(g);
  return H5Fclose(f) < 0 || st < 0;
}

static int make_long(const char *path, int log2n) {
  hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  if (f < 0) return 1;
  hsize_t n = 1ull << log2n, chunk = n < (1u << 20) ? n : 1u << 20;
  hid_t sp = H5Screate_simple(1, &n, NULL);
  hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
  H5Pset_chunk(dcpl, 1, &chunk);
  unsigned char fill = 7;
  H5Pset_fill_value(dcpl, H5T_NATIVE_UCHAR, &fill);
  hid_t d = H5Dcreate2(f, "big", H5T_STD_U8LE, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT);
  int bad = d < 0;
  H5Dclose(d);
  H5Pclose(dcpl);
  H5Sclose(sp);
  return H5Fclose(f) < 0 || bad;
}

int main(int argc, char **argv) {
  if (argc == 3 && !strcmp(argv[1], "small")) return make_small(argv[2]);
  if (argc == 4 && !strcmp(argv[1], "long") && atoi(argv[3]) >= 1 && atoi(argv[3]) <= 40)
    return make_long(argv[2], atoi(argv[3]));
  fprintf(stderr, "usage: make_test_h5 small FILE | make_test_h5 long FILE LOG2N\n");
  return 2;
}
