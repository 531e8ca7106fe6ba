#!/bin/bash
# The GPU check, for a bare NVIDIA machine (nvcc, CMake, gcc, PyTorch; no -dev packages, no
# network): builds Lathe with the CUDA backend against the libraries fetched beforehand by
# tests/gpu/fetch-debs.sh (unpacked here into a private prefix), runs the op conformance test of
# the CUDA backend against the CPU one, the GPU activation codec's test against its CPU twin
# (also under compute-sanitizer's memcheck when there) and the training loop on the GPU against
# the CPU (tests/train/test_device_train.c; with activation compression's device stash too),
# benchmarks the GPU codec on ResNet-20 activations captured here from the carried model and
# images (tests/gpu/.data) beside the CPU codec, ResNet-20 training on those images with the
# device stash against exact training (saved bytes on the GPU), then ResNet-20 training and
# inference at batch 128 against PyTorch eager on the same GPU
# in the same run, and prints a short table last.
# Takes about 3-5 minutes on 16 cores; it stops itself with a message before 8.
#
#   here:          tests/gpu/fetch-debs.sh
#   GPU machine:   tests/gpu/check.sh [OUT_DIR]
#                  (device tool: carry ["tests/gpu/.debs", "tests/gpu/.data"])
#
# OUT_DIR (default: $OUT when set, else /tmp/lathe-gpu-check) receives the build log, the test
# output and both benchmarks' JSON lines. Exit status: 0 when the build and the tests pass, 1
# otherwise (the benchmark runs either way and its figures are printed).
set -uo pipefail
t_start=$(date +%s)
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:-${OUT:-/tmp/lathe-gpu-check}}
prefix=${LATHE_GPU_PREFIX:-/tmp/lathe-gpu-prefix}
build=${LATHE_GPU_BUILD:-/tmp/lathe-gpu-build}
debs="$here/.debs"
mkdir -p "$out"

say() { printf '[check %3ds] %s\n' $(($(date +%s) - t_start)) "$*"; }
die() { say "FAILED: $*"; exit 1; }
# Seconds left for a step: the run stays under 8 minutes, 20 s kept for the table
# (LATHE_GPU_BUDGET_S changes the 460, e.g. to try the script on a slow machine without a GPU).
budget() {
  local b=$((${LATHE_GPU_BUDGET_S:-460} - ($(date +%s) - t_start)))
  echo $((b < 1 ? 1 : b))
}

# ---- tools --------------------------------------------------------------------------------------
export PATH="$PATH:/usr/local/cuda/bin"
command -v nvcc >/dev/null || die "nvcc not found (looked in PATH and /usr/local/cuda/bin)"
command -v cmake >/dev/null || die "cmake not found"
# A .deb is an ar archive whose data.tar.* holds the files; dpkg-deb -x unpacks it, ar + tar too.
unpack_deb() {
  if command -v dpkg-deb >/dev/null; then
    dpkg-deb -x "$1" "$2"
  else
    local member z
    member=$(ar t "$1" | grep '^data\.tar') || return 1
    case $member in *.xz) z=-J ;; *.zst) z=--zstd ;; *.gz) z=-z ;; *) z= ;; esac
    ar p "$1" "$member" | tar -x $z -C "$2"
  fi
}
command -v dpkg-deb >/dev/null || command -v ar >/dev/null ||
  die "neither dpkg-deb nor ar found: cannot unpack the carried .deb files"
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | sed 's/^/gpu: /'
say "nvcc $(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'), $(cmake --version | head -1)"

# ---- the prefix: headers, .pc files and libraries from the carried .debs ------------------------
ls "$debs"/*.deb >/dev/null 2>&1 ||
  die "no .deb files in $debs: run tests/gpu/fetch-debs.sh on a machine with apt, then carry tests/gpu/.debs"
rm -rf "$prefix" && mkdir -p "$prefix"
for f in "$debs"/*.deb; do unpack_deb "$f" "$prefix" || die "unpacking $f"; done
lib="$prefix/usr/lib/x86_64-linux-gnu"
# Links that dpkg's maintainer scripts would make: absolute symlinks re-pointed into the prefix,
# and the Debian alternatives that choose OpenBLAS as BLAS and LAPACK.
find "$prefix" -type l | while read -r l; do
  t=$(readlink "$l")
  case "$t" in /*) ln -sfn "$prefix$t" "$l" ;; esac
done
ln -sfn openblas-pthread/libblas.so.3 "$lib/libblas.so.3"
ln -sfn openblas-pthread/liblapack.so.3 "$lib/liblapack.so.3"
ln -sfn ../openblas-pthread/pkgconfig/blas-openblas.pc "$lib/pkgconfig/blas.pc"
ln -sfn ../openblas-pthread/pkgconfig/lapack-openblas.pc "$lib/pkgconfig/lapack.pc"
# pkg-config answers from the prefix alone, with its paths rebased into it.
pcdirs=$(find "$prefix" -type d -name pkgconfig | tr '\n' ':')
cat >"$prefix/pkg-config" <<EOF
#!/bin/sh
export PKG_CONFIG_LIBDIR="$pcdirs" PKG_CONFIG_SYSROOT_DIR="$prefix"
export PKG_CONFIG_ALLOW_SYSTEM_CFLAGS=1 PKG_CONFIG_ALLOW_SYSTEM_LIBS=1
LD_LIBRARY_PATH="$lib" exec "$prefix/usr/bin/pkgconf" "\$@"
EOF
chmod +x "$prefix/pkg-config"
for m in libmicrohttpd sqlite3 libcjson libcurl libcrypto hdf5-serial openblas lapacke libturbojpeg libzstd; do
  "$prefix/pkg-config" --cflags --libs "$m" >/dev/null 2>"$out/pkgconfig.err" ||
    die "pkg-config cannot resolve $m from the prefix: $(cat "$out/pkgconfig.err")"
done
say "prefix ready: $(ls "$debs"/*.deb | wc -l) packages unpacked into $prefix"

# ---- build: the engine, the conformance test and the benchmark ---------------------------------
# RPATH (not RUNPATH) so that the libraries our libraries load come from the prefix as well;
# -idirafter adds the prefix to the end of the header search, where Debian's own paths would be.
# The CUDA runtime and cuBLAS come from the machine's own toolkit, wherever ld.so.conf points.
cudalib=$(cd "$(dirname "$(command -v nvcc)")/.." && pwd)/lib64
rpath="$lib/openblas-pthread:$lib:$lib/hdf5/serial:$lib/lapack:$lib/blas:$cudalib"
gen=(); command -v ninja >/dev/null && gen=(-G Ninja)
say "configuring"
timeout "$(budget)" cmake -S "$root" -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DLATHE_WERROR=OFF -DLATHE_CUDA=ON -DPKG_CONFIG_EXECUTABLE="$prefix/pkg-config" \
  -DCMAKE_PREFIX_PATH="$prefix/usr" -DCMAKE_CUDA_COMPILER="$(command -v nvcc)" \
  "-DCMAKE_C_FLAGS=-idirafter $prefix/usr/include/x86_64-linux-gnu -idirafter $prefix/usr/include" \
  "-DCMAKE_EXE_LINKER_FLAGS=-Wl,--disable-new-dtags -Wl,-rpath,$rpath -Wl,-rpath-link,$rpath" \
  >"$out/configure.log" 2>&1 || { tail -30 "$out/configure.log"; die "cmake configure (log: $out/configure.log)"; }
grep -q "CUDA: found" "$out/configure.log" || die "CMake did not enable CUDA: $(grep 'CUDA' "$out/configure.log")"
say "building ($(nproc) jobs)"
timeout "$(budget)" cmake --build "$build" -j "$(nproc)" --target gpu_test_conformance gpu_test_codec train_test_device_train gpu_bench_resnet20 actcomp_capture actcomp_bench_codec actcomp_bench_device \
  >"$out/build.log" 2>&1 || { tail -40 "$out/build.log"; die "build (log: $out/build.log)"; }
say "built"

# ---- op conformance -----------------------------------------------------------------------------
status=0
say "op conformance: CUDA backend against the CPU reference"
timeout "$(budget)" "$build/bin/gpu_test_conformance" >"$out/conformance.log" 2>&1
rc=$?
cat "$out/conformance.log"
case $rc in
  0) conf="pass" ;;
  77) conf="skipped (no device)"; status=1 ;;
  *) conf="FAIL (exit $rc)"; status=1 ;;
esac
conf_cases=$(tail -1 "$out/conformance.log")

# ---- the GPU activation codec against its CPU twin, then under memcheck --------------------------
say "GPU codec: its CPU-twin test"
timeout "$(budget)" "$build/bin/gpu_test_codec" >"$out/codec.log" 2>&1
rc=$?
cat "$out/codec.log"
case $rc in 0) codec="pass" ;; *) codec="FAIL (exit $rc)"; status=1 ;; esac
codec_cases=$(tail -1 "$out/codec.log")
# ---- training through lt_train_run on the GPU against the CPU, and resume there ----------------
say "training loop on the GPU: against the CPU, and resumed from checkpoints"
LATHE_TEST_BACKEND=cuda timeout "$(budget)" "$build/bin/train_test_device_train" >"$out/train.log" 2>&1
rc=$?
cat "$out/train.log"
case $rc in 0) train="pass" ;; *) train="FAIL (exit $rc)"; status=1 ;; esac
train_cases="$(grep -m1 'differ from the CPU' "$out/train.log" | sed 's/^ *//'); $(tail -1 "$out/train.log")"
stash_cases=$(grep ' on cuda: parameters' "$out/train.log" | sed 's/^ *//')

memcheck="not run (no compute-sanitizer)"
command -v compute-sanitizer >/dev/null && memcheck="not run (under 200 s of the budget left)"
if command -v compute-sanitizer >/dev/null && [ "$(budget)" -gt 200 ]; then
  say "GPU codec test under compute-sanitizer memcheck"
  timeout 100 compute-sanitizer --tool memcheck --error-exitcode 9 "$build/bin/gpu_test_codec" \
    >"$out/codec_memcheck.log" 2>&1
  rc=$?
  tail -4 "$out/codec_memcheck.log"
  case $rc in
    0) memcheck="clean" ;;
    124) memcheck="stopped at 100 s (log: codec_memcheck.log)" ;;
    *) memcheck="FAIL (exit $rc)"; status=1 ;;
  esac
fi

# ---- GPU codec speed and ratio on captured ResNet-20 activations, beside the CPU codec ----------
data="$here/.data"
if [ -f "$data/resnet20-cifar10-bn.onnx" ] && [ -f "$data/cifar10-test2048.h5" ]; then
  say "capturing ResNet-20 conv/linear inputs of 256 test images (CPU, training mode)"
  timeout "$(budget)" "$build/bin/actcomp_capture" "$data/resnet20-cifar10-bn.onnx" \
    "$data/cifar10-test2048.h5" test /tmp/lathe-acts256.h5 256 >"$out/capture.log" 2>&1 ||
    say "capture failed: $(tail -3 "$out/capture.log")"
  say "codec benchmark: GPU and CPU (1 thread), eb 0.01 0.05 0.1 0.3"
  timeout "$(budget)" "$build/bin/actcomp_bench_codec" --input /tmp/lathe-acts256.h5 \
    --codecs lorenzo --threads 1 --repeat 5 --device cuda >"$out/bench_codec.txt" \
    2>"$out/bench_codec.err" || { status=1; say "codec benchmark failed: $(tail -3 "$out/bench_codec.err")"; }
  cat "$out/bench_codec.txt"
  # The same layers at batch 2048 (tensors of up to 134 MB): the per-call waits weigh less.
  say "capture at batch 2048, codec benchmark at eb 0.1 and 0.3 (CPU: $(nproc) threads)"
  timeout "$(budget)" "$build/bin/actcomp_capture" "$data/resnet20-cifar10-bn.onnx" \
    "$data/cifar10-test2048.h5" test /tmp/lathe-acts2048.h5 2048 >>"$out/capture.log" 2>&1 &&
    timeout "$(budget)" "$build/bin/actcomp_bench_codec" --input /tmp/lathe-acts2048.h5 \
      --codecs lorenzo --threads "$(nproc)" --repeat 3 --eb 0.1,0.3 --device cuda \
      >"$out/bench_codec2048.txt" 2>>"$out/bench_codec.err" ||
    say "batch-2048 codec benchmark failed: $(tail -3 "$out/bench_codec.err")"
  cat "$out/bench_codec2048.txt" 2>/dev/null
  say "ResNet-20 on 2048 CIFAR-10 images, 3 epochs at batch 128: exact, then the device stash"
  timeout "$(budget)" "$build/bin/actcomp_bench_device" "$data/cifar10-test2048.h5" test cuda 3 128 \
    >"$out/bench_stash.txt" 2>"$out/bench_stash.err" ||
    { status=1; say "device stash benchmark failed: $(tail -3 "$out/bench_stash.err")"; }
  cat "$out/bench_stash.txt"
  if [ -n "${LATHE_AC_CUDA_PROFILE:-}" ] && [ "$(budget)" -gt 90 ]; then
    say "the same, histogram without grouping (LATHE_AC_CUDA_HIST=plain), GPU rows only"
    LATHE_AC_CUDA_HIST=plain timeout 60 "$build/bin/actcomp_bench_codec" \
      --input /tmp/lathe-acts2048.h5 --codecs none --threads "$(nproc)" --repeat 3 --eb 0.1,0.3 \
      --device cuda 2>&1 | grep -A2 "^lorenzo-gpu"
  fi
else
  say "no tests/gpu/.data (run tests/gpu/fetch-debs.sh beside ../shared/data): codec benchmark skipped"
fi

# ---- ResNet-20 at batch 128: Lathe (FP32, then TF32 matmuls) and PyTorch, same GPU, same run ---
steps_train=${LATHE_BENCH_TRAIN_STEPS:-50} steps_infer=${LATHE_BENCH_INFER_STEPS:-100}
say "benchmark: ResNet-20, batch 128, $steps_train training and $steps_infer inference steps each"
run_bench() { # name, command...: one JSON line into $out/bench_NAME.json, or nothing
  local name=$1; shift
  timeout "$(budget)" "$@" >"$out/bench_$name.json" 2>"$out/bench_$name.err" ||
    say "benchmark $name failed: $(tail -3 "$out/bench_$name.err") $(tail -1 "$out/bench_$name.json")"
}
run_bench lathe_fp32 "$build/bin/gpu_bench_resnet20" 128 "$steps_train" "$steps_infer"
LATHE_CUDA_TF32=1 run_bench lathe_tf32 "$build/bin/gpu_bench_resnet20" 128 "$steps_train" "$steps_infer"
PYTHONUNBUFFERED=1 run_bench pytorch "$PY" "$here/resnet20_torch.py" 128 "$steps_train" "$steps_infer"

# ---- the table, last ----------------------------------------------------------------------------
echo
"$PY" - "$out" "$conf" "$conf_cases" "$codec" "$codec_cases" "$memcheck" "$train" "$train_cases" "$stash_cases" <<'PY'
import json, os, sys
out, conf, cases, codec, codec_cases, memcheck, train, train_cases, stash_cases = sys.argv[1:10]
rows = []
for name, label in (("lathe_fp32", "lathe (fp32 sgemm)"), ("lathe_tf32", "lathe (tf32 sgemm)"),
                    ("pytorch", "pytorch eager")):
    try:
        with open(os.path.join(out, f"bench_{name}.json")) as f:
            rows.append((label, json.loads(f.read().strip().splitlines()[-1])))
    except (OSError, ValueError, IndexError):
        rows.append((label, None))
torch = dict(rows).get("pytorch eager")
dev = next((r["device"] for _, r in rows if r), "?")
print(f"GPU: {dev}")
print(f"op conformance (CUDA vs CPU): {conf} — {cases}")
print(f"GPU codec vs CPU codec: {codec} — {codec_cases}; memcheck: {memcheck}")
print(f"training loop (lt_train_run) on the GPU vs CPU: {train} — {train_cases}")
for line in stash_cases.splitlines():
    print(f"  with the device stash: {line}")
try:
    with open(os.path.join(out, "bench_stash.txt")) as f:
        print("".join(l for l in f if not l.startswith("{")), end="")
except OSError:
    pass
try:
    with open(os.path.join(out, "bench_codec.txt")) as f:
        lines = [l.rstrip() for l in f if l.startswith(("codec ", "lorenzo"))]
    print("codec on 256 images' ResNet-20 conv/linear inputs (CPU: 1 thread; GPU: device memory)")
    print("\n".join(lines))
    with open(os.path.join(out, "bench_codec2048.txt")) as f:
        lines = [l.rstrip() for l in f if l.startswith("lorenzo")]
    print("the same layers at batch 2048 (CPU: all cores)")
    print("\n".join(lines))
except OSError:
    pass
print(f"ResNet-20, batch 128          train img/s   infer img/s   train vs torch   infer vs torch")
for label, r in rows:
    if not r:
        print(f"{label:<28}  {'failed':>11}")
        continue
    rt = r["train_images_per_s"] / torch["train_images_per_s"] if torch else float("nan")
    ri = r["infer_images_per_s"] / torch["infer_images_per_s"] if torch else float("nan")
    print(f"{label:<28}  {r['train_images_per_s']:>11.0f}   {r['infer_images_per_s']:>11.0f}"
          f"   {rt:>13.2f}x   {ri:>13.2f}x")
for label, r in rows:
    if r and r.get("loop_train_images_per_s"):
        lp = r["loop_train_images_per_s"]
        print(f"{label} through lt_train_run (host batches with crop and flip, {r['loop_steps']} steps, "
              f"the first included): {lp:.0f} img/s, {lp / r['train_images_per_s']:.2f}x the loop above")
PY
say "done in $(($(date +%s) - t_start)) s"
exit $status
