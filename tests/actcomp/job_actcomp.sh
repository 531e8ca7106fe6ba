#!/bin/sh
# The train job with activation_compression through `lathe run` (schema/jobs/train.json).
#
# Usage: job_actcomp.sh fields   LATHE WORKDIR
#   schema/jobs/train-actcomp.example.json, cut to six windows with max_steps, runs end to end
#   and reports activation_compression.{ratio, saved_bytes_before, saved_bytes_after, layers[]}
#   with per-layer bytes, eb history and observed/predicted gradient error, and emits
#   actcomp.eb.<layer>, actcomp.saved_bytes.{before,after} and actcomp.obs_pred.<layer> metrics;
#   a spec the stash refuses (eb_min > eb_max) fails as bad input (exit 2) naming the field.
# Usage: job_actcomp.sh accuracy LATHE WORKDIR [STEPS] [BOUND_PP]
#   the same job exact and in adaptive mode, same seed and batches: the final test accuracies
#   differ by at most BOUND_PP percentage points (see the CMake test for the bound's reason).
# Exits 77 when Fashion-MNIST is not installed.
set -u
what=$1 lathe=$2 work=$3
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
data=$("$root/tests/train/fmnist.sh" "$lathe" "$work/data") || exit $?
run=$work/actcomp.$what.$$
rm -rf "$run"; mkdir -p "$run"
trap 'rm -rf "$run"' EXIT
export OMP_WAIT_POLICY=PASSIVE

# job FILE OVERRIDES: the example job on $data with .spec keys overridden (make_job.py).
job() { /usr/bin/python3 "$here/make_job.py" "$root/schema/jobs/train-actcomp.example.json" "$data" "$2" > "$1"; }

case $what in
fields)
  job "$run/job.json" '{"epochs": 1, "max_steps": 60, "splits": {"val": ""}, "schedule": {"warmup_epochs": 0.05},
      "activation_compression": {"window": 10, "sample_every": 15}}'
  "$lathe" run "$run/job.json" --out "$run/out" > "$run/log" 2> "$run/err" ||
    { echo "FAIL the job failed"; tail -n 5 "$run/log" "$run/err"; exit 1; }
  /usr/bin/python3 - "$run/log" <<'PY' || exit 1
import json, sys
ev = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
res = [e for e in ev if e["type"] == "result"][0]["summary"]
ac = res["activation_compression"]
fail = []
def check(ok, msg):
    print(("ok   " if ok else "FAIL ") + msg)
    if not ok: fail.append(msg)
check(ac["mode"] == "adaptive", "result names the mode")
check(ac["saved_bytes_before"] > 0 and 0 < ac["saved_bytes_after"] < ac["saved_bytes_before"],
      f"saved bytes drop: {ac['saved_bytes_before']} -> {ac['saved_bytes_after']}")
check(abs(ac["ratio"] - ac["saved_bytes_before"] / ac["saved_bytes_after"]) < 1e-9 * ac["ratio"],
      f"ratio {ac['ratio']:.2f} is before/after")
# Peaks restart after the exact first window: they are those of compressed steps.
check(ac["peak_saved_bytes_before"] >= ac["saved_bytes_before"] and
      ac["peak_saved_bytes_after"] < ac["peak_saved_bytes_before"] / 4,
      f"peak within a step after the exact window: {ac['peak_ratio']:.2f}x")
wi = [l for l in ac["layers"] if l["kind"] == "weight_input"]
check(sorted(l["name"] for l in wi) == ["block1.conv", "block2.conv", "fc1", "fc2"],
      f"the four conv/linear inputs are reported: {[l['name'] for l in wi]}")
check(sum(l["bytes_before"] for l in ac["layers"]) == ac["saved_bytes_before"] and
      sum(l["bytes_after"] for l in ac["layers"]) == ac["saved_bytes_after"],
      "per-layer bytes add up to the totals")
# 60 steps, window 10, the first window exact: updates at steps 10, 20, ..., 60.
check(all(len(l["eb_history"]) == 6 and all(p["eb"] > 0 for p in l["eb_history"]) and
          [p["step"] for p in l["eb_history"]] == [10, 20, 30, 40, 50, 60] for l in wi),
      "every conv/linear layer has 6 bound updates, one per window")
check(all(l["eb"] == l["eb_history"][-1]["eb"] for l in wi), "current eb is the last update")
ge = [l["grad_error"] for l in wi if "grad_error" in l]
check(len(ge) == len(wi) and all(g["samples"] >= 1 and g["predicted_sigma"] > 0 and
                                 0.3 < g["mean_ratio"] < 3 for g in ge),
      "observed/predicted dW error measured on sampled steps: " +
      ", ".join(f"{g['mean_ratio']:.2f}" for g in ge))
check(any(l["kind"] == "relu_mask" for l in ac["layers"]) and
      any(l["kind"] == "pool_argmax" for l in ac["layers"]), "ReLU masks and pool indices listed")
m = {}
for e in ev:
    if e["type"] == "metric": m.setdefault(e["key"], []).append((e["step"], e["value"]))
ebk = [k for k in m if k.startswith("actcomp.eb.")]
check(len(ebk) >= 4 and all([s for s, _ in m[k]] == [10, 20, 30, 40, 50, 60] for k in ebk),
      f"actcomp.eb.<layer> every window: {sorted(ebk)}")
check([s for s, _ in m.get("actcomp.saved_bytes.after", [])] == [10, 20, 30, 40, 50, 60] and
      m["actcomp.saved_bytes.after"][-1][1] == ac["saved_bytes_after"],
      "actcomp.saved_bytes.after every window, last = result")
opk = [k for k in m if k.startswith("actcomp.obs_pred.")]
check(len(opk) >= 4 and all(v > 0 for k in opk for _, v in m[k]),
      f"actcomp.obs_pred.<layer> on sampled steps: {sorted(opk)}")
sys.exit(1 if fail else 0)
PY
  # A resumed run (the same output folder, more steps) reports the run's step numbers, not the
  # stash's own count, which restarts with the process: 30 steps, then resumed to 60 (two epochs,
  # since the checkpoint at the end of a run points at the next epoch).
  job "$run/r30.json" '{"epochs": 2, "max_steps": 30, "splits": {"val": ""}, "schedule": {"warmup_epochs": 0},
      "activation_compression": {"window": 10, "sample_every": 0}}'
  sed 's/"max_steps": 30/"max_steps": 60/' "$run/r30.json" > "$run/r60.json"
  "$lathe" run "$run/r30.json" --out "$run/resume" > "$run/r30.log" 2>&1 &&
    "$lathe" run "$run/r60.json" --out "$run/resume" > "$run/r60.log" 2>&1 ||
    { echo "FAIL the resumed job failed"; tail -n 3 "$run/r30.log" "$run/r60.log"; exit 1; }
  /usr/bin/python3 - "$run/r60.log" <<'PY' || exit 1
import json, sys
ev = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
assert any(e["type"] == "log" and "resuming" in e["message"] for e in ev), "the second run did not resume"
ac = [e for e in ev if e["type"] == "result"][0]["summary"]["activation_compression"]
steps = sorted({p["step"] for l in ac["layers"] for p in l["eb_history"]})
ok = steps == [40, 50, 60]
print(("ok   " if ok else "FAIL ") + f"resumed at step 30: eb updates at run steps {steps} (want [40, 50, 60])")
sys.exit(0 if ok else 1)
PY
  # A configuration the stash refuses is the caller's fault: exit 2, and the message names it.
  job "$run/bad.json" '{"max_steps": 2, "schedule": {"warmup_epochs": 0}, "activation_compression": {"eb_min": 0.5, "eb_max": 0.1}}'
  "$lathe" run "$run/bad.json" --out "$run/bad" > "$run/badlog" 2>&1
  rc=$?
  if [ $rc -ne 2 ] || ! grep -q 'activation_compression' "$run/badlog"; then
    echo "FAIL eb_min > eb_max: exit $rc (want 2)"; tail -3 "$run/badlog"; exit 1
  fi
  echo "ok   eb_min > eb_max is bad input (exit 2) naming activation_compression"
  ;;
accuracy)
  steps=${4:-300} bound=${5:-1.5}
  for mode in off adaptive; do
    job "$run/$mode.json" "{\"epochs\": 1, \"max_steps\": $steps, \"schedule\": {\"warmup_epochs\": 0.1},
        \"activation_compression\": {\"mode\": \"$mode\"}}"
    start=$(date +%s)
    "$lathe" run "$run/$mode.json" --out "$run/$mode" > "$run/$mode.log" 2>&1 ||
      { echo "FAIL the $mode job failed"; tail -3 "$run/$mode.log"; exit 1; }
    echo "$mode: $(( $(date +%s) - start )) s"
  done
  /usr/bin/python3 - "$run/off.log" "$run/adaptive.log" "$bound" <<'PY'
import json, sys
def result(p):
    return [json.loads(l) for l in open(p) if '"type":"result"' in l][0]["summary"]
ex, ac = result(sys.argv[1]), result(sys.argv[2])
bound = float(sys.argv[3])
a0, a1 = ex["final"]["val_accuracy"], ac["final"]["val_accuracy"]
c = ac["activation_compression"]
print(f"exact {100*a0:.2f}%  adaptive {100*a1:.2f}%  (diff {100*(a1-a0):+.2f} pp, bound ±{bound} pp); "
      f"saved bytes {c['saved_bytes_before']} -> {c['saved_bytes_after']} ({c['ratio']:.2f}x), "
      f"peak {c['peak_ratio']:.2f}x; {ex['throughput_samples_per_s']:.0f} vs "
      f"{ac['throughput_samples_per_s']:.0f} samples/s")
ok = "activation_compression" not in ex and abs(100 * (a1 - a0)) <= bound and a0 > 0.8
print("ok   adaptive within the bound of exact training" if ok else "FAILED")
sys.exit(0 if ok else 1)
PY
  ;;
*) echo "usage: job_actcomp.sh fields|accuracy LATHE WORKDIR [STEPS] [BOUND_PP]" >&2; exit 2 ;;
esac
