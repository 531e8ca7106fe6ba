#!/bin/sh
# Benchmark of the compress job on this machine (issue 6):
#   resnet20  the shared pretrained ResNet-20 on the CIFAR-10 JPEG data, 70% fewer FLOPs
#   smallcnn  the zoo small CNN trained here on Fashion-MNIST (a train job), then 70% fewer FLOPs
# each against the uniform-rank baseline (and the sensitivity sweep when asked) at the same FLOPs,
# every model fine-tuned with the same budget (distilled from the original, cosine schedule).
# Prints one JSON summary per model (FLOPs reduction, measured speedup at batch 1 and 64, accuracy
# before/after on the full test split and of the baselines, fine-tuning budget, wall time per
# phase) and keeps the event logs and artifacts in OUT/<model>.
#   tests/bench/compress/run.sh [BUILD_DIR] [OUT]
# Environment (defaults in brackets):
#   BENCH [all]: resnet20, smallcnn or all
#   FINETUNE_EPOCHS [1] (or FINETUNE_STEPS instead), FINETUNE_LR [0.02], FINETUNE_BATCH [128],
#   DISTILL_ALPHA [0.5], DISTILL_T [4], SEARCH_STEPS [200], EVAL_SAMPLES [0 = the full test split],
#   BASELINES ["uniform"] (e.g. "uniform", "sensitivity"), BASELINES_ONLY [false]: true runs
#   the baselines alone (no search; e.g. in a second process beside a run with BASELINES=" "),
#   THREADS [2], SEED [1] (the job's seed: search sampling, fine-tuning order),
#   TARGET [{"kind": "flops", "reduction": 0.7}] (the job's target object),
#   SMALLCNN_TRAIN_EPOCHS [3]: training of the small CNN before it is compressed.
# The ResNet-20 figures of issue 6 (load average 13-22 on 2 cores, nice 10) came from two
# processes side by side, each about 50 minutes:
#   BENCH=resnet20 FINETUNE_EPOCHS=2 FINETUNE_LR=0.05 BASELINES=" " run.sh BUILD OUT1
#   BENCH=resnet20 FINETUNE_EPOCHS=2 FINETUNE_LR=0.05 BASELINES='"uniform"' BASELINES_ONLY=true run.sh BUILD OUT2
# and the small CNN's from BENCH=smallcnn BASELINES='"uniform", "sensitivity"' (about 50 minutes).
set -eu
root=$(cd "$(dirname "$0")/../../.." && pwd)
build=${1:-$root/build}
out=${2:-/tmp/lathe-bench-compress}
data=$root/../shared/data
bench=${BENCH:-all}
# OpenMP's wait policy is the caller's; unset, `lathe` itself starts with OMP_WAIT_POLICY=passive
# (workers/main_lathe.c), as a worker's jobs do. Under passive every operator that wakes the
# second thread pays a futex wake-up: at batch 1 the dense ResNet-20 took 2.6 ms against 0.4 ms
# with OMP_WAIT_POLICY=active (its batch-1 speedup 8.6x against about 2x). The job records the
# policy in latency_conditions.omp_wait_policy.
mkdir -p "$out"

if [ -n "${FINETUNE_STEPS:-}" ]; then budget="\"steps\": $FINETUNE_STEPS"
else budget="\"epochs\": ${FINETUNE_EPOCHS:-1}"; fi
finetune="{$budget, \"batch_size\": ${FINETUNE_BATCH:-128}, \"lr\": ${FINETUNE_LR:-0.02},
  \"schedule\": \"cosine\", \"distill\": {\"alpha\": ${DISTILL_ALPHA:-0.5}, \"temperature\": ${DISTILL_T:-4}}}"
baselines=${BASELINES:-'"uniform"'}
target=${TARGET:-'{"kind": "flops", "reduction": 0.7}'}

summary() { # events.jsonl wall_seconds
  /usr/bin/python3 - "$1" "$2" <<'PY'
import json, sys
res = [json.loads(l) for l in open(sys.argv[1]) if l.startswith('{"type":"result"')][-1]["summary"]
b = res.get("baselines", {})
g = lambda k: res.get(k)
r4 = lambda v: None if v is None else round(v, 4)
out = {
    "device": g("device"),
    "eval_samples": g("eval_samples"),
    "flops_before": g("flops_before"), "flops_after": g("flops_after"),
    "flops_reduction": r4(g("flops_reduction")),
    "accuracy_before": g("accuracy_before"), "accuracy_after": g("accuracy_after"),
    "accuracy_before_finetune": g("accuracy_before_finetune"),
    "finetune": g("finetune"),
    "latency_ms_batch64": [g("latency_ms_before"), g("latency_ms_after")],
    "speedup_batch64": r4(g("speedup_measured")),
    "latency_ms_batch1": [g("latency_ms_before_batch1"), g("latency_ms_after_batch1")],
    "speedup_batch1": r4(g("speedup_measured_batch1")),
    "latency_ms_predicted": g("latency_ms_predicted"),
    "latency_prediction_error": g("latency_prediction_error"),
    "latency_ms_reference": g("latency_ms_reference"),
    "latency_prediction_slope": g("latency_prediction_slope"),
    "latency_conditions": g("latency_conditions"), "latency_note": g("latency_note"),
    "phases_s": {k: round(v, 1) for k, v in res["phases_s"].items()},
    "wall_s": int(sys.argv[2]),
}
if g("accuracy_after") is not None:
    out["accuracy_delta_pp"] = round(100 * (res["accuracy_after"] - res["accuracy_before"]), 2)
if g("baselines_only"):
    out = {k: v for k, v in out.items() if v is not None and v != [None, None]}
    out["baselines_only"] = True
for name, v in b.items():
    out["baseline_" + name] = {"flops": v["flops"], "flops_reduction": round(1 - v["flops"] / res["flops_before"], 4),
                               "accuracy": v["accuracy"],
                               "accuracy_before_finetune": v["accuracy_before_finetune"],
                               "latency_ms": v["latency_ms"], "finetune": v["finetune"]}
    if g("accuracy_after") is not None:
        out["baseline_" + name]["search_minus_baseline_pp"] = round(100 * (res["accuracy_after"] - v["accuracy"]), 2)
print(json.dumps(out, indent=1))
PY
}

run_compress() { # name model_json dataset normalisation_json augmentation_json
  d=$out/$1
  mkdir -p "$d"
  cat > "$d/job.json" <<JSON
{"kind": "compress", "device": "cpu", "spec": {
  "model": $2,
  "dataset": "$3",
  "eval_samples": ${EVAL_SAMPLES:-0},
  "target": $target,
  "search": {"steps": ${SEARCH_STEPS:-200}, "batch_size": 32},
  "finetune": $finetune,
  "baselines": [$baselines], "baselines_only": ${BASELINES_ONLY:-false},
  "sensitivity": {"ratios": 5, "samples": 256},
  "latency": {"batch": 64, "cache_dir": "$out/cache"},
  "augmentation": $5,
  "normalisation": $4,
  "seed": ${SEED:-1}, "threads": ${THREADS:-2}}}
JSON
  start=$(date +%s)
  "$build/bin/lathe" run "$d/job.json" --out "$d/artifacts" > "$d/events.jsonl"
  end=$(date +%s)
  echo "== $1"
  summary "$d/events.jsonl" "$((end - start))" | tee "$d/summary.json"
}

if [ "$bench" = all ] || [ "$bench" = resnet20 ]; then
  if [ ! -r "$data/cifar10-jpeg.h5" ]; then
    echo "skip resnet20: $data absent" >&2
    [ "$bench" = resnet20 ] && exit 77
  else
    run_compress resnet20 "{\"file\": \"$data/models/resnet20-cifar10-bn.onnx\"}" "$data/cifar10-jpeg.h5" \
      '{"mean": [0.4914, 0.4822, 0.4465], "std": [0.2470, 0.2435, 0.2616]}' \
      '{"crop_padding": 4, "flip": true}'
  fi
fi

if [ "$bench" = all ] || [ "$bench" = smallcnn ]; then
  fm=$root/build/data/fashion-mnist.h5
  [ -r "$fm" ] || fm=$build/data/fashion-mnist.h5
  d=$out/smallcnn
  mkdir -p "$d"
  # The small CNN trained as schema/jobs/train.example.json trains it, for SMALLCNN_TRAIN_EPOCHS.
  cat > "$d/train.json" <<JSON
{"kind": "train", "device": "cpu", "spec": {
  "model": {"zoo": "smallcnn", "num_classes": 10}, "dataset": "$fm",
  "epochs": ${SMALLCNN_TRAIN_EPOCHS:-3}, "batch_size": 128,
  "optimizer": {"kind": "sgd", "momentum": 0.9, "nesterov": true}, "lr": 0.05,
  "schedule": {"kind": "cosine", "warmup_epochs": 0.3}, "weight_decay": 0.0005,
  "normalisation": {"mean": [0.286], "std": [0.353]}, "seed": 1, "threads": ${THREADS:-2}}}
JSON
  start=$(date +%s)
  "$build/bin/lathe" run "$d/train.json" --out "$d/train" > "$d/train-events.jsonl"
  end=$(date +%s)
  ckpt=$(/usr/bin/python3 -c '
import json, sys
for l in open(sys.argv[1]):
    if l.startswith("{\"type\":\"artifact\"") and json.loads(l)["name"].endswith(".h5"):
        print(json.loads(l)["path"])' "$d/train-events.jsonl" | tail -1)
  echo "== smallcnn training: $((end - start)) s, checkpoint $ckpt"
  run_compress smallcnn "{\"file\": \"$ckpt\"}" "$fm" '{"mean": [0.286], "std": [0.353]}' \
    '{"crop_padding": 0, "flip": false}'
fi
