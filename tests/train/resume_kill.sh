#!/bin/sh
# train: a job killed with SIGKILL after a checkpoint, then run again with the same output
# folder, resumes and ends with final weights, BN statistics and optimizer state bitwise equal to
# an uninterrupted run (CPU, one thread). Usage: resume_kill.sh DRIVER WORKDIR
set -u
driver=$1 work=$2
here=$(cd "$(dirname "$0")" && pwd)
data=$("$here/fmnist.sh" "$driver" "$work/data") || exit $?
run=$work/resume.$$
rm -rf "$run"; mkdir -p "$run"
trap 'rm -rf "$run"' EXIT
cat > "$run/job.json" <<JSON
{"kind": "train", "device": "cpu", "spec": {
  "model": {"zoo": "smallcnn"}, "dataset": "$data", "splits": {"train": "test", "val": ""},
  "epochs": 2, "batch_size": 200, "checkpoint_every": 7, "lr": 0.02,
  "optimizer": {"kind": "sgd", "momentum": 0.9, "nesterov": true},
  "schedule": {"kind": "cosine", "warmup_epochs": 0.2},
  "augmentation": {"crop_padding": 2, "flip": true},
  "normalisation": {"mean": [0.286], "std": [0.353]}, "seed": 7, "threads": 1}}
JSON
# The 10,000 samples of /test serve as the training split: two epochs of 50 steps keep the test
# short, and a kill in the first epoch makes the resumed run cross an epoch boundary (new
# shuffle, new augmentation draws).
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE

"$driver" run "$run/job.json" --out "$run/a" > "$run/a.log" 2>&1 || { echo "uninterrupted run failed"; tail -3 "$run/a.log"; exit 1; }

"$driver" run "$run/job.json" --out "$run/b" > "$run/b1.log" 2>&1 &
pid=$!
# Kill as soon as a checkpoint exists, while the run is still going.
i=0
while [ ! -f "$run/b/checkpoint.h5" ] && kill -0 $pid 2>/dev/null && [ $i -lt 6000 ]; do
  sleep 0.01; i=$((i + 1))
done
kill -9 $pid 2>/dev/null
wait $pid 2>/dev/null
if grep -q '"type":"result"' "$run/b1.log"; then
  echo "the run finished before it could be killed; the test proves nothing"; exit 1
fi
[ -f "$run/b/checkpoint.h5" ] || { echo "no checkpoint before the kill"; tail -3 "$run/b1.log"; exit 1; }
killed_at=$(grep -c '"key":"train.loss"' "$run/b1.log")
"$driver" run "$run/job.json" --out "$run/b" > "$run/b2.log" 2>&1 || { echo "resumed run failed"; tail -3 "$run/b2.log"; exit 1; }
grep -q '"message":"resuming from' "$run/b2.log" || { echo "second run did not resume"; exit 1; }
resumed_steps=$(grep -c '"key":"train.loss"' "$run/b2.log")
echo "killed after $killed_at steps; the resumed run took $resumed_steps more"
# h5diff without a tolerance compares values exactly.
if h5diff -q "$run/a/checkpoint.h5" "$run/b/checkpoint.h5" /params /params &&
   h5diff -q "$run/a/checkpoint.h5" "$run/b/checkpoint.h5" /optim /optim; then
  echo "ok   resume after kill -9: final parameters and optimizer state bitwise identical"
  exit 0
fi
echo "FAIL resume after kill -9: checkpoints differ"
h5diff -r "$run/a/checkpoint.h5" "$run/b/checkpoint.h5" /params /params | head -5
exit 1
