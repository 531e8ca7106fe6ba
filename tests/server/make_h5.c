/* Writes a small valid Lathe dataset (HDF5: /train and /test, each x (N,1,4,4) uint8 and y (N)
 * uint8) for the server tests' uploads.   server_make_h5 OUT.h5 */
#include <hdf5.h>
#include <stdio.h>

static int make_split(hid_t file, const char *name, int n) {
  unsigned char x[8 * 16], y[8];
  for (int i = 0; i < n * 16; i++) x[i] = (unsigned char)(i * 7);
  for (int i = 0; i < n; i++) y[i] = (unsigned char)(i % 3);
  hid_t g = H5Gcreate2(file, name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  hsize_t xdims[4] = {(hsize_t)n, 1, 4, 4}, ydims[1] = {(hsize_t)n};
  hid_t xs = H5Screate_simple(4, xdims, NULL), ys = H5Screate_simple(1, ydims, NULL);
  hid_t xd = H5Dcreate2(g, "x", H5T_STD_U8LE, xs, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  hid_t yd = H5Dcreate2(g, "y", H5T_STD_U8LE, ys, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  int rc = H5Dwrite(xd, H5T_NATIVE_UCHAR, H5S_ALL, H5S_ALL, H5P_DEFAULT, x) < 0 ||
           H5Dwrite(yd, H5T_NATIVE_UCHAR, H5S_ALL, H5S_ALL, H5P_DEFAULT, y) < 0;
  H5Dclose(xd);
  H5Dclose(yd);
  H5Sclose(xs);
  H5Sclose(ys);
  H5Gclose(g);
  return rc;
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: server_make_h5 OUT.h5\n");
    return 2;
  }
  hid_t f = H5Fcreate(argv[1], H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  if (f < 0) return 1;
  int rc = make_split(f, "/train", 8) || make_split(f, "/test", 4);
  return H5Fclose(f) < 0 || rc;
}
