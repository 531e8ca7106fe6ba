#!/bin/sh
# onnx: a model trained by a `train` job is exported as ONNX that onnxruntime runs with the
# engine's results: accuracy and mean loss over the whole Fashion-MNIST test split, computed by
# onnxruntime-node on the job's model.onnx, equal those of `lathe eval` on the job's checkpoint and
# on the same model.onnx imported back (one sample of slack for an argmax near-tie; loss to 1e-4).
# Usage: train_export.sh BUILD_BIN WORKDIR ORT_RUN
set -u
bin=$1 work=$2 ort=$3
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
data=$("$root/tests/train/fmnist.sh" "$bin/lathe" "$work/data") || exit $?
command -v node >/dev/null || { echo "skipped: node not found"; exit 77; }
run=$work/onnx-train.$$
rm -rf "$run"; mkdir -p "$run"
trap 'rm -rf "$run"' EXIT
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
/usr/bin/python3 - "$root/schema/jobs/train.example.json" "$data" "$run/job.json" <<'PY'
import json, sys
job = json.load(open(sys.argv[1]))
job["spec"].update(dataset=sys.argv[2], epochs=1, max_steps=60, schedule={"kind": "constant"})
json.dump(job, open(sys.argv[3], "w"))
PY
"$bin/lathe" run "$run/job.json" --out "$run/out" > "$run/log" 2>&1 || { echo "training failed"; tail -n 3 "$run/log"; exit 1; }
/usr/bin/python3 - "$data" "$run/x.f32" "$run/y.u8" <<'PY'
import h5py, numpy as np, sys
with h5py.File(sys.argv[1], "r") as f:
    x = f["/test/x"][...].astype(np.float32) / 255.0
    y = f["/test/y"][...].astype(np.uint8)
((x - 0.286) / 0.353).astype("<f4").tofile(sys.argv[2])
y.tofile(sys.argv[3])
print(x.shape)
PY
n=$(/usr/bin/python3 -c "import os,sys; print(os.path.getsize(sys.argv[1]) // (28*28*4))" "$run/x.f32")
node "$ort" "$run/out/model.onnx" "$run/x.f32" "$n,1,28,28" "$run/logits.f32" > /dev/null || { echo "onnxruntime failed"; exit 1; }
ck=$("$bin/lathe" eval "$run/out/checkpoint.h5" "$data" --split test --mean 0.286 --std 0.353) || exit 1
ox=$("$bin/lathe" eval "$run/out/model.onnx" "$data" --split test --mean 0.286 --std 0.353) || exit 1
/usr/bin/python3 - "$run/logits.f32" "$run/y.u8" "$ck" "$ox" <<'PY'
import json, sys, numpy as np
y = np.fromfile(sys.argv[2], dtype=np.uint8).astype(np.int64)
z = np.fromfile(sys.argv[1], dtype="<f4").astype(np.float64).reshape(len(y), -1)
m = z.max(axis=1, keepdims=True)
loss = float(np.mean(np.log(np.exp(z - m).sum(axis=1)) + m[:, 0] - z[np.arange(len(y)), y]))
acc = float(np.mean(z.argmax(axis=1) == y))
ok = True
for name, text in (("checkpoint", sys.argv[3]), ("model.onnx re-imported", sys.argv[4])):
    e = json.loads(text)
    good = abs(e["accuracy"] - acc) <= 1.01 / len(y) and abs(e["loss"] - loss) <= 1e-4 * loss
    print(f"{'ok  ' if good else 'FAIL'} lathe eval ({name}): accuracy {e['accuracy']:.4f} loss {e['loss']:.6f}; "
          f"onnxruntime on model.onnx: accuracy {acc:.4f} loss {loss:.6f}")
    ok &= good
sys.exit(0 if ok else 1)
PY
