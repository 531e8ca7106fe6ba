#!/bin/sh
# ResNet-20 at batch 128: Lathe and PyTorch 1.13 CPU in the same run, same thread count, with
# OpenBLAS sgemm measured alongside; prints both JSON lines and the ratios.
#   tests/bench/resnet20.sh [BUILD_DIR] [THREADS] [TRAIN_STEPS] [INFER_STEPS]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
build=${1:-build} threads=${2:-2} train=${3:-10} infer=${4:-20}
export OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads OMP_WAIT_POLICY=PASSIVE
lathe=$("$build/bin/bench_resnet20" 128 "$train" "$infer")
torch=$(/usr/bin/python3 "$here/resnet20.py" "$threads" 128 "$train" "$infer")
echo "$lathe"
echo "$torch"
/usr/bin/python3 - "$lathe" "$torch" <<'PY'
import json, sys
l, t = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"threads {l['threads']}, batch {l['batch']}")
print(f"train  images/s: lathe {l['train_images_per_s']:8.1f}  pytorch {t['train_images_per_s']:8.1f}  ratio {l['train_images_per_s'] / t['train_images_per_s']:.2f}x")
print(f"infer  images/s: lathe {l['infer_images_per_s']:8.1f}  pytorch {t['infer_images_per_s']:8.1f}  ratio {l['infer_images_per_s'] / t['infer_images_per_s']:.2f}x")
print(f"sgemm GFLOP/s (OpenBLAS, this run): {l['sgemm_gflops']:.1f} (torch.mm: {t['sgemm_gflops']:.1f})")
print("GFLOP/s below count direct-convolution FLOPs (2 x MACs); Winograd does fewer multiplies, so these are effective rates and can pass sgemm's")
print(f"train GFLOP/s: lathe {l['train_gflops']:.1f} = {l['train_gflops'] / l['sgemm_gflops']:.1%} of sgemm; pytorch {t['train_gflops']:.1f} = {t['train_gflops'] / l['sgemm_gflops']:.1%}")
print(f"infer GFLOP/s: lathe {l['infer_gflops']:.1f} = {l['infer_gflops'] / l['sgemm_gflops']:.1%} of sgemm; pytorch {t['infer_gflops']:.1f} = {t['infer_gflops'] / l['sgemm_gflops']:.1%}")
PY
