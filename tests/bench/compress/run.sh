#!/bin/sh
# Benchmark of the compress job on this machine: the shared pretrained ResNet-20 on the CIFAR-10
# JPEG data, 70% fewer FLOPs, against the uniform-rank and sensitivity baselines at the same
# FLOPs, each fine-tuned with the same budget. Prints one JSON summary (FLOPs reduction, measured
# speedup at batch 1 and 64, accuracy before/after and of both baselines, wall time per phase)
# and keeps the full event log and artifacts in OUT.
#   tests/bench/compress/run.sh [BUILD_DIR] [OUT]
# Budgets (environment): SEARCH_STEPS (150), FINETUNE_STEPS (400), EVAL_SAMPLES (2000),
# THREADS (2). The defaults fit a shared 2-core machine in about a quarter of an hour; the
# published HALOC figures need epochs of fine-tuning (FINETUNE_STEPS=20000 or so).
set -eu
root=$(cd "$(dirname "$0")/../../.." && pwd)
build=${1:-$root/build}
out=${2:-/tmp/lathe-bench-compress}
data=$root/../shared/data
if [ ! -r "$data/cifar10-jpeg.h5" ]; then
  echo "skip: $data absent" >&2
  exit 77
fi
mkdir -p "$out"
cat > "$out/job.json" <<JSON
{"kind": "compress", "device": "cpu", "spec": {
  "model": {"file": "$data/models/resnet20-cifar10-bn.onnx"},
  "dataset": "$data/cifar10-jpeg.h5",
  "eval_samples": ${EVAL_SAMPLES:-2000},
  "target": {"kind": "flops", "reduction": 0.7},
  "search": {"steps": ${SEARCH_STEPS:-150}, "batch_size": 32},
  "finetune": {"steps": ${FINETUNE_STEPS:-400}, "batch_size": 64, "lr": 0.02},
  "baselines": ["uniform", "sensitivity"],
  "sensitivity": {"ratios": 5, "samples": 256},
  "latency": {"batch": 64, "cache_dir": "$out/cache"},
  "normalisation": {"mean": [0.4914, 0.4822, 0.4465], "std": [0.2470, 0.2435, 0.2616]},
  "seed": 1, "threads": ${THREADS:-2}}}
JSON
start=$(date +%s)
OMP_WAIT_POLICY=passive "$build/bin/lathe" run "$out/job.json" --out "$out/artifacts" > "$out/events.jsonl"
end=$(date +%s)
/usr/bin/python3 - "$out/events.jsonl" "$((end - start))" <<'PY'
import json, sys
res = [json.loads(l) for l in open(sys.argv[1]) if l.startswith('{"type":"result"')][-1]["summary"]
b = res["baselines"]
print(json.dumps({
    "device": res["device"],
    "flops_before": res["flops_before"], "flops_after": res["flops_after"],
    "flops_reduction": round(res["flops_reduction"], 4),
    "accuracy_before": res["accuracy_before"], "accuracy_after": res["accuracy_after"],
    "accuracy_uniform": b["uniform"]["accuracy"], "flops_uniform": b["uniform"]["flops"],
    "accuracy_sensitivity": b["sensitivity"]["accuracy"], "flops_sensitivity": b["sensitivity"]["flops"],
    "latency_ms_batch64": [res["latency_ms_before"], res["latency_ms_after"]],
    "speedup_batch64": round(res["speedup_measured"], 3),
    "latency_ms_batch1": [res["latency_ms_before_batch1"], res["latency_ms_after_batch1"]],
    "speedup_batch1": round(res["speedup_measured_batch1"], 3),
    "latency_prediction_error": res["latency_prediction_error"],
    "phases_s": {k: round(v, 1) for k, v in res["phases_s"].items()},
    "wall_s": int(sys.argv[2]),
}, indent=1))
PY
