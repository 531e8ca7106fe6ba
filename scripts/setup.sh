#!/usr/bin/env bash
# Installs what Lathe needs on a fresh Debian 12 machine (apt and npm packages), then builds.
#   scripts/setup.sh            install + build build/ (RelWithDebInfo)
#   scripts/setup.sh --asan     also build build-asan/ (AddressSanitizer + UBSan)
# Idempotent: packages already present are not touched, builds are incremental.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

APT_PACKAGES=(
  build-essential cmake pkg-config git clang libclang-rt-14-dev
  libmicrohttpd-dev libsqlite3-dev libcjson-dev libcurl4-openssl-dev libssl-dev
  libhdf5-dev hdf5-tools libopenblas-dev liblapacke-dev libturbojpeg0-dev libzstd-dev libzfp-dev
  libopenmpi-dev openmpi-bin
  chromium wrk curl
  python3-torch python3-h5py python3-numpy python3-onnx
  dataset-fashion-mnist
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Node.js: the machine image may bring its own (newer) node and npm; Debian's are used otherwise.
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# onnxruntime-node's install script fetches GPU add-ons from outside; the variable skips it
# (its CPU runtime ships in the package). Run npm by hand the same way.
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup: installing npm packages"
  ONNXRUNTIME_NODE_INSTALL=skip npm ci --no-audit --no-fund --loglevel=error
fi

jobs=$(nproc)
werror=OFF
[ "${CI:-}" = "true" ] && werror=ON
build() { # build DIR [cmake args...]
  local dir=$1; shift
  mkdir -p "$dir"
  if ! { cmake -S . -B "$dir" -DLATHE_WERROR=$werror "$@" && cmake --build "$dir" -j"$jobs"; } >"$dir/build.log" 2>&1; then
    tail -n 60 "$dir/build.log"
    echo "setup: build of $dir failed (full log: $dir/build.log)"
    exit 1
  fi
  grep -E '^-- (CUDA|MPI|ZFP|libFuzzer):' "$dir/build.log" | sed "s|^-- |setup: $dir: |" || true
}
build build -DCMAKE_BUILD_TYPE=RelWithDebInfo
if [ "${1:-}" = "--asan" ]; then
  build build-asan -DCMAKE_BUILD_TYPE=Debug -DLATHE_SANITIZE=ON
fi
# Demo and test data: Fashion-MNIST (Debian's dataset-fashion-mnist, gzipped IDX) as Lathe HDF5.
fmnist=build/data/fashion-mnist.h5
if [ ! -s "$fmnist" ]; then
  idx=$(mktemp -d)
  for f in /usr/share/datasets/fashion-mnist/*-ubyte.gz; do gunzip -c "$f" >"$idx/$(basename "$f" .gz)"; done
  mkdir -p build/data
  build/bin/lathe data convert "$idx" "$fmnist.tmp" >/dev/null && mv "$fmnist.tmp" "$fmnist"
  rm -rf "$idx"
  echo "setup: wrote $fmnist"
fi
# Surrogate data for the loader example (schema/jobs/train-surrogate.example.json): Gray-Scott
# reaction-diffusion fields integrated by `lathe data gen-surrogate` on a 32x32 grid (well under a second).
[ -s build/data/surrogate.h5 ] || build/bin/lathe data gen-surrogate --out build/data/surrogate.h5 --samples 384 --grid 32 >/dev/null
echo "setup: built $root/build/bin: $(ls build/bin | grep -xE 'lathe|lathe-server|lathe-worker' | tr '\n' ' ')"
