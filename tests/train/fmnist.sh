#!/bin/sh
# Prints the path of the Fashion-MNIST HDF5 that `lathe data convert` makes from the Debian
# package dataset-fashion-mnist, creating it on first use; exits 77 (skip) when the package is
# absent. Usage: fmnist.sh DRIVER OUT_DIR   (DRIVER: the train_driver or lathe binary)
set -eu
driver=$1 out=$2
src=/usr/share/datasets/fashion-mnist
h5=$out/fashion-mnist.h5
if [ -f "$h5" ]; then echo "$h5"; exit 0; fi
if [ ! -f "$src/train-images-idx3-ubyte.gz" ]; then
  echo "skip: $src absent (apt-get install dataset-fashion-mnist)" >&2
  exit 77
fi
mkdir -p "$out"
tmp=$(mktemp -d "$out/idx.XXXXXX")
for f in "$src"/*-ubyte.gz; do gunzip -c "$f" > "$tmp/$(basename "$f" .gz)"; done
"$driver" data convert "$tmp" "$h5" >/dev/null
rm -rf "$tmp"
echo "$h5"
