#!/bin/sh
# train: the small CNN reaches >= 90% test accuracy on Fashion-MNIST with the settings of
# schema/jobs/train.example.json (3 epochs), and `lathe eval` on the final checkpoint reproduces
# the job's own final validation accuracy and loss. Usage: fmnist_accuracy.sh DRIVER WORKDIR
set -u
driver=$1 work=$2
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
data=$("$here/fmnist.sh" "$driver" "$work/data") || exit $?
run=$work/fmnist.$$
rm -rf "$run"; mkdir -p "$run"
trap 'rm -rf "$run"' EXIT
# The example job, with its dataset path pointed at the file made above.
sed "s|\"build/data/fashion-mnist.h5\"|\"$data\"|" "$root/schema/jobs/train.example.json" > "$run/job.json"
export OMP_WAIT_POLICY=PASSIVE
start=$(date +%s)
"$driver" run "$run/job.json" --out "$run/out" > "$run/log" 2>&1 || { echo "training failed"; tail -3 "$run/log"; exit 1; }
secs=$(( $(date +%s) - start ))
grep '"type":"log"' "$run/log" | sed 's/.*"message":"\(.*\)"}/\1/'
result=$(grep '"type":"result"' "$run/log")
evaljson=$("$driver" eval "$run/out/checkpoint.h5" "$data" --split test --mean 0.286 --std 0.353 --batch 128 --threads 2) || { echo "eval failed"; exit 1; }
echo "eval: $evaljson"
/usr/bin/python3 - "$result" "$evaljson" "$secs" <<'PY'
import json, sys
res = json.loads(sys.argv[1])["summary"]
ev = json.loads(sys.argv[2])
acc = res["final"]["val_accuracy"]
print(f"Fashion-MNIST test accuracy {acc:.4f} after {res['epochs']} epochs in {sys.argv[3]} s, "
      f"{res['throughput_samples_per_s']:.0f} samples/s; memory peaks {res['memory_peak_bytes']}")
ok = acc >= 0.90
if not ok:
    print(f"FAIL accuracy {acc:.4f} < 0.90")
# Same batch and threads as the job's evaluation; one sample of slack for an argmax near-tie
# that another summation order could flip.
if abs(ev["accuracy"] - acc) > 1.01e-4 or abs(ev["loss"] - res["final"]["val_loss"]) > 1e-4 * res["final"]["val_loss"]:
    print(f"FAIL lathe eval on the checkpoint gives {ev}, the job reported {res['final']}")
    ok = False
print("ok   small CNN >= 90% on Fashion-MNIST; eval reproduces it" if ok else "FAILED")
sys.exit(0 if ok else 1)
PY
