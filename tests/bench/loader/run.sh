#!/bin/bash
# Loader benchmark, side by side in one run: Lathe (4 ranks, buffer fractions 0.25/0.5/0.75)
# against PyTorch DataLoader-over-h5py baselines, all reading through one shared storage throttle
# (bandwidth + per-request latency, LD_PRELOADed into every reader), the dataset's cached pages
# dropped before each epoch; then one run on the raw disk with O_DIRECT. Prints JSON lines per
# epoch, then the summary against the issue's goals (summarize.py).
#
#   BUILD=build tests/bench/loader/run.sh            # defaults below; override by environment
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
BUILD=${BUILD:-build}
OUT=${OUT:-$BUILD/bench-loader}
N=${N:-2048}            # samples; grid 128 → 256 KiB per sample (x and y): 512 MiB
GRID=${GRID:-128}
BATCH=${BATCH:-128}    # global; 32 per rank (smaller batches make integer splits uneven)
EPOCHS=${EPOCHS:-4}     # epoch 0 fills the buffer, the last has nothing to prefetch: steady = middle
RANKS=${RANKS:-4}
BW=${BW:-200e6}         # bytes/s shared by all readers
LAT_US=${LAT_US:-200}   # per request
COMPUTE_US=${COMPUTE_US:-0}
PY=/usr/bin/python3
mkdir -p "$OUT"
data=$(realpath "$OUT")/surrogate.h5
[ -f "$data" ] || "$BUILD/bin/loader_gen_surrogate" --out "$data" --samples "$N" --grid "$GRID" --test-samples 1 >&2
"$BUILD/bin/loader_bench" --file "$data" --epochs "$EPOCHS" --batch "$BATCH" --dump-perm "$OUT"
shm=/dev/shm/lathe-bench-throttle-$$
trap 'rm -f "$shm"' EXIT
throttle=(LD_PRELOAD=$(realpath "$BUILD/lib/libloader_throttle.so") LATHE_THROTTLE_SHM=$shm
          LATHE_THROTTLE_FILE=$data LATHE_THROTTLE_BW=$BW LATHE_THROTTLE_LAT_US=$LAT_US)
mpi=(mpiexec -n "$RANKS")
mpiexec --version 2>&1 | grep -qE "Open MPI|OpenRTE" && mpi+=(--oversubscribe --allow-run-as-root)
common=(--file "$data" --epochs "$EPOCHS" --batch "$BATCH" --compute-us "$COMPUTE_US")
{
  for frac in 0.25 0.5 0.75; do
    env "${throttle[@]}" "${mpi[@]}" -x LD_PRELOAD -x LATHE_THROTTLE_SHM -x LATHE_THROTTLE_FILE \
      -x LATHE_THROTTLE_BW -x LATHE_THROTTLE_LAT_US \
      "$BUILD/bin/loader_bench" "${common[@]}" --fraction "$frac" --bw "$BW" --lat-us "$LAT_US"
  done
  for mode in "--mode default --workers 2" "--mode default --workers 0" "--mode sorted"; do
    # shellcheck disable=SC2086
    env "${throttle[@]}" $PY "$here/bench_torch.py" "${common[@]}" --perm-dir "$OUT" --ranks "$RANKS" \
      $mode --bw "$BW" --lat-us "$LAT_US"
  done
  # the raw disk, no throttle: Lathe with O_DIRECT against the default DataLoader
  "${mpi[@]}" "$BUILD/bin/loader_bench" "${common[@]}" --fraction 0.5 --o-direct --label lathe-raw-odirect
  $PY "$here/bench_torch.py" "${common[@]}" --perm-dir "$OUT" --ranks "$RANKS" --mode default \
    --workers 2 | sed 's/"torch-default-w2"/"torch-raw-default-w2"/'
} | tee "$OUT/results.jsonl"
$PY "$here/summarize.py" "$OUT/results.jsonl"
