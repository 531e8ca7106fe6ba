#!/bin/sh
# Activation-compression benchmark (issue 8, specs/actcomp.md): the claims too long for ctest.
#
#   tests/bench/actcomp/run.sh [BUILD_DIR] [PART ...]     (from the repository root)
#
# Parts (all by default):
#   fmnist    schema/jobs/train-actcomp.example.json (small CNN, Fashion-MNIST, $FMNIST_EPOCHS
#             epochs, default the example's 3) exact and adaptive for each of $SEEDS (default
#             "1 2 3"): test accuracy per seed, the mean difference, and whether every seed lies
#             within ±0.3 pp.
#   resnet20  ResNet-20 on the CIFAR-10 JPEG data ($CIFAR), $RESNET_STEPS steps (default 60) at
#             batch 128 exact, adaptive with exact batch-norm inputs, adaptive with lossy ones:
#             peak saved-activation bytes within a step (masks and codec metadata included) and
#             the median step time after the first two windows (the step-time overhead).
#             $RESNET_EPOCHS > 0 instead trains that many epochs with validation (accuracy at the
#             same budget; hours on a CPU).
#   r20acc    ResNet-20 on the CIFAR-10 JPEG data, $ACC_EPOCHS epochs (default 3) with the full
#             test split as validation, for each of $SEEDS and each of $ACC_CONFIGS (default
#             "off:exact adaptive:lossy": exact, and adaptive with lossy batch-norm inputs; the
#             form is mode:bn-mode[:eb]): accuracy per seed and, where exact ran too, each
#             configuration's differences from it (about 2 CPU-minutes per epoch). The noise floor
#             of such a comparison: ACC_CONFIGS="off:exact fixed:exact:1e-4", conv/linear inputs
#             coded at a bound far below what adaptive picks (training is deterministic, so any
#             difference from exact is how far a tiny perturbation moves the result).
#   cap       the largest batch ResNet-20 trains at under a memory cap of $CAP_MIB MiB (default
#             512) of training state, exact and compressed (actcomp_batch_cap): adaptive with the
#             spec's exact first window, adaptive with initial_eb 0.01 (the first window
#             compressed at that conservative bound), fixed at 0.05.
# Every figure is printed with the machine's core count and load; timings on a shared machine are
# noisy, so the step time is a median of per-step figures.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
build=${1:-build}
[ $# -gt 0 ] && shift
parts=${*:-fmnist resnet20 cap}
lathe=$build/bin/lathe
CIFAR=${CIFAR:-$root/../shared/data/cifar10-jpeg.h5}
SEEDS=${SEEDS:-1 2 3}
RESNET_STEPS=${RESNET_STEPS:-60}
RESNET_EPOCHS=${RESNET_EPOCHS:-0}
CAP_MIB=${CAP_MIB:-512}
FMNIST_EPOCHS=${FMNIST_EPOCHS:-3}
ACC_EPOCHS=${ACC_EPOCHS:-3}
ACC_CONFIGS=${ACC_CONFIGS:-off:exact adaptive:lossy}
export OMP_WAIT_POLICY=PASSIVE
work=$(mktemp -d "${TMPDIR:-/tmp}/actcomp-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkjob() { /usr/bin/python3 "$root/tests/actcomp/make_job.py" "$@"; }
echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ), commit $(git -C "$root" rev-parse --short HEAD)"

# run NAME JOBFILE: runs the job, keeps its event log as $work/NAME.log.
# The process CPU time (user + system seconds) goes to $work/NAME.cpu: on a shared machine it is
# a steadier measure of the codec's cost than wall time.
run() {
  /usr/bin/time -f "%U %S" -o "$work/$1.cpu" "$lathe" run "$2" --out "$work/$1.out" > "$work/$1.log" 2> "$work/$1.err" ||
    { echo "$1 failed: $(tail -n 2 "$work/$1.err")" >&2; exit 1; }
}

for part in $parts; do
case $part in
fmnist)
  data=$("$root/tests/train/fmnist.sh" "$lathe" "$build/data")
  for seed in $SEEDS; do
    for mode in off adaptive; do
      mkjob "$root/schema/jobs/train-actcomp.example.json" "$data" \
        "{\"seed\": $seed, \"epochs\": $FMNIST_EPOCHS, \"activation_compression\": {\"mode\": \"$mode\"}}" > "$work/fm.$mode.$seed.json"
      run "fm.$mode.$seed" "$work/fm.$mode.$seed.json"
    done
  done
  /usr/bin/python3 - "$work" $SEEDS <<'PY'
import json, sys
work, seeds = sys.argv[1], sys.argv[2:]
res = lambda n: [json.loads(l) for l in open(f"{work}/{n}.log") if '"type":"result"' in l][0]["summary"]
diffs = []
for s in seeds:
    e, a = res(f"fm.off.{s}"), res(f"fm.adaptive.{s}")
    d = 100 * (a["final"]["val_accuracy"] - e["final"]["val_accuracy"])
    diffs.append(d)
    c = a["activation_compression"]
    print(f"fmnist seed {s}: exact {100*e['final']['val_accuracy']:.2f}%  adaptive "
          f"{100*a['final']['val_accuracy']:.2f}%  diff {d:+.2f} pp; saved {c['ratio']:.2f}x "
          f"(peak {c['peak_ratio']:.2f}x); {e['throughput_samples_per_s']:.0f} vs "
          f"{a['throughput_samples_per_s']:.0f} samples/s")
mean = sum(diffs) / len(diffs)
print(f"fmnist: mean diff {mean:+.2f} pp over {len(seeds)} seeds; every seed within ±0.3 pp: "
      f"{all(abs(d) <= 0.3 for d in diffs)}; mean within ±0.3 pp: {abs(mean) <= 0.3}")
PY
  ;;
resnet20)
  [ -f "$CIFAR" ] || { echo "resnet20: $CIFAR absent, skipped"; continue; }
  if [ "$RESNET_EPOCHS" -gt 0 ]; then
    budget="{\"epochs\": $RESNET_EPOCHS, \"checkpoint_every\": 0"
  else
    budget="{\"epochs\": 1, \"max_steps\": $RESNET_STEPS, \"splits\": {\"val\": \"\"}, \"checkpoint_every\": 0, \"schedule\": {\"warmup_epochs\": 0}"
  fi
  # Sampling keeps an exact copy of every compressed input on sampled steps: off here, so memory
  # and step time are those of training alone.
  for cfg in off:exact adaptive:exact adaptive:lossy; do
    mode=${cfg%:*} bn=${cfg#*:}
    mkjob "$root/tests/bench/cifar10_resnet20.json" "$CIFAR" "$budget, \"activation_compression\":
      {\"mode\": \"$mode\", \"window\": 10, \"sample_every\": 0, \"bn\": {\"mode\": \"$bn\"}}}" \
      > "$work/r20.$mode.$bn.json"
    run "r20.$mode.$bn" "$work/r20.$mode.$bn.json"
  done
  /usr/bin/python3 - "$work" <<'PY'
import json, statistics, sys
work = sys.argv[1]
def cpu(n):
    u, sy = open(f"{work}/{n}.cpu").read().split()[-2:]
    return float(u) + float(sy)
def load(n):
    ev = [json.loads(l) for l in open(f"{work}/{n}.log") if l.startswith("{")]
    res = [e for e in ev if e["type"] == "result"][0]["summary"]
    # Per-step throughput after the first two windows (the first runs exact), as a median.
    tp = [e["value"] for e in ev if e["type"] == "metric" and e["key"] == "throughput.samples_per_s" and e["step"] > 20]
    return res, statistics.median(tp) if tp else float("nan")
base, tb = load("r20.off.exact")
exact_saved = base['memory_peak_bytes']['activations_saved']
print(f"resnet20 exact: peak saved {exact_saved/2**20:.1f} MiB (the executor keeps each saved value "
      f"once), median step {128/tb*1000:.0f} ms; val acc {base['final']['val_accuracy']}")
for n in ("r20.adaptive.exact", "r20.adaptive.lossy"):
    r, t = load(n)
    c = r["activation_compression"]
    big = sorted(c["layers"], key=lambda l: -l["bytes_after"])[:4]
    # Two reductions: against the exact run's saved bytes (what training without compression
    # really holds), and the stash's own per-layer accounting, where a ReLU output kept by the
    # ReLU and the next conv counts twice (as mask and as conv input).
    print(f"resnet20 {n[4:]}: peak saved-activation bytes after the first window "
          f"{c['peak_saved_bytes_after']/2**20:.2f} MiB: {exact_saved/c['peak_saved_bytes_after']:.2f}x "
          f"less than the exact run's {exact_saved/2**20:.1f} MiB; per-layer accounting "
          f"{c['peak_saved_bytes_before']/2**20:.1f} MiB -> {c['peak_ratio']:.2f}x (last step {c['ratio']:.2f}x); "
          f"whole-run allocator peak {r['memory_peak_bytes']['activations_saved']/2**20:.1f} MiB (exact first "
          f"window); median step {128/t*1000:.0f} ms, overhead {100*(tb/t-1):+.1f}% (process CPU time "
          f"{cpu(n):.0f} s vs {cpu('r20.off.exact'):.0f} s: {100*(cpu(n)/cpu('r20.off.exact')-1):+.1f}%); val acc {r['final']['val_accuracy']}")
    rebuilt = [l for l in c["layers"] if l["kind"] == "weight_input" and l["bytes_after"] < 1024]
    print(f"   conv inputs rebuilt from a batch-norm entry and a ReLU mask (nothing of their own): {len(rebuilt)}")
    kinds = {}
    for l in c["layers"]:
        k = kinds.setdefault(l["kind"], [0, 0])
        k[0] += l["bytes_before"]; k[1] += l["bytes_after"]
    print("   by kind: " + ", ".join(f"{k} {b/2**20:.1f}->{a/2**20:.2f} MiB" for k, (b, a) in kinds.items()))
    print("   largest after: " + ", ".join(f"{l['name']} ({l['kind']}, eb {l['eb']:.3g}) {l['bytes_after']/2**20:.2f} MiB" for l in big))
PY
  ;;
r20acc)
  [ -f "$CIFAR" ] || { echo "r20acc: $CIFAR absent, skipped"; continue; }
  # Each configuration of $ACC_CONFIGS (by default exact, and adaptive with lossy batch-norm
  # inputs: the configuration of the 15x figure) at the same budget, for each seed in turn; each
  # run prints its line as it ends.
  for seed in $SEEDS; do
    for cfg in $ACC_CONFIGS; do
      mode=${cfg%%:*} rest=${cfg#*:} bn=${cfg#*:} eb=
      case $rest in *:*) bn=${rest%%:*} eb=", \"eb\": ${rest#*:}" ;; esac
      mkjob "$root/tests/bench/cifar10_resnet20.json" "$CIFAR" "{\"epochs\": $ACC_EPOCHS, \"seed\": $seed,
        \"checkpoint_every\": 0, \"activation_compression\": {\"mode\": \"$mode\", \"window\": 10,
        \"sample_every\": 0, \"bn\": {\"mode\": \"$bn\"}$eb}}" > "$work/acc.$cfg.$seed.json"
      run "acc.$cfg.$seed" "$work/acc.$cfg.$seed.json"
      /usr/bin/python3 - "$work/acc.$cfg.$seed.log" "$cfg" "$seed" <<'PY'
import json, sys
r = [json.loads(l) for l in open(sys.argv[1]) if '"type":"result"' in l][0]["summary"]
c = r.get("activation_compression") or {}
print(f"resnet20 seed {sys.argv[3]} {sys.argv[2]}: val acc {100*r['final']['val_accuracy']:.2f}% "
      f"(loss {r['final'].get('val_loss')}), {r['throughput_samples_per_s']:.0f} samples/s"
      + (f", saved {c['peak_ratio']:.2f}x" if c.get("peak_ratio") else ""), flush=True)
PY
    done
  done
  /usr/bin/python3 - "$work" "$ACC_CONFIGS" $SEEDS <<'PY'
import json, sys
work, cfgs, seeds = sys.argv[1], sys.argv[2].split(), sys.argv[3:]
acc = lambda n: [json.loads(l) for l in open(f"{work}/{n}.log") if '"type":"result"' in l][0]["summary"]["final"]["val_accuracy"]
for cfg in cfgs:
    if cfg.startswith("off:") or "off:exact" not in cfgs:
        continue
    d = [100 * (acc(f"acc.{cfg}.{s}") - acc(f"acc.off:exact.{s}")) for s in seeds]
    print(f"resnet20 accuracy, {cfg} - exact per seed: {', '.join(f'{x:+.2f}' for x in d)} pp; "
          f"mean {sum(d)/len(d):+.2f} pp; every seed within 0.3 pp: {all(abs(x) <= 0.3 for x in d)}")
PY
  ;;
cap)
  [ -f "$CIFAR" ] || { echo "cap: $CIFAR absent, skipped"; continue; }
  for mode in off adaptive-bnlossy-exactfirst adaptive-bnlossy fixed-bnlossy; do
    param=$( [ "$mode" = fixed-bnlossy ] && echo 0.05 || echo 0.1 )
    echo "cap $CAP_MIB MiB: $("$build/bin/actcomp_batch_cap" "$CIFAR" test resnet20 "$CAP_MIB" "$mode" "$param")"
  done
  ;;
*) echo "unknown part $part (fmnist, resnet20, r20acc, cap)" >&2; exit 2 ;;
esac
done
