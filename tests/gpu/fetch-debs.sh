#!/bin/sh
# Downloads, here (a Debian/Ubuntu machine with apt and network), the .deb files that
# tests/gpu/check.sh needs to build Lathe on a bare NVIDIA machine that has nvcc, CMake, gcc and
# PyTorch but no -dev packages and no network: the headers and pkg-config files of every library
# the top-level CMakeLists.txt requires, their runtime libraries and the libraries those load,
# and pkgconf itself. They land in tests/gpu/.debs (git-ignored); carry that folder with the
# working tree (device tool: carry ["tests/gpu/.debs"]). check.sh unpacks them with dpkg -x into
# a private prefix, never into /.
#
#   tests/gpu/fetch-debs.sh            # ~45 MB; run once, again after a distribution upgrade
#
# It also copies, when ../shared/data is there, the ResNet-20 model and the first 2048 CIFAR-10
# test images (an HDF5 file in the same layout, ~2 MB) into tests/gpu/.data, from which
# check.sh captures real activations for the GPU codec benchmark; carry that folder too.
#
# glibc, libstdc++, libgcc and libgomp are not fetched: the GPU machine's compiler brings its own,
# and mixing two glibc's breaks every program.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out="$here/.debs"
mkdir -p "$out"
cd "$out"

# Build-time: headers and .pc files of what CMakeLists.txt asks pkg-config for.
dev="libmicrohttpd-dev libsqlite3-dev libcjson-dev libcurl4-openssl-dev libssl-dev libhdf5-dev
 libopenblas-dev libopenblas-pthread-dev liblapacke-dev liblapack-dev libblas-dev
 libturbojpeg0-dev libzstd-dev zlib1g-dev libgnutls28-dev nettle-dev libgmp-dev libidn2-dev
 libp11-kit-dev libtasn1-6-dev pkgconf pkgconf-bin libpkgconf3"
# Run-time: the shared libraries those link to, and what they load in turn (libcurl's and
# gnutls's dependencies, the Fortran runtime of OpenBLAS/LAPACK, HDF5's szip).
run="libmicrohttpd12 libsqlite3-0 libcjson1 libcurl4 libssl3 libhdf5-103-1 libhdf5-hl-100
 libsz2 libaec0 libopenblas0 libopenblas0-pthread liblapacke liblapack3 libblas3 libtmglib3
 libgfortran5 libquadmath0 libturbojpeg0 libzstd1 zlib1g libnghttp2-14 libidn2-0 librtmp1
 libssh2-1 libpsl5 libgssapi-krb5-2 libkrb5-3 libk5crypto3 libkrb5support0 libkeyutils1
 libcom-err2 libldap-2.5-0 libsasl2-2 libbrotli1 libgnutls30 libhogweed6 libnettle8 libgmp10
 libgmpxx4ldbl libp11-kit0 libtasn1-6 libunistring2 libffi8 libgnutls-dane0 libunbound8
 libgnutlsxx30 libevent-2.1-7"

rm -f ./*.deb
# shellcheck disable=SC2086 # word splitting of the package lists is intended
apt-get download $dev $run
echo "fetch-debs: $(ls ./*.deb | wc -l) packages, $(du -sh . | cut -f1) in $out"

shared=$(cd "$here/../../.." && pwd)/shared/data
if [ -f "$shared/cifar10-jpeg.h5" ] && [ -x /usr/bin/python3 ]; then
  mkdir -p "$here/.data"
  cp "$shared/models/resnet20-cifar10-bn.onnx" "$here/.data/"
  /usr/bin/python3 - "$shared/cifar10-jpeg.h5" "$here/.data/cifar10-test2048.h5" <<'PY'
import sys, h5py
src, dst = sys.argv[1:3]
with h5py.File(src, "r") as f, h5py.File(dst, "w") as g:
    for k, v in f.attrs.items():
        g.attrs[k] = v
    off = f["test/offsets"][:2049]
    g["test/jpeg"] = f["test/jpeg"][off[0]:off[2048]]
    g["test/offsets"] = off - off[0]
    g["test/y"] = f["test/y"][:2048]
PY
  echo "fetch-debs: model and 2048 CIFAR-10 test images in $here/.data"
else
  echo "fetch-debs: no ../shared/data (or no /usr/bin/python3 with h5py): the codec benchmark will be skipped"
fi
